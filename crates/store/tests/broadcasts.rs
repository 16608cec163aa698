//! Conformance of the broadcast store: every case runs on SQLite and on PostgreSQL, so
//! both backends plan, feed, count and recall the same way.
//!
//! Each `async fn case_xxx(store: &DynStore)` below becomes `sqlite::case_xxx` and
//! `postgres::case_xxx`. PostgreSQL cases return early (after `fresh_store` printed why)
//! when no server is reachable, unless CI=true or VORONKA_REQUIRE_PG=1. Most cases end by
//! checking that the counters equal a count over the recipient rows.

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use voronka_core::broadcast::{
    assign_variant, in_test_group, BroadcastStatus, Engagement, RecipientStatus, SkipReason,
};
use voronka_core::channel::{ChannelKind, ChannelSettings};
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::message::{Button, InboundEvent, InboundKind, OutboundMessage, Purpose, Sender};
use voronka_core::segment::{Leaf, Resolved};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::*;
use voronka_store::testing::{fresh_store, Backend};
use voronka_store::*;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::fresh_store(super::Backend::Sqlite).await else { return };
                    super::$name(&t.store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::fresh_store(super::Backend::Postgres).await else { return };
                    super::$name(&t.store).await;
                }
            )*
        }
    };
}

cases!(
    case_document_rules,
    case_transitions,
    case_plan_skip_reasons,
    case_plan_preferred_channel,
    case_plan_segment_and_time_zones,
    case_variants_are_stored_and_stable,
    case_held_rows_and_winner,
    case_replanning_never_duplicates,
    case_feed_queue_skip_defer,
    case_feed_rechecks_consent,
    case_feed_does_nothing_unless_sending,
    case_pause_pulls_back_queued_rows,
    case_cancel_skips_the_rest,
    case_complete_outbox_updates_recipients,
    case_signals_count_once,
    case_follow_ups,
    case_recall,
    case_erasure_blanks_recipients,
    case_workspace_isolation,
);

// ---------------------------------------------------------------- helpers

/// The current time at the database's precision (microseconds), so times written and
/// read back compare equal.
fn now() -> Timestamp {
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).expect("valid time")
}

fn proof() -> ConsentProof {
    ConsentProof {
        source: "telegram_start".into(),
        at: Timestamp::from_second(1_700_000_000).expect("valid time"),
        text_shown: None,
        ip: None,
        message_id: None,
    }
}

fn change(state: SubscriptionState, topics: &[&str]) -> SubscriptionChange {
    let proof = (state == SubscriptionState::Subscribed).then(proof);
    SubscriptionChange::new(
        state,
        topics.iter().map(|t| t.to_string()).collect(),
        proof,
        now(),
    )
    .expect("valid change")
}

fn subscribed(topics: &[&str]) -> Option<SubscriptionChange> {
    Some(change(SubscriptionState::Subscribed, topics))
}

fn blocked() -> Option<SubscriptionChange> {
    Some(change(SubscriptionState::Blocked, &[]))
}

fn unsubscribed() -> Option<SubscriptionChange> {
    Some(change(SubscriptionState::Unsubscribed, &[]))
}

async fn workspace(s: &DynStore, name: &str) -> WorkspaceId {
    s.create_workspace(name).await.expect("create workspace").id
}

async fn channel(s: &DynStore, ws: WorkspaceId, name: &str) -> ChannelId {
    s.create_channel(
        ws,
        NewChannel {
            kind: ChannelKind::Telegram,
            name: name.into(),
            credentials: Sealed {
                key_id: "k1".into(),
                data: vec![1, 2, 3, 4],
            },
            settings: ChannelSettings::default(),
        },
    )
    .await
    .expect("create channel")
    .id
}

/// A contact with identities `(channel, external id, consent)`.
async fn person(
    s: &DynStore,
    ws: WorkspaceId,
    ids: Vec<(ChannelId, &str, Option<SubscriptionChange>)>,
    tags: &[&str],
    time_zone: Option<&str>,
) -> Contact {
    s.create_contact(
        ws,
        NewContact {
            profile: Profile {
                first_name: Some("Olga".into()),
                time_zone: time_zone.map(str::to_string),
                ..Profile::default()
            },
            tags: tags.iter().map(|t| t.to_string()).collect(),
            identities: ids
                .into_iter()
                .map(|(channel_id, external_id, subscription)| NewIdentity {
                    channel_id,
                    external_id: external_id.into(),
                    subscription,
                })
                .collect(),
            ..NewContact::default()
        },
    )
    .await
    .expect("create contact")
}

/// Processes one text message from `external_id` on `ch`: the identity becomes the most
/// recently active one of its contact.
async fn inbound(s: &DynStore, ws: WorkspaceId, ch: ChannelId, pid: &str, external_id: &str) {
    let from = Sender {
        external_id: external_id.into(),
        ..Sender::default()
    };
    let id = s
        .record_inbound(
            ws,
            ch,
            vec![InboundEvent {
                provider_event_id: pid.into(),
                sender: from.clone(),
                at: 1_700_000_000,
                kind: InboundKind::Text {
                    message_id: format!("m-{pid}"),
                    text: "hi".into(),
                },
            }],
        )
        .await
        .expect("record")[0]
        .expect("new event");
    s.apply_inbound(
        ws,
        id,
        InboundApply {
            sender: from,
            ..InboundApply::default()
        },
    )
    .await
    .expect("apply");
}

fn spec() -> Value {
    json!({"variants": [{"key": "A", "percent": 100, "message": {"text": "Hi"}}]})
}

/// A broadcast moved to `sending`.
async fn sending(s: &DynStore, ws: WorkspaceId, name: &str) -> BroadcastId {
    let b = s.create_broadcast(ws, name, spec()).await.expect("create");
    s.transition_broadcast(
        ws,
        b.id,
        &[BroadcastStatus::Draft],
        BroadcastStatus::Sending,
        None,
        now(),
    )
    .await
    .expect("send")
    .id
}

fn plan(channels: &[ChannelId]) -> PlanRequest {
    PlanRequest {
        segment: None,
        channels: channels.to_vec(),
        preferred_only: false,
        topic: None,
        percents: vec![100],
        test_percent: None,
        run_at: now(),
        batch: 1000,
    }
}

/// Plans until done; returns the number of batches.
async fn plan_all(s: &DynStore, ws: WorkspaceId, b: BroadcastId, req: &PlanRequest) -> u32 {
    let mut batches = 0;
    loop {
        batches += 1;
        let p = s.plan_broadcast_batch(ws, b, req).await.expect("plan");
        if p.done {
            return batches;
        }
        assert!(batches < 10_000, "planning never ends");
    }
}

