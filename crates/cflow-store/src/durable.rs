//! The writer's commits made durable off its path, with every answer held until they are.
//!
//! A durable `COMMIT` waits for the log to be flushed to disk (about half a millisecond here,
//! several on a busy disk), and the writer, the one thread every change goes through, sat idle
//! for it before it could start the next batch: a seventh of its time under
//! `cflow bench tasks` on SQLite, a third of a batch's time at 1,000 tasks/s on PostgreSQL.
//! Instead the writer's own connection commits without waiting for the flush (SQLite
//! `synchronous=NORMAL` in WAL mode, see `db::open_lite`; PostgreSQL `synchronous_commit=off`
//! for that session only) and hands the batch's answers to the [`Syncer`], a thread that makes
//! the log durable and only then sends them. While it flushes, the writer runs the next batch;
//! the next flush covers every batch committed in the meantime (group commit, with no waiting).
//! - SQLite: the syncer `fdatasync`s the WAL file, whose frames the commit wrote.
//! - PostgreSQL: the syncer runs a barrier on a connection of its own, a transaction that
//!   takes a transaction id and commits with `synchronous_commit=on`, so that its `COMMIT`
//!   returns only when the log is flushed past its own commit record, which comes after every
//!   commit before it. A flush proves nothing about a commit made before the server restarted
//!   (crash recovery may have dropped it), so each batch is tagged with the syncer's connection
//!   *generation* read before its `COMMIT`; only a barrier that ran on that same connection
//!   (alive from before the commit to after the flush, so the server did not restart in between)
//!   acknowledges it. Any other outcome answers with an error that says the write may or may not
//!   have committed, as a connection lost during `COMMIT` does.
//!
//! What stays true: no caller hears `Ok` (a 202, an assignment handed to a worker, an event)
//! before its change is on disk, exactly as with a flush at every commit. A crash of cflow loses
//! nothing either way; a crash of the machine (or of PostgreSQL) can lose only batches whose
//! flush had not finished, and nobody was told about those. What changes: another connection
//! (the read pool, another node) can see a committed batch up to one flush before it is durable.
//!
//! SQLite: a failed flush is not retried: after an `fsync` error the kernel may have dropped the
//! dirty pages it could not write, and a later `fsync` can succeed without them. The syncer
//! answers the waiting callers and every later one with an error that says to restart the server
//! (whose recovery reads back only what is on disk), never acknowledges anything again, and
//! `Store::ping` (so `/readyz`) fails with the same advice.
//! (PostgreSQL handles its own flush failures: it stops and recovers.)

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::writer::Output;
use crate::{Error, Result};

/// An answer waiting for the flush that makes its change durable.
pub(crate) type Answer = (oneshot::Sender<Result<Output>>, Result<Output>);

/// How the syncer makes the log durable; returns the generation of the connection that did it
/// (always 0 for a file). A test double can hold it back or fail it.
pub(crate) type SyncFn = Box<dyn FnMut() -> std::io::Result<u64> + Send>;

/// What a failed flush means for later ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Never acknowledge anything again (an `fsync` error on a file).
    Stop,
    /// Fail what was waiting; later batches get later flushes (a lost connection).
    Continue,
}

#[derive(Default)]
struct State {
    /// Batches of answers with the generation read before their commit, in commit order.
    queued: VecDeque<(u64, Vec<Answer>)>,
    stop: bool,
    /// The thread has ended (stopped, or panicked): answers handed now are dropped, which their
    /// callers see as the store closing.
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Set when a failed flush stopped acknowledgements for good ([`OnFailure::Stop`]); the
    /// store's readiness reports it.
    lost: Arc<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The flushing thread and its queue.
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The generation of the connection the next flush will use (see the module's doc).
    generation: Arc<AtomicU64>,
}

impl Syncer {
    /// A syncer that flushes the WAL file at `wal` (opened anew for each flush, so that a WAL
    /// SQLite deleted and created again is the one flushed).
    /// `lost` is set if a flush fails.
    pub(crate) fn for_wal(wal: PathBuf, lost: Arc<AtomicBool>) -> Result<Self> {
        Self::start(
            Box::new(move || {
                std::fs::File::open(&wal).and_then(|f| f.sync_data())?;
                Ok(0)
            }),
            Arc::new(AtomicU64::new(0)),
            OnFailure::Stop,
            lost,
        )
    }

