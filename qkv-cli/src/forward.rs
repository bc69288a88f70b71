//! `qkv forward`: runs a Hugging Face checkpoint on given token ids and writes every output the Hugging Face
//! class returns, under its names, to a safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::hub;
use qkv::inference::forward::{checkpoint_outputs, CheckpointOutputs};

#[derive(Parser)]
pub struct Args {
    /// Hugging Face model directory (config.json + model.safetensors or sharded weights)
    #[arg(long)]
    model: PathBuf,
    /// safetensors with input_ids (batch, sequence) and optionally attention_mask and token_type_ids
    /// (int64 as transformers writes them; int32 accepted)
    #[arg(long)]
    input: PathBuf,
    /// safetensors to write: last_hidden_state, pooler_output, logits, start_logits, end_logits,
    /// prediction_logits, seq_relationship_logits — whichever the class returns
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let device = crate::device::device();
    let inputs = hub::load_integer_tensors(&args.input, &device)?;
    let CheckpointOutputs { outputs, unused_inputs } = checkpoint_outputs(&model, inputs, &device)
        .with_context(|| format!("running {} on {}", model.display(), args.input.display()))?;
    for name in unused_inputs {
        eprintln!("warning: input tensor `{name}` is not used");
    }
    hub::save_safetensors(&outputs, &args.output)?;
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("wrote {} ({})", args.output.display(), names.join(", "));
    Ok(())
}
