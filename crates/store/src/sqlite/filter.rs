//! SQL for contact filters (lists and counts).
//!
//! Counting "tag X AND field > N" over a million contacts must take milliseconds, so the
//! query is driven by an index range instead of a scan of `contacts`: the first tag's
//! range of the `contact_tags` primary key (tag_id, contact_id) — already in contact id
//! order, which also serves `ORDER BY id DESC` for lists — or else the first field
//! condition's range of `contact_fields_value` (field_id, value_num, value_text). Every
//! other condition is a correlated `EXISTS` probe on a primary key or index.
//!
//! Driving from `contact_tags`/`contact_fields` skips the `contacts` row entirely. That is
//! exact because tag and field ids are resolved inside the workspace (so the contact is
//! in it) and erasure deletes an erased contact's tags and field values (so it never
//! matches). `contacts` is only visited for the free-text search.

use super::contacts::find_tag;
use crate::Result;
use rusqlite::types::Value as Sql;
use rusqlite::Connection;
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::{ContactId, WorkspaceId};

/// `FROM … WHERE …` of a filter, its parameters, and the contact id expression.
struct Query {
    body: String,
    params: Vec<Sql>,
    id: &'static str,
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

/// The condition of `cond` on the contact_fields row aliased `a` (without the field id).
fn field_predicate(a: &str, cond: &FieldCondition, params: &mut Vec<Sql>) -> String {
    let (col, operand) = match &cond.operand {
        Operand::Num(n) => ("value_num", Sql::Real(*n)),
        Operand::Text(t) => ("value_text", Sql::Text(t.clone())),
        Operand::None => return "1".into(),
    };
    let op = match cond.op {
        FieldOp::Exists => return "1".into(),
        FieldOp::Eq => "=",
        FieldOp::Ne => "<>",
        FieldOp::Lt => "<",
        FieldOp::Lte => "<=",
        FieldOp::Gt => ">",
        FieldOp::Gte => ">=",
        FieldOp::Contains => {
            // SQLite's LIKE is case-insensitive for ASCII, as the semantics ask.
            let text = match operand {
                Sql::Text(t) => t,
                Sql::Real(n) => n.to_string(),
                _ => String::new(),
            };
            params.push(Sql::Text(like_pattern(&text)));
            return format!("{a}.value_text LIKE ? ESCAPE '\\'");
        }
    };
    params.push(operand);
    format!("{a}.{col} {op} ?")
}

/// Builds the query, or `None` when the filter can match nothing in `ws` (an unknown
/// tag name, a field of another workspace).
fn build(
    c: &Connection,
    ws: WorkspaceId,
    f: &ContactFilter,
    before: Option<ContactId>,
) -> Result<Option<Query>> {
    let mut tags = Vec::with_capacity(f.tags.len());
    for name in &f.tags {
        match find_tag(c, ws, name)? {
            Some(t) => tags.push(t.0),
            None => return Ok(None),
        }
    }
    let mut known =
        c.prepare_cached("SELECT 1 FROM field_definitions WHERE id = ?1 AND workspace_id = ?2")?;
    for cond in &f.fields {
        if !known.exists([cond.field_id.0, ws.0])? {
            return Ok(None);
        }
    }

    let mut params: Vec<Sql> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let (from, id, rest_tags, rest_fields): (&str, &'static str, &[i64], &[FieldCondition]) =
        if let Some((first, rest)) = tags.split_first() {
            params.push(Sql::Integer(*first));
            conds.push("d.tag_id = ?".into());
            ("contact_tags d", "d.contact_id", rest, &f.fields)
        } else if let Some((first, rest)) = f.fields.split_first() {
            params.push(Sql::Integer(first.field_id.0));
            conds.push("d.field_id = ?".into());
            conds.push(field_predicate("d", first, &mut params));
            ("contact_fields d", "d.contact_id", &[], rest)
        } else {
            params.push(Sql::Integer(ws.0));
            conds.push("d.workspace_id = ? AND d.erased_at IS NULL".into());
            ("contacts d", "d.id", &[], &f.fields)
        };
    if let Some(b) = before {
        params.push(Sql::Integer(b.0));
        conds.push(format!("{id} < ?"));
    }
    for t in rest_tags {
        params.push(Sql::Integer(*t));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM contact_tags t WHERE t.tag_id = ? AND t.contact_id = {id})"
        ));
    }
    for cond in rest_fields {
        params.push(Sql::Integer(cond.field_id.0));
        let mut p = Vec::new();
        let pred = field_predicate("x", cond, &mut p);
        params.extend(p);
        conds.push(format!(
            "EXISTS (SELECT 1 FROM contact_fields x WHERE x.field_id = ? AND x.contact_id = {id} AND {pred})"
        ));
    }
    if f.channel_id.is_some() || f.subscription.is_some() {
        // One identity must satisfy both the channel and the state.
        let mut s = format!("EXISTS (SELECT 1 FROM identities i WHERE i.contact_id = {id}");
        if let Some(ch) = f.channel_id {
            params.push(Sql::Integer(ch.0));
            s.push_str(" AND i.channel_id = ?");
        }
        if let Some(st) = f.subscription {
            params.push(Sql::Text(st.as_str().into()));
            s.push_str(" AND i.sub_state = ?");
        }
        s.push(')');
        conds.push(s);
    }
    if let Some(q) = f.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        let pat = like_pattern(q);
        let cols = ["first_name", "last_name", "username", "email", "phone"];
        let alias = if from.starts_with("contacts ") {
            "d"
        } else {
            "s"
        };
        let any = cols
            .iter()
            .map(|col| {
                params.push(Sql::Text(pat.clone()));
                format!("{alias}.{col} LIKE ? ESCAPE '\\'")
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        if alias == "d" {
            conds.push(format!("({any})"));
        } else {
            conds.push(format!(
                "EXISTS (SELECT 1 FROM contacts s WHERE s.id = {id} AND ({any}))"
            ));
        }
    }
    Ok(Some(Query {
        body: format!("FROM {from} WHERE {}", conds.join(" AND ")),
        params,
        id,
    }))
}

/// Ids of matching contacts below `before`, newest first, at most `limit`.
pub(crate) fn matching_ids(
    c: &Connection,
    ws: WorkspaceId,
    f: &ContactFilter,
    before: Option<ContactId>,
    limit: usize,
) -> Result<Vec<ContactId>> {
    let Some(q) = build(c, ws, f, before)? else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT {id} {body} ORDER BY {id} DESC LIMIT {limit}",
        id = q.id,
        body = q.body
    );
    let ids = c
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(q.params), |r| {
            r.get(0).map(ContactId)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// Number of matching contacts, counted by SQLite.
pub(crate) fn count(c: &Connection, ws: WorkspaceId, f: &ContactFilter) -> Result<u64> {
    let Some(q) = build(c, ws, f, None)? else {
        return Ok(0);
    };
    let sql = format!("SELECT count(*) {}", q.body);
    let n: i64 = c
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(q.params), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// The query plan of a count, for checking that it is driven by an index.
pub(crate) fn explain_count(
    c: &Connection,
    ws: WorkspaceId,
    f: &ContactFilter,
) -> Result<Vec<String>> {
    let Some(q) = build(c, ws, f, None)? else {
        return Ok(Vec::new());
    };
    let sql = format!("EXPLAIN QUERY PLAN SELECT count(*) {}", q.body);
    let rows = c
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(q.params), |r| {
            r.get::<_, String>(3)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
