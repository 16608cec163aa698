//! `Idempotency-Key` for every `POST` under `/api/v1`: the first request runs and its
//! answer is saved; a retry with the same key and the same request gets the saved answer
//! (header `Idempotent-Replayed: true`) without running again.

use crate::auth::{authenticate, Auth};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use voronka_core::ContactId;
use voronka_store::{IdempotencyBegin, SavedResponse};

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";
/// The response header set on replayed answers.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Put into a response's extensions by handlers that concern one contact, so the saved
/// answer is linked to it and deleted when the contact is erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactRef(pub ContactId);

/// Checks a key: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// SHA-256 over method, path with query, and body, hex.
pub fn request_hash(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(path_and_query.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Middleware applying idempotency to `POST /api/v1/...` requests that carry the header.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.uri().path().starts_with("/api/v1/") {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    match run(state, key.as_bytes(), req, next).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn run(state: AppState, key: &[u8], req: Request, next: Next) -> Result<Response, ApiError> {
    if !valid_key(key) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .with_detail("header", "Idempotency-Key"));
    }
    // Checked by `valid_key`: visible ASCII is UTF-8.
    let key = String::from_utf8_lossy(key).into_owned();
    let (mut parts, body) = req.into_parts();
    let auth = authenticate(&parts.headers, &state).await?;
    parts.extensions.insert(auth.clone());
    let limit = if parts.uri.path() == "/api/v1/contacts/import" {
        crate::CSV_BODY_LIMIT
    } else {
        crate::JSON_BODY_LIMIT
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    })?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let hash = request_hash(&parts.method, &path_and_query, &bytes);
    let store = state.store();
    match store.idempotency_begin(auth.workspace, &key, &hash).await? {
        IdempotencyBegin::Started => {}
        IdempotencyBegin::Replay(saved) => return Ok(replay(saved)),
        IdempotencyBegin::InProgress => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed; retry later",
            ))
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ))
        }
    }
    let res = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    finish(&state, &auth, &key, res).await
}

async fn finish(
    state: &AppState,
    auth: &Auth,
    key: &str,
    res: Response,
) -> Result<Response, ApiError> {
    let store = state.store();
    let status = res.status();
    if status.is_server_error() {
        if let Err(e) = store.idempotency_abort(auth.workspace, key).await {
            tracing::error!(error = %e, "cannot release an idempotency key");
        }
        return Ok(res);
    }
    let contact = res.extensions().get::<ContactRef>().map(|c| c.0);
    let (parts, body) = res.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = store.idempotency_abort(auth.workspace, key).await;
            return Err(ApiError::internal(format!("cannot buffer a response: {e}")));
        }
    };
    let saved = SavedResponse {
        status: status.as_u16(),
        body: bytes.to_vec(),
    };
    if let Err(e) = store
        .idempotency_complete(auth.workspace, key, saved, contact)
        .await
    {
        // The request has taken effect; answer it, and let a retry find the key taken over
        // after the in-progress window rather than failing the client now.
        tracing::error!(error = %e, "cannot save an idempotent response");
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

fn replay(saved: SavedResponse) -> Response {
    let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
    let mut res = Response::new(Body::from(saved.body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hashes() {
        assert!(valid_key(b"abc-123"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(&[b'a'; 256]));
        assert!(valid_key(&[b'a'; 255]));
        let a = request_hash(&Method::POST, "/api/v1/contacts", b"{}");
        assert_ne!(a, request_hash(&Method::POST, "/api/v1/contacts", b"{ }"));
        assert_ne!(a, request_hash(&Method::POST, "/api/v1/tags", b"{}"));
    }
}
