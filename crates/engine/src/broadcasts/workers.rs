//! The background work of the broadcast runtime.
//!
//! - `scheduler`: once a second (or when woken, or when the next scheduled broadcast is
//!   due) it moves due `scheduled` broadcasts to `sending` and makes sure every `sending`
//!   broadcast has a task on this node — also right after a restart.
//! - `run_broadcast`: one task per sending broadcast. It plans recipients in batches,
//!   feeds due ones into the outbox at the channels' pace, picks the winner, sends the
//!   follow-ups, and finishes the broadcast when nothing is left. It ends as soon as the
//!   broadcast is not `sending` any more (paused, cancelled, finished).

use super::render::{self, LinkContext, FOLLOW_UP_BASE};
use super::{target_channels, BroadcastError, Broadcasts};
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use voronka_core::broadcast::{
    BroadcastMessage, BroadcastSpec, BroadcastStatus, FrequencyCap, Schedule, SkipReason,
    WinnerMetric,
};
use voronka_core::flow::schedule::{self, QuietHours};
use voronka_core::{BroadcastId, ChannelId, WorkspaceId};
use voronka_store::{DueRecipient, FeedDecision, FollowUpRequest, PlanRequest, StoreError};

/// Longest sleep of the scheduler.
const SCHEDULER_IDLE: Duration = Duration::from_secs(1);
/// Most recipients fed per transaction.
const FEED_PAGE: u32 = 1_000;
/// Follow-ups decided per transaction.
const FOLLOW_UP_PAGE: u32 = 500;
/// How long planning goes on before the task feeds the outbox once.
const PLAN_SLICE: Duration = Duration::from_millis(400);
/// How often workspace settings are re-read by a task.
const SETTINGS_TTL: Duration = Duration::from_secs(10);

