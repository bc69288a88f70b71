//! Hyper-parameter search, as transformers' `Trainer.hyperparameter_search` offers it: a space of options
//! (their `TrainingArguments` names), trials drawn at random or from a grid, per-epoch evaluations that let a
//! pruner stop hopeless trials early (median pruning, or successive halving), and a ledger of finished trials
//! from which a killed search resumes.
//!
//! The space is JSON, one entry per option: `{"learning_rate": {"log_uniform": [1e-5, 1e-3]},
//! "per_device_train_batch_size": {"choice": [16, 32]}, "num_train_epochs": {"int": [2, 4]},
//! "warmup_ratio": {"uniform": [0, 0.2]}, "weight_decay": {"choice": [0, 0.01]}, "seed": {"int": [1, 1000]}}`.
//! Trial k's values are drawn from a generator seeded by (search seed, k) alone, so a resumed search draws the
//! same trials. A grid takes `choice` entries only and runs their product in a fixed order.
//!
//! This module knows nothing of models: it draws parameters, applies them to an options struct through its
//! serde form, decides pruning, keeps the ledger and writes the report. The fine-tuning command runs the trials.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{Chart, Point, Series};
use crate::{Error, Result};

/// One option's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Range {
    /// `[low, high]`, drawn uniformly in log space (learning rates).
    LogUniform([f64; 2]),
    /// `[low, high]`, drawn uniformly.
    Uniform([f64; 2]),
    /// `[low, high]`, an integer drawn uniformly from both ends inclusive.
    Int([i64; 2]),
    /// One of the values listed (any JSON value the option takes).
    Choice(Vec<Value>),
}

/// The options searched and their ranges, in name order.
pub type Space = BTreeMap<String, Range>;

/// One trial's values, by option name.
pub type Params = BTreeMap<String, Value>;

/// How trials are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Each trial's values drawn independently from the ranges.
    Random,
    /// Every combination of the `choice` entries, in name order.
    Grid,
}

/// When a running trial is stopped after an epoch's evaluation (higher metric values are better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pruner {
    /// Every trial runs to its end.
    None,
    /// Optuna's median rule: once `startup_trials` trials have finished, stop a trial whose best value so far
    /// is below the median of the earlier trials' values at the same epoch.
    Median {
        /// Trials that must finish before any is pruned.
        startup_trials: usize,
    },
    /// Successive halving (ASHA's rule, run one trial at a time): at epochs 1, η, η², … a trial goes on only if
    /// its value is among the best ⌈n/η⌉ of the n trials that reached that epoch, itself included.
    Halving {
        /// η: the share kept at each rung is 1/η (at least 2).
        reduction: usize,
    },
}

impl Pruner {
    /// Whether a trial with per-epoch values `values` (the last one just measured) stops, given the earlier
    /// trials.
    pub fn prunes(&self, earlier: &[TrialRecord], values: &[f64]) -> bool {
        let (Some(&current), epoch) = (values.last(), values.len()) else { return false };
        let at_epoch = || earlier.iter().filter_map(move |t| t.values.get(epoch - 1).copied());
        match *self {
            Pruner::None => false,
            Pruner::Median { startup_trials } => {
                let finished = earlier.iter().filter(|t| t.status != TrialStatus::Failed).count();
                let mut others: Vec<f64> = at_epoch().collect();
                if finished < startup_trials.max(1) || others.is_empty() {
                    return false;
                }
                let best_so_far = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                best_so_far < median(&mut others)
            }
            Pruner::Halving { reduction } => {
                let reduction = reduction.max(2);
                if !is_power_of(epoch, reduction) {
                    return false;
                }
                let n = at_epoch().count() + 1;
                let better = at_epoch().filter(|&v| v > current).count();
                better + 1 > n.div_ceil(reduction)
            }
        }
    }
}

fn is_power_of(mut n: usize, base: usize) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// Ran all its epochs (or stopped early on its own patience).
    Complete,
    /// Stopped by the pruner after an epoch's evaluation.
    Pruned,
    /// The trial's options could not run (a diverged loss, an invalid combination); the message says why.
    Failed,
}

