//! `contacts import` and `contacts export`.

use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use voronka_core::filter::{ContactFilter, FieldConditionText};
use voronka_core::subscription::SubscriptionState;
use voronka_core::{ChannelId, WorkspaceId};
use voronka_engine::csv_import::{ImportOptions, ImportReport};
use voronka_store::DynStore;

/// Contact commands.
#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Import contacts from a CSV file (UTF-8, header on line 1, separated by `,` or — when
    /// the header has more of them — by `;`).
    ///
    /// Columns are matched by header, case-insensitively: first_name, last_name,
    /// username, language, time_zone, phone, email, avatar_url, source, tags (separated
    /// by `;`, or `,` when there is no `;`), channel_id, external_id, subscribed
    /// (true/yes/1/да or false/no/0/нет; empty = leave as is), consent_source,
    /// consent_at (RFC 3339, or YYYY-MM-DD HH:MM:SS in UTC), consent_text, consent_ip,
    /// topics (`;`-separated), and custom fields as `field.<key>` or the bare key.
    /// Columns id and created_at (from an export) are ignored. Use --map for other
    /// headers. A file needs a phone, email or external_id column. Contacts are matched
    /// by identity, then phone, then e-mail; empty cells never clear anything. A row
    /// marked subscribed needs consent_source and consent_at, else it is imported as
    /// unsubscribed with a warning.
    ///
    /// Exit status: 0 when the import ran, even if some rows failed (they are listed
    /// with their line and reason); 1 when the file could not be imported at all (bad
    /// header, unreadable file, database error) or when every row failed.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Workspace id.
        #[arg(long, value_name = "ID")]
        workspace: i64,
        /// Channel of the external_id column when the file has no channel_id column.
        #[arg(long, value_name = "ID")]
        channel: Option<i64>,
        /// Source recorded on new contacts whose row has none (default: import:<file name>).
        #[arg(long)]
        source: Option<String>,
        /// Map a header to a target: `Telefon=phone`, `Town=field.city`, `Notes=ignore`
        /// (repeatable).
        #[arg(long = "map", value_name = "HEADER=TARGET", value_parser = parse_mapping)]
        mapping: Vec<(String, String)>,
        /// Rows per database batch.
        #[arg(long, default_value_t = voronka_engine::csv_import::DEFAULT_BATCH_SIZE)]
        batch_size: usize,
    },
    /// Export contacts as CSV (to standard output unless --output is given). The file
    /// imports back unchanged.
    Export {
        /// Workspace id.
        #[arg(long, value_name = "ID")]
        workspace: i64,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only contacts with this tag (repeat: all of them).
        #[arg(long = "tag", value_name = "NAME")]
        tags: Vec<String>,
        /// Only contacts meeting a field condition `key:op:value`, e.g. `age:gt:30`,
        /// `city:eq:Moscow`, `vip:exists` (repeatable; ops eq ne lt lte gt gte contains
        /// exists).
        #[arg(long = "field", value_name = "CONDITION")]
        fields: Vec<FieldConditionText>,
        /// Only contacts with an identity on this channel.
        #[arg(long, value_name = "ID")]
        channel: Option<i64>,
        /// Only contacts with an identity in this state (subscribed, unsubscribed,
        /// blocked, pending_double_opt_in).
        #[arg(long)]
        subscription: Option<SubscriptionState>,
        /// Only contacts whose name, username, phone or e-mail contains this text.
        #[arg(long)]
        q: Option<String>,
    },
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((h, t)) if !h.trim().is_empty() && !t.trim().is_empty() => {
            Ok((h.trim().to_string(), t.trim().to_string()))
        }
        _ => Err(format!("`{s}` is not HEADER=TARGET")),
    }
}

/// Runs a contacts command.
pub async fn run(store: DynStore, cmd: ContactsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ContactsCommand::Import {
            file,
            workspace,
            channel,
            source,
            mapping,
            batch_size,
        } => {
            let ws = WorkspaceId(workspace);
            store
                .get_workspace(ws)
                .await
                .with_context(|| format!("workspace {ws}"))?;
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let source = source.or_else(|| {
                file.file_name()
                    .map(|n| format!("import:{}", n.to_string_lossy()))
            });
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let b = bar.clone();
            let options = ImportOptions {
                channel: channel.map(ChannelId),
                source,
                mapping,
                batch_size,
            };
            let result = voronka_engine::csv_import::import_csv(
                store,
                ws,
                std::io::BufReader::with_capacity(256 * 1024, f),
                options,
                Box::new(move |p| {
                    b.set_position(p.bytes);
                    b.set_message(format!("{} rows", p.rows));
                }),
            )
            .await;
            bar.finish_and_clear();
            let report = result.with_context(|| format!("cannot import {}", file.display()))?;
            print_report(&report);
            let all_failed = report.rows > 0 && report.failed.len() as u64 >= report.rows;
            if all_failed {
                eprintln!("error: every row failed; nothing was imported");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        ContactsCommand::Export {
            workspace,
            output,
            tags,
            fields,
            channel,
            subscription,
            q,
        } => {
            let ws = WorkspaceId(workspace);
            store
                .get_workspace(ws)
                .await
                .with_context(|| format!("workspace {ws}"))?;
            let defs = store.list_fields(ws).await?;
            let mut conditions = Vec::with_capacity(fields.len());
            for c in &fields {
                let Some(def) = defs.iter().find(|d| d.spec.key == c.key) else {
                    bail!(
                        "--field: no custom field `{}` is defined in workspace {ws}",
                        c.key
                    );
                };
                conditions.push(c.resolve(def)?);
            }
            let mut tag_names = Vec::with_capacity(tags.len());
            for t in &tags {
                tag_names.push(voronka_core::tag::tag_name(t)?);
            }
            let filter = ContactFilter {
                tags: tag_names,
                fields: conditions,
                channel_id: channel.map(ChannelId),
                subscription,
                q,
            };
            let mut out: Box<dyn Write + Send> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let job = tokio::spawn(voronka_engine::csv_export::export_csv(
                store, ws, filter, tx,
            ));
            let mut write_error = None;
            while let Some(chunk) = rx.recv().await {
                if let Err(e) = out.write_all(&chunk) {
                    write_error = Some(e);
                    break;
                }
            }
            drop(rx);
            if let Some(e) = write_error {
                bail!("cannot write the export: {e}");
            }
            out.flush().context("cannot write the export")?;
            let n = job.await.context("the export task failed")??;
            eprintln!("exported {n} contact(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(r: &ImportReport) {
    out!(
        "rows: {}, created: {}, updated: {}, unchanged: {}, failed: {}, warnings: {}",
        r.rows,
        r.created,
        r.updated,
        r.unchanged,
        r.failed.len(),
        r.warnings.len()
    );
    for f in &r.failed {
        match &f.column {
            Some(c) => out!("failed: line {} ({c}): {}", f.line, f.reason),
            None => out!("failed: line {}: {}", f.line, f.reason),
        }
    }
    for w in &r.warnings {
        match &w.column {
            Some(c) => out!("warning: line {} ({c}): {}", w.line, w.reason),
            None => out!("warning: line {}: {}", w.line, w.reason),
        }
    }
}
