//! The key's own workspace: `GET /workspace` and its settings (any key reads them,
//! `admin` changes them); subscription topics (contacts:read lists, schema:write
//! creates).

use crate::auth::{scope, Auth, Need};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::flow::schedule::parse_hhmm;
use voronka_store::{Topic, Workspace, WorkspaceSettings};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_workspace))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(list_topics, create_topic))
}

/// A subscription topic to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Stable key (`news`, `promo`): 1 to 64 bytes, no spaces.
    pub key: String,
    /// Name shown to subscribers, 1 to 100 characters.
    pub name: String,
}

/// The workspace the API key belongs to (any valid key).
#[utoipa::path(get, path = "/workspace", tag = "workspace", operation_id = "getWorkspace",
    responses((status = 200, description = "The workspace", body = Workspace)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<axum::Json<Workspace>> {
    Ok(axum::Json(
        state.store().get_workspace(auth.workspace).await?,
    ))
}

/// The workspace's settings: default time zone and quiet hours (any valid key).
#[utoipa::path(get, path = "/workspace/settings", tag = "workspace", operation_id = "getWorkspaceSettings",
    responses((status = 200, description = "The settings", body = WorkspaceSettings)))]
pub async fn get_settings(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<axum::Json<WorkspaceSettings>> {
    Ok(axum::Json(
        state.store().workspace_settings(auth.workspace).await?,
    ))
}

/// Replaces the workspace's settings; an absent key takes its default. Quiet hours are
/// off when `quiet_from` and `quiet_to` are both null.
#[utoipa::path(put, path = "/workspace/settings", tag = "workspace", operation_id = "putWorkspaceSettings",
    request_body = WorkspaceSettings,
    responses(
        (status = 200, description = "The settings as saved", body = WorkspaceSettings),
        (status = 413, description = "Request body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = crate::error::ErrorBody)))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: Need<scope::Admin>,
    Json(body): Json<WorkspaceSettings>,
) -> ApiResult<axum::Json<WorkspaceSettings>> {
    let settings = valid_settings(body)?;
    state
        .store()
        .set_workspace_settings(auth.workspace, settings.clone())
        .await?;
    state.flows().invalidate_workspace(auth.workspace);
    Ok(axum::Json(settings))
}

/// Checks settings and writes times as `HH:MM`.
fn valid_settings(s: WorkspaceSettings) -> ApiResult<WorkspaceSettings> {
    let time_zone = s.time_zone.trim().to_string();
    if jiff::tz::TimeZone::get(&time_zone).is_err() {
        return Err(ApiError::validation(
            "time_zone",
            format!("`{time_zone}` is not a known IANA time zone (e.g. Europe/Moscow)"),
        ));
    }
    let hhmm = |field: &str, v: &str| {
        parse_hhmm(v)
            .map(|t| format!("{:02}:{:02}", t.hour(), t.minute()))
            .map_err(|e| ApiError::validation(field, e))
    };
    let (quiet_from, quiet_to) = match (s.quiet_from.as_deref(), s.quiet_to.as_deref()) {
        (Some(from), Some(to)) => (Some(hhmm("quiet_from", from)?), Some(hhmm("quiet_to", to)?)),
        (None, None) => (None, None),
        (Some(_), None) => {
            return Err(ApiError::validation(
                "quiet_to",
                "quiet hours need both `quiet_from` and `quiet_to` (or neither)",
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "quiet_from",
                "quiet hours need both `quiet_from` and `quiet_to` (or neither)",
            ))
        }
    };
    if let Some(cap) = s.frequency_cap {
        if cap.messages == 0 || cap.hours == 0 || cap.hours > 24 * 31 {
            return Err(ApiError::validation(
                "frequency_cap",
                "the frequency cap needs at least 1 message per 1 to 744 hours (or null for no cap)",
            ));
        }
    }
    Ok(WorkspaceSettings {
        time_zone,
        quiet_from,
        quiet_to,
        quiet_weekends: s.quiet_weekends,
        frequency_cap: s.frequency_cap,
    })
}

/// Subscription topics of the workspace, by key.
#[utoipa::path(get, path = "/topics", tag = "topics", operation_id = "listTopics",
    responses((status = 200, description = "Topics", body = Vec<Topic>)))]
pub async fn list_topics(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
) -> ApiResult<axum::Json<Vec<Topic>>> {
    Ok(axum::Json(state.store().list_topics(auth.workspace).await?))
}

/// Creates a subscription topic; 409 `topic_exists` when the key is taken.
#[utoipa::path(post, path = "/topics", tag = "topics", operation_id = "createTopic",
    request_body = CreateTopic,
    responses((status = 201, description = "Created", body = Topic)))]
pub async fn create_topic(
    State(state): State<AppState>,
    auth: Need<scope::SchemaWrite>,
    Json(body): Json<CreateTopic>,
) -> ApiResult<(StatusCode, axum::Json<Topic>)> {
    let topic = state
        .store()
        .create_topic(
            auth.workspace,
            Topic {
                key: body.key,
                name: body.name,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(topic)))
}
