use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set rate limits on a key (`--key`) or on a project's model (`--model`, `*` for all models).
    Set(SetLimits),
    /// List a project's rate limits.
    List {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct SetLimits {
    /// The key to limit (`key_...`).
    #[arg(long, conflicts_with = "model")]
    key: Option<String>,
    /// A model pattern of the project to limit, e.g. `gpt-4o` or `*`.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    project: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Requests per day.
    #[arg(long)]
    rpd: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Tokens per day.
    #[arg(long)]
    tpd: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrent: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(cmd: LimitsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LimitsCommand::Set(args) => {
            let api = AdminClient::from_env(&args.client.url)?;
            let project = api.project_id(args.project.clone()).await?;
            let limits = json!({
                "max_requests_per_1_minute": args.rpm,
                "max_requests_per_1_day": args.rpd,
                "max_tokens_per_1_minute": args.tpm,
                "max_tokens_per_1_day": args.tpd,
                "max_concurrent_requests": args.concurrent,
            });
            let result = match (&args.key, &args.model) {
                (Some(key), None) => {
                    api.post(
                        &format!("/v1/organization/projects/{project}/api_keys/{key}"),
                        json!({"rate_limits": limits}),
                    )
                    .await?
                }
                (None, Some(model)) => {
                    api.post(&format!("/v1/organization/projects/{project}/rate_limits/rl-{model}"), limits).await?
                }
                _ => {
                    anyhow::bail!("give `--key KEY_ID` or `--model PATTERN` (use `--model '*'` for the whole project)")
                }
            };
            if args.client.json {
                output::json(&result);
            } else {
                output::line(&format!(
                    "limits set on {}",
                    args.key.or(args.model.map(|m| format!("{project} model {m}"))).unwrap_or_default()
                ));
            }
        }
        LimitsCommand::List { project, client } => {
            let api = AdminClient::from_env(&client.url)?;
            let project = api.project_id(project).await?;
            let all = api.list_all(&format!("/v1/organization/projects/{project}/rate_limits")).await?;
            if client.json {
                output::json(&Value::Array(all));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|l| {
                        [
                            "model",
                            "max_requests_per_1_minute",
                            "max_tokens_per_1_minute",
                            "max_requests_per_1_day",
                            "max_tokens_per_1_day",
                            "max_concurrent_requests",
                        ]
                        .iter()
                        .map(|f| output::text(&l[*f]))
                        .collect()
                    })
                    .collect();
                output::table(&["MODEL", "RPM", "TPM", "RPD", "TPD", "CONCURRENT"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Set (or with `--clear` remove) the monthly budget of a key or a project.
    Set {
        /// The key (`key_...`); without it the project's budget is set.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// Spend limit per calendar month (UTC), in US dollars.
        #[arg(long, required_unless_present = "clear")]
        monthly_usd: Option<f64>,
        /// Alert when this share of the budget is spent.
        #[arg(long, default_value_t = 80)]
        alert_percent: u8,
        #[arg(long, conflicts_with = "monthly_usd")]
        clear: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn budgets(cmd: BudgetsCommand) -> anyhow::Result<ExitCode> {
    let BudgetsCommand::Set { key, project, monthly_usd, alert_percent, clear, client } = cmd;
    let api = AdminClient::from_env(&client.url)?;
    let project = api.project_id(project).await?;
    let body =
        json!({"monthly_budget_usd": if clear { None } else { monthly_usd }, "budget_alert_percent": alert_percent});
    let path = match &key {
        Some(key) => format!("/v1/organization/projects/{project}/api_keys/{key}"),
        None => format!("/v1/organization/projects/{project}"),
    };
    let result = api.post(&path, body).await.context("could not set the budget")?;
    if client.json {
        output::json(&result);
    } else {
        let target = key.unwrap_or(project);
        match result["monthly_budget_usd"].as_f64() {
            Some(usd) => output::line(&format!("{target}: ${usd:.2} a month, alert at {alert_percent}%")),
            None => output::line(&format!("{target}: no budget")),
        }
    }
    Ok(ExitCode::SUCCESS)
}
