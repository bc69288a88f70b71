//! The server over real HTTP on loopback: each test starts one on port 0 with the committed fixtures (a tiny
//! BERT as the embedding model, a tiny GPT-2 trained by qkv as the generator) and talks to it with a plain
//! HTTP/1.1 client, so what is tested is what a client sees.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use qkv::decode::generate::GenerateOptions;
use qkv::inference::{Embedder, Generator};
use qkv_serve::{serve_on, AppState, Registry, ServeConfig};
use serde_json::{json, Value};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures").join(path)
}

/// A running server; dropping it shuts it down gracefully and waits for it.
struct Server {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    fn start(config: ServeConfig) -> Self {
        Self::start_with(config, Vec::new())
    }

    /// The two fixtures as `emb` and `gpt`, and `extra` models.
    fn start_with(config: ServeConfig, extra: Vec<(String, PathBuf)>) -> Self {
        let mut models =
            vec![("emb".to_string(), fixture("bert/BertModel")), ("gpt".to_string(), fixture("gpt2/qkv-trained"))];
        models.extend(extra);
        let registry = Registry::load(&models, config.dtype).unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let address = std_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(registry, ServeConfig { models, ..config });
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
                serve_on(listener, state, async move {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Self { address, stop: Some(stop), thread: Some(thread) }
    }

    /// Asks for a graceful shutdown and waits until the server has stopped.
    fn shutdown(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap())
    }

    fn request(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut stream = self.send(method, path, body, headers);
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        parse_response(&response)
    }

    fn send(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> TcpStream {
        let mut stream = TcpStream::connect(self.address).unwrap();
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.request("POST", path, &body.to_string(), &[]);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// (status, head, body) of a whole HTTP/1.1 response, its body unchunked.
fn parse_response(response: &str) -> (u16, String, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_string() };
    (status, head.to_string(), body)
}

/// What the library generates after `prompt` with seeds 0..count, sampling as the server does by default.
fn seeded_completions(prompt: &str, max_new_tokens: usize, count: u64) -> Vec<String> {
    let generator = generator();
    let prompt = generator.encode(prompt).unwrap();
    let sampled = |seed: u64| GenerateOptions {
        max_new_tokens,
        seed,
        eos_token_id: generator.eos_token_id(),
        ..GenerateOptions::default()
    };
    (0..count).map(|seed| generator.complete(&prompt, &sampled(seed), &[], |_| Ok(())).unwrap().text.unwrap()).collect()
}

/// The body of a chunked transfer.
fn unchunk(body: &str) -> String {
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// The `data:` payloads of a server-sent event stream.
fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

fn generator() -> Generator {
    Generator::load(&fixture("gpt2/qkv-trained"), &Device::Cpu).unwrap()
}

#[test]
fn every_endpoint_answers_as_openai_does() {
    let server = Server::start(ServeConfig::default());
    let (status, _, body) = server.request("GET", "/health", "", &[]);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = server.request("GET", "/v1/models", "", &[]);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ["emb", "gpt"]
    );

    // Embeddings equal the library's (the same code path: exactly), as floats and as base64.
    let texts = ["the cat sat on the mat", "dogs run", "a"];
    let (status, response) = server.post("/v1/embeddings", &json!({"model": "emb", "input": texts}));
    assert_eq!((status, response["object"].as_str()), (200, Some("list")));
    let direct = Embedder::load(&fixture("bert/BertModel"), &Device::Cpu).unwrap().embed_vectors(&texts, 32).unwrap();
    for (i, row) in direct.iter().enumerate() {
        let got: Vec<f32> =
            response["data"][i]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(response["data"][i]["index"], i);
        assert!(got.iter().zip(row).all(|(a, b)| (a - b).abs() <= 1e-6), "row {i}");
    }
    assert!(response["usage"]["prompt_tokens"].as_u64().unwrap() >= 5);
    let (_, encoded) =
        server.post("/v1/embeddings", &json!({"model": "emb", "input": "dogs run", "encoding_format": "base64"}));
    // 4 bytes per float, 4 base64 characters per 3 bytes.
    assert_eq!(encoded["data"][0]["embedding"].as_str().unwrap().len(), (4 * direct[1].len()).div_ceil(3) * 4);

    // An input longer than the model reads is cut when the request says so, and counted as cut.
    let long = "word ".repeat(60);
    let (status, cut) = server.post("/v1/embeddings", &json!({"model": "emb", "input": long, "truncate": true}));
    assert_eq!((status, cut["usage"]["prompt_tokens"].as_u64()), (200, Some(40)), "{cut}");

    // Token ids, as the model reads them, give the same vector as the text they encode.
    let ids = Embedder::load(&fixture("bert/BertModel"), &Device::Cpu).unwrap().encode("dogs run").unwrap();
    let (status, by_ids) = server.post("/v1/embeddings", &json!({"model": "emb", "input": ids}));
    assert_eq!(status, 200, "{by_ids}");
    let got: Vec<f32> =
        by_ids["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert!(got.iter().zip(&direct[1]).all(|(a, b)| (a - b).abs() <= 1e-6));
    assert_eq!(by_ids["usage"]["prompt_tokens"], ids.len());
    let (_, two) = server.post("/v1/embeddings", &json!({"model": "emb", "input": [ids.clone(), ids]}));
    assert_eq!(two["data"].as_array().unwrap().len(), 2);

    // Greedy completions equal the library's greedy generation; streamed chunks add up to the same text.
    let generator = generator();
    let prompt = generator.encode("First Citizen:").unwrap();
    let options = GenerateOptions {
        max_new_tokens: 12,
        greedy: true,
        eos_token_id: generator.eos_token_id(),
        ..GenerateOptions::default()
    };
    let expected = generator.complete(&prompt, &options, &[], |_| Ok(())).unwrap().text.unwrap();
    let request = json!({"model": "gpt", "prompt": "First Citizen:", "max_tokens": 12, "temperature": 0});
    let (status, whole) = server.post("/v1/completions", &request);
    assert_eq!((status, whole["object"].as_str()), (200, Some("text_completion")));
    assert_eq!(whole["choices"][0]["text"].as_str(), Some(expected.as_str()));
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    assert_eq!(whole["usage"]["prompt_tokens"], prompt.len());
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, head, body) = server.request("POST", "/v1/completions", &streamed.to_string(), &[]);
    assert!(status == 200 && head.contains("text/event-stream"), "{head}");
    let events = events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, expected);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");

    // Log-probabilities: one per generated token, the greedy choice the most likely of its alternatives.
    let with_logprobs =
        json!({"model": "gpt", "prompt": "First Citizen:", "max_tokens": 12, "temperature": 0, "logprobs": 2});
    let (status, scored) = server.post("/v1/completions", &with_logprobs);
    assert_eq!(status, 200, "{scored}");
    let logprobs = &scored["choices"][0]["logprobs"];
    assert_eq!(scored["choices"][0]["text"].as_str(), Some(expected.as_str()));
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 12);
    for (i, lp) in logprobs["token_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = logprobs["top_logprobs"][i].as_object().unwrap();
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
        assert!(
            top.len() <= 2 && lp.as_f64().unwrap() <= 0.0 && (best - lp.as_f64().unwrap()).abs() < 1e-9,
            "{logprobs}"
        );
    }
    assert_eq!(logprobs["text_offset"][0], 0);
    // Streamed, each token's chunk carries its own log-probabilities: together, the same as above.
    let mut streamed_logprobs = with_logprobs.clone();
    streamed_logprobs["stream"] = json!(true);
    let (_, _, body) = server.request("POST", "/v1/completions", &streamed_logprobs.to_string(), &[]);
    let scored_events = crate::events(&body);
    let token_chunks: Vec<Value> = scored_events[..scored_events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| !c["choices"][0]["logprobs"].is_null())
        .collect();
    assert_eq!(token_chunks.len(), 12);
    for (i, chunk) in token_chunks.iter().enumerate() {
        let lp = &chunk["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"][0], logprobs["tokens"][i]);
        assert_eq!(lp["text_offset"][0], logprobs["text_offset"][i]);
        let (a, b) = (lp["token_logprobs"][0].as_f64().unwrap(), logprobs["token_logprobs"][i].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "token {i}: {a} vs {b}");
    }

