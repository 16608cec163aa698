//! API keys (admin scope): list, create (the token is shown once), revoke.

use crate::api::ApiPath;
use crate::auth::{scope, Need};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::channel::display_name;
use voronka_core::role::Scope;
use voronka_core::{apikey, ApiKeyId};
use voronka_store::{ApiKey, NewApiKey};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

/// A key to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for.
    pub name: String,
    /// Scopes granted (at least one).
    pub scopes: Vec<Scope>,
}

/// A created key and its token, which is shown only this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    /// The key's record.
    pub key: ApiKey,
    /// The secret token (`vk_...`): store it now, it cannot be shown again.
    pub token: String,
}

/// Every key of the workspace, revoked ones included.
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", operation_id = "listApiKeys",
    responses((status = 200, description = "Keys", body = Vec<ApiKey>)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    auth: Need<scope::Admin>,
) -> ApiResult<axum::Json<Vec<ApiKey>>> {
    Ok(axum::Json(
        state.store().list_api_keys(auth.workspace).await?,
    ))
}

/// Creates a key.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys", operation_id = "createApiKey",
    request_body = CreateApiKey,
    responses((status = 201, description = "Created; `token` is shown once", body = CreatedApiKey)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    auth: Need<scope::Admin>,
    Json(body): Json<CreateApiKey>,
) -> ApiResult<(StatusCode, axum::Json<CreatedApiKey>)> {
    let name = display_name("name", &body.name)?;
    if body.scopes.is_empty() {
        return Err(ApiError::validation(
            "scopes",
            "at least one scope is required",
        ));
    }
    let mut scopes = body.scopes;
    scopes.sort();
    scopes.dedup();
    let generated = apikey::generate();
    let key = state
        .store()
        .create_api_key(
            auth.workspace,
            NewApiKey {
                name,
                prefix: generated.prefix,
                secret_hash: generated.hash,
                scopes,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedApiKey {
            key,
            token: generated.token,
        }),
    ))
}

/// Revokes a key; it authenticates nothing from now on.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys", operation_id = "revokeApiKey",
    params(("id" = i64, Path, description = "API key id")),
    responses((status = 200, description = "The revoked key", body = ApiKey)))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    auth: Need<scope::Admin>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<ApiKey>> {
    Ok(axum::Json(
        state
            .store()
            .revoke_api_key(auth.workspace, ApiKeyId(id))
            .await?,
    ))
}
