//! A fake Telegram Bot API server.
//!
//! Voronka's Telegram channel code is an HTTP client of `https://api.telegram.org`. To test
//! it honestly (including flood limits, blocked users, webhook retries and duplicate
//! deliveries), the fake serves the same API on a loopback port: point the client's base
//! URL at [`FakeTelegram::api_url`] and nothing else changes. The same process also plays
//! the users: [`FakeTelegram::send_text`], [`FakeTelegram::press_button`],
//! [`FakeTelegram::block`] and friends produce real `Update` objects and hand them to the
//! bot exactly as Telegram would, by webhook POST or through `getUpdates`.
//!
//! Only private chats exist, because marketing bots only talk to people one-to-one: a
//! chat's id is the user's id and `message_id`s are numbered per chat, shared between the
//! user's and the bot's messages.
//!
//! Besides the Rust API, a small JSON control API under `/_fake` on the same port lets
//! another process (the demo's "phone" page, a CLI, a benchmark driver) do the same; see
//! the `control` module. [`run`] starts a standalone server for that use.
//!
//! What the fake leaves out, deliberately: groups and channels, file uploads (multipart
//! requests get a 400: send photos and documents by URL or `file_id`), inline mode,
//! payments, and TLS (an `https://` loopback webhook is accepted but cannot be delivered,
//! since the fake has no TLS client).

mod actions;
mod api;
mod control;
mod html;
mod limits;
mod markup;
mod state;
mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use state::{State, UserInfo};

/// How the fake behaves; the defaults mirror Telegram's documented limits.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeConfig {
    /// Sustained sends per second allowed for one bot across all chats.
    pub bot_rate_per_sec: f64,
    /// How many sends one bot may make back to back before the rate applies.
    pub bot_burst: u32,
    /// Sustained sends per second allowed into one chat.
    pub chat_rate_per_sec: f64,
    /// How many sends into one chat may go back to back before the rate applies.
    pub chat_burst: u32,
    /// Whether sends over the limits get 429 at all.
    pub enforce_limits: bool,
    /// Whether a bot may only write to users who have written to it first.
    pub require_started: bool,
    /// Pauses before re-POSTing an update the webhook did not accept; one retry per entry.
    pub webhook_retry_delays: Vec<Duration>,
    /// How long one webhook POST may take before it counts as failed.
    pub webhook_timeout: Duration,
    /// How many Bot API calls [`FakeTelegram::requests`] keeps (the oldest go first), so a
    /// long benchmark does not grow without bound; [`Stats`] always counts every call.
    pub max_recorded_requests: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            bot_rate_per_sec: 30.0,
            bot_burst: 10,
            chat_rate_per_sec: 1.0,
            chat_burst: 3,
            enforce_limits: true,
            require_started: true,
            webhook_retry_delays: vec![
                Duration::from_millis(100),
                Duration::from_millis(500),
                Duration::from_secs(2),
            ],
            webhook_timeout: Duration::from_secs(10),
            max_recorded_requests: 100_000,
        }
    }
}

/// What happened to an update produced by a simulated user action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The update's `update_id`.
    pub update_id: i64,
    /// HTTP status of the last webhook POST; `None` when the update was queued for
    /// `getUpdates` (or the webhook could not be reached at all, see `webhook_error`).
    pub webhook_status: Option<u16>,
    /// How many webhook POSTs were made for it (0 when queued for polling).
    pub webhook_attempts: u32,
    /// Why webhook delivery finally failed, in Telegram's `last_error_message` words.
    pub webhook_error: Option<String>,
}

/// One Bot API call as the fake received it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    /// Id of the bot whose token was used; `None` for an unknown token.
    pub bot_id: Option<i64>,
    /// Canonical method name (`sendMessage` however it was cased), or the name as called
    /// when the method is unknown.
    pub method: String,
    /// All parameters merged from query, form and JSON body (form values stay strings);
    /// `null` when the body could not be parsed.
    pub params: Value,
    /// HTTP status of the answer.
    pub status: u16,
    /// When the call arrived.
    pub at: SystemTime,
}

