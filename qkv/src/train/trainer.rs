//! The training loop every task shares: batches in a seeded order, gradient accumulation, data-parallel
//! micro-batches, AdamW with clipping, a NaN guard, evaluation and an atomic checkpoint after every epoch, the
//! best model kept apart, early stopping, a JSONL log, a time limit, Ctrl-C, and exact resume.
//!
//! A task ([`Task`]: translation, language modelling, masked-LM pre-training, fine-tuning …) says what a batch
//! is, what its loss is, how to evaluate and how to write its model directory; [`Trainer`] does the rest. The
//! loss of a batch is given a [`StepContext`]: the step, the epoch, the fraction of training done and a seeded
//! generator of the task's own (separate from dropout's, saved in every checkpoint), so a loss that changes
//! over training (scheduled sampling, dynamic masking) resumes bit for bit.
//!
//! A run directory in the default [`Layout::Run`] holds:
//! - `training.json` (the task's training options);
//! - `checkpoints/step-NNNNNNNN/`: a complete model directory plus `training.json`, `optimizer.safetensors`
//!   and `state.json`, the last `save_total_limit` of them (what `average` and `--resume` use);
//! - `best/`: the model directory of the best evaluation so far;
//! - `log.jsonl`: one record per logged step (`"kind": "train"`) and per evaluation (`"kind": "eval"`);
//! - `data.json`: the size and hash of each data file, checked on resume ([`super::fingerprint`]).
//!
//! Every checkpoint survives a crash at any instant ([`crate::atomic_file`]): step checkpoints and `best/` are
//! flushed and published in one rename or exchange, old checkpoints are renamed out of the valid names before
//! they are deleted, and a new or resumed run first removes what an interrupted one left behind. A resumed run
//! cuts log.jsonl back to what it held at its checkpoint; a run stopped before its first checkpoint is simply
//! started again.
//!
//! [`Layout::HuggingFace`] is the Hugging Face Trainer's instead: `checkpoint-N/` (N the optimizer step)
//! beside the log, and the best model's files in the run directory itself.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::data_parallel::{self, Streams};
use super::fingerprint;
pub use super::options::{read_options, LoopSettings, TrainingOptions};
use super::AdamW;
use crate::atomic_file::{remove_dir_atomically, remove_stale_temporaries, replace_dir_atomically};
use crate::hub::write_json;
use crate::hub::{load_parameters, load_safetensors, save_safetensors, LoadReport};
use crate::nn::Mode;
use crate::rng::Rng;
use crate::run_log::{truncate_log, LogFile};
pub use crate::run_log::{EvalRecord, StepRecord};
use crate::{Error, Result};

/// Where the loss of a batch is computed: the optimizer step it contributes to, and the task's generator.
pub struct StepContext<'a> {
    /// The optimizer step being computed (the first is 1).
    pub step: usize,
    /// The epoch it belongs to (the first is 0).
    pub epoch: usize,
    /// The steps the run plans in all (`num_train_epochs` × the first epoch's steps, or `max_steps` if
    /// fewer); `None` when only a time limit ends it.
    pub planned_steps: Option<usize>,
    /// The task's own draws (masking, sampling schedules), separate from dropout's: seeded from the run's seed,
    /// one stream per micro-batch, saved in checkpoints.
    pub rng: &'a mut Rng,
}

impl StepContext<'_> {
    /// The fraction of training done before this step, in [0, 1]; 0 when the length is unknown.
    pub fn progress(&self) -> f64 {
        self.planned_steps.map_or(0.0, |n| ((self.step - 1) as f64 / n.max(1) as f64).min(1.0))
    }
}

/// What an optimizer step needs of a task: its parameters and the loss of a batch.
pub trait Objective: Sync {
    /// The model's parameters with their checkpoint names.
    fn vars(&self) -> &[(String, Var)];
    /// The mean training loss of one batch (a list of example indices or offsets only the task interprets)
    /// and the number of tokens it is the mean over.
    fn loss(&self, batch: &[usize], context: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)>;
    /// The probability the loss feeds the gold token at this step, for an objective that trains on its own
    /// predictions (translation's scheduled sampling); logged with the step. `None` for all others.
    fn gold_probability(&self, _position: &StepPosition) -> Option<f64> {
        None
    }
}

/// A validation pass: the loss and whatever else the task measures (BLEU, accuracy …).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Mean cross-entropy per predicted token, without label smoothing.
    pub val_loss: f64,
    /// Named scores, written to the log under their names (`val_bleu`, `accuracy` …).
    pub metrics: BTreeMap<String, f64>,
}

