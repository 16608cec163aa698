//! Messages in both directions, in the normalized form every channel adapter speaks.
//!
//! Outbound, a marketer composes one [`OutboundMessage`] (text with variables already
//! filled, media, buttons, cards); each adapter renders it to what its channel can show.
//! Inbound, each adapter turns a provider's webhook or poll answer into [`InboundEvent`]s.
//! Both are stored as JSON (the outbox, the inbound log), so their serde form is a
//! storage format: fields are only ever added, with defaults.

use crate::ValidationError;
use serde::{Deserialize, Serialize};

/// Largest normalized text we accept at all; channels split or refuse below this.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Most buttons on one message (channels with fewer show the first ones or degrade).
pub const MAX_BUTTONS: usize = 12;
/// Most cards in one message.
pub const MAX_CARDS: usize = 10;
/// Longest button payload (what a press reports back to flows).
pub const MAX_PAYLOAD_BYTES: usize = 1000;

/// A message to send, before rendering for a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundMessage {
    /// Plain text (adapters escape it for their markup); variables already filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An image or file sent by URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// Buttons under the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    /// A list of cards (title, text, image, buttons), shown as a carousel where the
    /// channel has one and one after another where it does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<Card>,
}

/// An image or a file, by URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// What it is.
    pub kind: MediaKind,
    /// Where the provider fetches it (http or https).
    pub url: String,
    /// File name shown for documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Kinds of media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// A picture shown inline.
    Image,
    /// A file to download.
    File,
}

/// A button under a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Button {
    /// A quick reply: pressing it sends its label as the person's answer (Telegram reply
    /// keyboard, Messenger quick reply); the payload is what flows branch on.
    Reply {
        /// What the person sees (and, where the channel works so, what they send).
        label: String,
        /// Reported back on press; defaults to the label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
    },
    /// A button that reports its payload without sending a message (Telegram inline
    /// callback button, Messenger postback).
    Postback {
        /// What the person sees.
        label: String,
        /// Reported back on press.
        payload: String,
    },
    /// A link.
    Url {
        /// What the person sees.
        label: String,
        /// Where it leads (http or https).
        url: String,
    },
}

impl Button {
    /// The text on the button.
    pub fn label(&self) -> &str {
        match self {
            Button::Reply { label, .. } | Button::Postback { label, .. } => label,
            Button::Url { label, .. } => label,
        }
    }

    /// What pressing the button reports, if it reports anything.
    pub fn payload(&self) -> Option<&str> {
        match self {
            Button::Reply { label, payload } => Some(payload.as_deref().unwrap_or(label)),
            Button::Postback { payload, .. } => Some(payload),
            Button::Url { .. } => None,
        }
    }
}

/// One card of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// Title line.
    pub title: String,
    /// Text under the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// Picture URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Buttons of this card.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

fn http_url(field: &str, v: &str) -> Result<(), ValidationError> {
    match url::Url::parse(v) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err(ValidationError::new(field, "must be an http or https URL")),
    }
}

fn non_blank(field: &str, v: &str, max: usize) -> Result<(), ValidationError> {
    let n = v.chars().count();
    if v.trim().is_empty() || n > max {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(())
}

fn check_buttons(prefix: &str, buttons: &[Button]) -> Result<(), ValidationError> {
    if buttons.len() > MAX_BUTTONS {
        return Err(ValidationError::new(
            prefix,
            format!("at most {MAX_BUTTONS} buttons"),
        ));
    }
    for (i, b) in buttons.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        non_blank(&format!("{at}.label"), b.label(), 100)?;
        match b {
            Button::Url { url, .. } => http_url(&format!("{at}.url"), url)?,
            Button::Postback { payload, .. } => {
                if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
                    return Err(ValidationError::new(
                        format!("{at}.payload"),
                        format!("must be 1 to {MAX_PAYLOAD_BYTES} bytes"),
                    ));
                }
            }
            Button::Reply { payload, .. } => {
                if let Some(p) = payload {
                    if p.is_empty() || p.len() > MAX_PAYLOAD_BYTES {
                        return Err(ValidationError::new(
                            format!("{at}.payload"),
                            format!("must be 1 to {MAX_PAYLOAD_BYTES} bytes"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl OutboundMessage {
    /// A text-only message.
    pub fn text(text: impl Into<String>) -> Self {
        OutboundMessage {
            text: Some(text.into()),
            ..Default::default()
        }
    }

    /// Checks the channel-independent rules: something to send, sane sizes, http URLs.
    /// Channel limits (text length, button count) are the renderer's business: it splits
    /// or degrades rather than refusing.
    pub fn validated(self) -> Result<OutboundMessage, ValidationError> {
        let has_text = self.text.as_deref().is_some_and(|t| !t.trim().is_empty());
        if !has_text && self.media.is_none() && self.cards.is_empty() {
            return Err(ValidationError::new(
                "text",
                "a message needs text, media or cards",
            ));
        }
        if let Some(t) = &self.text {
            if t.chars().count() > MAX_TEXT_CHARS {
                return Err(ValidationError::new(
                    "text",
                    format!("must be at most {MAX_TEXT_CHARS} characters"),
                ));
            }
        }
        if let Some(m) = &self.media {
            http_url("media.url", &m.url)?;
        }
        check_buttons("buttons", &self.buttons)?;
        if self.cards.len() > MAX_CARDS {
            return Err(ValidationError::new(
                "cards",
                format!("at most {MAX_CARDS} cards"),
            ));
        }
        for (i, c) in self.cards.iter().enumerate() {
            non_blank(&format!("cards[{i}].title"), &c.title, 200)?;
            if let Some(u) = &c.image_url {
                http_url(&format!("cards[{i}].image_url"), u)?;
            }
            check_buttons(&format!("cards[{i}].buttons"), &c.buttons)?;
        }
        Ok(self)
    }

    /// Every button with a payload, in the order a numbered list shows them: the
    /// message's own, then each card's. Index `n - 1` is what the answer "n" means.
    pub fn choices(&self) -> Vec<&Button> {
        self.buttons
            .iter()
            .chain(self.cards.iter().flat_map(|c| c.buttons.iter()))
            .filter(|b| b.payload().is_some())
            .collect()
    }
}

/// Why a message is sent; decides which consent it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// An answer to something the person just did (a reply, a confirmation of STOP).
    /// Allowed without a marketing opt-in, never to someone who blocked the channel.
    Response,
    /// A message the person expects about their own business with the workspace (an
    /// order update). Needs a recorded opt-in (`subscribed`) on the channel, like
    /// marketing; it differs in reporting and, later, in caps and quiet hours.
    Transactional,
    /// Anything promotional: needs a recorded opt-in on that channel.
    Marketing,
}

impl Purpose {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Response => "response",
            Purpose::Transactional => "transactional",
            Purpose::Marketing => "marketing",
        }
    }
}

impl std::str::FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "response" => Purpose::Response,
            "transactional" => Purpose::Transactional,
            "marketing" => Purpose::Marketing,
            _ => return Err(format!("unknown purpose `{s}`")),
        })
    }
}

/// The sender of an inbound event, as the provider describes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sender {
    /// The provider's id of the person on this channel (Telegram chat id…).
    pub external_id: String,
    /// First name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Username, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Language code, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// One normalized inbound event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The provider's id of the event, unique per channel (Telegram `update_id`): the key
    /// that makes provider retries harmless.
    pub provider_event_id: String,
    /// Who it came from.
    pub sender: Sender,
    /// When the provider says it happened (Unix seconds).
    pub at: i64,
    /// What happened.
    pub kind: InboundKind,
}

