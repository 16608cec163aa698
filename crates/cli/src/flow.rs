//! `flow check`: validates a flow file before it is uploaded.

use anyhow::Context;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use voronka_core::channel::ChannelKind;
use voronka_core::flow::format::{self, Format};
use voronka_core::flow::validate::{self, Catalog};
use voronka_core::WorkspaceId;

/// Flow commands.
#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Check a flow file (JSON, or YAML for `.yaml`/`.yml`) and list every problem, one
    /// per line.
    ///
    /// Without --workspace only the file itself is checked, against the limits of
    /// Telegram and the web chat; with it, also the fields, tags and channels it uses.
    ///
    /// Exit status: 0 when the flow is fine, 1 when it has problems, 2 when the file
    /// cannot be read or parsed.
    Check {
        /// The flow file.
        file: PathBuf,
        /// Check against this workspace's fields, tags and channels.
        #[arg(long, value_name = "ID")]
        workspace: Option<i64>,
    },
    /// Talk to a flow in the terminal as a test contact, before publishing it.
    ///
    /// The flow runs on the real engine with a throwaway database. Type messages (a
    /// number presses that button); `/skip 2h` moves the clock past delays, `/event
    /// NAME {json}` posts an event, `/state` shows where the run is, `/help` lists the
    /// rest. Input may be piped for a scripted conversation.
    Test {
        /// The flow file.
        file: PathBuf,
        /// The test contact's first name.
        #[arg(long, default_value = "Tester")]
        name: String,
    },
}

/// Runs a flow command.
pub async fn run(cfg: &crate::config::Config, cmd: FlowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowCommand::Check { file, workspace } => check(cfg, &file, workspace).await,
        FlowCommand::Test { file, name } => crate::flow_test::run(cfg, &file, &name).await,
    }
}

async fn check(
    cfg: &crate::config::Config,
    file: &Path,
    workspace: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let doc = match format::parse(&text, Format::from_path(file)) {
        Ok(d) => d,
        Err(p) => {
            eprintln!("error: {} is not a flow document: {p}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let catalog = match workspace {
        None => offline_catalog(),
        Some(id) => workspace_catalog(cfg, WorkspaceId(id)).await?,
    };
    let problems = validate::validate(&doc, &catalog);
    if problems.is_empty() {
        out!(
            "ok: {} steps, {} triggers",
            doc.steps.len(),
            doc.triggers.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        out!("{p}");
    }
    Ok(ExitCode::FAILURE)
}

/// What is known without a database: the channels Voronka can talk on.
fn offline_catalog() -> Catalog {
    Catalog {
        channels: [ChannelKind::Telegram, ChannelKind::Webchat]
            .into_iter()
            .filter_map(voronka_engine::flows::channel_limits)
            .collect(),
        ..Catalog::default()
    }
}

async fn workspace_catalog(
    cfg: &crate::config::Config,
    ws: WorkspaceId,
) -> anyhow::Result<Catalog> {
    let store = crate::open(cfg).await?;
    store
        .get_workspace(ws)
        .await
        .with_context(|| format!("workspace {ws}"))?;
    let fields = store.list_fields(ws).await.context("cannot list fields")?;
    let tags = store.list_tags(ws).await.context("cannot list tags")?;
    let channels = store
        .list_channels(ws)
        .await
        .context("cannot list channels")?;
    let mut kinds: Vec<ChannelKind> = channels.iter().map(|c| c.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    Ok(Catalog {
        fields: Some(fields),
        tags: Some(tags.into_iter().map(|t| t.name).collect()),
        topics: None,
        flows: None,
        channels: kinds
            .into_iter()
            .filter_map(voronka_engine::flows::channel_limits)
            .collect(),
    })
}
