//! Provider webhooks: `POST /hooks/{kind}/{channel_id}` (and `POST /hooks/{channel_id}`).
//!
//! The answer is given as soon as the events are stored: the provider only needs to
//! know we have them (Telegram retries anything that is not a 2xx), and everything that
//! follows runs from the store. A request whose secret or signature does not match is
//! refused with 401 before its body is even parsed, and leaves no trace but a log line.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use voronka_core::channel::ChannelKind;
use voronka_core::ChannelId;
use voronka_engine::messaging::ReceiveError;

/// Largest webhook body: Telegram updates are a few KiB; this leaves room for batches.
pub const HOOK_BODY_LIMIT: usize = 1024 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hooks/{kind}/{channel_id}", post(by_kind))
        .route("/hooks/{channel_id}", post(by_id))
        .layer(RequestBodyLimitLayer::new(HOOK_BODY_LIMIT))
}

async fn by_kind(
    State(state): State<AppState>,
    Path((kind, channel_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(kind) = kind.parse::<ChannelKind>() else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such channel kind")
            .into_response();
    };
    receive(state, Some(kind), &channel_id, headers, body).await
}

async fn by_id(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receive(state, None, &channel_id, headers, body).await
}

async fn receive(
    state: AppState,
    kind: Option<ChannelKind>,
    channel_id: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(id) = channel_id.parse::<i64>() else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such channel")
            .into_response();
    };
    let channel = ChannelId(id);
    match state
        .messaging()
        .receive(channel, kind, &headers, &body)
        .await
    {
        Ok(r) => {
            metrics::counter!("voronka_inbound_events_total").increment(r.stored as u64);
            metrics::counter!("voronka_inbound_duplicates_total").increment(r.duplicates as u64);
            (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
        }
        Err(ReceiveError::UnknownChannel) => {
            tracing::warn!(channel = %channel, "webhook for an unknown channel");
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such channel").into_response()
        }
        Err(ReceiveError::Disabled) => {
            // 200 would make the provider think we took the update; 404 makes Telegram
            // drop it after retries, which is what a switched-off channel wants.
            ApiError::new(
                StatusCode::NOT_FOUND,
                "channel_disabled",
                "the channel is disabled",
            )
            .into_response()
        }
        Err(ReceiveError::Verify(e)) => {
            metrics::counter!("voronka_inbound_refused_total").increment(1);
            tracing::warn!(channel = %channel, error = %e, "webhook refused: bad secret or signature");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "the webhook secret or signature does not match",
            )
            .into_response()
        }
        Err(ReceiveError::Parse(e)) => {
            tracing::warn!(channel = %channel, error = %e, "webhook body refused");
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_update", e.to_string())
                .into_response()
        }
        Err(ReceiveError::Store(e)) => {
            tracing::error!(channel = %channel, error = %e, "cannot store a webhook");
            // 503 makes the provider retry later: nothing is lost.
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the update could not be stored; retry later",
            )
            .into_response()
        }
    }
}
