//! `POST /v1/keys/leaked`: a reported live key is refused at once (on every
//! replica), audited and alerted; every accepted batch gets the same answer;
//! reports are limited and capped; the route never reaches an upstream. And
//! the scanner pattern of `docs/leak-detection.md` finds keygate keys only.

use std::time::{Duration, Instant};

use keygate::ids::PublicId;
use keygate::key::{generate, KeyPrefix};
use reqwest::Method;
use serde_json::{json, Value};

use crate::redis::{redis_toml, SHARED_REDIS};
use crate::util::*;

/// A well-formed keygate key that no gateway holds.
fn unknown_key(prefix: &str) -> String {
    generate(&KeyPrefix::parse(prefix).unwrap(), &PublicId::random()).secret.expose().to_owned()
}

async fn models(gw: &TestGateway, key: &str) -> u16 {
    http().get(format!("{}/v1/models", gw.url)).bearer_auth(key).send().await.unwrap().status().as_u16()
}

/// Whether the mock upstream ever saw a request for the report route.
fn upstream_saw_the_report_route(mock: &MockUpstream) -> bool {
    mock.requests().iter().any(|r| r.path_and_query.to_ascii_lowercase().contains("leaked"))
}

#[tokio::test]
async fn a_reported_key_is_refused_on_the_next_request_audited_alerted_and_sent_to_the_webhook() {
    let mock = MockUpstream::start().await;
    let hook = format!("{}/leak-hook", mock.url);
    let gw = TestGateway::start(
        &mock.url,
        &format!("[anomaly]\nwebhook_url = \"{hook}\"\nwebhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"),
    )
    .await;
    let (key, secret) = gw.create_key("pasted into a gist").await;
    let id = key["id"].as_str().unwrap();
    assert_eq!(models(&gw, &secret).await, 200);

    let url = "https://gist.example/raw/1";
    let (status, _, body) =
        report_leaked(&gw.url, &json!({"keys": [format!("  {secret}\n")], "url": url, "source": "gitleaks"})).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"object": "keygate.leak_report", "received": 1}).to_string());
    assert_eq!(models(&gw, &secret).await, 401, "refused on the very next request");

    let project = gw.default_project().await;
    let (_, object) = gw
        .admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys/{id}?include_revoked=true"), None)
        .await;
    assert_eq!(object["state"], "revoked", "{object}");
    assert_eq!(
        object["revoke_reason"],
        format!("leaked: reported from client 127.0.0.1, found at {url} (source: gitleaks)"),
        "{object}"
    );

    let (_, audit) = gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=api_key.leaked", None).await;
    let events = audit["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{audit}");
    let event = &events[0]["api_key.leaked"];
    assert_eq!(event["id"], id, "{audit}");
    assert_eq!(event["data"]["reported_by"], "127.0.0.1", "{audit}");
    assert_eq!(event["data"]["url"], url, "{audit}");
    assert_eq!(event["data"]["key_type"], "project", "{audit}");
    assert_eq!(events[0]["actor"], Value::Null, "nobody's key reported it: {audit}");
    assert_eq!(events[0]["project"]["id"], project.as_str(), "{audit}");

    let (_, alerts) = gw.admin(Method::GET, "/v1/organization/alerts", None).await;
    let leaked: Vec<&Value> = alerts["data"].as_array().unwrap().iter().filter(|a| a["kind"] == "leaked_key").collect();
    assert_eq!(leaked.len(), 1, "{alerts}");
    assert_eq!(leaked[0]["api_key_id"], id);
    assert_eq!(leaked[0]["severity"], "critical");

    let webhook_called = || async {
        mock.requests()
            .iter()
            .any(|r| r.path_and_query == "/v1/leak-hook" && String::from_utf8_lossy(&r.body).contains("\"leaked_key\""))
    };
    assert!(eventually(Duration::from_secs(5), webhook_called).await, "the alert webhook was not called");

    // Reported again: nothing more happens, and the answer is the same.
    let (status, _, again) = report_leaked(&gw.url, &json!({"keys": [secret]})).await;
    assert_eq!((status, again), (202, body));
    let (_, audit) = gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=api_key.leaked", None).await;
    assert_eq!(audit["data"].as_array().unwrap().len(), 1, "{audit}");
    assert!(!upstream_saw_the_report_route(&mock));
}

