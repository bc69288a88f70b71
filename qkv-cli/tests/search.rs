//! `qkv finetune classify --search`: a random search on the tiny BERT fixture runs its trials, records them in
//! trials.jsonl, reports them (search.md, one PNG per numeric option) and leaves the best trial's model at the
//! top of --out, loadable by `qkv classify`; a search killed after its first trial resumes with the rest and
//! reproduces the trials an uninterrupted search ran; a misspelt option or a range in a grid is refused before
//! any trial trains.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-cli-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn qkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qkv")).arg("--threads").arg("1").args(args).output().unwrap()
}

fn ok(run: Output) -> Output {
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    run
}

/// Train and dev files of a task a word decides, and a space file.
fn data(dir: &Path, space: &str) -> [String; 3] {
    let row = |text: &str, label: u32| serde_json::json!({ "sentence": text, "label": label }).to_string();
    let train: Vec<String> =
        (0..16).map(|i| if i % 2 == 0 { row("good fine nice", 1) } else { row("bad awful", 0) }).collect();
    let dev: Vec<String> = (0..6).map(|i| if i % 2 == 0 { row("nice good", 1) } else { row("awful bad", 0) }).collect();
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("dev.jsonl"), dev.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("space.json"), space).unwrap();
    ["train.jsonl", "dev.jsonl", "space.json"].map(|f| dir.join(f).display().to_string())
}

fn search_args<'a>(files: &'a [String; 3], bert: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "finetune", "classify", "--model", bert, "--train", &files[0], "--dev", &files[1], "--out", out, "--space",
        &files[2], "--metric", "accuracy",
    ];
    args.extend_from_slice(extra);
    args
}

fn ledger(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_random_search_reports_its_trials_and_keeps_the_best_model() {
    let dir = scratch("random");
    let space = r#"{"learning_rate": {"log_uniform": [1e-4, 1e-2]}, "num_train_epochs": {"choice": [1, 2]},
                    "per_device_train_batch_size": {"choice": [4, 8]}, "seed": {"int": [1, 100]}}"#;
    let files = data(&dir, space);
    let bert = fixtures().join("bert/BertModel").display().to_string();
    let out = dir.join("search");
    let out_str = out.display().to_string();
    let run = ok(qkv(&search_args(&files, &bert, &out_str, &["--search", "random", "--trials", "4"])));
    let stdout = String::from_utf8_lossy(&run.stdout);

    let trials = ledger(&out);
    assert_eq!(trials.len(), 4);
    for t in &trials {
        let lr = t["params"]["learning_rate"].as_f64().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{t}");
        let epochs = t["params"]["num_train_epochs"].as_u64().unwrap() as usize;
        let values = t["values"].as_array().unwrap();
        assert!(!values.is_empty() && values.len() <= epochs, "one value per epoch run: {t}");
        assert!(["complete", "pruned"].contains(&t["status"].as_str().unwrap()), "{t}");
    }
    // The first of the trials with the highest best epoch value: a later tie does not replace it.
    let value =
        |t: &Value| t["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
    let best = trials.iter().reduce(|a, b| if value(b) > value(a) { b } else { a }).unwrap();
    let best_trial = best["trial"].as_u64().unwrap();
    assert!(stdout.contains(&format!("best: trial {best_trial} ")), "{stdout}");

    let report = std::fs::read_to_string(out.join("search.md")).unwrap();
    assert_eq!(report.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| trial")).count(), 4, "{report}");
    for option in ["learning_rate", "num_train_epochs", "per_device_train_batch_size", "seed"] {
        let png = std::fs::read(out.join(format!("search_{option}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{option}");
    }
    let kept: Vec<String> =
        std::fs::read_dir(out.join("trials")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(kept, [format!("trial-{best_trial:03}")], "only the best trial's directory stays");
    let from_top = std::fs::read(out.join("model.safetensors")).unwrap();
    let from_trial = std::fs::read(out.join(format!("trials/trial-{best_trial:03}/model.safetensors"))).unwrap();
    assert_eq!(from_top, from_trial, "--out holds the best trial's model");

    std::fs::write(dir.join("input.txt"), "good nice\n").unwrap();
    let input = dir.join("input.txt").display().to_string();
    let classified = ok(qkv(&["classify", "--model", &out_str, "--input", &input]));
    assert!(!classified.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_search_resumes_with_the_trials_it_had_not_finished() {
    let dir = scratch("resume");
    let files = data(&dir, r#"{"learning_rate": {"choice": [1e-3, 3e-3, 1e-2]}}"#);
    let bert = fixtures().join("bert/BertModel").display().to_string();
    let grid = ["--search", "grid", "--trials", "10", "--pruner", "none", "--epochs", "1", "--batch-size", "4"];
    let whole = dir.join("whole");
    let whole_str = whole.display().to_string();
    ok(qkv(&search_args(&files, &bert, &whole_str, &grid)));
    let uninterrupted = ledger(&whole);
    assert_eq!(uninterrupted.len(), 3, "the grid has three points");

    // What a kill during trial 1 leaves: trial 0 recorded, a torn line after it, trial 1's directory begun.
    let killed = dir.join("killed");
    let killed_str = killed.display().to_string();
    ok(qkv(&search_args(&files, &bert, &killed_str, &grid)));
    let text = std::fs::read_to_string(killed.join("trials.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(killed.join("trials.jsonl"), format!("{first}\n{{\"trial\": 1, \"para")).unwrap();
    std::fs::create_dir_all(killed.join("trials/trial-001")).unwrap();
    std::fs::write(killed.join("trials/trial-001/training.json"), "{").unwrap();

    let resumed = ok(qkv(&["finetune", "classify", "--out", &killed_str, "--resume"]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("3 trials planned") && stderr.contains("1 finished before"), "{stderr}");
    assert!(!stderr.contains("trial 0: ") && stderr.contains("trial 1: ") && stderr.contains("trial 2: "), "{stderr}");
    let after = ledger(&killed);
    assert_eq!(after.len(), 3);
    for (a, b) in after.iter().zip(&uninterrupted) {
        assert_eq!(a["params"], b["params"]);
        assert_eq!(a["values"], b["values"], "a resumed trial trains as the uninterrupted one did");
    }
    let refused = qkv(&search_args(&files, &bert, &killed_str, &grid));
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spaces_that_cannot_run_are_refused_before_any_trial() {
    let dir = scratch("refused");
    let bert = fixtures().join("bert/BertModel").display().to_string();
    for (space, mode, needle) in [
        (r#"{"learning_rat": {"log_uniform": [1e-5, 1e-3]}}"#, "random", "learning_rat is not an option"),
        (r#"{"learning_rate": {"log_uniform": [1e-5, 1e-3]}}"#, "grid", "choice"),
        (r#"{"learning_rate": {"log_uniform": [0, 1e-3]}}"#, "random", "learning_rate"),
        (r#"{"per_device_train_batch_size": {"choice": ["many"]}}"#, "random", "per_device_train_batch_size"),
    ] {
        let files = data(&dir, space);
        let out = dir.join("out");
        let out_str = out.display().to_string();
        let run = qkv(&search_args(&files, &bert, &out_str, &["--search", mode]));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(needle) && stderr.contains("space.json"), "{space}: {stderr}");
        assert!(!out.join("trials").exists(), "{space}: no trial started");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
