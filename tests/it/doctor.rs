//! `keygate doctor` against real misconfigurations: a real gateway, env and
//! .env files made here, and a proxy that strips Authorization.

use std::process::Command;

use axum::body::Body;
use axum::extract::Request;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::util::*;

struct Run {
    code: i32,
    json: Value,
    text: String,
}

/// Runs `keygate doctor --json` (and once more for text) in an empty folder
/// with exactly `env`.
fn doctor(env: &[(&str, &str)], args: &[&str], dotenv: Option<&str>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    if let Some(text) = dotenv {
        std::fs::write(dir.path().join(".env"), text).unwrap();
    }
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("doctor").args(args).current_dir(dir.path()).env_clear();
        if json {
            cmd.arg("--json");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)));
    let text = run(false);
    Run { code: out.status.code().unwrap(), json, text: String::from_utf8_lossy(&text.stdout).into_owned() }
}

impl Run {
    fn check(&self, id: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}: {}", self.json))
    }

    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap()
    }

    fn assert_never_shows(&self, secret: &str) {
        let all = format!("{}{}", self.json, self.text);
        assert!(!all.contains(secret), "the key appears in doctor's output");
        // Nor its secret part alone.
        let body = &secret[secret.len().saturating_sub(40)..];
        assert!(!all.contains(body), "part of the secret appears in doctor's output");
    }
}

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let base = format!("{}/v1", gw.url);
    (mock, gw, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_setup_passes_every_check() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("clean").await;
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &key), ("OPENAI_BASE_URL", &base)], &["--model", "gpt-4o"], None).tap(&key)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.text);
    for id in [
        "key_present",
        "key_shape",
        "keygate_checksum",
        "key_kind",
        "base_url",
        "proxy",
        "network",
        "live_models",
        "key_access",
        "live_call",
        "header_integrity",
    ] {
        assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
    }
    assert!(run.text.contains("PASS  API key"), "{}", run.text);
    // Issue #19: this read "Keygate key for a Other endpoint".
    let authority = gw.url.trim_start_matches("http://");
    assert_eq!(run.check("key_kind")["detail"], format!("a keygate key, for the server at `{authority}`"));
    let access = run.check("key_access")["detail"].as_str().unwrap();
    assert!(
        access.contains("permissions `all`: may call `chat`, `completions`") && access.contains("any model"),
        "{access}"
    );
}

trait Tap {
    fn tap(self, secret: &str) -> Self;
}

