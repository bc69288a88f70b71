//! `POST /v1/completions` for GPT-2 models, whole or streamed as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qkv::decode::generate::{GenerateOptions, StopReason, TokenChoice};
use qkv::inference::Generator;
use tokio_stream::StreamExt;

use crate::api::{self, ApiError, Choice, CompletionsRequest, CompletionsResponse, Prompt, Usage};
use crate::{AppState, Served};

/// A validated request: the prompts as ids, one set of options per choice.
struct Plan {
    model: String,
    prompts: Vec<Vec<u32>>,
    n: usize,
    options: GenerateOptions,
    stops: Vec<String>,
    echo: bool,
}

pub async fn handle(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionsRequest = api::parse(&body)?;
    let served = state.registry.generator(&request.model)?;
    let Served::Generator(generator) = &*served else { unreachable!("checked by the registry") };
    let stream = request.stream;
    let plan = plan(request, generator, &state.config)?;
    let permit = state.admit().await?;
    let metrics = state.metrics.clone();
    if stream {
        return Ok(stream_response(served, plan, permit, metrics));
    }
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let Served::Generator(generator) = &*served else { unreachable!("checked by the registry") };
        let response = complete_all(generator, &plan)?;
        let generated = response.usage.as_ref().and_then(|u| u.completion_tokens).unwrap_or(0);
        metrics.generated_tokens.fetch_add(generated as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(response)
    })
    .await
    .map_err(ApiError::from_join)??;
    Ok(Json(result).into_response())
}

/// Checks the request against the model and the server's limits.
fn plan(request: CompletionsRequest, generator: &Generator, config: &crate::ServeConfig) -> Result<Plan, ApiError> {
    if let Some(k) = request.logprobs {
        if k > 5 {
            return Err(ApiError::invalid("logprobs", format!("{k}: at most 5 alternatives, as OpenAI allows")));
        }
        if request.stream {
            return Err(ApiError::invalid("logprobs", "log-probabilities are not streamed yet: drop `stream`"));
        }
        if generator.tokenizer().is_none() {
            return Err(ApiError::invalid("logprobs", "this model has no tokenizer to name the tokens"));
        }
    }
    if request.n == 0 || request.n > 16 {
        return Err(ApiError::invalid("n", format!("{}: expected 1 to 16 choices", request.n)));
    }
    if request.max_tokens > config.max_new_tokens {
        let message = format!("{}: the server generates at most {} tokens", request.max_tokens, config.max_new_tokens);
        return Err(ApiError::invalid("max_tokens", message));
    }
    if !(request.temperature >= 0.0 && request.temperature.is_finite()) {
        return Err(ApiError::invalid("temperature", format!("{}: expected a number ≥ 0", request.temperature)));
    }
    if let Some(p) = request.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::invalid("top_p", format!("{p}: expected a number in (0, 1]")));
    }
    let prompts = match request.prompt {
        Prompt::Ids(ids) => vec![ids],
        Prompt::Text(texts) => {
            let texts = texts.into_vec();
            if generator.tokenizer().is_none() {
                return Err(ApiError::invalid("prompt", "this model has no tokenizer: send token ids"));
            }
            texts.iter().map(|t| generator.encode(t)).collect::<qkv::Result<Vec<_>>>().map_err(ApiError::from_qkv)?
        }
    };
    let vocab = generator.model().config().vocab_size as u32;
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
        }
        if prompt.len() > config.max_input_tokens {
            let message =
                format!("prompt {i} has {} tokens; the server takes at most {}", prompt.len(), config.max_input_tokens);
            return Err(ApiError::invalid("prompt", message));
        }
        if let Some(id) = prompt.iter().find(|&&id| id >= vocab) {
            return Err(ApiError::invalid("prompt", format!("token id {id} is past the vocabulary ({vocab})")));
        }
    }
    let stops = request.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "expected up to 4 non-empty stop strings"));
    }
    let seed =
        request.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let options = GenerateOptions {
        max_new_tokens: request.max_tokens,
        // OpenAI's temperature 0 is greedy decoding.
        greedy: request.temperature == 0.0,
        temperature: if request.temperature == 0.0 { 1.0 } else { request.temperature },
        top_p: request.top_p.filter(|p| *p < 1.0),
        seed,
        eos_token_id: generator.eos_token_id(),
        logprobs: request.logprobs,
        ..GenerateOptions::default()
    };
    Ok(Plan { model: request.model, prompts, n: request.n, options, stops, echo: request.echo })
}

/// OpenAI's `finish_reason`.
fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos | StopReason::Caller => "stop",
        StopReason::MaxNewTokens | StopReason::ContextFull => "length",
    }
}

/// Choice `i` of prompt `p` (OpenAI numbers them prompt by prompt), with its own seed.
fn choice_options(plan: &Plan, index: usize) -> GenerateOptions {
    GenerateOptions { seed: plan.options.seed.wrapping_add(index as u64), ..plan.options.clone() }
}

