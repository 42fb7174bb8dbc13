//! Runs the real `keygate` binary.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::free_port;

/// A `keygate serve` process.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Serves the SQLite file `k.db` in `dir`.
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(&format!("sqlite://{}", dir.join("k.db").display()), env)
    }

    pub fn start_on(database_url: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(database_url, env, &[], None)
    }

    /// Starts `keygate serve` on `database_url` with `args` after its own
    /// flags. With `log`, stdout and stderr both go to that file (and
    /// `terminate` returns no stderr); without, stdout is dropped and stderr
    /// kept for `terminate`.
    pub fn launch(database_url: &str, env: &[(&str, &str)], args: &[&str], log: Option<&std::path::Path>) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(database_url)
            .args(args)
            .env_remove("KEYGATE_ADMIN_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("KEYGATE_UPSTREAM_API_KEY")
            .env_remove("KEYGATE_UPSTREAM_URL")
            .env("KEYGATE_LOG", "info");
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
                cmd.stdout(file.try_clone().unwrap()).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy(port, deadline) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("keygate exited while starting: {status}");
            }
            assert!(Instant::now() < deadline, "keygate did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }

    /// SIGKILL: no shutdown, no flush, as when the host or the OOM killer
    /// ends the process.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Creates a key in the default project with `admin`; returns the key object.
    pub async fn create_key(&self, admin: &str, name: &str) -> serde_json::Value {
        self.create_key_with(admin, serde_json::json!({"name": name})).await
    }

    pub async fn default_project(&self, admin: &str) -> String {
        let projects: serde_json::Value = crate::util::http()
            .get(format!("{}/v1/organization/projects", self.url))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        projects["data"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Creates a key from `body` in the default project with `admin`.
    pub async fn create_key_with(&self, admin: &str, body: serde_json::Value) -> serde_json::Value {
        let project = self.default_project(admin).await;
        crate::util::http()
            .post(format!("{}/v1/organization/projects/{project}/api_keys", self.url))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGTERM, then the exit status and everything written to stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "keygate did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status, stderr)
    }
}

/// Whether `GET /healthz` on `port` answers 200 before `deadline`. `serve`
/// binds its port before it opens the database, so a connection is accepted
/// by the kernel early; the answer comes once keygate serves (and has printed
/// a first admin key).
fn healthy(port: u16, deadline: Instant) -> bool {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(wait)).unwrap();
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

/// A test that fails before `terminate` must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn admin_key_in(stderr: &str) -> Option<String> {
    stderr.split_whitespace().find(|w| w.starts_with("sk-admin-kg1")).map(str::to_owned)
}

#[tokio::test]
async fn first_start_prints_an_admin_key_once_and_restart_keeps_keys() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &[]);
    let http = crate::util::http();
    // The admin key is printed before keygate serves, so it is in stderr now;
    // read it after a clean shutdown.
    let (status, stderr) = first.terminate();
    assert!(status.success(), "{stderr}");
    let admin = admin_key_in(&stderr).expect("first start prints an admin key");
    assert_eq!(stderr.matches("sk-admin-kg1").count(), 1);
    assert!(stderr.contains("MOCK"), "the mock upstream must be announced loudly");
    assert!(!stderr.contains('\x1b'), "colour codes reached a log that is not a terminal: {stderr:?}");

    let second = Server::start(dir.path(), &[]);
    let key = second.create_key(&admin, "survivor").await;
    let secret = key["value"].as_str().unwrap().to_owned();
    let (status, stderr) = second.terminate();
    assert!(status.success());
    assert_eq!(admin_key_in(&stderr), None, "later starts never print the admin key");
    assert!(!stderr.contains(&secret), "a key reached the log");

    let third = Server::start(dir.path(), &[]);
    let chat = http
        .post(format!("{}/v1/chat/completions", third.url))
        .bearer_auth(&secret)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let (status, _) = third.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn env_admin_key_is_upserted_and_a_revoked_one_stays_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYGATE_ADMIN_KEY", "my-own-admin-secret")];
    let server = Server::start(dir.path(), &env);
    let http = crate::util::http();
    let ok = http
        .get(format!("{}/v1/organization/projects", server.url))
        .bearer_auth("my-own-admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let (_, stderr) = server.terminate();
    assert_eq!(admin_key_in(&stderr), None, "no key is generated when KEYGATE_ADMIN_KEY is set");

    // Revoke it behind keygate's back, as an operator would after a leak.
    let store = keygate::store::open(&format!("sqlite://{}", dir.path().join("k.db").display())).await.unwrap();
    let record = store.find_key_by_digest(&keygate::key::KeyDigest::of("my-own-admin-secret")).await.unwrap().unwrap();
    store
        .revoke_key(&record.id, &keygate::store::Revocation { at: 1, by: None, reason: Some("test".into()) })
        .await
        .unwrap();
    drop(store);

    let server = Server::start(dir.path(), &env);
    let refused = http
        .get(format!("{}/v1/organization/projects", server.url))
        .bearer_auth("my-own-admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    server.terminate();
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("KEYGATE_ADMIN_KEY", "adm")]);
    let http = crate::util::http();
    let key = server.create_key("adm", "streamer").await;
    let response = http
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(key["value"].as_str().unwrap())
        .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Terminate while the (slow, 5 ms per event) stream is still being read.
    let terminate = tokio::task::spawn_blocking(move || server.terminate());
    let body = response.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "stream cut short: {body}");
    let (status, _) = terminate.await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_loses_no_usage_row_of_a_completed_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("KEYGATE_ADMIN_KEY", "adm"), ("KEYGATE_UPSTREAM_URL", "mock")]);
    let http = crate::util::http();
    let key = server.create_key("adm", "load").await;
    let secret = key["value"].as_str().unwrap().to_owned();
    let mut load = Vec::new();
    for i in 0..40 {
        let (http, url, secret) = (http.clone(), server.url.clone(), secret.clone());
        load.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(i * 10)).await;
            let body = serde_json::json!({"model": "gpt-4o", "stream": i % 2 == 0, "messages": [{"role": "user", "content": "hi"}]});
            let response = http.post(format!("{url}/v1/chat/completions")).bearer_auth(&secret).json(&body).send().await.ok()?;
            if response.status() != 200 {
                return None;
            }
            let text = response.text().await.ok()?;
            (text.contains("synthetic answer") && (i % 2 == 1 || text.ends_with("data: [DONE]\n\n"))).then_some(())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let terminate = tokio::task::spawn_blocking(move || server.terminate());
    let mut completed = 0;
    for task in load {
        if task.await.unwrap().is_some() {
            completed += 1;
        }
    }
    let (status, _) = terminate.await.unwrap();
    assert!(status.success());
    assert!(completed > 0, "some requests finished before the stop");
    let store = keygate::store::open(&format!("sqlite://{}", dir.path().join("k.db").display())).await.unwrap();
    let rows = store
        .query_usage(&keygate::store::UsageQuery {
            kind: None,
            start: 0,
            end: i64::MAX / 2,
            bucket_seconds: i64::MAX / 4,
            group_by: vec![],
            project_ids: vec![],
            key_ids: vec![key["id"].as_str().unwrap().to_owned()],
            models: vec![],
            prefixes: vec![],
        })
        .await
        .unwrap();
    let recorded: i64 = rows.iter().map(|r| r.requests).sum();
    assert!(recorded >= completed, "{completed} requests completed but {recorded} were recorded");
}

