//! Query strings: repeated parameters, contact filters, page sizes and cursors.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use base64::Engine;
use serde::Deserialize;
use voronka_core::filter::{ContactFilter, FieldConditionText};
use voronka_core::subscription::SubscriptionState;
use voronka_core::{ChannelId, WorkspaceId};

/// Default page size of lists.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of lists.
pub const MAX_LIMIT: u32 = 500;

/// The decoded pairs of a query string, in order (keys may repeat).
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// Decodes a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Refuses parameters not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}` (expected one of: {})",
                allowed.join(", ")
            ))
            .with_detail("parameter", k.as_str())),
            None => Ok(()),
        }
    }

    /// All values of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The single value of `key`; repeating it is an error.
    pub fn one<'a>(&'a self, key: &'a str) -> ApiResult<Option<&'a str>> {
        let mut it = self.all(key);
        let first = it.next();
        if it.next().is_some() {
            return Err(bad_param(key, "must be given at most once"));
        }
        Ok(first)
    }

    /// The single value of `key` parsed with `FromStr`.
    pub fn parsed<T: std::str::FromStr>(&self, key: &str) -> ApiResult<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.one(key)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| bad_param(key, &format!("`{v}` is not valid: {e}"))),
        }
    }

    /// `limit`: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub fn limit(&self) -> ApiResult<u32> {
        match self.parsed::<u32>("limit")? {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(bad_param("limit", &format!("must be 1 to {MAX_LIMIT}"))),
        }
    }
}

/// A 400 naming a query parameter.
pub fn bad_param(key: &str, message: &str) -> ApiError {
    ApiError::bad_request(format!("query parameter `{key}` {message}"))
        .with_detail("parameter", key)
}

/// Encodes a list position as an opaque cursor.
pub fn encode_cursor(id: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("before:{id}"))
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> ApiResult<i64> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("before:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| bad_param("cursor", "is not a cursor returned by this API"))
}

/// The filter parameters shared by list, count and export.
pub const FILTER_PARAMS: &[&str] = &["tag", "field", "channel", "subscription", "q"];

/// Builds a contact filter from `tag`, `field`, `channel`, `subscription` and `q`,
/// resolving field conditions against the workspace's definitions.
pub async fn contact_filter(
    state: &AppState,
    ws: WorkspaceId,
    q: &QueryPairs,
) -> ApiResult<ContactFilter> {
    let mut filter = ContactFilter::default();
    for t in q.all("tag") {
        filter.tags.push(voronka_core::tag::tag_name(t)?);
    }
    let conditions: Vec<FieldConditionText> = q
        .all("field")
        .map(|c| c.parse::<FieldConditionText>())
        .collect::<Result<_, _>>()?;
    if !conditions.is_empty() {
        let defs = state.store().list_fields(ws).await?;
        for c in conditions {
            let def = defs.iter().find(|d| d.spec.key == c.key).ok_or_else(|| {
                ApiError::validation("field", format!("unknown field `{}`", c.key))
            })?;
            filter.fields.push(c.resolve(def)?);
        }
    }
    filter.channel_id = q.parsed::<i64>("channel")?.map(ChannelId);
    filter.subscription = q.parsed::<SubscriptionState>("subscription")?;
    filter.q = q
        .one("q")?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(filter)
}

/// Documentation of the filter parameters (parsing is done by [`contact_filter`], which
/// accepts repeated parameters).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FilterParams {
    /// Contacts carrying this tag; repeat for several (all must match).
    tag: Option<Vec<String>>,
    /// Field condition `key:op:value` (op: eq, ne, lt, lte, gt, gte, contains, exists);
    /// repeat for several.
    field: Option<Vec<String>>,
    /// Contacts with an identity on this channel id.
    channel: Option<i64>,
    /// Contacts with an identity in this subscription state.
    subscription: Option<SubscriptionState>,
    /// Case-insensitive text in names, username, phone or e-mail.
    q: Option<String>,
}

/// Documentation of the paging parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert!(decode_cursor("nope").is_err());
        let q = QueryPairs::parse(Some("tag=a&tag=b%20c&limit=5"));
        assert_eq!(q.all("tag").collect::<Vec<_>>(), vec!["a", "b c"]);
        assert_eq!(q.limit().ok(), Some(5));
        assert!(QueryPairs::parse(Some("limit=0")).limit().is_err());
        assert!(QueryPairs::parse(Some("limit=501")).limit().is_err());
        assert!(q.only(&["tag"]).is_err());
    }
}
