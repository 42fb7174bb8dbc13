//! Does the authentication decision take the same time whatever a refused key
//! is? A dudect-style test (Reparaz, Balasch, Verbauwhede 2017): the classes of
//! refused keys (unknown, wrong secret for a real id, revoked, suspended,
//! expired, malformed) are measured interleaved in random order, the slowest
//! 10% of each class cropped, and Welch's t between each class and the unknown
//! key reported; |t| above 4.5 says the two are told apart by timing.
//! `cargo bench --bench oracle` (or `bench/oracle.sh`, which keeps the table).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // benchmark: a panic is a broken benchmark, the table is its output

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method};
use keygate::auth::{authenticate, Admission, KeyIndex, Plane};
use keygate::key::{generate, KeyPrefix};
use keygate::policy::data_plane_scope;
use keygate::store::{KeyRecord, KeyState, Revocation};
use rand::seq::SliceRandom;
use rand::Rng;

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_800_000_000;

/// A key of the benchmarks' project in `state`, expiring at `expires_at`.
fn record(state: KeyState, expires_at: Option<i64>) -> (KeyRecord, String) {
    let (mut record, key) = support::record(Default::default());
    record.state = state;
    record.expires_at = expires_at;
    record.revocation = (state == KeyState::Revoked).then_some(Revocation { at: 1, by: None, reason: None });
    (record, key)
}

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    headers
}

/// Changes one character of the key's body, so its checksum fails.
fn mistyped(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

/// Welch's t statistic of two samples.
fn welch(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var, n)
    };
    let ((ma, va, na), (mb, vb, nb)) = (stats(a), stats(b));
    (ma - mb) / (va / na + vb / nb).sqrt()
}

fn cropped(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples.truncate(samples.len() * 9 / 10);
    samples
}

fn main() {
    let keys: usize = std::env::var("KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let samples: usize = std::env::var("SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let mut records = Vec::with_capacity(keys);
    let pool = 64;
    let mut classes: Vec<(&str, Vec<HeaderMap>)> = vec![
        ("unknown key", Vec::new()),
        ("wrong secret", Vec::new()),
        ("revoked", Vec::new()),
        ("suspended", Vec::new()),
        ("expired", Vec::new()),
        ("malformed (checksum)", Vec::new()),
    ];
    for _ in 0..pool {
        let (live, live_key) = record(KeyState::Active, None);
        let (revoked, revoked_key) = record(KeyState::Revoked, None);
        let (suspended, suspended_key) = record(KeyState::Suspended, None);
        let (expired, expired_key) = record(KeyState::Active, Some(NOW - 60));
        let unknown = record(KeyState::Active, None).1;
        let wrong = generate(&KeyPrefix::parse("sk-prod-").unwrap(), &live.id).secret.expose().to_owned();
        for (class, key) in
            [unknown, wrong, revoked_key, suspended_key, expired_key, mistyped(&live_key)].into_iter().enumerate()
        {
            classes[class].1.push(bearer(&key));
        }
        records.extend([live, revoked, suspended, expired]);
    }
    while records.len() < keys {
        records.push(record(KeyState::Active, None).0);
    }
    let index = KeyIndex::new(records, vec![support::project()]);
    let admission = Admission {
        plane: Plane::Data,
        scope: data_plane_scope(&Method::POST, "/v1/chat/completions"),
        client_ip: Some("192.0.2.1".parse().unwrap()),
        organization_id: "org-oracle",
        azure: false,
        key_in_query: false,
        now: NOW,
    };
    let mut rng = rand::thread_rng();
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(samples / classes.len() + 1); classes.len()];
    // Warm caches and branch predictors on every class first.
    for _ in 0..10_000 {
        let class = rng.gen_range(0..classes.len());
        let headers = classes[class].1.choose(&mut rng).unwrap();
        black_box(authenticate(&index, black_box(headers), &admission).is_err());
    }
    for _ in 0..samples {
        let class = rng.gen_range(0..classes.len());
        let headers = classes[class].1.choose(&mut rng).unwrap();
        let started = Instant::now();
        let refused = authenticate(&index, black_box(headers), &admission).is_err();
        let took = started.elapsed().as_nanos() as f64;
        assert!(black_box(refused));
        times[class].push(took);
    }
    let times: Vec<Vec<f64>> = times.into_iter().map(cropped).collect();
    println!("| refused key | samples | mean (ns) | median (ns) | Welch t vs unknown key |");
    println!("|---|---:|---:|---:|---:|");
    for ((name, _), t) in classes.iter().zip(&times) {
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        println!("| {name} | {} | {mean:.0} | {:.0} | {:.1} |", t.len(), t[t.len() / 2], welch(t, &times[0]));
    }
}
