//! The storage conformance suite: every case runs on SQLite and on PostgreSQL, so both
//! backends are held to the same semantics (notes/STORE_SEMANTICS.md).
//!
//! Each `async fn case_xxx(store: &DynStore)` below becomes `sqlite::case_xxx` and
//! `postgres::case_xxx`. PostgreSQL cases return early (after `fresh_store` printed why)
//! when no server is reachable, unless CI=true or VORONKA_REQUIRE_PG=1.

use jiff::Timestamp;
use serde_json::json;
use voronka_core::channel::{ChannelKind, ChannelSettings, ChannelStatus};
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldDefinition, FieldSpec, FieldType, FieldValue};
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::message::{Button, InboundEvent, InboundKind, OutboundMessage, Purpose, Sender};
use voronka_core::role::{Role, Scope};
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
    case_admin,
    case_workspaces,
    case_users,
    case_api_keys,
    case_channels,
    case_tags_and_fields,
    case_contact_lifecycle_and_events,
    case_no_events_for_no_ops,
    case_identities_and_subscriptions,
    case_identity_conflict,
    case_unknown_field_or_channel_is_invalid,
    case_workspace_isolation,
    case_pagination,
    case_filters,
    case_idempotency,
    case_erasure,
    case_import_creates_and_reimport_is_unchanged,
    case_import_matching,
    case_import_duplicates_and_failures,
    case_channel_settings_and_lookup,
    case_record_inbound_dedup,
    case_apply_inbound_creates_contact_once,
    case_apply_inbound_skips_replies_without_consent,
    case_enqueue_enforces_consent,
    case_claim_outbox_and_leases,
    case_complete_outbox,
    case_conversation_order,
    case_messaging_isolation,
    case_messaging_erasure,
);

// ---------------------------------------------------------------- helpers

fn proof_at() -> Timestamp {
    Timestamp::from_second(1_700_000_000).expect("valid time")
}

fn proof(source: &str) -> ConsentProof {
    ConsentProof {
        source: source.into(),
        at: proof_at(),
        text_shown: Some("I agree to news".into()),
        ip: Some("198.51.100.7".into()),
        message_id: None,
    }
}

fn subscribed(source: &str, topics: &[&str]) -> SubscriptionChange {
    SubscriptionChange::new(
        SubscriptionState::Subscribed,
        topics.iter().map(|t| t.to_string()).collect(),
        Some(proof(source)),
        Timestamp::now(),
    )
    .expect("valid change")
}

fn unsubscribed() -> SubscriptionChange {
    SubscriptionChange::new(
        SubscriptionState::Unsubscribed,
        vec![],
        None,
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
    let choices = if t == FieldType::Choice {
        vec!["red".to_string(), "green".to_string()]
    } else {
        vec![]
    };
    s.create_field(
        ws,
        FieldSpec {
            key: key.into(),
            label: key.to_uppercase(),
            field_type: t,
            choices,
        },
    )
    .await
    .expect("create field")
}

fn value(def: &FieldDefinition, v: serde_json::Value) -> FieldValue {
    FieldValue::validate(def, &v, "f").expect("valid value")
}

fn named(first: &str) -> Profile {
    Profile {
        first_name: Some(first.into()),
        ..Profile::default()
    }
}

async fn contact(s: &DynStore, ws: WorkspaceId, new: NewContact) -> Contact {
    s.create_contact(ws, new).await.expect("create contact")
}

async fn plain(s: &DynStore, ws: WorkspaceId, first: &str) -> ContactId {
    contact(
        s,
        ws,
        NewContact {
            profile: named(first),
            ..NewContact::default()
        },
    )
    .await
    .id
}

/// Event kinds of a contact, oldest first.
async fn kinds(s: &DynStore, ws: WorkspaceId, id: ContactId) -> Vec<String> {
    s.export_contact(ws, id)
        .await
        .expect("export")
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn count(s: &DynStore, ws: WorkspaceId, f: ContactFilter) -> u64 {
    s.count_contacts(ws, &f).await.expect("count")
}

async fn ids(s: &DynStore, ws: WorkspaceId, f: ContactFilter) -> Vec<ContactId> {
    let page = s
        .list_contacts(
            ws,
            &ContactQuery {
                filter: f,
                before: None,
                limit: 1000,
            },
        )
        .await
        .expect("list");
    page.items.into_iter().map(|c| c.id).collect()
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T>, entity: &str) {
    match r {
        Err(StoreError::NotFound { entity: e }) => assert_eq!(e, entity, "wrong entity"),
        other => panic!("expected NotFound {entity}, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T>, code: &str, field: Option<&str>) {
    match r {
        Err(StoreError::Conflict {
            code: c, field: f, ..
        }) => {
            assert_eq!(c, code);
            assert_eq!(f.as_deref(), field);
        }
        other => panic!("expected Conflict {code}, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T>, field: &str) {
    match r {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, field),
        other => panic!("expected Invalid {field}, got {other:?}"),
    }
}

fn row(line: u64) -> ImportRow {
    ImportRow {
        line,
        profile: Profile::default(),
        source: None,
        identity: None,
        subscription: None,
        tags: vec![],
        fields: vec![],
    }
}

fn ok(o: &ImportOutcome) -> (ContactId, ImportAction) {
    o.result.clone().expect("row imported")
}

// ---------------------------------------------------------------- cases

async fn case_admin(s: &DynStore) {
    assert!(matches!(s.backend(), "sqlite" | "postgres"));
    s.ping().await.expect("ping");
    assert_eq!(
        s.migrate().await.expect("migrate again"),
        0,
        "second migrate is a no-op"
    );
    assert!(s
        .find_text_everywhere("nothing-like-this-anywhere")
        .await
        .expect("scan")
        .is_empty());
    let ws = workspace(s, "Needle Corp").await;
    let hits = s.find_text_everywhere("Needle Corp").await.expect("scan");
    assert_eq!(hits, vec!["workspaces.name".to_string()]);
    assert!(s.get_workspace(ws).await.is_ok());
}

async fn case_workspaces(s: &DynStore) {
    let a = s.create_workspace("Alpha").await.expect("create");
    assert_eq!(a.name, "Alpha");
    let b = s.create_workspace("Beta").await.expect("create");
    assert_eq!(s.get_workspace(a.id).await.expect("get"), a);
    let all = s.list_workspaces().await.expect("list");
    assert!(all.contains(&a) && all.contains(&b));
    assert_not_found(
        s.get_workspace(WorkspaceId(b.id.0 + 1000)).await,
        "workspace",
    );
}

async fn case_users(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let m = s
        .create_user(
            a,
            NewUser {
                email: "Ivan@Example.com".into(),
                name: "Ivan".into(),
                password_hash: "hash-1".into(),
                role: Role::Owner,
            },
        )
        .await
        .expect("create user");
    assert_eq!(m.role, Role::Owner);
    let login = s
        .find_user_by_email("ivan@example.COM")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(login.user.id, m.user.id);
    assert_eq!(login.password_hash, "hash-1");
    assert!(s
        .find_user_by_email("nobody@example.com")
        .await
        .expect("find")
        .is_none());

    // Known e-mail in another workspace: membership only, password kept.
    let m2 = s
        .create_user(
            b,
            NewUser {
                email: "IVAN@example.com".into(),
                name: "Other".into(),
                password_hash: "hash-2".into(),
                role: Role::Analyst,
            },
        )
        .await
        .expect("add membership");
    assert_eq!(m2.user.id, m.user.id);
    assert_eq!(m2.role, Role::Analyst);
    let login = s
        .find_user_by_email("ivan@example.com")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(login.password_hash, "hash-1");

    assert_conflict(
        s.create_user(
            a,
            NewUser {
                email: "ivan@EXAMPLE.com".into(),
                name: "Ivan".into(),
                password_hash: "x".into(),
                role: Role::Admin,
            },
        )
        .await,
        "member_exists",
        Some("email"),
    );
    let members = s.list_members(b).await.expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, Role::Analyst);
    assert_eq!(
        s.list_members(a).await.expect("members")[0].role,
        Role::Owner
    );
}

async fn case_api_keys(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let key = s
        .create_api_key(
            a,
            NewApiKey {
                name: "crm".into(),
                prefix: "abc123".into(),
                secret_hash: "deadbeef".into(),
                scopes: vec![Scope::ContactsRead, Scope::ContactsWrite],
            },
        )
        .await
        .expect("create key");
    assert_eq!(key.scopes, vec![Scope::ContactsRead, Scope::ContactsWrite]);
    assert!(key.revoked_at.is_none() && key.last_used_at.is_none());
    let found = s
        .find_api_key("abc123")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.key, key);
    assert_eq!(found.secret_hash, "deadbeef");
    assert!(s.find_api_key("zzz").await.expect("find").is_none());

    let used = Timestamp::from_second(1_750_000_000).expect("time");
    s.touch_api_key(key.id, used).await.expect("touch");
    let listed = s.list_api_keys(a).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(used));
    assert!(s.list_api_keys(b).await.expect("list").is_empty());

    assert_not_found(s.revoke_api_key(b, key.id).await, "api_key");
    let revoked = s.revoke_api_key(a, key.id).await.expect("revoke");
    let first = revoked.revoked_at.expect("revoked");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = s.revoke_api_key(a, key.id).await.expect("revoke again");
    assert_eq!(
        again.revoked_at,
        Some(first),
        "revoking again keeps the first time"
    );
    let found = s
        .find_api_key("abc123")
        .await
        .expect("find")
        .expect("still found");
    assert_eq!(found.key.revoked_at, Some(first));
}

async fn case_channels(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = s
        .create_channel(
            a,
            NewChannel {
                kind: ChannelKind::Viber,
                name: "Viber bot".into(),
                credentials: Sealed {
                    key_id: "k1".into(),
                    data: vec![9, 8, 7],
                },
                settings: ChannelSettings::default(),
            },
        )
        .await
        .expect("create");
    assert_eq!(ch.status, ChannelStatus::Active);
    assert_eq!(ch.credentials.data, vec![9, 8, 7]);
    assert_eq!(s.get_channel(a, ch.id).await.expect("get"), ch);
    let up = s
        .update_channel(
            a,
            ch.id,
            ChannelPatch {
                name: Some("Renamed".into()),
                status: Some(ChannelStatus::Disabled),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(up.name, "Renamed");
    assert_eq!(up.status, ChannelStatus::Disabled);
    assert_eq!(up.credentials, ch.credentials);
    assert_eq!(up.kind, ChannelKind::Viber);
    let up = s
        .update_channel(
            a,
            ch.id,
            ChannelPatch {
                credentials: Some(Sealed {
                    key_id: "k2".into(),
                    data: vec![1],
                }),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("update credentials");
    assert_eq!(up.credentials.key_id, "k2");
    assert_eq!(up.name, "Renamed");
    assert_eq!(s.list_channels(a).await.expect("list"), vec![up.clone()]);

    let c = contact(
        s,
        a,
        NewContact {
            identities: vec![NewIdentity {
                channel_id: ch.id,
                external_id: "42".into(),
                subscription: None,
            }],
            ..NewContact::default()
        },
    )
    .await;
    assert_conflict(s.delete_channel(a, ch.id).await, "channel_in_use", None);
    s.delete_contact(a, c.id).await.expect("delete contact");
    s.delete_channel(a, ch.id).await.expect("delete channel");
    assert_not_found(s.get_channel(a, ch.id).await, "channel");
    assert!(s.list_channels(a).await.expect("list").is_empty());
}

async fn case_tags_and_fields(s: &DynStore) {
    let a = workspace(s, "A").await;
    let vip = s.create_tag(a, "vip").await.expect("tag");
    assert_eq!(vip.contacts, 0);
    assert_conflict(s.create_tag(a, "vip").await, "tag_exists", Some("name"));
    let c1 = contact(
        s,
        a,
        NewContact {
            tags: vec!["vip".into(), "new".into()],
            ..NewContact::default()
        },
    )
    .await;
    contact(
        s,
        a,
        NewContact {
            tags: vec!["vip".into()],
            ..NewContact::default()
        },
    )
    .await;
    let tags = s.list_tags(a).await.expect("tags");
    let names: Vec<(&str, u64)> = tags.iter().map(|t| (t.name.as_str(), t.contacts)).collect();
    assert_eq!(
        names,
        vec![("new", 1), ("vip", 2)],
        "sorted by name with counts"
    );
    s.erase_contact(a, c1.id).await.expect("erase");
    let tags = s.list_tags(a).await.expect("tags");
    assert_eq!(
        tags.iter().find(|t| t.name == "vip").map(|t| t.contacts),
        Some(1),
        "erased contacts do not count"
    );

    let c3 = contact(
        s,
        a,
        NewContact {
            tags: vec!["vip".into()],
            ..NewContact::default()
        },
    )
    .await;
    s.delete_tag(a, vip.id).await.expect("delete tag");
    assert!(s.get_contact(a, c3.id).await.expect("get").tags.is_empty());
    assert_not_found(s.delete_tag(a, vip.id).await, "tag");

    let color = field(s, a, "color", FieldType::Choice).await;
    let age = field(s, a, "age", FieldType::Number).await;
    assert_eq!(
        color.spec.choices,
        vec!["red".to_string(), "green".to_string()]
    );
    assert_conflict(
        s.create_field(
            a,
            FieldSpec {
                key: "age".into(),
                label: "Again".into(),
                field_type: FieldType::Text,
                choices: vec![],
            },
        )
        .await,
        "field_exists",
        Some("key"),
    );
    let fields = s.list_fields(a).await.expect("fields");
    assert_eq!(
        fields,
        vec![age.clone(), color.clone()],
        "sorted by key, choices kept"
    );
    s.set_fields(
        a,
        c3.id,
        vec![value(&age, json!(33)), value(&color, json!("red"))],
    )
    .await
    .expect("set");
    s.delete_field(a, age.id).await.expect("delete field");
    let got = s.get_contact(a, c3.id).await.expect("get");
    assert_eq!(got.fields.len(), 1);
    assert_eq!(got.fields.get("color"), Some(&json!("red")));
    assert_not_found(s.delete_field(a, age.id).await, "field");
}

async fn case_contact_lifecycle_and_events(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let city = field(s, a, "city", FieldType::Text).await;
    let score = field(s, a, "score", FieldType::Number).await;
    let vip = field(s, a, "vip", FieldType::Bool).await;
    let c = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                first_name: Some("Ivan".into()),
                phone: Some("+79161234567".into()),
                ..Profile::default()
            },
            source: Some("ref:spring".into()),
            tags: vec!["b".into(), "a".into()],
            fields: vec![
                value(&city, json!("Moscow")),
                value(&score, json!(4.5)),
                value(&vip, json!(true)),
            ],
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "1001".into(),
                subscription: Some(subscribed("telegram_start", &["news"])),
            }],
        },
    )
    .await;
    assert_eq!(c.profile.first_name.as_deref(), Some("Ivan"));
    assert_eq!(c.source.as_deref(), Some("ref:spring"));
    assert_eq!(
        c.tags,
        vec!["a".to_string(), "b".to_string()],
        "tags sorted"
    );
    assert_eq!(c.fields.get("city"), Some(&json!("Moscow")));
    assert_eq!(c.fields.get("score"), Some(&json!(4.5)));
    assert_eq!(c.fields.get("vip"), Some(&json!(true)));
    assert_eq!(c.created_at, c.updated_at);
    assert!(c.erased_at.is_none());
    assert_eq!(c.identities.len(), 1);
    let ident = &c.identities[0];
    assert_eq!(ident.subscription.state, SubscriptionState::Subscribed);
    assert_eq!(ident.subscription.topics, vec!["news".to_string()]);
    assert_eq!(ident.subscription.proof, Some(proof("telegram_start")));
    assert_eq!(
        s.get_contact(a, c.id).await.expect("get"),
        c,
        "read back equals what create returned"
    );

    let k = kinds(s, a, c.id).await;
    assert_eq!(k[0], "contact_created");
    for (kind, n) in [
        ("tag_added", 2),
        ("field_set", 3),
        ("identity_added", 1),
        ("subscription_changed", 1),
    ] {
        assert_eq!(
            k.iter().filter(|x| *x == kind).count(),
            n,
            "{kind} in {k:?}"
        );
    }
    let export = s.export_contact(a, c.id).await.expect("export");
    let created = &export.events[0];
    assert_eq!(created.data, json!({"source": "ref:spring"}));
    let sub = export
        .events
        .iter()
        .find(|e| e.kind == "subscription_changed")
        .expect("sub event");
    assert_eq!(
        sub.data,
        json!({"identity_id": ident.id.0, "channel_id": ch.0, "state": "subscribed", "topics": ["news"], "source": "telegram_start"})
    );
    let fs = export
        .events
        .iter()
        .find(|e| e.data.get("key") == Some(&json!("city")))
        .expect("field event");
    assert_eq!(fs.data, json!({"key": "city", "value": "Moscow"}));
    assert_eq!(export.subscription_history.len(), 1);
    assert_eq!(export.subscription_history[0].identity_id, Some(ident.id));
    assert_eq!(
        export.subscription_history[0].proof,
        Some(proof("telegram_start"))
    );
    assert!(
        export.events.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );

    // Profile update records the changed attribute names.
    let mut p = c.profile.clone();
    p.last_name = Some("Petrov".into());
    p.first_name = None;
    let up = s.update_profile(a, c.id, p.clone()).await.expect("update");
    assert_eq!(up.profile, p);
    assert!(up.updated_at >= c.updated_at);
    let last = s.list_events(a, c.id, None, 1).await.expect("events").items;
    assert_eq!(last[0].kind, "profile_updated");
    let mut changed: Vec<String> =
        serde_json::from_value(last[0].data["changed"].clone()).expect("names");
    changed.sort();
    assert_eq!(
        changed,
        vec!["first_name".to_string(), "last_name".to_string()]
    );

    // Tags and fields.
    let added = s
        .add_tags(a, c.id, &["a".into(), "c".into()])
        .await
        .expect("add tags");
    assert_eq!(added, vec!["c".to_string()]);
    assert!(s.remove_tag(a, c.id, "a").await.expect("remove"));
    assert!(!s.remove_tag(a, c.id, "a").await.expect("remove again"));
    assert!(!s
        .remove_tag(a, c.id, "never")
        .await
        .expect("remove unknown"));
    s.set_fields(
        a,
        c.id,
        vec![value(&city, json!("Kazan")), value(&score, json!(4.5))],
    )
    .await
    .expect("set fields");
    assert!(s.unset_field(a, c.id, vip.id).await.expect("unset"));
    assert!(!s.unset_field(a, c.id, vip.id).await.expect("unset again"));
    let got = s.get_contact(a, c.id).await.expect("get");
    assert_eq!(got.tags, vec!["b".to_string(), "c".to_string()]);
    assert_eq!(got.fields.get("city"), Some(&json!("Kazan")));
    assert!(!got.fields.contains_key("vip"));
    let tail: Vec<(String, serde_json::Value)> = s
        .list_events(a, c.id, None, 4)
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.kind, e.data))
        .collect();
    assert_eq!(
        tail,
        vec![
            ("field_unset".to_string(), json!({"key": "vip"})),
            (
                "field_set".to_string(),
                json!({"key": "city", "value": "Kazan"})
            ),
            ("tag_removed".to_string(), json!({"tag": "a"})),
            ("tag_added".to_string(), json!({"tag": "c"})),
        ],
        "newest first; unchanged score wrote no field_set"
    );

    // Custom events.
    let ev = s
        .append_event(
            a,
            c.id,
            EventKind::Custom,
            json!({"name": "purchase", "amount": 10}),
        )
        .await
        .expect("append");
    assert_eq!(ev.kind, "custom");
    assert_eq!(
        s.list_events(a, c.id, None, 1).await.expect("events").items,
        vec![ev]
    );

    // Delete removes everything.
    s.delete_contact(a, c.id).await.expect("delete");
    assert_not_found(s.get_contact(a, c.id).await, "contact");
    assert_not_found(s.delete_contact(a, c.id).await, "contact");
    assert_not_found(s.list_events(a, c.id, None, 10).await, "contact");
    assert_eq!(count(s, a, ContactFilter::default()).await, 0);
    // The identity is free again.
    plain(s, a, "x").await;
    let again = contact(
        s,
        a,
        NewContact {
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "1001".into(),
                subscription: None,
            }],
            ..NewContact::default()
        },
    )
    .await;
    assert_eq!(
        again.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );
    assert!(again.identities[0].subscription.proof.is_none());
    assert!(
        s.subscription_history(a, again.id)
            .await
            .expect("history")
            .is_empty(),
        "None writes no history"
    );
}

