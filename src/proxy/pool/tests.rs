use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::*;
use crate::config::UpstreamKind;

fn member(name: &str, weight: u32, models: &[&str], limits: MemberLimits) -> Member {
    let upstream = Upstream {
        name: name.into(),
        base: reqwest::Url::parse("http://127.0.0.1:1/v1").unwrap(),
        credential: None,
        client: reqwest::Client::new(),
        kind: UpstreamKind::OpenAi,
    };
    Member::new(upstream, weight, models.iter().map(|m| (*m).to_owned()).collect(), limits)
}

fn pool(members: Vec<Member>) -> Pool {
    Pool::new("p".into(), Vec::new(), members, Breaker::default(), 0, Duration::from_secs(60))
}

fn answer(status: StatusCode) -> reqwest::Response {
    reqwest::Response::from(http::Response::builder().status(status).body("").unwrap())
}

fn policy(retries: usize, repeatable: bool) -> RetryPolicy {
    RetryPolicy { retries, deadline: Instant::now() + Duration::from_secs(60), repeatable }
}

#[test]
fn the_least_loaded_member_for_its_weight_is_picked() {
    let p = pool(vec![member("a", 1, &[], MemberLimits::default()), member("b", 3, &[], MemberLimits::default())]);
    // Equal latency: two in flight on b (weight 3) weigh less than one on a.
    p.members[0].health.inflight.store(1, Ordering::Relaxed);
    p.members[1].health.inflight.store(2, Ordering::Relaxed);
    assert_eq!(p.pick(Some("m"), 0, &[]), Some(1));
    p.members[1].health.inflight.store(6, Ordering::Relaxed);
    assert_eq!(p.pick(Some("m"), 0, &[]), Some(0));
    // A slow member is passed over while a fast one is free.
    p.members[0].health.inflight.store(0, Ordering::Relaxed);
    p.members[1].health.inflight.store(0, Ordering::Relaxed);
    p.members[0].health.latency_us.store(500_000, Ordering::Relaxed);
    p.members[1].health.latency_us.store(2_000, Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(p.pick(Some("m"), 0, &[]), Some(1));
    }
    assert_eq!(p.pick(Some("m"), 0, &[1]), Some(0), "tried members are skipped");
}

#[test]
fn a_member_serves_only_its_models_and_within_its_own_limits() {
    let limits = MemberLimits { requests_per_minute: Some(2), tokens_per_minute: None };
    let p =
        pool(vec![member("mini", 1, &["gpt-4o-mini"], limits), member("any", 1000, &["*"], MemberLimits::default())]);
    p.members[1].health.inflight.store(10_000, Ordering::Relaxed);
    assert_eq!(p.pick(Some("gpt-4o"), 0, &[]), Some(1));
    assert_eq!(p.pick(Some("gpt-4o-mini"), 0, &[]), Some(0));
    assert_eq!(p.pick(Some("gpt-4o-mini"), 0, &[]), Some(0));
    // Its two requests a minute are spent: the other member takes the third.
    assert_eq!(p.pick(Some("gpt-4o-mini"), 0, &[]), Some(1));

    let tokens = MemberLimits { requests_per_minute: None, tokens_per_minute: Some(1_000) };
    let p = pool(vec![member("t", 1, &[], tokens)]);
    assert_eq!(p.pick(None, 800, &[]), Some(0));
    assert_eq!(p.pick(None, 800, &[]), None, "a minute holds 1000 tokens");
    assert!(p.counts_tokens());
}

