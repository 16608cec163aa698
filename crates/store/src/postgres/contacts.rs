//! Contacts one at a time: create, read, change, erase, and their event log. Every
//! change runs in one transaction that also appends the matching event, so the log
//! cannot disagree with the data. Reads of many contacts load tags, fields and
//! identities with one `= ANY($1)` query each instead of one per contact.

use super::filter::push_where;
use super::rows::{self, CONTACT_COLS, EVENT_COLS, HISTORY_COLS, IDENTITY_COLS};
use super::schema::{ensure_tags, field_infos};
use super::{is_unique_violation, now_us, parse_stored, PgStore};
use crate::model::*;
use crate::{ContactStore, Result, StoreError};
use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use std::collections::HashMap;
use voronka_core::contact::Profile;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldType, FieldValue};
use voronka_core::filter::ContactFilter;
use voronka_core::subscription::{SubscriptionChange, SubscriptionState};
use voronka_core::*;

fn clamp_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}

/// Checks the contact is in `ws` and locks its row for the rest of the transaction, so
/// concurrent changes to one contact queue instead of interleaving their events.
pub(crate) async fn lock_contact(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
) -> Result<()> {
    let erased: Option<i64> = sqlx::query(
        "SELECT erased_at FROM contacts WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
    )
    .bind(id.0)
    .bind(ws.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("contact"))?
    .try_get(0)?;
    refuse_erased(erased)
}

/// An erased contact is an anonymous record: giving it data again would undo the erasure.
pub(crate) fn refuse_erased(erased_at: Option<i64>) -> Result<()> {
    match erased_at {
        None => Ok(()),
        Some(_) => Err(StoreError::conflict(
            "contact_erased",
            "the contact's personal data was erased; it cannot be changed",
            None,
        )),
    }
}

async fn contact_exists(conn: &mut PgConnection, ws: WorkspaceId, id: ContactId) -> Result<()> {
    let ok: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM contacts WHERE id = $1 AND workspace_id = $2)")
            .bind(id.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
    if ok {
        Ok(())
    } else {
        Err(StoreError::not_found("contact"))
    }
}

/// Records that a contact changed now.
pub(crate) async fn touch(conn: &mut PgConnection, id: ContactId, now: i64) -> Result<()> {
    sqlx::query("UPDATE contacts SET updated_at = $2 WHERE id = $1")
        .bind(id.0)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records one change to a contact: its event, and its new `updated_at`.
async fn record_change(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    kind: EventKind,
    data: &Value,
    now: i64,
) -> Result<()> {
    insert_event(conn, ws, id, kind, data, now).await?;
    touch(conn, id, now).await
}

/// Appends an event to a contact's log.
pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    kind: EventKind,
    data: &Value,
    now: i64,
) -> Result<Event> {
    let r = sqlx::query(&format!(
        "INSERT INTO events (workspace_id, contact_id, kind, data, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING {EVENT_COLS}"
    ))
    .bind(ws.0)
    .bind(id.0)
    .bind(kind.as_str())
    .bind(Json(data))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    rows::event(&r)
}

