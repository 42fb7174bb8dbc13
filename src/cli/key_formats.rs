//! Keys from elsewhere, as `keygate keys import --from plaintext|sha256` reads
//! them: every row checked (a bad one named by its line) before anything is
//! sent, each secret hashed here, so only digests leave this process.
//!
//! - `plaintext`: CSV with a header row, or JSONL; `key` is required, `name`,
//!   `project`, `models` (`;`-separated in CSV), `rpm`, `tpm` are optional.
//! - `sha256`: JSONL of already-hashed keys; LiteLLM's `LiteLLM_VerificationToken`
//!   names are taken as they are (`token`, `key_alias`, `key_name`, `models`,
//!   `rpm_limit`, `tpm_limit`, `max_budget`, `expires`), and keygate's own
//!   (`sha256`, `name`, `project`, `models`, `rpm`, `tpm`).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// One key to import, from one line of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    /// A project's id or name (`None`: the one `--project` names).
    pub project: Option<String>,
    /// The key as the import endpoint takes it.
    pub request: Value,
}

/// What a file held: its rows, the columns or fields nothing reads, and what
/// was mapped to an approximation.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub unmapped: BTreeSet<String>,
    pub notes: BTreeSet<String>,
}

/// The shortest key taken: anything shorter is no secret (and its last four
/// characters, which keygate shows, would give most of it away).
const MIN_KEY_CHARS: usize = 8;

pub fn plaintext(text: &str) -> Result<Parsed, Vec<String>> {
    let text = without_bom(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let records = if first.trim_start().starts_with('{') { jsonl(text)? } else { csv(text)? };
    collect(records, |line, record, parsed| {
        let key = take_text(record, &["key"]).ok_or("no `key`")?;
        let key = key.trim();
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("`key` is empty or holds whitespace".into());
        }
        if key.contains(['"', '\'']) || !key.is_ascii() {
            return Err("`key` holds quotes or non-ASCII characters, which no client can send in a header".into());
        }
        if key.len() < MIN_KEY_CHARS {
            return Err(format!("`key` is shorter than {MIN_KEY_CHARS} characters: too short to be a secret"));
        }
        let digest = hex::encode(keygate::key::KeyDigest::of(key).0);
        let last4 = key[key.len() - 4..].to_owned();
        // A key keygate issued keeps its id and prefix; any other is a legacy
        // key, without checksum; one that looks like keygate's but fails its
        // checks is a mistyped copy, not a key anyone holds.
        let (id, prefix) = match keygate::key::parse(key) {
            Ok(parsed) => (Some(format!("key_{}", parsed.id)), Some(parsed.prefix.to_owned())),
            Err(keygate::key::KeyFormatError::NotKeygate) => (None, None),
            Err(why) => {
                return Err(format!("`key` looks like a keygate key but is not a valid one ({why}): mistyped?"))
            }
        };
        let secret = json!({"sha256": digest, "legacy": id.is_none(), "last4": last4, "created_at": now()});
        let mut row = common(line, record, parsed, id, secret, &last4)?;
        if let Some(prefix) = prefix {
            row.request["prefix"] = json!(prefix);
        }
        Ok(row)
    })
}

fn without_bom(text: &str) -> &str {
    // Spreadsheets' "CSV UTF-8" starts with one.
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

pub fn sha256(text: &str) -> Result<Parsed, Vec<String>> {
    collect(jsonl(without_bom(text))?, |line, record, parsed| {
        let digest = take_text(record, &["sha256", "token"]).ok_or("no `token` (or `sha256`)")?.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("`token` is not a SHA-256 in hex (64 characters)".into());
        }
        // LiteLLM shows a key as `sk-...abcd`: its last four characters.
        let shown = take_text(record, &["key_name"]).unwrap_or_default();
        let last4: String = shown.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        let secret = json!({"sha256": digest, "legacy": true, "last4": last4, "created_at": now()});
        // Taken before `common`, which names whatever is left as not mapped.
        let budget = record.remove("max_budget").filter(|v| !v.is_null());
        let period = record.remove("budget_duration").filter(|v| !v.is_null());
        let expires = record.remove("expires").filter(|v| !v.is_null());
        let blocked = record.remove("blocked").and_then(|v| v.as_bool()).unwrap_or(false);
        let mut request = common(line, record, parsed, None, secret, &last4)?;
        if let Some(usd) = budget {
            let usd = usd
                .as_f64()
                .filter(|u| (0.0..=1e9).contains(u))
                .ok_or("`max_budget` is not a number of dollars (0 to 1000000000)")?;
            request.request["monthly_budget_usd"] = json!(usd);
            let note = match period.as_ref().and_then(Value::as_str) {
                Some(p) => format!(
                    "`max_budget` with `budget_duration` {p} became a monthly budget (keygate's budgets reset each month)"
                ),
                None => "`max_budget` became a monthly budget (keygate's budgets reset each month)".to_owned(),
            };
            parsed.notes.insert(note);
        }
        // A key blocked there comes in suspended: it must not start working here.
        if blocked {
            request.request["active"] = json!(false);
        }
        if let Some(expires) = expires {
            let at = expires.as_str().and_then(keygate::time::parse_datetime).ok_or("`expires` is not a date")?;
            request.request["expires_at"] = json!(at);
        }
        Ok(request)
    })
}

