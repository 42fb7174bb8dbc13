//! `keygate limits` and `keygate budgets`: rate limits of keys and of a
//! project's models, monthly budgets of keys and projects.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use super::client::AdminClient;
use super::output::{self, Help};
use super::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Change rate limits of a key (`--key`) or of a project's model (`--model`,
    /// `*` for all models together). Only the limits named change: a number
    /// sets one, `none` (or `--clear`) removes it.
    Set(SetLimits),
    /// List a project's rate limits: per model, and those of its keys.
    List {
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// One rate limit, as the flags name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Limit {
    Rpm,
    Rpd,
    Tpm,
    Tpd,
    Concurrent,
    /// Every limit.
    All,
}

impl Limit {
    const EACH: [Limit; 5] = [Limit::Rpm, Limit::Tpm, Limit::Rpd, Limit::Tpd, Limit::Concurrent];

    /// The API's field for this limit.
    fn field(self) -> &'static str {
        match self {
            Self::Rpm => "max_requests_per_1_minute",
            Self::Rpd => "max_requests_per_1_day",
            Self::Tpm => "max_tokens_per_1_minute",
            Self::Tpd => "max_tokens_per_1_day",
            Self::Concurrent => "max_concurrent_requests",
            Self::All => "",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Rpd => "rpd",
            Self::Tpm => "tpm",
            Self::Tpd => "tpd",
            Self::Concurrent => "concurrent",
            Self::All => "all",
        }
    }
}

/// A limit's new value: a number, or `none` to remove the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitValue {
    Set(u64),
    Remove,
}

fn limit_value(text: &str) -> Result<LimitValue, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(LimitValue::Remove);
    }
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a limit: give a number from 1 up, or `none` to remove it")),
        Ok(n) => Ok(LimitValue::Set(n)),
    }
}

#[derive(Debug, Args)]
pub struct SetLimits {
    /// The key to limit (`key_...`).
    #[arg(long, conflicts_with = "model")]
    key: Option<String>,
    /// A model pattern of the project to limit, e.g. `gpt-4o` or `*`.
    #[arg(long)]
    model: Option<String>,
    /// Project id (default: the default project).
    #[arg(long)]
    project: Option<String>,
    /// Requests per minute, or `none`.
    #[arg(long, value_name = "N|none", value_parser = limit_value)]
    rpm: Option<LimitValue>,
    /// Requests per day, or `none`.
    #[arg(long, value_name = "N|none", value_parser = limit_value)]
    rpd: Option<LimitValue>,
    /// Tokens per minute, or `none`.
    #[arg(long, value_name = "N|none", value_parser = limit_value)]
    tpm: Option<LimitValue>,
    /// Tokens per day, or `none`.
    #[arg(long, value_name = "N|none", value_parser = limit_value)]
    tpd: Option<LimitValue>,
    /// Requests in flight at once, or `none`.
    #[arg(long, value_name = "N|none", value_parser = limit_value)]
    concurrent: Option<LimitValue>,
    /// Remove these limits (comma-separated, or `all`).
    #[arg(long, value_enum, value_delimiter = ',')]
    clear: Vec<Limit>,
    #[command(flatten)]
    client: ClientArgs,
}

impl SetLimits {
    /// The change to send: only the limits named, `null` for those removed.
    fn change(&self) -> anyhow::Result<Map<String, Value>> {
        let given = [
            (Limit::Rpm, self.rpm),
            (Limit::Tpm, self.tpm),
            (Limit::Rpd, self.rpd),
            (Limit::Tpd, self.tpd),
            (Limit::Concurrent, self.concurrent),
        ];
        let cleared: Vec<Limit> =
            if self.clear.contains(&Limit::All) { Limit::EACH.to_vec() } else { self.clear.clone() };
        let mut change = Map::new();
        for (limit, value) in given {
            let removed = cleared.contains(&limit);
            let value = match (value, removed) {
                (Some(_), true) => {
                    anyhow::bail!(
                        "`--{0}` is both set and cleared; give one of `--{0}` and `--clear {0}`",
                        limit.flag()
                    )
                }
                (Some(LimitValue::Set(n)), false) => json!(n),
                (Some(LimitValue::Remove), false) | (None, true) => Value::Null,
                (None, false) => continue,
            };
            change.insert(limit.field().to_owned(), value);
        }
        if change.is_empty() {
            return Err(anyhow::Error::new(Help(
                "name what to change, e.g. `--rpm 60`, `--tpm none` or `--clear rpm`".into(),
            ))
            .context("nothing to change: no limit was named"));
        }
        Ok(change)
    }
}

