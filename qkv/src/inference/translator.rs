//! Translation with a trained encoder-decoder Transformer: sentences in, sentences out, batched by source
//! length, greedy or beam search over the decoder's key/value cache.

use std::path::Path;

use candle_core::{DType, Device};

use super::attention::AttentionGrid;
use crate::decode::{beam_search, DecodeOptions};
use crate::hub::{LoadReport, WeightSource, WEIGHTS};
use crate::kernels::reduced::WeightDtype;
use crate::models::{PositionEncoding, Transformer, TransformerConfig};
use crate::rng::Rng;
use crate::text::batch::{batch_of, token_batches, Example};
use crate::text::tokenizer::Tokenizer;
use crate::{limits, Error, Result};

/// A trained translation model loaded from a model directory (config.json, model.safetensors,
/// tokenizer.json): a run's `best/`, one of its checkpoints, or an averaged model. Built once, used from any
/// number of threads (`&self`).
pub struct Translator {
    /// The encoder-decoder model.
    pub model: Transformer,
    /// The joint source-target subword tokenizer from tokenizer.json.
    pub tokenizer: Tokenizer,
    /// The model's config.json.
    pub config: TransformerConfig,
    /// Checkpoint tensors the model did not use.
    pub report: LoadReport,
    device: Device,
}

impl Translator {
    /// Loads `dir` onto `device`; a run directory is accepted too and means its `best/`.
    /// The matrices are in the dtype the directory was saved in ([`crate::hub::reduced::stored_dtype`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, crate::hub::reduced::stored_dtype(dir)?)
    }

    /// As [`load`](Self::load), the encoder's and decoder's matrices stored in `dtype`
    /// ([`Transformer::pack_weights`]).
    pub fn load_as(dir: &Path, device: &Device, dtype: WeightDtype) -> Result<Self> {
        let dir = crate::hub::transformer::model_dir(dir);
        let config = crate::hub::transformer::read_checked_config(&dir)?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        let weights = WeightSource::from_file(&dir.join(WEIGHTS), device)?;
        let mut model = Transformer::new(&config, weights.builder(DType::F32, device))?;
        model.pack_weights(dtype)?;
        Ok(Self { model, tokenizer, config, report: weights.report(), device: device.clone() })
    }

    /// The cross-attention of every decoder layer and head while the model reads `target` after `source` —
    /// its own greedy translation when `target` is `None`.
    pub fn cross_attention(&self, source: &str, target: Option<&str>) -> Result<AttentionGrid> {
        let mut grids = self.attention_grids(source, target)?;
        Ok(grids.pop().expect("the cross-attention comes last"))
    }

    /// Every attention map while the model reads `target` (its own greedy translation when `None`) after
    /// `source`: the encoder's self-attention, the decoder's (causal) self-attention and its cross-attention,
    /// in that order. Decoder rows are labelled with the token each position predicts (EOS last), decoder
    /// self-attention columns with the token each position reads (BOS first).
    pub fn attention_grids(&self, source: &str, target: Option<&str>) -> Result<Vec<AttentionGrid>> {
        let t = &self.tokenizer;
        let target = match target {
            Some(text) => text.to_string(),
            None => self.translate(&[source.to_string()], &DecodeOptions::greedy(), 4096)?.remove(0),
        };
        let example = Example { source: t.encode(source)?, target: t.encode(&target)? };
        let batch = batch_of(t, std::slice::from_ref(&example), &[0], &self.device)?;
        let maps = self.model.all_attention_maps(&batch.source, &batch.source_valid, &batch.decoder_input)?;
        let label = |id: &u32| t.id_to_token(*id).unwrap_or_else(|| format!("#{id}"));
        let source_tokens: Vec<String> = example.source.iter().chain([t.eos_id()].iter()).map(label).collect();
        let predicted: Vec<String> = example.target.iter().chain([t.eos_id()].iter()).map(label).collect();
        let read: Vec<String> = [t.bos_id()].iter().chain(example.target.iter()).map(label).collect();
        let encoder = maps.encoder.iter().map(AttentionGrid::first_of_batch).collect::<Result<_>>()?;
        let decoder =
            maps.decoder.iter().map(|l| AttentionGrid::first_of_batch(&l.self_attn)).collect::<Result<_>>()?;
        let cross = maps.decoder.iter().map(|l| AttentionGrid::first_of_batch(&l.cross_attn)).collect::<Result<_>>()?;
        Ok(vec![
            AttentionGrid::new("encoder self-attention", source_tokens.clone(), source_tokens.clone(), encoder),
            AttentionGrid::new("decoder self-attention", read, predicted.clone(), decoder),
            AttentionGrid::new("cross-attention", source_tokens, predicted, cross),
        ])
    }

    /// The longest source sentence translated, in subword tokens: [`limits::MAX_SOURCE_TOKENS`], or fewer
    /// when a learned position table is shorter (it also holds the EOS the source gets).
    pub fn max_source_tokens(&self) -> usize {
        match self.config.position_encoding {
            PositionEncoding::Learned => {
                self.config.max_position_embeddings.saturating_sub(1).min(limits::MAX_SOURCE_TOKENS)
            }
            _ => limits::MAX_SOURCE_TOKENS,
        }
    }

    /// Translates sentences in batches of about `max_tokens` source tokens, longest first, returning them in
    /// input order. A sentence longer than [`Self::max_source_tokens`] is an error naming its line.
    pub fn translate(&self, sentences: &[String], options: &DecodeOptions, max_tokens: usize) -> Result<Vec<String>> {
        let t = &self.tokenizer;
        let examples: Vec<Example> = sentences
            .iter()
            .map(|s| Ok(Example { source: t.encode(s)?, target: Vec::new() }))
            .collect::<Result<_>>()?;
        let limit = self.max_source_tokens();
        if let Some((i, e)) = examples.iter().enumerate().find(|(_, e)| e.source.len() > limit) {
            let expected = format!(
                "at most {limit} (line {} of the input): attention's time and memory grow with the square of the \
                 length, so split long lines into sentences",
                i + 1
            );
            return Err(Error::OutOfRange {
                what: "subword tokens in a sentence",
                found: e.source.len() as i64,
                expected,
            });
        }
        let lengths: Vec<(usize, usize)> = examples.iter().map(|e| (e.source.len(), 0)).collect();
        let budget = max_tokens.max(lengths.iter().map(|&(s, _)| s + 1).max().unwrap_or(1));
        let mut output = vec![String::new(); sentences.len()];
        for indices in token_batches(&lengths, budget, None::<&mut Rng>)? {
            let batch = batch_of(t, &examples, &indices, &self.device)?;
            let decoded = beam_search(&self.model, &batch.source, &batch.source_valid, options)?;
            for (&i, hypothesis) in indices.iter().zip(decoded) {
                output[i] = t.decode(&hypothesis.tokens)?;
            }
        }
        Ok(output)
    }
}