/// Which evaluation is the best so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// The metric to maximise; `None` picks the lowest validation loss.
    pub metric: Option<&'static str>,
    /// On a tie in the metric, the lower validation loss wins (small validation sets tie often); otherwise
    /// the earlier evaluation stays best, as Hugging Face's Trainer keeps it.
    pub ties_by_loss: bool,
}

impl Selection {
    /// The lowest validation loss is best: the default of [`Task::selection`].
    pub const LOWEST_LOSS: Selection = Selection { metric: None, ties_by_loss: true };
}

/// How a run directory is laid out (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// qkv's own: `checkpoints/step-NNNNNNNN/`, `best/`, `log.jsonl`, `training.json` and `data.json`.
    Run,
    /// The Hugging Face Trainer's: `checkpoint-N/` beside the log, the best model's files in the run directory.
    HuggingFace,
}

/// A training task: data, model, objective, evaluation and model directory.
pub trait Task: Objective + Sized {
    /// The task's training options: stored as `training.json` in the run and in every checkpoint.
    type Training: TrainingOptions;
    /// What a fresh run starts from besides its options: a model config, or a pre-trained directory.
    type Start;
    /// Mixed into the seed of the dropout generator.
    const DROPOUT_SALT: u64 = 0xd50f;
    /// The run directory's layout (default: [`Layout::Run`]).
    const LAYOUT: Layout = Layout::Run;