    /// A syncer whose barrier runs on a PostgreSQL connection of its own, connected before
    /// this returns (so that the first batches can be acknowledged).
    pub(crate) async fn for_postgres(url: String) -> Result<Self> {
        let generation = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = oneshot::channel();
        let mut barrier = PgBarrier {
            url: named(&url),
            conn: None,
            generation: generation.clone(),
            runtime: None,
        };
        let mut ready_tx = Some(ready_tx);
        let syncer = Self::start(
            Box::new(move || {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(barrier.connect());
                    return Ok(barrier.generation.load(Ordering::Acquire));
                }
                barrier.flush()
            }),
            generation,
            OnFailure::Continue,
            Arc::new(AtomicBool::new(false)),
        )?;
        // The first call of the flush function connects (see above).
        syncer.shared.lock().queued.push_back((0, Vec::new()));
        syncer.shared.wake.notify_one();
        match ready.await {
            Ok(Ok(())) => Ok(syncer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    fn start(
        sync: SyncFn,
        generation: Arc<AtomicU64>,
        on_failure: OnFailure,
        lost: Arc<AtomicBool>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            lost,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cflow-log-sync".into())
            .spawn(move || run(&s, sync, on_failure))
            .map_err(|e| Error::Config(format!("cannot start the log sync thread: {e}")))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
            generation,
        })
    }

