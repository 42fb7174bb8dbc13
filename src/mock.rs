//! The built-in mock upstream (`KEYGATE_UPSTREAM_URL=mock`): synthetic
//! answers in OpenAI's shapes, for demos and first steps. `serve` runs it on a
//! loopback port and proxies to it like any upstream, and says loudly in its
//! log that answers are synthetic.
//!
//! It knows a fixed list of models ([`MODELS`]; any other is OpenAI's 404
//! `model_not_found`), streams chat chunks and Responses API events in
//! OpenAI's order, answers a request with `tools` with one function call
//! (arguments made from the function's parameters schema) unless
//! `tool_choice` is `none` or the last message is a tool result, and answers
//! JSON mode with a JSON object and `json_schema` with JSON the schema
//! accepts ([`schema`]). Everything is deterministic: the same request gets
//! the same bytes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::stream;
use http::StatusCode;
use serde_json::{json, Value};

mod responses;
pub mod schema;
#[cfg(test)]
mod tests;

const ANSWER: &str = "This is a synthetic answer from the keygate mock upstream.";
const CREATED: i64 = 1_715_367_049;
const CHAT_ID: &str = "chatcmpl-mock0000000000000000000000000";
const CALL_ID: &str = "call_mock000000000000000000";

/// The models the mock knows, with their `owned_by`, as `GET /v1/models`
/// lists them. The mock answers every endpoint for each (it does not check
/// that a model suits the endpoint).
pub const MODELS: &[(&str, &str)] = &[
    ("gpt-4o", "system"),
    ("gpt-4o-mini", "system"),
    ("gpt-4.1", "system"),
    ("gpt-4.1-mini", "system"),
    ("gpt-4.1-nano", "system"),
    ("o3-mini", "system"),
    ("o4-mini", "system"),
    ("gpt-3.5-turbo-instruct", "system"),
    ("text-embedding-3-small", "system"),
    ("text-embedding-3-large", "system"),
    ("text-embedding-ada-002", "openai-internal"),
    ("whisper-1", "openai-internal"),
    ("tts-1", "openai-internal"),
    ("dall-e-3", "system"),
    ("omni-moderation-latest", "system"),
];

/// Serves the mock on `listener` until `shutdown`, writing each event as it
/// comes (no Nagle delay), as OpenAI's servers do.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "mock upstream: cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router()).with_graceful_shutdown(shutdown).await
}

/// The mock, knowing [`MODELS`].
pub fn router() -> Router {
    router_with_models(&[])
}

/// The mock, knowing [`MODELS`] and `extra` (for tests that route other
/// model names to a mock upstream).
pub fn router_with_models(extra: &[&str]) -> Router {
    let mut models: Vec<(String, &'static str)> = MODELS.iter().map(|(id, owner)| ((*id).to_owned(), *owner)).collect();
    models.extend(extra.iter().map(|id| ((*id).to_owned(), "user")));
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::create))
        .with_state(Mock { models: Arc::new(models) })
}

#[derive(Clone)]
struct Mock {
    models: Arc<Vec<(String, &'static str)>>,
}

impl Mock {
    fn owner(&self, id: &str) -> Option<&'static str> {
        self.models.iter().find(|(m, _)| m == id).map(|(_, owner)| *owner)
    }

    /// The request's model, or OpenAI's refusal when it is unknown. A body
    /// without one is answered as `gpt-4o-mini`, where OpenAI answers 400 (`you
    /// must provide a model parameter`): Azure-style requests name a
    /// deployment in the URL instead, and keygate forwards them as they are.
    fn model_of(&self, body: &Value) -> Result<String, Response> {
        match body["model"].as_str() {
            None => Ok("gpt-4o-mini".to_owned()),
            Some(id) if self.owner(id).is_none() => Err(model_not_found(id)),
            Some(id) => Ok(id.to_owned()),
        }
    }
}