/// Loads full contacts (tags, fields, identities) for `ids`, in the order given; ids not
/// in `ws` are skipped.
pub(crate) async fn load_contacts(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    ids: &[i64],
) -> Result<Vec<Contact>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let base = sqlx::query(&format!(
        "SELECT {CONTACT_COLS} FROM contacts WHERE workspace_id = $1 AND id = ANY($2)"
    ))
    .bind(ws.0)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<i64, Contact> = HashMap::with_capacity(base.len());
    for r in &base {
        let c = rows::contact_base(r)?;
        by_id.insert(c.id.0, c);
    }
    let tag_rows = sqlx::query(
        "SELECT ct.contact_id, t.name FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id WHERE ct.contact_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &tag_rows {
        if let Some(c) = by_id.get_mut(&r.try_get::<i64, _>(0)?) {
            c.tags.push(r.try_get(1)?);
        }
    }
    let field_rows = sqlx::query(
        "SELECT cf.contact_id, cf.field_id, d.key, d.field_type, cf.value_text, cf.value_num
         FROM contact_fields cf JOIN field_definitions d ON d.id = cf.field_id
         WHERE cf.contact_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &field_rows {
        if let Some(c) = by_id.get_mut(&r.try_get::<i64, _>(0)?) {
            let t: String = r.try_get(3)?;
            let v = FieldValue::from_storage(
                FieldId(r.try_get(1)?),
                parse_stored::<FieldType>("field type", &t)?,
                r.try_get(4)?,
                r.try_get(5)?,
            );
            c.fields.insert(r.try_get(2)?, v.to_json());
        }
    }
    let ident_rows = sqlx::query(&format!(
        "SELECT {IDENTITY_COLS} FROM identities WHERE contact_id = ANY($1) ORDER BY id"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &ident_rows {
        let i = rows::identity(r)?;
        if let Some(c) = by_id.get_mut(&i.contact_id.0) {
            c.identities.push(i);
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(mut c) = by_id.remove(id) {
            // Bytewise order, the same as SQLite's default collation.
            c.tags.sort_unstable();
            out.push(c);
        }
    }
    Ok(out)
}

async fn load_one(conn: &mut PgConnection, ws: WorkspaceId, id: ContactId) -> Result<Contact> {
    load_contacts(conn, ws, &[id.0])
        .await?
        .pop()
        .ok_or(StoreError::not_found("contact"))
}

/// Links tags (by name, creating missing ones) and appends `tag_added` for each one
/// newly linked; returns those names in input order.
pub(crate) async fn link_tags(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    names: &[String],
    now: i64,
) -> Result<Vec<String>> {
    let mut uniq: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if !uniq.contains(n) {
            uniq.push(n.clone());
        }
    }
    let ids = ensure_tags(conn, ws, &uniq, now).await?;
    let tag_ids: Vec<i64> = uniq.iter().filter_map(|n| ids.get(n).copied()).collect();
    let added: Vec<i64> = sqlx::query(
        "INSERT INTO contact_tags (tag_id, contact_id, workspace_id, created_at)
         SELECT t, $2, $3, $4 FROM unnest($1::bigint[]) AS t
         ON CONFLICT (tag_id, contact_id) DO NOTHING RETURNING tag_id",
    )
    .bind(&tag_ids)
    .bind(id.0)
    .bind(ws.0)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<std::result::Result<_, _>>()?;
    let mut out = Vec::new();
    for n in uniq {
        if ids.get(&n).is_some_and(|t| added.contains(t)) {
            insert_event(conn, ws, id, EventKind::TagAdded, &json!({ "tag": n }), now).await?;
            out.push(n);
        }
    }
    Ok(out)
}

fn unknown_field() -> StoreError {
    StoreError::Invalid(ValidationError::new("fields", "unknown field"))
}

/// Upserts field values that differ from the stored ones, appending `field_set` for
/// each; returns how many changed.
pub(crate) async fn write_fields(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    values: &[FieldValue],
    now: i64,
) -> Result<usize> {
    let ids: Vec<i64> = values.iter().map(|v| v.field_id().0).collect();
    let infos = field_infos(conn, ws, &ids).await?;
    if values.iter().any(|v| !infos.contains_key(&v.field_id().0)) {
        return Err(unknown_field());
    }
    let current = sqlx::query("SELECT field_id, value_text, value_num FROM contact_fields WHERE contact_id = $1 AND field_id = ANY($2)")
        .bind(id.0)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut stored: HashMap<i64, (Option<String>, Option<f64>)> = HashMap::new();
    for r in &current {
        stored.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
    }
    let mut changed = 0;
    for v in values {
        let fid = v.field_id().0;
        let same = stored
            .get(&fid)
            .is_some_and(|(t, n)| t.as_deref() == v.text() && *n == v.num());
        if same {
            continue;
        }
        sqlx::query(
            "INSERT INTO contact_fields (contact_id, field_id, workspace_id, value_text, value_num, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (contact_id, field_id) DO UPDATE
             SET value_text = EXCLUDED.value_text, value_num = EXCLUDED.value_num, updated_at = EXCLUDED.updated_at",
        )
        .bind(id.0)
        .bind(fid)
        .bind(ws.0)
        .bind(v.text())
        .bind(v.num())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        stored.insert(fid, (v.text().map(str::to_string), v.num()));
        let key = infos.get(&fid).map(|i| i.key.clone()).unwrap_or_default();
        insert_event(
            conn,
            ws,
            id,
            EventKind::FieldSet,
            &json!({ "key": key, "value": v.to_json() }),
            now,
        )
        .await?;
        changed += 1;
    }
    Ok(changed)
}

/// Removes a tag by name with its `tag_removed` event; returns whether the contact had it.
pub(crate) async fn unlink_tag(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    name: &str,
    now: i64,
) -> Result<bool> {
    let n = sqlx::query(
        "DELETE FROM contact_tags WHERE contact_id = $1
           AND tag_id = (SELECT id FROM tags WHERE workspace_id = $2 AND name = $3)",
    )
    .bind(id.0)
    .bind(ws.0)
    .bind(name)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n > 0 {
        insert_event(
            conn,
            ws,
            id,
            EventKind::TagRemoved,
            &json!({ "tag": name }),
            now,
        )
        .await?;
    }
    Ok(n > 0)
}

/// Replaces a contact's profile (`current` is the stored one) with `profile_updated`
/// naming the changed attributes; returns whether anything changed.
pub(crate) async fn write_profile(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    current: &Profile,
    profile: &Profile,
    now: i64,
) -> Result<bool> {
    let changed: Vec<&str> = Profile::ATTRIBUTES
        .iter()
        .zip(
            Profile::values(current)
                .iter()
                .zip(Profile::values(profile)),
        )
        .filter(|(_, (a, b))| **a != *b)
        .map(|(n, _)| *n)
        .collect();
    if changed.is_empty() {
        return Ok(false);
    }
    let p = profile;
    sqlx::query(
        "UPDATE contacts SET first_name = $2, last_name = $3, username = $4, language = $5, time_zone = $6,
             phone = $7, email = $8, avatar_url = $9, updated_at = $10
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(&p.first_name)
    .bind(&p.last_name)
    .bind(&p.username)
    .bind(&p.language)
    .bind(&p.time_zone)
    .bind(&p.phone)
    .bind(&p.email)
    .bind(&p.avatar_url)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    record_change(
        conn,
        ws,
        id,
        EventKind::ProfileUpdated,
        &json!({ "changed": changed }),
        now,
    )
    .await?;
    Ok(true)
}

/// Appends a subscription history row for `identity`.
async fn insert_history(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    identity: i64,
    channel: i64,
    change: &SubscriptionChange,
    now: i64,
) -> Result<()> {
    let p = change.proof();
    sqlx::query(
        "INSERT INTO subscription_history (workspace_id, contact_id, identity_id, channel_id, state, topics,
             proof_source, proof_at, proof_text, proof_ip, proof_message_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(ws.0)
    .bind(id.0)
    .bind(identity)
    .bind(channel)
    .bind(change.state().as_str())
    .bind(Json(change.topics()))
    .bind(p.map(|p| p.source.as_str()))
    .bind(p.map(|p| p.at.as_microsecond()))
    .bind(p.and_then(|p| p.text_shown.as_deref()))
    .bind(p.and_then(|p| p.ip.as_deref()))
    .bind(p.and_then(|p| p.message_id.as_deref()))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn subscription_event(identity: i64, channel: i64, change: &SubscriptionChange) -> Value {
    json!({
        "identity_id": identity,
        "channel_id": channel,
        "state": change.state().as_str(),
        "topics": change.topics(),
        "source": change.proof().map(|p| p.source.clone()),
    })
}

/// Stores a new subscription on an identity of contact `id` (NotFound otherwise) with
/// its history row and `subscription_changed` event; `event_source` replaces the event's
/// `source` (the proof's) when the change has another origin, e.g. `delivery`.
pub(crate) async fn change_subscription(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    identity: IdentityId,
    change: &SubscriptionChange,
    event_source: Option<&str>,
    now: i64,
) -> Result<Identity> {
    let p = change.proof();
    let r = sqlx::query(&format!(
        "UPDATE identities SET sub_state = $4, sub_topics = $5, proof_source = $6, proof_at = $7, proof_text = $8,
             proof_ip = $9, proof_message_id = $10, sub_updated_at = $11
         WHERE id = $1 AND contact_id = $2 AND workspace_id = $3
         RETURNING {IDENTITY_COLS}"
    ))
    .bind(identity.0)
    .bind(id.0)
    .bind(ws.0)
    .bind(change.state().as_str())
    .bind(Json(change.topics()))
    .bind(p.map(|p| p.source.as_str()))
    .bind(p.map(|p| p.at.as_microsecond()))
    .bind(p.and_then(|p| p.text_shown.as_deref()))
    .bind(p.and_then(|p| p.ip.as_deref()))
    .bind(p.and_then(|p| p.message_id.as_deref()))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::not_found("identity"))?;
    let updated = rows::identity(&r)?;
    let ch = updated.channel_id.0;
    insert_history(conn, ws, id, identity.0, ch, change, now).await?;
    let mut data = subscription_event(identity.0, ch, change);
    if let Some(source) = event_source {
        data["source"] = json!(source);
    }
    insert_event(conn, ws, id, EventKind::SubscriptionChanged, &data, now).await?;
    Ok(updated)
}

/// Attaches an identity with its initial subscription, history row and events.
pub(crate) async fn attach_identity(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    id: ContactId,
    new: &NewIdentity,
    now: i64,
) -> Result<Identity> {
    let ch_ok: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1 AND workspace_id = $2)")
            .bind(new.channel_id.0)
            .bind(ws.0)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
    if !ch_ok {
        return Err(StoreError::Invalid(ValidationError::new(
            "channel_id",
            format!("unknown channel {}", new.channel_id),
        )));
    }
    let change = new.subscription.as_ref();
    let p = change.and_then(|c| c.proof());
    let state = change.map_or(SubscriptionState::Unsubscribed, |c| c.state());
    let topics: &[String] = change.map_or(&[], |c| c.topics());
    let r = sqlx::query(&format!(
        "INSERT INTO identities (workspace_id, contact_id, channel_id, external_id, created_at, sub_state, sub_topics,
             proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $5)
         RETURNING {IDENTITY_COLS}"
    ))
    .bind(ws.0)
    .bind(id.0)
    .bind(new.channel_id.0)
    .bind(&new.external_id)
    .bind(now)
    .bind(state.as_str())
    .bind(Json(topics))
    .bind(p.map(|p| p.source.as_str()))
    .bind(p.map(|p| p.at.as_microsecond()))
    .bind(p.and_then(|p| p.text_shown.as_deref()))
    .bind(p.and_then(|p| p.ip.as_deref()))
    .bind(p.and_then(|p| p.message_id.as_deref()))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::conflict(
                "identity_taken",
                format!("`{}` on channel {} already belongs to a contact", new.external_id, new.channel_id),
                Some("external_id"),
            )
        } else {
            e.into()
        }
    })?;
    let identity = rows::identity(&r)?;
    let iid = identity.id.0;
    insert_event(
        conn,
        ws,
        id,
        EventKind::IdentityAdded,
        &json!({ "identity_id": iid, "channel_id": new.channel_id.0 }),
        now,
    )
    .await?;
    if let Some(change) = change {
        insert_history(conn, ws, id, iid, new.channel_id.0, change, now).await?;
        insert_event(
            conn,
            ws,
            id,
            EventKind::SubscriptionChanged,
            &subscription_event(iid, new.channel_id.0, change),
            now,
        )
        .await?;
    }
    Ok(identity)
}

