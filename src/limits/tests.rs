use std::sync::Arc;

use super::gcra::{step, DAY_US, MINUTE_US};
use super::*;
use crate::clock::ManualClock;

fn limiter(clock: Arc<ManualClock>) -> Limiter {
    Limiter::new(Arc::new(LocalBackend::default()), Arc::new(Budgets::default()), clock, Some(3))
}

fn bucket(dimension: Dimension) -> BucketId {
    BucketId { owner: Owner::Client("192.0.2.1".parse().unwrap()), dimension }
}

#[test]
fn the_burst_equals_the_limit_then_one_per_interval() {
    let backend = LocalBackend::default();
    let check = Check { bucket: bucket(Dimension::RequestsPerMinute), rate: Rate::per_minute(5), cost: 1 };
    let now = 1_000 * MINUTE_US;
    for i in 0..5 {
        let taken = backend.take_now(std::slice::from_ref(&check), now).unwrap();
        assert_eq!(taken[0].remaining, 4 - i);
    }
    let refusal = backend.take_now(std::slice::from_ref(&check), now).unwrap_err();
    assert_eq!(refusal.used, 5);
    assert_eq!(refusal.retry_after_us, 12_000_000, "one request frees every 60/5 s");
    assert!(backend.take_now(std::slice::from_ref(&check), now + 11_999_999).is_err());
    let taken = backend.take_now(std::slice::from_ref(&check), now + 12_000_000).unwrap();
    assert_eq!(taken[0].remaining, 0);
    assert_eq!(taken[0].reset_us, MINUTE_US);
}

#[test]
fn limits_that_do_not_divide_the_period_are_never_exceeded() {
    // 40M and 150M tokens a minute: a whole-µs interval would admit 60M for
    // the first and cap the second at 60M.
    for limit in [7_000_000u64, 40_000_000, 150_000_000] {
        let backend = LocalBackend::default();
        let now = 1_000 * MINUTE_US;
        let check = |cost| Check { bucket: bucket(Dimension::TokensPerMinute), rate: Rate::per_minute(limit), cost };
        let taken = backend.take_now(&[check(limit)], now).unwrap();
        assert_eq!(taken[0].remaining, 0, "the whole limit fits once");
        assert_eq!(taken[0].reset_us, MINUTE_US);
        let refusal = backend.take_now(&[check(1)], now).unwrap_err();
        assert_eq!(refusal.used, limit);
        assert!(
            backend.take_now(&[check(limit / 2)], now + MINUTE_US / 2 - 1).is_err(),
            "{limit}: not before half drained"
        );
        assert!(
            backend.take_now(&[check(limit / 2)], now + MINUTE_US / 2 + 1).is_ok(),
            "{limit}: half drained in half a minute"
        );
    }
}

#[test]
fn a_take_is_all_or_nothing() {
    let backend = LocalBackend::default();
    let minute = Check { bucket: bucket(Dimension::RequestsPerMinute), rate: Rate::per_minute(10), cost: 1 };
    let day = Check { bucket: bucket(Dimension::RequestsPerDay), rate: Rate::per_day(1), cost: 1 };
    let now = DAY_US;
    backend.take_now(&[minute.clone(), day.clone()], now).unwrap();
    let refusal = backend.take_now(&[minute.clone(), day], now).unwrap_err();
    assert_eq!(refusal.index, 1);
    // The minute bucket was not charged by the refused take: 9 are left.
    let taken = backend.take_now(std::slice::from_ref(&minute), now).unwrap();
    assert_eq!(taken[0].remaining, 8);
}

