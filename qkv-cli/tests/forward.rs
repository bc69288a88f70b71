//! `qkv forward` on the BERT fixtures: the outputs it writes under Hugging Face's names equal transformers'
//! (max |error| ≤ 1e-5 · max(1, max |reference|)), from int64 and from 32-bit inputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn fixture(class: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/bert").join(class)
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn forward(model: &Path, input: &Path, output: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["--threads", "1", "forward", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

fn max_error(got: &Tensor, want: &Tensor) -> f32 {
    let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1.0)
}

#[test]
fn forward_writes_every_output_of_the_class() {
    let scratch = std::env::temp_dir().join(format!("qkv-forward-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for class in ["BertForQuestionAnswering", "BertForPreTraining", "BertModel"] {
        let io = load(&fixture(class).join("io.safetensors"));
        let mut inputs: HashMap<String, Tensor> =
            io.iter().filter_map(|(k, v)| k.strip_prefix("input.").map(|name| (name.to_string(), v.clone()))).collect();
        if class == "BertModel" {
            for tensor in inputs.values_mut() {
                *tensor = tensor.to_dtype(DType::U32).unwrap(); // 32-bit ids are widened
            }
        }
        let input_path = scratch.join(format!("{class}-in.safetensors"));
        candle_core::safetensors::save(&inputs, &input_path).unwrap();
        let output_path = scratch.join(format!("{class}-out.safetensors"));
        let run = forward(&fixture(class), &input_path, &output_path);
        assert!(run.status.success(), "{class}: {}", String::from_utf8_lossy(&run.stderr));
        let outputs = load(&output_path);
        let expected: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("output.")).collect();
        assert_eq!(outputs.len(), expected.len(), "{class}: {:?}", outputs.keys());
        for name in expected {
            let err = max_error(&outputs[name], &io[&format!("output.{name}")]);
            assert!(err <= 1e-5, "{class} {name}: {err:e}");
        }
    }
    let run = forward(&fixture("BertModel"), &scratch.join("missing.safetensors"), &scratch.join("x.safetensors"));
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("missing.safetensors"));
    std::fs::remove_dir_all(&scratch).unwrap();
}