async fn case_no_events_for_no_ops(s: &DynStore) {
    let a = workspace(s, "A").await;
    let city = field(s, a, "city", FieldType::Text).await;
    let c = contact(
        s,
        a,
        NewContact {
            profile: named("Anna"),
            tags: vec!["t".into()],
            fields: vec![value(&city, json!("Omsk"))],
            ..NewContact::default()
        },
    )
    .await;
    let before = kinds(s, a, c.id).await;
    let same = s
        .update_profile(a, c.id, c.profile.clone())
        .await
        .expect("no-op update");
    assert_eq!(
        same.updated_at, c.updated_at,
        "no-op update keeps updated_at"
    );
    assert!(s
        .add_tags(a, c.id, &["t".into()])
        .await
        .expect("add")
        .is_empty());
    s.set_fields(a, c.id, vec![value(&city, json!("Omsk"))])
        .await
        .expect("same value");
    assert!(!s.remove_tag(a, c.id, "other").await.expect("remove"));
    assert_eq!(
        kinds(s, a, c.id).await,
        before,
        "no event for no-op changes"
    );
    assert_eq!(
        s.get_contact(a, c.id).await.expect("get").updated_at,
        c.updated_at
    );
}

async fn case_identities_and_subscriptions(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let ch2 = channel(s, a, "bot2").await;
    let id = plain(s, a, "Oleg").await;
    let ident = s
        .add_identity(
            a,
            id,
            NewIdentity {
                channel_id: ch,
                external_id: "77".into(),
                subscription: None,
            },
        )
        .await
        .expect("add identity");
    assert_eq!(ident.contact_id, id);
    assert_eq!(ident.subscription.state, SubscriptionState::Unsubscribed);
    let changed = s
        .set_subscription(
            a,
            id,
            ident.id,
            subscribed("landing:spring", &["promo", "news"]),
        )
        .await
        .expect("subscribe");
    assert_eq!(changed.subscription.state, SubscriptionState::Subscribed);
    assert_eq!(
        changed.subscription.topics,
        vec!["promo".to_string(), "news".to_string()]
    );
    assert_eq!(changed.subscription.proof, Some(proof("landing:spring")));
    let out = s
        .set_subscription(a, id, ident.id, unsubscribed())
        .await
        .expect("unsubscribe");
    assert_eq!(out.subscription.state, SubscriptionState::Unsubscribed);
    assert!(out.subscription.proof.is_none());
    let hist = s.subscription_history(a, id).await.expect("history");
    let states: Vec<SubscriptionState> = hist.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        vec![
            SubscriptionState::Subscribed,
            SubscriptionState::Unsubscribed
        ],
        "oldest first"
    );
    assert!(hist
        .iter()
        .all(|h| h.identity_id == Some(ident.id) && h.channel_id == ch));
    let got = s.get_contact(a, id).await.expect("get");
    assert_eq!(got.identities, vec![out.clone()]);

    let other = s
        .add_identity(
            a,
            id,
            NewIdentity {
                channel_id: ch2,
                external_id: "78".into(),
                subscription: Some(subscribed("x", &[])),
            },
        )
        .await
        .expect("second identity");
    let got = s.get_contact(a, id).await.expect("get");
    assert_eq!(
        got.identities.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![ident.id, other.id],
        "by id"
    );

    let stranger = plain(s, a, "Stranger").await;
    assert_not_found(s.remove_identity(a, stranger, ident.id).await, "identity");
    assert_not_found(
        s.set_subscription(a, stranger, ident.id, unsubscribed())
            .await,
        "identity",
    );
    s.remove_identity(a, id, ident.id)
        .await
        .expect("remove identity");
    assert_not_found(s.remove_identity(a, id, ident.id).await, "identity");
    let hist = s.subscription_history(a, id).await.expect("history");
    assert_eq!(
        hist.len(),
        3,
        "history rows stay after the identity is removed"
    );
    let k = kinds(s, a, id).await;
    assert_eq!(
        k,
        vec![
            "contact_created",
            "identity_added",
            "subscription_changed",
            "subscription_changed",
            "identity_added",
            "subscription_changed",
            "identity_removed"
        ]
    );
    let last = s.list_events(a, id, None, 1).await.expect("events").items;
    assert_eq!(
        last[0].data,
        json!({"identity_id": ident.id.0, "channel_id": ch.0})
    );
}

async fn case_identity_conflict(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let new = |ext: &str| NewIdentity {
        channel_id: ch,
        external_id: ext.into(),
        subscription: None,
    };
    contact(
        s,
        a,
        NewContact {
            identities: vec![new("500")],
            ..NewContact::default()
        },
    )
    .await;
    assert_conflict(
        s.create_contact(
            a,
            NewContact {
                profile: named("Dup"),
                tags: vec!["dup-tag".into()],
                identities: vec![new("500")],
                ..NewContact::default()
            },
        )
        .await,
        "identity_taken",
        Some("external_id"),
    );
    assert_eq!(
        count(s, a, ContactFilter::default()).await,
        1,
        "the failed create wrote nothing"
    );
    assert!(
        s.list_tags(a).await.expect("tags").is_empty(),
        "not even its tag"
    );
    let other = plain(s, a, "Other").await;
    assert_conflict(
        s.add_identity(a, other, new("500")).await,
        "identity_taken",
        Some("external_id"),
    );
    assert!(s
        .get_contact(a, other)
        .await
        .expect("get")
        .identities
        .is_empty());
}

