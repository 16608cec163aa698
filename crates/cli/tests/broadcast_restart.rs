//! Broadcasts survive hard kills (SIGKILL of `voronka serve`):
//!
//! - planning interrupted after a few batches continues where it stopped, and a kill in
//!   the middle of sending loses nothing: after the restart every recipient appears once
//!   in the report and every chat got the message once, except messages that were in
//!   flight (claimed, not yet recorded) at the kill;
//! - a broadcast scheduled while the server is down fires once it is back.
//!
//! The interrupted planning is produced with the very batches the planner commits (one
//! transaction each), so the state is exactly what a crash between two batches leaves.

mod common;

use common::{server_log, Server};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use voronka_core::broadcast::{BroadcastStatus, RecipientStatus};
use voronka_core::crypto::SecretKey;
use voronka_core::{BroadcastId, ChannelId, ContactId, WorkspaceId};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_store::testing::{fresh_store, Backend};
use voronka_store::{
    DynStore, OutboxState, PlanRequest, RecipientQuery, WorkspaceSettings, HELD_VARIANT,
};

const TEXT: &str = "Black Friday: everything -30% until Sunday.";

fn token(bot: u32) -> String {
    format!("{}:CASTtoken{bot:0>10}", 5000 + bot)
}

fn user(bot: u32, i: u32) -> i64 {
    6_000_000 + i64::from(bot) * 1_000 + i64::from(i)
}

/// Bots, subscribers per bot.
type Shape = (u32, u32);

/// Workspace with quiet hours and the frequency cap off (the scenarios are about crash
/// safety, not about those rules), bots and subscribed contacts.
async fn seed(
    store: &DynStore,
    key: &SecretKey,
    fake: &FakeTelegram,
    shape: Shape,
) -> (WorkspaceId, Vec<(ContactId, ChannelId)>) {
    let ws = store
        .create_workspace("Broadcast restart")
        .await
        .expect("workspace")
        .id;
    store
        .set_workspace_settings(
            ws,
            WorkspaceSettings {
                quiet_from: None,
                quiet_to: None,
                frequency_cap: None,
                ..WorkspaceSettings::default()
            },
        )
        .await
        .expect("settings");
    for b in 0..shape.0 {
        fake.add_bot(&token(b), &format!("cast_{b}_bot"));
        for i in 0..shape.1 {
            fake.add_user(user(b, i), "User", None, None, None);
            fake.open_chat(&token(b), user(b, i)).expect("open chat");
        }
    }
    let contacts =
        common::subscribed_contacts(store, key, ws, "cast-restart", shape, token, user).await;
    (ws, contacts)
}

/// A one-variant broadcast to everyone.
async fn create(store: &DynStore, ws: WorkspaceId, name: &str) -> BroadcastId {
    store
        .create_broadcast(
            ws,
            name,
            json!({
                "channels": "all",
                "variants": [{"key": "A", "percent": 100, "message": {"text": TEXT}}],
                "schedule": "now"
            }),
        )
        .await
        .expect("create broadcast")
        .id
}

/// Per chat, how many times it got the text.
fn deliveries(fake: &FakeTelegram, shape: Shape) -> Vec<usize> {
    (0..shape.0)
        .flat_map(|b| (0..shape.1).map(move |i| (b, i)))
        .map(|(b, i)| {
            fake.messages_to(&token(b), user(b, i))
                .iter()
                .filter(|m| m.text.as_deref() == Some(TEXT))
                .count()
        })
        .collect()
}

