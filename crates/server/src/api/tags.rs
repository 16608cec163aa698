//! Tags: list (contacts:read), create and delete (schema:write).

use crate::api::ApiPath;
use crate::auth::{scope, Need};
use crate::error::{at, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::TagId;
use voronka_store::Tag;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tags, create_tag))
        .routes(routes!(delete_tag))
}

/// A tag to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTag {
    /// Name, 1 to 64 characters, unique in the workspace.
    pub name: String,
}

/// Every tag of the workspace with the number of contacts carrying it, by name.
#[utoipa::path(get, path = "/tags", tag = "tags", operation_id = "listTags",
    responses((status = 200, description = "Tags", body = Vec<Tag>)))]
pub async fn list_tags(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
) -> ApiResult<axum::Json<Vec<Tag>>> {
    Ok(axum::Json(state.store().list_tags(auth.workspace).await?))
}

/// Creates a tag.
#[utoipa::path(post, path = "/tags", tag = "tags", operation_id = "createTag", request_body = CreateTag,
    responses((status = 201, description = "Created", body = Tag)))]
pub async fn create_tag(
    State(state): State<AppState>,
    auth: Need<scope::SchemaWrite>,
    Json(body): Json<CreateTag>,
) -> ApiResult<(StatusCode, axum::Json<Tag>)> {
    let name = voronka_core::tag::tag_name(&body.name).map_err(at("name"))?;
    let tag = state.store().create_tag(auth.workspace, &name).await?;
    Ok((StatusCode::CREATED, axum::Json(tag)))
}

/// Deletes a tag and removes it from every contact.
#[utoipa::path(delete, path = "/tags/{id}", tag = "tags", operation_id = "deleteTag",
    params(("id" = i64, Path, description = "Tag id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_tag(
    State(state): State<AppState>,
    auth: Need<scope::SchemaWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store().delete_tag(auth.workspace, TagId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
