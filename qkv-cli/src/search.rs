//! `qkv finetune classify --search random|grid --trials N --space FILE.json`: hyper-parameter search over the
//! fine-tuning options (qkv::train::search). Each trial is an ordinary fine-tuning run in `OUT/trials/trial-K/`,
//! evaluated after every epoch; the pruner may stop it there. Finished trials go to `OUT/trials.jsonl` as they
//! end, so `--resume` continues a killed search (a trial cut mid-way resumes from its last checkpoint). Only the
//! best trial's directory is kept, and its model is copied to OUT's top level, so OUT loads as the fine-tuned
//! model; `OUT/search.md` and `OUT/search_{option}.png` report the trials.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qkv::run_log::{self, EvalRecord, LogRecord};
use qkv::train::classification::{ClassificationTrainer, ClassifierTraining};
use qkv::train::search::{self, Ledger, Params, Pruner, Sampler, Space, TrialRecord, TrialStatus};
use qkv::train::trainer::{latest_checkpoint, Finish};
use serde::{Deserialize, Serialize};

use crate::train::session::{plotted, run_with_progress};

/// Everything a resumed search needs, kept as OUT/search.json.
#[derive(Serialize, Deserialize)]
pub struct SearchSpec {
    pub sampler: Sampler,
    pub trials: usize,
    pub space: Space,
    pub pruner: Pruner,
    pub search_seed: u64,
    pub time_limit_minutes: Option<f64>,
    /// The options every trial starts from (the command line's), the pre-trained model included.
    pub base: ClassifierTraining,
}

const SPEC: &str = "search.json";
const LEDGER: &str = "trials.jsonl";
/// What a fine-tuned directory's top level holds of the model (the rest is the run's own).
const MODEL_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// A new search: its spec written to `out` (which must not hold one), then run.
pub fn start(out: &Path, spec: SearchSpec, space_path: &Path, stop: &AtomicBool) -> Result<()> {
    if out.join(SPEC).exists() {
        bail!("{} already holds a search: add --resume to continue it, or choose another --out", out.display());
    }
    // Every trial's options are checked before the first one trains.
    let plan = search::plan(&spec.space, spec.sampler, spec.trials, spec.search_seed, space_path)?;
    for params in &plan {
        search::apply(&spec.base, params, space_path)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&spec)?;
    qkv::atomic_file::write_atomically(&out.join(SPEC), json.as_bytes())?;
    run(out, &spec, stop)
}

/// Continues the search in `out`.
pub fn resume(out: &Path, stop: &AtomicBool) -> Result<()> {
    let path = out.join(SPEC);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: SearchSpec = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    run(out, &spec, stop)
}

fn run(out: &Path, spec: &SearchSpec, stop: &AtomicBool) -> Result<()> {
    let spec_path = out.join(SPEC);
    let plan = search::plan(&spec.space, spec.sampler, spec.trials, spec.search_seed, &spec_path)?;
    let mut ledger = Ledger::open(&out.join(LEDGER))?;
    let budget = spec.time_limit_minutes.map(|m| m * 60.0);
    eprintln!("{} trials planned ({:?}), {} finished before", plan.len(), spec.sampler, ledger.trials.len());
    for (k, params) in plan.iter().enumerate() {
        if ledger.done(k) {
            continue;
        }
        if budget.is_some_and(|b| ledger.seconds() >= b) {
            eprintln!("the search's time budget is spent after {} trials", ledger.trials.len());
            break;
        }
        eprintln!("trial {k}: {}", describe(params));
        let Some(record) = trial(out, spec, k, params, &ledger, stop)? else {
            println!("interrupted in trial {k}; continue with: qkv finetune classify --out {} --resume", out.display());
            return Ok(());
        };
        let best_before = ledger.best().map(TrialRecord::best);
        ledger.push(record)?;
        keep_best(out, &ledger, best_before)?;
    }
    report(out, spec, &ledger)
}

