//! One signal, or one due timer, becomes one commit.
//!
//! The runner reads the contact and their live runs, decides with [`super::triggers`]
//! which runs to start, resume or end, advances each with the interpreter (chaining the
//! contact's changes from one run to the next), makes any HTTP calls the runs ask for,
//! and hands everything to [`voronka_store::FlowStore::commit_flow`] together with the
//! signal it consumes. A run changed by someone else meanwhile makes the commit fail
//! with `run_changed`; the caller then simply starts over from fresh reads.

use super::exec::{self, ContactView, Cursor, Env, HttpOutcome, Input, Machine, Pause};
use super::triggers::{self, LiveFlow, Message};
use super::{Flows, WorkspaceInfo};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::sync::Arc;
use voronka_core::channel::ChannelKind;
use voronka_core::event::EventKind;
use voronka_core::flow::{FlowDocument, Reentry};
use voronka_core::subscription::SubscriptionState;
use voronka_core::{ChannelId, WorkspaceId};
use voronka_store::{
    Contact, CounterDelta, FlowCommit, FlowCommitted, FlowMessage, FlowRun, FlowSignal,
    NewOutbound, NewRun, NewSignal, RunState, RunStatus, RunWrite, StoreError,
};

/// A run to advance in this commit.
enum Target {
    /// A live run of the contact.
    Existing(FlowRun, Arc<FlowDocument>),
    /// A new run of a live flow.
    New {
        flow: LiveFlow,
        trigger: String,
        data: Value,
        channel: Option<ChannelId>,
    },
}

/// Builds one commit for a contact.
struct Batch<'a> {
    flows: &'a Flows,
    ws: WorkspaceId,
    info: Arc<WorkspaceInfo>,
    view: ContactView,
    commit: FlowCommit,
    now: Timestamp,
}

impl<'a> Batch<'a> {
    fn new(flows: &'a Flows, ws: WorkspaceId, info: Arc<WorkspaceInfo>, contact: &Contact) -> Self {
        Batch {
            flows,
            ws,
            info,
            view: view_of(contact),
            commit: FlowCommit {
                contact_id: contact.id,
                ..FlowCommit::default()
            },
            now: flows.now(),
        }
    }

