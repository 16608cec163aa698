//! Custom field definitions: list (contacts:read), create and delete (schema:write).

use crate::api::ApiPath;
use crate::auth::{scope, Need};
use crate::error::ApiResult;
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::field::{FieldDefinition, FieldSpec, FieldType};
use voronka_core::FieldId;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_fields, create_field))
        .routes(routes!(delete_field))
}

/// A field definition to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateField {
    /// Key used in API bodies and CSV headers: lowercase letters, digits and `_`.
    pub key: String,
    /// Label shown in the UI.
    pub label: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Allowed values (choice fields only).
    #[serde(default)]
    pub choices: Vec<String>,
}

/// Every field definition, by key.
#[utoipa::path(get, path = "/fields", tag = "fields", operation_id = "listFields",
    responses((status = 200, description = "Field definitions", body = Vec<FieldDefinition>)))]
pub async fn list_fields(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
) -> ApiResult<axum::Json<Vec<FieldDefinition>>> {
    Ok(axum::Json(state.store().list_fields(auth.workspace).await?))
}

/// Defines a custom field.
#[utoipa::path(post, path = "/fields", tag = "fields", operation_id = "createField", request_body = CreateField,
    responses((status = 201, description = "Created", body = FieldDefinition)))]
pub async fn create_field(
    State(state): State<AppState>,
    auth: Need<scope::SchemaWrite>,
    Json(body): Json<CreateField>,
) -> ApiResult<(StatusCode, axum::Json<FieldDefinition>)> {
    let spec = FieldSpec {
        key: body.key,
        label: body.label,
        field_type: body.field_type,
        choices: body.choices,
    }
    .validated()?;
    let def = state.store().create_field(auth.workspace, spec).await?;
    // The flow runtime caches field definitions per workspace.
    state.flows().invalidate_workspace(auth.workspace);
    Ok((StatusCode::CREATED, axum::Json(def)))
}

/// Deletes a field definition and every value of it.
#[utoipa::path(delete, path = "/fields/{id}", tag = "fields", operation_id = "deleteField",
    params(("id" = i64, Path, description = "Field id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_field(
    State(state): State<AppState>,
    auth: Need<scope::SchemaWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state
        .store()
        .delete_field(auth.workspace, FieldId(id))
        .await?;
    state.flows().invalidate_workspace(auth.workspace);
    Ok(StatusCode::NO_CONTENT)
}
