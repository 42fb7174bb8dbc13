//! GCRA (generic cell rate algorithm): a smooth limiter whose burst equals its
//! limit. A bucket is one number, its theoretical arrival time (TAT); taking
//! `cost` moves it `cost × period / limit` ahead (rounded up, computed in
//! 128 bits so a limit of 150M tokens a minute is as exact as one of 5), and a
//! take is refused when the TAT would run more than one period ahead of now.
//! Times are microseconds.
//!
//! [`RateBackend`] is the state store: [`LocalBackend`] (sharded maps) here;
//! the replicas issue adds one in Redis with the same arithmetic.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::ids::PublicId;
use crate::policy::Dimension;

/// `limit` units per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period_us: i64,
}

pub const MINUTE_US: i64 = 60_000_000;
pub const DAY_US: i64 = 86_400_000_000;

impl Rate {
    pub fn per_minute(limit: u64) -> Self {
        Self { limit, period_us: MINUTE_US }
    }

    pub fn per_day(limit: u64) -> Self {
        Self { limit, period_us: DAY_US }
    }

    /// Time `units` take to drain: rounded up when taking, so rounding never
    /// admits more than the limit; rounded toward zero when giving back, so
    /// it never returns more than was taken.
    pub fn drain_us(self, units: i64) -> i64 {
        let numerator = i128::from(units) * i128::from(self.period_us);
        let denominator = i128::from(self.limit.max(1));
        let us = if numerator >= 0 { (numerator + denominator - 1) / denominator } else { numerator / denominator };
        i64::try_from(us).unwrap_or(if us > 0 { i64::MAX } else { i64::MIN })
    }

    /// Units that drain in `us`, rounded down (what is free).
    pub fn units_in(self, us: i64) -> u64 {
        let units = i128::from(us.max(0)) * i128::from(self.limit) / i128::from(self.period_us.max(1));
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// Units a backlog of `us` holds, rounded up (what is used).
    pub fn units_held(self, us: i64) -> u64 {
        let period = i128::from(self.period_us.max(1));
        let units = (i128::from(us.max(0)) * i128::from(self.limit) + period - 1) / period;
        u64::try_from(units).unwrap_or(u64::MAX).min(self.limit)
    }
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Key(PublicId),
    /// A project, optionally for one model pattern of its rate limits.
    Project(Box<str>, Option<Box<str>>),
    /// A client address (failed-authentication throttle).
    Client(IpAddr),
    /// A client address sending leaked-key reports (`POST /v1/keys/leaked`).
    Reporter(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketId {
    pub owner: Owner,
    pub dimension: Dimension,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub bucket: BucketId,
    pub rate: Rate,
    pub cost: u64,
}

/// A bucket after a successful take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_us: i64,
}

/// The check that refused, with what its 429 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub used: u64,
    pub retry_after_us: i64,
}

/// One GCRA step from a bucket's TAT (one at or before now is an empty
/// bucket): the new TAT, or how long until `cost` would fit.
pub fn step(tat: i64, now: i64, rate: Rate, cost: u64) -> Result<i64, (u64, i64)> {
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(rate.drain_us(i64::try_from(cost).unwrap_or(i64::MAX)));
    if new_tat - now > rate.period_us {
        return Err((rate.units_held(tat - now), new_tat - rate.period_us - now));
    }
    Ok(new_tat)
}

pub fn taken(new_tat: i64, now: i64, rate: Rate) -> Taken {
    let free = (rate.period_us - (new_tat - now)).max(0);
    Taken { remaining: rate.units_in(free).min(rate.limit), reset_us: (new_tat - now).max(0) }
}

/// Why a take did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    Refused(Refusal),
    /// The shared state store is unreachable and the policy is to refuse.
    Unavailable,
}

