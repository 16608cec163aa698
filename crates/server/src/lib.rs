//! Voronka's HTTP server: the REST API v1 under `/api/v1`, its OpenAPI document, health
//! checks and Prometheus metrics.
//!
//! Call [`router`] to get an `axum::Router` (tests, embedding) or [`serve`] to run it on
//! a listener with graceful shutdown.

pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod hooks;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod webchat;

use axum::http::{HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use voronka_core::crypto::SecretKey;
use voronka_core::ApiKeyId;
use voronka_engine::broadcasts::{Broadcasts, BroadcastsConfig};
use voronka_engine::flows::{Flows, FlowsConfig};
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_store::DynStore;

pub use auth::Auth;
pub use error::{ApiError, ApiResult};

/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// Largest CSV file accepted by `POST /api/v1/contacts/import`.
pub const CSV_BODY_LIMIT: usize = 512 * 1024 * 1024;
/// How long a JSON request may take before it is answered with a timeout.
pub const JSON_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a CSV import may take.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Minimum time between two `last_used_at` updates of one key.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// What every handler shares: the store, the credentials key, and in-memory state.
#[derive(Clone)]
pub struct AppState {
    /// Holds the store and the credentials key too.
    messaging: Arc<Messaging>,
    flows: Arc<Flows>,
    broadcasts: Arc<Broadcasts>,
    touched: Arc<Mutex<HashMap<ApiKeyId, Instant>>>,
    metrics: ::metrics_exporter_prometheus::PrometheusHandle,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.store().backend())
            .field("secret", self.secret())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state with a messaging runtime of default settings that runs nothing in
    /// the background (tests of the REST API); installs the process-wide metrics
    /// recorder on first use.
    pub fn new(store: DynStore, secret: SecretKey) -> Self {
        let messaging = Messaging::new(store.clone(), secret.clone(), MessagingConfig::default());
        Self::with_messaging(messaging)
    }

    /// Builds the state around a messaging runtime (started by the caller), with a flow
    /// runtime of default settings that runs nothing in the background.
    pub fn with_messaging(messaging: Arc<Messaging>) -> Self {
        let flows = Flows::new(messaging.clone(), FlowsConfig::default());
        Self::with_runtime(messaging, flows)
    }

    /// Builds the state around the messaging and flow runtimes (started by the caller),
    /// with a broadcast runtime of default settings that runs nothing in the background.
    pub fn with_runtime(messaging: Arc<Messaging>, flows: Arc<Flows>) -> Self {
        let broadcasts = Broadcasts::new(flows.clone(), BroadcastsConfig::default());
        Self::with_runtimes(messaging, flows, broadcasts)
    }

    /// Builds the state around the messaging, flow and broadcast runtimes (started by
    /// the caller).
    pub fn with_runtimes(
        messaging: Arc<Messaging>,
        flows: Arc<Flows>,
        broadcasts: Arc<Broadcasts>,
    ) -> Self {
        Self {
            messaging,
            flows,
            broadcasts,
            touched: Arc::new(Mutex::new(HashMap::new())),
            metrics: metrics::handle(),
        }
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        self.messaging.store()
    }

    /// The messaging runtime.
    pub fn messaging(&self) -> &Arc<Messaging> {
        &self.messaging
    }

    /// The flow runtime.
    pub fn flows(&self) -> &Arc<Flows> {
        &self.flows
    }

    /// The broadcast runtime.
    pub fn broadcasts(&self) -> &Arc<Broadcasts> {
        &self.broadcasts
    }

    /// The key that seals channel credentials.
    pub fn secret(&self) -> &SecretKey {
        self.messaging.secret_key()
    }

    /// Records that `key` authenticated a request: updates `last_used_at` in the
    /// background at most once per [`TOUCH_INTERVAL`] per key.
    pub(crate) fn note_key_use(&self, key: ApiKeyId) {
        let now = Instant::now();
        let due = match self.touched.lock() {
            Ok(mut map) => match map.get(&key) {
                Some(last) if now.duration_since(*last) < TOUCH_INTERVAL => false,
                _ => {
                    map.insert(key, now);
                    true
                }
            },
            Err(_) => false,
        };
        if due {
            let store = self.store().clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(key, jiff::Timestamp::now()).await {
                    tracing::warn!(error = %e, key = %key, "cannot record API key use");
                }
            });
        }
    }
}

/// The whole HTTP application: API v1, OpenAPI document, health and metrics.
pub fn router(state: AppState) -> axum::Router {
    let (routes, _) = openapi::all_routes().split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::middleware,
        ))
        // Provider webhooks and the web chat authenticate their own way (signatures,
        // visitor tokens) and are not part of the API document.
        .merge(hooks::routes())
        .merge(webchat::routes())
        // Tracked links are opened by anyone the message reached; the token is signed.
        .merge(api::broadcasts::link_routes())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(error::normalize_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                // The path only: query strings may carry personal data (`q=`).
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document()
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_opaque_json_500s() {
        let res = panic_response(Box::new("secret internals at /etc/x"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "internal");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}
