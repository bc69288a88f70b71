//! Task pipelines over a BERT model directory, computing what transformers' pipelines of the same names
//! return: `fill-mask` (the most likely tokens for each [MASK]) and `text-classification` (every label's
//! probability).

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::ops::softmax_last_dim;

use crate::hub::bert::{self, LoadOptions};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::models::bert::{Bert, BertArchitecture, BertInput};
use crate::nn::Mode;
use crate::{Error, Result};

/// A model directory with its tokenizer, in evaluation mode.
pub struct Pipeline {
    model: Bert,
    tokenizer: PretrainedTokenizer,
    device: Device,
}

/// One candidate for a masked position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MaskPrediction {
    pub score: f64,
    pub token: u32,
    pub token_str: String,
    /// The input with this token in place of the mask: special tokens removed when there is one mask, kept
    /// (other masks included) when there are several, as transformers writes it.
    pub sequence: String,
}

/// A label and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f64,
}

impl Pipeline {
    /// Loads `dir` as `architecture` (its checkpoint must have that head).
    pub fn load(dir: &Path, architecture: BertArchitecture) -> Result<Self> {
        let device = Device::Cpu;
        let options = LoadOptions { architecture: Some(architecture), ..LoadOptions::default() };
        let model = bert::load(dir, &options, &device)?.model;
        Ok(Self { model, tokenizer: PretrainedTokenizer::from_dir(dir)?, device })
    }

    fn run(&self, inputs: &[(&str, Option<&str>)]) -> Result<(Vec<Vec<u32>>, Tensor)> {
        let limit = self.model.config().max_position_embeddings;
        let encoded = self.tokenizer.encode(inputs, limit, Truncation::Error)?;
        let (input_ids, attention_mask, token_type_ids) = encoded.tensors(&self.device)?;
        let input = BertInput { input_ids, attention_mask: Some(attention_mask), token_type_ids: Some(token_type_ids) };
        let mut outputs = self.model.forward(&input, &mut Mode::Eval)?;
        let logits = outputs.remove("logits").ok_or_else(|| Error::config("pipeline", "no logits", "a task head"))?;
        Ok((encoded.input_ids, logits))
    }

    /// The `top_k` most likely tokens for each [MASK] of `text`, in order of the masks. A text without a mask is
    /// an error.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Vec<Vec<MaskPrediction>>> {
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
            let mut candidates = Vec::with_capacity(top_k);
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
}
