//! Backend-specific checks of the PostgreSQL store: the parts the shared conformance
//! suite cannot see (migration bookkeeping, the batch import's fallback path, the
//! schema-scoped text search). They skip without a server unless VORONKA_REQUIRE_PG=1.

use crate::testing::{fresh_store, Backend};
use crate::*;
use jiff::Timestamp;
use serde_json::json;
use voronka_core::channel::ChannelKind;
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::field::{FieldType, FieldValue};
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::*;

struct Fixture {
    store: DynStore,
    ws: WorkspaceId,
    channel: ChannelId,
    age: voronka_core::field::FieldDefinition,
    city: voronka_core::field::FieldDefinition,
}

async fn fixture() -> Option<Fixture> {
    let t = fresh_store(Backend::Postgres).await?;
    let store = t.store;
    let ws = store.create_workspace("Shop").await.expect("workspace").id;
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "bot".into(),
                credentials: Sealed {
                    key_id: "k1".into(),
                    data: vec![1, 2, 3],
                },
                settings: Default::default(),
            },
        )
        .await
        .expect("channel")
        .id;
    let spec = |key: &str, t| voronka_core::field::FieldSpec {
        key: key.into(),
        label: key.into(),
        field_type: t,
        choices: vec![],
    };
    let age = store
        .create_field(ws, spec("age", FieldType::Number))
        .await
        .expect("age");
    let city = store
        .create_field(ws, spec("city", FieldType::Text))
        .await
        .expect("city");
    Some(Fixture {
        store,
        ws,
        channel,
        age,
        city,
    })
}

fn subscribed() -> SubscriptionChange {
    let now = Timestamp::now();
    let proof = ConsentProof {
        source: "import:crm".into(),
        at: now,
        text_shown: Some("Yes, send me offers".into()),
        ip: Some("10.0.0.1".into()),
        message_id: None,
    };
    SubscriptionChange::new(SubscriptionState::Subscribed, vec![], Some(proof), now)
        .expect("valid change")
}

fn row(f: &Fixture, line: u64, phone: &str, ext: &str, age: i64) -> ImportRow {
    ImportRow {
        line,
        profile: Profile {
            first_name: Some(format!("Name{line}")),
            phone: Some(phone.into()),
            ..Profile::default()
        },
        source: Some("import:test".into()),
        identity: Some((f.channel, ext.into())),
        subscription: Some(subscribed()),
        tags: vec!["vip".into(), "lead".into()],
        fields: vec![
            FieldValue::validate(&f.age, &json!(age), "age").expect("age value"),
            FieldValue::validate(&f.city, &json!("Moscow"), "city").expect("city value"),
        ],
    }
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let Some(f) = fixture().await else { return };
    assert_eq!(f.store.migrate().await.expect("migrate again"), 0);
    f.store.ping().await.expect("ping");
    assert_eq!(f.store.backend(), "postgres");
}

