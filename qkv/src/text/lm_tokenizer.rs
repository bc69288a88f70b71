//! Vocabularies for language models trained from scratch, built by Hugging Face `tokenizers` and saved as a
//! `tokenizer.json` that transformers' `PreTrainedTokenizerFast` loads too:
//! - byte-level BPE as GPT-2 uses it (Radford et al., 2019): text as UTF-8 bytes, each byte a symbol, merged
//!   by BPE; any text encodes (no unknown token) and decoding restores it exactly; `<|endoftext|>` is the one
//!   special token;
//! - characters, as in char-level language models (Karpathy's char-rnn, nanoGPT's Shakespeare): one token per
//!   character of the training text, in code-point order and nothing else; a character outside the
//!   vocabulary is an error when encoding.

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::{Error, Result};

/// GPT-2's end-of-text token, the special token of byte-level vocabularies.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The kind of vocabulary a language model is trained with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmVocabulary {
    /// One token per character.
    #[default]
    Char,
    /// GPT-2's byte-level BPE.
    ByteBpe,
}

/// Trains a vocabulary of `kind` on `text` (`vocab_size` bounds byte-level BPE; characters take as many ids as
/// the text has distinct characters).
pub fn train_lm_tokenizer(text: &str, kind: LmVocabulary, vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    if text.is_empty() {
        return Err(Error::tokenizer("training", "no text to train on"));
    }
    match kind {
        LmVocabulary::Char => char_tokenizer(text),
        LmVocabulary::ByteBpe => byte_bpe_tokenizer(text, vocab_size),
    }
}

/// Every distinct character of `text`, sorted, as a WordLevel vocabulary over single-character pieces; the
/// Fuse decoder joins the pieces without spaces.
fn char_tokenizer(text: &str) -> Result<tokenizers::Tokenizer> {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let vocab: serde_json::Map<String, serde_json::Value> =
        chars.iter().enumerate().map(|(id, c)| (c.to_string(), id.into())).collect();
    // Built as its tokenizer.json: the crate builds WordLevel vocabularies only from its own hash map type.
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    json.to_string().parse().map_err(|e| Error::tokenizer("building the character vocabulary", e))
}

fn byte_bpe_tokenizer(text: &str, vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    // 256 byte symbols and the end-of-text token are always there.
    let minimum = ByteLevel::alphabet().len() + 1;
    if vocab_size < minimum {
        return Err(Error::config("vocab_size", vocab_size, format!("at least {minimum} for byte-level BPE")));
    }
    crate::limits::at_most("vocab_size", vocab_size, crate::limits::MAX_VOCAB)?;
    let model = BPE::builder().build().map_err(|e| Error::tokenizer("building the model", e))?;
    let mut tokenizer = byte_level_tokenizer(model, false);
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    tokenizer.train(&mut trainer, text.lines()).map_err(|e| Error::tokenizer("training", e))?;
    Ok(tokenizer)
}

/// GPT-2's pipeline around a BPE `model`: text as bytes mapped to printable characters, split by GPT-2's
/// word regex (with a space added before the text when `add_prefix_space`), offsets trimmed, and decoded back.
pub fn byte_level_tokenizer(model: BPE, add_prefix_space: bool) -> tokenizers::Tokenizer {
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level));
    tokenizer
}

/// Token ids of `text` (no special tokens added).
pub fn encode_text(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer.encode(text, false).map_err(|e| {
        Error::tokenizer("encoding", format!("{e} (a character-level vocabulary only knows its training text's)"))
    })?;
    Ok(encoding.get_ids().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";

    #[test]
    fn characters_round_trip_and_unknown_ones_are_errors() {
        let tokenizer = train_lm_tokenizer(TEXT, LmVocabulary::Char, 0).unwrap();
        let mut distinct: Vec<char> = TEXT.chars().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(tokenizer.get_vocab_size(false), distinct.len());
        assert_eq!(tokenizer.token_to_id("\n"), Some(0));
        let ids = encode_text(&tokenizer, "hear me\n\nspeak").unwrap();
        assert_eq!(ids.len(), 14);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), "hear me\n\nspeak");
        let error = encode_text(&tokenizer, "xyz").unwrap_err().to_string();
        assert!(error.contains("character-level"), "{error}");
    }

    #[test]
    fn byte_level_bpe_round_trips_any_text() {
        let tokenizer = train_lm_tokenizer(TEXT, LmVocabulary::ByteBpe, 300).unwrap();
        assert!(tokenizer.get_vocab_size(true) <= 300);
        assert_eq!(tokenizer.token_to_id(END_OF_TEXT), Some(0));
        for text in [TEXT, "Größe — ünseen 😀 text\n"] {
            let ids = encode_text(&tokenizer, text).unwrap();
            assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        }
        let merged = encode_text(&tokenizer, "speak").unwrap();
        assert!(merged.len() < 5, "trained merges join frequent words: {merged:?}");
        let small = train_lm_tokenizer(TEXT, LmVocabulary::ByteBpe, 100).unwrap_err().to_string();
        assert!(small.contains("vocab_size") && small.contains("257"), "{small}");
    }
}