/// Every recipient row, in id order.
async fn rows(s: &DynStore, ws: WorkspaceId, b: BroadcastId) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = Vec::new();
    loop {
        let page = s
            .list_recipients(
                ws,
                b,
                RecipientQuery {
                    after: out.last().map(|r| r.id),
                    limit: 1000,
                    ..RecipientQuery::default()
                },
            )
            .await
            .expect("list recipients");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The row of a contact (the planned one, or the only one).
fn row_of(all: &[Recipient], contact: ContactId) -> &Recipient {
    let mine: Vec<&Recipient> = all.iter().filter(|r| r.contact_id == contact).collect();
    mine.iter()
        .find(|r| r.reason != Some(SkipReason::DuplicatePerson))
        .copied()
        .unwrap_or_else(|| panic!("no row for contact {contact}"))
}

/// The counters as a map, without the two follow-up outcomes no row column records.
async fn counters(s: &DynStore, ws: WorkspaceId, b: BroadcastId) -> BTreeMap<(u8, String), u64> {
    s.broadcast_counters(ws, b)
        .await
        .expect("counters")
        .into_iter()
        .filter(|c| c.n != 0 && c.key != "follow_up_sent" && c.key != "follow_up_failed")
        .map(|c| ((c.variant, c.key), c.n))
        .collect()
}

/// The counters a GROUP BY over the recipient rows gives.
fn expected(all: &[Recipient]) -> BTreeMap<(u8, String), u64> {
    let mut m = BTreeMap::new();
    let mut bump = |v: u8, k: String| *m.entry((v, k)).or_insert(0) += 1;
    for r in all {
        match r.status {
            RecipientStatus::Planned => bump(r.variant, "planned".into()),
            RecipientStatus::Queued => bump(r.variant, "queued".into()),
            RecipientStatus::Failed => bump(r.variant, "failed".into()),
            RecipientStatus::Skipped => bump(
                r.variant,
                format!(
                    "skipped:{}",
                    r.reason.expect("a skipped row has a reason").as_str()
                ),
            ),
            _ => {}
        }
        for (at, key) in [
            (r.sent_at, "sent"),
            (r.delivered_at, "delivered"),
            (r.read_at, "read"),
            (r.clicked_at, "clicked"),
            (r.recalled_at, "recalled"),
        ] {
            if at.is_some() {
                bump(r.variant, key.into());
            }
        }
        if r.follow_up_outbox_id.is_some() {
            bump(r.variant, "follow_up_queued".into());
        }
        if let Some(reason) = r.follow_up_reason {
            bump(r.variant, format!("follow_up_skipped:{}", reason.as_str()));
        }
    }
    m
}

/// The invariant: counters equal the count over the rows.
async fn assert_counters(s: &DynStore, ws: WorkspaceId, b: BroadcastId) {
    let all = rows(s, ws, b).await;
    assert_eq!(counters(s, ws, b).await, expected(&all), "counters vs rows");
}

fn queue(r: RecipientId, text: &str) -> FeedDecision {
    FeedDecision::Queue {
        recipient: r,
        message: OutboundMessage::text(text),
    }
}

async fn due(s: &DynStore, ws: WorkspaceId, b: BroadcastId) -> Vec<DueRecipient> {
    let now = now() + SignedDuration::from_secs(1);
    s.due_recipients(
        ws,
        b,
        None,
        now,
        now - SignedDuration::from_hours(24),
        true,
        1000,
    )
    .await
    .expect("due")
}

/// Feeds every due recipient with a `Queue`.
async fn feed_all(s: &DynStore, ws: WorkspaceId, b: BroadcastId) -> FeedOutcome {
    let decisions = due(s, ws, b)
        .await
        .iter()
        .map(|d| queue(d.id, "Hi"))
        .collect();
    s.feed_recipients(ws, b, None, decisions, now())
        .await
        .expect("feed")
}

/// Claims and completes every queued message of `ch` as sent; returns how many.
async fn send_all(s: &DynStore, ch: ChannelId) -> usize {
    let claimed = s
        .claim_outbox(ch, 1000, Duration::from_secs(60))
        .await
        .expect("claim");
    let n = claimed.len();
    let results = claimed
        .into_iter()
        .map(|o| OutboxResult {
            id: o.id,
            parts_sent: 1,
            provider_message_ids: vec![format!("pm-{}", o.id.0), "second-part".into()],
            outcome: SendOutcome::Sent,
        })
        .collect();
    s.complete_outbox(results).await.expect("complete");
    n
}

fn code(e: StoreError) -> &'static str {
    match e {
        StoreError::Conflict { code, .. } => code,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

// ---------------------------------------------------------------- cases

async fn case_document_rules(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let a = s
        .create_broadcast(
            ws,
            "  Black Friday  ",
            json!({"segment": {"segment_id": 7}, "b": 1}),
        )
        .await
        .expect("create");
    assert_eq!(a.name, "Black Friday", "trimmed");
    assert_eq!((a.status, a.revision), (BroadcastStatus::Draft, 1));
    assert_eq!(a.spec, json!({"segment": {"segment_id": 7}, "b": 1}));
    assert_eq!(s.get_broadcast(ws, a.id).await.expect("get"), a);
    let e = s
        .create_broadcast(ws, "Black Friday", spec())
        .await
        .expect_err("taken");
    assert_eq!(code(e), "name_taken");
    assert!(
        s.create_broadcast(ws, "  ", spec()).await.is_err(),
        "blank name"
    );
    let b = s
        .create_broadcast(ws, "Second", spec())
        .await
        .expect("second");
    let list = s.list_broadcasts(ws).await.expect("list");
    assert_eq!(
        list.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![b.id, a.id],
        "newest first"
    );

    // Revisions: an edit names the one it saw.
    let e = s
        .update_broadcast(ws, a.id, Some(5), Some("X".into()), None)
        .await
        .expect_err("stale");
    assert_eq!(code(e), "stale_revision");
    let a2 = s
        .update_broadcast(ws, a.id, Some(1), None, Some(spec()))
        .await
        .expect("update");
    assert_eq!((a2.revision, a2.name.as_str()), (2, "Black Friday"));
    assert_eq!(a2.spec, spec());
    let e = s
        .update_broadcast(ws, a.id, None, Some("Second".into()), None)
        .await
        .expect_err("rename onto another");
    assert_eq!(code(e), "name_taken");

    // A scheduled broadcast goes back to draft when edited.
    let at = now() + SignedDuration::from_hours(2);
    let sch = s
        .transition_broadcast(
            ws,
            a.id,
            &[BroadcastStatus::Draft],
            BroadcastStatus::Scheduled,
            Some(at),
            now(),
        )
        .await
        .expect("schedule");
    assert_eq!(sch.status, BroadcastStatus::Scheduled);
    let e = s.delete_broadcast(ws, a.id).await.expect_err("scheduled");
    assert_eq!(code(e), "not_deletable");
    let back = s
        .update_broadcast(ws, a.id, None, Some("Renamed".into()), None)
        .await
        .expect("edit scheduled");
    assert_eq!((back.status, back.revision), (BroadcastStatus::Draft, 3));

    // Sending: neither editable nor deletable.
    s.transition_broadcast(
        ws,
        a.id,
        &[BroadcastStatus::Draft],
        BroadcastStatus::Sending,
        None,
        now(),
    )
    .await
    .expect("send");
    let e = s
        .update_broadcast(ws, a.id, None, Some("Y".into()), None)
        .await
        .expect_err("sending");
    assert_eq!(code(e), "not_editable");
    assert_eq!(
        code(s.delete_broadcast(ws, a.id).await.expect_err("live")),
        "not_deletable"
    );

    // A finished one goes with its recipients.
    let ch = channel(s, ws, "bot").await;
    person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None).await;
    plan_all(s, ws, a.id, &plan(&[ch])).await;
    s.transition_broadcast(
        ws,
        a.id,
        &[BroadcastStatus::Sending],
        BroadcastStatus::Finished,
        None,
        now(),
    )
    .await
    .expect("finish");
    s.delete_broadcast(ws, a.id).await.expect("delete finished");
    assert!(matches!(
        s.get_broadcast(ws, a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete_broadcast(ws, b.id).await.expect("delete draft");
    assert!(s.list_broadcasts(ws).await.expect("list").is_empty());
    assert!(matches!(
        s.delete_broadcast(ws, b.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn case_transitions(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let b = s
        .create_broadcast(ws, "B", spec())
        .await
        .expect("create")
        .id;
    let t0 = now();
    let soon = t0 + SignedDuration::from_secs(60);
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Draft],
            BroadcastStatus::Scheduled,
            Some(soon),
            t0,
        )
        .await
        .expect("schedule");
    assert_eq!(
        (x.status, x.send_at),
        (BroadcastStatus::Scheduled, Some(soon))
    );
    assert_eq!(s.next_scheduled().await.expect("next"), Some(soon));
    assert!(
        s.active_broadcasts(t0).await.expect("active").is_empty(),
        "not due yet"
    );
    let due = s.active_broadcasts(soon).await.expect("active");
    assert_eq!(due.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b]);

    // From a status it is not in: refused, naming the current one.
    let e = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Draft, BroadcastStatus::Paused],
            BroadcastStatus::Sending,
            None,
            t0,
        )
        .await
        .expect_err("not a draft");
    match e {
        StoreError::Conflict { code, message, .. } => {
            assert_eq!(code, "invalid_transition");
            assert!(message.contains("scheduled"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let t1 = t0 + SignedDuration::from_secs(1);
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Scheduled],
            BroadcastStatus::Sending,
            None,
            t1,
        )
        .await
        .expect("fire");
    assert_eq!(
        (x.status, x.started_at, x.send_at),
        (BroadcastStatus::Sending, Some(t1), Some(soon))
    );
    assert_eq!(s.next_scheduled().await.expect("next"), None);
    assert_eq!(
        s.active_broadcasts(t0).await.expect("active").len(),
        1,
        "sending is active"
    );
    let t2 = t1 + SignedDuration::from_secs(1);
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Sending],
            BroadcastStatus::Paused,
            None,
            t2,
        )
        .await
        .expect("pause");
    assert_eq!(x.status, BroadcastStatus::Paused);
    assert!(s.active_broadcasts(t2).await.expect("active").is_empty());
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Paused],
            BroadcastStatus::Sending,
            None,
            t2,
        )
        .await
        .expect("resume");
    assert_eq!(x.started_at, Some(t1), "started once");
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Sending, BroadcastStatus::Paused],
            BroadcastStatus::Cancelled,
            None,
            t2,
        )
        .await
        .expect("cancel");
    assert_eq!(
        (x.status, x.finished_at),
        (BroadcastStatus::Cancelled, Some(t2))
    );
    let e = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Sending],
            BroadcastStatus::Finished,
            None,
            t2,
        )
        .await
        .expect_err("over");
    assert_eq!(code(e), "invalid_transition");
    assert!(matches!(
        s.transition_broadcast(
            ws,
            BroadcastId(999_999),
            &[BroadcastStatus::Draft],
            BroadcastStatus::Sending,
            None,
            t2
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn case_plan_skip_reasons(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch1 = channel(s, ws, "one").await;
    let ch2 = channel(s, ws, "two").await;
    let ch3 = channel(s, ws, "other").await;
    let none = person(s, ws, vec![], &[], None).await.id;
    let unsub = person(s, ws, vec![(ch1, "u", unsubscribed())], &[], None)
        .await
        .id;
    let no_opt_in = person(s, ws, vec![(ch1, "n", None)], &[], None).await.id;
    let block = person(s, ws, vec![(ch1, "b", blocked())], &[], None)
        .await
        .id;
    let topic = person(s, ws, vec![(ch1, "t", subscribed(&["other"]))], &[], None)
        .await
        .id;
    let all_topics = person(s, ws, vec![(ch1, "all", subscribed(&[]))], &[], None)
        .await
        .id;
    let news = person(
        s,
        ws,
        vec![(ch1, "news", subscribed(&["news", "x"]))],
        &[],
        None,
    )
    .await
    .id;
    let mixed = person(
        s,
        ws,
        vec![(ch1, "m1", blocked()), (ch2, "m2", unsubscribed())],
        &[],
        None,
    )
    .await
    .id;
    let elsewhere = person(s, ws, vec![(ch3, "e", subscribed(&[]))], &[], None)
        .await
        .id;
    let two = person(
        s,
        ws,
        vec![(ch1, "d1", subscribed(&[])), (ch2, "d2", subscribed(&[]))],
        &[],
        None,
    )
    .await
    .id;
    let gone = person(s, ws, vec![(ch1, "g", subscribed(&[]))], &[], None)
        .await
        .id;
    s.erase_contact(ws, gone).await.expect("erase");
    // The identity on ch1 was active last: it gets the message, ch2 is the duplicate.
    inbound(s, ws, ch2, "p1", "d2").await;
    inbound(s, ws, ch1, "p2", "d1").await;

    let b = sending(s, ws, "B").await;
    let mut req = plan(&[ch1, ch2]);
    req.topic = Some("news".into());
    let p = s.plan_broadcast_batch(ws, b, &req).await.expect("plan");
    assert!(p.done);
    assert_eq!(p.contacts, 10, "erased contacts are not planned");
    assert_eq!((p.planned, p.skipped), (3, 8));
    let all = rows(s, ws, b).await;
    assert_eq!(all.len(), 11);
    let reason = |c: ContactId| row_of(&all, c).reason;
    assert_eq!(reason(none), Some(SkipReason::NoIdentity));
    assert_eq!(row_of(&all, none).identity_id, None);
    assert_eq!(reason(unsub), Some(SkipReason::NotSubscribed));
    assert_eq!(reason(no_opt_in), Some(SkipReason::NotSubscribed));
    assert_eq!(reason(block), Some(SkipReason::Blocked));
    assert_eq!(reason(topic), Some(SkipReason::TopicNotSubscribed));
    assert_eq!(
        reason(mixed),
        Some(SkipReason::Blocked),
        "the most telling reason"
    );
    assert_eq!(
        reason(elsewhere),
        Some(SkipReason::NoIdentity),
        "not on the broadcast's channels"
    );
    assert_eq!(
        row_of(&all, all_topics).status,
        RecipientStatus::Planned,
        "no topics = all"
    );
    assert_eq!(row_of(&all, news).status, RecipientStatus::Planned);
    let chosen = row_of(&all, two);
    assert_eq!(
        (chosen.status, chosen.channel_id),
        (RecipientStatus::Planned, Some(ch1))
    );
    let dup: Vec<&Recipient> = all
        .iter()
        .filter(|r| r.reason == Some(SkipReason::DuplicatePerson))
        .collect();
    assert_eq!(dup.len(), 1);
    assert_eq!((dup[0].contact_id, dup[0].channel_id), (two, Some(ch2)));
    assert!(all.iter().all(|r| r.contact_id != gone));
    assert_counters(s, ws, b).await;
    let got = s.get_broadcast(ws, b).await.expect("get");
    assert!(got.planned_at.is_some());
}

async fn case_plan_preferred_channel(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch1 = channel(s, ws, "one").await;
    let ch2 = channel(s, ws, "two").await;
    // Subscribed on ch1, but last active on ch2 where they never opted in.
    let lapsed = person(
        s,
        ws,
        vec![(ch1, "l1", subscribed(&[])), (ch2, "l2", None)],
        &[],
        None,
    )
    .await
    .id;
    inbound(s, ws, ch2, "p1", "l2").await;
    // Subscribed on both, last active on ch2.
    let both = person(
        s,
        ws,
        vec![(ch1, "b1", subscribed(&[])), (ch2, "b2", subscribed(&[]))],
        &[],
        None,
    )
    .await
    .id;
    inbound(s, ws, ch2, "p2", "b2").await;
    // Never active anywhere: the newest identity counts as preferred.
    let quiet = person(
        s,
        ws,
        vec![(ch1, "q1", subscribed(&[])), (ch2, "q2", subscribed(&[]))],
        &[],
        None,
    )
    .await
    .id;

    let b = sending(s, ws, "preferred").await;
    let mut req = plan(&[ch1, ch2]);
    req.preferred_only = true;
    plan_all(s, ws, b, &req).await;
    let all = rows(s, ws, b).await;
    let r = row_of(&all, lapsed);
    assert_eq!(
        (r.status, r.reason, r.channel_id),
        (
            RecipientStatus::Skipped,
            Some(SkipReason::NotSubscribed),
            Some(ch2)
        )
    );
    let r = row_of(&all, both);
    assert_eq!(
        (r.status, r.channel_id),
        (RecipientStatus::Planned, Some(ch2))
    );
    let r = row_of(&all, quiet);
    assert_eq!(
        (r.status, r.channel_id),
        (RecipientStatus::Planned, Some(ch2))
    );
    assert_eq!(
        all.iter()
            .filter(|r| r.reason == Some(SkipReason::DuplicatePerson))
            .count(),
        2
    );
    assert_counters(s, ws, b).await;

    // Without the preference, the subscribed identity wins whatever the activity.
    let b2 = sending(s, ws, "all").await;
    plan_all(s, ws, b2, &plan(&[ch1, ch2])).await;
    let all = rows(s, ws, b2).await;
    let r = row_of(&all, lapsed);
    assert_eq!(
        (r.status, r.channel_id),
        (RecipientStatus::Planned, Some(ch1))
    );
    assert_eq!(row_of(&all, both).channel_id, Some(ch2));
    assert_counters(s, ws, b2).await;
}

async fn case_plan_segment_and_time_zones(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let vip1 = person(
        s,
        ws,
        vec![(ch, "1", subscribed(&[]))],
        &["vip"],
        Some("Europe/Moscow"),
    )
    .await
    .id;
    person(
        s,
        ws,
        vec![(ch, "2", subscribed(&[]))],
        &[],
        Some("Europe/Moscow"),
    )
    .await;
    let vip2 = person(s, ws, vec![(ch, "3", subscribed(&[]))], &["vip"], None)
        .await
        .id;
    let vip3 = person(
        s,
        ws,
        vec![(ch, "4", subscribed(&[]))],
        &["vip"],
        Some("Asia/Tokyo"),
    )
    .await
    .id;
    let tag = s
        .list_tags(ws)
        .await
        .expect("tags")
        .into_iter()
        .find(|t| t.name == "vip")
        .expect("vip tag")
        .id;
    let b = sending(s, ws, "B").await;
    let mut req = plan(&[ch]);
    req.segment = Some(Resolved::Leaf(Leaf::Tag(tag)));
    req.batch = 2;
    plan_all(s, ws, b, &req).await;
    let all = rows(s, ws, b).await;
    let mut contacts: Vec<ContactId> = all.iter().map(|r| r.contact_id).collect();
    contacts.sort();
    assert_eq!(contacts, vec![vip1, vip2, vip3]);
    assert_eq!(
        row_of(&all, vip1).time_zone.as_deref(),
        Some("Europe/Moscow")
    );

    let mut zones = s.planned_time_zones(ws, b).await.expect("zones");
    zones.sort();
    assert_eq!(
        zones,
        vec![
            None,
            Some("Asia/Tokyo".into()),
            Some("Europe/Moscow".into())
        ]
    );
    let later = now() + SignedDuration::from_hours(3);
    let n = s
        .set_local_times(
            ws,
            b,
            vec![(Some("Europe/Moscow".into()), later), (None, later)],
        )
        .await
        .expect("local times");
    assert_eq!(n, 2);
    let due_now = due(s, ws, b).await;
    assert_eq!(
        due_now.iter().map(|d| d.contact_id).collect::<Vec<_>>(),
        vec![vip3]
    );
    assert_eq!(due_now[0].profile.time_zone.as_deref(), Some("Asia/Tokyo"));
    assert_eq!(
        s.next_recipient_due(ws, b).await.expect("next"),
        row_of(&all, vip3).run_at
    );
}

async fn case_variants_are_stored_and_stable(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    for i in 0..60 {
        person(
            s,
            ws,
            vec![(ch, &format!("c{i}"), subscribed(&[]))],
            &[],
            None,
        )
        .await;
    }
    let b = sending(s, ws, "AB").await;
    let mut req = plan(&[ch]);
    req.percents = vec![30, 70];
    req.batch = 25;
    plan_all(s, ws, b, &req).await;
    let all = rows(s, ws, b).await;
    assert_eq!(all.len(), 60);
    for r in &all {
        assert_eq!(
            r.variant,
            assign_variant(b.0, r.contact_id.0, &[30, 70]),
            "stable hash"
        );
    }
    assert!(all.iter().any(|r| r.variant == 0) && all.iter().any(|r| r.variant == 1));
    let due_rows = due(s, ws, b).await;
    assert_eq!(due_rows.len(), 60);
    assert!(due_rows
        .iter()
        .all(|d| all.iter().any(|r| r.id == d.id && r.variant == d.variant)));
    assert_counters(s, ws, b).await;
}

async fn case_held_rows_and_winner(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    for i in 0..80 {
        person(
            s,
            ws,
            vec![(ch, &format!("c{i}"), subscribed(&[]))],
            &[],
            None,
        )
        .await;
    }
    let b = sending(s, ws, "winner").await;
    let mut req = plan(&[ch]);
    req.percents = vec![50, 50];
    req.test_percent = Some(25);
    plan_all(s, ws, b, &req).await;
    let all = rows(s, ws, b).await;
    let held: Vec<&Recipient> = all.iter().filter(|r| r.variant == HELD_VARIANT).collect();
    for r in &all {
        assert_eq!(
            r.variant == HELD_VARIANT,
            !in_test_group(b.0, r.contact_id.0, 25)
        );
        assert_eq!(
            r.run_at.is_none(),
            r.variant == HELD_VARIANT,
            "held rows wait for the winner"
        );
    }
    assert!(!held.is_empty() && held.len() < all.len());
    let test_group = all.len() - held.len();
    assert_eq!(
        due(s, ws, b).await.len(),
        test_group,
        "held rows are not due"
    );
    assert_counters(s, ws, b).await;

    // The test group is sent; drained ignoring the held rows, not otherwise.
    feed_all(s, ws, b).await;
    send_all(s, ch).await;
    assert!(s.broadcast_drained(ws, b, true).await.expect("drained"));
    assert!(!s.broadcast_drained(ws, b, false).await.expect("drained"));

    let at = now();
    let n = s.release_held(ws, b, 1, at).await.expect("release");
    assert_eq!(n as usize, held.len());
    assert_eq!(
        s.get_broadcast(ws, b).await.expect("get").winner_variant,
        Some(1)
    );
    let released = due(s, ws, b).await;
    assert_eq!(released.len(), held.len());
    assert!(released.iter().all(|d| d.variant == 1));
    assert_counters(s, ws, b).await;
}

async fn case_replanning_never_duplicates(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch1 = channel(s, ws, "one").await;
    let ch2 = channel(s, ws, "two").await;
    for i in 0..23 {
        let ids = match i % 3 {
            0 => vec![
                (ch1, format!("a{i}"), subscribed(&[])),
                (ch2, format!("b{i}"), subscribed(&[])),
            ],
            1 => vec![(ch1, format!("a{i}"), None)],
            _ => vec![],
        };
        let ids = ids
            .iter()
            .map(|(c, e, sub)| (*c, e.as_str(), sub.clone()))
            .collect();
        person(s, ws, ids, &[], None).await;
    }
    let other = workspace(s, "other").await;
    let och = channel(s, other, "bot").await;
    person(s, other, vec![(och, "x", subscribed(&[]))], &[], None).await;

    let b = sending(s, ws, "B").await;
    let mut req = plan(&[ch1, ch2]);
    req.batch = 4;
    // Interrupted: a pause stops planning half-way.
    for _ in 0..3 {
        let p = s.plan_broadcast_batch(ws, b, &req).await.expect("plan");
        assert!(!p.done);
    }
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Sending],
        BroadcastStatus::Paused,
        None,
        now(),
    )
    .await
    .expect("pause");
    let e = s
        .plan_broadcast_batch(ws, b, &req)
        .await
        .expect_err("paused");
    assert_eq!(code(e), "not_sending");
    assert!(s.get_broadcast(ws, b).await.expect("get").plan_cursor > 0);
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Paused],
        BroadcastStatus::Sending,
        None,
        now(),
    )
    .await
    .expect("resume");
    let batches = plan_all(s, ws, b, &req).await;
    assert!(batches >= 3, "small batches: {batches}");
    // Again once done: nothing changes.
    let again = s.plan_broadcast_batch(ws, b, &req).await.expect("again");
    assert_eq!(
        again,
        PlanProgress {
            done: true,
            ..PlanProgress::default()
        }
    );
    let all = rows(s, ws, b).await;
    assert_eq!(all.len(), 23 + 8, "one row per contact, plus 8 duplicates");
    let mut keys: Vec<(ContactId, Option<IdentityId>)> =
        all.iter().map(|r| (r.contact_id, r.identity_id)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "no duplicates");
    assert!(!s.broadcast_drained(ws, b, false).await.expect("drained"));
    assert_counters(s, ws, b).await;
    let c = counters(s, ws, b).await;
    assert_eq!(c.get(&(0, "planned".into())), Some(&8));
    assert_eq!(c.get(&(0, "skipped:not_subscribed".into())), Some(&8));
    assert_eq!(c.get(&(0, "skipped:no_identity".into())), Some(&7));
}

