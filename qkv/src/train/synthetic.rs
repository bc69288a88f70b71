//! A built-in sequence-to-sequence task that needs no data: copy or reverse random digit strings.
//!
//! Reversal is the classic sanity check for an encoder-decoder: the decoder must find, through
//! cross-attention, the source position mirrored to its own, so it only succeeds when masks, positions and
//! attention all work.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use super::trainer::{
    Evaluation, Event, LoopSettings, Objective, StepContext, StepRecord, Task as TrainerTask, Trainer, TrainingOptions,
};
use super::AdamWConfig;
use crate::decode::{greedy, DecodeOptions};
use crate::hub::save_parameters;
use crate::models::{PositionEncoding, Transformer, TransformerConfig};
use crate::nn::params::{named_vars, WeightInit};
use crate::nn::{seeded_var_builder, DropoutRates, Mode, NormPosition, Normalization, Projections, Score};
use crate::rng::Rng;
use crate::train::{cross_entropy, schedule::inverse_sqrt};
use crate::{Error, Result};

const PAD: u32 = 0;
const BOS: u32 = 1;
/// The id that ends every target.
pub const EOS: u32 = 2;
const FIRST_SYMBOL: u32 = 3;

/// How an id of the task's vocabulary is written on a plot: `<pad>`, `<s>`, `</s>`, or the symbol's number.
pub fn symbol_label(id: u32) -> String {
    match id {
        PAD => "<pad>".into(),
        BOS => "<s>".into(),
        EOS => "</s>".into(),
        symbol => (symbol - FIRST_SYMBOL).to_string(),
    }
}

/// What the target is of a random source string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The target is the source unchanged.
    Copy,
    /// The target is the source reversed (the default): each output position attends to its mirror image.
    Reverse,
}

