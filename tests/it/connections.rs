//! Slow, idle and surplus client connections: header and body deadlines, the
//! idle timeout, the open-connection cap, and what they must never cut (long
//! answers, ordinary clients). Raw TCP where a real client would not misbehave.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::util::{http, open_endless_stream, MockUpstream, TestGateway, ADMIN_KEY};

/// Short timeouts so each test takes a fraction of a second.
const SHORT: &str = "[server]\nheader_read_timeout_ms = 300\nrequest_body_timeout_ms = 500\nidle_timeout_ms = 400\n";

async fn gateway(extra_toml: &str) -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start().await;
    let gw = TestGateway::start(&upstream.url, extra_toml).await;
    (upstream, gw)
}

async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.url.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (end of stream or reset) or
/// `limit` passes; returns what arrived and when it closed (`None`: still
/// open at `limit`).
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> (String, Option<Instant>) {
    let deadline = Instant::now() + limit;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&answer).into_owned(), None),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&answer).into_owned(), Some(Instant::now())),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: keygate\r\n\r\n";

/// Sends `request` on a kept-alive connection and reads one whole answer
/// (head and a `content-length` body); what arrived if the server closes.
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

/// Writes `head`, then `drip` every 100 ms (at most 50 times, until the
/// server closes); returns the answer and how long after `head` it closed.
async fn trickle(stream: TcpStream, head: String, drip: &'static [u8]) -> (String, Duration) {
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx.write_all(drip).await.is_err() {
                break;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut rx, Duration::from_secs(5)).await;
    writer.abort();
    let closed = closed.unwrap_or_else(|| panic!("still open after 5 s; got {answer:?}"));
    (answer, closed - started)
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off() {
    let (_upstream, gw) = gateway(SHORT).await;
    let head = "GET /healthz HTTP/1.1\r\nHost: keygate\r\nx-slow: ".to_owned();
    let (answer, after) = trickle(connect(&gw).await, head, b"x").await;
    assert!(after < Duration::from_millis(1300), "closed after {after:?}");
    assert_eq!(answer, "", "a connection cut for slow headers gets no answer");
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let (_upstream, gw) = gateway(SHORT).await;
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut connect(&gw).await, Duration::from_secs(5)).await;
    let after = closed.expect("still open after 5 s") - started;
    assert!(after >= Duration::from_millis(250) && after < Duration::from_millis(1300), "closed after {after:?}");
    assert_eq!(answer, "");
}

#[tokio::test]
async fn an_endless_request_body_gets_408_on_the_data_plane_and_the_admin_api() {
    let (_upstream, gw) = gateway(SHORT).await;
    let (_, key) = gw.create_key("slow-body").await;
    for (path, bearer) in [("/v1/chat/completions", key.as_str()), ("/v1/organization/projects", ADMIN_KEY)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n"
        );
        let (answer, after) = trickle(connect(&gw).await, head, b"1\r\n \r\n").await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{path}: {answer}");
        assert!(answer.contains("x-request-id: req_"), "{path}: {answer}");
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "The request body was not received within 500 ms. Please retry your request.", "type": "invalid_request_error", "param": null, "code": null}}),
            "{path}"
        );
        assert!(after >= Duration::from_millis(450) && after < Duration::from_millis(1500), "{path}: {after:?}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // A header timeout longer than the idle timeout, so only the idle
    // watchdog can close the connection.
    let (_upstream, gw) = gateway("[server]\nheader_read_timeout_ms = 5000\nidle_timeout_ms = 300\n").await;
    let mut stream = connect(&gw).await;
    for _ in 0..2 {
        assert!(exchange(&mut stream, HEALTH).await.starts_with("HTTP/1.1 200 "), "served while in use");
    }
    let idle_from = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let after = closed.expect("still open after 5 s") - idle_from;
    assert!(after >= Duration::from_millis(250) && after < Duration::from_millis(1300), "closed after {after:?}");
    assert_eq!(answer, "");
}

#[tokio::test]
async fn an_idle_http1_connection_also_closes_at_a_shorter_header_timeout() {
    // hyper's header timer also runs while a kept-alive HTTP/1 connection
    // waits for its next request (documented in keygate.example.toml).
    let (_upstream, gw) = gateway("[server]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 5000\n").await;
    let mut stream = connect(&gw).await;
    assert!(exchange(&mut stream, HEALTH).await.starts_with("HTTP/1.1 200 "));
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let after = closed.expect("still open after 5 s") - idle_from;
    assert!(after >= Duration::from_millis(250) && after < Duration::from_millis(1300), "closed after {after:?}");
}

#[tokio::test]
async fn ordinary_requests_are_served_while_slow_clients_hang_on() {
    let (_upstream, gw) = gateway(SHORT).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let silent = connect(&gw).await;
        let mut dribbling = connect(&gw).await;
        dribbling.write_all(b"GET /healthz HTTP/1.1\r\nHost: k").await.unwrap();
        slow.push((silent, dribbling));
    }
    let (_, key) = gw.create_key("ordinary").await;
    let answer = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(http().get(format!("{}/healthz", gw.url)).send().await.unwrap().status(), 200);
    drop(slow);
}

#[tokio::test]
async fn past_max_connections_new_connections_are_closed_until_one_frees() {
    let (_upstream, gw) =
        gateway("[server]\nmax_connections = 3\nheader_read_timeout_ms = 5000\nidle_timeout_ms = 5000\n").await;
    // Each held connection has been served once, so it surely holds a slot.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&gw).await;
        assert!(exchange(&mut stream, HEALTH).await.starts_with("HTTP/1.1 200 "));
        held.push(stream);
    }
    let mut fourth = connect(&gw).await;
    let _ = fourth.write_all(b"GET /healthz HTTP/1.1\r\nHost: keygate\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a fourth connection stays open");
    assert_eq!(answer, "", "a fourth connection is served");

    drop(held.pop());
    // The freed slot comes back once the server has seen the close.
    let mut served = false;
    for _ in 0..50 {
        let mut stream = connect(&gw).await;
        if exchange(&mut stream, HEALTH).await.starts_with("HTTP/1.1 200 ") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no connection was served after one of the three closed");
}

#[tokio::test]
async fn answers_longer_than_the_idle_timeout_are_not_cut() {
    let (_upstream, gw) = gateway(SHORT).await;
    let (_, key) = gw.create_key("long-answers").await;
    // A stream sends nothing to keygate for three idle timeouts and more.
    let mut stream = open_endless_stream(&gw, &key).await;
    let until = Instant::now() + Duration::from_millis(1300);
    let mut events = 0;
    while Instant::now() < until {
        let chunk = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
        assert!(matches!(chunk, Ok(Some(Ok(_)))), "the stream ended after {events} events: {chunk:?}");
        events += 1;
    }
    drop(stream);
    // An answer that keeps the connection silent both ways for longer than
    // the idle timeout (the upstream thinks, keygate's 1 s upstream timeout
    // answers) neither cuts the connection nor retires it: it serves the next
    // request.
    let mut conn = connect(&gw).await;
    let started = Instant::now();
    let slow = format!("GET /v1/slow HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\n\r\n");
    let answer = exchange(&mut conn, &slow).await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered after {:?}", started.elapsed());
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(exchange(&mut conn, HEALTH).await.starts_with("HTTP/1.1 200 "), "the connection was retired");
}
