//! Training a GPT-2 language model from scratch on one text file, nanoGPT-style: the text is split into a
//! training part and a held-out tail, tokenized once (characters or byte-level BPE), and every step reads
//! `batch_size` random windows of `block_size` tokens, predicting each next token. AdamW with weight decay on
//! the matrices, linear warm-up then cosine decay, gradient clipping — run by the shared [`Trainer`]: an
//! "epoch" here is `eval_interval` steps, each followed by evaluation and a checkpoint.
//!
//! The model directories it writes (`best/`, each checkpoint) are Hugging Face GPT-2 directories:
//! config.json, model.safetensors under `GPT2LMHeadModel` names, and tokenizer.json.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::trainer::{epoch_rng, Evaluation, LoopSettings, Objective, StepContext, Task, Trainer, TrainingOptions};
use super::{cross_entropy, schedule, AdamWConfig};
use crate::hub::{gpt2, read_json, LoadReport};
use crate::models::{Gpt2, Gpt2Config};
use crate::nn::{params::named_vars, seeded_var_builder, Mode};
use crate::text::corpus::read_text;
use crate::text::lm_tokenizer::{encode_text, train_lm_tokenizer, LmVocabulary};
use crate::text::tokenizer::{read_tokenizer_json, write_tokenizer_json};
use crate::{Error, Result};

/// Everything about a language-model run except the model's shape. The defaults are nanoGPT's CPU run on
/// Shakespeare (its README): batch 12 × 64 tokens, 2000 steps, lr 1e-3 → 1e-4 with 100 warm-up steps, AdamW
/// β₂ 0.99 and weight decay 0.1, clipping at 1, a 90/10 split. An "epoch" is `eval_interval` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LmTraining {
    /// The text file the model learns from (UTF-8); its tail is held out for validation.
    pub text: PathBuf,
    /// Characters or byte-level BPE (default: characters).
    pub vocabulary: LmVocabulary,
    /// Byte-level BPE's vocabulary size (characters take what the text has).
    pub vocab_size: usize,
    /// The share of the text, at its end, held out for validation.
    pub validation_fraction: f64,
    /// Tokens per training window (at most the model's n_positions).
    pub block_size: usize,
    /// Windows per batch.
    pub batch_size: usize,
    /// Steps between evaluations (and checkpoints).
    pub eval_interval: usize,
    /// Validation windows = eval_batches × batch_size, spread evenly over the held-out text.
    pub eval_batches: usize,
    /// Peak learning rate, reached after `warmup` steps (default 1e-3).
    pub learning_rate: f64,
    /// Learning rate the cosine decays to and stays at after `lr_decay_steps` (default 1e-4).
    pub min_lr: f64,
    /// Optimizer steps of linear warm-up from 0 to `learning_rate` (default 100).
    pub warmup: usize,
    /// The cosine reaches `min_lr` here; `None` means `max_steps`.
    pub lr_decay_steps: Option<usize>,
    /// Steps, AdamW, clipping, seed, checkpoints and time limit, flattened into the same options.
    #[serde(flatten)]
    pub run: LoopSettings,
}

impl Default for LmTraining {
    fn default() -> Self {
        Self {
            text: PathBuf::new(),
            vocabulary: LmVocabulary::Char,
            vocab_size: 4096,
            validation_fraction: 0.1,
            block_size: 64,
            batch_size: 12,
            eval_interval: 250,
            eval_batches: 20,
            learning_rate: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            lr_decay_steps: None,
            run: LoopSettings {
                num_train_epochs: None,
                max_steps: Some(2000),
                adam: AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 },
                max_grad_norm: Some(1.0),
                seed: 1337,
                save_total_limit: Some(2),
                ..LoopSettings::default()
            },
        }
    }
}

impl LmTraining {
    /// The length of the cosine schedule: `lr_decay_steps`, else `max_steps`.
    fn decay_steps(&self) -> usize {
        self.lr_decay_steps.or(self.run.max_steps).unwrap_or(1)
    }
}

impl TrainingOptions for LmTraining {
    fn loop_settings(&self) -> &LoopSettings {
        &self.run
    }

    fn loop_settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.run
    }

    fn data_files(&self) -> Vec<(&'static str, &Path)> {
        vec![("text", &self.text)]
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("block_size", self.block_size),
            ("batch_size", self.batch_size),
            ("eval_interval", self.eval_interval),
            ("eval_batches", self.eval_batches),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if self.run.max_steps.is_none_or(|n| n == 0) && self.lr_decay_steps.is_none() {
            let expected = "at least 1: the cosine schedule decays over max_steps (or set lr_decay_steps)";
            return Err(Error::config("max_steps", format!("{:?}", self.run.max_steps), expected));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            let expected = "a fraction strictly between 0 and 1";
            return Err(Error::config("validation_fraction", self.validation_fraction, expected));
        }
        for (option, value) in [("learning_rate", self.learning_rate), ("min_lr", self.min_lr)] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Error::config(option, value, "a non-negative number"));
            }
        }
        Ok(())
    }
}

