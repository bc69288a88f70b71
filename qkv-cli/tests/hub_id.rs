//! `--model org/name`: a Hub id resolves from a cache laid out as huggingface_hub writes it (refs/{revision} →
//! snapshots/{commit}/ with every file a symlink into blobs/), built here from the sentence-transformers
//! fixture, and embeds exactly as the directory itself does; `--revision` picks the ref, and a missing
//! revision is an error naming the ref file it looked for (all with `HF_HUB_OFFLINE=1`). Then the same model
//! downloaded through `HF_ENDPOINT` from the fake Hub on loopback (qkv/tests/hub_server) into an empty
//! `HF_HUB_CACHE`: the embeddings equal the directory's, and a second run downloads nothing. No test reaches the
//! internet.

#![cfg(unix)]

#[path = "../../qkv/tests/hub_server/mod.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/pytorch/sentence-transformers")
}

fn qkv(cache: &Path, args: &[&str]) -> Output {
    qkv_with(cache, &[("HF_HUB_OFFLINE", "1")], args)
}

fn qkv_with(cache: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qkv"))
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_TOKEN")
        .envs(env.iter().copied())
        .arg("--threads")
        .arg("1")
        .args(args)
        .output()
        .unwrap()
}

/// Copies `from` into `repo` as huggingface_hub does: each file's bytes under blobs/ (named by a counter here;
/// the Hub names them by hash), the snapshot entry a relative symlink to it.
fn fill(from: &Path, repo: &Path, snapshot: &Path, blobs: &mut usize) {
    std::fs::create_dir_all(snapshot).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = snapshot.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fill(&entry.path(), repo, &target, blobs);
            continue;
        }
        *blobs += 1;
        let blob = repo.join("blobs").join(format!("{:040x}", *blobs));
        std::fs::copy(entry.path(), &blob).unwrap();
        let depth = target.strip_prefix(repo).unwrap().components().count() - 1;
        let relative: PathBuf =
            std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(blob.file_name().unwrap());
        std::os::unix::fs::symlink(relative, &target).unwrap();
    }
}

#[test]
fn a_hub_id_embeds_from_a_python_style_cache_as_its_directory_does() {
    let cache = std::env::temp_dir().join(format!("qkv-hub-id-{}", std::process::id()));
    let repo = cache.join("models--org--tiny-st");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::write(repo.join("refs/v1"), commit).unwrap();
    fill(&fixture(), &repo, &repo.join("snapshots").join(commit), &mut 0);
    let input = fixture().join("sentences.txt").display().to_string();

    let from_dir = qkv(&cache, &["embed", "--model", &fixture().display().to_string(), "--input", &input]);
    assert!(from_dir.status.success(), "{}", String::from_utf8_lossy(&from_dir.stderr));
    for revision in ["main", "v1", commit] {
        let from_id = qkv(&cache, &["embed", "--model", "org/tiny-st", "--revision", revision, "--input", &input]);
        assert!(from_id.status.success(), "{revision}: {}", String::from_utf8_lossy(&from_id.stderr));
        assert_eq!(from_id.stdout, from_dir.stdout, "revision {revision}: embeddings differ from the directory's");
    }

    let missing = qkv(&cache, &["embed", "--model", "org/tiny-st", "--revision", "v2", "--input", &input]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("refs/v2") && stderr.contains("org/tiny-st"), "{stderr}");
    let unknown = qkv(&cache, &["embed", "--model", "org/absent", "--input", &input]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && stderr.contains("models--org--absent"), "{stderr}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_hub_id_downloads_from_hf_endpoint_and_embeds_as_its_directory_does() {
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let server = hub_server::FakeHub::start(vec![hub_server::Repo::from_dir("org/tiny-st", commit, &fixture())]);
    let cache = std::env::temp_dir().join(format!("qkv-hub-download-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let input = fixture().join("sentences.txt").display().to_string();
    let env = [("HF_ENDPOINT", server.url.as_str()), ("HF_HUB_OFFLINE", "0")];

    let from_dir = qkv(&cache, &["embed", "--model", &fixture().display().to_string(), "--input", &input]);
    assert!(from_dir.status.success(), "{}", String::from_utf8_lossy(&from_dir.stderr));
    let first = qkv_with(&cache, &env, &["embed", "--model", "org/tiny-st", "--input", &input]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("downloading org/tiny-st/pytorch_model.bin"), "{stderr}");
    assert_eq!(first.stdout, from_dir.stdout, "embeddings of the downloaded model differ from the directory's");
    assert_eq!(
        std::fs::read_to_string(cache.join("models--org--tiny-st/refs/main")).unwrap(),
        commit,
        "refs/main names the commit the Hub listed"
    );

    server.clear_requests();
    let second = qkv_with(&cache, &env, &["embed", "--model", "org/tiny-st", "--input", &input]);
    assert!(second.status.success() && !String::from_utf8_lossy(&second.stderr).contains("downloading"));
    assert_eq!(second.stdout, from_dir.stdout);
    let files: Vec<String> = server.requests().into_iter().filter(|r| !r.contains("/api/models/")).collect();
    assert!(files.is_empty(), "the second run fetched {files:?}");
    std::fs::remove_dir_all(&cache).unwrap();
}
