//! One-parameter batches: a whole batch of ids or rows is bound as ONE JSON text parameter and
//! unpacked by the database (`json_each` on SQLite, `jsonb_array_elements` on PostgreSQL).
//!
//! Why: a statement with n `$N` parameters costs O(n²) to bind in sqlx's SQLite driver (each
//! bind looks its parameter up by name with a linear scan), and every statement is a round trip
//! to sqlx's SQLite worker thread or to the PostgreSQL server. With one parameter per batch, a
//! batch of any size is one statement of one fixed text (so one cached prepared statement),
//! whatever the number of rows.
//!
//! A row is a JSON array of its values in column order; [`rows_from`] turns it back into named,
//! typed columns. Integer columns are cast explicitly on PostgreSQL, where `->>` yields text;
//! on SQLite `->>` already yields an INTEGER for a JSON integer.

use serde_json::Value;

use crate::Backend;

/// The SQL type of a column unpacked from a JSON row.
#[derive(Clone, Copy)]
pub(crate) enum Ty {
    Text,
    Int,
}

/// `SELECT <col> AS <name>, … FROM <rows of $p>`: the rows of the JSON array of arrays bound as
/// parameter `$p`, one column per entry of `cols` (array index = position in `cols`).
pub(crate) fn rows_from(backend: Backend, p: usize, cols: &[(&str, Ty)]) -> String {
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
    sql.push_str(&source(backend, p));
    sql
}

/// `SELECT <id> FROM <elements of $p>`: the strings of the JSON array bound as parameter `$p`,
/// for `… IN (…)`.
pub(crate) fn ids_from(backend: Backend, p: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${p})"),
        Backend::Postgres => format!("SELECT jsonb_array_elements_text(${p}::jsonb)"),
    }
}

/// The table source of the elements of the JSON array bound as `$p`, as `j(value)`.
fn source(backend: Backend, p: usize) -> String {
    match backend {
        Backend::Sqlite => format!("json_each(${p}) AS j"),
        Backend::Postgres => format!("jsonb_array_elements(${p}::jsonb) AS j(value)"),
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

/// The JSON text of a list of rows.
pub(crate) fn rows_json(rows: Vec<Value>) -> String {
    Value::Array(rows).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unpacked_per_backend() {
        let cols = [("id", Ty::Text), ("n", Ty::Int)];
        assert_eq!(
            rows_from(Backend::Sqlite, 2, &cols),
            "SELECT j.value ->> 0 AS id, j.value ->> 1 AS n FROM json_each($2) AS j"
        );
        assert_eq!(
            rows_from(Backend::Postgres, 1, &cols),
            "SELECT j.value ->> 0 AS id, (j.value ->> 1)::bigint AS n \
             FROM jsonb_array_elements($1::jsonb) AS j(value)"
        );
        assert_eq!(ids_json(["a", "b\""]), r#"["a","b\""]"#);
    }
}
