//! Task pipelines over a BERT model directory, computing what transformers' pipelines of the same names
//! return: `fill-mask` (the most likely tokens for each \[MASK\]), `text-classification` (every label's
//! probability) and `question-answering` (the best span of a context, over overlapping windows when the context
//! is longer than the model).

use std::collections::hash_map::{Entry, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::ops::softmax_last_dim;

use crate::device::on_workers;
use crate::hub::bert;
use crate::hub::tokenizer::{PretrainedTokenizer, QuestionWindow, Truncation};
use crate::kernels::reduced::WeightDtype;
use crate::models::bert::{Bert, BertArchitecture, BertInput};
use crate::nn::Mode;
use crate::{Error, Result};

/// A model directory with its tokenizer, in evaluation mode; built once, used from any number of threads.
pub struct Pipeline {
    model: Bert,
    tokenizer: PretrainedTokenizer,
    device: Device,
}

/// One candidate for a masked position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MaskPrediction {
    /// The token's probability at the masked position (softmax over the vocabulary).
    pub score: f64,
    /// The token's id.
    pub token: u32,
    /// The token as text, decoded alone (special tokens kept).
    pub token_str: String,
    /// The input with this token in place of the mask: special tokens removed when there is one mask, kept
    /// (other masks included) when there are several, as transformers writes it.
    pub sequence: String,
}

/// A label and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    /// The class name, from config.json's `id2label` (`LABEL_i` when it has none).
    pub label: String,
    /// Its probability: the softmax of the logits over all labels.
    pub score: f64,
}

/// An answer span of the context.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// p(start) · p(end) within its window, summed over windows that give the same text.
    pub score: f64,
    /// Character offsets of the answer in the context: `context[start..end]` in characters.
    pub start: usize,
    /// Character offset one past the answer's end in the context.
    pub end: usize,
    /// The answer's text: the context's characters `start..end`.
    pub answer: String,
}

/// Question-answering options, with transformers' defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QaOptions {
    /// How many answers to return, best first (transformers' default: 1).
    pub top_k: usize,
    /// Tokens per window (question, context and specials); transformers uses min(model limit, 384).
    pub max_seq_len: usize,
    /// Context tokens shared by consecutive windows; transformers uses min(max_seq_len / 2, 128).
    pub doc_stride: usize,
    /// Longest answer in tokens.
    pub max_answer_len: usize,
}

impl Default for QaOptions {
    fn default() -> Self {
        Self { top_k: 1, max_seq_len: 384, doc_stride: 128, max_answer_len: 15 }
    }
}

impl Pipeline {
    /// Loads `dir` as `architecture` (its checkpoint must have that head) onto `device`.
    /// The matrices are in the dtype the directory was saved in ([`crate::hub::reduced::stored_dtype`]).
    pub fn load(dir: &Path, architecture: BertArchitecture, device: &Device) -> Result<Self> {
        Self::load_as(dir, architecture, device, crate::hub::reduced::stored_dtype(dir)?)
    }

    /// As [`load`](Self::load), the encoder's matrices stored in `dtype` ([`Bert::pack_weights`]).
    pub fn load_as(dir: &Path, architecture: BertArchitecture, device: &Device, dtype: WeightDtype) -> Result<Self> {
        let (mut model, _) = bert::load_frozen(dir, Some(architecture), device)?;
        model.pack_weights(dtype)?;
        Ok(Self { model, tokenizer: PretrainedTokenizer::from_dir(dir)?, device: device.clone() })
    }

    /// The loaded BERT, with its task head.
    pub fn model(&self) -> &Bert {
        &self.model
    }

    fn run(&self, inputs: &[(&str, Option<&str>)]) -> Result<(Vec<Vec<u32>>, Tensor)> {
        let limit = self.model.config().max_position_embeddings;
        let encoded = self.tokenizer.encode(inputs, limit, Truncation::Error)?;
        let (input_ids, attention_mask, token_type_ids) = encoded.tensors(&self.device)?;
        let input = BertInput { input_ids, attention_mask: Some(attention_mask), token_type_ids: Some(token_type_ids) };
        let mut outputs = on_workers(|| self.model.forward(&input, &mut Mode::Eval))?;
        let logits = outputs.remove("logits").ok_or_else(|| Error::config("pipeline", "no logits", "a task head"))?;
        Ok((encoded.input_ids, logits))
    }

