//! Pre-training BERT from scratch with the masked-language-model objective (Devlin et al., 2019, §3.1): a
//! WordPiece vocabulary trained on the text, 15% of the tokens chosen for prediction — 80% of those replaced by
//! [MASK], 10% by a random token, 10% left unchanged — and the cross-entropy of the chosen ones. The result is
//! a Hugging Face `BertForMaskedLM` directory (`model/`: config.json, model.safetensors, tokenizer.json).
//! Next-sentence prediction is not implemented (RoBERTa showed it is not needed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::replace_dir_atomically;
use super::{cross_entropy, schedule, AdamW, AdamWConfig};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{bert, write_json};
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

/// One evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct MlmRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub enum MlmEvent {
    Ready { sequences: usize, held_out: usize, parameters: usize, total_steps: usize },
    Step { step: usize, loss: f64, learning_rate: f64 },
    Eval(MlmRecord),
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

/// Trains a WordPiece vocabulary and a BERT (`config`, its vocab_size set from the vocabulary) on the lines of
/// `training.text_file`, writing `out_dir` (model, tokenizer, training.json, log.jsonl) after each epoch.
pub fn pretrain(
    out_dir: &Path,
    training: &MlmTraining,
    mut config: BertConfig,
    mut on_event: impl FnMut(&MlmEvent),
) -> Result<Vec<MlmRecord>> {
    if training.batch_size == 0 || training.epochs == 0 || training.max_length < 3 {
        return Err(Error::config(
            "batch_size / epochs / max_length",
            "0 or too small",
            "batch and epochs ≥ 1, max_length ≥ 3",
        ));
    }
    if !(training.mlm_probability > 0.0 && training.mlm_probability < 1.0) {
        return Err(Error::config("mlm_probability", training.mlm_probability, "a share in (0, 1)"));
    }
    let started = Instant::now();
    let lines: Vec<String> = read_lines(&training.text_file)?.into_iter().filter(|l| !l.trim().is_empty()).collect();
    let tokenizer = PretrainedTokenizer::train_bert_wordpiece(&lines, training.vocab_size, training.lowercase)?;
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
    let held_out = ((sequences.len() as f64 * training.validation_fraction).round() as usize).min(sequences.len() / 2);
    let valid: Vec<Vec<u32>> = sequences.drain(..held_out).collect();
    let train = sequences;
    if train.is_empty() {
        return Err(Error::input(&training.text_file, None, "has no non-empty lines to train on"));
    }

    config.vocab_size = tokenizer.vocab_size();
    config.max_position_embeddings = config.max_position_embeddings.max(training.max_length);
    config.architectures = Some(vec![BertArchitecture::MaskedLm.name().into()]);
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Bert::new(
        &config,
        BertArchitecture::MaskedLm,
        seeded_var_builder(&varmap, training.seed, DType::F32, &device),
    )?;
    let vars = named_vars(&varmap);
    let adam = AdamWConfig { weight_decay: training.weight_decay, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(vars.clone(), adam, AdamW::decay_matrices)?;
    let per_epoch = train.len().div_ceil(training.batch_size);
    let total_steps = training.max_steps.unwrap_or(per_epoch * training.epochs).min(per_epoch * training.epochs);
    let warmup = (training.warmup_ratio * total_steps as f64).ceil() as usize;
    on_event(&MlmEvent::Ready {
        sequences: train.len(),
        held_out: valid.len(),
        parameters: vars.iter().map(|(_, v)| v.elem_count()).sum(),
        total_steps,
    });
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_json(&out_dir.join("training.json"), training)?;
    let log_path = out_dir.join("log.jsonl");
    let mut log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;

    let masking = Masking::new(&tokenizer)?;
    let mut mode = Mode::train(training.seed ^ 0x6d6c6d);
    let mut step = 0;
    let mut records = Vec::new();
    for epoch in 1..=training.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut count) = (0.0, 0usize);
        for chunk in order.chunks(training.batch_size) {
            if step >= total_steps {
                break;
            }
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &train[i]).collect();
            let loss = masking.loss(&model, &batch, training.mlm_probability, &mut rng, &mut mode, &device)?;
            step += 1;
            let lr = schedule::linear_warmup_decay(step, warmup, total_steps, training.learning_rate);
            let value = optimizer.minimize(&loss, step, lr, training.max_grad_norm)?;
            (loss_sum, count) = (loss_sum + value, count + 1);
            on_event(&MlmEvent::Step { step, loss: value, learning_rate: lr });
        }
        if count == 0 {
            break;
        }
        let mut record = evaluate(&masking, &model, &valid, training)?;
        (record.epoch, record.step, record.train_loss) = (epoch, step, loss_sum / count as f64);
        record.seconds = started.elapsed().as_secs_f64();
        serde_json::to_writer(&mut log, &record).map_err(|e| Error::input(&log_path, None, e))?;
        log.write_all(b"\n").map_err(|e| Error::io(&log_path, e))?;
        on_event(&MlmEvent::Eval(record.clone()));
        records.push(record);
        // Replaced as a whole, so an interrupted save leaves the previous epoch's model.
        replace_dir_atomically(&out_dir.join("model"), |tmp| {
            bert::save(tmp, &model, &vars)?;
            tokenizer.save_to_dir(tmp, training.lowercase)
        })?;
    }
    Ok(records)
}

