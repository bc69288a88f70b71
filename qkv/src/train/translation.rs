//! Training the encoder-decoder Transformer on a parallel corpus (§5 of the paper): a joint subword vocabulary,
//! batches by token count, teacher forcing with label smoothing, Adam with the warm-up schedule, evaluation
//! (loss, BLEU and chrF) after every epoch — run by the shared [`Trainer`] (atomic checkpoints, exact resume).
//! Instead of teacher forcing the decoder can train on its own predictions ([`scheduled_sampling`]), and a run
//! can start from a trained model's weights (`init_from`).
//!
//! Besides the trainer's files, a run directory holds `config.json` (the model) and `tokenizer.json`, and
//! `best/` is the model of the best validation BLEU so far.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::scheduled_sampling::{self, SamplingOptions};
use super::trainer::{
    epoch_rng, Evaluation, Objective, Selection, StepContext, StepPosition, Task, Trainer, TrainingOptions,
};
pub use super::trainer::{
    latest_checkpoint, step_checkpoints, EvalRecord, Event, Finish, LoopSettings, StepRecord, TrainState,
};
use super::{cross_entropy, projected_cross_entropy, schedule, AdamWConfig};
use crate::decode::{beam_search, DecodeOptions};
use crate::hub::write_json;
use crate::hub::{load_parameters, save_parameters};
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
    /// Training sentences of the source language, one per line.
    pub train_source: PathBuf,
    /// Their translations, line for line.
    pub train_target: PathBuf,
    /// Validation sentences of the source language, one per line (loss, BLEU and chrF after every epoch).
    pub valid_source: PathBuf,
    /// Their reference translations, line for line.
    pub valid_target: PathBuf,
    /// The joint vocabulary's kind, trained on both sides of the training data: BPE (default), WordPiece,
    /// characters or words.
    pub subword: SubwordModel,
    /// Size of the joint vocabulary, specials included (an upper bound for characters and words; default 8000).
    pub vocab_size: usize,
    /// Tokens per batch (sentences × longest side, padding included).
    pub max_tokens: usize,
    /// lr = lr_factor · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5), eq. (3).
    pub lr_factor: f64,
    /// Steps of linear warm-up in eq. (3) before the inverse-square-root decay (the paper: 4000).
    pub warmup: usize,
    /// The last `num_decay_steps` updates before `max_steps` fade eq. (3)'s rate linearly to zero (the decay
    /// of warmup-stable-decay, transformers' name); 0, the default, keeps eq. (3) to the end. A run with a
    /// fixed budget of steps then ends annealed, where eq. (3) stops mid-descent.
    pub num_decay_steps: usize,
    /// Label smoothing ε of the training cross-entropy (the paper: 0.1); validation loss is unsmoothed.
    pub label_smoothing: f64,
    /// Training pairs with more subword tokens than this on either side are skipped (and counted).
    pub max_len: usize,
    /// Decoding for the validation BLEU (greedy by default: cheap, and enough to rank checkpoints).
    pub eval_decode: DecodeOptions,
    /// Also score validation by exact match (the share of hypotheses equal to their reference), for tasks
    /// whose outputs are single words or numbers, where BLEU says little; it then picks the best checkpoint.
    pub exact_match: bool,
    /// What the decoder is trained on: teacher forcing (the default), scheduled sampling or an oracle, and the
    /// schedule of p (`sampling`, `sampling_schedule`, `sampling_k` …).
    #[serde(flatten)]
    pub sampling: SamplingOptions,
    /// Start from this trained model's weights, config and tokenizer (a model directory, or a run directory,
    /// meaning its `best/`) instead of a fresh model and vocabulary: fine-tuning. The model config a new run is
    /// given is then not used.
    pub init_from: Option<PathBuf>,
    /// Epochs, Adam (the paper's β₂ = 0.98, ε = 1e-9), clipping, seed and checkpoints, flattened into the same
    /// options.
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
            num_decay_steps: 0,
            label_smoothing: 0.1,
            max_len: 256,
            eval_decode: DecodeOptions::greedy(),
            exact_match: false,
            sampling: SamplingOptions::default(),
            init_from: None,
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

    fn data_files(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("train_source", &self.train_source),
            ("train_target", &self.train_target),
            ("valid_source", &self.valid_source),
            ("valid_target", &self.valid_target),
        ]
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [("max_tokens", self.max_tokens), ("max_len", self.max_len)] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if self.max_tokens <= self.max_len {
            let expected = format!("≥ max_len + 1 = {} so the longest kept pair fits a batch", self.max_len + 1);
            return Err(Error::config("max_tokens", self.max_tokens, expected));
        }
        if !(self.lr_factor > 0.0 && self.lr_factor.is_finite()) {
            return Err(Error::config("lr_factor", self.lr_factor, "a positive number"));
        }
        if self.num_decay_steps > 0 {
            match self.run.max_steps {
                Some(total) if self.num_decay_steps <= total => {}
                Some(total) => {
                    let expected = format!("at most max_steps = {total} (the decay ends at max_steps)");
                    return Err(Error::config("num_decay_steps", self.num_decay_steps, expected));
                }
                None => {
                    let expected = "max_steps as well (the decay ends at max_steps), or 0";
                    return Err(Error::config("num_decay_steps", self.num_decay_steps, expected));
                }
            }
        }
        crate::limits::at_most("vocab_size", self.vocab_size, crate::limits::MAX_VOCAB)?;
        self.sampling.validate(self.init_from.is_some())?;
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
    /// The Transformer being trained.
    pub fn model(&self) -> &Transformer {
        &self.task().model
    }

    /// The joint source-target tokenizer, saved beside the model.
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
        training.run.check_normalization(model_config.normalization)?;
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

    /// The task over the trained model in `dir` (a model directory, or a run directory's `best/`): its config,
    /// tokenizer and weights, every parameter taken and no tensor left over.
    fn initialised_from(dir: &Path, training: TranslationTraining, pairs: Vec<SentencePair>) -> Result<Self> {
        let dir = if !dir.join("model.safetensors").exists() && dir.join("best").is_dir() {
            dir.join("best")
        } else {
            dir.to_path_buf()
        };
        let model_config = crate::hub::transformer::read_checked_config(&dir)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        let task = TranslationTask::new(training, model_config, tokenizer, pairs)?;
        let weights = dir.join("model.safetensors");
        let report = load_parameters(&task.vars, &weights)?;
        if let Some(name) = report.unused.first() {
            let message = format!("tensor `{name}` is not a parameter of the model its config.json describes");
            return Err(Error::input(&weights, None, message));
        }
        Ok(task)
    }

    /// Training pairs kept, training pairs skipped (longer than `max_len`), validation pairs.
    pub fn data_sizes(&self) -> (usize, usize, usize) {
        (self.train.len(), self.skipped, self.valid.len())
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        batch_of(&self.tokenizer, &self.train, indices, &self.device)
    }

    /// Mean cross-entropy per real target token of one batch, teacher-forced.
    /// The projection and the loss are one kernel where the model allows ([`projected_cross_entropy`]).
    fn batch_loss(&self, batch: &Batch, mode: &mut Mode, smoothing: f64) -> Result<Tensor> {
        let hidden = self.model.decoder_states(&batch.source, &batch.source_valid, &batch.decoder_input, mode)?;
        let Some(weight) = self.model.output_weight() else {
            return self.logits_loss(&self.model.project(&hidden)?, batch, smoothing);
        };
        let (b, t, c) = hidden.dims3()?;
        let (labels, pad) = (batch.labels.reshape(b * t)?, Some(self.tokenizer.pad_id()));
        projected_cross_entropy(&hidden.reshape((b * t, c))?, weight, &labels, pad, smoothing, mode.is_train())
    }

    /// Mean cross-entropy per real target token of a batch's logits (B, T, V) against its gold labels.
    fn logits_loss(&self, logits: &Tensor, batch: &Batch, smoothing: f64) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let labels = batch.labels.reshape(b * t)?;
        cross_entropy(&logits.reshape((b * t, v))?, &labels, Some(self.tokenizer.pad_id()), smoothing)
    }
}

