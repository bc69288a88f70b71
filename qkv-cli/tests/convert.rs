//! `qkv convert --to safetensors DIR` on the PyTorch-format fixtures (tools/fixtures/make_pytorch_fixtures.py):
//! model.safetensors appears beside the .bin files with no temporary left behind, and `qkv forward` gives the
//! same outputs, bit for bit, before and after; a .bin sentence-transformers directory embeds through the CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/pytorch").join(name)
}

fn qkv(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_qkv")).arg("--threads").arg("1").args(args).output().unwrap();
    assert!(run.status.success(), "qkv {args:?}: {}", String::from_utf8_lossy(&run.stderr));
    run
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn forward(dir: &Path, input: &Path, output: &Path) -> HashMap<String, Tensor> {
    let (dir, input, output) = (dir.display().to_string(), input.display().to_string(), output.display().to_string());
    qkv(&["forward", "--model", &dir, "--input", &input, "--output", &output]);
    candle_core::safetensors::load(&output, &Device::Cpu).unwrap()
}

#[test]
fn convert_writes_safetensors_with_identical_outputs() {
    let scratch = std::env::temp_dir().join(format!("qkv-convert-{}", std::process::id()));
    let dir = scratch.join("BertForMaskedLM");
    copy_dir(&fixture("BertForMaskedLM"), &dir);
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let inputs: HashMap<String, Tensor> =
        io.iter().filter_map(|(k, v)| k.strip_prefix("input.").map(|n| (n.to_string(), v.clone()))).collect();
    let input = scratch.join("input.safetensors");
    candle_core::safetensors::save(&inputs, &input).unwrap();
    let before = forward(&dir, &input, &scratch.join("before.safetensors"));

    let run = qkv(&["convert", "--to", "safetensors", &dir.display().to_string()]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("model.safetensors"));
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.contains(&"model.safetensors".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("tmp")), "a temporary file is left: {names:?}");
    for name in names.iter().filter(|n| n.ends_with(".bin")) {
        std::fs::write(dir.join(name), b"unused now").unwrap(); // the safetensors file must be what is read
    }
    let after = forward(&dir, &input, &scratch.join("after.safetensors"));
    assert_eq!(before.keys().len(), after.keys().len());
    for (name, tensor) in &before {
        let same = tensor.eq(&after[name]).unwrap().flatten_all().unwrap().min(0).unwrap().to_scalar::<u8>().unwrap();
        assert_eq!(same, 1, "{name} differs after conversion");
    }
    // Converting again is refused: there is nothing left to convert.
    let again =
        Command::new(env!("CARGO_BIN_EXE_qkv")).args(["convert", "--to", "safetensors"]).arg(&dir).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already has safetensors"));
}

#[test]
fn embed_reads_a_bin_sentence_transformers_directory() {
    let dir = fixture("sentence-transformers");
    let run = qkv(&[
        "embed",
        "--model",
        &dir.display().to_string(),
        "--input",
        &dir.join("sentences.txt").display().to_string(),
    ]);
    let want = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let want = want["embeddings"].to_vec2::<f32>().unwrap();
    let text = String::from_utf8(run.stdout).unwrap();
    let got: Vec<Vec<f32>> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-5, "embedding error {err:e}");
    }
}

/// `qkv convert --dtype int8 DIR --out NEW` on a .bin sentence-transformers directory: `qkv embed` on the new
/// directory (no --dtype: it loads as saved) prints what `--dtype int8` on the original prints, value for value
/// (the same int8 weights, scales within one ulp: equal to 1e-6). --dtype without --out, and an --out that
/// exists, are errors naming the option.
#[test]
fn convert_dtype_saves_a_directory_that_embeds_as_load_time_conversion() {
    let scratch = std::env::temp_dir().join(format!("qkv-convert-dtype-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let (dir, out) = (fixture("sentence-transformers"), scratch.join("int8"));
    let (dir_arg, out_arg) = (dir.display().to_string(), out.display().to_string());
    let run = qkv(&["convert", "--dtype", "int8", &dir_arg, "--out", &out_arg]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("model.safetensors"));
    assert!(out.join("modules.json").exists() && !out.join("pytorch_model.bin").exists());
    let sentences = dir.join("sentences.txt").display().to_string();
    let embeddings = |args: &[&str]| -> Vec<f64> {
        let run = qkv(&[&["embed", "--input", &sentences][..], args].concat());
        let text = String::from_utf8(run.stdout).unwrap();
        text.lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>()
            })
            .collect()
    };
    let at_load = embeddings(&["--model", &dir_arg, "--dtype", "int8"]);
    let saved = embeddings(&["--model", &out_arg]);
    assert_eq!(at_load.len(), saved.len());
    let err = at_load.iter().zip(&saved).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err <= 1e-6, "embeddings differ by {err:e}");
    let refused = |args: &[&str]| {
        let run = Command::new(env!("CARGO_BIN_EXE_qkv")).arg("convert").args(args).output().unwrap();
        assert!(!run.status.success(), "{args:?}");
        String::from_utf8_lossy(&run.stderr).to_string()
    };
    assert!(refused(&["--dtype", "int8", &dir_arg]).contains("--out"));
    assert!(refused(&["--dtype", "int8", &dir_arg, "--out", &out_arg]).contains("already exists"));
    assert!(refused(&["--dtype", "fp8", &dir_arg, "--out", &out_arg]).contains("bf16"));
}
