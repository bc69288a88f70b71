//! A training run's `log.jsonl`: one JSON object per line, `"kind": "train"` for a logged optimizer step and
//! `"kind": "eval"` for a validation pass. The trainer writes it through [`LogFile`]; plots and studies read it
//! back with [`read_log`].
//!
//! serde_json writes NaN and ±∞ as `null`, so every floating-point field reads `null` back as NaN: a run whose
//! loss diverged still loads, and a reader skips what is not finite.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// One optimizer step, as written to log.jsonl (`"kind": "train"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The optimizer step (the first is 1).
    pub step: usize,
    /// The epoch the step belongs to, counting from 1.
    pub epoch: usize,
    /// The task's training loss (label-smoothed where it smooths) per token.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// The learning rate the step was taken with.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Global L2 norm of the gradients, before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Tokens (or examples) the step's loss averaged over.
    pub tokens: usize,
    /// Training throughput: `tokens` over the step's wall-clock time, backward pass and update included.
    #[serde(deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    /// The probability of feeding the decoder the gold token at this step (translation with scheduled
    /// sampling or an oracle); absent for teacher forcing and every other task, and then not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold_probability: Option<f64>,
}

/// One evaluation, as written to log.jsonl (`"kind": "eval"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps taken when the evaluation ran.
    pub step: usize,
    /// Epochs completed when the evaluation ran.
    pub epoch: usize,
    /// Cross-entropy per predicted token without smoothing (ln of the perplexity).
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// The task's other scores by name (`val_bleu`, `accuracy` …), flattened into the record's JSON object.
    #[serde(flatten, deserialize_with = "numeric_fields")]
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds the evaluation took.
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
}

impl EvalRecord {
    /// A metric by name, NaN when the task does not measure it.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(f64::NAN)
    }
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LogRecord {
    /// A logged optimizer step.
    Train(StepRecord),
    /// A validation pass.
    Eval(EvalRecord),
    /// A kind this version does not know, so that logs from newer trainers still load.
    #[serde(other)]
    Other,
}

/// Reads a run's log. Blank lines are skipped; a line that is not a record is an error naming the file and
/// the line.
pub fn read_log(path: &Path) -> Result<Vec<LogRecord>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| {
            // serde_json counts lines within the one line it was given; the file's line is in the error already.
            let full = e.to_string();
            let message = full.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&full);
            Error::input(path, Some(index + 1), format!("not a training log record (column {}): {message}", e.column()))
        })?;
        records.push(record);
    }
    Ok(records)
}

/// The JSONL training log, appended to (a resumed run continues the same file). Each record is written with one
/// `write` call, so a crash cuts at most the last line; the trainer records the log's length in every
/// checkpoint and a resumed run cuts the log back to it ([`truncate_log`]), so no step is logged twice.
pub struct LogFile {
    path: PathBuf,
    file: fs::File,
    /// Bytes in the file.
    len: u64,
}

impl LogFile {
    /// Opens `path` for appending, creating it if it does not exist.
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(Self { path: path.to_path_buf(), file, len })
    }

    /// Appends `record` as one line with `"kind": kind` added (`"train"` for a [`StepRecord`], `"eval"` for an
    /// [`EvalRecord`], so that [`read_log`] reads it back as the matching [`LogRecord`]).
    pub fn write(&mut self, kind: &str, record: &impl Serialize) -> Result<()> {
        let mut value = serde_json::to_value(record).map_err(|e| Error::input(&self.path, None, e))?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("kind".into(), kind.into());
        }
        let line = format!("{value}\n");
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Flushes the log to the disk and returns its length, for the checkpoint about to be written.
    pub fn sync(&mut self) -> Result<u64> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.len)
    }
}

