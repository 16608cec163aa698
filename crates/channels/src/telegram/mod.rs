//! The Telegram Bot API adapter.
//!
//! Inbound: webhooks carry one `Update` each, signed with the static secret we set with
//! `setWebhook` (header `X-Telegram-Bot-Api-Secret-Token`); polling hands the same
//! updates to [`parse_update`]. Only private chats produce events: Voronka talks to
//! people one to one, and a bot added to a group must not subscribe the whole group.
//!
//! Outbound: messages are rendered in HTML parse mode from plain text (everything is
//! escaped), split at 4096 characters, with buttons on the last part. Payloads that fit
//! Telegram's 64-byte `callback_data` travel inline (`p:PAYLOAD`); longer ones travel by
//! reference to the outbox row (`o:OUTBOX:INDEX`), which the server resolves.

pub mod client;
pub mod types;

#[cfg(test)]
mod tests;

pub use client::{ApiError, TelegramClient};

use crate::render::{split_text, truncate_label};
use crate::{
    Capabilities, ChannelAdapter, ParseError, RenderContext, RenderedPart, SendError, Sent,
    VerifyError,
};
use rand::Rng;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use types::{
    CallbackQuery, Chat, ChatMemberUpdated, InlineKeyboardButton, InlineKeyboardMarkup,
    KeyboardButton, Message, ReplyKeyboardMarkup, Update, User,
};
use voronka_core::channel::ChannelKind;
use voronka_core::message::{
    Button, Card, InboundEvent, InboundKind, MediaKind, OutboundMessage, Sender,
};

/// The webhook header carrying our secret (lowercase, as `HeaderMap` stores names).
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The update kinds Voronka uses; pass to `setWebhook` / `getUpdates`.
pub const ALLOWED_UPDATES: &[&str] = &["message", "callback_query", "my_chat_member"];

/// Longest `callback_data`, in bytes.
pub const CALLBACK_DATA_LIMIT: usize = 64;

/// Labels at most this long, and at most [`SHORT_ROW_MAX`] of them, share one row.
const SHORT_LABEL: usize = 12;
/// Most short buttons put on one row.
const SHORT_ROW_MAX: usize = 3;

/// What a Telegram bot can do.
///
/// `max_buttons` is 12, the normalized message's own cap: Telegram accepts up to 100
/// inline buttons, but one per row past a dozen buries the message on a phone.
/// `button_label_limit` is 64: Telegram has no documented cap, but longer labels are
/// cut off by clients anyway.
pub const CAPABILITIES: Capabilities = Capabilities {
    text_limit: 4096,
    caption_limit: 1024,
    reply_buttons: true,
    postback_buttons: true,
    url_buttons: true,
    max_buttons: 12,
    button_label_limit: 64,
    payload_limit_bytes: CALLBACK_DATA_LIMIT,
    media: true,
    cards: false,
    read_receipts: false,
    delivery_receipts: false,
    rate_per_account: 30.0,
    rate_per_chat: 1.0,
    chat_burst: 3,
};

/// What an inline button's `callback_data` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackRef {
    /// The payload itself (`p:PAYLOAD`).
    Payload(String),
    /// The `index`-th of `OutboundMessage::choices()` of outbox row `outbox_id`
    /// (`o:OUTBOX:INDEX`), for payloads too long for Telegram.
    Outbox {
        /// The outbox row the message was rendered for.
        outbox_id: i64,
        /// Position in the message's `choices()`.
        index: usize,
    },
    /// Data we did not produce (an old bot's buttons, a forged press).
    Unknown(String),
}

/// Encodes a button's `callback_data`: the payload inline when it fits in 64 bytes,
/// otherwise a reference to its position in the outbox row's message.
pub fn encode_callback_data(payload: &str, outbox_id: i64, index: usize) -> String {
    let inline = format!("p:{payload}");
    if inline.len() <= CALLBACK_DATA_LIMIT {
        inline
    } else {
        format!("o:{outbox_id}:{index}")
    }
}

