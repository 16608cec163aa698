//! BroadcastStore on PostgreSQL: broadcasts and their life cycle, planning recipients in
//! batches, feeding due recipients into the outbox, engagement, follow-ups, recall and
//! the report's counters.
//!
//! Planning walks the workspace's contacts in id order, `batch` contacts per
//! transaction: each transaction inserts the batch's recipient rows, adds to the counters
//! and moves `plan_cursor`, so a crash re-plans nothing twice and no transaction runs
//! long. Feeding queues up to the caller's page of recipients with a handful of
//! set-based statements (UNNEST arrays), whatever the page size.
//!
//! Lock order, to stay clear of deadlocks: broadcast row, then contacts (in id order),
//! then recipient rows (claimed with `SKIP LOCKED`, so never waited for), then outbox
//! rows, then counters (in key order, one statement per transaction). The broadcast row
//! is read `FOR SHARE` by the feeder and updated by planning and transitions, so a pause
//! waits for a feed in flight and then removes what it queued. Planning also holds the
//! workspace's planning lock ([`PLAN_LOCK`]) that stands in for a foreign key to contacts.

use super::rows;
use super::{is_unique_violation, now_us, parse_stored, ts, ts_opt, PgStore};
use crate::broadcasts::*;
use crate::messaging::queued_event;
use crate::{BroadcastStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap};
use voronka_core::broadcast::{
    assign_variant, in_test_group, BroadcastStatus, Engagement, SkipReason,
};
use voronka_core::event::EventKind;
use voronka_core::field::{FieldType, FieldValue};
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_core::*;

/// Columns read by [`broadcast_row`].
const BROADCAST_COLS: &str = "id, name, status, spec, revision, send_at, plan_cursor, \
     planned_at, started_at, finished_at, winner_variant, created_at, updated_at, workspace_id";

/// Columns read by [`recipient_row`].
const RECIPIENT_COLS: &str = "id, contact_id, identity_id, channel_id, variant, status, \
     reason, time_zone, run_at, outbox_id, provider_message_id, queued_at, sent_at, \
     delivered_at, read_at, clicked_at, recalled_at, follow_up_outbox_id, follow_up_reason";

/// Profile columns of `contacts c`, named as [`rows::profile`] reads them.
const PROFILE_COLS: &str = "c.first_name, c.last_name, c.username, c.language, c.time_zone, \
     c.phone, c.email, c.avatar_url";

/// Statuses of a recipient whose message went out.
const SENT: &str = "('sent', 'delivered', 'read', 'clicked')";

/// Largest planning batch: one transaction stays short even when the caller asks for
/// more.
const MAX_PLAN_BATCH: u32 = 100_000;

/// Recipient rows deleted per transaction when a broadcast is deleted.
const DELETE_CHUNK: i64 = 20_000;

/// Counter deltas of one transaction, keyed (broadcast, variant, key). A BTreeMap so
/// they are written in key order: two transactions never take counter rows in opposite
/// orders.
type Deltas = BTreeMap<(i64, i16, String), i64>;

fn add(d: &mut Deltas, broadcast: i64, variant: i16, key: impl Into<String>, n: i64) {
    *d.entry((broadcast, variant, key.into())).or_insert(0) += n;
}

/// Adds `d` to the counters in one statement.
async fn flush(conn: &mut PgConnection, d: Deltas) -> Result<()> {
    let d: Vec<_> = d.into_iter().filter(|(_, n)| *n != 0).collect();
    if d.is_empty() {
        return Ok(());
    }
    let mut b = Vec::with_capacity(d.len());
    let mut v = Vec::with_capacity(d.len());
    let mut k = Vec::with_capacity(d.len());
    let mut n = Vec::with_capacity(d.len());
    for ((bid, variant, key), delta) in d {
        b.push(bid);
        v.push(variant);
        k.push(key);
        n.push(delta);
    }
    sqlx::query(
        "INSERT INTO broadcast_counters (broadcast_id, variant, key, n)
         SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::text[], $4::bigint[])
         ON CONFLICT (broadcast_id, variant, key) DO UPDATE SET n = broadcast_counters.n + EXCLUDED.n",
    )
    .bind(&b)
    .bind(&v)
    .bind(&k)
    .bind(&n)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A stored variant index.
fn variant(v: i16) -> Result<u8> {
    u8::try_from(v).map_err(|_| StoreError::Database(format!("stored variant {v} is out of range")))
}

fn encode(v: &Value) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Database(format!("cannot encode a JSON column: {e}")))
}

/// A broadcast row (columns [`BROADCAST_COLS`]).
fn broadcast_row(r: &PgRow) -> Result<Broadcast> {
    let status: String = r.try_get("status")?;
    let spec: String = r.try_get("spec")?;
    Ok(Broadcast {
        id: BroadcastId(r.try_get("id")?),
        name: r.try_get("name")?,
        status: parse_stored("broadcast status", &status)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Database(format!("stored broadcast spec is not JSON: {e}")))?,
        revision: r.try_get("revision")?,
        send_at: ts_opt(r.try_get("send_at")?),
        plan_cursor: r.try_get("plan_cursor")?,
        planned_at: ts_opt(r.try_get("planned_at")?),
        started_at: ts_opt(r.try_get("started_at")?),
        finished_at: ts_opt(r.try_get("finished_at")?),
        winner_variant: r
            .try_get::<Option<i16>, _>("winner_variant")?
            .map(variant)
            .transpose()?,
        created_at: ts(r.try_get("created_at")?),
        updated_at: ts(r.try_get("updated_at")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
    })
}

/// A recipient row (columns [`RECIPIENT_COLS`]).
fn recipient_row(r: &PgRow) -> Result<Recipient> {
    let status: String = r.try_get("status")?;
    let reason: Option<String> = r.try_get("reason")?;
    let follow_up_reason: Option<String> = r.try_get("follow_up_reason")?;
    Ok(Recipient {
        id: RecipientId(r.try_get("id")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        identity_id: r.try_get::<Option<i64>, _>("identity_id")?.map(IdentityId),
        channel_id: r.try_get::<Option<i64>, _>("channel_id")?.map(ChannelId),
        variant: variant(r.try_get("variant")?)?,
        status: parse_stored("recipient status", &status)?,
        reason: reason
            .map(|s| parse_stored("skip reason", &s))
            .transpose()?,
        time_zone: r.try_get("time_zone")?,
        run_at: ts_opt(r.try_get("run_at")?),
        outbox_id: r.try_get::<Option<i64>, _>("outbox_id")?.map(OutboxId),
        provider_message_id: r.try_get("provider_message_id")?,
        queued_at: ts_opt(r.try_get("queued_at")?),
        sent_at: ts_opt(r.try_get("sent_at")?),
        delivered_at: ts_opt(r.try_get("delivered_at")?),
        read_at: ts_opt(r.try_get("read_at")?),
        clicked_at: ts_opt(r.try_get("clicked_at")?),
        recalled_at: ts_opt(r.try_get("recalled_at")?),
        follow_up_outbox_id: r
            .try_get::<Option<i64>, _>("follow_up_outbox_id")?
            .map(OutboxId),
        follow_up_reason: follow_up_reason
            .map(|s| parse_stored("skip reason", &s))
            .transpose()?,
    })
}

async fn get_broadcast(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: BroadcastId,
) -> Result<Broadcast> {
    let r = sqlx::query(&format!(
        "SELECT {BROADCAST_COLS} FROM broadcasts WHERE id = $1 AND workspace_id = $2"
    ))
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("broadcast"))?;
    broadcast_row(&r)
}

/// NotFound unless broadcast `id` is the workspace's.
async fn broadcast_exists(conn: &mut PgConnection, ws: WorkspaceId, id: BroadcastId) -> Result<()> {
    let ok: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM broadcasts WHERE id = $1 AND workspace_id = $2)")
            .bind(id.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
    if ok {
        Ok(())
    } else {
        Err(StoreError::not_found("broadcast"))
    }
}

