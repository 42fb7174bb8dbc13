//! Limits: requests and tokens per minute and per day, concurrent requests,
//! monthly budgets, per key and per project (and per model within a project),
//! the failed-authentication throttle per client address, and the limit on
//! leaked-key reports per client address.
//!
//! Owns: the admission decision before a request goes upstream, settling
//! token estimates with real usage afterwards, the `x-ratelimit-*` values.
//! Bucket state sits behind [`RateBackend`] (local now, Redis for replicas).
//! Leaves the limits themselves, as values, to `policy`, and rendering 429s
//! to `dialect` (through `auth::Denial`).

mod budget;
mod gcra;
mod inflight;
mod redis;

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::Authorized;
use crate::clock::Clock;
use crate::policy::{glob_match, Budget, BudgetScope, Dimension, Exceeded, RateLimits};

pub use budget::{month_start, Budgets};
pub use gcra::{BucketId, Check, Degraded, LocalBackend, Owner, Rate, RateBackend, SharedLease, TakeError, Taken};
pub use inflight::{Inflight, InflightGuard};
pub use redis::{FailurePolicy, RedisBackend, LEASE_MS};

/// The `x-ratelimit-*` values of the tightest requests and tokens buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<(u64, Taken)>,
    pub tokens: Option<(u64, Taken)>,
}

/// An admitted request: what to settle afterwards, and the slots it holds.
#[derive(Debug, Default)]
pub struct Ticket {
    token_buckets: Vec<(BucketId, Rate)>,
    estimated_tokens: u64,
    budgets: Vec<(BudgetScope, Budget)>,
    pub headers: RateHeaders,
    _inflight: Vec<InflightGuard>,
    _lease: Option<SharedLease>,
}

pub struct Limiter {
    backend: Arc<dyn RateBackend>,
    inflight: Inflight,
    budgets: Arc<Budgets>,
    clock: Arc<dyn Clock>,
    failed_auth: Option<Rate>,
    /// Leaked-key reports a client address may send (`None`: unlimited).
    leak_reports: Option<Rate>,
    /// The failed-auth throttle and the leak-report limit while a shared backend refuses everything.
    throttle_fallback: LocalBackend,
}

impl Limiter {
    pub fn new(
        backend: Arc<dyn RateBackend>,
        budgets: Arc<Budgets>,
        clock: Arc<dyn Clock>,
        failed_auth_per_minute: Option<u64>,
    ) -> Self {
        Self {
            backend,
            inflight: Inflight::default(),
            budgets,
            clock,
            failed_auth: failed_auth_per_minute.map(Rate::per_minute),
            leak_reports: None,
            throttle_fallback: LocalBackend::default(),
        }
    }

