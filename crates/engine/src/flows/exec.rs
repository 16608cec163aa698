//! The flow interpreter: moves one run through its steps, without I/O.
//!
//! The runner loads a run and its contact, hands them here with what happened (the run
//! starts, a timer fired, the contact answered, an HTTP call returned), and gets back
//! the run's new position and everything to write — messages, contact changes, events,
//! counters, signals — which the store then commits in one transaction. An HTTP step
//! pauses the interpreter ([`Pause::Http`]); the runner makes the call and resumes the
//! same machine, so the whole advance is still one commit.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use voronka_core::channel::ChannelKind;
use voronka_core::contact::Profile;
use voronka_core::event::EventKind;
use voronka_core::field::{FieldDefinition, FieldType, FieldValue};
use voronka_core::flow::schedule::{self, QuietHours};
use voronka_core::flow::template::Templates;
use voronka_core::flow::{self, answer, duration, Action, Condition, Expect, FlowDocument, Step};
use voronka_core::message::{Button, Media, OutboundMessage, Purpose};
use voronka_core::subscription::SubscriptionState;
use voronka_core::{ChannelId, FlowId};
use voronka_store::{CounterDelta, Identity, RunStatus, WaitKind};

/// Most steps one advance may execute before the run is failed: only a loop without a
/// wait gets there, and the validator refuses those, so this guards old documents.
const MAX_STEPS_PER_ADVANCE: usize = 200;
/// Prefix of the payloads of flow buttons: `flow:<flow id>:<step id>:<index>`.
pub const PAYLOAD_PREFIX: &str = "flow:";

/// What happened to the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The run starts at the document's first step.
    Start,
    /// Its timer fired (a delay ended or a wait timed out).
    Wake,
    /// The contact wrote (or pressed a button resolved to `payload`).
    Reply {
        /// The text, empty for a bare button press.
        text: String,
        /// The payload of the button it answers, if any.
        payload: Option<String>,
    },
    /// An operator released a handed-off conversation.
    Release,
}

/// The result of an HTTP step's call.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpOutcome {
    /// An answer arrived.
    Answer {
        /// Status code.
        status: u16,
        /// The body, parsed when it is JSON.
        json: Option<Value>,
        /// The body as text (cut), when it is not JSON.
        text: String,
    },
    /// No answer: time-out, refused address, connection error.
    Error {
        /// Machine code.
        code: String,
        /// What happened.
        message: String,
    },
}

/// An HTTP call the run wants made.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    /// Method.
    pub method: String,
    /// Rendered URL.
    pub url: String,
    /// Rendered headers.
    pub headers: Vec<(String, String)>,
    /// Rendered body.
    pub body: Option<String>,
    /// Time limit.
    pub timeout: std::time::Duration,
}

/// Why [`Machine::advance`] returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Pause {
    /// The run waits or ended: commit.
    Settled,
    /// Make this call, then [`Machine::resume_http`].
    Http(HttpCall),
}

/// A message the run sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Why.
    pub purpose: Purpose,
    /// What.
    pub message: OutboundMessage,
    /// The step sending it.
    pub step_id: String,
}

/// Everything an advance decided besides the run's position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Messages on the run's channel.
    pub messages: Vec<Outgoing>,
    /// Tags added.
    pub add_tags: Vec<String>,
    /// Tags removed.
    pub remove_tags: Vec<String>,
    /// Field values set.
    pub fields: Vec<FieldValue>,
    /// The new profile, when an answer or action changed it.
    pub profile: Option<Profile>,
    /// Topics subscribed on the run's channel.
    pub subscribe_topics: Vec<String>,
    /// Topics unsubscribed on the run's channel.
    pub unsubscribe_topics: Vec<String>,
    /// Events for the contact's log.
    pub events: Vec<(EventKind, Value)>,
    /// Counter increments.
    pub counters: Vec<CounterDelta>,
    /// Other flows to start: (flow name or id, data).
    pub start_flows: Vec<(String, Value)>,
}

/// The position of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// Status.
    pub status: RunStatus,
    /// Current step.
    pub step_id: String,
    /// What it waits for.
    pub wait: Option<WaitKind>,
    /// When it wakes.
    pub due_at: Option<Timestamp>,
    /// Invalid answers to the current question.
    pub attempts: u32,
    /// Variables.
    pub vars: Value,
    /// Failure reason.
    pub error: Option<String>,
}

