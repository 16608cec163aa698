//! Idempotency keys for `POST` requests: a reservation row per (workspace, key) that
//! either holds a saved response or marks a request in flight.

use super::{now_us, PgStore};
use crate::model::*;
use crate::{IdempotencyStore, Result};
use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::Row;
use voronka_core::*;

/// A reservation older than this without a response is taken to be from a crashed
/// request and may be taken over.
const STALE_US: i64 = 60 * 1_000_000;

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn idempotency_begin(
        &self,
        ws: WorkspaceId,
        key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyBegin> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        // Insert-or-nothing first: two racing requests cannot both see "no row".
        let inserted = sqlx::query(
            "INSERT INTO idempotency (workspace_id, key, request_hash, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_id, key) DO NOTHING",
        )
        .bind(ws.0)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(IdempotencyBegin::Started);
        }
        let r = sqlx::query(
            "SELECT request_hash, status, body, created_at FROM idempotency WHERE workspace_id = $1 AND key = $2 FOR UPDATE",
        )
        .bind(ws.0)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let hash: String = r.try_get(0)?;
        let status: Option<i32> = r.try_get(1)?;
        let body: Option<Vec<u8>> = r.try_get(2)?;
        let created_at: i64 = r.try_get(3)?;
        let out = if hash != request_hash {
            IdempotencyBegin::Mismatch
        } else if let Some(status) = status {
            IdempotencyBegin::Replay(SavedResponse {
                status: u16::try_from(status).unwrap_or(500),
                body: body.unwrap_or_default(),
            })
        } else if created_at < now - STALE_US {
            sqlx::query(
                "UPDATE idempotency SET created_at = $3 WHERE workspace_id = $1 AND key = $2",
            )
            .bind(ws.0)
            .bind(key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            IdempotencyBegin::Started
        } else {
            IdempotencyBegin::InProgress
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn idempotency_complete(
        &self,
        ws: WorkspaceId,
        key: &str,
        response: SavedResponse,
        contact: Option<ContactId>,
    ) -> Result<()> {
        sqlx::query("UPDATE idempotency SET status = $3, body = $4, contact_id = $5 WHERE workspace_id = $1 AND key = $2")
            .bind(ws.0)
            .bind(key)
            .bind(i32::from(response.status))
            .bind(&response.body)
            .bind(contact.map(|c| c.0))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn idempotency_abort(&self, ws: WorkspaceId, key: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE workspace_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(ws.0)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn idempotency_purge(&self, before: Timestamp) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM idempotency WHERE created_at < $1")
            .bind(before.as_microsecond())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
