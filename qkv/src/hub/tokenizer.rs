//! The tokenizer of a Hugging Face model directory, run by the `tokenizers` crate: `tokenizer.json`, or for
//! older directories the files it is converted from — BERT's `vocab.txt` (+ `tokenizer_config.json`) or
//! GPT-2's `vocab.json` + `merges.txt` — assembled into the same pipeline transformers' `BertTokenizerFast` /
//! `GPT2TokenizerFast` builds. Encodes sentences and sentence pairs into what a `BatchEncoding`
//! holds: input_ids, token_type_ids and attention_mask, padded to the longest and truncated on request.

use std::path::Path;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, Model, PaddingParams, PaddingStrategy, TruncationParams, TruncationStrategy};

use super::{existing, read_json};
use crate::text::tokenizer::{read_tokenizer_json, write_tokenizer_json};
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
    /// Token ids, \[CLS\] and \[SEP\] included, padded with the pad id.
    pub input_ids: Vec<Vec<u32>>,
    /// Segment of each token: 0 for the first text, 1 for the second of a pair (0 at padding).
    pub token_type_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
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
#[derive(Debug)]
pub struct PretrainedTokenizer {
    /// Pads batches to their longest member; no truncation.
    inner: tokenizers::Tokenizer,
    /// The same with longest-first truncation to the given length, made on first use: configuring a copy
    /// clones the whole vocabulary, too slow to do for every batch.
    truncating: Mutex<Option<(usize, tokenizers::Tokenizer)>>,
}

impl Clone for PretrainedTokenizer {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), truncating: Mutex::new(None) }
    }
}

