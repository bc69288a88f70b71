//! Training options: the loop's own settings, which every task's options embed under the same names, and
//! reading a task's options from JSON on top of the task's defaults.
//!
//! The names are those of Hugging Face's `TrainingArguments` where it has the setting (`num_train_epochs`,
//! `gradient_accumulation_steps`, `max_grad_norm`, `save_total_limit`, `save_steps`, `logging_steps`,
//! `adam_beta1` …); the CLI's flags are the same names in kebab case. Runs written before the settings were
//! unified used other names (`epochs`, `accumulate`, `clip_norm`, `keep_last`, `save_every`, `log_every`,
//! `valid_fraction`, a nested `adam` object); [`options_from_json`] still reads them.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{data_parallel, AdamWConfig};
use crate::device::Placement;
use crate::{Error, Result};

/// The options of the loop itself. Every task's training options embed them (`#[serde(flatten)]`), so a
/// setting has one name whatever the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoopSettings {
    /// Rounds of the task's epoch batches, each followed by evaluation and a checkpoint; `None`: until
    /// `max_steps` or the time limit.
    pub num_train_epochs: Option<usize>,
    /// Stop after this many optimizer steps even mid-epoch.
    pub max_steps: Option<usize>,
    /// Stop (evaluate, checkpoint) once training has run this many minutes in all, resumes included.
    pub time_limit_minutes: Option<f64>,
    /// The last this many minutes of `time_limit_minutes` fade the learning rate linearly to 0, on top of the
    /// task's schedule: a budget in time rather than steps, so the run ends annealed however fast the host is.
    pub decay_minutes: Option<f64>,
    /// Batches whose gradients are summed before one optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Micro-batches each batch is dealt into, run in parallel ([`data_parallel`]). Dropout draws depend on
    /// it, so a run repeats exactly only with the same value.
    pub shards: usize,
    /// AdamW's β₁, β₂, ε and decoupled weight decay (on matrices only).
    #[serde(flatten)]
    pub adam: AdamWConfig,
    /// Clip the global gradient norm to this; `None` or 0 turns clipping off.
    pub max_grad_norm: Option<f64>,
    /// Seeds the initialisation, the batch order, dropout and the task's own draws.
    pub seed: u64,
    /// Step checkpoints kept (older ones are deleted); `None` keeps all.
    pub save_total_limit: Option<usize>,
    /// Also checkpoint every this many steps (besides each epoch's end).
    pub save_steps: Option<usize>,
    /// Training records are written to log.jsonl every this many steps.
    pub logging_steps: usize,
    /// Stop after this many evaluations in a row without a new best.
    pub early_stopping_patience: Option<usize>,
    /// Evaluate after every this many epochs, and when the run ends; the epochs between only checkpoint.
    /// Decoding the validation set each epoch is a tenth of a small translation model's training time.
    pub eval_epochs: usize,
    /// Where the model is built and trained.
    pub device: Placement,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            num_train_epochs: Some(3),
            max_steps: None,
            time_limit_minutes: None,
            decay_minutes: None,
            gradient_accumulation_steps: 1,
            shards: data_parallel::default_shards(),
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            seed: 42,
            save_total_limit: None,
            save_steps: None,
            logging_steps: 10,
            early_stopping_patience: None,
            eval_epochs: 1,
            device: Placement::Cpu,
        }
    }
}

impl LoopSettings {
    /// A BatchNorm model needs every batch in one piece: each shard would take its own statistics (and the
    /// shards would race to update the running ones).
    pub fn check_normalization(&self, normalization: crate::nn::Normalization) -> Result<()> {
        if normalization == crate::nn::Normalization::BatchNorm && self.shards > 1 {
            let expected = "1 with normalization = batch_norm (its statistics are over the whole batch)";
            return Err(Error::config("shards", self.shards, expected));
        }
        Ok(())
    }

