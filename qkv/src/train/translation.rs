//! Training the encoder-decoder Transformer on a parallel corpus (§5 of the paper): a joint subword vocabulary,
//! batches by token count, teacher forcing with label smoothing, Adam with the warm-up schedule, evaluation
//! (loss, BLEU and chrF) after every epoch — run by the shared [`Trainer`] (atomic checkpoints, exact resume).
//!
//! Besides the trainer's files, a run directory holds `config.json` (the model) and `tokenizer.json`, and
//! `best/` is the model of the best validation BLEU so far.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::trainer::{epoch_rng, Evaluation, Objective, Selection, StepContext, Task, Trainer, TrainingOptions};
pub use super::trainer::{
    latest_checkpoint, step_checkpoints, EvalRecord, Event, Finish, LoopSettings, StepRecord, TrainState,
};
use super::{cross_entropy, schedule, AdamWConfig};
use crate::decode::{beam_search, DecodeOptions};
use crate::hub::save_parameters;
use crate::hub::{read_json, write_json};
use crate::metrics::bleu::{corpus_bleu, BleuOptions};
use crate::metrics::chrf::{corpus_chrf, ChrfOptions};
use crate::models::{Transformer, TransformerConfig};
use crate::nn::{mode::Rng, params::named_vars, seeded_var_builder, Mode};
use crate::text::batch::{batch_of, token_batches, Batch, Example};
use crate::text::corpus::{read_parallel, SentencePair};
use crate::text::tokenizer::{SubwordModel, Tokenizer};
use crate::{Error, Result};

/// Everything about a training run except the model's shape; stored in the run directory and in every
/// checkpoint, so `--resume` needs nothing but the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TranslationTraining {
    pub train_source: PathBuf,
    pub train_target: PathBuf,
    pub valid_source: PathBuf,
    pub valid_target: PathBuf,
    pub subword: SubwordModel,
    pub vocab_size: usize,
    /// Tokens per batch (sentences × longest side, padding included).
    pub max_tokens: usize,
    /// lr = lr_factor · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5), eq. (3).
    pub lr_factor: f64,
    pub warmup: usize,
    pub label_smoothing: f64,
    /// Training pairs with more subword tokens than this on either side are skipped (and counted).
    pub max_len: usize,
    /// Decoding for the validation BLEU (greedy by default: cheap, and enough to rank checkpoints).
    pub eval_decode: DecodeOptions,
    /// Also score validation by exact match (the share of hypotheses equal to their reference), for tasks
    /// whose outputs are single words or numbers, where BLEU says little; it then picks the best checkpoint.
    pub exact_match: bool,
    #[serde(flatten)]
    pub run: LoopSettings,
}

impl Default for TranslationTraining {
    fn default() -> Self {
        Self {
            train_source: PathBuf::new(),
            train_target: PathBuf::new(),
            valid_source: PathBuf::new(),
            valid_target: PathBuf::new(),
            subword: SubwordModel::Bpe,
            vocab_size: 8000,
            max_tokens: 4096,
            lr_factor: 1.0,
            warmup: 4000,
            label_smoothing: 0.1,
            max_len: 256,
            eval_decode: DecodeOptions::greedy(),
            exact_match: false,
            run: LoopSettings {
                num_train_epochs: Some(20),
                // The paper's Adam: β₂ = 0.98, ε = 10⁻⁹, no weight decay.
                adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 },
                max_grad_norm: Some(1.0),
                seed: 1,
                save_total_limit: Some(10),
                ..LoopSettings::default()
            },
        }
    }
}

impl TrainingOptions for TranslationTraining {
    fn loop_settings(&self) -> &LoopSettings {
        &self.run
    }

    fn loop_settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.run
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [("max_tokens", self.max_tokens), ("max_len", self.max_len)] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if self.max_tokens < self.max_len + 1 {
            let expected = format!("≥ max_len + 1 = {} so the longest kept pair fits a batch", self.max_len + 1);
            return Err(Error::config("max_tokens", self.max_tokens, expected));
        }
        if !(self.lr_factor > 0.0 && self.lr_factor.is_finite()) {
            return Err(Error::config("lr_factor", self.lr_factor, "a positive number"));
        }
        self.eval_decode.validate()
    }
}

/// The translation task of the shared [`Trainer`]: a joint subword vocabulary, token-count batches, teacher
/// forcing with label smoothing, the paper's learning-rate schedule, and validation loss, BLEU and chrF.
pub struct TranslationTask {
    training: TranslationTraining,
    model_config: TransformerConfig,
    tokenizer: Tokenizer,
    model: Transformer,
    vars: Vec<(String, Var)>,
    train: Vec<Example>,
    valid: Vec<Example>,
    valid_references: Vec<String>,
    skipped: usize,
    device: Device,
}

/// A translation model being trained (see [`trainer`](super::trainer) for the run directory's layout).
pub type TranslationTrainer = Trainer<TranslationTask>;