async fn case_unknown_field_or_channel_is_invalid(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let b_field = field(s, b, "age", FieldType::Number).await;
    let b_channel = channel(s, b, "bot").await;
    assert_invalid(
        s.create_contact(
            a,
            NewContact {
                fields: vec![value(&b_field, json!(3))],
                ..NewContact::default()
            },
        )
        .await,
        "fields",
    );
    let r = s
        .create_contact(
            a,
            NewContact {
                identities: vec![NewIdentity {
                    channel_id: b_channel,
                    external_id: "1".into(),
                    subscription: None,
                }],
                ..NewContact::default()
            },
        )
        .await;
    match r {
        Err(StoreError::Invalid(e)) => {
            assert_eq!(e.field, "channel_id");
            assert!(
                e.message.contains(&format!("unknown channel {b_channel}")),
                "{}",
                e.message
            );
        }
        other => panic!("expected Invalid channel_id, got {other:?}"),
    }
    assert_eq!(
        count(s, a, ContactFilter::default()).await,
        0,
        "nothing written"
    );
    let c = plain(s, a, "x").await;
    assert_invalid(
        s.set_fields(a, c, vec![value(&b_field, json!(1))]).await,
        "fields",
    );
    assert_invalid(
        s.add_identity(
            a,
            c,
            NewIdentity {
                channel_id: b_channel,
                external_id: "2".into(),
                subscription: None,
            },
        )
        .await,
        "channel_id",
    );
    assert_eq!(kinds(s, a, c).await, vec!["contact_created"]);
}

async fn case_workspace_isolation(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let ch = channel(s, a, "a-bot").await;
    let age = field(s, a, "age", FieldType::Number).await;
    let tag = s.create_tag(a, "a-tag").await.expect("tag");
    let key = s
        .create_api_key(
            a,
            NewApiKey {
                name: "k".into(),
                prefix: "pfx1".into(),
                secret_hash: "h".into(),
                scopes: vec![Scope::Admin],
            },
        )
        .await
        .expect("key");
    let c = contact(
        s,
        a,
        NewContact {
            profile: named("Alice"),
            tags: vec!["a-tag".into()],
            fields: vec![value(&age, json!(40))],
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "a1".into(),
                subscription: Some(subscribed("x", &[])),
            }],
            ..NewContact::default()
        },
    )
    .await;
    let ident = c.identities[0].id;
    let b_contact = plain(s, b, "Bob").await;

    // Every operation of B on A's ids is "not found".
    assert_not_found(s.get_contact(b, c.id).await, "contact");
    assert_not_found(s.update_profile(b, c.id, named("Hacked")).await, "contact");
    assert_not_found(s.delete_contact(b, c.id).await, "contact");
    assert_not_found(s.add_tags(b, c.id, &["x".into()]).await, "contact");
    assert_not_found(s.remove_tag(b, c.id, "a-tag").await, "contact");
    assert_not_found(s.set_fields(b, c.id, vec![]).await, "contact");
    assert_not_found(s.unset_field(b, c.id, age.id).await, "contact");
    assert_not_found(s.unset_field(b, b_contact, age.id).await, "field");
    assert_not_found(
        s.add_identity(
            b,
            c.id,
            NewIdentity {
                channel_id: ch,
                external_id: "zz".into(),
                subscription: None,
            },
        )
        .await,
        "contact",
    );
    assert_not_found(s.remove_identity(b, c.id, ident).await, "contact");
    assert_not_found(s.remove_identity(b, b_contact, ident).await, "identity");
    assert_not_found(
        s.set_subscription(b, c.id, ident, unsubscribed()).await,
        "contact",
    );
    assert_not_found(
        s.set_subscription(b, b_contact, ident, unsubscribed())
            .await,
        "identity",
    );
    assert_not_found(s.subscription_history(b, c.id).await, "contact");
    assert_not_found(
        s.append_event(b, c.id, EventKind::Custom, json!({})).await,
        "contact",
    );
    assert_not_found(s.list_events(b, c.id, None, 10).await, "contact");
    assert_not_found(s.export_contact(b, c.id).await, "contact");
    assert_not_found(s.erase_contact(b, c.id).await, "contact");
    assert_not_found(s.get_channel(b, ch).await, "channel");
    assert_not_found(
        s.update_channel(b, ch, ChannelPatch::default()).await,
        "channel",
    );
    assert_not_found(s.delete_channel(b, ch).await, "channel");
    assert_not_found(s.delete_tag(b, tag.id).await, "tag");
    assert_not_found(s.delete_field(b, age.id).await, "field");
    assert_not_found(s.revoke_api_key(b, key.id).await, "api_key");

    // No list or count of B contains A's rows.
    assert_eq!(ids(s, b, ContactFilter::default()).await, vec![b_contact]);
    assert_eq!(count(s, b, ContactFilter::default()).await, 1);
    assert_eq!(
        count(
            s,
            b,
            ContactFilter {
                tags: vec!["a-tag".into()],
                ..ContactFilter::default()
            }
        )
        .await,
        0
    );
    let age_cond = ContactFilter {
        fields: vec![FieldCondition {
            field_id: age.id,
            op: FieldOp::Exists,
            operand: Operand::None,
        }],
        ..ContactFilter::default()
    };
    assert_eq!(count(s, b, age_cond.clone()).await, 0);
    assert!(ids(s, b, age_cond).await.is_empty());
    assert_eq!(
        count(
            s,
            b,
            ContactFilter {
                channel_id: Some(ch),
                ..ContactFilter::default()
            }
        )
        .await,
        0
    );
    assert_eq!(
        count(
            s,
            b,
            ContactFilter {
                subscription: Some(SubscriptionState::Subscribed),
                ..ContactFilter::default()
            }
        )
        .await,
        0
    );
    assert_eq!(
        count(
            s,
            b,
            ContactFilter {
                q: Some("alice".into()),
                ..ContactFilter::default()
            }
        )
        .await,
        0
    );
    assert!(s.list_tags(b).await.expect("tags").is_empty());
    assert!(s.list_fields(b).await.expect("fields").is_empty());
    assert!(s.list_channels(b).await.expect("channels").is_empty());
    assert!(s.list_api_keys(b).await.expect("keys").is_empty());
    assert!(s.list_members(b).await.expect("members").is_empty());
    let r = s
        .import_contacts(
            b,
            vec![ImportRow {
                identity: Some((ch, "a1".into())),
                ..row(2)
            }],
        )
        .await
        .expect("import");
    assert_eq!(r[0].result, Err(format!("unknown channel {ch}")));
    let r = s
        .import_contacts(
            b,
            vec![ImportRow {
                fields: vec![value(&age, json!(1))],
                ..row(3)
            }],
        )
        .await
        .expect("import");
    assert!(r[0].result.is_err(), "A's field is unknown in B");

    // A is untouched.
    let got = s.get_contact(a, c.id).await.expect("get");
    assert_eq!(got, c);
    assert_eq!(count(s, a, ContactFilter::default()).await, 1);
}

async fn case_pagination(s: &DynStore) {
    let a = workspace(s, "A").await;
    let mut all = Vec::new();
    for i in 0..25 {
        all.push(plain(s, a, &format!("P{i}")).await);
    }
    all.reverse(); // newest first
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .list_contacts(
                a,
                &ContactQuery {
                    filter: ContactFilter::default(),
                    before,
                    limit: 10,
                },
            )
            .await
            .expect("page");
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next {
            Some(n) => {
                assert_eq!(Some(&n), seen.last());
                before = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(seen, all);
    // Exactly `limit` rows left: no next page.
    let last5 = s
        .list_contacts(
            a,
            &ContactQuery {
                filter: ContactFilter::default(),
                before: Some(all[19]),
                limit: 5,
            },
        )
        .await
        .expect("page");
    assert_eq!(last5.items.len(), 5);
    assert_eq!(last5.next, None);
    // Limit is clamped to at least 1.
    let one = s
        .list_contacts(
            a,
            &ContactQuery {
                filter: ContactFilter::default(),
                before: None,
                limit: 0,
            },
        )
        .await
        .expect("page");
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.next, Some(all[0]));

    // Event pages.
    let c = all[0];
    for i in 0..6 {
        s.append_event(a, c, EventKind::Custom, json!({ "i": i }))
            .await
            .expect("append");
    }
    let p1 = s.list_events(a, c, None, 4).await.expect("events");
    assert_eq!(p1.items.len(), 4);
    assert_eq!(p1.items[0].data, json!({"i": 5}));
    let p2 = s.list_events(a, c, p1.next, 4).await.expect("events");
    assert_eq!(p2.items.len(), 3, "2 custom + contact_created");
    assert_eq!(p2.next, None);
    assert_eq!(p2.items[2].kind, "contact_created");
}

async fn case_filters(s: &DynStore) {
    let a = workspace(s, "A").await;
    let tg = channel(s, a, "tg").await;
    let vb = channel(s, a, "vb").await;
    let age = field(s, a, "age", FieldType::Number).await;
    let city = field(s, a, "city", FieldType::Text).await;
    let born = field(s, a, "born", FieldType::Date).await;
    let mk = |first: &str, tags: &[&str], fields: Vec<FieldValue>, idents: Vec<NewIdentity>| {
        NewContact {
            profile: named(first),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fields,
            identities: idents,
            ..NewContact::default()
        }
    };
    let ident = |ch: ChannelId, ext: &str, sub: Option<SubscriptionChange>| NewIdentity {
        channel_id: ch,
        external_id: ext.into(),
        subscription: sub,
    };
    let c1 = contact(
        s,
        a,
        mk(
            "Ivan",
            &["vip", "buyer"],
            vec![
                value(&age, json!(30)),
                value(&city, json!("Moscow")),
                value(&born, json!("1990-05-01")),
            ],
            vec![ident(tg, "1", Some(subscribed("x", &[])))],
        ),
    )
    .await
    .id;
    let c2 = contact(
        s,
        a,
        mk(
            "Olga",
            &["vip"],
            vec![
                value(&age, json!(45)),
                value(&city, json!("St 100%_Petersburg")),
            ],
            vec![
                ident(tg, "2", None),
                ident(vb, "2", Some(subscribed("x", &[]))),
            ],
        ),
    )
    .await
    .id;
    let c3 = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                last_name: Some("Smirnova".into()),
                email: Some("Anna.S@example.com".into()),
                phone: Some("+79035550000".into()),
                username: Some("annas".into()),
                ..Profile::default()
            },
            tags: vec!["buyer".into()],
            fields: vec![value(&city, json!("moscow region"))],
            ..NewContact::default()
        },
    )
    .await
    .id;
    let erased = contact(
        s,
        a,
        mk("Ivan", &["vip"], vec![value(&age, json!(30))], vec![]),
    )
    .await
    .id;
    s.erase_contact(a, erased).await.expect("erase");

    let cond = |f: &FieldDefinition, op: FieldOp, operand: Operand| FieldCondition {
        field_id: f.id,
        op,
        operand,
    };
    let check = |f: ContactFilter, want: Vec<ContactId>| async move {
        let mut want = want;
        want.sort_by(|x, y| y.cmp(x));
        assert_eq!(ids(s, a, f.clone()).await, want, "list {f:?}");
        assert_eq!(
            count(s, a, f.clone()).await,
            want.len() as u64,
            "count {f:?}"
        );
    };
    let by_tags = |t: &[&str]| ContactFilter {
        tags: t.iter().map(|x| x.to_string()).collect(),
        ..ContactFilter::default()
    };
    let by_field = |c: FieldCondition| ContactFilter {
        fields: vec![c],
        ..ContactFilter::default()
    };

    check(ContactFilter::default(), vec![c1, c2, c3]).await;
    check(by_tags(&["vip"]), vec![c1, c2]).await;
    check(by_tags(&["vip", "buyer"]), vec![c1]).await;
    check(by_tags(&["vip", "nope"]), vec![]).await;
    check(
        by_field(cond(&age, FieldOp::Eq, Operand::Num(30.0))),
        vec![c1],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Ne, Operand::Num(30.0))),
        vec![c2],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Lt, Operand::Num(45.0))),
        vec![c1],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Lte, Operand::Num(45.0))),
        vec![c1, c2],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Gt, Operand::Num(30.0))),
        vec![c2],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Gte, Operand::Num(30.0))),
        vec![c1, c2],
    )
    .await;
    check(
        by_field(cond(&age, FieldOp::Exists, Operand::None)),
        vec![c1, c2],
    )
    .await;
    check(
        by_field(cond(&born, FieldOp::Lt, Operand::Num(7_000.0))),
        vec![],
    )
    .await;
    check(
        by_field(cond(&born, FieldOp::Gt, Operand::Num(7_000.0))),
        vec![c1],
    )
    .await;
    check(
        by_field(cond(&city, FieldOp::Eq, Operand::Text("Moscow".into()))),
        vec![c1],
    )
    .await;
    check(
        by_field(cond(&city, FieldOp::Ne, Operand::Text("Moscow".into()))),
        vec![c2, c3],
    )
    .await;
    check(
        by_field(cond(
            &city,
            FieldOp::Contains,
            Operand::Text("MOSCOW".into()),
        )),
        vec![c1, c3],
    )
    .await;
    check(
        by_field(cond(
            &city,
            FieldOp::Contains,
            Operand::Text("100%_".into()),
        )),
        vec![c2],
    )
    .await;
    check(
        by_field(cond(&city, FieldOp::Contains, Operand::Text("0%".into()))),
        vec![c2],
    )
    .await;
    check(
        by_field(cond(&city, FieldOp::Contains, Operand::Text("%".into()))),
        vec![c2],
    )
    .await;
    check(
        by_field(cond(&city, FieldOp::Contains, Operand::Text("_".into()))),
        vec![c2],
    )
    .await;
    check(
        ContactFilter {
            tags: vec!["vip".into()],
            fields: vec![cond(&age, FieldOp::Gt, Operand::Num(40.0))],
            ..ContactFilter::default()
        },
        vec![c2],
    )
    .await;
    check(
        ContactFilter {
            fields: vec![
                cond(&age, FieldOp::Gte, Operand::Num(30.0)),
                cond(&city, FieldOp::Contains, Operand::Text("mos".into())),
            ],
            ..ContactFilter::default()
        },
        vec![c1],
    )
    .await;
    check(
        ContactFilter {
            channel_id: Some(tg),
            ..ContactFilter::default()
        },
        vec![c1, c2],
    )
    .await;
    check(
        ContactFilter {
            channel_id: Some(vb),
            ..ContactFilter::default()
        },
        vec![c2],
    )
    .await;
    check(
        ContactFilter {
            subscription: Some(SubscriptionState::Subscribed),
            ..ContactFilter::default()
        },
        vec![c1, c2],
    )
    .await;
    check(
        ContactFilter {
            subscription: Some(SubscriptionState::Unsubscribed),
            ..ContactFilter::default()
        },
        vec![c2],
    )
    .await;
    // The same identity must satisfy channel and state: c2 is unsubscribed on tg.
    check(
        ContactFilter {
            channel_id: Some(tg),
            subscription: Some(SubscriptionState::Subscribed),
            ..ContactFilter::default()
        },
        vec![c1],
    )
    .await;
    check(
        ContactFilter {
            channel_id: Some(vb),
            subscription: Some(SubscriptionState::Unsubscribed),
            ..ContactFilter::default()
        },
        vec![],
    )
    .await;
    check(
        ContactFilter {
            q: Some("IVAN".into()),
            ..ContactFilter::default()
        },
        vec![c1],
    )
    .await;
    check(
        ContactFilter {
            q: Some("smirn".into()),
            ..ContactFilter::default()
        },
        vec![c3],
    )
    .await;
    check(
        ContactFilter {
            q: Some("anna.s@EXAMPLE".into()),
            ..ContactFilter::default()
        },
        vec![c3],
    )
    .await;
    check(
        ContactFilter {
            q: Some("5550000".into()),
            ..ContactFilter::default()
        },
        vec![c3],
    )
    .await;
    check(
        ContactFilter {
            q: Some("ANNAS".into()),
            ..ContactFilter::default()
        },
        vec![c3],
    )
    .await;
    check(
        ContactFilter {
            q: Some("%".into()),
            ..ContactFilter::default()
        },
        vec![],
    )
    .await;
    check(
        ContactFilter {
            tags: vec!["buyer".into()],
            q: Some("an".into()),
            ..ContactFilter::default()
        },
        vec![c1, c3],
    )
    .await;
    check(
        ContactFilter {
            tags: vec!["vip".into()],
            channel_id: Some(vb),
            ..ContactFilter::default()
        },
        vec![c2],
    )
    .await;
    // Filtered pagination.
    let page = s
        .list_contacts(
            a,
            &ContactQuery {
                filter: by_tags(&["vip"]),
                before: None,
                limit: 1,
            },
        )
        .await
        .expect("page");
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![c2]
    );
    assert_eq!(page.next, Some(c2));
    let page = s
        .list_contacts(
            a,
            &ContactQuery {
                filter: by_tags(&["vip"]),
                before: page.next,
                limit: 1,
            },
        )
        .await
        .expect("page");
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![c1]
    );
    assert_eq!(page.next, None);
}

