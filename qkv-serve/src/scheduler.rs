//! Continuous batching for completions: every choice of every request in flight is a row of one
//! [`ContinuousBatch`] per GPT-2 model, decoded one token per step on a thread of its own. A request joins
//! between two steps, so it never waits for the others to finish; its rows leave as they end. At most
//! `max_sequences` rows decode together (a request with more choices than that decodes alone); up to `queue`
//! requests may wait for room, one more is answered 503. Each step takes a worker permit, so decoding shares
//! the cores with embedding and translation batches instead of oversubscribing them.
//!
//! A request reads its tokens from a channel of [`Event`]s; when it goes away (the client disconnected, its
//! deadline passed) the channel closes and its rows are dropped before the next step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use qkv::decode::continuous::{ContinuousBatch, SequenceId};
use qkv::decode::generate::{GenerateOptions, StopReason, TokenChoice};
use qkv::inference::{Generator, TextStream};
use tokio::sync::{mpsc, Semaphore};

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::Served;

/// What a request hears about its choices.
#[derive(Debug)]
pub enum Event {
    /// A token of choice `index`, with the text it released (empty while a character or a possible stop string
    /// is incomplete).
    Token { index: usize, text: String, choice: TokenChoice },
    /// Choice `index` ended; `rest` is text held back until the end.
    Done { index: usize, stop: StopReason, generated: usize, rest: String },
    /// The model failed; the request's remaining choices are abandoned.
    Failed(ApiError),
}

/// One choice to generate: its index in the response, prompt and options.
pub struct Sequence {
    pub index: usize,
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
}

struct Job {
    sequences: Vec<Sequence>,
    stops: Vec<String>,
    events: mpsc::UnboundedSender<Event>,
}

/// Sequences accepted and not yet finished, and requests accepted but not yet decoding.
#[derive(Default)]
struct Admission {
    reserved: usize,
    waiting: usize,
}

/// How many rows decode together and how many requests may wait.
#[derive(Debug, Clone, Copy)]
pub struct SchedulePolicy {
    pub max_sequences: usize,
    pub queue: usize,
}

/// The queue in front of one generative model.
#[derive(Clone)]
pub struct Scheduler {
    jobs: mpsc::UnboundedSender<Job>,
    admission: Arc<Mutex<Admission>>,
    policy: SchedulePolicy,
}

impl Scheduler {
    /// Starts the decoding thread of `model` (from inside a tokio runtime, whose handle it keeps to wait for
    /// worker permits).
    pub fn start(model: Arc<Served>, workers: Arc<Semaphore>, metrics: Arc<Metrics>, policy: SchedulePolicy) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let admission = Arc::new(Mutex::new(Admission::default()));
        let runtime = tokio::runtime::Handle::current();
        let state = Decoding { workers, metrics, policy, admission: admission.clone(), runtime };
        std::thread::Builder::new()
            .name("qkv-decode".into())
            .spawn(move || state.run(&model, queue))
            .expect("spawning the decoding thread");
        Self { jobs, admission, policy }
    }

    /// Queues `sequences` (stopping at `stops`) and returns the request's events; 503 when the batch is full and
    /// `queue` requests already wait.
    pub fn submit(
        &self,
        sequences: Vec<Sequence>,
        stops: Vec<String>,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let k = sequences.len();
        {
            let mut admission = self.admission.lock().map_err(|_| ApiError::busy())?;
            let fits = admission.reserved == 0 || admission.reserved + k <= self.policy.max_sequences;
            if !fits && admission.waiting >= self.policy.queue {
                return Err(ApiError::busy());
            }
            admission.reserved += k;
            admission.waiting += 1;
        }
        let (events, receiver) = mpsc::unbounded_channel();
        if self.jobs.send(Job { sequences, stops, events }).is_err() {
            return Err(ApiError::busy());
        }
        Ok(receiver)
    }
}

/// The decoding thread's shared handles.
struct Decoding {
    workers: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    policy: SchedulePolicy,
    admission: Arc<Mutex<Admission>>,
    runtime: tokio::runtime::Handle,
}

/// A row's request side: where its events go and the text it has written.
struct Live<'a> {
    index: usize,
    events: mpsc::UnboundedSender<Event>,
    text: Option<TextStream<'a>>,
}

