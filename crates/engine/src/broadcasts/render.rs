//! Turning a broadcast message into the message one recipient gets.
//!
//! Texts and labels are templates rendered against the recipient's contact. Buttons are
//! rewritten so every press counts on every channel: a link goes through the tracked
//! redirect `{public_url}/r/{token}`, where the token names the recipient and the button
//! and is signed, so nobody can count clicks for someone else or redirect anywhere but
//! to the broadcast's own URL; a flow or payload button reports `bc:<broadcast>:<recipient>:<index>`,
//! which the inbound pipeline hands to the runtime.

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use voronka_channels::Capabilities;
use voronka_core::broadcast::{BroadcastButton, BroadcastMessage};
use voronka_core::contact::Profile;
use voronka_core::crypto::SecretKey;
use voronka_core::flow::template::Templates;
use voronka_core::message::{Button, Media, OutboundMessage};
use voronka_core::{BroadcastId, ContactId, RecipientId, WorkspaceId};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of the payload of a broadcast's postback buttons.
pub const PAYLOAD_PREFIX: &str = "bc:";
/// Button indexes of the follow-up message start here (the first message's are below).
pub const FOLLOW_UP_BASE: usize = 100;
/// Bytes of the HMAC kept in a link token: 128 bits is plenty against forgery.
const SIG_BYTES: usize = 16;

/// Why a message could not be made for a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A template failed for this contact.
    #[error("template: {0}")]
    Template(String),
    /// Nothing is left to send once rendered.
    #[error("the rendered message is empty")]
    Empty,
}

/// What rendering needs besides the message and the contact.
#[derive(Debug, Clone)]
pub struct LinkContext<'a> {
    /// Signs link tokens.
    pub key: &'a SecretKey,
    /// Where `/r/{token}` is served; links stay untracked without it.
    pub public_url: Option<&'a str>,
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The broadcast.
    pub broadcast: BroadcastId,
    /// The recipient row.
    pub recipient: RecipientId,
    /// Added to button indexes (0 for the first message, [`FOLLOW_UP_BASE`] for the
    /// follow-up).
    pub base_index: usize,
}

/// The template context of a recipient: `contact.*` and `fields` like flows'.
pub fn context(contact: ContactId, profile: &Profile, fields: &Map<String, Value>) -> Value {
    json!({
        "contact": {
            "id": contact,
            "first_name": profile.first_name, "last_name": profile.last_name,
            "username": profile.username, "language": profile.language,
            "time_zone": profile.time_zone, "phone": profile.phone, "email": profile.email,
            "avatar_url": profile.avatar_url, "fields": fields,
        },
        "fields": fields,
    })
}

fn render_text(t: &Templates, s: &str, ctx: &Value) -> Result<String, RenderError> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    t.render(s, ctx)
        .map_err(|e| RenderError::Template(e.message))
}

/// Renders `m` for one recipient.
pub fn render(
    templates: &Templates,
    m: &BroadcastMessage,
    ctx: &Value,
    links: &LinkContext<'_>,
) -> Result<OutboundMessage, RenderError> {
    let text = match &m.text {
        Some(t) => Some(render_text(templates, t, ctx)?).filter(|t| !t.trim().is_empty()),
        None => None,
    };
    if text.is_none() && m.media.is_none() {
        return Err(RenderError::Empty);
    }
    let mut buttons = Vec::with_capacity(m.buttons.len());
    for (i, b) in m.buttons.iter().enumerate() {
        let label = render_text(templates, b.label(), ctx)?.trim().to_string();
        if label.is_empty() {
            return Err(RenderError::Template(format!(
                "button {i} renders an empty label"
            )));
        }
        let index = links.base_index + i;
        buttons.push(match b {
            BroadcastButton::Url { url, .. } => Button::Url {
                label,
                url: match links.public_url {
                    Some(base) => format!(
                        "{}/r/{}",
                        base.trim_end_matches('/'),
                        link_token(links.key, links.workspace, links.recipient, index)
                    ),
                    None => url.clone(),
                },
            },
            BroadcastButton::StartFlow { .. } | BroadcastButton::Payload { .. } => {
                Button::Postback {
                    label,
                    payload: payload(links.broadcast, links.recipient, index),
                }
            }
        });
    }
    Ok(OutboundMessage {
        text,
        media: m.media.as_ref().map(|md| Media {
            kind: md.kind,
            url: md.url.clone(),
            file_name: None,
        }),
        buttons,
        cards: Vec::new(),
    })
}