/// OpenAI's 404 for a model it does not know, pretty-printed as OpenAI sends errors.
fn model_not_found(id: &str) -> Response {
    let message = format!("The model `{id}` does not exist or you do not have access to it.");
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    (StatusCode::NOT_FOUND, [(http::header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn model_object(id: &str, owner: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": owner})
}

async fn list_models(State(mock): State<Mock>) -> Json<Value> {
    let data: Vec<Value> = mock.models.iter().map(|(id, owner)| model_object(id, owner)).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(mock): State<Mock>, Path(id): Path<String>) -> Response {
    match mock.owner(&id) {
        Some(owner) => Json(model_object(&id, owner)).into_response(),
        None => model_not_found(&id),
    }
}

/// A crude but deterministic token count: whitespace-separated words.
fn count_tokens(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(count_tokens).sum(),
        Value::Object(map) => map.iter().filter(|(k, _)| k.as_str() != "role").map(|(_, v)| count_tokens(v)).sum(),
        _ => 0,
    }
}

fn chat_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// An event stream: the first `paced` events 5 ms apart (tokens being
/// generated), the rest (usage, `[DONE]`) right after them, as OpenAI sends
/// a stream's tail.
fn sse(events: Vec<String>, paced: usize) -> Response {
    let chunks = events.into_iter().enumerate().map(move |(i, e)| (i < paced, Ok::<_, Infallible>(Bytes::from(e))));
    let stream = futures_util::StreamExt::then(stream::iter(chunks), |(paced, chunk)| async move {
        if paced {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        chunk
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

// === impl Answer ===

/// What the mock answers a generation request with.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Prose, or JSON when the request asked for it (`json` is then true).
    Text { text: String, json: bool },
    /// One call of a function the request offered.
    Call { name: String, arguments: String },
}

/// A function tool offered by the request: its name and parameters schema.
struct Function<'a> {
    name: &'a str,
    parameters: &'a Value,
}

impl Answer {
    /// `functions` are the request's function tools, `choice` its
    /// `tool_choice`, `after_tool_result` whether the last input is a tool's
    /// output (then `auto` answers in text, as a model would), `format` its
    /// `response_format` (chat) or `text.format` (Responses).
    fn decide(functions: &[Function<'_>], choice: &Value, after_tool_result: bool, format: &Value) -> Self {
        // `allowed_tools` narrows the list: Responses puts `mode` and `tools`
        // in the choice, chat one level down, in `allowed_tools`.
        let choice = choice.get("allowed_tools").unwrap_or(choice);
        let allowed: Option<Vec<&str>> = choice["tools"]
            .as_array()
            .map(|tools| tools.iter().filter_map(|t| t["name"].as_str().or(t["function"]["name"].as_str())).collect());
        let offered: Vec<&Function<'_>> =
            functions.iter().filter(|f| allowed.as_ref().is_none_or(|a| a.contains(&f.name))).collect();
        // Chat names a forced function as `{"function": {"name"}}`, Responses as `{"name"}`.
        let forced = choice["function"]["name"].as_str().or(choice["name"].as_str());
        let mode = choice.as_str().or(choice["mode"].as_str());
        let function = match (forced, mode) {
            (Some(name), _) => offered.iter().find(|f| f.name == name).or(offered.first()),
            (None, Some("none")) => None,
            (None, Some("required")) => offered.first(),
            (None, _) if after_tool_result => None,
            (None, _) => offered.first(),
        };
        if let Some(f) = function {
            let arguments = schema::example(f.parameters);
            let arguments = if arguments.is_object() { arguments } else { json!({}) };
            return Self::Call { name: f.name.to_owned(), arguments: arguments.to_string() };
        }
        match format["type"].as_str() {
            Some("json_object") => Self::Text { text: json!({"answer": ANSWER}).to_string(), json: true },
            Some("json_schema") => {
                // Chat nests the schema under `json_schema`; Responses' `text.format` holds it.
                let schema = format["json_schema"].get("schema").or(format.get("schema")).unwrap_or(&Value::Null);
                Self::Text { text: schema::example(schema).to_string(), json: true }
            }
            _ => Self::Text { text: ANSWER.to_owned(), json: false },
        }
    }

    /// Output tokens: words for prose, about four characters each for JSON.
    fn tokens(&self) -> u64 {
        match self {
            Self::Text { text, json: false } => text.split_whitespace().count() as u64,
            Self::Text { text, json: true } | Self::Call { arguments: text, .. } => text.len().div_ceil(4) as u64,
        }
    }

    /// The streamed pieces: words for prose, short runs of characters for
    /// JSON (at least two pieces when it has two characters).
    fn pieces(&self) -> Vec<String> {
        match self {
            Self::Text { text, json: false } => {
                text.split(' ').enumerate().map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") }).collect()
            }
            Self::Text { text, json: true } | Self::Call { arguments: text, .. } => json_pieces(text),
        }
    }
}

fn json_pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(4).clamp(1, 8);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Chat's function tools: `{"type": "function", "function": {"name", "parameters"}}`.
fn chat_functions(tools: &Value) -> Vec<Function<'_>> {
    let tools = tools.as_array().map(Vec::as_slice).unwrap_or_default();
    tools
        .iter()
        .filter(|t| t["type"] == "function")
        .filter_map(|t| {
            Some(Function { name: t["function"]["name"].as_str()?, parameters: &t["function"]["parameters"] })
        })
        .collect()
}

// === chat completions ===

async fn chat(State(mock): State<Mock>, Json(body): Json<Value>) -> Response {
    let model = match mock.model_of(&body) {
        Ok(model) => model,
        Err(refusal) => return refusal,
    };
    let prompt = count_tokens(&body["messages"]);
    let after_tool_result = body["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["role"] == "tool");
    let answer = Answer::decide(
        &chat_functions(&body["tools"]),
        &body["tool_choice"],
        after_tool_result,
        &body["response_format"],
    );
    let completion = answer.tokens();
    let finish = match answer {
        Answer::Text { .. } => "stop",
        Answer::Call { .. } => "tool_calls",
    };
    if body["stream"].as_bool() != Some(true) {
        let message = match &answer {
            Answer::Text { text, .. } => {
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []})
            }
            Answer::Call { name, arguments } => json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": CALL_ID, "type": "function", "function": {"name": name, "arguments": arguments}}],
                "refusal": null, "annotations": []}),
        };
        return Json(json!({
            "id": CHAT_ID, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": chat_usage(prompt, completion), "service_tier": "default", "system_fingerprint": "fp_mock"
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    // The first chunk carries the role (and the call's id and name); then
    // the content or the arguments arrive in pieces; the last is empty.
    let first = match &answer {
        Answer::Text { .. } => json!({"role": "assistant", "content": "", "refusal": null}),
        Answer::Call { name, .. } => json!({"role": "assistant", "content": null,
            "tool_calls": [{"index": 0, "id": CALL_ID, "type": "function", "function": {"name": name, "arguments": ""}}],
            "refusal": null}),
    };
    let mut events = vec![chunk(first, Value::Null)];
    for piece in answer.pieces() {
        let delta = match answer {
            Answer::Text { .. } => json!({"content": piece}),
            Answer::Call { .. } => json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
        };
        events.push(chunk(delta, Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    let paced = events.len();
    if include_usage {
        let usage = json!({"id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_mock", "choices": [], "usage": chat_usage(prompt, completion)});
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events, paced)
}

// === completions, embeddings ===

async fn completions(State(mock): State<Mock>, Json(body): Json<Value>) -> Response {
    let model = match mock.model_of(&body) {
        Ok(model) => model,
        Err(refusal) => return refusal,
    };
    let prompt = count_tokens(&body["prompt"]);
    let completion = ANSWER.split(' ').count() as u64;
    Json(json!({
        "id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model,
        "choices": [{"text": ANSWER, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
    .into_response()
}

async fn embeddings(State(mock): State<Mock>, Json(body): Json<Value>) -> Response {
    let model = match mock.model_of(&body) {
        Ok(model) => model,
        Err(refusal) => return refusal,
    };
    let inputs: Vec<Value> = match &body["input"] {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let base64 = body["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let seed = input.to_string().len() as f32;
            let vector: Vec<f32> = (0..8).map(|j| ((seed + j as f32) / 16.0).sin()).collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "embedding": embedding, "index": i})
        })
        .collect();
    let tokens = count_tokens(&body["input"]);
    Json(
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response()
}
