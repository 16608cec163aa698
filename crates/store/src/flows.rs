//! Records of flows: drafts and published versions, contacts' runs through them, the
//! signals that start or resume runs, per-step counters, topics and workspace settings.
//!
//! A run's whole state lives in its row, and a wait is a `due_at` on that row, so a
//! million waiting contacts cost disk, not memory. Everything one step of execution
//! changes (the run, the contact, queued messages, counters, consumed signals) is written
//! by one [`crate::FlowStore::commit_flow`] transaction, guarded by the run's revision:
//! two workers racing on one run cannot both win, and a crash leaves either all of a
//! step or none of it.

use crate::NewOutbound;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use voronka_core::contact::Profile;
use voronka_core::event::EventKind;
use voronka_core::field::FieldValue;
use voronka_core::*;

/// Lifecycle of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    /// Never published.
    Draft,
    /// Has a published version; its triggers are live.
    Published,
    /// Retired: no triggers, no new runs; runs in flight were cancelled.
    Archived,
}

impl FlowStatus {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Draft => "draft",
            FlowStatus::Published => "published",
            FlowStatus::Archived => "archived",
        }
    }
}

impl std::str::FromStr for FlowStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "draft" => FlowStatus::Draft,
            "published" => FlowStatus::Published,
            "archived" => FlowStatus::Archived,
            _ => return Err(format!("unknown flow status `{s}`")),
        })
    }
}

/// A flow: its editable draft and which version is live.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Flow {
    /// Id.
    pub id: FlowId,
    /// Workspace.
    #[serde(skip)]
    pub workspace_id: WorkspaceId,
    /// Name, unique in the workspace.
    pub name: String,
    /// Lifecycle.
    pub status: FlowStatus,
    /// The draft document (JSON form of a flow document; may be invalid while edited).
    #[schema(value_type = Object)]
    pub draft: Value,
    /// Bumped by every draft change, for optimistic editing.
    pub revision: i64,
    /// The live version, if published.
    pub published_version: Option<u32>,
    /// Created at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A published, frozen version of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FlowVersion {
    /// The flow.
    pub flow_id: FlowId,
    /// 1, 2, …
    pub version: u32,
    /// The validated document.
    #[schema(value_type = Object)]
    pub document: Value,
    /// When it was published.
    #[schema(value_type = String, format = DateTime)]
    pub published_at: Timestamp,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Executing steps (briefly, between commits).
    Active,
    /// Waiting for time, an answer, a button or an operator.
    Waiting,
    /// Reached the end.
    Done,
    /// Ended by a stop step, STOP from the contact, or the contact's erasure.
    Stopped,
    /// Ended early by an `exit_on` rule, archiving, or an operator.
    Cancelled,
    /// Ended by an error with no error branch.
    Failed,
}

impl RunStatus {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Active => "active",
            RunStatus::Waiting => "waiting",
            RunStatus::Done => "done",
            RunStatus::Stopped => "stopped",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Failed => "failed",
        }
    }

    /// Whether the run is still going (active or waiting).
    pub fn is_live(self) -> bool {
        matches!(self, RunStatus::Active | RunStatus::Waiting)
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => RunStatus::Active,
            "waiting" => RunStatus::Waiting,
            "done" => RunStatus::Done,
            "stopped" => RunStatus::Stopped,
            "cancelled" => RunStatus::Cancelled,
            "failed" => RunStatus::Failed,
            _ => return Err(format!("unknown run status `{s}`")),
        })
    }
}

/// What a waiting run waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// A delay: wakes at `due_at`.
    Delay,
    /// An answer to an `ask` step (times out at `due_at` when set).
    Answer,
    /// A press of a branching button (times out at `due_at` when set).
    Button,
    /// An operator to release the conversation.
    Handoff,
}

impl WaitKind {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::Delay => "delay",
            WaitKind::Answer => "answer",
            WaitKind::Button => "button",
            WaitKind::Handoff => "handoff",
        }
    }
}