#[test]
fn an_owner_checked_in_two_places_of_one_take_sees_its_own_steps() {
    let backend = LocalBackend::default();
    let owner = |ip: &str| Owner::Client(ip.parse().unwrap());
    let check = |ip: &str| Check {
        bucket: BucketId { owner: owner(ip), dimension: Dimension::RequestsPerMinute },
        rate: Rate::per_minute(2),
        cost: 1,
    };
    let now = 1_000 * MINUTE_US;
    // Owners in as many shards as it takes: `a` before and after `b`.
    let others: Vec<Check> = (1..=8).map(|i| check(&format!("198.51.100.{i}"))).collect();
    let mut checks = vec![check("192.0.2.1")];
    checks.extend(others.iter().cloned());
    checks.push(check("192.0.2.1"));
    let taken = backend.take_now(&checks, now).unwrap();
    assert_eq!((taken[0].remaining, taken[9].remaining), (1, 0), "the second check of `a` sees the first");
    assert!(taken[1..9].iter().all(|t| t.remaining == 1));
    // `a` is full: a take that needs it again fails and charges no one.
    let refusal = backend.take_now(&[others[0].clone(), check("192.0.2.1")], now).unwrap_err();
    assert_eq!(refusal.index, 1);
    assert_eq!(backend.take_now(std::slice::from_ref(&others[0]), now).unwrap()[0].remaining, 0);
}

#[test]
fn pruning_keeps_what_is_still_held_and_forgets_what_drained() {
    let backend = LocalBackend::default();
    let now = 1_000 * MINUTE_US;
    let requests = Check { bucket: bucket(Dimension::RequestsPerMinute), rate: Rate::per_minute(1), cost: 1 };
    let tokens = Check { bucket: bucket(Dimension::TokensPerMinute), rate: Rate::per_minute(1_000), cost: 10 };
    backend.take_now(&[requests.clone(), tokens.clone()], now).unwrap();
    // A second later the tokens have drained (10 of 1,000 a minute take
    // 0.6 s); the request is held for the rest of the minute.
    backend.prune_now(now + 1_000_000);
    assert!(backend.take_now(std::slice::from_ref(&requests), now + 1_000_000).is_err());
    let all = Check { cost: 1_000, ..tokens };
    assert_eq!(backend.take_now(std::slice::from_ref(&all), now + 1_000_000).unwrap()[0].remaining, 0);
    // Once everything has drained, the owner starts from full buckets.
    backend.prune_now(now + 2 * MINUTE_US);
    let taken = backend.take_now(&[requests, all], now + 2 * MINUTE_US).unwrap();
    assert_eq!(taken.iter().map(|t| t.remaining).collect::<Vec<_>>(), [0, 0]);
}

#[test]
fn token_costs_larger_than_the_limit_never_fit() {
    assert!(step(i64::MIN, 0, Rate::per_minute(100), 101).is_err());
    assert!(step(i64::MIN, 0, Rate::per_minute(100), 100).is_ok());
}

#[test]
fn adjusting_gives_back_an_overestimate() {
    let backend = LocalBackend::default();
    let tokens = Check { bucket: bucket(Dimension::TokensPerMinute), rate: Rate::per_minute(1000), cost: 900 };
    backend.take_now(std::slice::from_ref(&tokens), 0).unwrap();
    assert!(backend.take_now(std::slice::from_ref(&tokens), 0).is_err());
    backend.adjust_now(&tokens.bucket, tokens.rate, -800, 0);
    assert!(backend.take_now(std::slice::from_ref(&tokens), 0).is_ok(), "100 used + 900 fits in 1000");
}

#[tokio::test]
async fn the_failed_auth_throttle_counts_per_client() {
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let limiter = limiter(clock.clone());
    let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    for _ in 0..3 {
        assert!(limiter.failed_auth(a).await.is_none());
    }
    assert!(matches!(limiter.failed_auth(a).await, Some(Exceeded::Rate { limit: 3, .. })));
    assert!(limiter.failed_auth(b).await.is_none(), "another client is not affected");
    clock.advance(20);
    assert!(limiter.failed_auth(a).await.is_none(), "one failure frees every 20 s");
}

