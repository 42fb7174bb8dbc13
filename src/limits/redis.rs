//! Bucket state in Redis, shared by every replica: the same GCRA arithmetic as
//! [`LocalBackend`], in one Lua script per request (one round trip, atomic
//! across all of a request's buckets). When Redis cannot be reached the
//! configured policy applies: fail open to per-replica local limits, or fail
//! closed and refuse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::Script;

use super::gcra::{
    BucketId, Check, Degraded, LocalBackend, Owner, Rate, RateBackend, Refusal, SharedLease, TakeError, Taken,
};

/// What to do while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Limit per replica with local buckets (logged and counted).
    Open,
    /// Refuse requests (503) until Redis is back.
    Closed,
}

/// KEYS: bucket keys. ARGV: now (µs), then period and the cost's drain time
/// (µs, from [`Rate::drain_us`]) per key. Returns {1, tat...} or
/// {0, index, backlog, retry_after}. TATs are written
/// with `%.0f`: Lua's default number format (`%.14g`) would round µs times.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
local tats = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 2
  local period, cost = tonumber(ARGV[base]), tonumber(ARGV[base + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  for j = 1, i - 1 do
    if KEYS[j] == KEYS[i] then tat = tats[j] end
  end
  if tat < now then tat = now end
  local new = tat + cost
  if new - now > period then
    return {0, i - 1, tat - now, new - period - now}
  end
  tats[i] = new
end
local out = {1}
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1000)
  out[#out + 1] = tats[i]
end
return out
";

/// KEYS[1]: bucket. ARGV: now, delta (µs, negative gives back).
const ADJUST: &str = r"
local now, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + delta
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
return 1
";

/// KEYS[1]: a month's spend counter. ARGV: seed, nanos. Counters outlive
/// their month by a few days so late settles still land.
const SPEND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', 3456000)
end
return redis.call('INCRBY', KEYS[1], ARGV[2])
";

/// KEYS: in-flight sets. ARGV: now (ms), lease (ms), member, then each set's
/// maximum. Expired leases (a replica that died) are dropped first. Returns
/// -1 when every slot was taken, else the index of the full set.
const ACQUIRE: &str = r"
local now, lease, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then return i - 1 end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, member)
  redis.call('PEXPIRE', KEYS[i], lease)
end
return -1
";

/// A slot lease outlives its replica by at most this long; live ones are
/// renewed every third of it ([`RedisBackend::renew_leases`]).
pub const LEASE_MS: i64 = 30_000;

/// The slots this replica holds, so they can be renewed and released.
struct Leases {
    connection: ConnectionManager,
    live: parking_lot::Mutex<HashMap<String, Vec<String>>>,
    origin: String,
    next: AtomicU64,
}

/// One request's slots; dropping it releases them.
struct Held {
    leases: Arc<Leases>,
    member: String,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("member", &self.member).finish()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(keys) = self.leases.live.lock().remove(&self.member) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (mut connection, member) = (self.leases.connection.clone(), std::mem::take(&mut self.member));
        #[allow(clippy::disallowed_methods, reason = "a release lost at shutdown expires with its lease")]
        runtime.spawn(async move {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("ZREM").arg(key).arg(&member).ignore();
            }
            if let Err(error) = pipe.query_async::<()>(&mut connection).await {
                tracing::warn!(%error, "cannot release in-flight slots; they expire with their lease");
            }
        });
    }
}

pub struct RedisBackend {
    connection: ConnectionManager,
    leases: Arc<Leases>,
    acquire: Script,
    prefix: String,
    take: Script,
    adjust: Script,
    spend: Script,
    policy: FailurePolicy,
    fallback: LocalBackend,
    /// After a failure Redis is left alone until this instant (ms since the
    /// epoch), so an unreachable host costs one timeout a second, not one per request.
    resting_until: AtomicI64,
    /// Spend per month counter that Redis has not taken yet.
    unsent_spend: parking_lot::Mutex<HashMap<String, i64>>,
}

