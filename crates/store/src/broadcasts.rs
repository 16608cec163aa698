//! Records of broadcasts: the broadcast itself, its recipients (one row per person, plus
//! rows for the identities skipped as duplicates), the counters its report reads, and the
//! shapes the planner and feeder exchange with the store.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use voronka_core::broadcast::{BroadcastStatus, Engagement, RecipientStatus, SkipReason};
use voronka_core::contact::Profile;
use voronka_core::message::OutboundMessage;
use voronka_core::segment::Resolved;
use voronka_core::*;

/// The variant a recipient outside a winner rule's test group holds until the winner is
/// picked.
pub const HELD_VARIANT: u8 = 255;

/// A broadcast as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Broadcast {
    /// Id.
    pub id: BroadcastId,
    /// The workspace it belongs to (the runtime reads broadcasts of every workspace).
    #[serde(skip)]
    pub workspace_id: WorkspaceId,
    /// Name, unique in the workspace.
    pub name: String,
    /// Life-cycle status.
    pub status: BroadcastStatus,
    /// The document (`voronka_core::broadcast::BroadcastSpec` as JSON), kept verbatim.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Bumped by every edit; edits name the revision they saw.
    pub revision: i64,
    /// When it fires (scheduled) or fired.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub send_at: Option<Timestamp>,
    /// The last contact id planned (planning resumes after it).
    #[serde(skip)]
    pub plan_cursor: i64,
    /// When planning finished; `None` while recipients are still being selected.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub planned_at: Option<Timestamp>,
    /// When sending started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it finished or was cancelled.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// The winning variant's index, once a winner rule picked it.
    pub winner_variant: Option<u8>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// One recipient row.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Recipient {
    /// Id.
    pub id: RecipientId,
    /// The contact.
    pub contact_id: ContactId,
    /// The identity messaged (absent when the contact had none to use).
    pub identity_id: Option<IdentityId>,
    /// Its channel.
    pub channel_id: Option<ChannelId>,
    /// Variant index ([`HELD_VARIANT`] while waiting for a winner).
    pub variant: u8,
    /// Where it is.
    pub status: RecipientStatus,
    /// Why it was skipped.
    pub reason: Option<SkipReason>,
    /// The contact's time zone when planned.
    pub time_zone: Option<String>,
    /// When it is due (planned rows).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Timestamp>,
    /// The outbox row carrying the message.
    pub outbox_id: Option<OutboxId>,
    /// The provider's id of the (first part of the) message.
    pub provider_message_id: Option<String>,
    /// Queued.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub queued_at: Option<Timestamp>,
    /// Sent.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<Timestamp>,
    /// Delivered.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Timestamp>,
    /// Read.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<Timestamp>,
    /// First click.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub clicked_at: Option<Timestamp>,
    /// Deleted from the chat by a recall.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub recalled_at: Option<Timestamp>,
    /// The follow-up's outbox row, once queued.
    pub follow_up_outbox_id: Option<OutboxId>,
    /// Why the follow-up was not sent, when it was due but skipped.
    pub follow_up_reason: Option<SkipReason>,
}

/// Which recipients to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecipientQuery {
    /// Only this status.
    pub status: Option<RecipientStatus>,
    /// Only skipped for this reason.
    pub reason: Option<SkipReason>,
    /// Only this contact.
    pub contact: Option<ContactId>,
    /// Keyset cursor: ids greater than this.
    pub after: Option<RecipientId>,
    /// Page size (capped to 1–1000).
    pub limit: u32,
}