type Record = Map<String, Value>;

/// Fields every format shares: name, project, models, limits.
fn common(
    line: usize,
    record: &mut Record,
    parsed: &mut Parsed,
    id: Option<String>,
    secret: Value,
    last4: &str,
) -> Result<Row, String> {
    let name = take_text(record, &["name", "key_alias"])
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("imported key ...{last4} (line {line})"));
    if name.trim().chars().count() > 256 {
        return Err("`name` is longer than 256 characters".into());
    }
    let project = take_text(record, &["project"]).filter(|p| !p.is_empty());
    let mut request = json!({"name": name, "prefix": "", "created_at": now(), "secrets": [secret]});
    if let Some(id) = id {
        request["id"] = json!(id);
        request["prefix"] = Value::Null;
    }
    if let Some(models) = record.remove("models").filter(|v| !v.is_null()) {
        let list: Vec<String> = match models {
            Value::Array(items) => items.iter().map(|m| m.as_str().map(str::to_owned)).collect::<Option<_>>(),
            Value::String(text) => {
                Some(text.split(';').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect())
            }
            _ => None,
        }
        .ok_or("`models` is not a list of model names")?;
        if list.iter().any(|m| m == "no-default-models") {
            return Err("`models` says no-default-models, which keygate has no equal of: list the models".into());
        }
        if list.len() > 256 || list.iter().any(|m| m.is_empty() || m.len() > 256 || m.chars().any(char::is_control)) {
            return Err("`models` must be at most 256 model names or `*` patterns".into());
        }
        // LiteLLM's empty list and its "all" names mean every model, as keygate's absent list does.
        if !list.is_empty() && !list.iter().any(|m| m == "all-team-models" || m == "all-proxy-models") {
            request["models"] = json!(list);
        }
    }
    let mut limits = Map::new();
    for (fields, limit) in [
        (["rpm", "rpm_limit"], "max_requests_per_1_minute"),
        (["tpm", "tpm_limit"], "max_tokens_per_1_minute"),
        (["max_parallel_requests", "max_parallel_requests"], "max_concurrent_requests"),
    ] {
        if let Some(value) = fields.iter().find_map(|f| record.remove(*f)).filter(|v| !v.is_null()) {
            let n = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| (1..=1_000_000_000_000).contains(n))
                .ok_or_else(|| format!("`{}` is not a whole number from 1 to 1000000000000", fields[0]))?;
            limits.insert(limit.into(), json!(n));
        }
    }
    if !limits.is_empty() {
        request["rate_limits"] = Value::Object(limits);
    }
    // What is left is not keygate's to read: named in the summary, never an error.
    parsed.unmapped.extend(record.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.clone()));
    Ok(Row { line, project, request })
}