/// How long Redis is left alone after a failure.
const REST_MS: i64 = 1000;

impl RedisBackend {
    /// Connects (the manager reconnects by itself afterwards).
    pub async fn connect(url: &str, prefix: &str, policy: FailurePolicy) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_millis(500))
            .set_response_timeout(std::time::Duration::from_millis(500))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            leases: Arc::new(Leases {
                connection: connection.clone(),
                live: parking_lot::Mutex::new(HashMap::new()),
                origin: format!("{:016x}", rand::random::<u64>()),
                next: AtomicU64::new(0),
            }),
            acquire: Script::new(ACQUIRE),
            connection,
            prefix: prefix.to_owned(),
            take: Script::new(TAKE),
            adjust: Script::new(ADJUST),
            spend: Script::new(SPEND),
            policy,
            fallback: LocalBackend::default(),
            resting_until: AtomicI64::new(0),
            unsent_spend: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, bucket: &BucketId) -> String {
        format!("{}{}", self.prefix, bucket.key())
    }

    fn unavailable(&self, error: &redis::RedisError) {
        metrics::counter!("keygate_redis_failures_total").increment(1);
        tracing::warn!(%error, policy = ?self.policy, "Redis failed a rate-limit call");
        // Only an unreachable Redis is rested; an error about one key
        // (WRONGTYPE, a script error) must not send every bucket to the policy.
        if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal() {
            self.resting_until.store(now_ms() + REST_MS, Ordering::Relaxed);
        }
    }

    /// Pushes the expiry of every slot this replica still holds (every
    /// `LEASE_MS / 3`), so long streams keep their slots and a dead
    /// replica's slots free themselves.
    pub async fn renew_leases(&self) {
        let live: Vec<(String, Vec<String>)> =
            self.leases.live.lock().iter().map(|(member, keys)| (member.clone(), keys.clone())).collect();
        if live.is_empty() {
            return;
        }
        let expiry = now_ms() + LEASE_MS;
        let mut pipe = redis::pipe();
        for (member, keys) in &live {
            for key in keys {
                pipe.cmd("ZADD").arg(key).arg("XX").arg(expiry).arg(member).ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(LEASE_MS).ignore();
            }
        }
        let mut connection = self.connection.clone();
        if let Err(error) = pipe.query_async::<()>(&mut connection).await {
            self.unavailable(&error);
        }
    }

    fn resting(&self) -> bool {
        now_ms() < self.resting_until.load(Ordering::Relaxed)
    }

    /// What a request gets while Redis cannot answer.
    fn fall_back(&self, checks: &[Check], now: i64) -> Result<Vec<Taken>, TakeError> {
        match self.policy {
            FailurePolicy::Open => self.fallback.take_now(checks, now).map_err(TakeError::Refused),
            FailurePolicy::Closed => Err(TakeError::Unavailable),
        }
    }
}

#[async_trait::async_trait]
impl RateBackend for RedisBackend {
    async fn take(&self, checks: &[Check], now: i64) -> Result<Vec<Taken>, TakeError> {
        if self.resting() {
            return self.fall_back(checks, now);
        }
        let mut invocation = self.take.prepare_invoke();
        invocation.arg(now);
        for check in checks {
            invocation.key(self.key(&check.bucket));
            let cost = i64::try_from(check.cost).unwrap_or(i64::MAX);
            invocation.arg(check.rate.period_us).arg(check.rate.drain_us(cost));
        }
        let mut connection = self.connection.clone();
        let reply: redis::RedisResult<Vec<i64>> = invocation.invoke_async(&mut connection).await;
        match reply {
            Ok(values) if values.first() == Some(&1) => Ok(checks
                .iter()
                .zip(&values[1..])
                .map(|(check, tat)| super::gcra::taken(*tat, now, check.rate))
                .collect()),
            Ok(values) => {
                let get = |i: usize| values.get(i).copied().unwrap_or(0);
                let index = usize::try_from(get(1)).unwrap_or(0);
                let used = checks.get(index).map_or(0, |check| check.rate.units_held(get(2)));
                Err(TakeError::Refused(Refusal { index, used, retry_after_us: get(3) }))
            }
            Err(error) => {
                self.unavailable(&error);
                self.fall_back(checks, now)
            }
        }
    }

