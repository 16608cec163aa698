//! `bench flows`: how fast the flow runtime executes steps, and what a million contacts
//! waiting in delays cost in memory.
//!
//! `steps`: N subscribed contacts each get the API event that starts a 5-step flow (add
//! a tag, a condition on it, a message, another tag, stop). The signals are stored
//! first; then the runtime starts and the clock runs until every run has ended. The
//! runtime runs on a single-threaded async executor. SQLite's writer thread and its
//! blocking reads are threads of their own (PostgreSQL works in its own processes), so
//! the CPU time of each thread is printed next to the rate. Delivery is not started:
//! the messages stay queued in the outbox, and only flow execution is timed.
//!
//! `waiting`: N contacts, each with a run waiting in a 1-day delay. A fresh process
//! (this binary again, with the hidden `--measure-only`) then opens the database, starts
//! the messaging and flow runtimes, idles while the timer worker polls, and reports its
//! own peak and current resident memory, so nothing the seeding allocated is counted.

use super::common::{self, verdict, Db};
use super::BackendChoice;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::event::EventKind;
use voronka_core::filter::ContactFilter;
use voronka_core::flow::format::{parse, Format};
use voronka_core::flow::validate::{validate, Catalog};
use voronka_core::{ChannelId, ContactId, FlowId, WorkspaceId};
use voronka_engine::flows::{Flows, FlowsConfig, PublishError};
use voronka_engine::messaging::telegram::Credentials;
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_store::{
    DynStore, FlowCommit, NewChannel, NewRun, NewSignal, OutboxState, RunState, RunStatus,
    RunWrite, WaitKind,
};

/// Flow steps per second to reach on SQLite.
const TARGET_STEPS: f64 = 20_000.0;
/// Resident memory target of a process with a million waiting runs (MB).
const TARGET_WAITING_RSS_MB: f64 = 150.0;
/// Steps each run of the `steps` flow executes.
const STEPS_PER_RUN: u64 = 5;
/// The tag the `steps` flow adds last: every contact has it once their run is through.
const DONE_TAG: &str = "bench-greeted";
/// Where the measuring process finds the channels' key (an argument would show in `ps`).
const SECRET_ENV: &str = "VORONKA_BENCH_SECRET_KEY";
/// The bot of the `waiting` benchmark.
const WAIT_TOKEN: &str = "4545:BENCHwaitingtoken";
/// `/proc` reports CPU times in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SEC: f64 = 100.0;

const STEPS_FLOW: &str = r#"
name: Bench steps
triggers:
  - type: event
    name: bench
start: tag
steps:
  - id: tag
    type: action
    actions:
      - add_tag: bench-entered
    next: check
  - id: check
    type: condition
    branches:
      - if: { tag: bench-entered }
        next: hello
    else: end
  - id: hello
    type: send
    text: "Hi {{ contact.first_name | default('there') }}"
    next: mark
  - id: mark
    type: action
    actions:
      - add_tag: bench-greeted
    next: end
  - id: end
    type: stop
"#;

const WAITING_FLOW: &str = r#"
name: Bench waiting
triggers:
  - type: event
    name: later
start: hold
steps:
  - id: hold
    type: delay
    for: 1d
    next: nudge
  - id: nudge
    type: send
    text: "Still thinking it over, {{ contact.first_name | default('friend') }}?"
"#;

/// Flow runtime benchmarks.
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Flow steps executed per second: N contacts each run a 5-step flow (tag,
    /// condition, message, tag, stop) started by an API event, on a single-threaded
    /// runtime; 3 runs per backend on fresh databases, median printed (target ≥20,000
    /// steps/s on SQLite).
    Steps(StepsArgs),
    /// Memory of a process whose database holds N runs waiting in a 1-day delay: seeds
    /// them, then a fresh process starts the messaging and flow runtimes, idles, and
    /// reports its peak and current RSS (target ≤150 MB for 1,000,000).
    Waiting(WaitingArgs),
}

/// Arguments of `bench flows steps`.
#[derive(Debug, Args)]
pub struct StepsArgs {
    /// Contacts, each running the flow once.
    #[arg(long, default_value_t = 20_000)]
    contacts: u64,
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// Runs per backend, each on a fresh database.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// PostgreSQL database to create the benchmark schemas in.
    #[arg(
        long,
        default_value = "postgres://127.0.0.1:5432/test",
        value_name = "URL"
    )]
    pg_url: String,
}

