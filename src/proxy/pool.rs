//! Pools: one route (a model pattern) served by several members (provider
//! keys, Azure resources, compatible servers), each with its own credential,
//! weight, models and optional limits. A request goes to the member with the
//! least load for its weight, skipping members that are cooling down, and
//! fails over to another member when one cannot serve it, within a retry
//! budget and a deadline, never once the answer has started to reach the
//! client.
//!
//! What may be retried on another member:
//! - always: the member was not reached (connection refused, DNS, TLS), or it
//!   refused without doing the work (429, or 401/403: its provider key is bad);
//! - only for requests without side effects (GET, HEAD, and the inference
//!   calls `POST /chat/completions`, `/completions`, `/embeddings`,
//!   `/moderations`): a 5xx answer or no answer in time, since the member may
//!   have started the work. A file upload, a batch, an assistant, a
//!   `/responses` call (stored by default) or a fine-tune is never sent twice.
//!
//! Health is passive: consecutive failures open a member's circuit for a
//! cooldown, after which one request tries it (half-open) and its outcome
//! closes or reopens it. A member whose provider key was rejected is out for
//! longer and is reported (`Attempt::credential_rejected`) so the caller can
//! raise an alert; its client never sees a 401 for it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::Serialize;

use super::Upstream;
use crate::policy::glob_match;

/// How a pool treats failing members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures that open a member's circuit.
    pub failures: u32,
    /// How long an open circuit stays open before one request tries it again.
    pub cooldown: Duration,
    /// How long a member whose provider key was rejected stays out.
    pub credential_cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { failures: 3, cooldown: Duration::from_secs(30), credential_cooldown: Duration::from_secs(300) }
    }
}

/// A member's own limits, kept by this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// One provider endpoint of a pool, with its health.
pub struct Member {
    pub upstream: Upstream,
    weight: u32,
    /// Glob patterns of the models it serves (empty: every model of its pool).
    models: Vec<String>,
    limits: MemberLimits,
    health: Health,
}

/// Shared counters, updated without locks on every request.
#[derive(Default)]
struct Health {
    inflight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Milliseconds (on the pool's clock) until which the circuit is open; 0: closed.
    open_until: AtomicI64,
    /// A half-open trial is in flight.
    trial: AtomicBool,
    /// Why the circuit is open: a rejected provider key, not ordinary failures.
    credential_rejected: AtomicBool,
    /// The rejection was reported (an alert), once per take-out.
    reported: AtomicBool,
    /// Smoothed latency to the answer's head, microseconds (0: never measured).
    latency_us: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// The member's own limits, as GCRA theoretical arrival times (ms).
    requests_tat: AtomicI64,
    tokens_tat: AtomicI64,
    last_error: parking_lot::Mutex<Option<String>>,
}

/// One try of one member, for the record and for `keygate explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub member: String,
    /// What happened, in words: `HTTP 429`, `connection refused`, ...
    pub outcome: String,
    /// The provider refused the member's key (401).
    #[serde(skip)]
    pub key_refused: bool,
    /// ... and this try took the member out: an alert is due.
    #[serde(skip)]
    pub credential_rejected: bool,
}

/// How one try ended.
pub enum Outcome {
    /// An answer to pass on (a success, or a refusal that is the client's own).
    Answer(reqwest::Response),
    /// An answer that says the member cannot serve now; passed on only when no
    /// other member can take the request.
    Refused(reqwest::Response),
    /// No answer: the request did not reach the member, or it did not answer in time.
    Failed { timed_out: bool, sent: bool },
}

/// What the request may be tried again on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra members to try after the first.
    pub retries: usize,
    /// No new try starts after this.
    pub deadline: Instant,
    /// The request has no side effects: a member that may have started it can be asked again.
    pub repeatable: bool,
}

impl RetryPolicy {
    /// Whether a request may be sent twice when a member may have started it.
    pub fn repeatable(method: &Method, relative_path: &str) -> bool {
        let path = relative_path.split('?').next().unwrap_or_default();
        matches!(*method, Method::GET | Method::HEAD)
            || (*method == Method::POST
                && matches!(path, "/chat/completions" | "/completions" | "/embeddings" | "/moderations"))
    }
}

