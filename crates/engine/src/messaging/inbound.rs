//! The inbound processor: takes stored events in order and applies them.
//!
//! One task processes events one at a time, oldest first. That keeps each person's
//! events in order without locks, and the work per event is small (a read or two and one
//! transaction). A failing event is retried a few times, then parked as `failed` with its
//! error so it cannot block the ones behind it.

use super::plan::{self, Context};
use super::{Messaging, Routing};
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use voronka_channels::render::resolve_answer;
use voronka_channels::telegram::{decode_callback_data, CallbackRef};
use voronka_core::message::{InboundKind, OutboundMessage};
use voronka_core::subscription::SubscriptionState;
use voronka_store::{InboundRecord, StoreError};

/// Attempts before an event is parked as failed.
const MAX_ATTEMPTS: u32 = 5;
/// Events fetched per read.
const BATCH: u32 = 256;

/// Runs until the runtime stops.
pub(crate) async fn run(m: Arc<Messaging>) {
    let wake = m.inbound_wake.clone();
    loop {
        if m.shutdown_token().is_cancelled() {
            return;
        }
        // Registered before reading so a wake-up between the read and the wait counts.
        let notified = wake.notified();
        let mut busy = false;
        match m.store().pending_inbound(None, BATCH).await {
            Ok(batch) => {
                busy = batch.len() as u32 == BATCH;
                for record in batch {
                    process(&m, record).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read pending inbound events"),
        }
        if !busy {
            tokio::select! {
                _ = notified => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = m.shutdown_token().cancelled() => return,
            }
        }
    }
}

/// Processes one stored event; errors are recorded on the event, never propagated.
pub async fn process(m: &Messaging, record: InboundRecord) {
    let id = record.id;
    let attempts = record.attempts;
    match apply(m, record).await {
        Ok(()) => {}
        Err(e) => {
            let retry = attempts + 1 < MAX_ATTEMPTS && !matches!(e, StoreError::Invalid(_));
            tracing::warn!(inbound = %id, error = %e, retry, "processing an inbound event failed");
            if let Err(e2) = m.store().fail_inbound(id, &e.to_string(), retry).await {
                tracing::error!(inbound = %id, error = %e2, "cannot record the failure");
            }
        }
    }
}

async fn apply(m: &Messaging, record: InboundRecord) -> Result<(), StoreError> {
    let rt = m.runtime(record.channel_id).await?;
    let ws = rt.channel.workspace_id;
    let store = m.store();
    let identity = store
        .find_identity(ws, rt.channel.id, &record.event.sender.external_id)
        .await?;
    let answered_payload = match (&record.event.kind, &identity) {
        // Only Telegram squeezes payloads into 64 bytes of callback data; elsewhere the
        // data is the payload itself.
        (InboundKind::ButtonPressed { data, .. }, _)
            if rt.channel.kind == voronka_core::channel::ChannelKind::Telegram =>
        {
            resolve_press(m, &record, identity.as_ref(), data).await?
        }
        (InboundKind::ButtonPressed { data, .. }, _) => Some(data.clone()),
        (InboundKind::Text { text, .. }, Some(identity)) => {
            match store.last_outbound_with_choices(ws, identity.id).await? {
                Some(last) => resolve_answer(text, &last.message),
                None => None,
            }
        }
        _ => None,
    };
    // A broadcast's button: counted as a click, and replaced by what flows should see.
    // Only `bc:` payloads take this path, so other presses pay nothing for it.
    let answered_payload = match (answered_payload, &identity) {
        (Some(p), Some(who)) if p.starts_with(crate::broadcasts::render::PAYLOAD_PREFIX) => {
            match m.broadcast_hook() {
                Some(hook) => match hook.pressed(&rt.channel, who, &p).await {
                    Ok(payload) => payload,
                    Err(e) => {
                        // A lost click is better than replaying the whole event.
                        tracing::warn!(inbound = %record.id, error = %e, "cannot record a broadcast click");
                        None
                    }
                },
                None => Some(p),
            }
        }
        (p, _) => p,
    };
    let cx = Context {
        channel_id: rt.channel.id,
        kind: rt.channel.kind,
        settings: &rt.channel.settings,
        identity: identity.as_ref(),
        answered_payload,
        now: Timestamp::now(),
    };
    let mut plan = plan::plan(&record.event, &cx);
    let hook = m.flow_hook();
    if let Some(hook) = &hook {
        let now_subscribed = plan
            .apply
            .subscription
            .as_ref()
            .is_some_and(|c| c.state() == SubscriptionState::Subscribed);
        let before = identity.as_ref().map(|i| i.subscription.state);
        let routing = Routing {
            payload: cx.answered_payload.clone(),
            stop: plan.apply.replies.iter().any(|r| r.source == "stop_reply"),
            subscribes: now_subscribed && before != Some(SubscriptionState::Subscribed),
        };
        let signal = hook
            .route(&rt.channel, identity.as_ref(), &record.event, &routing)
            .await?;
        if signal.as_ref().is_some_and(|(kind, _)| kind == "inbound") {
            // A flow answers this message: the channel's generic replies stay quiet.
            plan.apply
                .replies
                .retain(|r| r.source != "auto_reply" && r.source != "welcome");
        }
        plan.apply.signal = signal;
    }
    let has_signal = plan.apply.signal.is_some();
    let applied = store.apply_inbound(ws, record.id, plan.apply).await?;
    if applied.already_done {
        return Ok(());
    }
    if has_signal {
        if let Some(hook) = &hook {
            hook.wake();
        }
    }
    if !applied.queued.is_empty() {
        m.wake_outbox();
    }
    if let (InboundKind::Delivered { message_id } | InboundKind::Read { message_id }, Some(who)) =
        (&record.event.kind, &identity)
    {
        if let Some(hook) = m.broadcast_hook() {
            let read = matches!(record.event.kind, InboundKind::Read { .. });
            if let Err(e) = hook.receipt(&rt.channel, who, message_id, read).await {
                tracing::warn!(inbound = %record.id, error = %e, "cannot record a broadcast receipt");
            }
        }
    }
    if let Some(callback) = plan.acknowledge {
        // Answering stops the spinner on the person's button. It is not a message and
        // not worth a retry: Telegram gives up on it after a few seconds anyway.
        if let Err(e) = rt.adapter.acknowledge_button(&callback, None).await {
            tracing::info!(channel = %rt.channel.id, error = %e, "answering a button press failed");
        }
    }
    if let Some(phone) = plan.shared_phone {
        save_shared_phone(m, ws, applied.contact_id, phone).await;
    }
    Ok(())
}

/// The payload behind a press: carried in the callback data itself, or a reference to
/// a button of a message we sent this person.
async fn resolve_press(
    m: &Messaging,
    record: &InboundRecord,
    identity: Option<&voronka_store::Identity>,
    data: &str,
) -> Result<Option<String>, StoreError> {
    let ws = record.workspace_id;
    Ok(match decode_callback_data(data) {
        CallbackRef::Payload(p) => Some(p),
        CallbackRef::Outbox { outbox_id, index } => {
            let Some(identity) = identity else {
                return Ok(None);
            };
            match m
                .store()
                .get_outbound(ws, voronka_core::OutboxId(outbox_id))
                .await
            {
                // Only buttons of a message sent to this very person count: callback
                // data comes from the client and could name anyone's message.
                Ok(item) if item.identity_id == identity.id => payload_at(&item.message, index),
                Ok(_) | Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            }
        }
        CallbackRef::Unknown(raw) => Some(raw),
    })
}

fn payload_at(message: &OutboundMessage, index: usize) -> Option<String> {
    message
        .choices()
        .get(index)
        .and_then(|b| b.payload())
        .map(str::to_string)
}

async fn save_shared_phone(
    m: &Messaging,
    ws: voronka_core::WorkspaceId,
    contact: voronka_core::ContactId,
    phone: String,
) {
    let Ok(phone) = voronka_core::contact::phone(phone) else {
        return;
    };
    let store = m.store();
    match store.get_contact(ws, contact).await {
        Ok(c) if c.profile.phone.is_none() => {
            let mut profile = c.profile.clone();
            profile.phone = Some(phone);
            if let Err(e) = store.update_profile(ws, contact, profile).await {
                tracing::info!(contact = %contact, error = %e, "cannot save a shared phone");
            }
        }
        _ => {}
    }
}
