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
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::api::{self, ApiError, Choice, CompletionsRequest, CompletionsResponse, Prompt, Usage};
use crate::scheduler::{Event as Decoded, Sequence};
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
    let events = state.scheduler(&plan.model)?.submit(sequences(&plan), plan.stops.clone())?;
    let deadline = tokio::time::Instant::now() + state.config.request_timeout;
    if stream {
        return Ok(stream_response(served, plan, events, deadline));
    }
    let response = tokio::time::timeout_at(deadline, collect(generator, &plan, events))
        .await
        .map_err(|_| ApiError::timeout(state.config.request_timeout))??;
    Ok(Json(response).into_response())
}

/// Every choice of every prompt, numbered as OpenAI numbers them (prompt by prompt), each with its own seed.
fn sequences(plan: &Plan) -> Vec<Sequence> {
    let mut out = Vec::new();
    for (p, prompt) in plan.prompts.iter().enumerate() {
        for c in 0..plan.n {
            let index = p * plan.n + c;
            out.push(Sequence { index, prompt: prompt.clone(), options: choice_options(plan, index) });
        }
    }
    out
}

/// Checks the request against the model and the server's limits.
fn plan(request: CompletionsRequest, generator: &Generator, config: &crate::ServeConfig) -> Result<Plan, ApiError> {
    if let Some(k) = request.logprobs {
        if k > 5 {
            return Err(ApiError::invalid("logprobs", format!("{k}: at most 5 alternatives, as OpenAI allows")));
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

/// Gathers a request's events into OpenAI's response.
async fn collect(
    generator: &Generator,
    plan: &Plan,
    mut events: mpsc::UnboundedReceiver<Decoded>,
) -> Result<CompletionsResponse, ApiError> {
    let count = plan.prompts.len() * plan.n;
    let mut texts = vec![String::new(); count];
    let mut choices: Vec<Vec<TokenChoice>> = vec![Vec::new(); count];
    let mut finished: Vec<Option<StopReason>> = vec![None; count];
    let mut completion_tokens = 0;
    while finished.iter().any(Option::is_none) {
        match events.recv().await {
            Some(Decoded::Token { index, text, choice }) => {
                texts[index].push_str(&text);
                if plan.options.logprobs.is_some() {
                    choices[index].push(choice);
                }
            }
            Some(Decoded::Done { index, stop, generated, rest }) => {
                texts[index].push_str(&rest);
                finished[index] = Some(stop);
                completion_tokens += generated;
            }
            Some(Decoded::Failed(error)) => return Err(error),
            None => return Err(ApiError::busy()),
        }
    }
    let mut out = Vec::with_capacity(count);
    for (index, ((text, tokens), stop)) in texts.into_iter().zip(&choices).zip(finished).enumerate() {
        let echo = echo_text(generator, plan, &plan.prompts[index / plan.n])?;
        let logprobs = match plan.options.logprobs {
            Some(_) => Some(log_probs(generator, tokens, echo.chars().count())?),
            None => None,
        };
        let finish_reason = stop.map(finish_reason);
        out.push(Choice { text: echo + &text, index, logprobs, finish_reason });
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
        choices: out,
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

/// Server-sent events: each choice's echo, a chunk per token (its text, and its log-probabilities when asked
/// for), one with each choice's `finish_reason`, then `[DONE]`. When the client goes away the response stream
/// is dropped, the request's channel closes and its rows leave the batch; at the deadline the stream ends with
/// an error event.
fn stream_response(
    served: Arc<Served>,
    plan: Plan,
    mut events: mpsc::UnboundedReceiver<Decoded>,
    deadline: tokio::time::Instant,
) -> Response {
    let (id, created, model) = (completion_id(&plan), now(), plan.model.clone());
    let chunk = move |index: usize, text: String, logprobs: Option<api::LogProbs>, finish: Option<&'static str>| {
        let choice = Choice { text, index, logprobs, finish_reason: finish };
        let body = CompletionsResponse {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model.clone(),
            choices: vec![choice],
            usage: None,
        };
        Event::default().data(serde_json::to_string(&body).unwrap_or_default())
    };
    let body = async_stream(move |tx| async move {
        let Served::Generator(generator) = &*served else { return };
        let count = plan.prompts.len() * plan.n;
        // Characters written so far per choice: where the next token's text starts.
        let mut offsets = vec![0usize; count];
        for (index, offset) in offsets.iter_mut().enumerate() {
            let echo = echo_text(generator, &plan, &plan.prompts[index / plan.n]).unwrap_or_default();
            if !echo.is_empty() {
                *offset = echo.chars().count();
                if tx.send(chunk(index, echo, None, None)).await.is_err() {
                    return;
                }
            }
        }
        let mut open = count;
        while open > 0 {
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return,
                Err(_) => {
                    let error = ApiError::timeout(deadline.elapsed());
                    let _ = tx.send(error_event(&error)).await;
                    return;
                }
            };
            let sse = match event {
                Decoded::Token { index, text, choice } => {
                    let logprobs = match plan.options.logprobs {
                        Some(_) => log_probs(generator, std::slice::from_ref(&choice), offsets[index]).ok(),
                        None => None,
                    };
                    offsets[index] += text.chars().count();
                    chunk(index, text, logprobs, None)
                }
                Decoded::Done { index, stop, rest, .. } => {
                    open -= 1;
                    if !rest.is_empty() && tx.send(chunk(index, rest, None, None)).await.is_err() {
                        return;
                    }
                    chunk(index, String::new(), None, Some(finish_reason(stop)))
                }
                Decoded::Failed(error) => {
                    let _ = tx.send(error_event(&error)).await;
                    return;
                }
            };
            if tx.send(sse).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    Sse::new(body.map(Ok::<_, Infallible>)).into_response()
}

/// An error in the middle of a stream, in OpenAI's error body.
fn error_event(error: &ApiError) -> Event {
    let body = serde_json::json!({"error": {"message": error.message, "type": error.kind, "code": error.code}});
    Event::default().data(body.to_string())
}

/// The events `produce` sends, as a stream (a task feeding a small channel: the response's back-pressure).
fn async_stream<F, Fut>(produce: F) -> tokio_stream::wrappers::ReceiverStream<Event>
where
    F: FnOnce(mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn completion_id(plan: &Plan) -> String {
    format!("cmpl-{:016x}", plan.options.seed)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
