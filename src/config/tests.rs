use std::collections::HashMap;

use super::*;

#[derive(Default)]
struct FakeEnv(HashMap<String, String>);

impl FakeEnv {
    fn with(pairs: &[(&str, &str)]) -> Self {
        Self(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.0.clone().into_iter().collect()
    }
}

fn err(text: &str) -> String {
    Config::from_toml(text, &FakeEnv::default()).unwrap_err().to_string()
}

#[test]
fn defaults_start_on_the_mock_when_nothing_is_configured() {
    let c = Config::from_toml("", &FakeEnv::default()).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
    assert!(matches!(c.upstreams[0].members[0].target, UpstreamTarget::Mock));
    assert!(c.upstreams[0].defaulted_to_mock);
}

#[test]
fn a_credential_alone_selects_openai() {
    let c = Config::from_toml("", &FakeEnv::with(&[("OPENAI_API_KEY", "sk-upstream")])).unwrap();
    assert!(matches!(&c.upstreams[0].members[0].target, UpstreamTarget::Url(u) if u == DEFAULT_UPSTREAM_URL));
    assert_eq!(c.upstreams[0].members[0].credential.as_ref().unwrap().expose(), "sk-upstream");
}

#[test]
fn keygate_upstream_key_wins_over_openai_api_key() {
    let env = FakeEnv::with(&[("OPENAI_API_KEY", "a"), ("KEYGATE_UPSTREAM_API_KEY", "b")]);
    let c = Config::from_toml("", &env).unwrap();
    assert_eq!(c.upstreams[0].members[0].credential.as_ref().unwrap().expose(), "b");
}

#[test]
fn an_url_without_credential_is_proxied_without_auth() {
    let c = Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:8000/v1/\"", &FakeEnv::default()).unwrap();
    assert!(matches!(&c.upstreams[0].members[0].target, UpstreamTarget::Url(u) if u == "http://127.0.0.1:8000/v1"));
    assert!(c.upstreams[0].members[0].credential.is_none());
    assert!(!c.upstreams[0].defaulted_to_mock);
}

#[test]
fn bad_fields_are_named() {
    assert_eq!(
        err("[server]\nlisten = \"nope\""),
        "`server.listen` must be an address like 127.0.0.1:8080, got `nope`"
    );
    assert_eq!(
        err("[database]\nurl = \"mysql://x\""),
        "`database.url` must be a sqlite://PATH or postgres://USER@HOST/DATABASE URL, got a `mysql:` URL"
    );
    assert_eq!(err("[server]\nmax_body_bytes = 0"), "`server.max_body_bytes` must be between 1 and 1073741824, got 0");
    assert_eq!(
        err("[server]\nheader_read_timeout_ms = 0"),
        "`server.header_read_timeout_ms` must be between 100 and 3600000 (milliseconds), got 0"
    );
    assert_eq!(
        err("[server]\nrequest_body_timeout_ms = 3600001"),
        "`server.request_body_timeout_ms` must be between 100 and 3600000 (milliseconds), got 3600001"
    );
    assert_eq!(
        err("[server]\nidle_timeout_ms = 99"),
        "`server.idle_timeout_ms` must be between 100 and 3600000 (milliseconds), got 99"
    );
    assert_eq!(err("[server]\nmax_connections = 0"), "`server.max_connections` must be between 1 and 1000000, got 0");
    assert_eq!(
        err("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]"),
        "`server.trusted_proxies` `10.0.0.0/33` is not an IP address or CIDR range"
    );
    assert_eq!(err("[server]\ntls_cert = \"a.pem\""), "`server.tls_key` is required when `server.tls_cert` is set");
    assert_eq!(err("[upstream]\nurl = \"ftp://x\""), "`upstream.url` must be http or https, got `ftp://x`");
    assert_eq!(err("[upstream]\nconnect_timeout_ms = 0"), "`upstream.connect_timeout_ms` must be greater than 0");
    assert_eq!(err("[log]\nformat = \"xml\""), "`log.format` must be `text` or `json`, got `xml`");
    assert_eq!(
        err("[organization]\nid = \"acme\""),
        "`organization.id` must look like `org-<letters and digits>`, got `acme`"
    );
    assert_eq!(
        err("[[upstreams]]\nname = \"vllm\"\nurl = \"http://127.0.0.1:8000/v1\""),
        "`upstreams[0].models` must list at least one model pattern, e.g. [\"gpt-4o*\"]"
    );
    assert_eq!(
        err("[[upstreams]]\nname = \"x\"\nurl = \"http://h/v1\"\nmodels = [\"a\"]\napi_key_env = \"NOPE\""),
        "`upstreams[0].api_key_env` names `NOPE`, which is not set"
    );
    assert!(err("[server]\nlisten_port = 1").contains("unknown field `listen_port`"));
    assert_eq!(
        err("[redis]\nurl = \"127.0.0.1:6379\""),
        "`redis.url` must be a redis:// or rediss:// URL, got `127.0.0.1:6379`"
    );
    assert_eq!(
        err("[redis]\nurl = \"redis://h\"\non_failure = \"maybe\""),
        "`redis.on_failure` must be `open` or `closed`, got `maybe`"
    );
}

