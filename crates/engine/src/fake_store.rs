//! A store for the engine's unit tests: records import batches, serves field definitions
//! and a fixed contact list, and fails everything else.

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use std::sync::Mutex;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldDefinition, FieldSpec, FieldValue};
use voronka_core::filter::ContactFilter;
use voronka_core::subscription::SubscriptionChange;
use voronka_core::*;
use voronka_store::*;

fn ni<T>() -> Result<T> {
    Err(StoreError::Database("not supported by the fake".into()))
}

/// Phone that makes the fake refuse a row, as a real store refuses e.g. an unknown channel.
pub const REFUSED_PHONE: &str = "+19999999999";

#[derive(Default)]
pub struct FakeStore {
    pub defs: Vec<FieldDefinition>,
    pub contacts: Vec<Contact>,
    pub batches: Mutex<Vec<Vec<ImportRow>>>,
    /// Fail every import call with a store error.
    pub broken: bool,
}

impl FakeStore {
    fn import(&self, rows: Vec<ImportRow>) -> Result<Vec<ImportOutcome>> {
        if self.broken {
            return Err(StoreError::Database("disk on fire".into()));
        }
        let out = rows
            .iter()
            .map(|r| ImportOutcome {
                line: r.line,
                result: if r.profile.phone.as_deref() == Some(REFUSED_PHONE) {
                    Err("refused by store".into())
                } else {
                    Ok((ContactId(r.line as i64), ImportAction::Created))
                },
            })
            .collect();
        self.batches.lock().expect("lock").push(rows);
        Ok(out)
    }

