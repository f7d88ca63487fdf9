//! Output: human tables by default (comfy-table), or the API's JSON with `--output json` so that
//! scripts see exactly what the server answered. Times arrive from the API as RFC 3339 strings
//! and are shown as they are.

use crate::config::OutputFormat;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;
use std::io::Write;

/// How a command prints its result.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints JSON (pretty, one document) to standard output.
    pub fn json(&self, v: &Value) {
        let s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        emit(&s);
    }

    /// Prints one object: JSON as is, or a two-column table of the given fields.
    pub fn record(&self, v: &Value, fields: &[&str]) {
        if self.is_json() {
            return self.json(v);
        }
        let mut t = table();
        for f in fields {
            t.add_row(vec![f.to_string(), cell(v.get(*f))]);
        }
        emit(&t.to_string());
    }

    /// Prints a list: JSON as the given document, or a table with one row per item.
    pub fn list(&self, doc: &Value, items: &[Value], columns: &[&str]) {
        if self.is_json() {
            return self.json(doc);
        }
        if items.is_empty() {
            emit("(none)");
            return;
        }
        let mut t = table();
        t.set_header(columns.iter().map(|c| c.to_string()));
        for item in items {
            t.add_row(columns.iter().map(|c| cell(item.get(*c))));
        }
        emit(&t.to_string());
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// A JSON field as table text: strings bare, null as '-', lists comma-separated, anything else
/// as compact JSON. Long values are cut, since a table is for reading, not for copying data.
pub fn cell(v: Option<&Value>) -> String {
    const MAX: usize = 120;
    let s = match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    };
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Writes a line to standard output, ignoring a closed pipe (`cflow … | head` is not an error).
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
}

/// Writes a note for the user to standard error, keeping standard output for data.
pub fn note(s: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}