    /// Limits leaked-key reports to `per_minute` per client address (`None`: unlimited).
    pub fn with_leak_reports(mut self, per_minute: Option<u64>) -> Self {
        self.leak_reports = per_minute.map(Rate::per_minute);
        self
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Whether a request needs a token estimate (any token limit applies).
    pub fn wants_tokens(&self, authorized: &Authorized, model: Option<&str>) -> bool {
        authorized.key.policy.limits.has_tokens()
            || project_limits(authorized, model).iter().any(|(_, l)| l.has_tokens())
    }

    /// Admits a request or says which limit it hits. `tokens` is the estimate
    /// (prompt plus the completion allowance) charged against token limits.
    pub async fn admit(&self, authorized: &Authorized, model: Option<&str>, tokens: u64) -> Result<Ticket, Exceeded> {
        let key = &authorized.key;
        let mut ticket = Ticket { estimated_tokens: tokens, ..Ticket::default() };
        for scope in budget_scopes(authorized) {
            let (scope, budget) = scope;
            let spent = self.budgets.spent(&scope, self.clock.now());
            if spent >= budget.monthly_nanos {
                return Err(Exceeded::Budget { scope, budget_nanos: budget.monthly_nanos, spent_nanos: spent });
            }
            ticket.budgets.push((scope, budget));
        }
        let mut checks = Vec::new();
        rate_checks(&key.policy.limits, &Owner::Key(key.id), tokens, &mut checks);
        let mut concurrency = Vec::new();
        if let Some(max) = key.policy.limits.max_concurrent_requests {
            concurrency.push((Owner::Key(key.id), max, format!("key {}", key.id)));
        }
        for (owner, limits) in project_limits(authorized, model) {
            rate_checks(&limits, &owner, tokens, &mut checks);
            if let Some(max) = limits.max_concurrent_requests {
                concurrency.push((owner.clone(), max, describe(&owner)));
            }
        }
        // Concurrency first: a request refused for it must not use up a rate.
        if !concurrency.is_empty() {
            let slots: Vec<(Owner, u64)> = concurrency.iter().map(|(owner, max, _)| (owner.clone(), *max)).collect();
            match self.backend.acquire_slots(&slots).await {
                Some(Ok(lease)) => ticket._lease = Some(lease),
                Some(Err(TakeError::Unavailable)) => return Err(Exceeded::Unavailable),
                Some(Err(TakeError::Refused(refusal))) => {
                    let (_, max, name) = concurrency.swap_remove(refusal.index.min(concurrency.len() - 1));
                    return Err(Exceeded::Concurrency { limit: max, owner: name });
                }
                None => {
                    for (owner, max, name) in concurrency {
                        match self.inflight.acquire(owner, max) {
                            Some(guard) => ticket._inflight.push(guard),
                            None => return Err(Exceeded::Concurrency { limit: max, owner: name }),
                        }
                    }
                }
            }
        }
        if let Some(check) = checks.iter().find(|c| c.cost > c.rate.limit) {
            return Err(Exceeded::TooLarge {
                dimension: check.bucket.dimension,
                limit: check.rate.limit,
                requested: check.cost,
                owner: describe(&check.bucket.owner),
            });
        }
        if !checks.is_empty() {
            let now = self.clock.now_millis() * 1000;
            let taken = self.backend.take(&checks, now).await.map_err(|error| match error {
                TakeError::Unavailable => Exceeded::Unavailable,
                TakeError::Refused(refusal) => {
                    let check = &checks[refusal.index.min(checks.len() - 1)];
                    Exceeded::Rate {
                        dimension: check.bucket.dimension,
                        limit: check.rate.limit,
                        used: refusal.used,
                        requested: check.cost,
                        retry_after_ms: (refusal.retry_after_us + 999) / 1000,
                        owner: describe(&check.bucket.owner),
                    }
                }
            })?;
            for (check, taken) in checks.iter().zip(taken) {
                let slot = if check.bucket.dimension.is_tokens() {
                    &mut ticket.headers.tokens
                } else {
                    &mut ticket.headers.requests
                };
                if slot.is_none_or(|(_, t)| taken.remaining < t.remaining) {
                    *slot = Some((check.rate.limit, taken));
                }
                if check.bucket.dimension.is_tokens() {
                    ticket.token_buckets.push((check.bucket.clone(), check.rate));
                }
            }
        }
        Ok(ticket)
    }

    /// Replaces the estimate with the real count and adds the cost to
    /// budgets; returns the budgets whose alert threshold this request crossed.
    pub fn settle(&self, ticket: &Ticket, actual_tokens: u64, cost_nanos: i64) -> Vec<(BudgetScope, Budget, i64)> {
        self.settle_tokens(ticket, actual_tokens);
        self.share_spend(ticket, cost_nanos);
        let mut crossed = Vec::new();
        for (scope, budget) in &ticket.budgets {
            let after = self.budgets.add(scope, cost_nanos, self.clock.now());
            let threshold = i64::try_from(i128::from(budget.monthly_nanos) * i128::from(budget.alert_percent) / 100)
                .unwrap_or(i64::MAX);
            if after >= threshold && after - cost_nanos < threshold {
                crossed.push((scope.clone(), *budget, after));
            }
        }
        crossed
    }

    /// Adds the cost to the shared month counters (when the backend has them)
    /// and takes their totals, so this replica's budget checks see every
    /// replica's spend without a round trip on admission.
    fn share_spend(&self, ticket: &Ticket, cost_nanos: i64) {
        if cost_nanos <= 0 || ticket.budgets.is_empty() {
            return;
        }
        let now = self.clock.now();
        let month = month_start(now);
        let counters: Vec<(BudgetScope, i64)> =
            ticket.budgets.iter().map(|(scope, _)| (scope.clone(), self.budgets.spent(scope, now))).collect();
        let (backend, budgets) = (Arc::clone(&self.backend), Arc::clone(&self.budgets));
        spawn_unless_ready(async move {
            for (scope, seed) in counters {
                if let Some(total) = backend.add_spend(&scope.counter(month), seed, cost_nanos).await {
                    budgets.observe(&scope, total, now);
                }
            }
        });
    }

    fn settle_tokens(&self, ticket: &Ticket, actual: u64) {
        let delta =
            i64::try_from(actual).unwrap_or(i64::MAX) - i64::try_from(ticket.estimated_tokens).unwrap_or(i64::MAX);
        if delta == 0 {
            return;
        }
        let now = self.clock.now_millis() * 1000;
        // Settling happens after the response: local buckets settle at once,
        // while a shared backend's round trip goes on in its own task.
        let backend = Arc::clone(&self.backend);
        let buckets = ticket.token_buckets.clone();
        spawn_unless_ready(async move {
            for (bucket, rate) in &buckets {
                backend.adjust(bucket, *rate, delta, now).await;
            }
        });
    }

    /// Counts a failed authentication from `client`; `Some` when that client
    /// is over the throttle (its failures then get 429 instead of 401).
    pub async fn failed_auth(&self, client: IpAddr) -> Option<Exceeded> {
        let rate = self.failed_auth?;
        self.per_client(Owner::Client(client), Dimension::FailedAuthPerMinute, rate).await
    }

    /// Counts a leaked-key report from `client`; `Some` when that client is
    /// over `limits.leak_reports_per_minute` (the report is then refused
    /// unread).
    pub async fn leak_report(&self, client: IpAddr) -> Option<Exceeded> {
        let rate = self.leak_reports?;
        self.per_client(Owner::Reporter(client), Dimension::RequestsPerMinute, rate).await
    }

    /// Takes one from a per-client bucket; `Some` when it is empty.
    async fn per_client(&self, owner: Owner, dimension: Dimension, rate: Rate) -> Option<Exceeded> {
        let check = Check { bucket: BucketId { owner, dimension }, rate, cost: 1 };
        let now = self.clock.now_millis() * 1000;
        let taken = match self.backend.take(std::slice::from_ref(&check), now).await {
            // Refusing everything must not also switch the throttle off.
            Err(TakeError::Unavailable) => self.throttle_fallback.take_now(std::slice::from_ref(&check), now),
            Ok(taken) => Ok(taken),
            Err(TakeError::Refused(refusal)) => Err(refusal),
        };
        match taken {
            Ok(_) => None,
            Err(refusal) => Some(Exceeded::Rate {
                dimension,
                limit: rate.limit,
                used: refusal.used,
                requested: 1,
                retry_after_ms: (refusal.retry_after_us + 999) / 1000,
                owner: describe(&check.bucket.owner),
            }),
        }
    }

    /// Whether the rate-limit backend is reachable (always, when local).
    pub async fn health(&self) -> Result<(), Degraded> {
        self.backend.health().await
    }

    /// Drops bucket state that no longer limits anything.
    pub async fn prune(&self) {
        self.backend.prune(self.clock.now_millis() * 1000).await;
    }
}

/// Runs `work` to completion here when it needs no I/O (local state), or in
/// its own task when it waits on a shared backend.
fn spawn_unless_ready(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    if futures_util::FutureExt::now_or_never(work.as_mut()).is_none() {
        #[allow(
            clippy::disallowed_methods,
            reason = "a settle lost at shutdown only leaves a bucket or budget slightly off until it drains"
        )]
        tokio::spawn(work);
    }
}

