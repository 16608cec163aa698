//! SegmentStore on PostgreSQL, and the segment → SQL compiler the broadcast planner
//! shares.
//!
//! [`push_condition`] writes one boolean expression about a contact id; every leaf is a
//! correlated `EXISTS` on an indexed table, which the planner turns into semi-joins.
//! Counts and samples drive from an index when they can, as the contact filter's count
//! does (see `filter.rs`): the smallest tag or field range of a top-level AND (measured
//! by counting at most [`PROBE_CAP`] entries of each candidate), so a count reads that
//! range and probes only its contacts. Those rows need no workspace check (tag and field
//! ids are the workspace's); erased contacts are subtracted with an anti-join on the tiny
//! `contacts_erased` partial index.

use super::contacts::load_contacts;
use super::{is_unique_violation, now_us, parse_stored, ts, PgStore};
use crate::segments::*;
use crate::{Contact, Result, SegmentStore, StoreError};
use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use voronka_core::field::{FieldDefinition, FieldSpec};
use voronka_core::filter::{FieldOp, Operand};
use voronka_core::segment::{BroadcastEvent, FieldTest, FlowEvent, Leaf, Resolved, SegmentCatalog};
use voronka_core::*;

/// Columns read by [`segment_row`].
const SEGMENT_COLS: &str = "id, name, filter, revision, created_at, updated_at";

fn segment_row(r: &PgRow) -> Result<Segment> {
    let filter: sqlx::types::Json<Value> = r.try_get("filter")?;
    Ok(Segment {
        id: SegmentId(r.try_get("id")?),
        name: r.try_get("name")?,
        filter: filter.0,
        revision: r.try_get("revision")?,
        created_at: ts(r.try_get("created_at")?),
        updated_at: ts(r.try_get("updated_at")?),
    })
}

async fn get_segment(conn: &mut PgConnection, ws: WorkspaceId, id: SegmentId) -> Result<Segment> {
    let r = sqlx::query(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE id = $1 AND workspace_id = $2"
    ))
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found("segment"))?;
    segment_row(&r)
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

/// Binds one operand.
fn bind_operand(qb: &mut QueryBuilder<'_, Postgres>, o: &Operand) {
    match o {
        Operand::Num(n) => qb.push_bind(*n),
        Operand::Text(t) => qb.push_bind(t.clone()),
        Operand::None => qb.push("NULL"),
    };
}

/// The column of a custom field an operand compares (`value_num` or `value_text`).
fn field_col(alias: &str, o: &Operand) -> String {
    match o {
        Operand::Num(_) => format!("{alias}.value_num"),
        _ => format!("{alias}.value_text"),
    }
}

