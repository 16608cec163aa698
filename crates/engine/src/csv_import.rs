//! Streamed CSV import of contacts: parse and validate rows on a blocking thread, upsert
//! them in batches through the store, report bad rows by line while good rows import.
//!
//! Columns are matched by header (case-insensitive, trimmed): the profile attributes
//! (`first_name`, `last_name`, `username`, `language`, `time_zone`, `phone`, `email`,
//! `avatar_url`), `source`, `tags` (separated by `;`, or by `,` when the cell has no `;`),
//! `channel_id`, `external_id`, `subscribed`, `consent_source`, `consent_at`,
//! `consent_text`, `consent_ip`, `topics` (`;`-separated), custom fields as `field.<key>`
//! or a bare defined key, and `id` / `created_at` (written by the export, ignored here).
//! [`ImportOptions::mapping`] adds aliases, including the target `ignore`. The separator
//! is `,`, or `;` when the header line has more semicolons than commas.

use jiff::Timestamp;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use voronka_core::contact::Profile;
use voronka_core::field::{FieldDefinition, FieldValue};
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::{ChannelId, ValidationError, WorkspaceId};
use voronka_store::{DynStore, ImportAction, ImportRow};

/// Rows per store batch when [`ImportOptions::batch_size`] is 0.
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

/// The warning given to a row marked subscribed without both consent columns.
pub const NO_PROOF_WARNING: &str =
    "subscribed without consent proof (consent_source and consent_at): imported as unsubscribed";

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

/// What the parser hands to the writer: validated rows and the issues met on the way.
struct Batch {
    rows: Vec<ImportRow>,
    failed: Vec<RowIssue>,
    warnings: Vec<RowIssue>,
    rows_read: u64,
    bytes: u64,
}

/// Imports contacts from `reader` into workspace `ws`. Parsing runs on a blocking
/// thread; `progress` is called after each batch.
pub async fn import_csv<R>(
    store: DynStore,
    ws: WorkspaceId,
    reader: R,
    options: ImportOptions,
    progress: Box<dyn Fn(ImportProgress) + Send + Sync>,
) -> Result<ImportReport, ImportError>
where
    R: std::io::Read + Send + 'static,
{
    let defs = store.list_fields(ws).await?;
    let batch_size = if options.batch_size == 0 {
        DEFAULT_BATCH_SIZE
    } else {
        options.batch_size
    };
    // Two batches in flight: one being written while the next is parsed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let parser =
        tokio::task::spawn_blocking(move || parse_stream(reader, &defs, &options, batch_size, &tx));

    let mut report = ImportReport::default();
    let mut seen = ImportProgress::default();
    while let Some(batch) = rx.recv().await {
        report.rows += batch.rows_read;
        report.failed.extend(batch.failed);
        report.warnings.extend(batch.warnings);
        if !batch.rows.is_empty() {
            // A store-wide failure ends the import; dropping `rx` stops the parser.
            let outcomes = store.import_contacts(ws, batch.rows).await?;
            for o in outcomes {
                match o.result {
                    Ok((_, ImportAction::Created)) => report.created += 1,
                    Ok((_, ImportAction::Updated)) => report.updated += 1,
                    Ok((_, ImportAction::Unchanged)) => report.unchanged += 1,
                    Err(reason) => report.failed.push(RowIssue {
                        line: o.line,
                        column: None,
                        reason,
                    }),
                }
            }
        }
        seen.rows += batch.rows_read;
        seen.bytes = batch.bytes;
        progress(seen.clone());
    }
    parser
        .await
        .map_err(|e| ImportError::Read(format!("the CSV reader stopped: {e}")))??;
    report.failed.sort_by_key(|i| i.line);
    report.warnings.sort_by_key(|i| i.line);
    tracing::info!(
        workspace = %ws,
        rows = report.rows,
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        failed = report.failed.len(),
        warnings = report.warnings.len(),
        "CSV import finished"
    );
    Ok(report)
}

