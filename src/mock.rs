//! The built-in mock upstream (`KEYGATE_UPSTREAM_URL=mock`): fixed synthetic
//! answers in OpenAI's shapes, streaming included, for demos and first steps.
//! `serve` runs it on a loopback port and proxies to it like any upstream, and
//! says loudly in its log that answers are synthetic.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::stream;
use serde_json::{json, Value};

const ANSWER: &str = "This is a synthetic answer from the keygate mock upstream.";
const MODELS: &[&str] = &["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"];
const CREATED: i64 = 1_715_367_049;

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

pub fn router() -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "system"})
}

async fn list_models() -> Json<Value> {
    Json(json!({"object": "list", "data": MODELS.iter().map(|m| model_object(m)).collect::<Vec<_>>()}))
}

async fn get_model(Path(id): Path<String>) -> Response {
    if MODELS.contains(&id.as_str()) {
        Json(model_object(&id)).into_response()
    } else {
        let body = json!({"error": {"message": format!("The model `{id}` does not exist or you do not have access to it."), "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
        (http::StatusCode::NOT_FOUND, Json(body)).into_response()
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

fn model_of(body: &Value) -> String {
    body["model"].as_str().unwrap_or("gpt-4o-mini").to_owned()
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

async fn chat(Json(body): Json<Value>) -> Response {
    let model = model_of(&body);
    let prompt = count_tokens(&body["messages"]);
    let words: Vec<&str> = ANSWER.split(' ').collect();
    let completion = words.len() as u64;
    let id = "chatcmpl-mock0000000000000000000000000";
    if body["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
            "usage": chat_usage(prompt, completion), "service_tier": "default", "system_fingerprint": "fp_mock"
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 { (*word).to_owned() } else { format!(" {word}") };
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let paced = events.len();
    if include_usage {
        let usage = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model, "system_fingerprint": "fp_mock", "choices": [], "usage": chat_usage(prompt, completion)});
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events, paced)
}

async fn completions(Json(body): Json<Value>) -> Json<Value> {
    let prompt = count_tokens(&body["prompt"]);
    let completion = ANSWER.split(' ').count() as u64;
    Json(json!({
        "id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model_of(&body),
        "choices": [{"text": ANSWER, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

async fn embeddings(Json(body): Json<Value>) -> Json<Value> {
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
        json!({"object": "list", "data": data, "model": model_of(&body), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

async fn responses(Json(body): Json<Value>) -> Response {
    let model = model_of(&body);
    let input = count_tokens(&body["input"]);
    let output = ANSWER.split(' ').count() as u64;
    let id = "resp_mock";
    let message = json!({"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]});
    let usage = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + output});
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": CREATED, "status": status, "model": model,
            "output": output, "usage": usage, "error": null, "incomplete_details": null, "instructions": null,
            "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0})
    };
    if body["stream"].as_bool() != Some(true) {
        return Json(response("completed", json!([message]), usage)).into_response();
    }
    let mut seq = 0;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    };
    let events = vec![
        event("response.created", json!({"response": response("in_progress", json!([]), Value::Null)})),
        event(
            "response.output_text.delta",
            json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": ANSWER}),
        ),
        event(
            "response.output_text.done",
            json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": ANSWER}),
        ),
        event("response.completed", json!({"response": response("completed", json!([message]), usage)})),
    ];
    let paced = events.len();
    sse(events, paced)
}