/// The broadcast's status, locked for the rest of the transaction with `lock` (`FOR
/// SHARE` / `FOR UPDATE`); NotFound when it is not the workspace's.
async fn lock_broadcast(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: BroadcastId,
    lock: &str,
) -> Result<(BroadcastStatus, i64, Option<i64>, i64)> {
    let r = sqlx::query(&format!(
        "SELECT status, plan_cursor, planned_at, revision FROM broadcasts
         WHERE id = $1 AND workspace_id = $2 {lock}"
    ))
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("broadcast"))?;
    let status: String = r.try_get(0)?;
    Ok((
        parse_stored("broadcast status", &status)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
    ))
}

// ------------------------------------------------------------------------------------
// Planning

/// Topic test of `identities i` against the topic bound as `$3` (text, may be NULL): an
/// identity without topics takes every topic.
const TOPIC_OK: &str =
    "($3::text IS NULL OR i.sub_topics = '[]'::jsonb OR i.sub_topics ? $3::text)";

/// The key of a workspace's planning lock, for the workspace id bound as `$1`. A
/// planning batch holds it exclusively; the statements that remove a contact's recipient
/// rows (the contacts delete trigger of the migration, erasure) hold it shared. Recipient
/// rows have no foreign key to contacts (its per-row check would double the cost of
/// planning), so this is what keeps a batch from inserting rows for a contact deleted
/// meanwhile: whichever comes second sees the other's committed work. The migration's
/// trigger computes the same key.
const PLAN_LOCK: &str = "hashtextextended('voronka_plan:' || $1::bigint::text, 0)";

/// `plan_broadcast_batch` inside its transaction.
async fn plan_batch(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: BroadcastId,
    req: &PlanRequest,
) -> Result<PlanProgress> {
    let (status, cursor, planned_at, _) = lock_broadcast(conn, ws, id, "FOR NO KEY UPDATE").await?;
    if status != BroadcastStatus::Sending {
        return Err(not_sending(status));
    }
    if planned_at.is_some() {
        return Ok(PlanProgress {
            done: true,
            ..PlanProgress::default()
        });
    }
    // Contact deletion and erasure wait for this batch (and it for them): see
    // [`PLAN_LOCK`].
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({PLAN_LOCK})"))
        .bind(ws.0)
        .execute(&mut *conn)
        .await?;
    let batch = i64::from(req.batch.clamp(1, MAX_PLAN_BATCH));
    let now = now_us();
    // The span: the next `batch` contacts of the workspace, matching or not, so a
    // transaction examines a bounded number of contacts however selective the segment.
    let span = sqlx::query(
        "SELECT max(id), count(*) FROM (SELECT id FROM contacts WHERE workspace_id = $1 AND id > $2
             ORDER BY id LIMIT $3) s",
    )
    .bind(ws.0)
    .bind(cursor)
    .bind(batch)
    .fetch_one(&mut *conn)
    .await?;
    let hi: Option<i64> = span.try_get(0)?;
    let examined: i64 = span.try_get(1)?;
    let mut progress = PlanProgress::default();
    let Some(hi) = hi else {
        sqlx::query("UPDATE broadcasts SET planned_at = $2 WHERE id = $1")
            .bind(id.0)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        progress.done = true;
        return Ok(progress);
    };

    let channels: std::collections::HashSet<i64> = req.channels.iter().map(|c| c.0).collect();
    let mut qb: QueryBuilder<'_, Postgres> =
        QueryBuilder::new("SELECT c.id, c.time_zone, i.id, i.channel_id, i.sub_state, ");
    match &req.topic {
        Some(t) => {
            qb.push("(i.sub_topics = '[]'::jsonb OR i.sub_topics ? ")
                .push_bind(t.clone())
                .push("::text)");
        }
        None => {
            qb.push("true");
        }
    }
    // Channels are filtered below, not in the join: a channel condition here invites
    // the planner to AND the channel's index (every identity of the channel) into each
    // contact's probe when statistics are thin, right after a big import.
    // The span repeated on identities lets both sides be read as index ranges and
    // merged, instead of one identity probe per contact.
    qb.push(
        ", i.last_seen_at FROM contacts c LEFT JOIN identities i ON i.contact_id = c.id AND i.contact_id > ",
    )
    .push_bind(cursor)
    .push(" AND i.contact_id <= ")
    .push_bind(hi)
    .push(" WHERE c.id > ")
    .push_bind(cursor)
    .push(" AND c.id <= ")
    .push_bind(hi)
    .push(" AND c.workspace_id = ")
    .push_bind(ws.0)
    .push(" AND c.erased_at IS NULL");
    if let Some(seg) = &req.segment {
        qb.push(" AND (");
        super::segments::push_condition(&mut qb, seg, "c.id");
        qb.push(")");
    }
    qb.push(" ORDER BY c.id");
    // (contact, time zone, candidates on eligible channels)
    let mut contacts: Vec<(i64, Option<String>, Vec<Candidate>)> = Vec::new();
    for r in qb.build().fetch_all(&mut *conn).await? {
        let contact: i64 = r.try_get(0)?;
        if contacts.last().is_none_or(|(last, ..)| *last != contact) {
            contacts.push((contact, r.try_get(1)?, Vec::new()));
        }
        let Some(ident) = r.try_get::<Option<i64>, _>(2)? else {
            continue;
        };
        let channel: i64 = r.try_get(3)?;
        if !channels.contains(&channel) {
            continue;
        }
        if let Some((.., cands)) = contacts.last_mut() {
            cands.push(Candidate {
                id: ident,
                channel,
                state: r.try_get(4)?,
                topic_ok: r.try_get::<Option<bool>, _>(5)?.unwrap_or(false),
                seen: r.try_get(6)?,
            });
        }
    }

    let mut c_ids = Vec::new();
    let mut i_ids = Vec::new();
    let mut ch_ids = Vec::new();
    let mut variants = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    let mut tzs = Vec::new();
    let mut run_ats = Vec::new();
    let run_at = req.run_at.as_microsecond();
    for (contact, tz, cands) in contacts {
        progress.contacts += 1;
        let variant = match req.test_percent {
            Some(p) if !in_test_group(id.0, contact, p) => HELD_VARIANT,
            _ => assign_variant(id.0, contact, &req.percents),
        };
        for (ident, reason) in decide(cands, req.preferred_only) {
            let planned = reason.is_none();
            c_ids.push(contact);
            i_ids.push(ident.as_ref().map(|i| i.id));
            ch_ids.push(ident.as_ref().map(|i| i.channel));
            variants.push(i16::from(variant));
            statuses.push(if planned { "planned" } else { "skipped" });
            reasons.push(reason.map(SkipReason::as_str));
            tzs.push(if planned { tz.clone() } else { None });
            run_ats.push((planned && variant != HELD_VARIANT).then_some(run_at));
        }
    }
    if !c_ids.is_empty() {
        // No ON CONFLICT: the broadcast's row lock and the cursor make a second insert
        // of a batch impossible, and the speculative insertion would cost a third more.
        let counted = sqlx::query(
            "WITH ins AS (
                 INSERT INTO broadcast_recipients (broadcast_id, workspace_id, contact_id,
                     identity_id, channel_id, variant, status, reason, time_zone, run_at)
                 SELECT $1, $2, d.* FROM unnest($3::bigint[], $4::bigint[], $5::bigint[],
                     $6::smallint[], $7::text[], $8::text[], $9::text[], $10::bigint[]) AS d
                 RETURNING variant, status, reason),
             sums AS (
                 SELECT variant,
                        CASE WHEN status = 'planned' THEN 'planned' ELSE 'skipped:' || reason END AS key,
                        count(*) AS n
                 FROM ins GROUP BY 1, 2),
             upd AS (
                 INSERT INTO broadcast_counters (broadcast_id, variant, key, n)
                 SELECT $1, variant, key, n FROM sums ORDER BY variant, key
                 ON CONFLICT (broadcast_id, variant, key)
                 DO UPDATE SET n = broadcast_counters.n + EXCLUDED.n)
             SELECT key = 'planned', n FROM sums",
        )
        .bind(id.0)
        .bind(ws.0)
        .bind(&c_ids)
        .bind(&i_ids)
        .bind(&ch_ids)
        .bind(&variants)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&tzs)
        .bind(&run_ats)
        .fetch_all(&mut *conn)
        .await?;
        for r in &counted {
            let planned: bool = r.try_get(0)?;
            let n = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
            if planned {
                progress.planned += n;
            } else {
                progress.skipped += n;
            }
        }
    }
    progress.done = examined < batch;
    sqlx::query(
        "UPDATE broadcasts SET plan_cursor = $2, planned_at = CASE WHEN $3 THEN $4 END WHERE id = $1",
    )
    .bind(id.0)
    .bind(hi)
    .bind(progress.done)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(progress)
}

