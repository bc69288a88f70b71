//! `qkv bench`: timed workloads for the side-by-side comparison with PyTorch (tools/bench/run.sh runs both
//! and prints the ratios). Each workload prints JSON: {"workload", "threads", "results": [{name, unit, median,
//! best, higher_is_better}]}.

mod embed;
mod gemm;
mod generate;
mod load;
mod machine;
mod train;
mod translation;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// f32 matrix products (768³, 768·768·3072, 4096³, and with a transposed right operand) in GFLOP/s
    Gemm(gemm::Args),
    /// Training steps of a character-level GPT (nanoGPT's CPU configuration, or a larger one)
    Train(train::Args),
    /// Training steps of the encoder-decoder Transformer's `small` preset on Multi30k-shaped batches
    Translation(translation::Args),
    /// Sentence embeddings with a sentence-transformers model (all-MiniLM-L6-v2): batch throughput and latency
    Embed(embed::Args),
    /// Greedy generation with a GPT-2 directory, with and without the key/value cache
    Generate(generate::Args),
    /// The machine's limits: memory read bandwidth and the f32 multiply-add peak, on one thread and on all
    Machine(machine::Args),
    /// Concurrent clients against a running `qkv serve` (embeddings or completions): throughput and latency
    Load(load::Args),
}

#[derive(Serialize)]
pub struct Measurement {
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub best: f64,
    pub higher_is_better: bool,
}

impl Measurement {
    /// Milliseconds per call, from sorted durations.
    pub fn milliseconds(name: String, sorted: &[Duration]) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Self { name, unit: "ms", median: ms(median(sorted)), best: ms(sorted[0]), higher_is_better: false }
    }

    /// `amount` per second (tokens/s, GFLOP/s, …), from sorted durations of the calls that each did `amount`.
    pub fn rate(name: String, unit: &'static str, amount: f64, sorted: &[Duration]) -> Self {
        let rate = |d: Duration| amount / d.as_secs_f64();
        Self { name, unit, median: rate(median(sorted)), best: rate(sorted[0]), higher_is_better: true }
    }

    /// A single reading (memory), reported as both median and best.
    pub fn reading(name: String, unit: &'static str, value: f64) -> Self {
        Self { name, unit, median: value, best: value, higher_is_better: false }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    workload: &'a str,
    threads: usize,
    results: Vec<Measurement>,
}

pub fn run(args: Args) -> Result<()> {
    let (workload, results) = match args.workload {
        Workload::Gemm(args) => ("gemm", gemm::run(&args)?),
        Workload::Train(args) => ("train", train::run(&args)?),
        Workload::Translation(args) => ("translation", translation::run(&args)?),
        Workload::Embed(args) => ("embed", embed::run(&args)?),
        Workload::Generate(args) => ("generate", generate::run(&args)?),
        Workload::Machine(args) => ("machine", machine::run(&args)?),
        Workload::Load(args) => return load::run(&args),
    };
    let report = Report { workload, threads: candle_core::utils::get_num_threads(), results };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Runs `f` `warmup` times untimed, then `reps` times timed; returns the durations, sorted.
pub fn time(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    anyhow::ensure!(reps >= 1, "--reps must be at least 1, got {reps}");
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times)
}

pub fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_memory(label: &str) -> Result<Measurement> {
    Ok(Measurement::reading(format!("peak RSS {label}"), "MiB", memory_mib("VmHWM")?))
}

/// Resident memory now, once a model is loaded (and packed): what it holds while it serves, where the peak
/// also counts the load's transient f32 copies.
pub fn resident_memory(label: &str) -> Result<Measurement> {
    Ok(Measurement::reading(format!("RSS after load {label}"), "MiB", memory_mib("VmRSS")?))
}

/// " (int8)" after the name of a reduced-precision row, nothing for f32: the rows of each dtype carry it, as
/// ONNX Runtime's int8 and llama.cpp's q8_0 rows carry theirs, so that tools/bench/table.py can join them.
pub fn dtype_suffix(dtype: qkv::WeightDtype) -> String {
    if dtype == qkv::WeightDtype::F32 {
        String::new()
    } else {
        format!(" ({dtype})")
    }
}

/// A memory figure from /proc/self/status (VmRSS: resident now, VmHWM: peak), in MiB.
pub fn memory_mib(key: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {key} line"))?;
    Ok(kib / 1024.0)
}
