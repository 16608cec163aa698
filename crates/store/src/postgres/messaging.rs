//! MessagingStore on PostgreSQL: the inbound event log and the outbox.
//!
//! Delivery workers on several servers claim outbox rows with `FOR UPDATE SKIP LOCKED`,
//! so they share a channel's queue without ever taking the same message. Lock order,
//! to stay clear of deadlocks with erasure and contact changes: inbound row, then
//! contact, then identity; outbox row, then (through the event's foreign key) contact,
//! then identity, then (for a broadcast's message) its recipient row and counters.

use super::broadcasts::SentRecipient;
use super::contacts::{attach_identity, change_subscription, insert_event, lock_contact, touch};
use super::rows::{self, CHANNEL_COLS, IDENTITY_COLS};
use super::{now_us, parse_stored, ts, ts_opt, PgStore};
use crate::messaging::*;
use crate::model::*;
use crate::{MessagingStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use voronka_core::event::EventKind;
use voronka_core::message::{InboundEvent, OutboundMessage, Purpose};
use voronka_core::subscription::SubscriptionState;
use voronka_core::*;

/// Columns read by [`outbox_row`].
const OUTBOX_COLS: &str = "id, workspace_id, channel_id, contact_id, identity_id, external_id, \
     purpose, message, source, state, attempts, parts_sent, provider_message_ids, error, \
     run_at, created_at, sent_at";

fn count(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn stored_count(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// An outbox row (columns [`OUTBOX_COLS`]).
fn outbox_row(r: &PgRow) -> Result<OutboxItem> {
    let purpose: String = r.try_get("purpose")?;
    let state: String = r.try_get("state")?;
    let Json(message) = r.try_get("message")?;
    let Json(provider_message_ids) = r.try_get("provider_message_ids")?;
    Ok(OutboxItem {
        id: OutboxId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        channel_id: ChannelId(r.try_get("channel_id")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        identity_id: IdentityId(r.try_get("identity_id")?),
        external_id: r.try_get("external_id")?,
        purpose: parse_stored("purpose", &purpose)?,
        message,
        source: r.try_get("source")?,
        state: parse_stored("outbox state", &state)?,
        attempts: count(r.try_get("attempts")?),
        parts_sent: count(r.try_get("parts_sent")?),
        provider_message_ids,
        error: r.try_get("error")?,
        run_at: ts(r.try_get("run_at")?),
        created_at: ts(r.try_get("created_at")?),
        sent_at: ts_opt(r.try_get("sent_at")?),
    })
}

/// Inserts a queued message to `to` with its `message_queued` event.
#[allow(clippy::too_many_arguments)]
async fn queue_message(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    to: &Identity,
    purpose: Purpose,
    message: &OutboundMessage,
    source: &str,
    run_at: i64,
    now: i64,
) -> Result<OutboxItem> {
    let r = sqlx::query(&format!(
        "INSERT INTO outbox (workspace_id, channel_id, contact_id, identity_id, external_id, purpose,
             message, has_choices, source, state, run_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $11)
         RETURNING {OUTBOX_COLS}"
    ))
    .bind(ws.0)
    .bind(to.channel_id.0)
    .bind(to.contact_id.0)
    .bind(to.id.0)
    .bind(&to.external_id)
    .bind(purpose.as_str())
    .bind(Json(message))
    .bind(!message.choices().is_empty())
    .bind(source)
    .bind(run_at)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let item = outbox_row(&r)?;
    insert_event(
        conn,
        ws,
        to.contact_id,
        EventKind::MessageQueued,
        &queued_event(item.id, to.channel_id, source, purpose),
        now,
    )
    .await?;
    Ok(item)
}

async fn find_identity(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    channel: ChannelId,
    external_id: &str,
) -> Result<Option<Identity>> {
    sqlx::query(&format!(
        "SELECT {IDENTITY_COLS} FROM identities
         WHERE channel_id = $1 AND external_id = $2 AND workspace_id = $3"
    ))
    .bind(channel.0)
    .bind(external_id)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(rows::identity)
    .transpose()
}

/// Creates the contact of a first-time sender; returns its id.
async fn create_sender(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    channel: ChannelId,
    apply: &InboundApply,
    now: i64,
) -> Result<ContactId> {
    let p = sender_profile(&apply.sender);
    let source = contact_source(apply.source.as_deref());
    let id: i64 = sqlx::query(
        "INSERT INTO contacts (workspace_id, first_name, last_name, username, language, source,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
    )
    .bind(ws.0)
    .bind(&p.first_name)
    .bind(&p.last_name)
    .bind(&p.username)
    .bind(&p.language)
    .bind(&source)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    let id = ContactId(id);
    insert_event(
        conn,
        ws,
        id,
        EventKind::ContactCreated,
        &json!({ "source": source, "channel_id": channel.0 }),
        now,
    )
    .await?;
    Ok(id)
}

/// `apply_inbound` inside its transaction.
async fn apply_event(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: InboundId,
    apply: &InboundApply,
) -> Result<InboundApplied> {
    // The row lock makes a second worker on the same event wait, then see it done.
    let row = sqlx::query(
        "SELECT channel_id, state, contact_id, identity_id FROM inbound_events
         WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
    )
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("inbound_event"))?;
    let state: String = row.try_get("state")?;
    if state != "pending" {
        // Processed (or given up on) already: a second worker, or a retry after a commit
        // whose answer was lost. The ids are those recorded, 0 when it never succeeded.
        return Ok(InboundApplied {
            contact_id: ContactId(row.try_get::<Option<i64>, _>("contact_id")?.unwrap_or(0)),
            identity_id: IdentityId(row.try_get::<Option<i64>, _>("identity_id")?.unwrap_or(0)),
            contact_created: false,
            subscription_changed: false,
            queued: Vec::new(),
            already_done: true,
        });
    }
    let channel = ChannelId(row.try_get("channel_id")?);
    let now = now_us();
    let external_id = voronka_core::channel::external_id(&apply.sender.external_id)?;
    // Two events of one new sender processed at once would both create a contact; the
    // second would then fail on the identity's unique key. Queue them instead.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('voronka_sender:' || $1::text || ':' || $2, 0))")
        .bind(channel.0)
        .bind(&external_id)
        .execute(&mut *conn)
        .await?;
    let (mut ident, contact_created) = match find_identity(conn, ws, channel, &external_id).await? {
        Some(i) => {
            lock_contact(conn, ws, i.contact_id).await?;
            // Read again under the locks: the subscription may have changed since (a
            // delivery worker marking it blocked locks only the identity).
            let r = sqlx::query(&format!(
                "SELECT {IDENTITY_COLS} FROM identities WHERE id = $1 AND contact_id = $2 FOR UPDATE"
            ))
            .bind(i.id.0)
            .bind(i.contact_id.0)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| {
                StoreError::Database("the sender's identity changed meanwhile; retry".into())
            })?;
            (rows::identity(&r)?, false)
        }
        None => {
            let contact = create_sender(conn, ws, channel, apply, now).await?;
            let new = NewIdentity {
                channel_id: channel,
                external_id,
                subscription: None,
            };
            (attach_identity(conn, ws, contact, &new, now).await?, true)
        }
    };
    let contact = ident.contact_id;
    let mut subscription_changed = false;
    if let Some(change) = &apply.subscription {
        let current = &ident.subscription;
        if change.state() != current.state || change.topics() != current.topics.as_slice() {
            ident = change_subscription(conn, ws, contact, ident.id, change, None, now).await?;
            subscription_changed = true;
        }
    }
    for (kind, data) in &apply.events {
        insert_event(conn, ws, contact, *kind, data, now).await?;
    }
    let mut queued = Vec::with_capacity(apply.replies.len());
    for reply in &apply.replies {
        // Skipped, not failed: the event itself was processed fine.
        if consent_for(reply.purpose, ident.subscription.state).is_err() {
            continue;
        }
        let item = queue_message(
            conn,
            ws,
            &ident,
            reply.purpose,
            &reply.message,
            &reply.source,
            now,
            now,
        )
        .await?;
        queued.push(item.id);
    }
    if let Some((kind, data)) = &apply.signal {
        super::flows::insert_signal(conn, ws, contact, Some(channel), kind, data, now).await?;
    }
    sqlx::query(
        "UPDATE inbound_events SET state = 'done', processed_at = $2, contact_id = $3, identity_id = $4
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(now)
    .bind(contact.0)
    .bind(ident.id.0)
    .execute(&mut *conn)
    .await?;
    if subscription_changed && !contact_created {
        touch(conn, contact, now).await?;
    }
    sqlx::query("UPDATE contacts SET last_activity_at = $2 WHERE id = $1")
        .bind(contact.0)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    // The identity the person last wrote from is their preferred channel (broadcasts).
    sqlx::query("UPDATE identities SET last_seen_at = $2 WHERE id = $1")
        .bind(ident.id.0)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(InboundApplied {
        contact_id: contact,
        identity_id: ident.id,
        contact_created,
        subscription_changed,
        queued,
        already_done: false,
    })
}

/// `enqueue_message` inside its transaction.
async fn enqueue(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    new: &NewOutbound,
) -> Result<OutboxItem> {
    lock_contact(conn, ws, contact).await?;
    enqueue_locked(conn, ws, contact, new).await
}

/// Queues a message to a live contact of `ws` whose row the caller locked, enforcing
/// consent: the part of `enqueue_message` flows share.
pub(crate) async fn enqueue_locked(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    new: &NewOutbound,
) -> Result<OutboxItem> {
    // A contact may have several addresses on one channel: the subscribed one wins, then
    // the newest. An identity of the workspace is on a channel of the workspace, so the
    // channel needs checking only when there is none (one round trip less per message).
    let r = sqlx::query(&format!(
        "SELECT {IDENTITY_COLS} FROM identities
         WHERE contact_id = $1 AND channel_id = $2 AND workspace_id = $3
         ORDER BY sub_state = 'subscribed' DESC, id DESC LIMIT 1"
    ))
    .bind(contact.0)
    .bind(new.channel_id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = r else {
        let channel_ok: bool = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1 AND workspace_id = $2)",
        )
        .bind(new.channel_id.0)
        .bind(ws.0)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        return Err(if channel_ok {
            no_identity_on_channel(new.channel_id)
        } else {
            StoreError::not_found("channel")
        });
    };
    let ident = rows::identity(&r)?;
    consent_for(new.purpose, ident.subscription.state)?;
    let now = now_us();
    let run_at = new.run_at.map_or(now, |t| t.as_microsecond());
    queue_message(
        conn,
        ws,
        &ident,
        new.purpose,
        &new.message,
        &new.source,
        run_at,
        now,
    )
    .await
}

/// What `complete_outbox` needs of a row it completes.
struct ClaimedRow {
    ws: WorkspaceId,
    channel: ChannelId,
    contact: ContactId,
    identity: IdentityId,
    source: String,
}

/// Marks a claimed message failed, with its `message_failed` event.
async fn fail_outbox(
    conn: &mut PgConnection,
    row: &ClaimedRow,
    r: &OutboxResult,
    reason: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET state = 'failed', error = $2, lease_until = NULL, parts_sent = $3,
             provider_message_ids = $4
         WHERE id = $1",
    )
    .bind(r.id.0)
    .bind(reason)
    .bind(stored_count(r.parts_sent))
    .bind(Json(&r.provider_message_ids))
    .execute(&mut *conn)
    .await?;
    insert_event(
        conn,
        row.ws,
        row.contact,
        EventKind::MessageFailed,
        &failed_event(r.id, row.channel, reason),
        now,
    )
    .await?;
    Ok(())
}

