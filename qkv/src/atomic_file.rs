//! Files and directories replaced atomically: written under a temporary name in the same directory and
//! renamed into place, so an interrupted write never leaves a half-written file or checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Creates (or replaces) the directory `dir`: `fill` writes its files into a fresh temporary directory beside it,
/// which is then renamed to `dir`. An existing `dir` is moved aside first and removed only after the rename.
pub fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_sibling(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dir.with_extension("old");
    if dir.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// `path` with `.tmp-<pid>` appended: unique per process, in the same directory (so the rename is atomic).
pub(crate) fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qkv-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replacing_a_directory_keeps_the_old_one_when_filling_fails() -> Result<()> {
        let root = scratch("replace");
        let dir = root.join("ckpt");
        replace_dir_atomically(&dir, |tmp| write_atomically(&tmp.join("a"), b"first"))?;
        let failed = replace_dir_atomically(&dir, |tmp| {
            write_atomically(&tmp.join("a"), b"second")?;
            Err(Error::config("test", "fail", "an error"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"first");
        replace_dir_atomically(&dir, |tmp| write_atomically(&tmp.join("a"), b"third"))?;
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"third");
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")]);
        Ok(())
    }
}