impl Tap for Run {
    /// Every run also proves the key never shows up.
    fn tap(self, secret: &str) -> Self {
        self.assert_never_shows(secret);
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_quotes_and_look_alikes_are_named() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("shape").await;
    let newline = format!("{key}\n");
    let run = doctor(&[("OPENAI_API_KEY", &newline), ("OPENAI_BASE_URL", &base)], &["--offline"], None).tap(&key);
    assert_eq!(run.code, 1);
    assert!(run.check("key_shape")["detail"].as_str().unwrap().contains("trailing newline"));

    let quoted = format!("\"{key}\"");
    let run = doctor(&[("OPENAI_API_KEY", &quoted), ("OPENAI_BASE_URL", &base)], &["--offline"], None).tap(&key);
    assert!(run.check("key_shape")["detail"].as_str().unwrap().contains("wrapped in quotes"));

    // A .env value in quotes is fine: dotenv strips them, as the SDK's loaders do.
    let run =
        doctor(&[("OPENAI_BASE_URL", &base)], &["--offline"], Some(&format!("OPENAI_API_KEY=\"{key}\"\n"))).tap(&key);
    assert_eq!(run.status("key_shape"), "pass");
    assert!(run.check("key_present")["detail"].as_str().unwrap().contains("from .env"));

    let mut chars: Vec<char> = key.chars().collect();
    chars[20] = 'о'; // Cyrillic
    let cyrillic: String = chars.into_iter().collect();
    let run = doctor(&[("OPENAI_API_KEY", &cyrillic), ("OPENAI_BASE_URL", &base)], &["--offline"], None).tap(&key);
    let detail = run.check("key_shape")["detail"].as_str().unwrap();
    assert!(detail.contains("character 21") && detail.contains("looks like `o`"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_character_typo_is_located_offline() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("typo").await;
    let mut bytes = key.clone().into_bytes();
    let position = 30;
    bytes[position] = if bytes[position] == b'0' { b'O' } else { b'0' };
    let typo = String::from_utf8(bytes).unwrap();
    let run = doctor(&[("OPENAI_API_KEY", &typo), ("OPENAI_BASE_URL", &base)], &["--offline"], None).tap(&key);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("keygate_checksum"), "fail");
    let detail = run.check("keygate_checksum")["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("character {} is probably mistyped", position + 1)), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_and_a_missing_scope_are_told_apart() {
    let (_mock, gw, base) = gateway().await;
    let project = gw.default_project().await;
    let (revoked, revoked_secret) = gw.create_key("old").await;
    gw.admin(
        Method::DELETE,
        &format!("/v1/organization/projects/{project}/api_keys/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (status, narrow) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "reader", "permissions": "restricted", "scopes": ["api.model.read"]})),
        )
        .await;
    assert_eq!(status, 200);
    let narrow_secret = narrow["value"].as_str().unwrap().to_owned();
    let (b1, b2, s1, s2) = (base.clone(), base.clone(), revoked_secret.clone(), narrow_secret.clone());
    let (revoked_run, scope_run) = tokio::task::spawn_blocking(move || {
        (
            doctor(&[("OPENAI_API_KEY", &s1), ("OPENAI_BASE_URL", &b1)], &[], None),
            doctor(&[("OPENAI_API_KEY", &s2), ("OPENAI_BASE_URL", &b2)], &["--model", "gpt-4o"], None),
        )
    })
    .await
    .unwrap();
    let revoked_run = revoked_run.tap(&revoked_secret);
    let detail = revoked_run.check("live_models")["detail"].as_str().unwrap();
    assert!(
        detail.contains("unknown there, revoked, expired or mistyped") && detail.contains("request id req_"),
        "{detail}"
    );
    assert!(revoked_run.check("live_models")["fix"].as_str().unwrap().contains("keygate explain req_"));
    let scope_run = scope_run.tap(&narrow_secret);
    assert_eq!(scope_run.status("live_models"), "pass");
    let detail = scope_run.check("live_call")["detail"].as_str().unwrap();
    assert!(detail.contains("lacks the scope `model.request`"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_mistakes_are_caught_offline() {
    let azure_key = "0123456789abcdef0123456789abcdef";
    let run = doctor(&[("OPENAI_API_KEY", azure_key)], &["--offline"], None).tap(azure_key);
    assert_eq!(run.status("key_kind"), "fail");
    assert!(run.check("key_kind")["detail"].as_str().unwrap().contains("Azure OpenAI key"));

    let endpoint = [("AZURE_OPENAI_API_KEY", azure_key), ("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")];
    let run = doctor(&endpoint, &["--offline", "--deployment", "gpt-4o"], None).tap(azure_key);
    assert_eq!(run.status("azure_api_version"), "fail");
    assert_eq!(run.status("azure_deployment"), "warn");
    assert!(run.check("azure_deployment")["detail"].as_str().unwrap().contains("looks like a model name"));

    let run =
        doctor(&endpoint, &["--offline", "--deployment", "prod-4o", "--api-version", "0613"], None).tap(azure_key);
    assert_eq!(run.status("azure_api_version"), "fail");
    let openai_key = format!("sk-proj-{}T3BlbkFJ{}", "a".repeat(60), "b".repeat(60));
    let run = doctor(
        &[
            ("AZURE_OPENAI_API_KEY", &openai_key),
            ("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/openai/deployments/x"),
        ],
        &["--offline", "--api-version", "2024-10-21"],
        None,
    )
    .tap(&openai_key);
    assert_eq!(run.status("key_kind"), "fail");
    assert_eq!(run.status("azure_endpoint"), "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_url_and_proxy_problems_are_named() {
    let key = "sk-proj-abc";
    let run = doctor(
        &[
            ("OPENAI_API_KEY", key),
            ("OPENAI_BASE_URL", "https://gateway.example.com"),
            ("HTTPS_PROXY", "http://10.0.0.1:3128"),
        ],
        &["--offline"],
        None,
    );
    assert_eq!(run.status("base_url"), "fail");
    assert!(run.check("base_url")["detail"].as_str().unwrap().contains("does not end in /v1"));
    assert_eq!(run.status("proxy"), "warn");
    let run = doctor(&[], &["--offline"], None);
    assert_eq!(run.status("key_present"), "fail");
    assert_eq!(run.code, 1);
}

/// A reverse proxy that drops the Authorization header on the way.
async fn stripping_proxy(target: String) -> String {
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let url = format!("{target}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let mut headers = req.headers().clone();
            headers.remove("authorization");
            headers.remove("host");
            let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
            let answer = client.request(reqwest::Method::GET, url).headers(headers).body(body).send().await.unwrap();
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap();
            axum::response::Response::builder().status(status).body(Body::from(bytes)).unwrap()
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_strips_authorization_is_detected() {
    let (_mock, gw, _base) = gateway().await;
    let (_, key) = gw.create_key("proxied").await;
    let proxy = stripping_proxy(gw.url.clone()).await;
    let secret = key.clone();
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &secret), ("OPENAI_BASE_URL", &format!("{proxy}/v1"))], &[], None)
    })
    .await
    .unwrap()
    .tap(&key);
    assert_eq!(run.code, 1);
    assert_eq!(run.status("header_integrity"), "fail");
    assert!(run.check("header_integrity")["detail"].as_str().unwrap().contains("strips it"));
    assert!(run.check("live_models")["detail"].as_str().unwrap().contains("no usable Authorization header"));
}

/// Issue #19: `.../v1/chat/completions` as the base URL was told to append
/// `/v1`, its 404 read `Not found:  (request id ...)`, and the gateway was
/// called "not a keygate gateway".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_naming_an_endpoint_is_told_its_base() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("endpoint").await;
    let endpoint = format!("{base}/chat/completions");
    let (secret, url) = (key.clone(), endpoint.clone());
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &secret), ("OPENAI_BASE_URL", &url)], &[], None)
    })
    .await
    .unwrap()
    .tap(&key);
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.status("base_url"), "fail");
    let detail = run.check("base_url")["detail"].as_str().unwrap();
    assert!(detail.contains("names an endpoint (`/chat/completions`)"), "{detail}");
    assert_eq!(run.check("base_url")["fix"], format!("use `{base}` as the base URL"));
    assert!(!run.text.contains("/v1/chat/completions/v1"), "{}", run.text);
    assert!(run.text.contains(&format!("      help: use `{base}` as the base URL\n")), "{}", run.text);
    let models = run.check("live_models");
    let detail = models["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("nothing at `{endpoint}/models`")), "{models}");
    assert!(!detail.contains("Not found:  "), "{detail}");
    for id in ["key_access", "header_integrity"] {
        let detail = run.check(id)["detail"].as_str().unwrap();
        assert!(
            detail.contains("the base URL names an endpoint") && !detail.contains("not a keygate gateway"),
            "{detail}"
        );
    }
}

