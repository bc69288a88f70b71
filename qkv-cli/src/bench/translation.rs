//! One training step of the encoder-decoder Transformer's `small` preset on Multi30k-shaped batches — forward
//! with dropout, label-smoothed cross-entropy, backward, clipping, Adam (tools/bench/train_translation.py is
//! the torch.nn.Transformer side).

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use qkv::models::TransformerConfig;
use qkv::nn::{params::named_vars, seeded_var_builder};
use qkv::train::{cross_entropy, data_parallel, AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};

use super::Measurement;

/// A Multi30k batch of ≈ 4 096 tokens: 200 sentence pairs, 14 source and 15 target subwords (the corpus'
/// averages with a joint BPE of 8 000), no padding.
const VOCAB: u32 = 8000;
const BATCH: usize = 200;
const SOURCE: usize = 14;
const TARGET: usize = 15;

#[derive(Parser)]
pub struct Args {
    /// Timed steps
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Micro-batches run in parallel (default: one per thread, as `qkv train` does)
    #[arg(long)]
    shards: Option<usize>,
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1, got {}", args.steps);
    let config = TransformerConfig { vocab_size: VOCAB as usize, ..TransformerConfig::small() };
    let vars = VarMap::new();
    let model = qkv::models::Transformer::new(&config, seeded_var_builder(&vars, 1, DType::F32, &Device::Cpu))?;
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 };
    let mut optimizer = AdamW::new(named_vars(&vars), adam, AdamW::decay_matrices)?;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut ids = |len: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..BATCH * len).map(|_| rng.random_range(4..VOCAB)).collect();
        Ok(Tensor::from_vec(v, (BATCH, len), &Device::Cpu)?)
    };
    let mut dropout = qkv::nn::mode::Rng::seed_from_u64(1);
    let shards = args.shards.unwrap_or_else(data_parallel::default_shards);
    let parts = data_parallel::split(&(0..BATCH).collect::<Vec<_>>(), shards);
    let params = vars.all_vars();
    let warmup = 2;
    let mut times: Vec<Duration> = Vec::new();
    for step in 0..warmup + args.steps {
        let (src, tgt) = (ids(SOURCE)?, ids(TARGET + 1)?);
        let valid = Tensor::ones((BATCH, SOURCE), DType::U8, &Device::Cpu)?;
        let (input, labels) = (tgt.narrow(1, 0, TARGET)?.contiguous()?, tgt.narrow(1, 1, TARGET)?.contiguous()?);
        let start = Instant::now();
        let gradients = data_parallel::gradients(&params, parts.len(), shards, Some(&mut dropout), |i, mode| {
            let rows = Tensor::from_vec(parts[i].iter().map(|&r| r as u32).collect(), parts[i].len(), &Device::Cpu)?;
            let (src, valid) = (src.index_select(&rows, 0)?, valid.index_select(&rows, 0)?);
            let (input, labels) = (input.index_select(&rows, 0)?, labels.index_select(&rows, 0)?.flatten_all()?);
            let logits = model.forward(&src, &valid, &input, mode)?;
            Ok((cross_entropy(&logits.flatten_to(1)?, &labels, None, 0.1)?, labels.elem_count()))
        })?;
        optimizer.step(&gradients.grads, 5e-4, Some(1.0))?;
        if step >= warmup {
            times.push(start.elapsed());
        }
    }
    times.sort();
    let tokens = (BATCH * TARGET) as f64;
    Ok(vec![
        Measurement::milliseconds("translation step small".into(), &times),
        Measurement::rate("translation target tokens/s small".into(), "tokens/s", tokens, &times),
        super::peak_memory("translation small")?,
    ])
}
