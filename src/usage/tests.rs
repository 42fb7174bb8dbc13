use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::tap::{tokens_from_usage, Tap};
use super::*;

/// Runs `chunks` through a tap; returns what the client got and what was observed.
async fn run(chunks: &[&str], sse: bool, strip: bool) -> (String, Observed) {
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let items: Vec<Result<Bytes, std::convert::Infallible>> =
        chunks.iter().map(|c| Ok(Bytes::from(c.to_string()))).collect();
    let tap = Tap::new(futures_util::stream::iter(items), sse, strip, false, Box::new(move |o| *sink.lock() = Some(o)));
    let out: Vec<Bytes> = tap.map(|r| r.unwrap()).collect().await;
    let text = out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    let observed = seen.lock().take().expect("the tap reports when the body ends");
    (text, observed)
}

const CHUNK: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}"#;
const CHUNK2: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}"#;
const USAGE: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#;

#[tokio::test]
async fn a_stream_the_client_asked_usage_for_passes_byte_for_byte() {
    let body = format!("{CHUNK}\n\n{CHUNK2}\n\n{USAGE}\n\ndata: [DONE]\n\n");
    // Split mid-event to prove events are reassembled across chunks.
    let (a, b) = body.split_at(37);
    let (out, observed) = run(&[a, b], true, false).await;
    assert_eq!(out, body);
    assert_eq!(observed.tokens, Some(Tokens { input: 9, output: 2, cached: 4, reasoning: 1 }));
    assert_eq!(observed.text, "Hello");
    assert!(!observed.cut_short);
}

#[tokio::test]
async fn an_injected_usage_chunk_and_null_usage_fields_are_removed() {
    let body = format!("{CHUNK}\n\n{CHUNK2}\n\n{USAGE}\n\ndata: [DONE]\n\n");
    let (out, observed) = run(&[&body[..50], &body[50..]], true, true).await;
    let expected = format!(
        "{}\n\n{}\n\ndata: [DONE]\n\n",
        CHUNK.replace(r#","usage":null"#, ""),
        CHUNK2.replace(r#","usage":null"#, "")
    );
    assert_eq!(out, expected, "key order is kept and nothing else changes");
    assert_eq!(observed.tokens.unwrap().input, 9);
}

#[tokio::test]
async fn responses_usage_comes_from_the_completed_event() {
    let body = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
                event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":7,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens_details\":{\"reasoning_tokens\":3}}}}\n\n";
    let (out, observed) = run(&[body], true, false).await;
    assert_eq!(out, body);
    assert_eq!(observed.tokens, Some(Tokens { input: 5, output: 7, cached: 0, reasoning: 3 }));
}

#[tokio::test]
async fn a_json_answer_is_read_at_its_end() {
    let body = r#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let (out, observed) = run(&[&body[..10], &body[10..]], false, false).await;
    assert_eq!(out, body);
    assert_eq!(observed.tokens, Some(Tokens { input: 8, ..Tokens::default() }));
}

#[tokio::test]
async fn a_dropped_stream_reports_what_it_saw_as_cut_short() {
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let items = vec![Ok::<_, std::convert::Infallible>(Bytes::from(format!("{CHUNK}\n\n")))];
    let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
    let mut tap = Tap::new(Box::pin(stream), true, false, false, Box::new(move |o| *sink.lock() = Some(o)));
    tap.next().await.unwrap().unwrap();
    drop(tap);
    let observed = seen.lock().take().unwrap();
    assert!(observed.cut_short);
    assert_eq!(observed.tokens, None);
    assert_eq!(observed.text, "Hel");
}

#[test]
fn usage_objects_of_every_shape() {
    let embeddings = serde_json::json!({"prompt_tokens": 3, "total_tokens": 3});
    assert_eq!(tokens_from_usage(&embeddings), Some(Tokens { input: 3, ..Tokens::default() }));
    assert_eq!(tokens_from_usage(&serde_json::Value::Null), None);
    let chat = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 2}});
    assert_eq!(tokens_from_usage(&chat), Some(Tokens { input: 10, output: 4, cached: 6, reasoning: 2 }));
    let responses = serde_json::json!({"input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
        "input_tokens_details": {"cached_tokens": 1}, "output_tokens_details": {"reasoning_tokens": 0}});
    assert_eq!(tokens_from_usage(&responses), Some(Tokens { input: 7, output: 3, cached: 1, reasoning: 0 }));
    // An odd count (null, a float) is 0; the rest of the object still counts.
    let odd = serde_json::json!({"prompt_tokens": 5, "completion_tokens": null, "prompt_tokens_details": null,
        "completion_tokens_details": {"reasoning_tokens": 1.5}});
    assert_eq!(tokens_from_usage(&odd), Some(Tokens { input: 5, ..Tokens::default() }));
    // So is a string, an array, an object, or an integer past i64.
    let odder = serde_json::json!({"prompt_tokens": "12", "completion_tokens": {"n": 1},
        "prompt_tokens_details": {"cached_tokens": [1, 2]}, "completion_tokens_details": {"reasoning_tokens": u64::MAX}});
    assert_eq!(tokens_from_usage(&odder), Some(Tokens::default()));
    let negative = serde_json::json!({"prompt_tokens": -3, "completion_tokens": true});
    assert_eq!(tokens_from_usage(&negative), Some(Tokens { input: -3, ..Tokens::default() }));
    assert_eq!(tokens_from_usage(&serde_json::json!({"total_tokens": 3})), None);
}

