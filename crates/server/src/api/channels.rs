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
use voronka_core::channel::{display_name, ChannelKind, ChannelSettings, ChannelStatus};
use voronka_core::crypto::Sealed;
use voronka_core::ChannelId;
use voronka_engine::messaging::MessagingError;
use voronka_store::{Channel, ChannelPatch, ChannelRuntime, NewChannel};

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
    /// Provider credentials, stored encrypted and never returned. Telegram:
    /// `{"token": "123456:AA…"}` (checked with Telegram before the channel is created);
    /// web chat: none.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub credentials: Map<String, Value>,
    /// STOP/START words, welcome, auto-reply and consent text (defaults when absent).
    #[serde(default)]
    pub settings: Option<ChannelSettings>,
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
    /// New settings (replace the old ones entirely).
    #[serde(default)]
    pub settings: Option<ChannelSettings>,
}

/// Seals credentials the way the channel's kind needs them: a Telegram token is checked
/// with `getMe` and gets a webhook secret; other kinds keep what was given.
async fn credentials_for(
    state: &AppState,
    kind: ChannelKind,
    credentials: &Map<String, Value>,
) -> ApiResult<(Sealed, Option<ChannelRuntime>)> {
    match kind {
        ChannelKind::Telegram => {
            let Some(token) = credentials.get("token").and_then(Value::as_str) else {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "a Telegram channel needs credentials.token (the bot token from @BotFather)",
                )
                .with_detail("field", "credentials.token"));
            };
            match state.messaging().prepare_telegram(token).await {
                Ok((sealed, runtime, _)) => Ok((sealed, Some(runtime))),
                Err(MessagingError::InvalidCredentials(m)) => {
                    Err(
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_token", m)
                            .with_detail("field", "credentials.token"),
                    )
                }
                Err(MessagingError::Unreachable(m)) => Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_unreachable",
                    m,
                )),
                Err(MessagingError::Store(e)) => Err(e.into()),
            }
        }
        ChannelKind::Webchat => Ok((seal(state, credentials)?, None)),
        other => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!(
                "{} channels cannot be connected yet (supported: telegram, webchat)",
                other.as_str()
            ),
        )
        .with_detail("field", "kind")),
    }
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
    let settings = body
        .settings
        .unwrap_or_default()
        .validated()
        .map_err(|e| e.under("settings"))?;
    let (credentials, runtime) = credentials_for(&state, body.kind, &body.credentials).await?;
    let mut channel = state
        .store()
        .create_channel(
            auth.workspace,
            NewChannel {
                kind: body.kind,
                name,
                credentials,
                settings,
            },
        )
        .await?;
    if let Some(runtime) = runtime {
        channel = state
            .store()
            .update_channel(
                auth.workspace,
                channel.id,
                ChannelPatch {
                    runtime: Some(runtime),
                    ..Default::default()
                },
            )
            .await?;
    }
    state.messaging().activate(&channel).await;
    let channel = state
        .store()
        .get_channel(auth.workspace, channel.id)
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
    let current = state
        .store()
        .get_channel(auth.workspace, ChannelId(id))
        .await?;
    let name = body.name.map(|n| display_name("name", &n)).transpose()?;
    let settings = body
        .settings
        .map(|s| s.validated().map_err(|e| e.under("settings")))
        .transpose()?;
    let (credentials, runtime) = match &body.credentials {
        Some(c) => {
            let (sealed, runtime) = credentials_for(&state, current.kind, c).await?;
            (Some(sealed), runtime)
        }
        None => (None, None),
    };
    let patch = ChannelPatch {
        name,
        status: body.status,
        credentials,
        settings,
        runtime,
    };
    let channel = state
        .store()
        .update_channel(auth.workspace, ChannelId(id), patch)
        .await?;
    state.messaging().activate(&channel).await;
    Ok(axum::Json(
        state
            .store()
            .get_channel(auth.workspace, channel.id)
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
    state.messaging().deactivate(ChannelId(id));
    Ok(StatusCode::NO_CONTENT)
}
