//! Contacts and everything attached to them: tags, fields, identities, consent,
//! timeline, data export and erasure.

use crate::api::query::{
    contact_filter, decode_cursor, encode_cursor, FilterParams, PageParams, QueryPairs,
    FILTER_PARAMS,
};
use crate::api::{about_contact, ApiPath};
use crate::auth::{scope, Need};
use crate::error::{at, ApiError, ApiResult};
use crate::json::Json;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use voronka_core::channel::external_id;
use voronka_core::contact::{Profile, ProfilePatch, MAX_SHORT_TEXT};
use voronka_core::event::EventKind;
use voronka_core::field::FieldValue;
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::{ChannelId, ContactId, EventId, IdentityId, WorkspaceId};
use voronka_store::{
    Contact, ContactExport, ContactQuery, Event, Identity, NewContact, NewIdentity,
    SubscriptionRecord,
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_contacts, create_contact))
        .routes(routes!(count_contacts))
        .routes(routes!(get_contact, update_contact, delete_contact))
        .routes(routes!(add_tags))
        .routes(routes!(remove_tag))
        .routes(routes!(set_fields))
        .routes(routes!(unset_field))
        .routes(routes!(list_identities, add_identity))
        .routes(routes!(remove_identity))
        .routes(routes!(subscribe))
        .routes(routes!(unsubscribe))
        .routes(routes!(subscription_history))
        .routes(routes!(list_events))
        .routes(routes!(export_contact))
        .routes(routes!(erase_contact))
}

/// A contact to create: profile attributes, source, tags, field values and identities.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContact {
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Messenger username, without `@`.
    #[serde(default)]
    pub username: Option<String>,
    /// BCP 47 language tag.
    #[serde(default)]
    pub language: Option<String>,
    /// IANA time zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Phone in E.164 form.
    #[serde(default)]
    pub phone: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Picture URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// First-touch source (`landing:spring`).
    #[serde(default)]
    pub source: Option<String>,
    /// Tag names; missing tags are created.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Custom field values by key.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Value>,
    /// Channel identities.
    #[serde(default)]
    pub identities: Vec<IdentityInput>,
}

/// An identity to attach.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// Channel of the workspace.
    pub channel_id: ChannelId,
    /// The provider's id for the person.
    pub external_id: String,
    /// Initial consent; without it the identity starts `unsubscribed`.
    #[serde(default)]
    pub subscription: Option<SubscriptionInput>,
}

/// Initial consent on an identity.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// State; `subscribed` and `pending_double_opt_in` need proof.
    pub state: SubscriptionState,
    /// Topics (empty = all).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Proof of consent.
    #[serde(default)]
    pub proof: Option<ConsentProof>,
}

/// Tags to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTags {
    /// Tag names; missing tags are created.
    pub tags: Vec<String>,
}

/// The outcome of adding tags.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TagsAdded {
    /// Names the contact did not have before.
    pub added: Vec<String>,
    /// All the contact's tags now.
    pub tags: Vec<String>,
}

/// Field values to set.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFields {
    /// Values by field key.
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Value>,
}

/// Whether something was removed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Removed {
    /// False when there was nothing to remove.
    pub removed: bool,
}

/// A subscription request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The identity to subscribe.
    pub identity_id: IdentityId,
    /// Topics (empty = all).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Proof of consent (required).
    pub proof: ConsentProof,
}

/// An unsubscription request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    /// The identity to unsubscribe.
    pub identity_id: IdentityId,
    /// How the person opted out; defaults to source `api`, now.
    #[serde(default)]
    pub proof: Option<ConsentProof>,
}

/// A page of contacts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactPage {
    /// Contacts, newest first.
    pub data: Vec<Contact>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a contact's events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// Events, newest first.
    pub data: Vec<Event>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A number of contacts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactCount {
    /// How many contacts match.
    pub count: u64,
}

/// The outcome of an erasure.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Erased {
    /// Always true.
    pub erased: bool,
    /// The contact, which remains as an anonymous record.
    pub id: ContactId,
}

