//! The training loop every task shares: batches in a seeded order, gradient accumulation, AdamW with
//! clipping, a NaN guard, evaluation and an atomic checkpoint after every epoch, the best checkpoint kept
//! apart, a JSONL log, a time limit, Ctrl-C, and exact resume.
//!
//! A task ([`Task`]: translation, language modelling …) says what a batch is, what its loss is, how to
//! evaluate and how to write its model directory; [`Trainer`] does the rest. A run directory holds:
//! - `training.json` (the task's training options);
//! - `checkpoints/step-NNNNNNNN/`: a complete model directory plus `training.json`, `optimizer.safetensors`
//!   and `state.json`, the last `keep_last` of them (what `average` and `--resume` use);
//! - `best/`: the model directory of the best evaluation so far;
//! - `log.jsonl`: one record per logged step (`"kind": "train"`) and per evaluation (`"kind": "eval"`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{load_parameters, load_tensors, replace_dir_atomically, save_tensors};
use super::{data_parallel, AdamW, AdamWConfig};
use crate::hub::{read_json, write_json};
use crate::nn::{mode::Rng, Mode};
use crate::run_log::LogFile;
pub use crate::run_log::{EvalRecord, StepRecord};
use crate::{Error, Result};

/// The options of the loop itself, which every task's training options provide.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    /// Batches whose gradients are summed before one optimizer step.
    pub accumulate: usize,
    /// Micro-batches each batch is dealt into, run in parallel ([`data_parallel`]). Dropout draws depend on
    /// it, so a run repeats exactly only with the same value.
    pub shards: usize,
    /// Rounds of [`Task::epoch_batches`], each followed by evaluation and a checkpoint.
    pub epochs: usize,
    /// Stop after this many optimizer steps even mid-epoch.
    pub max_steps: Option<usize>,
    /// Stop (evaluate, checkpoint) once training has run this many minutes in all, resumes included.
    pub time_limit_minutes: Option<f64>,
    pub adam: AdamWConfig,
    pub clip_norm: Option<f64>,
    pub seed: u64,
    /// Step checkpoints kept (older ones are deleted).
    pub keep_last: usize,
    /// Also checkpoint every this many steps (besides each epoch's end).
    pub save_every: Option<usize>,
    /// Training records are written to log.jsonl every this many steps.
    pub log_every: usize,
}

impl LoopSettings {
    pub fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("accumulate", self.accumulate),
            ("shards", self.shards),
            ("epochs", self.epochs),
            ("log_every", self.log_every),
            ("keep_last", self.keep_last),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if let Some(minutes) = self.time_limit_minutes {
            if !(minutes > 0.0 && minutes.is_finite()) {
                return Err(Error::config("time_limit_minutes", minutes, "a positive number of minutes"));
            }
        }
        if self.save_every == Some(0) {
            return Err(Error::config("save_every", 0, "at least 1"));
        }
        Ok(())
    }
}

/// A validation pass: the loss and whatever else the task measures (BLEU, perplexity …).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Mean cross-entropy per predicted token, without label smoothing.
    pub val_loss: f64,
    /// Named scores, written to the log under their names (`val_bleu`, `val_chrf` …).
    pub metrics: BTreeMap<String, f64>,
}

/// A task's training options, which hold the loop's settings among their own.
pub trait TrainingOptions: Serialize {
    fn loop_settings(&self) -> LoopSettings;
}

/// What a training task gives the shared loop. `Sync`: micro-batches compute their losses on several threads.
pub trait Task: Sync {
    /// The task's training options: stored as `training.json` in the run and in every checkpoint.
    type Training: TrainingOptions;

