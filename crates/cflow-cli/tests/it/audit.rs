//! `cflow audit`: export as JSON lines, verification with the server stopped, and the tamper
//! test — an entry altered directly in the SQLite file is found and named.

use crate::harness::{Server, cflow_in, run};
use sqlx::{Connection, Row};

#[test]
fn export_verify_and_tamper() {
    let server = Server::start();
    run(server.cflow().args(["tenant", "create", "acme"])).ok();
    for i in 0..5 {
        run(server
            .cflow()
            .args(["memory", "store", "notes", &format!("k{i}"), "v"]))
        .ok();
    }
    // A refused write is audited too.
    run(server
        .cflow()
        .args(["memory", "store", "notes", "k0", "v", "--if-version", "9"]))
    .fails();

    let out = server.work().join("audit.jsonl");
    let export = run(server.cflow().args(["audit", "export", "--out"]).arg(&out));
    assert!(export.ok().is_empty(), "the export goes to the file");
    let text = std::fs::read_to_string(&out).unwrap();
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(entries.len() >= 7, "{text}");
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=entries.len() as i64).collect::<Vec<_>>(),
        "every entry, in order"
    );
    assert!(
        export
            .stderr
            .contains(&format!("exported {} audit entries", entries.len())),
        "{}",
        export.stderr
    );
    let to_stdout = run(server.cflow().args(["audit", "export", "--since", "1h"]));
    assert_eq!(to_stdout.ok().lines().count(), entries.len());

    let (status, work, _) = server.stop();
    assert!(status.success());
    let data_dir = work.path().join(".cflow");

    // With the server stopped, verification reads the database itself.
    let verify = || {
        run(cflow_in(work.path())
            .arg("audit")
            .arg("verify")
            .arg("--data-dir")
            .arg(&data_dir))
    };
    let intact = verify();
    let expected = format!("audit ledger intact: {} entries verified", entries.len());
    assert!(intact.ok().contains(&expected), "{}", intact.stdout);

    // Tamper with one entry in the middle, as someone with access to the file could.
    let victim = entries[entries.len() / 2]["seq"].as_i64().unwrap();
    tamper(&data_dir.join("cflow.db"), victim);

    let broken = verify();
    assert_eq!(broken.code(), Some(1), "{broken:?}");
    assert!(
        broken
            .stdout
            .contains(&format!("audit ledger BROKEN at entry #{victim}:")),
        "{}",
        broken.stdout
    );
    let json = run(cflow_in(work.path())
        .args(["audit", "verify", "--output", "json", "--data-dir"])
        .arg(&data_dir));
    assert_eq!(json.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_break"]["seq"], victim);
    assert_eq!(report["verified"], victim - 1);
}

#[test]
fn verify_without_a_database_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(cflow_in(dir.path()).args(["audit", "verify", "--data-dir", "nowhere"]));
    let err = r.fails();
    assert!(
        err.contains("no cflow database at nowhere/cflow.db"),
        "{err}"
    );
    assert!(
        !dir.path().join("nowhere").exists(),
        "verify creates nothing"
    );
}

/// Changes the outcome of entry `seq` directly in the SQLite file, after dropping the triggers
/// that make the ledger append-only.
fn tamper(db: &std::path::Path, seq: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let tables: Vec<String> = sqlx::query(
            "SELECT m.name FROM sqlite_master m WHERE m.type = 'table' AND m.name LIKE '%audit%' \
             AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'outcome') \
             AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'seq')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
        assert_eq!(tables.len(), 1, "one audit table: {tables:?}");
        let table = &tables[0];
        let triggers: Vec<String> =
            sqlx::query("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?")
                .bind(table)
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        for t in &triggers {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER \"{t}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE \"{table}\" SET outcome = 'tampered' WHERE seq = ?"
        )))
        .bind(seq)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(changed, 1, "entry #{seq} was altered");
        conn.close().await.unwrap();
    });
}
