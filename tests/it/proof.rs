//! Security issue #18, "harden and prove": the properties keygate promises
//! about keys, checked from outside. No refusal tells which keys exist; no
//! secret reaches a log, a metric, an error or the database; an answered admin
//! write survives `kill -9`; a start that cannot listen writes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::clock::ManualClock;
use keygate::ids::PublicId;
use keygate::key::{generate, KeyPrefix};
use reqwest::Method;
use serde_json::{json, Value};

use crate::binary::Server;
use crate::util::*;

const T0: i64 = 1_900_000_000;
const AZURE: &str = "[azure]\n[azure.deployments]\n\"d\" = \"gpt-4o\"\n";
const AZURE_CHAT: &str = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
/// Headers that differ on every answer by design (ids, the time).
const PER_REQUEST: [&str; 4] = ["x-request-id", "date", "apim-request-id", "x-ms-client-request-id"];

fn chat_body() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
}

// === no existence oracle ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Azure,
}

/// What a client can observe of one refusal, less the per-request headers.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// OpenAI's echo of a presented key in its 401: the first 8 characters, a
/// `*` for each hidden one, the last 4.
fn openai_mask(presented: &str) -> String {
    let chars: Vec<char> = presented.chars().collect();
    let hidden = chars.len() - 12;
    chars[..8].iter().chain(std::iter::repeat_n(&'*', hidden)).chain(&chars[chars.len() - 4..]).collect()
}

/// Presents `key` on a chat call in `wire`'s dialect. An OpenAI body's echo of
/// the key must be exactly [`openai_mask`] of it; it comes back replaced by
/// `<mask>`, so the rest can be compared byte for byte.
async fn present(gw: &TestGateway, wire: Wire, key: &str) -> (Observed, String) {
    let request = match wire {
        Wire::OpenAi => http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(key),
        Wire::Azure => http().post(format!("{}{AZURE_CHAT}", gw.url)).header("api-key", key),
    };
    let response = request.json(&chat_body()).send().await.unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !PER_REQUEST.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let mut body = response.text().await.unwrap();
    let mask = openai_mask(key);
    if wire == Wire::OpenAi && status == 401 {
        assert_eq!(body.matches(&mask).count(), 1, "the 401 must echo {mask}: {body}");
        body = body.replace(&mask, "<mask>");
    }
    assert!(!body.contains(key), "the key came back whole: {body}");
    (Observed { status, headers, body }, request_id)
}

async fn project_key(gw: &TestGateway, project: &str, body: Value) -> Value {
    let (status, key) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys"), Some(body)).await;
    assert_eq!(status, 200, "{key}");
    key
}

fn value(key: &Value) -> String {
    key["value"].as_str().unwrap().to_owned()
}

