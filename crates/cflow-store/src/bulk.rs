//! One-parameter batches: a whole batch of ids or rows is bound as ONE JSON text parameter and
//! unpacked by the database (`json_each` on SQLite, `jsonb_array_elements` on PostgreSQL).
//!
//! Why: a statement with n `$N` parameters costs O(n²) to bind in sqlx's SQLite driver (each
//! bind looks its parameter up by name with a linear scan), and every statement is a round trip
//! to sqlx's SQLite worker thread or to the PostgreSQL server. With one parameter per batch, a
//! batch of any size is one statement of one fixed text (so one cached prepared statement),
//! whatever the number of rows; only rows of several MiB in all are split over a few statements
//! ([`MAX_JSON_BYTES`]).
//!
//! A row is a JSON array of its values in column order; [`rows_from`] turns it back into named,
//! typed columns. Integer columns are cast explicitly on PostgreSQL, where `->>` yields text;
//! on SQLite `->>` already yields an INTEGER for a JSON integer.

use serde::Serialize;
use serde_json::Value;

use crate::{Backend, Error, Result};

/// The SQL type of a column unpacked from a JSON row.
#[derive(Clone, Copy)]
pub(crate) enum Ty {
    Text,
    Int,
}

/// `SELECT <col> AS <name>, … FROM <rows of $p>`: the rows of the JSON array of arrays bound as
/// parameter `$p`, one column per entry of `cols` (array index = position in `cols`).
pub(crate) fn rows_from(backend: Backend, p: usize, cols: &[(&str, Ty)]) -> String {
    columns_from(backend, cols, &source(backend, p))
}

/// PostgreSQL: `text` as a dollar-quoted string literal, for a statement sent as a simple query
/// (which has no parameters). The tag does not occur in `text`, and a dollar-quoted string has
/// no escapes, so nothing in `text` can end the literal early.
pub(crate) fn dollar_quoted(text: &str) -> String {
    let mut tag = String::from("$cflow$");
    let mut n = 0u32;
    // Also refused: `text` ending with the tag but its last `$` (it would end the literal
    // with the closing tag's first `$`).
    while text.contains(&tag[..tag.len() - 1]) {
        n += 1;
        tag = format!("$cflow{n}$");
    }
    format!("{tag}{text}{tag}")
}

/// `SELECT <col> AS <name>, … FROM <source>`, `source` giving the rows as `j(value)`.
fn columns_from(backend: Backend, cols: &[(&str, Ty)], source: &str) -> String {
    let mut sql = String::from("SELECT ");
    for (i, (name, ty)) in cols.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        match (backend, ty) {
            (Backend::Postgres, Ty::Int) => sql.push_str(&format!("(j.value ->> {i})::bigint")),
            _ => sql.push_str(&format!("j.value ->> {i}")),
        }
        sql.push_str(" AS ");
        sql.push_str(name);
    }
    sql.push_str(" FROM ");
    sql.push_str(source);
    sql
}

/// `SELECT <id> FROM <elements of $p>`: the strings of the JSON array bound as parameter `$p`,
/// for `… IN (…)`.
pub(crate) fn ids_from(backend: Backend, p: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${p})"),
        // `cflow_ids` (migration 0011) is `jsonb_array_elements_text` estimated at one row.
        Backend::Postgres => format!("SELECT cflow_ids(${p}::jsonb)"),
    }
}

/// The table source of the elements of the JSON array bound as `$p`, as `j(value)`.
fn source(backend: Backend, p: usize) -> String {
    match backend {
        // `jsonb_each` hands each row to `->>` as a JSONB blob; `json_each` would render it back
        // to text, which `->>` would then parse again, once per column.
        Backend::Sqlite => format!("jsonb_each(${p}) AS j"),
        // One row estimated, not 100 (migration `0013_bulk_rows`).
        Backend::Postgres => format!("cflow_rows(${p}::jsonb) AS j(value)"),
    }
}

/// The JSON text of a list of ids.
pub(crate) fn ids_json<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    Value::Array(
        ids.into_iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
    .to_string()
}

/// Most bytes of JSON text per statement (give or take one row). A batch's rows are small, but
/// a task's spec may be up to a MiB and an attempt's output tails 128 KiB: bounding the text keeps
/// every statement far below SQLite's 1 GB string limit and PostgreSQL's `jsonb` size limit, and
/// the memory a statement takes modest, while a batch of ordinary rows is still one statement.
pub(crate) const MAX_JSON_BYTES: usize = 4 << 20;

