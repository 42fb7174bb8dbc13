//! `keygate keys import --from keygate|plaintext|sha256 FILE|-`: keys sent
//! to a running gateway's import endpoint in batches. A `keygate export` file
//! holds digests; plaintext keys are hashed here (`key_formats`); only
//! digests are ever sent. Every row is checked, here and then by the gateway
//! (a dry run of every batch), before any is written: a bad row, named by its
//! line, leaves the gateway as it was.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use keygate::store::dump::Reader;
use serde_json::{json, Value};

use super::client::AdminClient;
use super::key_formats::{self, Parsed};
use super::output::{self, Help};
use super::ClientArgs;

const BATCH: usize = 200;

type Row = BTreeMap<String, Value>;

/// Where the keys come from.
pub enum Source<'a> {
    Keygate { source_project: Option<&'a str> },
    Plaintext,
    Sha256,
}

pub async fn run(
    source: Source<'_>,
    file: &str,
    project: Option<String>,
    dry_run: bool,
    client: &ClientArgs,
) -> anyhow::Result<ExitCode> {
    let api = AdminClient::from_env(&client.url)?;
    let default_project = api.project_id(project).await?;
    let (plan, parsed, skipped) = match source {
        Source::Keygate { source_project } => {
            let (keys, skipped) = read(&input(file)?, source_project)?;
            let plan = keys.into_iter().enumerate().map(|(i, k)| (i + 1, default_project.clone(), k)).collect();
            (plan, Parsed::default(), Some(skipped))
        }
        Source::Plaintext | Source::Sha256 => {
            let text = String::from_utf8(input(file)?).context("the file is not UTF-8 text")?;
            let parsed = match source {
                Source::Plaintext => key_formats::plaintext(&text),
                _ => key_formats::sha256(&text),
            };
            let parsed = parsed.map_err(|errors| {
                for error in &errors {
                    output::line(error);
                }
                anyhow::Error::new(Help("fix these rows and run the import again; nothing was imported".into()))
                    .context(format!("{} bad rows in `{file}`", errors.len()))
            })?;
            let projects = projects(&api).await?;
            let mut plan = Vec::with_capacity(parsed.rows.len());
            let mut unknown = Vec::new();
            for row in &parsed.rows {
                match &row.project {
                    None => plan.push((row.line, default_project.clone(), row.request.clone())),
                    Some(p) => match projects.get(p) {
                        Some(id) => plan.push((row.line, id.clone(), row.request.clone())),
                        None => unknown.push(format!(
                            "line {}: no project `{p}`, or more than one of that name (name it by id)",
                            row.line
                        )),
                    },
                }
            }
            if !unknown.is_empty() {
                for error in &unknown {
                    output::line(error);
                }
                return Err(anyhow::Error::new(Help(
                    "create the projects first (keygate projects create --name NAME), or fix the rows".into(),
                ))
                .context(format!("{} rows name unknown projects; nothing was imported", unknown.len())));
            }
            (plan, parsed, None)
        }
    };
    // The gateway checks every batch before any is written.
    let checked = send(&api, &plan, true, None).await?;
    let results = if dry_run {
        checked
    } else {
        let mut bar = output::progress_bar("import");
        send(&api, &plan, false, Some(&mut bar)).await?
    };
    report(&results, &parsed, skipped, dry_run, client.json);
    Ok(ExitCode::SUCCESS)
}

/// The file's bytes; `-` is standard input.
fn input(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("cannot read standard input")?;
    } else {
        bytes = std::fs::read(Path::new(file)).with_context(|| format!("cannot read `{file}`"))?;
    }
    Ok(bytes)
}

/// Every active project by id and by name; a name two projects share maps
/// to nothing (the row must name the project by id).
async fn projects(api: &AdminClient) -> anyhow::Result<BTreeMap<String, String>> {
    let list = api.list_all("/v1/organization/projects").await?;
    let mut by = BTreeMap::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list {
        *names.entry(output::text(&p["name"])).or_default() += 1;
    }
    for p in &list {
        let (id, name) = (output::text(&p["id"]), output::text(&p["name"]));
        if names.get(&name) == Some(&1) {
            by.insert(name, id.clone());
        }
        by.insert(id.clone(), id);
    }
    Ok(by)
}

