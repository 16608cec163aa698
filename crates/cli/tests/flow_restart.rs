//! Flow timers survive a hard kill: 1,000 contacts sit in a flow's 2-second delay, the
//! server process is killed (SIGKILL) while they wait and only restarted after the
//! delay has passed, and each contact gets the next message exactly once.
//!
//! The runs are put into the delay with the very commit the engine makes when a run
//! reaches a delay step, while the server runs; this keeps the scenario independent of
//! how fast a busy machine starts 1,000 runs. The outbox's own crash behaviour is
//! `crash.rs`'s subject.

mod common;

use common::{count, server_log, Server};
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use voronka_core::crypto::SecretKey;
use voronka_core::flow::format::{parse, Format};
use voronka_core::flow::validate::{validate, Catalog};
use voronka_core::{ChannelId, ContactId, FlowId, WorkspaceId};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_store::testing::{fresh_store, Backend};
use voronka_store::{
    DynStore, FlowCommit, NewRun, OutboxState, RunState, RunStatus, RunWrite, WaitKind,
};

/// Spread over many bots: each bot sends within Telegram's rate (the delivery workers
/// keep to it), and the last first messages must arrive well before the first delay
/// ends.
const BOTS: u32 = 200;
const PER_BOT: u32 = 5;
const TOTAL: u64 = (BOTS * PER_BOT) as u64;
const FIRST_USER: i64 = 8_000_000;
const STEP_TWO: &str = "Step two";

/// The flow, with the delay's length in place of `DELAY`.
const FLOW: &str = r#"
name: Restart
triggers:
  - type: event
    name: go
start: wait
steps:
  - id: wait
    type: delay
    for: DELAY
    next: second
  - id: second
    type: send
    text: Step two
"#;

fn token(bot: u32) -> String {
    format!("{}:FLOWtoken{bot:0>10}", 3000 + bot)
}

fn user(bot: u32, i: u32) -> i64 {
    FIRST_USER + i64::from(bot) * i64::from(PER_BOT) + i64::from(i)
}

/// The contacts' chats, as `(bot token, chat id)`.
fn chats() -> Vec<(String, i64)> {
    (0..BOTS)
        .flat_map(|b| (0..PER_BOT).map(move |i| (token(b), user(b, i))))
        .collect()
}

/// How many chats got `text` exactly once, and how many more than once.
fn tally(fake: &FakeTelegram, text: &str) -> (u64, u64) {
    let (mut once, mut more) = (0, 0);
    for (t, chat) in chats() {
        let n = fake
            .messages_to(&t, chat)
            .iter()
            .filter(|m| m.text.as_deref() == Some(text))
            .count();
        match n {
            0 => {}
            1 => once += 1,
            _ => more += 1,
        }
    }
    (once, more)
}

/// Workspace, bots, subscribed contacts and the published flow.
async fn seed(
    store: &DynStore,
    key: &SecretKey,
    delay: &str,
) -> (WorkspaceId, FlowId, Vec<(ContactId, ChannelId)>) {
    let ws = store
        .create_workspace("Restart")
        .await
        .expect("workspace")
        .id;
    let contacts =
        common::subscribed_contacts(store, key, ws, "flow-restart", (BOTS, PER_BOT), token, user)
            .await;
    assert_eq!(contacts.len() as u64, TOTAL);
    let doc = parse(&FLOW.replace("DELAY", delay), Format::Yaml).expect("flow parses");
    let problems = validate(&doc, &Catalog::default());
    assert!(problems.is_empty(), "flow problems: {problems:?}");
    let doc = serde_json::to_value(&doc).expect("flow as JSON");
    let flow = store
        .create_flow(ws, "Restart", doc.clone())
        .await
        .expect("create flow");
    store
        .publish_flow(ws, flow.id, doc)
        .await
        .expect("publish flow");
    (ws, flow.id, contacts)
}

