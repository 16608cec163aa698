//! Saved segments: a named filter over contacts, and what the segment SQL shares
//! between the two backends.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use voronka_core::SegmentId;

/// Most contacts a sample returns, whatever the caller asks: a sample is a preview.
pub const MAX_SAMPLE: u32 = 100;

/// How many index entries the driver choice reads per candidate at most: enough to tell a
/// small tag from a big one, cheap enough to run before every count.
pub(crate) const PROBE_CAP: i64 = 20_000;

/// A saved segment.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Segment {
    /// Id.
    pub id: SegmentId,
    /// Name, unique in the workspace.
    pub name: String,
    /// The filter as saved (see `voronka_core::segment`), resolved afresh on every use.
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Bumped by every change.
    pub revision: i64,
    /// Created at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A checked segment name (1–100 characters, trimmed).
pub(crate) fn segment_name(name: &str) -> crate::Result<String> {
    Ok(voronka_core::channel::display_name("name", name)?)
}

/// A filter as stored: any JSON object (its meaning is checked against the workspace by
/// the caller, which knows the catalog and the time).
pub(crate) fn segment_filter(filter: &Value) -> crate::Result<String> {
    if !filter.is_object() {
        return Err(voronka_core::ValidationError::new(
            "filter",
            "must be a JSON object such as {\"tag\": \"vip\"}",
        )
        .into());
    }
    serde_json::to_string(filter)
        .map_err(|e| crate::StoreError::Database(format!("cannot encode a JSON column: {e}")))
}

/// The conflict when a segment name is used.
pub(crate) fn segment_name_taken(name: &str) -> crate::StoreError {
    crate::StoreError::conflict(
        "segment_name_taken",
        format!("a segment named `{name}` already exists"),
        Some("name"),
    )
}

/// The conflict when a live broadcast still targets the segment.
pub(crate) fn segment_in_use() -> crate::StoreError {
    crate::StoreError::conflict(
        "segment_in_use",
        "a broadcast that has not finished targets this segment; cancel it or wait until it finishes",
        None,
    )
}

/// The broadcast statuses after which a broadcast no longer needs its segment.
pub(crate) const OVER: &str = "('finished', 'cancelled')";
