//! The usage watcher: examines every window of traffic once, in order, and
//! raises alerts for a spike (against the key's own history, or its peers'
//! for a key with none), for requests from a client network new to the key,
//! and for traffic on a key unused for a long time.
//!
//! One replica watches at a time (a lease in the store, renewed every tick,
//! released on a clean shutdown and taken over within [`LEASE_SECONDS`] of a
//! crash). Where it stopped is stored too: a watcher that returns, or another
//! replica elected in its place, goes on from the first window not examined
//! and catches up on the ones missed, so a restart leaves no blind spot. The
//! same event always gets the same alert id, so a window examined twice
//! raises nothing twice.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::watch;

use super::alerts::{alert_id, Alerts};
use super::baseline::{judge, History, Reference, SpikeRule};
use crate::auth::KeyIndex;
use crate::clock::Clock;
use crate::ids::PublicId;
use crate::jobs::Recorder;
use crate::store::{Alert, AuditEvent, KeyState, NetworkSighting, Store, StoreResult, UsageGroup, UsageQuery};
use crate::time::Timestamp;

/// The lease and position of the watcher in the store.
pub const JOB: &str = "usage anomalies";
/// How often the watcher checks for a window to examine (and renews its lease).
pub const TICK: Duration = Duration::from_secs(15);
/// A lease not renewed for this long is taken over (a replica killed).
pub const LEASE_SECONDS: i64 = 45;
/// A window is examined this long after it ends, once requests still being
/// answered and other replicas' recorders have written their records.
pub const SETTLE_SECONDS: i64 = 60;
/// (key, network) pairs counted per write transaction.
const NETWORKS_PER_WRITE: usize = 250;
/// After downtime longer than this the older windows are skipped (logged):
/// catching up on days of traffic would hold the watcher for too long.
const MAX_CATCH_UP_SECONDS: i64 = 86_400;

#[derive(Debug, Clone)]
pub struct AnomalyPolicy {
    /// Length of one observation window (a multiple of 60 s).
    pub window: Duration,
    /// A window with at least `spike_factor` × the baseline is a spike...
    pub spike_factor: f64,
    /// ...if it also has at least this many requests.
    pub spike_min_requests: i64,
    /// Requests from a network new to the key that raise an alert.
    pub new_network_min_requests: i64,
    /// Traffic on a key idle for this long.
    pub dormant_after: Duration,
    /// The same alert for the same key is not raised again within this time.
    pub cooldown: Duration,
    /// Suspend a key on a critical alert.
    pub auto_suspend: bool,
    /// How much history a baseline is made of; a network first seen within
    /// it is still new.
    pub baseline_period: Duration,
    /// A key with no history may make this many requests a minute (over a
    /// window) before it is a spike whatever its peers do.
    pub new_key_max_rpm: i64,
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
            baseline_period: Duration::from_secs(7 * 86_400),
            new_key_max_rpm: 120,
        }
    }
}

impl AnomalyPolicy {
    fn width(&self) -> i64 {
        secs(self.window).max(60)
    }

    fn rule(&self) -> SpikeRule {
        SpikeRule {
            factor: self.spike_factor,
            min_requests: self.spike_min_requests,
            new_key_ceiling: self.new_key_max_rpm.saturating_mul(self.width() / 60),
        }
    }
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

pub struct AnomalyWatcher {
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
    clock: Arc<dyn Clock>,
    policy: AnomalyPolicy,
    alerts: Arc<Alerts>,
    recorder: Recorder,
    /// This watcher's name on the lease.
    holder: String,
    /// Also makes ticks take turns.
    history: tokio::sync::Mutex<History>,
}

/// One examined window.
#[derive(Clone, Copy)]
struct Window {
    start: Timestamp,
    end: Timestamp,
    /// When the alerts it raises are raised.
    now: Timestamp,
}

impl AnomalyWatcher {
    pub fn new(
        store: Arc<dyn Store>,
        index: Arc<KeyIndex>,
        clock: Arc<dyn Clock>,
        policy: AnomalyPolicy,
        alerts: Arc<Alerts>,
        recorder: Recorder,
    ) -> Self {
        let history = History::new(policy.width(), secs(policy.baseline_period));
        Self {
            store,
            index,
            clock,
            policy,
            alerts,
            recorder,
            holder: format!("{:016x}", rand::random::<u64>()),
            history: tokio::sync::Mutex::new(history),
        }
    }

