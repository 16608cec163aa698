//! The Bot API itself: `/bot{token}/{method}`.
//!
//! A real client sends parameters every way Telegram accepts them (query string, form,
//! JSON body) and decides what to do from the exact error description and HTTP status, so
//! the fake merges all parameter sources, accepts JSON-valued parameters both as JSON and
//! as JSON-in-a-string, and answers with Telegram's envelope and wording. Checks run in the
//! order that makes the most specific complaint win: token, method, parameters, chat
//! (exists, started, not blocked), content (markup, text, length), flood limits.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::html;
use super::limits::{self, Rate};
use super::markup;
use super::state::{ChatState, Media, State, StoredMessage, UserInfo, WebhookConf};
use super::{unix_now, FakeConfig, Inner, RecordedRequest, SentMessage};

/// Methods the fake implements, in Telegram's spelling; lookup is case-insensitive.
const METHODS: &[&str] = &[
    "getMe",
    "getUpdates",
    "setWebhook",
    "deleteWebhook",
    "getWebhookInfo",
    "sendMessage",
    "sendPhoto",
    "sendDocument",
    "sendChatAction",
    "editMessageText",
    "editMessageCaption",
    "editMessageReplyMarkup",
    "deleteMessage",
    "answerCallbackQuery",
    "setMyCommands",
    "getMyCommands",
    "deleteMyCommands",
];

const TEXT_LIMIT: usize = 4096;
const CAPTION_LIMIT: usize = 1024;
const CALLBACK_TEXT_LIMIT: usize = 200;
/// A callback query can be answered only this long after the press.
const CALLBACK_TTL: Duration = Duration::from_secs(15 * 60);
/// Bots may delete their own messages in private chats for this long.
const DELETE_WINDOW_SECS: i64 = 48 * 3600;
const NOT_MODIFIED: &str = "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";

/// A Bot API error: the HTTP status equals `error_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub description: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, description: String) -> Self {
        Self {
            code,
            description,
            retry_after: None,
        }
    }

    pub(crate) fn bad(what: impl std::fmt::Display) -> Self {
        Self::new(400, format!("Bad Request: {what}"))
    }

    fn forbidden(what: &str) -> Self {
        Self::new(403, format!("Forbidden: {what}"))
    }

    fn unauthorized() -> Self {
        Self::new(401, "Unauthorized".into())
    }

    fn not_found() -> Self {
        Self::new(404, "Not Found".into())
    }

    fn conflict(what: &str) -> Self {
        Self::new(409, format!("Conflict: {what}"))
    }

    fn too_many(retry_after: u64) -> Self {
        Self {
            code: 429,
            description: format!("Too Many Requests: retry after {retry_after}"),
            retry_after: Some(retry_after),
        }
    }

    fn chat_not_found() -> Self {
        Self::bad("chat not found")
    }

    fn body(&self) -> Value {
        let mut v = json!({"ok": false, "error_code": self.code, "description": self.description});
        if let Some(n) = self.retry_after {
            v["parameters"] = json!({"retry_after": n});
        }
        v
    }
}

type ApiResult = Result<Value, ApiError>;

/// Merged request parameters.
pub(crate) struct Params(Map<String, Value>);

impl Params {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn str(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(_) => Err(ApiError::bad(format!("can't parse {key}"))),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("invalid {key} specified"))),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad(format!("invalid {key} specified"))),
            Some(_) => Err(ApiError::bad(format!("invalid {key} specified"))),
        }
    }

    fn required_int(&self, key: &str) -> Result<i64, ApiError> {
        self.int(key)?
            .ok_or_else(|| ApiError::bad(format!("{key} is empty")))
    }

    fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                _ => Err(ApiError::bad(format!("invalid {key} specified"))),
            },
            Some(Value::Number(n)) => Ok(n.as_i64() != Some(0)),
            Some(_) => Err(ApiError::bad(format!("invalid {key} specified"))),
        }
    }

    /// An object or array parameter, given either as JSON or as a string holding JSON.
    fn json(&self, key: &str) -> Result<Option<Value>, ApiError> {
        let complaint = || {
            if key == "reply_markup" {
                ApiError::bad("can't parse reply keyboard markup JSON object")
            } else {
                ApiError::bad(format!("can't parse {key} JSON object"))
            }
        };
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s).map(Some).map_err(|_| complaint()),
            Some(v @ (Value::Object(_) | Value::Array(_))) => Ok(Some(v.clone())),
            Some(_) => Err(complaint()),
        }
    }

    fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(v) = self.json(key)? else {
            return Ok(None);
        };
        serde_json::from_value(v)
            .map(Some)
            .map_err(|_| ApiError::bad(format!("can't parse {key} JSON object")))
    }

    /// The private chat addressed; `@username` never names a private chat.
    fn chat_id(&self) -> Result<i64, ApiError> {
        match self.get("chat_id") {
            None => Err(ApiError::bad("chat_id is empty")),
            Some(Value::String(s)) if s.starts_with('@') => Err(ApiError::chat_not_found()),
            Some(_) => self
                .int("chat_id")?
                .ok_or_else(|| ApiError::bad("chat_id is empty")),
        }
    }

    fn reply_markup(&self) -> Result<Option<Value>, ApiError> {
        let markup = self.json("reply_markup")?;
        if let Some(m) = &markup {
            markup::validate(m)?;
        }
        Ok(markup)
    }
}