    /// Builds the task for a new run: reads the data, trains a vocabulary, builds the model.
    fn create(training: Self::Training, start: Self::Start) -> Result<Self>;
    /// Files a new run directory holds besides the trainer's (a tokenizer, the model config).
    fn write_run_files(&self, _run_dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Rebuilds the task of a run from one of its checkpoints (model config and tokenizer come from there;
    /// the trainer loads the weights).
    fn reopen(checkpoint: &Path, training: Self::Training) -> Result<Self>;
    /// The options the task was created or reopened with.
    fn training(&self) -> &Self::Training;
    /// The batches of epoch `epoch` (0-based). Must depend on the seed and the epoch alone, so that a resumed
    /// run sees the same batches.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>>;
    /// Learning rate of optimizer step `step` (counting from 1).
    fn learning_rate(&self, step: usize) -> f64;
    /// Validates the current model (after every epoch): validation loss and the task's metrics.
    fn evaluate(&self) -> Result<Evaluation>;
    /// Which evaluation counts as best (default: [`Selection::LOWEST_LOSS`]; translation maximises BLEU).
    fn selection(&self) -> Selection {
        Selection::LOWEST_LOSS
    }
    /// Writes a loadable model directory (config, weights, tokenizer) into `dir`.
    fn save_model(&self, dir: &Path) -> Result<()>;
    /// Sets the parameters from a directory [`save_model`](Task::save_model) wrote (for resuming); tensors no
    /// parameter took are reported.
    fn load_model(&self, dir: &Path) -> Result<LoadReport> {
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
    /// The task's generator ([`StepContext::rng`]).
    #[serde(default = "legacy_task_rng")]
    pub task_rng: Rng,
    /// The best checkpoint's value of the task's selection metric (absent when it has none).
    #[serde(alias = "best_bleu")]
    pub best_metric: Option<f64>,
    /// Validation loss of the best checkpoint.
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    /// Optimizer step of the best checkpoint; `None` before the first evaluation.
    pub best_step: Option<usize>,
    /// Evaluations in a row without a new best (for early stopping).
    #[serde(default)]
    pub evaluations_since_best: usize,
    /// Wall-clock seconds spent in `run` so far, over all resumes (for `time_limit_minutes`).
    #[serde(default)]
    pub seconds: f64,
    /// Bytes of log.jsonl when this state was saved: a resumed run cuts the log back to them. Absent in
    /// checkpoints written before it was recorded (their logs are left as they are).
    #[serde(default)]
    pub log_bytes: Option<u64>,
}

/// Checkpoints written before the task generator existed resume with this one.
fn legacy_task_rng() -> Rng {
    Rng::seed_from_u64(TASK_SALT)
}

const TASK_SALT: u64 = 0x7a5c_0b1e;

impl TrainState {
    fn new(seed: u64, dropout_salt: u64) -> Self {
        Self {
            step: 0,
            epoch: 0,
            batches_done: 0,
            dropout_rng: crate::rng::seeded(seed, dropout_salt),
            task_rng: crate::rng::seeded(seed, TASK_SALT),
            best_metric: None,
            best_val_loss: None,
            best_step: None,
            evaluations_since_best: 0,
            seconds: 0.0,
            log_bytes: None,
        }
    }
}

/// What the training loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// The run is about to take its first step of this session.
    Ready {
        /// Trainable parameters (scalars) of the model.
        parameters: usize,
        /// Optimizer steps in an epoch (batches ÷ `gradient_accumulation_steps`, rounded up).
        steps_per_epoch: usize,
        /// The steps the whole run plans, as in [`StepContext::planned_steps`]; `None` when only a time limit
        /// ends it.
        planned_steps: Option<usize>,
    },
    /// An optimizer step was taken.
    Step(StepRecord),
    /// An evaluation finished (after every epoch).
    Eval(EvalRecord),
    /// A checkpoint was written.
    Checkpoint {
        /// Its directory: a step checkpoint, or where the best model went.
        path: PathBuf,
        /// The optimizer step it holds the model of.
        step: usize,
        /// Whether this is the best model's copy rather than a step checkpoint.
        best: bool,
    },
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The planned epochs or `max_steps` were done, or the time limit was reached.
    Completed,
    /// `early_stopping_patience` evaluations in a row brought no new best.
    EarlyStopped,
    /// The stop flag was raised (Ctrl-C); a checkpoint was written first.
    Interrupted,
}

/// Where an optimizer step stands in the run.
#[derive(Debug, Clone, Copy)]
pub struct StepPosition {
    /// The step about to be taken (the first is 1).
    pub step: usize,
    /// The epoch it belongs to (the first is 0).
    pub epoch: usize,
    /// The steps the run plans in all, as in [`StepContext::planned_steps`]; `None` when only a time limit ends it.
    pub planned_steps: Option<usize>,
}

/// An optimizer step's record and where its time went.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The step's log record: loss, learning rate, gradient norm, tokens and throughput.
    pub record: StepRecord,
    /// Forward and backward passes of all micro-batches.
    pub passes: Duration,
    /// Clipping and the optimizer update.
    pub update: Duration,
}

/// One optimizer step over `group` (batches): each batch dealt into `settings.shards` micro-batches that run
/// in parallel ([`data_parallel`]), their gradients those of the mean loss over all of the group's tokens, then
/// clipping and AdamW at learning rate `lr`. A non-finite loss is an error and changes no parameter. The
/// [`Trainer`] takes every step through here; the benchmark times it. The step runs on a pool worker
/// ([`crate::device::on_workers`]), so that the update's many small parallel ops do not each hand over from the
/// calling thread.
pub fn optimizer_step(
    objective: &impl Objective,
    optimizer: &mut AdamW,
    settings: &LoopSettings,
    group: &[Vec<usize>],
    position: StepPosition,
    lr: f64,
    streams: Option<Streams>,
) -> Result<StepOutcome> {
    crate::device::on_workers(|| {
        let started = Instant::now();
        let micro_batches: Vec<Vec<usize>> =
            group.iter().flat_map(|batch| data_parallel::split(batch, settings.shards)).collect();
        let vars: Vec<Var> = objective.vars().iter().map(|(_, v)| v.clone()).collect();
        let result = data_parallel::gradients(&vars, micro_batches.len(), settings.shards, streams, |i, mode, rng| {
            let mut context =
                StepContext { step: position.step, epoch: position.epoch, planned_steps: position.planned_steps, rng };
            objective.loss(&micro_batches[i], &mut context, mode)
        })?;
        for &(value, _) in &result.losses {
            if !value.is_finite() {
                let expected = format!(
                    "a finite number at step {}; lower the learning rate or lengthen the warm-up",
                    position.step
                );
                return Err(Error::config("training loss", value, expected));
            }
        }
        let passes = started.elapsed();
        let stats = optimizer.step(&result.grads, lr, settings.clip())?;
        let seconds = started.elapsed();
        let tokens = result.tokens();
        let record = StepRecord {
            step: position.step,
            epoch: position.epoch + 1,
            loss: result.mean_loss(),
            lr,
            grad_norm: stats.grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / seconds.as_secs_f64().max(1e-9),
            gold_probability: objective.gold_probability(&position),
        };
        Ok(StepOutcome { record, passes, update: seconds - passes })
    })
}

/// A task being trained, with its optimizer and position in the run.
pub struct Trainer<T: Task> {
    /// `None`: an in-memory run ([`Trainer::in_memory`]), which writes nothing.
    run_dir: Option<PathBuf>,
    task: T,
    settings: LoopSettings,
    optimizer: AdamW,
    state: TrainState,
    /// When this session's `run` began and the training seconds before it.
    clock: Option<(Instant, f64)>,
    /// What loading the checkpoint of a resumed run left over.
    resumed: LoadReport,
}

impl<T: Task> Trainer<T> {
    /// Starts a run in `run_dir` (created; an existing run there is an error — resume it instead — unless it
    /// was stopped before its first checkpoint, and is then started again): checks the options, builds the
    /// task, writes `training.json` and the data's fingerprints.
    pub fn create(run_dir: &Path, training: T::Training, start: T::Start) -> Result<Self> {
        training.loop_settings().validate()?;
        training.validate()?;
        check_new_run(run_dir)?;
        let task = T::create(training, start)?;
        task.write_run_files(run_dir)?;
        fingerprint::record(run_dir, &task.training().data_files())?;
        write_json(&run_dir.join("training.json"), task.training())?;
        let state = TrainState::new(task.training().loop_settings().seed, T::DROPOUT_SALT);
        Self::assemble(Some(run_dir), task, state)
    }

