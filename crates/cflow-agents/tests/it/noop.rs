//! The noop benchmark driver and the driver registry.

use crate::job;
use cflow_agents::{Driver, DriverError, Drivers, ExecConfig, ExecSpec, JobEnd, NoopDriver};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn noop_completes_at_once_with_exit_zero() {
    let (tx, mut rx) = mpsc::channel(16);
    // Even a real command is not run: noop ignores the spec.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let spec = ExecSpec::shell(format!("touch '{}'", marker.display()));
    let outcome = NoopDriver
        .run(job(spec), tx, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.end, JobEnd::Exited { code: 0 });
    assert!(outcome.stdout.bytes.is_empty() && outcome.stderr.bytes.is_empty());
    assert_eq!(outcome.cpu_time, None);
    assert!(!marker.exists());
    assert!(rx.recv().await.is_none(), "noop sends no events");
}

#[tokio::test]
async fn noop_honours_a_cancelled_token() {
    let (tx, _rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = NoopDriver
        .run(job(ExecSpec::shell("true")), tx, cancel)
        .await
        .unwrap();
    assert_eq!(outcome.end, JobEnd::Cancelled);
}

#[test]
fn the_registry_offers_exec_and_noop_and_names_them_on_a_miss() {
    let drivers = Drivers::builtin(ExecConfig::default());
    assert_eq!(drivers.kinds().collect::<Vec<_>>(), ["exec", "noop"]);
    assert_eq!(drivers.get("noop").unwrap().kind(), "noop");
    let err = drivers.get("claude-code").err().unwrap();
    assert!(matches!(err, DriverError::UnknownDriver { .. }));
    assert_eq!(
        err.to_string(),
        "unknown driver 'claude-code': expected one of exec, noop"
    );
}
