//! Broadcasts: list, read, report, recipients and live progress (broadcasts:read);
//! create, edit, delete, schedule, send, pause, resume, cancel and recall
//! (broadcasts:write). Plus the tracked-link redirect `GET /r/{token}`, outside the API
//! and without authentication: the token itself is signed.
//!
//! A document with problems is refused with `422 invalid_broadcast`, the problems in
//! `details.problems` (each with a JSON-pointer `path`, a `code` and a `message`); a
//! life-cycle step from the wrong status is `409 invalid_transition`.

use crate::api::query::{bad_param, QueryPairs};
use crate::api::ApiPath;
use crate::auth::{Need, RequiredScope};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::broadcast::{RecipientStatus, SkipReason};
use voronka_core::role::Scope;
use voronka_core::segment::Problem;
use voronka_core::{BroadcastId, RecipientId};
use voronka_engine::broadcasts::{BroadcastError, LinkError, Progress, Report};
use voronka_store::{Broadcast, Recipient, RecipientQuery};

/// `broadcasts:read`, for [`Need`].
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

/// Most recipients one page lists.
pub const RECIPIENTS_LIMIT: u32 = 1000;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_broadcasts, create_broadcast))
        .routes(routes!(validate_broadcast))
        .routes(routes!(get_broadcast, update_broadcast, delete_broadcast))
        .routes(routes!(schedule_broadcast))
        .routes(routes!(send_broadcast))
        .routes(routes!(pause_broadcast))
        .routes(routes!(resume_broadcast))
        .routes(routes!(cancel_broadcast))
        .routes(routes!(recall_broadcast))
        .routes(routes!(broadcast_report))
        .routes(routes!(list_recipients))
        .routes(routes!(broadcast_events))
}

/// The tracked-link redirect, outside `/api` and the API document.
pub(crate) fn link_routes() -> Router<AppState> {
    Router::new().route("/r/{token}", get(follow_link))
}

/// A broadcast to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBroadcast {
    /// Name, 1 to 100 characters, unique in the workspace.
    pub name: String,
    /// The document (see docs/broadcasts.md).
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// Changes to a draft: an absent key is left alone.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBroadcast {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New document.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
    /// The revision the change was made on; 409 `stale_revision` when it moved on.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// A document to check.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastSource {
    /// The document.
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// The optional body of `POST /broadcasts/{id}/schedule`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Send at this moment instead of the document's schedule (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<jiff::Timestamp>,
}

/// The problems of a document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BroadcastProblems {
    /// Every problem found (empty for a good document).
    pub problems: Vec<Problem>,
}

/// The answer to `POST /broadcasts/{id}/recall`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecallStarted {
    /// The broadcast (cancelled first when it was still live).
    pub broadcast: Broadcast,
    /// Always true: messages are deleted in the background; the report's `recalled`
    /// counts them.
    pub recalling: bool,
}

/// A page of recipients.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipientPage {
    /// Recipients in id order.
    pub data: Vec<Recipient>,
    /// Pass as `after` for the next page; null when this page is not full.
    pub next_cursor: Option<i64>,
}

/// Filters and paging of recipients (documentation; parsed from the raw query).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RecipientParams {
    /// Only recipients in this status.
    status: Option<RecipientStatus>,
    /// Only recipients skipped for this reason.
    reason: Option<SkipReason>,
    /// `next_cursor` of the previous page.
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// 422 `invalid_broadcast` carrying the problems in `details.problems`.
pub fn invalid_broadcast(problems: &[Problem]) -> ApiError {
    let first = problems
        .first()
        .map(|p| format!(": {} at `{}`", p.message, p.path))
        .unwrap_or_default();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_broadcast",
        format!("the broadcast has {} problem(s){first}", problems.len()),
    )
    .with_detail(
        "problems",
        serde_json::to_value(problems).unwrap_or_default(),
    )
}

impl From<BroadcastError> for ApiError {
    fn from(e: BroadcastError) -> Self {
        match e {
            BroadcastError::Invalid(p) => invalid_broadcast(&p),
            BroadcastError::Store(e) => e.into(),
        }
    }
}

/// Lists broadcasts, newest first.
#[utoipa::path(get, path = "/broadcasts", tag = "broadcasts", operation_id = "listBroadcasts",
    responses((status = 200, description = "Broadcasts", body = Vec<Broadcast>)))]
pub async fn list_broadcasts(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
) -> ApiResult<axum::Json<Vec<Broadcast>>> {
    Ok(axum::Json(state.broadcasts().list(auth.workspace).await?))
}

