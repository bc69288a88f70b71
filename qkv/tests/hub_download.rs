//! Hub ids downloaded into huggingface_hub's cache layout, from a fake Hub on loopback (tests/hub_server): the
//! files a model needs and no others, blobs named by ETag with the snapshot's entries relative symlinks into
//! them, refs/{revision} naming the commit; a second resolution downloads nothing; offline or unreachable, the
//! cache alone; a cut download leaves no blob and resumes with `Range`; renamed repositories, tokens, missing
//! revisions, hostile listings and a stalled server end in clear errors. No test reaches the internet.

#![cfg(unix)]

mod hub_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hub_server::{etag, FakeHub, Repo};
use qkv::hub::download::Hub;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch/sentence-transformers")
}

/// The fixture as a Hub repository, with files a model does not need beside it.
fn tiny_repo(id: &str) -> Repo {
    let mut repo = Repo::from_dir(id, COMMIT, &fixture());
    repo.files.push(("onnx/model.onnx".into(), b"not needed".to_vec()));
    repo.files.push((".gitattributes".into(), b"*.bin filter=lfs".to_vec()));
    repo
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-hub-download-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn hub(cache: &Path, endpoint: &str) -> Hub {
    Hub {
        cache: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        timeout: Duration::from_secs(5),
        on_download: None,
    }
}

/// Requests for files (metadata or bytes), as opposed to the listing.
fn file_requests(server: &FakeHub) -> Vec<String> {
    server.requests().into_iter().filter(|r| !r.contains("/api/models/")).collect()
}

#[test]
fn a_download_fills_the_cache_as_huggingface_hub_does_and_is_reused() {
    let server = FakeHub::start(vec![tiny_repo("org/tiny-st")]);
    let cache = scratch("fill");
    let dir = hub(&cache, &server.url).snapshot("org/tiny-st", "main").unwrap();
    let repo_dir = cache.join("models--org--tiny-st");
    assert_eq!(dir, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);

    let served = Repo::from_dir("org/tiny-st", COMMIT, &fixture());
    for (name, bytes) in &served.files {
        let wanted = name.ends_with(".json") || name.ends_with(".txt") || name == "pytorch_model.bin";
        let entry = dir.join(name);
        assert_eq!(entry.exists(), wanted, "{name}");
        if !wanted {
            continue;
        }
        assert_eq!(&std::fs::read(&entry).unwrap(), bytes, "{name}");
        let target = std::fs::read_link(&entry).unwrap();
        let depth = Path::new(name).components().count() + 1;
        let expected: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag(bytes));
        assert_eq!(target, expected, "{name}: the snapshot entry is a relative symlink to its blob");
    }
    assert!(!dir.join("onnx").exists() && !dir.join(".gitattributes").exists());
    let blobs: Vec<String> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(blobs.iter().all(|b| !b.contains('.')), "only complete blobs are left: {blobs:?}");

    server.clear_requests();
    assert_eq!(hub(&cache, &server.url).snapshot("org/tiny-st", "main").unwrap(), dir);
    assert_eq!(file_requests(&server), Vec::<String>::new(), "a filled cache downloads nothing");
    assert_eq!(server.requests().len(), 1, "only the listing is asked for");

    server.clear_requests();
    let mut offline = hub(&cache, &server.url);
    offline.offline = true;
    assert_eq!(offline.snapshot("org/tiny-st", "main").unwrap(), dir);
    assert_eq!(offline.snapshot("org/tiny-st", COMMIT).unwrap(), dir);
    let error = offline.snapshot("org/other", "main").unwrap_err().to_string();
    assert!(error.contains("HF_HUB_OFFLINE") && error.contains("models--org--other/refs/main"), "{error}");
    assert!(server.requests().is_empty(), "offline means no request: {:?}", server.requests());
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_cut_download_leaves_no_blob_and_the_next_run_resumes_it() {
    let server = FakeHub::start(vec![tiny_repo("org/tiny-st")]);
    server.cut_short_once("pytorch_model.bin");
    let cache = scratch("cut");
    let error = hub(&cache, &server.url).snapshot("org/tiny-st", "main").unwrap_err().to_string();
    let weights = std::fs::read(fixture().join("pytorch_model.bin")).unwrap();
    assert!(error.contains(&format!("of {} bytes", weights.len())) && error.contains("resumes"), "{error}");
    let blobs = cache.join("models--org--tiny-st/blobs");
    let tag = etag(&weights);
    assert!(!blobs.join(&tag).exists(), "no blob under its final name");
    let partial = std::fs::metadata(blobs.join(format!("{tag}.incomplete"))).unwrap().len();
    assert!(partial > 0 && partial < weights.len() as u64, "{partial}");
    assert!(!cache.join("models--org--tiny-st/snapshots").join(COMMIT).join("pytorch_model.bin").exists());
    assert!(!cache.join("models--org--tiny-st/refs/main").exists(), "no ref to a snapshot that is not complete");

    server.clear_requests();
    let dir = hub(&cache, &server.url).snapshot("org/tiny-st", "main").unwrap();
    assert_eq!(std::fs::read(dir.join("pytorch_model.bin")).unwrap(), weights);
    let resumed = format!("GET /cdn/{tag} Range: bytes={partial}-");
    assert!(server.requests().contains(&resumed), "{:?}", server.requests());
    assert!(!blobs.join(format!("{tag}.incomplete")).exists());
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn renamed_repositories_tokens_and_revisions() {
    let mut gated = tiny_repo("org/gated");
    gated.token = Some("hf_secret".into());
    let mut renamed = tiny_repo("org/tiny-st");
    renamed.renamed_from = vec!["org/old-name".into()];
    let server = FakeHub::start(vec![renamed, gated]);
    let cache = scratch("names");

    let dir = hub(&cache, &server.url).snapshot("org/old-name", "main").unwrap();
    assert_eq!(dir, cache.join("models--org--old-name/snapshots").join(COMMIT), "cached under the name asked for");
    assert!(dir.join("config.json").is_file());

    let error = hub(&cache, &server.url).snapshot("org/gated", "main").unwrap_err().to_string();
    assert!(error.contains("HTTP 401") && error.contains("HF_TOKEN") && error.contains("org/gated"), "{error}");
    let mut with_token = hub(&cache, &server.url);
    with_token.token = Some("hf_secret".into());
    assert!(with_token.snapshot("org/gated", "main").unwrap().join("pytorch_model.bin").is_file());

    let error = hub(&cache, &server.url).snapshot("org/tiny-st", "v9").unwrap_err().to_string();
    assert!(error.contains("no such revision") && error.contains("/revision/v9"), "{error}");
    let error = hub(&cache, &server.url).snapshot("org/absent", "main").unwrap_err().to_string();
    assert!(error.contains("HTTP 401") && error.contains("org/absent"), "{error}");
    let error = hub(&cache, &server.url).snapshot("org/tiny-st", "../../etc").unwrap_err().to_string();
    assert!(error.contains("--revision"), "{error}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_listing_that_names_files_outside_the_snapshot_is_refused_before_any_download() {
    let mut evil = tiny_repo("org/evil");
    evil.files.push(("../../../escaped.json".into(), b"{}".to_vec()));
    let server = FakeHub::start(vec![evil]);
    let cache = scratch("evil");
    let error = hub(&cache, &server.url).snapshot("org/evil", "main").unwrap_err().to_string();
    assert!(error.contains("escaped.json") && error.contains("not a path inside"), "{error}");
    assert!(file_requests(&server).is_empty());
    assert!(!cache.join("escaped.json").exists() && !std::env::temp_dir().join("escaped.json").exists());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn an_unreachable_or_stalled_hub_falls_back_to_the_cache_or_says_so() {
    let server = FakeHub::start(vec![tiny_repo("org/tiny-st")]);
    let cache = scratch("unreachable");
    let dir = hub(&cache, &server.url).snapshot("org/tiny-st", "main").unwrap();

    // Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
    let refused = "http://127.0.0.1:9";
    assert_eq!(hub(&cache, refused).snapshot("org/tiny-st", "main").unwrap(), dir, "the cache stands in");
    let error = hub(&cache, refused).snapshot("org/other", "main").unwrap_err().to_string();
    assert!(error.contains("cannot be reached") && error.contains("127.0.0.1:9"), "{error}");

    let stalled = hub_server::start_stalled();
    let mut impatient = hub(&scratch("stalled"), &stalled);
    impatient.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let error = impatient.snapshot("org/tiny-st", "main").unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(10), "the timeout ends the wait: {:?}", start.elapsed());
    assert!(error.contains("cannot be reached"), "{error}");
    std::fs::remove_dir_all(&cache).unwrap();
}