impl Objective for TranslationTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Teacher forcing, or at p < 1 the two passes of [`scheduled_sampling`], drawing from the task's generator.
    fn loss(&self, indices: &[usize], context: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let batch = self.batch(indices)?;
        let smoothing = self.training.label_smoothing;
        let loss = match self.training.sampling.gold_probability(context.step, context.epoch) {
            Some(p) if p < 1.0 => {
                let references: Vec<&[u32]> = indices.iter().map(|&i| self.train[i].target.as_slice()).collect();
                let sampling = &self.training.sampling;
                let logits =
                    scheduled_sampling::pass2_logits(&self.model, sampling, &batch, &references, p, context.rng, mode)?;
                self.logits_loss(&logits, &batch, smoothing)?
            }
            _ => self.batch_loss(&batch, mode, smoothing)?,
        };
        Ok((loss, batch.target_tokens))
    }

    fn gold_probability(&self, position: &StepPosition) -> Option<f64> {
        self.training.sampling.gold_probability(position.step, position.epoch)
    }
}

impl Task for TranslationTask {
    type Training = TranslationTraining;
    type Start = TransformerConfig;

    /// Reads the corpora, trains the joint vocabulary on both sides of the training data, builds the model
    /// (`vocab_size` and the special ids are set from the tokenizer). With `init_from`, the vocabulary, the
    /// model config and the weights are that model's instead, and `model_config` is not used.
    fn create(training: TranslationTraining, mut model_config: TransformerConfig) -> Result<Self> {
        let pairs = read_parallel(&training.train_source, &training.train_target)?;
        if let Some(dir) = training.init_from.clone() {
            return TranslationTask::initialised_from(&dir, training, pairs);
        }
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
        let model_config = crate::hub::transformer::read_checked_config(checkpoint)?;
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
        let t = &self.training;
        let lr = schedule::inverse_sqrt(step, self.model_config.d_model, t.warmup, t.lr_factor);
        schedule::linear_cooldown(lr, step, t.run.max_steps.unwrap_or(usize::MAX), t.num_decay_steps)
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

    use std::sync::atomic::Ordering;

    use super::scheduled_sampling::{Mix, SamplingMode};
    use crate::run_log::{read_log, LogRecord};
    use crate::train::sampling_schedule::{Decay, GoldSchedule};

    const SOURCES: &str = "the cat sleeps.\na dog runs.\ntwo men play.\nthe dog sleeps.\na cat runs fast.\n";
    const TARGETS: &str = "die Katze schläft.\nein Hund rennt.\nzwei Männer spielen.\nder Hund schläft.\n\
                           eine Katze rennt schnell.\n";

    /// A scratch directory with the corpus, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("qkv-sampling-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("src.txt"), SOURCES).unwrap();
            fs::write(dir.join("tgt.txt"), TARGETS).unwrap();
            Self(dir)
        }