async fn case_feed_queue_skip_defer(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let c1 = person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None)
        .await
        .id;
    let c2 = person(s, ws, vec![(ch, "2", subscribed(&[]))], &[], None)
        .await
        .id;
    let c3 = person(s, ws, vec![(ch, "3", subscribed(&[]))], &[], None)
        .await
        .id;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let d = due(s, ws, b).await;
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].profile.first_name.as_deref(), Some("Olga"));
    assert_eq!(d[0].marketing_recent, 0);
    let id_of = |c: ContactId| d.iter().find(|x| x.contact_id == c).expect("due").id;
    let later = now() + SignedDuration::from_hours(1);
    let msg = OutboundMessage {
        text: Some("Sale!".into()),
        buttons: vec![Button::Postback {
            label: "Shop".into(),
            payload: "bc:1".into(),
        }],
        ..OutboundMessage::default()
    };
    let now = now();
    let out = s
        .feed_recipients(
            ws,
            b,
            None,
            vec![
                FeedDecision::Queue {
                    recipient: id_of(c1),
                    message: msg.clone(),
                },
                FeedDecision::Skip {
                    recipient: id_of(c2),
                    reason: SkipReason::FrequencyCap,
                },
                FeedDecision::Defer {
                    recipient: id_of(c3),
                    until: later,
                },
            ],
            now,
        )
        .await
        .expect("feed");
    assert_eq!(
        out,
        FeedOutcome {
            queued: 1,
            skipped: 1,
            deferred: 1
        }
    );
    let all = rows(s, ws, b).await;
    let r1 = row_of(&all, c1);
    assert_eq!(r1.status, RecipientStatus::Queued);
    let outbox = s
        .get_outbound(ws, r1.outbox_id.expect("outbox id"))
        .await
        .expect("outbox row");
    assert_eq!(outbox.purpose, Purpose::Marketing);
    assert_eq!(outbox.source, format!("broadcast:{}", b.0));
    assert_eq!(outbox.message, msg);
    assert_eq!(outbox.contact_id, c1);
    assert!(s
        .last_outbound_with_choices(ws, outbox.identity_id)
        .await
        .expect("choices")
        .is_some());
    let events = s
        .list_events(ws, c1, None, 100)
        .await
        .expect("events")
        .items;
    assert!(events.iter().any(|e| e.kind == "message_queued"));
    assert_eq!(
        (row_of(&all, c2).status, row_of(&all, c2).reason),
        (RecipientStatus::Skipped, Some(SkipReason::FrequencyCap))
    );
    assert_eq!(row_of(&all, c3).run_at, Some(later));
    assert!(due(s, ws, b).await.is_empty(), "deferred past now");
    assert_eq!(
        s.next_recipient_due(ws, b).await.expect("next"),
        Some(later)
    );
    // Deciding the same row twice does nothing the second time.
    let again = s
        .feed_recipients(ws, b, None, vec![queue(id_of(c1), "x")], now)
        .await
        .expect("again");
    assert_eq!(again, FeedOutcome::default());
    assert_counters(s, ws, b).await;
    // The frequency cap sees the queued marketing message.
    let b2 = sending(s, ws, "B2").await;
    plan_all(s, ws, b2, &plan(&[ch])).await;
    let d2 = due(s, ws, b2).await;
    let recent = d2
        .iter()
        .find(|x| x.contact_id == c1)
        .expect("due")
        .marketing_recent;
    assert_eq!(recent, 1);
}

