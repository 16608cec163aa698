//! SegmentStore on SQLite, and the segment → SQL compiler the broadcast planner shares.
//!
//! [`condition`] turns a resolved segment into one boolean expression about a contact id:
//! every leaf is a correlated `EXISTS` probe on a primary key or index (contact_tags by
//! (tag_id, contact_id), contact_fields by (contact_id, field_id), identities, events,
//! flow_runs and broadcast_recipients by contact, contacts by rowid). That is what a
//! caller walking contacts in id order needs.
//!
//! Counting a million contacts that way would probe every one of them, so a count (and a
//! sample) drives from an index instead when the segment allows it, like the contact
//! filter does (see `filter.rs`): when the top level is an AND with a positive tag or
//! field leaf, the query reads that leaf's index range (`contact_tags` primary key, or
//! `contact_fields_value`) and probes only those contacts for the rest. With several such
//! leaves the smallest range wins, measured by counting at most [`PROBE_CAP`] entries of
//! each. Reading contact ids from `contact_tags`/`contact_fields` needs no check of the
//! workspace or of erasure: tag and field ids are resolved inside the workspace, and
//! erasure deletes a contact's tags and field values.

use super::rows::{is_unique, json_col, load_contact, now, ts, us};
use super::SqliteStore;
use crate::segments::*;
use crate::{Contact, Result, SegmentStore, StoreError};
use async_trait::async_trait;
use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;
use voronka_core::filter::{FieldOp, Operand};
use voronka_core::segment::{BroadcastEvent, FieldTest, FlowEvent, Leaf, Resolved, SegmentCatalog};
use voronka_core::*;

/// Columns read by [`segment_row`].
const SEGMENT_COLS: &str = "id, name, filter, revision, created_at, updated_at";

fn segment_row(r: &Row<'_>) -> rusqlite::Result<Segment> {
    Ok(Segment {
        id: SegmentId(r.get(0)?),
        name: r.get(1)?,
        filter: json_col(r, 2)?,
        revision: r.get(3)?,
        created_at: ts(r, 4)?,
        updated_at: ts(r, 5)?,
    })
}

fn get_segment(c: &Connection, ws: WorkspaceId, id: SegmentId) -> Result<Segment> {
    c.prepare_cached(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], segment_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("segment"))
}

/// Escapes LIKE wildcards so user text matches literally.
fn like_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for ch in needle.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

fn operand(o: &Operand) -> (&'static str, Sql) {
    match o {
        Operand::Num(n) => ("value_num", Sql::Real(*n)),
        Operand::Text(t) => ("value_text", Sql::Text(t.clone())),
        Operand::None => ("value_text", Sql::Null),
    }
}

fn sql_op(op: FieldOp) -> &'static str {
    match op {
        FieldOp::Eq => "=",
        FieldOp::Ne => "<>",
        FieldOp::Lt => "<",
        FieldOp::Lte => "<=",
        FieldOp::Gt => ">",
        FieldOp::Gte => ">=",
        // Handled by the callers: contains is a LIKE, exists has no comparison.
        FieldOp::Contains | FieldOp::Exists => "=",
    }
}

/// `n` placeholders, comma-separated.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The test of a field on `col_of(kind)`: custom fields compare `value_num` or
/// `value_text` of a contact_fields row, profile attributes one contacts column.
fn test_sql(test: &FieldTest, col_of: &dyn Fn(&str) -> String, params: &mut Vec<Sql>) -> String {
    match test {
        FieldTest::Cmp(FieldOp::Exists, _) => {
            format!("{} IS NOT NULL", col_of("value_text_or_num"))
        }
        FieldTest::Cmp(FieldOp::Contains, o) => {
            // SQLite's LIKE is case-insensitive for ASCII, as the semantics ask.
            let text = match o {
                Operand::Text(t) => t.clone(),
                Operand::Num(n) => n.to_string(),
                Operand::None => String::new(),
            };
            params.push(Sql::Text(like_pattern(&text)));
            format!("{} LIKE ? ESCAPE '\\'", col_of("value_text"))
        }
        FieldTest::Cmp(_, Operand::None) => "0".into(),
        FieldTest::Cmp(op, o) => {
            let (col, v) = operand(o);
            params.push(v);
            format!("{} {} ?", col_of(col), sql_op(*op))
        }
        FieldTest::In(items) => {
            let Some(first) = items.first() else {
                return "0".into();
            };
            let (col, _) = operand(first);
            params.extend(items.iter().map(|o| operand(o).1));
            format!("{} IN ({})", col_of(col), marks(items.len()))
        }
        FieldTest::Between(lo, hi) => {
            let (col, lo) = operand(lo);
            params.push(lo);
            params.push(operand(hi).1);
            format!("{} BETWEEN ? AND ?", col_of(col))
        }
    }
}

