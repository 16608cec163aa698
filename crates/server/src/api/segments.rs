//! Segments: saved contact filters, their counts and samples, and previews of unsaved
//! filters (broadcasts:read to look, broadcasts:write to change).
//!
//! A filter is checked against the workspace (names, operand types) whenever it is saved,
//! previewed or used; one that does not hold is refused with `422 invalid_segment` and
//! every problem in `details.problems`, each with a JSON pointer to the node at fault.
//! A saved segment whose names went away since (a deleted tag) answers its count and
//! sample the same way.

use crate::api::query::{bad_param, QueryPairs};
use crate::api::ApiPath;
use crate::auth::{Need, RequiredScope};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::role::Scope;
use voronka_core::segment::{self, Problem, Resolved};
use voronka_core::{SegmentId, WorkspaceId};
use voronka_store::{Contact, Segment, MAX_SAMPLE};

/// `broadcasts:read`, for [`Need`]: segments are the audiences of broadcasts.
#[derive(Debug, Clone, Copy)]
pub struct BroadcastsRead;

impl RequiredScope for BroadcastsRead {
    const SCOPE: Scope = Scope::BroadcastsRead;
}

/// `broadcasts:write`, for [`Need`].
#[derive(Debug, Clone, Copy)]
pub struct BroadcastsWrite;

impl RequiredScope for BroadcastsWrite {
    const SCOPE: Scope = Scope::BroadcastsWrite;
}

/// Contacts a sample returns when no `limit` is given.
pub const DEFAULT_SAMPLE: u32 = 20;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_segments, create_segment))
        .routes(routes!(preview_segment))
        .routes(routes!(validate_segment))
        .routes(routes!(get_segment, update_segment, delete_segment))
        .routes(routes!(count_segment))
        .routes(routes!(sample_segment))
}

/// A segment to save.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSegment {
    /// Name, 1 to 100 characters, unique in the workspace.
    pub name: String,
    /// The filter (see docs/segments.md), e.g. `{"and": [{"tag": "vip"}, {"language": "ru"}]}`.
    #[schema(value_type = Object)]
    pub filter: Value,
}

/// Changes to a segment; absent attributes stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSegment {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New filter.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
}

/// An unsaved filter to check or preview.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    /// The filter.
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Preview only: contacts in the sample, 1 to 100 (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// How many contacts a segment holds right now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentCount {
    /// Contacts (erased ones never count).
    pub count: u64,
}

/// The newest contacts of a segment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentSample {
    /// Newest first.
    pub sample: Vec<Contact>,
}

/// The count and sample of an unsaved filter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentPreview {
    /// Contacts matching now.
    pub count: u64,
    /// The newest of them.
    pub sample: Vec<Contact>,
}

/// The verdict on a filter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentValidation {
    /// True when there are no problems.
    pub valid: bool,
    /// Every problem, each with a JSON pointer (`path`) to the node at fault.
    pub problems: Vec<Problem>,
}

/// 422 `invalid_segment` carrying the problems in `details.problems`.
pub fn invalid_segment(problems: &[Problem]) -> ApiError {
    let message = match problems {
        [one] => format!("the segment filter is invalid: {one}"),
        many => format!(
            "the segment filter has {} problems (see details.problems)",
            many.len()
        ),
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_segment", message).with_detail(
        "problems",
        serde_json::to_value(problems).unwrap_or_default(),
    )
}

/// Parses and resolves `filter` against the workspace as it is now.
async fn check(
    state: &AppState,
    ws: WorkspaceId,
    filter: &Value,
) -> ApiResult<Result<Resolved, Vec<Problem>>> {
    // The shape is checked first: a malformed filter needs no database round trip.
    let node = match segment::parse(filter) {
        Ok(n) => n,
        Err(p) => return Ok(Err(p)),
    };
    let catalog = state.store().segment_catalog(ws).await?;
    Ok(segment::resolve(&node, &catalog, Timestamp::now()))
}

/// Like [`check`], refusing a filter with problems.
async fn resolved(state: &AppState, ws: WorkspaceId, filter: &Value) -> ApiResult<Resolved> {
    check(state, ws, filter)
        .await?
        .map_err(|p| invalid_segment(&p))
}

fn sample_limit(n: Option<u32>, field: &str) -> ApiResult<u32> {
    match n {
        None => Ok(DEFAULT_SAMPLE),
        Some(n) if (1..=MAX_SAMPLE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(
            field,
            format!("must be 1 to {MAX_SAMPLE}"),
        )),
    }
}

/// Lists saved segments by name.
#[utoipa::path(get, path = "/segments", tag = "segments", operation_id = "listSegments",
    responses((status = 200, description = "Segments", body = Vec<Segment>)))]
pub async fn list_segments(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
) -> ApiResult<axum::Json<Vec<Segment>>> {
    Ok(axum::Json(
        state.store().list_segments(auth.workspace).await?,
    ))
}

/// Saves a segment. Its filter must hold in the workspace (422 `invalid_segment` lists
/// every problem otherwise).
#[utoipa::path(post, path = "/segments", tag = "segments", operation_id = "createSegment",
    request_body = CreateSegment,
    responses(
        (status = 201, description = "Created", body = Segment),
        (status = 409, description = "`segment_name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_segment` (`details.problems`) or `validation_failed`", body = crate::error::ErrorBody)))]
pub async fn create_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    Json(body): Json<CreateSegment>,
) -> ApiResult<(StatusCode, axum::Json<Segment>)> {
    resolved(&state, auth.workspace, &body.filter).await?;
    let seg = state
        .store()
        .create_segment(auth.workspace, &body.name, body.filter)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(seg)))
}