/// Runs `row` over every record; every bad record is reported, by its line.
fn collect(
    records: Vec<(usize, Record)>,
    mut row: impl FnMut(usize, &mut Record, &mut Parsed) -> Result<Row, String>,
) -> Result<Parsed, Vec<String>> {
    let mut parsed = Parsed::default();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, mut record) in records {
        match row(line, &mut record, &mut parsed) {
            Ok(r) => {
                let digest = r.request["secrets"][0]["sha256"].as_str().unwrap_or_default().to_owned();
                if let Some(first) = seen.insert(digest, line) {
                    errors.push(format!("line {line}: the same key as line {first}"));
                }
                parsed.rows.push(r);
            }
            Err(why) => errors.push(format!("line {line}: {why}")),
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

fn take_text(record: &mut Record, names: &[&str]) -> Option<String> {
    let value = names.iter().find_map(|n| record.remove(*n))?;
    match value {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// JSON Lines: one object a line; blank lines skipped.
fn jsonl(text: &str) -> Result<Vec<(usize, Record)>, Vec<String>> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => records.push((i + 1, map)),
            Ok(_) => errors.push(format!("line {}: not a JSON object", i + 1)),
            Err(e) => errors.push(format!("line {}: not JSON ({e})", i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

/// CSV with a header row (RFC 4180 quoting); blank lines skipped.
fn csv(text: &str) -> Result<Vec<(usize, Record)>, Vec<String>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else { return Ok(Vec::new()) };
    let columns: Vec<String> = fields(header)
        .map_err(|e| vec![format!("line 1: {e}")])?
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    if !columns.iter().any(|c| c == "key") {
        return Err(vec!["line 1: the header has no `key` column".into()]);
    }
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in lines {
        match fields(line) {
            Ok(values) if values.len() == columns.len() => {
                let record = columns
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(c, v)| (c.clone(), Value::String(v)))
                    .collect();
                records.push((i + 1, record));
            }
            Ok(values) => {
                errors.push(format!("line {}: {} fields where the header has {}", i + 1, values.len(), columns.len()))
            }
            Err(e) => errors.push(format!("line {}: {e}", i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

/// One CSV line's fields.
fn fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            // A quote opens a field at its start, spaces before it aside.
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed");
    }
    out.push(field);
    Ok(out)
}

fn now() -> i64 {
    keygate::clock::unix_now()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn a_plaintext_csv_is_hashed_here_and_mapped() {
        let csv = "key,name,project,models,rpm,tpm,team\nsk-legacy-abcdef123456,App One,proj_a,gpt-4o;gpt-4o-mini,60,1000,blue\n\"sk-quoted,9999\",,,,,,\n";
        let parsed = plaintext(csv).unwrap();
        assert_eq!(parsed.rows.len(), 2);
        let first = &parsed.rows[0].request;
        assert_eq!(first["name"], "App One");
        assert_eq!(parsed.rows[0].project.as_deref(), Some("proj_a"));
        assert_eq!(first["models"], json!(["gpt-4o", "gpt-4o-mini"]));
        assert_eq!(first["rate_limits"], json!({"max_requests_per_1_minute": 60, "max_tokens_per_1_minute": 1000}));
        let secret = &first["secrets"][0];
        assert_eq!(secret["sha256"], hex::encode(Sha256::digest(b"sk-legacy-abcdef123456")));
        assert_eq!((secret["legacy"].as_bool(), secret["last4"].as_str()), (Some(true), Some("3456")));
        assert!(!first.to_string().contains("sk-legacy-abcdef123456"), "no secret leaves");
        assert_eq!(parsed.rows[1].request["secrets"][0]["last4"], "9999");
        assert!(parsed.unmapped.contains("team"));
    }

    #[test]
    fn every_bad_row_is_named_by_its_line_and_nothing_is_returned() {
        let csv = "key,rpm\nsk-good-1111,10\n,5\nsk-good-2222,many\nsk-good-1111,1\n";
        let errors = plaintext(csv).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("line 3:") && errors[1].starts_with("line 4:"), "{errors:?}");
        assert!(errors[2].contains("line 5: the same key as line 2"), "{errors:?}");
        assert!(plaintext("name\nx\n").unwrap_err()[0].contains("no `key` column"));
    }

    #[test]
    fn spreadsheet_csv_quirks_are_read_and_doubtful_keys_refused() {
        // A byte-order mark, CRLF line ends, a space before a quoted field.
        let csv = "\u{feff}key,name\r\nsk-bom-key-12345678, \"Quoted, Name\"\r\n";
        let parsed = plaintext(csv).unwrap();
        assert_eq!(parsed.rows[0].request["name"], "Quoted, Name");
        let refused =
            plaintext("key\nshort\n\"sk-quoted-key-123\"x\nsk-kg1AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")
                .unwrap_err();
        assert!(refused[0].contains("line 2") && refused[0].contains("shorter"), "{refused:?}");
        assert!(refused.len() >= 2, "{refused:?}");
    }

    #[test]
    fn litellm_blocked_keys_stay_blocked_and_its_model_names_are_read() {
        let token = "b".repeat(64);
        let line = |extra: &str| format!("{{\"token\": \"{token}\", {extra}}}\n");
        let blocked =
            sha256(&line("\"blocked\": true, \"models\": [\"all-proxy-models\"], \"max_parallel_requests\": 4"))
                .unwrap();
        let request = &blocked.rows[0].request;
        assert_eq!(request["active"], false);
        assert!(request.get("models").is_none(), "all-proxy-models is every model");
        assert_eq!(request["rate_limits"]["max_concurrent_requests"], 4);
        assert!(sha256(&line("\"models\": [\"no-default-models\"]")).is_err());
        assert!(sha256(&line("\"max_budget\": 1e12")).is_err());
    }

    #[test]
    fn a_litellm_export_keeps_its_hashes_names_limits_budget_and_expiry() {
        let token = "a".repeat(64);
        let jsonl = format!(
            "{{\"token\": \"{token}\", \"key_alias\": \"svc\", \"key_name\": \"sk-...wxyz\", \"models\": [\"gpt-4o\"], \"rpm_limit\": 5, \"tpm_limit\": null, \"max_budget\": 12.5, \"expires\": \"2030-01-01T00:00:00\", \"team_id\": \"t1\", \"spend\": 0.3}}\n"
        );
        let parsed = sha256(&jsonl).unwrap();
        let request = &parsed.rows[0].request;
        assert_eq!(request["secrets"][0]["sha256"], token);
        assert_eq!(request["secrets"][0]["last4"], "wxyz");
        assert_eq!(request["name"], "svc");
        assert_eq!(request["rate_limits"], json!({"max_requests_per_1_minute": 5}));
        assert_eq!(request["monthly_budget_usd"], 12.5);
        assert_eq!(request["expires_at"], keygate::time::parse_datetime("2030-01-01").unwrap());
        assert_eq!(parsed.unmapped, ["spend", "team_id"].into_iter().map(String::from).collect());
        assert!(!parsed.notes.is_empty());
        assert!(sha256("{\"token\": \"not-hex\"}\n").unwrap_err()[0].starts_with("line 1:"));
    }
}