#[tokio::test]
async fn failures_open_the_circuit_and_one_request_tries_it_after_the_cooldown() {
    let breaker = Breaker { failures: 2, cooldown: Duration::from_millis(50), ..Breaker::default() };
    // `a` alone serves "m" (a pool of one would never take it out).
    let members =
        vec![member("a", 1, &["m"], MemberLimits::default()), member("b", 1, &["other"], MemberLimits::default())];
    let p = Pool::new("p".into(), Vec::new(), members, breaker, 0, Duration::from_secs(60));
    let m = Some("m");
    let fail = |_: &Member| async { Outcome::Failed { timed_out: false, sent: false } };
    for _ in 0..2 {
        assert!(matches!(p.forward(m, 0, policy(0, true), fail).await, Forwarded::Exhausted { .. }));
    }
    assert_eq!(p.status()[0].state, "open");
    assert_eq!(p.pick(m, 0, &[]), None, "open: skipped");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(p.status()[0].state, "half_open");
    assert_eq!(p.pick(m, 0, &[]), Some(0), "half-open: one trial");
    assert_eq!(p.pick(m, 0, &[]), None, "and only one");
    p.members[0].health.trial.store(false, Ordering::Release);
    let ok = |_: &Member| async { Outcome::Answer(answer(StatusCode::OK)) };
    assert!(matches!(p.forward(m, 0, policy(0, true), ok).await, Forwarded::Served { .. }));
    assert_eq!(p.status()[0].state, "healthy");
    assert_eq!(p.status()[0].consecutive_failures, 0);
}

#[tokio::test]
async fn a_rejected_provider_key_fails_over_is_reported_once_and_never_passed_on() {
    let p =
        pool(vec![member("bad", 1000, &[], MemberLimits::default()), member("good", 1, &[], MemberLimits::default())]);
    let send = |m: &Member| {
        let status = if m.name() == "bad" { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
        async move {
            if status == StatusCode::OK {
                Outcome::Answer(answer(status))
            } else {
                Outcome::Refused(answer(status))
            }
        }
    };
    match p.forward(None, 0, policy(2, false), send).await {
        Forwarded::Served { member, attempts, .. } => {
            assert_eq!(member.name(), "good");
            assert_eq!(attempts.len(), 1);
            assert!(attempts[0].credential_rejected, "{attempts:?}");
            assert!(attempts[0].outcome.contains("401"));
        }
        Forwarded::Exhausted { .. } => panic!("the good member serves"),
    }
    let status = p.status();
    assert_eq!((status[0].state, status[0].credential_rejected), ("open", true));
    // Out of rotation: the next request goes straight to the good member.
    match p.forward(None, 0, policy(2, false), send).await {
        Forwarded::Served { member, attempts, .. } => assert_eq!((member.name(), attempts.len()), ("good", 0)),
        Forwarded::Exhausted { .. } => panic!("the good member serves"),
    }
    // Alone, a rejected key is never the answer: the caller makes its own error.
    let alone = pool(vec![member("bad", 1, &[], MemberLimits::default())]);
    assert!(matches!(alone.forward(None, 0, policy(0, false), send).await, Forwarded::Exhausted { last: None, .. }));
}

#[tokio::test]
async fn a_request_that_may_have_started_is_not_sent_twice_unless_it_is_repeatable() {
    let p = pool(vec![member("a", 1, &[], MemberLimits::default()), member("b", 1, &[], MemberLimits::default())]);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let server_error = |_: &Member| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Outcome::Refused(answer(StatusCode::BAD_GATEWAY)) }
    };
    match p.forward(None, 0, policy(1, false), server_error).await {
        // The member's own 502 is passed on, after one try.
        Forwarded::Exhausted { last: Some((_, response)), attempts, .. } => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(attempts.len(), 1);
        }
        _ => panic!("a 502 is not served"),
    }
    assert_eq!(calls.swap(0, Ordering::Relaxed), 1);
    assert!(matches!(p.forward(None, 0, policy(1, true), server_error).await, Forwarded::Exhausted { .. }));
    assert_eq!(calls.swap(0, Ordering::Relaxed), 2, "a repeatable request tries the other member");
    let timeout = |_: &Member| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Outcome::Failed { timed_out: true, sent: true } }
    };
    assert!(matches!(
        p.forward(None, 0, policy(1, false), timeout).await,
        Forwarded::Exhausted { timed_out: true, .. }
    ));
    assert_eq!(calls.swap(0, Ordering::Relaxed), 1);
    let throttled = |_: &Member| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Outcome::Refused(answer(StatusCode::TOO_MANY_REQUESTS)) }
    };
    // Fresh members: the failures above took these out.
    let p = pool(vec![member("a", 1, &[], MemberLimits::default()), member("b", 1, &[], MemberLimits::default())]);
    assert!(matches!(
        p.forward(None, 0, policy(1, false), throttled).await,
        Forwarded::Exhausted { last: Some(_), .. }
    ));
    assert_eq!(calls.swap(0, Ordering::Relaxed), 2, "a 429 did no work: any request goes on");
}

