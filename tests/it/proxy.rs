use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn client_key_is_swapped_for_the_upstream_credential() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let org = gw.gateway_state.settings.organization_id.clone();
    let project = gw.default_project().await;
    let response = http()
        .post(format!("{}/v1/chat/completions?trace=1", gw.url))
        .bearer_auth(&key)
        .header("OpenAI-Organization", &org)
        .header("OpenAI-Project", &project)
        .header("api-key", &key)
        .header("cookie", "session=1")
        .header("x-custom", "kept")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_request_id(&response);
    assert_eq!(response.headers()["x-upstream-request-id"], "upstream-req-1");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path_and_query, "/v1/chat/completions?trace=1");
    assert_eq!(r.header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    assert_eq!(r.header("openai-organization"), None);
    assert_eq!(r.header("openai-project"), None);
    assert_eq!(r.header("api-key"), None);
    assert_eq!(r.header("cookie"), None);
    assert_eq!(r.header("x-custom"), Some("kept"));
    for (name, value) in &r.headers {
        assert!(!value.contains(&key), "client key forwarded in `{name}`");
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(&key));
}

#[tokio::test]
async fn upstream_without_credential_gets_no_authorization() {
    struct Bare;
    impl keygate::config::Env for Bare {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn vars(&self) -> Vec<(String, String)> {
            Vec::new()
        }
    }
    let mock = MockUpstream::start().await;
    let toml = format!("[upstream]\nurl = \"{}\"", mock.url);
    let config = keygate::config::Config::from_toml(&toml, &Bare).unwrap();
    assert!(config.upstreams[0].members[0].credential.is_none());
    let upstreams = keygate::proxy::Upstreams::build(&config.upstreams, None).unwrap();
    let member = &upstreams.route(None).members()[0];
    let outcome = keygate::proxy::send(
        &member.upstream,
        http::Method::GET,
        "/models",
        &http::HeaderMap::new(),
        bytes::Bytes::new(),
        None,
    )
    .await;
    let keygate::proxy::Outcome::Answer(response) = outcome else { panic!("the mock answers") };
    assert_eq!(response.status(), 200);
    assert_eq!(mock.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let response =
        http().post(format!("{}/v1/echo-error", gw.url)).bearer_auth(&key).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 418);
    assert_request_id(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "upstream says no");
    assert_eq!(body["error"]["code"], "upstream_code");
}

