//! FlowStore on PostgreSQL: flows and their versions, runs, signals, step counters,
//! topics, workspace settings and the scanners' marks.
//!
//! Workers on several servers share the work: due runs are claimed with `FOR UPDATE
//! SKIP LOCKED`, signals under a transaction-scoped advisory lock (so a contact's
//! signals never go to two workers at once), and every `commit_flow` is guarded by the
//! run's revision. Lock order, to stay clear of deadlocks: contact, then flow, then runs,
//! then step counters (in key order); archiving takes the flow, then its runs.

use super::contacts::{
    change_subscription, insert_event, link_tags, touch, unlink_tag, write_fields, write_profile,
};
use super::messaging::enqueue_locked;
use super::rows::{self, CONTACT_COLS, IDENTITY_COLS};
use super::{is_unique_violation, now_us, parse_stored, ts, ts_opt, PgStore};
use crate::flows::*;
use crate::messaging::lease_us;
use crate::{FlowStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use voronka_core::event::EventKind;
use voronka_core::*;

/// Columns read by [`flow_row`].
const FLOW_COLS: &str =
    "id, workspace_id, name, status, draft, revision, published_version, created_at, updated_at";

/// Columns read by [`run_row`].
const RUN_COLS: &str = "id, workspace_id, flow_id, version, contact_id, channel_id, status, \
     step_id, wait, due_at, attempts, vars, started_by, error, revision, started_at, \
     updated_at, ended_at";

/// Columns read by [`signal_row`].
const SIGNAL_COLS: &str =
    "id, workspace_id, contact_id, channel_id, kind, data, created_at, attempts";

/// The statuses of a live run, as SQL.
const LIVE: &str = "('active', 'waiting')";

/// The counter shard a transaction adds to: its server connection's. Concurrent
/// transactions run on distinct backends, so commits of one flow add to different rows
/// instead of queueing on one (two backend ids equal modulo 64 merely take turns).
const SHARD: &str = "(pg_backend_pid() % 64)::smallint";

fn count(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn stored_u32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A stored JSON document (TEXT, kept verbatim).
fn document(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Database(format!("stored {what} is not JSON: {e}")))
}

fn encode(v: &Value) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Database(format!("cannot encode a JSON column: {e}")))
}

/// A flow row (columns [`FLOW_COLS`]).
fn flow_row(r: &PgRow) -> Result<Flow> {
    let status: String = r.try_get("status")?;
    let draft: String = r.try_get("draft")?;
    Ok(Flow {
        id: FlowId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        name: r.try_get("name")?,
        status: parse_stored("flow status", &status)?,
        draft: document("flow draft", &draft)?,
        revision: r.try_get("revision")?,
        published_version: r.try_get::<Option<i32>, _>("published_version")?.map(count),
        created_at: ts(r.try_get("created_at")?),
        updated_at: ts(r.try_get("updated_at")?),
    })
}

/// A run row (columns [`RUN_COLS`]).
fn run_row(r: &PgRow) -> Result<FlowRun> {
    let status: String = r.try_get("status")?;
    let wait: Option<String> = r.try_get("wait")?;
    let Json(vars) = r.try_get("vars")?;
    Ok(FlowRun {
        id: RunId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        flow_id: FlowId(r.try_get("flow_id")?),
        version: count(r.try_get("version")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        channel_id: r.try_get::<Option<i64>, _>("channel_id")?.map(ChannelId),
        status: parse_stored("run status", &status)?,
        step_id: r.try_get("step_id")?,
        wait: wait.map(|w| parse_stored("wait kind", &w)).transpose()?,
        due_at: ts_opt(r.try_get("due_at")?),
        attempts: count(r.try_get("attempts")?),
        vars,
        trigger: r.try_get("started_by")?,
        error: r.try_get("error")?,
        revision: r.try_get("revision")?,
        started_at: ts(r.try_get("started_at")?),
        updated_at: ts(r.try_get("updated_at")?),
        ended_at: ts_opt(r.try_get("ended_at")?),
    })
}

/// A signal row (columns [`SIGNAL_COLS`]).
fn signal_row(r: &PgRow) -> Result<FlowSignal> {
    let Json(data) = r.try_get("data")?;
    Ok(FlowSignal {
        id: SignalId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        channel_id: r.try_get::<Option<i64>, _>("channel_id")?.map(ChannelId),
        kind: r.try_get("kind")?,
        data,
        created_at: ts(r.try_get("created_at")?),
        attempts: count(r.try_get("attempts")?),
    })
}

async fn get_flow(conn: &mut PgConnection, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
    let r = sqlx::query(&format!(
        "SELECT {FLOW_COLS} FROM flows WHERE id = $1 AND workspace_id = $2"
    ))
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("flow"))?;
    flow_row(&r)
}

