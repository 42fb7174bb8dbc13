//! The command line: `serve` runs the gateway; the other commands are clients
//! of a running gateway's Administration API (`KEYGATE_URL`, `KEYGATE_ADMIN_KEY`),
//! like `gh` is of GitHub. One file per command.

mod client;
mod keys;
pub mod output;
mod projects;
mod serve;

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
    /// Create, list and revoke project API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Create and list projects.
    #[command(subcommand)]
    Projects(projects::ProjectsCommand),
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

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Keys(cmd) => keys::run(cmd).await,
            Command::Projects(cmd) => projects::run(cmd).await,
        }
    })
}
