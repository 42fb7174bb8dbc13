use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use keygate::app::Gateway;
use keygate::config::{Config, LogFormat, Overrides, ProcessEnv};
use keygate::key::Secret;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see keygate.example.toml).
    #[arg(long, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYGATE_LISTEN")]
    listen: Option<String>,
    /// Database URL [default: sqlite://keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE_URL")]
    database: Option<String>,
    /// Upstream base URL, or `mock` [default: https://api.openai.com/v1].
    #[arg(long, env = "KEYGATE_UPSTREAM_URL")]
    upstream: Option<String>,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "KEYGATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "KEYGATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Redis URL for rate limits shared by every replica.
    #[arg(long, env = "KEYGATE_REDIS_URL")]
    redis: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        database_url: args.database,
        upstream_url: args.upstream,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        redis_url: args.redis,
    };
    let config = Config::load(args.config.as_deref(), &overrides, &ProcessEnv).context("invalid configuration")?;
    init_tracing(&config);

    let admin_key = std::env::var("KEYGATE_ADMIN_KEY").ok().filter(|k| !k.is_empty()).map(Secret::new);
    let gateway = Gateway::start(&config, admin_key.as_ref()).await?;
    if let Some(key) = &gateway.generated_admin_key {
        // Printed once, on the first start against an empty database, and never again.
        eprintln!(
            "\nkeygate created an admin key (shown only this once, store it now):\n\n    {}\n\n\
             Use it as KEYGATE_ADMIN_KEY for the CLI and the Administration API.\n",
            key.expose()
        );
    }
    let tls = match &config.tls {
        Some(files) => Some(keygate::server::tls_acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}` (set --listen or KEYGATE_LISTEN)", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "keygate listening");

    let Gateway { state, tasks, connection_limits, .. } = gateway;
    let trusted = Arc::new(config.trusted_proxies.clone());
    let app = keygate::server::router(state);
    keygate::server::serve(listener, app, tls, trusted, connection_limits, shutdown_signal(), config.shutdown_grace)
        .await;
    tasks.shutdown().await;
    tracing::info!("keygate stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: draining open requests");
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("keygate={0},{0}", config.log.level).replace(",info", ",warn"))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
