//! `qkv serve`: qkv's models behind an OpenAI-compatible HTTP API, so the clients written for OpenAI, Hugging
//! Face's text-embeddings-inference and llama.cpp's server work unchanged.
//!
//! Built on tokio and axum (over hyper): the most used async stack in Rust, the one text-embeddings-inference
//! runs on, with graceful shutdown, body limits and server-sent events built in. The server reaches qkv through
//! [`qkv::inference`] (and `qkv::decode` for generation); inference runs off the async threads, at most `workers` computations at a time:
//! embedding requests in dynamic batches (`batcher`), completions in one continuously batched decoding loop
//! per model (`scheduler`), translations one request per worker. A request that finds `queue` others waiting
//! is answered 503 with `Retry-After` instead of queueing without bound; one that runs past `request_timeout`
//! is answered 504 (its generation is cancelled).
//!
//! Endpoints: `POST /v1/embeddings`, `POST /v1/completions` (`stream: true` as server-sent events ending in
//! `data: [DONE]`), `POST /v1/translations` (qkv's own: `input`, `beam`, `alpha`, `max_length`),
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).

pub mod api;
mod base64;
mod batcher;
mod completions;
mod embeddings;
mod metrics;
mod registry;
mod scheduler;
mod translations;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use api::{ApiError, ModelCard, ModelList};
use batcher::{BatchPolicy, Batcher};
use metrics::Metrics;
pub use registry::{Registry, Served};
use scheduler::{SchedulePolicy, Scheduler};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// (name, model directory); the kind of each is detected from its files.
    pub models: Vec<(String, PathBuf)>,
    /// How every model's weight matrices are stored ([`qkv::WeightDtype`]); `None`: each in the dtype its
    /// directory was saved in (f32 unless `qkv convert --dtype`).
    pub dtype: Option<qkv::WeightDtype>,
    pub address: SocketAddr,
    /// Requests to /v1/* must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    /// Inputs (embedding texts, prompts) longer than this many tokens are refused, naming both numbers.
    pub max_input_tokens: usize,
    /// The largest `max_tokens` a completion may ask for.
    pub max_new_tokens: usize,
    /// Requests computed at the same time.
    pub workers: usize,
    /// Requests allowed to wait for a worker; one more is answered 503.
    pub queue: usize,
    /// Sentences an embedding batch gathers from concurrent requests before it runs.
    pub batch_size: usize,
    /// Tokens an embedding batch gathers at most (its memory and latency grow with them).
    pub batch_tokens: usize,
    /// Under load (the previous batch held several requests), how long an embedding batch waits for more
    /// after its first.
    pub batch_wait: std::time::Duration,
    /// Sequences (completion choices) a model decodes together.
    pub max_sequences: usize,
    /// A request not answered within this is answered 504 (a stream ends with an error event).
    pub request_timeout: std::time::Duration,
    /// After shutdown is asked for, requests in flight get this long to finish.
    pub grace_period: std::time::Duration,
    /// Called with true before the models load and false after, on the thread that loads them: the CLI's
    /// allocator then hands what the load frees (f32 copies of packed weights) back to the OS instead of
    /// keeping it mapped.
    pub release_memory: Option<fn(bool)>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            dtype: None,
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_body_bytes: 2 << 20,
            max_input_tokens: 8192,
            max_new_tokens: 2048,
            workers: 2,
            queue: 64,
            batch_size: 32,
            batch_tokens: 16384,
            batch_wait: std::time::Duration::from_millis(5),
            max_sequences: 16,
            request_timeout: std::time::Duration::from_secs(600),
            grace_period: std::time::Duration::from_secs(30),
            release_memory: None,
        }
    }
}

/// What every handler sees.
pub struct AppState {
    pub registry: Registry,
    pub config: ServeConfig,
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    /// One per embedding model, started with the server (they need its runtime).
    batchers: OnceLock<BTreeMap<String, Batcher>>,
    /// One per generative model, likewise.
    schedulers: OnceLock<BTreeMap<String, Scheduler>>,
}