/// A flow's status and revision, locked for the rest of the transaction; NotFound when
/// the flow is not the workspace's.
async fn lock_flow(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: FlowId,
) -> Result<(FlowStatus, i64)> {
    let r = sqlx::query(
        "SELECT status, revision FROM flows WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
    )
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("flow"))?;
    let status: String = r.try_get(0)?;
    Ok((parse_stored("flow status", &status)?, r.try_get(1)?))
}

/// NotFound unless flow `id` is the workspace's.
async fn flow_exists(conn: &mut PgConnection, ws: WorkspaceId, id: FlowId) -> Result<()> {
    let ok: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM flows WHERE id = $1 AND workspace_id = $2)")
            .bind(id.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
    if ok {
        Ok(())
    } else {
        Err(StoreError::not_found("flow"))
    }
}

/// Inserts a pending signal.
pub(crate) async fn insert_signal(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: Option<ChannelId>,
    kind: &str,
    data: &Value,
    now: i64,
) -> Result<SignalId> {
    let id: i64 = sqlx::query(
        "INSERT INTO flow_signals (workspace_id, contact_id, channel_id, kind, data, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(ws.0)
    .bind(contact.0)
    .bind(channel.map(|c| c.0))
    .bind(kind)
    .bind(Json(data))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(SignalId(id))
}

/// Adds `dropped` at the step of each live run of contact or flow `owner` (`column` says
/// which), counting before the runs end.
async fn drop_live_runs(conn: &mut PgConnection, column: &str, owner: i64) -> Result<()> {
    // Key order, as commits take counter rows.
    sqlx::query(&format!(
        "INSERT INTO flow_step_counters (flow_id, version, step_id, shard, workspace_id, dropped)
         SELECT flow_id, version, step_id, {SHARD}, workspace_id, count(*) FROM flow_runs
         WHERE {column} = $1 AND status IN {LIVE}
         GROUP BY flow_id, version, step_id, workspace_id
         ORDER BY flow_id, version, step_id
         ON CONFLICT (flow_id, version, step_id, shard)
         DO UPDATE SET dropped = flow_step_counters.dropped + EXCLUDED.dropped"
    ))
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Part of a contact's erasure (inside its transaction, the contact locked): their runs
/// stop (counted as dropped) and lose their variables and errors, their signals their
/// data, since both hold what the person answered and sent.
pub(crate) async fn erase_flow_data(
    conn: &mut PgConnection,
    contact: ContactId,
    now: i64,
) -> Result<()> {
    drop_live_runs(conn, "contact_id", contact.0).await?;
    sqlx::query(&format!(
        "UPDATE flow_runs SET status = 'stopped', wait = NULL, due_at = NULL, lease_until = NULL,
             ended_at = $2, updated_at = $2, revision = revision + 1
         WHERE contact_id = $1 AND status IN {LIVE}"
    ))
    .bind(contact.0)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE flow_runs SET vars = '{}'::jsonb, error = NULL WHERE contact_id = $1")
        .bind(contact.0)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE flow_signals SET data = '{}'::jsonb, error = NULL WHERE contact_id = $1")
        .bind(contact.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Checks the flows a commit starts runs of, before any run row is locked (the lock
/// order archiving also follows). FOR SHARE holds off an archive until the commit ends,
/// so a run cannot start in a flow that is being archived.
async fn check_started_flows(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    k: &FlowCommit,
) -> Result<Vec<FlowId>> {
    let mut flows: Vec<FlowId> = k
        .runs
        .iter()
        .filter_map(|w| match w {
            RunWrite::Insert(n) => Some(n.flow_id),
            RunWrite::Update { .. } => None,
        })
        .collect();
    flows.sort_unstable();
    flows.dedup();
    for f in &flows {
        let status: Option<String> =
            sqlx::query("SELECT status FROM flows WHERE id = $1 AND workspace_id = $2 FOR SHARE")
                .bind(f.0)
                .bind(ws.0)
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        match status.as_deref() {
            None => return Err(ValidationError::new("flow_id", format!("unknown flow {f}")).into()),
            Some("archived") => return Err(flow_archived()),
            Some(_) => {}
        }
    }
    Ok(flows)
}

/// Inserts or updates one run of `contact`; returns its id and flow.
async fn write_run(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    w: &RunWrite,
    now: i64,
) -> Result<(RunId, FlowId)> {
    match w {
        RunWrite::Insert(n) => {
            let s = &n.state;
            let id: i64 = sqlx::query(
                "INSERT INTO flow_runs (workspace_id, flow_id, version, contact_id, channel_id, status,
                     step_id, wait, due_at, attempts, vars, started_by, error, started_at, updated_at,
                     ended_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)
                 RETURNING id",
            )
            .bind(ws.0)
            .bind(n.flow_id.0)
            .bind(stored_u32(n.version))
            .bind(contact.0)
            .bind(n.channel_id.map(|c| c.0))
            .bind(s.status.as_str())
            .bind(&s.step_id)
            .bind(s.wait.map(WaitKind::as_str))
            .bind(s.due_at.map(|t| t.as_microsecond()))
            .bind(stored_u32(s.attempts))
            .bind(Json(&s.vars))
            .bind(&n.trigger)
            .bind(&s.error)
            .bind(now)
            .bind((!s.status.is_live()).then_some(now))
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
            Ok((RunId(id), n.flow_id))
        }
        RunWrite::Update {
            id,
            revision,
            state: s,
        } => {
            // Under READ COMMITTED a concurrent commit of the same run makes this
            // re-check the revision against the new row, and match nothing.
            let flow: Option<i64> = sqlx::query(
                "UPDATE flow_runs SET status = $1, step_id = $2, wait = $3, due_at = $4, attempts = $5,
                     vars = $6, error = $7, updated_at = $8,
                     ended_at = CASE WHEN $9 THEN NULL ELSE coalesce(ended_at, $8) END,
                     revision = revision + 1, lease_until = NULL
                 WHERE id = $10 AND workspace_id = $11 AND contact_id = $12 AND revision = $13
                 RETURNING flow_id",
            )
            .bind(s.status.as_str())
            .bind(&s.step_id)
            .bind(s.wait.map(WaitKind::as_str))
            .bind(s.due_at.map(|t| t.as_microsecond()))
            .bind(stored_u32(s.attempts))
            .bind(Json(&s.vars))
            .bind(&s.error)
            .bind(now)
            .bind(s.status.is_live())
            .bind(id.0)
            .bind(ws.0)
            .bind(contact.0)
            .bind(revision)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if let Some(f) = flow {
                return Ok((*id, FlowId(f)));
            }
            let exists: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM flow_runs WHERE id = $1 AND workspace_id = $2 AND contact_id = $3)",
            )
            .bind(id.0)
            .bind(ws.0)
            .bind(contact.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
            Err(if exists {
                run_changed(*id)
            } else {
                StoreError::not_found("run")
            })
        }
    }
}

/// Adds or removes a topic on the contact's subscribed identity on `channel`, through
/// the subscription history like any consent change; returns whether it changed. An
/// identity that is not subscribed there is left alone.
async fn change_topic(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: ChannelId,
    topic: &str,
    subscribe: bool,
    now: i64,
) -> Result<bool> {
    let ident = sqlx::query(&format!(
        "SELECT {IDENTITY_COLS} FROM identities
         WHERE contact_id = $1 AND channel_id = $2 AND workspace_id = $3 AND sub_state = 'subscribed'
         ORDER BY id DESC LIMIT 1 FOR UPDATE"
    ))
    .bind(contact.0)
    .bind(channel.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(rows::identity)
    .transpose()?;
    let Some(ident) = ident else {
        return Ok(false);
    };
    let all: Vec<String> = if topic_change_needs_all(&ident.subscription, subscribe) {
        sqlx::query(r#"SELECT key FROM topics WHERE workspace_id = $1 ORDER BY key COLLATE "C""#)
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?
    } else {
        Vec::new()
    };
    let Some(change) = topic_change(&ident.subscription, topic, subscribe, &all, ts(now))? else {
        return Ok(false);
    };
    change_subscription(conn, ws, contact, ident.id, &change, Some("flow"), now).await?;
    Ok(true)
}

/// Appends events to a contact's log in one statement, in order.
async fn insert_events(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    contact: ContactId,
    events: &[(EventKind, Value)],
    now: i64,
) -> Result<()> {
    match events {
        [] => Ok(()),
        [(kind, data)] => insert_event(conn, ws, contact, *kind, data, now)
            .await
            .map(drop),
        _ => {
            let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
            let data = events
                .iter()
                .map(|(_, d)| encode(d))
                .collect::<Result<Vec<_>>>()?;
            // Ids follow the ORDER BY, so the log keeps the commit's order.
            sqlx::query(
                "INSERT INTO events (workspace_id, contact_id, kind, data, created_at)
                 SELECT $1, $2, k, d::jsonb, $5
                 FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS t(k, d, n) ORDER BY n",
            )
            .bind(ws.0)
            .bind(contact.0)
            .bind(&kinds)
            .bind(&data)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

/// Adds a commit's counter deltas, merged per step and in key order: every commit of a
/// flow updates the same rows, and one order for all of them rules out deadlocks.
async fn add_counters(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    deltas: &[CounterDelta],
    checked: &mut Vec<FlowId>,
) -> Result<()> {
    let mut merged: std::collections::BTreeMap<(FlowId, u32, &str), [u64; 4]> =
        std::collections::BTreeMap::new();
    for d in deltas {
        if d.entered == 0 && d.completed == 0 && d.dropped == 0 && d.clicked == 0 {
            continue;
        }
        let e = merged
            .entry((d.flow_id, d.version, d.step_id.as_str()))
            .or_default();
        e[0] = e[0].saturating_add(d.entered);
        e[1] = e[1].saturating_add(d.completed);
        e[2] = e[2].saturating_add(d.dropped);
        e[3] = e[3].saturating_add(d.clicked);
    }
    if merged.is_empty() {
        return Ok(());
    }
    let mut cols: (Vec<i64>, Vec<i32>, Vec<String>) = Default::default();
    let mut vals: [Vec<i64>; 4] = Default::default();
    for ((flow, version, step), v) in &merged {
        if !checked.contains(flow) {
            match flow_exists(conn, ws, *flow).await {
                Err(StoreError::NotFound { .. }) => {
                    return Err(
                        ValidationError::new("flow_id", format!("unknown flow {flow}")).into(),
                    )
                }
                other => other?,
            }
            checked.push(*flow);
        }
        cols.0.push(flow.0);
        cols.1.push(stored_u32(*version));
        cols.2.push(step.to_string());
        for (i, n) in v.iter().enumerate() {
            vals[i].push(stored_count(*n));
        }
    }
    sqlx::query(&format!(
        "INSERT INTO flow_step_counters (flow_id, version, step_id, shard, workspace_id, entered,
             completed, dropped, clicked)
         SELECT f, v, s, {SHARD}, $1, e, c, d, k
         FROM unnest($2::bigint[], $3::int[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::bigint[]) AS t(f, v, s, e, c, d, k)
         ORDER BY f, v, s
         ON CONFLICT (flow_id, version, step_id, shard) DO UPDATE SET
             entered = flow_step_counters.entered + EXCLUDED.entered,
             completed = flow_step_counters.completed + EXCLUDED.completed,
             dropped = flow_step_counters.dropped + EXCLUDED.dropped,
             clicked = flow_step_counters.clicked + EXCLUDED.clicked"
    ))
    .bind(ws.0)
    .bind(&cols.0)
    .bind(&cols.1)
    .bind(&cols.2)
    .bind(&vals[0])
    .bind(&vals[1])
    .bind(&vals[2])
    .bind(&vals[3])
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `commit_flow` inside its transaction.
async fn apply_commit(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    k: &FlowCommit,
) -> Result<FlowCommitted> {
    let now = now_us();
    let contact = k.contact_id;
    // The contact's row lock queues this commit behind any other change to the contact
    // (another worker's commit, an erasure, an API edit).
    let row = sqlx::query(&format!(
        "SELECT {CONTACT_COLS} FROM contacts WHERE id = $1 AND workspace_id = $2 FOR UPDATE"
    ))
    .bind(contact.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("contact"))?;
    let erased = row.try_get::<Option<i64>, _>("erased_at")?.is_some();
    if erased && !k.changes.is_empty() {
        return Err(contact_erased());
    }
    let mut checked = check_started_flows(conn, ws, k).await?;
    let mut out = FlowCommitted {
        run_ids: Vec::with_capacity(k.runs.len()),
        ..FlowCommitted::default()
    };
    for w in &k.runs {
        let (id, flow) = write_run(conn, ws, contact, w, now).await?;
        out.run_ids.push(id);
        if !checked.contains(&flow) {
            checked.push(flow);
        }
    }

    let ch = &k.changes;
    let mut touched = false;
    if !ch.add_tags.is_empty() {
        out.tags_added = link_tags(conn, ws, contact, &ch.add_tags, now).await?;
        touched |= !out.tags_added.is_empty();
    }
    for name in &ch.remove_tags {
        touched |= unlink_tag(conn, ws, contact, name, now).await?;
    }
    if !ch.fields.is_empty() {
        touched |= write_fields(conn, ws, contact, &ch.fields, now).await? > 0;
    }
    if let Some(p) = &ch.profile {
        touched |= write_profile(conn, ws, contact, &rows::profile(&row)?, p, now).await?;
    }
    for (channel, topic) in &ch.subscribe_topics {
        touched |= change_topic(conn, ws, contact, *channel, topic, true, now).await?;
    }
    for (channel, topic) in &ch.unsubscribe_topics {
        touched |= change_topic(conn, ws, contact, *channel, topic, false, now).await?;
    }

    insert_events(conn, ws, contact, &k.events, now).await?;
    for (i, m) in k.messages.iter().enumerate() {
        if erased {
            out.skipped.push((i, "contact_erased".into()));
            continue;
        }
        // A refusal (no consent, no address) comes before any write, so the rest of the
        // commit goes on.
        match enqueue_locked(conn, ws, contact, &m.outbound).await {
            Ok(item) => out.queued.push(item.id),
            Err(StoreError::Conflict { code, .. }) => out.skipped.push((i, code.to_string())),
            Err(e) => return Err(e),
        }
    }
    for s in &k.signals {
        if s.contact_id != contact {
            let ok: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM contacts WHERE id = $1 AND workspace_id = $2)",
            )
            .bind(s.contact_id.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
            if !ok {
                return Err(StoreError::not_found("contact"));
            }
        }
        insert_signal(conn, ws, s.contact_id, s.channel_id, &s.kind, &s.data, now).await?;
    }
    if !k.consume.is_empty() {
        let ids: Vec<i64> = k.consume.iter().map(|s| s.0).collect();
        sqlx::query("DELETE FROM flow_signals WHERE id = ANY($1) AND workspace_id = $2")
            .bind(&ids)
            .bind(ws.0)
            .execute(&mut *conn)
            .await?;
    }
    if touched {
        touch(conn, contact, now).await?;
    }
    // Last: counter rows are shared by every run of a flow, so they are held the
    // shortest time.
    add_counters(conn, ws, &k.counters, &mut checked).await?;
    Ok(out)
}

#[async_trait]
impl FlowStore for PgStore {
    async fn workspace_settings(&self, ws: WorkspaceId) -> Result<WorkspaceSettings> {
        let r = sqlx::query("SELECT settings FROM workspaces WHERE id = $1")
            .bind(ws.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::not_found("workspace"))?;
        let Json(settings) = r.try_get("settings")?;
        Ok(settings)
    }

    async fn set_workspace_settings(&self, ws: WorkspaceId, s: WorkspaceSettings) -> Result<()> {
        let n = sqlx::query("UPDATE workspaces SET settings = $2 WHERE id = $1")
            .bind(ws.0)
            .bind(Json(&s))
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("workspace"));
        }
        Ok(())
    }

    async fn create_topic(&self, ws: WorkspaceId, topic: Topic) -> Result<Topic> {
        let topic = valid_topic(topic)?;
        let r = sqlx::query(
            "INSERT INTO topics (workspace_id, key, name, created_at)
             SELECT $1, $2, $3, $4 FROM workspaces WHERE id = $1 RETURNING key",
        )
        .bind(ws.0)
        .bind(&topic.key)
        .bind(&topic.name)
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await;
        match r {
            Ok(Some(_)) => Ok(topic),
            Ok(None) => Err(StoreError::not_found("workspace")),
            Err(e) if is_unique_violation(&e) => Err(topic_exists(&topic.key)),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_topics(&self, ws: WorkspaceId) -> Result<Vec<Topic>> {
        sqlx::query(
            r#"SELECT key, name FROM topics WHERE workspace_id = $1 ORDER BY key COLLATE "C""#,
        )
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Topic {
                key: r.try_get(0)?,
                name: r.try_get(1)?,
            })
        })
        .collect()
    }

    async fn create_flow(&self, ws: WorkspaceId, name: &str, draft: Value) -> Result<Flow> {
        let name = flow_name(name)?;
        let now = now_us();
        let r = sqlx::query(&format!(
            "INSERT INTO flows (workspace_id, name, status, draft, revision, created_at, updated_at)
             SELECT $1, $2, 'draft', $3, 1, $4, $4 FROM workspaces WHERE id = $1
             RETURNING {FLOW_COLS}"
        ))
        .bind(ws.0)
        .bind(&name)
        .bind(encode(&draft)?)
        .bind(now)
        .fetch_optional(&self.pool)
        .await;
        match r {
            Ok(Some(r)) => flow_row(&r),
            Ok(None) => Err(StoreError::not_found("workspace")),
            Err(e) if is_unique_violation(&e) => Err(flow_name_taken(&name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
        let mut conn = self.pool.acquire().await?;
        get_flow(&mut conn, ws, id).await
    }

    async fn find_flow(&self, ws: WorkspaceId, name: &str) -> Result<Option<Flow>> {
        sqlx::query(&format!(
            "SELECT {FLOW_COLS} FROM flows WHERE workspace_id = $1 AND name = $2"
        ))
        .bind(ws.0)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(flow_row)
        .transpose()
    }

    async fn list_flows(&self, ws: WorkspaceId, archived: bool) -> Result<Vec<Flow>> {
        // COLLATE "C" sorts bytewise, as SQLite does.
        sqlx::query(&format!(
            r#"SELECT {FLOW_COLS} FROM flows WHERE workspace_id = $1 AND ($2 OR status <> 'archived')
               ORDER BY name COLLATE "C""#
        ))
        .bind(ws.0)
        .bind(archived)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(flow_row)
        .collect()
    }

    async fn update_flow(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        name: Option<String>,
        draft: Option<Value>,
        revision: Option<i64>,
    ) -> Result<Flow> {
        let name = name.as_deref().map(flow_name).transpose()?;
        let draft = draft.as_ref().map(encode).transpose()?;
        let mut tx = self.pool.begin().await?;
        let (status, current) = lock_flow(&mut tx, ws, id).await?;
        if status == FlowStatus::Archived {
            return Err(flow_archived());
        }
        if revision.is_some_and(|r| r != current) {
            return Err(flow_changed(current));
        }
        if name.is_none() && draft.is_none() {
            return get_flow(&mut tx, ws, id).await;
        }
        let r = sqlx::query(&format!(
            "UPDATE flows SET name = coalesce($2, name), draft = coalesce($3, draft),
                 revision = revision + 1, updated_at = $4
             WHERE id = $1 RETURNING {FLOW_COLS}"
        ))
        .bind(id.0)
        .bind(&name)
        .bind(&draft)
        .bind(now_us())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                flow_name_taken(name.as_deref().unwrap_or(""))
            } else {
                e.into()
            }
        })?;
        let flow = flow_row(&r)?;
        tx.commit().await?;
        Ok(flow)
    }

    async fn publish_flow(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        document: Value,
    ) -> Result<FlowVersion> {
        let text = encode(&document)?;
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        // The flow's row lock also makes concurrent publishes take turns for the number.
        let (status, _) = lock_flow(&mut tx, ws, id).await?;
        if status == FlowStatus::Archived {
            return Err(flow_archived());
        }
        let version: i32 = sqlx::query(
            "SELECT coalesce(max(version), 0) + 1 FROM flow_versions WHERE flow_id = $1",
        )
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(
            "INSERT INTO flow_versions (flow_id, version, workspace_id, document, published_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.0)
        .bind(version)
        .bind(ws.0)
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE flows SET status = 'published', published_version = $2, draft = $3,
                 revision = revision + 1, updated_at = $4
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(version)
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(FlowVersion {
            flow_id: id,
            version: count(version),
            document,
            published_at: ts(now),
        })
    }

    async fn archive_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        let (status, _) = lock_flow(&mut tx, ws, id).await?;
        if status != FlowStatus::Archived {
            drop_live_runs(&mut tx, "flow_id", id.0).await?;
            // The revision moves so a worker holding one of these runs cannot revive it.
            sqlx::query(&format!(
                "UPDATE flow_runs SET status = 'cancelled', wait = NULL, due_at = NULL, error = NULL,
                     lease_until = NULL, ended_at = $2, updated_at = $2, revision = revision + 1
                 WHERE flow_id = $1 AND status IN {LIVE}"
            ))
            .bind(id.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE flows SET status = 'archived', updated_at = $2 WHERE id = $1")
                .bind(id.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let flow = get_flow(&mut tx, ws, id).await?;
        tx.commit().await?;
        Ok(flow)
    }

    async fn get_flow_version(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        version: u32,
    ) -> Result<FlowVersion> {
        let r = sqlx::query(
            "SELECT document, published_at FROM flow_versions
             WHERE flow_id = $1 AND version = $2 AND workspace_id = $3",
        )
        .bind(id.0)
        .bind(stored_u32(version))
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("flow_version"))?;
        let text: String = r.try_get(0)?;
        Ok(FlowVersion {
            flow_id: id,
            version,
            document: document("flow version", &text)?,
            published_at: ts(r.try_get(1)?),
        })
    }

    async fn published_flows(&self) -> Result<Vec<(Flow, FlowVersion)>> {
        let cols = FLOW_COLS
            .split(", ")
            .map(|c| format!("f.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "SELECT {cols}, v.version AS v_version, v.document AS v_document,
                 v.published_at AS v_published_at
             FROM flows f JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.published_version
             WHERE f.status = 'published' ORDER BY f.id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let flow = flow_row(r)?;
            let text: String = r.try_get("v_document")?;
            let version = FlowVersion {
                flow_id: flow.id,
                version: count(r.try_get("v_version")?),
                document: document("flow version", &text)?,
                published_at: ts(r.try_get("v_published_at")?),
            };
            Ok((flow, version))
        })
        .collect()
    }

    async fn get_run(&self, ws: WorkspaceId, id: RunId) -> Result<FlowRun> {
        let r = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM flow_runs WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("run"))?;
        run_row(&r)
    }

    async fn list_runs(&self, ws: WorkspaceId, q: RunQuery) -> Result<Vec<FlowRun>> {
        let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
            "SELECT {RUN_COLS} FROM flow_runs WHERE workspace_id = "
        ));
        qb.push_bind(ws.0);
        if let Some(f) = q.flow_id {
            qb.push(" AND flow_id = ").push_bind(f.0);
        }
        if let Some(c) = q.contact_id {
            qb.push(" AND contact_id = ").push_bind(c.0);
        }
        if let Some(s) = q.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(step) = &q.step_id {
            qb.push(" AND step_id = ").push_bind(step.clone());
        }
        if let Some(b) = q.before {
            qb.push(" AND id < ").push_bind(b.0);
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(run_limit(q.limit));
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(run_row)
            .collect()
    }

    async fn live_runs(&self, ws: WorkspaceId, contact: ContactId) -> Result<Vec<FlowRun>> {
        sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM flow_runs
             WHERE contact_id = $1 AND workspace_id = $2 AND status IN {LIVE} ORDER BY id"
        ))
        .bind(contact.0)
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    async fn run_counts(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<(RunStatus, u64)>> {
        let mut conn = self.pool.acquire().await?;
        flow_exists(&mut conn, ws, flow).await?;
        let rows = sqlx::query(
            "SELECT status, count(*) FROM flow_runs WHERE flow_id = $1 GROUP BY status",
        )
        .bind(flow.0)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            let s: String = r.try_get(0)?;
            Ok((parse_stored("run status", &s)?, r.try_get::<i64, _>(1)?))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(all_run_counts(rows))
    }

    async fn ever_ran(&self, ws: WorkspaceId, contact: ContactId, flow: FlowId) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM flow_runs
                 WHERE contact_id = $1 AND flow_id = $2 AND workspace_id = $3)",
        )
        .bind(contact.0)
        .bind(flow.0)
        .bind(ws.0)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    async fn step_counters(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<StepCounter>> {
        let mut conn = self.pool.acquire().await?;
        flow_exists(&mut conn, ws, flow).await?;
        let n = |r: &PgRow, c: &str| -> Result<u64> {
            Ok(u64::try_from(r.try_get::<i64, _>(c)?).unwrap_or(0))
        };
        sqlx::query(
            r#"SELECT version, step_id, sum(entered)::bigint AS entered,
                   sum(completed)::bigint AS completed, sum(dropped)::bigint AS dropped,
                   sum(clicked)::bigint AS clicked
               FROM flow_step_counters WHERE flow_id = $1 AND workspace_id = $2
               GROUP BY version, step_id ORDER BY version, step_id COLLATE "C""#,
        )
        .bind(flow.0)
        .bind(ws.0)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(StepCounter {
                version: count(r.try_get("version")?),
                step_id: r.try_get("step_id")?,
                entered: n(r, "entered")?,
                completed: n(r, "completed")?,
                dropped: n(r, "dropped")?,
                clicked: n(r, "clicked")?,
            })
        })
        .collect()
    }

    async fn emit_signal(&self, ws: WorkspaceId, signal: NewSignal) -> Result<SignalId> {
        let mut conn = self.pool.acquire().await?;
        let erased: Option<i64> =
            sqlx::query("SELECT erased_at FROM contacts WHERE id = $1 AND workspace_id = $2")
                .bind(signal.contact_id.0)
                .bind(ws.0)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(StoreError::not_found("contact"))?
                .try_get(0)?;
        if erased.is_some() {
            return Err(contact_erased());
        }
        if let Some(ch) = signal.channel_id {
            let ok: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1 AND workspace_id = $2)",
            )
            .bind(ch.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
            if !ok {
                return Err(
                    ValidationError::new("channel_id", format!("unknown channel {ch}")).into(),
                );
            }
        }
        // A contact deleted meanwhile fails on the foreign key, as a database error;
        // the checks above answer the common cases precisely.
        insert_signal(
            &mut conn,
            ws,
            signal.contact_id,
            signal.channel_id,
            &signal.kind,
            &signal.data,
            now_us(),
        )
        .await
    }

    async fn claim_signals(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowSignal>> {
        let now = now_us();
        let until = now.saturating_add(lease_us(lease));
        let mut tx = self.pool.begin().await?;
        // Claims take turns: SKIP LOCKED alone would let a second worker take a
        // contact's later signal while the first is claiming its earlier one. Each turn
        // is one short statement, and its snapshot (taken after the lock) sees the
        // previous claim's leases.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('voronka_claim_signals:' || current_schema()))",
        )
        .execute(&mut *tx)
        .await?;
        let mut items = sqlx::query(&format!(
            "UPDATE flow_signals SET lease_until = $1, attempts = attempts + 1
             WHERE id IN (
                 SELECT s.id FROM flow_signals s
                 WHERE s.state = 'pending' AND (s.lease_until IS NULL OR s.lease_until < $2)
                   AND NOT EXISTS (SELECT 1 FROM flow_signals o WHERE o.contact_id = s.contact_id
                       AND o.state = 'pending' AND o.lease_until >= $2)
                 ORDER BY s.id LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING {SIGNAL_COLS}"
        ))
        .bind(until)
        .bind(now)
        .bind(batch_limit(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(signal_row)
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        // RETURNING comes in no particular order.
        items.sort_by_key(|s| s.id);
        Ok(items)
    }

    async fn fail_signal(&self, id: SignalId, error: &str, park: bool) -> Result<()> {
        let state = if park { "failed" } else { "pending" };
        let n = sqlx::query(
            "UPDATE flow_signals SET state = $2, error = $3, lease_until = NULL
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.0)
        .bind(state)
        .bind(error)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            let exists: bool =
                sqlx::query("SELECT EXISTS (SELECT 1 FROM flow_signals WHERE id = $1)")
                    .bind(id.0)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?;
            if !exists {
                return Err(StoreError::not_found("signal"));
            }
        }
        Ok(())
    }

    async fn claim_due_runs(
        &self,
        now: Timestamp,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowRun>> {
        let at = now.as_microsecond();
        let until = at.saturating_add(lease_us(lease));
        // The revision stays: the commit that handles the run checks it, and clears the
        // lease.
        let mut runs = sqlx::query(&format!(
            "UPDATE flow_runs SET lease_until = $1
             WHERE id IN (
                 SELECT id FROM flow_runs
                 WHERE status = 'waiting' AND due_at IS NOT NULL AND due_at <= $2
                   AND (lease_until IS NULL OR lease_until < $2)
                 ORDER BY due_at, id LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING {RUN_COLS}"
        ))
        .bind(until)
        .bind(at)
        .bind(batch_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_row)
        .collect::<Result<Vec<_>>>()?;
        runs.sort_by_key(|r| (r.due_at, r.id));
        Ok(runs)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        // Runs out on a live lease are being handled; skipping them keeps the timer from
        // waking for work it cannot claim.
        let due: Option<i64> = sqlx::query(
            "SELECT due_at FROM flow_runs WHERE status = 'waiting' AND due_at IS NOT NULL
               AND (lease_until IS NULL OR lease_until < $1)
             ORDER BY due_at LIMIT 1",
        )
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        Ok(ts_opt(due))
    }

    async fn commit_flow(&self, ws: WorkspaceId, commit: FlowCommit) -> Result<FlowCommitted> {
        let mut tx = self.pool.begin().await?;
        let out = apply_commit(&mut tx, ws, &commit).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn contacts_by_field_day(
        &self,
        ws: WorkspaceId,
        field_key: &str,
        days: &[(u8, u8)],
        after: Option<ContactId>,
        limit: u32,
    ) -> Result<Vec<DatedContact>> {
        let keys = day_keys(days);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        let field: Option<i64> = sqlx::query(
            "SELECT id FROM field_definitions WHERE workspace_id = $1 AND key = $2
               AND field_type IN ('date', 'datetime')",
        )
        .bind(ws.0)
        .bind(field_key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let Some(field) = field else {
            return Ok(Vec::new());
        };
        // Characters 6–10 of `YYYY-MM-DD` and of a UTC RFC 3339 time are `MM-DD`.
        sqlx::query(
            "SELECT cf.contact_id, cf.value_text FROM contact_fields cf
             JOIN contacts c ON c.id = cf.contact_id
             WHERE cf.field_id = $1 AND cf.workspace_id = $2 AND cf.contact_id > $3
               AND c.erased_at IS NULL AND substr(cf.value_text, 6, 5) = ANY($4)
             ORDER BY cf.contact_id LIMIT $5",
        )
        .bind(field)
        .bind(ws.0)
        .bind(after.map_or(0, |a| a.0))
        .bind(&keys)
        .bind(batch_limit(limit))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(DatedContact {
                contact_id: ContactId(r.try_get(0)?),
                value: r.try_get(1)?,
            })
        })
        .collect()
    }

    async fn inactive_contacts(
        &self,
        ws: WorkspaceId,
        from: Timestamp,
        to: Timestamp,
        after: Option<ContactId>,
        limit: u32,
    ) -> Result<Vec<ContactId>> {
        sqlx::query(
            "SELECT id FROM contacts WHERE workspace_id = $1
               AND last_activity_at >= $2 AND last_activity_at < $3
               AND erased_at IS NULL AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(ws.0)
        .bind(from.as_microsecond())
        .bind(to.as_microsecond())
        .bind(after.map_or(0, |a| a.0))
        .bind(batch_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok(ContactId(r.try_get(0)?)))
        .collect()
    }

    async fn scan_mark(&self, ws: WorkspaceId, key: &str) -> Result<Option<Timestamp>> {
        let at: Option<i64> =
            sqlx::query("SELECT at FROM flow_scan_marks WHERE workspace_id = $1 AND key = $2")
                .bind(ws.0)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        Ok(ts_opt(at))
    }

    async fn set_scan_mark(&self, ws: WorkspaceId, key: &str, at: Timestamp) -> Result<()> {
        let n = sqlx::query(
            "INSERT INTO flow_scan_marks (workspace_id, key, at)
             SELECT $1, $2, $3 FROM workspaces WHERE id = $1
             ON CONFLICT (workspace_id, key) DO UPDATE SET at = EXCLUDED.at",
        )
        .bind(ws.0)
        .bind(key)
        .bind(at.as_microsecond())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("workspace"));
        }
        Ok(())
    }
}
