//! How the CLI prints: tables (comfy-table) and JSON on standard output,
//! progress (indicatif) and errors on standard error. Errors read `error: ...`,
//! then `Caused by:` lines and an optional `help:` line.
//!
//! Colour goes through anstream, which drops it when the stream is not a
//! terminal and honours `NO_COLOR`, `CLICOLOR` and `CLICOLOR_FORCE`; nothing
//! here writes escape codes any other way.

use std::io::Write;

use anstyle::{AnsiColor, Style};

const BOLD: Style = Style::new().bold();
const ERROR: Style = AnsiColor::Red.on_default().bold();

/// Prints rows as aligned columns under bold headers, fitted to the
/// terminal's width (cells wrap) when standard output is a terminal.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let text = render_table(headers, rows, terminal_width());
    let mut out = anstream::stdout().lock();
    let mut lines = text.lines().map(str::trim_end);
    if let Some(header) = lines.next() {
        let _ = writeln!(out, "{BOLD}{header}{BOLD:#}");
    }
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// The table as text, without colour; `width` fits it to a terminal.
fn render_table(headers: &[&str], rows: &[Vec<String>], width: Option<u16>) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table};
    let mut table = Table::new();
    // Borderless, two spaces between columns, as `kubectl get` and `gh` print.
    table.load_preset(comfy_table::presets::NOTHING);
    match width {
        Some(width) => {
            table.set_content_arrangement(ContentArrangement::Dynamic).set_width(width);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table.set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    let columns = table.column_count();
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i + 1 == columns { 0 } else { 2 }));
        column.set_cell_alignment(CellAlignment::Left);
    }
    table.to_string()
}

/// Standard output's width in columns, when it is a terminal.
fn terminal_width() -> Option<u16> {
    console::Term::stdout().size_checked().map(|(_, columns)| columns)
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
    let _ = anstream::stderr().lock().write_all(error_text(error).as_bytes());
}

/// The text [`print_error`] prints, with `error` in bold red (dropped by
/// anstream where colour is not wanted).
fn error_text(error: &anyhow::Error) -> String {
    // anyhow finds a context of type `Help` anywhere in the chain; the chain
    // itself only yields `dyn Error`s, so the help's own line is skipped by text.
    let help = error.downcast_ref::<Help>().map(|h| h.0.clone());
    let mut messages: Vec<String> = Vec::new();
    for message in error.chain().map(|e| e.to_string()) {
        // A cause whose text is already the end of the line above says nothing new.
        let repeated = messages.last().is_some_and(|above| above.ends_with(&message));
        if help.as_deref() != Some(message.as_str()) && !repeated {
            messages.push(message);
        }
    }
    let mut text = String::new();
    let mut messages = messages.into_iter();
    if let Some(headline) = messages.next() {
        text.push_str(&format!("{ERROR}error{ERROR:#}: {headline}\n"));
    }
    let causes: Vec<_> = messages.collect();
    if !causes.is_empty() {
        text.push_str("\nCaused by:\n");
        for cause in causes {
            text.push_str(&format!("    {cause}\n"));
        }
    }
    if let Some(help) = help {
        text.push_str(&format!("\n{BOLD}help{BOLD:#}: {help}\n"));
    }
    text
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

/// US dollars, to the cent and further where a smaller amount would
/// otherwise show as `$0.00`: `$25.00`, `$0.000001`.
pub fn usd(amount: f64) -> String {
    // Nano-dollars, as keygate keeps money; amounts beyond i64 are not budgets.
    usd_nanos((amount * 1e9).round() as i64)
}

/// [`usd`] from nano-dollars.
pub fn usd_nanos(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let nanos = nanos.unsigned_abs();
    let fraction = format!("{:09}", nanos % 1_000_000_000);
    let fraction = fraction.trim_end_matches('0');
    let cents = if fraction.len() < 2 { format!("{fraction:0<2}") } else { fraction.to_owned() };
    format!("{sign}${}.{cents}", nanos / 1_000_000_000)
}

/// A progress bar of rows on standard error; indicatif draws it only when
/// standard error is a terminal.
pub fn progress_bar(verb: &'static str) -> impl FnMut(u64, u64) {
    let bar = indicatif::ProgressBar::hidden();
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:25}] {percent:>3}% {pos}/{len} rows")
        .map(|s| s.progress_chars("#>-"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(verb);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    move |done, total| {
        if total == 0 {
            return;
        }
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_amounts_keep_their_digits() {
        assert_eq!(usd(25.0), "$25.00");
        assert_eq!(usd(1.5), "$1.50");
        assert_eq!(usd(0.000001), "$0.000001");
        assert_eq!(usd_nanos(1), "$0.000000001");
        assert_eq!(usd_nanos(0), "$0.00");
        assert_eq!(usd_nanos(-1_230_000_000), "-$1.23");
    }

    #[test]
    fn tables_align_wide_and_unicode_cells_without_trailing_space() {
        let rows = vec![vec!["日本語".to_owned(), "x".to_owned()], vec!["ab".to_owned(), "yy".to_owned()]];
        let text = render_table(&["NAME", "V"], &rows, None);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(lines, ["NAME    V", "日本語  x", "ab      yy"], "{text}");
    }

    #[test]
    fn tables_fit_a_narrow_terminal_by_wrapping_cells() {
        let long = "word ".repeat(20);
        let text = render_table(&["ID", "WHAT"], &[vec!["key_1".to_owned(), long]], Some(40));
        assert!(text.lines().count() > 2, "{text}");
        assert!(text.lines().all(|l| console::measure_text_width(l) <= 40), "{text}");
    }

    #[test]
    fn a_cause_repeating_the_line_above_is_printed_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(inner).context("cannot read `x`: no such file").context("invalid configuration");
        let text = error_text(&error);
        assert_eq!(text.matches("no such file").count(), 1, "{text}");
    }
}