/// Whether a rendered message fits what a channel can show; the reason when not.
/// Adapters degrade silently (cut labels, drop buttons), which a marketer would not
/// want for a broadcast, so such recipients are skipped with `provider_rule` instead.
pub fn fits(m: &OutboundMessage, caps: &Capabilities) -> Result<(), String> {
    if m.media.is_some() && !caps.media {
        return Err("the channel cannot send pictures or files".into());
    }
    if m.buttons.len() > caps.max_buttons {
        return Err(format!(
            "the channel shows at most {} buttons",
            caps.max_buttons
        ));
    }
    for b in &m.buttons {
        let n = b.label().chars().count();
        if n > caps.button_label_limit {
            return Err(format!(
                "a button label has {n} characters; the channel shows at most {}",
                caps.button_label_limit
            ));
        }
        match b {
            Button::Url { .. } if !caps.url_buttons => {
                return Err("the channel has no link buttons".into())
            }
            Button::Postback { .. } if !caps.postback_buttons => {
                return Err("the channel has no postback buttons".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// The payload of a broadcast's postback button: `bc:<broadcast>:<recipient>:<index>`
/// (at most 3 + 3 × 20 bytes with separators: under Telegram's 64-byte callback data
/// with its `p:` prefix for any realistic id).
pub fn payload(broadcast: BroadcastId, recipient: RecipientId, index: usize) -> String {
    format!("{PAYLOAD_PREFIX}{}:{}:{index}", broadcast.0, recipient.0)
}

/// Reads a payload made by [`payload`].
pub fn parse_payload(p: &str) -> Option<(BroadcastId, RecipientId, usize)> {
    let mut it = p.strip_prefix(PAYLOAD_PREFIX)?.split(':');
    let b = it.next()?.parse().ok()?;
    let r = it.next()?.parse().ok()?;
    let i = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((BroadcastId(b), RecipientId(r), i))
}

fn mac(key: &SecretKey, ws: WorkspaceId, recipient: RecipientId, index: usize) -> HmacSha256 {
    // A derived key, so a link signature never collides with anything else the
    // credentials key signs or seals.
    let mut m = HmacSha256::new_from_slice(&key.derive(b"voronka broadcast link"))
        .expect("HMAC takes keys of any length");
    m.update(format!("{}:{}:{index}", ws.0, recipient.0).as_bytes());
    m
}

/// The tracked-link token of a recipient's button: `{ws}.{recipient}.{index}.{sig}`.
pub fn link_token(
    key: &SecretKey,
    ws: WorkspaceId,
    recipient: RecipientId,
    index: usize,
) -> String {
    let sig = mac(key, ws, recipient, index).finalize().into_bytes();
    format!(
        "{}.{}.{index}.{}",
        ws.0,
        recipient.0,
        hex::encode(&sig[..SIG_BYTES])
    )
}

/// The workspace, recipient and button a token names, if it is genuine.
pub fn verify_link_token(
    key: &SecretKey,
    token: &str,
) -> Option<(WorkspaceId, RecipientId, usize)> {
    let mut it = token.split('.');
    let ws: i64 = it.next()?.parse().ok()?;
    let r: i64 = it.next()?.parse().ok()?;
    let i: usize = it.next()?.parse().ok()?;
    let sig = hex::decode(it.next()?).ok()?;
    if it.next().is_some() || sig.len() != SIG_BYTES {
        return None;
    }
    mac(key, WorkspaceId(ws), RecipientId(r), i)
        .verify_truncated_left(&sig)
        .ok()?;
    Some((WorkspaceId(ws), RecipientId(r), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unchanged() {
        let key = SecretKey::generate();
        let t = link_token(&key, WorkspaceId(3), RecipientId(77), 1);
        assert_eq!(
            verify_link_token(&key, &t),
            Some((WorkspaceId(3), RecipientId(77), 1))
        );
        let forged = t.replacen("77", "78", 1);
        assert_eq!(verify_link_token(&key, &forged), None);
        assert_eq!(verify_link_token(&SecretKey::generate(), &t), None);
        assert_eq!(verify_link_token(&key, "garbage"), None);
    }

    #[test]
    fn payloads_round_trip_and_fit_telegram() {
        let p = payload(BroadcastId(i64::MAX), RecipientId(i64::MAX), 104);
        assert!(format!("p:{p}").len() <= 64, "{p}");
        assert_eq!(
            parse_payload(&p),
            Some((BroadcastId(i64::MAX), RecipientId(i64::MAX), 104))
        );
        assert_eq!(parse_payload("bc:1:2"), None);
        assert_eq!(parse_payload("flow:1"), None);
    }

    #[test]
    fn buttons_become_tracked() {
        let key = SecretKey::generate();
        let m: BroadcastMessage = serde_json::from_value(json!({"text": "Hi {{ contact.first_name }}",
            "buttons": [{"label": "Shop", "url": "https://shop.example"}, {"label": "Quiz", "start_flow": "quiz"}]}))
            .expect("message");
        let profile = Profile {
            first_name: Some("Ann".into()),
            ..Default::default()
        };
        let ctx = context(ContactId(1), &profile, &Map::new());
        let links = LinkContext {
            key: &key,
            public_url: Some("https://v.example/"),
            workspace: WorkspaceId(1),
            broadcast: BroadcastId(5),
            recipient: RecipientId(9),
            base_index: 0,
        };
        let out = render(&Templates::new(), &m, &ctx, &links).expect("render");
        assert_eq!(out.text.as_deref(), Some("Hi Ann"));
        match &out.buttons[0] {
            Button::Url { url, .. } => {
                assert!(url.starts_with("https://v.example/r/1.9.0."), "{url}")
            }
            b => panic!("{b:?}"),
        }
        assert_eq!(out.buttons[1].payload(), Some("bc:5:9:1"));
        assert!(fits(&out, &voronka_channels::telegram::CAPABILITIES).is_ok());
    }
}
