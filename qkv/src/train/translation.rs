//! Training the encoder-decoder Transformer on a parallel corpus (§5 of the paper): a joint subword vocabulary,
//! batches by token count, teacher forcing with label smoothing, Adam with the warm-up schedule, evaluation
//! (loss and BLEU) after every epoch, atomic checkpoints, exact resume.
//!
//! A run directory holds:
//! - `training.json` (this [`TranslationTraining`]), `config.json` (the model), `tokenizer.json`;
//! - `checkpoints/step-NNNNNNNN/`: a complete model directory plus `optimizer.safetensors` and `state.json`,
//!   the last `keep_last` of them (what `average` and `--resume` use);
//! - `best/`: the model directory of the best validation BLEU so far;
//! - `log.jsonl`: one record per logged step (`"kind": "train"`) and per evaluation (`"kind": "eval"`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    load_parameters, load_tensors, replace_dir_atomically, save_parameters, save_tensors, write_atomically,
};
use super::{cross_entropy, schedule, AdamW, AdamWConfig};
use crate::decode::{beam_search, DecodeOptions};
use crate::metrics::bleu::{corpus_bleu, BleuOptions};
use crate::metrics::chrf::{corpus_chrf, ChrfOptions};
use crate::models::{Transformer, TransformerConfig};
use crate::nn::{mode::Rng, params::named_vars, seeded_var_builder, Mode};
use crate::text::batch::{token_batches, Batch, Example};
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
    /// Batches whose gradients are summed before one optimizer step.
    pub accumulate: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps even mid-epoch.
    pub max_steps: Option<usize>,
    /// Stop (evaluate, checkpoint) once training has run this many minutes in all, resumes included.
    pub time_limit_minutes: Option<f64>,
    /// lr = lr_factor · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5), eq. (3).
    pub lr_factor: f64,
    pub warmup: usize,
    pub adam: AdamWConfig,
    pub label_smoothing: f64,
    pub clip_norm: Option<f64>,
    /// Training pairs with more subword tokens than this on either side are skipped (and counted).
    pub max_len: usize,
    pub seed: u64,
    /// Step checkpoints kept (older ones are deleted).
    pub keep_last: usize,
    /// Also checkpoint every this many steps (besides each epoch's end).
    pub save_every: Option<usize>,
    /// Training records are written every this many steps.
    pub log_every: usize,
    /// Decoding for the validation BLEU (greedy by default: cheap, and enough to rank checkpoints).
    pub eval_decode: DecodeOptions,
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
            accumulate: 1,
            epochs: 20,
            max_steps: None,
            time_limit_minutes: None,
            lr_factor: 1.0,
            warmup: 4000,
            // The paper's Adam: β₂ = 0.98, ε = 10⁻⁹, no weight decay.
            adam: AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 },
            label_smoothing: 0.1,
            clip_norm: Some(1.0),
            max_len: 256,
            seed: 1,
            keep_last: 10,
            save_every: None,
            log_every: 10,
            eval_decode: DecodeOptions::greedy(),
        }
    }
}

impl TranslationTraining {
    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("max_tokens", self.max_tokens),
            ("accumulate", self.accumulate),
            ("epochs", self.epochs),
            ("max_len", self.max_len),
            ("log_every", self.log_every),
            ("keep_last", self.keep_last),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if self.max_tokens < self.max_len + 1 {
            let expected = format!("≥ max_len + 1 = {} so the longest kept pair fits a batch", self.max_len + 1);
            return Err(Error::config("max_tokens", self.max_tokens, expected));
        }
        if let Some(minutes) = self.time_limit_minutes {
            if !(minutes > 0.0 && minutes.is_finite()) {
                return Err(Error::config("time_limit_minutes", minutes, "a positive number of minutes"));
            }
        }
        if !(self.lr_factor > 0.0 && self.lr_factor.is_finite()) {
            return Err(Error::config("lr_factor", self.lr_factor, "a positive number"));
        }
        self.eval_decode.validate()
    }
}

/// Where a run is: saved in each checkpoint's `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already trained on.
    pub batches_done: usize,
    /// The dropout generator, so a resumed run draws the same masks as an uninterrupted one.
    pub dropout_rng: Rng,
    pub best_bleu: Option<f64>,
    /// Validation loss of the best checkpoint: breaks BLEU ties (common on small validation sets).
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Wall-clock seconds spent in `run` so far, over all resumes (for `time_limit_minutes`).
    #[serde(default)]
    pub seconds: f64,
}

