//! The flow document: what a marketer writes (in the editor, or as JSON/YAML) and what a
//! published version freezes. Its serde form is the file format, so unknown fields are
//! refused (a typo must not silently drop a branch) and fields are only ever added with
//! defaults.

use crate::message::{Media, Purpose};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole flow: how contacts enter it, when they leave early, and its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowDocument {
    /// A name shown in lists (the API's flow name wins when both are given).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the flow is for, for the people who maintain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What starts a run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// What ends a contact's run early (an `order_paid` event cancels a cart reminder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_on: Vec<Trigger>,
    /// Run-wide settings.
    #[serde(default)]
    pub settings: FlowSettings,
    /// The id of the first step.
    pub start: String,
    /// The steps, each with an id unique within the flow.
    pub steps: Vec<Step>,
}

/// Run-wide settings of a flow.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSettings {
    /// Whether a contact may enter again.
    pub reentry: Reentry,
    /// Why this flow's messages are sent, unless a step says otherwise. When absent, a
    /// message sent while answering the contact is a `response` and any other a
    /// `marketing` message (which needs an opt-in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
}

/// Whether a contact may enter a flow again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    /// Again after the previous run ended (never two runs of one flow at once).
    #[default]
    AfterEnd,
    /// Every time a trigger fires, even while a run is in flight.
    Always,
    /// Only once ever.
    Once,
}

/// What starts a run (also used by `exit_on`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A message from the contact matching keywords.
    Keyword {
        /// The words (ignored for `match: any`).
        #[serde(default)]
        keywords: Vec<String>,
        /// How they are matched.
        #[serde(default, rename = "match")]
        matching: KeywordMatch,
        /// Channel kinds (`telegram`) or channel ids this trigger listens on; all when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        channels: Vec<String>,
        /// Higher wins when several keyword triggers match.
        #[serde(default)]
        priority: i32,
    },
    /// A deep link / ref payload (Telegram `?start=PAYLOAD`).
    Ref {
        /// The payload.
        #[serde(rename = "ref")]
        reference: String,
    },
    /// A contact opted in on a channel.
    NewSubscriber {
        /// Channel kinds or ids; all when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        channels: Vec<String>,
    },
    /// A button with this payload was pressed (outside a flow waiting for it).
    Button {
        /// The payload.
        payload: String,
    },
    /// A tag was added to the contact.
    TagAdded {
        /// The tag.
        tag: String,
    },
    /// Every year on the date in a field (a birthday), at a local time.
    FieldDate {
        /// The date or datetime field.
        field: String,
        /// Local time of day, `HH:MM` (default 10:00).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<String>,
        /// Days before (negative) or after (positive) the date.
        #[serde(default)]
        offset_days: i32,
    },
    /// An event posted through the API (`POST /api/v1/events`).
    Event {
        /// Its name (`order_shipped`).
        name: String,
    },
    /// The contact has sent nothing for a period.
    Inactivity {
        /// How long, e.g. `7d`.
        after: String,
    },
}

/// How keywords are matched against a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeywordMatch {
    /// The whole message is one of the words (case, spaces and punctuation ignored).
    #[default]
    Exact,
    /// The message contains one of the words.
    Contains,
    /// The message matches one of the regular expressions.
    Regex,
    /// Any message at all.
    Any,
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Sends a message; buttons with `next` branch on the press.
    Send(SendStep),
    /// Asks a question and waits for the answer.
    Ask(AskStep),
    /// Branches on the contact's data, the channel, the time.
    Condition(ConditionStep),
    /// Splits contacts at random by weight (A/B); the assignment is stored on the run.
    Split(SplitStep),
    /// Changes the contact (tags, fields, topics), notifies, records a conversion.
    Action(ActionStep),
    /// Waits.
    Delay(DelayStep),
    /// Calls an outside HTTP endpoint with the contact and branches on the answer.
    Http(HttpStep),
    /// Starts another flow for the contact.
    StartFlow(StartFlowStep),
    /// Hands the conversation to a human; the flow waits until an operator releases it.
    Handoff(HandoffStep),
    /// Ends the run.
    Stop(StopStep),
}

/// Editor layout of a step (position on the canvas); ignored by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Canvas x.
    pub x: f64,
    /// Canvas y.
    pub y: f64,
}

/// Sends a message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendStep {
    /// Step id.
    pub id: String,
    /// Text template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An image or file (its URL may be a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// Buttons; those with `next` make the step wait for a press.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<FlowButton>,
    /// Overrides the flow's purpose for this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    /// Where to go after sending (or when a typed answer matches no button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// When branching buttons are not pressed in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Where the run goes when this step fails (a template that cannot be rendered, a
    /// value a field refuses); the run ends as failed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// A button of a `send` step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowButton {
    /// What the person sees (a template).
    pub label: String,
    /// The step a press leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// A link instead of a branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Stored in the run's `answer` variable on press (defaults to the label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Where a wait goes when nothing happens in time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// How long to wait, e.g. `1d`, `2h 30m`.
    pub after: String,
    /// The step to go to.
    pub next: String,
}