    /// Errors naming the option for settings that cannot work (a zero count, no way for the run to end, a bad
    /// time limit or clipping norm, bad AdamW settings).
    pub fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("shards", self.shards),
            ("logging_steps", self.logging_steps),
            ("eval_epochs", self.eval_epochs),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        for (option, value) in [
            ("num_train_epochs", self.num_train_epochs),
            ("save_total_limit", self.save_total_limit),
            ("save_steps", self.save_steps),
            ("early_stopping_patience", self.early_stopping_patience),
        ] {
            if value == Some(0) {
                return Err(Error::config(option, 0, "at least 1 (or leave it out)"));
            }
        }
        if let Some(minutes) = self.time_limit_minutes {
            if !(minutes > 0.0 && minutes.is_finite()) {
                return Err(Error::config("time_limit_minutes", minutes, "a positive number of minutes"));
            }
        }
        if let Some(decay) = self.decay_minutes {
            match self.time_limit_minutes {
                Some(limit) if decay > 0.0 && decay <= limit => {}
                Some(limit) => {
                    let expected = format!("a positive number of minutes, at most time_limit_minutes = {limit}");
                    return Err(Error::config("decay_minutes", decay, expected));
                }
                None => {
                    let expected = "time_limit_minutes as well (the fade ends at the time limit)";
                    return Err(Error::config("decay_minutes", decay, expected));
                }
            }
        }
        if self.num_train_epochs.is_none() && self.max_steps.is_none() && self.time_limit_minutes.is_none() {
            let expected = "a number of epochs, or max_steps or time_limit_minutes to end the run";
            return Err(Error::config("num_train_epochs", "none", expected));
        }
        if let Some(norm) = self.max_grad_norm {
            if !(norm >= 0.0 && norm.is_finite()) {
                return Err(Error::config("max_grad_norm", norm, "a non-negative number (0: no clipping)"));
            }
        }
        self.adam.validate()
    }

    /// The factor `decay_minutes` puts on the learning rate after `elapsed` seconds of training: 1 until the
    /// fade starts, then the fraction of the fade still to run.
    pub fn time_fade(&self, elapsed: f64) -> f64 {
        match (self.decay_minutes, self.time_limit_minutes) {
            (Some(decay), Some(limit)) => super::schedule::linear_fade(elapsed, limit * 60.0, decay * 60.0),
            _ => 1.0,
        }
    }

    /// The clipping threshold, `None` when clipping is off.
    pub fn clip(&self) -> Option<f64> {
        self.max_grad_norm.filter(|n| *n > 0.0)
    }
}

/// A task's training options: stored as `training.json` in the run and in every checkpoint.
pub trait TrainingOptions: Serialize + DeserializeOwned + Default + Clone {
    /// The loop settings every task shares.
    fn loop_settings(&self) -> &LoopSettings;
    /// The loop settings, to change (a resumed run may be given more steps or time).
    fn loop_settings_mut(&mut self) -> &mut LoopSettings;
    /// Checks the task's own options (the loop's are checked by the trainer).
    fn validate(&self) -> Result<()>;
    /// The data files the run reads, with the options that name them: fingerprinted when the run starts and
    /// checked when it is resumed ([`super::fingerprint`]).
    fn data_files(&self) -> Vec<(&'static str, &Path)> {
        Vec::new()
    }
}

/// Names runs used before the loop settings were unified, and the name each has now.
const RENAMED: [(&str, &str); 7] = [
    ("epochs", "num_train_epochs"),
    ("accumulate", "gradient_accumulation_steps"),
    ("clip_norm", "max_grad_norm"),
    ("keep_last", "save_total_limit"),
    ("save_every", "save_steps"),
    ("log_every", "logging_steps"),
    ("valid_fraction", "validation_fraction"),
];

/// `T` from a JSON object of options laid over `T::default()`: a field the object leaves out keeps the task's
/// default (serde's own defaults would be the loop's, not the task's). An unknown field is an error naming it
/// and `source`, so a misspelt option is never silently ignored.
pub fn options_from_json<T: Serialize + DeserializeOwned + Default>(value: Value, source: &Path) -> Result<T> {
    let Value::Object(given) = value else {
        return Err(Error::input(source, None, "expected a JSON object of options"));
    };
    let Value::Object(mut merged) = serde_json::to_value(T::default()).map_err(|e| Error::input(source, None, e))?
    else {
        return Err(Error::input(source, None, "options do not serialise to an object"));
    };
    for (key, value) in canonical(given) {
        if !merged.contains_key(&key) {
            let mut known: Vec<&String> = merged.keys().collect();
            known.sort();
            let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
            let message = format!("unknown option `{key}` (known: {})", known.join(", "));
            return Err(Error::input(source, None, message));
        }
        merged.insert(key, value);
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| Error::input(source, None, e))
}