// ------------------------------------------------------------------------------------
// Feeding

/// A message to queue for a recipient, consent checked.
struct Queueable {
    recipient: i64,
    contact: i64,
    identity: i64,
    channel: i64,
    external_id: String,
    variant: i16,
    message: OutboundMessage,
}

/// What the consent re-check reads about a recipient's target identity.
struct Target {
    recipient: i64,
    contact: i64,
    variant: i16,
    erased: bool,
    identity: Option<i64>,
    channel: Option<i64>,
    external_id: Option<String>,
    state: Option<String>,
    topic_ok: bool,
}

impl Target {
    /// Why nothing may be queued to this identity now, if so.
    fn refusal(&self) -> Option<SkipReason> {
        if self.erased {
            return Some(SkipReason::ContactErased);
        }
        match self.state.as_deref() {
            None => Some(SkipReason::NoIdentity),
            Some("blocked") => Some(SkipReason::Blocked),
            Some("subscribed") if !self.topic_ok => Some(SkipReason::TopicNotSubscribed),
            Some("subscribed") => None,
            Some(_) => Some(SkipReason::NotSubscribed),
        }
    }
}

fn target_row(r: &PgRow) -> Result<Target> {
    Ok(Target {
        recipient: r.try_get("rid")?,
        contact: r.try_get("contact_id")?,
        variant: r.try_get("variant")?,
        erased: r.try_get::<Option<i64>, _>("erased_at")?.is_some(),
        identity: r.try_get("iid")?,
        channel: r.try_get("ichannel")?,
        external_id: r.try_get("external_id")?,
        state: r.try_get("sub_state")?,
        topic_ok: r.try_get::<Option<bool>, _>("topic_ok")?.unwrap_or(false),
    })
}

