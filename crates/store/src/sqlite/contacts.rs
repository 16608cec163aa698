//! ContactStore: contacts, their tags, fields, identities, consent and event log.
//!
//! Every method runs as one writer job (or one read), so a change and the events that
//! describe it commit together. The row-level helpers here are shared with the import.

use super::filter;
use super::rows::*;
use super::SqliteStore;
use crate::model::*;
use crate::{ContactStore, Result, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::collections::HashMap;
use voronka_core::contact::Profile;
use voronka_core::event::EventKind;
use voronka_core::field::FieldValue;
use voronka_core::filter::ContactFilter;
use voronka_core::subscription::{SubscriptionChange, SubscriptionState};
use voronka_core::*;

/// Page size bounds shared by contact and event lists.
pub(crate) fn clamp_limit(limit: u32) -> usize {
    limit.clamp(1, 1000) as usize
}

/// Inserts a contact row; returns its id.
pub(crate) fn insert_contact(
    c: &Connection,
    ws: WorkspaceId,
    p: &Profile,
    source: Option<&str>,
    at: Timestamp,
) -> Result<ContactId> {
    c.prepare_cached(&format!(
        "INSERT INTO contacts (workspace_id, {PROFILE_COLS}, source, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)"
    ))?
    .execute(params![
        ws.0,
        p.first_name,
        p.last_name,
        p.username,
        p.language,
        p.time_zone,
        p.phone,
        p.email,
        p.avatar_url,
        source,
        us(at)
    ])?;
    Ok(ContactId(c.last_insert_rowid()))
}

/// Records that a contact changed now.
pub(crate) fn touch_contact(c: &Connection, id: ContactId, at: Timestamp) -> Result<()> {
    c.prepare_cached("UPDATE contacts SET updated_at = ?1 WHERE id = ?2")?
        .execute([us(at), id.0])?;
    Ok(())
}

/// Records one change to a contact: its event, and its new `updated_at`.
fn record_change(
    c: &Connection,
    ws: WorkspaceId,
    id: ContactId,
    kind: EventKind,
    data: &Value,
) -> Result<()> {
    let at = now();
    insert_event(c, ws, id, kind.as_str(), data, at)?;
    touch_contact(c, id, at)
}

/// The id of tag `name` in `ws`, if it exists.
pub(crate) fn find_tag(c: &Connection, ws: WorkspaceId, name: &str) -> Result<Option<TagId>> {
    Ok(
        c.prepare_cached("SELECT id FROM tags WHERE workspace_id = ?1 AND name = ?2")?
            .query_row(params![ws.0, name], |r| r.get(0))
            .optional()?
            .map(TagId),
    )
}

/// The id of tag `name` in `ws`, creating the tag if it is missing.
pub(crate) fn ensure_tag(
    c: &Connection,
    ws: WorkspaceId,
    name: &str,
    at: Timestamp,
) -> Result<TagId> {
    if let Some(id) = find_tag(c, ws, name)? {
        return Ok(id);
    }
    c.prepare_cached("INSERT INTO tags (workspace_id, name, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![ws.0, name, us(at)])?;
    Ok(TagId(c.last_insert_rowid()))
}

/// Links a tag to a contact; true if it was not linked before.
pub(crate) fn link_tag(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    tag: TagId,
    at: Timestamp,
) -> Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO contact_tags (tag_id, contact_id, workspace_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute([tag.0, contact.0, ws.0, us(at)])?;
    Ok(n == 1)
}

/// Whether a contact carries a tag.
pub(crate) fn has_tag(c: &Connection, contact: ContactId, tag: TagId) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM contact_tags WHERE tag_id = ?1 AND contact_id = ?2")?
            .exists([tag.0, contact.0])?,
    )
}

/// Keys of the given field ids, all of which must belong to `ws`.
pub(crate) fn field_keys(
    c: &Connection,
    ws: WorkspaceId,
    values: &[FieldValue],
) -> Result<HashMap<FieldId, String>> {
    let mut keys = HashMap::with_capacity(values.len());
    let mut stmt =
        c.prepare_cached("SELECT key FROM field_definitions WHERE id = ?1 AND workspace_id = ?2")?;
    for v in values {
        let id = v.field_id();
        if keys.contains_key(&id) {
            continue;
        }
        let key: Option<String> = stmt.query_row([id.0, ws.0], |r| r.get(0)).optional()?;
        match key {
            Some(k) => {
                keys.insert(id, k);
            }
            None => return Err(ValidationError::new("fields", "unknown field").into()),
        }
    }
    Ok(keys)
}

