//! Bulk upsert of import rows.
//!
//! A batch runs as one writer job, so thousands of rows share one transaction and one
//! WAL commit. Rows are processed in order against the live transaction, so a row sees
//! what earlier rows of the same batch wrote (duplicates in a file). Everything a row
//! could be refused for (an unknown channel or field) is checked before the row writes
//! anything, so refusing a row needs no rollback.
//!
//! Savepoints make SQLite copy every page a row touches, so the batch first runs with
//! none ([`import_fast`]), new contacts buffered and written with multi-row INSERTs. Only
//! if a row hits a database error (unexpected: uniqueness is settled by the matching
//! itself) is the whole job rolled back and replayed with one savepoint per row
//! ([`import_slow`]), so that row alone fails.
//!
//! Lookups and inserts use cached prepared statements; workspace channels and fields are
//! read once per batch and tag ids are resolved once per batch. The writer thread is the
//! bottleneck of an import, so what needs no database (event texts) is computed by
//! [`prepare`] on another thread while the writer works.

use super::contacts::*;
use super::rows::*;
use crate::model::*;
use crate::{Result, StoreError};
use jiff::Timestamp;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, ToSql};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use voronka_core::contact::Profile;
use voronka_core::event::EventKind;
use voronka_core::field::FieldValue;
use voronka_core::subscription::SubscriptionChange;
use voronka_core::*;

/// Why a row did not import.
enum RowError {
    /// The row itself is wrong (reported to the user); nothing was written.
    Refused(String),
    /// The database failed while the row was writing; its writes must be rolled back.
    Store(StoreError),
}

impl From<StoreError> for RowError {
    fn from(e: StoreError) -> Self {
        RowError::Store(e)
    }
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        RowError::Store(e.into())
    }
}

/// What a batch needs to know about its workspace, read once, and its lookup
/// statements, held for the whole batch (a cache lookup per row hashes the SQL text).
struct Batch<'c> {
    ws: WorkspaceId,
    by_identity: CachedStatement<'c>,
    by_phone: CachedStatement<'c>,
    by_email: CachedStatement<'c>,
    at: Timestamp,
    channels: HashSet<ChannelId>,
    fields: HashMap<FieldId, String>,
    /// Tag ids by name, filled as rows need them. Must be cleared after a rollback, which
    /// may have undone the creation of a cached tag.
    tags: HashMap<String, TagId>,
}

impl<'c> Batch<'c> {
    fn load(c: &'c Connection, ws: WorkspaceId) -> Result<Self> {
        let channels = c
            .prepare_cached("SELECT id FROM channels WHERE workspace_id = ?1")?
            .query_map([ws.0], |r| r.get(0).map(ChannelId))?
            .collect::<rusqlite::Result<HashSet<_>>>()?;
        let fields = c
            .prepare_cached("SELECT id, key FROM field_definitions WHERE workspace_id = ?1")?
            .query_map([ws.0], |r| Ok((FieldId(r.get(0)?), r.get(1)?)))?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        Ok(Batch {
            ws,
            by_identity: c.prepare_cached(
                "SELECT id, contact_id, sub_state, sub_topics FROM identities WHERE channel_id = ?1 AND external_id = ?2",
            )?,
            by_phone: c.prepare_cached(
                "SELECT id FROM contacts WHERE workspace_id = ?1 AND phone = ?2 AND phone IS NOT NULL ORDER BY id LIMIT 1",
            )?,
            by_email: c.prepare_cached(
                "SELECT id FROM contacts WHERE workspace_id = ?1 AND email = ?2 AND email IS NOT NULL ORDER BY id LIMIT 1",
            )?,
            at: now(),
            channels,
            fields,
            tags: HashMap::new(),
        })
    }

    /// A tag's id, creating the tag if needed.
    fn tag(&mut self, c: &Connection, name: &str) -> Result<TagId> {
        if let Some(id) = self.tags.get(name) {
            return Ok(*id);
        }
        let id = ensure_tag(c, self.ws, name, self.at)?;
        self.tags.insert(name.to_string(), id);
        Ok(id)
    }

