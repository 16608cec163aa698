//! A broadcast's numbers: the report (per variant and in total) and the live progress
//! the events stream carries, both computed from the store's counters.
//!
//! Metrics a broadcast's channels cannot report (delivery and read receipts: Telegram has
//! neither) are `null` and listed in `not_available`, never 0: a 0 would read as "nobody
//! read it".

use jiff::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use voronka_core::broadcast::{BroadcastSpec, BroadcastStatus, SkipReason};
use voronka_core::BroadcastId;
use voronka_store::{Broadcast, BroadcastCounter, HELD_VARIANT};

/// Counts of one variant, or of the whole broadcast.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Recipients who get (or got) the message: everyone not skipped.
    pub planned: u64,
    /// Of those, still waiting for their turn (their time, quiet hours, the pace).
    pub waiting: u64,
    /// In the outbox now.
    pub queued: u64,
    /// Accepted by the provider.
    pub sent: u64,
    /// Reported delivered; `null` when no channel of the broadcast reports deliveries.
    pub delivered: Option<u64>,
    /// Reported read; `null` when no channel of the broadcast reports reads.
    pub read: Option<u64>,
    /// Clicked a button or tracked link.
    pub clicked: u64,
    /// Could not be sent.
    pub failed: u64,
    /// Deleted again by a recall.
    pub recalled: u64,
    /// Never sent (all reasons).
    pub skipped: u64,
}

/// Rates over the messages sent; `null` when nothing was sent yet or the metric is not
/// available.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rates {
    /// delivered / sent.
    pub delivery: Option<f64>,
    /// read / sent.
    pub read: Option<f64>,
    /// clicked / sent.
    pub click: Option<f64>,
}

/// One variant's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantReport {
    /// Index in the document's variants.
    pub index: u8,
    /// Its key (`A`).
    pub key: String,
    /// Its share.
    pub percent: u8,
    /// Its numbers.
    pub counts: Counts,
    /// Its rates.
    pub rates: Rates,
    /// Skips by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The follow-up's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FollowUpReport {
    /// Follow-ups put into the outbox.
    pub queued: u64,
    /// Follow-ups accepted by the provider.
    pub sent: u64,
    /// Follow-ups that could not be sent.
    pub failed: u64,
    /// Follow-ups not sent, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// A broadcast's report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The broadcast.
    pub broadcast_id: BroadcastId,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: BroadcastStatus,
    /// Recipients are still being selected.
    pub planning: bool,
    /// When it fires or fired.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub send_at: Option<Timestamp>,
    /// When sending started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it finished or was cancelled.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Everything together.
    pub totals: Counts,
    /// Rates of everything together.
    pub rates: Rates,
    /// Per variant.
    pub variants: Vec<VariantReport>,
    /// Recipients held back for a winner that is not picked yet.
    pub held: u64,
    /// The winning variant's index, once picked.
    pub winner_variant: Option<u8>,
    /// Skips by reason, every reason listed.
    pub skipped: BTreeMap<String, u64>,
    /// The follow-up's numbers, when the broadcast has one.
    pub follow_up: Option<FollowUpReport>,
    /// Metrics the broadcast's channels cannot report (`delivered`, `read`); their
    /// values are `null`.
    pub not_available: Vec<String>,
    /// Recipients still to be sent.
    pub remaining: u64,
    /// Seconds until the remaining recipients are sent at the channels' rates (`null`
    /// when nothing is left or the broadcast is not sending).
    pub eta_seconds: Option<f64>,
}

/// What the events stream carries: the live numbers of a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// The broadcast.
    pub broadcast_id: BroadcastId,
    /// Its status.
    pub status: BroadcastStatus,
    /// Recipients are still being selected.
    pub planning: bool,
    /// The totals.
    pub totals: Counts,
    /// Skipped recipients by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Recipients still to be sent.
    pub remaining: u64,
    /// Done share of the planned recipients, 0–100.
    pub percent: f64,
    /// Seconds to go at the channels' rates.
    pub eta_seconds: Option<f64>,
    /// The broadcast is over (finished or cancelled): the stream ends.
    pub over: bool,
    /// When these numbers were read.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

impl Progress {
    /// The progress a report shows.
    pub fn of(r: &Report, at: Timestamp) -> Progress {
        let planned = r.totals.planned;
        let done = planned.saturating_sub(r.remaining);
        Progress {
            broadcast_id: r.broadcast_id,
            status: r.status,
            planning: r.planning,
            totals: r.totals.clone(),
            skipped: r.skipped.clone(),
            remaining: r.remaining,
            percent: if planned == 0 {
                if r.planning {
                    0.0
                } else {
                    100.0
                }
            } else {
                (done as f64 * 1000.0 / planned as f64).round() / 10.0
            },
            eta_seconds: r.eta_seconds,
            over: matches!(
                r.status,
                BroadcastStatus::Finished | BroadcastStatus::Cancelled
            ),
            at,
        }
    }
}

/// What the report needs to know about the broadcast's channels.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelFacts {
    /// Some channel reports deliveries.
    pub delivery_receipts: bool,
    /// Some channel reports reads.
    pub read_receipts: bool,
    /// Messages per second over all the channels.
    pub rate: f64,
}

