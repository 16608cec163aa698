//! Records the store reads and writes. Inputs (`New*`, patches) carry already-validated
//! domain values; outputs are plain data that the API serializes.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use voronka_core::channel::{ChannelKind, ChannelStatus};
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::field::FieldValue;
use voronka_core::filter::ContactFilter;
use voronka_core::role::{Role, Scope};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::*;

/// One business: owns every other record.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Workspace {
    /// Id.
    pub id: WorkspaceId,
    /// Display name.
    pub name: String,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A person who logs in to the admin UI. Users are global; membership gives a role in a
/// workspace.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Login e-mail (unique).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A user's membership of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The user.
    pub user: User,
    /// Their role in the workspace.
    pub role: Role,
}

/// What is needed to check a login.
#[derive(Debug, Clone)]
pub struct UserLogin {
    /// The user.
    pub user: User,
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// A user to create (or, if the e-mail exists, to add to the workspace).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Argon2 PHC string (from `voronka_core::password::hash`).
    pub password_hash: String,
    /// Role in the workspace.
    pub role: Role,
}

/// An API key's public record (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// Id.
    pub id: ApiKeyId,
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// What the key is for.
    pub name: String,
    /// Public prefix, shown in lists to recognise the key.
    pub prefix: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last time the key authenticated a request (updated at most once a minute).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// When the key was revoked; a revoked key authenticates nothing.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

/// An API key with its stored hash, for authentication.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    /// The key.
    pub key: ApiKey,
    /// SHA-256 of the token, hex.
    pub secret_hash: String,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// What the key is for.
    pub name: String,
    /// Public prefix (from `voronka_core::apikey::generate`).
    pub prefix: String,
    /// Hash of the token.
    pub secret_hash: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
}

/// A connected account in a messenger.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Channel {
    /// Id.
    pub id: ChannelId,
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Provider.
    pub kind: ChannelKind,
    /// Display name.
    pub name: String,
    /// Whether it works.
    pub status: ChannelStatus,
    /// Encrypted credentials; never serialized.
    #[serde(skip)]
    #[schema(ignore)]
    pub credentials: Sealed,
    /// STOP/START words, welcome, auto-reply, consent text.
    pub settings: voronka_core::channel::ChannelSettings,
    /// The adapter's state: mode, account name, last error.
    pub runtime: crate::messaging::ChannelRuntime,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A channel to create.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// Provider.
    pub kind: ChannelKind,
    /// Display name (validated).
    pub name: String,
    /// Encrypted credentials.
    pub credentials: Sealed,
    /// Behaviour settings.
    pub settings: voronka_core::channel::ChannelSettings,
}

/// Changes to a channel; `None` leaves an attribute alone.
#[derive(Debug, Clone, Default)]
pub struct ChannelPatch {
    /// New name.
    pub name: Option<String>,
    /// New status.
    pub status: Option<ChannelStatus>,
    /// New encrypted credentials.
    pub credentials: Option<Sealed>,
    /// New behaviour settings (replace the old ones entirely).
    pub settings: Option<voronka_core::channel::ChannelSettings>,
    /// New adapter state (replaces the old one entirely).
    pub runtime: Option<crate::messaging::ChannelRuntime>,
}

/// A tag with the number of contacts carrying it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Tag {
    /// Id.
    pub id: TagId,
    /// Name (unique in the workspace).
    pub name: String,
    /// Contacts carrying the tag.
    pub contacts: u64,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// The current consent on one identity.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    /// State.
    pub state: SubscriptionState,
    /// Topics opted into (empty = all).
    pub topics: Vec<String>,
    /// Proof of the latest change, if any.
    pub proof: Option<ConsentProof>,
    /// Time of the latest change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A contact's address on one channel, with its subscription.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// Id.
    pub id: IdentityId,
    /// Owning contact.
    pub contact_id: ContactId,
    /// Channel.
    pub channel_id: ChannelId,
    /// The provider's id for the person (chat id, user id, phone, e-mail).
    pub external_id: String,
    /// Consent on this identity.
    pub subscription: Subscription,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// An identity to attach. Without a subscription change it starts `unsubscribed`.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    /// Channel (must belong to the workspace).
    pub channel_id: ChannelId,
    /// Provider id (validated).
    pub external_id: String,
    /// Initial consent.
    pub subscription: Option<SubscriptionChange>,
}

