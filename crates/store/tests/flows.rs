//! Conformance of the flow store: every case runs on SQLite and on PostgreSQL, so both
//! backends give flows, runs, signals and counters the same semantics.
//!
//! Each `async fn case_xxx(store: &DynStore)` below becomes `sqlite::case_xxx` and
//! `postgres::case_xxx`. PostgreSQL cases return early (after `fresh_store` printed why)
//! when no server is reachable, unless CI=true or VORONKA_REQUIRE_PG=1.

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::time::Duration;
use voronka_core::channel::{ChannelKind, ChannelSettings};
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldDefinition, FieldSpec, FieldType, FieldValue};
use voronka_core::message::{InboundEvent, InboundKind, OutboundMessage, Purpose, Sender};
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
    case_flow_lifecycle,
    case_archive_cancels_live_runs,
    case_workspace_isolation,
    case_commit_applies_everything,
    case_stale_revision_writes_nothing,
    case_refused_messages_are_skipped,
    case_erased_contact_commits,
    case_claim_due_runs,
    case_claim_signals,
    case_apply_inbound_records_signal_once,
    case_list_runs_and_counts,
    case_contacts_by_field_day,
    case_inactive_contacts_and_scan_marks,
    case_erasure_blanks_flow_data,
    case_delete_contact_deletes_runs_and_signals,
    case_topics_and_settings,
    case_topic_changes_in_commits,
);

// ---------------------------------------------------------------- helpers

fn proof() -> ConsentProof {
    ConsentProof {
        source: "telegram_start".into(),
        at: Timestamp::from_second(1_700_000_000).expect("valid time"),
        text_shown: None,
        ip: None,
        message_id: None,
    }
}