#[derive(Debug, Default, Clone)]
struct Raw {
    planned: u64,
    queued: u64,
    sent: u64,
    delivered: u64,
    read: u64,
    clicked: u64,
    failed: u64,
    recalled: u64,
    skipped: BTreeMap<String, u64>,
    fu_queued: u64,
    fu_sent: u64,
    fu_failed: u64,
    fu_skipped: BTreeMap<String, u64>,
}

impl Raw {
    fn add(&mut self, key: &str, n: u64) {
        match key {
            "planned" => self.planned += n,
            "queued" => self.queued += n,
            "sent" => self.sent += n,
            "delivered" => self.delivered += n,
            "read" => self.read += n,
            "clicked" => self.clicked += n,
            "failed" => self.failed += n,
            "recalled" => self.recalled += n,
            "follow_up_queued" => self.fu_queued += n,
            "follow_up_sent" => self.fu_sent += n,
            "follow_up_failed" => self.fu_failed += n,
            k => {
                if let Some(r) = k.strip_prefix("follow_up_skipped:") {
                    *self.fu_skipped.entry(r.to_string()).or_default() += n;
                } else if let Some(r) = k.strip_prefix("skipped:") {
                    *self.skipped.entry(r.to_string()).or_default() += n;
                }
            }
        }
    }

    fn merge(&mut self, o: &Raw) {
        self.planned += o.planned;
        self.queued += o.queued;
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.read += o.read;
        self.clicked += o.clicked;
        self.failed += o.failed;
        self.recalled += o.recalled;
        for (k, v) in &o.skipped {
            *self.skipped.entry(k.clone()).or_default() += v;
        }
        self.fu_queued += o.fu_queued;
        self.fu_sent += o.fu_sent;
        self.fu_failed += o.fu_failed;
        for (k, v) in &o.fu_skipped {
            *self.fu_skipped.entry(k.clone()).or_default() += v;
        }
    }

    fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    // The store's counters are counts over the rows: `planned` and `queued` are the rows
    // in that status now, `sent`, `failed` and the engagement keys only ever grow.
    fn counts(&self, f: &ChannelFacts) -> Counts {
        Counts {
            planned: self.planned + self.queued + self.sent + self.failed,
            waiting: self.planned,
            queued: self.queued,
            sent: self.sent,
            delivered: f.delivery_receipts.then_some(self.delivered),
            read: f.read_receipts.then_some(self.read),
            clicked: self.clicked,
            failed: self.failed,
            recalled: self.recalled,
            skipped: self.skipped_total(),
        }
    }

    /// Recipients without an outcome yet.
    fn remaining(&self) -> u64 {
        self.planned + self.queued
    }
}

fn rates(c: &Counts) -> Rates {
    let over = |n: u64| (c.sent > 0).then(|| n as f64 / c.sent as f64);
    Rates {
        delivery: c.delivered.and_then(over),
        read: c.read.and_then(over),
        click: over(c.clicked),
    }
}

fn all_reasons(found: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = SkipReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), 0))
        .collect();
    for (k, v) in found {
        *out.entry(k.clone()).or_default() += v;
    }
    out
}

/// Builds the report of a broadcast from its counters.
pub fn build(
    b: &Broadcast,
    spec: Option<&BroadcastSpec>,
    counters: &[BroadcastCounter],
    facts: &ChannelFacts,
) -> Report {
    let mut per: BTreeMap<u8, Raw> = BTreeMap::new();
    for c in counters {
        per.entry(c.variant).or_default().add(&c.key, c.n);
    }
    let mut total = Raw::default();
    for r in per.values() {
        total.merge(r);
    }
    let held = per.get(&HELD_VARIANT).map(|r| r.planned).unwrap_or(0);
    let variants = spec
        .map(|s| {
            s.variants
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let index = u8::try_from(i).unwrap_or(u8::MAX);
                    let raw = per.get(&index).cloned().unwrap_or_default();
                    let counts = raw.counts(facts);
                    VariantReport {
                        index,
                        key: v.key.clone(),
                        percent: v.percent,
                        rates: rates(&counts),
                        counts,
                        skipped: raw.skipped.clone(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let totals = total.counts(facts);
    let mut not_available = Vec::new();
    if !facts.delivery_receipts {
        not_available.push("delivered".to_string());
    }
    if !facts.read_receipts {
        not_available.push("read".to_string());
    }
    let remaining = total.remaining();
    let eta_seconds = (b.status == BroadcastStatus::Sending && remaining > 0 && facts.rate > 0.0)
        .then(|| (remaining as f64 / facts.rate * 10.0).round() / 10.0);
    Report {
        broadcast_id: b.id,
        name: b.name.clone(),
        status: b.status,
        planning: b.planned_at.is_none()
            && matches!(b.status, BroadcastStatus::Sending | BroadcastStatus::Paused),
        send_at: b.send_at,
        started_at: b.started_at,
        finished_at: b.finished_at,
        rates: rates(&totals),
        totals,
        variants,
        held,
        winner_variant: b.winner_variant,
        skipped: all_reasons(&total.skipped),
        follow_up: spec
            .and_then(|s| s.follow_up.as_ref())
            .map(|_| FollowUpReport {
                queued: total.fu_queued,
                sent: total.fu_sent,
                failed: total.fu_failed,
                skipped: total.fu_skipped.clone(),
            }),
        not_available,
        remaining,
        eta_seconds,
    }
}
