//! Messages to a contact: send (messages:send), and read the conversation and the state
//! of one outgoing message (contacts:read).
//!
//! Sending only queues: the answer is 202 with the outbox row, and delivery happens in
//! the background within the channel's limits. Consent is checked by the store in the
//! same transaction that queues, so there is no window in which a withdrawn consent
//! could be missed.

use crate::api::{about_contact, ApiPath};
use crate::auth::{scope, Need};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_core::{ChannelId, ContactId, OutboxId};
use voronka_store::{ConversationItem, NewOutbound, OutboxItem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(conversation))
        .routes(routes!(get_outbox))
}

/// A message to send to a contact.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The channel to send on; the contact needs a subscribed identity there.
    pub channel_id: ChannelId,
    /// `marketing` (default) or `transactional`; both need a recorded opt-in.
    #[serde(default)]
    pub purpose: Option<Purpose>,
    /// The message: text (already personalised), media, buttons, cards.
    pub message: OutboundMessage,
}

/// Queues a message to a contact. Refused with 409 `not_subscribed`, `blocked` or
/// `no_identity_on_channel` when the contact has not opted in on that channel.
#[utoipa::path(post, path = "/contacts/{id}/messages", tag = "messages", operation_id = "sendMessage",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = SendMessage,
    responses(
        (status = 202, description = "Queued", body = OutboxItem),
        (status = 409, description = "No consent on that channel", body = crate::error::ErrorBody)))]
pub async fn send_message(
    State(state): State<AppState>,
    auth: Need<scope::MessagesSend>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<SendMessage>,
) -> ApiResult<Response> {
    let purpose = body.purpose.unwrap_or(Purpose::Marketing);
    if purpose == Purpose::Response {
        // Responses are what the pipeline sends to someone who just wrote; through the
        // API they would be a way around the opt-in.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "purpose must be `marketing` or `transactional`",
        )
        .with_detail("field", "purpose"));
    }
    let message = body.message.validated().map_err(|e| e.under("message"))?;
    let item = state
        .messaging()
        .send_to_contact(
            auth.workspace,
            ContactId(id),
            NewOutbound {
                channel_id: body.channel_id,
                purpose,
                message,
                source: "api".into(),
                run_at: None,
            },
        )
        .await?;
    Ok(about_contact(StatusCode::ACCEPTED, &item, ContactId(id)))
}

/// Which conversation to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConversationQuery {
    /// The channel (the contact's identity there).
    pub channel_id: i64,
    /// Most items (1–500, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The latest messages between the workspace and a contact on one channel, oldest first.
#[utoipa::path(get, path = "/contacts/{id}/conversation", tag = "messages", operation_id = "getConversation",
    params(("id" = i64, Path, description = "Contact id"), ConversationQuery),
    responses((status = 200, description = "Messages in and out", body = Vec<ConversationItem>)))]
pub async fn conversation(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
    Query(q): Query<ConversationQuery>,
) -> ApiResult<axum::Json<Vec<ConversationItem>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limit must be 1 to 500",
        )
        .with_detail("field", "limit"));
    }
    let contact = state
        .store()
        .get_contact(auth.workspace, ContactId(id))
        .await?;
    let Some(identity) = contact
        .identities
        .iter()
        .find(|i| i.channel_id == ChannelId(q.channel_id))
    else {
        return Ok(axum::Json(Vec::new()));
    };
    Ok(axum::Json(
        state
            .store()
            .conversation(auth.workspace, identity.id, limit)
            .await?,
    ))
}

/// One outgoing message: its state, attempts, provider ids and last error.
#[utoipa::path(get, path = "/outbox/{id}", tag = "messages", operation_id = "getOutboxMessage",
    params(("id" = i64, Path, description = "Outbox id")),
    responses((status = 200, description = "The message", body = OutboxItem)))]
pub async fn get_outbox(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<OutboxItem>> {
    Ok(axum::Json(
        state
            .store()
            .get_outbound(auth.workspace, OutboxId(id))
            .await?,
    ))
}