/// A message the bot sent into a chat, as stored by the fake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    /// Id within the chat.
    pub message_id: i64,
    /// The chat (= the user's id).
    pub chat_id: i64,
    /// Text as the user sees it: tags stripped and HTML entities decoded (see `raw`).
    pub text: Option<String>,
    /// `parse_mode` the bot used for the text or caption.
    pub parse_mode: Option<String>,
    /// The markup the bot attached, any kind (Telegram echoes only inline keyboards).
    pub reply_markup: Option<Value>,
    /// `photo` parameter (URL or file_id) of a `sendPhoto`.
    pub photo: Option<String>,
    /// `document` parameter (URL or file_id) of a `sendDocument`.
    pub document: Option<String>,
    /// Caption as the user sees it.
    pub caption: Option<String>,
    /// Text or caption exactly as the bot sent it, markup and escapes included.
    pub raw: Option<String>,
    /// Formatting of the text or caption: Telegram `MessageEntity` objects.
    pub entities: Vec<Value>,
    /// Deleted by the bot with `deleteMessage`.
    pub deleted: bool,
    /// Changed by an `editMessage*` call.
    pub edited: bool,
    /// Unix time of sending.
    pub date: i64,
}

impl SentMessage {
    /// The text, or for media the caption.
    pub fn shown(&self) -> Option<&str> {
        self.text.as_deref().or(self.caption.as_deref())
    }
}

/// The bot's answer to a button press.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAnswer {
    /// Which callback query was answered.
    pub callback_query_id: String,
    /// Notification text, if any.
    pub text: Option<String>,
    /// Whether the text is shown as an alert rather than a toast.
    pub show_alert: bool,
    /// URL to open, if any.
    pub url: Option<String>,
}

/// A bot's webhook as currently set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookInfo {
    /// Where updates are POSTed.
    pub url: String,
    /// Value of the `X-Telegram-Bot-Api-Secret-Token` header sent with each POST.
    pub secret_token: Option<String>,
    /// Update kinds the bot asked for; `None` means the default set.
    pub allowed_updates: Option<Vec<String>>,
    /// `max_connections` as given (the fake always delivers one at a time).
    pub max_connections: Option<u32>,
    /// Updates not yet accepted by the webhook.
    pub pending_update_count: usize,
    /// The last delivery failure, as `getWebhookInfo` reports it.
    pub last_error_message: Option<String>,
}

/// Counters over the fake's whole life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bot API calls received.
    pub requests: u64,
    /// Messages successfully sent by bots (text, photo, document).
    pub sent_messages: u64,
    /// Calls refused with 429.
    pub rate_limited_429: u64,
    /// Calls per canonical method name.
    pub by_method: BTreeMap<String, u64>,
    /// Updates produced by simulated users.
    pub updates: u64,
    /// Webhook POSTs made, retries included.
    pub webhook_posts: u64,
    /// Webhook POSTs that failed (non-2xx or no answer).
    pub webhook_failures: u64,
}

/// Why a call on the fake itself (not the Bot API) failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The fake only listens on loopback addresses.
    #[error("the fake Telegram listens only on loopback addresses, not {0}")]
    NotLoopback(SocketAddr),
    /// Binding or serving failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The webhook HTTP client could not be built.
    #[error("could not build the webhook HTTP client: {0}")]
    HttpClient(String),
    /// A bot token is not of the form `<numeric id>:<secret>`.
    #[error("invalid bot token {0:?}: expected \"<numeric id>:<secret>\"")]
    InvalidToken(String),
    /// No bot with this token (or id) was added.
    #[error("unknown bot")]
    UnknownBot,
    /// No user with this id was added.
    #[error("unknown user {0}: add it with add_user first")]
    UnknownUser(i64),
    /// The user has blocked the bot, so cannot act in the chat until unblocking.
    #[error("user {0} has blocked the bot: unblock first")]
    Blocked(i64),
    /// The bot has no such (undeleted) message in the chat.
    #[error("no message {message_id} from the bot in chat {chat_id}")]
    MessageNotFound {
        /// The chat searched.
        chat_id: i64,
        /// The message looked for.
        message_id: i64,
    },
    /// The message has no inline button with this callback data, so no user could press it.
    #[error("message {message_id} has no inline button with callback data {data:?}")]
    NoSuchButton {
        /// The message.
        message_id: i64,
        /// The callback data asked for.
        data: String,
    },
    /// The update was never produced, or is too old to be kept for redelivery.
    #[error("update {0} is unknown or no longer kept")]
    UnknownUpdate(i64),
    /// [`FakeTelegram::wait_for_messages`] gave up.
    #[error("timed out waiting for {wanted} messages, got {got}")]
    Timeout {
        /// Messages waited for.
        wanted: usize,
        /// Messages there were.
        got: usize,
    },
    /// The fake was shut down while the call was in progress.
    #[error("the fake Telegram has shut down")]
    ShutDown,
}