/// Formatted text as the recipient sees it.
struct Formatted {
    raw: String,
    parse_mode: Option<String>,
    plain: String,
    entities: Vec<Value>,
}

fn format_text(
    raw: String,
    parse_mode: Option<String>,
    limit: usize,
    too_long: &str,
) -> Result<Formatted, ApiError> {
    let (plain, entities) = match parse_mode
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") => (raw.clone(), Vec::new()),
        Some("html") => {
            let parsed = html::parse_html(&raw)
                .map_err(|e| ApiError::bad(format!("can't parse entities: {e}")))?;
            let entities = parsed.entities.iter().map(html::Entity::to_json).collect();
            (parsed.text, entities)
        }
        // Markdown is accepted as is: Voronka sends HTML, so only its length matters here.
        Some("markdown" | "markdownv2") => (raw.clone(), Vec::new()),
        Some(_) => return Err(ApiError::bad("unsupported parse_mode")),
    };
    if plain.chars().count() > limit {
        return Err(ApiError::bad(too_long));
    }
    Ok(Formatted {
        raw,
        parse_mode,
        plain,
        entities,
    })
}

fn text_param(p: &Params) -> Result<Formatted, ApiError> {
    let raw = p.str("text")?.unwrap_or_default();
    let text = format_text(raw, p.str("parse_mode")?, TEXT_LIMIT, "message is too long")?;
    if text.plain.trim().is_empty() {
        return Err(ApiError::bad("message text is empty"));
    }
    Ok(text)
}

fn caption_param(p: &Params) -> Result<Option<Formatted>, ApiError> {
    match p.str("caption")? {
        None => Ok(None),
        Some(raw) => format_text(
            raw,
            p.str("parse_mode")?,
            CAPTION_LIMIT,
            "message caption is too long",
        )
        .map(Some),
    }
}

/// The private chat with `chat_id`, if the bot may act in it.
fn private_chat<'u, 'c>(
    cfg: &FakeConfig,
    users: &'u HashMap<i64, UserInfo>,
    chats: &'c mut HashMap<i64, ChatState>,
    chat_id: i64,
) -> Result<(&'u UserInfo, &'c mut ChatState), ApiError> {
    let user = users.get(&chat_id).ok_or_else(ApiError::chat_not_found)?;
    let chat = match chats.entry(chat_id) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(_) if cfg.require_started => {
            return Err(ApiError::forbidden(
                "bot can't initiate conversation with a user",
            ))
        }
        Entry::Vacant(e) => e.insert(ChatState::new()),
    };
    if chat.blocked {
        return Err(ApiError::forbidden("bot was blocked by the user"));
    }
    if cfg.require_started && !chat.started {
        return Err(ApiError::forbidden(
            "bot can't initiate conversation with a user",
        ));
    }
    Ok((user, chat))
}

fn rates(cfg: &FakeConfig) -> (Rate, Rate) {
    (
        Rate {
            per_sec: cfg.bot_rate_per_sec,
            burst: cfg.bot_burst,
        },
        Rate {
            per_sec: cfg.chat_rate_per_sec,
            burst: cfg.chat_burst,
        },
    )
}

enum SendKind {
    Text,
    Photo,
    Document,
}

/// What an edit changes.
enum Edit {
    Text,
    Caption,
    Markup,
}

