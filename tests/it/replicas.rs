//! Several `keygate serve` processes on one PostgreSQL database and one Redis,
//! as a platform runs them behind a load balancer; moving a SQLite deployment
//! to PostgreSQL; PostgreSQL going away under a running gateway.
//!
//! These need the machine's PostgreSQL (127.0.0.1:5432) and Redis
//! (127.0.0.1:6379); each test works in a schema and a key prefix of its own.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::binary::{keygate, Server};
use crate::redis::{prefix, PrivateRedis, SHARED_REDIS};
use crate::util::*;

const ADMIN: &str = "replicas-admin-secret";

fn replica_env<'a>(redis: &'a str, prefix: &'a str, policy: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("KEYGATE_ADMIN_KEY", ADMIN),
        ("KEYGATE_REDIS_URL", redis),
        ("KEYGATE_REDIS__KEY_PREFIX", prefix),
        ("KEYGATE_REDIS__ON_FAILURE", policy),
    ]
}

async fn chat(url: &str, key: &str) -> u16 {
    http()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(url: &str, method: Method, path: &str) -> (u16, Value) {
    admin_as(ADMIN, url, method, path).await
}

async fn admin_as(admin_key: &str, url: &str, method: Method, path: &str) -> (u16, Value) {
    let response = http().request(method, format!("{url}{path}")).bearer_auth(admin_key).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn readyz(url: &str) -> (u16, String) {
    let response = http().get(format!("{url}/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Model requests the Usage API of `url` counts for `key_id` over the last day.
async fn requests_of(url: &str, key_id: &str) -> u64 {
    requests_as(ADMIN, url, key_id).await
}

async fn requests_as(admin_key: &str, url: &str, key_id: &str) -> u64 {
    let day_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 86_400;
    let (status, usage) = admin_as(
        admin_key,
        url,
        Method::GET,
        &format!("/v1/organization/usage/completions?start_time={day_ago}&bucket_width=1d&api_key_ids={key_id}"),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .map(|r| r["num_model_requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn two_serve_processes_share_revocation_limits_and_usage() {
    let database = postgres_schema().await;
    let prefix = prefix();
    let env = replica_env(SHARED_REDIS, &prefix, "closed");
    let a = Server::start_on(&database, &env);
    let b = Server::start_on(&database, &env);

    // An RPM limit of 10 holds across both replicas combined.
    let limited =
        a.create_key_with(ADMIN, json!({"name": "limited", "rate_limits": {"max_requests_per_1_minute": 10}})).await;
    let limited = limited["value"].as_str().unwrap().to_owned();
    // B learns of the key from A's announcement (echo-auth spends no limit).
    let known_to_b = || async {
        let echo = http().get(format!("{}/v1/keygate/echo-auth", b.url)).bearer_auth(&limited).send().await.unwrap();
        echo.status() == 200
    };
    assert!(eventually(Duration::from_secs(1), known_to_b).await, "replica B never learned of the key");
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(chat(if i % 2 == 0 { &a.url } else { &b.url }, &limited).await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");

    // Usage from both replicas appears in one Usage API answer.
    let metered = a.create_key(ADMIN, "metered").await;
    let (metered_id, metered) =
        (metered["id"].as_str().unwrap().to_owned(), metered["value"].as_str().unwrap().to_owned());
    for _ in 0..3 {
        assert_eq!(chat(&a.url, &metered).await, 200);
    }
    for _ in 0..4 {
        assert_eq!(chat(&b.url, &metered).await, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async { requests_of(&a.url, &metered_id).await == 7 }).await,
        "A's Usage API counts the 7 requests of both replicas: {}",
        requests_of(&a.url, &metered_id).await
    );
    assert_eq!(requests_of(&b.url, &metered_id).await, 7);

    // A key revoked through A is refused by B within a second.
    let project = a.default_project(ADMIN).await;
    let (status, _) =
        admin(&a.url, Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{metered_id}")).await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    assert!(eventually(Duration::from_secs(1), || async { chat(&b.url, &metered).await == 401 }).await);
    assert!(revoked_at.elapsed() < Duration::from_secs(1), "B refused it after {:?}", revoked_at.elapsed());
    a.terminate();
    b.terminate();
}

#[tokio::test]
async fn redis_stopping_under_two_serve_processes_follows_each_policy_and_recovers() {
    let database = postgres_schema().await;
    let redis = PrivateRedis::start(free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = prefix();
    let open = Server::start_on(&database, &replica_env(&redis_url, &prefix, "open"));
    let closed = Server::start_on(&database, &replica_env(&redis_url, &prefix, "closed"));
    let key =
        open.create_key_with(ADMIN, json!({"name": "k", "rate_limits": {"max_requests_per_1_minute": 100}})).await;
    let key = key["value"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(2), || async { chat(&closed.url, &key).await == 200 }).await);
    assert_eq!(chat(&open.url, &key).await, 200);

    let port = redis.stop();
    assert_eq!(chat(&open.url, &key).await, 200, "fail-open: local limits carry on");
    let (status, text) = readyz(&open.url).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("degraded: redis unreachable"), "{text}");
    assert_eq!(chat(&closed.url, &key).await, 503, "fail-closed: refused while Redis is away");
    assert_eq!(readyz(&closed.url).await.0, 503);

    let _redis = PrivateRedis::start(port);
    for server in [&open, &closed] {
        assert!(
            eventually(Duration::from_secs(10), || async { readyz(&server.url).await == (200, "ready".into()) }).await,
            "{:?}",
            readyz(&server.url).await
        );
        assert!(eventually(Duration::from_secs(5), || async { chat(&server.url, &key).await == 200 }).await);
    }
    open.terminate();
    closed.terminate();
}

#[tokio::test]
async fn a_sqlite_deployment_moves_to_postgres_with_every_key_working() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYGATE_ADMIN_KEY", ADMIN)];
    let old = Server::start(dir.path(), &env);
    let project = old.default_project(ADMIN).await;
    let mut live = Vec::new();
    for body in [
        json!({"name": "plain"}),
        json!({"name": "read-only", "permissions": "read_only"}),
        json!({"name": "prefixed", "prefix": "sk-prod-", "models": ["gpt-4o*"]}),
    ] {
        live.push(old.create_key_with(ADMIN, body).await["value"].as_str().unwrap().to_owned());
    }
    let rotated = old.create_key(ADMIN, "rotated").await;
    let rotated_id = rotated["id"].as_str().unwrap().to_owned();
    let (status, fresh) =
        admin(&old.url, Method::POST, &format!("/v1/organization/projects/{project}/api_keys/{rotated_id}/rotate"))
            .await;
    assert_eq!(status, 200, "{fresh}");
    live.push(rotated["value"].as_str().unwrap().to_owned()); // in its grace period
    live.push(fresh["value"].as_str().unwrap().to_owned());
    let revoked = old.create_key(ADMIN, "revoked").await;
    let revoked_id = revoked["id"].as_str().unwrap();
    admin(&old.url, Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{revoked_id}")).await;
    assert_eq!(chat(&old.url, &live[0]).await, 200);
    let first_id = {
        let (_, list) = admin(&old.url, Method::GET, &format!("/v1/organization/projects/{project}/api_keys")).await;
        list["data"][0]["id"].as_str().unwrap().to_owned()
    };
    let (_, audit_before) = admin(&old.url, Method::GET, "/v1/organization/audit_logs?limit=100").await;
    let (status, log) = old.terminate();
    assert!(status.success(), "{log}");

    let file = dir.path().join("move.jsonl");
    let source = format!("sqlite://{}", dir.path().join("k.db").display());
    let export = keygate(&["export", "--database", &source, "--output", file.to_str().unwrap()]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let target = postgres_schema().await;
    let import = keygate(&["import", file.to_str().unwrap(), "--database", &target]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));

    let moved = Server::start_on(&target, &env);
    for key in &live {
        let models = http().get(format!("{}/v1/models", moved.url)).bearer_auth(key).send().await.unwrap();
        assert_eq!(models.status(), 200, "every live key works on PostgreSQL");
    }
    assert_eq!(chat(&moved.url, revoked["value"].as_str().unwrap()).await, 401, "a revoked key stays revoked");
    assert_eq!(requests_of(&moved.url, &first_id).await, 1, "the usage rows came along");
    let (_, audit_after) = admin(&moved.url, Method::GET, "/v1/organization/audit_logs?limit=100").await;
    assert_eq!(audit_after["data"], audit_before["data"], "the audit log came along, in order");
    // New rows follow the imported ones: identities continue past them.
    let added = moved.create_key(ADMIN, "after the move").await;
    assert_eq!(chat(&moved.url, added["value"].as_str().unwrap()).await, 200);
    let (_, audit) = admin(&moved.url, Method::GET, "/v1/organization/audit_logs?limit=1").await;
    assert_eq!(audit["data"][0]["api_key.created"]["id"], added["id"], "{audit}");
    let (_, list) = admin(&moved.url, Method::GET, &format!("/v1/organization/projects/{project}/api_keys")).await;
    assert_eq!(list["data"].as_array().unwrap().last().unwrap()["id"], added["id"], "lists keep insertion order");
    moved.terminate();
}

#[tokio::test]
async fn when_postgres_goes_away_keys_still_work_usage_waits_and_readyz_says_degraded() {
    let mock = MockUpstream::start().await;
    let proxy = CutProxy::start("127.0.0.1:5432").await;
    let schema = postgres_schema().await;
    let through_proxy = schema.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    let gw = TestGateway::start_on(through_proxy, &mock.url, "").await;
    let (key, secret) = gw.create_key("outage").await;
    let key_id = key["id"].as_str().unwrap();
    assert_eq!(chat(&gw.url, &secret).await, 200);

    proxy.cut();
    for _ in 0..5 {
        assert_eq!(chat(&gw.url, &secret).await, 200, "keys are checked from memory");
    }
    assert_eq!(chat(&gw.url, "sk-kg1-not-a-key").await, 401);
    let (status, text) = readyz(&gw.url).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("degraded: database unreachable"), "{text}");

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), || async { requests_as(ADMIN_KEY, &gw.url, key_id).await == 6 }).await,
        "the usage of the outage is written once the database is back: {}",
        requests_as(ADMIN_KEY, &gw.url, key_id).await
    );
    assert_eq!(readyz(&gw.url).await, (200, "ready".into()));
}

/// Replicas starting together on an empty database agree on one setup.
#[tokio::test]
async fn replicas_migrating_and_bootstrapping_together_agree_on_one_setup() {
    let url = postgres_schema().await;
    let opened = futures_util::future::join_all((0..4).map(|_| {
        let url = url.clone();
        async move {
            let store = keygate::store::open(&url).await.unwrap();
            store.bootstrap(1).await.unwrap()
        }
    }))
    .await;
    assert_eq!(opened.iter().filter(|b| b.first_start).count(), 1);
    assert!(opened.iter().all(|b| b.default_project.id == opened[0].default_project.id));
    assert!(opened.iter().all(|b| b.organization_id == opened[0].organization_id));
}

/// Both engines' migrations make the same tables with the same columns.
#[tokio::test]
async fn the_sqlite_and_postgres_schemas_match() {
    use sqlx::Row;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("k.db").display());
    keygate::store::open(&sqlite_url).await.unwrap();
    let postgres_url = postgres_schema().await;
    keygate::store::open(&postgres_url).await.unwrap();

    let sqlite = sqlx::SqlitePool::connect(&sqlite_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&sqlite)
    .await
    .unwrap();
    let mut in_sqlite: Vec<(String, String)> = rows.iter().map(|r| (r.get("t"), r.get("c"))).collect();
    let postgres = sqlx::PgPool::connect(&postgres_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = current_schema() AND column_name != 'rowid'",
    )
    .fetch_all(&postgres)
    .await
    .unwrap();
    let mut in_postgres: Vec<(String, String)> = rows.iter().map(|r| (r.get("t"), r.get("c"))).collect();
    in_sqlite.sort();
    in_postgres.sort();
    assert!(in_sqlite.len() > 100, "{in_sqlite:?}");
    assert_eq!(in_sqlite, in_postgres);
}

/// One replica at a time holds a job's lease; another takes over only once
/// it has expired. Both engines.
#[tokio::test]
async fn a_job_lease_has_one_holder_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    for url in [format!("sqlite://{}", dir.path().join("k.db").display()), postgres_schema().await] {
        let store = keygate::store::open(&url).await.unwrap();
        assert!(store.hold_lease("job", "a", 1000, 60).await.unwrap());
        assert!(!store.hold_lease("job", "b", 1030, 60).await.unwrap(), "{url}: held by a");
        assert!(store.hold_lease("job", "a", 1050, 60).await.unwrap(), "{url}: a renews");
        assert!(!store.hold_lease("job", "b", 1100, 60).await.unwrap(), "{url}: the renewal counts");
        assert!(store.hold_lease("other", "b", 1100, 60).await.unwrap(), "{url}: leases are per job");
        assert!(store.hold_lease("job", "b", 1110, 60).await.unwrap(), "{url}: expired, b takes over");
        assert!(!store.hold_lease("job", "a", 1120, 60).await.unwrap(), "{url}: a lost it");
    }
}

/// `keygate migrate` on PostgreSQL reports what it applied; a schema newer
/// than the binary is refused by migrate and serve alike.
#[tokio::test]
async fn migrate_on_postgres_reports_and_refuses_a_newer_schema() {
    let url = postgres_schema().await;
    let first = keygate(&["migrate", "--database", &url, "--json"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["from_version"], 0);
    assert_eq!(report["to_version"], 4);
    assert_eq!(report["applied"].as_array().unwrap().len(), 4);
    let again: Value = serde_json::from_slice(&keygate(&["migrate", "--database", &url, "--json"]).stdout).unwrap();
    assert_eq!(again["applied"], json!([]), "nothing left to apply");
    let backup = keygate(&["backup", "/tmp/never-written.db", "--database", &url]);
    assert!(!backup.status.success());
    assert!(String::from_utf8_lossy(&backup.stderr).contains("pg_dump"), "backup points PostgreSQL users to pg_dump");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO keygate_schema (version, name, applied_at) VALUES (99, 'future', 0)")
        .execute(&pool)
        .await
        .unwrap();
    let newer = keygate(&["migrate", "--database", &url]);
    assert!(!newer.status.success());
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer than this keygate knows"));
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .output()
        .unwrap();
    assert!(!serve.status.success(), "serve refuses a newer schema");
    assert!(String::from_utf8_lossy(&serve.stderr).contains("newer than this keygate knows"));
}

/// Key `n` of a store test: named `k<n>`, its secret `secret-<n>`.
fn stored_key(id: keygate::ids::PublicId, n: u32, project: &str) -> keygate::store::NewKey {
    use keygate::store::{Access, KeyKind, NewKey, SecretVersion};
    NewKey {
        id,
        kind: KeyKind::Project,
        name: format!("k{n}"),
        project_id: Some(project.to_owned()),
        owner: None,
        prefix: "sk-".into(),
        permissions: Default::default(),
        access: Access::default(),
        limits: Default::default(),
        budget: None,
        created_at: 1,
        expires_at: None,
        secret: SecretVersion {
            digest: keygate::key::KeyDigest::of(&format!("secret-{n}")),
            legacy: false,
            last4: "abcd".into(),
            created_at: 1,
            expires_at: None,
        },
    }
}

/// The full key load (start-up and reconcile) reads in pages; none is lost or
/// repeated at the page boundaries. Both engines.
#[tokio::test]
async fn loading_every_key_pages_through_all_of_them() {
    use keygate::ids::PublicId;
    use keygate::key::KeyDigest;
    let dir = tempfile::tempdir().unwrap();
    for url in [format!("sqlite://{}", dir.path().join("k.db").display()), postgres_schema().await] {
        let store = keygate::store::open(&url).await.unwrap();
        let project = store.bootstrap(1).await.unwrap().default_project.id;
        let mut ids = std::collections::BTreeSet::new();
        for n in 0..4_100u32 {
            let id = PublicId::random();
            ids.insert(id.as_str().to_owned());
            store.insert_key(&stored_key(id, n, &project)).await.unwrap();
        }
        let keys = keygate::jobs::read_keys(&*store).await.unwrap();
        assert_eq!(keys.len(), 4_100, "{url}: every key, once");
        let index = keygate::auth::KeyIndex::build(keys, Vec::new());
        for (n, id) in ids.iter().enumerate() {
            let key = index.by_id(&PublicId::parse(id).unwrap()).unwrap_or_else(|| panic!("{url}: key {n} lost"));
            let digest = KeyDigest::of(&format!("secret-{}", &key.name[1..]));
            assert!(index.lookup(&digest).is_some_and(|found| found.key.id == key.id), "{url}: {id}'s secret");
        }
    }
}

/// The periodic reconcile brings in what another process wrote to the store
/// (a revocation, a rotation, a new key, a project change) and rebuilds
/// nothing else; a key the store no longer has leaves the index. Both engines.
#[tokio::test]
async fn a_reconcile_takes_in_changes_made_elsewhere_and_keeps_the_rest() {
    use std::sync::Arc;

    use keygate::auth::KeyIndex;
    use keygate::ids::PublicId;
    use keygate::key::KeyDigest;
    use keygate::store::{KeyState, ProjectUpdate, Revocation, SecretVersion};
    let dir = tempfile::tempdir().unwrap();
    for url in [format!("sqlite://{}", dir.path().join("r.db").display()), postgres_schema().await] {
        let store = keygate::store::open(&url).await.unwrap();
        let project = store.bootstrap(1).await.unwrap().default_project.id;
        let ids: Vec<PublicId> = (0..3).map(|_| PublicId::random()).collect();
        for (n, id) in ids.iter().enumerate() {
            store.insert_key(&stored_key(*id, n as u32, &project)).await.unwrap();
        }
        let index =
            KeyIndex::build(keygate::jobs::read_keys(&*store).await.unwrap(), store.all_projects().await.unwrap());
        let untouched = index.by_id(&ids[0]).unwrap();

        keygate::jobs::reconcile_index(&*store, &index).await;
        assert!(Arc::ptr_eq(&untouched, &index.by_id(&ids[0]).unwrap()), "{url}: nothing changed, nothing rebuilt");

        // Another replica revokes one key, rotates another, adds a third and
        // restricts the project's models.
        let revocation = Revocation { at: 5, by: Some("elsewhere".into()), reason: None };
        store.revoke_key(&ids[1], &revocation).await.unwrap().unwrap();
        let rotated = SecretVersion {
            digest: KeyDigest::of("secret-rotated"),
            legacy: false,
            last4: "wxyz".into(),
            created_at: 6,
            expires_at: None,
        };
        store.rotate_key(&ids[2], &rotated, 600).await.unwrap().unwrap();
        let added = PublicId::random();
        store.insert_key(&stored_key(added, 3, &project)).await.unwrap();
        let update = ProjectUpdate { models: Some(Some(vec!["gpt-4o*".into()])), ..ProjectUpdate::default() };
        store.update_project(&project, &update).await.unwrap().unwrap();

        keygate::jobs::reconcile_index(&*store, &index).await;
        assert!(Arc::ptr_eq(&untouched, &index.by_id(&ids[0]).unwrap()), "{url}: the unchanged key is kept");
        assert_eq!(index.by_id(&ids[1]).unwrap().state, KeyState::Revoked, "{url}");
        let old = index.lookup(&KeyDigest::of("secret-2")).unwrap();
        assert_eq!((old.key.id, old.secret_expires_at), (ids[2], Some(600)), "{url}: the old secret in its grace");
        assert!(index.lookup(&KeyDigest::of("secret-rotated")).is_some_and(|f| f.secret_expires_at.is_none()));
        assert!(index.lookup(&KeyDigest::of("secret-3")).is_some_and(|f| f.key.id == added), "{url}: the new key");
        let models = index.project(&project).unwrap().access.models.clone();
        assert_eq!(models, Some(vec!["gpt-4o*".to_owned()]), "{url}: the project change");

        // A key this index holds but the store does not (removed by hand).
        let phantom = PublicId::random();
        index.refresh([keygate::store::KeyRecord { id: phantom, ..store.get_key(&ids[0]).await.unwrap().unwrap() }]);
        keygate::jobs::reconcile_index(&*store, &index).await;
        assert!(index.by_id(&phantom).is_none(), "{url}: a key the store lacks is dropped");
        assert_eq!(index.len(), 4, "{url}");
        assert!(index.lookup(&KeyDigest::of("secret-0")).is_some_and(|f| f.key.id == ids[0]), "{url}");
    }
}

/// Writers on one SQLite file at once (admin actions, the background
/// writer's batches) wait their turn instead of failing with "database is
/// locked": a transaction that reads, then writes, takes the write lock first.
#[tokio::test]
async fn concurrent_writers_on_sqlite_all_succeed() {
    use keygate::ids::PublicId;
    use keygate::store::Revocation;
    let dir = tempfile::tempdir().unwrap();
    let store = keygate::store::open(&format!("sqlite://{}", dir.path().join("w.db").display())).await.unwrap();
    let project = store.bootstrap(1).await.unwrap().default_project.id;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u32 {
        let (store, project) = (std::sync::Arc::clone(&store), project.clone());
        writers.spawn(async move {
            for n in 0..15u32 {
                let id = PublicId::random();
                store.insert_key(&stored_key(id, w * 100 + n, &project)).await?;
                let revocation = Revocation { at: 2, by: None, reason: None };
                store.revoke_key(&id, &revocation).await?;
            }
            Ok::<_, keygate::store::StoreError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap().expect("every concurrent write succeeds");
    }
}
