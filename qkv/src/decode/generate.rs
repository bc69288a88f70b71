//! Text generation with a decoder-only model (GPT-2), one token at a time over its key/value cache: greedy
//! decoding or sampling with temperature, top-k and top-p (nucleus), and a repetition penalty — applied in the
//! order of transformers' logits processors (penalty, temperature, top-k, top-p).

use candle_core::{Device, Tensor};
use rand::{Rng as _, SeedableRng};

use super::incremental::argmax;
use crate::device::on_workers;
use crate::models::Gpt2;
use crate::nn::mode::Rng;
use crate::nn::Mode;
use crate::{Error, Result};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate after the prompt (default 50).
    pub max_new_tokens: usize,
    /// Pick the most likely token (transformers' do_sample=False); otherwise sample.
    pub greedy: bool,
    /// Divides the logits before sampling, > 0: below 1 sharpens the distribution, above 1 flattens it (default 1).
    pub temperature: f64,
    /// Sample only among the k most likely tokens (ties with the k-th kept); `None` for no limit.
    pub top_k: Option<usize>,
    /// Nucleus sampling: only the most likely tokens whose probabilities sum to at least p, in (0, 1]; `None`
    /// for no limit.
    pub top_p: Option<f64>,
    /// Values above 1 discourage tokens already in the text (CTRL, Keskar et al. 2019): a positive logit is
    /// divided by it, a negative one multiplied.
    pub repetition_penalty: f64,
    /// Seeds the sampling generator: the same prompt, options and seed give the same tokens.
    pub seed: u64,
    /// Generation stops after this token (it is kept in the output).
    pub eos_token_id: Option<u32>,
    /// Recompute the whole sequence at every step instead of using the cache (slow; for checking).
    pub use_cache: bool,
    /// When the model's context (n_positions) is full, drop the oldest tokens and go on, recomputing the
    /// window (nanoGPT's sampler does this) instead of stopping.
    pub slide: bool,
    /// Report each chosen token's log-probability under the model (before penalty, temperature and
    /// truncation, as OpenAI reports them) and this many most likely alternatives.
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 50,
            greedy: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            eos_token_id: None,
            use_cache: true,
            slide: false,
            logprobs: None,
        }
    }
}

impl GenerateOptions {
    /// Errors naming the option for a non-positive temperature or repetition penalty, `top_k` = 0, `top_p`
    /// outside (0, 1] or too many new tokens.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::config("temperature", self.temperature, "a positive number"));
        }
        if self.top_k == Some(0) {
            return Err(Error::config("top_k", 0, "at least 1"));
        }
        crate::limits::at_most("max_new_tokens", self.max_new_tokens, crate::limits::MAX_OUTPUT_TOKENS)?;
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::config("top_p", p, "a probability in (0, 1]"));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::config("repetition_penalty", self.repetition_penalty, "a positive number"));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// The end-of-text token (`eos_token_id`) was generated; it is kept in the output.
    Eos,
    /// The model's position table (n_positions) is full.
    ContextFull,
    /// `on_token` asked to stop (a stop string was written).
    Caller,
}

impl StopReason {
    /// The name generation output reports it under.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::Eos => "eos",
            StopReason::ContextFull => "n_positions",
            StopReason::Caller => "stop_string",
        }
    }
}

/// A chosen token, with its log-probability and the most likely alternatives when
/// [`GenerateOptions::logprobs`] asks for them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChoice {
    /// The chosen token's id.
    pub token: u32,
    /// Its log-probability under the model (before penalty, temperature and truncation); `None` unless
    /// [`GenerateOptions::logprobs`] asks for it.
    pub logprob: Option<f64>,
    /// (token, log-probability), most likely first.
    pub top: Vec<(u32, f64)>,
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The new tokens, without the prompt.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
}

