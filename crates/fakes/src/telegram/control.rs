//! The `/_fake` control API: the Rust handle's powers over HTTP.
//!
//! The demo's "phone" page, the CLI and benchmark drivers run in other processes (or
//! browsers) and can't hold a [`super::FakeTelegram`]. They register bots and users, act as
//! users and read what bots sent through these JSON endpoints, on the same port as the Bot
//! API (Telegram has no `/_fake` path, so nothing collides).
//!
//! | Endpoint | Body | Answer |
//! |---|---|---|
//! | `POST /_fake/bots` | `{"token","username"}` | `{"id"}` |
//! | `POST /_fake/users` | `{"id","first_name","last_name"?,"username"?,"language_code"?}` | `{"id"}` |
//! | `POST /_fake/bots/{bot_id}/users/{user_id}/text` | `{"text"}` | `Delivery` |
//! | `POST …/users/{user_id}/contact` | `{"phone"}` | `Delivery` |
//! | `POST …/users/{user_id}/press` | `{"message_id","data"}` | `Delivery` |
//! | `POST …/users/{user_id}/block`, `/unblock` | none | `Delivery` |
//! | `POST …/users/{user_id}/open` | none | `{}` |
//! | `POST /_fake/bots/{bot_id}/open_range` | `{"from","count"}` | `{"opened"}` |
//! | `POST /_fake/bots/{bot_id}/updates/{update_id}/redeliver` | none | `Delivery` |
//! | `GET /_fake/bots/{bot_id}/chats/{chat_id}/messages[?min=N&timeout_ms=T]` | | `[SentMessage]` |
//! | `GET /_fake/bots/{bot_id}/callback_answers` | | `[CallbackAnswer]` |
//! | `GET /_fake/bots/{bot_id}/webhook` | | `WebhookInfo` or `null` |
//! | `GET /_fake/stats` | | `Stats` |
//!
//! With `min`, the messages endpoint waits (up to `timeout_ms`, default 10 s) until that many
//! messages exist, so a page can long-poll for the bot's answer. `open_range` registers
//! users `from .. from+count` (named `User<id>`) and opens their chats with the bot in one
//! call, for benchmarks that need many subscribers. Errors are 4xx with
//! `{"error": "…"}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::state::{ChatState, UserInfo};
use super::{FakeError, Inner};

/// Longest wait a messages request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub(crate) fn router() -> Router<Arc<Inner>> {
    Router::new()
        .route("/_fake/bots", post(add_bot))
        .route("/_fake/users", post(add_user))
        .route("/_fake/bots/{bot_id}/open_range", post(open_range))
        .route(
            "/_fake/bots/{bot_id}/users/{user_id}/{action}",
            post(user_action),
        )
        .route(
            "/_fake/bots/{bot_id}/updates/{update_id}/redeliver",
            post(redeliver),
        )
        .route(
            "/_fake/bots/{bot_id}/chats/{chat_id}/messages",
            get(messages),
        )
        .route(
            "/_fake/bots/{bot_id}/callback_answers",
            get(callback_answers),
        )
        .route("/_fake/bots/{bot_id}/webhook", get(webhook))
        .route("/_fake/stats", get(stats))
}

/// A control API error.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<FakeError> for Failure {
    fn from(e: FakeError) -> Self {
        let status = match e {
            FakeError::UnknownBot | FakeError::UnknownUser(_) | FakeError::UnknownUpdate(_) => {
                StatusCode::NOT_FOUND
            }
            FakeError::MessageNotFound { .. } => StatusCode::NOT_FOUND,
            FakeError::Blocked(_) | FakeError::NoSuchButton { .. } => StatusCode::CONFLICT,
            FakeError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            FakeError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self(status, e.to_string())
    }
}

type Answer = Result<Response, Failure>;

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

/// Parses a JSON body ourselves so malformed input gets the `{"error"}` shape too; an empty
/// body counts as `{}`.
fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Failure> {
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    serde_json::from_slice(raw)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn id(raw: &str, what: &str) -> Result<i64, Failure> {
    raw.parse().map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("{what} must be an integer"),
        )
    })
}

fn bot(inner: &Inner, raw: &str) -> Result<i64, Failure> {
    let bot_id = id(raw, "bot id")?;
    if inner.lock().bots.contains_key(&bot_id) {
        Ok(bot_id)
    } else {
        Err(FakeError::UnknownBot.into())
    }
}

#[derive(Deserialize)]
struct NewBot {
    token: String,
    username: String,
}

async fn add_bot(State(inner): State<Arc<Inner>>, raw: Bytes) -> Answer {
    let b: NewBot = body(&raw)?;
    ok(json!({"id": inner.add_bot(&b.token, &b.username)?}))
}

