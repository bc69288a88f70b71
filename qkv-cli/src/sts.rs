//! `qkv sts`: semantic textual similarity — the Spearman correlation between the cosine similarity of sentence
//! embeddings and gold scores (×100, as STS benchmarks report it).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use qkv::metrics::correlation::{pearson, spearman};
use qkv::text::labeled::read_scored_pairs;

#[derive(Parser)]
pub struct Args {
    /// Model directory, as for `qkv embed`
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// sentence1,sentence2,score rows (CSV with RFC 4180 quoting, or .tsv); a header row is skipped
    #[arg(long)]
    pairs: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print {"spearman": ..., "pearson": ..., "pairs": ...}
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let pairs = read_scored_pairs(&args.pairs)?;
    let encoder = crate::embed::load(&model, dtype)?;
    let started = Instant::now();
    let firsts: Vec<&str> = pairs.iter().map(|p| p.first.as_str()).collect();
    let seconds: Vec<&str> = pairs.iter().map(|p| p.second.as_str()).collect();
    let cosines = encoder.cosines(&firsts, &seconds, args.batch_size)?;
    let elapsed = started.elapsed().as_secs_f64();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let rho = 100.0 * spearman(&cosines, &gold)?;
    let r = 100.0 * pearson(&cosines, &gold)?;
    if args.json {
        println!("{}", serde_json::json!({ "spearman": rho, "pearson": r, "pairs": pairs.len() }));
    } else {
        println!("spearman {rho:.2}  pearson {r:.2}  ({} pairs)", pairs.len());
    }
    eprintln!(
        "{} sentences embedded in {elapsed:.2} s ({:.0} sentences/s)",
        2 * pairs.len(),
        2.0 * pairs.len() as f64 / elapsed
    );
    Ok(())
}
