//! Channels: connected accounts in messengers, and their kinds.

use crate::ValidationError;
use serde::{Deserialize, Serialize};

/// Which provider a channel speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Telegram bot.
    Telegram,
    /// A Viber bot.
    Viber,
    /// A VK community.
    Vk,
    /// A Facebook page (Messenger).
    Messenger,
    /// A WhatsApp Business number (Cloud API).
    Whatsapp,
    /// The built-in web chat widget.
    Webchat,
    /// An SMS sender behind an HTTP gateway.
    Sms,
    /// An e-mail sender (SMTP).
    Email,
}

impl ChannelKind {
    /// Every kind.
    pub const ALL: [ChannelKind; 8] = [
        ChannelKind::Telegram,
        ChannelKind::Viber,
        ChannelKind::Vk,
        ChannelKind::Messenger,
        ChannelKind::Whatsapp,
        ChannelKind::Webchat,
        ChannelKind::Sms,
        ChannelKind::Email,
    ];

    /// The stable name used in storage and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Telegram => "telegram",
            ChannelKind::Viber => "viber",
            ChannelKind::Vk => "vk",
            ChannelKind::Messenger => "messenger",
            ChannelKind::Whatsapp => "whatsapp",
            ChannelKind::Webchat => "webchat",
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
        }
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChannelKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown channel kind `{s}`"))
    }
}

/// Whether a channel is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelStatus {
    /// Connected and working.
    Active,
    /// Switched off by a user: nothing is sent or received.
    Disabled,
    /// The provider refused the credentials or the connection is broken.
    Error,
}

impl ChannelStatus {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Active => "active",
            ChannelStatus::Disabled => "disabled",
            ChannelStatus::Error => "error",
        }
    }
}

impl std::str::FromStr for ChannelStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => ChannelStatus::Active,
            "disabled" => ChannelStatus::Disabled,
            "error" => ChannelStatus::Error,
            _ => return Err(format!("unknown channel status `{s}`")),
        })
    }
}

/// Checks a channel or workspace name: trimmed, 1–100 characters.
pub fn display_name(field: &str, name: &str) -> Result<String, ValidationError> {
    let t = name.trim();
    if t.is_empty() || t.chars().count() > 100 || t.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            "must be 1 to 100 characters, no control characters",
        ));
    }
    Ok(t.to_string())
}

/// Checks an external id (a chat id, user id, phone or e-mail on the provider side).
pub fn external_id(v: &str) -> Result<String, ValidationError> {
    let t = v.trim();
    if t.is_empty() || t.len() > 255 || t.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            "external_id",
            "must be 1 to 255 characters, no control characters",
        ));
    }
    Ok(t.to_string())
}

/// What a channel does on its own, before (and besides) flows: the words that stop and
/// restart messages, the welcome and the default answer. Stored per channel as JSON;
/// every attribute has a default so old rows and partial API bodies stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// Messages that unsubscribe (compared case- and punctuation-insensitively).
    pub stop_words: Vec<String>,
    /// Messages that subscribe again.
    pub start_words: Vec<String>,
    /// Sent after a STOP word.
    pub stop_reply: String,
    /// Sent after a START word.
    pub start_reply: String,
    /// Sent when someone starts the conversation (Telegram `/start`); none when absent.
    #[schema(value_type = Option<Object>)]
    pub welcome: Option<crate::message::OutboundMessage>,
    /// Sent in answer to any other message while no flow handles it; none when absent.
    #[schema(value_type = Option<Object>)]
    pub auto_reply: Option<crate::message::OutboundMessage>,
    /// The consent text shown with the opt-in (kept as proof with each subscription).
    pub consent_text: String,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            stop_words: ["stop", "стоп", "unsubscribe", "отписаться"]
                .map(String::from)
                .to_vec(),
            start_words: ["start", "старт", "subscribe", "подписаться"]
                .map(String::from)
                .to_vec(),
            stop_reply: "You are unsubscribed and will get no more messages. Send START to subscribe again. / Вы отписались. Чтобы подписаться снова, отправьте СТАРТ.".into(),
            start_reply: "You are subscribed again. Send STOP to unsubscribe. / Вы снова подписаны. Чтобы отписаться, отправьте СТОП.".into(),
            welcome: None,
            auto_reply: None,
            consent_text: "Subscribe to messages from us. You can send STOP at any time.".into(),
        }
    }
}

impl ChannelSettings {
    /// Checks sizes and the messages inside.
    pub fn validated(self) -> Result<ChannelSettings, ValidationError> {
        for (name, words) in [
            ("stop_words", &self.stop_words),
            ("start_words", &self.start_words),
        ] {
            if words.len() > 50 {
                return Err(ValidationError::new(name, "at most 50 words"));
            }
            for (i, w) in words.iter().enumerate() {
                if crate::keywords::normalize(w).is_empty() || w.chars().count() > 64 {
                    return Err(ValidationError::new(
                        format!("{name}[{i}]"),
                        "must be 1 to 64 characters with at least one letter or digit",
                    ));
                }
            }
        }
        for (name, text) in [
            ("stop_reply", &self.stop_reply),
            ("start_reply", &self.start_reply),
            ("consent_text", &self.consent_text),
        ] {
            if text.trim().is_empty() || text.chars().count() > 2000 {
                return Err(ValidationError::new(name, "must be 1 to 2000 characters"));
            }
        }
        let welcome = match self.welcome {
            Some(m) => Some(m.validated().map_err(|e| e.under("welcome"))?),
            None => None,
        };
        let auto_reply = match self.auto_reply {
            Some(m) => Some(m.validated().map_err(|e| e.under("auto_reply"))?),
            None => None,
        };
        Ok(ChannelSettings {
            welcome,
            auto_reply,
            ..self
        })
    }
}
