//! What the messaging benchmarks share: fresh databases, subscribed contacts, memory.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_store::{DynStore, ImportRow};

use super::BackendChoice;

/// A fresh, migrated database that [`Db::remove`] deletes again.
pub(super) struct Db {
    pub store: DynStore,
    /// What to print about it.
    pub label: String,
    /// The database URL a `voronka serve` child is given.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Schema { url: String, schema: String },
}

/// The backends a `--backend` choice stands for, in order.
pub(super) fn backends(choice: BackendChoice) -> Vec<BackendChoice> {
    match choice {
        BackendChoice::Both => vec![BackendChoice::Sqlite, BackendChoice::Postgres],
        one => vec![one],
    }
}

/// The name of a single backend.
pub(super) fn name(b: BackendChoice) -> &'static str {
    match b {
        BackendChoice::Postgres => "postgres",
        _ => "sqlite",
    }
}

impl Db {
    /// SQLite in a new temporary directory, or a new schema in the database of `pg_url`.
    pub async fn fresh(backend: BackendChoice, pg_url: &str) -> anyhow::Result<Db> {
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
            let db = Db {
                store,
                label: format!("{pg_url} schema {schema}"),
                url: format!("{pg_url}{sep}options=-csearch_path%3D{schema}"),
                cleanup: Cleanup::Schema {
                    url: pg_url.to_string(),
                    schema,
                },
            };
            db.store
                .migrate()
                .await
                .context("cannot migrate PostgreSQL")?;
            Ok(db)
        } else {
            let dir = std::env::temp_dir().join(format!("voronka-bench-{stamp}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("bench.db");
            let store = voronka_store::connect_and_migrate(&format!("sqlite://{}", path.display()))
                .await
                .context("cannot open SQLite")?;
            Ok(Db {
                store,
                label: path.display().to_string(),
                url: format!("sqlite://{}", path.display()),
                cleanup: Cleanup::Dir(dir),
            })
        }
    }

    /// Closes the store and deletes the database.
    pub async fn remove(self) {
        drop(self.store);
        match self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Schema { url, schema } => {
                if let Err(e) = super::drop_schema(&url, &schema).await {
                    out!("postgres: could not drop schema {schema}: {e:#}");
                }
            }
        }
    }
}

/// Creates one contact per external id, each with a `subscribed` identity (with proof) on
/// `channel`, through the import fast path; returns the contacts in the same order.
pub(super) async fn subscribed_contacts(
    store: &DynStore,
    ws: WorkspaceId,
    channel: ChannelId,
    external_ids: impl Iterator<Item = String>,
) -> anyhow::Result<Vec<ContactId>> {
    let now = jiff::Timestamp::now();
    let change = SubscriptionChange::new(
        SubscriptionState::Subscribed,
        vec![],
        Some(ConsentProof {
            source: "import:bench".into(),
            at: now,
            text_shown: None,
            ip: None,
            message_id: None,
        }),
        now,
    )?;
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    let flush = |rows: Vec<ImportRow>| async {
        let mut got = Vec::with_capacity(rows.len());
        for o in store.import_contacts(ws, rows).await? {
            match o.result {
                Ok((id, _)) => got.push(id),
                Err(e) => bail!("importing a benchmark contact failed: {e}"),
            }
        }
        Ok::<_, anyhow::Error>(got)
    };
    for (i, ext) in external_ids.enumerate() {
        rows.push(ImportRow {
            line: i as u64 + 1,
            profile: Default::default(),
            source: Some("bench".into()),
            identity: Some((channel, ext)),
            subscription: Some(change.clone()),
            tags: vec![],
            fields: vec![],
        });
        if rows.len() == 5_000 {
            ids.extend(flush(std::mem::take(&mut rows)).await?);
        }
    }
    if !rows.is_empty() {
        ids.extend(flush(rows).await?);
    }
    Ok(ids)
}

/// This process's resident memory in MB.
pub(super) fn own_rss_mb() -> Option<f64> {
    rss_mb("self")
}

/// The resident memory of process `pid` (a number, or `self`) in MB, from /proc.
pub(super) fn rss_mb(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(kb / 1024.0)
}

/// A port nobody listens on right now.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `GET url` answers with a success.
pub(super) async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() > deadline => bail!("{url} did not answer within {within:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `ok` or `MISSED`.
pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
