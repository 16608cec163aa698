//! Benchmarks against the product's targets. `bench import`: import speed, filtered
//! count latency and server memory, per backend; `bench delivery` (in [`delivery`]):
//! outbox throughput against provider rate limits; `bench inbound` (in [`inbound`]):
//! webhook acknowledgement throughput and latency.

mod broadcast;
mod common;
mod delivery;
mod flows;
mod inbound;
mod segments;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::field::{FieldSpec, FieldType};
use voronka_core::filter::{ContactFilter, FieldConditionText};
use voronka_core::role::Scope;
use voronka_core::WorkspaceId;
use voronka_engine::csv_import::{import_csv, ImportOptions};
use voronka_store::{DynStore, NewApiKey, NewChannel};

/// Import rate targets (contacts per second).
const TARGET_SQLITE: f64 = 100_000.0;
const TARGET_PG: f64 = 50_000.0;
/// Filtered count target (ms).
const TARGET_COUNT_MS: f64 = 100.0;
/// Server resident memory target (MB).
const TARGET_RSS_MB: f64 = 100.0;
/// Number of tags in the pool and of cities.
const TAG_POOL: usize = 20;
const CITIES: usize = 50;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Import N generated contacts into a fresh database through the CSV import, time a
    /// filtered count, then start `voronka serve` on that database, make ~20 API requests
    /// and measure its resident memory. Prints a summary against the targets (import
    /// ≥100k contacts/s on SQLite, ≥50k/s on PostgreSQL, count ≤100 ms, RSS ≤100 MB).
    Import(ImportBench),
    /// Send one marketing message to every subscriber of N Telegram bots through the
    /// outbox, against a fake Telegram (in a child process) that enforces 30 messages/s
    /// per bot and 1/s per chat. Prints the achieved rate against the allowed one (target
    /// ≥97%), the 429s received (target 0) and this process's peak memory (≤200 MB).
    Delivery(delivery::DeliveryBench),
    /// Post generated Telegram updates to the webhook endpoint of an in-process server
    /// (with the messaging runtime processing them): acknowledged updates/s with
    /// concurrent senders (target ≥10,000/s on SQLite), then p50/p99/max latency at a
    /// steady 2,000 updates/s (target p99 ≤10 ms).
    Inbound(inbound::InboundBench),
    /// Flow runtime: steps executed per second on one core for a 5-step flow (target
    /// ≥20,000 steps/s on SQLite), and the memory of a process with 1,000,000 contacts
    /// waiting in delays (target ≤150 MB RSS).
    #[command(subcommand)]
    Flows(flows::FlowsCommand),
    /// A broadcast to N contacts subscribed on 100 Telegram bots, through `voronka serve`
    /// and its API against a fake Telegram (child process, 30 messages/s per bot): time to
    /// plan every recipient (target ≤10 s for 1,000,000), the sending rate of the first
    /// `--send` messages against the allowed one (target ≥97%, zero 429s), and API p99
    /// latency meanwhile (target ≤50 ms).
    Broadcast(broadcast::BroadcastBench),
    /// Segments: imports N contacts (a Telegram identity, tags, a number field, a
    /// language), then counts and samples a 4-condition segment (tag, number range,
    /// subscribed on Telegram, language) several times per backend and prints the
    /// medians against the target (count ≤200 ms for 1,000,000 contacts).
    Segments(segments::SegmentsBench),
}

/// Which database to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// SQLite in a temporary directory.
    Sqlite,
    /// A fresh schema in the PostgreSQL database of --pg-url, dropped afterwards.
    Postgres,
    /// Both, one after the other.
    Both,
}

