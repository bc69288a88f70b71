//! The matrix-product ceiling: C = A·B in f32 through candle (gemm's kernels).

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;

use super::{time, Measurement};

#[derive(Parser)]
pub struct Args {
    /// Timed calls per shape
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

/// (M, K, N) as in tools/bench/gemm.py.
const SHAPES: [(usize, usize, usize); 3] = [(768, 768, 768), (768, 768, 3072), (4096, 4096, 4096)];

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    let mut results = Vec::new();
    for (m, k, n) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        // B stored (N, K) and used transposed: the layout of a Linear weight.
        let b_t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let flop = 2.0 * (m * k * n) as f64;
        for (label, rhs) in [("", b.clone()), (" Bᵀ", b_t.t()?)] {
            let times = time(3, args.reps, || {
                a.matmul(&rhs)?;
                Ok(())
            })?;
            results.push(Measurement::rate(format!("gemm {m}×{k}×{n}{label}"), "GFLOP/s", flop / 1e9, &times));
        }
    }
    Ok(results)
}