impl AppState {
    pub fn new(registry: Registry, config: ServeConfig) -> Arc<Self> {
        let workers = Arc::new(Semaphore::new(config.workers.max(1)));
        let waiting = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::default());
        let (batchers, schedulers) = (OnceLock::new(), OnceLock::new());
        Arc::new(Self { registry, config, workers, waiting, metrics, batchers, schedulers })
    }

    /// Starts a batcher per embedding model and a decoding loop per generative model (once; inside the runtime).
    fn start_queues(&self) {
        let policy = BatchPolicy {
            batch_size: self.config.batch_size.max(1),
            batch_wait: self.config.batch_wait,
            queue: self.config.queue,
            batch_tokens: self.config.batch_tokens.max(1),
        };
        self.batchers.get_or_init(|| {
            let embedders = self.registry.names().into_iter().filter_map(|name| {
                let model = self.registry.embedder(&name).ok()?;
                let queues = (self.workers.clone(), self.waiting.clone(), self.metrics.clone());
                Some((name, Batcher::start(model, queues, policy)))
            });
            embedders.collect()
        });
        let policy = SchedulePolicy { max_sequences: self.config.max_sequences.max(1), queue: self.config.queue };
        self.schedulers.get_or_init(|| {
            let generators = self.registry.names().into_iter().filter_map(|name| {
                let model = self.registry.generator(&name).ok()?;
                Some((name, Scheduler::start(model, self.workers.clone(), self.metrics.clone(), policy)))
            });
            generators.collect()
        });
    }

    /// The decoding loop of generative model `name`.
    fn scheduler(&self, name: &str) -> Result<&Scheduler, ApiError> {
        self.registry.generator(name)?;
        self.schedulers.get().and_then(|s| s.get(name)).ok_or_else(ApiError::busy)
    }

    /// The batcher of embedding model `name`.
    fn batcher(&self, name: &str) -> Result<&Batcher, ApiError> {
        self.registry.embedder(name)?;
        self.batchers.get().and_then(|b| b.get(name)).ok_or_else(ApiError::busy)
    }

    /// Runs `work` on a blocking thread once a worker is free; 503 when the queue is full.
    async fn compute<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self.admit().await?;
        tokio::task::spawn_blocking(work).await.map_err(ApiError::from_join)?
    }

    /// A worker permit (held for as long as the work, a stream included, runs), or 503 when `queue` requests are
    /// already waiting for one.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.workers.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.config.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy());
        }
        let permit = self.workers.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| ApiError::busy())
    }
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/translations", post(translations::handle))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .fallback(|request: Request| async move { ApiError::not_found(request.uri().path()) })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Loads the models, binds the address and serves until `shutdown` resolves; requests in flight then finish.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let (models, dtype, release) = (config.models.clone(), config.dtype, config.release_memory);
    let load = move || {
        if let Some(release) = release {
            release(true);
        }
        let registry = Registry::load(&models, dtype);
        if let Some(release) = release {
            release(false);
        }
        registry
    };
    let registry = tokio::task::spawn_blocking(load).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let listener =
        tokio::net::TcpListener::bind(config.address).await.map_err(|e| format!("binding {}: {e}", config.address))?;
    serve_on(listener, AppState::new(registry, config), shutdown).await
}

/// Serves `state` on a bound listener (tests bind port 0). Once `shutdown` resolves the listener closes and
/// requests in flight, streams included, get `grace_period` to finish; an error says how many did not.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    state.start_queues();
    let (asked, mut asked_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = asked.send(true);
    };
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(signal);
    let grace = state.config.grace_period;
    let expiry = async move {
        let _ = asked_rx.wait_for(|&asked| asked).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| e.to_string()),
        () = expiry => {
            let left = state.metrics.in_flight.load(Ordering::SeqCst);
            Err(format!("the grace period of {:.0} s ended with {left} request(s) unfinished", grace.as_secs_f64()))
        }
    }
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state
        .registry
        .names()
        .into_iter()
        .map(|id| ModelCard { id, object: "model", created: 0, owned_by: "qkv" })
        .collect();
    Json(ModelList { object: "list", data })
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.render(state.waiting.load(Ordering::Relaxed));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Counts every /v1/* request, those answered with an error, how long each took, and those in flight.
async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = request.uri().path().strip_prefix("/v1/").map(str::to_string);
    let started = std::time::Instant::now();
    let _in_flight = endpoint.as_ref().map(|_| InFlight::enter(&state.metrics));
    let response = next.run(request).await;
    if let Some(endpoint) = endpoint {
        let failed = response.status().is_client_error() || response.status().is_server_error();
        state.metrics.record(&endpoint, failed, started.elapsed());
    }
    response
}

/// A /v1/* request being answered, counted until its handler returns or is dropped (the client went away).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request not answered within `request_timeout` is answered 504 (streams keep their own deadline).
async fn deadline(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(limit).into_response(),
    }
}

/// With an API key configured, /v1/* requests must bring it.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}