impl std::str::FromStr for WaitKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "delay" => WaitKind::Delay,
            "answer" => WaitKind::Answer,
            "button" => WaitKind::Button,
            "handoff" => WaitKind::Handoff,
            _ => return Err(format!("unknown wait kind `{s}`")),
        })
    }
}

/// One contact's run through one version of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FlowRun {
    /// Id.
    pub id: RunId,
    /// Workspace.
    #[serde(skip)]
    pub workspace_id: WorkspaceId,
    /// The flow.
    pub flow_id: FlowId,
    /// The version it runs (runs stay on their version when a new one is published).
    pub version: u32,
    /// Who.
    pub contact_id: ContactId,
    /// The channel it talks on (the one the trigger came from, or the contact's
    /// most recently active subscribed identity).
    pub channel_id: Option<ChannelId>,
    /// Where it is in its life.
    pub status: RunStatus,
    /// The current step (where it waits, or where it ended).
    pub step_id: String,
    /// What it waits for, when waiting.
    pub wait: Option<WaitKind>,
    /// When it wakes (a delay's end, an answer's time-out).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due_at: Option<Timestamp>,
    /// Invalid answers given to the current `ask` step.
    pub attempts: u32,
    /// Variables: `answers`, `http`, `vars`, `split`, the trigger's data.
    #[schema(value_type = Object)]
    pub vars: Value,
    /// What started it (`keyword:price`, `event:order_shipped`, `api`, `flow:12`).
    pub trigger: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Bumped by every commit (optimistic concurrency).
    pub revision: i64,
    /// Started at.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// When it ended.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    /// Of this flow.
    pub flow_id: Option<FlowId>,
    /// Of this contact.
    pub contact_id: Option<ContactId>,
    /// In this status.
    pub status: Option<RunStatus>,
    /// Waiting at this step.
    pub step_id: Option<String>,
    /// Keyset cursor: runs with a smaller id than this (newest first).
    pub before: Option<RunId>,
    /// Page size (clamped to 1..=500).
    pub limit: u32,
}

/// Per-step counters of one flow version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StepCounter {
    /// The version.
    pub version: u32,
    /// The step.
    pub step_id: String,
    /// Runs that reached the step.
    pub entered: u64,
    /// Runs that left it forward.
    pub completed: u64,
    /// Runs that ended there without finishing (time-out with nowhere to go, failure,
    /// cancellation, STOP).
    pub dropped: u64,
    /// Button presses and choice answers on it.
    pub clicked: u64,
}

/// An increment of one step's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterDelta {
    /// The flow.
    pub flow_id: FlowId,
    /// Its version.
    pub version: u32,
    /// The step.
    pub step_id: String,
    /// Added to `entered`.
    pub entered: u64,
    /// Added to `completed`.
    pub completed: u64,
    /// Added to `dropped`.
    pub dropped: u64,
    /// Added to `clicked`.
    pub clicked: u64,
}

/// Something that may start or resume runs for a contact: an inbound message, a new
/// subscriber, a tag added, an API event, a timer scan, an operator's release. Signals
/// are rows, consumed in the same transaction as their effects, so none is lost or
/// applied twice across a crash.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FlowSignal {
    /// Id (processing order).
    pub id: SignalId,
    /// Workspace.
    #[serde(skip)]
    pub workspace_id: WorkspaceId,
    /// Whom it concerns.
    pub contact_id: ContactId,
    /// The channel it came from, if any.
    pub channel_id: Option<ChannelId>,
    /// `inbound`, `subscribed`, `tag_added`, `event`, `start_flow`, `field_date`,
    /// `inactivity`, `release`, `stop`.
    pub kind: String,
    /// Kind-specific data.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Created at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Claims so far (a signal that keeps failing is parked after a few).
    pub attempts: u32,
}

/// A signal to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSignal {
    /// Whom it concerns.
    pub contact_id: ContactId,
    /// The channel it came from, if any.
    pub channel_id: Option<ChannelId>,
    /// See [`FlowSignal::kind`].
    pub kind: String,
    /// Kind-specific data.
    pub data: Value,
}

