//! `qkv study … --quick`: a seconds-long smoke run of every question (one seed, twenty training steps, few
//! draws) writes a report with a section, table and figure per question; a second run reuses the finished
//! trainings kept in runs/.

use std::path::{Path, PathBuf};
use std::process::Command;

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

struct SampleData {
    minilm: PathBuf,
    stsb: PathBuf,
    multi30k: PathBuf,
}

/// Small stand-ins for the real data the `bert` and `tokenizers` questions read (STS-B, Multi30k), written
/// into `dir`, and the tiny random sentence-transformers fixture for all-MiniLM-L6-v2: the smoke run checks
/// the pipeline, not the numbers.
fn sample_data(dir: &Path) -> SampleData {
    let (stsb, multi30k) = (dir.join("stsb"), dir.join("multi30k"));
    std::fs::create_dir_all(&stsb).unwrap();
    std::fs::create_dir_all(&multi30k).unwrap();
    let animals = ["dog", "cat", "horse", "bird", "child", "man", "woman"];
    let actions = ["runs", "sleeps", "jumps over a fence", "plays in the park", "eats an apple"];
    let sentence = |i: usize| format!("A {} {} .", animals[i % animals.len()], actions[(i / 3) % actions.len()]);
    let pairs: String =
        (0..80).map(|i| format!("{},{},{:.1}\n", sentence(i), sentence(i + (i % 4)), (i % 6) as f64)).collect();
    std::fs::write(stsb.join("train.csv"), &pairs).unwrap();
    std::fs::write(stsb.join("dev.csv"), &pairs).unwrap();
    let german = ["Hund", "Katze", "Pferd", "Vogel", "Kind", "Mann", "Frau"];
    let german_sentence = |i: usize| format!("Ein {} ist hier Nummer {} .", german[i % german.len()], i % 9);
    for (split, n) in [("train", 200), ("val", 30), ("test_2016_flickr", 30)] {
        let en: String = (0..n).map(|i| sentence(i) + "\n").collect();
        let de: String = (0..n).map(|i| german_sentence(i) + "\n").collect();
        std::fs::write(multi30k.join(format!("{split}.en")), en).unwrap();
        std::fs::write(multi30k.join(format!("{split}.de")), de).unwrap();
    }
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/pytorch/sentence-transformers");
    SampleData { minilm, stsb, multi30k }
}

#[test]
fn every_question_runs_and_writes_its_section() {
    let scratch = Scratch::new("all");
    let data = sample_data(&scratch.0.join("data"));
    let data_args = [
        "--minilm",
        data.minilm.to_str().unwrap(),
        "--stsb",
        data.stsb.to_str().unwrap(),
        "--multi30k",
        data.multi30k.to_str().unwrap(),
    ];
    let args: Vec<&str> = ["all", "--quick", "--seeds", "4"].into_iter().chain(data_args).collect();
    let (stdout, _) = study(&args, &scratch.0);
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
            "embeddings",
            "dropout",
            "tokenizers",
            "bert"
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