impl Cursor {
    /// The position of a run about to start.
    pub fn fresh(trigger_data: Value) -> Cursor {
        Cursor {
            status: RunStatus::Active,
            step_id: String::new(),
            wait: None,
            due_at: None,
            attempts: 0,
            vars: json!({ "trigger": trigger_data }),
            error: None,
        }
    }
}

/// The contact as the interpreter sees (and changes) it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactView {
    /// Id (for templates and HTTP bodies).
    pub id: i64,
    /// Profile.
    pub profile: Profile,
    /// Tag names.
    pub tags: Vec<String>,
    /// Field values by key, as JSON.
    pub fields: BTreeMap<String, Value>,
    /// Identities with subscriptions.
    pub identities: Vec<Identity>,
    /// First-touch source.
    pub source: Option<String>,
}

/// What the interpreter knows about the world.
pub struct Env<'a> {
    /// The flow.
    pub flow_id: FlowId,
    /// The version being run.
    pub version: u32,
    /// Now.
    pub now: Timestamp,
    /// The contact's time zone (the workspace's when they have none).
    pub tz: TimeZone,
    /// The workspace's quiet hours, for smart delays.
    pub quiet: Option<QuietHours>,
    /// The run's channel.
    pub channel: Option<(ChannelId, ChannelKind)>,
    /// Template engine.
    pub templates: &'a Templates,
    /// The workspace's custom fields.
    pub fields: &'a [FieldDefinition],
    /// Whether this advance answers something the contact just did (messages are then
    /// responses unless the flow or step says otherwise).
    pub responding: bool,
    /// A random number in [0, 1) for splits.
    pub roll: f64,
}

/// One run being advanced.
pub struct Machine<'a> {
    doc: &'a FlowDocument,
    env: Env<'a>,
    /// The contact, with this advance's changes applied.
    pub contact: ContactView,
    /// The run's position.
    pub cursor: Cursor,
    /// What to write.
    pub effects: Effects,
    steps: usize,
    /// The step an HTTP call is pending for.
    pending_http: Option<String>,
}

/// A step that could not be done; the run follows the step's error branch.
#[derive(Debug, Clone, PartialEq)]
struct StepError(String);

impl<'a> Machine<'a> {
    /// Prepares an advance.
    pub fn new(doc: &'a FlowDocument, env: Env<'a>, contact: ContactView, cursor: Cursor) -> Self {
        Machine {
            doc,
            env,
            contact,
            cursor,
            effects: Effects::default(),
            steps: 0,
            pending_http: None,
        }
    }

    /// Applies `input` and runs until the run waits, ends, or needs an HTTP call.
    pub fn advance(&mut self, input: Input) -> Pause {
        match input {
            Input::Start => {
                let start = self.doc.start.clone();
                self.goto(Some(start))
            }
            Input::Wake => self.wake(),
            Input::Reply { text, payload } => self.reply(&text, payload.as_deref()),
            Input::Release => {
                if self.cursor.wait != Some(WaitKind::Handoff) {
                    return Pause::Settled;
                }
                let next = match self.current() {
                    Some(Step::Handoff(h)) => h.next.clone(),
                    _ => None,
                };
                self.leave_forward(next)
            }
        }
    }

    /// Continues after the HTTP call [`Pause::Http`] asked for.
    pub fn resume_http(&mut self, outcome: HttpOutcome) -> Pause {
        let Some(step_id) = self.pending_http.take() else {
            return Pause::Settled;
        };
        let Some(Step::Http(h)) = self.doc.step(&step_id) else {
            return self.fail(&format!("step `{step_id}` vanished"));
        };
        let h = h.clone();
        let (status, json_body, text) = match outcome {
            HttpOutcome::Error { code, message } => {
                return self.step_failed(&h.id, &format!("{code}: {message}"), h.on_error.clone());
            }
            HttpOutcome::Answer { status, json, text } => (status, json, text),
        };
        let body = json_body.clone().unwrap_or(Value::String(text));
        self.set_var_path(&["http"], json!({ "status": status, "body": body }));
        if !(200..300).contains(&status) {
            return self.step_failed(
                &h.id,
                &format!("the endpoint answered {status}"),
                h.on_error.clone(),
            );
        }
        for (target, pointer) in &h.save {
            let Some(found) = json_body.as_ref().and_then(|b| b.pointer(pointer)).cloned() else {
                return self.step_failed(
                    &h.id,
                    &format!("the answer has nothing at `{pointer}` to save into `{target}`"),
                    h.on_error.clone(),
                );
            };
            if let Err(e) = self.store_value(target, found) {
                return self.step_failed(&h.id, &e.0, h.on_error.clone());
            }
        }
        self.leave_forward(h.next.clone())
    }

