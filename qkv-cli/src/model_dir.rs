//! `--model` as a local directory or a Hugging Face Hub id (`org/name`), the latter resolved at `--revision`
//! through huggingface_hub's cache, downloading what it lacks (qkv::hub::download; `HF_HUB_OFFLINE=1` for the
//! cache alone).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use qkv::hub::download::{self, Hub};

static REVISION: OnceLock<String> = OnceLock::new();

/// Sets the revision Hub ids resolve at (the global `--revision`); called once, before any command runs.
pub fn set_revision(revision: String) {
    let _ = REVISION.set(revision);
}

/// The directory `model` names: itself when it is a path, else the snapshot of the Hub id it reads as, at the
/// global `--revision`, its missing files downloaded.
pub fn resolve(model: &Path) -> Result<PathBuf> {
    let revision = REVISION.get().map_or("main", String::as_str);
    let mut hub = Hub::from_env();
    hub.on_download = Some(|file, bytes| eprintln!("downloading {file} ({:.1} MB)", bytes as f64 / 1e6));
    Ok(download::model_dir_with(&hub, model, revision)?)
}
