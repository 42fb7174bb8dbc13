//! Micro-benchmarks of the per-request path: key parse and checksum, index
//! lookup at 1k/100k/1M keys, the whole authentication decision, the limiter,
//! auth + limit at 1M keys (cold and just-written request headers), error
//! rendering, picking a pool member. `cargo bench --bench hot_path`.
#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a broken benchmark

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use keygate::auth::{authenticate, Admission, Authorized, KeyIndex, Plane};
use keygate::clock::SystemClock;
use keygate::dialect::{render_openai, ApiError};
use keygate::key::KeyDigest;
use keygate::limits::{Budgets, FailurePolicy, Limiter, LocalBackend, RedisBackend};
use keygate::policy::{data_plane_scope, RateLimits};

/// The allocator the gateway binary runs with: at a million keys the cost is
/// in where allocations land (cache lines, pages), so measure with the one
/// that ships.
mod support;

use support::{project, record};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An index of `n` keys and one key string in it.
fn index_of(n: usize) -> (KeyIndex, String) {
    let mut records = Vec::with_capacity(n);
    let (first, key) = record(RateLimits::default());
    records.push(first);
    for _ in 1..n {
        records.push(record(RateLimits::default()).0);
    }
    (KeyIndex::new(records, vec![project()]), key)
}

/// A chat completion on the data plane, as the authentication benchmarks see it.
fn chat_admission() -> Admission<'static> {
    Admission {
        plane: Plane::Data,
        scope: data_plane_scope(&Method::POST, "/v1/chat/completions"),
        client_ip: Some("192.0.2.1".parse().unwrap()),
        organization_id: "org-bench",
        azure: false,
        key_in_query: false,
        now: 1_800_000_000,
    }
}

fn key_format(c: &mut Criterion) {
    let (_, key) = record(RateLimits::default());
    c.bench_function("key parse + checksum", |b| b.iter(|| keygate::key::parse(black_box(&key)).is_ok()));
    c.bench_function("key sha256", |b| b.iter(|| KeyDigest::of(black_box(&key))));
}

fn index(c: &mut Criterion) {
    let mut group = c.benchmark_group("index lookup");
    for n in [1_000usize, 100_000, 1_000_000] {
        let (index, key) = index_of(n);
        let digest = KeyDigest::of(&key);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| index.lookup(black_box(&digest)).is_some())
        });
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("authentication decision");
    for n in [1_000usize, 1_000_000] {
        let (index, key) = index_of(n);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
        let admission = chat_admission();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| authenticate(&index, black_box(&headers), &admission).is_ok())
        });
    }
    group.finish();
}

/// Limits that admit everything the benchmarks send: the work is all there,
/// the refusals never come.
fn generous() -> RateLimits {
    RateLimits {
        max_requests_per_1_minute: Some(1_000_000_000),
        max_tokens_per_1_minute: Some(1_000_000_000_000),
        ..RateLimits::default()
    }
}

/// `n` keys with limits, the headers presenting `sample` of them (spread over
/// the index), and a local limiter that has seen each of those once.
/// Requests take them in a stride, so consecutive ones touch different
/// memory; 100k keys in use outgrow the CPU caches.
fn limited_keys(n: usize, sample: usize) -> (KeyIndex, Vec<HeaderMap>, Limiter) {
    let mut records = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(sample);
    for i in 0..n {
        let (record, key) = record(generous());
        records.push(record);
        if i % (n / sample).max(1) == 0 && headers.len() < sample {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
            headers.push(h);
        }
    }
    let index = KeyIndex::new(records, vec![project()]);
    let limiter =
        Limiter::new(Arc::new(LocalBackend::default()), Arc::new(Budgets::default()), Arc::new(SystemClock), None);
    for h in &headers {
        admit(&limiter, &authenticate(&index, h, &chat_admission()).unwrap());
    }
    (index, headers, limiter)
}

/// A chat completion through the local limiter (which never waits).
fn admit(limiter: &Limiter, authorized: &Authorized) -> bool {
    futures_util::FutureExt::now_or_never(limiter.admit(authorized, Some("gpt-4o"), 10)).is_some_and(|r| r.is_ok())
}

fn limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter admit (RPM + TPM)");
    for n in [1_000usize, 100_000] {
        let (index, headers, limiter) = limited_keys(n, n);
        let keys: Vec<Authorized> =
            headers.iter().map(|h| authenticate(&index, h, &chat_admission()).unwrap()).collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                admit(&limiter, &keys[i])
            })
        });
    }
    group.finish();
}

