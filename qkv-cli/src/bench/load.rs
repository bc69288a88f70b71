//! `qkv bench load`: concurrent clients against a running `qkv serve`, over keep-alive HTTP/1.1 on loopback —
//! embeddings (one sentence per request: sentences/s) or completions (tokens/s, from each answer's `usage`),
//! with latency percentiles. A client in Rust, so that on a 2-core host the load generator takes as little of
//! the server's CPU as possible. Bounded by `--requests` per concurrency level.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser)]
pub struct Args {
    /// The server's address (host:port)
    #[arg(long, default_value = "127.0.0.1:8080")]
    address: String,
    #[arg(long, value_enum, default_value = "embeddings")]
    endpoint: Endpoint,
    /// The served model's name
    #[arg(long)]
    model: String,
    /// Concurrent clients, one run per value
    #[arg(long, num_args = 1.., default_values_t = [1, 8, 32])]
    concurrency: Vec<usize>,
    /// Requests per run
    #[arg(long, default_value_t = 1024)]
    requests: usize,
    /// Sentences to embed (a text file, one per line, or a CSV of sentence pairs and a score, as STS-B's);
    /// default: generated sentences
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Completions: the prompt and the tokens each request generates (greedy, so that every run does the same
    /// work)
    #[arg(long, default_value = "The meaning of life is")]
    prompt: String,
    /// Completions: the prompt as token ids instead (for a model directory without a tokenizer)
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Endpoint {
    Embeddings,
    Completions,
}

pub fn run(args: &Args) -> Result<()> {
    let texts = texts(args)?;
    load(args, &texts, 2, 8)?; // warm-up: connections, first batches
    for &c in &args.concurrency {
        println!("{}", load(args, &texts, c, args.requests)?);
    }
    Ok(())
}

/// `requests` requests from `concurrency` clients; their throughput and latencies as JSON.
fn load(args: &Args, texts: &[String], concurrency: usize, requests: usize) -> Result<Value> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(Duration, usize)>> = Mutex::new(Vec::new());
    let refused = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let clients: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut connection = Connection::open(&args.address)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return Ok(());
                        }
                        let (path, body) = request(args, &texts[i % texts.len()]);
                        let start = Instant::now();
                        let (status, answer) = connection.post(path, &body)?;
                        let took = start.elapsed();
                        match status {
                            200 => results.lock().expect("results").push((took, amount(args.endpoint, &answer)?)),
                            503 => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => bail!("{path}: status {status}: {answer}"),
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut results = results.into_inner().expect("results");
    results.sort();
    let amount: usize = results.iter().map(|r| r.1).sum();
    let percentile = |p: f64| {
        let i = ((p * results.len() as f64) as usize).min(results.len().saturating_sub(1));
        results.get(i).map_or(0.0, |r| r.0.as_secs_f64() * 1e3)
    };
    let unit = match args.endpoint {
        Endpoint::Embeddings => "sentences_per_s",
        Endpoint::Completions => "tokens_per_s",
    };
    Ok(json!({
        "concurrency": concurrency,
        "requests": results.len(),
        unit: amount as f64 / elapsed,
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
        "refused": refused.load(Ordering::Relaxed),
    }))
}

fn request(args: &Args, text: &str) -> (&'static str, String) {
    match args.endpoint {
        Endpoint::Embeddings => ("/v1/embeddings", json!({"model": args.model, "input": text}).to_string()),
        Endpoint::Completions => {
            let prompt = match &args.prompt_ids {
                Some(ids) => json!(ids),
                None => json!(args.prompt),
            };
            let body = json!({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0});
            ("/v1/completions", body.to_string())
        }
    }
}

/// Sentences embedded, or tokens generated, by one answer.
fn amount(endpoint: Endpoint, answer: &str) -> Result<usize> {
    let value: Value = serde_json::from_str(answer).context("the answer is not JSON")?;
    Ok(match endpoint {
        Endpoint::Embeddings => value["data"].as_array().map_or(0, Vec::len),
        Endpoint::Completions => value["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
    })
}

fn texts(args: &Args) -> Result<Vec<String>> {
    let Some(path) = &args.texts else {
        return Ok((0..256)
            .map(|i| format!("sentence {i}: a man is playing a guitar on the {} street", i % 7))
            .collect());
    };
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "csv") {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(content.as_bytes());
        for record in reader.records() {
            let record = record.with_context(|| format!("reading {}", path.display()))?;
            out.extend(record.iter().take(2).map(str::to_string));
        }
    } else {
        out.extend(content.lines().map(str::to_string));
    }
    out.retain(|s| !s.trim().is_empty());
    if out.is_empty() {
        bail!("{}: no sentences", path.display());
    }
    Ok(out)
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(address: &str) -> Result<Self> {
        let stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream) })
    }

    /// POSTs `body` and reads the answer (its Content-Length, as the server always sends for JSON).
    fn post(&mut self, path: &str, body: &str) -> Result<(u16, String)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().context("Content-Length")?;
                }
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer)?;
        Ok((status, String::from_utf8_lossy(&answer).into_owned()))
    }
}