#[tokio::test]
async fn leak_reports_have_their_own_per_client_limit_apart_from_failed_auth() {
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let limiter = limiter(clock.clone()).with_leak_reports(Some(2));
    let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    for _ in 0..2 {
        assert!(limiter.leak_report(a).await.is_none());
    }
    assert!(
        matches!(limiter.leak_report(a).await, Some(Exceeded::Rate { limit: 2, ref owner, .. }) if owner == "leak reports from client 192.0.2.1")
    );
    assert!(limiter.failed_auth(a).await.is_none(), "reports do not use up the failed-auth throttle");
    assert!(limiter.leak_report(b).await.is_none(), "another client is not affected");
    clock.advance(30);
    assert!(limiter.leak_report(a).await.is_none(), "one report frees every 30 s");
    let unlimited = super::Limiter::new(Arc::new(LocalBackend::default()), Arc::new(Budgets::default()), clock, None);
    for _ in 0..100 {
        assert!(unlimited.leak_report(a).await.is_none());
    }
}

#[test]
fn in_flight_slots_are_freed_on_drop() {
    let inflight = Inflight::default();
    let owner = Owner::Project("proj_1".into(), None);
    let first = inflight.acquire(owner.clone(), 2).unwrap();
    let _second = inflight.acquire(owner.clone(), 2).unwrap();
    assert!(inflight.acquire(owner.clone(), 2).is_none());
    drop(first);
    assert_eq!(inflight.held(&owner), 1);
    assert!(inflight.acquire(owner, 2).is_some());
}

#[test]
fn budgets_reset_each_month() {
    let budgets = Budgets::default();
    let scope = BudgetScope::Project("proj_1".into());
    let nov = 1_795_000_000; // 2026-11-18
    assert_eq!(budgets.add(&scope, 500, nov), 500);
    assert_eq!(budgets.spent(&scope, nov + 86_400), 500);
    let december = month_start(nov) + 31 * 86_400;
    assert_eq!(budgets.spent(&scope, december), 0);
    assert_eq!(crate::time::rfc3339(month_start(nov)), "2026-11-01T00:00:00Z");
}

// === properties ===

use futures_util::FutureExt as _;
use proptest::prelude::*;

fn owner(n: u8) -> Owner {
    Owner::Client(std::net::IpAddr::from([192, 0, 2, n]))
}