/// Marks the recipient's identity `blocked` (unless it is already, or gone), with its
/// history row and `subscription_changed` event.
async fn block_identity(conn: &mut PgConnection, row: &ClaimedRow, now: i64) -> Result<()> {
    let state: Option<String> = sqlx::query(
        "SELECT sub_state FROM identities WHERE id = $1 AND contact_id = $2 AND workspace_id = $3
         FOR UPDATE",
    )
    .bind(row.identity.0)
    .bind(row.contact.0)
    .bind(row.ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let Some(state) = state else { return Ok(()) };
    if state == SubscriptionState::Blocked.as_str() {
        return Ok(());
    }
    let change = blocked_change(ts(now))?;
    change_subscription(
        conn,
        row.ws,
        row.contact,
        row.identity,
        &change,
        Some("delivery"),
        now,
    )
    .await?;
    touch(conn, row.contact, now).await
}

/// `complete_outbox` inside its transaction.
async fn complete(conn: &mut PgConnection, mut results: Vec<OutboxResult>) -> Result<()> {
    // Row locks in id order: two workers completing overlapping batches cannot deadlock.
    results.sort_by_key(|r| r.id);
    let now = now_us();
    let mut recipients = Vec::new();
    for r in &results {
        let row = sqlx::query(
            "SELECT workspace_id, channel_id, contact_id, identity_id, source, recipient_id FROM outbox
             WHERE id = $1 AND state = 'sending' FOR UPDATE",
        )
        .bind(r.id.0)
        .fetch_optional(&mut *conn)
        .await?;
        // Completed already, or reclaimed after the lease ran out and completed by the
        // other worker: the first answer stands.
        let Some(row) = row else { continue };
        let recipient: Option<i64> = row.try_get("recipient_id")?;
        let row = ClaimedRow {
            ws: WorkspaceId(row.try_get("workspace_id")?),
            channel: ChannelId(row.try_get("channel_id")?),
            contact: ContactId(row.try_get("contact_id")?),
            identity: IdentityId(row.try_get("identity_id")?),
            source: row.try_get("source")?,
        };
        match &r.outcome {
            SendOutcome::Sent => {
                sqlx::query(
                    "UPDATE outbox SET state = 'sent', sent_at = $2, parts_sent = $3,
                         provider_message_ids = $4, error = NULL, lease_until = NULL
                     WHERE id = $1",
                )
                .bind(r.id.0)
                .bind(now)
                .bind(stored_count(r.parts_sent))
                .bind(Json(&r.provider_message_ids))
                .execute(&mut *conn)
                .await?;
                insert_event(
                    conn,
                    row.ws,
                    row.contact,
                    EventKind::MessageSent,
                    &sent_event(r.id, row.channel, &row.source, &r.provider_message_ids),
                    now,
                )
                .await?;
            }
            SendOutcome::Retry { at, error } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'queued', run_at = $2, lease_until = NULL, error = $3,
                         parts_sent = $4, provider_message_ids = $5
                     WHERE id = $1",
                )
                .bind(r.id.0)
                .bind(at.as_microsecond())
                .bind(error)
                .bind(stored_count(r.parts_sent))
                .bind(Json(&r.provider_message_ids))
                .execute(&mut *conn)
                .await?;
            }
            SendOutcome::Failed { reason } => fail_outbox(conn, &row, r, reason, now).await?,
            SendOutcome::Blocked { reason } => {
                fail_outbox(conn, &row, r, reason, now).await?;
                block_identity(conn, &row, now).await?;
            }
        }
        // A broadcast's message: its recipient row and counters follow, all together
        // after the loop.
        if let Some(recipient) = recipient {
            let sent = match &r.outcome {
                SendOutcome::Sent => true,
                SendOutcome::Failed { .. } | SendOutcome::Blocked { .. } => false,
                SendOutcome::Retry { .. } => continue,
            };
            recipients.push(SentRecipient {
                outbox: r.id.0,
                recipient,
                sent,
                provider_message_id: r.provider_message_ids.first().cloned(),
            });
        }
    }
    super::broadcasts::complete_recipients(conn, &recipients, now).await
}

