//! Task dependency graphs: checking a submitted DAG (duplicate ids, unknown dependencies,
//! self-dependencies, cycles), and tracking unmet-dependency counters while tasks finish, so a
//! task becomes ready exactly when its last dependency succeeds and is cancelled when one fails.

use crate::ValidationError;
use crate::task::TaskState;
use std::collections::{HashMap, HashSet, VecDeque};

/// One task of a submission: its id local to the submission and the tasks it depends on. A
/// dependency names another task of the same submission (local ids take precedence) or a task
/// that already exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagTask {
    pub id: String,
    pub depends_on: Vec<String>,
}

impl DagTask {
    pub fn new<S: Into<String>>(
        id: impl Into<String>,
        depends_on: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            id: id.into(),
            depends_on: depends_on.into_iter().map(Into::into).collect(),
        }
    }
}

/// Why a submission is not a valid DAG. Each message names the offending ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("task '{0}' appears more than once in the submission")]
    DuplicateId(String),
    #[error("task '{0}' depends on itself")]
    SelfDependency(String),
    /// Every `(task, dependency)` whose dependency is neither in the submission nor an existing
    /// task of the tenant, in submission order.
    #[error("{}", describe_unknown(.0))]
    UnknownDependencies(Vec<(String, String)>),
    /// The ids along a cycle, the first repeated at the end; `→` reads "depends on".
    #[error("dependency cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
}

fn describe_unknown(missing: &[(String, String)]) -> String {
    let parts: Vec<_> = missing
        .iter()
        .map(|(task, dep)| format!("task '{task}' depends on unknown task '{dep}'"))
        .collect();
    parts.join("; ")
}

impl From<DagError> for ValidationError {
    fn from(e: DagError) -> Self {
        ValidationError::new("depends_on", e.to_string())
    }
}

/// A dependency as resolved at submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepRef {
    /// Another task of the same submission, by index.
    Local(usize),
    /// A task that already existed, by id.
    Existing(String),
}

/// How a submitted task starts out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No unfinished dependency: it can be queued at once.
    Ready,
    /// Waiting on these dependencies (unmet count = `on.len()`), each listed once.
    Waiting { on: Vec<DepRef> },
    /// It can never run because a dependency (or one of its dependencies) already failed.
    Cancelled { reason: String },
}

/// A valid submission: a topological order and each task's starting point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagPlan {
    /// Indices into the submission, each task after every local task it depends on. Among tasks
    /// that are free at the same time, submission order is kept, so the plan is deterministic.
    pub order: Vec<usize>,
    /// Per task (by index), how it starts.
    pub start: Vec<Start>,
}

impl DagPlan {
    /// Indices of the tasks that can be queued at once.
    pub fn ready(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.start.len()).filter(|&i| self.start[i] == Start::Ready)
    }
}

/// The reason given to a task cancelled because its dependency `dep` ended in `state`.
pub fn dependency_reason(dep: &str, state: TaskState) -> String {
    match state {
        TaskState::TimedOut => format!("dependency {dep} timed out"),
        TaskState::Cancelled => format!("dependency {dep} was cancelled"),
        _ => format!("dependency {dep} failed"),
    }
}

