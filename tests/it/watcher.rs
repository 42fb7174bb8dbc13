//! The usage watcher, driven by an injected clock (no sleeping through
//! windows): spikes against durable baselines, new keys, new networks, dormant
//! keys, restarts and crashes mid-attack, two replicas, webhook deliveries
//! that are signed and retried, auto-suspend in the audit log and `explain`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::Mac;
use keygate::clock::{Clock, ManualClock};
use keygate::ids::PublicId;
use keygate::store::{Tokens, UsageKind, UsageRecord};
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

/// The default window; a window is examined once it is a minute old.
const W: i64 = 300;
const SETTLE: i64 = keygate::usage::SETTLE_SECONDS;

fn t0() -> i64 {
    1_900_000_000 - 1_900_000_000 % W
}

/// A gateway on its own database whose time is `clock`'s.
async fn gateway(clock: &Arc<ManualClock>, extra_toml: &str) -> (TestGateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start_with_clock(tempfile::tempdir().unwrap(), &mock.url, extra_toml, clock.clone()).await;
    (gw, mock)
}

/// `n` requests of `key` from `ip`, spread over the window starting at `start`.
async fn traffic(gw: &TestGateway, key: &PublicId, ip: &str, start: i64, n: usize) {
    let batch: Vec<UsageRecord> = (0..n)
        .map(|i| UsageRecord {
            request_id: keygate::ids::RequestId::new().as_str().to_owned(),
            at: start + (i as i64 * 7) % (W - 10),
            key_id: *key,
            prefix: "sk-proj-".into(),
            project_id: "proj_a".into(),
            owner_id: None,
            model: Some("gpt-4o".into()),
            route: "/v1/chat/completions".into(),
            kind: UsageKind::Completions,
            status: 200,
            tokens: Tokens { input: 1, output: 1, cached: 0, reasoning: 0 },
            estimated: false,
            cost_nanos: 10,
            latency_ms: 5,
            upstream: "default".into(),
            client_ip: Some(ip.into()),
        })
        .collect();
    gw.gateway_state.store.insert_usage(&batch).await.unwrap();
}

/// Moves time to a minute past the end of the window starting at `start`
/// and lets the watcher look.
async fn examine_through(gw: &TestGateway, clock: &ManualClock, start: i64) {
    let target = start + W + SETTLE;
    let now = clock.now();
    if target > now {
        clock.advance(target - now);
    }
    watcher(gw).tick().await.unwrap();
}

fn watcher(gw: &TestGateway) -> Arc<keygate::usage::AnomalyWatcher> {
    gw.gateway_state.anomaly.clone().expect("the watcher is on by default")
}

/// Every stored alert, oldest first (whichever tick raised it: the test's or
/// the gateway's own).
async fn alerts(gw: &TestGateway) -> Vec<Value> {
    let (status, list) = gw.admin(Method::GET, "/v1/organization/alerts?limit=100", None).await;
    assert_eq!(status, 200, "{list}");
    let mut all = list["data"].as_array().unwrap().clone();
    all.reverse();
    all
}

fn of_kind<'a>(alerts: &'a [Value], kind: &str, key: &PublicId) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["kind"] == kind && a["api_key_id"] == key.api_id()).collect()
}

#[tokio::test]
async fn a_spike_against_the_keys_own_history_raises_one_alert_and_a_steady_key_none() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "").await;
    let (spiky, steady) = (PublicId::random(), PublicId::random());
    for window in 0..8 {
        let start = t0() + window * W;
        traffic(&gw, &spiky, "192.0.2.1", start, if window == 6 { 200 } else { 10 }).await;
        traffic(&gw, &steady, "192.0.2.2", start, 10).await;
        examine_through(&gw, &clock, start).await;
    }
    let all = alerts(&gw).await;
    let spikes = of_kind(&all, "spike", &spiky);
    assert_eq!(spikes.len(), 1, "{all:?}");
    assert_eq!(spikes[0]["severity"], "critical");
    assert_eq!(spikes[0]["details"]["baseline_from"], "key");
    assert_eq!(spikes[0]["details"]["baseline"], 10.0, "two decimals at most: {}", spikes[0]);
    assert_eq!(spikes[0]["details"]["window_start"], t0() + 6 * W);
    assert!(all.iter().all(|a| a["api_key_id"] != steady.api_id()), "{all:?}");
}

