//! The PostgreSQL implementation (scale-out).
//!
//! This module owns the connection pool, the embedded migrations and the small helpers
//! every other module shares (time conversion, error mapping). The storage traits are
//! implemented area by area in the sibling modules so each file reads on its own:
//! `accounts` (workspaces, users, API keys, channels), `schema` (tags and field
//! definitions), `contacts` (one contact at a time), `filter` (ContactFilter → SQL),
//! `import` (set-based batch upsert), `idempotency`, `messaging` (the inbound event log
//! and the outbox), `flows` (flows, their runs, signals and counters), `broadcasts`
//! (broadcasts, their recipients and counters), and `rows` (row → record decoding).
//!
//! All queries are runtime-checked (`sqlx::query` + `Row::get`), so the crate builds
//! offline without a database.

mod accounts;
mod broadcasts;
mod contacts;
mod filter;
mod flows;
mod idempotency;
mod import;
mod messaging;
mod rows;
mod schema;
mod segments;
#[cfg(test)]
mod tests;

use crate::{AdminStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use std::str::FromStr;

/// Connections per pool: enough for a server's concurrent requests without crowding a
/// small PostgreSQL (each connection is a backend process).
const POOL_SIZE: u32 = 8;

/// The embedded migrations, in the order they apply. Versions are the file-name numbers.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "foundation",
        include_str!("../../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        "count_tuning",
        include_str!("../../migrations/postgres/0002_count_tuning.sql"),
    ),
    (
        3,
        "messaging",
        include_str!("../../migrations/postgres/0003_messaging.sql"),
    ),
    (
        4,
        "flows",
        include_str!("../../migrations/postgres/0004_flows.sql"),
    ),
    (
        5,
        "broadcasts",
        include_str!("../../migrations/postgres/0005_broadcasts.sql"),
    ),
];

/// Storage on a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password, so only say what this is.
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = parse_url(url)?;
        Self::with_options(opts).await
    }

    /// Connects to `url` with every query in `schema` (created if missing): how tests get
    /// a fresh database cheaply.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            // The name is spliced into DDL and the search_path option, so only plain
            // identifiers are accepted.
            return Err(StoreError::Database(format!(
                "`{schema}` is not a plain schema name"
            )));
        }
        let opts = parse_url(url)?;
        // A one-off connection, so the pool's connections all start with the schema in
        // place (search_path to a missing schema silently falls back to nothing).
        let mut conn = sqlx::PgConnection::connect_with(&opts).await?;
        sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut conn)
            .await
            .or_else(|e| {
                if is_unique_violation(&e) {
                    Ok(Default::default())
                } else {
                    Err(e)
                }
            })?;
        conn.close().await?;
        Self::with_options(opts.options([("search_path", schema)])).await
    }

    async fn with_options(opts: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    /// The underlying pool (for tools and benchmarks that need raw SQL).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))
}

/// Now, in the stored representation (Unix microseconds).
pub(crate) fn now_us() -> i64 {
    Timestamp::now().as_microsecond()
}

/// A stored time back as a timestamp. Values come from `now_us` or validated input, so
/// an out-of-range value means a corrupted row; it reads as the epoch rather than failing
/// the whole read.
pub(crate) fn ts(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// An optional stored time.
pub(crate) fn ts_opt(us: Option<i64>) -> Option<Timestamp> {
    us.map(ts)
}

/// True when `e` is a unique-constraint violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// True when `e` is a foreign-key violation (SQLSTATE 23503).
pub(crate) fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}

/// Decodes a stored enum name, reporting a corrupted value as a database error.
pub(crate) fn parse_stored<T: FromStr>(what: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| StoreError::Database(format!("stored {what} `{v}` is not recognised")))
}

#[async_trait]
impl AdminStore for PgStore {
    async fn migrate(&self) -> Result<usize> {
        let mut ran = 0;
        for (version, name, sql) in MIGRATIONS {
            // One transaction per migration: a failing file leaves nothing half-applied,
            // and the advisory lock (per schema, released at commit) makes concurrent
            // migrators queue instead of racing on DDL.
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext('voronka_migrate:' || current_schema()))",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await?;
            let done: bool =
                sqlx::query("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)")
                    .bind(version)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            if done {
                tx.rollback().await?;
                continue;
            }
            // A &str without arguments goes over the simple-query protocol, which runs a
            // file of several statements.
            sqlx::Executor::execute(&mut *tx, *sql).await.map_err(|e| {
                StoreError::Database(format!("migration {version:04}_{name} failed: {e}"))
            })?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            ran += 1;
        }
        Ok(ran)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn find_text_everywhere(&self, needle: &str) -> Result<Vec<String>> {
        // Only the current schema: tests share one database, one schema each.
        let cols = sqlx::query(
            "SELECT table_name::text, column_name::text, data_type::text
             FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea')
             ORDER BY table_name, ordinal_position",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut found = Vec::new();
        for c in cols {
            let table: String = c.try_get(0)?;
            let column: String = c.try_get(1)?;
            let ty: String = c.try_get(2)?;
            // Identifiers come from the catalog; quoting keeps odd names safe.
            let t = quote_ident(&table);
            let col = quote_ident(&column);
            let q = if ty == "bytea" {
                format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE position($1::bytea IN {col}) > 0)")
            } else {
                format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE strpos({col}::text, $2) > 0)")
            };
            let hit: bool = sqlx::query(&q)
                .bind(needle.as_bytes())
                .bind(needle)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            if hit {
                found.push(format!("{table}.{column}"));
            }
        }
        Ok(found)
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
