//! The training loop's flags, shared by every `qkv train` objective and `qkv finetune`: the fields of
//! `qkv::train::options::LoopSettings` in kebab case (older short names still accepted as aliases). A
//! `--config FILE.json` takes the same names in snake case; a flag overrides the file.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use qkv::train::trainer::{read_options, LoopSettings, Task, Trainer, TrainingOptions};

#[derive(Args, Debug, Default)]
pub struct LoopArgs {
    /// Passes over the training data (each ends with an evaluation and a checkpoint)
    #[arg(long, alias = "epochs")]
    num_train_epochs: Option<usize>,
    /// Stop after this many optimizer steps
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many minutes of training in all, resumes included (evaluates and checkpoints first)
    #[arg(long, alias = "time-limit")]
    time_limit_minutes: Option<f64>,
    /// Fade the learning rate linearly to 0 over the last this many minutes of --time-limit-minutes
    #[arg(long)]
    decay_minutes: Option<f64>,
    /// Batches per optimizer step (gradient accumulation)
    #[arg(long, alias = "accumulate")]
    gradient_accumulation_steps: Option<usize>,
    /// Micro-batches each batch is split into and run in parallel, one per thread by default (dropout draws
    /// depend on it: keep it to repeat a run on another machine)
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long)]
    adam_beta1: Option<f64>,
    #[arg(long)]
    adam_beta2: Option<f64>,
    #[arg(long)]
    adam_epsilon: Option<f64>,
    /// Decoupled weight decay on the weight matrices
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the gradient norm to this (0 turns clipping off)
    #[arg(long, alias = "clip-norm")]
    max_grad_norm: Option<f64>,
    /// Seed of initialisation, batch order, dropout and the task's own draws
    #[arg(long)]
    seed: Option<u64>,
    /// Step checkpoints to keep (for averaging; default: the task's)
    #[arg(long, alias = "keep-last")]
    save_total_limit: Option<usize>,
    /// Also checkpoint every N steps
    #[arg(long, alias = "save-every")]
    save_steps: Option<usize>,
    /// Write a training record to log.jsonl every N steps
    #[arg(long)]
    logging_steps: Option<usize>,
    /// Stop after this many evaluations in a row without a new best
    #[arg(long, alias = "patience")]
    early_stopping_patience: Option<usize>,
    /// Evaluate after every N epochs (and at the end); the others only checkpoint
    #[arg(long)]
    eval_epochs: Option<usize>,
}

impl LoopArgs {
    /// Sets every loop setting whose flag was given.
    pub fn apply(&self, s: &mut LoopSettings) {
        override_some!(
            s,
            gradient_accumulation_steps = self.gradient_accumulation_steps,
            shards = self.shards,
            seed = self.seed,
            logging_steps = self.logging_steps,
            eval_epochs = self.eval_epochs,
        );
        let adam = &mut s.adam;
        override_some!(
            adam,
            beta1 = self.adam_beta1,
            beta2 = self.adam_beta2,
            eps = self.adam_epsilon,
            weight_decay = self.weight_decay
        );
        for (value, target) in [
            (self.num_train_epochs, &mut s.num_train_epochs),
            (self.max_steps, &mut s.max_steps),
            (self.save_total_limit, &mut s.save_total_limit),
            (self.save_steps, &mut s.save_steps),
            (self.early_stopping_patience, &mut s.early_stopping_patience),
        ] {
            if value.is_some() {
                *target = value;
            }
        }
        for (value, target) in
            [(self.time_limit_minutes, &mut s.time_limit_minutes), (self.decay_minutes, &mut s.decay_minutes)]
        {
            if value.is_some() {
                *target = value;
            }
        }
        if let Some(norm) = self.max_grad_norm {
            s.max_grad_norm = Some(norm);
        }
    }

    /// A resumed run keeps its options, except how long it goes on and how often it evaluates:
    /// `--num-train-epochs`, `--max-steps`, `--time-limit-minutes`, `--decay-minutes`, `--eval-epochs` and
    /// `--early-stopping-patience` apply to it (and are saved with its next checkpoints); any other loop flag is
    /// an error, as it would make the run differ from an uninterrupted one.
    pub fn apply_to_resumed<T: Task>(&self, trainer: &mut Trainer<T>) -> Result<()> {
        let changes_the_run = self.gradient_accumulation_steps.is_some()
            || self.shards.is_some()
            || self.adam_beta1.is_some()
            || self.adam_beta2.is_some()
            || self.adam_epsilon.is_some()
            || self.weight_decay.is_some()
            || self.max_grad_norm.is_some()
            || self.seed.is_some();
        if changes_the_run {
            bail!(
                "with --resume only --num-train-epochs, --max-steps, --time-limit-minutes, --decay-minutes, \
                 --eval-epochs and --early-stopping-patience may change (the other options come from the run)"
            );
        }
        let settings = trainer.settings_mut();
        if self.num_train_epochs.is_some() {
            settings.num_train_epochs = self.num_train_epochs;
        }
        if self.max_steps.is_some() {
            settings.max_steps = self.max_steps;
        }
        if self.time_limit_minutes.is_some() {
            settings.time_limit_minutes = self.time_limit_minutes;
        }
        if self.decay_minutes.is_some() {
            settings.decay_minutes = self.decay_minutes;
        }
        if let Some(n) = self.eval_epochs {
            settings.eval_epochs = n;
        }
        if self.early_stopping_patience.is_some() {
            settings.early_stopping_patience = self.early_stopping_patience;
        }
        Ok(())
    }
}

/// A task's training options: `--config`'s JSON over the task's defaults (or the defaults alone), then the
/// loop's flags and `--device`.
pub fn options<T: TrainingOptions>(config: Option<&Path>, flags: &LoopArgs) -> Result<T> {
    let mut options: T = match config {
        Some(path) => read_options(path)?,
        None => T::default(),
    };
    flags.apply(options.loop_settings_mut());
    options.loop_settings_mut().device = crate::device::placement();
    Ok(options)
}