/// Share-locks the contacts of `recipients` (in id order) for the rest of the
/// transaction: an erasure then waits for this feed (and fails what it queued) or runs
/// first (and this feed sees the contact erased).
async fn lock_contacts(conn: &mut PgConnection, broadcast: i64, recipients: &[i64]) -> Result<()> {
    sqlx::query(
        "SELECT c.id FROM contacts c
         WHERE c.id IN (SELECT contact_id FROM broadcast_recipients WHERE id = ANY($1) AND broadcast_id = $2)
         ORDER BY c.id FOR SHARE OF c",
    )
    .bind(recipients)
    .bind(broadcast)
    .fetch_all(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts the outbox rows and their `message_queued` events; returns (recipient,
/// outbox id) pairs.
async fn queue_rows(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    broadcast: i64,
    rows: &[Queueable],
    now: i64,
) -> Result<Vec<(i64, i64)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let source = broadcast_source(BroadcastId(broadcast));
    let purpose = Purpose::Marketing;
    let n = rows.len();
    let mut channel = Vec::with_capacity(n);
    let mut contact = Vec::with_capacity(n);
    let mut identity = Vec::with_capacity(n);
    let mut external = Vec::with_capacity(n);
    let mut message = Vec::with_capacity(n);
    let mut choices = Vec::with_capacity(n);
    let mut recipient = Vec::with_capacity(n);
    for q in rows {
        channel.push(q.channel);
        contact.push(q.contact);
        identity.push(q.identity);
        external.push(q.external_id.as_str());
        message.push(
            serde_json::to_string(&q.message)
                .map_err(|e| StoreError::Database(format!("cannot encode a message: {e}")))?,
        );
        choices.push(!q.message.choices().is_empty());
        recipient.push(q.recipient);
    }
    let inserted = sqlx::query(
        "INSERT INTO outbox (workspace_id, channel_id, contact_id, identity_id, external_id, purpose,
             message, has_choices, source, state, run_at, created_at, broadcast_id, recipient_id)
         SELECT $1, d.channel, d.contact, d.identity, d.external, $2, d.message::jsonb, d.choices,
                $3, 'queued', $4, $4, $5, d.recipient
         FROM unnest($6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::text[],
                     $11::boolean[], $12::bigint[])
              AS d(channel, contact, identity, external, message, choices, recipient)
         RETURNING id, recipient_id, contact_id, channel_id",
    )
    .bind(ws.0)
    .bind(purpose.as_str())
    .bind(&source)
    .bind(now)
    .bind(broadcast)
    .bind(&channel)
    .bind(&contact)
    .bind(&identity)
    .bind(&external)
    .bind(&message)
    .bind(&choices)
    .bind(&recipient)
    .fetch_all(&mut *conn)
    .await?;
    let mut pairs = Vec::with_capacity(n);
    let mut ev_contact = Vec::with_capacity(n);
    let mut ev_data = Vec::with_capacity(n);
    for r in &inserted {
        let outbox: i64 = r.try_get(0)?;
        let recipient: Option<i64> = r.try_get(1)?;
        let c: i64 = r.try_get(2)?;
        let ch: i64 = r.try_get(3)?;
        if let Some(rec) = recipient {
            pairs.push((rec, outbox));
        }
        ev_contact.push(c);
        ev_data.push(encode(&queued_event(
            OutboxId(outbox),
            ChannelId(ch),
            &source,
            purpose,
        ))?);
    }
    sqlx::query(
        "INSERT INTO events (workspace_id, contact_id, kind, data, created_at)
         SELECT $1, d.contact, $2, d.data::jsonb, $3
         FROM unnest($4::bigint[], $5::text[]) AS d(contact, data)",
    )
    .bind(ws.0)
    .bind(EventKind::MessageQueued.as_str())
    .bind(now)
    .bind(&ev_contact)
    .bind(&ev_data)
    .execute(&mut *conn)
    .await?;
    Ok(pairs)
}

/// `feed_recipients` inside its transaction.
async fn feed(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: BroadcastId,
    topic: Option<&str>,
    decisions: Vec<FeedDecision>,
    now: i64,
) -> Result<FeedOutcome> {
    let mut out = FeedOutcome::default();
    let (status, ..) = lock_broadcast(conn, ws, id, "FOR SHARE").await?;
    if status != BroadcastStatus::Sending {
        return Ok(out);
    }
    let mut messages: HashMap<i64, OutboundMessage> = HashMap::new();
    let mut skips: Vec<(i64, &'static str)> = Vec::new();
    let mut defers: Vec<(i64, i64)> = Vec::new();
    for d in decisions {
        match d {
            FeedDecision::Queue { recipient, message } => {
                messages.insert(recipient.0, message);
            }
            FeedDecision::Skip { recipient, reason } => skips.push((recipient.0, reason.as_str())),
            FeedDecision::Defer { recipient, until } => {
                defers.push((recipient.0, until.as_microsecond()));
            }
        }
    }
    let mut deltas = Deltas::new();

    if !messages.is_empty() {
        let mut ids: Vec<i64> = messages.keys().copied().collect();
        ids.sort_unstable();
        lock_contacts(conn, id.0, &ids).await?;
        // SKIP LOCKED: a row another feeder holds is that feeder's to queue.
        let targets = sqlx::query(&format!(
            "SELECT r.id AS rid, r.contact_id, r.variant, c.erased_at, i.id AS iid,
                    i.channel_id AS ichannel, i.external_id, i.sub_state, {TOPIC_OK} AS topic_ok
             FROM broadcast_recipients r
             JOIN contacts c ON c.id = r.contact_id
             LEFT JOIN identities i ON i.id = r.identity_id AND i.contact_id = r.contact_id
             WHERE r.id = ANY($1) AND r.broadcast_id = $2 AND r.status = 'planned'
             ORDER BY r.id
             FOR UPDATE OF r SKIP LOCKED"
        ))
        .bind(&ids)
        .bind(id.0)
        .bind(topic)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(target_row)
        .collect::<Result<Vec<_>>>()?;
        let mut queue = Vec::with_capacity(targets.len());
        for t in targets {
            if let Some(reason) = t.refusal() {
                skips.push((t.recipient, reason.as_str()));
                continue;
            }
            let (Some(identity), Some(channel), Some(external_id), Some(message)) = (
                t.identity,
                t.channel,
                t.external_id,
                messages.remove(&t.recipient),
            ) else {
                continue;
            };
            queue.push(Queueable {
                recipient: t.recipient,
                contact: t.contact,
                identity,
                channel,
                external_id,
                variant: t.variant,
                message,
            });
        }
        let variants: HashMap<i64, i16> = queue.iter().map(|q| (q.recipient, q.variant)).collect();
        let pairs = queue_rows(conn, ws, id.0, &queue, now).await?;
        if !pairs.is_empty() {
            let (rids, oids): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
            sqlx::query(
                "UPDATE broadcast_recipients r SET status = 'queued', outbox_id = d.outbox, queued_at = $3
                 FROM unnest($1::bigint[], $2::bigint[]) AS d(id, outbox) WHERE r.id = d.id",
            )
            .bind(&rids)
            .bind(&oids)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            for (rid, _) in &pairs {
                let v = variants.get(rid).copied().unwrap_or(0);
                add(&mut deltas, id.0, v, C_PLANNED, -1);
                add(&mut deltas, id.0, v, C_QUEUED, 1);
            }
            out.queued = pairs.len() as u64;
        }
    }

    if !skips.is_empty() {
        let (rids, reasons): (Vec<i64>, Vec<&str>) = skips.into_iter().unzip();
        let rows = sqlx::query(
            "UPDATE broadcast_recipients r SET status = 'skipped', reason = d.reason
             FROM unnest($1::bigint[], $2::text[]) AS d(id, reason)
             WHERE r.id = d.id AND r.broadcast_id = $3 AND r.status = 'planned'
             RETURNING r.variant, r.reason",
        )
        .bind(&rids)
        .bind(&reasons)
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            let v: i16 = r.try_get(0)?;
            let reason: String = r.try_get(1)?;
            add(&mut deltas, id.0, v, C_PLANNED, -1);
            add(&mut deltas, id.0, v, format!("skipped:{reason}"), 1);
        }
        out.skipped = rows.len() as u64;
    }

    if !defers.is_empty() {
        let (rids, untils): (Vec<i64>, Vec<i64>) = defers.into_iter().unzip();
        out.deferred = sqlx::query(
            "UPDATE broadcast_recipients r SET run_at = d.until
             FROM unnest($1::bigint[], $2::bigint[]) AS d(id, until)
             WHERE r.id = d.id AND r.broadcast_id = $3 AND r.status = 'planned'",
        )
        .bind(&rids)
        .bind(&untils)
        .bind(id.0)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    flush(conn, deltas).await?;
    Ok(out)
}

/// `feed_follow_ups` inside its transaction.
async fn feed_follow_ups(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: BroadcastId,
    topic: Option<&str>,
    decisions: Vec<(FeedDecision, Option<(IdentityId, ChannelId)>)>,
    now: i64,
) -> Result<FeedOutcome> {
    let mut out = FeedOutcome::default();
    let (status, ..) = lock_broadcast(conn, ws, id, "FOR SHARE").await?;
    if status != BroadcastStatus::Sending {
        return Ok(out);
    }
    let mut messages: HashMap<i64, (OutboundMessage, IdentityId, ChannelId)> = HashMap::new();
    let mut skips: Vec<(i64, &'static str)> = Vec::new();
    for (d, target) in decisions {
        match (d, target) {
            (FeedDecision::Queue { recipient, message }, Some((identity, channel))) => {
                messages.insert(recipient.0, (message, identity, channel));
            }
            (FeedDecision::Queue { recipient, .. }, None) => {
                skips.push((recipient.0, SkipReason::NoIdentity.as_str()));
            }
            (FeedDecision::Skip { recipient, reason }, _) => {
                skips.push((recipient.0, reason.as_str()));
            }
            // Follow-ups are not deferred.
            (FeedDecision::Defer { .. }, _) => {}
        }
    }
    let mut deltas = Deltas::new();
    if !messages.is_empty() {
        let mut ids: Vec<i64> = messages.keys().copied().collect();
        ids.sort_unstable();
        let idents: Vec<i64> = ids
            .iter()
            .map(|r| messages.get(r).map_or(0, |(_, i, _)| i.0))
            .collect();
        let channels: Vec<i64> = ids
            .iter()
            .map(|r| messages.get(r).map_or(0, |(.., c)| c.0))
            .collect();
        lock_contacts(conn, id.0, &ids).await?;
        // The target must still be an identity of the recipient's contact.
        let targets = sqlx::query(&format!(
            "SELECT r.id AS rid, r.contact_id, r.variant, c.erased_at, i.id AS iid,
                    i.channel_id AS ichannel, i.external_id, i.sub_state, {TOPIC_OK} AS topic_ok
             FROM unnest($1::bigint[], $4::bigint[], $5::bigint[]) AS d(id, identity, channel)
             JOIN broadcast_recipients r ON r.id = d.id
             JOIN contacts c ON c.id = r.contact_id
             LEFT JOIN identities i ON i.id = d.identity AND i.contact_id = r.contact_id
                 AND i.channel_id = d.channel
             WHERE r.broadcast_id = $2 AND r.status IN {SENT}
               AND r.follow_up_outbox_id IS NULL AND r.follow_up_reason IS NULL
             ORDER BY r.id
             FOR UPDATE OF r SKIP LOCKED"
        ))
        .bind(&ids)
        .bind(id.0)
        .bind(topic)
        .bind(&idents)
        .bind(&channels)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(target_row)
        .collect::<Result<Vec<_>>>()?;
        let mut queue = Vec::with_capacity(targets.len());
        for t in targets {
            if let Some(reason) = t.refusal() {
                skips.push((t.recipient, reason.as_str()));
                continue;
            }
            let (Some(identity), Some(channel), Some(external_id), Some((message, ..))) = (
                t.identity,
                t.channel,
                t.external_id,
                messages.remove(&t.recipient),
            ) else {
                continue;
            };
            queue.push(Queueable {
                recipient: t.recipient,
                contact: t.contact,
                identity,
                channel,
                external_id,
                variant: t.variant,
                message,
            });
        }
        let variants: HashMap<i64, i16> = queue.iter().map(|q| (q.recipient, q.variant)).collect();
        let pairs = queue_rows(conn, ws, id.0, &queue, now).await?;
        if !pairs.is_empty() {
            let (rids, oids): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
            sqlx::query(
                "UPDATE broadcast_recipients r SET follow_up_outbox_id = d.outbox
                 FROM unnest($1::bigint[], $2::bigint[]) AS d(id, outbox) WHERE r.id = d.id",
            )
            .bind(&rids)
            .bind(&oids)
            .execute(&mut *conn)
            .await?;
            for (rid, _) in &pairs {
                let v = variants.get(rid).copied().unwrap_or(0);
                add(&mut deltas, id.0, v, C_FOLLOW_UP_QUEUED, 1);
            }
            out.queued = pairs.len() as u64;
        }
    }
    if !skips.is_empty() {
        let (rids, reasons): (Vec<i64>, Vec<&str>) = skips.into_iter().unzip();
        let rows = sqlx::query(&format!(
            "UPDATE broadcast_recipients r SET follow_up_reason = d.reason
             FROM unnest($1::bigint[], $2::text[]) AS d(id, reason)
             WHERE r.id = d.id AND r.broadcast_id = $3 AND r.status IN {SENT}
               AND r.follow_up_outbox_id IS NULL AND r.follow_up_reason IS NULL
             RETURNING r.variant, r.follow_up_reason"
        ))
        .bind(&rids)
        .bind(&reasons)
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            let reason: String = r.try_get(1)?;
            add(
                &mut deltas,
                id.0,
                r.try_get(0)?,
                format!("follow_up_skipped:{reason}"),
                1,
            );
        }
        out.skipped = rows.len() as u64;
    }
    flush(conn, deltas).await?;
    Ok(out)
}

/// Deletes the broadcast's outbox rows still `queued` and puts their recipients back
/// (main message: `planned`; follow-up: undecided); rows already `sending` finish.
async fn unqueue(conn: &mut PgConnection, id: BroadcastId, deltas: &mut Deltas) -> Result<()> {
    let rows = sqlx::query(
        "WITH del AS (
             DELETE FROM outbox WHERE broadcast_id = $1 AND state = 'queued'
             RETURNING id, recipient_id),
         main AS (
             UPDATE broadcast_recipients r SET status = 'planned', outbox_id = NULL, queued_at = NULL
             FROM del WHERE r.id = del.recipient_id AND r.outbox_id = del.id AND r.status = 'queued'
             RETURNING r.variant, 'queued' AS key),
         follow AS (
             UPDATE broadcast_recipients r SET follow_up_outbox_id = NULL
             FROM del WHERE r.id = del.recipient_id AND r.follow_up_outbox_id = del.id
             RETURNING r.variant, 'follow_up_queued' AS key)
         SELECT variant, key, count(*) FROM (SELECT * FROM main UNION ALL SELECT * FROM follow) x
         GROUP BY variant, key",
    )
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let v: i16 = r.try_get(0)?;
        let key: String = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        add(deltas, id.0, v, key.as_str(), -n);
        if key == C_QUEUED {
            add(deltas, id.0, v, C_PLANNED, n);
        }
    }
    Ok(())
}