/// A run to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The flow.
    pub flow_id: FlowId,
    /// Its version.
    pub version: u32,
    /// The channel it talks on.
    pub channel_id: Option<ChannelId>,
    /// Its state after this commit.
    pub state: RunState,
    /// What started it.
    pub trigger: String,
}

/// The mutable part of a run, written by a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Status.
    pub status: RunStatus,
    /// Current step.
    pub step_id: String,
    /// What it waits for.
    pub wait: Option<WaitKind>,
    /// When it wakes.
    pub due_at: Option<Timestamp>,
    /// Invalid answers to the current question.
    pub attempts: u32,
    /// Variables.
    pub vars: Value,
    /// Failure reason.
    pub error: Option<String>,
}

/// A write to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunWrite {
    /// A new run of the commit's contact.
    Insert(NewRun),
    /// An existing run of the commit's contact, if its revision is still `revision`
    /// (otherwise the whole commit fails with conflict `run_changed`). Clears its claim.
    Update {
        /// The run.
        id: RunId,
        /// The revision the change was computed from.
        revision: i64,
        /// Its new state.
        state: RunState,
    },
}

/// A message a commit queues, on behalf of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMessage {
    /// Index into [`FlowCommit::runs`] of the run sending it (for the skip report).
    pub run: usize,
    /// The message.
    pub outbound: NewOutbound,
}

/// Changes to the contact made by flow actions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactChanges {
    /// Tags to add (created when missing); each new link records `tag_added`.
    pub add_tags: Vec<String>,
    /// Tags to remove; each removed link records `tag_removed`.
    pub remove_tags: Vec<String>,
    /// Field values to set (already validated); changes record `field_set`.
    pub fields: Vec<FieldValue>,
    /// A new profile (already validated), when an answer or action changed it; records
    /// `profile_updated` when different.
    pub profile: Option<Profile>,
    /// Topics to add to the subscription on a channel (only when subscribed there).
    pub subscribe_topics: Vec<(ChannelId, String)>,
    /// Topics to remove from the subscription on a channel.
    pub unsubscribe_topics: Vec<(ChannelId, String)>,
}

/// Everything one step of flow execution changes, for one contact, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowCommit {
    /// The contact; every run written must be theirs.
    pub contact_id: ContactId,
    /// Runs to create or update.
    pub runs: Vec<RunWrite>,
    /// Changes to the contact.
    pub changes: ContactChanges,
    /// Appended to the contact's log (after the change events).
    pub events: Vec<(EventKind, Value)>,
    /// Messages to queue; consent is checked as for any message, and a refused one is
    /// skipped (reported in [`FlowCommitted::skipped`]), not an error.
    pub messages: Vec<FlowMessage>,
    /// Counter increments.
    pub counters: Vec<CounterDelta>,
    /// New signals (another flow to start, a tag added by this one).
    pub signals: Vec<NewSignal>,
    /// Signals this commit consumes (deleted).
    pub consume: Vec<SignalId>,
}

// Written out because ids have no default (an id of 0 names nothing); these exist so
// callers can build a commit or a delta with `..Default::default()`.
impl Default for FlowCommit {
    fn default() -> Self {
        FlowCommit {
            contact_id: ContactId(0),
            runs: Vec::new(),
            changes: ContactChanges::default(),
            events: Vec::new(),
            messages: Vec::new(),
            counters: Vec::new(),
            signals: Vec::new(),
            consume: Vec::new(),
        }
    }
}

