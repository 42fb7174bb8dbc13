use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::schema::example;
use super::*;

// === the schema-driven JSON generator ===

#[test]
fn an_object_gets_its_required_properties_with_typed_values() {
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "ratio": {"type": "number"},
            "metric": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": "string"}
        },
        "required": ["city", "days", "ratio", "metric", "unit", "where", "tags"],
        "additionalProperties": false
    });
    assert_eq!(
        example(&schema),
        json!({"city": "mock", "days": 1, "ratio": 1.5, "metric": true, "unit": "celsius", "where": {"lat": 1.5}, "tags": ["mock"]}),
        "`note` is optional, so left out"
    );
}

#[test]
fn without_a_required_list_every_property_is_filled() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "null"}}});
    assert_eq!(example(&schema), json!({"a": "mock", "b": null}));
    assert_eq!(example(&json!({"type": "object", "properties": {}})), json!({}));
    let extra = json!({"type": "object", "required": ["k"], "additionalProperties": {"type": "integer"}});
    assert_eq!(example(&extra), json!({"k": 1}), "a required name without a property schema");
}

/// What pydantic's strict schema for nested models, enums and `Optional`
/// fields looks like (`openai.lib._pydantic.to_strict_json_schema`).
#[test]
fn refs_into_defs_and_nullable_branches_resolve() {
    let schema = json!({
        "$defs": {
            "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
            "Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": false}
        },
        "type": "object",
        "properties": {
            "color": {"$ref": "#/$defs/Color"},
            "origin": {"allOf": [{"$ref": "#/$defs/Point"}], "description": "where it starts"},
            "label": {"anyOf": [{"type": "null"}, {"type": "string"}], "default": null},
            "points": {"type": "array", "items": {"$ref": "#/definitions/Point"}}
        },
        "definitions": {"Point": {"type": "object", "properties": {"y": {"type": "boolean"}}, "required": ["y"]}},
        "required": ["color", "origin", "label", "points"]
    });
    assert_eq!(example(&schema), json!({"color": "red", "origin": {"x": 1}, "label": "mock", "points": [{"y": true}]}));
}

#[test]
fn bounds_lengths_and_formats_are_respected() {
    let cases = [
        (json!({"type": "integer", "minimum": 5}), json!(5)),
        (json!({"type": "integer", "maximum": -3}), json!(-3)),
        (json!({"type": "integer", "exclusiveMinimum": 1}), json!(2)),
        (json!({"type": "integer", "exclusiveMaximum": 1}), json!(0)),
        (json!({"type": "number", "minimum": 2, "maximum": 3}), json!(2.5)),
        (json!({"type": "number", "exclusiveMinimum": 10}), json!(11.0)),
        (json!({"type": "number", "maximum": 0}), json!(-1.0)),
        (json!({"type": "number", "minimum": 0, "maximum": 1}), json!(0.5)),
        (json!({"type": "string", "minLength": 6}), json!("mockxx")),
        (json!({"type": "string", "maxLength": 2}), json!("mo")),
        (json!({"type": "string", "format": "date-time"}), json!("2024-05-10T18:50:49Z")),
        (json!({"type": "string", "format": "date"}), json!("2024-05-10")),
        (json!({"type": "string", "format": "email"}), json!("mock@example.com")),
        (json!({"type": "string", "format": "uuid"}), json!("00000000-0000-4000-8000-000000000000")),
        (json!({"type": "array", "items": {"type": "integer"}, "minItems": 3}), json!([1, 1, 1])),
        (json!({"type": "array", "items": {"type": "integer"}, "maxItems": 0}), json!([])),
        (json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}]}), json!(["mock", true])),
        (json!({"const": "fixed"}), json!("fixed")),
        (json!({"type": ["null", "integer"]}), json!(1)),
        (json!({"type": "null"}), Value::Null),
    ];
    for (schema, want) in cases {
        assert_eq!(example(&schema), want, "{schema}");
    }
}