impl Trainer<TranslationTask> {
    pub fn model(&self) -> &Transformer {
        &self.task().model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.task().tokenizer
    }
}

impl TranslationTask {
    fn new(
        training: TranslationTraining,
        model_config: TransformerConfig,
        tokenizer: Tokenizer,
        pairs: Vec<SentencePair>,
    ) -> Result<Self> {
        let device = training.run.device.device()?;
        let (train, skipped) = encode_pairs(&tokenizer, &pairs, Some(training.max_len))?;
        if train.is_empty() {
            let message = format!("no training pair has at most max_len = {} tokens per side", training.max_len);
            return Err(Error::input(&training.train_source, None, message));
        }
        let valid_pairs = read_parallel(&training.valid_source, &training.valid_target)?;
        let (valid, _) = encode_pairs(&tokenizer, &valid_pairs, None)?;
        let valid_references = valid_pairs.into_iter().map(|p| p.target).collect();
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, training.run.seed, DType::F32, &device);
        let model = Transformer::new(&model_config, vb)?;
        let vars = named_vars(&varmap);
        Ok(Self { training, model_config, tokenizer, model, vars, train, valid, valid_references, skipped, device })
    }

    /// Training pairs kept, training pairs skipped (longer than `max_len`), validation pairs.
    pub fn data_sizes(&self) -> (usize, usize, usize) {
        (self.train.len(), self.skipped, self.valid.len())
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        batch_of(&self.tokenizer, &self.train, indices, &self.device)
    }

    /// Mean cross-entropy per real target token of one batch.
    fn batch_loss(&self, batch: &Batch, mode: &mut Mode, smoothing: f64) -> Result<Tensor> {
        let logits = self.model.forward(&batch.source, &batch.source_valid, &batch.decoder_input, mode)?;
        let (b, t, v) = logits.dims3()?;
        let labels = batch.labels.reshape(b * t)?;
        cross_entropy(&logits.reshape((b * t, v))?, &labels, Some(self.tokenizer.pad_id()), smoothing)
    }
}

impl Objective for TranslationTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, indices: &[usize], _: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let batch = self.batch(indices)?;
        let loss = self.batch_loss(&batch, mode, self.training.label_smoothing)?;
        Ok((loss, batch.target_tokens))
    }
}

impl Task for TranslationTask {
    type Training = TranslationTraining;
    type Start = TransformerConfig;

    /// Reads the corpora, trains the joint vocabulary on both sides of the training data, builds the model
    /// (`vocab_size` and the special ids are set from the tokenizer).
    fn create(training: TranslationTraining, mut model_config: TransformerConfig) -> Result<Self> {
        let pairs = read_parallel(&training.train_source, &training.train_target)?;
        let texts: Vec<&str> = pairs.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()]).collect();
        let tokenizer = Tokenizer::train(&texts, training.subword, training.vocab_size)?;
        model_config.vocab_size = tokenizer.vocab_size();
        model_config.pad_token_id = tokenizer.pad_id();
        model_config.bos_token_id = tokenizer.bos_id();
        model_config.eos_token_id = tokenizer.eos_id();
        TranslationTask::new(training, model_config, tokenizer, pairs)
    }

    /// `tokenizer.json` and `config.json`.
    fn write_run_files(&self, run_dir: &Path) -> Result<()> {
        self.tokenizer.save(&run_dir.join("tokenizer.json"))?;
        write_json(&run_dir.join("config.json"), &self.model_config)
    }

    fn reopen(checkpoint: &Path, training: TranslationTraining) -> Result<Self> {
        let model_config: TransformerConfig = read_json(&checkpoint.join("config.json"))?;
        let tokenizer = Tokenizer::load(&checkpoint.join("tokenizer.json"))?;
        let pairs = read_parallel(&training.train_source, &training.train_target)?;
        TranslationTask::new(training, model_config, tokenizer, pairs)
    }

    fn training(&self) -> &TranslationTraining {
        &self.training
    }

    /// Token-count batches of similar lengths, shuffled by a generator seeded with the seed and the epoch.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let lengths: Vec<(usize, usize)> = self.train.iter().map(|e| (e.source.len(), e.target.len())).collect();
        let mut rng = epoch_rng(self.training.run.seed, 0x9e37_79b9, epoch);
        token_batches(&lengths, self.training.max_tokens, Some(&mut rng))
    }

    fn learning_rate(&self, step: usize) -> f64 {
        schedule::inverse_sqrt(step, self.model_config.d_model, self.training.warmup, self.training.lr_factor)
    }

    /// Validation loss (unsmoothed), and corpus BLEU and chrF2 of the decoded validation sources against the
    /// raw references.
    fn evaluate(&self) -> Result<Evaluation> {
        let lengths: Vec<(usize, usize)> = self.valid.iter().map(|e| (e.source.len(), e.target.len())).collect();
        let budget = self.training.max_tokens.max(lengths.iter().map(|&(s, t)| s.max(t) + 1).max().unwrap_or(1));
        let batches = token_batches(&lengths, budget, None::<&mut Rng>)?;
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        let mut hypotheses = vec![String::new(); self.valid.len()];
        for indices in &batches {
            let batch = batch_of(&self.tokenizer, &self.valid, indices, &self.device)?;
            let loss = self.batch_loss(&batch, &mut Mode::Eval, 0.0)?.to_scalar::<f32>()? as f64;
            loss_sum += loss * batch.target_tokens as f64;
            tokens += batch.target_tokens;
            let decoded = beam_search(&self.model, &batch.source, &batch.source_valid, &self.training.eval_decode)?;
            for (&i, hypothesis) in indices.iter().zip(decoded) {
                hypotheses[i] = self.tokenizer.decode(&hypothesis.tokens)?;
            }
        }
        let references = vec![self.valid_references.clone()];
        let bleu = corpus_bleu(&hypotheses, &references, &BleuOptions::default())?;
        let chrf = corpus_chrf(&hypotheses, &references, &ChrfOptions::default())?;
        let mut metrics: BTreeMap<String, f64> =
            [("val_bleu".to_string(), bleu.score), ("val_chrf".to_string(), chrf.score)].into();
        if self.training.exact_match {
            let exact = hypotheses.iter().zip(&self.valid_references).filter(|(h, r)| h.trim() == r.trim()).count();
            metrics.insert("val_exact_match".to_string(), exact as f64 / hypotheses.len().max(1) as f64);
        }
        Ok(Evaluation { val_loss: loss_sum / tokens.max(1) as f64, metrics })
    }

    /// The best validation BLEU, or exact match where it is measured (outputs too short for BLEU).
    fn selection(&self) -> Selection {
        let metric = if self.training.exact_match { "val_exact_match" } else { "val_bleu" };
        Selection { metric: Some(metric), ties_by_loss: true }
    }

    /// config.json, model.safetensors and tokenizer.json: what `translate` loads.
    fn save_model(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join("config.json"), &self.model_config)?;
        save_parameters(&self.vars, &dir.join("model.safetensors"))?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }
}

