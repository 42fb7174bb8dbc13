//! Rate limits shared through Redis: the machine's server at 127.0.0.1:6379
//! for replicas sharing a limit, and a private `redis-server` this test stops
//! and restarts for the failure policies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// A key prefix no other test run shares.
pub fn prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("kgtest:{}:{nanos}:", std::process::id())
}

/// A `[redis]` section with a key prefix of its own: replicas must share one string.
pub fn redis_toml(url: &str, policy: &str) -> String {
    format!("[redis]\nurl = \"{url}\"\non_failure = \"{policy}\"\nkey_prefix = \"{}\"\n", prefix())
}

async fn limited_key(gw: &TestGateway, limits: Value) -> String {
    let project = gw.default_project().await;
    let (status, key) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "shared", "rate_limits": limits})),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    key["value"].as_str().unwrap().to_owned()
}

async fn chat(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(key).json(body).send().await.unwrap()
}

fn hello() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn an_rpm_limit_of_10_holds_across_two_replicas_combined() {
    let mock = MockUpstream::start().await;
    let config = redis_toml(SHARED_REDIS, "closed");
    let a = TestGateway::start(&mock.url, &config).await;
    let key = limited_key(&a, json!({"max_requests_per_1_minute": 10})).await;
    let b = TestGateway::replica_of(&a, &mock.url, &config).await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(chat(gw, &key, &hello()).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
    assert!(statuses[..10].iter().all(|s| *s == 200), "the first ten pass, whichever replica: {statuses:?}");
    let refused = chat(&b, &key, &hello()).await;
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("Limit 10, Used 10, Requested 1."), "{body}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn token_reservations_settle_to_real_usage_in_redis() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, &redis_toml(SHARED_REDIS, "closed")).await;
    let key = limited_key(&gw, json!({"max_tokens_per_1_minute": 1000})).await;
    let small = json!({"model": "gpt-4o", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let first = chat(&gw, &key, &small).await;
    assert_eq!(first.status(), 200);
    let remaining: u64 = first.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap().parse().unwrap();
    assert!(remaining < 500, "the reservation counts max_tokens: {remaining}");
    first.text().await.unwrap();
    // Settling runs beside the response; once it lands a second reservation fits.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = chat(&gw, &key, &small).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(Instant::now() < deadline, "the reservation never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

/// A `redis-server` of this test's own, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn when_redis_stops_each_failure_policy_applies_and_both_recover() {
    let mock = MockUpstream::start().await;
    let redis = PrivateRedis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let closed = TestGateway::start(&mock.url, &redis_toml(&url, "closed")).await;
    let closed_key = limited_key(&closed, json!({"max_requests_per_1_minute": 100})).await;
    let open = TestGateway::start(&mock.url, &redis_toml(&url, "open")).await;
    let open_key = limited_key(&open, json!({"max_requests_per_1_minute": 3})).await;
    assert_eq!(chat(&closed, &closed_key, &hello()).await.status(), 200);
    assert_eq!(chat(&open, &open_key, &hello()).await.status(), 200);

    assert_eq!(http().get(format!("{}/readyz", open.url)).send().await.unwrap().text().await.unwrap(), "ready");
    let port = redis.stop();
    let ready = http().get(format!("{}/readyz", open.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().starts_with("degraded: redis unreachable"));
    let ready = http().get(format!("{}/readyz", closed.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    // Fail closed: 503 in OpenAI's server_error shape, retryable.
    let refused = chat(&closed, &closed_key, &hello()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_request_id(&refused);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("rate limiter is unavailable"), "{body}");
    // Fail open: per-replica local limits still hold (3 a minute, one already
    // counted in Redis, so three more locally and then a 429).
    for _ in 0..3 {
        assert_eq!(chat(&open, &open_key, &hello()).await.status(), 200);
    }
    assert_eq!(chat(&open, &open_key, &hello()).await.status(), 429);

    let _redis = PrivateRedis::start(port);
    within(&closed, &closed_key, 200, Duration::from_secs(10)).await;
    assert_eq!(http().get(format!("{}/readyz", closed.url)).send().await.unwrap().text().await.unwrap(), "ready");
    // The local fallback is spent, so a 200 means the open gateway counts in
    // the restarted (empty) Redis again: 3 a minute, one just used.
    within(&open, &open_key, 200, Duration::from_secs(10)).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat(&open, &open_key, &hello()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    open.stop().await;
    closed.stop().await;
}

/// Polls `gw` with `key` until it answers `status`; how long that took.
async fn within(gw: &TestGateway, key: &str, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    let answered = eventually(limit, || async { chat(gw, key, &hello()).await.status().as_u16() == status }).await;
    assert!(answered, "no {status} within {limit:?}");
    start.elapsed()
}

#[tokio::test]
async fn a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second() {
    let mock = MockUpstream::start().await;
    let config = redis_toml(SHARED_REDIS, "closed");
    let a = TestGateway::start(&mock.url, &config).await;
    let b = TestGateway::replica_of(&a, &mock.url, &config).await;
    // Created on A after B started: B learns of it from the announcement.
    let (key, secret) = a.create_key("replicated").await;
    within(&b, &secret, 200, Duration::from_secs(1)).await;

    let project = a.default_project().await;
    let id = key["id"].as_str().unwrap();
    let (status, _) =
        a.admin(Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{id}"), None).await;
    assert_eq!(status, 200);
    let took = within(&b, &secret, 401, Duration::from_secs(1)).await;
    eprintln!("replica B refused the revoked key after {took:?}");

    // A project created and then archived on A: B serves, then refuses, its key.
    let (status, project) = a.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": "fleet"}))).await;
    assert_eq!(status, 200, "{project}");
    let project = project["id"].as_str().unwrap();
    let (status, key) = a
        .admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys"), Some(json!({"name": "k"})))
        .await;
    assert_eq!(status, 200, "{key}");
    let secret = key["value"].as_str().unwrap();
    within(&b, secret, 200, Duration::from_secs(1)).await;
    let (status, _) = a.admin(Method::POST, &format!("/v1/organization/projects/{project}/archive"), None).await;
    assert_eq!(status, 200);
    within(&b, secret, 401, Duration::from_secs(1)).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_budget_counts_the_spend_of_every_replica() {
    let mock = MockUpstream::start().await;
    let config = redis_toml(SHARED_REDIS, "closed");
    let a = TestGateway::start(&mock.url, &config).await;
    // A chat on the mock costs $0.0000475 (3 input and 4 output tokens of
    // gpt-4o), so $0.00012 allows two and a half.
    let project = a.default_project().await;
    let (status, key) = a
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "budgeted", "monthly_budget_usd": 0.00012})),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["value"].as_str().unwrap().to_owned();
    let b = TestGateway::replica_of(&a, &mock.url, &config).await;
    for _ in 0..2 {
        let response = chat(&a, &key, &hello()).await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    let first = chat(&b, &key, &hello()).await;
    assert_eq!(first.status(), 200, "B has seen none of A's spend yet");
    first.text().await.unwrap();
    // B's settle took the shared total ($0.0001425), past the budget.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = chat(&b, &key, &hello()).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_replicas_until_the_stream_ends() {
    let mock = MockUpstream::start().await;
    let config = redis_toml(SHARED_REDIS, "closed");
    let a = TestGateway::start(&mock.url, &config).await;
    let key = limited_key(&a, json!({"max_concurrent_requests": 1})).await;
    let b = TestGateway::replica_of(&a, &mock.url, &config).await;
    let body = open_endless_stream(&a, &key).await;
    let refused = chat(&b, &key, &hello()).await;
    assert_eq!(refused.status(), 429, "A's stream holds the only slot");
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("on concurrent requests: Limit 1"), "{error}");
    drop(body);
    within(&b, &key, 200, Duration::from_secs(2)).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn in_flight_leases_renew_release_and_expire_when_their_replica_dies() {
    use keygate::limits::{FailurePolicy, Owner, RateBackend, RedisBackend};
    let prefix = prefix();
    let backend = RedisBackend::connect(SHARED_REDIS, &prefix, FailurePolicy::Closed).await.unwrap();
    let owner = Owner::Key(keygate::ids::PublicId::random());
    let set = format!("{prefix}inflight:{}", owner.key());
    let client = redis::Client::open(SHARED_REDIS).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let scores = |mut redis: redis::aio::MultiplexedConnection, set: String| async move {
        let members: Vec<(String, i64)> =
            redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut redis).await.unwrap();
        members
    };

    let lease = backend.acquire_slots(&[(owner.clone(), 1)]).await.unwrap().unwrap();
    assert!(matches!(backend.acquire_slots(&[(owner.clone(), 1)]).await, Some(Err(_))), "the only slot is held");
    let before = scores(redis.clone(), set.clone()).await;
    assert_eq!(before.len(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    backend.renew_leases().await;
    let after = scores(redis.clone(), set.clone()).await;
    assert!(after[0].1 > before[0].1, "renewal pushed the expiry: {before:?} -> {after:?}");

    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !scores(redis.clone(), set.clone()).await.is_empty() {
        assert!(Instant::now() < deadline, "the dropped lease was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A replica that died holding the slot: its lease is past its expiry.
    let _: () = redis::cmd("ZADD").arg(&set).arg(1).arg("dead-replica:0").query_async(&mut redis).await.unwrap();
    let lease = backend.acquire_slots(&[(owner.clone(), 1)]).await.unwrap();
    assert!(lease.is_ok(), "an expired lease does not hold a slot");
}