    /// A run that writes nothing — no log, no checkpoints, no best model — for experiments that only need the
    /// trained task (studies, tests). It cannot be resumed.
    pub fn in_memory(training: T::Training, start: T::Start) -> Result<Self> {
        training.loop_settings().validate()?;
        training.validate()?;
        let task = T::create(training, start)?;
        let state = TrainState::new(task.training().loop_settings().seed, T::DROPOUT_SALT);
        Self::assemble(None, task, state)
    }

    /// Continues the run in `run_dir` from its latest checkpoint: the task's parameters, the optimizer's
    /// moments, the generators and the loop's position, so the run goes on as if it had never stopped. The data
    /// files must be the ones the run started with; the log is cut back to the checkpoint.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        clean_run_dir(run_dir)?;
        let checkpoint = resume_point(run_dir)?;
        let training: T::Training = read_options(&checkpoint.join("training.json"))?;
        fingerprint::verify(run_dir)?;
        let task = T::reopen(&checkpoint, training)?;
        let state: TrainState = crate::hub::read_json(&checkpoint.join("state.json"))?;
        let report = task.load_model(&checkpoint)?;
        if let Some(bytes) = state.log_bytes {
            truncate_log(&run_dir.join("log.jsonl"), bytes)?;
        }
        let mut trainer = Self::assemble(Some(run_dir), task, state)?;
        trainer.resumed = report;
        // Read to the host; the optimizer moves each moment to its parameter's device.
        let moments = load_safetensors(&checkpoint.join("optimizer.safetensors"), &candle_core::Device::Cpu)?;
        trainer.optimizer.load_state(trainer.state.step, moments)?;
        // The best model is written just after its step checkpoint: a crash between the two leaves an older
        // `best/`, so when the checkpoint is the best, its model is the best model and is written again.
        if trainer.state.best_step == Some(trainer.state.step) {
            trainer.save_best(run_dir)?;
        }
        Ok(trainer)
    }

    fn assemble(run_dir: Option<&Path>, task: T, state: TrainState) -> Result<Self> {
        let settings = task.training().loop_settings().clone();
        // BatchNorm's running statistics are variables too, but state rather than parameters: never trained.
        let trained = task.vars().iter().filter(|(name, _)| !crate::nn::norm::is_running_statistic(name));
        let optimizer = AdamW::new(trained.cloned().collect(), settings.adam, AdamW::decay_matrices)?;
        let resumed = LoadReport::default();
        Ok(Self { run_dir: run_dir.map(Path::to_path_buf), task, settings, optimizer, state, clock: None, resumed })
    }

    /// Gives the trained task back (its model, tokenizer …).
    pub fn into_task(self) -> T {
        self.task
    }

    /// The task being trained (its model, tokenizer …).
    pub fn task(&self) -> &T {
        &self.task
    }

    /// Where the run stands: steps, epochs, the best evaluation, generators and time spent.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Checkpoint tensors a resumed run's model did not take (empty for a new run).
    pub fn resume_report(&self) -> &LoadReport {
        &self.resumed
    }

