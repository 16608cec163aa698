//! Voronka's storage layer: one trait per area, implemented on SQLite (the embedded
//! default) and on PostgreSQL (scale-out).
//!
//! Every method that touches business data takes the [`WorkspaceId`] first and every
//! query filters by it, so isolation between workspaces is a property of this API, not a
//! habit of its callers: another workspace's object is simply [`StoreError::NotFound`].
//! Changes to a contact append to its event log in the same transaction.

pub mod broadcasts;
pub mod error;
pub mod flows;
pub mod messaging;
pub mod model;
pub mod postgres;
pub mod segments;
pub mod sqlite;
pub mod testing;

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use std::sync::Arc;
use voronka_core::event::EventKind;
use voronka_core::field::FieldDefinition;
use voronka_core::field::{FieldSpec, FieldValue};
use voronka_core::filter::ContactFilter;
use voronka_core::subscription::SubscriptionChange;
use voronka_core::*;

pub use broadcasts::*;
pub use error::{Result, StoreError};
pub use flows::*;
pub use messaging::*;
pub use model::*;
pub use segments::*;

/// Workspaces.
#[async_trait]
pub trait WorkspaceStore {
    /// Creates a workspace.
    async fn create_workspace(&self, name: &str) -> Result<Workspace>;
    /// Reads a workspace.
    async fn get_workspace(&self, id: WorkspaceId) -> Result<Workspace>;
    /// Lists all workspaces (for operators of the install).
    async fn list_workspaces(&self) -> Result<Vec<Workspace>>;
}

/// Users and their memberships.
#[async_trait]
pub trait UserStore {
    /// Creates a user and makes them a member of `ws`; if the e-mail is already a user,
    /// adds the membership (keeping their password). Conflict `member_exists` if they
    /// are already a member.
    async fn create_user(&self, ws: WorkspaceId, new: NewUser) -> Result<Member>;
    /// Finds a user by login e-mail (case-insensitive), with the password hash.
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserLogin>>;
    /// Lists a workspace's members.
    async fn list_members(&self, ws: WorkspaceId) -> Result<Vec<Member>>;
}

/// API keys.
#[async_trait]
pub trait ApiKeyStore {
    /// Stores a new key.
    async fn create_api_key(&self, ws: WorkspaceId, new: NewApiKey) -> Result<ApiKey>;
    /// Finds a key by its public prefix, in any workspace (authentication).
    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyAuth>>;
    /// Records use of a key.
    async fn touch_api_key(&self, id: ApiKeyId, at: Timestamp) -> Result<()>;
    /// Lists a workspace's keys, revoked ones included.
    async fn list_api_keys(&self, ws: WorkspaceId) -> Result<Vec<ApiKey>>;
    /// Revokes a key (idempotent: revoking again keeps the first time).
    async fn revoke_api_key(&self, ws: WorkspaceId, id: ApiKeyId) -> Result<ApiKey>;
}

/// Channels.
#[async_trait]
pub trait ChannelStore {
    /// Connects a channel.
    async fn create_channel(&self, ws: WorkspaceId, new: NewChannel) -> Result<Channel>;
    /// Reads a channel.
    async fn get_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<Channel>;
    /// Lists channels.
    async fn list_channels(&self, ws: WorkspaceId) -> Result<Vec<Channel>>;
    /// Changes a channel.
    async fn update_channel(
        &self,
        ws: WorkspaceId,
        id: ChannelId,
        patch: ChannelPatch,
    ) -> Result<Channel>;
    /// Removes a channel; conflict `channel_in_use` while identities use it.
    async fn delete_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<()>;
}

/// Tags and custom field definitions (the workspace's "schema").
#[async_trait]
pub trait SchemaStore {
    /// Creates a tag; conflict `tag_exists` if the name is taken.
    async fn create_tag(&self, ws: WorkspaceId, name: &str) -> Result<Tag>;
    /// Lists tags with contact counts, by name.
    async fn list_tags(&self, ws: WorkspaceId) -> Result<Vec<Tag>>;
    /// Deletes a tag and removes it from every contact.
    async fn delete_tag(&self, ws: WorkspaceId, id: TagId) -> Result<()>;
    /// Creates a field definition; conflict `field_exists` if the key is taken.
    async fn create_field(&self, ws: WorkspaceId, spec: FieldSpec) -> Result<FieldDefinition>;
    /// Lists field definitions, by key.
    async fn list_fields(&self, ws: WorkspaceId) -> Result<Vec<FieldDefinition>>;
    /// Deletes a field definition and its values.
    async fn delete_field(&self, ws: WorkspaceId, id: FieldId) -> Result<()>;
}