async fn case_feed_rechecks_consent(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let quits = person(s, ws, vec![(ch, "1", subscribed(&["news"]))], &[], None).await;
    let narrows = person(s, ws, vec![(ch, "2", subscribed(&[]))], &[], None).await;
    let blocks = person(s, ws, vec![(ch, "3", subscribed(&[]))], &[], None).await;
    let erased = person(s, ws, vec![(ch, "4", subscribed(&[]))], &[], None).await;
    let stays = person(s, ws, vec![(ch, "5", subscribed(&["news"]))], &[], None).await;
    let b = sending(s, ws, "B").await;
    let mut req = plan(&[ch]);
    req.topic = Some("news".into());
    plan_all(s, ws, b, &req).await;
    let d = due(s, ws, b).await;
    assert_eq!(d.len(), 5);
    // Between planning and feeding, consent changes.
    s.set_subscription(
        ws,
        quits.id,
        quits.identities[0].id,
        change(SubscriptionState::Unsubscribed, &[]),
    )
    .await
    .expect("unsubscribe");
    s.set_subscription(
        ws,
        narrows.id,
        narrows.identities[0].id,
        change(SubscriptionState::Subscribed, &["other"]),
    )
    .await
    .expect("narrow topics");
    s.set_subscription(
        ws,
        blocks.id,
        blocks.identities[0].id,
        change(SubscriptionState::Blocked, &[]),
    )
    .await
    .expect("block");
    let decisions = d.iter().map(|x| queue(x.id, "Hi")).collect();
    s.erase_contact(ws, erased.id).await.expect("erase");
    let out = s
        .feed_recipients(ws, b, Some("news"), decisions, now())
        .await
        .expect("feed");
    // The erased contact's row was skipped by the erasure itself.
    assert_eq!((out.queued, out.skipped), (1, 3));
    let all = rows(s, ws, b).await;
    let reason = |c: ContactId| row_of(&all, c).reason;
    assert_eq!(reason(quits.id), Some(SkipReason::NotSubscribed));
    assert_eq!(reason(narrows.id), Some(SkipReason::TopicNotSubscribed));
    assert_eq!(reason(blocks.id), Some(SkipReason::Blocked));
    assert_eq!(reason(erased.id), Some(SkipReason::ContactErased));
    assert_eq!(row_of(&all, stays.id).status, RecipientStatus::Queued);
    let counts = s.outbox_counts(Some(ch)).await.expect("outbox");
    assert_eq!(
        counts[0],
        (OutboxState::Queued, 1),
        "only the consenting one is queued"
    );
    assert_counters(s, ws, b).await;
}

