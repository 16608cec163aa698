//! `flow test`: talk to a flow in the terminal before publishing it.
//!
//! The flow runs on the real engine — a throwaway SQLite database, the web chat channel
//! and the flow runtime with its timers — with the terminal as the contact. Lines typed
//! are messages (a number presses that button); lines starting with `/` are commands.
//! Input may be piped, which makes a scripted conversation a one-liner in CI.

use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use voronka_core::channel::{ChannelKind, ChannelSettings};
use voronka_core::crypto::SecretKey;
use voronka_core::field::{FieldSpec, FieldType};
use voronka_core::flow::format::{self, Format};
use voronka_core::flow::validate::{self, Catalog, PROFILE_ATTRIBUTES};
use voronka_core::flow::{Action, Condition, Expect, FlowDocument, Step, Trigger};
use voronka_core::message::{InboundEvent, InboundKind, Sender};
use voronka_core::{ContactId, WorkspaceId};
use voronka_engine::flows::Flows;
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_store::{Channel, DynStore, NewChannel, RunQuery};

/// The terminal contact's id on the web chat channel.
const VISITOR: &str = "terminal";
/// How long to let the engine answer before reading the next scripted line.
const SETTLE: Duration = Duration::from_millis(400);

const HELP: &str = "Type a message (a number presses that button). Commands:
  /skip 2h            move the clock forward (delays, time-outs)
  /event NAME {json}  post an API event (order_paid …)
  /tag NAME           add a tag (tag_added triggers)
  /release            an operator releases a handed-off conversation
  /state              where the run is, and its variables
  /contact            the contact's tags, fields and profile
  /help, /quit";

