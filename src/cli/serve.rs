use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use keygate::app::Gateway;
use keygate::config::{Config, LogFormat, MetricsListen, Overrides, ProcessEnv};
use keygate::key::Secret;
use tokio::net::TcpListener;

use super::output::Help;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see keygate.example.toml).
    #[arg(long, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYGATE_LISTEN")]
    listen: Option<String>,
    /// Address for `GET /metrics`, or `off` [default: 127.0.0.1:9464]. Never
    /// the public listener: failure counts by reason would tell a guesser
    /// which keys exist.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
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
    /// Not an option: taken only to answer with `--listen`.
    #[arg(long, hide = true, num_args = 0..=1)]
    port: Option<Option<String>>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(port) = args.port {
        let port = port.unwrap_or_else(|| "PORT".into());
        return Err(anyhow::Error::new(Help(format!(
            "use `--listen 127.0.0.1:{port}` (this machine only) or `--listen 0.0.0.0:{port}` (every interface)"
        )))
        .context("`keygate serve` has no `--port`: it takes an address with `--listen`"));
    }
    let overrides = Overrides {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        database_url: args.database,
        upstream_url: args.upstream,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        redis_url: args.redis,
    };
    let config = Config::load(args.config.as_deref(), &overrides, &ProcessEnv).map_err(|error| {
        let help = error.help();
        let error = anyhow::Error::new(error).context("invalid configuration");
        match help {
            Some(help) => error.context(Help(help)),
            None => error,
        }
    })?;
    init_tracing(&config);

    // A panic's message can hold request data (a key in a header, a body):
    // the log gets only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%location, "panic (its message is not logged: it may hold request data)");
    }));
    let shutdown = shutdown_signal()?;
    let admin_key = std::env::var("KEYGATE_ADMIN_KEY").ok().filter(|k| !k.is_empty()).map(Secret::new);
    // Both addresses are taken before anything is written: a start that fails
    // on a busy port must not create (and lose) the first admin key.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}` (set --listen or KEYGATE_LISTEN)", config.listen))?;
    let metrics_listener = bind_metrics(config.metrics_listen).await?;
    let gateway = Gateway::start(&config, admin_key.as_ref()).await.map_err(super::database::database_help)?;
    let tls = match &config.tls {
        Some(files) => Some(keygate::server::tls_acceptor(&files.cert, &files.key)?),
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "keygate listening");
    if let Some(key) = &gateway.generated_admin_key {
        // Printed once, on the first start against an empty database, and
        // only once keygate is listening; never again.
        eprintln!(
            "\nkeygate created an admin key (shown only this once, store it now):\n\n    {}\n\n\
             Use it as KEYGATE_ADMIN_KEY for the CLI and the Administration API.\n\
             Lost it? Start keygate with KEYGATE_ADMIN_KEY set to a new secret: it is stored as an admin key.\n",
            key.expose()
        );
    }

    let Gateway { state, mut tasks, connection_limits, .. } = gateway;
    reload_on_sighup(&mut tasks, state.clone())?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics_listener.map(|listener| {
        let app = keygate::server::metrics_router(state.metrics.clone());
        #[allow(clippy::disallowed_methods)] // awaited below, after the main listener drains
        tokio::spawn(keygate::server::serve(
            listener,
            app,
            None,
            Arc::new(Vec::new()),
            connection_limits,
            async {
                let _ = metrics_stopped.await;
            },
            std::time::Duration::from_secs(1),
        ))
    });
    let trusted = Arc::new(config.trusted_proxies.clone());
    let app = keygate::server::router(state);
    keygate::server::serve(listener, app, tls, trusted, connection_limits, shutdown, config.shutdown_grace).await;
    let _ = stop_metrics.send(());
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    tasks.shutdown().await;
    tracing::info!("keygate stopped");
    Ok(ExitCode::SUCCESS)
}

/// `SIGHUP` reads the config file again and applies its declared keys
/// (`[[keys]]`), as `keygate reload` does.
#[cfg(unix)]
fn reload_on_sighup(tasks: &mut keygate::jobs::Tasks, state: keygate::state::AppState) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tasks.spawn("reload on SIGHUP", move |mut shutdown: tokio::sync::watch::Receiver<bool>| {
        Box::pin(async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => match keygate::admin::reload(&state, None).await {
                        Ok(applied) => tracing::info!(declared = applied.len(), "SIGHUP: declared keys applied"),
                        Err(error) => tracing::warn!(?error, "SIGHUP: declared keys not applied"),
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }) as keygate::jobs::BoxFuture
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_: &mut keygate::jobs::Tasks, _: keygate::state::AppState) -> anyhow::Result<()> {
    Ok(())
}

/// The metrics listener: a configured address must be free; the default one
/// may be taken (another gateway on this machine), and then keygate serves
/// without metrics and says how to choose an address.
async fn bind_metrics(metrics: MetricsListen) -> anyhow::Result<Option<TcpListener>> {
    let listener = match metrics {
        MetricsListen::Off => return Ok(None),
        MetricsListen::Configured(addr) => TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on `{addr}` (set --metrics-listen, or `off`)"))?,
        MetricsListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%addr, %error, "metrics are not served: the default address is taken; set server.metrics_listen (or --metrics-listen) to another address, or `off`");
                return Ok(None);
            }
        },
    };
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    Ok(Some(listener))
}

/// SIGINT and SIGTERM, listened for from the moment this is called: a
/// signal during start-up (after the first admin key is created, before it is
/// printed) is then a clean stop after the print, not the default handler's
/// instant exit.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested: draining open requests");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested: draining open requests");
    })
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("keygate={0},{0}", config.log.level).replace(",info", ",warn"))
    });
    // Colour only on a terminal, and never with NO_COLOR set: a log file or
    // a collector gets no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
