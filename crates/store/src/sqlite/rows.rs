//! Conversions between SQLite rows and store records, shared by every module.
//!
//! Times are INTEGER Unix microseconds; enums are their stable `as_str` names; JSON
//! arrays are TEXT. A value that does not parse back is a database error (the schema or
//! a manual edit broke an invariant), reported with the column it came from.

use crate::model::*;
use crate::{Result, StoreError};
use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row};
use std::str::FromStr;
use voronka_core::contact::Profile;
use voronka_core::subscription::{ConsentProof, SubscriptionChange};
use voronka_core::*;

/// The current time, truncated to what the database keeps, so a record returned by a
/// write equals the same record read back.
pub(crate) fn now() -> Timestamp {
    let us = Timestamp::now().as_microsecond();
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A time as stored.
pub(crate) fn us(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn bad(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, msg.into())
}

/// Reads a time column.
pub(crate) fn ts(row: &Row<'_>, idx: usize) -> rusqlite::Result<Timestamp> {
    let v: i64 = row.get(idx)?;
    Timestamp::from_microsecond(v).map_err(|e| bad(idx, e.to_string()))
}

/// Reads a nullable time column.
pub(crate) fn ts_opt(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(v) => Timestamp::from_microsecond(v)
            .map(Some)
            .map_err(|e| bad(idx, e.to_string())),
    }
}

/// Reads a column holding a stable enum name.
pub(crate) fn parsed<T: FromStr<Err = String>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|e: String| bad(idx, e))
}

/// Reads a JSON array of strings.
pub(crate) fn strings(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| bad(idx, e.to_string()))
}

/// Reads a JSON column into `T`, reporting a value that does not parse as a conversion
/// error of that column.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| bad(idx, e.to_string()))
}

/// A value as JSON text for a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Database(format!("cannot encode a JSON column: {e}")))
}

/// A JSON array of strings as stored.
pub(crate) fn json_strings(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// True when `e` is a UNIQUE or PRIMARY KEY violation: callers turn it into a Conflict.
pub(crate) fn is_unique(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// The profile columns, in the order [`profile_at`] and [`Profile::ATTRIBUTES`] use.
pub(crate) const PROFILE_COLS: &str =
    "first_name, last_name, username, language, time_zone, phone, email, avatar_url";

/// Reads the eight profile columns starting at `start`.
pub(crate) fn profile_at(row: &Row<'_>, start: usize) -> rusqlite::Result<Profile> {
    Ok(Profile {
        first_name: row.get(start)?,
        last_name: row.get(start + 1)?,
        username: row.get(start + 2)?,
        language: row.get(start + 3)?,
        time_zone: row.get(start + 4)?,
        phone: row.get(start + 5)?,
        email: row.get(start + 6)?,
        avatar_url: row.get(start + 7)?,
    })
}

/// Columns read by [`identity_row`].
pub(crate) const IDENTITY_COLS: &str =
    "id, contact_id, channel_id, external_id, created_at, sub_state, sub_topics, \
     proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at";

/// Reads a proof stored in five columns starting at `start` (source, at, text, ip,
/// message id); absent when the source is NULL.
fn proof_at(row: &Row<'_>, start: usize) -> rusqlite::Result<Option<ConsentProof>> {
    let source: Option<String> = row.get(start)?;
    let Some(source) = source else {
        return Ok(None);
    };
    Ok(Some(ConsentProof {
        source,
        at: ts_opt(row, start + 1)?.unwrap_or(Timestamp::UNIX_EPOCH),
        text_shown: row.get(start + 2)?,
        ip: row.get(start + 3)?,
        message_id: row.get(start + 4)?,
    }))
}

/// An identity row (columns [`IDENTITY_COLS`]).
pub(crate) fn identity_row(row: &Row<'_>) -> rusqlite::Result<Identity> {
    Ok(Identity {
        id: IdentityId(row.get(0)?),
        contact_id: ContactId(row.get(1)?),
        channel_id: ChannelId(row.get(2)?),
        external_id: row.get(3)?,
        created_at: ts(row, 4)?,
        subscription: Subscription {
            state: parsed(row, 5)?,
            topics: strings(row, 6)?,
            proof: proof_at(row, 7)?,
            updated_at: ts(row, 12)?,
        },
    })
}

/// Columns read by [`history_row`].
pub(crate) const HISTORY_COLS: &str =
    "id, identity_id, channel_id, state, topics, proof_source, proof_at, proof_text, \
     proof_ip, proof_message_id, created_at";

/// A subscription_history row (columns [`HISTORY_COLS`]).
pub(crate) fn history_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        id: row.get(0)?,
        identity_id: row.get::<_, Option<i64>>(1)?.map(IdentityId),
        channel_id: ChannelId(row.get(2)?),
        state: parsed(row, 3)?,
        topics: strings(row, 4)?,
        proof: proof_at(row, 5)?,
        created_at: ts(row, 10)?,
    })
}

/// An event row (`id, contact_id, kind, data, created_at`).
pub(crate) fn event_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let data: String = row.get(3)?;
    Ok(Event {
        id: EventId(row.get(0)?),
        contact_id: ContactId(row.get(1)?),
        kind: row.get(2)?,
        data: serde_json::from_str(&data).map_err(|e| bad(3, e.to_string()))?,
        created_at: ts(row, 4)?,
    })
}

