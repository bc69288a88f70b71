//! Fine-tuning a BERT checkpoint for sequence classification, with the recipe of Hugging Face's Trainer:
//! AdamW (decay on matrices only), linear warm-up and decay, gradient clipping, shuffled batches padded to
//! their longest text, evaluation and a checkpoint after each epoch, the best epoch by a chosen metric kept,
//! optional early stopping — run by the shared [`Trainer`] in Hugging Face's layout ([`Layout::HuggingFace`]):
//! `checkpoint-N/` after each epoch (N the optimizer step; `--resume` continues from the newest), and the best
//! epoch's model in the output directory itself, which transformers' `AutoModelForSequenceClassification`
//! loads.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::trainer::{
    EvalRecord, Evaluation, Event, Finish, Layout, LoopSettings, Objective, Selection, StepContext, Task, Trainer,
    TrainingOptions,
};
use super::{cross_entropy, schedule, AdamWConfig};
use crate::hub::bert::{self, LoadOptions};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{read_config, LoadReport};
use crate::metrics::classification::{accuracy, f1, matthews_correlation};
use crate::models::bert::{Bert, BertArchitecture, BertConfig, BertInput};
use crate::nn::Mode;
use crate::rng::Rng;
use crate::text::labeled::{label_set, LabeledText};
use crate::text::table::{read_labeled, Columns};
use crate::{Error, Result};

/// The metric that picks the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of dev examples whose predicted class is the gold one.
    #[default]
    Accuracy,
    /// F1: of class 1 with two classes (scikit-learn's binary average), the macro average otherwise.
    F1,
    /// Matthews correlation (CoLA's metric).
    Mcc,
}

impl Metric {
    /// The name it is logged under.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
        }
    }
}

/// Options, named and defaulted as Hugging Face's `TrainingArguments` (and run_glue's `model_name_or_path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierTraining {
    /// The pre-trained directory the run started from (set by [`Trainer::create`]).
    pub model_name_or_path: PathBuf,
    /// Training examples: CSV, TSV, JSON lines or Parquet with texts (and text pairs) and labels.
    pub train_file: PathBuf,
    /// Dev examples, in the same form, evaluated after every epoch.
    pub dev_file: PathBuf,
    /// The data files start with a header row (CSV/TSV read by position).
    pub header: bool,
    /// The columns of JSON-lines and Parquet files (and of CSV/TSV with a header row, when one is named).
    #[serde(flatten)]
    pub columns: Columns,
    /// Peak learning rate, reached after warm-up and decayed linearly to 0 (default 5e-5).
    pub learning_rate: f64,
    /// Examples per training batch (default 32).
    pub per_device_train_batch_size: usize,
    /// Examples per evaluation batch (default 64); it changes speed and memory, not the scores.
    pub per_device_eval_batch_size: usize,
    /// Warm-up as a share of all updates.
    pub warmup_ratio: f64,
    /// Longer inputs are cut (longest text first), as the tokenizer's `truncation=True` does.
    pub max_length: usize,
    /// The dev metric that picks the best epoch, whose model is kept (default: accuracy).
    pub metric_for_best_model: Metric,
    /// Epochs, AdamW, clipping, seed, checkpoints and early stopping, flattened into the same options.
    #[serde(flatten)]
    pub run: LoopSettings,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self {
            model_name_or_path: PathBuf::new(),
            train_file: PathBuf::new(),
            dev_file: PathBuf::new(),
            header: false,
            columns: Columns::default(),
            learning_rate: 5e-5,
            per_device_train_batch_size: 32,
            per_device_eval_batch_size: 64,
            warmup_ratio: 0.0,
            max_length: 128,
            metric_for_best_model: Metric::Accuracy,
            run: LoopSettings {
                num_train_epochs: Some(3),
                adam: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
                max_grad_norm: Some(1.0),
                seed: 42,
                save_total_limit: None,
                ..LoopSettings::default()
            },
        }
    }
}

impl TrainingOptions for ClassifierTraining {
    fn loop_settings(&self) -> &LoopSettings {
        &self.run
    }

