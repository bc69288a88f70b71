//! `qkv train lm`: a GPT-2 language model from scratch on one text file, nanoGPT-style, into a run directory
//! whose `best/` is a Hugging Face GPT-2 directory (`qkv generate --model RUN/best`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::models::Gpt2Config;
use qkv::text::lm_tokenizer::LmVocabulary;
use qkv::train::language_model::{small_config, LmTrainer, LmTraining};
use qkv::train::trainer::Finish;

use crate::train::{run_with_progress, stop_on_ctrl_c};

#[derive(Parser)]
pub struct LmArgs {
    /// Run directory: checkpoints, best/ (a GPT-2 directory), log.jsonl and loss.png go here
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// The training text (UTF-8); its last --valid-fraction is held out for validation
    #[arg(long, required_unless_present = "resume")]
    text: Option<PathBuf>,
    /// Training options as JSON (the fields of training.json); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// GPT-2 config.json for the model (default: 4 layers, 4 heads, 128 wide, 64 positions, no dropout)
    #[arg(long)]
    model_config: Option<PathBuf>,
    #[arg(long)]
    n_layer: Option<usize>,
    #[arg(long)]
    n_head: Option<usize>,
    #[arg(long)]
    n_embd: Option<usize>,
    /// Dropout on embeddings, attention probabilities and residual branches
    #[arg(long)]
    dropout: Option<f64>,
    /// char (one token per character) or byte-bpe (GPT-2's byte-level BPE, --vocab-size tokens)
    #[arg(long, value_parser = ["char", "byte-bpe"])]
    vocabulary: Option<String>,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    valid_fraction: Option<f64>,
    /// Tokens per window (the model gets at least this many positions)
    #[arg(long)]
    block_size: Option<usize>,
    /// Windows per batch
    #[arg(long)]
    batch_size: Option<usize>,
    /// Batches per optimizer step (gradient accumulation)
    #[arg(long)]
    accumulate: Option<usize>,
    /// Micro-batches each batch is split into and run in parallel, one per thread by default (dropout draws
    /// depend on it: keep it to repeat a run on another machine)
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Steps between evaluations and checkpoints
    #[arg(long)]
    eval_interval: Option<usize>,
    /// Validation batches per evaluation (windows spread evenly over the held-out text)
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Peak learning rate (after warm-up; cosine decay to --min-lr)
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the gradient norm to this (0 turns clipping off)
    #[arg(long)]
    clip_norm: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many minutes of training in all (evaluates and checkpoints first)
    #[arg(long)]
    time_limit: Option<f64>,
}

pub fn run(args: LmArgs) -> Result<()> {
    let mut trainer = if args.resume {
        LmTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?
    } else {
        let training = training_options(&args)?;
        let model = model_config(&args, training.block_size)?;
        LmTrainer::create(&args.out, training, model)?
    };
    let stop = stop_on_ctrl_c()?;
    let (train_tokens, valid_tokens) = trainer.task().data_sizes();
    let data = format!(
        "{train_tokens} training tokens, {valid_tokens} held out, vocabulary {}",
        trainer.task().model().config().vocab_size
    );
    let finish = run_with_progress(&mut trainer, &stop, &args.out, &data, "language model training", |eval| {
        format!("train loss {:.4}", eval.metric("train_loss"))
    })?;
    match finish {
        Finish::Interrupted => {
            println!("interrupted; continue with: qkv train lm --out {} --resume", args.out.display())
        }
        Finish::Completed => println!(
            "best model: {} (qkv generate --model {} --prompt ...)",
            args.out.join("best").display(),
            args.out.join("best").display()
        ),
    }
    Ok(())
}

fn training_options(args: &LmArgs) -> Result<LmTraining> {
    let mut t: LmTraining =
        crate::progress::json_config(args.config.as_deref(), "training config")?.unwrap_or_default();
    if let Some(text) = &args.text {
        t.text = text.clone();
    }
    if let Some(vocabulary) = &args.vocabulary {
        t.vocabulary = if vocabulary == "char" { LmVocabulary::Char } else { LmVocabulary::ByteBpe };
    }
    override_some!(
        t,
        vocab_size = args.vocab_size,
        valid_fraction = args.valid_fraction,
        block_size = args.block_size,
        batch_size = args.batch_size,
        accumulate = args.accumulate,
        shards = args.shards,
        max_steps = args.max_steps,
        eval_interval = args.eval_interval,
        eval_batches = args.eval_batches,
        learning_rate = args.learning_rate,
        min_lr = args.min_lr,
        warmup = args.warmup,
        seed = args.seed,
    );
    if let Some(decay) = args.weight_decay {
        t.adam.weight_decay = decay;
    }
    if let Some(clip) = args.clip_norm {
        t.clip_norm = (clip > 0.0).then_some(clip);
    }
    if args.time_limit.is_some() {
        t.time_limit_minutes = args.time_limit;
    }
    Ok(t)
}

fn model_config(args: &LmArgs, block_size: usize) -> Result<Gpt2Config> {
    let mut c: Gpt2Config =
        crate::progress::json_config(args.model_config.as_deref(), "model config")?.unwrap_or_else(small_config);
    override_some!(c, n_layer = args.n_layer, n_head = args.n_head, n_embd = args.n_embd);
    if let Some(p) = args.dropout {
        (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) = (p, p, p);
    }
    c.n_positions = c.n_positions.max(block_size);
    Ok(c)
}