/// The model nanoGPT's CPU Shakespeare run trains: 4 layers, 4 heads, 128 wide, 64 positions, no dropout
/// (with GPT-2's biases, so that transformers loads it).
pub fn small_config() -> Gpt2Config {
    Gpt2Config {
        n_positions: 64,
        n_embd: 128,
        n_layer: 4,
        n_head: 4,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        ..Gpt2Config::default()
    }
}

/// The language-modelling task of the shared [`Trainer`].
pub struct LmTask {
    training: LmTraining,
    tokenizer: tokenizers::Tokenizer,
    model: Gpt2,
    vars: Vec<(String, Var)>,
    train: Vec<u32>,
    valid: Vec<u32>,
    device: Device,
}

/// A language model being trained.
pub type LmTrainer = Trainer<LmTask>;

impl LmTask {
    fn new(training: LmTraining, config: Gpt2Config, tokenizer: tokenizers::Tokenizer, text: &str) -> Result<Self> {
        let device = training.run.device.device()?;
        let (train_text, valid_text) = split(text, training.validation_fraction);
        let train = encode_text(&tokenizer, train_text)?;
        let valid = encode_text(&tokenizer, valid_text)?;
        for (part, tokens) in [("training part", &train), ("held-out part", &valid)] {
            if tokens.len() <= training.block_size {
                let message = format!(
                    "its {part} has {} tokens: too short for one window of block_size = {} plus its target",
                    tokens.len(),
                    training.block_size
                );
                return Err(Error::input(&training.text, None, message));
            }
        }
        let varmap = VarMap::new();
        let model = Gpt2::new(&config, seeded_var_builder(&varmap, training.run.seed, DType::F32, &device))?;
        let vars = named_vars(&varmap);
        Ok(Self { training, tokenizer, model, vars, train, valid, device })
    }

    /// The GPT-2 being trained.
    pub fn model(&self) -> &Gpt2 {
        &self.model
    }

    /// The tokenizer the text was encoded with, saved as tokenizer.json beside the model.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Training and held-out tokens.
    pub fn data_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.valid.len())
    }

    /// Inputs (B, T) and next-token targets (B, T) of the windows starting at `offsets` in `tokens`.
    fn windows(&self, tokens: &[u32], offsets: &[usize]) -> Result<(Tensor, Tensor)> {
        let t = self.training.block_size;
        let mut inputs = Vec::with_capacity(offsets.len() * t);
        let mut targets = Vec::with_capacity(offsets.len() * t);
        for &o in offsets {
            inputs.extend_from_slice(&tokens[o..o + t]);
            targets.extend_from_slice(&tokens[o + 1..o + t + 1]);
        }
        let shape = (offsets.len(), t);
        Ok((Tensor::from_vec(inputs, shape, &self.device)?, Tensor::from_vec(targets, shape, &self.device)?))
    }

    /// Mean next-token cross-entropy over the windows at `offsets`.
    fn window_loss(&self, tokens: &[u32], offsets: &[usize], mode: &mut Mode) -> Result<Tensor> {
        let (inputs, targets) = self.windows(tokens, offsets)?;
        let logits = self.model.forward(&inputs, mode)?;
        let (b, t, v) = logits.dims3()?;
        cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?, None, 0.0)
    }

    /// Mean loss over `eval_batches × batch_size` windows spread evenly over `tokens` (the same windows at
    /// every evaluation, so the numbers compare).
    fn spread_loss(&self, tokens: &[u32]) -> Result<f64> {
        let offsets = evenly_spaced(tokens.len() - self.training.block_size - 1, self.eval_windows());
        let mut sum = 0.0;
        for chunk in offsets.chunks(self.training.batch_size) {
            let loss = self.window_loss(tokens, chunk, &mut Mode::Eval)?.to_scalar::<f32>()? as f64;
            sum += loss * chunk.len() as f64;
        }
        Ok(sum / offsets.len() as f64)
    }

    fn eval_windows(&self) -> usize {
        self.training.eval_batches * self.training.batch_size
    }
}

impl Objective for LmTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, offsets: &[usize], _: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let loss = self.window_loss(&self.train, offsets, mode)?;
        Ok((loss, offsets.len() * self.training.block_size))
    }
}

