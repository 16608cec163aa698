//! The SQLite implementation (embedded default).
//!
//! SQLite allows one writer at a time, so instead of letting every request fight for the
//! write lock (and spin on `SQLITE_BUSY`), one dedicated thread owns the only writing
//! connection ([`writer`]). Callers send it closures; it runs everything that is queued
//! in one transaction with a savepoint per job (group commit: one WAL commit for many
//! small writes, and a failing job rolls back only itself). Reads go to a small pool of
//! read-only connections on the blocking thread pool ([`readers`]); in WAL mode they never
//! wait for the writer.
//!
//! The trait implementations are split by area: [`accounts`] (workspaces, users, API
//! keys, channels), [`catalog`] (tags and field definitions), [`contacts`] (the contact
//! base), [`filter`] (SQL for contact filters), [`import`] (bulk upsert), [`idempotency`],
//! [`messaging`] (the inbound event log and the outbox), [`flows`] (flows, their runs,
//! signals and counters), [`broadcasts`] (broadcasts, their recipients and counters) and
//! [`admin`] (migrations, ping, the erasure audit).

mod accounts;
mod admin;
mod broadcasts;
mod catalog;
mod contacts;
mod filter;
mod flows;
mod idempotency;
mod import;
mod messaging;
mod readers;
mod rows;
mod schema;
mod segments;
mod writer;

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::path::Path;

/// Read connections: enough for the two cores plus requests waiting on I/O, few enough
/// that their page caches stay small.
const READERS: usize = 4;

/// Page cache of the writing connection, in KiB. Imports touch several indexes at once;
/// 24 MiB keeps their hot pages in memory while an idle server stays well under 100 MB.
const WRITER_CACHE_KIB: i64 = 24 * 1024;

/// Page cache of the checkpoint connection, in KiB.
const CHECKPOINT_CACHE_KIB: i64 = 1024;

/// Page cache of each read connection, in KiB. Large scans stream through the OS page
/// cache anyway; a small cache per reader bounds memory at `READERS` × this.
const READER_CACHE_KIB: i64 = 8 * 1024;

/// Storage on one SQLite file.
pub struct SqliteStore {
    writer: writer::Writer,
    readers: readers::ReadPool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        // Opening runs file I/O (and WAL recovery after a crash): keep it off the runtime.
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Database(format!("opening the database failed: {e}")))?
    }

    fn open_blocking(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        // WAL first: readers then never block on the writer and commits append instead of
        // rewriting pages. NORMAL is durable across application crashes; a power loss can
        // lose the last commits but never corrupts the file.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "cannot switch {} to WAL (got {mode})",
                path.display()
            )));
        }
        configure(&conn, WRITER_CACHE_KIB)?;
        // The checkpoint thread copies the WAL back (see `writer`); the writer checkpoints
        // itself only if the WAL outgrows 256 MiB (the checkpoint thread lagging behind).
        // A large import can inflate the WAL; cut it back afterwards.
        conn.pragma_update(None, "wal_autocheckpoint", 65536)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let ckpt = Connection::open(path)?;
        // A checkpoint copies frames through its own buffer, not the page cache.
        configure(&ckpt, CHECKPOINT_CACHE_KIB)?;
        ckpt.pragma_update(None, "wal_autocheckpoint", 0)?;
        let writer = writer::Writer::start(conn, ckpt)?;
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let c = Connection::open(path)?;
            configure(&c, READER_CACHE_KIB)?;
            // A read connection that tried to write would take the write lock behind the
            // writer thread's back.
            c.pragma_update(None, "query_only", true)?;
            conns.push(c);
        }
        Ok(SqliteStore {
            writer,
            readers: readers::ReadPool::new(conns),
        })
    }

    /// SQLite's query plan for counting `filter` (one line per step), to check that
    /// counts are driven by an index (used by the benchmark example).
    pub async fn count_plan(
        &self,
        ws: voronka_core::WorkspaceId,
        filter: &voronka_core::filter::ContactFilter,
    ) -> Result<Vec<String>> {
        let filter = filter.clone();
        self.read(move |c| filter::explain_count(c, ws, &filter))
            .await
    }

    /// Runs `f` on the writer thread, inside the current group transaction. An `Err`
    /// rolls back everything `f` wrote.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.writer.run(f).await
    }

    /// Runs `f` on the writer thread in a transaction of its own with foreign key
    /// checks off; see `writer::Writer::run_unchecked`.
    pub(crate) async fn write_unchecked<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.writer.run_unchecked(f).await
    }

    /// Runs `f` on a read connection from the pool, on the blocking thread pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.readers.run(f).await
    }
}

/// Settings every connection needs.
fn configure(conn: &Connection, cache_kib: i64) -> Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Off by default in SQLite; the schema relies on cascades.
    conn.pragma_update(None, "foreign_keys", true)?;
    // Another process (the CLI next to a running server) may hold the lock briefly.
    conn.busy_timeout(std::time::Duration::from_millis(5000))?;
    // Negative = KiB rather than pages.
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Statements are re-used by SQL text; the import alone keeps ~20 alive, a flow
    // commit ~25 more, and a statement evicted by a burst of others is parsed again.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}