#[async_trait]
impl MessagingStore for PgStore {
    async fn find_channel(&self, id: ChannelId) -> Result<Channel> {
        let r = sqlx::query(&format!(
            "SELECT {CHANNEL_COLS} FROM channels WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("channel"))?;
        rows::channel(&r)
    }

    async fn all_channels(&self) -> Result<Vec<Channel>> {
        sqlx::query(&format!("SELECT {CHANNEL_COLS} FROM channels ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::channel)
            .collect()
    }

    async fn record_inbound(
        &self,
        ws: WorkspaceId,
        channel: ChannelId,
        events: Vec<InboundEvent>,
    ) -> Result<Vec<Option<InboundId>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(events.len());
        let mut channel_checked = false;
        for e in &events {
            // The SELECT checks the channel is the workspace's; the conflict clause drops
            // provider retries (a concurrent copy waits for the first one's commit).
            let id: Option<i64> = sqlx::query(
                "INSERT INTO inbound_events (workspace_id, channel_id, provider_event_id, payload, received_at)
                 SELECT $1, $2, $3, $4, $5 FROM channels WHERE id = $2 AND workspace_id = $1
                 ON CONFLICT (channel_id, provider_event_id) DO NOTHING
                 RETURNING id",
            )
            .bind(ws.0)
            .bind(channel.0)
            .bind(&e.provider_event_id)
            .bind(Json(e))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if id.is_none() && !channel_checked {
                // Nothing inserted: a duplicate, or a channel of another workspace.
                let ok: bool = sqlx::query(
                    "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1 AND workspace_id = $2)",
                )
                .bind(channel.0)
                .bind(ws.0)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                if !ok {
                    return Err(StoreError::not_found("channel"));
                }
                channel_checked = true;
            }
            out.push(id.map(InboundId));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn pending_inbound(
        &self,
        after: Option<InboundId>,
        limit: u32,
    ) -> Result<Vec<InboundRecord>> {
        sqlx::query(
            "SELECT id, workspace_id, channel_id, payload, received_at, attempts FROM inbound_events
             WHERE state = 'pending' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.map_or(0, |a| a.0))
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let Json(event) = r.try_get("payload")?;
            Ok(InboundRecord {
                id: InboundId(r.try_get("id")?),
                workspace_id: WorkspaceId(r.try_get("workspace_id")?),
                channel_id: ChannelId(r.try_get("channel_id")?),
                event,
                received_at: ts(r.try_get("received_at")?),
                attempts: count(r.try_get("attempts")?),
            })
        })
        .collect()
    }

    async fn apply_inbound(
        &self,
        ws: WorkspaceId,
        id: InboundId,
        apply: InboundApply,
    ) -> Result<InboundApplied> {
        let mut tx = self.pool.begin().await?;
        let applied = apply_event(&mut tx, ws, id, &apply).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn fail_inbound(&self, id: InboundId, error: &str, retry: bool) -> Result<()> {
        let state = if retry { "pending" } else { "failed" };
        let n = sqlx::query(
            "UPDATE inbound_events SET state = $2, attempts = attempts + 1, error = $3
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.0)
        .bind(state)
        .bind(error)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            // Not pending any more (processed meanwhile): nothing to record. Absent
            // altogether: say so.
            let exists: bool =
                sqlx::query("SELECT EXISTS (SELECT 1 FROM inbound_events WHERE id = $1)")
                    .bind(id.0)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?;
            if !exists {
                return Err(StoreError::not_found("inbound_event"));
            }
        }
        Ok(())
    }

    async fn find_identity(
        &self,
        ws: WorkspaceId,
        channel: ChannelId,
        external_id: &str,
    ) -> Result<Option<Identity>> {
        let mut conn = self.pool.acquire().await?;
        find_identity(&mut conn, ws, channel, external_id).await
    }

    async fn enqueue_message(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        new: NewOutbound,
    ) -> Result<OutboxItem> {
        let mut tx = self.pool.begin().await?;
        let item = enqueue(&mut tx, ws, contact, &new).await?;
        tx.commit().await?;
        Ok(item)
    }

    async fn get_outbound(&self, ws: WorkspaceId, id: OutboxId) -> Result<OutboxItem> {
        let r = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("message"))?;
        outbox_row(&r)
    }

    async fn last_outbound_with_choices(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
    ) -> Result<Option<OutboxItem>> {
        // The identity must still be the one the message went to, as on SQLite.
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox o
             WHERE identity_id = $1 AND workspace_id = $2 AND has_choices AND state <> 'failed'
               AND EXISTS (SELECT 1 FROM identities i WHERE i.id = o.identity_id
                   AND i.contact_id = o.contact_id AND i.channel_id = o.channel_id)
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(identity.0)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(outbox_row)
        .transpose()
    }

    async fn claim_outbox(
        &self,
        channel: ChannelId,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<OutboxItem>> {
        let now = now_us();
        let until = now.saturating_add(lease_us(lease));
        let mut items = sqlx::query(&format!(
            "UPDATE outbox SET state = 'sending', lease_until = $2, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM outbox
                 WHERE channel_id = $1 AND state IN ('queued', 'sending')
                   AND ((state = 'queued' AND run_at <= $3) OR (state = 'sending' AND lease_until < $3))
                 ORDER BY run_at, id LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             RETURNING {OUTBOX_COLS}"
        ))
        .bind(channel.0)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_row)
        .collect::<Result<Vec<_>>>()?;
        // RETURNING comes in no particular order.
        items.sort_by_key(|i| (i.run_at, i.id));
        Ok(items)
    }

    async fn due_channels(&self) -> Result<Vec<(ChannelId, Timestamp)>> {
        // A lease-expired row is due since its lease ended.
        sqlx::query(
            "SELECT channel_id, min(CASE WHEN state = 'queued' THEN run_at ELSE lease_until END) AS due
             FROM outbox WHERE state IN ('queued', 'sending')
               AND (state = 'queued' OR lease_until < $1)
             GROUP BY channel_id ORDER BY channel_id",
        )
        .bind(now_us())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((ChannelId(r.try_get(0)?), ts(r.try_get(1)?))))
        .collect()
    }

    async fn complete_outbox(&self, results: Vec<OutboxResult>) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        complete(&mut tx, results).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn conversation(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        limit: u32,
    ) -> Result<Vec<ConversationItem>> {
        let limit = conversation_limit(limit);
        let mut conn = self.pool.acquire().await?;
        let r = sqlx::query(
            "SELECT contact_id, channel_id FROM identities WHERE id = $1 AND workspace_id = $2",
        )
        .bind(identity.0)
        .bind(ws.0)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::not_found("identity"))?;
        let contact: i64 = r.try_get(0)?;
        let channel: i64 = r.try_get(1)?;
        let kinds: Vec<String> = CONVERSATION_KINDS.iter().map(|k| k.to_string()).collect();
        // Matched on contact and channel too, as on SQLite (where identity ids can be
        // reused); ids follow time closely enough to pick the newest rows by id.
        let inbound = sqlx::query(
            "SELECT id, received_at, payload FROM inbound_events
             WHERE identity_id = $1 AND contact_id = $2 AND channel_id = $3 AND state = 'done'
               AND payload->'kind'->>'type' = ANY($4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(identity.0)
        .bind(contact)
        .bind(channel)
        .bind(&kinds)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            let Json(payload): Json<Value> = r.try_get(2)?;
            Ok((r.try_get(0)?, ts(r.try_get(1)?), payload))
        })
        .collect::<Result<Vec<_>>>()?;
        let outbound = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox
             WHERE identity_id = $1 AND contact_id = $2 AND channel_id = $3 AND workspace_id = $4
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(identity.0)
        .bind(contact)
        .bind(channel)
        .bind(ws.0)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(outbox_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(merge_conversation(inbound, outbound, limit))
    }

    async fn outbox_counts(&self, channel: Option<ChannelId>) -> Result<Vec<(OutboxState, u64)>> {
        let rows = sqlx::query(
            "SELECT state, count(*) FROM outbox
             WHERE ($1::bigint IS NULL OR channel_id = $1) GROUP BY state",
        )
        .bind(channel.map(|c| c.0))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let state: String = r.try_get(0)?;
            Ok((
                parse_stored("outbox state", &state)?,
                r.try_get::<i64, _>(1)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(all_states(rows))
    }
}
