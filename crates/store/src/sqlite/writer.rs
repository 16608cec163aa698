//! The single writer thread and its group commit.
//!
//! Every write of the store is a closure sent here with a oneshot channel for its answer.
//! The thread takes everything queued (up to [`MAX_GROUP`] jobs), opens one `BEGIN
//! IMMEDIATE` transaction, runs each job inside its own `SAVEPOINT` (released on success,
//! rolled back on error, so one failing job never undoes its neighbours), commits once,
//! and only then answers the callers: nobody is told "done" before the data is durable
//! and visible to the read connections.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most jobs committed together; bounds the latency a long queue adds to the first job.
const MAX_GROUP: usize = 256;

/// A queued write: run it on the connection, or fail it without running.
trait Job: Send {
    /// Runs the job; returns the pending answer (sent after the commit).
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Answer>;
    /// Answers with an error without running (the transaction could not start).
    fn fail(self: Box<Self>, error: String);
    /// Runs alone, with foreign key checks off (see [`Writer::run_unchecked`]).
    fn unchecked(&self) -> bool;
}

/// The result of a job that ran, held until the group commits.
trait Answer: Send {
    /// Whether the job succeeded (its savepoint is kept).
    fn ok(&self) -> bool;
    /// Sends the result, or `commit_error` instead of a success if the commit failed.
    fn send(self: Box<Self>, commit_error: Option<&str>);
}

struct Call<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T>>,
    unchecked: bool,
}

struct Reply<T> {
    result: Result<T>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Job for Call<F, T>
where
    F: FnOnce(&Connection) -> Result<T> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Answer> {
        let Call { f, reply, .. } = *self;
        // A panicking job must not take the writer thread (and so every later write)
        // down with it; its savepoint is rolled back like any failure.
        let result = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(StoreError::Database("a write panicked".into())));
        Box::new(Reply { result, reply })
    }

    fn fail(self: Box<Self>, error: String) {
        let _ = self.reply.send(Err(StoreError::Database(error)));
    }

    fn unchecked(&self) -> bool {
        self.unchecked
    }
}

impl<T: Send> Answer for Reply<T> {
    fn ok(&self) -> bool {
        self.result.is_ok()
    }

    fn send(self: Box<Self>, commit_error: Option<&str>) {
        let result = match (commit_error, self.result) {
            (Some(e), Ok(_)) => Err(StoreError::Database(format!("commit failed: {e}"))),
            (_, r) => r,
        };
        // The caller may have gone away (request cancelled); the write stands regardless.
        let _ = self.reply.send(result);
    }
}

/// Handle to the writer thread. Dropping it closes the queue; the thread finishes what
/// is queued and closes the connection.
pub(crate) struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the thread that owns `conn`, and the checkpoint thread that owns `ckpt`
    /// (a second connection to the same file).
    pub(crate) fn start(conn: Connection, ckpt: Connection) -> Result<Self> {
        let (queue, jobs) = mpsc::channel::<Box<dyn Job>>();
        let (committed, commits) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(ckpt, commits))
            .map_err(|e| {
                StoreError::Database(format!("cannot start the checkpoint thread: {e}"))
            })?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, jobs, committed))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { queue })
    }

    /// Queues `f` and waits for its committed result.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.queue_call(f, false).await
    }

    /// Like [`Writer::run`], but `f` runs in a transaction of its own with foreign key
    /// checks off. Only for bulk writes that resolve every reference themselves (the
    /// import checks channels, fields and tags in the workspace and inserts the parent
    /// contacts it links to): the checks are a fifth of an import's time.
    pub(crate) async fn run_unchecked<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.queue_call(f, true).await
    }

    async fn queue_call<T, F>(&self, f: F, unchecked: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Call {
                f,
                reply,
                unchecked,
            }))
            .map_err(|_| StoreError::Database("the writer thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the writer thread dropped the request".into()))?
    }
}

/// Least time between two background checkpoints: a page rewritten by several commits
/// (index right edges, hot tag and value ranges) is copied back once, not once per
/// commit, and the database file is fsynced at most twice a second.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(500);

/// Copies the WAL back into the database file on its own thread (the other core), so
/// the writer thread spends no time on it nor on its fsyncs: that was a fifth of a large
/// import. A PASSIVE checkpoint never blocks the writer or the readers; the writer's own
/// automatic checkpoint stays on at a higher mark as a safety net. Ends when the writer
/// thread ends (its sender dropped); closing the last connection checkpoints anyway.
fn checkpoint_loop(conn: Connection, commits: mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        // Let commits accumulate; those arriving meanwhile are covered by this checkpoint.
        let until = Instant::now() + CHECKPOINT_PAUSE;
        loop {
            match commits.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(()) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        // One row: (busy, frames in the WAL, frames copied).
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
    }
}

fn writer_loop(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>, committed: mpsc::Sender<()>) {
    while let Ok(first) = jobs.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if job.unchecked() {
                run_unchecked(&conn, job);
                let _ = committed.send(());
                continue;
            }
            let mut group = vec![job];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    // Runs after this group, on its own.
                    Ok(j) if j.unchecked() => {
                        next = Some(j);
                        break;
                    }
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
            run_group(&conn, group);
            // The checkpoint thread may have stopped (it only logs); writes go on.
            let _ = committed.send(());
        }
    }
}

/// Runs one job with foreign key checks off. The pragma is a no-op inside a
/// transaction, hence the job's own group; it is switched back on whatever happens.
fn run_unchecked(conn: &Connection, job: Box<dyn Job>) {
    if let Err(e) = conn.execute_batch("PRAGMA foreign_keys = OFF") {
        job.fail(e.to_string());
        return;
    }
    run_group(conn, vec![job]);
    if let Err(e) = conn.execute_batch("PRAGMA foreign_keys = ON") {
        tracing::error!(error = %e, "cannot switch foreign keys back on");
    }
}

fn run_group(conn: &Connection, group: Vec<Box<dyn Job>>) {
    // IMMEDIATE takes the write lock now, so a job never fails half-way on a lock
    // upgrade when another process writes to the same file.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = e.to_string();
        for j in group {
            j.fail(msg.clone());
        }
        return;
    }
    if group.len() == 1 {
        // Alone in its transaction, a job needs no savepoint: ROLLBACK undoes it. This
        // spares large jobs (import batches) the savepoint's copy of every page it touches.
        for job in group {
            let answer = job.run(conn);
            let end = if answer.ok() {
                conn.execute_batch("COMMIT").map_err(|e| e.to_string())
            } else {
                conn.execute_batch("ROLLBACK").map_err(|e| e.to_string())
            };
            if end.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            // A failed ROLLBACK after a failed job still leaves the job failed: report
            // only commit errors.
            let err = if answer.ok() { end.err() } else { None };
            answer.send(err.as_deref());
        }
        return;
    }
    let mut answers = Vec::with_capacity(group.len());
    for job in group {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            job.fail(e.to_string());
            continue;
        }
        let answer = job.run(conn);
        let end = if answer.ok() {
            conn.execute_batch("RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        match end {
            Ok(()) => answers.push(answer),
            Err(e) => {
                // The transaction is in an unknown state: abandon the whole group.
                let msg = e.to_string();
                let _ = conn.execute_batch("ROLLBACK");
                answer.send(Some(&msg));
                for a in answers {
                    a.send(Some(&msg));
                }
                return;
            }
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if commit.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let err = commit.err();
    for a in answers {
        a.send(err.as_deref());
    }
}
