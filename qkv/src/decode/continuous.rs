//! Continuous batching (Orca, Yu et al. 2022): many generations decode together, one token per sequence per
//! step, and a sequence joins or leaves between any two steps instead of waiting for a whole batch to finish.
//! A decoding step of a decoder-only model reads every weight once whatever the batch size, so on a CPU, where a
//! single sequence is limited by memory bandwidth, sixteen sequences cost little more than one.
//!
//! The batch keeps one key/value cache per layer with its rows aligned on the right: every sequence's latest
//! token is in the last column, shorter sequences are padded on the left, and a per-row validity mask keeps the
//! padding out of attention. A newcomer's prompt is run alone (its prefill) and stacked onto the batch; a
//! finished sequence's row is dropped, and columns that have become padding in every row are forgotten, so the
//! width stays the longest live sequence. Each sequence has its own options and its own generator seeded by
//! them: it draws exactly what [`generate`](super::generate::generate) would draw alone.

use candle_core::{Device, Tensor};
use rand::SeedableRng;

use super::generate::{last_logits, pick, GenerateOptions, StopReason, TokenChoice};
use crate::device::on_workers;
use crate::models::Gpt2;
use crate::nn::mode::Rng;
use crate::nn::{KvCache, Mode};
use crate::{Error, Result};

/// The caller's name for a sequence.
pub type SequenceId = u64;

/// One live sequence: a row of the batch.
struct Row {
    id: SequenceId,
    options: GenerateOptions,
    rng: Rng,
    /// Prompt and generated tokens (the repetition penalty looks at them).
    context: Vec<u32>,
    generated: usize,
    /// The row's next-token logits, from the last step.
    logits: Vec<f64>,
    /// Which of the batch's cached columns are this row's tokens (1) rather than padding (0).
    valid: Vec<u32>,
}

impl Row {
    /// Tokens in the row's cache: the position of its next token.
    fn length(&self) -> usize {
        self.context.len()
    }
}

/// Sequences decoding together over one shared key/value cache.
pub struct ContinuousBatch {
    rows: Vec<Row>,
    cache: Vec<KvCache>,
    device: Device,
}

/// A sequence that left the batch, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The caller's name for the sequence, as given when it joined.
    pub id: SequenceId,
    /// Why it stopped.
    pub stop: StopReason,
    /// Tokens generated for it, the stopping EOS included.
    pub generated: usize,
}

impl ContinuousBatch {
    /// An empty batch for `model`, with one key/value cache per block.
    pub fn new(model: &Gpt2) -> Self {
        Self { rows: Vec::new(), cache: model.new_cache(), device: model.device().clone() }
    }

    /// Live sequences.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no sequence is live.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Cached columns: the longest live sequence.
    pub fn width(&self) -> usize {
        self.cache.first().map_or(0, KvCache::len)
    }

    /// Runs `prompt` through the model and adds it to the batch as sequence `id`; its first token is chosen at
    /// the next [`step`](Self::step). Returns the stop reason instead when there is nothing to generate
    /// (`max_new_tokens` = 0). Options the batch cannot honour (no cache, a sliding window) are errors.
    pub fn join(
        &mut self,
        model: &Gpt2,
        id: SequenceId,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Option<StopReason>> {
        options.validate()?;
        if !options.use_cache || options.slide {
            return Err(Error::config("use_cache / slide", "off / on", "the cache and no sliding window"));
        }
        let limit = model.config().n_positions;
        if prompt.is_empty() || prompt.len() > limit {
            let found = format!("{} tokens", prompt.len());
            return Err(Error::config("prompt", found, format!("1 to n_positions = {limit} tokens")));
        }
        if self.rows.iter().any(|row| row.id == id) {
            return Err(Error::config("sequence id", id, "one not already in the batch"));
        }
        if options.max_new_tokens == 0 {
            return Ok(Some(StopReason::MaxNewTokens));
        }
        let (logits, cache) = prefill(model, prompt)?;
        let width = self.width().max(prompt.len());
        for row in &mut self.rows {
            let pad = width - row.valid.len();
            row.valid.splice(0..0, std::iter::repeat_n(0, pad));
        }
        let valid = [vec![0; width - prompt.len()], vec![1; prompt.len()]].concat();
        self.cache =
            self.cache.iter().zip(&cache).map(|(batch, new)| KvCache::stack(&[batch, new])).collect::<Result<_>>()?;
        let rng = Rng::seed_from_u64(options.seed);
        self.rows.push(Row { id, options, rng, context: prompt.to_vec(), generated: 0, logits, valid });
        Ok(None)
    }

    /// Removes sequence `id` (its client went away); false if it is not in the batch.
    pub fn cancel(&mut self, id: SequenceId) -> Result<bool> {
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&i| self.rows[i].id != id).collect();
        let found = keep.len() < self.rows.len();
        if found {
            self.keep(&keep)?;
        }
        Ok(found)
    }

