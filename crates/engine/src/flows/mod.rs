//! The flow runtime: triggers, durable runs, timers.
//!
//! Nothing about a run lives only in memory. A run is a row; a wait is its `due_at`;
//! whatever may start or resume runs (a message, a tag, an API event, a scan) is first
//! a signal row. Workers claim signals and due runs, let the pure interpreter
//! ([`exec`]) decide, and commit the outcome in one transaction that also consumes the
//! signal or clears the timer — so a crash at any point either leaves the step undone
//! (and it is redone) or done once, never twice.
//!
//! - [`workers`]: the signal worker, the timer worker and the date/inactivity scanner.
//! - [`runner`]: one signal or timer → one commit.
//! - [`triggers`]: which flows a signal starts, in a documented precedence.

pub mod exec;
pub mod runner;
pub mod triggers;
pub mod workers;

use crate::messaging::{FlowHook, Messaging, Routing};
use crate::outgoing::{OutgoingClient, OutgoingPolicy};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use triggers::LiveFlow;
use voronka_core::channel::ChannelKind;
use voronka_core::field::FieldDefinition;
use voronka_core::flow::schedule::{self, QuietHours};
use voronka_core::flow::template::Templates;
use voronka_core::flow::validate::{self, Catalog, ChannelLimits, Problem};
use voronka_core::flow::FlowDocument;
use voronka_core::message::{InboundEvent, InboundKind};
use voronka_core::{ContactId, FlowId, WorkspaceId};
use voronka_store::{Channel, DynStore, FlowVersion, Identity, NewSignal, StoreError, WaitKind};

/// Settings of the flow runtime.
#[derive(Debug, Clone)]
pub struct FlowsConfig {
    /// How long a claimed signal stays with its worker.
    pub signal_lease: Duration,
    /// How long a claimed timer stays with its worker.
    pub timer_lease: Duration,
    /// Contacts processed at once.
    pub concurrency: usize,
    /// How often date and inactivity triggers are scanned.
    pub scan_interval: Duration,
    /// Outgoing HTTP rules (HTTP steps).
    pub outgoing: OutgoingPolicy,
    /// The flows' notion of now (shifted in tests and `voronka flow test`).
    pub clock: Clock,
}

/// The wall clock plus an offset that only moves forward: tests and the terminal
/// tester skip a delay's hours without waiting them, while timers stay rows with real
/// timestamps.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    /// Now, as flows see it.
    pub fn now(&self) -> jiff::Timestamp {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        let now = jiff::Timestamp::now();
        now.checked_add(jiff::SignedDuration::from_millis(offset))
            .unwrap_or(now)
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            signal_lease: Duration::from_secs(30),
            timer_lease: Duration::from_secs(30),
            concurrency: 64,
            scan_interval: Duration::from_secs(60),
            outgoing: OutgoingPolicy::default(),
            clock: Clock::default(),
        }
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The draft has problems.
    #[error("the flow has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What the runner needs to know about a workspace, cached briefly.
#[derive(Debug, Clone)]
pub(crate) struct WorkspaceInfo {
    pub(crate) tz: jiff::tz::TimeZone,
    pub(crate) quiet: Option<QuietHours>,
    pub(crate) fields: Vec<FieldDefinition>,
}

/// How long workspace settings and field definitions are cached.
const WORKSPACE_TTL: Duration = Duration::from_secs(5);

