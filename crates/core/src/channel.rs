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
