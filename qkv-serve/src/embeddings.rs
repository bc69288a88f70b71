//! `POST /v1/embeddings`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;

use crate::api::{self, ApiError, Embedding, EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse, Usage, Vector};
use crate::{AppState, Served};

pub async fn handle(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let request: EmbeddingsRequest = api::parse(&body)?;
    let served = state.registry.embedder(&request.model)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid("encoding_format", format!("`{other}`: expected float or base64")))
        }
    };
    let texts = match request.input {
        EmbeddingInput::Text(texts) => texts.into_vec(),
        EmbeddingInput::Ids(ids) => return embed_ids(&state, served, vec![ids], request.model, base64).await,
        EmbeddingInput::IdLists(rows) => return embed_ids(&state, served, rows, request.model, base64).await,
    };
    if texts.is_empty() || texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::invalid("input", "expected one or more non-empty strings"));
    }
    if let Some(d) = request.dimensions {
        let Served::Embedder(embedder) = &*served else { unreachable!("checked by the registry") };
        if d != embedder.dimension() {
            let message = format!("{d}: this model's embeddings have {} dimensions", embedder.dimension());
            return Err(ApiError::invalid("dimensions", message));
        }
    }
    let Served::Embedder(embedder) = &*served else { unreachable!("checked by the registry") };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let counts = embedder.untruncated_token_counts(&refs).map_err(ApiError::from_qkv)?;
    let limit = state.config.max_input_tokens;
    if let Some(i) = counts.iter().position(|&n| n > limit) {
        let message = format!("input {i} has {} tokens; the server takes at most {limit}", counts[i]);
        return Err(ApiError::invalid("input", message));
    }
    let model_limit = embedder.max_length();
    if let Some(i) = counts.iter().position(|&n| n > model_limit).filter(|_| !request.truncate) {
        let message = format!(
            "input {i} has {} tokens; the model reads at most {model_limit}: shorten it, or send `\"truncate\": true`",
            counts[i]
        );
        return Err(ApiError::invalid("input", message));
    }
    // What the model reads, after truncation.
    let counts: Vec<usize> = counts.into_iter().map(|n| n.min(model_limit)).collect();
    let (rows, tokens) = state.batcher(&request.model)?.embed(texts, counts.iter().sum()).await?;
    Ok(respond(rows, tokens, request.model, base64))
}

/// Token-id inputs, exactly as the model reads them (no cross-request batching).
async fn embed_ids(
    state: &AppState,
    served: Arc<Served>,
    rows: Vec<Vec<u32>>,
    model: String,
    base64: bool,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    if rows.is_empty() {
        return Err(ApiError::invalid("input", "expected one or more lists of token ids"));
    }
    let limit = state.config.max_input_tokens;
    if let Some(i) = rows.iter().position(|r| r.len() > limit) {
        return Err(ApiError::invalid("input", format!("input {i} has {} tokens; at most {limit}", rows[i].len())));
    }
    let tokens = rows.iter().map(Vec::len).sum();
    let vectors = state
        .compute(move || {
            let Served::Embedder(embedder) = &*served else { unreachable!("checked by the registry") };
            embedder.embed_ids(&rows).map_err(|e| {
                let mut error = ApiError::from_qkv(e);
                error.param = Some("input".into());
                error
            })
        })
        .await?;
    Ok(respond(vectors, tokens, model, base64))
}

/// The response body: rows as floats or base64, and the tokens they counted.
fn respond(rows: Vec<Vec<f32>>, tokens: usize, model: String, base64: bool) -> Json<EmbeddingsResponse> {
    let data = rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                Vector::Base64(crate::base64::encode(&bytes))
            } else {
                Vector::Float(row)
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    let usage = Usage { prompt_tokens: tokens, completion_tokens: None, total_tokens: tokens };
    Json(EmbeddingsResponse { object: "list", data, model, usage })
}