fn subscribed(topics: &[&str]) -> SubscriptionChange {
    SubscriptionChange::new(
        SubscriptionState::Subscribed,
        topics.iter().map(|t| t.to_string()).collect(),
        Some(proof()),
        Timestamp::now(),
    )
    .expect("valid change")
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

async fn field(s: &DynStore, ws: WorkspaceId, key: &str, t: FieldType) -> FieldDefinition {
    s.create_field(
        ws,
        FieldSpec {
            key: key.into(),
            label: key.to_uppercase(),
            field_type: t,
            choices: vec![],
        },
    )
    .await
    .expect("create field")
}

fn value(def: &FieldDefinition, v: Value) -> FieldValue {
    FieldValue::validate(def, &v, "f").expect("valid value")
}

/// A contact, with an identity on `ch` in the given consent state when `ch` is given.
async fn person(
    s: &DynStore,
    ws: WorkspaceId,
    ch: Option<(ChannelId, &str, Option<SubscriptionChange>)>,
    tags: &[&str],
    fields: Vec<FieldValue>,
) -> Contact {
    s.create_contact(
        ws,
        NewContact {
            profile: Profile {
                first_name: Some("Olga".into()),
                ..Profile::default()
            },
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fields,
            identities: ch
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

async fn plain(s: &DynStore, ws: WorkspaceId) -> ContactId {
    person(s, ws, None, &[], vec![]).await.id
}

/// A flow with one published version.
async fn published(s: &DynStore, ws: WorkspaceId, name: &str) -> FlowId {
    let f = s
        .create_flow(ws, name, json!({"steps": []}))
        .await
        .expect("create flow");
    s.publish_flow(ws, f.id, json!({"steps": [{"id": "s1"}]}))
        .await
        .expect("publish");
    f.id
}

fn state(status: RunStatus, step: &str) -> RunState {
    RunState {
        status,
        step_id: step.into(),
        wait: None,
        due_at: None,
        attempts: 0,
        vars: json!({}),
        error: None,
    }
}

fn waiting(step: &str, due_at: Option<Timestamp>) -> RunState {
    RunState {
        wait: Some(WaitKind::Delay),
        due_at,
        ..state(RunStatus::Waiting, step)
    }
}

fn insert(flow: FlowId, s: RunState) -> RunWrite {
    RunWrite::Insert(NewRun {
        flow_id: flow,
        version: 1,
        channel_id: None,
        state: s,
        trigger: "api".into(),
    })
}

/// Starts a run of `flow` for `contact` in state `s`; returns it.
async fn start(
    s: &DynStore,
    ws: WorkspaceId,
    contact: ContactId,
    flow: FlowId,
    st: RunState,
) -> FlowRun {
    let done = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: contact,
                runs: vec![insert(flow, st)],
                ..FlowCommit::default()
            },
        )
        .await
        .expect("start run");
    s.get_run(ws, done.run_ids[0]).await.expect("read run")
}

fn update(run: &FlowRun, st: RunState) -> RunWrite {
    RunWrite::Update {
        id: run.id,
        revision: run.revision,
        state: st,
    }
}

fn signal(contact: ContactId, kind: &str, data: Value) -> NewSignal {
    NewSignal {
        contact_id: contact,
        channel_id: None,
        kind: kind.into(),
        data,
    }
}

fn message(ch: ChannelId, purpose: Purpose, text: &str) -> FlowMessage {
    FlowMessage {
        run: 0,
        outbound: NewOutbound {
            channel_id: ch,
            purpose,
            message: OutboundMessage::text(text),
            source: "flow:onboarding".into(),
            run_at: None,
        },
    }
}

fn delta(flow: FlowId, step: &str, entered: u64, completed: u64) -> CounterDelta {
    CounterDelta {
        flow_id: flow,
        version: 1,
        step_id: step.into(),
        entered,
        completed,
        ..CounterDelta::default()
    }
}

async fn kinds(s: &DynStore, ws: WorkspaceId, id: ContactId) -> Vec<String> {
    s.export_contact(ws, id)
        .await
        .expect("export")
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn count_of(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

async fn queued(s: &DynStore, ch: ChannelId) -> u64 {
    s.outbox_counts(Some(ch)).await.expect("counts")[0].1
}

/// Claims everything claimable now (with a long lease).
async fn claim_all(s: &DynStore) -> Vec<FlowSignal> {
    s.claim_signals(100, Duration::from_secs(600))
        .await
        .expect("claim signals")
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T>, entity: &str) {
    match r {
        Err(StoreError::NotFound { entity: e }) => assert_eq!(e, entity, "wrong entity"),
        other => panic!("expected NotFound {entity}, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T>, code: &str) {
    match r {
        Err(StoreError::Conflict { code: c, .. }) => assert_eq!(c, code),
        other => panic!("expected Conflict {code}, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T>, field: &str) {
    match r {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, field),
        other => panic!("expected Invalid {field}, got {other:?}"),
    }
}

fn sender(external_id: &str) -> Sender {
    Sender {
        external_id: external_id.into(),
        first_name: Some("Ivan".into()),
        ..Sender::default()
    }
}

fn text_event(pid: &str, from: &Sender, text: &str) -> InboundEvent {
    InboundEvent {
        provider_event_id: pid.into(),
        sender: from.clone(),
        at: 1_700_000_000,
        kind: InboundKind::Text {
            message_id: format!("m-{pid}"),
            text: text.into(),
        },
    }
}

/// Stores and processes one text message from `from`; returns the contact.
async fn inbound(
    s: &DynStore,
    ws: WorkspaceId,
    ch: ChannelId,
    pid: &str,
    from: &Sender,
) -> ContactId {
    let id = s
        .record_inbound(ws, ch, vec![text_event(pid, from, "hi")])
        .await
        .expect("record")[0]
        .expect("new event");
    s.apply_inbound(
        ws,
        id,
        InboundApply {
            sender: from.clone(),
            ..InboundApply::default()
        },
    )
    .await
    .expect("apply")
    .contact_id
}

// ---------------------------------------------------------------- cases

async fn case_flow_lifecycle(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let f = s
        .create_flow(ws, "  Welcome  ", json!({"steps": [], "b": 1, "a": 2}))
        .await
        .expect("create");
    assert_eq!(f.name, "Welcome", "trimmed");
    assert_eq!(f.status, FlowStatus::Draft);
    assert_eq!((f.revision, f.published_version), (1, None));
    assert_eq!(f.draft, json!({"steps": [], "b": 1, "a": 2}));
    assert_eq!(s.get_flow(ws, f.id).await.expect("get"), f);
    assert_eq!(
        s.find_flow(ws, "Welcome").await.expect("find"),
        Some(f.clone())
    );
    assert_eq!(s.find_flow(ws, "welcome").await.expect("find"), None);

    assert_conflict(
        s.create_flow(ws, "Welcome", json!({})).await,
        "flow_name_taken",
    );
    assert_invalid(s.create_flow(ws, "   ", json!({})).await, "name");
    assert_invalid(s.create_flow(ws, "a\u{7}b", json!({})).await, "name");
    assert_invalid(s.create_flow(ws, &"x".repeat(101), json!({})).await, "name");

    // Editing: a stale revision and a taken name are refused, and change nothing.
    let other = s
        .create_flow(ws, "Another", json!({}))
        .await
        .expect("another");
    let edited = s
        .update_flow(ws, f.id, None, Some(json!({"steps": [1]})), Some(1))
        .await
        .expect("edit");
    assert_eq!(
        (edited.revision, edited.draft.clone()),
        (2, json!({"steps": [1]}))
    );
    assert_conflict(
        s.update_flow(ws, f.id, None, Some(json!({})), Some(1))
            .await,
        "flow_changed",
    );
    assert_conflict(
        s.update_flow(ws, f.id, Some("Another".into()), None, None)
            .await,
        "flow_name_taken",
    );
    let renamed = s
        .update_flow(ws, f.id, Some("Hello".into()), None, Some(2))
        .await
        .expect("rename");
    assert_eq!((renamed.name.as_str(), renamed.revision), ("Hello", 3));
    assert_eq!(renamed.draft, json!({"steps": [1]}));
    let same = s
        .update_flow(ws, f.id, None, None, None)
        .await
        .expect("no-op");
    assert_eq!(same.revision, 3);

    // Publishing freezes numbered versions and makes the last one live.
    let v1 = s
        .publish_flow(ws, f.id, json!({"v": 1}))
        .await
        .expect("publish 1");
    let v2 = s
        .publish_flow(ws, f.id, json!({"v": 2}))
        .await
        .expect("publish 2");
    assert_eq!((v1.version, v2.version), (1, 2));
    let live = s.get_flow(ws, f.id).await.expect("get");
    assert_eq!(live.status, FlowStatus::Published);
    assert_eq!(live.published_version, Some(2));
    assert_eq!(
        live.draft,
        json!({"v": 2}),
        "the draft is what was published"
    );
    assert_eq!(live.revision, 5);
    assert_eq!(s.get_flow_version(ws, f.id, 1).await.expect("v1"), v1);
    assert_eq!(
        s.get_flow_version(ws, f.id, 2).await.expect("v2").document,
        json!({"v": 2})
    );
    assert_not_found(s.get_flow_version(ws, f.id, 3).await, "flow_version");
    let all = s.published_flows().await.expect("published");
    assert_eq!(all.len(), 1, "drafts are not published");
    assert_eq!(all[0].0, live);
    assert_eq!(all[0].1, v2);

    // Archiving retires it: no edits, no publishing, listed only when asked.
    let archived = s.archive_flow(ws, f.id).await.expect("archive");
    assert_eq!(archived.status, FlowStatus::Archived);
    assert_eq!(s.archive_flow(ws, f.id).await.expect("again"), archived);
    assert_conflict(
        s.update_flow(ws, f.id, None, Some(json!({})), None).await,
        "flow_archived",
    );
    assert_conflict(s.publish_flow(ws, f.id, json!({})).await, "flow_archived");
    assert!(s.published_flows().await.expect("published").is_empty());
    let names = |fs: Vec<Flow>| fs.into_iter().map(|f| f.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.list_flows(ws, false).await.expect("list")),
        ["Another"]
    );
    assert_eq!(
        names(s.list_flows(ws, true).await.expect("list all")),
        ["Another", "Hello"]
    );
    assert_eq!(other.status, FlowStatus::Draft);
}

async fn case_archive_cancels_live_runs(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let flow = published(s, ws, "Drip").await;
    let a = plain(s, ws).await;
    let b = plain(s, ws).await;
    let c = plain(s, ws).await;
    let ra = start(s, ws, a, flow, waiting("wait1", Some(Timestamp::now()))).await;
    let rb = start(s, ws, b, flow, waiting("wait1", None)).await;
    let rc = start(s, ws, c, flow, state(RunStatus::Done, "end")).await;
    assert!(rc.ended_at.is_some(), "an ended run has its end time");

    s.archive_flow(ws, flow).await.expect("archive");
    for (old, id) in [(&ra, ra.id), (&rb, rb.id)] {
        let r = s.get_run(ws, id).await.expect("run");
        assert_eq!(r.status, RunStatus::Cancelled);
        assert_eq!((r.wait, r.due_at, r.error.clone()), (None, None, None));
        assert!(r.ended_at.is_some());
        assert!(r.revision > old.revision, "a worker holding it must lose");
    }
    assert_eq!(
        s.get_run(ws, rc.id).await.expect("done run"),
        rc,
        "untouched"
    );
    let counters = s.step_counters(ws, flow).await.expect("counters");
    assert_eq!(
        counters,
        vec![StepCounter {
            version: 1,
            step_id: "wait1".into(),
            dropped: 2,
            ..StepCounter::default()
        }]
    );
    // The worker that held run a finds it changed; a new run cannot start.
    assert_conflict(
        s.commit_flow(
            ws,
            FlowCommit {
                contact_id: a,
                runs: vec![update(&ra, state(RunStatus::Done, "end"))],
                ..FlowCommit::default()
            },
        )
        .await,
        "run_changed",
    );
    assert_conflict(
        s.commit_flow(
            ws,
            FlowCommit {
                contact_id: a,
                runs: vec![insert(flow, waiting("wait1", None))],
                ..FlowCommit::default()
            },
        )
        .await,
        "flow_archived",
    );
    assert!(s.live_runs(ws, a).await.expect("live").is_empty());
}

async fn case_workspace_isolation(s: &DynStore) {
    let a = workspace(s, "a").await;
    let b = workspace(s, "b").await;
    let flow = published(s, a, "Mine").await;
    let alice = plain(s, a).await;
    let bob = plain(s, b).await;
    let run = start(s, a, alice, flow, waiting("w", None)).await;

    assert_not_found(s.get_flow(b, flow).await, "flow");
    assert_not_found(
        s.update_flow(b, flow, None, Some(json!({})), None).await,
        "flow",
    );
    assert_not_found(s.publish_flow(b, flow, json!({})).await, "flow");
    assert_not_found(s.archive_flow(b, flow).await, "flow");
    assert_not_found(s.get_flow_version(b, flow, 1).await, "flow_version");
    assert_not_found(s.run_counts(b, flow).await, "flow");
    assert_not_found(s.step_counters(b, flow).await, "flow");
    assert_not_found(s.get_run(b, run.id).await, "run");
    assert_eq!(s.find_flow(b, "Mine").await.expect("find"), None);
    assert!(s.list_flows(b, true).await.expect("list").is_empty());
    assert!(s
        .list_runs(
            b,
            RunQuery {
                limit: 100,
                ..RunQuery::default()
            }
        )
        .await
        .expect("runs")
        .is_empty());
    assert!(s.live_runs(b, alice).await.expect("live").is_empty());
    assert!(!s.ever_ran(b, alice, flow).await.expect("ever"));

    // Commits: another workspace's contact, run or flow is unknown.
    assert_not_found(
        s.commit_flow(
            b,
            FlowCommit {
                contact_id: alice,
                ..FlowCommit::default()
            },
        )
        .await,
        "contact",
    );
    assert_not_found(
        s.commit_flow(
            b,
            FlowCommit {
                contact_id: bob,
                runs: vec![update(&run, state(RunStatus::Done, "end"))],
                ..FlowCommit::default()
            },
        )
        .await,
        "run",
    );
    assert_invalid(
        s.commit_flow(
            b,
            FlowCommit {
                contact_id: bob,
                runs: vec![insert(flow, waiting("w", None))],
                ..FlowCommit::default()
            },
        )
        .await,
        "flow_id",
    );
    assert_not_found(
        s.emit_signal(b, signal(alice, "event", json!({}))).await,
        "contact",
    );
    // Another workspace's signal is not consumed by this one's commit.
    let sig = s
        .emit_signal(a, signal(alice, "event", json!({})))
        .await
        .expect("emit");
    s.commit_flow(
        b,
        FlowCommit {
            contact_id: bob,
            consume: vec![sig],
            ..FlowCommit::default()
        },
    )
    .await
    .expect("commit in b");
    let claimed = claim_all(s).await;
    assert_eq!(claimed.iter().map(|x| x.id).collect::<Vec<_>>(), [sig]);
    assert_eq!(
        s.get_run(a, run.id).await.expect("unchanged"),
        run,
        "nothing of a's changed"
    );
}

async fn case_commit_applies_everything(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let plan = field(s, ws, "plan", FieldType::Text).await;
    let flow = published(s, ws, "Onboarding").await;
    let c = person(
        s,
        ws,
        Some((ch, "100", Some(subscribed(&[])))),
        &["lead"],
        vec![],
    )
    .await;
    let before = kinds(s, ws, c.id).await;
    let due = Timestamp::now() + SignedDuration::from_hours(1);

    let done = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                runs: vec![RunWrite::Insert(NewRun {
                    flow_id: flow,
                    version: 1,
                    channel_id: Some(ch),
                    state: RunState {
                        vars: json!({"answers": {"q1": "yes"}}),
                        ..waiting("wait1", Some(due))
                    },
                    trigger: "keyword:start".into(),
                })],
                changes: ContactChanges {
                    add_tags: vec!["vip".into(), "lead".into(), "vip".into()],
                    fields: vec![value(&plan, json!("gold"))],
                    ..ContactChanges::default()
                },
                events: vec![(EventKind::FlowStarted, json!({"flow_id": flow.0}))],
                messages: vec![message(ch, Purpose::Marketing, "Welcome aboard")],
                counters: vec![delta(flow, "s1", 1, 1), delta(flow, "wait1", 1, 0)],
                signals: vec![signal(c.id, "tag_added", json!({"tag": "vip"}))],
                consume: vec![],
            },
        )
        .await
        .expect("commit");
    assert_eq!(done.run_ids.len(), 1);
    assert_eq!(done.tags_added, ["vip"], "only the new link");
    assert_eq!(done.queued.len(), 1);
    assert!(done.skipped.is_empty());

    let run = s.get_run(ws, done.run_ids[0]).await.expect("run");
    assert_eq!(run.flow_id, flow);
    assert_eq!((run.version, run.contact_id), (1, c.id));
    assert_eq!(run.channel_id, Some(ch));
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(
        (run.step_id.as_str(), run.wait),
        ("wait1", Some(WaitKind::Delay))
    );
    assert_eq!(
        run.due_at.map(|t| t.as_microsecond()),
        Some(due.as_microsecond())
    );
    assert_eq!(run.vars, json!({"answers": {"q1": "yes"}}));
    assert_eq!((run.trigger.as_str(), run.revision), ("keyword:start", 1));
    assert_eq!(run.ended_at, None);

    let contact = s.get_contact(ws, c.id).await.expect("contact");
    assert_eq!(contact.tags, ["lead", "vip"]);
    assert_eq!(contact.fields.get("plan"), Some(&json!("gold")));
    assert!(contact.updated_at > c.updated_at, "the contact changed");
    let after = kinds(s, ws, c.id).await;
    let new: Vec<String> = after[before.len()..].to_vec();
    assert_eq!(
        new,
        ["tag_added", "field_set", "flow_started", "message_queued"],
        "change events, then the commit's events, then the messages"
    );

    let item = s.get_outbound(ws, done.queued[0]).await.expect("outbox");
    assert_eq!(item.source, "flow:onboarding");
    assert_eq!(item.purpose, Purpose::Marketing);
    assert_eq!(item.contact_id, c.id);

    let counters = s.step_counters(ws, flow).await.expect("counters");
    assert_eq!(
        counters
            .iter()
            .map(|k| (k.step_id.as_str(), k.entered, k.completed))
            .collect::<Vec<_>>(),
        [("s1", 1, 1), ("wait1", 1, 0)]
    );
    let sigs = claim_all(s).await;
    assert_eq!(sigs.len(), 1);
    assert_eq!(
        (sigs[0].kind.as_str(), sigs[0].contact_id),
        ("tag_added", c.id)
    );
    assert_eq!(sigs[0].data, json!({"tag": "vip"}));
    assert_eq!(sigs[0].attempts, 1);

    // The next step: the run finishes, the signal is consumed, counters add up, and
    // adding a tag the contact has changes nothing.
    let done2 = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                runs: vec![update(&run, state(RunStatus::Done, "end"))],
                changes: ContactChanges {
                    add_tags: vec!["vip".into()],
                    remove_tags: vec!["lead".into(), "never-had".into()],
                    ..ContactChanges::default()
                },
                counters: vec![delta(flow, "wait1", 0, 1)],
                consume: vec![sigs[0].id],
                ..FlowCommit::default()
            },
        )
        .await
        .expect("commit 2");
    assert_eq!(done2.run_ids, [run.id]);
    assert!(done2.tags_added.is_empty());
    let run2 = s.get_run(ws, run.id).await.expect("run");
    assert_eq!((run2.status, run2.revision), (RunStatus::Done, 2));
    assert!(run2.ended_at.is_some());
    assert_eq!((run2.wait, run2.due_at), (None, None));
    let after2 = kinds(s, ws, c.id).await;
    assert_eq!(after2[after.len()..], ["tag_removed"]);
    assert_eq!(
        count_of(&after2, "tag_added"),
        count_of(&before, "tag_added") + 1
    );
    assert_eq!(
        s.step_counters(ws, flow).await.expect("counters")[1],
        StepCounter {
            version: 1,
            step_id: "wait1".into(),
            entered: 1,
            completed: 1,
            ..StepCounter::default()
        }
    );
    assert!(claim_all(s).await.is_empty(), "consumed");
    assert!(s.ever_ran(ws, c.id, flow).await.expect("ever ran"));
    assert!(s.live_runs(ws, c.id).await.expect("live").is_empty());
}

async fn case_stale_revision_writes_nothing(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let flow = published(s, ws, "F").await;
    let c = person(s, ws, Some((ch, "1", Some(subscribed(&[])))), &[], vec![]).await;
    let run = start(s, ws, c.id, flow, waiting("w", None)).await;
    let sig = s
        .emit_signal(ws, signal(c.id, "inbound", json!({"text": "hi"})))
        .await
        .expect("emit");
    // Another worker got there first.
    s.commit_flow(
        ws,
        FlowCommit {
            contact_id: c.id,
            runs: vec![update(&run, waiting("w2", None))],
            ..FlowCommit::default()
        },
    )
    .await
    .expect("first commit");
    let events_before = kinds(s, ws, c.id).await;

    let r = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                runs: vec![
                    insert(flow, waiting("other", None)),
                    update(&run, state(RunStatus::Done, "end")),
                ],
                changes: ContactChanges {
                    add_tags: vec!["late".into()],
                    ..ContactChanges::default()
                },
                events: vec![(EventKind::FlowEnded, json!({}))],
                messages: vec![message(ch, Purpose::Marketing, "too late")],
                counters: vec![delta(flow, "w", 0, 1)],
                signals: vec![signal(c.id, "start_flow", json!({}))],
                consume: vec![sig],
            },
        )
        .await;
    assert_conflict(r, "run_changed");
    let contact = s.get_contact(ws, c.id).await.expect("contact");
    assert!(contact.tags.is_empty(), "tags rolled back");
    assert!(s
        .list_tags(ws)
        .await
        .expect("tags")
        .iter()
        .all(|t| t.name != "late"));
    assert_eq!(queued(s, ch).await, 0, "no message queued");
    assert_eq!(kinds(s, ws, c.id).await, events_before, "no events");
    assert!(s
        .step_counters(ws, flow)
        .await
        .expect("counters")
        .is_empty());
    let live = s.live_runs(ws, c.id).await.expect("live");
    assert_eq!(live.len(), 1, "the inserted run rolled back too");
    assert_eq!((live[0].step_id.as_str(), live[0].revision), ("w2", 2));
    let sigs = claim_all(s).await;
    assert_eq!(
        sigs.iter().map(|x| x.id).collect::<Vec<_>>(),
        [sig],
        "not consumed"
    );
}

