//! The exec driver's ordinary paths: exit codes, output streaming and capping, environment,
//! working directory, the result line, and the errors that stop a job from starting.

use crate::{driver, job, run, streamed_stdout};
use cflow_agents::{
    Driver, DriverError, ExecSpec, Isolation, JobEnd, JobEvent, JobSpec, OutputStream,
};
use serde_json::json;

#[tokio::test]
async fn echo_exits_zero_and_streams_its_output() {
    let (outcome, events) = run(&driver(), job(ExecSpec::program("echo", ["hello"]))).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.end, JobEnd::Exited { code: 0 });
    assert!(outcome.end.is_success());
    assert_eq!(outcome.stdout.bytes, b"hello\n");
    assert!(!outcome.stdout.truncated);
    assert_eq!(outcome.stdout.total_bytes, 6);
    assert!(outcome.stderr.bytes.is_empty());
    assert_eq!(events, vec![JobEvent::Stdout(b"hello\n".to_vec())]);
    assert!(outcome.result.is_none() && outcome.result_error.is_none());
}

#[tokio::test]
async fn events_arrive_in_order_and_match_the_capture() {
    let (outcome, events) = run(&driver(), job(ExecSpec::program("seq", ["1", "20000"]))).await;
    let outcome = outcome.unwrap();
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(outcome.stdout.text(), expected);
    assert_eq!(streamed_stdout(&events), expected.as_bytes());
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let (outcome, _) = run(&driver(), job(ExecSpec::shell("exit 3"))).await;
    let end = outcome.unwrap().end;
    assert_eq!(end, JobEnd::Exited { code: 3 });
    assert!(!end.is_success());

    let (outcome, _) = run(&driver(), job(ExecSpec::shell("kill -9 $$"))).await;
    assert_eq!(outcome.unwrap().end, JobEnd::Signalled { signal: 9 });
}

#[tokio::test]
async fn a_missing_program_fails_to_spawn_with_advice() {
    let spec = ExecSpec::program("cflow-no-such-program", ["x"]);
    let (outcome, events) = run(&driver(), job(spec)).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(&err, DriverError::SpawnFailed { program, .. } if program == "cflow-no-such-program"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "command not found: 'cflow-no-such-program' — is it installed and on PATH?"
    );
    assert!(events.is_empty());
}

#[tokio::test]
async fn a_missing_command_in_a_shell_line_is_exit_127() {
    let (outcome, _) = run(&driver(), job(ExecSpec::shell("cflow-no-such-program"))).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.end, JobEnd::Exited { code: 127 });
    assert!(
        outcome.stderr.text().contains("not found"),
        "{:?}",
        outcome.stderr.text()
    );
}

#[tokio::test]
async fn a_missing_working_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (outcome, _) = run(&driver(), job(ExecSpec::shell("true").cwd(&missing))).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(&err, DriverError::WorkingDir { path, .. } if *path == missing),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("working directory '{}'", missing.display())),
        "{message}"
    );
    assert!(message.contains("create it"), "{message}");
}

#[tokio::test]
async fn exec_refuses_a_job_for_another_driver() {
    let mut noop_job = job(ExecSpec::shell("true"));
    noop_job.spec = JobSpec::Noop;
    let (outcome, _) = run(&driver(), noop_job).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            err,
            DriverError::Unsupported {
                driver: "exec",
                spec: "noop"
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn stderr_is_captured_separately() {
    let spec = ExecSpec::shell("echo out; echo err >&2; echo out2");
    let (outcome, events) = run(&driver(), job(spec)).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.stdout.text(), "out\nout2\n");
    assert_eq!(outcome.stderr.text(), "err\n");
    assert!(events.contains(&JobEvent::Stderr(b"err\n".to_vec())));
}

#[tokio::test]
async fn env_and_working_directory_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ExecSpec::shell(r#"pwd -P; echo "$GREETING"; echo "$CFLOW_TASK_ID/$CFLOW_ATTEMPT""#)
        .env("GREETING", "hi there")
        .cwd(dir.path());
    let mut job = job(spec);
    job.attempt = 3;
    let (outcome, _) = run(&driver(), job).await;
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        outcome.unwrap().stdout.text(),
        format!("{}\nhi there\ntask-1/3\n", canonical.display())
    );
}

