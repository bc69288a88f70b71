//! Which files hold a model directory's weights: the one place that knows the four layouts and their order
//! of preference, for the loader and the header checks alike.

use std::path::{Path, PathBuf};

use super::pytorch::{PYTORCH_WEIGHTS, PYTORCH_WEIGHTS_INDEX};
use super::shard_index::shard_files;
use super::{WEIGHTS, WEIGHTS_INDEX};
use crate::{Error, Result};

/// The files that hold a model directory's weights, in order of preference: safetensors (single, then
/// sharded) before PyTorch's pickles (single, then sharded), as transformers prefers them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WeightFiles {
    Safetensors(PathBuf),
    SafetensorsShards(PathBuf),
    Pytorch(PathBuf),
    PytorchShards(PathBuf),
}

impl WeightFiles {
    /// The first of the four layouts `dir` has; an error naming what was looked for when it has none.
    pub(crate) fn find(dir: &Path) -> Result<Self> {
        let names = [WEIGHTS, WEIGHTS_INDEX, PYTORCH_WEIGHTS, PYTORCH_WEIGHTS_INDEX];
        for name in names {
            let path = dir.join(name);
            if super::exists(&path)? {
                return Ok(match name {
                    WEIGHTS => Self::Safetensors(path),
                    WEIGHTS_INDEX => Self::SafetensorsShards(path),
                    PYTORCH_WEIGHTS => Self::Pytorch(path),
                    _ => Self::PytorchShards(path),
                });
            }
        }
        Err(Error::input(dir, None, format!("has no weights: none of {}", names.join(", "))))
    }

    /// Every file the layout reads (the shards an index lists).
    pub(crate) fn files(&self) -> Result<Vec<PathBuf>> {
        match self {
            Self::Safetensors(path) | Self::Pytorch(path) => Ok(vec![path.clone()]),
            Self::SafetensorsShards(index) | Self::PytorchShards(index) => shard_files(index),
        }
    }

    /// Whether a file named `name` holds weights in one of the layouts: a single file, an index, or a shard
    /// (transformers names them `model-00001-of-00002.safetensors`, `pytorch_model-00001-of-00002.bin`).
    pub(crate) fn is_weight_file(name: &str) -> bool {
        [WEIGHTS, WEIGHTS_INDEX, PYTORCH_WEIGHTS, PYTORCH_WEIGHTS_INDEX].contains(&name)
            || name.starts_with("model-0")
            || name.starts_with("pytorch_model-")
    }

    pub(crate) fn is_pytorch(&self) -> bool {
        matches!(self, Self::Pytorch(_) | Self::PytorchShards(_))
    }
}
