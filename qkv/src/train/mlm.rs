//! Pre-training BERT from scratch with the masked-language-model objective (Devlin et al., 2019, §3.1): a
//! WordPiece vocabulary trained on the text, 15% of the tokens chosen for prediction — 80% of those replaced by
//! [MASK], 10% by a random token, 10% left unchanged — and the cross-entropy of the chosen ones, run by the
//! shared [`Trainer`] (checkpoints, resume, time limit, best model). The model directories it writes (`best/`,
//! each checkpoint) are Hugging Face `BertForMaskedLM` directories (config.json, model.safetensors,
//! tokenizer.json). Next-sentence prediction is not implemented (RoBERTa showed it is not needed).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use super::trainer::{
    check_new_run, epoch_rng, resume_point, Evaluation, LoopSettings, Task, Trainer, TrainingOptions,
};
use super::{cross_entropy, data_parallel, schedule, AdamWConfig};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{bert, read_json};
use crate::models::bert::{Bert, BertArchitecture, BertConfig, BertInput};
use crate::nn::mode::Rng;
use crate::nn::{params::named_vars, seeded_var_builder, Mode};
use crate::text::corpus::read_lines;
use crate::{Error, Result};

/// Labels of positions that are not predicted.
const IGNORE: u32 = u32::MAX;

/// Options; the model's shape is a [`BertConfig`] (see [`small_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlmTraining {
    pub text_file: PathBuf,
    pub vocab_size: usize,
    pub lowercase: bool,
    /// Tokens per sequence, [CLS] and [SEP] included; longer lines are cut.
    pub max_length: usize,
    pub mlm_probability: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Share of the lines held out for the validation loss.
    pub validation_fraction: f64,
    pub seed: u64,
    /// Micro-batches each batch is dealt into and run in parallel (default: one per thread).
    pub shards: usize,
    /// Stop (evaluate, checkpoint) after this many minutes of training in all.
    pub time_limit_minutes: Option<f64>,
    /// Step checkpoints kept.
    pub keep_last: usize,
    /// Also checkpoint every this many steps (besides each epoch's end).
    pub save_every: Option<usize>,
    pub log_every: usize,
}

impl Default for MlmTraining {
    fn default() -> Self {
        Self {
            text_file: PathBuf::new(),
            vocab_size: 8000,
            lowercase: true,
            max_length: 128,
            mlm_probability: 0.15,
            batch_size: 32,
            epochs: 3,
            max_steps: None,
            learning_rate: 5e-4,
            warmup_ratio: 0.06,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            validation_fraction: 0.05,
            seed: 42,
            shards: data_parallel::default_shards(),
            time_limit_minutes: None,
            keep_last: 2,
            save_every: None,
            log_every: 10,
        }
    }
}

impl MlmTraining {
    fn validate(&self) -> Result<()> {
        self.loop_settings().validate()?;
        if self.batch_size == 0 || self.max_length < 3 {
            return Err(Error::config("batch_size / max_length", "0 or too small", "batch ≥ 1, max_length ≥ 3"));
        }
        if !(self.mlm_probability > 0.0 && self.mlm_probability < 1.0) {
            return Err(Error::config("mlm_probability", self.mlm_probability, "a share in (0, 1)"));
        }
        Ok(())
    }
}

impl TrainingOptions for MlmTraining {
    fn loop_settings(&self) -> LoopSettings {
        LoopSettings {
            accumulate: 1,
            shards: self.shards,
            epochs: self.epochs,
            max_steps: self.max_steps,
            time_limit_minutes: self.time_limit_minutes,
            adam: AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() },
            clip_norm: Some(self.max_grad_norm).filter(|m| *m > 0.0),
            seed: self.seed,
            keep_last: self.keep_last,
            save_every: self.save_every,
            log_every: self.log_every,
        }
    }
}

/// A small BERT for a 2-core CPU: 4 layers, 256 wide, 4 heads, feed-forward 1024.
pub fn small_config(vocab_size: usize, max_length: usize) -> BertConfig {
    BertConfig {
        vocab_size,
        hidden_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 1024,
        max_position_embeddings: max_length.max(2),
        ..BertConfig::default()
    }
}

