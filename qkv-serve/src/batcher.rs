//! Dynamic batching for embeddings: requests that arrive together are embedded together. A model's batches run
//! one after another (each already spreads over every core); while one runs, new requests queue, and the next
//! batch takes all of them (up to `batch_size` sentences), so an idle server answers at once and a loaded one
//! computes full batches; under load `batch_wait` holds a batch open a moment for more. Each request gets
//! its own rows back. A batch embeds several times more sentences
//! per second than one sentence at a time (MiniLM on 2 cores: ≈ 600 against ≈ 215, BENCHMARKS.md), so
//! concurrent clients become throughput instead of a queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::Served;

/// Rows of one request, and the tokens they counted.
pub type Embedded = Result<(Vec<Vec<f32>>, usize), ApiError>;

struct Job {
    texts: Vec<String>,
    /// Their tokens (counted, and checked against the limit, by the request's handler).
    tokens: usize,
    reply: oneshot::Sender<Embedded>,
}

/// The queue in front of one embedding model.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    workers: Arc<Semaphore>,
    /// Requests of every endpoint waiting for a worker (shared with the server's other queues).
    waiting: Arc<AtomicUsize>,
    queue: usize,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub batch_size: usize,
    /// Tokens a batch gathers at most (a single larger request still runs, alone).
    pub batch_tokens: usize,
    pub batch_wait: Duration,
    /// Requests that may wait in the queue; one more is answered 503.
    pub queue: usize,
}

impl Batcher {
    /// Starts the batching task for `model` (inside a tokio runtime); batches take a permit of `workers`.
    pub fn start(
        model: Arc<Served>,
        (workers, waiting, metrics): (Arc<Semaphore>, Arc<AtomicUsize>, Arc<Metrics>),
        policy: BatchPolicy,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(policy.queue.max(1));
        tokio::spawn(run(model, (workers.clone(), waiting.clone(), metrics), policy, queue));
        Self { jobs, workers, waiting, queue: policy.queue }
    }

    /// Embeds `texts` (of `tokens` tokens) in whatever batch they land in; 503 when every worker is busy and
    /// `queue` requests wait.
    pub async fn embed(&self, texts: Vec<String>, tokens: usize) -> Embedded {
        let busy = self.workers.available_permits() == 0;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue && busy {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy());
        }
        let (reply, answer) = oneshot::channel();
        if self.jobs.try_send(Job { texts, tokens, reply }).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy());
        }
        answer.await.map_err(|_| ApiError::busy())?
    }
}

async fn run(
    model: Arc<Served>,
    (workers, waiting, metrics): (Arc<Semaphore>, Arc<AtomicUsize>, Arc<Metrics>),
    policy: BatchPolicy,
    mut queue: mpsc::Receiver<Job>,
) {
    // A job taken from the queue that did not fit the last batch: it starts the next one.
    let mut held: Option<Job> = None;
    // Requests in the previous batch: several mean clients are waiting on each other's batches.
    let mut previous = 0;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (mut sentences, mut tokens) = (first.texts.len(), first.tokens);
        let mut jobs = vec![first];
        // Under load, answers go back together and their clients' next requests arrive within a moment: waiting
        // that moment fills the batch (MiniLM at 32 clients: 14 → 27 sentences a batch, 71% → 88% of offline
        // throughput). An idle server answers a lone request at once.
        let wait = if previous > 1 { policy.batch_wait } else { Duration::ZERO };
        let deadline = tokio::time::Instant::now() + wait;
        while sentences < policy.batch_size && tokens < policy.batch_tokens {
            let job = match queue.try_recv() {
                Ok(job) => job,
                Err(_) if wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
            };
            if sentences + job.texts.len() > policy.batch_size || tokens + job.tokens > policy.batch_tokens {
                held = Some(job);
                break;
            }
            sentences += job.texts.len();
            tokens += job.tokens;
            jobs.push(job);
        }
        previous = jobs.len();
        let Ok(permit) = workers.clone().acquire_owned().await else { return };
        waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        let (model, metrics) = (model.clone(), metrics.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            embed_batch(&model, jobs, policy, &metrics);
        });
        // The next batch forms from what queued meanwhile.
        let _ = batch.await;
    }
}

/// Embeds every request's texts in one call (sorted by length inside), and answers each.
fn embed_batch(model: &Served, jobs: Vec<Job>, policy: BatchPolicy, metrics: &Metrics) {
    let Served::Embedder(embedder) = model else { return };
    let all: Vec<&str> = jobs.iter().flat_map(|job| job.texts.iter().map(String::as_str)).collect();
    match embedder.embed_vectors(&all, policy.batch_size.max(1)) {
        Ok(rows) => {
            metrics.embedding_batches.fetch_add(1, Ordering::Relaxed);
            metrics.embedded_sentences.fetch_add(rows.len() as u64, Ordering::Relaxed);
            metrics.embedding_batch_size.observe(rows.len() as f64);
            let mut rows = rows.into_iter();
            for job in jobs {
                let mine: Vec<Vec<f32>> = rows.by_ref().take(job.texts.len()).collect();
                let _ = job.reply.send(Ok((mine, job.tokens)));
            }
        }
        Err(e) => {
            let error = ApiError::from_qkv(e);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
