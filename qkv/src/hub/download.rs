//! Models by Hub id: the files a model needs, fetched into huggingface_hub's cache the way Python's
//! `snapshot_download` fills it, so that either side can use what the other downloaded.
//!
//! The protocol is the Hub's: `GET {endpoint}/api/models/{repo}/revision/{revision}` lists the commit and its
//! files; for each file `HEAD {endpoint}/{repo}/resolve/{commit}/{file}` gives its ETag (the blob's name; for
//! large files `X-Linked-Etag`, their sha256), its size and, for large files, a redirect to where the bytes are.
//! Relative redirects (a renamed repository) are followed for the metadata; the bytes are then fetched from the
//! final location. The layout written: `blobs/{etag}` holds the bytes, `snapshots/{commit}/{file}` is a relative
//! symlink to it, `refs/{revision}` names the commit.
//!
//! What makes it safe to interrupt: bytes go to `blobs/{etag}.incomplete` (Python's name, so either side resumes
//! the other's partial file with a `Range` request) under an exclusive lock in `.locks/`, and reach
//! `blobs/{etag}` only complete (the size the Hub announced), flushed and renamed; links and refs are published
//! by rename too. Every request has a timeout, and nothing the server sends is read into memory without a bound.
//!
//! It is written on `ureq` rather than on the `hf-hub` crate: hf-hub 0.4 (its blocking client) sets no timeouts
//! (a stalled server hangs the process), unwraps a redirect's missing `Location`, and writes refs in place;
//! hf-hub 1.x brings a Tokio runtime, reqwest and hf-xet (284 crates, aws-lc-sys among them).

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::cache;
use crate::{Error, Result};

/// huggingface_hub's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The most bytes read from a listing or an error body: far above any real repository's listing.
const LISTING_LIMIT: u64 = 64 << 20;

/// Where and how Hub ids are fetched. [`Hub::from_env`] reads huggingface_hub's variables.
#[derive(Clone, Debug)]
pub struct Hub {
    /// The cache directory (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub cache: PathBuf,
    /// The server, without a trailing `/` (`$HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`]).
    pub endpoint: String,
    /// The access token sent as `Authorization: Bearer` to the endpoint (`$HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// No network at all (`$HF_HUB_OFFLINE=1`): only what the cache holds.
    pub offline: bool,
    /// Connect and read timeout of each request (`$HF_HUB_DOWNLOAD_TIMEOUT` seconds, default 10).
    pub timeout: Duration,
    /// Called before each file is downloaded, with its repository path and size in bytes.
    pub on_download: Option<fn(&str, u64)>,
}

