//! MessagingStore on SQLite: the inbound event log and the outbox.
//!
//! Every write is one writer job, so each method's changes commit together, and through
//! group commit together with other requests' writes: that is what makes storing webhook
//! events cheap (one insert each, one WAL commit for all of them).

use super::accounts::{channel_row, CHANNEL_COLS};
use super::contacts::{
    add_identity_with_events, apply_subscription, channel_in, insert_contact, touch_contact,
};
use super::rows::*;
use super::SqliteStore;
use crate::messaging::*;
use crate::model::*;
use crate::{MessagingStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};
use voronka_core::event::EventKind;
use voronka_core::message::{InboundEvent, Purpose};
use voronka_core::subscription::SubscriptionState;
use voronka_core::*;

/// Columns read by [`outbox_row`].
const OUTBOX_COLS: &str = "id, workspace_id, channel_id, contact_id, identity_id, external_id, \
     purpose, message, source, state, attempts, parts_sent, provider_message_ids, error, \
     run_at, created_at, sent_at";

/// An outbox row (columns [`OUTBOX_COLS`]).
fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: OutboxId(r.get(0)?),
        workspace_id: WorkspaceId(r.get(1)?),
        channel_id: ChannelId(r.get(2)?),
        contact_id: ContactId(r.get(3)?),
        identity_id: IdentityId(r.get(4)?),
        external_id: r.get(5)?,
        purpose: parsed(r, 6)?,
        message: json_col(r, 7)?,
        source: r.get(8)?,
        state: parsed(r, 9)?,
        attempts: r.get(10)?,
        parts_sent: r.get(11)?,
        provider_message_ids: strings(r, 12)?,
        error: r.get(13)?,
        run_at: ts(r, 14)?,
        created_at: ts(r, 15)?,
        sent_at: ts_opt(r, 16)?,
    })
}

fn get_outbox(c: &Connection, ws: WorkspaceId, id: OutboxId) -> Result<OutboxItem> {
    c.prepare_cached(&format!(
        "SELECT {OUTBOX_COLS} FROM outbox WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], outbox_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("message"))
}

/// Inserts a queued message to `to` with its `message_queued` event.
#[allow(clippy::too_many_arguments)]
fn queue_message(
    c: &Connection,
    ws: WorkspaceId,
    to: &Identity,
    purpose: Purpose,
    message: &voronka_core::message::OutboundMessage,
    source: &str,
    run_at: Timestamp,
    at: Timestamp,
) -> Result<OutboxId> {
    queue_linked(c, ws, to, purpose, message, source, run_at, at, None)
}

/// Like [`queue_message`], and records the broadcast recipient the message is for
/// (`complete_outbox` then updates that recipient).
#[allow(clippy::too_many_arguments)]
pub(crate) fn queue_linked(
    c: &Connection,
    ws: WorkspaceId,
    to: &Identity,
    purpose: Purpose,
    message: &voronka_core::message::OutboundMessage,
    source: &str,
    run_at: Timestamp,
    at: Timestamp,
    link: Option<(BroadcastId, RecipientId)>,
) -> Result<OutboxId> {
    c.prepare_cached(
        "INSERT INTO outbox (workspace_id, channel_id, contact_id, identity_id, external_id, purpose, \
         message, has_choices, source, state, run_at, created_at, broadcast_id, recipient_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        ws.0,
        to.channel_id.0,
        to.contact_id.0,
        to.id.0,
        to.external_id,
        purpose.as_str(),
        to_json(message)?,
        !message.choices().is_empty(),
        source,
        us(run_at),
        us(at),
        link.map(|(b, _)| b.0),
        link.map(|(_, r)| r.0),
    ])?;
    let id = OutboxId(c.last_insert_rowid());
    insert_event(
        c,
        ws,
        to.contact_id,
        EventKind::MessageQueued.as_str(),
        &queued_event(id, to.channel_id, source, purpose),
        at,
    )?;
    Ok(id)
}

fn find_identity(
    c: &Connection,
    ws: WorkspaceId,
    channel: ChannelId,
    external_id: &str,
) -> Result<Option<Identity>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {IDENTITY_COLS} FROM identities \
             WHERE channel_id = ?1 AND external_id = ?2 AND workspace_id = ?3"
    ))?
    .query_row(params![channel.0, external_id, ws.0], identity_row)
    .optional()?)
}