#[test]
fn connection_timeouts_and_cap_have_defaults_and_can_be_set() {
    let c = Config::from_toml("", &FakeEnv::default()).unwrap();
    assert_eq!(c.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.request_body_timeout, Duration::from_secs(60));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.max_connections, 10_000);
    let text = "[server]\nheader_read_timeout_ms = 300\nrequest_body_timeout_ms = 500\nidle_timeout_ms = 400\nmax_connections = 3";
    let c = Config::from_toml(text, &FakeEnv::default()).unwrap();
    assert_eq!(c.header_read_timeout, Duration::from_millis(300));
    assert_eq!(c.request_body_timeout, Duration::from_millis(500));
    assert_eq!(c.idle_timeout, Duration::from_millis(400));
    assert_eq!(c.max_connections, 3);
}

#[test]
fn env_sections_overlay_the_file_and_flags_overlay_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n").unwrap();
    let env = FakeEnv::with(&[("KEYGATE_SERVER__MAX_BODY_BYTES", "20"), ("KEYGATE_SERVER__LISTEN", "127.0.0.1:2")]);
    let c = Config::load(Some(&path), &Overrides::default(), &env).unwrap();
    assert_eq!(c.max_body_bytes, 20);
    assert_eq!(c.listen.port(), 2);
    let flags = Overrides { listen: Some("127.0.0.1:3".into()), ..Overrides::default() };
    assert_eq!(Config::load(Some(&path), &flags, &env).unwrap().listen.port(), 3);
}

const EXAMPLE: &str = include_str!("../../keygate.example.toml");