/// The buckets `limits` fill for `owner`: one per limit set, each charged
/// one request or `tokens`.
fn rate_checks(limits: &RateLimits, owner: &Owner, tokens: u64, out: &mut Vec<Check>) {
    let dims = [
        (limits.max_requests_per_1_minute, Dimension::RequestsPerMinute, Rate::per_minute as fn(u64) -> Rate, 1),
        (limits.max_requests_per_1_day, Dimension::RequestsPerDay, Rate::per_day, 1),
        (limits.max_tokens_per_1_minute, Dimension::TokensPerMinute, Rate::per_minute, tokens),
        (limits.max_tokens_per_1_day, Dimension::TokensPerDay, Rate::per_day, tokens),
    ];
    for (limit, dimension, rate, cost) in dims {
        if let Some(limit) = limit {
            out.push(Check { bucket: BucketId { owner: owner.clone(), dimension }, rate: rate(limit), cost });
        }
    }
}

fn describe(owner: &Owner) -> String {
    match owner {
        Owner::Key(id) => format!("key {id}"),
        Owner::Project(id, Some(model)) if model.as_ref() != "*" => format!("project {id} (model {model})"),
        Owner::Project(id, _) => format!("project {id}"),
        Owner::Client(ip) => format!("client {ip}"),
        Owner::Reporter(ip) => format!("leak reports from client {ip}"),
    }
}

/// The project's limit entries that apply to `model`: every matching pattern.
fn project_limits(authorized: &Authorized, model: Option<&str>) -> Vec<(Owner, RateLimits)> {
    let Some(project) = authorized.project.as_deref() else { return Vec::new() };
    project
        .rate_limits
        .iter()
        .filter(|m| m.model == "*" || model.is_some_and(|model| glob_match(&m.model, model)))
        .map(|m| (Owner::Project(project.id.as_str().into(), Some(m.model.as_str().into())), m.limits))
        .collect()
}

fn budget_scopes(authorized: &Authorized) -> Vec<(BudgetScope, Budget)> {
    let mut out = Vec::new();
    if let Some(budget) = authorized.key.policy.budget {
        out.push((BudgetScope::Key(authorized.key.id), budget));
    }
    if let Some(project) = authorized.project.as_deref() {
        if let Some(budget) = project.budget {
            out.push((BudgetScope::Project(project.id.clone()), budget));
        }
    }
    out
}

#[cfg(test)]
mod tests;