/// Decodes `callback_data` made by [`encode_callback_data`].
pub fn decode_callback_data(data: &str) -> CallbackRef {
    if let Some(p) = data.strip_prefix("p:") {
        return CallbackRef::Payload(p.to_string());
    }
    if let Some((outbox, index)) = data.strip_prefix("o:").and_then(|r| r.split_once(':')) {
        if let (Ok(outbox_id), Ok(index)) = (outbox.parse(), index.parse()) {
            return CallbackRef::Outbox { outbox_id, index };
        }
    }
    CallbackRef::Unknown(data.to_string())
}

/// A fresh webhook secret: 32 characters of `[A-Za-z0-9_-]` (192 bits).
pub fn webhook_secret() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Escapes plain text for HTML parse mode (safe in text and in attribute values).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// A Telegram bot as a [`ChannelAdapter`].
#[derive(Debug, Clone)]
pub struct TelegramAdapter {
    client: TelegramClient,
    webhook_secret: Option<String>,
}

impl TelegramAdapter {
    /// An adapter sending through `client` and accepting webhooks signed with
    /// `webhook_secret` (none: every webhook is refused, which is right for polling).
    pub fn new(client: TelegramClient, webhook_secret: Option<String>) -> TelegramAdapter {
        TelegramAdapter {
            client,
            webhook_secret,
        }
    }

    /// The underlying client, for setup calls (webhook, getMe, polling).
    pub fn client(&self) -> &TelegramClient {
        &self.client
    }
}

#[async_trait::async_trait]
impl ChannelAdapter for TelegramAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn capabilities(&self) -> &Capabilities {
        &CAPABILITIES
    }

    fn verify(&self, headers: &http::HeaderMap, _body: &[u8]) -> Result<(), VerifyError> {
        let expected = self
            .webhook_secret
            .as_deref()
            .ok_or_else(|| VerifyError::Missing("webhook secret (none configured)".into()))?;
        let got = headers
            .get(SECRET_HEADER)
            .ok_or_else(|| VerifyError::Missing("X-Telegram-Bot-Api-Secret-Token header".into()))?;
        if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::Malformed(format!("the body is not JSON: {e}")))?;
        parse_update(&value)
    }

    fn render(&self, message: &OutboundMessage, ctx: &RenderContext) -> Vec<RenderedPart> {
        render_message(message, ctx)
    }

    async fn send(&self, to: &str, part: &RenderedPart) -> Result<Sent, SendError> {
        let chat_id: i64 = to.trim().parse().map_err(|_| SendError::Refused {
            reason: format!("`{to}` is not a Telegram chat id"),
        })?;
        let mut body = part.body.clone();
        let fields = body.as_object_mut().ok_or_else(|| SendError::Refused {
            reason: "the rendered part's body is not a JSON object".into(),
        })?;
        fields.insert("chat_id".into(), json!(chat_id));
        let id = self.client.send_message_call(&part.method, &body).await?;
        Ok(Sent {
            provider_message_id: id.to_string(),
        })
    }

    async fn acknowledge_button(
        &self,
        callback_id: &str,
        text: Option<&str>,
    ) -> Result<(), SendError> {
        Ok(self.client.answer_callback_query(callback_id, text).await?)
    }

    async fn delete(&self, to: &str, message_id: &str) -> Result<(), SendError> {
        let chat_id: i64 = to.trim().parse().map_err(|_| SendError::Refused {
            reason: format!("`{to}` is not a Telegram chat id"),
        })?;
        let message_id: i64 = message_id.trim().parse().map_err(|_| SendError::Refused {
            reason: format!("`{message_id}` is not a Telegram message id"),
        })?;
        Ok(self.client.delete_message(chat_id, message_id).await?)
    }
}

// ---------------------------------------------------------------------------------------
// Inbound