/// Pushes a test; `col` gives the column for an operand (`None` for exists).
fn push_test(
    qb: &mut QueryBuilder<'_, Postgres>,
    test: &FieldTest,
    col: &dyn Fn(Option<&Operand>) -> String,
) {
    match test {
        FieldTest::Cmp(FieldOp::Exists, _) => {
            qb.push(format!("{} IS NOT NULL", col(None)));
        }
        FieldTest::Cmp(FieldOp::Contains, o) => {
            let text = match o {
                Operand::Text(t) => t.clone(),
                Operand::Num(n) => n.to_string(),
                Operand::None => String::new(),
            };
            let c = col(Some(&Operand::Text(String::new())));
            qb.push(format!("lower({c}) LIKE "))
                .push_bind(super::filter::like_pattern(&text))
                .push(" ESCAPE '\\'");
        }
        FieldTest::Cmp(_, Operand::None) => {
            qb.push("FALSE");
        }
        FieldTest::Cmp(op, o) => {
            qb.push(format!("{} {} ", col(Some(o)), sql_op(*op)));
            bind_operand(qb, o);
        }
        FieldTest::In(items) => match items.first() {
            None => {
                qb.push("FALSE");
            }
            Some(Operand::Num(_)) => {
                let v: Vec<f64> = items
                    .iter()
                    .filter_map(|o| match o {
                        Operand::Num(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                qb.push(format!("{} = ANY(", col(items.first())))
                    .push_bind(v)
                    .push(")");
            }
            Some(_) => {
                let v: Vec<String> = items
                    .iter()
                    .filter_map(|o| match o {
                        Operand::Text(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
                qb.push(format!("{} = ANY(", col(items.first())))
                    .push_bind(v)
                    .push(")");
            }
        },
        FieldTest::Between(lo, hi) => {
            qb.push(format!("{} BETWEEN ", col(Some(lo))));
            bind_operand(qb, lo);
            qb.push(" AND ");
            bind_operand(qb, hi);
        }
    }
}

/// A test on the contact_fields row aliased `a`.
fn push_field_test(qb: &mut QueryBuilder<'_, Postgres>, a: &str, test: &FieldTest) {
    push_test(qb, test, &|o| match o {
        None => format!("coalesce({a}.value_num::text, {a}.value_text)"),
        Some(o) => field_col(a, o),
    });
}

/// `col IS NOT NULL [AND col >= after] [AND col < before]`.
fn push_span(
    qb: &mut QueryBuilder<'_, Postgres>,
    col: &str,
    before: Option<jiff::Timestamp>,
    after: Option<jiff::Timestamp>,
) {
    qb.push(format!("{col} IS NOT NULL"));
    if let Some(a) = after {
        qb.push(format!(" AND {col} >= "))
            .push_bind(a.as_microsecond());
    }
    if let Some(b) = before {
        qb.push(format!(" AND {col} < "))
            .push_bind(b.as_microsecond());
    }
}

fn push_leaf(qb: &mut QueryBuilder<'_, Postgres>, l: &Leaf, id: &str) {
    let contact = format!("EXISTS (SELECT 1 FROM contacts sgc WHERE sgc.id = {id} AND ");
    match l {
        Leaf::Tag(t) => {
            qb.push("EXISTS (SELECT 1 FROM contact_tags sgt WHERE sgt.tag_id = ")
                .push_bind(t.0)
                .push(format!(" AND sgt.contact_id = {id})"));
        }
        Leaf::Field { field_id, test } => {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM contact_fields sgf WHERE sgf.contact_id = {id} AND sgf.field_id = "
            ))
            .push_bind(field_id.0)
            .push(" AND ");
            push_field_test(qb, "sgf", test);
            qb.push(")");
        }
        Leaf::Profile { column, test } => {
            let c = format!("sgc.{}", column.column());
            qb.push(contact);
            push_test(qb, test, &|_| c.clone());
            qb.push(")");
        }
        Leaf::Channels(ids) => {
            let ids: Vec<i64> = ids.iter().map(|c| c.0).collect();
            qb.push(format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.channel_id = ANY("
            ))
            .push_bind(ids)
            .push("))");
        }
        Leaf::Subscription { channels, state } => {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.sub_state = "
            ))
            .push_bind(state.as_str());
            if !channels.is_empty() {
                let ids: Vec<i64> = channels.iter().map(|c| c.0).collect();
                qb.push(" AND sgi.channel_id = ANY(")
                    .push_bind(ids)
                    .push(")");
            }
            qb.push(")");
        }
        Leaf::Topic(t) => {
            // An empty topic list means every topic.
            qb.push(format!(
                "EXISTS (SELECT 1 FROM identities sgi WHERE sgi.contact_id = {id} AND sgi.sub_state = 'subscribed' \
                 AND (sgi.sub_topics = '[]'::jsonb OR sgi.sub_topics @> jsonb_build_array("
            ))
            .push_bind(t.clone())
            .push("::text)))");
        }
        Leaf::Language(langs) => {
            qb.push(contact).push("(sgc.language = ANY(");
            qb.push_bind(langs.clone()).push(")");
            // A bare language matches its regional forms too (`ru` ⊃ `ru-RU`).
            let bare: Vec<String> = langs
                .iter()
                .filter(|l| !l.contains('-'))
                .map(|l| format!("{l}-%"))
                .collect();
            if !bare.is_empty() {
                qb.push(" OR sgc.language LIKE ANY(")
                    .push_bind(bare)
                    .push(")");
            }
            qb.push("))");
        }
        Leaf::TimeZone(v) => {
            qb.push(contact)
                .push("sgc.time_zone = ANY(")
                .push_bind(v.clone())
                .push("))");
        }
        Leaf::Source(v) => {
            qb.push(contact)
                .push("sgc.source = ANY(")
                .push_bind(v.clone())
                .push("))");
        }
        Leaf::Broadcast { id: b, event } => {
            let ev = match event {
                BroadcastEvent::Received => {
                    "sgb.status IN ('sent', 'delivered', 'read', 'clicked')"
                }
                BroadcastEvent::Read => {
                    "(sgb.status IN ('read', 'clicked') OR sgb.read_at IS NOT NULL)"
                }
                BroadcastEvent::Clicked => "sgb.clicked_at IS NOT NULL",
            };
            qb.push(format!(
                "EXISTS (SELECT 1 FROM broadcast_recipients sgb WHERE sgb.contact_id = {id} AND sgb.broadcast_id = "
            ))
            .push_bind(b.0)
            .push(format!(" AND {ev})"));
        }
        Leaf::Flow { id: f, event } => {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM flow_runs sgr WHERE sgr.contact_id = {id} AND sgr.flow_id = "
            ))
            .push_bind(f.0);
            if *event == FlowEvent::Finished {
                qb.push(" AND sgr.status = 'done'");
            }
            qb.push(")");
        }
        Leaf::Replied { since } => {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM events sge WHERE sge.contact_id = {id} AND sge.kind = 'message_received' AND sge.created_at >= "
            ))
            .push_bind(since.as_microsecond())
            .push(")");
        }
        Leaf::Converted { since } => {
            qb.push(format!(
                "EXISTS (SELECT 1 FROM events sge WHERE sge.contact_id = {id} AND sge.kind = 'conversion'"
            ));
            if let Some(t) = since {
                qb.push(" AND sge.created_at >= ")
                    .push_bind(t.as_microsecond());
            }
            qb.push(")");
        }
        Leaf::LastActivity { before, after } => {
            qb.push(contact);
            push_span(qb, "sgc.last_activity_at", *before, *after);
            qb.push(")");
        }
        Leaf::Created { before, after } => {
            qb.push(contact);
            push_span(qb, "sgc.created_at", *before, *after);
            qb.push(")");
        }
    }
}

