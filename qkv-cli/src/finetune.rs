//! `qkv finetune classify`: fine-tunes a BERT directory for sequence classification on TSV/CSV files
//! (text[,text_b],label) into a Hugging Face directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qkv::train::classification::{fine_tune, ClassifierEvent, ClassifierTraining, Metric};

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Sequence classification (BertForSequenceClassification) from a BERT checkpoint
    Classify(Box<ClassifyArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum MetricArg {
    Accuracy,
    F1,
    Mcc,
}

#[derive(Parser)]
pub struct ClassifyArgs {
    /// BERT directory to start from (config.json, model.safetensors, tokenizer)
    #[arg(long)]
    model: PathBuf,
    /// Training rows: text,label or text,text_b,label (.tsv: tab-separated, unquoted)
    #[arg(long)]
    train: PathBuf,
    /// Evaluation rows, same format (evaluated after each epoch)
    #[arg(long)]
    dev: PathBuf,
    /// Output directory: checkpoint-N/ per epoch, log.jsonl, and the best model at the top level
    #[arg(long)]
    out: PathBuf,
    /// Options as JSON (Hugging Face TrainingArguments names); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// The files start with a header row
    #[arg(long)]
    header: bool,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Share of the updates spent warming the learning rate up from 0
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Clip the gradient norm to this (0: no clipping)
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Longer inputs are truncated to this many tokens
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Micro-batches each batch is split into and run in parallel, one per thread by default (dropout draws
    /// depend on it: keep it to repeat a run on another machine)
    #[arg(long)]
    shards: Option<usize>,
    /// Metric that picks the best epoch (its model is loaded at the end)
    #[arg(long, value_enum)]
    metric: Option<MetricArg>,
    /// Stop after this many epochs without improvement
    #[arg(long)]
    patience: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    match args.task {
        Task::Classify(args) => classify(*args),
    }
}

fn options(args: &ClassifyArgs) -> Result<ClassifierTraining> {
    let mut t: ClassifierTraining =
        crate::progress::json_config(args.config.as_deref(), "fine-tuning config")?.unwrap_or_default();
    t.train_file = args.train.clone();
    t.dev_file = args.dev.clone();
    t.header |= args.header;
    override_some!(
        t,
        learning_rate = args.learning_rate,
        per_device_train_batch_size = args.batch_size,
        num_train_epochs = args.epochs,
        weight_decay = args.weight_decay,
        warmup_ratio = args.warmup_ratio,
        max_grad_norm = args.max_grad_norm,
        max_length = args.max_length,
        seed = args.seed,
        shards = args.shards,
    );
    if let Some(metric) = args.metric {
        t.metric_for_best_model = match metric {
            MetricArg::Accuracy => Metric::Accuracy,
            MetricArg::F1 => Metric::F1,
            MetricArg::Mcc => Metric::Mcc,
        };
    }
    if args.patience.is_some() {
        t.early_stopping_patience = args.patience;
    }
    Ok(t)
}

fn classify(args: ClassifyArgs) -> Result<()> {
    let training = options(&args)?;
    let bar = crate::progress::steps_bar();
    let result = fine_tune(&args.model, &args.out, &training, |event| match event {
        ClassifierEvent::Ready { train, dev, labels, total_steps } => {
            eprintln!("{train} training rows, {dev} dev rows, labels {labels:?}, {total_steps} steps");
            bar.set_length(*total_steps as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        ClassifierEvent::Step { step, loss, learning_rate } => {
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {loss:.4}  lr {learning_rate:.2e}"));
        }
        ClassifierEvent::Eval(r) => bar.suspend(|| {
            eprintln!(
                "epoch {} (step {}): train loss {:.4}  eval loss {:.4}  accuracy {:.4}  F1 {:.4}  MCC {:.4}  ({:.0} s)",
                r.epoch, r.step, r.train_loss, r.eval_loss, r.accuracy, r.f1, r.mcc, r.seconds
            )
        }),
        ClassifierEvent::Saved { path, best } => {
            bar.suspend(|| eprintln!("  saved {}{}", path.display(), if *best { " (best so far)" } else { "" }))
        }
    });
    bar.finish_and_clear();
    let done = result.with_context(|| format!("fine-tuning {}", args.model.display()))?;
    let b = &done.best;
    println!(
        "best epoch {}: accuracy {:.4}  F1 {:.4}  MCC {:.4}  ({:.0} s in all) → {}",
        b.epoch,
        b.accuracy,
        b.f1,
        b.mcc,
        done.seconds,
        args.out.display()
    );
    Ok(())
}