/// The task, the model's shape and the training options of a synthetic run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    /// Copy or reverse (default: reverse).
    pub task: Task,
    /// Distinct symbols in the sequences.
    pub symbols: u32,
    /// Shortest string, in symbols (default 3).
    pub min_len: usize,
    /// Longest string trained and evaluated on, in symbols (default 8).
    pub max_len: usize,
    /// Model width C (default 64).
    pub d_model: usize,
    /// H: attention heads per layer (default 4).
    pub heads: usize,
    /// Inner width of each feed-forward network (default 256).
    pub ffn_dim: usize,
    /// Layers in the encoder and, as many, in the decoder (default 1).
    pub layers: usize,
    /// Dropout at every place the paper puts it, in [0, 1) (default 0); `dropout_rates` sets each place apart.
    pub dropout: f64,
    /// Sequences per batch, drawn afresh for every batch from the task's generator.
    pub batch_size: usize,
    /// Steps of the paper's linear learning-rate warm-up before its inverse-square-root decay (default 100).
    pub warmup: usize,
    /// Multiplies the paper's learning-rate schedule.
    pub lr_factor: f64,
    /// Label smoothing ε of the cross-entropy (default 0; the paper: 0.1).
    pub label_smoothing: f64,
    /// Held-out sequences scored by exact match after training.
    pub eval_size: usize,
    /// The attention variant of every block (`qkv study` compares them; the paper's by default).
    pub attention_score: Score,
    /// Which of W_Q, W_K, W_V every attention block has (default: all three, separate).
    pub attention_projections: Projections,
    /// Width of each head; absent for d_model / heads.
    pub head_dim: Option<usize>,
    /// How the model knows positions (`qkv study positions` compares them). Left out of the serialized
    /// config at its default, as are the two fields below, so configs written before they existed read the same.
    #[serde(skip_serializing_if = "is_sinusoidal")]
    pub position_encoding: PositionEncoding,
    /// Shaw et al.'s clipping distance k, for `position_encoding = relative`.
    #[serde(skip_serializing_if = "is_default_clip")]
    pub relative_max_distance: usize,
    /// The output projection is the target embedding (a complex embedding needs `false`).
    #[serde(skip_serializing_if = "is_true")]
    pub tie_word_embeddings: bool,
    /// Multiply the embeddings by √d_model (`qkv study embeddings` compares it with not).
    #[serde(skip_serializing_if = "is_true")]
    pub scale_embedding: bool,
    /// How the embedding table is drawn; absent for the model's rule (see [`TransformerConfig::embedding_init`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_init: Option<WeightInit>,
    /// One embedding matrix for source and target (the paper); `false` gives each its own.
    #[serde(skip_serializing_if = "is_true")]
    pub share_encoder_decoder_embeddings: bool,
    /// Where LayerNorm sits (`qkv study norms` compares them).
    #[serde(skip_serializing_if = "is_post")]
    pub norm_position: NormPosition,
    /// LayerNorm or BatchNorm (`qkv study norms` compares them); BatchNorm needs `shards = 1`.
    #[serde(skip_serializing_if = "is_layer_norm")]
    pub normalization: Normalization,
    /// Residual connections around every sub-layer (`qkv study residuals` removes them).
    #[serde(skip_serializing_if = "is_true")]
    pub residual_connections: bool,
    /// The learning rate rises linearly to its peak over `warmup` steps (the paper); `false` holds the peak
    /// from the first step instead, with the same decay after `warmup`: warm-up's ramp alone switched off.
    #[serde(skip_serializing_if = "is_true")]
    pub warmup_ramp: bool,
    /// Dropout per place and its scaling, instead of `dropout` everywhere (`qkv study dropout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout_rates: Option<DropoutRates>,
    /// Train on a fixed pool of this many strings (drawn once from the seed) instead of fresh ones for every
    /// batch, so that a model can overfit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_size: Option<usize>,
    /// After training, also score held-out strings of max_len + 1 ..= this length, which training never
    /// showed: how a position encoding extrapolates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrapolation_max_len: Option<usize>,
    /// The loop: `max_steps` steps (800 by default), Adam with β₂ = 0.98, ε = 1e-9, no decay, no clipping.
    #[serde(flatten)]
    pub run: LoopSettings,
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
            warmup: 100,
            lr_factor: 1.0,
            label_smoothing: 0.0,
            eval_size: 500,
            attention_score: Score::ScaledDot,
            attention_projections: Projections::Separate,
            head_dim: None,
            position_encoding: PositionEncoding::Sinusoidal,
            relative_max_distance: DEFAULT_CLIP,
            tie_word_embeddings: true,
            scale_embedding: true,
            embedding_init: None,
            share_encoder_decoder_embeddings: true,
            norm_position: NormPosition::Post,
            normalization: Normalization::LayerNorm,
            residual_connections: true,
            warmup_ramp: true,
            dropout_rates: None,
            train_size: None,
            extrapolation_max_len: None,
            run: LoopSettings {
                num_train_epochs: None,
                max_steps: Some(800),
                adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 },
                max_grad_norm: None,
                seed: 0,
                ..LoopSettings::default()
            },
        }
    }
}

impl SyntheticConfig {
    /// The model the task trains.
    pub fn model(&self) -> TransformerConfig {
        let rates = self.dropout_rates.unwrap_or(DropoutRates::uniform(self.dropout));
        TransformerConfig {
            vocab_size: (FIRST_SYMBOL + self.symbols) as usize,
            d_model: self.d_model,
            encoder_layers: self.layers,
            decoder_layers: self.layers,
            encoder_attention_heads: self.heads,
            decoder_attention_heads: self.heads,
            encoder_ffn_dim: self.ffn_dim,
            decoder_ffn_dim: self.ffn_dim,
            dropout: rates.residual,
            embedding_dropout: Some(rates.embedding),
            attention_dropout: rates.attention,
            activation_dropout: rates.activation,
            dropout_scaling: rates.scaling,
            pad_token_id: PAD,
            bos_token_id: BOS,
            eos_token_id: EOS,
            attention_score: self.attention_score,
            attention_projections: self.attention_projections,
            head_dim: self.head_dim,
            position_encoding: self.position_encoding,
            relative_max_distance: self.relative_max_distance,
            norm_position: self.norm_position,
            normalization: self.normalization,
            residual_connections: self.residual_connections,
            tie_word_embeddings: self.tie_word_embeddings,
            scale_embedding: self.scale_embedding,
            embedding_init: self.embedding_init,
            share_encoder_decoder_embeddings: self.share_encoder_decoder_embeddings,
            // Learned tables long enough for the longest string scored, its EOS and the target's BOS.
            max_position_embeddings: self.extrapolation_max_len.unwrap_or(self.max_len).max(self.max_len) + 2,
            ..TransformerConfig::default()
        }
    }
}

