//! `--model` as a local directory or a Hugging Face Hub id (`org/name`), the latter found in huggingface_hub's
//! cache at `--revision` (qkv::hub::cache). Downloading what the cache lacks is not implemented: a missing
//! repository, revision or file is an error naming it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use qkv::hub::cache;

static REVISION: OnceLock<String> = OnceLock::new();

/// Sets the revision Hub ids resolve at (the global `--revision`); called once, before any command runs.
pub fn set_revision(revision: String) {
    let _ = REVISION.set(revision);
}

/// The directory `model` names: itself when it is a path, else the cached snapshot of the Hub id it reads as,
/// at the global `--revision`.
pub fn resolve(model: &Path) -> Result<PathBuf> {
    let revision = REVISION.get().map_or("main", String::as_str);
    Ok(cache::model_dir(model, revision)?)
}