    /// A tag's id if the tag exists (without creating it: an unchanged row writes nothing).
    fn existing_tag(&mut self, c: &Connection, name: &str) -> Result<Option<TagId>> {
        if let Some(id) = self.tags.get(name) {
            return Ok(Some(*id));
        }
        let id = find_tag(c, self.ws, name)?;
        if let Some(id) = id {
            self.tags.insert(name.to_string(), id);
        }
        Ok(id)
    }
}

/// Imports a batch the fast way: no savepoint at all, new contacts buffered and written
/// with multi-row INSERTs. Fails as a whole if any row hits a database error; the caller
/// (whose writer job is then rolled back) replays the batch with [`import_slow`].
pub(crate) fn import_fast(
    c: &Connection,
    ws: WorkspaceId,
    rows: &[ImportRow],
    prepared: mpsc::Receiver<Vec<Prepared>>,
) -> Result<Vec<ImportOutcome>> {
    let mut feed = Feed {
        from: Some(prepared),
        items: Vec::with_capacity(rows.len()),
    };
    // Foreign keys are not checked on this path: the workspace must be checked here.
    let known = c
        .prepare_cached("SELECT 1 FROM workspaces WHERE id = ?1")?
        .exists([ws.0])?;
    if !known {
        return Err(StoreError::not_found("workspace"));
    }
    let mut batch = Batch::load(c, ws)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut pending = Pending::new(c)?;
    for i in 0..rows.len() {
        let result = match import_row(c, &mut batch, rows, i, Some((&mut pending, &mut feed))) {
            Ok(done) => Ok(done),
            Err(RowError::Refused(reason)) => Err(reason),
            Err(RowError::Store(e)) => return Err(e),
        };
        out.push(ImportOutcome {
            line: rows[i].line,
            result,
        });
    }
    pending.flush(c, &batch)?;
    Ok(out)
}

/// Imports a batch with a savepoint per row, so a row that hits a database error is
/// rolled back alone and reported while the others commit.
pub(crate) fn import_slow(
    c: &Connection,
    ws: WorkspaceId,
    rows: &[ImportRow],
) -> Result<Vec<ImportOutcome>> {
    let mut batch = Batch::load(c, ws)?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        c.execute_batch("SAVEPOINT import_row")?;
        let result = match import_row(c, &mut batch, rows, i, None) {
            Ok(done) => {
                c.execute_batch("RELEASE import_row")?;
                Ok(done)
            }
            Err(RowError::Refused(reason)) => {
                c.execute_batch("RELEASE import_row")?;
                Err(reason)
            }
            Err(RowError::Store(e)) => {
                c.execute_batch("ROLLBACK TO import_row; RELEASE import_row")?;
                // The rollback may have undone the creation of a cached tag.
                batch.tags.clear();
                Err(e.to_string())
            }
        };
        out.push(ImportOutcome {
            line: row.line,
            result,
        });
    }
    Ok(out)
}

/// Rows prepared by [`prepare`] per chunk (the chunks sent as they are done).
const PREPARE_CHUNK: usize = 256;

/// The part of a new contact's writes that needs neither the database nor the batch:
/// computed by [`prepare`] on another thread while the writer thread works, so that the
/// writer (the bottleneck of an import) only looks up, binds and steps.
pub(crate) struct Prepared {
    /// The `contact_imported` event data up to the field keys, which need the batch.
    head: String,
    /// The event data after the field keys.
    tail: String,
    /// The subscription topics as stored (JSON).
    topics: String,
}