/// What the training loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// Data read and filtered; `skipped` training pairs were longer than `max_len` tokens.
    Ready {
        train_pairs: usize,
        skipped: usize,
        valid_pairs: usize,
        parameters: usize,
        steps_per_epoch: usize,
    },
    Step(StepRecord),
    Eval(EvalRecord),
    Checkpoint {
        path: PathBuf,
        step: usize,
        best: bool,
    },
}

/// One optimizer step, as written to log.jsonl (`"kind": "train"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    /// Label-smoothed cross-entropy per target token.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// One evaluation, as written to log.jsonl (`"kind": "eval"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub epoch: usize,
    /// Cross-entropy per target token without smoothing (ln of the perplexity).
    pub val_loss: f64,
    pub val_bleu: f64,
    /// chrF2: informative where BLEU is not (one-word outputs have no 4-grams, so their BLEU is 0).
    pub val_chrf: f64,
    pub seconds: f64,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Completed,
    /// The stop flag was raised (Ctrl-C); a checkpoint was written first.
    Interrupted,
}

/// A translation model being trained, with its data, optimizer and position in the run.
pub struct TranslationTrainer {
    run_dir: PathBuf,
    training: TranslationTraining,
    model_config: TransformerConfig,
    tokenizer: Tokenizer,
    model: Transformer,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    train: Vec<Example>,
    valid: Vec<Example>,
    valid_references: Vec<String>,
    skipped: usize,
    state: TrainState,
    device: Device,
    /// When this session's `run` began and the training seconds before it.
    clock: Option<(Instant, f64)>,
}

