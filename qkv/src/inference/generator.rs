//! Text generation with a GPT-2 directory: prompts as text or ids, the continuation streamed as UTF-8-safe text
//! pieces ([`TextStream`]) that stop at stop strings, one prompt at a time or many in left-padded batches.

use std::path::Path;

use candle_core::Device;

use super::text_stream::TextStream;
use crate::decode::generate::{
    generate_batch, generate_batch_choices, GenerateOptions, Generated, StopReason, TokenChoice,
};
use crate::hub::gpt2;
use crate::hub::tokenizer::PretrainedTokenizer;
use crate::kernels::reduced::WeightDtype;
use crate::models::Gpt2;
use crate::{Error, Result};

/// A GPT-2 model with its tokenizer (if the directory has one), built once and used from any number of threads
/// (`&self`; each call draws from its own generator seeded by its options).
pub struct Generator {
    model: Gpt2,
    tokenizer: Option<PretrainedTokenizer>,
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The token ids generated after the prompt.
    pub generated_ids: Vec<u32>,
    /// The continuation's text without any stop string (`None` without a tokenizer).
    pub text: Option<String>,
    /// Why generation ended ([`StopReason::Caller`] when a stop string appeared).
    pub stop: StopReason,
    /// Each generated token's log-probability and alternatives, when the options asked for them.
    pub logprobs: Vec<TokenChoice>,
}

impl Generator {
    /// Reads the GPT-2 directory `dir` (config.json, weights and, if present, its tokenizer) onto `device`.
    /// The matrices are in the dtype the directory was saved in ([`crate::hub::reduced::stored_dtype`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, crate::hub::reduced::stored_dtype(dir)?)
    }

    /// As [`load`](Self::load), the weight matrices stored in `dtype` ([`Gpt2::pack_weights`]).
    pub fn load_as(dir: &Path, device: &Device, dtype: WeightDtype) -> Result<Self> {
        let (mut model, _) = gpt2::load_frozen(dir, device)?;
        model.pack_weights(dtype)?;
        // tokenizer.json, or GPT-2's original vocab.json + merges.txt; a model trained on ids may have neither.
        let has_tokenizer = ["tokenizer.json", "vocab.json"].iter().any(|name| dir.join(name).exists());
        let tokenizer = has_tokenizer.then(|| PretrainedTokenizer::from_dir(dir)).transpose()?;
        Ok(Self { model, tokenizer })
    }

    /// The model.
    pub fn model(&self) -> &Gpt2 {
        &self.model
    }

    /// The directory's tokenizer; `None` for a model trained on ids without one.
    pub fn tokenizer(&self) -> Option<&PretrainedTokenizer> {
        self.tokenizer.as_ref()
    }

    /// The model's end-of-text id when it is a real token (models trained without one carry an id past the
    /// vocabulary).
    pub fn eos_token_id(&self) -> Option<u32> {
        let config = self.model.config();
        (config.eos_token_id < config.vocab_size as u32).then_some(config.eos_token_id)
    }

    /// The ids of a text prompt.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        self.text_tokenizer()?.ids(prompt)
    }

    /// Continues `prompt`, calling `on_text` with each piece of text as soon as it is whole (never a split
    /// character, never part of a stop string). Without a tokenizer, `stops` must be empty and no text is
    /// produced.
    pub fn complete(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        stops: &[String],
        mut on_text: impl FnMut(&str) -> Result<()>,
    ) -> Result<Completion> {
        if self.tokenizer.is_none() && !stops.is_empty() {
            return Err(Error::tokenizer("stop strings", "they need the model directory's tokenizer.json"));
        }
        // Without a tokenizer there is no text: ids only.
        let mut stream = self.tokenizer.as_ref().map(|t| TextStream::new(t, stops));
        let mut logprobs = Vec::new();
        let mut done = generate_batch_choices(&self.model, &[prompt.to_vec()], options, 0, |_, choice| {
            logprobs.extend(options.logprobs.map(|_| choice.clone()));
            let Some(stream) = stream.as_mut() else { return Ok(true) };
            let piece = stream.push(choice.token)?;
            if !piece.is_empty() {
                on_text(&piece)?;
            }
            Ok(!stream.stopped())
        })?;
        let Generated { tokens: generated_ids, mut stop } = done.remove(0);
        let text = match stream.as_mut() {
            Some(stream) => {
                let rest = stream.finish();
                if !rest.is_empty() {
                    on_text(&rest)?;
                }
                if stream.stopped() {
                    stop = StopReason::Caller;
                }
                Some(stream.text().to_string())
            }
            None => None,
        };
        Ok(Completion { prompt_ids: prompt.to_vec(), generated_ids, text, stop, logprobs })
    }

    /// Continues every prompt of `prompts` together (left-padded, see [`generate_batch`]); each row stops at its
    /// own stop string.
    pub fn complete_batch(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        stops: &[String],
    ) -> Result<Vec<Completion>> {
        let tokenizer = self.text_tokenizer()?;
        let mut streams: Vec<TextStream> = prompts.iter().map(|_| TextStream::new(tokenizer, stops)).collect();
        let pad = options.eos_token_id.or(self.eos_token_id()).unwrap_or(0);
        let results = generate_batch(&self.model, prompts, options, pad, |row, token| {
            streams[row].push(token)?;
            Ok(!streams[row].stopped())
        })?;
        let completions = prompts.iter().zip(results).zip(streams.iter_mut()).map(|((prompt, result), stream)| {
            stream.finish();
            let stop = if stream.stopped() { StopReason::Caller } else { result.stop };
            Completion {
                prompt_ids: prompt.clone(),
                generated_ids: result.tokens,
                text: Some(stream.text().to_string()),
                stop,
                logprobs: Vec::new(),
            }
        });
        Ok(completions.collect())
    }

    fn text_tokenizer(&self) -> Result<&PretrainedTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::tokenizer("generation", "the model directory has no tokenizer.json (give prompt ids instead)")
        })
    }
}
