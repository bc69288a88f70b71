//! Pre-training BERT from scratch with the masked-language-model objective (Devlin et al., 2019, §3.1): a
//! WordPiece vocabulary trained on the text, 15% of the tokens chosen for prediction — 80% of those replaced by
//! \[MASK\], 10% by a random token, 10% left unchanged — and the cross-entropy of the chosen ones, run by the
//! shared [`Trainer`] (checkpoints, resume, time limit, best model). The model directories it writes (`best/`,
//! each checkpoint) are Hugging Face `BertForMaskedLM` directories (config.json, model.safetensors,
//! tokenizer.json). With `nsp`, the text is documents (blank-line separated, one sentence per line), each
//! sequence is a sentence pair of [`crate::text::next_sentence`], and the model is a `BertForPreTraining` whose
//! loss is the masked-LM loss plus the next-sentence cross-entropy, as transformers sums them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use super::trainer::{epoch_rng, Evaluation, LoopSettings, Objective, StepContext, Task, Trainer, TrainingOptions};
use super::{cross_entropy, schedule, AdamWConfig};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{bert, read_json, LoadReport};
use crate::models::bert::{Bert, BertArchitecture, BertConfig, BertInput};
use crate::nn::mode::Rng;
use crate::nn::{params::named_vars, seeded_var_builder, Mode};
use crate::text::corpus::read_lines;
use crate::text::next_sentence::{draw_pairs, pack, read_documents};
use crate::{Error, Result};

/// Labels of positions that are not predicted.
const IGNORE: u32 = u32::MAX;

/// Options; the model's shape is a [`BertConfig`] (see [`small_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlmTraining {
    /// The text to pre-train on: one sequence per line, or with `nsp` documents separated by blank lines.
    pub text_file: PathBuf,
    /// Size of the WordPiece vocabulary trained on the text, specials included (default 8000).
    pub vocab_size: usize,
    /// Lowercase the text in BERT's normaliser (an uncased model, as bert-base-uncased; default true).
    pub lowercase: bool,
    /// Tokens per sequence, \[CLS\] and \[SEP\] included; longer lines are cut.
    pub max_length: usize,
    /// Share of tokens chosen for prediction, in (0, 1) (BERT: 0.15).
    pub mlm_probability: f64,
    /// Sequences per batch (default 32).
    pub batch_size: usize,
    /// Peak learning rate, reached after warm-up and decayed linearly to 0 by the end of the run (default 5e-4).
    pub learning_rate: f64,
    /// Warm-up as a share of all optimizer steps (default 0.06).
    pub warmup_ratio: f64,
    /// Share of the lines held out for the validation loss.
    pub validation_fraction: f64,
    /// Next-sentence prediction besides masked LM: `text_file` holds documents separated by blank lines.
    pub nsp: bool,
    /// Epochs, AdamW, clipping, seed, checkpoints and time limit, flattened into the same options.
    #[serde(flatten)]
    pub run: LoopSettings,
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
            learning_rate: 5e-4,
            warmup_ratio: 0.06,
            validation_fraction: 0.05,
            nsp: false,
            run: LoopSettings {
                num_train_epochs: Some(3),
                adam: AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() },
                max_grad_norm: Some(1.0),
                seed: 42,
                save_total_limit: Some(2),
                ..LoopSettings::default()
            },
        }
    }
}

impl TrainingOptions for MlmTraining {
    fn loop_settings(&self) -> &LoopSettings {
        &self.run
    }

    fn loop_settings_mut(&mut self) -> &mut LoopSettings {
        &mut self.run
    }

    fn data_files(&self) -> Vec<(&'static str, &Path)> {
        vec![("text_file", &self.text_file)]
    }