impl Default for CounterDelta {
    fn default() -> Self {
        CounterDelta {
            flow_id: FlowId(0),
            version: 0,
            step_id: String::new(),
            entered: 0,
            completed: 0,
            dropped: 0,
            clicked: 0,
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowCommitted {
    /// Ids of the runs, in the order of [`FlowCommit::runs`].
    pub run_ids: Vec<RunId>,
    /// Queued messages.
    pub queued: Vec<OutboxId>,
    /// Messages not queued: (index into `messages`, reason code such as
    /// `not_subscribed`, `blocked`, `no_identity_on_channel`).
    pub skipped: Vec<(usize, String)>,
    /// Tags that were newly added (for `tag_added` triggers).
    pub tags_added: Vec<String>,
}

/// A subscription topic the workspace offers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Topic {
    /// Stable key (`news`, `promo`).
    pub key: String,
    /// Name shown to subscribers.
    pub name: String,
}

/// Workspace-wide settings flows and broadcasts obey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceSettings {
    /// IANA time zone for contacts without one.
    pub time_zone: String,
    /// Quiet hours start (`HH:MM` local to the contact); no quiet hours when absent.
    pub quiet_from: Option<String>,
    /// Quiet hours end.
    pub quiet_to: Option<String>,
    /// Also quiet all weekend.
    pub quiet_weekends: bool,
    /// At most this many marketing messages per contact per window (broadcasts); no cap
    /// when absent.
    pub frequency_cap: Option<voronka_core::broadcast::FrequencyCap>,
}

impl Default for WorkspaceSettings {
    fn default() -> Self {
        WorkspaceSettings {
            time_zone: "UTC".into(),
            quiet_from: Some("21:00".into()),
            quiet_to: Some("09:00".into()),
            quiet_weekends: false,
            frequency_cap: Some(voronka_core::broadcast::FrequencyCap::default()),
        }
    }
}

/// A contact whose date field falls on a given month and day (birthday-style triggers).
#[derive(Debug, Clone, PartialEq)]
pub struct DatedContact {
    /// The contact.
    pub contact_id: ContactId,
    /// The field's value as stored (`YYYY-MM-DD` or RFC 3339).
    pub value: String,
}

// ------------------------------------------------------------------------------------
// Rules both backends share, so they cannot drift apart.

/// Every run status, in lifecycle order (the order of [`crate::FlowStore::run_counts`]).
pub(crate) const RUN_STATUSES: [RunStatus; 6] = [
    RunStatus::Active,
    RunStatus::Waiting,
    RunStatus::Done,
    RunStatus::Stopped,
    RunStatus::Cancelled,
    RunStatus::Failed,
];

/// A flow's name: trimmed, 1–100 characters, no control characters.
pub(crate) fn flow_name(name: &str) -> crate::Result<String> {
    Ok(voronka_core::channel::display_name("name", name)?)
}

/// A topic as stored: a trimmed key of 1–64 bytes without spaces or control characters
/// (the limit subscriptions put on topics), and a display name.
pub(crate) fn valid_topic(topic: Topic) -> crate::Result<Topic> {
    let key = topic.key.trim();
    if key.is_empty() || key.len() > 64 || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ValidationError::new(
            "key",
            "must be 1 to 64 bytes, without spaces or control characters",
        )
        .into());
    }
    Ok(Topic {
        key: key.to_string(),
        name: voronka_core::channel::display_name("name", &topic.name)?,
    })
}

/// Page size of a run list.
pub(crate) fn run_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 500))
}

/// Page size of a scanner's query or a claim (0 asks for nothing).
pub(crate) fn batch_limit(limit: u32) -> i64 {
    i64::from(limit.min(10_000))
}