/// Cuts the log at `path` back to its first `len` bytes (what it held when the checkpoint being resumed was
/// written). A log that is shorter already (lost in a power cut) is left as it is.
pub fn truncate_log(path: &Path, len: u64) -> Result<()> {
    let Ok(file) = fs::OpenOptions::new().write(true).open(path) else { return Ok(()) };
    let now = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if now > len {
        file.set_len(len).and_then(|()| file.sync_data()).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// A float that serde_json may have written as `null` (NaN or ±∞).
fn nan_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The fields of an eval record besides the named ones: its metrics. `null` is NaN, as for [`nan_if_null`];
/// fields that are not numbers are no metric and are skipped (the `kind` tag when an [`EvalRecord`] is read on
/// its own, or a field a newer trainer adds).
fn numeric_fields<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    let fields = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    Ok(fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::Null => Some((name, f64::NAN)),
            serde_json::Value::Number(n) => n.as_f64().map(|v| (name, v)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, unique to this test and process, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("qkv-run-log-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn step(step: usize, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch: 1,
            loss,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens: 100,
            tokens_per_s: 2000.0,
            gold_probability: None,
        }
    }

    fn eval(step: usize, val_loss: f64, metrics: &[(&str, f64)]) -> EvalRecord {
        let metrics = metrics.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        EvalRecord { step, epoch: 1, val_loss, metrics, seconds: 1.5 }
    }

    #[test]
    fn what_the_log_file_writes_reads_back() {
        let dir = TempDir::new("round-trip");
        let path = dir.0.join("log.jsonl");
        let mut log = LogFile::open(&path).unwrap();
        log.write("train", &step(10, 4.25)).unwrap();
        log.write("eval", &eval(10, 3.5, &[("val_bleu", 12.5), ("val_chrf", 40.0)])).unwrap();
        drop(log);
        // Appends: a resumed run continues the same file.
        LogFile::open(&path).unwrap().write("train", &step(20, 3.0)).unwrap();
        let records = read_log(&path).unwrap();
        assert_eq!(
            records,
            [
                LogRecord::Train(step(10, 4.25)),
                LogRecord::Eval(eval(10, 3.5, &[("val_bleu", 12.5), ("val_chrf", 40.0)])),
                LogRecord::Train(step(20, 3.0)),
            ]
        );
    }

    /// A step without p writes no `gold_probability` key, so teacher-forcing logs read as before; one with p
    /// keeps it, and logs written before the field existed read as `None`.
    #[test]
    fn the_gold_probability_is_written_only_where_there_is_one() {
        let plain = serde_json::to_string(&step(3, 1.0)).unwrap();
        assert!(!plain.contains("gold_probability"), "{plain}");
        let sampled = StepRecord { gold_probability: Some(0.75), ..step(3, 1.0) };
        let line = serde_json::to_string(&sampled).unwrap();
        assert!(line.contains(r#""gold_probability":0.75"#), "{line}");
        assert_eq!(serde_json::from_str::<StepRecord>(&line).unwrap(), sampled);
        assert_eq!(serde_json::from_str::<StepRecord>(&plain).unwrap().gold_probability, None);
    }

    #[test]
    fn null_values_load_as_nan_and_unknown_kinds_as_other() {
        let dir = TempDir::new("nulls");
        let path = dir.0.join("log.jsonl");
        // What the trainer writes for a NaN loss and a NaN metric; blank lines are skipped.
        let text = concat!(
            r#"{"kind":"train","step":130,"epoch":1,"loss":null,"lr":0.0007,"grad_norm":null,"tokens":90,"#,
            r#""tokens_per_s":5100.0}"#,
            "\n\n",
            r#"{"kind":"eval","step":400,"epoch":1,"val_loss":null,"val_bleu":null,"val_chrf":31.5,"note":"text","#,
            r#""seconds":3.0}"#,
            "\n",
            r#"{"kind":"checkpoint","step":400}"#,
            "\n",
        );
        fs::write(&path, text).unwrap();
        let records = read_log(&path).unwrap();
        assert_eq!(records.len(), 3);
        let LogRecord::Train(train) = &records[0] else { panic!("{:?}", records[0]) };
        assert!(train.loss.is_nan() && train.grad_norm.is_nan());
        assert_eq!((train.step, train.lr, train.tokens), (130, 0.0007, 90));
        let LogRecord::Eval(eval) = &records[1] else { panic!("{:?}", records[1]) };
        assert!(eval.val_loss.is_nan() && eval.metric("val_bleu").is_nan());
        assert_eq!(eval.metric("val_chrf"), 31.5);
        assert_eq!(eval.metrics.keys().collect::<Vec<_>>(), ["val_bleu", "val_chrf"]);
        assert_eq!(records[2], LogRecord::Other);
    }

    #[test]
    fn an_eval_record_read_on_its_own_ignores_the_kind_tag() {
        let line = r#"{"kind":"eval","step":4,"epoch":1,"val_loss":2.0,"train_loss":1.5,"seconds":0.1}"#;
        let record: EvalRecord = serde_json::from_str(line).unwrap();
        let mut want = eval(4, 2.0, &[("train_loss", 1.5)]);
        want.seconds = 0.1;
        assert_eq!(record, want);
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_file_and_line() {
        let dir = TempDir::new("malformed");
        let path = dir.0.join("log.jsonl");
        let good =
            r#"{"kind":"train","step":1,"epoch":1,"loss":2.0,"lr":0.1,"grad_norm":1.0,"tokens":5,"tokens_per_s":9.0}"#;
        fs::write(&path, format!("{good}\n\n{{\"kind\":\"train\",\"epoch\":1}}\n")).unwrap();
        let err = read_log(&path).unwrap_err();
        assert!(matches!(err, Error::Input { line: Some(3), .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with(&format!("{}:3: not a training log record", path.display())), "{err}");
        assert!(err.contains("missing field `step`") && !err.contains("line 1"), "{err}");
        fs::write(&path, format!("{good}\n{{\"kind\":\"train\",\"st")).unwrap();
        let err = read_log(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2:", path.display())), "{err}");
        let err = read_log(&dir.0.join("missing.jsonl")).unwrap_err().to_string();
        assert!(err.contains("missing.jsonl"), "{err}");
    }
}
