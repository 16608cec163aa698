//! Conformance of segments: every case runs on SQLite and on PostgreSQL, so both backends
//! select the same contacts for the same filter.
//!
//! Each `async fn case_xxx(t: &TestStore)` below becomes `sqlite::case_xxx` and
//! `postgres::case_xxx`. PostgreSQL cases return early (after `fresh_store` printed why)
//! when no server is reachable, unless CI=true or VORONKA_REQUIRE_PG=1.

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use voronka_core::channel::{ChannelKind, ChannelSettings};
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldDefinition, FieldSpec, FieldType, FieldValue};
use voronka_core::segment::{compile, Resolved};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::*;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::*;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::fresh_store(super::Backend::Sqlite).await else { return };
                    super::$name(&t).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::fresh_store(super::Backend::Postgres).await else { return };
                    super::$name(&t).await;
                }
            )*
        }
    };
}

cases!(
    case_every_leaf_kind,
    case_nesting,
    case_erased_contacts_never_match,
    case_other_workspaces_never_match,
    case_count_matches_sample,
    case_crud_and_unique_names,
    case_in_use_segments_are_kept,
    case_catalog_lists_names,
);

// ---------------------------------------------------------------- helpers

/// Runs raw SQL (setting up what the API cannot: old times, broadcast rows).
async fn exec(t: &TestStore, sql: &str) {
    if let Some(path) = t.url.strip_prefix("sqlite://") {
        let c = rusqlite::Connection::open(path).expect("open sqlite");
        c.busy_timeout(std::time::Duration::from_secs(5))
            .expect("busy timeout");
        c.execute_batch(sql).expect("raw sql");
    } else {
        let pool = sqlx::PgPool::connect(&t.url).await.expect("connect pg");
        sqlx::raw_sql(sql).execute(&pool).await.expect("raw sql");
        pool.close().await;
    }
}

fn days_ago(n: i64) -> i64 {
    (Timestamp::now() - SignedDuration::from_hours(24 * n)).as_microsecond()
}

fn subscribed(topics: &[&str]) -> SubscriptionChange {
    change(SubscriptionState::Subscribed, topics)
}

fn change(state: SubscriptionState, topics: &[&str]) -> SubscriptionChange {
    SubscriptionChange::new(
        state,
        topics.iter().map(|t| t.to_string()).collect(),
        Some(ConsentProof {
            source: "telegram_start".into(),
            at: Timestamp::from_second(1_700_000_000).expect("valid time"),
            text_shown: None,
            ip: None,
            message_id: None,
        }),
        Timestamp::now(),
    )
    .expect("valid change")
}