/// The flow runtime shared by the HTTP server and the workers.
pub struct Flows {
    store: DynStore,
    messaging: Arc<Messaging>,
    config: FlowsConfig,
    templates: Templates,
    http: OutgoingClient,
    live: RwLock<HashMap<WorkspaceId, Arc<Vec<LiveFlow>>>>,
    documents: Mutex<HashMap<(FlowId, u32), Arc<FlowDocument>>>,
    workspaces: Mutex<HashMap<WorkspaceId, (Instant, Arc<WorkspaceInfo>)>>,
    signal_wake: Arc<Notify>,
    timer_wake: Arc<Notify>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Flows {
    /// Builds the runtime and connects it to the messaging runtime's inbound processor;
    /// nothing runs in the background until [`Flows::start`].
    pub fn new(messaging: Arc<Messaging>, config: FlowsConfig) -> Arc<Flows> {
        let flows = Arc::new(Flows {
            store: messaging.store().clone(),
            http: OutgoingClient::new(config.outgoing.clone()),
            messaging: messaging.clone(),
            config,
            templates: Templates::new(),
            live: RwLock::new(HashMap::new()),
            documents: Mutex::new(HashMap::new()),
            workspaces: Mutex::new(HashMap::new()),
            signal_wake: Arc::new(Notify::new()),
            timer_wake: Arc::new(Notify::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
        });
        messaging.set_flow_hook(flows.clone());
        flows
    }

    /// Loads the published flows and starts the workers.
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        self.reload_all().await?;
        let handles = vec![
            tokio::spawn(workers::signals(self.clone())),
            tokio::spawn(workers::timers(self.clone())),
            tokio::spawn(workers::scanner(self.clone())),
        ];
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(handles);
        }
        Ok(())
    }

