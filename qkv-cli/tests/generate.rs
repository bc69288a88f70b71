//! `qkv generate` on the GPT-2 model trained by `qkv train lm` (qkv/tests/fixtures/gpt2/qkv-trained): prompts
//! from a file, generated together in left-padded batches, continue exactly as each prompt alone does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/gpt2/qkv-trained")
}

fn qkv(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["--threads", "1", "generate", "--model"])
        .arg(model())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn batched_prompts_continue_as_each_prompt_alone() {
    let prompts = ["ROMEO:", "The night is", "JULIET: The rose"];
    let common = ["--greedy", "--max-new-tokens", "6", "--ignore-eos"];
    let batched = qkv(&[&common[..], &["--input", "-", "--batch-size", "2"]].concat(), &prompts.join("\n"));
    let records: Vec<serde_json::Value> = batched.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), prompts.len());
    for (prompt, record) in prompts.iter().zip(&records) {
        assert_eq!(record["prompt"], *prompt);
        assert_eq!(record["stop_reason"], "max_new_tokens");
        let alone: serde_json::Value =
            serde_json::from_str(&qkv(&[&common[..], &["--prompt", prompt, "--json"]].concat(), "")).unwrap();
        assert_eq!(record["generated_ids"], alone["generated_ids"], "{prompt:?}");
        assert_eq!(record["text"], alone["text"], "{prompt:?}");
    }
}