impl Hub {
    /// The settings huggingface_hub reads from the environment, with its defaults.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"));
        let endpoint = var("HF_ENDPOINT").map_or(DEFAULT_ENDPOINT.to_string(), |e| e.trim_end_matches('/').into());
        let timeout = var("HF_HUB_DOWNLOAD_TIMEOUT")
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0 && *t < 1e6)
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        Hub { cache: cache::cache_dir(), endpoint, token: token_from_env(), offline, timeout, on_download: None }
    }

    /// The snapshot directory of `repo` at `revision` with the files a model needs (configuration, tokenizer,
    /// weights: see [`model_files`]), downloading what the cache lacks. Offline, or when the endpoint cannot be
    /// reached (as huggingface_hub does), the cached snapshot is used as it is; a file it lacks is then an
    /// error naming it.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<PathBuf> {
        check_revision(revision)?;
        if self.offline {
            return cache::snapshot(&self.cache, repo, revision, &["config.json"])
                .map_err(|e| with_hint(e, "HF_HUB_OFFLINE is set, so nothing is downloaded"));
        }
        let listing = match self.listing(repo, revision) {
            Ok(listing) => listing,
            Err(Failure::Unreachable(why)) => {
                let cached = cache::snapshot(&self.cache, repo, revision, &["config.json"])
                    .map_err(|e| with_hint(e, &format!("and the Hub cannot be reached ({}: {why})", self.endpoint)))?;
                eprintln!("warning: {} cannot be reached ({why}); using the cached {repo}", self.endpoint);
                return Ok(cached);
            }
            Err(Failure::Refused(e)) => return Err(e),
        };
        let repo_dir = self.cache.join(format!("models--{}", repo.replace('/', "--")));
        for file in model_files(&listing.siblings)? {
            self.fetch_file(repo, &repo_dir, &listing.sha, file)?;
        }
        if revision != listing.sha {
            let reference = repo_dir.join("refs").join(revision);
            create_dir(reference.parent().unwrap_or(&repo_dir))?;
            crate::atomic_file::write_atomically(&reference, listing.sha.as_bytes())?;
        }
        cache::snapshot(&self.cache, repo, &listing.sha, &["config.json"])
    }

    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout_connect(self.timeout)
            .timeout_read(self.timeout)
            .timeout_write(self.timeout)
            .redirects(redirects)
            .try_proxy_from_env(true)
            .user_agent(concat!("qkv/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .build()
    }

    /// A request with the token attached, only when it goes to the endpoint itself (never to a redirect's
    /// storage host).
    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        let request = agent.request(method, url);
        match &self.token {
            Some(token) if url.starts_with(&format!("{}/", self.endpoint)) => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    fn listing(&self, repo: &str, revision: &str) -> std::result::Result<Listing, Failure> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode(revision, false));
        let response = self.request(&self.agent(5), "GET", &url).call().map_err(|e| failure(&url, repo, e))?;
        let mut body = String::new();
        response.into_reader().take(LISTING_LIMIT).read_to_string(&mut body).map_err(|e| {
            Failure::Refused(Error::input(&url, None, format!("the listing of {repo} could not be read: {e}")))
        })?;
        let listing: Listing = serde_json::from_str(&body).map_err(|e| {
            Failure::Refused(Error::input(&url, None, format!("the listing of {repo} is not the Hub's JSON: {e}")))
        })?;
        if !is_commit(&listing.sha) {
            let message = format!("the listing's sha {:?} is not a 40-digit commit hash", listing.sha);
            return Err(Failure::Refused(Error::input(&url, None, message)));
        }
        Ok(listing)
    }

    /// One file into `snapshots/{commit}/{file}`, unless it is there already.
    fn fetch_file(&self, repo: &str, repo_dir: &Path, commit: &str, file: &Sibling) -> Result<()> {
        let link = repo_dir.join("snapshots").join(commit).join(&file.rfilename);
        if link.is_file() {
            return Ok(());
        }
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, encode(&file.rfilename, true));
        let meta = self.metadata(&url, repo)?;
        if meta.commit.as_deref().is_some_and(|c| c != commit) {
            let message = format!("the Hub answered for commit {:?}, not {commit}", meta.commit.unwrap_or_default());
            return Err(Error::input(&url, None, message));
        }
        let blob = repo_dir.join("blobs").join(&meta.etag);
        if !blob.is_file() {
            if let Some(report) = self.on_download {
                report(&format!("{repo}/{}", file.rfilename), meta.size);
            }
            let locks = self.cache.join(".locks").join(repo_dir.file_name().unwrap_or_default());
            self.download(&meta, &blob, &locks.join(format!("{}.lock", meta.etag)))?;
        }
        link_blob(&link, &blob)
    }

    /// The HEAD request's answer, following relative redirects (renamed repositories) only.
    fn metadata(&self, url: &str, repo: &str) -> Result<Metadata> {
        let agent = self.agent(0);
        let mut current = url.to_string();
        for _ in 0..5 {
            let response = self
                .request(&agent, "HEAD", &current)
                .set("Accept-Encoding", "identity")
                .call()
                .map_err(|e| failure(&current, repo, e).into_error())?;
            let header = |name: &str| response.header(name).map(str::to_string);
            let location = header("Location");
            if (300..400).contains(&response.status()) {
                let Some(location) = &location else {
                    return Err(Error::input(&current, None, "a redirect without a Location header"));
                };
                if location.starts_with('/') {
                    current = format!("{}{location}", origin(&current));
                    continue;
                }
            }
            let etag = header("X-Linked-Etag").or_else(|| header("ETag")).map(|e| clean_etag(&e));
            let etag = etag.filter(|e| is_safe_name(e)).ok_or_else(|| {
                Error::input(&current, None, "no usable ETag (a file name of letters, digits, - and _) in the answer")
            })?;
            let size = header("X-Linked-Size").or_else(|| header("Content-Length")).and_then(|s| s.parse().ok());
            let size = size.ok_or_else(|| Error::input(&current, None, "the answer gives no file size"))?;
            let source = match location {
                Some(location) if (300..400).contains(&response.status()) => location,
                _ => current.clone(),
            };
            return Ok(Metadata { etag, size, commit: header("X-Repo-Commit"), source });
        }
        Err(Error::input(url, None, "more than 5 redirects"))
    }

    /// The bytes of one blob, resumed from a previous `.incomplete` file where there is one.
    fn download(&self, meta: &Metadata, blob: &Path, lock: &Path) -> Result<()> {
        create_dir(blob.parent().unwrap_or(Path::new(".")))?;
        create_dir(lock.parent().unwrap_or(Path::new(".")))?;
        let _lock = FileLock::exclusive(lock)?;
        if blob.is_file() {
            return Ok(()); // another process finished it while this one waited for the lock
        }
        let partial = blob.with_file_name(format!("{}.incomplete", meta.etag));
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let have = if have > meta.size { 0 } else { have };
        if have == meta.size {
            return publish(&partial, blob); // complete before a crash, not yet renamed
        }
        let mut request = self.request(&self.agent(5), "GET", &meta.source);
        if have > 0 {
            request = request.set("Range", &format!("bytes={have}-"));
        }
        let response = request.call().map_err(|e| failure(&meta.source, "", e).into_error())?;
        let resumed = have > 0
            && response.status() == 206
            && response.header("Content-Range").is_some_and(|r| r.starts_with(&format!("bytes {have}-")));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(&partial)
            .map_err(|e| Error::io(&partial, e))?;
        let start = if resumed { have } else { 0 };
        // One byte past the expected size is enough to tell a server that sends too much.
        let mut body = response.into_reader().take(meta.size - start + 1);
        let copied = std::io::copy(&mut body, &mut out);
        let written = start + copied.as_ref().copied().unwrap_or(0);
        let len = out.metadata().map(|m| m.len()).unwrap_or(written);
        if len != meta.size || copied.is_err() {
            let why = copied.err().map(|e| format!(" ({e})")).unwrap_or_default();
            let message = format!(
                "the download stopped at {len} of {} bytes{why}; {} is kept, and the next run resumes it",
                meta.size,
                partial.display()
            );
            if len > meta.size {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::input(&meta.source, None, format!("the server sent more than {} bytes", meta.size)));
            }
            return Err(Error::input(&meta.source, None, message));
        }
        drop(out);
        publish(&partial, blob)
    }
}

