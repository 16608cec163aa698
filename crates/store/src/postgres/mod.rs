//! The PostgreSQL implementation (scale-out).

/// Storage on a PostgreSQL database.
pub struct PgStore {}

impl PgStore {
    /// Connects to `url`.
    pub async fn connect(_url: &str) -> crate::Result<Self> {
        Err(crate::StoreError::Database("not yet implemented".into()))
    }

    /// Connects to `url` with every query in `schema` (created if missing): how tests get
    /// a fresh database cheaply.
    pub async fn connect_in_schema(_url: &str, _schema: &str) -> crate::Result<Self> {
        Err(crate::StoreError::Database("not yet implemented".into()))
    }
}
crate::stub_store!(PgStore);
