//! A built-in sequence-to-sequence task that needs no data: copy or reverse random digit strings.
//!
//! Reversal is the classic sanity check for an encoder-decoder: the decoder must find, through
//! cross-attention, the source position mirrored to its own, so it only succeeds when masks, positions and
//! attention all work.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::decode::{greedy, DecodeOptions};
use crate::models::{Transformer, TransformerConfig};
use crate::nn::{mode::Rng, seeded_var_builder, Mode};
use crate::train::{cross_entropy, schedule::inverse_sqrt};
use crate::{Error, Result};

const PAD: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;
const FIRST_SYMBOL: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Copy,
    Reverse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyntheticConfig {
    pub task: Task,
    /// Distinct symbols in the sequences.
    pub symbols: u32,
    pub min_len: usize,
    pub max_len: usize,
    pub d_model: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    pub layers: usize,
    pub dropout: f64,
    pub batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Multiplies the paper's learning-rate schedule.
    pub lr_factor: f64,
    pub label_smoothing: f64,
    /// Held-out sequences scored by exact match after training.
    pub eval_size: usize,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            task: Task::Reverse,
            symbols: 10,
            min_len: 3,
            max_len: 8,
            d_model: 64,
            heads: 4,
            ffn_dim: 256,
            layers: 1,
            dropout: 0.0,
            batch_size: 64,
            steps: 800,
            warmup: 100,
            lr_factor: 1.0,
            label_smoothing: 0.0,
            eval_size: 500,
            seed: 0,
        }
    }
}

impl SyntheticConfig {
    fn model(&self) -> TransformerConfig {
        TransformerConfig {
            vocab_size: (FIRST_SYMBOL + self.symbols) as usize,
            d_model: self.d_model,
            encoder_layers: self.layers,
            decoder_layers: self.layers,
            encoder_attention_heads: self.heads,
            decoder_attention_heads: self.heads,
            encoder_ffn_dim: self.ffn_dim,
            decoder_ffn_dim: self.ffn_dim,
            dropout: self.dropout,
            attention_dropout: self.dropout,
            activation_dropout: self.dropout,
            pad_token_id: PAD,
            bos_token_id: BOS,
            eos_token_id: EOS,
            ..TransformerConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(Error::config("min_len", self.min_len, format!("between 1 and max_len = {}", self.max_len)));
        }
        for (option, value) in [
            ("symbols", self.symbols as usize),
            ("batch_size", self.batch_size),
            ("steps", self.steps),
            ("eval_size", self.eval_size),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        Ok(())
    }
}

/// Progress after one optimiser step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub loss: f32,
    pub learning_rate: f64,
    pub tokens_per_second: f64,
}

/// Outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticReport {
    pub steps: usize,
    pub parameters: usize,
    pub final_loss: f32,
    pub train_seconds: f64,
    /// Held-out sequences decoded exactly right, greedily.
    pub exact_match: usize,
    pub evaluated: usize,
    /// A few held-out (source, expected, decoded) triples.
    pub examples: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>,
}

impl SyntheticReport {
    pub fn exact_match_rate(&self) -> f64 {
        self.exact_match as f64 / self.evaluated as f64
    }
}

/// One padded batch: source (B, S), its validity mask, target input behind BOS (B, T) and target output
/// followed by EOS (B·T).
struct Batch {
    src: Tensor,
    src_valid: Tensor,
    tgt_in: Tensor,
    tgt_out: Tensor,
    target_tokens: usize,
}

struct Sampler {
    config: SyntheticConfig,
    rng: Rng,
}

impl Sampler {
    fn sequence(&mut self) -> Vec<u32> {
        let len = self.rng.random_range(self.config.min_len..=self.config.max_len);
        (0..len).map(|_| FIRST_SYMBOL + self.rng.random_range(0..self.config.symbols)).collect()
    }

    fn target(&self, src: &[u32]) -> Vec<u32> {
        match self.config.task {
            Task::Copy => src.to_vec(),
            Task::Reverse => src.iter().rev().copied().collect(),
        }
    }