    fn training(&self) -> &Self::Training;
    fn settings(&self) -> LoopSettings {
        self.training().loop_settings()
    }
    /// The model's parameters with their checkpoint names.
    fn vars(&self) -> &[(String, Var)];
    /// The batches of epoch `epoch` (0-based), each a list of example indices (or offsets) that only the task
    /// interprets. Must depend on the seed and the epoch alone, so that a resumed run sees the same batches.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>>;
    /// The mean training loss of one batch and the number of tokens it is the mean over.
    fn loss(&self, batch: &[usize], mode: &mut Mode) -> Result<(Tensor, usize)>;
    /// Learning rate of optimizer step `step` (counting from 1).
    fn learning_rate(&self, step: usize) -> f64;
    fn evaluate(&self) -> Result<Evaluation>;
    /// The metric that picks the best checkpoint (higher is better; ties go to the lower loss); `None` picks
    /// by the lowest validation loss.
    fn best_metric(&self) -> Option<&'static str>;
    /// Writes a loadable model directory (config, weights, tokenizer) into `dir`.
    fn save_model(&self, dir: &Path) -> Result<()>;
    /// Sets the parameters from a directory [`save_model`](Task::save_model) wrote (for resuming).
    fn load_model(&self, dir: &Path) -> Result<()> {
        load_parameters(self.vars(), &dir.join("model.safetensors"))
    }
}

/// Where a run is: saved in each checkpoint's `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already trained on.
    pub batches_done: usize,
    /// The dropout generator, so a resumed run draws the same masks as an uninterrupted one.
    pub dropout_rng: Rng,
    /// The best checkpoint's value of the task's [`Task::best_metric`] (absent when it has none).
    #[serde(alias = "best_bleu")]
    pub best_metric: Option<f64>,
    /// Validation loss of the best checkpoint (breaks metric ties, common on small validation sets).
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Wall-clock seconds spent in `run` so far, over all resumes (for `time_limit_minutes`).
    #[serde(default)]
    pub seconds: f64,
}

impl TrainState {
    fn new(seed: u64) -> Self {
        Self {
            step: 0,
            epoch: 0,
            batches_done: 0,
            dropout_rng: Rng::seed_from_u64(seed ^ 0xd50f),
            best_metric: None,
            best_val_loss: None,
            best_step: None,
            seconds: 0.0,
        }
    }
}

/// What the training loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Ready { parameters: usize, steps_per_epoch: usize },
    Step(StepRecord),
    Eval(EvalRecord),
    Checkpoint { path: PathBuf, step: usize, best: bool },
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Completed,
    /// The stop flag was raised (Ctrl-C); a checkpoint was written first.
    Interrupted,
}

/// A task being trained, with its optimizer and position in the run.
pub struct Trainer<T: Task> {
    run_dir: PathBuf,
    task: T,
    settings: LoopSettings,
    optimizer: AdamW,
    state: TrainState,
    /// When this session's `run` began and the training seconds before it.
    clock: Option<(Instant, f64)>,
}

impl<T: Task> Trainer<T> {
    /// A fresh run in `run_dir` (which the task has set up): writes `training.json`.
    pub fn start(run_dir: &Path, task: T) -> Result<Self> {
        let settings = task.settings();
        settings.validate()?;
        fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        write_json(&run_dir.join("training.json"), task.training())?;
        let state = TrainState::new(settings.seed);
        Self::assemble(run_dir, task, state)
    }

    /// Continues from `checkpoint` (a step checkpoint of this run): the task's parameters, the optimizer's
    /// moments and the loop's position, so the run goes on as if it had never stopped.
    pub fn restore(run_dir: &Path, checkpoint: &Path, task: T) -> Result<Self> {
        let state: TrainState = read_json(&checkpoint.join("state.json"))?;
        task.load_model(checkpoint)?;
        let mut trainer = Self::assemble(run_dir, task, state)?;
        let moments = load_tensors(&checkpoint.join("optimizer.safetensors"))?;
        trainer.optimizer.load_state(trainer.state.step, moments)?;
        Ok(trainer)
    }

    fn assemble(run_dir: &Path, task: T, state: TrainState) -> Result<Self> {
        let settings = task.settings();
        let optimizer = AdamW::new(task.vars().to_vec(), settings.adam, AdamW::decay_matrices)?;
        Ok(Self { run_dir: run_dir.to_path_buf(), task, settings, optimizer, state, clock: None })
    }