    fn loop_settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.run
    }

    fn data_files(&self) -> Vec<(&'static str, &Path)> {
        vec![("train_file", &self.train_file), ("dev_file", &self.dev_file)]
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size),
            ("max_length", self.max_length),
        ] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::config("learning_rate", self.learning_rate, "a positive number"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::config("warmup_ratio", self.warmup_ratio, "a share in [0, 1)"));
        }
        if self.run.num_train_epochs.is_none() && self.run.max_steps.is_none() {
            let expected = "a number of epochs or max_steps: the learning rate decays linearly over the run";
            return Err(Error::config("num_train_epochs", "none", expected));
        }
        Ok(())
    }
}

/// An encoded example: ids, segments, label.
struct Encoded {
    ids: Vec<u32>,
    types: Vec<u32>,
    label: usize,
}

/// The fine-tuning task of the shared [`Trainer`].
pub struct ClassificationTask {
    training: ClassifierTraining,
    model: Bert,
    vars: Vec<(String, Var)>,
    labels: Vec<String>,
    train: Vec<Encoded>,
    dev: Vec<Encoded>,
    /// The tokenizer files of the pre-trained directory, copied into every saved model.
    tokenizer_files: Vec<(&'static str, Vec<u8>)>,
    total_steps: usize,
    warmup: usize,
    device: Device,
}

/// A BERT classifier being fine-tuned.
pub type ClassificationTrainer = Trainer<ClassificationTask>;

impl ClassificationTask {
    /// Reads and encodes the data with the tokenizer of `model_dir`, and builds the classifier over `config`
    /// (its weights: those of `model_dir`, a fresh head where it has none).
    fn new(training: ClassifierTraining, model_dir: &Path, config: Option<BertConfig>) -> Result<Self> {
        let device = training.run.device.device()?;
        let train_rows = read_labeled(&training.train_file, &training.columns, training.header)?;
        let dev_rows = read_labeled(&training.dev_file, &training.columns, training.header)?;
        // A resumed run (its checkpoint's config given) keeps the label order it started with.
        let resumed = config.is_some();
        let mut config = match config {
            Some(config) => config,
            None => read_config(model_dir)?,
        };
        let labels = match config.id2label.as_ref().filter(|_| resumed) {
            Some(id2label) => (0..id2label.len())
                .map(|i| id2label.get(&i.to_string()).cloned().unwrap_or_else(|| format!("LABEL_{i}")))
                .collect(),
            None => label_set(&train_rows),
        };
        config.set_labels(&labels, labels.len());
        let tokenizer = PretrainedTokenizer::from_dir(model_dir)?;
        let train = encode(&tokenizer, &train_rows, &labels, &training, &training.train_file)?;
        let dev = encode(&tokenizer, &dev_rows, &labels, &training, &training.dev_file)?;
        let options = LoadOptions {
            architecture: Some(BertArchitecture::SequenceClassification),
            initialize_missing: true,
            seed: training.run.seed,
        };
        let loaded = bert::load_with_config(model_dir, config, &options, &device)?;
        let mut tokenizer_files = Vec::new();
        for name in TOKENIZER_FILES {
            let path = model_dir.join(name);
            if path.exists() {
                tokenizer_files.push((name, fs::read(&path).map_err(|e| Error::io(&path, e))?));
            }
        }
        let steps_per_epoch = train
            .len()
            .div_ceil(training.per_device_train_batch_size)
            .div_ceil(training.run.gradient_accumulation_steps);
        let by_epochs = training.run.num_train_epochs.map_or(usize::MAX, |n| n * steps_per_epoch);
        let total_steps = training.run.max_steps.unwrap_or(usize::MAX).min(by_epochs);
        let warmup = (training.warmup_ratio * total_steps as f64).ceil() as usize;
        let (model, vars) = (loaded.model, loaded.vars);
        Ok(Self { training, model, vars, labels, train, dev, tokenizer_files, total_steps, warmup, device })
    }

    /// The class names, in the order of the classifier's outputs.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Training and dev examples.
    pub fn data_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.dev.len())
    }

    /// The BERT being fine-tuned, with its sequence-classification head.
    pub fn model(&self) -> &Bert {
        &self.model
    }
}

impl Objective for ClassificationTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, indices: &[usize], _: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let examples: Vec<&Encoded> = indices.iter().map(|&i| &self.train[i]).collect();
        let (input, labels) = batch(&examples, &self.device)?;
        let logits = logits(&self.model, &input, mode)?;
        Ok((cross_entropy(&logits, &labels, None, 0.0)?, examples.len()))
    }
}