/// The JSON texts of a list of rows, each row serialised as a JSON array (a tuple, or a type
/// whose `Serialize` writes a sequence), written straight to text without building `Value`s and
/// split into texts of at most about [`MAX_JSON_BYTES`]. Empty when `rows` is.
pub(crate) fn rows_json<T: Serialize>(rows: &[T]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for row in rows {
        buf.push(if buf.is_empty() { b'[' } else { b',' });
        serde_json::to_writer(&mut buf, row).map_err(|e| Error::Corrupt {
            what: "batch".into(),
            detail: format!("cannot write a batch as JSON: {e}"),
        })?;
        if buf.len() >= MAX_JSON_BYTES {
            out.push(close(&mut buf));
        }
    }
    if !buf.is_empty() {
        out.push(close(&mut buf));
    }
    Ok(out)
}

/// Ends the JSON array in `buf` and takes it as text.
fn close(buf: &mut Vec<u8>) -> String {
    buf.push(b']');
    // serde_json writes only UTF-8 (so the lossy branch never runs; `from_utf8` checks a large
    // batch several times faster than `from_utf8_lossy` does).
    String::from_utf8(std::mem::take(buf))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// SQLite: runs `{insert} VALUES ($1, …)` once per row, binding each value of the row (a tuple
/// or array as [`rows_json`] serializes it, in `cols` order) as `->>` would extract it from the
/// JSON row: integers as integers, strings as text, `true`/`false` as 1/0, arrays and objects as
/// their JSON text. The writer runs SQLite in-line, where a bind and a step per row cost less
/// than serializing the rows to JSON and SQLite parsing them back.
pub(crate) async fn insert_by_row<T: Serialize>(
    conn: &mut crate::exec::WConn,
    insert: &str,
    cols: &[(&str, Ty)],
    rows: &[T],
) -> Result<()> {
    use crate::exec::{Kind, Val};
    let sql = format!(
        "{insert} VALUES ({})",
        crate::tasks::placeholders(1, cols.len())
    );
    for row in rows {
        let corrupt = |detail: String| Error::Corrupt {
            what: "batch".into(),
            detail,
        };
        let values = match serde_json::to_value(row) {
            Ok(Value::Array(values)) if values.len() == cols.len() => values,
            Ok(other) => {
                return Err(corrupt(format!(
                    "a batch row is not an array of {} values: {other}",
                    cols.len()
                )));
            }
            Err(e) => return Err(corrupt(format!("cannot write a batch row: {e}"))),
        };
        // The text holds only SQL written by the store; every value is bound.
        let mut q = crate::exec::query(sqlx::AssertSqlSafe(sql.clone()));
        for (v, (_, ty)) in values.into_iter().zip(cols) {
            q = q.bind_val(match v {
                Value::Null => Val::Null(match ty {
                    Ty::Text => Kind::Text,
                    Ty::Int => Kind::Int,
                }),
                Value::Bool(b) => Val::Int(i64::from(b)),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Val::Int(i),
                    None => Val::Real(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => Val::Text(s),
                v @ (Value::Array(_) | Value::Object(_)) => Val::Text(v.to_string()),
            });
        }
        q.execute(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unpacked_per_backend() {
        let cols = [("id", Ty::Text), ("n", Ty::Int)];
        assert_eq!(
            rows_from(Backend::Sqlite, 2, &cols),
            "SELECT j.value ->> 0 AS id, j.value ->> 1 AS n FROM jsonb_each($2) AS j"
        );
        assert_eq!(
            rows_from(Backend::Postgres, 1, &cols),
            "SELECT j.value ->> 0 AS id, (j.value ->> 1)::bigint AS n \
             FROM cflow_rows($1::jsonb) AS j(value)"
        );
        assert_eq!(ids_json(["a", "b\""]), r#"["a","b\""]"#);
        assert_eq!(
            rows_json(&[("a", 1), ("b", 2)]).unwrap(),
            vec![r#"[["a",1],["b",2]]"#.to_string()]
        );
        assert!(rows_json::<(i64,)>(&[]).unwrap().is_empty());
        let big = "x".repeat(MAX_JSON_BYTES / 3);
        let rows: Vec<(&str, usize)> = (0..7).map(|i| (big.as_str(), i)).collect();
        let texts = rows_json(&rows).unwrap();
        assert_eq!(texts.len(), 3, "three rows fill a text");
        let back: Vec<Vec<(String, usize)>> = texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let ns: Vec<usize> = back.iter().flatten().map(|r| r.1).collect();
        assert_eq!(ns, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_literal_tag_never_occurs_in_its_text() {
        assert_eq!(dollar_quoted(r#"[["x"]]"#), r#"$cflow$[["x"]]$cflow$"#);
        // Text holding the tag, or ending with all of it but its last `$`, gets another tag.
        for text in [r#"[["$cflow$"]]"#, r#"[["a"]] $cflow"#] {
            assert_eq!(dollar_quoted(text), format!("$cflow1${text}$cflow1$"));
        }
        assert_eq!(
            dollar_quoted("$cflow $cflow1"),
            "$cflow2$$cflow $cflow1$cflow2$"
        );
    }
}