/// Arguments of `bench flows waiting`.
#[derive(Debug, Args)]
pub struct WaitingArgs {
    /// Contacts, each with one run waiting in a delay.
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u64,
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Sqlite)]
    backend: BackendChoice,
    /// Seconds the measuring process idles with its runtimes started.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Runs written to the store at once while seeding.
    #[arg(long, default_value_t = 256)]
    seed_concurrency: usize,
    /// PostgreSQL database to create the benchmark schema in.
    #[arg(
        long,
        default_value = "postgres://127.0.0.1:5432/test",
        value_name = "URL"
    )]
    pg_url: String,
    /// Only open `--database`, start the runtimes and report this process's memory.
    #[arg(long, hide = true, requires_all = ["database", "telegram_api_url"])]
    measure_only: bool,
    /// The seeded database (with `--measure-only`).
    #[arg(long, hide = true, value_name = "URL")]
    database: Option<String>,
    /// The fake Telegram the seeding process runs (with `--measure-only`).
    #[arg(long, hide = true, value_name = "URL")]
    telegram_api_url: Option<String>,
}

/// Runs `bench flows …`.
pub async fn run(cmd: FlowsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowsCommand::Steps(args) => steps(args).await,
        FlowsCommand::Waiting(args) if args.measure_only => measure_only(args).await,
        FlowsCommand::Waiting(args) => waiting(args).await,
    }
}

// ------------------------------------------------------------------------------------
// CPU time and memory from /proc.

/// CPU seconds used so far by the whole process (exited threads included) and by each
/// live thread.
#[derive(Debug, Default)]
struct CpuSample {
    total: f64,
    threads: HashMap<String, (String, f64)>,
}

/// User + system CPU seconds and the name in a `/proc/…/stat` line.
fn stat_cpu(text: &str) -> Option<(String, f64)> {
    // The name is in parentheses and may itself contain spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SEC))
}

fn cpu_sample() -> CpuSample {
    let mut sample = CpuSample::default();
    if let Some((_, t)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu(&s))
    {
        sample.total = t;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let tid = entry.file_name().to_string_lossy().into_owned();
            if let Some(v) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu(&s))
            {
                sample.threads.insert(tid, v);
            }
        }
    }
    sample
}

/// CPU seconds between two samples: in all, and per group of threads.
#[derive(Debug, Default, Clone)]
struct CpuUse {
    total: f64,
    groups: Vec<(&'static str, f64)>,
}

/// The group a thread's name puts it in.
fn thread_group(name: &str) -> &'static str {
    if name.starts_with("bench-flows") {
        "runtime thread"
    } else if name.starts_with("sqlite-writer") {
        "sqlite writer"
    } else if name.starts_with("sqlite-check") {
        "sqlite checkpoint"
    } else if name.starts_with("bench-blocking") {
        "blocking pool (sqlite reads)"
    } else {
        "other threads"
    }
}

fn cpu_use(before: &CpuSample, after: &CpuSample) -> CpuUse {
    let mut groups: Vec<(&'static str, f64)> = Vec::new();
    for (tid, (name, t)) in &after.threads {
        let start = before.threads.get(tid).map_or(0.0, |(_, t0)| *t0);
        let g = thread_group(name);
        match groups.iter_mut().find(|(n, _)| *n == g) {
            Some((_, v)) => *v += t - start,
            None => groups.push((g, t - start)),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    CpuUse {
        total: after.total - before.total,
        groups,
    }
}

impl CpuUse {
    fn describe(&self, wall: f64) -> String {
        let parts: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, s)| *s >= 0.005)
            .map(|(g, s)| format!("{g} {s:.2} s"))
            .collect();
        format!(
            "CPU {:.2} s = {:.2} cores ({})",
            self.total,
            self.total / wall,
            parts.join(", ")
        )
    }
}

/// The CPUs and the load average: other work on the machine shows in every figure.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into());
    format!("{cpus} CPUs, load average {load}")
}

/// A `Vm…:` line of /proc/self/status, in MB.
fn vm_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(kb / 1024.0)
}

// ------------------------------------------------------------------------------------
// Shared set-up.