#[async_trait]
impl ContactStore for PgStore {
    async fn create_contact(&self, ws: WorkspaceId, new: NewContact) -> Result<Contact> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        let p = &new.profile;
        let id: i64 = sqlx::query(
            "INSERT INTO contacts (workspace_id, first_name, last_name, username, language, time_zone, phone, email,
                 avatar_url, source, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
        )
        .bind(ws.0)
        .bind(&p.first_name)
        .bind(&p.last_name)
        .bind(&p.username)
        .bind(&p.language)
        .bind(&p.time_zone)
        .bind(&p.phone)
        .bind(&p.email)
        .bind(&p.avatar_url)
        .bind(&new.source)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| if super::is_fk_violation(&e) { StoreError::not_found("workspace") } else { e.into() })?
        .try_get(0)?;
        let cid = ContactId(id);
        insert_event(
            &mut tx,
            ws,
            cid,
            EventKind::ContactCreated,
            &json!({ "source": new.source }),
            now,
        )
        .await?;
        link_tags(&mut tx, ws, cid, &new.tags, now).await?;
        write_fields(&mut tx, ws, cid, &new.fields, now).await?;
        for ni in &new.identities {
            attach_identity(&mut tx, ws, cid, ni, now).await?;
        }
        let c = load_one(&mut tx, ws, cid).await?;
        tx.commit().await?;
        Ok(c)
    }

    async fn get_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<Contact> {
        let mut conn = self.pool.acquire().await?;
        load_one(&mut conn, ws, id).await
    }

    async fn update_profile(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        profile: Profile,
    ) -> Result<Contact> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "SELECT {CONTACT_COLS} FROM contacts WHERE id = $1 AND workspace_id = $2 FOR UPDATE"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::not_found("contact"))?;
        refuse_erased(r.try_get("erased_at")?)?;
        let current = rows::profile(&r)?;
        write_profile(&mut tx, ws, id, &current, &profile, now).await?;
        let c = load_one(&mut tx, ws, id).await?;
        tx.commit().await?;
        Ok(c)
    }

    async fn delete_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()> {
        // Identities, tags, fields, history and events go with it (ON DELETE CASCADE).
        let n = sqlx::query("DELETE FROM contacts WHERE id = $1 AND workspace_id = $2")
            .bind(id.0)
            .bind(ws.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("contact"));
        }
        Ok(())
    }

    async fn list_contacts(
        &self,
        ws: WorkspaceId,
        query: &ContactQuery,
    ) -> Result<Page<Contact, ContactId>> {
        let limit = clamp_limit(query.limit);
        let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new("SELECT c.id FROM contacts c");
        push_where(&mut qb, ws, &query.filter);
        if let Some(b) = query.before {
            qb.push(" AND c.id < ").push_bind(b.0);
        }
        qb.push(" ORDER BY c.id DESC LIMIT ").push_bind(limit + 1);
        let mut conn = self.pool.acquire().await?;
        let mut ids: Vec<i64> = qb
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let more = ids.len() as i64 > limit;
        ids.truncate(limit as usize);
        let items = load_contacts(&mut conn, ws, &ids).await?;
        let next = if more {
            items.last().map(|c| c.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count_contacts(&self, ws: WorkspaceId, filter: &ContactFilter) -> Result<u64> {
        let mut qb = super::filter::count_query(ws, filter);
        let n: i64 = qb.build().fetch_one(&self.pool).await?.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn add_tags(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        names: &[String],
    ) -> Result<Vec<String>> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let added = link_tags(&mut tx, ws, id, names, now).await?;
        if !added.is_empty() {
            touch(&mut tx, id, now).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn remove_tag(&self, ws: WorkspaceId, id: ContactId, name: &str) -> Result<bool> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let removed = unlink_tag(&mut tx, ws, id, name, now).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn set_fields(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        values: Vec<FieldValue>,
    ) -> Result<()> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        if write_fields(&mut tx, ws, id, &values, now).await? > 0 {
            touch(&mut tx, id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unset_field(&self, ws: WorkspaceId, id: ContactId, field: FieldId) -> Result<bool> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let infos = field_infos(&mut tx, ws, &[field.0]).await?;
        let key = infos
            .get(&field.0)
            .ok_or(StoreError::not_found("field"))?
            .key
            .clone();
        let n = sqlx::query("DELETE FROM contact_fields WHERE contact_id = $1 AND field_id = $2")
            .bind(id.0)
            .bind(field.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            record_change(
                &mut tx,
                ws,
                id,
                EventKind::FieldUnset,
                &json!({ "key": key }),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        new: NewIdentity,
    ) -> Result<Identity> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let identity = attach_identity(&mut tx, ws, id, &new, now).await?;
        touch(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(identity)
    }

    async fn remove_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
    ) -> Result<()> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let ch: i64 = sqlx::query(
            "DELETE FROM identities WHERE id = $1 AND contact_id = $2 AND workspace_id = $3 RETURNING channel_id",
        )
        .bind(identity.0)
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::not_found("identity"))?
        .try_get(0)?;
        record_change(
            &mut tx,
            ws,
            id,
            EventKind::IdentityRemoved,
            &json!({ "identity_id": identity.0, "channel_id": ch }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_subscription(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
        change: SubscriptionChange,
    ) -> Result<Identity> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        lock_contact(&mut tx, ws, id).await?;
        let updated = change_subscription(&mut tx, ws, id, identity, &change, None, now).await?;
        touch(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn subscription_history(
        &self,
        ws: WorkspaceId,
        id: ContactId,
    ) -> Result<Vec<SubscriptionRecord>> {
        let mut conn = self.pool.acquire().await?;
        contact_exists(&mut conn, ws, id).await?;
        sqlx::query(&format!(
            "SELECT {HISTORY_COLS} FROM subscription_history WHERE contact_id = $1 AND workspace_id = $2 ORDER BY id"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(rows::history)
        .collect()
    }

    async fn append_event(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        kind: EventKind,
        data: Value,
    ) -> Result<Event> {
        let mut tx = self.pool.begin().await?;
        contact_exists(&mut tx, ws, id).await?;
        let e = insert_event(&mut tx, ws, id, kind, &data, now_us()).await?;
        tx.commit().await?;
        Ok(e)
    }

    async fn list_events(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        before: Option<EventId>,
        limit: u32,
    ) -> Result<Page<Event, EventId>> {
        let limit = clamp_limit(limit);
        let mut conn = self.pool.acquire().await?;
        contact_exists(&mut conn, ws, id).await?;
        let mut items = sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM events
             WHERE contact_id = $1 AND workspace_id = $2 AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(id.0)
        .bind(ws.0)
        .bind(before.map(|b| b.0))
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(rows::event)
        .collect::<Result<Vec<_>>>()?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = if more {
            items.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn export_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<ContactExport> {
        // One snapshot, so the contact, its history and its log agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let contact = load_one(&mut tx, ws, id).await?;
        let subscription_history = sqlx::query(&format!(
            "SELECT {HISTORY_COLS} FROM subscription_history WHERE contact_id = $1 AND workspace_id = $2 ORDER BY id"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::history)
        .collect::<Result<Vec<_>>>()?;
        let events = sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM events WHERE contact_id = $1 AND workspace_id = $2 ORDER BY id"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::event)
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(ContactExport {
            contact,
            subscription_history,
            events,
        })
    }

    async fn erase_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        // NO KEY UPDATE still queues other changes to the contact, but lets a delivery
        // worker insert an event for it (a foreign key check takes KEY SHARE): that worker
        // may hold an outbox row this erasure is about to wait for.
        let erased: Option<i64> = sqlx::query(
            "SELECT erased_at FROM contacts WHERE id = $1 AND workspace_id = $2 FOR NO KEY UPDATE",
        )
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::not_found("contact"))?
        .try_get(0)?;
        if erased.is_some() {
            return Ok(());
        }
        let steps: [&str; 9] = [
            "UPDATE contacts SET first_name = NULL, last_name = NULL, username = NULL, language = NULL,
                 time_zone = NULL, phone = NULL, email = NULL, avatar_url = NULL, source = NULL,
                 erased_at = $2, updated_at = $2
             WHERE id = $1",
            // Conversations are personal (message texts, the sender's names inside
            // stored events, the address). The rows stay, emptied, so counts and the
            // duplicate check of provider events still work; what was still waiting to be
            // sent never will be. Before identities: a delivery worker locks an outbox
            // row, then the identity, and this must take them in the same order.
            "UPDATE outbox SET message = '{}'::jsonb, has_choices = false, external_id = '',
                 provider_message_ids = '[]'::jsonb,
                 error = CASE WHEN state IN ('queued', 'sending') THEN 'contact erased' END,
                 state = CASE WHEN state IN ('queued', 'sending') THEN 'failed' ELSE state END,
                 lease_until = NULL
             WHERE contact_id = $1",
            "UPDATE inbound_events SET payload = '{}'::jsonb, error = NULL WHERE contact_id = $1",
            "DELETE FROM identities WHERE contact_id = $1",
            "DELETE FROM contact_fields WHERE contact_id = $1",
            "DELETE FROM contact_tags WHERE contact_id = $1",
            "UPDATE subscription_history SET proof_source = NULL, proof_at = NULL, proof_text = NULL,
                 proof_ip = NULL, proof_message_id = NULL
             WHERE contact_id = $1",
            "UPDATE events SET data = '{}'::jsonb WHERE contact_id = $1",
            "DELETE FROM idempotency WHERE contact_id = $1",
        ];
        for sql in steps {
            // $2 is only used by the first statement; PostgreSQL accepts the unused
            // parameter because sqlx declares its type.
            let q = sqlx::query(sql).bind(id.0);
            let q = if sql.contains("$2") { q.bind(now) } else { q };
            q.execute(&mut *tx).await?;
        }
        super::flows::erase_flow_data(&mut tx, id, now).await?;
        super::broadcasts::erase_recipients(&mut tx, ws, id).await?;
        insert_event(&mut tx, ws, id, EventKind::Erased, &json!({}), now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn import_contacts(
        &self,
        ws: WorkspaceId,
        rows: Vec<ImportRow>,
    ) -> Result<Vec<ImportOutcome>> {
        super::import::import_contacts(&self.pool, ws, rows).await
    }
}
