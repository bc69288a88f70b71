//! One training step of a character-level GPT — forward, cross-entropy, backward, gradient clipping, AdamW —
//! at nanoGPT's CPU configuration and a larger one (tools/bench/train_gpt.py is the PyTorch side).

use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use clap::{Parser, ValueEnum};
use qkv::models::{Gpt2, Gpt2Config};
use qkv::nn::{params::named_vars, seeded_var_builder, Activation, Mode};
use qkv::train::data_parallel;
use qkv::train::trainer::{optimizer_step, LoopSettings, Objective, StepContext, StepPosition};
use qkv::train::{cross_entropy, AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};

use super::Measurement;

#[derive(Clone, Copy, ValueEnum)]
pub enum Size {
    /// nanoGPT's Shakespeare-char CPU run: 4 layers, 4 heads, 128 wide, block 64, batch 12
    Small,
    /// 6 layers, 6 heads, 384 wide, block 256, batch 12
    Large,
}

#[derive(Parser)]
pub struct Args {
    #[arg(long, value_enum, default_value = "small")]
    config: Size,
    /// Timed steps (default 50 small, 10 large)
    #[arg(long)]
    steps: Option<usize>,
    /// Micro-batches run in parallel (default: one per thread, as `qkv train` does)
    #[arg(long)]
    shards: Option<usize>,
}

struct Shape {
    layers: usize,
    heads: usize,
    width: usize,
    block: usize,
    batch: usize,
    warmup: usize,
    steps: usize,
}

const VOCAB: usize = 65;

/// One batch of windows as a training objective: the rows a micro-batch is given select its windows.
struct Windows<'a> {
    model: &'a Gpt2,
    vars: &'a [(String, Var)],
    /// (B, block + 1): inputs and their next-token targets.
    ids: Tensor,
    block: usize,
}

impl Objective for Windows<'_> {
    fn vars(&self) -> &[(String, Var)] {
        self.vars
    }

    fn loss(&self, rows: &[usize], _: &mut StepContext, mode: &mut Mode) -> qkv::Result<(Tensor, usize)> {
        let rows = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect(), rows.len(), &Device::Cpu)?;
        let window = self.ids.index_select(&rows, 0)?;
        let (inputs, targets) = (window.narrow(1, 0, self.block)?, window.narrow(1, 1, self.block)?.flatten_all()?);
        let logits = self.model.forward(&inputs, mode)?;
        Ok((cross_entropy(&logits.flatten_to(1)?, &targets, None, 0.0)?, targets.elem_count()))
    }
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    let (label, shape) = match args.config {
        Size::Small => ("small", Shape { layers: 4, heads: 4, width: 128, block: 64, batch: 12, warmup: 5, steps: 50 }),
        Size::Large => {
            ("large", Shape { layers: 6, heads: 6, width: 384, block: 256, batch: 12, warmup: 2, steps: 10 })
        }
    };
    let steps = args.steps.unwrap_or(shape.steps);
    let shards = args.shards.unwrap_or_else(data_parallel::default_shards);
    anyhow::ensure!(steps >= 1, "--steps must be at least 1, got {steps}");
    let config = Gpt2Config {
        vocab_size: VOCAB,
        n_positions: shape.block,
        n_embd: shape.width,
        n_layer: shape.layers,
        n_head: shape.heads,
        activation_function: Activation::Gelu,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bias: false,
        ..Gpt2Config::default()
    };
    let vars = VarMap::new();
    let model = Gpt2::new(&config, seeded_var_builder(&vars, 1337, DType::F32, &Device::Cpu))?;
    let named = named_vars(&vars);
    let settings = LoopSettings {
        adam: AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 },
        max_grad_norm: Some(1.0),
        shards,
        ..LoopSettings::default()
    };
    let mut optimizer = AdamW::new(named.clone(), settings.adam, AdamW::decay_matrices)?;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut phases: Vec<[Duration; 2]> = Vec::new();
    let mut resident_after_warmup = 0.0;
    for step in 0..shape.warmup + steps {
        if step == shape.warmup {
            resident_after_warmup = super::memory_mib("VmRSS")?;
        }
        let ids: Vec<u32> = (0..shape.batch * (shape.block + 1)).map(|_| rng.random_range(0..VOCAB as u32)).collect();
        let ids = Tensor::from_vec(ids, (shape.batch, shape.block + 1), &Device::Cpu)?;
        let batch = Windows { model: &model, vars: &named, ids, block: shape.block };
        let position = StepPosition { step: step + 1, epoch: 0, planned_steps: None };
        let rows = vec![(0..shape.batch).collect::<Vec<_>>()];
        // No dropout in this model: the passes evaluate, as the PyTorch side's do.
        let outcome = optimizer_step(&batch, &mut optimizer, &settings, &rows, position, 1e-3, None)?;
        if step >= shape.warmup {
            phases.push([outcome.passes, outcome.update]);
        }
    }
    let tokens = (shape.batch * shape.block) as f64;
    let mut totals: Vec<Duration> = phases.iter().map(|p| p.iter().sum()).collect();
    totals.sort();
    let mut results = vec![
        Measurement::milliseconds(format!("train step {label}"), &totals),
        Measurement::rate(format!("train tokens/s {label}"), "tokens/s", tokens, &totals),
    ];
    for (i, phase) in ["forward+backward", "clip+optimizer"].iter().enumerate() {
        let mut times: Vec<Duration> = phases.iter().map(|p| p[i]).collect();
        times.sort();
        results.push(Measurement::milliseconds(format!("train {phase} {label}"), &times));
    }
    results.push(super::peak_memory(label)?);
    // Memory that training keeps taking step after step would show here (run with --steps 1000).
    let growth = super::memory_mib("VmRSS")? - resident_after_warmup;
    results.push(Measurement::reading(format!("RSS growth over {steps} steps {label}"), "MiB", growth));
    Ok(results)
}