/// Normalizes one update (a webhook body or one item of `getUpdates`).
pub fn parse_update(value: &Value) -> Result<Vec<InboundEvent>, ParseError> {
    let Some(fields) = value.as_object() else {
        return Err(ParseError::Malformed(
            "an update must be a JSON object".into(),
        ));
    };
    match fields.get("update_id") {
        None => return Err(ParseError::Malformed("missing `update_id`".into())),
        Some(id) if !id.is_i64() => {
            return Err(ParseError::Malformed(
                "`update_id` must be an integer".into(),
            ))
        }
        Some(_) => {}
    }
    let update: Update = serde_path_to_error::deserialize(value).map_err(|e| {
        ParseError::Malformed(format!("invalid update at `{}`: {}", e.path(), e.inner()))
    })?;
    let id = update.update_id.to_string();
    let event = if let Some(m) = &update.message {
        from_message(m)
    } else if let Some(q) = &update.callback_query {
        from_callback(q)
    } else if let Some(c) = &update.my_chat_member {
        from_member_change(c)
    } else {
        // edited_message and kinds we never asked for: nothing to act on.
        None
    };
    Ok(event
        .map(|(sender, at, kind)| InboundEvent {
            provider_event_id: id,
            sender,
            at,
            kind,
        })
        .into_iter()
        .collect())
}

fn is_private(chat: &Chat) -> bool {
    chat.kind == "private"
}

fn sender(external_id: i64, user: Option<&User>, chat: Option<&Chat>) -> Sender {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Sender {
        external_id: external_id.to_string(),
        first_name: user
            .and_then(|u| non_empty(&u.first_name))
            .or_else(|| chat.and_then(|c| c.first_name.clone())),
        last_name: user
            .and_then(|u| u.last_name.clone())
            .or_else(|| chat.and_then(|c| c.last_name.clone())),
        username: user
            .and_then(|u| u.username.clone())
            .or_else(|| chat.and_then(|c| c.username.clone())),
        language: user.and_then(|u| u.language_code.clone()),
    }
}

/// The `/start` deep-link payload: `None` when `text` is not a start command,
/// `Some(None)` for a plain or invalid payload.
fn start_command(text: &str) -> Option<Option<String>> {
    let rest = text.strip_prefix("/start")?;
    let rest = match rest.strip_prefix('@') {
        Some(bot) => {
            let end = bot.find(char::is_whitespace).unwrap_or(bot.len());
            if end == 0 {
                return None;
            }
            &bot[end..]
        }
        None => rest,
    };
    if rest.is_empty() {
        return Some(None);
    }
    if !rest.starts_with(char::is_whitespace) {
        return None; // "/started" and the like are ordinary text
    }
    let payload = rest.trim();
    let valid = (1..=64).contains(&payload.len())
        && payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    Some(valid.then(|| payload.to_string()))
}

fn from_message(m: &Message) -> Option<(Sender, i64, InboundKind)> {
    if !is_private(&m.chat) {
        return None;
    }
    let who = sender(m.chat.id, m.from.as_ref(), Some(&m.chat));
    let message_id = m.message_id.to_string();
    let kind = if let Some(text) = &m.text {
        match start_command(text) {
            Some(reference) => InboundKind::Start {
                message_id,
                text: text.clone(),
                reference,
            },
            None => InboundKind::Text {
                message_id,
                text: text.clone(),
            },
        }
    } else if let Some(contact) = &m.contact {
        // Only the person's own number (the request_contact button) is theirs to give;
        // a contact card of someone else is just an attachment.
        let own = contact.user_id.is_some() && contact.user_id == m.from.as_ref().map(|u| u.id);
        if own {
            InboundKind::ContactShared {
                message_id,
                phone: contact.phone_number.clone(),
            }
        } else {
            InboundKind::Media {
                message_id,
                media_type: "contact".into(),
                caption: None,
            }
        }
    } else {
        // animation before document: Telegram sets both for GIFs.
        let media_type = [
            (m.photo.is_some(), "image"),
            (m.animation.is_some(), "animation"),
            (m.document.is_some(), "file"),
            (m.video.is_some(), "video"),
            (m.video_note.is_some(), "video_note"),
            (m.voice.is_some(), "voice"),
            (m.audio.is_some(), "audio"),
            (m.sticker.is_some(), "sticker"),
        ]
        .into_iter()
        .find_map(|(present, name)| present.then_some(name))?;
        InboundKind::Media {
            message_id,
            media_type: media_type.into(),
            caption: m.caption.clone(),
        }
    };
    Some((who, m.date, kind))
}

