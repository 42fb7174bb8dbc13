use serde_json::{json, Value};

use crate::util::*;

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    assert_request_id(&response);
    assert_eq!(response.headers()["content-type"], "application/json");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn unknown_key_gets_openais_401_with_a_masked_key() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let mut wrong = key.clone().into_bytes();
    wrong[20] = if wrong[20] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    let (status, body) =
        error_of(http().get(format!("{}/v1/models", gw.url)).bearer_auth(&wrong).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("Incorrect API key provided: {}", &wrong[..8])));
    assert!(!message.contains(&wrong));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_routes_and_reserved_namespaces_are_404_and_never_proxied() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    for (method, path) in [
        (reqwest::Method::TRACE, "/v1/chat/completions"),
        (reqwest::Method::OPTIONS, "/v1/models"),
        (reqwest::Method::GET, "/v1/organization/nope"),
        (reqwest::Method::POST, "/v1/keygate/anything"),
        (reqwest::Method::GET, "/nope"),
    ] {
        let response =
            http().request(method.clone(), format!("{}{path}", gw.url)).bearer_auth(&key).send().await.unwrap();
        let (status, body) = error_of(response).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["message"], format!("Invalid URL ({method} {path})"));
        assert!(body["error"]["code"].is_null());
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn malformed_json_is_400_and_not_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    for body in ["{\"model\": ", "[1]", "{} x"] {
        let response = http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 400, "{body}");
        assert!(error["error"]["message"].as_str().unwrap().starts_with("We could not parse the JSON body"));
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "[server]\nmax_body_bytes = 1024\n").await;
    let (_, key) = gw.create_key("app").await;
    let big = json!({"model": "gpt-4o", "input": "x".repeat(4096)});
    let response = http().post(format!("{}/v1/embeddings", gw.url)).bearer_auth(&key).json(&big).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind then drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = TestGateway::start(&format!("http://127.0.0.1:{port}/v1"), "").await;
    let (_, key) = gw.create_key("app").await;
    let (status, body) =
        error_of(http().get(format!("{}/v1/models", gw.url)).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await; // read timeout 1 s; /slow takes 5 s
    let (_, key) = gw.create_key("app").await;
    let (status, body) =
        error_of(http().get(format!("{}/v1/slow", gw.url)).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn admin_key_cannot_call_models_and_project_key_cannot_administer() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let response = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("Missing scopes: model.request."));
    let response = http().get(format!("{}/v1/organization/projects", gw.url)).bearer_auth(&key).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("Missing scopes: api.organization.read."));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn public_routes_answer_without_a_key() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("app").await;
    let _ = http().get(format!("{}/v1/models", gw.url)).bearer_auth("sk-wrong").send().await.unwrap();
    let _ = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&key).send().await.unwrap();
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = http().get(format!("{}{path}", gw.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_request_id(&response);
    }
    let public = http().get(format!("{}/metrics", gw.url)).send().await.unwrap();
    assert_eq!(public.status(), 404, "metrics are never on the public listener");
    let metrics = http().get(format!("{}/metrics", gw.metrics_url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keygate_requests_total"), "{metrics}");
    assert!(metrics.contains("keygate_auth_failures_total{reason=\"unknown_key\"}"), "{metrics}");
    assert!(metrics.contains("keygate_upstream_latency_seconds"), "{metrics}");
    assert!(metrics.contains("# HELP keygate_requests_total "), "{metrics}");
    assert!(metrics.lines().any(|l| l == "keygate_usage_dropped_total 0"), "counters start at 0: {metrics}");
    assert!(!metrics.contains(&key[..20]));
}