    fn validate(&self) -> Result<()> {
        if self.nsp && self.max_length < 5 {
            return Err(Error::config("max_length", self.max_length, "at least 5 with nsp ([CLS] A [SEP] B [SEP])"));
        }
        if self.batch_size == 0 || self.max_length < 3 {
            return Err(Error::config("batch_size / max_length", "0 or too small", "batch ≥ 1, max_length ≥ 3"));
        }
        crate::limits::at_most("vocab_size", self.vocab_size, crate::limits::MAX_VOCAB)?;
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(Error::config("validation_fraction", self.validation_fraction, "a share in (0, 1)"));
        }
        if !(self.mlm_probability > 0.0 && self.mlm_probability < 1.0) {
            return Err(Error::config("mlm_probability", self.mlm_probability, "a share in (0, 1)"));
        }
        if self.run.num_train_epochs.is_none() && self.run.max_steps.is_none() {
            let expected = "a number of epochs or max_steps: the learning rate decays linearly over the run";
            return Err(Error::config("num_train_epochs", "none", expected));
        }
        Ok(())
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
    train: Vec<Sequence>,
    valid: Vec<Sequence>,
    masking: Masking,
    total_steps: usize,
    warmup: usize,
}

/// A BERT being pre-trained.
pub type MlmTrainer = Trainer<MlmTask>;

/// One training sequence: ids with [CLS] and [SEP], their token_type_ids, and with nsp its
/// `next_sentence_label`.
#[derive(Debug, Clone)]
struct Sequence {
    ids: Vec<u32>,
    segments: Vec<u32>,
    next: Option<u32>,
}

/// The class being trained.
fn architecture(training: &MlmTraining) -> BertArchitecture {
    if training.nsp {
        BertArchitecture::PreTraining
    } else {
        BertArchitecture::MaskedLm
    }
}

/// Each line a sequence, cut to `max_length` tokens.
fn line_sequences(training: &MlmTraining, tokenizer: &PretrainedTokenizer, lines: &[String]) -> Result<Vec<Sequence>> {
    let mut sequences = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(512) {
        let inputs: Vec<(&str, Option<&str>)> = chunk.iter().map(|l| (l.as_str(), None)).collect();
        let encoded = tokenizer.encode(&inputs, training.max_length, Truncation::LongestFirst)?;
        for (ids, mask) in encoded.input_ids.iter().zip(&encoded.attention_mask) {
            let n = mask.iter().filter(|&&m| m == 1).count();
            sequences.push(Sequence { ids: ids[..n].to_vec(), segments: vec![0; n], next: None });
        }
    }
    Ok(sequences)
}