/// State shared by the handle, the HTTP handlers and the webhook workers.
pub(crate) struct Inner {
    pub(crate) cfg: FakeConfig,
    pub(crate) addr: SocketAddr,
    state: Mutex<State>,
    /// Woken whenever a bot message is stored or changed.
    pub(crate) messages_changed: Notify,
    pub(crate) http: reqwest::Client,
    pub(crate) cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
    started: Instant,
    /// Lets `&self` methods spawn tasks that own the state.
    me: std::sync::Weak<Inner>,
}

impl Inner {
    /// The state lock; a panic elsewhere while holding it leaves data a test can still read.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds since the fake started, the clock of the rate limiter.
    pub(crate) fn clock(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(crate) fn bot_id(&self, token: &str) -> Option<i64> {
        self.lock().tokens.get(token).copied()
    }
}

/// Current Unix time in seconds, the unit of every `date` in the Bot API.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Stops the server when the last handle goes away.
struct ShutdownOnDrop(CancellationToken);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Handle to a running fake Telegram server; cheap to clone, stops when the last clone drops.
#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl fmt::Debug for FakeTelegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeTelegram")
            .field("api_url", &self.api_url())
            .finish_non_exhaustive()
    }
}

impl FakeTelegram {
    /// Starts the fake on a fresh port of 127.0.0.1.
    pub async fn start(config: FakeConfig) -> Result<Self, FakeError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, config).await
    }

    /// Starts the fake on a listener the caller bound (it must be a loopback address).
    pub async fn start_on(listener: TcpListener, config: FakeConfig) -> Result<Self, FakeError> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(FakeError::NotLoopback(addr));
        }
        // No proxy and no redirects: a webhook POST must go to the loopback address that
        // setWebhook checked, never anywhere an environment variable or a 3xx points.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhook_timeout)
            .build()
            .map_err(|e| FakeError::HttpClient(e.to_string()))?;
        let cancel = CancellationToken::new();
        let inner = Arc::new_cyclic(|me| Inner {
            cfg: config,
            addr,
            state: Mutex::new(State::default()),
            messages_changed: Notify::new(),
            http,
            cancel: cancel.clone(),
            runtime: tokio::runtime::Handle::current(),
            started: Instant::now(),
            me: me.clone(),
        });
        let app = control::router()
            .fallback(api::handle)
            .with_state(Arc::clone(&inner));
        let stop = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "fake telegram server stopped with an error");
            }
        });
        tracing::debug!(%addr, "fake telegram listening");
        Ok(Self {
            inner,
            _guard: Arc::new(ShutdownOnDrop(cancel)),
        })
    }

    /// Base URL of the Bot API: clients call `{api_url}/bot{TOKEN}/{method}`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address the fake listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stops the server now (long polls return empty, webhook deliveries stop); dropping
    /// the last handle does the same.
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    fn id_of(&self, token: &str) -> Result<i64, FakeError> {
        self.inner.bot_id(token).ok_or(FakeError::UnknownBot)
    }

    /// Registers a bot and returns its id (the digits before `:` in the token).
    ///
    /// Adding a token whose id is already known replaces the old token, as revoking a
    /// token in BotFather does.
    ///
    /// # Panics
    /// If the token is not of the form `<numeric id>:<secret>`; use
    /// [`FakeTelegram::try_add_bot`] to get an error instead.
    pub fn add_bot(&self, token: &str, username: &str) -> i64 {
        match self.try_add_bot(token, username) {
            Ok(id) => id,
            Err(e) => panic!("{e}"),
        }
    }

    /// Registers a bot, or says why the token is malformed.
    pub fn try_add_bot(&self, token: &str, username: &str) -> Result<i64, FakeError> {
        self.inner.add_bot(token, username)
    }

    /// Registers (or updates) a Telegram user who can then talk to any bot.
    pub fn add_user(
        &self,
        user_id: i64,
        first_name: &str,
        last_name: Option<&str>,
        username: Option<&str>,
        language_code: Option<&str>,
    ) {
        self.inner.add_user(UserInfo {
            id: user_id,
            first_name: first_name.to_owned(),
            last_name: last_name.map(str::to_owned),
            username: username.map(str::to_owned),
            language_code: language_code.map(str::to_owned),
        });
    }

    /// Marks that the user has started the bot, without producing an update: seeds many
    /// reachable chats cheaply for benchmarks.
    pub fn open_chat(&self, token: &str, user_id: i64) -> Result<(), FakeError> {
        self.inner.open_chat(self.id_of(token)?, user_id)
    }

    /// The user sends a text message. Returns once the update is queued for `getUpdates`,
    /// or once the webhook gave its final answer (retries included).
    pub async fn send_text(
        &self,
        token: &str,
        user_id: i64,
        text: &str,
    ) -> Result<Delivery, FakeError> {
        self.inner
            .send_text(self.id_of(token)?, user_id, text)
            .await
    }

    /// The user shares their own phone number (e.g. through a `request_contact` button).
    pub async fn share_contact(
        &self,
        token: &str,
        user_id: i64,
        phone: &str,
    ) -> Result<Delivery, FakeError> {
        self.inner
            .share_contact(self.id_of(token)?, user_id, phone)
            .await
    }

    /// The user presses the inline button carrying `callback_data` under the bot's message.
    pub async fn press_button(
        &self,
        token: &str,
        user_id: i64,
        message_id: i64,
        callback_data: &str,
    ) -> Result<Delivery, FakeError> {
        self.inner
            .press_button(self.id_of(token)?, user_id, message_id, callback_data)
            .await
    }

    /// The user blocks the bot: a `my_chat_member` update (member → kicked), and 403 on
    /// every later send into the chat.
    pub async fn block(&self, token: &str, user_id: i64) -> Result<Delivery, FakeError> {
        self.inner
            .set_blocked(self.id_of(token)?, user_id, true)
            .await
    }

    /// The user unblocks the bot: a `my_chat_member` update (kicked → member).
    pub async fn unblock(&self, token: &str, user_id: i64) -> Result<Delivery, FakeError> {
        self.inner
            .set_blocked(self.id_of(token)?, user_id, false)
            .await
    }

    /// Delivers an already produced update once more, unchanged, as Telegram does when it
    /// is unsure the first delivery arrived.
    ///
    /// Meant for webhook mode. In polling mode the update goes back into the queue, so only
    /// a `getUpdates` whose `offset` does not already confirm it (a client that lost its
    /// offset) sees it again. The last 10 000 updates per bot are kept for this.
    pub async fn redeliver(&self, token: &str, update_id: i64) -> Result<Delivery, FakeError> {
        self.inner.redeliver(self.id_of(token)?, update_id).await
    }

    /// Bot API calls received so far, oldest first (at most `max_recorded_requests`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.iter().cloned().collect()
    }

    /// Messages the bot sent into the chat, in order, deleted ones included and marked.
    pub fn messages_to(&self, token: &str, chat_id: i64) -> Vec<SentMessage> {
        self.id_of(token)
            .map(|id| self.inner.messages(id, chat_id))
            .unwrap_or_default()
    }

    /// Waits until the bot has sent at least `n` messages into the chat.
    pub async fn wait_for_messages(
        &self,
        token: &str,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<SentMessage>, FakeError> {
        self.inner
            .wait_for_messages(self.id_of(token)?, chat_id, n, timeout)
            .await
    }

    /// The bot's `answerCallbackQuery` calls that succeeded, in order.
    pub fn callback_answers(&self, token: &str) -> Vec<CallbackAnswer> {
        let Ok(id) = self.id_of(token) else {
            return Vec::new();
        };
        self.inner
            .lock()
            .bots
            .get(&id)
            .map(|b| b.answers.clone())
            .unwrap_or_default()
    }

    /// The bot's webhook, if one is set.
    pub fn webhook(&self, token: &str) -> Option<WebhookInfo> {
        let id = self.id_of(token).ok()?;
        self.inner.lock().bots.get(&id)?.webhook_info()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.inner.lock().stats.clone()
    }
}

/// Serves a standalone fake on `listen` (which must be a loopback address) with the given
/// bots, printing the API URL, until Ctrl-C.
pub async fn run(
    listen: SocketAddr,
    config: FakeConfig,
    bots: Vec<(String, String)>,
) -> std::io::Result<()> {
    if !listen.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the fake Telegram listens only on loopback addresses, not {listen}"),
        ));
    }
    let listener = TcpListener::bind(listen).await?;
    let fake = FakeTelegram::start_on(listener, config)
        .await
        .map_err(std::io::Error::other)?;
    for (token, username) in &bots {
        let id = fake
            .try_add_bot(token, username)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        println!("bot @{username} (id {id})");
    }
    println!("fake Telegram Bot API at {}", fake.api_url());
    println!("control API at {}/_fake (Ctrl-C stops)", fake.api_url());
    tokio::signal::ctrl_c().await?;
    fake.shutdown();
    Ok(())
}
