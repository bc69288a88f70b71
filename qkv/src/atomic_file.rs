//! Files and directories that survive a crash (kill -9, power loss) at any instant.
//!
//! Everything is written under a temporary name in the same directory (`NAME.tmp-PID`), flushed to the disk
//! (`fsync` of every file and of the directory), then published with one rename, and the directory holding it
//! is flushed too — a rename alone is not durable. A directory that already exists is swapped with the new one
//! in a single atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`), so some complete version of it exists at
//! every moment; the old version, now under the temporary name, is removed afterwards. A directory is deleted
//! by first renaming it out of its name (`NAME.deleting.tmp-PID`), so a half-deleted directory never carries a
//! valid name. [`remove_stale_temporaries`] cleans up what a crash left behind.
//!
//! Where the exchange is not available (another OS, a file system without it), the old directory is renamed
//! aside to `NAME.old.tmp-PID` first; a crash between the two renames leaves no `NAME`, and
//! [`remove_stale_temporaries`] renames the old one back.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` through a flushed temporary file and a rename. On failure (a full disk) the
/// temporary file is removed and `path` is as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path, "");
    let written = write_synced(&tmp, bytes).and_then(|()| {
        fault_point("file written");
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path)
}

/// Creates (or replaces) the directory `dir`: `fill` writes its files into a fresh temporary directory beside it,
/// which is flushed and then published under `dir` in one step (see the module's description). If `fill` fails,
/// `dir` is left as it was.
pub fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_sibling(dir, "");
    if tmp.exists() {
        remove_tree(&tmp)?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_tree(&tmp)) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fault_point("directory filled");
    if !dir.exists() {
        fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        fault_point("directory published");
        return sync_parent(dir);
    }
    if !fallback_forced() && exchange(&tmp, dir).map_err(|e| Error::io(dir, e))? {
        fault_point("directory exchanged");
        sync_parent(dir)?;
        // `tmp` now holds the old version.
        return remove_tree(&tmp);
    }
    let old = temporary_sibling(dir, ".old");
    fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    fault_point("old directory set aside");
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_parent(dir)?;
    remove_tree(&old)
}

/// Deletes the directory `dir` so that it never exists half-deleted under its own name: it is renamed to
/// `NAME.deleting.tmp-PID` (and that rename flushed) before its files are removed.
pub fn remove_dir_atomically(dir: &Path) -> Result<()> {
    let doomed = temporary_sibling(dir, ".deleting");
    fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
    sync_parent(dir)?;
    fault_point("directory renamed for deletion");
    remove_tree(&doomed)
}

/// Removes what interrupted writes left in `dir`: every `NAME.tmp-PID` whose process is gone, except that an
/// `X.old.tmp-PID` is renamed back to `X` when there is no `X` (a crash between the two renames of the fallback
/// replacement). Returns the names it removed or restored.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cleaned = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(cleaned) };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some((stem, pid)) = split_temporary(&path) else { continue };
        if pid == std::process::id() || process_is_alive(pid) {
            continue;
        }
        match stem.strip_suffix(".old") {
            Some(original) if !dir.join(original).exists() => {
                let original = dir.join(original);
                fs::rename(&path, &original).map_err(|e| Error::io(&path, e))?;
                sync_parent(&original)?;
            }
            _ if path.is_dir() => remove_tree(&path)?,
            _ => fs::remove_file(&path).map_err(|e| Error::io(&path, e))?,
        }
        cleaned.push(path);
    }
    Ok(cleaned)
}

/// `path` with `MARK.tmp-<pid>` appended: unique per process, in the same directory (so the rename is atomic).
pub(crate) fn temporary_sibling(path: &Path, mark: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!("{mark}.tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// `(NAME, PID)` of a `NAME.tmp-PID` path.
fn split_temporary(path: &Path) -> Option<(String, u32)> {
    let name = path.file_name()?.to_str()?;
    let (stem, pid) = name.rsplit_once(".tmp-")?;
    Some((stem.to_string(), pid.parse().ok()?))
}

#[cfg(target_os = "linux")]
fn process_is_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without /proc, a temporary is taken to be stale: runs do not share a directory.
#[cfg(not(target_os = "linux"))]
fn process_is_alive(_pid: u32) -> bool {
    false
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| Error::io(path, e))
}

/// Flushes every file under `dir`, then each directory itself (so that the entries are on disk too).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Directories cannot be opened for flushing on Windows; its renames are durable once they return.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Removes a directory tree file by file (with a fault point between files, so the tests can stop it halfway).
fn remove_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            remove_tree(&path)?;
        } else {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            fault_point("file removed");
        }
    }
    fs::remove_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Swaps the directories `a` and `b` atomically. `Ok(false)`: the system cannot (the caller falls back).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let status =
        unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if status == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// A place where the crash tests can kill the process: with the `fault-injection` feature, the process aborts
