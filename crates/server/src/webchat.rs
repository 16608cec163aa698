//! The web chat: the embeddable widget (`/widget.js`), a hosted chat page, and the
//! endpoints the widget talks to.
//!
//! A visitor is identified by a signed token the widget keeps in `localStorage` (see
//! `voronka_engine::messaging::webchat`), so a reload finds the same conversation. What
//! the visitor sends goes through the same inbound pipeline as a Telegram update (stored
//! first, processed from the store); replies go through the outbox like any message and
//! reach the browser over server-sent events. The widget runs on customers' sites, so
//! these routes allow any origin and use a bearer token, never cookies.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;
use tower_http::cors::{Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use voronka_core::channel::{ChannelKind, ChannelStatus};
use voronka_core::ChannelId;
use voronka_engine::messaging::{webchat, ReceiveError, Runtime};
use voronka_store::{ConversationItem, Direction};

/// The widget script, served as is: no build step.
const WIDGET_JS: &str = include_str!("../assets/widget.js");

/// Largest message a visitor may post.
const BODY_LIMIT: usize = 16 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600));
    Router::new()
        .route("/widget.js", get(widget_js))
        .route("/webchat/{channel_id}", get(page))
        .route("/webchat/{channel_id}/visitors", post(new_visitor))
        .route("/webchat/{channel_id}/history", get(history))
        .route("/webchat/{channel_id}/messages", post(post_message))
        .route("/webchat/{channel_id}/stream", get(stream))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(cors)
}

async fn widget_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// A web chat channel that takes visitors.
async fn channel(state: &AppState, raw: &str) -> Result<std::sync::Arc<Runtime>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such web chat");
    let id = raw.parse::<i64>().map_err(|_| not_found())?;
    let rt = state
        .messaging()
        .runtime(ChannelId(id))
        .await
        .map_err(|_| not_found())?;
    if rt.channel.kind != ChannelKind::Webchat || rt.channel.status == ChannelStatus::Disabled {
        return Err(not_found());
    }
    Ok(rt)
}

fn visitor(state: &AppState, rt: &Runtime, token: Option<&str>) -> Result<String, ApiError> {
    token
        .and_then(|t| webchat::verify_token(state.secret(), rt.channel.id, t))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_visitor_token",
                "missing or invalid visitor token",
            )
        })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// A hosted page with nothing but the chat: a link to share, and the page the widget's
/// own tests and the demo open.
async fn page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let rt = channel(&state, &raw).await?;
    let name = html_escape(&rt.channel.name);
    let id = rt.channel.id;
    Ok(Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name}</title>
<style>body{{margin:0;font-family:system-ui,sans-serif;background:#f4f5f7}}main{{max-width:40rem;margin:0 auto;padding:1rem}}</style>
</head><body><main><h1>{name}</h1>
<div id="voronka-chat"></div></main>
<script src="/widget.js" data-channel="{id}" data-target="voronka-chat"></script>
</body></html>"#
    ))
    .into_response())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn new_visitor(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let rt = channel(&state, &raw).await?;
    let (visitor, token) = webchat::new_visitor(state.secret(), rt.channel.id);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "visitor": visitor,
            "token": token,
            "channel": {"name": rt.channel.name},
            "consent_text": rt.channel.settings.consent_text,
        })),
    )
        .into_response())
}

/// One line of history as the widget shows it.
fn widget_item(item: &ConversationItem) -> Option<Value> {
    match item.direction {
        Direction::In => {
            let ev = item.inbound.as_ref()?;
            let kind = ev.get("kind")?;
            let text = match kind.get("type")?.as_str()? {
                "text" => kind.get("text")?.as_str()?.to_string(),
                "button_pressed" => kind.get("data")?.as_str()?.to_string(),
                _ => return None,
            };
            Some(json!({"dir": "in", "text": text, "at": item.at.as_second()}))
        }
        Direction::Out => {
            let out = item.outbound.as_ref()?;
            Some(json!({
                "dir": "out",
                "id": out.id,
                "message": out.message,
                "at": item.at.as_second(),
            }))
        }
    }
}

