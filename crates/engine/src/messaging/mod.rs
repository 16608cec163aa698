//! The messaging runtime: channel adapters by channel id, the inbound pipeline, and the
//! outbox delivery workers.
//!
//! Inbound: a webhook (or a poller) hands a request to [`Messaging::receive`], which
//! verifies it, normalizes it, and stores the events; storing is the acknowledgement.
//! The [`inbound`] processor then works from the store, so a crash between the
//! acknowledgement and the reply loses nothing and a provider retry changes nothing.
//!
//! Outbound: every message is first an outbox row ([`Messaging::send_to_contact`] or a
//! reply queued while processing an event); [`delivery`] workers claim due rows per
//! channel and send them within the channel's rate limits.

pub mod delivery;
pub mod inbound;
pub mod plan;
pub mod telegram;
pub mod webchat;

use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use voronka_channels::webchat::{Hub, WebchatAdapter};
use voronka_channels::{ChannelAdapter, ParseError, VerifyError};
use voronka_core::channel::{ChannelKind, ChannelStatus};
use voronka_core::crypto::SecretKey;
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_store::{Channel, DynStore, NewOutbound, OutboxItem, StoreError};

/// Settings of the messaging runtime.
#[derive(Debug, Clone)]
pub struct MessagingConfig {
    /// Base URL of the Telegram Bot API (`https://api.telegram.org`; a fake in tests).
    pub telegram_api_url: String,
    /// Where providers reach this server; webhooks are used when set, polling otherwise.
    pub public_url: Option<String>,
    /// Long-poll wait of `getUpdates`.
    pub poll_timeout: Duration,
    /// How long a claimed outbox row stays with its worker before another may take it.
    pub outbox_lease: Duration,
    /// Fraction of a provider's rate limit to aim at (just under it: no 429s).
    pub rate_headroom: f64,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            telegram_api_url: "https://api.telegram.org".into(),
            public_url: None,
            poll_timeout: Duration::from_secs(25),
            outbox_lease: Duration::from_secs(30),
            rate_headroom: 0.99,
        }
    }
}

/// A channel ready to use: its record and its adapter.
pub struct Runtime {
    /// The channel as stored.
    pub channel: Channel,
    /// The provider adapter.
    pub adapter: Arc<dyn ChannelAdapter>,
}

/// Why an inbound request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// No such channel, or not of the kind the path names.
    #[error("no such channel")]
    UnknownChannel,
    /// The channel is switched off.
    #[error("the channel is disabled")]
    Disabled,
    /// The signature or secret did not match.
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// The body is not a valid provider request.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// Storing failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What [`Messaging::receive`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    /// New events stored.
    pub stored: usize,
    /// Provider retries recognised and skipped.
    pub duplicates: usize,
}

/// Errors of channel management.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The provider refused the credentials.
    #[error("{0}")]
    InvalidCredentials(String),
    /// The provider could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What the inbound processor asks the flow engine about each event.