async fn case_feed_does_nothing_unless_sending(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None).await;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let d = due(s, ws, b).await;
    // The feeder read its rows, then the broadcast was paused.
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Sending],
        BroadcastStatus::Paused,
        None,
        now(),
    )
    .await
    .expect("pause");
    let out = s
        .feed_recipients(ws, b, None, vec![queue(d[0].id, "Hi")], now())
        .await
        .expect("feed");
    assert_eq!(out, FeedOutcome::default());
    let skip = s
        .feed_recipients(
            ws,
            b,
            None,
            vec![FeedDecision::Skip {
                recipient: d[0].id,
                reason: SkipReason::FrequencyCap,
            }],
            now(),
        )
        .await
        .expect("feed");
    assert_eq!(skip, FeedOutcome::default());
    assert_eq!(rows(s, ws, b).await[0].status, RecipientStatus::Planned);
    assert_eq!(s.outbox_counts(Some(ch)).await.expect("outbox")[0].1, 0);
    assert_counters(s, ws, b).await;
}

async fn case_pause_pulls_back_queued_rows(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    for i in 0..4 {
        person(
            s,
            ws,
            vec![(ch, &format!("c{i}"), subscribed(&[]))],
            &[],
            None,
        )
        .await;
    }
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    assert_eq!(feed_all(s, ws, b).await.queued, 4);
    // One message is out with a worker when the pause comes.
    let claimed = s
        .claim_outbox(ch, 1, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Sending],
        BroadcastStatus::Paused,
        None,
        now(),
    )
    .await
    .expect("pause");
    let counts: BTreeMap<&str, u64> = s
        .outbox_counts(Some(ch))
        .await
        .expect("outbox")
        .into_iter()
        .map(|(st, n)| (st.as_str(), n))
        .collect();
    assert_eq!(
        (counts["queued"], counts["sending"]),
        (0, 1),
        "queued rows deleted, sending kept"
    );
    let all = rows(s, ws, b).await;
    assert_eq!(
        all.iter()
            .filter(|r| r.status == RecipientStatus::Planned)
            .count(),
        3
    );
    let busy: Vec<&Recipient> = all
        .iter()
        .filter(|r| r.status == RecipientStatus::Queued)
        .collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].outbox_id, Some(claimed[0].id));
    assert!(all
        .iter()
        .filter(|r| r.status == RecipientStatus::Planned)
        .all(|r| r.outbox_id.is_none() && r.queued_at.is_none()));
    assert_counters(s, ws, b).await;
    // The message in flight finishes.
    s.complete_outbox(vec![OutboxResult {
        id: claimed[0].id,
        parts_sent: 1,
        provider_message_ids: vec!["pm-1".into()],
        outcome: SendOutcome::Sent,
    }])
    .await
    .expect("complete");
    assert_counters(s, ws, b).await;
    // Resumed, the rest goes, each once.
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Paused],
        BroadcastStatus::Sending,
        None,
        now(),
    )
    .await
    .expect("resume");
    assert_eq!(feed_all(s, ws, b).await.queued, 3);
    assert_eq!(send_all(s, ch).await, 3);
    assert!(s.broadcast_drained(ws, b, false).await.expect("drained"));
    let c = counters(s, ws, b).await;
    assert_eq!(c.get(&(0, "sent".into())), Some(&4));
    assert_eq!(c.get(&(0, "queued".into())), None);
    assert_counters(s, ws, b).await;
}

