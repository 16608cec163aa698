//! The fake's memory: bots, users, chats, queued updates, and the JSON Telegram builds from
//! them.
//!
//! Everything sits behind one mutex: each operation is short and never awaits while holding
//! it, and a single lock makes the ordering guarantees (update ids handed out in queue
//! order, message ids per chat) trivially true.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use super::limits::Gcra;
use super::markup;
use super::webhook::{Job, Outcome};
use super::{CallbackAnswer, RecordedRequest, SentMessage, Stats, WebhookInfo};

/// How many past updates per bot are kept for [`super::FakeTelegram::redeliver`].
const HISTORY: usize = 10_000;

/// Update kinds delivered when a bot asked for none in particular.
const DEFAULT_EXCLUDED: &[&str] = &["chat_member", "message_reaction", "message_reaction_count"];

#[derive(Default)]
pub(crate) struct State {
    pub bots: HashMap<i64, BotState>,
    pub tokens: HashMap<String, i64>,
    pub users: HashMap<i64, UserInfo>,
    pub requests: VecDeque<RecordedRequest>,
    pub stats: Stats,
}

#[derive(Debug, Clone)]
pub(crate) struct UserInfo {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub language_code: Option<String>,
}

impl UserInfo {
    /// The `User` object.
    pub fn user_json(&self) -> Value {
        let mut v = json!({"id": self.id, "is_bot": false, "first_name": self.first_name});
        if let Some(x) = &self.last_name {
            v["last_name"] = json!(x);
        }
        if let Some(x) = &self.username {
            v["username"] = json!(x);
        }
        if let Some(x) = &self.language_code {
            v["language_code"] = json!(x);
        }
        v
    }

    /// The private `Chat` with this user.
    pub fn chat_json(&self) -> Value {
        let mut v = json!({"id": self.id, "type": "private", "first_name": self.first_name});
        if let Some(x) = &self.last_name {
            v["last_name"] = json!(x);
        }
        if let Some(x) = &self.username {
            v["username"] = json!(x);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WebhookConf {
    pub url: String,
    pub secret: Option<String>,
    pub max_connections: Option<u32>,
}

pub(crate) struct BotState {
    pub id: i64,
    pub token: String,
    pub username: String,
    pub next_update_id: i64,
    /// Updates waiting for `getUpdates`, by id so they always come out in order.
    pub queue: BTreeMap<i64, Value>,
    /// Recent updates, for redelivery.
    pub history: BTreeMap<i64, Value>,
    pub allowed_updates: Option<Vec<String>>,
    pub webhook: Option<WebhookConf>,
    /// Updates handed to the webhook worker and not yet finished.
    pub webhook_pending: usize,
    pub last_error: Option<(i64, String)>,
    /// Bumped by `drop_pending_updates`, so the worker drops jobs queued before it.
    pub drop_epoch: u64,
    /// Bumped by every `getUpdates`, so an older long poll knows it was superseded.
    pub poll_generation: u64,
    /// Wakes long polls: new update, newer poll, or webhook change.
    pub poll_notify: Arc<Notify>,
    pub worker: mpsc::UnboundedSender<Job>,
    pub chats: HashMap<i64, ChatState>,
    pub callbacks: HashMap<String, CallbackState>,
    pub next_callback: u64,
    pub answers: Vec<CallbackAnswer>,
    pub commands: Value,
    pub bucket: Gcra,
    pub next_file: u64,
}

pub(crate) struct CallbackState {
    pub created: Instant,
    pub answered: bool,
}

pub(crate) struct ChatState {
    pub started: bool,
    pub blocked: bool,
    next_message_id: i64,
    pub messages: Vec<StoredMessage>,
    pub bucket: Gcra,
}

impl ChatState {
    pub fn new() -> Self {
        Self {
            started: false,
            blocked: false,
            next_message_id: 1,
            messages: Vec::new(),
            bucket: Gcra::default(),
        }
    }

    /// Message ids in a private chat are shared by both sides.
    pub fn next_message_id(&mut self) -> i64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    pub fn message_mut(&mut self, message_id: i64) -> Option<&mut StoredMessage> {
        self.messages
            .iter_mut()
            .find(|m| m.sent.message_id == message_id && !m.sent.deleted)
    }
}

/// Media part of a message, as Telegram returns it.
#[derive(Debug, Clone)]
pub(crate) enum Media {
    Photo(Value),
    Document(Value),
}

#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub sent: SentMessage,
    pub media: Option<Media>,
    pub edit_date: Option<i64>,
}

impl StoredMessage {
    /// The `Message` object as Telegram returns it to the bot and puts in callback queries.
    pub fn to_json(&self, from: &Value, user: &UserInfo) -> Value {
        let m = &self.sent;
        let mut v = json!({
            "message_id": m.message_id,
            "from": from,
            "chat": user.chat_json(),
            "date": m.date,
        });
        if let Some(d) = self.edit_date {
            v["edit_date"] = json!(d);
        }
        let (text_key, entities_key) = match &self.media {
            None => ("text", "entities"),
            Some(Media::Photo(sizes)) => {
                v["photo"] = sizes.clone();
                ("caption", "caption_entities")
            }
            Some(Media::Document(doc)) => {
                v["document"] = doc.clone();
                ("caption", "caption_entities")
            }
        };
        if let Some(text) = m.shown().filter(|t| !t.is_empty()) {
            v[text_key] = json!(text);
            if !m.entities.is_empty() {
                v[entities_key] = json!(m.entities);
            }
        }
        if let Some(markup) = m.reply_markup.as_ref().filter(|r| markup::is_inline(r)) {
            v["reply_markup"] = markup.clone();
        }
        v
    }
}

/// Where a freshly produced (or redelivered) update went.
pub(crate) enum Routed {
    /// Queued for `getUpdates`.
    Queued(i64),
    /// Not wanted by the bot's `allowed_updates`.
    Filtered(i64),
    /// Handed to the webhook worker; the receiver gets the final outcome.
    Webhook(i64, oneshot::Receiver<Outcome>),
    /// The webhook worker is gone (the fake is shutting down).
    Closed,
}

impl BotState {
    pub fn new(id: i64, token: &str, username: &str, worker: mpsc::UnboundedSender<Job>) -> Self {
        // Telegram's update ids don't start at 1; a client that assumes they do is wrong.
        let base = 100_000
            + i64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() % 800_000),
            );
        Self {
            id,
            token: token.to_owned(),
            username: username.to_owned(),
            next_update_id: base,
            queue: BTreeMap::new(),
            history: BTreeMap::new(),
            allowed_updates: None,
            webhook: None,
            webhook_pending: 0,
            last_error: None,
            drop_epoch: 0,
            poll_generation: 0,
            poll_notify: Arc::new(Notify::new()),
            worker,
            chats: HashMap::new(),
            callbacks: HashMap::new(),
            next_callback: 0,
            answers: Vec::new(),
            commands: json!([]),
            bucket: Gcra::default(),
            next_file: 0,
        }
    }