/// The sentence pairs of the documents of `text_file`, drawn by a generator seeded with the run's seed.
fn pair_sequences(training: &MlmTraining, tokenizer: &PretrainedTokenizer) -> Result<Vec<Sequence>> {
    let documents = read_documents(&training.text_file)?;
    let special = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| Error::tokenizer("nsp pairs", format!("no {t}")));
    let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
    let tokens = documents
        .iter()
        .map(|d| d.iter().map(|s| tokenizer.ids(s)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let sizes: Vec<usize> = documents.iter().map(Vec::len).collect();
    let mut rng = Rng::seed_from_u64(training.run.seed ^ 0x006e_7370);
    let pairs = draw_pairs(&sizes, &mut rng);
    let minimum = minimum_lines(training.validation_fraction);
    if pairs.len() < minimum {
        let message = format!(
            "{} sentence pair(s) (one per sentence followed by another in its document): nsp needs at least \
             {minimum} to hold out validation_fraction = {} of them",
            pairs.len(),
            training.validation_fraction
        );
        return Err(Error::input(&training.text_file, None, message));
    }
    Ok(pairs
        .iter()
        .map(|p| {
            let (a, b) = (&tokens[p.a.0][p.a.1], &tokens[p.b.0][p.b.1]);
            let (ids, segments) = pack(a, b, cls, sep, training.max_length);
            Sequence { ids, segments, next: Some(p.label) }
        })
        .collect())
}

/// The non-empty lines of the text file, refused when too few to hold out at least one for the validation
/// loss and train on the rest (with none held out the loss is NaN and no best model is ever kept).
fn read_training_lines(training: &MlmTraining) -> Result<Vec<String>> {
    let lines: Vec<String> = read_lines(&training.text_file)?.into_iter().filter(|l| !l.trim().is_empty()).collect();
    let minimum = minimum_lines(training.validation_fraction);
    if lines.len() < minimum {
        let message = format!(
            "{} non-empty line(s): masked-LM pre-training holds out validation_fraction = {} of the lines for the \
             validation loss and needs at least {minimum} lines (or a larger --validation-fraction)",
            lines.len(),
            training.validation_fraction
        );
        return Err(Error::input(&training.text_file, None, message));
    }
    Ok(lines)
}

/// The fewest lines from which `fraction` (rounded, at most half) holds out one: n ≥ 2 and n · fraction
/// rounds to 1 or more (searched up from just below ½ / fraction, which floating point may miss by one).
fn minimum_lines(fraction: f64) -> usize {
    let mut n = ((0.5 / fraction).floor() as usize).max(2);
    while n > 2 && ((n - 1) as f64 * fraction).round() >= 1.0 {
        n -= 1;
    }
    while (n as f64 * fraction).round() < 1.0 {
        n += 1;
    }
    n
}

impl MlmTask {
    fn new(
        training: MlmTraining,
        config: BertConfig,
        tokenizer: PretrainedTokenizer,
        lines: &[String],
    ) -> Result<Self> {
        let mut sequences = if training.nsp {
            pair_sequences(&training, &tokenizer)?
        } else {
            line_sequences(&training, &tokenizer, lines)?
        };
        let mut rng = Rng::seed_from_u64(training.run.seed);
        sequences.shuffle(&mut rng);
        let held_out =
            ((sequences.len() as f64 * training.validation_fraction).round() as usize).min(sequences.len() / 2);
        let valid: Vec<Sequence> = sequences.drain(..held_out).collect();
        let train = sequences;
        if train.is_empty() {
            return Err(Error::input(&training.text_file, None, "has no non-empty lines to train on"));
        }
        let device = training.run.device.device()?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, training.run.seed, DType::F32, &device);
        let model = Bert::new(&config, architecture(&training), vb)?;
        let vars = named_vars(&varmap);
        let per_epoch = train.len().div_ceil(training.batch_size).div_ceil(training.run.gradient_accumulation_steps);
        let by_epochs = training.run.num_train_epochs.map_or(usize::MAX, |n| n * per_epoch);
        let total_steps = training.run.max_steps.unwrap_or(usize::MAX).min(by_epochs);
        let warmup = (training.warmup_ratio * total_steps as f64).ceil() as usize;
        let masking = Masking::new(&tokenizer, training.mlm_probability, &device)?;
        Ok(Self { training, tokenizer, model, vars, train, valid, masking, total_steps, warmup })
    }

    /// The BERT being pre-trained, with its masked-LM (and, with `nsp`, next-sentence) head.
    pub fn model(&self) -> &Bert {
        &self.model
    }

    /// Training and held-out sequences.
    pub fn data_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.valid.len())
    }

    fn batch<'a>(&self, data: &'a [Sequence], indices: &[usize]) -> Vec<&'a Sequence> {
        indices.iter().map(|&i| &data[i]).collect()
    }
}

impl Objective for MlmTask {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Masks are drawn afresh for every batch (dynamic masking, as RoBERTa and transformers' data collator
    /// do) from the task's generator, which the trainer saves in each checkpoint.
    fn loss(&self, indices: &[usize], context: &mut StepContext, mode: &mut Mode) -> Result<(Tensor, usize)> {
        let batch = self.batch(&self.train, indices);
        let (input, labels, predicted) = self.masking.inputs(&batch, context.rng)?;
        let losses = self.masking.losses(&self.model, input, &labels, mode)?;
        let total = match losses.next_sentence {
            Some(nsp) => (losses.masked_lm + nsp)?,
            None => losses.masked_lm,
        };
        Ok((total, predicted))
    }
}

impl Task for MlmTask {
    type Training = MlmTraining;
    type Start = BertConfig;

    /// Trains a WordPiece vocabulary on the lines of `training.text_file`, holds out `validation_fraction`
    /// of them, and builds a BertForMaskedLM (`config`'s vocab_size set from the vocabulary).
    fn create(training: MlmTraining, mut config: BertConfig) -> Result<Self> {
        let lines = read_training_lines(&training)?;
        let tokenizer = PretrainedTokenizer::train_bert_wordpiece(&lines, training.vocab_size, training.lowercase)?;
        config.vocab_size = tokenizer.vocab_size();
        config.max_position_embeddings = config.max_position_embeddings.max(training.max_length);
        config.architectures = Some(vec![architecture(&training).name().into()]);
        MlmTask::new(training, config, tokenizer, &lines)
    }