pub async fn run(cmd: LimitsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LimitsCommand::Set(args) => set(args).await?,
        LimitsCommand::List { project, client } => list(project, &client).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn set(args: SetLimits) -> anyhow::Result<()> {
    let (key, model) = match (&args.key, &args.model) {
        (None, None) => {
            return Err(anyhow::Error::new(Help("use `--model '*'` for the whole project".into()))
                .context("give `--key KEY_ID` or `--model PATTERN`"))
        }
        (key, model) => (key.as_deref(), model.as_deref()),
    };
    let change = Value::Object(args.change()?);
    let api = AdminClient::from_env(&args.client.url)?;
    let project = api.project_id(args.project.clone()).await?;
    let (target, limits, result) = match (key, model) {
        (Some(key), _) => {
            let path = format!("/v1/organization/projects/{project}/api_keys/{key}");
            let result = api.post(&path, json!({"rate_limits": change})).await?;
            (format!("`{key}`"), result["rate_limits"].clone(), result)
        }
        (None, model) => {
            let model = model.unwrap_or("*");
            let path = format!("/v1/organization/projects/{project}/rate_limits/rl-{model}");
            let result = api.post(&path, change).await?;
            (format!("model `{model}` of `{project}`"), result.clone(), result)
        }
    };
    if args.client.json {
        output::json(&result);
    } else {
        output::line(&format!("limits of {target}: {}", summary(&limits)));
    }
    Ok(())
}

/// `rpm 60, tpm 5000`, or `none`.
pub fn summary(limits: &Value) -> String {
    let parts: Vec<String> =
        Limit::EACH.iter().filter_map(|l| limits[l.field()].as_u64().map(|n| format!("{} {n}", l.flag()))).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

const COLUMNS: [&str; 5] = ["RPM", "TPM", "RPD", "TPD", "CONCURRENT"];

async fn list(project: Option<String>, client: &ClientArgs) -> anyhow::Result<()> {
    let api = AdminClient::from_env(&client.url)?;
    let project = api.project_id(project).await?;
    let models = api.list_all(&format!("/v1/organization/projects/{project}/rate_limits")).await?;
    let keys: Vec<Value> = api
        .list_all(&format!("/v1/organization/projects/{project}/api_keys"))
        .await?
        .into_iter()
        .filter(|k| summary(&k["rate_limits"]) != "none")
        .collect();
    if client.json {
        let mut all = models;
        all.extend(keys.iter().map(|k| {
            let mut entry = json!({"object": "organization.project.api_key.rate_limits", "api_key_id": k["id"],
                                   "name": k["name"]});
            if let (Some(entry), Some(limits)) = (entry.as_object_mut(), k["rate_limits"].as_object()) {
                entry.extend(limits.clone());
            }
            entry
        }));
        output::json(&Value::Array(all));
        return Ok(());
    }
    let row = |target: String, limits: &Value| -> Vec<String> {
        std::iter::once(target).chain(Limit::EACH.iter().map(|l| output::text(&limits[l.field()]))).collect()
    };
    let mut rows: Vec<Vec<String>> =
        models.iter().map(|m| row(format!("model {}", output::text(&m["model"])), m)).collect();
    rows.extend(
        keys.iter()
            .map(|k| row(format!("key {} ({})", output::text(&k["id"]), output::text(&k["name"])), &k["rate_limits"])),
    );
    let headers: Vec<&str> = std::iter::once("LIMITS ON").chain(COLUMNS).collect();
    output::table(&headers, &rows);
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Set (or with `--clear` remove) the monthly budget of a key or a project.
    Set {
        /// The key (`key_...`); without it the project's budget is set.
        #[arg(long)]
        key: Option<String>,
        /// Project id (default: the default project).
        #[arg(long)]
        project: Option<String>,
        /// Spend limit per calendar month (UTC), in US dollars.
        #[arg(long, required_unless_present = "clear")]
        monthly_usd: Option<f64>,
        /// Alert when this share of the budget is spent.
        #[arg(long, default_value_t = 80)]
        alert_percent: u8,
        /// Remove the budget.
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
            Some(usd) => output::line(&format!("{target}: {} a month, alert at {alert_percent}%", output::usd(usd))),
            None => output::line(&format!("{target}: no budget")),
        }
    }
    Ok(ExitCode::SUCCESS)
}