#[tokio::test]
async fn the_server_environment_is_not_passed_through() {
    // cargo sets CARGO_MANIFEST_DIR for the test process; it is not on the pass-through list,
    // like the secrets a server's environment holds.
    let spec =
        ExecSpec::shell(r#"echo "${CARGO_MANIFEST_DIR-unset}"; test -n "$PATH" && echo path"#);
    let (outcome, _) = run(&driver(), job(spec)).await;
    assert_eq!(outcome.unwrap().stdout.text(), "unset\npath\n");
}

#[tokio::test]
async fn output_beyond_the_cap_is_drained_and_discarded() {
    // 50 MB on stdout and 3 MB on stderr against a 100 kB cap: the job must still finish (the
    // pipes are drained), and only the cap is kept and streamed.
    let cap = 100_000;
    let spec = ExecSpec::shell("head -c 50000000 /dev/zero; head -c 3000000 /dev/zero >&2");
    let mut job = job(spec);
    job.output_cap = cap;
    let (outcome, events) = run(&driver(), job).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.end, JobEnd::Exited { code: 0 });
    for (captured, total) in [(&outcome.stdout, 50_000_000), (&outcome.stderr, 3_000_000)] {
        assert_eq!(captured.bytes.len(), cap);
        assert!(captured.truncated);
        assert_eq!(captured.total_bytes, total);
    }
    assert_eq!(streamed_stdout(&events).len(), cap);
    for stream in [OutputStream::Stdout, OutputStream::Stderr] {
        let marks = events
            .iter()
            .filter(|e| **e == JobEvent::Truncated { stream })
            .count();
        assert_eq!(marks, 1, "{stream:?}");
    }
}

#[tokio::test]
async fn a_zero_cap_keeps_nothing() {
    let mut job = job(ExecSpec::shell("echo hi"));
    job.output_cap = 0;
    let (outcome, events) = run(&driver(), job).await;
    let outcome = outcome.unwrap();
    assert!(outcome.stdout.bytes.is_empty() && outcome.stdout.truncated);
    assert_eq!(
        events,
        vec![JobEvent::Truncated {
            stream: OutputStream::Stdout
        }]
    );
}

#[tokio::test]
async fn the_last_stdout_line_can_carry_a_result() {
    let spec = ExecSpec::shell(r#"echo building; echo 'CFLOW_RESULT {"tests": 12, "ok": true}'"#);
    let (outcome, _) = run(&driver(), job(spec)).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.result, Some(json!({"tests": 12, "ok": true})));
    assert_eq!(outcome.result_error, None);

    let (outcome, _) = run(&driver(), job(ExecSpec::shell("echo 'CFLOW_RESULT nope'"))).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.result, None);
    assert!(outcome.result_error.unwrap().contains("not valid JSON"));
}

#[tokio::test]
async fn cpu_time_is_measured() {
    // A few hundred milliseconds of shell arithmetic: well above the 10 ms tick.
    let spec = ExecSpec::shell("i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done");
    let (outcome, _) = run(&driver(), job(spec)).await;
    let cpu = outcome
        .unwrap()
        .cpu_time
        .expect("cpu time is read from the zombie leader");
    assert!(!cpu.is_zero());
}

#[tokio::test]
async fn exec_without_a_sandbox_says_plainly_that_it_is_not_sandboxed() {
    let driver = driver();
    assert_eq!(driver.kind(), "exec");
    let (outcome, _) = run(&driver, job(ExecSpec::shell("true"))).await;
    let isolation = outcome.unwrap().isolation;
    assert!(!isolation.is_isolated());
    let Isolation::None { reason } = &isolation else {
        panic!("{isolation:?}")
    };
    assert!(reason.contains("the sandbox is turned off"), "{reason}");
    assert_eq!(isolation, driver.isolation());
}