/// A test on the contact_fields row aliased `a`.
fn field_pred(a: &str, test: &FieldTest, params: &mut Vec<Sql>) -> String {
    let a = a.to_string();
    test_sql(
        test,
        &move |col| match col {
            // Exists: any stored value (every row has one of the two columns).
            "value_text_or_num" => format!("coalesce({a}.value_num, {a}.value_text)"),
            c => format!("{a}.{c}"),
        },
        params,
    )
}

/// A probe of the contacts row of `id` (`cond` uses the alias `sgc`).
fn on_contact(id: &str, cond: &str) -> String {
    format!("EXISTS (SELECT 1 FROM contacts sgc WHERE sgc.id = {id} AND {cond})")
}

/// `time >= after AND time < before` on `col`, or `None` when unbounded.
fn span(
    col: &str,
    before: Option<jiff::Timestamp>,
    after: Option<jiff::Timestamp>,
    params: &mut Vec<Sql>,
) -> String {
    let mut parts = vec![format!("{col} IS NOT NULL")];
    if let Some(a) = after {
        params.push(Sql::Integer(us(a)));
        parts.push(format!("{col} >= ?"));
    }
    if let Some(b) = before {
        params.push(Sql::Integer(us(b)));
        parts.push(format!("{col} < ?"));
    }
    parts.join(" AND ")
}

fn in_list(col: &str, values: &[String], params: &mut Vec<Sql>) -> String {
    params.extend(values.iter().map(|v| Sql::Text(v.clone())));
    format!("{col} IN ({})", marks(values.len()))
}

fn leaf(l: &Leaf, id: &str, params: &mut Vec<Sql>) -> String {
    match l {
        Leaf::Tag(t) => {
            params.push(Sql::Integer(t.0));
            format!("EXISTS (SELECT 1 FROM contact_tags sgt WHERE sgt.tag_id = ? AND sgt.contact_id = {id})")
        }
        Leaf::Field { field_id, test } => {
            params.push(Sql::Integer(field_id.0));
            let mut p = Vec::new();
            let pred = field_pred("sgf", test, &mut p);
            params.extend(p);
            format!(
                "EXISTS (SELECT 1 FROM contact_fields sgf WHERE sgf.contact_id = {id} AND sgf.field_id = ? AND {pred})"
            )
        }
        Leaf::Profile { column, test } => {
            let col = format!("sgc.{}", column.column());
            let pred = test_sql(test, &|_| col.clone(), params);
            on_contact(id, &pred)
        }
        Leaf::Channels(ids) => {
            params.extend(ids.iter().map(|c| Sql::Integer(c.0)));
            format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.channel_id IN ({}))",
                marks(ids.len())
            )
        }
        Leaf::Subscription { channels, state } => {
            params.push(Sql::Text(state.as_str().into()));
            let mut s = format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.sub_state = ?"
            );
            if !channels.is_empty() {
                params.extend(channels.iter().map(|c| Sql::Integer(c.0)));
                s.push_str(&format!(
                    " AND sgi.channel_id IN ({})",
                    marks(channels.len())
                ));
            }
            s.push(')');
            s
        }
        Leaf::Topic(t) => {
            params.push(Sql::Text(t.clone()));
            // An empty topic list means every topic.
            format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.sub_state = 'subscribed' \
                 AND (sgi.sub_topics = '[]' OR EXISTS (SELECT 1 FROM json_each(sgi.sub_topics) sgj WHERE sgj.value = ?)))"
            )
        }
        Leaf::Language(langs) => {
            let mut parts = Vec::with_capacity(langs.len());
            for l in langs {
                params.push(Sql::Text(l.clone()));
                if l.contains('-') {
                    parts.push("sgc.language = ?".to_string());
                } else {
                    // A bare language matches its regional forms too (`ru` ⊃ `ru-RU`).
                    params.push(Sql::Text(format!("{l}-%")));
                    parts.push("(sgc.language = ? OR sgc.language LIKE ?)".to_string());
                }
            }
            on_contact(id, &format!("({})", parts.join(" OR ")))
        }
        Leaf::TimeZone(v) => {
            let c = in_list("sgc.time_zone", v, params);
            on_contact(id, &c)
        }
        Leaf::Source(v) => {
            let c = in_list("sgc.source", v, params);
            on_contact(id, &c)
        }
        Leaf::Broadcast { id: b, event } => {
            params.push(Sql::Integer(b.0));
            let ev = match event {
                BroadcastEvent::Received => {
                    "sgb.status IN ('sent', 'delivered', 'read', 'clicked')"
                }
                BroadcastEvent::Read => {
                    "(sgb.status IN ('read', 'clicked') OR sgb.read_at IS NOT NULL)"
                }
                BroadcastEvent::Clicked => "sgb.clicked_at IS NOT NULL",
            };
            format!(
                "EXISTS (SELECT 1 FROM broadcast_recipients sgb WHERE sgb.contact_id = {id} AND sgb.broadcast_id = ? AND {ev})"
            )
        }
        Leaf::Flow { id: f, event } => {
            params.push(Sql::Integer(f.0));
            let ev = match event {
                FlowEvent::Entered => "",
                FlowEvent::Finished => " AND sgr.status = 'done'",
            };
            format!(
                "EXISTS (SELECT 1 FROM flow_runs sgr WHERE sgr.contact_id = {id} AND sgr.flow_id = ?{ev})"
            )
        }
        Leaf::Replied { since } => {
            params.push(Sql::Integer(us(*since)));
            format!(
                "EXISTS (SELECT 1 FROM events sge WHERE sge.contact_id = {id} AND sge.kind = 'message_received' AND sge.created_at >= ?)"
            )
        }
        Leaf::Converted { since } => {
            let mut s = format!(
                "EXISTS (SELECT 1 FROM events sge WHERE sge.contact_id = {id} AND sge.kind = 'conversion'"
            );
            if let Some(t) = since {
                params.push(Sql::Integer(us(*t)));
                s.push_str(" AND sge.created_at >= ?");
            }
            s.push(')');
            s
        }
        Leaf::LastActivity { before, after } => {
            let c = span("sgc.last_activity_at", *before, *after, params);
            on_contact(id, &c)
        }
        Leaf::Created { before, after } => {
            let c = span("sgc.created_at", *before, *after, params);
            on_contact(id, &c)
        }
    }
}