/// The end of a pool's forward.
pub enum Forwarded<'p> {
    /// `member` answered; `attempts` are the tries before it that failed.
    Served { member: &'p Member, response: reqwest::Response, attempts: Vec<Attempt> },
    /// Every try failed. `last` is the last member's own refusal (a 429 or a
    /// 5xx), when there was one, which is passed on as it is.
    Exhausted { last: Option<(&'p Member, reqwest::Response)>, attempts: Vec<Attempt>, timed_out: bool },
}

/// One try in flight on a member: counted as load until it ends, even when
/// the request is dropped mid-try (the client hung up).
struct Try<'m> {
    member: &'m Member,
    done: bool,
}

impl<'m> Try<'m> {
    fn start(member: &'m Member) -> Self {
        member.health.inflight.fetch_add(1, Ordering::AcqRel);
        member.health.requests.fetch_add(1, Ordering::Relaxed);
        Self { member, done: false }
    }

    fn finish(mut self) {
        self.done = true;
        self.member.health.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Try<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned: neither a success nor a failure of the member.
            self.member.health.inflight.fetch_sub(1, Ordering::AcqRel);
            self.member.health.trial.store(false, Ordering::Release);
        }
    }
}

/// A route: the members behind one model pattern.
pub struct Pool {
    pub name: String,
    /// Glob patterns of the models routed here (the default pool: any).
    pub models: Vec<String>,
    members: Vec<Member>,
    breaker: Breaker,
    retries: usize,
    retry_deadline: Duration,
    /// The pool's clock: milliseconds since it was built.
    epoch: Instant,
    /// Rotates the start of the search, so ties spread.
    turn: AtomicUsize,
    /// A member has a token limit, so requests need a token estimate.
    counts_tokens: bool,
    /// Active health checks: how often, and when the last ran (pool clock, ms).
    probe_every: Option<Duration>,
    probed_at: AtomicI64,
}

impl Member {
    pub fn new(upstream: Upstream, weight: u32, models: Vec<String>, limits: MemberLimits) -> Self {
        Self { upstream, weight: weight.max(1), models, limits, health: Health::default() }
    }

    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    fn serves(&self, model: Option<&str>) -> bool {
        match model {
            Some(model) if !self.models.is_empty() => self.models.iter().any(|p| glob_match(p, model)),
            _ => true,
        }
    }

    /// Lower is better: load for the weight, scaled by how fast it answers.
    fn score(&self) -> u128 {
        let load = u128::from(self.health.inflight.load(Ordering::Relaxed)) + 1;
        let latency = u128::from(self.health.latency_us.load(Ordering::Relaxed).max(1_000));
        load * latency / u128::from(self.weight)
    }
}

impl Pool {
    pub fn new(
        name: String,
        models: Vec<String>,
        members: Vec<Member>,
        breaker: Breaker,
        retries: usize,
        retry_deadline: Duration,
    ) -> Self {
        let counts_tokens = members.iter().any(|m| m.limits.tokens_per_minute.is_some());
        Self {
            name,
            models,
            members,
            breaker,
            retries,
            retry_deadline,
            epoch: Instant::now(),
            turn: AtomicUsize::new(0),
            counts_tokens,
            probe_every: None,
            probed_at: AtomicI64::new(i64::MIN / 2),
        }
    }

    /// Puts every member on `/metrics` as in rotation.
    pub fn announce_all(&self) {
        for member in &self.members {
            metrics::gauge!("keygate_upstream_member_up", "pool" => self.name.clone(), "member" => member.name().to_owned())
                .set(1.0);
        }
    }

    /// Checks each member with `GET /models` this often (`None`: passive health only).
    pub fn with_probes(mut self, every: Option<Duration>) -> Self {
        self.probe_every = every;
        self
    }

    pub fn probe_interval(&self) -> Option<Duration> {
        self.probe_every
    }

