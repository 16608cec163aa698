//! `POST /events` (events:write): something happened to a contact outside the messengers
//! (`order_shipped`, `payment_failed`). Flows whose trigger names the event start; runs
//! whose flow exits on it end. Processing happens in the background: 202.

use crate::api::about_contact;
use crate::auth::{Need, RequiredScope};
use crate::error::{at, ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::channel::external_id;
use voronka_core::role::Scope;
use voronka_core::{ChannelId, ContactId};

/// `events:write`, for [`Need`].
#[derive(Debug, Clone, Copy)]
pub struct EventsWrite;

impl RequiredScope for EventsWrite {
    const SCOPE: Scope = Scope::EventsWrite;
}

/// Longest event name.
pub const MAX_EVENT_NAME: usize = 64;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_event))
}

/// An event about one contact, named by `contact_id` or by `identity`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostEvent {
    /// The contact.
    #[serde(default)]
    pub contact_id: Option<ContactId>,
    /// The contact's address on a channel, instead of `contact_id`.
    #[serde(default)]
    pub identity: Option<IdentityRef>,
    /// The event's name: 1 to 64 of `a-z`, `0-9`, `_`, `.`, `-`.
    pub name: String,
    /// Data the runs it starts read as `trigger` (`{{ trigger.order_id }}`); an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// A contact named by their identity on a channel.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityRef {
    /// The channel.
    pub channel_id: ChannelId,
    /// The provider's id for the person on it.
    pub external_id: String,
}

/// The answer to an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Always true: flows react in the background.
    pub accepted: bool,
}

/// Checks an event name. Names are matched exactly against flows' triggers, so they are
/// kept to a small alphabet that cannot be mistyped by case or spacing.
pub fn event_name(name: &str) -> ApiResult<&str> {
    if voronka_core::flow::validate::is_event_name(name) {
        Ok(name)
    } else {
        Err(ApiError::validation(
            "name",
            format!(
                "`{name}` is not an event name: use 1 to {MAX_EVENT_NAME} lowercase letters a-z, digits, `_`, `.` or `-`"
            ),
        ))
    }
}

/// Records an event about a contact for the flows to react to.
#[utoipa::path(post, path = "/events", tag = "events", operation_id = "postEvent",
    request_body = PostEvent,
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 404, description = "No such contact (or identity) in this workspace", body = crate::error::ErrorBody)))]
pub async fn post_event(
    State(state): State<AppState>,
    auth: Need<EventsWrite>,
    Json(body): Json<PostEvent>,
) -> ApiResult<Response> {
    let name = event_name(&body.name)?;
    let data = match body.data {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(ApiError::validation("data", "must be a JSON object")),
    };
    let store = state.store();
    let contact = match (body.contact_id, body.identity) {
        (Some(id), None) => store.get_contact(auth.workspace, id).await?.id,
        (None, Some(identity)) => {
            let external =
                external_id(&identity.external_id).map_err(at("identity.external_id"))?;
            store
                .find_identity(auth.workspace, identity.channel_id, &external)
                .await?
                .ok_or_else(|| ApiError::not_found("contact"))?
                .contact_id
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "identity",
                "name the contact either by `contact_id` or by `identity`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::validation(
                "contact_id",
                "`contact_id` (or `identity`) is required",
            ))
        }
    };
    state
        .flows()
        .event(auth.workspace, contact, name, data)
        .await?;
    Ok(about_contact(
        StatusCode::ACCEPTED,
        &Accepted { accepted: true },
        contact,
    ))
}