#[tokio::test]
async fn import_creates_then_is_idempotent_and_handles_duplicates() {
    let Some(f) = fixture().await else { return };
    let rows = vec![
        row(&f, 2, "+79160000001", "1001", 30),
        row(&f, 3, "+79160000002", "1002", 40),
        // Same person as line 2, found by identity: only the new tag is added.
        ImportRow {
            tags: vec!["late".into()],
            profile: row(&f, 2, "+79160000001", "1001", 30).profile,
            ..row(&f, 4, "+79160000001", "1001", 30)
        },
        ImportRow {
            identity: Some((ChannelId(f.channel.0 + 1000), "x".into())),
            ..row(&f, 5, "+79160000009", "1009", 1)
        },
    ];
    let out = f
        .store
        .import_contacts(f.ws, rows.clone())
        .await
        .expect("import");
    let actions: Vec<_> = out
        .iter()
        .map(|o| o.result.clone().map(|(_, a)| a))
        .collect();
    assert_eq!(actions[0], Ok(ImportAction::Created));
    assert_eq!(actions[1], Ok(ImportAction::Created));
    assert_eq!(actions[2], Ok(ImportAction::Updated));
    assert_eq!(
        actions[3],
        Err(format!("unknown channel {}", f.channel.0 + 1000))
    );
    let first = out[0].result.clone().expect("created").0;
    assert_eq!(out[2].result.clone().expect("updated").0, first);
    let c = f.store.get_contact(f.ws, first).await.expect("contact");
    assert_eq!(c.tags, vec!["late", "lead", "vip"]);
    assert_eq!(c.fields.get("age"), Some(&json!(30)));
    assert_eq!(c.identities.len(), 1);
    assert_eq!(
        c.identities[0].subscription.state,
        SubscriptionState::Subscribed
    );
    assert_eq!(
        f.store
            .subscription_history(f.ws, first)
            .await
            .expect("history")
            .len(),
        1
    );
    let events = f
        .store
        .list_events(f.ws, first, None, 100)
        .await
        .expect("events")
        .items;
    assert_eq!(events.len(), 2, "one contact_imported per changing row");
    assert!(events.iter().all(|e| e.kind == "contact_imported"));

    // Re-import: nothing changes, nothing is written.
    let again = f
        .store
        .import_contacts(f.ws, rows[..3].to_vec())
        .await
        .expect("reimport");
    assert!(again
        .iter()
        .all(|o| matches!(o.result, Ok((_, ImportAction::Unchanged)))));
    let c2 = f.store.get_contact(f.ws, first).await.expect("contact");
    assert_eq!(c2.updated_at, c.updated_at);
    assert_eq!(
        f.store
            .list_events(f.ws, first, None, 100)
            .await
            .expect("events")
            .items
            .len(),
        2
    );

    // A match by phone updates the profile and attaches the identity.
    let mut by_phone = row(&f, 7, "+79160000002", "2002", 41);
    by_phone.profile.last_name = Some("Petrov".into());
    by_phone.subscription = None;
    let out = f
        .store
        .import_contacts(f.ws, vec![by_phone])
        .await
        .expect("import by phone");
    let (id, action) = out[0].result.clone().expect("ok");
    assert_eq!(action, ImportAction::Updated);
    let c = f.store.get_contact(f.ws, id).await.expect("contact");
    assert_eq!(c.profile.last_name.as_deref(), Some("Petrov"));
    assert_eq!(c.fields.get("age"), Some(&json!(41)));
    assert_eq!(c.identities.len(), 2);
    let last = &f
        .store
        .list_events(f.ws, id, None, 1)
        .await
        .expect("events")
        .items[0];
    assert_eq!(last.data["profile"], json!(["first_name", "last_name"]));
    assert_eq!(last.data["identity_added"], json!(true));
    assert_eq!(last.data["subscription"], json!(null));
}

#[tokio::test]
async fn import_falls_back_row_by_row_when_a_write_fails() {
    let Some(f) = fixture().await else { return };
    // A value PostgreSQL refuses (a NUL byte in text) makes the batch statement fail;
    // only that row may fail after the row-by-row replay.
    let mut bad = row(&f, 3, "+79160000003", "3003", 5);
    bad.profile.first_name = Some("bad\0name".into());
    let rows = vec![
        row(&f, 2, "+79160000001", "3001", 5),
        bad,
        row(&f, 4, "+79160000004", "3004", 5),
    ];
    let out = f.store.import_contacts(f.ws, rows).await.expect("import");
    assert!(matches!(out[0].result, Ok((_, ImportAction::Created))));
    assert!(out[1].result.is_err(), "{:?}", out[1]);
    assert!(matches!(out[2].result, Ok((_, ImportAction::Created))));
    assert_eq!(
        f.store
            .count_contacts(f.ws, &ContactFilter::default())
            .await
            .expect("count"),
        2
    );
}