    fn reopen(checkpoint: &Path, training: MlmTraining) -> Result<Self> {
        let config: BertConfig = read_json(&checkpoint.join("config.json"))?;
        bert::check_against_weights(checkpoint, &config)?;
        let tokenizer = PretrainedTokenizer::from_dir(checkpoint)?;
        let lines = read_training_lines(&training)?;
        MlmTask::new(training, config, tokenizer, &lines)
    }

    fn training(&self) -> &MlmTraining {
        &self.training
    }

    /// The training sequences shuffled by a generator seeded with the seed and the epoch, in batches.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>> {
        let mut rng = epoch_rng(self.training.run.seed, 0x006d_6c6d, epoch);
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rng);
        Ok(order.chunks(self.training.batch_size).map(<[usize]>::to_vec).collect())
    }

    fn learning_rate(&self, step: usize) -> f64 {
        schedule::linear_warmup_decay(step, self.warmup, self.total_steps, self.training.learning_rate)
    }

    /// Validation loss per predicted token, with the same masks every time (a fixed generator). With nsp the
    /// loss is that plus the mean next-sentence cross-entropy, and the log gets both parts and the
    /// next-sentence accuracy.
    fn evaluate(&self) -> Result<Evaluation> {
        let mut rng = Rng::seed_from_u64(self.training.run.seed ^ 0x7661_6c69);
        let (mut sum, mut predicted) = (0.0, 0usize);
        let (mut nsp_sum, mut correct, mut pairs) = (0.0, 0usize, 0usize);
        let all: Vec<usize> = (0..self.valid.len()).collect();
        for indices in all.chunks(self.training.batch_size) {
            let batch = self.batch(&self.valid, indices);
            let (input, labels, n) = self.masking.inputs(&batch, &mut rng)?;
            let losses = self.masking.losses(&self.model, input, &labels, &mut Mode::Eval)?;
            sum += losses.masked_lm.to_scalar::<f32>()? as f64 * n as f64;
            predicted += n;
            if let Some(nsp) = losses.next_sentence {
                nsp_sum += nsp.to_scalar::<f32>()? as f64 * batch.len() as f64;
                correct += losses.next_correct;
                pairs += batch.len();
            }
        }
        let mlm = if predicted == 0 { f64::NAN } else { sum / predicted as f64 };
        if pairs == 0 {
            return Ok(Evaluation { val_loss: mlm, metrics: Default::default() });
        }
        let nsp = nsp_sum / pairs as f64;
        let metrics =
            [("val_mlm_loss", mlm), ("val_nsp_loss", nsp), ("val_nsp_accuracy", correct as f64 / pairs as f64)];
        Ok(Evaluation { val_loss: mlm + nsp, metrics: metrics.into_iter().map(|(k, v)| (k.into(), v)).collect() })
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        bert::save(dir, &self.model, &self.vars)?;
        self.tokenizer.save_to_dir(dir, self.training.lowercase)
    }

    fn load_model(&self, dir: &Path) -> Result<LoadReport> {
        bert::load_into(dir, &self.vars, architecture(&self.training), false)
    }
}

/// What a batch is scored against: the predicted positions and their tokens and, with nsp, the
/// next-sentence labels (B).
struct Labels {
    /// The predicted positions of the flattened (B·S) batch (N,), and their tokens (N,).
    rows: Tensor,
    tokens: Tensor,
    next: Option<Tensor>,
}

/// A batch's mean masked-LM loss, its mean next-sentence loss (nsp only) and how many next-sentence
/// predictions were right.
struct Losses {
    masked_lm: Tensor,
    next_sentence: Option<Tensor>,
    next_correct: usize,
}

/// Builds masked batches and their loss.
struct Masking {
    device: Device,
    specials: Vec<u32>,
    mask: u32,
    vocab: u32,
    pad: u32,
    probability: f64,
}

impl Masking {
    fn new(tokenizer: &PretrainedTokenizer, probability: f64, device: &Device) -> Result<Self> {
        let mask = tokenizer.token_to_id("[MASK]").ok_or_else(|| Error::tokenizer("masking", "no [MASK] token"))?;
        let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        let (specials, vocab) = (tokenizer.special_ids(), tokenizer.vocab_size() as u32);
        Ok(Self { device: device.clone(), specials, mask, vocab, pad, probability })
    }