/// Pushes a boolean expression: the contact whose id is the SQL expression `id` (e.g.
/// `c.id`) is in the segment. The caller restricts contacts to the workspace and
/// excludes erased ones.
pub(crate) fn push_condition(qb: &mut QueryBuilder<'_, Postgres>, seg: &Resolved, id: &str) {
    match seg {
        Resolved::All => {
            qb.push("TRUE");
        }
        Resolved::And(items) | Resolved::Or(items) => {
            let and = matches!(seg, Resolved::And(_));
            if items.is_empty() {
                qb.push(if and { "TRUE" } else { "FALSE" });
                return;
            }
            qb.push("(");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    qb.push(if and { " AND " } else { " OR " });
                }
                push_condition(qb, item, id);
            }
            qb.push(")");
        }
        Resolved::Not(inner) => {
            qb.push("NOT (");
            push_condition(qb, inner, id);
            qb.push(")");
        }
        Resolved::Leaf(l) => push_leaf(qb, l, id),
    }
}

/// Pushes the driver's `FROM … WHERE …` for a tag or field leaf; false for other leaves.
fn push_driver(qb: &mut QueryBuilder<'_, Postgres>, l: &Resolved) -> bool {
    match l {
        Resolved::Leaf(Leaf::Tag(t)) => {
            qb.push("FROM contact_tags d WHERE d.tag_id = ")
                .push_bind(t.0);
            true
        }
        Resolved::Leaf(Leaf::Field { field_id, test }) => {
            qb.push("FROM contact_fields d WHERE d.field_id = ")
                .push_bind(field_id.0)
                .push(" AND ");
            push_field_test(qb, "d", test);
            true
        }
        _ => false,
    }
}

/// Chooses the driving conjunct: the smallest tag or field range of a top-level AND.
async fn choose(conn: &mut PgConnection, conjuncts: &[&Resolved]) -> Result<Option<usize>> {
    let candidates: Vec<usize> = conjuncts
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Resolved::Leaf(Leaf::Tag(_) | Leaf::Field { .. })))
        .map(|(i, _)| i)
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => {
            let mut best = (i64::MAX, many[0]);
            for &i in many {
                let mut qb = QueryBuilder::new("SELECT count(*) FROM (SELECT 1 ");
                push_driver(&mut qb, conjuncts[i]);
                qb.push(format!(" LIMIT {PROBE_CAP}) x"));
                let n: i64 = qb.build().fetch_one(&mut *conn).await?.try_get(0)?;
                if n < best.0 {
                    best = (n, i);
                }
            }
            Ok(Some(best.1))
        }
    }
}

