//! `qkv translate`: translates sentences (one per line, stdin or a file) with a trained model directory. A line
//! longer than 1024 subword tokens is refused (attention's cost grows with the square of the length).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::decode::DecodeOptions;
use qkv::inference::Translator;
use qkv::text::corpus::read_lines;

#[derive(Parser)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json), or a run directory (uses its best/)
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Beam size; 1 is greedy decoding (at most 1024)
    #[arg(long, default_value_t = DecodeOptions::default().beam)]
    beam: usize,
    /// GNMT length penalty α: hypotheses ranked by log p / ((5 + length) / 6)^α
    #[arg(long, default_value_t = DecodeOptions::default().length_penalty)]
    alpha: f64,
    /// Output length limit a · source length + b (subword tokens), never more than 4096 tokens
    #[arg(long, default_value_t = DecodeOptions::default().max_len_a)]
    max_len_a: f64,
    #[arg(long, default_value_t = DecodeOptions::default().max_len_b)]
    max_len_b: usize,
    /// Recompute the whole prefix at every step instead of caching keys and values (slow; for checking)
    #[arg(long)]
    no_cache: bool,
    /// Source tokens per batch
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Read sentences from this file instead of stdin
    #[arg(long)]
    input: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let model = crate::load_releasing(|| Translator::load_as(&model, &crate::device::device(), dtype))
        .with_context(|| format!("loading {}", model.display()))?;
    if !model.report.unused.is_empty() {
        eprintln!(
            "warning: {} tensors of the checkpoint are not used: {:?}",
            model.report.unused.len(),
            model.report.unused
        );
    }
    let sentences = match &args.input {
        Some(path) => read_lines(path)?,
        None => {
            let mut lines = Vec::new();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                lines.push(line.with_context(|| format!("stdin line {}: not UTF-8 text", i + 1))?);
            }
            lines
        }
    };
    let options = DecodeOptions {
        beam: args.beam,
        length_penalty: args.alpha,
        max_len_a: args.max_len_a,
        max_len_b: args.max_len_b,
        use_cache: !args.no_cache,
    };
    let translations = model.translate(&sentences, &options, args.max_tokens)?;
    let mut out = std::io::stdout().lock();
    for line in translations {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
