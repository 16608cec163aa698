//! ContactFilter → SQL. One builder serves lists, counts and exports, so the three can
//! never disagree on who matches. Each condition is a correlated `EXISTS` on an indexed
//! table (contact_tags by (tag_id, contact_id), contact_fields by (contact_id, field_id)
//! or (field_id, value_num, value_text), identities by contact), which the planner can
//! turn into semi-joins driven from the most selective index.

use sqlx::{Postgres, QueryBuilder};
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::WorkspaceId;

/// Appends ` WHERE …` for contacts of `ws` (not erased) matching `f`; the contacts
/// table must be aliased `c`.
pub(crate) fn push_where(qb: &mut QueryBuilder<'_, Postgres>, ws: WorkspaceId, f: &ContactFilter) {
    qb.push(" WHERE c.workspace_id = ")
        .push_bind(ws.0)
        .push(" AND c.erased_at IS NULL");
    push_conditions(qb, ws, &f.tags, &f.fields, f, "c.id");
    if let Some(q) = f.q.as_deref().filter(|q| !q.is_empty()) {
        let pat = like_pattern(q);
        qb.push(" AND (");
        for (i, col) in ["first_name", "last_name", "username", "email", "phone"]
            .iter()
            .enumerate()
        {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push(format!("lower(c.{col}) LIKE lower("))
                .push_bind(pat.clone())
                .push(") ESCAPE '\\'");
        }
        qb.push(")");
    }
}

/// Builds `SELECT count(*) …` for contacts of `ws` matching `f`.
///
/// Why not always `FROM contacts`: with a tag or field condition the matching contact
/// ids are already in an index (contact_tags' primary key, contact_fields_value), and
/// probing `contacts` for each of them (to check workspace and erasure) costs as much as
/// the rest of the count over a million contacts. The probe is unnecessary because
/// (a) tag and field ids belong to one workspace and the store only links a workspace's
/// contacts to its own tags and fields, and (b) erased contacts are subtracted with an
/// anti-join on the tiny `contacts_erased` partial index.
pub(crate) fn count_query(ws: WorkspaceId, f: &ContactFilter) -> QueryBuilder<'static, Postgres> {
    let searching = f.q.as_deref().is_some_and(|q| !q.is_empty());
    let mut qb = QueryBuilder::new("SELECT count(*) FROM ");
    if let (false, Some((first, rest))) = (searching, f.tags.split_first()) {
        qb.push("contact_tags d WHERE d.tag_id = (SELECT t.id FROM tags t WHERE t.workspace_id = ")
            .push_bind(ws.0)
            .push(" AND t.name = ")
            .push_bind(first.clone())
            .push(")");
        push_conditions(&mut qb, ws, rest, &f.fields, f, "d.contact_id");
    } else if let (false, Some((first, rest))) = (searching, f.fields.split_first()) {
        // The definition check is uncorrelated: evaluated once, it keeps another
        // workspace's field id from counting that workspace's contacts.
        qb.push("contact_fields d WHERE EXISTS (SELECT 1 FROM field_definitions fd WHERE fd.id = ")
            .push_bind(first.field_id.0)
            .push(" AND fd.workspace_id = ")
            .push_bind(ws.0)
            .push(") AND d.field_id = ")
            .push_bind(first.field_id.0);
        push_field_test(&mut qb, "d", first);
        push_conditions(&mut qb, ws, &[], rest, f, "d.contact_id");
    } else {
        qb.push("contacts c");
        push_where(&mut qb, ws, f);
        return qb;
    }
    qb.push(" AND NOT EXISTS (SELECT 1 FROM contacts e WHERE e.id = d.contact_id AND e.erased_at IS NOT NULL)");
    qb
}

/// Appends the tag, field and identity conditions for the contact id `cid`.
fn push_conditions(
    qb: &mut QueryBuilder<'_, Postgres>,
    ws: WorkspaceId,
    tags: &[String],
    fields: &[FieldCondition],
    f: &ContactFilter,
    cid: &str,
) {
    for name in tags {
        // An unknown tag name matches nothing: the subquery yields NULL.
        qb.push(format!(
            " AND EXISTS (SELECT 1 FROM contact_tags ct WHERE ct.contact_id = {cid} AND ct.tag_id = (SELECT t.id FROM tags t WHERE t.workspace_id = "
        ))
        .push_bind(ws.0)
        .push(" AND t.name = ")
        .push_bind(name.clone())
        .push("))");
    }
    for cond in fields {
        qb.push(format!(
            " AND EXISTS (SELECT 1 FROM contact_fields cf WHERE cf.contact_id = {cid} AND cf.field_id = "
        ))
        .push_bind(cond.field_id.0);
        push_field_test(qb, "cf", cond);
        qb.push(")");
    }
    if f.channel_id.is_some() || f.subscription.is_some() {
        // One EXISTS, so the same identity satisfies both the channel and the state.
        qb.push(format!(
            " AND EXISTS (SELECT 1 FROM identities i WHERE i.contact_id = {cid}"
        ));
        if let Some(ch) = f.channel_id {
            qb.push(" AND i.channel_id = ").push_bind(ch.0);
        }
        if let Some(s) = f.subscription {
            qb.push(" AND i.sub_state = ").push_bind(s.as_str());
        }
        qb.push(")");
    }
}

/// Appends the comparison of one field condition on the contact_fields row `alias`.
fn push_field_test(qb: &mut QueryBuilder<'_, Postgres>, alias: &str, cond: &FieldCondition) {
    match (cond.op, &cond.operand) {
        (FieldOp::Exists, _) => {}
        (FieldOp::Contains, Operand::Text(t)) => {
            qb.push(format!(" AND lower({alias}.value_text) LIKE lower("))
                .push_bind(like_pattern(t))
                .push(") ESCAPE '\\'");
        }
        (op, Operand::Num(n)) => {
            qb.push(format!(" AND {alias}.value_num {} ", sql_op(op)))
                .push_bind(*n);
        }
        (op, Operand::Text(t)) => {
            qb.push(format!(" AND {alias}.value_text {} ", sql_op(op)))
                .push_bind(t.clone());
        }
        // A comparison without an operand cannot hold.
        (_, Operand::None) => {
            qb.push(" AND false");
        }
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
        // Handled before: contains is a LIKE, exists has no comparison.
        FieldOp::Contains | FieldOp::Exists => "=",
    }
}

/// `%text%` with LIKE's wildcards escaped and ASCII lower-cased, for a case-insensitive
/// substring match against `lower(column)`.
pub(crate) fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch.to_ascii_lowercase());
    }
    p.push('%');
    p
}
