use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use keygate::diagnose::{self, parse_dotenv, Finding, Setup, Status};
use keygate::key::Secret;

use super::output;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Base URL of the API (default: OPENAI_BASE_URL, else https://api.openai.com/v1).
    #[arg(long)]
    base_url: Option<String>,
    /// A model to make one minimal call with.
    #[arg(long)]
    model: Option<String>,
    /// Azure: the resource endpoint (default: AZURE_OPENAI_ENDPOINT).
    #[arg(long)]
    azure_endpoint: Option<String>,
    /// Azure: the api-version (default: OPENAI_API_VERSION).
    #[arg(long)]
    api_version: Option<String>,
    /// Azure: the deployment name.
    #[arg(long)]
    deployment: Option<String>,
    /// The variable holding the key (default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY for Azure).
    #[arg(long)]
    key_env: Option<String>,
    /// A .env file to read as the SDKs' dotenv loaders do [default: ./.env if present].
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Only the checks that need no network.
    #[arg(long)]
    offline: bool,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()).filter(|v| !v.is_empty())
}

/// Checks the client's setup and key; exit 0 when all pass or warn, 1 on a
/// failure, 2 when doctor itself cannot run.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let dotenv = match &args.env_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the env file `{}`", path.display()))?;
            parse_dotenv(&text)
        }
        None => std::fs::read_to_string(".env").map(|t| parse_dotenv(&t)).unwrap_or_default(),
    };
    let lookup = |name: &str| var(name).or_else(|| dotenv.get(name).cloned().filter(|v| !v.is_empty()));
    let azure_endpoint = args.azure_endpoint.clone().or_else(|| lookup("AZURE_OPENAI_ENDPOINT"));
    let key_var = args
        .key_env
        .clone()
        .unwrap_or_else(|| if azure_endpoint.is_some() { "AZURE_OPENAI_API_KEY" } else { "OPENAI_API_KEY" }.to_owned());
    let proxies = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .filter_map(|name| var(name).map(|v| ((*name).to_owned(), v)))
        .collect();
    let setup = Setup {
        env_key: std::env::var_os(&key_var)
            .map(|v| Secret::new(v.to_string_lossy().into_owned()))
            .filter(|k| !k.expose().is_empty()),
        dotenv_key: dotenv.get(&key_var).filter(|v| !v.is_empty()).map(|v| Secret::new(v.clone())),
        key_var,
        base_url: args.base_url.clone().or_else(|| lookup("OPENAI_BASE_URL")),
        model: args.model.clone(),
        organization: lookup("OPENAI_ORG_ID"),
        project: lookup("OPENAI_PROJECT_ID"),
        api_version: args.api_version.clone().or_else(|| lookup("OPENAI_API_VERSION")),
        deployment: args.deployment.clone(),
        azure_endpoint,
        proxies,
        offline: args.offline,
    };
    let findings = diagnose::run(&setup).await;
    let failed = findings.iter().any(|f| f.status == Status::Fail);
    if args.json {
        let counts = |s: Status| findings.iter().filter(|f| f.status == s).count();
        output::json(&serde_json::json!({
            "ok": !failed,
            "summary": {"pass": counts(Status::Pass), "warn": counts(Status::Warn), "fail": counts(Status::Fail), "skip": counts(Status::Skip)},
            "checks": findings,
        }));
    } else {
        print_findings(&findings);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_findings(findings: &[Finding]) {
    use anstyle::{AnsiColor, Color, Style};
    // anstream drops the colour where it is not wanted (not a terminal, NO_COLOR).
    let mut out = anstream::stdout().lock();
    for f in findings {
        let (mark, color) = match f.status {
            Status::Pass => ("PASS", AnsiColor::Green),
            Status::Warn => ("WARN", AnsiColor::Yellow),
            Status::Fail => ("FAIL", AnsiColor::Red),
            Status::Skip => ("SKIP", AnsiColor::BrightBlack),
        };
        let style = Style::new().bold().fg_color(Some(Color::Ansi(color)));
        let _ = writeln!(out, "{style}{mark}{style:#}  {}: {}", f.title, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "      help: {fix}");
        }
    }
}
