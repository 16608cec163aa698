//! What the kill-and-restart tests share: a `voronka serve` child process and seeding
//! subscribed Telegram contacts spread over many bots.

#![allow(dead_code)] // each test uses its own subset

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use voronka_core::channel::ChannelKind;
use voronka_core::crypto::SecretKey;
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_engine::messaging::telegram::Credentials;
use voronka_store::{DynStore, ImportRow, NewChannel};

/// A `voronka serve` child, killed hard when dropped.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `voronka serve` on a free port against `db_url`, logging to
    /// `server-<run>.log` in `dir`; the outbox lease is 2 s so sends in flight at a kill
    /// are retried soon after a restart.
    pub fn start(
        dir: &Path,
        db_url: &str,
        key: &SecretKey,
        api: &str,
        run: u32,
        poll_timeout_secs: u32,
    ) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(dir.join(format!("server-{run}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_voronka"))
            .arg("serve")
            .current_dir(dir)
            .env_remove("VORONKA_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("VORONKA_PUBLIC_URL")
            .env("VORONKA_DATABASE_URL", db_url)
            .env("VORONKA_LISTEN", format!("127.0.0.1:{port}"))
            .env("VORONKA_SECRET_KEY", key.to_base64())
            .env("VORONKA_TELEGRAM_API_URL", api)
            .env("VORONKA_OUTBOX_LEASE_SECS", "2")
            .env(
                "VORONKA_TELEGRAM_POLL_TIMEOUT_SECS",
                poll_timeout_secs.to_string(),
            )
            .env("VORONKA_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start voronka serve");
        Server { child, port }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, dir: &Path, run: u32) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready in 30 s; log: {}",
                server_log(dir, run)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a server run logged.
pub fn server_log(dir: &Path, run: u32) -> String {
    std::fs::read_to_string(dir.join(format!("server-{run}.log"))).unwrap_or_default()
}

/// The count of `state` in a list of (state, count) pairs.
pub fn count<S: PartialEq + Copy>(counts: &[(S, u64)], state: S) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

/// `(bots, per_bot)`: that many Telegram channels (tokens from `token`) with that many
/// subscribed contacts each (chat ids from `user`), imported with a consent proof;
/// answers the contacts with their channels, bot by bot.
pub async fn subscribed_contacts(
    store: &DynStore,
    key: &SecretKey,
    ws: WorkspaceId,
    label: &str,
    (bots, per_bot): (u32, u32),
    token: impl Fn(u32) -> String,
    user: impl Fn(u32, u32) -> i64,
) -> Vec<(ContactId, ChannelId)> {
    let now = jiff::Timestamp::now();
    let change = SubscriptionChange::new(
        SubscriptionState::Subscribed,
        vec![],
        Some(ConsentProof {
            source: format!("import:{label}"),
            at: now,
            text_shown: None,
            ip: None,
            message_id: None,
        }),
        now,
    )
    .expect("subscription");
    let mut contacts = Vec::new();
    for b in 0..bots {
        let creds = Credentials {
            token: token(b),
            webhook_secret: format!("{label}-secret-{b}"),
        };
        let channel = store
            .create_channel(
                ws,
                NewChannel {
                    kind: ChannelKind::Telegram,
                    name: format!("{label} bot {b}"),
                    credentials: creds.seal(key),
                    settings: Default::default(),
                },
            )
            .await
            .expect("channel");
        let rows = (0..per_bot)
            .map(|i| ImportRow {
                line: u64::from(i) + 1,
                profile: Default::default(),
                source: Some(label.to_string()),
                identity: Some((channel.id, user(b, i).to_string())),
                subscription: Some(change.clone()),
                tags: vec![],
                fields: vec![],
            })
            .collect();
        for o in store.import_contacts(ws, rows).await.expect("import") {
            contacts.push((o.result.expect("imported row").0, channel.id));
        }
    }
    contacts
}