/// The stored (text, num) of a contact's field, if set.
pub(crate) type StoredValue = (Option<String>, Option<f64>);

/// Reads a contact's value of one field.
pub(crate) fn current_field(
    c: &Connection,
    contact: ContactId,
    field: FieldId,
) -> Result<Option<StoredValue>> {
    Ok(c.prepare_cached(
        "SELECT value_text, value_num FROM contact_fields WHERE contact_id = ?1 AND field_id = ?2",
    )?
    .query_row([contact.0, field.0], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?)
}

/// True when a stored value equals `v` (as [`FieldValue::same_as`] would say).
pub(crate) fn same_value(stored: &Option<StoredValue>, v: &FieldValue) -> bool {
    matches!(stored, Some((t, n)) if t.as_deref() == v.text() && *n == v.num())
}

/// Inserts or replaces a contact's value of a field.
pub(crate) fn upsert_field(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    v: &FieldValue,
    at: Timestamp,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO contact_fields (contact_id, field_id, workspace_id, value_text, value_num, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (contact_id, field_id) DO UPDATE SET \
         value_text = excluded.value_text, value_num = excluded.value_num, updated_at = excluded.updated_at",
    )?
    .execute(params![contact.0, v.field_id().0, ws.0, v.text(), v.num(), us(at)])?;
    Ok(())
}

/// Whether channel `id` belongs to `ws`.
pub(crate) fn channel_in(c: &Connection, ws: WorkspaceId, id: ChannelId) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM channels WHERE id = ?1 AND workspace_id = ?2")?
            .exists([id.0, ws.0])?,
    )
}

