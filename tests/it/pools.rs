//! Upstream pools: members with a bad provider key, a slow one and a healthy
//! one behind one route; failover, the record of which member served or
//! failed, and a clean 503 when none can.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

/// A pool routed for `gpt-4o-mini` with one member per mock (named after them).
fn pool_toml(members: &[(&str, &str)], extra: &str) -> String {
    let mut toml = format!(
        "[[upstreams]]\nname = \"mini-pool\"\nmodels = [\"gpt-4o-mini\"]\nretries = {}\ncooldown_seconds = 60\n{extra}",
        members.len() - 1
    );
    for (name, url) in members {
        toml.push_str(&format!("[[upstreams.members]]\nname = \"{name}\"\nurl = \"{url}\"\n"));
    }
    toml
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

async fn call(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(key).json(body).send().await.unwrap()
}

#[tokio::test]
async fn a_bad_provider_key_is_taken_out_and_alerted_and_the_slow_member_is_passed_over() {
    let default = MockUpstream::start().await;
    let (bad, slow, healthy) = (MockUpstream::start().await, MockUpstream::start().await, MockUpstream::start().await);
    bad.behave(Behaviour::Status(401));
    slow.behave(Behaviour::Slow(400));
    // The bad member weighs most, so the first request meets it.
    let toml = pool_toml(&[("bad", &bad.url), ("slow", &slow.url), ("healthy", &healthy.url)], "")
        .replace("name = \"bad\"\n", "name = \"bad\"\nweight = 1000\n");
    let gw = TestGateway::start(&default.url, &toml).await;
    let (_, key) = gw.create_key("pooled").await;

    let mut ids = Vec::new();
    for i in 0..8 {
        let response = call(&gw, &key, &chat()).await;
        assert_eq!(response.status(), 200, "request {i}");
        ids.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    // The bad member answered once, then was out of rotation; the client never saw its 401.
    assert_eq!(bad.requests().len(), 1, "answered once, then out of rotation");
    // Under load the slow member, once measured, is passed over for the fast one.
    let body = chat();
    let concurrent: Vec<_> = (0..12).map(|_| call(&gw, &key, &body)).collect();
    for response in futures_util::future::join_all(concurrent).await {
        assert_eq!(response.status(), 200);
    }
    assert!(
        slow.requests().len() < healthy.requests().len(),
        "slow {} healthy {}",
        slow.requests().len(),
        healthy.requests().len()
    );
    assert_eq!(default.requests().len(), 0, "the pool's model never reaches the default route");
    // keygate's provider key for each member, never the client's key.
    for r in healthy.requests() {
        assert_ne!(r.header("authorization"), Some(format!("Bearer {key}").as_str()));
    }

    gw.gateway_state.recorder.flush().await;
    let (_, alerts) = gw.admin(Method::GET, "/v1/organization/alerts", None).await;
    let alert = alerts["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "upstream_credential_rejected")
        .cloned()
        .unwrap_or_else(|| panic!("no alert: {alerts}"));
    assert_eq!(alert["details"]["member"], "bad");
    assert_eq!(alert["severity"], "critical");
    // The request that met it says which members it went to.
    let mut explained = Vec::new();
    for id in &ids {
        let (status, found) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
        if status == 200 {
            explained.push(found["explanation"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(explained.len(), 1, "{explained:?}");
    assert!(explained[0].contains("`bad`: HTTP 401"), "{explained:?}");
    // Each member's state, and no credential, in the admin view.
    let (status, upstreams) = gw.admin(Method::GET, "/v1/keygate/upstreams", None).await;
    assert_eq!(status, 200, "{upstreams}");
    let pool = upstreams["data"].as_array().unwrap().iter().find(|p| p["name"] == "mini-pool").unwrap().clone();
    let state_of =
        |name: &str| pool["members"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["state"].clone();
    assert_eq!(state_of("healthy"), "healthy");
    assert_eq!(state_of("bad"), "open");
    assert!(!upstreams.to_string().contains(UPSTREAM_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_is_never_retried_once_it_has_begun() {
    let default = MockUpstream::start().await;
    let (cut, other) = (MockUpstream::start().await, MockUpstream::start().await);
    cut.behave(Behaviour::CutStream);
    // `cut` weighs 1000: it is picked first.
    let toml = format!(
        "[[upstreams]]\nname = \"mini-pool\"\nmodels = [\"gpt-4o-mini\"]\nretries = 1\n\
         [[upstreams.members]]\nname = \"cut\"\nurl = \"{}\"\nweight = 1000\n\
         [[upstreams.members]]\nname = \"other\"\nurl = \"{}\"\n",
        cut.url, other.url
    );
    let gw = TestGateway::start(&default.url, &toml).await;
    let (_, key) = gw.create_key("streamer").await;
    let mut body = chat();
    body["stream"] = json!(true);
    let response = call(&gw, &key, &body).await;
    assert_eq!(response.status(), 200);
    // The client reads the one event, then the break.
    let _ = response.bytes().await;
    assert_eq!(cut.requests().len(), 1);
    assert_eq!(other.requests().len(), 0, "nothing is sent again once the answer began");
    gw.stop().await;
}

#[tokio::test]
async fn with_every_member_down_the_client_gets_a_clean_503_and_explain_names_each_failure() {
    let default = MockUpstream::start().await;
    let throttled = MockUpstream::start().await;
    throttled.behave(Behaviour::Status(401));
    // Port 1 on loopback refuses at once.
    let toml = pool_toml(&[("refused", "http://127.0.0.1:1/v1"), ("rejected", &throttled.url)], "");
    let gw = TestGateway::start(&default.url, &toml).await;
    let (_, key) = gw.create_key("unlucky").await;
    let response = call(&gw, &key, &chat()).await;
    assert_eq!(response.status(), 503);
    assert_request_id(&response);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(!body.to_string().contains("401"), "the client never hunts for a typo in its key: {body}");

    let (status, explained) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["reason"], "upstream_unavailable");
    let text = explained["explanation"].as_str().unwrap();
    assert!(text.contains("`refused`: not reachable") && text.contains("`rejected`: HTTP 401"), "{text}");
    assert_eq!(explained["key"]["name"], "unlucky");

    // Both out of rotation now: the next request is refused at once, still 503.
    let again = call(&gw, &key, &chat()).await;
    assert_eq!(again.status(), 503);
    gw.stop().await;
}

#[tokio::test]
async fn a_members_429_is_passed_on_when_no_other_member_can_serve() {
    let default = MockUpstream::start().await;
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.behave(Behaviour::Status(429));
    b.behave(Behaviour::Status(429));
    let gw = TestGateway::start(&default.url, &pool_toml(&[("a", &a.url), ("b", &b.url)], "")).await;
    let (_, key) = gw.create_key("busy").await;
    let response = call(&gw, &key, &chat()).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(a.requests().len() + b.requests().len(), 2, "each member tried once");
    gw.stop().await;
}

#[tokio::test]
async fn a_probe_puts_a_member_whose_key_was_fixed_back_in_rotation() {
    let default = MockUpstream::start().await;
    let (flaky, steady) = (MockUpstream::start().await, MockUpstream::start().await);
    flaky.behave(Behaviour::Status(401));
    let toml = pool_toml(&[("flaky", &flaky.url), ("steady", &steady.url)], "probe_interval_seconds = 1\n");
    let gw = TestGateway::start(&default.url, &toml).await;
    let (_, key) = gw.create_key("probed").await;
    let state_of = |name: &'static str| {
        let gw = &gw;
        async move {
            let (_, upstreams) = gw.admin(Method::GET, "/v1/keygate/upstreams", None).await;
            let pool = upstreams["data"].as_array().unwrap().iter().find(|p| p["name"] == "mini-pool").unwrap().clone();
            pool["members"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["state"].clone()
        }
    };
    // Until the probe finds it out, requests may meet it; they are all served.
    for _ in 0..4 {
        assert_eq!(call(&gw, &key, &chat()).await.status(), 200);
    }
    assert!(eventually(std::time::Duration::from_secs(5), || async { state_of("flaky").await == "open" }).await);
    // The provider key is fixed: the next probe brings the member back, long
    // before its five minutes out.
    flaky.behave(Behaviour::Serve);
    assert!(eventually(std::time::Duration::from_secs(5), || async { state_of("flaky").await == "healthy" }).await);
    gw.stop().await;
}
