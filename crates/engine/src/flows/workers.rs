//! The background workers of the flow runtime.
//!
//! - `signals`: claims signals in batches, processes each contact's in order and
//!   different contacts concurrently.
//! - `timers`: claims runs whose `due_at` has come; sleeps until the next one.
//! - `scanner`: once a minute, turns date-field anniversaries and inactivity into
//!   signals, remembering how far it got so a restart neither skips nor repeats.

use super::{runner, Flows};
use jiff::SignedDuration;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use voronka_core::flow::{duration, schedule, Trigger};
use voronka_core::{ContactId, WorkspaceId};
use voronka_store::{FlowRun, FlowSignal, NewSignal, StoreError};

/// Signals claimed per batch.
const SIGNAL_BATCH: u32 = 512;
/// Due runs claimed per batch.
const TIMER_BATCH: u32 = 512;
/// Longest sleep of the timer worker without checking (a safety net for wake-ups lost
/// to another process: runs due in a second process's commits).
const TIMER_IDLE: Duration = Duration::from_millis(500);

/// Groups items by contact, keeping their order within each contact.
fn by_contact<T>(items: Vec<T>, contact: impl Fn(&T) -> ContactId) -> Vec<Vec<T>> {
    let mut groups: BTreeMap<ContactId, Vec<T>> = BTreeMap::new();
    for item in items {
        groups.entry(contact(&item)).or_default().push(item);
    }
    groups.into_values().collect()
}

/// Runs `work` on each group with bounded concurrency and waits for all of them.
async fn fan_out<T, F, Fut>(flows: &Arc<Flows>, groups: Vec<Vec<T>>, work: F)
where
    T: Send + 'static,
    F: Fn(Arc<Flows>, Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(flows.config().concurrency.max(1)));
    let mut set = JoinSet::new();
    for group in groups {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let fut = work(flows.clone(), group);
        set.spawn(async move {
            fut.await;
            drop(permit);
        });
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "a flow task panicked");
        }
    }
}

/// The signal worker.
pub(crate) async fn signals(flows: Arc<Flows>) {
    loop {
        if flows.shutdown_token().is_cancelled() {
            return;
        }
        let notified = flows.signal_notify().notified();
        let mut busy = false;
        match flows
            .store()
            .claim_signals(SIGNAL_BATCH, flows.config().signal_lease)
            .await
        {
            Ok(batch) => {
                busy = batch.len() as u32 == SIGNAL_BATCH;
                let groups = by_contact(batch, |s: &FlowSignal| s.contact_id);
                fan_out(&flows, groups, |f, g| async move {
                    runner::handle_signals(&f, g).await
                })
                .await;
            }
            Err(e) => tracing::error!(error = %e, "cannot claim flow signals"),
        }
        if !busy {
            tokio::select! {
                _ = notified => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = flows.shutdown_token().cancelled() => return,
            }
        }
    }
}

/// The timer worker.
pub(crate) async fn timers(flows: Arc<Flows>) {
    loop {
        if flows.shutdown_token().is_cancelled() {
            return;
        }
        let notified = flows.timer_notify().notified();
        let now = flows.now();
        let mut busy = false;
        match flows
            .store()
            .claim_due_runs(now, TIMER_BATCH, flows.config().timer_lease)
            .await
        {
            Ok(batch) => {
                busy = batch.len() as u32 == TIMER_BATCH;
                let groups = by_contact(batch, |r: &FlowRun| r.contact_id);
                fan_out(&flows, groups, |f, g| async move {
                    runner::handle_due_runs(&f, g).await
                })
                .await;
            }
            Err(e) => tracing::error!(error = %e, "cannot claim due flow runs"),
        }
        if busy {
            continue;
        }
        let sleep = match flows.store().next_due().await {
            Ok(Some(at)) => {
                let wait = at.duration_since(flows.now());
                wait.try_into().unwrap_or(Duration::ZERO).min(TIMER_IDLE)
            }
            Ok(None) => TIMER_IDLE,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the next flow timer");
                TIMER_IDLE
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = notified => {},
            _ = tokio::time::sleep(sleep) => {},
            _ = flows.shutdown_token().cancelled() => return,
        }
    }
}

