//! Records of the messaging pipeline: stored inbound provider events, the outbox of
//! outgoing messages, and the conversation view over both.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use voronka_core::event::EventKind;
use voronka_core::message::{InboundEvent, OutboundMessage, Purpose, Sender};
use voronka_core::subscription::{SubscriptionChange, SubscriptionState};
use voronka_core::*;

/// A stored inbound event waiting for (or past) processing.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRecord {
    /// Id (processing order).
    pub id: InboundId,
    /// Workspace of the channel.
    pub workspace_id: WorkspaceId,
    /// The channel it arrived on.
    pub channel_id: ChannelId,
    /// The normalized event.
    pub event: InboundEvent,
    /// When Voronka stored it.
    pub received_at: Timestamp,
    /// Processing attempts so far.
    pub attempts: u32,
}

/// What processing one inbound event does, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct InboundApply {
    /// The person: finds the identity by (channel, `sender.external_id`) or creates a
    /// contact (profile from the sender's names and language) with that identity.
    pub sender: Sender,
    /// First-touch source for a contact created now (a ref payload); ignored otherwise.
    pub source: Option<String>,
    /// Applied only if it changes the identity's state or topics.
    pub subscription: Option<SubscriptionChange>,
    /// Appended to the contact's log (after `contact_created` when the contact is new).
    pub events: Vec<(EventKind, Value)>,
    /// Messages to this identity, queued in the same transaction (each records
    /// `message_queued`). Skipped, not failed, when the identity is blocked or the
    /// purpose needs a consent the identity (after `subscription`) does not have.
    pub replies: Vec<NewReply>,
    /// A flow signal for the contact, recorded in the same transaction so flows see
    /// every message exactly once: (kind, data); see [`crate::FlowSignal`].
    pub signal: Option<(String, Value)>,
}

/// A message queued as part of processing an inbound event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReply {
    /// Why it is sent.
    pub purpose: Purpose,
    /// What is sent.
    pub message: OutboundMessage,
    /// What produced it: `welcome`, `auto_reply`, `stop_reply`, `start_reply`, `flow:…`.
    pub source: String,
}

/// What [`crate::MessagingStore::apply_inbound`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundApplied {
    /// The contact.
    pub contact_id: ContactId,
    /// The identity.
    pub identity_id: IdentityId,
    /// Whether the contact was created now.
    pub contact_created: bool,
    /// Whether the subscription changed.
    pub subscription_changed: bool,
    /// Queued replies, in order (skipped ones are absent).
    pub queued: Vec<OutboxId>,
    /// True when the event had already been processed: nothing was written.
    pub already_done: bool,
}

/// A message to queue for a contact on one channel (API, flows, broadcasts).
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbound {
    /// The channel to send on; the contact must have an identity there.
    pub channel_id: ChannelId,
    /// Why it is sent; decides the consent needed.
    pub purpose: Purpose,
    /// What is sent.
    pub message: OutboundMessage,
    /// What produced it: `api`, `flow:…`, `broadcast:…`.
    pub source: String,
    /// Earliest send time (now when absent).
    pub run_at: Option<Timestamp>,
}

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its time or its turn.
    Queued,
    /// Claimed by a worker (until its lease ends).
    Sending,
    /// The provider accepted it.
    Sent,
    /// Definitively not sent; `error` says why.
    Failed,
}

impl OutboxState {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Sending => "sending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for OutboxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => OutboxState::Queued,
            "sending" => OutboxState::Sending,
            "sent" => OutboxState::Sent,
            "failed" => OutboxState::Failed,
            _ => return Err(format!("unknown outbox state `{s}`")),
        })
    }
}

