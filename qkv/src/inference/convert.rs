//! `qkv convert --dtype`: a model directory saved with its matrices in bf16 or int8 ([`crate::hub::reduced`]),
//! so that a deployment ships and reads a half or a quarter of the bytes. Loading it gives the model that
//! `--dtype` builds from the f32 directory.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::ModelKind;
use crate::hub::reduced::{self, OutputAxis};
use crate::hub::{bert, copy_without_weights, gpt2, load_weights, transformer, WEIGHTS};
use crate::kernels::reduced::WeightDtype;
use crate::{Error, Result};

/// Writes `src` (a bert, gpt2 or translation model directory; a run directory means its `best/`) to the new
/// directory `out`: its files copied, its weights as `out/model.safetensors` in `dtype`. Returns the weights'
/// path. `out` must not exist yet (nothing is overwritten).
pub fn convert(src: &Path, dtype: WeightDtype, out: &Path) -> Result<PathBuf> {
    let kind = ModelKind::detect(src)?;
    let src = if kind == ModelKind::Translator { transformer::model_dir(src) } else { src.to_path_buf() };
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
    copy_without_weights(&src, out)?;
    let path = out.join(WEIGHTS);
    reduced::save(&tensors, packed, dtype, &path)?;
    Ok(path)
}
