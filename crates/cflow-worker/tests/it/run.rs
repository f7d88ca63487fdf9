//! Assignments run with the real drivers and end in the right `Finished` report.

use super::*;
use cflow_agents::proto::FinishedStatus;
use serde_json::json;

#[tokio::test]
async fn exec_and_noop_assignments_run_and_report_how_they_ended() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(4));
    fake.assign([
        shell("ok", "echo hello; echo oops >&2"),
        shell("fails", "exit 3"),
        assignment("noop", "noop", json!(null)),
        assignment(
            "prog",
            "exec",
            json!({"program": "printf", "args": ["%s", "$TASK"], "env": {"TASK": "x"}}),
        ),
    ]);

    let ok = fake.wait_finished("ok").await;
    assert_eq!(ok.status, FinishedStatus::Succeeded);
    assert_eq!((ok.exit_code, ok.stdout.as_str()), (Some(0), "hello\n"));
    assert_eq!(ok.stderr, "oops\n");
    assert!(ok.isolation.starts_with("none: "), "{}", ok.isolation);

    let fails = fake.wait_finished("fails").await;
    assert_eq!(
        (fails.status, fails.exit_code),
        (FinishedStatus::Failed, Some(3))
    );
    assert!(fails.retryable);

    let noop = fake.wait_finished("noop").await;
    assert_eq!(noop.status, FinishedStatus::Succeeded);

    let prog = fake.wait_finished("prog").await;
    assert_eq!(
        prog.stdout, "$TASK",
        "no shell: arguments are passed as they are"
    );

    for task in ["ok", "fails", "noop", "prog"] {
        assert_eq!(fake.received(task, "started"), 1, "{task}");
        assert_eq!(fake.received(task, "finished"), 1, "{task}");
    }
    fake.wait_idle(4).await;
    worker.stop().await.unwrap();
    let registered = fake.with(|s| s.registers.clone());
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].worker_id.as_deref(), Some("w-test"));
    assert_eq!(registered[0].drivers, vec!["exec", "noop"]);
    assert_eq!(fake.with(|s| s.deregistered.clone()), vec!["w-test"]);
}

#[tokio::test]
async fn a_bad_spec_fails_for_good_without_running() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(2));
    fake.assign([
        assignment("bad", "exec", json!({"shell": "echo hi"})),
        assignment("llm", "llm", json!({"command": "true"})),
        assignment("gpt", "gpt", json!({})),
    ]);
    let bad = fake.wait_finished("bad").await;
    assert_eq!(bad.status, FinishedStatus::Failed);
    assert!(!bad.retryable);
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("unknown field 'shell'"),
        "{:?}",
        bad.error
    );
    // A command for a model driver: the spec is refused for good.
    let llm = fake.wait_finished("llm").await;
    assert!(!llm.retryable);
    assert!(
        llm.error.as_deref().unwrap().contains("exec agent"),
        "{:?}",
        llm.error
    );
    let gpt = fake.wait_finished("gpt").await;
    assert!(!gpt.retryable);
    assert!(gpt.error.as_deref().unwrap().contains("not built yet"));
    assert_eq!(fake.received("bad", "started"), 0, "nothing was started");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_working_directory_fails_retryably() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(1));
    fake.assign([assignment(
        "cwd",
        "exec",
        json!({"command": "true", "cwd": "/nonexistent/cflow-worker-test"}),
    )]);
    let f = fake.wait_finished("cwd").await;
    assert_eq!(f.status, FinishedStatus::Failed);
    assert!(f.retryable, "another worker may have the directory");
    assert!(f.error.as_deref().unwrap().contains("working directory"));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn inputs_reach_the_command_in_the_environment_or_a_file() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(2));
    let mut small = shell("small", r#"printf %s "$CFLOW_INPUTS""#);
    small.inputs.insert("dep-1".into(), json!({"answer": 42}));
    let big_value = "x".repeat(100 * 1024);
    let mut big = shell(
        "big",
        r#"test -z "$CFLOW_INPUTS" && cat "$CFLOW_INPUTS_FILE""#,
    );
    big.inputs.insert("dep-2".into(), json!(big_value));
    fake.assign([small, big]);

    let small = fake.wait_finished("small").await;
    assert_eq!(small.stdout, r#"{"dep-1":{"answer":42}}"#);
    let big = fake.wait_finished("big").await;
    assert_eq!(big.status, FinishedStatus::Succeeded, "{big:?}");
    let parsed: serde_json::Value = serde_json::from_str(&big.stdout).unwrap();
    assert_eq!(parsed["dep-2"], json!(big_value));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn output_is_forwarded_as_log_reports_in_order() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(1));
    fake.assign([shell(
        "chatty",
        // A multi-byte character split across writes must not turn into replacement characters.
        r#"for i in $(seq 1 200); do echo "line $i"; done; printf '\342\202'; printf '\254\n'; echo err >&2"#,
    )]);
    let f = fake.wait_finished("chatty").await;
    let mut expected: String = (1..=200).map(|i| format!("line {i}\n")).collect();
    expected.push_str("€\n");
    assert_eq!(f.stdout, expected);
    assert_eq!(fake.log("chatty", "stdout"), expected);
    assert_eq!(fake.log("chatty", "stderr"), "err\n");
    // Logs go out before the Finished report.
    let order = fake.with(|s| {
        s.accepted
            .iter()
            .filter(|r| super::task_of(r) == "chatty")
            .map(super::kind_of)
            .collect::<Vec<_>>()
    });
    assert_eq!(order.first(), Some(&"started"));
    assert_eq!(order.last(), Some(&"finished"));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_timeout_is_reported_as_timed_out() {
    let fake = FakeServer::new();
    let worker = start(&fake, options(1));
    let mut a = shell("slow", "sleep 30");
    a.timeout_ms = 200;
    fake.assign([a]);
    let f = fake.wait_finished("slow").await;
    assert_eq!(f.status, FinishedStatus::TimedOut);
    worker.stop().await.unwrap();
}
