//! The broadcast runtime: scheduling, planning, feeding the outbox, winners, follow-ups,
//! live progress, clicks and recall.
//!
//! Like flows, nothing lives only in memory: a broadcast's state is its row, its
//! recipients are rows planned in batches, and a recipient is sent by moving it into the
//! outbox in one transaction that re-checks consent. A restart finds every `sending`
//! broadcast again and goes on where its rows say it was.
//!
//! - [`validate`]: the document's problems, with JSON pointers.
//! - [`render`]: one recipient's message, with tracked links and postback payloads.
//! - [`report`]: the report and the live progress.
//! - `workers`: the scheduler and one task per sending broadcast (plan, feed, winner,
//!   follow-ups, finish).
//!
//! Pacing: a sending broadcast keeps about a second of each channel's rate in the
//! outbox (queued or being sent), never more. So a million recipients are a million *planned rows*, not a
//! million outbox rows, and pause and cancel (which pull back what is still queued) take
//! effect at once.

pub mod render;
pub mod report;
pub mod validate;
mod workers;

use crate::flows::Flows;
use crate::messaging::{BroadcastHook, Messaging};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use voronka_channels::Capabilities;
use voronka_core::broadcast::{BroadcastButton, BroadcastSpec, BroadcastStatus, Schedule};
use voronka_core::channel::ChannelKind;
use voronka_core::segment::{self, Problem, Resolved};
use voronka_core::{BroadcastId, ChannelId, RecipientId, SegmentId, WorkspaceId};
use voronka_store::{
    Broadcast, Channel, DynStore, Identity, RecallResult, Recipient, RecipientQuery,
    RecipientSignal, StoreError,
};

pub use report::{Counts, Progress, Report};
pub use validate::BroadcastCatalog;

/// Settings of the broadcast runtime.
#[derive(Debug, Clone)]
pub struct BroadcastsConfig {
    /// Where `/r/{token}` is served (tracked links); the messaging runtime's public URL
    /// when absent. Without either, links are sent untracked.
    pub public_url: Option<String>,
    /// Contacts examined per planning transaction.
    pub plan_batch: u32,
    /// Seconds of each channel's rate kept in the outbox (queued or being sent).
    pub buffer_seconds: f64,
    /// How often a sending broadcast's task looks for work when idle.
    pub tick: Duration,
    /// How often live progress is published while sending.
    pub progress_interval: Duration,
    /// How often follow-ups are looked for.
    pub follow_up_interval: Duration,
    /// How old a message may be for a recall to delete it (Telegram: 48 hours).
    pub recall_window: Duration,
}

impl Default for BroadcastsConfig {
    fn default() -> Self {
        BroadcastsConfig {
            public_url: None,
            plan_batch: 2_000,
            // A second and a half of rate, counting the rows delivery has claimed (at
            // most a second of sending, see delivery.rs), keeps the channel busy between
            // the feeder's rounds and bounds what a pause cannot pull back — the rows
            // already being sent — to about a second of sending.
            buffer_seconds: 1.5,
            tick: Duration::from_millis(200),
            progress_interval: Duration::from_millis(500),
            follow_up_interval: Duration::from_secs(2),
            recall_window: Duration::from_secs(48 * 3600),
        }
    }
}

/// Why a broadcast operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// The document has problems.
    #[error("the broadcast has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// Storage failed, or the store refused (not found, conflicts).
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why a tracked link did not lead anywhere.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The token is malformed or its signature does not match.
    #[error("this link is not valid")]
    BadToken,
    /// The recipient, broadcast or button no longer exists.
    #[error("this link leads nowhere any more")]
    NotFound,
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What a recall did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RecallSummary {
    /// Recipients whose message was deleted.
    pub recalled: u64,
    /// Recipients whose message the provider would not delete.
    pub failed: u64,
}

/// What a channel kind can do, from its adapter; `None` for kinds without one yet.
pub fn capabilities(kind: ChannelKind) -> Option<&'static Capabilities> {
    match kind {
        ChannelKind::Telegram => Some(&voronka_channels::telegram::CAPABILITIES),
        ChannelKind::Webchat => Some(&voronka_channels::webchat::CAPABILITIES),
        _ => None,
    }
}