/// A published flow, from YAML, validated as the API would.
async fn publish(flows: &Flows, ws: WorkspaceId, name: &str, yaml: &str) -> anyhow::Result<FlowId> {
    let doc = parse(yaml, Format::Yaml).map_err(|p| anyhow::anyhow!("{}", p.message))?;
    let draft = serde_json::to_value(&doc)?;
    let flow = flows.store().create_flow(ws, name, draft).await?;
    match flows.publish(ws, flow.id).await {
        Ok(_) => Ok(flow.id),
        Err(PublishError::Invalid(problems)) => bail!(
            "the benchmark flow is invalid: {}",
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => Err(e.into()),
    }
}

/// A Telegram channel whose sealed credentials name `token`.
async fn telegram_channel(
    store: &DynStore,
    ws: WorkspaceId,
    secret: &SecretKey,
    token: &str,
) -> anyhow::Result<ChannelId> {
    let creds = Credentials {
        token: token.into(),
        webhook_secret: "bench-flows-webhook-secret".into(),
    };
    Ok(store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Telegram,
                name: "Flow benchmark bot".into(),
                credentials: creds.seal(secret),
                settings: Default::default(),
            },
        )
        .await?
        .id)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

// ------------------------------------------------------------------------------------
// bench flows steps

/// One timed run.
#[derive(Debug)]
struct StepsRun {
    secs: f64,
    cpu: CpuUse,
}

#[derive(Debug, Default)]
struct StepsOutcome {
    backend: &'static str,
    runs: Vec<StepsRun>,
    error: Option<String>,
}

