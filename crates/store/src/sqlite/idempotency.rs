//! IdempotencyStore: reservations and saved answers for `Idempotency-Key` requests.

use super::rows::{now, us};
use super::SqliteStore;
use crate::model::*;
use crate::{IdempotencyStore, Result};
use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use rusqlite::{params, OptionalExtension};
use voronka_core::*;

/// A reservation older than this without an answer is taken to belong to a crashed
/// request and may be taken over.
const STALE_AFTER: SignedDuration = SignedDuration::from_secs(60);

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn idempotency_begin(
        &self,
        ws: WorkspaceId,
        key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyBegin> {
        let (key, hash) = (key.to_string(), request_hash.to_string());
        // On the writer: the check and the reservation must be one atomic step.
        self.write(move |c| {
            let at = now();
            let row: Option<(String, Option<i64>, Option<Vec<u8>>, i64)> = c
                .prepare_cached(
                    "SELECT request_hash, status, body, created_at FROM idempotency WHERE workspace_id = ?1 AND key = ?2",
                )?
                .query_row(params![ws.0, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            match row {
                None => {
                    c.prepare_cached(
                        "INSERT INTO idempotency (workspace_id, key, request_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![ws.0, key, hash, us(at)])?;
                    Ok(IdempotencyBegin::Started)
                }
                Some((h, _, _, _)) if h != hash => Ok(IdempotencyBegin::Mismatch),
                Some((_, Some(status), body, _)) => Ok(IdempotencyBegin::Replay(SavedResponse {
                    status: u16::try_from(status).unwrap_or(500),
                    body: body.unwrap_or_default(),
                })),
                Some((_, None, _, created)) if created < us(at - STALE_AFTER) => {
                    c.prepare_cached("UPDATE idempotency SET created_at = ?1 WHERE workspace_id = ?2 AND key = ?3")?
                        .execute(params![us(at), ws.0, key])?;
                    Ok(IdempotencyBegin::Started)
                }
                Some(_) => Ok(IdempotencyBegin::InProgress),
            }
        })
        .await
    }

    async fn idempotency_complete(
        &self,
        ws: WorkspaceId,
        key: &str,
        response: SavedResponse,
        contact: Option<ContactId>,
    ) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE idempotency SET status = ?1, body = ?2, contact_id = ?3 WHERE workspace_id = ?4 AND key = ?5",
            )?
            .execute(params![i64::from(response.status), response.body, contact.map(|c| c.0), ws.0, key])?;
            Ok(())
        })
        .await
    }

    async fn idempotency_abort(&self, ws: WorkspaceId, key: &str) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM idempotency WHERE workspace_id = ?1 AND key = ?2 AND status IS NULL",
            )?
            .execute(params![ws.0, key])?;
            Ok(())
        })
        .await
    }

    async fn idempotency_purge(&self, before: Timestamp) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
                .execute([us(before)])?;
            Ok(n as u64)
        })
        .await
    }
}
