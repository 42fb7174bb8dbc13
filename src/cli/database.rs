//! `keygate migrate`, `backup`, `export` and `import`: work on the database
//! itself, not through a running gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use keygate::app::redact_url;
use keygate::store::{Engine, SqlStore};
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

/// A new file only its owner can read: exports and backups hold key digests,
/// client addresses and the audit log.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The engine a database URL names, or an error that says which URLs work.
fn engine_of(url: &str) -> anyhow::Result<Engine> {
    Engine::of_url(url).ok_or_else(|| {
        let error = keygate::config::unsupported_database(url, "--database");
        let help = error.help();
        with_help(anyhow::Error::new(error), help)
    })
}

fn with_help(error: anyhow::Error, help: Option<String>) -> anyhow::Error {
    match help {
        Some(help) => error.context(Help(help)),
        None => error,
    }
}

/// Adds a `help:` line to a failure to open a database, when its cause has
/// a likely fix.
pub fn database_help(error: anyhow::Error) -> anyhow::Error {
    use keygate::store::StoreError;
    let help = error.chain().find_map(|cause| match cause.downcast_ref::<StoreError>()? {
        StoreError::NoDirectory(dir) => Some(format!(
            "create the directory first (`mkdir -p {}`), or give --database a path in an existing one",
            dir.display()
        )),
        StoreError::Database(sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => Some(
            "nothing listens at the database's host and port: start PostgreSQL, or check the URL in --database \
             (or KEYGATE_DATABASE_URL)"
                .into(),
        ),
        StoreError::NoAnswer(_) => {
            Some("check the host and port in --database, and that a firewall lets the connection through".into())
        }
        _ => None,
    });
    with_help(error, help)
}

/// Opens an existing keygate database; never creates one by accident.
async fn open_existing(url: &str) -> anyhow::Result<SqlStore> {
    if engine_of(url)? == Engine::Sqlite {
        let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if !std::path::Path::new(path).exists() {
            bail!(anyhow::Error::new(Help("pass --database sqlite://PATH of an existing keygate database".into()))
                .context(format!("there is no database at `{path}`")));
        }
    }
    let store = SqlStore::open(url)
        .await
        .with_context(|| format!("cannot open `{}`", redact_url(url)))
        .map_err(database_help)?;
    if store.schema_version().await? == 0 {
        bail!(anyhow::Error::new(Help("check --database; `keygate migrate` creates the schema".into()))
            .context(format!("`{}` holds no keygate data", redact_url(url))));
    }
    Ok(store)
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    engine_of(&url)?;
    let store = SqlStore::open(&url)
        .await
        .with_context(|| format!("cannot open `{}`", redact_url(&url)))
        .map_err(database_help)?;
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
    if engine_of(&url)? != Engine::Sqlite {
        bail!(anyhow::Error::new(Help(
            "back PostgreSQL up with pg_dump, or move a deployment with `keygate export`".into()
        ))
        .context("`keygate backup` copies a SQLite database"));
    }
    let store = open_existing(&url).await?;
    // VACUUM INTO fills an empty file, keeping the owner-only mode set here.
    private_file(&args.destination).with_context(|| format!("cannot create `{}`", args.destination.display()))?;
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

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Database URL [default: sqlite://keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE_URL")]
    database: Option<String>,
    /// Write to this file instead of standard output (must not exist yet).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file written by `keygate export`.
    file: PathBuf,
    /// Database URL of a new database [default: sqlite://keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE_URL")]
    database: Option<String>,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    let store = open_existing(&url).await?;
    let mut bar = output::progress_bar("export");
    let now = keygate::clock::unix_now();
    let rows = match &args.output {
        Some(path) => {
            let file = private_file(path).map_err(|e| {
                anyhow::Error::new(Help("choose a new file name; keygate never overwrites an export".into()))
                    .context(format!("cannot create `{}`: {e}", path.display()))
            })?;
            let mut out = std::io::BufWriter::new(file);
            store.export(&mut out, now, &mut bar).await?
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            store.export(&mut out, now, &mut bar).await?
        }
    };
    if let Some(path) = &args.output {
        eprintln!("Exported {rows} rows to {}.", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    engine_of(&url)?;
    let file = std::fs::File::open(&args.file).with_context(|| format!("cannot read `{}`", args.file.display()))?;
    let store = SqlStore::open(&url)
        .await
        .with_context(|| format!("cannot open `{}`", redact_url(&url)))
        .map_err(database_help)?;
    store.migrate().await?;
    let mut bar = output::progress_bar("import");
    let rows = store
        .import(&mut std::io::BufReader::new(file), &mut bar)
        .await
        .with_context(|| format!("nothing was imported from `{}`", args.file.display()))?;
    eprintln!("Imported {rows} rows. Start it with: keygate serve --database {}", redact_url(&url));
    Ok(ExitCode::SUCCESS)
}