/// Waits until the broadcast is finished (or fails the test after `limit`).
async fn wait_finished(
    store: &DynStore,
    ws: WorkspaceId,
    id: BroadcastId,
    limit: Duration,
    what: &str,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        let b = store.get_broadcast(ws, id).await.expect("broadcast");
        if b.status == BroadcastStatus::Finished {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not finished after {limit:?}: {:?}; counters {:?}; log: {}",
            b.status,
            store.broadcast_counters(ws, id).await.ok(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every recipient row of the broadcast, by contact.
async fn recipients_by_contact(
    store: &DynStore,
    ws: WorkspaceId,
    id: BroadcastId,
) -> HashMap<ContactId, Vec<RecipientStatus>> {
    let mut all: HashMap<ContactId, Vec<RecipientStatus>> = HashMap::new();
    let mut after = None;
    loop {
        let page = store
            .list_recipients(
                ws,
                id,
                RecipientQuery {
                    after,
                    limit: 1000,
                    ..RecipientQuery::default()
                },
            )
            .await
            .expect("recipients");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for r in page {
            all.entry(r.contact_id).or_default().push(r.status);
        }
    }
    all
}

/// One scenario at a time: two servers at once would slow each other down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn kill_while_planning_and_sending(backend: Backend, name: &str) {
    let _one_at_a_time = SERIAL.lock().await;
    let Some(db) = fresh_store(backend).await else {
        return;
    };
    // 20 bots at 30 messages/s each: sending the 2,000 takes about 3.3 s, long enough to
    // kill it half-way.
    let shape: Shape = (20, 100);
    let total = u64::from(shape.0 * shape.1);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    let store = db.store.clone();
    let (ws, contacts) = seed(&store, &key, &fake, shape).await;
    let id = create(&store, ws, "Black Friday").await;
    let now = jiff::Timestamp::now();
    store
        .transition_broadcast(
            ws,
            id,
            &[BroadcastStatus::Draft],
            BroadcastStatus::Sending,
            Some(now),
            now,
        )
        .await
        .expect("to sending");
    // The crash during planning: three batches committed, then nothing.
    let channels: Vec<ChannelId> = {
        let mut c: Vec<ChannelId> = contacts.iter().map(|(_, ch)| *ch).collect();
        c.dedup();
        c
    };
    let req = PlanRequest {
        segment: None,
        channels,
        preferred_only: false,
        topic: None,
        percents: vec![100],
        test_percent: None,
        run_at: now,
        batch: 300,
    };
    for _ in 0..3 {
        let p = store
            .plan_broadcast_batch(ws, id, &req)
            .await
            .expect("plan batch");
        assert!(!p.done, "{name}: planning ended too early: {p:?}");
    }
    let partial = recipients_by_contact(&store, ws, id).await;
    assert_eq!(partial.len(), 900, "{name}: three batches of 300");
    assert_eq!(fake.stats().sent_messages, 0);

    // Up: planning continues, sending starts; killed half-way through sending.
    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 1, 10);
    server.wait_ready(dir.path(), 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.stats().sent_messages < total / 4 {
        assert!(
            Instant::now() < deadline,
            "{name}: only {} sent after 60 s; log: {}",
            fake.stats().sent_messages,
            server_log(dir.path(), 1)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let at_kill = fake.stats().sent_messages;
    let outbox = store.outbox_counts(None).await.expect("outbox counts");
    let in_flight = common::count(&outbox, OutboxState::Sending);
    println!("{name}: killed after {at_kill} of {total} sent; outbox at the kill {outbox:?}");
    assert!(
        at_kill < total,
        "{name}: everything was sent before the kill; the scenario proves nothing"
    );

    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 2, 10);
    wait_finished(&store, ws, id, Duration::from_secs(90), name, || {
        server_log(dir.path(), 2)
    })
    .await;
    // Anything sent twice would arrive now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();

    let by_contact = recipients_by_contact(&store, ws, id).await;
    assert_eq!(
        by_contact.len() as u64,
        total,
        "{name}: one row per contact"
    );
    for (contact, rows) in &by_contact {
        assert_eq!(
            rows,
            &[RecipientStatus::Sent],
            "{name}: contact {contact} in the report"
        );
    }
    let counters = store.broadcast_counters(ws, id).await.expect("counters");
    let sum = |key: &str| -> u64 {
        counters
            .iter()
            .filter(|c| c.key == key && c.variant != HELD_VARIANT)
            .map(|c| c.n)
            .sum()
    };
    // Counters hold each recipient under its current status.
    let rows: u64 = counters
        .iter()
        .filter(|c| c.variant != HELD_VARIANT)
        .map(|c| c.n)
        .sum();
    assert_eq!(rows, total, "{name}: counters {counters:?}");
    assert_eq!(sum("sent"), total, "{name}: counters {counters:?}");
    let got = deliveries(&fake, shape);
    let missing = got.iter().filter(|n| **n == 0).count();
    let extra: usize = got.iter().map(|n| n.saturating_sub(1)).sum();
    println!(
        "{name}: after the restart every chat got the message; {extra} duplicates (at most {in_flight} were in flight at the kill)"
    );
    assert_eq!(missing, 0, "{name}: chats without the message");
    assert!(
        extra as u64 <= in_flight,
        "{name}: {extra} duplicate sends but only {in_flight} were in flight"
    );
    fake.shutdown();
}

async fn scheduled_fires_after_restart(backend: Backend, name: &str) {
    let _one_at_a_time = SERIAL.lock().await;
    let Some(db) = fresh_store(backend).await else {
        return;
    };
    let shape: Shape = (1, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    let store = db.store.clone();
    let (ws, _) = seed(&store, &key, &fake, shape).await;
    let id = create(&store, ws, "Tomorrow's digest").await;
    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 1, 10);
    server.wait_ready(dir.path(), 1).await;
    let now = jiff::Timestamp::now();
    let at = now + jiff::SignedDuration::from_secs(3);
    store
        .transition_broadcast(
            ws,
            id,
            &[BroadcastStatus::Draft],
            BroadcastStatus::Scheduled,
            Some(at),
            now,
        )
        .await
        .expect("schedule");
    server.kill();
    // Down past the send time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.stats().sent_messages, 0, "{name}: sent while down");
    assert_eq!(
        store.get_broadcast(ws, id).await.expect("broadcast").status,
        BroadcastStatus::Scheduled
    );
    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 2, 10);
    wait_finished(&store, ws, id, Duration::from_secs(30), name, || {
        server_log(dir.path(), 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    assert_eq!(
        deliveries(&fake, shape),
        vec![1; 5],
        "{name}: one message per chat"
    );
    let b = store.get_broadcast(ws, id).await.expect("broadcast");
    assert!(
        b.started_at.is_some_and(|s| s >= at),
        "{name}: started {:?}, scheduled for {at}",
        b.started_at
    );
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_broadcast_survives_kills_during_planning_and_sending() {
    kill_while_planning_and_sending(Backend::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_broadcast_survives_kills_during_planning_and_sending() {
    kill_while_planning_and_sending(Backend::Postgres, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_scheduled_broadcast_fires_after_a_restart() {
    scheduled_fires_after_restart(Backend::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scheduled_broadcast_fires_after_a_restart() {
    scheduled_fires_after_restart(Backend::Postgres, "postgres").await;
}