/// The zone where a wall-clock time comes first (UTC+14) and last (UTC−12).
fn fixed_zone(hours: i8) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::fixed(jiff::tz::offset(hours))
}

/// The first moment a local time occurs anywhere on Earth: a local-time broadcast fires
/// then, and each time zone's recipients become due at their own local time.
pub fn earliest_local(local: jiff::civil::DateTime) -> Option<Timestamp> {
    local.to_zoned(fixed_zone(14)).ok().map(|z| z.timestamp())
}

/// The last moment a local time occurs anywhere on Earth.
pub(crate) fn latest_local(local: jiff::civil::DateTime) -> Option<Timestamp> {
    local.to_zoned(fixed_zone(-12)).ok().map(|z| z.timestamp())
}

/// The moment a local time occurs in the zone `name` (`fallback` when absent or
/// unknown).
pub fn local_in(
    local: jiff::civil::DateTime,
    name: Option<&str>,
    fallback: &jiff::tz::TimeZone,
) -> Option<Timestamp> {
    let tz = voronka_core::flow::schedule::time_zone(name, fallback);
    local.to_zoned(tz).ok().map(|z| z.timestamp())
}

/// One sending broadcast's task on this node.
struct Task {
    handle: JoinHandle<()>,
    wake: Arc<Notify>,
}