/// One finished trial, a line of `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The trial's index in the plan (0-based).
    pub trial: usize,
    /// The options this trial set.
    pub params: Params,
    /// The metric after each epoch.
    pub values: Vec<f64>,
    /// How it ended.
    pub status: TrialStatus,
    /// Why a failed trial failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Training seconds, over all sessions of the trial.
    pub seconds: f64,
}

impl TrialRecord {
    /// The trial's best epoch value (NaN when it has none).
    pub fn best(&self) -> f64 {
        self.values.iter().copied().filter(|v| v.is_finite()).fold(f64::NAN, f64::max)
    }
}

/// Reads a space from JSON, naming `path` and the entry at fault.
pub fn read_space(path: &Path) -> Result<Space> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let space: Space = serde_json::from_str(&text).map_err(|e| {
        let expected =
            "an object of option: {\"log_uniform\" | \"uniform\" | \"int\": [low, high]} or {\"choice\": [...]}";
        Error::input(path, Some(e.line()), format!("{e}; expected {expected}"))
    })?;
    if space.is_empty() {
        return Err(Error::input(path, None, "the space names no option"));
    }
    for (name, range) in &space {
        let bad = match range {
            Range::LogUniform([lo, hi]) => !(lo.is_finite() && hi.is_finite() && *lo > 0.0 && lo <= hi),
            Range::Uniform([lo, hi]) => !(lo.is_finite() && hi.is_finite() && lo <= hi),
            Range::Int([lo, hi]) => lo > hi,
            Range::Choice(values) => values.is_empty(),
        };
        if bad {
            let message = format!("{name}: {range:?} is empty or inverted (log_uniform needs 0 < low ≤ high)");
            return Err(Error::input(path, None, message));
        }
    }
    Ok(space)
}

/// The trials to run: `trials` random draws, or the grid's product (cut to `trials` when that is smaller).
pub fn plan(space: &Space, sampler: Sampler, trials: usize, seed: u64, path: &Path) -> Result<Vec<Params>> {
    match sampler {
        Sampler::Random => Ok((0..trials).map(|k| draw(space, seed, k)).collect()),
        Sampler::Grid => {
            let mut grid = vec![Params::new()];
            for (name, range) in space {
                let Range::Choice(values) = range else {
                    let message = format!("{name}: a grid search takes {{\"choice\": [...]}} entries only");
                    return Err(Error::input(path, None, message));
                };
                grid = grid
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |v| {
                            let mut p = p.clone();
                            p.insert(name.clone(), v.clone());
                            p
                        })
                    })
                    .collect();
            }
            grid.truncate(trials);
            Ok(grid)
        }
    }
}

/// Trial `k`'s random values, from a generator of its own.
fn draw(space: &Space, seed: u64, k: usize) -> Params {
    let mut rng = crate::rng::seeded(seed, 0x5ea7c4 ^ (k as u64) << 20);
    space
        .iter()
        .map(|(name, range)| {
            let value = match range {
                Range::LogUniform([lo, hi]) => Value::from(round(rng.random_range(lo.ln()..=hi.ln()).exp())),
                Range::Uniform([lo, hi]) => Value::from(round(rng.random_range(*lo..=*hi))),
                Range::Int([lo, hi]) => Value::from(rng.random_range(*lo..=*hi)),
                Range::Choice(values) => values[rng.random_range(0..values.len())].clone(),
            };
            (name.clone(), value)
        })
        .collect()
}

/// Four significant digits: readable in the table, and exact in the ledger.
fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// `base` with `params` set, by their names in `base`'s serde form; a name `base` does not have is an error
/// naming it (so a misspelt option is not silently ignored).
pub fn apply<T: Serialize + DeserializeOwned>(base: &T, params: &Params, space_path: &Path) -> Result<T> {
    let mut value = serde_json::to_value(base).map_err(|e| Error::input(space_path, None, e))?;
    let object = value.as_object_mut().ok_or_else(|| Error::input(space_path, None, "options are not an object"))?;
    for (name, v) in params {
        if !object.contains_key(name) {
            let mut known: Vec<&str> = object.keys().map(String::as_str).collect();
            known.sort_unstable();
            let message = format!("{name} is not an option of this command; options: {}", known.join(", "));
            return Err(Error::input(space_path, None, message));
        }
        object.insert(name.clone(), v.clone());
    }
    serde_json::from_value(value).map_err(|e| Error::input(space_path, None, format!("{e} (with {params:?})")))
}