#[test]
fn recursive_schemas_end() {
    let tree = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["name", "children"]
    });
    let value = example(&tree);
    let mut depth = 0;
    let mut node = &value;
    while let Some(child) = node["children"].get(0) {
        depth += 1;
        node = child;
    }
    assert!(depth > 0 && depth < 10, "{value}");
    assert_eq!(node["children"], json!([]), "the deepest node has no children: {value}");

    let list = json!({
        "$defs": {"Node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["next"]}},
        "$ref": "#/$defs/Node"
    });
    let value = example(&list);
    assert!(value.to_string().contains("\"next\":null"), "{value}");
}

#[test]
fn odd_schemas_give_a_value_rather_than_a_panic() {
    for schema in
        [Value::Null, json!(true), json!({}), json!({"type": 5}), json!({"$ref": "#/nowhere"}), json!({"anyOf": []})]
    {
        let _ = example(&schema);
    }
    let self_required = json!({"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]});
    let _ = example(&self_required); // cannot be satisfied; must still end
}

// === what a request is answered with ===

fn weather() -> Value {
    json!({"type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["location", "unit"]})
}

#[test]
fn offered_functions_get_called_unless_told_otherwise() {
    let w = weather();
    let other = json!({"type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"]});
    let functions = [Function { name: "get_weather", parameters: &w }, Function { name: "search", parameters: &other }];
    let call = |name: &str, arguments: &str| Answer::Call { name: name.into(), arguments: arguments.into() };
    let prose = Answer::Text { text: ANSWER.into(), json: false };
    let cases = [
        (Value::Null, false, call("get_weather", r#"{"location":"mock","unit":"c"}"#)),
        (json!("auto"), false, call("get_weather", r#"{"location":"mock","unit":"c"}"#)),
        (json!("none"), false, prose),
        (json!("auto"), true, Answer::Text { text: ANSWER.into(), json: false }),
        (json!("required"), true, call("get_weather", r#"{"location":"mock","unit":"c"}"#)),
        (json!({"type": "function", "function": {"name": "search"}}), false, call("search", r#"{"q":1}"#)),
        (json!({"type": "function", "name": "search"}), true, call("search", r#"{"q":1}"#)),
        (
            json!({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "search"}]}),
            false,
            call("search", r#"{"q":1}"#),
        ),
        (
            json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "search"}}]}}),
            false,
            call("search", r#"{"q":1}"#),
        ),
    ];
    for (choice, after_tool_result, want) in cases {
        assert_eq!(Answer::decide(&functions, &choice, after_tool_result, &Value::Null), want, "{choice}");
    }
    let no_parameters = [Function { name: "ping", parameters: &Value::Null }];
    assert_eq!(Answer::decide(&no_parameters, &Value::Null, false, &Value::Null), call("ping", "{}"));
}

#[test]
fn json_formats_get_json() {
    let json_text = |format: Value| match Answer::decide(&[], &Value::Null, false, &format) {
        Answer::Text { text, json: true } => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("{format}: {other:?}"),
    };
    assert!(json_text(json!({"type": "json_object"})).is_object());
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    assert_eq!(
        json_text(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})),
        json!({"n": 1})
    );
    assert_eq!(json_text(json!({"type": "json_schema", "name": "x", "schema": schema})), json!({"n": 1}));
}

#[test]
fn json_streams_in_several_pieces() {
    let answer = Answer::Call { name: "f".into(), arguments: "{}".into() };
    assert_eq!(answer.pieces(), ["{", "}"]);
    let long = Answer::Text { text: "é".repeat(100), json: true };
    assert!(long.pieces().len() > 10 && long.pieces().concat() == "é".repeat(100));
}

// === the routes ===

async fn call(app: &Router, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn an_unknown_model_is_openais_404_on_every_model_route() {
    let app = router();
    let want = json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
    let posts = [
        ("/v1/chat/completions", "messages"),
        ("/v1/completions", "prompt"),
        ("/v1/embeddings", "input"),
        ("/v1/responses", "input"),
    ];
    for (path, field) in posts {
        let (status, body) = call(&app, Method::POST, path, Some(json!({"model": "gpt-9", field: "hi"}))).await;
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body).unwrap()),
            (StatusCode::NOT_FOUND, want.clone()),
            "{path}"
        );
        assert!(body.starts_with("{\n  \"error\": {\n    \"message\""), "pretty-printed as OpenAI does: {body}");
    }
    let (status, body) = call(&app, Method::GET, "/v1/models/gpt-9", None).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (StatusCode::NOT_FOUND, want));
}

#[tokio::test]
async fn the_model_list_is_the_documented_one_plus_any_extra() {
    let (_, body) = call(&router(), Method::GET, "/v1/models", None).await;
    let listed: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, MODELS.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let app = router_with_models(&["llama-3-8b"]);
    let (status, body) = call(&app, Method::GET, "/v1/models/llama-3-8b", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["owned_by"], "user");
}

/// The `data:` payloads of an SSE body, `[DONE]` left out.
fn data_of(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn a_streamed_chat_tool_call_has_openais_chunk_sequence() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": weather()}}]);
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "weather?"}], "tools": tools});
    let (status, text) = call(&router(), Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = data_of(&text);
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let first = &deltas[0]["tool_calls"][0];
    assert_eq!((first["index"].clone(), first["type"].clone()), (json!(0), json!("function")));
    assert_eq!((first["id"].as_str().unwrap(), &first["function"]["name"]), (CALL_ID, &json!("get_weather")));
    let middle = &deltas[1..deltas.len() - 1];
    assert!(middle.len() >= 3, "arguments come in several chunks");
    assert!(middle.iter().all(|d| d["tool_calls"][0]["index"] == 0 && d["tool_calls"][0].get("id").is_none()));
    let arguments: String =
        middle.iter().map(|d| d["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"location": "mock", "unit": "c"}));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(*deltas.last().unwrap(), &json!({}));
}

#[tokio::test]
async fn a_responses_stream_has_openais_event_sequence() {
    let expect_text = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    let expect_call = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ];
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": weather()}]);
    let text_request = json!({"model": "gpt-4o", "stream": true, "input": "one two three"});
    let call_request = json!({"model": "gpt-4o", "stream": true, "input": "weather?", "tools": tools});
    for (request, expect) in [(text_request, &expect_text[..]), (call_request, &expect_call[..])] {
        let (status, text) = call(&router(), Method::POST, "/v1/responses", Some(request)).await;
        assert_eq!(status, StatusCode::OK);
        let events = data_of(&text);
        let mut kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        kinds.dedup();
        assert_eq!(kinds, expect);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], i, "{event}");
        }
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(names, events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>());
        let completed = &events.last().unwrap()["response"];
        assert_eq!(completed["status"], "completed");
        assert!(completed["usage"]["output_tokens"].as_u64().unwrap() > 0);
        assert!(events[..events.len() - 1].iter().all(|e| e["response"]["usage"].is_null()), "usage only at the end");
        let done_item = &events[events.len() - 2]["item"];
        assert_eq!(&completed["output"][0], done_item);
        if done_item["type"] == "function_call" {
            let deltas: String = events
                .iter()
                .filter(|e| e["type"] == "response.function_call_arguments.delta")
                .map(|e| e["delta"].as_str().unwrap())
                .collect();
            assert_eq!(deltas, done_item["arguments"].as_str().unwrap());
            assert_eq!(done_item["call_id"], CALL_ID);
        } else {
            let deltas: String = events
                .iter()
                .filter(|e| e["type"] == "response.output_text.delta")
                .map(|e| e["delta"].as_str().unwrap())
                .collect();
            assert_eq!(deltas, ANSWER);
            assert_eq!(done_item["content"][0]["text"], ANSWER);
        }
    }
}