    async fn adjust(&self, bucket: &BucketId, rate: Rate, delta: i64, now: i64) {
        if self.resting() {
            return self.fallback.adjust_now(bucket, rate, delta, now);
        }
        let mut invocation = self.adjust.prepare_invoke();
        invocation.key(self.key(bucket)).arg(now).arg(rate.drain_us(delta));
        let mut connection = self.connection.clone();
        let reply: redis::RedisResult<i64> = invocation.invoke_async(&mut connection).await;
        if let Err(error) = reply {
            self.unavailable(&error);
            self.fallback.adjust_now(bucket, rate, delta, now);
        }
    }

    async fn add_spend(&self, counter: &str, seed: i64, nanos: i64) -> Option<i64> {
        // Spend Redis could not take waits here and rides on the next add.
        let owed = self.unsent_spend.lock().remove(counter).unwrap_or(0);
        let nanos = nanos.saturating_add(owed);
        let keep = |this: &Self| {
            *this.unsent_spend.lock().entry(counter.to_owned()).or_insert(0) += nanos;
            None
        };
        if self.resting() {
            return keep(self);
        }
        let mut invocation = self.spend.prepare_invoke();
        invocation.key(format!("{}{counter}", self.prefix)).arg(seed).arg(nanos);
        let mut connection = self.connection.clone();
        let reply: redis::RedisResult<i64> = invocation.invoke_async(&mut connection).await;
        match reply {
            Ok(total) => Some(total),
            Err(error) => {
                self.unavailable(&error);
                keep(self)
            }
        }
    }

    async fn acquire_slots(&self, slots: &[(Owner, u64)]) -> Option<Result<SharedLease, TakeError>> {
        let unavailable = || match self.policy {
            FailurePolicy::Open => None,
            FailurePolicy::Closed => Some(Err(TakeError::Unavailable)),
        };
        if self.resting() {
            return unavailable();
        }
        let n = self.leases.next.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{n}", self.leases.origin);
        let keys: Vec<String> =
            slots.iter().map(|(owner, _)| format!("{}inflight:{}", self.prefix, owner.key())).collect();
        let mut invocation = self.acquire.prepare_invoke();
        invocation.arg(now_ms()).arg(LEASE_MS).arg(&member);
        for (key, (_, max)) in keys.iter().zip(slots) {
            invocation.key(key).arg(*max);
        }
        // Registered before the call: a lease taken by a call that then
        // times out is still released (or expires).
        self.leases.live.lock().insert(member.clone(), keys);
        let held = Held { leases: Arc::clone(&self.leases), member };
        let mut connection = self.connection.clone();
        let reply: redis::RedisResult<i64> = invocation.invoke_async(&mut connection).await;
        match reply {
            Ok(-1) => Some(Ok(SharedLease(Box::new(held)))),
            Ok(index) => {
                // Nothing was added; forget it without a release round trip.
                self.leases.live.lock().remove(&held.member);
                Some(Err(TakeError::Refused(Refusal {
                    index: usize::try_from(index).unwrap_or(0),
                    used: 0,
                    retry_after_us: 0,
                })))
            }
            Err(error) => {
                self.unavailable(&error);
                drop(held);
                unavailable()
            }
        }
    }

    async fn health(&self) -> Result<(), Degraded> {
        let mut connection = self.connection.clone();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
        pong.map(drop).map_err(|error| Degraded {
            reason: format!("redis unreachable ({:?})", error.kind()),
            serving: self.policy == FailurePolicy::Open,
        })
    }

    async fn prune(&self, now: i64) {
        // Redis keys expire by themselves; only the local fallback needs it.
        self.fallback.prune_now(now);
    }
}

fn now_ms() -> i64 {
    crate::clock::Clock::now_millis(&crate::clock::SystemClock)
}