/// Contacts, identities, subscriptions, tags and fields on contacts, events, import.
#[async_trait]
pub trait ContactStore {
    /// Creates a contact with its tags, fields and identities in one transaction.
    /// Conflict `identity_taken` if an identity already belongs to someone.
    async fn create_contact(&self, ws: WorkspaceId, new: NewContact) -> Result<Contact>;
    /// Reads a contact with tags, fields and identities.
    async fn get_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<Contact>;
    /// Replaces the profile (the caller applied its patch); records `profile_updated`
    /// with the changed attribute names when anything changed.
    async fn update_profile(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        profile: voronka_core::contact::Profile,
    ) -> Result<Contact>;
    /// Deletes a contact and everything attached to it.
    async fn delete_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()>;
    /// Lists contacts newest first, filtered, one page at a time.
    async fn list_contacts(
        &self,
        ws: WorkspaceId,
        query: &ContactQuery,
    ) -> Result<Page<Contact, ContactId>>;
    /// Counts contacts matching a filter, in the database (never by loading them).
    async fn count_contacts(&self, ws: WorkspaceId, filter: &ContactFilter) -> Result<u64>;
    /// Adds tags (creating missing ones); returns the names that were newly added.
    async fn add_tags(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        names: &[String],
    ) -> Result<Vec<String>>;
    /// Removes a tag by name; returns whether the contact had it.
    async fn remove_tag(&self, ws: WorkspaceId, id: ContactId, name: &str) -> Result<bool>;
    /// Sets field values; records `field_set` for each value that changed.
    async fn set_fields(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        values: Vec<FieldValue>,
    ) -> Result<()>;
    /// Unsets a field; returns whether it had a value.
    async fn unset_field(&self, ws: WorkspaceId, id: ContactId, field: FieldId) -> Result<bool>;
    /// Attaches an identity; conflict `identity_taken` if the channel address is used.
    async fn add_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        new: NewIdentity,
    ) -> Result<Identity>;
    /// Detaches an identity.
    async fn remove_identity(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
    ) -> Result<()>;
    /// Changes the subscription on an identity, appending to its history.
    async fn set_subscription(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        identity: IdentityId,
        change: SubscriptionChange,
    ) -> Result<Identity>;
    /// The contact's consent history, oldest first.
    async fn subscription_history(
        &self,
        ws: WorkspaceId,
        id: ContactId,
    ) -> Result<Vec<SubscriptionRecord>>;
    /// Appends an event to the contact's log.
    async fn append_event(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        kind: EventKind,
        data: Value,
    ) -> Result<Event>;
    /// The contact's events, newest first, one page at a time.
    async fn list_events(
        &self,
        ws: WorkspaceId,
        id: ContactId,
        before: Option<EventId>,
        limit: u32,
    ) -> Result<Page<Event, EventId>>;
    /// Everything stored about a contact.
    async fn export_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<ContactExport>;
    /// Erases a contact's personal data: profile, identities, field values, tags,
    /// consent proof, event details, saved API answers about them, and their conversation
    /// (stored inbound events and outgoing messages are emptied; unsent ones fail with
    /// `contact erased`). Keeps an anonymous contact row, the kinds and times of its
    /// events, its consent states and its outbox rows, so counts stay right. Idempotent.
    async fn erase_contact(&self, ws: WorkspaceId, id: ContactId) -> Result<()>;
    /// Upserts a batch of import rows (matching by identity, then phone, then e-mail).
    /// Each row succeeds or fails on its own; re-importing the same rows changes nothing.
    async fn import_contacts(
        &self,
        ws: WorkspaceId,
        rows: Vec<ImportRow>,
    ) -> Result<Vec<ImportOutcome>>;
}

