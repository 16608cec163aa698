//! Batch import: upsert thousands of rows per call with a fixed number of statements.
//!
//! Why set-based: a row-at-a-time upsert costs ~10 round trips per contact, which caps
//! PostgreSQL at a few thousand contacts a second. Instead, per batch:
//! 1. one query per lookup kind resolves every row's match (identities by
//!    `(channel_id, external_id)` via `unnest`, phones and e-mails via `= ANY`), and the
//!    matched contacts' current tags and fields are loaded the same way;
//! 2. the rows are applied in order to an in-memory picture of those contacts, so a later
//!    row in the batch sees an earlier row's writes (duplicates in a file) and unchanged
//!    rows produce no write at all;
//! 3. ids for new contacts are drawn from the sequence in one query (identities get
//!    theirs back from `RETURNING`, keyed by their unique address), and every table gets
//!    one multi-row `INSERT … SELECT FROM UNNEST(…)` (or `UPDATE … FROM UNNEST(…)`),
//!    with the per-row foreign-key triggers replaced by one lock of the parent rows
//!    (see [`skip_row_triggers`]).
//!
//! The batch runs inside a savepoint. If any statement fails (say a concurrent import
//! took an identity), the savepoint is rolled back and the rows are replayed one by one,
//! each in its own savepoint, so only the failing rows fail.

use super::now_us;
use super::schema::{ensure_tags, field_infos, FieldInfo};
use crate::model::*;
use crate::{Result, StoreError};
use serde_json::json;
use sqlx::postgres::PgPool;
use sqlx::{Acquire, PgConnection, Row};
use std::collections::{HashMap, HashSet};
use voronka_core::contact::Profile;
use voronka_core::subscription::{ConsentProof, SubscriptionState};
use voronka_core::*;

/// Index of the phone and e-mail attributes in `Profile::ATTRIBUTES`.
const PHONE: usize = 5;
const EMAIL: usize = 6;

/// Imports a batch: see the module documentation.
pub(crate) async fn import_contacts(
    pool: &PgPool,
    ws: WorkspaceId,
    rows: Vec<ImportRow>,
) -> Result<Vec<ImportOutcome>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_us();
    let mut tx = pool.begin().await?;
    let mut results: Vec<Option<std::result::Result<(ContactId, ImportAction), String>>> =
        vec![None; rows.len()];

    // Rows naming a channel or field outside the workspace fail before anything runs.
    let channel_ids: Vec<i64> = distinct(
        rows.iter()
            .filter_map(|r| r.identity.as_ref().map(|(c, _)| c.0)),
    );
    let known_channels: HashSet<i64> = if channel_ids.is_empty() {
        HashSet::new()
    } else {
        sqlx::query("SELECT id FROM channels WHERE workspace_id = $1 AND id = ANY($2)")
            .bind(ws.0)
            .bind(&channel_ids)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?
    };
    let field_ids: Vec<i64> = distinct(
        rows.iter()
            .flat_map(|r| r.fields.iter().map(|f| f.field_id().0)),
    );
    let fields = field_infos(&mut tx, ws, &field_ids).await?;
    let mut ok = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if let Some((ch, _)) = r
            .identity
            .as_ref()
            .filter(|(ch, _)| !known_channels.contains(&ch.0))
        {
            results[i] = Some(Err(format!("unknown channel {ch}")));
        } else if let Some(f) = r
            .fields
            .iter()
            .find(|f| !fields.contains_key(&f.field_id().0))
        {
            results[i] = Some(Err(format!("unknown field {}", f.field_id())));
        } else {
            ok.push(i);
        }
    }

    skip_row_triggers(&mut tx).await?;
    let mut sp = tx.begin().await?;
    match apply(&mut sp, ws, &rows, &ok, &fields, now).await {
        Ok(done) => {
            sp.commit().await?;
            for (i, res) in ok.iter().zip(done) {
                results[*i] = Some(Ok(res));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "batch import failed as a whole; replaying its rows one by one");
            sp.rollback().await?;
            for &i in &ok {
                let mut sp = tx.begin().await?;
                match apply(&mut sp, ws, &rows, &[i], &fields, now).await {
                    Ok(done) => {
                        sp.commit().await?;
                        results[i] = done.into_iter().next().map(Ok);
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        results[i] = Some(Err(e.to_string()));
                    }
                }
            }
        }
    }
    tx.commit().await?;
    if results
        .iter()
        .any(|r| matches!(r, Some(Ok((_, ImportAction::Created)))))
    {
        maintain_after_growth(pool).await;
    }
    Ok(rows
        .iter()
        .zip(results)
        .map(|(r, res)| ImportOutcome {
            line: r.line,
            result: res.unwrap_or_else(|| Err("row was not processed".to_string())),
        })
        .collect())
}

