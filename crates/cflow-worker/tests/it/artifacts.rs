//! Artifacts: a job's artifacts are uploaded before its `Finished` report, transient upload
//! failures are retried, and one refused for good is named in the detail without failing the
//! attempt.

use crate::{FakeServer, assignment, options, start_with};
use cflow_agents::proto::FinishedStatus;
use cflow_agents::{
    BoxFuture, Driver, DriverError, Drivers, ExecConfig, Isolation, Job, JobEnd, JobEvent,
    JobOutcome,
};
use cflow_sandbox::artifacts::{Artifact, Kind};
use cflow_worker::LinkError;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Ends every job at once with exit 0 and three artifacts (replacing the `noop` driver).
struct Producer;

fn artifact(name: &str, kind: Kind, bytes: &[u8]) -> Artifact {
    Artifact {
        name: name.to_string(),
        kind,
        bytes: bytes.to_vec(),
        // The worker does not send it: the server hashes what it receives.
        sha256: String::new(),
    }
}

impl Driver for Producer {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn isolation(&self) -> Isolation {
        Isolation::None {
            reason: "test".into(),
        }
    }

    fn run(
        &self,
        _job: Job,
        _events: mpsc::Sender<JobEvent>,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>> {
        let mut o = JobOutcome::new(JobEnd::Exited { code: 0 }, self.isolation());
        o.artifacts = vec![
            artifact("changes.patch", Kind::Patch, b"--- a\n+++ b\n"),
            artifact("out/flaky.txt", Kind::File, b"flaky"),
            artifact("refused.log", Kind::Log, b"nope"),
        ];
        Box::pin(std::future::ready(Ok(o)))
    }
}

#[tokio::test]
async fn artifacts_are_uploaded_before_the_finished_report() {
    let fake = FakeServer::new();
    fake.with(|s| {
        s.upload_errors.insert(
            "out/flaky.txt".into(),
            VecDeque::from([LinkError::Unavailable("connection reset (fake)".into())]),
        );
        s.upload_errors.insert(
            "refused.log".into(),
            VecDeque::from([LinkError::Rejected {
                status: 409,
                detail: "stale epoch (fake)".into(),
            }]),
        );
    });
    let mut drivers = Drivers::builtin(ExecConfig::default());
    drivers.register(Arc::new(Producer));
    let worker = start_with(&fake, options(1), drivers);
    fake.assign([assignment("t1", "noop", serde_json::json!(null))]);
    let f = fake.wait_finished("t1").await;
    assert_eq!(f.status, FinishedStatus::Succeeded);
    let uploads = fake.with(|s| s.uploads.clone());
    let got: Vec<_> = uploads
        .iter()
        .map(|u| (u.0.as_str(), u.1, u.2.as_str(), u.3.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("t1", 1, "changes.patch", "patch"),
            ("t1", 1, "out/flaky.txt", "file"),
        ]
    );
    let detail = f.detail.expect("detail");
    assert_eq!(detail["end"], "exit 0");
    assert_eq!(detail["isolation"], "none: test");
    let failed = detail["artifacts_failed"]
        .as_array()
        .expect("artifacts_failed");
    assert_eq!(failed.len(), 1);
    let msg = failed[0].as_str().unwrap();
    assert!(
        msg.starts_with("artifact refused.log not stored:") && msg.contains("409"),
        "{msg}"
    );
    worker.stop().await.unwrap();
}