#[tokio::test]
async fn unknown_garbage_revoked_and_live_batches_get_byte_identical_answers() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (revoked, revoked_secret) = gw.create_key("revoked").await;
    let project = gw.default_project().await;
    let revoked_id = revoked["id"].as_str().unwrap();
    let (status, _) =
        gw.admin(Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{revoked_id}"), None).await;
    assert_eq!(status, 200);
    let (_, live_one) = gw.create_key("live one").await;
    let (_, live_two) = gw.create_key("live two").await;

    let batches = [
        json!({"keys": [unknown_key("sk-"), unknown_key("sk-prod-"), unknown_key("zz-")]}),
        json!({"keys": ["hello", "", "é".repeat(300)]}),
        json!({"keys": [revoked_secret, revoked_secret, format!("{revoked_secret}x")]}),
        json!({"keys": [unknown_key("sk-"), live_one, "noise"]}),
        json!([{"token": live_two, "type": "keygate_api_key", "url": "https://x", "source": "content"}, {"token": "a"}, {"token": "b"}]),
    ];
    let mut answers = Vec::new();
    for batch in &batches {
        answers.push(report_leaked(&gw.url, batch).await);
    }
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &answers[0], "batch {n} answered differently");
    }
    assert_eq!(answers[0].0, 202);
    assert_eq!(models(&gw, &live_one).await, 401);
    assert_eq!(models(&gw, &live_two).await, 401, "GitHub's partner shape works too");
    assert!(!upstream_saw_the_report_route(&mock));
}

