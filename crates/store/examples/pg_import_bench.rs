//! Benchmark of the PostgreSQL backend: imports N new contacts (default 1,000,000; each
//! with a phone, 3 tags from a pool of 20, a number and a text field, and one subscribed
//! identity with proof) in batches of 5,000 into a fresh schema, then times the count
//! "tag X AND number field > N".
//!
//! Run: `cargo run --release -p voronka-store --example pg_import_bench -- [contacts]`
//! (VORONKA_TEST_PG_URL picks the server; KEEP_SCHEMA=1 keeps the schema afterwards).

use jiff::Timestamp;
use serde_json::json;
use std::time::Instant;
use voronka_core::channel::ChannelKind;
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::field::{FieldSpec, FieldType, FieldValue};
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_store::postgres::PgStore;
use voronka_store::*;

const BATCH: usize = 5_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let url = voronka_store::testing::pg_url();
    let schema = format!("t_bench_{}", std::process::id());
    let store = PgStore::connect_in_schema(&url, &schema).await?;
    store.migrate().await?;
    let ws = store.create_workspace("bench").await?.id;
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "bot".into(),
                credentials: Sealed {
                    key_id: "k".into(),
                    data: vec![0; 32],
                },
                settings: Default::default(),
            },
        )
        .await?
        .id;
    let spec = |key: &str, t| FieldSpec {
        key: key.into(),
        label: key.into(),
        field_type: t,
        choices: vec![],
    };
    let score = store
        .create_field(ws, spec("score", FieldType::Number))
        .await?;
    let city = store
        .create_field(ws, spec("city", FieldType::Text))
        .await?;
    let now = Timestamp::now();
    let change = SubscriptionChange::new(
        SubscriptionState::Subscribed,
        vec![],
        Some(ConsentProof {
            source: "import:bench".into(),
            at: now,
            text_shown: Some("I agree to receive offers".into()),
            ip: None,
            message_id: None,
        }),
        now,
    )?;
    let cities = ["Moscow", "Kazan", "Omsk", "Tver", "Sochi"];

    let mut imported = 0usize;
    let mut db_time = std::time::Duration::ZERO;
    let started = Instant::now();
    let mut n = 0usize;
    while n < total {
        let size = BATCH.min(total - n);
        let mut rows = Vec::with_capacity(size);
        for i in n..n + size {
            // A cheap deterministic spread of tags and values.
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let tags = (0..3)
                .map(|k| format!("tag_{}", (h >> (k * 8)) % 20))
                .collect();
            rows.push(ImportRow {
                line: i as u64 + 2,
                profile: Profile {
                    first_name: Some(format!("Person{i}")),
                    phone: Some(format!("+7900{i:07}")),
                    ..Profile::default()
                },
                source: Some("import:bench".into()),
                identity: Some((channel, format!("{}", 10_000_000 + i))),
                subscription: Some(change.clone()),
                tags,
                fields: vec![
                    FieldValue::validate(&score, &json!((h >> 32) % 1000), "score")?,
                    FieldValue::validate(
                        &city,
                        &json!(cities[(h >> 40) as usize % cities.len()]),
                        "city",
                    )?,
                ],
            });
        }
        let t = Instant::now();
        let out = store.import_contacts(ws, rows).await?;
        db_time += t.elapsed();
        imported += out
            .iter()
            .filter(|o| matches!(o.result, Ok((_, ImportAction::Created))))
            .count();
        n += size;
    }
    let wall = started.elapsed();
    println!(
        "imported {imported} contacts in {:.1} s wall ({:.0}/s), {:.1} s in import_contacts ({:.0}/s)",
        wall.as_secs_f64(),
        imported as f64 / wall.as_secs_f64(),
        db_time.as_secs_f64(),
        imported as f64 / db_time.as_secs_f64()
    );

    let filter = ContactFilter {
        tags: vec!["tag_7".into()],
        fields: vec![FieldCondition {
            field_id: score.id,
            op: FieldOp::Gt,
            operand: Operand::Num(500.0),
        }],
        ..ContactFilter::default()
    };
    let time_count = |label: &'static str| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            let mut best = f64::MAX;
            let mut count = 0;
            for _ in 0..5 {
                let t = Instant::now();
                count = store.count_contacts(ws, &filter).await?;
                best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            }
            println!("count (tag_7 AND score > 500) = {count}: best of 5 {best:.1} ms [{label}]");
            Ok::<_, StoreError>(())
        }
    };
    time_count("right after import").await?;
    sqlx::query("VACUUM ANALYZE").execute(store.pool()).await?;
    time_count("after VACUUM ANALYZE").await?;

    if std::env::var("KEEP_SCHEMA").as_deref() != Ok("1") {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(store.pool())
            .await?;
    } else {
        println!("kept schema {schema}");
    }
    Ok(())
}