/// Creates a draft. A document with problems is refused with 422 `invalid_broadcast`.
#[utoipa::path(post, path = "/broadcasts", tag = "broadcasts", operation_id = "createBroadcast",
    request_body = CreateBroadcast,
    responses(
        (status = 201, description = "Created", body = Broadcast),
        (status = 409, description = "`name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_broadcast` (`details.problems`) or `validation_failed`", body = crate::error::ErrorBody)))]
pub async fn create_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    Json(body): Json<CreateBroadcast>,
) -> ApiResult<(StatusCode, axum::Json<Broadcast>)> {
    let b = state
        .broadcasts()
        .create(auth.workspace, &body.name, body.spec)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(b)))
}

/// Checks a document against the workspace without saving it.
#[utoipa::path(post, path = "/broadcasts/validate", tag = "broadcasts", operation_id = "validateBroadcast",
    request_body = BroadcastSource,
    responses((status = 200, description = "The document's problems (none for a good one)", body = BroadcastProblems)))]
pub async fn validate_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    Json(body): Json<BroadcastSource>,
) -> ApiResult<axum::Json<BroadcastProblems>> {
    let problems = state
        .broadcasts()
        .validate(auth.workspace, &body.spec)
        .await?;
    Ok(axum::Json(BroadcastProblems { problems }))
}

/// Reads a broadcast.
#[utoipa::path(get, path = "/broadcasts/{id}", tag = "broadcasts", operation_id = "getBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses((status = 200, description = "The broadcast", body = Broadcast)))]
pub async fn get_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .get(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Edits a draft; a scheduled broadcast goes back to draft.
#[utoipa::path(patch, path = "/broadcasts/{id}", tag = "broadcasts", operation_id = "updateBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    request_body = UpdateBroadcast,
    responses(
        (status = 200, description = "The changed broadcast", body = Broadcast),
        (status = 409, description = "`stale_revision`, `not_editable` or `name_taken`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_broadcast` (`details.problems`)", body = crate::error::ErrorBody)))]
pub async fn update_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<UpdateBroadcast>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .update(
                auth.workspace,
                BroadcastId(id),
                body.revision,
                body.name,
                body.spec,
            )
            .await?,
    ))
}

/// Deletes a draft, or a cancelled or finished broadcast with its recipients.
#[utoipa::path(delete, path = "/broadcasts/{id}", tag = "broadcasts", operation_id = "deleteBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`not_deletable`: it is scheduled, sending or paused", body = crate::error::ErrorBody)))]
pub async fn delete_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state
        .broadcasts()
        .delete(auth.workspace, BroadcastId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Schedules a draft by its document's schedule, or at `at` when given (`now` starts
/// sending at once).
#[utoipa::path(post, path = "/broadcasts/{id}/schedule", tag = "broadcasts", operation_id = "scheduleBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    request_body(content = Option<ScheduleBody>, description = "Optional: `{\"at\": \"…Z\"}` overrides the schedule"),
    responses(
        (status = 200, description = "Scheduled (or sending)", body = Broadcast),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_broadcast` (`details.problems`)", body = crate::error::ErrorBody)))]
pub async fn schedule_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
    body: bytes::Bytes,
) -> ApiResult<axum::Json<Broadcast>> {
    let body: ScheduleBody = if body.iter().all(u8::is_ascii_whitespace) {
        ScheduleBody::default()
    } else {
        crate::json::parse(&body)?
    };
    Ok(axum::Json(
        state
            .broadcasts()
            .schedule(auth.workspace, BroadcastId(id), body.at)
            .await?,
    ))
}

/// Sends a draft or scheduled broadcast now.
#[utoipa::path(post, path = "/broadcasts/{id}/send", tag = "broadcasts", operation_id = "sendBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 200, description = "Sending", body = Broadcast),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_broadcast` (`details.problems`)", body = crate::error::ErrorBody)))]
pub async fn send_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .send_now(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Pauses a sending broadcast: messages still queued go back at once; none is sent
/// twice.
#[utoipa::path(post, path = "/broadcasts/{id}/pause", tag = "broadcasts", operation_id = "pauseBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 200, description = "Paused", body = Broadcast),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorBody)))]
pub async fn pause_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .pause(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Resumes a paused broadcast.
#[utoipa::path(post, path = "/broadcasts/{id}/resume", tag = "broadcasts", operation_id = "resumeBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 200, description = "Sending again", body = Broadcast),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorBody)))]
pub async fn resume_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .resume(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Cancels a scheduled, sending or paused broadcast; unsent recipients are skipped as
/// `cancelled`.
#[utoipa::path(post, path = "/broadcasts/{id}/cancel", tag = "broadcasts", operation_id = "cancelBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 200, description = "Cancelled", body = Broadcast),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorBody)))]
pub async fn cancel_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Broadcast>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .cancel(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Deletes the broadcast's messages sent in the last 48 hours from the chats where the
/// channel can (Telegram); a broadcast still live is cancelled first. Runs in the
/// background.
#[utoipa::path(post, path = "/broadcasts/{id}/recall", tag = "broadcasts", operation_id = "recallBroadcast",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses(
        (status = 202, description = "Recalling", body = RecallStarted),
        (status = 409, description = "`not_sent`: a draft has nothing to recall", body = crate::error::ErrorBody)))]
pub async fn recall_broadcast(
    State(state): State<AppState>,
    auth: Need<BroadcastsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, axum::Json<RecallStarted>)> {
    let broadcast = state
        .broadcasts()
        .start_recall(auth.workspace, BroadcastId(id))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RecallStarted {
            broadcast,
            recalling: true,
        }),
    ))
}

