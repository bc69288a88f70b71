//! `qkv train mlm`: pre-trains a BERT from scratch on a text file (one sentence or paragraph per line) with the
//! masked-language-model objective; writes a Hugging Face BertForMaskedLM directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::train::mlm::{pretrain, small_config, MlmEvent, MlmTraining};

#[derive(Parser)]
pub struct MlmArgs {
    /// Training text, one sequence per line (lines longer than --max-length tokens are cut)
    #[arg(long)]
    text: PathBuf,
    /// Output directory: model/ (config.json, model.safetensors, tokenizer.json) after each epoch, log.jsonl
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = MlmTraining::default().vocab_size)]
    vocab_size: usize,
    /// Keep the case of the text (default: lower-case, as bert-base-uncased)
    #[arg(long)]
    cased: bool,
    #[arg(long, default_value_t = MlmTraining::default().max_length)]
    max_length: usize,
    #[arg(long, default_value_t = MlmTraining::default().mlm_probability)]
    mlm_probability: f64,
    #[arg(long, default_value_t = MlmTraining::default().batch_size)]
    batch_size: usize,
    #[arg(long, default_value_t = MlmTraining::default().epochs)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = MlmTraining::default().learning_rate)]
    learning_rate: f64,
    #[arg(long, default_value_t = MlmTraining::default().seed)]
    seed: u64,
    /// Model width (the small preset: 256, 4 layers, 4 heads, feed-forward 4 × width)
    #[arg(long, default_value_t = 256)]
    hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
}

pub fn run(args: MlmArgs) -> Result<()> {
    let training = MlmTraining {
        text_file: args.text.clone(),
        vocab_size: args.vocab_size,
        lowercase: !args.cased,
        max_length: args.max_length,
        mlm_probability: args.mlm_probability,
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: args.max_steps,
        learning_rate: args.learning_rate,
        seed: args.seed,
        ..MlmTraining::default()
    };
    let config = qkv::models::bert::BertConfig {
        hidden_size: args.hidden_size,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        intermediate_size: 4 * args.hidden_size,
        ..small_config(0, args.max_length)
    };
    let bar = crate::progress::steps_bar();
    let result = pretrain(&args.out, &training, config, |event| match event {
        MlmEvent::Ready { sequences, held_out, parameters, total_steps } => {
            eprintln!("{sequences} sequences ({held_out} held out), {parameters} parameters, {total_steps} steps");
            bar.set_length(*total_steps as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        MlmEvent::Step { step, loss, learning_rate } => {
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {loss:.4}  lr {learning_rate:.2e}"));
        }
        MlmEvent::Eval(r) => bar.suspend(|| {
            eprintln!(
                "epoch {} (step {}): train loss {:.4}  validation loss {:.4}  ({:.0} s)",
                r.epoch, r.step, r.train_loss, r.valid_loss, r.seconds
            )
        }),
    });
    bar.finish_and_clear();
    result.with_context(|| format!("pre-training on {}", args.text.display()))?;
    println!("model: {}", args.out.join("model").display());
    Ok(())
}
