//! Deciding what an inbound event means, without I/O: the processor reads the state
//! (identity, channel settings, the button being answered), this module turns it into one
//! [`InboundApply`] that the store applies atomically.
//!
//! Precedence, highest first: STOP words (always win, even over a pending question),
//! START words, then the answer to the last message's buttons, then the auto-reply.

use jiff::Timestamp;
use serde_json::json;
use voronka_core::channel::{ChannelKind, ChannelSettings};
use voronka_core::event::EventKind;
use voronka_core::keywords;
use voronka_core::message::{InboundEvent, InboundKind, Purpose};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::ChannelId;
use voronka_store::{Identity, InboundApply, NewReply};

/// What the processor knows besides the event itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The channel the event arrived on.
    pub channel_id: ChannelId,
    /// Its provider.
    pub kind: ChannelKind,
    /// Its settings.
    pub settings: &'a ChannelSettings,
    /// The person's identity, if already known.
    pub identity: Option<&'a Identity>,
    /// For a text: the payload of the button it answers (a typed "2" or a reply-keyboard
    /// label), resolved against the last message with buttons. For a press: the payload
    /// behind the callback data. `None` when nothing matched.
    pub answered_payload: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// The plan for one event: the atomic part, and what happens after it commits.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Applied by the store in one transaction.
    pub apply: InboundApply,
    /// A button press to acknowledge to the provider (Telegram callback query id).
    pub acknowledge: Option<String>,
    /// A phone number the person shared, to fill an empty profile phone.
    pub shared_phone: Option<String>,
}

/// Whether starting a conversation counts as an opt-in on this kind of channel. A
/// Telegram `/start` is one (the person pressed Start on the bot); opening the web chat
/// is not: there the consent checkbox is.
fn start_is_opt_in(kind: ChannelKind) -> bool {
    !matches!(kind, ChannelKind::Webchat)
}

fn proof(
    source: String,
    event: &InboundEvent,
    text: Option<&str>,
    message_id: Option<&str>,
    now: Timestamp,
) -> ConsentProof {
    // Provider clocks drift; a proof "from the future" would be refused by validation.
    let at = Timestamp::from_second(event.at)
        .ok()
        .filter(|t| *t <= now)
        .unwrap_or(now);
    ConsentProof {
        source,
        at,
        text_shown: text.map(|t| t.chars().take(1000).collect()),
        ip: None,
        message_id: message_id.map(str::to_string),
    }
}

fn change(
    state: SubscriptionState,
    proof: Option<ConsentProof>,
    now: Timestamp,
) -> Option<SubscriptionChange> {
    // Topics are kept as they are: a STOP withdraws everything, a START restores the
    // channel, and topic choices are the preference centre's business.
    SubscriptionChange::new(state, Vec::new(), proof, now).ok()
}

fn reply(
    purpose: Purpose,
    message: voronka_core::message::OutboundMessage,
    source: &str,
) -> NewReply {
    NewReply {
        purpose,
        message,
        source: source.to_string(),
    }
}