#[test]
fn copying_the_example_file_changes_nothing() {
    // With no credential: the mock, as with no file at all.
    let example = Config::from_toml(EXAMPLE, &FakeEnv::default()).unwrap();
    let none = Config::from_toml("", &FakeEnv::default()).unwrap();
    assert_eq!(example.upstreams.len(), 1, "the example must not add an active [[upstreams]] entry");
    assert!(
        matches!(example.upstreams[0].members[0].target, UpstreamTarget::Mock),
        "{:?}",
        example.upstreams[0].members[0].target
    );
    assert!(example.upstreams[0].defaulted_to_mock);
    assert_eq!(example.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(example.metrics_listen, none.metrics_listen);
    assert!(example.trusted_proxies.is_empty(), "copying the example must not make X-Forwarded-For believed");
    assert!(example.redis.is_none() && example.tls.is_none() && example.organization_id.is_none());
    // Every other setting too: `Config` holds no hash maps, so its `Debug`
    // text is deterministic and compares the whole value.
    assert_eq!(format!("{example:?}"), format!("{none:?}"));
    // With a credential: OpenAI, as with no file at all.
    let env = FakeEnv::with(&[("OPENAI_API_KEY", "sk-upstream")]);
    let example = Config::from_toml(EXAMPLE, &env).unwrap();
    assert!(matches!(&example.upstreams[0].members[0].target, UpstreamTarget::Url(u) if u == DEFAULT_UPSTREAM_URL));
    assert_eq!(format!("{example:?}"), format!("{:?}", Config::from_toml("", &env).unwrap()));
}

/// The example with every `# key = value` and `# [section]` line made active.
/// Prose comments never take that shape, so what remains commented is prose.
fn uncommented(text: &str) -> String {
    let is_setting = |line: &str| {
        if line.starts_with('[') {
            return line.ends_with(']');
        }
        let Some((key, _)) = line.split_once(" = ") else { return false };
        let quoted = key.len() > 2 && key.starts_with('"') && key.ends_with('"');
        quoted || (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    };
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting) if is_setting(setting) => setting,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The field names a `#[derive(Deserialize)]` struct accepts, straight from
/// the derive: it passes them to `Deserializer::deserialize_struct`, which this
/// deserializer records before refusing. A field added to a `Raw*` struct is
/// thus checked below without anyone listing it.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Fields(std::cell::Cell<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &Fields {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(Self::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let fields = Fields(std::cell::Cell::new(&[]));
    let _ = T::deserialize(&fields);
    fields.0.get()
}

/// Every field every `Raw*` struct accepts is in the example, active or as a
/// commented-out example, and the examples themselves are valid: the file
/// with all of them uncommented must pass the same parser and validation.
#[test]
fn the_example_file_documents_every_setting() {
    // The pool example's member reads its key from a file: give it one.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "sk-from-a-file\n").unwrap();
    let full = uncommented(EXAMPLE).replace("/run/secrets/openai-org-b", &secret.path().display().to_string());
    let env = FakeEnv::with(&[("MY_OPENAI_KEY", "a"), ("VLLM_API_KEY", "b"), ("AZURE_OPENAI_API_KEY", "c")]);
    let config = Config::from_toml(&full, &env).unwrap_or_else(|e| panic!("{e}\n{full}"));
    assert!(config.redis.is_some() && config.tls.is_some() && config.organization_id.is_some());
    assert_eq!(config.upstreams.len(), 4, "the three [[upstreams]] examples");
    let pool = &config.upstreams[3];
    assert_eq!(pool.members.len(), 2);
    assert_eq!(pool.members[1].credential.as_ref().unwrap().expose(), "sk-from-a-file");
    assert_eq!(pool.members[1].models, vec!["gpt-4.1-mini".to_owned()]);

    let table: toml::Table = full.parse().unwrap();
    let keys_of = |value: &toml::Value| -> Vec<String> {
        value.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default()
    };
    let mut documented = 0;
    for section in fields_of::<RawConfig>() {
        let value = table.get(*section).unwrap_or_else(|| panic!("[{section}] is missing from the example"));
        // Each section's settings, and the struct that accepts them.
        let (present, accepted): (Vec<String>, &[&str]) = match *section {
            "server" => (keys_of(value), fields_of::<RawServer>()),
            "database" => (keys_of(value), fields_of::<RawDatabase>()),
            "organization" => (keys_of(value), fields_of::<RawOrganization>()),
            // [[upstreams]] has [upstream]'s fields: each in [upstream], or in
            // at least one of the [[upstreams]] examples or their members.
            "upstream" | "upstreams" => {
                let routed = table.get("upstreams").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
                let members = routed.iter().filter_map(|u| u.get("members")?.as_array()).flatten();
                let keys = keys_of(&table["upstream"])
                    .into_iter()
                    .chain(routed.iter().flat_map(keys_of))
                    .chain(members.flat_map(keys_of))
                    .collect();
                (keys, fields_of::<RawUpstream>())
            }
            "log" => (keys_of(value), fields_of::<RawLog>()),
            "errors" => (keys_of(value), fields_of::<RawErrors>()),
            "retention" => (keys_of(value), fields_of::<RawRetention>()),
            "prices" => {
                let entries = value.as_table().map(|t| t.values().collect::<Vec<_>>()).unwrap_or_default();
                assert!(!entries.is_empty(), "[prices] has no example entry");
                (entries.into_iter().flat_map(keys_of).collect(), fields_of::<RawPrice>())
            }
            "anomaly" => (keys_of(value), fields_of::<RawAnomaly>()),
            "limits" => (keys_of(value), fields_of::<RawLimits>()),
            "azure" => (keys_of(value), fields_of::<RawAzure>()),
            "usage" => (keys_of(value), fields_of::<RawUsage>()),
            "redis" => (keys_of(value), fields_of::<RawRedis>()),
            "keys" => {
                let entries = value.as_array().map(Vec::as_slice).unwrap_or_default();
                (entries.iter().flat_map(keys_of).collect(), fields_of::<RawDeclaredKey>())
            }
            "dashboard" => {
                let oidc = value.get("oidc").map(keys_of).unwrap_or_default();
                for field in fields_of::<RawOidc>() {
                    assert!(oidc.iter().any(|p| p == field), "`dashboard.oidc.{field}` is not in keygate.example.toml");
                }
                (keys_of(value), fields_of::<RawDashboard>())
            }
            other => panic!("a new section `{other}`: add it here, with its Raw struct"),
        };
        assert!(!accepted.is_empty(), "no fields recorded for [{section}]");
        for field in accepted {
            assert!(present.iter().any(|p| p == field), "`{section}.{field}` is not in keygate.example.toml");
            documented += 1;
        }
    }
    assert!(documented > 60, "only {documented} settings checked");
}

#[test]
fn a_keygate_key_is_never_taken_as_the_upstream_credential() {
    use crate::ids::PublicId;
    use crate::key::{generate, KeyPrefix};
    let key = generate(&KeyPrefix::parse("sk-").unwrap(), &PublicId::random()).secret;
    for var in ["OPENAI_API_KEY", "KEYGATE_UPSTREAM_API_KEY"] {
        let error = Config::from_toml("", &FakeEnv::with(&[(var, &format!("{}\n", key.expose()))])).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&format!("reads `{var}`, which holds a key issued by keygate")), "{text}");
        let help = error.help().unwrap_or_default();
        assert!(help.starts_with("put the OpenAI or Azure key in KEYGATE_UPSTREAM_API_KEY"), "{help}");
        assert!(!text.contains(key.expose()), "the key itself is never printed");
    }
    let named = "[upstream]\napi_key_env = \"MY_KEY\"\n";
    let text = Config::from_toml(named, &FakeEnv::with(&[("MY_KEY", key.expose())])).unwrap_err().to_string();
    assert!(text.starts_with("`upstream.api_key_env` reads `MY_KEY`"), "{text}");
}

