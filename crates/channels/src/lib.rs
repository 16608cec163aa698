//! Channel adapters: everything Voronka knows about one messenger lives in one module
//! behind [`ChannelAdapter`].
//!
//! The rest of Voronka speaks only the normalized types of `voronka_core::message`. An
//! adapter translates in both directions: it checks and parses the provider's webhooks
//! into [`InboundEvent`]s, renders an [`OutboundMessage`] into the provider calls that
//! show it best ([`RenderedPart`]s, stored in the outbox so a retry sends exactly the same
//! thing), and sends one part at a time, classifying failures so the sender knows whether
//! to retry, wait, or give up ([`SendError`]).
//!
//! Rendering is pure and split from sending on purpose: the outbox keeps the rendered
//! parts, so a message is rendered once and each part is retried on its own.

pub mod render;
pub mod telegram;
pub mod webchat;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use voronka_core::channel::ChannelKind;
use voronka_core::message::{InboundEvent, OutboundMessage};

pub use http;

/// What a channel can show and how fast it may be sent to; renderers and the sender's
/// rate limiter read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    /// Longest text of one message, in characters.
    pub text_limit: usize,
    /// Longest caption under a picture or file, in characters.
    pub caption_limit: usize,
    /// Whether quick replies (buttons that send their label) exist.
    pub reply_buttons: bool,
    /// Whether buttons that report a payload without a message exist.
    pub postback_buttons: bool,
    /// Whether link buttons exist.
    pub url_buttons: bool,
    /// Most buttons shown under one message.
    pub max_buttons: usize,
    /// Longest button label, in characters; longer ones are cut with "…".
    pub button_label_limit: usize,
    /// Longest payload a button can carry, in bytes.
    pub payload_limit_bytes: usize,
    /// Whether pictures and files can be sent.
    pub media: bool,
    /// Whether the channel has native carousels (otherwise one message per card).
    pub cards: bool,
    /// Whether the provider reports that a message was read.
    pub read_receipts: bool,
    /// Whether the provider reports that a message was delivered.
    pub delivery_receipts: bool,
    /// Messages per second the provider accepts for one account.
    pub rate_per_account: f64,
    /// Messages per second the provider accepts for one chat.
    pub rate_per_chat: f64,
    /// How many messages one chat may get in a short burst before the per-chat rate applies.
    pub chat_burst: u32,
}

/// What a renderer may know about the message besides its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderContext {
    /// The outbox row the message is rendered for, so adapters can refer to server-side
    /// data (payloads too long for the provider) by reference.
    pub outbox_id: i64,
}

/// One provider call that shows (part of) a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedPart {
    /// The provider's method or endpoint name (Telegram `sendMessage`).
    pub method: String,
    /// The call's parameters, without the recipient (added by [`ChannelAdapter::send`]).
    pub body: serde_json::Value,
}

/// What a successful send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id of the message just sent.
    pub provider_message_id: String,
}

/// Why a send failed, classified by what the sender should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider throttles us (429, flood control): wait, then retry.
    #[error("rate limited by the provider; retry after {} s", retry_after.as_secs_f64())]
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Duration,
    },
    /// The person blocked the account or can't be messaged: stop sending to them.
    #[error("the recipient can't be messaged: {reason}")]
    Blocked {
        /// The provider's explanation.
        reason: String,
    },
    /// A definitive refusal of this message: never retry it.
    #[error("the provider refused the message: {reason}")]
    Refused {
        /// The provider's explanation.
        reason: String,
    },
    /// The credentials no longer work: the channel is broken until someone fixes it.
    #[error("the provider refused the channel's credentials: {reason}")]
    Unauthorized {
        /// The provider's explanation.
        reason: String,
    },
    /// A temporary failure (5xx, timeout, connection error): retry with backoff.
    #[error("temporary failure: {reason}")]
    Transient {
        /// What went wrong.
        reason: String,
    },
}

impl SendError {
    /// Whether sending the same part again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SendError::RateLimited { .. } | SendError::Transient { .. }
        )
    }
}

/// Why an inbound request was not accepted as coming from the provider. Messages never
/// contain the expected secret or what was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature or secret is absent (or the channel has none to check against).
    #[error("missing {0}")]
    Missing(String),
    /// The signature or secret does not match.
    #[error("the signature or secret does not match")]
    Mismatch,
}

/// Why an inbound body could not be turned into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not what the provider sends (not JSON, a required field missing…).
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body is well-formed but asks for something this adapter does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// One messenger, as the rest of Voronka sees it.
#[async_trait::async_trait]
pub trait ChannelAdapter: Send + Sync {
    /// Which provider this adapter speaks to.
    fn kind(&self) -> ChannelKind;
    /// What the channel can show and how fast it may be sent to.
    fn capabilities(&self) -> &Capabilities;
    /// Checks the provider's signature or secret on an inbound request, constant-time.
    fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError>;
    /// Normalizes one inbound request body into events (provider events we don't use →
    /// empty vec, not an error).
    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError>;
    /// Renders a message into provider calls (split/degraded to the capabilities).
    fn render(&self, message: &OutboundMessage, ctx: &RenderContext) -> Vec<RenderedPart>;
    /// Sends one rendered part to the person with provider id `to`.
    async fn send(&self, to: &str, part: &RenderedPart) -> Result<Sent, SendError>;
    /// Acknowledges a button press where the provider needs it (Telegram
    /// answerCallbackQuery); default no-op.
    async fn acknowledge_button(
        &self,
        _callback_id: &str,
        _text: Option<&str>,
    ) -> Result<(), SendError> {
        Ok(())
    }
    /// Deletes a message this account sent to `to` (a broadcast recall). The default
    /// refuses: most providers cannot take a message back.
    async fn delete(&self, _to: &str, _message_id: &str) -> Result<(), SendError> {
        Err(SendError::Refused {
            reason: format!(
                "unsupported: {} messages cannot be deleted",
                self.kind().as_str()
            ),
        })
    }
}

/// Current Unix time in seconds, for events the provider does not date.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
