//! `qkv forward`: runs a Hugging Face checkpoint on given token ids and writes every output the Hugging Face
//! class returns, under its names, to a safetensors file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use qkv::hub::{self, bert};
use qkv::models::bert::BertInput;
use qkv::nn::Mode;

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
    let device = Device::Cpu;
    let architecture = hub::architecture_name(&args.model)?;
    let mut inputs = hub::load_integer_tensors(&args.input, &device)?;
    let Some(input_ids) = inputs.remove("input_ids") else {
        bail!("{}: no tensor `input_ids`", args.input.display());
    };
    let outputs: Vec<(String, Tensor)> = if architecture.starts_with("Bert") || architecture == "bert" {
        let loaded = bert::load(&args.model, &bert::LoadOptions::default(), &device)
            .with_context(|| format!("loading {}", args.model.display()))?;
        let input = BertInput {
            input_ids,
            attention_mask: inputs.remove("attention_mask"),
            token_type_ids: inputs.remove("token_type_ids"),
        };
        let outputs = loaded.frozen()?.forward(&input, &mut Mode::Eval)?;
        outputs.into_iter().map(|(name, t)| (name.to_string(), t)).collect()
    } else if architecture.starts_with("GPT2") || architecture == "gpt2" {
        let loaded =
            qkv::hub::gpt2::load(&args.model, &device).with_context(|| format!("loading {}", args.model.display()))?;
        let mask = inputs.remove("attention_mask");
        let model = loaded.frozen()?;
        let hidden = model.hidden_masked(&input_ids, mask.as_ref(), &mut Mode::Eval)?;
        if architecture == "GPT2Model" {
            vec![("last_hidden_state".to_string(), hidden)]
        } else {
            vec![("logits".to_string(), model.logits(&hidden)?)]
        }
    } else {
        bail!(
            "{}: architecture {architecture} is not supported (BertModel, BertFor*, GPT2Model and GPT2LMHeadModel are)",
            args.model.display()
        );
    };
    if let Some(name) = inputs.keys().next() {
        eprintln!("warning: input tensor `{name}` is not used");
    }
    hub::save_safetensors(&outputs, &args.output)?;
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("wrote {} ({})", args.output.display(), names.join(", "));
    Ok(())
}
