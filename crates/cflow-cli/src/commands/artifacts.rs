//! `cflow task artifacts ID [--download DIR]`: a task's artifacts, listed or downloaded with
//! their SHA-256 checked.

use crate::client::Client;
use crate::output::{Printer, emit};
use anyhow::{Context, Result, bail};
use cflow_core::Action;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};

const COLUMNS: &[&str] = &["name", "kind", "size", "sha256", "attempt"];

pub async fn run(client: &Client, id: &str, download: Option<&Path>, out: Printer) -> Result<()> {
    let req = client.request(Method::GET, client.url(&["tasks", id, "artifacts"]));
    let doc = client.json(req, Action::TaskRead).await?;
    let items = doc["artifacts"].as_array().cloned().unwrap_or_default();
    let Some(dir) = download else {
        let rows: Vec<Value> = items.iter().map(row).collect();
        out.list(&doc, &rows, COLUMNS);
        return Ok(());
    };
    // Every name is checked before anything is written: a bad one downloads nothing.
    let mut targets = Vec::with_capacity(items.len());
    for a in &items {
        let name = a["name"].as_str().unwrap_or_default();
        targets.push(target(dir, name)?);
    }
    let mut written = Vec::with_capacity(items.len());
    for (a, path) in items.iter().zip(&targets) {
        let name = a["name"].as_str().unwrap_or_default();
        let sha = a["sha256"].as_str().unwrap_or_default();
        let req = client.request(Method::GET, client.url(&["tasks", id, "artifacts", sha]));
        let resp = client.send(req, Action::TaskRead).await?;
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("downloading artifact {name}"))?;
        let got = cflow_store::sha256_hex(&bytes);
        if got != sha {
            bail!(
                "artifact {name} arrived damaged: its SHA-256 is {got}, the server lists {sha}; \
                 nothing was written for it — run the command again"
            );
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the directory {}", parent.display()))?;
        }
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        let mut r = row(a);
        r["path"] = json!(path.display().to_string());
        written.push(r);
    }
    if out.is_json() {
        out.json(&json!({ "artifacts": written }));
    } else {
        out.list(&Value::Null, &written, &["name", "size", "sha256", "path"]);
        emit(&format!(
            "{} artifact(s) written to {}",
            written.len(),
            dir.display()
        ));
    }
    Ok(())
}

/// A listing row: the hash shortened to its first 12 characters.
fn row(a: &Value) -> Value {
    let mut r = a.clone();
    if let Some(s) = a["sha256"].as_str() {
        r["sha256"] = json!(s.chars().take(12).collect::<String>());
    }
    r
}

/// Where artifact `name` goes under `dir`; an error for a name that would leave it.
pub fn target(dir: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |why: &str| -> Result<PathBuf> {
        bail!(
            "artifact name {name:?} {why}; refusing to write it outside {} — nothing was \
             downloaded (ask the task's owner to rename it)",
            dir.display()
        )
    };
    if let Err(e) = cflow_core::validate::artifact_name(name) {
        return refuse(&format!("is not a safe relative path ({})", e.rule));
    }
    let rel = Path::new(name);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return refuse("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return refuse("is absolute"),
        }
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        let dir = Path::new("/tmp/out");
        assert_eq!(
            target(dir, "a/b.txt").unwrap(),
            PathBuf::from("/tmp/out/a/b.txt")
        );
        for bad in ["/etc/passwd", "../x", "a/../../x", ""] {
            let e = target(dir, bad).unwrap_err().to_string();
            assert!(e.contains("refusing to write"), "{bad:?}: {e}");
        }
    }
}
