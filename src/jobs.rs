//! Work off the request path: the recorder (last-used times and denial records,
//! batched into the store), periodic jobs (index reconcile, retention), and
//! [`Tasks`], which stops and awaits all of them on shutdown so nothing
//! pending is lost.
//!
//! Periodic jobs run in every process; with one SQLite file there is one
//! process. (Replicas will take a PostgreSQL advisory lock per job.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::auth::{IndexBuilder, KeyIndex};
use crate::clock::Clock;
use crate::ids::PublicId;
use crate::store::{Alert, AuditEvent, DenialRecord, KeyRecord, Store, StoreResult, Touch, UsageRecord};

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Background tasks that all stop, and are awaited, on shutdown.
pub struct Tasks {
    shutdown: watch::Sender<bool>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self { shutdown: watch::channel(false).0, handles: Vec::new() }
    }
}

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl FnOnce(watch::Receiver<bool>) -> BoxFuture) {
        #[allow(clippy::disallowed_methods)] // tracked here and awaited in `shutdown`
        let handle = tokio::spawn(task(self.shutdown.subscribe()));
        self.handles.push((name, handle));
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for (name, handle) in self.handles {
            if let Err(error) = handle.await {
                tracing::error!(task = name, %error, "background task failed");
            }
        }
    }
}

enum Record {
    Touch(PublicId, Touch),
    FailedLogin(Box<FailedLogin>),
    Denial(Box<DenialRecord>),
    Audit(Box<AuditEvent>),
    Usage(Box<UsageRecord>),
    Alert(Box<Alert>),
    Flush(oneshot::Sender<()>),
}

/// Hands writes to the background writer; never blocks a request. When the
/// queue is full the write is dropped and counted, never the request.
///
/// Records wait in a queue the writer empties on its tick, or as soon as a
/// batch is full: a request only appends under a short lock and wakes no
/// one, where a channel would wake the writer (often another thread) for
/// every record.
#[derive(Clone)]
pub struct Recorder(Arc<Inbox>);

#[derive(Default)]
struct Inbox {
    queue: parking_lot::Mutex<Queue>,
    /// A batch is full, or someone waits for a flush.
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
    /// The writer has stopped: nothing more is taken.
    closed: bool,
}

impl Recorder {
    /// Queues `record`; `false` when the queue is full (the record is dropped).
    fn push(&self, record: Record) -> bool {
        let urgent = matches!(record, Record::Flush(_));
        let mut queue = self.0.queue.lock();
        if queue.closed || (queue.records.len() >= QUEUE && !urgent) {
            return false;
        }
        queue.records.push(record);
        let full = queue.records.len() >= BATCH;
        drop(queue);
        if urgent || full {
            self.0.ready.notify_one();
        }
        true
    }

    pub fn touch(&self, id: &PublicId, touch: Touch) {
        if !self.push(Record::Touch(*id, touch)) {
            metrics::counter!("keygate_last_used_dropped_total").increment(1);
        }
    }

    /// An audit event that follows a request rather than an admin action
    /// (failed admin-key logins).
    pub fn audit(&self, event: AuditEvent) {
        if !self.push(Record::Audit(Box::new(event))) {
            metrics::counter!("keygate_audit_dropped_total").increment(1);
        }
    }

    /// A failed login with something that names an admin key. The first
    /// failure per key and reason is audited at once; its repeats within the
    /// minute become one `login.failed` event (count, first and last time,
    /// client addresses), so forged keys cannot flood the append-only log.
    pub fn failed_login(&self, failure: FailedLogin) {
        if !self.push(Record::FailedLogin(Box::new(failure))) {
            metrics::counter!("keygate_audit_dropped_total").increment(1);
        }
    }

    /// A metered request; when the queue is full it is counted in
    /// `keygate_usage_dropped_total`, and the request itself still succeeds.
    pub fn usage(&self, record: UsageRecord) {
        if !self.push(Record::Usage(Box::new(record))) {
            metrics::counter!("keygate_usage_dropped_total").increment(1);
        }
    }

    /// An alert raised on the request path (a budget threshold crossed).
    pub fn alert(&self, alert: Alert) {
        if !self.push(Record::Alert(Box::new(alert))) {
            metrics::counter!("keygate_alerts_dropped_total").increment(1);
        }
    }

