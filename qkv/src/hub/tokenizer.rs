//! The tokenizer of a Hugging Face model directory, run by the `tokenizers` crate: `tokenizer.json`, or for
//! older BERT directories `vocab.txt` (+ `tokenizer_config.json`), assembled into the same pipeline
//! transformers' `BertTokenizerFast` builds. Encodes sentences and sentence pairs into what a `BatchEncoding`
//! holds: input_ids, token_type_ids and attention_mask, padded to the longest and truncated on request.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, Model, PaddingParams, PaddingStrategy, TruncationParams, TruncationStrategy};

use super::{existing, read_json};
use crate::{Error, Result};

/// The fields of tokenizer_config.json that shape a BERT tokenizer built from vocab.txt.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct BertTokenizerConfig {
    do_lower_case: bool,
    tokenize_chinese_chars: bool,
    strip_accents: Option<bool>,
    unk_token: String,
    sep_token: String,
    pad_token: String,
    cls_token: String,
}

impl Default for BertTokenizerConfig {
    fn default() -> Self {
        Self {
            do_lower_case: true,
            tokenize_chinese_chars: true,
            strip_accents: None,
            unk_token: "[UNK]".into(),
            sep_token: "[SEP]".into(),
            pad_token: "[PAD]".into(),
            cls_token: "[CLS]".into(),
        }
    }
}

/// What to do with a sequence longer than `max_length` tokens (special tokens included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Refuse it with an error naming the input.
    #[default]
    Error,
    /// Cut the longer of the two sentences first, token by token (transformers' `longest_first`).
    LongestFirst,
}

/// A padded batch: each field (B, S) with S the longest sequence of the batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub input_ids: Vec<Vec<u32>>,
    pub token_type_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

impl Encoded {
    /// (input_ids, attention_mask, token_type_ids) as u32 tensors (B, S).
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let to_tensor = |rows: &Vec<Vec<u32>>| -> Result<Tensor> {
            let b = rows.len();
            let s = rows.first().map_or(0, Vec::len);
            Ok(Tensor::from_vec(rows.concat(), (b, s), device)?)
        };
        Ok((to_tensor(&self.input_ids)?, to_tensor(&self.attention_mask)?, to_tensor(&self.token_type_ids)?))
    }
}

/// A model directory's tokenizer.
#[derive(Debug, Clone)]
pub struct PretrainedTokenizer {
    inner: tokenizers::Tokenizer,
    pad: (u32, String),
}

impl PretrainedTokenizer {
    /// From `dir/tokenizer.json`, else from `dir/vocab.txt` with `tokenizer_config.json`'s casing. The
    /// padding and truncation stored in tokenizer.json are replaced by those of each call.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let inner = if let Some(path) = existing(dir, "tokenizer.json") {
            let json = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            json.parse::<tokenizers::Tokenizer>()
                .map_err(|e| Error::input(&path, None, format!("not a tokenizer.json: {e}")))?
        } else if let Some(vocab) = existing(dir, "vocab.txt") {
            let config: BertTokenizerConfig = match existing(dir, "tokenizer_config.json") {
                Some(path) => read_json(&path)?,
                None => BertTokenizerConfig::default(),
            };
            bert_from_vocab(&vocab, &config)?
        } else {
            return Err(Error::input(dir, None, "has no tokenizer.json or vocab.txt"));
        };
        let pad_token = ["[PAD]", "<pad>"].into_iter().find_map(|t| inner.token_to_id(t).map(|id| (id, t.to_string())));
        let mut tokenizer = Self { inner, pad: pad_token.unwrap_or((0, "[PAD]".into())) };
        tokenizer.inner.with_padding(None);
        tokenizer.inner.with_truncation(None).map_err(|e| Error::tokenizer("clearing truncation", e))?;
        Ok(tokenizer)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::tokenizer("decoding", e))
    }

    /// Text of `ids` with the special tokens written out.
    pub fn decode_with_specials(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::tokenizer("decoding", e))
    }

    /// Encodes sentences (`second` = `None`) or pairs, with the model's special tokens ([CLS] A [SEP] B [SEP]
    /// for BERT), padded on the right to the longest. Longer than `max_length` tokens: an error naming the
    /// input's index and length, or cut as `truncation` says.
    pub fn encode(
        &self,
        inputs: &[(&str, Option<&str>)],
        max_length: usize,
        truncation: Truncation,
    ) -> Result<Encoded> {
        let mut tokenizer = self.inner.clone();
        if truncation == Truncation::LongestFirst {
            let params = TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            };
            tokenizer.with_truncation(Some(params)).map_err(|e| Error::tokenizer("truncation", e))?;
        }
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: self.pad.0,
            pad_token: self.pad.1.clone(),
            ..PaddingParams::default()
        }));
        let batch: Vec<EncodeInput> = inputs
            .iter()
            .map(|&(a, b)| match b {
                Some(b) => EncodeInput::Dual(a.into(), b.into()),
                None => EncodeInput::Single(a.into()),
            })
            .collect();
        let encodings = tokenizer.encode_batch(batch, true).map_err(|e| Error::tokenizer("encoding", e))?;
        let mut encoded = Encoded { input_ids: vec![], token_type_ids: vec![], attention_mask: vec![] };
        for (i, e) in encodings.iter().enumerate() {
            let length = e.get_attention_mask().iter().filter(|&&m| m == 1).count();
            if length > max_length {
                return Err(Error::config(
                    "input length",
                    format!("input {} has {length} tokens", i + 1),
                    format!("at most {max_length} (the model's limit; ask for truncation to cut it)"),
                ));
            }
            encoded.input_ids.push(e.get_ids().to_vec());
            encoded.token_type_ids.push(e.get_type_ids().to_vec());
            encoded.attention_mask.push(e.get_attention_mask().to_vec());
        }
        Ok(encoded)
    }
}

/// BERT's pipeline from a WordPiece vocabulary: BertNormalizer (clean text, Chinese characters, lower case
/// and accents as configured), BertPreTokenizer, WordPiece with `##` continuations, [CLS] A [SEP] (B [SEP]).
fn bert_from_vocab(vocab: &Path, config: &BertTokenizerConfig) -> Result<tokenizers::Tokenizer> {
    let path = vocab.to_string_lossy().to_string();
    let model = WordPiece::from_file(&path)
        .unk_token(config.unk_token.clone())
        .build()
        .map_err(|e| Error::input(vocab, None, format!("not a WordPiece vocabulary: {e}")))?;
    let id = |token: &str| {
        model.token_to_id(token).ok_or_else(|| Error::input(vocab, None, format!("has no {token} token")))
    };
    let (cls, sep) = (id(&config.cls_token)?, id(&config.sep_token)?);
    id(&config.pad_token)?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            config.tokenize_chinese_chars,
            config.strip_accents,
            config.do_lower_case,
        )))
        .map_err(|e| Error::tokenizer("BERT normalizer", e))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        (config.sep_token.clone(), sep),
        (config.cls_token.clone(), cls),
    )));
    tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    Ok(tokenizer)
}