/// Builds `{select} FROM … WHERE …` for the segment's contacts (not erased, of
/// `ws`); `{id}` in `select` and `tail` stands for the contact id expression.
async fn build(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    seg: &Resolved,
    select: &str,
    tail: &str,
) -> Result<QueryBuilder<'static, Postgres>> {
    let conjuncts = seg.conjuncts();
    let chosen = choose(conn, &conjuncts).await?;
    let mut qb = QueryBuilder::new("");
    let id = match chosen {
        Some(i) => {
            qb.push(format!("{} ", select.replace("{id}", "d.contact_id")));
            push_driver(&mut qb, conjuncts[i]);
            qb.push(" AND NOT EXISTS (SELECT 1 FROM contacts e WHERE e.id = d.contact_id AND e.erased_at IS NOT NULL)");
            "d.contact_id"
        }
        None => {
            qb.push(format!("{} ", select.replace("{id}", "d.id")));
            qb.push("FROM contacts d WHERE d.workspace_id = ")
                .push_bind(ws.0)
                .push(" AND d.erased_at IS NULL");
            "d.id"
        }
    };
    for (i, c) in conjuncts.iter().enumerate() {
        if Some(i) != chosen {
            qb.push(" AND ");
            push_condition(&mut qb, c, id);
        }
    }
    qb.push(tail.replace("{id}", id));
    Ok(qb)
}

/// Number of contacts in the segment.
pub(crate) async fn count(conn: &mut PgConnection, ws: WorkspaceId, seg: &Resolved) -> Result<u64> {
    let mut qb = build(conn, ws, seg, "SELECT count(*)", "").await?;
    let n: i64 = qb.build().fetch_one(&mut *conn).await?.try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The newest `limit` contact ids of the segment.
pub(crate) async fn sample_ids(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    seg: &Resolved,
    limit: u32,
) -> Result<Vec<i64>> {
    let tail = format!(" ORDER BY {{id}} DESC LIMIT {}", limit.min(MAX_SAMPLE));
    let mut qb = build(conn, ws, seg, "SELECT {id}", &tail).await?;
    let rows = qb.build().fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0).map_err(Into::into))
        .collect()
}

impl PgStore {
    /// PostgreSQL's plan (EXPLAIN ANALYZE) of a segment's count, one line per row, to
    /// check that counts are driven by an index.
    pub async fn segment_count_plan(&self, ws: WorkspaceId, seg: &Resolved) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        let mut qb = build(&mut conn, ws, seg, "EXPLAIN ANALYZE SELECT count(*)", "").await?;
        let rows = qb.build().fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Into::into))
            .collect()
    }
}