/// Appends an event to a contact's log.
pub(crate) fn insert_event(
    conn: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    kind: &str,
    data: &serde_json::Value,
    at: Timestamp,
) -> Result<Event> {
    let text = data.to_string();
    conn.prepare_cached(
        "INSERT INTO events (workspace_id, contact_id, kind, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![ws.0, contact.0, kind, text, us(at)])?;
    Ok(Event {
        id: EventId(conn.last_insert_rowid()),
        contact_id: contact,
        kind: kind.to_string(),
        data: data.clone(),
        created_at: at,
    })
}

/// Appends a subscription_history row for `change` on an identity.
pub(crate) fn insert_history(
    conn: &Connection,
    ws: WorkspaceId,
    contact: ContactId,
    identity: IdentityId,
    channel: ChannelId,
    change: &SubscriptionChange,
    at: Timestamp,
) -> Result<()> {
    let p = change.proof();
    conn.prepare_cached(
        "INSERT INTO subscription_history (workspace_id, contact_id, identity_id, channel_id, state, topics, \
         proof_source, proof_at, proof_text, proof_ip, proof_message_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(rusqlite::params![
        ws.0,
        contact.0,
        identity.0,
        channel.0,
        change.state().as_str(),
        json_strings(change.topics()),
        p.map(|p| p.source.as_str()),
        p.map(|p| us(p.at)),
        p.and_then(|p| p.text_shown.as_deref()),
        p.and_then(|p| p.ip.as_deref()),
        p.and_then(|p| p.message_id.as_deref()),
        us(at),
    ])?;
    Ok(())
}

/// The `subscription_changed` event data.
pub(crate) fn subscription_event(
    identity: IdentityId,
    channel: ChannelId,
    change: &SubscriptionChange,
) -> serde_json::Value {
    serde_json::json!({
        "identity_id": identity.0,
        "channel_id": channel.0,
        "state": change.state().as_str(),
        "topics": change.topics(),
        "source": change.proof().map(|p| p.source.as_str()),
    })
}

/// Fails with NotFound unless contact `id` is in workspace `ws`.
pub(crate) fn ensure_contact(conn: &Connection, ws: WorkspaceId, id: ContactId) -> Result<()> {
    conn.prepare_cached("SELECT 1 FROM contacts WHERE id = ?1 AND workspace_id = ?2")?
        .query_row([id.0, ws.0], |_| Ok(()))
        .optional()?
        .ok_or_else(|| StoreError::not_found("contact"))
}

/// Like [`ensure_contact`], and refuses an erased contact: giving an anonymous record data
/// again would undo its erasure.
pub(crate) fn ensure_live_contact(conn: &Connection, ws: WorkspaceId, id: ContactId) -> Result<()> {
    let erased: Option<i64> = conn
        .prepare_cached("SELECT erased_at FROM contacts WHERE id = ?1 AND workspace_id = ?2")?
        .query_row([id.0, ws.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("contact"))?;
    match erased {
        None => Ok(()),
        Some(_) => Err(StoreError::conflict(
            "contact_erased",
            "the contact's personal data was erased; it cannot be changed",
            None,
        )),
    }
}

/// Reads a contact with its tags, fields and identities, or NotFound.
pub(crate) fn load_contact(conn: &Connection, ws: WorkspaceId, id: ContactId) -> Result<Contact> {
    let sql = format!(
        "SELECT {PROFILE_COLS}, source, created_at, updated_at, last_activity_at, erased_at \
         FROM contacts WHERE id = ?1 AND workspace_id = ?2"
    );
    let head = conn
        .prepare_cached(&sql)?
        .query_row([id.0, ws.0], |r| {
            Ok((
                profile_at(r, 0)?,
                r.get::<_, Option<String>>(8)?,
                ts(r, 9)?,
                ts(r, 10)?,
                ts_opt(r, 11)?,
                ts_opt(r, 12)?,
            ))
        })
        .optional()?
        .ok_or_else(|| StoreError::not_found("contact"))?;
    let (profile, source, created_at, updated_at, last_activity_at, erased_at) = head;
    let tags = conn
        .prepare_cached(
            "SELECT t.name FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id \
             WHERE ct.contact_id = ?1 ORDER BY t.name",
        )?
        .query_map([id.0], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut fields = std::collections::BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.key, d.field_type, cf.value_text, cf.value_num FROM contact_fields cf \
         JOIN field_definitions d ON d.id = cf.field_id WHERE cf.contact_id = ?1",
    )?;
    let rows = stmt.query_map([id.0], |r| {
        let t: voronka_core::field::FieldType = parsed(r, 2)?;
        let v = voronka_core::field::FieldValue::from_storage(
            FieldId(r.get(0)?),
            t,
            r.get(3)?,
            r.get(4)?,
        );
        Ok((r.get::<_, String>(1)?, v.to_json()))
    })?;
    for row in rows {
        let (k, v) = row?;
        fields.insert(k, v);
    }
    let identities = conn
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLS} FROM identities WHERE contact_id = ?1 ORDER BY id"
        ))?
        .query_map([id.0], identity_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Contact {
        id,
        profile,
        source,
        tags,
        fields,
        identities,
        created_at,
        updated_at,
        last_activity_at,
        erased_at,
    })
}