/// Turns off per-row foreign-key triggers for this transaction when the role may
/// (`session_replication_role` is a superuser setting); otherwise the batch runs with
/// them, only slower.
///
/// Why: each inserted row fires one RI trigger per foreign key (18 per imported
/// contact), and those trigger queries cost more than the inserts themselves — 4× on
/// contact_tags. The import keeps the same guarantees without them: every parent row it
/// references is checked and then locked by [`lock_parents`] (KEY SHARE, what the
/// trigger would take) or was created in this very transaction.
async fn skip_row_triggers(conn: &mut PgConnection) -> Result<()> {
    let mut sp = conn.begin().await?;
    match sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *sp)
        .await
    {
        Ok(_) => sp.commit().await?,
        Err(_) => sp.rollback().await?,
    }
    Ok(())
}

/// Locks the parent rows a batch references (workspace, channels, tags, field
/// definitions) against deletion until commit, as the foreign-key triggers would.
async fn lock_parents(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    channels: &[i64],
    tags: &[i64],
    fields: &[i64],
) -> Result<()> {
    sqlx::query(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM workspaces WHERE id = $1 FOR KEY SHARE) w)
              + (SELECT count(*) FROM (SELECT 1 FROM channels WHERE id = ANY($2) FOR KEY SHARE) c)
              + (SELECT count(*) FROM (SELECT 1 FROM tags WHERE id = ANY($3) FOR KEY SHARE) t)
              + (SELECT count(*) FROM (SELECT 1 FROM field_definitions WHERE id = ANY($4) FOR KEY SHARE) f)",
    )
    .bind(ws.0)
    .bind(channels)
    .bind(tags)
    .bind(fields)
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Stands in for autovacuum when the server has it switched off (with autovacuum on,
/// the normal case, this does nothing). Without it, after a bulk import counts are
/// planned without statistics and their index-only scans visit the heap for every row:
/// a filtered count over 1M fresh contacts took 0.6–1.9 s instead of ~0.2 s.
///
/// The thresholds follow autovacuum's own: VACUUM (which only reads pages added since
/// the last one, so it stays cheap) once inserts exceed 20% of the table, ANALYZE
/// (fixed cost per run) only once the table has doubled. Failures — a role that does
/// not own the tables, say — are logged, never returned: the import itself succeeded.
async fn maintain_after_growth(pool: &PgPool) {
    let due = sqlx::query(
        "SELECT current_setting('autovacuum') = 'off'
                AND s.n_ins_since_vacuum > 0.2 * GREATEST(c.reltuples, 0) + 10000,
                s.n_mod_since_analyze > GREATEST(c.reltuples, 0) + 10000
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE s.relid = 'contacts'::regclass",
    )
    .fetch_optional(pool)
    .await;
    let (vacuum, analyze) = match due {
        Ok(Some(r)) => (
            r.try_get::<Option<bool>, _>(0)
                .ok()
                .flatten()
                .unwrap_or(false),
            r.try_get::<Option<bool>, _>(1)
                .ok()
                .flatten()
                .unwrap_or(false),
        ),
        Ok(None) => (false, false),
        Err(e) => {
            tracing::debug!(error = %e, "could not read table statistics after import");
            (false, false)
        }
    };
    if !vacuum {
        return;
    }
    let sql = if analyze {
        "VACUUM (ANALYZE) contacts, contact_tags, contact_fields, identities"
    } else {
        "VACUUM contacts, contact_tags, contact_fields, identities"
    };
    if let Err(e) = sqlx::query(sql).execute(pool).await {
        tracing::warn!(error = %e, "vacuum after import failed; counts may be slow until the next vacuum");
    }
}

fn distinct<T: std::hash::Hash + Eq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    it.filter(|v| seen.insert(v.clone())).collect()
}