    fn list(&self, q: &ContactQuery) -> Result<Page<Contact, ContactId>> {
        let mut all: Vec<&Contact> = self
            .contacts
            .iter()
            .filter(|c| q.before.is_none_or(|b| c.id < b))
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.id));
        let limit = q.limit.clamp(1, 1000) as usize;
        let more = all.len() > limit;
        let items: Vec<Contact> = all.into_iter().take(limit).cloned().collect();
        let next = if more {
            items.last().map(|c| c.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

#[async_trait]
impl WorkspaceStore for FakeStore {
    async fn create_workspace(&self, _: &str) -> Result<Workspace> {
        ni()
    }
    async fn get_workspace(&self, _: WorkspaceId) -> Result<Workspace> {
        ni()
    }
    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        ni()
    }
}
#[async_trait]
impl UserStore for FakeStore {
    async fn create_user(&self, _: WorkspaceId, _: NewUser) -> Result<Member> {
        ni()
    }
    async fn find_user_by_email(&self, _: &str) -> Result<Option<UserLogin>> {
        ni()
    }
    async fn list_members(&self, _: WorkspaceId) -> Result<Vec<Member>> {
        ni()
    }
}
#[async_trait]
impl ApiKeyStore for FakeStore {
    async fn create_api_key(&self, _: WorkspaceId, _: NewApiKey) -> Result<ApiKey> {
        ni()
    }
    async fn find_api_key(&self, _: &str) -> Result<Option<ApiKeyAuth>> {
        ni()
    }
    async fn touch_api_key(&self, _: ApiKeyId, _: Timestamp) -> Result<()> {
        ni()
    }
    async fn list_api_keys(&self, _: WorkspaceId) -> Result<Vec<ApiKey>> {
        ni()
    }
    async fn revoke_api_key(&self, _: WorkspaceId, _: ApiKeyId) -> Result<ApiKey> {
        ni()
    }
}
#[async_trait]
impl ChannelStore for FakeStore {
    async fn create_channel(&self, _: WorkspaceId, _: NewChannel) -> Result<Channel> {
        ni()
    }
    async fn get_channel(&self, _: WorkspaceId, _: ChannelId) -> Result<Channel> {
        ni()
    }
    async fn list_channels(&self, _: WorkspaceId) -> Result<Vec<Channel>> {
        ni()
    }
    async fn update_channel(
        &self,
        _: WorkspaceId,
        _: ChannelId,
        _: ChannelPatch,
    ) -> Result<Channel> {
        ni()
    }
    async fn delete_channel(&self, _: WorkspaceId, _: ChannelId) -> Result<()> {
        ni()
    }
}
#[async_trait]
impl SchemaStore for FakeStore {
    async fn create_tag(&self, _: WorkspaceId, _: &str) -> Result<Tag> {
        ni()
    }
    async fn list_tags(&self, _: WorkspaceId) -> Result<Vec<Tag>> {
        ni()
    }
    async fn delete_tag(&self, _: WorkspaceId, _: TagId) -> Result<()> {
        ni()
    }
    async fn create_field(&self, _: WorkspaceId, _: FieldSpec) -> Result<FieldDefinition> {
        ni()
    }
    async fn list_fields(&self, _: WorkspaceId) -> Result<Vec<FieldDefinition>> {
        Ok(self.defs.clone())
    }
    async fn delete_field(&self, _: WorkspaceId, _: FieldId) -> Result<()> {
        ni()
    }
}
#[async_trait]
impl ContactStore for FakeStore {
    async fn create_contact(&self, _: WorkspaceId, _: NewContact) -> Result<Contact> {
        ni()
    }
    async fn get_contact(&self, _: WorkspaceId, _: ContactId) -> Result<Contact> {
        ni()
    }
    async fn update_profile(
        &self,
        _: WorkspaceId,
        _: ContactId,
        _: voronka_core::contact::Profile,
    ) -> Result<Contact> {
        ni()
    }
    async fn delete_contact(&self, _: WorkspaceId, _: ContactId) -> Result<()> {
        ni()
    }
    async fn list_contacts(
        &self,
        _: WorkspaceId,
        q: &ContactQuery,
    ) -> Result<Page<Contact, ContactId>> {
        self.list(q)
    }
    async fn count_contacts(&self, _: WorkspaceId, _: &ContactFilter) -> Result<u64> {
        ni()
    }
    async fn add_tags(&self, _: WorkspaceId, _: ContactId, _: &[String]) -> Result<Vec<String>> {
        ni()
    }
    async fn remove_tag(&self, _: WorkspaceId, _: ContactId, _: &str) -> Result<bool> {
        ni()
    }
    async fn set_fields(&self, _: WorkspaceId, _: ContactId, _: Vec<FieldValue>) -> Result<()> {
        ni()
    }
    async fn unset_field(&self, _: WorkspaceId, _: ContactId, _: FieldId) -> Result<bool> {
        ni()
    }
    async fn add_identity(&self, _: WorkspaceId, _: ContactId, _: NewIdentity) -> Result<Identity> {
        ni()
    }
    async fn remove_identity(&self, _: WorkspaceId, _: ContactId, _: IdentityId) -> Result<()> {
        ni()
    }
    async fn set_subscription(
        &self,
        _: WorkspaceId,
        _: ContactId,
        _: IdentityId,
        _: SubscriptionChange,
    ) -> Result<Identity> {
        ni()
    }
    async fn subscription_history(
        &self,
        _: WorkspaceId,
        _: ContactId,
    ) -> Result<Vec<SubscriptionRecord>> {
        ni()
    }
    async fn append_event(
        &self,
        _: WorkspaceId,
        _: ContactId,
        _: EventKind,
        _: Value,
    ) -> Result<Event> {
        ni()
    }
    async fn list_events(
        &self,
        _: WorkspaceId,
        _: ContactId,
        _: Option<EventId>,
        _: u32,
    ) -> Result<Page<Event, EventId>> {
        ni()
    }
    async fn export_contact(&self, _: WorkspaceId, _: ContactId) -> Result<ContactExport> {
        ni()
    }
    async fn erase_contact(&self, _: WorkspaceId, _: ContactId) -> Result<()> {
        ni()
    }
    async fn import_contacts(
        &self,
        _: WorkspaceId,
        rows: Vec<ImportRow>,
    ) -> Result<Vec<ImportOutcome>> {
        self.import(rows)
    }
}
#[async_trait]
impl IdempotencyStore for FakeStore {
    async fn idempotency_begin(
        &self,
        _: WorkspaceId,
        _: &str,
        _: &str,
    ) -> Result<IdempotencyBegin> {
        ni()
    }
    async fn idempotency_complete(
        &self,
        _: WorkspaceId,
        _: &str,
        _: SavedResponse,
        _: Option<ContactId>,
    ) -> Result<()> {
        ni()
    }
    async fn idempotency_abort(&self, _: WorkspaceId, _: &str) -> Result<()> {
        ni()
    }
    async fn idempotency_purge(&self, _: Timestamp) -> Result<u64> {
        ni()
    }
}
/// The messaging pipeline is not used by the engine's current jobs.
#[async_trait]
impl MessagingStore for FakeStore {
    async fn find_channel(&self, _: ChannelId) -> Result<Channel> {
        ni()
    }
    async fn all_channels(&self) -> Result<Vec<Channel>> {
        ni()
    }
    async fn record_inbound(
        &self,
        _: WorkspaceId,
        _: ChannelId,
        _: Vec<voronka_core::message::InboundEvent>,
    ) -> Result<Vec<Option<InboundId>>> {
        ni()
    }
    async fn pending_inbound(&self, _: Option<InboundId>, _: u32) -> Result<Vec<InboundRecord>> {
        ni()
    }
    async fn apply_inbound(
        &self,
        _: WorkspaceId,
        _: InboundId,
        _: InboundApply,
    ) -> Result<InboundApplied> {
        ni()
    }
    async fn fail_inbound(&self, _: InboundId, _: &str, _: bool) -> Result<()> {
        ni()
    }
    async fn find_identity(
        &self,
        _: WorkspaceId,
        _: ChannelId,
        _: &str,
    ) -> Result<Option<Identity>> {
        ni()
    }
    async fn enqueue_message(
        &self,
        _: WorkspaceId,
        _: ContactId,
        _: NewOutbound,
    ) -> Result<OutboxItem> {
        ni()
    }
    async fn get_outbound(&self, _: WorkspaceId, _: OutboxId) -> Result<OutboxItem> {
        ni()
    }
    async fn last_outbound_with_choices(
        &self,
        _: WorkspaceId,
        _: IdentityId,
    ) -> Result<Option<OutboxItem>> {
        ni()
    }
    async fn claim_outbox(
        &self,
        _: ChannelId,
        _: u32,
        _: std::time::Duration,
    ) -> Result<Vec<OutboxItem>> {
        ni()
    }
    async fn due_channels(&self) -> Result<Vec<(ChannelId, Timestamp)>> {
        ni()
    }
    async fn complete_outbox(&self, _: Vec<OutboxResult>) -> Result<()> {
        ni()
    }
    async fn conversation(
        &self,
        _: WorkspaceId,
        _: IdentityId,
        _: u32,
    ) -> Result<Vec<ConversationItem>> {
        ni()
    }
    async fn outbox_counts(&self, _: Option<ChannelId>) -> Result<Vec<(OutboxState, u64)>> {
        ni()
    }
}
#[async_trait]
impl AdminStore for FakeStore {
    async fn migrate(&self) -> Result<usize> {
        ni()
    }
    async fn ping(&self) -> Result<()> {
        ni()
    }
    fn backend(&self) -> &'static str {
        "fake"
    }
    async fn find_text_everywhere(&self, _: &str) -> Result<Vec<String>> {
        ni()
    }
}

