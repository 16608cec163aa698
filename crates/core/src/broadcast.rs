//! Broadcasts: one message (or A/B variants of it) sent to a segment, with the rules every
//! recipient is checked against and the reasons a recipient is skipped.
//!
//! This module holds the document a marketer edits ([`BroadcastSpec`]), the life cycle
//! ([`BroadcastStatus`]), the per-recipient states and skip reasons, and the pure rules
//! (variant assignment, frequency cap). Storage and sending live in the store and engine.

use crate::message::MediaKind;
use crate::ChannelId;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a broadcast is in its life: draft → scheduled → sending → paused / cancelled →
/// finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastStatus {
    /// Being edited; nothing happens.
    Draft,
    /// Waiting for its send time.
    Scheduled,
    /// Planning recipients and sending.
    Sending,
    /// Stopped by a marketer; resumable.
    Paused,
    /// Stopped for good; unsent recipients are skipped as `cancelled`.
    Cancelled,
    /// Every recipient has an outcome.
    Finished,
}

impl BroadcastStatus {
    /// Every status.
    pub const ALL: [BroadcastStatus; 6] = [
        BroadcastStatus::Draft,
        BroadcastStatus::Scheduled,
        BroadcastStatus::Sending,
        BroadcastStatus::Paused,
        BroadcastStatus::Cancelled,
        BroadcastStatus::Finished,
    ];

    /// The stable name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastStatus::Draft => "draft",
            BroadcastStatus::Scheduled => "scheduled",
            BroadcastStatus::Sending => "sending",
            BroadcastStatus::Paused => "paused",
            BroadcastStatus::Cancelled => "cancelled",
            BroadcastStatus::Finished => "finished",
        }
    }

    /// Whether a broadcast in this status can still send something.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            BroadcastStatus::Scheduled | BroadcastStatus::Sending | BroadcastStatus::Paused
        )
    }
}

impl std::str::FromStr for BroadcastStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BroadcastStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown broadcast status `{s}`"))
    }
}

/// Which of a contact's channels a broadcast may use. Whatever the choice, a person gets
/// one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelChoice {
    /// Any channel the contact is subscribed on; the most recently active one wins.
    All,
    /// The contact's preferred channel only: the one they were most recently active on.
    Preferred,
    /// One channel.
    #[serde(untagged)]
    One {
        /// The channel.
        channel: ChannelId,
    },
}

/// When a broadcast goes out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// As soon as it is sent.
    Now,
    /// At one moment for everyone.
    #[serde(untagged)]
    At {
        /// The moment (RFC 3339).
        #[schema(value_type = String, format = DateTime)]
        at: Timestamp,
    },
    /// At a wall-clock time in each contact's own time zone (the workspace's for contacts
    /// without one): `2026-11-23T10:00`.
    #[serde(untagged)]
    Local {
        /// Local date and time.
        #[schema(value_type = String)]
        local: jiff::civil::DateTime,
    },
}

/// The audience: a saved segment, an inline filter, or (when absent) every contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SegmentTarget {
    /// A saved segment, resolved when planning starts.
    Saved {
        /// The segment.
        segment_id: crate::SegmentId,
    },
    /// A filter written into the broadcast (see `segment`).
    Inline {
        /// The filter tree.
        #[schema(value_type = Object)]
        filter: serde_json::Value,
    },
}

/// A button under a broadcast message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BroadcastButton {
    /// Opens a link; the link goes through a tracked redirect so clicks count everywhere.
    Url {
        /// Label.
        label: String,
        /// Target address (http or https).
        url: String,
    },
    /// Starts a published flow for the contact who presses it.
    StartFlow {
        /// Label.
        label: String,
        /// Flow name.
        start_flow: String,
    },
    /// Sends a payload back (for flows' button triggers).
    Payload {
        /// Label.
        label: String,
        /// Payload.
        payload: String,
    },
}

impl BroadcastButton {
    /// The label shown.
    pub fn label(&self) -> &str {
        match self {
            BroadcastButton::Url { label, .. }
            | BroadcastButton::StartFlow { label, .. }
            | BroadcastButton::Payload { label, .. } => label,
        }
    }
}

/// Media attached to a broadcast message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BroadcastMedia {
    /// Image or file.
    pub kind: MediaKind,
    /// Where the provider fetches it.
    pub url: String,
}

/// What a variant sends. `text` is a template (`{{ contact.first_name }}`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastMessage {
    /// Text template.
    #[serde(default)]
    pub text: Option<String>,
    /// Image or file.
    #[serde(default)]
    pub media: Option<BroadcastMedia>,
    /// Buttons.
    #[serde(default)]
    pub buttons: Vec<BroadcastButton>,
}

