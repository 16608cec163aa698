//! `voronka bench segments`: how long counting and sampling a segment takes over a large
//! contact base, per backend.
//!
//! N contacts are imported through the store's import fast path (a Telegram identity,
//! subscribed for 70% of them; the tag `vip` on 10% plus one of ten other tags; a number
//! field `age`; a language), then a 4-condition segment — tag, number range, subscribed
//! on Telegram, language — is counted and sampled several times. The summary gives the
//! medians against the target (count ≤200 ms at 1,000,000 contacts).

use super::common::{self, Db};
use super::BackendChoice;
use anyhow::bail;
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::process::ExitCode;
use std::time::Instant;
use voronka_core::channel::ChannelKind;
use voronka_core::contact::Profile;
use voronka_core::crypto::SecretKey;
use voronka_core::field::{FieldSpec, FieldType, FieldValue};
use voronka_core::segment::{compile, Resolved};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::WorkspaceId;
use voronka_store::{DynStore, ImportRow, NewChannel};

/// Count latency target (ms) for the 4-condition segment over 1,000,000 contacts.
const TARGET_COUNT_MS: f64 = 200.0;

/// Rows per import call.
const BATCH: usize = 5_000;

/// Arguments of `bench segments`.
#[derive(Debug, Args)]
pub struct SegmentsBench {
    /// Contacts to generate.
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u64,
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// PostgreSQL database to create the benchmark schema in.
    #[arg(
        long,
        default_value = "postgres://127.0.0.1:5432/test",
        value_name = "URL"
    )]
    pg_url: String,
    /// Timed runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Keep the database afterwards (its location is printed), to study query plans.
    #[arg(long)]
    keep: bool,
}

/// What one backend measured.
#[derive(Debug, Default)]
struct Outcome {
    backend: &'static str,
    import_s: Option<f64>,
    matches: Option<u64>,
    count_ms: Option<f64>,
    sample_ms: Option<f64>,
    error: Option<String>,
}

/// The measured segment.
fn filter() -> serde_json::Value {
    json!({"and": [
        {"tag": "vip"},
        {"field": "age", "op": "gte", "value": 30},
        {"subscription": {"channel": "telegram", "state": "subscribed"}},
        {"language": ["ru"]}
    ]})
}