/// One entry of the append-only subscription history.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SubscriptionRecord {
    /// Id.
    pub id: i64,
    /// The identity (absent once erased).
    pub identity_id: Option<IdentityId>,
    /// The channel.
    pub channel_id: ChannelId,
    /// New state.
    pub state: SubscriptionState,
    /// New topics.
    pub topics: Vec<String>,
    /// Proof given with the change.
    pub proof: Option<ConsentProof>,
    /// When it was recorded.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A contact with everything attached to it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Contact {
    /// Id.
    pub id: ContactId,
    /// Profile.
    #[serde(flatten)]
    pub profile: Profile,
    /// First-touch source (`import:crm`, `ref:spring`).
    pub source: Option<String>,
    /// Tag names, sorted.
    pub tags: Vec<String>,
    /// Custom field values by key.
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Value>,
    /// Channel identities with their subscriptions.
    pub identities: Vec<Identity>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Last inbound activity.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_activity_at: Option<Timestamp>,
    /// When personal data was erased (the contact remains as an anonymous record).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub erased_at: Option<Timestamp>,
}

/// A contact to create.
#[derive(Debug, Clone, Default)]
pub struct NewContact {
    /// Profile (validated).
    pub profile: Profile,
    /// First-touch source.
    pub source: Option<String>,
    /// Tag names (validated); missing tags are created.
    pub tags: Vec<String>,
    /// Field values (validated against their definitions).
    pub fields: Vec<FieldValue>,
    /// Identities to attach.
    pub identities: Vec<NewIdentity>,
}

/// An entry of a contact's event log.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Id (increasing).
    pub id: EventId,
    /// The contact.
    pub contact_id: ContactId,
    /// What happened (`tag_added`, `subscription_changed`…).
    pub kind: String,
    /// Details.
    #[schema(value_type = Object)]
    pub data: Value,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Everything stored about one person (data-subject access request).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ContactExport {
    /// The contact with profile, tags, fields and identities.
    pub contact: Contact,
    /// Every consent change.
    pub subscription_history: Vec<SubscriptionRecord>,
    /// Every event, oldest first.
    pub events: Vec<Event>,
}

/// Which contacts to list, and where to continue.
#[derive(Debug, Clone, Default)]
pub struct ContactQuery {
    /// Filter.
    pub filter: ContactFilter,
    /// Continue after this id (lists go newest first: ids below it).
    pub before: Option<ContactId>,
    /// Page size (1–1000).
    pub limit: u32,
}

/// A page of results and the cursor to the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    /// Items.
    pub items: Vec<T>,
    /// Pass as the next `before`; `None` on the last page.
    pub next: Option<C>,
}

/// One CSV row, parsed and validated, ready to upsert.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// 1-based line number in the file, for reports.
    pub line: u64,
    /// Profile attributes present in the row; `None` attributes are left alone on update.
    pub profile: Profile,
    /// First-touch source for new contacts.
    pub source: Option<String>,
    /// Channel identity, if the row has one.
    pub identity: Option<(ChannelId, String)>,
    /// Consent for the identity. `None` means "unknown": a new identity starts
    /// unsubscribed and an existing one is left as it is.
    pub subscription: Option<SubscriptionChange>,
    /// Tags to add.
    pub tags: Vec<String>,
    /// Fields to set.
    pub fields: Vec<FieldValue>,
}

/// What an import did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    /// A new contact was created.
    Created,
    /// An existing contact was changed.
    Updated,
    /// An existing contact already had all of it.
    Unchanged,
}

/// The result of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The row's line.
    pub line: u64,
    /// What happened, or why the row was refused.
    pub result: Result<(ContactId, ImportAction), String>,
}

/// A saved answer for an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedResponse {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

/// What the store knows about an `Idempotency-Key` when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First time: the key is now reserved; run the request and complete it.
    Started,
    /// Seen and finished: answer with the saved response.
    Replay(SavedResponse),
    /// Seen and still running (or crashed mid-way less than a minute ago).
    InProgress,
    /// The key was used with a different request.
    Mismatch,
}