/// Serves every path that is not the control API.
pub(crate) async fn handle(
    AxumState(inner): AxumState<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = percent_decode(uri.path());
    let Some((token, method)) = path
        .strip_prefix("/bot")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(_, method)| !method.is_empty() && !method.contains('/'))
    else {
        return reply(404, ApiError::not_found().body());
    };
    let params = parse_params(uri.query(), &headers, &body);
    let (status, body) = inner.call(token, method, params).await;
    reply(status, body)
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(Some(h)), Some(Some(l))) = (
                bytes.get(i + 1).map(|&b| hex(b)),
                bytes.get(i + 2).map(|&b| hex(b)),
            ) {
                // Two hex digits make at most 0xff, so the cast is lossless.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    let mut add_form = |raw: &[u8]| {
        for (k, v) in url::form_urlencoded::parse(raw) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    };
    if let Some(q) = query {
        add_form(q.as_bytes());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        add_form(body);
    } else if content_type.starts_with("application/json") {
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice(body) {
                Ok(Value::Object(map)) => params.extend(map),
                _ => return Err(ApiError::bad("can't parse JSON object")),
            }
        }
    } else if content_type.starts_with("multipart/form-data") {
        return Err(ApiError::bad(
            "the fake Telegram does not accept uploads: send files by URL or file_id",
        ));
    }
    Ok(params)
}

impl Inner {
    /// Runs one Bot API call, records it, and returns the HTTP status and JSON body.
    pub(crate) async fn call(
        &self,
        token: &str,
        method: &str,
        params: Result<Map<String, Value>, ApiError>,
    ) -> (u16, Value) {
        let at = SystemTime::now();
        let bot_id = self.bot_id(token);
        let canonical = METHODS
            .iter()
            .copied()
            .find(|m| m.eq_ignore_ascii_case(method));
        let recorded = match &params {
            Ok(map) if self.cfg.max_recorded_requests > 0 => Value::Object(map.clone()),
            _ => Value::Null,
        };
        let result = match (bot_id, canonical, params) {
            (None, _, _) => Err(ApiError::unauthorized()),
            (Some(_), None, _) => Err(ApiError::not_found()),
            (Some(_), Some(_), Err(e)) => Err(e),
            (Some(id), Some(m), Ok(p)) => self.dispatch(id, m, Params(p)).await,
        };
        let (status, body) = match result {
            Ok(v) => (200, json!({"ok": true, "result": v})),
            Err(e) => (e.code, e.body()),
        };
        let name = canonical.map_or_else(|| method.to_owned(), str::to_owned);
        let mut st = self.lock();
        st.stats.requests += 1;
        *st.stats.by_method.entry(name.clone()).or_default() += 1;
        if status == 429 {
            st.stats.rate_limited_429 += 1;
        }
        if self.cfg.max_recorded_requests > 0 {
            st.requests.push_back(RecordedRequest {
                bot_id,
                method: name,
                params: recorded,
                status,
                at,
            });
            while st.requests.len() > self.cfg.max_recorded_requests {
                st.requests.pop_front();
            }
        }
        (status, body)
    }