/// An outgoing message.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboxItem {
    /// Id.
    pub id: OutboxId,
    /// Workspace.
    #[serde(skip)]
    pub workspace_id: WorkspaceId,
    /// Channel it goes out on.
    pub channel_id: ChannelId,
    /// Recipient.
    pub contact_id: ContactId,
    /// Recipient's identity on the channel.
    pub identity_id: IdentityId,
    /// The provider's id of the recipient (copied so sending needs no join).
    #[serde(skip)]
    pub external_id: String,
    /// Why it is sent.
    pub purpose: Purpose,
    /// What is sent.
    pub message: OutboundMessage,
    /// What produced it.
    pub source: String,
    /// Where it is.
    pub state: OutboxState,
    /// Send attempts so far.
    pub attempts: u32,
    /// Rendered parts already accepted by the provider (a long text is several parts;
    /// a retry resumes after them instead of sending them twice).
    pub parts_sent: u32,
    /// Provider ids of the accepted parts.
    pub provider_message_ids: Vec<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Not before.
    #[schema(value_type = String, format = DateTime)]
    pub run_at: Timestamp,
    /// Queued at.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Accepted by the provider at.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<Timestamp>,
}

/// The outcome of one send attempt, reported by a delivery worker.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxResult {
    /// The message.
    pub id: OutboxId,
    /// Parts accepted so far (all of them when `outcome` is `Sent`).
    pub parts_sent: u32,
    /// Provider ids of the accepted parts so far.
    pub provider_message_ids: Vec<String>,
    /// What happened.
    pub outcome: SendOutcome,
}

/// What happened to a send attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Every part accepted: state `sent`, event `message_sent`.
    Sent,
    /// Try again at `at` (rate limit, 5xx, timeout): state `queued`, no event.
    Retry {
        /// Next attempt.
        at: Timestamp,
        /// What went wrong, kept in `error`.
        error: String,
    },
    /// Refused for good: state `failed`, event `message_failed` with the reason.
    Failed {
        /// Why.
        reason: String,
    },
    /// The person blocked the channel account: state `failed`, event `message_failed`,
    /// and the identity's subscription becomes `blocked` (history + event).
    Blocked {
        /// The provider's words.
        reason: String,
    },
}

/// One line of a conversation (web chat history, the admin timeline).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConversationItem {
    /// `in` from the contact, `out` to them.
    pub direction: Direction,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Inbound: the event as received; absent for outbound.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub inbound: Option<Value>,
    /// Outbound: the message; absent for inbound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboxItem>,
}

/// Direction of a conversation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the contact.
    In,
    /// To the contact.
    Out,
}

/// A channel's adapter state that survives restarts (webhook mode, bot name, errors).
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ChannelRuntime {
    /// `webhook` or `polling` (Telegram), empty before the first start.
    pub mode: String,
    /// The provider's name of the account (Telegram bot username).
    pub account_name: Option<String>,
    /// The provider's id of the account.
    pub account_id: Option<String>,
    /// Last connection error, if the channel is failing.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<Timestamp>,
}

// ------------------------------------------------------------------------------------
// Rules and record shapes both backends share, so they cannot drift apart.

/// Inbound kinds shown in a conversation (the others are state changes and receipts).
pub(crate) const CONVERSATION_KINDS: [&str; 5] =
    ["text", "media", "contact_shared", "button_pressed", "start"];

/// Longest conversation page.
pub(crate) fn conversation_limit(limit: u32) -> usize {
    limit.clamp(1, 1000) as usize
}

/// The profile of a contact created from an inbound event. Each attribute is checked on
/// its own and dropped when invalid (a language tag we do not know, a control character
/// in a name): a provider's odd value must not refuse the person's message.
pub(crate) fn sender_profile(s: &Sender) -> voronka_core::contact::Profile {
    use voronka_core::contact::Profile;
    let keep = |p: Profile| p.validated().unwrap_or_default();
    Profile {
        first_name: keep(Profile {
            first_name: s.first_name.clone(),
            ..Profile::default()
        })
        .first_name,
        last_name: keep(Profile {
            last_name: s.last_name.clone(),
            ..Profile::default()
        })
        .last_name,
        username: keep(Profile {
            username: s.username.clone(),
            ..Profile::default()
        })
        .username,
        language: keep(Profile {
            language: s.language.clone(),
            ..Profile::default()
        })
        .language,
        ..Profile::default()
    }
}

/// The first-touch source of a contact created from an inbound event (a ref payload):
/// trimmed, and dropped when empty, over 200 characters or with control characters.
pub(crate) fn contact_source(source: Option<&str>) -> Option<String> {
    let s = source?.trim();
    let ok = !s.is_empty()
        && s.chars().count() <= voronka_core::contact::MAX_SHORT_TEXT
        && !s.chars().any(char::is_control);
    ok.then(|| s.to_string())
}