#[async_trait]
impl FlowStore for FakeStore {
    async fn workspace_settings(&self, _: WorkspaceId) -> Result<WorkspaceSettings> {
        ni()
    }
    async fn set_workspace_settings(&self, _: WorkspaceId, _: WorkspaceSettings) -> Result<()> {
        ni()
    }
    async fn create_topic(&self, _: WorkspaceId, _: Topic) -> Result<Topic> {
        ni()
    }
    async fn list_topics(&self, _: WorkspaceId) -> Result<Vec<Topic>> {
        ni()
    }
    async fn create_flow(&self, _: WorkspaceId, _: &str, _: Value) -> Result<Flow> {
        ni()
    }
    async fn get_flow(&self, _: WorkspaceId, _: FlowId) -> Result<Flow> {
        ni()
    }
    async fn find_flow(&self, _: WorkspaceId, _: &str) -> Result<Option<Flow>> {
        ni()
    }
    async fn list_flows(&self, _: WorkspaceId, _: bool) -> Result<Vec<Flow>> {
        ni()
    }
    async fn update_flow(
        &self,
        _: WorkspaceId,
        _: FlowId,
        _: Option<String>,
        _: Option<Value>,
        _: Option<i64>,
    ) -> Result<Flow> {
        ni()
    }
    async fn publish_flow(&self, _: WorkspaceId, _: FlowId, _: Value) -> Result<FlowVersion> {
        ni()
    }
    async fn archive_flow(&self, _: WorkspaceId, _: FlowId) -> Result<Flow> {
        ni()
    }
    async fn get_flow_version(&self, _: WorkspaceId, _: FlowId, _: u32) -> Result<FlowVersion> {
        ni()
    }
    async fn published_flows(&self) -> Result<Vec<(Flow, FlowVersion)>> {
        ni()
    }
    async fn get_run(&self, _: WorkspaceId, _: RunId) -> Result<FlowRun> {
        ni()
    }
    async fn list_runs(&self, _: WorkspaceId, _: RunQuery) -> Result<Vec<FlowRun>> {
        ni()
    }
    async fn live_runs(&self, _: WorkspaceId, _: ContactId) -> Result<Vec<FlowRun>> {
        ni()
    }
    async fn run_counts(&self, _: WorkspaceId, _: FlowId) -> Result<Vec<(RunStatus, u64)>> {
        ni()
    }
    async fn ever_ran(&self, _: WorkspaceId, _: ContactId, _: FlowId) -> Result<bool> {
        ni()
    }
    async fn step_counters(&self, _: WorkspaceId, _: FlowId) -> Result<Vec<StepCounter>> {
        ni()
    }
    async fn emit_signal(&self, _: WorkspaceId, _: NewSignal) -> Result<SignalId> {
        ni()
    }
    async fn claim_signals(&self, _: u32, _: std::time::Duration) -> Result<Vec<FlowSignal>> {
        ni()
    }
    async fn fail_signal(&self, _: SignalId, _: &str, _: bool) -> Result<()> {
        ni()
    }
    async fn claim_due_runs(
        &self,
        _: Timestamp,
        _: u32,
        _: std::time::Duration,
    ) -> Result<Vec<FlowRun>> {
        ni()
    }
    async fn next_due(&self) -> Result<Option<Timestamp>> {
        ni()
    }
    async fn commit_flow(&self, _: WorkspaceId, _: FlowCommit) -> Result<FlowCommitted> {
        ni()
    }
    async fn contacts_by_field_day(
        &self,
        _: WorkspaceId,
        _: &str,
        _: &[(u8, u8)],
        _: Option<ContactId>,
        _: u32,
    ) -> Result<Vec<DatedContact>> {
        ni()
    }
    async fn inactive_contacts(
        &self,
        _: WorkspaceId,
        _: Timestamp,
        _: Timestamp,
        _: Option<ContactId>,
        _: u32,
    ) -> Result<Vec<ContactId>> {
        ni()
    }
    async fn scan_mark(&self, _: WorkspaceId, _: &str) -> Result<Option<Timestamp>> {
        ni()
    }
    async fn set_scan_mark(&self, _: WorkspaceId, _: &str, _: Timestamp) -> Result<()> {
        ni()
    }
}