#[tokio::test]
async fn filters_count_and_erase_leaves_no_text() {
    let Some(f) = fixture().await else { return };
    let rows: Vec<ImportRow> = (0..20)
        .map(|i| {
            row(
                &f,
                i + 2,
                &format!("+7916100{:04}", i),
                &format!("e{i}"),
                i as i64,
            )
        })
        .collect();
    f.store.import_contacts(f.ws, rows).await.expect("import");
    let filter = ContactFilter {
        tags: vec!["vip".into()],
        fields: vec![FieldCondition {
            field_id: f.age.id,
            op: FieldOp::Gt,
            operand: Operand::Num(14.0),
        }],
        ..ContactFilter::default()
    };
    assert_eq!(
        f.store.count_contacts(f.ws, &filter).await.expect("count"),
        5
    );
    let q = ContactFilter {
        q: Some("NAME1".into()),
        subscription: Some(SubscriptionState::Subscribed),
        channel_id: Some(f.channel),
        ..ContactFilter::default()
    };
    // Name1 and Name10..Name19 (lines 2..21 → names Name2..Name21): Name10..Name19.
    assert_eq!(f.store.count_contacts(f.ws, &q).await.expect("count"), 10);
    let page = f
        .store
        .list_contacts(
            f.ws,
            &ContactQuery {
                filter: ContactFilter::default(),
                before: None,
                limit: 7,
            },
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 7);
    assert_eq!(page.next, page.items.last().map(|c| c.id));

    let victim = page.items[0].clone();
    let phone = victim.profile.phone.clone().expect("phone");
    assert!(!f
        .store
        .find_text_everywhere(&phone)
        .await
        .expect("search")
        .is_empty());
    f.store.erase_contact(f.ws, victim.id).await.expect("erase");
    f.store
        .erase_contact(f.ws, victim.id)
        .await
        .expect("erase again");
    // Phone and first name are unique to this contact (Name21); the proof text is shared.
    for needle in [
        phone.as_str(),
        victim.profile.first_name.as_deref().expect("name"),
    ] {
        let hits = f.store.find_text_everywhere(needle).await.expect("search");
        assert!(hits.is_empty(), "{needle}: {hits:?}");
    }
    assert_eq!(
        f.store
            .count_contacts(f.ws, &ContactFilter::default())
            .await
            .expect("count"),
        19
    );
    let c = f
        .store
        .get_contact(f.ws, victim.id)
        .await
        .expect("still readable");
    assert!(c.erased_at.is_some() && c.identities.is_empty() && c.tags.is_empty());
    // Counts driven from contact_tags leave out the erased contact, which cannot be
    // tagged again.
    let vip = ContactFilter {
        tags: vec!["vip".into()],
        ..ContactFilter::default()
    };
    assert_eq!(f.store.count_contacts(f.ws, &vip).await.expect("count"), 19);
    assert!(matches!(
        f.store.add_tags(f.ws, victim.id, &["vip".into()]).await,
        Err(StoreError::Conflict {
            code: "contact_erased",
            ..
        })
    ));
    assert_eq!(f.store.count_contacts(f.ws, &vip).await.expect("count"), 19);
    let by_field = ContactFilter {
        fields: vec![FieldCondition {
            field_id: f.age.id,
            op: FieldOp::Gte,
            operand: Operand::Num(0.0),
        }],
        ..ContactFilter::default()
    };
    assert_eq!(
        f.store
            .count_contacts(f.ws, &by_field)
            .await
            .expect("count"),
        19
    );
    // A field id of another workspace counts nothing here.
    let other = f
        .store
        .create_workspace("Other")
        .await
        .expect("workspace")
        .id;
    assert_eq!(
        f.store
            .count_contacts(other, &by_field)
            .await
            .expect("count"),
        0
    );
}

/// A channel from before the messaging migration has `'{}'` in both JSON columns: it
/// reads as the default settings and an empty runtime.
#[tokio::test]
async fn empty_json_columns_read_as_defaults() {
    use voronka_core::channel::ChannelSettings;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Named like `testing`'s schemas, so a run that dies here is cleaned up later.
    let schema = format!("t_{nanos:x}_json_{}", std::process::id());
    let store =
        match crate::postgres::PgStore::connect_in_schema(&crate::testing::pg_url(), &schema).await
        {
            Ok(s) => s,
            Err(_) if !crate::testing::pg_required() => return,
            Err(e) => panic!("PostgreSQL is required: {e}"),
        };
    store.migrate().await.expect("migrate");
    let ws = store.create_workspace("w").await.expect("workspace").id;
    let ch = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "bot".into(),
                credentials: Sealed {
                    key_id: "k".into(),
                    data: vec![1],
                },
                settings: ChannelSettings {
                    stop_words: vec!["halt".into()],
                    ..ChannelSettings::default()
                },
            },
        )
        .await
        .expect("channel")
        .id;
    sqlx::query("UPDATE channels SET settings = '{}', runtime = '{}' WHERE id = $1")
        .bind(ch.0)
        .execute(store.pool())
        .await
        .expect("blank the columns");
    let got = store.get_channel(ws, ch).await.expect("get");
    assert_eq!(got.settings, ChannelSettings::default());
    assert_eq!(got.runtime, ChannelRuntime::default());
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(store.pool())
        .await;
}