impl Prepared {
    fn of(row: &ImportRow) -> Result<Self> {
        let profile: Vec<&str> = Profile::ATTRIBUTES
            .iter()
            .zip(Profile::values(&row.profile))
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        let change = row.identity.as_ref().and(row.subscription.as_ref());
        // Keys in the order `json!` gives them in the row-by-row path (the workspace
        // builds serde_json with `preserve_order`), as `serde_json` writes them.
        let head = format!(
            r#"{{"action":"created","line":{},"profile":{},"tags":{},"fields":"#,
            row.line,
            json(&profile)?,
            json(&distinct(&row.tags))?
        );
        let tail = format!(
            r#","identity_added":{},"subscription":{}}}"#,
            row.identity.is_some(),
            json(&change.map(|s| s.state().as_str()))?
        );
        Ok(Prepared {
            head,
            tail,
            topics: change.map(|c| json_strings(c.topics())).unwrap_or_default(),
        })
    }
}

/// `v` as JSON text.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Database(format!("cannot encode an event: {e}")))
}

/// Prepares every row of a batch (see [`Prepared`]), sending them in chunks. Stops
/// early if the writer has gone (the receiver dropped) or a row cannot be encoded (the
/// writer then prepares the rest itself).
pub(crate) fn prepare(rows: &[ImportRow], to: mpsc::Sender<Vec<Prepared>>) {
    for chunk in rows.chunks(PREPARE_CHUNK) {
        let Ok(items) = chunk.iter().map(Prepared::of).collect::<Result<Vec<_>>>() else {
            return;
        };
        if to.send(items).is_err() {
            return;
        }
    }
}

/// The writer's side of [`prepare`]: prepared rows by row index, received as needed.
struct Feed {
    from: Option<mpsc::Receiver<Vec<Prepared>>>,
    items: Vec<Option<Prepared>>,
}

impl Feed {
    /// Row `i`'s prepared part, waiting for its chunk; `None` if the preparing side
    /// stopped (the caller prepares the row itself).
    fn take(&mut self, i: usize) -> Option<Prepared> {
        while self.items.len() <= i {
            let chunk = self.from.as_ref()?.recv();
            match chunk {
                Ok(chunk) => self.items.extend(chunk.into_iter().map(Some)),
                Err(_) => {
                    self.from = None;
                    return None;
                }
            }
        }
        self.items.get_mut(i).and_then(Option::take)
    }
}

/// An existing identity found by the row's channel address.
struct Found {
    identity: IdentityId,
    contact: ContactId,
    state: String,
    topics: String,
}

fn import_row<'a>(
    c: &Connection,
    b: &mut Batch<'_>,
    rows: &'a [ImportRow],
    i: usize,
    mut pending: Option<(&mut Pending<'a>, &mut Feed)>,
) -> std::result::Result<(ContactId, ImportAction), RowError> {
    let row = &rows[i];
    if let Some((ch, _)) = &row.identity {
        if !b.channels.contains(ch) {
            return Err(RowError::Refused(format!("unknown channel {ch}")));
        }
    }
    for f in &row.fields {
        if !b.fields.contains_key(&f.field_id()) {
            return Err(RowError::Refused(format!("unknown field {}", f.field_id())));
        }
    }

    // Match: identity, then phone, then e-mail (lowest id among several).
    // A key held by a not-yet-written new contact of this batch: write the pending
    // contacts first, then the database answers as if they had been written at once.
    // Pending contacts have higher ids than any written one, so a database hit on the
    // phone or e-mail is the lowest id and the buffer is only consulted on a miss.
    let mut found: Option<Found> = None;
    if let Some((ch, ext)) = &row.identity {
        found = b.find_identity(*ch, ext)?;
        if found.is_none() {
            if let Some((p, _)) = pending.as_mut() {
                if p.by_identity.contains_key(&(ch.0, ext.as_str())) {
                    p.flush(c, b)?;
                    found = b.find_identity(*ch, ext)?;
                }
            }
        }
    }
    let mut contact = found.as_ref().map(|f| f.contact);
    if contact.is_none() {
        if let Some(phone) = &row.profile.phone {
            contact = b.find_by(true, phone)?;
            if contact.is_none() {
                if let Some((p, _)) = pending.as_mut() {
                    if p.by_phone.contains_key(phone.as_str()) {
                        p.flush(c, b)?;
                        contact = b.find_by(true, phone)?;
                    }
                }
            }
        }
    }
    if contact.is_none() {
        if let Some(email) = &row.profile.email {
            contact = b.find_by(false, email)?;
            if contact.is_none() {
                if let Some((p, _)) = pending.as_mut() {
                    if p.by_email.contains_key(email.as_str()) {
                        p.flush(c, b)?;
                        contact = b.find_by(false, email)?;
                    }
                }
            }
        }
    }
    match (contact, pending) {
        (None, Some((p, feed))) => p.add(c, b, rows, i, feed),
        (None, None) => create(c, b, row),
        (Some(id), pending) => {
            // An update may insert an identity with an automatic id, which must not
            // collide with ids handed to pending contacts: write those first.
            if let Some((p, _)) = pending {
                p.flush(c, b)?;
            }
            update(c, b, row, id, found)
        }
    }
}

