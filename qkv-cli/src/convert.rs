//! `qkv convert`: a PyTorch-format model directory's weights as model.safetensors (`--to safetensors DIR`), or
//! a model directory saved with its matrices in bf16 or int8 (`--dtype int8 DIR --out NEW_DIR`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["to", "dtype"]))]
pub struct Args {
    /// The format to write, beside the PyTorch files
    #[arg(long, value_enum)]
    to: Option<Format>,
    /// Save the model with the matrices its inference packs stored in this dtype (bf16: half the bytes, int8: a
    /// quarter with one scale per output channel; the rest stays f32), as a new directory (--out). The inference
    /// commands load it in that dtype unless --dtype says otherwise
    #[arg(long, requires = "out", conflicts_with = "to")]
    dtype: Option<qkv::WeightDtype>,
    /// The directory --dtype writes (it must not exist yet)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model directory: with --to, one with pytorch_model.bin (or pytorch_model.bin.index.json and its shards);
    /// with --dtype, any bert, gpt2 or translation model directory (a Hub id too)
    dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// model.safetensors beside the .bin files (which are kept; qkv and transformers prefer the safetensors)
    Safetensors,
}

pub fn run(args: Args) -> Result<()> {
    let path = match (args.to, args.dtype, &args.out) {
        (Some(Format::Safetensors), _, _) => {
            qkv::hub::convert_to_safetensors(&args.dir).with_context(|| format!("converting {}", args.dir.display()))?
        }
        (None, Some(dtype), Some(out)) => {
            let dir = crate::model_dir::resolve(&args.dir)?;
            qkv::inference::convert::convert(&dir, dtype, out)
                .with_context(|| format!("converting {} to {dtype}", args.dir.display()))?
        }
        _ => anyhow::bail!("give --to safetensors, or --dtype with --out"),
    };
    println!("wrote {}", path.display());
    Ok(())
}
