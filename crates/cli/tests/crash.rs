//! Crash safety of the outbox: start sending 5,000 messages, kill the server process
//! hard (SIGKILL) mid-way, restart it: every message is delivered, and duplicates are at
//! most the number of messages that were in flight (`sending`) at the kill.

mod common;

use common::{count, Server};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use voronka_core::crypto::SecretKey;
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_store::{DynStore, NewOutbound, OutboxState};

const BOTS: u32 = 50;
const SUBSCRIBERS: u32 = 100;
const TOTAL: u64 = (BOTS * SUBSCRIBERS) as u64;
const KILL_AFTER: u64 = 1_500;
const FIRST_USER: i64 = 7_000_000;

fn token(bot: u32) -> String {
    format!("{}:CRASHtoken{bot:0>10}", 2000 + bot)
}

fn user(bot: u32, i: u32) -> i64 {
    FIRST_USER + i64::from(bot) * i64::from(SUBSCRIBERS) + i64::from(i)
}

/// Channels, subscribed contacts and 5,000 queued messages (`m-<n>`).
async fn prepare(store: &DynStore, key: &SecretKey) {
    let ws = store.create_workspace("Crash").await.expect("workspace").id;
    let targets = common::subscribed_contacts(
        store,
        key,
        ws,
        "crash-test",
        (BOTS, SUBSCRIBERS),
        token,
        user,
    )
    .await;
    assert_eq!(targets.len() as u64, TOTAL);
    let mut queued = futures::stream::iter(targets.into_iter().enumerate())
        .map(|(n, (contact, channel))| async move {
            store
                .enqueue_message(
                    ws,
                    contact,
                    NewOutbound {
                        channel_id: channel,
                        purpose: Purpose::Marketing,
                        message: OutboundMessage {
                            text: Some(format!("m-{n}")),
                            ..Default::default()
                        },
                        source: "crash-test".into(),
                        run_at: None,
                    },
                )
                .await
        })
        .buffer_unordered(32);
    while let Some(r) = queued.next().await {
        r.expect("enqueue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_kill_mid_send_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = format!("sqlite://{}", dir.path().join("voronka.db").display());
    let key = SecretKey::generate();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    for b in 0..BOTS {
        fake.add_bot(&token(b), &format!("crash_{b}_bot"));
        for i in 0..SUBSCRIBERS {
            fake.add_user(user(b, i), "User", None, None, None);
            fake.open_chat(&token(b), user(b, i)).expect("open chat");
        }
    }
    {
        let store = voronka_store::connect_and_migrate(&db_url)
            .await
            .expect("store");
        prepare(&store, &key).await;
        // The server must be the only writer.
        drop(store);
    }
    // Let the pool's connections close before another process opens the file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "prepared {TOTAL} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut server = Server::start(dir.path(), &db_url, &key, &fake.api_url(), 1, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.stats().sent_messages < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "the server sent only {} messages in 30 s; log: {}",
            fake.stats().sent_messages,
            std::fs::read_to_string(dir.path().join("server-1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let received_at_kill = fake.stats().sent_messages;

    let store = voronka_store::connect(&db_url).await.expect("reopen store");
    let counts = store.outbox_counts(None).await.expect("counts");
    let in_flight = count(&counts, OutboxState::Sending);
    println!(
        "killed after the fake received {received_at_kill} messages: store shows sent {}, sending {in_flight}, queued {}",
        count(&counts, OutboxState::Sent),
        count(&counts, OutboxState::Queued)
    );

    server = Server::start(dir.path(), &db_url, &key, &fake.api_url(), 2, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = store.outbox_counts(None).await.expect("counts");
        let (sent, failed) = (
            count(&counts, OutboxState::Sent),
            count(&counts, OutboxState::Failed),
        );
        assert_eq!(failed, 0, "messages failed: {counts:?}");
        if sent == TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {sent} of {TOTAL} sent 60 s after the restart: {counts:?}; log: {}",
            std::fs::read_to_string(dir.path().join("server-2.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();

    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut received = 0u64;
    for b in 0..BOTS {
        for i in 0..SUBSCRIBERS {
            for m in fake.messages_to(&token(b), user(b, i)) {
                received += 1;
                *seen.entry(m.text.unwrap_or_default()).or_default() += 1;
            }
        }
    }
    let missing: Vec<String> = (0..TOTAL)
        .map(|n| format!("m-{n}"))
        .filter(|t| !seen.contains_key(t))
        .collect();
    let duplicates = received - TOTAL.min(received);
    println!("in flight at kill: {in_flight}, duplicates: {duplicates}");
    println!(
        "received {received} messages in all, {} distinct; total time {:.1} s",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "never delivered: {} e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(seen.len() as u64, TOTAL, "unexpected texts received");
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates but only {in_flight} were in flight at the kill"
    );
    println!("429s from the fake: {}", fake.stats().rate_limited_429);
    fake.shutdown();
}