#[test]
fn include_usage_is_injected_only_into_streams_that_lack_it() {
    let path = "/v1/chat/completions";
    let injected = inject_include_usage(path, br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
    assert_eq!(&injected[..], br#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#);
    let with_options =
        inject_include_usage(path, br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#).unwrap();
    assert_eq!(
        &with_options[..],
        br#"{"stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true}}"#
    );
    assert!(inject_include_usage(path, br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
    assert!(inject_include_usage(path, br#"{"stream":false}"#).is_none());
    assert!(inject_include_usage("/v1/responses", br#"{"stream":true}"#).is_none());
}

#[test]
fn prices_match_dated_variants_and_prefer_the_longest_name() {
    let table = PriceTable::default();
    assert_eq!(table.price("gpt-4o-2024-08-06"), table.price("gpt-4o"));
    assert_ne!(table.price("gpt-4o-mini"), table.price("gpt-4o"));
    assert_eq!(table.price("gpt-4o-mini-2024-07-18"), table.price("gpt-4o-mini"));
    assert_eq!(table.price("llama-3"), None);
    // gpt-4o: $2.50 in, $1.25 cached, $10 out per 1M tokens.
    let tokens = Tokens { input: 1_000_000, cached: 400_000, output: 100_000, reasoning: 0 };
    assert_eq!(table.cost_nanos("gpt-4o", &tokens), 1_500_000_000 + 500_000_000 + 1_000_000_000);
    let small = Tokens { input: 1, ..Tokens::default() };
    assert_eq!(table.cost_nanos("gpt-4o-mini", &small), 150, "per-token prices stay exact in nano-dollars");
    assert_eq!(table.cost_nanos("unpriced", &tokens), 0);
}

#[test]
fn estimates_count_real_tokens() {
    assert!(estimate::text_tokens("gpt-4o", "Hello, world!") >= 3);
    let body = br#"{"messages":[{"role":"user","content":"Say hello to the world"}]}"#;
    assert!(estimate::prompt_tokens("gpt-4o", body) >= 5);
}

#[tokio::test]
async fn a_whole_json_answer_counts_even_when_the_body_is_dropped_before_its_end() {
    // hyper stops polling a body once Content-Length bytes are sent.
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let body = r#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
    let items = vec![Ok::<_, std::convert::Infallible>(Bytes::from(body))];
    let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
    let mut tap = Tap::new(Box::pin(stream), false, false, false, Box::new(move |o| *sink.lock() = Some(o)));
    tap.next().await.unwrap().unwrap();
    drop(tap);
    let observed = seen.lock().take().unwrap();
    assert_eq!(observed.tokens, Some(Tokens { input: 2, output: 3, ..Tokens::default() }));
    assert!(!observed.cut_short);
}
