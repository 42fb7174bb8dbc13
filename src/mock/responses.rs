//! `POST /v1/responses`: one output item (a message, or a function call when
//! the request offers functions), whole or as OpenAI's event stream.
//!
//! The stream, each event numbered by `sequence_number` from 0:
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! then for a message `response.content_part.added`,
//! `response.output_text.delta` (several), `response.output_text.done`,
//! `response.content_part.done`, or for a function call
//! `response.function_call_arguments.delta` (several) and `.done`; then
//! `response.output_item.done` and `response.completed` (the only event with
//! `usage`). No `[DONE]` follows.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{count_tokens, sse, Answer, Function, Mock, CALL_ID, CREATED};

const RESPONSE_ID: &str = "resp_mock0000000000000000000000000000000000000000";
const MESSAGE_ID: &str = "msg_mock00000000000000000000000000000000000000000";
const FUNCTION_CALL_ID: &str = "fc_mock000000000000000000000000000000000000000000";

pub(super) async fn create(State(mock): State<Mock>, Json(body): Json<Value>) -> Response {
    let model = match mock.model_of(&body) {
        Ok(model) => model,
        Err(refusal) => return refusal,
    };
    let input_tokens = count_tokens(&body["input"]) + count_tokens(&body["instructions"]);
    let last_input = body["input"].as_array().and_then(|items| items.last());
    let after_tool_result = last_input.is_some_and(|item| item["type"] == "function_call_output");
    let answer =
        Answer::decide(&functions(&body["tools"]), &body["tool_choice"], after_tool_result, &body["text"]["format"]);
    let output_tokens = answer.tokens();
    let usage = json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens});
    let done = item(&answer, "completed");
    if body["stream"].as_bool() != Some(true) {
        return Json(response(&body, &model, "completed", json!([done]), usage)).into_response();
    }

    let mut events = Events::default();
    let in_progress = response(&body, &model, "in_progress", json!([]), Value::Null);
    events.push("response.created", json!({"response": in_progress}));
    events.push("response.in_progress", json!({"response": in_progress}));
    events.push("response.output_item.added", json!({"output_index": 0, "item": item(&answer, "in_progress")}));
    match &answer {
        Answer::Text { text, .. } => {
            let at = json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0});
            events.push("response.content_part.added", with(&at, json!({"part": text_part("")})));
            for delta in answer.pieces() {
                events.push("response.output_text.delta", with(&at, json!({"delta": delta, "logprobs": []})));
            }
            events.push("response.output_text.done", with(&at, json!({"text": text, "logprobs": []})));
            events.push("response.content_part.done", with(&at, json!({"part": text_part(text)})));
        }
        Answer::Call { arguments, .. } => {
            let at = json!({"item_id": FUNCTION_CALL_ID, "output_index": 0});
            for delta in answer.pieces() {
                events.push("response.function_call_arguments.delta", with(&at, json!({"delta": delta})));
            }
            events.push("response.function_call_arguments.done", with(&at, json!({"arguments": arguments})));
        }
    }
    events.push("response.output_item.done", json!({"output_index": 0, "item": done}));
    events.push("response.completed", json!({"response": response(&body, &model, "completed", json!([done]), usage)}));
    let paced = events.0.len();
    sse(events.0, paced)
}

/// Responses' function tools: `{"type": "function", "name", "parameters"}`.
fn functions(tools: &Value) -> Vec<Function<'_>> {
    let tools = tools.as_array().map(Vec::as_slice).unwrap_or_default();
    tools
        .iter()
        .filter(|t| t["type"] == "function")
        .filter_map(|t| Some(Function { name: t["name"].as_str()?, parameters: &t["parameters"] }))
        .collect()
}

/// The response object; request settings are echoed as OpenAI does.
fn response(body: &Value, model: &str, status: &str, output: Value, usage: Value) -> Value {
    let echo = |key: &str, default: Value| body.get(key).filter(|v| !v.is_null()).cloned().unwrap_or(default);
    json!({
        "id": RESPONSE_ID, "object": "response", "created_at": CREATED, "status": status,
        "background": false, "error": null, "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "max_tool_calls": echo("max_tool_calls", Value::Null),
        "model": model, "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default", "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({"format": {"type": "text"}})),
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": echo("tools", json!([])),
        "top_p": echo("top_p", json!(1.0)),
        "truncation": echo("truncation", json!("disabled")),
        "usage": usage, "user": null, "metadata": echo("metadata", json!({}))
    })
}

/// The output item, `in_progress` (empty) as first announced or `completed`.
fn item(answer: &Answer, status: &str) -> Value {
    let finished = status == "completed";
    match answer {
        Answer::Text { text, .. } => {
            let content = if finished { json!([text_part(text)]) } else { json!([]) };
            json!({"id": MESSAGE_ID, "type": "message", "status": status, "content": content, "role": "assistant"})
        }
        Answer::Call { name, arguments } => {
            let arguments = if finished { arguments.as_str() } else { "" };
            json!({"id": FUNCTION_CALL_ID, "type": "function_call", "status": status, "arguments": arguments,
                "call_id": CALL_ID, "name": name})
        }
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

/// `base`'s fields, then `extra`'s.
fn with(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    out
}

/// Named SSE events, numbered as they are pushed.
#[derive(Default)]
struct Events(Vec<String>);

impl Events {
    /// `event: kind` and the data `{"type": kind, "sequence_number": n, ...fields}`.
    fn push(&mut self, kind: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), json!(kind));
        data.insert("sequence_number".into(), json!(self.0.len()));
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        self.0.push(format!("event: {kind}\ndata: {}\n\n", Value::Object(data)));
    }
}