/// One counter of a broadcast's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BroadcastCounter {
    /// Variant index ([`HELD_VARIANT`] for the held-back rest).
    pub variant: u8,
    /// `planned`, `queued`, `sent`, `delivered`, `read`, `clicked`, `failed`, `recalled`,
    /// `skipped:<reason>`, `follow_up_queued`, `follow_up_sent`, `follow_up_failed`,
    /// `follow_up_skipped:<reason>`. `planned`, `queued`, `failed` and `skipped:*` count
    /// the rows in that status now (a row moves from `planned` to `queued` to `sent` or
    /// `failed`); `sent`, `delivered`, `read`, `clicked`, `recalled` count the rows that
    /// ever got there (their time is set). So `planned + queued + sent + failed +
    /// skipped:*` is the audience and never changes once planning is done.
    pub key: String,
    /// The count.
    pub n: u64,
}

/// What one planning batch selects and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The audience; every (not erased) contact when `None`.
    pub segment: Option<Resolved>,
    /// Channels the broadcast may use (`All` = every channel of the workspace).
    pub channels: Vec<ChannelId>,
    /// Only the contact's most recently active identity (over all channels) is
    /// considered: `ChannelChoice::Preferred`.
    pub preferred_only: bool,
    /// Topic the chosen identity must be subscribed to.
    pub topic: Option<String>,
    /// Variant split (sums to 100); assignment is `voronka_core::broadcast::assign_variant`.
    pub percents: Vec<u8>,
    /// With a winner rule: contacts outside the test group get [`HELD_VARIANT`] and no
    /// `run_at` until the winner is picked.
    pub test_percent: Option<u8>,
    /// When planned rows are due (the send time; local-time schedules set per-zone times
    /// after planning with [`BroadcastStore::set_local_times`]).
    pub run_at: Timestamp,
    /// Contacts examined per transaction.
    pub batch: u32,
}

/// What a planning batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PlanProgress {
    /// Planning is complete (`planned_at` set in the same transaction).
    pub done: bool,
    /// Contacts matched in this batch.
    pub contacts: u64,
    /// Rows planned in this batch.
    pub planned: u64,
    /// Rows skipped in this batch.
    pub skipped: u64,
}

/// A planned recipient whose time has come, with what the feeder needs to decide and
/// render.
#[derive(Debug, Clone, PartialEq)]
pub struct DueRecipient {
    /// The recipient row.
    pub id: RecipientId,
    /// The contact.
    pub contact_id: ContactId,
    /// The identity to message.
    pub identity_id: IdentityId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// Variant index.
    pub variant: u8,
    /// The contact's profile (its time zone decides quiet hours).
    pub profile: Profile,
    /// Custom field values by key (empty unless asked for).
    pub fields: serde_json::Map<String, Value>,
    /// Marketing messages queued to the contact since the frequency cap's window start.
    pub marketing_recent: u32,
}

/// The feeder's verdict on one due recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedDecision {
    /// Queue this message (consent and topic are re-checked in the same transaction).
    Queue {
        /// The recipient.
        recipient: RecipientId,
        /// The rendered message.
        message: OutboundMessage,
    },
    /// Skip with a reason.
    Skip {
        /// The recipient.
        recipient: RecipientId,
        /// Why.
        reason: SkipReason,
    },
    /// Not now (quiet hours): due again at `until`.
    Defer {
        /// The recipient.
        recipient: RecipientId,
        /// New due time.
        until: Timestamp,
    },
}

/// What a feed transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FeedOutcome {
    /// Rows queued into the outbox.
    pub queued: u64,
    /// Rows skipped (including those whose consent changed since planning).
    pub skipped: u64,
    /// Rows deferred.
    pub deferred: u64,
}

/// A sent message a recall may delete.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallTarget {
    /// The recipient.
    pub recipient: RecipientId,
    /// Channel it went out on.
    pub channel_id: ChannelId,
    /// Chat address.
    pub external_id: String,
    /// The provider's ids of every part.
    pub provider_message_ids: Vec<String>,
}

/// What happened to one recall attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallResult {
    /// The recipient.
    pub recipient: RecipientId,
    /// `Err(reason)` when the provider refused.
    pub outcome: std::result::Result<(), String>,
}

