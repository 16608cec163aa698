//! `bench inbound`: how fast the webhook endpoint acknowledges Telegram updates, and
//! with what latency under a steady load. End to end in one process: the HTTP server,
//! the messaging runtime (whose processor works through the stored events meanwhile)
//! and the store.

use super::common::{self, verdict, Db};
use super::BackendChoice;
use anyhow::{bail, Context};
use clap::Args;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_engine::messaging::telegram::Credentials;
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_store::{DynStore, NewChannel};

/// Acknowledged updates per second to reach on SQLite.
const TARGET_RATE: f64 = 10_000.0;
/// p99 acknowledgement latency target (ms) at the paced rate.
const TARGET_P99_MS: f64 = 10.0;
/// Paced phase: updates per second and duration.
const PACED_RATE: u64 = 2_000;
const PACED_SECS: u64 = 5;
const TOKEN: &str = "4242:BENCHinboundtoken";
const SECRET: &str = "bench-inbound-webhook-secret";

/// Arguments of `bench inbound`.
#[derive(Debug, Args)]
pub struct InboundBench {
    /// Updates to post in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    updates: u64,
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Sqlite)]
    backend: BackendChoice,
    /// Concurrent requests in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// PostgreSQL database to create the benchmark schema in.
    #[arg(
        long,
        default_value = "postgres://127.0.0.1:5432/test",
        value_name = "URL"
    )]
    pg_url: String,
}

#[derive(Debug, Default)]
struct Outcome {
    backend: &'static str,
    rate: Option<f64>,
    refused: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// p50, p99, max while the processor works through a backlog.
    backlog_latency: Option<(f64, f64, f64)>,
    paced_sent: u64,
    pending_at_end: Option<u64>,
    drained_after: Option<f64>,
    error: Option<String>,
}