/// A complete `.incomplete` file flushed to disk and renamed to its blob name.
fn publish(partial: &Path, blob: &Path) -> Result<()> {
    let file = std::fs::File::open(partial).map_err(|e| Error::io(partial, e))?;
    file.sync_all().map_err(|e| Error::io(partial, e))?;
    std::fs::rename(partial, blob).map_err(|e| Error::io(blob, e))
}

/// The files of a listing that a model directory needs: JSON and text files (configuration, tokenizer,
/// sentence-transformers modules), and the weights as safetensors (`model.safetensors` or its shards), or as
/// `pytorch_model.bin` (or its shards) where the repository has no safetensors. Other formats (ONNX, TF, Flax,
/// OpenVINO, Core ML), hidden files and README are left out. A name that would leave the snapshot directory
/// (`..`, an absolute path) is refused.
pub fn model_files(siblings: &[Sibling]) -> Result<Vec<&Sibling>> {
    for file in siblings {
        if !is_relative_inside(&file.rfilename) {
            let message = format!("the listing names the file {:?}, which is not a path inside it", file.rfilename);
            return Err(Error::input(Path::new("listing"), None, message));
        }
    }
    let names = |pred: fn(&str) -> bool| siblings.iter().any(|s| pred(&s.rfilename));
    let has_safetensors = names(|n| n == "model.safetensors" || n == "model.safetensors.index.json");
    let wanted = |name: &str| {
        let top = name.split('/').next().unwrap_or(name);
        let skipped_dir = ["onnx", "openvino", "coreml", "tf", "flax"].contains(&top) && name.contains('/');
        if skipped_dir || name.split('/').any(|c| c.starts_with('.')) {
            return false;
        }
        let weights = |stem: &str, ext: &str| {
            name == format!("{stem}{ext}")
                || name == format!("{stem}{ext}.index.json")
                || (name.starts_with(&format!("{stem}-")) && name.ends_with(ext) && !name.contains('/'))
        };
        if weights("pytorch_model", ".bin") {
            return !has_safetensors;
        }
        weights("model", ".safetensors") || name.ends_with(".json") || name.ends_with(".txt")
    };
    Ok(siblings.iter().filter(|s| wanted(&s.rfilename)).collect())
}

