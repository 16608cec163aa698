//! The built-in web chat: Voronka's own widget, served by Voronka's server.
//!
//! There is no third-party provider: the server receives the widget's posts (and
//! authenticates visitors with its own tokens) and streams our messages to the widget
//! over SSE. This adapter renders messages as JSON the widget draws, and "sends" by
//! publishing into an in-process [`Hub`] the SSE handlers subscribe to.

use crate::render::split_text;
use crate::{
    Capabilities, ChannelAdapter, ParseError, RenderContext, RenderedPart, SendError, Sent,
    VerifyError,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;
use voronka_core::channel::ChannelKind;
use voronka_core::message::{InboundEvent, InboundKind, OutboundMessage, Sender};

/// The rendered part's method: one widget message.
pub const METHOD: &str = "message";

/// Messages buffered per visitor stream; a reader further behind than this skips ahead
/// (and reloads history from the server).
const STREAM_BUFFER: usize = 64;
/// Map size below which no sweep of dead streams happens.
const SWEEP_FLOOR: usize = 64;

/// What the web chat can do: everything, with generous limits (it's our own widget).
pub const CAPABILITIES: Capabilities = Capabilities {
    text_limit: 4000,
    caption_limit: 4000,
    reply_buttons: true,
    postback_buttons: true,
    url_buttons: true,
    max_buttons: voronka_core::message::MAX_BUTTONS,
    button_label_limit: 100,
    payload_limit_bytes: voronka_core::message::MAX_PAYLOAD_BYTES,
    media: true,
    cards: true,
    read_receipts: true,
    delivery_receipts: false,
    rate_per_account: 1000.0,
    rate_per_chat: 10.0,
    chat_burst: 20,
};

/// One message pushed to a visitor's widget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebchatPush {
    /// The outbox row it came from, if any.
    pub outbox_id: Option<i64>,
    /// Our id of the message (what the widget reports reads against).
    pub message_id: String,
    /// The rendered message (an `OutboundMessage` as JSON, payload buttons with an `id`).
    pub body: Value,
    /// Unix seconds.
    pub at: i64,
}

type Key = (i64, String);

#[derive(Default)]
struct Streams {
    senders: HashMap<Key, broadcast::Sender<WebchatPush>>,
    sweep_at: usize,
}

/// Routes pushes to the visitors' open streams, in process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Streams>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("streams", &self.lock().senders.len())
            .finish()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        // Nothing panics while holding the lock in a way that leaves the map
        // inconsistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a stream of pushes for `visitor` of web chat channel `channel_id`.
    pub fn subscribe(&self, channel_id: i64, visitor: &str) -> broadcast::Receiver<WebchatPush> {
        let mut streams = self.lock();
        // Closed streams are dropped here and on publish; sweeping only when the map
        // doubles keeps memory bounded by the live streams at O(1) amortized cost.
        if streams.senders.len() >= streams.sweep_at.max(SWEEP_FLOOR) {
            streams.senders.retain(|_, s| s.receiver_count() > 0);
            streams.sweep_at = streams.senders.len() * 2;
        }
        streams
            .senders
            .entry((channel_id, visitor.to_string()))
            .or_insert_with(|| broadcast::channel(STREAM_BUFFER).0)
            .subscribe()
    }

    /// Pushes to every open stream of `visitor`; returns how many streams got it (0 when
    /// the visitor is offline: the widget then loads the message from history).
    pub fn publish(&self, channel_id: i64, visitor: &str, push: WebchatPush) -> usize {
        let mut streams = self.lock();
        let key = (channel_id, visitor.to_string());
        let Some(sender) = streams.senders.get(&key) else {
            return 0;
        };
        match sender.send(push) {
            Ok(n) => n,
            Err(_) => {
                streams.senders.remove(&key);
                0
            }
        }
    }

    /// How many visitor streams the hub holds (open or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().senders.len()
    }

    /// Whether the hub holds no streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One web chat channel as a [`ChannelAdapter`].
#[derive(Debug, Clone)]
pub struct WebchatAdapter {
    channel_id: i64,
    hub: Hub,
}

impl WebchatAdapter {
    /// The adapter of web chat channel `channel_id`, publishing into `hub`.
    pub fn new(channel_id: i64, hub: Hub) -> WebchatAdapter {
        WebchatAdapter { channel_id, hub }
    }
}