    /// Whether this pool's probe is due now (and, if so, marks it run).
    pub fn probe_due(&self) -> bool {
        let Some(every) = self.probe_every else { return false };
        let now = self.now_ms();
        let last = self.probed_at.load(Ordering::Acquire);
        // A tick comes a little early now and then: a probe is due within 10% of its interval.
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let due = now - last >= every - every / 10;
        due && self.probed_at.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// A probe's outcome: an answer (any but a refusal) puts the member back
    /// in rotation, a refusal or no answer counts as a failure.
    pub fn probed(&self, member: &Member, outcome: Outcome) {
        match outcome {
            Outcome::Answer(_) => self.succeeded(member, Duration::ZERO),
            Outcome::Refused(response) => {
                let status = response.status();
                let rejected = status == StatusCode::UNAUTHORIZED;
                // Reported by the next request that meets it (an alert
                // belongs to the request that found the key bad).
                if self.failed(member, &format!("probe: {}", refusal_words(status)), rejected, None) {
                    member.health.reported.store(false, Ordering::Release);
                }
            }
            Outcome::Failed { timed_out, .. } => {
                let words = if timed_out { "probe: no answer in time" } else { "probe: not reachable" };
                self.failed(member, words, false, None);
            }
        }
    }

    /// How a request that starts now may be retried.
    pub fn retry_policy(&self, method: &Method, relative_path: &str) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            deadline: Instant::now() + self.retry_deadline,
            repeatable: RetryPolicy::repeatable(method, relative_path),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether a member counts tokens (so a request's estimate is needed).
    pub fn counts_tokens(&self) -> bool {
        self.counts_tokens
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The member for the next try of a request for `model` costing `tokens`:
    /// the least loaded for its weight among those that serve the model, are
    /// not cooling down, are within their own limits and were not tried yet.
    pub fn pick(&self, model: Option<&str>, tokens: u64, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let n = self.members.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(u128, usize, bool)> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            let member = &self.members[i];
            if tried.contains(&i) || !member.serves(model) {
                continue;
            }
            let open_until = member.health.open_until.load(Ordering::Acquire);
            let half_open = open_until != 0 && open_until <= now;
            if open_until > now || (half_open && member.health.trial.load(Ordering::Acquire)) {
                continue;
            }
            // A request without a model (files, batches, stored responses,
            // fine-tunes) is about objects that live with one provider
            // account: it goes to the first member in rotation, by
            // configured order, so they are found again.
            let score = if model.is_none() { i as u128 } else { member.score() };
            if best.is_none_or(|(s, _, _)| score < s) {
                best = Some((score, i, half_open));
            }
        }
        let (_, chosen, half_open) = best?;
        let member = &self.members[chosen];
        if half_open && member.health.trial.swap(true, Ordering::AcqRel) {
            // Another request took the trial first: try the rest.
            let mut tried = tried.to_vec();
            tried.push(chosen);
            return self.pick(model, tokens, &tried);
        }
        if !self.within_limits(member, tokens, now) {
            if half_open {
                member.health.trial.store(false, Ordering::Release);
            }
            let mut tried = tried.to_vec();
            tried.push(chosen);
            return self.pick(model, tokens, &tried);
        }
        Some(chosen)
    }

    /// Charges the member's own limits (GCRA over a minute); false, charging
    /// nothing, when the request would exceed one.
    fn within_limits(&self, member: &Member, tokens: u64, now: i64) -> bool {
        let health = &member.health;
        let Some(requests) = charge(&health.requests_tat, member.limits.requests_per_minute, 1, now) else {
            return false;
        };
        if charge(&health.tokens_tat, member.limits.tokens_per_minute, tokens, now).is_none() {
            if let Some(cost) = requests {
                health.requests_tat.fetch_sub(cost, Ordering::AcqRel);
            }
            return false;
        }
        true
    }

    /// Sends the request to members in turn until one serves it, the retry
    /// budget is spent, or the deadline passes. `send` makes one try.
    pub async fn forward<'p, F, Fut>(
        &'p self,
        model: Option<&str>,
        tokens: u64,
        policy: RetryPolicy,
        mut send: F,
    ) -> Forwarded<'p>
    where
        F: FnMut(&'p Member) -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        let mut tried = Vec::new();
        let mut attempts = Vec::new();
        let mut last = None;
        let mut timed_out = false;
        while tried.len() <= policy.retries && (tried.is_empty() || Instant::now() < policy.deadline) {
            let Some(i) = self.pick(model, tokens, &tried) else { break };
            tried.push(i);
            let member = &self.members[i];
            let started = Instant::now();
            // Undone on drop: a client that hangs up mid-try leaves no load
            // behind and no half-open trial held.
            let try_guard = Try::start(member);
            let outcome = send(member).await;
            try_guard.finish();
            let again = match outcome {
                Outcome::Answer(response) => {
                    self.succeeded(member, started.elapsed());
                    return Forwarded::Served { member, response, attempts };
                }
                Outcome::Refused(response) => {
                    let status = response.status();
                    // 401 is the provider refusing this member's key; a 403
                    // (a model this account lacks, a missing scope) is about
                    // the request: another member may serve it, and it says
                    // nothing of this member's health.
                    let rejected = status == StatusCode::UNAUTHORIZED;
                    let report = if status == StatusCode::FORBIDDEN {
                        self.passed_over(member);
                        false
                    } else {
                        self.failed(member, &format!("HTTP {}", status.as_u16()), rejected, retry_after(&response))
                    };
                    attempts.push(Attempt {
                        member: member.name().to_owned(),
                        outcome: refusal_words(status),
                        key_refused: rejected,
                        credential_rejected: report,
                    });
                    let repeatable = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN)
                        || rejected
                        || policy.repeatable;
                    // A member's own 429, 403 or 5xx may reach the client if
                    // nobody else serves; a rejected provider key never does.
                    if !rejected {
                        last = Some((member, response));
                    }
                    repeatable
                }
                Outcome::Failed { timed_out: t, sent } => {
                    let words = match (t, sent) {
                        (true, _) => "no answer in time",
                        (false, false) => "not reachable (connection refused, DNS or TLS)",
                        (false, true) => "the connection failed mid-request",
                    };
                    self.failed(member, words, false, None);
                    attempts.push(Attempt {
                        member: member.name().to_owned(),
                        outcome: words.to_owned(),
                        key_refused: false,
                        credential_rejected: false,
                    });
                    timed_out = t;
                    !sent || policy.repeatable
                }
            };
            if !again {
                break;
            }
        }
        Forwarded::Exhausted { last, attempts, timed_out }
    }

