//! Attempt ops in bulk: many assignments, starts or completions sent to the writer as one
//! message, so that thousands a second do not each pay a channel send, a reply and a wakeup.
//! Every element behaves exactly like its single-op version (same fencing, same errors, same
//! audit entry) and gets its own answer.

use std::collections::HashSet;

use crate::attempts::{AttemptOp, check_lease};
use crate::batch_fast::{self, AssignReq};
use crate::orch_types::{AssignRequest, Attempt, CompleteRequest, Settled, StartRequest};
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// Writer op: applies each element in order, as if each were its own op of the batch. A batch
/// of one kind of op on distinct tasks takes the set-based path of `batch_fast`.
pub(crate) async fn apply(cx: &mut OpCx<'_>, ops: &[AttemptOp]) -> Result<Step> {
    let refs: Vec<&AttemptOp> = ops.iter().collect();
    let mut steps = match fast(cx, &refs).await? {
        Some(steps) => steps,
        None => {
            // Op by op, each may read and write beyond its own task (`OpCx::serialize`).
            cx.serialize().await?;
            let mut steps = Vec::with_capacity(ops.len());
            for op in ops {
                steps.push(crate::attempts::apply(cx, op).await?);
            }
            steps
        }
    };
    hand_over(cx, &refs, &mut steps).await?;
    let mut results = Vec::with_capacity(ops.len());
    let mut audit = Vec::with_capacity(ops.len());
    for step in steps {
        results.push(step.result);
        audit.extend(step.audit);
    }
    Ok(Step {
        result: Ok(Output::Batch(results)),
        audit,
    })
}

/// Writer op for a run of attempt batches from different callers (`writer::attempt_run`):
/// when the set-based path is exact for all their elements together (one kind of op, distinct
/// tasks), they are applied as one set, and each caller gets its own elements' answers and
/// audit entries; otherwise each batch is applied as its own op. At a thousand tasks a second
/// most completions arrive one per message, and a writer batch often holds several of them.
pub(crate) async fn apply_many(cx: &mut OpCx<'_>, groups: &[&[AttemptOp]]) -> Result<Vec<Step>> {
    let all: Vec<&AttemptOp> = groups.iter().flat_map(|g| g.iter()).collect();
    if groups.len() > 1
        && let Some(mut steps) = fast(cx, &all).await?
    {
        hand_over(cx, &all, &mut steps).await?;
        let mut steps = steps.into_iter();
        return Ok(groups
            .iter()
            .map(|g| {
                let mut results = Vec::with_capacity(g.len());
                let mut audit = Vec::with_capacity(g.len());
                for step in steps.by_ref().take(g.len()) {
                    results.push(step.result);
                    audit.extend(step.audit);
                }
                Step {
                    result: Ok(Output::Batch(results)),
                    audit,
                }
            })
            .collect());
    }
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        out.push(apply(cx, g).await?);
    }
    Ok(out)
}