/// What the widget posts, by `type`. Each kind is its own struct (not one internally
/// tagged enum) so decoding errors keep the path of the offending field.
#[derive(Deserialize)]
struct TextEvent {
    visitor: String,
    client_id: ClientId,
    text: String,
}

#[derive(Deserialize)]
struct ButtonEvent {
    visitor: String,
    client_id: ClientId,
    payload: String,
}

#[derive(Deserialize)]
struct StartEvent {
    visitor: String,
    client_id: ClientId,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ConsentEvent {
    visitor: String,
    client_id: ClientId,
}

#[derive(Deserialize)]
struct ReadEvent {
    visitor: String,
    client_id: ClientId,
    message_id: String,
}

fn decode<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ParseError::Malformed(e.inner().to_string())
        } else {
            ParseError::Malformed(format!("at `{path}`: {}", e.inner()))
        }
    })
}

/// The widget's per-message id; numbers are accepted as well as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientId {
    Text(String),
    Number(i64),
}

impl ClientId {
    fn into_string(self) -> String {
        match self {
            ClientId::Text(s) => s,
            ClientId::Number(n) => n.to_string(),
        }
    }
}

/// Adds `"id": n` to every payload button, numbered as `OutboundMessage::choices()`, so
/// the widget can show and report positions.
fn number_buttons(body: &mut Value) {
    let mut next = 0;
    let mut number = |buttons: Option<&mut Value>| {
        for b in buttons.and_then(Value::as_array_mut).into_iter().flatten() {
            if b.get("type").and_then(Value::as_str) != Some("url") {
                b["id"] = json!(next);
                next += 1;
            }
        }
    };
    number(body.get_mut("buttons"));
    if let Some(cards) = body.get_mut("cards").and_then(Value::as_array_mut) {
        for card in cards {
            number(card.get_mut("buttons"));
        }
    }
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[async_trait::async_trait]
impl ChannelAdapter for WebchatAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webchat
    }

    fn capabilities(&self) -> &Capabilities {
        &CAPABILITIES
    }

    /// Always accepts: the widget's requests reach the server directly and are
    /// authenticated there with per-visitor tokens, not with a provider signature.
    fn verify(&self, _headers: &http::HeaderMap, _body: &[u8]) -> Result<(), VerifyError> {
        Ok(())
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::Malformed(format!("the body is not JSON: {e}")))?;
        let Some(kind) = value.get("type") else {
            return Err(ParseError::Malformed("missing `type`".into()));
        };
        let (visitor, client_id, kind) = match kind.as_str() {
            Some("text") => {
                let e: TextEvent = decode(&value)?;
                let id = e.client_id.into_string();
                let kind = InboundKind::Text {
                    message_id: id.clone(),
                    text: e.text,
                };
                (e.visitor, id, kind)
            }
            Some("button") => {
                let e: ButtonEvent = decode(&value)?;
                let kind = InboundKind::ButtonPressed {
                    callback_id: None,
                    data: e.payload,
                };
                (e.visitor, e.client_id.into_string(), kind)
            }
            Some("start") => {
                let e: StartEvent = decode(&value)?;
                let id = e.client_id.into_string();
                let kind = InboundKind::Start {
                    message_id: id.clone(),
                    text: e.text.unwrap_or_default(),
                    reference: e.reference.filter(|r| !r.trim().is_empty()),
                };
                (e.visitor, id, kind)
            }
            Some("consent") => {
                // The visitor ticked the consent box: the pipeline records it as an
                // opt-in with the channel's consent text as proof.
                let e: ConsentEvent = decode(&value)?;
                (
                    e.visitor,
                    e.client_id.into_string(),
                    InboundKind::Subscribed,
                )
            }
            Some("read") => {
                let e: ReadEvent = decode(&value)?;
                let kind = InboundKind::Read {
                    message_id: e.message_id,
                };
                (e.visitor, e.client_id.into_string(), kind)
            }
            Some(other) => {
                return Err(ParseError::Unsupported(format!(
                    "web chat event type `{other}` (expected text, button, start, consent or read)"
                )))
            }
            None => return Err(ParseError::Malformed("`type` must be a string".into())),
        };
        if visitor.trim().is_empty() || client_id.trim().is_empty() {
            return Err(ParseError::Malformed(
                "`visitor` and `client_id` must not be empty".into(),
            ));
        }
        Ok(vec![InboundEvent {
            provider_event_id: client_id,
            sender: Sender {
                external_id: visitor,
                ..Default::default()
            },
            at: crate::unix_now(),
            kind,
        }])
    }

    /// One part for the whole message (text over 4000 characters is split into
    /// text-only parts first, the last one carrying the rest of the message). Each
    /// body is the message as JSON plus `outbox_id`, which [`Self::send`] moves into
    /// the push.
    fn render(&self, message: &OutboundMessage, ctx: &RenderContext) -> Vec<RenderedPart> {
        let mut chunks = message
            .text
            .as_deref()
            .map(|t| split_text(t, CAPABILITIES.text_limit))
            .unwrap_or_default();
        let last_text = chunks.pop();
        let mut parts: Vec<RenderedPart> = chunks
            .into_iter()
            .map(|t| RenderedPart {
                method: METHOD.into(),
                body: json!({ "text": t, "outbox_id": ctx.outbox_id }),
            })
            .collect();
        let last = OutboundMessage {
            text: last_text,
            ..message.clone()
        };
        let mut body = json!(last);
        number_buttons(&mut body);
        body["outbox_id"] = json!(ctx.outbox_id);
        parts.push(RenderedPart {
            method: METHOD.into(),
            body,
        });
        parts
    }

    async fn send(&self, to: &str, part: &RenderedPart) -> Result<Sent, SendError> {
        if part.method != METHOD {
            return Err(SendError::Refused {
                reason: format!("web chat has no method `{}`", part.method),
            });
        }
        let mut body = part.body.clone();
        let outbox_id = body
            .as_object_mut()
            .and_then(|o| o.remove("outbox_id"))
            .and_then(|v| v.as_i64());
        let message_id = format!("wc-{}", random_id());
        let push = WebchatPush {
            outbox_id,
            message_id: message_id.clone(),
            body,
            at: crate::unix_now(),
        };
        // An offline visitor is not an error: the server keeps the message in the
        // conversation history, which the widget loads when it reconnects.
        let streams = self.hub.publish(self.channel_id, to, push);
        tracing::trace!(channel_id = self.channel_id, streams, "web chat push");
        Ok(Sent {
            provider_message_id: message_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voronka_core::message::{Button, Card};

    fn adapter() -> (WebchatAdapter, Hub) {
        let hub = Hub::new();
        (WebchatAdapter::new(3, hub.clone()), hub)
    }

    fn parse_one(body: Value) -> InboundEvent {
        let (a, _) = adapter();
        let mut events = a.parse(body.to_string().as_bytes()).expect("parses");
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    #[test]
    fn parses_widget_events() {
        let e =
            parse_one(json!({ "visitor": "v1", "type": "text", "text": "hi", "client_id": "c1" }));
        assert_eq!(e.provider_event_id, "c1");
        assert_eq!(e.sender.external_id, "v1");
        assert_eq!(
            e.kind,
            InboundKind::Text {
                message_id: "c1".into(),
                text: "hi".into()
            }
        );
        let e = parse_one(
            json!({ "visitor": "v1", "type": "button", "payload": "YES", "client_id": 17 }),
        );
        assert_eq!(e.provider_event_id, "17");
        assert_eq!(
            e.kind,
            InboundKind::ButtonPressed {
                callback_id: None,
                data: "YES".into()
            }
        );
        let e = parse_one(
            json!({ "visitor": "v1", "type": "start", "reference": "ads", "client_id": "c2" }),
        );
        assert_eq!(
            e.kind,
            InboundKind::Start {
                message_id: "c2".into(),
                text: String::new(),
                reference: Some("ads".into())
            }
        );
        let e = parse_one(
            json!({ "visitor": "v1", "type": "read", "message_id": "wc-x", "client_id": "c3" }),
        );
        assert_eq!(
            e.kind,
            InboundKind::Read {
                message_id: "wc-x".into()
            }
        );
    }

    #[test]
    fn bad_widget_bodies_are_refused_precisely() {
        let (a, _) = adapter();
        let err = |v: &str| a.parse(v.as_bytes()).expect_err(v);
        assert!(matches!(err("nope"), ParseError::Malformed(_)));
        assert!(matches!(
            err(r#"{"type":"typing","visitor":"v"}"#),
            ParseError::Unsupported(_)
        ));
        let ParseError::Malformed(m) = err(r#"{"type":"text","visitor":"v","text":"x"}"#) else {
            panic!("malformed expected");
        };
        assert!(m.contains("client_id"), "{m}");
        let ParseError::Malformed(m) =
            err(r#"{"type":"text","visitor":"v","text":5,"client_id":"c"}"#)
        else {
            panic!("malformed expected");
        };
        assert!(m.contains("text"), "{m}");
        assert!(matches!(
            err(r#"{"type":"text","visitor":" ","text":"x","client_id":"c"}"#),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn renders_one_part_with_button_ids() {
        let (a, _) = adapter();
        let m = OutboundMessage {
            text: Some("Pick".into()),
            buttons: vec![
                Button::Url {
                    label: "Site".into(),
                    url: "https://example.com".into(),
                },
                Button::Postback {
                    label: "A".into(),
                    payload: "PA".into(),
                },
            ],
            cards: vec![Card {
                title: "C".into(),
                subtitle: None,
                image_url: None,
                buttons: vec![Button::Reply {
                    label: "B".into(),
                    payload: None,
                }],
            }],
            ..Default::default()
        };
        let parts = a.render(&m, &RenderContext { outbox_id: 9 });
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].method, "message");
        let b = &parts[0].body;
        assert!(b["buttons"][0].get("id").is_none());
        assert_eq!(b["buttons"][1]["id"], 0);
        assert_eq!(b["cards"][0]["buttons"][0]["id"], 1);
        assert_eq!(b["outbox_id"], 9);
        assert_eq!(b["text"], "Pick");
    }

    #[test]
    fn long_text_is_split() {
        let (a, _) = adapter();
        let m = OutboundMessage {
            text: Some("word ".repeat(1000)),
            buttons: vec![Button::Reply {
                label: "OK".into(),
                payload: None,
            }],
            ..Default::default()
        };
        let parts = a.render(&m, &RenderContext::default());
        assert_eq!(parts.len(), 2);
        assert!(parts[0].body.get("buttons").is_none());
        assert!(parts[1].body.get("buttons").is_some());
    }

    #[tokio::test]
    async fn send_publishes_to_the_visitors_stream() {
        let (a, hub) = adapter();
        let mut rx = hub.subscribe(3, "v1");
        let mut other = hub.subscribe(3, "v2");
        let part = a
            .render(
                &OutboundMessage::text("hello"),
                &RenderContext { outbox_id: 41 },
            )
            .remove(0);
        let sent = a.send("v1", &part).await.expect("sent");
        let push = rx.recv().await.expect("push");
        assert_eq!(push.message_id, sent.provider_message_id);
        assert!(push.message_id.starts_with("wc-"));
        assert_eq!(push.outbox_id, Some(41));
        assert_eq!(push.body, json!({ "text": "hello" }));
        assert!(other.try_recv().is_err());
        // Offline visitors are fine.
        assert!(a.send("nobody", &part).await.is_ok());
        assert!(matches!(
            a.send(
                "v1",
                &RenderedPart {
                    method: "sendMessage".into(),
                    body: json!({})
                }
            )
            .await,
            Err(SendError::Refused { .. })
        ));
    }

    #[test]
    fn closed_streams_are_dropped() {
        let hub = Hub::new();
        let push = WebchatPush {
            outbox_id: None,
            message_id: "m".into(),
            body: json!({}),
            at: 0,
        };
        drop(hub.subscribe(1, "gone"));
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.publish(1, "gone", push), 0);
        assert!(hub.is_empty());
        for i in 0..1000 {
            drop(hub.subscribe(1, &format!("v{i}")));
        }
        let _live = hub.subscribe(1, "live");
        assert!(hub.len() <= 2 * SWEEP_FLOOR + 1, "{}", hub.len());
    }

    #[test]
    fn verify_always_accepts() {
        let (a, _) = adapter();
        assert!(a.verify(&http::HeaderMap::new(), b"").is_ok());
        assert_eq!(a.kind(), ChannelKind::Webchat);
        assert!(a.capabilities().cards);
    }
}