    pub fn task(&self) -> &T {
        &self.task
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.settings
    }

    /// Trains until the configured epochs (or steps, or minutes) are done or `stop` is raised, reporting
    /// through `on_event`. Evaluates and checkpoints after every epoch. A non-finite loss ends the run with an
    /// error and writes nothing, so the last checkpoint stays the last good one.
    pub fn run(&mut self, stop: &AtomicBool, mut on_event: impl FnMut(&Event)) -> Result<Finish> {
        let steps_per_epoch = self.task.epoch_batches(self.state.epoch)?.len().div_ceil(self.settings.accumulate);
        let parameters = self.task.vars().iter().map(|(_, v)| v.elem_count()).sum();
        on_event(&Event::Ready { parameters, steps_per_epoch });
        let mut log = LogFile::open(&self.run_dir.join("log.jsonl"))?;
        self.clock = Some((Instant::now(), self.state.seconds));
        while self.state.epoch < self.settings.epochs && !self.steps_exhausted() {
            let batches = self.task.epoch_batches(self.state.epoch)?;
            while self.state.batches_done < batches.len() {
                if stop.load(Ordering::Relaxed) {
                    self.save_checkpoint(false, &mut on_event)?;
                    return Ok(Finish::Interrupted);
                }
                if self.steps_exhausted() {
                    break;
                }
                let end = (self.state.batches_done + self.settings.accumulate).min(batches.len());
                let record = self.step(&batches[self.state.batches_done..end])?;
                self.state.batches_done = end;
                if record.step % self.settings.log_every == 0 || end == batches.len() {
                    log.write("train", &record)?;
                }
                on_event(&Event::Step(record));
                if self.settings.save_every.is_some_and(|n| self.state.step % n == 0) {
                    self.save_checkpoint(false, &mut on_event)?;
                }
            }
            if self.state.batches_done >= batches.len() {
                self.state.epoch += 1;
                self.state.batches_done = 0;
            }
            let eval = self.evaluate()?;
            log.write("eval", &eval)?;
            on_event(&Event::Eval(eval.clone()));
            let best = self.is_best(&eval);
            if best {
                self.state.best_metric = self.task.best_metric().map(|name| eval.metric(name));
                self.state.best_val_loss = Some(eval.val_loss);
                self.state.best_step = Some(self.state.step);
            }
            self.save_checkpoint(best, &mut on_event)?;
        }
        Ok(Finish::Completed)
    }