async fn steps(args: StepsArgs) -> anyhow::Result<ExitCode> {
    if args.contacts == 0 || args.repeat == 0 {
        bail!("--contacts and --repeat must be at least 1");
    }
    let args = Arc::new(args);
    let load_before = machine();
    out!("machine: {load_before}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let for_thread = args.clone();
    // One thread runs everything async; its blocking pool serves SQLite's reads.
    std::thread::Builder::new()
        .name("bench-flows".into())
        .spawn(move || {
            let outcomes = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("bench-blocking")
                .build()
                .map(|rt| rt.block_on(steps_all(&for_thread)));
            let _ = tx.send(outcomes);
        })
        .context("cannot start the benchmark thread")?;
    let outcomes = rx
        .await
        .context("the benchmark thread stopped without a result")?
        .context("cannot start the single-threaded runtime")?;

    let n = args.contacts;
    out!("");
    out!(
        "summary: {n} contacts x {STEPS_PER_RUN} steps (tag, condition, message, tag, stop), started by an API event each"
    );
    out!("(async work on one current_thread tokio runtime; SQLite's writer and reads run on threads of their own, PostgreSQL in its server processes; the clock runs from Flows::start() until run_counts shows every run ended, polled every 100 ms, 10 ms near the end)");
    out!("machine: before {load_before}; after {}", machine());
    for o in &outcomes {
        let b = o.backend;
        let rates: Vec<f64> = o
            .runs
            .iter()
            .map(|r| (n * STEPS_PER_RUN) as f64 / r.secs)
            .collect();
        for (i, (r, rate)) in o.runs.iter().zip(&rates).enumerate() {
            out!(
                "{b} run {}: {:.2} s  {rate:.0} steps/s  {:.0} runs/s  {}",
                i + 1,
                r.secs,
                n as f64 / r.secs,
                r.cpu.describe(r.secs)
            );
        }
        match median(&rates) {
            Some(m) => {
                let target = if b == "sqlite" {
                    format!(
                        "target >= {TARGET_STEPS:.0} steps/s   {}",
                        verdict(m >= TARGET_STEPS)
                    )
                } else {
                    "(the target is set for SQLite)".to_string()
                };
                out!(
                    "{b} median of {}: {m:.0} steps/s = {:.0} runs/s   {target}",
                    rates.len(),
                    m / STEPS_PER_RUN as f64
                );
            }
            None => out!("{b} not measured"),
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

async fn steps_all(args: &StepsArgs) -> Vec<StepsOutcome> {
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut o = StepsOutcome {
            backend: common::name(backend),
            ..StepsOutcome::default()
        };
        for round in 1..=args.repeat {
            let db = match Db::fresh(backend, &args.pg_url).await {
                Ok(db) => db,
                Err(e) => {
                    o.error = Some(format!("{e:#}"));
                    break;
                }
            };
            out!(
                "== flow steps on {}, run {round}/{}: {}",
                o.backend,
                args.repeat,
                db.label
            );
            let r = steps_measure(args, &db.store, o.backend).await;
            db.remove().await;
            match r {
                Ok(run) => o.runs.push(run),
                Err(e) => {
                    out!("{}: error: {e:#}", o.backend);
                    o.error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        outcomes.push(o);
    }
    outcomes
}

async fn steps_measure(args: &StepsArgs, store: &DynStore, name: &str) -> anyhow::Result<StepsRun> {
    let n = args.contacts;
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Flow steps benchmark").await?.id;
    let channel = telegram_channel(store, ws, &secret, "4343:BENCHstepstoken").await?;
    let started = Instant::now();
    let contacts = common::subscribed_contacts(
        store,
        ws,
        channel,
        (0..n).map(|i| (20_000_000 + i).to_string()),
    )
    .await?;
    out!(
        "{name}: {n} subscribed contacts imported in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Messaging is never started: the runner only needs its channel lookup, and sends
    // stay queued.
    let messaging = Messaging::new(
        store.clone(),
        secret,
        MessagingConfig {
            telegram_api_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        },
    );
    let flows = Flows::new(messaging.clone(), FlowsConfig::default());
    let flow = publish(&flows, ws, "Bench steps", STEPS_FLOW).await?;

    let started = Instant::now();
    let mut emitted = futures::stream::iter(contacts)
        .map(|contact| {
            let store = store.clone();
            async move {
                store
                    .emit_signal(
                        ws,
                        NewSignal {
                            contact_id: contact,
                            channel_id: None,
                            kind: "event".into(),
                            data: json!({"name": "bench", "data": {}}),
                        },
                    )
                    .await
            }
        })
        .buffer_unordered(64);
    while let Some(r) = emitted.next().await {
        r.context("cannot store a signal")?;
    }
    drop(emitted);
    let secs = started.elapsed().as_secs_f64();
    out!(
        "{name}: {n} signals stored in {secs:.2} s ({:.0}/s; not part of the timing)",
        n as f64 / secs
    );

    let limit = Duration::from_secs_f64((n as f64 / 200.0).max(120.0));
    let cpu_before = cpu_sample();
    let started = Instant::now();
    flows.start().await.context("cannot start the flows")?;
    let mut last_print = Instant::now();
    let counts = loop {
        let counts = store.run_counts(ws, flow).await?;
        let ended: u64 = counts
            .iter()
            .filter(|(s, _)| !s.is_live())
            .map(|(_, c)| *c)
            .sum();
        if ended >= n {
            break counts;
        }
        if started.elapsed() > limit {
            flows.stop();
            bail!("only {ended} of {n} runs ended after {limit:?}: {counts:?}");
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            out!(
                "{name}: {:.0} s: {ended} runs ended",
                started.elapsed().as_secs_f64()
            );
        }
        let pause = if ended * 10 >= n * 9 { 10 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_use(&cpu_before, &cpu_sample());
    flows.stop();

    let get = |s: RunStatus| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, c)| *c);
    if get(RunStatus::Stopped) + get(RunStatus::Done) != n {
        bail!("not every run went through to its stop step: {counts:?}");
    }
    let outbox = store.outbox_counts(None).await?;
    let queued = outbox
        .iter()
        .find(|(s, _)| *s == OutboxState::Queued)
        .map_or(0, |(_, c)| *c);
    let tagged = store
        .count_contacts(
            ws,
            &ContactFilter {
                tags: vec![DONE_TAG.into()],
                ..ContactFilter::default()
            },
        )
        .await?;
    if queued != n || tagged != n {
        bail!("expected {n} queued messages and {n} contacts tagged {DONE_TAG}, found {queued} and {tagged}");
    }
    out!(
        "{name}: {n} runs ({} steps) in {secs:.2} s = {:.0} steps/s; {queued} messages queued, {tagged} contacts tagged; {}",
        n * STEPS_PER_RUN,
        (n * STEPS_PER_RUN) as f64 / secs,
        cpu.describe(secs)
    );
    Ok(StepsRun { secs, cpu })
}

// ------------------------------------------------------------------------------------
// bench flows waiting

/// A fresh database the measuring process can open by URL.
struct WaitDb {
    url: String,
    label: String,
    cleanup: WaitCleanup,
}

enum WaitCleanup {
    Dir(PathBuf),
    Schema { pg_url: String, schema: String },
}

impl WaitDb {
    /// A migrated database and a store open on it.
    async fn fresh(backend: BackendChoice, pg_url: &str) -> anyhow::Result<(WaitDb, DynStore)> {
        let stamp = format!(
            "{}_{}",
            std::process::id(),
            jiff::Timestamp::now().as_microsecond()
        );
        if backend == BackendChoice::Postgres {
            let schema = format!("bench_{stamp}");
            let store = voronka_store::postgres::PgStore::connect_in_schema(pg_url, &schema)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {pg_url}"))?;
            let store: DynStore = Arc::new(store);
            let sep = if pg_url.contains('?') { '&' } else { '?' };
            let db = WaitDb {
                url: format!("{pg_url}{sep}options=-csearch_path%3D{schema}"),
                label: format!("{pg_url} schema {schema}"),
                cleanup: WaitCleanup::Schema {
                    pg_url: pg_url.to_string(),
                    schema,
                },
            };
            if let Err(e) = store.migrate().await {
                drop(store);
                db.remove().await;
                bail!("cannot migrate PostgreSQL: {e}");
            }
            Ok((db, store))
        } else {
            let dir = std::env::temp_dir().join(format!("voronka-bench-{stamp}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("bench.db");
            let url = format!("sqlite://{}", path.display());
            let db = WaitDb {
                url: url.clone(),
                label: path.display().to_string(),
                cleanup: WaitCleanup::Dir(dir),
            };
            match voronka_store::connect_and_migrate(&url).await {
                Ok(store) => Ok((db, store)),
                Err(e) => {
                    db.remove().await;
                    bail!("cannot open SQLite: {e}");
                }
            }
        }
    }

    async fn remove(self) {
        match self.cleanup {
            WaitCleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            WaitCleanup::Schema { pg_url, schema } => {
                if let Err(e) = super::drop_schema(&pg_url, &schema).await {
                    out!("postgres: could not drop schema {schema}: {e:#}");
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct WaitingOutcome {
    backend: &'static str,
    import_secs: Option<f64>,
    runs_secs: Option<f64>,
    seeding_peak_mb: Option<f64>,
    peak_mb: Option<f64>,
    rss_mb: Option<f64>,
    error: Option<String>,
}

async fn waiting(args: WaitingArgs) -> anyhow::Result<ExitCode> {
    if args.contacts == 0 || args.seed_concurrency == 0 {
        bail!("--contacts and --seed-concurrency must be at least 1");
    }
    // The channel's poller talks to this fake for the whole measurement.
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .context("cannot start the fake Telegram")?;
    fake.add_bot(WAIT_TOKEN, "bench_waiting_bot");
    out!("machine: {}", machine());
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut out = WaitingOutcome {
            backend: common::name(backend),
            ..WaitingOutcome::default()
        };
        if let Err(e) = waiting_one(&mut out, &args, backend, &fake).await {
            out!("{}: error: {e:#}", out.backend);
            out.error = Some(format!("{e:#}"));
        }
        outcomes.push(out);
    }
    fake.shutdown();

    let n = args.contacts;
    out!("");
    out!("summary: {n} contacts, each with a run waiting in a 1-day delay");
    for o in &outcomes {
        let b = o.backend;
        if let (Some(i), Some(r)) = (o.import_secs, o.runs_secs) {
            out!(
                "{b} seeding                 contacts {i:.1} s ({:.0}/s), runs {r:.1} s ({:.0}/s); seeding process peak RSS {:.1} MB (not the measured process)",
                n as f64 / i,
                n as f64 / r,
                o.seeding_peak_mb.unwrap_or(f64::NAN)
            );
        }
        match (o.peak_mb, o.rss_mb) {
            (Some(peak), Some(rss)) => {
                out!(
                    "{b} measuring process       messaging + flows runtimes started, idle {} s",
                    args.idle_secs
                );
                out!(
                    "{b} peak RSS (VmHWM)        {peak:.1} MB   target <= {TARGET_WAITING_RSS_MB:.0} MB   {}",
                    verdict(peak <= TARGET_WAITING_RSS_MB)
                );
                out!(
                    "{b} RSS at the end (VmRSS)  {rss:.1} MB   target <= {TARGET_WAITING_RSS_MB:.0} MB   {}",
                    verdict(rss <= TARGET_WAITING_RSS_MB)
                );
            }
            _ => out!("{b} RSS                     not measured"),
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

async fn waiting_one(
    out: &mut WaitingOutcome,
    args: &WaitingArgs,
    backend: BackendChoice,
    fake: &FakeTelegram,
) -> anyhow::Result<()> {
    let (db, store) = WaitDb::fresh(backend, &args.pg_url).await?;
    out!("== flows waiting on {}: {}", out.backend, db.label);
    let secret = SecretKey::generate();
    let seeded = seed_waiting(out, args, &store, &secret).await;
    // The measuring process must find the database as a server would: nobody else
    // writing, every connection closed.
    drop(store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = match seeded {
        Ok(()) => measure_child(out, args, &db.url, &secret, fake).await,
        Err(e) => Err(e),
    };
    db.remove().await;
    result
}

async fn seed_waiting(
    out: &mut WaitingOutcome,
    args: &WaitingArgs,
    store: &DynStore,
    secret: &SecretKey,
) -> anyhow::Result<()> {
    let name = out.backend;
    let n = args.contacts;
    let ws = store.create_workspace("Flow waiting benchmark").await?.id;
    let channel = telegram_channel(store, ws, secret, WAIT_TOKEN).await?;
    let started = Instant::now();
    let contacts = common::subscribed_contacts(
        store,
        ws,
        channel,
        (0..n).map(|i| (30_000_000 + i).to_string()),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    out.import_secs = Some(secs);
    out!(
        "{name}: {n} subscribed contacts imported in {secs:.1} s ({:.0}/s)",
        n as f64 / secs
    );

    // Published through the store: no runtime exists in this process.
    let doc = parse(WAITING_FLOW, Format::Yaml).map_err(|p| anyhow::anyhow!("{}", p.message))?;
    let problems = validate(&doc, &Catalog::default());
    if let Some(p) = problems.first() {
        bail!("the benchmark flow is invalid: {}", p.message);
    }
    let doc = serde_json::to_value(&doc)?;
    let flow = store.create_flow(ws, "Bench waiting", doc.clone()).await?;
    let version = store.publish_flow(ws, flow.id, doc).await?.version;

    // Each run as the runner commits it when the `later` event starts the flow: the run
    // waiting at `hold`, and the contact's flow_started event. Step counters are left
    // out: a million increments of one row would only slow the seeding down.
    let due = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .context("a day from now is out of range")?;
    let commit = |contact: ContactId| FlowCommit {
        contact_id: contact,
        runs: vec![RunWrite::Insert(NewRun {
            flow_id: flow.id,
            version,
            channel_id: Some(channel),
            state: RunState {
                status: RunStatus::Waiting,
                step_id: "hold".into(),
                wait: Some(WaitKind::Delay),
                due_at: Some(due),
                attempts: 0,
                vars: json!({"trigger": {}}),
                error: None,
            },
            trigger: "event:later".into(),
        })],
        events: vec![(
            EventKind::FlowStarted,
            json!({"flow_id": flow.id, "version": version, "trigger": "event:later"}),
        )],
        ..FlowCommit::default()
    };
    let started = Instant::now();
    let step = (n / 10).max(1);
    let mut done = 0u64;
    let mut commits = futures::stream::iter(contacts)
        .map(|contact| {
            let store = store.clone();
            let c = commit(contact);
            async move { store.commit_flow(ws, c).await }
        })
        .buffer_unordered(args.seed_concurrency);
    while let Some(r) = commits.next().await {
        r.context("cannot write a waiting run")?;
        done += 1;
        if done.is_multiple_of(step) {
            out!(
                "{name}: {done}/{n} runs written ({:.0}/s)",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    drop(commits);
    let secs = started.elapsed().as_secs_f64();
    out.runs_secs = Some(secs);
    let counts = store.run_counts(ws, flow.id).await?;
    let waiting = counts
        .iter()
        .find(|(s, _)| *s == RunStatus::Waiting)
        .map_or(0, |(_, c)| *c);
    if waiting != n {
        bail!("expected {n} waiting runs, the store counts {counts:?}");
    }
    out.seeding_peak_mb = vm_mb("VmHWM");
    out!(
        "{name}: {n} waiting runs written in {secs:.1} s ({:.0}/s); this process's peak RSS {:.1} MB",
        n as f64 / secs,
        out.seeding_peak_mb.unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Runs this binary with `--measure-only` on the database and reads its figures.
async fn measure_child(
    out: &mut WaitingOutcome,
    args: &WaitingArgs,
    url: &str,
    secret: &SecretKey,
    fake: &FakeTelegram,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the voronka executable")?;
    out!(
        "{}: starting a fresh process on the database (idle {} s)",
        out.backend,
        args.idle_secs
    );
    let output = tokio::process::Command::new(exe)
        .args(["bench", "flows", "waiting", "--measure-only", "--database"])
        .arg(url)
        .arg("--telegram-api-url")
        .arg(fake.api_url())
        .arg("--idle-secs")
        .arg(args.idle_secs.to_string())
        .env_remove("VORONKA_CONFIG")
        .env_remove("RUST_LOG")
        .env(SECRET_ENV, secret.to_base64())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run the measuring process")?;
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        if let Some(figures) = line.strip_prefix("figures:") {
            for kv in figures.split_whitespace() {
                match kv.split_once('=') {
                    Some(("peak_mb", v)) => out.peak_mb = v.parse().ok(),
                    Some(("rss_mb", v)) => out.rss_mb = v.parse().ok(),
                    _ => {}
                }
            }
        } else {
            out!("  measuring process: {line}");
        }
    }
    if !output.status.success() {
        bail!("the measuring process failed ({})", output.status);
    }
    if out.peak_mb.is_none() || out.rss_mb.is_none() {
        bail!("the measuring process printed no figures");
    }
    Ok(())
}

/// The hidden `--measure-only` half: open, start, idle, report.
async fn measure_only(args: WaitingArgs) -> anyhow::Result<ExitCode> {
    let url = args.database.context("--measure-only needs --database")?;
    let api = args
        .telegram_api_url
        .context("--measure-only needs --telegram-api-url")?;
    let key = std::env::var(SECRET_ENV).with_context(|| format!("{SECRET_ENV} is not set"))?;
    let secret = SecretKey::from_base64(&key)?;
    out!(
        "at start: RSS {:.1} MB",
        common::own_rss_mb().unwrap_or(f64::NAN)
    );
    let started = Instant::now();
    let store = voronka_store::connect(&url)
        .await
        .context("cannot open the database")?;
    let messaging = Messaging::new(
        store.clone(),
        secret,
        MessagingConfig {
            telegram_api_url: api,
            poll_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    messaging.start().await.context("cannot start messaging")?;
    let flows = Flows::new(messaging.clone(), FlowsConfig::default());
    flows.start().await.context("cannot start the flows")?;
    out!(
        "messaging and flows runtimes started in {:.2} s; RSS {:.1} MB",
        started.elapsed().as_secs_f64(),
        common::own_rss_mb().unwrap_or(f64::NAN)
    );
    let mut samples = Vec::new();
    for s in 1..=args.idle_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s == 1 || s % 5 == 0 || s == args.idle_secs {
            samples.push(format!(
                "{s} s {:.1} MB",
                common::own_rss_mb().unwrap_or(f64::NAN)
            ));
        }
    }
    let peak = vm_mb("VmHWM");
    let rss = vm_mb("VmRSS");
    out!("RSS while idle: {}", samples.join(", "));
    // Checked only after the memory is read: counting a million rows is not idling.
    let mut waiting = 0;
    for (flow, _) in store.published_flows().await? {
        waiting += store
            .run_counts(flow.workspace_id, flow.id)
            .await?
            .iter()
            .find(|(s, _)| *s == RunStatus::Waiting)
            .map_or(0, |(_, c)| *c);
    }
    let next = store.next_due().await?;
    let next_h = next.map(|t| t.duration_since(jiff::Timestamp::now()).as_secs_f64() / 3600.0);
    out!(
        "the store holds {waiting} waiting runs; the timer worker's next wake-up is {}",
        next_h.map_or("none".to_string(), |h| format!("in {h:.1} h"))
    );
    flows.stop();
    messaging.stop();
    let (Some(peak), Some(rss)) = (peak, rss) else {
        bail!("cannot read this process's memory from /proc/self/status");
    };
    out!("figures: peak_mb={peak:.1} rss_mb={rss:.1}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_name_and_cpu_seconds() {
        let line = "4242 (sqlite (w) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        let (name, secs) = stat_cpu(line).expect("parses");
        assert_eq!(name, "sqlite (w) x");
        assert!((secs - 3.0).abs() < 1e-9, "{secs}");
    }

    #[test]
    fn both_benchmark_flows_are_valid() {
        for yaml in [STEPS_FLOW, WAITING_FLOW] {
            let doc = parse(yaml, Format::Yaml).expect("parses");
            assert_eq!(validate(&doc, &Catalog::default()), vec![]);
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