/// Idempotency keys for `POST` requests.
#[async_trait]
pub trait IdempotencyStore {
    /// Reserves `key` for a request with `request_hash`, or reports what is known of it.
    async fn idempotency_begin(
        &self,
        ws: WorkspaceId,
        key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyBegin>;
    /// Saves the response of a started request. `contact` links it to a contact so
    /// erasure can delete it.
    async fn idempotency_complete(
        &self,
        ws: WorkspaceId,
        key: &str,
        response: SavedResponse,
        contact: Option<ContactId>,
    ) -> Result<()>;
    /// Releases a reservation whose request failed without effect, so it can be retried.
    async fn idempotency_abort(&self, ws: WorkspaceId, key: &str) -> Result<()>;
    /// Deletes records older than `before`; returns how many.
    async fn idempotency_purge(&self, before: Timestamp) -> Result<u64>;
}

/// The messaging pipeline: inbound provider events stored before they are acknowledged
/// and processed from the store; the outbox every outgoing message passes through.
#[async_trait]
pub trait MessagingStore {
    /// Reads a channel by id alone, whatever its workspace: a webhook names only the
    /// channel. NotFound when absent.
    async fn find_channel(&self, id: ChannelId) -> Result<Channel>;
    /// Every channel of every workspace, by id (the server starts their adapters).
    async fn all_channels(&self) -> Result<Vec<Channel>>;
    /// Stores inbound events of one channel in one transaction. An event whose
    /// `provider_event_id` is already stored for the channel is a provider retry: it is
    /// not stored again and its slot in the answer is `None`. NotFound `channel` when the
    /// channel is not the workspace's.
    async fn record_inbound(
        &self,
        ws: WorkspaceId,
        channel: ChannelId,
        events: Vec<voronka_core::message::InboundEvent>,
    ) -> Result<Vec<Option<InboundId>>>;
    /// Pending inbound events with id greater than `after`, oldest first (at most
    /// `limit`, itself capped to 1–10 000).
    async fn pending_inbound(
        &self,
        after: Option<InboundId>,
        limit: u32,
    ) -> Result<Vec<InboundRecord>>;
    /// Processes one inbound event in one transaction: finds or creates the contact and
    /// identity, changes the subscription, appends events, queues replies, and marks the
    /// event done. An event no longer pending is left alone (`already_done`, with the
    /// contact and identity recorded when it was processed, or 0 for one that failed).
    /// NotFound `inbound_event` when the event is not the workspace's; Invalid when the
    /// sender's external id is.
    async fn apply_inbound(
        &self,
        ws: WorkspaceId,
        id: InboundId,
        apply: InboundApply,
    ) -> Result<InboundApplied>;
    /// Records a processing failure: `retry` keeps the event pending (attempts + 1),
    /// otherwise it is marked failed with the error. An event no longer pending is left
    /// alone; NotFound `inbound_event` when there is no such event.
    async fn fail_inbound(&self, id: InboundId, error: &str, retry: bool) -> Result<()>;
    /// The identity with this provider id on a channel of the workspace.
    async fn find_identity(
        &self,
        ws: WorkspaceId,
        channel: ChannelId,
        external_id: &str,
    ) -> Result<Option<Identity>>;
    /// Queues a message to a contact, enforcing consent in the same transaction:
    /// Conflict `no_identity_on_channel` if the contact has no identity on the channel,
    /// `blocked` if they blocked it, `not_subscribed` if the purpose needs an opt-in they
    /// have not given (marketing and transactional both need `subscribed`), and
    /// `contact_erased` for an erased contact. Records `message_queued`. NotFound
    /// `contact` or `channel` when either is not the workspace's.
    async fn enqueue_message(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        new: NewOutbound,
    ) -> Result<OutboxItem>;
    /// Reads one outgoing message; NotFound `message`.
    async fn get_outbound(&self, ws: WorkspaceId, id: OutboxId) -> Result<OutboxItem>;
    /// The newest message to an identity that carries payload buttons (to map a typed
    /// "2" or a reply-keyboard label back to its payload).
    async fn last_outbound_with_choices(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
    ) -> Result<Option<OutboxItem>>;
    /// Claims up to `limit` due messages of one channel, oldest `run_at` first: queued
    /// ones whose time has come and `sending` ones whose lease expired (a worker died).
    /// Claimed rows become `sending` until now + `lease`, attempts + 1. On PostgreSQL
    /// with `FOR UPDATE SKIP LOCKED`.
    async fn claim_outbox(
        &self,
        channel: ChannelId,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<OutboxItem>>;
    /// Channels that have queued (or lease-expired) messages, with the earliest time one
    /// of them is due.
    async fn due_channels(&self) -> Result<Vec<(ChannelId, Timestamp)>>;
    /// Records the outcomes of send attempts in one transaction (see [`SendOutcome`]).
    /// Results for rows that are not `sending` any more are ignored.
    async fn complete_outbox(&self, results: Vec<OutboxResult>) -> Result<()>;
    /// The latest `limit` items of the conversation with one identity, oldest first:
    /// processed inbound messages, presses and starts, and outgoing messages. NotFound
    /// `identity` when the identity is not the workspace's.
    async fn conversation(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        limit: u32,
    ) -> Result<Vec<ConversationItem>>;
    /// Outbox rows by state (for one channel or all): `(state, count)` for every state,
    /// zeros included, in the order queued, sending, sent, failed.
    async fn outbox_counts(&self, channel: Option<ChannelId>) -> Result<Vec<(OutboxState, u64)>>;
}

/// Broadcasts: the document and its life cycle, planning recipients in batches, feeding
/// due recipients into the outbox, engagement, follow-ups, recall and the report's
/// counters.
#[async_trait]
pub trait BroadcastStore {
    /// Creates a draft. Conflict `name_taken` when the name is used in the workspace.
    async fn create_broadcast(&self, ws: WorkspaceId, name: &str, spec: Value)
        -> Result<Broadcast>;
    /// Reads one broadcast; NotFound `broadcast`.
    async fn get_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast>;
    /// Every broadcast of the workspace, newest first.
    async fn list_broadcasts(&self, ws: WorkspaceId) -> Result<Vec<Broadcast>>;
    /// Edits a draft (or a scheduled broadcast, which goes back to draft). Conflict
    /// `stale_revision` when `revision` is not the current one, `not_editable` once it is
    /// sending or over, `name_taken`.
    async fn update_broadcast(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        revision: Option<i64>,
        name: Option<String>,
        spec: Option<Value>,
    ) -> Result<Broadcast>;
    /// Deletes a draft or a cancelled/finished broadcast with its recipients; Conflict
    /// `not_deletable` while it is scheduled, sending or paused.
    async fn delete_broadcast(&self, ws: WorkspaceId, id: BroadcastId) -> Result<()>;
    /// Moves a broadcast from one of `from` to `to` in one guarded statement (Conflict
    /// `invalid_transition` naming the current status otherwise). `send_at` is stored
    /// when given. Side effects in the same transaction: to `sending` sets `started_at`
    /// (first time); to `paused` deletes the broadcast's outbox rows still `queued` and
    /// puts their recipients back to `planned` (rows already `sending` finish, so nothing
    /// is sent twice); to `cancelled` does the same and then skips every `planned`
    /// recipient as `cancelled` (a large broadcast's rows in further short transactions
    /// after the status change; nothing can queue them meanwhile); to
    /// `finished`/`cancelled` sets `finished_at`.
    async fn transition_broadcast(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        from: &[voronka_core::broadcast::BroadcastStatus],
        to: voronka_core::broadcast::BroadcastStatus,
        send_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Broadcast>;
    /// Broadcasts of every workspace the runtime must act on: `scheduled` ones whose
    /// `send_at` has come, and every `sending` one.
    async fn active_broadcasts(&self, now: Timestamp) -> Result<Vec<Broadcast>>;
    /// The earliest `send_at` of a scheduled broadcast (to sleep until it).
    async fn next_scheduled(&self) -> Result<Option<Timestamp>>;
    /// Plans the next batch of contacts after `plan_cursor` (contact id order): inserts
    /// their recipient rows, bumps the counters and moves the cursor in one transaction,
    /// so a crash between batches re-plans nothing twice. Sets `planned_at` (and `done`)
    /// when no contact is left; once it is set, returns `done` and changes nothing. Only
    /// while the broadcast is `sending` (Conflict `not_sending` otherwise).
    async fn plan_broadcast_batch(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &PlanRequest,
    ) -> Result<PlanProgress>;
    /// Distinct time zones (as stored on the contacts; `None` = none set) of the planned
    /// rows, for local-time schedules.
    async fn planned_time_zones(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<Option<String>>>;
    /// Sets `run_at` of the planned rows of each time zone group.
    async fn set_local_times(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        times: Vec<(Option<String>, Timestamp)>,
    ) -> Result<u64>;
    /// Planned recipients (not held) whose `run_at` has come, on `channel` (every channel
    /// when `None`), oldest first, at most `limit`, with their profile, their fields when
    /// `with_fields`, and how many marketing messages went to the contact since
    /// `cap_since`.
    #[allow(clippy::too_many_arguments)] // the feeder's one query, not a builder's worth
    async fn due_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        channel: Option<ChannelId>,
        now: Timestamp,
        cap_since: Timestamp,
        with_fields: bool,
        limit: u32,
    ) -> Result<Vec<DueRecipient>>;
    /// The broadcast's outbox rows still queued or being sent, per channel (what the
    /// feeder has put in and delivery has not finished).
    async fn broadcast_in_flight(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<(ChannelId, u64)>>;
    /// The earliest `run_at` of a planned (not held) recipient.
    async fn next_recipient_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Option<Timestamp>>;
    /// Applies the feeder's decisions in one transaction, and only while the broadcast is
    /// `sending` (otherwise nothing happens and the outcome is all zeros). A `Queue`
    /// re-checks that the identity is still `subscribed` (and has the topic) and the
    /// contact not erased — else the row is skipped with that reason — then inserts the
    /// outbox row (purpose marketing, source `broadcast:<id>`, broadcast and recipient
    /// ids set), records `message_queued`, and marks the row `queued`.
    async fn feed_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<FeedDecision>,
        now: Timestamp,
    ) -> Result<FeedOutcome>;
    /// Whether nothing is left to do: planning done, no row planned (held rows count as
    /// left unless `ignore_held`) or queued, and no outbox row of the broadcast queued or
    /// sending.
    async fn broadcast_drained(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        ignore_held: bool,
    ) -> Result<bool>;
    /// Picks the winner: held rows get `variant` and `run_at`; stores `winner_variant`
    /// (a winner stored before stays, so a call repeated after a crash releases the rest
    /// to the same variant). Returns the rows released.
    async fn release_held(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        variant: u8,
        run_at: Timestamp,
    ) -> Result<u64>;
    /// The report's counters, per variant.
    async fn broadcast_counters(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Vec<BroadcastCounter>>;
    /// A page of recipients in id order.
    async fn list_recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        q: RecipientQuery,
    ) -> Result<Vec<Recipient>>;
    /// Reads one recipient; NotFound `recipient`.
    async fn get_recipient(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
    ) -> Result<(BroadcastId, Recipient)>;
    /// The broadcast recipient a provider message id belongs to, on an identity.
    async fn recipient_by_message(
        &self,
        ws: WorkspaceId,
        identity: IdentityId,
        provider_message_id: &str,
    ) -> Result<Option<RecipientId>>;
    /// Records delivery, reading or a click; counters move only the first time (a click
    /// does not imply a read). Returns whether it was new.
    async fn record_recipient_signal(
        &self,
        ws: WorkspaceId,
        id: RecipientId,
        signal: RecipientSignal,
        at: Timestamp,
    ) -> Result<bool>;
    /// Sent recipients without the engagement, sent before `sent_before`, whose
    /// follow-up is not decided yet.
    async fn follow_up_due(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        req: &FollowUpRequest,
        cap_since: Timestamp,
    ) -> Result<Vec<FollowUpDue>>;
    /// Applies follow-up decisions like [`BroadcastStore::feed_recipients`] (for `Queue`,
    /// the message goes to `target` of the due row, with consent re-checked; `Skip`
    /// records `follow_up_reason`; `Defer` is not used). `targets` maps each recipient to
    /// its follow-up identity.
    async fn feed_follow_ups(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        topic: Option<&str>,
        decisions: Vec<(FeedDecision, Option<(IdentityId, ChannelId)>)>,
        now: Timestamp,
    ) -> Result<FeedOutcome>;
    /// Sent (not recalled) recipients whose message went out after `sent_after`, after
    /// recipient id `after`, at most `limit`.
    async fn recall_targets(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        sent_after: Timestamp,
        after: Option<RecipientId>,
        limit: u32,
    ) -> Result<Vec<RecallTarget>>;
    /// Records recall outcomes (`recalled_at` and the `recalled` counter for successes;
    /// an event on the contact either way).
    async fn record_recalls(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        results: Vec<RecallResult>,
        at: Timestamp,
    ) -> Result<()>;
}

/// Saved segments, and counting and sampling any segment in the database.
#[async_trait]
pub trait SegmentStore {
    /// The names a workspace's filters may use (fields, tags, channels, topics, flows,
    /// broadcasts), to resolve a filter against.
    async fn segment_catalog(
        &self,
        ws: WorkspaceId,
    ) -> Result<voronka_core::segment::SegmentCatalog>;
    /// Saves a segment; conflict `segment_name_taken` when the name is used. The filter
    /// must be a JSON object; the caller checks what it means.
    async fn create_segment(&self, ws: WorkspaceId, name: &str, filter: Value) -> Result<Segment>;
    /// Reads a segment; NotFound `segment`.
    async fn get_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<Segment>;
    /// Lists segments by name.
    async fn list_segments(&self, ws: WorkspaceId) -> Result<Vec<Segment>>;
    /// Renames and/or replaces the filter (the revision goes up when anything is given).
    async fn update_segment(
        &self,
        ws: WorkspaceId,
        id: SegmentId,
        name: Option<String>,
        filter: Option<Value>,
    ) -> Result<Segment>;
    /// Deletes a segment; conflict `segment_in_use` while a broadcast that has not
    /// finished (or been cancelled) targets it.
    async fn delete_segment(&self, ws: WorkspaceId, id: SegmentId) -> Result<()>;
    /// Counts the (not erased) contacts in a resolved segment, in the database.
    async fn count_segment(
        &self,
        ws: WorkspaceId,
        seg: &voronka_core::segment::Resolved,
    ) -> Result<u64>;
    /// The newest `limit` contacts (at most [`MAX_SAMPLE`]) of a resolved segment.
    async fn sample_segment(
        &self,
        ws: WorkspaceId,
        seg: &voronka_core::segment::Resolved,
        limit: u32,
    ) -> Result<Vec<Contact>>;
}

/// Running the database itself.
#[async_trait]
pub trait AdminStore {
    /// Applies pending migrations; returns how many ran.
    async fn migrate(&self) -> Result<usize>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Lists `table.column` pairs where any text contains `needle`: the check that an
    /// erasure left nothing behind.
    async fn find_text_everywhere(&self, needle: &str) -> Result<Vec<String>>;
}

/// Flows, their runs, signals, counters, topics and workspace settings.
#[async_trait]
pub trait FlowStore {
    /// Reads the workspace's settings (defaults when never set).
    async fn workspace_settings(&self, ws: WorkspaceId) -> Result<WorkspaceSettings>;
    /// Replaces the workspace's settings.
    async fn set_workspace_settings(&self, ws: WorkspaceId, s: WorkspaceSettings) -> Result<()>;

