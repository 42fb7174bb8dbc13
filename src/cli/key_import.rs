//! `keygate keys import --from keygate FILE`: the project keys of a
//! `keygate export` file, sent to a running gateway's import endpoint in
//! batches. The file holds digests, never secrets, and so does every request.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use keygate::store::dump::Reader;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::output::{self, Help};
use super::ClientArgs;

const BATCH: usize = 200;

type Row = BTreeMap<String, Value>;

pub async fn run(
    file: &Path,
    project: Option<String>,
    source_project: Option<&str>,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let (keys, skipped) = read(file, source_project)?;
    let api = AdminClient::from_env(&client.url)?;
    let project = api.project_id(project).await?;
    let mut bar = output::progress_bar("import");
    let total = keys.len() as u64;
    let mut results = Vec::with_capacity(keys.len());
    for batch in keys.chunks(BATCH) {
        let answer = api
            .post(&format!("/v1/organization/projects/{project}/api_keys/import"), json!({"keys": batch}))
            .await
            .with_context(|| format!("{} keys were imported before this batch failed", imported(&results)))?;
        results.extend(answer["data"].as_array().cloned().unwrap_or_default());
        bar(results.len() as u64, total);
    }
    if client.json {
        output::json(&Value::from(results));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| vec![output::text(&r["id"]), output::text(&r["name"]), output::text(&r["result"])])
        .collect();
    output::table(&["ID", "NAME", "RESULT"], &rows);
    output::line(&format!(
        "Imported {} of {} keys into {project}; left behind: {} revoked, {} admin keys.",
        imported(&results),
        results.len(),
        skipped.revoked,
        skipped.admin
    ));
    Ok(ExitCode::SUCCESS)
}

fn imported(results: &[Value]) -> usize {
    results.iter().filter(|r| r["result"] == "imported").count()
}

#[derive(Default)]
struct Skipped {
    revoked: usize,
    admin: usize,
}

/// The import requests' keys, in the file's order, and what stays behind.
fn read(file: &Path, source_project: Option<&str>) -> anyhow::Result<(Vec<Value>, Skipped)> {
    let opened = std::fs::File::open(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let mut input = std::io::BufReader::new(opened);
    let reader = Reader::open(&mut input).map_err(|e| {
        anyhow::Error::new(Help("pass a file written by `keygate export`".into()))
            .context(format!("`{}` is not a keygate export: {e}", file.display()))
    })?;
    let mut keys: Vec<Row> = Vec::new();
    let mut secrets: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for read in reader {
        let (_, line) = read?;
        match line.table.as_str() {
            "api_keys" => {
                let row = line.row;
                if row.get("kind").and_then(Value::as_str) != Some("project") {
                    skipped.admin += 1;
                } else if row.get("state").and_then(Value::as_str) == Some("revoked") {
                    skipped.revoked += 1;
                } else if source_project.is_none_or(|p| row.get("project_id").and_then(Value::as_str) == Some(p)) {
                    keys.push(row);
                }
            }
            "api_key_secrets" => {
                let row = line.row;
                let key_id = text(&row, "key_id").unwrap_or_default();
                secrets.entry(key_id).or_default().push(json!({
                    "sha256": row.get("digest").and_then(|d| d.get("hex")).cloned().unwrap_or(Value::Null),
                    "legacy": text(&row, "algorithm").as_deref() == Some("legacy"),
                    "last4": row.get("last4").cloned().unwrap_or(Value::Null),
                    "created_at": row.get("created_at").cloned().unwrap_or(Value::Null),
                    "expires_at": row.get("expires_at").cloned().unwrap_or(Value::Null),
                }));
            }
            _ => {}
        }
    }
    let requests =
        keys.into_iter().map(|row| request(&row, secrets.remove(&text(&row, "id").unwrap_or_default()))).collect();
    Ok((requests, skipped))
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get(column).and_then(Value::as_str).map(str::to_owned)
}

/// A column that holds JSON text, parsed; null when absent.
fn embedded(row: &Row, column: &str) -> Value {
    text(row, column).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
}

/// One key of an import request, from its `api_keys` row and its secrets.
fn request(row: &Row, secrets: Option<Vec<Value>>) -> Value {
    let get = |column: &str| row.get(column).cloned().unwrap_or(Value::Null);
    let mut key = json!({
        "id": format!("key_{}", text(row, "id").unwrap_or_default()),
        "name": get("name"),
        "prefix": get("prefix"),
        "permissions": get("permissions"),
        "created_at": get("created_at"),
        "expires_at": get("expires_at"),
        "active": text(row, "state").as_deref() == Some("active"),
        "secrets": secrets.unwrap_or_default(),
    });
    for column in ["scopes", "models", "allowed_ips", "rate_limits"] {
        let value = embedded(row, column);
        if !value.is_null() {
            key[column] = value;
        }
    }
    if let Some(nanos) = row.get("budget_nanos").and_then(Value::as_i64) {
        key["monthly_budget_usd"] = json!(nanos as f64 / 1e9);
        key["budget_alert_percent"] = get("budget_alert_percent");
    }
    key
}
