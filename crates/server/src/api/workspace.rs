//! `GET /workspace`: the key's own workspace.

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_store::Workspace;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_workspace))
}

/// The workspace the API key belongs to (any valid key).
#[utoipa::path(get, path = "/workspace", tag = "workspace", operation_id = "getWorkspace",
    responses((status = 200, description = "The workspace", body = Workspace)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(state.store().get_workspace(auth.workspace).await?))
}
