//! `cflow cost` (model-call cost reports) and `cflow budget set | list | delete`.

use crate::cli::parse_since;
use crate::client::Client;
use crate::output::{Printer, emit, note};
use anyhow::{Result, bail};
use cflow_core::Action;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct CostArgs {
    /// Group by tenant, project, swarm, agent, task or model.
    #[arg(long, default_value = "tenant")]
    pub by: String,
    /// Calls since: a date (2026-11-01, midnight UTC), an RFC 3339 time, or a duration ago (7d).
    #[arg(long, value_parser = parse_when)]
    pub since: Option<i64>,
    /// Calls before: a date, an RFC 3339 time, or a duration ago.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<i64>,
    /// Superadmin: report on this tenant (id or name) instead of the token's own.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// Set the spend limit of the tenant (or of a project) for a period; replaces an existing
    /// limit of the same scope and period.
    Set {
        /// day (UTC), week (from Monday, UTC) or month (calendar, UTC).
        #[arg(long)]
        period: String,
        /// Dollars per period; 0 refuses every model call.
        #[arg(long)]
        limit_usd: f64,
        /// Limit only this project's spend (default: the whole tenant's).
        #[arg(long)]
        project: Option<String>,
    },
    /// List the budgets with the spend of their current period.
    List,
    /// Delete a budget.
    Delete { id: String },
}

/// A date means its midnight UTC; otherwise what `--since` takes elsewhere.
fn parse_when(s: &str) -> Result<i64, String> {
    if let Some(t) = cflow_core::timefmt::parse_rfc3339(&format!("{s}T00:00:00Z")) {
        return Ok(t);
    }
    parse_since(s).map_err(|_| {
        format!("'{s}' is not a date (2026-11-01), an RFC 3339 time or a duration such as 7d")
    })
}

const ROW_COLUMNS: &[&str] = &[
    "key",
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_calls",
];

const BUDGET_COLUMNS: &[&str] = &[
    "id",
    "project",
    "period",
    "limit_usd",
    "spent_usd",
    "resets_at",
];

pub async fn cost(client: &Client, args: CostArgs, out: Printer) -> Result<()> {
    let mut url = client.url(&["cost"]);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("by", &args.by);
        if let Some(t) = args.since {
            q.append_pair("since", &cflow_core::timefmt::rfc3339(t));
        }
        if let Some(t) = args.until {
            q.append_pair("until", &cflow_core::timefmt::rfc3339(t));
        }
        if let Some(t) = &args.tenant {
            q.append_pair("tenant", t);
        }
    }
    let report = client
        .json(client.request(Method::GET, url), Action::CostRead)
        .await?;
    if out.is_json() {
        out.json(&report);
        return Ok(());
    }
    let items = report["items"].as_array().cloned().unwrap_or_default();
    // The first column is named after the grouping (`project`, `model`, …), and a last row
    // sums them all.
    let by = report["by"].as_str().unwrap_or("key").to_string();
    let mut rows: Vec<Value> = items
        .into_iter()
        .map(|mut r| {
            r[by.as_str()] = r["key"].clone();
            r
        })
        .collect();
    if !rows.is_empty() {
        let mut total = report["total"].clone();
        total[by.as_str()] = json!("TOTAL");
        rows.push(total);
    }
    let mut columns = ROW_COLUMNS.to_vec();
    columns[0] = &by;
    out.list(&report, &rows, &columns);
    let unpriced = report["total"]["unpriced_calls"].as_u64().unwrap_or(0);
    if unpriced > 0 {
        note(&format!(
            "{unpriced} call(s) used models without a price and count as $0 — add them under \
             [server.pricing.models]"
        ));
    }
    Ok(())
}

pub async fn budget(client: &Client, cmd: BudgetCmd, out: Printer) -> Result<()> {
    match cmd {
        BudgetCmd::Set {
            period,
            limit_usd,
            project,
        } => {
            if !(limit_usd.is_finite() && limit_usd >= 0.0) {
                bail!("--limit-usd must be a number of dollars, 0 or more");
            }
            let mut body = json!({ "period": period, "limit_usd": limit_usd });
            if let Some(p) = project {
                body["project"] = json!(p);
            }
            let req = client
                .request(Method::PUT, client.url(&["budgets"]))
                .json(&body);
            let b = client.json(req, Action::BudgetWrite).await?;
            out.record(&b, BUDGET_COLUMNS);
            Ok(())
        }
        BudgetCmd::List => {
            let req = client.request(Method::GET, client.url(&["budgets"]));
            let doc = client.json(req, Action::CostRead).await?;
            let items = doc["items"].as_array().cloned().unwrap_or_default();
            out.list(&doc, &items, BUDGET_COLUMNS);
            Ok(())
        }
        BudgetCmd::Delete { id } => {
            let req = client.request(Method::DELETE, client.url(&["budgets", &id]));
            client.send(req, Action::BudgetWrite).await?;
            if out.is_json() {
                out.json(&json!({ "id": id, "deleted": true }));
            } else {
                emit(&format!("deleted budget {id}"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_and_durations() {
        assert_eq!(
            parse_when("2026-11-01"),
            Ok(cflow_core::timefmt::parse_rfc3339("2026-11-01T00:00:00Z").unwrap())
        );
        assert!(parse_when("2026-11-01T12:00:00Z").is_ok());
        let week_ago = parse_when("7d").unwrap();
        let expected = crate::cli::now_ms() - 7 * 86_400_000;
        assert!((week_ago - expected).abs() < 60_000);
        let err = parse_when("last week").unwrap_err();
        assert!(err.contains("is not a date"), "{err}");
    }
}
