//! `qkv plot`: redraws a run's curves, compares runs, draws attention weights or a chart; the figures are
//! [`qkv::plot`]'s.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use qkv::plot::{self, CompareOptions, CurveOptions};
use qkv::run_log::{read_log, LogRecord};
use serde::Deserialize;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// One run's training and validation loss against the optimizer step, with a panel per task metric
    /// (BLEU, chrF …), from its log.jsonl
    Loss {
        /// The training log (JSON lines with "kind": "train" or "eval")
        #[arg(long)]
        log: PathBuf,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
        /// Title above the plot (default: the log's path)
        #[arg(long)]
        title: Option<String>,
        /// A metric of the eval records to plot, by name (e.g. val_bleu); repeat for several (default: all)
        #[arg(long = "metric", value_name = "NAME")]
        metrics: Vec<String>,
    },
    /// Several runs' validation losses in one figure, one colour per run
    Compare {
        /// A run to draw, as NAME=PATH: PATH is its log.jsonl or its run directory; repeat for each run
        #[arg(long = "run", value_name = "NAME=PATH", required = true, value_parser = parse_run)]
        runs: Vec<(String, PathBuf)>,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
        /// Title above the plot (default: the run names)
        #[arg(long)]
        title: Option<String>,
        /// Also draw each run's training loss (dashed)
        #[arg(long)]
        train_loss: bool,
        /// A metric of the eval records to compare in a panel of its own (e.g. val_bleu); repeat for several
        #[arg(long = "metric", value_name = "NAME")]
        metrics: Vec<String>,
    },
    /// Attention heatmaps, one per layer and head, from a JSON file with "source_tokens",
    /// "target_tokens" and "weights" ([layer][head][target position][source position])
    Attention {
        /// The attention weights as JSON
        #[arg(long)]
        weights: PathBuf,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
        /// Title above the grid
        #[arg(long, default_value = "cross-attention")]
        title: String,
    },
    /// A chart of measured series (lines, markers, error bars) from a JSON description: {"title", "note",
    /// "x_label", "y_label", "x_categories": [names], "log_x", "series": [{"name", "points": [[x, y, spread?]],
    /// "dashed"}]}
    Chart {
        /// The chart as JSON
        #[arg(long)]
        spec: PathBuf,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
    },
}

/// The input of `qkv plot attention`.
#[derive(Deserialize)]
struct AttentionFile {
    source_tokens: Vec<String>,
    target_tokens: Vec<String>,
    /// [layer][head][target position][source position]
    weights: Vec<Vec<Vec<Vec<f32>>>>,
}

/// `qkv plot`: reads the input files and writes the PNG.
pub fn run(args: Args) -> Result<()> {
    let out = match args.kind {
        Kind::Loss { log, out, title, metrics } => {
            let records = read_log(&log)?;
            let title = title.unwrap_or_else(|| log.display().to_string());
            let metrics = (!metrics.is_empty()).then_some(metrics);
            plot::loss_curve(&records, &CurveOptions { title, metrics }, &out)?;
            out
        }
        Kind::Compare { runs, out, title, train_loss, metrics } => {
            let mut logs: Vec<Vec<LogRecord>> = Vec::with_capacity(runs.len());
            for (_, path) in &runs {
                let log = if path.is_dir() { path.join("log.jsonl") } else { path.clone() };
                logs.push(read_log(&log)?);
            }
            let named: Vec<(&str, &[LogRecord])> =
                runs.iter().zip(&logs).map(|((name, _), log)| (name.as_str(), log.as_slice())).collect();
            let title = title.unwrap_or_else(|| {
                let names: Vec<&str> = runs.iter().map(|(name, _)| name.as_str()).collect();
                names.join(" vs ")
            });
            plot::compare_runs(&named, &CompareOptions { title, train_loss, metrics }, &out)?;
            out
        }
        Kind::Attention { weights, out, title } => {
            let text = fs::read_to_string(&weights).with_context(|| format!("reading {}", weights.display()))?;
            let file: AttentionFile =
                serde_json::from_str(&text).with_context(|| format!("{}: not an attention file", weights.display()))?;
            plot::attention_grid(&file.weights, &file.source_tokens, &file.target_tokens, &title, &out)?;
            out
        }
        Kind::Chart { spec, out } => {
            let text = fs::read_to_string(&spec).with_context(|| format!("reading {}", spec.display()))?;
            plot::Chart::from_json(&text, &spec)?.draw(&out)?;
            out
        }
    };
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `NAME=PATH` of `--run`: split at the first `=`, both sides non-empty.
fn parse_run(value: &str) -> Result<(String, PathBuf)> {
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => bail!("expected NAME=PATH (a run's name, then its log.jsonl or run directory), got {value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_a_name_and_a_path() {
        assert_eq!(parse_run("base=runs/a").unwrap(), ("base".to_string(), PathBuf::from("runs/a")));
        assert_eq!(parse_run("lr=2e-3=x/log.jsonl").unwrap().1, PathBuf::from("2e-3=x/log.jsonl"));
        for bad in ["runs/a", "=runs/a", "base="] {
            assert!(parse_run(bad).unwrap_err().to_string().contains("NAME=PATH"), "{bad}");
        }
    }
}