    /// The `top_k` most likely tokens for each \[MASK\] of `text`, in order of the masks (a `top_k` past the
    /// vocabulary gives every token, as transformers clamps it). A text without a mask is an error.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Vec<Vec<MaskPrediction>>> {
        if top_k == 0 {
            return Err(Error::config("top_k", 0, "at least 1"));
        }
        let mask_token = ["[MASK]", "<mask>"].into_iter().find_map(|t| self.tokenizer.token_to_id(t));
        let mask = mask_token.ok_or_else(|| Error::config("tokenizer", "no [MASK] token", "a masked-LM tokenizer"))?;
        let (ids, logits) = self.run(&[(text, None)])?;
        let ids = &ids[0];
        let positions: Vec<usize> = ids.iter().enumerate().filter(|(_, &id)| id == mask).map(|(i, _)| i).collect();
        if positions.is_empty() {
            return Err(Error::config("fill-mask input", text, "a text with a [MASK] token"));
        }
        let probabilities = softmax_last_dim(&logits.get(0)?)?; // (S, V)
        let mut results = Vec::with_capacity(positions.len());
        for &position in &positions {
            let row: Vec<f32> = probabilities.get(position)?.to_vec1()?;
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let mut candidates = Vec::with_capacity(top_k.min(row.len()));
            for &token in order.iter().take(top_k) {
                let mut filled = ids.clone();
                filled[position] = token as u32;
                candidates.push(MaskPrediction {
                    score: row[token] as f64,
                    token: token as u32,
                    token_str: self.tokenizer.decode_with_specials(&[token as u32])?,
                    // With several masks the others stay in the text, and so (as in transformers) do the specials.
                    sequence: if positions.len() == 1 {
                        self.tokenizer.decode(&filled)?
                    } else {
                        self.tokenizer.decode_with_specials(&filled)?
                    },
                });
            }
            results.push(candidates);
        }
        Ok(results)
    }

    /// Every label's probability (softmax of the logits) for each input, most likely first.
    pub fn classify(&self, inputs: &[(&str, Option<&str>)]) -> Result<Vec<Vec<LabelScore>>> {
        let (_, logits) = self.run(inputs)?;
        let probabilities: Vec<Vec<f32>> = softmax_last_dim(&logits)?.to_vec2()?;
        let config = self.model.config();
        Ok(probabilities
            .into_iter()
            .map(|row| {
                let mut scores: Vec<LabelScore> = row
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| LabelScore { label: config.label_name(i), score: p as f64 })
                    .collect();
                scores.sort_by(|a, b| b.score.total_cmp(&a.score));
                scores
            })
            .collect())
    }

    /// The `top_k` best answers to `question` in `context`. Each window's start and end logits become
    /// probabilities over its context tokens (and \[CLS\], whose probability is then zeroed); a span's score is
    /// p(start)·p(end) for start ≤ end < start + max_answer_len; spans widen to whole words; equal answers from
    /// different windows add up.
    pub fn answer(&self, question: &str, context: &str, options: &QaOptions) -> Result<Vec<Answer>> {
        if options.top_k == 0 || options.max_answer_len == 0 {
            return Err(Error::config("question answering", "top_k or max_answer_len = 0", "at least 1"));
        }
        // transformers' pipeline refuses empty ones too ("`question` cannot be empty"); a question of spaces
        // has no tokens to condition on either.
        for (option, text) in [("question", question), ("context", context)] {
            if text.trim().is_empty() {
                return Err(Error::config(option, format!("{text:?}"), "a non-empty text"));
            }
        }
        let max_seq_len = options.max_seq_len.min(self.model.config().max_position_embeddings);
        let stride = options.doc_stride.min(max_seq_len / 2);
        let windows = self.tokenizer.question_windows(question, context, max_seq_len, stride)?;
        let characters: Vec<char> = context.chars().collect();
        let mut answers: Vec<Answer> = Vec::new();
        // Answer text, lower-cased → its index in `answers` (equal answers from different windows add up).
        let mut seen: HashMap<String, usize> = HashMap::new();
        for window in &windows.windows {
            let (starts, ends) = self.span_logits(window)?;
            // Tokens that may begin or end an answer: the context's, and [CLS] (zeroed below).
            let desired: Vec<bool> =
                window.context_tokens.iter().enumerate().map(|(i, token)| i == 0 || token.is_some()).collect();
            let mut p_start = masked_softmax(&starts, &desired);
            let mut p_end = masked_softmax(&ends, &desired);
            (p_start[0], p_end[0]) = (0.0, 0.0);
            let wanted = options.top_k.saturating_mul(2).saturating_add(10);
            let spans = best_spans(&p_start, &p_end, &desired, wanted, options.max_answer_len);
            for (s, e, score) in spans {
                let (first, last) = match (window.context_tokens[s], window.context_tokens[e]) {
                    (Some(first), Some(last)) => windows.word_chars(first, last),
                    _ => (0, 0), // a span at [CLS]: transformers falls back to its (0, 0) offsets
                };
                let text: String = characters[first.min(characters.len())..last.min(characters.len())].iter().collect();
                match seen.entry(text.to_lowercase()) {
                    Entry::Occupied(index) => answers[*index.get()].score += score,
                    Entry::Vacant(slot) => {
                        slot.insert(answers.len());
                        answers.push(Answer { score, start: first, end: last, answer: text });
                    }
                }
            }
        }
        answers.sort_by(|a, b| b.score.total_cmp(&a.score));
        answers.truncate(options.top_k);
        Ok(answers)
    }

    /// Start and end logits of one window.
    fn span_logits(&self, window: &QuestionWindow) -> Result<(Vec<f64>, Vec<f64>)> {
        let row = |values: &[u32]| Tensor::from_vec(values.to_vec(), (1, values.len()), &self.device);
        let input = BertInput {
            input_ids: row(&window.input_ids)?,
            attention_mask: None,
            token_type_ids: Some(row(&window.token_type_ids)?),
        };
        let outputs = on_workers(|| self.model.forward(&input, &mut Mode::Eval))?;
        let get = |name: &str| -> Result<Vec<f64>> {
            let t = outputs.get(name).ok_or_else(|| Error::config("pipeline", "no span logits", "a QA head"))?;
            Ok(t.get(0)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
        };
        Ok((get("start_logits")?, get("end_logits")?))
    }
}

/// Softmax over all positions after undesired ones are set to −10 000 (transformers' masking).
fn masked_softmax(logits: &[f64], desired: &[bool]) -> Vec<f64> {
    let masked: Vec<f64> = logits.iter().zip(desired).map(|(&l, &d)| if d { l } else { -10_000.0 }).collect();
    let max = masked.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = masked.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` highest p(start)·p(end) spans with start ≤ end < start + max_len, best first, then those whose ends
/// are both desired tokens (transformers filters after choosing the k).
fn best_spans(p_start: &[f64], p_end: &[f64], desired: &[bool], k: usize, max_len: usize) -> Vec<(usize, usize, f64)> {
    let n = p_start.len();
    let max_len = max_len.min(n); // no span is longer than the window
    let mut spans: Vec<(usize, usize, f64)> = Vec::with_capacity(n * max_len);
    for (s, &ps) in p_start.iter().enumerate() {
        for (e, &pe) in p_end.iter().enumerate().take(n.min(s + max_len)).skip(s) {
            spans.push((s, e, ps * pe));
        }
    }
    // Ties keep the row-major order numpy's stable ranking gives.
    spans.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    spans.truncate(k);
    spans.retain(|&(s, e, _)| desired[s] && desired[e]);
    spans
}
