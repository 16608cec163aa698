//! Fills a fresh SQLite store with 1,000,000 contacts through `import_contacts` and times
//! the import and a filtered count.
//!
//! `cargo run --release -p voronka-store --example sqlite_bench [-- CONTACTS [seq|random] [DB_PATH]]`
//! Each contact: a phone, 3 tags from a pool of 20, a number and a text field, and one
//! identity subscribed with proof — the shape of the import target in the semantics.
//! `seq` (default) numbers phones and external ids in file order, as an export from
//! another system usually is; `random` scatters them, the worst case for the phone and
//! identity indexes (every insert lands on a different leaf page).

use std::time::Instant;
use voronka_core::channel::ChannelKind;
use voronka_core::contact::Profile;
use voronka_core::crypto::Sealed;
use voronka_core::field::{FieldSpec, FieldType, FieldValue};
use voronka_core::filter::{ContactFilter, FieldCondition, FieldOp, Operand};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_store::sqlite::SqliteStore;
use voronka_store::*;

const BATCH: usize = 5_000;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let random = args.next().is_some_and(|m| m == "random");
    let dir = tempfile::tempdir().map_err(|e| StoreError::Database(e.to_string()))?;
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("bench.db"));
    let store = SqliteStore::open(&path).await?;
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
                    data: vec![0; 40],
                },
                settings: Default::default(),
            },
        )
        .await?
        .id;
    let score = store
        .create_field(
            ws,
            FieldSpec {
                key: "score".into(),
                label: "Score".into(),
                field_type: FieldType::Number,
                choices: vec![],
            },
        )
        .await?;
    let city = store
        .create_field(
            ws,
            FieldSpec {
                key: "city".into(),
                label: "City".into(),
                field_type: FieldType::Text,
                choices: vec![],
            },
        )
        .await?;
    let now = jiff::Timestamp::now();
    let proof = ConsentProof {
        source: "import:bench".into(),
        at: now,
        text_shown: Some("Subscribe to news".into()),
        ip: None,
        message_id: None,
    };
    let change = SubscriptionChange::new(SubscriptionState::Subscribed, vec![], Some(proof), now)
        .map_err(StoreError::Invalid)?;
    let cities = [
        "Moscow", "Kazan", "Omsk", "Perm", "Tver", "Sochi", "Ufa", "Tula",
    ];

    // A cheap deterministic generator: phones and values look random to the indexes.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };

    let started = Instant::now();
    let mut done = 0usize;
    let mut batches = 0u32;
    while done < total {
        let n = BATCH.min(total - done);
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let k = done + i;
            let r = rnd();
            let tags = (0..3)
                .map(|j| format!("tag{}", (r as usize / 7 + j * 7) % 20))
                .collect();
            rows.push(ImportRow {
                line: (k + 2) as u64,
                profile: Profile {
                    first_name: Some(format!("Name{k}")),
                    phone: Some(if random {
                        format!("+7{:010}", r % 10_000_000_000)
                    } else {
                        format!("+79{:09}", k)
                    }),
                    ..Profile::default()
                },
                source: Some("import:bench".into()),
                identity: Some((
                    channel,
                    if random {
                        format!(
                            "{}",
                            100_000_000 + (r >> 20) % 9_000_000_000 * 1000 + k as u64 % 1000
                        )
                    } else {
                        format!("{}", 100_000_000 + k)
                    },
                )),
                subscription: Some(change.clone()),
                tags,
                fields: vec![
                    FieldValue::from_storage(
                        score.id,
                        FieldType::Number,
                        None,
                        Some((r % 1000) as f64),
                    ),
                    FieldValue::from_storage(
                        city.id,
                        FieldType::Text,
                        Some(cities[(r >> 8) as usize % 8].into()),
                        None,
                    ),
                ],
            });
        }
        let out = store.import_contacts(ws, rows).await?;
        if let Some(bad) = out.iter().find(|o| o.result.is_err()) {
            eprintln!("row failed: {bad:?}");
        }
        done += n;
        batches += 1;
        if batches == 20 {
            batches = 0;
            let s = started.elapsed().as_secs_f64();
            println!("{done} rows in {s:.1} s ({:.0} rows/s)", done as f64 / s);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "import: {total} contacts in {secs:.2} s = {:.0} contacts/s",
        total as f64 / secs
    );

    let filter = ContactFilter {
        tags: vec!["tag3".into()],
        fields: vec![FieldCondition {
            field_id: score.id,
            op: FieldOp::Gt,
            operand: Operand::Num(500.0),
        }],
        ..ContactFilter::default()
    };
    for line in store.count_plan(ws, &filter).await? {
        println!("plan: {line}");
    }
    for attempt in 1..=3 {
        let t = Instant::now();
        let n = store.count_contacts(ws, &filter).await?;
        println!(
            "count tag3 AND score > 500: {n} in {:.1} ms (run {attempt})",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    // The store checkpoints the WAL on a background thread up to half a second after the
    // last commit; counts once that is done show the steady state.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for attempt in 1..=3 {
        let t = Instant::now();
        let n = store.count_contacts(ws, &filter).await?;
        println!(
            "count tag3 AND score > 500 after checkpoint: {n} in {:.1} ms (run {attempt})",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let t = Instant::now();
    let n = store.count_contacts(ws, &ContactFilter::default()).await?;
    println!(
        "count all: {n} in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let page = store
        .list_contacts(
            ws,
            &ContactQuery {
                filter,
                before: None,
                limit: 50,
            },
        )
        .await?;
    println!(
        "list 50 filtered: {} in {:.1} ms",
        page.items.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("database file: {} MB", size / 1_000_000);
    // Resident memory of this process after the import and the queries (Linux only).
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        {
            println!("{line}");
        }
    }
    Ok(())
}
