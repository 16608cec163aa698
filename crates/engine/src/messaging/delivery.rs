//! Outbox delivery: claim due messages per channel, send them within the provider's
//! limits, record the outcomes.
//!
//! A supervisor watches which channels have due messages and runs one worker per
//! channel: a provider's limit belongs to one account, so one sender per account is what
//! lets us aim just under the limit instead of discovering it through 429s. Inside a
//! worker each recipient chat is a *lane* that sends its messages strictly in order
//! (a split text's parts, a STOP confirmation after the message before it); lanes of
//! different chats run concurrently and share the account's limiter.
//!
//! Crash safety: a row is claimed (committed as `sending` with a lease) before the
//! provider is called, and its outcome is recorded after. A crash in between leaves the
//! row `sending`; when its lease expires it is claimed again and re-sent. So a crash
//! duplicates at most what was in flight at that instant and loses nothing.

use super::{Messaging, Runtime};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use rand::Rng;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use voronka_channels::{RenderContext, SendError};
use voronka_core::ChannelId;
use voronka_store::{OutboxItem, OutboxResult, SendOutcome};

/// Send attempts (transient failures) before a message is given up as failed.
const MAX_ATTEMPTS: u32 = 8;
/// Times one part is re-tried in place after a 429 before going back to the queue.
const RATE_LIMIT_RETRIES: u32 = 3;
/// Lanes (chats) sending concurrently per channel.
const MAX_LANES: usize = 256;
/// Outcomes recorded per store transaction.
const COMPLETE_BATCH: usize = 512;