async fn case_cancel_skips_the_rest(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    for i in 0..5 {
        person(
            s,
            ws,
            vec![(ch, &format!("c{i}"), subscribed(&[]))],
            &[],
            None,
        )
        .await;
    }
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let d = due(s, ws, b).await;
    s.feed_recipients(
        ws,
        b,
        None,
        vec![queue(d[0].id, "a"), queue(d[1].id, "b")],
        now(),
    )
    .await
    .expect("feed");
    let claimed = s
        .claim_outbox(ch, 1, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let x = s
        .transition_broadcast(
            ws,
            b,
            &[BroadcastStatus::Sending],
            BroadcastStatus::Cancelled,
            None,
            now(),
        )
        .await
        .expect("cancel");
    assert!(x.finished_at.is_some());
    let all = rows(s, ws, b).await;
    let cancelled = all
        .iter()
        .filter(|r| r.reason == Some(SkipReason::Cancelled))
        .count();
    assert_eq!(cancelled, 4, "the planned rows and the pulled-back one");
    assert_eq!(
        all.iter()
            .filter(|r| r.status == RecipientStatus::Queued)
            .count(),
        1
    );
    assert!(
        !s.broadcast_drained(ws, b, false).await.expect("drained"),
        "one in flight"
    );
    send_all(s, ch).await;
    s.complete_outbox(vec![OutboxResult {
        id: claimed[0].id,
        parts_sent: 0,
        provider_message_ids: vec![],
        outcome: SendOutcome::Failed {
            reason: "chat not found".into(),
        },
    }])
    .await
    .expect("complete");
    assert!(s.broadcast_drained(ws, b, false).await.expect("drained"));
    let c = counters(s, ws, b).await;
    assert_eq!(c.get(&(0, "failed".into())), Some(&1));
    assert_eq!(c.get(&(0, "skipped:cancelled".into())), Some(&4));
    assert_counters(s, ws, b).await;
}

async fn case_complete_outbox_updates_recipients(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let ok = person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None).await;
    let bad = person(s, ws, vec![(ch, "2", subscribed(&[]))], &[], None).await;
    let blocks = person(s, ws, vec![(ch, "3", subscribed(&[]))], &[], None).await;
    let retry = person(s, ws, vec![(ch, "4", subscribed(&[]))], &[], None).await;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    feed_all(s, ws, b).await;
    let claimed = s
        .claim_outbox(ch, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let of = |c: ContactId| {
        claimed
            .iter()
            .find(|o| o.contact_id == c)
            .expect("claimed")
            .id
    };
    let at_retry = now() + SignedDuration::from_hours(1);
    s.complete_outbox(vec![
        OutboxResult {
            id: of(ok.id),
            parts_sent: 2,
            provider_message_ids: vec!["pm-a".into(), "pm-b".into()],
            outcome: SendOutcome::Sent,
        },
        OutboxResult {
            id: of(bad.id),
            parts_sent: 0,
            provider_message_ids: vec![],
            outcome: SendOutcome::Failed {
                reason: "bad request".into(),
            },
        },
        OutboxResult {
            id: of(blocks.id),
            parts_sent: 0,
            provider_message_ids: vec![],
            outcome: SendOutcome::Blocked {
                reason: "bot was blocked".into(),
            },
        },
        OutboxResult {
            id: of(retry.id),
            parts_sent: 0,
            provider_message_ids: vec![],
            outcome: SendOutcome::Retry {
                at: at_retry,
                error: "429".into(),
            },
        },
    ])
    .await
    .expect("complete");
    let all = rows(s, ws, b).await;
    let r = row_of(&all, ok.id);
    assert_eq!(r.status, RecipientStatus::Sent);
    assert_eq!(
        r.provider_message_id.as_deref(),
        Some("pm-a"),
        "the first part's id"
    );
    assert!(r.sent_at.is_some());
    assert_eq!(row_of(&all, bad.id).status, RecipientStatus::Failed);
    assert_eq!(row_of(&all, blocks.id).status, RecipientStatus::Failed);
    assert_eq!(
        row_of(&all, retry.id).status,
        RecipientStatus::Queued,
        "a retry stays queued"
    );
    assert_eq!(
        s.recipient_by_message(ws, ok.identities[0].id, "pm-a")
            .await
            .expect("by message"),
        Some(r.id)
    );
    assert_eq!(
        s.recipient_by_message(ws, ok.identities[0].id, "nope")
            .await
            .expect("by message"),
        None
    );
    let (bid, got) = s.get_recipient(ws, r.id).await.expect("get");
    assert_eq!((bid, &got), (b, r));
    assert!(
        !s.broadcast_drained(ws, b, false).await.expect("drained"),
        "the retry is pending"
    );
    assert_counters(s, ws, b).await;
    let c = counters(s, ws, b).await;
    assert_eq!(
        (
            c.get(&(0, "sent".into())),
            c.get(&(0, "failed".into())),
            c.get(&(0, "queued".into()))
        ),
        (Some(&1), Some(&2), Some(&1))
    );
    // A second answer for the same message changes nothing.
    s.complete_outbox(vec![OutboxResult {
        id: of(ok.id),
        parts_sent: 1,
        provider_message_ids: vec!["pm-z".into()],
        outcome: SendOutcome::Failed {
            reason: "late".into(),
        },
    }])
    .await
    .expect("complete again");
    assert_eq!(counters(s, ws, b).await, c);
}

async fn case_signals_count_once(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let c1 = person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None)
        .await
        .id;
    let c2 = person(s, ws, vec![(ch, "2", subscribed(&[]))], &[], None)
        .await
        .id;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    feed_all(s, ws, b).await;
    send_all(s, ch).await;
    let all = rows(s, ws, b).await;
    let r1 = row_of(&all, c1).id;
    let r2 = row_of(&all, c2).id;
    let at = now();
    assert!(s
        .record_recipient_signal(ws, r1, RecipientSignal::Delivered, at)
        .await
        .expect("d"));
    assert!(!s
        .record_recipient_signal(ws, r1, RecipientSignal::Delivered, at)
        .await
        .expect("d again"));
    assert!(s
        .record_recipient_signal(ws, r1, RecipientSignal::Read, at)
        .await
        .expect("r"));
    assert!(!s
        .record_recipient_signal(ws, r1, RecipientSignal::Read, at)
        .await
        .expect("r again"));
    assert!(s
        .record_recipient_signal(ws, r1, RecipientSignal::Clicked, at)
        .await
        .expect("c"));
    // A click without a read receipt: clicked, not read.
    assert!(s
        .record_recipient_signal(ws, r2, RecipientSignal::Clicked, at)
        .await
        .expect("c2"));
    assert!(!s
        .record_recipient_signal(ws, r2, RecipientSignal::Clicked, at)
        .await
        .expect("c2 again"));
    // A late delivery report does not move a clicked row back.
    assert!(s
        .record_recipient_signal(ws, r2, RecipientSignal::Delivered, at)
        .await
        .expect("d2"));
    let all = rows(s, ws, b).await;
    let x1 = row_of(&all, c1);
    let x2 = row_of(&all, c2);
    assert_eq!(x1.status, RecipientStatus::Clicked);
    assert_eq!(
        (x1.delivered_at, x1.read_at, x1.clicked_at),
        (Some(at), Some(at), Some(at))
    );
    assert_eq!((x2.status, x2.read_at), (RecipientStatus::Clicked, None));
    let c = counters(s, ws, b).await;
    assert_eq!(c.get(&(0, "delivered".into())), Some(&2));
    assert_eq!(c.get(&(0, "read".into())), Some(&1));
    assert_eq!(c.get(&(0, "clicked".into())), Some(&2));
    assert_eq!(c.get(&(0, "sent".into())), Some(&2));
    assert_counters(s, ws, b).await;
    assert!(matches!(
        s.record_recipient_signal(ws, RecipientId(999_999), RecipientSignal::Read, at)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn case_follow_ups(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch1 = channel(s, ws, "one").await;
    let ch2 = channel(s, ws, "two").await;
    let reader = person(
        s,
        ws,
        vec![(ch1, "1", subscribed(&[])), (ch2, "1b", subscribed(&[]))],
        &[],
        None,
    )
    .await;
    let clicker = person(s, ws, vec![(ch1, "2", subscribed(&[]))], &[], None).await;
    let silent = person(
        s,
        ws,
        vec![(ch1, "3", subscribed(&[])), (ch2, "3b", subscribed(&[]))],
        &[],
        None,
    )
    .await;
    let only_one = person(s, ws, vec![(ch1, "4", subscribed(&[]))], &[], None).await;
    let off = person(
        s,
        ws,
        vec![(ch1, "5", subscribed(&[])), (ch2, "5b", unsubscribed())],
        &[],
        None,
    )
    .await;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch1])).await;
    feed_all(s, ws, b).await;
    send_all(s, ch1).await;
    let all = rows(s, ws, b).await;
    let at = now();
    s.record_recipient_signal(ws, row_of(&all, reader.id).id, RecipientSignal::Read, at)
        .await
        .expect("read");
    s.record_recipient_signal(
        ws,
        row_of(&all, clicker.id).id,
        RecipientSignal::Clicked,
        at,
    )
    .await
    .expect("clicked");

    let cap = at - SignedDuration::from_hours(24);
    let later = now() + SignedDuration::from_secs(5);
    let mut req = FollowUpRequest {
        if_not: Engagement::Read,
        sent_before: later,
        channel: None,
        topic: None,
        limit: 100,
    };
    // Not yet: nothing was sent long enough ago.
    req.sent_before = at - SignedDuration::from_hours(1);
    assert!(s
        .follow_up_due(ws, b, &req, cap)
        .await
        .expect("due")
        .is_empty());
    req.sent_before = later;
    let due_same = s.follow_up_due(ws, b, &req, cap).await.expect("due");
    let mut got: Vec<ContactId> = due_same.iter().map(|d| d.recipient.contact_id).collect();
    got.sort();
    assert_eq!(
        got,
        vec![silent.id, only_one.id, off.id],
        "no read, no click"
    );
    assert!(due_same
        .iter()
        .all(|d| d.target == Some((d.recipient.identity_id, d.recipient.channel_id))));
    assert_eq!(due_same[0].recipient.marketing_recent, 1);
    req.if_not = Engagement::Clicked;
    assert_eq!(
        s.follow_up_due(ws, b, &req, cap).await.expect("due").len(),
        4,
        "the reader too"
    );

    // On the other channel.
    req.if_not = Engagement::Read;
    req.channel = Some(ch2);
    let due_other = s.follow_up_due(ws, b, &req, cap).await.expect("due");
    let target = |c: ContactId| {
        due_other
            .iter()
            .find(|d| d.recipient.contact_id == c)
            .expect("due")
            .target
    };
    assert_eq!(target(silent.id), Some((silent.identities[1].id, ch2)));
    assert_eq!(target(only_one.id), None);
    assert_eq!(
        target(off.id),
        Some((off.identities[1].id, ch2)),
        "the identity, even unsubscribed"
    );
    let rid = |c: ContactId| {
        due_other
            .iter()
            .find(|d| d.recipient.contact_id == c)
            .expect("due")
            .recipient
            .id
    };
    let out = s
        .feed_follow_ups(
            ws,
            b,
            None,
            vec![
                (queue(rid(silent.id), "Still there?"), target(silent.id)),
                (queue(rid(only_one.id), "Still there?"), None),
                (queue(rid(off.id), "Still there?"), target(off.id)),
            ],
            now(),
        )
        .await
        .expect("feed follow-ups");
    assert_eq!((out.queued, out.skipped), (1, 2));
    assert!(
        s.follow_up_due(ws, b, &req, cap)
            .await
            .expect("due")
            .is_empty(),
        "decided"
    );
    let all = rows(s, ws, b).await;
    let r = row_of(&all, silent.id);
    let fu = s
        .get_outbound(ws, r.follow_up_outbox_id.expect("follow-up queued"))
        .await
        .expect("follow-up");
    assert_eq!((fu.channel_id, fu.purpose), (ch2, Purpose::Marketing));
    assert_eq!(
        row_of(&all, only_one.id).follow_up_reason,
        Some(SkipReason::NoIdentity)
    );
    assert_eq!(
        row_of(&all, off.id).follow_up_reason,
        Some(SkipReason::NotSubscribed)
    );
    assert_counters(s, ws, b).await;
    assert_eq!(send_all(s, ch2).await, 1);
    let all_counters = s.broadcast_counters(ws, b).await.expect("counters");
    assert!(all_counters
        .iter()
        .any(|c| c.key == "follow_up_sent" && c.n == 1));
    let r = row_of(&rows(s, ws, b).await, silent.id).clone();
    assert_eq!(
        r.status,
        RecipientStatus::Sent,
        "the follow-up leaves the row's status alone"
    );
    assert_counters(s, ws, b).await;
}

