//! Metering, the Usage and Costs APIs.

use futures_util::StreamExt;
use keygate::ids::PublicId;
use keygate::store::{Tokens, UsageGroup, UsageKind, UsageQuery, UsageRecord};
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

/// Usage of `key` so far, summed, after the recorder has written everything.
async fn usage_of(gw: &TestGateway, key: &Value) -> (i64, Tokens, i64) {
    let mut tokens = Tokens::default();
    let (mut requests, mut cost) = (0, 0);
    for r in usage_rows(gw, key).await {
        requests += r.requests;
        tokens.input += r.tokens.input;
        tokens.output += r.tokens.output;
        cost += r.cost_nanos;
    }
    (requests, tokens, cost)
}

/// All of `key`'s usage in one bucket, after the recorder has written everything.
async fn usage_rows(gw: &TestGateway, key: &Value) -> Vec<keygate::store::UsageRow> {
    gw.gateway_state.recorder.flush().await;
    let id = key["id"].as_str().unwrap().strip_prefix("key_").unwrap().to_owned();
    gw.gateway_state
        .store
        .query_usage(&UsageQuery {
            kind: None,
            start: 0,
            end: i64::MAX / 2,
            bucket_seconds: i64::MAX / 4,
            group_by: vec![UsageGroup::ApiKey],
            project_ids: vec![],
            key_ids: vec![id],
            models: vec![],
            prefixes: vec![],
        })
        .await
        .unwrap()
}

async fn post(gw: &TestGateway, key: &str, path: &str, body: Value) -> reqwest::Response {
    http().post(format!("{}{path}", gw.url)).bearer_auth(key).json(&body).send().await.unwrap()
}

const HELLO: &str = "one two three four"; // the built-in mock counts words: 4 prompt tokens

#[tokio::test]
async fn json_answers_are_metered_with_the_upstreams_tokens_and_priced() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("meter").await;
    let chat = post(
        &gw,
        &secret,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": HELLO}]}),
    )
    .await;
    assert_eq!(chat.status(), 200);
    let body: Value = chat.json().await.unwrap();
    let emb: Value = post(&gw, &secret, "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": HELLO}))
        .await
        .json()
        .await
        .unwrap();
    let resp: Value =
        post(&gw, &secret, "/v1/responses", json!({"model": "gpt-4o", "input": HELLO})).await.json().await.unwrap();
    let (requests, tokens, cost) = usage_of(&gw, &key).await;
    assert_eq!(requests, 3);
    let int = |v: &Value| v.as_i64().unwrap();
    let (chat_in, chat_out) = (int(&body["usage"]["prompt_tokens"]), int(&body["usage"]["completion_tokens"]));
    let emb_in = int(&emb["usage"]["prompt_tokens"]);
    let (resp_in, resp_out) = (int(&resp["usage"]["input_tokens"]), int(&resp["usage"]["output_tokens"]));
    assert_eq!(tokens.input, chat_in + emb_in + resp_in);
    assert_eq!(tokens.output, chat_out + resp_out);
    // gpt-4o $2.50/$10 per 1M, embeddings $0.02 per 1M, in nano-dollars.
    assert_eq!(cost, (chat_in + resp_in) * 2_500 + (chat_out + resp_out) * 10_000 + emb_in * 20);
}

#[tokio::test]
async fn a_stream_without_include_usage_is_metered_but_the_client_sees_no_usage() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("stream").await;
    let text = post(
        &gw,
        &secret,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": HELLO}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(!text.contains("usage"), "the injected usage leaked to the client: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let sent: Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "keygate asks the upstream for usage");
    let (requests, tokens, _) = usage_of(&gw, &key).await;
    assert_eq!((requests, tokens.input, tokens.output), (1, 4, 10));
}