    /// Creates a topic; conflict `topic_exists` when the key is taken.
    async fn create_topic(&self, ws: WorkspaceId, topic: Topic) -> Result<Topic>;
    /// Lists topics by key.
    async fn list_topics(&self, ws: WorkspaceId) -> Result<Vec<Topic>>;

    /// Creates a draft flow; conflict `flow_name_taken` when the name is used.
    async fn create_flow(&self, ws: WorkspaceId, name: &str, draft: Value) -> Result<Flow>;
    /// Reads a flow.
    async fn get_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow>;
    /// Finds a flow by exact name.
    async fn find_flow(&self, ws: WorkspaceId, name: &str) -> Result<Option<Flow>>;
    /// Lists flows by name (archived ones only when asked).
    async fn list_flows(&self, ws: WorkspaceId, archived: bool) -> Result<Vec<Flow>>;
    /// Renames and/or replaces the draft. With `revision`, conflict `flow_changed`
    /// unless it is the current one; conflict `flow_archived` for an archived flow.
    async fn update_flow(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        name: Option<String>,
        draft: Option<Value>,
        revision: Option<i64>,
    ) -> Result<Flow>;
    /// Freezes `document` (validated by the caller) as the next version, makes it live,
    /// and sets the draft to it.
    async fn publish_flow(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        document: Value,
    ) -> Result<FlowVersion>;
    /// Archives a flow and cancels its live runs (counted as dropped at their step).
    async fn archive_flow(&self, ws: WorkspaceId, id: FlowId) -> Result<Flow>;
    /// Reads one version.
    async fn get_flow_version(
        &self,
        ws: WorkspaceId,
        id: FlowId,
        version: u32,
    ) -> Result<FlowVersion>;
    /// Every live version of every published flow, in all workspaces (the trigger index).
    async fn published_flows(&self) -> Result<Vec<(Flow, FlowVersion)>>;