#[test]
fn metrics_are_served_on_loopback_unless_configured() {
    let c = Config::from_toml("", &FakeEnv::default()).unwrap();
    assert_eq!(c.metrics_listen, MetricsListen::Default(DEFAULT_METRICS_LISTEN.parse().unwrap()));
    assert!(matches!(c.metrics_listen, MetricsListen::Default(addr) if addr.ip().is_loopback()));
    let c = Config::from_toml("[server]\nmetrics_listen = \"off\"\n", &FakeEnv::default()).unwrap();
    assert_eq!(c.metrics_listen, MetricsListen::Off);
    let c = Config::from_toml("[server]\nmetrics_listen = \"0.0.0.0:9100\"\n", &FakeEnv::default()).unwrap();
    assert_eq!(c.metrics_listen, MetricsListen::Configured("0.0.0.0:9100".parse().unwrap()));
    assert!(err("[server]\nmetrics_listen = \"9100\"\n").starts_with("`server.metrics_listen` must be an address"));
}

#[test]
fn leak_reports_are_limited_to_10_a_minute_unless_configured() {
    let parse = |text: &str| Config::from_toml(text, &FakeEnv::default()).unwrap().leak_reports_per_minute;
    assert_eq!(parse(""), Some(10));
    assert_eq!(parse("[limits]\nleak_reports_per_minute = 3\n"), Some(3));
    assert_eq!(parse("[limits]\nleak_reports_per_minute = 0\n"), None, "0 turns the limit off");
    assert!(err("[limits]\nleak_reports_per_minute = -1\n").contains("leak_reports_per_minute"));
}

fn load_err(overrides: &Overrides) -> ConfigError {
    Config::load(None, overrides, &FakeEnv::default()).unwrap_err()
}

#[test]
fn a_port_alone_for_listen_names_the_flag_and_suggests_an_address() {
    let error = load_err(&Overrides { listen: Some("18102".into()), ..Overrides::default() });
    assert_eq!(error.to_string(), "`--listen` must be an address like 127.0.0.1:8080, got `18102`");
    assert_eq!(
        error.help().as_deref(),
        Some("use `127.0.0.1:18102` (this machine only) or `0.0.0.0:18102` (every interface)")
    );
    let error = Config::from_toml("[server]\nmetrics_listen = \"9100\"\n", &FakeEnv::default()).unwrap_err();
    assert!(error.help().unwrap_or_default().contains("`127.0.0.1:9100`"), "{error}");
}