/// Why `explain` says request `id` was refused, once the recorder wrote it (up to 5 s).
async fn reason_of(gw: &TestGateway, id: &str) -> String {
    for _ in 0..100 {
        let (status, body) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
        if status == 200 {
            return body["reason"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no denial recorded for {id}");
}

/// Every way a key can fail, on both dialects: the same status, headers and
/// body (OpenAI's masked echo of the presented string aside, which is the
/// same function of that string for all), and the same treatment by the
/// failed-authentication throttle (the 4th attempt from a client is a 429,
/// identical for all).
#[tokio::test]
async fn every_refused_key_looks_the_same_on_both_dialects_and_to_the_throttle() {
    let mock = MockUpstream::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let config = format!("{AZURE}[limits]\nfailed_auth_per_minute = 3\n");
    let gw = TestGateway::start_with_clock(tempfile::tempdir().unwrap(), &mock.url, &config, clock.clone()).await;
    let project = gw.default_project().await;
    let base = format!("/v1/organization/projects/{project}/api_keys");

    let live = value(&project_key(&gw, &project, json!({"name": "live"})).await);
    let parsed = keygate::key::parse(&live).unwrap();
    let (prefix, id) = (KeyPrefix::parse(parsed.prefix).unwrap(), PublicId::parse(parsed.id).unwrap());
    let wrong_secret = generate(&prefix, &id).secret.expose().to_owned();
    let unknown = generate(&prefix, &PublicId::random()).secret.expose().to_owned();
    let mut typo = live.clone().into_bytes();
    let at = typo.len() - 10;
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let malformed = String::from_utf8(typo).unwrap();
    assert_eq!(keygate::key::parse(&malformed).unwrap_err(), keygate::key::KeyFormatError::ChecksumMismatch);

    let revoked = project_key(&gw, &project, json!({"name": "revoked"})).await;
    let (status, _) = gw.admin(Method::DELETE, &format!("{base}/{}", revoked["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 200);
    let suspended = project_key(&gw, &project, json!({"name": "suspended"})).await;
    let (status, _) =
        gw.admin(Method::POST, &format!("{base}/{}/suspend", suspended["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 200);
    let expired = project_key(&gw, &project, json!({"name": "expired", "expires_at": T0 + 60})).await;
    let rotated = project_key(&gw, &project, json!({"name": "rotated"})).await;
    let (status, _) = gw
        .admin(
            Method::POST,
            &format!("{base}/{}/rotate", rotated["id"].as_str().unwrap()),
            Some(json!({"grace_period_seconds": 30})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, doomed) = gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": "doomed"}))).await;
    assert_eq!(status, 200, "{doomed}");
    let doomed_id = doomed["id"].as_str().unwrap();
    let archived = project_key(&gw, doomed_id, json!({"name": "archived"})).await;
    let (status, _) = gw.admin(Method::POST, &format!("/v1/organization/projects/{doomed_id}/archive"), None).await;
    assert_eq!(status, 200);
    clock.advance(61); // past the expiry and the rotation's grace

    let kinds = [
        ("unknown_key", unknown),
        ("wrong_secret", wrong_secret),
        ("revoked", value(&revoked)),
        ("suspended", value(&suspended)),
        ("expired", value(&expired)),
        ("rotated_out", value(&rotated)),
        ("project_archived", value(&archived)),
        ("malformed_key", malformed),
    ];
    let attempts = [Wire::OpenAi, Wire::Azure, Wire::OpenAi, Wire::OpenAi, Wire::Azure];
    let mut first: Option<Vec<Observed>> = None;
    let mut explained = Vec::new();
    for (kind, key) in &kinds {
        // A fresh minute: each kind starts with the throttle's full allowance.
        clock.advance(61);
        let mut seen = Vec::new();
        for wire in attempts {
            let (observed, request_id) = present(&gw, wire, key).await;
            if seen.is_empty() {
                explained.push((*kind, request_id));
            }
            seen.push(observed);
        }
        let statuses: Vec<u16> = seen.iter().map(|o| o.status).collect();
        assert_eq!(statuses, [401, 401, 401, 429, 429], "{kind}: the 4th failure from a client is throttled");
        match &first {
            None => first = Some(seen),
            Some(first) => {
                for (n, (a, b)) in first.iter().zip(&seen).enumerate() {
                    assert_eq!(a, b, "attempt {n}: `{}` and `{kind}` can be told apart", kinds[0].0);
                }
            }
        }
    }
    // The keys were refused for the reasons the test meant (not all for one).
    for (kind, request_id) in explained {
        assert_eq!(reason_of(&gw, &request_id).await, kind);
    }
    // The live key still works, and nothing refused reached the upstream.
    clock.advance(61);
    let ok = http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(&live).json(&chat_body());
    assert_eq!(ok.send().await.unwrap().status(), 200);
    assert_eq!(mock.requests().len(), 1);
}

// === no secret anywhere ===

/// A string no test could produce by accident.
fn random_text(len: usize) -> String {
    use rand::Rng as _;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(len).map(char::from).collect()
}

/// What must never be found of a secret: the whole string and, when it has
/// a keygate key's shape, its 43-character secret part alone.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let body = secret.rfind('-').map_or(0, |i| i + 1);
    if secret.len() - body == keygate::key::BODY_LEN {
        // "kg1", the 12-character public id, then the secret.
        forms.push(secret[body + 15..body + 15 + 43].to_owned());
    }
    forms
}

/// Names each secret found in `place`'s `bytes` (empty when none is).
fn leaks(place: &str, bytes: &[u8], secrets: &[(&str, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, secret) in secrets {
        for form in forms(secret) {
            if memchr::memmem::find(bytes, form.as_bytes()).is_some() {
                found.push(format!("{name} ({} characters) in {place}", form.len()));
            }
        }
    }
    found
}

/// Sends `method path` to `server` with `auth` as Bearer (or as Azure's
/// `api-key` when `path` starts with `/openai/`); returns status and body.
async fn call(server: &Server, method: Method, path: &str, auth: &str, body: Option<Value>) -> (u16, String) {
    let mut request = http().request(method, format!("{}{path}", server.url));
    request = if path.starts_with("/openai/") { request.header("api-key", auth) } else { request.bearer_auth(auth) };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Every row of every table of the schema `database_url` works in, as JSON text.
async fn postgres_rows(database_url: &str) -> String {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "api_keys"), "not keygate's schema: {tables:?}");
    let mut rows = String::new();
    for table in tables {
        let json: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
            .fetch_all(&mut db)
            .await
            .unwrap();
        rows.push_str(&json.join("\n"));
        rows.push('\n');
    }
    rows
}

/// The SQLite file and its `-wal` and `-shm`, as they are now.
fn sqlite_files(db: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::read(&path).ok().map(|bytes| (path, bytes))
        })
        .collect()
}

/// Runs the real binary on `database_url` with trace-level JSON logs,
/// through keys' whole life (create, use, stream, fail, rotate, revoke), and
/// looks for every secret it handled in each place one could end up.
async fn no_secret_reaches_logs_metrics_errors_or_the_database(database_url: &str, sqlite: Option<&std::path::Path>) {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let upstream_key = format!("sk-upstream-{}", random_text(40));
    let bootstrap = format!("bootstrap-admin-{}", random_text(40));
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, format!("[log]\nformat = \"json\"\nlevel = \"trace\"\n{AZURE}")).unwrap();
    let log = dir.path().join("keygate.log");
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = [
        ("KEYGATE_LOG", "trace"),
        ("KEYGATE_UPSTREAM_URL", mock.url.as_str()),
        ("KEYGATE_UPSTREAM_API_KEY", upstream_key.as_str()),
        ("KEYGATE_ADMIN_KEY", bootstrap.as_str()),
    ];
    let args = ["--config", config.to_str().unwrap(), "--metrics-listen", metrics.as_str()];
    let server = Server::launch(database_url, &env, &args, Some(&log));

    let project = server.default_project(&bootstrap).await;
    let keys = format!("/v1/organization/projects/{project}/api_keys");
    let (status, ops) =
        call(&server, Method::POST, "/v1/organization/admin_api_keys", &bootstrap, Some(json!({"name": "ops"}))).await;
    assert_eq!(status, 200, "{ops}");
    let ops: Value = serde_json::from_str(&ops).unwrap();
    let ops_key = value(&ops);
    let mut created = Vec::new();
    let mut shown_once = Vec::new();
    for name in ["first", "second"] {
        let (status, key) = call(&server, Method::POST, &keys, &ops_key, Some(json!({"name": name}))).await;
        assert_eq!(status, 200, "{key}");
        created.push(serde_json::from_str::<Value>(&key).unwrap());
        shown_once.push(key);
    }
    let (first, second) = (value(&created[0]), value(&created[1]));

    // Successful calls, plain and streamed, on both dialects.
    let mut answers = Vec::new();
    let (status, answer) = call(&server, Method::POST, "/v1/chat/completions", &first, Some(chat_body())).await;
    assert_eq!(status, 200, "{answer}");
    answers.push(answer);
    let stream = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, answer) = call(&server, Method::POST, "/v1/chat/completions", &first, Some(stream)).await;
    assert!(status == 200 && answer.ends_with("data: [DONE]\n\n"), "{status}: {answer}");
    answers.push(answer);
    let (status, answer) = call(&server, Method::POST, AZURE_CHAT, &second, Some(chat_body())).await;
    assert_eq!(status, 200, "{answer}");
    answers.push(answer);
    let forwarded = mock.requests();
    assert_eq!(forwarded.len(), 3);
    for request in &forwarded {
        let expected = format!("Bearer {upstream_key}");
        assert_eq!(request.header("authorization"), Some(expected.as_str()), "the upstream credential was used");
    }

    // Refusals: forged, mistyped and misused keys, on both dialects.
    let parsed = keygate::key::parse(&first).unwrap();
    let (prefix, id) = (KeyPrefix::parse(parsed.prefix).unwrap(), PublicId::parse(parsed.id).unwrap());
    let wrong_secret = generate(&prefix, &id).secret.expose().to_owned();
    let unknown = generate(&prefix, &PublicId::random()).secret.expose().to_owned();
    let mut typo = first.clone().into_bytes();
    let at = typo.len() - 20;
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let mut errors = Vec::new();
    let refusals = [
        (Method::POST, "/v1/chat/completions", unknown.as_str(), 401),
        (Method::POST, "/v1/chat/completions", wrong_secret.as_str(), 401),
        (Method::POST, "/v1/chat/completions", typo.as_str(), 401),
        (Method::POST, AZURE_CHAT, wrong_secret.as_str(), 401),
        (Method::POST, "/v1/chat/completions", ops_key.as_str(), 401),
        (Method::GET, "/v1/organization/projects", first.as_str(), 401),
        (Method::GET, "/v1/organization/projects", wrong_secret.as_str(), 401),
    ];
    for (method, path, key, expected) in refusals {
        let (status, body) = call(&server, method.clone(), path, key, Some(chat_body())).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        errors.push(body);
    }
    let (status, body) = call(&server, Method::POST, &keys, &ops_key, Some(json!({"name": 7}))).await;
    assert_eq!(status, 400, "{body}");
    errors.push(body);

    // Rotation with no grace, revocation of a project key and of an admin key.
    let first_id = created[0]["id"].as_str().unwrap();
    let rotate = format!("{keys}/{first_id}/rotate");
    let (status, rotated) =
        call(&server, Method::POST, &rotate, &ops_key, Some(json!({"grace_period_seconds": 0}))).await;
    assert_eq!(status, 200, "{rotated}");
    let rotated = value(&serde_json::from_str(&rotated).unwrap());
    let (status, _) = call(&server, Method::GET, "/v1/models", &rotated, None).await;
    assert_eq!(status, 200);
    let second_id = created[1]["id"].as_str().unwrap();
    let (status, _) = call(&server, Method::DELETE, &format!("{keys}/{second_id}"), &ops_key, None).await;
    assert_eq!(status, 200);
    let ops_path = format!("/v1/organization/admin_api_keys/{}", ops["id"].as_str().unwrap());
    let (status, _) = call(&server, Method::DELETE, &ops_path, &bootstrap, None).await;
    assert_eq!(status, 200);
    for (path, key) in [("/v1/models", &first), ("/v1/models", &second), ("/v1/organization/projects", &ops_key)] {
        let (status, body) = call(&server, Method::GET, path, key, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        errors.push(body);
    }

    let secrets = [
        ("bootstrap admin key", bootstrap.clone()),
        ("created admin key", ops_key.clone()),
        ("first project key", first.clone()),
        ("its rotated secret", rotated),
        ("second project key", second.clone()),
        ("forged key with a real id", wrong_secret),
        ("unknown key", unknown),
        ("mistyped key", typo),
        ("upstream credential", upstream_key),
    ];
    // The search finds what is there: a create answer shows its key once.
    assert_eq!(leaks("the create answer", shown_once[0].as_bytes(), &secrets).len(), 2);
    let mut found = Vec::new();
    let metrics_text = http().get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics_text.contains("keygate_auth_failures_total"), "{metrics_text}");
    found.extend(leaks("/metrics", metrics_text.as_bytes(), &secrets));
    found.extend(leaks("error bodies", errors.join("\n").as_bytes(), &secrets));
    // An answer carries nothing of the client's key or the upstream's.
    found.extend(leaks("answers", answers.join("\n").as_bytes(), &secrets));
    let sqlite_db = sqlite.map(|dir| dir.join("k.db"));
    if let Some(db) = &sqlite_db {
        for (path, bytes) in sqlite_files(db) {
            found.extend(leaks(&format!("{path} while serving"), &bytes, &secrets));
        }
    }
    let (status, _) = server.terminate();
    assert!(status.success());

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("request refused") && logs.contains(first_id.trim_start_matches("key_")), "{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON log line: {line}");
    }
    found.extend(leaks("the log", logs.as_bytes(), &secrets));
    if let Some(db) = &sqlite_db {
        let files = sqlite_files(db);
        let all: Vec<u8> = files.iter().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
        assert!(memchr::memmem::find(&all, first_id.trim_start_matches("key_").as_bytes()).is_some());
        for (path, bytes) in files {
            found.extend(leaks(&format!("{path} after shutdown"), &bytes, &secrets));
        }
    } else {
        let rows = postgres_rows(database_url).await;
        assert!(rows.contains(first_id.trim_start_matches("key_")), "the dump misses the keys");
        found.extend(leaks("PostgreSQL tables", rows.as_bytes(), &secrets));
    }
    assert!(found.is_empty(), "secrets found: {found:#?}");
}

/// No secret keygate handles (its keys, in any state, and the upstream
/// credential) reaches its logs at trace level, `/metrics`, an error body or
/// the database: the SQLite file and its WAL, and with
/// `KEYGATE_TEST_DATABASE=postgres` every row of every PostgreSQL table too.
///
/// Not covered: a handler panic's message. keygate has no debug hook that
/// panics and no route known to panic, and none is added for a test.
#[tokio::test]
async fn no_secret_reaches_logs_metrics_error_bodies_or_stored_rows() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("k.db").display());
    no_secret_reaches_logs_metrics_errors_or_the_database(&sqlite, Some(dir.path())).await;
    if on_postgres() {
        no_secret_reaches_logs_metrics_errors_or_the_database(&postgres_schema().await, None).await;
    }
}

// === durability ===

/// Sends an admin call and SIGKILLs the server the moment its answer is in:
/// nothing after the answer (a flush, a clean shutdown) can have helped.
async fn answered_then_killed(server: Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, text) = call(&server, method.clone(), path, DURABLE_ADMIN, body).await;
    server.kill();
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

const DURABLE_ADMIN: &str = "durable-admin-secret";

/// `GET /v1/models` with `key`: status and the grace-period header.
async fn models_with(server: &Server, key: &str) -> (u16, Option<String>) {
    let response = http().get(format!("{}/v1/models", server.url)).bearer_auth(key).send().await.unwrap();
    let expires = response.headers().get("x-keygate-key-expires-at").map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), expires)
}

