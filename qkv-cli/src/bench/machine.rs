//! The machine's own limits, measured beside the workloads so that every figure can be read against them:
//! memory read bandwidth (what bounds decoding, which reads every weight once per token) on one thread and on
//! all of them, and the f32 multiply-add peak (what bounds large matrix products).
//!
//! Both loops run under pulp's dispatch, which picks the widest vector instructions the CPU has (AVX-512 where
//! present), the same dispatch the kernels use.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rayon::prelude::*;

use super::Measurement;

#[derive(Parser)]
pub struct Args {
    /// Size of the buffer read for the bandwidth, in MiB: many times the last-level cache, so reads come from
    /// memory
    #[arg(long, default_value_t = 1024)]
    buffer_mib: usize,
    /// Timed passes of each measurement (the best is the machine's limit, the median its usual speed)
    #[arg(long, default_value_t = 7)]
    reps: usize,
}

/// f32 lanes of an AVX-512 register.
const LANES: usize = 16;
/// Independent partial sums of the read loop: enough that it never waits on an add's latency.
const CHAINS: usize = 8;
/// Independent multiply-add chains: at least latency (4 cycles) × FMA units (2) of the widest x86 cores.
const FMA_CHAINS: usize = 12;

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    anyhow::ensure!(
        args.buffer_mib >= 64,
        "--buffer-mib must be at least 64 (past the caches), got {}",
        args.buffer_mib
    );
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1, got {}", args.reps);
    let floats = args.buffer_mib << 18;
    // Filled with a non-constant value so that the pages are really mapped and nothing folds the sum.
    let buffer: Vec<f32> = (0..floats).into_par_iter().map(|i| (i % 7) as f32).collect();
    let bytes = (floats * 4) as f64;
    let threads = rayon::current_num_threads();
    let mut results = vec![
        bandwidth("read bandwidth, 1 thread", bytes, args.reps, || sum(&buffer)),
        bandwidth(&format!("read bandwidth, {threads} threads"), bytes, args.reps, || {
            buffer.par_chunks(floats.div_ceil(threads * 4)).map(sum).sum()
        }),
    ];
    let iterations = 20_000_000 / FMA_CHAINS;
    let lanes = vector_lanes();
    let flops = (iterations * FMA_CHAINS * lanes * 2) as f64;
    eprintln!("FMA loop: {lanes} f32 lanes per vector, {FMA_CHAINS} independent chains");
    results.push(peak("f32 FMA peak, 1 thread", flops, args.reps, || fma_loop(iterations)));
    results.push(peak(&format!("f32 FMA peak, {threads} threads"), flops * threads as f64, args.reps, || {
        (0..threads).into_par_iter().map(|_| fma_loop(iterations)).sum()
    }));
    Ok(results)
}

/// GB/s of reading `bytes` with `f`, best and median of `reps` passes after one untimed.
fn bandwidth(name: &str, bytes: f64, reps: usize, f: impl Fn() -> f32) -> Measurement {
    Measurement::rate(name.into(), "GB/s", bytes / 1e9, &timed(reps, f))
}

/// GFLOP/s of `flops` done by `f`.
fn peak(name: &str, flops: f64, reps: usize, f: impl Fn() -> f32) -> Measurement {
    Measurement::rate(name.into(), "GFLOP/s", flops / 1e9, &timed(reps, f))
}

fn timed(reps: usize, f: impl Fn() -> f32) -> Vec<Duration> {
    black_box(f());
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

/// The sum of `xs`, in CHAINS independent vector partial sums, so the loop is bound by loads, not by adds.
fn sum(xs: &[f32]) -> f32 {
    pulp::Arch::new().dispatch(Sum { xs })
}

struct Sum<'a> {
    xs: &'a [f32],
}

impl pulp::WithSimd for Sum<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        let one = simd.partial_load_f32s(&[1f32; LANES]);
        let mut acc = [simd.partial_load_f32s(&[0f32; LANES]); CHAINS];
        let mut blocks = self.xs.chunks_exact(S::F32_LANES * CHAINS);
        for block in &mut blocks {
            for (a, v) in acc.iter_mut().zip(block.chunks_exact(S::F32_LANES)) {
                *a = simd.mul_add_f32s(simd.partial_load_f32s(v), one, *a);
            }
        }
        let rest: f32 = blocks.remainder().iter().sum();
        acc.iter().map(|&a| simd.reduce_sum_f32s(a)).sum::<f32>() + rest
    }
}

/// `iterations` rounds of FMA_CHAINS independent vector multiply-adds held in registers: the core's FMA
/// throughput, with no memory traffic. Written with pulp's explicit vector type, not `f32::mul_add` on arrays,
/// which the compiler left as calls to the scalar `fmaf`.
fn fma_loop(iterations: usize) -> f32 {
    pulp::Arch::new().dispatch(FmaLoop { iterations })
}

/// f32 lanes of the vectors pulp's dispatch picks on this CPU (16 with AVX-512, 8 with AVX2).
fn vector_lanes() -> usize {
    struct Lanes;
    impl pulp::WithSimd for Lanes {
        type Output = usize;
        fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
            S::F32_LANES
        }
    }
    pulp::Arch::new().dispatch(Lanes)
}

struct FmaLoop {
    iterations: usize,
}

impl pulp::WithSimd for FmaLoop {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        let m = simd.partial_load_f32s(&[black_box(0.999_999f32); LANES]);
        let c = simd.partial_load_f32s(&[black_box(1e-7f32); LANES]);
        let mut acc = [simd.partial_load_f32s(&[1f32; LANES]); FMA_CHAINS];
        for _ in 0..self.iterations {
            for a in acc.iter_mut() {
                *a = simd.mul_add_f32s(*a, m, c);
            }
        }
        acc.iter().map(|&a| simd.reduce_sum_f32s(a)).sum()
    }
}