fn source(v: Option<String>) -> ApiResult<Option<String>> {
    let Some(s) = v else { return Ok(None) };
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > MAX_SHORT_TEXT || s.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "source",
            format!("must be at most {MAX_SHORT_TEXT} characters, no control characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

fn tag_names(names: &[String], path: &str) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let n = voronka_core::tag::tag_name(n).map_err(at(format!("{path}[{i}]")))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

async fn field_values(
    state: &AppState,
    ws: WorkspaceId,
    fields: &BTreeMap<String, Value>,
) -> ApiResult<Vec<FieldValue>> {
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    let defs = state.store().list_fields(ws).await?;
    let mut out = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let path = format!("fields.{key}");
        let def = defs
            .iter()
            .find(|d| &d.spec.key == key)
            .ok_or_else(|| ApiError::validation(path.clone(), format!("unknown field `{key}`")))?;
        out.push(FieldValue::validate(def, value, &path)?);
    }
    Ok(out)
}

fn new_identity(input: IdentityInput, path: &str, now: Timestamp) -> ApiResult<NewIdentity> {
    let name = |n: &str| {
        if path.is_empty() {
            n.to_string()
        } else {
            format!("{path}.{n}")
        }
    };
    let external_id = external_id(&input.external_id).map_err(at(name("external_id")))?;
    let subscription = input
        .subscription
        .map(|s| SubscriptionChange::new(s.state, s.topics, s.proof, now))
        .transpose()
        .map_err(|e| e.under(&name("subscription")))?;
    Ok(NewIdentity {
        channel_id: input.channel_id,
        external_id,
        subscription,
    })
}

/// Tells the flow runtime about tags newly on a contact, so flows triggered by them
/// start. The tags are already saved, so a failure here is logged rather than turned
/// into an error the client would retry.
async fn flows_see_tags(state: &AppState, ws: WorkspaceId, contact: ContactId, tags: &[String]) {
    if tags.is_empty() {
        return;
    }
    if let Err(e) = state.flows().tags_added(ws, contact, tags).await {
        tracing::error!(error = %e, contact = %contact, "cannot tell flows about added tags");
    }
}

/// The store checks this too; checking here names the input's JSON path.
fn check_channel(channels: &[voronka_store::Channel], id: ChannelId, field: &str) -> ApiResult<()> {
    if channels.iter().any(|c| c.id == id) {
        Ok(())
    } else {
        Err(ApiError::validation(field, format!("unknown channel {id}")))
    }
}

/// Lists contacts, newest first, filtered.
#[utoipa::path(get, path = "/contacts", tag = "contacts", operation_id = "listContacts",
    params(FilterParams, PageParams),
    responses((status = 200, description = "A page of contacts", body = ContactPage)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<ContactPage>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&[FILTER_PARAMS, &["limit", "cursor"]].concat())?;
    let limit = q.limit()?;
    let before = q
        .one("cursor")?
        .map(decode_cursor)
        .transpose()?
        .map(ContactId);
    let filter = contact_filter(&state, auth.workspace, &q).await?;
    let page = state
        .store()
        .list_contacts(
            auth.workspace,
            &ContactQuery {
                filter,
                before,
                limit,
            },
        )
        .await?;
    Ok(axum::Json(ContactPage {
        data: page.items,
        next_cursor: page.next.map(|id| encode_cursor(id.0)),
    }))
}

/// Counts contacts matching the filter.
#[utoipa::path(get, path = "/contacts/count", tag = "contacts", operation_id = "countContacts",
    params(FilterParams),
    responses((status = 200, description = "The number of matching contacts", body = ContactCount)))]
pub async fn count_contacts(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<ContactCount>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(FILTER_PARAMS)?;
    let filter = contact_filter(&state, auth.workspace, &q).await?;
    let count = state
        .store()
        .count_contacts(auth.workspace, &filter)
        .await?;
    Ok(axum::Json(ContactCount { count }))
}

/// Creates a contact with its tags, fields and identities.
#[utoipa::path(post, path = "/contacts", tag = "contacts", operation_id = "createContact",
    request_body = CreateContact,
    responses((status = 201, description = "Created", body = Contact)))]