/// Reads a segment.
#[utoipa::path(get, path = "/segments/{id}", tag = "segments", operation_id = "getSegment",
    params(("id" = i64, Path, description = "Segment id")),
    responses((status = 200, description = "The segment", body = Segment)))]
pub async fn get_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Segment>> {
    Ok(axum::Json(
        state
            .store()
            .get_segment(auth.workspace, SegmentId(id))
            .await?,
    ))
}

/// Renames a segment and/or replaces its filter (checked like on creation).
#[utoipa::path(patch, path = "/segments/{id}", tag = "segments", operation_id = "updateSegment",
    params(("id" = i64, Path, description = "Segment id")),
    request_body = UpdateSegment,
    responses(
        (status = 200, description = "The changed segment", body = Segment),
        (status = 409, description = "`segment_name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_segment` (`details.problems`) or `validation_failed`", body = crate::error::ErrorBody)))]
pub async fn update_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<UpdateSegment>,
) -> ApiResult<axum::Json<Segment>> {
    let store = state.store();
    // Checked first so another workspace's segment is 404 whatever the body says.
    store.get_segment(auth.workspace, SegmentId(id)).await?;
    if let Some(f) = &body.filter {
        resolved(&state, auth.workspace, f).await?;
    }
    Ok(axum::Json(
        store
            .update_segment(auth.workspace, SegmentId(id), body.name, body.filter)
            .await?,
    ))
}

/// Deletes a segment; 409 `segment_in_use` while a broadcast that has not finished
/// targets it.
#[utoipa::path(delete, path = "/segments/{id}", tag = "segments", operation_id = "deleteSegment",
    params(("id" = i64, Path, description = "Segment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`segment_in_use`", body = crate::error::ErrorBody)))]
pub async fn delete_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state
        .store()
        .delete_segment(auth.workspace, SegmentId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Counts a saved segment's contacts now.
#[utoipa::path(get, path = "/segments/{id}/count", tag = "segments", operation_id = "countSegment",
    params(("id" = i64, Path, description = "Segment id")),
    responses(
        (status = 200, description = "The count", body = SegmentCount),
        (status = 422, description = "`invalid_segment`: the filter no longer holds (e.g. a tag was deleted)", body = crate::error::ErrorBody)))]
pub async fn count_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<SegmentCount>> {
    let store = state.store();
    let seg = store.get_segment(auth.workspace, SegmentId(id)).await?;
    let r = resolved(&state, auth.workspace, &seg.filter).await?;
    let count = store.count_segment(auth.workspace, &r).await?;
    Ok(axum::Json(SegmentCount { count }))
}

/// The newest contacts of a saved segment (`limit` 1 to 100, default 20).
#[utoipa::path(get, path = "/segments/{id}/sample", tag = "segments", operation_id = "sampleSegment",
    params(("id" = i64, Path, description = "Segment id"),
        ("limit" = Option<u32>, Query, description = "Contacts, 1 to 100 (default 20)")),
    responses(
        (status = 200, description = "The sample", body = SegmentSample),
        (status = 422, description = "`invalid_segment`: the filter no longer holds", body = crate::error::ErrorBody)))]
pub async fn sample_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<SegmentSample>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["limit"])?;
    let limit = match q.parsed::<u32>("limit")? {
        None => DEFAULT_SAMPLE,
        Some(n) if (1..=MAX_SAMPLE).contains(&n) => n,
        Some(_) => return Err(bad_param("limit", &format!("must be 1 to {MAX_SAMPLE}"))),
    };
    let store = state.store();
    let seg = store.get_segment(auth.workspace, SegmentId(id)).await?;
    let r = resolved(&state, auth.workspace, &seg.filter).await?;
    let sample = store.sample_segment(auth.workspace, &r, limit).await?;
    Ok(axum::Json(SegmentSample { sample }))
}

/// Counts and samples an unsaved filter (what the segment editor shows while typing).
#[utoipa::path(post, path = "/segments/preview", tag = "segments", operation_id = "previewSegment",
    request_body = FilterBody,
    responses(
        (status = 200, description = "Count and newest contacts", body = SegmentPreview),
        (status = 422, description = "`invalid_segment` (`details.problems`)", body = crate::error::ErrorBody)))]
pub async fn preview_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    Json(body): Json<FilterBody>,
) -> ApiResult<axum::Json<SegmentPreview>> {
    let limit = sample_limit(body.limit, "limit")?;
    let r = resolved(&state, auth.workspace, &body.filter).await?;
    let store = state.store();
    let count = store.count_segment(auth.workspace, &r).await?;
    let sample = store.sample_segment(auth.workspace, &r, limit).await?;
    Ok(axum::Json(SegmentPreview { count, sample }))
}

/// Checks a filter without running it: always 200, with every problem listed.
#[utoipa::path(post, path = "/segments/validate", tag = "segments", operation_id = "validateSegment",
    request_body = FilterBody,
    responses((status = 200, description = "Whether the filter holds, and its problems", body = SegmentValidation)))]
pub async fn validate_segment(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    Json(body): Json<FilterBody>,
) -> ApiResult<axum::Json<SegmentValidation>> {
    let problems = check(&state, auth.workspace, &body.filter)
        .await?
        .err()
        .unwrap_or_default();
    Ok(axum::Json(SegmentValidation {
        valid: problems.is_empty(),
        problems,
    }))
}