/// Runs the benchmark on the chosen backends and prints a summary line per backend.
pub async fn run(args: SegmentsBench) -> anyhow::Result<ExitCode> {
    if args.contacts == 0 || args.runs == 0 {
        bail!("--contacts and --runs must be at least 1");
    }
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut out = Outcome {
            backend: common::name(backend),
            ..Outcome::default()
        };
        match Db::fresh(backend, &args.pg_url).await {
            Ok(db) => {
                out!("== {}: {}", out.backend, db.label);
                if let Err(e) = measure(&mut out, &db.store, &args).await {
                    out.error = Some(format!("{e:#}"));
                }
                if args.keep {
                    out!("{}: kept {} ({})", out.backend, db.label, db.url);
                } else {
                    db.remove().await;
                }
            }
            Err(e) => out.error = Some(format!("{e:#}")),
        }
        outcomes.push(out);
    }
    out!("");
    out!(
        "segments benchmark: {} contacts, segment {}",
        args.contacts,
        filter()
    );
    let scaled = TARGET_COUNT_MS * (args.contacts as f64 / 1_000_000.0).max(1.0);
    let mut failed = false;
    for o in &outcomes {
        match (&o.error, o.count_ms, o.sample_ms, o.matches) {
            (None, Some(c), Some(s), Some(m)) => {
                let ok = c <= scaled;
                failed |= !ok;
                out!(
                    "{:<8} matches {m:>9}   count median {c:>8.1} ms (target ≤{scaled:.0} ms: {})   sample(20) median {s:>7.1} ms   import {:.1} s",
                    o.backend,
                    common::verdict(ok),
                    o.import_s.unwrap_or_default()
                );
            }
            (err, ..) => {
                failed = true;
                out!(
                    "{:<8} FAILED: {}",
                    o.backend,
                    err.as_deref().unwrap_or("incomplete")
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn measure(out: &mut Outcome, store: &DynStore, args: &SegmentsBench) -> anyhow::Result<()> {
    let ws = store.create_workspace("bench").await?.id;
    let started = Instant::now();
    seed(store, ws, args.contacts).await?;
    let import_s = started.elapsed().as_secs_f64();
    out.import_s = Some(import_s);
    out!(
        "{}: imported {} contacts in {import_s:.1} s",
        out.backend,
        args.contacts
    );

    let catalog = store.segment_catalog(ws).await?;
    let seg: Resolved = compile(&filter(), &catalog, jiff::Timestamp::now())
        .map_err(|p| anyhow::anyhow!("the benchmark segment does not resolve: {p:?}"))?;
    // One warm-up of each, then the timed runs.
    let matches = store.count_segment(ws, &seg).await?;
    store.sample_segment(ws, &seg, 20).await?;
    let mut counts = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        let n = store.count_segment(ws, &seg).await?;
        counts.push(t.elapsed().as_secs_f64() * 1000.0);
        if n != matches {
            bail!("the count changed between runs ({matches} then {n})");
        }
    }
    let mut samples = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        let got = store.sample_segment(ws, &seg, 20).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        if got.len() as u64 != matches.min(20) {
            bail!(
                "the sample has {} contacts, expected {}",
                got.len(),
                matches.min(20)
            );
        }
    }
    out.matches = Some(matches);
    out.count_ms = Some(median(counts.clone()));
    out.sample_ms = Some(median(samples));
    out!(
        "{}: {matches} match; count runs (ms): {}",
        out.backend,
        counts
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// Imports `n` generated contacts (deterministic, so runs compare).
async fn seed(store: &DynStore, ws: WorkspaceId, n: u64) -> anyhow::Result<()> {
    let key = SecretKey::generate();
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "bench bot".into(),
                credentials: key.seal(b"{}"),
                settings: Default::default(),
            },
        )
        .await?
        .id;
    let age = store
        .create_field(
            ws,
            FieldSpec {
                key: "age".into(),
                label: "Age".into(),
                field_type: FieldType::Number,
                choices: vec![],
            },
        )
        .await?;
    let now = jiff::Timestamp::now();
    let proof = ConsentProof {
        source: "import:bench".into(),
        at: now,
        text_shown: None,
        ip: None,
        message_id: None,
    };
    let subscribed =
        SubscriptionChange::new(SubscriptionState::Subscribed, vec![], Some(proof), now)?;
    let unsubscribed = SubscriptionChange::new(SubscriptionState::Unsubscribed, vec![], None, now)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut rows = Vec::with_capacity(BATCH);
    let mut last_report = Instant::now();
    for i in 0..n {
        let mut tags = vec![format!("t{}", rng.gen_range(0..10))];
        if rng.gen_bool(0.1) {
            tags.push("vip".into());
        }
        let lang = match rng.gen_range(0..10) {
            0..=4 => "ru",
            5..=7 => "en",
            _ => "de",
        };
        let years: u32 = rng.gen_range(18..70);
        rows.push(ImportRow {
            line: i + 1,
            profile: Profile {
                language: Some(lang.into()),
                ..Profile::default()
            },
            source: Some("bench".into()),
            identity: Some((channel, format!("u{i}"))),
            subscription: Some(if rng.gen_bool(0.7) {
                subscribed.clone()
            } else {
                unsubscribed.clone()
            }),
            tags,
            fields: vec![FieldValue::validate(&age, &json!(years), "age")?],
        });
        if rows.len() == BATCH || i + 1 == n {
            for o in store.import_contacts(ws, std::mem::take(&mut rows)).await? {
                if let Err(e) = o.result {
                    bail!("importing a benchmark contact failed: {e}");
                }
            }
            if last_report.elapsed().as_secs() >= 10 {
                last_report = Instant::now();
                out!("  … {} contacts", i + 1);
            }
        }
    }
    Ok(())
}
