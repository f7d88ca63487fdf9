//! `cflow config show`: every setting with its effective value and the layer it came from
//! (default, the file's path, the environment variable, the flag). Secrets are redacted.

use crate::config::{Loaded, show as shown_values};
use crate::output::{Printer, cell, emit};
use anyhow::Result;
use comfy_table::{Table, presets};
use serde_json::json;
use std::process::ExitCode;

pub fn show(loaded: &Loaded, out: Printer) -> Result<ExitCode> {
    let values = shown_values(loaded)?;
    let file = loaded
        .file
        .as_ref()
        .map(|f| json!({ "path": f.path.display().to_string(), "from": f.origin }));
    if out.is_json() {
        out.json(&json!({ "file": file, "values": values }));
        return Ok(ExitCode::SUCCESS);
    }
    match &loaded.file {
        Some(f) => emit(&format!(
            "configuration file: {} (from {})",
            f.path.display(),
            f.origin
        )),
        None => emit(&format!(
            "configuration file: none ({} does not exist)",
            crate::config::DEFAULT_FILE
        )),
    }
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t.set_header(["key", "value", "source"]);
    for v in &values {
        let value = match &v.value {
            None => "(unset)".to_string(),
            Some(v) => cell(Some(v)),
        };
        t.add_row([v.key.clone(), value, v.source.clone()]);
    }
    emit(&t.to_string());
    Ok(ExitCode::SUCCESS)
}