#[tokio::test]
async fn a_new_key_bursting_in_its_first_window_is_judged_by_its_peers_and_the_ceiling() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "").await;
    let peers = [PublicId::random(), PublicId::random(), PublicId::random()];
    for window in 0..3 {
        for peer in &peers {
            traffic(&gw, peer, "192.0.2.1", t0() + window * W, 8).await;
        }
        examine_through(&gw, &clock, t0() + window * W).await;
    }
    let (quiet, burst) = (PublicId::random(), PublicId::random());
    traffic(&gw, &quiet, "192.0.2.3", t0() + 3 * W, 30).await;
    traffic(&gw, &burst, "192.0.2.4", t0() + 3 * W, 150).await;
    examine_through(&gw, &clock, t0() + 3 * W).await;
    let all = alerts(&gw).await;
    assert!(of_kind(&all, "spike", &quiet).is_empty(), "30 is under 10x the typical 8: {all:?}");
    let spike = of_kind(&all, "spike", &burst);
    assert_eq!(spike.len(), 1, "{all:?}");
    assert_eq!(spike[0]["details"]["baseline_from"], "organization");
    assert_eq!(spike[0]["details"]["baseline"], 8.0);

    // With no peers at all, only the ceiling (120 a minute: 600 a window) counts.
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "").await;
    let (under, over) = (PublicId::random(), PublicId::random());
    traffic(&gw, &under, "192.0.2.5", t0(), 600).await;
    traffic(&gw, &over, "192.0.2.6", t0(), 650).await;
    examine_through(&gw, &clock, t0()).await;
    let all = alerts(&gw).await;
    assert!(of_kind(&all, "spike", &under).is_empty(), "{all:?}");
    assert_eq!(of_kind(&all, "spike", &over)[0]["details"]["baseline_from"], "ceiling", "{all:?}");
}

#[tokio::test]
async fn a_new_network_is_alerted_once_its_requests_reach_the_minimum_across_windows() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "").await;
    let key = PublicId::random();
    for window in 0..2 {
        traffic(&gw, &key, "192.0.2.10", t0() + window * W, 5).await;
        examine_through(&gw, &clock, t0() + window * W).await;
    }
    assert!(alerts(&gw).await.is_empty(), "the key's first network is its baseline");
    // 3 requests from a new /24: below the minimum of 5.
    traffic(&gw, &key, "192.0.2.10", t0() + 2 * W, 5).await;
    traffic(&gw, &key, "203.0.113.9", t0() + 2 * W, 3).await;
    examine_through(&gw, &clock, t0() + 2 * W).await;
    assert!(of_kind(&alerts(&gw).await, "new_ip_range", &key).is_empty());
    // 50 more from the same address a minute later: now it is.
    traffic(&gw, &key, "203.0.113.9", t0() + 3 * W, 50).await;
    examine_through(&gw, &clock, t0() + 3 * W).await;
    let all = alerts(&gw).await;
    let new = of_kind(&all, "new_ip_range", &key);
    assert_eq!(new.len(), 1, "{all:?}");
    assert_eq!(new[0]["details"]["network"], "203.0.113.0/24");
    assert_eq!(new[0]["details"]["requests"], 53);
    // Seen and alerted: more from it raises nothing again.
    traffic(&gw, &key, "203.0.113.9", t0() + 4 * W, 50).await;
    examine_through(&gw, &clock, t0() + 4 * W).await;
    assert_eq!(of_kind(&alerts(&gw).await, "new_ip_range", &key).len(), 1);
}

