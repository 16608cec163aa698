//! Kinds of events in a contact's append-only log.

use serde::{Deserialize, Serialize};

/// What happened. Stored as its snake_case name; new kinds are added as channels, flows
/// and broadcasts land.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The contact was created (by API, UI or an inbound message).
    ContactCreated,
    /// The contact was created or changed by a CSV import.
    ContactImported,
    /// Profile attributes changed.
    ProfileUpdated,
    /// A tag was added.
    TagAdded,
    /// A tag was removed.
    TagRemoved,
    /// A custom field was set.
    FieldSet,
    /// A custom field was unset.
    FieldUnset,
    /// An identity (channel address) was attached.
    IdentityAdded,
    /// An identity was detached.
    IdentityRemoved,
    /// The subscription on an identity changed state or topics.
    SubscriptionChanged,
    /// The contact's data was exported on request.
    DataExported,
    /// The contact's personal data was erased.
    Erased,
    /// A message (text, media, shared contact) arrived from the contact.
    MessageReceived,
    /// The contact pressed a button; data carries its payload.
    ButtonPressed,
    /// The contact started the conversation (Telegram `/start`), with its ref.
    ConversationStarted,
    /// A message to the contact entered the outbox.
    MessageQueued,
    /// The provider accepted a message to the contact.
    MessageSent,
    /// The provider reported the message delivered.
    MessageDelivered,
    /// The provider reported the message read.
    MessageRead,
    /// A message could not be sent; data carries the reason.
    MessageFailed,
    /// A custom event posted through the API.
    Custom,
    /// The contact entered a flow; data names the flow, version and trigger.
    FlowStarted,
    /// The contact's run of a flow ended (finished, stopped, cancelled or failed).
    FlowEnded,
    /// A flow step failed (a template error, an HTTP error); data says which and why.
    FlowStepFailed,
    /// A flow handed the conversation to a human operator; the bot is paused.
    HandedOff,
    /// A flow asked for an operator's attention.
    OperatorNotified,
    /// A conversion (goal) was recorded, with its value.
    Conversion,
}

impl EventKind {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ContactCreated => "contact_created",
            EventKind::ContactImported => "contact_imported",
            EventKind::ProfileUpdated => "profile_updated",
            EventKind::TagAdded => "tag_added",
            EventKind::TagRemoved => "tag_removed",
            EventKind::FieldSet => "field_set",
            EventKind::FieldUnset => "field_unset",
            EventKind::IdentityAdded => "identity_added",
            EventKind::IdentityRemoved => "identity_removed",
            EventKind::SubscriptionChanged => "subscription_changed",
            EventKind::DataExported => "data_exported",
            EventKind::Erased => "erased",
            EventKind::MessageReceived => "message_received",
            EventKind::ButtonPressed => "button_pressed",
            EventKind::ConversationStarted => "conversation_started",
            EventKind::MessageQueued => "message_queued",
            EventKind::MessageSent => "message_sent",
            EventKind::MessageDelivered => "message_delivered",
            EventKind::MessageRead => "message_read",
            EventKind::MessageFailed => "message_failed",
            EventKind::Custom => "custom",
            EventKind::FlowStarted => "flow_started",
            EventKind::FlowEnded => "flow_ended",
            EventKind::FlowStepFailed => "flow_step_failed",
            EventKind::HandedOff => "handed_off",
            EventKind::OperatorNotified => "operator_notified",
            EventKind::Conversion => "conversion",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            EventKind::ContactCreated,
            EventKind::ContactImported,
            EventKind::ProfileUpdated,
            EventKind::TagAdded,
            EventKind::TagRemoved,
            EventKind::FieldSet,
            EventKind::FieldUnset,
            EventKind::IdentityAdded,
            EventKind::IdentityRemoved,
            EventKind::SubscriptionChanged,
            EventKind::DataExported,
            EventKind::Erased,
            EventKind::MessageReceived,
            EventKind::ButtonPressed,
            EventKind::ConversationStarted,
            EventKind::MessageQueued,
            EventKind::MessageSent,
            EventKind::MessageDelivered,
            EventKind::MessageRead,
            EventKind::MessageFailed,
            EventKind::Custom,
            EventKind::FlowStarted,
            EventKind::FlowEnded,
            EventKind::FlowStepFailed,
            EventKind::HandedOff,
            EventKind::OperatorNotified,
            EventKind::Conversion,
        ];
        all.into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind `{s}`"))
    }
}
