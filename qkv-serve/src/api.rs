//! OpenAI's request and response bodies, as its API reference defines them, and its error body
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An error answered with OpenAI's error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn model_not_found(name: &str, known: &[String]) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("the model `{name}` does not exist (served: {})", known.join(", ")),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "a valid API key is required: send `Authorization: Bearer KEY`".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn busy() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the server is at capacity; retry shortly".into(),
            param: None,
            code: Some("overloaded"),
        }
    }

    /// The request ran past the server's time limit (504).
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "server_error",
            message: format!("the request took longer than the server's limit of {:.1} s", limit.as_secs_f64()),
            param: None,
            code: Some("timeout"),
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("no endpoint {path}"),
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// A panicked or cancelled inference task, as a 500 (the server keeps serving).
    pub fn from_join(error: tokio::task::JoinError) -> Self {
        Self::from_qkv(qkv::Error::io("inference task", std::io::Error::other(error.to_string())))
    }

    /// A failure inside qkv: its message, as a 500 (or a 400 when the request caused it).
    pub fn from_qkv(error: qkv::Error) -> Self {
        let status = match error {
            qkv::Error::Config { .. } | qkv::Error::OutOfRange { .. } | qkv::Error::Tokenizer { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let kind = if status == StatusCode::BAD_REQUEST { "invalid_request_error" } else { "server_error" };
        Self { status, kind, message: error.to_string(), param: None, code: None }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A request body parsed as `T`; a 400 whose `param` names the field at fault (or `body`) and whose message is
/// serde's (what was found, what was expected).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid("body", "the request body is not UTF-8"));
    }
    // serde would read a struct from an array too; OpenAI's bodies are objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // A missing or unknown field is reported at the level above it: name it from the message.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p).and_then(|rest| rest.split('`').next()).map(str::to_string));
        // serde_path_to_error writes the root as "." and a position it could not reach as "?".
        let param = match (path.as_str(), named) {
            ("." | "?", Some(field)) => field,
            ("." | "?", None) => "body".to_string(),
            (path, _) => path.to_string(),
        };
        if message.starts_with("data did not match any variant") {
            let expected = match param.as_str() {
                "stop" => "a string or a list of strings",
                _ => "a string, a list of strings, or a list of token ids",
            };
            return ApiError::invalid(&param, format!("`{param}` must be {expected}"));
        }
        ApiError::invalid(&param, format!("invalid request body: {message}"))
    })
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(s) => vec![s],
            Texts::Many(v) => v,
        }
    }
}

/// `input` of /v1/embeddings: text(s), or token ids (one list or several).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(Texts),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
    /// Cut inputs longer than the model reads instead of refusing them (text-embeddings-inference's field).
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<usize>,
    pub total_tokens: usize,
}

/// A list of floats, or their little-endian f32 bytes in base64 (`encoding_format: "base64"`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
}

/// `prompt` of /v1/completions: text(s) or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(Texts),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionsRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default = "default_n")]
    pub n: usize,
    #[serde(default)]
    pub stop: Option<Texts>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub user: Option<String>,
}

/// OpenAI's default for `max_tokens`.
fn default_max_tokens() -> usize {
    16
}

fn one() -> f64 {
    1.0
}

fn default_n() -> usize {
    1
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<LogProbs>,
    pub finish_reason: Option<&'static str>,
}

/// OpenAI's legacy completion `logprobs`: per generated token its text, log-probability, the most likely
/// alternatives and the character offset where it starts in the choice's text.
#[derive(Debug, Clone, Serialize)]
pub struct LogProbs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f64>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionsResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
