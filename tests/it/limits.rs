//! Rate limits, budgets, concurrency and the failed-auth throttle, on a clock
//! the test moves.

use std::sync::Arc;

use keygate::clock::ManualClock;
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

const T0: i64 = 1_900_000_000;

async fn start() -> (MockUpstream, TestGateway, Arc<ManualClock>) {
    let mock = MockUpstream::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let gw = TestGateway::start_with_clock(
        tempfile::tempdir().unwrap(),
        &mock.url,
        "[limits]\nfailed_auth_per_minute = 5\n",
        clock.clone(),
    )
    .await;
    (mock, gw, clock)
}

async fn key_with(gw: &TestGateway, extra: Value) -> (Value, String) {
    let project = gw.default_project().await;
    let mut body = json!({"name": "limited"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, key) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys"), Some(body)).await;
    assert_eq!(status, 200, "{key}");
    let secret = key["value"].as_str().unwrap().to_owned();
    (key, secret)
}

async fn chat(gw: &TestGateway, key: &str, body: Value) -> reqwest::Response {
    http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(key).json(&body).send().await.unwrap()
}

fn hello() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap()
}

#[tokio::test]
async fn the_upstreams_own_rate_limit_headers_never_reach_the_client() {
    // They describe the gateway's account upstream, not the client's key.
    let (_mock, gw, _clock) = start().await;
    let (_, limited) = key_with(&gw, json!({"rate_limits": {"max_requests_per_1_minute": 5}})).await;
    let r = chat(&gw, &limited, hello()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "5");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "4");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "12s");
    for name in ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"] {
        assert!(r.headers().get(name).is_none(), "{name}: the key has no token limit");
    }
    let (_, unlimited) = key_with(&gw, json!({})).await;
    let r = chat(&gw, &unlimited, hello()).await;
    assert_eq!(r.status(), 200);
    for (name, _) in UPSTREAM_RATE_LIMITS {
        assert!(r.headers().get(name).is_none(), "{name}: the key has no limits");
    }
}

#[tokio::test]
async fn rpm_5_refuses_the_sixth_call_with_openais_429_and_frees_one_every_12s() {
    let (_mock, gw, clock) = start().await;
    let (_, key) = key_with(&gw, json!({"rate_limits": {"max_requests_per_1_minute": 5}})).await;
    for i in 0..5 {
        let r = chat(&gw, &key, hello()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "5");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), (4 - i).to_string());
        assert_eq!(header(&r, "x-ratelimit-reset-requests"), format!("{}s", 12 * (i + 1)).replace("60s", "1m0s"));
    }
    let refused = chat(&gw, &key, hello()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "12");
    assert_eq!(header(&refused, "retry-after-ms"), "12000");
    assert!(refused.headers().get("x-should-retry").is_none());
    let org = gw.gateway_state.settings.organization_id.clone();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        body["error"]["message"],
        format!("Rate limit reached for gpt-4o in organization {org} on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 12s. Visit https://platform.openai.com/account/rate-limits to learn more.")
    );
    clock.advance(12);
    assert_eq!(chat(&gw, &key, hello()).await.status(), 200);
    assert_eq!(chat(&gw, &key, hello()).await.status(), 429);
}