fn from_callback(q: &CallbackQuery) -> Option<(Sender, i64, InboundKind)> {
    let data = q.data.clone()?; // game buttons carry no data
    let who = match &q.message {
        Some(m) if !is_private(&m.chat) => return None,
        Some(m) => sender(m.chat.id, Some(&q.from), Some(&m.chat)),
        None => sender(q.from.id, Some(&q.from), None),
    };
    // The attached message's date is when we sent it, not when the button was pressed;
    // the press itself is undated and arrives at once.
    let kind = InboundKind::ButtonPressed {
        callback_id: Some(q.id.clone()),
        data,
    };
    Some((who, crate::unix_now(), kind))
}

fn from_member_change(c: &ChatMemberUpdated) -> Option<(Sender, i64, InboundKind)> {
    if !is_private(&c.chat) {
        return None;
    }
    let kind = match (
        c.old_chat_member.status.as_str(),
        c.new_chat_member.status.as_str(),
    ) {
        (_, "kicked") => InboundKind::Blocked,
        ("kicked" | "left", "member") => InboundKind::Unblocked,
        _ => return None,
    };
    Some((
        sender(c.chat.id, Some(&c.from), Some(&c.chat)),
        c.date,
        kind,
    ))
}

// ---------------------------------------------------------------------------------------
// Outbound

/// The keyboard under one message.
enum Markup {
    Inline(Vec<Vec<InlineKeyboardButton>>),
    Reply(Vec<Vec<KeyboardButton>>),
}

impl Markup {
    fn to_value(&self) -> Value {
        match self {
            Markup::Inline(rows) => json!(InlineKeyboardMarkup {
                inline_keyboard: rows.clone()
            }),
            Markup::Reply(rows) => json!(ReplyKeyboardMarkup {
                keyboard: rows.clone(),
                resize_keyboard: Some(true),
                one_time_keyboard: Some(true),
                ..Default::default()
            }),
        }
    }
}

/// Lays buttons out: short labels (≤ 12 characters, ≤ 3 buttons) share a row, otherwise
/// one button per row so long labels stay readable on phones.
fn layout<T>(buttons: Vec<T>, label: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let short = buttons.len() <= SHORT_ROW_MAX
        && buttons
            .iter()
            .all(|b| label(b).chars().count() <= SHORT_LABEL);
    if short {
        vec![buttons]
    } else {
        buttons.into_iter().map(|b| vec![b]).collect()
    }
}

/// The keyboard for `buttons`, whose payload buttons are choices `first_index`… of the
/// message. A reply keyboard only when every button is a reply button and `allow_reply`:
/// Telegram can't show a reply keyboard and inline buttons on one message, so in mixed
/// sets reply buttons become inline callbacks carrying the same payload (the inline
/// buttons can't become reply ones: links and silent postbacks have no reply form).
fn keyboard(
    buttons: &[Button],
    ctx: &RenderContext,
    first_index: usize,
    allow_reply: bool,
) -> Option<Markup> {
    let shown = &buttons[..buttons.len().min(CAPABILITIES.max_buttons)];
    if shown.is_empty() {
        return None;
    }
    let label = |b: &Button| truncate_label(b.label(), CAPABILITIES.button_label_limit);
    if allow_reply && shown.iter().all(|b| matches!(b, Button::Reply { .. })) {
        let keys = shown
            .iter()
            .map(|b| KeyboardButton {
                text: label(b),
                request_contact: None,
            })
            .collect();
        return Some(Markup::Reply(layout(keys, |k: &KeyboardButton| &k.text)));
    }
    let mut index = first_index;
    let mut keys = Vec::with_capacity(shown.len());
    for b in shown {
        let key = match b {
            Button::Url { url, .. } => InlineKeyboardButton {
                text: label(b),
                url: Some(url.clone()),
                callback_data: None,
            },
            Button::Reply { .. } | Button::Postback { .. } => {
                let payload = b.payload().unwrap_or_default();
                let data = encode_callback_data(payload, ctx.outbox_id, index);
                index += 1;
                InlineKeyboardButton {
                    text: label(b),
                    url: None,
                    callback_data: Some(data),
                }
            }
        };
        keys.push(key);
    }
    Some(Markup::Inline(layout(keys, |k: &InlineKeyboardButton| {
        &k.text
    })))
}

fn payload_count(buttons: &[Button]) -> usize {
    buttons.iter().filter(|b| b.payload().is_some()).count()
}