    async fn dispatch(&self, bot_id: i64, method: &str, p: Params) -> ApiResult {
        match method {
            "getUpdates" => self.get_updates(bot_id, &p).await,
            "getMe" => self.with_state(|st, _| {
                let bot = st.bots.get(&bot_id).ok_or_else(ApiError::unauthorized)?;
                let mut me = bot.user_json();
                me["can_join_groups"] = json!(true);
                me["can_read_all_group_messages"] = json!(false);
                me["supports_inline_queries"] = json!(false);
                me["can_connect_to_business"] = json!(false);
                me["has_main_web_app"] = json!(false);
                Ok(me)
            }),
            "setWebhook" => self.set_webhook(bot_id, &p),
            "deleteWebhook" => {
                let drop_pending = p.bool("drop_pending_updates")?;
                self.with_bot(bot_id, |bot, _| {
                    bot.webhook = None;
                    bot.last_error = None;
                    if drop_pending {
                        bot.drop_pending();
                    }
                    Ok(json!(true))
                })
            }
            "getWebhookInfo" => self.with_bot(bot_id, |bot, _| {
                let mut info = json!({
                    "url": "",
                    "has_custom_certificate": false,
                    "pending_update_count": bot.queue.len() + bot.webhook_pending,
                });
                if let Some(w) = bot.webhook_info() {
                    info["url"] = json!(w.url);
                    if let Some((date, message)) = &bot.last_error {
                        info["last_error_date"] = json!(date);
                        info["last_error_message"] = json!(message);
                    }
                    info["max_connections"] = json!(w.max_connections.unwrap_or(40));
                    if let Some(a) = w.allowed_updates {
                        info["allowed_updates"] = json!(a);
                    }
                }
                Ok(info)
            }),
            "sendMessage" => self.send(bot_id, &p, SendKind::Text),
            "sendPhoto" => self.send(bot_id, &p, SendKind::Photo),
            "sendDocument" => self.send(bot_id, &p, SendKind::Document),
            "sendChatAction" => {
                let chat_id = p.chat_id()?;
                if p.str("action")?.is_none_or(|a| a.is_empty()) {
                    return Err(ApiError::bad("action is empty"));
                }
                self.with_state(|st, cfg| {
                    let State { bots, users, .. } = st;
                    let bot = bots.get_mut(&bot_id).ok_or_else(ApiError::unauthorized)?;
                    private_chat(cfg, users, &mut bot.chats, chat_id)?;
                    Ok(json!(true))
                })
            }
            "editMessageText" => self.edit(bot_id, &p, Edit::Text),
            "editMessageCaption" => self.edit(bot_id, &p, Edit::Caption),
            "editMessageReplyMarkup" => self.edit(bot_id, &p, Edit::Markup),
            "deleteMessage" => self.delete_message(bot_id, &p),
            "answerCallbackQuery" => self.answer_callback(bot_id, &p),
            "setMyCommands" => {
                let commands = p
                    .json("commands")?
                    .ok_or_else(|| ApiError::bad("commands is empty"))?;
                if !commands.is_array() {
                    return Err(ApiError::bad("can't parse commands JSON object"));
                }
                self.with_bot(bot_id, |bot, _| {
                    bot.commands = commands;
                    Ok(json!(true))
                })
            }
            "getMyCommands" => self.with_bot(bot_id, |bot, _| Ok(bot.commands.clone())),
            "deleteMyCommands" => self.with_bot(bot_id, |bot, _| {
                bot.commands = json!([]);
                Ok(json!(true))
            }),
            _ => Err(ApiError::not_found()),
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut State, &FakeConfig) -> ApiResult) -> ApiResult {
        let mut st = self.lock();
        f(&mut st, &self.cfg)
    }

    fn with_bot(
        &self,
        bot_id: i64,
        f: impl FnOnce(&mut super::state::BotState, &FakeConfig) -> ApiResult,
    ) -> ApiResult {
        self.with_state(|st, cfg| {
            let bot = st
                .bots
                .get_mut(&bot_id)
                .ok_or_else(ApiError::unauthorized)?;
            f(bot, cfg)
        })
    }

