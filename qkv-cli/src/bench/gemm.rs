//! The matrix-product ceiling: C = A·B in f32 through the entry every qkv layer's products take (gemm's
//! kernels on rayon's pool).

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
    warm_up();
    for (m, k, n) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        // B stored (N, K) and used transposed: the layout of a Linear weight.
        let b_t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let flop = 2.0 * (m * k * n) as f64;
        let a_values = a.flatten_all()?.to_vec1::<f32>()?;
        for (label, rhs, transposed) in [("", &b, false), (" Bᵀ", &b_t, true)] {
            let rhs_values = rhs.flatten_all()?.to_vec1::<f32>()?;
            let times = time(3, args.reps, || {
                std::hint::black_box(qkv::kernels::matrix_product(&a_values, &rhs_values, (m, k, n), transposed));
                Ok(())
            })?;
            results.push(Measurement::rate(format!("gemm {m}×{k}×{n}{label}"), "GFLOP/s", flop / 1e9, &times));
        }
    }
    Ok(results)
}

/// Half a second of products before the first timing: the first shape measured in a fresh process came out
/// 30–50% slow otherwise (the pool's threads waking, the clock ramping up, first touches of the allocator).
fn warm_up() {
    let (a, b) = (vec![1f32; 768 * 768], vec![1f32; 768 * 768]);
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < 0.5 {
        std::hint::black_box(qkv::kernels::matrix_product(&a, &b, (768, 768, 768), false));
    }
}
