//! Sentence embeddings with all-MiniLM-L6-v2 (tools/bench/embed.py is the sentence-transformers side):
//! throughput on the first 1 024 STS-B dev sentences at batch 32, and the latency of one sentence.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use candle_core::Device;
use clap::Parser;
use qkv::inference::Embedder;
use qkv::text::labeled::read_scored_pairs;

use super::{time, Measurement};

#[derive(Parser)]
pub struct Args {
    /// The model directory (tools/models/fetch_minilm.sh prints it)
    #[arg(long)]
    model: PathBuf,
    /// STS-B-style CSV whose first sentences are embedded
    #[arg(long, default_value = "../shared/data/stsb/dev.csv")]
    pairs: PathBuf,
    #[arg(long, default_value_t = 1024)]
    sentences: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Timed passes over the sentences
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    let model = crate::model_dir::resolve(&args.model)?;
    let encoder = Embedder::load(&model, &Device::Cpu)?;
    let pairs = read_scored_pairs(&args.pairs)?;
    let sentences: Vec<&str> =
        pairs.iter().flat_map(|p| [p.first.as_str(), p.second.as_str()]).take(args.sentences).collect();
    ensure!(sentences.len() == args.sentences, "{} holds only {} sentences", args.pairs.display(), sentences.len());
    let n = sentences.len() as f64;
    let batched = time(1, args.reps, || {
        encoder.embed(&sentences, args.batch_size)?;
        Ok(())
    })?;
    let single = time(5, 50, || {
        encoder.embed(&sentences[..1], 1)?;
        Ok(())
    })?;
    Ok(vec![
        Measurement::rate(format!("embed sentences/s batch {}", args.batch_size), "sentences/s", n, &batched),
        Measurement::milliseconds("embed one sentence".into(), &single),
        super::peak_memory("embed")?,
    ])
}