/// How cheap a conjunct is to probe, to test cheap ones first (SQLite evaluates AND
/// terms in order and stops at the first false one).
fn cost(r: &Resolved) -> u8 {
    match r {
        Resolved::Leaf(Leaf::Tag(_)) => 0,
        Resolved::Leaf(Leaf::Field { .. }) => 1,
        Resolved::Leaf(
            Leaf::Profile { .. }
            | Leaf::Language(_)
            | Leaf::TimeZone(_)
            | Leaf::Source(_)
            | Leaf::LastActivity { .. }
            | Leaf::Created { .. },
        ) => 2,
        Resolved::Leaf(Leaf::Channels(_) | Leaf::Subscription { .. } | Leaf::Topic(_)) => 3,
        Resolved::Leaf(_) => 4,
        _ => 5,
    }
}

/// A boolean SQL expression: the contact whose id is the SQL expression `id` (e.g.
/// `c.id`) is in the segment. Parameters are appended to `params` in order. The caller
/// restricts contacts to the workspace and excludes erased ones.
pub(crate) fn condition(seg: &Resolved, id: &str, params: &mut Vec<Sql>) -> String {
    match seg {
        Resolved::All => "1".into(),
        Resolved::And(items) => {
            if items.is_empty() {
                return "1".into();
            }
            let mut sorted: Vec<&Resolved> = items.iter().collect();
            sorted.sort_by_key(|r| cost(r));
            let parts: Vec<String> = sorted.iter().map(|i| condition(i, id, params)).collect();
            format!("({})", parts.join(" AND "))
        }
        Resolved::Or(items) => {
            if items.is_empty() {
                return "0".into();
            }
            let parts: Vec<String> = items.iter().map(|i| condition(i, id, params)).collect();
            format!("({})", parts.join(" OR "))
        }
        Resolved::Not(inner) => format!("NOT {}", wrap(condition(inner, id, params))),
        Resolved::Leaf(l) => leaf(l, id, params),
    }
}

fn wrap(s: String) -> String {
    if s.starts_with('(') {
        s
    } else {
        format!("({s})")
    }
}

/// `FROM … WHERE …` selecting the segment's contacts, the contact id expression, and
/// the parameters.
struct Query {
    body: String,
    id: &'static str,
    params: Vec<Sql>,
}

/// The driver's `FROM … WHERE` start for a tag or field leaf, or `None` for other leaves.
fn driver(l: &Resolved, params: &mut Vec<Sql>) -> Option<String> {
    match l {
        Resolved::Leaf(Leaf::Tag(t)) => {
            params.push(Sql::Integer(t.0));
            Some("FROM contact_tags d WHERE d.tag_id = ?".into())
        }
        Resolved::Leaf(Leaf::Field { field_id, test }) => {
            params.push(Sql::Integer(field_id.0));
            let pred = field_pred("d", test, params);
            Some(format!(
                "FROM contact_fields d WHERE d.field_id = ? AND {pred}"
            ))
        }
        _ => None,
    }
}