/// Generates after `prompt`, calling `on_token` with each new token as soon as it is chosen (return false to
/// stop). Returns the new tokens and why generation ended.
pub fn generate(
    model: &Gpt2,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<(Vec<u32>, StopReason)> {
    let mut out = generate_batch(model, &[prompt.to_vec()], options, 0, |_, token| on_token(token))?;
    let Generated { tokens, stop } = out.remove(0);
    Ok((tokens, stop))
}

/// Generates after each of `prompts` at once, as transformers does: the prompts are padded on the left to the
/// longest with `pad_token_id`, each row's positions count from its first real token, padding is masked out of
/// attention, and a row that has stopped is fed padding until all have. `on_token(row, token)` sees each new
/// token as it is chosen (return false to stop that row). Sampling draws from one generator, row by row.
pub fn generate_batch(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    pad_token_id: u32,
    mut on_token: impl FnMut(usize, u32) -> Result<bool>,
) -> Result<Vec<Generated>> {
    generate_batch_choices(model, prompts, options, pad_token_id, |row, choice| on_token(row, choice.token))
}

/// As [`generate_batch`], handing `on_choice` each token with its log-probabilities (when asked for).
pub fn generate_batch_choices(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    pad_token_id: u32,
    mut on_choice: impl FnMut(usize, &TokenChoice) -> Result<bool>,
) -> Result<Vec<Generated>> {
    options.validate()?;
    let limit = model.config().n_positions;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(Error::config("prompt", format!("prompt {i} has no tokens"), "at least one token"));
        }
        if prompt.len() > limit {
            let found = format!("prompt {i} has {} tokens", prompt.len());
            return Err(Error::config("prompt", found, format!("at most n_positions = {limit}")));
        }
    }
    let mut rows = PaddedRows::new(prompts, pad_token_id, model.device());
    let mut contexts: Vec<Vec<u32>> = prompts.to_vec();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut stops: Vec<Option<StopReason>> = vec![None; prompts.len()];
    let mut rng = Rng::seed_from_u64(options.seed);
    let mut cache = model.new_cache();
    let mut logits = last_logits(model, &rows.forward(model, &mut cache, 0)?)?;
    if options.max_new_tokens == 0 {
        stops.fill(Some(StopReason::MaxNewTokens));
    }
    while stops.iter().any(Option::is_none) {
        let mut next = vec![pad_token_id; prompts.len()];
        for (row, stop) in stops.iter_mut().enumerate().filter(|(_, stop)| stop.is_none()) {
            let choice = pick(&mut logits[row], &contexts[row], options, &mut rng)?;
            let token = choice.token;
            contexts[row].push(token);
            generated[row].push(token);
            next[row] = token;
            *stop = if !on_choice(row, &choice)? {
                Some(StopReason::Caller)
            } else if options.eos_token_id == Some(token) {
                Some(StopReason::Eos)
            } else if generated[row].len() == options.max_new_tokens {
                Some(StopReason::MaxNewTokens)
            } else if !options.slide && rows.width() + 1 >= limit {
                Some(StopReason::ContextFull)
            } else {
                None
            };
        }
        if stops.iter().all(Option::is_some) {
            break; // no forward pass for tokens nobody will use
        }
        rows.push(&next);
        let output = if options.slide && rows.width() >= limit {
            rows.keep_last(limit - 1);
            cache = model.new_cache();
            rows.forward(model, &mut cache, 0)?
        } else if options.use_cache {
            rows.forward(model, &mut cache, rows.width() - 1)?
        } else {
            rows.forward(model, &mut model.new_cache(), 0)?
        };
        logits = last_logits(model, &output)?;
    }
    let stops = stops.into_iter().map(|s| s.unwrap_or(StopReason::MaxNewTokens)); // all are set by now
    Ok(generated.into_iter().zip(stops).map(|(tokens, stop)| Generated { tokens, stop }).collect())
}

/// The token, position and validity columns of a left-padded batch, grown by one column per step.
struct PaddedRows {
    ids: Vec<Vec<u32>>,
    positions: Vec<Vec<u32>>,
    valid: Vec<Vec<u32>>,
    device: Device,
}

impl PaddedRows {
    fn new(prompts: &[Vec<u32>], pad_token_id: u32, device: &Device) -> Self {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut rows = Self { ids: vec![], positions: vec![], valid: vec![], device: device.clone() };
        for prompt in prompts {
            let pad = width - prompt.len();
            rows.ids.push([vec![pad_token_id; pad], prompt.clone()].concat());
            rows.positions.push([vec![0; pad], (0..prompt.len() as u32).collect()].concat());
            rows.valid.push([vec![0; pad], vec![1; prompt.len()]].concat());
        }
        rows
    }

    fn width(&self) -> usize {
        self.ids[0].len()
    }

    /// Columns `from..` of `rows` as a (B, width − from) tensor.
    fn matrix(&self, rows: &[Vec<u32>], from: usize) -> Result<Tensor> {
        let data: Vec<u32> = rows.iter().flat_map(|r| r[from..].iter().copied()).collect();
        Ok(Tensor::from_vec(data, (rows.len(), self.width() - from), &self.device)?)
    }

    /// Appends a column: each row's next token (padding for stopped rows) at the row's next position. Like
    /// transformers, the new column is valid in every row.
    fn push(&mut self, next: &[u32]) {
        for (row, &token) in next.iter().enumerate() {
            let position = self.positions[row].last().map_or(0, |p| p + 1);
            self.ids[row].push(token);
            self.positions[row].push(position);
            self.valid[row].push(1);
        }
    }

    /// Drops all but the last `width` columns; positions count again from each row's first remaining token.
    fn keep_last(&mut self, width: usize) {
        let drop = self.width().saturating_sub(width);
        for row in 0..self.ids.len() {
            self.ids[row].drain(..drop);
            self.valid[row].drain(..drop);
            self.positions[row].drain(..drop);
            let mut next = 0;
            for (position, &valid) in self.positions[row].iter_mut().zip(&self.valid[row]) {
                *position = next * valid;
                next += valid;
            }
        }
    }

