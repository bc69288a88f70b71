//! `qkv train lm`: a GPT-2 language model from scratch on one text file, nanoGPT-style, into a run directory
//! whose `best/` is a Hugging Face GPT-2 directory (`qkv generate --model RUN/best`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::models::Gpt2Config;
use qkv::text::lm_tokenizer::LmVocabulary;
use qkv::train::language_model::{small_config, LmTrainer, LmTraining};
use qkv::train::trainer::Finish;

use super::loop_args::{self, LoopArgs};
use super::session::{plotted, report_finish, run_with_progress, stop_on_ctrl_c};

#[derive(Parser)]
pub struct LmArgs {
    /// Run directory: checkpoints, best/ (a GPT-2 directory), log.jsonl and loss.png go here
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// The training text (UTF-8); its last --validation-fraction is held out for validation
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
    #[arg(long, alias = "valid-fraction")]
    validation_fraction: Option<f64>,
    /// Tokens per window (the model gets at least this many positions)
    #[arg(long)]
    block_size: Option<usize>,
    /// Windows per batch
    #[arg(long)]
    batch_size: Option<usize>,
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
    #[command(flatten)]
    run: LoopArgs,
}

pub fn run(args: LmArgs) -> Result<()> {
    let mut trainer = if args.resume {
        let mut trainer = LmTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?;
        args.run.apply_to_resumed(&mut trainer)?;
        trainer
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
    let finish =
        run_with_progress(&mut trainer, &stop, &args.out, &data, plotted("language model training"), |eval| {
            format!("train loss {:.4}", eval.metric("train_loss"))
        })?;
    report_finish(&finish, &format!("qkv train lm --out {}", args.out.display()));
    if finish != Finish::Interrupted {
        let best = args.out.join("best");
        println!("best model: {} (qkv generate --model {} --prompt ...)", best.display(), best.display());
    }
    Ok(())
}

fn training_options(args: &LmArgs) -> Result<LmTraining> {
    let mut t: LmTraining = loop_args::options(args.config.as_deref(), &args.run)?;
    if let Some(text) = &args.text {
        t.text = text.clone();
    }
    if let Some(vocabulary) = &args.vocabulary {
        t.vocabulary = if vocabulary == "char" { LmVocabulary::Char } else { LmVocabulary::ByteBpe };
    }
    override_some!(
        t,
        vocab_size = args.vocab_size,
        validation_fraction = args.validation_fraction,
        block_size = args.block_size,
        batch_size = args.batch_size,
        eval_interval = args.eval_interval,
        eval_batches = args.eval_batches,
        learning_rate = args.learning_rate,
        min_lr = args.min_lr,
        warmup = args.warmup,
    );
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
