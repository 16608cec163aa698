//! Fresh databases for tests, on either backend.
//!
//! PostgreSQL tests need a server: `VORONKA_TEST_PG_URL` (default
//! `postgres://127.0.0.1:5432/test`). When none answers, [`fresh_store`] prints why and
//! returns `None` so the test can skip — unless `CI=true` or `VORONKA_REQUIRE_PG=1`, where
//! a missing PostgreSQL fails the test instead of hiding it.

use crate::DynStore;
use std::sync::Arc;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A new SQLite file in a temporary directory.
    Sqlite,
    /// A new schema in the test PostgreSQL database.
    Postgres,
}

/// A migrated, empty store and whatever keeps it alive (the temporary directory).
pub struct TestStore {
    /// The store.
    pub store: DynStore,
    /// The URL that opens the same database (for starting a server process on it).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL tests use.
pub fn pg_url() -> String {
    std::env::var("VORONKA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".to_string())
}

/// True when PostgreSQL tests must run rather than skip.
pub fn pg_required() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
        || std::env::var("VORONKA_REQUIRE_PG")
            .map(|v| v == "1")
            .unwrap_or(false)
}

/// Opens a fresh migrated store on `backend`, or `None` (after printing the reason) when
/// PostgreSQL is not reachable and not required.
pub async fn fresh_store(backend: Backend) -> Option<TestStore> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let path = dir.path().join("voronka.db");
            let store = crate::sqlite::SqliteStore::open(&path)
                .await
                .expect("open sqlite");
            let store: DynStore = Arc::new(store);
            store.migrate().await.expect("migrate sqlite");
            Some(TestStore {
                store,
                url: format!("sqlite://{}", path.display()),
                _dir: Some(dir),
            })
        }
        Backend::Postgres => {
            let url = pg_url();
            let schema = format!("t_{}", random_suffix());
            match crate::postgres::PgStore::connect_in_schema(&url, &schema).await {
                Ok(store) => {
                    CLEANED.get_or_init(|| drop_stale_schemas(&store)).await;
                    let store: DynStore = Arc::new(store);
                    store.migrate().await.expect("migrate postgres");
                    let sep = if url.contains('?') { '&' } else { '?' };
                    Some(TestStore {
                        store,
                        url: format!("{url}{sep}options=-csearch_path%3D{schema}"),
                        _dir: None,
                    })
                }
                Err(e) if !pg_required() => {
                    // Written straight to stderr (not eprintln!, which the test harness
                    // captures for passing tests) so a skip is seen, once per test binary.
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        use std::io::Write;
                        let _ = writeln!(
                            std::io::stderr(),
                            "skipped: PostgreSQL tests of this binary: {url} is not reachable ({e}); \
                             set VORONKA_TEST_PG_URL, or CI=true / VORONKA_REQUIRE_PG=1 to require it"
                        );
                    });
                    None
                }
                Err(e) => panic!("PostgreSQL is required (CI=true or VORONKA_REQUIRE_PG=1) but {url} failed: {e}"),
            }
        }
    }
}

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops test schemas left by runs more than two hours old (schema names carry their
/// creation time), so a long-lived test server does not fill up; recent ones may belong
/// to a run in progress and stay.
async fn drop_stale_schemas(store: &crate::postgres::PgStore) {
    use sqlx::Row;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let horizon = now.saturating_sub(2 * 3600 * 1_000_000_000);
    let rows = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
    for row in rows {
        let Ok(name) = row.try_get::<String, _>(0) else {
            continue;
        };
        let created = name
            .strip_prefix("t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|hex| u128::from_str_radix(hex, 16).ok());
        if created.is_some_and(|t| t < horizon) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(store.pool())
                .await;
        }
    }
}

fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}_{}_{n}", t, std::process::id())
}