/// Reads the whole file, sending batches; runs on a blocking thread.
fn parse_stream<R: Read>(
    reader: R,
    defs: &[FieldDefinition],
    options: &ImportOptions,
    batch_size: usize,
    tx: &tokio::sync::mpsc::Sender<Batch>,
) -> Result<(), ImportError> {
    let mut counted = CountingReader::new(reader);
    let bytes = counted.counter();
    let head = read_first_line(&mut counted).map_err(|e| ImportError::Read(e.to_string()))?;
    let delimiter = guess_delimiter(&head);
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(std::io::Cursor::new(head).chain(counted));
    let mut record = csv::StringRecord::new();
    let header = match csv.read_record(&mut record) {
        Ok(true) => record.clone(),
        Ok(false) => {
            return Err(ImportError::Header(
                "the file is empty (no header line)".into(),
            ))
        }
        Err(e) => return Err(read_error(e)),
    };
    let layout = Layout::from_header(&header, defs, options)?;
    let now = Timestamp::now();
    let mut batch = Batch::empty();
    let mut sent_bytes = 0;
    loop {
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                batch.rows_read += 1;
                match layout.parse_row(&record, line, options, now) {
                    Ok((row, warnings)) => {
                        batch.rows.push(row);
                        batch.warnings.extend(warnings);
                    }
                    Err(issue) => batch.failed.push(issue),
                }
            }
            Err(e) => match e.kind() {
                // A row with broken UTF-8 is a bad row, not a broken file.
                csv::ErrorKind::Utf8 { pos, .. } => {
                    batch.rows_read += 1;
                    batch.failed.push(RowIssue {
                        line: pos.as_ref().map(|p| p.line()).unwrap_or(0),
                        column: None,
                        reason: "the row is not valid UTF-8 (save the file as UTF-8)".into(),
                    });
                }
                _ => return Err(read_error(e)),
            },
        }
        if batch.rows.len() + batch.failed.len() >= batch_size {
            batch.bytes = bytes.load(Ordering::Relaxed);
            sent_bytes = batch.bytes;
            if tx
                .blocking_send(std::mem::replace(&mut batch, Batch::empty()))
                .is_err()
            {
                // The writer gave up (store error); it reports why.
                return Ok(());
            }
        }
    }
    batch.bytes = bytes.load(Ordering::Relaxed);
    if batch.rows_read > 0 || batch.bytes > sent_bytes {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}

/// Reads up to the end of the first line (at most 64 KiB) so the separator can be
/// guessed before parsing starts.
fn read_first_line<R: Read>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.contains(&b'\n') && head.len() < 64 * 1024 {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// `;` when the header has more semicolons than commas (spreadsheets in Russian and
/// other locales save CSV that way), else `,`.
fn guess_delimiter(head: &[u8]) -> u8 {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let count = |c: u8| line.iter().filter(|b| **b == c).count();
    if count(b';') > count(b',') {
        b';'
    } else {
        b','
    }
}

fn read_error(e: csv::Error) -> ImportError {
    match e.position() {
        Some(p) => ImportError::Read(format!("line {}: {e}", p.line())),
        None => ImportError::Read(e.to_string()),
    }
}

impl Batch {
    fn empty() -> Self {
        Batch {
            rows: Vec::new(),
            failed: Vec::new(),
            warnings: Vec::new(),
            rows_read: 0,
            bytes: 0,
        }
    }
}

/// Counts bytes handed to the CSV parser and drops a UTF-8 byte-order mark at the start
/// (spreadsheet programs write one; it would otherwise glue itself to the first header).
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
    started: bool,
    pending: Vec<u8>,
}

