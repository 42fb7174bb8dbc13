use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Key,
    Prefix,
    Project,
    Model,
}

impl By {
    /// The table's first column.
    fn header(self) -> &'static str {
        match self {
            Self::Key => "KEY",
            Self::Prefix => "PREFIX",
            Self::Project => "PROJECT",
            Self::Model => "MODEL",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Self::Key => "api_key_id",
            Self::Prefix => "prefix",
            Self::Project => "project_id",
            Self::Model => "model",
        }
    }
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Group by key, prefix, project or model.
    #[arg(long, value_enum, default_value = "model")]
    by: By,
    /// How far back: 90m, 24h, 7d (at most 31d).
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    since: u64,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Default)]
struct Sums {
    requests: i64,
    input: i64,
    output: i64,
    cost_nanos: i64,
}

/// Prints tokens and cost per group over the period (completions and embeddings).
pub async fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.since <= 31 * 86_400, "`--since` can reach back at most 31d");
    let api = AdminClient::from_env(&args.client.url)?;
    let now = keygate::clock::unix_now();
    let start = now - i64::try_from(args.since).unwrap_or(i64::MAX);
    let (width, limit) = match args.since {
        s if s <= 86_400 => ("1m", s.div_ceil(60)),
        s if s <= 7 * 86_400 => ("1h", s.div_ceil(3600)),
        s => ("1d", s.div_ceil(86_400)),
    };
    let group = args.by.group();
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    for kind in ["completions", "embeddings"] {
        let mut query = format!("start_time={start}&bucket_width={width}&limit={limit}&group_by={group}");
        loop {
            let page = api.get(&format!("/v1/organization/usage/{kind}?{query}")).await?;
            for result in page["data"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|b| b["results"].as_array().into_iter().flatten())
            {
                let name = result[group].as_str().unwrap_or("-").to_owned();
                let s = sums.entry(name).or_default();
                s.requests += result["num_model_requests"].as_i64().unwrap_or(0);
                s.input += result["input_tokens"].as_i64().unwrap_or(0);
                s.output += result["output_tokens"].as_i64().unwrap_or(0);
            }
            match page["next_page"].as_str() {
                Some(next) => {
                    query =
                        format!("start_time={start}&bucket_width={width}&limit={limit}&group_by={group}&page={next}")
                }
                None => break,
            }
        }
    }
    let cost_group = if group == "model" { "line_item" } else { group };
    let days = args.since.div_ceil(86_400).max(1) + 1;
    let costs =
        api.get(&format!("/v1/organization/costs?start_time={start}&limit={days}&group_by={cost_group}")).await?;
    for result in
        costs["data"].as_array().into_iter().flatten().flat_map(|b| b["results"].as_array().into_iter().flatten())
    {
        let name = result[cost_group].as_str().unwrap_or("-").to_owned();
        sums.entry(name).or_default().cost_nanos += result["amount_nanos"].as_i64().unwrap_or(0);
    }
    // Usage names keys by id alone; their names come from the keys themselves.
    let names = match args.by {
        By::Key => key_names(&api).await?,
        _ => HashMap::new(),
    };
    let name_of = |id: &str| names.get(id).cloned();
    if args.client.json {
        let rows: Vec<Value> = sums
            .iter()
            .map(|(name, s)| {
                let mut row = json!({group: name, "requests": s.requests, "input_tokens": s.input,
                                     "output_tokens": s.output, "cost_usd": s.cost_nanos as f64 / 1e9,
                                     "cost_nanos": s.cost_nanos});
                if let By::Key = args.by {
                    row["api_key_name"] = json!(name_of(name));
                }
                row
            })
            .collect();
        output::json(&Value::Array(rows));
    } else {
        let rows: Vec<Vec<String>> = sums
            .iter()
            .map(|(name, s)| {
                let mut row = vec![name.clone()];
                if let By::Key = args.by {
                    row.push(name_of(name).unwrap_or_else(|| "-".into()));
                }
                row.extend([human(s.requests), human(s.input), human(s.output), output::usd_nanos(s.cost_nanos)]);
                row
            })
            .collect();
        let mut headers = vec![args.by.header()];
        if let By::Key = args.by {
            headers.push("NAME");
        }
        headers.extend(["REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "COST"]);
        output::table(&headers, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Key id -> name, for every key of every project, revoked ones included
/// (usage outlives a key).
async fn key_names(api: &AdminClient) -> anyhow::Result<HashMap<String, String>> {
    let mut names = HashMap::new();
    for project in api.list_all("/v1/organization/projects?include_archived=true").await? {
        let Some(project) = project["id"].as_str() else { continue };
        for key in api.list_all(&format!("/v1/organization/projects/{project}/api_keys?include_revoked=true")).await? {
            if let (Some(id), Some(name)) = (key["id"].as_str(), key["name"].as_str()) {
                names.insert(id.to_owned(), name.to_owned());
            }
        }
    }
    Ok(names)
}

/// 1234567 -> 1.2M.
fn human(n: i64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// How far back: 90m, 24h, 7d.
    #[arg(long, default_value = "7d", value_parser = super::parse_duration)]
    since: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// Where an alert's webhook delivery stands, in a word or three.
fn webhook(delivery: &Value) -> String {
    let attempts = delivery["attempts"].as_i64().unwrap_or(0);
    match delivery["status"].as_str() {
        None => "-".into(),
        Some("delivered") => "delivered".into(),
        Some("failed") => format!("failed: {}", output::text(&delivery["last_error"])),
        Some(_) if attempts == 0 => "pending".into(),
        Some(_) => format!("retrying ({attempts} tried: {})", output::text(&delivery["last_error"])),
    }
}

/// Lists alerts, newest first.
pub async fn alerts(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let api = AdminClient::from_env(&args.client.url)?;
    let since = keygate::clock::unix_now() - i64::try_from(args.since).unwrap_or(i64::MAX);
    let all = api.list_all(&format!("/v1/organization/alerts?since={since}")).await?;
    if args.client.json {
        output::json(&Value::Array(all));
    } else {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|a| {
                vec![
                    output::when(a["created_at"].as_i64()),
                    output::text(&a["severity"]),
                    output::text(&a["kind"]),
                    format!("{} ({})", output::text(&a["api_key_name"]), output::text(&a["api_key_id"])),
                    output::text(&a["message"]),
                    webhook(&a["delivery"]),
                ]
            })
            .collect();
        output::table(&["WHEN", "SEVERITY", "KIND", "KEY", "WHAT", "WEBHOOK"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
