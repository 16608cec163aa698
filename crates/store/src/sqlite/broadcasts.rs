//! BroadcastStore on SQLite: broadcasts and their life cycle, batched planning of the
//! recipients, feeding due recipients into the outbox, engagement, follow-ups, recalls
//! and the report's counters.
//!
//! Every method that changes recipients is one writer job that updates the rows and the
//! counters together ([`Tally`] sums the changes and writes each counter row once), so
//! the counters always equal a count over the rows. Planning decides in Rust over the
//! rows one SQL statement selected (the contacts of a bounded id span with their
//! identities) and inserts with one cached statement: a batch of a few thousand contacts
//! stays a short transaction, so the API keeps answering while a million are planned.

use super::rows::*;
use super::SqliteStore;
use crate::broadcasts::*;
use crate::messaging::consent_for;
use crate::model::Identity;
use crate::{BroadcastStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::types::{Type, Value as Sql};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use voronka_core::broadcast::{
    assign_variant, in_test_group, BroadcastStatus, Engagement, SkipReason,
};
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_core::*;

/// Columns read by [`broadcast_row`].
const BROADCAST_COLS: &str = "id, name, status, spec, revision, send_at, plan_cursor, \
     planned_at, started_at, finished_at, winner_variant, created_at, updated_at, workspace_id";

/// Columns read by [`recipient_row`].
const RECIPIENT_COLS: &str = "id, contact_id, identity_id, channel_id, variant, status, \
     reason, time_zone, run_at, outbox_id, provider_message_id, queued_at, sent_at, \
     delivered_at, read_at, clicked_at, recalled_at, follow_up_outbox_id, follow_up_reason";

/// Recipient rows a sent message may be in (it was accepted by the provider).
const SENT_STATUSES: &str = "('sent', 'delivered', 'read', 'clicked')";

/// Rows changed per writer job when a broadcast is deleted, cancelled or its winner
/// released: a large broadcast is done in transactions of a few tens of milliseconds
/// instead of one that blocks every other write for seconds.
const CHUNK: i64 = 5_000;

/// A count of changed rows as stored numbers.
fn rows_i(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count of changed rows as reported.
fn rows_n(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn conversion(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Integer, msg.into())
}

/// Reads a variant column.
fn variant_at(r: &Row<'_>, idx: usize) -> rusqlite::Result<u8> {
    let v: i64 = r.get(idx)?;
    u8::try_from(v).map_err(|e| conversion(idx, e.to_string()))
}

/// Reads a nullable column holding a stable enum name.
fn parsed_opt<T: std::str::FromStr<Err = String>>(
    r: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    match r.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into())
        }),
    }
}

/// A broadcast row (columns [`BROADCAST_COLS`]).
fn broadcast_row(r: &Row<'_>) -> rusqlite::Result<Broadcast> {
    Ok(Broadcast {
        id: BroadcastId(r.get(0)?),
        name: r.get(1)?,
        status: parsed(r, 2)?,
        spec: json_col(r, 3)?,
        revision: r.get(4)?,
        send_at: ts_opt(r, 5)?,
        plan_cursor: r.get(6)?,
        planned_at: ts_opt(r, 7)?,
        started_at: ts_opt(r, 8)?,
        finished_at: ts_opt(r, 9)?,
        winner_variant: match r.get::<_, Option<i64>>(10)? {
            None => None,
            Some(v) => Some(u8::try_from(v).map_err(|e| conversion(10, e.to_string()))?),
        },
        created_at: ts(r, 11)?,
        updated_at: ts(r, 12)?,
        workspace_id: WorkspaceId(r.get(13)?),
    })
}

/// A recipient row (columns [`RECIPIENT_COLS`], starting at `s`).
fn recipient_at(r: &Row<'_>, s: usize) -> rusqlite::Result<Recipient> {
    Ok(Recipient {
        id: RecipientId(r.get(s)?),
        contact_id: ContactId(r.get(s + 1)?),
        identity_id: r.get::<_, Option<i64>>(s + 2)?.map(IdentityId),
        channel_id: r.get::<_, Option<i64>>(s + 3)?.map(ChannelId),
        variant: variant_at(r, s + 4)?,
        status: parsed(r, s + 5)?,
        reason: parsed_opt(r, s + 6)?,
        time_zone: r.get(s + 7)?,
        run_at: ts_opt(r, s + 8)?,
        outbox_id: r.get::<_, Option<i64>>(s + 9)?.map(OutboxId),
        provider_message_id: r.get(s + 10)?,
        queued_at: ts_opt(r, s + 11)?,
        sent_at: ts_opt(r, s + 12)?,
        delivered_at: ts_opt(r, s + 13)?,
        read_at: ts_opt(r, s + 14)?,
        clicked_at: ts_opt(r, s + 15)?,
        recalled_at: ts_opt(r, s + 16)?,
        follow_up_outbox_id: r.get::<_, Option<i64>>(s + 17)?.map(OutboxId),
        follow_up_reason: parsed_opt(r, s + 18)?,
    })
}