async fn channel(s: &DynStore, ws: WorkspaceId, kind: ChannelKind, name: &str) -> ChannelId {
    s.create_channel(
        ws,
        NewChannel {
            kind,
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

async fn field(
    s: &DynStore,
    ws: WorkspaceId,
    key: &str,
    t: FieldType,
    choices: &[&str],
) -> FieldDefinition {
    s.create_field(
        ws,
        FieldSpec {
            key: key.into(),
            label: key.to_uppercase(),
            field_type: t,
            choices: choices.iter().map(|c| c.to_string()).collect(),
        },
    )
    .await
    .expect("create field")
}

fn value(def: &FieldDefinition, v: Value) -> FieldValue {
    FieldValue::validate(def, &v, "f").expect("valid value")
}

/// Resolves `filter` in `ws` now.
async fn resolved(s: &DynStore, ws: WorkspaceId, filter: Value) -> Resolved {
    let cat = s.segment_catalog(ws).await.expect("catalog");
    compile(&filter, &cat, Timestamp::now())
        .unwrap_or_else(|p| panic!("{filter} does not resolve: {p:?}"))
}

/// The contacts of `filter`: checks that the count agrees with the sample and that the
/// sample is newest first, and returns the ids.
async fn members(s: &DynStore, ws: WorkspaceId, filter: Value) -> BTreeSet<ContactId> {
    let seg = resolved(s, ws, filter.clone()).await;
    let n = s.count_segment(ws, &seg).await.expect("count");
    let sample = s.sample_segment(ws, &seg, 100).await.expect("sample");
    let ids: Vec<ContactId> = sample.iter().map(|c| c.id).collect();
    assert_eq!(
        n as usize,
        ids.len(),
        "count and sample disagree for {filter}"
    );
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "sample not newest first for {filter}");
    ids.into_iter().collect()
}

fn set(ids: &[ContactId]) -> BTreeSet<ContactId> {
    ids.iter().copied().collect()
}

/// The shared data set: four live contacts and an erased one in workspace A.
struct World {
    ws: WorkspaceId,
    c: [ContactId; 4],
    erased: ContactId,
    viber: ChannelId,
    broadcast: i64,
}

async fn world(t: &TestStore) -> World {
    let s = &t.store;
    let ws = s.create_workspace("A").await.expect("workspace").id;
    let tg = channel(s, ws, ChannelKind::Telegram, "bot").await;
    let viber = channel(s, ws, ChannelKind::Viber, "viber").await;
    let age = field(s, ws, "age", FieldType::Number, &[]).await;
    let born = field(s, ws, "born", FieldType::Date, &[]).await;
    let city = field(s, ws, "city", FieldType::Text, &[]).await;
    let plan = field(s, ws, "plan", FieldType::Choice, &["free", "pro"]).await;
    s.create_topic(
        ws,
        Topic {
            key: "news".into(),
            name: "News".into(),
        },
    )
    .await
    .expect("topic");

    let mk = |first: Option<&str>,
              lang: Option<&str>,
              tz: Option<&str>,
              source: Option<&str>,
              tags: &[&str],
              fields: Vec<FieldValue>,
              identities: Vec<NewIdentity>| NewContact {
        profile: Profile {
            first_name: first.map(str::to_string),
            language: lang.map(str::to_string),
            time_zone: tz.map(str::to_string),
            ..Profile::default()
        },
        source: source.map(str::to_string),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        fields,
        identities,
    };
    let ident = |ch: ChannelId, ext: &str, sub: SubscriptionChange| NewIdentity {
        channel_id: ch,
        external_id: ext.into(),
        subscription: Some(sub),
    };
    let c1 = s
        .create_contact(
            ws,
            mk(
                Some("Anna"),
                Some("ru-RU"),
                Some("Europe/Moscow"),
                Some("instagram"),
                &["vip"],
                vec![
                    value(&age, json!(35)),
                    value(&city, json!("Moscow")),
                    value(&plan, json!("pro")),
                ],
                vec![ident(tg, "1", subscribed(&["news"]))],
            ),
        )
        .await
        .expect("c1")
        .id;
    let c2 = s
        .create_contact(
            ws,
            mk(
                Some("Boris"),
                Some("en"),
                None,
                None,
                &["vip", "new"],
                vec![
                    value(&age, json!(20)),
                    value(&city, json!("Kazan")),
                    value(&plan, json!("free")),
                ],
                vec![ident(tg, "2", change(SubscriptionState::Unsubscribed, &[]))],
            ),
        )
        .await
        .expect("c2")
        .id;
    let c3 = s
        .create_contact(
            ws,
            mk(
                Some("Anna"),
                Some("ru"),
                None,
                None,
                &[],
                vec![value(&age, json!(50)), value(&born, json!("1990-05-01"))],
                // No topics: subscribed to every topic.
                vec![ident(viber, "3", subscribed(&[]))],
            ),
        )
        .await
        .expect("c3")
        .id;
    let c4 = s
        .create_contact(ws, mk(None, None, None, None, &[], vec![], vec![]))
        .await
        .expect("c4")
        .id;
    let erased = s
        .create_contact(
            ws,
            mk(
                Some("Gone"),
                Some("ru"),
                Some("Europe/Moscow"),
                Some("instagram"),
                &["vip", "new"],
                vec![value(&age, json!(40))],
                vec![ident(tg, "5", subscribed(&["news"]))],
            ),
        )
        .await
        .expect("c5")
        .id;

    // Behaviour: a reply and a conversion, flow runs, broadcast rows, old times.
    s.append_event(ws, c1, EventKind::MessageReceived, json!({"text": "hi"}))
        .await
        .expect("event");
    s.append_event(ws, c2, EventKind::Conversion, json!({"value": 10}))
        .await
        .expect("event");
    s.append_event(ws, erased, EventKind::MessageReceived, json!({}))
        .await
        .expect("event");
    let quiz = s
        .create_flow(ws, "quiz", json!({"steps": []}))
        .await
        .expect("flow")
        .id;
    for (contact, status) in [
        (c1, RunStatus::Done),
        (c2, RunStatus::Waiting),
        (erased, RunStatus::Done),
    ] {
        s.commit_flow(
            ws,
            FlowCommit {
                contact_id: contact,
                runs: vec![RunWrite::Insert(NewRun {
                    flow_id: quiz,
                    version: 1,
                    channel_id: None,
                    state: RunState {
                        status,
                        step_id: "s1".into(),
                        wait: None,
                        due_at: None,
                        attempts: 0,
                        vars: json!({}),
                        error: None,
                    },
                    trigger: "api".into(),
                })],
                ..FlowCommit::default()
            },
        )
        .await
        .expect("run");
    }
    let now = days_ago(0);
    // An explicit id: each test has a fresh database.
    let broadcast = 77;
    exec(
        t,
        &format!(
            "UPDATE contacts SET last_activity_at = {now} WHERE id = {c1};
             UPDATE contacts SET last_activity_at = {a40}, created_at = {a100} WHERE id = {c4};
             INSERT INTO broadcasts (id, workspace_id, name, status, spec, created_at, updated_at)
                 VALUES ({broadcast}, {ws}, 'b1', 'finished', '{{}}', {now}, {now});",
            a40 = days_ago(40),
            a100 = days_ago(100),
        ),
    )
    .await;
    exec(
        t,
        &format!(
            "INSERT INTO broadcast_recipients (broadcast_id, workspace_id, contact_id, status, read_at, clicked_at) VALUES
                 ({broadcast}, {ws}, {c1}, 'read', {now}, NULL),
                 ({broadcast}, {ws}, {c2}, 'sent', NULL, NULL),
                 ({broadcast}, {ws}, {c3}, 'clicked', {now}, {now}),
                 ({broadcast}, {ws}, {c4}, 'skipped', NULL, NULL),
                 ({broadcast}, {ws}, {erased}, 'clicked', {now}, {now});"
        ),
    )
    .await;
    s.erase_contact(ws, erased).await.expect("erase");
    World {
        ws,
        c: [c1, c2, c3, c4],
        erased,
        viber,
        broadcast,
    }
}

// ---------------------------------------------------------------- cases

async fn case_every_leaf_kind(t: &TestStore) {
    let w = world(t).await;
    let s = &t.store;
    let [c1, c2, c3, c4] = w.c;
    let b = w.broadcast;
    let cases: Vec<(Value, Vec<ContactId>)> = vec![
        (json!({"tag": "vip"}), vec![c1, c2]),
        (json!({"tag": "new"}), vec![c2]),
        (json!({"field": "age", "op": "eq", "value": 35}), vec![c1]),
        (
            json!({"field": "age", "op": "ne", "value": 20}),
            vec![c1, c3],
        ),
        (json!({"field": "age", "op": "lt", "value": 35}), vec![c2]),
        (
            json!({"field": "age", "op": "lte", "value": 35}),
            vec![c1, c2],
        ),
        (
            json!({"field": "age", "op": "gt", "value": 30}),
            vec![c1, c3],
        ),
        (json!({"field": "age", "op": "gte", "value": 50}), vec![c3]),
        (
            json!({"field": "age", "op": "between", "value": [20, 35]}),
            vec![c1, c2],
        ),
        (
            json!({"field": "age", "op": "in", "value": [20, 50]}),
            vec![c2, c3],
        ),
        (json!({"field": "age", "op": "exists"}), vec![c1, c2, c3]),
        (
            json!({"field": "city", "op": "contains", "value": "MOS"}),
            vec![c1],
        ),
        (
            json!({"field": "city", "op": "in", "value": ["Kazan", "Omsk"]}),
            vec![c2],
        ),
        (
            json!({"field": "plan", "op": "eq", "value": "pro"}),
            vec![c1],
        ),
        (
            json!({"field": "born", "op": "before", "value": "2000-01-01"}),
            vec![c3],
        ),
        (
            json!({"field": "born", "op": "after", "value": "2000-01-01"}),
            vec![],
        ),
        (
            json!({"field": "born", "op": "older_than_days", "value": 365}),
            vec![c3],
        ),
        (
            json!({"field": "born", "op": "within_last_days", "value": 30}),
            vec![],
        ),
        (
            json!({"field": "first_name", "op": "eq", "value": "Anna"}),
            vec![c1, c3],
        ),
        (
            json!({"field": "first_name", "op": "contains", "value": "bor"}),
            vec![c2],
        ),
        (
            json!({"field": "first_name", "op": "exists"}),
            vec![c1, c2, c3],
        ),
        (json!({"channel": "telegram"}), vec![c1, c2]),
        (json!({"channel": w.viber.0}), vec![c3]),
        (
            json!({"subscription": {"state": "subscribed"}}),
            vec![c1, c3],
        ),
        (
            json!({"subscription": {"channel": "telegram", "state": "subscribed"}}),
            vec![c1],
        ),
        (json!({"subscription": "unsubscribed"}), vec![c2]),
        (json!({"topic": "news"}), vec![c1, c3]),
        (json!({"language": "ru"}), vec![c1, c3]),
        (json!({"language": ["ru-RU"]}), vec![c1]),
        (json!({"language": ["en", "de"]}), vec![c2]),
        (json!({"time_zone": "Europe/Moscow"}), vec![c1]),
        (json!({"source": ["instagram"]}), vec![c1]),
        (
            json!({"broadcast": b, "event": "received"}),
            vec![c1, c2, c3],
        ),
        (json!({"broadcast": b, "event": "read"}), vec![c1, c3]),
        (json!({"broadcast": b, "event": "clicked"}), vec![c3]),
        (json!({"flow": "quiz", "event": "entered"}), vec![c1, c2]),
        (json!({"flow": "quiz", "event": "finished"}), vec![c1]),
        (json!({"replied": {"within_days": 7}}), vec![c1]),
        (json!({"converted": {}}), vec![c2]),
        (json!({"converted": {"within_days": 30}}), vec![c2]),
        (json!({"last_activity": {"within_days": 7}}), vec![c1]),
        (json!({"last_activity": {"older_than_days": 30}}), vec![c4]),
        (json!({"created": {"older_than_days": 30}}), vec![c4]),
        (json!({"created": {"within_days": 1}}), vec![c1, c2, c3]),
        (
            json!({"created": {"after": "2000-01-01", "before": "2100-01-01"}}),
            vec![c1, c2, c3, c4],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(
            members(s, w.ws, filter.clone()).await,
            set(&want),
            "{filter}"
        );
    }
}

async fn case_nesting(t: &TestStore) {
    let w = world(t).await;
    let s = &t.store;
    let [c1, c2, c3, c4] = w.c;
    let cases: Vec<(Value, Vec<ContactId>)> = vec![
        (json!({"and": []}), vec![c1, c2, c3, c4]),
        (
            json!({"and": [{"tag": "vip"}, {"not": {"field": "age", "op": "gt", "value": 30}}]}),
            vec![c2],
        ),
        (
            json!({"or": [{"tag": "new"}, {"field": "age", "op": "gt", "value": 40}]}),
            vec![c2, c3],
        ),
        (json!({"not": {"tag": "vip"}}), vec![c3, c4]),
        (json!({"not": {"and": []}}), vec![]),
        // The benchmark's shape: tag + number + subscribed on a channel + language.
        (
            json!({"and": [
                {"tag": "vip"},
                {"field": "age", "op": "gte", "value": 20},
                {"subscription": {"channel": "telegram", "state": "subscribed"}},
                {"language": ["ru"]}
            ]}),
            vec![c1],
        ),
        // Two drivers to choose from.
        (json!({"and": [{"tag": "vip"}, {"tag": "new"}]}), vec![c2]),
        (
            json!({"and": [{"field": "age", "op": "exists"}, {"tag": "vip"}, {"field": "city", "op": "eq", "value": "Moscow"}]}),
            vec![c1],
        ),
        (
            json!({"and": [{"field": "age", "op": "exists"}, {"not": {"channel": "telegram"}}]}),
            vec![c3],
        ),
        (
            json!({"and": [
                {"or": [{"language": "ru"}, {"converted": {}}]},
                {"not": {"or": [{"tag": "vip"}, {"topic": "news"}]}}
            ]}),
            vec![],
        ),
        (
            json!({"or": [
                {"and": [{"language": "ru"}, {"not": {"tag": "vip"}}]},
                {"and": [{"flow": "quiz", "event": "entered"}, {"not": {"flow": "quiz", "event": "finished"}}]}
            ]}),
            vec![c2, c3],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(
            members(s, w.ws, filter.clone()).await,
            set(&want),
            "{filter}"
        );
    }
}

async fn case_erased_contacts_never_match(t: &TestStore) {
    let w = world(t).await;
    let s = &t.store;
    let b = w.broadcast;
    for filter in [
        json!({"and": []}),
        json!({"not": {"tag": "vip"}}),
        json!({"not": {"field": "age", "op": "exists"}}),
        json!({"broadcast": b, "event": "clicked"}),
        json!({"flow": "quiz", "event": "finished"}),
        json!({"replied": {"within_days": 7}}),
        json!({"created": {"within_days": 1}}),
        json!({"not": {"language": "en"}}),
    ] {
        let got = members(s, w.ws, filter.clone()).await;
        assert!(
            !got.contains(&w.erased),
            "{filter} matched an erased contact"
        );
    }
}

async fn case_other_workspaces_never_match(t: &TestStore) {
    let w = world(t).await;
    let s = &t.store;
    let other = s.create_workspace("B").await.expect("workspace").id;
    let age = field(s, other, "age", FieldType::Number, &[]).await;
    let tg = channel(s, other, ChannelKind::Telegram, "bot").await;
    let theirs = s
        .create_contact(
            other,
            NewContact {
                profile: Profile {
                    language: Some("ru".into()),
                    ..Profile::default()
                },
                tags: vec!["vip".into(), "new".into()],
                fields: vec![value(&age, json!(35))],
                identities: vec![NewIdentity {
                    channel_id: tg,
                    external_id: "1".into(),
                    subscription: Some(subscribed(&["news"])),
                }],
                ..NewContact::default()
            },
        )
        .await
        .expect("contact")
        .id;
    for filter in [
        json!({"and": []}),
        json!({"tag": "vip"}),
        json!({"field": "age", "op": "gt", "value": 30}),
        json!({"not": {"tag": "vip"}}),
        json!({"language": "ru"}),
        json!({"channel": "telegram"}),
    ] {
        let got = members(s, w.ws, filter.clone()).await;
        assert!(
            !got.contains(&theirs),
            "{filter} matched another workspace's contact"
        );
    }
    // And theirs sees only theirs.
    assert_eq!(
        members(s, other, json!({"tag": "vip"})).await,
        set(&[theirs])
    );
    assert_eq!(members(s, other, json!({"and": []})).await, set(&[theirs]));
}

async fn case_count_matches_sample(t: &TestStore) {
    let s = &t.store;
    let ws = s.create_workspace("A").await.expect("workspace").id;
    let score = field(s, ws, "score", FieldType::Number, &[]).await;
    let mut want = Vec::new();
    for i in 0..30 {
        let mut tags = vec!["all".to_string()];
        if i % 3 == 0 {
            tags.push("third".into());
        }
        let id = s
            .create_contact(
                ws,
                NewContact {
                    tags,
                    fields: vec![value(&score, json!(i))],
                    ..NewContact::default()
                },
            )
            .await
            .expect("contact")
            .id;
        if i % 3 == 0 && i >= 10 {
            want.push(id);
        }
    }
    let filter = json!({"and": [{"tag": "third"}, {"field": "score", "op": "gte", "value": 10}]});
    assert_eq!(members(s, ws, filter.clone()).await, set(&want));
    // A sample smaller than the segment is its newest members.
    let seg = resolved(s, ws, filter).await;
    let three: Vec<ContactId> = s
        .sample_segment(ws, &seg, 3)
        .await
        .expect("sample")
        .iter()
        .map(|c| c.id)
        .collect();
    let mut newest = want.clone();
    newest.sort_by(|a, b| b.cmp(a));
    newest.truncate(3);
    assert_eq!(three, newest);
    assert_eq!(
        s.count_segment(ws, &Resolved::All).await.expect("count"),
        30
    );
}

async fn case_crud_and_unique_names(t: &TestStore) {
    let s = &t.store;
    let ws = s.create_workspace("A").await.expect("workspace").id;
    let other = s.create_workspace("B").await.expect("workspace").id;
    let a = s
        .create_segment(ws, " VIPs ", json!({"tag": "vip"}))
        .await
        .expect("create");
    assert_eq!(a.name, "VIPs");
    assert_eq!(a.revision, 1);
    assert_eq!(a.filter, json!({"tag": "vip"}));
    let e = s
        .create_segment(ws, "VIPs", json!({"tag": "x"}))
        .await
        .expect_err("taken");
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                code: "segment_name_taken",
                ..
            }
        ),
        "{e:?}"
    );
    // The same name in another workspace is fine.
    s.create_segment(other, "VIPs", json!({"tag": "vip"}))
        .await
        .expect("other workspace");
    let e = s
        .create_segment(ws, "bad", json!([1]))
        .await
        .expect_err("not an object");
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
    let e = s
        .create_segment(ws, "  ", json!({}))
        .await
        .expect_err("empty name");
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");

    let b = s
        .create_segment(ws, "Active", json!({"last_activity": {"within_days": 7}}))
        .await
        .expect("create");
    let names: Vec<String> = s
        .list_segments(ws)
        .await
        .expect("list")
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, vec!["Active", "VIPs"]);
    assert_eq!(s.get_segment(ws, a.id).await.expect("get"), a);
    assert!(matches!(
        s.get_segment(other, a.id).await,
        Err(StoreError::NotFound { entity: "segment" })
    ));

    let changed = s
        .update_segment(ws, a.id, Some("Top".into()), Some(json!({"tag": "top"})))
        .await
        .expect("update");
    assert_eq!((changed.name.as_str(), changed.revision), ("Top", 2));
    assert_eq!(changed.filter, json!({"tag": "top"}));
    let same = s.update_segment(ws, a.id, None, None).await.expect("no-op");
    assert_eq!(same.revision, 2);
    let e = s
        .update_segment(ws, a.id, Some("Active".into()), None)
        .await
        .expect_err("taken");
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                code: "segment_name_taken",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        s.update_segment(other, a.id, Some("x".into()), None).await,
        Err(StoreError::NotFound { .. })
    ));

    assert!(matches!(
        s.delete_segment(other, b.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete_segment(ws, b.id).await.expect("delete");
    assert!(matches!(
        s.get_segment(ws, b.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.list_segments(ws).await.expect("list").len(), 1);
}

async fn case_in_use_segments_are_kept(t: &TestStore) {
    let s = &t.store;
    let ws = s.create_workspace("A").await.expect("workspace").id;
    let seg = s
        .create_segment(ws, "VIPs", json!({"tag": "vip"}))
        .await
        .expect("create");
    let now = days_ago(0);
    exec(
        t,
        &format!(
            "INSERT INTO broadcasts (workspace_id, name, status, spec, segment_id, created_at, updated_at)
                 VALUES ({ws}, 'live', 'scheduled', '{{}}', {id}, {now}, {now});",
            id = seg.id
        ),
    )
    .await;
    let e = s.delete_segment(ws, seg.id).await.expect_err("in use");
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                code: "segment_in_use",
                ..
            }
        ),
        "{e:?}"
    );
    exec(t, "UPDATE broadcasts SET status = 'finished';").await;
    s.delete_segment(ws, seg.id)
        .await
        .expect("delete once finished");
}

async fn case_catalog_lists_names(t: &TestStore) {
    let w = world(t).await;
    let s = &t.store;
    let cat = s.segment_catalog(w.ws).await.expect("catalog");
    let keys: Vec<&str> = cat.fields.iter().map(|f| f.spec.key.as_str()).collect();
    assert_eq!(keys, vec!["age", "born", "city", "plan"]);
    let mut tags: Vec<&str> = cat.tags.iter().map(|(_, n)| n.as_str()).collect();
    tags.sort();
    assert_eq!(tags, vec!["new", "vip"]);
    assert_eq!(cat.channels.len(), 2);
    assert_eq!(cat.topics, vec!["news".to_string()]);
    assert_eq!(cat.flows.len(), 1);
    assert_eq!(cat.broadcasts, vec![BroadcastId(w.broadcast)]);
    // Another workspace's names are not there.
    let other = s.create_workspace("B").await.expect("workspace").id;
    assert_eq!(
        s.segment_catalog(other).await.expect("catalog"),
        Default::default()
    );
}