    fn set_webhook(&self, bot_id: i64, p: &Params) -> ApiResult {
        let url = p.str("url")?.unwrap_or_default();
        let secret = p.str("secret_token")?.filter(|s| !s.is_empty());
        if let Some(s) = &secret {
            let valid = s.len() <= 256
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(ApiError::bad("secret token contains unallowed characters"));
            }
        }
        let max_connections = match p.int("max_connections")? {
            None => None,
            Some(n @ 1..=100) => u32::try_from(n).ok(),
            Some(_) => return Err(ApiError::bad("bad webhook: invalid max_connections")),
        };
        let allowed = p.string_list("allowed_updates")?;
        let drop_pending = p.bool("drop_pending_updates")?;
        if !url.is_empty() {
            check_webhook_url(&url)?;
        }
        self.with_bot(bot_id, |bot, _| {
            if allowed.is_some() {
                bot.allowed_updates = allowed;
            }
            if drop_pending {
                bot.drop_pending();
            }
            if url.is_empty() {
                bot.webhook = None;
            } else {
                let changed = bot.webhook.as_ref().is_none_or(|w| w.url != url);
                bot.webhook = Some(WebhookConf {
                    url,
                    secret,
                    max_connections,
                });
                if changed {
                    bot.last_error = None;
                }
                // Updates that waited for getUpdates now go to the webhook, oldest first.
                for (id, update) in std::mem::take(&mut bot.queue) {
                    bot.push_to_worker(id, update, None);
                }
            }
            // A long poll in progress must notice the webhook and give up.
            bot.poll_notify.notify_waiters();
            Ok(json!(true))
        })
    }

    async fn get_updates(&self, bot_id: i64, p: &Params) -> ApiResult {
        let offset = p.int("offset")?;
        let limit = usize::try_from(p.int("limit")?.unwrap_or(100).clamp(1, 100)).unwrap_or(100);
        let timeout = u64::try_from(p.int("timeout")?.unwrap_or(0)).unwrap_or(0);
        let allowed = p.string_list("allowed_updates")?;
        let (generation, notify) = {
            let mut st = self.lock();
            let bot = st
                .bots
                .get_mut(&bot_id)
                .ok_or_else(ApiError::unauthorized)?;
            if bot.webhook.is_some() {
                return Err(webhook_conflict());
            }
            bot.poll_generation += 1;
            // Wakes an older long poll so it can answer "terminated by other getUpdates".
            bot.poll_notify.notify_waiters();
            if allowed.is_some() {
                bot.allowed_updates = allowed;
            }
            match offset {
                Some(o) if o < 0 => {
                    let keep = usize::try_from(o.unsigned_abs()).unwrap_or(usize::MAX);
                    while bot.queue.len() > keep {
                        bot.queue.pop_first();
                    }
                }
                Some(o) => bot.queue = bot.queue.split_off(&o),
                None => {}
            }
            (bot.poll_generation, Arc::clone(&bot.poll_notify))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                let bot = st.bots.get(&bot_id).ok_or_else(ApiError::unauthorized)?;
                if bot.poll_generation != generation {
                    return Err(ApiError::conflict(
                        "terminated by other getUpdates request; make sure that only one bot instance is running",
                    ));
                }
                if bot.webhook.is_some() {
                    return Err(webhook_conflict());
                }
                let updates: Vec<Value> = bot.queue.values().take(limit).cloned().collect();
                if !updates.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Ok(Value::Array(updates));
                }
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.cancel.cancelled() => return Ok(json!([])),
            }
        }
    }

    fn send(&self, bot_id: i64, p: &Params, kind: SendKind) -> ApiResult {
        let chat_id = p.chat_id()?;
        // Content is checked after the chat, so a bad chat is reported first, as Telegram does.
        let content = (|| {
            let markup = p.reply_markup()?;
            let (text, caption, media) = match kind {
                SendKind::Text => (Some(text_param(p)?), None, None),
                SendKind::Photo => {
                    let photo = p
                        .str("photo")?
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| ApiError::bad("there is no photo in the request"))?;
                    (None, caption_param(p)?, Some((true, photo)))
                }
                SendKind::Document => {
                    let doc = p
                        .str("document")?
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| ApiError::bad("there is no document in the request"))?;
                    (None, caption_param(p)?, Some((false, doc)))
                }
            };
            Ok::<_, ApiError>((markup, text, caption, media))
        })();
        let json = {
            let mut st = self.lock();
            let State {
                bots, users, stats, ..
            } = &mut *st;
            let bot = bots.get_mut(&bot_id).ok_or_else(ApiError::unauthorized)?;
            let from = bot.user_json();
            let (user, chat) = private_chat(&self.cfg, users, &mut bot.chats, chat_id)?;
            let (markup, text, caption, media) = content?;
            if self.cfg.enforce_limits {
                let (bot_rate, chat_rate) = rates(&self.cfg);
                limits::take_both(
                    &mut bot.bucket,
                    bot_rate,
                    &mut chat.bucket,
                    chat_rate,
                    self.clock(),
                )
                .map_err(ApiError::too_many)?;
            }
            let shown = text.as_ref().or(caption.as_ref());
            let mut sent = SentMessage {
                message_id: chat.next_message_id(),
                chat_id,
                text: text.as_ref().map(|t| t.plain.clone()),
                parse_mode: shown.and_then(|t| t.parse_mode.clone()),
                reply_markup: markup,
                photo: None,
                document: None,
                caption: caption.as_ref().map(|c| c.plain.clone()),
                raw: shown.map(|t| t.raw.clone()),
                entities: shown.map(|t| t.entities.clone()).unwrap_or_default(),
                deleted: false,
                edited: false,
                date: unix_now(),
            };
            let media = match media {
                None => None,
                Some((is_photo, source)) => {
                    let (file_id, unique) = bot.file_ids();
                    if is_photo {
                        sent.photo = Some(source);
                        Some(Media::Photo(json!([
                            {"file_id": format!("{file_id}_s"), "file_unique_id": format!("{unique}s"), "width": 90, "height": 90},
                            {"file_id": file_id, "file_unique_id": unique, "width": 800, "height": 800},
                        ])))
                    } else {
                        let mut doc = json!({"file_id": file_id, "file_unique_id": unique});
                        if let Some(name) = file_name(&source) {
                            doc["file_name"] = json!(name);
                        }
                        sent.document = Some(source);
                        Some(Media::Document(doc))
                    }
                }
            };
            let stored = StoredMessage {
                sent,
                media,
                edit_date: None,
            };
            let json = stored.to_json(&from, user);
            // Re-borrow the chat: `bot.file_ids()` above needed the whole bot.
            if let Some(chat) = bot.chats.get_mut(&chat_id) {
                chat.messages.push(stored);
            }
            stats.sent_messages += 1;
            json
        };
        self.messages_changed.notify_waiters();
        Ok(json)
    }

    fn edit(&self, bot_id: i64, p: &Params, what: Edit) -> ApiResult {
        if p.get("inline_message_id").is_some() {
            return Err(ApiError::bad("message to edit not found"));
        }
        let chat_id = p.chat_id()?;
        let message_id = p.required_int("message_id")?;
        let json = {
            let mut st = self.lock();
            let State { bots, users, .. } = &mut *st;
            let bot = bots.get_mut(&bot_id).ok_or_else(ApiError::unauthorized)?;
            let from = bot.user_json();
            let (user, chat) = private_chat(&self.cfg, users, &mut bot.chats, chat_id)?;
            let markup = p.reply_markup()?;
            if markup.as_ref().is_some_and(|m| !markup::is_inline(m)) {
                return Err(ApiError::bad("inline keyboard expected"));
            }
            let stored = chat
                .message_mut(message_id)
                .ok_or_else(|| ApiError::bad("message to edit not found"))?;
            let content = match what {
                Edit::Text => {
                    if stored.media.is_some() {
                        return Err(ApiError::bad("there is no text in the message to edit"));
                    }
                    Some(text_param(p)?)
                }
                Edit::Caption => {
                    if stored.media.is_none() {
                        return Err(ApiError::bad("there is no caption in the message to edit"));
                    }
                    Some(caption_param(p)?.unwrap_or(Formatted {
                        raw: String::new(),
                        parse_mode: None,
                        plain: String::new(),
                        entities: Vec::new(),
                    }))
                }
                Edit::Markup => None,
            };
            let same_content = content.as_ref().is_none_or(|c| {
                stored.sent.shown().unwrap_or("") == c.plain && stored.sent.entities == c.entities
            });
            let old_inline = stored
                .sent
                .reply_markup
                .as_ref()
                .filter(|m| markup::is_inline(m));
            if same_content && old_inline == markup.as_ref() {
                return Err(ApiError::bad(NOT_MODIFIED));
            }
            if self.cfg.enforce_limits {
                let (bot_rate, chat_rate) = rates(&self.cfg);
                limits::take_both(
                    &mut bot.bucket,
                    bot_rate,
                    &mut chat.bucket,
                    chat_rate,
                    self.clock(),
                )
                .map_err(ApiError::too_many)?;
            }
            // Borrow again after the limiter needed the chat's bucket.
            let stored = chat
                .message_mut(message_id)
                .ok_or_else(|| ApiError::bad("message to edit not found"))?;
            if let Some(c) = content {
                match what {
                    Edit::Caption => stored.sent.caption = Some(c.plain).filter(|s| !s.is_empty()),
                    _ => stored.sent.text = Some(c.plain),
                }
                stored.sent.parse_mode = c.parse_mode;
                stored.sent.raw = Some(c.raw).filter(|s| !s.is_empty());
                stored.sent.entities = c.entities;
            }
            // An edit without reply_markup removes the inline keyboard, as in Telegram.
            stored.sent.reply_markup = markup;
            stored.sent.edited = true;
            stored.edit_date = Some(unix_now());
            stored.to_json(&from, user)
        };
        self.messages_changed.notify_waiters();
        Ok(json)
    }

    fn delete_message(&self, bot_id: i64, p: &Params) -> ApiResult {
        let chat_id = p.chat_id()?;
        let message_id = p.required_int("message_id")?;
        self.with_state(|st, cfg| {
            let State { bots, users, .. } = st;
            let bot = bots.get_mut(&bot_id).ok_or_else(ApiError::unauthorized)?;
            let (_, chat) = private_chat(cfg, users, &mut bot.chats, chat_id)?;
            let stored = chat
                .message_mut(message_id)
                .ok_or_else(|| ApiError::bad("message to delete not found"))?;
            if unix_now() - stored.sent.date > DELETE_WINDOW_SECS {
                return Err(ApiError::bad("message can't be deleted for everyone"));
            }
            stored.sent.deleted = true;
            Ok(json!(true))
        })?;
        self.messages_changed.notify_waiters();
        Ok(json!(true))
    }

    fn answer_callback(&self, bot_id: i64, p: &Params) -> ApiResult {
        let invalid = || {
            ApiError::bad("query is too old and response timeout expired or query id is invalid")
        };
        let id = p.str("callback_query_id")?.ok_or_else(invalid)?;
        let text = p.str("text")?.filter(|t| !t.is_empty());
        if text
            .as_ref()
            .is_some_and(|t| t.chars().count() > CALLBACK_TEXT_LIMIT)
        {
            return Err(ApiError::bad("MESSAGE_TOO_LONG"));
        }
        let show_alert = p.bool("show_alert")?;
        let url = p.str("url")?.filter(|u| !u.is_empty());
        self.with_bot(bot_id, |bot, _| {
            let query = bot.callbacks.get_mut(&id).ok_or_else(invalid)?;
            if query.answered || query.created.elapsed() > CALLBACK_TTL {
                return Err(invalid());
            }
            query.answered = true;
            bot.answers.push(super::CallbackAnswer {
                callback_query_id: id,
                text,
                show_alert,
                url,
            });
            Ok(json!(true))
        })
    }
}