impl Task for ClassificationTask {
    type Training = ClassifierTraining;
    /// The pre-trained BERT directory (config.json, weights, tokenizer).
    type Start = PathBuf;
    const DROPOUT_SALT: u64 = 0xb3e7;
    const LAYOUT: Layout = Layout::HuggingFace;

    fn create(mut training: ClassifierTraining, model_dir: PathBuf) -> Result<Self> {
        training.model_name_or_path = model_dir.clone();
        Self::new(training, &model_dir, None)
    }

    fn reopen(checkpoint: &Path, training: ClassifierTraining) -> Result<Self> {
        let config: BertConfig = read_config(checkpoint)?;
        Self::new(training, checkpoint, Some(config))
    }

    fn training(&self) -> &ClassifierTraining {
        &self.training
    }

    /// The training examples in batches, shuffled each epoch by one generator seeded with the seed and carried
    /// from epoch to epoch (replayed up to `epoch`, so a resumed run sees the same order).
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let mut rng = Rng::seed_from_u64(self.training.run.seed);
        let mut order: Vec<usize> = Vec::new();
        for _ in 0..=epoch {
            order = (0..self.train.len()).collect();
            order.shuffle(&mut rng);
        }
        Ok(order.chunks(self.training.per_device_train_batch_size).map(<[usize]>::to_vec).collect())
    }

    fn learning_rate(&self, step: usize) -> f64 {
        schedule::linear_warmup_decay(step, self.warmup, self.total_steps, self.training.learning_rate)
    }

    /// Loss, accuracy, F1 and Matthews correlation over the dev set.
    fn evaluate(&self) -> Result<Evaluation> {
        let (mut predicted, mut gold) = (Vec::with_capacity(self.dev.len()), Vec::with_capacity(self.dev.len()));
        let mut loss_sum = 0.0;
        for chunk in self.dev.chunks(self.training.per_device_eval_batch_size) {
            let examples: Vec<&Encoded> = chunk.iter().collect();
            let (input, labels) = batch(&examples, &self.device)?;
            let logits = logits(&self.model, &input, &mut Mode::Eval)?;
            let loss = cross_entropy(&logits, &labels, None, 0.0)?.to_scalar::<f32>()? as f64;
            loss_sum += loss * chunk.len() as f64;
            predicted.extend(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?.into_iter().map(|p| p as usize));
            gold.extend(chunk.iter().map(|e| e.label));
        }
        let classes = self.labels.len();
        let metrics = [
            (Metric::Accuracy.name().to_string(), accuracy(&predicted, &gold)?),
            (Metric::F1.name().to_string(), f1(&predicted, &gold, classes)?),
            (Metric::Mcc.name().to_string(), matthews_correlation(&predicted, &gold, classes)?),
        ];
        Ok(Evaluation { val_loss: loss_sum / self.dev.len().max(1) as f64, metrics: metrics.into() })
    }

    /// The chosen metric; a tie keeps the earlier epoch, as Hugging Face's Trainer does.
    fn selection(&self) -> Selection {
        Selection { metric: Some(self.training.metric_for_best_model.name()), ties_by_loss: false }
    }

    /// config.json and model.safetensors under transformers' names, plus the pre-trained tokenizer files.
    fn save_model(&self, dir: &Path) -> Result<()> {
        bert::save(dir, &self.model, &self.vars)?;
        for (name, bytes) in &self.tokenizer_files {
            crate::atomic_file::write_atomically(&dir.join(name), bytes)?;
        }
        Ok(())
    }

    fn load_model(&self, dir: &Path) -> Result<LoadReport> {
        bert::load_into(dir, &self.vars, BertArchitecture::SequenceClassification, false)
    }
}

/// What a finished fine-tuning run produced.
#[derive(Debug, Clone)]
pub struct FineTuned {
    /// The best evaluation (its model is in the output directory).
    pub best: EvalRecord,
    /// Every evaluation of this session, in order.
    pub evaluations: Vec<EvalRecord>,
    /// How the run ended.
    pub finish: Finish,
    /// Wall-clock seconds the call took, loading and evaluation included.
    pub seconds: f64,
}