/// A contact as the batch sees it: loaded from the database or created by an earlier
/// row of the batch.
struct Cand {
    id: i64,
    new: bool,
    profile: Profile,
    source: Option<String>,
    tags: HashSet<i64>,
    fields: HashMap<i64, (Option<String>, Option<f64>)>,
    /// An existing contact that needs its profile and updated_at written.
    dirty: bool,
}

/// An identity as the batch sees it.
struct Ident {
    id: i64,
    new: bool,
    contact: usize,
    channel: i64,
    external: String,
    state: SubscriptionState,
    topics: Vec<String>,
    proof: Option<ConsentProof>,
    /// An existing identity whose subscription must be written.
    dirty: bool,
}

/// A subscription history row to write.
struct Hist {
    ident: usize,
    state: SubscriptionState,
    topics: Vec<String>,
    proof: Option<ConsentProof>,
}

/// Contacts by phone or e-mail, each list in id order (arena order = id order), so the
/// first one still carrying the value is the "lowest id" match.
type ValueIndex = HashMap<String, Vec<usize>>;

fn index_value(idx: &mut ValueIndex, value: &str, c: usize) {
    let list = idx.entry(value.to_string()).or_default();
    if let Err(pos) = list.binary_search(&c) {
        list.insert(pos, c);
    }
}

fn find_by(idx: &ValueIndex, cands: &[Cand], attr: usize, value: &str) -> Option<usize> {
    idx.get(value)?
        .iter()
        .copied()
        .find(|&c| Profile::values(&cands[c].profile)[attr].as_deref() == Some(value))
}