/// Which positions of `ids` to predict and what the model sees there: each non-special token is chosen with
/// probability `p`; a chosen one becomes `mask` (80%), a random non-special token (10%) or stays (10%).
/// Returns (inputs, labels) with `IGNORE` (`u32::MAX`) where nothing is predicted.
pub fn mask_tokens(
    ids: &[u32],
    specials: &[u32],
    mask: u32,
    vocab: u32,
    p: f64,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<u32>) {
    let mut inputs = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        if specials.contains(&id) || rng.random::<f64>() >= p {
            continue;
        }
        labels[i] = id;
        let r = rng.random::<f64>();
        if r < 0.8 {
            inputs[i] = mask;
        } else if r < 0.9 {
            inputs[i] = loop {
                let candidate = rng.random_range(0..vocab);
                if !specials.contains(&candidate) {
                    break candidate;
                }
            };
        }
    }
    (inputs, labels)
}

/// The masked-language-model task of the shared [`Trainer`].
pub struct MlmTask {
    training: MlmTraining,
    tokenizer: PretrainedTokenizer,
    model: Bert,
    vars: Vec<(String, Var)>,
    train: Vec<Vec<u32>>,
    valid: Vec<Vec<u32>>,
    masking: Masking,
    total_steps: usize,
    warmup: usize,
}

/// A BERT being pre-trained.
pub type MlmTrainer = Trainer<MlmTask>;

impl Trainer<MlmTask> {
    /// Starts a run in `run_dir`: trains a WordPiece vocabulary on the lines of `training.text_file`, holds out
    /// `validation_fraction` of them, and builds a BertForMaskedLM (`config`'s vocab_size set from the
    /// vocabulary).
    pub fn create(run_dir: &Path, training: MlmTraining, mut config: BertConfig) -> Result<Self> {
        training.validate()?;
        check_new_run(run_dir)?;
        let lines = read_lines(&training.text_file)?.into_iter().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>();
        let tokenizer = PretrainedTokenizer::train_bert_wordpiece(&lines, training.vocab_size, training.lowercase)?;
        config.vocab_size = tokenizer.vocab_size();
        config.max_position_embeddings = config.max_position_embeddings.max(training.max_length);
        config.architectures = Some(vec![BertArchitecture::MaskedLm.name().into()]);
        let task = MlmTask::new(training, config, tokenizer, &lines)?;
        Trainer::start(run_dir, task)
    }

    /// Continues the run in `run_dir` from its latest checkpoint.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        let checkpoint = resume_point(run_dir)?;
        let training: MlmTraining = read_json(&checkpoint.join("training.json"))?;
        let config: BertConfig = read_json(&checkpoint.join("config.json"))?;
        let tokenizer = PretrainedTokenizer::from_dir(&checkpoint)?;
        let lines = read_lines(&training.text_file)?.into_iter().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>();
        let task = MlmTask::new(training, config, tokenizer, &lines)?;
        Trainer::restore(run_dir, &checkpoint, task)
    }
}