/// Validation loss with the same masks every time (a fixed generator).
fn evaluate(masking: &Masking, model: &Bert, valid: &[Vec<u32>], training: &MlmTraining) -> Result<MlmRecord> {
    let mut rng = Rng::seed_from_u64(training.seed ^ 0x7661_6c69);
    let (mut sum, mut batches) = (0.0, 0usize);
    for chunk in valid.chunks(training.batch_size) {
        let batch: Vec<&Vec<u32>> = chunk.iter().collect();
        let loss = masking.loss(model, &batch, training.mlm_probability, &mut rng, &mut Mode::Eval, &Device::Cpu)?;
        sum += loss.to_scalar::<f32>()? as f64;
        batches += 1;
    }
    let valid_loss = if batches == 0 { f64::NAN } else { sum / batches as f64 };
    Ok(MlmRecord { epoch: 0, step: 0, train_loss: 0.0, valid_loss, seconds: 0.0 })
}

/// Builds masked batches and their loss.
struct Masking {
    specials: Vec<u32>,
    mask: u32,
    vocab: u32,
    pad: u32,
}

impl Masking {
    fn new(tokenizer: &PretrainedTokenizer) -> Result<Self> {
        let mask = tokenizer.token_to_id("[MASK]").ok_or_else(|| Error::tokenizer("masking", "no [MASK] token"))?;
        let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self { specials: tokenizer.special_ids(), mask, vocab: tokenizer.vocab_size() as u32, pad })
    }

    fn loss(
        &self,
        model: &Bert,
        batch: &[&Vec<u32>],
        p: f64,
        rng: &mut Rng,
        mode: &mut Mode,
        device: &Device,
    ) -> Result<Tensor> {
        let s = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let b = batch.len();
        let (mut inputs, mut labels, mut valid) = (vec![self.pad; b * s], vec![IGNORE; b * s], vec![0u32; b * s]);
        for (row, ids) in batch.iter().enumerate() {
            let (masked, targets) = mask_tokens(ids, &self.specials, self.mask, self.vocab, p, rng);
            let range = row * s..row * s + ids.len();
            inputs[range.clone()].copy_from_slice(&masked);
            labels[range.clone()].copy_from_slice(&targets);
            valid[range].fill(1);
        }
        let input = BertInput {
            input_ids: Tensor::from_vec(inputs, (b, s), device)?,
            attention_mask: Some(Tensor::from_vec(valid, (b, s), device)?),
            token_type_ids: None,
        };
        let logits = model
            .forward(&input, mode)?
            .remove("logits")
            .ok_or_else(|| Error::config("model", "no logits", "an MLM head"))?;
        let labels = Tensor::from_vec(labels, b * s, device)?;
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