/// Fine-tunes the BERT in `model_dir` on `training`'s files into a new `out_dir` (see the module
/// documentation), reporting the trainer's events. The one-call form of
/// `ClassificationTrainer::create(...)?.run(...)`.
pub fn fine_tune(
    model_dir: &Path,
    out_dir: &Path,
    training: &ClassifierTraining,
    mut on_event: impl FnMut(&Event),
) -> Result<FineTuned> {
    let started = Instant::now();
    let mut trainer = ClassificationTrainer::create(out_dir, training.clone(), model_dir.to_path_buf())?;
    let mut evaluations = Vec::new();
    let finish = trainer.run(&std::sync::atomic::AtomicBool::new(false), |event| {
        if let Event::Eval(record) = event {
            evaluations.push(record.clone());
        }
        on_event(event)
    })?;
    let best_step = trainer.state().best_step;
    let best = evaluations
        .iter()
        .find(|r| Some(r.step) == best_step)
        .cloned()
        .ok_or_else(|| Error::config("num_train_epochs", 0, "at least one epoch"))?;
    Ok(FineTuned { best, evaluations, finish, seconds: started.elapsed().as_secs_f64() })
}

/// Tokenizes rows ([CLS] text [SEP] (text_b [SEP])), cutting them to `max_length`; labels become class ids.
fn encode(
    tokenizer: &PretrainedTokenizer,
    rows: &[LabeledText],
    labels: &[String],
    training: &ClassifierTraining,
    path: &Path,
) -> Result<Vec<Encoded>> {
    let mut encoded = Vec::with_capacity(rows.len());
    for (chunk_index, chunk) in rows.chunks(256).enumerate() {
        let inputs: Vec<(&str, Option<&str>)> = chunk.iter().map(|r| (r.text.as_str(), r.text_b.as_deref())).collect();
        let batch = tokenizer.encode(&inputs, training.max_length, Truncation::LongestFirst)?;
        for (i, row) in chunk.iter().enumerate() {
            let label = labels.iter().position(|l| *l == row.label).ok_or_else(|| {
                let index = chunk_index * 256 + i;
                let message = format!("row {}: label {:?} does not occur in the training file", index + 1, row.label);
                Error::input(path, None, message)
            })?;
            let length = batch.attention_mask[i].iter().filter(|&&m| m == 1).count();
            encoded.push(Encoded {
                ids: batch.input_ids[i][..length].to_vec(),
                types: batch.token_type_ids[i][..length].to_vec(),
                label,
            });
        }
    }
    Ok(encoded)
}

/// Examples padded to the longest: the model input and the labels (B).
fn batch(examples: &[&Encoded], device: &Device) -> Result<(BertInput, Tensor)> {
    let s = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let b = examples.len();
    let (mut ids, mut types, mut mask) = (vec![0u32; b * s], vec![0u32; b * s], vec![0u32; b * s]);
    for (row, e) in examples.iter().enumerate() {
        let n = e.ids.len();
        ids[row * s..row * s + n].copy_from_slice(&e.ids);
        types[row * s..row * s + n].copy_from_slice(&e.types);
        mask[row * s..row * s + n].fill(1);
    }
    let input = BertInput {
        input_ids: Tensor::from_vec(ids, (b, s), device)?,
        attention_mask: Some(Tensor::from_vec(mask, (b, s), device)?),
        token_type_ids: Some(Tensor::from_vec(types, (b, s), device)?),
    };
    let labels: Vec<u32> = examples.iter().map(|e| e.label as u32).collect();
    Ok((input, Tensor::from_vec(labels, b, device)?))
}

fn logits(model: &Bert, input: &BertInput, mode: &mut Mode) -> Result<Tensor> {
    let mut outputs = model.forward(input, mode)?;
    outputs.remove("logits").ok_or_else(|| Error::config("architecture", "no logits", "a classification head"))
}

const TOKENIZER_FILES: [&str; 4] = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"];

/// Loads a fine-tuned directory for prediction (evaluation mode) onto `device`.
pub fn load_classifier(dir: &Path, device: &Device) -> Result<Bert> {
    Ok(bert::load_frozen(dir, Some(BertArchitecture::SequenceClassification), device)?.0)
}
