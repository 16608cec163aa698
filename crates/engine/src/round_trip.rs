//! Export then import: the export of one workspace must import into a fresh one as the
//! same contacts, and back into its own workspace as "all unchanged".

use crate::csv_export::{export_csv, FIXED_COLUMNS};
use crate::csv_import::{import_csv, ImportOptions, ImportReport};
use crate::fake_store::FakeStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::field::{FieldSpec, FieldType};
use voronka_core::filter::ContactFilter;
use voronka_core::*;
use voronka_store::testing::{fresh_store, Backend};
use voronka_store::*;

const SOURCE_CSV: &str = "phone,email,first_name,last_name,tags,channel_id,external_id,subscribed,consent_source,consent_at,field.score,city,source
+79160000001,ivan@example.ru,Ivan,=HYPERLINK(\"x\"),vip;new,1,tg-1,yes,landing:spring,2026-01-02 03:04:05,-5,Moscow,
+79160000002,,Anna,,,1,tg-2,no,,,12.5,\"St Petersburg, center\",crm
,maria@example.ru,Maria,,\"a,b\",,,,,,999,\"multi
line\",
+79160000004,,,,x;y;z,1,tg-4,,,,,,
";

async fn import(store: &DynStore, ws: WorkspaceId, csv: &[u8]) -> ImportReport {
    import_csv(
        store.clone(),
        ws,
        std::io::Cursor::new(csv.to_vec()),
        ImportOptions::default(),
        Box::new(|_| {}),
    )
    .await
    .expect("import runs")
}

async fn export(store: &DynStore, ws: WorkspaceId) -> Vec<u8> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let job = tokio::spawn(export_csv(store.clone(), ws, ContactFilter::default(), tx));
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend(chunk);
    }
    job.await.expect("export task").expect("export runs");
    out
}

/// A fresh workspace with the channel and fields the sample file uses.
async fn setup(store: &DynStore) -> WorkspaceId {
    let ws = store.create_workspace("Shop").await.expect("workspace").id;
    let ch = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "Bot".into(),
                credentials: SecretKey::generate().seal(b"{}"),
                settings: Default::default(),
            },
        )
        .await
        .expect("channel");
    assert_eq!(
        ch.id,
        ChannelId(1),
        "a fresh database numbers its first channel 1"
    );
    for (key, t) in [("score", FieldType::Number), ("city", FieldType::Text)] {
        store
            .create_field(
                ws,
                FieldSpec {
                    key: key.into(),
                    label: key.into(),
                    field_type: t,
                    choices: vec![],
                },
            )
            .await
            .expect("field");
    }
    ws
}

/// Export rows without the columns that differ between databases (id, created_at).
fn comparable(csv: &[u8]) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv);
    let mut rows: Vec<Vec<String>> = r
        .records()
        .map(|rec| {
            let rec = rec.expect("valid csv");
            rec.iter()
                .enumerate()
                .filter(|(i, _)| *i != 0 && *i != 16)
                .map(|(_, c)| c.to_string())
                .collect()
        })
        .collect();
    rows[1..].sort();
    rows
}

#[tokio::test]
async fn export_reimports_as_the_same_contacts_on_sqlite() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn export_reimports_as_the_same_contacts_on_postgres() {
    round_trip(Backend::Postgres).await;
}

async fn round_trip(backend: Backend) {
    let Some(a) = fresh_store(backend).await else {
        return;
    };
    let ws_a = setup(&a.store).await;
    let first = import(&a.store, ws_a, SOURCE_CSV.as_bytes()).await;
    assert_eq!((first.created, first.failed.len()), (4, 0), "{first:?}");
    let exported = export(&a.store, ws_a).await;
    let text = String::from_utf8(exported.clone()).expect("utf-8");
    assert!(text.starts_with(&FIXED_COLUMNS.join(",")), "{text}");
    assert!(text.contains("'=HYPERLINK"), "formula escaped: {text}");
    assert!(text.contains("'+79160000001"), "{text}");
    assert!(text.contains(",'-5"), "{text}");

    let b = fresh_store(backend).await.expect("a second store");
    let ws_b = setup(&b.store).await;
    let second = import(&b.store, ws_b, &exported).await;
    assert_eq!(
        (second.created, second.updated, second.failed.len()),
        (4, 0, 0),
        "{second:?}"
    );
    assert_eq!(
        comparable(&export(&b.store, ws_b).await),
        comparable(&exported)
    );

    let by_phone = |cs: Vec<Contact>| -> BTreeMap<String, Contact> {
        cs.into_iter()
            .map(|c| (c.profile.display_name().unwrap_or_default(), c))
            .collect()
    };
    let q = ContactQuery {
        limit: 100,
        ..ContactQuery::default()
    };
    let ca = by_phone(a.store.list_contacts(ws_a, &q).await.expect("list").items);
    let cb = by_phone(b.store.list_contacts(ws_b, &q).await.expect("list").items);
    assert_eq!(ca.len(), 4);
    for (k, x) in &ca {
        let y = &cb[k];
        assert_eq!(
            (&x.profile, &x.source, &x.tags, &x.fields),
            (&y.profile, &y.source, &y.tags, &y.fields),
            "{k}"
        );
        let ids = |c: &Contact| -> Vec<_> {
            c.identities
                .iter()
                .map(|i| {
                    (
                        i.external_id.clone(),
                        i.subscription.state,
                        i.subscription.topics.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(ids(x), ids(y), "{k}");
    }
    let ivan = &ca["Ivan =HYPERLINK(\"x\")"];
    assert_eq!(
        ivan.identities[0]
            .subscription
            .proof
            .as_ref()
            .map(|p| p.source.as_str()),
        Some("landing:spring")
    );
    assert_eq!(ca["Maria"].tags, vec!["a".to_string(), "b".to_string()]);

    let again = import(&a.store, ws_a, &exported).await;
    assert_eq!(
        (
            again.created,
            again.updated,
            again.unchanged,
            again.failed.len()
        ),
        (0, 0, 4, 0),
        "{again:?}"
    );
}

#[tokio::test]
async fn export_pages_through_every_contact() {
    let now = jiff::Timestamp::now();
    let contacts = (1..=2_345)
        .map(|i| Contact {
            id: ContactId(i),
            profile: voronka_core::contact::Profile {
                phone: Some(format!("+7916{i:07}")),
                ..Default::default()
            },
            source: None,
            tags: vec!["t1".into(), "t2".into()],
            fields: BTreeMap::from([("score".to_string(), serde_json::json!(i))]),
            identities: vec![],
            created_at: now,
            updated_at: now,
            last_activity_at: None,
            erased_at: None,
        })
        .collect();
    let defs = vec![voronka_core::field::FieldDefinition {
        id: FieldId(1),
        spec: FieldSpec {
            key: "score".into(),
            label: "Score".into(),
            field_type: FieldType::Number,
            choices: vec![],
        },
    }];
    let store: DynStore = Arc::new(FakeStore {
        defs,
        contacts,
        ..FakeStore::default()
    });
    let out = export(&store, WorkspaceId(1)).await;
    let mut r = csv::Reader::from_reader(out.as_slice());
    let headers = r.headers().expect("header").clone();
    assert_eq!(headers.len(), FIXED_COLUMNS.len() + 1);
    assert_eq!(&headers[17], "field.score");
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.expect("row")).collect();
    assert_eq!(rows.len(), 2_345);
    assert_eq!(
        (&rows[0][0], &rows[0][10], &rows[0][17]),
        ("2345", "t1;t2", "2345")
    );
    assert_eq!(&rows[2_344][6], "'+79160000001");
}
