//! `qkv attention` on the BERT fixture: one PNG grid and its weights as JSON, which `qkv plot attention` draws
//! again; a missing model directory is an error naming it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn qkv(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qkv")).args(["--threads", "1"]).args(args).output().unwrap()
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures").join(path)
}

#[test]
fn attention_writes_a_grid_and_its_weights() {
    let out = std::env::temp_dir().join(format!("qkv-attention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let model = fixture("bert/BertModel");
    let (model, out_s) = (model.to_str().unwrap(), out.to_str().unwrap());
    let run = qkv(&["attention", "--model", model, "--text", "hello world", "--out", out_s]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let png = std::fs::read(out.join("self-attention.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("self-attention.json")).unwrap()).unwrap();
    assert_eq!(json["weights"].as_array().unwrap().len(), 2, "two layers");
    assert_eq!(json["source_tokens"], json["target_tokens"]);
    let redrawn = out.join("again.png");
    let plot = qkv(&[
        "plot",
        "attention",
        "--weights",
        out.join("self-attention.json").to_str().unwrap(),
        "--out",
        redrawn.to_str().unwrap(),
    ]);
    assert!(plot.status.success(), "{}", String::from_utf8_lossy(&plot.stderr));
    assert!(std::fs::read(&redrawn).unwrap().starts_with(b"\x89PNG"));

    let missing = qkv(&["attention", "--model", "/nonexistent/model", "--text", "x", "--out", out_s]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}