fn identity_by_id(c: &Connection, id: IdentityId) -> Result<Identity> {
    Ok(c.prepare_cached(&format!(
        "SELECT {IDENTITY_COLS} FROM identities WHERE id = ?1"
    ))?
    .query_row([id.0], identity_row)?)
}

/// `apply_inbound` on the writer.
fn apply_event(
    c: &Connection,
    ws: WorkspaceId,
    id: InboundId,
    apply: &InboundApply,
) -> Result<InboundApplied> {
    let row: Option<(i64, String, Option<i64>, Option<i64>)> = c
        .prepare_cached(
            "SELECT channel_id, state, contact_id, identity_id FROM inbound_events \
             WHERE id = ?1 AND workspace_id = ?2",
        )?
        .query_row([id.0, ws.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let (channel, state, done_contact, done_identity) =
        row.ok_or_else(|| StoreError::not_found("inbound_event"))?;
    if state != "pending" {
        // Processed (or given up on) already: a second worker, or a retry after a commit
        // whose answer was lost. The ids are those recorded, 0 when it never succeeded.
        return Ok(InboundApplied {
            contact_id: ContactId(done_contact.unwrap_or(0)),
            identity_id: IdentityId(done_identity.unwrap_or(0)),
            contact_created: false,
            subscription_changed: false,
            queued: Vec::new(),
            already_done: true,
        });
    }
    let channel = ChannelId(channel);
    let at = now();
    let external_id = voronka_core::channel::external_id(&apply.sender.external_id)?;
    let (mut ident, contact_created) = match find_identity(c, ws, channel, &external_id)? {
        Some(i) => (i, false),
        None => {
            let source = contact_source(apply.source.as_deref());
            let contact =
                insert_contact(c, ws, &sender_profile(&apply.sender), source.as_deref(), at)?;
            insert_event(
                c,
                ws,
                contact,
                EventKind::ContactCreated.as_str(),
                &json!({"source": source, "channel_id": channel.0}),
                at,
            )?;
            let new = NewIdentity {
                channel_id: channel,
                external_id,
                subscription: None,
            };
            (add_identity_with_events(c, ws, contact, &new, at)?, true)
        }
    };
    let contact = ident.contact_id;
    let mut subscription_changed = false;
    if let Some(change) = &apply.subscription {
        let current = &ident.subscription;
        if change.state() != current.state || change.topics() != current.topics.as_slice() {
            apply_subscription(c, ws, contact, ident.id, channel, change, at)?;
            insert_event(
                c,
                ws,
                contact,
                EventKind::SubscriptionChanged.as_str(),
                &subscription_event(ident.id, channel, change),
                at,
            )?;
            ident = identity_by_id(c, ident.id)?;
            subscription_changed = true;
        }
    }
    for (kind, data) in &apply.events {
        insert_event(c, ws, contact, kind.as_str(), data, at)?;
    }
    let mut queued = Vec::with_capacity(apply.replies.len());
    for reply in &apply.replies {
        // Skipped, not failed: the event itself was processed fine.
        if consent_for(reply.purpose, ident.subscription.state).is_err() {
            continue;
        }
        queued.push(queue_message(
            c,
            ws,
            &ident,
            reply.purpose,
            &reply.message,
            &reply.source,
            at,
            at,
        )?);
    }
    if let Some((kind, data)) = &apply.signal {
        super::flows::insert_signal(c, ws, contact, Some(channel), kind, data, at)?;
    }
    c.prepare_cached(
        "UPDATE inbound_events SET state = 'done', processed_at = ?1, contact_id = ?2, identity_id = ?3 \
         WHERE id = ?4",
    )?
    .execute(params![us(at), contact.0, ident.id.0, id.0])?;
    if subscription_changed && !contact_created {
        touch_contact(c, contact, at)?;
    }
    c.prepare_cached("UPDATE contacts SET last_activity_at = ?1 WHERE id = ?2")?
        .execute([us(at), contact.0])?;
    // The identity the person last wrote from is their preferred channel for broadcasts.
    c.prepare_cached("UPDATE identities SET last_seen_at = ?1 WHERE id = ?2")?
        .execute([us(at), ident.id.0])?;
    Ok(InboundApplied {
        contact_id: contact,
        identity_id: ident.id,
        contact_created,
        subscription_changed,
        queued,
        already_done: false,
    })
}

/// `enqueue_message` on the writer.
fn enqueue(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    new: &NewOutbound,
) -> Result<OutboxItem> {
    ensure_live_contact(c, ws, contact)?;
    let id = enqueue_for(c, ws, contact, new)?;
    get_outbox(c, ws, id)
}

/// Queues a message to a live contact of `ws` (checked by the caller), enforcing consent:
/// the part of `enqueue_message` flows share.
pub(crate) fn enqueue_for(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    new: &NewOutbound,
) -> Result<OutboxId> {
    if !channel_in(c, ws, new.channel_id)? {
        return Err(StoreError::not_found("channel"));
    }
    // A contact may have several addresses on one channel: the subscribed one wins, then
    // the newest.
    let ident = c
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLS} FROM identities \
             WHERE contact_id = ?1 AND channel_id = ?2 AND workspace_id = ?3 \
             ORDER BY sub_state = 'subscribed' DESC, id DESC LIMIT 1"
        ))?
        .query_row([contact.0, new.channel_id.0, ws.0], identity_row)
        .optional()?
        .ok_or_else(|| no_identity_on_channel(new.channel_id))?;
    consent_for(new.purpose, ident.subscription.state)?;
    let at = now();
    let run_at = new.run_at.unwrap_or(at);
    queue_message(
        c,
        ws,
        &ident,
        new.purpose,
        &new.message,
        &new.source,
        run_at,
        at,
    )
}

