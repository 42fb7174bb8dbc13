//! The CLI as a client of a running gateway.

use std::process::{Command, Output};

use serde_json::Value;

use crate::util::*;

fn keygate(gw: &TestGateway, admin_key: Option<&str>, args: &[&str]) -> Output {
    keygate_at(&gw.url, admin_key, args, &[])
}

/// The binary, with `KEYGATE_URL` set to `url` and `env` added.
fn keygate_at(url: &str, admin_key: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args).env("KEYGATE_URL", url).env_remove("KEYGATE_ADMIN_KEY");
    for var in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "KEYGATE_CONFIG", "KEYGATE_LISTEN", "KEYGATE_DATABASE_URL"] {
        cmd.env_remove(var);
    }
    if let Some(key) = admin_key {
        cmd.env("KEYGATE_ADMIN_KEY", key);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Standard error of a run that must have failed.
fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn has_escape(out: &Output) -> bool {
    out.stdout.contains(&0x1b) || out.stderr.contains(&0x1b)
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
    assert!(listed.lines().any(|l| l.starts_with("model gpt-4o") && l.contains("5000")), "{listed}");

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

/// The limits of key `id`, as the API reports them.
async fn key_limits(gw: &TestGateway, id: &str) -> Value {
    let project = gw.default_project().await;
    let (_, key) =
        gw.admin(reqwest::Method::GET, &format!("/v1/organization/projects/{project}/api_keys/{id}"), None).await;
    key["rate_limits"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_one_limit_keeps_the_others_and_removing_one_is_explicit() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, _) = gw.create_key("limited").await;
    let id = key["id"].as_str().unwrap();
    let run = |args: &[&str]| keygate(&gw, Some(ADMIN_KEY), &[&["limits", "set", "--key", id], args].concat());

    let out = stdout(&run(&["--rpm", "60"]));
    assert_eq!(out.trim(), format!("limits of `{id}`: rpm 60"));
    let out = stdout(&run(&["--tpm", "5000"]));
    assert_eq!(out.trim(), format!("limits of `{id}`: rpm 60, tpm 5000"), "the RPM limit stays");
    let limits = key_limits(&gw, id).await;
    assert_eq!(
        (limits["max_requests_per_1_minute"].as_u64(), limits["max_tokens_per_1_minute"].as_u64()),
        (Some(60), Some(5000))
    );

    let err = failure(&run(&[]));
    assert!(err.starts_with("error: nothing to change: no limit was named"), "{err}");
    assert!(err.contains("help: name what to change, e.g. `--rpm 60`"), "{err}");
    assert_eq!(key_limits(&gw, id).await, limits, "a call that names nothing changes nothing");

    let err = failure(&run(&["--rpm", "5", "--clear", "rpm"]));
    assert!(err.contains("`--rpm` is both set and cleared"), "{err}");

    assert_eq!(stdout(&run(&["--rpm", "none"])).trim(), format!("limits of `{id}`: tpm 5000"));
    assert_eq!(
        stdout(&run(&["--concurrent", "2", "--tpd", "900"])).trim(),
        format!("limits of `{id}`: tpm 5000, tpd 900, concurrent 2")
    );
    assert_eq!(stdout(&run(&["--clear", "tpm,concurrent"])).trim(), format!("limits of `{id}`: tpd 900"));
    assert_eq!(stdout(&run(&["--clear", "all"])).trim(), format!("limits of `{id}`: none"));

    // A project's model limits follow the same rules.
    let model =
        |args: &[&str]| keygate(&gw, Some(ADMIN_KEY), &[&["limits", "set", "--model", "gpt-4o"], args].concat());
    stdout(&model(&["--rpm", "3"]));
    let out = stdout(&model(&["--tpm", "5000"]));
    assert!(out.trim().ends_with(": rpm 3, tpm 5000"), "{out}");
    assert!(failure(&model(&[])).contains("nothing to change"));
    let out = stdout(&model(&["--tpm", "none"]));
    assert!(out.trim().ends_with(": rpm 3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_list_and_keys_list_show_the_limits_of_keys() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, _) = gw.create_key("capped-app").await;
    let id = key["id"].as_str().unwrap();
    stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "set", "--key", id, "--rpm", "7"]));
    let listed = stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "list"]));
    let line = listed.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("no key row: {listed}"));
    assert!(line.starts_with("key ") && line.contains("(capped-app)") && line.contains(" 7 "), "{listed}");
    let json: Value =
        serde_json::from_str(&stdout(&keygate(&gw, Some(ADMIN_KEY), &["limits", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["api_key_id"], id);
    assert_eq!(json[0]["max_requests_per_1_minute"], 7);

    let args = ["keys", "create", "--name", "narrow", "--allow", "model.request", "--models", "gpt-4o*"];
    stdout(&keygate(&gw, Some(ADMIN_KEY), &args));
    let plain = stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "list"]));
    assert!(!plain.contains("RATE LIMITS"), "{plain}");
    let long = stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "list", "--long"]));
    let header = long.lines().next().unwrap();
    for column in ["PERMISSIONS", "SCOPES", "MODELS", "RATE LIMITS", "BUDGET"] {
        assert!(header.contains(column), "{long}");
    }
    let capped = long.lines().find(|l| l.contains(id)).unwrap();
    assert!(capped.contains("rpm 7"), "{long}");
    let narrow = long.lines().find(|l| l.contains("narrow")).unwrap();
    assert!(narrow.contains("restricted") && narrow.contains("model.request") && narrow.contains("gpt-4o*"), "{long}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_base_url_with_v1_is_accepted_and_bad_urls_are_named() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    for url in [format!("{}/v1", gw.url), format!("{}/v1/", gw.url)] {
        let out = stdout(&keygate_at(&url, Some(ADMIN_KEY), &["projects", "list"], &[]));
        assert!(out.contains("Default project"), "{url}: {out}");
    }

    let bare = gw.url.trim_start_matches("http://").to_owned();
    let err = failure(&keygate_at(&bare, Some(ADMIN_KEY), &["projects", "list"], &[]));
    assert!(err.starts_with(&format!("error: the keygate URL `{bare}` has no scheme")), "{err}");
    assert!(err.contains(&format!("help: use `http://{bare}`")), "{err}");
    assert!(!err.contains("relative URL without a base"), "{err}");

    let tls = gw.url.replacen("http://", "https://", 1);
    let err = failure(&keygate_at(&tls, Some(ADMIN_KEY), &["projects", "list"], &[]));
    assert!(err.starts_with(&format!("error: cannot reach keygate at `{tls}`")), "{err}");
    assert!(err.contains("does not speak TLS"), "{err}");
    assert!(err.contains(&format!("help: `{tls}` answers plain HTTP, not TLS: use `{}`", gw.url)), "{err}");
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
    let outcome: Vec<(&str, &str)> = results["data"]
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

