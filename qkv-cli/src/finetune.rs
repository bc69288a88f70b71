//! `qkv finetune classify`: fine-tunes a BERT directory for sequence classification on JSON-lines, Parquet or
//! TSV/CSV files (text[,text_b],label) into a Hugging Face directory, on the shared trainer (`--resume`, `--time-limit-minutes`,
//! Ctrl-C, early stopping), or searches its hyper-parameters (`--search`, crate::search).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qkv::train::classification::{ClassificationTrainer, ClassifierTraining, Metric};
use qkv::train::search::{self, Pruner, Sampler};
use qkv::train::trainer::{Finish, Task as _};

use crate::search::SearchSpec;
use crate::train::loop_args::{self, LoopArgs};
use crate::train::session::{plotted, report_finish, run_with_progress, stop_on_ctrl_c};

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

#[derive(Clone, Copy, ValueEnum)]
enum SamplerArg {
    Random,
    Grid,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrunerArg {
    /// Stop a trial whose best value so far is below the median of earlier trials at the same epoch
    Median,
    /// Successive halving: at epochs 1, 2, 4, … only the better half of the trials that got there go on
    Halving,
    None,
}

#[derive(Parser)]
pub struct ClassifyArgs {
    /// BERT directory to start from (config.json, model.safetensors, tokenizer)
    #[arg(long, alias = "model-name-or-path", required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training rows: .jsonl/.json (one object per line) or .parquet, columns by name (see --text-column);
    /// CSV/TSV as text,label or text,text_b,label (.tsv: tab-separated, unquoted)
    #[arg(long, alias = "train", required_unless_present = "resume")]
    train_file: Option<PathBuf>,
    /// Evaluation rows, same format (evaluated after each epoch)
    #[arg(long, alias = "dev", required_unless_present = "resume")]
    dev_file: Option<PathBuf>,
    /// Output directory: checkpoint-N/ per epoch, log.jsonl, and the best model at the top level
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint-N/ (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// Options as JSON (Hugging Face TrainingArguments names); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// The files start with a header row
    #[arg(long)]
    header: bool,
    /// Column of the (first) text [default: the first of text, sentence1, premise, question, sentence]. Given
    /// for a CSV/TSV file, columns are read by the names of its header row
    #[arg(long)]
    text_column: Option<String>,
    /// Column of the second text of a pair [default: text_pair, sentence2, hypothesis or sentence, where the
    /// table has one]
    #[arg(long)]
    text_pair_column: Option<String>,
    /// Column of the class label, a string or an integer [default: label, labels]
    #[arg(long)]
    label_column: Option<String>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long, alias = "batch-size")]
    per_device_train_batch_size: Option<usize>,
    #[arg(long)]
    per_device_eval_batch_size: Option<usize>,
    /// Share of the updates spent warming the learning rate up from 0
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Longer inputs are truncated to this many tokens
    #[arg(long)]
    max_length: Option<usize>,
    /// Metric that picks the best epoch (its model ends up in --out)
    #[arg(long, alias = "metric", value_enum)]
    metric_for_best_model: Option<MetricArg>,
    /// Hyper-parameter search instead of one run: trials drawn at random or from a grid over --space, each
    /// fine-tuned and evaluated per epoch; the best trial's model ends up in --out
    #[arg(long, value_enum, requires = "space")]
    search: Option<SamplerArg>,
    /// The search space, JSON: option name (as in --config) → {"log_uniform" | "uniform" | "int": [low, high]}
    /// or {"choice": [values]}
    #[arg(long)]
    space: Option<PathBuf>,
    /// Trials to run (a grid runs at most this many of its points)
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// When a search stops a hopeless trial (after an epoch's evaluation)
    #[arg(long, value_enum, default_value = "median")]
    pruner: PrunerArg,
    /// Trials that finish before the median pruner starts pruning
    #[arg(long, default_value_t = 2)]
    pruner_startup_trials: usize,
    /// No new trial starts once the search has trained this many minutes (resumes included)
    #[arg(long)]
    search_time_limit_minutes: Option<f64>,
    /// Seed of the trials' random draws (each trial's own --seed is an option like the others)
    #[arg(long, default_value_t = 0)]
    search_seed: u64,
    #[command(flatten)]
    run: LoopArgs,
}

