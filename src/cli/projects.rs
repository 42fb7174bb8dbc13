use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// List projects.
    List {
        /// Include archived projects.
        #[arg(long)]
        include_archived: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a project.
    Create {
        /// The project's name.
        #[arg(long)]
        name: String,
        /// Model patterns the project's keys may use, e.g. 'gpt-4o*'.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Client address ranges the project's keys may be used from.
        #[arg(long = "allow-ip", value_delimiter = ',')]
        allow_ip: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Archive a project; its keys stop working at once.
    Archive {
        /// The project id (`proj_...`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn row(p: &Value) -> Vec<String> {
    vec![
        output::text(&p["id"]),
        output::text(&p["name"]),
        output::text(&p["status"]),
        output::when(p["created_at"].as_i64()),
    ]
}

pub async fn run(cmd: ProjectsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProjectsCommand::List { include_archived, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let all = api.list_all(&format!("/v1/organization/projects?include_archived={include_archived}")).await?;
            if client.json {
                output::json(&Value::Array(all));
            } else {
                output::table(&["ID", "NAME", "STATUS", "CREATED"], &all.iter().map(row).collect::<Vec<_>>());
            }
        }
        ProjectsCommand::Create { name, models, allow_ip, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let mut body = json!({"name": name});
            if !models.is_empty() {
                body["models"] = json!(models);
            }
            if !allow_ip.is_empty() {
                body["allowed_ips"] = json!(allow_ip);
            }
            let project = api.post("/v1/organization/projects", body).await?;
            if client.json {
                output::json(&project);
            } else {
                output::line(&output::text(&project["id"]));
            }
        }
        ProjectsCommand::Archive { id, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.post(&format!("/v1/organization/projects/{id}/archive"), json!({})).await?;
            if client.json {
                output::json(&project);
            } else {
                output::line(&format!("archived {id}; its keys are refused from now on"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