/// Plans the handling of `event`.
pub fn plan(event: &InboundEvent, cx: &Context<'_>) -> Plan {
    let ch = cx.channel_id.0;
    let mut p = Plan::default();
    p.apply.sender = event.sender.clone();
    let current = cx.identity.map(|i| i.subscription.state);
    match &event.kind {
        InboundKind::Start {
            message_id,
            text,
            reference,
        } => {
            p.apply.source = reference.clone();
            p.apply.events.push((
                EventKind::ConversationStarted,
                json!({"channel_id": ch, "reference": reference, "message_id": message_id}),
            ));
            if start_is_opt_in(cx.kind) {
                let source = match reference {
                    Some(r) => format!("{}_start:{r}", cx.kind.as_str()),
                    None => format!("{}_start", cx.kind.as_str()),
                };
                p.apply.subscription = change(
                    SubscriptionState::Subscribed,
                    Some(proof(source, event, Some(text), Some(message_id), cx.now)),
                    cx.now,
                );
            }
            if let Some(w) = &cx.settings.welcome {
                p.apply
                    .replies
                    .push(reply(Purpose::Response, w.clone(), "welcome"));
            }
        }
        InboundKind::Text { message_id, text } => {
            p.apply.events.push((
                EventKind::MessageReceived,
                json!({"channel_id": ch, "message_id": message_id, "text": text}),
            ));
            if keywords::is_one_of(text, &cx.settings.stop_words) {
                p.apply.subscription = change(
                    SubscriptionState::Unsubscribed,
                    Some(proof(
                        "stop_word".into(),
                        event,
                        Some(text),
                        Some(message_id),
                        cx.now,
                    )),
                    cx.now,
                );
                p.apply.replies.push(reply(
                    Purpose::Response,
                    voronka_core::message::OutboundMessage::text(cx.settings.stop_reply.clone()),
                    "stop_reply",
                ));
            } else if keywords::is_one_of(text, &cx.settings.start_words) {
                if current != Some(SubscriptionState::Subscribed) {
                    p.apply.subscription = change(
                        SubscriptionState::Subscribed,
                        Some(proof(
                            "start_word".into(),
                            event,
                            Some(text),
                            Some(message_id),
                            cx.now,
                        )),
                        cx.now,
                    );
                }
                p.apply.replies.push(reply(
                    Purpose::Response,
                    voronka_core::message::OutboundMessage::text(cx.settings.start_reply.clone()),
                    "start_reply",
                ));
            } else if let Some(payload) = &cx.answered_payload {
                p.apply.events.push((
                    EventKind::ButtonPressed,
                    json!({"channel_id": ch, "payload": payload, "via": "text"}),
                ));
            } else if let Some(a) = &cx.settings.auto_reply {
                p.apply
                    .replies
                    .push(reply(Purpose::Response, a.clone(), "auto_reply"));
            }
        }
        InboundKind::Media {
            message_id,
            media_type,
            caption,
        } => {
            p.apply.events.push((
                EventKind::MessageReceived,
                json!({"channel_id": ch, "message_id": message_id, "media_type": media_type, "caption": caption}),
            ));
            if let Some(a) = &cx.settings.auto_reply {
                p.apply
                    .replies
                    .push(reply(Purpose::Response, a.clone(), "auto_reply"));
            }
        }
        InboundKind::ContactShared { message_id, phone } => {
            p.apply.events.push((
                EventKind::MessageReceived,
                json!({"channel_id": ch, "message_id": message_id, "shared_phone": phone}),
            ));
            p.shared_phone = Some(phone.clone());
        }
        InboundKind::ButtonPressed { callback_id, data } => {
            p.apply.events.push((
                EventKind::ButtonPressed,
                json!({"channel_id": ch, "payload": cx.answered_payload, "data": data, "via": "button"}),
            ));
            p.acknowledge = callback_id.clone();
        }
        InboundKind::Subscribed => {
            p.apply.subscription = change(
                SubscriptionState::Subscribed,
                Some(proof(
                    format!("{}_consent", cx.kind.as_str()),
                    event,
                    Some(&cx.settings.consent_text),
                    Some(&event.provider_event_id),
                    cx.now,
                )),
                cx.now,
            );
        }
        InboundKind::Unsubscribed => {
            p.apply.subscription = change(SubscriptionState::Unsubscribed, None, cx.now);
        }
        InboundKind::Blocked => {
            p.apply.subscription = change(SubscriptionState::Blocked, None, cx.now);
        }
        InboundKind::Unblocked => {
            // Unblocking is not consent: the person is reachable again but must opt in
            // (Telegram clients send /start right after, which does).
            if current == Some(SubscriptionState::Blocked) {
                p.apply.subscription = change(SubscriptionState::Unsubscribed, None, cx.now);
            }
        }
        InboundKind::Delivered { message_id } => {
            p.apply.events.push((
                EventKind::MessageDelivered,
                json!({"channel_id": ch, "provider_message_id": message_id}),
            ));
        }
        InboundKind::Read { message_id } => {
            p.apply.events.push((
                EventKind::MessageRead,
                json!({"channel_id": ch, "provider_message_id": message_id}),
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests;