fn is_sinusoidal(encoding: &PositionEncoding) -> bool {
    *encoding == PositionEncoding::Sinusoidal
}

/// [`TransformerConfig`]'s default clipping distance.
const DEFAULT_CLIP: usize = 16;

fn is_default_clip(k: &usize) -> bool {
    *k == DEFAULT_CLIP
}

fn is_post(position: &NormPosition) -> bool {
    *position == NormPosition::Post
}

fn is_layer_norm(normalization: &Normalization) -> bool {
    *normalization == Normalization::LayerNorm
}

fn is_true(value: &bool) -> bool {
    *value
}

impl SyntheticConfig {
    /// The held-out strings longer than training's, when [`Self::extrapolation_max_len`] asks for them.
    fn longer(&self) -> Option<SyntheticConfig> {
        let max_len = self.extrapolation_max_len.filter(|&n| n > self.max_len)?;
        Some(SyntheticConfig { min_len: self.max_len + 1, max_len, ..self.clone() })
    }
}

impl TrainingOptions for SyntheticConfig {
    fn loop_settings(&self) -> &LoopSettings {
        &self.run
    }

    fn loop_settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.run
    }

    fn validate(&self) -> Result<()> {
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(Error::config("min_len", self.min_len, format!("between 1 and max_len = {}", self.max_len)));
        }
        if let Some(longer) = self.extrapolation_max_len.filter(|&n| n <= self.max_len) {
            return Err(Error::config("extrapolation_max_len", longer, format!("> max_len = {}", self.max_len)));
        }
        self.run.check_normalization(self.normalization)?;
        let train_size = self.train_size.unwrap_or(1);
        for (option, value) in [
            ("symbols", self.symbols as usize),
            ("batch_size", self.batch_size),
            ("eval_size", self.eval_size),
            ("train_size", train_size),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        Ok(())
    }
}

/// Outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticReport {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Trainable parameters (scalars) of the model.
    pub parameters: usize,
    /// Training loss of the last step (NaN if no step was taken).
    pub final_loss: f64,
    /// Wall-clock seconds of the training loop, its evaluations included.
    pub train_seconds: f64,
    /// Held-out sequences decoded exactly right, greedily.
    pub exact_match: usize,
    /// Held-out sequences decoded (`eval_size`).
    pub evaluated: usize,
    /// A few held-out (source, expected, decoded) triples.
    pub examples: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>,
    /// Exact-match rate on strings longer than any trained on (see
    /// [`SyntheticConfig::extrapolation_max_len`]).
    pub longer_exact_match: Option<f64>,
}

impl SyntheticReport {
    /// The share of held-out sequences decoded exactly right, in [0, 1].
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
    /// The fixed training strings of [`SyntheticConfig::train_size`], or none for fresh draws.
    pool: Option<Arc<Vec<Vec<u32>>>>,
}

impl Sampler {
    fn sequence(&mut self) -> Vec<u32> {
        if let Some(pool) = &self.pool {
            return pool[self.rng.random_range(0..pool.len())].clone();
        }
        self.fresh()
    }

    fn fresh(&mut self) -> Vec<u32> {
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

/// The synthetic task of the shared [`Trainer`]: every batch is drawn afresh from the task's generator, so an
/// "epoch" is just the run's `max_steps` batches.
pub struct SyntheticTask {
    config: SyntheticConfig,
    model: Transformer,
    vars: Vec<(String, Var)>,
    device: Device,
    /// The last evaluation's exact matches and examples, which [`run`] reports instead of decoding again.
    last_evaluation: Mutex<Option<(usize, Vec<Example>)>>,
    pool: Option<Arc<Vec<Vec<u32>>>>,
}

impl Objective for SyntheticTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, batch: &[usize], context: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let mut sampler = Sampler { config: self.config.clone(), rng: context.rng.clone(), pool: self.pool.clone() };
        let (_, batch) = sampler.batch(batch.len(), &self.device)?;
        *context.rng = sampler.rng;
        let logits = self.model.forward(&batch.src, &batch.src_valid, &batch.tgt_in, mode)?;
        let logits = logits.flatten_to(1)?; // (B·T, V)
        let loss = cross_entropy(&logits, &batch.tgt_out, Some(PAD), self.config.label_smoothing)?;
        Ok((loss, batch.target_tokens))
    }
}