async fn admin_writes_survive_kill_9_on(database_url: &str) {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("keygate.log");
    let env = [("KEYGATE_ADMIN_KEY", DURABLE_ADMIN), ("KEYGATE_UPSTREAM_URL", "mock")];
    let start = || Server::launch(database_url, &env, &["--metrics-listen", "off"], Some(&log));

    let server = start();
    let keys = format!("/v1/organization/projects/{}/api_keys", server.default_project(DURABLE_ADMIN).await);
    let a = answered_then_killed(server, Method::POST, &keys, Some(json!({"name": "a"}))).await;
    let (a_id, a_old) = (a["id"].as_str().unwrap(), value(&a));

    let server = start();
    assert_eq!(models_with(&server, &a_old).await.0, 200, "a created key survives");
    let b = server.create_key(DURABLE_ADMIN, "b").await;
    let (b_id, b_old) = (b["id"].as_str().unwrap(), value(&b));
    let grace = json!({"grace_period_seconds": 3600});
    let rotated = answered_then_killed(server, Method::POST, &format!("{keys}/{a_id}/rotate"), Some(grace)).await;
    let a_new = value(&rotated);
    let grace_ends = keygate::time::rfc3339(rotated["previous_secret_expires_at"].as_i64().unwrap());

    let server = start();
    assert_eq!(models_with(&server, &a_new).await, (200, None), "a rotation's new secret survives");
    assert_eq!(models_with(&server, &a_old).await, (200, Some(grace_ends)), "and so does the old one's grace");
    let none = json!({"grace_period_seconds": 0});
    let rotated = answered_then_killed(server, Method::POST, &format!("{keys}/{b_id}/rotate"), Some(none)).await;
    let b_new = value(&rotated);

    let server = start();
    assert_eq!(models_with(&server, &b_new).await.0, 200);
    assert_eq!(models_with(&server, &b_old).await.0, 401, "a rotation without grace survives");
    answered_then_killed(server, Method::DELETE, &format!("{keys}/{a_id}"), None).await;

    let server = start();
    assert_eq!(models_with(&server, &a_new).await.0, 401, "a revocation survives");
    assert_eq!(models_with(&server, &a_old).await.0, 401);
    assert_eq!(models_with(&server, &b_new).await.0, 200);
    assert!(server.terminate().0.success());
}