/// One entry of the Hub's file listing.
#[derive(Clone, Debug, Deserialize)]
pub struct Sibling {
    /// Path inside the repository.
    pub rfilename: String,
}

#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

struct Metadata {
    etag: String,
    size: u64,
    commit: Option<String>,
    /// Where the bytes are: the resolve URL, or the storage URL it redirects to.
    source: String,
}

enum Failure {
    /// No answer at all (connection refused, DNS, timeout): the cache may stand in.
    Unreachable(String),
    /// An answer that says no (404, 401, 403, a 5xx) or a broken one.
    Refused(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Unreachable(why) => Error::input(Path::new("Hub"), None, format!("cannot be reached: {why}")),
            Failure::Refused(e) => e,
        }
    }
}

/// A ureq error as the user should read it: what the Hub's status means for `repo`, with its own message.
fn failure(url: &str, repo: &str, error: ureq::Error) -> Failure {
    let response = match error {
        ureq::Error::Transport(transport) => return Failure::Unreachable(transport.to_string()),
        ureq::Error::Status(_, response) => response,
    };
    let status = response.status();
    let code = response.header("X-Error-Code").unwrap_or_default().to_string();
    let said = response.header("X-Error-Message").map(|m| format!(" (the Hub says: {m})")).unwrap_or_default();
    let meaning = match (status, code.as_str()) {
        (_, "RevisionNotFound") => "no such revision".to_string(),
        (_, "EntryNotFound") => "no such file".to_string(),
        (_, "GatedRepo") => format!("{repo} is gated: accept its terms on the Hub and set HF_TOKEN"),
        (401, _) => format!("no repository {repo}, or it is private: set HF_TOKEN to a token that can read it"),
        (403, _) => format!("the token in use may not read {repo}"),
        (404, _) => "not found".to_string(),
        _ => format!("the Hub answered HTTP {status}"),
    };
    Failure::Refused(Error::input(url, None, format!("HTTP {status}: {meaning}{said}")))
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// Percent-encoding of a path (or one segment when `keep_slash` is false): everything but RFC 3986's unreserved
/// characters.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An ETag without its weak marker and quotes, as huggingface_hub names blobs.
fn clean_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_relative_inside(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && !name.contains('\\') && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A revision becomes a path under refs/: a branch, a tag, `refs/pr/N` or a commit, never `..` or absolute.
fn check_revision(revision: &str) -> Result<()> {
    if is_relative_inside(revision) {
        return Ok(());
    }
    Err(Error::config("--revision", revision, "a branch, tag or commit hash (a relative name without ..)"))
}

fn with_hint(error: Error, hint: &str) -> Error {
    match error {
        Error::Input { path, line, message } => Error::Input { path, line, message: format!("{message}; {hint}") },
        other => other,
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// `link` (a snapshot entry) as a relative symlink to `blob`, published by rename; where symlinks are not
/// available, the blob's bytes are copied instead (as huggingface_hub does on such systems).
fn link_blob(link: &Path, blob: &Path) -> Result<()> {
    let parent = link.parent().unwrap_or(Path::new("."));
    create_dir(parent)?;
    let tmp = crate::atomic_file::temporary_sibling(link, ".link");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    {
        let repo_dir = blob.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let depth = parent.strip_prefix(repo_dir).map(|p| p.components().count()).unwrap_or(0);
        let target: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    #[cfg(not(unix))]
    std::fs::copy(blob, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| Error::io(link, e))
}

/// huggingface_hub's token: `$HF_TOKEN`, else the file `$HF_TOKEN_PATH`, else `token` in `$HF_HOME` (or
/// `~/.cache/huggingface`).
fn token_from_env() -> Option<String> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(token) = var("HF_TOKEN").and_then(|t| t.into_string().ok()) {
        return Some(token.trim().to_string()).filter(|t| !t.is_empty());
    }
    let home = var("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_default()).join(".cache").join("huggingface"));
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(4096).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// An exclusive `flock` on a lock file for as long as it lives (the lock huggingface_hub's `filelock` takes
/// too), so two processes never write one blob.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this struct owns; the lock is released when it is closed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
        }
        Ok(FileLock { _file: file })
    }
}

/// The directory a `--model` value names: `model` itself when it is a path (or does not read as a Hub id),
/// else the snapshot of that Hub id at `revision`, fetched as [`Hub::from_env`] says.
pub fn model_dir(model: &Path, revision: &str) -> Result<PathBuf> {
    model_dir_with(&Hub::from_env(), model, revision)
}

/// [`model_dir`] with explicit settings.
pub fn model_dir_with(hub: &Hub, model: &Path, revision: &str) -> Result<PathBuf> {
    match model.to_str().filter(|id| cache::is_hub_id(id)) {
        Some(id) => hub.snapshot(id, revision),
        None => Ok(model.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn siblings(names: &[&str]) -> Vec<Sibling> {
        names.iter().map(|n| Sibling { rfilename: n.to_string() }).collect()
    }

    fn chosen(names: &[&str]) -> Vec<String> {
        model_files(&siblings(names)).unwrap().into_iter().map(|s| s.rfilename.clone()).collect()
    }

    #[test]
    fn a_model_takes_its_configs_tokenizer_and_one_weight_format() {
        let gpt2 = [
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "merges.txt",
            "vocab.json",
            "tokenizer.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "flax_model.msgpack",
            "rust_model.ot",
            "onnx/decoder_model.onnx",
            "onnx/config.json",
            "64-8bits.tflite",
        ];
        assert_eq!(
            chosen(&gpt2),
            [
                "config.json",
                "generation_config.json",
                "merges.txt",
                "vocab.json",
                "tokenizer.json",
                "model.safetensors"
            ]
        );
        let sharded_bin = [
            "config.json",
            "pytorch_model.bin.index.json",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin",
            "training_args.bin",
            "1_Pooling/config.json",
            "modules.json",
        ];
        assert_eq!(
            chosen(&sharded_bin),
            [
                "config.json",
                "pytorch_model.bin.index.json",
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
                "1_Pooling/config.json",
                "modules.json"
            ]
        );
    }

    #[test]
    fn listing_names_that_leave_the_snapshot_are_refused() {
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b", "", "a\\b"] {
            let error = model_files(&siblings(&["config.json", bad])).unwrap_err().to_string();
            assert!(error.contains("not a path inside"), "{bad}: {error}");
        }
        assert!(check_revision("../x").is_err() && check_revision("refs/pr/1").is_ok());
    }

    #[test]
    fn etags_urls_and_origins() {
        assert_eq!(clean_etag("W/\"abc-12\""), "abc-12");
        assert!(!is_safe_name("../x") && !is_safe_name("") && is_safe_name(&"a".repeat(64)));
        assert_eq!(encode("1_Pooling/con fig.json", true), "1_Pooling/con%20fig.json");
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(origin("http://127.0.0.1:8080/org/x/resolve/main/a"), "http://127.0.0.1:8080");
    }
}