#[async_trait::async_trait]
pub trait FlowHook: Send + Sync {
    /// Whether flows take this event: the signal to record with it (kind, data), or
    /// `None`. `routing` says what the event means after the channel's own rules.
    async fn route(
        &self,
        channel: &Channel,
        identity: Option<&voronka_store::Identity>,
        event: &voronka_core::message::InboundEvent,
        routing: &Routing,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError>;
    /// Called after an event with a signal was committed.
    fn wake(&self);
}

/// What the inbound processor tells the broadcast runtime: presses of broadcast buttons
/// (payloads starting `bc:`) and delivery/read receipts. Other events never reach it, so
/// ordinary messages pay nothing for broadcasts.
#[async_trait::async_trait]
pub trait BroadcastHook: Send + Sync {
    /// A press of a broadcast's button by `identity`: records the click and acts on it
    /// (starts the button's flow). Returns the payload flows should see instead (a
    /// payload button's own), or `None`.
    async fn pressed(
        &self,
        channel: &Channel,
        identity: &voronka_store::Identity,
        payload: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The provider reported a message delivered (`read` false) or read.
    async fn receipt(
        &self,
        channel: &Channel,
        identity: &voronka_store::Identity,
        provider_message_id: &str,
        read: bool,
    ) -> Result<(), StoreError>;
}

/// What an inbound event means, as far as flows care.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// The payload of the button it presses or answers.
    pub payload: Option<String>,
    /// It is a STOP word (the channel already unsubscribed the contact).
    pub stop: bool,
    /// It made the contact subscribed (a new subscriber, or a START).
    pub subscribes: bool,
}

/// The messaging runtime shared by the HTTP server and the background workers.
pub struct Messaging {
    store: DynStore,
    secret: SecretKey,
    config: MessagingConfig,
    http: reqwest::Client,
    hub: Hub,
    runtimes: RwLock<HashMap<ChannelId, Arc<Runtime>>>,
    inbound_wake: Arc<Notify>,
    outbox_wake: Arc<Notify>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pollers: Mutex<HashMap<ChannelId, JoinHandle<()>>>,
    shutdown: CancellationToken,
    limits: Mutex<HashMap<ChannelId, Arc<delivery::Limits>>>,
    flow_hook: RwLock<Option<Arc<dyn FlowHook>>>,
    broadcast_hook: RwLock<Option<Arc<dyn BroadcastHook>>>,
}

impl std::fmt::Debug for Messaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messaging")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Messaging {
    /// Builds the runtime; nothing runs in the background until [`Messaging::start`].
    pub fn new(store: DynStore, secret: SecretKey, config: MessagingConfig) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.poll_timeout + Duration::from_secs(20))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Arc::new(Messaging {
            store,
            secret,
            config,
            http,
            hub: Hub::default(),
            runtimes: RwLock::new(HashMap::new()),
            inbound_wake: Arc::new(Notify::new()),
            outbox_wake: Arc::new(Notify::new()),
            tasks: Mutex::new(Vec::new()),
            pollers: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            limits: Mutex::new(HashMap::new()),
            flow_hook: RwLock::new(None),
            broadcast_hook: RwLock::new(None),
        })
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    /// The web chat's live hub (the server streams from it).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The HTTP client for provider calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Starts the inbound processor, the delivery supervisor, and every active
    /// channel's connection (webhook registration or polling).
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let processor = tokio::spawn(inbound::run(self.clone()));
        let supervisor = tokio::spawn(delivery::run(self.clone()));
        if let Ok(mut t) = self.tasks.lock() {
            t.push(processor);
            t.push(supervisor);
        }
        for channel in self.store.all_channels().await? {
            self.activate(&channel).await;
        }
        Ok(())
    }

    /// Stops background work (pollers, processor, workers). In-flight sends are
    /// abandoned; their leases expire and they are retried.
    pub fn stop(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
        if let Ok(mut p) = self.pollers.lock() {
            for (_, h) in p.drain() {
                h.abort();
            }
        }
        self.shutdown.cancel();
    }

    /// Wakes the inbound processor.
    pub fn wake_inbound(&self) {
        self.inbound_wake.notify_one();
    }

    /// Wakes the delivery supervisor.
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// The ready-to-use channel, loaded and cached on first use.
    pub async fn runtime(&self, id: ChannelId) -> Result<Arc<Runtime>, StoreError> {
        if let Some(r) = self.runtimes.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(r);
        }
        let channel = self.store.find_channel(id).await?;
        let adapter = self.adapter_for(&channel)?;
        let rt = Arc::new(Runtime { channel, adapter });
        if let Ok(mut m) = self.runtimes.write() {
            m.insert(id, rt.clone());
        }
        Ok(rt)
    }

    /// Forgets the cached runtime of a channel (after it changed).
    pub fn invalidate(&self, id: ChannelId) {
        if let Ok(mut m) = self.runtimes.write() {
            m.remove(&id);
        }
    }

    fn adapter_for(&self, channel: &Channel) -> Result<Arc<dyn ChannelAdapter>, StoreError> {
        match channel.kind {
            ChannelKind::Telegram => {
                let creds = telegram::Credentials::open(&self.secret, channel)?;
                Ok(Arc::new(telegram::adapter(
                    &self.http,
                    &self.config.telegram_api_url,
                    &creds,
                )))
            }
            ChannelKind::Webchat => Ok(Arc::new(WebchatAdapter::new(
                channel.id.0,
                self.hub.clone(),
            ))),
            other => Err(StoreError::Invalid(voronka_core::ValidationError::new(
                "kind",
                format!("{} channels are not supported yet", other.as_str()),
            ))),
        }
    }

    /// Verifies, normalizes and stores one inbound request of a channel. `kind`, when
    /// given, must match the channel's (the per-kind webhook paths).
    pub async fn receive(
        &self,
        channel: ChannelId,
        kind: Option<ChannelKind>,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        let rt = match self.runtime(channel).await {
            Ok(rt) => rt,
            Err(StoreError::NotFound { .. }) => return Err(ReceiveError::UnknownChannel),
            Err(e) => return Err(e.into()),
        };
        if kind.is_some_and(|k| k != rt.channel.kind) {
            return Err(ReceiveError::UnknownChannel);
        }
        // The secret is checked before anything else is looked at: an unverified
        // request must not be able to change anything, not even by failing to parse.
        rt.adapter.verify(headers, body)?;
        if rt.channel.status == ChannelStatus::Disabled {
            return Err(ReceiveError::Disabled);
        }
        let events = rt.adapter.parse(body)?;
        self.store_events(&rt.channel, events).await
    }

    /// Stores already-normalized events of a channel (pollers, the web chat).
    pub async fn store_events(
        &self,
        channel: &Channel,
        events: Vec<voronka_core::message::InboundEvent>,
    ) -> Result<Received, ReceiveError> {
        if events.is_empty() {
            return Ok(Received::default());
        }
        let ids = self
            .store
            .record_inbound(channel.workspace_id, channel.id, events)
            .await?;
        let stored = ids.iter().filter(|i| i.is_some()).count();
        if stored > 0 {
            self.wake_inbound();
        }
        Ok(Received {
            stored,
            duplicates: ids.len() - stored,
        })
    }

    /// Queues a message to a contact (consent is enforced by the store) and wakes the
    /// delivery workers.
    pub async fn send_to_contact(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        new: NewOutbound,
    ) -> Result<OutboxItem, StoreError> {
        let item = self.store.enqueue_message(ws, contact, new).await?;
        self.wake_outbox();
        Ok(item)
    }

    /// Brings a channel's connection in line with its record: registers the Telegram
    /// webhook (public URL set) or starts polling (no public URL); stops polling for a
    /// disabled or deleted channel.
    pub async fn activate(self: &Arc<Self>, channel: &Channel) {
        self.deactivate(channel.id);
        if channel.kind != ChannelKind::Telegram || channel.status == ChannelStatus::Disabled {
            return;
        }
        telegram::activate(self.clone(), channel.clone()).await;
    }

    /// Stops a deleted channel's connection.
    pub fn deactivate(&self, id: ChannelId) {
        self.invalidate(id);
        if let Ok(mut p) = self.pollers.lock() {
            if let Some(h) = p.remove(&id) {
                h.abort();
            }
        }
    }

    pub(crate) fn add_poller(&self, id: ChannelId, handle: JoinHandle<()>) {
        if let Ok(mut p) = self.pollers.lock() {
            if let Some(old) = p.insert(id, handle) {
                old.abort();
            }
        }
    }

    /// Records a connection problem on the channel (shown in the API and UI).
    pub(crate) async fn record_channel_error(&self, channel: &Channel, error: &str) {
        let mut runtime = channel.runtime.clone();
        if runtime.last_error.as_deref() == Some(error) {
            return;
        }
        runtime.last_error = Some(error.to_string());
        runtime.last_error_at = Some(Timestamp::now());
        let patch = voronka_store::ChannelPatch {
            runtime: Some(runtime),
            ..Default::default()
        };
        if let Err(e) = self
            .store
            .update_channel(channel.workspace_id, channel.id, patch)
            .await
        {
            tracing::warn!(channel = %channel.id, error = %e, "cannot record channel error");
        }
    }

    /// The rate limiters of a channel, made on first use.
    pub(crate) fn limits_for(
        &self,
        id: ChannelId,
        make: impl FnOnce() -> delivery::Limits,
    ) -> Arc<delivery::Limits> {
        match self.limits.lock() {
            Ok(mut m) => m.entry(id).or_insert_with(|| Arc::new(make())).clone(),
            Err(_) => Arc::new(make()),
        }
    }

    /// Cancelled when the runtime stops.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Connects the flow engine: from now on inbound events are offered to it.
    pub fn set_flow_hook(&self, hook: Arc<dyn FlowHook>) {
        if let Ok(mut h) = self.flow_hook.write() {
            *h = Some(hook);
        }
    }

    /// The flow engine, when connected.
    pub fn flow_hook(&self) -> Option<Arc<dyn FlowHook>> {
        self.flow_hook.read().ok().and_then(|h| h.clone())
    }

    /// Connects the broadcast runtime: from now on broadcast button presses and receipts
    /// are handed to it.
    pub fn set_broadcast_hook(&self, hook: Arc<dyn BroadcastHook>) {
        if let Ok(mut h) = self.broadcast_hook.write() {
            *h = Some(hook);
        }
    }

    /// The broadcast runtime, when connected.
    pub fn broadcast_hook(&self) -> Option<Arc<dyn BroadcastHook>> {
        self.broadcast_hook.read().ok().and_then(|h| h.clone())
    }

    /// The credentials key (also keys web chat visitor tokens).
    pub fn secret_key(&self) -> &SecretKey {
        &self.secret
    }
}