    /// The task's evaluation, stamped with the step, epoch and time it took.
    pub fn evaluate(&self) -> Result<EvalRecord> {
        let started = Instant::now();
        let evaluation = self.task.evaluate()?;
        Ok(EvalRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            val_loss: evaluation.val_loss,
            metrics: evaluation.metrics,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Better than the best so far: a higher metric, ties broken by a lower validation loss (or just a lower
    /// loss when the task has no metric). NaN losses never win.
    fn is_best(&self, eval: &EvalRecord) -> bool {
        let Some(best_loss) = self.state.best_val_loss else { return !eval.val_loss.is_nan() };
        match (self.task.best_metric(), self.state.best_metric) {
            (Some(name), Some(best)) => (eval.metric(name), -eval.val_loss) > (best, -best_loss),
            _ => eval.val_loss < best_loss,
        }
    }

    /// True once `max_steps` steps are taken or `time_limit_minutes` has passed.
    fn steps_exhausted(&self) -> bool {
        let out_of_time = self.settings.time_limit_minutes.is_some_and(|m| self.elapsed_seconds() >= m * 60.0);
        out_of_time || self.settings.max_steps.is_some_and(|max| self.state.step >= max)
    }

    /// Training seconds over the whole run: those of earlier sessions plus this one's.
    fn elapsed_seconds(&self) -> f64 {
        match self.clock {
            Some((started, before)) => before + started.elapsed().as_secs_f64(),
            None => self.state.seconds,
        }
    }

    /// One optimizer step over `group` (batches of the current epoch's list): each batch dealt into
    /// `shards` micro-batches that run in parallel ([`data_parallel`]), their gradients those of the mean
    /// loss over all of the group's tokens.
    fn step(&mut self, group: &[Vec<usize>]) -> Result<StepRecord> {
        let started = Instant::now();
        let micro_batches: Vec<Vec<usize>> =
            group.iter().flat_map(|batch| data_parallel::split(batch, self.settings.shards)).collect();
        let vars: Vec<Var> = self.task.vars().iter().map(|(_, v)| v.clone()).collect();
        let task = &self.task;
        let result = data_parallel::gradients(
            &vars,
            micro_batches.len(),
            self.settings.shards,
            Some(&mut self.state.dropout_rng),
            |i, mode| task.loss(&micro_batches[i], mode),
        )?;
        for &(value, _) in &result.losses {
            if !value.is_finite() {
                return Err(Error::config(
                    "training loss",
                    value,
                    format!(
                        "a finite number at step {}; lower the learning rate or lengthen the warm-up",
                        self.state.step + 1
                    ),
                ));
            }
        }
        let lr = self.task.learning_rate(self.state.step + 1);
        let stats = self.optimizer.step(&result.grads, lr, self.settings.clip_norm)?;
        self.state.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        let tokens = result.tokens();
        Ok(StepRecord {
            step: self.state.step,
            epoch: self.state.epoch + 1,
            loss: result.mean_loss(),
            lr,
            grad_norm: stats.grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        })
    }

    /// Writes `checkpoints/step-N` (and `best/` when `best`), then deletes step checkpoints beyond `keep_last`.
    fn save_checkpoint(&mut self, best: bool, on_event: &mut impl FnMut(&Event)) -> Result<()> {
        self.state.seconds = self.elapsed_seconds();
        let dir = self.run_dir.join("checkpoints").join(format!("step-{:08}", self.state.step));
        fs::create_dir_all(self.run_dir.join("checkpoints")).map_err(|e| Error::io(&self.run_dir, e))?;
        replace_dir_atomically(&dir, |tmp| {
            self.task.save_model(tmp)?;
            write_json(&tmp.join("training.json"), self.task.training())?;
            write_json(&tmp.join("state.json"), &self.state)?;
            let (_, moments) = self.optimizer.state()?;
            save_tensors(&moments, &tmp.join("optimizer.safetensors"))
        })?;
        on_event(&Event::Checkpoint { path: dir.clone(), step: self.state.step, best: false });
        if best {
            let best_dir = self.run_dir.join("best");
            replace_dir_atomically(&best_dir, |tmp| {
                self.task.save_model(tmp)?;
                write_json(&tmp.join("state.json"), &self.state)
            })?;
            on_event(&Event::Checkpoint { path: best_dir, step: self.state.step, best: true });
        }
        let mut kept = step_checkpoints(&self.run_dir)?;
        while kept.len() > self.settings.keep_last {
            let old = kept.remove(0);
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

/// The generator of epoch `epoch`'s batch order: the same for a run's seed and the epoch, whether or not the
/// run was resumed; `salt` keeps tasks from sharing orders.
pub fn epoch_rng(seed: u64, salt: u64, epoch: usize) -> Rng {
    Rng::seed_from_u64(seed.wrapping_mul(salt).wrapping_add(epoch as u64))
}

/// A run directory must not hold a run already (resume it instead).
pub fn check_new_run(run_dir: &Path) -> Result<()> {
    if run_dir.join("training.json").exists() {
        return Err(Error::input(run_dir, None, "already holds a training run: resume it or choose another --out"));
    }
    fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))
}

/// Step checkpoint directories of a run, oldest first.
pub fn step_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.strip_prefix("step-").is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()))
                })
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest step checkpoint of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(step_checkpoints(run_dir)?.pop())
}

/// The newest step checkpoint of a run, or an error saying there is none to resume from.
pub fn resume_point(run_dir: &Path) -> Result<PathBuf> {
    latest_checkpoint(run_dir)?
        .ok_or_else(|| Error::input(run_dir.join("checkpoints"), None, "no checkpoint to resume from"))
}