pub async fn create_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    Json(body): Json<CreateContact>,
) -> ApiResult<Response> {
    let now = Timestamp::now();
    let profile = Profile {
        first_name: body.first_name,
        last_name: body.last_name,
        username: body.username,
        language: body.language,
        time_zone: body.time_zone,
        phone: body.phone,
        email: body.email,
        avatar_url: body.avatar_url,
    }
    .validated()?;
    let source = source(body.source)?;
    let tags = tag_names(&body.tags, "tags")?;
    let fields = field_values(&state, auth.workspace, &body.fields).await?;
    if !body.identities.is_empty() {
        let channels = state.store().list_channels(auth.workspace).await?;
        for (i, input) in body.identities.iter().enumerate() {
            check_channel(
                &channels,
                input.channel_id,
                &format!("identities[{i}].channel_id"),
            )?;
        }
    }
    let identities = body
        .identities
        .into_iter()
        .enumerate()
        .map(|(i, input)| new_identity(input, &format!("identities[{i}]"), now))
        .collect::<ApiResult<Vec<_>>>()?;
    let contact = state
        .store()
        .create_contact(
            auth.workspace,
            NewContact {
                profile,
                source,
                tags,
                fields,
                identities,
            },
        )
        .await?;
    flows_see_tags(&state, auth.workspace, contact.id, &contact.tags).await;
    Ok(about_contact(StatusCode::CREATED, &contact, contact.id))
}

/// Reads a contact.
#[utoipa::path(get, path = "/contacts/{id}", tag = "contacts", operation_id = "getContact",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "The contact", body = Contact)))]
pub async fn get_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Contact>> {
    Ok(axum::Json(
        state
            .store()
            .get_contact(auth.workspace, ContactId(id))
            .await?,
    ))
}

/// Changes profile attributes: an absent key is left alone, `null` clears.
#[utoipa::path(patch, path = "/contacts/{id}", tag = "contacts", operation_id = "updateContact",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = ProfilePatch,
    responses((status = 200, description = "The changed contact", body = Contact)))]
pub async fn update_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(patch): Json<ProfilePatch>,
) -> ApiResult<axum::Json<Contact>> {
    let store = state.store();
    let current = store.get_contact(auth.workspace, ContactId(id)).await?;
    if patch.is_empty() {
        return Ok(axum::Json(current));
    }
    let profile = patch.apply(&current.profile)?;
    Ok(axum::Json(
        store
            .update_profile(auth.workspace, ContactId(id), profile)
            .await?,
    ))
}

/// Deletes a contact and everything attached to it.
#[utoipa::path(delete, path = "/contacts/{id}", tag = "contacts", operation_id = "deleteContact",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state
        .store()
        .delete_contact(auth.workspace, ContactId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds tags to a contact.
#[utoipa::path(post, path = "/contacts/{id}/tags", tag = "contacts", operation_id = "addContactTags",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = AddTags,
    responses((status = 200, description = "Tags added", body = TagsAdded)))]
pub async fn add_tags(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<AddTags>,
) -> ApiResult<Response> {
    let names = tag_names(&body.tags, "tags")?;
    let store = state.store();
    let added = store
        .add_tags(auth.workspace, ContactId(id), &names)
        .await?;
    flows_see_tags(&state, auth.workspace, ContactId(id), &added).await;
    let contact = store.get_contact(auth.workspace, ContactId(id)).await?;
    Ok(about_contact(
        StatusCode::OK,
        &TagsAdded {
            added,
            tags: contact.tags,
        },
        contact.id,
    ))
}

/// Removes a tag from a contact.
#[utoipa::path(delete, path = "/contacts/{id}/tags/{name}", tag = "contacts", operation_id = "removeContactTag",
    params(("id" = i64, Path, description = "Contact id"), ("name" = String, Path, description = "Tag name")),
    responses((status = 200, description = "Whether the contact had the tag", body = Removed)))]
pub async fn remove_tag(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath((id, name)): ApiPath<(i64, String)>,
) -> ApiResult<axum::Json<Removed>> {
    let removed = state
        .store()
        .remove_tag(auth.workspace, ContactId(id), &name)
        .await?;
    Ok(axum::Json(Removed { removed }))
}

/// Sets custom field values on a contact.
#[utoipa::path(post, path = "/contacts/{id}/fields", tag = "contacts", operation_id = "setContactFields",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = SetFields,
    responses((status = 200, description = "The changed contact", body = Contact)))]
