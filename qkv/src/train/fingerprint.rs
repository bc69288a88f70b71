//! The data a run trains on, fingerprinted when it starts (`data.json`: each file's size and a 64-bit FNV-1a
//! hash of its bytes), so that `--resume` can tell when a file changed under it: a run resumed on other data
//! would silently stop being the run it claims to be.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One data file of a run: the option that names it, its path as given, its size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// The option that names the file (`train_file`, `text` …).
    pub option: String,
    /// The file's path as it was given.
    pub path: PathBuf,
    /// The file's size in bytes.
    pub bytes: u64,
    /// FNV-1a (64 bit) of the contents, as 16 hex digits.
    pub fnv1a: String,
}

impl DataFile {
    /// Reads and hashes `path`.
    pub fn of(option: &str, path: &Path) -> Result<Self> {
        let (bytes, hash) = hash_file(path)?;
        Ok(Self { option: option.to_string(), path: path.to_path_buf(), bytes, fnv1a: format!("{hash:016x}") })
    }
}

/// The file name of a run's fingerprints.
pub const DATA_JSON: &str = "data.json";

/// Fingerprints `files` ((option, path) pairs; empty paths are options left unset) into `run_dir/data.json`.
pub fn record(run_dir: &Path, files: &[(&str, &Path)]) -> Result<()> {
    let given = files.iter().filter(|(_, path)| !path.as_os_str().is_empty());
    let prints = given.map(|(option, path)| DataFile::of(option, path)).collect::<Result<Vec<_>>>()?;
    crate::hub::write_json(&run_dir.join(DATA_JSON), &prints)
}

/// Checks that every file recorded in `run_dir/data.json` is still what it was; a run without the file (one
/// started before fingerprints existed) passes.
pub fn verify(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(DATA_JSON);
    if !path.exists() {
        return Ok(());
    }
    let recorded: Vec<DataFile> = crate::hub::read_json(&path)?;
    for then in recorded {
        let now = DataFile::of(&then.option, &then.path)?;
        if now != then {
            let message = format!(
                "`{}` changed since the run started: it was {} bytes (FNV-1a {}) and is {} bytes (FNV-1a {}) now; \
                 resuming would continue the run on other data. Restore the file, or start a new run (another --out)",
                then.option, then.bytes, then.fnv1a, now.bytes, now.fnv1a
            );
            return Err(Error::input(&then.path, None, message));
        }
    }
    Ok(())
}

/// FNV-1a (64 bits) of nothing: the hash [`fnv1a`] extends.
pub(crate) const FNV1A_EMPTY: u64 = 0xcbf2_9ce4_8422_2325;

/// The FNV-1a hash `hash` extended by `bytes`.
pub(crate) fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Size and FNV-1a hash of a file's bytes, read in blocks.
fn hash_file(path: &Path) -> Result<(u64, u64)> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buffer = vec![0u8; 1 << 16];
    let (mut bytes, mut hash) = (0u64, FNV1A_EMPTY);
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok((bytes, hash));
        }
        hash = fnv1a(hash, &buffer[..n]);
        bytes += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_published_test_vectors() {
        let dir = std::env::temp_dir().join(format!("qkv-fingerprint-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // From the FNV reference test suite: FNV-1a 64 of "" and of "a".
        for (text, expected) in [("", 0xcbf2_9ce4_8422_2325u64), ("a", 0xaf63_dc4c_8601_ec8c)] {
            let path = dir.join("data.txt");
            fs::write(&path, text).unwrap();
            assert_eq!(hash_file(&path).unwrap(), (text.len() as u64, expected));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_file_is_named_on_verify() {
        let dir = std::env::temp_dir().join(format!("qkv-fingerprint-verify-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let data = dir.join("train.txt");
        fs::write(&data, "one\ntwo\n").unwrap();
        record(&dir, &[("text", &data)]).unwrap();
        verify(&dir).unwrap();
        fs::write(&data, "one\nthree\n").unwrap();
        let message = verify(&dir).unwrap_err().to_string();
        assert!(message.contains("train.txt") && message.contains("`text` changed"), "{message}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
