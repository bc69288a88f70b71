//! `qkv serve`: model directories behind an OpenAI-compatible HTTP API (see `qkv_serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv_serve::{serve, ServeConfig};

#[derive(Parser)]
pub struct Args {
    /// A model directory to serve, as NAME=DIR or DIR (named after its folder), or a Hub id in the cache (named
    /// org/name); repeat for several. Its kind
    /// (embeddings, GPT-2, translation) is read from its files
    #[arg(long, required = true)]
    model: Vec<String>,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network)
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from QKV_API_KEY)
    #[arg(long, env = "QKV_API_KEY")]
    api_key: Option<String>,
    /// Largest request body in bytes
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Largest input (a prompt, a text to embed) in tokens
    #[arg(long, default_value_t = ServeConfig::default().max_input_tokens)]
    max_input_tokens: usize,
    /// Largest `max_tokens` a completion may ask for
    #[arg(long, default_value_t = ServeConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Requests computed at once
    #[arg(long, default_value_t = ServeConfig::default().workers)]
    workers: usize,
    /// Requests that may wait for a worker; more are answered 503 with Retry-After
    #[arg(long, default_value_t = ServeConfig::default().queue)]
    queue: usize,
    /// Sentences an embedding batch gathers from concurrent requests
    #[arg(long, default_value_t = ServeConfig::default().batch_size)]
    batch_size: usize,
    /// Tokens an embedding batch gathers at most
    #[arg(long, default_value_t = ServeConfig::default().batch_tokens)]
    batch_tokens: usize,
    /// Under load (the previous batch held several requests), milliseconds an embedding batch waits for more
    /// requests after its first; an idle server answers at once
    #[arg(long, default_value_t = ServeConfig::default().batch_wait.as_millis() as u64)]
    batch_wait_ms: u64,
    /// Completion choices a model decodes together (continuous batching: a new request joins the running
    /// batch at its next step)
    #[arg(long, default_value_t = ServeConfig::default().max_sequences)]
    max_sequences: usize,
    /// Seconds a request may take; later it is answered 504 and its generation cancelled
    #[arg(long, default_value_t = ServeConfig::default().request_timeout.as_secs_f64())]
    request_timeout: f64,
    /// Seconds requests in flight get to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = ServeConfig::default().grace_period.as_secs_f64())]
    grace_period: f64,
}

pub fn run(args: Args) -> Result<()> {
    let mut models = Vec::new();
    for spec in &args.model {
        let (name, dir) = match spec.split_once('=') {
            Some((name, dir)) => (name.to_string(), crate::model_dir::resolve(Path::new(dir))?),
            // A Hub id keeps its whole `org/name` as the model's name, as OpenAI clients pass it.
            None if qkv::hub::cache::is_hub_id(spec) => (spec.clone(), crate::model_dir::resolve(Path::new(spec))?),
            None => {
                let dir = PathBuf::from(spec);
                let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| spec.clone());
                (name, dir)
            }
        };
        if models.iter().any(|(n, _): &(String, PathBuf)| *n == name) {
            bail!("--model {spec}: the name `{name}` is taken; give NAME=DIR");
        }
        models.push((name, dir));
    }
    let config = ServeConfig {
        models,
        dtype: args.precision.dtype,
        address: SocketAddr::new(args.host, args.port),
        api_key: args.api_key,
        max_body_bytes: args.max_body_bytes,
        max_input_tokens: args.max_input_tokens,
        max_new_tokens: args.max_new_tokens,
        workers: args.workers,
        queue: args.queue,
        batch_size: args.batch_size,
        batch_tokens: args.batch_tokens,
        batch_wait: std::time::Duration::from_millis(args.batch_wait_ms),
        max_sequences: args.max_sequences,
        request_timeout: seconds("--request-timeout", args.request_timeout)?,
        grace_period: seconds("--grace-period", args.grace_period)?,
        release_memory: Some(crate::release_freed_memory),
    };
    let address = config.address;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        eprintln!("loading {} model(s); serving on http://{address}", config.models.len());
        serve(config, shutdown_signal()).await.map_err(anyhow::Error::msg)
    })?;
    eprintln!("stopped");
    Ok(())
}

/// A duration given in seconds on the command line.
fn seconds(flag: &str, value: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value).with_context(|| format!("{flag} {value}: expected seconds ≥ 0"))
}

/// Ctrl-C or SIGTERM: stop accepting, let requests in flight finish, then return.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}