    /// The padded, masked input of `batch`, its labels (B·S) and how many positions are predicted. A batch
    /// where chance chose nothing predicts its first row's first ordinary token, so that no loss is 0/0.
    fn inputs(&self, batch: &[&Sequence], rng: &mut Rng) -> Result<(BertInput, Labels, usize)> {
        let s = batch.iter().map(|q| q.ids.len()).max().unwrap_or(0);
        let b = batch.len();
        let (mut inputs, mut labels, mut valid) = (vec![self.pad; b * s], vec![IGNORE; b * s], vec![0u32; b * s]);
        let mut segments = vec![0u32; b * s];
        for (row, sequence) in batch.iter().enumerate() {
            let ids = &sequence.ids;
            let (masked, targets) = mask_tokens(ids, &self.specials, self.mask, self.vocab, self.probability, rng);
            let range = row * s..row * s + ids.len();
            inputs[range.clone()].copy_from_slice(&masked);
            labels[range.clone()].copy_from_slice(&targets);
            segments[range.clone()].copy_from_slice(&sequence.segments);
            valid[range].fill(1);
        }
        let mut predicted = labels.iter().filter(|&&l| l != IGNORE).count();
        if predicted == 0 {
            if let Some(i) = (0..b * s).find(|&i| valid[i] == 1 && !self.specials.contains(&inputs[i])) {
                (labels[i], inputs[i], predicted) = (inputs[i], self.mask, 1);
            }
        }
        let device = &self.device;
        let next: Option<Vec<u32>> = batch.iter().map(|q| q.next).collect();
        let input = BertInput {
            input_ids: Tensor::from_vec(inputs, (b, s), device)?,
            attention_mask: Some(Tensor::from_vec(valid, (b, s), device)?),
            token_type_ids: Some(Tensor::from_vec(segments, (b, s), device)?),
        };
        // Only the predicted positions reach the vocabulary projection (Bert::masked_lm_at).
        let rows: Vec<u32> = (0..b * s).filter(|&i| labels[i] != IGNORE).map(|i| i as u32).collect();
        let targets: Vec<u32> = rows.iter().map(|&i| labels[i as usize]).collect();
        let labels = Labels {
            rows: Tensor::from_vec(rows, predicted, device)?,
            tokens: Tensor::from_vec(targets, predicted, device)?,
            next: next.map(|n| Tensor::from_vec(n, b, device)).transpose()?,
        };
        Ok((input, labels, predicted))
    }

    /// Mean cross-entropy of the predicted positions and, with next-sentence labels, of the (B, 2)
    /// `seq_relationship_logits` (transformers' BertForPreTraining sums the two).
    fn losses(&self, model: &Bert, input: BertInput, labels: &Labels, mode: &mut Mode) -> Result<Losses> {
        let (logits, relationship) = model.masked_lm_at(&input, &labels.rows, mode)?; // (N, V), (B, 2)
        let masked_lm = cross_entropy(&logits, &labels.tokens, None, 0.0)?;
        let Some(next) = &labels.next else {
            return Ok(Losses { masked_lm, next_sentence: None, next_correct: 0 });
        };
        let relationship = relationship
            .ok_or_else(|| Error::config("model", "no seq_relationship_logits", "a BertForPreTraining head"))?;
        let next_sentence = cross_entropy(&relationship, next, None, 0.0)?;
        let guessed = relationship.argmax(D::Minus1)?.to_dtype(DType::U32)?;
        let next_correct = guessed.eq(next)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
        Ok(Losses { masked_lm, next_sentence: Some(next_sentence), next_correct })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_corpus_holds_out_one_line() {
        assert_eq!(minimum_lines(0.05), 10);
        assert_eq!(minimum_lines(0.1), 5);
        assert_eq!(minimum_lines(0.5), 2);
        assert_eq!(minimum_lines(0.9), 2);
        assert_eq!(minimum_lines(0.3), 2);
        assert_eq!(minimum_lines(0.2), 3);
    }

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
