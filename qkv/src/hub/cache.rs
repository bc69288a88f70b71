//! Models by Hugging Face Hub id (`org/name`) from huggingface_hub's cache, read as Python leaves it:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; in it
//! `models--{org}--{name}/refs/{revision}` holds a commit hash and `snapshots/{commit}/` the files (symlinks into
//! `blobs/`). This module only reads that layout; [`super::download`] fills it.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The hub cache directory, by huggingface_hub's precedence.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cache/huggingface/hub"))
}

/// Whether `model` reads as a Hub id (`org/name`: two non-empty parts without `.`-only or path syntax) rather
/// than a local directory; an existing path always counts as local.
pub fn is_hub_id(model: &str) -> bool {
    if Path::new(model).exists() {
        return false;
    }
    let mut parts = model.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    part_ok(org) && part_ok(name)
}

/// The snapshot directory of `repo` (`org/name`) at `revision` (a branch or tag under refs/, or a 40-hex
/// commit) in `cache`, with `files` checked present. Anything missing is an error naming the path.
pub fn snapshot(cache: &Path, repo: &str, revision: &str, files: &[&str]) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        revision.to_string()
    } else {
        let reference = repo_dir.join("refs").join(revision);
        let text = std::fs::read_to_string(&reference).map_err(|_| {
            let message =
                format!("{repo} at revision {revision:?} is not in the Hugging Face cache {}", cache.display());
            Error::input(&reference, None, message)
        })?;
        text.trim().to_string()
    };
    let dir = repo_dir.join("snapshots").join(&commit);
    for file in files {
        let path = dir.join(file);
        if !path.is_file() {
            let message = format!("{file} of {repo} (commit {commit}) is not in the cache");
            return Err(Error::input(&path, None, message));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache laid out as huggingface_hub writes it: blobs named by hash, snapshot entries symlinked to them.
    #[cfg(unix)]
    #[test]
    fn resolves_a_python_style_cache_through_refs_and_symlinks() {
        let cache = std::env::temp_dir().join(format!("qkv-hub-cache-{}", std::process::id()));
        let repo = cache.join("models--org--tiny-bert");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(repo.join("blobs/3f2a"), "{\"model_type\": \"bert\"}").unwrap();
        let link = repo.join("snapshots").join(commit).join("config.json");
        std::os::unix::fs::symlink("../../blobs/3f2a", &link).unwrap();

        let dir = snapshot(&cache, "org/tiny-bert", "main", &["config.json"]).unwrap();
        assert_eq!(dir, repo.join("snapshots").join(commit));
        assert_eq!(std::fs::read_to_string(dir.join("config.json")).unwrap(), "{\"model_type\": \"bert\"}");
        assert_eq!(snapshot(&cache, "org/tiny-bert", commit, &[]).unwrap(), dir);

        let missing = snapshot(&cache, "org/tiny-bert", "main", &["model.safetensors"]).unwrap_err().to_string();
        assert!(missing.contains("model.safetensors") && missing.contains(commit), "{missing}");
        let no_ref = snapshot(&cache, "org/tiny-bert", "v2", &[]).unwrap_err().to_string();
        assert!(no_ref.contains("refs/v2"), "{no_ref}");
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_hub_id("openai-community/gpt2"));
        for local in ["runs/bert/best", "/tmp", "./model", "../x", "model", "a/", "org/na me"] {
            assert!(!is_hub_id(local), "{local}");
        }
    }
}
