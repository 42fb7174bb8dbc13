use std::process::ExitCode;

use anyhow::Context as _;
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the live keys of a project.
    List {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key id (`key_...`).
        key_id: String,
        /// Why, recorded with the revocation (e.g. leaked).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The project to act on: the flag, else the first (default) project.
async fn project_id(api: &AdminClient, flag: Option<String>) -> anyhow::Result<String> {
    if let Some(id) = flag {
        return Ok(id);
    }
    let list = api.get("/v1/organization/projects?limit=1").await?;
    list["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .context("the gateway has no project; create one with `keygate projects create --name NAME`")
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create { name, project, prefix, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = project_id(&api, project).await?;
            let mut body = json!({"name": name});
            if let Some(prefix) = prefix {
                body["prefix"] = Value::String(prefix);
            }
            let key = api.post(&format!("/v1/organization/projects/{project}/api_keys"), body).await?;
            if client.json {
                output::json(&key);
            } else {
                output::line(key["value"].as_str().unwrap_or(""));
                output::line(&format!(
                    "created {} ({}) in {project}; this is the only time the key is shown",
                    key["id"].as_str().unwrap_or(""),
                    key["name"].as_str().unwrap_or("")
                ));
            }
        }
        KeysCommand::List { project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = project_id(&api, project).await?;
            let mut rows = Vec::new();
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let cursor = after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default();
                let page = api.get(&format!("/v1/organization/projects/{project}/api_keys?limit=100{cursor}")).await?;
                for k in page["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        k["id"].as_str().unwrap_or("").to_owned(),
                        k["name"].as_str().unwrap_or("").to_owned(),
                        k["redacted_value"].as_str().unwrap_or("").to_owned(),
                        output::when(k["created_at"].as_i64()),
                        output::when(k["last_used_at"].as_i64()),
                    ]);
                    all.push(k.clone());
                }
                if page["has_more"].as_bool() != Some(true) {
                    break;
                }
                after = page["last_id"].as_str().map(str::to_owned);
            }
            if client.json {
                output::json(&Value::Array(all));
            } else {
                output::table(&["ID", "NAME", "KEY", "CREATED", "LAST USED"], &rows);
            }
        }
        KeysCommand::Revoke { key_id, reason, project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = project_id(&api, project).await?;
            let query = reason.map(|r| format!("?reason={}", urlencode(&r))).unwrap_or_default();
            let result = api.delete(&format!("/v1/organization/projects/{project}/api_keys/{key_id}{query}")).await?;
            if client.json {
                output::json(&result);
            } else {
                output::line(&format!("revoked {key_id}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap_or_default().trim_start_matches("v=").to_owned()
}
