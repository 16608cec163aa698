//! Row → record decoding, kept in one place so every query that reads a table selects
//! the same columns (the `*_COLS` constants) and decodes them the same way.

use super::{parse_stored, ts, ts_opt};
use crate::model::*;
use crate::Result;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::Row;
use voronka_core::contact::Profile;
use voronka_core::subscription::ConsentProof;
use voronka_core::*;

/// Columns of `identities` read by [`identity`].
pub(crate) const IDENTITY_COLS: &str =
    "id, contact_id, channel_id, external_id, created_at, sub_state, sub_topics, \
     proof_source, proof_at, proof_text, proof_ip, proof_message_id, sub_updated_at";

/// Columns of `contacts` read by [`contact_base`].
pub(crate) const CONTACT_COLS: &str =
    "id, first_name, last_name, username, language, time_zone, phone, email, \
     avatar_url, source, created_at, updated_at, last_activity_at, erased_at";

/// Columns of `subscription_history` read by [`history`].
pub(crate) const HISTORY_COLS: &str =
    "id, identity_id, channel_id, state, topics, proof_source, proof_at, proof_text, proof_ip, proof_message_id, created_at";

/// Columns of `events` read by [`event`].
pub(crate) const EVENT_COLS: &str = "id, contact_id, kind, data, created_at";

/// Columns of `api_keys` read by [`api_key`].
pub(crate) const API_KEY_COLS: &str =
    "id, workspace_id, name, prefix, scopes, created_at, last_used_at, revoked_at";

/// Columns of `channels` read by [`channel`].
pub(crate) const CHANNEL_COLS: &str = "id, workspace_id, kind, name, status, credentials, \
     credentials_key_id, settings, runtime, created_at, updated_at";

fn proof(r: &PgRow) -> Result<Option<ConsentProof>> {
    let source: Option<String> = r.try_get("proof_source")?;
    Ok(match source {
        None => None,
        Some(source) => Some(ConsentProof {
            source,
            at: ts(r.try_get::<Option<i64>, _>("proof_at")?.unwrap_or(0)),
            text_shown: r.try_get("proof_text")?,
            ip: r.try_get("proof_ip")?,
            message_id: r.try_get("proof_message_id")?,
        }),
    })
}

/// An identity row.
pub(crate) fn identity(r: &PgRow) -> Result<Identity> {
    let state: String = r.try_get("sub_state")?;
    let Json(topics): Json<Vec<String>> = r.try_get("sub_topics")?;
    Ok(Identity {
        id: IdentityId(r.try_get("id")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        channel_id: ChannelId(r.try_get("channel_id")?),
        external_id: r.try_get("external_id")?,
        subscription: Subscription {
            state: parse_stored("subscription state", &state)?,
            topics,
            proof: proof(r)?,
            updated_at: ts(r.try_get("sub_updated_at")?),
        },
        created_at: ts(r.try_get("created_at")?),
    })
}

/// A contact row without tags, fields and identities (the caller fills those in).
pub(crate) fn contact_base(r: &PgRow) -> Result<Contact> {
    Ok(Contact {
        id: ContactId(r.try_get("id")?),
        profile: profile(r)?,
        source: r.try_get("source")?,
        tags: Vec::new(),
        fields: Default::default(),
        identities: Vec::new(),
        created_at: ts(r.try_get("created_at")?),
        updated_at: ts(r.try_get("updated_at")?),
        last_activity_at: ts_opt(r.try_get("last_activity_at")?),
        erased_at: ts_opt(r.try_get("erased_at")?),
    })
}

/// The profile columns of a contact row.
pub(crate) fn profile(r: &PgRow) -> Result<Profile> {
    Ok(Profile {
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        username: r.try_get("username")?,
        language: r.try_get("language")?,
        time_zone: r.try_get("time_zone")?,
        phone: r.try_get("phone")?,
        email: r.try_get("email")?,
        avatar_url: r.try_get("avatar_url")?,
    })
}

/// A subscription history row.
pub(crate) fn history(r: &PgRow) -> Result<SubscriptionRecord> {
    let state: String = r.try_get("state")?;
    let Json(topics): Json<Vec<String>> = r.try_get("topics")?;
    Ok(SubscriptionRecord {
        id: r.try_get("id")?,
        identity_id: r.try_get::<Option<i64>, _>("identity_id")?.map(IdentityId),
        channel_id: ChannelId(r.try_get("channel_id")?),
        state: parse_stored("subscription state", &state)?,
        topics,
        proof: proof(r)?,
        created_at: ts(r.try_get("created_at")?),
    })
}

/// An event row.
pub(crate) fn event(r: &PgRow) -> Result<Event> {
    let Json(data): Json<serde_json::Value> = r.try_get("data")?;
    Ok(Event {
        id: EventId(r.try_get("id")?),
        contact_id: ContactId(r.try_get("contact_id")?),
        kind: r.try_get("kind")?,
        data,
        created_at: ts(r.try_get("created_at")?),
    })
}

/// An API key row.
pub(crate) fn api_key(r: &PgRow) -> Result<ApiKey> {
    let scopes: String = r.try_get("scopes")?;
    let scopes = scopes
        .split_whitespace()
        .map(|s| parse_stored("scope", s))
        .collect::<Result<Vec<_>>>()?;
    Ok(ApiKey {
        id: ApiKeyId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        scopes,
        created_at: ts(r.try_get("created_at")?),
        last_used_at: ts_opt(r.try_get("last_used_at")?),
        revoked_at: ts_opt(r.try_get("revoked_at")?),
    })
}

/// A channel row.
pub(crate) fn channel(r: &PgRow) -> Result<Channel> {
    let kind: String = r.try_get("kind")?;
    let status: String = r.try_get("status")?;
    let Json(settings) = r.try_get("settings")?;
    let Json(runtime) = r.try_get("runtime")?;
    Ok(Channel {
        id: ChannelId(r.try_get("id")?),
        workspace_id: WorkspaceId(r.try_get("workspace_id")?),
        kind: parse_stored("channel kind", &kind)?,
        name: r.try_get("name")?,
        status: parse_stored("channel status", &status)?,
        credentials: voronka_core::crypto::Sealed {
            key_id: r.try_get("credentials_key_id")?,
            data: r.try_get("credentials")?,
        },
        settings,
        runtime,
        created_at: ts(r.try_get("created_at")?),
        updated_at: ts(r.try_get("updated_at")?),
    })
}