/// Checks a submission and plans it. `existing(id)` gives the state of a task outside the
/// submission, or `None` when there is no such task in the caller's tenant (so another tenant's
/// task is reported as unknown, like any other missing id). A dependency on an existing task that
/// already succeeded is met; one on a task that failed, timed out or was cancelled cancels the
/// dependent (and its dependents in the submission) with [`dependency_reason`].
pub fn plan(
    tasks: &[DagTask],
    existing: impl Fn(&str) -> Option<TaskState>,
) -> Result<DagPlan, DagError> {
    let mut local = HashMap::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if local.insert(t.id.as_str(), i).is_some() {
            return Err(DagError::DuplicateId(t.id.clone()));
        }
    }

    // Resolve every dependency once; repeats in one list are dropped so counters stay exact.
    let mut deps: Vec<Vec<(DepRef, Option<TaskState>)>> = Vec::with_capacity(tasks.len());
    let mut unknown = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut resolved = Vec::new();
        for d in t.depends_on.iter().filter(|d| seen.insert(d.as_str())) {
            match local.get(d.as_str()) {
                Some(&j) if j == i => return Err(DagError::SelfDependency(t.id.clone())),
                Some(&j) => resolved.push((DepRef::Local(j), None)),
                None => match existing(d) {
                    Some(state) => resolved.push((DepRef::Existing(d.clone()), Some(state))),
                    None => unknown.push((t.id.clone(), d.clone())),
                },
            }
        }
        deps.push(resolved);
    }
    if !unknown.is_empty() {
        return Err(DagError::UnknownDependencies(unknown));
    }

    let order = topological_order(tasks, &deps)?;

    let mut start: Vec<Start> = vec![Start::Ready; tasks.len()];
    for &i in &order {
        let mut on = Vec::new();
        let mut cancelled = None;
        for (dep, state) in &deps[i] {
            match (dep, state) {
                (DepRef::Local(j), _) => match &start[*j] {
                    Start::Cancelled { reason } => cancelled = cancelled.or(Some(reason.clone())),
                    _ => on.push(dep.clone()),
                },
                (DepRef::Existing(_), Some(TaskState::Succeeded)) => {}
                (DepRef::Existing(id), Some(s)) if s.is_terminal() => {
                    cancelled = cancelled.or(Some(dependency_reason(id, *s)));
                }
                (DepRef::Existing(_), _) => on.push(dep.clone()),
            }
        }
        start[i] = match cancelled {
            Some(reason) => Start::Cancelled { reason },
            None if on.is_empty() => Start::Ready,
            None => Start::Waiting { on },
        };
    }
    Ok(DagPlan { order, start })
}