    /// The tag for a batch about to commit: read it before sending the `COMMIT`.
    pub(crate) fn tag(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sends `answers` once everything committed so far is durable; `tag` is [`Syncer::tag`]
    /// as read before the earliest of their commits.
    pub(crate) fn hand(&self, tag: u64, answers: Vec<Answer>) {
        if answers.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        if st.gone {
            return;
        }
        st.queued.push_back((tag, answers));
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Flushes and answers what is queued, then ends the thread.
    pub(crate) fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Marks the syncer gone when its thread ends, however it ends.
struct Gone<'a>(&'a Shared);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.gone = true;
        // Dropped unanswered: their callers see the store closing.
        st.queued.clear();
    }
}

fn run(shared: &Shared, mut sync: SyncFn, on_failure: OnFailure) {
    let _gone = Gone(shared);
    let mut stopped: Option<String> = None;
    loop {
        let batches: Vec<(u64, Vec<Answer>)> = {
            let mut st = shared.lock();
            while st.queued.is_empty() && !st.stop {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.queued.is_empty() {
                return;
            }
            st.queued.drain(..).collect()
        };
        // Everything in `batches` was committed before it was queued, so one flush now covers
        // all of it.
        let flushed = match &stopped {
            Some(e) => Err(e.clone()),
            None => sync().map_err(|e| e.to_string()),
        };
        if let Err(e) = &flushed
            && stopped.is_none()
        {
            match on_failure {
                OnFailure::Stop => {
                    tracing::error!(
                        error = %e,
                        "cannot make the database's writes durable (fsync of the WAL failed); \
                         nothing more will be acknowledged until cflow is restarted"
                    );
                    stopped = Some(e.clone());
                    shared.lost.store(true, Ordering::Release);
                }
                OnFailure::Continue => tracing::warn!(
                    error = %e,
                    "cannot confirm that the last writes are durable; their callers get an error"
                ),
            }
        }
        for (tag, answers) in batches {
            for (reply, result) in answers {
                let result = match &flushed {
                    // An error is the op's own answer, durable or not.
                    _ if result.is_err() => result,
                    Ok(generation) if *generation == tag => result,
                    Ok(_) => Err(unconfirmed(
                        "the database connection that confirms durability was replaced \
                         after this write committed",
                    )),
                    Err(e) if on_failure == OnFailure::Stop => Err(not_durable(e)),
                    Err(e) => Err(unconfirmed(e)),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// The name the barrier's connection shows in `pg_stat_activity`.
pub const PG_SYNC_APPLICATION: &str = "cflow-log-sync";

/// `url` with [`PG_SYNC_APPLICATION`] as its application name.
fn named(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={PG_SYNC_APPLICATION}")
}

/// PostgreSQL: the barrier transaction and the connection it runs on.
struct PgBarrier {
    url: String,
    conn: Option<sqlx::AnyConnection>,
    generation: Arc<AtomicU64>,
    /// Built on the syncer's thread (a runtime may not be dropped inside another one).
    runtime: Option<tokio::runtime::Runtime>,
}

impl PgBarrier {
    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime> {
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Config(format!("cannot start the sync runtime: {e}")))?,
            );
        }
        self.runtime.as_ref().ok_or(Error::Closed)
    }

    /// Opens the connection (with `synchronous_commit=on`, see `db::connect`) as the next
    /// generation.
    fn connect(&mut self) -> Result<()> {
        let url = self.url.clone();
        let conn = self
            .runtime()?
            .block_on(crate::db::connect(&url, crate::Backend::Postgres))?;
        self.conn = Some(conn);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Runs the barrier; returns the generation it ran on. A failed barrier drops the
    /// connection; the next flush opens a new one (a new generation, so that batches committed
    /// before it are not acknowledged by it).
    fn flush(&mut self) -> std::io::Result<u64> {
        if self.conn.is_none() {
            self.connect().map_err(std::io::Error::other)?;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(conn) = self.conn.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        // `txid_current()` gives the transaction an id, so its `COMMIT` writes a commit record
        // and waits for the log to be flushed past it.
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(std::io::Error::other("no runtime"));
        };
        let done = runtime.block_on(sqlx::Executor::execute(
            &mut *conn,
            sqlx::raw_sql("BEGIN; SELECT txid_current(); COMMIT"),
        ));
        match done {
            Ok(_) => Ok(generation),
            Err(e) => {
                self.conn = None;
                Err(std::io::Error::other(e))
            }
        }
    }
}

fn unconfirmed(cause: &str) -> Error {
    Error::Database(sqlx::Error::Io(std::io::Error::other(format!(
        "this write committed but could not be confirmed durable ({cause}); it may or may not \
         be in the database: read it back before retrying"
    ))))
}

fn not_durable(cause: &str) -> Error {
    Error::Database(sqlx::Error::Io(std::io::Error::other(format!(
        "the database's writes could not be made durable (fsync of the WAL failed: {cause}); \
         this write may or may not be on disk: restart cflow, which recovers from what is on \
         disk, and check the disk"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn file_syncer(sync: SyncFn) -> Syncer {
        file_syncer_with(sync, Arc::new(AtomicBool::new(false)))
    }

    fn file_syncer_with(sync: SyncFn, lost: Arc<AtomicBool>) -> Syncer {
        Syncer::start(sync, Arc::new(AtomicU64::new(0)), OnFailure::Stop, lost).unwrap()
    }

    fn answer(n: u64) -> (Answer, oneshot::Receiver<Result<Output>>) {
        let (tx, rx) = oneshot::channel();
        ((tx, Ok(Output::Count(n))), rx)
    }

    fn count(rx: &mut oneshot::Receiver<Result<Output>>) -> Option<Result<u64>> {
        match rx.try_recv() {
            Ok(Ok(Output::Count(n))) => Some(Ok(n)),
            Ok(Ok(other)) => panic!("unexpected answer {other:?}"),
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Waits (briefly) for an answer that must come.
    fn wait(rx: &mut oneshot::Receiver<Result<Output>>) -> Result<u64> {
        for _ in 0..500 {
            if let Some(r) = count(rx) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no answer");
    }

    #[test]
    fn answers_wait_for_the_flush_that_follows_their_commit() {
        // Each flush waits for the test's go-ahead and reports that it started.
        let (started_tx, started) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let syncer = file_syncer(Box::new(move || {
            let _ = started_tx.send(());
            go_rx.recv().map_err(std::io::Error::other)?;
            Ok(0)
        }));
        let (a1, mut r1) = answer(1);
        syncer.hand(0, vec![a1]);
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // Handed while the first flush runs: it must wait for a flush of its own.
        let (a2, mut r2) = answer(2);
        let (a3, mut r3) = answer(3);
        syncer.hand(0, vec![a2, a3]);
        std::thread::sleep(Duration::from_millis(20));
        assert!(count(&mut r1).is_none(), "answered before its flush ended");
        go.send(()).unwrap();
        assert_eq!(wait(&mut r1).unwrap(), 1);
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(count(&mut r2).is_none(), "answered on an earlier flush");
        go.send(()).unwrap();
        assert_eq!(wait(&mut r2).unwrap(), 2);
        assert_eq!(wait(&mut r3).unwrap(), 3);
        drop(go);
        syncer.stop();
    }

    #[test]
    fn a_failed_flush_fails_its_answers_and_every_later_one() {
        let flushes = Arc::new(Mutex::new(0u32));
        let f = flushes.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let syncer = file_syncer_with(
            Box::new(move || {
                let mut n = f.lock().unwrap();
                *n += 1;
                if *n == 2 {
                    Err(std::io::Error::other("injected EIO"))
                } else {
                    Ok(0)
                }
            }),
            lost.clone(),
        );
        let (a, mut r) = answer(1);
        syncer.hand(0, vec![a]);
        assert_eq!(wait(&mut r).unwrap(), 1);
        assert!(!lost.load(Ordering::Acquire));
        let (a, mut r) = answer(2);
        syncer.hand(0, vec![a]);
        let e = wait(&mut r).unwrap_err().to_string();
        assert!(
            e.contains("injected EIO") && e.contains("restart cflow"),
            "{e}"
        );
        assert!(
            lost.load(Ordering::Acquire),
            "readiness would not see the failure"
        );
        // A later flush would succeed, but nothing is acknowledged any more.
        let (a, mut r) = answer(3);
        syncer.hand(0, vec![a]);
        assert!(wait(&mut r).is_err());
        assert_eq!(*flushes.lock().unwrap(), 2, "flushed again after a failure");
        syncer.stop();
    }

    #[test]
    fn only_a_flush_on_the_connection_alive_at_commit_acknowledges() {
        // The flush runs on connection generation 2; batches committed under generation 1
        // (before a reconnect) cannot be confirmed by it.
        let syncer = Syncer::start(
            Box::new(|| Ok(2)),
            Arc::new(AtomicU64::new(2)),
            OnFailure::Continue,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        assert_eq!(syncer.tag(), 2);
        let (old, mut r_old) = answer(1);
        syncer.hand(1, vec![old]);
        let e = wait(&mut r_old).unwrap_err().to_string();
        assert!(e.contains("may or may not"), "{e}");
        let (new, mut r_new) = answer(2);
        syncer.hand(2, vec![new]);
        assert_eq!(wait(&mut r_new).unwrap(), 2);
        // An op's own error is its answer whatever the flush did.
        let (tx, mut rx) = oneshot::channel();
        syncer.hand(1, vec![(tx, Err(Error::NotFound("task x".into())))]);
        for _ in 0..500 {
            if let Ok(r) = rx.try_recv() {
                assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
                syncer.stop();
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no answer");
    }

    #[test]
    fn stopping_flushes_and_answers_what_is_queued() {
        let syncer = file_syncer(Box::new(|| {
            std::thread::sleep(Duration::from_millis(30));
            Ok(0)
        }));
        let (a1, mut r1) = answer(1);
        let (a2, mut r2) = answer(2);
        syncer.hand(0, vec![a1]);
        syncer.hand(0, vec![a2]);
        syncer.stop();
        assert_eq!(count(&mut r1).unwrap().unwrap(), 1);
        assert_eq!(count(&mut r2).unwrap().unwrap(), 2);
    }

    #[test]
    fn the_wal_file_is_flushed_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("x.db-wal");
        let syncer = Syncer::for_wal(wal.clone(), Arc::new(AtomicBool::new(false))).unwrap();
        // No WAL file: the flush fails, so the answer is an error, never a silent `Ok`.
        let (a, mut r) = answer(1);
        syncer.hand(0, vec![a]);
        assert!(wait(&mut r).is_err());
        syncer.stop();
        std::fs::write(&wal, b"frames").unwrap();
        let syncer = Syncer::for_wal(wal, Arc::new(AtomicBool::new(false))).unwrap();
        let (a, mut r) = answer(2);
        syncer.hand(0, vec![a]);
        assert_eq!(wait(&mut r).unwrap(), 2);
        syncer.stop();
    }
}
