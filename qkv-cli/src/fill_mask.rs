//! `qkv fill-mask`: the most likely tokens for each [MASK] of a text, from a BertForMaskedLM directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::inference::pipeline::Pipeline;
use qkv::models::bert::BertArchitecture;

#[derive(Parser)]
pub struct Args {
    /// Model directory with a masked-LM head (BertForMaskedLM or BertForPreTraining checkpoints)
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Candidates per mask (past the vocabulary size: every token)
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print the candidates as JSON (as transformers' fill-mask pipeline returns them)
    #[arg(long)]
    json: bool,
    /// Text with one or more [MASK] tokens
    text: String,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let pipeline = crate::load_releasing(|| {
        Pipeline::load_as(&model, BertArchitecture::MaskedLm, &crate::device::device(), dtype)
    })
    .with_context(|| format!("loading {}", model.display()))?;
    let masks = pipeline.fill_mask(&args.text, args.top_k)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&masks)?);
        return Ok(());
    }
    for (i, candidates) in masks.iter().enumerate() {
        if masks.len() > 1 {
            println!("mask {}:", i + 1);
        }
        for c in candidates {
            println!("{:.4}  {:<15} {}", c.score, c.token_str, c.sequence);
        }
    }
    Ok(())
}
