//! `qkv convert --to safetensors DIR`: writes a PyTorch-format model directory's weights as model.safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
pub struct Args {
    /// The format to write
    #[arg(long, value_enum)]
    to: Format,
    /// Model directory with pytorch_model.bin (or pytorch_model.bin.index.json and its shards)
    dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// model.safetensors beside the .bin files (which are kept; qkv and transformers prefer the safetensors)
    Safetensors,
}

pub fn run(args: Args) -> Result<()> {
    match args.to {
        Format::Safetensors => {
            let path = qkv::hub::convert_to_safetensors(&args.dir)
                .with_context(|| format!("converting {}", args.dir.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