/// One scenario at a time: two servers at once would slow each other down while the
/// runs must all be in the delay before the first one is due.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The whole scenario.
async fn scenario(backend: Backend, name: &str) {
    let _one_at_a_time = SERIAL.lock().await;
    let Some(db) = fresh_store(backend).await else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    for b in 0..BOTS {
        fake.add_bot(&token(b), &format!("flow_{b}_bot"));
        for i in 0..PER_BOT {
            fake.add_user(user(b, i), "User", None, None, None);
            fake.open_chat(&token(b), user(b, i)).expect("open chat");
        }
    }
    let store = db.store.clone();
    let (ws, flow, contacts) = seed(&store, &key, "2s").await;
    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 1, 10);
    server.wait_ready(dir.path(), 1).await;
    println!(
        "{name}: seeded {TOTAL} contacts on {BOTS} bots and started the server in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every contact enters the delay: due in 2 s.
    let entered = Instant::now();
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let mut commits = futures::stream::iter(contacts)
        .map(|(contact, channel)| {
            let store = store.clone();
            async move {
                store
                    .commit_flow(
                        ws,
                        FlowCommit {
                            contact_id: contact,
                            runs: vec![RunWrite::Insert(NewRun {
                                flow_id: flow,
                                version: 1,
                                channel_id: Some(channel),
                                state: RunState {
                                    status: RunStatus::Waiting,
                                    step_id: "wait".into(),
                                    wait: Some(WaitKind::Delay),
                                    due_at: Some(due),
                                    attempts: 0,
                                    vars: json!({"trigger": {}}),
                                    error: None,
                                },
                                trigger: "event:go".into(),
                            })],
                            ..FlowCommit::default()
                        },
                    )
                    .await
            }
        })
        .buffer_unordered(64);
    while let Some(r) = commits.next().await {
        r.expect("enter the delay");
    }
    drop(commits);
    let enter_secs = entered.elapsed().as_secs_f64();
    // Killed while everyone waits.
    server.kill();
    let kill_secs = entered.elapsed().as_secs_f64();
    assert!(
        kill_secs < 2.0,
        "{name}: the machine is too busy: putting {TOTAL} runs into the delay took {enter_secs:.2} s"
    );
    let runs = store.run_counts(ws, flow).await.expect("run counts");
    println!("{name}: {TOTAL} runs entered the 2 s delay in {enter_secs:.2} s; killed at {kill_secs:.2} s: runs {runs:?}");
    assert_eq!(
        count(&runs, RunStatus::Waiting),
        TOTAL,
        "runs at the kill: {runs:?}"
    );
    assert_eq!(
        tally(&fake, STEP_TWO),
        (0, 0),
        "nothing was due before the kill"
    );

    // Down until every timer is overdue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    let mut server = Server::start(dir.path(), &db.url, &key, &fake.api_url(), 2, 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all_done = None;
    loop {
        let runs = store.run_counts(ws, flow).await.expect("run counts");
        if all_done.is_none() && count(&runs, RunStatus::Done) == TOTAL {
            all_done = Some(restarted.elapsed().as_secs_f64());
        }
        let outbox = store.outbox_counts(None).await.expect("outbox counts");
        if all_done.is_some()
            && count(&outbox, OutboxState::Sent) == TOTAL
            && fake.stats().sent_messages >= TOTAL
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: 60 s after the restart: runs {runs:?}, outbox {outbox:?}, the fake got {} messages; log: {}",
            fake.stats().sent_messages,
            server_log(dir.path(), 2)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_secs = restarted.elapsed().as_secs_f64();
    // Anything sent twice would arrive now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();

    let runs = store.run_counts(ws, flow).await.expect("run counts");
    let outbox = store.outbox_counts(None).await.expect("outbox counts");
    println!(
        "{name}: after the restart all runs were done in {:.2} s and every \"{STEP_TWO}\" delivered in {recovered_secs:.2} s; runs {runs:?}; outbox {outbox:?}",
        all_done.unwrap_or(f64::NAN)
    );
    for (t, chat) in chats() {
        let texts: Vec<String> = fake
            .messages_to(&t, chat)
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
        assert_eq!(texts, [STEP_TWO], "{name}: chat {chat} of bot {t}");
    }
    assert_eq!(tally(&fake, STEP_TWO), (TOTAL, 0));
    assert_eq!(count(&runs, RunStatus::Done), TOTAL, "runs: {runs:?}");
    assert_eq!(fake.stats().sent_messages, TOTAL);
    assert_eq!(count(&outbox, OutboxState::Failed), 0, "outbox: {outbox:?}");
    println!(
        "{name}: every contact got \"{STEP_TWO}\" exactly once; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_contacts_in_a_delay_get_the_next_message_once_after_a_hard_kill() {
    scenario(Backend::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_contacts_in_a_delay_get_the_next_message_once_after_a_hard_kill() {
    scenario(Backend::Postgres, "postgres").await;
}