pub fn keygate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keygate")).args(args).env_remove("KEYGATE_DATABASE_URL").output().unwrap()
}

#[tokio::test]
async fn migrate_reports_what_it_applied_and_a_backup_serves_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let first = keygate(&["migrate", "--database", &url, "--json"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["from_version"], 0);
    assert_eq!(report["applied"][0]["name"], "init");
    let again: serde_json::Value =
        serde_json::from_slice(&keygate(&["migrate", "--database", &url, "--json"]).stdout).unwrap();
    assert_eq!(again["applied"], serde_json::json!([]));
    assert_eq!(again["from_version"], again["to_version"]);

    let env = [("KEYGATE_ADMIN_KEY", "backup-admin-secret")];
    let server = Server::start(dir.path(), &env);
    let key = server.create_key("backup-admin-secret", "kept").await;
    let secret = key["value"].as_str().unwrap();
    // The copy is taken while the server runs.
    let copy = tempfile::tempdir().unwrap();
    let destination = copy.path().join("k.db");
    let backup = keygate(&["backup", destination.to_str().unwrap(), "--database", &url]);
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(server.terminate().0.success());
    let restored = Server::start(copy.path(), &env);
    let models =
        crate::util::http().get(format!("{}/v1/models", restored.url)).bearer_auth(secret).send().await.unwrap();
    assert_eq!(models.status(), 200, "the key works on the restored copy");
    restored.terminate();

    let refused = keygate(&["backup", destination.to_str().unwrap(), "--database", &url]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    let missing = keygate(&["backup", "/tmp/never.db", "--database", "sqlite:///nonexistent/k.db"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no database"));

    // A database migrated by a newer keygate is refused, by migrate and serve alike.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO keygate_schema (version, name, applied_at) VALUES (99, 'future', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let newer = keygate(&["migrate", "--database", &url]);
    assert!(!newer.status.success());
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer than this keygate knows"));
    let serve = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .env("KEYGATE_UPSTREAM_URL", "mock")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("newer than this keygate knows"));
}

#[tokio::test]
async fn export_then_import_moves_every_key_and_usage_row_to_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYGATE_ADMIN_KEY", "move-admin-secret")];
    let server = Server::start(dir.path(), &env);
    let key = server.create_key("move-admin-secret", "moved").await;
    let secret = key["value"].as_str().unwrap();
    let http = crate::util::http();
    let chat = http
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(secret)
        .json(&serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    chat.text().await.unwrap();
    assert!(server.terminate().0.success(), "SIGTERM flushes the usage row");

    let source = format!("sqlite://{}", dir.path().join("k.db").display());
    let file = dir.path().join("export.jsonl");
    let export = keygate(&["export", "--database", &source, "--output", file.to_str().unwrap()]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the owner may read an export");
    assert!(text.starts_with("{\"format\":\"keygate-export\",\"version\":1,"), "{}", &text[..80]);
    assert!(!text.contains(secret), "an export holds digests, never secrets");
    assert!(text.lines().any(|l| l.starts_with("{\"table\":\"usage_records\"")));

    let target_dir = tempfile::tempdir().unwrap();
    let target = format!("sqlite://{}", target_dir.path().join("k.db").display());
    let import = keygate(&["import", file.to_str().unwrap(), "--database", &target]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let again = keygate(&["import", file.to_str().unwrap(), "--database", &target]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));

    let moved = Server::start(target_dir.path(), &env);
    let models = http.get(format!("{}/v1/models", moved.url)).bearer_auth(secret).send().await.unwrap();
    assert_eq!(models.status(), 200, "the key works in the new database");
    let day_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 86_400;
    let usage: serde_json::Value = http
        .get(format!("{}/v1/organization/usage/completions?start_time={day_ago}&bucket_width=1h&limit=25", moved.url))
        .bearer_auth("move-admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let requests: u64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .map(|r| r["num_model_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 1, "{usage}");
    moved.terminate();

    // A cut-short file imports nothing.
    let short = dir.path().join("short.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&short, lines[..lines.len() - 1].join("\n")).unwrap();
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = format!("sqlite://{}", empty_dir.path().join("k.db").display());
    let truncated = keygate(&["import", short.to_str().unwrap(), "--database", &empty]);
    assert!(!truncated.status.success());
    assert!(String::from_utf8_lossy(&truncated.stderr).contains("rows but its header announces"));
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "hello\n").unwrap();
    let refused = keygate(&["import", garbage.to_str().unwrap(), "--database", &empty]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("line 1: not a keygate export header"));
    // Table and column names go into SQL: anything but known tables and plain
    // identifiers is refused before it reaches the database.
    let header = lines[0];
    for (row, error) in [
        (r#"{"table":"sqlite_master","row":{"name":"x"}}"#, "line 2: unknown table `sqlite_master`"),
        (r#"{"table":"projects","row":{"id) VALUES ('x'); DROP TABLE users; --":"x"}}"#, "line 2: a row needs columns"),
        (r#"{"table":"api_key_secrets","row":{"digest":{"hex":"zz"}}}"#, "line 2: an object value must be"),
        (r#"{"table":"projects","row":{"no_such_column":1}}"#, "line 2: rejected by the database"),
    ] {
        let crafted = dir.path().join("crafted.jsonl");
        std::fs::write(
            &crafted,
            format!(
                "{header}
{row}
"
            ),
        )
        .unwrap();
        let refused = keygate(&["import", crafted.to_str().unwrap(), "--database", &empty]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(error), "{row}: {stderr}");
    }
}

/// Keys declared in the config file: applied at start, a changed declaration
/// applies on SIGHUP and on `keygate reload`, drift made through the API is
/// reported and undone, and no secret is in the file, the database or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_keys_apply_at_start_and_on_reload_and_drift_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "sk-declared-ci-bot-secret-0123456789";
    let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    let config = dir.path().join("keygate.toml");
    let declare = |models: &str| {
        std::fs::write(
            &config,
            format!(
                "[upstream]\nurl = \"mock\"\n[[keys]]\nname = \"ci-bot\"\nsha256 = \"{hashed}\"\nmodels = [{models}]\n"
            ),
        )
        .unwrap();
    };
    declare("\"gpt-4o-mini\"");
    let admin = "sk-admin-declared-test-0123456789abcdefghij";
    let log = dir.path().join("keygate.log");
    let server = Server::launch(
        &format!("sqlite://{}", dir.path().join("k.db").display()),
        &[("KEYGATE_ADMIN_KEY", admin)],
        &["--config", config.to_str().unwrap()],
        Some(&log),
    );
    let chat = |model: &'static str| {
        let url = format!("{}/v1/chat/completions", server.url);
        async move {
            crate::util::http()
                .post(url)
                .bearer_auth(secret)
                .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(chat("gpt-4o-mini").await, 200, "declared at start");
    assert_eq!(chat("gpt-4o").await, 404);

    // A changed declaration applies on SIGHUP.
    declare("\"gpt-4o\"");
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat("gpt-4o").await != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not apply the declaration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chat("gpt-4o-mini").await, 404);

    // Drift made through the API is reported by `keygate reload` and undone.
    let keys: serde_json::Value = crate::util::http()
        .get(format!("{}/v1/organization/api_keys?q=ci-bot", server.url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &keys["data"][0];
    let (id, project) = (key["id"].as_str().unwrap(), key["project_id"].as_str().unwrap());
    let changed = crate::util::http()
        .post(format!("{}/v1/organization/projects/{project}/api_keys/{id}", server.url))
        .bearer_auth(admin)
        .json(&serde_json::json!({"models": ["o3-mini"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let reload = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["reload", "--json"])
        .env("KEYGATE_URL", &server.url)
        .env("KEYGATE_ADMIN_KEY", admin)
        .output()
        .unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let applied: serde_json::Value = serde_json::from_slice(&reload.stdout).unwrap();
    assert_eq!(applied["data"][0]["result"], "updated", "{applied}");
    assert!(applied["data"][0]["drift"][0].as_str().unwrap().contains("models"), "{applied}");
    assert_eq!(chat("gpt-4o").await, 200, "the declaration wins");
    let again = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["reload", "--json"])
        .env("KEYGATE_URL", &server.url)
        .env("KEYGATE_ADMIN_KEY", admin)
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["data"][0]["result"], "unchanged");

    server.kill();
    for file in ["k.db", "keygate.log", "keygate.toml"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(secret), "the secret is in {file}");
    }
}
