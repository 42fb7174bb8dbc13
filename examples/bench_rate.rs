//! Open-loop load for `bench/run.sh`: requests leave at a fixed rate, whether
//! or not earlier ones have been answered, so the latencies are those of a
//! server under that load (a closed-loop tool such as wrk measures at its own
//! pace instead).
//!
//!     bench_rate URL KEY RATE SECONDS [stream]
//!
//! Prints one line: `RATE <sent> <ok> <p50> <p99> <p99.9> <ttfb p50> <ttfb p99>`,
//! latencies in microseconds (whole answer; first body byte).

// A load generator: its tasks end with the run, and its report is its output.
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;

#[derive(Default)]
struct Samples {
    total: Vec<u64>,
    first_byte: Vec<u64>,
    ok: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, key, rate, seconds, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_rate URL KEY RATE SECONDS [stream]");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().unwrap_or(1000.0);
    let seconds: f64 = seconds.parse().unwrap_or(5.0);
    let stream = rest.first().is_some_and(|s| s == "stream");
    let body =
        format!(r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hello"}}]}}"#);
    let client = reqwest::Client::builder().pool_max_idle_per_host(4096).build().unwrap_or_default();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        ticker.tick().await;
        let due = started.elapsed().as_secs_f64() * rate;
        while (sent as f64) < due {
            sent += 1;
            let (client, samples, url, key, body) =
                (client.clone(), samples.clone(), url.clone(), key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let begun = Instant::now();
                let Ok(response) = client
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                else {
                    return;
                };
                let success = response.status().is_success();
                let mut chunks = response.bytes_stream();
                let mut first_byte = None;
                while let Some(chunk) = chunks.next().await {
                    if chunk.is_err() {
                        return;
                    }
                    first_byte.get_or_insert_with(|| begun.elapsed());
                }
                let total = begun.elapsed();
                let mut samples = samples.lock();
                samples.ok += u64::from(success);
                samples.total.push(total.as_micros() as u64);
                samples.first_byte.push(first_byte.unwrap_or(total).as_micros() as u64);
            }));
        }
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let mut samples = std::mem::take(&mut *samples.lock());
    samples.total.sort_unstable();
    samples.first_byte.sort_unstable();
    println!(
        "RATE {sent} {} {} {} {} {} {}",
        samples.ok,
        percentile(&samples.total, 0.50),
        percentile(&samples.total, 0.99),
        percentile(&samples.total, 0.999),
        percentile(&samples.first_byte, 0.50),
        percentile(&samples.first_byte, 0.99),
    );
}