    pub fn policy(&self) -> &AnomalyPolicy {
        &self.policy
    }

    /// Takes or keeps the lease, then examines every window that has ended
    /// and settled since the last one examined (by this replica or another).
    /// Returns the alerts raised; none while another replica watches.
    pub async fn tick(&self) -> StoreResult<Vec<Alert>> {
        let mut history = self.history.lock().await;
        let now = self.clock.now();
        if !self.store.hold_lease(JOB, &self.holder, now, LEASE_SECONDS).await? {
            return Ok(Vec::new());
        }
        let width = self.policy.width();
        let ready = now - now.rem_euclid(60) - SETTLE_SECONDS;
        let mut position = match self.store.job_position(JOB).await? {
            Some(position) => position,
            None => ready - ready.rem_euclid(width) - width,
        };
        if ready - position > MAX_CATCH_UP_SECONDS {
            let skip = (ready - position - MAX_CATCH_UP_SECONDS) / width * width + width;
            tracing::warn!(seconds = skip, "usage watcher was away too long: skipping the oldest windows");
            metrics::counter!("keygate_anomaly_skipped_seconds_total").increment(u64::try_from(skip).unwrap_or(0));
            position += skip;
        }
        if position + width > ready {
            return Ok(Vec::new());
        }
        self.recorder.flush().await;
        let mut raised = Vec::new();
        while position + width <= ready {
            if !history.in_step(position) {
                self.rebuild(&mut history, position).await?;
            }
            let window = Window { start: position, end: position + width, now };
            raised.extend(self.examine(&mut history, window).await?);
            // Only the lease holder moves on; one that lost it stops here and
            // its successor examines the rest.
            if !self.store.advance_job(JOB, &self.holder, window.end).await?
                || !self.store.hold_lease(JOB, &self.holder, self.clock.now(), LEASE_SECONDS).await?
            {
                break;
            }
            position = window.end;
        }
        Ok(raised)
    }

    /// Gives the lease up (a clean shutdown), so another replica, or this one
    /// restarted, takes over at its next tick.
    pub async fn release(&self) {
        if let Err(error) = self.store.release_lease(JOB, &self.holder).await {
            tracing::warn!(%error, "could not release the usage watcher's lease; it expires by itself");
        }
    }

    /// The watcher's task: a tick every [`TICK`] until shutdown, then the
    /// lease released.
    pub fn task(self: Arc<Self>) -> impl FnOnce(watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        move |mut shutdown| {
            Box::pin(async move {
                let mut every = tokio::time::interval(TICK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = shutdown.changed() => break,
                    }
                    // Outside the select: shutdown waits for a tick to finish
                    // rather than cutting it between an alert and its suspension.
                    if let Err(error) = self.tick().await {
                        tracing::warn!(%error, "usage anomaly check failed; it is retried at the next tick");
                    }
                }
                self.release().await;
            })
        }
    }

    /// Reads the baseline period that ends at `until` from the usage rollups.
    async fn rebuild(&self, history: &mut History, until: Timestamp) -> StoreResult<()> {
        let rows = self.requests_per_key(until - history.span(), until).await?;
        history.rebuild(rows, until);
        Ok(())
    }