#[tokio::test]
async fn admin_keys_and_secrets_in_their_rotation_grace_are_revoked_too() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (status, admin) = gw.admin(Method::POST, "/v1/organization/admin_api_keys", Some(json!({"name": "ops"}))).await;
    assert_eq!(status, 200, "{admin}");
    let admin = admin["value"].as_str().unwrap().to_owned();
    let (key, old) = gw.create_key("rotated").await;
    let project = gw.default_project().await;
    let id = key["id"].as_str().unwrap();
    let (status, rotated) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys/{id}/rotate"), None).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["value"].as_str().unwrap().to_owned();
    assert_eq!(models(&gw, &old).await, 200, "the old secret is in its grace period");

    let (status, _, _) = report_leaked(&gw.url, &json!({"keys": [admin, old]})).await;
    assert_eq!(status, 202);
    let projects = http().get(format!("{}/v1/organization/projects", gw.url)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(projects.status(), 401, "the admin key is revoked");
    assert_eq!(models(&gw, &old).await, 401);
    assert_eq!(models(&gw, &new).await, 401, "the whole key goes, not only the reported secret");
    let (_, audit) = gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=api_key.leaked", None).await;
    let mut types: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["api_key.leaked"]["data"]["key_type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["admin", "project"], "{audit}");
}

#[tokio::test]
async fn reports_are_limited_per_client_and_capped_per_batch() {
    let mock = MockUpstream::start().await;
    // Time stands still: the limit refills only when the test says so.
    let clock = std::sync::Arc::new(keygate::clock::ManualClock::new(1_900_000_000));
    let gw = TestGateway::start_with_clock(
        tempfile::tempdir().unwrap(),
        &mock.url,
        "[limits]\nleak_reports_per_minute = 4\n",
        clock.clone(),
    )
    .await;
    let too_many: Vec<String> = (0..101).map(|n| format!("k{n}")).collect();
    let (status, _, body) = report_leaked(&gw.url, &json!({"keys": too_many})).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["param"], "keys", "{body}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");

    let huge = http()
        .post(format!("{}/v1/keys/leaked", gw.url))
        .header("content-type", "application/json")
        .body(format!("{{\"keys\": [\"{}\"]}}", "a".repeat(1024 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    let (status, _, body) = report_leaked(&gw.url, &json!({"tokens": ["a"]})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) =
        report_leaked(&gw.url, &json!({"keys": (0..100).map(|n| n.to_string()).collect::<Vec<_>>()})).await;
    assert_eq!((status, body), (202, json!({"object": "keygate.leak_report", "received": 100}).to_string()));

    // Four reports were read this minute, whatever they held: the fifth is not.
    let (_, live) = gw.create_key("would be revoked").await;
    let refused =
        http().post(format!("{}/v1/keys/leaked", gw.url)).json(&json!({"keys": [live]})).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("leaked-key reports"), "{error}");
    assert_eq!(models(&gw, &live).await, 200, "a refused report is not read");
    clock.advance(15);
    let (status, _, _) = report_leaked(&gw.url, &json!({"keys": [live]})).await;
    assert_eq!(status, 202, "one report frees every 15 s");
    assert_eq!(models(&gw, &live).await, 401);
}

#[tokio::test]
async fn the_report_route_is_never_forwarded_in_any_method_or_spelling() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, key) = gw.create_key("valid").await;
    let client = http();
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD] {
        let response = client
            .request(method.clone(), format!("{}/v1/keys/leaked", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "POST", "{method}");
    }
    for path in ["/v1/keys/leaked/", "/v1/keys/LEAKED", "/v1/Keys/Leaked", "/v1/keys/%6Ceaked", "/v1/keys/leaked/x"] {
        for method in [Method::GET, Method::POST] {
            let response =
                client.request(method.clone(), format!("{}{path}", gw.url)).bearer_auth(&key).send().await.unwrap();
            assert_eq!(response.status(), 404, "{method} {path}");
        }
    }
    let azure = client
        .post(format!("{}/openai/v1/keys/leaked", gw.url))
        .header("api-key", &key)
        .json(&json!({"keys": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(azure.status(), 404);
    assert!(!upstream_saw_the_report_route(&mock), "{:?}", mock.requests());
    assert_eq!(models(&gw, &key).await, 200, "none of that was taken for a report");
    // The rest of `/v1/keys/` is not keygate's: it is forwarded as any route.
    let other = client.get(format!("{}/v1/keys/key_1", gw.url)).bearer_auth(&key).send().await.unwrap();
    assert_ne!(other.status(), 405);
    assert!(mock.requests().iter().any(|r| r.path_and_query == "/v1/keys/key_1"));
}

#[tokio::test]
async fn a_key_reported_to_one_replica_is_refused_by_the_other_within_a_second() {
    let mock = MockUpstream::start().await;
    let config = redis_toml(SHARED_REDIS, "closed");
    let a = TestGateway::start(&mock.url, &config).await;
    let b = TestGateway::replica_of(&a, &mock.url, &config).await;
    let (_, secret) = a.create_key("replicated").await;
    assert!(
        eventually(Duration::from_secs(1), || async { models(&b, &secret).await == 200 }).await,
        "replica B never learned of the key"
    );

    let (status, _, _) = report_leaked(&a.url, &json!({"keys": [secret]})).await;
    assert_eq!(status, 202);
    let reported = Instant::now();
    assert!(eventually(Duration::from_secs(1), || async { models(&b, &secret).await == 401 }).await);
    let took = reported.elapsed();
    assert!(took < Duration::from_secs(1), "B refused it after {took:?}");
    eprintln!("replica B refused the reported key after {took:?}");
    assert!(!upstream_saw_the_report_route(&mock));
    b.stop().await;
    a.stop().await;
}

// === the documented scanner pattern ===

/// The pattern in `docs/leak-detection.md`'s one ```regex block, and the
/// gitleaks rule's, which must be the same.
fn documented_pattern() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/leak-detection.md")).unwrap();
    let block = doc.split("```regex\n").nth(1).expect("a ```regex block").split("```").next().unwrap();
    let pattern = block.trim().to_owned();
    let rule = doc.split("regex = '''").nth(1).expect("a gitleaks rule").split("'''").next().unwrap();
    assert_eq!(rule, pattern, "the gitleaks rule and the scanner pattern differ");
    assert!(doc.contains("id = \"keygate-api-key\""));
    pattern
}

#[test]
fn the_documented_scanner_pattern_matches_keygate_keys_and_not_random_text() {
    use rand::Rng;
    let pattern = regex::Regex::new(&documented_pattern()).unwrap();
    let prefixes = ["sk-", "sk-prod-", "sk-dev-", "sk-admin-", "a-", "z9-", "sk-team-eu1-", "abcdefghijklmnop-x-y-"];
    let contexts = ["{}", "OPENAI_API_KEY={}\n", "Authorization: Bearer {}", "{\"key\": \"{}\"}", "'{}',", "x {} y"];
    for n in 0..1_000 {
        let prefix = KeyPrefix::parse(prefixes[n % prefixes.len()]).unwrap();
        let key = generate(&prefix, &PublicId::random()).secret.expose().to_owned();
        let text = contexts[n % contexts.len()].replace("{}", &key);
        let found: Vec<&str> = pattern.find_iter(&text).map(|m| m.as_str()).collect();
        assert_eq!(found, [key.as_str()], "in {text:?}");
    }

    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const BASE64URL: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
    let mut rng = rand::thread_rng();
    let mut random = |alphabet: &[u8], len: usize| -> String {
        (0..len).map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())])).collect()
    };
    for _ in 0..1_000 {
        let len = 20 + (random(b"0123456789", 2).parse::<usize>().unwrap() * 2);
        let plain = random(BASE62, len);
        assert!(!pattern.is_match(&plain), "{plain}");
        let openai = format!("sk-proj-{}T3BlbkFJ{}", random(BASE64URL, 74), random(BASE64URL, 74));
        assert!(!pattern.is_match(&openai), "{openai}");
        let legacy = format!("sk-{}T3BlbkFJ{}", random(BASE62, 20), random(BASE62, 20));
        assert!(!pattern.is_match(&legacy), "{legacy}");
    }
    // Near misses: one character short or long, another version, no prefix.
    let key = unknown_key("sk-");
    for near in [&key[..key.len() - 1], &format!("{key}A"), &key.replacen("kg1", "kg2", 1), &key[3..]] {
        assert!(!pattern.is_match(near), "{near}");
    }
}
