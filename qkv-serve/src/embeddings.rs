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
        EmbeddingInput::Ids(_) | EmbeddingInput::IdLists(_) => {
            return Err(ApiError::invalid("input", "token-id input is not supported yet: send text"));
        }
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
    let (rows, tokens) = state.batcher(&request.model)?.embed(texts).await?;
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
    Ok(Json(EmbeddingsResponse { object: "list", data, model: request.model, usage }))
}