/// Runs `flow test`.
pub async fn run(cfg: &crate::config::Config, file: &Path, name: &str) -> anyhow::Result<ExitCode> {
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
    let catalog = Catalog {
        channels: voronka_engine::flows::channel_limits(ChannelKind::Webchat)
            .into_iter()
            .collect(),
        ..Catalog::default()
    };
    let problems = validate::validate(&doc, &catalog);
    if !problems.is_empty() {
        for p in &problems {
            println!("{p}");
        }
        eprintln!(
            "error: fix these {} problem(s) first (voronka flow check)",
            problems.len()
        );
        return Ok(ExitCode::from(1));
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let url = format!("sqlite://{}", dir.path().join("flow-test.db").display());
    let store = voronka_store::connect_and_migrate(&url)
        .await
        .context("cannot create the test database")?;
    let secret = SecretKey::generate();
    let ws = store.create_workspace("Flow test").await?.id;
    create_fields(&store, ws, &doc).await?;
    let channel = store
        .create_channel(
            ws,
            NewChannel {
                kind: ChannelKind::Webchat,
                name: "Terminal".into(),
                credentials: secret.seal(b"{}"),
                settings: ChannelSettings::default(),
            },
        )
        .await?;
    let messaging = Messaging::new(store.clone(), secret, MessagingConfig::default());
    messaging.start().await.context("cannot start messaging")?;
    let flows = Flows::new(messaging.clone(), cfg.flows()?);
    let title = if doc.name.is_empty() { name } else { &doc.name };
    let flow = store
        .create_flow(ws, title, serde_json::to_value(&doc)?)
        .await?;
    store
        .publish_flow(ws, flow.id, serde_json::to_value(&doc)?)
        .await?;
    flows.start().await.context("cannot start the flows")?;

    let mut pushes = messaging.hub().subscribe(channel.id.0, VISITOR);
    let printer = tokio::spawn(async move {
        while let Ok(push) = pushes.recv().await {
            print_message(&push.body);
        }
    });
    println!("Talking to “{title}” as {name}. /help lists the commands.");
    let mut seq = 0u64;
    inbound(
        &messaging,
        &channel,
        &mut seq,
        name,
        InboundKind::Start {
            message_id: "start".into(),
            text: String::new(),
            reference: None,
        },
    )
    .await?;
    inbound(
        &messaging,
        &channel,
        &mut seq,
        name,
        InboundKind::Subscribed,
    )
    .await?;
    let contact = wait_for_contact(&store, ws, &channel).await?;
    flows
        .start_for(ws, contact, flow.id, json!({}))
        .await
        .context("cannot start the flow")?;
    tokio::time::sleep(SETTLE).await;

    // Standard input is read on a thread of its own: a blocked read must not hold up
    // the engine's tasks.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !atty_like() {
            println!("> {line}");
        }
        match command(line) {
            Some(("/quit", _)) | Some(("/exit", _)) => break,
            Some(("/help", _)) => println!("{HELP}"),
            Some(("/skip", arg)) => match voronka_core::flow::duration::parse_positive(arg) {
                Ok(d) => {
                    flows.advance_clock(d.unsigned_abs());
                    println!(
                        "(the clock is now {})",
                        flows.now().round(jiff::Unit::Second)?
                    );
                }
                Err(e) => println!("(error: {e})"),
            },
            Some(("/event", arg)) => {
                let (name, data) = arg.split_once(' ').unwrap_or((arg, "{}"));
                match serde_json::from_str::<Value>(data) {
                    Ok(data) if !name.is_empty() => flows.event(ws, contact, name, data).await?,
                    _ => println!("(error: write /event NAME {{\"key\": \"value\"}})"),
                }
            }
            Some(("/tag", arg)) if !arg.is_empty() => {
                store.add_tags(ws, contact, &[arg.to_string()]).await?;
                flows.tags_added(ws, contact, &[arg.to_string()]).await?;
            }
            Some(("/release", _)) => flows.release(ws, contact).await?,
            Some(("/state", _)) => print_state(&store, ws, contact).await?,
            Some(("/contact", _)) => print_contact(&store, ws, contact).await?,
            Some((other, _)) => println!("(unknown command {other}; /help lists them)"),
            None => {
                let message_id = format!("m{seq}");
                inbound(
                    &messaging,
                    &channel,
                    &mut seq,
                    name,
                    InboundKind::Text {
                        message_id,
                        text: line.to_string(),
                    },
                )
                .await?
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
    tokio::time::sleep(SETTLE).await;
    print_state(&store, ws, contact).await?;
    flows.stop();
    messaging.stop();
    printer.abort();
    Ok(ExitCode::SUCCESS)
}

/// Piped input is echoed so a transcript reads as a conversation.
fn atty_like() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

fn command(line: &str) -> Option<(&str, &str)> {
    if !line.starts_with('/') {
        return None;
    }
    Some(match line.split_once(' ') {
        Some((c, rest)) => (c, rest.trim()),
        None => (line, ""),
    })
}

async fn inbound(
    messaging: &Arc<Messaging>,
    channel: &Channel,
    seq: &mut u64,
    name: &str,
    kind: InboundKind,
) -> anyhow::Result<()> {
    *seq += 1;
    let event = InboundEvent {
        provider_event_id: format!("terminal-{seq}"),
        sender: Sender {
            external_id: VISITOR.into(),
            first_name: Some(name.to_string()),
            last_name: None,
            username: None,
            language: None,
        },
        at: jiff::Timestamp::now().as_second(),
        kind,
    };
    messaging
        .store_events(channel, vec![event])
        .await
        .map_err(|e| anyhow::anyhow!("cannot deliver the message: {e}"))?;
    Ok(())
}

async fn wait_for_contact(
    store: &DynStore,
    ws: WorkspaceId,
    channel: &Channel,
) -> anyhow::Result<ContactId> {
    for _ in 0..200 {
        if let Some(i) = store.find_identity(ws, channel.id, VISITOR).await? {
            return Ok(i.contact_id);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the test contact was not created")
}

fn print_message(body: &Value) {
    if let Some(text) = body["text"].as_str() {
        for line in text.lines() {
            println!("bot: {line}");
        }
    }
    if let Some(url) = body["media"]["url"].as_str() {
        println!(
            "bot: [{}] {url}",
            body["media"]["kind"].as_str().unwrap_or("media")
        );
    }
    for (i, b) in body["buttons"].as_array().into_iter().flatten().enumerate() {
        let label = b["label"].as_str().unwrap_or_default();
        match b["url"].as_str() {
            Some(url) => println!("     [{}] {label} → {url}", i + 1),
            None => println!("     [{}] {label}", i + 1),
        }
    }
}

async fn print_state(store: &DynStore, ws: WorkspaceId, contact: ContactId) -> anyhow::Result<()> {
    let runs = store
        .list_runs(
            ws,
            RunQuery {
                contact_id: Some(contact),
                limit: 20,
                ..RunQuery::default()
            },
        )
        .await?;
    for r in runs {
        let wait = r
            .wait
            .map(|w| format!(", waiting for {}", w.as_str()))
            .unwrap_or_default();
        let due = r
            .due_at
            .map(|d| format!(" until {}", d.round(jiff::Unit::Second).unwrap_or(d)))
            .unwrap_or_default();
        let error = r.error.map(|e| format!(", error: {e}")).unwrap_or_default();
        println!(
            "(run {}: {} at step `{}`{wait}{due}{error}; vars {})",
            r.id,
            r.status.as_str(),
            r.step_id,
            r.vars
        );
    }
    Ok(())
}

async fn print_contact(
    store: &DynStore,
    ws: WorkspaceId,
    contact: ContactId,
) -> anyhow::Result<()> {
    let c = store.get_contact(ws, contact).await?;
    println!(
        "(tags {:?}; fields {}; email {:?}; phone {:?})",
        c.tags,
        serde_json::to_string(&c.fields)?,
        c.profile.email,
        c.profile.phone
    );
    Ok(())
}

/// Creates the custom fields the flow uses, typed by how it uses them, so the test
/// workspace accepts its answers.
async fn create_fields(
    store: &DynStore,
    ws: WorkspaceId,
    doc: &FlowDocument,
) -> anyhow::Result<()> {
    let mut wanted: Vec<(String, FieldType)> = Vec::new();
    let mut add = |key: &str, t: FieldType| {
        if !PROFILE_ATTRIBUTES.contains(&key)
            && !key.starts_with("var.")
            && !wanted.iter().any(|(k, _)| k == key)
        {
            wanted.push((key.to_string(), t));
        }
    };
    for t in &doc.triggers {
        if let Trigger::FieldDate { field, .. } = t {
            add(field, FieldType::Date);
        }
    }
    for step in &doc.steps {
        match step {
            Step::Ask(a) => {
                if let Some(f) = &a.field {
                    let t = match a.expect {
                        Expect::Number => FieldType::Number,
                        Expect::Date => FieldType::Date,
                        _ => FieldType::Text,
                    };
                    add(f, t);
                }
            }
            Step::Action(a) => {
                for action in &a.actions {
                    if let Action::SetField { field, .. } = action {
                        add(field, FieldType::Text);
                    }
                }
            }
            Step::Delay(d) => {
                if let Some(f) = &d.until_field {
                    add(&f.field, FieldType::Datetime);
                }
            }
            Step::Http(h) => {
                for target in h.save.keys() {
                    add(target, FieldType::Text);
                }
            }
            Step::Condition(c) => {
                let mut names = BTreeSet::new();
                for b in &c.branches {
                    field_names(&b.when, &mut names);
                }
                for n in names {
                    add(&n, FieldType::Text);
                }
            }
            _ => {}
        }
    }
    for (key, t) in wanted {
        let spec: FieldSpec =
            serde_json::from_value(json!({"key": key, "label": key, "type": t.as_str()}))
                .with_context(|| format!("field `{key}`"))?;
        store.create_field(ws, spec.validated()?).await?;
    }
    Ok(())
}

fn field_names(c: &Condition, out: &mut BTreeSet<String>) {
    match c {
        Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| field_names(c, out)),
        Condition::Not(c) => field_names(c, out),
        Condition::Field(cmp) => {
            out.insert(cmp.name.clone());
        }
        _ => {}
    }
}