async fn case_recall(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let mut people = Vec::new();
    for i in 0..3 {
        people.push(
            person(
                s,
                ws,
                vec![(ch, &format!("c{i}"), subscribed(&[]))],
                &[],
                None,
            )
            .await
            .id,
        );
    }
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let before = now() - SignedDuration::from_hours(1);
    feed_all(s, ws, b).await;
    send_all(s, ch).await;
    let targets = s
        .recall_targets(ws, b, before, None, 2)
        .await
        .expect("targets");
    assert_eq!(targets.len(), 2, "a page");
    assert!(targets
        .iter()
        .all(|t| t.channel_id == ch && t.provider_message_ids.len() == 2));
    let rest = s
        .recall_targets(ws, b, before, Some(targets[1].recipient), 10)
        .await
        .expect("next page");
    assert_eq!(rest.len(), 1);
    assert!(s
        .recall_targets(ws, b, now() + SignedDuration::from_secs(5), None, 10)
        .await
        .expect("too old")
        .is_empty());
    let at = now();
    s.record_recalls(
        ws,
        b,
        vec![
            RecallResult {
                recipient: targets[0].recipient,
                outcome: Ok(()),
            },
            RecallResult {
                recipient: targets[1].recipient,
                outcome: Err("message can't be deleted".into()),
            },
        ],
        at,
    )
    .await
    .expect("record");
    // Recorded twice: counted once.
    s.record_recalls(
        ws,
        b,
        vec![RecallResult {
            recipient: targets[0].recipient,
            outcome: Ok(()),
        }],
        at,
    )
    .await
    .expect("record again");
    let left = s
        .recall_targets(ws, b, before, None, 10)
        .await
        .expect("targets");
    assert_eq!(left.len(), 2, "the recalled one is gone");
    let (_, r) = s
        .get_recipient(ws, targets[0].recipient)
        .await
        .expect("get");
    assert_eq!(r.recalled_at, Some(at));
    let c = counters(s, ws, b).await;
    assert_eq!(c.get(&(0, "recalled".into())), Some(&1));
    assert_counters(s, ws, b).await;
    let mut kinds = Vec::new();
    for p in &people {
        let ev = s
            .list_events(ws, *p, None, 100)
            .await
            .expect("events")
            .items;
        kinds.extend(
            ev.into_iter()
                .filter(|e| e.kind.contains("recall"))
                .map(|e| e.kind),
        );
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "message_recall_failed".to_string(),
            "message_recalled".to_string()
        ]
    );
}