#[tokio::test]
async fn a_stream_with_include_usage_reaches_the_client_unchanged() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("stream").await;
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": HELLO}]});
    let through = post(&gw, &secret, "/v1/chat/completions", body.clone()).await.text().await.unwrap();
    let direct =
        http().post(format!("{}/chat/completions", mock.url)).json(&body).send().await.unwrap().text().await.unwrap();
    assert_eq!(through, direct, "bytes pass through untouched");
    let (requests, tokens, _) = usage_of(&gw, &key).await;
    assert_eq!((requests, tokens.input, tokens.output), (1, 4, 10));
}

#[tokio::test]
async fn a_responses_stream_is_metered_from_response_completed() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("responses").await;
    let text = post(&gw, &secret, "/v1/responses", json!({"model": "gpt-4o", "stream": true, "input": HELLO}))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("response.completed"));
    let (requests, tokens, _) = usage_of(&gw, &key).await;
    assert_eq!((requests, tokens.input, tokens.output), (1, 4, 10));
}

#[tokio::test]
async fn a_stream_cut_short_is_still_recorded_with_estimated_tokens() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("cut").await;
    let response = post(
        &gw,
        &secret,
        "/v1/endless",
        json!({"stream": true, "model": "gpt-4o", "messages": [{"role": "user", "content": HELLO}]}),
    )
    .await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    // The tap records when the upstream body is dropped, a moment after the client leaves.
    for _ in 0..50 {
        if usage_of(&gw, &key).await.0 == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (requests, tokens, _) = usage_of(&gw, &key).await;
    assert_eq!(requests, 1);
    assert!(tokens.input >= 4, "the prompt is estimated: {tokens:?}");
}

#[tokio::test]
/// As OpenAI's Usage API counts `num_model_requests`: a call the upstream
/// failed is no model request. It is still recorded (and counted apart), so
/// the watcher sees a leaked key probing a broken upstream.
async fn failed_upstream_calls_are_recorded_but_are_no_model_requests() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = TestGateway::start(&format!("http://127.0.0.1:{port}/v1"), "").await;
    let (key, secret) = gw.create_key("down").await;
    assert_eq!(
        post(&gw, &secret, "/v1/chat/completions", json!({"model": "gpt-4o", "messages": []})).await.status(),
        502
    );
    assert_eq!(usage_of(&gw, &key).await.0, 0);
    let hour_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 3600;
    let (_, usage) = gw
        .admin(
            Method::GET,
            &format!("/v1/organization/usage/completions?start_time={hour_ago}&bucket_width=1h&group_by[]=api_key_id"),
            None,
        )
        .await;
    let results: Vec<&Value> =
        usage["data"].as_array().unwrap().iter().flat_map(|b| b["results"].as_array().unwrap()).collect();
    assert!(results.iter().all(|r| r["num_model_requests"] == 0), "{usage}");
    let rows = usage_rows(&gw, &key).await;
    assert_eq!(rows.iter().map(|r| r.failed_requests).sum::<i64>(), 1);
}

fn record(id: &PublicId, prefix: &str, model: &str, at: i64, input: i64, output: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_{}", keygate::ids::RequestId::new().as_str()[4..].to_owned()),
        at,
        key_id: *id,
        prefix: prefix.into(),
        project_id: "proj_a".into(),
        owner_id: None,
        model: Some(model.into()),
        route: "/v1/chat/completions".into(),
        kind: UsageKind::Completions,
        status: 200,
        tokens: Tokens { input, output, cached: 0, reasoning: 0 },
        estimated: false,
        cost_nanos: input * 10,
        latency_ms: 5,
        upstream: "default".into(),
        client_ip: Some("192.0.2.1".into()),
    }
}

