//! The CLI as a client of a running gateway.

use std::process::{Command, Output};

use serde_json::Value;

use crate::util::*;

fn keygate(gw: &TestGateway, admin_key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args).env("KEYGATE_URL", &gw.url).env_remove("KEYGATE_ADMIN_KEY");
    if let Some(key) = admin_key {
        cmd.env("KEYGATE_ADMIN_KEY", key);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_prints_the_key_alone_on_the_first_line_then_list_and_revoke() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let out =
        stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "create", "--name", "MyApp-Prod-v2", "--prefix", "sk-prod-"]));
    let key = out.lines().next().unwrap();
    assert!(key.starts_with("sk-prod-kg1") && keygate::key::parse(key).is_ok(), "{out}");
    let ok = http().get(format!("{}/v1/models", gw.url)).bearer_auth(key).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let listed: Value =
        serde_json::from_str(&stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "list", "--json"]))).unwrap();
    let entry = &listed.as_array().unwrap()[0];
    assert_eq!(entry["name"], "MyApp-Prod-v2");
    let id = entry["id"].as_str().unwrap();
    let table = stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "list"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(id) && !table.contains(key), "{table}");

    stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "revoke", id, "--reason", "leaked in CI"]));
    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(key).send().await.unwrap();
    assert_eq!(refused.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_with_restrictions_sends_them() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let args = [
        "keys",
        "create",
        "--name",
        "ro",
        "--json",
        "--allow",
        "api.model.read,model.request",
        "--models",
        "gpt-4o-mini*",
        "--allow-ip",
        "127.0.0.1/32",
    ];
    let key: Value = serde_json::from_str(&stdout(&keygate(&gw, Some(ADMIN_KEY), &args))).unwrap();
    assert_eq!(key["permissions"], "restricted");
    assert_eq!(key["scopes"], serde_json::json!(["api.model.read", "model.request"]));
    assert_eq!(key["models"], serde_json::json!(["gpt-4o-mini*"]));
    assert_eq!(key["allowed_ips"], serde_json::json!(["127.0.0.1/32"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_service_accounts_and_admin_keys_round_trip() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = stdout(&keygate(&gw, Some(ADMIN_KEY), &["projects", "create", "--name", "Team B"])).trim().to_owned();
    assert!(project.starts_with("proj_"));
    let out =
        stdout(&keygate(&gw, Some(ADMIN_KEY), &["service-accounts", "create", "--project", &project, "--name", "bot"]));
    let sa_key = out.lines().next().unwrap().to_owned();
    assert!(sa_key.starts_with("sk-kg1"));
    let list: Value = serde_json::from_str(&stdout(&keygate(
        &gw,
        Some(ADMIN_KEY),
        &["service-accounts", "list", "--project", &project, "--json"],
    )))
    .unwrap();
    let sa_id = list[1]["id"].as_str().unwrap().to_owned(); // [0] is the project's default account
    stdout(&keygate(&gw, Some(ADMIN_KEY), &["service-accounts", "delete", &sa_id, "--project", &project]));
    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&sa_key).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    stdout(&keygate(&gw, Some(ADMIN_KEY), &["projects", "archive", &project]));
    let projects = stdout(&keygate(&gw, Some(ADMIN_KEY), &["projects", "list", "--include-archived"]));
    assert!(projects.lines().any(|l| l.contains(&project) && l.contains("archived")), "{projects}");

    let admin =
        stdout(&keygate(&gw, Some(ADMIN_KEY), &["admin-keys", "create", "--name", "ops", "--expires-in", "30d"]));
    let admin_key = admin.lines().next().unwrap().to_owned();
    assert!(admin_key.starts_with("sk-admin-kg1"));
    let listed = stdout(&keygate(&gw, Some(&admin_key), &["admin-keys", "list"]));
    assert!(listed.contains("ops"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_next() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let out = keygate(&gw, None, &["keys", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: no admin key: `KEYGATE_ADMIN_KEY` is not set"), "{err}");
    assert!(err.contains("help: export KEYGATE_ADMIN_KEY="), "{err}");

    let out = keygate(&gw, Some("sk-wrong"), &["projects", "list"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("401") && err.contains("request id `req_"), "{err}");
    assert!(err.contains("help: check KEYGATE_ADMIN_KEY"), "{err}");

    let out = keygate(&gw, Some(ADMIN_KEY), &["keys", "create", "--name", "x", "--prefix", "BAD"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("Invalid prefix `BAD`"), "{err}");

    let out = keygate(&gw, Some(ADMIN_KEY), &["admin-keys", "create", "--name", "x", "--expires-in", "soon"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects bad flags with exit 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_are_set_from_the_cli() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("cli-limited").await;
    let id = key["id"].as_str().unwrap();
    stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "set", "--key", id, "--rpm", "1"]));
    let ok = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(ok.headers()["x-ratelimit-limit-requests"], "1");
    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(refused.status(), 429);

    stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "set", "--model", "gpt-4o", "--tpm", "5000"]));
    let listed = stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "list"]));
    assert!(listed.lines().any(|l| l.starts_with("gpt-4o") && l.contains("5000")), "{listed}");

    let out = stdout(&keygate(&gw, Some(ADMIN_KEY), &["budgets", "set", "--key", id, "--monthly-usd", "25"]));
    assert!(out.contains("$25.00 a month, alert at 80%"), "{out}");
    let out =
        stdout(&keygate(&gw, Some(ADMIN_KEY), &["budgets", "set", "--monthly-usd", "500", "--alert-percent", "90"]));
    assert!(out.contains("$500.00 a month, alert at 90%"), "{out}");
    let out = stdout(&keygate(&gw, Some(ADMIN_KEY), &["budgets", "set", "--key", id, "--clear"]));
    assert!(out.contains("no budget"), "{out}");
    let bad = keygate(&gw, Some(ADMIN_KEY), &["limits", "set", "--rpm", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("give `--key KEY_ID` or `--model PATTERN`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_import_from_keygate_brings_every_live_key_with_its_secrets() {
    use reqwest::Method;
    let mock = MockUpstream::start().await;
    let source = TestGateway::start(&mock.url, "").await;
    let project = source.default_project().await;
    let keys = format!("/v1/organization/projects/{project}/api_keys");
    let (_, plain) = source.create_key("plain").await;
    let (_, read_only) = source
        .admin(Method::POST, &keys, Some(serde_json::json!({"name": "reader", "permissions": "read_only"})))
        .await;
    let (suspended, suspended_secret) = source.create_key("suspended").await;
    source.admin(Method::POST, &format!("{keys}/{}/suspend", suspended["id"].as_str().unwrap()), None).await;
    let (rotated, old_secret) = source.create_key("rotated").await;
    let (_, new) =
        source.admin(Method::POST, &format!("{keys}/{}/rotate", rotated["id"].as_str().unwrap()), None).await;
    let (revoked, revoked_secret) = source.create_key("revoked").await;
    source.admin(Method::DELETE, &format!("{keys}/{}", revoked["id"].as_str().unwrap()), None).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let export = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["export", "--database", &source.database_url, "--output", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));

    let target = TestGateway::start(&mock.url, "").await;
    let import = ["keys", "import", "--from", "keygate", file.to_str().unwrap()];
    let results: Value =
        serde_json::from_str(&stdout(&keygate(&target, Some(ADMIN_KEY), &[&import[..], &["--json"]].concat())))
            .unwrap();
    let outcome: Vec<(&str, &str)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcome,
        [("plain", "imported"), ("reader", "imported"), ("suspended", "imported"), ("rotated", "imported")],
        "revoked keys stay behind"
    );
    let status = |key: String, method: Method, path: &'static str| {
        let url = format!("{}{path}", target.url);
        async move {
            let mut request = http().request(method, url).bearer_auth(key);
            if path.ends_with("completions") {
                request = request.json(&serde_json::json!({"model": "gpt-4o", "messages": []}));
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    let secret = |v: &Value| v["value"].as_str().unwrap().to_owned();
    assert_eq!(status(plain.clone(), Method::POST, "/v1/chat/completions").await, 200);
    assert_eq!(status(old_secret, Method::GET, "/v1/models").await, 200, "the old secret keeps its grace");
    assert_eq!(status(secret(&new), Method::GET, "/v1/models").await, 200);
    assert_eq!(status(secret(&read_only), Method::GET, "/v1/models").await, 200);
    assert_eq!(status(secret(&read_only), Method::POST, "/v1/chat/completions").await, 401, "still read-only");
    assert_eq!(status(suspended_secret, Method::GET, "/v1/models").await, 401, "still suspended");
    assert_eq!(status(revoked_secret, Method::GET, "/v1/models").await, 401);

    let again = stdout(&keygate(&target, Some(ADMIN_KEY), &import));
    assert!(again.contains("Imported 0 of 4 keys"), "a second run changes nothing: {again}");
    assert_eq!(again.matches("exists").count(), 4, "{again}");

    std::fs::write(dir.path().join("bad.jsonl"), "{}\n").unwrap();
    let bad = keygate(
        &target,
        Some(ADMIN_KEY),
        &["keys", "import", "--from", "keygate", dir.path().join("bad.jsonl").to_str().unwrap()],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a keygate export"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
