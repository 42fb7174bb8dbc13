//! Rotation, expiry, suspension and `explain`, with a clock the test moves.

use std::sync::Arc;
use std::time::Duration;

use keygate::clock::ManualClock;
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

const T0: i64 = 1_900_000_000;

async fn start() -> (MockUpstream, TestGateway, Arc<ManualClock>) {
    let mock = MockUpstream::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let gw = TestGateway::start_with_clock(tempfile::tempdir().unwrap(), &mock.url, "", clock.clone()).await;
    (mock, gw, clock)
}

async fn models(gw: &TestGateway, key: &str) -> reqwest::Response {
    http().get(format!("{}/v1/models", gw.url)).bearer_auth(key).send().await.unwrap()
}

/// Waits for the recorder to store the denial, then explains it.
async fn explain(gw: &TestGateway, response: &reqwest::Response) -> Value {
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    for _ in 0..60 {
        let (status, body) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no denial recorded for {id}");
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_with_a_warning_then_is_refused() {
    let (_mock, gw, clock) = start().await;
    let (key, old) = gw.create_key("MyApp-Prod-v2").await;
    let id = key["id"].as_str().unwrap();
    let project = gw.default_project().await;
    let (status, rotated) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys/{id}/rotate"),
            Some(json!({"grace_period_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["id"], id, "a rotation keeps the key's id");
    let new = rotated["value"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["previous_secret_expires_at"], T0 + 3600);

    let during = models(&gw, &old).await;
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers()["x-keygate-key-expires-at"], keygate::time::rfc3339(T0 + 3600).as_str());
    let fresh = models(&gw, &new).await;
    assert_eq!(fresh.status(), 200);
    assert!(fresh.headers().get("x-keygate-key-expires-at").is_none());

    clock.advance(3600);
    let after = models(&gw, &old).await;
    assert_eq!(after.status(), 401);
    assert_eq!(models(&gw, &new).await.status(), 200);
    let explained = explain(&gw, &after).await;
    assert_eq!(explained["reason"], "rotated_out");
    let text = explained["explanation"].as_str().unwrap();
    assert!(
        text.contains("key `MyApp-Prod-v2`") && text.contains("was rotated at") && text.contains("grace period"),
        "{text}"
    );
    assert_eq!(explained["key"]["id"], id);
}

#[tokio::test]
async fn grace_zero_refuses_the_old_secret_at_once() {
    let (_mock, gw, _clock) = start().await;
    let (key, old) = gw.create_key("k").await;
    let project = gw.default_project().await;
    let (_, rotated) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys/{}/rotate", key["id"].as_str().unwrap()),
            Some(json!({"grace_period_seconds": 0})),
        )
        .await;
    assert_eq!(models(&gw, &old).await.status(), 401);
    assert_eq!(models(&gw, rotated["value"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn an_expired_key_is_refused_and_explained() {
    let (_mock, gw, clock) = start().await;
    let project = gw.default_project().await;
    let (_, key) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "temp", "expires_at": T0 + 60})),
        )
        .await;
    let secret = key["value"].as_str().unwrap();
    let before = models(&gw, secret).await;
    assert_eq!(before.status(), 200);
    assert_eq!(before.headers()["x-keygate-key-expires-at"], keygate::time::rfc3339(T0 + 60).as_str());
    clock.advance(60);
    let after = models(&gw, secret).await;
    assert_eq!(after.status(), 401);
    let explained = explain(&gw, &after).await;
    assert_eq!(explained["reason"], "expired");
    assert!(explained["explanation"].as_str().unwrap().contains(&keygate::time::rfc3339(T0 + 60)));
}

#[tokio::test]
async fn suspend_and_resume() {
    let (_mock, gw, _clock) = start().await;
    let (key, secret) = gw.create_key("pausable").await;
    let base =
        format!("/v1/organization/projects/{}/api_keys/{}", gw.default_project().await, key["id"].as_str().unwrap());
    let (_, suspended) = gw.admin(Method::POST, &format!("{base}/suspend"), None).await;
    assert_eq!(suspended["state"], "suspended");
    let refused = models(&gw, &secret).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(explain(&gw, &refused).await["reason"], "suspended");
    let (_, resumed) = gw.admin(Method::POST, &format!("{base}/resume"), None).await;
    assert_eq!(resumed["state"], "active");
    assert_eq!(models(&gw, &secret).await.status(), 200);
}

#[tokio::test]
async fn keys_past_the_projects_max_age_are_due() {
    let (_mock, gw, clock) = start().await;
    let project = gw.default_project().await;
    gw.admin(
        Method::POST,
        &format!("/v1/organization/projects/{project}"),
        Some(json!({"max_key_age_seconds": 86400})),
    )
    .await;
    let (old, _) = gw.create_key("old").await;
    clock.advance(86_400);
    let (_young, _) = gw.create_key("young").await;
    let (_, due) = gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys?due=true"), None).await;
    let ids: Vec<&str> = due["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [old["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn explain_names_typos_foreign_keys_and_missing_headers() {
    let (_mock, gw, _clock) = start().await;
    let (_, secret) = gw.create_key("MyApp-Prod-v2").await;
    let mut typo = secret.clone().into_bytes();
    typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let refused = models(&gw, &typo).await;
    let explained = explain(&gw, &refused).await;
    assert_eq!(explained["reason"], "malformed_key");
    let text = explained["explanation"].as_str().unwrap();
    assert!(text.contains("checksum mismatch") && text.contains("key `MyApp-Prod-v2`"), "{text}");

    let openai_key = format!("sk-proj-{}T3BlbkFJ{}", "a".repeat(20), "b".repeat(20));
    let explained = explain(&gw, &models(&gw, &openai_key).await).await;
    assert!(explained["explanation"].as_str().unwrap().contains("an OpenAI API key"));

    let bare = http().get(format!("{}/v1/models", gw.url)).send().await.unwrap();
    let explained = explain(&gw, &bare).await;
    assert_eq!(explained["reason"], "missing_credential");
    assert!(explained["explanation"].as_str().unwrap().contains("a proxy stripped it"));

    let (status, _) =
        gw.admin(Method::GET, "/v1/organization/requests/req_00000000000000000000000000000000", None).await;
    assert_eq!(status, 404);
    let (status, _) = gw.admin(Method::GET, "/v1/organization/requests/not-a-request-id", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn every_admin_action_is_audited_without_secrets() {
    let (_mock, gw, _clock) = start().await;
    let project = gw.default_project().await;
    let (key, secret) = gw.create_key("audited").await;
    let id = key["id"].as_str().unwrap();
    let (_, rotated) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys/{id}/rotate"), None).await;
    gw.admin(Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{id}?reason=leaked"), None).await;
    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?limit=100", None).await;
    let types: Vec<&str> = logs["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["api_key.deleted", "api_key.updated", "api_key.created"], "newest first");
    let text = logs.to_string();
    assert!(!text.contains(&secret) && !text.contains(rotated["value"].as_str().unwrap()) && !text.contains(ADMIN_KEY));
    let deleted = &logs["data"][0];
    assert_eq!(deleted["api_key.deleted"]["id"], id);
    assert_eq!(deleted["actor"]["type"], "api_key");
    assert_eq!(deleted["project"]["id"], project);
    let (_, filtered) =
        gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=api_key.created&limit=1", None).await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    let (status, _) = gw.admin(Method::GET, "/v1/organization/audit_logs?bogus=1", None).await;
    assert_eq!(status, 400);
}

/// `keygate explain` right after a refusal finds it: the refusal may still
/// wait in the recorder's queue, which the lookup has written first.
#[tokio::test]
async fn a_refusal_is_explained_the_moment_its_answer_arrives() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("gone").await;
    let project = gw.default_project().await;
    let id = key["id"].as_str().unwrap();
    gw.admin(Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{id}"), None).await;
    for _ in 0..5 {
        let refused = models(&gw, &secret).await;
        assert_eq!(refused.status(), 401);
        let request_id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
        let (status, body) = gw.admin(Method::GET, &format!("/v1/organization/requests/{request_id}"), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reason"], "revoked");
    }
}