async fn case_refused_messages_are_skipped(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let other = channel(s, ws, "other").await;
    let flow = published(s, ws, "F").await;
    let c = person(s, ws, Some((ch, "1", None)), &[], vec![]).await;
    let done = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                runs: vec![insert(flow, state(RunStatus::Done, "end"))],
                changes: ContactChanges {
                    add_tags: vec!["tried".into()],
                    ..ContactChanges::default()
                },
                messages: vec![
                    message(ch, Purpose::Marketing, "promo"),
                    message(ch, Purpose::Response, "answer"),
                    message(other, Purpose::Response, "elsewhere"),
                ],
                ..FlowCommit::default()
            },
        )
        .await
        .expect("commit");
    assert_eq!(
        done.skipped,
        [
            (0, "not_subscribed".to_string()),
            (2, "no_identity_on_channel".to_string())
        ]
    );
    assert_eq!(done.queued.len(), 1);
    assert_eq!(queued(s, ch).await, 1, "only the response");
    assert_eq!(done.tags_added, ["tried"], "the rest of the commit applies");
    assert_eq!(done.run_ids.len(), 1);
}

async fn case_erased_contact_commits(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let flow = published(s, ws, "F").await;
    let c = person(s, ws, Some((ch, "1", Some(subscribed(&[])))), &[], vec![]).await;
    s.erase_contact(ws, c.id).await.expect("erase");
    assert_conflict(
        s.commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                changes: ContactChanges {
                    add_tags: vec!["x".into()],
                    ..ContactChanges::default()
                },
                ..FlowCommit::default()
            },
        )
        .await,
        "contact_erased",
    );
    let done = s
        .commit_flow(
            ws,
            FlowCommit {
                contact_id: c.id,
                runs: vec![insert(flow, state(RunStatus::Stopped, "s1"))],
                messages: vec![message(ch, Purpose::Response, "hello?")],
                ..FlowCommit::default()
            },
        )
        .await
        .expect("commit without contact changes");
    assert_eq!(done.skipped, [(0, "contact_erased".to_string())]);
    assert_conflict(
        s.emit_signal(ws, signal(c.id, "event", json!({}))).await,
        "contact_erased",
    );
}