/// A create, rotate or revoke that answered 200 is on disk: SIGKILL right
/// after the answer, and the restarted binary serves it. On SQLite and on
/// PostgreSQL, both in every run (the suite's PostgreSQL pass skips
/// `binary::`, so this test names both engines itself).
#[tokio::test]
async fn answered_admin_writes_survive_kill_9_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    admin_writes_survive_kill_9_on(&format!("sqlite://{}", dir.path().join("k.db").display())).await;
    admin_writes_survive_kill_9_on(&postgres_schema().await).await;
}

// === bootstrap ===

/// Runs `keygate serve` with `args` until it exits (at most 20 s); returns
/// its exit status and stderr.
fn serve_until_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve")
        .args(args)
        .env_remove("KEYGATE_ADMIN_KEY")
        .env_remove("KEYGATE_DATABASE_URL")
        .env("KEYGATE_UPSTREAM_URL", "mock")
        .env("KEYGATE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate serve kept running on a taken address");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

/// `serve` takes its addresses before it writes anything: a start on a taken
/// port (public or metrics) fails without making the first admin key, which
/// would be printed to a log nobody reads and lost. The next start that can
/// listen makes it and prints it, once.
#[tokio::test]
async fn a_start_that_cannot_listen_creates_no_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let database =
        if on_postgres() { postgres_schema().await } else { format!("sqlite://{}", dir.path().join("k.db").display()) };
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    let attempts = [
        (["--listen", taken.as_str(), "--metrics-listen", "off"], "cannot listen on"),
        (["--listen", free.as_str(), "--metrics-listen", taken.as_str()], "cannot serve metrics on"),
    ];
    for (addresses, error) in attempts {
        let (status, stderr) = serve_until_exit(&[&addresses[..], &["--database", database.as_str()][..]].concat());
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(error), "{stderr}");
        assert!(!stderr.contains("sk-admin-kg1"), "a failed start printed an admin key: {stderr}");
    }
    let server = Server::launch(&database, &[("KEYGATE_UPSTREAM_URL", "mock")], &["--metrics-listen", "off"], None);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.matches("sk-admin-kg1").count(), 1, "the first start that listens makes the key: {stderr}");
    drop(holder);
}