async fn case_idempotency(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    assert_eq!(
        s.idempotency_begin(a, "k1", "h1").await.expect("begin"),
        IdempotencyBegin::Started
    );
    assert_eq!(
        s.idempotency_begin(a, "k1", "h1").await.expect("again"),
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        s.idempotency_begin(a, "k1", "h2")
            .await
            .expect("other hash"),
        IdempotencyBegin::Mismatch
    );
    assert_eq!(
        s.idempotency_begin(b, "k1", "h2").await.expect("other ws"),
        IdempotencyBegin::Started
    );
    let saved = SavedResponse {
        status: 201,
        body: b"{\"id\":1}".to_vec(),
    };
    s.idempotency_complete(a, "k1", saved.clone(), None)
        .await
        .expect("complete");
    assert_eq!(
        s.idempotency_begin(a, "k1", "h1").await.expect("replay"),
        IdempotencyBegin::Replay(saved)
    );
    assert_eq!(
        s.idempotency_begin(a, "k1", "h9").await.expect("mismatch"),
        IdempotencyBegin::Mismatch
    );

    // Abort releases a running reservation only.
    assert_eq!(
        s.idempotency_begin(a, "k2", "h").await.expect("begin"),
        IdempotencyBegin::Started
    );
    s.idempotency_abort(a, "k2").await.expect("abort");
    assert_eq!(
        s.idempotency_begin(a, "k2", "other").await.expect("retry"),
        IdempotencyBegin::Started
    );
    s.idempotency_abort(a, "k1")
        .await
        .expect("abort of a finished key");
    assert!(matches!(
        s.idempotency_begin(a, "k1", "h1").await.expect("kept"),
        IdempotencyBegin::Replay(_)
    ));

    // Purge by creation time.
    assert_eq!(
        s.idempotency_purge(Timestamp::from_second(1_000).expect("t"))
            .await
            .expect("purge none"),
        0
    );
    let future = Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    assert_eq!(s.idempotency_purge(future).await.expect("purge all"), 3);
    assert_eq!(
        s.idempotency_begin(a, "k1", "h1").await.expect("fresh"),
        IdempotencyBegin::Started
    );
}

async fn case_erasure(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let note = field(s, a, "note", FieldType::Text).await;
    let pii = [
        "Zyxfirstname",
        "Zyxlastname",
        "zyxusername",
        "+79990001122",
        "zyxmail@example.com",
        "https://example.com/zyxavatar.png",
        "zyxsourcetag",
        "zyxexternal",
        "zyxprooftext",
        "203.0.113.77",
        "zyxmessageid",
        "zyxfieldvalue",
        "zyxcustomdata",
        "zyxidempotent",
    ];
    let proof = ConsentProof {
        source: "landing".into(),
        at: proof_at(),
        text_shown: Some("zyxprooftext".into()),
        ip: Some("203.0.113.77".into()),
        message_id: Some("zyxmessageid".into()),
    };
    let change = SubscriptionChange::new(
        SubscriptionState::Subscribed,
        vec![],
        Some(proof),
        Timestamp::now(),
    )
    .expect("change");
    let c = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                first_name: Some("Zyxfirstname".into()),
                last_name: Some("Zyxlastname".into()),
                username: Some("zyxusername".into()),
                phone: Some("+79990001122".into()),
                email: Some("zyxmail@example.com".into()),
                avatar_url: Some("https://example.com/zyxavatar.png".into()),
                ..Profile::default()
            },
            source: Some("zyxsourcetag".into()),
            tags: vec!["customer".into()],
            fields: vec![value(&note, json!("zyxfieldvalue"))],
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "zyxexternal".into(),
                subscription: Some(change),
            }],
        },
    )
    .await;
    s.update_profile(
        a,
        c.id,
        Profile {
            last_name: Some("Zyxlastname".into()),
            ..c.profile.clone()
        },
    )
    .await
    .expect("update");
    s.append_event(a, c.id, EventKind::Custom, json!({"note": "zyxcustomdata"}))
        .await
        .expect("event");
    assert_eq!(
        s.idempotency_begin(a, "erase-key", "h")
            .await
            .expect("begin"),
        IdempotencyBegin::Started
    );
    s.idempotency_complete(
        a,
        "erase-key",
        SavedResponse {
            status: 201,
            body: b"{\"note\":\"zyxidempotent\"}".to_vec(),
        },
        Some(c.id),
    )
    .await
    .expect("complete");
    let keep = plain(s, a, "Keeper").await;
    for needle in pii {
        assert!(
            !s.find_text_everywhere(needle)
                .await
                .expect("scan")
                .is_empty(),
            "{needle} is stored before erasure"
        );
    }
    let kinds_before = kinds(s, a, c.id).await;
    let history_before = s.subscription_history(a, c.id).await.expect("history");
    assert_eq!(count(s, a, ContactFilter::default()).await, 2);

    s.erase_contact(a, c.id).await.expect("erase");
    for needle in pii {
        assert_eq!(
            s.find_text_everywhere(needle).await.expect("scan"),
            Vec::<String>::new(),
            "{needle} left after erasure"
        );
    }
    let got = s.get_contact(a, c.id).await.expect("still readable");
    assert!(got.erased_at.is_some());
    assert_eq!(got.profile, Profile::default());
    assert!(
        got.source.is_none()
            && got.tags.is_empty()
            && got.fields.is_empty()
            && got.identities.is_empty()
    );
    let mut want = kinds_before.clone();
    want.push("erased".into());
    assert_eq!(
        kinds(s, a, c.id).await,
        want,
        "event kinds stay, `erased` appended"
    );
    let export = s.export_contact(a, c.id).await.expect("export");
    assert!(export.events.iter().all(|e| e.data == json!({})));
    let history = export.subscription_history;
    assert_eq!(history.len(), history_before.len());
    for (h, b) in history.iter().zip(&history_before) {
        assert_eq!(
            (h.state, h.channel_id, h.created_at, h.identity_id),
            (b.state, b.channel_id, b.created_at, b.identity_id)
        );
        assert!(h.proof.is_none());
    }
    assert_eq!(
        count(s, a, ContactFilter::default()).await,
        1,
        "erased contacts are not counted"
    );
    assert_eq!(ids(s, a, ContactFilter::default()).await, vec![keep]);
    assert_eq!(
        count(
            s,
            a,
            ContactFilter {
                tags: vec!["customer".into()],
                ..ContactFilter::default()
            }
        )
        .await,
        0
    );
    assert_eq!(
        s.idempotency_begin(a, "erase-key", "h")
            .await
            .expect("begin"),
        IdempotencyBegin::Started,
        "saved answer deleted"
    );
    // Idempotent: a second erasure changes nothing.
    s.erase_contact(a, c.id).await.expect("erase again");
    assert_eq!(kinds(s, a, c.id).await, want);
    // An erased contact cannot be given personal data again.
    let refused = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Conflict {
            code: "contact_erased",
            ..
        }) => {}
        other => panic!("{what} on an erased contact: {other:?}"),
    };
    let profile = Profile {
        first_name: Some("Zyxwv".into()),
        ..Profile::default()
    };
    refused(
        s.update_profile(a, c.id, profile).await.map(|_| ()),
        "update_profile",
    );
    refused(
        s.add_tags(a, c.id, &["again".into()]).await.map(|_| ()),
        "add_tags",
    );
    refused(
        s.add_identity(
            a,
            c.id,
            NewIdentity {
                channel_id: ch,
                external_id: "zyx-new".into(),
                subscription: None,
            },
        )
        .await
        .map(|_| ()),
        "add_identity",
    );
    assert_eq!(kinds(s, a, c.id).await, want, "refusals write nothing");
    // The identity is free for someone else.
    contact(
        s,
        a,
        NewContact {
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "zyxexternal".into(),
                subscription: None,
            }],
            ..NewContact::default()
        },
    )
    .await;
}