async fn case_claim_due_runs(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let flow = published(s, ws, "Timer").await;
    let now = Timestamp::now();
    let secs = SignedDuration::from_secs;
    let c1 = plain(s, ws).await;
    let c2 = plain(s, ws).await;
    let c3 = plain(s, ws).await;
    let c4 = plain(s, ws).await;
    let late = start(s, ws, c1, flow, waiting("a", Some(now - secs(5)))).await;
    let later = start(s, ws, c2, flow, waiting("a", Some(now - secs(10)))).await;
    let future = start(s, ws, c3, flow, waiting("a", Some(now + secs(3600)))).await;
    start(s, ws, c4, flow, waiting("a", None)).await;
    assert_eq!(
        s.next_due()
            .await
            .expect("next")
            .map(|t| t.as_microsecond()),
        Some((now - secs(10)).as_microsecond())
    );

    let lease = Duration::from_secs(60);
    let got = s.claim_due_runs(now, 10, lease).await.expect("claim");
    assert_eq!(
        got.iter().map(|r| r.id).collect::<Vec<_>>(),
        [later.id, late.id],
        "due ones, earliest first"
    );
    assert_eq!(
        got[0].revision, later.revision,
        "claiming keeps the revision"
    );
    assert!(s
        .claim_due_runs(now, 10, lease)
        .await
        .expect("again")
        .is_empty());
    assert_eq!(
        s.next_due()
            .await
            .expect("next")
            .map(|t| t.as_microsecond()),
        Some(future.due_at.expect("due").as_microsecond()),
        "leased runs are being handled"
    );
    // A lapsed lease gives them out again.
    let again = s
        .claim_due_runs(now + secs(120), 10, lease)
        .await
        .expect("after the lease");
    assert_eq!(again.len(), 2);

    // The claim's revision is good for a commit, which clears the lease.
    s.commit_flow(
        ws,
        FlowCommit {
            contact_id: c2,
            runs: vec![update(&got[0], waiting("b", Some(now - secs(1))))],
            ..FlowCommit::default()
        },
    )
    .await
    .expect("commit the claimed run");
    let next = s.claim_due_runs(now, 10, lease).await.expect("claim");
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [later.id]);
    assert_eq!(next[0].step_id, "b");
    assert_eq!(
        s.claim_due_runs(now, 0, lease)
            .await
            .expect("limit 0")
            .len(),
        0
    );
}

