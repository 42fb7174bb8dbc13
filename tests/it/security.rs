//! Attacks from outside: each test reproduces a way around a key's limits or
//! an oracle that was found, and proves the class is closed.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

const AZURE: &str = "[azure]\n[azure.deployments]\n\"d\" = \"gpt-4o\"\n";

/// keygate's own namespaces, spelled every way an upstream might still read
/// them, never reach the upstream (which would answer them with the
/// organization's credential), whatever the key and the dialect.
#[tokio::test]
async fn reserved_paths_are_never_forwarded_in_any_spelling_or_dialect() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, AZURE).await;
    let (_, key) = gw.create_key("all-permissions").await;
    let openai = [
        (Method::POST, "/v1/Organization/admin_api_keys"),
        (Method::GET, "/v1/organization"),
        (Method::GET, "/v1/organization/"),
        (Method::GET, "/v1/Organization/projects"),
        (Method::GET, "/v1/ORGANIZATION/projects"),
        (Method::POST, "/v1/%6Frganization/admin_api_keys"),
        (Method::DELETE, "/v1/%6frganization/projects/proj_1"),
        (Method::GET, "/v1/organization;x/projects"),
        (Method::GET, "/v1/keygate"),
        (Method::GET, "/v1/keygate/"),
        (Method::GET, "/v1/KEYGATE/echo-auth"),
        (Method::GET, "/v1/%6Beygate/echo-auth"),
        (Method::GET, "/v1/models/%2e%2e/organization"),
    ];
    for (method, path) in openai {
        let response =
            http().request(method.clone(), format!("{}{path}", gw.url)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        assert_request_id(&response);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().starts_with("Invalid URL ("), "{path}: {body}");
    }
    let azure = [
        (Method::POST, "/openai/v1/organization/admin_api_keys"),
        (Method::DELETE, "/openai/v1/organization/projects/proj_1"),
        (Method::GET, "/openai/organization/projects?api-version=2024-10-21"),
        (Method::GET, "/openai/Organization?api-version=2024-10-21"),
        (Method::GET, "/openai/v1/keygate/echo-auth"),
        (Method::GET, "/openai/v1/keygate"),
        (Method::POST, "/openai/deployments/d/organization/admin_api_keys?api-version=2024-10-21"),
    ];
    for (method, path) in azure {
        let response = http()
            .request(method.clone(), format!("{}{path}", gw.url))
            .header("api-key", &key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    assert!(mock.requests().is_empty(), "forwarded: {:?}", mock.requests());
    // keygate's own route still answers, and ordinary routes are forwarded in canonical form.
    let echo = http().get(format!("{}/v1/keygate/echo-auth", gw.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(echo.status(), 200);
    let models = http().get(format!("{}/v1/%6Dodels", gw.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let chat = http()
        .post(format!("{}/v1/CHAT/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let sent: Vec<String> = mock.requests().into_iter().map(|r| r.path_and_query).collect();
    assert_eq!(sent, ["/v1/models", "/v1/chat/completions"]);
}

/// A restricted key reaches only routes with a known scope: an unmapped path
/// is refused before the upstream whatever its spelling.
#[tokio::test]
async fn restricted_keys_forward_only_paths_with_a_known_scope() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let (status, created) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "chat-only", "permissions": "restricted", "scopes": ["api.model.chat.request"]})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let key = created["value"].as_str().unwrap();
    for path in ["/v1/dashboard/billing/usage", "/v1/Dashboard/billing", "/v1/files"] {
        let response = http().get(format!("{}{path}", gw.url)).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    assert!(mock.requests().is_empty());
}

/// Keys that name a real admin key (its public id with another secret) pass
/// the format check and look up the key: each failure used to append one
/// audit row, a flood anyone could send.
fn forged_like(admin_key: &str) -> String {
    use keygate::ids::PublicId;
    use keygate::key::{generate, parse, KeyPrefix};
    let parsed = parse(admin_key).unwrap();
    let id = PublicId::parse(parsed.id).unwrap();
    generate(&KeyPrefix::parse(parsed.prefix).unwrap(), &id).secret.expose().to_owned()
}

/// The `login.failed` events, once the recorder has written `at_least` (up to 5 s).
async fn login_failures(gw: &TestGateway, at_least: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (_, logs) =
            gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=login.failed&limit=100", None).await;
        let events = logs["data"].as_array().cloned().unwrap_or_default();
        if events.len() >= at_least {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn forged_admin_keys_cannot_flood_the_audit_log() {
    use std::sync::Arc;
    let mock = MockUpstream::start().await;
    let clock = Arc::new(keygate::clock::ManualClock::new(1_900_000_000));
    // The failed-auth throttle off: every attempt reaches the audit path.
    let gw = TestGateway::start_with_clock(
        tempfile::tempdir().unwrap(),
        &mock.url,
        "[limits]\nfailed_auth_per_minute = 0\n",
        clock.clone(),
    )
    .await;
    let (status, admin) = gw.admin(Method::POST, "/v1/organization/admin_api_keys", Some(json!({"name": "ops"}))).await;
    assert_eq!(status, 200, "{admin}");
    let real = admin["value"].as_str().unwrap();
    let client = http();
    for n in 0..2_000 {
        let forged = forged_like(real);
        let response =
            client.get(format!("{}/v1/organization/projects", gw.url)).bearer_auth(&forged).send().await.unwrap();
        assert_eq!(response.status(), 401, "attempt {n}");
    }
    clock.advance(61);
    let events = login_failures(&gw, 2).await;
    assert_eq!(events.len(), 2, "the first at once, the repeats summed: {events:?}");
    let counts: Vec<i64> = events.iter().map(|e| e["login.failed"]["count"].as_i64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<i64>(), 2_000, "{events:?}");
    for event in &events {
        assert_eq!(event["login.failed"]["client_ips"], json!(["127.0.0.1"]));
        assert_eq!(event["login.failed"]["error_code"], "wrong_secret");
    }
}

#[tokio::test]
async fn a_throttled_sender_adds_nothing_to_the_audit_log() {
    use std::sync::Arc;
    let mock = MockUpstream::start().await;
    let clock = Arc::new(keygate::clock::ManualClock::new(1_900_000_000));
    let gw = TestGateway::start_with_clock(
        tempfile::tempdir().unwrap(),
        &mock.url,
        "[limits]\nfailed_auth_per_minute = 5\n",
        clock.clone(),
    )
    .await;
    let (_, admin) = gw.admin(Method::POST, "/v1/organization/admin_api_keys", Some(json!({"name": "ops"}))).await;
    let real = admin["value"].as_str().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let forged = forged_like(real);
        let response =
            http().get(format!("{}/v1/organization/projects", gw.url)).bearer_auth(&forged).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 45, "{statuses:?}");
    clock.advance(61);
    let events = login_failures(&gw, 2).await;
    let counts: Vec<i64> = events.iter().map(|e| e["login.failed"]["count"].as_i64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<i64>(), 5, "only the failures before the throttle: {events:?}");
}

/// Every metric label value comes from a closed set: made-up methods from
/// unauthenticated clients cannot grow `/metrics` (or memory) without bound.
#[tokio::test]
async fn made_up_methods_do_not_become_metric_labels() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let client = http();
    for n in 0..200 {
        let method = Method::from_bytes(format!("M{n}{}", "X".repeat(500)).as_bytes()).unwrap();
        let response = client.request(method, format!("{}/v1/models", gw.url)).send().await.unwrap();
        assert!(response.status().is_client_error());
    }
    let metrics = client.get(format!("{}/metrics", gw.metrics_url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("XXXXXXXX"), "a client's method became a label");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(metrics.len() < 64 * 1024, "metrics grew to {} bytes", metrics.len());
}

/// What comes back of a string the client sent is bounded: OpenAI's masked
/// echo of a key, an unknown URL, a model name.
#[tokio::test]
async fn echoes_of_presented_strings_are_bounded() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let huge = format!("sk-{}", "A".repeat(100_000));
    let response = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&huge).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap();
    assert!(body.len() < 1_024, "a 100 KB key came back as {} bytes", body.len());
    let long_path = format!("/nowhere/{}", "p".repeat(8_000));
    let response = http().get(format!("{}{long_path}", gw.url)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().len() < 1_024);
    let (_, key) = gw.create_key("app").await;
    let project = gw.default_project().await;
    let (status, _) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}"),
            Some(json!({"name": "p", "models": ["gpt-4o-mini"]})),
        )
        .await;
    assert_eq!(status, 200);
    let response = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m".repeat(100_000), "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().len() < 1_024);
    assert!(mock.requests().is_empty());
}

/// The Administration API's own refusals (wrong method, oversized body, a
/// path id that is not UTF-8) have OpenAI's envelope and a request id.
#[tokio::test]
async fn admin_api_refusals_are_openai_shaped() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let cases = [
        (Method::PUT, "/v1/organization/projects".to_owned(), None, 405),
        (Method::POST, "/v1/organization/projects".to_owned(), Some(vec![b' '; 17 * 1024 * 1024]), 413),
        (Method::GET, "/v1/organization/projects/%FF%FE".to_owned(), None, 400),
    ];
    for (method, path, body, expected) in cases {
        let mut request = http().request(method.clone(), format!("{}{path}", gw.url)).bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{method} {path}");
        assert_request_id(&response);
        if expected == 405 {
            assert_eq!(response.headers()["allow"], "GET,HEAD,POST");
        }
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        for field in ["message", "type", "param", "code"] {
            assert!(body["error"].get(field).is_some(), "{method} {path}: {body}");
        }
        if expected == 405 {
            assert_eq!(body["error"]["code"], "method_not_supported");
            assert!(body["error"]["message"].as_str().unwrap().starts_with("Method PUT is not allowed"), "{body}");
        }
    }
}