/// Source and target ids of each pair; with `max_len`, pairs longer than that on either side are left out
/// and counted.
fn encode_pairs(
    tokenizer: &Tokenizer,
    pairs: &[SentencePair],
    max_len: Option<usize>,
) -> Result<(Vec<Example>, usize)> {
    let mut examples = Vec::with_capacity(pairs.len());
    let mut skipped = 0;
    for pair in pairs {
        let example = Example { source: tokenizer.encode(&pair.source)?, target: tokenizer.encode(&pair.target)? };
        if max_len.is_some_and(|max| example.source.len() > max || example.target.len() > max) {
            skipped += 1;
        } else {
            examples.push(example);
        }
    }
    Ok((examples, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter turned NaN makes the next loss NaN: training stops with an error that says so, and the
    /// checkpoint written before is left exactly as it was.
    use std::fs;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
        let dir = std::env::temp_dir().join(format!("qkv-nan-loss-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("src.txt"), "the cat sleeps.\na dog runs.\ntwo men play.\n").unwrap();
        fs::write(dir.join("tgt.txt"), "die Katze schläft.\nein Hund rennt.\nzwei Männer spielen.\n").unwrap();
        let training = TranslationTraining {
            train_source: dir.join("src.txt"),
            train_target: dir.join("tgt.txt"),
            valid_source: dir.join("src.txt"),
            valid_target: dir.join("tgt.txt"),
            vocab_size: 80,
            max_tokens: 64,
            max_len: 30,
            run: LoopSettings { max_steps: Some(1), save_steps: Some(1), ..TranslationTraining::default().run },
            ..TranslationTraining::default()
        };
        let config = TransformerConfig {
            d_model: 16,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            ..TransformerConfig::default()
        };
        let mut trainer = TranslationTrainer::create(&dir.join("run"), training, config).unwrap();
        let stop = AtomicBool::new(false);
        assert_eq!(trainer.run(&stop, |_| {}).unwrap(), Finish::Completed);
        let good = latest_checkpoint(&dir.join("run")).unwrap().unwrap();
        let saved = fs::read(good.join("model.safetensors")).unwrap();

        // The feed-forward output bias reaches the logits directly, so the very next loss is NaN.
        let name = "decoder.layers.0.feed_forward.fc2.bias";
        let var = trainer.task().vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        var.set(&var.as_tensor().affine(0.0, f64::NAN).unwrap()).unwrap();
        trainer.settings_mut().max_steps = Some(3);
        let message = trainer.run(&stop, |_| {}).unwrap_err().to_string();
        assert!(message.contains("training loss") && message.contains("finite number at step 2"), "{name}: {message}");
        assert_eq!(latest_checkpoint(&dir.join("run")).unwrap().unwrap(), good);
        assert_eq!(fs::read(good.join("model.safetensors")).unwrap(), saved);
        fs::remove_dir_all(&dir).unwrap();
    }
}