/// Adopting keys from elsewhere: a plaintext CSV and a LiteLLM export come in
/// as legacy keys that work with their limits and models, re-running changes
/// nothing, and a bad row leaves the gateway as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_elsewhere_are_adopted_as_they_are() {
    use reqwest::Method;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (status, team) =
        gw.admin(Method::POST, "/v1/organization/projects", Some(serde_json::json!({"name": "Team A"}))).await;
    assert_eq!(status, 200, "{team}");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("keys.csv");
    std::fs::write(
        &csv,
        "key,name,project,models,rpm,team\nsk-old-app-one-0123456789abcdef,App One,Team A,gpt-4o-mini,1,blue\nsk-old-app-two-fedcba9876543210,,,,,\n",
    )
    .unwrap();
    let litellm_secret = "sk-litellm-virtual-key-aaaa1111";
    let token = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(litellm_secret.as_bytes()));
    let litellm = dir.path().join("litellm.jsonl");
    std::fs::write(
        &litellm,
        format!("{{\"token\": \"{token}\", \"key_alias\": \"from-litellm\", \"key_name\": \"sk-...1111\", \"models\": [\"gpt-4o\"], \"rpm_limit\": 100, \"max_budget\": 5.0, \"expires\": null, \"spend\": 1.2}}\n"),
    )
    .unwrap();
    let import = |from: &'static str, file: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["keys", "import", "--from", from, file.to_str().unwrap()];
        args.extend_from_slice(extra);
        keygate(&gw, Some(ADMIN_KEY), &args)
    };

    // A dry run writes nothing.
    let planned = stdout(&import("plaintext", &csv, &["--dry-run"]));
    assert!(planned.contains("Dry run: 2 of 2 keys would be imported"), "{planned}");
    assert!(planned.contains("Not mapped (keygate has no such setting): team"), "{planned}");
    let call = |key: &'static str, model: &'static str| {
        let url = format!("{}/v1/chat/completions", gw.url);
        async move {
            http()
                .post(url)
                .bearer_auth(key)
                .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call("sk-old-app-two-fedcba9876543210", "gpt-4o").await, 401, "nothing imported by a dry run");

    let done = stdout(&import("plaintext", &csv, &[]));
    assert!(done.contains("Imported 2 of 2 keys"), "{done}");
    let done = stdout(&import("sha256", &litellm, &[]));
    assert!(done.contains("Imported 1 of 1 keys") && done.contains("monthly budget"), "{done}");

    // They work as they are, with their models and limits.
    assert_eq!(call("sk-old-app-two-fedcba9876543210", "gpt-4o").await, 200);
    assert_eq!(call("sk-old-app-one-0123456789abcdef", "gpt-4o").await, 404, "only gpt-4o-mini");
    assert_eq!(call("sk-old-app-one-0123456789abcdef", "gpt-4o-mini").await, 200);
    assert_eq!(call("sk-old-app-one-0123456789abcdef", "gpt-4o-mini").await, 429, "1 request a minute");
    assert_eq!(call(litellm_secret, "gpt-4o").await, 200);
    assert_eq!(call(litellm_secret, "gpt-4o-mini").await, 404);
    // A typo of a legacy key: the generic 401, and explain says why typos are not caught.
    let typo = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("sk-old-app-two-fedcba987654321O")
        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 401);
    let id = typo.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = typo.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (_, explained) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
    assert!(
        explained["explanation"].as_str().unwrap().starts_with("unknown key (legacy key: no checksum)"),
        "{explained}"
    );

    // A legacy key is a key like any other: listed as legacy, and rotating it
    // issues a checksummed one while the old secret keeps its grace.
    let (_, found) = gw.admin(Method::GET, "/v1/organization/api_keys?q=from-litellm", None).await;
    let imported = &found["data"][0];
    assert_eq!(imported["legacy"], true, "{found}");
    let rotate = format!(
        "/v1/organization/projects/{}/api_keys/{}/rotate",
        imported["project_id"].as_str().unwrap(),
        imported["id"].as_str().unwrap()
    );
    let (status, rotated) =
        gw.admin(Method::POST, &rotate, Some(serde_json::json!({"grace_period_seconds": 600}))).await;
    assert_eq!(status, 200, "{rotated}");
    assert!(keygate::key::parse(rotated["value"].as_str().unwrap()).is_ok(), "checksummed: {rotated}");
    assert_eq!(rotated["legacy"], false);
    assert_eq!(call(litellm_secret, "gpt-4o").await, 200, "the old secret keeps its grace");

    // Re-running changes nothing.
    let again = stdout(&import("plaintext", &csv, &[]));
    assert!(again.contains("Imported 0 of 2 keys") && again.contains("Already here: 2"), "{again}");
    let again = stdout(&import("sha256", &litellm, &[]));
    assert!(again.contains("Imported 0 of 1 keys"), "{again}");

    // A bad row: named by its line, and nothing of that file is written.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "key,rpm\nsk-new-good-key-11112222,5\nsk-new-bad-key-33334444,lots\n").unwrap();
    let refused = failure(&import("plaintext", &bad, &[]));
    assert!(refused.contains("1 bad rows"), "{refused}");
    let out = String::from_utf8_lossy(&import("plaintext", &bad, &[]).stdout).to_string();
    assert!(out.contains("line 3:"), "{out}");
    assert_eq!(call("sk-new-good-key-11112222", "gpt-4o").await, 401, "the good row was not written either");

    // No plaintext secret in the database.
    let db = std::fs::read(gw.db.path().join("keygate.db")).unwrap_or_default();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains("sk-old-app-one-0123456789abcdef") && !db.contains(litellm_secret));

    // The hash a declaration or a sha256 import names.
    let mut hash = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut hash.stdin.take().unwrap(), format!("{litellm_secret}\n").as_bytes()).unwrap();
    let hashed = hash.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(hashed.stdout).unwrap().trim(), token);
}

