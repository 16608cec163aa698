//! The SQLite implementation (embedded default).

/// Storage on one SQLite file.
pub struct SqliteStore {}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(_path: &std::path::Path) -> crate::Result<Self> {
        Err(crate::StoreError::Database("not yet implemented".into()))
    }
}
crate::stub_store!(SqliteStore);