impl MlmTask {
    fn new(
        training: MlmTraining,
        config: BertConfig,
        tokenizer: PretrainedTokenizer,
        lines: &[String],
    ) -> Result<Self> {
        let mut sequences = Vec::with_capacity(lines.len());
        for chunk in lines.chunks(512) {
            let inputs: Vec<(&str, Option<&str>)> = chunk.iter().map(|l| (l.as_str(), None)).collect();
            let encoded = tokenizer.encode(&inputs, training.max_length, Truncation::LongestFirst)?;
            for (ids, mask) in encoded.input_ids.iter().zip(&encoded.attention_mask) {
                let n = mask.iter().filter(|&&m| m == 1).count();
                sequences.push(ids[..n].to_vec());
            }
        }
        let mut rng = Rng::seed_from_u64(training.seed);
        sequences.shuffle(&mut rng);
        let held_out =
            ((sequences.len() as f64 * training.validation_fraction).round() as usize).min(sequences.len() / 2);
        let valid: Vec<Vec<u32>> = sequences.drain(..held_out).collect();
        let train = sequences;
        if train.is_empty() {
            return Err(Error::input(&training.text_file, None, "has no non-empty lines to train on"));
        }
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, training.seed, DType::F32, &device);
        let model = Bert::new(&config, BertArchitecture::MaskedLm, vb)?;
        let vars = named_vars(&varmap);
        let per_epoch = train.len().div_ceil(training.batch_size);
        let total_steps = training.max_steps.unwrap_or(usize::MAX).min(per_epoch * training.epochs);
        let warmup = (training.warmup_ratio * total_steps as f64).ceil() as usize;
        let masking = Masking::new(&tokenizer, training.mlm_probability)?;
        Ok(Self { training, tokenizer, model, vars, train, valid, masking, total_steps, warmup })
    }

    pub fn model(&self) -> &Bert {
        &self.model
    }

    /// Training and held-out sequences.
    pub fn data_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.valid.len())
    }

    fn batch(&self, data: &[Vec<u32>], indices: &[usize]) -> Vec<Vec<u32>> {
        indices.iter().map(|&i| data[i].clone()).collect()
    }
}

impl Task for MlmTask {
    type Training = MlmTraining;

    fn training(&self) -> &MlmTraining {
        &self.training
    }

    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The training sequences shuffled by a generator seeded with the seed and the epoch, in batches.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let mut rng = epoch_rng(self.training.seed, 0x006d_6c6d, epoch);
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rng);
        Ok(order.chunks(self.training.batch_size).map(<[usize]>::to_vec).collect())
    }

    /// Masks are drawn afresh for every batch (dynamic masking, as RoBERTa and transformers' data collator
    /// do) from the training generator, which the trainer saves in each checkpoint.
    fn loss(&self, indices: &[usize], mode: &mut Mode) -> Result<(Tensor, usize)> {
        let batch = self.batch(&self.train, indices);
        let Mode::Train(rng) = mode else {
            return Err(Error::config("mode", "eval", "training mode for the training loss"));
        };
        let (input, labels, predicted) = self.masking.inputs(&batch, rng)?;
        Ok((self.masking.loss(&self.model, input, labels, mode)?, predicted))
    }

    fn learning_rate(&self, step: usize) -> f64 {
        schedule::linear_warmup_decay(step, self.warmup, self.total_steps, self.training.learning_rate)
    }

    /// Validation loss per predicted token, with the same masks every time (a fixed generator).
    fn evaluate(&self) -> Result<Evaluation> {
        let mut rng = Rng::seed_from_u64(self.training.seed ^ 0x7661_6c69);
        let (mut sum, mut predicted) = (0.0, 0usize);
        let all: Vec<usize> = (0..self.valid.len()).collect();
        for indices in all.chunks(self.training.batch_size) {
            let (input, labels, n) = self.masking.inputs(&self.batch(&self.valid, indices), &mut rng)?;
            let loss = self.masking.loss(&self.model, input, labels, &mut Mode::Eval)?;
            sum += loss.to_scalar::<f32>()? as f64 * n as f64;
            predicted += n;
        }
        let val_loss = if predicted == 0 { f64::NAN } else { sum / predicted as f64 };
        Ok(Evaluation { val_loss, metrics: Default::default() })
    }

    fn best_metric(&self) -> Option<&'static str> {
        None
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        bert::save(dir, &self.model, &self.vars)?;
        self.tokenizer.save_to_dir(dir, self.training.lowercase)
    }

    fn load_model(&self, dir: &Path) -> Result<()> {
        bert::load_into(dir, &self.vars, BertArchitecture::MaskedLm, false).map(|_| ())
    }
}

/// Builds masked batches and their loss.
struct Masking {
    specials: Vec<u32>,
    mask: u32,
    vocab: u32,
    pad: u32,
    probability: f64,
}