pub fn run(args: Args) -> Result<()> {
    match args.task {
        Task::Classify(args) => classify(*args),
    }
}

fn options(args: &ClassifyArgs) -> Result<ClassifierTraining> {
    let mut t: ClassifierTraining = loop_args::options(args.config.as_deref(), &args.run)?;
    if let Some(path) = &args.train_file {
        t.train_file = path.clone();
    }
    if let Some(path) = &args.dev_file {
        t.dev_file = path.clone();
    }
    t.header |= args.header;
    let columns = &mut t.columns;
    for (option, value) in [
        (&mut columns.text_column, &args.text_column),
        (&mut columns.text_pair_column, &args.text_pair_column),
        (&mut columns.label_column, &args.label_column),
    ] {
        if value.is_some() {
            option.clone_from(value);
        }
    }
    override_some!(
        t,
        learning_rate = args.learning_rate,
        per_device_train_batch_size = args.per_device_train_batch_size,
        per_device_eval_batch_size = args.per_device_eval_batch_size,
        warmup_ratio = args.warmup_ratio,
        max_length = args.max_length,
    );
    if let Some(metric) = args.metric_for_best_model {
        t.metric_for_best_model = match metric {
            MetricArg::Accuracy => Metric::Accuracy,
            MetricArg::F1 => Metric::F1,
            MetricArg::Mcc => Metric::Mcc,
        };
    }
    Ok(t)
}

fn classify(args: ClassifyArgs) -> Result<()> {
    if args.resume && args.out.join("search.json").exists() {
        return crate::search::resume(&args.out, &*stop_on_ctrl_c()?);
    }
    if let Some(sampler) = args.search {
        return start_search(&args, sampler);
    }
    let mut trainer = if args.resume {
        let mut trainer =
            ClassificationTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?;
        args.run.apply_to_resumed(&mut trainer)?;
        trainer
    } else {
        let model = crate::model_dir::resolve(&args.model.clone().context("--model is required")?)?;
        ClassificationTrainer::create(&args.out, options(&args)?, model.clone())
            .with_context(|| format!("fine-tuning {}", model.display()))?
    };
    let stop = stop_on_ctrl_c()?;
    let (train, dev) = trainer.task().data_sizes();
    let data = format!("{train} training rows, {dev} dev rows, labels {:?}", trainer.task().labels());
    let finish = run_with_progress(&mut trainer, &stop, &args.out, &data, plotted("fine-tuning"), |r| {
        format!("accuracy {:.4}  F1 {:.4}  MCC {:.4}", r.metric("accuracy"), r.metric("f1"), r.metric("mcc"))
    })?;
    report_finish(&finish, &format!("qkv finetune classify --out {}", args.out.display()));
    if finish != Finish::Interrupted {
        let state = trainer.state();
        let metric = trainer.task().training().metric_for_best_model.name();
        println!(
            "best: step {} ({metric} {:.4}) → {}",
            state.best_step.unwrap_or(0),
            state.best_metric.unwrap_or(f64::NAN),
            args.out.display()
        );
    }
    Ok(())
}

fn start_search(args: &ClassifyArgs, sampler: SamplerArg) -> Result<()> {
    let space_path = args.space.clone().context("--search needs --space FILE.json")?;
    if args.trials == 0 {
        anyhow::bail!("--trials 0: a search needs at least one trial");
    }
    let mut base = options(args)?;
    base.model_name_or_path = crate::model_dir::resolve(&args.model.clone().context("--model is required")?)?;
    let spec = SearchSpec {
        sampler: match sampler {
            SamplerArg::Random => Sampler::Random,
            SamplerArg::Grid => Sampler::Grid,
        },
        trials: args.trials,
        space: search::read_space(&space_path)?,
        pruner: match args.pruner {
            PrunerArg::Median => Pruner::Median { startup_trials: args.pruner_startup_trials },
            PrunerArg::Halving => Pruner::Halving { reduction: 2 },
            PrunerArg::None => Pruner::None,
        },
        search_seed: args.search_seed,
        time_limit_minutes: args.search_time_limit_minutes,
        base,
    };
    crate::search::start(&args.out, spec, &space_path, &*stop_on_ctrl_c()?)
}
