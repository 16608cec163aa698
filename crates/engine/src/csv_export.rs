//! Streamed CSV export of contacts, page by page, with cells that could be read as
//! spreadsheet formulas escaped.
//!
//! The columns are the ones [`crate::csv_import`] reads, so an export imports back
//! unchanged: `id, first_name, last_name, username, language, time_zone, phone, email,
//! avatar_url, source, tags, channel_id, external_id, subscribed, consent_source,
//! consent_at, created_at`, then `field.<key>` for every field definition.

use voronka_core::filter::ContactFilter;
use voronka_core::subscription::SubscriptionState;
use voronka_core::WorkspaceId;
use voronka_store::{Contact, ContactQuery, DynStore};

/// Contacts read from the store per page.
pub const PAGE_SIZE: u32 = 1_000;

/// The fixed columns, before the custom fields.
pub const FIXED_COLUMNS: [&str; 17] = [
    "id",
    "first_name",
    "last_name",
    "username",
    "language",
    "time_zone",
    "phone",
    "email",
    "avatar_url",
    "source",
    "tags",
    "channel_id",
    "external_id",
    "subscribed",
    "consent_source",
    "consent_at",
    "created_at",
];

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
    store: DynStore,
    ws: WorkspaceId,
    filter: ContactFilter,
    sink: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<u64, ExportError> {
    let defs = store.list_fields(ws).await?;
    let keys: Vec<String> = defs.into_iter().map(|d| d.spec.key).collect();
    let mut header: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    header.extend(keys.iter().map(|k| format!("field.{k}")));
    let mut out = csv::Writer::from_writer(Vec::new());
    write_record(&mut out, &header)?;
    send(&sink, take(&mut out)?).await?;

    let mut query = ContactQuery {
        filter,
        before: None,
        limit: PAGE_SIZE,
    };
    let mut written = 0u64;
    loop {
        let page = store.list_contacts(ws, &query).await?;
        for c in &page.items {
            write_record(&mut out, &contact_row(c, &keys))?;
            written += 1;
        }
        send(&sink, take(&mut out)?).await?;
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    Ok(written)
}

/// One contact as cells, in header order (not yet escaped).
fn contact_row(c: &Contact, keys: &[String]) -> Vec<String> {
    let p = &c.profile;
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let id = c.identities.first();
    let (subscribed, consent_source, consent_at) = match id.map(|i| &i.subscription) {
        Some(s) => {
            let state = match s.state {
                SubscriptionState::Subscribed => "true",
                SubscriptionState::Unsubscribed => "false",
                // Neither yes nor no: re-importing leaves such a state alone.
                SubscriptionState::Blocked | SubscriptionState::PendingDoubleOptIn => "",
            };
            let (src, at) = match (&s.proof, s.state) {
                (Some(pr), SubscriptionState::Subscribed) => (pr.source.clone(), pr.at.to_string()),
                _ => (String::new(), String::new()),
            };
            (state.to_string(), src, at)
        }
        None => Default::default(),
    };
    let mut row = vec![
        c.id.to_string(),
        o(&p.first_name),
        o(&p.last_name),
        o(&p.username),
        o(&p.language),
        o(&p.time_zone),
        o(&p.phone),
        o(&p.email),
        o(&p.avatar_url),
        o(&c.source),
        tags_cell(&c.tags),
        id.map(|i| i.channel_id.to_string()).unwrap_or_default(),
        id.map(|i| i.external_id.clone()).unwrap_or_default(),
        subscribed,
        consent_source,
        consent_at,
        c.created_at.to_string(),
    ];
    for k in keys {
        row.push(match c.fields.get(k) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        });
    }
    row
}

/// Prefixes `'` to a cell a spreadsheet would run as a formula.
pub fn escape_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

fn write_record(out: &mut csv::Writer<Vec<u8>>, cells: &[String]) -> Result<(), ExportError> {
    out.write_record(cells.iter().map(|c| escape_cell(c).into_owned()))
        .map_err(|e| ExportError::Write(e.to_string()))
}

fn take(out: &mut csv::Writer<Vec<u8>>) -> Result<Vec<u8>, ExportError> {
    let full = std::mem::replace(out, csv::Writer::from_writer(Vec::new()));
    full.into_inner()
        .map_err(|e| ExportError::Write(e.to_string()))
}

async fn send(
    sink: &tokio::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
) -> Result<(), ExportError> {
    if chunk.is_empty() {
        return Ok(());
    }
    sink.send(chunk)
        .await
        .map_err(|_| ExportError::Write("the receiver went away".into()))
}

/// Tags joined by `;`. The importer splits on `,` when a cell has no `;`, so a lone tag
/// containing a comma gets a trailing `;` to come back whole.
fn tags_cell(tags: &[String]) -> String {
    let mut cell = tags.join(";");
    if cell.contains(',') && !cell.contains(';') {
        cell.push(';');
    }
    cell
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tag_with_a_comma_survives_the_round_trip() {
        assert_eq!(super::tags_cell(&["a, b".to_string()]), "a, b;");
        assert_eq!(super::tags_cell(&["a".to_string(), "b".to_string()]), "a;b");
        assert_eq!(super::tags_cell(&[]), "");
    }

    use super::*;

    #[test]
    fn formula_cells_are_escaped() {
        assert_eq!(escape_cell("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(escape_cell("+79161234567"), "'+79161234567");
        assert_eq!(escape_cell("-1"), "'-1");
        assert_eq!(escape_cell("@x"), "'@x");
        assert_eq!(escape_cell("\tx"), "'\tx");
        assert_eq!(escape_cell("Ivan"), "Ivan");
        assert_eq!(escape_cell(""), "");
    }
}