/// A counter or count as stored (saturating; no counter gets near it).
pub(crate) fn stored_count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `MM-DD` keys of the valid `(month, day)` pairs: what a date's or an RFC 3339 time's
/// text form has at characters 6–10.
pub(crate) fn day_keys(days: &[(u8, u8)]) -> Vec<String> {
    let mut keys: Vec<String> = days
        .iter()
        .filter(|(m, d)| (1..=12).contains(m) && (1..=31).contains(d))
        .map(|(m, d)| format!("{m:02}-{d:02}"))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every run status with its count (zero when absent), in lifecycle order.
pub(crate) fn all_run_counts(counts: Vec<(RunStatus, i64)>) -> Vec<(RunStatus, u64)> {
    RUN_STATUSES
        .into_iter()
        .map(|s| {
            let n: i64 = counts
                .iter()
                .filter(|(t, _)| *t == s)
                .map(|(_, n)| *n)
                .sum();
            (s, u64::try_from(n).unwrap_or(0))
        })
        .collect()
}

/// Whether [`topic_change`] needs the workspace's topic keys: only to spell out "every
/// topic but one" for a subscription to all of them.
pub(crate) fn topic_change_needs_all(sub: &crate::Subscription, subscribe: bool) -> bool {
    !subscribe && sub.topics.is_empty()
}

/// The subscription change that adds `topic` to (or removes it from) a `subscribed`
/// identity's topics, or `None` when nothing changes. An empty topic list means every
/// topic: subscribing to one more changes nothing, and removing one spells out the
/// workspace's others. When no topic would remain, the subscription ends (an empty list
/// would read as "all"). The original proof of consent stays with the subscription.
pub(crate) fn topic_change(
    sub: &crate::Subscription,
    topic: &str,
    subscribe: bool,
    workspace_topics: &[String],
    now: Timestamp,
) -> crate::Result<Option<voronka_core::subscription::SubscriptionChange>> {
    use voronka_core::subscription::{SubscriptionChange, SubscriptionState};
    let topic = topic.trim();
    let current = &sub.topics;
    let has = current.iter().any(|t| t == topic);
    let next: Vec<String> = if subscribe {
        if current.is_empty() || has {
            return Ok(None);
        }
        let mut next = current.clone();
        next.push(topic.to_string());
        next
    } else if current.is_empty() {
        workspace_topics
            .iter()
            .filter(|t| t.as_str() != topic)
            .cloned()
            .collect()
    } else {
        if !has {
            return Ok(None);
        }
        current.iter().filter(|t| *t != topic).cloned().collect()
    };
    if next.is_empty() {
        return Ok(Some(SubscriptionChange::new(
            SubscriptionState::Unsubscribed,
            Vec::new(),
            None,
            now,
        )?));
    }
    let Some(proof) = sub.proof.clone() else {
        // A subscribed identity always has its proof; without one there is no consent to
        // extend to another topic.
        return Ok(None);
    };
    Ok(Some(SubscriptionChange::new(
        SubscriptionState::Subscribed,
        next,
        Some(proof),
        now,
    )?))
}

/// The conflict when a commit's run changed since it was read.
pub(crate) fn run_changed(id: RunId) -> crate::StoreError {
    crate::StoreError::conflict(
        "run_changed",
        format!("run {id} changed since it was read; reload it and try again"),
        None,
    )
}

/// The conflict when an archived flow is changed or started.
pub(crate) fn flow_archived() -> crate::StoreError {
    crate::StoreError::conflict(
        "flow_archived",
        "the flow is archived; it cannot be changed or started",
        None,
    )
}

/// The conflict when a flow name is used.
pub(crate) fn flow_name_taken(name: &str) -> crate::StoreError {
    crate::StoreError::conflict(
        "flow_name_taken",
        format!("a flow named `{name}` already exists"),
        Some("name"),
    )
}

/// The conflict when an edit was made on an old revision of the draft.
pub(crate) fn flow_changed(current: i64) -> crate::StoreError {
    crate::StoreError::conflict(
        "flow_changed",
        format!("the flow changed meanwhile (now at revision {current}); reload it"),
        Some("revision"),
    )
}

/// The conflict when a topic key is used.
pub(crate) fn topic_exists(key: &str) -> crate::StoreError {
    crate::StoreError::conflict(
        "topic_exists",
        format!("a topic with key `{key}` already exists"),
        Some("key"),
    )
}

/// The conflict when an erased contact would get data again.
pub(crate) fn contact_erased() -> crate::StoreError {
    crate::StoreError::conflict(
        "contact_erased",
        "the contact's personal data was erased; it cannot be changed",
        None,
    )
}

impl ContactChanges {
    /// Whether applying these changes would write anything to the contact.
    pub(crate) fn is_empty(&self) -> bool {
        self.add_tags.is_empty()
            && self.remove_tags.is_empty()
            && self.fields.is_empty()
            && self.profile.is_none()
            && self.subscribe_topics.is_empty()
            && self.unsubscribe_topics.is_empty()
    }
}
