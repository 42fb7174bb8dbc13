use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum AdminKeysCommand {
    /// Create an admin key (Administration API only); prints it once.
    Create {
        /// A name that says who or what uses the key.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 3600s, 12h, 30d (at most 365d).
        #[arg(long, value_parser = super::parse_duration)]
        expires_in: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List live admin keys.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an admin key.
    Delete {
        /// The key id (`key_...`).
        key_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: AdminKeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminKeysCommand::Create { name, expires_in, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let mut body = json!({"name": name});
            if let Some(seconds) = expires_in {
                body["expires_in_seconds"] = json!(seconds);
            }
            let key = api.post("/v1/organization/admin_api_keys", body).await?;
            if client.json {
                output::json(&key);
            } else {
                output::line(key["value"].as_str().unwrap_or(""));
                output::line(&format!(
                    "created admin key {} ({}); this is the only time it is shown",
                    output::text(&key["id"]),
                    output::text(&key["name"])
                ));
            }
        }
        AdminKeysCommand::List { client } => {
            let api = AdminClient::from_env(&client.url)?;
            let all = api.list_all("/v1/organization/admin_api_keys").await?;
            if client.json {
                output::json(&Value::Array(all));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|k| {
                        vec![
                            output::text(&k["id"]),
                            output::text(&k["name"]),
                            output::text(&k["redacted_value"]),
                            output::when(k["created_at"].as_i64()),
                            output::when(k["expires_at"].as_i64()),
                            output::when(k["last_used_at"].as_i64()),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "KEY", "CREATED", "EXPIRES", "LAST USED"], &rows);
            }
        }
        AdminKeysCommand::Delete { key_id, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let result = api.delete(&format!("/v1/organization/admin_api_keys/{key_id}")).await?;
            if client.json {
                output::json(&result);
            } else {
                output::line(&format!("revoked {key_id}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