/// What kind of answer an `ask` step accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Any text.
    #[default]
    Text,
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A number.
    Number,
    /// A date (`2026-03-01`, `01.03.2026`).
    Date,
    /// One of the choices (pressed, typed, or its number).
    Choice,
}

/// Asks a question and waits for the answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskStep {
    /// Step id.
    pub id: String,
    /// The question (a template).
    pub text: String,
    /// What is accepted.
    #[serde(default)]
    pub expect: Expect,
    /// For `expect: choice`: the options, shown as buttons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    /// Where the answer is stored: a profile attribute (`email`, `phone`, `first_name`,
    /// `last_name`) or a custom field key. The run's variable `answers.<step id>` always
    /// holds it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How many times to ask again after an invalid answer.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// What to say when the answer is invalid (a template; a default per `expect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_text: Option<String>,
    /// When nobody answers in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// After a valid answer (a choice's own `next` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// After the retries are used up; the run ends there when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_fail: Option<String>,
    /// Where the run goes when this step fails (a template that cannot be rendered, a
    /// value a field refuses); the run ends as failed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

fn default_retries() -> u32 {
    2
}

/// An option of a choice question.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// What the person sees.
    pub label: String,
    /// What is stored (defaults to the label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where this answer leads (the step's `next` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Choice {
    /// The stored value of the choice.
    pub fn stored(&self) -> &str {
        self.value.as_deref().unwrap_or(&self.label)
    }
}

/// Branches on conditions, first match wins.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionStep {
    /// Step id.
    pub id: String,
    /// Checked in order.
    pub branches: Vec<Branch>,
    /// When no branch matches.
    #[serde(rename = "else")]
    pub otherwise: String,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// One branch of a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// The test.
    #[serde(rename = "if")]
    pub when: Condition,
    /// Where it leads.
    pub next: String,
}

/// A test on the contact, the run or the clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Every one holds.
    All(Vec<Condition>),
    /// At least one holds.
    Any(Vec<Condition>),
    /// It does not hold.
    Not(Box<Condition>),
    /// The contact has the tag.
    Tag(String),
    /// A custom field or profile attribute compares to a value.
    Field(Comparison),
    /// A run variable (`answers.quiz_1`, `http.status`, `http.body.plan`) compares.
    Var(Comparison),
    /// The run talks on a channel of this kind (`telegram`) or with this id.
    Channel(String),
    /// The contact is subscribed on the run's channel (to this topic, when not empty).
    Subscribed(String),
    /// The contact's local weekday is one of these (`mon` … `sun`).
    Weekday(Vec<String>),
    /// The contact's local time is within `from`–`to` (`HH:MM`, may wrap midnight).
    LocalTime {
        /// Start, inclusive.
        from: String,
        /// End, exclusive.
        to: String,
    },
}

/// A comparison of a named value with an operand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// Field key, profile attribute or variable path.
    pub name: String,
    /// `eq`, `ne`, `lt`, `lte`, `gt`, `gte`, `contains`, `exists`, `empty`.
    pub op: String,
    /// The operand (absent for `exists` and `empty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
}

/// Splits contacts at random.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitStep {
    /// Step id.
    pub id: String,
    /// The variants with their weights.
    pub variants: Vec<Variant>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// One arm of a split.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Name reported in results (`A`, `B`).
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Where it leads.
    pub next: String,
}

/// Changes the contact and more.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionStep {
    /// Step id.
    pub id: String,
    /// Done in order, atomically with the run's progress.
    pub actions: Vec<Action>,
    /// Where to go next; the run ends when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Where the run goes when this step fails (a template that cannot be rendered, a
    /// value a field refuses); the run ends as failed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Adds a tag.
    AddTag(String),
    /// Removes a tag.
    RemoveTag(String),
    /// Sets a custom field or profile attribute from a template (`{{ answers.age }}`).
    SetField {
        /// Field key or profile attribute.
        field: String,
        /// Template of the value.
        value: String,
    },
    /// Sets a run variable from a template.
    SetVar {
        /// Variable name.
        name: String,
        /// Template of the value.
        value: String,
    },
    /// Subscribes the contact to a topic on the run's channel (needs an opt-in there).
    Subscribe(String),
    /// Unsubscribes the contact from a topic on the run's channel.
    Unsubscribe(String),
    /// Notifies the operators (a template).
    Notify(String),
    /// Records a conversion (goal) with a value.
    Conversion {
        /// Goal name (`purchase`).
        name: String,
        /// Value in the currency's units.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// ISO currency code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        currency: Option<String>,
    },
}

/// Waits until a moment computed from a duration, a date, a field or a time window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayStep {
    /// Step id.
    pub id: String,
    /// A duration (`2h`, `1d 12h`).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// A moment: RFC 3339, or `YYYY-MM-DD HH:MM` in the contact's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// A date/datetime field, shifted by an offset (`-1d`, `-1h`, `-5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_field: Option<FieldMoment>,
    /// The next moment inside a weekly window in the contact's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Never end inside the workspace's quiet hours (in the contact's time zone): a
    /// wake-up that falls there moves to their end.
    #[serde(default)]
    pub smart: bool,
    /// Where to go; the run ends when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Where to go when the moment has already passed (a webinar reminder that would be
    /// late); defaults to `next` immediately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_past: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// A moment taken from a field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldMoment {
    /// A date or datetime field.
    pub field: String,
    /// Signed shift (`-1d`, `-5m`, `2h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// For a date field: the local time of day (`HH:MM`, default 10:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A weekly window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Weekdays (`mon` … `sun`); every day when empty.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// Start of the window, `HH:MM`.
    pub from: String,
    /// End of the window, `HH:MM`.
    pub to: String,
}

