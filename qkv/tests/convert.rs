//! `qkv convert --dtype`: a model directory saved in bf16 or int8 loads in that dtype and computes what the
//! f32 directory converted at load computes, and bad converted files are errors naming the tensor.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qkv::decode::generate::GenerateOptions;
use qkv::hub::reduced::stored_dtype;
use qkv::inference::convert::convert;
use qkv::inference::{Embedder, Generator};
use qkv::nn::Mode;
use qkv::WeightDtype;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-convert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// GPT-2 (tied head: the token embedding is packed too): the saved directory's logits within 1e-6 of the
/// largest logit of the directory converted at load (bf16: the same bits, so equal; int8: the same int8
/// values, scales within one ulp), and the same greedy continuation. The file shrinks to under 60% (bf16) and
/// 45% (int8) of the f32 file: this tiny fixture's position table and LayerNorms, which stay f32, are a large
/// share of it (GPT-2 small's are 0.7%).
#[test]
fn gpt2_saved_in_bf16_and_int8_equals_conversion_at_load() {
    let dir = fixture("gpt2/qkv-trained");
    let scratch = scratch("gpt2");
    let f32_bytes = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64;
    for (dtype, size) in [(WeightDtype::Bf16, 0.6), (WeightDtype::Int8, 0.45)] {
        let out = scratch.join(dtype.name());
        convert(&dir, dtype, &out).unwrap();
        assert!(out.join("config.json").exists() && out.join("tokenizer.json").exists());
        let bytes = std::fs::metadata(out.join("model.safetensors")).unwrap().len() as f64;
        assert!(bytes <= size * f32_bytes, "{dtype}: {bytes} bytes against f32's {f32_bytes}");
        assert_eq!(stored_dtype(&out).unwrap(), dtype);
        let at_load = Generator::load_as(&dir, &Device::Cpu, dtype).unwrap();
        let saved = Generator::load(&out, &Device::Cpu).unwrap();
        let prompt = at_load.encode("First Citizen:").unwrap();
        let logits = |g: &Generator| {
            let input = Tensor::new(vec![prompt.clone()], &Device::Cpu).unwrap();
            g.model().forward(&input, &mut Mode::Eval).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let err = max_relative_difference(&logits(&saved), &logits(&at_load));
        assert!(err <= 1e-6, "{dtype}: logits differ by {err:e}");
        let greedy = GenerateOptions { max_new_tokens: 16, greedy: true, ..GenerateOptions::default() };
        let ids = |g: &Generator| g.complete(&prompt, &greedy, &[], |_| Ok(())).unwrap().generated_ids;
        assert_eq!(ids(&saved), ids(&at_load), "{dtype}");
        // --dtype still wins over the stored dtype: the int8 file widened to f32 runs in f32.
        let widened = Generator::load_as(&out, &Device::Cpu, WeightDtype::F32).unwrap();
        assert!(logits(&widened).iter().all(|v| v.is_finite()));
    }
}

/// A sentence-transformers directory (pooling config and all) saved in bf16 and int8 embeds within 1e-6 of
/// the directory converted at load.
#[test]
fn embedder_saved_in_bf16_and_int8_equals_conversion_at_load() {
    let dir = fixture("bert/BertModel");
    let scratch = scratch("bert");
    let sentences = ["A man is playing a guitar.", "The cat sleeps on the mat.", "ok"];
    for dtype in [WeightDtype::Bf16, WeightDtype::Int8] {
        let out = scratch.join(dtype.name());
        convert(&dir, dtype, &out).unwrap();
        let embed = |e: Embedder| e.embed(&sentences, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at_load = embed(Embedder::load_as(&dir, &Device::Cpu, dtype).unwrap());
        let saved = embed(Embedder::load(&out, &Device::Cpu).unwrap());
        let err = max_relative_difference(&saved, &at_load);
        assert!(err <= 1e-6, "{dtype}: embeddings differ by {err:e}");
    }
}

/// Writes a safetensors file of (name, dtype, shape, bytes) with `metadata`.
fn write_file(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)], metadata: &[(&str, &str)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let metadata = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    std::fs::write(path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

#[test]
fn bad_converted_files_and_targets_are_errors() {
    let dir = scratch("bad");
    let path = dir.join("model.safetensors");
    let err = |path: &Path| qkv::hub::load_safetensors(path, &Device::Cpu).unwrap_err().to_string();
    let q = ("w", safetensors::Dtype::I8, vec![2, 2], vec![1u8, 2, 3, 4]);
    write_file(&path, std::slice::from_ref(&q), &[]);
    let message = err(&path);
    assert!(message.contains("`w` is I8 without `w.qkv_scale`"), "{message}");
    let scale = ("w.qkv_scale", safetensors::Dtype::F32, vec![3, 1], vec![0u8; 12]);
    write_file(&path, &[q.clone(), scale], &[]);
    let message = err(&path);
    assert!(message.contains("w.qkv_scale") && message.contains("[2, 1] or [1, 2]"), "{message}");
    let orphan = ("v.qkv_scale", safetensors::Dtype::F32, vec![1, 1], vec![0u8; 4]);
    write_file(&path, &[orphan], &[]);
    assert!(err(&path).contains("no I8 matrix `v`"));
    // Scales (2, 1) widen each row: q · scale.
    let scale = (
        "w.qkv_scale",
        safetensors::Dtype::F32,
        vec![2, 1],
        [0.5f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    write_file(&path, &[q, scale], &[("qkv_dtype", "fp8")]);
    let w = qkv::hub::load_safetensors(&path, &Device::Cpu).unwrap()["w"].to_vec2::<f32>().unwrap();
    assert_eq!(w, [[0.5, 1.0], [6.0, 8.0]]);
    let message = stored_dtype(&dir).unwrap_err().to_string();
    assert!(message.contains("qkv_dtype") && message.contains("fp8"), "{message}");
    // The target must be new.
    let message = convert(&fixture("bert/BertModel"), WeightDtype::Int8, &dir).unwrap_err().to_string();
    assert!(message.contains("already exists"), "{message}");
}