#[test]
fn only_requests_without_side_effects_are_repeatable() {
    for (method, path, repeatable) in [
        (Method::GET, "/models", true),
        (Method::POST, "/chat/completions", true),
        (Method::POST, "/embeddings?x=1", true),
        (Method::POST, "/responses", false),
        (Method::POST, "/files", false),
        (Method::POST, "/batches", false),
        (Method::DELETE, "/files/f", false),
    ] {
        assert_eq!(RetryPolicy::repeatable(&method, path), repeatable, "{method} {path}");
    }
}

#[tokio::test]
async fn a_try_abandoned_mid_way_leaves_no_load_and_no_trial_behind() {
    let breaker = Breaker { failures: 1, cooldown: Duration::from_millis(10), ..Breaker::default() };
    let members = vec![member("a", 1, &[], MemberLimits::default()), member("b", 1, &[], MemberLimits::default())];
    let p = Pool::new("p".into(), Vec::new(), members, breaker, 0, Duration::from_secs(60));
    let fail = |_: &Member| async { Outcome::Failed { timed_out: false, sent: false } };
    let _ = p.forward(Some("m"), 0, policy(1, true), fail).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Both half-open; the client hangs up while a trial is in flight.
    let hang = |_: &Member| std::future::pending::<Outcome>();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(20), p.forward(Some("m"), 0, policy(0, true), hang)).await;
    assert!(cancelled.is_err());
    for status in p.status() {
        assert_eq!(status.inflight, 0, "{status:?}");
    }
    assert!(p.members.iter().all(|m| !m.health.trial.load(Ordering::Acquire)), "the trial is free again");
    assert!(p.pick(Some("m"), 0, &[]).is_some());
}

#[tokio::test]
async fn a_403_is_about_the_request_it_fails_over_and_leaves_the_member_in_rotation() {
    let p = pool(vec![member("a", 1000, &[], MemberLimits::default()), member("b", 1, &[], MemberLimits::default())]);
    let forbidden = |_: &Member| async { Outcome::Refused(answer(StatusCode::FORBIDDEN)) };
    match p.forward(Some("m"), 0, policy(1, false), forbidden).await {
        // Nobody serves: the last member's own 403 is the answer.
        Forwarded::Exhausted { last: Some((_, response)), attempts, .. } => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            assert_eq!(attempts.len(), 2);
            assert!(attempts.iter().all(|a| !a.credential_rejected));
        }
        _ => panic!("a 403 is not served"),
    }
    assert!(p.status().iter().all(|m| m.state == "healthy" && !m.credential_rejected));
}

#[tokio::test]
async fn a_pool_of_one_never_takes_its_member_out() {
    let p = pool(vec![member("only", 1, &[], MemberLimits::default())]);
    let down = |_: &Member| async { Outcome::Failed { timed_out: false, sent: false } };
    for _ in 0..5 {
        let _ = p.forward(Some("m"), 0, policy(0, true), down).await;
    }
    let throttled = |_: &Member| async { Outcome::Refused(answer(StatusCode::TOO_MANY_REQUESTS)) };
    let _ = p.forward(Some("m"), 0, policy(0, true), throttled).await;
    assert_eq!(p.status()[0].state, "healthy");
    assert_eq!(p.status()[0].consecutive_failures, 6);
    assert_eq!(p.pick(Some("m"), 0, &[]), Some(0), "always tried: its own answer beats a 503");
}

#[test]
fn a_request_without_a_model_goes_to_the_first_member_in_rotation() {
    let p = pool(vec![
        member("files-home", 1, &[], MemberLimits::default()),
        member("b", 1000, &[], MemberLimits::default()),
    ]);
    for _ in 0..5 {
        assert_eq!(p.pick(None, 0, &[]), Some(0), "the objects a request names live with one account");
    }
    assert_eq!(p.pick(Some("gpt-4o"), 0, &[]), Some(1));
}