#[test]
fn a_database_path_without_a_scheme_suggests_the_sqlite_url() {
    let error = load_err(&Overrides { database_url: Some("keygate.db".into()), ..Overrides::default() });
    assert!(error.to_string().starts_with("`--database` must be a sqlite://PATH"), "{error}");
    assert!(error.to_string().ends_with("got `keygate.db`"), "{error}");
    assert_eq!(error.help().as_deref(), Some("for a SQLite file, use `sqlite://keygate.db`"));
    // A URL with a scheme may hold a password: only the scheme is repeated.
    let error = load_err(&Overrides { database_url: Some("mysql://u:hunter2@h/db".into()), ..Overrides::default() });
    assert!(!error.to_string().contains("hunter2") && !error.help().unwrap_or_default().contains("hunter2"));
}

#[test]
fn a_missing_config_file_names_the_path_once_and_keeps_the_os_error_as_the_cause() {
    let error = Config::load(Some(Path::new("/nonexistent/keygate.toml")), &Overrides::default(), &FakeEnv::default())
        .unwrap_err();
    assert_eq!(error.to_string(), "cannot read config file `/nonexistent/keygate.toml`");
    let cause = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
    assert!(cause.contains("No such file"), "{cause}");
    assert!(error.help().unwrap_or_default().contains("--config"));
}

#[test]
fn url_errors_never_print_the_urls_password() {
    // Found by fuzzing: only `database.url` kept its password out of errors.
    assert_eq!(
        err("[redis]\nurl = \"valkey://:hunter2@10.0.0.5:6379\""),
        "`redis.url` must be a redis:// or rediss:// URL, got `valkey://:***@10.0.0.5:6379`"
    );
    assert_eq!(
        err("[upstream]\nurl = \"ftp://me:hunter2@host/v1\""),
        "`upstream.url` must be http or https, got `ftp://me:***@host/v1`"
    );
    assert_eq!(
        err("[anomaly]\nwebhook_url = \"ftp://u:p@ss:w0rd@hooks/x?a=b@c\""),
        "`anomaly.webhook_url` must be an http(s) URL, got `ftp://u:***@hooks/x?a=b@c`"
    );
    for url in [
        "[upstream]\nurl = \"http://u:hunter2@[::1\"",
        "[[upstreams]]\nname = \"a\"\nmodels = [\"x\"]\nurl = \"ws://u:hunter2@h\"",
    ] {
        assert!(!err(url).contains("hunter2"), "{}", err(url));
    }
    assert_eq!(
        err("[redis]\nurl = \"x://a://u:hunter2@h\""),
        "`redis.url` must be a redis:// or rediss:// URL, got `x://a://u:***@h`"
    );
    // No password, nothing hidden.
    assert_eq!(
        err("[redis]\nurl = \"valkey://user@h\""),
        "`redis.url` must be a redis:// or rediss:// URL, got `valkey://user@h`"
    );
}

#[test]
fn the_redis_password_never_reaches_the_configs_debug_form() {
    let c = Config::from_toml("[redis]\nurl = \"redis://:hunter2@10.0.0.5:6379\"\n", &FakeEnv::default()).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://:***@10.0.0.5:6379"), "{shown}");
}