/// Reads a JSON file of options with [`options_from_json`].
pub fn read_options<T: Serialize + DeserializeOwned + Default>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::input(path, Some(e.line()), e))?;
    options_from_json(value, path)
}

/// Old names mapped to today's, and an old nested `adam` object spread into its flat fields.
fn canonical(given: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in given {
        match (key.as_str(), value) {
            ("adam", Value::Object(adam)) => {
                for (old, new) in [("beta1", "adam_beta1"), ("beta2", "adam_beta2"), ("eps", "adam_epsilon")] {
                    if let Some(v) = adam.get(old) {
                        out.insert(new.to_string(), v.clone());
                    }
                }
                if let Some(v) = adam.get("weight_decay") {
                    out.insert("weight_decay".to_string(), v.clone());
                }
            }
            (name, value) => {
                let name = RENAMED.iter().find(|(old, _)| *old == name).map_or(name, |(_, new)| new);
                out.insert(name.to_string(), value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Options {
        width: usize,
        #[serde(flatten)]
        run: LoopSettings,
    }

    impl Default for Options {
        fn default() -> Self {
            let run = LoopSettings { num_train_epochs: Some(20), seed: 7, ..LoopSettings::default() };
            Self { width: 3, run }
        }
    }

    #[test]
    fn options_keep_the_tasks_defaults_and_read_old_names() {
        let path = Path::new("options.json");
        let given = serde_json::json!({"width": 5, "logging_steps": 2});
        let options: Options = options_from_json(given, path).unwrap();
        assert_eq!((options.width, options.run.logging_steps), (5, 2));
        assert_eq!((options.run.num_train_epochs, options.run.seed), (Some(20), 7), "the task's defaults");

        let old = serde_json::json!({"epochs": 4, "clip_norm": null, "adam": {"beta2": 0.98, "eps": 1e-9}});
        let options: Options = options_from_json(old, path).unwrap();
        assert_eq!((options.run.num_train_epochs, options.run.max_grad_norm), (Some(4), None));
        assert_eq!((options.run.adam.beta2, options.run.adam.eps), (0.98, 1e-9));

        let message = options_from_json::<Options>(serde_json::json!({"widht": 5}), path).unwrap_err().to_string();
        assert!(message.contains("options.json") && message.contains("`widht`"), "{message}");
        let round_trip: Options = options_from_json(serde_json::to_value(&options).unwrap(), path).unwrap();
        assert_eq!(round_trip, options);
    }

    #[test]
    fn bad_loop_settings_are_named() {
        let zero = LoopSettings { gradient_accumulation_steps: 0, ..LoopSettings::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("gradient_accumulation_steps"));
        let endless = LoopSettings { num_train_epochs: None, ..LoopSettings::default() };
        assert!(endless.validate().unwrap_err().to_string().contains("num_train_epochs"));
    }

    /// A time fade needs the time limit it ends at, and must fit in it; within it, it scales the rate from
    /// 1 down to 0 at the limit.
    #[test]
    fn decay_minutes_fit_the_time_limit() {
        let mut s = LoopSettings { decay_minutes: Some(15.0), ..LoopSettings::default() };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("decay_minutes") && err.contains("time_limit_minutes as well"), "{err}");
        s.time_limit_minutes = Some(10.0);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("decay_minutes") && err.contains("at most time_limit_minutes = 10"), "{err}");
        s.time_limit_minutes = Some(60.0);
        s.validate().unwrap();
        assert_eq!([s.time_fade(0.0), s.time_fade(52.5 * 60.0), s.time_fade(3600.0)], [1.0, 0.5, 0.0]);
        s.decay_minutes = None;
        assert_eq!(s.time_fade(3599.0), 1.0, "no fade without decay_minutes");
    }
}