async fn case_import_creates_and_reimport_is_unchanged(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let age = field(s, a, "age", FieldType::Number).await;
    let city = field(s, a, "city", FieldType::Text).await;
    let rows = || {
        vec![
            ImportRow {
                profile: Profile {
                    first_name: Some("Ivan".into()),
                    phone: Some("+79161110000".into()),
                    ..Profile::default()
                },
                source: Some("import:crm".into()),
                identity: Some((ch, "tg-1".into())),
                subscription: Some(subscribed("import:crm", &["news"])),
                tags: vec!["crm".into(), "vip".into(), "crm".into()],
                fields: vec![value(&age, json!(30)), value(&city, json!("Tver"))],
                ..row(2)
            },
            ImportRow {
                profile: Profile {
                    email: Some("olga@example.com".into()),
                    ..Profile::default()
                },
                identity: Some((ch, "tg-2".into())),
                subscription: None,
                tags: vec!["crm".into()],
                ..row(3)
            },
        ]
    };
    let out = s.import_contacts(a, rows()).await.expect("import");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].line, 2);
    let (id1, act1) = ok(&out[0]);
    let (id2, act2) = ok(&out[1]);
    assert_eq!((act1, act2), (ImportAction::Created, ImportAction::Created));

    let c1 = s.get_contact(a, id1).await.expect("get");
    assert_eq!(c1.source.as_deref(), Some("import:crm"));
    assert_eq!(c1.tags, vec!["crm".to_string(), "vip".to_string()]);
    assert_eq!(c1.fields.get("age"), Some(&json!(30)));
    assert_eq!(
        c1.identities[0].subscription.state,
        SubscriptionState::Subscribed
    );
    assert_eq!(
        c1.identities[0].subscription.topics,
        vec!["news".to_string()]
    );
    assert_eq!(
        s.subscription_history(a, id1).await.expect("history").len(),
        1
    );
    let events = s.export_contact(a, id1).await.expect("export").events;
    assert_eq!(events.len(), 1, "exactly one event per imported contact");
    let data = &events[0].data;
    assert_eq!(events[0].kind, "contact_imported");
    assert_eq!(data["action"], json!("created"));
    assert_eq!(data["line"], json!(2));
    assert_eq!(data["identity_added"], json!(true));
    assert_eq!(data["subscription"], json!("subscribed"));
    let mut tags: Vec<String> = serde_json::from_value(data["tags"].clone()).expect("tags");
    tags.sort();
    assert_eq!(tags, vec!["crm".to_string(), "vip".to_string()]);
    let mut fields: Vec<String> = serde_json::from_value(data["fields"].clone()).expect("fields");
    fields.sort();
    assert_eq!(fields, vec!["age".to_string(), "city".to_string()]);
    let mut profile: Vec<String> =
        serde_json::from_value(data["profile"].clone()).expect("profile");
    profile.sort();
    assert_eq!(profile, vec!["first_name".to_string(), "phone".to_string()]);

    // A row without consent: the identity starts unsubscribed, with no history.
    let c2 = s.get_contact(a, id2).await.expect("get");
    assert_eq!(
        c2.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );
    assert!(c2.identities[0].subscription.proof.is_none());
    assert!(s
        .subscription_history(a, id2)
        .await
        .expect("history")
        .is_empty());

    // Re-importing the same rows changes nothing and writes nothing.
    let before1 = s.export_contact(a, id1).await.expect("export");
    let before2 = s.export_contact(a, id2).await.expect("export");
    let again = s.import_contacts(a, rows()).await.expect("re-import");
    assert_eq!(ok(&again[0]), (id1, ImportAction::Unchanged));
    assert_eq!(ok(&again[1]), (id2, ImportAction::Unchanged));
    assert_eq!(s.export_contact(a, id1).await.expect("export"), before1);
    assert_eq!(s.export_contact(a, id2).await.expect("export"), before2);
    assert_eq!(count(s, a, ContactFilter::default()).await, 2);
    let tags = s.list_tags(a).await.expect("tags");
    assert_eq!(
        tags.iter()
            .map(|t| (t.name.as_str(), t.contacts))
            .collect::<Vec<_>>(),
        vec![("crm", 2), ("vip", 1)]
    );

    // A changed row updates only what differs, with one event.
    let mut changed = rows();
    changed[0].profile.first_name = Some("Ivan II".into());
    changed[0].profile.phone = None; // None never clears
    changed[0].tags.push("new".into());
    changed[0].fields = vec![value(&age, json!(31)), value(&city, json!("Tver"))];
    changed[0].subscription = Some(subscribed("import:crm", &["news"])); // same state and topics
    changed[1].subscription = Some(subscribed("import:crm2", &[]));
    let out = s.import_contacts(a, changed).await.expect("import");
    assert_eq!(ok(&out[0]), (id1, ImportAction::Updated));
    assert_eq!(ok(&out[1]), (id2, ImportAction::Updated));
    let c1 = s.get_contact(a, id1).await.expect("get");
    assert_eq!(c1.profile.first_name.as_deref(), Some("Ivan II"));
    assert_eq!(c1.profile.phone.as_deref(), Some("+79161110000"));
    assert_eq!(
        c1.tags,
        vec!["crm".to_string(), "new".to_string(), "vip".to_string()]
    );
    assert_eq!(c1.fields.get("age"), Some(&json!(31)));
    assert!(c1.updated_at > before1.contact.updated_at);
    assert_eq!(
        s.subscription_history(a, id1).await.expect("history").len(),
        1,
        "same state: no history"
    );
    let last = s.list_events(a, id1, None, 10).await.expect("events").items;
    assert_eq!(last.len(), 2);
    assert_eq!(last[0].data["action"], json!("updated"));
    assert_eq!(last[0].data["profile"], json!(["first_name"]));
    assert_eq!(last[0].data["tags"], json!(["new"]));
    assert_eq!(last[0].data["fields"], json!(["age"]));
    assert_eq!(last[0].data["identity_added"], json!(false));
    assert_eq!(last[0].data["subscription"], json!(null));
    let c2 = s.get_contact(a, id2).await.expect("get");
    assert_eq!(
        c2.identities[0].subscription.state,
        SubscriptionState::Subscribed
    );
    assert_eq!(
        s.subscription_history(a, id2).await.expect("history").len(),
        1
    );
    let last = s.list_events(a, id2, None, 1).await.expect("events").items;
    assert_eq!(last[0].data["subscription"], json!("subscribed"));
}

async fn case_import_matching(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let by_ident = contact(
        s,
        a,
        NewContact {
            profile: named("ByIdentity"),
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: "id-1".into(),
                subscription: None,
            }],
            ..NewContact::default()
        },
    )
    .await
    .id;
    let phone1 = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                phone: Some("+79160000001".into()),
                ..Profile::default()
            },
            ..NewContact::default()
        },
    )
    .await
    .id;
    let phone2 = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                phone: Some("+79160000001".into()),
                ..Profile::default()
            },
            ..NewContact::default()
        },
    )
    .await
    .id;
    let mail = contact(
        s,
        a,
        NewContact {
            profile: Profile {
                email: Some("m@example.com".into()),
                ..Profile::default()
            },
            ..NewContact::default()
        },
    )
    .await
    .id;
    let rows = vec![
        // Identity wins over phone and e-mail (and moves this phone onto the contact).
        ImportRow {
            identity: Some((ch, "id-1".into())),
            profile: Profile {
                phone: Some("+79160000009".into()),
                ..Profile::default()
            },
            tags: vec!["t1".into()],
            ..row(2)
        },
        // Phone: the lowest id of several; the new identity attaches to it.
        ImportRow {
            profile: Profile {
                phone: Some("+79160000001".into()),
                ..Profile::default()
            },
            identity: Some((ch, "id-2".into())),
            subscription: Some(subscribed("import", &[])),
            ..row(3)
        },
        // E-mail.
        ImportRow {
            profile: Profile {
                email: Some("m@example.com".into()),
                first_name: Some("Mail".into()),
                ..Profile::default()
            },
            ..row(4)
        },
        // A later row sees the phone row 2 wrote.
        ImportRow {
            profile: Profile {
                phone: Some("+79160000009".into()),
                last_name: Some("Moved".into()),
                ..Profile::default()
            },
            ..row(5)
        },
    ];
    let out = s.import_contacts(a, rows).await.expect("import");
    assert_eq!(ok(&out[3]), (by_ident, ImportAction::Updated));
    assert_eq!(ok(&out[0]), (by_ident, ImportAction::Updated));
    assert_eq!(ok(&out[1]), (phone1, ImportAction::Updated));
    assert_eq!(ok(&out[2]), (mail, ImportAction::Updated));
    let got = s.get_contact(a, by_ident).await.expect("get");
    assert_eq!(got.profile.phone.as_deref(), Some("+79160000009"));
    assert_eq!(got.profile.last_name.as_deref(), Some("Moved"));
    assert_eq!(got.tags, vec!["t1".to_string()]);
    let got = s.get_contact(a, phone1).await.expect("get");
    assert_eq!(got.identities.len(), 1);
    assert_eq!(got.identities[0].external_id, "id-2");
    assert_eq!(
        got.identities[0].subscription.state,
        SubscriptionState::Subscribed
    );
    assert_eq!(
        s.subscription_history(a, phone1)
            .await
            .expect("history")
            .len(),
        1
    );
    let ev = s
        .list_events(a, phone1, None, 1)
        .await
        .expect("events")
        .items;
    assert_eq!(ev[0].data["identity_added"], json!(true));
    assert!(s
        .get_contact(a, phone2)
        .await
        .expect("get")
        .identities
        .is_empty());
    assert_eq!(
        s.get_contact(a, mail)
            .await
            .expect("get")
            .profile
            .first_name
            .as_deref(),
        Some("Mail")
    );
    assert_eq!(
        count(s, a, ContactFilter::default()).await,
        4,
        "nothing new created"
    );
}

async fn case_import_duplicates_and_failures(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let ch = channel(s, a, "bot").await;
    let foreign_ch = channel(s, b, "b-bot").await;
    let age = field(s, a, "age", FieldType::Number).await;
    let foreign_field = field(s, b, "score", FieldType::Number).await;
    let rows = vec![
        ImportRow {
            profile: Profile {
                phone: Some("+79161234000".into()),
                first_name: Some("First".into()),
                ..Profile::default()
            },
            tags: vec!["a".into()],
            ..row(2)
        },
        // Unknown channel: refused, nothing of it written.
        ImportRow {
            profile: named("Ghost"),
            identity: Some((foreign_ch, "x".into())),
            tags: vec!["ghost-tag".into()],
            ..row(3)
        },
        // Same person again in the same file: sees row 2's contact.
        ImportRow {
            profile: Profile {
                phone: Some("+79161234000".into()),
                last_name: Some("Second".into()),
                ..Profile::default()
            },
            tags: vec!["b".into()],
            fields: vec![value(&age, json!(50))],
            identity: Some((ch, "dup".into())),
            ..row(4)
        },
        // Unknown field: refused.
        ImportRow {
            profile: named("Ghost2"),
            fields: vec![value(&foreign_field, json!(1))],
            ..row(5)
        },
        // Matches row 4's identity within the batch; nothing new → unchanged.
        ImportRow {
            identity: Some((ch, "dup".into())),
            tags: vec!["b".into()],
            ..row(6)
        },
        // A fresh contact after the failures still imports.
        ImportRow {
            profile: named("Last"),
            ..row(7)
        },
    ];
    let out = s.import_contacts(a, rows).await.expect("import");
    assert_eq!(
        out.iter().map(|o| o.line).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7]
    );
    let (id, act) = ok(&out[0]);
    assert_eq!(act, ImportAction::Created);
    assert_eq!(out[1].result, Err(format!("unknown channel {foreign_ch}")));
    assert_eq!(ok(&out[2]), (id, ImportAction::Updated));
    assert!(out[3].result.is_err());
    assert_eq!(ok(&out[4]), (id, ImportAction::Unchanged));
    assert_eq!(ok(&out[5]).1, ImportAction::Created);

    let got = s.get_contact(a, id).await.expect("get");
    assert_eq!(got.profile.first_name.as_deref(), Some("First"));
    assert_eq!(got.profile.last_name.as_deref(), Some("Second"));
    assert_eq!(got.tags, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(got.fields.get("age"), Some(&json!(50)));
    assert_eq!(got.identities.len(), 1);
    assert_eq!(
        got.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );
    assert_eq!(
        kinds(s, a, id).await,
        vec!["contact_imported", "contact_imported"]
    );
    assert_eq!(count(s, a, ContactFilter::default()).await, 2);
    assert!(s
        .list_tags(a)
        .await
        .expect("tags")
        .iter()
        .all(|t| t.name != "ghost-tag"));
    assert!(s
        .find_text_everywhere("Ghost")
        .await
        .expect("scan")
        .is_empty());

    // Cascades still work after an import (a backend may relax checks while importing).
    s.delete_contact(a, id).await.expect("delete");
    let again = s
        .create_contact(
            a,
            NewContact {
                identities: vec![NewIdentity {
                    channel_id: ch,
                    external_id: "dup".into(),
                    subscription: None,
                }],
                ..NewContact::default()
            },
        )
        .await
        .expect("the deleted contact's identity is free");
    assert_eq!(again.identities.len(), 1);
    assert_not_found(s.get_contact(b, again.id).await, "contact");
}

// ---------------------------------------------------------------- messaging