#[tokio::test]
async fn the_usage_api_buckets_groups_filters_and_pages() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (prod, dev) = (PublicId::random(), PublicId::random());
    let h: i64 = 1_800_000_000; // a whole hour
    let store = &gw.gateway_state.store;
    store
        .insert_usage(&[
            record(&prod, "sk-prod-", "gpt-4o", h + 10, 100, 10),
            record(&prod, "sk-prod-", "gpt-4o", h + 70, 50, 5),
            record(&dev, "sk-dev-", "gpt-4o-mini", h + 3700, 7, 1),
            record(&prod, "sk-prod-", "gpt-4o-mini", h + 7300, 1, 1),
        ])
        .await
        .unwrap();
    let base = format!("/v1/organization/usage/completions?start_time={h}&end_time={}&bucket_width=1h", h + 3 * 3600);
    let (status, page) = gw.admin(Method::GET, &base, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["object"], "page");
    let buckets = page["data"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    assert_eq!(buckets[0]["start_time"], h);
    assert_eq!(buckets[0]["end_time"], h + 3600);
    assert_eq!(buckets[0]["results"][0]["input_tokens"], 150);
    assert_eq!(buckets[0]["results"][0]["num_model_requests"], 2);
    assert_eq!(buckets[0]["results"][0]["object"], "organization.usage.completions.result");
    assert_eq!(buckets[1]["results"][0]["input_tokens"], 7);

    let (_, by_model) = gw.admin(Method::GET, &format!("{base}&group_by=model"), None).await;
    let third = &by_model["data"][2]["results"][0];
    assert_eq!((third["model"].as_str(), third["input_tokens"].as_i64()), (Some("gpt-4o-mini"), Some(1)));

    let (_, dev_only) = gw.admin(Method::GET, &format!("{base}&prefixes=sk-dev-&group_by=prefix"), None).await;
    let totals: Vec<i64> = dev_only["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap().iter().map(|r| r["input_tokens"].as_i64().unwrap()))
        .collect();
    assert_eq!(totals, [7]);
    assert_eq!(dev_only["data"][1]["results"][0]["prefix"], "sk-dev-");

    let (_, by_key) =
        gw.admin(Method::GET, &format!("{base}&group_by[]=api_key_id&api_key_ids[]={}", prod.api_id()), None).await;
    assert_eq!(by_key["data"][0]["results"][0]["api_key_id"], prod.api_id());
    assert!(by_key["data"][1]["results"].as_array().unwrap().is_empty());

    let (_, first) = gw.admin(Method::GET, &format!("{base}&limit=2"), None).await;
    assert_eq!(first["has_more"], true);
    let next = first["next_page"].as_str().unwrap();
    let (_, second) = gw.admin(Method::GET, &format!("{base}&limit=2&page={next}"), None).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["start_time"], h + 7200);
    assert_eq!(second["has_more"], false);

    let (_, costs) =
        gw.admin(Method::GET, &format!("/v1/organization/costs?start_time={h}&end_time={}", h + 86400), None).await;
    assert_eq!(costs["data"][0]["results"][0]["amount"]["currency"], "usd");
    assert_eq!(costs["data"][0]["results"][0]["amount_nanos"], 1580);

    for bad in [
        "?start_time=-9223372036854775808",
        "?start_time=99999999999999",
        "",
        "?start_time=x",
        &format!("?start_time={h}&bucket_width=2h"),
        &format!("?start_time={h}&group_by=user"),
        &format!("?start_time={h}&bucket_width=1m&limit=5000"),
    ] {
        let (status, _) = gw.admin(Method::GET, &format!("/v1/organization/usage/completions{bad}"), None).await;
        assert_eq!(status, 400, "{bad}");
    }
}

/// Every bucket is its full width, the last one (which ends after "now" or
/// after `end_time`) included, as OpenAI reports them.
#[tokio::test]
async fn buckets_are_always_their_full_width() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for (width, seconds, extra) in [("1m", 60, String::new()), ("1h", 3600, format!("&end_time={}", now - 10))] {
        let start = now - now % seconds - 2 * seconds;
        let path = format!("/v1/organization/usage/completions?start_time={start}&bucket_width={width}{extra}");
        let (status, page) = gw.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        let buckets = page["data"].as_array().unwrap();
        assert!(!buckets.is_empty());
        for bucket in buckets {
            let (from, to) = (bucket["start_time"].as_i64().unwrap(), bucket["end_time"].as_i64().unwrap());
            assert_eq!(to - from, seconds, "{width}: {bucket}");
        }
    }
}