/// The report: per variant and in total, skips by reason, rates; metrics the channels
/// cannot report are `null` and listed in `not_available`.
#[utoipa::path(get, path = "/broadcasts/{id}/report", tag = "broadcasts", operation_id = "broadcastReport",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses((status = 200, description = "The report", body = Report)))]
pub async fn broadcast_report(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Report>> {
    Ok(axum::Json(
        state
            .broadcasts()
            .report(auth.workspace, BroadcastId(id))
            .await?,
    ))
}

/// Lists recipients in id order, filtered by status or skip reason.
#[utoipa::path(get, path = "/broadcasts/{id}/recipients", tag = "broadcasts", operation_id = "listBroadcastRecipients",
    params(("id" = i64, Path, description = "Broadcast id"), RecipientParams),
    responses((status = 200, description = "A page of recipients", body = RecipientPage)))]
pub async fn list_recipients(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<RecipientPage>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["status", "reason", "after", "limit"])?;
    let limit = match q.parsed::<u32>("limit")? {
        None => 100,
        Some(n) if (1..=RECIPIENTS_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(bad_param(
                "limit",
                &format!("must be 1 to {RECIPIENTS_LIMIT}"),
            ))
        }
    };
    let query = RecipientQuery {
        status: q.parsed::<RecipientStatus>("status")?,
        reason: q.parsed::<SkipReason>("reason")?,
        contact: None,
        after: q.parsed::<i64>("after")?.map(RecipientId),
        limit,
    };
    let data = state
        .broadcasts()
        .recipients(auth.workspace, BroadcastId(id), query)
        .await?;
    let next_cursor = (data.len() as u32 == limit)
        .then(|| data.last().map(|r| r.id.0))
        .flatten();
    Ok(axum::Json(RecipientPage { data, next_cursor }))
}

/// Live progress as server-sent events: one `progress` event with the numbers at once,
/// then whenever they change (at least every half second while sending); the stream
/// ends after the event that says the broadcast is over.
#[utoipa::path(get, path = "/broadcasts/{id}/events", tag = "broadcasts", operation_id = "broadcastEvents",
    params(("id" = i64, Path, description = "Broadcast id")),
    responses((status = 200, description = "`text/event-stream` of `progress` events", body = Progress,
        content_type = "text/event-stream")))]
pub async fn broadcast_events(
    State(state): State<AppState>,
    auth: Need<BroadcastsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let rx = state
        .broadcasts()
        .progress(auth.workspace, BroadcastId(id))
        .await?;
    // The first event is the current state; after one with `over`, the stream ends.
    let stream = futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let p = rx.borrow_and_update().clone();
        let over = p.over;
        let event = Event::default()
            .event("progress")
            .json_data(&p)
            .unwrap_or_else(|_| Event::default().event("progress").data("{}"));
        Some((Ok(event), (rx, false, over)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Follows a tracked link: 302 to the button's URL after counting the click; 400 for
/// a malformed or forged token, 404 when the broadcast or recipient is gone.
pub async fn follow_link(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.broadcasts().click_link(&token).await {
        Ok(url) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, url),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        Err(LinkError::BadToken) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_link",
            "this link is not valid",
        )
        .into_response(),
        Err(LinkError::NotFound) => ApiError::new(
            StatusCode::NOT_FOUND,
            "link_not_found",
            "this link leads nowhere any more",
        )
        .into_response(),
        Err(LinkError::Store(e)) => ApiError::from(e).into_response(),
    }
}
