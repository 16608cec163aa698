//! Embedded migrations and the `schema_migrations` bookkeeping.
//!
//! The SQL files are compiled into the binary so a single executable can create and
//! upgrade its database with no files beside it.

use super::rows::{now, us};
use crate::Result;
use rusqlite::{Connection, OptionalExtension};

/// One migration: version, name, SQL.
pub(crate) struct Migration {
    /// Applied in increasing order; recorded in `schema_migrations`.
    pub version: i64,
    /// The file name's text part (`foundation`).
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, in order (`migrations/sqlite/NNNN_name.sql`).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "messaging",
        sql: include_str!("../../migrations/sqlite/0002_messaging.sql"),
    },
    Migration {
        version: 3,
        name: "flows",
        sql: include_str!("../../migrations/sqlite/0003_flows.sql"),
    },
    Migration {
        version: 4,
        name: "broadcasts",
        sql: include_str!("../../migrations/sqlite/0004_broadcasts.sql"),
    },
];

/// Applies the pending migrations on `conn` (the writer: the caller's savepoint makes
/// each run all-or-nothing); returns how many ran.
pub(crate) fn migrate(conn: &Connection) -> Result<usize> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     INTEGER PRIMARY KEY,
             name        TEXT    NOT NULL,
             applied_at  INTEGER NOT NULL
         )",
    )?;
    let mut ran = 0;
    for m in MIGRATIONS {
        let done = conn
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [m.version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if done {
            continue;
        }
        // A nested savepoint per file: a broken file leaves the earlier ones recorded
        // only if the whole call succeeds, which keeps "applied" and "recorded" in step.
        conn.execute_batch("SAVEPOINT migration")?;
        let applied = conn.execute_batch(m.sql).and_then(|()| {
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![m.version, m.name, us(now())],
            )
        });
        match applied {
            Ok(_) => conn.execute_batch("RELEASE migration")?,
            Err(e) => {
                conn.execute_batch("ROLLBACK TO migration; RELEASE migration")?;
                return Err(crate::StoreError::Database(format!(
                    "migration {:04}_{} failed: {e}",
                    m.version, m.name
                )));
            }
        }
        ran += 1;
    }
    Ok(ran)
}