/// Inserts an identity (no events): state from `change`, or `unsubscribed` without
/// proof when there is none. Appends a history row when there is a change. Conflict
/// `identity_taken` when the channel address belongs to someone already.
pub(crate) fn insert_identity(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    channel: ChannelId,
    external_id: &str,
    change: Option<&SubscriptionChange>,
    at: Timestamp,
) -> Result<Identity> {
    let (state, topics, proof) = match change {
        Some(ch) => (ch.state(), ch.topics().to_vec(), ch.proof().cloned()),
        None => (SubscriptionState::Unsubscribed, Vec::new(), None),
    };
    let p = proof.as_ref();
    let r = c
        .prepare_cached(
            "INSERT INTO identities (workspace_id, contact_id, channel_id, external_id, created_at, sub_state, \
             sub_topics, proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?5)",
        )?
        .execute(params![
            ws.0,
            contact.0,
            channel.0,
            external_id,
            us(at),
            state.as_str(),
            json_strings(&topics),
            p.map(|p| p.source.as_str()),
            p.map(|p| us(p.at)),
            p.and_then(|p| p.text_shown.as_deref()),
            p.and_then(|p| p.ip.as_deref()),
            p.and_then(|p| p.message_id.as_deref()),
        ]);
    match r {
        Ok(_) => {}
        Err(e) if is_unique(&e) => {
            return Err(StoreError::conflict(
                "identity_taken",
                format!("`{external_id}` on channel {channel} already belongs to a contact"),
                Some("external_id"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let id = IdentityId(c.last_insert_rowid());
    if let Some(ch) = change {
        insert_history(c, ws, contact, id, channel, ch, at)?;
    }
    Ok(Identity {
        id,
        contact_id: contact,
        channel_id: channel,
        external_id: external_id.to_string(),
        subscription: Subscription {
            state,
            topics,
            proof,
            updated_at: at,
        },
        created_at: at,
    })
}

/// Attaches an identity with its events (`identity_added`, then `subscription_changed`
/// when a change was given), as create_contact and add_identity do.
pub(crate) fn add_identity_with_events(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    new: &NewIdentity,
    at: Timestamp,
) -> Result<Identity> {
    if !channel_in(c, ws, new.channel_id)? {
        return Err(ValidationError::new(
            "channel_id",
            format!("unknown channel {}", new.channel_id),
        )
        .into());
    }
    let ident = insert_identity(
        c,
        ws,
        contact,
        new.channel_id,
        &new.external_id,
        new.subscription.as_ref(),
        at,
    )?;
    insert_event(
        c,
        ws,
        contact,
        EventKind::IdentityAdded.as_str(),
        &json!({"identity_id": ident.id.0, "channel_id": new.channel_id.0}),
        at,
    )?;
    if let Some(ch) = &new.subscription {
        insert_event(
            c,
            ws,
            contact,
            EventKind::SubscriptionChanged.as_str(),
            &subscription_event(ident.id, new.channel_id, ch),
            at,
        )?;
    }
    Ok(ident)
}

/// Adds tags by name with a `tag_added` event each; returns the newly added names.
pub(crate) fn add_tags_with_events(
    c: &Connection,
    ws: WorkspaceId,
    id: ContactId,
    names: &[String],
    at: Timestamp,
) -> Result<Vec<String>> {
    let mut added = Vec::new();
    for name in names {
        let tag = ensure_tag(c, ws, name, at)?;
        if link_tag(c, ws, id, tag, at)? {
            insert_event(
                c,
                ws,
                id,
                EventKind::TagAdded.as_str(),
                &json!({"tag": name}),
                at,
            )?;
            added.push(name.clone());
        }
    }
    Ok(added)
}

/// Sets field values with a `field_set` event for each value that changed; returns
/// whether anything changed.
pub(crate) fn set_fields_with_events(
    c: &Connection,
    ws: WorkspaceId,
    id: ContactId,
    values: &[FieldValue],
    at: Timestamp,
) -> Result<bool> {
    let keys = field_keys(c, ws, values)?;
    let mut changed = false;
    for v in values {
        if same_value(&current_field(c, id, v.field_id())?, v) {
            continue;
        }
        upsert_field(c, ws, id, v, at)?;
        let key = keys.get(&v.field_id()).cloned().unwrap_or_default();
        insert_event(
            c,
            ws,
            id,
            EventKind::FieldSet.as_str(),
            &json!({"key": key, "value": v.to_json()}),
            at,
        )?;
        changed = true;
    }
    Ok(changed)
}

/// Removes a tag by name with its `tag_removed` event; returns whether the contact had it.
pub(crate) fn remove_tag_with_event(
    c: &Connection,
    ws: WorkspaceId,
    id: ContactId,
    name: &str,
    at: Timestamp,
) -> Result<bool> {
    let Some(tag) = find_tag(c, ws, name)? else {
        return Ok(false);
    };
    let n = c
        .prepare_cached("DELETE FROM contact_tags WHERE tag_id = ?1 AND contact_id = ?2")?
        .execute([tag.0, id.0])?;
    if n == 0 {
        return Ok(false);
    }
    insert_event(
        c,
        ws,
        id,
        EventKind::TagRemoved.as_str(),
        &json!({"tag": name}),
        at,
    )?;
    Ok(true)
}

/// Replaces a contact's profile with `profile_updated` naming the changed attributes
/// (and a new `updated_at`); returns whether anything changed.
pub(crate) fn replace_profile(
    c: &Connection,
    ws: WorkspaceId,
    id: ContactId,
    profile: &Profile,
    at: Timestamp,
) -> Result<bool> {
    let old = profile_of(c, ws, id)?;
    let changed: Vec<&str> = Profile::ATTRIBUTES
        .iter()
        .zip(
            Profile::values(&old)
                .into_iter()
                .zip(Profile::values(profile)),
        )
        .filter(|(_, (a, b))| a != b)
        .map(|(name, _)| *name)
        .collect();
    if changed.is_empty() {
        return Ok(false);
    }
    c.prepare_cached(
        "UPDATE contacts SET first_name = ?1, last_name = ?2, username = ?3, language = ?4, \
         time_zone = ?5, phone = ?6, email = ?7, avatar_url = ?8, updated_at = ?9 WHERE id = ?10",
    )?
    .execute(params![
        profile.first_name,
        profile.last_name,
        profile.username,
        profile.language,
        profile.time_zone,
        profile.phone,
        profile.email,
        profile.avatar_url,
        us(at),
        id.0
    ])?;
    insert_event(
        c,
        ws,
        id,
        EventKind::ProfileUpdated.as_str(),
        &json!({"changed": changed}),
        at,
    )?;
    Ok(true)
}

fn profile_of(c: &Connection, ws: WorkspaceId, id: ContactId) -> Result<Profile> {
    c.prepare_cached(&format!(
        "SELECT {PROFILE_COLS} FROM contacts WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], |r| profile_at(r, 0))
    .optional()?
    .ok_or_else(|| StoreError::not_found("contact"))
}

fn erase(c: &Connection, ws: WorkspaceId, id: ContactId) -> Result<()> {
    let erased: Option<Option<i64>> = c
        .query_row(
            "SELECT erased_at FROM contacts WHERE id = ?1 AND workspace_id = ?2",
            [id.0, ws.0],
            |r| r.get(0),
        )
        .optional()?;
    match erased {
        None => return Err(StoreError::not_found("contact")),
        Some(Some(_)) => return Ok(()),
        Some(None) => {}
    }
    let now = now();
    let at = us(now);
    c.execute(
        "UPDATE contacts SET first_name = NULL, last_name = NULL, username = NULL, language = NULL, \
         time_zone = NULL, phone = NULL, email = NULL, avatar_url = NULL, source = NULL, \
         erased_at = ?1, updated_at = ?1 WHERE id = ?2",
        [at, id.0],
    )?;
    // Conversations are personal (message texts, the sender's names inside stored
    // events, the address). The rows stay, emptied, so counts and the duplicate check of
    // provider events still work; what was still waiting to be sent never will be.
    c.execute(
        "UPDATE outbox SET message = '{}', has_choices = 0, external_id = '', provider_message_ids = '[]', \
         error = CASE WHEN state IN ('queued', 'sending') THEN 'contact erased' END, \
         state = CASE WHEN state IN ('queued', 'sending') THEN 'failed' ELSE state END, \
         lease_until = NULL WHERE contact_id = ?1",
        [id.0],
    )?;
    c.execute(
        "UPDATE inbound_events SET payload = '{}', error = NULL WHERE contact_id = ?1",
        [id.0],
    )?;
    super::flows::erase_flow_data(c, id, now)?;
    super::broadcasts::erase_recipients(c, id)?;
    c.execute("DELETE FROM identities WHERE contact_id = ?1", [id.0])?;
    c.execute("DELETE FROM contact_fields WHERE contact_id = ?1", [id.0])?;
    c.execute("DELETE FROM contact_tags WHERE contact_id = ?1", [id.0])?;
    // States, channels and times stay so consent counts remain right; the proof is
    // personal (text shown, IP, message id) and goes.
    c.execute(
        "UPDATE subscription_history SET proof_source = NULL, proof_at = NULL, proof_text = NULL, \
         proof_ip = NULL, proof_message_id = NULL WHERE contact_id = ?1",
        [id.0],
    )?;
    c.execute(
        "UPDATE events SET data = '{}' WHERE contact_id = ?1",
        [id.0],
    )?;
    c.execute(
        "DELETE FROM idempotency WHERE contact_id = ?1 AND workspace_id = ?2",
        [id.0, ws.0],
    )?;
    insert_event(c, ws, id, EventKind::Erased.as_str(), &json!({}), now)?;
    Ok(())
}

fn history(c: &Connection, id: ContactId) -> Result<Vec<SubscriptionRecord>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {HISTORY_COLS} FROM subscription_history WHERE contact_id = ?1 ORDER BY id"
    ))?
    .query_map([id.0], history_row)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

#[async_trait]
impl ContactStore for SqliteStore {
    async fn create_contact(&self, ws: WorkspaceId, new: NewContact) -> Result<Contact> {
        self.write(move |c| {
            let at = now();
            let id = insert_contact(c, ws, &new.profile, new.source.as_deref(), at)?;
            insert_event(
                c,
                ws,
                id,
                EventKind::ContactCreated.as_str(),
                &json!({"source": new.source}),
                at,
            )?;
            add_tags_with_events(c, ws, id, &new.tags, at)?;
            set_fields_with_events(c, ws, id, &new.fields, at)?;
            for ident in &new.identities {
                add_identity_with_events(c, ws, id, ident, at)?;
            }
            load_contact(c, ws, id)
        })
        .await
    }

    async fn get_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<Contact> {
        self.read(move |c| load_contact(c, ws, id)).await
    }

    async fn update_profile(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        profile: Profile,
    ) -> Result<Contact> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            replace_profile(c, ws, id, &profile, now())?;
            load_contact(c, ws, id)
        })
        .await
    }

    async fn delete_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()> {
        self.write(move |c| {
            // Identities, history, tags, fields and events go by ON DELETE CASCADE.
            let n = c.execute(
                "DELETE FROM contacts WHERE id = ?1 AND workspace_id = ?2",
                [id.0, ws.0],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("contact"));
            }
            Ok(())
        })
        .await
    }

    async fn list_contacts(
        &self,
        ws: WorkspaceId,
        query: &ContactQuery,
    ) -> Result<Page<Contact, ContactId>> {
        let query = query.clone();
        self.read(move |c| {
            let limit = clamp_limit(query.limit);
            let mut ids = filter::matching_ids(c, ws, &query.filter, query.before, limit + 1)?;
            let next = if ids.len() > limit {
                ids.truncate(limit);
                ids.last().copied()
            } else {
                None
            };
            let items = ids
                .into_iter()
                .map(|id| load_contact(c, ws, id))
                .collect::<Result<Vec<_>>>()?;
            Ok(Page { items, next })
        })
        .await
    }

    async fn count_contacts(&self, ws: WorkspaceId, filter: &ContactFilter) -> Result<u64> {
        let filter = filter.clone();
        self.read(move |c| filter::count(c, ws, &filter)).await
    }

    async fn add_tags(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        names: &[String],
    ) -> Result<Vec<String>> {
        let names = names.to_vec();
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let at = now();
            let added = add_tags_with_events(c, ws, id, &names, at)?;
            if !added.is_empty() {
                touch_contact(c, id, at)?;
            }
            Ok(added)
        })
        .await
    }

    async fn remove_tag(&self, ws: WorkspaceId, id: ContactId, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let at = now();
            let removed = remove_tag_with_event(c, ws, id, &name, at)?;
            if removed {
                touch_contact(c, id, at)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn set_fields(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        values: Vec<FieldValue>,
    ) -> Result<()> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let at = now();
            if set_fields_with_events(c, ws, id, &values, at)? {
                touch_contact(c, id, at)?;
            }
            Ok(())
        })
        .await
    }

    async fn unset_field(&self, ws: WorkspaceId, id: ContactId, field: FieldId) -> Result<bool> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let key: String = c
                .query_row(
                    "SELECT key FROM field_definitions WHERE id = ?1 AND workspace_id = ?2",
                    [field.0, ws.0],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found("field"))?;
            let n = c.execute(
                "DELETE FROM contact_fields WHERE contact_id = ?1 AND field_id = ?2",
                [id.0, field.0],
            )?;
            if n == 0 {
                return Ok(false);
            }
            record_change(c, ws, id, EventKind::FieldUnset, &json!({"key": key}))?;
            Ok(true)
        })
        .await
    }

    async fn add_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        new: NewIdentity,
    ) -> Result<Identity> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let at = now();
            let ident = add_identity_with_events(c, ws, id, &new, at)?;
            touch_contact(c, id, at)?;
            Ok(ident)
        })
        .await
    }

    async fn remove_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
    ) -> Result<()> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let channel: i64 = c
                .query_row(
                    "SELECT channel_id FROM identities WHERE id = ?1 AND contact_id = ?2 AND workspace_id = ?3",
                    [identity.0, id.0, ws.0],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found("identity"))?;
            // History rows keep the identity id (no foreign key): consent records outlive it.
            c.execute("DELETE FROM identities WHERE id = ?1", [identity.0])?;
            record_change(c, ws, id, EventKind::IdentityRemoved, &json!({"identity_id": identity.0, "channel_id": channel}))?;
            Ok(())
        })
        .await
    }

    async fn set_subscription(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
        change: SubscriptionChange,
    ) -> Result<Identity> {
        self.write(move |c| {
            ensure_live_contact(c, ws, id)?;
            let channel: i64 = c
                .query_row(
                    "SELECT channel_id FROM identities WHERE id = ?1 AND contact_id = ?2 AND workspace_id = ?3",
                    [identity.0, id.0, ws.0],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found("identity"))?;
            let channel = ChannelId(channel);
            let at = now();
            apply_subscription(c, ws, id, identity, channel, &change, at)?;
            insert_event(
                c,
                ws,
                id,
                EventKind::SubscriptionChanged.as_str(),
                &subscription_event(identity, channel, &change),
                at,
            )?;
            touch_contact(c, id, at)?;
            c.prepare_cached(&format!("SELECT {IDENTITY_COLS} FROM identities WHERE id = ?1"))?
                .query_row([identity.0], identity_row)
                .map_err(Into::into)
        })
        .await
    }

    async fn subscription_history(
        &self,
        ws: WorkspaceId,
        id: ContactId,
    ) -> Result<Vec<SubscriptionRecord>> {
        self.read(move |c| {
            ensure_contact(c, ws, id)?;
            history(c, id)
        })
        .await
    }

    async fn append_event(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        kind: EventKind,
        data: Value,
    ) -> Result<Event> {
        self.write(move |c| {
            ensure_contact(c, ws, id)?;
            insert_event(c, ws, id, kind.as_str(), &data, now())
        })
        .await
    }

    async fn list_events(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        before: Option<EventId>,
        limit: u32,
    ) -> Result<Page<Event, EventId>> {
        self.read(move |c| {
            ensure_contact(c, ws, id)?;
            let limit = clamp_limit(limit);
            let mut items = c
                .prepare_cached(
                    "SELECT id, contact_id, kind, data, created_at FROM events \
                     WHERE contact_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )?
                .query_map(
                    params![
                        id.0,
                        before.map(|b| b.0).unwrap_or(i64::MAX),
                        (limit + 1) as i64
                    ],
                    event_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|e| e.id)
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn export_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<ContactExport> {
        self.read(move |c| {
            let contact = load_contact(c, ws, id)?;
            let events = c
                .prepare_cached(
                    "SELECT id, contact_id, kind, data, created_at FROM events WHERE contact_id = ?1 ORDER BY id",
                )?
                .query_map([id.0], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ContactExport {
                contact,
                subscription_history: history(c, id)?,
                events,
            })
        })
        .await
    }

    async fn erase_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()> {
        self.write(move |c| erase(c, ws, id)).await
    }

    async fn import_contacts(
        &self,
        ws: WorkspaceId,
        rows: Vec<ImportRow>,
    ) -> Result<Vec<ImportOutcome>> {
        let rows = std::sync::Arc::new(rows);
        let fast = rows.clone();
        // Event texts and the like are prepared on the blocking pool (the other core)
        // while the writer thread looks rows up and writes; see `import::prepare`.
        let (to, prepared) = std::sync::mpsc::channel();
        let ahead = rows.clone();
        drop(tokio::task::spawn_blocking(move || {
            super::import::prepare(&ahead, to)
        }));
        // The fast path resolves every reference itself, so it may skip the foreign key
        // checks; the row-by-row replay keeps them.
        match self
            .write_unchecked(move |c| super::import::import_fast(c, ws, &fast, prepared))
            .await
        {
            Ok(out) => Ok(out),
            Err(e @ StoreError::NotFound { .. }) => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "import batch replayed row by row");
                self.write(move |c| super::import::import_slow(c, ws, &rows))
                    .await
            }
        }
    }
}

/// Stores a new subscription on an identity and appends its history row.
pub(crate) fn apply_subscription(
    c: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    identity: IdentityId,
    channel: ChannelId,
    change: &SubscriptionChange,
    at: Timestamp,
) -> Result<()> {
    let p = change.proof();
    c.prepare_cached(
        "UPDATE identities SET sub_state = ?1, sub_topics = ?2, proof_source = ?3, proof_at = ?4, \
         proof_text = ?5, proof_ip = ?6, proof_message_id = ?7, sub_updated_at = ?8 WHERE id = ?9",
    )?
    .execute(params![
        change.state().as_str(),
        json_strings(change.topics()),
        p.map(|p| p.source.as_str()),
        p.map(|p| us(p.at)),
        p.and_then(|p| p.text_shown.as_deref()),
        p.and_then(|p| p.ip.as_deref()),
        p.and_then(|p| p.message_id.as_deref()),
        us(at),
        identity.0
    ])?;
    insert_history(c, ws, contact, identity, channel, change, at)
}
