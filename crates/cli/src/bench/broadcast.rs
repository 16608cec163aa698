//! `bench broadcast`: a broadcast to a million contacts through the real server.
//!
//! The setup is what a large workspace looks like: N contacts subscribed on 100 Telegram
//! bots (a fake Telegram in a child process enforcing 30 messages/s per bot and 1/s per
//! chat). A `voronka serve` child is started on that database and driven over HTTP only:
//! the broadcast is created and sent through the API, planning time is read from the
//! broadcast's own timestamps, the sending rate from its report, and all the while a
//! prober makes ordinary API requests (contact list, contact card, a tag write, the
//! report) and records their latency. After `--send` messages went out the broadcast is
//! cancelled: sending the whole million at 3,000/s would only repeat the same minute.

use super::common::{self, verdict, Db};
use super::delivery::FakeChild;
use super::BackendChoice;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::role::Scope;
use voronka_engine::messaging::telegram::Credentials;
use voronka_store::{NewApiKey, NewChannel, WorkspaceSettings};

/// Per-bot send rate the fake allows (messages per second).
const BOT_RATE: f64 = 30.0;
/// Targets.
const TARGET_PLAN_SECS: f64 = 10.0;
const TARGET_RATIO: f64 = 0.97;
const TARGET_P99_MS: f64 = 50.0;
/// First Telegram user id of the generated subscribers.
const FIRST_USER: i64 = 20_000_000;

/// Arguments of `bench broadcast`.
#[derive(Debug, Args)]
pub struct BroadcastBench {
    /// Subscribed contacts (spread evenly over the bots).
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u32,
    /// Telegram bots (channels).
    #[arg(long, default_value_t = 100)]
    bots: u32,
    /// Messages to send before the broadcast is cancelled.
    #[arg(long, default_value_t = 100_000)]
    send: u64,
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
}

