//! kill -9 at every instant of a checkpoint: `qkv train lm` is aborted at each fault point of the checkpoint
//! code in turn (the `fault-injection` feature, on in test builds: `QKV_FAULT_AT=N` aborts the process at the
//! Nth point, as abruptly as kill -9). After each kill, every checkpoint under a valid name and `best/` must
//! load, and `--resume` (or, when no checkpoint was written yet, the same command again) must end exactly where
//! the uninterrupted run ends: the same weights, bit for bit, and the same log, line for line.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use qkv::train::trainer::step_checkpoints;

const QKV: &str = env!("CARGO_BIN_EXE_qkv");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qkv-crash-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A tiny character-level GPT-2: 8 steps, a checkpoint (and evaluation) every 2, 2 checkpoints kept, so the run
/// writes checkpoints, replaces `best/` and prunes.
fn train(text: &Path, out: &Path, resume: bool, fault_at: Option<usize>, exchange: bool) -> Output {
    let mut command = Command::new(QKV);
    if !exchange {
        command.env("QKV_FAULT_NO_EXCHANGE", "1");
    }
    command.args(["train", "lm", "--out"]).arg(out).args(["--threads", "1"]);
    if resume {
        command.arg("--resume");
    } else {
        command.arg("--text").arg(text);
        command.args(["--vocabulary", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"]);
        command.args(["--block-size", "16", "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1"]);
        command.args(["--max-steps", "8", "--save-total-limit", "2", "--warmup", "2", "--seed", "5"]);
    }
    match fault_at {
        Some(n) => command.env("QKV_FAULT_AT", n.to_string()),
        // Counts the points without ever reaching one.
        None => command.env("QKV_FAULT_AT", usize::MAX.to_string()).env("QKV_FAULT_TRACE", "1"),
    };
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The log without its timings, which differ between any two runs.
fn log_without_timings(run: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(run.join("log.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
            let fields = record.as_object_mut().unwrap();
            fields.remove("tokens_per_s");
            fields.remove("seconds");
            record
        })
        .collect()
}

/// Every model directory under a valid name: the step checkpoints and `best/`.
fn valid_directories(run: &Path) -> Vec<PathBuf> {
    let mut dirs = step_checkpoints(run).unwrap();
    if run.join("best").exists() {
        dirs.push(run.join("best"));
    }
    dirs
}

/// A checkpoint loads: the model, and for step checkpoints the state, options and optimizer moments.
fn assert_loads(dir: &Path, context: &str) {
    qkv::hub::gpt2::load_frozen(dir, &Device::Cpu).unwrap_or_else(|e| panic!("{context}: {dir:?}: {e}"));
    assert!(dir.join("tokenizer.json").is_file(), "{context}: {dir:?} has no tokenizer");
    if dir.file_name().is_some_and(|n| n != "best") {
        for name in ["state.json", "training.json"] {
            let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{context}: {name}: {e}"));
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{context}: {name}: {e}"));
        }
        qkv::hub::load_safetensors(&dir.join("optimizer.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{context}: optimizer: {e}"));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// With the atomic exchange of directories (Linux).
#[test]
fn a_kill_at_any_fault_point_loses_no_checkpoint_and_resume_repeats_the_run() {
    kill_at_every_point("exchange", true);
}

/// With the fallback of systems without it: the old directory renamed aside, then the new one into place.
#[test]
fn the_same_holds_for_the_replacement_without_an_exchange() {
    kill_at_every_point("no-exchange", false);
}

fn kill_at_every_point(name: &str, exchange: bool) {
    let scratch = Scratch::new(name);
    let text = scratch.0.join("input.txt");
    let line = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n";
    fs::write(&text, line.repeat(40)).unwrap();

    let reference = scratch.0.join("reference");
    let counted = train(&text, &reference, false, None, exchange);
    assert!(counted.status.success(), "{}", stderr(&counted));
    let points = stderr(&counted).lines().filter(|l| l.starts_with("fault point ")).count();
    // 4 checkpoints (model, options, state, optimizer), best/ replaced, 2 prunes: dozens of points.
    assert!(points >= 40, "only {points} fault points:\n{}", stderr(&counted));
    let final_step = step_checkpoints(&reference).unwrap().pop().unwrap();
    let final_weights = fs::read(final_step.join("model.safetensors")).unwrap();
    let best_weights = fs::read(reference.join("best/model.safetensors")).unwrap();
    let reference_log = log_without_timings(&reference);

    let mut restarted = 0;
    for at in 1..=points {
        let run = scratch.0.join(format!("killed-{at}"));
        let killed = train(&text, &run, false, Some(at), exchange);
        let context = format!("killed at point {at}");
        assert_eq!(killed.status.signal(), Some(6), "{context}: not aborted: {}", stderr(&killed));
        assert!(stderr(&killed).contains(&format!("fault injected at point {at}:")), "{}", stderr(&killed));
        for dir in valid_directories(&run) {
            assert_loads(&dir, &context);
        }

        let again = if step_checkpoints(&run).unwrap().is_empty() {
            restarted += 1;
            train(&text, &run, false, Some(usize::MAX), exchange)
        } else {
            train(&text, &run, true, Some(usize::MAX), exchange)
        };
        assert!(again.status.success(), "{context}: {}", stderr(&again));
        let last = step_checkpoints(&run).unwrap().pop().unwrap();
        assert_eq!(last.file_name(), final_step.file_name(), "{context}");
        assert!(fs::read(last.join("model.safetensors")).unwrap() == final_weights, "{context}: final weights differ");
        assert!(fs::read(run.join("best/model.safetensors")).unwrap() == best_weights, "{context}: best differs");
        assert_eq!(log_without_timings(&run), reference_log, "{context}: log.jsonl differs");
        assert_eq!(names(&run), names(&reference), "{context}: run directory");
        assert_eq!(names(&run.join("checkpoints")), names(&reference.join("checkpoints")), "{context}");
        fs::remove_dir_all(&run).unwrap();
    }
    assert!(restarted > 0 && restarted < points, "{restarted} of {points} kills came before the first checkpoint");
    eprintln!("{name}: {points} kills, {restarted} of them before the first checkpoint");
}

#[test]
fn resume_refuses_data_that_changed_since_the_run_started() {
    let scratch = Scratch::new("data");
    let text = scratch.0.join("input.txt");
    fs::write(&text, "a small text to train on, repeated. ".repeat(60)).unwrap();
    let run = scratch.0.join("run");
    assert!(train(&text, &run, false, Some(usize::MAX), true).status.success());
    fs::write(&text, "another text altogether, repeated. ".repeat(60)).unwrap();
    let resumed = train(&text, &run, true, Some(usize::MAX), true);
    assert_eq!(resumed.status.code(), Some(1), "{}", stderr(&resumed));
    let message = stderr(&resumed);
    assert!(message.contains("input.txt") && message.contains("`text` changed since the run started"), "{message}");
}
