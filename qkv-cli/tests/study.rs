//! `qkv study … --quick`: a seconds-long smoke run of every question (one seed, twenty training steps, few
//! draws) writes a report with a section, table and figure per question; a second run reuses the finished
//! trainings kept in runs/.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared Multi30k copy beside the project's checkouts (the `tokenizers` question reads it).
const MULTI30K: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/multi30k");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qkv-study-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn study(args: &[&str], out: &Path) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["--threads", "2", "study"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "qkv study {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn every_question_runs_and_writes_its_section() {
    let scratch = Scratch::new("all");
    let (stdout, _) = study(&["all", "--quick", "--seeds", "4", "--multi30k", MULTI30K], &scratch.0);
    let report = std::fs::read_to_string(scratch.0.join("report.md")).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.0.join("results.json")).unwrap()).unwrap();
    let sections = results.as_array().unwrap();
    let names: Vec<&str> = sections.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "scaling",
            "heads",
            "tied-qk",
            "additive",
            "mask-value",
            "parallel-decoding",
            "heatmaps",
            "positions",
            "residuals",
            "norms",
            "dropout",
            "tokenizers"
        ]
    );
    for section in sections {
        let name = section["name"].as_str().unwrap();
        let answer = section["answer"].as_str().unwrap();
        assert!(!answer.is_empty() && stdout.contains(answer), "{name}: answer not printed");
        assert!(report.contains(&format!("`qkv study {name}`")), "{name} missing from report.md");
        assert!(!section["tables"].as_array().unwrap().is_empty(), "{name}: no table");
        for figure in section["figures"].as_array().unwrap() {
            let file = scratch.0.join(figure["file"].as_str().unwrap());
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", file.display());
        }
    }
    assert!(report.contains("the numbers mean nothing"), "a quick report must say so");

    // Again: every training is read back from runs/, and the answers are the same.
    let (again, stderr) = study(&["tied-qk", "--quick", "--seeds", "4"], &scratch.0);
    assert!(!stderr.contains("training"), "trained again:\n{stderr}");
    let tied = sections.iter().find(|s| s["name"] == "tied-qk").unwrap();
    assert!(again.contains(tied["answer"].as_str().unwrap()));
}

#[test]
fn no_seeds_is_an_error() {
    let scratch = Scratch::new("seeds");
    let output = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["study", "heads", "--quick", "--seeds", ""])
        .arg("--out")
        .arg(&scratch.0)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("seed"), "{stderr}");
}

#[test]
fn a_missing_multi30k_file_is_an_error_naming_it() {
    let scratch = Scratch::new("multi30k");
    let output = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["study", "tokenizers", "--quick", "--multi30k"])
        .arg(scratch.0.join("nowhere"))
        .arg("--out")
        .arg(&scratch.0)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nowhere/train.de") && stderr.contains("--multi30k"), "{stderr}");
}