    /// The bot's own `User` object (as in `from` of its messages).
    pub fn user_json(&self) -> Value {
        json!({"id": self.id, "is_bot": true, "first_name": self.username, "username": self.username})
    }

    /// Gives a new update its id and routes it.
    pub fn emit(&mut self, kind: &str, body: Value) -> Routed {
        let id = self.next_update_id;
        self.next_update_id += 1;
        let mut update = serde_json::Map::new();
        update.insert("update_id".into(), json!(id));
        update.insert(kind.into(), body);
        let update = Value::Object(update);
        self.history.insert(id, update.clone());
        while self.history.len() > HISTORY {
            self.history.pop_first();
        }
        if !self.wants(kind) {
            return Routed::Filtered(id);
        }
        self.route(id, update)
    }

    fn wants(&self, kind: &str) -> bool {
        match self.allowed_updates.as_deref() {
            Some(list) if !list.is_empty() => list.iter().any(|k| k == kind),
            _ => !DEFAULT_EXCLUDED.contains(&kind),
        }
    }

    /// Sends an update to the webhook worker if a webhook is set, else queues it.
    pub fn route(&mut self, id: i64, update: Value) -> Routed {
        if self.webhook.is_some() {
            let (tx, rx) = oneshot::channel();
            if self.push_to_worker(id, update, Some(tx)) {
                Routed::Webhook(id, rx)
            } else {
                Routed::Closed
            }
        } else {
            self.queue.insert(id, update);
            self.poll_notify.notify_waiters();
            Routed::Queued(id)
        }
    }

    pub fn push_to_worker(
        &mut self,
        update_id: i64,
        update: Value,
        reply: Option<oneshot::Sender<Outcome>>,
    ) -> bool {
        let job = Job {
            update_id,
            update,
            epoch: self.drop_epoch,
            reply,
        };
        if self.worker.send(job).is_ok() {
            self.webhook_pending += 1;
            true
        } else {
            false
        }
    }

    /// Forgets every update not yet delivered, including those already with the worker.
    pub fn drop_pending(&mut self) {
        self.queue.clear();
        self.drop_epoch += 1;
    }

    pub fn webhook_info(&self) -> Option<WebhookInfo> {
        let w = self.webhook.as_ref()?;
        Some(WebhookInfo {
            url: w.url.clone(),
            secret_token: w.secret.clone(),
            allowed_updates: self.allowed_updates.clone(),
            max_connections: w.max_connections,
            pending_update_count: self.queue.len() + self.webhook_pending,
            last_error_message: self.last_error.as_ref().map(|(_, m)| m.clone()),
        })
    }

    /// A fresh (file_id, file_unique_id) pair in Telegram's style.
    pub fn file_ids(&mut self) -> (String, String) {
        self.next_file += 1;
        let n = self.next_file;
        (
            format!("AgACAgIAAxkBAAI{:x}{n:08}FakeFileId", self.id),
            format!("AQAD{n:08}"),
        )
    }

    /// A fresh callback query id: Telegram uses long numeric strings.
    pub fn callback_id(&mut self) -> String {
        self.next_callback += 1;
        format!("{}", 4_000_000_000_000_000_000u64 + self.next_callback)
    }
}

/// Telegram's `chat_instance`: stable per (bot, chat), opaque.
pub(crate) fn chat_instance(bot_id: i64, chat_id: i64) -> String {
    let mixed =
        (bot_id.unsigned_abs() << 21 ^ chat_id.unsigned_abs()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("-{}", mixed >> 2)
}