/// Loads custom field values by key for `contacts`.
async fn fields_of(
    conn: &mut PgConnection,
    contacts: &[i64],
) -> Result<HashMap<i64, serde_json::Map<String, Value>>> {
    let mut out: HashMap<i64, serde_json::Map<String, Value>> = HashMap::new();
    if contacts.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT cf.contact_id, cf.field_id, d.key, d.field_type, cf.value_text, cf.value_num
         FROM contact_fields cf JOIN field_definitions d ON d.id = cf.field_id
         WHERE cf.contact_id = ANY($1)",
    )
    .bind(contacts)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let t: String = r.try_get(3)?;
        let v = FieldValue::from_storage(
            FieldId(r.try_get(1)?),
            parse_stored::<FieldType>("field type", &t)?,
            r.try_get(4)?,
            r.try_get(5)?,
        );
        out.entry(r.try_get(0)?)
            .or_default()
            .insert(r.try_get(2)?, v.to_json());
    }
    Ok(out)
}

/// A due row (recipient columns `rid, contact_id, identity_id, channel_id, variant`,
/// [`PROFILE_COLS`] and `recent`).
fn due_row(r: &PgRow) -> Result<DueRecipient> {
    Ok(DueRecipient {
        id: RecipientId(r.try_get("rid")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        identity_id: IdentityId(r.try_get::<Option<i64>, _>("identity_id")?.unwrap_or(0)),
        channel_id: ChannelId(r.try_get::<Option<i64>, _>("channel_id")?.unwrap_or(0)),
        variant: variant(r.try_get("variant")?)?,
        profile: rows::profile(r)?,
        fields: serde_json::Map::new(),
        marketing_recent: u32::try_from(r.try_get::<i64, _>("recent")?).unwrap_or(u32::MAX),
    })
}

/// Marketing messages to `r.contact_id` since `$cap`, as SQL.
fn recent(cap: &str) -> String {
    format!(
        "(SELECT count(*) FROM outbox o WHERE o.contact_id = r.contact_id
             AND o.purpose = 'marketing' AND o.created_at >= {cap}) AS recent"
    )
}

/// The outcome of one broadcast message, for `complete_outbox`.
pub(crate) struct SentRecipient {
    /// The outbox row.
    pub(crate) outbox: i64,
    /// Its recipient row.
    pub(crate) recipient: i64,
    /// Accepted by the provider (else failed for good).
    pub(crate) sent: bool,
    /// The provider's id of the first part.
    pub(crate) provider_message_id: Option<String>,
}

/// Moves the recipients of completed broadcast messages to `sent` / `failed` and their
/// counters, in one statement plus the counters' one. The row of a follow-up keeps its
/// status (it tells how the first message went) and only counts the follow-up.
pub(crate) async fn complete_recipients(
    conn: &mut PgConnection,
    done: &[SentRecipient],
    now: i64,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let outbox: Vec<i64> = done.iter().map(|d| d.outbox).collect();
    let recipient: Vec<i64> = done.iter().map(|d| d.recipient).collect();
    let sent: Vec<bool> = done.iter().map(|d| d.sent).collect();
    let provider: Vec<Option<&str>> = done
        .iter()
        .map(|d| d.provider_message_id.as_deref())
        .collect();
    let rows = sqlx::query(
        "WITH d AS (
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::boolean[], $4::text[])
                 AS d(outbox, recipient, sent, provider)),
         main AS (
             UPDATE broadcast_recipients r
             SET status = CASE WHEN d.sent THEN 'sent' ELSE 'failed' END,
                 sent_at = CASE WHEN d.sent THEN $5 ELSE r.sent_at END,
                 provider_message_id = CASE WHEN d.sent THEN d.provider ELSE r.provider_message_id END
             FROM d WHERE r.id = d.recipient AND r.outbox_id = d.outbox AND r.status = 'queued'
             RETURNING r.broadcast_id, r.variant, d.sent, false AS follow_up),
         follow AS (
             SELECT r.broadcast_id, r.variant, d.sent, true AS follow_up
             FROM d JOIN broadcast_recipients r
                 ON r.id = d.recipient AND r.follow_up_outbox_id = d.outbox)
         SELECT broadcast_id, variant, sent, follow_up, count(*)
         FROM (SELECT * FROM main UNION ALL SELECT * FROM follow) x
         GROUP BY broadcast_id, variant, sent, follow_up",
    )
    .bind(&outbox)
    .bind(&recipient)
    .bind(&sent)
    .bind(&provider)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut deltas = Deltas::new();
    for r in &rows {
        let b: i64 = r.try_get(0)?;
        let v: i16 = r.try_get(1)?;
        let sent: bool = r.try_get(2)?;
        let follow_up: bool = r.try_get(3)?;
        let n: i64 = r.try_get(4)?;
        match (follow_up, sent) {
            (true, true) => add(&mut deltas, b, v, C_FOLLOW_UP_SENT, n),
            (true, false) => add(&mut deltas, b, v, C_FOLLOW_UP_FAILED, n),
            (false, sent) => {
                add(&mut deltas, b, v, C_QUEUED, -n);
                add(&mut deltas, b, v, if sent { C_SENT } else { C_FAILED }, n);
            }
        }
    }
    flush(conn, deltas).await
}

/// Erasure's part of the broadcasts: rows still waiting are skipped as
/// `contact_erased` (their outbox rows were failed by the erasure), and the rows keep
/// only ids, statuses and times — the time zone and the provider's message id go.
pub(crate) async fn erase_recipients(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
) -> Result<()> {
    // Waits for a planning batch in flight, which may have read the contact before the
    // erasure: its rows are then seen (and blanked) here.
    sqlx::query(&format!("SELECT pg_advisory_xact_lock_shared({PLAN_LOCK})"))
        .bind(ws.0)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query(
        "WITH old AS (
             SELECT id, status FROM broadcast_recipients
             WHERE contact_id = $1 AND status IN ('planned', 'queued') FOR UPDATE),
         u AS (
             UPDATE broadcast_recipients r SET status = 'skipped', reason = 'contact_erased'
             FROM old WHERE r.id = old.id
             RETURNING r.broadcast_id, r.variant, old.status)
         SELECT broadcast_id, variant, status, count(*) FROM u GROUP BY 1, 2, 3",
    )
    .bind(contact.0)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE broadcast_recipients SET time_zone = NULL, provider_message_id = NULL
         WHERE contact_id = $1",
    )
    .bind(contact.0)
    .execute(&mut *conn)
    .await?;
    let mut deltas = Deltas::new();
    for r in &rows {
        let b: i64 = r.try_get(0)?;
        let v: i16 = r.try_get(1)?;
        let status: String = r.try_get(2)?;
        let n: i64 = r.try_get(3)?;
        add(
            &mut deltas,
            b,
            v,
            if status == "planned" {
                C_PLANNED
            } else {
                C_QUEUED
            },
            -n,
        );
        add(&mut deltas, b, v, skipped_key(SkipReason::ContactErased), n);
    }
    flush(conn, deltas).await
}