async fn case_erasure_blanks_recipients(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let waiting = person(
        s,
        ws,
        vec![(ch, "1", subscribed(&[]))],
        &[],
        Some("Pacific/Kiritimati"),
    )
    .await
    .id;
    let queued = person(
        s,
        ws,
        vec![(ch, "2", subscribed(&[]))],
        &[],
        Some("Pacific/Kiritimati"),
    )
    .await
    .id;
    let sent = person(
        s,
        ws,
        vec![(ch, "3", subscribed(&[]))],
        &[],
        Some("Pacific/Kiritimati"),
    )
    .await
    .id;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let d = due(s, ws, b).await;
    let rid = |c: ContactId| d.iter().find(|x| x.contact_id == c).expect("due").id;
    s.feed_recipients(ws, b, None, vec![queue(rid(sent), "a")], now())
        .await
        .expect("feed");
    send_all(s, ch).await;
    s.feed_recipients(ws, b, None, vec![queue(rid(queued), "b")], now())
        .await
        .expect("feed");
    for c in [waiting, queued, sent] {
        s.erase_contact(ws, c).await.expect("erase");
    }
    let all = rows(s, ws, b).await;
    assert_eq!(
        row_of(&all, waiting).reason,
        Some(SkipReason::ContactErased)
    );
    assert_eq!(row_of(&all, queued).reason, Some(SkipReason::ContactErased));
    let r = row_of(&all, sent);
    assert_eq!(
        (r.status, r.provider_message_id.as_deref()),
        (RecipientStatus::Sent, None)
    );
    assert!(all.iter().all(|r| r.time_zone.is_none()));
    assert!(s
        .find_text_everywhere("Pacific/Kiritimati")
        .await
        .expect("audit")
        .is_empty());
    assert!(s.broadcast_drained(ws, b, false).await.expect("drained"));
    assert_counters(s, ws, b).await;
}

async fn case_workspace_isolation(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let other = workspace(s, "other").await;
    let ch = channel(s, ws, "bot").await;
    person(s, ws, vec![(ch, "1", subscribed(&[]))], &[], None).await;
    let b = sending(s, ws, "B").await;
    plan_all(s, ws, b, &plan(&[ch])).await;
    let r = rows(s, ws, b).await[0].id;
    assert!(matches!(
        s.get_broadcast(other, b).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.list_recipients(other, b, RecipientQuery::default()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_recipient(other, r).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.plan_broadcast_batch(other, b, &plan(&[ch])).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.broadcast_counters(other, b).await,
        Err(StoreError::NotFound { .. })
    ));
    let out = s
        .feed_recipients(other, b, None, vec![queue(r, "x")], now())
        .await;
    assert!(matches!(out, Err(StoreError::NotFound { .. })));
    assert!(s.list_broadcasts(other).await.expect("list").is_empty());
    // The same name is free in another workspace.
    s.create_broadcast(other, "B", spec())
        .await
        .expect("same name elsewhere");
}

/// Planning speed on SQLite: a million contacts (a tenth on two channels) planned in
/// batches; prints the total and the longest batch. Run with
/// `cargo test -p voronka-store --test broadcasts -- --ignored --nocapture plan_speed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: imports a million contacts"]
async fn plan_speed_sqlite() {
    let Some(t) = fresh_store(Backend::Sqlite).await else {
        return;
    };
    let s = &t.store;
    let n: u64 = std::env::var("PLAN_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let batch: u32 = std::env::var("PLAN_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let ws = workspace(s, "w").await;
    let ch1 = channel(s, ws, "one").await;
    let ch2 = channel(s, ws, "two").await;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for i in 0..n {
        rows.push(ImportRow {
            line: i + 1,
            profile: Profile {
                first_name: Some(format!("P{i}")),
                ..Profile::default()
            },
            source: None,
            identity: Some((ch1, format!("a{i}"))),
            subscription: if i % 7 == 0 { None } else { subscribed(&[]) },
            tags: vec![],
            fields: vec![],
        });
        if i % 10 == 0 {
            rows.push(ImportRow {
                line: i + 1,
                profile: Profile::default(),
                source: None,
                identity: Some((ch2, format!("b{i}"))),
                subscription: subscribed(&[]),
                tags: vec![],
                fields: vec![],
            });
        }
        if rows.len() >= 5000 {
            s.import_contacts(ws, std::mem::take(&mut rows))
                .await
                .expect("import");
        }
    }
    if !rows.is_empty() {
        s.import_contacts(ws, rows).await.expect("import");
    }
    eprintln!("imported {n} contacts in {:?}", started.elapsed());
    let b = sending(s, ws, "speed").await;
    let mut req = plan(&[ch1, ch2]);
    req.batch = batch;
    req.percents = vec![50, 50];
    let started = std::time::Instant::now();
    let mut longest = Duration::ZERO;
    let mut planned = 0;
    let mut batches = 0;
    loop {
        let t0 = std::time::Instant::now();
        let p = s.plan_broadcast_batch(ws, b, &req).await.expect("plan");
        longest = longest.max(t0.elapsed());
        planned += p.planned + p.skipped;
        batches += 1;
        if p.done {
            break;
        }
    }
    eprintln!(
        "planned {planned} rows of {n} contacts in {:?}: {batches} batches of {batch}, longest {:?}",
        started.elapsed(),
        longest
    );
    let t0 = std::time::Instant::now();
    let d = s
        .due_recipients(
            ws,
            b,
            None,
            now() + SignedDuration::from_secs(1),
            now(),
            true,
            500,
        )
        .await
        .expect("due");
    eprintln!("due_recipients(500) in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let decisions = d.iter().map(|x| queue(x.id, "Hi")).collect();
    s.feed_recipients(ws, b, None, decisions, now())
        .await
        .expect("feed");
    eprintln!("feed_recipients(500) in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Sending],
        BroadcastStatus::Paused,
        None,
        now(),
    )
    .await
    .expect("pause");
    eprintln!("pause in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    s.transition_broadcast(
        ws,
        b,
        &[BroadcastStatus::Paused],
        BroadcastStatus::Cancelled,
        None,
        now(),
    )
    .await
    .expect("cancel");
    eprintln!("cancel in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    s.delete_broadcast(ws, b).await.expect("delete");
    eprintln!("delete in {:?}", t0.elapsed());
}