/// The whole decision a request waits for before it goes upstream: parse,
/// digest, lookup, authorization, then the limiter (RPM + TPM), with up to
/// 100k of the index's keys in use.
fn auth_and_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth + limit decision");
    let admission = chat_admission();
    for n in [1_000usize, 1_000_000] {
        let (index, headers, limiter) = limited_keys(n, n.min(100_000));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % headers.len();
                admit(&limiter, &authenticate(&index, black_box(&headers[i]), &admission).unwrap())
            })
        });
    }
    group.finish();
}

/// The same decision at a million keys, with the request's headers as the
/// server hands them over: just written into the map, so in cache. Above,
/// each request's header map is one of 100k built at start and cold (misses
/// a gateway does not pay: its parser has just written them). Here each
/// iteration copies its key from one buffer of all 100k into a fresh header
/// value first, and that counts: one cold read of the key's bytes and an
/// allocation remain (hyper's values share its read buffer), so this is an
/// upper bound of what the server pays.
fn auth_and_limit_parsed(c: &mut Criterion) {
    let (index, headers, limiter) = limited_keys(1_000_000, 100_000);
    let values: Vec<&[u8]> = headers.iter().map(|h| h[http::header::AUTHORIZATION].as_bytes()).collect();
    let width = values[0].len();
    assert!(values.iter().all(|v| v.len() == width), "generated keys have one length");
    let all: Vec<u8> = values.concat();
    drop(values);
    drop(headers);
    let admission = chat_admission();
    let mut request = HeaderMap::new();
    let mut i = 0;
    let count = all.len() / width;
    c.bench_function("auth + limit decision, headers just parsed/1000000", |b| {
        b.iter(|| {
            i = (i + 7919) % count;
            let value = HeaderValue::from_bytes(&all[i * width..(i + 1) * width]).unwrap();
            request.insert(http::header::AUTHORIZATION, value);
            admit(&limiter, &authenticate(&index, black_box(&request), &admission).unwrap())
        })
    });
}

/// Authentication plus a Redis-backed admit: the per-request cost a replica
/// pays with `--redis` (one Lua round trip). Needs Redis at
/// `KEYGATE_BENCH_REDIS` (default redis://127.0.0.1:6379); skipped without it.
fn redis_limiter(c: &mut Criterion) {
    let url = std::env::var("KEYGATE_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = match runtime.block_on(RedisBackend::connect(&url, "kgbench:", FailurePolicy::Closed)) {
        Ok(backend) => backend,
        Err(error) => {
            eprintln!("skipping the Redis limiter benchmark: {error}");
            return;
        }
    };
    let limiter = Limiter::new(Arc::new(backend), Arc::new(Budgets::default()), Arc::new(SystemClock), None);
    let (record, key) = record(generous());
    let index = KeyIndex::new(vec![record], vec![project()]);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    let admission = chat_admission();
    c.bench_function("auth + Redis limiter admit (RPM + TPM)", |b| {
        b.iter(|| {
            let authorized = authenticate(&index, black_box(&headers), &admission).unwrap();
            runtime.block_on(limiter.admit(&authorized, Some("gpt-4o"), 10)).is_ok()
        })
    });
}

fn rendering(c: &mut Criterion) {
    let error = ApiError::Denied(keygate::auth::Denial::UnknownKey {
        mask: "sk-prod-****abcd".into(),
        foreign: None,
        legacy: false,
    });
    c.bench_function("render OpenAI 401", |b| b.iter(|| render_openai(black_box(&error))));
}

/// Picking a pool member (route by model, then weighted least load among
/// members in rotation): what a pool adds to a request before it is sent.
fn pool_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool pick");
    for members in [1usize, 3, 10] {
        let mut toml = String::from("[[upstreams]]\nname = \"pool\"\nmodels = [\"gpt-4o*\"]\n");
        for i in 0..members {
            toml.push_str(&format!(
                "[[upstreams.members]]\nname = \"m{i}\"\nurl = \"http://127.0.0.1:9/v1\"\nweight = {}\n",
                i + 1
            ));
        }
        let config = keygate::config::Config::from_toml(&toml, &NoEnv).unwrap();
        let upstreams = keygate::proxy::Upstreams::build(&config.upstreams, Some("http://127.0.0.1:9/v1")).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(members), &upstreams, |b, upstreams| {
            b.iter(|| upstreams.route(black_box(Some("gpt-4o-mini"))).pick(Some("gpt-4o-mini"), 0, &[]))
        });
    }
    group.finish();
}

struct NoEnv;

impl keygate::config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

criterion_group!(
    benches,
    pool_pick,
    key_format,
    index,
    decision,
    limiter,
    auth_and_limit,
    auth_and_limit_parsed,
    redis_limiter,
    rendering
);
criterion_main!(benches);