impl PretrainedTokenizer {
    /// From `dir/tokenizer.json`, else from `dir/vocab.txt` with `tokenizer_config.json`'s casing. The
    /// padding and truncation stored in tokenizer.json are replaced by those of each call.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let inner = if let Some(path) = existing(dir, "tokenizer.json") {
            read_tokenizer_json(&path)?
        } else if let Some(vocab) = existing(dir, "vocab.txt") {
            let config: BertTokenizerConfig = match existing(dir, "tokenizer_config.json") {
                Some(path) => read_json(&path)?,
                None => BertTokenizerConfig::default(),
            };
            bert_from_vocab(&vocab, &config)?
        } else if let (Some(vocab), Some(merges)) = (existing(dir, "vocab.json"), existing(dir, "merges.txt")) {
            let config: Gpt2TokenizerConfig = match existing(dir, "tokenizer_config.json") {
                Some(path) => read_json(&path)?,
                None => Gpt2TokenizerConfig::default(),
            };
            gpt2_from_files(&vocab, &merges, &config)?
        } else {
            return Err(Error::input(dir, None, "has no tokenizer.json, vocab.txt, or vocab.json with merges.txt"));
        };
        Self::new(inner)
    }

    /// Wraps `inner` with padding to the longest of a batch and without the truncation a file may carry.
    fn new(mut inner: tokenizers::Tokenizer) -> Result<Self> {
        let (pad_id, pad_token) = ["[PAD]", "<pad>"]
            .into_iter()
            .find_map(|t| inner.token_to_id(t).map(|id| (id, t.to_string())))
            .unwrap_or((0, "[PAD]".into()));
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        inner.with_truncation(None).map_err(|e| Error::tokenizer("clearing truncation", e))?;
        Ok(Self { inner, truncating: Mutex::new(None) })
    }

    /// The id of `token` in the vocabulary, if it is there.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id`, if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// V: the vocabulary's size, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` without special tokens (a generation prompt).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| Error::tokenizer("encoding", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::tokenizer("decoding", e))
    }

    /// Text of `ids` with the special tokens written out.
    pub fn decode_with_specials(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::tokenizer("decoding", e))
    }

    /// Encodes sentences (`second` = `None`) or pairs, with the model's special tokens (\[CLS\] A \[SEP\] B \[SEP\]
    /// for BERT), padded on the right to the longest. Longer than `max_length` tokens: an error naming the
    /// input's index and length, or cut as `truncation` says.
    pub fn encode(
        &self,
        inputs: &[(&str, Option<&str>)],
        max_length: usize,
        truncation: Truncation,
    ) -> Result<Encoded> {
        let batch: Vec<EncodeInput> = inputs
            .iter()
            .map(|&(a, b)| match b {
                Some(b) => EncodeInput::Dual(a.into(), b.into()),
                None => EncodeInput::Single(a.into()),
            })
            .collect();
        let encodings = match truncation {
            Truncation::Error => self.inner.encode_batch(batch, true),
            Truncation::LongestFirst => {
                let mut cache = self.truncating.lock().map_err(|_| Error::tokenizer("encoding", "a poisoned lock"))?;
                let tokenizer = match cache.take() {
                    Some((length, tokenizer)) if length == max_length => tokenizer,
                    _ => {
                        let mut tokenizer = self.inner.clone();
                        let strategy = TruncationStrategy::LongestFirst;
                        let params = TruncationParams { max_length, strategy, ..TruncationParams::default() };
                        tokenizer.with_truncation(Some(params)).map_err(|e| Error::tokenizer("truncation", e))?;
                        tokenizer
                    }
                };
                let encodings = tokenizer.encode_batch(batch, true);
                *cache = Some((max_length, tokenizer));
                encodings
            }
        }
        .map_err(|e| Error::tokenizer("encoding", e))?;
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

/// Windows of \[CLS\] question \[SEP\] context-piece \[SEP\] over a long context, as transformers' question-answering
/// pipeline builds them, with what is needed to map tokens back to the context's characters.
#[derive(Debug, Clone)]
pub struct QuestionWindows {
    /// The model inputs, in order along the context.
    pub windows: Vec<QuestionWindow>,
    /// Character offsets of each context token in the context.
    pub context_offsets: Vec<(usize, usize)>,
    /// The word (of the pre-tokenizer) each context token belongs to.
    pub context_words: Vec<Option<u32>>,
}

/// One model input: ids and segments, and for each position the context token it holds (`None` for \[CLS\],
/// question tokens and \[SEP\]).
#[derive(Debug, Clone)]
pub struct QuestionWindow {
    /// \[CLS\] question \[SEP\] context piece \[SEP\], as ids.
    pub input_ids: Vec<u32>,
    /// Segment of each position: 0 for \[CLS\], the question and its \[SEP\]; 1 for the context piece and the
    /// last \[SEP\].
    pub token_type_ids: Vec<u32>,
    /// For each position, the index of the context token it holds (into the context's tokens and
    /// [`QuestionWindows::context_offsets`]).
    pub context_tokens: Vec<Option<usize>>,
}

impl QuestionWindows {
    /// Characters of the words holding context tokens `first` and `last`. A word's tokens are consecutive, so
    /// only its neighbours are looked at (scanning the whole context for every span made long contexts
    /// quadratic).
    pub fn word_chars(&self, first: usize, last: usize) -> (usize, usize) {
        let words = &self.context_words;
        let same_word = |t: usize, token: usize| words[token].is_some() && words[t] == words[token];
        let start = (0..first).rev().take_while(|&t| same_word(t, first)).last().unwrap_or(first);
        let end = (last + 1..words.len()).take_while(|&t| same_word(t, last)).last().unwrap_or(last);
        let span = |range: std::ops::RangeInclusive<usize>| range.map(|t| self.context_offsets[t]);
        let first_char = span(start..=first).map(|(s, _)| s).min().unwrap_or(0);
        let last_char = span(last..=end).map(|(_, e)| e).max().unwrap_or(0);
        (first_char, last_char)
    }
}

impl PretrainedTokenizer {
    /// \[CLS\] question \[SEP\] context \[SEP\] windows of at most `max_length` tokens. The context is cut into pieces
    /// of `max_length − |question| − 3` tokens starting every `piece − stride` tokens, the last piece ending with the
    /// context: the windows the `tokenizers` library made for transformers' pipelines through its 0.22 releases (0.23's
    /// overflow for pairs drops the end of long contexts, so the windows are built here). Offsets are in characters.
    pub fn question_windows(
        &self,
        question: &str,
        context: &str,
        max_length: usize,
        stride: usize,
    ) -> Result<QuestionWindows> {
        let encode = |text: &str| {
            self.inner
                .encode_char_offsets(text, false)
                .map_err(|e| Error::tokenizer("encoding question and context", e))
        };
        let (question, context) = (encode(question)?, encode(context)?);
        let (cls, sep) = match (self.cls_id(), ["[SEP]", "</s>"].into_iter().find_map(|t| self.inner.token_to_id(t))) {
            (Some(cls), Some(sep)) => (cls, sep),
            _ => return Err(Error::tokenizer("question answering", "the vocabulary has no [CLS] or [SEP] token")),
        };
        let piece = max_length.saturating_sub(question.len() + 3);
        if piece == 0 || stride >= piece {
            let message = format!(
                "max_seq_len {max_length} leaves {piece} context tokens beside a {}-token question; stride {stride} needs more",
                question.len()
            );
            return Err(Error::config("question answering", message, "a longer max_seq_len or a shorter question"));
        }
        let total = context.len();
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let stop = (start + piece).min(total);
            let mut input_ids = vec![cls];
            input_ids.extend(question.get_ids());
            input_ids.push(sep);
            let mut token_type_ids = vec![0; input_ids.len()];
            let mut context_tokens = vec![None; input_ids.len()];
            input_ids.extend(&context.get_ids()[start..stop]);
            input_ids.push(sep);
            token_type_ids.resize(input_ids.len(), 1);
            context_tokens.extend((start..stop).map(Some));
            context_tokens.push(None);
            windows.push(QuestionWindow { input_ids, token_type_ids, context_tokens });
            if stop == total {
                break;
            }
            start += piece - stride;
        }
        Ok(QuestionWindows {
            windows,
            context_offsets: context.get_offsets().to_vec(),
            context_words: context.get_word_ids().to_vec(),
        })
    }

    /// Trains a BERT WordPiece vocabulary of `vocab_size` entries on `texts` with BERT's pipeline (BertNormalizer with
    /// `lowercase`, BertPreTokenizer, `##` continuations, \[CLS\] A \[SEP\] B \[SEP\]); the specials \[PAD\] \[UNK\]
    /// \[CLS\] \[SEP\] \[MASK\] get ids 0–4.
    pub fn train_bert_wordpiece(texts: &[String], vocab_size: usize, lowercase: bool) -> Result<Self> {
        const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        if vocab_size <= SPECIALS.len() {
            return Err(Error::config("vocab_size", vocab_size, "more than the 5 special tokens"));
        }
        crate::limits::at_most("vocab_size", vocab_size, crate::limits::MAX_VOCAB)?;
        let model =
            WordPiece::builder().unk_token("[UNK]".into()).build().map_err(|e| Error::tokenizer("WordPiece", e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| Error::tokenizer("BERT normalizer", e))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        crate::text::tokenizer::train_wordpiece(&mut inner, texts, vocab_size, &SPECIALS, "[UNK]", &[])?;
        let id = |inner: &tokenizers::Tokenizer, t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::tokenizer("training WordPiece", format!("no {t}")))
        };
        let (cls, sep) = (id(&inner, "[CLS]")?, id(&inner, "[SEP]")?);
        inner.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
        Self::new(inner)
    }

    /// Writes tokenizer.json (atomically) into `dir`, plus a tokenizer_config.json naming the BERT tokenizer
    /// class so that transformers' AutoTokenizer loads it.
    pub fn save_to_dir(&self, dir: &Path, lowercase: bool) -> Result<()> {
        write_tokenizer_json(&self.inner, &dir.join("tokenizer.json"))?;
        let config = serde_json::json!({
            "tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "unk_token": "[UNK]",
            "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
            "model_max_length": 512,
        });
        super::write_json(&dir.join("tokenizer_config.json"), &config)
    }

    /// Ids of the special tokens (never masked or drawn as random replacements).
    pub fn special_ids(&self) -> Vec<u32> {
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].into_iter().filter_map(|t| self.inner.token_to_id(t)).collect()
    }

    /// The id of the classification token (\[CLS\], or `<s>` in RoBERTa-style vocabularies), if there is one.
    pub fn cls_id(&self) -> Option<u32> {
        ["[CLS]", "<s>"].into_iter().find_map(|t| self.inner.token_to_id(t))
    }
}

