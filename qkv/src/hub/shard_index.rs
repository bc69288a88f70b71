//! The index of a sharded checkpoint (`model.safetensors.index.json`): which shard file holds each tensor. Read
//! by the header checks and by the weight loader alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The weight map of a shard index: tensor name → shard file name.
pub(crate) fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let Index { weight_map } = super::read_json(index)?;
    Ok(weight_map)
}

/// The distinct shard files an index lists, in name order, each checked to exist. A shard name that leaves
/// the directory (an absolute path or `..`) is refused: an index names files beside it.
pub(crate) fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<String> = read_weight_map(index)?.into_values().collect();
    files
        .into_iter()
        .map(|file| {
            let plain = Path::new(&file).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(Error::input(index, None, format!("lists shard {file:?}, which is not a file name")));
            }
            let path = dir.join(&file);
            if !super::exists(&path)? {
                return Err(Error::input(index, None, format!("lists shard {file}, which does not exist")));
            }
            Ok(path)
        })
        .collect()
}
