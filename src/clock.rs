//! The one clock: expiry, grace periods, last-used times, rate-limit windows
//! and anomaly windows all read time through [`Clock`], so tests move time
//! instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::Timestamp;

pub trait Clock: Send + Sync + 'static {
    /// Unix milliseconds (rate limits need sub-second time).
    fn now_millis(&self) -> i64;

    /// Unix seconds.
    fn now(&self) -> Timestamp {
        self.now_millis().div_euclid(1000)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

pub fn unix_now() -> Timestamp {
    SystemClock.now()
}

/// A clock tests set and advance by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `at` unix seconds.
    pub fn new(at: Timestamp) -> Self {
        Self(AtomicI64::new(at * 1000))
    }

    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1000, Ordering::SeqCst);
    }

    pub fn advance_millis(&self, millis: i64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
