//! One training step of the encoder-decoder Transformer's `small` preset on Multi30k-shaped batches — forward
//! with dropout, label-smoothed cross-entropy, backward, clipping, Adam (tools/bench/train_translation.py is
//! the torch.nn.Transformer side).

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use clap::Parser;
use qkv::models::TransformerConfig;
use qkv::nn::{params::named_vars, seeded_var_builder, Mode};
use qkv::train::data_parallel::{self, Streams};
use qkv::train::trainer::{optimizer_step, LoopSettings, Objective, StepContext, StepPosition};
use qkv::train::{cross_entropy, AdamW, AdamWConfig};
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

/// One batch of the benchmark as a training objective: the rows a micro-batch is given select its sentences.
struct Step<'a> {
    model: &'a qkv::models::Transformer,
    vars: &'a [(String, Var)],
    src: Tensor,
    valid: Tensor,
    input: Tensor,
    labels: Tensor,
}

impl Objective for Step<'_> {
    fn vars(&self) -> &[(String, Var)] {
        self.vars
    }

    fn loss(&self, rows: &[usize], _: &mut StepContext, mode: &mut Mode) -> qkv::Result<(Tensor, usize)> {
        let rows = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect(), rows.len(), &Device::Cpu)?;
        let (src, valid) = (self.src.index_select(&rows, 0)?, self.valid.index_select(&rows, 0)?);
        let (input, labels) = (self.input.index_select(&rows, 0)?, self.labels.index_select(&rows, 0)?.flatten_all()?);
        let logits = self.model.forward(&src, &valid, &input, mode)?;
        Ok((cross_entropy(&logits.flatten_to(1)?, &labels, None, 0.1)?, labels.elem_count()))
    }
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1, got {}", args.steps);
    let config = TransformerConfig { vocab_size: VOCAB as usize, ..TransformerConfig::small() };
    let vars = VarMap::new();
    let model = qkv::models::Transformer::new(&config, seeded_var_builder(&vars, 1, DType::F32, &Device::Cpu))?;
    let named = named_vars(&vars);
    let settings = LoopSettings {
        adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 },
        max_grad_norm: Some(1.0),
        shards: args.shards.unwrap_or_else(data_parallel::default_shards),
        ..LoopSettings::default()
    };
    let mut optimizer = AdamW::new(named.clone(), settings.adam, AdamW::decay_matrices)?;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut ids = |len: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..BATCH * len).map(|_| rng.random_range(4..VOCAB)).collect();
        Ok(Tensor::from_vec(v, (BATCH, len), &Device::Cpu)?)
    };
    let (mut dropout, mut task) = (qkv::rng::Rng::seed_from_u64(1), qkv::rng::Rng::seed_from_u64(2));
    let warmup = 2;
    let mut times: Vec<Duration> = Vec::new();
    for step in 0..warmup + args.steps {
        let (src, tgt) = (ids(SOURCE)?, ids(TARGET + 1)?);
        let valid = Tensor::ones((BATCH, SOURCE), DType::U8, &Device::Cpu)?;
        let (input, labels) = (tgt.narrow(1, 0, TARGET)?.contiguous()?, tgt.narrow(1, 1, TARGET)?.contiguous()?);
        let batch = Step { model: &model, vars: &named, src, valid, input, labels };
        let position = StepPosition { step: step + 1, epoch: 0, planned_steps: None };
        let streams = Streams { dropout: &mut dropout, task: &mut task };
        let start = Instant::now();
        let rows = vec![(0..BATCH).collect::<Vec<_>>()];
        optimizer_step(&batch, &mut optimizer, &settings, &rows, position, 5e-4, Some(streams))?;
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