#[test]
fn every_anomaly_setting_is_checked() {
    for (toml, field) in [
        ("dormant_days = 0", "anomaly.dormant_days"),
        ("spike_min_requests = 0", "anomaly.spike_min_requests"),
        ("new_network_min_requests = -1", "anomaly.new_network_min_requests"),
        ("new_key_max_rpm = 0", "anomaly.new_key_max_rpm"),
        ("spike_factor = 1.2", "anomaly.spike_factor"),
        ("spike_factor = nan", "anomaly.spike_factor"),
        ("window_seconds = 90", "anomaly.window_seconds"),
        ("cooldown_seconds = 99999999", "anomaly.cooldown_seconds"),
        ("baseline_days = 0", "anomaly.baseline_days"),
        ("baseline_days = 91", "anomaly.baseline_days"),
        ("window_seconds = 60\nbaseline_days = 8", "anomaly.baseline_days"),
        ("webhook_url = \"https://hooks.example.com/k\"", "anomaly.webhook_secret"),
        ("webhook_secret = \"whsec_ZXhhbXBsZS1vbmx5LWRvLW5vdC11c2UtdGhpcy1zZWNyZXQ=\"", "anomaly.webhook_url"),
        ("webhook_url = \"https://h/k\"\nwebhook_secret = \"not-a-whsec\"", "anomaly.webhook_secret"),
        ("webhook_url = \"https://h/k\"\nwebhook_secret = \"whsec_c2hvcnQ=\"", "anomaly.webhook_secret"),
    ] {
        let message = err(&format!("[anomaly]\n{toml}"));
        assert!(message.starts_with(&format!("`{field}`")), "{toml}: {message}");
    }
    let message = err("[retention]\nusage_rollups_days = 3\n[anomaly]\nbaseline_days = 7");
    assert!(message.contains("usage_rollups_days (3)"), "{message}");
    // A secret never appears in an error.
    let message = err("[anomaly]\nwebhook_url = \"https://h/k\"\nwebhook_secret = \"whsec_c2hvcnQ=\"");
    assert!(!message.contains("c2hvcnQ"), "{message}");
    let config = Config::from_toml(
        "[anomaly]\nenabled = false\nwebhook_url = \"https://h/k\"\nwebhook_secret = \"whsec_ZXhhbXBsZS1vbmx5LWRvLW5vdC11c2UtdGhpcy1zZWNyZXQ=\"",
        &FakeEnv::with(&[]),
    )
    .unwrap();
    assert!(config.anomaly.is_none() && config.alert_webhook.is_some(), "alerts are delivered with the watcher off");
    assert!(!format!("{config:?}").contains("ZXhhbXBsZS1vbmx5"), "the secret is not in Debug output");
}

#[test]
fn a_pool_takes_endpoint_settings_on_its_members_only_and_names_are_unique() {
    let env = FakeEnv::with(&[("K", "sk-provider")]);
    let member = |name: &str| {
        format!("[[upstreams.members]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/v1\"\napi_key_env = \"K\"\n")
    };
    let pool =
        |extra: &str, members: &str| format!("[[upstreams]]\nname = \"p\"\nmodels = [\"gpt-*\"]\n{extra}{members}");
    let good = pool("", &format!("{}{}", member("a"), member("b")));
    let config = Config::from_toml(&good, &env).unwrap();
    assert_eq!(config.upstreams[1].members.len(), 2);
    assert_eq!(config.upstreams[1].retries, 1);

    let error = |toml: &str| Config::from_toml(toml, &env).unwrap_err().to_string();
    assert!(error(&pool("url = \"http://x/v1\"\n", &member("a"))).contains("upstreams[0].url"));
    assert!(error(&pool("read_timeout_ms = 5\n", &member("a"))).contains("belongs to each of the pool's members"));
    assert!(error(&pool("", &format!("{}retries = 2\n", member("a")))).contains("members[0].retries"));
    assert!(error(&pool("", &format!("{}{}", member("a"), member("a")))).contains("names two members"));
    assert!(error(&pool("", &member("default"))).contains("unique across every pool"));
    let plain = "[[upstreams]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/v1\"\nmodels = [\"m\"]\nweight = 2\n";
    assert!(error(plain).contains("is a pool's setting"));
    let empty = tempfile::NamedTempFile::new().unwrap();
    let from_file = pool(
        "",
        &format!(
            "[[upstreams.members]]\nname = \"f\"\nurl = \"http://127.0.0.1:9/v1\"\napi_key_file = \"{}\"\n",
            empty.path().display()
        ),
    );
    assert!(error(&from_file).contains("empty"));
    let default_pool = format!("[upstream]\n{}", member("a").replace("[[upstreams.members]]", "[[upstream.members]]"));
    assert!(Config::from_toml(&default_pool, &env).is_ok());
    let shortcut = FakeEnv::with(&[("K", "sk-provider"), ("KEYGATE_UPSTREAM_URL", "http://127.0.0.1:9/v1")]);
    assert!(Config::from_toml(&default_pool, &shortcut).unwrap_err().to_string().contains("KEYGATE_UPSTREAM_URL"));
}