impl TranslationTrainer {
    /// Starts a run in `run_dir` (created; an existing run there is an error — resume it instead): reads the
    /// corpora, trains the joint vocabulary on both sides of the training data, builds the model
    /// (`model_config.vocab_size` and the special ids are set from the tokenizer).
    pub fn create(run_dir: &Path, training: TranslationTraining, mut model_config: TransformerConfig) -> Result<Self> {
        training.validate()?;
        if run_dir.join("training.json").exists() {
            return Err(Error::input(run_dir, None, "already holds a training run: resume it or choose another --out"));
        }
        fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let pairs = read_parallel(&training.train_source, &training.train_target)?;
        let texts: Vec<&str> = pairs.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()]).collect();
        let tokenizer = Tokenizer::train(&texts, training.subword, training.vocab_size)?;
        model_config.vocab_size = tokenizer.vocab_size();
        model_config.pad_token_id = tokenizer.pad_id();
        model_config.bos_token_id = tokenizer.bos_id();
        model_config.eos_token_id = tokenizer.eos_id();
        tokenizer.save(&run_dir.join("tokenizer.json"))?;
        write_json(&run_dir.join("config.json"), &model_config)?;
        write_json(&run_dir.join("training.json"), &training)?;
        let state = TrainState {
            step: 0,
            epoch: 0,
            batches_done: 0,
            dropout_rng: Rng::seed_from_u64(training.seed ^ 0xd50f),
            best_bleu: None,
            best_val_loss: None,
            best_step: None,
            seconds: 0.0,
        };
        Self::assemble(run_dir, training, model_config, tokenizer, pairs, state)
    }

    /// Continues the run in `run_dir` from its latest checkpoint: the same data order, dropout masks and
    /// optimizer state as if it had never stopped.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        let checkpoint = latest_checkpoint(run_dir)?
            .ok_or_else(|| Error::input(run_dir.join("checkpoints"), None, "no checkpoint to resume from"))?;
        let training: TranslationTraining = read_json(&checkpoint.join("training.json"))?;
        let model_config: TransformerConfig = read_json(&checkpoint.join("config.json"))?;
        let tokenizer = Tokenizer::load(&checkpoint.join("tokenizer.json"))?;
        let state: TrainState = read_json(&checkpoint.join("state.json"))?;
        let pairs = read_parallel(&training.train_source, &training.train_target)?;
        let mut trainer = Self::assemble(run_dir, training, model_config, tokenizer, pairs, state)?;
        load_parameters(&trainer.vars, &checkpoint.join("model.safetensors"))?;
        let moments = load_tensors(&checkpoint.join("optimizer.safetensors"))?;
        trainer.optimizer.load_state(trainer.state.step, moments)?;
        Ok(trainer)
    }

    fn assemble(
        run_dir: &Path,
        training: TranslationTraining,
        model_config: TransformerConfig,
        tokenizer: Tokenizer,
        pairs: Vec<SentencePair>,
        state: TrainState,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let (train, skipped) = encode_pairs(&tokenizer, &pairs, Some(training.max_len))?;
        if train.is_empty() {
            let message = format!("no training pair has at most max_len = {} tokens per side", training.max_len);
            return Err(Error::input(&training.train_source, None, message));
        }
        let valid_pairs = read_parallel(&training.valid_source, &training.valid_target)?;
        let (valid, _) = encode_pairs(&tokenizer, &valid_pairs, None)?;
        let valid_references = valid_pairs.into_iter().map(|p| p.target).collect();
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, training.seed, DType::F32, &device);
        let model = Transformer::new(&model_config, vb)?;
        let vars = named_vars(&varmap);
        let optimizer = AdamW::new(vars.clone(), training.adam, AdamW::decay_matrices)?;
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            training,
            model_config,
            tokenizer,
            model,
            vars,
            optimizer,
            train,
            valid,
            valid_references,
            skipped,
            state,
            device,
            clock: None,
        })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The batches of epoch `epoch` (0-based): the same for a given seed whether or not the run was resumed.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let lengths: Vec<(usize, usize)> = self.train.iter().map(|e| (e.source.len(), e.target.len())).collect();
        let mut rng = Rng::seed_from_u64(self.training.seed.wrapping_mul(0x9e37_79b9).wrapping_add(epoch as u64));
        token_batches(&lengths, self.training.max_tokens, Some(&mut rng))
    }

    /// Trains until the configured epochs (or steps) are done or `stop` is raised, reporting through
    /// `on_event`. Evaluates and checkpoints after every epoch. A non-finite loss ends the run with an error
    /// and writes nothing, so the last checkpoint stays the last good one.
    pub fn run(&mut self, stop: &AtomicBool, mut on_event: impl FnMut(&Event)) -> Result<Finish> {
        let steps_per_epoch = self.epoch_batches(self.state.epoch)?.len().div_ceil(self.training.accumulate);
        on_event(&Event::Ready {
            train_pairs: self.train.len(),
            skipped: self.skipped,
            valid_pairs: self.valid.len(),
            parameters: self.vars.iter().map(|(_, v)| v.elem_count()).sum(),
            steps_per_epoch,
        });
        let mut log = LogFile::open(&self.run_dir.join("log.jsonl"))?;
        self.clock = Some((Instant::now(), self.state.seconds));
        while self.state.epoch < self.training.epochs && !self.steps_exhausted() {
            let batches = self.epoch_batches(self.state.epoch)?;
            while self.state.batches_done < batches.len() {
                if stop.load(Ordering::Relaxed) {
                    self.save_checkpoint(false, &mut on_event)?;
                    return Ok(Finish::Interrupted);
                }
                if self.steps_exhausted() {
                    break;
                }
                let end = (self.state.batches_done + self.training.accumulate).min(batches.len());
                let record = self.step(&batches[self.state.batches_done..end])?;
                self.state.batches_done = end;
                if record.step % self.training.log_every == 0 || end == batches.len() {
                    log.write("train", &record)?;
                }
                on_event(&Event::Step(record));
                if self.training.save_every.is_some_and(|n| self.state.step % n == 0) {
                    self.save_checkpoint(false, &mut on_event)?;
                }
            }
            if self.state.batches_done >= batches.len() {
                self.state.epoch += 1;
                self.state.batches_done = 0;
            }
            let eval = self.evaluate()?;
            log.write("eval", &eval)?;
            on_event(&Event::Eval(eval.clone()));
            let best = match (self.state.best_bleu, self.state.best_val_loss) {
                (Some(bleu), Some(loss)) => (eval.val_bleu, -eval.val_loss) > (bleu, -loss),
                _ => true,
            };
            if best {
                self.state.best_bleu = Some(eval.val_bleu);
                self.state.best_val_loss = Some(eval.val_loss);
                self.state.best_step = Some(self.state.step);
            }
            self.save_checkpoint(best, &mut on_event)?;
        }
        Ok(Finish::Completed)
    }

    /// True once `max_steps` steps are taken or `time_limit_minutes` has passed.
    fn steps_exhausted(&self) -> bool {
        let out_of_time = self.training.time_limit_minutes.is_some_and(|m| self.elapsed_seconds() >= m * 60.0);
        out_of_time || self.training.max_steps.is_some_and(|max| self.state.step >= max)
    }

    /// Training seconds over the whole run: those of earlier sessions plus this one's.
    fn elapsed_seconds(&self) -> f64 {
        match self.clock {
            Some((started, before)) => before + started.elapsed().as_secs_f64(),
            None => self.state.seconds,
        }
    }

    /// One optimizer step over `group` (indices of batches of the current epoch's list).
    fn step(&mut self, group: &[Vec<usize>]) -> Result<StepRecord> {
        let started = Instant::now();
        let batches: Vec<Batch> = group.iter().map(|b| self.batch(b)).collect::<Result<_>>()?;
        let total_tokens: usize = batches.iter().map(|b| b.target_tokens).sum();
        let mut mode = Mode::Train(self.state.dropout_rng.clone());
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut loss_sum = 0.0;
        for batch in &batches {
            let loss = self.loss(batch, &mut mode, self.training.label_smoothing)?;
            // Each batch's mean weighted by its share of the tokens: the mean over the whole group.
            let share = batch.target_tokens as f64 / total_tokens.max(1) as f64;
            let loss = (loss * share)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::config(
                    "training loss",
                    value,
                    format!("a finite number at step {}; lower lr_factor or raise warmup", self.state.step + 1),
                ));
            }
            loss_sum += value;
            let g = loss.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (_, var) in &self.vars {
                        if let Some(new) = g.get(var) {
                            let sum = match acc.get(var) {
                                Some(old) => (old + new)?,
                                None => new.clone(),
                            };
                            acc.insert(var, sum);
                        }
                    }
                    acc
                }
            });
        }
        if let Mode::Train(rng) = mode {
            self.state.dropout_rng = rng;
        }
        let lr = self.learning_rate(self.state.step + 1);
        let grads = grads.ok_or_else(|| Error::config("accumulate", 0, "at least one batch per step"))?;
        let stats = self.optimizer.step(&grads, lr, self.training.clip_norm)?;
        self.state.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepRecord {
            step: self.state.step,
            epoch: self.state.epoch + 1,
            loss: loss_sum,
            lr,
            grad_norm: stats.grad_norm,
            tokens: total_tokens,
            tokens_per_s: total_tokens as f64 / seconds.max(1e-9),
        })
    }

    fn learning_rate(&self, step: usize) -> f64 {
        schedule::inverse_sqrt(step, self.model_config.d_model, self.training.warmup, self.training.lr_factor)
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        batch_of(&self.tokenizer, &self.train, indices, &self.device)
    }

    /// Mean cross-entropy per real target token of one batch.
    fn loss(&self, batch: &Batch, mode: &mut Mode, smoothing: f64) -> Result<Tensor> {
        let logits = self.model.forward(&batch.source, &batch.source_valid, &batch.decoder_input, mode)?;
        let (b, t, v) = logits.dims3()?;
        let labels = batch.labels.reshape(b * t)?;
        cross_entropy(&logits.reshape((b * t, v))?, &labels, Some(self.tokenizer.pad_id()), smoothing)
    }

    /// Validation loss (unsmoothed) and corpus BLEU of decoded validation sources against the raw references.
    pub fn evaluate(&self) -> Result<EvalRecord> {
        let started = Instant::now();
        let lengths: Vec<(usize, usize)> = self.valid.iter().map(|e| (e.source.len(), e.target.len())).collect();
        let budget = self.training.max_tokens.max(lengths.iter().map(|&(s, t)| s.max(t) + 1).max().unwrap_or(1));
        let batches = token_batches(&lengths, budget, None::<&mut Rng>)?;
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        let mut hypotheses = vec![String::new(); self.valid.len()];
        for indices in &batches {
            let batch = batch_of(&self.tokenizer, &self.valid, indices, &self.device)?;
            let loss = self.loss(&batch, &mut Mode::Eval, 0.0)?.to_scalar::<f32>()? as f64;
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
        Ok(EvalRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            val_loss: loss_sum / tokens.max(1) as f64,
            val_bleu: bleu.score,
            val_chrf: chrf.score,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes `checkpoints/step-N` (and `best/` when `best`), then deletes step checkpoints beyond `keep_last`.
    fn save_checkpoint(&mut self, best: bool, on_event: &mut impl FnMut(&Event)) -> Result<()> {
        self.state.seconds = self.elapsed_seconds();
        let dir = self.run_dir.join("checkpoints").join(format!("step-{:08}", self.state.step));
        fs::create_dir_all(self.run_dir.join("checkpoints")).map_err(|e| Error::io(&self.run_dir, e))?;
        replace_dir_atomically(&dir, |tmp| {
            self.write_model_dir(tmp)?;
            write_json(&tmp.join("training.json"), &self.training)?;
            write_json(&tmp.join("state.json"), &self.state)?;
            let (_, moments) = self.optimizer.state()?;
            save_tensors(&moments, &tmp.join("optimizer.safetensors"))
        })?;
        on_event(&Event::Checkpoint { path: dir.clone(), step: self.state.step, best: false });
        if best {
            let best_dir = self.run_dir.join("best");
            replace_dir_atomically(&best_dir, |tmp| {
                self.write_model_dir(tmp)?;
                write_json(&tmp.join("state.json"), &self.state)
            })?;
            on_event(&Event::Checkpoint { path: best_dir, step: self.state.step, best: true });
        }
        let mut kept = step_checkpoints(&self.run_dir)?;
        while kept.len() > self.training.keep_last {
            let old = kept.remove(0);
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// config.json, model.safetensors and tokenizer.json: what `translate` loads.
    fn write_model_dir(&self, dir: &Path) -> Result<()> {
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

/// The padded batch of `examples[indices]`, with the tokenizer's special ids.
pub fn batch_of(tokenizer: &Tokenizer, examples: &[Example], indices: &[usize], device: &Device) -> Result<Batch> {
    let chosen: Vec<&Example> = indices.iter().map(|&i| &examples[i]).collect();
    Batch::new(&chosen, tokenizer.pad_id(), tokenizer.bos_id(), tokenizer.eos_id(), device)
}

/// Step checkpoint directories of a run, oldest first.
pub fn step_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.strip_prefix("step-").is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()))
                })
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest step checkpoint of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(step_checkpoints(run_dir)?.pop())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::input(path, None, e))?;
    write_atomically(path, text.as_bytes())
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, Some(e.line()), e))
}