/// Marks a claimed message failed, with its `message_failed` event.
fn fail_outbox(
    c: &Connection,
    row: &ClaimedRow,
    r: &OutboxResult,
    reason: &str,
    at: Timestamp,
) -> Result<()> {
    c.prepare_cached(
        "UPDATE outbox SET state = 'failed', error = ?1, lease_until = NULL, parts_sent = ?2, \
         provider_message_ids = ?3 WHERE id = ?4",
    )?
    .execute(params![
        reason,
        r.parts_sent,
        json_strings(&r.provider_message_ids),
        r.id.0
    ])?;
    insert_event(
        c,
        row.ws,
        row.contact,
        EventKind::MessageFailed.as_str(),
        &failed_event(r.id, row.channel, reason),
        at,
    )?;
    Ok(())
}

/// What `complete_outbox` needs of a row it completes.
struct ClaimedRow {
    ws: WorkspaceId,
    channel: ChannelId,
    contact: ContactId,
    identity: IdentityId,
    source: String,
    /// The broadcast recipient the message is for.
    recipient: Option<RecipientId>,
}

/// `complete_outbox` on the writer.
fn complete(c: &Connection, results: &[OutboxResult]) -> Result<()> {
    let at = now();
    // Broadcast counters are summed over the whole batch and written once per key: a
    // batch of one broadcast's messages touches two counter rows, not a thousand.
    let mut tally = super::broadcasts::Tally::default();
    for r in results {
        let row = c
            .prepare_cached(
                "SELECT workspace_id, channel_id, contact_id, identity_id, source, recipient_id \
                 FROM outbox WHERE id = ?1 AND state = 'sending'",
            )?
            .query_row([r.id.0], |x| {
                Ok(ClaimedRow {
                    ws: WorkspaceId(x.get(0)?),
                    channel: ChannelId(x.get(1)?),
                    contact: ContactId(x.get(2)?),
                    identity: IdentityId(x.get(3)?),
                    source: x.get(4)?,
                    recipient: x.get::<_, Option<i64>>(5)?.map(RecipientId),
                })
            })
            .optional()?;
        // Completed already, or reclaimed after the lease ran out and completed by the
        // other worker: the first answer stands.
        let Some(row) = row else { continue };
        match &r.outcome {
            SendOutcome::Sent => {
                c.prepare_cached(
                    "UPDATE outbox SET state = 'sent', sent_at = ?1, parts_sent = ?2, \
                     provider_message_ids = ?3, error = NULL, lease_until = NULL WHERE id = ?4",
                )?
                .execute(params![
                    us(at),
                    r.parts_sent,
                    json_strings(&r.provider_message_ids),
                    r.id.0
                ])?;
                insert_event(
                    c,
                    row.ws,
                    row.contact,
                    EventKind::MessageSent.as_str(),
                    &sent_event(r.id, row.channel, &row.source, &r.provider_message_ids),
                    at,
                )?;
                if let Some(rid) = row.recipient {
                    let first = r.provider_message_ids.first().map(String::as_str);
                    super::broadcasts::outbox_done(c, &mut tally, rid, r.id, first, at)?;
                }
            }
            SendOutcome::Retry { at: when, error } => {
                c.prepare_cached(
                    "UPDATE outbox SET state = 'queued', run_at = ?1, lease_until = NULL, error = ?2, \
                     parts_sent = ?3, provider_message_ids = ?4 WHERE id = ?5",
                )?
                .execute(params![
                    us(*when),
                    error,
                    r.parts_sent,
                    json_strings(&r.provider_message_ids),
                    r.id.0
                ])?;
            }
            SendOutcome::Failed { reason } => {
                fail_outbox(c, &row, r, reason, at)?;
                if let Some(rid) = row.recipient {
                    super::broadcasts::outbox_failed(c, &mut tally, rid, r.id)?;
                }
            }
            SendOutcome::Blocked { reason } => {
                fail_outbox(c, &row, r, reason, at)?;
                block_identity(c, &row, at)?;
                if let Some(rid) = row.recipient {
                    super::broadcasts::outbox_failed(c, &mut tally, rid, r.id)?;
                }
            }
        }
    }
    tally.flush(c)
}

