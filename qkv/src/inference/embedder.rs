//! Sentence embeddings from a sentence-transformers (or plain BERT) directory: the same vectors
//! `SentenceTransformer.encode` returns — BERT body, the directory's pooling, optional L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::device::on_workers;
use crate::hub::bert;
use crate::hub::sentence_transformers::{read_sentence_config, Pooling};
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::hub::LoadReport;
use crate::kernels::reduced::WeightDtype;
use crate::models::bert::{cls_pool, l2_normalize, max_pool, mean_pool, Bert, BertInput};
use crate::nn::Mode;
use crate::{Error, Result};

/// A sentence embedder, built once and used from any number of threads (`&self`).
pub struct Embedder {
    model: Bert,
    tokenizer: PretrainedTokenizer,
    pooling: Pooling,
    normalize: bool,
    max_length: usize,
    device: Device,
    /// What loading left over: checkpoint tensors the body does not use (a pooler, a task head).
    pub report: LoadReport,
}

impl Embedder {
    /// Reads `dir` (see [`read_sentence_config`]). Inputs are truncated to `sentence_bert_config.json`'s
    /// `max_seq_length` (as sentence-transformers does), else to `max_position_embeddings`. The matrices are in
    /// the dtype the directory was saved in ([`crate::hub::reduced::stored_dtype`]: f32 unless `qkv convert`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, crate::hub::reduced::stored_dtype(dir)?)
    }

    /// As [`load`](Self::load), the encoder's matrices stored in `dtype` ([`Bert::pack_weights`]).
    pub fn load_as(dir: &Path, device: &Device, dtype: WeightDtype) -> Result<Self> {
        let sentence = read_sentence_config(dir)?;
        let (mut model, report) = bert::load_frozen_body(dir, device)?;
        model.pack_weights(dtype)?;
        let positions = model.config().max_position_embeddings;
        Ok(Self {
            model,
            tokenizer: PretrainedTokenizer::from_dir(dir)?,
            pooling: sentence.pooling,
            normalize: sentence.normalize,
            max_length: sentence.max_seq_length.unwrap_or(positions).min(positions),
            device: device.clone(),
            report,
        })
    }

    /// The same model pooling its token vectors with `pooling` instead of the directory's choice (`qkv study
    /// bert` compares them on one checkpoint).
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// The embedding's width: the model's `hidden_size`.
    pub fn dimension(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Whether embeddings are L2-normalised (unit length), as the directory's Normalize module asks.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The longest input in tokens (\[CLS\] and \[SEP\] included); longer ones are truncated.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokens each sentence becomes after truncation (what the model reads; for usage counts).
    pub fn token_counts(&self, sentences: &[&str]) -> Result<Vec<usize>> {
        self.counts(sentences, self.max_length, Truncation::LongestFirst)
    }

    /// Tokens each sentence has before truncation (to refuse, rather than silently cut, what is too long).
    pub fn untruncated_token_counts(&self, sentences: &[&str]) -> Result<Vec<usize>> {
        self.counts(sentences, usize::MAX, Truncation::Error)
    }

    fn counts(&self, sentences: &[&str], max_length: usize, truncation: Truncation) -> Result<Vec<usize>> {
        let inputs: Vec<(&str, Option<&str>)> = sentences.iter().map(|s| (*s, None)).collect();
        let encoded = self.tokenizer.encode(&inputs, max_length, truncation)?;
        Ok(encoded.attention_mask.iter().map(|m| m.iter().filter(|&&v| v == 1).count()).collect())
    }

    /// Embeddings (B, C) of one batch of sentences.
    pub fn embed_batch(&self, sentences: &[&str]) -> Result<Tensor> {
        let inputs: Vec<(&str, Option<&str>)> = sentences.iter().map(|s| (*s, None)).collect();
        let encoded = self.tokenizer.encode(&inputs, self.max_length, Truncation::LongestFirst)?;
        let (input_ids, attention_mask, token_type_ids) = encoded.tensors(&self.device)?;
        self.pooled(input_ids, attention_mask, token_type_ids)
    }

    /// Embeddings of already tokenized inputs, each row exactly what the model reads (\[CLS\] … \[SEP\] included as
    /// the tokenizer writes them), at most [`max_length`](Self::max_length) ids below the vocabulary size.
    pub fn embed_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.model.config().vocab_size as u32;
        for (i, row) in rows.iter().enumerate() {
            if row.is_empty() || row.len() > self.max_length {
                let found = format!("row {i} has {} ids", row.len());
                return Err(Error::config("token ids", found, format!("1 to {} per input", self.max_length)));
            }
            if let Some(&id) = row.iter().find(|&&id| id >= vocab) {
                return Err(Error::config("token ids", format!("id {id} in row {i}"), format!("ids below {vocab}")));
            }
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
        for row in rows {
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, width - row.len())));
            mask.extend(std::iter::repeat_n(1u32, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
        }
        let shape = (rows.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        Ok(self.pooled(ids.clone(), mask, ids.zeros_like()?)?.to_vec2::<f32>()?)
    }

    /// The model over (B, S) ids, mask and segments, pooled and (when the directory says so) normalised.
    fn pooled(&self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Result<Tensor> {
        let input =
            BertInput { input_ids, attention_mask: Some(attention_mask.clone()), token_type_ids: Some(token_type_ids) };
        let (hidden, _) = on_workers(|| self.model.encode(&input, &mut Mode::Eval))?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool(&hidden, &attention_mask)?,
            Pooling::Cls => cls_pool(&hidden)?,
            Pooling::Max => max_pool(&hidden, &attention_mask)?,
            Pooling::MeanSqrtLen => {
                let mean = mean_pool(&hidden, &attention_mask)?;
                let counts = attention_mask.to_dtype(DType::F32)?.sum_keepdim(1)?;
                mean.broadcast_mul(&counts.sqrt()?)?
            }
        };
        if self.normalize {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }

    /// The ids each sentence becomes (what [`embed_ids`](Self::embed_ids) takes).
    pub fn encode(&self, sentence: &str) -> Result<Vec<u32>> {
        let encoded = self.tokenizer.encode(&[(sentence, None)], self.max_length, Truncation::LongestFirst)?;
        let n = encoded.attention_mask[0].iter().filter(|&&m| m == 1).count();
        Ok(encoded.input_ids[0][..n].to_vec())
    }

    /// Embeddings (N, C) of all `sentences`, `batch_size` at a time. Sentences are sorted by length first, so a
    /// batch carries little padding, and the rows are returned in input order.
    pub fn embed(&self, sentences: &[&str], batch_size: usize) -> Result<Tensor> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", 0, "at least 1"));
        }
        if sentences.is_empty() {
            return Ok(Tensor::zeros((0, self.dimension()), DType::F32, &self.device)?);
        }
        let mut order: Vec<usize> = (0..sentences.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sentences[i].len()));
        let mut rows = vec![None; sentences.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| sentences[i]).collect();
            let embeddings = self.embed_batch(&batch)?;
            for (row, &i) in chunk.iter().enumerate() {
                rows[i] = Some(embeddings.get(row)?);
            }
        }
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// The cosine similarity of each pair (`firsts[i]`, `seconds[i]`), as sentence-transformers' STS
    /// evaluation computes it (rows normalised here whether or not the model normalises).
    pub fn cosines(&self, firsts: &[&str], seconds: &[&str], batch_size: usize) -> Result<Vec<f64>> {
        if firsts.len() != seconds.len() {
            let found = format!("{} first and {} second sentences", firsts.len(), seconds.len());
            return Err(Error::config("sentence pairs", found, "as many of each"));
        }
        let a = l2_normalize(&self.embed(firsts, batch_size)?)?;
        let b = l2_normalize(&self.embed(seconds, batch_size)?)?;
        Ok((a * b)?.sum(candle_core::D::Minus1)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }

    /// As [`embed`](Self::embed), as one vector per sentence.
    pub fn embed_vectors(&self, sentences: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed(sentences, batch_size)?.to_vec2::<f32>()?)
    }
}
