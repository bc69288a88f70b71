//! `qkv demo`: the built-in end-to-end check — real training on a synthetic task, no data needed.

use anyhow::{ensure, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use qkv::train::synthetic::{self, SyntheticConfig, Task};

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    Reverse,
    Copy,
}

#[derive(Parser)]
pub struct Args {
    /// What the model must learn to do with the source sequence
    #[arg(long, value_enum, default_value = "reverse")]
    task: TaskArg,
    /// Optimiser steps
    #[arg(long, default_value_t = SyntheticConfig::default().steps)]
    steps: usize,
    /// Sequences per batch
    #[arg(long, default_value_t = SyntheticConfig::default().batch_size)]
    batch_size: usize,
    /// Longest sequence (shortest is 3)
    #[arg(long, default_value_t = SyntheticConfig::default().max_len)]
    max_len: usize,
    /// Model width d_model
    #[arg(long, default_value_t = SyntheticConfig::default().d_model)]
    d_model: usize,
    /// Encoder and decoder layers
    #[arg(long, default_value_t = SyntheticConfig::default().layers)]
    layers: usize,
    /// Attention heads
    #[arg(long, default_value_t = SyntheticConfig::default().heads)]
    heads: usize,
    /// Dropout everywhere the paper applies it
    #[arg(long, default_value_t = SyntheticConfig::default().dropout)]
    dropout: f64,
    /// Seed for initialisation, data and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = SyntheticConfig {
        task: match args.task {
            TaskArg::Reverse => Task::Reverse,
            TaskArg::Copy => Task::Copy,
        },
        steps: args.steps,
        batch_size: args.batch_size,
        max_len: args.max_len,
        min_len: 3.min(args.max_len),
        d_model: args.d_model,
        layers: args.layers,
        heads: args.heads,
        dropout: args.dropout,
        seed: args.seed,
        ..SyntheticConfig::default()
    };
    ensure!(config.max_len >= 1, "--max-len must be at least 1");
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(config.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]")
            .expect("static template"),
    );
    let report = synthetic::run(&config, |step| {
        bar.set_position(step.step as u64);
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s",
            step.loss, step.learning_rate, step.tokens_per_second
        ));
    });
    // Close the bar either way, so an error message starts on its own line.
    bar.finish();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "trained {} parameters for {} steps in {:.1} s, final loss {:.4}",
        report.parameters, report.steps, report.train_seconds, report.final_loss
    );
    for (src, expected, got) in &report.examples {
        println!("  source {src:?} → expected {expected:?}, decoded {got:?}");
    }
    println!(
        "exact match on {} held-out sequences: {:.1}% ({}/{})",
        report.evaluated,
        100.0 * report.exact_match_rate(),
        report.exact_match,
        report.evaluated
    );
    Ok(())
}
