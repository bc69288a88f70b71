//! `qkv train translation`: trains an encoder-decoder Transformer on a parallel corpus into a run directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use qkv::models::{PositionEncoding, TransformerConfig};
use qkv::nn::NormPosition;
use qkv::text::tokenizer::SubwordModel;
use qkv::train::trainer::{EvalRecord, Event, Finish, Task, Trainer};
use qkv::train::translation::{TranslationTrainer, TranslationTraining};
use qkv::{plot, run_log};

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    task: Objective,
}

#[derive(Subcommand)]
enum Objective {
    /// An encoder-decoder Transformer on parallel text files (one sentence per line)
    Translation(Box<TranslationArgs>),
    /// A BERT pre-trained from scratch with the masked-language-model objective (WordPiece vocabulary included)
    Mlm(Box<crate::mlm::MlmArgs>),
    /// A GPT-2 language model from scratch on one text file (character or byte-level BPE vocabulary)
    Lm(Box<crate::lm::LmArgs>),
}

#[derive(Parser)]
pub struct TranslationArgs {
    /// Run directory: checkpoints, best model, log.jsonl and loss.png go here
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// Training source sentences
    #[arg(long, required_unless_present = "resume")]
    train_src: Option<PathBuf>,
    /// Training target sentences, line-aligned with --train-src
    #[arg(long, required_unless_present = "resume")]
    train_tgt: Option<PathBuf>,
    /// Validation source sentences (loss and BLEU after each epoch)
    #[arg(long, required_unless_present = "resume")]
    valid_src: Option<PathBuf>,
    /// Validation target sentences
    #[arg(long, required_unless_present = "resume")]
    valid_tgt: Option<PathBuf>,
    /// Training options as JSON (the fields of training.json); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model size: small (3+3 layers, 256 wide) or base (the paper's 6+6, 512)
    #[arg(long, default_value = "small")]
    preset: String,
    /// Model config.json overriding the preset
    #[arg(long)]
    model_config: Option<PathBuf>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    d_ff: Option<usize>,
    /// Dropout (residual and embeddings; attention and activation dropout too)
    #[arg(long)]
    dropout: Option<f64>,
    #[arg(long, value_parser = ["sinusoidal", "learned", "relative"])]
    positions: Option<String>,
    #[arg(long, value_parser = ["post", "pre"])]
    norm: Option<String>,
    /// Separate source and target embedding matrices (default: one shared matrix)
    #[arg(long)]
    no_share_embeddings: bool,
    /// A separate output projection (default: tied to the target embedding)
    #[arg(long)]
    no_tie_output: bool,
    #[arg(long, value_parser = ["bpe", "wordpiece"])]
    subword: Option<String>,
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Tokens per batch, padding included
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Batches per optimizer step (gradient accumulation)
    #[arg(long)]
    accumulate: Option<usize>,
    /// Micro-batches each batch is split into and run in parallel, one per thread by default (dropout draws
    /// depend on it: keep it to repeat a run on another machine)
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many minutes of training in all (evaluates and checkpoints first)
    #[arg(long)]
    time_limit: Option<f64>,
    /// lr = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)
    #[arg(long)]
    lr_factor: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Clip the gradient norm to this (0 turns clipping off)
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Skip training pairs longer than this many subword tokens (counted and reported)
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Step checkpoints to keep (for averaging)
    #[arg(long)]
    keep_last: Option<usize>,
    /// Also checkpoint every N steps
    #[arg(long)]
    save_every: Option<usize>,
    /// Beam size for the validation BLEU (1 = greedy)
    #[arg(long)]
    eval_beam: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    match args.task {
        Objective::Translation(args) => translation(*args),
        Objective::Mlm(args) => crate::mlm::run(*args),
        Objective::Lm(args) => crate::lm::run(*args),
    }
}

fn translation(args: TranslationArgs) -> Result<()> {
    let mut trainer = if args.resume {
        TranslationTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?
    } else {
        let training = training_options(&args)?;
        let model = model_config(&args)?;
        TranslationTrainer::create(&args.out, training, model)?
    };
    let stop = stop_on_ctrl_c()?;
    let finish = train_with_progress(&mut trainer, &stop, &args.out)?;
    if finish == Finish::Interrupted {
        println!("interrupted; continue with: qkv train translation --out {} --resume", args.out.display());
    }
    Ok(())
}

/// Runs a translation trainer with a progress bar and messages, then draws loss.png from the run's log.
pub fn train_with_progress(trainer: &mut TranslationTrainer, stop: &AtomicBool, out: &Path) -> Result<Finish> {
    let (train_pairs, skipped, valid_pairs) = trainer.task().data_sizes();
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} training pairs longer than max_len tokens");
    }
    let data = format!("{train_pairs} training pairs, {valid_pairs} validation pairs");
    run_with_progress(trainer, stop, out, &data, "translation training", |eval| {
        format!("BLEU {:.2}  chrF2 {:.2}", eval.metric("val_bleu"), eval.metric("val_chrf"))
    })
}