async fn case_claim_signals(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let x = plain(s, ws).await;
    let y = plain(s, ws).await;
    let x1 = s
        .emit_signal(ws, signal(x, "event", json!({"n": 1})))
        .await
        .expect("x1");
    let y1 = s
        .emit_signal(ws, signal(y, "event", json!({"n": 2})))
        .await
        .expect("y1");
    let x2 = s
        .emit_signal(ws, signal(x, "event", json!({"n": 3})))
        .await
        .expect("x2");
    let lease = Duration::from_secs(600);

    let first = s.claim_signals(1, lease).await.expect("claim 1");
    assert_eq!(first.iter().map(|x| x.id).collect::<Vec<_>>(), [x1]);
    // x's later signal waits while x1 is out.
    let second = s.claim_signals(10, lease).await.expect("claim 2");
    assert_eq!(second.iter().map(|x| x.id).collect::<Vec<_>>(), [y1]);
    assert!(s
        .claim_signals(10, lease)
        .await
        .expect("claim 3")
        .is_empty());

    // Consuming x1 frees x's next signal.
    s.commit_flow(
        ws,
        FlowCommit {
            contact_id: x,
            consume: vec![x1],
            ..FlowCommit::default()
        },
    )
    .await
    .expect("consume");
    let third = s.claim_signals(10, lease).await.expect("claim 4");
    assert_eq!(third.iter().map(|x| x.id).collect::<Vec<_>>(), [x2]);
    assert_eq!(third[0].data, json!({"n": 3}));

    // A failure releases the signal for a retry; parking ends its claims.
    s.fail_signal(y1, "boom", false).await.expect("release");
    let retry = s.claim_signals(10, lease).await.expect("retry");
    assert_eq!(
        retry.iter().map(|x| (x.id, x.attempts)).collect::<Vec<_>>(),
        [(y1, 2)]
    );
    s.fail_signal(y1, "boom again", true).await.expect("park");
    s.fail_signal(x2, "x fails", true).await.expect("park x2");
    assert!(s
        .claim_signals(10, Duration::ZERO)
        .await
        .expect("none")
        .is_empty());
    assert_not_found(s.fail_signal(SignalId(999_999), "?", true).await, "signal");

    // Claims hand out whole batches oldest first; a lapsed lease comes back.
    let mut ids = Vec::new();
    for i in 0..5 {
        let who = if i % 2 == 0 { x } else { y };
        ids.push(
            s.emit_signal(ws, signal(who, "event", json!({"i": i})))
                .await
                .expect("emit"),
        );
    }
    let batch = s.claim_signals(10, Duration::ZERO).await.expect("batch");
    assert_eq!(batch.iter().map(|x| x.id).collect::<Vec<_>>(), ids);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let back = s.claim_signals(10, lease).await.expect("lapsed");
    assert_eq!(back.len(), 5);
    assert!(back.iter().all(|x| x.attempts == 2));
}