/// (as abruptly as kill -9: no destructors, no flush) at the Nth fault point it reaches, N taken from
/// `QKV_FAULT_AT`. Without the feature it compiles to nothing.
#[cfg(feature = "fault-injection")]
pub fn fault_point(what: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Some(at) = std::env::var("QKV_FAULT_AT").ok().and_then(|v| v.parse::<usize>().ok()) else { return };
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if std::env::var_os("QKV_FAULT_TRACE").is_some() {
        eprintln!("fault point {n}: {what}");
    }
    if n == at {
        eprintln!("fault injected at point {n}: {what}");
        std::process::abort();
    }
}

/// The crash tests' fault point in a build without the `fault-injection` feature: it does nothing and compiles away.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_what: &str) {}

/// With the `fault-injection` feature, `QKV_FAULT_NO_EXCHANGE` makes replacements take the fallback of systems
/// without an atomic exchange, so the crash tests cover both.
fn fallback_forced() -> bool {
    cfg!(feature = "fault-injection") && std::env::var_os("QKV_FAULT_NO_EXCHANGE").is_some()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn entry_names(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    }

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
        assert_eq!(entry_names(&root), vec![OsString::from("ckpt")]);
        fs::remove_dir_all(&root).unwrap();
        Ok(())
    }

    #[test]
    fn a_deleted_directory_leaves_nothing() -> Result<()> {
        let root = scratch("delete");
        let dir = root.join("step-00000010");
        replace_dir_atomically(&dir, |tmp| write_atomically(&tmp.join("model.safetensors"), b"weights"))?;
        remove_dir_atomically(&dir)?;
        assert!(entry_names(&root).is_empty());
        fs::remove_dir_all(&root).unwrap();
        Ok(())
    }

    /// A temporary of a process that is gone (PID 0 never names a user process, and u32::MAX is past Linux's
    /// pid_max) is stale; an `.old` one comes back when its original is missing.
    #[test]
    fn stale_temporaries_are_removed_and_a_set_aside_directory_restored() -> Result<()> {
        let root = scratch("stale");
        let dead = u32::MAX;
        fs::create_dir_all(root.join(format!("best.old.tmp-{dead}"))).unwrap();
        fs::write(root.join(format!("best.old.tmp-{dead}/config.json")), b"{}").unwrap();
        fs::create_dir_all(root.join(format!("step-00000005.deleting.tmp-{dead}"))).unwrap();
        fs::write(root.join(format!("log.jsonl.tmp-{dead}")), b"").unwrap();
        let live = temporary_sibling(&root.join("step-00000009"), "");
        fs::create_dir_all(&live).unwrap();
        fs::write(root.join("notes.tmp-abc"), b"not ours").unwrap();
        let cleaned = remove_stale_temporaries(&root)?;
        assert_eq!(cleaned.len(), 3, "{cleaned:?}");
        let expected = ["best", "notes.tmp-abc", live.file_name().unwrap().to_str().unwrap()];
        assert_eq!(entry_names(&root), expected.map(OsString::from));
        assert_eq!(fs::read(root.join("best/config.json")).unwrap(), b"{}");
        fs::remove_dir_all(&root).unwrap();
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let root = scratch("failed-write");
        // A directory where the file should go: the rename fails, the temporary must not stay behind.
        fs::create_dir_all(root.join("out.npy/inner")).unwrap();
        assert!(write_atomically(&root.join("out.npy"), b"data").is_err());
        assert_eq!(entry_names(&root), vec![OsString::from("out.npy")]);
        fs::remove_dir_all(&root).unwrap();
    }
}