fn get_broadcast(c: &Connection, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast> {
    c.prepare_cached(&format!(
        "SELECT {BROADCAST_COLS} FROM broadcasts WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], broadcast_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("broadcast"))
}

/// A broadcast's status, or NotFound when it is not the workspace's.
fn status_of(c: &Connection, ws: WorkspaceId, id: BroadcastId) -> Result<BroadcastStatus> {
    c.prepare_cached("SELECT status FROM broadcasts WHERE id = ?1 AND workspace_id = ?2")?
        .query_row([id.0, ws.0], |r| parsed(r, 0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("broadcast"))
}

/// Changes to broadcast counters, summed in memory and written once per key at the end
/// of the transaction that made them.
#[derive(Default)]
pub(crate) struct Tally(HashMap<(i64, u8, Cow<'static, str>), i64>);

impl Tally {
    /// Adds `n` (negative to take away) to a counter.
    pub(crate) fn add(
        &mut self,
        broadcast: i64,
        variant: u8,
        key: impl Into<Cow<'static, str>>,
        n: i64,
    ) {
        *self.0.entry((broadcast, variant, key.into())).or_default() += n;
    }

    /// One row moved from the status counted by `from` to the one counted by `to`.
    pub(crate) fn moved(
        &mut self,
        broadcast: i64,
        variant: u8,
        from: &'static str,
        to: impl Into<Cow<'static, str>>,
    ) {
        self.add(broadcast, variant, from, -1);
        self.add(broadcast, variant, to, 1);
    }

    /// Writes the changes (zero sums are left out).
    pub(crate) fn flush(self, c: &Connection) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut stmt = c.prepare_cached(
            "INSERT INTO broadcast_counters (broadcast_id, variant, key, n) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (broadcast_id, variant, key) DO UPDATE SET n = n + excluded.n",
        )?;
        for ((b, v, key), n) in self.0 {
            if n != 0 {
                stmt.execute(params![b, v, key.as_ref(), n])?;
            }
        }
        Ok(())
    }
}

/// `complete_outbox` for a sent message of a broadcast: the recipient becomes `sent`
/// with its provider id (or, for its follow-up, the follow-up is counted sent). A
/// recipient no longer waiting for this message (deleted with its broadcast) is left.
pub(crate) fn outbox_done(
    c: &Connection,
    tally: &mut Tally,
    recipient: RecipientId,
    outbox: OutboxId,
    provider_id: Option<&str>,
    at: Timestamp,
) -> Result<()> {
    let first: Option<(i64, u8)> = c
        .prepare_cached(
            "UPDATE broadcast_recipients SET status = 'sent', sent_at = ?1, provider_message_id = ?2 \
             WHERE id = ?3 AND outbox_id = ?4 AND status = 'queued' RETURNING broadcast_id, variant",
        )?
        .query_row(params![us(at), provider_id, recipient.0, outbox.0], |r| {
            Ok((r.get(0)?, variant_at(r, 1)?))
        })
        .optional()?;
    if let Some((b, v)) = first {
        tally.add(b, v, C_QUEUED, -1);
        tally.add(b, v, C_SENT, 1);
        return Ok(());
    }
    if let Some((b, v)) = follow_up_of(c, recipient, outbox)? {
        tally.add(b, v, C_FOLLOW_UP_SENT, 1);
    }
    Ok(())
}

/// `complete_outbox` for a failed message of a broadcast (see [`outbox_done`]).
pub(crate) fn outbox_failed(
    c: &Connection,
    tally: &mut Tally,
    recipient: RecipientId,
    outbox: OutboxId,
) -> Result<()> {
    let first: Option<(i64, u8)> = c
        .prepare_cached(
            "UPDATE broadcast_recipients SET status = 'failed' \
             WHERE id = ?1 AND outbox_id = ?2 AND status = 'queued' RETURNING broadcast_id, variant",
        )?
        .query_row(params![recipient.0, outbox.0], |r| {
            Ok((r.get(0)?, variant_at(r, 1)?))
        })
        .optional()?;
    if let Some((b, v)) = first {
        tally.moved(b, v, C_QUEUED, C_FAILED);
        return Ok(());
    }
    if let Some((b, v)) = follow_up_of(c, recipient, outbox)? {
        tally.add(b, v, C_FOLLOW_UP_FAILED, 1);
    }
    Ok(())
}

/// The broadcast and variant of a recipient whose follow-up is `outbox`.
fn follow_up_of(
    c: &Connection,
    recipient: RecipientId,
    outbox: OutboxId,
) -> Result<Option<(i64, u8)>> {
    Ok(c.prepare_cached(
        "SELECT broadcast_id, variant FROM broadcast_recipients WHERE id = ?1 AND follow_up_outbox_id = ?2",
    )?
    .query_row([recipient.0, outbox.0], |r| Ok((r.get(0)?, variant_at(r, 1)?)))
    .optional()?)
}

/// Part of a contact's erasure: rows still waiting are skipped as `contact_erased`
/// (their outbox rows were failed by the erasure), and the rows keep only ids, statuses
/// and times — the time zone and the provider's message id go.
pub(crate) fn erase_recipients(c: &Connection, contact: ContactId) -> Result<()> {
    let mut tally = Tally::default();
    let waiting = c
        .prepare_cached(
            "SELECT broadcast_id, variant, status, count(*) FROM broadcast_recipients \
             WHERE contact_id = ?1 AND status IN ('planned', 'queued') \
             GROUP BY broadcast_id, variant, status",
        )?
        .query_map([contact.0], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                variant_at(r, 1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (b, v, status, n) in waiting {
        let from = if status == "planned" {
            C_PLANNED
        } else {
            C_QUEUED
        };
        tally.add(b, v, from, -n);
        tally.add(b, v, skipped_key(SkipReason::ContactErased), n);
    }
    c.prepare_cached(
        "UPDATE broadcast_recipients SET status = 'skipped', reason = 'contact_erased' \
         WHERE contact_id = ?1 AND status IN ('planned', 'queued')",
    )?
    .execute([contact.0])?;
    c.prepare_cached(
        "UPDATE broadcast_recipients SET time_zone = NULL, provider_message_id = NULL \
         WHERE contact_id = ?1",
    )?
    .execute([contact.0])?;
    tally.flush(c)
}

// ------------------------------------------------------------------ planning

/// `plan_broadcast_batch` on the writer.
fn plan_batch(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    req: &PlanRequest,
) -> Result<PlanProgress> {
    let head: Option<(BroadcastStatus, i64, Option<i64>)> = c
        .prepare_cached(
            "SELECT status, plan_cursor, planned_at FROM broadcasts WHERE id = ?1 AND workspace_id = ?2",
        )?
        .query_row([id.0, ws.0], |r| Ok((parsed(r, 0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (status, cursor, planned_at) = head.ok_or_else(|| StoreError::not_found("broadcast"))?;
    if status != BroadcastStatus::Sending {
        return Err(not_sending(status));
    }
    if planned_at.is_some() {
        return Ok(PlanProgress {
            done: true,
            ..PlanProgress::default()
        });
    }
    let batch = i64::from(req.batch.clamp(1, 100_000));
    let at = us(now());
    // The span: the next `batch` contacts of the workspace, matching or not, so a
    // transaction examines a bounded number of contacts however selective the segment.
    let (hi, examined): (Option<i64>, i64) = c
        .prepare_cached(
            "SELECT max(id), count(*) FROM (SELECT id FROM contacts WHERE workspace_id = ?1 \
             AND id > ?2 ORDER BY id LIMIT ?3)",
        )?
        .query_row([ws.0, cursor, batch], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut progress = PlanProgress::default();
    let Some(hi) = hi else {
        c.prepare_cached("UPDATE broadcasts SET planned_at = ?1 WHERE id = ?2")?
            .execute([at, id.0])?;
        progress.done = true;
        return Ok(progress);
    };

    // Parameters are bare `?`, bound in the order they appear in the text (the segment
    // condition appends its own after ours).
    let mut args: Vec<Sql> = Vec::new();
    let topic_ok = match &req.topic {
        Some(t) => {
            args.push(Sql::Text(t.clone()));
            // An empty topic list means every topic.
            "(i.sub_topics = '[]' OR EXISTS (SELECT 1 FROM json_each(i.sub_topics) WHERE value = ?))"
        }
        None => "1",
    };
    let mut sql = format!(
        "SELECT c.id, c.time_zone, i.id, i.channel_id, i.sub_state, {topic_ok}, i.last_seen_at \
         FROM contacts c LEFT JOIN identities i ON i.contact_id = c.id \
         WHERE c.id > ? AND c.id <= ? AND c.workspace_id = ? AND c.erased_at IS NULL"
    );
    args.extend([Sql::Integer(cursor), Sql::Integer(hi), Sql::Integer(ws.0)]);
    if let Some(seg) = &req.segment {
        let cond = super::segments::condition(seg, "c.id", &mut args);
        sql.push_str(" AND (");
        sql.push_str(&cond);
        sql.push(')');
    }
    sql.push_str(" ORDER BY c.id");

    // (contact, time zone, candidates on eligible channels)
    let mut contacts: Vec<(i64, Option<String>, Vec<Candidate>)> = Vec::new();
    {
        let mut stmt = c.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let contact: i64 = r.get(0)?;
            if contacts.last().is_none_or(|(last, ..)| *last != contact) {
                contacts.push((contact, r.get(1)?, Vec::new()));
            }
            let Some(ident) = r.get::<_, Option<i64>>(2)? else {
                continue;
            };
            let channel: i64 = r.get(3)?;
            if !req.channels.iter().any(|ch| ch.0 == channel) {
                continue;
            }
            if let Some((.., cands)) = contacts.last_mut() {
                cands.push(Candidate {
                    id: ident,
                    channel,
                    state: r.get(4)?,
                    topic_ok: r.get(5)?,
                    seen: r.get(6)?,
                });
            }
        }
    }

    // Counted per (variant, reason) here and turned into counter keys once per batch.
    let mut counts: HashMap<(u8, Option<SkipReason>), i64> = HashMap::new();
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO broadcast_recipients (broadcast_id, workspace_id, contact_id, \
         identity_id, channel_id, variant, status, reason, time_zone, run_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let run_at = us(req.run_at);
    for (contact, tz, cands) in contacts {
        progress.contacts += 1;
        let variant = match req.test_percent {
            Some(p) if !in_test_group(id.0, contact, p) => HELD_VARIANT,
            _ => assign_variant(id.0, contact, &req.percents),
        };
        for (ident, reason) in decide(cands, req.preferred_only) {
            let planned = reason.is_none();
            let n = insert.execute(params![
                id.0,
                ws.0,
                contact,
                ident.as_ref().map(|i| i.id),
                ident.as_ref().map(|i| i.channel),
                variant,
                if planned { "planned" } else { "skipped" },
                reason.map(SkipReason::as_str),
                if planned { tz.as_deref() } else { None },
                (planned && variant != HELD_VARIANT).then_some(run_at),
            ])?;
            if n == 0 {
                continue;
            }
            if planned {
                progress.planned += 1;
            } else {
                progress.skipped += 1;
            }
            *counts.entry((variant, reason)).or_default() += 1;
        }
    }
    let mut tally = Tally::default();
    for ((variant, reason), n) in counts {
        match reason {
            None => tally.add(id.0, variant, C_PLANNED, n),
            Some(r) => tally.add(id.0, variant, skipped_key(r), n),
        }
    }
    tally.flush(c)?;
    progress.done = examined < batch;
    c.prepare_cached(
        "UPDATE broadcasts SET plan_cursor = ?1, planned_at = CASE WHEN ?2 THEN ?3 END WHERE id = ?4",
    )?
    .execute(params![hi, progress.done, at, id.0])?;
    Ok(progress)
}

// ------------------------------------------------------------------ feeding

/// The columns of [`DueRecipient`] (minus fields), with the contact's profile and the
/// frequency cap's count; `?1` is the cap's window start.
fn due_select() -> String {
    let profile = PROFILE_COLS
        .split(", ")
        .map(|col| format!("c.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT r.id, r.contact_id, r.identity_id, r.channel_id, r.variant, {profile}, \
         (SELECT count(*) FROM outbox o WHERE o.contact_id = r.contact_id \
             AND o.purpose = 'marketing' AND o.created_at >= ?1) \
         FROM broadcast_recipients r JOIN contacts c ON c.id = r.contact_id"
    )
}

/// A row of [`due_select`].
fn due_row(r: &Row<'_>) -> rusqlite::Result<DueRecipient> {
    let recent: i64 = r.get(13)?;
    Ok(DueRecipient {
        id: RecipientId(r.get(0)?),
        contact_id: ContactId(r.get(1)?),
        identity_id: IdentityId(r.get(2)?),
        channel_id: ChannelId(r.get(3)?),
        variant: variant_at(r, 4)?,
        profile: profile_at(r, 5)?,
        fields: serde_json::Map::new(),
        marketing_recent: u32::try_from(recent).unwrap_or(u32::MAX),
    })
}

/// A contact's custom field values by key.
fn contact_fields(c: &Connection, contact: ContactId) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let mut stmt = c.prepare_cached(
        "SELECT d.id, d.key, d.field_type, cf.value_text, cf.value_num FROM contact_fields cf \
         JOIN field_definitions d ON d.id = cf.field_id WHERE cf.contact_id = ?1",
    )?;
    let rows = stmt.query_map([contact.0], |r| {
        let t: voronka_core::field::FieldType = parsed(r, 2)?;
        let v = voronka_core::field::FieldValue::from_storage(
            FieldId(r.get(0)?),
            t,
            r.get(3)?,
            r.get(4)?,
        );
        Ok((r.get::<_, String>(1)?, v.to_json()))
    })?;
    for row in rows {
        let (k, v) = row?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Why a message may not go to `ident` now (None when it may): the identity must exist,
/// belong to the live contact and be subscribed (with the topic).
fn refusal(
    contact_erased: bool,
    ident: Option<&Identity>,
    topic: Option<&str>,
) -> Option<SkipReason> {
    if contact_erased {
        return Some(SkipReason::ContactErased);
    }
    let Some(ident) = ident else {
        return Some(SkipReason::NoIdentity);
    };
    if let Err(StoreError::Conflict { code, .. }) =
        consent_for(Purpose::Marketing, ident.subscription.state)
    {
        return Some(if code == "blocked" {
            SkipReason::Blocked
        } else {
            SkipReason::NotSubscribed
        });
    }
    let topics = &ident.subscription.topics;
    match topic {
        Some(t) if !topics.is_empty() && !topics.iter().any(|x| x == t) => {
            Some(SkipReason::TopicNotSubscribed)
        }
        _ => None,
    }
}

/// The identity `id` if it (still) belongs to `contact`.
fn identity_of(c: &Connection, id: i64, contact: i64) -> Result<Option<Identity>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {IDENTITY_COLS} FROM identities WHERE id = ?1 AND contact_id = ?2"
    ))?
    .query_row([id, contact], identity_row)
    .optional()?)
}

/// Skips a planned row; returns whether it was planned.
fn skip_planned(
    c: &Connection,
    tally: &mut Tally,
    b: BroadcastId,
    rid: RecipientId,
    reason: SkipReason,
) -> Result<bool> {
    let v: Option<u8> = c
        .prepare_cached(
            "UPDATE broadcast_recipients SET status = 'skipped', reason = ?1 \
             WHERE id = ?2 AND broadcast_id = ?3 AND status = 'planned' RETURNING variant",
        )?
        .query_row(params![reason.as_str(), rid.0, b.0], |r| variant_at(r, 0))
        .optional()?;
    if let Some(v) = v {
        tally.moved(b.0, v, C_PLANNED, skipped_key(reason));
    }
    Ok(v.is_some())
}

/// `feed_recipients` on the writer.
fn feed(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    topic: Option<&str>,
    decisions: &[FeedDecision],
    at: Timestamp,
) -> Result<FeedOutcome> {
    let mut out = FeedOutcome::default();
    // Checked inside the transaction: a pause committed after the feeder read its rows
    // makes this a no-op, so nothing is queued for a paused broadcast.
    if status_of(c, ws, id)? != BroadcastStatus::Sending {
        return Ok(out);
    }
    let source = broadcast_source(id);
    let mut tally = Tally::default();
    for d in decisions {
        match d {
            FeedDecision::Queue { recipient, message } => {
                let row: Option<(i64, Option<i64>, u8, bool)> = c
                    .prepare_cached(
                        "SELECT r.contact_id, r.identity_id, r.variant, c.erased_at IS NOT NULL \
                         FROM broadcast_recipients r JOIN contacts c ON c.id = r.contact_id \
                         WHERE r.id = ?1 AND r.broadcast_id = ?2 AND r.status = 'planned'",
                    )?
                    .query_row([recipient.0, id.0], |r| {
                        Ok((r.get(0)?, r.get(1)?, variant_at(r, 2)?, r.get(3)?))
                    })
                    .optional()?;
                // Not planned any more (skipped, queued by another feeder): nothing to do.
                let Some((contact, ident, variant, erased)) = row else {
                    continue;
                };
                let ident = match ident {
                    Some(i) => identity_of(c, i, contact)?,
                    None => None,
                };
                if let Some(reason) = refusal(erased, ident.as_ref(), topic) {
                    if skip_planned(c, &mut tally, id, *recipient, reason)? {
                        out.skipped += 1;
                    }
                    continue;
                }
                let Some(ident) = ident else { continue };
                let outbox = queue_for(c, ws, &ident, message, &source, at, (id, *recipient))?;
                c.prepare_cached(
                    "UPDATE broadcast_recipients SET status = 'queued', outbox_id = ?1, queued_at = ?2 \
                     WHERE id = ?3",
                )?
                .execute(params![outbox.0, us(at), recipient.0])?;
                tally.moved(id.0, variant, C_PLANNED, C_QUEUED);
                out.queued += 1;
            }
            FeedDecision::Skip { recipient, reason } => {
                if skip_planned(c, &mut tally, id, *recipient, *reason)? {
                    out.skipped += 1;
                }
            }
            FeedDecision::Defer { recipient, until } => {
                out.deferred += rows_n(
                    c.prepare_cached(
                        "UPDATE broadcast_recipients SET run_at = ?1 \
                         WHERE id = ?2 AND broadcast_id = ?3 AND status = 'planned'",
                    )?
                    .execute(params![us(*until), recipient.0, id.0])?,
                );
            }
        }
    }
    tally.flush(c)?;
    Ok(out)
}

/// Inserts a broadcast's marketing message into the outbox, due now, with its
/// `message_queued` event.
fn queue_for(
    c: &Connection,
    ws: WorkspaceId,
    to: &Identity,
    message: &OutboundMessage,
    source: &str,
    at: Timestamp,
    link: (BroadcastId, RecipientId),
) -> Result<OutboxId> {
    super::messaging::queue_linked(
        c,
        ws,
        to,
        Purpose::Marketing,
        message,
        source,
        at,
        at,
        Some(link),
    )
}

/// `feed_follow_ups` on the writer.
fn feed_follow_ups(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    topic: Option<&str>,
    decisions: &[(FeedDecision, Option<(IdentityId, ChannelId)>)],
    at: Timestamp,
) -> Result<FeedOutcome> {
    let mut out = FeedOutcome::default();
    if status_of(c, ws, id)? != BroadcastStatus::Sending {
        return Ok(out);
    }
    let source = broadcast_source(id);
    let mut tally = Tally::default();
    for (d, target) in decisions {
        let (recipient, message, reason) = match d {
            FeedDecision::Queue { recipient, message } => (recipient, Some(message), None),
            FeedDecision::Skip { recipient, reason } => (recipient, None, Some(*reason)),
            FeedDecision::Defer { .. } => continue,
        };
        // Only a sent row whose follow-up is not decided yet.
        let row: Option<(i64, u8, bool)> = c
            .prepare_cached(&format!(
                "SELECT r.contact_id, r.variant, c.erased_at IS NOT NULL \
                 FROM broadcast_recipients r JOIN contacts c ON c.id = r.contact_id \
                 WHERE r.id = ?1 AND r.broadcast_id = ?2 AND r.status IN {SENT_STATUSES} \
                 AND r.follow_up_outbox_id IS NULL AND r.follow_up_reason IS NULL"
            ))?
            .query_row([recipient.0, id.0], |r| {
                Ok((r.get(0)?, variant_at(r, 1)?, r.get(2)?))
            })
            .optional()?;
        let Some((contact, variant, erased)) = row else {
            continue;
        };
        let mut skip = reason;
        let mut ident = None;
        if skip.is_none() {
            ident = match target {
                Some((i, ch)) => identity_of(c, i.0, contact)?.filter(|x| x.channel_id == *ch),
                None => None,
            };
            skip = refusal(erased, ident.as_ref(), topic);
        }
        match (skip, ident, message) {
            (None, Some(ident), Some(message)) => {
                let outbox = queue_for(c, ws, &ident, message, &source, at, (id, *recipient))?;
                c.prepare_cached(
                    "UPDATE broadcast_recipients SET follow_up_outbox_id = ?1 WHERE id = ?2",
                )?
                .execute([outbox.0, recipient.0])?;
                tally.add(id.0, variant, C_FOLLOW_UP_QUEUED, 1);
                out.queued += 1;
            }
            (reason, ..) => {
                let reason = reason.unwrap_or(SkipReason::NoIdentity);
                c.prepare_cached(
                    "UPDATE broadcast_recipients SET follow_up_reason = ?1 WHERE id = ?2",
                )?
                .execute(params![reason.as_str(), recipient.0])?;
                tally.add(id.0, variant, follow_up_skipped_key(reason), 1);
                out.skipped += 1;
            }
        }
    }
    tally.flush(c)?;
    Ok(out)
}

// ------------------------------------------------------------------ life cycle

/// Sends the broadcast's queued outbox rows back: deleted, and their recipients planned
/// again (or their follow-up undecided again). Rows already `sending` stay and finish.
fn pull_back(c: &Connection, id: BroadcastId, tally: &mut Tally) -> Result<()> {
    // `state IN (…)` repeats the partial index's condition so SQLite uses it.
    let pulled = c
        .prepare_cached(
            "DELETE FROM outbox WHERE broadcast_id = ?1 AND state = 'queued' \
             AND state IN ('queued', 'sending') RETURNING id, recipient_id",
        )?
        .query_map([id.0], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (outbox, recipient) in pulled {
        let Some(recipient) = recipient else { continue };
        let v: Option<u8> = c
            .prepare_cached(
                "UPDATE broadcast_recipients SET status = 'planned', outbox_id = NULL, queued_at = NULL \
                 WHERE id = ?1 AND outbox_id = ?2 AND status = 'queued' RETURNING variant",
            )?
            .query_row([recipient, outbox], |r| variant_at(r, 0))
            .optional()?;
        if let Some(v) = v {
            tally.moved(id.0, v, C_QUEUED, C_PLANNED);
            continue;
        }
        let v: Option<u8> = c
            .prepare_cached(
                "UPDATE broadcast_recipients SET follow_up_outbox_id = NULL \
                 WHERE id = ?1 AND follow_up_outbox_id = ?2 RETURNING variant",
            )?
            .query_row([recipient, outbox], |r| variant_at(r, 0))
            .optional()?;
        if let Some(v) = v {
            tally.add(id.0, v, C_FOLLOW_UP_QUEUED, -1);
        }
    }
    Ok(())
}

/// `transition_broadcast` on the writer.
fn transition(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    from: &[BroadcastStatus],
    to: BroadcastStatus,
    send_at: Option<Timestamp>,
    at: Timestamp,
) -> Result<Broadcast> {
    let from_json = serde_json::to_string(&from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Database(format!("cannot encode statuses: {e}")))?;
    let at = us(at);
    let n = c
        .prepare_cached(
            "UPDATE broadcasts SET status = ?1, send_at = coalesce(?2, send_at), updated_at = ?3, \
             started_at = CASE WHEN ?1 = 'sending' THEN coalesce(started_at, ?3) ELSE started_at END, \
             paused_at = CASE WHEN ?1 = 'paused' THEN ?3 ELSE paused_at END, \
             cancelled_at = CASE WHEN ?1 = 'cancelled' THEN ?3 ELSE cancelled_at END, \
             finished_at = CASE WHEN ?1 IN ('finished', 'cancelled') THEN ?3 ELSE finished_at END \
             WHERE id = ?4 AND workspace_id = ?5 AND status IN (SELECT value FROM json_each(?6))",
        )?
        .execute(params![to.as_str(), send_at.map(us), at, id.0, ws.0, from_json])?;
    if n == 0 {
        let current = status_of(c, ws, id)?;
        return Err(invalid_transition(current, to));
    }
    if matches!(to, BroadcastStatus::Paused | BroadcastStatus::Cancelled) {
        let mut tally = Tally::default();
        pull_back(c, id, &mut tally)?;
        tally.flush(c)?;
        if to == BroadcastStatus::Cancelled {
            cancel_chunk(c, id)?;
        }
    }
    get_broadcast(c, ws, id)
}

/// Skips up to [`CHUNK`] planned rows of a cancelled broadcast as `cancelled`; returns
/// whether none is left. Nothing can queue them meanwhile: feeding needs `sending`.
fn cancel_chunk(c: &Connection, id: BroadcastId) -> Result<bool> {
    let skipped = c
        .prepare_cached(
            "UPDATE broadcast_recipients SET status = 'skipped', reason = 'cancelled' WHERE id IN (\
             SELECT id FROM broadcast_recipients WHERE broadcast_id = ?1 AND status = 'planned' \
             LIMIT ?2) RETURNING variant",
        )?
        .query_map([id.0, CHUNK], |r| variant_at(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut tally = Tally::default();
    for v in &skipped {
        tally.moved(id.0, *v, C_PLANNED, skipped_key(SkipReason::Cancelled));
    }
    tally.flush(c)?;
    Ok(rows_i(skipped.len()) < CHUNK)
}

/// `list_recipients` on a read connection. Only the filters given are in the SQL, so
/// each combination gets the plan of its index.
fn list_recipients(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    q: &RecipientQuery,
) -> Result<Vec<Recipient>> {
    status_of(c, ws, id)?;
    let mut sql =
        format!("SELECT {RECIPIENT_COLS} FROM broadcast_recipients WHERE broadcast_id = ?");
    let mut args: Vec<Sql> = vec![Sql::Integer(id.0)];
    if let Some(s) = q.status {
        sql.push_str(" AND status = ?");
        args.push(Sql::Text(s.as_str().into()));
    }
    if let Some(r) = q.reason {
        sql.push_str(" AND reason = ?");
        args.push(Sql::Text(r.as_str().into()));
    }
    if let Some(ct) = q.contact {
        sql.push_str(" AND contact_id = ?");
        args.push(Sql::Integer(ct.0));
    }
    if let Some(a) = q.after {
        sql.push_str(" AND id > ?");
        args.push(Sql::Integer(a.0));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(Sql::Integer(recipient_limit(q.limit)));
    Ok(c.prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| recipient_at(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// `follow_up_due` on a read connection.
fn follow_up_due(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    req: &FollowUpRequest,
    cap_since: Timestamp,
) -> Result<Vec<FollowUpDue>> {
    status_of(c, ws, id)?;
    let engaged = match req.if_not {
        // A click shows the message was seen even without a read receipt.
        Engagement::Read => "r.read_at IS NULL",
        Engagement::Clicked => "1",
    };
    // The conditions repeat the partial index's (broadcast_recipients_follow_up).
    let sql = format!(
        "{} WHERE r.broadcast_id = ?2 AND r.sent_at IS NOT NULL AND r.sent_at < ?3 \
         AND r.follow_up_outbox_id IS NULL AND r.follow_up_reason IS NULL \
         AND r.clicked_at IS NULL AND r.recalled_at IS NULL AND {engaged} \
         AND r.status IN {SENT_STATUSES} AND c.erased_at IS NULL ORDER BY r.sent_at, r.id LIMIT ?4",
        due_select()
    );
    let rows = c
        .prepare_cached(&sql)?
        .query_map(
            params![
                us(cap_since),
                id.0,
                us(req.sent_before),
                recipient_limit(req.limit)
            ],
            due_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        r.fields = contact_fields(c, r.contact_id)?;
        let target = match req.channel {
            None => Some((r.identity_id, r.channel_id)),
            Some(ch) => follow_up_target(c, r.contact_id, ch, req.topic.as_deref())?,
        };
        out.push(FollowUpDue {
            recipient: r,
            target,
        });
    }
    Ok(out)
}

/// The contact's identity on `channel` for a follow-up: subscribed (with the topic)
/// first, then the most recently active, then the newest.
fn follow_up_target(
    c: &Connection,
    contact: ContactId,
    channel: ChannelId,
    topic: Option<&str>,
) -> Result<Option<(IdentityId, ChannelId)>> {
    let mut cands = c
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLS}, last_seen_at FROM identities WHERE contact_id = ?1 AND channel_id = ?2"
        ))?
        .query_map([contact.0, channel.0], |r| {
            Ok((identity_row(r)?, r.get::<_, Option<i64>>(13)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    cands.sort_by(|(a, sa), (b, sb)| {
        let ua = refusal(false, Some(a), topic).is_none();
        let ub = refusal(false, Some(b), topic).is_none();
        ub.cmp(&ua).then(sb.cmp(sa)).then(b.id.cmp(&a.id))
    });
    Ok(cands.first().map(|(i, _)| (i.id, i.channel_id)))
}

/// `release_held`: one chunk on the writer. The first call stores the winner; every
/// chunk releases with the stored one, so a restart half-way never mixes two winners.
fn release_chunk(
    c: &Connection,
    ws: WorkspaceId,
    id: BroadcastId,
    variant: u8,
    run_at: Timestamp,
) -> Result<(u64, bool)> {
    status_of(c, ws, id)?;
    c.prepare_cached(
        "UPDATE broadcasts SET winner_variant = coalesce(winner_variant, ?1), updated_at = ?2 WHERE id = ?3",
    )?
    .execute(params![variant, us(now()), id.0])?;
    let winner: u8 = c
        .prepare_cached("SELECT winner_variant FROM broadcasts WHERE id = ?1")?
        .query_row([id.0], |r| variant_at(r, 0))?;
    // Held rows have no run_at, so the range `run_at IS NULL` of the due index finds them.
    let n = c
        .prepare_cached(
            "UPDATE broadcast_recipients SET variant = ?1, run_at = ?2 WHERE id IN (\
             SELECT id FROM broadcast_recipients WHERE broadcast_id = ?3 AND status = 'planned' \
             AND run_at IS NULL AND variant = ?4 LIMIT ?5)",
        )?
        .execute(params![winner, us(run_at), id.0, HELD_VARIANT, CHUNK])?;
    let n = rows_i(n);
    let mut tally = Tally::default();
    tally.add(id.0, HELD_VARIANT, C_PLANNED, -n);
    tally.add(id.0, winner, C_PLANNED, n);
    tally.flush(c)?;
    Ok((u64::try_from(n).unwrap_or(0), n < CHUNK))
}

#[async_trait]
impl BroadcastStore for SqliteStore {
    async fn create_broadcast(
        &self,
        ws: WorkspaceId,
        name: &str,
        spec: Value,
    ) -> Result<Broadcast> {
        let name = broadcast_name(name)?;
        let segment = spec_segment_id(&spec);
        let spec = to_json(&spec)?;
        self.write(move |c| {
            let at = us(now());
            let r = c
                .prepare_cached(
                    "INSERT INTO broadcasts (workspace_id, name, status, spec, revision, segment_id, \
                     created_at, updated_at) \
                     SELECT ?1, ?2, 'draft', ?3, 1, ?4, ?5, ?5 FROM workspaces WHERE id = ?1",
                )?
                .execute(params![ws.0, name, spec, segment, at]);
            match r {
                Ok(0) => Err(StoreError::not_found("workspace")),
                Ok(_) => get_broadcast(c, ws, BroadcastId(c.last_insert_rowid())),
                Err(e) if is_unique(&e) => Err(name_taken(&name)),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn get_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast> {
        self.read(move |c| get_broadcast(c, ws, id)).await
    }

    async fn list_broadcasts(&self, ws: WorkspaceId) -> Result<Vec<Broadcast>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {BROADCAST_COLS} FROM broadcasts WHERE workspace_id = ?1 ORDER BY id DESC"
            ))?
            .query_map([ws.0], broadcast_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_broadcast(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        revision: Option<i64>,
        name: Option<String>,
        spec: Option<Value>,
    ) -> Result<Broadcast> {
        let name = name.as_deref().map(broadcast_name).transpose()?;
        let segment = spec.as_ref().map(spec_segment_id);
        let spec = spec.as_ref().map(to_json).transpose()?;
        self.write(move |c| {
            let b = get_broadcast(c, ws, id)?;
            if !matches!(
                b.status,
                BroadcastStatus::Draft | BroadcastStatus::Scheduled
            ) {
                return Err(not_editable(b.status));
            }
            if revision.is_some_and(|r| r != b.revision) {
                return Err(stale_revision(b.revision));
            }
            // An edit takes a scheduled broadcast back to draft: it is scheduled again
            // (with a new send time) once the marketer is done.
            let r = c
                .prepare_cached(
                    "UPDATE broadcasts SET name = coalesce(?1, name), spec = coalesce(?2, spec), \
                     segment_id = CASE WHEN ?3 THEN ?4 ELSE segment_id END, status = 'draft', \
                     send_at = NULL, revision = revision + 1, updated_at = ?5 WHERE id = ?6",
                )?
                .execute(params![
                    name,
                    spec,
                    segment.is_some(),
                    segment.flatten(),
                    us(now()),
                    id.0
                ]);
            match r {
                Ok(_) => get_broadcast(c, ws, id),
                Err(e) if is_unique(&e) => Err(name_taken(name.as_deref().unwrap_or_default())),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn delete_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<()> {
        loop {
            // Recipients go in chunks (each its own transaction); the broadcast row goes
            // with the last one, its cascade then has little left to do.
            let done = self
                .write(move |c| {
                    let status = status_of(c, ws, id)?;
                    if status.is_live() {
                        return Err(not_deletable(status));
                    }
                    let n = c
                        .prepare_cached(
                            "DELETE FROM broadcast_recipients WHERE id IN (SELECT id FROM \
                             broadcast_recipients WHERE broadcast_id = ?1 LIMIT ?2)",
                        )?
                        .execute([id.0, CHUNK])?;
                    if rows_i(n) < CHUNK {
                        c.prepare_cached("DELETE FROM broadcasts WHERE id = ?1")?
                            .execute([id.0])?;
                        return Ok(true);
                    }
                    Ok(false)
                })
                .await?;
            if done {
                return Ok(());
            }
        }
    }

    async fn transition_broadcast(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        from: &[BroadcastStatus],
        to: BroadcastStatus,
        send_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Broadcast> {
        let from = from.to_vec();
        let b = self
            .write(move |c| transition(c, ws, id, &from, to, send_at, now))
            .await?;
        if to == BroadcastStatus::Cancelled {
            // The status change and the first chunk committed together; the rest of the
            // planned rows follow in short transactions of their own.
            while !self.write(move |c| cancel_chunk(c, id)).await? {}
        }
        Ok(b)
    }

    async fn active_broadcasts(&self, now: Timestamp) -> Result<Vec<Broadcast>> {
        self.read(move |c| {
            let cols = BROADCAST_COLS
                .split(", ")
                .map(|col| format!("b.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(c.prepare_cached(&format!(
                "SELECT {cols} FROM broadcasts b WHERE (b.status = 'scheduled' AND b.send_at <= ?1) \
                 OR b.status = 'sending' ORDER BY b.id"
            ))?
            .query_map([us(now)], broadcast_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn next_scheduled(&self) -> Result<Option<Timestamp>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT send_at FROM broadcasts WHERE status = 'scheduled' AND send_at IS NOT NULL \
                 ORDER BY send_at LIMIT 1",
            )?
            .query_row([], |r| ts(r, 0))
            .optional()?)
        })
        .await
    }

    async fn plan_broadcast_batch(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &PlanRequest,
    ) -> Result<PlanProgress> {
        let req = req.clone();
        // Every row's references are resolved in the batch itself (the broadcast is read
        // first, the contacts come from `contacts` in the same transaction), so the
        // foreign key probes — two per inserted row — are skipped, as for the import.
        self.write_unchecked(move |c| plan_batch(c, ws, id, &req))
            .await
    }

    async fn planned_time_zones(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<Option<String>>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            Ok(c.prepare_cached(
                "SELECT DISTINCT time_zone FROM broadcast_recipients \
                 WHERE broadcast_id = ?1 AND status = 'planned' ORDER BY time_zone",
            )?
            .query_map([id.0], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_local_times(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        times: Vec<(Option<String>, Timestamp)>,
    ) -> Result<u64> {
        self.write(move |c| {
            status_of(c, ws, id)?;
            let mut n = 0u64;
            // Held rows keep no time: the winner's release gives them one.
            let mut stmt = c.prepare_cached(
                "UPDATE broadcast_recipients SET run_at = ?1 WHERE broadcast_id = ?2 \
                 AND status = 'planned' AND variant <> ?3 AND time_zone IS ?4",
            )?;
            for (tz, at) in &times {
                n += rows_n(stmt.execute(params![us(*at), id.0, HELD_VARIANT, tz])?);
            }
            Ok(n)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)] // the feeder's one query, not a builder's worth
    async fn due_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        channel: Option<ChannelId>,
        now: Timestamp,
        cap_since: Timestamp,
        with_fields: bool,
        limit: u32,
    ) -> Result<Vec<DueRecipient>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            // Held rows have no run_at: the range of the due index leaves them out. Two
            // statements rather than `(?5 IS NULL OR …)`, which the planner cannot turn
            // into a range of the due index's channel column.
            let on_channel = if channel.is_some() {
                "r.channel_id = ?5"
            } else {
                "?5 IS NULL"
            };
            let sql = format!(
                "{} WHERE r.broadcast_id = ?2 AND r.status = 'planned' AND {on_channel} \
                 AND r.run_at <= ?3 ORDER BY r.run_at, r.id LIMIT ?4",
                due_select()
            );
            let mut rows = c
                .prepare_cached(&sql)?
                .query_map(
                    params![
                        us(cap_since),
                        id.0,
                        us(now),
                        i64::from(limit.clamp(1, 10_000)),
                        channel.map(|ch| ch.0)
                    ],
                    due_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if with_fields {
                for r in &mut rows {
                    r.fields = contact_fields(c, r.contact_id)?;
                }
            }
            Ok(rows)
        })
        .await
    }

    async fn broadcast_in_flight(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<(ChannelId, u64)>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            // The partial outbox_broadcast_live index holds exactly these rows.
            Ok(c.prepare_cached(
                "SELECT channel_id, count(*) FROM outbox WHERE broadcast_id = ?1 \
                 AND state IN ('queued', 'sending') GROUP BY channel_id",
            )?
            .query_map([id.0], |r| {
                Ok((
                    ChannelId(r.get(0)?),
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn next_recipient_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Option<Timestamp>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            Ok(c.prepare_cached(
                "SELECT run_at FROM broadcast_recipients WHERE broadcast_id = ?1 \
                 AND status = 'planned' AND run_at IS NOT NULL ORDER BY run_at LIMIT 1",
            )?
            .query_row([id.0], |r| ts(r, 0))
            .optional()?)
        })
        .await
    }

    async fn feed_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<FeedDecision>,
        now: Timestamp,
    ) -> Result<FeedOutcome> {
        let topic = topic.map(str::to_string);
        self.write(move |c| feed(c, ws, id, topic.as_deref(), &decisions, now))
            .await
    }

    async fn broadcast_drained(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        ignore_held: bool,
    ) -> Result<bool> {
        self.read(move |c| {
            let planned_at: Option<i64> = c
                .prepare_cached("SELECT planned_at FROM broadcasts WHERE id = ?1 AND workspace_id = ?2")?
                .query_row([id.0, ws.0], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found("broadcast"))?;
            if planned_at.is_none() {
                return Ok(false);
            }
            // Held rows are the planned rows without a run_at.
            let waiting = if ignore_held {
                "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = ?1 AND status = 'planned' \
                 AND run_at IS NOT NULL"
            } else {
                "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = ?1 AND status = 'planned'"
            };
            if c.prepare_cached(waiting)?.exists([id.0])? {
                return Ok(false);
            }
            let busy = c
                .prepare_cached(
                    "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = ?1 AND status = 'queued'",
                )?
                .exists([id.0])?
                || c.prepare_cached(
                    "SELECT 1 FROM outbox WHERE broadcast_id = ?1 AND state IN ('queued', 'sending')",
                )?
                .exists([id.0])?;
            Ok(!busy)
        })
        .await
    }

    async fn release_held(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        variant: u8,
        run_at: Timestamp,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let (n, done) = self
                .write(move |c| release_chunk(c, ws, id, variant, run_at))
                .await?;
            total += n;
            if done {
                return Ok(total);
            }
        }
    }

    async fn broadcast_counters(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<BroadcastCounter>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            Ok(c.prepare_cached(
                "SELECT variant, key, n FROM broadcast_counters WHERE broadcast_id = ?1 AND n <> 0 \
                 ORDER BY variant, key",
            )?
            .query_map([id.0], |r| {
                Ok(BroadcastCounter {
                    variant: variant_at(r, 0)?,
                    key: r.get(1)?,
                    n: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn list_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        q: RecipientQuery,
    ) -> Result<Vec<Recipient>> {
        self.read(move |c| list_recipients(c, ws, id, &q)).await
    }

    async fn get_recipient(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
    ) -> Result<(BroadcastId, Recipient)> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT broadcast_id, {RECIPIENT_COLS} FROM broadcast_recipients \
                 WHERE id = ?1 AND workspace_id = ?2"
            ))?
            .query_row([id.0, ws.0], |r| {
                Ok((BroadcastId(r.get(0)?), recipient_at(r, 1)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found("recipient"))
        })
        .await
    }

    async fn recipient_by_message(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        provider_message_id: &str,
    ) -> Result<Option<RecipientId>> {
        let pid = provider_message_id.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id FROM broadcast_recipients WHERE identity_id = ?1 \
                 AND provider_message_id = ?2 AND workspace_id = ?3 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![identity.0, pid, ws.0], |r| {
                Ok(RecipientId(r.get(0)?))
            })
            .optional()?)
        })
        .await
    }

    async fn record_recipient_signal(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
        signal: RecipientSignal,
        at: Timestamp,
    ) -> Result<bool> {
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM broadcast_recipients WHERE id = ?1 AND workspace_id = ?2")?
                .exists([id.0, ws.0])?;
            if !exists {
                return Err(StoreError::not_found("recipient"));
            }
            // The status moves forward only (sent → delivered → read → clicked); the time
            // is set once, which is what makes the counter move once.
            let (sql, key) = match signal {
                RecipientSignal::Delivered => (
                    "UPDATE broadcast_recipients SET delivered_at = ?1, \
                     status = CASE WHEN status = 'sent' THEN 'delivered' ELSE status END \
                     WHERE id = ?2 AND delivered_at IS NULL RETURNING broadcast_id, variant",
                    C_DELIVERED,
                ),
                RecipientSignal::Read => (
                    "UPDATE broadcast_recipients SET read_at = ?1, \
                     status = CASE WHEN status IN ('sent', 'delivered') THEN 'read' ELSE status END \
                     WHERE id = ?2 AND read_at IS NULL RETURNING broadcast_id, variant",
                    C_READ,
                ),
                RecipientSignal::Clicked => (
                    "UPDATE broadcast_recipients SET clicked_at = ?1, \
                     status = CASE WHEN status IN ('sent', 'delivered', 'read') THEN 'clicked' ELSE status END \
                     WHERE id = ?2 AND clicked_at IS NULL RETURNING broadcast_id, variant",
                    C_CLICKED,
                ),
            };
            let hit: Option<(i64, u8)> = c
                .prepare_cached(sql)?
                .query_row(params![us(at), id.0], |r| Ok((r.get(0)?, variant_at(r, 1)?)))
                .optional()?;
            let Some((b, v)) = hit else { return Ok(false) };
            let mut tally = Tally::default();
            tally.add(b, v, key, 1);
            tally.flush(c)?;
            Ok(true)
        })
        .await
    }

    async fn follow_up_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &FollowUpRequest,
        cap_since: Timestamp,
    ) -> Result<Vec<FollowUpDue>> {
        let req = req.clone();
        self.read(move |c| follow_up_due(c, ws, id, &req, cap_since))
            .await
    }

    async fn feed_follow_ups(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<(FeedDecision, Option<(IdentityId, ChannelId)>)>,
        now: Timestamp,
    ) -> Result<FeedOutcome> {
        let topic = topic.map(str::to_string);
        self.write(move |c| feed_follow_ups(c, ws, id, topic.as_deref(), &decisions, now))
            .await
    }

    async fn recall_targets(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        sent_after: Timestamp,
        after: Option<RecipientId>,
        limit: u32,
    ) -> Result<Vec<RecallTarget>> {
        self.read(move |c| {
            status_of(c, ws, id)?;
            // An erased contact's outbox row has no address or ids left: nothing to recall.
            Ok(c.prepare_cached(&format!(
                "SELECT r.id, o.channel_id, o.external_id, o.provider_message_ids \
                 FROM broadcast_recipients r JOIN outbox o ON o.id = r.outbox_id \
                 WHERE r.broadcast_id = ?1 AND r.id > ?2 AND r.status IN {SENT_STATUSES} \
                 AND r.sent_at > ?3 AND r.recalled_at IS NULL AND o.provider_message_ids <> '[]' \
                 ORDER BY r.id LIMIT ?4"
            ))?
            .query_map(
                params![
                    id.0,
                    after.map_or(0, |a| a.0),
                    us(sent_after),
                    recipient_limit(limit)
                ],
                |r| {
                    Ok(RecallTarget {
                        recipient: RecipientId(r.get(0)?),
                        channel_id: ChannelId(r.get(1)?),
                        external_id: r.get(2)?,
                        provider_message_ids: strings(r, 3)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn record_recalls(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        results: Vec<RecallResult>,
        at: Timestamp,
    ) -> Result<()> {
        self.write(move |c| {
            status_of(c, ws, id)?;
            let mut tally = Tally::default();
            for r in &results {
                let row: Option<(i64, u8)> = c
                    .prepare_cached(
                        "SELECT contact_id, variant FROM broadcast_recipients \
                         WHERE id = ?1 AND broadcast_id = ?2",
                    )?
                    .query_row([r.recipient.0, id.0], |x| {
                        Ok((x.get(0)?, variant_at(x, 1)?))
                    })
                    .optional()?;
                let Some((contact, v)) = row else { continue };
                let kind = if r.outcome.is_ok() {
                    let n = c
                        .prepare_cached(
                            "UPDATE broadcast_recipients SET recalled_at = ?1 \
                             WHERE id = ?2 AND recalled_at IS NULL",
                        )?
                        .execute([us(at), r.recipient.0])?;
                    if n == 0 {
                        // Recalled before: neither counted nor recorded twice.
                        continue;
                    }
                    tally.add(id.0, v, C_RECALLED, 1);
                    EVENT_RECALLED
                } else {
                    EVENT_RECALL_FAILED
                };
                insert_event(c, ws, ContactId(contact), kind, &recall_event(id, r), at)?;
            }
            tally.flush(c)
        })
        .await
    }
}