async fn case_apply_inbound_records_signal_once(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let from = sender("42");
    let id = s
        .record_inbound(ws, ch, vec![text_event("p1", &from, "price")])
        .await
        .expect("record")[0]
        .expect("new");
    let apply = InboundApply {
        sender: from.clone(),
        signal: Some(("inbound".into(), json!({"text": "price"}))),
        ..InboundApply::default()
    };
    let got = s.apply_inbound(ws, id, apply.clone()).await.expect("apply");
    assert!(!got.already_done);
    let again = s.apply_inbound(ws, id, apply).await.expect("apply again");
    assert!(again.already_done);
    let sigs = claim_all(s).await;
    assert_eq!(sigs.len(), 1, "exactly once");
    assert_eq!(sigs[0].contact_id, got.contact_id);
    assert_eq!(sigs[0].channel_id, Some(ch));
    assert_eq!(sigs[0].kind, "inbound");
    assert_eq!(sigs[0].data, json!({"text": "price"}));
    assert_eq!(sigs[0].workspace_id, ws);

    // Without a signal, none is recorded.
    inbound(s, ws, ch, "p2", &from).await;
    assert!(claim_all(s).await.is_empty());
}

async fn case_list_runs_and_counts(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let f1 = published(s, ws, "One").await;
    let f2 = published(s, ws, "Two").await;
    let a = plain(s, ws).await;
    let b = plain(s, ws).await;
    let r1 = start(s, ws, a, f1, waiting("ask", None)).await;
    let r2 = start(s, ws, b, f1, waiting("ask", None)).await;
    let r3 = start(s, ws, a, f1, state(RunStatus::Done, "end")).await;
    let r4 = start(s, ws, a, f2, state(RunStatus::Active, "s1")).await;
    let q = |f: fn(&mut RunQuery)| {
        let mut q = RunQuery {
            limit: 100,
            ..RunQuery::default()
        };
        f(&mut q);
        q
    };
    let ids = |rs: Vec<FlowRun>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_runs(ws, q(|_| {})).await.expect("all")),
        [r4.id, r3.id, r2.id, r1.id],
        "newest first"
    );
    let mut by_flow = q(|_| {});
    by_flow.flow_id = Some(f1);
    assert_eq!(
        ids(s.list_runs(ws, by_flow.clone()).await.expect("flow")),
        [r3.id, r2.id, r1.id]
    );
    by_flow.limit = 2;
    assert_eq!(
        ids(s.list_runs(ws, by_flow.clone()).await.expect("page 1")),
        [r3.id, r2.id]
    );
    by_flow.before = Some(r2.id);
    assert_eq!(
        ids(s.list_runs(ws, by_flow).await.expect("page 2")),
        [r1.id]
    );
    let mut filtered = q(|q| q.status = Some(RunStatus::Waiting));
    filtered.contact_id = Some(a);
    filtered.step_id = Some("ask".into());
    assert_eq!(
        ids(s.list_runs(ws, filtered).await.expect("filtered")),
        [r1.id]
    );

    assert_eq!(
        ids(s.live_runs(ws, a).await.expect("live")),
        [r1.id, r4.id],
        "oldest first"
    );
    assert_eq!(
        s.run_counts(ws, f1).await.expect("counts"),
        vec![
            (RunStatus::Active, 0),
            (RunStatus::Waiting, 2),
            (RunStatus::Done, 1),
            (RunStatus::Stopped, 0),
            (RunStatus::Cancelled, 0),
            (RunStatus::Failed, 0),
        ]
    );
    assert!(s.ever_ran(ws, b, f1).await.expect("b ran f1"));
    assert!(!s.ever_ran(ws, b, f2).await.expect("b never ran f2"));

    // Counters of several versions come back by version, then step.
    s.publish_flow(ws, f1, json!({"v": 2})).await.expect("v2");
    s.commit_flow(
        ws,
        FlowCommit {
            contact_id: b,
            counters: vec![
                CounterDelta {
                    version: 2,
                    clicked: 3,
                    ..delta(f1, "a", 1, 0)
                },
                delta(f1, "b", 1, 0),
                delta(f1, "a", 2, 0),
                delta(f1, "a", 0, 0),
            ],
            ..FlowCommit::default()
        },
    )
    .await
    .expect("counters");
    let counters = s.step_counters(ws, f1).await.expect("counters");
    assert_eq!(
        counters
            .iter()
            .map(|k| (k.version, k.step_id.as_str(), k.entered, k.clicked))
            .collect::<Vec<_>>(),
        [(1, "a", 2, 0), (1, "b", 1, 0), (2, "a", 1, 3)]
    );
}