    /// A try that did not judge the member (a 403 about the request): its
    /// half-open trial, if it held one, is free again.
    fn passed_over(&self, member: &Member) {
        member.health.trial.store(false, Ordering::Release);
    }

    fn succeeded(&self, member: &Member, latency: Duration) {
        let health = &member.health;
        health.consecutive_failures.store(0, Ordering::Release);
        if health.open_until.swap(0, Ordering::AcqRel) != 0 {
            self.announce(member, 1.0);
        }
        health.trial.store(false, Ordering::Release);
        health.credential_rejected.store(false, Ordering::Release);
        health.reported.store(false, Ordering::Release);
        if latency.is_zero() {
            return; // a probe: in rotation again, its latency unmeasured
        }
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = health.latency_us.load(Ordering::Relaxed);
        // An exponential average (1/4 weight to the newest) follows a member
        // that slows down within a few requests.
        let new = if old == 0 { sample } else { (old * 3 + sample) / 4 };
        health.latency_us.store(new, Ordering::Relaxed);
    }

    /// Counts a failure; opens the circuit at the threshold (at once for a
    /// rejected key, or for `pause` when the member asked for one). True when
    /// this is a rejected key not yet reported (an alert is due). A pool of
    /// one never takes its member out: there is nobody to fail over to, and
    /// the member's own answer is better than a 503.
    fn failed(&self, member: &Member, words: &str, rejected: bool, pause: Option<Duration>) -> bool {
        let health = &member.health;
        health.failures.fetch_add(1, Ordering::Relaxed);
        *health.last_error.lock() = Some(words.to_owned());
        let failures = health.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_half_open = health.trial.swap(false, Ordering::AcqRel);
        metrics::counter!("keygate_upstream_member_failures_total", "pool" => self.name.clone(), "member" => member.name().to_owned())
            .increment(1);
        if rejected {
            health.credential_rejected.store(true, Ordering::Release);
        }
        let cooldown = if self.members.len() == 1 {
            None
        } else if rejected {
            Some(self.breaker.credential_cooldown)
        } else if failures >= self.breaker.failures || was_half_open {
            Some(self.breaker.cooldown)
        } else {
            pause
        };
        if let Some(cooldown) = cooldown {
            let until = self.now_ms() + i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX / 2);
            health.open_until.store(until, Ordering::Release);
            self.announce(member, 0.0);
        }
        rejected && !health.reported.swap(true, Ordering::AcqRel)
    }

    /// `keygate_upstream_member_up`: 1 in rotation, 0 cooling down (set on
    /// each change, not on every request).
    fn announce(&self, member: &Member, up: f64) {
        metrics::gauge!("keygate_upstream_member_up", "pool" => self.name.clone(), "member" => member.name().to_owned())
            .set(up);
        if up == 0.0 {
            tracing::warn!(pool = %self.name, member = %member.name(), "upstream member out of rotation");
        } else {
            tracing::info!(pool = %self.name, member = %member.name(), "upstream member back in rotation");
        }
    }

    /// Each member's state, for `GET /v1/keygate/upstreams`.
    pub fn status(&self) -> Vec<MemberStatus> {
        let now = self.now_ms();
        self.members
            .iter()
            .map(|m| {
                let h = &m.health;
                let open_until = h.open_until.load(Ordering::Acquire);
                let state = match open_until {
                    0 => "healthy",
                    t if t > now => "open",
                    _ => "half_open",
                };
                MemberStatus {
                    name: m.name().to_owned(),
                    state,
                    credential_rejected: h.credential_rejected.load(Ordering::Acquire),
                    cooldown_seconds_left: ((open_until - now).max(0) as u64).div_ceil(1000),
                    weight: m.weight,
                    models: m.models.clone(),
                    inflight: h.inflight.load(Ordering::Relaxed),
                    requests: h.requests.load(Ordering::Relaxed),
                    failures: h.failures.load(Ordering::Relaxed),
                    consecutive_failures: h.consecutive_failures.load(Ordering::Relaxed),
                    latency_ms: h.latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    last_error: h.last_error.lock().clone(),
                }
            })
            .collect()
    }
}