#[async_trait]
impl SegmentStore for FakeStore {
    async fn segment_catalog(
        &self,
        _: WorkspaceId,
    ) -> Result<voronka_core::segment::SegmentCatalog> {
        ni()
    }
    async fn create_segment(&self, _: WorkspaceId, _: &str, _: Value) -> Result<Segment> {
        ni()
    }
    async fn get_segment(&self, _: WorkspaceId, _: SegmentId) -> Result<Segment> {
        ni()
    }
    async fn list_segments(&self, _: WorkspaceId) -> Result<Vec<Segment>> {
        ni()
    }
    async fn update_segment(
        &self,
        _: WorkspaceId,
        _: SegmentId,
        _: Option<String>,
        _: Option<Value>,
    ) -> Result<Segment> {
        ni()
    }
    async fn delete_segment(&self, _: WorkspaceId, _: SegmentId) -> Result<()> {
        ni()
    }
    async fn count_segment(
        &self,
        _: WorkspaceId,
        _: &voronka_core::segment::Resolved,
    ) -> Result<u64> {
        ni()
    }
    async fn sample_segment(
        &self,
        _: WorkspaceId,
        _: &voronka_core::segment::Resolved,
        _: u32,
    ) -> Result<Vec<Contact>> {
        ni()
    }
}

