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

pub fn print_error(error: &anyhow::Error) {
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr().lock();
    let label = if tty { "\x1b[1;31merror\x1b[0m" } else { "error" };
    let _ = writeln!(err, "{label}: {error}");
    let mut help = None;
    let causes: Vec<_> = error.chain().skip(1).collect();
    if !causes.is_empty() {
        let _ = writeln!(err, "\nCaused by:");
        for cause in causes {
            if let Some(h) = cause.downcast_ref::<Help>() {
                help = Some(h.0.clone());
                continue;
            }
            let _ = writeln!(err, "    {cause}");
        }
    }
    if let Some(h) = error.downcast_ref::<Help>().map(|h| h.0.clone()).or(help) {
        let _ = writeln!(err, "\nhelp: {h}");
    }
}

/// Formats unix seconds for tables.
pub fn when(ts: Option<i64>) -> String {
    ts.map(keygate::time::rfc3339).unwrap_or_else(|| "-".into())
}