    /// Waits until everything queued before this call is written (at once
    /// when the writer has stopped).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.push(Record::Flush(tx));
        let _ = rx.await;
    }

    pub fn denial(&self, record: DenialRecord) {
        if !self.push(Record::Denial(Box::new(record))) {
            metrics::counter!("keygate_denials_dropped_total").increment(1);
        }
    }

    /// What is queued; with `close`, the last take (later pushes are refused).
    fn take(&self, close: bool) -> Vec<Record> {
        let mut queue = self.0.queue.lock();
        queue.closed |= close;
        std::mem::take(&mut queue.records)
    }
}

/// One failed login naming an admin key.
#[derive(Debug, Clone)]
pub struct FailedLogin {
    pub key_id: PublicId,
    pub at: crate::time::Timestamp,
    pub client: Option<std::net::IpAddr>,
    /// The private reason's kind (`wrong_secret`, `revoked`, ...).
    pub reason: &'static str,
}

/// One admin key's failed logins for one reason within a window: the first
/// is audited at once, the repeats as one summing event when the window ends.
struct LoginFailures {
    opened_at: crate::time::Timestamp,
    /// Repeats after the first failure: how many, when, from where.
    count: u64,
    first_at: crate::time::Timestamp,
    last_at: crate::time::Timestamp,
    /// Distinct client addresses, at most [`LOGIN_CLIENTS`] of them.
    clients: Vec<String>,
}

/// Seconds over which repeated failed logins are summed into one event.
const LOGIN_WINDOW: i64 = 60;
const LOGIN_CLIENTS: usize = 16;
/// Open windows at once; admin keys and reasons are few, so this is only a bound.
const LOGIN_WINDOWS: usize = 10_000;