pub async fn set_fields(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<SetFields>,
) -> ApiResult<Response> {
    let store = state.store();
    // Checked first so another workspace's contact is 404 whatever the body says.
    store.get_contact(auth.workspace, ContactId(id)).await?;
    let values = field_values(&state, auth.workspace, &body.fields).await?;
    store
        .set_fields(auth.workspace, ContactId(id), values)
        .await?;
    let contact = store.get_contact(auth.workspace, ContactId(id)).await?;
    Ok(about_contact(StatusCode::OK, &contact, contact.id))
}

/// Unsets a custom field on a contact.
#[utoipa::path(delete, path = "/contacts/{id}/fields/{key}", tag = "contacts", operation_id = "unsetContactField",
    params(("id" = i64, Path, description = "Contact id"), ("key" = String, Path, description = "Field key")),
    responses((status = 200, description = "Whether the field had a value", body = Removed)))]
pub async fn unset_field(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath((id, key)): ApiPath<(i64, String)>,
) -> ApiResult<axum::Json<Removed>> {
    let store = state.store();
    store.get_contact(auth.workspace, ContactId(id)).await?;
    let defs = store.list_fields(auth.workspace).await?;
    let def = defs
        .iter()
        .find(|d| d.spec.key == key)
        .ok_or_else(|| ApiError::not_found("field"))?;
    let removed = store
        .unset_field(auth.workspace, ContactId(id), def.id)
        .await?;
    Ok(axum::Json(Removed { removed }))
}

/// Lists a contact's identities with their subscriptions.
#[utoipa::path(get, path = "/contacts/{id}/identities", tag = "contacts", operation_id = "listContactIdentities",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "Identities", body = Vec<Identity>)))]
pub async fn list_identities(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Vec<Identity>>> {
    let contact = state
        .store()
        .get_contact(auth.workspace, ContactId(id))
        .await?;
    Ok(axum::Json(contact.identities))
}

/// Attaches an identity to a contact.
#[utoipa::path(post, path = "/contacts/{id}/identities", tag = "contacts", operation_id = "addContactIdentity",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = IdentityInput,
    responses((status = 201, description = "Attached", body = Identity)))]
pub async fn add_identity(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<IdentityInput>,
) -> ApiResult<Response> {
    let store = state.store();
    store.get_contact(auth.workspace, ContactId(id)).await?;
    check_channel(
        &store.list_channels(auth.workspace).await?,
        body.channel_id,
        "channel_id",
    )?;
    let new = new_identity(body, "", Timestamp::now())?;
    let identity = store
        .add_identity(auth.workspace, ContactId(id), new)
        .await?;
    Ok(about_contact(StatusCode::CREATED, &identity, ContactId(id)))
}

/// Detaches an identity from a contact.
#[utoipa::path(delete, path = "/contacts/{id}/identities/{identity_id}", tag = "contacts",
    operation_id = "removeContactIdentity",
    params(("id" = i64, Path, description = "Contact id"), ("identity_id" = i64, Path, description = "Identity id")),
    responses((status = 204, description = "Detached")))]
pub async fn remove_identity(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath((id, identity)): ApiPath<(i64, i64)>,
) -> ApiResult<StatusCode> {
    state
        .store()
        .remove_identity(auth.workspace, ContactId(id), IdentityId(identity))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Subscribes an identity, with proof of consent.
#[utoipa::path(post, path = "/contacts/{id}/subscribe", tag = "contacts", operation_id = "subscribeContact",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = Subscribe,
    responses((status = 200, description = "The identity with its new subscription", body = Identity)))]
pub async fn subscribe(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<Subscribe>,
) -> ApiResult<Response> {
    let change = SubscriptionChange::new(
        SubscriptionState::Subscribed,
        body.topics,
        Some(body.proof),
        Timestamp::now(),
    )?;
    let identity = state
        .store()
        .set_subscription(auth.workspace, ContactId(id), body.identity_id, change)
        .await?;
    Ok(about_contact(StatusCode::OK, &identity, ContactId(id)))
}