/// Marks the recipient's identity `blocked` (unless it is already, or gone), with its
/// history row and `subscription_changed` event.
fn block_identity(c: &Connection, row: &ClaimedRow, at: Timestamp) -> Result<()> {
    let state: Option<String> = c
        .prepare_cached(
            "SELECT sub_state FROM identities WHERE id = ?1 AND contact_id = ?2 AND workspace_id = ?3",
        )?
        .query_row([row.identity.0, row.contact.0, row.ws.0], |r| r.get(0))
        .optional()?;
    let Some(state) = state else { return Ok(()) };
    if state == SubscriptionState::Blocked.as_str() {
        return Ok(());
    }
    let change = blocked_change(at)?;
    apply_subscription(
        c,
        row.ws,
        row.contact,
        row.identity,
        row.channel,
        &change,
        at,
    )?;
    let mut data = subscription_event(row.identity, row.channel, &change);
    data["source"] = json!("delivery");
    insert_event(
        c,
        row.ws,
        row.contact,
        EventKind::SubscriptionChanged.as_str(),
        &data,
        at,
    )?;
    touch_contact(c, row.contact, at)
}

/// `conversation` on a read connection.
fn conversation(
    c: &Connection,
    ws: WorkspaceId,
    identity: IdentityId,
    limit: u32,
) -> Result<Vec<ConversationItem>> {
    let (contact, channel): (i64, i64) = c
        .prepare_cached(
            "SELECT contact_id, channel_id FROM identities WHERE id = ?1 AND workspace_id = ?2",
        )?
        .query_row([identity.0, ws.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| StoreError::not_found("identity"))?;
    let limit = conversation_limit(limit);
    let kinds = CONVERSATION_KINDS.map(|k| format!("'{k}'")).join(", ");
    // Rows are matched on contact and channel too: SQLite may hand a deleted identity's
    // id to a new identity, and that one's history must not show someone else's.
    // Newest by id is newest by time: ids and times are both assigned on the writer.
    let inbound = c
        .prepare_cached(&format!(
            "SELECT id, received_at, payload FROM inbound_events \
             WHERE identity_id = ?1 AND contact_id = ?2 AND channel_id = ?3 AND state = 'done' \
             AND json_extract(payload, '$.kind.type') IN ({kinds}) ORDER BY id DESC LIMIT ?4"
        ))?
        .query_map(params![identity.0, contact, channel, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, ts(r, 1)?, json_col::<Value>(r, 2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let outbound = c
        .prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox \
             WHERE identity_id = ?1 AND contact_id = ?2 AND channel_id = ?3 AND workspace_id = ?4 \
             ORDER BY id DESC LIMIT ?5"
        ))?
        .query_map(
            params![identity.0, contact, channel, ws.0, limit as i64],
            outbox_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(merge_conversation(inbound, outbound, limit))
}

#[async_trait]
impl MessagingStore for SqliteStore {
    async fn find_channel(&self, id: ChannelId) -> Result<Channel> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {CHANNEL_COLS} FROM channels WHERE id = ?1"
            ))?
            .query_row([id.0], channel_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found("channel"))
        })
        .await
    }

    async fn all_channels(&self) -> Result<Vec<Channel>> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {CHANNEL_COLS} FROM channels ORDER BY id"))?
                    .query_map([], channel_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            )
        })
        .await
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
        // Encoded here, not on the writer thread that every write waits for.
        let rows = events
            .iter()
            .map(|e| Ok((e.provider_event_id.clone(), to_json(e)?)))
            .collect::<Result<Vec<_>>>()?;
        self.write(move |c| {
            let at = us(now());
            // One statement per event: the SELECT checks the channel is the workspace's
            // (a primary key probe) and the conflict clause drops provider retries.
            let mut insert = c.prepare_cached(
                "INSERT INTO inbound_events (workspace_id, channel_id, provider_event_id, payload, received_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5 FROM channels WHERE id = ?2 AND workspace_id = ?1 \
                 ON CONFLICT (channel_id, provider_event_id) DO NOTHING",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            let mut channel_checked = false;
            for (provider_id, payload) in &rows {
                if insert.execute(params![ws.0, channel.0, provider_id, payload, at])? == 1 {
                    out.push(Some(InboundId(c.last_insert_rowid())));
                    continue;
                }
                // Nothing inserted: a duplicate, or a channel of another workspace.
                if !channel_checked {
                    if !channel_in(c, ws, channel)? {
                        return Err(StoreError::not_found("channel"));
                    }
                    channel_checked = true;
                }
                out.push(None);
            }
            Ok(out)
        })
        .await
    }

    async fn pending_inbound(
        &self,
        after: Option<InboundId>,
        limit: u32,
    ) -> Result<Vec<InboundRecord>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, workspace_id, channel_id, payload, received_at, attempts FROM inbound_events \
                 WHERE state = 'pending' AND id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(
                params![after.map_or(0, |a| a.0), i64::from(limit.clamp(1, 10_000))],
                |r| {
                    Ok(InboundRecord {
                        id: InboundId(r.get(0)?),
                        workspace_id: WorkspaceId(r.get(1)?),
                        channel_id: ChannelId(r.get(2)?),
                        event: json_col(r, 3)?,
                        received_at: ts(r, 4)?,
                        attempts: r.get(5)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn apply_inbound(
        &self,
        ws: WorkspaceId,
        id: InboundId,
        apply: InboundApply,
    ) -> Result<InboundApplied> {
        self.write(move |c| apply_event(c, ws, id, &apply)).await
    }

    async fn fail_inbound(&self, id: InboundId, error: &str, retry: bool) -> Result<()> {
        let error = error.to_string();
        self.write(move |c| {
            let state = if retry { "pending" } else { "failed" };
            let n = c
                .prepare_cached(
                    "UPDATE inbound_events SET state = ?1, attempts = attempts + 1, error = ?2 \
                     WHERE id = ?3 AND state = 'pending'",
                )?
                .execute(params![state, error, id.0])?;
            if n == 0 {
                // Not pending any more (processed meanwhile): nothing to record. Absent
                // altogether: say so.
                let exists = c
                    .prepare_cached("SELECT 1 FROM inbound_events WHERE id = ?1")?
                    .exists([id.0])?;
                if !exists {
                    return Err(StoreError::not_found("inbound_event"));
                }
            }
            Ok(())
        })
        .await
    }

    async fn find_identity(
        &self,
        ws: WorkspaceId,
        channel: ChannelId,
        external_id: &str,
    ) -> Result<Option<Identity>> {
        let external_id = external_id.to_string();
        self.read(move |c| find_identity(c, ws, channel, &external_id))
            .await
    }

    async fn enqueue_message(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        new: NewOutbound,
    ) -> Result<OutboxItem> {
        self.write(move |c| enqueue(c, ws, contact, &new)).await
    }

    async fn get_outbound(&self, ws: WorkspaceId, id: OutboxId) -> Result<OutboxItem> {
        self.read(move |c| get_outbox(c, ws, id)).await
    }

    async fn last_outbound_with_choices(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
    ) -> Result<Option<OutboxItem>> {
        self.read(move |c| {
            // The identity must still be the one the message went to: SQLite may give a
            // deleted identity's id to a new one (someone else).
            Ok(c.prepare_cached(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox o \
                 WHERE identity_id = ?1 AND workspace_id = ?2 AND has_choices = 1 AND state <> 'failed' \
                 AND EXISTS (SELECT 1 FROM identities i WHERE i.id = o.identity_id \
                     AND i.contact_id = o.contact_id AND i.channel_id = o.channel_id) \
                 ORDER BY id DESC LIMIT 1"
            ))?
            .query_row([identity.0, ws.0], outbox_row)
            .optional()?)
        })
        .await
    }

    async fn claim_outbox(
        &self,
        channel: ChannelId,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<OutboxItem>> {
        self.write(move |c| {
            let at = us(now());
            let until = at.saturating_add(lease_us(lease));
            // `state IN (…)` repeats the partial index's condition so SQLite uses it.
            let mut items = c
                .prepare_cached(&format!(
                    "UPDATE outbox SET state = 'sending', lease_until = ?2, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM outbox WHERE channel_id = ?1 \
                         AND state IN ('queued', 'sending') \
                         AND ((state = 'queued' AND run_at <= ?3) OR (state = 'sending' AND lease_until < ?3)) \
                         ORDER BY run_at, id LIMIT ?4) \
                     RETURNING {OUTBOX_COLS}"
                ))?
                .query_map(params![channel.0, until, at, i64::from(limit)], outbox_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // RETURNING comes in no particular order.
            items.sort_by_key(|i| (i.run_at, i.id));
            Ok(items)
        })
        .await
    }

    async fn due_channels(&self) -> Result<Vec<(ChannelId, Timestamp)>> {
        self.read(|c| {
            let at = us(now());
            // A lease-expired row is due since its lease ended.
            Ok(c.prepare_cached(
                "SELECT channel_id, min(CASE WHEN state = 'queued' THEN run_at ELSE lease_until END) \
                 FROM outbox WHERE state IN ('queued', 'sending') \
                 AND (state = 'queued' OR lease_until < ?1) \
                 GROUP BY channel_id ORDER BY channel_id",
            )?
            .query_map([at], |r| Ok((ChannelId(r.get(0)?), ts(r, 1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn complete_outbox(&self, results: Vec<OutboxResult>) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        self.write(move |c| complete(c, &results)).await
    }

    async fn conversation(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        limit: u32,
    ) -> Result<Vec<ConversationItem>> {
        self.read(move |c| conversation(c, ws, identity, limit))
            .await
    }

    async fn outbox_counts(&self, channel: Option<ChannelId>) -> Result<Vec<(OutboxState, u64)>> {
        self.read(move |c| {
            let rows: Vec<(OutboxState, i64)> = match channel {
                Some(ch) => c
                    .prepare_cached(
                        "SELECT state, count(*) FROM outbox WHERE channel_id = ?1 GROUP BY state",
                    )?
                    .query_map([ch.0], |r| Ok((parsed(r, 0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => c
                    .prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")?
                    .query_map([], |r| Ok((parsed(r, 0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(all_states(rows))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdminStore, ChannelStore, WorkspaceStore};
    use voronka_core::channel::{ChannelKind, ChannelSettings};

    /// A channel from before the messaging migration has `'{}'` in both JSON columns: it
    /// reads as the default settings and an empty runtime.
    #[tokio::test]
    async fn empty_json_columns_read_as_defaults() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let s = SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open");
        s.migrate().await.expect("migrate");
        let ws = s.create_workspace("w").await.expect("workspace").id;
        let ch = s
            .create_channel(
                ws,
                NewChannel {
                    kind: ChannelKind::Telegram,
                    name: "bot".into(),
                    credentials: voronka_core::crypto::Sealed {
                        key_id: "k".into(),
                        data: vec![1],
                    },
                    settings: ChannelSettings {
                        stop_words: vec!["halt".into()],
                        ..ChannelSettings::default()
                    },
                },
            )
            .await
            .expect("channel")
            .id;
        s.write(move |c| {
            c.execute(
                "UPDATE channels SET settings = '{}', runtime = '{}' WHERE id = ?1",
                [ch.0],
            )?;
            Ok(())
        })
        .await
        .expect("blank the columns");
        let got = s.get_channel(ws, ch).await.expect("get");
        assert_eq!(got.settings, ChannelSettings::default());
        assert_eq!(got.runtime, ChannelRuntime::default());
    }
}
