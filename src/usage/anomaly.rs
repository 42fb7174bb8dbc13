//! The usage watcher: compares each key's last window of traffic with its own
//! baseline (an EWMA of earlier windows) and raises alerts for a spike, a
//! burst from a client network the key was never used from, and traffic on a
//! key unused for a long time. Alerts are stored, logged, counted, optionally
//! POSTed to a webhook, and may suspend the key. [`announce`] also sends the
//! alerts raised outside the watcher (a leaked key reported).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

use crate::auth::KeyIndex;
use crate::clock::Clock;
use crate::ids::PublicId;
use crate::store::{Alert, NetworkSighting, Store, StoreResult, UsageGroup, UsageQuery};
use crate::time::Timestamp;

#[derive(Debug, Clone)]
pub struct AnomalyPolicy {
    /// Length of one observation window (a multiple of 60 s).
    pub window: Duration,
    /// A window with at least `spike_factor` × the baseline is a spike...
    pub spike_factor: f64,
    /// ...if it also has at least this many requests.
    pub spike_min_requests: i64,
    /// A never-seen client network with at least this many requests in a window.
    pub new_network_min_requests: i64,
    /// Traffic on a key idle for this long.
    pub dormant_after: Duration,
    /// The same alert for the same key is not raised again within this time.
    pub cooldown: Duration,
    /// Suspend a key on a critical alert.
    pub auto_suspend: bool,
    pub webhook: Option<String>,
}

impl Default for AnomalyPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            spike_factor: 10.0,
            spike_min_requests: 20,
            new_network_min_requests: 5,
            dormant_after: Duration::from_secs(30 * 86_400),
            cooldown: Duration::from_secs(3600),
            auto_suspend: false,
            webhook: None,
        }
    }
}

/// Smoothing of the baseline: each window counts for this much.
const ALPHA: f64 = 0.3;

