//! CSV import (`POST /contacts/import`, streamed into the engine) and export
//! (`GET /contacts/export`, streamed out of it).

use crate::api::query::{bad_param, contact_filter, FilterParams, QueryPairs, FILTER_PARAMS};
use crate::auth::{scope, Need};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::ChannelId;
use voronka_engine::csv_export::{export_csv, ExportError};
use voronka_engine::csv_import::{import_csv, ImportError, ImportOptions, ImportReport};

pub(crate) fn import_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(import_contacts))
}

pub(crate) fn export_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_contacts))
}

/// Import options (documentation; parsed from the raw query, `map` may repeat).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ImportParams {
    /// Channel id for the `external_id` column when the file has no `channel_id` column.
    channel: Option<i64>,
    /// Source recorded on new contacts whose row has none.
    source: Option<String>,
    /// Extra column mapping `Header:target` (`Город:field.city`, `Name:first_name`); repeat.
    map: Option<Vec<String>>,
}

fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "text/csv" || t == "application/csv")
}

/// Imports contacts from a CSV file: new contacts are created, existing ones (matched by
/// identity, phone or e-mail) updated; bad rows are reported by line.
#[utoipa::path(post, path = "/contacts/import", tag = "contacts", operation_id = "importContacts",
    params(ImportParams),
    request_body(content = String, content_type = "text/csv", description = "CSV file with a header line"),
    responses((status = 200, description = "What the import did", body = ImportReport)))]
pub async fn import_contacts(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<ImportReport>> {
    if !is_csv(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with Content-Type: text/csv",
        ));
    }
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["channel", "source", "map"])?;
    let mut mapping = Vec::new();
    for m in q.all("map") {
        let (from, to) = m
            .rsplit_once(':')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .ok_or_else(|| bad_param("map", &format!("`{m}` is not `Header:target`")))?;
        mapping.push((from.to_string(), to.to_string()));
    }
    let options = ImportOptions {
        channel: q.parsed::<i64>("channel")?.map(ChannelId),
        source: q
            .one("source")?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            // Every way in records its source; without one, say at least how they came.
            .or_else(|| Some("import:api".to_string())),
        mapping,
        batch_size: 0,
    };
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let stream = body.into_data_stream().map_err(move |e| {
        let limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit exceeded");
        if limit {
            flag.store(true, Ordering::Relaxed);
        }
        std::io::Error::other(e)
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let result = import_csv(
        state.store().clone(),
        auth.workspace,
        reader,
        options,
        Box::new(|_| {}),
    )
    .await;
    if too_large.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the CSV file is too large",
        ));
    }
    match result {
        Ok(report) => Ok(axum::Json(report)),
        Err(ImportError::Header(m)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_csv",
            m,
        )),
        Err(ImportError::Read(m)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_csv",
            format!("cannot read CSV: {m}"),
        )),
        Err(ImportError::Store(e)) => Err(e.into()),
    }
}

/// Exports the contacts matching the filter as CSV, streamed.
#[utoipa::path(get, path = "/contacts/export", tag = "contacts", operation_id = "exportContacts",
    params(FilterParams),
    responses((status = 200, description = "CSV with a header line", body = String, content_type = "text/csv")))]
pub async fn export_contacts(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(FILTER_PARAMS)?;
    let filter = contact_filter(&state, auth.workspace, &q).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let task = tokio::spawn(export_csv(
        state.store().clone(),
        auth.workspace,
        filter,
        tx,
    ));
    // Wait for the first chunk so a failure before any output is still a proper error.
    let first = match rx.recv().await {
        Some(chunk) => chunk,
        None => {
            return match task.await {
                Ok(Ok(_)) => Ok(csv_response(Body::empty())),
                Ok(Err(e)) => Err(export_error(e)),
                Err(e) => Err(ApiError::internal(format!("export task failed: {e}"))),
            }
        }
    };
    let head =
        futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(first)) });
    let rest = futures::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        match rx.recv().await {
            Some(chunk) => Some((Ok(Bytes::from(chunk)), (rx, task))),
            None => {
                let task = task?;
                // A failure mid-way must not look like a complete file: end the body with an
                // error so the connection is aborted.
                let outcome = match task.await {
                    Ok(Ok(_)) => return None,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(error = %outcome, "CSV export failed mid-way");
                Some((Err(std::io::Error::other(outcome)), (rx, None)))
            }
        }
    });
    Ok(csv_response(Body::from_stream(head.chain(rest))))
}

fn export_error(e: ExportError) -> ApiError {
    match e {
        ExportError::Store(s) => s.into(),
        ExportError::Write(m) => ApiError::internal(format!("export: {m}")),
    }
}

fn csv_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"contacts.csv\"",
            ),
        ],
        body,
    )
        .into_response()
}