        /// Batches of about two pairs, so an epoch has a few steps; dropout on; one shard unless changed.
        fn training(&self, sampling: SamplingOptions) -> TranslationTraining {
            TranslationTraining {
                train_source: self.0.join("src.txt"),
                train_target: self.0.join("tgt.txt"),
                valid_source: self.0.join("src.txt"),
                valid_target: self.0.join("tgt.txt"),
                vocab_size: 80,
                max_tokens: 24,
                max_len: 20,
                warmup: 10,
                sampling,
                run: LoopSettings {
                    num_train_epochs: Some(3),
                    shards: 1,
                    logging_steps: 1,
                    ..TranslationTraining::default().run
                },
                ..TranslationTraining::default()
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tiny() -> TransformerConfig {
        TransformerConfig {
            d_model: 16,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            ..TransformerConfig::default()
        }
    }

    /// Every step's record, stopping after `stop_after` steps.
    fn steps(trainer: &mut TranslationTrainer, stop_after: Option<usize>) -> (Finish, Vec<StepRecord>) {
        let stop = AtomicBool::new(false);
        let mut records = Vec::new();
        let finish = trainer
            .run(&stop, |event| {
                if let Event::Step(r) = event {
                    records.push(r.clone());
                    if stop_after == Some(r.step) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
        (finish, records)
    }

    fn parameters(trainer: &TranslationTrainer) -> Vec<Vec<f32>> {
        trainer.task().vars.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    fn losses(records: &[StepRecord]) -> Vec<(usize, f64)> {
        records.iter().map(|r| (r.step, r.loss)).collect()
    }

    fn rng_state(trainer: &TranslationTrainer) -> String {
        serde_json::to_string(&trainer.state().task_rng).unwrap()
    }

    /// The default is teacher forcing, exactly as before sampling existed: a run with the default options, one
    /// with teacher forcing named, and one with scheduled sampling at a constant p = 1 train to the same losses
    /// and parameters bit for bit (dropout on), none draws from the task's generator, and options written
    /// before the sampling fields existed read as teacher forcing.
    /// A decay needs the step it ends at: without max_steps, or longer than it, the options are refused by name.
    #[test]
    fn decay_steps_need_max_steps() {
        let mut t = TranslationTraining { num_decay_steps: 100, ..TranslationTraining::default() };
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("num_decay_steps") && err.contains("max_steps"), "{err}");
        t.run.max_steps = Some(50);
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("num_decay_steps") && err.contains("at most max_steps = 50"), "{err}");
        t.run.max_steps = Some(100);
        t.validate().unwrap();
    }

    #[test]
    fn teacher_forcing_is_the_default_and_draws_nothing() {
        let dir = Scratch::new("default");
        let run = |sampling: SamplingOptions| {
            let mut trainer = TranslationTrainer::in_memory(dir.training(sampling), tiny()).unwrap();
            let fresh = rng_state(&trainer);
            let (_, records) = steps(&mut trainer, None);
            assert_eq!(rng_state(&trainer), fresh, "{:?} drew from the task's generator", sampling.mode);
            (records, parameters(&trainer))
        };
        let (default_records, default_parameters) = run(SamplingOptions::default());
        assert!(default_records.len() >= 6 && default_records.iter().all(|r| r.gold_probability.is_none()));
        let named = SamplingOptions { mode: SamplingMode::TeacherForcing, ..SamplingOptions::default() };
        let at_one = SamplingOptions {
            mode: SamplingMode::Scheduled,
            schedule: GoldSchedule { decay: Decay::Linear, k: 1.0, c: 0.0, ..GoldSchedule::default() },
            ..SamplingOptions::default()
        };
        for sampling in [named, at_one] {
            let (records, parameters) = run(sampling);
            assert_eq!(losses(&records), losses(&default_records), "{:?}", sampling.mode);
            assert_eq!(parameters, default_parameters, "{:?}", sampling.mode);
        }
        let old = serde_json::json!({"train_source": "a", "vocab_size": 80, "num_train_epochs": 2});
        let read: TranslationTraining = super::super::options::options_from_json(old, Path::new("old.json")).unwrap();
        assert_eq!(read.sampling, SamplingOptions::default());
        assert_eq!((read.sampling.mode, read.init_from), (SamplingMode::TeacherForcing, None));
    }

    /// Interrupted after step 4 and resumed, each sampling mode repeats the uninterrupted run's losses and p
    /// bit for bit (the draws come from the checkpointed task generator), and log.jsonl carries p.
    #[test]
    fn a_resumed_run_with_sampling_repeats_the_uninterrupted_one() {
        let dir = Scratch::new("resume");
        let falling = GoldSchedule { decay: Decay::Linear, k: 0.9, c: 0.08, floor: 0.2, ..GoldSchedule::default() };
        let sample = SamplingOptions {
            mode: SamplingMode::Scheduled,
            mix: Mix::Sample,
            schedule: falling,
            ..SamplingOptions::default()
        };
        let through = SamplingOptions { mix: Mix::TopK, top_k: 3, through_pass1: true, ..sample };
        let word = SamplingOptions { mode: SamplingMode::WordOracle, gumbel_tau: 0.7, ..sample };
        for (name, sampling, shards) in [("sample", sample, 1), ("top-k", through, 2), ("word", word, 1)] {
            let mut training = dir.training(sampling);
            training.run.shards = shards;
            let straight_dir = dir.0.join(format!("{name}-straight"));
            let mut straight = TranslationTrainer::create(&straight_dir, training.clone(), tiny()).unwrap();
            let (_, expected) = steps(&mut straight, None);
            assert!(expected.len() > 6, "{name}: {} steps", expected.len());
            assert!(expected.iter().all(|r| r.gold_probability.is_some()));
            assert!(expected.last().unwrap().gold_probability < expected[0].gold_probability, "p falls");

            let resumed_dir = dir.0.join(format!("{name}-resumed"));
            let mut first = TranslationTrainer::create(&resumed_dir, training, tiny()).unwrap();
            let (finish, mut records) = steps(&mut first, Some(4));
            assert_eq!(finish, Finish::Interrupted);
            drop(first);
            let mut second = TranslationTrainer::resume(&resumed_dir).unwrap();
            records.extend(steps(&mut second, None).1);
            let seen = |r: &[StepRecord]| -> Vec<(usize, f64, Option<f64>)> {
                r.iter().map(|r| (r.step, r.loss, r.gold_probability)).collect()
            };
            assert_eq!(seen(&records), seen(&expected), "{name}");

            let logged: Vec<Option<f64>> = read_log(&straight_dir.join("log.jsonl"))
                .unwrap()
                .into_iter()
                .filter_map(|r| if let LogRecord::Train(r) = r { Some(r.gold_probability) } else { None })
                .collect();
            // serde_json reads floats back to within an ulp or so, not always bit for bit.
            assert_eq!(logged.len(), expected.len());
            for (read, r) in logged.iter().zip(&expected) {
                assert!((read.unwrap() - r.gold_probability.unwrap()).abs() < 1e-12, "{name}: {read:?}");
            }
        }
    }

    /// The sentence oracle needs a trained model: without `init_from` the run is refused, naming the option;
    /// with it the task starts from that model's weights exactly, and a resumed fine-tuning run repeats the
    /// uninterrupted one.
    #[test]
    fn the_sentence_oracle_fine_tunes_a_trained_model_and_resumes_exactly() {
        let dir = Scratch::new("sentence");
        let mut base =
            TranslationTrainer::create(&dir.0.join("base"), dir.training(SamplingOptions::default()), tiny()).unwrap();
        steps(&mut base, None);
        let oracle = SamplingOptions {
            mode: SamplingMode::SentenceOracle,
            schedule: GoldSchedule { decay: Decay::Linear, k: 0.5, c: 0.0, floor: 0.0, ..GoldSchedule::default() },
            beam: 3,
            ..SamplingOptions::default()
        };
        let err = TranslationTrainer::in_memory(dir.training(oracle), tiny()).err().unwrap().to_string();
        assert!(err.contains("init_from"), "{err}");

        let training = TranslationTraining { init_from: Some(dir.0.join("base")), ..dir.training(oracle) };
        let fine = TranslationTrainer::in_memory(training.clone(), TransformerConfig::default()).unwrap();
        let best = crate::hub::read_json::<TransformerConfig>(&dir.0.join("base/best/config.json")).unwrap();
        assert_eq!(fine.task().model_config, best, "the model's config, not the one given");
        let best_weights =
            crate::hub::load_safetensors(&dir.0.join("base/best/model.safetensors"), &Device::Cpu).unwrap();
        for (name, var) in &fine.task().vars {
            let want = best_weights[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{name}");
        }

        let mut straight = TranslationTrainer::create(&dir.0.join("straight"), training.clone(), tiny()).unwrap();
        let (_, expected) = steps(&mut straight, None);
        let mut first = TranslationTrainer::create(&dir.0.join("resumed"), training.clone(), tiny()).unwrap();
        let (_, mut records) = steps(&mut first, Some(3));
        drop(first);
        let mut second = TranslationTrainer::resume(&dir.0.join("resumed")).unwrap();
        records.extend(steps(&mut second, None).1);
        assert_eq!(losses(&records), losses(&expected));
        assert!(expected.iter().all(|r| r.gold_probability == Some(0.5)));
        // The oracle's inputs really replace gold ones: teacher forcing from the same start trains otherwise.
        let forced = TranslationTraining { sampling: SamplingOptions::default(), ..training };
        let mut forced = TranslationTrainer::in_memory(forced, tiny()).unwrap();
        let (_, forced) = steps(&mut forced, None);
        assert_eq!(forced.len(), expected.len());
        assert_ne!(losses(&forced), losses(&expected));
    }
}
