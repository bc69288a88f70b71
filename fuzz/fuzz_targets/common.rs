#![allow(dead_code)] // each target uses part of it
//! What every target shares: a scratch copy of a fixture model directory per process (in /dev/shm when it
//! exists, so writing the input is cheap), into which the fuzzer's bytes are written as one of its files.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// The fixtures directory of the qkv crate.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures")
}

/// A fresh per-process copy of fixture directory `name` (e.g. "bert/BertModel"), made once.
pub fn scratch_copy(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("qkv-fuzz-{}-{}", std::process::id(), name.replace('/', "-")));
    if !dir.exists() {
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(fixtures().join(name)).unwrap() {
            let path = entry.unwrap().path();
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Writes `bytes` as `dir/name` (a plain write: the fuzzer's inputs need no atomicity).
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// A small batch of input ids that every fixture model accepts.
pub fn input_ids() -> std::collections::HashMap<String, Tensor> {
    let ids = Tensor::new(&[[1i64, 5, 7, 2]], &Device::Cpu).unwrap();
    [("input_ids".to_string(), ids)].into_iter().collect()
}

/// Runs the model in `dir` on [`input_ids`]: must return an error or outputs, never panic or abort.
pub fn run_model(dir: &Path) {
    let _ = qkv::inference::forward::checkpoint_outputs(dir, input_ids(), &Device::Cpu);
}