/// Kahn's algorithm over the local edges; on failure, walks the leftover tasks to name a cycle.
fn topological_order(
    tasks: &[DagTask],
    deps: &[Vec<(DepRef, Option<TaskState>)>],
) -> Result<Vec<usize>, DagError> {
    let n = tasks.len();
    let local_deps = |i: usize| {
        deps[i].iter().filter_map(|(d, _)| match d {
            DepRef::Local(j) => Some(*j),
            DepRef::Existing(_) => None,
        })
    };
    let mut indegree = vec![0usize; n];
    let mut dependents = vec![Vec::new(); n];
    for (i, degree) in indegree.iter_mut().enumerate() {
        for j in local_deps(i) {
            *degree += 1;
            dependents[j].push(i);
        }
    }
    let mut free: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(j) = free.pop_front() {
        order.push(j);
        for &i in &dependents[j] {
            indegree[i] -= 1;
            if indegree[i] == 0 {
                free.push_back(i);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every leftover task still depends on a leftover task, so following those edges from any of
    // them must come back to a task already on the path: that stretch is a cycle.
    let leftover = |i: usize| indegree[i] > 0;
    let mut at = (0..n)
        .find(|&i| leftover(i))
        .expect("some task is left over");
    let mut pos_on_path = HashMap::new();
    let mut path = Vec::new();
    while !pos_on_path.contains_key(&at) {
        pos_on_path.insert(at, path.len());
        path.push(at);
        at = local_deps(at)
            .find(|&j| leftover(j))
            .expect("a leftover task depends on a leftover task");
    }
    let mut cycle: Vec<String> = path[pos_on_path[&at]..]
        .iter()
        .map(|&i| tasks[i].id.clone())
        .collect();
    cycle.push(tasks[at].id.clone());
    Err(DagError::Cycle(cycle))
}

/// What finishing a task released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Tasks whose last unmet dependency just succeeded, in the order they were registered
    /// against the finished task.
    pub ready: Vec<String>,
    /// Tasks that can no longer run, with the reason, dependents before their own dependents.
    pub cancelled: Vec<(String, String)>,
}

/// The in-memory unmet-dependency counters of waiting tasks. The server rebuilds it at start by
/// adding every waiting task with its unfinished dependencies, and then tells it about every task
/// that finishes.
#[derive(Debug, Clone, Default)]
pub struct DependencyTracker {
    /// Waiting task → number of dependencies that have not yet succeeded.
    unmet: HashMap<String, u32>,
    /// Dependency → tasks waiting on it. Entries for tasks cancelled meanwhile are skipped when the
    /// dependency finishes, which is cheaper than removing them from every list.
    dependents: HashMap<String, Vec<String>>,
}

impl DependencyTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `task` as waiting on `unfinished` (the dependencies that have not yet finished;
    /// repeats count once). Returns `true` when that list is empty, meaning the task is ready now
    /// and is not tracked. Adding a task that is already tracked changes nothing (so replaying a
    /// rebuild is harmless) and returns `false`.
    pub fn add<S: AsRef<str>>(
        &mut self,
        task: &str,
        unfinished: impl IntoIterator<Item = S>,
    ) -> bool {
        if self.unmet.contains_key(task) {
            return false;
        }
        let mut seen = HashSet::new();
        for dep in unfinished {
            let dep = dep.as_ref();
            if seen.insert(dep.to_string()) {
                self.dependents
                    .entry(dep.to_string())
                    .or_default()
                    .push(task.to_string());
            }
        }
        if seen.is_empty() {
            return true;
        }
        self.unmet.insert(task.to_string(), seen.len() as u32);
        false
    }

    /// Records that `task` ended in `state`. Success decrements its dependents' counters and
    /// returns those that reached zero. Failure, time-out or cancellation cancels every transitive
    /// dependent, each with the reason naming `task` (the root cause, which is what the user
    /// needs to fix). A state that is not terminal changes nothing.
    pub fn finished(&mut self, task: &str, state: TaskState) -> Released {
        let mut out = Released::default();
        if !state.is_terminal() {
            return out;
        }
        // A waiting task can end without running (it was cancelled): it no longer waits.
        self.unmet.remove(task);
        let Some(direct) = self.dependents.remove(task) else {
            return out;
        };
        if state == TaskState::Succeeded {
            for d in direct {
                if let Some(count) = self.unmet.get_mut(&d) {
                    *count -= 1;
                    if *count == 0 {
                        self.unmet.remove(&d);
                        out.ready.push(d);
                    }
                }
            }
            return out;
        }
        let reason = dependency_reason(task, state);
        let mut next: VecDeque<String> = direct.into();
        while let Some(d) = next.pop_front() {
            if self.unmet.remove(&d).is_some() {
                next.extend(self.dependents.remove(&d).unwrap_or_default());
                out.cancelled.push((d, reason.clone()));
            }
        }
        out
    }

    /// The unmet-dependency count of a waiting task.
    pub fn unmet(&self, task: &str) -> Option<u32> {
        self.unmet.get(task).copied()
    }

    /// How many tasks are waiting.
    pub fn waiting(&self) -> usize {
        self.unmet.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, deps: &[&str]) -> DagTask {
        DagTask::new(id, deps.iter().copied())
    }

    fn none(_: &str) -> Option<TaskState> {
        None
    }

    #[test]
    fn a_diamond_is_ordered_and_counted() {
        let tasks = [
            t("test", &["build", "lint"]),
            t("build", &["fetch"]),
            t("lint", &["fetch", "fetch"]),
            t("fetch", &[]),
        ];
        let p = plan(&tasks, none).unwrap();
        assert_eq!(p.order, [3, 1, 2, 0]);
        assert_eq!(p.ready().collect::<Vec<_>>(), [3]);
        let on = |i: usize| match &p.start[i] {
            Start::Waiting { on } => on.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(on(0), [DepRef::Local(1), DepRef::Local(2)]);
        assert_eq!(
            on(2),
            [DepRef::Local(3)],
            "a repeated dependency counts once"
        );
        assert_eq!(plan(&[], none).unwrap().order, Vec::<usize>::new());
    }

    #[test]
    fn existing_dependencies_use_their_state() {
        let states = HashMap::from([
            ("t-ok", TaskState::Succeeded),
            ("t-run", TaskState::Running),
            ("t-bad", TaskState::TimedOut),
        ]);
        let existing = |id: &str| states.get(id).copied();
        let tasks = [
            t("a", &["t-ok"]),
            t("b", &["t-ok", "t-run"]),
            t("c", &["t-bad", "t-run"]),
            t("d", &["c"]),
        ];
        let p = plan(&tasks, existing).unwrap();
        assert_eq!(p.start[0], Start::Ready);
        assert_eq!(
            p.start[1],
            Start::Waiting {
                on: vec![DepRef::Existing("t-run".into())]
            }
        );
        let doomed = Start::Cancelled {
            reason: "dependency t-bad timed out".into(),
        };
        assert_eq!(p.start[2], doomed);
        assert_eq!(p.start[3], doomed, "the root cause is passed down");
    }

    #[test]
    fn bad_graphs_are_refused_with_names() {
        let e = plan(&[t("a", &[]), t("a", &[])], none).unwrap_err();
        assert_eq!(e, DagError::DuplicateId("a".into()));
        let e = plan(&[t("a", &["a"])], none).unwrap_err();
        assert_eq!(e.to_string(), "task 'a' depends on itself");
        let e = plan(&[t("a", &["x"]), t("b", &["a", "y"])], none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task 'a' depends on unknown task 'x'; task 'b' depends on unknown task 'y'"
        );
        let v: ValidationError = e.into();
        assert_eq!(v.field, "depends_on");
    }

    #[test]
    fn a_cycle_is_reported_as_a_path() {
        let tasks = [
            t("ok", &[]),
            t("a", &["ok", "b"]),
            t("b", &["c"]),
            t("c", &["a"]),
            t("d", &["a"]),
        ];
        let e = plan(&tasks, none).unwrap_err();
        assert_eq!(
            e,
            DagError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(e.to_string(), "dependency cycle: a → b → c → a");
        let two = plan(&[t("x", &["y"]), t("y", &["x"])], none).unwrap_err();
        assert_eq!(two.to_string(), "dependency cycle: x → y → x");
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let n = 100_000;
        let tasks: Vec<_> = (0..n)
            .map(|i| DagTask::new(format!("t{i}"), (i > 0).then(|| format!("t{}", i - 1))))
            .collect();
        let p = plan(&tasks, none).unwrap();
        assert_eq!(p.order.len(), n);
        assert_eq!(p.order[n - 1], n - 1);
    }

    #[test]
    fn tracker_releases_a_task_when_its_last_dependency_succeeds() {
        let mut tr = DependencyTracker::new();
        assert!(
            tr.add("fetch", Vec::<&str>::new()),
            "no dependencies: ready now"
        );
        assert!(!tr.add("build", ["fetch"]));
        assert!(!tr.add("test", ["build", "lint", "build"]));
        assert!(!tr.add("test", ["other"]), "adding again changes nothing");
        assert_eq!(tr.unmet("test"), Some(2));
        let r = tr.finished("fetch", TaskState::Succeeded);
        assert_eq!(r.ready, ["build"]);
        assert!(tr.finished("build", TaskState::Running).ready.is_empty());
        assert!(tr.finished("build", TaskState::Succeeded).ready.is_empty());
        assert_eq!(tr.unmet("test"), Some(1));
        assert_eq!(tr.finished("lint", TaskState::Succeeded).ready, ["test"]);
        assert_eq!(tr.waiting(), 0);
    }

    #[test]
    fn tracker_cancels_transitive_dependents_on_failure() {
        let mut tr = DependencyTracker::new();
        tr.add("build", ["fetch"]);
        tr.add("test", ["build"]);
        tr.add("deploy", ["test", "approve"]);
        tr.add("docs", ["fetch2"]);
        let r = tr.finished("fetch", TaskState::Failed);
        let reason = "dependency fetch failed".to_string();
        assert_eq!(
            r.cancelled,
            [
                ("build".into(), reason.clone()),
                ("test".into(), reason.clone()),
                ("deploy".into(), reason)
            ]
        );
        assert!(r.ready.is_empty());
        assert_eq!(tr.waiting(), 1, "unrelated tasks keep waiting");
        // The other dependency of a cancelled task finishing later releases nothing.
        assert_eq!(
            tr.finished("approve", TaskState::Succeeded),
            Released::default()
        );
    }

    #[test]
    fn cancelling_a_waiting_task_cancels_its_dependents() {
        let mut tr = DependencyTracker::new();
        tr.add("b", ["a"]);
        tr.add("c", ["b"]);
        let r = tr.finished("b", TaskState::Cancelled);
        assert_eq!(
            r.cancelled,
            [("c".into(), "dependency b was cancelled".into())]
        );
        assert_eq!(
            tr.finished("a", TaskState::Succeeded).ready,
            Vec::<String>::new()
        );
        assert_eq!(tr.waiting(), 0);
    }
}