/// What a follow-up looks for.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUpRequest {
    /// The engagement whose absence triggers it.
    pub if_not: Engagement,
    /// Only recipients sent before this (sent_at + after_hours has passed).
    pub sent_before: Timestamp,
    /// Send on this channel instead of the original (the contact's identity there).
    pub channel: Option<ChannelId>,
    /// Topic the identity must be subscribed to.
    pub topic: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// An engagement signal for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientSignal {
    /// The provider reported delivery.
    Delivered,
    /// The provider reported the message read.
    Read,
    /// A button or tracked link was clicked.
    Clicked,
}

/// A sent recipient due for a follow-up.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUpDue {
    /// The recipient (identity and channel of the first message).
    pub recipient: DueRecipient,
    /// The identity the follow-up goes to: the same one, or the contact's identity on the
    /// follow-up's channel; `None` when the contact has none there.
    pub target: Option<(IdentityId, ChannelId)>,
}

// ------------------------------------------------------------ shared by both backends

/// Counter key: rows waiting for their turn (status `planned`, held rows included).
pub(crate) const C_PLANNED: &str = "planned";
/// Counter key: rows whose message is in the outbox (status `queued`).
pub(crate) const C_QUEUED: &str = "queued";
/// Counter key: rows whose message the provider accepted (ever; `sent_at` set).
pub(crate) const C_SENT: &str = "sent";
/// Counter key: rows whose message could not be sent (status `failed`).
pub(crate) const C_FAILED: &str = "failed";
/// Counter key: rows reported delivered (`delivered_at` set).
pub(crate) const C_DELIVERED: &str = "delivered";
/// Counter key: rows reported read (`read_at` set).
pub(crate) const C_READ: &str = "read";
/// Counter key: rows clicked (`clicked_at` set).
pub(crate) const C_CLICKED: &str = "clicked";
/// Counter key: rows whose message a recall deleted (`recalled_at` set).
pub(crate) const C_RECALLED: &str = "recalled";
/// Counter key: follow-ups put in the outbox (`follow_up_outbox_id` set).
pub(crate) const C_FOLLOW_UP_QUEUED: &str = "follow_up_queued";
/// Counter key: follow-ups the provider accepted.
pub(crate) const C_FOLLOW_UP_SENT: &str = "follow_up_sent";
/// Counter key: follow-ups that could not be sent.
pub(crate) const C_FOLLOW_UP_FAILED: &str = "follow_up_failed";

/// Counter key of rows skipped for `reason` (status `skipped`).
pub(crate) fn skipped_key(reason: SkipReason) -> String {
    format!("skipped:{}", reason.as_str())
}

/// Counter key of follow-ups skipped for `reason` (`follow_up_reason`).
pub(crate) fn follow_up_skipped_key(reason: SkipReason) -> String {
    format!("follow_up_skipped:{}", reason.as_str())
}

/// Event kind recorded on the contact when a recall deleted the message.
pub(crate) const EVENT_RECALLED: &str = "message_recalled";
/// Event kind recorded on the contact when a recall failed.
pub(crate) const EVENT_RECALL_FAILED: &str = "message_recall_failed";

/// The event data of a recall outcome.
pub(crate) fn recall_event(broadcast: BroadcastId, r: &RecallResult) -> Value {
    serde_json::json!({
        "broadcast_id": broadcast.0,
        "recipient_id": r.recipient.0,
        "error": r.outcome.as_ref().err(),
    })
}

/// The outbox `source` of a broadcast's messages (first messages and follow-ups).
pub(crate) fn broadcast_source(id: BroadcastId) -> String {
    format!("broadcast:{}", id.0)
}

/// A broadcast name as stored (trimmed, 1–100 characters).
pub(crate) fn broadcast_name(name: &str) -> crate::Result<String> {
    Ok(voronka_core::channel::display_name("name", name)?)
}