/// Runs the supervisor until the runtime stops.
pub(crate) async fn run(m: Arc<Messaging>) {
    let (done_tx, done_rx) = mpsc::unbounded_channel::<OutboxResult>();
    let completer = tokio::spawn(complete(m.clone(), done_rx));
    let mut workers: HashMap<ChannelId, tokio::task::JoinHandle<()>> = HashMap::new();
    let wake = m.outbox_wake.clone();
    loop {
        let notified = wake.notified();
        workers.retain(|_, h| !h.is_finished());
        let mut next_due: Option<Timestamp> = None;
        match m.store().due_channels().await {
            Ok(due) => {
                let now = Timestamp::now();
                for (channel, at) in due {
                    if at > now {
                        next_due = Some(next_due.map_or(at, |n| n.min(at)));
                        continue;
                    }
                    if workers.contains_key(&channel) {
                        continue;
                    }
                    match m.runtime(channel).await {
                        Ok(rt)
                            if rt.channel.status
                                != voronka_core::channel::ChannelStatus::Disabled =>
                        {
                            let h = tokio::spawn(work(m.clone(), rt, done_tx.clone()));
                            workers.insert(channel, h);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(channel = %channel, error = %e, "cannot start delivery for a channel")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read due outbox channels"),
        }
        let wait = next_due
            .and_then(|t| {
                let d = t.duration_since(Timestamp::now());
                Duration::try_from(d).ok()
            })
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::select! {
            _ = notified => {},
            _ = tokio::time::sleep(wait) => {},
            _ = m.shutdown_token().cancelled() => {
                for (_, h) in workers.drain() {
                    h.abort();
                }
                completer.abort();
                return;
            }
        }
    }
}

/// Records outcomes in batches: one transaction for everything that finished meanwhile.
async fn complete(m: Arc<Messaging>, mut rx: mpsc::UnboundedReceiver<OutboxResult>) {
    let mut batch = Vec::with_capacity(COMPLETE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < COMPLETE_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let results = std::mem::take(&mut batch);
        let retry_soon = results
            .iter()
            .any(|r| matches!(r.outcome, SendOutcome::Retry { .. }));
        // A lost outcome only means a resend after the lease: log and go on.
        if let Err(e) = m.store().complete_outbox(results).await {
            tracing::error!(error = %e, "cannot record send outcomes");
        }
        if retry_soon {
            m.wake_outbox();
        }
    }
}

fn quota(per_second: f64, burst: u32) -> Quota {
    let per_second = per_second.max(0.01);
    let period = Duration::from_secs_f64(1.0 / per_second);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// A channel's rate limiters. They outlive its workers: a worker that starts right
/// after another finished must know what its predecessor just sent.
pub(crate) struct Limits {
    account: DefaultDirectRateLimiter,
    chats: DefaultKeyedRateLimiter<String>,
    /// Set by a 429: nobody on this account sends before then.
    paused_until: Mutex<Option<Instant>>,
}

impl Limits {
    fn new(caps: &voronka_channels::Capabilities, headroom: f64) -> Self {
        // The account limiter allows a burst of 3, as Telegram tolerates short bursts:
        // without one, every late timer wake-up is rate lost for good (about 3% at
        // 30/s); with a larger one a restart could open with a spike.
        Limits {
            account: RateLimiter::direct(quota(caps.rate_per_account * headroom, 3)),
            chats: RateLimiter::keyed(quota(caps.rate_per_chat * headroom, caps.chat_burst)),
            paused_until: Mutex::new(None),
        }
    }
}

/// What the lanes of one channel share.
struct Channel {
    m: Arc<Messaging>,
    rt: Arc<Runtime>,
    limits: Arc<Limits>,
    done: mpsc::UnboundedSender<OutboxResult>,
    /// Claimed rows not yet sent or given up.
    pending: AtomicUsize,
}

impl Channel {
    async fn wait_pause(&self) {
        loop {
            let until = self.limits.paused_until.lock().ok().and_then(|p| *p);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    fn pause(&self, d: Duration) {
        if let Ok(mut p) = self.limits.paused_until.lock() {
            let until = Instant::now() + d;
            if p.is_none_or(|cur| cur < until) {
                *p = Some(until);
            }
        }
    }
}

/// One channel's worker: claims due rows and feeds them to per-chat lanes until the
/// channel has nothing due.
async fn work(m: Arc<Messaging>, rt: Arc<Runtime>, done: mpsc::UnboundedSender<OutboxResult>) {
    let caps = rt.adapter.capabilities().clone();
    let headroom = m.config().rate_headroom.clamp(0.1, 1.0);
    let limits = m.limits_for(rt.channel.id, || Limits::new(&caps, headroom));
    // Keyed limiters keep a cell per chat ever seen; drop the ones that are full again.
    limits.chats.retain_recent();
    let ch = Arc::new(Channel {
        limits,
        done,
        pending: AtomicUsize::new(0),
        m: m.clone(),
        rt: rt.clone(),
    });
    let lanes_allowed = Arc::new(Semaphore::new(MAX_LANES));
    let mut lanes: HashMap<String, mpsc::UnboundedSender<Claimed>> = HashMap::new();
    let lease = m.config().outbox_lease;
    // Half a second of sending per claim (less with a short lease: everything claimed
    // must be sent well within it), claimed again when the lanes hold no more than that:
    // at most a second of sending is ever claimed, which keeps lanes busy, re-sends
    // little after a crash, keeps memory flat with hundreds of channels, and bounds what
    // a broadcast's pause cannot pull back to a second.
    let seconds = 0.5_f64.min(lease.as_secs_f64() / 4.0);
    let batch = ((caps.rate_per_account * seconds) as u32).clamp(4, 512);
    loop {
        if m.shutdown_token().is_cancelled() {
            return;
        }
        lanes.retain(|_, tx| !tx.is_closed());
        // Claim again only when the lanes are about to run dry, so rows do not sit
        // leased in memory for long.
        if ch.pending.load(Ordering::Relaxed) as u32 > batch {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let items = match m.store().claim_outbox(rt.channel.id, batch, lease).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(channel = %rt.channel.id, error = %e, "cannot claim outbox rows");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        ch.pending.fetch_add(items.len(), Ordering::Relaxed);
        let claimed_at = Instant::now();
        if items.is_empty() {
            if ch.pending.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        for item in items {
            let chat = item.external_id.clone();
            let item = Claimed {
                item,
                at: claimed_at,
            };
            if let Some(tx) = lanes.get(&chat) {
                match tx.send(item) {
                    Ok(()) => continue,
                    Err(mpsc::error::SendError(item)) => {
                        lanes.remove(&chat);
                        spawn_lane(&ch, &lanes_allowed, &mut lanes, chat, item).await;
                    }
                }
            } else {
                spawn_lane(&ch, &lanes_allowed, &mut lanes, chat, item).await;
            }
        }
    }
}

/// A row as claimed, with when: a claim older than its lease may already belong to
/// another worker.
struct Claimed {
    item: OutboxItem,
    at: Instant,
}

async fn spawn_lane(
    ch: &Arc<Channel>,
    allowed: &Arc<Semaphore>,
    lanes: &mut HashMap<String, mpsc::UnboundedSender<Claimed>>,
    chat: String,
    first: Claimed,
) {
    let Ok(permit) = allowed.clone().acquire_owned().await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Claimed>();
    let _ = tx.send(first);
    lanes.insert(chat.clone(), tx);
    let ch = ch.clone();
    tokio::spawn(async move {
        let _permit = permit;
        // The lane ends as soon as its queue is empty; the worker notices the closed
        // sender and starts a new lane for the chat's next message.
        loop {
            match rx.try_recv() {
                Ok(claimed) => lane_send(&ch, &chat, claimed).await,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Closing first, then draining, so nothing the worker managed to
                    // hand over in between is dropped with the receiver.
                    rx.close();
                    while let Ok(claimed) = rx.try_recv() {
                        lane_send(&ch, &chat, claimed).await;
                    }
                    return;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    });
}

/// Sends one claimed message and reports its outcome, unless the claim went stale while
/// it waited (a chat paced at 1/s with many messages, a long 429 pause): then it is
/// neither sent nor reported, and the row is claimed afresh once its lease expires —
/// sending on a stale claim could duplicate what another worker sends.
async fn lane_send(ch: &Channel, chat: &str, claimed: Claimed) {
    let lease = ch.m.config().outbox_lease;
    if claimed.at.elapsed() > lease * 3 / 4 {
        tracing::debug!(outbox = %claimed.item.id, "claim went stale before sending; leaving it to the next claim");
    } else {
        let result = send_item(ch, chat, claimed.item).await;
        let _ = ch.done.send(result);
    }
    ch.pending.fetch_sub(1, Ordering::Relaxed);
}

/// Sends every remaining part of one message; returns its outcome.
async fn send_item(ch: &Channel, chat: &str, item: OutboxItem) -> OutboxResult {
    let parts = ch.rt.adapter.render(
        &item.message,
        &RenderContext {
            outbox_id: item.id.0,
        },
    );
    let mut sent = item.parts_sent as usize;
    let mut ids = item.provider_message_ids.clone();
    let result = |sent: usize, ids: Vec<String>, outcome| OutboxResult {
        id: item.id,
        parts_sent: sent as u32,
        provider_message_ids: ids,
        outcome,
    };
    while sent < parts.len() {
        let part = &parts[sent];
        let mut rate_limited = 0;
        let outcome = loop {
            ch.wait_pause().await;
            ch.limits.chats.until_key_ready(&chat.to_string()).await;
            ch.limits.account.until_ready().await;
            ch.wait_pause().await;
            match ch.rt.adapter.send(chat, part).await {
                Ok(s) => break Ok(s),
                Err(SendError::RateLimited { retry_after }) => {
                    ch.pause(retry_after);
                    rate_limited += 1;
                    tracing::warn!(channel = %ch.rt.channel.id, retry_after = ?retry_after, "provider rate limit hit; pausing the channel");
                    if rate_limited > RATE_LIMIT_RETRIES {
                        break Err(SendError::RateLimited { retry_after });
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(s) => {
                ids.push(s.provider_message_id);
                sent += 1;
            }
            Err(e) => return result(sent, ids, failure(ch, &item, e).await),
        }
    }
    result(sent, ids, SendOutcome::Sent)
}

async fn failure(ch: &Channel, item: &OutboxItem, e: SendError) -> SendOutcome {
    let now = Timestamp::now();
    match e {
        SendError::RateLimited { retry_after } => SendOutcome::Retry {
            at: now + jiff::SignedDuration::try_from(retry_after).unwrap_or_default(),
            error: "rate limited by the provider".into(),
        },
        SendError::Blocked { reason } => SendOutcome::Blocked { reason },
        SendError::Refused { reason } => SendOutcome::Failed { reason },
        SendError::Unauthorized { reason } => {
            ch.m.record_channel_error(
                &ch.rt.channel,
                &format!("the provider refused the credentials: {reason}"),
            )
            .await;
            retry_or_fail(item, now, reason, Duration::from_secs(60))
        }
        SendError::Transient { reason } => retry_or_fail(item, now, reason, backoff(item.attempts)),
    }
}

fn retry_or_fail(item: &OutboxItem, now: Timestamp, reason: String, wait: Duration) -> SendOutcome {
    if item.attempts >= MAX_ATTEMPTS {
        SendOutcome::Failed {
            reason: format!("gave up after {} attempts: {reason}", item.attempts),
        }
    } else {
        SendOutcome::Retry {
            at: now + jiff::SignedDuration::try_from(wait).unwrap_or_default(),
            error: reason,
        }
    }
}

/// Exponential backoff with full jitter: 1 s, 2 s, 4 s … capped at 10 minutes, each
/// drawn between half and all of it, so a provider outage is not hit in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(10))
        .min(Duration::from_secs(600));
    let ms = base.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..20 {
            let b = backoff(attempt);
            let cap =
                Duration::from_secs(1u64 << (attempt - 1).min(10)).min(Duration::from_secs(600));
            assert!(b <= cap && b >= cap / 2, "attempt {attempt}: {b:?}");
        }
    }
}