/// Where bucket state lives.
#[async_trait::async_trait]
pub trait RateBackend: Send + Sync + 'static {
    /// All or nothing: takes every check's cost, or none and says which refused.
    async fn take(&self, checks: &[Check], now_us: i64) -> Result<Vec<Taken>, TakeError>;
    /// Moves a bucket by `delta` units (negative gives back), never below empty.
    async fn adjust(&self, bucket: &BucketId, rate: Rate, delta: i64, now_us: i64);
    /// Forgets buckets that are full again (their state equals no state).
    async fn prune(&self, now_us: i64);
    /// Adds to a month's spend shared by every replica and returns the new
    /// total; `seed` starts a counter this replica is the first to touch.
    /// `None` when spend is not shared (each process counts its own).
    async fn add_spend(&self, _counter: &str, _seed: i64, _nanos: i64) -> Option<i64> {
        None
    }
    /// Takes one in-flight slot for each `(owner, max)` in a set every replica
    /// shares, all or none; dropping the lease frees them. `None` when slots
    /// are not shared (or Redis is away and the policy is open): the limiter
    /// then counts them in process.
    async fn acquire_slots(&self, _slots: &[(Owner, u64)]) -> Option<Result<SharedLease, TakeError>> {
        None
    }
    /// For `/readyz`: `Err` says what is wrong with a shared backend and
    /// whether the gateway can still serve.
    async fn health(&self) -> Result<(), Degraded> {
        Ok(())
    }
}

/// Shared in-flight slots held by one request; dropping it gives them back.
#[derive(Debug)]
pub struct SharedLease(pub Box<dyn std::fmt::Debug + Send + Sync>);

/// A shared backend that cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub reason: String,
    /// Whether requests are still served (fail-open) or refused (fail-closed).
    pub serving: bool,
}

impl Owner {
    /// A stable text form, for shared stores.
    pub fn key(&self) -> String {
        match self {
            Owner::Key(id) => format!("k:{}", id.as_str()),
            Owner::Project(id, model) => format!("p:{id}:{}", model.as_deref().unwrap_or("*")),
            Owner::Client(ip) => format!("c:{ip}"),
            Owner::Reporter(ip) => format!("r:{ip}"),
        }
    }
}

impl BucketId {
    /// A stable text form, for shared stores.
    pub fn key(&self) -> String {
        let owner = self.owner.key();
        let dimension = match self.dimension {
            Dimension::RequestsPerMinute => "rpm",
            Dimension::RequestsPerDay => "rpd",
            Dimension::TokensPerMinute => "tpm",
            Dimension::TokensPerDay => "tpd",
            Dimension::FailedAuthPerMinute => "fail",
        };
        format!("{owner}:{dimension}")
    }
}

const SHARDS: usize = 64;

/// Dimensions a bucket owner has: the length of its [`Tats`].
const DIMENSIONS: usize = 5;

/// Where a dimension's TAT sits in its owner's [`Tats`].
fn slot(dimension: Dimension) -> usize {
    match dimension {
        Dimension::RequestsPerMinute => 0,
        Dimension::RequestsPerDay => 1,
        Dimension::TokensPerMinute => 2,
        Dimension::TokensPerDay => 3,
        Dimension::FailedAuthPerMinute => 4,
    }
}

/// One owner's buckets, a TAT per dimension: a request's requests and tokens
/// buckets are one lookup (one cache miss with many keys), not two. A TAT at
/// or before now is an empty bucket, so [`EMPTY`] needs no `Option` beside
/// it: an entry (owner and TATs) is 80 bytes, not 120.
type Tats = [i64; DIMENSIONS];

/// A bucket nothing has been taken from.
const EMPTY: Tats = [i64::MIN; DIMENSIONS];

/// foldhash: a fraction of SipHash's cost per bucket id, still seeded per
/// process, so client addresses (the failed-auth buckets) cannot be chosen
/// to collide.
type Buckets = HashMap<Owner, Tats, foldhash::fast::RandomState>;