#[async_trait]
impl BroadcastStore for PgStore {
    async fn create_broadcast(
        &self,
        ws: WorkspaceId,
        name: &str,
        spec: Value,
    ) -> Result<Broadcast> {
        let name = broadcast_name(name)?;
        let now = now_us();
        let r = sqlx::query(&format!(
            "INSERT INTO broadcasts (workspace_id, name, status, spec, segment_id, created_at, updated_at)
             SELECT $1, $2, 'draft', $3, $4, $5, $5 FROM workspaces WHERE id = $1
             RETURNING {BROADCAST_COLS}"
        ))
        .bind(ws.0)
        .bind(&name)
        .bind(encode(&spec)?)
        .bind(spec_segment_id(&spec))
        .bind(now)
        .fetch_optional(&self.pool)
        .await;
        match r {
            Ok(Some(r)) => broadcast_row(&r),
            Ok(None) => Err(StoreError::not_found("workspace")),
            Err(e) if is_unique_violation(&e) => Err(name_taken(&name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast> {
        let mut conn = self.pool.acquire().await?;
        get_broadcast(&mut conn, ws, id).await
    }

    async fn list_broadcasts(&self, ws: WorkspaceId) -> Result<Vec<Broadcast>> {
        sqlx::query(&format!(
            "SELECT {BROADCAST_COLS} FROM broadcasts WHERE workspace_id = $1 ORDER BY id DESC"
        ))
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(broadcast_row)
        .collect()
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
        let text = spec.as_ref().map(encode).transpose()?;
        let mut tx = self.pool.begin().await?;
        let (status, _, _, current) = lock_broadcast(&mut tx, ws, id, "FOR NO KEY UPDATE").await?;
        if !matches!(status, BroadcastStatus::Draft | BroadcastStatus::Scheduled) {
            return Err(not_editable(status));
        }
        if revision.is_some_and(|r| r != current) {
            return Err(stale_revision(current));
        }
        // An edit of a scheduled broadcast takes it back to draft: what was scheduled is
        // not what is there now.
        let r = sqlx::query(&format!(
            "UPDATE broadcasts SET name = coalesce($2, name), spec = coalesce($3, spec),
                 segment_id = CASE WHEN $3::text IS NULL THEN segment_id ELSE $4 END,
                 status = 'draft', send_at = NULL, revision = revision + 1, updated_at = $5
             WHERE id = $1 RETURNING {BROADCAST_COLS}"
        ))
        .bind(id.0)
        .bind(&name)
        .bind(&text)
        .bind(spec.as_ref().and_then(spec_segment_id))
        .bind(now_us())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                name_taken(name.as_deref().unwrap_or(""))
            } else {
                e.into()
            }
        })?;
        let b = broadcast_row(&r)?;
        tx.commit().await?;
        Ok(b)
    }

    async fn delete_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<()> {
        loop {
            // Recipients go in chunks, each its own short transaction, so deleting a
            // million-recipient broadcast never holds one long transaction; the broadcast
            // row (and its counters, by cascade) go with the last chunk. Its outbox rows
            // stay as conversation history.
            let mut tx = self.pool.begin().await?;
            let (status, ..) = lock_broadcast(&mut tx, ws, id, "FOR NO KEY UPDATE").await?;
            if status.is_live() {
                return Err(not_deletable(status));
            }
            let n = sqlx::query(
                "DELETE FROM broadcast_recipients WHERE id IN (
                     SELECT id FROM broadcast_recipients WHERE broadcast_id = $1 LIMIT $2)",
            )
            .bind(id.0)
            .bind(DELETE_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let last = n < DELETE_CHUNK.unsigned_abs();
            if last {
                sqlx::query("DELETE FROM broadcasts WHERE id = $1")
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if last {
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
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let now = now.as_microsecond();
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE broadcasts SET status = $3, send_at = coalesce($4, send_at),
                 started_at = CASE WHEN $3 = 'sending' THEN coalesce(started_at, $5) ELSE started_at END,
                 paused_at = CASE WHEN $3 = 'paused' THEN $5 ELSE paused_at END,
                 cancelled_at = CASE WHEN $3 = 'cancelled' THEN $5 ELSE cancelled_at END,
                 finished_at = CASE WHEN $3 IN ('finished', 'cancelled') THEN $5 ELSE finished_at END,
                 updated_at = $5
             WHERE id = $1 AND workspace_id = $2 AND status = ANY($6)
             RETURNING {BROADCAST_COLS}"
        ))
        .bind(id.0)
        .bind(ws.0)
        .bind(to.as_str())
        .bind(send_at.map(|t| t.as_microsecond()))
        .bind(now)
        .bind(&from)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else {
            let (status, ..) = lock_broadcast(&mut tx, ws, id, "").await?;
            return Err(invalid_transition(status, to));
        };
        let b = broadcast_row(&r)?;
        if matches!(to, BroadcastStatus::Paused | BroadcastStatus::Cancelled) {
            let mut deltas = Deltas::new();
            unqueue(&mut tx, id, &mut deltas).await?;
            if to == BroadcastStatus::Cancelled {
                let rows = sqlx::query(
                    "WITH s AS (
                         UPDATE broadcast_recipients SET status = 'skipped', reason = 'cancelled'
                         WHERE broadcast_id = $1 AND status = 'planned' RETURNING variant)
                     SELECT variant, count(*) FROM s GROUP BY variant",
                )
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?;
                for r in &rows {
                    let v: i16 = r.try_get(0)?;
                    let n: i64 = r.try_get(1)?;
                    add(&mut deltas, id.0, v, C_PLANNED, -n);
                    add(&mut deltas, id.0, v, skipped_key(SkipReason::Cancelled), n);
                }
            }
            flush(&mut tx, deltas).await?;
        }
        tx.commit().await?;
        Ok(b)
    }

    async fn active_broadcasts(&self, now: Timestamp) -> Result<Vec<Broadcast>> {
        sqlx::query(&format!(
            "SELECT {BROADCAST_COLS} FROM broadcasts
             WHERE status = 'sending' OR (status = 'scheduled' AND send_at <= $1)
             ORDER BY id"
        ))
        .bind(now.as_microsecond())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(broadcast_row)
        .collect()
    }

    async fn next_scheduled(&self) -> Result<Option<Timestamp>> {
        let at: Option<i64> =
            sqlx::query("SELECT min(send_at) FROM broadcasts WHERE status = 'scheduled'")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
        Ok(ts_opt(at))
    }

    async fn plan_broadcast_batch(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &PlanRequest,
    ) -> Result<PlanProgress> {
        let mut tx = self.pool.begin().await?;
        let p = plan_batch(&mut tx, ws, id, req).await?;
        tx.commit().await?;
        if p.done {
            // A planning run can add a million rows in seconds, long before autovacuum
            // looks at the table; without fresh statistics the planner reads the
            // feeder's per-channel due query as a scan of the whole broadcast.
            if let Err(e) = sqlx::query("ANALYZE broadcast_recipients")
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %e, "cannot analyze broadcast_recipients after planning");
            }
        }
        Ok(p)
    }

    async fn planned_time_zones(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<Option<String>>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        sqlx::query(
            "SELECT DISTINCT time_zone FROM broadcast_recipients
             WHERE broadcast_id = $1 AND status = 'planned' ORDER BY time_zone",
        )
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
    }

    async fn set_local_times(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        times: Vec<(Option<String>, Timestamp)>,
    ) -> Result<u64> {
        if times.is_empty() {
            return Ok(0);
        }
        let (zones, ats): (Vec<Option<String>>, Vec<i64>) = times
            .into_iter()
            .map(|(z, t)| (z, t.as_microsecond()))
            .unzip();
        let mut tx = self.pool.begin().await?;
        broadcast_exists(&mut tx, ws, id).await?;
        // coalesce(…, '') turns the IS NOT DISTINCT FROM match into an equality, so one
        // hash join sets every group in a single pass. Held rows wait for the winner.
        let n = sqlx::query(
            "UPDATE broadcast_recipients r SET run_at = d.at
             FROM unnest($2::text[], $3::bigint[]) AS d(zone, at)
             WHERE r.broadcast_id = $1 AND r.status = 'planned' AND r.variant <> 255
               AND coalesce(r.time_zone, '') = coalesce(d.zone, '')",
        )
        .bind(id.0)
        .bind(&zones)
        .bind(&ats)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
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
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        // Two statements rather than `($5 IS NULL OR …)`: a generic plan could not use the
        // channel column of the due index.
        let on_channel = if channel.is_some() {
            "AND r.channel_id = $5"
        } else {
            "AND $5::bigint IS NULL"
        };
        let mut due = sqlx::query(&format!(
            "SELECT r.id AS rid, r.contact_id, r.identity_id, r.channel_id, r.variant, {PROFILE_COLS},
                    {}
             FROM broadcast_recipients r JOIN contacts c ON c.id = r.contact_id
             WHERE r.broadcast_id = $1 AND r.status = 'planned' {on_channel} AND r.run_at <= $2
             ORDER BY r.run_at, r.id LIMIT $4",
            recent("$3")
        ))
        .bind(id.0)
        .bind(now.as_microsecond())
        .bind(cap_since.as_microsecond())
        .bind(i64::from(limit.clamp(1, 10_000)))
        .bind(channel.map(|ch| ch.0))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(due_row)
        .collect::<Result<Vec<_>>>()?;
        if with_fields {
            let ids: Vec<i64> = due.iter().map(|d| d.contact_id.0).collect();
            let mut fields = fields_of(&mut conn, &ids).await?;
            for d in &mut due {
                if let Some(f) = fields.remove(&d.contact_id.0) {
                    d.fields = f;
                }
            }
        }
        Ok(due)
    }

    async fn broadcast_in_flight(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<(ChannelId, u64)>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        // The partial outbox_broadcast_live index holds exactly these rows.
        let rows = sqlx::query(
            "SELECT channel_id, count(*) AS n FROM outbox WHERE broadcast_id = $1
             AND state IN ('queued', 'sending') GROUP BY channel_id",
        )
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("n")?;
                Ok((
                    ChannelId(r.try_get("channel_id")?),
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn next_recipient_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Option<Timestamp>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        let at: Option<i64> = sqlx::query(
            "SELECT min(run_at) FROM broadcast_recipients
             WHERE broadcast_id = $1 AND status = 'planned' AND run_at IS NOT NULL",
        )
        .bind(id.0)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        Ok(ts_opt(at))
    }

    async fn feed_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<FeedDecision>,
        now: Timestamp,
    ) -> Result<FeedOutcome> {
        let mut tx = self.pool.begin().await?;
        let out = feed(&mut tx, ws, id, topic, decisions, now.as_microsecond()).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn broadcast_drained(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        ignore_held: bool,
    ) -> Result<bool> {
        // Held rows are planned without a run_at, so "planned and not held" is a range of
        // the due index (run_at IS NOT NULL) rather than a scan of every held row.
        let r = sqlx::query(
            "SELECT b.planned_at IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM broadcast_recipients r
                     WHERE r.broadcast_id = b.id AND r.status = 'planned'
                       AND (NOT $3 OR (r.run_at IS NOT NULL AND r.variant <> 255)))
                 AND NOT EXISTS (SELECT 1 FROM broadcast_recipients r
                     WHERE r.broadcast_id = b.id AND r.status = 'queued')
                 AND NOT EXISTS (SELECT 1 FROM outbox o
                     WHERE o.broadcast_id = b.id AND o.state IN ('queued', 'sending'))
             FROM broadcasts b WHERE b.id = $1 AND b.workspace_id = $2",
        )
        .bind(id.0)
        .bind(ws.0)
        .bind(ignore_held)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("broadcast"))?;
        Ok(r.try_get(0)?)
    }

    async fn release_held(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        variant: u8,
        run_at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        lock_broadcast(&mut tx, ws, id, "FOR NO KEY UPDATE").await?;
        // The first call stores the winner; a repeated call releases with the stored one,
        // so a restart half-way never mixes two winners.
        let v: i16 = sqlx::query(
            "UPDATE broadcasts SET winner_variant = coalesce(winner_variant, $2), updated_at = $3
             WHERE id = $1 RETURNING winner_variant",
        )
        .bind(id.0)
        .bind(i16::from(variant))
        .bind(now_us())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        // Held rows have no run_at: the range `run_at IS NULL` of the due index.
        let n = sqlx::query(
            "UPDATE broadcast_recipients SET variant = $2, run_at = $3
             WHERE broadcast_id = $1 AND status = 'planned' AND run_at IS NULL AND variant = 255",
        )
        .bind(id.0)
        .bind(v)
        .bind(run_at.as_microsecond())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The released rows are now the winner's planned rows.
        let mut deltas = Deltas::new();
        let n_i = i64::try_from(n).unwrap_or(i64::MAX);
        add(&mut deltas, id.0, i16::from(HELD_VARIANT), C_PLANNED, -n_i);
        add(&mut deltas, id.0, v, C_PLANNED, n_i);
        flush(&mut tx, deltas).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn broadcast_counters(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<BroadcastCounter>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        sqlx::query(
            "SELECT variant, key, n FROM broadcast_counters WHERE broadcast_id = $1 AND n <> 0
             ORDER BY variant, key",
        )
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(BroadcastCounter {
                variant: variant(r.try_get(0)?)?,
                key: r.try_get(1)?,
                n: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
            })
        })
        .collect()
    }

    async fn list_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        q: RecipientQuery,
    ) -> Result<Vec<Recipient>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
            "SELECT {RECIPIENT_COLS} FROM broadcast_recipients WHERE broadcast_id = "
        ));
        qb.push_bind(id.0);
        if let Some(s) = q.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(r) = q.reason {
            qb.push(" AND reason = ").push_bind(r.as_str());
        }
        if let Some(c) = q.contact {
            qb.push(" AND contact_id = ").push_bind(c.0);
        }
        if let Some(a) = q.after {
            qb.push(" AND id > ").push_bind(a.0);
        }
        qb.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(q.limit.clamp(1, 1000)));
        qb.build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(recipient_row)
            .collect()
    }

    async fn get_recipient(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
    ) -> Result<(BroadcastId, Recipient)> {
        let r = sqlx::query(&format!(
            "SELECT broadcast_id, {RECIPIENT_COLS} FROM broadcast_recipients
             WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("recipient"))?;
        Ok((BroadcastId(r.try_get("broadcast_id")?), recipient_row(&r)?))
    }

    async fn recipient_by_message(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        provider_message_id: &str,
    ) -> Result<Option<RecipientId>> {
        let id: Option<i64> = sqlx::query(
            "SELECT id FROM broadcast_recipients
             WHERE identity_id = $1 AND provider_message_id = $2 AND workspace_id = $3
             ORDER BY id DESC LIMIT 1",
        )
        .bind(identity.0)
        .bind(provider_message_id)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        Ok(id.map(RecipientId))
    }

    async fn record_recipient_signal(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
        signal: RecipientSignal,
        at: Timestamp,
    ) -> Result<bool> {
        // Each signal sets its own time once; the status only moves forward
        // (sent → delivered → read → clicked).
        let (column, status, before, key) = match signal {
            RecipientSignal::Delivered => ("delivered_at", "delivered", "('sent')", C_DELIVERED),
            RecipientSignal::Read => ("read_at", "read", "('sent', 'delivered')", C_READ),
            RecipientSignal::Clicked => (
                "clicked_at",
                "clicked",
                "('sent', 'delivered', 'read')",
                C_CLICKED,
            ),
        };
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE broadcast_recipients SET {column} = $3,
                 status = CASE WHEN status IN {before} THEN '{status}' ELSE status END
             WHERE id = $1 AND workspace_id = $2 AND {column} IS NULL
             RETURNING broadcast_id, variant"
        ))
        .bind(id.0)
        .bind(ws.0)
        .bind(at.as_microsecond())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else {
            let exists: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM broadcast_recipients WHERE id = $1 AND workspace_id = $2)",
            )
            .bind(id.0)
            .bind(ws.0)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            return if exists {
                Ok(false)
            } else {
                Err(StoreError::not_found("recipient"))
            };
        };
        let mut deltas = Deltas::new();
        add(&mut deltas, r.try_get(0)?, r.try_get(1)?, key, 1);
        flush(&mut tx, deltas).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn follow_up_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &FollowUpRequest,
        cap_since: Timestamp,
    ) -> Result<Vec<FollowUpDue>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        let engaged = match req.if_not {
            // A click shows the message was seen even without a read receipt.
            Engagement::Read => "r.read_at IS NULL",
            Engagement::Clicked => "true",
        };
        let due = sqlx::query(&format!(
            "SELECT r.id AS rid, r.contact_id, r.identity_id, r.channel_id, r.variant, {PROFILE_COLS},
                    {}
             FROM broadcast_recipients r JOIN contacts c ON c.id = r.contact_id
             WHERE r.broadcast_id = $1 AND r.sent_at IS NOT NULL AND r.sent_at < $2
               AND r.follow_up_outbox_id IS NULL AND r.follow_up_reason IS NULL
               AND r.clicked_at IS NULL AND r.recalled_at IS NULL AND {engaged}
               AND r.status IN {SENT} AND c.erased_at IS NULL
             ORDER BY r.sent_at, r.id LIMIT $4",
            recent("$3")
        ))
        .bind(id.0)
        .bind(req.sent_before.as_microsecond())
        .bind(cap_since.as_microsecond())
        .bind(recipient_limit(req.limit))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(due_row)
        .collect::<Result<Vec<_>>>()?;
        let ids: Vec<i64> = due.iter().map(|d| d.contact_id.0).collect();
        let mut fields = fields_of(&mut conn, &ids).await?;
        // Another channel: the contact's identity there, subscribed (with the topic)
        // first, then the most recently active, then the newest.
        let mut elsewhere: HashMap<i64, (IdentityId, ChannelId)> = HashMap::new();
        if let Some(ch) = req.channel {
            let rows = sqlx::query(
                "SELECT DISTINCT ON (i.contact_id) i.contact_id, i.id, i.channel_id
                 FROM identities i
                 WHERE i.contact_id = ANY($1) AND i.channel_id = $2 AND i.workspace_id = $3
                 ORDER BY i.contact_id,
                          (i.sub_state = 'subscribed' AND ($4::text IS NULL
                              OR i.sub_topics = '[]'::jsonb OR i.sub_topics ? $4::text)) DESC,
                          i.last_seen_at DESC NULLS LAST, i.id DESC",
            )
            .bind(&ids)
            .bind(ch.0)
            .bind(ws.0)
            .bind(req.topic.as_deref())
            .fetch_all(&mut *conn)
            .await?;
            for r in &rows {
                elsewhere.insert(
                    r.try_get(0)?,
                    (IdentityId(r.try_get(1)?), ChannelId(r.try_get(2)?)),
                );
            }
        }
        Ok(due
            .into_iter()
            .map(|mut d| {
                if let Some(f) = fields.remove(&d.contact_id.0) {
                    d.fields = f;
                }
                let target = match req.channel {
                    None => Some((d.identity_id, d.channel_id)),
                    Some(_) => elsewhere.get(&d.contact_id.0).copied(),
                };
                FollowUpDue {
                    recipient: d,
                    target,
                }
            })
            .collect())
    }

    async fn feed_follow_ups(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<(FeedDecision, Option<(IdentityId, ChannelId)>)>,
        now: Timestamp,
    ) -> Result<FeedOutcome> {
        let mut tx = self.pool.begin().await?;
        let out = feed_follow_ups(&mut tx, ws, id, topic, decisions, now.as_microsecond()).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn recall_targets(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        sent_after: Timestamp,
        after: Option<RecipientId>,
        limit: u32,
    ) -> Result<Vec<RecallTarget>> {
        let mut conn = self.pool.acquire().await?;
        broadcast_exists(&mut conn, ws, id).await?;
        // An erased contact's outbox row has no address left: nothing to recall.
        sqlx::query(&format!(
            "SELECT r.id, o.channel_id, o.external_id, o.provider_message_ids
             FROM broadcast_recipients r JOIN outbox o ON o.id = r.outbox_id
             WHERE r.broadcast_id = $1 AND r.status IN {SENT} AND r.recalled_at IS NULL
               AND r.sent_at > $2 AND r.id > $3 AND o.provider_message_ids <> '[]'::jsonb
             ORDER BY r.id LIMIT $4"
        ))
        .bind(id.0)
        .bind(sent_after.as_microsecond())
        .bind(after.map_or(0, |a| a.0))
        .bind(recipient_limit(limit))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            let Json(ids): Json<Vec<String>> = r.try_get(3)?;
            Ok(RecallTarget {
                recipient: RecipientId(r.try_get(0)?),
                channel_id: ChannelId(r.try_get(1)?),
                external_id: r.try_get(2)?,
                provider_message_ids: ids,
            })
        })
        .collect()
    }

    async fn record_recalls(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        results: Vec<RecallResult>,
        at: Timestamp,
    ) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let at = at.as_microsecond();
        let mut tx = self.pool.begin().await?;
        broadcast_exists(&mut tx, ws, id).await?;
        let mut deltas = Deltas::new();
        let ok: Vec<i64> = results
            .iter()
            .filter(|r| r.outcome.is_ok())
            .map(|r| r.recipient.0)
            .collect();
        let recalled = sqlx::query(
            "UPDATE broadcast_recipients SET recalled_at = $3
             WHERE id = ANY($1) AND broadcast_id = $2 AND recalled_at IS NULL
             RETURNING id, variant",
        )
        .bind(&ok)
        .bind(id.0)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        let mut fresh = std::collections::HashSet::new();
        for r in &recalled {
            fresh.insert(r.try_get::<i64, _>(0)?);
            add(&mut deltas, id.0, r.try_get(1)?, C_RECALLED, 1);
        }
        // One event per attempt on the contact's log; a recall of a message recalled
        // before is neither counted nor recorded twice.
        let all: Vec<i64> = results.iter().map(|r| r.recipient.0).collect();
        let mut contact_of: HashMap<i64, i64> = HashMap::new();
        for r in sqlx::query(
            "SELECT id, contact_id FROM broadcast_recipients WHERE id = ANY($1) AND broadcast_id = $2",
        )
        .bind(&all)
        .bind(id.0)
        .fetch_all(&mut *tx)
        .await?
        {
            contact_of.insert(r.try_get(0)?, r.try_get(1)?);
        }
        let mut contacts = Vec::with_capacity(results.len());
        let mut kinds = Vec::with_capacity(results.len());
        let mut data = Vec::with_capacity(results.len());
        for r in &results {
            let Some(c) = contact_of.get(&r.recipient.0) else {
                continue;
            };
            let kind = if r.outcome.is_err() {
                EVENT_RECALL_FAILED
            } else if fresh.remove(&r.recipient.0) {
                EVENT_RECALLED
            } else {
                continue;
            };
            contacts.push(*c);
            kinds.push(kind);
            data.push(encode(&recall_event(id, r))?);
        }
        sqlx::query(
            "INSERT INTO events (workspace_id, contact_id, kind, data, created_at)
             SELECT $1, d.contact, d.kind, d.data::jsonb, $2
             FROM unnest($3::bigint[], $4::text[], $5::text[]) AS d(contact, kind, data)",
        )
        .bind(ws.0)
        .bind(at)
        .bind(&contacts)
        .bind(&kinds)
        .bind(&data)
        .execute(&mut *tx)
        .await?;
        flush(&mut tx, deltas).await?;
        tx.commit().await?;
        Ok(())
    }
}
