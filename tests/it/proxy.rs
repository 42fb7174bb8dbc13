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
    assert!(config.upstreams[0].credential.is_none());
    let upstreams = keygate::proxy::Upstreams::build(&config.upstreams, None).unwrap();
    let response = keygate::proxy::forward(
        upstreams.route(None),
        http::Method::GET,
        "/models",
        &http::HeaderMap::new(),
        bytes::Bytes::new(),
        None,
    )
    .await
    .unwrap();
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
    assert_eq!(retrieve.status(), 404); // the local mock does not know it, but it was asked
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