    // Prompts as ids, echo, several choices, a stop string.
    let ids = json!({"model": "gpt", "prompt": prompt, "max_tokens": 12, "temperature": 0, "echo": true});
    let (_, echoed) = server.post("/v1/completions", &ids);
    assert_eq!(echoed["choices"][0]["text"].as_str().unwrap(), format!("First Citizen:{expected}"));
    let sampled = json!({"model": "gpt", "prompt": ["To be", "or not"], "n": 2, "max_tokens": 5, "seed": 7});
    let (_, four) = server.post("/v1/completions", &sampled);
    assert_eq!(four["choices"].as_array().unwrap().len(), 4);
    let (_, again) = server.post("/v1/completions", &sampled);
    assert_eq!(four["choices"], again["choices"], "a seed makes sampling repeatable");
    let stop: String = expected.chars().skip(3).take(2).collect();
    let cut = expected.find(&stop).unwrap();
    let stopped = json!({"model": "gpt", "prompt": "First Citizen:", "max_tokens": 12, "temperature": 0, "stop": stop});
    let (_, stopped) = server.post("/v1/completions", &stopped);
    assert_eq!(stopped["choices"][0]["text"].as_str(), Some(&expected[..cut]));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
}

/// Every malformed request gets a 4xx with OpenAI's error body naming what was wrong; the server keeps serving.
#[test]
fn bad_requests_get_openai_error_bodies() {
    let server = Server::start(ServeConfig { max_body_bytes: 4096, max_new_tokens: 64, ..ServeConfig::default() });
    let big = format!(r#"{{"model": "emb", "input": "{}"}}"#, "word ".repeat(2000));
    // Longer than the fixture reads (40 positions): refused unless the request asks for truncation.
    let long = format!(r#"{{"model": "emb", "input": "{}"}}"#, "word ".repeat(60));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/v1/embeddings", "{".into(), 400, "body"),
        ("POST", "/v1/embeddings", "".into(), 400, "body"),
        ("POST", "/v1/embeddings", "[1, 2]".into(), 400, "body"),
        ("POST", "/v1/embeddings", r#"{"input": "x"}"#.into(), 400, "model"),
        ("POST", "/v1/embeddings", r#"{"model": "emb"}"#.into(), 400, "input"),
        ("POST", "/v1/embeddings", r#"{"model": "nope", "input": "x"}"#.into(), 404, "model"),
        ("POST", "/v1/embeddings", r#"{"model": "gpt", "input": "x"}"#.into(), 400, "model"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": ""}"#.into(), 400, "input"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": []}"#.into(), 400, "input"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": 7}"#.into(), 400, "input"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": [999999]}"#.into(), 400, "input"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": [[]]}"#.into(), 400, "input"),
        (
            "POST",
            "/v1/embeddings",
            r#"{"model": "emb", "input": "x", "encoding_format": "hex"}"#.into(),
            400,
            "encoding_format",
        ),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": "x", "dimensions": 3}"#.into(), 400, "dimensions"),
        ("POST", "/v1/embeddings", r#"{"model": "emb", "input": "x", "colour": 1}"#.into(), 400, "colour"),
        ("POST", "/v1/completions", r#"{"model": "emb", "prompt": "x"}"#.into(), 400, "model"),
        ("POST", "/v1/completions", r#"{"model": "gpt"}"#.into(), 400, "prompt"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": ""}"#.into(), 400, "prompt"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": [999999]}"#.into(), 400, "prompt"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "max_tokens": 65}"#.into(), 400, "max_tokens"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "max_tokens": -1}"#.into(), 400, "max_tokens"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "temperature": -1}"#.into(), 400, "temperature"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "top_p": 0}"#.into(), 400, "top_p"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "n": 0}"#.into(), 400, "n"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "logprobs": 6}"#.into(), 400, "logprobs"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "n": 17}"#.into(), 400, "n"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "stop": ["", "a"]}"#.into(), 400, "stop"),
        ("POST", "/v1/completions", r#"{"model": "gpt", "prompt": "x", "stream": "yes"}"#.into(), 400, "stream"),
        ("POST", "/v1/embeddings", long, 400, "input"),
        ("POST", "/v1/embeddings", big, 413, ""),
        ("GET", "/v1/nothing", String::new(), 404, ""),
    ];
    assert!(cases.len() >= 25);
    for (method, path, body, status, param) in &cases {
        let (got, _, response) = server.request(method, path, body, &[]);
        assert_eq!(got, *status, "{method} {path} {body:.80}: {response}");
        if *status == 413 {
            continue;
        }
        let error: Value = serde_json::from_str(&response).unwrap_or_else(|_| panic!("{path} {body}: {response}"));
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{response}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{response}");
        if !param.is_empty() {
            assert_eq!(error["error"]["param"], *param, "{body}: {response}");
        }
    }
    // Not UTF-8.
    let raw =
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\xff\xfe\xfd\xfc";
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.write_all(raw).unwrap();
    let mut response = String::new();
    let _ = BufReader::new(stream).read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 400") && response.contains("not UTF-8"), "{response}");
    let (status, _, _) = server.request("GET", "/health", "", &[]);
    assert_eq!(status, 200, "still serving");
}

#[test]
fn an_api_key_is_required_when_set() {
    let server = Server::start(ServeConfig { api_key: Some("sesame".into()), ..ServeConfig::default() });
    let (status, _, body) = server.request("GET", "/v1/models", "", &[]);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, error["error"]["type"].as_str()), (401, Some("authentication_error")));
    let (status, _, _) = server.request("GET", "/v1/models", "", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    let (status, _, _) = server.request("GET", "/v1/models", "", &[("Authorization", "Bearer sesame")]);
    assert_eq!(status, 200);
    assert_eq!(server.request("GET", "/health", "", &[]).0, 200, "health needs no key");
}

/// 64 clients at once — 48 embedding sentences, 16 sampling completions with their own seeds — each get their own
/// answer back, the embeddings computed in shared batches (counted by /metrics).
#[test]
fn concurrent_clients_get_their_own_answers() {
    let batch_wait = std::time::Duration::from_millis(50);
    let server = Arc::new(Server::start(ServeConfig { workers: 2, queue: 128, batch_wait, ..ServeConfig::default() }));
    let embedder = Embedder::load(&fixture("bert/BertModel"), &Device::Cpu).unwrap();
    let texts: Vec<String> = (0..48).map(|i| format!("sentence number {i} about {}", i * 7 % 5)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let direct = embedder.embed_vectors(&refs, 1).unwrap();
    let expected = seeded_completions("To be", 8, 16);
    let (embeddings, completions): (Vec<Vec<f32>>, Vec<String>) = std::thread::scope(|scope| {
        let embedding_clients: Vec<_> = texts
            .iter()
            .map(|text| {
                let server = server.clone();
                scope.spawn(move || {
                    let (status, body) = server.post("/v1/embeddings", &json!({"model": "emb", "input": text}));
                    assert_eq!(status, 200, "{body}");
                    body["data"][0]["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect()
                })
            })
            .collect();
        let completion_clients: Vec<_> = (0..16u64)
            .map(|seed| {
                let server = server.clone();
                scope.spawn(move || {
                    let request = json!({"model": "gpt", "prompt": "To be", "max_tokens": 8, "seed": seed});
                    let (status, body) = server.post("/v1/completions", &request);
                    assert_eq!(status, 200, "{body}");
                    body["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        (
            embedding_clients.into_iter().map(|h| h.join().unwrap()).collect(),
            completion_clients.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    for (i, (got, want)) in embeddings.iter().zip(&direct).enumerate() {
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-5), "client {i}");
    }
    assert_eq!(completions, expected, "each completion is its own seed's");
    let (status, head, metrics) = server.request("GET", "/metrics", "", &[]);
    assert!(status == 200 && head.contains("text/plain"), "{head}");
    assert_eq!(metric(&metrics, "qkv_requests_total{endpoint=\"embeddings\"}"), 48);
    assert_eq!(metric(&metrics, "qkv_requests_total{endpoint=\"completions\"}"), 16);
    assert_eq!(metric(&metrics, "qkv_embedded_sentences_total"), 48);
    let batches = metric(&metrics, "qkv_embedding_batches_total");
    assert!(batches < 24, "48 concurrent requests ran in {batches} batches");
}

/// With the decoding batch full and no room to wait, a request is told to come back (503, Retry-After); a
/// stream in flight when shutdown is asked for still runs to its end.
#[test]
fn a_full_server_says_retry_and_shutdown_finishes_streams() {
    let mut server = Server::start(ServeConfig { max_sequences: 16, queue: 0, ..ServeConfig::default() });
    // Sixteen choices of 48 tokens fill the batch well past the next request.
    let long = json!({"model": "gpt", "prompt": "First", "max_tokens": 48, "n": 16, "seed": 1, "stream": true});
    let stream = server.send("POST", "/v1/completions", &long.to_string(), &[]);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let one_more = json!({"model": "gpt", "prompt": "x", "max_tokens": 2});
    let (status, head, _) = server.request("POST", "/v1/completions", &one_more.to_string(), &[]);
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");

    let (stop, thread) = (server.stop.take().unwrap(), server.thread.take().unwrap());
    stop.send(()).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the stream in flight ran to its end: {rest:.200}");
    let finished = |text: &str| text.matches("\"finish_reason\":\"").count();
    assert_eq!(finished(&rest) + finished(&line), 16, "every choice ended");
    assert_eq!(thread.join().unwrap(), Ok(()));
    assert!(TcpStream::connect(server.address).is_err(), "no longer listening");
}

/// A request that runs past the server's time limit is answered 504 with OpenAI's error body, and its rows leave
/// the decoding batch instead of generating for nobody.
#[test]
fn a_request_past_its_deadline_is_answered_504_and_cancelled() {
    let request_timeout = std::time::Duration::from_millis(1);
    let server = Server::start(ServeConfig { request_timeout, ..ServeConfig::default() });
    let long = json!({"model": "gpt", "prompt": "First", "max_tokens": 60, "n": 16, "seed": 3});
    let (status, body) = server.post("/v1/completions", &long);
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        (body["error"]["type"].as_str(), body["error"]["code"].as_str()),
        (Some("server_error"), Some("timeout"))
    );
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let (status, _, events) = server.request("POST", "/v1/completions", &streamed.to_string(), &[]);
    assert_eq!(status, 200);
    assert!(events.contains("\"code\":\"timeout\"") && !events.contains("[DONE]"), "{events:.300}");
    let started = std::time::Instant::now();
    loop {
        let (_, _, metrics) = server.request("GET", "/metrics", "", &[]);
        let gauge = |name: &str| metric(&metrics, name);
        if gauge("qkv_decoding_sequences") == 0 {
            assert!(gauge("qkv_generated_tokens_total") < 2 * 16 * 60, "the cancelled rows stopped early");
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "rows still decoding: {metrics}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The value of an unlabelled (or fully written) metric.
fn metric(metrics: &str, name: &str) -> u64 {
    let line = metrics.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("{name}: {metrics}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// Shutdown with many requests in flight — queued completions, streams, embeddings — loses none: each is
/// answered in full and correctly, then the server exits cleanly.
#[test]
fn shutdown_with_requests_in_flight_loses_none() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // One row at a time, so that the completions queue and are still running when shutdown is asked for.
    let mut server = Server::start(ServeConfig { max_sequences: 1, queue: 64, ..ServeConfig::default() });
    let expected = seeded_completions("To be", 40, 16);
    let embedder = Embedder::load(&fixture("bert/BertModel"), &Device::Cpu).unwrap();
    let texts: Vec<String> = (0..8).map(|i| format!("request {i} in flight")).collect();
    let direct = embedder.embed_vectors(&texts.iter().map(String::as_str).collect::<Vec<_>>(), 1).unwrap();
    let answered = AtomicUsize::new(0);
    let total = 16 + texts.len();
    let address = server.address;
    let client = |method: &str, body: String| {
        let mut stream = TcpStream::connect(address).unwrap();
        let request = format!(
            "{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        answered.fetch_add(1, Ordering::SeqCst); // the server has this request: its answer has begun
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        parse_response(&(status + &rest))
    };
    std::thread::scope(|scope| {
        let completions: Vec<_> = (0..16u64)
            .map(|seed| {
                let stream = seed % 4 == 0;
                let body = json!({"model": "gpt", "prompt": "To be", "max_tokens": 40, "seed": seed, "stream": stream});
                let client = &client;
                scope.spawn(move || (stream, client("POST /v1/completions", body.to_string())))
            })
            .collect();
        let embeddings: Vec<_> = texts
            .iter()
            .map(|text| {
                let client = &client;
                scope.spawn(move || client("POST /v1/embeddings", json!({"model": "emb", "input": text}).to_string()))
            })
            .collect();
        // Every request is either answering or inside the server (read the clients first: a request can move
        // from the second count to the first, never back).
        let started = std::time::Instant::now();
        loop {
            let begun = answered.load(Ordering::SeqCst);
            let (_, _, metrics) = server.request("GET", "/metrics", "", &[]);
            if begun + metric(&metrics, "qkv_requests_in_flight") as usize == total {
                break;
            }
            assert!(started.elapsed().as_secs() < 30, "requests never all arrived");
        }
        let unanswered = total - answered.load(Ordering::SeqCst);
        assert!(unanswered >= 4, "shutdown should find requests in flight ({unanswered})");
        let _ = server.stop.take().unwrap().send(());
        for (seed, handle) in completions.into_iter().enumerate() {
            let (stream, (status, head, body)) = handle.join().unwrap();
            assert_eq!(status, 200, "completion {seed}: {head}");
            let text = if stream {
                let events = events(&body);
                assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream {seed}");
                let chunks = &events[..events.len() - 1];
                chunks
                    .iter()
                    .map(|e| {
                        serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
                    })
                    .collect()
            } else {
                let value: Value = serde_json::from_str(&body).unwrap();
                value["choices"][0]["text"].as_str().unwrap().to_string()
            };
            assert_eq!(text, expected[seed], "completion {seed}");
        }
        for (i, handle) in embeddings.into_iter().enumerate() {
            let (status, head, body) = handle.join().unwrap();
            assert_eq!(status, 200, "embedding {i}: {head}");
            let value: Value = serde_json::from_str(&body).unwrap();
            let got: Vec<f32> =
                value["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert!(got.iter().zip(&direct[i]).all(|(a, b)| (a - b).abs() <= 1e-5), "embedding {i}");
        }
    });
    assert_eq!(server.thread.take().unwrap().join().unwrap(), Ok(()));
}

/// A translation run directory served as `tr` translates as the library does, greedy and with a beam.
#[test]
fn translations_equal_the_library_s() {
    use qkv::models::TransformerConfig;
    use qkv::train::translation::{LoopSettings, TranslationTrainer, TranslationTraining};
    let dir = std::env::temp_dir().join(format!("qkv-serve-translator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("src.txt"), "the cat sleeps .\na dog runs .\ntwo men play .\n").unwrap();
    std::fs::write(dir.join("tgt.txt"), "die katze schläft .\nein hund rennt .\nzwei männer spielen .\n").unwrap();
    let training = TranslationTraining {
        train_source: dir.join("src.txt"),
        train_target: dir.join("tgt.txt"),
        valid_source: dir.join("src.txt"),
        valid_target: dir.join("tgt.txt"),
        vocab_size: 80,
        max_tokens: 64,
        max_len: 30,
        warmup: 10,
        run: LoopSettings { num_train_epochs: Some(5), ..TranslationTraining::default().run },
        ..TranslationTraining::default()
    };
    let config = TransformerConfig {
        d_model: 16,
        encoder_layers: 1,
        decoder_layers: 1,
        encoder_attention_heads: 2,
        decoder_attention_heads: 2,
        encoder_ffn_dim: 32,
        decoder_ffn_dim: 32,
        ..TransformerConfig::default()
    };
    let mut trainer = TranslationTrainer::create(&dir.join("run"), training, config).unwrap();
    trainer.run(&std::sync::atomic::AtomicBool::new(false), |_| {}).unwrap();
    let server = Server::start_with(ServeConfig::default(), vec![("tr".to_string(), dir.join("run"))]);
    let translator = qkv::inference::Translator::load(&dir.join("run"), &Device::Cpu).unwrap();
    let sentences = vec!["the cat sleeps .".to_string(), "two men play .".to_string()];
    for beam in [1, 3] {
        let request = json!({"model": "tr", "input": sentences, "beam": beam, "alpha": 0.6});
        let (status, response) = server.post("/v1/translations", &request);
        assert_eq!(status, 200, "{response}");
        let options = qkv::decode::DecodeOptions { beam, ..qkv::decode::DecodeOptions::default() };
        let expected = translator.translate(&sentences, &options, 4096).unwrap();
        let got: Vec<&str> = response["data"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(got, expected);
        assert!(response["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    let (status, error) = server.post("/v1/translations", &json!({"model": "tr", "input": "x", "beam": 0}));
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("beam")));
    let (status, _) = server.post("/v1/translations", &json!({"model": "gpt", "input": "x"}));
    assert_eq!(status, 400);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The token budget bounds a batch: with room for one request's tokens, concurrent requests run one per batch.
#[test]
fn the_token_budget_bounds_embedding_batches() {
    let batch_wait = std::time::Duration::from_millis(50);
    let server = Arc::new(Server::start(ServeConfig { batch_tokens: 1, batch_wait, ..ServeConfig::default() }));
    std::thread::scope(|scope| {
        for i in 0..8 {
            let server = server.clone();
            scope.spawn(move || {
                let (status, body) =
                    server.post("/v1/embeddings", &json!({"model": "emb", "input": format!("text {i}")}));
                assert_eq!(status, 200, "{body}");
            });
        }
    });
    let (_, _, metrics) = server.request("GET", "/metrics", "", &[]);
    assert_eq!(metric(&metrics, "qkv_embedding_batches_total"), 8);
    assert_eq!(metric(&metrics, "qkv_embedding_batch_size_count"), 8);
    assert_eq!(metric(&metrics, "qkv_embedding_batch_size_bucket{le=\"1\"}"), 8);
}