#[derive(Deserialize)]
struct NewUser {
    id: i64,
    first_name: String,
    last_name: Option<String>,
    username: Option<String>,
    language_code: Option<String>,
}

async fn add_user(State(inner): State<Arc<Inner>>, raw: Bytes) -> Answer {
    let u: NewUser = body(&raw)?;
    let id = u.id;
    inner.add_user(UserInfo {
        id,
        first_name: u.first_name,
        last_name: u.last_name,
        username: u.username,
        language_code: u.language_code,
    });
    ok(json!({"id": id}))
}

#[derive(Deserialize)]
struct Range {
    from: i64,
    count: u32,
}

/// Most users one `open_range` call may register.
const MAX_RANGE: u32 = 1_000_000;

async fn open_range(
    State(inner): State<Arc<Inner>>,
    Path(bot_id): Path<String>,
    raw: Bytes,
) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let r: Range = body(&raw)?;
    if r.count > MAX_RANGE || r.from <= 0 || r.from.checked_add(i64::from(r.count)).is_none() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("from must be positive and count at most {MAX_RANGE}"),
        ));
    }
    let mut st = inner.lock();
    for id in r.from..r.from + i64::from(r.count) {
        st.users.entry(id).or_insert_with(|| UserInfo {
            id,
            first_name: format!("User{id}"),
            last_name: None,
            username: None,
            language_code: None,
        });
    }
    let bot = st.bots.get_mut(&bot_id).ok_or(FakeError::UnknownBot)?;
    for id in r.from..r.from + i64::from(r.count) {
        bot.chats.entry(id).or_insert_with(ChatState::new).started = true;
    }
    drop(st);
    ok(json!({"opened": r.count}))
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct Contact {
    phone: String,
}

#[derive(Deserialize)]
struct Press {
    message_id: i64,
    data: String,
}

async fn user_action(
    State(inner): State<Arc<Inner>>,
    Path((bot_id, user_id, action)): Path<(String, String, String)>,
    raw: Bytes,
) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let user_id = id(&user_id, "user id")?;
    let delivery = match action.as_str() {
        "text" => {
            let t: Text = body(&raw)?;
            inner.send_text(bot_id, user_id, &t.text).await?
        }
        "contact" => {
            let c: Contact = body(&raw)?;
            inner.share_contact(bot_id, user_id, &c.phone).await?
        }
        "press" => {
            let p: Press = body(&raw)?;
            inner
                .press_button(bot_id, user_id, p.message_id, &p.data)
                .await?
        }
        "block" => inner.set_blocked(bot_id, user_id, true).await?,
        "unblock" => inner.set_blocked(bot_id, user_id, false).await?,
        "open" => {
            inner.open_chat(bot_id, user_id)?;
            return ok(json!({}));
        }
        other => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("unknown user action {other:?}"),
            ))
        }
    };
    ok(delivery)
}

async fn redeliver(
    State(inner): State<Arc<Inner>>,
    Path((bot_id, update_id)): Path<(String, String)>,
) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let update_id = id(&update_id, "update id")?;
    ok(inner.redeliver(bot_id, update_id).await?)
}

async fn messages(
    State(inner): State<Arc<Inner>>,
    Path((bot_id, chat_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let chat_id = id(&chat_id, "chat id")?;
    let Some(min) = query.get("min") else {
        return ok(inner.messages(bot_id, chat_id));
    };
    let min = usize::try_from(id(min, "min")?).unwrap_or(0);
    let timeout = match query.get("timeout_ms") {
        Some(ms) => Duration::from_millis(u64::try_from(id(ms, "timeout_ms")?).unwrap_or(0)),
        None => Duration::from_secs(10),
    }
    .min(MAX_WAIT);
    ok(inner
        .wait_for_messages(bot_id, chat_id, min, timeout)
        .await?)
}

async fn callback_answers(State(inner): State<Arc<Inner>>, Path(bot_id): Path<String>) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let answers = inner
        .lock()
        .bots
        .get(&bot_id)
        .map(|b| b.answers.clone())
        .unwrap_or_default();
    ok(answers)
}

async fn webhook(State(inner): State<Arc<Inner>>, Path(bot_id): Path<String>) -> Answer {
    let bot_id = bot(&inner, &bot_id)?;
    let info = inner
        .lock()
        .bots
        .get(&bot_id)
        .and_then(|b| b.webhook_info());
    ok(info)
}

async fn stats(State(inner): State<Arc<Inner>>) -> Answer {
    let stats = inner.lock().stats.clone();
    ok(stats)
}