/// In-process buckets, sharded by owner so unrelated keys do not contend.
pub struct LocalBackend {
    shards: Box<[Mutex<Buckets>]>,
    /// Picks the shard; seeded apart from the maps' own hasher, so the owners
    /// of one shard still spread over that shard's map.
    shard_hasher: foldhash::fast::RandomState,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Buckets::default())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl LocalBackend {
    fn shard_of(&self, owner: &Owner) -> usize {
        (self.shard_hasher.hash_one(owner) % SHARDS as u64) as usize
    }

    pub fn take_now(&self, checks: &[Check], now: i64) -> Result<Vec<Taken>, Refusal> {
        // Checks come grouped by owner (a key's, then its project's): each
        // group hashes its owner once, finds its buckets once and writes them
        // back once. Each group: its first check, its shard, its buckets as
        // this call leaves them.
        let mut groups: Vec<(usize, usize, Tats)> = Vec::with_capacity(checks.len());
        for (index, check) in checks.iter().enumerate() {
            if groups.last().is_none_or(|&(first, ..)| checks[first].bucket.owner != check.bucket.owner) {
                groups.push((index, self.shard_of(&check.bucket.owner), EMPTY));
            }
        }
        // Lock every shard involved, each once and in ascending order (so
        // concurrent calls cannot deadlock), and the decision is atomic.
        let mut guards: Vec<(usize, parking_lot::MutexGuard<'_, Buckets>)> = Vec::with_capacity(groups.len());
        while let Some(next) =
            groups.iter().map(|g| g.1).filter(|&s| guards.last().is_none_or(|(locked, _)| s > *locked)).min()
        {
            guards.push((next, self.shards[next].lock()));
        }
        // Every group's shard was locked above, so the search always finds it.
        let map_of = |guards: &[(usize, _)], shard: usize| guards.iter().position(|(s, _)| *s == shard).unwrap_or(0);
        let mut out = Vec::with_capacity(checks.len());
        for group in 0..groups.len() {
            let (first, shard, _) = groups[group];
            let end = groups.get(group + 1).map_or(checks.len(), |next| next.0);
            // An owner met in an earlier group starts from that group's
            // steps; otherwise from what the map holds.
            let owner = &checks[first].bucket.owner;
            let mut tats = match groups[..group].iter().rev().find(|(f, ..)| checks[*f].bucket.owner == *owner) {
                Some(&(.., tats)) => tats,
                None => guards[map_of(&guards, shard)].1.get(owner).copied().unwrap_or(EMPTY),
            };
            for (index, check) in checks.iter().enumerate().take(end).skip(first) {
                let slot = slot(check.bucket.dimension);
                match step(tats[slot], now, check.rate, check.cost) {
                    Ok(tat) => {
                        tats[slot] = tat;
                        out.push(taken(tat, now, check.rate));
                    }
                    Err((used, retry_after_us)) => return Err(Refusal { index, used, retry_after_us }),
                }
            }
            groups[group].2 = tats;
        }
        for &(first, shard, tats) in &groups {
            let at = map_of(&guards, shard);
            let map = &mut guards[at].1;
            let owner = &checks[first].bucket.owner;
            match map.get_mut(owner) {
                Some(stored) => *stored = tats,
                None => {
                    map.insert(owner.clone(), tats);
                }
            }
        }
        Ok(out)
    }

    pub fn adjust_now(&self, bucket: &BucketId, rate: Rate, delta: i64, now: i64) {
        let mut map = self.shards[self.shard_of(&bucket.owner)].lock();
        let tats = map.entry(bucket.owner.clone()).or_insert(EMPTY);
        let tat = &mut tats[slot(bucket.dimension)];
        *tat = (*tat).max(now).saturating_add(rate.drain_us(delta)).max(now);
    }

    pub fn prune_now(&self, now: i64) {
        for shard in &self.shards {
            // A full bucket is the same as no bucket.
            shard.lock().retain(|_, tats| tats.iter().any(|&tat| tat > now));
        }
    }
}

#[async_trait::async_trait]
impl RateBackend for LocalBackend {
    async fn take(&self, checks: &[Check], now: i64) -> Result<Vec<Taken>, TakeError> {
        self.take_now(checks, now).map_err(TakeError::Refused)
    }

    async fn adjust(&self, bucket: &BucketId, rate: Rate, delta: i64, now: i64) {
        self.adjust_now(bucket, rate, delta, now);
    }

    async fn prune(&self, now: i64) {
        self.prune_now(now);
    }
}