fn webhook_conflict() -> ApiError {
    ApiError::conflict(
        "can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
    )
}

/// The fake refuses any webhook it could not deliver to without leaving the machine.
fn check_webhook_url(raw: &str) -> Result<(), ApiError> {
    let url = url::Url::parse(raw)
        .map_err(|_| ApiError::bad("bad webhook: invalid webhook URL specified"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::bad("bad webhook: unsupported URL protocol"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(ApiError::bad(
            "bad webhook: the fake Telegram delivers only to loopback addresses (127.0.0.1, localhost, [::1])",
        ));
    }
    Ok(())
}

/// Last path segment of a URL, which Telegram keeps as the document's file name.
fn file_name(source: &str) -> Option<String> {
    let url = url::Url::parse(source).ok()?;
    let name = url.path_segments()?.next_back()?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/bot1%3Aab/getMe"), "/bot1:ab/getMe");
        assert_eq!(percent_decode("/a%2"), "/a%2");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn webhook_urls() {
        assert!(check_webhook_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_webhook_url("https://localhost/hook").is_ok());
        assert!(check_webhook_url("http://[::1]:1/x").is_ok());
        assert!(check_webhook_url("https://example.com/hook").is_err());
        assert!(check_webhook_url("http://10.0.0.1/hook").is_err());
        assert!(check_webhook_url("ftp://127.0.0.1/").is_err());
        assert!(check_webhook_url("not a url").is_err());
    }

    #[test]
    fn params_accept_strings_and_json() {
        let p = Params(
            json!({"chat_id":"42","n":7,"b":"true","m":"{\"remove_keyboard\":true}","o":{"remove_keyboard":true}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(p.chat_id(), Ok(42));
        assert_eq!(p.int("n"), Ok(Some(7)));
        assert_eq!(p.bool("b"), Ok(true));
        assert_eq!(p.json("m"), p.json("o"));
        let at = Params(
            json!({"chat_id":"@chan"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(at.chat_id(), Err(ApiError::chat_not_found()));
    }

    #[test]
    fn text_limits_count_plain_characters() {
        let ok = format_text(
            format!("<b>{}</b>", "я".repeat(4096)),
            Some("HTML".into()),
            TEXT_LIMIT,
            "message is too long",
        );
        assert!(ok.is_ok());
        let long = format_text("я".repeat(4097), None, TEXT_LIMIT, "message is too long");
        assert_eq!(
            long.err().map(|e| e.description),
            Some("Bad Request: message is too long".into())
        );
        let mode = format_text("x".into(), Some("BBCode".into()), TEXT_LIMIT, "");
        assert_eq!(
            mode.err().map(|e| e.description),
            Some("Bad Request: unsupported parse_mode".into())
        );
    }
}