type LoginWindow = (PublicId, &'static str);

impl LoginFailures {
    fn open(failure: &FailedLogin) -> Self {
        Self { opened_at: failure.at, count: 0, first_at: failure.at, last_at: failure.at, clients: Vec::new() }
    }

    fn repeat(&mut self, failure: &FailedLogin) {
        if self.count == 0 {
            self.first_at = failure.at;
        }
        self.count += 1;
        self.last_at = self.last_at.max(failure.at);
        if let Some(ip) = failure.client.map(|ip| ip.to_string()) {
            if self.clients.len() < LOGIN_CLIENTS && !self.clients.contains(&ip) {
                self.clients.push(ip);
            }
        }
    }

    /// The summing event, when the window saw repeats.
    fn into_event(self, (key_id, reason): LoginWindow) -> Option<AuditEvent> {
        (self.count > 0).then(|| login_failed(key_id, reason, self.count, self.first_at, self.last_at, &self.clients))
    }
}

/// OpenAI's `login.failed` event, with how many failures it stands for.
fn login_failed(
    key_id: PublicId,
    reason: &'static str,
    count: u64,
    first_at: crate::time::Timestamp,
    last_at: crate::time::Timestamp,
    clients: &[String],
) -> AuditEvent {
    AuditEvent {
        id: crate::ids::audit_log_id(),
        kind: "login.failed",
        effective_at: first_at,
        project_id: None,
        actor_key_id: Some(key_id),
        actor_user_id: None,
        actor_ip: None,
        details: serde_json::json!({
            "error_code": reason,
            "error_message": "authentication failed",
            "count": count,
            "first_at": first_at,
            "last_at": last_at,
            "client_ips": clients,
        }),
    }
}

#[derive(Default)]
struct Pending {
    touches: HashMap<PublicId, Touch>,
    failed_logins: HashMap<LoginWindow, LoginFailures>,
    denials: Vec<DenialRecord>,
    audits: Vec<AuditEvent>,
    usage: Vec<UsageRecord>,
    alerts: Vec<Alert>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Pending {
    fn add(&mut self, record: Record) {
        match record {
            Record::Touch(id, touch) => {
                let slot = self.touches.entry(id).or_insert_with(|| touch.clone());
                if touch.at >= slot.at {
                    *slot = touch;
                }
            }
            Record::FailedLogin(failure) => {
                let window = (failure.key_id, failure.reason);
                let full = self.failed_logins.len() >= LOGIN_WINDOWS;
                match self.failed_logins.get_mut(&window) {
                    Some(open) if failure.at < open.opened_at + LOGIN_WINDOW => open.repeat(&failure),
                    None if full => metrics::counter!("keygate_audit_dropped_total").increment(1),
                    _ => {
                        // A new window: its first failure is audited at once.
                        if let Some(ended) = self.failed_logins.insert(window, LoginFailures::open(&failure)) {
                            self.audits.extend(ended.into_event(window));
                        }
                        let client: Vec<String> = failure.client.iter().map(|ip| ip.to_string()).collect();
                        self.audits.push(login_failed(
                            failure.key_id,
                            failure.reason,
                            1,
                            failure.at,
                            failure.at,
                            &client,
                        ));
                    }
                }
            }
            Record::Denial(d) => self.denials.push(*d),
            Record::Audit(a) => self.audits.push(*a),
            Record::Usage(u) => self.usage.push(*u),
            Record::Alert(a) => self.alerts.push(*a),
            Record::Flush(done) => self.flushes.push(done),
        }
    }

    /// Ends the failed-login windows that are over by `now` (all of them
    /// when `now` is `None`, on shutdown), auditing their repeats.
    fn close_login_windows(&mut self, now: Option<crate::time::Timestamp>) {
        let ended: Vec<LoginWindow> = self
            .failed_logins
            .iter()
            .filter(|(_, w)| now.is_none_or(|now| now >= w.opened_at + LOGIN_WINDOW))
            .map(|(window, _)| *window)
            .collect();
        for window in ended {
            if let Some(failures) = self.failed_logins.remove(&window) {
                self.audits.extend(failures.into_event(window));
            }
        }
    }

    /// Writes what is pending; on failure keeps it for the next round (bounded).
    async fn flush(&mut self, store: &dyn Store) {
        // Alerts and audit events are written one by one, in order; on the
        // first failure the rest wait for the next round (bounded).
        let alerts = std::mem::take(&mut self.alerts);
        let mut alerts = alerts.into_iter();
        for alert in alerts.by_ref() {
            if let Err(error) = store.insert_alert(&alert).await {
                tracing::warn!(%error, "could not store an alert; will retry");
                self.alerts = std::iter::once(alert).chain(alerts).take(MAX_PENDING).collect();
                break;
            }
        }
        let audits = std::mem::take(&mut self.audits);
        let mut audits = audits.into_iter();
        for event in audits.by_ref() {
            if let Err(error) = store.append_audit(&event).await {
                tracing::warn!(%error, kind = event.kind, "could not write an audit event; will retry");
                let kept: Vec<_> = std::iter::once(event).chain(audits).collect();
                if kept.len() > MAX_PENDING {
                    metrics::counter!("keygate_audit_dropped_total").increment((kept.len() - MAX_PENDING) as u64);
                }
                self.audits = kept.into_iter().take(MAX_PENDING).collect();
                break;
            }
        }
        if !self.touches.is_empty() {
            let batch: Vec<_> = self.touches.drain().collect();
            if let Err(error) = store.touch_keys(&batch).await {
                tracing::warn!(%error, keys = batch.len(), "could not record last-used times; will retry");
                self.touches.extend(batch);
            }
        }
        if !self.usage.is_empty() {
            let batch = std::mem::take(&mut self.usage);
            match store.insert_usage(&batch).await {
                Ok(()) => metrics::counter!("keygate_usage_records_total").increment(batch.len() as u64),
                Err(error) => {
                    tracing::warn!(%error, records = batch.len(), "could not record usage; will retry");
                    if batch.len() < MAX_PENDING {
                        self.usage = batch;
                    } else {
                        metrics::counter!("keygate_usage_dropped_total").increment(batch.len() as u64);
                    }
                }
            }
        }
        if !self.denials.is_empty() {
            let batch = std::mem::take(&mut self.denials);
            if let Err(error) = store.insert_denials(&batch).await {
                tracing::warn!(%error, records = batch.len(), "could not record denials; will retry");
                if batch.len() < MAX_PENDING {
                    self.denials = batch;
                } else {
                    metrics::counter!("keygate_denials_dropped_total").increment(batch.len() as u64);
                }
            }
        }
        for done in self.flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

const QUEUE: usize = 65_536;
const MAX_PENDING: usize = 100_000;
const BATCH: usize = 1_000;

/// The recorder and its writer task: batches every `every` (or every 1,000
/// records), and once more on shutdown.
pub fn recorder(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    every: Duration,
) -> (Recorder, impl FnOnce(watch::Receiver<bool>) -> BoxFuture) {
    let recorder = Recorder(Arc::default());
    let inbox = recorder.clone();
    let task = move |mut shutdown: watch::Receiver<bool>| -> BoxFuture {
        Box::pin(async move {
            let mut pending = Pending::default();
            // The first batch after one period: an interval's immediate first
            // tick could write a record the moment it is queued.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                let stopping = tokio::select! {
                    () = inbox.0.ready.notified() => false,
                    _ = tick.tick() => false,
                    _ = shutdown.changed() => true,
                };
                for record in inbox.take(stopping) {
                    pending.add(record);
                }
                pending.close_login_windows((!stopping).then(|| clock.now()));
                pending.flush(&*store).await;
                if stopping {
                    return;
                }
            }
        })
    };
    (recorder, task)
}

/// Runs `job` every `every` (first run after one period) until shutdown.
pub fn periodic<F, Fut>(every: Duration, mut job: F) -> impl FnOnce(watch::Receiver<bool>) -> BoxFuture
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    move |mut shutdown| {
        Box::pin(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => job().await,
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

/// Hands every key in the store to `each`, a page at a time, so the full
/// records of every key never sit in memory at once.
async fn key_pages(store: &dyn Store, mut each: impl FnMut(Vec<KeyRecord>)) -> StoreResult<()> {
    const PAGE: u32 = 500;
    let mut after = None;
    loop {
        let page = store.keys_page(after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        after = page.last().map(|k| k.id);
        each(page);
        if !full {
            return Ok(());
        }
    }
}

/// Reads every key from the store into a new index. A change between pages
/// is caught by the index's generation check.
pub async fn read_keys(store: &dyn Store) -> StoreResult<IndexBuilder> {
    let mut keys = IndexBuilder::default();
    key_pages(store, |page| keys.add(page)).await?;
    Ok(keys)
}

/// Brings the index in line with the store, so a change made by another
/// process (or a missed update) heals. Only what differs is rebuilt: a
/// reconcile that finds nothing new allocates nothing lasting.
pub async fn reconcile_index(store: &dyn Store, index: &KeyIndex) {
    let generation = index.generation();
    let (mut changed, mut keys) = (Vec::new(), 0);
    let read = key_pages(store, |page| {
        keys += page.len();
        changed.extend(index.differing(page));
    });
    let projects = match tokio::try_join!(read, store.all_projects()) {
        Ok(((), projects)) => projects,
        Err(error) => {
            tracing::warn!(%error, "key index reconcile failed; serving the last good index");
            return;
        }
    };
    if !index.reconcile(generation, changed, projects) {
        tracing::debug!("key index reconcile skipped: a key changed while the store was read");
        return;
    }
    // Every key the store has now matches the index; more in the index means
    // it holds keys the store no longer has: read it anew.
    if index.len() == keys {
        return;
    }
    tracing::info!(store = keys, index = index.len(), "key index rebuilt: it held keys the store has not");
    let generation = index.generation();
    match tokio::try_join!(read_keys(store), store.all_projects()) {
        Ok((keys, projects)) => {
            if !index.replace_all(generation, keys, projects) {
                tracing::debug!("key index rebuild skipped: a key changed while the store was read");
            }
        }
        Err(error) => tracing::warn!(%error, "key index rebuild failed; serving the last good index"),
    }
}

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub denials: Duration,
    /// At most this many denial records (a flood of bad keys cannot grow it further).
    pub denial_rows: u64,
    pub usage_records: Duration,
    pub usage_rollups: Duration,
    pub alerts: Duration,
    pub audit: Duration,
    /// At most this many audit events (the oldest go first).
    pub audit_rows: u64,
    /// Dashboard sessions unused this long are over.
    pub session_idle: Duration,
}

/// Deletes what is past its lifetime. Runs at start and every hour.
pub async fn enforce_retention(store: &dyn Store, clock: &dyn Clock, r: &Retention) {
    let now = clock.now();
    let before = |d: Duration| now - i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let results = [
        ("denials", store.prune_denials(before(r.denials), r.denial_rows).await),
        ("usage", store.prune_usage(before(r.usage_records), before(r.usage_rollups)).await),
        ("alerts", store.prune_alerts(before(r.alerts)).await),
        ("audit log", store.prune_audit(before(r.audit), r.audit_rows).await),
        (
            "dashboard sessions",
            store.prune_sessions(now, before(r.session_idle), now - crate::session::oidc::LOGIN_TTL_SECONDS).await,
        ),
    ];
    for (what, result) in results {
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(what, deleted = n, "retention: deleted old rows"),
            Err(error) => tracing::warn!(what, %error, "retention: could not delete old rows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(request_id: &str) -> DenialRecord {
        DenialRecord {
            request_id: request_id.into(),
            at: 1,
            reason: "unknown_key".into(),
            explanation: "an unknown key".into(),
            key_id: None,
            project_id: None,
            status: 401,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            client_ip: None,
        }
    }

    #[tokio::test]
    async fn the_recorder_writes_on_flush_and_turns_records_away_once_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
        // A tick that never comes in this test: only a full batch or a flush writes.
        let (recorder, writer) =
            recorder(Arc::clone(&store), Arc::new(crate::clock::SystemClock), Duration::from_secs(3600));
        let mut tasks = Tasks::default();
        tasks.spawn("recorder", writer);
        tokio::task::yield_now().await;

        recorder.denial(denial("req_a"));
        assert!(store.get_denial("req_a").await.unwrap().is_none(), "queued, not yet written");
        recorder.flush().await;
        assert!(store.get_denial("req_a").await.unwrap().is_some());

        // A full batch is written without a flush.
        for n in 0..BATCH {
            recorder.denial(denial(&format!("req_batch_{n}")));
        }
        let last = format!("req_batch_{}", BATCH - 1);
        let mut waited = 0;
        while store.get_denial(&last).await.unwrap().is_none() {
            assert!(waited < 500, "a full batch was not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }

        recorder.denial(denial("req_before_stop"));
        tasks.shutdown().await;
        assert!(store.get_denial("req_before_stop").await.unwrap().is_some(), "written on the way out");
        recorder.denial(denial("req_after_stop"));
        tokio::time::timeout(Duration::from_secs(1), recorder.flush()).await.expect("a flush after the stop returns");
        assert!(store.get_denial("req_after_stop").await.unwrap().is_none());
    }

    #[test]
    fn failed_logins_are_audited_at_once_and_their_repeats_summed_per_window() {
        let key = PublicId::random();
        let other = PublicId::random();
        let failure = |key_id, at, ip: &str, reason| {
            Record::FailedLogin(Box::new(FailedLogin { key_id, at, client: Some(ip.parse().unwrap()), reason }))
        };
        let mut pending = Pending::default();
        for n in 0..2_000 {
            pending.add(failure(key, 1_000 + n % 30, &format!("10.0.{}.{}", n / 250, n % 250), "wrong_secret"));
        }
        pending.add(failure(key, 1_010, "10.9.9.8", "revoked"));
        pending.add(failure(other, 1_010, "10.9.9.9", "wrong_secret"));
        let firsts: Vec<_> = pending.audits.iter().map(|e| (e.actor_key_id, e.details["error_code"].clone())).collect();
        assert_eq!(firsts.len(), 3, "the first failure of each key and reason is audited at once");
        assert!(pending.audits.iter().all(|e| e.details["count"] == 1));
        pending.close_login_windows(Some(1_059));
        assert_eq!(pending.audits.len(), 3, "the windows are still open");
        // A failure after the window ends it: its repeats are summed, and it opens the next.
        pending.add(failure(key, 1_060, "10.0.0.1", "wrong_secret"));
        assert_eq!(pending.audits.len(), 5);
        let summary = &pending.audits[3];
        assert_eq!((summary.kind, summary.actor_key_id), ("login.failed", Some(key)));
        assert_eq!(summary.details["count"], 1_999);
        assert_eq!(summary.details["error_code"], "wrong_secret");
        assert_eq!(summary.details["client_ips"].as_array().unwrap().len(), LOGIN_CLIENTS);
        assert_eq!(pending.audits[4].details["count"], 1, "the next window's first");
        pending.close_login_windows(Some(1_070));
        assert_eq!(pending.audits.len(), 5, "windows without repeats end without an event");
        pending.close_login_windows(None);
        assert!(pending.failed_logins.is_empty());
    }
}
