//! `keygate migrate` and `keygate backup`: work on the database file itself,
//! not through a running gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use keygate::store::SqliteStore;
use serde_json::json;

use super::output::{self, Help};

const DEFAULT_DATABASE: &str = "sqlite://keygate.db";

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database URL [default: sqlite://keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE_URL")]
    database: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (must not exist yet).
    destination: PathBuf,
    /// Database URL [default: sqlite://keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE_URL")]
    database: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The file a `sqlite://PATH` URL names.
fn sqlite_path(url: &str) -> anyhow::Result<&str> {
    let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else {
        bail!(anyhow::Error::new(Help("keygate stores its data in SQLite: pass --database sqlite://PATH".into()))
            .context(format!("unsupported database URL `{url}`")));
    };
    Ok(rest.split('?').next().unwrap_or(rest))
}

/// Opens an existing SQLite database; never creates one by accident.
async fn open_existing(url: &str) -> anyhow::Result<SqliteStore> {
    let path = sqlite_path(url)?;
    if !std::path::Path::new(path).exists() {
        bail!(anyhow::Error::new(Help("pass --database sqlite://PATH of an existing keygate database".into()))
            .context(format!("there is no database at `{path}`")));
    }
    SqliteStore::open(url).await.with_context(|| format!("cannot open `{path}`"))
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    sqlite_path(&url)?;
    let store = SqliteStore::open(&url).await.with_context(|| format!("cannot open `{url}`"))?;
    let from = store.schema_version().await?;
    let applied =
        store.migrate().await.context("migration failed; the database is left at its last complete version")?;
    let to = store.schema_version().await?;
    if args.json {
        let applied: Vec<_> = applied.iter().map(|(version, name)| json!({"version": version, "name": name})).collect();
        output::json(&json!({"from_version": from, "to_version": to, "applied": applied}));
    } else if applied.is_empty() {
        output::line(&format!("The schema is up to date (version {to})."));
    } else {
        for (version, name) in &applied {
            output::line(&format!("applied {version:04} {name}"));
        }
        output::line(&format!("The schema is at version {to} (was {from})."));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    if args.destination.exists() {
        bail!(anyhow::Error::new(Help("choose a new file name; keygate never overwrites a backup".into()))
            .context(format!("`{}` already exists", args.destination.display())));
    }
    let store = open_existing(&url).await?;
    store
        .backup_to(&args.destination)
        .await
        .with_context(|| format!("cannot write the backup to `{}`", args.destination.display()))?;
    let bytes = std::fs::metadata(&args.destination).map(|m| m.len()).unwrap_or(0);
    if args.json {
        output::json(&json!({"destination": args.destination, "bytes": bytes}));
    } else {
        output::line(&format!(
            "Wrote a consistent copy to {} ({bytes} bytes). Serve it with --database sqlite://{}",
            args.destination.display(),
            args.destination.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