/// The saved segment a spec targets (`{"segment": {"segment_id": N}}`), kept in its own
/// column so deleting a segment in use can be refused. Read from the raw JSON: a draft
/// need not parse as a full spec yet.
pub(crate) fn spec_segment_id(spec: &Value) -> Option<i64> {
    spec.get("segment")?.get("segment_id")?.as_i64()
}

/// Conflict: the name is used by another broadcast of the workspace.
pub(crate) fn name_taken(name: &str) -> crate::StoreError {
    crate::StoreError::conflict(
        "name_taken",
        format!("a broadcast named `{name}` already exists"),
        Some("name"),
    )
}

/// Conflict: the edit was made on an old revision.
pub(crate) fn stale_revision(current: i64) -> crate::StoreError {
    crate::StoreError::conflict(
        "stale_revision",
        format!("the broadcast changed meanwhile (now at revision {current}); reload it"),
        Some("revision"),
    )
}

/// Conflict: a broadcast that is sending or over cannot be edited.
pub(crate) fn not_editable(status: BroadcastStatus) -> crate::StoreError {
    crate::StoreError::conflict(
        "not_editable",
        format!(
            "the broadcast is {}; only drafts and scheduled broadcasts can be edited",
            status.as_str()
        ),
        None,
    )
}

/// Conflict: a live broadcast cannot be deleted.
pub(crate) fn not_deletable(status: BroadcastStatus) -> crate::StoreError {
    crate::StoreError::conflict(
        "not_deletable",
        format!(
            "the broadcast is {}; cancel it before deleting it",
            status.as_str()
        ),
        None,
    )
}

/// Conflict: the broadcast is not in one of the statuses a transition starts from.
pub(crate) fn invalid_transition(
    current: BroadcastStatus,
    to: BroadcastStatus,
) -> crate::StoreError {
    crate::StoreError::conflict(
        "invalid_transition",
        format!(
            "the broadcast is {}; it cannot become {}",
            current.as_str(),
            to.as_str()
        ),
        Some("status"),
    )
}

/// Conflict: planning runs only while the broadcast is sending.
pub(crate) fn not_sending(current: BroadcastStatus) -> crate::StoreError {
    crate::StoreError::conflict(
        "not_sending",
        format!(
            "the broadcast is {}; recipients are planned only while it is sending",
            current.as_str()
        ),
        None,
    )
}

/// A page size for recipient lists and batches: 1–1000.
pub(crate) fn recipient_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}

// ------------------------------------------------------------------------------------
// Planning: which of a contact's identities gets the message (both backends).

/// One identity of a contact, as the planner sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) id: i64,
    pub(crate) channel: i64,
    pub(crate) state: String,
    pub(crate) topic_ok: bool,
    pub(crate) seen: Option<i64>,
}

impl Candidate {
    /// Subscribed (with the topic): a message may go here.
    pub(crate) fn usable(&self) -> bool {
        self.state == "subscribed" && self.topic_ok
    }

    /// Why nothing may go here (None when usable).
    pub(crate) fn refusal(&self) -> Option<SkipReason> {
        if self.state == "blocked" {
            Some(SkipReason::Blocked)
        } else if self.state != "subscribed" {
            Some(SkipReason::NotSubscribed)
        } else if !self.topic_ok {
            Some(SkipReason::TopicNotSubscribed)
        } else {
            None
        }
    }
}

/// How telling a skip reason is when several identities refuse: the row says the most
/// telling one.
fn weight(r: SkipReason) -> u8 {
    match r {
        SkipReason::Blocked => 3,
        SkipReason::TopicNotSubscribed => 2,
        SkipReason::NotSubscribed => 1,
        _ => 0,
    }
}

/// Most recently active first (never active last), then the newest identity.
fn by_activity(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.seen.cmp(&a.seen).then(b.id.cmp(&a.id))
}