async fn case_contacts_by_field_day(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let bday = field(s, ws, "birthday", FieldType::Date).await;
    let signup = field(s, ws, "signup", FieldType::Datetime).await;
    let note = field(s, ws, "note", FieldType::Text).await;
    let a = person(s, ws, None, &[], vec![value(&bday, json!("1990-05-01"))])
        .await
        .id;
    let b = person(s, ws, None, &[], vec![value(&bday, json!("1985-05-02"))])
        .await
        .id;
    let _c = person(s, ws, None, &[], vec![value(&bday, json!("2000-12-31"))])
        .await
        .id;
    let d = person(s, ws, None, &[], vec![value(&bday, json!("1970-05-01"))])
        .await
        .id;
    let e = person(
        s,
        ws,
        None,
        &[],
        vec![
            value(&signup, json!("2024-05-01T10:00:00+00:00")),
            value(&note, json!("2024-05-01")),
        ],
    )
    .await
    .id;
    s.erase_contact(ws, d).await.expect("erase d");
    let days = [(5, 1), (5, 2)];
    let got = s
        .contacts_by_field_day(ws, "birthday", &days, None, 10)
        .await
        .expect("by day");
    assert_eq!(
        got,
        vec![
            DatedContact {
                contact_id: a,
                value: "1990-05-01".into()
            },
            DatedContact {
                contact_id: b,
                value: "1985-05-02".into()
            },
        ]
    );
    let page = s
        .contacts_by_field_day(ws, "birthday", &days, Some(a), 1)
        .await
        .expect("page");
    assert_eq!(page.iter().map(|d| d.contact_id).collect::<Vec<_>>(), [b]);
    let first = s
        .contacts_by_field_day(ws, "birthday", &days, None, 1)
        .await
        .expect("limit");
    assert_eq!(first.iter().map(|d| d.contact_id).collect::<Vec<_>>(), [a]);
    let dt = s
        .contacts_by_field_day(ws, "signup", &[(5, 1)], None, 10)
        .await
        .expect("datetime");
    assert_eq!(dt.iter().map(|d| d.contact_id).collect::<Vec<_>>(), [e]);
    assert!(dt[0].value.starts_with("2024-05-01T10:00:00"));
    assert!(s
        .contacts_by_field_day(ws, "note", &[(5, 1)], None, 10)
        .await
        .expect("text field")
        .is_empty());
    assert!(s
        .contacts_by_field_day(ws, "nope", &[(5, 1)], None, 10)
        .await
        .expect("unknown")
        .is_empty());
    assert!(s
        .contacts_by_field_day(ws, "birthday", &[], None, 10)
        .await
        .expect("no days")
        .is_empty());
    let other = workspace(s, "other").await;
    assert!(s
        .contacts_by_field_day(other, "birthday", &days, None, 10)
        .await
        .expect("other ws")
        .is_empty());
}

async fn case_inactive_contacts_and_scan_marks(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let t0 = Timestamp::now();
    let a = inbound(s, ws, ch, "1", &sender("a")).await;
    let b = inbound(s, ws, ch, "2", &sender("b")).await;
    let gone = inbound(s, ws, ch, "3", &sender("gone")).await;
    let t1 = Timestamp::now() + SignedDuration::from_millis(1);
    let _never = plain(s, ws).await;
    s.erase_contact(ws, gone).await.expect("erase");
    assert_eq!(
        s.inactive_contacts(ws, t0, t1, None, 10)
            .await
            .expect("window"),
        [a, b]
    );
    assert_eq!(
        s.inactive_contacts(ws, t0, t1, Some(a), 10)
            .await
            .expect("after a"),
        [b]
    );
    assert_eq!(
        s.inactive_contacts(ws, t0, t1, None, 1)
            .await
            .expect("limit"),
        [a]
    );
    assert!(s
        .inactive_contacts(ws, t1, t1 + SignedDuration::from_hours(1), None, 10)
        .await
        .expect("later window")
        .is_empty());

    assert_eq!(s.scan_mark(ws, "inactive:7d").await.expect("unset"), None);
    s.set_scan_mark(ws, "inactive:7d", t0).await.expect("set");
    s.set_scan_mark(ws, "inactive:7d", t1).await.expect("move");
    assert_eq!(
        s.scan_mark(ws, "inactive:7d")
            .await
            .expect("read")
            .map(|t| t.as_microsecond()),
        Some(t1.as_microsecond())
    );
    let other = workspace(s, "other").await;
    assert_eq!(
        s.scan_mark(other, "inactive:7d").await.expect("other"),
        None
    );
    assert_not_found(
        s.set_scan_mark(WorkspaceId(999_999), "k", t0).await,
        "workspace",
    );
}

async fn case_erasure_blanks_flow_data(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    let flow = published(s, ws, "Quiz").await;
    let c = person(s, ws, Some((ch, "555", Some(subscribed(&[])))), &[], vec![]).await;
    let secret = "secret-answer-7731";
    let live = start(
        s,
        ws,
        c.id,
        flow,
        RunState {
            vars: json!({"answers": {"email": secret}}),
            ..waiting("ask", Some(Timestamp::now()))
        },
    )
    .await;
    let failed = start(
        s,
        ws,
        c.id,
        flow,
        RunState {
            error: Some(format!("bad input {secret}")),
            vars: json!({"x": secret}),
            ..state(RunStatus::Failed, "http")
        },
    )
    .await;
    s.emit_signal(
        ws,
        NewSignal {
            channel_id: Some(ch),
            ..signal(c.id, "inbound", json!({"text": secret}))
        },
    )
    .await
    .expect("emit");
    assert!(!s
        .find_text_everywhere(secret)
        .await
        .expect("scan")
        .is_empty());

    s.erase_contact(ws, c.id).await.expect("erase");
    assert_eq!(
        s.find_text_everywhere(secret).await.expect("scan"),
        Vec::<String>::new(),
        "nothing of the person's answers is left"
    );
    let r = s.get_run(ws, live.id).await.expect("live run");
    assert_eq!(r.status, RunStatus::Stopped);
    assert_eq!((r.vars.clone(), r.wait, r.due_at), (json!({}), None, None));
    assert!(r.revision > live.revision && r.ended_at.is_some());
    let f = s.get_run(ws, failed.id).await.expect("failed run");
    assert_eq!(
        (f.status, f.error.clone(), f.vars.clone()),
        (RunStatus::Failed, None, json!({}))
    );
    assert_eq!(
        s.step_counters(ws, flow).await.expect("counters"),
        vec![StepCounter {
            version: 1,
            step_id: "ask".into(),
            dropped: 1,
            ..StepCounter::default()
        }]
    );
    let sigs = claim_all(s).await;
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].data, json!({}));
    assert!(s.live_runs(ws, c.id).await.expect("live").is_empty());
}