/// Whether a message with `purpose` may be queued for an identity in `state`: never
/// after a block; marketing and transactional messages need `subscribed`; a response
/// needs nothing more.
pub(crate) fn consent_for(purpose: Purpose, state: SubscriptionState) -> crate::Result<()> {
    match (purpose, state) {
        (_, SubscriptionState::Blocked) => Err(crate::StoreError::conflict(
            "blocked",
            "the contact blocked this channel; nothing can be sent to them there",
            None,
        )),
        (Purpose::Response, _) | (_, SubscriptionState::Subscribed) => Ok(()),
        _ => Err(crate::StoreError::conflict(
            "not_subscribed",
            format!(
                "the contact has not opted in to {} messages on this channel",
                purpose.as_str()
            ),
            None,
        )),
    }
}

/// The conflict when a contact has no identity on the channel.
pub(crate) fn no_identity_on_channel(channel: ChannelId) -> crate::StoreError {
    crate::StoreError::conflict(
        "no_identity_on_channel",
        format!("the contact has no identity on channel {channel}"),
        Some("channel_id"),
    )
}

/// The change recorded when a delivery finds the person blocked the channel account.
pub(crate) fn blocked_change(now: Timestamp) -> crate::Result<SubscriptionChange> {
    Ok(SubscriptionChange::new(
        SubscriptionState::Blocked,
        Vec::new(),
        None,
        now,
    )?)
}

/// `message_queued` event data.
pub(crate) fn queued_event(
    id: OutboxId,
    channel: ChannelId,
    source: &str,
    purpose: Purpose,
) -> Value {
    serde_json::json!({
        "outbox_id": id.0,
        "channel_id": channel.0,
        "source": source,
        "purpose": purpose.as_str(),
    })
}

/// `message_sent` event data.
pub(crate) fn sent_event(id: OutboxId, channel: ChannelId, source: &str, ids: &[String]) -> Value {
    serde_json::json!({
        "outbox_id": id.0,
        "channel_id": channel.0,
        "source": source,
        "provider_message_ids": ids,
    })
}

/// `message_failed` event data.
pub(crate) fn failed_event(id: OutboxId, channel: ChannelId, reason: &str) -> Value {
    serde_json::json!({
        "outbox_id": id.0,
        "channel_id": channel.0,
        "reason": reason,
    })
}

/// Merges the newest inbound rows (`id`, received at, payload) and outgoing messages of
/// one identity into the latest `limit` conversation items, oldest first. Time orders
/// them; equal times fall back to the row id, then inbound before outbound.
pub(crate) fn merge_conversation(
    inbound: Vec<(i64, Timestamp, Value)>,
    outbound: Vec<OutboxItem>,
    limit: usize,
) -> Vec<ConversationItem> {
    let mut all: Vec<(Timestamp, i64, u8, ConversationItem)> =
        Vec::with_capacity(inbound.len() + outbound.len());
    for (id, at, payload) in inbound {
        all.push((
            at,
            id,
            0,
            ConversationItem {
                direction: Direction::In,
                at,
                inbound: Some(payload),
                outbound: None,
            },
        ));
    }
    for o in outbound {
        all.push((
            o.created_at,
            o.id.0,
            1,
            ConversationItem {
                direction: Direction::Out,
                at: o.created_at,
                inbound: None,
                outbound: Some(o),
            },
        ));
    }
    all.sort_by_key(|(at, id, dir, _)| (*at, *id, *dir));
    let skip = all.len().saturating_sub(limit);
    all.into_iter().skip(skip).map(|(.., item)| item).collect()
}

/// A lease as microseconds, saturating (a lease of centuries is "forever").
pub(crate) fn lease_us(lease: std::time::Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

/// Every outbox state with its count (zero when absent), in lifecycle order.
pub(crate) fn all_states(counts: Vec<(OutboxState, i64)>) -> Vec<(OutboxState, u64)> {
    [
        OutboxState::Queued,
        OutboxState::Sending,
        OutboxState::Sent,
        OutboxState::Failed,
    ]
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