    async fn channel_kind(&self, id: ChannelId) -> Option<ChannelKind> {
        match self.flows.messaging().runtime(id).await {
            Ok(rt) => Some(rt.channel.kind),
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "a flow's channel is not usable");
                None
            }
        }
    }

    /// The channel a new run talks on: the signal's, else the contact's most recently
    /// subscribed identity, else their newest identity.
    fn pick_channel(&self, preferred: Option<ChannelId>) -> Option<ChannelId> {
        if preferred.is_some() {
            return preferred;
        }
        let ids = &self.view.identities;
        ids.iter()
            .filter(|i| i.subscription.state == SubscriptionState::Subscribed)
            .max_by_key(|i| i.subscription.updated_at)
            .or_else(|| ids.iter().max_by_key(|i| i.created_at))
            .map(|i| i.channel_id)
    }

    /// Ends a live run without advancing it.
    fn end_run(&mut self, run: &FlowRun, status: RunStatus, why: &str) {
        self.commit.counters.push(CounterDelta {
            flow_id: run.flow_id,
            version: run.version,
            step_id: run.step_id.clone(),
            dropped: 1,
            ..CounterDelta::default()
        });
        self.commit.events.push((
            EventKind::FlowEnded,
            json!({"flow_id": run.flow_id, "version": run.version, "status": status.as_str(), "step_id": run.step_id, "reason": why}),
        ));
        self.commit.runs.push(RunWrite::Update {
            id: run.id,
            revision: run.revision,
            state: RunState {
                status,
                step_id: run.step_id.clone(),
                wait: None,
                due_at: None,
                attempts: run.attempts,
                vars: run.vars.clone(),
                error: None,
            },
        });
    }

    /// Advances one run (making its HTTP calls) and adds it to the commit.
    async fn advance(&mut self, target: Target, input: Input, responding: bool) {
        let (doc, flow_id, version, channel, cursor, existing) = match &target {
            Target::Existing(run, doc) => (
                doc.clone(),
                run.flow_id,
                run.version,
                run.channel_id,
                Cursor {
                    status: run.status,
                    step_id: run.step_id.clone(),
                    wait: run.wait,
                    due_at: run.due_at,
                    attempts: run.attempts,
                    vars: run.vars.clone(),
                    error: run.error.clone(),
                },
                Some((run.id, run.revision)),
            ),
            Target::New {
                flow,
                data,
                channel,
                ..
            } => (
                flow.doc.clone(),
                flow.flow_id,
                flow.version,
                self.pick_channel(*channel),
                Cursor::fresh(data.clone()),
                None,
            ),
        };
        let tz = voronka_core::flow::schedule::time_zone(
            self.view.profile.time_zone.as_deref(),
            &self.info.tz,
        );
        let channel = match channel {
            Some(c) => self.channel_kind(c).await.map(|k| (c, k)),
            None => None,
        };
        let env = Env {
            flow_id,
            version,
            now: self.now,
            tz,
            quiet: self.info.quiet,
            channel,
            templates: self.flows.templates(),
            fields: &self.info.fields,
            responding,
            roll: rand::random::<f64>(),
        };
        let before_tags = self.view.tags.clone();
        let mut m = Machine::new(&doc, env, self.view.clone(), cursor);
        let mut pause = m.advance(input);
        while let Pause::Http(call) = pause {
            let outcome = self.call(call).await;
            pause = m.resume_http(outcome);
        }
        let run_index = self.commit.runs.len();
        let state = RunState {
            status: m.cursor.status,
            step_id: m.cursor.step_id.clone(),
            wait: m.cursor.wait,
            due_at: m.cursor.due_at,
            attempts: m.cursor.attempts,
            vars: m.cursor.vars.clone(),
            error: m.cursor.error.clone(),
        };
        match (existing, target) {
            (Some((id, revision)), _) => self.commit.runs.push(RunWrite::Update {
                id,
                revision,
                state,
            }),
            (None, Target::New { flow, trigger, .. }) => {
                self.commit.events.push((
                    EventKind::FlowStarted,
                    json!({"flow_id": flow.flow_id, "version": flow.version, "trigger": trigger}),
                ));
                self.commit.runs.push(RunWrite::Insert(NewRun {
                    flow_id: flow.flow_id,
                    version: flow.version,
                    channel_id: channel.map(|(c, _)| c),
                    state,
                    trigger,
                }))
            }
            (None, Target::Existing(..)) => {}
        }
        let channel = channel.map(|(c, _)| c);
        let fx = std::mem::take(&mut m.effects);
        self.view = m.contact.clone();
        for msg in fx.messages {
            match channel {
                Some(channel_id) => self.commit.messages.push(FlowMessage {
                    run: run_index,
                    outbound: NewOutbound {
                        channel_id,
                        purpose: msg.purpose,
                        message: msg.message,
                        source: format!("flow:{}:{}", flow_id.0, msg.step_id),
                        run_at: None,
                    },
                }),
                None => self.commit.events.push((
                    EventKind::FlowStepFailed,
                    json!({"flow_id": flow_id, "step_id": msg.step_id, "error": "the contact has no channel to send on"}),
                )),
            }
        }
        let c = &mut self.commit.changes;
        for t in fx.add_tags {
            c.remove_tags.retain(|x| *x != t);
            if !c.add_tags.contains(&t) {
                c.add_tags.push(t);
            }
        }
        for t in fx.remove_tags {
            c.add_tags.retain(|x| *x != t);
            if !c.remove_tags.contains(&t) {
                c.remove_tags.push(t);
            }
        }
        for f in fx.fields {
            c.fields.retain(|x| x.field_id() != f.field_id());
            c.fields.push(f);
        }
        if fx.profile.is_some() {
            c.profile = fx.profile;
        }
        if let Some(ch) = channel {
            c.subscribe_topics
                .extend(fx.subscribe_topics.into_iter().map(|t| (ch, t)));
            c.unsubscribe_topics
                .extend(fx.unsubscribe_topics.into_iter().map(|t| (ch, t)));
        }
        self.commit.events.extend(fx.events);
        for delta in fx.counters {
            self.commit.counters.push(delta);
        }
        let contact_id = self.commit.contact_id;
        for (flow, data) in fx.start_flows {
            self.commit.signals.push(NewSignal {
                contact_id,
                channel_id: channel,
                kind: "start_flow".into(),
                data: json!({"flow": flow, "data": data, "trigger": format!("flow:{}", flow_id.0)}),
            });
        }
        // Tags this run added start the flows that listen for them, as a signal in
        // the same commit: exactly once, after this commit.
        let added: Vec<String> = self
            .view
            .tags
            .iter()
            .filter(|t| !before_tags.contains(t))
            .cloned()
            .collect();
        for tag in self.flows.listened_tags(self.ws, &added) {
            self.commit.signals.push(NewSignal {
                contact_id,
                channel_id: channel,
                kind: "tag_added".into(),
                data: json!({ "tag": tag }),
            });
        }
    }

    async fn call(&self, call: exec::HttpCall) -> HttpOutcome {
        use crate::outgoing::OutgoingRequest;
        let method = match http::Method::from_bytes(call.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return HttpOutcome::Error {
                    code: "invalid_method".into(),
                    message: format!("`{}` is not an HTTP method", call.method),
                }
            }
        };
        let req = OutgoingRequest {
            method,
            url: call.url,
            headers: call.headers,
            body: call.body.map(Into::into),
            timeout: call.timeout,
        };
        match self.flows.http().send(req).await {
            Ok(resp) => HttpOutcome::Answer {
                status: resp.status,
                json: resp.json,
                text: String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(2000)
                    .collect(),
            },
            Err(e) => HttpOutcome::Error {
                code: e.code().to_string(),
                message: e.to_string(),
            },
        }
    }

    async fn finish(self) -> Result<FlowCommitted, StoreError> {
        let has_messages = !self.commit.messages.is_empty();
        let has_signals = !self.commit.signals.is_empty();
        let has_timers = self.commit.runs.iter().any(|r| match r {
            RunWrite::Insert(n) => n.state.due_at.is_some(),
            RunWrite::Update { state, .. } => state.due_at.is_some(),
        });
        let flows = self.flows;
        let done = flows.store().commit_flow(self.ws, self.commit).await?;
        if has_messages && !done.queued.is_empty() {
            flows.messaging().wake_outbox();
        }
        if has_signals {
            flows.wake();
        }
        if has_timers {
            flows.wake_timers();
        }
        Ok(done)
    }
}

