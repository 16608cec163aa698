//! Streamed CSV export of contacts, page by page, with cells that could be read as
//! spreadsheet formulas escaped.

use voronka_core::filter::ContactFilter;
use voronka_core::WorkspaceId;
use voronka_store::DynStore;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing failed (client went away, disk full).
    #[error("cannot write CSV: {0}")]
    Write(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] voronka_store::StoreError),
}

/// Writes every contact matching `filter` as CSV to `sink`, one store page at a time;
/// `sink` receives chunks of bytes (a file writer, or an HTTP body channel). Returns the
/// number of contacts written.
pub async fn export_csv(
    _store: DynStore,
    _ws: WorkspaceId,
    _filter: ContactFilter,
    _sink: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<u64, ExportError> {
    Err(ExportError::Write("not yet implemented".into()))
}
