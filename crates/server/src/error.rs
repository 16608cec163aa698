//! The one error type of the API and its JSON shape:
//! `{"error":{"code":"...","message":"...","details":{...}}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};
use voronka_core::role::Scope;
use voronka_core::ValidationError;
use voronka_store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// What went wrong, for machines (`code`) and people (`message`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Stable machine-readable code: `validation_failed`, `not_found`, `tag_exists`…
    pub code: String,
    /// Plain-language explanation.
    pub message: String,
    /// Extra facts, e.g. `{"field": "email"}` or `{"required_scope": "contacts:write"}`.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    details: Map<String, Value>,
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

/// The message for every authentication failure, so the answer tells nothing about
/// which part of the key was wrong.
pub const UNAUTHORIZED_MESSAGE: &str = "missing, invalid or revoked API key";

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// 400 `bad_request`: a query string or header the server cannot use.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 `malformed_json` with the position of the syntax error.
    pub fn malformed_json(message: impl Into<String>, line: usize, column: usize) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
            .with_detail("line", line)
            .with_detail("column", column)
    }

    /// 401 `unauthorized`, always with the same message.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            UNAUTHORIZED_MESSAGE,
        )
    }

    /// 403 `forbidden`: the key lacks `scope`.
    pub fn forbidden(scope: Scope) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key lacks the `{scope}` scope"),
        )
        .with_detail("required_scope", scope.as_str())
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 422 `validation_failed` naming the field.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_detail("field", field)
    }

    /// 500 `internal`: logs the cause, answers nothing about it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The body as JSON.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.clone(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let body =
            json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        let mut res = (status, axum::Json(body)).into_response();
        if unauthorized {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::validation(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity } => ApiError::not_found(entity),
            StoreError::Conflict {
                code,
                message,
                field,
            } => {
                let err = ApiError::new(StatusCode::CONFLICT, code, message);
                match field {
                    Some(f) => err.with_detail("field", f),
                    None => err,
                }
            }
            StoreError::Invalid(v) => v.into(),
            StoreError::Database(msg) => ApiError::internal(format!("store: {msg}")),
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path parameter: {}", e.body_text()))
    }
}

/// Turns error responses produced outside the handlers (unknown route, wrong method,
/// body too large from the limit layer, timeout) into the JSON error shape.
pub fn json_error_for(status: StatusCode) -> ApiError {
    match status {
        StatusCode::NOT_FOUND => ApiError::not_found("route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this method is not allowed on this route",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, "payload_too_large", "the request body is too large")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(status, "unsupported_media_type", "unsupported Content-Type")
        }
        StatusCode::REQUEST_TIMEOUT
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => {
            ApiError::new(status, "timeout", "the request took too long")
        }
        s if s.is_server_error() => ApiError::new(s, "internal", "internal server error"),
        s => ApiError::new(
            s,
            s.canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
            s.canonical_reason().unwrap_or("error"),
        ),
    }
}

/// Middleware: replaces any error response that is not JSON with the JSON error shape.
pub async fn normalize_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let mut out = json_error_for(status).into_response();
    // Keep headers that matter to clients of the original answer (e.g. `Allow` on 405).
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = res.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Maps a validation error to a 422 naming `field` (the input's JSON path) in place of the
/// domain's own name for it.
pub fn at(field: impl Into<String>) -> impl FnOnce(ValidationError) -> ApiError {
    let field = field.into();
    move |e| ApiError::validation(field, e.message)
}
