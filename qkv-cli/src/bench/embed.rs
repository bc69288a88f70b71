//! Sentence embeddings with all-MiniLM-L6-v2 (tools/bench/embed.py is the sentence-transformers side):
//! throughput on the first 1 024 STS-B dev sentences at batch 32, and the latency of one sentence.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use candle_core::Device;
use clap::Parser;
use qkv::inference::Embedder;
use qkv::metrics::correlation::spearman;
use qkv::text::labeled::{read_scored_pairs, ScoredPair};
use qkv::WeightDtype;

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
    #[command(flatten)]
    precision: crate::device::Precision,
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let encoder = crate::load_releasing(|| Embedder::load_as(&model, &Device::Cpu, dtype))?;
    let suffix = super::dtype_suffix(dtype);
    let loaded = super::resident_memory(&format!("embed{suffix}"))?;
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
    let mut results = vec![
        Measurement::rate(format!("embed sentences/s batch {}{suffix}", args.batch_size), "sentences/s", n, &batched),
        Measurement::milliseconds(format!("embed one sentence{suffix}"), &single),
        super::peak_memory(&format!("embed{suffix}"))?,
        loaded,
    ];
    if dtype != WeightDtype::F32 {
        results.extend(accuracy(dtype, &encoder, &model, &pairs, &sentences, args.batch_size)?);
    }
    Ok(results)
}

/// The reduced-precision embeddings against f32's, after the timings (so the f32 model never shares the
/// memory reading): the smallest cosine and the mean 1 − cosine over the timed sentences, and STS-B Spearman
/// (× 100) of both over every pair of the file.
fn accuracy(
    dtype: WeightDtype,
    encoder: &Embedder,
    model: &std::path::Path,
    pairs: &[ScoredPair],
    sentences: &[&str],
    batch_size: usize,
) -> Result<Vec<Measurement>> {
    let reference = Embedder::load(model, &Device::Cpu)?;
    let rows = |e: &Embedder, s: &[&str]| -> Result<Vec<Vec<f32>>> { Ok(e.embed(s, batch_size)?.to_vec2::<f32>()?) };
    let cosines: Vec<f64> =
        rows(encoder, sentences)?.iter().zip(&rows(&reference, sentences)?).map(|(a, b)| cosine(a, b)).collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean_gap = cosines.iter().map(|c| 1.0 - c).sum::<f64>() / cosines.len() as f64;
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let spearman = |e: &Embedder| -> Result<f64> {
        let firsts: Vec<&str> = pairs.iter().map(|p| p.first.as_str()).collect();
        let seconds: Vec<&str> = pairs.iter().map(|p| p.second.as_str()).collect();
        let (a, b) = (rows(e, &firsts)?, rows(e, &seconds)?);
        let predicted: Vec<f64> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
        Ok(100.0 * spearman(&predicted, &gold)?)
    };
    Ok(vec![
        Measurement::reading(format!("{dtype} min cosine vs fp32"), "cosine", min),
        Measurement::reading(format!("{dtype} mean 1 - cosine vs fp32"), "1 - cosine", mean_gap),
        Measurement::reading(format!("STS-B Spearman x100 ({dtype})"), "x100", spearman(encoder)?),
        Measurement::reading("STS-B Spearman x100 (fp32)".into(), "x100", spearman(&reference)?),
    ])
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}