/// Calls an HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Step id.
    pub id: String,
    /// `GET`, `POST` (default), `PUT`, `PATCH` or `DELETE`.
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template.
    pub url: String,
    /// Header templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body template; the contact as JSON when absent (not sent with GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Time limit (`10s` by default, at most `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What to keep from a JSON answer: target (a field key, profile attribute or
    /// `var.<name>`) → JSON pointer into the body (`/data/id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub save: BTreeMap<String, String>,
    /// After a 2xx answer (the run's `http` variable holds `status` and `body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// After a failure: time-out, connection error, non-2xx, or a `save` that is not in
    /// the answer. The run ends as failed there when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

fn default_method() -> String {
    "POST".into()
}

/// Starts another flow.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartFlowStep {
    /// Step id.
    pub id: String,
    /// The other flow's name or id.
    pub flow: String,
    /// Where this run goes on (it ends when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// Hands the conversation to a human.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffStep {
    /// Step id.
    pub id: String,
    /// What the operator is told (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where the run goes when released; it ends when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// Ends the run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopStep {
    /// Step id.
    pub id: String,
    /// Editor layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::Send(s) => &s.id,
            Step::Ask(s) => &s.id,
            Step::Condition(s) => &s.id,
            Step::Split(s) => &s.id,
            Step::Action(s) => &s.id,
            Step::Delay(s) => &s.id,
            Step::Http(s) => &s.id,
            Step::StartFlow(s) => &s.id,
            Step::Handoff(s) => &s.id,
            Step::Stop(s) => &s.id,
        }
    }

    /// The step's type as written in the document.
    pub fn type_name(&self) -> &'static str {
        match self {
            Step::Send(_) => "send",
            Step::Ask(_) => "ask",
            Step::Condition(_) => "condition",
            Step::Split(_) => "split",
            Step::Action(_) => "action",
            Step::Delay(_) => "delay",
            Step::Http(_) => "http",
            Step::StartFlow(_) => "start_flow",
            Step::Handoff(_) => "handoff",
            Step::Stop(_) => "stop",
        }
    }

    /// Every step this one can lead to, with a label of the edge (for the validator and
    /// the editor).
    pub fn targets(&self) -> Vec<(&'static str, &str)> {
        fn opt<'a>(
            t: &mut Vec<(&'static str, &'a str)>,
            label: &'static str,
            v: &'a Option<String>,
        ) {
            if let Some(v) = v {
                t.push((label, v.as_str()));
            }
        }
        let mut t: Vec<(&'static str, &str)> = Vec::new();
        match self {
            Step::Send(s) => {
                opt(&mut t, "next", &s.next);
                for b in &s.buttons {
                    opt(&mut t, "button", &b.next);
                }
                if let Some(to) = &s.timeout {
                    t.push(("timeout", &to.next));
                }
                opt(&mut t, "on_error", &s.on_error);
            }
            Step::Ask(s) => {
                opt(&mut t, "next", &s.next);
                opt(&mut t, "on_fail", &s.on_fail);
                for c in &s.choices {
                    opt(&mut t, "choice", &c.next);
                }
                if let Some(to) = &s.timeout {
                    t.push(("timeout", &to.next));
                }
                opt(&mut t, "on_error", &s.on_error);
            }
            Step::Condition(s) => {
                for b in &s.branches {
                    t.push(("branch", &b.next));
                }
                t.push(("else", &s.otherwise));
            }
            Step::Split(s) => {
                for v in &s.variants {
                    t.push(("variant", &v.next));
                }
            }
            Step::Action(s) => {
                opt(&mut t, "next", &s.next);
                opt(&mut t, "on_error", &s.on_error);
            }
            Step::Delay(s) => {
                opt(&mut t, "next", &s.next);
                opt(&mut t, "if_past", &s.if_past);
            }
            Step::Http(s) => {
                opt(&mut t, "next", &s.next);
                opt(&mut t, "on_error", &s.on_error);
            }
            Step::StartFlow(s) => opt(&mut t, "next", &s.next),
            Step::Handoff(s) => opt(&mut t, "next", &s.next),
            Step::Stop(_) => {}
        }
        t
    }

    /// Whether reaching this step always makes the run wait (for time or for a person),
    /// which is what makes a loop through it harmless.
    pub fn waits(&self) -> bool {
        match self {
            Step::Ask(_) | Step::Delay(_) | Step::Handoff(_) => true,
            Step::Send(s) => s.buttons.iter().any(|b| b.next.is_some()),
            _ => false,
        }
    }
}

impl FlowDocument {
    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id() == id)
    }
}