fn part(method: &str, body: Value) -> RenderedPart {
    RenderedPart {
        method: method.into(),
        body,
    }
}

fn text_parts(text: &str) -> Vec<RenderedPart> {
    // Split the plain text: splitting escaped HTML could cut inside "&amp;", and the
    // limit counts characters after entity parsing anyway.
    split_text(text, CAPABILITIES.text_limit)
        .into_iter()
        .map(|chunk| {
            part(
                "sendMessage",
                json!({ "text": escape_html(&chunk), "parse_mode": "HTML" }),
            )
        })
        .collect()
}

/// "<b>title</b>\nsubtitle", cut to `limit` plain characters (subtitle first).
fn card_text(card: &Card, limit: usize) -> String {
    let title = truncate_label(card.title.trim(), limit);
    let mut out = format!("<b>{}</b>", escape_html(&title));
    if let Some(sub) = card.subtitle.as_deref().filter(|s| !s.trim().is_empty()) {
        let room = limit.saturating_sub(title.chars().count() + 1);
        if room > 0 {
            out.push('\n');
            out.push_str(&escape_html(&truncate_label(sub, room)));
        }
    }
    out
}

fn render_card(card: &Card, ctx: &RenderContext, first_index: usize) -> RenderedPart {
    let mut p = match &card.image_url {
        Some(url) => part(
            "sendPhoto",
            json!({
                "photo": url,
                "caption": card_text(card, CAPABILITIES.caption_limit),
                "parse_mode": "HTML",
            }),
        ),
        None => part(
            "sendMessage",
            json!({
                "text": card_text(card, CAPABILITIES.text_limit),
                "parse_mode": "HTML",
            }),
        ),
    };
    if let Some(markup) = keyboard(&card.buttons, ctx, first_index, false) {
        p.body["reply_markup"] = markup.to_value();
    }
    p
}

/// Renders a normalized message as Telegram calls: the text (or media with the text as
/// caption when it fits), then one message per card. The message's own buttons go on
/// the last part before the cards; with neither text nor media they join the last
/// card's inline keyboard. A message with nothing to show renders to no parts.
pub fn render_message(message: &OutboundMessage, ctx: &RenderContext) -> Vec<RenderedPart> {
    let mut parts = Vec::new();
    let text = message.text.as_deref().filter(|t| !t.trim().is_empty());
    match &message.media {
        Some(media) => {
            let (method, field) = match media.kind {
                MediaKind::Image => ("sendPhoto", "photo"),
                MediaKind::File => ("sendDocument", "document"),
            };
            let mut body = json!({ field: media.url });
            let mut overflow = None;
            if let Some(t) = text {
                if t.chars().count() <= CAPABILITIES.caption_limit {
                    body["caption"] = json!(escape_html(t));
                    body["parse_mode"] = json!("HTML");
                } else {
                    overflow = Some(t);
                }
            }
            parts.push(part(method, body));
            if let Some(t) = overflow {
                parts.extend(text_parts(t));
            }
        }
        None => {
            if let Some(t) = text {
                parts.extend(text_parts(t));
            }
        }
    }
    let own_parts = parts.len();

    let mut next_index = payload_count(&message.buttons);
    for card in &message.cards {
        parts.push(render_card(card, ctx, next_index));
        next_index += payload_count(&card.buttons);
    }

    if own_parts > 0 {
        if let Some(markup) = keyboard(&message.buttons, ctx, 0, true) {
            parts[own_parts - 1].body["reply_markup"] = markup.to_value();
        }
    } else if let Some(last) = parts.last_mut() {
        let has_markup = last.body.get("reply_markup").is_some();
        match keyboard(&message.buttons, ctx, 0, !has_markup) {
            Some(Markup::Inline(rows)) => {
                let mut all: Vec<Vec<InlineKeyboardButton>> = last
                    .body
                    .get("reply_markup")
                    .and_then(|m| serde_json::from_value::<InlineKeyboardMarkup>(m.clone()).ok())
                    .map(|m| m.inline_keyboard)
                    .unwrap_or_default();
                all.extend(rows);
                last.body["reply_markup"] = Markup::Inline(all).to_value();
            }
            Some(reply) => last.body["reply_markup"] = reply.to_value(),
            None => {}
        }
    }
    parts
}