/// What an inbound event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    /// A text message.
    Text {
        /// The provider's message id.
        message_id: String,
        /// The text.
        text: String,
    },
    /// A picture, file, voice or other media.
    Media {
        /// The provider's message id.
        message_id: String,
        /// `image`, `file`, `audio`, `video`, `sticker`…
        media_type: String,
        /// Caption, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// The person shared their phone number.
    ContactShared {
        /// The provider's message id.
        message_id: String,
        /// The phone number as given.
        phone: String,
    },
    /// A button with a payload was pressed.
    ButtonPressed {
        /// The provider's reference to answer the press (Telegram callback query id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_id: Option<String>,
        /// The raw data the provider returned (Telegram `callback_data`); the pipeline
        /// resolves it to the button's payload.
        data: String,
    },
    /// The conversation started, possibly from a ref link (Telegram `/start PAYLOAD`).
    Start {
        /// The provider's message id.
        message_id: String,
        /// The message that started it, as the person sent it (consent proof).
        text: String,
        /// The ref payload, if the link carried one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The person subscribed on the provider's side (Viber `subscribed`).
    Subscribed,
    /// The person unsubscribed on the provider's side.
    Unsubscribed,
    /// The person blocked the channel account (Telegram `my_chat_member` → kicked).
    Blocked,
    /// The person unblocked the channel account.
    Unblocked,
    /// A message we sent was delivered.
    Delivered {
        /// The provider's id of our message.
        message_id: String,
    },
    /// A message we sent was read.
    Read {
        /// The provider's id of our message.
        message_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_needs_content_and_valid_urls() {
        assert!(OutboundMessage::default().validated().is_err());
        assert!(OutboundMessage::text("  ").validated().is_err());
        assert!(OutboundMessage::text("hi").validated().is_ok());
        let bad = OutboundMessage {
            text: Some("x".into()),
            buttons: vec![Button::Url {
                label: "site".into(),
                url: "javascript:alert(1)".into(),
            }],
            ..Default::default()
        };
        let e = bad.validated().expect_err("javascript URL");
        assert_eq!(e.field, "buttons[0].url");
    }

    #[test]
    fn choices_number_payload_buttons_in_display_order() {
        let m = OutboundMessage {
            text: Some("pick".into()),
            buttons: vec![
                Button::Reply {
                    label: "Yes".into(),
                    payload: None,
                },
                Button::Url {
                    label: "Site".into(),
                    url: "https://example.com".into(),
                },
                Button::Postback {
                    label: "No".into(),
                    payload: "NO".into(),
                },
            ],
            ..Default::default()
        };
        let c: Vec<_> = m.choices().iter().filter_map(|b| b.payload()).collect();
        assert_eq!(c, vec!["Yes", "NO"]);
    }

    #[test]
    fn storage_form_round_trips() {
        let e = InboundEvent {
            provider_event_id: "7".into(),
            sender: Sender {
                external_id: "42".into(),
                ..Default::default()
            },
            at: 1,
            kind: InboundKind::Start {
                message_id: "1".into(),
                text: "/start ref_summer".into(),
                reference: Some("ref_summer".into()),
            },
        };
        let s = serde_json::to_string(&e).expect("json");
        assert!(s.contains(r#""type":"start""#));
        assert_eq!(serde_json::from_str::<InboundEvent>(&s).expect("back"), e);
    }
}
