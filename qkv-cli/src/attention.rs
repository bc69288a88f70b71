//! `qkv attention`: PNG grids of every layer's and head's attention weights of a BERT, GPT-2 or translation
//! model directory reading a text, tokens on the axes, and the weights as JSON (`qkv plot attention` redraws
//! them).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::inference::attention::{attention_grids, AttentionText};
use qkv::plot;

#[derive(Parser)]
pub struct Args {
    /// Model directory: BERT (any head, or sentence-transformers), GPT-2, or a `qkv train translation` run or
    /// model
    #[arg(long)]
    model: PathBuf,
    /// The text the model reads (for a translation model: the source sentence)
    #[arg(long, visible_alias = "source")]
    text: String,
    /// Translation models: the target the decoder reads (default: the model's own greedy translation)
    #[arg(long)]
    target: Option<String>,
    /// Output directory: one PNG per kind of attention (self-attention.png, causal-self-attention.png, or the
    /// translator's encoder-self-attention.png, decoder-self-attention.png, cross-attention.png), each with
    /// its weights as .json
    #[arg(long, default_value = "attention")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let input = AttentionText { text: &args.text, target: args.target.as_deref() };
    let grids = attention_grids(&model, input, &crate::device::device())
        .with_context(|| format!("reading the attention of {}", model.display()))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for grid in &grids {
        let stem = grid.name.replace(' ', "-");
        let png = args.out.join(format!("{stem}.png"));
        let json = args.out.join(format!("{stem}.json"));
        let title = format!("{} reading \"{}\"", grid.name, short(&args.text));
        plot::attention_grid(&grid.weights, &grid.source_tokens, &grid.target_tokens, &title, &png)?;
        qkv::atomic_file::write_atomically(&json, serde_json::to_string(grid)?.as_bytes())?;
        let heads = grid.weights.first().map_or(0, Vec::len);
        println!("{}  ({} layers × {heads} heads)", png.display(), grid.weights.len());
    }
    Ok(())
}

/// The text as a title shows it: at most 40 characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
