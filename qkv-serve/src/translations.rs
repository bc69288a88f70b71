//! `POST /v1/translations` (qkv's own endpoint; OpenAI has none for text): sentences in, translations out,
//! with beam search.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use qkv::decode::DecodeOptions;
use serde::{Deserialize, Serialize};

use crate::api::{self, ApiError, Texts, Usage};
use crate::{AppState, Served};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslationsRequest {
    pub model: String,
    pub input: Texts,
    /// Beam size (1: greedy).
    #[serde(default = "default_beam")]
    pub beam: usize,
    /// GNMT length penalty α.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// At most this many tokens per translation (default: 1.5 × the source + 10).
    #[serde(default)]
    pub max_length: Option<usize>,
}

fn default_beam() -> usize {
    DecodeOptions::default().beam
}

fn default_alpha() -> f64 {
    DecodeOptions::default().length_penalty
}

#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub object: &'static str,
    pub index: usize,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TranslationsResponse {
    pub object: &'static str,
    pub data: Vec<Translation>,
    pub model: String,
    pub usage: Usage,
}

pub async fn handle(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<TranslationsResponse>, ApiError> {
    let request: TranslationsRequest = api::parse(&body)?;
    let served = state.registry.translator(&request.model)?;
    let sentences = request.input.into_vec();
    if sentences.is_empty() || sentences.iter().any(|s| s.trim().is_empty()) {
        return Err(ApiError::invalid("input", "expected one or more non-empty strings"));
    }
    if !(1..=16).contains(&request.beam) {
        return Err(ApiError::invalid("beam", format!("{}: expected 1 to 16", request.beam)));
    }
    if !(request.alpha >= 0.0 && request.alpha.is_finite()) {
        return Err(ApiError::invalid("alpha", format!("{}: expected a number ≥ 0", request.alpha)));
    }
    let mut options = DecodeOptions { beam: request.beam, length_penalty: request.alpha, ..DecodeOptions::default() };
    if let Some(max) = request.max_length {
        if max == 0 || max > state.config.max_new_tokens {
            let message = format!("{max}: expected 1 to {}", state.config.max_new_tokens);
            return Err(ApiError::invalid("max_length", message));
        }
        (options.max_len_a, options.max_len_b) = (0.0, max);
    }
    let limit = state.config.max_input_tokens;
    let (texts, prompt_tokens, completion_tokens) = state
        .compute(move || {
            let Served::Translator(translator) = &*served else { unreachable!("checked by the registry") };
            let t = &translator.tokenizer;
            let mut prompt_tokens = 0;
            for (i, sentence) in sentences.iter().enumerate() {
                let n = t.encode(sentence).map_err(ApiError::from_qkv)?.len();
                if n > limit {
                    return Err(ApiError::invalid("input", format!("input {i} has {n} tokens; at most {limit}")));
                }
                prompt_tokens += n;
            }
            let texts = translator.translate(&sentences, &options, 4096).map_err(ApiError::from_qkv)?;
            let mut completion_tokens = 0;
            for text in &texts {
                completion_tokens += t.encode(text).map_err(ApiError::from_qkv)?.len();
            }
            Ok((texts, prompt_tokens, completion_tokens))
        })
        .await?;
    let data = texts.into_iter().enumerate().map(|(index, text)| Translation { object: "translation", index, text });
    let usage = Usage {
        prompt_tokens,
        completion_tokens: Some(completion_tokens),
        total_tokens: prompt_tokens + completion_tokens,
    };
    Ok(Json(TranslationsResponse { object: "list", data: data.collect(), model: request.model, usage }))
}