    /// One token for every live sequence: each is chosen from its row's logits and handed to
    /// `on_choice(id, choice)` (return false to stop that sequence, e.g. at a stop string); sequences that end
    /// leave the batch and are returned; the others run one step of the model together.
    pub fn step(
        &mut self,
        model: &Gpt2,
        mut on_choice: impl FnMut(SequenceId, &TokenChoice) -> Result<bool>,
    ) -> Result<Vec<Finished>> {
        let limit = model.config().n_positions;
        let mut finished = Vec::new();
        let mut next = Vec::with_capacity(self.rows.len());
        for row in &mut self.rows {
            let choice = pick(&mut row.logits, &row.context, &row.options, &mut row.rng)?;
            row.generated += 1;
            let stop = if !on_choice(row.id, &choice)? {
                Some(StopReason::Caller)
            } else if row.options.eos_token_id == Some(choice.token) {
                Some(StopReason::Eos)
            } else if row.generated == row.options.max_new_tokens {
                Some(StopReason::MaxNewTokens)
            } else if row.length() + 1 >= limit {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            row.context.push(choice.token);
            match stop {
                Some(stop) => finished.push(Finished { id: row.id, stop, generated: row.generated }),
                None => next.push(choice.token),
            }
        }
        if !finished.is_empty() {
            let keep: Vec<usize> =
                (0..self.rows.len()).filter(|&i| finished.iter().all(|f| f.id != self.rows[i].id)).collect();
            self.keep(&keep)?;
        }
        if !self.rows.is_empty() {
            self.advance(model, &next)?;
        }
        Ok(finished)
    }

    /// Keeps rows `keep` (ascending), then forgets the columns that are padding in all of them.
    fn keep(&mut self, keep: &[usize]) -> Result<()> {
        if keep.is_empty() {
            self.rows.clear();
            self.cache.iter_mut().for_each(|c| *c = KvCache::new());
            return Ok(());
        }
        let sources = keep.iter().map(|&i| i as u32).collect::<Vec<_>>();
        let sources = Tensor::from_vec(sources, keep.len(), &self.device)?;
        for layer in &mut self.cache {
            layer.reorder(&sources)?;
        }
        let rows = std::mem::take(&mut self.rows);
        self.rows = rows.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, row)| row).collect();
        let unused = self.rows.iter().map(|r| r.valid.iter().take_while(|&&v| v == 0).count()).min().unwrap_or(0);
        for layer in &mut self.cache {
            layer.drop_front(unused)?;
        }
        for row in &mut self.rows {
            row.valid.drain(..unused);
        }
        Ok(())
    }

    /// Feeds each row its new token (`next`, in row order) at the row's own position.
    fn advance(&mut self, model: &Gpt2, next: &[u32]) -> Result<()> {
        let (device, b) = (&self.device, self.rows.len());
        let positions: Vec<u32> = self.rows.iter().map(|r| r.length() as u32 - 1).collect();
        for row in &mut self.rows {
            row.valid.push(1);
        }
        let valid: Vec<u32> = self.rows.iter().flat_map(|r| r.valid.iter().copied()).collect();
        let width = self.rows[0].valid.len();
        let ids = Tensor::from_vec(next.to_vec(), (b, 1), device)?;
        let positions = Tensor::from_vec(positions, (b, 1), device)?;
        let key_valid = Tensor::from_vec(valid, (b, width), device)?;
        let cache = &mut self.cache;
        let hidden = on_workers(|| model.hidden_step_padded(&ids, &positions, &key_valid, cache, &mut Mode::Eval))?;
        for (row, logits) in self.rows.iter_mut().zip(last_logits(model, &hidden)?) {
            row.logits = logits;
        }
        Ok(())
    }
}

/// The prompt alone through the model: its last position's logits and its cache.
fn prefill(model: &Gpt2, prompt: &[u32]) -> Result<(Vec<f64>, Vec<KvCache>)> {
    let (mut cache, device, t) = (model.new_cache(), model.device(), prompt.len());
    let ids = Tensor::from_vec(prompt.to_vec(), (1, t), device)?;
    let positions = Tensor::arange(0u32, t as u32, device)?.reshape((1, t))?;
    let valid = Tensor::ones((1, t), candle_core::DType::U32, device)?;
    let hidden = on_workers(|| model.hidden_step_padded(&ids, &positions, &valid, &mut cache, &mut Mode::Eval))?;
    let logits = last_logits(model, &hidden)?.remove(0);
    Ok((logits, cache))
}
