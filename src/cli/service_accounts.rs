use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create a service account; prints its first key once.
    Create {
        /// The service account's name, e.g. the app that uses its key.
        #[arg(long)]
        name: String,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a project's service accounts.
    List {
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a service account and revoke its keys.
    Delete {
        /// The service account id (`svc_acct_...`).
        id: String,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: ServiceAccountsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceAccountsCommand::Create { name, project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let sa = api
                .post(&format!("/v1/organization/projects/{project}/service_accounts"), json!({"name": name}))
                .await?;
            if client.json {
                output::json(&sa);
            } else {
                output::line(sa["api_key"]["value"].as_str().unwrap_or(""));
                output::line(&format!(
                    "created service account {} ({}) with key {}; this is the only time the key is shown",
                    sa["id"].as_str().unwrap_or(""),
                    sa["name"].as_str().unwrap_or(""),
                    sa["api_key"]["id"].as_str().unwrap_or("")
                ));
            }
        }
        ServiceAccountsCommand::List { project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let all = api.list_all(&format!("/v1/organization/projects/{project}/service_accounts")).await?;
            if client.json {
                output::json(&Value::Array(all));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|sa| {
                        vec![
                            output::text(&sa["id"]),
                            output::text(&sa["name"]),
                            output::text(&sa["role"]),
                            output::when(sa["created_at"].as_i64()),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ROLE", "CREATED"], &rows);
            }
        }
        ServiceAccountsCommand::Delete { id, project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let result = api.delete(&format!("/v1/organization/projects/{project}/service_accounts/{id}")).await?;
            if client.json {
                output::json(&result);
            } else {
                output::line(&format!("deleted {id}; its keys are revoked"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