    fn batch(&mut self, size: usize, device: &Device) -> Result<(Vec<Vec<u32>>, Batch)> {
        let sources: Vec<Vec<u32>> = (0..size).map(|_| self.sequence()).collect();
        let s = sources.iter().map(Vec::len).max().unwrap_or(0);
        let t = s + 1;
        let (mut src, mut valid, mut tgt_in, mut tgt_out) = (vec![], vec![], vec![], vec![]);
        let mut target_tokens = 0;
        for seq in &sources {
            let target = self.target(seq);
            let pad = s - seq.len();
            src.extend(seq.iter().copied().chain(std::iter::repeat_n(PAD, pad)));
            valid.extend(std::iter::repeat_n(1u8, seq.len()).chain(std::iter::repeat_n(0, pad)));
            tgt_in.extend(std::iter::once(BOS).chain(target.iter().copied()).chain(std::iter::repeat_n(PAD, pad)));
            tgt_out.extend(target.iter().copied().chain([EOS]).chain(std::iter::repeat_n(PAD, pad)));
            target_tokens += target.len() + 1;
        }
        let batch = Batch {
            src: Tensor::from_vec(src, (size, s), device)?,
            src_valid: Tensor::from_vec(valid, (size, s), device)?,
            tgt_in: Tensor::from_vec(tgt_in, (size, t), device)?,
            tgt_out: Tensor::from_vec(tgt_out, size * t, device)?,
            target_tokens,
        };
        Ok((sources, batch))
    }
}

/// Trains a fresh encoder-decoder Transformer on the task with teacher forcing, Adam (β₂ = 0.98, ε = 1e-9)
/// and the paper's learning-rate schedule, then decodes held-out sequences greedily. `on_step` sees every
/// step's loss.
pub fn run(config: &SyntheticConfig, mut on_step: impl FnMut(&StepReport)) -> Result<SyntheticReport> {
    config.validate()?;
    let device = Device::Cpu;
    let vars = VarMap::new();
    let model = Transformer::new(&config.model(), seeded_var_builder(&vars, config.seed, DType::F32, &device))?;
    let parameters = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut optimizer =
        AdamW::new(vars.all_vars(), ParamsAdamW { lr: 0.0, beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 })?;
    let mut train_data = Sampler { config: config.clone(), rng: Rng::seed_from_u64(config.seed.wrapping_add(1)) };
    let mut mode = Mode::train(config.seed.wrapping_add(2));
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut final_loss = f32::NAN;
    for step in 1..=config.steps {
        let (_, batch) = train_data.batch(config.batch_size, &device)?;
        let logits = model.forward(&batch.src, &batch.src_valid, &batch.tgt_in, &mut mode)?;
        let logits = logits.flatten_to(1)?; // (B·T, V)
        let loss = cross_entropy(&logits, &batch.tgt_out, Some(PAD), config.label_smoothing)?;
        let learning_rate = config.lr_factor * inverse_sqrt(step, config.d_model, config.warmup, 1.0);
        optimizer.set_learning_rate(learning_rate);
        optimizer.backward_step(&loss)?;
        final_loss = loss.to_scalar::<f32>()?;
        if !final_loss.is_finite() {
            return Err(Error::config(
                "lr_factor",
                config.lr_factor,
                format!("a rate that keeps the loss finite (step {step} gave {final_loss})"),
            ));
        }
        tokens += batch.target_tokens;
        on_step(&StepReport {
            step,
            loss: final_loss,
            learning_rate,
            tokens_per_second: tokens as f64 / start.elapsed().as_secs_f64(),
        });
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let (exact_match, examples) = evaluate(&model, config, &device)?;
    Ok(SyntheticReport {
        steps: config.steps,
        parameters,
        final_loss,
        train_seconds,
        exact_match,
        evaluated: config.eval_size,
        examples,
    })
}

type Example = (Vec<u32>, Vec<u32>, Vec<u32>);

fn evaluate(model: &Transformer, config: &SyntheticConfig, device: &Device) -> Result<(usize, Vec<Example>)> {
    // A generator the training data never drew from.
    let mut held_out = Sampler { config: config.clone(), rng: Rng::seed_from_u64(config.seed ^ 0x5eed_e7a1) };
    let mut exact = 0;
    let mut examples = Vec::new();
    let mut remaining = config.eval_size;
    while remaining > 0 {
        let size = remaining.min(250);
        remaining -= size;
        let (sources, batch) = held_out.batch(size, device)?;
        let options = DecodeOptions { max_len_a: 0.0, max_len_b: config.max_len + 1, ..DecodeOptions::greedy() };
        let decoded = greedy(model, &batch.src, &batch.src_valid, &options)?;
        for (src, got) in sources.into_iter().zip(decoded) {
            let expected = held_out.target(&src);
            exact += usize::from(got == expected);
            if examples.len() < 3 {
                examples.push((src, expected, got));
            }
        }
    }
    Ok((exact, examples))
}