/// The broadcast runtime shared by the HTTP server and its workers.
pub struct Broadcasts {
    store: DynStore,
    messaging: Arc<Messaging>,
    flows: Arc<Flows>,
    config: BroadcastsConfig,
    tasks: Mutex<HashMap<BroadcastId, Task>>,
    hub: Mutex<HashMap<BroadcastId, (WorkspaceId, watch::Sender<Progress>)>>,
    wake: Arc<Notify>,
    main: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Broadcasts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcasts")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Broadcasts {
    /// Builds the runtime over the flow runtime (whose clock, templates and flows it
    /// uses); nothing runs, and inbound clicks are not connected, until
    /// [`Broadcasts::start`].
    pub fn new(flows: Arc<Flows>, config: BroadcastsConfig) -> Arc<Broadcasts> {
        Arc::new(Broadcasts {
            store: flows.store().clone(),
            messaging: flows.messaging().clone(),
            flows,
            config,
            tasks: Mutex::new(HashMap::new()),
            hub: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            main: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// Connects button presses and receipts and starts the scheduler, which also resumes
    /// every broadcast that was sending before a restart.
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        self.messaging.set_broadcast_hook(self.clone());
        let h = tokio::spawn(workers::scheduler(self.clone()));
        if let Ok(mut m) = self.main.lock() {
            m.push(h);
        }
        Ok(())
    }

    /// Stops the scheduler and every broadcast task; what they were doing is redone from
    /// the rows after a restart.
    pub fn stop(&self) {
        self.shutdown.cancel();
        if let Ok(mut m) = self.main.lock() {
            for h in m.drain(..) {
                h.abort();
            }
        }
        if let Ok(mut t) = self.tasks.lock() {
            for (_, task) in t.drain() {
                task.handle.abort();
            }
        }
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &BroadcastsConfig {
        &self.config
    }

    /// Now, as broadcasts (and flows) see it.
    pub fn now(&self) -> Timestamp {
        self.flows.now()
    }

    /// Moves the shared clock forward (tests) and wakes every worker.
    pub fn advance_clock(&self, by: Duration) {
        self.flows.advance_clock(by);
        self.wake_all();
    }

    /// Wakes the scheduler.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn wake_all(&self) {
        self.wake();
        if let Ok(t) = self.tasks.lock() {
            for task in t.values() {
                task.wake.notify_one();
            }
        }
    }

    fn wake_task(&self, id: BroadcastId) {
        if let Ok(t) = self.tasks.lock() {
            if let Some(task) = t.get(&id) {
                task.wake.notify_one();
            }
        }
        self.wake();
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn flows(&self) -> &Arc<Flows> {
        &self.flows
    }

    pub(crate) fn messaging(&self) -> &Arc<Messaging> {
        &self.messaging
    }

    pub(crate) fn scheduler_notify(&self) -> &Notify {
        &self.wake
    }

    /// Where tracked links point.
    pub(crate) fn public_url(&self) -> Option<&str> {
        self.config
            .public_url
            .as_deref()
            .or(self.messaging.config().public_url.as_deref())
    }

    /// Starts a task for a sending broadcast unless one runs.
    pub(crate) fn ensure_task(self: &Arc<Self>, ws: WorkspaceId, id: BroadcastId) {
        let Ok(mut t) = self.tasks.lock() else {
            return;
        };
        if t.get(&id).is_some_and(|task| !task.handle.is_finished()) {
            return;
        }
        let wake = Arc::new(Notify::new());
        let handle = tokio::spawn(workers::run_broadcast(self.clone(), ws, id, wake.clone()));
        t.insert(id, Task { handle, wake });
    }

    /// Forgets tasks that ended.
    pub(crate) fn reap_tasks(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|_, task| !task.handle.is_finished());
        }
    }

    pub(crate) fn has_task(&self, id: BroadcastId) -> bool {
        self.tasks
            .lock()
            .map(|t| t.get(&id).is_some_and(|task| !task.handle.is_finished()))
            .unwrap_or(false)
    }

    // ---------------------------------------------------------------------------------
    // Documents

    /// What a document may name in a workspace (and the saved segment it names).
    pub async fn catalog(
        &self,
        ws: WorkspaceId,
        spec: &Value,
    ) -> Result<BroadcastCatalog, StoreError> {
        let channels = self
            .store
            .list_channels(ws)
            .await?
            .into_iter()
            .map(|c| (c.id, c.kind))
            .collect();
        let topics = self
            .store
            .list_topics(ws)
            .await?
            .into_iter()
            .map(|t| t.key)
            .collect();
        let mut published_flows = Vec::new();
        let mut draft_flows = Vec::new();
        for f in self.store.list_flows(ws, false).await? {
            if f.published_version.is_some() {
                published_flows.push(f.name);
            } else {
                draft_flows.push(f.name);
            }
        }
        let segments = self.store.segment_catalog(ws).await?;
        let mut saved_segments = HashMap::new();
        if let Some(id) = spec
            .get("segment")
            .and_then(|s| s.get("segment_id"))
            .and_then(Value::as_i64)
        {
            match self.store.get_segment(ws, SegmentId(id)).await {
                Ok(s) => {
                    saved_segments.insert(SegmentId(id), s.filter);
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(BroadcastCatalog {
            channels,
            topics,
            published_flows,
            draft_flows,
            segments,
            saved_segments,
        })
    }

    /// The problems of a document in a workspace (none: it can be scheduled).
    pub async fn validate(
        &self,
        ws: WorkspaceId,
        spec: &Value,
    ) -> Result<Vec<Problem>, StoreError> {
        let cat = self.catalog(ws, spec).await?;
        Ok(validate::validate(
            spec,
            &cat,
            self.flows.templates(),
            self.now(),
        ))
    }

    async fn checked(
        &self,
        ws: WorkspaceId,
        spec: &Value,
    ) -> Result<BroadcastSpec, BroadcastError> {
        let problems = self.validate(ws, spec).await?;
        if !problems.is_empty() {
            return Err(BroadcastError::Invalid(problems));
        }
        validate::read_spec(spec).map_err(BroadcastError::Invalid)
    }

    /// Creates a draft from a document without problems.
    pub async fn create(
        &self,
        ws: WorkspaceId,
        name: &str,
        spec: Value,
    ) -> Result<Broadcast, BroadcastError> {
        self.checked(ws, &spec).await?;
        Ok(self.store.create_broadcast(ws, name, spec).await?)
    }

    /// Reads a broadcast.
    pub async fn get(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast, StoreError> {
        self.store.get_broadcast(ws, id).await
    }

    /// Every broadcast of a workspace, newest first.
    pub async fn list(&self, ws: WorkspaceId) -> Result<Vec<Broadcast>, StoreError> {
        self.store.list_broadcasts(ws).await
    }

    /// Edits a draft (a scheduled broadcast goes back to draft); a new document must be
    /// without problems.
    pub async fn update(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        revision: Option<i64>,
        name: Option<String>,
        spec: Option<Value>,
    ) -> Result<Broadcast, BroadcastError> {
        // Checked first so another workspace's broadcast is NotFound whatever the body.
        self.store.get_broadcast(ws, id).await?;
        if let Some(s) = &spec {
            self.checked(ws, s).await?;
        }
        Ok(self
            .store
            .update_broadcast(ws, id, revision, name, spec)
            .await?)
    }

    /// Deletes a draft or a broadcast that is over.
    pub async fn delete(&self, ws: WorkspaceId, id: BroadcastId) -> Result<(), StoreError> {
        self.store.delete_broadcast(ws, id).await
    }

    /// Recipients of a broadcast, a page at a time.
    pub async fn recipients(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        q: RecipientQuery,
    ) -> Result<Vec<Recipient>, StoreError> {
        self.store.get_broadcast(ws, id).await?;
        self.store.list_recipients(ws, id, q).await
    }

    // ---------------------------------------------------------------------------------
    // Life cycle

    /// Schedules a draft: at `at` when given (the document's schedule becomes that
    /// time), otherwise by its schedule — `now` starts sending at once, a local time fires
    /// when it first occurs anywhere (UTC+14) and each time zone gets it at its own.
    pub async fn schedule(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        at: Option<Timestamp>,
    ) -> Result<Broadcast, BroadcastError> {
        let mut b = self.store.get_broadcast(ws, id).await?;
        if let Some(at) = at {
            if b.status != BroadcastStatus::Draft {
                return Err(invalid_transition(b.status, BroadcastStatus::Scheduled).into());
            }
            let mut spec = b.spec.clone();
            if let Some(o) = spec.as_object_mut() {
                o.insert("schedule".into(), json!({ "at": at }));
            }
            self.checked(ws, &spec).await?;
            b = self
                .store
                .update_broadcast(ws, id, Some(b.revision), None, Some(spec))
                .await?;
        }
        let spec = self.checked(ws, &b.spec).await?;
        let now = self.now();
        let b = match spec.schedule {
            Schedule::Now => {
                self.store
                    .transition_broadcast(
                        ws,
                        id,
                        &[BroadcastStatus::Draft],
                        BroadcastStatus::Sending,
                        Some(now),
                        now,
                    )
                    .await?
            }
            Schedule::At { at } => {
                self.store
                    .transition_broadcast(
                        ws,
                        id,
                        &[BroadcastStatus::Draft],
                        BroadcastStatus::Scheduled,
                        Some(at),
                        now,
                    )
                    .await?
            }
            Schedule::Local { local } => {
                let at = earliest_local(local).unwrap_or(now);
                self.store
                    .transition_broadcast(
                        ws,
                        id,
                        &[BroadcastStatus::Draft],
                        BroadcastStatus::Scheduled,
                        Some(at),
                        now,
                    )
                    .await?
            }
        };
        self.wake();
        self.publish(ws, id).await;
        Ok(b)
    }

    /// Sends a draft or scheduled broadcast now, whatever its schedule.
    pub async fn send_now(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Broadcast, BroadcastError> {
        let b = self.store.get_broadcast(ws, id).await?;
        if !matches!(
            b.status,
            BroadcastStatus::Draft | BroadcastStatus::Scheduled
        ) {
            return Err(invalid_transition(b.status, BroadcastStatus::Sending).into());
        }
        if b.spec.get("schedule").is_some_and(|s| s != "now") {
            let mut spec = b.spec.clone();
            if let Some(o) = spec.as_object_mut() {
                o.insert("schedule".into(), json!("now"));
            }
            self.checked(ws, &spec).await?;
            // A scheduled broadcast goes back to draft here; the transition below takes
            // it from there.
            self.store
                .update_broadcast(ws, id, Some(b.revision), None, Some(spec))
                .await?;
        } else {
            self.checked(ws, &b.spec).await?;
        }
        let now = self.now();
        let b = self
            .store
            .transition_broadcast(
                ws,
                id,
                &[BroadcastStatus::Draft, BroadcastStatus::Scheduled],
                BroadcastStatus::Sending,
                Some(now),
                now,
            )
            .await?;
        self.wake();
        self.publish(ws, id).await;
        Ok(b)
    }

    async fn transition(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
        from: &[BroadcastStatus],
        to: BroadcastStatus,
    ) -> Result<Broadcast, StoreError> {
        let b = self
            .store
            .transition_broadcast(ws, id, from, to, None, self.now())
            .await?;
        self.wake_task(id);
        self.publish(ws, id).await;
        Ok(b)
    }

    /// Pauses a sending broadcast: what is still queued goes back to planned at once;
    /// messages already being sent finish.
    pub async fn pause(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast, StoreError> {
        self.transition(ws, id, &[BroadcastStatus::Sending], BroadcastStatus::Paused)
            .await
    }

    /// Resumes a paused broadcast.
    pub async fn resume(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast, StoreError> {
        self.transition(ws, id, &[BroadcastStatus::Paused], BroadcastStatus::Sending)
            .await
    }

    /// Cancels a scheduled, sending or paused broadcast: unsent recipients are skipped
    /// as `cancelled`.
    pub async fn cancel(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Broadcast, StoreError> {
        self.transition(
            ws,
            id,
            &[
                BroadcastStatus::Scheduled,
                BroadcastStatus::Sending,
                BroadcastStatus::Paused,
            ],
            BroadcastStatus::Cancelled,
        )
        .await
    }

    /// Starts a recall in the background (see [`Broadcasts::recall`]); a broadcast still
    /// live is cancelled first so nothing more goes out.
    pub async fn start_recall(
        self: &Arc<Self>,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<Broadcast, StoreError> {
        let mut b = self.store.get_broadcast(ws, id).await?;
        if b.status.is_live() {
            b = self.cancel(ws, id).await?;
        } else if b.status == BroadcastStatus::Draft {
            return Err(StoreError::conflict(
                "not_sent",
                "the broadcast was never sent; there is nothing to recall",
                None,
            ));
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me.recall(ws, id).await {
                Ok(s) => {
                    tracing::info!(broadcast = %id, recalled = s.recalled, failed = s.failed, "recall done")
                }
                Err(e) => tracing::warn!(broadcast = %id, error = %e, "recall failed"),
            }
        });
        Ok(b)
    }

    /// Deletes the broadcast's messages sent within the recall window (48 hours) from
    /// the chats, where the channel can (Telegram `deleteMessage`), paced by the
    /// channels' rates; records each outcome.
    pub async fn recall(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<RecallSummary, StoreError> {
        let window = jiff::SignedDuration::try_from(self.config.recall_window).unwrap_or_default();
        // The provider's window is in real time, whatever the shared clock says.
        let real_now = Timestamp::now();
        let sent_after = real_now.checked_sub(window).unwrap_or(real_now);
        let mut summary = RecallSummary::default();
        let mut after: Option<RecipientId> = None;
        loop {
            let page = self
                .store
                .recall_targets(ws, id, sent_after, after, 200)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.recipient);
            let mut results = Vec::with_capacity(page.len());
            for t in &page {
                let rt = self.messaging.runtime(t.channel_id).await?;
                let pace = Duration::from_secs_f64(
                    1.0 / rt.adapter.capabilities().rate_per_account.max(1.0),
                );
                let mut outcome = Ok(());
                for mid in &t.provider_message_ids {
                    if let Err(e) = rt.adapter.delete(&t.external_id, mid).await {
                        outcome = Err(e.to_string());
                    }
                    tokio::time::sleep(pace).await;
                }
                match &outcome {
                    Ok(()) => summary.recalled += 1,
                    Err(_) => summary.failed += 1,
                }
                results.push(RecallResult {
                    recipient: t.recipient,
                    outcome,
                });
            }
            self.store
                .record_recalls(ws, id, results, self.now())
                .await?;
            self.publish(ws, id).await;
        }
        Ok(summary)
    }

    // ---------------------------------------------------------------------------------
    // Numbers

    /// The target channels' facts for the report.
    async fn channel_facts(
        &self,
        ws: WorkspaceId,
        spec: Option<&BroadcastSpec>,
    ) -> Result<report::ChannelFacts, StoreError> {
        let channels = self.store.list_channels(ws).await?;
        let mut facts = report::ChannelFacts::default();
        let targets: Vec<&Channel> = match spec.map(|s| s.channels) {
            Some(voronka_core::broadcast::ChannelChoice::One { channel }) => {
                channels.iter().filter(|c| c.id == channel).collect()
            }
            _ => channels.iter().collect(),
        };
        for c in targets {
            if let Some(caps) = capabilities(c.kind) {
                facts.delivery_receipts |= caps.delivery_receipts;
                facts.read_receipts |= caps.read_receipts;
                facts.rate += caps.rate_per_account * self.messaging.config().rate_headroom;
            }
        }
        Ok(facts)
    }

    /// The report: counters per variant and in total, skips by reason, rates, what the
    /// channels cannot report, and the time to go.
    pub async fn report(&self, ws: WorkspaceId, id: BroadcastId) -> Result<Report, StoreError> {
        let b = self.store.get_broadcast(ws, id).await?;
        let spec: Option<BroadcastSpec> = serde_json::from_value(b.spec.clone()).ok();
        let counters = self.store.broadcast_counters(ws, id).await?;
        let facts = self.channel_facts(ws, spec.as_ref()).await?;
        Ok(report::build(&b, spec.as_ref(), &counters, &facts))
    }

    /// The live progress of a broadcast: the receiver holds the latest numbers and
    /// changes at least every half second while sending; `over` marks the last.
    pub async fn progress(
        &self,
        ws: WorkspaceId,
        id: BroadcastId,
    ) -> Result<watch::Receiver<Progress>, StoreError> {
        let r = self.report(ws, id).await?;
        let p = Progress::of(&r, self.now());
        let mut hub = self
            .hub
            .lock()
            .map_err(|_| StoreError::Database("the progress hub is poisoned".into()))?;
        let (_, tx) = hub
            .entry(id)
            .or_insert_with(|| (ws, watch::channel(p.clone()).0));
        tx.send_replace(p);
        Ok(tx.subscribe())
    }

    /// Publishes fresh numbers to the broadcast's watchers, if it has any.
    pub(crate) async fn publish(&self, ws: WorkspaceId, id: BroadcastId) {
        let watched = self
            .hub
            .lock()
            .map(|h| h.get(&id).is_some_and(|(_, tx)| tx.receiver_count() > 0))
            .unwrap_or(false);
        if !watched {
            return;
        }
        match self.report(ws, id).await {
            Ok(r) => {
                let p = Progress::of(&r, self.now());
                if let Ok(h) = self.hub.lock() {
                    if let Some((_, tx)) = h.get(&id) {
                        tx.send_replace(p);
                    }
                }
            }
            Err(e) => tracing::warn!(broadcast = %id, error = %e, "cannot read progress"),
        }
    }

    /// Publishes the broadcasts watched without a task of their own (scheduled, paused,
    /// over) and forgets the ones nobody watches.
    pub(crate) async fn publish_idle(&self) {
        let idle: Vec<(BroadcastId, WorkspaceId)> = match self.hub.lock() {
            Ok(mut h) => {
                h.retain(|_, (_, tx)| tx.receiver_count() > 0);
                h.iter().map(|(id, (ws, _))| (*id, *ws)).collect()
            }
            Err(_) => Vec::new(),
        };
        for (id, ws) in idle {
            if !self.has_task(id) {
                self.publish(ws, id).await;
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Audience

    /// The audience of a document, resolved now.
    pub(crate) async fn audience(
        &self,
        ws: WorkspaceId,
        spec: &BroadcastSpec,
    ) -> Result<Option<Resolved>, BroadcastError> {
        let filter = match &spec.segment {
            None => return Ok(None),
            Some(voronka_core::broadcast::SegmentTarget::Inline { filter }) => filter.clone(),
            Some(voronka_core::broadcast::SegmentTarget::Saved { segment_id }) => {
                self.store.get_segment(ws, *segment_id).await?.filter
            }
        };
        let cat = self.store.segment_catalog(ws).await?;
        segment::compile(&filter, &cat, self.now())
            .map(Some)
            .map_err(BroadcastError::Invalid)
    }

    // ---------------------------------------------------------------------------------
    // Clicks

    /// The message and button a recipient's button index names.
    fn button_of<'a>(
        spec: &'a BroadcastSpec,
        rec: &Recipient,
        index: usize,
    ) -> Option<&'a BroadcastButton> {
        if index >= render::FOLLOW_UP_BASE {
            spec.follow_up
                .as_ref()?
                .message
                .buttons
                .get(index - render::FOLLOW_UP_BASE)
        } else {
            spec.variants
                .get(usize::from(rec.variant))?
                .message
                .buttons
                .get(index)
        }
    }

    /// Follows a tracked link: verifies the token, records the click, and answers the
    /// URL to redirect to.
    pub async fn click_link(&self, token: &str) -> Result<String, LinkError> {
        let key = self.messaging.secret_key();
        let (ws, rid, index) = render::verify_link_token(key, token).ok_or(LinkError::BadToken)?;
        let (bid, rec) = match self.store.get_recipient(ws, rid).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Err(LinkError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let b = match self.store.get_broadcast(ws, bid).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Err(LinkError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let spec: BroadcastSpec =
            serde_json::from_value(b.spec).map_err(|_| LinkError::NotFound)?;
        let Some(BroadcastButton::Url { url, .. }) = Self::button_of(&spec, &rec, index) else {
            return Err(LinkError::NotFound);
        };
        self.store
            .record_recipient_signal(ws, rid, RecipientSignal::Clicked, self.now())
            .await?;
        Ok(url.clone())
    }

    async fn press(
        &self,
        channel: &Channel,
        identity: &Identity,
        payload: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some((bid, rid, index)) = render::parse_payload(payload) else {
            return Ok(None);
        };
        let ws = channel.workspace_id;
        let (owner, rec) = match self.store.get_recipient(ws, rid).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Callback data comes from the client: it must name this person's own message.
        if owner != bid || rec.contact_id != identity.contact_id {
            return Ok(None);
        }
        self.store
            .record_recipient_signal(ws, rid, RecipientSignal::Clicked, self.now())
            .await?;
        let b = self.store.get_broadcast(ws, bid).await?;
        let Ok(spec) = serde_json::from_value::<BroadcastSpec>(b.spec) else {
            return Ok(None);
        };
        match Self::button_of(&spec, &rec, index) {
            Some(BroadcastButton::StartFlow { start_flow, .. }) => {
                match self.store.find_flow(ws, start_flow).await? {
                    Some(flow) => {
                        self.flows
                            .start_for(
                                ws,
                                identity.contact_id,
                                flow.id,
                                json!({ "broadcast_id": bid, "button": index }),
                            )
                            .await?
                    }
                    None => {
                        tracing::info!(broadcast = %bid, flow = %start_flow, "a broadcast button names a flow that is gone")
                    }
                }
                Ok(None)
            }
            Some(BroadcastButton::Payload { payload, .. }) => Ok(Some(payload.clone())),
            _ => Ok(None),
        }
    }
}

fn invalid_transition(current: BroadcastStatus, to: BroadcastStatus) -> StoreError {
    StoreError::conflict(
        "invalid_transition",
        format!(
            "the broadcast is {}; it cannot become {}",
            current.as_str(),
            to.as_str()
        ),
        Some("status"),
    )
}

#[async_trait::async_trait]
impl BroadcastHook for Broadcasts {
    async fn pressed(
        &self,
        channel: &Channel,
        identity: &Identity,
        payload: &str,
    ) -> Result<Option<String>, StoreError> {
        self.press(channel, identity, payload).await
    }

    async fn receipt(
        &self,
        channel: &Channel,
        identity: &Identity,
        provider_message_id: &str,
        read: bool,
    ) -> Result<(), StoreError> {
        let ws = channel.workspace_id;
        let Some(rid) = self
            .store
            .recipient_by_message(ws, identity.id, provider_message_id)
            .await?
        else {
            return Ok(());
        };
        let signal = if read {
            RecipientSignal::Read
        } else {
            RecipientSignal::Delivered
        };
        self.store
            .record_recipient_signal(ws, rid, signal, self.now())
            .await?;
        Ok(())
    }
}

/// The ids of the channels a broadcast may use.
pub(crate) fn target_channels(spec: &BroadcastSpec, all: &[Channel]) -> Vec<ChannelId> {
    match spec.channels {
        voronka_core::broadcast::ChannelChoice::One { channel } => all
            .iter()
            .filter(|c| c.id == channel)
            .map(|c| c.id)
            .collect(),
        _ => all.iter().map(|c| c.id).collect(),
    }
}
