//! Fine-tuning a BERT checkpoint for sequence classification, with the recipe of Hugging Face's Trainer:
//! AdamW (decay on matrices only), linear warm-up and decay, gradient clipping, shuffled batches padded to
//! their longest text, evaluation and a checkpoint after each epoch, the best epoch by a chosen metric kept
//! and loaded at the end, optional early stopping. Every checkpoint — and the output directory itself at the
//! end — is a Hugging Face directory that transformers' `AutoModelForSequenceClassification` loads.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::replace_dir_atomically;
use super::{cross_entropy, data_parallel, schedule, AdamW, AdamWConfig};
use crate::hub::bert::{self, LoadOptions};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{read_config, write_json};
use crate::metrics::classification::{accuracy, f1, matthews_correlation};
use crate::models::bert::{Bert, BertArchitecture, BertConfig, BertInput};
use crate::nn::mode::Rng;
use crate::nn::Mode;
use crate::text::labeled::{label_set, read_labeled_texts, LabeledText};
use crate::{Error, Result};

/// The metric that picks the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Accuracy,
    F1,
    /// Matthews correlation (CoLA's metric).
    Mcc,
}

/// Options, named and defaulted as Hugging Face's `TrainingArguments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifierTraining {
    pub train_file: PathBuf,
    pub dev_file: PathBuf,
    /// The data files start with a header row.
    pub header: bool,
    pub learning_rate: f64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub num_train_epochs: usize,
    pub weight_decay: f64,
    /// Warm-up as a share of all updates.
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Longer inputs are cut (longest text first), as the tokenizer's `truncation=True` does.
    pub max_length: usize,
    pub seed: u64,
    pub metric_for_best_model: Metric,
    /// Stop after this many evaluations without improvement.
    pub early_stopping_patience: Option<usize>,
    /// Micro-batches each batch is dealt into and run in parallel (default: one per thread; dropout draws
    /// depend on it).
    pub shards: usize,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self {
            train_file: PathBuf::new(),
            dev_file: PathBuf::new(),
            header: false,
            learning_rate: 5e-5,
            per_device_train_batch_size: 32,
            per_device_eval_batch_size: 64,
            num_train_epochs: 3,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_length: 128,
            seed: 42,
            metric_for_best_model: Metric::Accuracy,
            early_stopping_patience: None,
            shards: data_parallel::default_shards(),
        }
    }
}

impl ClassifierTraining {
    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size),
            ("num_train_epochs", self.num_train_epochs),
            ("max_length", self.max_length),
            ("shards", self.shards),
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
        Ok(())
    }
}

/// One evaluation on the dev set.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub eval_loss: f64,
    pub accuracy: f64,
    pub f1: f64,
    pub mcc: f64,
    pub seconds: f64,
}