#[async_trait]
impl SegmentStore for PgStore {
    async fn segment_catalog(&self, ws: WorkspaceId) -> Result<SegmentCatalog> {
        let mut conn = self.pool.acquire().await?;
        let mut fields = Vec::new();
        for r in sqlx::query(
            "SELECT id, key, label, field_type, choices FROM field_definitions WHERE workspace_id = $1 ORDER BY key",
        )
        .bind(ws.0)
        .fetch_all(&mut *conn)
        .await?
        {
            let t: String = r.try_get(3)?;
            let choices: sqlx::types::Json<Vec<String>> = r.try_get(4)?;
            fields.push(FieldDefinition {
                id: FieldId(r.try_get(0)?),
                spec: FieldSpec {
                    key: r.try_get(1)?,
                    label: r.try_get(2)?,
                    field_type: parse_stored("field type", &t)?,
                    choices: choices.0,
                },
            });
        }
        let mut tags = Vec::new();
        for r in sqlx::query("SELECT id, name FROM tags WHERE workspace_id = $1")
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
        {
            tags.push((TagId(r.try_get(0)?), r.try_get(1)?));
        }
        let mut channels = Vec::new();
        for r in sqlx::query("SELECT id, kind FROM channels WHERE workspace_id = $1 ORDER BY id")
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
        {
            let kind: String = r.try_get(1)?;
            channels.push((
                ChannelId(r.try_get(0)?),
                parse_stored("channel kind", &kind)?,
            ));
        }
        let topics = sqlx::query("SELECT key FROM topics WHERE workspace_id = $1")
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<Vec<String>, _>>()?;
        let mut flows = Vec::new();
        for r in sqlx::query("SELECT id, name FROM flows WHERE workspace_id = $1")
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
        {
            flows.push((FlowId(r.try_get(0)?), r.try_get(1)?));
        }
        let broadcasts = sqlx::query("SELECT id FROM broadcasts WHERE workspace_id = $1")
            .bind(ws.0)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0).map(BroadcastId))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(SegmentCatalog {
            fields,
            tags,
            channels,
            topics,
            flows,
            broadcasts,
        })
    }

    async fn create_segment(&self, ws: WorkspaceId, name: &str, filter: Value) -> Result<Segment> {
        let name = segment_name(name)?;
        segment_filter(&filter)?;
        let now = now_us();
        let r = sqlx::query(&format!(
            "INSERT INTO segments (workspace_id, name, filter, revision, created_at, updated_at)
             SELECT $1, $2, $3, 1, $4, $4 FROM workspaces WHERE id = $1
             RETURNING {SEGMENT_COLS}"
        ))
        .bind(ws.0)
        .bind(&name)
        .bind(sqlx::types::Json(&filter))
        .bind(now)
        .fetch_optional(&self.pool)
        .await;
        match r {
            Ok(Some(r)) => segment_row(&r),
            Ok(None) => Err(StoreError::not_found("workspace")),
            Err(e) if is_unique_violation(&e) => Err(segment_name_taken(&name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<Segment> {
        let mut conn = self.pool.acquire().await?;
        get_segment(&mut conn, ws, id).await
    }

    async fn list_segments(&self, ws: WorkspaceId) -> Result<Vec<Segment>> {
        sqlx::query(&format!(
            "SELECT {SEGMENT_COLS} FROM segments WHERE workspace_id = $1 ORDER BY name"
        ))
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(segment_row)
        .collect()
    }

    async fn update_segment(
        &self,
        ws: WorkspaceId,
        id: SegmentId,
        name: Option<String>,
        filter: Option<Value>,
    ) -> Result<Segment> {
        let name = name.as_deref().map(segment_name).transpose()?;
        if let Some(f) = &filter {
            segment_filter(f)?;
        }
        let mut conn = self.pool.acquire().await?;
        if name.is_none() && filter.is_none() {
            return get_segment(&mut conn, ws, id).await;
        }
        let r = sqlx::query(&format!(
            "UPDATE segments SET name = coalesce($1, name), filter = coalesce($2, filter),
             revision = revision + 1, updated_at = $3 WHERE id = $4 AND workspace_id = $5
             RETURNING {SEGMENT_COLS}"
        ))
        .bind(name.as_deref())
        .bind(filter.as_ref().map(sqlx::types::Json))
        .bind(now_us())
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&mut *conn)
        .await;
        match r {
            Ok(Some(r)) => segment_row(&r),
            Ok(None) => Err(StoreError::not_found("segment")),
            Err(e) if is_unique_violation(&e) => {
                Err(segment_name_taken(name.as_deref().unwrap_or("")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Locks the segment so a broadcast cannot start targeting it meanwhile.
        let found =
            sqlx::query("SELECT 1 FROM segments WHERE id = $1 AND workspace_id = $2 FOR UPDATE")
                .bind(id.0)
                .bind(ws.0)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::not_found("segment"));
        }
        let used = sqlx::query(&format!(
            "SELECT 1 FROM broadcasts WHERE workspace_id = $1 AND segment_id = $2 AND status NOT IN {OVER} LIMIT 1"
        ))
        .bind(ws.0)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if used.is_some() {
            return Err(segment_in_use());
        }
        sqlx::query("DELETE FROM segments WHERE id = $1 AND workspace_id = $2")
            .bind(id.0)
            .bind(ws.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn count_segment(&self, ws: WorkspaceId, seg: &Resolved) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        count(&mut conn, ws, seg).await
    }

    async fn sample_segment(
        &self,
        ws: WorkspaceId,
        seg: &Resolved,
        limit: u32,
    ) -> Result<Vec<Contact>> {
        let mut conn = self.pool.acquire().await?;
        let ids = sample_ids(&mut conn, ws, seg, limit).await?;
        load_contacts(&mut conn, ws, &ids).await
    }
}