fn sender(external_id: &str, first: &str) -> Sender {
    Sender {
        external_id: external_id.into(),
        first_name: Some(first.into()),
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

/// Stores one event; panics on a duplicate.
async fn receive(s: &DynStore, ws: WorkspaceId, ch: ChannelId, e: InboundEvent) -> InboundId {
    let got = s.record_inbound(ws, ch, vec![e]).await.expect("record");
    assert_eq!(got.len(), 1);
    got[0].expect("a new event")
}

fn reply(purpose: Purpose, text: &str, source: &str) -> NewReply {
    NewReply {
        purpose,
        message: OutboundMessage::text(text),
        source: source.into(),
    }
}

fn outbound(ch: ChannelId, purpose: Purpose, text: &str) -> NewOutbound {
    NewOutbound {
        channel_id: ch,
        purpose,
        message: OutboundMessage::text(text),
        source: "api".into(),
        run_at: None,
    }
}

fn with_buttons(text: &str) -> OutboundMessage {
    OutboundMessage {
        text: Some(text.into()),
        buttons: vec![
            Button::Reply {
                label: "Yes".into(),
                payload: None,
            },
            Button::Url {
                label: "Site".into(),
                url: "https://example.com".into(),
            },
        ],
        ..OutboundMessage::default()
    }
}

/// A contact with one identity on `ch` in the given consent state.
async fn recipient(
    s: &DynStore,
    ws: WorkspaceId,
    ch: ChannelId,
    external_id: &str,
    change: Option<SubscriptionChange>,
) -> Contact {
    contact(
        s,
        ws,
        NewContact {
            profile: named("Recipient"),
            identities: vec![NewIdentity {
                channel_id: ch,
                external_id: external_id.into(),
                subscription: change,
            }],
            ..NewContact::default()
        },
    )
    .await
}

fn blocked() -> SubscriptionChange {
    SubscriptionChange::new(SubscriptionState::Blocked, vec![], None, Timestamp::now())
        .expect("valid change")
}

async fn events_of(s: &DynStore, ws: WorkspaceId, id: ContactId) -> Vec<Event> {
    s.export_contact(ws, id).await.expect("export").events
}

async fn counts(s: &DynStore, ch: Option<ChannelId>) -> Vec<(OutboxState, u64)> {
    s.outbox_counts(ch).await.expect("counts")
}

fn state_counts(queued: u64, sending: u64, sent: u64, failed: u64) -> Vec<(OutboxState, u64)> {
    vec![
        (OutboxState::Queued, queued),
        (OutboxState::Sending, sending),
        (OutboxState::Sent, sent),
        (OutboxState::Failed, failed),
    ]
}

async fn case_channel_settings_and_lookup(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let plain_ch = s
        .get_channel(a, channel(s, a, "plain").await)
        .await
        .expect("get");
    assert_eq!(plain_ch.settings, ChannelSettings::default());
    assert_eq!(plain_ch.runtime, ChannelRuntime::default());
    assert_eq!(plain_ch.workspace_id, a);

    let custom = ChannelSettings {
        stop_words: vec!["halt".into()],
        welcome: Some(with_buttons("Welcome!")),
        auto_reply: Some(OutboundMessage::text("We will answer soon")),
        consent_text: "Yes, send me news".into(),
        ..ChannelSettings::default()
    };
    let ch = s
        .create_channel(
            b,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "custom".into(),
                credentials: Sealed {
                    key_id: "k1".into(),
                    data: vec![5],
                },
                settings: custom.clone(),
            },
        )
        .await
        .expect("create");
    assert_eq!(ch.settings, custom);
    assert_eq!(s.get_channel(b, ch.id).await.expect("get"), ch);

    let runtime = ChannelRuntime {
        mode: "webhook".into(),
        account_name: Some("shop_bot".into()),
        account_id: Some("123".into()),
        last_error: Some("timeout".into()),
        last_error_at: Some(proof_at()),
    };
    let up = s
        .update_channel(
            b,
            ch.id,
            ChannelPatch {
                runtime: Some(runtime.clone()),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("patch runtime");
    assert_eq!(up.runtime, runtime);
    assert_eq!(up.settings, custom, "settings untouched");
    let up = s
        .update_channel(
            b,
            ch.id,
            ChannelPatch {
                settings: Some(ChannelSettings::default()),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("patch settings");
    assert_eq!(up.settings, ChannelSettings::default());
    assert_eq!(up.runtime, runtime, "runtime untouched");
    let up = s
        .update_channel(
            b,
            ch.id,
            ChannelPatch {
                name: Some("renamed".into()),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("rename");
    assert_eq!(
        (up.settings.clone(), up.runtime.clone()),
        (ChannelSettings::default(), runtime)
    );

    // Lookups by id alone, for webhooks and adapters.
    assert_eq!(s.find_channel(up.id).await.expect("find"), up);
    assert_eq!(
        s.find_channel(plain_ch.id)
            .await
            .expect("find")
            .workspace_id,
        a
    );
    assert_not_found(s.find_channel(ChannelId(up.id.0 + 100)).await, "channel");
    assert_eq!(
        s.all_channels().await.expect("all"),
        vec![plain_ch.clone(), up.clone()]
    );
    // The workspace-scoped reads stay scoped.
    assert_not_found(s.get_channel(a, up.id).await, "channel");
    s.delete_channel(b, up.id).await.expect("delete");
    assert_eq!(s.all_channels().await.expect("all"), vec![plain_ch]);
}

async fn case_record_inbound_dedup(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let ch1 = channel(s, a, "one").await;
    let ch2 = channel(s, a, "two").await;
    let ivan = sender("100", "Ivan");
    let e1 = text_event("u1", &ivan, "hi");
    let e2 = text_event("u2", &ivan, "there");
    let first = s
        .record_inbound(a, ch1, vec![e1.clone(), e2.clone()])
        .await
        .expect("record");
    assert!(first.iter().all(Option::is_some), "{first:?}");
    assert!(first[0] < first[1], "ids follow the order of the events");
    // A provider retry is not stored again, also within one batch.
    let e3 = text_event("u3", &ivan, "again");
    let again = s
        .record_inbound(a, ch1, vec![e1.clone(), e3.clone(), e3.clone()])
        .await
        .expect("retry");
    assert_eq!(again[0], None);
    assert!(again[1].is_some());
    assert_eq!(again[2], None);
    // The same provider id on another channel is another event.
    let other = s
        .record_inbound(a, ch2, vec![e1.clone()])
        .await
        .expect("other channel");
    assert!(other[0].is_some());
    assert_eq!(
        s.record_inbound(a, ch1, vec![]).await.expect("empty"),
        vec![]
    );
    // A channel of another workspace is not found, whether the event is new or not.
    assert_not_found(s.record_inbound(b, ch1, vec![e1.clone()]).await, "channel");
    assert_not_found(
        s.record_inbound(b, ch1, vec![text_event("new", &ivan, "x")])
            .await,
        "channel",
    );

    let pending = s.pending_inbound(None, 100).await.expect("pending");
    let ids: Vec<InboundId> = pending.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![
            first[0].expect("id"),
            first[1].expect("id"),
            again[1].expect("id"),
            other[0].expect("id")
        ]
    );
    assert_eq!(pending[0].event, e1);
    assert_eq!(pending[0].channel_id, ch1);
    assert_eq!(pending[0].workspace_id, a);
    assert_eq!(pending[0].attempts, 0);
    assert_eq!(pending[2].event, e3);
    assert_eq!(pending[3].channel_id, ch2);
    let page = s.pending_inbound(Some(ids[0]), 2).await.expect("after");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[1], ids[2]]
    );

    // A retryable failure keeps the event pending; a final one takes it out.
    s.fail_inbound(ids[0], "database busy", true)
        .await
        .expect("retry");
    let p = s.pending_inbound(None, 100).await.expect("pending");
    assert_eq!(p[0].id, ids[0]);
    assert_eq!(p[0].attempts, 1);
    s.fail_inbound(ids[0], "bad payload", false)
        .await
        .expect("fail");
    let p = s.pending_inbound(None, 100).await.expect("pending");
    assert_eq!(p.len(), 3);
    assert!(p.iter().all(|r| r.id != ids[0]));
    // Failing it again (a late worker) changes nothing; an unknown id is not found.
    s.fail_inbound(ids[0], "late", true).await.expect("late");
    assert_eq!(
        s.pending_inbound(None, 100).await.expect("pending").len(),
        3
    );
    assert_not_found(
        s.fail_inbound(InboundId(ids[3].0 + 1000), "x", true).await,
        "inbound_event",
    );
    // A failed event is not processed any more.
    let done = s
        .apply_inbound(
            a,
            ids[0],
            InboundApply {
                sender: ivan.clone(),
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply failed event");
    assert!(done.already_done);
    assert_eq!(count(s, a, ContactFilter::default()).await, 0);
}

async fn case_apply_inbound_creates_contact_once(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let from = Sender {
        external_id: " 555 ".into(),
        first_name: Some("Ivan".into()),
        last_name: Some(" Petrov ".into()),
        username: Some("@ivan_p".into()),
        language: Some("not a language!".into()),
    };
    let start = InboundEvent {
        provider_event_id: "1".into(),
        sender: from.clone(),
        at: 1_700_000_000,
        kind: InboundKind::Start {
            message_id: "m1".into(),
            text: "/start spring".into(),
            reference: Some("spring".into()),
        },
    };
    let id = receive(s, a, ch, start).await;
    let apply = InboundApply {
        sender: from.clone(),
        source: Some("ref:spring".into()),
        subscription: Some(subscribed("telegram_start", &[])),
        events: vec![(
            EventKind::ConversationStarted,
            json!({"reference": "spring"}),
        )],
        replies: vec![
            reply(Purpose::Response, "Welcome!", "welcome"),
            reply(Purpose::Marketing, "Our offers", "flow:onboarding"),
        ],
        signal: None,
    };
    let got = s.apply_inbound(a, id, apply.clone()).await.expect("apply");
    assert!(got.contact_created && got.subscription_changed && !got.already_done);
    assert_eq!(got.queued.len(), 2, "subscribed now: marketing may go too");

    let c = s.get_contact(a, got.contact_id).await.expect("contact");
    assert_eq!(
        c.profile,
        Profile {
            first_name: Some("Ivan".into()),
            last_name: Some("Petrov".into()),
            username: Some("ivan_p".into()),
            language: None,
            ..Profile::default()
        },
        "trimmed and normalised; the invalid language dropped"
    );
    assert_eq!(c.source.as_deref(), Some("ref:spring"));
    assert!(c.last_activity_at.is_some());
    assert_eq!(c.identities.len(), 1);
    let ident = &c.identities[0];
    assert_eq!(ident.id, got.identity_id);
    assert_eq!(ident.external_id, "555");
    assert_eq!(ident.channel_id, ch);
    assert_eq!(ident.subscription.state, SubscriptionState::Subscribed);
    assert_eq!(
        ident.subscription.proof.as_ref().map(|p| p.source.as_str()),
        Some("telegram_start")
    );
    let history = s.subscription_history(a, c.id).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, SubscriptionState::Subscribed);
    assert!(history[0].proof.is_some());
    let events = events_of(s, a, c.id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "contact_created",
            "identity_added",
            "subscription_changed",
            "conversation_started",
            "message_queued",
            "message_queued"
        ]
    );
    assert_eq!(events[0].data["source"], json!("ref:spring"));
    assert_eq!(events[0].data["channel_id"], json!(ch.0));
    assert_eq!(events[3].data, json!({"reference": "spring"}));
    assert_eq!(
        events[4].data,
        json!({"outbox_id": got.queued[0].0, "channel_id": ch.0, "source": "welcome", "purpose": "response"})
    );
    let welcome = s.get_outbound(a, got.queued[0]).await.expect("welcome");
    assert_eq!(welcome.state, OutboxState::Queued);
    assert_eq!(welcome.message, OutboundMessage::text("Welcome!"));
    assert_eq!(
        (welcome.contact_id, welcome.identity_id, welcome.channel_id),
        (c.id, ident.id, ch)
    );
    assert_eq!(welcome.external_id, "555");
    assert_eq!(welcome.purpose, Purpose::Response);
    assert_eq!(welcome.run_at, welcome.created_at);
    assert!(s
        .pending_inbound(None, 10)
        .await
        .expect("pending")
        .is_empty());

    // Processing the same event again writes nothing.
    let again = s.apply_inbound(a, id, apply).await.expect("again");
    assert!(again.already_done);
    assert_eq!(
        (again.contact_id, again.identity_id),
        (got.contact_id, got.identity_id)
    );
    assert!(again.queued.is_empty() && !again.contact_created && !again.subscription_changed);
    assert_eq!(events_of(s, a, c.id).await.len(), events.len());
    assert_eq!(count(s, a, ContactFilter::default()).await, 1);
    assert_eq!(counts(s, Some(ch)).await, state_counts(2, 0, 0, 0));

    // The next message of the same person finds them; an unchanged subscription is not
    // recorded again.
    let id2 = receive(s, a, ch, text_event("2", &from, "hello")).await;
    let got2 = s
        .apply_inbound(
            a,
            id2,
            InboundApply {
                sender: from.clone(),
                source: Some("ignored".into()),
                subscription: Some(subscribed("telegram_start", &[])),
                events: vec![(EventKind::MessageReceived, json!({"text": "hello"}))],
                replies: vec![reply(Purpose::Response, "Thanks", "auto_reply")],
                signal: None,
            },
        )
        .await
        .expect("apply 2");
    assert!(!got2.contact_created && !got2.subscription_changed);
    assert_eq!(
        (got2.contact_id, got2.identity_id),
        (got.contact_id, got.identity_id)
    );
    assert_eq!(got2.queued.len(), 1);
    assert_eq!(
        s.find_identity(a, ch, "555").await.expect("find"),
        Some(s.get_contact(a, c.id).await.expect("c").identities[0].clone())
    );
    assert_eq!(s.find_identity(a, ch, "556").await.expect("find"), None);
    assert_eq!(
        s.subscription_history(a, c.id)
            .await
            .expect("history")
            .len(),
        1
    );
    let c2 = s.get_contact(a, c.id).await.expect("contact");
    assert_eq!(c2.source.as_deref(), Some("ref:spring"), "first touch kept");
    let tail: Vec<String> = events_of(s, a, c.id)
        .await
        .into_iter()
        .skip(events.len())
        .map(|e| e.kind)
        .collect();
    assert_eq!(tail, vec!["message_received", "message_queued"]);
    // A topic change is a change.
    let id3 = receive(s, a, ch, text_event("3", &from, "news only")).await;
    let got3 = s
        .apply_inbound(
            a,
            id3,
            InboundApply {
                sender: from.clone(),
                subscription: Some(subscribed("keyword", &["news"])),
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply 3");
    assert!(got3.subscription_changed);
    assert_eq!(
        s.subscription_history(a, c.id)
            .await
            .expect("history")
            .len(),
        2
    );
    // An unknown event id, or one of another workspace, is not found.
    let b = workspace(s, "B").await;
    assert_not_found(
        s.apply_inbound(b, id3, InboundApply::default()).await,
        "inbound_event",
    );
}

async fn case_apply_inbound_skips_replies_without_consent(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let from = sender("777", "Anna");
    let id = receive(s, a, ch, text_event("1", &from, "hi")).await;
    let got = s
        .apply_inbound(
            a,
            id,
            InboundApply {
                sender: from.clone(),
                replies: vec![
                    reply(Purpose::Marketing, "promo", "flow:x"),
                    reply(Purpose::Transactional, "order", "flow:x"),
                    reply(Purpose::Response, "ok", "auto_reply"),
                ],
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply");
    assert!(got.contact_created && !got.subscription_changed);
    assert_eq!(got.queued.len(), 1, "only the response: no opt-in yet");
    let only = s.get_outbound(a, got.queued[0]).await.expect("queued");
    assert_eq!(only.purpose, Purpose::Response);
    let c = s.get_contact(a, got.contact_id).await.expect("contact");
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Unsubscribed
    );
    assert!(
        s.subscription_history(a, c.id)
            .await
            .expect("history")
            .is_empty(),
        "a new identity starts unsubscribed without a history entry"
    );

    // Blocking in the same event: even the response is skipped.
    let id2 = receive(
        s,
        a,
        ch,
        InboundEvent {
            provider_event_id: "2".into(),
            sender: from.clone(),
            at: 1_700_000_001,
            kind: InboundKind::Blocked,
        },
    )
    .await;
    let got2 = s
        .apply_inbound(
            a,
            id2,
            InboundApply {
                sender: from.clone(),
                subscription: Some(blocked()),
                replies: vec![reply(Purpose::Response, "bye", "stop_reply")],
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply blocked");
    assert!(got2.subscription_changed);
    assert!(got2.queued.is_empty());
    let c = s.get_contact(a, c.id).await.expect("contact");
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Blocked
    );
    assert_eq!(counts(s, Some(ch)).await, state_counts(1, 0, 0, 0));
}

async fn case_enqueue_enforces_consent(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let ch = channel(s, a, "bot").await;
    let other_ch = channel(s, a, "other").await;
    let b_ch = channel(s, b, "b-bot").await;

    let nobody = plain(s, a, "No identity").await;
    assert_conflict(
        s.enqueue_message(a, nobody, outbound(ch, Purpose::Response, "x"))
            .await,
        "no_identity_on_channel",
        Some("channel_id"),
    );
    let unsub = recipient(s, a, ch, "u1", None).await;
    assert_conflict(
        s.enqueue_message(a, unsub.id, outbound(other_ch, Purpose::Response, "x"))
            .await,
        "no_identity_on_channel",
        Some("channel_id"),
    );
    for purpose in [Purpose::Marketing, Purpose::Transactional] {
        match s
            .enqueue_message(a, unsub.id, outbound(ch, purpose, "x"))
            .await
        {
            Err(StoreError::Conflict {
                code: "not_subscribed",
                message,
                ..
            }) => assert!(message.contains("opted in"), "{message}"),
            other => panic!("{purpose:?} without opt-in: {other:?}"),
        }
    }
    let answer = s
        .enqueue_message(a, unsub.id, outbound(ch, Purpose::Response, "answer"))
        .await
        .expect("a response needs no opt-in");
    assert_eq!(answer.purpose, Purpose::Response);

    let blocker = recipient(s, a, ch, "u2", Some(blocked())).await;
    for purpose in [
        Purpose::Response,
        Purpose::Marketing,
        Purpose::Transactional,
    ] {
        assert_conflict(
            s.enqueue_message(a, blocker.id, outbound(ch, purpose, "x"))
                .await,
            "blocked",
            None,
        );
    }

    let fan = recipient(s, a, ch, "u3", Some(subscribed("landing", &[]))).await;
    let before = events_of(s, a, fan.id).await.len();
    let later = Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let item = s
        .enqueue_message(
            a,
            fan.id,
            NewOutbound {
                channel_id: ch,
                purpose: Purpose::Marketing,
                message: with_buttons("Pick one"),
                source: "broadcast:7".into(),
                run_at: Some(later),
            },
        )
        .await
        .expect("enqueue");
    assert_eq!(item.state, OutboxState::Queued);
    assert_eq!(item.attempts, 0);
    assert_eq!(item.parts_sent, 0);
    assert!(item.provider_message_ids.is_empty() && item.error.is_none() && item.sent_at.is_none());
    assert_eq!(item.contact_id, fan.id);
    assert_eq!(item.identity_id, fan.identities[0].id);
    assert_eq!(item.external_id, "u3");
    assert_eq!(item.source, "broadcast:7");
    assert_eq!(item.message, with_buttons("Pick one"));
    assert_eq!(item.run_at.as_microsecond(), later.as_microsecond());
    assert_eq!(s.get_outbound(a, item.id).await.expect("get"), item);
    let events = events_of(s, a, fan.id).await;
    assert_eq!(events.len(), before + 1);
    let last = events.last().expect("event");
    assert_eq!(last.kind, "message_queued");
    assert_eq!(
        last.data,
        json!({"outbox_id": item.id.0, "channel_id": ch.0, "source": "broadcast:7", "purpose": "marketing"})
    );
    // Buttons with payloads make it the message a typed "1" answers.
    assert_eq!(
        s.last_outbound_with_choices(a, fan.identities[0].id)
            .await
            .expect("choices"),
        Some(item.clone())
    );
    let plain_msg = s
        .enqueue_message(
            a,
            fan.id,
            outbound(ch, Purpose::Transactional, "no buttons"),
        )
        .await
        .expect("transactional");
    assert_eq!(
        s.last_outbound_with_choices(a, fan.identities[0].id)
            .await
            .expect("choices")
            .map(|i| i.id),
        Some(item.id),
        "a message without buttons does not hide the last one with them"
    );
    assert_ne!(plain_msg.id, item.id);
    assert_eq!(
        s.last_outbound_with_choices(a, unsub.identities[0].id)
            .await
            .expect("none"),
        None
    );

    // Several identities on the channel: the subscribed one is used.
    let both = contact(
        s,
        a,
        NewContact {
            identities: vec![
                NewIdentity {
                    channel_id: ch,
                    external_id: "both-sub".into(),
                    subscription: Some(subscribed("landing", &[])),
                },
                NewIdentity {
                    channel_id: ch,
                    external_id: "both-unsub".into(),
                    subscription: None,
                },
            ],
            ..NewContact::default()
        },
    )
    .await;
    let m = s
        .enqueue_message(a, both.id, outbound(ch, Purpose::Marketing, "hi"))
        .await
        .expect("to the subscribed identity");
    assert_eq!(m.external_id, "both-sub");

    // Other workspaces, unknown channels, erased contacts.
    assert_not_found(
        s.enqueue_message(b, fan.id, outbound(b_ch, Purpose::Response, "x"))
            .await,
        "contact",
    );
    assert_not_found(
        s.enqueue_message(a, fan.id, outbound(b_ch, Purpose::Response, "x"))
            .await,
        "channel",
    );
    s.erase_contact(a, unsub.id).await.expect("erase");
    assert_conflict(
        s.enqueue_message(a, unsub.id, outbound(ch, Purpose::Response, "x"))
            .await,
        "contact_erased",
        None,
    );
}

async fn case_claim_outbox_and_leases(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let ch2 = channel(s, a, "bot2").await;
    let c = contact(
        s,
        a,
        NewContact {
            identities: vec![
                NewIdentity {
                    channel_id: ch,
                    external_id: "x1".into(),
                    subscription: Some(subscribed("landing", &[])),
                },
                NewIdentity {
                    channel_id: ch2,
                    external_id: "x2".into(),
                    subscription: Some(subscribed("landing", &[])),
                },
            ],
            ..NewContact::default()
        },
    )
    .await;
    assert!(s.due_channels().await.expect("due").is_empty());
    assert!(s
        .claim_outbox(ch, 10, std::time::Duration::from_secs(60))
        .await
        .expect("claim nothing")
        .is_empty());
    let m1 = s
        .enqueue_message(a, c.id, outbound(ch, Purpose::Marketing, "one"))
        .await
        .expect("1");
    let m2 = s
        .enqueue_message(a, c.id, outbound(ch, Purpose::Marketing, "two"))
        .await
        .expect("2");
    let later = Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let m3 = s
        .enqueue_message(
            a,
            c.id,
            NewOutbound {
                run_at: Some(later),
                ..outbound(ch, Purpose::Marketing, "later")
            },
        )
        .await
        .expect("3");
    let earlier = Timestamp::now() - jiff::SignedDuration::from_mins(5);
    let m4 = s
        .enqueue_message(
            a,
            c.id,
            NewOutbound {
                run_at: Some(earlier),
                ..outbound(ch2, Purpose::Marketing, "other channel")
            },
        )
        .await
        .expect("4");
    let due = s.due_channels().await.expect("due");
    assert_eq!(due, vec![(ch, m1.run_at), (ch2, m4.run_at)]);

    // Oldest run_at first, limited; the future one waits.
    let first = s
        .claim_outbox(ch, 1, std::time::Duration::from_secs(60))
        .await
        .expect("claim 1");
    assert_eq!(first.iter().map(|i| i.id).collect::<Vec<_>>(), vec![m1.id]);
    assert_eq!(first[0].state, OutboxState::Sending);
    assert_eq!(first[0].attempts, 1);
    let rest = s
        .claim_outbox(ch, 10, std::time::Duration::from_secs(60))
        .await
        .expect("claim rest");
    assert_eq!(rest.iter().map(|i| i.id).collect::<Vec<_>>(), vec![m2.id]);
    assert!(s
        .claim_outbox(ch, 10, std::time::Duration::from_secs(60))
        .await
        .expect("nothing due")
        .is_empty());
    assert_eq!(
        s.get_outbound(a, m3.id).await.expect("m3").state,
        OutboxState::Queued
    );
    assert_eq!(
        s.due_channels().await.expect("due"),
        vec![(ch, m3.run_at), (ch2, m4.run_at)],
        "rows being sent under a live lease are not due"
    );
    assert_eq!(counts(s, Some(ch)).await, state_counts(1, 2, 0, 0));
    assert_eq!(counts(s, None).await, state_counts(2, 2, 0, 0));

    // A lease that runs out gives the row to the next claim.
    let short = s
        .claim_outbox(ch2, 10, std::time::Duration::from_millis(1))
        .await
        .expect("claim short");
    assert_eq!(short.iter().map(|i| i.id).collect::<Vec<_>>(), vec![m4.id]);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let due = s.due_channels().await.expect("due");
    assert_eq!(due.len(), 2);
    assert_eq!(due[1].0, ch2);
    assert!(due[1].1 <= Timestamp::now(), "due since the lease ended");
    let reclaimed = s
        .claim_outbox(ch2, 10, std::time::Duration::from_secs(60))
        .await
        .expect("reclaim");
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].id, m4.id);
    assert_eq!(reclaimed[0].attempts, 2);
    assert!(s
        .claim_outbox(ch2, 10, std::time::Duration::from_secs(60))
        .await
        .expect("held again")
        .is_empty());
}

async fn case_complete_outbox(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let c = recipient(s, a, ch, "r1", Some(subscribed("landing", &[]))).await;
    let ident = c.identities[0].id;
    let mut ids = Vec::new();
    for text in ["sent", "retry", "failed", "again"] {
        ids.push(
            s.enqueue_message(a, c.id, outbound(ch, Purpose::Marketing, text))
                .await
                .expect("enqueue")
                .id,
        );
    }
    let lease = std::time::Duration::from_secs(60);
    assert_eq!(s.claim_outbox(ch, 10, lease).await.expect("claim").len(), 4);
    let before = events_of(s, a, c.id).await.len();
    let soon = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    s.complete_outbox(vec![
        OutboxResult {
            id: ids[0],
            parts_sent: 2,
            provider_message_ids: vec!["p1".into(), "p2".into()],
            outcome: SendOutcome::Sent,
        },
        OutboxResult {
            id: ids[1],
            parts_sent: 1,
            provider_message_ids: vec!["p3".into()],
            outcome: SendOutcome::Retry {
                at: soon,
                error: "429 too many requests".into(),
            },
        },
        OutboxResult {
            id: ids[2],
            parts_sent: 0,
            provider_message_ids: vec![],
            outcome: SendOutcome::Failed {
                reason: "message too long".into(),
            },
        },
    ])
    .await
    .expect("complete");
    let sent = s.get_outbound(a, ids[0]).await.expect("sent");
    assert_eq!(sent.state, OutboxState::Sent);
    assert!(sent.sent_at.is_some());
    assert_eq!(sent.parts_sent, 2);
    assert_eq!(sent.provider_message_ids, vec!["p1", "p2"]);
    assert_eq!(sent.error, None);
    let retry = s.get_outbound(a, ids[1]).await.expect("retry");
    assert_eq!(retry.state, OutboxState::Queued);
    assert_eq!(retry.run_at.as_microsecond(), soon.as_microsecond());
    assert_eq!(retry.error.as_deref(), Some("429 too many requests"));
    assert_eq!((retry.parts_sent, retry.attempts), (1, 1));
    assert_eq!(retry.provider_message_ids, vec!["p3"]);
    let failed = s.get_outbound(a, ids[2]).await.expect("failed");
    assert_eq!(failed.state, OutboxState::Failed);
    assert_eq!(failed.error.as_deref(), Some("message too long"));
    let new: Vec<Event> = events_of(s, a, c.id)
        .await
        .into_iter()
        .skip(before)
        .collect();
    assert_eq!(
        new.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["message_sent", "message_failed"],
        "a retry records no event"
    );
    assert_eq!(
        new[0].data,
        json!({"outbox_id": ids[0].0, "channel_id": ch.0, "source": "api", "provider_message_ids": ["p1", "p2"]})
    );
    assert_eq!(
        new[1].data,
        json!({"outbox_id": ids[2].0, "channel_id": ch.0, "reason": "message too long"})
    );
    // Results for rows no longer being sent are ignored.
    s.complete_outbox(vec![OutboxResult {
        id: ids[0],
        parts_sent: 0,
        provider_message_ids: vec![],
        outcome: SendOutcome::Failed {
            reason: "late".into(),
        },
    }])
    .await
    .expect("late result");
    assert_eq!(s.get_outbound(a, ids[0]).await.expect("still sent"), sent);
    // The retried row comes back with its progress kept.
    let again = s.claim_outbox(ch, 10, lease).await.expect("reclaim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, ids[1]);
    assert_eq!((again[0].attempts, again[0].parts_sent), (2, 1));

    // The person blocked the bot: the message fails and the identity becomes blocked.
    let history_before = s
        .subscription_history(a, c.id)
        .await
        .expect("history")
        .len();
    let before = events_of(s, a, c.id).await.len();
    s.complete_outbox(vec![
        OutboxResult {
            id: ids[3],
            parts_sent: 0,
            provider_message_ids: vec![],
            outcome: SendOutcome::Blocked {
                reason: "Forbidden: bot was blocked by the user".into(),
            },
        },
        OutboxResult {
            id: ids[1],
            parts_sent: 1,
            provider_message_ids: vec!["p3".into()],
            outcome: SendOutcome::Blocked {
                reason: "Forbidden: bot was blocked by the user".into(),
            },
        },
    ])
    .await
    .expect("blocked");
    for id in [ids[1], ids[3]] {
        let m = s.get_outbound(a, id).await.expect("blocked row");
        assert_eq!(m.state, OutboxState::Failed);
        assert_eq!(
            m.error.as_deref(),
            Some("Forbidden: bot was blocked by the user")
        );
    }
    let got = s.get_contact(a, c.id).await.expect("contact");
    assert_eq!(got.identities[0].id, ident);
    assert_eq!(
        got.identities[0].subscription.state,
        SubscriptionState::Blocked
    );
    let history = s.subscription_history(a, c.id).await.expect("history");
    assert_eq!(history.len(), history_before + 1, "blocked once, not twice");
    let last = history.last().expect("entry");
    assert_eq!(last.state, SubscriptionState::Blocked);
    assert_eq!(last.identity_id, Some(ident));
    assert!(last.proof.is_none());
    let new: Vec<Event> = events_of(s, a, c.id)
        .await
        .into_iter()
        .skip(before)
        .collect();
    assert_eq!(
        new.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["message_failed", "subscription_changed", "message_failed"]
    );
    assert_eq!(new[1].data["state"], json!("blocked"));
    assert_eq!(new[1].data["source"], json!("delivery"));
    assert_eq!(new[1].data["identity_id"], json!(ident.0));
    assert_eq!(counts(s, Some(ch)).await, state_counts(0, 0, 1, 3));
    // Nothing more can be queued to them.
    assert_conflict(
        s.enqueue_message(a, c.id, outbound(ch, Purpose::Response, "x"))
            .await,
        "blocked",
        None,
    );
    s.complete_outbox(vec![]).await.expect("empty batch");
}

async fn case_conversation_order(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let from = sender("c1", "Olga");
    let e1 = text_event("1", &from, "hello");
    let id1 = receive(s, a, ch, e1.clone()).await;
    let got = s
        .apply_inbound(
            a,
            id1,
            InboundApply {
                sender: from.clone(),
                replies: vec![reply(Purpose::Response, "auto", "auto_reply")],
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply 1");
    let api = s
        .enqueue_message(
            a,
            got.contact_id,
            outbound(ch, Purpose::Response, "from api"),
        )
        .await
        .expect("api");
    // Receipts are processed but are not lines of the conversation.
    let receipt = InboundEvent {
        provider_event_id: "2".into(),
        sender: from.clone(),
        at: 1_700_000_002,
        kind: InboundKind::Delivered {
            message_id: "x".into(),
        },
    };
    let id2 = receive(s, a, ch, receipt).await;
    s.apply_inbound(
        a,
        id2,
        InboundApply {
            sender: from.clone(),
            ..InboundApply::default()
        },
    )
    .await
    .expect("apply 2");
    let press = InboundEvent {
        provider_event_id: "3".into(),
        sender: from.clone(),
        at: 1_700_000_003,
        kind: InboundKind::ButtonPressed {
            callback_id: Some("cb".into()),
            data: "YES".into(),
        },
    };
    let id3 = receive(s, a, ch, press.clone()).await;
    // Not processed yet: not shown yet.
    let conv = s
        .conversation(a, got.identity_id, 50)
        .await
        .expect("conversation");
    assert_eq!(conv.len(), 3);
    s.apply_inbound(
        a,
        id3,
        InboundApply {
            sender: from.clone(),
            ..InboundApply::default()
        },
    )
    .await
    .expect("apply 3");

    let conv = s
        .conversation(a, got.identity_id, 50)
        .await
        .expect("conversation");
    let dirs: Vec<Direction> = conv.iter().map(|i| i.direction).collect();
    assert_eq!(
        dirs,
        vec![Direction::In, Direction::Out, Direction::Out, Direction::In]
    );
    assert_eq!(
        conv[0].inbound,
        Some(serde_json::to_value(&e1).expect("json"))
    );
    assert!(conv[0].outbound.is_none());
    assert_eq!(conv[1].outbound.as_ref().map(|o| o.id), Some(got.queued[0]));
    assert_eq!(conv[2].outbound.as_ref(), Some(&api));
    assert_eq!(conv[2].at, api.created_at);
    assert_eq!(
        conv[3].inbound,
        Some(serde_json::to_value(&press).expect("json"))
    );
    assert!(conv.windows(2).all(|w| w[0].at <= w[1].at), "oldest first");
    // The latest `limit` items.
    let tail = s.conversation(a, got.identity_id, 2).await.expect("tail");
    assert_eq!(tail, conv[2..].to_vec());
    let b = workspace(s, "B").await;
    assert_not_found(s.conversation(b, got.identity_id, 10).await, "identity");
}

async fn case_messaging_isolation(s: &DynStore) {
    let a = workspace(s, "A").await;
    let b = workspace(s, "B").await;
    let ch = channel(s, a, "bot").await;
    let from = sender("iso", "Iso");
    let id = receive(s, a, ch, text_event("1", &from, "hi")).await;
    let got = s
        .apply_inbound(
            a,
            id,
            InboundApply {
                sender: from.clone(),
                replies: vec![reply(Purpose::Response, "hello", "auto_reply")],
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply");
    let out = got.queued[0];
    assert_not_found(s.get_outbound(b, out).await, "message");
    assert!(s.get_outbound(a, out).await.is_ok());
    assert_not_found(
        s.enqueue_message(b, got.contact_id, outbound(ch, Purpose::Response, "x"))
            .await,
        "contact",
    );
    assert_not_found(s.conversation(b, got.identity_id, 10).await, "identity");
    assert_eq!(
        s.last_outbound_with_choices(b, got.identity_id)
            .await
            .expect("none"),
        None
    );
    assert_eq!(s.find_identity(b, ch, "iso").await.expect("none"), None);
    assert!(s.find_identity(a, ch, "iso").await.expect("some").is_some());
    assert_not_found(
        s.apply_inbound(b, id, InboundApply::default()).await,
        "inbound_event",
    );
    assert_not_found(
        s.record_inbound(b, ch, vec![text_event("2", &from, "x")])
            .await,
        "channel",
    );
    // A detached identity's messages stay with its contact, even if a new identity (of
    // someone else) gets the same id, as SQLite may do.
    let old = recipient(s, a, ch, "old", Some(subscribed("landing", &[]))).await;
    let old_ident = old.identities[0].id;
    let sent = s
        .enqueue_message(
            a,
            old.id,
            NewOutbound {
                message: with_buttons("old question"),
                ..outbound(ch, Purpose::Marketing, "x")
            },
        )
        .await
        .expect("enqueue");
    s.remove_identity(a, old.id, old_ident)
        .await
        .expect("detach");
    let newcomer = recipient(s, a, ch, "new", None).await;
    let new_ident = newcomer.identities[0].id;
    assert_eq!(
        s.last_outbound_with_choices(a, new_ident)
            .await
            .expect("choices"),
        None
    );
    assert!(s
        .conversation(a, new_ident, 10)
        .await
        .expect("conversation")
        .is_empty());
    assert_eq!(
        s.get_outbound(a, sent.id).await.expect("kept").contact_id,
        old.id
    );
}

async fn case_messaging_erasure(s: &DynStore) {
    let a = workspace(s, "A").await;
    let ch = channel(s, a, "bot").await;
    let pii = [
        "Qzxfirst",
        "qzxexternal",
        "qzxsecret words",
        "qzxreply text",
        "qzxqueued text",
        "qzxprovider",
    ];
    let from = sender("qzxexternal", "Qzxfirst");
    let id = receive(s, a, ch, text_event("1", &from, "qzxsecret words")).await;
    let got = s
        .apply_inbound(
            a,
            id,
            InboundApply {
                sender: from.clone(),
                subscription: Some(subscribed("telegram_start", &[])),
                replies: vec![NewReply {
                    purpose: Purpose::Response,
                    message: with_buttons("qzxreply text"),
                    source: "auto_reply".into(),
                }],
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply");
    let lease = std::time::Duration::from_secs(60);
    let claimed = s.claim_outbox(ch, 10, lease).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    s.complete_outbox(vec![OutboxResult {
        id: claimed[0].id,
        parts_sent: 1,
        provider_message_ids: vec!["qzxprovider".into()],
        outcome: SendOutcome::Sent,
    }])
    .await
    .expect("sent");
    let queued = s
        .enqueue_message(
            a,
            got.contact_id,
            outbound(ch, Purpose::Marketing, "qzxqueued text"),
        )
        .await
        .expect("queued");
    for needle in pii {
        assert!(
            !s.find_text_everywhere(needle)
                .await
                .expect("scan")
                .is_empty(),
            "{needle} is stored before erasure"
        );
    }
    assert_eq!(counts(s, Some(ch)).await, state_counts(1, 0, 1, 0));

    s.erase_contact(a, got.contact_id).await.expect("erase");
    for needle in pii {
        assert_eq!(
            s.find_text_everywhere(needle).await.expect("scan"),
            Vec::<String>::new(),
            "{needle} left after erasure"
        );
    }
    // The rows stay for the counts; the queued one will never be sent.
    assert_eq!(counts(s, Some(ch)).await, state_counts(0, 0, 1, 1));
    let q = s.get_outbound(a, queued.id).await.expect("queued row");
    assert_eq!(q.state, OutboxState::Failed);
    assert_eq!(q.message, OutboundMessage::default());
    assert!(s
        .claim_outbox(ch, 10, lease)
        .await
        .expect("claim")
        .is_empty());
    assert!(s.due_channels().await.expect("due").is_empty());
    // A provider retry of the old event stays a duplicate.
    assert_eq!(
        s.record_inbound(a, ch, vec![text_event("1", &from, "qzxsecret words")])
            .await
            .expect("retry"),
        vec![None]
    );
    // The person writing again is a new contact, whose conversation starts empty.
    let id2 = receive(s, a, ch, text_event("2", &from, "back")).await;
    let again = s
        .apply_inbound(
            a,
            id2,
            InboundApply {
                sender: from.clone(),
                ..InboundApply::default()
            },
        )
        .await
        .expect("apply again");
    assert!(again.contact_created);
    assert_ne!(again.contact_id, got.contact_id);
    let conv = s
        .conversation(a, again.identity_id, 50)
        .await
        .expect("conversation");
    assert_eq!(conv.len(), 1);
    assert_eq!(conv[0].direction, Direction::In);
    assert_eq!(
        s.last_outbound_with_choices(a, again.identity_id)
            .await
            .expect("choices"),
        None,
        "the erased person's buttons are not the new one's"
    );
    // With no identities left on it, the channel can go, messages and all.
    s.delete_contact(a, again.contact_id).await.expect("delete");
    s.delete_channel(a, ch).await.expect("delete channel");
    assert_eq!(counts(s, None).await, state_counts(0, 0, 0, 0));
}
