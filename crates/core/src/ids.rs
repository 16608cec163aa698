//! Typed identifiers, so a contact id can never be passed where a tag id is expected.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                Self(v)
            }
        }
    )*};
}

id_type! {
    /// Identifies a workspace (one business; owns everything else).
    WorkspaceId,
    /// Identifies a user account (a person who logs in to the admin UI).
    UserId,
    /// Identifies an API key.
    ApiKeyId,
    /// Identifies a connected channel (a bot, a page, a number, the web chat).
    ChannelId,
    /// Identifies a contact (one person).
    ContactId,
    /// Identifies an identity (a contact's address on one channel).
    IdentityId,
    /// Identifies a tag.
    TagId,
    /// Identifies a custom field definition.
    FieldId,
    /// Identifies an event in a contact's log.
    EventId,
    /// Identifies a stored inbound provider event.
    InboundId,
    /// Identifies an outgoing message in the outbox.
    OutboxId,
}

id_type! {
    /// Identifies a flow (all its versions).
    FlowId,
    /// Identifies one contact's run through a flow version.
    RunId,
    /// Identifies a queued flow signal (something that may start or resume runs).
    SignalId,
}

id_type! {
    /// Identifies a saved segment.
    SegmentId,
    /// Identifies a broadcast.
    BroadcastId,
    /// Identifies one recipient row of a broadcast.
    RecipientId,
}