/// Issue #19: a trailing newline failed the shape check, yet the live calls
/// and the header check passed: doctor trimmed the key, which the openai
/// Python SDK sends as it is (and httpx refuses to put in a header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_trailing_newline_is_probed_as_the_sdk_sends_it() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("newline").await;
    let newline = format!("{key}\n");
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &newline), ("OPENAI_BASE_URL", &base)], &["--model", "gpt-4o"], None)
    })
    .await
    .unwrap()
    .tap(&key);
    assert_eq!(run.code, 1, "{}", run.text);
    let shape = run.check("key_shape")["detail"].as_str().unwrap();
    assert!(shape.contains("trailing newline") && shape.contains("Illegal header value"), "{shape}");
    assert_eq!(run.status("keygate_checksum"), "pass");
    assert_eq!(run.status("live_models"), "fail");
    let models = run.check("live_models")["detail"].as_str().unwrap();
    assert!(models.starts_with("not sent: the openai Python SDK sends `OPENAI_API_KEY` as it is"), "{models}");
    assert!(models.contains("`openai.APIConnectionError: Connection error.`"), "{models}");
    assert!(models.contains("with the stray characters removed, listing models works"), "{models}");
    assert_eq!(run.status("live_call"), "fail");
    assert_eq!(run.status("header_integrity"), "skip");
}

/// Issue #19: one trailing quote passed the shape check, and the checksum
/// check then called the key "truncated or pasted twice".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_trailing_quote_is_named_not_called_truncated() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("quote").await;
    let quoted = format!("{key}\"");
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &quoted), ("OPENAI_BASE_URL", &base)], &[], None)
    })
    .await
    .unwrap()
    .tap(&key);
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.status("key_shape"), "fail");
    let shape = run.check("key_shape")["detail"].as_str().unwrap();
    assert!(shape.contains("the key ends with a stray `\"`"), "{shape}");
    assert_eq!(run.status("keygate_checksum"), "pass");
    assert!(run.check("keygate_checksum")["detail"]
        .as_str()
        .unwrap()
        .contains("once the stray characters are removed"));
    assert!(!run.text.contains("truncated"), "{}", run.text);
    // The SDK sends the quote, and so does doctor: the gateway refuses the key.
    assert_eq!(run.status("live_models"), "fail");
    assert!(run.check("live_models")["detail"].as_str().unwrap().contains("does not accept this key"));
}