impl EvalRecord {
    pub fn metric(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Accuracy => self.accuracy,
            Metric::F1 => self.f1,
            Metric::Mcc => self.mcc,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum ClassifierEvent {
    Ready { train: usize, dev: usize, labels: Vec<String>, total_steps: usize },
    Step { step: usize, loss: f64, learning_rate: f64 },
    Eval(EvalRecord),
    Saved { path: PathBuf, best: bool },
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct FineTuned {
    pub best: EvalRecord,
    pub evaluations: Vec<EvalRecord>,
    pub seconds: f64,
}

/// An encoded example: ids, segments, label.
struct Encoded {
    ids: Vec<u32>,
    types: Vec<u32>,
    label: usize,
}

/// Fine-tunes the BERT in `model_dir` on `training`'s files and writes `out_dir`: `checkpoint-{epoch}/` after
/// each epoch, `training.json`, `log.jsonl`, and at the end the best epoch's model at the top level.
pub fn fine_tune(
    model_dir: &Path,
    out_dir: &Path,
    training: &ClassifierTraining,
    mut on_event: impl FnMut(&ClassifierEvent),
) -> Result<FineTuned> {
    training.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let train_rows = read_labeled_texts(&training.train_file, training.header)?;
    let dev_rows = read_labeled_texts(&training.dev_file, training.header)?;
    let labels = label_set(&train_rows);
    let tokenizer = PretrainedTokenizer::from_dir(model_dir)?;
    let train = encode(&tokenizer, &train_rows, &labels, training, &training.train_file)?;
    let dev = encode(&tokenizer, &dev_rows, &labels, training, &training.dev_file)?;

    let mut config: BertConfig = read_config(model_dir)?;
    config.set_labels(&labels, labels.len());
    let options = LoadOptions {
        architecture: Some(BertArchitecture::SequenceClassification),
        initialize_missing: true,
        seed: training.seed,
    };
    let loaded = bert::load_with_config(model_dir, config, &options, &device)?;
    let (model, vars) = (loaded.model, loaded.vars);
    let adam = AdamWConfig {
        beta1: training.adam_beta1,
        beta2: training.adam_beta2,
        eps: training.adam_epsilon,
        weight_decay: training.weight_decay,
    };
    let mut optimizer = AdamW::new(vars.clone(), adam, AdamW::decay_matrices)?;
    let params: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();

    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_json(&out_dir.join("training.json"), training)?;
    let log_path = out_dir.join("log.jsonl");
    let mut log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;

    let batches_per_epoch = train.len().div_ceil(training.per_device_train_batch_size);
    let total_steps = batches_per_epoch * training.num_train_epochs;
    let warmup = (training.warmup_ratio * total_steps as f64).ceil() as usize;
    on_event(&ClassifierEvent::Ready { train: train.len(), dev: dev.len(), labels: labels.clone(), total_steps });

    let mut shuffle_rng = Rng::seed_from_u64(training.seed);
    let mut dropout = Rng::seed_from_u64(training.seed ^ 0xb3e7);
    let mut step = 0;
    let mut evaluations: Vec<EvalRecord> = Vec::new();
    let mut best: Option<(EvalRecord, PathBuf)> = None;
    let mut stale = 0;
    for epoch in 1..=training.num_train_epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut shuffle_rng);
        let (mut loss_sum, mut loss_count) = (0.0, 0usize);
        for chunk in order.chunks(training.per_device_train_batch_size) {
            let parts = data_parallel::split(chunk, training.shards);
            let gradients =
                data_parallel::gradients(&params, parts.len(), training.shards, Some(&mut dropout), |i, mode| {
                    let examples: Vec<&Encoded> = parts[i].iter().map(|&i| &train[i]).collect();
                    let (input, labels) = batch(&examples, &device)?;
                    let logits = logits(&model, &input, mode)?;
                    Ok((cross_entropy(&logits, &labels, None, 0.0)?, examples.len()))
                })?;
            step += 1;
            let value = gradients.mean_loss();
            if !value.is_finite() {
                return Err(Error::config("training loss", value, format!("a finite number at step {step}")));
            }
            let lr = schedule::linear_warmup_decay(step, warmup, total_steps, training.learning_rate);
            let clip = Some(training.max_grad_norm).filter(|m| *m > 0.0);
            optimizer.step(&gradients.grads, lr, clip)?;
            loss_sum += value;
            loss_count += 1;
            on_event(&ClassifierEvent::Step { step, loss: value, learning_rate: lr });
        }
        let mut record = evaluate(&model, &dev, training.per_device_eval_batch_size, labels.len(), &device)?;
        (record.epoch, record.step) = (epoch, step);
        record.train_loss = loss_sum / loss_count.max(1) as f64;
        record.seconds = started.elapsed().as_secs_f64();
        serde_json::to_writer(&mut log, &record).map_err(|e| Error::input(&log_path, None, e))?;
        log.write_all(b"\n").map_err(|e| Error::io(&log_path, e))?;
        on_event(&ClassifierEvent::Eval(record.clone()));

        let checkpoint = out_dir.join(format!("checkpoint-{epoch}"));
        replace_dir_atomically(&checkpoint, |tmp| save_model(tmp, model_dir, &model, &vars))?;
        let metric = training.metric_for_best_model;
        let improved = best.as_ref().is_none_or(|(b, _)| record.metric(metric) > b.metric(metric));
        on_event(&ClassifierEvent::Saved { path: checkpoint.clone(), best: improved });
        evaluations.push(record.clone());
        if improved {
            best = Some((record, checkpoint));
            stale = 0;
        } else {
            stale += 1;
            if training.early_stopping_patience.is_some_and(|p| stale >= p) {
                break;
            }
        }
    }
    let (best, best_dir) = best.ok_or_else(|| Error::config("num_train_epochs", 0, "at least one epoch"))?;
    // load_best_model_at_end: the output directory itself holds the best epoch's model.
    for file in model_files(&best_dir) {
        let name = file.file_name().unwrap_or_default();
        let target = out_dir.join(name);
        let tmp = out_dir.join(format!(".{}.tmp", name.to_string_lossy()));
        fs::copy(&file, &tmp).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(FineTuned { best, evaluations, seconds: started.elapsed().as_secs_f64() })
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

/// Loss and scores over `dev`, in evaluation mode.
fn evaluate(model: &Bert, dev: &[Encoded], batch_size: usize, classes: usize, device: &Device) -> Result<EvalRecord> {
    let (mut predicted, mut gold) = (Vec::with_capacity(dev.len()), Vec::with_capacity(dev.len()));
    let mut loss_sum = 0.0;
    for chunk in dev.chunks(batch_size) {
        let examples: Vec<&Encoded> = chunk.iter().collect();
        let (input, labels) = batch(&examples, device)?;
        let logits = logits(model, &input, &mut Mode::Eval)?;
        loss_sum += cross_entropy(&logits, &labels, None, 0.0)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        predicted.extend(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?.into_iter().map(|p| p as usize));
        gold.extend(chunk.iter().map(|e| e.label));
    }
    Ok(EvalRecord {
        epoch: 0,
        step: 0,
        train_loss: 0.0,
        eval_loss: loss_sum / dev.len().max(1) as f64,
        accuracy: accuracy(&predicted, &gold)?,
        f1: f1(&predicted, &gold, classes)?,
        mcc: matthews_correlation(&predicted, &gold, classes)?,
        seconds: 0.0,
    })
}

/// The model's config.json and model.safetensors, plus the source directory's tokenizer files.
fn save_model(dir: &Path, source: &Path, model: &Bert, vars: &[(String, candle_core::Var)]) -> Result<()> {
    bert::save(dir, model, vars)?;
    for name in TOKENIZER_FILES {
        let from = source.join(name);
        if from.exists() {
            fs::copy(&from, dir.join(name)).map_err(|e| Error::io(&from, e))?;
        }
    }
    Ok(())
}

const TOKENIZER_FILES: [&str; 4] = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"];

/// The files of a saved model directory.
fn model_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join("config.json"), dir.join(crate::hub::WEIGHTS)];
    files.extend(TOKENIZER_FILES.iter().map(|n| dir.join(n)).filter(|p| p.exists()));
    files
}

/// Loads a fine-tuned directory for prediction (evaluation mode).
pub fn load_classifier(dir: &Path) -> Result<Bert> {
    let options =
        LoadOptions { architecture: Some(BertArchitecture::SequenceClassification), ..LoadOptions::default() };
    bert::load(dir, &options, &Device::Cpu)?.frozen()
}