/// Runs `bench inbound`.
pub async fn run(args: InboundBench) -> anyhow::Result<ExitCode> {
    if args.updates == 0 || args.concurrency == 0 {
        bail!("--updates and --concurrency must be at least 1");
    }
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut out = Outcome {
            backend: common::name(backend),
            ..Outcome::default()
        };
        if let Err(e) = measure(&mut out, &args, backend).await {
            out!("{}: error: {e:#}", out.backend);
            out.error = Some(format!("{e:#}"));
        }
        outcomes.push(out);
    }
    out!("");
    out!("summary: POST /hooks/telegram/{{id}}; 200 = the update is stored");
    for o in &outcomes {
        let b = o.backend;
        match o.rate {
            Some(r) => out!(
                "{b} throughput ({} workers)  {r:.0} updates/s acknowledged   target >= {TARGET_RATE:.0}/s{}   {}",
                args.concurrency,
                if b == "sqlite" { "" } else { " (set for SQLite)" },
                verdict(r >= TARGET_RATE)
            ),
            None => out!("{b} throughput              not measured"),
        }
        if o.refused > 0 {
            out!("{b} non-200 answers         {}", o.refused);
        }
        match (o.p50_ms, o.p99_ms, o.max_ms) {
            (Some(p50), Some(p99), Some(max)) => out!(
                "{b} latency at {PACED_RATE}/s ({} updates, steady state)  p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms   target p99 <= {TARGET_P99_MS:.0} ms   {}",
                o.paced_sent,
                verdict(p99 <= TARGET_P99_MS)
            ),
            _ => out!("{b} latency                 not measured"),
        }
        if let Some((p50, p99, max)) = o.backlog_latency {
            out!("{b} (same, while the processor works through phase A's backlog: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms)");
        }
        match o.pending_at_end {
            Some(p) => out!(
                "{b} processor               {p} events still pending when posting ended; {}",
                o.drained_after
                    .map(|s| format!("all processed {s:.1} s later"))
                    .unwrap_or_else(|| "not drained within 60 s".into())
            ),
            None => out!("{b} processor               not measured"),
        }
        if let Some(e) = &o.error {
            out!("{b} error: {e}");
        }
    }
    Ok(if outcomes.iter().any(|o| o.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn measure(
    out: &mut Outcome,
    args: &InboundBench,
    backend: BackendChoice,
) -> anyhow::Result<()> {
    let db = Db::fresh(backend, &args.pg_url).await?;
    out!("== inbound on {}: {}", out.backend, db.label);
    let result = measure_inner(out, args, db.store.clone()).await;
    db.remove().await;
    result
}

/// A Telegram update: a text message from a new user.
fn update(n: u64, date: i64) -> String {
    let user = 500_000_000 + n;
    format!(
        r#"{{"update_id":{n},"message":{{"message_id":{n},"from":{{"id":{user},"is_bot":false,"first_name":"User{n}","language_code":"en"}},"chat":{{"id":{user},"type":"private","first_name":"User{n}"}},"date":{date},"text":"hello from {n}"}}}}"#
    )
}

async fn measure_inner(
    out: &mut Outcome,
    args: &InboundBench,
    store: DynStore,
) -> anyhow::Result<()> {
    // The runtime polls every bot it knows; this one answers its getUpdates with nothing.
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .context("cannot start the fake Telegram")?;
    fake.add_bot(TOKEN, "bench_inbound_bot");
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Inbound benchmark").await?.id;
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "Inbound bot".into(),
                credentials: Credentials {
                    token: TOKEN.into(),
                    webhook_secret: SECRET.into(),
                }
                .seal(&secret),
                settings: Default::default(),
            },
        )
        .await?;
    let messaging = Messaging::new(
        store.clone(),
        secret,
        MessagingConfig {
            telegram_api_url: fake.api_url(),
            public_url: None,
            poll_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    messaging.start().await.context("cannot start messaging")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(voronka_server::serve(
        listener,
        voronka_server::AppState::with_messaging(messaging.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let result = phases(
        out,
        args,
        &store,
        &format!("http://{addr}/hooks/telegram/{}", channel.id),
    )
    .await;
    let _ = stop.send(());
    let _ = server.await;
    messaging.stop();
    fake.shutdown();
    result
}

async fn phases(
    out: &mut Outcome,
    args: &InboundBench,
    store: &DynStore,
    url: &str,
) -> anyhow::Result<()> {
    let name = out.backend;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency.max(64))
        .timeout(Duration::from_secs(30))
        .build()?;
    let target = Target {
        http,
        url: Arc::from(url),
        date: jiff::Timestamp::now().as_second(),
    };
    // Warm-up: open the connections (not counted).
    let next = Arc::new(AtomicU64::new(1));
    let warm = args.concurrency as u64 * 2;
    run_workers(args.concurrency, warm, &next, &target).await;

    // Phase A: as fast as the workers can.
    let first = next.load(Ordering::Relaxed);
    let started = Instant::now();
    let (ok, refused) =
        run_workers(args.concurrency, first + args.updates - 1, &next, &target).await;
    let secs = started.elapsed().as_secs_f64();
    let rate = ok as f64 / secs;
    out!("{name}: throughput: {ok} updates acknowledged in {secs:.2} s = {rate:.0}/s ({refused} refused)");
    out.rate = Some(rate);
    out.refused = refused;
    if ok == 0 {
        bail!("no update was acknowledged");
    }

    // Phase B, twice: first while the processor still works through phase A's backlog
    // (webhook writes then share the database with it), then in the steady state, after
    // the backlog is processed.
    let mut base = first + args.updates + 1_000;
    let backlog = pending(store).await?;
    let (lat, refused) = paced(&target, base).await?;
    base += PACED_RATE * PACED_SECS + 1_000;
    out.refused += refused;
    out.backlog_latency = Some(percentiles(&lat));
    let (p50, p99, max) = percentiles(&lat);
    out!("{name}: paced with a backlog of {backlog} unprocessed events: {} acknowledged; p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms", lat.len());
    let drained = drain(store).await?;
    out!(
        "{name}: processor backlog {}",
        drained
            .map(|s| format!("processed {s:.1} s later"))
            .unwrap_or_else(|| "not processed within 60 s".into())
    );
    let (lat, refused) = paced(&target, base).await?;
    out.refused += refused;
    out.paced_sent = PACED_RATE * PACED_SECS;
    let (p50, p99, max) = percentiles(&lat);
    (out.p50_ms, out.p99_ms, out.max_ms) = (Some(p50), Some(p99), Some(max));
    out!("{name}: paced, steady state: {} acknowledged; p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms", lat.len());

    // How far the processor got.
    let pending = pending(store).await?;
    out.pending_at_end = Some(pending);
    out!("{name}: {pending} inbound events still pending when posting ended");
    out.drained_after = drain(store).await?;
    Ok(())
}

/// Posts `PACED_RATE * PACED_SECS` updates from `base` on, open loop at `PACED_RATE`;
/// returns the sorted latencies (ms, each from when its request was sent) of the
/// acknowledged ones and the number of others.
async fn paced(target: &Target, base: u64) -> anyhow::Result<(Vec<f64>, u64)> {
    let count = PACED_RATE * PACED_SECS;
    let interval = Duration::from_secs_f64(1.0 / PACED_RATE as f64);
    let started = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(count as usize);
    for k in 0..count {
        tokio::time::sleep_until(started + interval * k as u32).await;
        let target = target.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = target.post(base + k).await;
            (ok, t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut refused = 0u64;
    for h in handles {
        let (ok, d) = h.await?;
        if ok {
            lat.push(d.as_secs_f64() * 1000.0);
        } else {
            refused += 1;
        }
    }
    if lat.is_empty() {
        bail!("no paced update was acknowledged");
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat, refused))
}

/// p50, p99 and max of sorted, non-empty latencies.
fn percentiles(lat: &[f64]) -> (f64, f64, f64) {
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    (pct(0.50), pct(0.99), lat[lat.len() - 1])
}

/// Waits (up to 60 s) until no inbound event is pending; returns how long that took.
async fn drain(store: &DynStore) -> anyhow::Result<Option<f64>> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if !pending_any(store).await? {
            return Ok(Some(t.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// Where and how updates are posted.
#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    url: Arc<str>,
    date: i64,
}

impl Target {
    /// Posts update `n`; true when it was acknowledged with a 2xx.
    async fn post(&self, n: u64) -> bool {
        let r = self
            .http
            .post(&*self.url)
            .header("content-type", "application/json")
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .body(update(n, self.date))
            .send()
            .await;
        match r {
            Ok(r) => {
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        }
    }
}

/// Posts updates from `next` up to `last` with `workers` concurrent workers; returns
/// (acknowledged, not).
async fn run_workers(
    workers: usize,
    last: u64,
    next: &Arc<AtomicU64>,
    target: &Target,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (next, target) = (next.clone(), target.clone());
        let (ok, bad) = (ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > last {
                    // Leave the counter at last + 1 for the next phase.
                    next.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                if target.post(n).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
}

async fn pending(store: &DynStore) -> anyhow::Result<u64> {
    let mut after = None;
    let mut n = 0u64;
    loop {
        let page = store.pending_inbound(after, 10_000).await?;
        n += page.len() as u64;
        match page.last() {
            Some(r) if page.len() == 10_000 => after = Some(r.id),
            _ => return Ok(n),
        }
    }
}

async fn pending_any(store: &DynStore) -> anyhow::Result<bool> {
    Ok(!store.pending_inbound(None, 1).await?.is_empty())
}
