//! How the CLI prints: tables on a terminal (bold headers), JSON for scripts,
//! errors as `error: ...` then `Caused by:` lines and an optional `help:` line.

use std::io::{IsTerminal, Write};

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Prints rows as aligned columns; `headers` in bold on a terminal.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let tty = stdout_is_tty();
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let header = line(headers.to_vec());
    let _ = if tty { writeln!(out, "\x1b[1m{header}\x1b[0m") } else { writeln!(out, "{header}") };
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub fn line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// A hint shown under an error, as `help: ...`.
#[derive(Debug)]
pub struct Help(pub String);

impl std::fmt::Display for Help {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Help {}

/// Prints `error: ...`, then `Caused by:` lines, then `help: ...` when a
/// [`Help`] is anywhere in the chain.
pub fn print_error(error: &anyhow::Error) {
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr().lock();
    // anyhow finds a context of type `Help` anywhere in the chain; the chain
    // itself only yields `dyn Error`s, so the help's own line is skipped by text.
    let help = error.downcast_ref::<Help>().map(|h| h.0.clone());
    let messages: Vec<String> =
        error.chain().map(|e| e.to_string()).filter(|m| help.as_deref() != Some(m.as_str())).collect();
    let label = if tty { "\x1b[1;31merror\x1b[0m" } else { "error" };
    let mut messages = messages.into_iter();
    if let Some(headline) = messages.next() {
        let _ = writeln!(err, "{label}: {headline}");
    }
    let causes: Vec<_> = messages.collect();
    if !causes.is_empty() {
        let _ = writeln!(err, "\nCaused by:");
        for cause in causes {
            let _ = writeln!(err, "    {cause}");
        }
    }
    if let Some(help) = help {
        let _ = writeln!(err, "\nhelp: {help}");
    }
}

/// A JSON value as table text: strings bare, null as `-`.
pub fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Formats unix seconds for tables.
pub fn when(ts: Option<i64>) -> String {
    ts.map(keygate::time::rfc3339).unwrap_or_else(|| "-".into())
}

/// A one-line progress bar on standard error, when it is a terminal.
pub fn progress_bar(verb: &'static str) -> impl FnMut(u64, u64) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut shown = 0u64;
    move |done, total| {
        if !tty || total == 0 {
            return;
        }
        let percent = done * 100 / total;
        if percent != shown || done == total {
            shown = percent;
            let filled = usize::try_from(percent / 4).unwrap_or(25);
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(25 - filled.min(25)));
            let end = if done == total { "\n" } else { "" };
            let _ = write!(std::io::stderr(), "\r{verb} [{bar}] {percent:>3}% {done}/{total} rows{end}");
        }
    }
}