/// Entries of a driver's range, counted up to [`PROBE_CAP`].
fn probe(c: &Connection, l: &Resolved) -> Result<i64> {
    let mut params = Vec::new();
    let Some(from) = driver(l, &mut params) else {
        return Ok(i64::MAX);
    };
    let sql = format!("SELECT count(*) FROM (SELECT 1 {from} LIMIT {PROBE_CAP})");
    Ok(c.prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(params), |r| r.get(0))?)
}

/// Builds the query: driven by the smallest tag/field range of a top-level AND, else by
/// the workspace's contacts.
fn build(c: &Connection, ws: WorkspaceId, seg: &Resolved) -> Result<Query> {
    let conjuncts = seg.conjuncts();
    let candidates: Vec<usize> = conjuncts
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Resolved::Leaf(Leaf::Tag(_) | Leaf::Field { .. })))
        .map(|(i, _)| i)
        .collect();
    let chosen = match candidates.as_slice() {
        [] => None,
        [one] => Some(*one),
        many => {
            let mut best = (i64::MAX, many[0]);
            for &i in many {
                let n = probe(c, conjuncts[i])?;
                if n < best.0 {
                    best = (n, i);
                }
            }
            Some(best.1)
        }
    };
    let mut params = Vec::new();
    let (from, id) = match chosen.and_then(|i| driver(conjuncts[i], &mut params)) {
        Some(from) => (from, "d.contact_id"),
        None => {
            params.push(Sql::Integer(ws.0));
            (
                "FROM contacts d WHERE d.workspace_id = ? AND d.erased_at IS NULL".to_string(),
                "d.id",
            )
        }
    };
    let rest: Vec<Resolved> = conjuncts
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != chosen)
        .map(|(_, r)| (*r).clone())
        .collect();
    let body = if rest.is_empty() {
        from
    } else {
        let cond = condition(&Resolved::And(rest), id, &mut params);
        format!("{from} AND {cond}")
    };
    Ok(Query { body, id, params })
}