#[tokio::test]
async fn tpm_counts_the_prompt_and_max_tokens_and_settles_with_real_usage() {
    let (_mock, gw, _clock) = start().await;
    let (_, key) = key_with(&gw, json!({"rate_limits": {"max_tokens_per_1_minute": 1000}})).await;
    let big =
        json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "word ".repeat(1200)}]});
    let refused = chat(&gw, &key, big).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-should-retry"], "false", "waiting cannot help");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Request too large for gpt-4o in organization "), "{body}");
    assert!(message.contains("on tokens per min (TPM): Limit 1000, Requested 12"), "{body}");
    // A small request reserves prompt + max_tokens, then settles to the real count.
    let small = json!({"model": "gpt-4o", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let ok = chat(&gw, &key, small.clone()).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(header(&ok, "x-ratelimit-limit-tokens"), "1000");
    let remaining: u64 = header(&ok, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert!(remaining < 500, "the reservation counts max_tokens: {remaining}");
    ok.text().await.unwrap();
    gw.gateway_state.recorder.flush().await;
    // After settling (about a dozen real tokens) a second 500-token reservation fits again.
    assert_eq!(chat(&gw, &key, small).await.status(), 200);
}

#[tokio::test]
async fn a_spent_budget_is_insufficient_quota_and_stops_sdk_retries() {
    let (_mock, gw, _clock) = start().await;
    // gpt-4o costs $10 per 1M output tokens; $0.0001 is spent after one call.
    let (_, key) = key_with(&gw, json!({"monthly_budget_usd": 0.0001})).await;
    let first = chat(&gw, &key, hello()).await;
    assert_eq!(first.status(), 200);
    first.text().await.unwrap();
    gw.gateway_state.recorder.flush().await;
    let refused = chat(&gw, &key, hello()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-should-retry"), "false");
    assert!(refused.headers().get("retry-after").is_none());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    gw.gateway_state.recorder.flush().await;
    let (_, alerts) = gw.admin(Method::GET, "/v1/organization/alerts", None).await;
    assert!(alerts["data"].as_array().unwrap().iter().any(|a| a["kind"] == "budget"), "{alerts}");
}

#[tokio::test]
async fn concurrent_streams_hold_their_slot_until_they_end() {
    let (_mock, gw, _clock) = start().await;
    let (_, key) = key_with(&gw, json!({"rate_limits": {"max_concurrent_requests": 1}})).await;
    let body = open_endless_stream(&gw, &key).await;
    let refused = chat(&gw, &key, hello()).await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("on concurrent requests: Limit 1"));
    drop(body);
    let mut freed = false;
    for _ in 0..50 {
        if chat(&gw, &key, hello()).await.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed, "the hung-up stream gave its slot back");
}

#[tokio::test]
async fn project_limits_apply_per_model_and_to_all_keys() {
    let (_mock, gw, _clock) = start().await;
    let project = gw.default_project().await;
    let (status, rl) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/rate_limits/rl-gpt-4o"),
            Some(json!({"max_requests_per_1_minute": 2})),
        )
        .await;
    assert_eq!(status, 200, "{rl}");
    assert_eq!(
        rl,
        json!({"object": "project.rate_limit", "id": "rl-gpt-4o", "model": "gpt-4o", "max_requests_per_1_minute": 2,
        "max_tokens_per_1_minute": null, "max_requests_per_1_day": null, "max_tokens_per_1_day": null, "max_concurrent_requests": null})
    );
    let (_, list) = gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/rate_limits"), None).await;
    assert_eq!(list["data"][0]["id"], "rl-gpt-4o");
    let (_, a) = gw.create_key("a").await;
    let (_, b) = gw.create_key("b").await;
    assert_eq!(chat(&gw, &a, hello()).await.status(), 200);
    assert_eq!(chat(&gw, &b, hello()).await.status(), 200);
    assert_eq!(chat(&gw, &a, hello()).await.status(), 429, "the project's gpt-4o limit is shared");
    let mini = json!({"model": "gpt-4o-mini", "messages": []});
    assert_eq!(chat(&gw, &a, mini).await.status(), 200, "other models are not limited");
    let (status, _) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/rate_limits/rl-gpt-4o"),
            Some(json!({"max_requests_per_1_minute": 0})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_failed_auth_flood_is_throttled_but_a_valid_key_from_the_same_address_passes() {
    let (_mock, gw, clock) = start().await;
    let (_, key) = gw.create_key("good").await;
    for _ in 0..5 {
        assert_eq!(chat(&gw, "sk-bogus", hello()).await.status(), 401);
    }
    let throttled = chat(&gw, "sk-bogus", hello()).await;
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().get("retry-after").is_some());
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(chat(&gw, &key, hello()).await.status(), 200, "valid keys are never locked out");
    clock.advance(12);
    assert_eq!(chat(&gw, "sk-bogus", hello()).await.status(), 401);
}