impl Batch<'_> {
    /// The identity at (`ch`, `ext`), if any.
    fn find_identity(&mut self, ch: ChannelId, ext: &str) -> Result<Option<Found>> {
        Ok(self
            .by_identity
            .query_row(params![ch.0, ext], |r| {
                Ok(Found {
                    identity: IdentityId(r.get(0)?),
                    contact: ContactId(r.get(1)?),
                    state: r.get(2)?,
                    topics: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// The lowest contact id in the workspace whose phone (or e-mail) is `value`.
    fn find_by(&mut self, phone: bool, value: &str) -> Result<Option<ContactId>> {
        let stmt = if phone {
            &mut self.by_phone
        } else {
            &mut self.by_email
        };
        Ok(stmt
            .query_row(params![self.ws.0, value], |r| r.get(0).map(ContactId))
            .optional()?)
    }
}

/// Distinct names in order (a file may repeat a tag within a row).
fn distinct(names: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::with_capacity(names.len());
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn imported_event(
    c: &Connection,
    b: &Batch<'_>,
    id: ContactId,
    action: &str,
    line: u64,
    profile: &[&str],
    tags: &[&String],
    fields: &[&str],
    identity_added: bool,
    subscription: Option<&SubscriptionChange>,
) -> Result<()> {
    let data = json!({
        "action": action,
        "line": line,
        "profile": profile,
        "tags": tags,
        "fields": fields,
        "identity_added": identity_added,
        "subscription": subscription.map(|s| s.state().as_str()),
    });
    insert_event(
        c,
        b.ws,
        id,
        EventKind::ContactImported.as_str(),
        &data,
        b.at,
    )?;
    Ok(())
}

fn field_keys_of<'a>(b: &'a Batch, values: &[&FieldValue]) -> Vec<&'a str> {
    let mut keys: Vec<&str> = Vec::with_capacity(values.len());
    for v in values {
        if let Some(k) = b.fields.get(&v.field_id()) {
            if !keys.contains(&k.as_str()) {
                keys.push(k.as_str());
            }
        }
    }
    keys
}

fn create(
    c: &Connection,
    b: &mut Batch<'_>,
    row: &ImportRow,
) -> std::result::Result<(ContactId, ImportAction), RowError> {
    let id = insert_contact(c, b.ws, &row.profile, row.source.as_deref(), b.at)?;
    let profile: Vec<&str> = Profile::ATTRIBUTES
        .iter()
        .zip(Profile::values(&row.profile))
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
    if let Some((ch, ext)) = &row.identity {
        insert_identity(c, b.ws, id, *ch, ext, row.subscription.as_ref(), b.at)?;
    }
    let tags = distinct(&row.tags);
    for name in &tags {
        let tag = b.tag(c, name)?;
        link_tag(c, b.ws, id, tag, b.at)?;
    }
    for v in &row.fields {
        upsert_field(c, b.ws, id, v, b.at)?;
    }
    let set: Vec<&FieldValue> = row.fields.iter().collect();
    let keys = field_keys_of(b, &set);
    let sub = row.identity.as_ref().and(row.subscription.as_ref());
    imported_event(
        c,
        b,
        id,
        "created",
        row.line,
        &profile,
        &tags,
        &keys,
        row.identity.is_some(),
        sub,
    )?;
    Ok((id, ImportAction::Created))
}

fn update(
    c: &Connection,
    b: &mut Batch<'_>,
    row: &ImportRow,
    id: ContactId,
    found: Option<Found>,
) -> std::result::Result<(ContactId, ImportAction), RowError> {
    // Read everything first: an unchanged row must write nothing at all.
    let current: voronka_core::contact::Profile = c
        .prepare_cached(&format!(
            "SELECT {PROFILE_COLS} FROM contacts WHERE id = ?1"
        ))?
        .query_row([id.0], |r| profile_at(r, 0))?;
    let mut merged = current.clone();
    let changed: Vec<&str> = {
        let cur = Profile::values(&current);
        let new = Profile::values(&row.profile);
        Profile::ATTRIBUTES
            .iter()
            .zip(cur.into_iter().zip(new))
            .filter(|(_, (cur, new))| new.is_some() && cur != new)
            .map(|(n, _)| *n)
            .collect()
    };
    {
        let p = &row.profile;
        let m = &mut merged;
        for (dst, src) in [
            (&mut m.first_name, &p.first_name),
            (&mut m.last_name, &p.last_name),
            (&mut m.username, &p.username),
            (&mut m.language, &p.language),
            (&mut m.time_zone, &p.time_zone),
            (&mut m.phone, &p.phone),
            (&mut m.email, &p.email),
            (&mut m.avatar_url, &p.avatar_url),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
    }

    let mut add_tags: Vec<&String> = Vec::new();
    for name in distinct(&row.tags) {
        let has = match b.existing_tag(c, name)? {
            Some(tag) => has_tag(c, id, tag)?,
            None => false,
        };
        if !has {
            add_tags.push(name);
        }
    }

    let mut set_fields: Vec<&FieldValue> = Vec::new();
    for v in &row.fields {
        // A later value for the same field in one row wins, as it would when written.
        if let Some(pos) = set_fields.iter().position(|s| s.field_id() == v.field_id()) {
            set_fields.remove(pos);
        }
        if !same_value(&current_field(c, id, v.field_id())?, v) {
            set_fields.push(v);
        }
    }

    // Identity: attach when the contact was matched by phone/e-mail (the address is
    // free, or it would have matched first); on a matched identity apply the change
    // only when state or topics differ.
    let mut new_identity: Option<(ChannelId, &str)> = None;
    let mut sub_change: Option<(IdentityId, ChannelId, &SubscriptionChange)> = None;
    if let Some((ch, ext)) = &row.identity {
        match &found {
            Some(f) => {
                if let Some(change) = &row.subscription {
                    let topics = json_strings(change.topics());
                    if f.state != change.state().as_str() || f.topics != topics {
                        sub_change = Some((f.identity, *ch, change));
                    }
                }
            }
            None => new_identity = Some((*ch, ext.as_str())),
        }
    }

    if changed.is_empty()
        && add_tags.is_empty()
        && set_fields.is_empty()
        && new_identity.is_none()
        && sub_change.is_none()
    {
        return Ok((id, ImportAction::Unchanged));
    }

    if changed.is_empty() {
        touch_contact(c, id, b.at)?;
    } else {
        c.prepare_cached(
            "UPDATE contacts SET first_name = ?1, last_name = ?2, username = ?3, language = ?4, \
             time_zone = ?5, phone = ?6, email = ?7, avatar_url = ?8, updated_at = ?9 WHERE id = ?10",
        )?
        .execute(params![
            merged.first_name,
            merged.last_name,
            merged.username,
            merged.language,
            merged.time_zone,
            merged.phone,
            merged.email,
            merged.avatar_url,
            us(b.at),
            id.0
        ])?;
    }
    for name in &add_tags {
        let tag = b.tag(c, name)?;
        link_tag(c, b.ws, id, tag, b.at)?;
    }
    for v in &set_fields {
        upsert_field(c, b.ws, id, v, b.at)?;
    }
    let mut applied: Option<&SubscriptionChange> = None;
    if let Some((ch, ext)) = new_identity {
        insert_identity(c, b.ws, id, ch, ext, row.subscription.as_ref(), b.at)?;
        applied = row.subscription.as_ref();
    }
    if let Some((identity, ch, change)) = sub_change {
        apply_subscription(c, b.ws, id, identity, ch, change, b.at)?;
        applied = Some(change);
    }
    let keys = field_keys_of(b, &set_fields);
    imported_event(
        c,
        b,
        id,
        "updated",
        row.line,
        &changed,
        &add_tags,
        &keys,
        new_identity.is_some(),
        applied,
    )?;
    Ok((id, ImportAction::Updated))
}

/// Most bound parameters per multi-row statement (SQLite's limit is 32766; smaller
/// statements are cheaper to prepare and cache).
const MAX_PARAMS: usize = 900;

/// Runs `INSERT … VALUES (…), (…)` in as few statements as the parameter limit allows.
///
/// `row` describes one row's values: `0` takes the next value of `params`, `n > 0` the
/// n-th of `consts` — the workspace, the time and the like, the same in every row, bound
/// once per statement as `?n` instead of once per row (binding is a good part of the
/// writer's time).
///
/// The statements say `OR FAIL` (or `OR IGNORE`), not the default `ABORT`: an aborting
/// multi-row statement must be able to undo its own earlier rows, so SQLite copies every
/// page it touches into a statement journal first. Here any failure fails the whole
/// job, whose transaction is rolled back anyway (then replayed row by row).
fn insert_many(
    c: &Connection,
    head: &str,
    row: &[u8],
    consts: &[&dyn ToSql],
    params: &[&dyn ToSql],
) -> Result<()> {
    let vars = row.iter().filter(|s| **s == 0).count().max(1);
    let full_rows = ((MAX_PARAMS - consts.len()) / vars).max(1);
    // The full-size statement is looked up once per call, not once per chunk: the
    // statement cache hashes the whole SQL text on every lookup.
    let mut full = None;
    for chunk in params.chunks(full_rows * vars) {
        let n = chunk.len() / vars;
        let mut tail = None;
        let stmt = if n == full_rows {
            match &mut full {
                Some(s) => s,
                None => full.insert(c.prepare_cached(&values_sql(head, row, consts.len(), n))?),
            }
        } else {
            tail.insert(c.prepare_cached(&values_sql(head, row, consts.len(), n))?)
        };
        for (i, v) in consts.iter().chain(chunk).enumerate() {
            stmt.raw_bind_parameter(i + 1, v)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

/// `head VALUES (…), (…)` for `n` rows shaped as `row` (see [`insert_many`]).
fn values_sql(head: &str, row: &[u8], consts: usize, n: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + 16 + n * row.len() * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    let mut next = consts;
    for r in 0..n {
        sql.push_str(if r == 0 { "(" } else { ",(" });
        for (j, slot) in row.iter().enumerate() {
            if j > 0 {
                sql.push(',');
            }
            let idx = if *slot == 0 {
                next += 1;
                next
            } else {
                usize::from(*slot)
            };
            // Writing to a String cannot fail.
            let _ = write!(sql, "?{idx}");
        }
        sql.push(')');
    }
    sql
}

/// A new contact decided on but not yet written.
struct NewRow<'a> {
    row: &'a ImportRow,
    id: i64,
    identity: Option<(i64, i64, &'a str)>,
    state: &'static str,
    topics: String,
    proof_at: Option<i64>,
    tags: Vec<i64>,
    fields: Vec<(i64, Option<&'a str>, Option<f64>)>,
    event: String,
}

/// New contacts of a batch, written together with multi-row INSERTs: one statement
/// per table per few hundred rows instead of a dozen statements per contact. Ids are
/// assigned here (max + 1): the writer thread is the only writer and the batch holds
/// the write lock, so no one else can take them.
struct Pending<'a> {
    next_contact: i64,
    next_identity: i64,
    items: Vec<NewRow<'a>>,
    by_identity: HashMap<(i64, &'a str), ()>,
    by_phone: HashMap<&'a str, ()>,
    by_email: HashMap<&'a str, ()>,
}

impl<'a> Pending<'a> {
    fn new(c: &Connection) -> Result<Self> {
        let next = |table: &str| -> Result<i64> {
            Ok(c.query_row(
                &format!("SELECT COALESCE(max(id), 0) + 1 FROM {table}"),
                [],
                |r| r.get(0),
            )?)
        };
        Ok(Pending {
            next_contact: next("contacts")?,
            next_identity: next("identities")?,
            items: Vec::new(),
            by_identity: HashMap::new(),
            by_phone: HashMap::new(),
            by_email: HashMap::new(),
        })
    }

    /// Decides a new contact for `row` (tags are created now; rows are written later).
    fn add(
        &mut self,
        c: &Connection,
        b: &mut Batch<'_>,
        rows: &'a [ImportRow],
        i: usize,
        feed: &mut Feed,
    ) -> std::result::Result<(ContactId, ImportAction), RowError> {
        let row = &rows[i];
        let id = self.next_contact;
        self.next_contact += 1;
        let identity = match &row.identity {
            Some((ch, ext)) => {
                let iid = self.next_identity;
                self.next_identity += 1;
                self.by_identity.insert((ch.0, ext.as_str()), ());
                Some((iid, ch.0, ext.as_str()))
            }
            None => None,
        };
        if let Some(p) = &row.profile.phone {
            self.by_phone.insert(p.as_str(), ());
        }
        if let Some(e) = &row.profile.email {
            self.by_email.insert(e.as_str(), ());
        }
        let names = distinct(&row.tags);
        let mut tags = Vec::with_capacity(names.len());
        for name in &names {
            tags.push(b.tag(c, name)?.0);
        }
        // A later value for the same field in one row wins.
        let mut fields: Vec<(i64, Option<&str>, Option<f64>)> =
            Vec::with_capacity(row.fields.len());
        for v in &row.fields {
            let f = (v.field_id().0, v.text(), v.num());
            match fields.iter_mut().find(|x| x.0 == f.0) {
                Some(slot) => *slot = f,
                None => fields.push(f),
            }
        }
        let values: Vec<&FieldValue> = row.fields.iter().collect();
        let keys = field_keys_of(b, &values);
        let change = row.identity.as_ref().and(row.subscription.as_ref());
        let prepared = match feed.take(i) {
            Some(p) => p,
            None => Prepared::of(row)?,
        };
        let mut event = prepared.head;
        event.push_str(&json(&keys)?);
        event.push_str(&prepared.tail);
        let (state, topics) = match change {
            Some(ch) => (ch.state().as_str(), prepared.topics),
            None => (
                voronka_core::subscription::SubscriptionState::Unsubscribed.as_str(),
                "[]".to_string(),
            ),
        };
        self.items.push(NewRow {
            row,
            id,
            identity,
            state,
            topics,
            proof_at: change.and_then(|c| c.proof()).map(|p| us(p.at)),
            tags,
            fields,
            event,
        });
        Ok((ContactId(id), ImportAction::Created))
    }

    /// Writes every pending contact with its identity, history, tags, fields and event.
    fn flush(&mut self, c: &Connection, b: &Batch<'_>) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let ws = b.ws.0;
        let at = us(b.at);
        let kind = EventKind::ContactImported.as_str();
        let items = &self.items;

        let consts: [&dyn ToSql; 3] = [&ws, &at, &kind];
        let mut p: Vec<&dyn ToSql> = Vec::with_capacity(items.len() * 13);
        for it in items {
            let pr = &it.row.profile;
            p.extend_from_slice(&[
                &it.id as &dyn ToSql,
                &pr.first_name,
                &pr.last_name,
                &pr.username,
                &pr.language,
                &pr.time_zone,
                &pr.phone,
                &pr.email,
                &pr.avatar_url,
                &it.row.source,
            ]);
        }
        insert_many(
            c,
            &format!("INSERT OR FAIL INTO contacts (id, workspace_id, {PROFILE_COLS}, source, created_at, updated_at)"),
            &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2],
            &consts,
            &p,
        )?;

        // Proof columns borrow from the rows; collected first so the references live.
        let proofs: Vec<[Option<&str>; 4]> = items
            .iter()
            .map(|it| {
                let pf = it
                    .row
                    .identity
                    .as_ref()
                    .and(it.row.subscription.as_ref())
                    .and_then(|s| s.proof());
                [
                    pf.map(|x| x.source.as_str()),
                    pf.and_then(|x| x.text_shown.as_deref()),
                    pf.and_then(|x| x.ip.as_deref()),
                    pf.and_then(|x| x.message_id.as_deref()),
                ]
            })
            .collect();

        p.clear();
        for (it, pf) in items.iter().zip(&proofs) {
            if let Some((iid, ch, ext)) = &it.identity {
                p.extend_from_slice(&[
                    iid as &dyn ToSql,
                    &it.id,
                    ch,
                    ext,
                    &it.state,
                    &it.topics,
                    &pf[0],
                    &it.proof_at,
                    &pf[1],
                    &pf[2],
                    &pf[3],
                ]);
            }
        }
        insert_many(
            c,
            "INSERT OR FAIL INTO identities (id, workspace_id, contact_id, channel_id, external_id, created_at, sub_state, \
             sub_topics, proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at)",
            &[0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2],
            &consts,
            &p,
        )?;

        p.clear();
        for (it, pf) in items.iter().zip(&proofs) {
            let subscribed = it.row.subscription.is_some();
            if let (Some((iid, ch, _)), true) = (&it.identity, subscribed) {
                p.extend_from_slice(&[
                    &it.id as &dyn ToSql,
                    iid,
                    ch,
                    &it.state,
                    &it.topics,
                    &pf[0],
                    &it.proof_at,
                    &pf[1],
                    &pf[2],
                    &pf[3],
                ]);
            }
        }
        insert_many(
            c,
            "INSERT OR FAIL INTO subscription_history (workspace_id, contact_id, identity_id, channel_id, state, topics, \
             proof_source, proof_at, proof_text, proof_ip, proof_message_id, created_at)",
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            &consts,
            &p,
        )?;

        p.clear();
        for it in items {
            for t in &it.tags {
                p.extend_from_slice(&[t as &dyn ToSql, &it.id]);
            }
        }
        insert_many(
            c,
            "INSERT OR IGNORE INTO contact_tags (tag_id, contact_id, workspace_id, created_at)",
            &[0, 0, 1, 2],
            &consts,
            &p,
        )?;

        p.clear();
        for it in items {
            for (f, text, num) in &it.fields {
                p.extend_from_slice(&[&it.id as &dyn ToSql, f, text, num]);
            }
        }
        insert_many(
            c,
            "INSERT OR FAIL INTO contact_fields (contact_id, field_id, workspace_id, value_text, value_num, updated_at)",
            &[0, 0, 1, 0, 0, 2],
            &consts,
            &p,
        )?;

        p.clear();
        for it in items {
            p.extend_from_slice(&[&it.id as &dyn ToSql, &it.event]);
        }
        insert_many(
            c,
            "INSERT OR FAIL INTO events (workspace_id, contact_id, kind, data, created_at)",
            &[1, 0, 3, 0, 2],
            &consts,
            &p,
        )?;

        self.items.clear();
        self.by_identity.clear();
        self.by_phone.clear();
        self.by_email.clear();
        Ok(())
    }
}