/// The interpreter's view of a stored contact.
pub(crate) fn view_of(c: &Contact) -> ContactView {
    ContactView {
        id: c.id.0,
        profile: c.profile.clone(),
        tags: c.tags.clone(),
        fields: c.fields.clone(),
        identities: c.identities.clone(),
        source: c.source.clone(),
    }
}

/// Whether a new run of `flow` may start for a contact with these live runs.
async fn may_enter(
    flows: &Flows,
    ws: WorkspaceId,
    contact: voronka_core::ContactId,
    flow: &LiveFlow,
    live: &[FlowRun],
    starting: &[voronka_core::FlowId],
) -> Result<bool, StoreError> {
    if starting.contains(&flow.flow_id) && flow.doc.settings.reentry != Reentry::Always {
        return Ok(false);
    }
    Ok(match flow.doc.settings.reentry {
        Reentry::Always => true,
        Reentry::AfterEnd => !live.iter().any(|r| r.flow_id == flow.flow_id),
        Reentry::Once => !flows.store().ever_ran(ws, contact, flow.flow_id).await?,
    })
}

/// A run of each planned new flow: the flows starting in this commit.
fn starting(plan: &[(Target, Input, bool)]) -> Vec<voronka_core::FlowId> {
    plan.iter()
        .filter_map(|(t, _, _)| match t {
            Target::New { flow, .. } => Some(flow.flow_id),
            Target::Existing(..) => None,
        })
        .collect()
}

/// Plans a new run of `flow`.
fn push_new(
    plan: &mut Vec<(Target, Input, bool)>,
    flow: &LiveFlow,
    trigger: String,
    data: Value,
    channel: Option<ChannelId>,
    responding: bool,
) {
    plan.push((
        Target::New {
            flow: flow.clone(),
            trigger,
            data,
            channel,
        },
        Input::Start,
        responding,
    ));
}

