//! The REST API v1: one module per resource, mounted under `/api/v1`.

pub mod api_keys;
pub mod broadcasts;
pub mod channels;
pub mod contacts;
pub mod csv;
pub mod events;
pub mod fields;
pub mod flows;
pub mod messages;
pub mod query;
pub mod segments;
pub mod tags;
pub mod workspace;

use crate::error::ApiError;
use crate::idempotency::ContactRef;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;
use voronka_core::ContactId;

/// A path parameter whose parse failure is an [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The routes under `/api/v1` with their body limits and timeouts.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    let json = OpenApiRouter::new()
        .merge(workspace::routes())
        .merge(channels::routes())
        .merge(tags::routes())
        .merge(fields::routes())
        .merge(contacts::routes())
        .merge(messages::routes())
        .merge(flows::routes())
        .merge(segments::routes())
        .merge(broadcasts::routes())
        .merge(events::routes())
        .merge(csv::export_routes())
        .merge(api_keys::routes())
        .routes(utoipa_axum::routes!(crate::openapi::openapi_json))
        .layer(RequestBodyLimitLayer::new(crate::JSON_BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::JSON_TIMEOUT,
        ));
    let import = csv::import_routes()
        .layer(RequestBodyLimitLayer::new(crate::CSV_BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::IMPORT_TIMEOUT,
        ));
    json.merge(import)
}

/// A JSON answer about one contact: links an idempotent request's saved answer to it.
pub(crate) fn about_contact<T: Serialize>(
    status: StatusCode,
    body: &T,
    contact: ContactId,
) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.extensions_mut().insert(ContactRef(contact));
    res
}
