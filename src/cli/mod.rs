//! The command line: `serve` runs the gateway; the other commands are clients
//! of a running gateway's Administration API (`KEYGATE_URL`, `KEYGATE_ADMIN_KEY`),
//! like `gh` is of GitHub. One file per command.

mod admin_keys;
mod client;
mod database;
mod doctor;
mod explain;
mod key_formats;
mod key_import;
mod keys;
mod limits;
pub mod output;
mod projects;
mod serve;
mod service_accounts;
mod usage;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "Self-hosted, OpenAI-compatible API-key gateway")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Apply database migrations (`serve` also applies them at start).
    Migrate(database::MigrateArgs),
    /// Write a consistent copy of a live SQLite database.
    Backup(database::BackupArgs),
    /// Write every key, project and usage row as JSON Lines (see README).
    Export(database::ExportArgs),
    /// Load a `keygate export` file into a new database.
    Import(database::ImportArgs),
    /// Rate limits of keys and of a project's models.
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// Monthly budgets of keys and projects.
    #[command(subcommand)]
    Budgets(limits::BudgetsCommand),
    /// Tokens and cost per key, prefix, project or model.
    Usage(usage::UsageArgs),
    /// Usage anomalies: spikes, new client networks, dormant keys.
    Alerts(usage::AlertsArgs),
    /// Check a client's key and setup (offline and live) and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Explain why a request was refused, from its `x-request-id`.
    Explain(explain::ExplainArgs),
    /// Create, list, rotate, suspend, resume and revoke project API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Create, list and archive projects.
    #[command(subcommand)]
    Projects(projects::ProjectsCommand),
    /// Create, list and delete a project's service accounts.
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(service_accounts::ServiceAccountsCommand),
    /// Create, list and delete admin keys.
    #[command(subcommand, name = "admin-keys")]
    AdminKeys(admin_keys::AdminKeysCommand),
    /// Make a running gateway read its config file again and apply the
    /// declared keys (`[[keys]]`), as SIGHUP does; shows any drift found.
    Reload(ClientArgs),
}

/// Flags every client command shares.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the keygate server.
    #[arg(long, env = "KEYGATE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Cli {
    pub fn is_doctor(&self) -> bool {
        matches!(self.command, Command::Doctor(_))
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(args) => database::migrate(args).await,
            Command::Backup(args) => database::backup(args).await,
            Command::Export(args) => database::export(args).await,
            Command::Import(args) => database::import(args).await,
            Command::Keys(cmd) => keys::run(cmd).await,
            Command::Explain(args) => explain::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Usage(args) => usage::run(args).await,
            Command::Limits(cmd) => limits::run(cmd).await,
            Command::Budgets(cmd) => limits::budgets(cmd).await,
            Command::Alerts(args) => usage::alerts(args).await,
            Command::Projects(cmd) => projects::run(cmd).await,
            Command::ServiceAccounts(cmd) => service_accounts::run(cmd).await,
            Command::AdminKeys(cmd) => admin_keys::run(cmd).await,
            Command::Reload(client) => reload(&client).await,
        }
    })
}

async fn reload(client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = client::AdminClient::from_env(&client.url)?;
    let answer = api.post("/v1/keygate/reload", serde_json::json!({})).await?;
    // A declaration the gateway refused fails the command, so a deploy script notices.
    let refused = answer["data"].as_array().is_some_and(|a| a.iter().any(|r| r["result"] == "refused"));
    let code = if refused { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    if client.json {
        output::json(&answer);
        return Ok(code);
    }
    let rows: Vec<Vec<String>> = answer["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let drift: Vec<String> =
                a["drift"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(output::text).collect();
            vec![output::text(&a["name"]), output::text(&a["id"]), output::text(&a["result"]), drift.join("; ")]
        })
        .collect();
    output::table(&["NAME", "ID", "RESULT", "DRIFT"], &rows);
    Ok(code)
}

/// `name=value`, URL-encoded.
pub fn query_pair(name: &str, value: &str) -> String {
    serde_urlencoded::to_string([(name, value)]).unwrap_or_default()
}

/// Parses `90`, `90s`, `15m`, `12h`, `30d` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 12h or 30d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` has an unknown unit; use s, m, h or d")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every option and argument of every command, with the command's path.
    fn each_arg(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
        for arg in command.get_arguments() {
            out.push((path.clone(), arg.clone()));
        }
        for sub in command.get_subcommands() {
            each_arg(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_option_says_what_it_is_for() {
        let mut args = Vec::new();
        each_arg(&super::Cli::command(), "keygate".into(), &mut args);
        let bare: Vec<String> = args
            .iter()
            .filter(|(_, arg)| {
                !arg.is_hide_set() && arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help" | "version")
            })
            .map(|(path, arg)| format!("{path} --{}", arg.get_id()))
            .collect();
        assert!(bare.is_empty(), "options without help: {bare:?}");
    }

    #[test]
    fn help_shows_each_default_once() {
        let mut args = Vec::new();
        each_arg(&super::Cli::command(), "keygate".into(), &mut args);
        for (path, arg) in args {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if !arg.get_default_values().is_empty() {
                assert!(!help.contains("[default:"), "{path} --{}: clap already prints the default", arg.get_id());
            }
        }
    }
}
