//! FlowStore on SQLite: flows and their versions, runs, signals, step counters, topics,
//! workspace settings and the scanners' marks.
//!
//! `commit_flow` is one writer job, so everything a step of execution changes commits
//! together (and, through group commit, in one WAL commit with other contacts' steps).
//! The engine pushes thousands of commits a second through the one writer thread, so
//! every statement on that path is cached and JSON is encoded before the job is queued.

use super::contacts::{
    add_tags_with_events, apply_subscription, remove_tag_with_event, replace_profile,
    set_fields_with_events, touch_contact,
};
use super::messaging::enqueue_for;
use super::rows::*;
use super::SqliteStore;
use crate::flows::*;
use crate::messaging::lease_us;
use crate::{FlowStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};
use std::str::FromStr;
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

/// Reads a nullable column holding a stable enum name.
fn parsed_opt<T: FromStr<Err = String>>(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    match r.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into())
        }),
    }
}

/// A flow row (columns [`FLOW_COLS`]).
fn flow_row(r: &Row<'_>) -> rusqlite::Result<Flow> {
    Ok(Flow {
        id: FlowId(r.get(0)?),
        workspace_id: WorkspaceId(r.get(1)?),
        name: r.get(2)?,
        status: parsed(r, 3)?,
        draft: json_col(r, 4)?,
        revision: r.get(5)?,
        published_version: r.get(6)?,
        created_at: ts(r, 7)?,
        updated_at: ts(r, 8)?,
    })
}

/// A run row (columns [`RUN_COLS`]).
fn run_row(r: &Row<'_>) -> rusqlite::Result<FlowRun> {
    Ok(FlowRun {
        id: RunId(r.get(0)?),
        workspace_id: WorkspaceId(r.get(1)?),
        flow_id: FlowId(r.get(2)?),
        version: r.get(3)?,
        contact_id: ContactId(r.get(4)?),
        channel_id: r.get::<_, Option<i64>>(5)?.map(ChannelId),
        status: parsed(r, 6)?,
        step_id: r.get(7)?,
        wait: parsed_opt(r, 8)?,
        due_at: ts_opt(r, 9)?,
        attempts: r.get(10)?,
        vars: json_col(r, 11)?,
        trigger: r.get(12)?,
        error: r.get(13)?,
        revision: r.get(14)?,
        started_at: ts(r, 15)?,
        updated_at: ts(r, 16)?,
        ended_at: ts_opt(r, 17)?,
    })
}

/// A signal row (columns [`SIGNAL_COLS`]).
fn signal_row(r: &Row<'_>) -> rusqlite::Result<FlowSignal> {
    Ok(FlowSignal {
        id: SignalId(r.get(0)?),
        workspace_id: WorkspaceId(r.get(1)?),
        contact_id: ContactId(r.get(2)?),
        channel_id: r.get::<_, Option<i64>>(3)?.map(ChannelId),
        kind: r.get(4)?,
        data: json_col(r, 5)?,
        created_at: ts(r, 6)?,
        attempts: r.get(7)?,
    })
}

