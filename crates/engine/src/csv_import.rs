//! Streamed CSV import of contacts: parse and validate rows on a blocking thread, upsert
//! them in batches through the store, report bad rows by line while good rows import.

use serde::Serialize;
use voronka_core::{ChannelId, WorkspaceId};
use voronka_store::DynStore;

/// How an import reads the file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Channel for the `external_id` column when the file has no `channel_id` column.
    pub channel: Option<ChannelId>,
    /// Source recorded on new contacts when the row has none (e.g. `import:crm.csv`).
    pub source: Option<String>,
    /// Extra header mappings: CSV header → target (`first_name`, `field.city`, `tags`…).
    pub mapping: Vec<(String, String)>,
    /// Rows per store batch (0 = default).
    pub batch_size: usize,
}

/// One refused or adjusted row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RowIssue {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// The column concerned, when one is.
    pub column: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// Running totals, reported while importing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportProgress {
    /// Rows read so far.
    pub rows: u64,
    /// Bytes of the file consumed so far.
    pub bytes: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Data rows read (header excluded).
    pub rows: u64,
    /// New contacts.
    pub created: u64,
    /// Existing contacts that changed.
    pub updated: u64,
    /// Existing contacts that already had everything.
    pub unchanged: u64,
    /// Rows refused, with reasons (nothing of them was written).
    pub failed: Vec<RowIssue>,
    /// Rows imported with an adjustment (e.g. "subscribed without consent proof:
    /// imported as unsubscribed").
    pub warnings: Vec<RowIssue>,
}

/// Why an import could not run at all (as opposed to a bad row).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The header is unusable: unknown column, duplicate column, no identifying column.
    #[error("{0}")]
    Header(String),
    /// The file is not readable CSV (bad encoding, I/O failure).
    #[error("cannot read CSV: {0}")]
    Read(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] voronka_store::StoreError),
}

/// Imports contacts from `reader` into workspace `ws`. Parsing runs on a blocking
/// thread; `progress` is called after each batch.
pub async fn import_csv<R>(
    _store: DynStore,
    _ws: WorkspaceId,
    _reader: R,
    _options: ImportOptions,
    _progress: Box<dyn Fn(ImportProgress) + Send + Sync>,
) -> Result<ImportReport, ImportError>
where
    R: std::io::Read + Send + 'static,
{
    Err(ImportError::Read("not yet implemented".into()))
}