/// Arguments of `bench import`.
#[derive(Debug, Args)]
pub struct ImportBench {
    /// Number of contacts to generate and import.
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
    /// Rows per import batch.
    #[arg(long, default_value_t = voronka_engine::csv_import::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Directory for the generated CSV and the SQLite database (default: a new directory
    /// under the system temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What one backend measured.
#[derive(Debug, Default)]
struct Outcome {
    backend: &'static str,
    import_rate: Option<f64>,
    count_median_ms: Option<f64>,
    rss_mb: Option<f64>,
    errors: Vec<String>,
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        BenchCommand::Import(args) => args,
        BenchCommand::Delivery(args) => return delivery::run(args).await,
        BenchCommand::Inbound(args) => return inbound::run(args).await,
        BenchCommand::Flows(cmd) => return flows::run(cmd).await,
        BenchCommand::Broadcast(args) => return broadcast::run(args).await,
        BenchCommand::Segments(args) => return segments::run(args).await,
    };
    if args.contacts == 0 {
        bail!("--contacts must be at least 1");
    }
    let (dir, remove_dir) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "voronka-bench-{}-{}",
                std::process::id(),
                jiff::Timestamp::now().as_second()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut outcomes = Vec::new();
    if matches!(args.backend, BackendChoice::Sqlite | BackendChoice::Both) {
        outcomes.push(bench_sqlite(&args, &dir).await);
    }
    if matches!(args.backend, BackendChoice::Postgres | BackendChoice::Both) {
        outcomes.push(bench_postgres(&args, &dir).await);
    }
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_summary(&outcomes);
    Ok(if outcomes.iter().any(|o| !o.errors.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn bench_sqlite(args: &ImportBench, dir: &Path) -> Outcome {
    let mut out = Outcome {
        backend: "sqlite",
        ..Outcome::default()
    };
    let db = dir.join(format!(
        "bench-{}.db",
        jiff::Timestamp::now().as_microsecond()
    ));
    let url = format!("sqlite://{}", db.display());
    out!("== sqlite: {}", db.display());
    match voronka_store::connect_and_migrate(&url).await {
        Ok(store) => measure(&mut out, store, &url, args, dir).await,
        Err(e) => out.errors.push(format!("cannot open SQLite: {e}")),
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    out
}

async fn bench_postgres(args: &ImportBench, dir: &Path) -> Outcome {
    let mut out = Outcome {
        backend: "postgres",
        ..Outcome::default()
    };
    let schema = format!(
        "bench_{}_{}",
        std::process::id(),
        jiff::Timestamp::now().as_second()
    );
    let sep = if args.pg_url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-csearch_path%3D{schema}", args.pg_url);
    out!("== postgres: {} schema {schema}", args.pg_url);
    match voronka_store::postgres::PgStore::connect_in_schema(&args.pg_url, &schema).await {
        Ok(store) => {
            let store: DynStore = Arc::new(store);
            match store.migrate().await {
                Ok(_) => measure(&mut out, store, &url, args, dir).await,
                Err(e) => out.errors.push(format!("cannot migrate PostgreSQL: {e}")),
            }
        }
        Err(e) => out
            .errors
            .push(format!("cannot connect to PostgreSQL: {e}")),
    }
    if let Err(e) = drop_schema(&args.pg_url, &schema).await {
        out!("postgres: could not drop schema {schema}: {e:#}");
    }
    out
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Import, count, server: records results and errors in `out`.
async fn measure(out: &mut Outcome, store: DynStore, url: &str, args: &ImportBench, dir: &Path) {
    if let Err(e) = measure_inner(out, store, url, args, dir).await {
        out.errors.push(format!("{e:#}"));
        out!("{}: error: {e:#}", out.backend);
    }
}

async fn measure_inner(
    out: &mut Outcome,
    store: DynStore,
    url: &str,
    args: &ImportBench,
    dir: &Path,
) -> anyhow::Result<()> {
    let name = out.backend;
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Benchmark").await?.id;
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
            .await?;
    }
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "Benchmark bot".into(),
                credentials: secret.seal(b"{\"token\":\"bench\"}"),
                settings: Default::default(),
            },
        )
        .await?;

    let csv_path = dir.join(format!("contacts-{name}.csv"));
    let started = Instant::now();
    let size = write_csv(&csv_path, args.contacts, channel.id.0)?;
    out!(
        "{name}: generated {} contacts ({:.1} MB CSV) in {:.1} s",
        args.contacts,
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let file = std::fs::File::open(&csv_path)?;
    let started = Instant::now();
    let report = import_csv(
        store.clone(),
        ws,
        std::io::BufReader::with_capacity(256 * 1024, file),
        ImportOptions {
            batch_size: args.batch_size,
            ..ImportOptions::default()
        },
        Box::new(|_| {}),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&csv_path);
    let imported = report.created + report.updated + report.unchanged;
    let rate = imported as f64 / secs;
    out!("{name}: import: {imported} contacts in {secs:.2} s = {rate:.0} contacts/s");
    if !report.failed.is_empty() {
        let first = &report.failed[0];
        bail!(
            "{} rows failed, e.g. line {}: {}",
            report.failed.len(),
            first.line,
            first.reason
        );
    }
    out.import_rate = Some(rate);

    let defs = store.list_fields(ws).await?;
    let cond: FieldConditionText = "score:gt:500".parse()?;
    let score = defs
        .iter()
        .find(|d| d.spec.key == "score")
        .context("field score is missing")?;
    let filter = ContactFilter {
        tags: vec!["tag-3".into()],
        fields: vec![cond.resolve(score)?],
        ..ContactFilter::default()
    };
    let mut count = store.count_contacts(ws, &filter).await?;
    let mut times = Vec::with_capacity(11);
    for _ in 0..11 {
        let t = Instant::now();
        count = store.count_contacts(ws, &filter).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let (median, p90) = (times[5], times[9]);
    out!("{name}: count tag=tag-3 AND score>500: {count} contacts; median {median:.1} ms, p90 {p90:.1} ms (11 runs after 1 warm-up)");
    out.count_median_ms = Some(median);

    let rss = server_memory(&store, ws, url, &secret).await?;
    out!("{name}: server RSS after ~20 API requests and 2 s idle: {rss:.1} MB");
    out.rss_mb = Some(rss);
    Ok(())
}

/// Writes `n` contacts; returns the file size.
fn write_csv(path: &Path, n: u64, channel: i64) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_26);
    let cities: Vec<String> = (0..CITIES).map(|i| format!("City {i}")).collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "phone,first_name,tags,field.score,field.city,channel_id,external_id,subscribed,consent_source,consent_at"
    )?;
    for i in 0..n {
        let tags = sample(&mut rng, TAG_POOL, 3);
        let t: Vec<String> = tags.iter().map(|t| format!("tag-{t}")).collect();
        writeln!(
            w,
            "+7900{i:07},Name{i},{},{},{},{channel},tg-{i},yes,bench,2026-01-01 10:00:00",
            t.join(";"),
            rng.gen_range(0..1000),
            cities[rng.gen_range(0..CITIES)],
        )?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Starts `voronka serve` on the database, makes API requests, and returns its RSS (MB).
async fn server_memory(
    store: &DynStore,
    ws: WorkspaceId,
    url: &str,
    secret: &SecretKey,
) -> anyhow::Result<f64> {
    let key = voronka_core::apikey::generate();
    store
        .create_api_key(
            ws,
            NewApiKey {
                name: "bench".into(),
                prefix: key.prefix.clone(),
                secret_hash: key.hash.clone(),
                scopes: Scope::ALL.to_vec(),
            },
        )
        .await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let exe = std::env::current_exe().context("cannot find the voronka executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .env_remove("VORONKA_CONFIG")
        .env_remove("RUST_LOG")
        .env("VORONKA_DATABASE_URL", url)
        .env("VORONKA_LISTEN", format!("127.0.0.1:{port}"))
        .env("VORONKA_SECRET_KEY", secret.to_base64())
        .env("VORONKA_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start voronka serve")?;
    let pid = child.id().context("the server exited at once")?;
    let result = drive_server(port, &key.token, pid).await;
    // Graceful stop first (SIGTERM), then kill if it lingers.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    result
}

async fn drive_server(port: u16, token: &str, pid: u32) -> anyhow::Result<f64> {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() > deadline => bail!("the server did not become ready in 60 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let list: serde_json::Value = http
        .get(format!("{base}/api/v1/contacts?limit=50"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()
        .context("GET /api/v1/contacts")?
        .json()
        .await?;
    let first_id = list
        .get("data")
        .and_then(|i| i.get(0))
        .and_then(|c| c.get("id"))
        .and_then(serde_json::Value::as_i64)
        .context("the contact list has no data[0].id")?;
    let paths = [
        "/api/v1/contacts?limit=50&tag=tag-3".to_string(),
        "/api/v1/contacts/count?tag=tag-3&field=score:gt:500".to_string(),
        format!("/api/v1/contacts/{first_id}"),
    ];
    for i in 0..19 {
        let path = &paths[i % paths.len()];
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path} answered {}", r.status());
        }
        let _ = r.bytes().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::rss_mb(&pid.to_string()).context("cannot read the server's memory from /proc")
}

fn print_summary(outcomes: &[Outcome]) {
    let verdict = common::verdict;
    out!("");
    out!("summary                 measured            target        result");
    for o in outcomes {
        let target = if o.backend == "sqlite" {
            TARGET_SQLITE
        } else {
            TARGET_PG
        };
        let na = "n/a".to_string();
        let rows = [
            (
                "import",
                o.import_rate.map(|r| format!("{r:.0} contacts/s")),
                format!(">= {target:.0}/s"),
                o.import_rate.map(|r| r >= target),
            ),
            (
                "count",
                o.count_median_ms.map(|m| format!("{m:.1} ms median")),
                format!("<= {TARGET_COUNT_MS:.0} ms"),
                o.count_median_ms.map(|m| m <= TARGET_COUNT_MS),
            ),
            (
                "server RSS",
                o.rss_mb.map(|m| format!("{m:.1} MB")),
                format!("<= {TARGET_RSS_MB:.0} MB"),
                o.rss_mb.map(|m| m <= TARGET_RSS_MB),
            ),
        ];
        for (what, value, target, ok) in rows {
            out!(
                "{:<23} {:<19} {:<13} {}",
                format!("{} {what}", o.backend),
                value.unwrap_or_else(|| na.clone()),
                target,
                ok.map(verdict).unwrap_or("not measured")
            );
        }
        for e in &o.errors {
            out!("{} error: {e}", o.backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_csv_has_unique_phones_and_three_tags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.csv");
        write_csv(&path, 100, 7).expect("writes");
        let mut r = csv::Reader::from_path(&path).expect("reads");
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.expect("row")).collect();
        assert_eq!(rows.len(), 100);
        let phones: std::collections::HashSet<&str> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(phones.len(), 100);
        for row in &rows {
            let tags: std::collections::HashSet<&str> = row[2].split(';').collect();
            assert_eq!(tags.len(), 3);
            assert!(row[3].parse::<u32>().expect("score") < 1000);
            assert_eq!(&row[5], "7");
        }
    }
}
