//! `qkv convert --dtype`: a model directory saved with its matrices in bf16 or int8 ([`crate::hub::reduced`]),
//! so that a deployment ships and reads a half or a quarter of the bytes. Loading it gives the model that
//! `--dtype` builds from the f32 directory.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::ModelKind;
use crate::hub::reduced::{self, OutputAxis};
use crate::hub::{bert, gpt2, load_weights, transformer, WEIGHTS};
use crate::kernels::reduced::WeightDtype;
use crate::{Error, Result};

/// Files a model directory's weights come in; the converted directory has model.safetensors instead.
const WEIGHT_FILES: [&str; 4] =
    ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"];

/// Writes `src` (a bert, gpt2 or translation model directory; a run directory means its `best/`) to the new
/// directory `out`: its files copied, its weights as `out/model.safetensors` in `dtype`. Returns the weights'
/// path. `out` must not exist yet (nothing is overwritten).
pub fn convert(src: &Path, dtype: WeightDtype, out: &Path) -> Result<PathBuf> {
    let kind = ModelKind::detect(src)?;
    let has_weights = WEIGHT_FILES.iter().any(|w| src.join(w).exists());
    let src = if !has_weights && src.join("best").is_dir() { src.join("best") } else { src.to_path_buf() };
    if out.exists() {
        return Err(Error::input(out, None, "already exists; converting writes a new directory"));
    }
    let packed: fn(&str, &[usize]) -> Option<OutputAxis> = match kind {
        ModelKind::Embedder | ModelKind::BertTask(_) => bert::packed_axis,
        ModelKind::Generator => gpt2::packed_axis,
        ModelKind::Translator => transformer::packed_axis,
    };
    let mut tensors: Vec<(String, Tensor)> = load_weights(&src, &Device::Cpu)?.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    copy_tree(&src, out, true)?;
    let path = out.join(WEIGHTS);
    reduced::save(&tensors, packed, dtype, &path)?;
    Ok(path)
}

/// Copies every file under `from` to `to` (created), but for the weight files at the top level.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (path, name) = (entry.path(), entry.file_name());
        let shard =
            name.to_string_lossy().starts_with("pytorch_model-") || name.to_string_lossy().starts_with("model-0");
        let weights = top && (shard || WEIGHT_FILES.iter().any(|w| name == *w));
        if path.is_dir() {
            copy_tree(&path, &to.join(&name), false)?;
        } else if !weights {
            std::fs::copy(&path, to.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
