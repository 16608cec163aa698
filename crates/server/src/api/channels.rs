//! Channels: list and read (channels:read); connect, change, remove (channels:write).
//! Credentials are sealed with the server's secret key and never returned.

use crate::api::ApiPath;
use crate::auth::{scope, Need};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::channel::{display_name, ChannelKind, ChannelStatus};
use voronka_core::crypto::Sealed;
use voronka_core::ChannelId;
use voronka_store::{Channel, ChannelPatch, NewChannel};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(get_channel, update_channel, delete_channel))
}

/// A channel to connect.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// Provider.
    pub kind: ChannelKind,
    /// Display name, 1 to 100 characters.
    pub name: String,
    /// Provider credentials (bot token, secrets); stored encrypted, never returned.
    #[schema(value_type = Object)]
    pub credentials: Map<String, Value>,
}

/// Changes to a channel; absent attributes are left alone.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// New status.
    #[serde(default)]
    pub status: Option<ChannelStatus>,
    /// New credentials (replace the old ones entirely).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<Map<String, Value>>,
}

fn seal(state: &AppState, credentials: &Map<String, Value>) -> ApiResult<Sealed> {
    let plain = serde_json::to_vec(credentials).map_err(ApiError::internal)?;
    Ok(state.secret().seal(&plain))
}

/// Every channel of the workspace.
#[utoipa::path(get, path = "/channels", tag = "channels", operation_id = "listChannels",
    responses((status = 200, description = "Channels", body = Vec<Channel>)))]
pub async fn list_channels(
    State(state): State<AppState>,
    auth: Need<scope::ChannelsRead>,
) -> ApiResult<axum::Json<Vec<Channel>>> {
    Ok(axum::Json(
        state.store().list_channels(auth.workspace).await?,
    ))
}

/// Connects a channel.
#[utoipa::path(post, path = "/channels", tag = "channels", operation_id = "createChannel",
    request_body = CreateChannel,
    responses((status = 201, description = "Connected", body = Channel)))]
pub async fn create_channel(
    State(state): State<AppState>,
    auth: Need<scope::ChannelsWrite>,
    Json(body): Json<CreateChannel>,
) -> ApiResult<(StatusCode, axum::Json<Channel>)> {
    let name = display_name("name", &body.name)?;
    let credentials = seal(&state, &body.credentials)?;
    let channel = state
        .store()
        .create_channel(
            auth.workspace,
            NewChannel {
                kind: body.kind,
                name,
                credentials,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(channel)))
}

/// Reads a channel.
#[utoipa::path(get, path = "/channels/{id}", tag = "channels", operation_id = "getChannel",
    params(("id" = i64, Path, description = "Channel id")),
    responses((status = 200, description = "The channel", body = Channel)))]
pub async fn get_channel(
    State(state): State<AppState>,
    auth: Need<scope::ChannelsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Channel>> {
    Ok(axum::Json(
        state
            .store()
            .get_channel(auth.workspace, ChannelId(id))
            .await?,
    ))
}

/// Changes a channel's name, status or credentials.
#[utoipa::path(patch, path = "/channels/{id}", tag = "channels", operation_id = "updateChannel",
    params(("id" = i64, Path, description = "Channel id")),
    request_body = UpdateChannel,
    responses((status = 200, description = "The changed channel", body = Channel)))]
pub async fn update_channel(
    State(state): State<AppState>,
    auth: Need<scope::ChannelsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<UpdateChannel>,
) -> ApiResult<axum::Json<Channel>> {
    let patch = ChannelPatch {
        name: body.name.map(|n| display_name("name", &n)).transpose()?,
        status: body.status,
        credentials: body
            .credentials
            .as_ref()
            .map(|c| seal(&state, c))
            .transpose()?,
    };
    Ok(axum::Json(
        state
            .store()
            .update_channel(auth.workspace, ChannelId(id), patch)
            .await?,
    ))
}

/// Removes a channel (409 `channel_in_use` while identities use it).
#[utoipa::path(delete, path = "/channels/{id}", tag = "channels", operation_id = "deleteChannel",
    params(("id" = i64, Path, description = "Channel id")),
    responses((status = 204, description = "Removed"), (status = 409, description = "In use", body = crate::error::ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    auth: Need<scope::ChannelsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state
        .store()
        .delete_channel(auth.workspace, ChannelId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