impl Masking {
    fn new(tokenizer: &PretrainedTokenizer, probability: f64) -> Result<Self> {
        let mask = tokenizer.token_to_id("[MASK]").ok_or_else(|| Error::tokenizer("masking", "no [MASK] token"))?;
        let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        let (specials, vocab) = (tokenizer.special_ids(), tokenizer.vocab_size() as u32);
        Ok(Self { specials, mask, vocab, pad, probability })
    }

    /// The padded, masked input of `batch`, its labels (B·S) and how many positions are predicted. A batch
    /// where chance chose nothing predicts its first row's first ordinary token, so that no loss is 0/0.
    fn inputs(&self, batch: &[Vec<u32>], rng: &mut Rng) -> Result<(BertInput, Tensor, usize)> {
        let s = batch.iter().map(Vec::len).max().unwrap_or(0);
        let b = batch.len();
        let (mut inputs, mut labels, mut valid) = (vec![self.pad; b * s], vec![IGNORE; b * s], vec![0u32; b * s]);
        for (row, ids) in batch.iter().enumerate() {
            let (masked, targets) = mask_tokens(ids, &self.specials, self.mask, self.vocab, self.probability, rng);
            let range = row * s..row * s + ids.len();
            inputs[range.clone()].copy_from_slice(&masked);
            labels[range.clone()].copy_from_slice(&targets);
            valid[range].fill(1);
        }
        let mut predicted = labels.iter().filter(|&&l| l != IGNORE).count();
        if predicted == 0 {
            if let Some(i) = (0..b * s).find(|&i| valid[i] == 1 && !self.specials.contains(&inputs[i])) {
                (labels[i], inputs[i], predicted) = (inputs[i], self.mask, 1);
            }
        }
        let device = Device::Cpu;
        let input = BertInput {
            input_ids: Tensor::from_vec(inputs, (b, s), &device)?,
            attention_mask: Some(Tensor::from_vec(valid, (b, s), &device)?),
            token_type_ids: None,
        };
        Ok((input, Tensor::from_vec(labels, b * s, &device)?, predicted))
    }

    /// Mean cross-entropy of the predicted positions.
    fn loss(&self, model: &Bert, input: BertInput, labels: Tensor, mode: &mut Mode) -> Result<Tensor> {
        let logits = model
            .forward(&input, mode)?
            .remove("logits")
            .ok_or_else(|| Error::config("model", "no logits", "an MLM head"))?;
        cross_entropy(&logits.flatten_to(1)?, &labels, Some(IGNORE), 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_follows_the_80_10_10_rule() {
        let mut rng = Rng::seed_from_u64(3);
        let ids: Vec<u32> = (0..200_000).map(|i| 5 + (i % 95) as u32).collect();
        let (inputs, labels) = mask_tokens(&ids, &[0, 1, 2, 3, 4], 4, 100, 0.15, &mut rng);
        let chosen: Vec<usize> = (0..ids.len()).filter(|&i| labels[i] != IGNORE).collect();
        let share = chosen.len() as f64 / ids.len() as f64;
        assert!((share - 0.15).abs() < 0.005, "chosen {share}");
        let masked = chosen.iter().filter(|&&i| inputs[i] == 4).count() as f64 / chosen.len() as f64;
        let kept = chosen.iter().filter(|&&i| inputs[i] == ids[i]).count() as f64 / chosen.len() as f64;
        assert!((masked - 0.8).abs() < 0.01, "masked {masked}");
        // Unchanged: the 10% left alone plus random draws that hit the same token (1/95 of the other 10%).
        assert!((kept - (0.1 + 0.1 / 95.0)).abs() < 0.01, "kept {kept}");
        assert!(chosen.iter().all(|&i| labels[i] == ids[i]));
        assert!(inputs.iter().all(|&t| t == 4 || t >= 5), "random replacements are never special tokens");
        // Special tokens are never chosen.
        let (_, labels) = mask_tokens(&[2, 7, 3], &[2, 3], 4, 100, 0.9999, &mut rng);
        assert_eq!((labels[0], labels[2]), (IGNORE, IGNORE));
    }
}
