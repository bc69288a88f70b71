//! Translation with a trained encoder-decoder Transformer: sentences in, sentences out, batched by source
//! length, greedy or beam search over the decoder's key/value cache.

use std::path::Path;

use candle_core::{DType, Device};

use crate::decode::{beam_search, DecodeOptions};
use crate::hub::{read_json, LoadReport, WeightSource, WEIGHTS};
use crate::models::{Transformer, TransformerConfig};
use crate::rng::Rng;
use crate::text::batch::{batch_of, token_batches, Example};
use crate::text::tokenizer::Tokenizer;
use crate::Result;

/// A trained translation model loaded from a model directory (config.json, model.safetensors,
/// tokenizer.json): a run's `best/`, one of its checkpoints, or an averaged model. Built once, used from any
/// number of threads (`&self`).
pub struct Translator {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub config: TransformerConfig,
    /// Checkpoint tensors the model did not use.
    pub report: LoadReport,
    device: Device,
}

impl Translator {
    /// Loads `dir` onto `device`; a run directory is accepted too and means its `best/`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dir = if !dir.join("model.safetensors").exists() && dir.join("best").is_dir() {
            dir.join("best")
        } else {
            dir.to_path_buf()
        };
        let config: TransformerConfig = read_json(&dir.join("config.json"))?;
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        let weights = WeightSource::from_file(&dir.join(WEIGHTS), device)?;
        let model = Transformer::new(&config, weights.builder(DType::F32, device))?;
        Ok(Self { model, tokenizer, config, report: weights.report(), device: device.clone() })
    }

    /// Translates sentences in batches of about `max_tokens` source tokens, longest first, returning them in
    /// input order.
    pub fn translate(&self, sentences: &[String], options: &DecodeOptions, max_tokens: usize) -> Result<Vec<String>> {
        let t = &self.tokenizer;
        let examples: Vec<Example> = sentences
            .iter()
            .map(|s| Ok(Example { source: t.encode(s)?, target: Vec::new() }))
            .collect::<Result<_>>()?;
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