/// Applies `which` rows (indexes into `rows`) in order; returns each row's contact and
/// action. Writes go through `conn`; any error leaves the caller to roll back.
async fn apply(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    rows: &[ImportRow],
    which: &[usize],
    fields: &HashMap<i64, FieldInfo>,
    now: i64,
) -> Result<Vec<(ContactId, ImportAction)>> {
    // --- Resolve tags and look up matches, one statement per kind. ---
    let tag_names: Vec<String> = distinct(which.iter().flat_map(|&i| rows[i].tags.iter().cloned()));
    let tag_ids = ensure_tags(conn, ws, &tag_names, now).await?;

    // External ids grouped by channel: `channel_id = $1 AND external_id = ANY($2)` can
    // only be served by the (channel_id, external_id) unique index, whatever the
    // statistics say (a join against unnest(), or adding workspace_id, lets the planner
    // pick a (workspace, channel) index and filter 5,000 ids per row: quadratic). The
    // channels were checked to belong to the workspace, and an identity's channel fixes
    // its workspace.
    let mut by_channel: HashMap<i64, Vec<&str>> = HashMap::new();
    let mut phones = Vec::new();
    let mut emails = Vec::new();
    for &i in which {
        let r = &rows[i];
        if let Some((ch, ext)) = &r.identity {
            by_channel.entry(ch.0).or_default().push(ext.as_str());
        }
        if let Some(p) = &r.profile.phone {
            phones.push(p.as_str());
        }
        if let Some(e) = &r.profile.email {
            emails.push(e.as_str());
        }
    }
    let mut ident_rows = Vec::new();
    for (ch, exts) in &by_channel {
        ident_rows.extend(
            sqlx::query(
                "SELECT id, contact_id, channel_id, external_id, sub_state, sub_topics::text FROM identities
                 WHERE channel_id = $1 AND external_id = ANY($2)",
            )
            .bind(ch)
            .bind(exts)
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    let mut wanted: Vec<i64> = Vec::new();
    for r in &ident_rows {
        wanted.push(r.try_get(1)?);
    }
    for (col, vals) in [("phone", &phones), ("email", &emails)] {
        if vals.is_empty() {
            continue;
        }
        let found = sqlx::query(&format!(
            "SELECT id FROM contacts WHERE workspace_id = $1 AND {col} = ANY($2)"
        ))
        .bind(ws.0)
        .bind(vals)
        .fetch_all(&mut *conn)
        .await?;
        for r in &found {
            wanted.push(r.try_get(0)?);
        }
    }
    wanted.sort_unstable();
    wanted.dedup();

    {
        let channels: Vec<i64> = by_channel.keys().copied().collect();
        let tags: Vec<i64> = tag_ids.values().copied().collect();
        let field_ids: Vec<i64> = fields.keys().copied().collect();
        lock_parents(conn, ws, &channels, &tags, &field_ids).await?;
    }
    // --- Load the matched contacts (locked: the batch decides on their current state). ---
    let mut cands: Vec<Cand> = Vec::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    if !wanted.is_empty() {
        let loaded = sqlx::query(
            "SELECT id, first_name, last_name, username, language, time_zone, phone, email, avatar_url, source
             FROM contacts WHERE workspace_id = $1 AND id = ANY($2) AND erased_at IS NULL ORDER BY id FOR UPDATE",
        )
        .bind(ws.0)
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?;
        for r in &loaded {
            let id: i64 = r.try_get("id")?;
            by_id.insert(id, cands.len());
            cands.push(Cand {
                id,
                new: false,
                profile: super::rows::profile(r)?,
                source: r.try_get("source")?,
                tags: HashSet::new(),
                fields: HashMap::new(),
                dirty: false,
            });
        }
        let ids: Vec<i64> = cands.iter().map(|c| c.id).collect();
        for r in
            sqlx::query("SELECT contact_id, tag_id FROM contact_tags WHERE contact_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?
        {
            if let Some(&c) = by_id.get(&r.try_get::<i64, _>(0)?) {
                cands[c].tags.insert(r.try_get(1)?);
            }
        }
        for r in sqlx::query("SELECT contact_id, field_id, value_text, value_num FROM contact_fields WHERE contact_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
        {
            if let Some(&c) = by_id.get(&r.try_get::<i64, _>(0)?) {
                cands[c].fields.insert(r.try_get(1)?, (r.try_get(2)?, r.try_get(3)?));
            }
        }
    }
    let mut idents: Vec<Ident> = Vec::new();
    let mut ident_map: HashMap<(i64, String), usize> = HashMap::new();
    for r in &ident_rows {
        let contact: i64 = r.try_get(1)?;
        let Some(&c) = by_id.get(&contact) else {
            continue;
        };
        let state: String = r.try_get(4)?;
        let topics: String = r.try_get(5)?;
        let ident = Ident {
            id: r.try_get(0)?,
            new: false,
            contact: c,
            channel: r.try_get(2)?,
            external: r.try_get(3)?,
            state: super::parse_stored("subscription state", &state)?,
            topics: serde_json::from_str(&topics)
                .map_err(|e| StoreError::Database(format!("stored topics: {e}")))?,
            proof: None,
            dirty: false,
        };
        ident_map.insert((ident.channel, ident.external.clone()), idents.len());
        idents.push(ident);
    }
    let mut by_phone = ValueIndex::new();
    let mut by_email = ValueIndex::new();
    for (c, cand) in cands.iter().enumerate() {
        if let Some(p) = &cand.profile.phone {
            index_value(&mut by_phone, p, c);
        }
        if let Some(e) = &cand.profile.email {
            index_value(&mut by_email, e, c);
        }
    }

    // --- Apply the rows in order to the in-memory picture. ---
    let mut out: Vec<(usize, ImportAction)> = Vec::with_capacity(which.len());
    let mut links: Vec<(i64, usize)> = Vec::new();
    let mut field_writes: Vec<(usize, i64)> = Vec::new();
    let mut field_seen: HashSet<(usize, i64)> = HashSet::new();
    let mut hist: Vec<Hist> = Vec::new();
    let mut events: Vec<(usize, serde_json::Value)> = Vec::new();
    for &i in which {
        let row = &rows[i];
        let key = row.identity.as_ref().map(|(ch, ext)| (ch.0, ext.clone()));
        let mut target = key
            .as_ref()
            .and_then(|k| ident_map.get(k))
            .map(|&ii| idents[ii].contact);
        if target.is_none() {
            if let Some(p) = &row.profile.phone {
                target = find_by(&by_phone, &cands, PHONE, p);
            }
        }
        if target.is_none() {
            if let Some(e) = &row.profile.email {
                target = find_by(&by_email, &cands, EMAIL, e);
            }
        }
        let created = target.is_none();
        let c = match target {
            Some(c) => c,
            None => {
                cands.push(Cand {
                    id: 0,
                    new: true,
                    profile: Profile::default(),
                    source: row.source.clone(),
                    tags: HashSet::new(),
                    fields: HashMap::new(),
                    dirty: false,
                });
                cands.len() - 1
            }
        };

        let mut changed_attrs: Vec<&str> = Vec::new();
        {
            let wanted = Profile::values(&row.profile);
            let current = Profile::values_mut(&mut cands[c].profile);
            for (k, slot) in current.into_iter().enumerate() {
                if let Some(v) = wanted[k] {
                    if slot.as_ref() != Some(v) {
                        *slot = Some(v.clone());
                        changed_attrs.push(Profile::ATTRIBUTES[k]);
                    }
                }
            }
        }
        if changed_attrs.contains(&"phone") {
            if let Some(p) = cands[c].profile.phone.clone() {
                index_value(&mut by_phone, &p, c);
            }
        }
        if changed_attrs.contains(&"email") {
            if let Some(e) = cands[c].profile.email.clone() {
                index_value(&mut by_email, &e, c);
            }
        }

        let mut tags_added: Vec<&str> = Vec::new();
        for name in &row.tags {
            if let Some(&t) = tag_ids.get(name) {
                if cands[c].tags.insert(t) {
                    tags_added.push(name);
                    links.push((t, c));
                }
            }
        }

        let mut keys_set: Vec<&str> = Vec::new();
        for v in &row.fields {
            let fid = v.field_id().0;
            let same = cands[c]
                .fields
                .get(&fid)
                .is_some_and(|(t, n)| t.as_deref() == v.text() && *n == v.num());
            if same {
                continue;
            }
            cands[c]
                .fields
                .insert(fid, (v.text().map(str::to_string), v.num()));
            if field_seen.insert((c, fid)) {
                field_writes.push((c, fid));
            }
            if let Some(info) = fields.get(&fid) {
                keys_set.push(&info.key);
            }
        }

        let mut identity_added = false;
        let mut sub_applied: Option<&str> = None;
        if let Some((ch, ext)) = &row.identity {
            let k = (ch.0, ext.clone());
            let ii = match ident_map.get(&k) {
                Some(&ii) => ii,
                None => {
                    identity_added = true;
                    idents.push(Ident {
                        id: 0,
                        new: true,
                        contact: c,
                        channel: ch.0,
                        external: ext.clone(),
                        state: SubscriptionState::Unsubscribed,
                        topics: Vec::new(),
                        proof: None,
                        dirty: false,
                    });
                    ident_map.insert(k, idents.len() - 1);
                    idents.len() - 1
                }
            };
            if let Some(change) = &row.subscription {
                let id = &mut idents[ii];
                if identity_added || id.state != change.state() || id.topics != change.topics() {
                    id.state = change.state();
                    id.topics = change.topics().to_vec();
                    id.proof = change.proof().cloned();
                    id.dirty = !id.new;
                    hist.push(Hist {
                        ident: ii,
                        state: change.state(),
                        topics: change.topics().to_vec(),
                        proof: change.proof().cloned(),
                    });
                    sub_applied = Some(change.state().as_str());
                }
            }
        }

        let changed = created
            || !changed_attrs.is_empty()
            || !tags_added.is_empty()
            || !keys_set.is_empty()
            || identity_added
            || sub_applied.is_some();
        if !changed {
            out.push((c, ImportAction::Unchanged));
            continue;
        }
        if !cands[c].new {
            cands[c].dirty = true;
        }
        events.push((
            c,
            json!({
                "action": if created { "created" } else { "updated" },
                "line": row.line,
                "profile": changed_attrs,
                "tags": tags_added,
                "fields": keys_set,
                "identity_added": identity_added,
                "subscription": sub_applied,
            }),
        ));
        out.push((
            c,
            if created {
                ImportAction::Created
            } else {
                ImportAction::Updated
            },
        ));
    }

    // --- Draw ids for the new rows, then write each table with one statement. ---
    let new_contacts = cands.iter().filter(|c| c.new).count();
    let contact_ids = next_ids(conn, "contacts", new_contacts).await?;
    for (c, id) in cands.iter_mut().filter(|c| c.new).zip(contact_ids) {
        c.id = id;
    }

    write_contacts(conn, ws, &cands, now).await?;
    write_identities(conn, ws, &cands, &mut idents, &ident_map, now).await?;
    write_history(conn, ws, &cands, &idents, &hist, now).await?;
    write_links(conn, ws, &cands, &links, now).await?;
    write_fields(conn, ws, &cands, &field_writes, now).await?;
    write_events(conn, ws, &cands, &events, now).await?;

    Ok(out
        .into_iter()
        .map(|(c, a)| (ContactId(cands[c].id), a))
        .collect())
}

/// Draws `n` ids from a table's identity sequence in one round trip.
async fn next_ids(conn: &mut PgConnection, table: &str, n: usize) -> Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = sqlx::query(&format!(
        "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, $1)"
    ))
    .bind(n as i64)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<std::result::Result<_, _>>()?;
    // Ascending, so contacts created earlier in the batch get lower ids ("newest first"
    // lists and "lowest id" matching agree with row order).
    ids.sort_unstable();
    Ok(ids)
}

async fn write_contacts(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    now: i64,
) -> Result<()> {
    for new in [true, false] {
        let sel: Vec<&Cand> = cands
            .iter()
            .filter(|c| if new { c.new } else { c.dirty })
            .collect();
        if sel.is_empty() {
            continue;
        }
        let ids: Vec<i64> = sel.iter().map(|c| c.id).collect();
        let cols: Vec<Vec<Option<&str>>> = (0..Profile::ATTRIBUTES.len())
            .map(|k| {
                sel.iter()
                    .map(|c| Profile::values(&c.profile)[k].as_deref())
                    .collect()
            })
            .collect();
        if new {
            let sources: Vec<Option<&str>> = sel.iter().map(|c| c.source.as_deref()).collect();
            sqlx::query(
                "INSERT INTO contacts (id, workspace_id, first_name, last_name, username, language, time_zone, phone,
                     email, avatar_url, source, created_at, updated_at)
                 SELECT u.id, $1, u.fn, u.ln, u.un, u.lang, u.tz, u.ph, u.em, u.av, u.src, $2, $2
                 FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::text[], $11::text[], $12::text[])
                      AS u(id, fn, ln, un, lang, tz, ph, em, av, src)",
            )
            .bind(ws.0)
            .bind(now)
            .bind(&ids)
            .bind(&cols[0])
            .bind(&cols[1])
            .bind(&cols[2])
            .bind(&cols[3])
            .bind(&cols[4])
            .bind(&cols[5])
            .bind(&cols[6])
            .bind(&cols[7])
            .bind(&sources)
            .execute(&mut *conn)
            .await?;
        } else {
            sqlx::query(
                "UPDATE contacts c SET first_name = u.fn, last_name = u.ln, username = u.un, language = u.lang,
                     time_zone = u.tz, phone = u.ph, email = u.em, avatar_url = u.av, updated_at = $1
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                             $9::text[], $10::text[]) AS u(id, fn, ln, un, lang, tz, ph, em, av)
                 WHERE c.id = u.id",
            )
            .bind(now)
            .bind(&ids)
            .bind(&cols[0])
            .bind(&cols[1])
            .bind(&cols[2])
            .bind(&cols[3])
            .bind(&cols[4])
            .bind(&cols[5])
            .bind(&cols[6])
            .bind(&cols[7])
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Proof columns as parallel arrays.
#[derive(Default)]
struct ProofCols<'a> {
    source: Vec<Option<&'a str>>,
    at: Vec<Option<i64>>,
    text: Vec<Option<&'a str>>,
    ip: Vec<Option<&'a str>>,
    message_id: Vec<Option<&'a str>>,
}

impl<'a> ProofCols<'a> {
    fn push(&mut self, p: Option<&'a ConsentProof>) {
        self.source.push(p.map(|p| p.source.as_str()));
        self.at.push(p.map(|p| p.at.as_microsecond()));
        self.text.push(p.and_then(|p| p.text_shown.as_deref()));
        self.ip.push(p.and_then(|p| p.ip.as_deref()));
        self.message_id
            .push(p.and_then(|p| p.message_id.as_deref()));
    }
}

fn topics_json(t: &[String]) -> String {
    serde_json::to_string(t).unwrap_or_else(|_| "[]".to_string())
}

/// Inserts new identities (their ids come back keyed by (channel, external id), which
/// is unique, so no separate id allocation is needed) and updates changed ones.
async fn write_identities(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    idents: &mut [Ident],
    ident_map: &HashMap<(i64, String), usize>,
    now: i64,
) -> Result<()> {
    let mut assigned: Vec<(usize, i64)> = Vec::new();
    for new in [true, false] {
        let sel: Vec<&Ident> = idents
            .iter()
            .filter(|i| if new { i.new } else { i.dirty })
            .collect();
        if sel.is_empty() {
            continue;
        }
        let states: Vec<&str> = sel.iter().map(|i| i.state.as_str()).collect();
        let topics: Vec<String> = sel.iter().map(|i| topics_json(&i.topics)).collect();
        let mut proof = ProofCols::default();
        for i in &sel {
            proof.push(i.proof.as_ref());
        }
        if new {
            let contacts: Vec<i64> = sel.iter().map(|i| cands[i.contact].id).collect();
            let channels: Vec<i64> = sel.iter().map(|i| i.channel).collect();
            let externals: Vec<&str> = sel.iter().map(|i| i.external.as_str()).collect();
            let inserted = sqlx::query(
                "INSERT INTO identities (workspace_id, contact_id, channel_id, external_id, created_at, sub_state,
                     sub_topics, proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at)
                 SELECT $1, u.contact, u.channel, u.ext, $2, u.state, u.topics::jsonb, u.ps, u.pa, u.pt, u.pi, u.pm, $2
                 FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                             $9::bigint[], $10::text[], $11::text[], $12::text[])
                      AS u(contact, channel, ext, state, topics, ps, pa, pt, pi, pm)
                 RETURNING id, channel_id, external_id",
            )
            .bind(ws.0)
            .bind(now)
            .bind(&contacts)
            .bind(&channels)
            .bind(&externals)
            .bind(&states)
            .bind(&topics)
            .bind(&proof.source)
            .bind(&proof.at)
            .bind(&proof.text)
            .bind(&proof.ip)
            .bind(&proof.message_id)
            .fetch_all(&mut *conn)
            .await?;
            for r in &inserted {
                let key: (i64, String) = (r.try_get(1)?, r.try_get(2)?);
                if let Some(&ii) = ident_map.get(&key) {
                    assigned.push((ii, r.try_get(0)?));
                }
            }
        } else {
            let ids: Vec<i64> = sel.iter().map(|i| i.id).collect();
            sqlx::query(
                "UPDATE identities i SET sub_state = u.state, sub_topics = u.topics::jsonb, proof_source = u.ps,
                     proof_at = u.pa, proof_text = u.pt, proof_ip = u.pi, proof_message_id = u.pm, sub_updated_at = $1
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[],
                             $9::text[]) AS u(id, state, topics, ps, pa, pt, pi, pm)
                 WHERE i.id = u.id",
            )
            .bind(now)
            .bind(&ids)
            .bind(&states)
            .bind(&topics)
            .bind(&proof.source)
            .bind(&proof.at)
            .bind(&proof.text)
            .bind(&proof.ip)
            .bind(&proof.message_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    for (ii, id) in assigned {
        idents[ii].id = id;
    }
    Ok(())
}

async fn write_history(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    idents: &[Ident],
    hist: &[Hist],
    now: i64,
) -> Result<()> {
    if hist.is_empty() {
        return Ok(());
    }
    let contacts: Vec<i64> = hist
        .iter()
        .map(|h| cands[idents[h.ident].contact].id)
        .collect();
    let ident_ids: Vec<i64> = hist.iter().map(|h| idents[h.ident].id).collect();
    let channels: Vec<i64> = hist.iter().map(|h| idents[h.ident].channel).collect();
    let states: Vec<&str> = hist.iter().map(|h| h.state.as_str()).collect();
    let topics: Vec<String> = hist.iter().map(|h| topics_json(&h.topics)).collect();
    let mut proof = ProofCols::default();
    for h in hist {
        proof.push(h.proof.as_ref());
    }
    sqlx::query(
        "INSERT INTO subscription_history (workspace_id, contact_id, identity_id, channel_id, state, topics,
             proof_source, proof_at, proof_text, proof_ip, proof_message_id, created_at)
         SELECT $1, u.contact, u.ident, u.channel, u.state, u.topics::jsonb, u.ps, u.pa, u.pt, u.pi, u.pm, $2
         FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::bigint[],
                     $10::text[], $11::text[], $12::text[])
              AS u(contact, ident, channel, state, topics, ps, pa, pt, pi, pm)",
    )
    .bind(ws.0)
    .bind(now)
    .bind(&contacts)
    .bind(&ident_ids)
    .bind(&channels)
    .bind(&states)
    .bind(&topics)
    .bind(&proof.source)
    .bind(&proof.at)
    .bind(&proof.text)
    .bind(&proof.ip)
    .bind(&proof.message_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_links(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    links: &[(i64, usize)],
    now: i64,
) -> Result<()> {
    for new in [true, false] {
        let sel: Vec<&(i64, usize)> = links.iter().filter(|(_, c)| cands[*c].new == new).collect();
        if sel.is_empty() {
            continue;
        }
        let tags: Vec<i64> = sel.iter().map(|(t, _)| *t).collect();
        let contacts: Vec<i64> = sel.iter().map(|(_, c)| cands[*c].id).collect();
        // New contacts cannot have links yet, so only existing ones pay for ON CONFLICT
        // (a concurrent writer may have linked the same tag).
        let conflict = if new {
            ""
        } else {
            " ON CONFLICT (tag_id, contact_id) DO NOTHING"
        };
        sqlx::query(&format!(
            "INSERT INTO contact_tags (tag_id, contact_id, workspace_id, created_at)
             SELECT u.t, u.c, $1, $2 FROM UNNEST($3::bigint[], $4::bigint[]) AS u(t, c){conflict}"
        ))
        .bind(ws.0)
        .bind(now)
        .bind(&tags)
        .bind(&contacts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn write_fields(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    writes: &[(usize, i64)],
    now: i64,
) -> Result<()> {
    for new in [true, false] {
        let sel: Vec<&(usize, i64)> = writes
            .iter()
            .filter(|(c, _)| cands[*c].new == new)
            .collect();
        if sel.is_empty() {
            continue;
        }
        let contacts: Vec<i64> = sel.iter().map(|(c, _)| cands[*c].id).collect();
        let field_ids: Vec<i64> = sel.iter().map(|(_, f)| *f).collect();
        let mut texts: Vec<Option<&str>> = Vec::with_capacity(sel.len());
        let mut nums: Vec<Option<f64>> = Vec::with_capacity(sel.len());
        for (c, f) in &sel {
            let (t, n) = cands[*c]
                .fields
                .get(f)
                .map_or((None, None), |(t, n)| (t.as_deref(), *n));
            texts.push(t);
            nums.push(n);
        }
        let conflict = if new {
            ""
        } else {
            " ON CONFLICT (contact_id, field_id) DO UPDATE SET value_text = EXCLUDED.value_text,
                  value_num = EXCLUDED.value_num, updated_at = EXCLUDED.updated_at"
        };
        sqlx::query(&format!(
            "INSERT INTO contact_fields (contact_id, field_id, workspace_id, value_text, value_num, updated_at)
             SELECT u.c, u.f, $1, u.t, u.n, $2
             FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::float8[]) AS u(c, f, t, n){conflict}"
        ))
        .bind(ws.0)
        .bind(now)
        .bind(&contacts)
        .bind(&field_ids)
        .bind(&texts)
        .bind(&nums)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn write_events(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    cands: &[Cand],
    events: &[(usize, serde_json::Value)],
    now: i64,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let contacts: Vec<i64> = events.iter().map(|(c, _)| cands[*c].id).collect();
    let data: Vec<String> = events.iter().map(|(_, d)| d.to_string()).collect();
    sqlx::query(
        "INSERT INTO events (workspace_id, contact_id, kind, data, created_at)
         SELECT $1, u.c, $5, u.d::jsonb, $2 FROM UNNEST($3::bigint[], $4::text[]) AS u(c, d)",
    )
    .bind(ws.0)
    .bind(now)
    .bind(&contacts)
    .bind(&data)
    .bind(voronka_core::event::EventKind::ContactImported.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