    /// Reads a run.
    async fn get_run(&self, ws: WorkspaceId, id: RunId) -> Result<FlowRun>;
    /// Lists runs, newest first.
    async fn list_runs(&self, ws: WorkspaceId, q: RunQuery) -> Result<Vec<FlowRun>>;
    /// A contact's live (active or waiting) runs, oldest first.
    async fn live_runs(&self, ws: WorkspaceId, contact: ContactId) -> Result<Vec<FlowRun>>;
    /// How many runs of a flow are in each status.
    async fn run_counts(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<(RunStatus, u64)>>;
    /// Whether the contact ever ran the flow (for `reentry: once`).
    async fn ever_ran(&self, ws: WorkspaceId, contact: ContactId, flow: FlowId) -> Result<bool>;
    /// The counters of a flow's steps, all versions.
    async fn step_counters(&self, ws: WorkspaceId, flow: FlowId) -> Result<Vec<StepCounter>>;

    /// Records a signal.
    async fn emit_signal(&self, ws: WorkspaceId, signal: NewSignal) -> Result<SignalId>;
    /// Claims up to `limit` signals, oldest first, for `lease`: unclaimed ones and ones
    /// whose claim expired. A contact's signals are claimed together (never some by one
    /// worker and some by another). PostgreSQL uses `FOR UPDATE SKIP LOCKED`.
    async fn claim_signals(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowSignal>>;
    /// Gives up on a signal: parked as failed with `error` after too many attempts,
    /// otherwise released for a retry after its lease.
    async fn fail_signal(&self, id: SignalId, error: &str, park: bool) -> Result<()>;

    /// Claims up to `limit` waiting runs whose `due_at` ≤ `now` for `lease`.
    async fn claim_due_runs(
        &self,
        now: Timestamp,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<FlowRun>>;
    /// The earliest `due_at` of any waiting run (to sleep until then).
    async fn next_due(&self) -> Result<Option<Timestamp>>;

    /// Applies one step of execution atomically (see [`FlowCommit`]).
    async fn commit_flow(&self, ws: WorkspaceId, commit: FlowCommit) -> Result<FlowCommitted>;

    /// Contacts (not erased) whose date field `field_key` falls on one of the
    /// `(month, day)` pairs, by id after `after`.
    async fn contacts_by_field_day(
        &self,
        ws: WorkspaceId,
        field_key: &str,
        days: &[(u8, u8)],
        after: Option<ContactId>,
        limit: u32,
    ) -> Result<Vec<DatedContact>>;
    /// Contacts (not erased) whose last inbound activity is in `[from, to)`, by id.
    async fn inactive_contacts(
        &self,
        ws: WorkspaceId,
        from: Timestamp,
        to: Timestamp,
        after: Option<ContactId>,
        limit: u32,
    ) -> Result<Vec<ContactId>>;
    /// Reads a scanner's high-water mark.
    async fn scan_mark(&self, ws: WorkspaceId, key: &str) -> Result<Option<Timestamp>>;
    /// Sets a scanner's high-water mark.
    async fn set_scan_mark(&self, ws: WorkspaceId, key: &str, at: Timestamp) -> Result<()>;
}

/// The whole storage API.
pub trait Store:
    WorkspaceStore
    + UserStore
    + ApiKeyStore
    + ChannelStore
    + SchemaStore
    + ContactStore
    + IdempotencyStore
    + MessagingStore
    + FlowStore
    + BroadcastStore
    + SegmentStore
    + AdminStore
    + Send
    + Sync
{
}

impl<T> Store for T where
    T: WorkspaceStore
        + UserStore
        + ApiKeyStore
        + ChannelStore
        + SchemaStore
        + ContactStore
        + IdempotencyStore
        + MessagingStore
        + FlowStore
        + BroadcastStore
        + SegmentStore
        + AdminStore
        + Send
        + Sync
{
}

/// A shared handle to whichever backend is configured.
pub type DynStore = Arc<dyn Store>;

/// Opens the store named by `url` without migrating: `sqlite://path/to/file.db` (or a
/// bare path ending in `.db`) or `postgres://…`.
pub async fn connect(url: &str) -> Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Ok(Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
        ))
    }
}

/// Opens and migrates the store named by `url`.
pub async fn connect_and_migrate(url: &str) -> Result<DynStore> {
    let store = connect(url).await?;
    store.migrate().await?;
    Ok(store)
}