/// One A/B variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Short name shown in reports (`A`, `B`).
    pub key: String,
    /// Share of the audience (all variants sum to 100; with a winner rule, of the test
    /// group).
    pub percent: u8,
    /// The message.
    pub message: BroadcastMessage,
}

/// What "better" means when picking a winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WinnerMetric {
    /// Read rate (channels with read receipts).
    Read,
    /// Click rate (buttons and tracked links).
    Click,
}

/// "Test on a share of the audience, then send the winner to the rest."
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WinnerRule {
    /// Share of the audience that receives the variants (1–99).
    pub test_percent: u8,
    /// Hours after the test starts when the winner is picked.
    pub after_hours: u32,
    /// The metric compared.
    pub by: WinnerMetric,
}

/// The engagement a follow-up waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engagement {
    /// The message was read.
    Read,
    /// A button or link was clicked.
    Clicked,
}

/// "If not read (or clicked) within N hours, send message B", on the same or another
/// channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    /// What the recipient must not have done.
    pub if_not: Engagement,
    /// Hours after the first message was sent.
    pub after_hours: u32,
    /// Another channel for the follow-up (the contact must be subscribed there); the same
    /// channel when absent.
    #[serde(default)]
    pub channel: Option<ChannelId>,
    /// The message.
    pub message: BroadcastMessage,
}

/// The document a marketer edits. Stored as JSON; checked by the engine before it is
/// scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastSpec {
    /// Audience; every contact when absent.
    #[serde(default)]
    pub segment: Option<SegmentTarget>,
    /// Channel choice.
    #[serde(default = "default_channels")]
    pub channels: ChannelChoice,
    /// Subscription topic the recipients must have opted in to.
    #[serde(default)]
    pub topic: Option<String>,
    /// Variants (one for a plain broadcast).
    pub variants: Vec<Variant>,
    /// When it goes out.
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Optional winner rule.
    #[serde(default)]
    pub winner: Option<WinnerRule>,
    /// Optional follow-up.
    #[serde(default)]
    pub follow_up: Option<FollowUp>,
}

fn default_channels() -> ChannelChoice {
    ChannelChoice::All
}

fn default_schedule() -> Schedule {
    Schedule::Now
}

/// Why a recipient got nothing. Recorded per recipient and counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// No identity on the channels the broadcast may use.
    NoIdentity,
    /// No opt-in on that channel.
    NotSubscribed,
    /// The contact blocked the channel.
    Blocked,
    /// Subscribed, but not to the broadcast's topic.
    TopicNotSubscribed,
    /// Reachable on several channels: another one (the preferred) gets the message.
    DuplicatePerson,
    /// The workspace's frequency cap was reached.
    FrequencyCap,
    /// The channel cannot carry this message (provider rules).
    ProviderRule,
    /// The contact was erased.
    ContactErased,
    /// The broadcast was cancelled before this recipient's turn.
    Cancelled,
    /// The message could not be rendered for this contact (template error).
    RenderFailed,
}

impl SkipReason {
    /// Every reason.
    pub const ALL: [SkipReason; 10] = [
        SkipReason::NoIdentity,
        SkipReason::NotSubscribed,
        SkipReason::Blocked,
        SkipReason::TopicNotSubscribed,
        SkipReason::DuplicatePerson,
        SkipReason::FrequencyCap,
        SkipReason::ProviderRule,
        SkipReason::ContactErased,
        SkipReason::Cancelled,
        SkipReason::RenderFailed,
    ];

    /// The stable name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoIdentity => "no_identity",
            SkipReason::NotSubscribed => "not_subscribed",
            SkipReason::Blocked => "blocked",
            SkipReason::TopicNotSubscribed => "topic_not_subscribed",
            SkipReason::DuplicatePerson => "duplicate_person",
            SkipReason::FrequencyCap => "frequency_cap",
            SkipReason::ProviderRule => "provider_rule",
            SkipReason::ContactErased => "contact_erased",
            SkipReason::Cancelled => "cancelled",
            SkipReason::RenderFailed => "render_failed",
        }
    }
}

impl std::str::FromStr for SkipReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SkipReason::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown skip reason `{s}`"))
    }
}

/// Where one recipient is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Selected, waiting for its turn (or its local time, or the end of quiet hours).
    Planned,
    /// In the outbox.
    Queued,
    /// Accepted by the provider.
    Sent,
    /// Reported delivered.
    Delivered,
    /// Reported read.
    Read,
    /// Clicked a button or link.
    Clicked,
    /// Could not be sent.
    Failed,
    /// Never sent; see the reason.
    Skipped,
}