/// Handles one signal in one commit (which also consumes it).
pub(crate) async fn handle_signal(flows: &Flows, s: &FlowSignal) -> Result<(), StoreError> {
    let ws = s.workspace_id;
    let store = flows.store();
    let info = flows.workspace(ws).await?;
    let contact = store.get_contact(ws, s.contact_id).await?;
    let live = store.live_runs(ws, contact.id).await?;
    let live_flows = flows.live_flows(ws);
    let mut batch = Batch::new(flows, ws, info, &contact);
    batch.commit.consume.push(s.id);
    let str_of = |k: &str| {
        s.data
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    // (run or new flow, input, responding)
    let mut plan: Vec<(Target, Input, bool)> = Vec::new();
    match s.kind.as_str() {
        "stop" => {
            for run in &live {
                batch.end_run(run, RunStatus::Stopped, "stop");
            }
        }
        "inbound" => {
            let text = str_of("text");
            let payload = s
                .data
                .get("payload")
                .and_then(Value::as_str)
                .map(str::to_string);
            let reference = s
                .data
                .get("ref")
                .and_then(Value::as_str)
                .map(str::to_string);
            let subscribed = s
                .data
                .get("subscribed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let channel = match s.channel_id {
                Some(c) => batch.channel_kind(c).await.map(|k| (c, k)),
                None => None,
            };
            let message = Message {
                channel,
                text: &text,
                payload: payload.as_deref(),
                reference: reference.as_deref(),
                subscribed,
            };
            // exit_on rules of the runs' own versions end them first.
            let mut ended = Vec::new();
            for run in &live {
                let doc = flows.document(ws, run.flow_id, run.version).await?;
                // The rules of the run's own version, which may differ from the live one.
                if triggers::exit_on_message(&doc, &message) {
                    batch.end_run(run, RunStatus::Cancelled, "exit_on");
                    ended.push(run.id);
                }
            }
            let remaining: Vec<&FlowRun> = live.iter().filter(|r| !ended.contains(&r.id)).collect();
            if remaining
                .iter()
                .any(|r| r.wait == Some(voronka_store::WaitKind::Handoff))
            {
                // A human has the conversation: the bot stays quiet.
            } else if let Some(run) = remaining
                .iter()
                .find(|r| r.wait == Some(voronka_store::WaitKind::Answer))
            {
                let doc = flows.document(ws, run.flow_id, run.version).await?;
                plan.push((
                    Target::Existing((*run).clone(), doc),
                    Input::Reply { text, payload },
                    true,
                ));
            } else if let Some(run) = remaining.iter().find(|r| {
                r.wait == Some(voronka_store::WaitKind::Button)
                    && payload.as_deref().is_some_and(|p| {
                        p.starts_with(&format!("{}{}:", exec::PAYLOAD_PREFIX, r.flow_id.0))
                    })
            }) {
                let doc = flows.document(ws, run.flow_id, run.version).await?;
                plan.push((
                    Target::Existing((*run).clone(), doc),
                    Input::Reply { text, payload },
                    true,
                ));
            } else if payload
                .as_deref()
                .is_some_and(|p| p.starts_with(exec::PAYLOAD_PREFIX))
            {
                // A button of a flow message whose run moved on: nothing to do.
            } else if let Some((i, label)) = triggers::for_message(&live_flows, &message) {
                if let Some(f) = live_flows.get(i) {
                    if may_enter(flows, ws, contact.id, f, &live, &starting(&plan)).await? {
                        push_new(&mut plan, f, label, s.data.clone(), s.channel_id, true);
                    }
                }
            } else if let Some(run) = remaining
                .iter()
                .find(|r| r.wait == Some(voronka_store::WaitKind::Button) && payload.is_none())
            {
                // Typed text while buttons wait: the step's `next` (if any) takes it.
                let doc = flows.document(ws, run.flow_id, run.version).await?;
                plan.push((
                    Target::Existing((*run).clone(), doc),
                    Input::Reply { text, payload },
                    true,
                ));
            }
        }
        "tag_added" | "event" => {
            let name = if s.kind == "tag_added" {
                str_of("tag")
            } else {
                str_of("name")
            };
            for run in &live {
                let doc = flows.document(ws, run.flow_id, run.version).await?;
                if doc
                    .exit_on
                    .iter()
                    .any(|t| triggers::matches_signal(t, &s.kind, &name))
                {
                    batch.end_run(run, RunStatus::Cancelled, &format!("{}:{name}", s.kind));
                }
            }
            let data = s
                .data
                .get("data")
                .cloned()
                .unwrap_or_else(|| s.data.clone());
            let still_live: Vec<FlowRun> = live
                .iter()
                .filter(|r| {
                    !batch
                        .commit
                        .runs
                        .iter()
                        .any(|w| matches!(w, RunWrite::Update { id, .. } if *id == r.id))
                })
                .cloned()
                .collect();
            for (i, label) in triggers::for_signal(&live_flows, &s.kind, &name) {
                if let Some(f) = live_flows.get(i) {
                    if may_enter(flows, ws, contact.id, f, &still_live, &starting(&plan)).await? {
                        push_new(&mut plan, f, label, data.clone(), s.channel_id, false);
                    }
                }
            }
        }
        "start_flow" | "field_date" | "inactivity" => {
            let wanted = str_of("flow");
            let found = live_flows
                .iter()
                .find(|f| f.flow_id.0.to_string() == wanted || f.name == wanted);
            match found {
                Some(f) => {
                    if may_enter(flows, ws, contact.id, f, &live, &starting(&plan)).await? {
                        let trigger = s
                            .data
                            .get("trigger")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_else(|| s.kind.clone());
                        let data = s.data.get("data").cloned().unwrap_or(Value::Null);
                        push_new(&mut plan, f, trigger, data, s.channel_id, false);
                    }
                }
                None => batch.commit.events.push((
                    EventKind::FlowStepFailed,
                    json!({"error": format!("flow `{wanted}` is not published"), "signal": s.kind}),
                )),
            }
        }
        "release" => {
            for run in &live {
                if run.wait == Some(voronka_store::WaitKind::Handoff) {
                    let doc = flows.document(ws, run.flow_id, run.version).await?;
                    plan.push((Target::Existing(run.clone(), doc), Input::Release, false));
                }
            }
        }
        other => {
            tracing::warn!(signal = %s.id, kind = other, "unknown flow signal; dropped");
        }
    }
    for (target, input, responding) in plan {
        batch.advance(target, input, responding).await;
    }
    batch.finish().await?;
    Ok(())
}

/// Handles a due run (a delay ended or a wait timed out) in one commit.
pub(crate) async fn handle_due(flows: &Flows, run: &FlowRun) -> Result<(), StoreError> {
    let ws = run.workspace_id;
    let store = flows.store();
    let info = flows.workspace(ws).await?;
    let contact = store.get_contact(ws, run.contact_id).await?;
    let doc = flows.document(ws, run.flow_id, run.version).await?;
    let mut batch = Batch::new(flows, ws, info, &contact);
    batch
        .advance(Target::Existing(run.clone(), doc), Input::Wake, false)
        .await;
    batch.finish().await?;
    Ok(())
}

/// A contact's signals in order; a `run_changed` conflict is retried from fresh reads.
pub(crate) async fn handle_signals(flows: &Flows, signals: Vec<FlowSignal>) {
    for s in signals {
        let mut tries = 0;
        loop {
            tries += 1;
            match handle_signal(flows, &s).await {
                Ok(()) => break,
                Err(StoreError::Conflict {
                    code: "run_changed",
                    ..
                }) if tries < 5 => continue,
                Err(e) => {
                    let park = s.attempts >= 5 || matches!(e, StoreError::NotFound { .. });
                    tracing::warn!(signal = %s.id, kind = %s.kind, error = %e, park, "a flow signal failed");
                    if let Err(e2) = flows.store().fail_signal(s.id, &e.to_string(), park).await {
                        tracing::error!(signal = %s.id, error = %e2, "cannot record a signal's failure");
                    }
                    break;
                }
            }
        }
    }
}

/// A contact's due runs in order; a conflict means the run moved on: nothing to do.
pub(crate) async fn handle_due_runs(flows: &Flows, runs: Vec<FlowRun>) {
    for run in runs {
        match handle_due(flows, &run).await {
            Ok(()) => {}
            Err(StoreError::Conflict {
                code: "run_changed",
                ..
            }) => {}
            Err(e) => {
                // The lease runs out and the timer comes back: a transient store error
                // is retried, a broken run keeps failing loudly in the log.
                tracing::warn!(run = %run.id, error = %e, "a due flow run failed");
            }
        }
    }
}