fn get_flow(c: &Connection, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
    c.prepare_cached(&format!(
        "SELECT {FLOW_COLS} FROM flows WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], flow_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("flow"))
}

/// A flow's status and revision, or NotFound when it is not the workspace's.
fn flow_status(c: &Connection, ws: WorkspaceId, id: FlowId) -> Result<(FlowStatus, i64)> {
    c.prepare_cached("SELECT status, revision FROM flows WHERE id = ?1 AND workspace_id = ?2")?
        .query_row([id.0, ws.0], |r| Ok((parsed(r, 0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| StoreError::not_found("flow"))
}

/// Inserts a pending signal.
pub(crate) fn insert_signal(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: Option<ChannelId>,
    kind: &str,
    data: &Value,
    at: Timestamp,
) -> Result<SignalId> {
    insert_signal_text(c, ws, contact, channel, kind, &to_json(data)?, at)
}

/// Inserts a pending signal whose data is already JSON text.
fn insert_signal_text(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: Option<ChannelId>,
    kind: &str,
    data: &str,
    at: Timestamp,
) -> Result<SignalId> {
    c.prepare_cached(
        "INSERT INTO flow_signals (workspace_id, contact_id, channel_id, kind, data, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        ws.0,
        contact.0,
        channel.map(|ch| ch.0),
        kind,
        data,
        us(at)
    ])?;
    Ok(SignalId(c.last_insert_rowid()))
}

/// Adds `dropped` at the step of each live run of contact or flow `owner` (`column` says
/// which), counting before the runs end.
fn drop_live_runs(c: &Connection, column: &str, owner: i64) -> Result<()> {
    // The WHERE clause also keeps SQLite's parser from reading ON CONFLICT as a join's ON.
    c.prepare_cached(&format!(
        "INSERT INTO flow_step_counters (flow_id, version, step_id, workspace_id, dropped) \
         SELECT flow_id, version, step_id, workspace_id, count(*) FROM flow_runs \
         WHERE {column} = ?1 AND status IN {LIVE} GROUP BY flow_id, version, step_id \
         ON CONFLICT (flow_id, version, step_id) DO UPDATE SET dropped = dropped + excluded.dropped"
    ))?
    .execute([owner])?;
    Ok(())
}

/// Part of a contact's erasure: their runs stop (counted as dropped) and lose their
/// variables and errors, their signals their data, since both hold what the person
/// answered and sent.
pub(crate) fn erase_flow_data(c: &Connection, contact: ContactId, at: Timestamp) -> Result<()> {
    drop_live_runs(c, "contact_id", contact.0)?;
    c.prepare_cached(&format!(
        "UPDATE flow_runs SET status = 'stopped', wait = NULL, due_at = NULL, lease_until = NULL, \
         ended_at = ?2, updated_at = ?2, revision = revision + 1 \
         WHERE contact_id = ?1 AND status IN {LIVE}"
    ))?
    .execute([contact.0, us(at)])?;
    c.prepare_cached("UPDATE flow_runs SET vars = '{}', error = NULL WHERE contact_id = ?1")?
        .execute([contact.0])?;
    c.prepare_cached("UPDATE flow_signals SET data = '{}', error = NULL WHERE contact_id = ?1")?
        .execute([contact.0])?;
    Ok(())
}

/// A commit with its JSON encoded off the writer thread.
struct Encoded {
    commit: FlowCommit,
    /// `vars` of each run write, in order.
    vars: Vec<String>,
    /// `data` of each new signal, in order.
    signals: Vec<String>,
}

impl Encoded {
    fn new(commit: FlowCommit) -> Result<Self> {
        let vars = commit
            .runs
            .iter()
            .map(|w| match w {
                RunWrite::Insert(n) => to_json(&n.state.vars),
                RunWrite::Update { state, .. } => to_json(&state.vars),
            })
            .collect::<Result<Vec<_>>>()?;
        let signals = commit
            .signals
            .iter()
            .map(|s| to_json(&s.data))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoded {
            commit,
            vars,
            signals,
        })
    }
}

/// Flows this commit may touch: checked once each, whatever the number of runs and
/// counters naming them.
struct CheckedFlows(Vec<FlowId>);

impl CheckedFlows {
    /// Fails unless `flow` is the workspace's; `start` also refuses an archived flow.
    fn check(&mut self, c: &Connection, ws: WorkspaceId, flow: FlowId, start: bool) -> Result<()> {
        if !start && self.0.contains(&flow) {
            return Ok(());
        }
        let status: Option<FlowStatus> = c
            .prepare_cached("SELECT status FROM flows WHERE id = ?1 AND workspace_id = ?2")?
            .query_row([flow.0, ws.0], |r| parsed(r, 0))
            .optional()?;
        match status {
            None => Err(ValidationError::new("flow_id", format!("unknown flow {flow}")).into()),
            Some(FlowStatus::Archived) if start => Err(flow_archived()),
            Some(_) => {
                self.0.push(flow);
                Ok(())
            }
        }
    }
}

/// `commit_flow` on the writer.
fn apply_commit(c: &Connection, ws: WorkspaceId, e: &Encoded) -> Result<FlowCommitted> {
    let k = &e.commit;
    let at = now();
    let contact = k.contact_id;
    let erased: Option<i64> = c
        .prepare_cached("SELECT erased_at FROM contacts WHERE id = ?1 AND workspace_id = ?2")?
        .query_row([contact.0, ws.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("contact"))?;
    let erased = erased.is_some();
    if erased && !k.changes.is_empty() {
        return Err(contact_erased());
    }
    let mut flows = CheckedFlows(Vec::new());
    let mut out = FlowCommitted {
        run_ids: Vec::with_capacity(k.runs.len()),
        ..FlowCommitted::default()
    };
    for (w, vars) in k.runs.iter().zip(&e.vars) {
        out.run_ids
            .push(write_run(c, ws, contact, w, vars, at, &mut flows)?);
    }

    let ch = &k.changes;
    let mut touched = false;
    if !ch.add_tags.is_empty() {
        out.tags_added = add_tags_with_events(c, ws, contact, &ch.add_tags, at)?;
        touched |= !out.tags_added.is_empty();
    }
    for name in &ch.remove_tags {
        touched |= remove_tag_with_event(c, ws, contact, name, at)?;
    }
    if !ch.fields.is_empty() {
        touched |= set_fields_with_events(c, ws, contact, &ch.fields, at)?;
    }
    if let Some(p) = &ch.profile {
        touched |= replace_profile(c, ws, contact, p, at)?;
    }
    for (channel, topic) in &ch.subscribe_topics {
        touched |= change_topic(c, ws, contact, *channel, topic, true, at)?;
    }
    for (channel, topic) in &ch.unsubscribe_topics {
        touched |= change_topic(c, ws, contact, *channel, topic, false, at)?;
    }

    for (kind, data) in &k.events {
        insert_event(c, ws, contact, kind.as_str(), data, at)?;
    }
    for (i, m) in k.messages.iter().enumerate() {
        if erased {
            out.skipped.push((i, "contact_erased".into()));
            continue;
        }
        // A refusal (no consent, no address) leaves nothing behind: the checks come
        // before the insert, so the rest of the commit goes on.
        match enqueue_for(c, ws, contact, &m.outbound) {
            Ok(id) => out.queued.push(id),
            Err(StoreError::Conflict { code, .. }) => out.skipped.push((i, code.to_string())),
            Err(e) => return Err(e),
        }
    }
    for d in &k.counters {
        if d.entered == 0 && d.completed == 0 && d.dropped == 0 && d.clicked == 0 {
            continue;
        }
        flows.check(c, ws, d.flow_id, false)?;
        c.prepare_cached(
            "INSERT INTO flow_step_counters (flow_id, version, step_id, workspace_id, entered, \
             completed, dropped, clicked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (flow_id, version, step_id) DO UPDATE SET \
             entered = entered + excluded.entered, completed = completed + excluded.completed, \
             dropped = dropped + excluded.dropped, clicked = clicked + excluded.clicked",
        )?
        .execute(params![
            d.flow_id.0,
            d.version,
            d.step_id,
            ws.0,
            stored_count(d.entered),
            stored_count(d.completed),
            stored_count(d.dropped),
            stored_count(d.clicked),
        ])?;
    }
    for (s, data) in k.signals.iter().zip(&e.signals) {
        if s.contact_id != contact {
            ensure_contact(c, ws, s.contact_id)?;
        }
        insert_signal_text(c, ws, s.contact_id, s.channel_id, &s.kind, data, at)?;
    }
    for id in &k.consume {
        c.prepare_cached("DELETE FROM flow_signals WHERE id = ?1 AND workspace_id = ?2")?
            .execute([id.0, ws.0])?;
    }
    if touched {
        touch_contact(c, contact, at)?;
    }
    Ok(out)
}

/// Inserts or updates one run of `contact`; returns its id.
fn write_run(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    w: &RunWrite,
    vars: &str,
    at: Timestamp,
    flows: &mut CheckedFlows,
) -> Result<RunId> {
    match w {
        RunWrite::Insert(n) => {
            flows.check(c, ws, n.flow_id, true)?;
            let s = &n.state;
            c.prepare_cached(
                "INSERT INTO flow_runs (workspace_id, flow_id, version, contact_id, channel_id, \
                 status, step_id, wait, due_at, attempts, vars, started_by, error, started_at, \
                 updated_at, ended_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15)",
            )?
            .execute(params![
                ws.0,
                n.flow_id.0,
                n.version,
                contact.0,
                n.channel_id.map(|ch| ch.0),
                s.status.as_str(),
                s.step_id,
                s.wait.map(WaitKind::as_str),
                s.due_at.map(us),
                s.attempts,
                vars,
                n.trigger,
                s.error,
                us(at),
                (!s.status.is_live()).then(|| us(at)),
            ])?;
            Ok(RunId(c.last_insert_rowid()))
        }
        RunWrite::Update {
            id,
            revision,
            state: s,
        } => {
            let flow: Option<i64> = c
                .prepare_cached(
                    "UPDATE flow_runs SET status = ?1, step_id = ?2, wait = ?3, due_at = ?4, \
                     attempts = ?5, vars = ?6, error = ?7, updated_at = ?8, \
                     ended_at = CASE WHEN ?9 THEN NULL ELSE coalesce(ended_at, ?8) END, \
                     revision = revision + 1, lease_until = NULL \
                     WHERE id = ?10 AND workspace_id = ?11 AND contact_id = ?12 AND revision = ?13 \
                     RETURNING flow_id",
                )?
                .query_row(
                    params![
                        s.status.as_str(),
                        s.step_id,
                        s.wait.map(WaitKind::as_str),
                        s.due_at.map(us),
                        s.attempts,
                        vars,
                        s.error,
                        us(at),
                        s.status.is_live(),
                        id.0,
                        ws.0,
                        contact.0,
                        revision,
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            match flow {
                Some(f) => {
                    flows.0.push(FlowId(f));
                    Ok(*id)
                }
                None => {
                    let exists = c
                        .prepare_cached(
                            "SELECT 1 FROM flow_runs WHERE id = ?1 AND workspace_id = ?2 AND contact_id = ?3",
                        )?
                        .exists([id.0, ws.0, contact.0])?;
                    Err(if exists {
                        run_changed(*id)
                    } else {
                        StoreError::not_found("run")
                    })
                }
            }
        }
    }
}

/// Adds or removes a topic on the contact's subscribed identity on `channel`, through
/// the subscription history like any consent change; returns whether it changed. An
/// identity that is not subscribed there is left alone.
fn change_topic(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: ChannelId,
    topic: &str,
    subscribe: bool,
    at: Timestamp,
) -> Result<bool> {
    let ident = c
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLS} FROM identities \
             WHERE contact_id = ?1 AND channel_id = ?2 AND workspace_id = ?3 AND sub_state = 'subscribed' \
             ORDER BY id DESC LIMIT 1"
        ))?
        .query_row([contact.0, channel.0, ws.0], identity_row)
        .optional()?;
    let Some(ident) = ident else {
        return Ok(false);
    };
    let all = if topic_change_needs_all(&ident.subscription, subscribe) {
        c.prepare_cached("SELECT key FROM topics WHERE workspace_id = ?1 ORDER BY key")?
            .query_map([ws.0], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?
    } else {
        Vec::new()
    };
    let Some(change) = topic_change(&ident.subscription, topic, subscribe, &all, at)? else {
        return Ok(false);
    };
    apply_subscription(c, ws, contact, ident.id, channel, &change, at)?;
    let mut data = subscription_event(ident.id, channel, &change);
    data["source"] = json!("flow");
    insert_event(
        c,
        ws,
        contact,
        EventKind::SubscriptionChanged.as_str(),
        &data,
        at,
    )?;
    Ok(true)
}

/// `list_runs` on a read connection. The SQL names only the filters given, so each
/// combination gets a plan that uses its index (an `?n IS NULL OR …` would defeat it).
fn list_runs(c: &Connection, ws: WorkspaceId, q: &RunQuery) -> Result<Vec<FlowRun>> {
    use rusqlite::types::Value as V;
    let mut sql = format!("SELECT {RUN_COLS} FROM flow_runs WHERE workspace_id = ?1");
    let mut args: Vec<V> = vec![V::Integer(ws.0)];
    let mut add = |sql: &mut String, cond: &str, v: V| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(f) = q.flow_id {
        add(&mut sql, "flow_id =", V::Integer(f.0));
    }
    if let Some(ct) = q.contact_id {
        add(&mut sql, "contact_id =", V::Integer(ct.0));
    }
    if let Some(s) = q.status {
        add(&mut sql, "status =", V::Text(s.as_str().into()));
    }
    if let Some(step) = &q.step_id {
        add(&mut sql, "step_id =", V::Text(step.clone()));
    }
    if let Some(b) = q.before {
        add(&mut sql, "id <", V::Integer(b.0));
    }
    args.push(V::Integer(run_limit(q.limit)));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    Ok(c.prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), run_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

#[async_trait]
impl FlowStore for SqliteStore {
    async fn workspace_settings(&self, ws: WorkspaceId) -> Result<WorkspaceSettings> {
        self.read(move |c| {
            let text: String = c
                .prepare_cached("SELECT settings FROM workspaces WHERE id = ?1")?
                .query_row([ws.0], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found("workspace"))?;
            serde_json::from_str(&text).map_err(|e| {
                StoreError::Database(format!("stored workspace settings do not parse: {e}"))
            })
        })
        .await
    }

    async fn set_workspace_settings(&self, ws: WorkspaceId, s: WorkspaceSettings) -> Result<()> {
        let text = to_json(&s)?;
        self.write(move |c| {
            let n = c
                .prepare_cached("UPDATE workspaces SET settings = ?1 WHERE id = ?2")?
                .execute(params![text, ws.0])?;
            if n == 0 {
                return Err(StoreError::not_found("workspace"));
            }
            Ok(())
        })
        .await
    }

    async fn create_topic(&self, ws: WorkspaceId, topic: Topic) -> Result<Topic> {
        let topic = valid_topic(topic)?;
        self.write(move |c| {
            let r = c
                .prepare_cached(
                    "INSERT INTO topics (workspace_id, key, name, created_at) \
                     SELECT ?1, ?2, ?3, ?4 FROM workspaces WHERE id = ?1",
                )?
                .execute(params![ws.0, topic.key, topic.name, us(now())]);
            match r {
                Ok(0) => Err(StoreError::not_found("workspace")),
                Ok(_) => Ok(topic),
                Err(e) if is_unique(&e) => Err(topic_exists(&topic.key)),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn list_topics(&self, ws: WorkspaceId) -> Result<Vec<Topic>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT key, name FROM topics WHERE workspace_id = ?1 ORDER BY key",
            )?
            .query_map([ws.0], |r| {
                Ok(Topic {
                    key: r.get(0)?,
                    name: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_flow(&self, ws: WorkspaceId, name: &str, draft: Value) -> Result<Flow> {
        let name = flow_name(name)?;
        let draft = to_json(&draft)?;
        self.write(move |c| {
            let at = us(now());
            let r = c
                .prepare_cached(
                    "INSERT INTO flows (workspace_id, name, status, draft, revision, created_at, updated_at) \
                     SELECT ?1, ?2, 'draft', ?3, 1, ?4, ?4 FROM workspaces WHERE id = ?1",
                )?
                .execute(params![ws.0, name, draft, at]);
            match r {
                Ok(0) => Err(StoreError::not_found("workspace")),
                Ok(_) => get_flow(c, ws, FlowId(c.last_insert_rowid())),
                Err(e) if is_unique(&e) => Err(flow_name_taken(&name)),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn get_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
        self.read(move |c| get_flow(c, ws, id)).await
    }

    async fn find_flow(&self, ws: WorkspaceId, name: &str) -> Result<Option<Flow>> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {FLOW_COLS} FROM flows WHERE workspace_id = ?1 AND name = ?2"
            ))?
            .query_row(params![ws.0, name], flow_row)
            .optional()?)
        })
        .await
    }

    async fn list_flows(&self, ws: WorkspaceId, archived: bool) -> Result<Vec<Flow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {FLOW_COLS} FROM flows WHERE workspace_id = ?1 AND (?2 OR status <> 'archived') \
                 ORDER BY name"
            ))?
            .query_map(params![ws.0, archived], flow_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
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
        let draft = draft.as_ref().map(to_json).transpose()?;
        self.write(move |c| {
            let (status, current) = flow_status(c, ws, id)?;
            if status == FlowStatus::Archived {
                return Err(flow_archived());
            }
            if revision.is_some_and(|r| r != current) {
                return Err(flow_changed(current));
            }
            if name.is_none() && draft.is_none() {
                return get_flow(c, ws, id);
            }
            let r = c
                .prepare_cached(
                    "UPDATE flows SET name = coalesce(?1, name), draft = coalesce(?2, draft), \
                     revision = revision + 1, updated_at = ?3 WHERE id = ?4",
                )?
                .execute(params![name, draft, us(now()), id.0]);
            match r {
                Ok(_) => get_flow(c, ws, id),
                Err(e) if is_unique(&e) => Err(flow_name_taken(name.as_deref().unwrap_or(""))),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn publish_flow(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        document: Value,
    ) -> Result<FlowVersion> {
        let text = to_json(&document)?;
        self.write(move |c| {
            let (status, _) = flow_status(c, ws, id)?;
            if status == FlowStatus::Archived {
                return Err(flow_archived());
            }
            let at = now();
            let version: u32 = c
                .prepare_cached(
                    "SELECT coalesce(max(version), 0) + 1 FROM flow_versions WHERE flow_id = ?1",
                )?
                .query_row([id.0], |r| r.get(0))?;
            c.prepare_cached(
                "INSERT INTO flow_versions (flow_id, version, workspace_id, document, published_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id.0, version, ws.0, text, us(at)])?;
            c.prepare_cached(
                "UPDATE flows SET status = 'published', published_version = ?1, draft = ?2, \
                 revision = revision + 1, updated_at = ?3 WHERE id = ?4",
            )?
            .execute(params![version, text, us(at), id.0])?;
            Ok(FlowVersion {
                flow_id: id,
                version,
                document,
                published_at: at,
            })
        })
        .await
    }

    async fn archive_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow> {
        self.write(move |c| {
            let (status, _) = flow_status(c, ws, id)?;
            if status == FlowStatus::Archived {
                return get_flow(c, ws, id);
            }
            let at = us(now());
            drop_live_runs(c, "flow_id", id.0)?;
            // The revision moves so a worker holding one of these runs cannot revive it.
            c.prepare_cached(&format!(
                "UPDATE flow_runs SET status = 'cancelled', wait = NULL, due_at = NULL, error = NULL, \
                 lease_until = NULL, ended_at = ?2, updated_at = ?2, revision = revision + 1 \
                 WHERE flow_id = ?1 AND status IN {LIVE}"
            ))?
            .execute([id.0, at])?;
            c.prepare_cached("UPDATE flows SET status = 'archived', updated_at = ?1 WHERE id = ?2")?
                .execute([at, id.0])?;
            get_flow(c, ws, id)
        })
        .await
    }

    async fn get_flow_version(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        version: u32,
    ) -> Result<FlowVersion> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT document, published_at FROM flow_versions \
                 WHERE flow_id = ?1 AND version = ?2 AND workspace_id = ?3",
            )?
            .query_row(params![id.0, version, ws.0], |r| {
                Ok(FlowVersion {
                    flow_id: id,
                    version,
                    document: json_col(r, 0)?,
                    published_at: ts(r, 1)?,
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found("flow_version"))
        })
        .await
    }

    async fn published_flows(&self) -> Result<Vec<(Flow, FlowVersion)>> {
        self.read(|c| {
            let cols = FLOW_COLS
                .split(", ")
                .map(|col| format!("f.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(c.prepare_cached(&format!(
                "SELECT {cols}, v.version, v.document, v.published_at FROM flows f \
                 JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.published_version \
                 WHERE f.status = 'published' ORDER BY f.id"
            ))?
            .query_map([], |r| {
                let flow = flow_row(r)?;
                let version = FlowVersion {
                    flow_id: flow.id,
                    version: r.get(9)?,
                    document: json_col(r, 10)?,
                    published_at: ts(r, 11)?,
                };
                Ok((flow, version))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_run(&self, ws: WorkspaceId, id: RunId) -> Result<FlowRun> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM flow_runs WHERE id = ?1 AND workspace_id = ?2"
            ))?
            .query_row([id.0, ws.0], run_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found("run"))
        })
        .await
    }

    async fn list_runs(&self, ws: WorkspaceId, q: RunQuery) -> Result<Vec<FlowRun>> {
        self.read(move |c| list_runs(c, ws, &q)).await
    }

    async fn live_runs(&self, ws: WorkspaceId, contact: ContactId) -> Result<Vec<FlowRun>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM flow_runs \
                 WHERE contact_id = ?1 AND workspace_id = ?2 AND status IN {LIVE} ORDER BY id"
            ))?
            .query_map([contact.0, ws.0], run_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn run_counts(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<(RunStatus, u64)>> {
        self.read(move |c| {
            flow_status(c, ws, flow)?;
            let rows = c
                .prepare_cached(
                    "SELECT status, count(*) FROM flow_runs WHERE flow_id = ?1 GROUP BY status",
                )?
                .query_map([flow.0], |r| Ok((parsed(r, 0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(all_run_counts(rows))
        })
        .await
    }

    async fn ever_ran(&self, ws: WorkspaceId, contact: ContactId, flow: FlowId) -> Result<bool> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM flow_runs WHERE contact_id = ?1 AND flow_id = ?2 AND workspace_id = ?3",
            )?
            .exists([contact.0, flow.0, ws.0])?)
        })
        .await
    }

    async fn step_counters(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<StepCounter>> {
        self.read(move |c| {
            flow_status(c, ws, flow)?;
            let count = |r: &Row<'_>, i: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
            };
            Ok(c.prepare_cached(
                "SELECT version, step_id, entered, completed, dropped, clicked FROM flow_step_counters \
                 WHERE flow_id = ?1 AND workspace_id = ?2 ORDER BY version, step_id",
            )?
            .query_map([flow.0, ws.0], |r| {
                Ok(StepCounter {
                    version: r.get(0)?,
                    step_id: r.get(1)?,
                    entered: count(r, 2)?,
                    completed: count(r, 3)?,
                    dropped: count(r, 4)?,
                    clicked: count(r, 5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn emit_signal(&self, ws: WorkspaceId, signal: NewSignal) -> Result<SignalId> {
        let data = to_json(&signal.data)?;
        self.write(move |c| {
            ensure_live_contact(c, ws, signal.contact_id)?;
            if let Some(ch) = signal.channel_id {
                if !super::contacts::channel_in(c, ws, ch)? {
                    return Err(ValidationError::new(
                        "channel_id",
                        format!("unknown channel {ch}"),
                    )
                    .into());
                }
            }
            insert_signal_text(
                c,
                ws,
                signal.contact_id,
                signal.channel_id,
                &signal.kind,
                &data,
                now(),
            )
        })
        .await
    }

    async fn claim_signals(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowSignal>> {
        self.write(move |c| {
            let at = us(now());
            let until = at.saturating_add(lease_us(lease));
            // A contact with a signal out on lease gets none of its others: its signals
            // stay in order, handled by one worker at a time.
            let mut items = c
                .prepare_cached(&format!(
                    "UPDATE flow_signals SET lease_until = ?1, attempts = attempts + 1 \
                     WHERE id IN (SELECT s.id FROM flow_signals s \
                         WHERE s.state = 'pending' AND (s.lease_until IS NULL OR s.lease_until < ?2) \
                         AND NOT EXISTS (SELECT 1 FROM flow_signals o WHERE o.contact_id = s.contact_id \
                             AND o.state = 'pending' AND o.lease_until >= ?2) \
                         ORDER BY s.id LIMIT ?3) \
                     RETURNING {SIGNAL_COLS}"
                ))?
                .query_map(params![until, at, batch_limit(limit)], signal_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // RETURNING comes in no particular order.
            items.sort_by_key(|s| s.id);
            Ok(items)
        })
        .await
    }

    async fn fail_signal(&self, id: SignalId, error: &str, park: bool) -> Result<()> {
        let error = error.to_string();
        self.write(move |c| {
            let state = if park { "failed" } else { "pending" };
            let n = c
                .prepare_cached(
                    "UPDATE flow_signals SET state = ?1, error = ?2, lease_until = NULL \
                     WHERE id = ?3 AND state = 'pending'",
                )?
                .execute(params![state, error, id.0])?;
            if n == 0 {
                let exists = c
                    .prepare_cached("SELECT 1 FROM flow_signals WHERE id = ?1")?
                    .exists([id.0])?;
                if !exists {
                    return Err(StoreError::not_found("signal"));
                }
            }
            Ok(())
        })
        .await
    }

    async fn claim_due_runs(
        &self,
        now: Timestamp,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowRun>> {
        self.write(move |c| {
            let at = us(now);
            let until = at.saturating_add(lease_us(lease));
            // The revision stays: the commit that handles the run checks it, and clears
            // the lease. The conditions repeat the partial index's, so SQLite uses it.
            let mut runs = c
                .prepare_cached(&format!(
                    "UPDATE flow_runs SET lease_until = ?1 \
                     WHERE id IN (SELECT id FROM flow_runs \
                         WHERE status = 'waiting' AND due_at IS NOT NULL AND due_at <= ?2 \
                         AND (lease_until IS NULL OR lease_until < ?2) \
                         ORDER BY due_at LIMIT ?3) \
                     RETURNING {RUN_COLS}"
                ))?
                .query_map(params![until, at, batch_limit(limit)], run_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            runs.sort_by_key(|r| (r.due_at, r.id));
            Ok(runs)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        self.read(|c| {
            // Runs out on a live lease are being handled; skipping them keeps the timer
            // from waking for work it cannot claim.
            c.prepare_cached(
                "SELECT due_at FROM flow_runs WHERE status = 'waiting' AND due_at IS NOT NULL \
                 AND (lease_until IS NULL OR lease_until < ?1) ORDER BY due_at LIMIT 1",
            )?
            .query_row([us(now())], |r| ts(r, 0))
            .optional()
            .map_err(Into::into)
        })
        .await
    }

    async fn commit_flow(&self, ws: WorkspaceId, commit: FlowCommit) -> Result<FlowCommitted> {
        let encoded = Encoded::new(commit)?;
        self.write(move |c| apply_commit(c, ws, &encoded)).await
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
        let keys = json_strings(&keys);
        let field_key = field_key.to_string();
        self.read(move |c| {
            let field: Option<i64> = c
                .prepare_cached(
                    "SELECT id FROM field_definitions WHERE workspace_id = ?1 AND key = ?2 \
                     AND field_type IN ('date', 'datetime')",
                )?
                .query_row(params![ws.0, field_key], |r| r.get(0))
                .optional()?;
            let Some(field) = field else {
                return Ok(Vec::new());
            };
            // Characters 6–10 of `YYYY-MM-DD` and of a UTC RFC 3339 time are `MM-DD`.
            Ok(c.prepare_cached(
                "SELECT cf.contact_id, cf.value_text FROM contact_fields cf \
                 JOIN contacts c ON c.id = cf.contact_id \
                 WHERE cf.field_id = ?1 AND cf.workspace_id = ?2 AND cf.contact_id > ?3 \
                 AND c.erased_at IS NULL \
                 AND substr(cf.value_text, 6, 5) IN (SELECT value FROM json_each(?4)) \
                 ORDER BY cf.contact_id LIMIT ?5",
            )?
            .query_map(
                params![
                    field,
                    ws.0,
                    after.map_or(0, |a| a.0),
                    keys,
                    batch_limit(limit)
                ],
                |r| {
                    Ok(DatedContact {
                        contact_id: ContactId(r.get(0)?),
                        value: r.get(1)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn inactive_contacts(
        &self,
        ws: WorkspaceId,
        from: Timestamp,
        to: Timestamp,
        after: Option<ContactId>,
        limit: u32,
    ) -> Result<Vec<ContactId>> {
        self.read(move |c| {
            // Without statistics SQLite would walk every contact of the workspace in id
            // order; the window is a small slice of the activity index.
            Ok(c.prepare_cached(
                "SELECT id FROM contacts INDEXED BY contacts_activity WHERE workspace_id = ?1 \
                 AND last_activity_at >= ?2 AND last_activity_at < ?3 \
                 AND erased_at IS NULL AND id > ?4 ORDER BY id LIMIT ?5",
            )?
            .query_map(
                params![
                    ws.0,
                    us(from),
                    us(to),
                    after.map_or(0, |a| a.0),
                    batch_limit(limit)
                ],
                |r| Ok(ContactId(r.get(0)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn scan_mark(&self, ws: WorkspaceId, key: &str) -> Result<Option<Timestamp>> {
        let key = key.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT at FROM flow_scan_marks WHERE workspace_id = ?1 AND key = ?2",
            )?
            .query_row(params![ws.0, key], |r| ts(r, 0))
            .optional()?)
        })
        .await
    }

    async fn set_scan_mark(&self, ws: WorkspaceId, key: &str, at: Timestamp) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO flow_scan_marks (workspace_id, key, at) \
                     SELECT ?1, ?2, ?3 FROM workspaces WHERE id = ?1 \
                     ON CONFLICT (workspace_id, key) DO UPDATE SET at = excluded.at",
                )?
                .execute(params![ws.0, key, us(at)])?;
            if n == 0 {
                return Err(StoreError::not_found("workspace"));
            }
            Ok(())
        })
        .await
    }
}