/// The audit log is append-only for writers and bounded by its retention
/// policy alone: events past `audit_days` go, then the oldest past
/// `audit_max_rows`.
#[tokio::test]
async fn the_audit_log_is_bounded_by_its_retention_policy() {
    use keygate::jobs::{enforce_retention, Retention};
    use std::time::Duration;
    let mock = MockUpstream::start().await;
    let clock = std::sync::Arc::new(keygate::clock::ManualClock::new(1_900_000_000));
    let gw = TestGateway::start_with_clock(tempfile::tempdir().unwrap(), &mock.url, "", clock.clone()).await;
    for n in 0..3 {
        gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": format!("old {n}")}))).await;
    }
    clock.advance(3 * 86_400);
    for n in 0..5 {
        gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": format!("new {n}")}))).await;
    }
    let day = Duration::from_secs(86_400);
    let state = &gw.gateway_state;
    let policy = Retention {
        denials: day,
        denial_rows: 100,
        usage_records: day,
        usage_rollups: day,
        alerts: day,
        audit: 2 * day,
        audit_rows: 4,
        session_idle: day,
    };
    enforce_retention(&*state.store, &*state.clock, &policy).await;
    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?limit=100", None).await;
    let names: Vec<&str> =
        logs["data"].as_array().unwrap().iter().filter_map(|e| e["project.created"]["data"]["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "{logs}");
    assert!(names.iter().all(|n| n.starts_with("new")), "{names:?}");
}

/// A panicking handler answers OpenAI's 500, and nothing of what it was
/// handling (here a key in its panic message) reaches the answer.
#[tokio::test]
async fn a_panicking_handler_answers_500_without_its_message() {
    use axum::routing::get;
    use tower::ServiceExt as _;
    let secret = "sk-prod-kg1SECRETSECRETSECRETSECRET";
    let app = axum::Router::new()
        .route(
            "/boom",
            get(move || async move {
                panic!("handler saw {secret}");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .layer(axum::middleware::from_fn(keygate::server::catch_panic));
    let response =
        app.oneshot(axum::http::Request::get("/boom").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 500);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert!(!body.to_string().contains("SECRET"));
}
