use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

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
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: ProjectsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProjectsCommand::List { include_archived, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let list =
                api.get(&format!("/v1/organization/projects?limit=100&include_archived={include_archived}")).await?;
            if client.json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list["data"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|p| {
                                vec![
                                    p["id"].as_str().unwrap_or("").to_owned(),
                                    p["name"].as_str().unwrap_or("").to_owned(),
                                    p["status"].as_str().unwrap_or("").to_owned(),
                                    output::when(p["created_at"].as_i64()),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                output::table(&["ID", "NAME", "STATUS", "CREATED"], &rows);
            }
        }
        ProjectsCommand::Create { name, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.post("/v1/organization/projects", json!({"name": name})).await?;
            if client.json {
                output::json(&project);
            } else {
                output::line(project["id"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