    /// Hidden states (B, width − from, C) of columns `from..`, whose predecessors `cache` holds (none for
    /// `from` = 0, a fresh cache).
    fn forward(&self, model: &Gpt2, cache: &mut [crate::nn::KvCache], from: usize) -> Result<Tensor> {
        let (ids, positions) = (self.matrix(&self.ids, from)?, self.matrix(&self.positions, from)?);
        let valid = self.matrix(&self.valid, 0)?;
        on_workers(|| model.hidden_step_padded(&ids, &positions, &valid, cache, &mut Mode::Eval))
    }
}

/// Each row's next-token logits, from the hidden states (B, T, C) of its last position, as f64: B × V.
pub(super) fn last_logits(model: &Gpt2, hidden: &Tensor) -> Result<Vec<Vec<f64>>> {
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?.contiguous()?;
    let logits = on_workers(|| model.logits(&last))?; // (B, 1, V)
    let last = logits.squeeze(1)?.to_vec2::<f32>()?;
    Ok(last.into_iter().map(|row| row.into_iter().map(f64::from).collect()).collect())
}

/// The next token after `context` from its `logits` (modified in place), with its log-probabilities when the
/// options ask for them.
pub(super) fn pick(
    logits: &mut [f64],
    context: &[u32],
    options: &GenerateOptions,
    rng: &mut Rng,
) -> Result<TokenChoice> {
    let log_probabilities = options.logprobs.map(|_| log_softmax(logits));
    let token = choose(logits, context, options, rng)?;
    Ok(match (&log_probabilities, options.logprobs) {
        (Some(lp), Some(k)) => TokenChoice { token, logprob: Some(lp[token as usize]), top: top_k(lp, k) },
        _ => TokenChoice { token, logprob: None, top: Vec::new() },
    })
}

/// The next token from `logits` (modified in place by the processors).
fn choose(logits: &mut [f64], context: &[u32], options: &GenerateOptions, rng: &mut Rng) -> Result<u32> {
    apply_repetition_penalty(logits, context, options.repetition_penalty);
    if options.greedy {
        return Ok(argmax(logits) as u32);
    }
    for l in logits.iter_mut() {
        *l /= options.temperature;
    }
    if let Some(k) = options.top_k {
        keep_top_k(logits, k);
    }
    if let Some(p) = options.top_p {
        keep_top_p(logits, p);
    }
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (token, w) in weights.iter().enumerate() {
        if draw < *w {
            return Ok(token as u32);
        }
        draw -= w;
    }
    Ok(argmax(logits) as u32) // rounding left the draw past the end
}

/// log softmax of one row of logits.
fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|l| l - log_total).collect()
}

/// The `k` largest entries of `values` as (index, value), largest first.
fn top_k(values: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.into_iter().take(k).map(|i| (i as u32, values[i])).collect()
}

/// transformers' RepetitionPenaltyLogitsProcessor: every token present in `context` has its logit divided by
/// `penalty` when positive and multiplied by it when negative.
pub fn apply_repetition_penalty(logits: &mut [f64], context: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in context {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    for (l, s) in logits.iter_mut().zip(seen) {
        if s {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Keeps the `k` largest logits (and any tied with the k-th), the rest set to −∞.
pub fn keep_top_k(logits: &mut [f64], k: usize) {
    if k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f64> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    for l in logits.iter_mut() {
        if *l < threshold {
            *l = f64::NEG_INFINITY;
        }
    }
}

/// Nucleus sampling's filter: keeps the most likely tokens whose probabilities sum to at least `p` (always at
/// least one), the rest set to −∞.
pub fn keep_top_p(logits: &mut [f64], p: f64) {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let probs: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut cumulative = 0.0;
    let mut keep = vec![false; logits.len()];
    for &i in &order {
        keep[i] = true;
        cumulative += probs[i] / total;
        if cumulative >= p {
            break;
        }
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f64::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processors_filter_as_described() {
        let mut l = vec![2.0, -1.0, 0.5, 3.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -2.0, 0.5, 3.0]);
        let mut l = vec![1.0, 4.0, 3.0, 2.0];
        keep_top_k(&mut l, 2);
        assert_eq!(l, vec![f64::NEG_INFINITY, 4.0, 3.0, f64::NEG_INFINITY]);
        // Probabilities ∝ e^0, e^1, e^2: 0.09, 0.245, 0.665 — top-p 0.7 keeps the two largest.
        let mut l = vec![0.0, 1.0, 2.0];
        keep_top_p(&mut l, 0.7);
        assert_eq!(l, vec![f64::NEG_INFINITY, 1.0, 2.0]);
        let mut l = vec![0.0, 1.0, 2.0];
        keep_top_p(&mut l, 0.1);
        assert_eq!(l, vec![f64::NEG_INFINITY, f64::NEG_INFINITY, 2.0]);
    }
}