#[tokio::test]
async fn traffic_on_a_key_idle_for_longer_than_dormant_days_is_alerted() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "[anomaly]\ndormant_days = 30\n").await;
    let key = PublicId::random();
    traffic(&gw, &key, "192.0.2.20", t0(), 3).await;
    examine_through(&gw, &clock, t0()).await;
    // Forty days later (the watcher skips the long gap, logged).
    let later = t0() + 40 * 86_400;
    traffic(&gw, &key, "192.0.2.20", later, 3).await;
    examine_through(&gw, &clock, later).await;
    let all = alerts(&gw).await;
    let dormant = of_kind(&all, "dormant_key", &key);
    assert_eq!(dormant.len(), 1, "{all:?}");
    assert_eq!(dormant[0]["details"]["idle_since"], t0(), "the minute it was last used");
}

/// History for `key`: `per_window` requests in each of `windows` windows,
/// examined as they come.
async fn history(gw: &TestGateway, clock: &ManualClock, key: &PublicId, windows: i64, per_window: usize) {
    for window in 0..windows {
        traffic(gw, key, "192.0.2.30", t0() + window * W, per_window).await;
        examine_through(gw, clock, t0() + window * W).await;
    }
}

#[tokio::test]
async fn a_restart_mid_attack_still_alerts_against_the_stored_baseline() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, mock) = gateway(&clock, "").await;
    let key = PublicId::random();
    history(&gw, &clock, &key, 6, 5).await;
    // The attack starts in window 6 and goes on through a clean restart
    // (which gives the lease up) during window 7.
    traffic(&gw, &key, "192.0.2.30", t0() + 6 * W, 750).await;
    traffic(&gw, &key, "192.0.2.30", t0() + 7 * W, 750).await;
    let db = gw.stop().await;
    clock.advance(W);
    let gw = TestGateway::start_with_clock(db, &mock.url, "", clock.clone()).await;
    examine_through(&gw, &clock, t0() + 7 * W).await;
    let all = alerts(&gw).await;
    let spikes = of_kind(&all, "spike", &key);
    assert_eq!(spikes.len(), 1, "one alert, then the cooldown: {all:?}");
    assert_eq!(spikes[0]["details"]["baseline_from"], "key", "the baseline came from the stored history");
    assert_eq!(spikes[0]["details"]["baseline"], 5.0);
    assert_eq!(spikes[0]["details"]["window_start"], t0() + 6 * W, "the window examined after the restart");
}

#[tokio::test]
async fn after_a_crash_the_lease_is_taken_over_and_the_missed_windows_examined() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, mock) = gateway(&clock, "").await;
    let key = PublicId::random();
    history(&gw, &clock, &key, 6, 5).await;
    traffic(&gw, &key, "192.0.2.30", t0() + 6 * W, 750).await;
    let db = gw.stop().await;
    // What `kill -9` leaves once the attack's window has settled: the lease
    // held by a process that will never renew it nor give it up.
    clock.advance(t0() + 7 * W + SETTLE - clock.now());
    let store = keygate::store::SqlStore::open(&database_url(db.path()).await).await.unwrap();
    use keygate::store::JobStore as _;
    let died = clock.now();
    assert!(store
        .hold_lease(keygate::usage::JOB, "killed-replica", died, keygate::usage::LEASE_SECONDS)
        .await
        .unwrap());
    drop(store);

    let gw = TestGateway::start_with_clock(db, &mock.url, "", clock.clone()).await;
    watcher(&gw).tick().await.unwrap();
    assert!(of_kind(&alerts(&gw).await, "spike", &key).is_empty(), "the dead replica's lease has not expired yet");
    clock.advance(keygate::usage::LEASE_SECONDS);
    watcher(&gw).tick().await.unwrap();
    let all = alerts(&gw).await;
    let spikes = of_kind(&all, "spike", &key);
    assert_eq!(spikes.len(), 1, "{all:?}");
    assert_eq!(
        spikes[0]["created_at"],
        died + keygate::usage::LEASE_SECONDS,
        "at the first tick after the lease ran out"
    );
    assert_eq!(spikes[0]["details"]["baseline"], 5.0);
}