/// Takes on one bucket at random times (µs steps) with random costs.
fn takes(limit: u64) -> impl Strategy<Value = Vec<(i64, u64)>> {
    prop::collection::vec((0..MINUTE_US / 4, 1..=limit), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    /// GCRA's guarantee: the burst is the limit, then the rate. Over any span
    /// `[a, b]` of take times, admitted units are at most `limit` plus what
    /// drains in `b - a` (so never more than `limit` at one instant).
    #[test]
    fn admitted_units_never_exceed_the_burst_plus_the_rate(
        (limit, steps) in prop_oneof![1..=50u64, 1_000_000..=150_000_000u64]
            .prop_flat_map(|limit| (Just(limit), takes(limit))),
    ) {
        let backend = LocalBackend::default();
        let rate = Rate::per_minute(limit);
        let mut now = 1_000 * MINUTE_US;
        let mut admitted: Vec<(i64, u64)> = Vec::new();
        for (advance, cost) in steps {
            now += advance;
            let check = Check { bucket: BucketId { owner: owner(1), dimension: Dimension::TokensPerMinute }, rate, cost };
            if backend.take_now(std::slice::from_ref(&check), now).is_ok() {
                admitted.push((now, cost));
            }
        }
        for (i, &(a, _)) in admitted.iter().enumerate() {
            let mut sum = 0u128;
            for &(b, cost) in &admitted[i..] {
                sum += u128::from(cost);
                let allowed = u128::from(limit) + u128::from(rate.units_in(b - a));
                prop_assert!(sum <= allowed, "{} units in [{}, {}] with limit {}", sum, a, b, limit);
            }
        }
    }

    /// A take refused by one check leaves every bucket of the take as it was:
    /// a twin backend with the same history, spared the refused take, answers
    /// every later take the same.
    #[test]
    fn a_refused_take_charges_no_one(
        history in prop::collection::vec((0u8..4, 1..=5u64), 0..20),
        attempt in prop::collection::vec((0u8..4, any::<bool>(), 1..=5u64), 1..6),
        probes in prop::collection::vec((0u8..4, any::<bool>()), 1..12),
    ) {
        let check = |who: u8, day: bool, cost: u64| {
            let (dimension, rate) = if day {
                (Dimension::RequestsPerDay, Rate::per_day(6))
            } else {
                (Dimension::RequestsPerMinute, Rate::per_minute(5))
            };
            Check { bucket: BucketId { owner: owner(who), dimension }, rate, cost }
        };
        let (tried, twin) = (LocalBackend::default(), LocalBackend::default());
        let now = DAY_US;
        for &(who, cost) in &history {
            let checks = [check(who, false, cost)];
            prop_assert_eq!(tried.take_now(&checks, now).is_ok(), twin.take_now(&checks, now).is_ok());
        }
        let attempt: Vec<Check> = attempt.into_iter().map(|(who, day, cost)| check(who, day, cost)).collect();
        prop_assume!(tried.take_now(&attempt, now).is_err());
        for (who, day) in probes {
            let probe = [check(who, day, 1)];
            prop_assert_eq!(tried.take_now(&probe, now), twin.take_now(&probe, now));
        }
    }

    /// Settling an estimate back down never frees more than it took.
    #[test]
    fn giving_back_a_take_never_frees_more_than_it_took(
        limit in 1..=1_000_000u64,
        first in 0.0..1.0f64,
        second in 0.0..1.0f64,
    ) {
        let rate = Rate::per_minute(limit);
        let bucket = BucketId { owner: owner(1), dimension: Dimension::TokensPerMinute };
        let (settled, twin) = (LocalBackend::default(), LocalBackend::default());
        let now = MINUTE_US;
        let held = ((limit as f64 * first) as u64).max(1);
        let taken = ((limit as f64 * second) as u64).clamp(1, limit);
        for backend in [&settled, &twin] {
            backend.take_now(&[Check { bucket: bucket.clone(), rate, cost: held }], now).unwrap();
        }
        if settled.take_now(&[Check { bucket: bucket.clone(), rate, cost: taken }], now).is_ok() {
            settled.adjust_now(&bucket, rate, -i64::try_from(taken).unwrap(), now);
        }
        let remaining = |b: &LocalBackend| b.take_now(&[Check { bucket: bucket.clone(), rate, cost: 0 }], now).unwrap()[0].remaining;
        let (after, before) = (remaining(&settled), remaining(&twin));
        prop_assert!(after <= before && after + 1 >= before, "{} left after settling, {} before", after, before);
    }

    /// The failed-auth throttle on a fake clock: a client over it is told how
    /// long to wait, and after exactly that wait it is let through once;
    /// refused failures do not push the wait further.
    #[test]
    fn the_throttle_admits_again_after_the_wait_it_announced(
        events in prop::collection::vec((0..30_000i64, 0u8..3), 1..80),
    ) {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let limiter = limiter(clock.clone());
        for (advance, who) in events {
            clock.advance_millis(advance);
            let client = std::net::IpAddr::from([192, 0, 2, who]);
            let outcome = limiter.failed_auth(client).now_or_never().unwrap();
            if let Some(Exceeded::Rate { retry_after_ms, limit, used, .. }) = outcome {
                prop_assert_eq!(limit, 3);
                prop_assert!(used <= limit);
                prop_assert!(retry_after_ms > 0 && retry_after_ms <= 20_000, "{}", retry_after_ms);
                clock.advance_millis(retry_after_ms);
                prop_assert!(limiter.failed_auth(client).now_or_never().unwrap().is_none());
            }
        }
    }
}