impl RecipientStatus {
    /// Every status.
    pub const ALL: [RecipientStatus; 8] = [
        RecipientStatus::Planned,
        RecipientStatus::Queued,
        RecipientStatus::Sent,
        RecipientStatus::Delivered,
        RecipientStatus::Read,
        RecipientStatus::Clicked,
        RecipientStatus::Failed,
        RecipientStatus::Skipped,
    ];

    /// The stable name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Planned => "planned",
            RecipientStatus::Queued => "queued",
            RecipientStatus::Sent => "sent",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Read => "read",
            RecipientStatus::Clicked => "clicked",
            RecipientStatus::Failed => "failed",
            RecipientStatus::Skipped => "skipped",
        }
    }
}

impl std::str::FromStr for RecipientStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecipientStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown recipient status `{s}`"))
    }
}

/// "At most `messages` marketing messages per contact per `hours` hours."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    /// Messages allowed in the window.
    pub messages: u32,
    /// Window length in hours.
    pub hours: u32,
}

impl Default for FrequencyCap {
    fn default() -> Self {
        FrequencyCap {
            messages: 2,
            hours: 24,
        }
    }
}

impl FrequencyCap {
    /// Whether one more message is allowed after `sent` in the window.
    pub fn allows(&self, sent: u32) -> bool {
        sent < self.messages
    }

    /// The window's length.
    pub fn window(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_hours(i64::from(self.hours))
    }
}

/// The variant (index into the variants) a contact gets: a stable hash of the broadcast
/// and contact, so re-planning after a crash assigns the same one, spread by `percents`
/// (which sum to 100).
pub fn assign_variant(broadcast_id: i64, contact_id: i64, percents: &[u8]) -> u8 {
    let bucket = bucket(broadcast_id, contact_id, 0x5bd1_e995);
    let mut acc = 0u64;
    for (i, p) in percents.iter().enumerate() {
        acc += u64::from(*p);
        if bucket < acc {
            return u8::try_from(i).unwrap_or(u8::MAX);
        }
    }
    u8::try_from(percents.len().saturating_sub(1)).unwrap_or(0)
}

/// Whether a contact is in the test group of a winner rule (stable, like the variant).
pub fn in_test_group(broadcast_id: i64, contact_id: i64, test_percent: u8) -> bool {
    bucket(broadcast_id, contact_id, 0x2f69_3a1d) < u64::from(test_percent)
}

/// 0..100 from a 64-bit mix (splitmix64) of the two ids and a salt.
fn bucket(broadcast_id: i64, contact_id: i64, salt: u64) -> u64 {
    let mut z = (broadcast_id as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(contact_id as u64)
        .wrapping_add(salt);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_follow_the_split() {
        let mut counts = [0u32; 2];
        for c in 0..10_000 {
            counts[assign_variant(7, c, &[30, 70]) as usize] += 1;
        }
        assert!((2_700..3_300).contains(&counts[0]), "{counts:?}");
        assert_eq!(
            assign_variant(7, 42, &[30, 70]),
            assign_variant(7, 42, &[30, 70])
        );
    }

    #[test]
    fn spec_reads_its_documented_shapes() {
        let spec: BroadcastSpec = serde_json::from_value(serde_json::json!({
            "segment": {"segment_id": 3},
            "channels": {"channel": 2},
            "topic": "news",
            "variants": [{"key": "A", "percent": 100, "message": {"text": "Hi {{ contact.first_name }}",
                "buttons": [{"label": "Shop", "url": "https://example.com"}, {"label": "Quiz", "start_flow": "quiz"}]}}],
            "schedule": {"local": "2026-11-23T10:00"},
            "follow_up": {"if_not": "read", "after_hours": 24, "message": {"text": "Still there?"}}
        }))
        .expect("spec");
        assert_eq!(
            spec.channels,
            ChannelChoice::One {
                channel: ChannelId(2)
            }
        );
        assert!(matches!(spec.schedule, Schedule::Local { .. }));
        assert!(matches!(
            spec.variants[0].message.buttons[1],
            BroadcastButton::StartFlow { .. }
        ));
        let now: BroadcastSpec = serde_json::from_value(
            serde_json::json!({"variants": [], "schedule": "now", "channels": "preferred"}),
        )
        .expect("spec");
        assert_eq!(now.schedule, Schedule::Now);
        assert_eq!(now.channels, ChannelChoice::Preferred);
    }

    #[test]
    fn frequency_cap_counts_the_window() {
        let cap = FrequencyCap::default();
        assert!(cap.allows(1));
        assert!(!cap.allows(2));
    }
}