    /// The run directory; `None` for an in-memory run.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_deref()
    }

    /// The loop settings of this session: a resumed run may be given a new time limit or more steps.
    pub fn settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.settings
    }

    /// Trains until the configured epochs (or steps, or minutes) are done, early stopping ends it, or `stop`
    /// is raised, reporting through `on_event`. Evaluates and checkpoints after every epoch. A non-finite loss
    /// ends the run with an error and writes nothing, so the last checkpoint stays the last good one.
    pub fn run(&mut self, stop: &AtomicBool, mut on_event: impl FnMut(&Event)) -> Result<Finish> {
        self.settings.validate()?;
        self.prune_checkpoints()?;
        let steps_per_epoch =
            self.task.epoch_batches(self.state.epoch)?.len().div_ceil(self.settings.gradient_accumulation_steps);
        let planned_steps = self.planned_steps(steps_per_epoch);
        let parameters = self.task.vars().iter().map(|(_, v)| v.elem_count()).sum();
        on_event(&Event::Ready { parameters, steps_per_epoch, planned_steps });
        let mut log = self.run_dir.as_ref().map(|dir| LogFile::open(&dir.join("log.jsonl"))).transpose()?;
        self.clock = Some((Instant::now(), self.state.seconds));
        // The step of the last evaluation (a resumed run's checkpoint counts as one).
        let mut evaluated = self.state.step;
        while !self.finished() {
            let batches = self.task.epoch_batches(self.state.epoch)?;
            while self.state.batches_done < batches.len() {
                if stop.load(Ordering::Relaxed) {
                    self.save_checkpoint(false, log.as_mut(), &mut on_event)?;
                    return Ok(Finish::Interrupted);
                }
                if self.steps_exhausted() {
                    break;
                }
                let end = (self.state.batches_done + self.settings.gradient_accumulation_steps).min(batches.len());
                let record = self.step(&batches[self.state.batches_done..end], planned_steps)?;
                self.state.batches_done = end;
                if let Some(log) =
                    log.as_mut().filter(|_| record.step % self.settings.logging_steps == 0 || end == batches.len())
                {
                    log.write("train", &record)?;
                }
                on_event(&Event::Step(record));
                if self.settings.save_steps.is_some_and(|n| self.state.step.is_multiple_of(n)) {
                    self.save_checkpoint(false, log.as_mut(), &mut on_event)?;
                }
            }
            if self.state.batches_done >= batches.len() {
                self.state.epoch += 1;
                self.state.batches_done = 0;
            }
            if !self.finished() && !self.state.epoch.is_multiple_of(self.settings.eval_epochs) {
                self.save_checkpoint(false, log.as_mut(), &mut on_event)?;
                continue;
            }
            evaluated = self.state.step;
            if self.evaluate_and_checkpoint(log.as_mut(), &mut on_event)? {
                return Ok(Finish::EarlyStopped);
            }
        }
        // The clock can run out while an epoch that is not evaluated checkpoints: the run still ends evaluated.
        if evaluated != self.state.step {
            self.evaluate_and_checkpoint(log.as_mut(), &mut on_event)?;
        }
        Ok(Finish::Completed)
    }

    /// Evaluates, keeps the best model, checkpoints; true when early stopping's patience has run out.
    fn evaluate_and_checkpoint(
        &mut self,
        mut log: Option<&mut LogFile>,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<bool> {
        let eval = self.evaluate()?;
        if let Some(log) = log.as_mut() {
            log.write("eval", &eval)?;
        }
        on_event(&Event::Eval(eval.clone()));
        let best = self.is_best(&eval);
        if best {
            self.state.best_metric = self.task.selection().metric.map(|name| eval.metric(name));
            self.state.best_val_loss = Some(eval.val_loss);
            self.state.best_step = Some(self.state.step);
            self.state.evaluations_since_best = 0;
        } else {
            self.state.evaluations_since_best += 1;
        }
        self.save_checkpoint(best, log, on_event)?;
        Ok(self.settings.early_stopping_patience.is_some_and(|p| self.state.evaluations_since_best >= p))
    }

    /// `num_train_epochs` × `steps_per_epoch`, or `max_steps` if fewer.
    fn planned_steps(&self, steps_per_epoch: usize) -> Option<usize> {
        let by_epochs = self.settings.num_train_epochs.map(|n| n * steps_per_epoch);
        match (by_epochs, self.settings.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// Better than the best so far: a higher metric, ties broken as the task's [`Selection`] says (or just a
    /// lower loss when the task has no metric). NaN losses never win.
    fn is_best(&self, eval: &EvalRecord) -> bool {
        let Some(best_loss) = self.state.best_val_loss else { return !eval.val_loss.is_nan() };
        let selection = self.task.selection();
        match (selection.metric, self.state.best_metric) {
            (Some(name), Some(best)) if selection.ties_by_loss => {
                (eval.metric(name), -eval.val_loss) > (best, -best_loss)
            }
            (Some(name), Some(best)) => eval.metric(name) > best,
            _ => eval.val_loss < best_loss,
        }
    }

    /// True once every epoch has run, or the steps or the time are used up.
    fn finished(&self) -> bool {
        self.settings.num_train_epochs.is_some_and(|n| self.state.epoch >= n) || self.steps_exhausted()
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

    fn step(&mut self, group: &[Vec<usize>], planned_steps: Option<usize>) -> Result<StepRecord> {
        let position = StepPosition { step: self.state.step + 1, epoch: self.state.epoch, planned_steps };
        let lr = self.task.learning_rate(position.step) * self.settings.time_fade(self.elapsed_seconds());
        let streams = Streams { dropout: &mut self.state.dropout_rng, task: &mut self.state.task_rng };
        let outcome =
            optimizer_step(&self.task, &mut self.optimizer, &self.settings, group, position, lr, Some(streams))?;
        self.state.step += 1;
        Ok(outcome.record)
    }

    /// Writes a step checkpoint (and the best model when `best`), then deletes step checkpoints beyond
    /// `save_total_limit`, oldest first. `log` is flushed first and its length saved with the state.
    fn save_checkpoint(
        &mut self,
        best: bool,
        log: Option<&mut LogFile>,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<()> {
        self.state.seconds = self.elapsed_seconds();
        let Some(run_dir) = self.run_dir.clone() else { return Ok(()) };
        self.state.log_bytes = log.map(LogFile::sync).transpose()?;
        let dir = match T::LAYOUT {
            Layout::Run => {
                let parent = run_dir.join("checkpoints");
                fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
                parent.join(format!("step-{:08}", self.state.step))
            }
            Layout::HuggingFace => run_dir.join(format!("checkpoint-{}", self.state.step)),
        };
        replace_dir_atomically(&dir, |tmp| {
            self.task.save_model(tmp)?;
            write_json(&tmp.join("training.json"), &self.training_now())?;
            write_json(&tmp.join("state.json"), &self.state)?;
            let (_, moments) = self.optimizer.state()?;
            save_safetensors(&moments, &tmp.join("optimizer.safetensors"))
        })?;
        on_event(&Event::Checkpoint { path: dir.clone(), step: self.state.step, best: false });
        if best {
            let best_dir = self.save_best(&run_dir)?;
            on_event(&Event::Checkpoint { path: best_dir, step: self.state.step, best: true });
        }
        self.prune_checkpoints()
    }

    /// Deletes step checkpoints beyond `save_total_limit`, oldest first (also when a run starts, in case it was
    /// killed before it had pruned).
    fn prune_checkpoints(&self) -> Result<()> {
        let Some(run_dir) = &self.run_dir else { return Ok(()) };
        let mut kept = step_checkpoints(run_dir)?;
        while kept.len() > self.settings.save_total_limit.unwrap_or(usize::MAX) {
            remove_dir_atomically(&kept.remove(0))?;
        }
        Ok(())
    }

    /// The task's options with this session's loop settings (a resumed run may have been given more steps or
    /// time), so that resuming from the next checkpoint goes on with them.
    fn training_now(&self) -> T::Training {
        let mut training = self.task.training().clone();
        *training.loop_settings_mut() = self.settings.clone();
        training
    }

    /// `best/` (with the run's state) in the run layout; in Hugging Face's, the model's files in the run
    /// directory itself, each renamed into place.
    fn save_best(&self, run_dir: &Path) -> Result<PathBuf> {
        match T::LAYOUT {
            Layout::Run => {
                let best_dir = run_dir.join("best");
                replace_dir_atomically(&best_dir, |tmp| {
                    self.task.save_model(tmp)?;
                    write_json(&tmp.join("state.json"), &self.state)
                })?;
                Ok(best_dir)
            }
            Layout::HuggingFace => {
                let staging = run_dir.join(".best");
                replace_dir_atomically(&staging, |tmp| self.task.save_model(tmp))?;
                for entry in fs::read_dir(&staging).map_err(|e| Error::io(&staging, e))? {
                    let from = entry.map_err(|e| Error::io(&staging, e))?.path();
                    let to = run_dir.join(from.file_name().unwrap_or_default());
                    fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
                }
                fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
                Ok(run_dir.to_path_buf())
            }
        }
    }
}

/// The generator of epoch `epoch`'s batch order: the same for a run's seed and the epoch, whether or not the
/// run was resumed; `salt` keeps tasks from sharing orders.
pub fn epoch_rng(seed: u64, salt: u64, epoch: usize) -> Rng {
    Rng::seed_from_u64(seed.wrapping_mul(salt).wrapping_add(epoch as u64))
}

/// A run directory must not hold a run already (resume it instead). One that holds only the start of a run —
/// `training.json` but no checkpoint, because it was stopped before its first or its options failed after
/// files were written — is cleared for a new start.
pub fn check_new_run(run_dir: &Path) -> Result<()> {
    clean_run_dir(run_dir)?;
    if run_dir.join("training.json").exists() {
        if latest_checkpoint(run_dir)?.is_some() {
            return Err(Error::input(run_dir, None, "already holds a training run: resume it or choose another --out"));
        }
        for name in ["training.json", "log.jsonl", fingerprint::DATA_JSON] {
            let path = run_dir.join(name);
            if path.exists() {
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))
}

/// Removes the temporaries an interrupted run left in a run directory and its checkpoints directory (and puts
/// back a `best/` that was set aside when the crash came).
fn clean_run_dir(run_dir: &Path) -> Result<()> {
    remove_stale_temporaries(run_dir)?;
    remove_stale_temporaries(&run_dir.join("checkpoints"))?;
    // Names of earlier versions: `best.old` (set aside while best/ was replaced) and `.best` (the staging
    // directory of the Hugging Face layout).
    let (old, best) = (run_dir.join("best.old"), run_dir.join("best"));
    if old.is_dir() && !best.exists() {
        fs::rename(&old, &best).map_err(|e| Error::io(&old, e))?;
    }
    for stale in [old, run_dir.join(".best")] {
        if stale.is_dir() {
            fs::remove_dir_all(&stale).map_err(|e| Error::io(&stale, e))?;
        }
    }
    Ok(())
}

/// Step checkpoint directories of a run, oldest first: `checkpoints/step-N/` or `checkpoint-N/`.
pub fn step_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for (dir, prefix) in [(run_dir.join("checkpoints"), "step-"), (run_dir.to_path_buf(), "checkpoint-")] {
        if !dir.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let step = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(prefix));
            if let Some(step) = step.filter(|s| !s.is_empty()).and_then(|s| s.parse::<usize>().ok()) {
                if path.is_dir() {
                    found.push((step, path));
                }
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// The newest step checkpoint of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(step_checkpoints(run_dir)?.pop())
}

/// The newest step checkpoint of a run, or an error saying there is none to resume from.
pub fn resume_point(run_dir: &Path) -> Result<PathBuf> {
    latest_checkpoint(run_dir)?.ok_or_else(|| {
        let why = if run_dir.join("training.json").exists() {
            "no checkpoint to resume from: the run stopped before its first one; start it again with the same \
             options (without --resume), which replaces it"
        } else {
            "no checkpoint to resume from (not a training run directory)"
        };
        Error::input(run_dir, None, why)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use candle_core::Device;
    use rand::RngCore;

    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct ToyTraining {
        #[serde(flatten)]
        run: LoopSettings,
    }

    impl TrainingOptions for ToyTraining {
        fn loop_settings(&self) -> &LoopSettings {
            &self.run
        }
        fn loop_settings_mut(&mut self) -> &mut LoopSettings {
            &mut self.run
        }
        fn validate(&self) -> Result<()> {
            Ok(())
        }
    }

    /// What one loss was told: step, epoch, planned steps, progress, and a draw from the task's generator.
    type Seen = (usize, usize, Option<usize>, f64, u64);

    /// Fits w to 3 from eight examples in batches of two, recording what each loss was told.
    struct Toy {
        training: ToyTraining,
        vars: Vec<(String, Var)>,
        seen: Mutex<Vec<Seen>>,
    }

    impl Objective for Toy {
        fn vars(&self) -> &[(String, Var)] {
            &self.vars
        }
        fn loss(&self, batch: &[usize], context: &mut StepContext, _: &mut Mode) -> Result<(Tensor, usize)> {
            let draw = context.rng.next_u64();
            let record = (context.step, context.epoch, context.planned_steps, context.progress(), draw);
            self.seen.lock().unwrap().push(record);
            let w = self.vars[0].1.as_tensor();
            Ok(((w - 3.0)?.sqr()?.sum_all()?, batch.len()))
        }
    }

    impl Task for Toy {
        type Training = ToyTraining;
        type Start = ();
        fn create(training: ToyTraining, _: ()) -> Result<Self> {
            let w = Var::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
            Ok(Self { training, vars: vec![("w".into(), w)], seen: Mutex::new(Vec::new()) })
        }
        fn reopen(_: &Path, training: ToyTraining) -> Result<Self> {
            Self::create(training, ())
        }
        fn training(&self) -> &ToyTraining {
            &self.training
        }
        fn epoch_batches(&self, _: usize) -> Result<Vec<Vec<usize>>> {
            Ok((0..8).collect::<Vec<_>>().chunks(2).map(<[usize]>::to_vec).collect())
        }
        fn learning_rate(&self, _: usize) -> f64 {
            0.1
        }
        fn evaluate(&self) -> Result<Evaluation> {
            let w = self.vars[0].1.as_tensor().to_vec1::<f32>()?[0] as f64;
            Ok(Evaluation { val_loss: (w - 3.0).powi(2), metrics: BTreeMap::new() })
        }
        fn save_model(&self, dir: &Path) -> Result<()> {
            crate::hub::save_parameters(&self.vars, &dir.join("model.safetensors"))
        }
    }

    fn toy_training() -> ToyTraining {
        ToyTraining { run: LoopSettings { num_train_epochs: Some(2), shards: 1, ..LoopSettings::default() } }
    }

    /// The loss sees the step, the epoch, the planned steps and the fraction done, and draws from the task's
    /// own generator, which a resumed run continues exactly.
    #[test]
    fn the_loss_gets_the_step_context_and_a_generator_that_resumes() {
        let mut straight = Trainer::<Toy>::in_memory(toy_training(), ()).unwrap();
        assert_eq!(straight.run(&AtomicBool::new(false), |_| {}).unwrap(), Finish::Completed);
        let seen = straight.task().seen.lock().unwrap().clone();
        let steps: Vec<(usize, usize, Option<usize>)> = seen.iter().map(|s| (s.0, s.1, s.2)).collect();
        let expected: Vec<(usize, usize, Option<usize>)> = (1..=8).map(|s| (s, (s - 1) / 4, Some(8))).collect();
        assert_eq!(steps, expected);
        assert_eq!((seen[0].3, seen[4].3), (0.0, 0.5));
        assert_ne!(seen[0].4, seen[1].4, "a fresh draw each step");

        let dir = std::env::temp_dir().join(format!("qkv-trainer-context-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut first = Trainer::<Toy>::create(&dir, toy_training(), ()).unwrap();
        let stop = AtomicBool::new(false);
        let finish = first
            .run(&stop, |event| {
                if matches!(event, Event::Step(r) if r.step == 3) {
                    stop.store(true, Ordering::Relaxed);
                }
            })
            .unwrap();
        assert_eq!(finish, Finish::Interrupted);
        let mut second = Trainer::<Toy>::resume(&dir).unwrap();
        second.run(&AtomicBool::new(false), |_| {}).unwrap();
        let mut resumed = first.task().seen.lock().unwrap().clone();
        resumed.extend(second.task().seen.lock().unwrap().iter().cloned());
        assert_eq!(resumed, seen);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// With `eval_epochs` = 2 a 5-epoch run evaluates after epochs 2 and 4, and after the last one.
    #[test]
    fn eval_epochs_skip_evaluations_but_not_the_last() {
        let mut training = toy_training();
        training.run.num_train_epochs = Some(5);
        training.run.eval_epochs = 2;
        let mut trainer = Trainer::<Toy>::in_memory(training, ()).unwrap();
        let mut evaluated = Vec::new();
        trainer
            .run(&AtomicBool::new(false), |event| {
                if let Event::Eval(e) = event {
                    evaluated.push((e.epoch, e.step));
                }
            })
            .unwrap();
        assert_eq!(evaluated, vec![(2, 8), (4, 16), (5, 20)]);
    }

    /// `decay_minutes` scales the task's rate by the share of the fade left: with the fade as long as the
    /// limit, every step of a fast run takes a little less than the task's 0.1, and less each step.
    #[test]
    fn decay_minutes_fade_the_tasks_rate_with_the_clock() {
        let mut training = toy_training();
        training.run.time_limit_minutes = Some(1.0);
        training.run.decay_minutes = Some(1.0);
        let mut trainer = Trainer::<Toy>::in_memory(training, ()).unwrap();
        let mut lrs = Vec::new();
        trainer
            .run(&AtomicBool::new(false), |event| {
                if let Event::Step(r) = event {
                    lrs.push(r.lr);
                }
            })
            .unwrap();
        assert_eq!(lrs.len(), 8);
        assert!(lrs.iter().all(|&lr| lr < 0.1 && lr > 0.09), "{lrs:?}");
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "the fade only falls: {lrs:?}");
    }
}