/// The rows one contact gets: `(identity, reason)`; no reason = planned. Both backends
/// plan with this one rule: the most recently active usable identity is planned, the
/// other usable ones are skipped as duplicates; with nobody to message, one row carries
/// the most telling refusal.
pub(crate) fn decide(
    mut cands: Vec<Candidate>,
    preferred_only: bool,
) -> Vec<(Option<Candidate>, Option<SkipReason>)> {
    if cands.is_empty() {
        return vec![(None, Some(SkipReason::NoIdentity))];
    }
    if preferred_only {
        cands.sort_by(by_activity);
        let first = cands.remove(0);
        if let Some(reason) = first.refusal() {
            return vec![(Some(first), Some(reason))];
        }
        let mut rows = vec![(Some(first), None)];
        rows.extend(
            cands
                .into_iter()
                .filter(Candidate::usable)
                .map(|c| (Some(c), Some(SkipReason::DuplicatePerson))),
        );
        return rows;
    }
    cands.sort_by(|a, b| b.usable().cmp(&a.usable()).then_with(|| by_activity(a, b)));
    if cands[0].usable() {
        let mut it = cands.into_iter().filter(Candidate::usable);
        let mut rows = Vec::new();
        if let Some(first) = it.next() {
            rows.push((Some(first), None));
        }
        rows.extend(it.map(|c| (Some(c), Some(SkipReason::DuplicatePerson))));
        return rows;
    }
    // Nobody to message: one row, on the identity with the most telling refusal (the
    // most recently active among equals, by the sort).
    let mut best: Option<(Candidate, SkipReason)> = None;
    for c in cands {
        let reason = c.refusal().unwrap_or(SkipReason::NotSubscribed);
        if best
            .as_ref()
            .is_none_or(|(_, r)| weight(reason) > weight(*r))
        {
            best = Some((c, reason));
        }
    }
    match best {
        Some((c, r)) => vec![(Some(c), Some(r))],
        None => vec![(None, Some(SkipReason::NoIdentity))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: i64, state: &str, topic_ok: bool, seen: Option<i64>) -> Candidate {
        Candidate {
            id,
            channel: 1,
            state: state.into(),
            topic_ok,
            seen,
        }
    }

    fn shape(
        rows: Vec<(Option<Candidate>, Option<SkipReason>)>,
    ) -> Vec<(Option<i64>, Option<SkipReason>)> {
        rows.into_iter()
            .map(|(c, r)| (c.map(|c| c.id), r))
            .collect()
    }

    #[test]
    fn the_most_recently_active_subscribed_identity_wins() {
        let rows = decide(
            vec![
                cand(1, "subscribed", true, Some(10)),
                cand(2, "subscribed", true, Some(20)),
                cand(3, "unsubscribed", true, Some(30)),
                cand(4, "subscribed", true, None),
            ],
            false,
        );
        assert_eq!(
            shape(rows),
            vec![
                (Some(2), None),
                (Some(1), Some(SkipReason::DuplicatePerson)),
                (Some(4), Some(SkipReason::DuplicatePerson)),
            ]
        );
    }

    #[test]
    fn the_most_telling_refusal_is_recorded() {
        let rows = decide(
            vec![
                cand(1, "unsubscribed", true, Some(10)),
                cand(2, "subscribed", false, None),
                cand(3, "blocked", true, None),
            ],
            false,
        );
        assert_eq!(shape(rows), vec![(Some(3), Some(SkipReason::Blocked))]);
        assert_eq!(
            shape(decide(vec![], false)),
            vec![(None, Some(SkipReason::NoIdentity))]
        );
    }

    #[test]
    fn preferred_only_looks_at_the_latest_identity() {
        let rows = decide(
            vec![
                cand(1, "subscribed", true, Some(10)),
                cand(2, "unsubscribed", true, Some(20)),
            ],
            true,
        );
        assert_eq!(
            shape(rows),
            vec![(Some(2), Some(SkipReason::NotSubscribed))]
        );
    }
}