async fn history(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rt = channel(&state, &raw).await?;
    let visitor = visitor(&state, &rt, bearer(&headers))?;
    let ws = rt.channel.workspace_id;
    let identity = state
        .store()
        .find_identity(ws, rt.channel.id, &visitor)
        .await?;
    let (items, consented) = match identity {
        Some(i) => {
            let items = state.store().conversation(ws, i.id, 200).await?;
            (
                items.iter().filter_map(widget_item).collect::<Vec<_>>(),
                i.subscription.state == voronka_core::subscription::SubscriptionState::Subscribed,
            )
        }
        None => (Vec::new(), false),
    };
    Ok(axum::Json(json!({
        "consented": consented,
        "consent_text": rt.channel.settings.consent_text,
        "items": items,
    }))
    .into_response())
}

/// What the widget posts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisitorMessage {
    /// Generated by the widget per message: a retried post is recognised.
    client_id: String,
    /// `text`, `button`, `start` or `consent`.
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        message,
    )
    .with_detail("field", field)
}

async fn post_message(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rt = channel(&state, &raw).await?;
    let visitor = visitor(&state, &rt, bearer(&headers))?;
    let msg: VisitorMessage = serde_json::from_slice(&body).map_err(|e| {
        refused(
            &rt,
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
        )
    })?;
    let client_id = msg.client_id.trim();
    if client_id.is_empty()
        || client_id.len() > 64
        || !client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(refused(
            &rt,
            invalid("client_id", "must be 1 to 64 letters, digits, - or _"),
        ));
    }
    let text_ok = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| !t.trim().is_empty() && t.chars().count() <= 4000)
    };
    let problem = match msg.kind.as_str() {
        "text" if !text_ok(&msg.text) => Some(("text", "must be 1 to 4000 characters")),
        "button" if !text_ok(&msg.payload) => Some(("payload", "must be 1 to 4000 characters")),
        "text" | "button" | "start" | "consent" => None,
        _ => Some(("type", "must be text, button, start or consent")),
    };
    if let Some((field, message)) = problem {
        return Err(refused(&rt, invalid(field, message)));
    }
    // The visitor comes from the verified token, never from the body.
    let provider_body = json!({
        "visitor": visitor,
        "type": msg.kind,
        "text": msg.text,
        "payload": msg.payload,
        "reference": msg.reference,
        "client_id": client_id,
    });
    let bytes = serde_json::to_vec(&provider_body).map_err(ApiError::internal)?;
    match state
        .messaging()
        .receive(rt.channel.id, Some(ChannelKind::Webchat), &headers, &bytes)
        .await
    {
        Ok(r) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"ok": true, "duplicate": r.stored == 0})),
        )
            .into_response()),
        Err(ReceiveError::Parse(e)) => Err(refused(
            &rt,
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            ),
        )),
        Err(e) => {
            tracing::error!(channel = %rt.channel.id, error = %e, "cannot store a web chat message");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the message could not be stored; retry",
            ))
        }
    }
}

/// Logs a refused visitor message (nothing was stored) and passes the error on.
fn refused(rt: &Runtime, e: ApiError) -> ApiError {
    tracing::info!(channel = %rt.channel.id, code = e.code(), "web chat message refused");
    e
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    token: String,
}

/// Server-sent events with the messages sent to this visitor from now on. (EventSource
/// cannot set headers, hence the token in the query.)
async fn stream(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let rt = channel(&state, &raw).await?;
    let visitor = visitor(&state, &rt, Some(&q.token))?;
    let rx = state.messaging().hub().subscribe(rt.channel.id.0, &visitor);
    let events = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(push) => {
                let data = serde_json::to_string(&push).unwrap_or_default();
                Some((
                    Ok::<_, Infallible>(Event::default().event("message").data(data)),
                    rx,
                ))
            }
            // A slow browser missed some: it reloads the history on `resync`.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Some((Ok(Event::default().event("resync").data("{}")), rx))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