/// The JSONL training log, appended to (a resumed run continues the same file).
struct LogFile {
    path: PathBuf,
    file: fs::File,
}

impl LogFile {
    fn open(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    fn write(&mut self, kind: &str, record: &impl Serialize) -> Result<()> {
        let mut value = serde_json::to_value(record).map_err(|e| Error::input(&self.path, None, e))?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("kind".into(), kind.into());
        }
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))
    }
}

/// A trained translation model loaded from a model directory (config.json, model.safetensors,
/// tokenizer.json): a run's `best/`, one of its checkpoints, or an averaged model.
pub struct TranslationModel {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub config: TransformerConfig,
}

impl TranslationModel {
    /// Loads `dir`; a run directory is accepted too and means its `best/`.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = if !dir.join("model.safetensors").exists() && dir.join("best").is_dir() {
            dir.join("best")
        } else {
            dir.to_path_buf()
        };
        let config: TransformerConfig = read_json(&dir.join("config.json"))?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let model = Transformer::new(&config, vb)?;
        load_parameters(&named_vars(&varmap), &dir.join("model.safetensors"))?;
        Ok(Self { model, tokenizer, config })
    }

    /// Translates sentences in batches of about `max_tokens` source tokens, longest first, returning them in
    /// input order.
    pub fn translate(&self, sentences: &[String], options: &DecodeOptions, max_tokens: usize) -> Result<Vec<String>> {
        let t = &self.tokenizer;
        let examples: Vec<Example> = sentences
            .iter()
            .map(|s| Ok(Example { source: t.encode(s)?, target: Vec::new() }))
            .collect::<Result<_>>()?;
        let lengths: Vec<(usize, usize)> = examples.iter().map(|e| (e.source.len(), 0)).collect();
        let budget = max_tokens.max(lengths.iter().map(|&(s, _)| s + 1).max().unwrap_or(1));
        let mut output = vec![String::new(); sentences.len()];
        for indices in token_batches(&lengths, budget, None::<&mut Rng>)? {
            let batch = batch_of(t, &examples, &indices, &Device::Cpu)?;
            let decoded = beam_search(&self.model, &batch.source, &batch.source_valid, options)?;
            for (&i, hypothesis) in indices.iter().zip(decoded) {
                output[i] = t.decode(&hypothesis.tokens)?;
            }
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter turned NaN makes the next loss NaN: training stops with an error that says so, and the
    /// checkpoint written before is left exactly as it was.
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
            max_steps: Some(1),
            save_every: Some(1),
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
        let var = trainer.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        var.set(&var.as_tensor().affine(0.0, f64::NAN).unwrap()).unwrap();
        trainer.training.max_steps = Some(3);
        let message = trainer.run(&stop, |_| {}).unwrap_err().to_string();
        assert!(message.contains("training loss") && message.contains("finite number at step 2"), "{name}: {message}");
        assert_eq!(latest_checkpoint(&dir.join("run")).unwrap().unwrap(), good);
        assert_eq!(fs::read(good.join("model.safetensors")).unwrap(), saved);
        fs::remove_dir_all(&dir).unwrap();
    }
}
