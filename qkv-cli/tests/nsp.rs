//! `qkv train mlm --nsp` end to end: a tiny BERT on a corpus whose next-sentence question is learnable from one
//! token (every document is "alpha …" then "omega …", so a B that starts with "alpha" is never the successor;
//! a classifier of that rule is right 75% of the time) saves a BertForPreTraining directory, and its
//! validation NSP loss falls and accuracy rises from chance.

use std::path::Path;
use std::process::Command;

/// 400 two-sentence documents; the second sentence repeats the first one's colour.
fn write_corpus(path: &Path) {
    const WORDS: [&str; 10] = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy", "lime", "plum"];
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        WORDS[(state >> 33) as usize % WORDS.len()]
    };
    let documents: Vec<String> = (0..400)
        .map(|_| {
            let colour = next();
            format!("alpha {colour} {}\nomega {colour} {}", next(), next())
        })
        .collect();
    std::fs::write(path, documents.join("\n\n") + "\n").unwrap();
}

fn evaluations(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .collect()
}

#[test]
fn nsp_pre_training_learns_the_next_sentence_and_saves_bert_for_pre_training() {
    let scratch = std::env::temp_dir().join(format!("qkv-nsp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let text = scratch.join("docs.txt");
    write_corpus(&text);
    let out = scratch.join("run");
    #[rustfmt::skip]
    let args = [
        "train", "mlm", "--nsp", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--vocab-size", "60", "--hidden-size", "32", "--layers", "2", "--heads", "2", "--max-length", "16",
        "--batch-size", "16", "--learning-rate", "5e-3", "--num-train-epochs", "30", "--validation-fraction", "0.2",
        "--seed", "1",
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_qkv")).args(["--threads", "1"]).args(args).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForPreTraining");
    let weights =
        candle_core::safetensors::load(out.join("best/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for name in ["cls.seq_relationship.weight", "bert.pooler.dense.weight", "cls.predictions.bias"] {
        assert!(weights.contains_key(name), "{name} missing from best/model.safetensors");
    }

    let evals = evaluations(&out.join("log.jsonl"));
    let (first, last) = (&evals[0], evals.last().unwrap());
    let number = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"));
    // 80 held-out pairs: chance is 0.5 ± 0.06 (one standard deviation); the learnable rule gives 0.75.
    assert!(number(first, "val_nsp_accuracy") <= 0.6, "{first}");
    assert!(number(last, "val_nsp_accuracy") >= 0.68, "{last}");
    assert!(number(last, "val_nsp_loss") < number(first, "val_nsp_loss") - 0.1, "{first} → {last}");
    // The validation loss is the sum of the two, as BertForPreTraining's loss.
    let sum = number(last, "val_mlm_loss") + number(last, "val_nsp_loss");
    assert!((number(last, "val_loss") - sum).abs() < 1e-9);
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// A text without a blank line is one document: nothing to draw a NotNext sentence from, refused naming the
/// file and the fix.
#[test]
fn nsp_on_a_single_document_is_refused_naming_the_file() {
    let scratch = std::env::temp_dir().join(format!("qkv-nsp-one-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let text = scratch.join("one.txt");
    std::fs::write(&text, (0..30).map(|i| format!("sentence number {i} .\n")).collect::<String>()).unwrap();
    let out = scratch.join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["--threads", "1", "train", "mlm", "--nsp", "--text", text.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--vocab-size", "60", "--hidden-size", "16", "--layers", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("one.txt") && stderr.contains("two documents separated by a blank line"), "{stderr}");
    std::fs::remove_dir_all(&scratch).unwrap();
}