    /// (key, window start, requests) in `[start, end)`, failed calls included:
    /// a leaked key probing the upstream is traffic all the same.
    async fn requests_per_key(&self, start: Timestamp, end: Timestamp) -> StoreResult<Vec<(PublicId, Timestamp, i64)>> {
        let rows = self
            .store
            .query_usage(&UsageQuery {
                kind: None,
                start,
                end,
                bucket_seconds: self.policy.width(),
                group_by: vec![UsageGroup::ApiKey],
                project_ids: Vec::new(),
                key_ids: Vec::new(),
                models: Vec::new(),
                prefixes: Vec::new(),
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let id = row.key_id.as_deref().and_then(PublicId::parse)?;
                Some((id, row.bucket_start, row.requests + row.failed_requests))
            })
            .collect())
    }

    async fn examine(&self, history: &mut History, w: Window) -> StoreResult<Vec<Alert>> {
        let mut counts: HashMap<PublicId, i64> = HashMap::new();
        for (id, _, requests) in self.requests_per_key(w.start, w.end).await? {
            *counts.entry(id).or_default() += requests;
        }
        if counts.is_empty() {
            history.push(w.start, &counts);
            return Ok(Vec::new());
        }
        let mut keys: Vec<(PublicId, i64)> = counts.iter().map(|(k, n)| (*k, *n)).collect();
        keys.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut raised = Vec::new();
        let mut peers: HashMap<Option<String>, Reference> = HashMap::new();
        for (id, requests) in keys {
            let own = history.baseline(&id);
            let reference = match own {
                Some(baseline) => Reference::Key(baseline),
                None => {
                    let project = self.index.by_id(&id).and_then(|k| k.project_id().map(str::to_owned));
                    *peers.entry(project).or_insert_with_key(|project| self.peers(history, project.as_deref()))
                }
            };
            if let Some(spike) = judge(requests, w.end - w.start, reference, self.policy.rule()) {
                let mut details = spike.details;
                details["window_start"] = json!(w.start);
                details["window_end"] = json!(w.end);
                let event = format!("spike/{id}/{}", w.end);
                raised.extend(self.raise(&id, "spike", spike.severity, spike.message, details, w, &event).await?);
            }
            let last_active = match own {
                Some(baseline) => Some(baseline.last_active),
                None => self.store.last_usage_before(&id, w.start).await?,
            };
            raised.extend(self.check_dormant(&id, requests, last_active, w).await?);
        }
        raised.extend(self.check_networks(history, w).await?);
        history.push(w.start, &counts);
        Ok(raised)
    }

    /// The typical key of `project`, else of the organization (worked out
    /// once per window and project: it reads every key's history).
    fn peers(&self, history: &History, project: Option<&str>) -> Reference {
        let project_of = |k: &PublicId| self.index.by_id(k).and_then(|k| k.project_id().map(str::to_owned));
        if let Some(project) = project {
            if let Some(typical) = history.typical(|k| project_of(k).as_deref() == Some(project)) {
                return Reference::Peers { typical: Some(typical), from_project: true };
            }
        }
        Reference::Peers { typical: history.typical(|_| true), from_project: false }
    }

    async fn check_dormant(
        &self,
        id: &PublicId,
        requests: i64,
        last_active: Option<Timestamp>,
        w: Window,
    ) -> StoreResult<Vec<Alert>> {
        let since = match (last_active, self.index.by_id(id)) {
            (Some(at), _) => at,
            (None, Some(key)) => key.created_at,
            (None, None) => return Ok(Vec::new()),
        };
        if w.start - since < secs(self.policy.dormant_after) {
            return Ok(Vec::new());
        }
        let days = (w.start - since) / 86_400;
        let message = format!("{requests} requests on a key unused for {days} days");
        let details = json!({"requests": requests, "idle_since": since, "window_start": w.start, "window_end": w.end});
        let event = format!("dormant_key/{id}/{}", w.end);
        self.raise(id, "dormant_key", "warning", message, details, w, &event).await.map(Vec::from_iter)
    }

    /// Counts each (key, network) pair's requests in the window; a network the
    /// key was not used from before its baseline period is new until it has
    /// been alerted, however few requests each window brings.
    async fn check_networks(&self, history: &History, w: Window) -> StoreResult<Vec<Alert>> {
        let mut sightings: HashMap<(PublicId, String), i64> = HashMap::new();
        for (key_id, ip, requests) in self.store.usage_clients(w.start, w.end).await? {
            if let (Some(id), Ok(ip)) = (PublicId::parse(&key_id), ip.parse::<IpAddr>()) {
                *sightings.entry((id, network_of(ip))).or_default() += requests;
            }
        }
        let mut batch: Vec<NetworkSighting> = sightings
            .into_iter()
            .map(|((key_id, network), requests)| NetworkSighting { key_id, network, window_end: w.end, requests })
            .collect();
        batch.sort_by(|a, b| (a.key_id.as_str(), &a.network).cmp(&(b.key_id.as_str(), &b.network)));
        let mut known = Vec::with_capacity(batch.len());
        // A few hundred pairs a transaction: a key seen from thousands of
        // networks must not hold SQLite's write lock from the recorder.
        for chunk in batch.chunks(NETWORKS_PER_WRITE) {
            known.extend(self.store.count_networks(chunk).await?);
        }
        let mut raised = Vec::new();
        for n in known {
            let new = n.key_had_others && n.alerted_at.is_none() && n.first_seen > w.end - history.span();
            if !new || n.requests < self.policy.new_network_min_requests {
                continue;
            }
            let message = format!(
                "{} requests from {} since it was first seen, a network this key was not used from before",
                n.requests, n.network
            );
            let details = json!({"network": n.network, "requests": n.requests, "first_seen": n.first_seen,
                "window_start": w.start, "window_end": w.end});
            let event = format!("new_ip_range/{}/{}", n.key_id, n.network);
            if let Some(alert) = self.raise(&n.key_id, "new_ip_range", "warning", message, details, w, &event).await? {
                self.store.mark_network_alerted(&n.key_id, &n.network, w.now).await?;
                raised.push(alert);
            }
        }
        Ok(raised)
    }

    #[allow(clippy::too_many_arguments)]
    async fn raise(
        &self,
        id: &PublicId,
        kind: &str,
        severity: &str,
        message: String,
        details: serde_json::Value,
        w: Window,
        event: &str,
    ) -> StoreResult<Option<Alert>> {
        let event_id = alert_id(event);
        if let Some(last) = self.store.last_alert(id, kind).await? {
            // The same event again (a window examined twice) goes on: its
            // suspension may be what the first examination never reached.
            if last.id != event_id && w.now - last.at < secs(self.policy.cooldown) {
                return Ok(None);
            }
        }
        let key = self.index.by_id(id);
        let alert = Alert {
            id: event_id,
            at: w.now,
            key_id: *id,
            project_id: key.as_ref().and_then(|k| k.project_id().map(str::to_owned)),
            kind: kind.to_owned(),
            severity: severity.to_owned(),
            message,
            details,
            delivery: None,
            acknowledged: None,
        };
        let raised = self.alerts.raise(alert.clone()).await?;
        if self.policy.auto_suspend && severity == "critical" {
            // Also when the alert was stored already: a watcher that died
            // between the alert and the suspension left the key active.
            self.suspend(raised.as_ref().unwrap_or(&alert)).await?;
        }
        Ok(raised)
    }

    /// Suspends the key a critical alert is about, on every replica, and
    /// audits it under the alert's name.
    async fn suspend(&self, alert: &Alert) -> StoreResult<()> {
        let was_active = self.index.by_id(&alert.key_id).is_some_and(|k| k.state == KeyState::Active);
        let Some(suspended) = self.store.set_key_active(&alert.key_id, false).await? else { return Ok(()) };
        self.index.upsert([suspended]);
        if !was_active {
            return Ok(());
        }
        tracing::warn!(key = %alert.key_id, alert = %alert.id, "key suspended after a critical usage alert");
        let event = AuditEvent {
            id: crate::ids::audit_log_id(),
            kind: "api_key.updated",
            effective_at: alert.at,
            project_id: alert.project_id.clone(),
            actor_key_id: None,
            actor_user_id: None,
            actor_ip: None,
            details: json!({
                "id": alert.key_id.api_id(),
                "changes_requested": {"state": "suspended"},
                "alert": {"id": alert.id, "kind": alert.kind, "message": alert.message},
            }),
        };
        if let Err(error) = self.store.append_audit(&event).await {
            tracing::warn!(%error, "could not write the suspension's audit event; queued for retry");
            self.recorder.audit(event);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_the_24_or_the_48() {
        assert_eq!(network_of("203.0.113.9".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(network_of("2001:db8:1:2::1".parse().unwrap()), "2001:db8:1::/48");
    }

    #[test]
    fn the_new_key_ceiling_is_per_minute_over_the_window() {
        let policy =
            AnomalyPolicy { window: Duration::from_secs(600), new_key_max_rpm: 50, ..AnomalyPolicy::default() };
        assert_eq!(policy.rule().new_key_ceiling, 500);
    }
}