#[derive(Debug, Default)]
struct Outcome {
    backend: &'static str,
    planned: u64,
    plan_secs: Option<f64>,
    sent: u64,
    send_rate: Option<f64>,
    allowed_rate: f64,
    rate_limited: Option<u64>,
    api: Option<Latency>,
    error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    requests: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Runs `bench broadcast`.
pub async fn run(args: BroadcastBench) -> anyhow::Result<ExitCode> {
    if args.bots == 0 || args.contacts < args.bots || args.send == 0 {
        bail!("--bots must be at least 1, --contacts at least --bots, --send at least 1");
    }
    if args.send > u64::from(args.contacts) {
        bail!("--send cannot exceed --contacts");
    }
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut out = Outcome {
            backend: common::name(backend),
            allowed_rate: f64::from(args.bots) * BOT_RATE,
            ..Outcome::default()
        };
        if let Err(e) = measure(&mut out, &args, backend).await {
            out!("{}: FAILED: {e:#}", out.backend);
            out.error = Some(format!("{e:#}"));
        }
        outcomes.push(out);
    }
    out!("");
    out!(
        "summary: broadcast to {} contacts on {} bots; fake Telegram allows {BOT_RATE}/s per bot, 1/s per chat",
        args.contacts,
        args.bots
    );
    let mut all_ok = true;
    for o in &outcomes {
        let b = o.backend;
        if let Some(e) = &o.error {
            out!("{b} FAILED: {e}");
            all_ok = false;
            continue;
        }
        let plan_ok = o.plan_secs.is_some_and(|s| s <= TARGET_PLAN_SECS);
        let ratio = o.send_rate.map(|r| r / o.allowed_rate);
        let rate_ok = ratio.is_some_and(|r| r >= TARGET_RATIO);
        let no_429 = o.rate_limited == Some(0);
        let api_ok = o.api.is_some_and(|a| a.p99 <= TARGET_P99_MS);
        all_ok &= plan_ok && rate_ok && no_429 && api_ok;
        out!(
            "{b} planning {} recipients        {:.2} s (target ≤ {TARGET_PLAN_SECS} s)  {}",
            o.planned,
            o.plan_secs.unwrap_or(f64::NAN),
            verdict(plan_ok)
        );
        out!(
            "{b} sending {} messages          {:.0} msg/s of {:.0} allowed = {:.3} (target ≥ {TARGET_RATIO})  {}",
            o.sent,
            o.send_rate.unwrap_or(f64::NAN),
            o.allowed_rate,
            ratio.unwrap_or(f64::NAN),
            verdict(rate_ok)
        );
        out!(
            "{b} 429s from the provider         {} (target 0)  {}",
            o.rate_limited
                .map_or("unknown".to_string(), |n| n.to_string()),
            verdict(no_429)
        );
        if let Some(a) = o.api {
            out!(
                "{b} API latency meanwhile          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} requests (target p99 ≤ {TARGET_P99_MS} ms)  {}",
                a.p50,
                a.p99,
                a.max,
                a.requests,
                verdict(api_ok)
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn measure(
    out: &mut Outcome,
    args: &BroadcastBench,
    backend: BackendChoice,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let fake = FakeChild::spawn(&http).await?;
    let db = Db::fresh(backend, &args.pg_url).await?;
    out!(
        "== broadcast on {}: {}; fake Telegram at {}",
        out.backend,
        db.label,
        fake.url
    );
    let result = measure_inner(out, args, &db, &fake, &http).await;
    fake.kill().await;
    db.remove().await;
    result
}

async fn measure_inner(
    out: &mut Outcome,
    args: &BroadcastBench,
    db: &Db,
    fake: &FakeChild,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let name = out.backend;
    let store = db.store.clone();
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Broadcast benchmark").await?.id;
    // Quiet hours and the frequency cap would defer or skip recipients depending on the
    // hour the benchmark runs at; the figures are about throughput.
    store
        .set_workspace_settings(
            ws,
            WorkspaceSettings {
                quiet_from: None,
                quiet_to: None,
                frequency_cap: None,
                ..WorkspaceSettings::default()
            },
        )
        .await?;
    let per_bot = args.contacts / args.bots;
    let started = Instant::now();
    for i in 0..args.bots {
        let token = format!("{}:CASTbench{i:0>10}", 7000 + i);
        fake.post(
            http,
            "/_fake/bots",
            json!({"token": token, "username": format!("cast_{i}_bot")}),
        )
        .await?;
        let first = FIRST_USER + i64::from(i) * i64::from(per_bot);
        fake.post(
            http,
            &format!("/_fake/bots/{}/open_range", 7000 + i),
            json!({"from": first, "count": per_bot}),
        )
        .await?;
        let creds = Credentials {
            token,
            webhook_secret: format!("cast-secret-{i}"),
        };
        let channel = store
            .create_channel(
                ws,
                NewChannel {
                    kind: ChannelKind::Telegram,
                    name: format!("Cast bot {i}"),
                    credentials: creds.seal(&secret),
                    settings: Default::default(),
                },
            )
            .await?;
        common::subscribed_contacts(
            &store,
            ws,
            channel.id,
            (first..first + i64::from(per_bot)).map(|u| u.to_string()),
        )
        .await?;
        if (i + 1) % 10 == 0 {
            out!(
                "{name}: {} of {} bots with {per_bot} subscribers each set up ({:.0} s)",
                i + 1,
                args.bots,
                started.elapsed().as_secs_f64()
            );
        }
    }
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
    let port = common::free_port()?;
    let exe = std::env::current_exe().context("cannot find the voronka executable")?;
    let mut server = tokio::process::Command::new(exe)
        .arg("serve")
        .env_remove("VORONKA_CONFIG")
        .env_remove("RUST_LOG")
        .env("VORONKA_DATABASE_URL", &db.url)
        .env("VORONKA_LISTEN", format!("127.0.0.1:{port}"))
        .env("VORONKA_SECRET_KEY", secret.to_base64())
        .env("VORONKA_TELEGRAM_API_URL", &fake.url)
        .env("VORONKA_LOG_LEVEL", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start voronka serve")?;
    let base = format!("http://127.0.0.1:{port}");
    let result = drive(out, args, http, &base, &key.token, fake).await;
    let _ = server.kill().await;
    result
}

/// Sends the broadcast through the API and measures it.
async fn drive(
    out: &mut Outcome,
    args: &BroadcastBench,
    http: &reqwest::Client,
    base: &str,
    token: &str,
    fake: &FakeChild,
) -> anyhow::Result<()> {
    let name = out.backend;
    common::wait_ready(http, &format!("{base}/readyz"), Duration::from_secs(60)).await?;
    let api = Api {
        http: http.clone(),
        base: base.to_string(),
        token: token.to_string(),
    };
    let contacts = api.get("/api/v1/contacts?limit=20").await?;
    let contact_ids: Vec<i64> = contacts
        .get("data")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.get("id")?.as_i64()).collect())
        .unwrap_or_default();
    if contact_ids.is_empty() {
        bail!("the contact list is empty");
    }
    let created = api
        .post(
            "/api/v1/broadcasts",
            json!({
                "name": "Black Friday",
                "spec": {
                    "channels": "all",
                    "variants": [{"key": "A", "percent": 100, "message": {
                        "text": "Hi {{ contact.first_name | default('there') }}! Black Friday: everything -30% until Sunday.",
                        "buttons": [{"label": "Shop now", "url": "https://shop.example.com/black-friday"}]
                    }}],
                    "schedule": "now"
                }
            }),
        )
        .await?;
    let id = created
        .get("id")
        .and_then(Value::as_i64)
        .context("the created broadcast has no id")?;

    // The prober: ordinary API traffic while the broadcast plans and sends.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(api.clone(), contact_ids, id, stop.clone()));

    let sent_at = Instant::now();
    api.post(&format!("/api/v1/broadcasts/{id}/send"), json!({}))
        .await?;
    let limit =
        Duration::from_secs_f64((args.send as f64 / out.allowed_rate * 4.0).max(120.0) + 60.0);
    let mut first: Option<(Instant, u64)> = None;
    let mut last_print = Instant::now();
    let (done_at, sent) = loop {
        let report = api.get(&format!("/api/v1/broadcasts/{id}/report")).await?;
        let sent = total(&report, "sent");
        if out.plan_secs.is_none() {
            let b = api.get(&format!("/api/v1/broadcasts/{id}")).await?;
            if let (Some(start), Some(planned)) = (ts(&b, "started_at"), ts(&b, "planned_at")) {
                out.plan_secs = Some(planned.duration_since(start).as_secs_f64());
                out.planned = total(&report, "planned");
                out!(
                    "{name}: planned {} recipients in {:.2} s",
                    out.planned,
                    out.plan_secs.unwrap_or(f64::NAN)
                );
            }
        }
        if first.is_none() && sent > 0 {
            first = Some((Instant::now(), sent));
        }
        if sent >= args.send {
            break (Instant::now(), sent);
        }
        if sent_at.elapsed() > limit {
            bail!("only {sent} sent after {limit:?}; report: {report}");
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            out!(
                "{name}: {:.0} s: sent {sent}, queued {}, skipped {}",
                sent_at.elapsed().as_secs_f64(),
                total(&report, "queued"),
                total(&report, "skipped")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    api.post(&format!("/api/v1/broadcasts/{id}/cancel"), json!({}))
        .await?;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = prober.await.context("the prober panicked")??;
    let (t0, s0) = first.context("nothing was sent")?;
    let secs = done_at.duration_since(t0).as_secs_f64();
    out.sent = sent;
    out.send_rate = Some((sent - s0) as f64 / secs.max(1e-9));
    out.api = Some(percentiles(&mut latencies));
    let stats = fake.stats(http).await?;
    out.rate_limited = stats.get("rate_limited_429").and_then(Value::as_u64);
    out!(
        "{name}: {sent} sent, {:.0} msg/s from the first send; the fake refused {} with 429",
        out.send_rate.unwrap_or(f64::NAN),
        out.rate_limited.unwrap_or(0)
    );
    Ok(())
}

/// A timestamp attribute of a JSON object.
fn ts(v: &Value, key: &str) -> Option<jiff::Timestamp> {
    v.get(key)?.as_str()?.parse().ok()
}

/// A total of the report (`totals.<key>`; skipped sums its reasons).
fn total(report: &Value, key: &str) -> u64 {
    let totals = report.get("totals");
    match totals.and_then(|t| t.get(key)) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::Object(m)) => m.values().filter_map(Value::as_u64).sum(),
        _ => 0,
    }
}

/// Requests in a loop until `stop`, one at a time with a short pause: a person clicking
/// through the admin UI, and an integration writing tags.
async fn probe(
    api: Api,
    contacts: Vec<i64>,
    broadcast: i64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let contact = contacts[i % contacts.len()];
        let started = Instant::now();
        match i % 4 {
            0 => api.get("/api/v1/contacts?limit=20").await.map(drop),
            1 => api
                .get(&format!("/api/v1/contacts/{contact}"))
                .await
                .map(drop),
            2 => api
                .post(
                    &format!("/api/v1/contacts/{contact}/tags"),
                    json!({"tags": [format!("probe-{}", i % 7)]}),
                )
                .await
                .map(drop),
            _ => api
                .get(&format!("/api/v1/broadcasts/{broadcast}/report"))
                .await
                .map(drop),
        }
        .with_context(|| format!("probe request {i}"))?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(latencies)
}

fn percentiles(v: &mut [f64]) -> Latency {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() as f64 - 1.0) * q).round() as usize]
        }
    };
    Latency {
        requests: v.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// The server's API with the benchmark's key.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Self::answer("GET", path, r).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        Self::answer("POST", path, r).await
    }

    async fn answer(method: &str, path: &str, r: reqwest::Response) -> anyhow::Result<Value> {
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {v}");
        }
        Ok(v)
    }
}