/// Unsubscribes an identity. Without proof, the change is recorded as source `api`, now.
#[utoipa::path(post, path = "/contacts/{id}/unsubscribe", tag = "contacts", operation_id = "unsubscribeContact",
    params(("id" = i64, Path, description = "Contact id")),
    request_body = Unsubscribe,
    responses((status = 200, description = "The identity with its new subscription", body = Identity)))]
pub async fn unsubscribe(
    State(state): State<AppState>,
    auth: Need<scope::ContactsWrite>,
    ApiPath(id): ApiPath<i64>,
    Json(body): Json<Unsubscribe>,
) -> ApiResult<Response> {
    let now = Timestamp::now();
    let proof = body.proof.unwrap_or_else(|| ConsentProof {
        source: "api".into(),
        at: now,
        text_shown: None,
        ip: None,
        message_id: None,
    });
    let change = SubscriptionChange::new(
        SubscriptionState::Unsubscribed,
        Vec::new(),
        Some(proof),
        now,
    )?;
    let identity = state
        .store()
        .set_subscription(auth.workspace, ContactId(id), body.identity_id, change)
        .await?;
    Ok(about_contact(StatusCode::OK, &identity, ContactId(id)))
}

/// A contact's consent history, oldest first.
#[utoipa::path(get, path = "/contacts/{id}/subscriptions", tag = "contacts", operation_id = "contactSubscriptionHistory",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "History", body = Vec<SubscriptionRecord>)))]
pub async fn subscription_history(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<axum::Json<Vec<SubscriptionRecord>>> {
    Ok(axum::Json(
        state
            .store()
            .subscription_history(auth.workspace, ContactId(id))
            .await?,
    ))
}

/// Paging of a timeline (documentation; parsed from the raw query).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventParams {
    /// `next_cursor` of the previous page.
    before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
}

/// A contact's timeline, newest first.
#[utoipa::path(get, path = "/contacts/{id}/events", tag = "contacts", operation_id = "listContactEvents",
    params(("id" = i64, Path, description = "Contact id"), EventParams),
    responses((status = 200, description = "A page of events", body = EventPage)))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::Json<EventPage>> {
    let q = QueryPairs::parse(raw.as_deref());
    q.only(&["before", "limit"])?;
    let limit = q.limit()?;
    let before = q
        .one("before")?
        .map(|c| {
            decode_cursor(c).map_err(|_| {
                crate::api::query::bad_param("before", "is not a cursor returned by this API")
            })
        })
        .transpose()?
        .map(EventId);
    let page = state
        .store()
        .list_events(auth.workspace, ContactId(id), before, limit)
        .await?;
    Ok(axum::Json(EventPage {
        data: page.items,
        next_cursor: page.next.map(|id| encode_cursor(id.0)),
    }))
}

/// Everything stored about a contact (data-subject access request), as a download.
#[utoipa::path(get, path = "/contacts/{id}/export", tag = "contacts", operation_id = "exportContact",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "Profile, tags, fields, identities, consent history and events", body = ContactExport)))]
pub async fn export_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsRead>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    let store = state.store();
    // Recorded first (after checking the contact exists) so the export shows it too.
    store.get_contact(auth.workspace, ContactId(id)).await?;
    store
        .append_event(
            auth.workspace,
            ContactId(id),
            EventKind::DataExported,
            json!({"via": "api"}),
        )
        .await?;
    let export = store.export_contact(auth.workspace, ContactId(id)).await?;
    let mut res = axum::Json(export).into_response();
    let disposition = format!("attachment; filename=\"contact-{id}.json\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// Erases a contact's personal data; the contact stays as an anonymous record.
#[utoipa::path(post, path = "/contacts/{id}/erase", tag = "contacts", operation_id = "eraseContact",
    params(("id" = i64, Path, description = "Contact id")),
    responses((status = 200, description = "Erased", body = Erased)))]
pub async fn erase_contact(
    State(state): State<AppState>,
    auth: Need<scope::ContactsErase>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    state
        .store()
        .erase_contact(auth.workspace, ContactId(id))
        .await?;
    Ok(about_contact(
        StatusCode::OK,
        &Erased {
            erased: true,
            id: ContactId(id),
        },
        ContactId(id),
    ))
}