#[async_trait]
impl BroadcastStore for FakeStore {
    async fn create_broadcast(&self, _: WorkspaceId, _: &str, _: Value) -> Result<Broadcast> {
        ni()
    }
    async fn get_broadcast(&self, _: WorkspaceId, _: BroadcastId) -> Result<Broadcast> {
        ni()
    }
    async fn list_broadcasts(&self, _: WorkspaceId) -> Result<Vec<Broadcast>> {
        ni()
    }
    async fn update_broadcast(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Option<i64>,
        _: Option<String>,
        _: Option<Value>,
    ) -> Result<Broadcast> {
        ni()
    }
    async fn delete_broadcast(&self, _: WorkspaceId, _: BroadcastId) -> Result<()> {
        ni()
    }
    async fn transition_broadcast(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: &[voronka_core::broadcast::BroadcastStatus],
        _: voronka_core::broadcast::BroadcastStatus,
        _: Option<Timestamp>,
        _: Timestamp,
    ) -> Result<Broadcast> {
        ni()
    }
    async fn active_broadcasts(&self, _: Timestamp) -> Result<Vec<Broadcast>> {
        ni()
    }
    async fn next_scheduled(&self) -> Result<Option<Timestamp>> {
        ni()
    }
    async fn plan_broadcast_batch(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: &PlanRequest,
    ) -> Result<PlanProgress> {
        ni()
    }
    async fn planned_time_zones(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
    ) -> Result<Vec<Option<String>>> {
        ni()
    }
    async fn set_local_times(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Vec<(Option<String>, Timestamp)>,
    ) -> Result<u64> {
        ni()
    }
    #[allow(clippy::too_many_arguments)] // the feeder's one query, not a builder's worth
    async fn due_recipients(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Option<ChannelId>,
        _: Timestamp,
        _: Timestamp,
        _: bool,
        _: u32,
    ) -> Result<Vec<DueRecipient>> {
        ni()
    }
    async fn broadcast_in_flight(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
    ) -> Result<Vec<(ChannelId, u64)>> {
        ni()
    }
    async fn next_recipient_due(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
    ) -> Result<Option<Timestamp>> {
        ni()
    }
    async fn feed_recipients(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Option<&str>,
        _: Vec<FeedDecision>,
        _: Timestamp,
    ) -> Result<FeedOutcome> {
        ni()
    }
    async fn broadcast_drained(&self, _: WorkspaceId, _: BroadcastId, _: bool) -> Result<bool> {
        ni()
    }
    async fn release_held(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: u8,
        _: Timestamp,
    ) -> Result<u64> {
        ni()
    }
    async fn broadcast_counters(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
    ) -> Result<Vec<BroadcastCounter>> {
        ni()
    }
    async fn list_recipients(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: RecipientQuery,
    ) -> Result<Vec<Recipient>> {
        ni()
    }
    async fn get_recipient(
        &self,
        _: WorkspaceId,
        _: RecipientId,
    ) -> Result<(BroadcastId, Recipient)> {
        ni()
    }
    async fn recipient_by_message(
        &self,
        _: WorkspaceId,
        _: IdentityId,
        _: &str,
    ) -> Result<Option<RecipientId>> {
        ni()
    }
    async fn record_recipient_signal(
        &self,
        _: WorkspaceId,
        _: RecipientId,
        _: RecipientSignal,
        _: Timestamp,
    ) -> Result<bool> {
        ni()
    }
    async fn follow_up_due(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: &FollowUpRequest,
        _: Timestamp,
    ) -> Result<Vec<FollowUpDue>> {
        ni()
    }
    async fn feed_follow_ups(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Option<&str>,
        _: Vec<(FeedDecision, Option<(IdentityId, ChannelId)>)>,
        _: Timestamp,
    ) -> Result<FeedOutcome> {
        ni()
    }
    async fn recall_targets(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Timestamp,
        _: Option<RecipientId>,
        _: u32,
    ) -> Result<Vec<RecallTarget>> {
        ni()
    }
    async fn record_recalls(
        &self,
        _: WorkspaceId,
        _: BroadcastId,
        _: Vec<RecallResult>,
        _: Timestamp,
    ) -> Result<()> {
        ni()
    }
}