impl<R: Read> CountingReader<R> {
    fn new(inner: R) -> Self {
        CountingReader {
            inner,
            count: Arc::new(AtomicU64::new(0)),
            started: false,
            pending: Vec::new(),
        }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.started {
            self.started = true;
            let mut head = [0u8; 3];
            let mut got = 0;
            while got < 3 {
                let n = self.inner.read(&mut head[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.count.fetch_add(got as u64, Ordering::Relaxed);
            if head[..got] != [0xEF, 0xBB, 0xBF] {
                self.pending = head[..got].to_vec();
            }
        }
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What a column feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    FirstName,
    LastName,
    Username,
    Language,
    TimeZone,
    Phone,
    Email,
    AvatarUrl,
    Source,
    Tags,
    ChannelId,
    ExternalId,
    Subscribed,
    ConsentSource,
    ConsentAt,
    ConsentText,
    ConsentIp,
    Topics,
    /// A custom field, by index into the definitions.
    Field(usize),
    /// Read and thrown away (`id`, `created_at` from an export; `ignore` mappings).
    Ignore,
}

/// Resolves a target name (already trimmed and lower-cased).
fn target_named(name: &str, defs: &[FieldDefinition]) -> Result<Target, String> {
    Ok(match name {
        "first_name" => Target::FirstName,
        "last_name" => Target::LastName,
        "username" => Target::Username,
        "language" => Target::Language,
        "time_zone" => Target::TimeZone,
        "phone" => Target::Phone,
        "email" => Target::Email,
        "avatar_url" => Target::AvatarUrl,
        "source" => Target::Source,
        "tags" => Target::Tags,
        "channel_id" => Target::ChannelId,
        "external_id" => Target::ExternalId,
        "subscribed" => Target::Subscribed,
        "consent_source" => Target::ConsentSource,
        "consent_at" => Target::ConsentAt,
        "consent_text" => Target::ConsentText,
        "consent_ip" => Target::ConsentIp,
        "topics" => Target::Topics,
        "id" | "created_at" | "ignore" => Target::Ignore,
        other => {
            let key = other.strip_prefix("field.").unwrap_or(other);
            match defs.iter().position(|d| d.spec.key == key) {
                Some(i) => Target::Field(i),
                None if other.starts_with("field.") => {
                    return Err(format!(
                        "no custom field `{key}` is defined in this workspace"
                    ))
                }
                None => return Err("not a contact attribute nor a defined custom field".into()),
            }
        }
    })
}

fn normalise_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}').trim().to_lowercase()
}

/// The resolved header: what each column feeds, and its name as written in the file.
#[derive(Debug)]
struct Layout {
    columns: Vec<(Target, String)>,
    defs: Vec<FieldDefinition>,
    has_channel_column: bool,
}

impl Layout {
    fn from_header(
        header: &csv::StringRecord,
        defs: &[FieldDefinition],
        options: &ImportOptions,
    ) -> Result<Layout, ImportError> {
        let mut aliases: HashMap<String, Target> = HashMap::new();
        for (from, to) in &options.mapping {
            let target = target_named(&normalise_header(to), defs).map_err(|why| {
                ImportError::Header(format!(
                    "mapping `{from}={to}`: unknown target `{to}` ({why})"
                ))
            })?;
            aliases.insert(normalise_header(from), target);
        }
        let mut columns = Vec::with_capacity(header.len());
        let mut seen: HashMap<Target, String> = HashMap::new();
        for raw in header.iter() {
            let name = normalise_header(raw);
            let shown = raw.trim_start_matches('\u{feff}').trim().to_string();
            if name.is_empty() {
                return Err(ImportError::Header(format!(
                    "column {} has an empty header",
                    columns.len() + 1
                )));
            }
            let target = match aliases.get(&name) {
                Some(t) => *t,
                None => target_named(&name, defs).map_err(|why| {
                    ImportError::Header(format!(
                        "unknown column `{shown}`: {why} (map it with --map `{shown}=target` or `{shown}=ignore`)"
                    ))
                })?,
            };
            if target != Target::Ignore {
                if let Some(first) = seen.insert(target, shown.clone()) {
                    return Err(ImportError::Header(format!(
                        "duplicate column `{shown}`: `{first}` already fills the same attribute"
                    )));
                }
            }
            columns.push((target, shown));
        }
        let has = |t: Target| seen.contains_key(&t);
        let has_channel_column = has(Target::ChannelId);
        if has(Target::ExternalId) && !has_channel_column && options.channel.is_none() {
            return Err(ImportError::Header(
                "column `external_id` needs a `channel_id` column or a channel given for the whole file".into(),
            ));
        }
        if !has(Target::Phone) && !has(Target::Email) && !has(Target::ExternalId) {
            return Err(ImportError::Header(
                "the file needs a `phone`, `email` or `external_id` column to recognise contacts"
                    .into(),
            ));
        }
        Ok(Layout {
            columns,
            defs: defs.to_vec(),
            has_channel_column,
        })
    }

    /// The column name (as in the file) that feeds `t`, for error reports.
    fn column_of(&self, t: Target) -> String {
        self.columns
            .iter()
            .find(|(c, _)| *c == t)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| target_label(t).to_string())
    }

    /// Validates one record. `Err` is the reason the row is refused; warnings come with
    /// an accepted row.
    fn parse_row(
        &self,
        record: &csv::StringRecord,
        line: u64,
        options: &ImportOptions,
        now: Timestamp,
    ) -> Result<(ImportRow, Vec<RowIssue>), RowIssue> {
        let fail = |column: Option<String>, reason: String| RowIssue {
            line,
            column,
            reason,
        };
        if record.len() > self.columns.len() {
            return Err(fail(
                None,
                format!(
                    "the row has {} cells but the header has {} columns",
                    record.len(),
                    self.columns.len()
                ),
            ));
        }
        let mut profile = Profile::default();
        let mut row = ImportRow {
            line,
            profile: Profile::default(),
            source: None,
            identity: None,
            subscription: None,
            tags: Vec::new(),
            fields: Vec::new(),
        };
        let mut channel: Option<ChannelId> = None;
        let mut external: Option<String> = None;
        let mut subscribed: Option<bool> = None;
        let mut consent_source = None;
        let mut consent_at = None;
        let mut consent_text = None;
        let mut consent_ip = None;
        let mut topics = Vec::new();

        for (i, cell) in record.iter().enumerate() {
            let (target, column) = &self.columns[i];
            let value = unescape(cell.trim());
            if value.is_empty() {
                continue;
            }
            let bad = |e: ValidationError| fail(Some(column.clone()), e.message);
            let v = value.to_string();
            match target {
                Target::FirstName => profile.first_name = Some(v),
                Target::LastName => profile.last_name = Some(v),
                Target::Username => profile.username = Some(v),
                Target::Language => profile.language = Some(v),
                Target::TimeZone => profile.time_zone = Some(v),
                Target::Phone => profile.phone = Some(v),
                Target::Email => profile.email = Some(v),
                Target::AvatarUrl => profile.avatar_url = Some(v),
                Target::Source => {
                    row.source = Some(source_text(&v).map_err(|m| fail(Some(column.clone()), m))?)
                }
                Target::Tags => {
                    let sep = if v.contains(';') { ';' } else { ',' };
                    for t in v.split(sep).filter(|t| !t.trim().is_empty()) {
                        let t = voronka_core::tag::tag_name(t).map_err(bad)?;
                        if !row.tags.contains(&t) {
                            row.tags.push(t);
                        }
                    }
                }
                Target::ChannelId => {
                    let id: i64 = v.parse().map_err(|_| {
                        fail(
                            Some(column.clone()),
                            format!("`{v}` is not a channel id (a number)"),
                        )
                    })?;
                    channel = Some(ChannelId(id));
                }
                Target::ExternalId => {
                    external = Some(voronka_core::channel::external_id(&v).map_err(bad)?)
                }
                Target::Subscribed => {
                    subscribed = Some(match v.to_lowercase().as_str() {
                        "true" | "yes" | "1" | "да" => true,
                        "false" | "no" | "0" | "нет" => false,
                        _ => {
                            return Err(fail(
                                Some(column.clone()),
                                format!("`{v}` is not yes or no (true/yes/1/да or false/no/0/нет)"),
                            ))
                        }
                    })
                }
                Target::ConsentSource => consent_source = Some(v),
                Target::ConsentAt => {
                    consent_at = Some(parse_time(&v).map_err(|m| fail(Some(column.clone()), m))?)
                }
                Target::ConsentText => consent_text = Some(v),
                Target::ConsentIp => consent_ip = Some(v),
                Target::Topics => {
                    topics = v
                        .split(';')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                Target::Field(d) => {
                    let def = &self.defs[*d];
                    let fv = FieldValue::validate(def, &serde_json::Value::String(v), column)
                        .map_err(bad)?;
                    row.fields.push(fv);
                }
                Target::Ignore => {}
            }
        }

        row.profile = profile.validated().map_err(|e| {
            let column = target_named(&e.field, &[]).map(|t| self.column_of(t)).ok();
            fail(column, e.message)
        })?;
        row.source = row.source.or_else(|| options.source.clone());

        if !self.has_channel_column {
            channel = options.channel;
        }
        let mut warnings = Vec::new();
        match (external, channel) {
            (Some(ext), Some(ch)) => row.identity = Some((ch, ext)),
            (Some(_), None) => {
                return Err(fail(
                    Some(self.column_of(Target::ChannelId)),
                    "the row has an external_id but no channel_id".into(),
                ))
            }
            (None, _) => {}
        }

        if row.profile.phone.is_none() && row.profile.email.is_none() && row.identity.is_none() {
            return Err(fail(
                None,
                "the row has no phone, email nor external_id to recognise the contact".into(),
            ));
        }

        let sub_column = || Some(self.column_of(Target::Subscribed));
        if let Some(wants) = subscribed {
            if row.identity.is_none() {
                warnings.push(RowIssue {
                    line,
                    column: sub_column(),
                    reason: "subscribed ignored: the row has no channel identity (channel_id and external_id)".into(),
                });
            } else {
                let change = if wants {
                    match (consent_source, consent_at) {
                        (Some(source), Some(at)) => Some(SubscriptionChange::new(
                            SubscriptionState::Subscribed,
                            topics,
                            Some(ConsentProof {
                                source,
                                at,
                                text_shown: consent_text,
                                ip: consent_ip,
                                message_id: None,
                            }),
                            now,
                        )),
                        _ => {
                            warnings.push(RowIssue {
                                line,
                                column: sub_column(),
                                reason: NO_PROOF_WARNING.into(),
                            });
                            None
                        }
                    }
                } else {
                    // Withdrawal needs no evidence from the file: the import itself is it.
                    let proof = ConsentProof {
                        source: options.source.clone().unwrap_or_else(|| "import".into()),
                        at: now,
                        text_shown: None,
                        ip: None,
                        message_id: None,
                    };
                    Some(SubscriptionChange::new(
                        SubscriptionState::Unsubscribed,
                        Vec::new(),
                        Some(proof),
                        now,
                    ))
                };
                row.subscription = change
                    .transpose()
                    .map_err(|e| fail(Some(self.proof_column(&e.field)), e.message))?;
            }
        }
        Ok((row, warnings))
    }

    fn proof_column(&self, field: &str) -> String {
        let t = match field {
            "proof.source" => Target::ConsentSource,
            "proof.at" => Target::ConsentAt,
            "proof.ip" => Target::ConsentIp,
            "proof.text_shown" => Target::ConsentText,
            "topics" => Target::Topics,
            _ => Target::Subscribed,
        };
        self.column_of(t)
    }
}

fn target_label(t: Target) -> &'static str {
    match t {
        Target::FirstName => "first_name",
        Target::LastName => "last_name",
        Target::Username => "username",
        Target::Language => "language",
        Target::TimeZone => "time_zone",
        Target::Phone => "phone",
        Target::Email => "email",
        Target::AvatarUrl => "avatar_url",
        Target::Source => "source",
        Target::Tags => "tags",
        Target::ChannelId => "channel_id",
        Target::ExternalId => "external_id",
        Target::Subscribed => "subscribed",
        Target::ConsentSource => "consent_source",
        Target::ConsentAt => "consent_at",
        Target::ConsentText => "consent_text",
        Target::ConsentIp => "consent_ip",
        Target::Topics => "topics",
        Target::Field(_) => "field",
        Target::Ignore => "ignore",
    }
}

/// Undoes the export's formula escaping: a `'` put before `= + - @`, tab or CR.
fn unescape(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

fn source_text(v: &str) -> Result<String, String> {
    if v.chars().count() > voronka_core::contact::MAX_SHORT_TEXT || v.chars().any(char::is_control)
    {
        return Err(format!(
            "must be at most {} characters, without control characters",
            voronka_core::contact::MAX_SHORT_TEXT
        ));
    }
    Ok(v.to_string())
}

/// RFC 3339, or a date and time without offset taken as UTC (`2026-05-01 10:00:00`).
fn parse_time(v: &str) -> Result<Timestamp, String> {
    if let Ok(ts) = v.parse::<Timestamp>() {
        return Ok(ts);
    }
    v.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!("`{v}` is not a date-time (expected RFC 3339 or YYYY-MM-DD HH:MM:SS in UTC)")
        })
}

#[cfg(test)]
mod tests;