/// Runs (or resumes) trial `k`; `None` when Ctrl-C stopped it (its checkpoint is kept for the resume).
fn trial(
    out: &Path,
    spec: &SearchSpec,
    k: usize,
    params: &Params,
    ledger: &Ledger,
    stop: &AtomicBool,
) -> Result<Option<TrialRecord>> {
    let dir = trial_dir(out, k);
    let started = Instant::now();
    let training = search::apply(&spec.base, params, &out.join(SPEC))?;
    let mut trainer = if latest_checkpoint(&dir).ok().flatten().is_some() {
        ClassificationTrainer::resume(&dir)?
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        ClassificationTrainer::create(&dir, training.clone(), training.model_name_or_path.clone())?
    };
    let metric = spec.base.metric_for_best_model.name();
    // The epochs a resumed trial finished before count for the pruner too (its log was cut to the checkpoint).
    let mut values: Vec<f64> = evaluations(&dir)?.iter().map(|r| r.metric(metric)).collect();
    let mut pruned = false;
    // Pruning stops the trainer through the Ctrl-C flag, lowered again once the trial has ended.
    let finish = run_with_progress(&mut trainer, stop, &dir, &format!("trial {k}"), plotted("fine-tuning"), |r| {
        values.push(r.metric(metric));
        if spec.pruner.prunes(&ledger.trials, &values) {
            pruned = true;
            stop.store(true, Ordering::SeqCst);
        }
        format!("{metric} {:.4}", r.metric(metric))
    });
    if pruned {
        stop.store(false, Ordering::SeqCst);
    }
    // The trainer's clock counts every session of the trial; a failed run may not have stopped it.
    let seconds = trainer.state().seconds.max(started.elapsed().as_secs_f64());
    let (status, error) = match finish {
        Ok(_) if pruned => (TrialStatus::Pruned, None),
        Ok(Finish::Interrupted) => return Ok(None),
        Ok(_) => (TrialStatus::Complete, None),
        // A trial whose options cannot train (a diverged loss) is recorded, and the search goes on.
        Err(e) => (TrialStatus::Failed, Some(format!("{e:#}"))),
    };
    if status == TrialStatus::Pruned {
        eprintln!("trial {k} pruned after epoch {} ({metric} {:.4})", values.len(), values.last().unwrap_or(&f64::NAN));
    }
    Ok(Some(TrialRecord { trial: k, params: params.clone(), values, status, error, seconds }))
}

/// The evaluations in a trial's log (none for a new trial).
fn evaluations(dir: &Path) -> Result<Vec<EvalRecord>> {
    let path = dir.join("log.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let log = run_log::read_log(&path)?;
    Ok(log.into_iter().filter_map(|r| if let LogRecord::Eval(e) = r { Some(e) } else { None }).collect())
}

fn trial_dir(out: &Path, k: usize) -> PathBuf {
    out.join("trials").join(format!("trial-{k:03}"))
}

/// After a trial: the best trial's directory stays (its model copied to OUT's top level), every other one goes.
fn keep_best(out: &Path, ledger: &Ledger, best_before: Option<f64>) -> Result<()> {
    let (Some(best), Some(last)) = (ledger.best(), ledger.trials.last()) else { return Ok(()) };
    let improved = best.trial == last.trial && best_before.is_none_or(|b| last.best() > b);
    if improved {
        let from = trial_dir(out, best.trial);
        for name in MODEL_FILES {
            let source = from.join(name);
            if source.is_file() {
                let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
                qkv::atomic_file::write_atomically(&out.join(name), &bytes)?;
            }
        }
    }
    for trial in &ledger.trials {
        let dir = trial_dir(out, trial.trial);
        if trial.trial != best.trial && dir.exists() {
            qkv::atomic_file::remove_dir_atomically(&dir)?;
        }
    }
    Ok(())
}

fn report(out: &Path, spec: &SearchSpec, ledger: &Ledger) -> Result<()> {
    let metric = spec.base.metric_for_best_model.name();
    let table = search::markdown(ledger, &spec.space, metric, None);
    let pruned = ledger.trials.iter().filter(|t| t.status == TrialStatus::Pruned).count();
    let head = format!(
        "# Hyper-parameter search\n\n{} trials ({:?} sampler, {:?} pruner, search seed {}), {pruned} pruned, {:.0} s of training. \
         Each trial is scored by its best epoch's dev {metric}.\n\n",
        ledger.trials.len(),
        spec.sampler,
        spec.pruner,
        spec.search_seed,
        ledger.seconds()
    );
    qkv::atomic_file::write_atomically(&out.join("search.md"), (head + &table).as_bytes())?;
    let figures = search::figures(ledger, &spec.space, metric, out, "search")?;
    println!("{table}");
    match ledger.best() {
        Some(best) => println!(
            "best: trial {} ({metric} {:.4}; {}) → {}",
            best.trial,
            best.best(),
            describe(&best.params),
            out.display()
        ),
        None => println!("no trial finished with a {metric}"),
    }
    eprintln!("report: {} and {} figures", out.join("search.md").display(), figures.len());
    Ok(())
}

fn describe(params: &Params) -> String {
    params.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
}
