//! sentence-transformers directories: a Hugging Face BERT plus `modules.json` (Transformer → Pooling →
//! optional Normalize), `1_Pooling/config.json` (which pooling) and `sentence_bert_config.json` (the
//! longest input). [`SentenceEncoder`] turns sentences into the same embeddings `SentenceTransformer.encode`
//! returns.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::bert::{self, LoadOptions};
use super::tokenizer::{PretrainedTokenizer, Truncation};
use super::{existing, read_json, LoadReport};
use crate::models::bert::{cls_pool, l2_normalize, max_pool, mean_pool, Bert, BertArchitecture, BertInput};
use crate::nn::Mode;
use crate::{Error, Result};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    /// Sum over the real tokens divided by √(their count).
    MeanSqrtLen,
}

#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// A sentence embedder: BERT body, pooling, optional L2 normalisation.
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: PretrainedTokenizer,
    pooling: Pooling,
    normalize: bool,
    max_length: usize,
    device: Device,
    pub report: LoadReport,
}

impl SentenceEncoder {
    /// Reads `dir`. With modules.json, pooling and normalisation come from it; a plain BERT directory gets mean
    /// pooling and L2 normalisation. Inputs are truncated to `sentence_bert_config.json`'s `max_seq_length`
    /// (as sentence-transformers does), else to `max_position_embeddings`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (pooling, normalize) = match existing(dir, "modules.json") {
            Some(path) => read_modules(dir, &path)?,
            None => (Pooling::Mean, true),
        };
        let options = LoadOptions { architecture: Some(BertArchitecture::Base), ..LoadOptions::default() };
        let loaded = bert::load(dir, &options, device)?;
        let positions = loaded.model.config().max_position_embeddings;
        let configured = match existing(dir, "sentence_bert_config.json") {
            Some(path) => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
            None => None,
        };
        Ok(Self {
            model: loaded.frozen()?,
            tokenizer: PretrainedTokenizer::from_dir(dir)?,
            pooling,
            normalize,
            max_length: configured.unwrap_or(positions).min(positions),
            device: device.clone(),
            report: loaded.report,
        })
    }

    pub fn dimension(&self) -> usize {
        self.model.config().hidden_size
    }

    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Embeddings (B, C) of one batch of sentences.
    pub fn encode_batch(&self, sentences: &[&str]) -> Result<Tensor> {
        let inputs: Vec<(&str, Option<&str>)> = sentences.iter().map(|s| (*s, None)).collect();
        let encoded = self.tokenizer.encode(&inputs, self.max_length, Truncation::LongestFirst)?;
        let (input_ids, attention_mask, token_type_ids) = encoded.tensors(&self.device)?;
        let input =
            BertInput { input_ids, attention_mask: Some(attention_mask.clone()), token_type_ids: Some(token_type_ids) };
        let (hidden, _) = self.model.encode(&input, &mut Mode::Eval)?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool(&hidden, &attention_mask)?,
            Pooling::Cls => cls_pool(&hidden)?,
            Pooling::Max => max_pool(&hidden, &attention_mask)?,
            Pooling::MeanSqrtLen => {
                let mean = mean_pool(&hidden, &attention_mask)?;
                let counts = attention_mask.to_dtype(candle_core::DType::F32)?.sum_keepdim(1)?;
                mean.broadcast_mul(&counts.sqrt()?)?
            }
        };
        let embeddings = if self.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(embeddings)
    }

    /// Embeddings (N, C) of all `sentences`, `batch_size` at a time. Sentences are sorted by length first, so a
    /// batch carries little padding, and the rows are returned in input order.
    pub fn encode(&self, sentences: &[&str], batch_size: usize) -> Result<Tensor> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", 0, "at least 1"));
        }
        if sentences.is_empty() {
            return Ok(Tensor::zeros((0, self.dimension()), candle_core::DType::F32, &self.device)?);
        }
        let mut order: Vec<usize> = (0..sentences.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sentences[i].len()));
        let mut rows = vec![None; sentences.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| sentences[i]).collect();
            let embeddings = self.encode_batch(&batch)?;
            for (row, &i) in chunk.iter().enumerate() {
                rows[i] = Some(embeddings.get(row)?);
            }
        }
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Pooling and normalisation named by modules.json and the Pooling module's config.json.
fn read_modules(dir: &Path, modules_path: &Path) -> Result<(Pooling, bool)> {
    let modules: Vec<Module> = read_json(modules_path)?;
    let mut pooling = None;
    let mut normalize = false;
    for module in &modules {
        match module.kind.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Pooling" => pooling = Some(read_pooling(&dir.join(&module.path).join("config.json"))?),
            "Normalize" => normalize = true,
            other => {
                let message = format!("module type {other} is not supported (Transformer, Pooling, Normalize are)");
                return Err(Error::input(modules_path, None, message));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| Error::input(modules_path, None, "lists no Pooling module"))?;
    Ok((pooling, normalize))
}

fn read_pooling(path: &PathBuf) -> Result<Pooling> {
    let config: PoolingConfig = read_json(path)?;
    let modes = [
        (config.pooling_mode_mean_tokens, Pooling::Mean),
        (config.pooling_mode_cls_token, Pooling::Cls),
        (config.pooling_mode_max_tokens, Pooling::Max),
        (config.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
    ];
    let chosen: Vec<Pooling> = modes.iter().filter(|(on, _)| *on).map(|(_, p)| *p).collect();
    match chosen[..] {
        [one] => Ok(one),
        _ => Err(Error::input(
            path,
            None,
            "exactly one pooling_mode_* must be true (concatenated modes are not supported)",
        )),
    }
}