/// Assigns the next task of each accepted completion that names one (`CompleteRequest::next`),
/// after every completion of `ops` was applied (`steps`, one per op): the answer goes into the
/// completion's `Settled::next` and the assignment's ledger entry joins the completion's. A
/// refused completion assigns nothing. Distinct next tasks take the set-based path, with the
/// same checks as an `assign_tasks` batch.
async fn hand_over(cx: &mut OpCx<'_>, ops: &[&AttemptOp], steps: &mut [Step]) -> Result<()> {
    let mut wanted: Vec<(usize, AssignReq<'_>)> = Vec::new();
    for (i, (op, step)) in ops.iter().zip(steps.iter()).enumerate() {
        if let AttemptOp::Complete {
            now, next: Some(n), ..
        } = *op
            && matches!(step.result, Ok(Output::Settled(_)))
        {
            wanted.push((
                i,
                AssignReq {
                    task_id: &n.task_id,
                    agent_id: &n.agent_id,
                    worker_id: &n.worker_id,
                    lease_ms: n.lease_ms,
                    now: *now,
                },
            ));
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(wanted.len());
    let assigned = if wanted.iter().all(|(_, r)| seen.insert(r.task_id)) {
        let reqs: Vec<AssignReq<'_>> = wanted.iter().map(|(_, r)| r.clone()).collect();
        batch_fast::assign(cx, &reqs).await?
    } else {
        cx.serialize().await?;
        let mut out = Vec::with_capacity(wanted.len());
        for (_, r) in &wanted {
            let op = AttemptOp::Assign {
                task_id: r.task_id.to_string(),
                agent_id: r.agent_id.to_string(),
                worker_id: r.worker_id.to_string(),
                lease_ms: r.lease_ms,
                now: r.now,
            };
            out.push(crate::attempts::apply(cx, &op).await?);
        }
        out
    };
    for ((i, _), a) in wanted.iter().zip(assigned) {
        let step = &mut steps[*i];
        step.audit.extend(a.audit);
        if let Ok(Output::Settled(s)) = &mut step.result {
            s.next = Some(match a.result {
                Ok(Output::Assigned(a)) => Ok(a),
                Ok(other) => Err(format!("unexpected answer to an assignment: {other:?}")),
                Err(e) => Err(e.to_string()),
            });
        }
    }
    Ok(())
}

/// The set-based path when it is exact for `ops`, else `None` (having written nothing).
async fn fast(cx: &mut OpCx<'_>, ops: &[&AttemptOp]) -> Result<Option<Vec<Step>>> {
    let mut seen = HashSet::with_capacity(ops.len());
    let distinct = ops.iter().all(|op| match *op {
        AttemptOp::Assign { task_id, .. }
        | AttemptOp::Start { task_id, .. }
        | AttemptOp::Complete { task_id, .. } => seen.insert(task_id.as_str()),
        _ => false,
    });
    if !distinct || ops.is_empty() {
        return Ok(None);
    }
    let assigns: Option<Vec<AssignReq<'_>>> = ops
        .iter()
        .map(|op| match *op {
            AttemptOp::Assign {
                task_id,
                agent_id,
                worker_id,
                lease_ms,
                now,
            } => Some(AssignReq {
                task_id,
                agent_id,
                worker_id,
                lease_ms: *lease_ms,
                now: *now,
            }),
            _ => None,
        })
        .collect();
    if let Some(reqs) = assigns {
        return Ok(Some(batch_fast::assign(cx, &reqs).await?));
    }
    let starts: Option<Vec<(&str, i64, i64)>> = ops
        .iter()
        .map(|op| match *op {
            AttemptOp::Start {
                task_id,
                epoch,
                now,
            } => Some((task_id.as_str(), *epoch, *now)),
            _ => None,
        })
        .collect();
    if let Some(reqs) = starts {
        return Ok(Some(batch_fast::start(cx, &reqs).await?));
    }
    let completes: Option<Vec<batch_fast::CompleteReq<'_>>> = ops
        .iter()
        .map(|op| match *op {
            AttemptOp::Complete {
                task_id,
                epoch,
                outcome,
                now,
                started_at,
                next: _,
            } => Some((task_id.as_str(), *epoch, outcome, *now, *started_at)),
            _ => None,
        })
        .collect();
    match completes {
        Some(reqs) => batch_fast::complete(cx, &reqs).await,
        None => Ok(None),
    }
}

impl Store {
    /// Sends the valid elements as one writer op; `invalid[i]` answers element `i` without it.
    async fn attempt_batch(
        &self,
        ctx: &AuditContext,
        ops: Vec<Result<AttemptOp>>,
    ) -> Result<Vec<Result<Output>>> {
        let mut answers: Vec<Option<Result<Output>>> = Vec::with_capacity(ops.len());
        let mut valid = Vec::new();
        for op in ops {
            match op {
                Ok(op) => {
                    valid.push(op);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut done = if valid.is_empty() {
            Vec::new()
        } else {
            let out = self.write(ctx, Op::AttemptBatch(valid)).await?;
            expect_output!(out, Output::Batch(b) => b)?
        }
        .into_iter();
        answers
            .into_iter()
            .map(|a| match a {
                Some(a) => Ok(a),
                None => done.next().ok_or_else(|| Error::Corrupt {
                    what: "writer".into(),
                    detail: "a batch answered fewer elements than it was sent".into(),
                }),
            })
            .collect()
    }

    /// [`Store::assign_task`] for many tasks in one writer op; one answer per request, in order.
    /// The outer error is for the batch as a whole (the store closed, the database failed).
    pub async fn assign_tasks(
        &self,
        ctx: &AuditContext,
        reqs: Vec<AssignRequest>,
    ) -> Result<Vec<Result<Attempt>>> {
        let ops = reqs
            .into_iter()
            .map(|r| {
                check_lease(r.lease_ms)?;
                Ok(AttemptOp::Assign {
                    task_id: r.task_id,
                    agent_id: r.agent_id,
                    worker_id: r.worker_id,
                    lease_ms: r.lease_ms,
                    now: r.now,
                })
            })
            .collect();
        let out = self.attempt_batch(ctx, ops).await?;
        Ok(out
            .into_iter()
            .map(|o| o.and_then(|o| expect_output!(o, Output::Assigned(a) => a)))
            .collect())
    }

    /// [`Store::start_attempt`] for many attempts in one writer op.
    pub async fn start_attempts(
        &self,
        ctx: &AuditContext,
        reqs: Vec<StartRequest>,
    ) -> Result<Vec<Result<Attempt>>> {
        let ops = reqs
            .into_iter()
            .map(|r| {
                Ok(AttemptOp::Start {
                    task_id: r.task_id,
                    epoch: r.epoch,
                    now: r.now,
                })
            })
            .collect();
        let out = self.attempt_batch(ctx, ops).await?;
        Ok(out
            .into_iter()
            .map(|o| o.and_then(|o| expect_output!(o, Output::Assigned(a) => a)))
            .collect())
    }

    /// [`Store::complete_attempt`] for many attempts in one writer op.
    pub async fn complete_attempts(
        &self,
        ctx: &AuditContext,
        reqs: Vec<CompleteRequest>,
    ) -> Result<Vec<Result<Settled>>> {
        let ops = reqs
            .into_iter()
            .map(|r| {
                Ok(AttemptOp::Complete {
                    task_id: r.task_id,
                    epoch: r.epoch,
                    outcome: r.outcome,
                    now: r.now,
                    started_at: r.started_at,
                    // A hand-over with a lease no assignment may have is not made (its
                    // `Settled::next` stays `None`); the completion itself stands.
                    next: r.next.filter(|n| check_lease(n.lease_ms).is_ok()),
                })
            })
            .collect();
        let out = self.attempt_batch(ctx, ops).await?;
        Ok(out
            .into_iter()
            .map(|o| o.and_then(|o| expect_output!(o, Output::Settled(s) => s)))
            .collect())
    }
}