/// Issue #19: `https://` against a gateway serving plain HTTP said only
/// "could not connect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_against_a_plain_http_gateway_says_so() {
    let (_mock, gw, base) = gateway().await;
    let (_, key) = gw.create_key("tls").await;
    let https = base.replacen("http://", "https://", 1);
    let authority = gw.url.trim_start_matches("http://").to_owned();
    let run = tokio::task::spawn_blocking(move || {
        doctor(&[("OPENAI_API_KEY", &key), ("OPENAI_BASE_URL", &https)], &[], None).tap(&key)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.status("network"), "pass");
    assert_eq!(run.status("live_models"), "fail");
    let models = run.check("live_models");
    let detail = models["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("`{authority}` answers plain HTTP, not HTTPS")), "{models}");
    assert!(models["fix"].as_str().unwrap().contains("use `http://` instead of `https://`"), "{models}");
}

/// Issue #19: without `--model`, a key that may list models but call none
/// passed every check. The gateway now says what the presenting key may do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_call_any_model_is_warned_about() {
    let (_mock, gw, base) = gateway().await;
    let project = gw.default_project().await;
    let mut secrets = Vec::new();
    for body in [
        json!({"name": "read-only", "permissions": "read_only"}),
        json!({"name": "lister", "permissions": "restricted", "scopes": ["api.model.read", "api.files.write"]}),
        json!({"name": "no-models", "models": []}),
    ] {
        let (status, key) =
            gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys"), Some(body)).await;
        assert_eq!(status, 200, "{key}");
        secrets.push(key["value"].as_str().unwrap().to_owned());
    }
    let (keys, url) = (secrets.clone(), base.clone());
    let runs = tokio::task::spawn_blocking(move || {
        keys.iter().map(|k| doctor(&[("OPENAI_API_KEY", k), ("OPENAI_BASE_URL", &url)], &[], None)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let reasons = [
        "(permissions `read_only`)",
        "(scopes `api.files.write`, `api.model.read`)",
        "(its model allow-list is empty)",
    ];
    for ((run, secret), reason) in runs.into_iter().zip(&secrets).zip(reasons) {
        let run = run.tap(secret);
        assert_eq!(run.code, 0, "a warning, not a failure: {}", run.text);
        assert_eq!(run.status("live_models"), "pass");
        assert_eq!(run.status("key_access"), "warn", "{}", run.text);
        let detail = run.check("key_access")["detail"].as_str().unwrap();
        assert!(detail.contains("may list models but cannot call any model") && detail.contains(reason), "{detail}");
        assert!(run.text.contains("WARN  What the key may do"), "{}", run.text);
    }
}

/// `GET /v1/keygate/key`: the presenting key's permissions, models and
/// limits, for any valid project key; never its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_endpoint_states_what_the_presenting_key_may_do() {
    let (_mock, gw, _base) = gateway().await;
    let project = gw.default_project().await;
    let body = json!({
        "name": "embedder",
        "permissions": "restricted",
        "scopes": ["api.model.embeddings.request"],
        "models": ["text-embedding-3-*"],
        "rate_limits": {"max_requests_per_1_minute": 60},
        "monthly_budget_usd": 5.0,
    });
    let (status, key) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{project}/api_keys"), Some(body)).await;
    assert_eq!(status, 200, "{key}");
    let secret = key["value"].as_str().unwrap();
    let answer = http().get(format!("{}/v1/keygate/key", gw.url)).bearer_auth(secret).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    assert!(!text.contains(&secret[secret.len() - 20..]), "the secret must never be shown: {text}");
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["object"], "keygate.key");
    assert_eq!(info["id"], key["id"]);
    assert_eq!(info["name"], "embedder");
    assert_eq!(info["project_id"], project.as_str());
    assert_eq!(info["permissions"], "restricted");
    assert_eq!(info["scopes"], json!(["api.model.embeddings.request"]));
    assert_eq!(info["model_calls"], json!(["embeddings"]));
    assert_eq!(info["can_call_models"], true);
    assert_eq!(info["models"], json!(["text-embedding-3-*"]));
    assert_eq!(info["rate_limits"]["max_requests_per_1_minute"], 60);
    assert_eq!(info["monthly_budget_usd"], 5.0);
    // A read-only key may ask too; no key, or another verb, gets nothing.
    let (_, reader) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "reader", "permissions": "read_only"})),
        )
        .await;
    let answer = http()
        .get(format!("{}/v1/keygate/key", gw.url))
        .bearer_auth(reader["value"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let info: Value = answer.json().await.unwrap();
    assert_eq!((info["can_call_models"].clone(), info["model_calls"].clone()), (json!(false), json!([])));
    assert_eq!(http().get(format!("{}/v1/keygate/key", gw.url)).send().await.unwrap().status(), 401);
    let post = http().post(format!("{}/v1/keygate/key", gw.url)).bearer_auth(secret).send().await.unwrap();
    assert_ne!(post.status(), 200);
    let document: Value = http().get(format!("{}/openapi.json", gw.url)).send().await.unwrap().json().await.unwrap();
    assert!(document["paths"]["/v1/keygate/key"]["get"].is_object(), "not in /openapi.json");
}