/// `trials.jsonl`: one line per finished trial, appended and flushed to disk as each ends.
pub struct Ledger {
    path: PathBuf,
    /// The finished trials, in the order they ended.
    pub trials: Vec<TrialRecord>,
}

impl Ledger {
    /// The trials recorded at `path` (none if it does not exist). A last line cut by a crash is dropped; any
    /// other unreadable line is an error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut trials = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(record) => trials.push(record),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => return Err(Error::input(path, Some(i + 1), format!("not a trial record: {e}"))),
            }
        }
        if !text.is_empty() && !text.ends_with('\n') {
            // Cut the torn line, so the next append starts a line of its own.
            let kept: String = lines[..trials.len()].iter().map(|l| format!("{l}\n")).collect();
            crate::atomic_file::write_atomically(path, kept.as_bytes())?;
        }
        Ok(Ledger { path: path.to_path_buf(), trials })
    }

    /// Whether trial `trial` has a record.
    pub fn done(&self, trial: usize) -> bool {
        self.trials.iter().any(|t| t.trial == trial)
    }

    /// Appends `record` and flushes it to disk.
    pub fn push(&mut self, record: TrialRecord) -> Result<()> {
        let line = serde_json::to_string(&record).map_err(|e| Error::input(&self.path, None, e))? + "\n";
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| Error::io(&self.path, e))?;
        self.trials.push(record);
        Ok(())
    }

    /// The trial with the highest best value; of trials that tie, the first (a later one that only equals it
    /// does not replace the model a search keeps).
    pub fn best(&self) -> Option<&TrialRecord> {
        self.trials.iter().filter(|t| t.best().is_finite()).reduce(|a, b| if b.best() > a.best() { b } else { a })
    }

    /// Training seconds of all recorded trials (what the search's time budget counts).
    pub fn seconds(&self) -> f64 {
        self.trials.iter().map(|t| t.seconds).sum()
    }
}

/// The results as a markdown table, best trial first.
pub fn markdown(ledger: &Ledger, space: &Space, metric: &str, baseline: Option<(&str, f64)>) -> String {
    let names: Vec<&String> = space.keys().collect();
    let mut out = format!("| trial | {} | {metric} by epoch | best {metric} | status | seconds |\n", join(&names));
    out += &format!("|{}\n", "---|".repeat(names.len() + 5));
    let mut trials: Vec<&TrialRecord> = ledger.trials.iter().collect();
    trials.sort_by(|a, b| b.best().total_cmp(&a.best()));
    for t in trials {
        let params: Vec<String> = names.iter().map(|n| t.params.get(*n).map(show).unwrap_or_default()).collect();
        let values: Vec<String> = t.values.iter().map(|v| format!("{v:.4}")).collect();
        let status = match (&t.status, &t.error) {
            (TrialStatus::Failed, Some(e)) => format!("failed: {e}"),
            (status, _) => format!("{status:?}").to_lowercase(),
        };
        out += &format!(
            "| {} | {} | {} | {:.4} | {status} | {:.0} |\n",
            t.trial,
            params.join(" | "),
            values.join(", "),
            t.best(),
            t.seconds
        );
    }
    if let Some((label, value)) = baseline {
        out += &format!("\n{label}: {metric} {value:.4}\n");
    }
    out
}