/// Runs any trainer with a progress bar, a line per evaluation (`describe` adds the task's metrics to the
/// validation loss) and per new best checkpoint, then draws loss.png from the run's log.
pub fn run_with_progress<T: Task>(
    trainer: &mut Trainer<T>,
    stop: &AtomicBool,
    out: &Path,
    data: &str,
    title: &str,
    describe: impl Fn(&EvalRecord) -> String,
) -> Result<Finish> {
    let bar = crate::progress::steps_bar();
    let mut total_steps = 0u64;
    let result = trainer.run(stop, |event| match event {
        Event::Ready { parameters, steps_per_epoch } => {
            eprintln!("{data}, {parameters} parameters, {steps_per_epoch} steps per epoch");
            total_steps = *steps_per_epoch as u64;
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        Event::Step(record) => {
            if bar.length().is_none_or(|len| record.step as u64 > len) {
                bar.set_length(total_steps * record.epoch as u64);
            }
            bar.set_position(record.step as u64);
            bar.set_message(format!(
                "epoch {}  loss {:.3}  lr {:.2e}  {:.0} tok/s",
                record.epoch, record.loss, record.lr, record.tokens_per_s
            ));
        }
        // Printed around the bar (not through it) so they also reach a log file when stderr is not a terminal.
        Event::Eval(eval) => bar.suspend(|| {
            eprintln!(
                "epoch {} (step {}): valid loss {:.4}  {}  ({:.1} s)",
                eval.epoch,
                eval.step,
                eval.val_loss,
                describe(eval),
                eval.seconds
            )
        }),
        Event::Checkpoint { path, best, .. } => {
            if *best {
                bar.suspend(|| eprintln!("  new best → {}", path.display()));
            }
        }
    });
    bar.finish_and_clear();
    let finish = result?;
    let log = run_log::read_log(&out.join("log.jsonl"))?;
    plot::loss_curve(&log, &plot::CurveOptions { title: title.to_string(), metrics: None }, &out.join("loss.png"))?;
    eprintln!("loss curve: {}", out.join("loss.png").display());
    Ok(finish)
}

/// Ctrl-C raises the returned flag (the trainer then checkpoints and stops); a second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step, writing a checkpoint, then exiting (again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

fn training_options(args: &TranslationArgs) -> Result<TranslationTraining> {
    let mut t: TranslationTraining =
        crate::progress::json_config(args.config.as_deref(), "training config")?.unwrap_or_default();
    let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
    t.train_source = path(&args.train_src);
    t.train_target = path(&args.train_tgt);
    t.valid_source = path(&args.valid_src);
    t.valid_target = path(&args.valid_tgt);
    if let Some(subword) = &args.subword {
        t.subword = if subword == "bpe" { SubwordModel::Bpe } else { SubwordModel::WordPiece };
    }
    override_some!(
        t,
        vocab_size = args.vocab_size,
        max_tokens = args.max_tokens,
        accumulate = args.accumulate,
        shards = args.shards,
        epochs = args.epochs,
        lr_factor = args.lr_factor,
        warmup = args.warmup,
        label_smoothing = args.label_smoothing,
        max_len = args.max_len,
        seed = args.seed,
        keep_last = args.keep_last
    );
    if args.time_limit.is_some() {
        t.time_limit_minutes = args.time_limit;
    }
    if args.max_steps.is_some() {
        t.max_steps = args.max_steps;
    }
    if args.save_every.is_some() {
        t.save_every = args.save_every;
    }
    if let Some(clip) = args.clip_norm {
        t.clip_norm = (clip > 0.0).then_some(clip);
    }
    if let Some(beam) = args.eval_beam {
        t.eval_decode.beam = beam;
    }
    Ok(t)
}

fn model_config(args: &TranslationArgs) -> Result<TransformerConfig> {
    let mut c = match crate::progress::json_config(args.model_config.as_deref(), "model config")? {
        Some(config) => config,
        None => TransformerConfig::preset(&args.preset)?,
    };
    if let Some(layers) = args.layers {
        (c.encoder_layers, c.decoder_layers) = (layers, layers);
    }
    if let Some(d) = args.d_model {
        c.d_model = d;
    }
    if let Some(h) = args.heads {
        (c.encoder_attention_heads, c.decoder_attention_heads) = (h, h);
    }
    if let Some(f) = args.d_ff {
        (c.encoder_ffn_dim, c.decoder_ffn_dim) = (f, f);
    }
    if let Some(p) = args.dropout {
        (c.dropout, c.attention_dropout, c.activation_dropout) = (p, p, p);
    }
    if let Some(positions) = &args.positions {
        c.position_encoding = match positions.as_str() {
            "sinusoidal" => PositionEncoding::Sinusoidal,
            "learned" => PositionEncoding::Learned,
            "relative" => PositionEncoding::Relative,
            other => bail!("--positions {other}: expected sinusoidal, learned or relative"),
        };
    }
    if let Some(norm) = &args.norm {
        c.norm_position = if norm == "pre" { NormPosition::Pre } else { NormPosition::Post };
    }
    c.share_encoder_decoder_embeddings &= !args.no_share_embeddings;
    c.tie_word_embeddings &= !args.no_tie_output;
    Ok(c)
}