/// Number of contacts in the segment, counted by SQLite.
pub(crate) fn count(c: &Connection, ws: WorkspaceId, seg: &Resolved) -> Result<u64> {
    let q = build(c, ws, seg)?;
    let sql = format!("SELECT count(*) {}", q.body);
    let n: i64 = c
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(q.params), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Ids of the newest `limit` contacts of the segment.
pub(crate) fn sample_ids(
    c: &Connection,
    ws: WorkspaceId,
    seg: &Resolved,
    limit: u32,
) -> Result<Vec<ContactId>> {
    let q = build(c, ws, seg)?;
    let sql = format!(
        "SELECT {id} {body} ORDER BY {id} DESC LIMIT {limit}",
        id = q.id,
        body = q.body,
        limit = limit.min(MAX_SAMPLE)
    );
    let ids = c
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(q.params), |r| {
            r.get(0).map(ContactId)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// The query plan of a segment's count (for checking that it is driven by an index).
pub(crate) fn explain_count(
    c: &Connection,
    ws: WorkspaceId,
    seg: &Resolved,
) -> Result<Vec<String>> {
    let q = build(c, ws, seg)?;
    let sql = format!("EXPLAIN QUERY PLAN SELECT count(*) {}", q.body);
    let rows = c
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(q.params), |r| {
            r.get::<_, String>(3)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The names a workspace's filters may use.
fn catalog(c: &Connection, ws: WorkspaceId) -> Result<SegmentCatalog> {
    let fields = c
        .prepare_cached(
            "SELECT id, key, label, field_type, choices FROM field_definitions WHERE workspace_id = ?1 ORDER BY key",
        )?
        .query_map([ws.0], |r| {
            Ok(voronka_core::field::FieldDefinition {
                id: FieldId(r.get(0)?),
                spec: voronka_core::field::FieldSpec {
                    key: r.get(1)?,
                    label: r.get(2)?,
                    field_type: super::rows::parsed(r, 3)?,
                    choices: super::rows::strings(r, 4)?,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let tags = c
        .prepare_cached("SELECT id, name FROM tags WHERE workspace_id = ?1")?
        .query_map([ws.0], |r| Ok((TagId(r.get(0)?), r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let channels = c
        .prepare_cached("SELECT id, kind FROM channels WHERE workspace_id = ?1 ORDER BY id")?
        .query_map([ws.0], |r| {
            Ok((ChannelId(r.get(0)?), super::rows::parsed(r, 1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let topics = c
        .prepare_cached("SELECT key FROM topics WHERE workspace_id = ?1")?
        .query_map([ws.0], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let flows = c
        .prepare_cached("SELECT id, name FROM flows WHERE workspace_id = ?1")?
        .query_map([ws.0], |r| Ok((FlowId(r.get(0)?), r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let broadcasts = c
        .prepare_cached("SELECT id FROM broadcasts WHERE workspace_id = ?1")?
        .query_map([ws.0], |r| r.get(0).map(BroadcastId))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(SegmentCatalog {
        fields,
        tags,
        channels,
        topics,
        flows,
        broadcasts,
    })
}

impl SqliteStore {
    /// SQLite's query plan for counting a segment (one line per step).
    pub async fn segment_count_plan(&self, ws: WorkspaceId, seg: &Resolved) -> Result<Vec<String>> {
        let seg = seg.clone();
        self.read(move |c| explain_count(c, ws, &seg)).await
    }
}

#[async_trait]
impl SegmentStore for SqliteStore {
    async fn segment_catalog(&self, ws: WorkspaceId) -> Result<SegmentCatalog> {
        self.read(move |c| catalog(c, ws)).await
    }

    async fn create_segment(&self, ws: WorkspaceId, name: &str, filter: Value) -> Result<Segment> {
        let name = segment_name(name)?;
        let filter = segment_filter(&filter)?;
        self.write(move |c| {
            let at = us(now());
            let r = c
                .prepare_cached(
                    "INSERT INTO segments (workspace_id, name, filter, revision, created_at, updated_at) \
                     SELECT ?1, ?2, ?3, 1, ?4, ?4 FROM workspaces WHERE id = ?1",
                )?
                .execute(params![ws.0, name, filter, at]);
            match r {
                Ok(0) => Err(StoreError::not_found("workspace")),
                Ok(_) => get_segment(c, ws, SegmentId(c.last_insert_rowid())),
                Err(e) if is_unique(&e) => Err(segment_name_taken(&name)),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn get_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<Segment> {
        self.read(move |c| get_segment(c, ws, id)).await
    }

    async fn list_segments(&self, ws: WorkspaceId) -> Result<Vec<Segment>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {SEGMENT_COLS} FROM segments WHERE workspace_id = ?1 ORDER BY name"
            ))?
            .query_map([ws.0], segment_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_segment(
        &self,
        ws: WorkspaceId,
        id: SegmentId,
        name: Option<String>,
        filter: Option<Value>,
    ) -> Result<Segment> {
        let name = name.as_deref().map(segment_name).transpose()?;
        let filter = filter.as_ref().map(segment_filter).transpose()?;
        self.write(move |c| {
            let current = get_segment(c, ws, id)?;
            if name.is_none() && filter.is_none() {
                return Ok(current);
            }
            let r = c
                .prepare_cached(
                    "UPDATE segments SET name = coalesce(?1, name), filter = coalesce(?2, filter), \
                     revision = revision + 1, updated_at = ?3 WHERE id = ?4 AND workspace_id = ?5",
                )?
                .execute(params![name, filter, us(now()), id.0, ws.0]);
            match r {
                Ok(_) => get_segment(c, ws, id),
                Err(e) if is_unique(&e) => Err(segment_name_taken(name.as_deref().unwrap_or(""))),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn delete_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<()> {
        self.write(move |c| {
            get_segment(c, ws, id)?;
            let used = c
                .prepare_cached(&format!(
                    "SELECT 1 FROM broadcasts WHERE workspace_id = ?1 AND segment_id = ?2 AND status NOT IN {OVER} LIMIT 1"
                ))?
                .exists([ws.0, id.0])?;
            if used {
                return Err(segment_in_use());
            }
            c.prepare_cached("DELETE FROM segments WHERE id = ?1 AND workspace_id = ?2")?
                .execute([id.0, ws.0])?;
            Ok(())
        })
        .await
    }

    async fn count_segment(&self, ws: WorkspaceId, seg: &Resolved) -> Result<u64> {
        let seg = seg.clone();
        self.read(move |c| count(c, ws, &seg)).await
    }

    async fn sample_segment(
        &self,
        ws: WorkspaceId,
        seg: &Resolved,
        limit: u32,
    ) -> Result<Vec<Contact>> {
        let seg = seg.clone();
        self.read(move |c| {
            sample_ids(c, ws, &seg, limit)?
                .into_iter()
                .map(|id| load_contact(c, ws, id))
                .collect()
        })
        .await
    }
}