#[tokio::test]
async fn two_replicas_never_both_alert_one_event_and_never_both_miss_it() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, mock) = gateway(&clock, "").await;
    let b = TestGateway::replica_with_clock(&a, &mock.url, "", clock.clone()).await;
    let keys: Vec<PublicId> = (0..4).map(|_| PublicId::random()).collect();
    for window in 0..12 {
        let start = t0() + window * W;
        for (i, key) in keys.iter().enumerate() {
            // Key i is attacked in window 6 + i, from a new network too.
            let attacked = window == 6 + i as i64;
            traffic(&a, key, "192.0.2.40", start, if attacked { 400 } else { 4 }).await;
            if attacked {
                traffic(&a, key, "198.51.100.7", start, 10).await;
            }
        }
        // A window is longer than the lease: whichever replica asks first
        // holds it for the next window, so the watch moves between them.
        clock.advance(start + W + SETTLE - clock.now());
        let (wa, wb) = (watcher(&a), watcher(&b));
        let (ra, rb) = tokio::join!(wa.tick(), wb.tick());
        ra.unwrap();
        rb.unwrap();
    }
    let all = alerts(&a).await;
    for key in &keys {
        assert_eq!(of_kind(&all, "spike", key).len(), 1, "{key}: {all:?}");
        assert_eq!(of_kind(&all, "new_ip_range", key).len(), 1, "{key}: {all:?}");
    }
    assert_eq!(all.len(), 8, "{all:?}");
    b.stop().await;
}

/// A webhook receiver on loopback: answers the first `failures` deliveries
/// with 500, then 200; keeps every delivery's headers and body.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<(http::HeaderMap, String)>>>,
}

impl Receiver {
    async fn start(failures: usize) -> Self {
        let seen: Arc<Mutex<Vec<(http::HeaderMap, String)>>> = Arc::default();
        let state = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let mut seen = state.lock();
                    seen.push((headers, body));
                    if seen.len() <= failures {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    async fn wait_for(&self, n: usize) {
        let seen = self.seen.clone();
        assert!(
            eventually(Duration::from_secs(10), || {
                let seen = seen.clone();
                async move { seen.lock().len() >= n }
            })
            .await,
            "{} deliveries, not {n}",
            self.seen.lock().len()
        );
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwQmFzZTY0";

/// Checks a delivery the Standard Webhooks way, independently of keygate.
fn signed_correctly(headers: &http::HeaderMap, body: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{body}", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header("webhook-signature").split(' ').any(|s| s == format!("v1,{expected}"))
}

/// A leaked-key report raises an alert at once: the quickest way to one.
async fn leak(gw: &TestGateway) -> Value {
    let (key, secret) = gw.create_key("leaky").await;
    let (status, _, body) = report_leaked(&gw.url, &json!({"keys": [secret]})).await;
    assert_eq!(status, 202, "{body}");
    key
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_alert_once_more_with_a_valid_signature() {
    let receiver = Receiver::start(2).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) =
        gateway(&clock, &format!("[anomaly]\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\n", receiver.url))
            .await;
    let key = leak(&gw).await;
    receiver.wait_for(1).await;
    // Retries after 5 s, then 30 s more.
    clock.advance(5);
    gw.gateway_state.alerts.deliver_due().await.unwrap();
    receiver.wait_for(2).await;
    clock.advance(30);
    gw.gateway_state.alerts.deliver_due().await.unwrap();
    receiver.wait_for(3).await;
    clock.advance(3600);
    gw.gateway_state.alerts.deliver_due().await.unwrap();

    let seen = receiver.seen.lock().clone();
    assert_eq!(seen.len(), 3, "delivered once, after two failures: {seen:?}");
    let id = seen[0].0["webhook-id"].clone();
    for (headers, body) in &seen {
        assert_eq!(headers["webhook-id"], id, "the same delivery id on every attempt");
        assert!(signed_correctly(headers, body), "{headers:?}");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["type"], "keygate.alert");
        assert_eq!(event["alert"]["kind"], "leaked_key");
        assert_eq!(event["alert"]["api_key_id"], key["id"]);
    }
    let forged = {
        let mut headers = seen[0].0.clone();
        headers.insert("webhook-timestamp", "1".parse().unwrap());
        headers
    };
    assert!(!signed_correctly(&forged, &seen[0].1), "the timestamp is signed");

    let all = alerts(&gw).await;
    let delivery = &all[0]["delivery"];
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["id"], id.to_str().unwrap());
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_given_up_on_after_the_last_retry() {
    let receiver = Receiver::start(usize::MAX).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) =
        gateway(&clock, &format!("[anomaly]\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\n", receiver.url))
            .await;
    leak(&gw).await;
    receiver.wait_for(1).await;
    for (attempt, delay) in [5, 30, 120, 600, 1800, 3600].into_iter().enumerate() {
        clock.advance(delay);
        gw.gateway_state.alerts.deliver_due().await.unwrap();
        receiver.wait_for(attempt + 2).await;
    }
    clock.advance(86_400);
    gw.gateway_state.alerts.deliver_due().await.unwrap();
    assert_eq!(receiver.seen.lock().len(), 7);
    let delivery = alerts(&gw).await[0]["delivery"].clone();
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert_eq!(delivery["attempts"], 7);
    assert_eq!(delivery["last_error"], "HTTP 500");
}

#[tokio::test]
async fn auto_suspend_is_audited_under_the_alert_and_explain_names_it() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "[anomaly]\nauto_suspend = true\n").await;
    let (key, secret) = gw.create_key("MyApp-Prod-v2").await;
    let id = PublicId::parse(key["id"].as_str().unwrap()).unwrap();
    history(&gw, &clock, &id, 4, 5).await;
    traffic(&gw, &id, "192.0.2.30", t0() + 4 * W, 500).await;
    examine_through(&gw, &clock, t0() + 4 * W).await;
    let all = alerts(&gw).await;
    let spike = of_kind(&all, "spike", &id)[0].clone();
    assert_eq!(spike["severity"], "critical");

    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let request_id = refused.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, why) = gw.admin(Method::GET, &format!("/v1/organization/requests/{request_id}"), None).await;
    assert_eq!(status, 200, "{why}");
    assert_eq!(why["reason"], "suspended");
    let explanation = why["explanation"].as_str().unwrap();
    assert!(explanation.contains(spike["id"].as_str().unwrap()), "{explanation}");
    assert!(explanation.contains("is suspended (since "), "{explanation}");
    assert!(explanation.contains("suspended automatically by alert"), "{explanation}");

    let (_, audit) = gw
        .admin(
            Method::GET,
            &format!("/v1/organization/audit_logs?resource_ids[]={}", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    let suspension = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "api_key.updated")
        .unwrap_or_else(|| panic!("{audit}"))
        .clone();
    assert_eq!(suspension["api_key.updated"]["changes_requested"]["state"], "suspended", "{suspension}");
    assert_eq!(suspension["api_key.updated"]["alert"]["id"], spike["id"], "{suspension}");
}

