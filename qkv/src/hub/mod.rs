//! Hugging Face model directories: the only code that knows their files and tensor names.
//!
//! A directory holds `config.json`, the weights as `model.safetensors` or as shards listed in
//! `model.safetensors.index.json`, and a tokenizer (`tokenizer.json`, or the files it was converted from).
//! Each architecture has one module with its name table (qkv parameter ↔ checkpoint tensor).

pub mod bert;
pub mod gpt2;
pub mod sentence_transformers;
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Single-file weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights: `{"weight_map": {tensor name: shard file}}`.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Detached copies of `vars` (sharing their storage) in a VarBuilder: a model built over it records no autograd
/// graph, which inference does not need — when an op's input is a variable, candle keeps every intermediate of
/// the forward pass alive until its output is dropped.
pub fn frozen(vars: &[(String, Var)], device: &Device) -> candle_nn::VarBuilder<'static> {
    let tensors: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device)
}

/// Reads and parses a JSON file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, Some(e.line()), e))
}

/// `config.json` of a model directory, parsed as `T`.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    if !path.exists() {
        let message = "no config.json: not a Hugging Face model directory";
        return Err(Error::input(dir, None, message));
    }
    read_json(&path)
}

/// The class a directory's config.json names: `architectures[0]`, else its `model_type`.
pub fn architecture_name(dir: &Path) -> Result<String> {
    let config: serde_json::Value = read_config(dir)?;
    let first = config.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str());
    let model_type = config.get("model_type").and_then(|t| t.as_str());
    first
        .or(model_type)
        .map(str::to_string)
        .ok_or_else(|| Error::input(dir.join("config.json"), None, "names neither `architectures` nor `model_type`"))
}

/// Every weight of a model directory as f32 on `device`, from `model.safetensors` or from the shards of
/// `model.safetensors.index.json`.
pub fn load_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS);
    let index = dir.join(WEIGHTS_INDEX);
    if single.exists() {
        return load_safetensors(&single, device);
    }
    if index.exists() {
        return load_shards(&index, device);
    }
    let message = if dir.join("pytorch_model.bin").exists() {
        "has only pytorch_model.bin: qkv reads safetensors (re-save with save_pretrained(safe_serialization=True))"
    } else {
        "has neither model.safetensors nor model.safetensors.index.json"
    };
    Err(Error::input(dir, None, message))
}

fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::input(path, None, format!("not a readable safetensors file: {e}")))?;
    tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?))).collect()
}

fn load_shards(index: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let Index { weight_map } = read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: BTreeMap<&str, HashMap<String, Tensor>> = BTreeMap::new();
    for file in weight_map.values() {
        if !shards.contains_key(file.as_str()) {
            let path = dir.join(file);
            if !path.exists() {
                return Err(Error::input(index, None, format!("lists shard {file}, which does not exist")));
            }
            shards.insert(file, load_safetensors(&path, device)?);
        }
    }
    let mut weights = HashMap::new();
    for (name, file) in &weight_map {
        let tensor = shards.get_mut(file.as_str()).and_then(|s| s.remove(name));
        let tensor = tensor.ok_or_else(|| Error::input(dir.join(file), None, format!("has no tensor `{name}`")))?;
        weights.insert(name.clone(), tensor);
    }
    Ok(weights)
}

/// What loading did besides setting parameters from the checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters the checkpoint did not have, left at their fresh initialisation (new task heads).
    pub initialized: Vec<String>,
    /// Checkpoint tensors this model has no use for (another class's head, buffers).
    pub unused: Vec<String>,
}

/// Sets each of `vars` (qkv names) from `weights` (checkpoint names) through `to_checkpoint`, the
/// architecture's name table. A wrongly shaped tensor is an error naming both names and shapes; a missing one
/// is an error unless `may_initialize(name)` says the parameter may keep its fresh value.
pub(crate) fn assign(
    vars: &[(String, Var)],
    mut weights: HashMap<String, Tensor>,
    source: &Path,
    to_checkpoint: impl Fn(&str) -> String,
    may_initialize: impl Fn(&str) -> bool,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    for (name, var) in vars {
        let key = to_checkpoint(name);
        match weights.remove(&key) {
            Some(t) if t.dims() == var.dims() => var.set(&t)?,
            Some(t) => {
                let message = format!("tensor `{key}` has shape {:?}, expected {:?}", t.dims(), var.dims());
                return Err(Error::input(source, None, message));
            }
            None if may_initialize(name) => report.initialized.push(key),
            None => {
                let message = format!("tensor `{key}` is missing (expected shape {:?})", var.dims());
                return Err(Error::input(source, None, message));
            }
        }
    }
    report.unused = weights.into_keys().collect();
    report.unused.sort();
    Ok(report)
}

/// Writes `tensors` as a safetensors file that transformers accepts (it requires `{"format": "pt"}` in the
/// metadata), through a temporary file and a rename.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::input(path, None, format!("tensor `{name}`: {e}")))?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::input(path, None, e))?;
    crate::atomic_file::write_atomically(path, &bytes)
}

/// Writes `value` as pretty JSON (as `save_pretrained` does), atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::input(path, None, e))?;
    text.push('\n');
    crate::atomic_file::write_atomically(path, text.as_bytes())
}

/// `dir/name` if it exists.
pub(crate) fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    path.exists().then_some(path)
}

/// The integer tensors of a safetensors file (input_ids, attention_mask, ...), as i64 on `device`: int64 as
/// transformers writes them, int32 / uint32 / uint8 widened. Other dtypes are an error naming the tensor.
pub fn load_integer_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::input(path, None, format!("not a safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            Dtype::I32 => {
                data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect()
            }
            Dtype::U32 => {
                data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect()
            }
            Dtype::U8 | Dtype::BOOL => data.iter().map(|&b| b as i64).collect(),
            other => {
                let message = format!("tensor `{name}` is {other:?}; expected integer ids (int64 or int32)");
                return Err(Error::input(path, None, message));
            }
        };
        tensors.insert(name, Tensor::from_vec(values, view.shape(), device)?);
    }
    Ok(tensors)
}