impl Decoding {
    /// Joins waiting requests when there is room, steps the batch, and repeats; returns when the server is gone
    /// and every row has ended.
    fn run(&self, model: &Served, mut queue: mpsc::UnboundedReceiver<Job>) {
        let Served::Generator(generator) = model else { return };
        let mut batch = ContinuousBatch::new(generator.model());
        let mut live: HashMap<SequenceId, Live> = HashMap::new();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut next_id: SequenceId = 0;
        loop {
            if batch.is_empty() && waiting.is_empty() {
                match queue.blocking_recv() {
                    Some(job) => waiting.push_back(job),
                    None => return,
                }
            }
            while let Ok(job) = queue.try_recv() {
                waiting.push_back(job);
            }
            let Ok(_permit) = self.runtime.block_on(self.workers.clone().acquire_owned()) else { return };
            self.drop_abandoned(&mut batch, &mut live);
            while let Some(job) = waiting.front() {
                let room = batch.is_empty() || batch.len() + job.sequences.len() <= self.policy.max_sequences;
                if !room {
                    break;
                }
                let job = waiting.pop_front().expect("a front job");
                self.join(generator, &mut batch, &mut live, job, &mut next_id);
            }
            // Before the early `continue`: when drop_abandoned empties the batch no step follows, and the gauge
            // would keep the abandoned rows.
            self.metrics.live_sequences.store(batch.len(), Ordering::Relaxed);
            if batch.is_empty() {
                continue;
            }
            self.metrics.decode_steps.fetch_add(1, Ordering::Relaxed);
            self.metrics.decode_batch_size.observe(batch.len() as f64);
            self.step(generator, &mut batch, &mut live);
            self.metrics.live_sequences.store(batch.len(), Ordering::Relaxed);
        }
    }

    /// Prefills a request's prompts and adds its rows.
    fn join<'a>(
        &self,
        generator: &'a Generator,
        batch: &mut ContinuousBatch,
        live: &mut HashMap<SequenceId, Live<'a>>,
        job: Job,
        next_id: &mut SequenceId,
    ) {
        if let Ok(mut admission) = self.admission.lock() {
            admission.waiting -= 1;
        }
        for sequence in job.sequences {
            *next_id += 1;
            let id = *next_id;
            let text = generator.tokenizer().map(|t| TextStream::new(t, &job.stops));
            match batch.join(generator.model(), id, &sequence.prompt, sequence.options) {
                Ok(None) => {
                    live.insert(id, Live { index: sequence.index, events: job.events.clone(), text });
                }
                Ok(Some(stop)) => {
                    let done = Event::Done { index: sequence.index, stop, generated: 0, rest: String::new() };
                    let _ = job.events.send(done);
                    self.release(1);
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(ApiError::from_qkv(e)));
                    self.release(1);
                }
            }
        }
    }

    /// One token for every row; rows that end tell their request.
    fn step(&self, generator: &Generator, batch: &mut ContinuousBatch, live: &mut HashMap<SequenceId, Live>) {
        let finished = batch.step(generator.model(), |id, choice| {
            let Some(row) = live.get_mut(&id) else { return Ok(false) };
            let text = match row.text.as_mut() {
                Some(stream) => stream.push(choice.token)?,
                None => String::new(),
            };
            let sent = row.events.send(Event::Token { index: row.index, text, choice: choice.clone() });
            Ok(sent.is_ok() && !row.text.as_ref().is_some_and(TextStream::stopped))
        });
        let finished = match finished {
            Ok(finished) => finished,
            Err(e) => return self.fail_all(generator, batch, live, ApiError::from_qkv(e)),
        };
        self.metrics.generated_tokens.fetch_add(live.len() as u64, Ordering::Relaxed);
        for done in finished {
            let Some(mut row) = live.remove(&done.id) else { continue };
            let (rest, stopped) = match row.text.as_mut() {
                Some(stream) => (stream.finish(), stream.stopped()),
                None => (String::new(), false),
            };
            let stop = if stopped { StopReason::Caller } else { done.stop };
            let _ = row.events.send(Event::Done { index: row.index, stop, generated: done.generated, rest });
            self.release(1);
        }
    }

    /// Drops the rows whose request went away.
    fn drop_abandoned(&self, batch: &mut ContinuousBatch, live: &mut HashMap<SequenceId, Live>) {
        let gone: Vec<SequenceId> = live.iter().filter(|(_, row)| row.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            live.remove(&id);
            let _ = batch.cancel(id);
            self.release(1);
        }
    }

    /// After a failed step every row is abandoned with the error, and the batch starts afresh.
    fn fail_all(
        &self,
        generator: &Generator,
        batch: &mut ContinuousBatch,
        live: &mut HashMap<SequenceId, Live>,
        error: ApiError,
    ) {
        for (_, row) in live.drain() {
            let _ = row.events.send(Event::Failed(error.clone()));
            self.release(1);
        }
        *batch = ContinuousBatch::new(generator.model());
    }

    fn release(&self, sequences: usize) {
        if let Ok(mut admission) = self.admission.lock() {
            admission.reserved = admission.reserved.saturating_sub(sequences);
        }
    }
}