impl Task for LmTask {
    type Training = LmTraining;
    type Start = Gpt2Config;

    /// Reads the text, trains the vocabulary on its training part, builds the model (`vocab_size` from the
    /// vocabulary; `n_positions` at least `block_size`).
    fn create(training: LmTraining, mut model_config: Gpt2Config) -> Result<Self> {
        if model_config.n_positions < training.block_size {
            let expected = format!("at least block_size = {}", training.block_size);
            return Err(Error::config("n_positions", model_config.n_positions, expected));
        }
        let text = read_text(&training.text)?;
        let (train_text, _) = split(&text, training.validation_fraction);
        let tokenizer = train_lm_tokenizer(train_text, training.vocabulary, training.vocab_size)?;
        model_config.vocab_size = tokenizer.get_vocab_size(true);
        let end_of_text = tokenizer.token_to_id(crate::text::lm_tokenizer::END_OF_TEXT);
        (model_config.bos_token_id, model_config.eos_token_id) = match end_of_text {
            Some(id) => (id, id),
            // No end-of-text token: an id past the vocabulary, which generation never produces.
            None => (model_config.vocab_size as u32, model_config.vocab_size as u32),
        };
        LmTask::new(training, model_config, tokenizer, &text)
    }

    fn reopen(checkpoint: &Path, training: LmTraining) -> Result<Self> {
        let model_config: Gpt2Config = read_json(&checkpoint.join("config.json"))?;
        crate::hub::gpt2::check_against_weights(checkpoint, &model_config)?;
        let tokenizer = read_tokenizer_json(&checkpoint.join("tokenizer.json"))?;
        let text = read_text(&training.text)?;
        LmTask::new(training, model_config, tokenizer, &text)
    }

    fn training(&self) -> &LmTraining {
        &self.training
    }

    /// `eval_interval × accumulate` batches of `batch_size` random window starts, drawn by a generator seeded
    /// with the seed and the epoch.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let mut rng = epoch_rng(self.training.run.seed, 0x2545_f491, epoch);
        let starts = self.train.len() - self.training.block_size; // the window and its shifted target fit
        let batches = self.training.eval_interval * self.training.run.gradient_accumulation_steps;
        Ok((0..batches).map(|_| (0..self.training.batch_size).map(|_| rng.random_range(0..starts)).collect()).collect())
    }

    fn learning_rate(&self, step: usize) -> f64 {
        let t = &self.training;
        schedule::warmup_cosine(step, t.warmup, t.decay_steps(), t.learning_rate, t.min_lr)
    }

    /// Validation loss, and the training part's loss on windows spread the same way (to see overfitting).
    fn evaluate(&self) -> Result<Evaluation> {
        let val_loss = self.spread_loss(&self.valid)?;
        let train_loss = self.spread_loss(&self.train)?;
        Ok(Evaluation { val_loss, metrics: [("train_loss".to_string(), train_loss)].into() })
    }

    /// A Hugging Face GPT-2 directory: config.json, model.safetensors, tokenizer.json.
    fn save_model(&self, dir: &Path) -> Result<()> {
        gpt2::save(dir, &self.model, &self.vars)?;
        write_tokenizer_json(&self.tokenizer, &dir.join("tokenizer.json"))
    }

    fn load_model(&self, dir: &Path) -> Result<LoadReport> {
        gpt2::load_into(dir, &self.vars, self.model.config().tie_word_embeddings)
    }
}

/// The text cut at `1 − validation_fraction` of its characters: (training part, held-out part).
fn split(text: &str, validation_fraction: f64) -> (&str, &str) {
    let chars = text.chars().count();
    let keep = ((chars as f64) * (1.0 - validation_fraction)) as usize;
    let at = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    text.split_at(at)
}

/// `n` window starts from 0 to `last` inclusive, evenly spaced (rounded down); fewer when `last` is small.
pub fn evenly_spaced(last: usize, n: usize) -> Vec<usize> {
    if n <= 1 || last == 0 {
        return vec![0];
    }
    let mut offsets: Vec<usize> = (0..n).map(|i| i * last / (n - 1)).collect();
    offsets.dedup();
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_spread_windows() {
        assert_eq!(split("abcdefghij", 0.1), ("abcdefghi", "j"));
        assert_eq!(split("ääää", 0.5), ("ää", "ää"));
        assert_eq!(evenly_spaced(10, 3), vec![0, 5, 10]);
        assert_eq!(evenly_spaced(2, 5), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(7, 1), vec![0]);
    }
}