/// The scheduler loop.
pub(crate) async fn scheduler(b: Arc<Broadcasts>) {
    loop {
        if b.shutdown_token().is_cancelled() {
            return;
        }
        let notified = b.scheduler_notify().notified();
        let now = b.now();
        match b.store().active_broadcasts(now).await {
            Ok(list) => {
                for x in list {
                    let ws = x.workspace_id;
                    match x.status {
                        BroadcastStatus::Scheduled if x.send_at.is_none_or(|t| t <= now) => {
                            match b
                                .store()
                                .transition_broadcast(
                                    ws,
                                    x.id,
                                    &[BroadcastStatus::Scheduled],
                                    BroadcastStatus::Sending,
                                    None,
                                    now,
                                )
                                .await
                            {
                                Ok(_) => b.ensure_task(ws, x.id),
                                // Another node (or a cancel) got there first.
                                Err(StoreError::Conflict { .. }) => {}
                                Err(e) => {
                                    tracing::error!(broadcast = %x.id, error = %e, "cannot start a scheduled broadcast")
                                }
                            }
                        }
                        BroadcastStatus::Sending => b.ensure_task(ws, x.id),
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read active broadcasts"),
        }
        b.reap_tasks();
        b.publish_idle().await;
        let sleep = match b.store().next_scheduled().await {
            Ok(Some(at)) => Duration::try_from(at.duration_since(b.now()))
                .unwrap_or(Duration::ZERO)
                .min(SCHEDULER_IDLE),
            Ok(None) => SCHEDULER_IDLE,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the next scheduled broadcast");
                SCHEDULER_IDLE
            }
        }
        .max(Duration::from_millis(20));
        tokio::select! {
            _ = notified => {},
            _ = tokio::time::sleep(sleep) => {},
            _ = b.shutdown_token().cancelled() => return,
        }
    }
}

/// What a broadcast's task keeps between rounds.
struct State {
    ws: WorkspaceId,
    id: BroadcastId,
    spec: BroadcastSpec,
    /// Channel id → (kind's capabilities, rate per second aimed at).
    channels: HashMap<ChannelId, (&'static voronka_channels::Capabilities, f64)>,
    targets: Vec<ChannelId>,
    cap: Option<FrequencyCap>,
    quiet: Option<QuietHours>,
    tz: jiff::tz::TimeZone,
    settings_at: Instant,
    with_fields: bool,
    local_times_set: bool,
    last_publish: Instant,
    last_follow_up: Option<Instant>,
}

fn uses_fields(m: &BroadcastMessage) -> bool {
    let uses = |s: &str| s.contains("fields");
    m.text.as_deref().is_some_and(uses) || m.buttons.iter().any(|b| uses(b.label()))
}

impl State {
    async fn load(
        b: &Broadcasts,
        ws: WorkspaceId,
        id: BroadcastId,
        spec: BroadcastSpec,
    ) -> Result<State, StoreError> {
        let all = b.store().list_channels(ws).await?;
        let headroom = b.messaging().config().rate_headroom.clamp(0.1, 1.0);
        let channels = all
            .iter()
            .filter_map(|c| {
                super::capabilities(c.kind)
                    .map(|caps| (c.id, (caps, caps.rate_per_account * headroom)))
            })
            .collect();
        let targets = target_channels(&spec, &all);
        let with_fields = spec.variants.iter().any(|v| uses_fields(&v.message))
            || spec
                .follow_up
                .as_ref()
                .is_some_and(|f| uses_fields(&f.message));
        let mut st = State {
            ws,
            id,
            spec,
            channels,
            targets,
            cap: None,
            quiet: None,
            tz: jiff::tz::TimeZone::UTC,
            settings_at: Instant::now(),
            with_fields,
            local_times_set: false,
            last_publish: Instant::now(),
            last_follow_up: None,
        };
        st.refresh_settings(b).await?;
        Ok(st)
    }

    async fn refresh_settings(&mut self, b: &Broadcasts) -> Result<(), StoreError> {
        let settings = b.store().workspace_settings(self.ws).await?;
        let info = b.flows().workspace(self.ws).await?;
        self.cap = settings.frequency_cap;
        self.quiet = info.quiet;
        self.tz = info.tz.clone();
        self.settings_at = Instant::now();
        Ok(())
    }

    fn cap_since(&self, now: Timestamp) -> Timestamp {
        match &self.cap {
            Some(c) => now.checked_sub(c.window()).unwrap_or(now),
            None => now,
        }
    }
}

/// What one feeding round did.
enum Fed {
    /// Fed this many; more may be due right away.
    Some { more: bool },
    /// Nothing due now.
    Idle,
    /// The outbox already holds enough for the channels.
    Full,
}

/// One sending broadcast's task.
pub(crate) async fn run_broadcast(
    b: Arc<Broadcasts>,
    ws: WorkspaceId,
    id: BroadcastId,
    wake: Arc<Notify>,
) {
    let mut state: Option<State> = None;
    loop {
        if b.shutdown_token().is_cancelled() {
            return;
        }
        let notified = wake.notified();
        match round(&b, ws, id, &mut state).await {
            Ok(Round::Stop) => {
                b.publish(ws, id).await;
                return;
            }
            Ok(Round::Busy) => {
                publish_due(&b, &mut state).await;
                tokio::task::yield_now().await;
                continue;
            }
            Ok(Round::Idle) => publish_due(&b, &mut state).await,
            Err(e) => {
                tracing::error!(broadcast = %id, error = %e, "a broadcast round failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = b.shutdown_token().cancelled() => return,
                }
                continue;
            }
        }
        tokio::select! {
            _ = notified => {},
            _ = tokio::time::sleep(b.config().tick) => {},
            _ = b.shutdown_token().cancelled() => return,
        }
    }
}

async fn publish_due(b: &Broadcasts, state: &mut Option<State>) {
    if let Some(st) = state {
        if st.last_publish.elapsed() >= b.config().progress_interval {
            st.last_publish = Instant::now();
            b.publish(st.ws, st.id).await;
        }
    }
}

enum Round {
    /// Not sending any more: the task ends.
    Stop,
    /// More to do right away.
    Busy,
    /// Wait for the next tick.
    Idle,
}

async fn round(
    b: &Broadcasts,
    ws: WorkspaceId,
    id: BroadcastId,
    state: &mut Option<State>,
) -> Result<Round, StoreError> {
    let bc = b.store().get_broadcast(ws, id).await?;
    if bc.status != BroadcastStatus::Sending {
        return Ok(Round::Stop);
    }
    if state.is_none() {
        let spec: BroadcastSpec = match serde_json::from_value(bc.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Validated before it was scheduled; a document that stopped reading (an
                // old format) must not send garbage, so it is paused for a person.
                tracing::error!(broadcast = %id, error = %e, "a sending broadcast's document does not read; pausing it");
                b.pause(ws, id).await?;
                return Ok(Round::Stop);
            }
        };
        *state = Some(State::load(b, ws, id, spec).await?);
    }
    let Some(st) = state.as_mut() else {
        return Ok(Round::Stop);
    };
    if st.settings_at.elapsed() > SETTINGS_TTL {
        st.refresh_settings(b).await?;
    }
    let now = b.now();
    let local = matches!(st.spec.schedule, Schedule::Local { .. });
    let mut busy = false;
    // Planning.
    if bc.planned_at.is_none() {
        let segment = match b.audience(ws, &st.spec).await {
            Ok(s) => s,
            Err(BroadcastError::Invalid(problems)) => {
                tracing::error!(broadcast = %id, ?problems, "the audience no longer resolves; pausing the broadcast");
                b.pause(ws, id).await?;
                return Ok(Round::Stop);
            }
            Err(BroadcastError::Store(e)) => return Err(e),
        };
        let req = PlanRequest {
            segment,
            channels: st.targets.clone(),
            preferred_only: st.spec.channels == voronka_core::broadcast::ChannelChoice::Preferred,
            topic: st.spec.topic.clone(),
            percents: st.spec.variants.iter().map(|v| v.percent).collect(),
            test_percent: st.spec.winner.map(|w| w.test_percent),
            run_at: bc.send_at.or(bc.started_at).unwrap_or(now),
            batch: b.config().plan_batch,
        };
        // Batches back to back for a while, then one feeding round: planning a million
        // recipients is most of the work at the start, and SQLite's one writer does
        // it faster in a run than interleaved with feeding, while the first messages
        // still go out within a fraction of a second.
        let started = Instant::now();
        let p = loop {
            let p = b.store().plan_broadcast_batch(ws, id, &req).await?;
            if p.done || started.elapsed() >= PLAN_SLICE {
                break p;
            }
        };
        if p.done || st.last_publish.elapsed() >= b.config().progress_interval {
            b.publish(ws, id).await;
            st.last_publish = Instant::now();
        }
        if !p.done {
            busy = true;
        }
        if local && !p.done {
            // Local times are set per time zone once everyone is planned; until then
            // nobody is due.
            return Ok(Round::Busy);
        }
    }
    if local && !st.local_times_set && (bc.planned_at.is_some() || !busy) {
        set_local_times(b, st).await?;
        st.local_times_set = true;
    }
    // Feeding.
    match feed(b, st, now).await? {
        Fed::Some { more } => busy |= more,
        Fed::Idle | Fed::Full => {}
    }
    // Winner.
    if let Some(w) = st.spec.winner {
        if bc.winner_variant.is_none() && bc.planned_at.is_some() {
            let due = bc.started_at.and_then(|s| {
                s.checked_add(SignedDuration::from_hours(i64::from(w.after_hours)))
                    .ok()
            });
            if due.is_some_and(|d| d <= now) {
                pick_winner(b, st, w.by, now).await?;
                busy = true;
            }
        }
    }
    // Follow-ups.
    if st.spec.follow_up.is_some()
        && st
            .last_follow_up
            .is_none_or(|t| t.elapsed() >= b.config().follow_up_interval)
    {
        st.last_follow_up = Some(Instant::now());
        if follow_ups(b, st, now).await? {
            busy = true;
        }
    }
    if busy {
        return Ok(Round::Busy);
    }
    // Finishing.
    let bc = b.store().get_broadcast(ws, id).await?;
    if bc.planned_at.is_some()
        && b.store().broadcast_drained(ws, id, false).await?
        && !follow_ups_pending(b, st).await?
    {
        match b
            .store()
            .transition_broadcast(
                ws,
                id,
                &[BroadcastStatus::Sending],
                BroadcastStatus::Finished,
                None,
                b.now(),
            )
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => return Ok(Round::Stop),
            Err(e) => return Err(e),
        }
    }
    Ok(Round::Idle)
}

async fn set_local_times(b: &Broadcasts, st: &State) -> Result<(), StoreError> {
    let Schedule::Local { local } = st.spec.schedule else {
        return Ok(());
    };
    let zones = b.store().planned_time_zones(st.ws, st.id).await?;
    let now = b.now();
    let times = zones
        .into_iter()
        .map(|z| {
            let at = super::local_in(local, z.as_deref(), &st.tz).unwrap_or(now);
            (z, at)
        })
        .collect();
    b.store().set_local_times(st.ws, st.id, times).await?;
    Ok(())
}

/// How many more rows each channel may take: the outbox holds about
/// `buffer_seconds` of its rate of this broadcast's rows, queued or being sent.
async fn budgets(b: &Broadcasts, st: &State) -> Result<HashMap<ChannelId, i64>, StoreError> {
    // Rows being sent count too: the delivery worker claims ahead, and what it holds
    // still goes out after a pause.
    let in_flight: HashMap<ChannelId, u64> = b
        .store()
        .broadcast_in_flight(st.ws, st.id)
        .await?
        .into_iter()
        .collect();
    let mut out = HashMap::new();
    for ch in &st.targets {
        let Some((_, rate)) = st.channels.get(ch) else {
            // No adapter for it: its recipients are skipped, which needs no room.
            out.insert(*ch, i64::from(FEED_PAGE));
            continue;
        };
        let room = (rate * b.config().buffer_seconds).ceil().max(1.0) as i64;
        let busy = in_flight.get(ch).copied().unwrap_or(0);
        out.insert(*ch, room - i64::try_from(busy).unwrap_or(i64::MAX));
    }
    Ok(out)
}

/// Renders one recipient's message, or why it cannot be sent.
fn decide_message(
    b: &Broadcasts,
    st: &State,
    r: &DueRecipient,
    channel: ChannelId,
    message: &BroadcastMessage,
    base_index: usize,
) -> Result<voronka_core::message::OutboundMessage, SkipReason> {
    let Some((caps, _)) = st.channels.get(&channel) else {
        return Err(SkipReason::ProviderRule);
    };
    let ctx = render::context(r.contact_id, &r.profile, &r.fields);
    let links = LinkContext {
        key: b.messaging().secret_key(),
        public_url: b.public_url(),
        workspace: st.ws,
        broadcast: st.id,
        recipient: r.id,
        base_index,
    };
    let m = render::render(b.flows().templates(), message, &ctx, &links).map_err(|e| {
        tracing::debug!(broadcast = %st.id, recipient = %r.id, error = %e, "cannot render a broadcast message");
        SkipReason::RenderFailed
    })?;
    render::fits(&m, caps).map_err(|why| {
        tracing::debug!(broadcast = %st.id, recipient = %r.id, why, "a broadcast message does not fit its channel");
        SkipReason::ProviderRule
    })?;
    Ok(m)
}

/// Frequency cap and quiet hours: `Some(decision)` when the recipient must not get a
/// message now.
fn rules(st: &State, r: &DueRecipient, now: Timestamp) -> Option<Result<SkipReason, Timestamp>> {
    if let Some(cap) = &st.cap {
        if !cap.allows(r.marketing_recent) {
            return Some(Ok(SkipReason::FrequencyCap));
        }
    }
    if let Some(q) = &st.quiet {
        let tz = schedule::time_zone(r.profile.time_zone.as_deref(), &st.tz);
        if q.contains(now, &tz) {
            return Some(Err(q.next_allowed(now, &tz)));
        }
    }
    None
}

async fn feed(b: &Broadcasts, st: &mut State, now: Timestamp) -> Result<Fed, StoreError> {
    let budget = budgets(b, st).await?;
    if budget.values().all(|v| *v <= 0) {
        return Ok(Fed::Full);
    }
    // Each channel is filled from its own rows: with one page over all channels in id
    // order, the first channel's recipients (contacts imported bot by bot) would hold
    // every other channel idle until they were all sent.
    let mut due = Vec::new();
    let mut full_page = false;
    let mut channels: Vec<(ChannelId, i64)> = budget.into_iter().filter(|(_, v)| *v > 0).collect();
    channels.sort_unstable_by_key(|(ch, _)| *ch);
    for (ch, room) in channels {
        let limit = u32::try_from(room).unwrap_or(FEED_PAGE).min(FEED_PAGE);
        let page = b
            .store()
            .due_recipients(
                st.ws,
                st.id,
                Some(ch),
                now,
                st.cap_since(now),
                st.with_fields,
                limit,
            )
            .await?;
        full_page |= page.len() as u32 == limit;
        due.extend(page);
        if due.len() >= FEED_PAGE as usize {
            full_page = true;
            break;
        }
    }
    if due.is_empty() {
        return Ok(Fed::Idle);
    }
    let mut decisions = Vec::with_capacity(due.len());
    for r in &due {
        let decision = match rules(st, r, now) {
            Some(Ok(reason)) => FeedDecision::Skip {
                recipient: r.id,
                reason,
            },
            Some(Err(until)) => FeedDecision::Defer {
                recipient: r.id,
                until,
            },
            None => {
                let message = st
                    .spec
                    .variants
                    .get(usize::from(r.variant))
                    .map(|v| &v.message);
                match message {
                    None => FeedDecision::Skip {
                        recipient: r.id,
                        reason: SkipReason::RenderFailed,
                    },
                    Some(m) => match decide_message(b, st, r, r.channel_id, m, 0) {
                        Ok(message) => FeedDecision::Queue {
                            recipient: r.id,
                            message,
                        },
                        Err(reason) => FeedDecision::Skip {
                            recipient: r.id,
                            reason,
                        },
                    },
                }
            }
        };
        decisions.push(decision);
    }
    if decisions.is_empty() {
        return Ok(Fed::Full);
    }
    // Outbox rows are due in real time: the delivery workers know no other clock.
    let outcome = b
        .store()
        .feed_recipients(
            st.ws,
            st.id,
            st.spec.topic.as_deref(),
            decisions,
            Timestamp::now(),
        )
        .await?;
    if outcome.queued > 0 {
        b.messaging().wake_outbox();
    }
    Ok(Fed::Some { more: full_page })
}

async fn pick_winner(
    b: &Broadcasts,
    st: &State,
    by: WinnerMetric,
    now: Timestamp,
) -> Result<(), StoreError> {
    let counters = b.store().broadcast_counters(st.ws, st.id).await?;
    let mut best: Option<(u8, f64)> = None;
    for (i, _) in st.spec.variants.iter().enumerate() {
        let Ok(v) = u8::try_from(i) else { continue };
        let get = |key: &str| {
            counters
                .iter()
                .filter(|c| c.variant == v && c.key == key)
                .map(|c| c.n)
                .sum::<u64>()
        };
        let sent = get("sent");
        let hits = match by {
            WinnerMetric::Click => get("clicked"),
            WinnerMetric::Read => get("read"),
        };
        let rate = if sent == 0 {
            0.0
        } else {
            hits as f64 / sent as f64
        };
        // Ties go to the earlier variant: the marketer's first choice.
        if best.is_none_or(|(_, r)| rate > r) {
            best = Some((v, rate));
        }
    }
    let (winner, rate) = best.unwrap_or((0, 0.0));
    let released = b.store().release_held(st.ws, st.id, winner, now).await?;
    tracing::info!(broadcast = %st.id, winner, rate, released, "picked the winning variant");
    b.publish(st.ws, st.id).await;
    Ok(())
}

fn follow_up_request(st: &State, sent_before: Timestamp) -> Option<FollowUpRequest> {
    let f = st.spec.follow_up.as_ref()?;
    Some(FollowUpRequest {
        if_not: f.if_not,
        sent_before,
        channel: f.channel,
        topic: st.spec.topic.clone(),
        limit: FOLLOW_UP_PAGE,
    })
}

/// Sends the follow-ups that are due; whether a full page was handled (more may wait).
async fn follow_ups(b: &Broadcasts, st: &State, now: Timestamp) -> Result<bool, StoreError> {
    let Some(f) = st.spec.follow_up.as_ref() else {
        return Ok(false);
    };
    let sent_before = now
        .checked_sub(SignedDuration::from_hours(i64::from(f.after_hours)))
        .unwrap_or(now);
    let Some(req) = follow_up_request(st, sent_before) else {
        return Ok(false);
    };
    let due = b
        .store()
        .follow_up_due(st.ws, st.id, &req, st.cap_since(now))
        .await?;
    if due.is_empty() {
        return Ok(false);
    }
    let mut decisions = Vec::with_capacity(due.len());
    for d in &due {
        let r = &d.recipient;
        let Some((_, channel)) = d.target else {
            decisions.push((
                FeedDecision::Skip {
                    recipient: r.id,
                    reason: SkipReason::NoIdentity,
                },
                None,
            ));
            continue;
        };
        let decision = match rules(st, r, now) {
            Some(Ok(reason)) => FeedDecision::Skip {
                recipient: r.id,
                reason,
            },
            // Quiet hours: left undecided, so it is due again in a later round.
            Some(Err(_)) => continue,
            None => match decide_message(b, st, r, channel, &f.message, FOLLOW_UP_BASE) {
                Ok(message) => FeedDecision::Queue {
                    recipient: r.id,
                    message,
                },
                Err(reason) => FeedDecision::Skip {
                    recipient: r.id,
                    reason,
                },
            },
        };
        decisions.push((decision, d.target));
    }
    if decisions.is_empty() {
        return Ok(false);
    }
    let outcome = b
        .store()
        .feed_follow_ups(
            st.ws,
            st.id,
            st.spec.topic.as_deref(),
            decisions,
            Timestamp::now(),
        )
        .await?;
    if outcome.queued > 0 {
        b.messaging().wake_outbox();
    }
    Ok(due.len() as u32 == FOLLOW_UP_PAGE)
}

/// Whether some sent recipient may still get a follow-up (its window has not passed,
/// or it waits for quiet hours to end).
async fn follow_ups_pending(b: &Broadcasts, st: &State) -> Result<bool, StoreError> {
    if st.spec.follow_up.is_none() {
        return Ok(false);
    }
    let Some(mut req) = follow_up_request(st, Timestamp::MAX) else {
        return Ok(false);
    };
    req.limit = 1;
    let now = b.now();
    Ok(!b
        .store()
        .follow_up_due(st.ws, st.id, &req, st.cap_since(now))
        .await?
        .is_empty())
}
