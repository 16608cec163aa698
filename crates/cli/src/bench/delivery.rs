//! `bench delivery`: how close the outbox gets to the providers' rate limits.
//!
//! A fake Telegram runs in a child process (so this process's memory is the server's
//! alone) and enforces 30 messages/s per bot and 1/s per chat. Every subscriber of every
//! bot gets one marketing message, queued before the runtime starts; then the runtime
//! sends them and we time it.

use super::common::{self, own_rss_mb, verdict, Db};
use super::BackendChoice;
use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_engine::messaging::telegram::Credentials;
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_store::{NewChannel, NewOutbound, OutboxState};

/// Per-bot send rate the fake allows (messages per second).
const BOT_RATE: f64 = 30.0;
/// Target share of the allowed rate.
const TARGET_RATIO: f64 = 0.97;
/// Target resident memory of the sending process (MB).
const TARGET_RSS_MB: f64 = 200.0;
/// First user id of the generated subscribers.
const FIRST_USER: i64 = 10_000_000;

/// Arguments of `bench delivery`.
#[derive(Debug, Args)]
pub struct DeliveryBench {
    /// Number of Telegram bots (channels).
    #[arg(long, default_value_t = 100)]
    bots: u32,
    /// Subscribers per bot; each gets one message.
    #[arg(long, default_value_t = 1_000)]
    subscribers: u32,
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Sqlite)]
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
    messages: u64,
    elapsed: Option<f64>,
    first_sent_after: Option<f64>,
    sent: u64,
    failed: u64,
    rate_limited: Option<u64>,
    max_rss_mb: f64,
    error: Option<String>,
}