#[tokio::test]
async fn models_are_routed_to_the_upstream_that_claims_them() {
    let default = MockUpstream::start().await;
    let local = MockUpstream::start().await;
    let extra = format!("[[upstreams]]\nname = \"local\"\nurl = \"{}\"\nmodels = [\"llama-*\"]\n", local.url);
    let gw = TestGateway::start(&default.url, &extra).await;
    let (_, key) = gw.create_key("app").await;
    for model in ["llama-3-8b", "gpt-4o"] {
        let response = http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let retrieve = http().get(format!("{}/v1/models/llama-3-8b", gw.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(retrieve.status(), 200);
    assert_eq!(local.requests().len(), 2);
    assert_eq!(default.requests().len(), 1);
    // The routed upstream has no credential configured: nothing is sent.
    assert_eq!(local.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn streaming_passes_events_through_as_they_arrive() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let response = http()
        .post(format!("{}/v1/endless", gw.url))
        .bearer_auth(&key)
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    // The stream runs for ~10 s; the first event must arrive long before that.
    let first = tokio::time::timeout(Duration::from_secs(2), body.next()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: {\"n\":0}"));
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_upstream_stream() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let body = open_endless_stream(&gw, &key).await;
    assert!(!mock.state.stream_dropped.load(Ordering::SeqCst));
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !mock.state.stream_dropped.load(Ordering::SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "upstream stream still running after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streamed_chat_arrives_whole() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let text = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "a b c"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"choices\":[],"));
    assert!(text.contains("\"prompt_tokens\":3"));
}

// === bodies: what keygate checks is what the upstream receives ===

/// A key that may use `gpt-4o-mini` and nothing else.
async fn mini_only_key(gw: &TestGateway) -> String {
    let project = gw.default_project().await;
    let (status, key) = gw
        .admin(
            reqwest::Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "mini-only", "models": ["gpt-4o-mini"]})),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    key["value"].as_str().unwrap().to_owned()
}

/// Sends each request and asserts keygate refused it: a 400, or the model
/// refusal (404 `model_not_found`) when keygate read the forbidden model.
async fn assert_all_refused(cases: Vec<(&str, reqwest::RequestBuilder)>) {
    for (label, request) in cases {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(status == 400 || status == 404, "{label}: {status} {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{label}: {body}");
        if status == 404 {
            assert_eq!(body["error"]["code"], "model_not_found", "{label}: {body}");
        }
    }
}

const TWO_MODELS: &str = r#"{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}"#;

#[tokio::test]
async fn a_json_body_smuggling_a_model_past_the_allow_list_never_reaches_the_upstream() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let key = mini_only_key(&gw).await;
    let chat = || http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(&key);
    let cases = vec![
        ("duplicate model as text/plain", chat().header("content-type", "text/plain").body(TWO_MODELS)),
        ("duplicate model without a content type", chat().body(TWO_MODELS)),
        ("duplicate model as application/jsonx", chat().header("content-type", "application/jsonx").body(TWO_MODELS)),
        (
            "duplicate model with two content types",
            chat().header("content-type", "text/plain").header("content-type", "application/json").body(TWO_MODELS),
        ),
        ("duplicate model as application/json", chat().header("content-type", "application/json").body(TWO_MODELS)),
        (
            "escaped duplicate key",
            chat().header("content-type", "application/json").body(r#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#),
        ),
        (
            "byte order mark as text/plain",
            chat().header("content-type", "text/plain").body(b"\xEF\xBB\xBF{\"model\":\"gpt-4o\"}".to_vec()),
        ),
        (
            "byte order mark as application/json",
            chat().header("content-type", "application/json").body(b"\xEF\xBB\xBF{\"model\":\"gpt-4o\"}".to_vec()),
        ),
        (
            "form-urlencoded model",
            chat().header("content-type", "application/x-www-form-urlencoded").body("model=gpt-4o&x=1"),
        ),
        ("model as an array", chat().json(&json!({"model": ["gpt-4o"], "messages": []}))),
        ("model as null", chat().json(&json!({"model": null, "messages": []}))),
        ("compressed body", chat().header("content-type", "text/plain").header("content-encoding", "gzip").body("x")),
        (
            "json body on PUT",
            http().put(format!("{}/v1/chat/completions", gw.url)).bearer_auth(&key).json(&json!({"model": "gpt-4o"})),
        ),
        (
            "json body on DELETE",
            http()
                .delete(format!("{}/v1/chat/completions", gw.url))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-4o"})),
        ),
    ];
    assert_all_refused(cases).await;
    assert!(mock.requests().is_empty(), "{} request(s) reached the upstream", mock.requests().len());
}

#[tokio::test]
async fn a_body_model_does_not_hide_the_model_in_the_path() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let key = mini_only_key(&gw).await;
    let cases = ["get", "delete"].map(|method| {
        let request = http()
            .request(method.to_uppercase().parse().unwrap(), format!("{}/v1/models/gpt-4o", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini"}));
        (method, request)
    });
    assert_all_refused(cases.into()).await;
    assert!(mock.requests().is_empty(), "{} request(s) reached the upstream", mock.requests().len());
}

fn form(parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (disposition, value) in parts {
        body.push_str(&format!("--XyZ\r\nContent-Disposition: form-data; {disposition}\r\n\r\n{value}\r\n"));
    }
    body + "--XyZ--\r\n"
}

#[tokio::test]
async fn a_multipart_body_smuggling_a_model_past_the_allow_list_never_reaches_the_upstream() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let key = mini_only_key(&gw).await;
    let upload = |body: String| {
        http()
            .post(format!("{}/v1/audio/transcriptions", gw.url))
            .bearer_auth(&key)
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
    };
    let file = ("name=\"file\"; filename=\"a.wav\"", "RIFF");
    let cases = vec![
        ("unquoted name", upload(form(&[file, ("name=model", "gpt-4o")]))),
        ("two model fields", upload(form(&[("name=\"model\"", "gpt-4o-mini"), file, ("name=\"model\"", "gpt-4o")]))),
        (
            "model fields differing in case",
            upload(form(&[("name=\"model\"", "gpt-4o-mini"), ("name=\"MODEL\"", "gpt-4o")])),
        ),
        ("RFC 5987 name", upload(form(&[("name*=utf-8''model", "gpt-4o")]))),
        (
            "no closing delimiter",
            upload("--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o".into()),
        ),
        (
            "no boundary",
            http()
                .post(format!("{}/v1/audio/transcriptions", gw.url))
                .bearer_auth(&key)
                .header("content-type", "multipart/form-data")
                .body(form(&[("name=\"model\"", "gpt-4o")])),
        ),
    ];
    assert_all_refused(cases).await;
    assert!(mock.requests().is_empty(), "{} request(s) reached the upstream", mock.requests().len());
}

#[tokio::test]
async fn an_allowed_multipart_model_is_forwarded_as_sent() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let key = mini_only_key(&gw).await;
    let body = form(&[("name=\"file\"; filename=\"a.wav\"", "RIFF"), ("name=model", "gpt-4o-mini")]);
    let response = http()
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .bearer_auth(&key)
        .header("content-type", "multipart/form-data; boundary=\"XyZ\"")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), 400);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
}

#[tokio::test]
async fn a_bodiless_post_is_forwarded_whatever_its_content_type() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let key = mini_only_key(&gw).await;
    let cancel = || http().post(format!("{}/v1/batches/batch_1/cancel", gw.url)).bearer_auth(&key);
    for (label, request) in [
        ("no body", cancel()),
        ("empty JSON body", cancel().header("content-type", "application/json").body("")),
        ("whitespace JSON body", cancel().header("content-type", "application/json").body(" \r\n")),
    ] {
        let response = request.send().await.unwrap();
        assert_ne!(response.status(), 400, "{label}: {}", response.text().await.unwrap());
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.path_and_query == "/v1/batches/batch_1/cancel"));
}