/// BERT's pipeline from a WordPiece vocabulary: BertNormalizer (clean text, Chinese characters, lower case
/// and accents as configured), BertPreTokenizer, WordPiece with `##` continuations, [CLS] A [SEP] (B [SEP]).
/// The fields of tokenizer_config.json that shape a GPT-2 tokenizer built from vocab.json and merges.txt.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Gpt2TokenizerConfig {
    add_prefix_space: bool,
}

/// GPT-2's byte-level BPE from its vocabulary and merge list, with `<|endoftext|>` as a special token when the
/// vocabulary has it (as transformers' GPT2TokenizerFast converts them).
fn gpt2_from_files(vocab: &Path, merges: &Path, config: &Gpt2TokenizerConfig) -> Result<tokenizers::Tokenizer> {
    let (vocab_path, merges_path) = (vocab.to_string_lossy().to_string(), merges.to_string_lossy().to_string());
    let model = tokenizers::models::bpe::BPE::from_file(&vocab_path, &merges_path)
        .build()
        .map_err(|e| Error::input(vocab, None, format!("with {}: not a BPE vocabulary: {e}", merges.display())))?;
    let has_end_of_text = model.token_to_id(crate::text::lm_tokenizer::END_OF_TEXT).is_some();
    let mut tokenizer = crate::text::lm_tokenizer::byte_level_tokenizer(model, config.add_prefix_space);
    if has_end_of_text {
        let special = tokenizers::AddedToken::from(crate::text::lm_tokenizer::END_OF_TEXT, true);
        tokenizer.add_special_tokens([special]).map_err(|e| Error::tokenizer("adding <|endoftext|>", e))?;
    }
    Ok(tokenizer)
}

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
