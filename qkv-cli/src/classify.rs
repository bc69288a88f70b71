//! `qkv classify`: label probabilities from a BertForSequenceClassification directory (e.g. one written by
//! `qkv finetune classify`) for texts or text pairs, one per line (pairs separated by a tab).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv::inference::pipeline::Pipeline;
use qkv::models::bert::BertArchitecture;

#[derive(Parser)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Texts, one per line; `text<TAB>text_b` for pairs (default: stdin)
    #[arg(long)]
    input: Option<PathBuf>,
    /// Texts per forward pass
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// One JSON object per line: {"text", "label", "score", "labels": [{label, score}, ...]}
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let lines = crate::progress::input_lines(args.input.as_deref())?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let architecture = BertArchitecture::SequenceClassification;
    let pipeline = crate::load_releasing(|| Pipeline::load_as(&model, architecture, &crate::device::device(), dtype))
        .with_context(|| format!("loading {}", model.display()))?;
    for chunk in lines.chunks(args.batch_size) {
        let inputs: Vec<(&str, Option<&str>)> = chunk
            .iter()
            .map(|line| match line.split_once('\t') {
                Some((a, b)) => (a, Some(b)),
                None => (line.as_str(), None),
            })
            .collect();
        for (line, scores) in chunk.iter().zip(pipeline.classify(&inputs)?) {
            let best = &scores[0];
            if args.json {
                let record =
                    serde_json::json!({ "text": line, "label": best.label, "score": best.score, "labels": scores });
                println!("{record}");
            } else {
                println!("{}\t{:.4}\t{line}", best.label, best.score);
            }
        }
    }
    Ok(())
}
