//! A Hugging Face Hub on loopback, for the download tests: it answers the requests huggingface_hub and qkv
//! make, with the Hub's headers. `GET /api/models/{repo}/revision/{rev}` lists the commit and files; `HEAD` /
//! `GET /{repo}/resolve/{rev}/{file}` answers small files directly (`ETag`, `X-Repo-Commit`) and large ones
//! (`.bin`, `.safetensors`, as the Hub does for LFS files) with a 302 to `/cdn/{etag}` carrying
//! `X-Linked-Etag` and `X-Linked-Size`; `/cdn/{etag}` honours `Range`. A renamed repository answers with a
//! relative 307 to its new name; a repository with a token answers 401 without it; unknown revisions and files
//! answer 404 with the Hub's `X-Error-Code`. Every request line is recorded.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One repository the fake Hub serves.
#[derive(Clone)]
pub struct Repo {
    pub id: String,
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Requests without `Authorization: Bearer {token}` are answered 401.
    pub token: Option<String>,
    /// Old names that redirect here.
    pub renamed_from: Vec<String>,
}

impl Repo {
    /// Every file under `dir`, by its path relative to it.
    pub fn from_dir(id: &str, commit: &str, dir: &Path) -> Repo {
        let mut files = Vec::new();
        collect(dir, dir, &mut files);
        files.sort();
        Repo { id: id.into(), commit: commit.into(), files, token: None, renamed_from: Vec::new() }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            files.push((name, std::fs::read(&path).unwrap()));
        }
    }
}

/// The blob name the fake Hub gives `bytes` (FNV-1a, 64 bits, written twice: hex like the Hub's).
pub fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{hash:016x}{hash:016x}")
}

fn is_large(name: &str) -> bool {
    name.ends_with(".bin") || name.ends_with(".safetensors")
}

struct State {
    repos: Vec<Repo>,
    base: String,
    cut_once: Mutex<HashSet<String>>,
    requests: Mutex<Vec<String>>,
}

/// The running server; it lives until the test process ends.
pub struct FakeHub {
    pub url: String,
    state: Arc<State>,
}

impl FakeHub {
    pub fn start(repos: Vec<Repo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            repos,
            base: url.clone(),
            cut_once: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(&state, stream));
            }
        });
        FakeHub { url, state }
    }

    /// The next download of `file`'s bytes announces its full length, sends half and closes the connection.
    pub fn cut_short_once(&self, file: &str) {
        self.state.cut_once.lock().unwrap().insert(file.to_string());
    }

    /// The request lines so far (`GET /path`, with `Range: …` appended where one was sent).
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }
}

/// A server that accepts connections and never answers (a stalled Hub).
pub fn start_stalled() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    range: Option<u64>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut authorization, mut range) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.trim().to_string()),
            "range" => range = value.trim().strip_prefix("bytes=")?.trim_end_matches('-').parse().ok(),
            _ => {}
        }
    }
    Some(Request { method, path, authorization, range })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length to announce, when it differs from the body's (a HEAD answer, a cut connection).
    announced: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new(), announced: None }
    }
    fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    fn error(status: u16, code: &str) -> Self {
        Response::new(status).header("X-Error-Code", code).header("X-Error-Message", format!("{code} (fake Hub)"))
    }
}

fn serve(state: &State, mut stream: TcpStream) {
    let Some(request) = read_request(&stream) else { return };
    let range = request.range.map(|r| format!(" Range: bytes={r}-")).unwrap_or_default();
    state.requests.lock().unwrap().push(format!("{} {}{range}", request.method, request.path));
    let response = route(state, &request);
    let reason = match response.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let length = response.announced.unwrap_or(response.body.len());
    let mut head =
        format!("HTTP/1.1 {} {reason}\r\nContent-Length: {length}\r\nConnection: close\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if request.method != "HEAD" {
        let _ = stream.write_all(&response.body);
    }
    let _ = stream.flush();
}

