//! What a model attends to when it reads a text: every layer's and head's attention weights with the tokens on
//! both axes, for heatmaps (`qkv attention`, the study pages). BERT gives its self-attention, GPT-2 its causal
//! self-attention, the translator its three (encoder self-attention, decoder self-attention, cross-attention).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{ModelKind, Translator};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::{bert, gpt2};
use crate::models::bert::BertInput;
use crate::{limits, Error, Result};

/// One kind of attention of one model over one text, every layer and head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionGrid {
    /// Which attention: "self-attention", "causal self-attention", "encoder self-attention", "decoder
    /// self-attention" or "cross-attention".
    pub name: &'static str,
    /// The keys' tokens (columns).
    pub source_tokens: Vec<String>,
    /// The queries' tokens (rows).
    pub target_tokens: Vec<String>,
    /// `[layer][head][query position][key position]`; each row sums to 1.
    pub weights: Vec<Vec<Vec<Vec<f32>>>>,
}

impl AttentionGrid {
    /// A grid from its parts (see the fields).
    pub fn new(
        name: &'static str,
        source_tokens: Vec<String>,
        target_tokens: Vec<String>,
        weights: Vec<Vec<Vec<Vec<f32>>>>,
    ) -> Self {
        Self { name, source_tokens, target_tokens, weights }
    }

    /// The first sequence of a batch of weights (B, H, T, S) as `[head][query][key]`.
    pub fn first_of_batch(weights: &Tensor) -> Result<Vec<Vec<Vec<f32>>>> {
        Ok(weights.get(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?)
    }
}

/// What the model reads: a text for BERT and GPT-2; for the translator a source sentence and, optionally, the
/// target it reads after it (else its own greedy translation).
#[derive(Debug, Clone, Copy)]
pub struct AttentionText<'a> {
    /// The text (for the translator, the source sentence).
    pub text: &'a str,
    /// The translator's target sentence; `None` reads its own greedy translation. Only for translation models.
    pub target: Option<&'a str>,
}

/// Every attention grid of the model in `dir` (BERT, GPT-2 or translation directory) reading `input`.
pub fn attention_grids(dir: &Path, input: AttentionText, device: &Device) -> Result<Vec<AttentionGrid>> {
    let kind = ModelKind::detect(dir)?;
    if input.target.is_some() && kind != ModelKind::Translator {
        return Err(Error::config("--target", "given", "a translation model directory (this one is not)"));
    }
    match kind {
        ModelKind::Embedder | ModelKind::BertTask(_) => bert_self_attention(dir, input.text, device),
        ModelKind::Generator => gpt2_self_attention(dir, input.text, device),
        ModelKind::Translator => Translator::load(dir, device)?.attention_grids(input.text, input.target),
    }
}

fn bert_self_attention(dir: &Path, text: &str, device: &Device) -> Result<Vec<AttentionGrid>> {
    let (model, _) = bert::load_frozen_body(dir, device)?;
    let tokenizer = PretrainedTokenizer::from_dir(dir)?;
    let max_length = model.config().max_position_embeddings;
    let encoded = tokenizer.encode(&[(text, None)], max_length, Truncation::Error)?;
    let (input_ids, attention_mask, token_type_ids) = encoded.tensors(device)?;
    let input = BertInput { input_ids, attention_mask: Some(attention_mask), token_type_ids: Some(token_type_ids) };
    let weights = model.attention_weights(&input)?;
    let tokens = labels(&tokenizer, &encoded.input_ids[0]);
    Ok(vec![AttentionGrid::new("self-attention", tokens.clone(), tokens, first_of_each(&weights)?)])
}

fn gpt2_self_attention(dir: &Path, text: &str, device: &Device) -> Result<Vec<AttentionGrid>> {
    let (model, _) = gpt2::load_frozen(dir, device)?;
    let tokenizer = PretrainedTokenizer::from_dir(dir)?;
    let ids = tokenizer.ids(text)?;
    let limit = model.config().n_positions.min(limits::MAX_SOURCE_TOKENS);
    if ids.is_empty() || ids.len() > limit {
        let expected = format!("1 to {limit} tokens (n_positions, and attention's memory grows with the square)");
        return Err(Error::config("--text", format!("{} tokens", ids.len()), expected));
    }
    let input_ids = Tensor::from_vec(ids.clone(), (1, ids.len()), device)?;
    let weights = model.attention_weights(&input_ids, None)?;
    let tokens = labels(&tokenizer, &ids);
    Ok(vec![AttentionGrid::new("causal self-attention", tokens.clone(), tokens, first_of_each(&weights)?)])
}

fn first_of_each(weights: &[Tensor]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    weights.iter().map(AttentionGrid::first_of_batch).collect()
}

fn labels(tokenizer: &PretrainedTokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&id| tokenizer.id_to_token(id).unwrap_or_else(|| format!("#{id}"))).collect()
}