/// Sends the plan in batches per project; each answer's results carry the row's line.
async fn send(
    api: &AdminClient,
    plan: &[(usize, String, Value)],
    dry_run: bool,
    mut bar: Option<&mut dyn FnMut(u64, u64)>,
) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::with_capacity(plan.len());
    let mut start = 0;
    while start < plan.len() {
        let project = &plan[start].1;
        let end =
            (start..plan.len()).take(BATCH).take_while(|&i| &plan[i].1 == project).last().map_or(start + 1, |i| i + 1);
        let batch = &plan[start..end];
        let keys: Vec<&Value> = batch.iter().map(|(_, _, key)| key).collect();
        let lines = || format!("lines {} to {}", batch[0].0, batch[batch.len() - 1].0);
        let answer = api
            .post(
                &format!("/v1/organization/projects/{project}/api_keys/import"),
                json!({"keys": keys, "dry_run": dry_run}),
            )
            .await
            .with_context(|| match dry_run {
                true => format!("the gateway refused a row among {}; nothing was imported", lines()),
                false => format!("{} keys were imported before the batch of {} failed", imported(&results), lines()),
            })?;
        for ((line, project, _), mut result) in batch.iter().zip(answer["data"].as_array().cloned().unwrap_or_default())
        {
            result["line"] = json!(line);
            result["project"] = json!(project);
            results.push(result);
        }
        start = end;
        if let Some(bar) = bar.as_mut() {
            bar(results.len() as u64, plan.len() as u64);
        }
    }
    Ok(results)
}

/// The summary: every key and what became of it, then what was not mapped.
fn report(results: &[Value], parsed: &Parsed, skipped: Option<Skipped>, dry_run: bool, json: bool) {
    if json {
        output::json(&json!({
            "dry_run": dry_run,
            "data": results,
            "unmapped": parsed.unmapped,
            "notes": parsed.notes,
        }));
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let result = match output::text(&r["result"]).as_str() {
                "new" if !dry_run => "imported".to_owned(),
                "new" => "would import".to_owned(),
                other => other.to_owned(),
            };
            vec![
                output::text(&r["line"]),
                output::text(&r["id"]),
                output::text(&r["name"]),
                output::text(&r["project"]),
                result,
            ]
        })
        .collect();
    output::table(&["LINE", "ID", "NAME", "PROJECT", "RESULT"], &rows);
    let count = |what: &str| results.iter().filter(|r| r["result"] == what).count();
    let (new, done) = (count("new"), count("imported"));
    let summary = if dry_run {
        format!("Dry run: {new} of {} keys would be imported; nothing was written.", results.len())
    } else {
        format!("Imported {done} of {} keys.", results.len())
    };
    output::line(&format!(
        "{summary} Already here: {}; conflicting: {}; expired: {}.",
        count("exists"),
        count("conflict"),
        count("expired")
    ));
    if let Some(skipped) = skipped {
        output::line(&format!("Left behind: {} revoked, {} admin keys.", skipped.revoked, skipped.admin));
    }
    if !parsed.unmapped.is_empty() {
        let names: Vec<&str> = parsed.unmapped.iter().map(String::as_str).collect();
        output::line(&format!("Not mapped (keygate has no such setting): {}.", names.join(", ")));
    }
    for note in &parsed.notes {
        output::line(&format!("Note: {note}."));
    }
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
fn read(bytes: &[u8], source_project: Option<&str>) -> anyhow::Result<(Vec<Value>, Skipped)> {
    let mut input = std::io::BufReader::new(bytes);
    let reader = Reader::open(&mut input).map_err(|e| {
        anyhow::Error::new(Help("pass a file written by `keygate export`".into()))
            .context(format!("this is not a keygate export: {e}"))
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