    /// Stops the workers; claimed work is picked up again after its lease.
    pub fn stop(&self) {
        self.shutdown.cancel();
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The messaging runtime.
    pub fn messaging(&self) -> &Arc<Messaging> {
        &self.messaging
    }

    /// The template engine.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Now, as flows see it.
    pub fn now(&self) -> jiff::Timestamp {
        self.config.clock.now()
    }

    /// Moves the flows' clock forward and wakes the timers (tests, the terminal tester).
    pub fn advance_clock(&self, by: Duration) {
        self.config.clock.advance(by);
        self.wake_timers();
    }

    pub(crate) fn http(&self) -> &OutgoingClient {
        &self.http
    }

    pub(crate) fn config(&self) -> &FlowsConfig {
        &self.config
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn signal_notify(&self) -> &Notify {
        &self.signal_wake
    }

    pub(crate) fn timer_notify(&self) -> &Notify {
        &self.timer_wake
    }

    /// Wakes the signal worker.
    pub fn wake(&self) {
        self.signal_wake.notify_one();
    }

    /// Wakes the timer worker (a run now waits for an earlier moment).
    pub fn wake_timers(&self) {
        self.timer_wake.notify_one();
    }

    /// Re-reads every published flow (at start).
    pub async fn reload_all(&self) -> Result<(), StoreError> {
        let mut by_ws: HashMap<WorkspaceId, Vec<LiveFlow>> = HashMap::new();
        for (flow, version) in self.store.published_flows().await? {
            match serde_json::from_value::<FlowDocument>(version.document.clone()) {
                Ok(doc) => by_ws
                    .entry(flow.workspace_id)
                    .or_default()
                    .push(LiveFlow::new(
                        flow.id,
                        flow.name.clone(),
                        version.version,
                        doc,
                    )),
                Err(e) => {
                    tracing::error!(flow = %flow.id, error = %e, "a published flow cannot be read; its triggers are off")
                }
            }
        }
        if let Ok(mut live) = self.live.write() {
            live.clear();
            for (ws, mut flows) in by_ws {
                flows.sort_by_key(|f| f.flow_id);
                live.insert(ws, Arc::new(flows));
            }
        }
        Ok(())
    }

    /// Re-reads one workspace's published flows (after a publish or an archive).
    pub async fn reload(&self, ws: WorkspaceId) -> Result<(), StoreError> {
        let mut flows = Vec::new();
        for (flow, version) in self.store.published_flows().await? {
            if flow.workspace_id != ws {
                continue;
            }
            if let Ok(doc) = serde_json::from_value::<FlowDocument>(version.document.clone()) {
                flows.push(LiveFlow::new(
                    flow.id,
                    flow.name.clone(),
                    version.version,
                    doc,
                ));
            }
        }
        flows.sort_by_key(|f| f.flow_id);
        if let Ok(mut live) = self.live.write() {
            live.insert(ws, Arc::new(flows));
        }
        if let Ok(mut w) = self.workspaces.lock() {
            w.remove(&ws);
        }
        Ok(())
    }

    /// The workspace's live flows.
    pub fn live_flows(&self, ws: WorkspaceId) -> Arc<Vec<LiveFlow>> {
        self.live
            .read()
            .ok()
            .and_then(|l| l.get(&ws).cloned())
            .unwrap_or_default()
    }

    /// Every workspace with live flows.
    pub(crate) fn live_workspaces(&self) -> Vec<(WorkspaceId, Arc<Vec<LiveFlow>>)> {
        self.live
            .read()
            .map(|l| l.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// The document of a flow version, cached (versions never change).
    pub async fn document(
        &self,
        ws: WorkspaceId,
        flow: FlowId,
        version: u32,
    ) -> Result<Arc<FlowDocument>, StoreError> {
        if let Some(d) = self
            .documents
            .lock()
            .ok()
            .and_then(|m| m.get(&(flow, version)).cloned())
        {
            return Ok(d);
        }
        let v = self.store.get_flow_version(ws, flow, version).await?;
        let doc: FlowDocument = serde_json::from_value(v.document).map_err(|e| {
            StoreError::Invalid(voronka_core::ValidationError::new(
                "document",
                format!("flow {flow} version {version} cannot be read: {e}"),
            ))
        })?;
        let doc = Arc::new(doc);
        if let Ok(mut m) = self.documents.lock() {
            m.insert((flow, version), doc.clone());
        }
        Ok(doc)
    }

    /// Settings, time zone, quiet hours and fields of a workspace (cached for seconds).
    pub(crate) async fn workspace(
        &self,
        ws: WorkspaceId,
    ) -> Result<Arc<WorkspaceInfo>, StoreError> {
        if let Some((at, info)) = self
            .workspaces
            .lock()
            .ok()
            .and_then(|m| m.get(&ws).cloned())
        {
            if at.elapsed() < WORKSPACE_TTL {
                return Ok(info);
            }
        }
        let settings = self.store.workspace_settings(ws).await?;
        let fields = self.store.list_fields(ws).await?;
        let tz = schedule::time_zone(Some(&settings.time_zone), &jiff::tz::TimeZone::UTC);
        let quiet = match (&settings.quiet_from, &settings.quiet_to) {
            (Some(f), Some(t)) => match (schedule::parse_hhmm(f), schedule::parse_hhmm(t)) {
                (Ok(from), Ok(to)) => Some(QuietHours {
                    from,
                    to,
                    weekends: settings.quiet_weekends,
                }),
                _ => None,
            },
            _ => None,
        };
        let info = Arc::new(WorkspaceInfo { tz, quiet, fields });
        if let Ok(mut m) = self.workspaces.lock() {
            m.insert(ws, (Instant::now(), info.clone()));
        }
        Ok(info)
    }

    /// Forgets cached workspace data (after its fields or settings changed).
    pub fn invalidate_workspace(&self, ws: WorkspaceId) {
        if let Ok(mut m) = self.workspaces.lock() {
            m.remove(&ws);
        }
    }

    /// What the validator checks names against in a workspace.
    pub async fn catalog(&self, ws: WorkspaceId) -> Result<Catalog, StoreError> {
        let fields = self.store.list_fields(ws).await?;
        let tags = self.store.list_tags(ws).await?;
        let topics = self.store.list_topics(ws).await?;
        let flows = self.store.list_flows(ws, false).await?;
        let channels = self.store.list_channels(ws).await?;
        let mut limits: Vec<ChannelLimits> = Vec::new();
        for ch in channels {
            if limits.iter().any(|l| l.name == ch.kind.as_str()) {
                continue;
            }
            if let Some(l) = channel_limits(ch.kind) {
                limits.push(l);
            }
        }
        Ok(Catalog {
            fields: Some(fields),
            tags: Some(tags.into_iter().map(|t| t.name).collect()),
            topics: Some(topics.into_iter().map(|t| t.key).collect()),
            flows: Some(
                flows
                    .into_iter()
                    .flat_map(|f| [f.name, f.id.0.to_string()])
                    .collect(),
            ),
            channels: limits,
        })
    }

    /// Validates a document against a workspace.
    pub async fn validate(
        &self,
        ws: WorkspaceId,
        doc: &FlowDocument,
    ) -> Result<Vec<Problem>, StoreError> {
        let catalog = self.catalog(ws).await?;
        Ok(validate::validate(doc, &catalog))
    }

    /// Validates the draft and publishes it as the next version; runs in flight stay
    /// on their version.
    pub async fn publish(&self, ws: WorkspaceId, id: FlowId) -> Result<FlowVersion, PublishError> {
        let flow = self.store.get_flow(ws, id).await?;
        let doc: FlowDocument = match serde_json::from_value(flow.draft.clone()) {
            Ok(d) => d,
            Err(e) => {
                return Err(PublishError::Invalid(vec![Problem {
                    step: None,
                    path: String::new(),
                    code: "bad_document",
                    message: e.to_string(),
                }]))
            }
        };
        let problems = self.validate(ws, &doc).await?;
        if !problems.is_empty() {
            return Err(PublishError::Invalid(problems));
        }
        let document = serde_json::to_value(&doc).map_err(|e| {
            StoreError::Invalid(voronka_core::ValidationError::new(
                "document",
                e.to_string(),
            ))
        })?;
        let version = self.store.publish_flow(ws, id, document).await?;
        self.reload(ws).await?;
        Ok(version)
    }

    /// Archives a flow (its runs in flight are cancelled) and takes its triggers off.
    pub async fn archive(
        &self,
        ws: WorkspaceId,
        id: FlowId,
    ) -> Result<voronka_store::Flow, StoreError> {
        let flow = self.store.archive_flow(ws, id).await?;
        self.reload(ws).await?;
        Ok(flow)
    }

    /// Records a signal for a contact and wakes the worker.
    pub async fn emit(&self, ws: WorkspaceId, signal: NewSignal) -> Result<(), StoreError> {
        self.store.emit_signal(ws, signal).await?;
        self.wake();
        Ok(())
    }

    /// An API event (`order_shipped`) for a contact: starts flows listening for it and
    /// ends runs whose flow exits on it.
    pub async fn event(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        name: &str,
        data: Value,
    ) -> Result<(), StoreError> {
        self.emit(
            ws,
            NewSignal {
                contact_id: contact,
                channel_id: None,
                kind: "event".into(),
                data: json!({ "name": name, "data": data }),
            },
        )
        .await
    }

    /// Starts a flow for a contact now (API, operator), subject to its re-entry rule.
    pub async fn start_for(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        flow: FlowId,
        data: Value,
    ) -> Result<(), StoreError> {
        self.emit(
            ws,
            NewSignal {
                contact_id: contact,
                channel_id: None,
                kind: "start_flow".into(),
                data: json!({ "flow": flow.0.to_string(), "data": data, "trigger": "api" }),
            },
        )
        .await
    }

    /// Releases a contact handed off to an operator: their runs waiting for it go on.
    pub async fn release(&self, ws: WorkspaceId, contact: ContactId) -> Result<(), StoreError> {
        self.emit(
            ws,
            NewSignal {
                contact_id: contact,
                channel_id: None,
                kind: "release".into(),
                data: json!({}),
            },
        )
        .await
    }

    /// Tags added outside flows (API, UI): starts flows listening for them.
    pub async fn tags_added(
        &self,
        ws: WorkspaceId,
        contact: ContactId,
        tags: &[String],
    ) -> Result<(), StoreError> {
        for tag in self.listened_tags(ws, tags) {
            self.emit(
                ws,
                NewSignal {
                    contact_id: contact,
                    channel_id: None,
                    kind: "tag_added".into(),
                    data: json!({ "tag": tag }),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The tags among `tags` some live flow starts (or exits) on.
    pub(crate) fn listened_tags(&self, ws: WorkspaceId, tags: &[String]) -> Vec<String> {
        let flows = self.live_flows(ws);
        tags.iter()
            .filter(|t| {
                flows.iter().any(|f| {
                    f.doc
                        .triggers
                        .iter()
                        .chain(f.doc.exit_on.iter())
                        .any(|tr| triggers::matches_signal(tr, "tag_added", t))
                })
            })
            .cloned()
            .collect()
    }
}

/// What a channel kind can show, from its adapter; `None` for kinds without one yet.
pub fn channel_limits(kind: ChannelKind) -> Option<ChannelLimits> {
    let caps = match kind {
        ChannelKind::Telegram => &voronka_channels::telegram::CAPABILITIES,
        ChannelKind::Webchat => &voronka_channels::webchat::CAPABILITIES,
        _ => return None,
    };
    Some(ChannelLimits {
        name: kind.as_str().to_string(),
        // Both adapters split a long text into several messages.
        text_limit: None,
        max_buttons: caps.max_buttons,
        button_label_limit: caps.button_label_limit,
        // Payloads longer than a provider carries are sent by reference, so the message
        // format's own limit is what counts.
        payload_limit_bytes: voronka_core::message::MAX_PAYLOAD_BYTES,
        media: caps.media,
    })
}

#[async_trait::async_trait]
impl FlowHook for Flows {
    async fn route(
        &self,
        channel: &Channel,
        identity: Option<&Identity>,
        event: &InboundEvent,
        routing: &Routing,
    ) -> Result<Option<(String, Value)>, StoreError> {
        let ws = channel.workspace_id;
        let live_runs = match identity {
            Some(i) => self.store.live_runs(ws, i.contact_id).await?,
            None => Vec::new(),
        };
        if routing.stop {
            // STOP ends every run of the contact; nothing else of the message matters.
            return Ok((!live_runs.is_empty()).then(|| ("stop".to_string(), json!({}))));
        }
        let (kind, text, reference) = match &event.kind {
            InboundKind::Text { text, .. } => ("text", text.clone(), None),
            InboundKind::ButtonPressed { .. } => ("button", String::new(), None),
            InboundKind::Start { reference, .. } => ("start", String::new(), reference.clone()),
            InboundKind::Media { caption, .. } => {
                ("media", caption.clone().unwrap_or_default(), None)
            }
            InboundKind::ContactShared { phone, .. } => ("contact", phone.clone(), None),
            InboundKind::Subscribed => ("subscribed", String::new(), None),
            _ => return Ok(None),
        };
        let data = json!({
            "kind": kind,
            "text": text,
            "payload": routing.payload,
            "ref": reference,
            "subscribed": routing.subscribes,
        });
        // A contact talking to a human, or answering a run, is the flows' business.
        let waiting = live_runs.iter().any(|r| {
            matches!(
                r.wait,
                Some(WaitKind::Answer) | Some(WaitKind::Handoff) | Some(WaitKind::Button)
            )
        });
        let flows = self.live_flows(ws);
        let message = triggers::Message {
            channel: Some((channel.id, channel.kind)),
            text: &text,
            payload: routing.payload.as_deref(),
            reference: reference.as_deref(),
            subscribed: routing.subscribes,
        };
        let triggered = triggers::for_message(&flows, &message).is_some();
        let exits = live_runs.iter().any(|r| {
            flows
                .iter()
                .any(|f| f.flow_id == r.flow_id && triggers::exit_on_message(&f.doc, &message))
        });
        let own_button = routing
            .payload
            .as_deref()
            .is_some_and(|p| p.starts_with(exec::PAYLOAD_PREFIX));
        Ok((waiting || triggered || exits || own_button).then(|| ("inbound".to_string(), data)))
    }

    fn wake(&self) {
        Flows::wake(self);
    }
}