impl TrainerTask for SyntheticTask {
    type Training = SyntheticConfig;
    type Start = ();

    fn create(config: SyntheticConfig, _: ()) -> Result<Self> {
        let device = config.run.device.device()?;
        let vars = VarMap::new();
        let model = Transformer::new(&config.model(), seeded_var_builder(&vars, config.run.seed, DType::F32, &device))?;
        let pool = config.train_size.map(|size| {
            let mut drawer =
                Sampler { config: config.clone(), rng: Rng::seed_from_u64(config.run.seed ^ 0x9001), pool: None };
            Arc::new((0..size).map(|_| drawer.fresh()).collect())
        });
        Ok(Self { config, model, vars: named_vars(&vars), device, last_evaluation: Mutex::new(None), pool })
    }

    fn reopen(_: &Path, config: SyntheticConfig) -> Result<Self> {
        Self::create(config, ())
    }

    fn training(&self) -> &SyntheticConfig {
        &self.config
    }

    /// `max_steps` batches of `batch_size` placeholders: the sequences themselves are drawn in the loss.
    fn epoch_batches(&self, _: usize) -> Result<Vec<Vec<usize>>> {
        let steps = self.config.run.max_steps.unwrap_or(1) * self.config.run.gradient_accumulation_steps;
        Ok(vec![(0..self.config.batch_size).collect(); steps])
    }

    fn learning_rate(&self, step: usize) -> f64 {
        // Without the ramp every step before `warmup` gets the peak.
        let step = if self.config.warmup_ramp { step } else { step.max(self.config.warmup) };
        self.config.lr_factor * inverse_sqrt(step, self.config.d_model, self.config.warmup, 1.0)
    }

    /// Held-out exact match (greedy) as `exact_match`; no validation loss (NaN).
    fn evaluate(&self) -> Result<Evaluation> {
        let (exact, examples) = evaluate(&self.model, &self.config, &self.device)?;
        *self
            .last_evaluation
            .lock()
            .map_err(|_| Error::config("evaluation", "poisoned", "one evaluation at a time"))? =
            Some((exact, examples));
        let rate = exact as f64 / self.config.eval_size as f64;
        Ok(Evaluation { val_loss: f64::NAN, metrics: [("exact_match".to_string(), rate)].into() })
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        save_parameters(&self.vars, &dir.join("model.safetensors"))
    }
}

/// Trains a fresh encoder-decoder Transformer on the task with teacher forcing, Adam and the paper's
/// learning-rate schedule on the shared loop (in memory), then decodes held-out sequences greedily.
/// `on_step` sees every step.
pub fn run(config: &SyntheticConfig, on_step: impl FnMut(&StepRecord)) -> Result<SyntheticReport> {
    Ok(train(config, on_step)?.0)
}

/// As [`run`], also returning the trained model (for measurements on it, such as attention statistics).
pub fn train(config: &SyntheticConfig, mut on_step: impl FnMut(&StepRecord)) -> Result<(SyntheticReport, Transformer)> {
    let mut trainer = Trainer::<SyntheticTask>::in_memory(config.clone(), ())?;
    let parameters = trainer.task().vars.iter().map(|(_, v)| v.elem_count()).sum();
    let start = Instant::now();
    let mut final_loss = f64::NAN;
    trainer.run(&AtomicBool::new(false), |event| {
        if let Event::Step(record) = event {
            final_loss = record.loss;
            on_step(record);
        }
    })?;
    let train_seconds = start.elapsed().as_secs_f64();
    let steps = trainer.state().step;
    let task = trainer.into_task();
    // The trainer evaluated the final model after its last step; decoding the held-out set again would repeat it.
    let last = task.last_evaluation.into_inner().ok().flatten();
    let (exact_match, examples) = match last {
        Some(evaluation) => evaluation,
        None => evaluate(&task.model, config, &task.device)?,
    };
    let longer_exact_match = match config.longer() {
        Some(longer) => Some(evaluate(&task.model, &longer, &task.device)?.0 as f64 / longer.eval_size as f64),
        None => None,
    };
    let report = SyntheticReport {
        steps,
        parameters,
        final_loss,
        train_seconds,
        exact_match,
        evaluated: config.eval_size,
        examples,
        longer_exact_match,
    };
    Ok((report, task.model))
}

