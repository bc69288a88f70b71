//! `qkv train mlm`: pre-trains a BERT from scratch on a text file (one sentence or paragraph per line) with the
//! masked-language-model objective, on the shared trainer; its best/ is a Hugging Face BertForMaskedLM
//! directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::train::mlm::{small_config, MlmTrainer, MlmTraining};
use qkv::train::trainer::Finish;

use crate::train::{run_with_progress, stop_on_ctrl_c};

#[derive(Parser)]
pub struct MlmArgs {
    /// Training text, one sequence per line (lines longer than --max-length tokens are cut)
    #[arg(long, required_unless_present = "resume")]
    text: Option<PathBuf>,
    /// Run directory: best/ (a BertForMaskedLM directory: config.json, model.safetensors, tokenizer.json),
    /// checkpoints/, log.jsonl and loss.png
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// Stop after this many minutes of training in all (evaluates and checkpoints first)
    #[arg(long)]
    time_limit: Option<f64>,
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
    /// Micro-batches each batch is split into and run in parallel, one per thread by default (dropout and
    /// masking draws depend on it: keep it to repeat a run on another machine)
    #[arg(long)]
    shards: Option<usize>,
    /// Model width (the small preset: 256, 4 layers, 4 heads, feed-forward 4 × width)
    #[arg(long, default_value_t = 256)]
    hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
}

pub fn run(args: MlmArgs) -> Result<()> {
    let mut trainer = if args.resume {
        MlmTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?
    } else {
        let text = args.text.clone().context("--text is required unless --resume")?;
        let training = MlmTraining {
            text_file: text,
            vocab_size: args.vocab_size,
            lowercase: !args.cased,
            max_length: args.max_length,
            mlm_probability: args.mlm_probability,
            batch_size: args.batch_size,
            epochs: args.epochs,
            max_steps: args.max_steps,
            learning_rate: args.learning_rate,
            seed: args.seed,
            time_limit_minutes: args.time_limit,
            shards: args.shards.unwrap_or_else(qkv::train::data_parallel::default_shards),
            ..MlmTraining::default()
        };
        let config = qkv::models::bert::BertConfig {
            hidden_size: args.hidden_size,
            num_hidden_layers: args.layers,
            num_attention_heads: args.heads,
            intermediate_size: 4 * args.hidden_size,
            ..small_config(0, args.max_length)
        };
        MlmTrainer::create(&args.out, training, config)?
    };
    let stop = stop_on_ctrl_c()?;
    let (sequences, held_out) = trainer.task().data_sizes();
    let data = format!("{sequences} sequences ({held_out} held out)");
    let finish = run_with_progress(&mut trainer, &stop, &args.out, &data, "masked-LM pre-training", |_| String::new())?;
    match finish {
        Finish::Interrupted => {
            println!("interrupted; continue with: qkv train mlm --out {} --resume", args.out.display())
        }
        Finish::Completed => println!("model: {}", args.out.join("best").display()),
    }
    Ok(())
}