#[tokio::test]
async fn a_watcher_that_died_between_alert_and_suspension_leaves_the_suspension_to_the_next() {
    let clock = Arc::new(ManualClock::new(t0()));
    let (gw, _mock) = gateway(&clock, "[anomaly]\nauto_suspend = true\n").await;
    let (key, secret) = gw.create_key("half-handled").await;
    let id = PublicId::parse(key["id"].as_str().unwrap()).unwrap();
    history(&gw, &clock, &id, 4, 5).await;
    traffic(&gw, &id, "192.0.2.30", t0() + 4 * W, 500).await;
    // What the dead watcher got to: the alert, stored under the event's id.
    let end = t0() + 5 * W;
    let stored = keygate::store::Alert {
        id: keygate::usage::alert_id(&format!("spike/{id}/{end}")),
        at: end + SETTLE,
        key_id: id,
        project_id: None,
        kind: "spike".into(),
        severity: "critical".into(),
        message: "500 requests".into(),
        details: json!({}),
        delivery: None,
        acknowledged: None,
    };
    assert!(gw.gateway_state.store.insert_alert(&stored).await.unwrap());
    examine_through(&gw, &clock, t0() + 4 * W).await;
    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(refused.status(), 401, "the key was suspended by the watcher that came next");
    assert_eq!(of_kind(&alerts(&gw).await, "spike", &id).len(), 1, "and the alert was not raised twice");
}