pub struct AnomalyWatcher {
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
    clock: Arc<dyn Clock>,
    policy: AnomalyPolicy,
    http: reqwest::Client,
    baselines: Mutex<HashMap<PublicId, f64>>,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The /24 (IPv4) or /48 (IPv6) a client address belongs to.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

impl AnomalyWatcher {
    pub fn new(store: Arc<dyn Store>, index: Arc<KeyIndex>, clock: Arc<dyn Clock>, policy: AnomalyPolicy) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { store, index, clock, policy, http, baselines: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> &AnomalyPolicy {
        &self.policy
    }

    /// Looks at the window that just ended; returns the alerts it raised.
    pub async fn run_once(&self) -> StoreResult<Vec<Alert>> {
        let window = secs(self.policy.window).max(60);
        let now = self.clock.now();
        let end = now - now.rem_euclid(60);
        let start = end - window;
        let per_key = self
            .store
            .query_usage(&UsageQuery {
                kind: None,
                start,
                end,
                bucket_seconds: window,
                group_by: vec![UsageGroup::ApiKey],
                project_ids: Vec::new(),
                key_ids: Vec::new(),
                models: Vec::new(),
                prefixes: Vec::new(),
            })
            .await?;
        let mut counts: HashMap<PublicId, i64> = HashMap::new();
        for row in per_key {
            if let Some(id) = row.key_id.as_deref().and_then(PublicId::parse) {
                *counts.entry(id).or_default() += row.requests;
            }
        }
        let mut raised = Vec::new();
        for (id, current, baseline) in self.update_baselines(&counts) {
            let spiking = baseline.is_some_and(|b| {
                current >= self.policy.spike_min_requests && current as f64 >= self.policy.spike_factor * b.max(1.0)
            });
            if spiking {
                let baseline = baseline.unwrap_or_default();
                let severity = if current as f64 >= 2.0 * self.policy.spike_factor * baseline.max(1.0) {
                    "critical"
                } else {
                    "warning"
                };
                let message = format!(
                    "{current} requests in {window} s, {:.1}x the key's baseline of {baseline:.1}",
                    current as f64 / baseline.max(1.0)
                );
                let details = json!({"requests": current, "baseline": baseline, "window_seconds": window});
                raised.extend(self.raise(&id, "spike", severity, message, details, now).await?);
            }
        }
        for (id, current) in &counts {
            raised.extend(self.check_dormant(id, *current, start, now).await?);
        }
        raised.extend(self.check_networks(start, end, now).await?);
        Ok(raised)
    }

    /// Returns (key, this window, baseline before it) and folds the window in.
    /// A spike does not raise the baseline it is measured against.
    fn update_baselines(&self, counts: &HashMap<PublicId, i64>) -> Vec<(PublicId, i64, Option<f64>)> {
        let mut baselines = self.baselines.lock();
        let mut keys: Vec<PublicId> = baselines.keys().cloned().collect();
        keys.extend(counts.keys().filter(|k| !baselines.contains_key(*k)).cloned());
        let mut out = Vec::with_capacity(keys.len());
        for id in keys {
            let current = counts.get(&id).copied().unwrap_or(0);
            let before = baselines.get(&id).copied();
            let spiking = before.is_some_and(|b| current as f64 >= self.policy.spike_factor * b.max(1.0));
            let next = match before {
                None => current as f64,
                Some(_) if spiking => before.unwrap_or_default(),
                Some(b) => ALPHA * current as f64 + (1.0 - ALPHA) * b,
            };
            baselines.insert(id, next);
            out.push((id, current, before));
        }
        out
    }

    async fn check_dormant(
        &self,
        id: &PublicId,
        current: i64,
        window_start: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<Alert>> {
        if current == 0 {
            return Ok(Vec::new());
        }
        let idle = secs(self.policy.dormant_after);
        let previous = self.store.last_usage_before(id, window_start).await?;
        let since = match (previous, self.index.by_id(id)) {
            (Some(at), _) => at,
            (None, Some(key)) => key.created_at,
            (None, None) => return Ok(Vec::new()),
        };
        if window_start - since < idle {
            return Ok(Vec::new());
        }
        let days = (window_start - since) / 86_400;
        let message = format!("{current} requests on a key unused for {days} days");
        let details = json!({"requests": current, "idle_since": since});
        self.raise(id, "dormant_key", "warning", message, details, now).await
    }

    async fn check_networks(&self, start: Timestamp, end: Timestamp, now: Timestamp) -> StoreResult<Vec<Alert>> {
        let mut sightings: HashMap<(PublicId, String), i64> = HashMap::new();
        for (key_id, ip, requests) in self.store.usage_clients(start, end).await? {
            if let (Some(id), Ok(ip)) = (PublicId::parse(&key_id), ip.parse::<IpAddr>()) {
                *sightings.entry((id, network_of(ip))).or_default() += requests;
            }
        }
        let batch: Vec<NetworkSighting> = sightings
            .into_iter()
            .map(|((key_id, network), requests)| NetworkSighting { key_id, network, at: end, requests })
            .collect();
        let mut raised = Vec::new();
        for fresh in self.store.record_networks(&batch).await? {
            if fresh.requests >= self.policy.new_network_min_requests {
                let message = format!(
                    "{} requests from {}, a network this key was never used from",
                    fresh.requests, fresh.network
                );
                let details = json!({"network": fresh.network, "requests": fresh.requests});
                raised.extend(self.raise(&fresh.key_id, "new_ip_range", "warning", message, details, now).await?);
            }
        }
        Ok(raised)
    }

    async fn raise(
        &self,
        id: &PublicId,
        kind: &str,
        severity: &str,
        message: String,
        details: serde_json::Value,
        now: Timestamp,
    ) -> StoreResult<Vec<Alert>> {
        if let Some(last) = self.store.last_alert(id, kind).await? {
            if now - last.at < secs(self.policy.cooldown) {
                return Ok(Vec::new());
            }
        }
        let key = self.index.by_id(id);
        let alert = Alert {
            id: format!("alert_{}", &crate::ids::RequestId::new().as_str()[4..28]),
            at: now,
            key_id: *id,
            project_id: key.as_ref().and_then(|k| k.project_id().map(str::to_owned)),
            kind: kind.to_owned(),
            severity: severity.to_owned(),
            message,
            details,
        };
        self.store.insert_alert(&alert).await?;
        announce(&alert, key.as_deref().map(|k| &*k.name), self.webhook()).await;
        if self.policy.auto_suspend && severity == "critical" {
            if let Some(suspended) = self.store.set_key_active(id, false).await? {
                self.index.upsert([suspended]);
                tracing::warn!(key = %id, "key suspended after a critical usage alert");
            }
        }
        Ok(vec![alert])
    }
}

impl AnomalyWatcher {
    /// Where alerts are POSTed (`anomaly.webhook_url`), with the client to use.
    pub fn webhook(&self) -> Option<Webhook<'_>> {
        self.policy.webhook.as_deref().map(|url| Webhook { http: &self.http, url })
    }
}

/// An alert webhook: its URL and the client (with its timeout) that calls it.
#[derive(Clone, Copy)]
pub struct Webhook<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a str,
}

/// Counts and logs a stored alert and POSTs it to the webhook, if any: the
/// watcher's own alerts and those raised elsewhere (a leaked key) alike. A
/// failed webhook call is logged; the alert stays listed either way.
pub async fn announce(alert: &Alert, key_name: Option<&str>, webhook: Option<Webhook<'_>>) {
    metrics::counter!("keygate_alerts_total", "kind" => alert.kind.clone(), "severity" => alert.severity.clone())
        .increment(1);
    tracing::warn!(key = %alert.key_id, kind = %alert.kind, severity = %alert.severity, message = %alert.message, "alert raised");
    if let Some(Webhook { http, url }) = webhook {
        let body = json!({"type": "keygate.alert", "alert": alert_json(alert, key_name)});
        if let Err(error) = http.post(url).json(&body).send().await.and_then(|r| r.error_for_status()) {
            tracing::warn!(%error, "alert webhook failed");
        }
    }
}

/// An alert as the API and the webhook show it.
pub fn alert_json(alert: &Alert, key_name: Option<&str>) -> serde_json::Value {
    json!({
        "object": "keygate.alert",
        "id": alert.id,
        "created_at": alert.at,
        "api_key_id": alert.key_id.api_id(),
        "api_key_name": key_name,
        "project_id": alert.project_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "details": alert.details,
    })
}