/// Runs `bench delivery`.
pub async fn run(args: DeliveryBench) -> anyhow::Result<ExitCode> {
    if args.bots == 0 || args.subscribers == 0 {
        bail!("--bots and --subscribers must be at least 1");
    }
    let mut outcomes = Vec::new();
    for backend in common::backends(args.backend) {
        let mut out = Outcome {
            backend: common::name(backend),
            messages: u64::from(args.bots) * u64::from(args.subscribers),
            ..Outcome::default()
        };
        if let Err(e) = measure(&mut out, &args, backend).await {
            out!("{}: error: {e:#}", out.backend);
            out.error = Some(format!("{e:#}"));
        }
        outcomes.push(out);
    }
    let allowed = f64::from(args.bots) * BOT_RATE;
    out!("");
    out!(
        "summary: {} bots x {} subscribers; fake Telegram allows {BOT_RATE}/s per bot, 1/s per chat",
        args.bots,
        args.subscribers
    );
    out!("(elapsed is from Messaging::start() until the store shows every message sent or failed)");
    for o in &outcomes {
        let b = o.backend;
        out!("{b} messages                 {}", o.messages);
        out!("{b} sent / failed            {} / {}", o.sent, o.failed);
        match o.elapsed {
            Some(secs) => {
                let rate = o.sent as f64 / secs;
                let ratio = rate / allowed;
                out!(
                    "{b} elapsed                  {secs:.2} s (first send seen after {:.2} s)",
                    o.first_sent_after.unwrap_or(f64::NAN)
                );
                out!("{b} achieved rate            {rate:.0} msg/s");
                out!(
                    "{b} allowed rate             {allowed:.0} msg/s ({} bots x {BOT_RATE}/s)",
                    args.bots
                );
                out!(
                    "{b} achieved / allowed       {ratio:.3}   target >= {TARGET_RATIO}   {}",
                    verdict(ratio >= TARGET_RATIO)
                );
            }
            None => out!("{b} elapsed                  not measured"),
        }
        match o.rate_limited {
            Some(n) => out!(
                "{b} 429s received            {n}   target 0   {}",
                verdict(n == 0)
            ),
            None => out!("{b} 429s received            not measured"),
        }
        out!(
            "{b} failed                   {}   target 0   {}",
            o.failed,
            verdict(o.failed == 0)
        );
        out!(
            "{b} max RSS (this process)   {:.1} MB   target <= {TARGET_RSS_MB:.0} MB   {}",
            o.max_rss_mb,
            verdict(o.max_rss_mb <= TARGET_RSS_MB)
        );
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

/// The fake Telegram in a child process; killed when dropped.
pub(super) struct FakeChild {
    pub child: tokio::process::Child,
    pub url: String,
}

impl FakeChild {
    /// Starts `voronka fake telegram` on a free port and waits until it answers.
    pub async fn spawn(http: &reqwest::Client) -> anyhow::Result<FakeChild> {
        let port = common::free_port()?;
        let exe = std::env::current_exe().context("cannot find the voronka executable")?;
        let child = tokio::process::Command::new(exe)
            .args(["fake", "telegram", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("VORONKA_CONFIG")
            .env_remove("RUST_LOG")
            .env("VORONKA_LOG_LEVEL", "error")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `voronka fake telegram`")?;
        let url = format!("http://127.0.0.1:{port}");
        common::wait_ready(http, &format!("{url}/_fake/stats"), Duration::from_secs(30)).await?;
        Ok(FakeChild { child, url })
    }

    /// POSTs JSON to the fake's control API.
    pub async fn post(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let r = http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path} answered {status}: {v}");
        }
        Ok(v)
    }

    /// The fake's counters.
    pub async fn stats(&self, http: &reqwest::Client) -> anyhow::Result<Value> {
        Ok(http
            .get(format!("{}/_fake/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Stops it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn measure(
    out: &mut Outcome,
    args: &DeliveryBench,
    backend: BackendChoice,
) -> anyhow::Result<()> {
    let name = out.backend;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let fake = FakeChild::spawn(&http).await?;
    let db = Db::fresh(backend, &args.pg_url).await?;
    out!(
        "== delivery on {name}: {}; fake Telegram at {} (pid {})",
        db.label,
        fake.url,
        fake.child.id().unwrap_or(0)
    );
    let result = measure_inner(out, args, &db, &fake, &http).await;
    fake.kill().await;
    db.remove().await;
    result
}

async fn measure_inner(
    out: &mut Outcome,
    args: &DeliveryBench,
    db: &Db,
    fake: &FakeChild,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let name = out.backend;
    let store = db.store.clone();
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Delivery benchmark").await?.id;
    let subs = i64::from(args.subscribers);
    let started = Instant::now();
    let mut targets = Vec::with_capacity(out.messages as usize);
    for i in 0..args.bots {
        let token = format!("{}:BENCHtoken{i:0>10}", 1000 + i);
        fake.post(
            http,
            "/_fake/bots",
            json!({"token": token, "username": format!("bench_{i}_bot")}),
        )
        .await?;
        let first = FIRST_USER + i64::from(i) * subs;
        fake.post(
            http,
            &format!("/_fake/bots/{}/open_range", 1000 + i),
            json!({"from": first, "count": args.subscribers}),
        )
        .await?;
        let creds = Credentials {
            token,
            webhook_secret: format!("bench-secret-{i}"),
        };
        let channel = store
            .create_channel(
                ws,
                NewChannel {
                    kind: ChannelKind::Telegram,
                    name: format!("Bench bot {i}"),
                    credentials: creds.seal(&secret),
                    settings: Default::default(),
                },
            )
            .await?;
        let contacts = common::subscribed_contacts(
            &store,
            ws,
            channel.id,
            (first..first + subs).map(|u| u.to_string()),
        )
        .await?;
        targets.extend(contacts.into_iter().map(|c| (c, channel.id)));
    }
    out!(
        "{name}: {} bots, {} subscribed contacts and chats set up in {:.1} s",
        args.bots,
        targets.len(),
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let total = targets.len();
    let step = (total / 10).max(1);
    let mut queued = 0usize;
    let mut rss = own_rss_mb().unwrap_or(0.0);
    let mut results = futures::stream::iter(targets.into_iter().enumerate())
        .map(|(n, (contact, channel))| {
            let store = store.clone();
            async move {
                store
                    .enqueue_message(
                        ws,
                        contact,
                        NewOutbound {
                            channel_id: channel,
                            purpose: Purpose::Marketing,
                            message: OutboundMessage {
                                text: Some(format!(
                                    "Spring sale, message {n}: everything -20% until Sunday."
                                )),
                                ..Default::default()
                            },
                            source: "bench".into(),
                            run_at: None,
                        },
                    )
                    .await
            }
        })
        .buffer_unordered(64);
    while let Some(r) = results.next().await {
        r.context("cannot queue a message")?;
        queued += 1;
        if queued.is_multiple_of(step) {
            rss = rss.max(own_rss_mb().unwrap_or(0.0));
            out!("{name}: queued {queued}/{total}");
        }
    }
    drop(results);
    out!(
        "{name}: queued {total} messages in {:.1} s ({:.0}/s); RSS so far {rss:.1} MB",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );

    // Memory from here on is what sending costs.
    let config = MessagingConfig {
        telegram_api_url: fake.url.clone(),
        public_url: None,
        poll_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let messaging = Messaging::new(store.clone(), secret, config);
    let ideal = total as f64 / (f64::from(args.bots) * BOT_RATE);
    let limit = Duration::from_secs_f64((ideal * 3.0).max(120.0));
    let started = Instant::now();
    messaging.start().await.context("cannot start messaging")?;
    let mut max_rss = own_rss_mb().unwrap_or(0.0);
    let mut first_sent = None;
    let mut last_print = Instant::now();
    let (sent, failed) = loop {
        let counts = store.outbox_counts(None).await?;
        let get = |s: OutboxState| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
        let (sent, failed) = (get(OutboxState::Sent), get(OutboxState::Failed));
        max_rss = max_rss.max(own_rss_mb().unwrap_or(0.0));
        if first_sent.is_none() && sent > 0 {
            first_sent = Some(started.elapsed());
        }
        if sent + failed >= total as u64 {
            break (sent, failed);
        }
        if started.elapsed() > limit {
            messaging.stop();
            bail!("only {sent} sent and {failed} failed of {total} after {limit:?}");
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            out!(
                "{name}: {:.0} s: sent {sent}, failed {failed}, RSS {max_rss:.1} MB max",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    messaging.stop();
    out.elapsed = Some(elapsed);
    out.first_sent_after = first_sent.map(|d| d.as_secs_f64());
    out.sent = sent;
    out.failed = failed;
    out.max_rss_mb = max_rss;
    let stats = fake.stats(http).await?;
    out.rate_limited = stats.get("rate_limited_429").and_then(Value::as_u64);
    out!(
        "{name}: done in {elapsed:.2} s; the fake counted {} messages, {} refused with 429",
        stats
            .get("sent_messages")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        out.rate_limited.unwrap_or(0)
    );
    Ok(())
}
