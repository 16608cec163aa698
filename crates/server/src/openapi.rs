//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::error::{ErrorBody, ErrorObject};
use crate::AppState;
use axum::Json;
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Voronka API",
        version = "1",
        description = "Contacts, channels, tags, fields, flows, broadcasts and API keys of a Voronka workspace. \
            Authenticate with `Authorization: Bearer <API key>`. Every POST accepts an \
            `Idempotency-Key` header. Errors are `{\"error\":{\"code\",\"message\",\"details\"}}`."
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody, ErrorObject)),
    security(("bearer" = [])),
    tags(
        (name = "workspace", description = "The key's workspace"),
        (name = "channels", description = "Connected messenger accounts"),
        (name = "tags", description = "Labels on contacts"),
        (name = "fields", description = "Custom field definitions"),
        (name = "contacts", description = "People, their identities, consent and timeline"),
        (name = "messages", description = "Messages to contacts and their conversations"),
        (name = "flows", description = "Chatbot scenarios and auto-funnels: drafts, versions, runs"),
        (name = "broadcasts", description = "One-off and scheduled messages to segments: A/B variants, live progress, reports, recall"),
        (name = "segments", description = "Saved contact filters (audiences of broadcasts), their counts and samples"),
        (name = "events", description = "Events about contacts that start or end flows"),
        (name = "topics", description = "Subscription topics"),
        (name = "api-keys", description = "API keys of the workspace"),
        (name = "meta", description = "This document"),
        (name = "health", description = "Probes and metrics"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("vk_<prefix>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every route of the application with its documentation.
pub(crate) fn all_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", crate::api::routes())
        .routes(routes!(crate::health::healthz))
        .routes(routes!(crate::health::readyz))
        .routes(routes!(crate::metrics::render))
}

/// Builds the document: routes, schemas, and the error answers every operation can give.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = all_routes().into_openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_id = path.contains('{');
        for (method, op) in [
            ("get", item.get.as_mut()),
            ("post", item.post.as_mut()),
            ("patch", item.patch.as_mut()),
            ("delete", item.delete.as_mut()),
            ("put", item.put.as_mut()),
        ] {
            if let Some(op) = op {
                add_error_responses(op, method, has_id);
            }
        }
    }
    open_flattened_closed_schemas(doc)
}

/// `#[serde(flatten)]` of a `deny_unknown_fields` type (the contact's profile) yields
/// `allOf: [{$ref: Profile}, {...}]` where `Profile` has `additionalProperties: false`,
/// which no object with the other properties could satisfy. Such references are inlined
/// without the closing keyword.
fn open_flattened_closed_schemas(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use serde_json::Value;
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    let schemas = v
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or(Value::Null);
    let Some(all) = v
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return doc;
    };
    for schema in all.values_mut() {
        let Some(parts) = schema.get_mut("allOf").and_then(Value::as_array_mut) else {
            continue;
        };
        for part in parts.iter_mut() {
            let Some(name) = part
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            else {
                continue;
            };
            let target = &schemas[name];
            if target.get("additionalProperties") == Some(&Value::Bool(false)) {
                let mut open = target.clone();
                if let Some(m) = open.as_object_mut() {
                    m.remove("additionalProperties");
                }
                *part = open;
            }
        }
    }
    serde_json::from_value(v).unwrap_or(doc)
}

fn add_error_responses(op: &mut Operation, method: &str, has_id: bool) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
    if public {
        return;
    }
    let mut codes = vec![
        ("400", "Malformed JSON, bad query string or header"),
        ("401", "Missing, invalid or revoked API key"),
        ("403", "The key lacks the required scope"),
        ("422", "Validation failed; `details.field` names the field"),
        ("500", "Internal error"),
    ];
    if has_id {
        codes.push(("404", "No such object in this workspace"));
    }
    if matches!(method, "post" | "patch") {
        codes.push((
            "409",
            "Conflict (e.g. `tag_exists`, `identity_taken`, `idempotency_in_progress`)",
        ));
        codes.push(("413", "Request body too large"));
        codes.push(("415", "Unsupported Content-Type"));
    }
    for (code, description) in codes {
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build(),
                )
            });
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    Json(
        DOC.get_or_init(|| serde_json::to_value(document()).unwrap_or_default())
            .clone(),
    )
}