fn join(names: &[&String]) -> String {
    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" | ")
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One figure per searched option: each trial's best value against the option's value (complete and pruned
/// trials apart), written as `{stem}_{option}.png` in `dir`; numeric options only. Returns the files written.
pub fn figures(ledger: &Ledger, space: &Space, metric: &str, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, range) in space {
        let log_x = matches!(range, Range::LogUniform(_));
        let series = |status: TrialStatus, label: &str| Series {
            name: label.to_string(),
            points: ledger
                .trials
                .iter()
                .filter(|t| t.status == status && t.best().is_finite())
                .filter_map(|t| Some(Point { x: t.params.get(name)?.as_f64()?, y: t.best(), spread: None }))
                .collect(),
            dashed: false,
            points_only: true,
        };
        let series: Vec<Series> = [series(TrialStatus::Complete, "complete"), series(TrialStatus::Pruned, "pruned")]
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let chart = Chart {
            title: format!("{metric} against {name}"),
            note: format!("{} trials; each point a trial's best epoch", ledger.trials.len()),
            x_label: name.clone(),
            y_label: metric.to_string(),
            log_x,
            series,
            ..Chart::default()
        };
        let path = dir.join(format!("{stem}_{name}.png"));
        chart.draw(&path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> Space {
        serde_json::from_str(
            r#"{"learning_rate": {"log_uniform": [1e-5, 1e-3]}, "per_device_train_batch_size": {"choice": [16, 32]},
                "num_train_epochs": {"int": [1, 4]}, "warmup_ratio": {"uniform": [0, 0.2]}}"#,
        )
        .unwrap()
    }

    fn trial(k: usize, values: &[f64]) -> TrialRecord {
        let status = TrialStatus::Complete;
        TrialRecord { trial: k, params: Params::new(), values: values.to_vec(), status, error: None, seconds: 1.0 }
    }

    #[test]
    fn random_draws_stay_in_range_and_repeat_per_trial() {
        let plan1 = plan(&space(), Sampler::Random, 50, 7, Path::new("s.json")).unwrap();
        let plan2 = plan(&space(), Sampler::Random, 20, 7, Path::new("s.json")).unwrap();
        assert_eq!(plan1[..20], plan2[..], "trial k's values depend on (seed, k) only");
        for p in &plan1 {
            let lr = p["learning_rate"].as_f64().unwrap();
            assert!((1e-5..=1e-3).contains(&lr), "{lr}");
            assert!([16, 32].contains(&p["per_device_train_batch_size"].as_i64().unwrap()));
            assert!((1..=4).contains(&p["num_train_epochs"].as_i64().unwrap()));
        }
        let below_1e4 = plan1.iter().filter(|p| p["learning_rate"].as_f64().unwrap() < 1e-4).count();
        assert!((15..=35).contains(&below_1e4), "log-uniform: about half below the geometric middle: {below_1e4}");
        assert_ne!(plan(&space(), Sampler::Random, 1, 8, Path::new("s")).unwrap()[0], plan1[0]);
    }

    #[test]
    fn a_grid_is_the_product_of_choices_and_refuses_ranges() {
        let grid: Space = serde_json::from_str(r#"{"a": {"choice": [1, 2, 3]}, "b": {"choice": ["x", "y"]}}"#).unwrap();
        let trials = plan(&grid, Sampler::Grid, 100, 0, Path::new("g")).unwrap();
        assert_eq!(trials.len(), 6);
        assert_eq!(trials[1], Params::from([("a".into(), Value::from(1)), ("b".into(), Value::from("y"))]));
        assert_eq!(plan(&grid, Sampler::Grid, 4, 0, Path::new("g")).unwrap().len(), 4);
        let error = plan(&space(), Sampler::Grid, 10, 0, Path::new("g.json")).unwrap_err().to_string();
        assert!(error.contains("learning_rate") && error.contains("choice"), "{error}");
    }

    #[test]
    fn median_pruning_stops_trials_below_the_median_after_the_startup_trials() {
        let pruner = Pruner::Median { startup_trials: 2 };
        let earlier = [trial(0, &[0.2, 0.3, 0.4]), trial(1, &[0.4, 0.5, 0.6])];
        assert!(!pruner.prunes(&earlier[..1], &[0.0]), "one finished trial is below startup_trials");
        assert!(pruner.prunes(&earlier, &[0.29]), "median at epoch 1 is 0.3");
        assert!(!pruner.prunes(&earlier, &[0.31]));
        assert!(!pruner.prunes(&earlier, &[0.5, 0.1]), "the best value so far counts");
        assert!(pruner.prunes(&earlier, &[0.1, 0.39]), "median at epoch 2 is 0.4");
        assert!(!Pruner::None.prunes(&earlier, &[0.0]));
    }

    #[test]
    fn halving_keeps_the_best_share_at_each_rung() {
        let pruner = Pruner::Halving { reduction: 2 };
        let earlier = [trial(0, &[0.1, 0.2]), trial(1, &[0.3, 0.4]), trial(2, &[0.5, 0.6])];
        // Epoch 1 with 4 trials: the best 2 go on.
        assert!(!pruner.prunes(&earlier, &[0.4]));
        assert!(pruner.prunes(&earlier, &[0.2]));
        // Epoch 3 is no rung (1, 2, 4, …).
        assert!(!pruner.prunes(&earlier, &[0.9, 0.9, 0.0]));
        assert!(pruner.prunes(&earlier, &[0.9, 0.3]));
        assert!(!pruner.prunes(&[], &[0.0]), "the first trial always goes on");
    }

    #[test]
    fn params_apply_by_serde_name_and_unknown_names_are_named() {
        #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
        struct Options {
            learning_rate: f64,
            seed: u64,
            num_train_epochs: Option<usize>,
        }
        let params = Params::from([("learning_rate".into(), Value::from(1e-4)), ("num_train_epochs".into(), 2.into())]);
        let applied = apply(&Options::default(), &params, Path::new("s.json")).unwrap();
        assert_eq!(applied, Options { learning_rate: 1e-4, seed: 0, num_train_epochs: Some(2) });
        let wrong = Params::from([("learning_rat".into(), Value::from(1e-4))]);
        let error = apply(&Options::default(), &wrong, Path::new("s.json")).unwrap_err().to_string();
        assert!(error.contains("learning_rat is not an option") && error.contains("learning_rate"), "{error}");
        let bad_type = Params::from([("seed".into(), Value::from("x"))]);
        assert!(apply(&Options::default(), &bad_type, Path::new("s.json")).is_err());
    }

    #[test]
    fn the_ledger_survives_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("qkv-search-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trials.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut ledger = Ledger::open(&path).unwrap();
        ledger.push(trial(0, &[0.5])).unwrap();
        ledger.push(trial(1, &[0.7, 0.8])).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"trial\": 2, \"par");
        std::fs::write(&path, &text).unwrap();
        let mut reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.trials, ledger.trials);
        assert!(reopened.done(1) && !reopened.done(2));
        assert_eq!(reopened.best().unwrap().trial, 1);
        reopened.push(trial(2, &[0.1])).unwrap();
        assert_eq!(Ledger::open(&path).unwrap().trials.len(), 3);
        std::fs::write(&path, "{\"trial\": 0}\n{}\n").unwrap();
        let error = Ledger::open(&path).err().unwrap().to_string();
        assert!(error.contains("trials.jsonl:1"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A later trial that only ties the best value is not the best: the search keeps the first one's model.
    #[test]
    fn the_first_of_tied_trials_is_the_best() {
        let dir = std::env::temp_dir().join(format!("qkv-search-ties-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trials.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut ledger = Ledger::open(&path).unwrap();
        for (k, values) in [(0, &[0.5, 0.75][..]), (1, &[0.75]), (2, &[0.25])] {
            ledger.push(trial(k, values)).unwrap();
        }
        assert_eq!(ledger.best().unwrap().trial, 0);
        ledger.push(trial(3, &[0.875])).unwrap();
        assert_eq!(ledger.best().unwrap().trial, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spaces_that_cannot_be_drawn_are_refused_naming_the_option() {
        let dir = std::env::temp_dir().join(format!("qkv-search-space-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, needle) in [
            (r#"{"learning_rate": {"log_uniform": [0, 1e-3]}}"#, "learning_rate"),
            (r#"{"seed": {"int": [5, 1]}}"#, "seed"),
            (r#"{"seed": {"normal": [5, 1]}}"#, "unknown variant"),
            (r#"{}"#, "no option"),
        ] {
            let path = dir.join("space.json");
            std::fs::write(&path, text).unwrap();
            let error = read_space(&path).unwrap_err().to_string();
            assert!(error.contains(needle) && error.contains("space.json"), "{text}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