    fn current(&self) -> Option<&'a Step> {
        self.doc.step(&self.cursor.step_id)
    }

    fn counter(&mut self, step: &str, f: impl FnOnce(&mut CounterDelta)) {
        let pos = self.effects.counters.iter().position(|c| c.step_id == step);
        let i = match pos {
            Some(i) => i,
            None => {
                self.effects.counters.push(CounterDelta {
                    flow_id: self.env.flow_id,
                    version: self.env.version,
                    step_id: step.to_string(),
                    ..CounterDelta::default()
                });
                self.effects.counters.len() - 1
            }
        };
        if let Some(c) = self.effects.counters.get_mut(i) {
            f(c);
        }
    }

    /// Leaves the current step forward to `next` (or ends the run as done).
    fn leave_forward(&mut self, next: Option<String>) -> Pause {
        let here = self.cursor.step_id.clone();
        if !here.is_empty() {
            self.counter(&here, |c| c.completed += 1);
        }
        self.goto(next)
    }

    /// Ends the run at the current step.
    fn end(&mut self, status: RunStatus, error: Option<String>) -> Pause {
        let here = self.cursor.step_id.clone();
        if !here.is_empty() && status != RunStatus::Done {
            self.counter(&here, |c| c.dropped += 1);
        }
        self.cursor.status = status;
        self.cursor.wait = None;
        self.cursor.due_at = None;
        self.cursor.error = error;
        self.effects.events.push((
            EventKind::FlowEnded,
            json!({"flow_id": self.env.flow_id, "version": self.env.version, "status": status.as_str(), "step_id": here}),
        ));
        Pause::Settled
    }

    fn fail(&mut self, why: &str) -> Pause {
        self.end(RunStatus::Failed, Some(why.to_string()))
    }

    /// A step failed: log it on the contact, then follow `on_error` or fail the run.
    fn step_failed(&mut self, step: &str, why: &str, on_error: Option<String>) -> Pause {
        self.effects.events.push((
            EventKind::FlowStepFailed,
            json!({"flow_id": self.env.flow_id, "step_id": step, "error": why}),
        ));
        match on_error {
            Some(next) => {
                self.counter(step, |c| c.dropped += 1);
                self.cursor.error = Some(why.to_string());
                self.enter(next)
            }
            None => self.fail(why),
        }
    }

    fn goto(&mut self, next: Option<String>) -> Pause {
        match next {
            Some(next) => self.enter(next),
            None => self.end(RunStatus::Done, None),
        }
    }

    /// Enters a step and runs it (and the ones after it) until something waits.
    fn enter(&mut self, id: String) -> Pause {
        self.steps += 1;
        if self.steps > MAX_STEPS_PER_ADVANCE {
            return self.fail("too many steps without a wait (a loop?)");
        }
        let Some(step) = self.doc.step(&id) else {
            return self.fail(&format!("step `{id}` does not exist"));
        };
        self.cursor.step_id = id.clone();
        self.cursor.status = RunStatus::Active;
        self.cursor.wait = None;
        self.cursor.due_at = None;
        self.cursor.attempts = 0;
        self.counter(&id, |c| c.entered += 1);
        match step {
            Step::Send(s) => {
                let message = match self.compose(s) {
                    Ok(m) => m,
                    Err(e) => return self.step_failed(&s.id, &e.0, s.on_error.clone()),
                };
                self.say(s.purpose, message);
                if s.buttons.iter().any(|b| b.next.is_some()) {
                    let due = match &s.timeout {
                        Some(t) => match self.after(&t.after) {
                            Ok(at) => Some(at),
                            Err(e) => return self.step_failed(&s.id, &e.0, s.on_error.clone()),
                        },
                        None => None,
                    };
                    return self.wait(WaitKind::Button, due);
                }
                self.leave_forward(s.next.clone())
            }
            Step::Ask(a) => {
                if let Err(e) = self.ask(a, &a.text) {
                    return self.step_failed(&a.id, &e.0, a.on_error.clone());
                }
                let due = match &a.timeout {
                    Some(t) => match self.after(&t.after) {
                        Ok(at) => Some(at),
                        Err(e) => return self.step_failed(&a.id, &e.0, a.on_error.clone()),
                    },
                    None => None,
                };
                self.wait(WaitKind::Answer, due)
            }
            Step::Condition(c) => {
                let mut next = c.otherwise.clone();
                for b in &c.branches {
                    if self.holds(&b.when) {
                        next = b.next.clone();
                        break;
                    }
                }
                self.leave_forward(Some(next))
            }
            Step::Split(s) => {
                // A contact that comes back to a split keeps its variant (A/B integrity).
                let assigned = self
                    .cursor
                    .vars
                    .pointer(&format!("/split/{}", escape_pointer(&s.id)))
                    .and_then(Value::as_str)
                    .and_then(|name| s.variants.iter().find(|v| v.name == name));
                let variant = match assigned {
                    Some(v) => Some(v),
                    None => pick(&s.variants, self.env.roll),
                };
                let Some(variant) = variant else {
                    return self.fail("the split has no variant with a weight");
                };
                let (name, next) = (variant.name.clone(), variant.next.clone());
                self.set_var_path(&["split", &s.id], Value::String(name));
                self.leave_forward(Some(next))
            }
            Step::Action(a) => {
                for action in &a.actions {
                    if let Err(e) = self.act(action) {
                        return self.step_failed(&a.id, &e.0, a.on_error.clone());
                    }
                }
                self.leave_forward(a.next.clone())
            }
            Step::Delay(d) => match self.delay_until(d) {
                Ok(Some(at)) => self.wait(WaitKind::Delay, Some(at)),
                Ok(None) => {
                    let next = d.if_past.clone().or_else(|| d.next.clone());
                    self.leave_forward(next)
                }
                Err(e) => self.step_failed(&d.id, &e.0, None),
            },
            Step::Http(h) => match self.http_call(h) {
                Ok(call) => {
                    self.pending_http = Some(h.id.clone());
                    Pause::Http(call)
                }
                Err(e) => self.step_failed(&h.id, &e.0, h.on_error.clone()),
            },
            Step::StartFlow(s) => {
                self.effects.start_flows.push((
                    s.flow.clone(),
                    json!({"from_flow": self.env.flow_id, "vars": self.cursor.vars.get("vars")}),
                ));
                self.leave_forward(s.next.clone())
            }
            Step::Handoff(h) => {
                let note = match &h.note {
                    Some(t) => match self.render(t) {
                        Ok(n) => Some(n),
                        Err(e) => return self.step_failed(&h.id, &e.0, None),
                    },
                    None => None,
                };
                self.effects.events.push((
                    EventKind::HandedOff,
                    json!({"flow_id": self.env.flow_id, "step_id": h.id, "note": note}),
                ));
                self.wait(WaitKind::Handoff, None)
            }
            Step::Stop(_) => {
                self.counter(&id, |c| c.completed += 1);
                self.cursor.status = RunStatus::Stopped;
                self.cursor.error = None;
                self.effects.events.push((
                    EventKind::FlowEnded,
                    json!({"flow_id": self.env.flow_id, "version": self.env.version, "status": "stopped", "step_id": id}),
                ));
                Pause::Settled
            }
        }
    }

    fn wait(&mut self, kind: WaitKind, due: Option<Timestamp>) -> Pause {
        self.cursor.status = RunStatus::Waiting;
        self.cursor.wait = Some(kind);
        self.cursor.due_at = due;
        Pause::Settled
    }

    fn wake(&mut self) -> Pause {
        let Some(step) = self.current() else {
            return self.fail(&format!("step `{}` does not exist", self.cursor.step_id));
        };
        match (self.cursor.wait, step) {
            (Some(WaitKind::Delay), Step::Delay(d)) => self.leave_forward(d.next.clone()),
            (Some(WaitKind::Answer), Step::Ask(a)) => match &a.timeout {
                Some(t) => {
                    self.counter(&a.id, |c| c.dropped += 1);
                    self.enter(t.next.clone())
                }
                None => Pause::Settled,
            },
            (Some(WaitKind::Button), Step::Send(s)) => match &s.timeout {
                Some(t) => {
                    self.counter(&s.id, |c| c.dropped += 1);
                    self.enter(t.next.clone())
                }
                None => Pause::Settled,
            },
            // A timer for a wait that has moved on (a stale claim): nothing to do.
            _ => Pause::Settled,
        }
    }

    fn reply(&mut self, text: &str, payload: Option<&str>) -> Pause {
        let Some(step) = self.current() else {
            return Pause::Settled;
        };
        match (self.cursor.wait, step) {
            (Some(WaitKind::Answer), Step::Ask(a)) => {
                let own = payload.and_then(|p| self.own_button(p, &a.id));
                let today = self.env.now.to_zoned(self.env.tz.clone()).date();
                let checked = match own {
                    Some(i) => a
                        .choices
                        .get(i)
                        .map(|c| answer::Answer {
                            value: Value::String(c.stored().to_string()),
                            display: c.label.clone(),
                            choice: Some(i),
                        })
                        .ok_or_else(|| "no such choice".to_string()),
                    None => answer::check(a.expect, &a.choices, text, payload, today),
                };
                match checked {
                    Ok(ans) => {
                        if ans.choice.is_some() {
                            self.counter(&a.id, |c| c.clicked += 1);
                        }
                        self.set_var_path(&["answers", &a.id], ans.value.clone());
                        if let Some(field) = &a.field {
                            if let Err(e) = self.store_value(field, ans.value.clone()) {
                                return self.step_failed(&a.id, &e.0, a.on_error.clone());
                            }
                        }
                        let next = ans
                            .choice
                            .and_then(|i| a.choices.get(i))
                            .and_then(|c| c.next.clone())
                            .or_else(|| a.next.clone());
                        self.leave_forward(next)
                    }
                    Err(_) => {
                        self.cursor.attempts += 1;
                        if self.cursor.attempts > a.retries {
                            self.counter(&a.id, |c| c.dropped += 1);
                            return match &a.on_fail {
                                Some(next) => self.enter(next.clone()),
                                None => self.end(RunStatus::Failed, Some("no valid answer".into())),
                            };
                        }
                        let retry = a
                            .retry_text
                            .clone()
                            .unwrap_or_else(|| answer::default_retry_text(a.expect).to_string());
                        if let Err(e) = self.ask(a, &retry) {
                            return self.step_failed(&a.id, &e.0, a.on_error.clone());
                        }
                        Pause::Settled
                    }
                }
            }
            (Some(WaitKind::Button), Step::Send(s)) => {
                let pressed = payload.and_then(|p| self.own_button(p, &s.id));
                match pressed.and_then(|i| s.buttons.get(i).map(|b| (i, b))) {
                    Some((_, b)) => {
                        self.counter(&s.id, |c| c.clicked += 1);
                        let value = b.value.clone().unwrap_or_else(|| b.label.clone());
                        self.set_var_path(&["answers", &s.id], Value::String(value));
                        self.leave_forward(b.next.clone().or_else(|| s.next.clone()))
                    }
                    None if s.next.is_some() => self.leave_forward(s.next.clone()),
                    None => Pause::Settled,
                }
            }
            _ => Pause::Settled,
        }
    }

    /// Which button of `step` a payload names, if it is one of this flow's.
    fn own_button(&self, payload: &str, step: &str) -> Option<usize> {
        let rest = payload.strip_prefix(PAYLOAD_PREFIX)?;
        let (flow, rest) = rest.split_once(':')?;
        let (step_id, index) = rest.rsplit_once(':')?;
        (flow == self.env.flow_id.0.to_string() && step_id == step)
            .then(|| index.parse().ok())
            .flatten()
    }

    fn button_payload(&self, step: &str, index: usize) -> String {
        format!("{PAYLOAD_PREFIX}{}:{step}:{index}", self.env.flow_id.0)
    }

    fn compose(&self, s: &flow::SendStep) -> Result<OutboundMessage, StepError> {
        let text = match &s.text {
            Some(t) => Some(self.render(t)?),
            None => None,
        };
        let media = match &s.media {
            Some(m) => Some(Media {
                kind: m.kind,
                url: self.render(&m.url)?,
                file_name: m.file_name.clone(),
            }),
            None => None,
        };
        let mut buttons = Vec::with_capacity(s.buttons.len());
        for (i, b) in s.buttons.iter().enumerate() {
            let label = self.render(&b.label)?;
            buttons.push(match (&b.url, &b.next) {
                (Some(url), _) => Button::Url {
                    label,
                    url: self.render(url)?,
                },
                (None, Some(_)) => Button::Postback {
                    label,
                    payload: self.button_payload(&s.id, i),
                },
                (None, None) => Button::Reply {
                    label,
                    payload: b.value.clone(),
                },
            });
        }
        let text = text.filter(|t| !t.trim().is_empty());
        OutboundMessage {
            text,
            media,
            buttons,
            cards: Vec::new(),
        }
        .validated()
        .map_err(|e| StepError(format!("the message is not valid: {e}")))
    }

    fn ask(&mut self, a: &flow::AskStep, text: &str) -> Result<(), StepError> {
        let text = self.render(text)?;
        let buttons = if a.expect == Expect::Choice {
            a.choices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(Button::Reply {
                        label: self.render(&c.label)?,
                        payload: Some(self.button_payload(&a.id, i)),
                    })
                })
                .collect::<Result<Vec<_>, StepError>>()?
        } else {
            Vec::new()
        };
        let message = OutboundMessage {
            text: Some(text),
            buttons,
            ..OutboundMessage::default()
        }
        .validated()
        .map_err(|e| StepError(format!("the question is not valid: {e}")))?;
        // A question always answers the contact's flow: it is a response when they
        // just wrote, otherwise it follows the flow's purpose like any message.
        self.say(None, message);
        Ok(())
    }

    fn say(&mut self, purpose: Option<Purpose>, message: OutboundMessage) {
        let purpose = purpose
            .or(self.doc.settings.purpose)
            .unwrap_or(if self.env.responding {
                Purpose::Response
            } else {
                Purpose::Marketing
            });
        self.effects.messages.push(Outgoing {
            purpose,
            message,
            step_id: self.cursor.step_id.clone(),
        });
    }

    fn after(&self, text: &str) -> Result<Timestamp, StepError> {
        let d = duration::parse_positive(text).map_err(StepError)?;
        Ok(schedule::after(self.env.now, d))
    }

    /// When a delay ends; `None` when that moment has passed.
    fn delay_until(&self, d: &flow::DelayStep) -> Result<Option<Timestamp>, StepError> {
        let now = self.env.now;
        let tz = &self.env.tz;
        let mut at = if let Some(text) = &d.duration {
            self.after(text)?
        } else if let Some(text) = &d.until {
            let text = self.render(text)?;
            schedule::until_local(&text, now, tz).map_err(StepError)?
        } else if let Some(fm) = &d.until_field {
            let value = self
                .value_of(&fm.field)
                .ok_or_else(|| StepError(format!("the contact has no `{}`", fm.field)))?;
            let offset = match &fm.offset {
                Some(o) => duration::parse(o).map_err(StepError)?,
                None => jiff::SignedDuration::ZERO,
            };
            let at_time = match &fm.at {
                Some(t) => Some(schedule::parse_hhmm(t).map_err(StepError)?),
                None => None,
            };
            schedule::from_field(&value, at_time, offset, tz).map_err(StepError)?
        } else if let Some(w) = &d.window {
            let days = w
                .weekdays
                .iter()
                .map(|d| schedule::parse_weekday(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StepError)?;
            let from = schedule::parse_hhmm(&w.from).map_err(StepError)?;
            let to = schedule::parse_hhmm(&w.to).map_err(StepError)?;
            schedule::next_in_window(now, &days, from, to, tz)
        } else {
            return Err(StepError(
                "the delay says neither how long nor until when".into(),
            ));
        };
        if d.smart {
            if let Some(q) = &self.env.quiet {
                at = q.next_allowed(at, tz);
            }
        }
        Ok((at > now).then_some(at))
    }

    fn http_call(&self, h: &flow::HttpStep) -> Result<HttpCall, StepError> {
        let url = self.render(&h.url)?;
        let mut headers = Vec::with_capacity(h.headers.len() + 1);
        for (k, v) in &h.headers {
            headers.push((k.clone(), self.render(v)?));
        }
        let method = h.method.to_ascii_uppercase();
        let body = match (&h.body, method.as_str()) {
            (_, "GET") => None,
            (Some(t), _) => Some(self.render(t)?),
            (None, _) => {
                if !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                Some(self.context()["contact"].to_string())
            }
        };
        let timeout = match &h.timeout {
            Some(t) => duration::parse_positive(t)
                .map_err(StepError)?
                .unsigned_abs()
                .min(std::time::Duration::from_secs(30)),
            None => std::time::Duration::from_secs(10),
        };
        Ok(HttpCall {
            method,
            url,
            headers,
            body,
            timeout,
        })
    }

    fn act(&mut self, action: &Action) -> Result<(), StepError> {
        match action {
            Action::AddTag(tag) => {
                if !self.contact.tags.iter().any(|t| t == tag) {
                    self.contact.tags.push(tag.clone());
                    self.effects.remove_tags.retain(|t| t != tag);
                    self.effects.add_tags.push(tag.clone());
                }
            }
            Action::RemoveTag(tag) => {
                if self.contact.tags.iter().any(|t| t == tag) {
                    self.contact.tags.retain(|t| t != tag);
                    self.effects.add_tags.retain(|t| t != tag);
                    self.effects.remove_tags.push(tag.clone());
                }
            }
            Action::SetField { field, value } => {
                let rendered = self.render(value)?;
                self.store_value(field, Value::String(rendered))?;
            }
            Action::SetVar { name, value } => {
                let rendered = self.render(value)?;
                self.set_var_path(&["vars", name], Value::String(rendered));
            }
            Action::Subscribe(topic) => self.effects.subscribe_topics.push(topic.clone()),
            Action::Unsubscribe(topic) => self.effects.unsubscribe_topics.push(topic.clone()),
            Action::Notify(text) => {
                let text = self.render(text)?;
                self.effects.events.push((
                    EventKind::OperatorNotified,
                    json!({"flow_id": self.env.flow_id, "step_id": self.cursor.step_id, "text": text}),
                ));
            }
            Action::Conversion {
                name,
                value,
                currency,
            } => {
                self.effects.events.push((
                    EventKind::Conversion,
                    json!({"flow_id": self.env.flow_id, "step_id": self.cursor.step_id, "name": name, "value": value, "currency": currency}),
                ));
            }
        }
        Ok(())
    }

    /// Stores a value into a profile attribute, a custom field, or `var.<name>`.
    fn store_value(&mut self, target: &str, value: Value) -> Result<(), StepError> {
        if let Some(name) = target.strip_prefix("var.") {
            self.set_var_path(&["vars", name], value);
            return Ok(());
        }
        if Profile::ATTRIBUTES.contains(&target) {
            let text = match value {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let mut patch = serde_json::Map::new();
            patch.insert(
                target.to_string(),
                if text.trim().is_empty() {
                    Value::Null
                } else {
                    Value::String(text.trim().to_string())
                },
            );
            let patch: voronka_core::contact::ProfilePatch =
                serde_json::from_value(Value::Object(patch))
                    .map_err(|e| StepError(format!("`{target}`: {e}")))?;
            let profile = patch
                .apply(&self.contact.profile)
                .map_err(|e| StepError(e.to_string()))?;
            self.contact.profile = profile.clone();
            self.effects.profile = Some(profile);
            return Ok(());
        }
        let Some(def) = self.env.fields.iter().find(|f| f.spec.key == target) else {
            return Err(StepError(format!("there is no field `{target}`")));
        };
        // Numbers and dates come out of templates as text; the field parses them.
        let value = match (&value, def.spec.field_type) {
            (Value::String(s), FieldType::Number) => s
                .trim()
                .replace(',', ".")
                .parse::<f64>()
                .ok()
                .map(Value::from)
                .unwrap_or(value),
            _ => value,
        };
        let fv = FieldValue::validate(def, &value, target).map_err(|e| StepError(e.to_string()))?;
        self.contact.fields.insert(target.to_string(), fv.to_json());
        self.effects
            .fields
            .retain(|f| f.field_id() != fv.field_id());
        self.effects.fields.push(fv);
        Ok(())
    }

    fn set_var_path(&mut self, path: &[&str], value: Value) {
        if !self.cursor.vars.is_object() {
            self.cursor.vars = Value::Object(Map::new());
        }
        let mut node = &mut self.cursor.vars;
        for (i, key) in path.iter().enumerate() {
            let Value::Object(map) = node else { return };
            if i + 1 == path.len() {
                map.insert((*key).to_string(), value);
                return;
            }
            let entry = map
                .entry((*key).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            node = entry;
        }
    }

    /// The template context: `contact`, `fields`, `answers`, `vars`, `http`, `trigger`,
    /// `channel`, `now`.
    pub fn context(&self) -> Value {
        let p = &self.contact.profile;
        let v = &self.cursor.vars;
        json!({
            "contact": {
                "id": self.contact.id,
                "first_name": p.first_name, "last_name": p.last_name,
                "username": p.username, "language": p.language, "time_zone": p.time_zone,
                "phone": p.phone, "email": p.email, "avatar_url": p.avatar_url,
                "tags": self.contact.tags, "fields": self.contact.fields,
                "source": self.contact.source,
            },
            "fields": self.contact.fields,
            "answers": v.get("answers").cloned().unwrap_or(Value::Null),
            "vars": v.get("vars").cloned().unwrap_or(Value::Null),
            "http": v.get("http").cloned().unwrap_or(Value::Null),
            "trigger": v.get("trigger").cloned().unwrap_or(Value::Null),
            "split": v.get("split").cloned().unwrap_or(Value::Null),
            "channel": self.env.channel.map(|(_, k)| k.as_str()),
            "now": self.env.now.to_string(),
        })
    }

    fn render(&self, template: &str) -> Result<String, StepError> {
        if !template.contains("{{") && !template.contains("{%") {
            return Ok(template.to_string());
        }
        self.env
            .templates
            .render(template, &self.context())
            .map_err(|e| StepError(format!("template: {e}")))
    }

    /// A profile attribute or custom field of the contact, as JSON.
    fn value_of(&self, name: &str) -> Option<Value> {
        let p = &self.contact.profile;
        let attr = match name {
            "first_name" => Some(&p.first_name),
            "last_name" => Some(&p.last_name),
            "username" => Some(&p.username),
            "language" => Some(&p.language),
            "time_zone" => Some(&p.time_zone),
            "phone" => Some(&p.phone),
            "email" => Some(&p.email),
            "avatar_url" => Some(&p.avatar_url),
            _ => None,
        };
        match attr {
            Some(v) => v.clone().map(Value::String),
            None => self.contact.fields.get(name).cloned(),
        }
    }

    fn var_of(&self, path: &str) -> Option<Value> {
        let pointer: String = path
            .split('.')
            .map(|p| format!("/{}", escape_pointer(p)))
            .collect();
        self.cursor.vars.pointer(&pointer).cloned()
    }

    fn identity_on_channel(&self) -> Option<&Identity> {
        let (channel, _) = self.env.channel?;
        self.contact
            .identities
            .iter()
            .find(|i| i.channel_id == channel)
    }

    /// Whether a condition holds (an unparsable clock value never holds).
    pub fn holds(&self, c: &Condition) -> bool {
        match c {
            Condition::All(cs) => cs.iter().all(|c| self.holds(c)),
            Condition::Any(cs) => cs.iter().any(|c| self.holds(c)),
            Condition::Not(c) => !self.holds(c),
            Condition::Tag(t) => self.contact.tags.iter().any(|x| x == t),
            Condition::Field(cmp) => compare(self.value_of(&cmp.name), &cmp.op, cmp.value.as_ref()),
            Condition::Var(cmp) => compare(self.var_of(&cmp.name), &cmp.op, cmp.value.as_ref()),
            Condition::Channel(name) => match self.env.channel {
                Some((id, kind)) => kind.as_str() == name || id.0.to_string() == *name,
                None => false,
            },
            Condition::Subscribed(topic) => match self.identity_on_channel() {
                Some(i) if i.subscription.state == SubscriptionState::Subscribed => {
                    topic.is_empty()
                        || i.subscription.topics.is_empty()
                        || i.subscription.topics.iter().any(|t| t == topic)
                }
                _ => false,
            },
            Condition::Weekday(days) => {
                let today = schedule::local_weekday(self.env.now, &self.env.tz);
                days.iter()
                    .filter_map(|d| schedule::parse_weekday(d).ok())
                    .any(|d| d == today)
            }
            Condition::LocalTime { from, to } => {
                match (schedule::parse_hhmm(from), schedule::parse_hhmm(to)) {
                    (Ok(f), Ok(t)) => schedule::local_time_in(self.env.now, f, t, &self.env.tz),
                    _ => false,
                }
            }
        }
    }
}

/// Picks a variant by weight with `roll` in [0, 1).
fn pick(variants: &[flow::Variant], roll: f64) -> Option<&flow::Variant> {
    let total: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (roll.clamp(0.0, 0.999_999_999) * total as f64) as u64;
    for v in variants {
        let w = u64::from(v.weight);
        if point < w {
            return Some(v);
        }
        point -= w;
    }
    variants.iter().rev().find(|v| v.weight > 0)
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', ".").parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

fn is_empty(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Compares a value with an operand: numerically when both are numbers (or numeric
/// text), otherwise as case-insensitive text (ISO dates order correctly as text).
pub fn compare(value: Option<Value>, op: &str, operand: Option<&Value>) -> bool {
    match op {
        "exists" => !is_empty(&value),
        "empty" => is_empty(&value),
        _ => {
            let (Some(v), Some(o)) = (value.filter(|v| !v.is_null()), operand) else {
                return false;
            };
            if op == "contains" {
                return match &v {
                    Value::Array(items) => items.iter().any(|i| as_text(i) == as_text(o)),
                    _ => as_text(&v).contains(&as_text(o)),
                };
            }
            let ord = match (as_number(&v), as_number(o)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(as_text(&v).cmp(&as_text(o))),
            };
            let Some(ord) = ord else { return false };
            use std::cmp::Ordering::*;
            match op {
                "eq" => ord == Equal,
                "ne" => ord != Equal,
                "lt" => ord == Less,
                "lte" => ord != Greater,
                "gt" => ord == Greater,
                "gte" => ord != Less,
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests;