fn route(state: &State, request: &Request) -> Response {
    let path = request.path.split('?').next().unwrap_or_default().replace("%2F", "/");
    if let Some(rest) = path.strip_prefix("/cdn/") {
        return cdn(state, rest, request.range);
    }
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest.to_string()),
        None => (false, path.trim_start_matches('/').to_string()),
    };
    let segments: Vec<&str> = rest.splitn(3, '/').collect();
    if segments.len() < 3 {
        return Response::error(404, "EntryNotFound");
    }
    let id = format!("{}/{}", segments[0], segments[1]);
    if let Some(repo) = state.repos.iter().find(|r| r.renamed_from.contains(&id)) {
        let location = request.path.replacen(&id, &repo.id, 1);
        return Response::new(307).header("Location", location);
    }
    let Some(repo) = state.repos.iter().find(|r| r.id == id) else {
        return Response::error(401, "RepoNotFound");
    };
    if let Some(token) = &repo.token {
        if request.authorization.as_deref() != Some(&format!("Bearer {token}")) {
            return Response::error(401, "GatedRepo");
        }
    }
    let tail = segments[2];
    if api {
        let revision = tail.strip_prefix("revision/").unwrap_or_default();
        return listing(repo, revision);
    }
    let Some((revision, file)) = tail.strip_prefix("resolve/").and_then(|t| t.split_once('/')) else {
        return Response::error(404, "EntryNotFound");
    };
    resolve(state, repo, revision, &file.replace("%20", " "))
}

fn listing(repo: &Repo, revision: &str) -> Response {
    if revision != "main" && revision != repo.commit {
        return Response::error(404, "RevisionNotFound");
    }
    let siblings: Vec<String> =
        repo.files.iter().map(|(name, bytes)| format!("{{\"rfilename\":{name:?},\"size\":{}}}", bytes.len())).collect();
    let body = format!("{{\"id\":{:?},\"sha\":{:?},\"siblings\":[{}]}}", repo.id, repo.commit, siblings.join(","));
    let mut response = Response::new(200).header("Content-Type", "application/json");
    response.body = body.into_bytes();
    response
}

fn resolve(state: &State, repo: &Repo, revision: &str, file: &str) -> Response {
    if revision != "main" && revision != repo.commit {
        return Response::error(404, "RevisionNotFound");
    }
    let Some((_, bytes)) = repo.files.iter().find(|(name, _)| name == file) else {
        return Response::error(404, "EntryNotFound");
    };
    let tag = etag(bytes);
    if is_large(file) {
        return Response::new(302)
            .header("Location", format!("{}/cdn/{tag}", state.base))
            .header("X-Linked-Etag", format!("\"{tag}\""))
            .header("X-Linked-Size", bytes.len())
            .header("ETag", "\"a-git-blob-id-not-the-file\"")
            .header("X-Repo-Commit", &repo.commit);
    }
    let mut response = Response::new(200).header("ETag", format!("W/\"{tag}\"")).header("X-Repo-Commit", &repo.commit);
    response.body = bytes.clone();
    response
}

fn cdn(state: &State, tag: &str, range: Option<u64>) -> Response {
    let found = state.repos.iter().flat_map(|r| &r.files).find(|(_, bytes)| etag(bytes) == tag);
    let Some((name, bytes)) = found else {
        return Response::error(404, "EntryNotFound");
    };
    let start = range.unwrap_or(0).min(bytes.len() as u64) as usize;
    let mut response = match range {
        Some(_) => Response::new(206)
            .header("Content-Range", format!("bytes {start}-{}/{}", bytes.len().saturating_sub(1), bytes.len())),
        None => Response::new(200),
    };
    response.body = bytes[start..].to_vec();
    if state.cut_once.lock().unwrap().remove(name) {
        response.announced = Some(response.body.len());
        response.body.truncate(response.body.len() / 2);
    }
    response
}