/// `keygate serve` with `args`, expected to refuse to start.
fn serve_refused(args: &[&str]) -> (String, std::time::Duration) {
    let started = std::time::Instant::now();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["serve", "--metrics-listen", "off", "--upstream", "mock"];
    if !args.contains(&"--listen") {
        all.extend(["--listen", &listen]);
    }
    all.extend(args);
    let out = keygate_at("http://unused", None, &all, &[]);
    (failure(&out), started.elapsed())
}

#[test]
fn serve_errors_name_the_flag_and_say_what_to_use() {
    let (err, _) = serve_refused(&["--database", "keygate.db"]);
    assert!(err.contains("`--database` must be a sqlite://PATH"), "{err}");
    assert!(err.contains("help: for a SQLite file, use `sqlite://keygate.db`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nodir");
    let url = format!("sqlite://{}/keygate.db", missing.display());
    let (err, _) = serve_refused(&["--database", &url]);
    assert!(err.contains(&format!("the directory `{}` does not exist", missing.display())), "{err}");
    assert!(err.contains(&format!("help: create the directory first (`mkdir -p {}`)", missing.display())), "{err}");
    assert_eq!(err.matches("unable to open database file").count(), 0, "{err}");
    assert!(!missing.exists());

    // Port 1 (tcpmux) has no listener here: a port freed by `free_port()` can
    // be taken by another test's server before this connects.
    let closed = "postgres://keygate@127.0.0.1:1/keygate".to_owned();
    let (err, took) = serve_refused(&["--database", &closed]);
    assert!(err.contains("Connection refused") && !err.contains("pool timed out"), "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(err.contains("help: nothing listens at the database's host and port"), "{err}");
    assert!(took < std::time::Duration::from_secs(4), "a refused connection is reported at once, took {took:?}");

    let (err, _) = serve_refused(&["--listen", "18102"]);
    assert!(err.contains("`--listen` must be an address like 127.0.0.1:8080, got `18102`"), "{err}");
    assert!(!err.contains("server.listen"), "{err}");
    assert!(err.contains("help: use `127.0.0.1:18102`"), "{err}");

    let config = dir.path().join("missing.toml");
    let (err, _) = serve_refused(&["--config", config.to_str().unwrap()]);
    assert!(err.contains(&format!("cannot read config file `{}`", config.display())), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("help: check the path given to `--config`"), "{err}");

    let (err, _) = serve_refused(&["--port", "9000"]);
    assert!(err.contains("help: use `--listen 127.0.0.1:9000`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_revoked_key_says_so_instead_of_not_found() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, _) = gw.create_key("twice").await;
    let id = key["id"].as_str().unwrap();
    stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "revoke", id]));
    let again = stdout(&keygate(&gw, Some(ADMIN_KEY), &["keys", "revoke", id]));
    assert!(again.starts_with(&format!("`{id}` was already revoked at 20")), "{again}");
    let err = failure(&keygate(&gw, Some(ADMIN_KEY), &["keys", "revoke", "key_NoSuchKey0000"]));
    assert!(err.contains("404"), "{err}");
}

#[test]
fn usage_help_prints_each_default_once() {
    let out = keygate_at("http://unused", None, &["usage", "--help"], &[]);
    let help = stdout(&out);
    assert_eq!(help.matches("[default: model]").count(), 1, "{help}");
    let out = keygate_at("http://unused", None, &["keys", "list", "--help"], &[]);
    let help = stdout(&out);
    let project = help.lines().find(|l| l.contains("--project")).unwrap();
    assert!(project.contains("default project"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_by_key_names_each_key_and_small_budgets_keep_their_digits() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("billing-worker").await;
    let id = key["id"].as_str().unwrap().to_owned();
    let chat = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&secret)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let mut table = String::new();
    let shown = eventually(std::time::Duration::from_secs(10), || {
        let out = keygate(&gw, Some(ADMIN_KEY), &["usage", "--by", "key"]);
        table = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = table.contains(&id);
        async move { found }
    })
    .await;
    assert!(shown, "{table}");
    assert!(table.starts_with("KEY") && table.lines().next().unwrap().contains("NAME"), "{table}");
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(row.contains("billing-worker"), "{table}");

    let out = stdout(&keygate(&gw, Some(ADMIN_KEY), &["budgets", "set", "--key", &id, "--monthly-usd", "0.000001"]));
    assert!(out.contains("$0.000001 a month"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_output_has_no_colour_codes_and_no_color_wins_over_force() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    gw.create_key("plain").await;
    let table = keygate(&gw, Some(ADMIN_KEY), &["keys", "list"]);
    let error = keygate(&gw, Some("sk-wrong"), &["keys", "list"]);
    assert!(table.status.success() && !error.status.success());
    assert!(!has_escape(&table) && !has_escape(&error), "escape codes reached a file");

    // Colour can be forced (CLICOLOR_FORCE), so its absence above is a choice...
    let forced = [("CLICOLOR_FORCE", "1")];
    let table = keygate_at(&gw.url, Some(ADMIN_KEY), &["keys", "list"], &forced);
    let error = keygate_at(&gw.url, Some("sk-wrong"), &["keys", "list"], &forced);
    assert!(has_escape(&table) && has_escape(&error));
    // ...and NO_COLOR turns it off even then.
    let none = [("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")];
    let table = keygate_at(&gw.url, Some(ADMIN_KEY), &["keys", "list"], &none);
    let error = keygate_at(&gw.url, Some("sk-wrong"), &["keys", "list"], &none);
    assert!(!has_escape(&table) && !has_escape(&error), "NO_COLOR is honoured");
}
