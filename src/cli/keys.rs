use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints the secret once (the key alone on the first line).
    Create {
        /// A name that says where the key is used, e.g. MyApp-Prod-v2.
        #[arg(long)]
        name: String,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        /// Key prefix, e.g. sk-prod- (default sk-).
        #[arg(long)]
        prefix: Option<String>,
        /// all (default), read_only or restricted.
        #[arg(long, value_parser = ["all", "read_only", "restricted"])]
        permissions: Option<String>,
        /// OpenAI scopes for a restricted key, e.g. api.model.read,model.request.
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// Model patterns the key may use, e.g. 'gpt-4o*' (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Client address ranges the key may be used from, e.g. 10.0.0.0/8.
        #[arg(long = "allow-ip", value_delimiter = ',')]
        allow_ip: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the live keys of a project.
    List {
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        /// Also show each key's models, scopes, rate limits, budget and allowed addresses.
        #[arg(long, short)]
        long: bool,
        /// Only keys due for rotation under the project's max key age.
        #[arg(long)]
        due: bool,
        /// Include revoked keys.
        #[arg(long)]
        include_revoked: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rotate a key: a new secret under the same id, printed once; the old
    /// secret keeps working for the grace period.
    Rotate {
        /// The key id (`key_...`).
        key_id: String,
        /// How long the old secret keeps working: 0, 90s, 15m, 1h, 7d [default: 24h].
        #[arg(long, value_parser = super::parse_duration)]
        grace: Option<u64>,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Suspend a key: refused like a revoked key, but it can be resumed.
    Suspend {
        /// The key id (`key_...`).
        key_id: String,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a suspended key.
    Resume {
        /// The key id (`key_...`).
        key_id: String,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import existing keys, so their users change nothing. `--from keygate`:
    /// a `keygate export` file (each key keeps its id and secrets; revoked and
    /// admin keys stay behind). `--from plaintext`: CSV with a header row or
    /// JSONL, columns key (required), name, project, models (`;`-separated),
    /// rpm, tpm; each key is hashed here and marked legacy (no checksum).
    /// `--from sha256`: JSONL of hashed keys, LiteLLM's field names as they are.
    /// Every row is checked before any is written; re-running changes nothing.
    Import {
        /// Where the keys come from.
        #[arg(long, value_parser = ["keygate", "plaintext", "sha256"])]
        from: String,
        /// The file to read (`-`: standard input).
        file: String,
        /// Show what would be imported and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Project to import into (default: the default project).
        #[arg(long)]
        project: Option<String>,
        /// Only the keys of this project of the exported deployment.
        #[arg(long)]
        source_project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the SHA-256 of a key read from standard input: what a declared
    /// key or a `--from sha256` import names, so no secret is written down.
    Hash,
    /// Revoke a key at once.
    Revoke {
        /// The key id (`key_...`).
        key_id: String,
        /// Why, recorded with the revocation (e.g. leaked).
        #[arg(long)]
        reason: Option<String>,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create { name, project, prefix, permissions, allow, models, allow_ip, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let mut body = json!({"name": name});
            if let Some(prefix) = prefix {
                body["prefix"] = json!(prefix);
            }
            let permissions = permissions.or_else(|| (!allow.is_empty()).then(|| "restricted".to_owned()));
            if let Some(permissions) = permissions {
                body["permissions"] = json!(permissions);
            }
            if !allow.is_empty() {
                body["scopes"] = json!(allow);
            }
            if !models.is_empty() {
                body["models"] = json!(models);
            }
            if !allow_ip.is_empty() {
                body["allowed_ips"] = json!(allow_ip);
            }
            let key = api.post(&format!("/v1/organization/projects/{project}/api_keys"), body).await?;
            if client.json {
                output::json(&key);
            } else {
                output::line(key["value"].as_str().unwrap_or(""));
                output::line(&format!(
                    "created {} ({}) in {project}; this is the only time the key is shown",
                    output::text(&key["id"]),
                    output::text(&key["name"])
                ));
            }
        }
        KeysCommand::List { project, long, due, include_revoked, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let all = api
                .list_all(&format!(
                    "/v1/organization/projects/{project}/api_keys?due={due}&include_revoked={include_revoked}"
                ))
                .await?;
            if client.json {
                output::json(&Value::Array(all));
            } else {
                list_table(&all, long);
            }
        }
        KeysCommand::Rotate { key_id, grace, project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let mut body = json!({});
            if let Some(grace) = grace {
                body["grace_period_seconds"] = json!(grace);
            }
            let key = api.post(&format!("/v1/organization/projects/{project}/api_keys/{key_id}/rotate"), body).await?;
            if client.json {
                output::json(&key);
            } else {
                output::line(key["value"].as_str().unwrap_or(""));
                let until = output::when(key["previous_secret_expires_at"].as_i64());
                output::line(&format!(
                    "rotated {key_id}; the old secret works until {until}; this is the only time the new key is shown"
                ));
            }
        }
        KeysCommand::Import { from, file, dry_run, project, source_project, client } => {
            let source = match from.as_str() {
                "plaintext" => super::key_import::Source::Plaintext,
                "sha256" => super::key_import::Source::Sha256,
                _ => super::key_import::Source::Keygate { source_project: source_project.as_deref() },
            };
            return super::key_import::run(source, &file, project, dry_run, &client).await;
        }
        KeysCommand::Hash => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)
                .map_err(|e| anyhow::anyhow!("cannot read the key from standard input: {e}"))?;
            let key = key.trim();
            anyhow::ensure!(
                !key.is_empty(),
                "no key on standard input: pipe it in, e.g. `printenv MY_KEY | keygate keys hash`"
            );
            // One key, not a whole `.env` file piped in by mistake.
            anyhow::ensure!(
                !key.chars().any(char::is_whitespace),
                "standard input holds more than one word: pipe in the key alone, e.g. `printenv MY_KEY | keygate keys hash`"
            );
            output::line(&hex::encode(keygate::key::KeyDigest::of(key).0));
        }
        KeysCommand::Suspend { key_id, project, client } => set_state("suspend", &key_id, project, &client).await?,
        KeysCommand::Resume { key_id, project, client } => set_state("resume", &key_id, project, &client).await?,
        KeysCommand::Revoke { key_id, reason, project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let path = format!("/v1/organization/projects/{project}/api_keys/{key_id}");
            let query = reason.map(|r| format!("?{}", super::query_pair("reason", &r))).unwrap_or_default();
            let result = match api.delete(&format!("{path}{query}")).await {
                Ok(result) => result,
                Err(error) => {
                    // The API answers 404 for a revoked key, as OpenAI does;
                    // the CLI looks once more to say what happened.
                    let revoked = api.get(&format!("{path}?include_revoked=true")).await.ok();
                    match revoked.filter(|k| k["state"] == "revoked") {
                        Some(key) => {
                            if client.json {
                                output::json(&key);
                            } else {
                                output::line(&format!(
                                    "`{key_id}` was already revoked at {}",
                                    output::when(key["revoked_at"].as_i64())
                                ));
                            }
                            return Ok(ExitCode::SUCCESS);
                        }
                        None => return Err(error),
                    }
                }
            };
            if client.json {
                output::json(&result);
            } else {
                output::line(&format!("revoked {key_id}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_state(action: &str, key_id: &str, project: Option<String>, client: &ClientArgs) -> anyhow::Result<()> {
    let api = AdminClient::from_env(&client.url)?;
    let project = api.project_id(project).await?;
    let key = api.post(&format!("/v1/organization/projects/{project}/api_keys/{key_id}/{action}"), json!({})).await?;
    if client.json {
        output::json(&key);
    } else {
        output::line(&format!("{key_id} is now {}", output::text(&key["state"])));
    }
    Ok(())
}

/// The `keys list` table; `long` adds what a key may do and how much.
fn list_table(keys: &[Value], long: bool) {
    let mut headers =
        vec!["ID", "NAME", "KEY", "STATE", "PERMISSIONS", "CREATED", "ROTATED", "EXPIRES", "LAST USED", "FROM"];
    if long {
        headers.extend(["SCOPES", "MODELS", "RATE LIMITS", "BUDGET", "ALLOWED IPS"]);
    }
    let list = |v: &Value| match v.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(output::text).collect::<Vec<_>>().join(", "),
        _ => "any".to_owned(),
    };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let mut row = vec![
                output::text(&k["id"]),
                output::text(&k["name"]),
                output::text(&k["redacted_value"]),
                output::text(&k["state"]),
                output::text(&k["permissions"]),
                output::when(k["created_at"].as_i64()),
                output::when(k["rotated_at"].as_i64()),
                output::when(k["expires_at"].as_i64()),
                output::when(k["last_used_at"].as_i64()),
                output::text(&k["last_used_ip"]),
            ];
            if long {
                let budget = match k["monthly_budget_usd"].as_f64() {
                    Some(usd) => format!("{} a month", output::usd(usd)),
                    None => "-".to_owned(),
                };
                row.extend([
                    match k["scopes"].as_array() {
                        Some(scopes) if !scopes.is_empty() => {
                            scopes.iter().map(output::text).collect::<Vec<_>>().join(", ")
                        }
                        _ => "-".to_owned(),
                    },
                    list(&k["models"]),
                    super::limits::summary(&k["rate_limits"]),
                    budget,
                    list(&k["allowed_ips"]),
                ]);
            }
            row
        })
        .collect();
    output::table(&headers, &rows);
}