async fn case_delete_contact_deletes_runs_and_signals(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let flow = published(s, ws, "F").await;
    let c = plain(s, ws).await;
    let keep = plain(s, ws).await;
    let run = start(s, ws, c, flow, waiting("w", Some(Timestamp::now()))).await;
    let kept = start(s, ws, keep, flow, waiting("w", None)).await;
    s.emit_signal(ws, signal(c, "event", json!({})))
        .await
        .expect("emit");
    let k = s
        .emit_signal(ws, signal(keep, "event", json!({})))
        .await
        .expect("emit");
    s.delete_contact(ws, c).await.expect("delete");
    assert_not_found(s.get_run(ws, run.id).await, "run");
    assert_eq!(s.get_run(ws, kept.id).await.expect("kept"), kept);
    assert_eq!(
        claim_all(s).await.iter().map(|x| x.id).collect::<Vec<_>>(),
        [k]
    );
    assert_eq!(s.next_due().await.expect("next due"), None);
    assert!(!s.ever_ran(ws, c, flow).await.expect("ever"));
}

async fn case_topics_and_settings(s: &DynStore) {
    let ws = workspace(s, "w").await;
    assert_eq!(
        s.workspace_settings(ws).await.expect("defaults"),
        WorkspaceSettings::default()
    );
    let custom = WorkspaceSettings {
        time_zone: "Europe/Moscow".into(),
        quiet_from: None,
        quiet_to: None,
        quiet_weekends: true,
        frequency_cap: None,
    };
    s.set_workspace_settings(ws, custom.clone())
        .await
        .expect("set");
    assert_eq!(s.workspace_settings(ws).await.expect("read"), custom);
    let other = workspace(s, "other").await;
    assert_eq!(
        s.workspace_settings(other).await.expect("other"),
        WorkspaceSettings::default()
    );
    assert_not_found(
        s.workspace_settings(WorkspaceId(999_999)).await,
        "workspace",
    );
    assert_not_found(
        s.set_workspace_settings(WorkspaceId(999_999), custom).await,
        "workspace",
    );

    let topic = |k: &str, n: &str| Topic {
        key: k.into(),
        name: n.into(),
    };
    assert_eq!(
        s.create_topic(ws, topic(" promo ", "Promotions"))
            .await
            .expect("promo"),
        topic("promo", "Promotions")
    );
    s.create_topic(ws, topic("news", "News"))
        .await
        .expect("news");
    assert_conflict(
        s.create_topic(ws, topic("news", "Again")).await,
        "topic_exists",
    );
    assert_invalid(s.create_topic(ws, topic("has space", "X")).await, "key");
    assert_invalid(s.create_topic(ws, topic("ok", "")).await, "name");
    assert_eq!(
        s.list_topics(ws).await.expect("list"),
        [topic("news", "News"), topic("promo", "Promotions")]
    );
    assert!(s.list_topics(other).await.expect("other").is_empty());
    s.create_topic(other, topic("news", "Other news"))
        .await
        .expect("same key elsewhere");
}

async fn case_topic_changes_in_commits(s: &DynStore) {
    let ws = workspace(s, "w").await;
    let ch = channel(s, ws, "bot").await;
    for (k, n) in [("news", "News"), ("promo", "Promo"), ("tips", "Tips")] {
        s.create_topic(
            ws,
            Topic {
                key: k.into(),
                name: n.into(),
            },
        )
        .await
        .expect("topic");
    }
    let all = person(s, ws, Some((ch, "1", Some(subscribed(&[])))), &[], vec![]).await;
    let none = person(s, ws, Some((ch, "2", None)), &[], vec![]).await;
    let topics_of = |c: Contact| c.identities[0].subscription.topics.clone();
    let change = |contact: ContactId, sub: &[&str], unsub: &[&str]| FlowCommit {
        contact_id: contact,
        changes: ContactChanges {
            subscribe_topics: sub.iter().map(|t| (ch, t.to_string())).collect(),
            unsubscribe_topics: unsub.iter().map(|t| (ch, t.to_string())).collect(),
            ..ContactChanges::default()
        },
        ..FlowCommit::default()
    };
    let before = kinds(s, ws, all.id).await;

    // Subscribed to every topic: one more changes nothing; one less spells out the rest.
    s.commit_flow(ws, change(all.id, &["news"], &[]))
        .await
        .expect("noop");
    assert_eq!(kinds(s, ws, all.id).await, before);
    s.commit_flow(ws, change(all.id, &[], &["promo"]))
        .await
        .expect("unsub");
    let c = s.get_contact(ws, all.id).await.expect("contact");
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Subscribed
    );
    assert_eq!(topics_of(c.clone()), ["news", "tips"]);
    assert_eq!(
        c.identities[0]
            .subscription
            .proof
            .as_ref()
            .map(|p| p.source.as_str()),
        Some("telegram_start"),
        "the opt-in's proof stays"
    );
    s.commit_flow(ws, change(all.id, &["promo"], &["tips"]))
        .await
        .expect("both");
    let c = s.get_contact(ws, all.id).await.expect("contact");
    assert_eq!(topics_of(c), ["news", "promo"]);
    let history = s.subscription_history(ws, all.id).await.expect("history");
    assert_eq!(history.len(), 4, "opt-in, then one row per change");
    let events = s.export_contact(ws, all.id).await.expect("export").events;
    let changes: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "subscription_changed")
        .collect();
    assert_eq!(changes.len(), 4);
    assert_eq!(changes[3].data["source"], json!("flow"));
    assert_eq!(changes[3].data["topics"], json!(["news", "promo"]));

    // Removing the last topics ends the subscription rather than reading as "all".
    s.commit_flow(ws, change(all.id, &[], &["news", "promo"]))
        .await
        .expect("last topics");
    let c = s.get_contact(ws, all.id).await.expect("contact");
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );

    // No opt-in there: nothing to add topics to.
    let before = kinds(s, ws, none.id).await;
    s.commit_flow(ws, change(none.id, &["news"], &["promo"]))
        .await
        .expect("not subscribed");
    assert_eq!(kinds(s, ws, none.id).await, before);
    let c = s.get_contact(ws, none.id).await.expect("contact");
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );
    assert!(topics_of(c).is_empty());
}