fn echo_text(generator: &Generator, plan: &Plan, prompt: &[u32]) -> Result<String, ApiError> {
    match (plan.echo, generator.tokenizer()) {
        (true, Some(t)) => t.decode(prompt).map_err(ApiError::from_qkv),
        _ => Ok(String::new()),
    }
}

fn complete_all(generator: &Generator, plan: &Plan) -> Result<CompletionsResponse, ApiError> {
    let (mut choices, mut completion_tokens) = (Vec::new(), 0);
    for (p, prompt) in plan.prompts.iter().enumerate() {
        for c in 0..plan.n {
            let index = p * plan.n + c;
            let done = generator
                .complete(prompt, &choice_options(plan, index), &plan.stops, |_| Ok(()))
                .map_err(ApiError::from_qkv)?;
            completion_tokens += done.generated_ids.len();
            let echo = echo_text(generator, plan, prompt)?;
            let logprobs = match plan.options.logprobs {
                Some(_) => Some(log_probs(generator, &done.logprobs, echo.chars().count())?),
                None => None,
            };
            let text = echo + done.text.as_deref().unwrap_or_default();
            choices.push(Choice { text, index, logprobs, finish_reason: Some(finish_reason(done.stop)) });
        }
    }
    let prompt_tokens: usize = plan.prompts.iter().map(Vec::len).sum();
    let usage = Usage {
        prompt_tokens,
        completion_tokens: Some(completion_tokens),
        total_tokens: prompt_tokens + completion_tokens,
    };
    Ok(CompletionsResponse {
        id: completion_id(plan),
        object: "text_completion",
        created: now(),
        model: plan.model.clone(),
        choices,
        usage: Some(usage),
    })
}

/// The `logprobs` object of one choice; offsets count characters from the start of its text (after an echo of
/// `offset` characters).
fn log_probs(generator: &Generator, choices: &[TokenChoice], offset: usize) -> Result<api::LogProbs, ApiError> {
    let tokenizer = generator.tokenizer().ok_or_else(|| ApiError::invalid("logprobs", "no tokenizer"))?;
    let name = |id: u32| tokenizer.decode(&[id]).map_err(ApiError::from_qkv);
    let mut out = api::LogProbs { tokens: vec![], token_logprobs: vec![], top_logprobs: vec![], text_offset: vec![] };
    let mut at = offset;
    for choice in choices {
        let token = name(choice.token)?;
        out.text_offset.push(at);
        at += token.chars().count();
        out.tokens.push(token);
        out.token_logprobs.push(choice.logprob.unwrap_or(f64::NAN));
        let top = choice.top.iter().map(|&(id, lp)| Ok((name(id)?, lp))).collect::<Result<_, ApiError>>()?;
        out.top_logprobs.push(top);
    }
    Ok(out)
}

/// Server-sent events: a chunk per piece of text, one with each choice's `finish_reason`, then `[DONE]`. When
/// the client goes away the channel closes and generation stops at its next token.
fn stream_response(
    served: Arc<Served>,
    plan: Plan,
    permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let Served::Generator(generator) = &*served else { return };
        let (id, created) = (completion_id(&plan), now());
        let chunk = |index: usize, text: &str, finish: Option<&'static str>| {
            let choice = Choice { text: text.to_string(), index, logprobs: None, finish_reason: finish };
            let body = CompletionsResponse {
                id: id.clone(),
                object: "text_completion",
                created,
                model: plan.model.clone(),
                choices: vec![choice],
                usage: None,
            };
            Event::default().data(serde_json::to_string(&body).unwrap_or_default())
        };
        let closed = || qkv::Error::io("client", std::io::Error::other("the client went away"));
        for (p, prompt) in plan.prompts.iter().enumerate() {
            for c in 0..plan.n {
                let index = p * plan.n + c;
                let echo = echo_text(generator, &plan, prompt).unwrap_or_default();
                if !echo.is_empty() && tx.blocking_send(chunk(index, &echo, None)).is_err() {
                    return;
                }
                let done = generator.complete(prompt, &choice_options(&plan, index), &plan.stops, |piece| {
                    tx.blocking_send(chunk(index, piece, None)).map_err(|_| closed())
                });
                let event = match done {
                    Ok(done) => {
                        let generated = done.generated_ids.len() as u64;
                        metrics.generated_tokens.fetch_add(generated, std::sync::atomic::Ordering::Relaxed);
                        chunk(index, "", Some(finish_reason(done.stop)))
                    }
                    Err(e) => {
                        let error = ApiError::from_qkv(e);
                        Event::default().data(serde_json::json!({"error": {"message": error.message}}).to_string())
                    }
                };
                if tx.blocking_send(event).is_err() {
                    return;
                }
            }
        }
        let _ = tx.blocking_send(Event::default().data("[DONE]"));
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events).into_response()
}

fn completion_id(plan: &Plan) -> String {
    format!("cmpl-{:016x}", plan.options.seed)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
