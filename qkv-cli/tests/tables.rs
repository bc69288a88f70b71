//! `qkv embed` and `qkv finetune classify` on JSON-lines and Parquet inputs (the Parquet table written by pyarrow,
//! tools/fixtures/make_table_fixtures.py), on the tiny BERT fixture.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures")
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-cli-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn qkv(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_qkv")).arg("--threads").arg("1").args(args).output().unwrap();
    assert!(run.status.success(), "qkv {args:?}: {}", String::from_utf8_lossy(&run.stderr));
    run
}

/// The `(text, embedding)` pairs of `qkv embed`'s JSON lines.
fn embeddings(stdout: &[u8]) -> Vec<(String, Vec<f64>)> {
    let text = String::from_utf8(stdout.to_vec()).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let embedding = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            (v["text"].as_str().unwrap().to_string(), embedding)
        })
        .collect()
}

/// A table's text column embeds exactly as the same texts given one per line (the same forward pass, so the
/// vectors are equal bit for bit).
#[test]
fn embed_reads_jsonl_and_parquet_columns() {
    let dir = scratch();
    let bert = fixtures().join("bert/BertModel").display().to_string();
    let texts = ["The cat sat.", "He said \"hi\", then left.", "Ünïcödé — 東京 🙂"];
    let lines = dir.join("texts.txt");
    std::fs::write(&lines, texts.join("\n") + "\n").unwrap();
    let from_lines = embeddings(&qkv(&["embed", "--model", &bert, "--input", &lines.display().to_string()]).stdout);
    assert_eq!(from_lines.len(), 3);
    let jsonl = dir.join("texts.jsonl");
    let rows: Vec<String> = texts.iter().map(|t| serde_json::json!({ "body": t, "id": 1 }).to_string()).collect();
    std::fs::write(&jsonl, rows.join("\n")).unwrap();
    let jsonl = jsonl.display().to_string();
    let from_jsonl = embeddings(&qkv(&["embed", "--model", &bert, "--input", &jsonl, "--text-column", "body"]).stdout);
    assert_eq!(from_jsonl, from_lines);
    let parquet = fixtures().join("tables/pairs.parquet").display().to_string();
    let args = ["embed", "--model", &bert, "--input", &parquet, "--text-column", "sentence1"];
    assert_eq!(embeddings(&qkv(&args).stdout), from_lines);
    // Without --text-column the defaults apply: pairs.parquet's first text column is sentence1.
    assert_eq!(embeddings(&qkv(&["embed", "--model", &bert, "--input", &parquet]).stdout), from_lines);
    let bad = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["--threads", "1", "embed", "--model", &bert, "--input", &jsonl])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("no text column") && stderr.contains("body, id"), "{stderr}");
}

/// One epoch of fine-tuning from a JSON-lines training file evaluated on the Parquet table: it runs, and the
/// saved classifier has the integer labels of both files as its classes.
#[test]
fn finetune_classify_reads_jsonl_and_parquet() {
    let dir = scratch();
    let bert = fixtures().join("bert/BertModel").display().to_string();
    let train = dir.join("train.jsonl");
    let rows = [("a good one", "fine", 1), ("bad stuff", "awful", 0), ("nice", "great", 1), ("awful", "bad", 0)];
    let lines: Vec<String> = rows
        .iter()
        .map(|(a, b, label)| serde_json::json!({ "sentence1": a, "sentence2": b, "label": label }).to_string())
        .collect();
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    let dev = fixtures().join("tables/pairs.parquet").display().to_string();
    let out = dir.join("classifier");
    let run = qkv(&[
        "finetune",
        "classify",
        "--model",
        &bert,
        "--train",
        &train.display().to_string(),
        "--dev",
        &dev,
        "--out",
        &out.display().to_string(),
        "--epochs",
        "1",
        "--batch-size",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("4 training rows, 3 dev rows") || stdout.contains("4 training rows, 3 dev rows"),
        "{stderr}"
    );
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"], serde_json::json!({ "0": "0", "1": "1" }));
}