/// Takes `cost` from a GCRA over a minute at `per_minute` (none: no limit,
/// `Some(None)`); `None` when it would exceed it. On success with a limit,
/// `Some(Some(ms))`: what was added to the arrival time, for a rollback.
fn charge(tat: &AtomicI64, per_minute: Option<u64>, cost: u64, now: i64) -> Option<Option<i64>> {
    let Some(per_minute) = per_minute.filter(|p| *p > 0) else { return Some(None) };
    let added = (60_000.0 / per_minute as f64 * cost.max(1) as f64).ceil() as i64;
    let mut previous = tat.load(Ordering::Acquire);
    loop {
        let next = previous.max(now) + added;
        if next - now > 60_000 {
            return None;
        }
        match tat.compare_exchange_weak(previous, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(Some(next - previous)),
            Err(actual) => previous = actual,
        }
    }
}

/// One member as `GET /v1/keygate/upstreams` shows it: never its credential.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub name: String,
    /// `healthy`, `open` (cooling down) or `half_open` (the next request tries it).
    pub state: &'static str,
    /// Out because the provider refused its key (401/403).
    pub credential_rejected: bool,
    pub cooldown_seconds_left: u64,
    pub weight: u32,
    pub models: Vec<String>,
    pub inflight: u32,
    pub requests: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    /// Smoothed time to the answer's head.
    pub latency_ms: f64,
    pub last_error: Option<String>,
}

fn refusal_words(status: StatusCode) -> String {
    match status {
        StatusCode::UNAUTHORIZED => {
            "HTTP 401 (the provider refused this member's key; it is out of rotation)".to_owned()
        }
        StatusCode::FORBIDDEN => "HTTP 403 (this member's account may not serve this request)".to_owned(),
        StatusCode::TOO_MANY_REQUESTS => "HTTP 429 (the provider's rate limit or quota)".to_owned(),
        status => format!("HTTP {}", status.as_u16()),
    }
}

/// A 429's `retry-after` (seconds), bounded to a minute: how long to leave the member be.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    if response.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let seconds = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Some(Duration::from_secs(seconds.clamp(1, 60)))
}

/// Whether an answer's status says the member could not serve (try another).
pub fn is_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS)
        || status.is_server_error()
}

#[cfg(test)]
mod tests;