/// The gradient norm of each layer's parameters at initialisation, from one training batch of the task (the
/// first its seed draws): `("encoder 1", ‖g‖)` … `("decoder N", ‖g‖)`, bottom to top of each stack. Whether the
/// gradient still reaches the bottom of a deep stack is what residual connections and LayerNorm's place decide.
pub fn gradient_norms_at_init(config: &SyntheticConfig) -> Result<Vec<(String, f64)>> {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let model = Transformer::new(&config.model(), seeded_var_builder(&vars, config.run.seed, DType::F32, &device))?;
    let mut sampler = Sampler { config: config.clone(), rng: Rng::seed_from_u64(config.run.seed), pool: None };
    let (_, batch) = sampler.batch(config.batch_size, &device)?;
    let logits = model.forward(&batch.src, &batch.src_valid, &batch.tgt_in, &mut Mode::train(config.run.seed))?;
    let loss = cross_entropy(&logits.flatten_to(1)?, &batch.tgt_out, Some(PAD), config.label_smoothing)?;
    let grads = loss.backward()?;
    let named = named_vars(&vars);
    let mut norms = Vec::new();
    for stack in ["encoder", "decoder"] {
        for layer in 0..config.layers {
            let prefix = format!("{stack}.layers.{layer}.");
            let mut squares = 0f64;
            for (_, var) in named.iter().filter(|(name, _)| name.starts_with(&prefix)) {
                if let Some(g) = grads.get(var) {
                    squares += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                }
            }
            norms.push((format!("{stack} {}", layer + 1), squares.sqrt()));
        }
    }
    Ok(norms)
}

/// `size` held-out sequences (from the generator evaluation uses, never the training draws) as a
/// teacher-forcing batch: sources (B, S), their validity (B, S) as u8, target inputs behind BOS (B, T).
pub fn held_out_batch(config: &SyntheticConfig, size: usize, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, batch) = held_out_sampler(config).batch(size, device)?;
    Ok((batch.src, batch.src_valid, batch.tgt_in))
}

/// A generator the training data never drew from.
fn held_out_sampler(config: &SyntheticConfig) -> Sampler {
    Sampler { config: config.clone(), rng: Rng::seed_from_u64(config.run.seed ^ 0x5eed_e7a1), pool: None }
}

type Example = (Vec<u32>, Vec<u32>, Vec<u32>);

fn evaluate(model: &Transformer, config: &SyntheticConfig, device: &Device) -> Result<(usize, Vec<Example>)> {
    let mut held_out = held_out_sampler(config);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `qkv study` keys its kept runs by the serialized config: options added later must not appear in it at
    /// their defaults, or every run kept before them would be trained again.
    #[test]
    fn options_at_their_defaults_leave_the_serialized_config_as_it_was() {
        let json = serde_json::to_string(&SyntheticConfig::default()).unwrap();
        for field in [
            "position_encoding",
            "relative_max_distance",
            "tie_word_embeddings",
            "norm_position",
            "normalization",
            "residual_connections",
            "warmup_ramp",
            "dropout_rates",
            "train_size",
            "extrapolation_max_len",
            "scale_embedding",
            "embedding_init",
            "share_encoder_decoder_embeddings",
        ] {
            assert!(!json.contains(field), "{field} in {json}");
        }
        let changed = SyntheticConfig { warmup_ramp: false, train_size: Some(5), ..SyntheticConfig::default() };
        let json = serde_json::to_string(&changed).unwrap();
        assert!(json.contains("\"warmup_ramp\":false") && json.contains("\"train_size\":5"), "{json}");
        let back: SyntheticConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, changed);
    }

    /// With a pool every training string comes from it; without one they are fresh draws.
    #[test]
    fn a_training_pool_is_drawn_once_and_sampled_from() {
        let config = SyntheticConfig { train_size: Some(3), ..SyntheticConfig::default() };
        let task = SyntheticTask::create(config.clone(), ()).unwrap();
        let pool = task.pool.clone().unwrap();
        assert_eq!(pool.len(), 3);
        let mut sampler = Sampler { config, rng: Rng::seed_from_u64(4), pool: Some(pool.clone()) };
        for _ in 0..20 {
            assert!(pool.contains(&sampler.sequence()));
        }
        let err = SyntheticConfig { train_size: Some(0), ..SyntheticConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("train_size"), "{err}");
    }
}