/// The date and inactivity scanner.
pub(crate) async fn scanner(flows: Arc<Flows>) {
    loop {
        for (ws, live) in flows.live_workspaces() {
            for f in live.iter() {
                for (i, t) in f.doc.triggers.iter().enumerate() {
                    let key = format!("{}:{}", f.flow_id.0, i);
                    let r = match t {
                        Trigger::FieldDate {
                            field,
                            at,
                            offset_days,
                        } => {
                            scan_dates(
                                &flows,
                                ws,
                                f.flow_id,
                                &key,
                                field,
                                at.as_deref(),
                                *offset_days,
                            )
                            .await
                        }
                        Trigger::Inactivity { after } => {
                            scan_inactive(&flows, ws, f.flow_id, &key, after).await
                        }
                        _ => Ok(()),
                    };
                    if let Err(e) = r {
                        tracing::warn!(flow = %f.flow_id, error = %e, "a trigger scan failed");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(flows.config().scan_interval) => {},
            _ = flows.shutdown_token().cancelled() => return,
        }
    }
}

/// Page size of scans.
const SCAN_PAGE: u32 = 1000;

async fn scan_inactive(
    flows: &Flows,
    ws: WorkspaceId,
    flow: voronka_core::FlowId,
    key: &str,
    after: &str,
) -> Result<(), StoreError> {
    let Ok(after) = duration::parse_positive(after) else {
        return Ok(());
    };
    let key = format!("inactivity:{key}");
    let store = flows.store();
    let now = flows.now();
    let cutoff = now.checked_sub(after).unwrap_or(now);
    // The first scan only sets the mark: contacts inactive since before the flow was
    // published are not flooded with "we miss you" at once.
    let Some(from) = store.scan_mark(ws, &key).await? else {
        return store.set_scan_mark(ws, &key, cutoff).await;
    };
    if from >= cutoff {
        return Ok(());
    }
    let mut cursor = None;
    loop {
        let page = store
            .inactive_contacts(ws, from, cutoff, cursor, SCAN_PAGE)
            .await?;
        for c in &page {
            store
                .emit_signal(
                    ws,
                    NewSignal {
                        contact_id: *c,
                        channel_id: None,
                        kind: "inactivity".into(),
                        data: json!({"flow": flow.0.to_string(), "trigger": "inactivity"}),
                    },
                )
                .await?;
        }
        cursor = page.last().copied();
        if (page.len() as u32) < SCAN_PAGE {
            break;
        }
    }
    store.set_scan_mark(ws, &key, cutoff).await?;
    flows.wake();
    Ok(())
}

async fn scan_dates(
    flows: &Flows,
    ws: WorkspaceId,
    flow: voronka_core::FlowId,
    key: &str,
    field: &str,
    at: Option<&str>,
    offset_days: i32,
) -> Result<(), StoreError> {
    let key = format!("field_date:{key}");
    let store = flows.store();
    let info = flows.workspace(ws).await?;
    let now = flows.now();
    let Some(mark) = store.scan_mark(ws, &key).await? else {
        return store.set_scan_mark(ws, &key, now).await;
    };
    if mark >= now {
        return Ok(());
    }
    let at = at
        .and_then(|t| schedule::parse_hhmm(t).ok())
        .unwrap_or_else(|| jiff::civil::time(10, 0, 0, 0));
    // Candidate calendar days: every UTC day the window touches, widened by a day on
    // each side for time zones, shifted back by the offset.
    let mut days = Vec::new();
    let start = mark
        .checked_sub(SignedDuration::from_hours(36))
        .unwrap_or(mark);
    let end = now
        .checked_add(SignedDuration::from_hours(36))
        .unwrap_or(now);
    let mut d = start.to_zoned(jiff::tz::TimeZone::UTC).date();
    let last = end.to_zoned(jiff::tz::TimeZone::UTC).date();
    while d <= last {
        if let Ok(shifted) = d.checked_sub(jiff::Span::new().days(i64::from(offset_days))) {
            let md = (shifted.month() as u8, shifted.day() as u8);
            if !days.contains(&md) {
                days.push(md);
            }
            // Feb 29 birthdays are celebrated on Feb 28 in other years.
            if md == (2, 28) && !days.contains(&(2, 29)) {
                days.push((2, 29));
            }
        }
        match d.tomorrow() {
            Ok(n) => d = n,
            Err(_) => break,
        }
    }
    let mut cursor = None;
    loop {
        let page = store
            .contacts_by_field_day(ws, field, &days, cursor, SCAN_PAGE)
            .await?;
        for dc in &page {
            let date = dc
                .value
                .get(..10)
                .and_then(|s| s.parse::<jiff::civil::Date>().ok());
            let Some(date) = date else { continue };
            let contact = store.get_contact(ws, dc.contact_id).await?;
            let tz = schedule::time_zone(contact.profile.time_zone.as_deref(), &info.tz);
            let before = mark
                .checked_sub(SignedDuration::from_secs(1))
                .unwrap_or(mark);
            let moment = schedule::next_anniversary(date, at, offset_days, before, &tz);
            if moment > mark && moment <= now {
                store
                    .emit_signal(
                        ws,
                        NewSignal {
                            contact_id: dc.contact_id,
                            channel_id: None,
                            kind: "field_date".into(),
                            data: json!({"flow": flow.0.to_string(), "trigger": format!("field_date:{field}"), "data": {"field": field, "value": dc.value}}),
                        },
                    )
                    .await?;
            }
        }
        cursor = page.last().map(|d| d.contact_id);
        if (page.len() as u32) < SCAN_PAGE {
            break;
        }
    }
    store.set_scan_mark(ws, &key, now).await?;
    flows.wake();
    Ok(())
}
