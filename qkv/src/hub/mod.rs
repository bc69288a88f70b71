//! Hugging Face model directories: the only code that knows their files and tensor names.
//!
//! A directory holds `config.json`, the weights as `model.safetensors` or as shards listed in
//! `model.safetensors.index.json` (or, from older checkpoints, `pytorch_model.bin` and its sharded form), and a tokenizer (`tokenizer.json`, or the files it was converted from).
//! Each architecture has one module with its name table (qkv parameter ↔ checkpoint tensor).

pub mod bert;
pub mod cache;
pub mod download;
pub mod gpt2;
pub mod header;
pub mod pytorch;
pub mod reduced;
pub mod sentence_transformers;
mod shard_index;
pub mod tokenizer;
pub mod transformer;
mod weight_files;
pub mod weights;

pub(crate) use weights::assign;
pub use weights::{
    average_model_dirs, average_parameters, convert_to_safetensors, copy_without_weights, load_parameters,
    load_safetensors, load_weights, save_parameters, save_safetensors, LoadReport, WeightSource,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Single-file weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights: `{"weight_map": {tensor name: shard file}}`.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Reads and parses a JSON file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, Some(e.line()), e))
}

/// `config.json` of a model directory, parsed as `T`.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    if !exists(&path)? {
        let message = "no config.json: not a Hugging Face model directory";
        return Err(Error::input(dir, None, message));
    }
    read_json(&path)
}

/// `config`'s own validation (sizes, limits, memory), its errors reported against `dir/config.json`.
pub(crate) fn validate_in(dir: &Path, validation: Result<()>) -> Result<()> {
    validation.map_err(|e| match e {
        Error::Config { .. } => Error::input(dir.join("config.json"), None, e),
        other => other,
    })
}

/// Whether `path` exists. Unlike `Path::exists`, an error other than "not found" (a directory that may not be
/// read, a file where a directory should be) is reported as what it is, not as absence.
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
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
    header::WeightHeader::read_file(path)?; // offsets and sizes checked, a bad tensor named
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
