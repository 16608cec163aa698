//! The flow validator. It reports every problem of a document at once, each tied to its
//! step and worded for the marketer who wrote it, so the editor and `voronka flow check`
//! can list them all before anything is published.
//!
//! What the validator cannot know (the workspace's fields, tags, topics and flows when
//! there is no database at hand) is left unchecked rather than guessed.

use super::document::{
    Action, AskStep, Comparison, Condition, ConditionStep, DelayStep, Expect, FlowDocument,
    HttpStep, KeywordMatch, SendStep, SplitStep, Step, Trigger,
};
use super::duration;
use crate::field::{FieldDefinition, FieldType};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

/// Contact attributes a flow may read and write besides custom fields.
pub const PROFILE_ATTRIBUTES: [&str; 8] = [
    "first_name",
    "last_name",
    "username",
    "language",
    "time_zone",
    "phone",
    "email",
    "avatar_url",
];

/// Comparison operators of `field` and `var` conditions.
pub const CONDITION_OPS: [&str; 9] = [
    "eq", "ne", "lt", "lte", "gt", "gte", "contains", "exists", "empty",
];

/// HTTP methods an `http` step may use.
pub const HTTP_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Weekday names as written in conditions and windows.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Longest step id.
pub const MAX_STEP_ID: usize = 64;

/// Longest time limit of an `http` step, in seconds: a run holds its place while waiting.
pub const MAX_HTTP_TIMEOUT_SECS: i64 = 30;

/// One thing wrong with a flow document (also what a document that cannot be parsed
/// reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, thiserror::Error)]
#[error("{}", describe(.step.as_deref(), .path, .message))]
pub struct Problem {
    /// The id of the step it is in, when it is in a step.
    pub step: Option<String>,
    /// Where in the document, e.g. `steps[3].buttons[0].next` (empty for the whole).
    pub path: String,
    /// A stable code, e.g. `dangling_target`.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// What is wrong, in plain words.
    pub message: String,
}

fn describe(step: Option<&str>, path: &str, message: &str) -> String {
    match step {
        Some(id) => format!("step {id}: {message}"),
        None if path.is_empty() => message.to_string(),
        None => format!("{path}: {message}"),
    }
}

/// What a flow is checked against. `None` means "not known here" (the CLI without a
/// database): those references are not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// The workspace's custom fields.
    pub fields: Option<Vec<FieldDefinition>>,
    /// The workspace's tags.
    pub tags: Option<Vec<String>>,
    /// The workspace's subscription topics.
    pub topics: Option<Vec<String>>,
    /// The workspace's flows, by name or id.
    pub flows: Option<Vec<String>>,
    /// The channels the flow may run on, whose limits messages must fit.
    pub channels: Vec<ChannelLimits>,
}

/// What one channel can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Channel kind or name, used in messages.
    pub name: String,
    /// Longest text in characters; `None` when the channel splits long texts.
    pub text_limit: Option<usize>,
    /// Most buttons under one message.
    pub max_buttons: usize,
    /// Longest button label in characters.
    pub button_label_limit: usize,
    /// Longest button value in bytes.
    pub payload_limit_bytes: usize,
    /// Whether pictures and files can be sent.
    pub media: bool,
}

/// Whether `name` is an event name the events API accepts: 1 to 64 of `a-z 0-9 _ . -`.
/// Names are matched exactly, so they are kept to an alphabet that cannot be mistyped
/// by case or spacing.
pub fn is_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Checks a document and returns every problem found (none for a good flow).
pub fn validate(doc: &FlowDocument, catalog: &Catalog) -> Vec<Problem> {
    let mut v = Validator::new(doc, catalog);
    for (i, t) in doc.triggers.iter().enumerate() {
        v.trigger(&format!("triggers[{i}]"), t);
    }
    for (i, t) in doc.exit_on.iter().enumerate() {
        v.trigger(&format!("exit_on[{i}]"), t);
    }
    v.ids_and_start();
    for (i, step) in doc.steps.iter().enumerate() {
        let at = At {
            step: (!step.id().is_empty()).then(|| step.id().to_string()),
            path: format!("steps[{i}]"),
        };
        v.dangling(&at, step);
        v.step(&at, step);
    }
    v.unreachable();
    v.loops();
    // Listed in document order, so all the problems of one step read together.
    let mut problems = v.problems;
    problems.sort_by_key(|p| order(&p.path));
    problems
}

/// Where a path comes in the document: triggers, then the flow as a whole, then steps.
fn order(path: &str) -> (u8, usize) {
    if path.starts_with("triggers[") || path.starts_with("exit_on[") {
        return (0, 0);
    }
    match path
        .strip_prefix("steps[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(n, _)| n.parse().ok())
    {
        Some(i) => (2, i),
        None => (1, 0),
    }
}

/// Where a problem is: the step (if any) and the path of the step or trigger.
struct At {
    step: Option<String>,
    path: String,
}

/// How a name used by the flow relates to the workspace's fields.
enum Lookup<'a> {
    /// A contact attribute (all of them hold text).
    Profile,
    /// A custom field.
    Custom(&'a FieldDefinition),
    /// Not known here; nothing more can be said.
    Unchecked,
    /// Neither: already reported.
    Missing,
}

struct Validator<'a> {
    doc: &'a FlowDocument,
    catalog: &'a Catalog,
    /// Step id → index of its first occurrence.
    index: HashMap<&'a str, usize>,
    fields: Option<HashMap<&'a str, &'a FieldDefinition>>,
    /// Tags this flow adds itself, which may be new to the workspace.
    added_tags: HashSet<&'a str>,
    templates: minijinja::Environment<'a>,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    fn new(doc: &'a FlowDocument, catalog: &'a Catalog) -> Self {
        let mut index = HashMap::new();
        for (i, s) in doc.steps.iter().enumerate() {
            index.entry(s.id()).or_insert(i);
        }
        let fields = catalog
            .fields
            .as_ref()
            .map(|fs| fs.iter().map(|f| (f.spec.key.as_str(), f)).collect());
        let mut added_tags = HashSet::new();
        for s in &doc.steps {
            if let Step::Action(a) = s {
                for action in &a.actions {
                    if let Action::AddTag(t) = action {
                        added_tags.insert(t.as_str());
                    }
                }
            }
        }
        Validator {
            doc,
            catalog,
            index,
            fields,
            added_tags,
            templates: minijinja::Environment::new(),
            problems: Vec::new(),
        }
    }

    fn report(&mut self, at: &At, sub: &str, code: &'static str, message: impl Into<String>) {
        let path = if sub.is_empty() {
            at.path.clone()
        } else {
            format!("{}.{sub}", at.path)
        };
        self.problems.push(Problem {
            step: at.step.clone(),
            path,
            code,
            message: message.into(),
        });
    }

    fn whole(&mut self, path: &str, code: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            step: None,
            path: path.to_string(),
            code,
            message: message.into(),
        });
    }

    fn ids_and_start(&mut self) {
        let doc = self.doc;
        if doc.steps.is_empty() {
            self.whole("steps", "no_steps", "the flow has no steps");
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, s) in doc.steps.iter().enumerate() {
            let id = s.id();
            let at = At {
                step: (!id.is_empty()).then(|| id.to_string()),
                path: format!("steps[{i}]"),
            };
            if id.is_empty() {
                self.report(
                    &at,
                    "id",
                    "empty_step_id",
                    format!("step #{} ({}) has no id", i + 1, s.type_name()),
                );
            } else if !valid_step_id(id) {
                self.report(
                    &at,
                    "id",
                    "bad_step_id",
                    format!(
                        "`{id}` is not a valid step id: use 1 to {MAX_STEP_ID} letters, digits, `_` or `-`"
                    ),
                );
            }
            if !id.is_empty() && !seen.insert(id) {
                self.report(
                    &at,
                    "id",
                    "duplicate_step",
                    format!("two steps are called `{id}`: step ids must be unique"),
                );
            }
        }
        if doc.start.trim().is_empty() {
            self.whole(
                "start",
                "missing_start",
                "the flow does not say which step comes first (`start`)",
            );
        } else if !doc.steps.is_empty() && !self.index.contains_key(doc.start.as_str()) {
            let hint = self.suggest_step(&doc.start);
            self.whole(
                "start",
                "missing_start",
                format!("the start step `{}` is not a step{hint}", doc.start),
            );
        }
    }

    fn dangling(&mut self, at: &At, step: &Step) {
        for (what, sub, target) in edges(step) {
            if target.is_empty() {
                self.report(
                    at,
                    &sub,
                    "dangling_target",
                    format!("{what} leads nowhere: the step id is empty"),
                );
            } else if !self.index.contains_key(target) {
                let hint = self.suggest_step(target);
                self.report(
                    at,
                    &sub,
                    "dangling_target",
                    format!("{what} leads to `{target}`, which is not a step{hint}"),
                );
            }
        }
    }

    /// The graph of steps by index, over first occurrences of ids only.
    fn graph(&self) -> Vec<Vec<usize>> {
        self.doc
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if self.index.get(s.id()) != Some(&i) {
                    return Vec::new();
                }
                s.targets()
                    .into_iter()
                    .filter_map(|(_, t)| self.index.get(t).copied())
                    .collect()
            })
            .collect()
    }

    fn unreachable(&mut self) {
        let Some(&start) = self.index.get(self.doc.start.as_str()) else {
            return;
        };
        let graph = self.graph();
        let mut reached = vec![false; graph.len()];
        reached[start] = true;
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &w in &graph[v] {
                if !reached[w] {
                    reached[w] = true;
                    queue.push_back(w);
                }
            }
        }
        let doc = self.doc;
        for (i, s) in doc.steps.iter().enumerate() {
            // A repeated id is already reported as a duplicate.
            if reached[i] || self.index.get(s.id()) != Some(&i) {
                continue;
            }
            let at = At {
                step: Some(s.id().to_string()),
                path: format!("steps[{i}]"),
            };
            self.report(
                &at,
                "",
                "unreachable_step",
                format!(
                    "no contact ever gets here: nothing leads to this step from the start step `{}`",
                    doc.start
                ),
            );
        }
    }

    fn loops(&mut self) {
        let doc = self.doc;
        // Waiting steps break every loop through them, so they are taken out of the graph;
        // whatever cycles remain spin without pause.
        let graph: Vec<Vec<usize>> = self
            .graph()
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                if doc.steps[i].waits() {
                    Vec::new()
                } else {
                    ws.into_iter().filter(|&w| !doc.steps[w].waits()).collect()
                }
            })
            .collect();
        for members in components(&graph) {
            let first = members[0];
            let cyclic = members.len() > 1 || graph[first].contains(&first);
            if !cyclic {
                continue;
            }
            let cycle = shortest_cycle(&graph, &members, first);
            let names: Vec<String> = cycle
                .iter()
                .map(|&i| format!("`{}`", doc.steps[i].id()))
                .collect();
            let at = At {
                step: Some(doc.steps[first].id().to_string()),
                path: format!("steps[{first}]"),
            };
            self.report(
                &at,
                "",
                "loop_without_wait",
                format!(
                    "the steps {} go round in a loop with nothing that waits (a question, a delay, buttons or a handoff): a contact would loop forever",
                    names.join(" → ")
                ),
            );
        }
    }

    fn suggest_step(&self, name: &str) -> String {
        suggestion(name, self.doc.steps.iter().map(Step::id))
    }

    fn step(&mut self, at: &At, step: &'a Step) {
        match step {
            Step::Send(s) => self.send(at, s),
            Step::Ask(s) => self.ask(at, s),
            Step::Condition(s) => self.condition_step(at, s),
            Step::Split(s) => self.split(at, s),
            Step::Action(s) => {
                if s.actions.is_empty() {
                    self.report(
                        at,
                        "actions",
                        "bad_action",
                        "the action step does nothing: add at least one action",
                    );
                }
                for (i, a) in s.actions.iter().enumerate() {
                    self.action(at, &format!("actions[{i}]"), a);
                }
            }
            Step::Delay(s) => self.delay(at, s),
            Step::Http(s) => self.http(at, s),
            Step::StartFlow(s) => {
                if s.flow.trim().is_empty() {
                    self.report(
                        at,
                        "flow",
                        "empty_name",
                        "the step does not say which flow to start",
                    );
                } else if let Some(flows) = &self.catalog.flows {
                    if !flows.iter().any(|f| f == &s.flow) {
                        let hint = suggestion(&s.flow, flows.iter().map(String::as_str));
                        self.report(
                            at,
                            "flow",
                            "unknown_flow",
                            format!("there is no flow `{}` to start{hint}", s.flow),
                        );
                    }
                }
            }
            Step::Handoff(s) => {
                if let Some(note) = &s.note {
                    self.template(at, "note", "the note to the operator", note);
                }
            }
            Step::Stop(_) => {}
        }
    }

    fn send(&mut self, at: &At, s: &'a SendStep) {
        let text = s.text.as_deref().filter(|t| !t.trim().is_empty());
        if text.is_none() && s.media.is_none() {
            self.report(
                at,
                "",
                "empty_message",
                "the message has neither text nor a picture or file",
            );
        }
        if let Some(t) = &s.text {
            self.template(at, "text", "the text", t);
        }
        if let Some(m) = &s.media {
            self.template(at, "media.url", "the media URL", &m.url);
            if !is_link(&m.url) {
                self.report(
                    at,
                    "media.url",
                    "bad_media",
                    format!(
                        "the media URL `{}` must start with http:// or https://",
                        m.url
                    ),
                );
            }
        }
        for (i, b) in s.buttons.iter().enumerate() {
            let sub = format!("buttons[{i}]");
            if b.label.trim().is_empty() {
                self.report(
                    at,
                    &format!("{sub}.label"),
                    "bad_button",
                    format!("button #{} has no label", i + 1),
                );
            } else {
                self.template(
                    at,
                    &format!("{sub}.label"),
                    &format!("the label of button “{}”", b.label),
                    &b.label,
                );
            }
            if let Some(url) = &b.url {
                if b.next.is_some() {
                    self.report(
                        at,
                        &sub,
                        "bad_button",
                        format!("button “{}” has both `next` and `url`: a button either opens a link or leads to a step", b.label),
                    );
                }
                self.template(
                    at,
                    &format!("{sub}.url"),
                    &format!("the link of button “{}”", b.label),
                    url,
                );
                if !is_link(url) {
                    self.report(
                        at,
                        &format!("{sub}.url"),
                        "bad_button",
                        format!(
                            "the link of button “{}” must start with http:// or https://",
                            b.label
                        ),
                    );
                }
            }
        }
        if let Some(to) = &s.timeout {
            self.duration(at, "timeout.after", "the timeout", &to.after, true, None);
        }
        let channels = &self.catalog.channels;
        let mut over = Vec::new();
        for ch in channels {
            if let (Some(limit), Some(t)) = (ch.text_limit, text) {
                let n = literal_chars(t);
                if n > limit {
                    over.push(("text", format!("the text is at least {n} characters long, but {} shows at most {limit}", ch.name)));
                }
            }
            if s.buttons.len() > ch.max_buttons {
                over.push((
                    "buttons",
                    format!(
                        "the message has {} buttons, but {} shows at most {}",
                        s.buttons.len(),
                        ch.name,
                        ch.max_buttons
                    ),
                ));
            }
            for b in &s.buttons {
                let n = literal_chars(&b.label);
                if n > ch.button_label_limit {
                    over.push((
                        "buttons",
                        format!("the label of button “{}” is {n} characters long, but {} shows at most {}", b.label, ch.name, ch.button_label_limit),
                    ));
                }
                if let Some(v) = &b.value {
                    if v.len() > ch.payload_limit_bytes {
                        over.push((
                            "buttons",
                            format!("the value of button “{}” is {} bytes long, but {} carries at most {}", b.label, v.len(), ch.name, ch.payload_limit_bytes),
                        ));
                    }
                }
            }
            if s.media.is_some() && !ch.media {
                over.push((
                    "media",
                    format!("{} cannot send pictures or files", ch.name),
                ));
            }
        }
        for (sub, message) in over {
            self.report(at, sub, "over_limit", message);
        }
    }

    fn ask(&mut self, at: &At, s: &'a AskStep) {
        if s.text.trim().is_empty() {
            self.report(at, "text", "empty_message", "the question has no text");
        } else {
            self.template(at, "text", "the question", &s.text);
        }
        if let Some(t) = &s.retry_text {
            self.template(at, "retry_text", "the text for an invalid answer", t);
        }
        match (s.expect, s.choices.is_empty()) {
            (Expect::Choice, true) => {
                self.report(
                    at,
                    "choices",
                    "bad_ask",
                    "the question expects a choice but offers no choices",
                );
            }
            (e, false) if e != Expect::Choice => {
                self.report(
                    at,
                    "choices",
                    "bad_ask",
                    format!(
                        "the question has choices but expects {}: set `expect: choice`",
                        expect_name(e)
                    ),
                );
            }
            _ => {}
        }
        let mut labels = HashSet::new();
        for (i, c) in s.choices.iter().enumerate() {
            if c.label.trim().is_empty() {
                self.report(
                    at,
                    &format!("choices[{i}].label"),
                    "bad_ask",
                    format!("choice #{} has no label", i + 1),
                );
            } else if !labels.insert(c.label.as_str()) {
                self.report(
                    at,
                    &format!("choices[{i}].label"),
                    "bad_ask",
                    format!("the choice “{}” is offered twice", c.label),
                );
            }
        }
        if let Some(to) = &s.timeout {
            self.duration(at, "timeout.after", "the timeout", &to.after, true, None);
        }
        if let Some(field) = &s.field {
            let what = "the answer is saved to";
            match self.field(at, "field", what, field) {
                Lookup::Custom(def) => {
                    let t = def.spec.field_type;
                    if !answer_fits(s.expect, t) {
                        self.report(
                            at,
                            "field",
                            "wrong_field_type",
                            format!(
                                "the answer ({}) is saved to `{field}`, a {} field that cannot hold it",
                                expect_name(s.expect),
                                t.as_str()
                            ),
                        );
                    } else if t == FieldType::Choice {
                        for c in &s.choices {
                            if !def.spec.choices.iter().any(|x| x == c.stored()) {
                                self.report(
                                    at,
                                    "field",
                                    "wrong_field_type",
                                    format!("the choice “{}” is not one of the choices of the field `{field}` ({})", c.stored(), def.spec.choices.join(", ")),
                                );
                            }
                        }
                    }
                }
                Lookup::Profile
                    if matches!(s.expect, Expect::Date)
                        && field != "first_name"
                        && field != "last_name" =>
                {
                    // Names may hold anything; other attributes have formats of their own.
                    self.report(
                        at,
                        "field",
                        "wrong_field_type",
                        format!("a date cannot be saved to `{field}`"),
                    );
                }
                _ => {}
            }
        }
        let text = Some(s.text.as_str()).filter(|t| !t.trim().is_empty());
        let mut over = Vec::new();
        for ch in &self.catalog.channels {
            if let (Some(limit), Some(t)) = (ch.text_limit, text) {
                let n = literal_chars(t);
                if n > limit {
                    over.push(("text", format!("the question is at least {n} characters long, but {} shows at most {limit}", ch.name)));
                }
            }
            if s.choices.len() > ch.max_buttons {
                over.push((
                    "choices",
                    format!(
                        "the question has {} choices, but {} shows at most {} buttons",
                        s.choices.len(),
                        ch.name,
                        ch.max_buttons
                    ),
                ));
            }
            for c in &s.choices {
                let n = c.label.chars().count();
                if n > ch.button_label_limit {
                    over.push((
                        "choices",
                        format!("the choice “{}” is {n} characters long, but {} shows at most {} on a button", c.label, ch.name, ch.button_label_limit),
                    ));
                }
            }
        }
        for (sub, message) in over {
            self.report(at, sub, "over_limit", message);
        }
    }

    fn condition_step(&mut self, at: &At, s: &'a ConditionStep) {
        if s.branches.is_empty() {
            self.report(
                at,
                "branches",
                "empty_condition",
                format!(
                    "the condition has no branches: every contact goes to `{}`",
                    s.otherwise
                ),
            );
        }
        for (i, b) in s.branches.iter().enumerate() {
            self.condition(at, &format!("branches[{i}].if"), &b.when);
        }
    }

    fn condition(&mut self, at: &At, sub: &str, c: &'a Condition) {
        match c {
            Condition::All(list) | Condition::Any(list) => {
                let (name, meaning) = if matches!(c, Condition::All(_)) {
                    ("all", "always holds")
                } else {
                    ("any", "never holds")
                };
                if list.is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.{name}"),
                        "empty_condition",
                        format!("an empty `{name}` list {meaning}"),
                    );
                }
                for (i, inner) in list.iter().enumerate() {
                    self.condition(at, &format!("{sub}.{name}[{i}]"), inner);
                }
            }
            Condition::Not(inner) => self.condition(at, &format!("{sub}.not"), inner),
            Condition::Tag(tag) => self.tag_used(at, &format!("{sub}.tag"), tag),
            Condition::Field(cmp) => {
                let sub = format!("{sub}.field");
                self.comparison(at, &sub, cmp, "field");
                if !cmp.name.trim().is_empty() {
                    self.field(
                        at,
                        &format!("{sub}.name"),
                        "the condition checks",
                        &cmp.name,
                    );
                }
            }
            Condition::Var(cmp) => self.comparison(at, &format!("{sub}.var"), cmp, "variable"),
            Condition::Channel(ch) => {
                if ch.trim().is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.channel"),
                        "empty_name",
                        "the condition names no channel",
                    );
                }
            }
            Condition::Subscribed(topic) => {
                if !topic.is_empty() {
                    self.topic(at, &format!("{sub}.subscribed"), topic);
                }
            }
            Condition::Weekday(days) => self.weekdays(at, &format!("{sub}.weekday"), days, false),
            Condition::LocalTime { from, to } => {
                self.time_range(at, &format!("{sub}.local_time"), from, to);
            }
        }
    }

    fn comparison(&mut self, at: &At, sub: &str, cmp: &'a Comparison, kind: &str) {
        if cmp.name.trim().is_empty() {
            self.report(
                at,
                &format!("{sub}.name"),
                "bad_condition_op",
                format!("the condition names no {kind}"),
            );
        }
        let op = cmp.op.as_str();
        if !CONDITION_OPS.contains(&op) {
            self.report(
                at,
                &format!("{sub}.op"),
                "bad_condition_op",
                format!(
                    "`{op}` is not a comparison: use one of {}",
                    CONDITION_OPS.join(", ")
                ),
            );
        } else if !matches!(op, "exists" | "empty")
            && cmp.value.as_ref().is_none_or(|v| v.is_null())
        {
            self.report(
                at,
                &format!("{sub}.value"),
                "bad_condition_op",
                format!(
                    "the comparison `{} {op}` needs a value to compare with",
                    cmp.name
                ),
            );
        }
    }

    fn split(&mut self, at: &At, s: &'a SplitStep) {
        if s.variants.is_empty() {
            self.report(at, "variants", "bad_split", "the split has no variants");
            return;
        }
        if s.variants.iter().map(|v| u64::from(v.weight)).sum::<u64>() == 0 {
            self.report(
                at,
                "variants",
                "bad_split",
                "every variant of the split has weight 0, so nobody can be sent anywhere",
            );
        }
        let mut names = HashSet::new();
        for (i, v) in s.variants.iter().enumerate() {
            if v.name.trim().is_empty() {
                self.report(
                    at,
                    &format!("variants[{i}].name"),
                    "bad_split",
                    format!("variant #{} has no name", i + 1),
                );
            } else if !names.insert(v.name.as_str()) {
                self.report(
                    at,
                    &format!("variants[{i}].name"),
                    "bad_split",
                    format!(
                        "two variants are called “{}”: results could not tell them apart",
                        v.name
                    ),
                );
            }
        }
    }

    fn action(&mut self, at: &At, sub: &str, a: &'a Action) {
        match a {
            Action::AddTag(t) => {
                if t.trim().is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.add_tag"),
                        "empty_name",
                        "`add_tag` names no tag",
                    );
                }
            }
            Action::RemoveTag(t) => self.tag_used(at, &format!("{sub}.remove_tag"), t),
            Action::SetField { field, value } => {
                self.field(
                    at,
                    &format!("{sub}.set_field.field"),
                    "`set_field` writes to",
                    field,
                );
                self.template(
                    at,
                    &format!("{sub}.set_field.value"),
                    &format!("the value for `{field}`"),
                    value,
                );
            }
            Action::SetVar { name, value } => {
                if name.trim().is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.set_var.name"),
                        "empty_name",
                        "`set_var` names no variable",
                    );
                }
                self.template(
                    at,
                    &format!("{sub}.set_var.value"),
                    &format!("the value for the variable `{name}`"),
                    value,
                );
            }
            Action::Subscribe(topic) => self.topic(at, &format!("{sub}.subscribe"), topic),
            Action::Unsubscribe(topic) => self.topic(at, &format!("{sub}.unsubscribe"), topic),
            Action::Notify(text) => {
                if text.trim().is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.notify"),
                        "empty_message",
                        "the notification to the operators is empty",
                    );
                } else {
                    self.template(at, &format!("{sub}.notify"), "the notification", text);
                }
            }
            Action::Conversion {
                name,
                value,
                currency,
            } => {
                let sub = format!("{sub}.conversion");
                if name.trim().is_empty() {
                    self.report(
                        at,
                        &format!("{sub}.name"),
                        "empty_name",
                        "the conversion names no goal",
                    );
                }
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    self.report(
                        at,
                        &format!("{sub}.value"),
                        "bad_action",
                        "the conversion value must be a number of at least 0",
                    );
                }
                if let Some(c) = currency {
                    if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                        self.report(
                            at,
                            &format!("{sub}.currency"),
                            "bad_action",
                            format!("`{c}` is not a currency code: write three capital letters, e.g. RUB, USD"),
                        );
                    }
                }
            }
        }
    }

    fn delay(&mut self, at: &At, s: &'a DelayStep) {
        let given = [
            s.duration.is_some(),
            s.until.is_some(),
            s.until_field.is_some(),
            s.window.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count();
        if given != 1 {
            let message = if given == 0 {
                "the delay does not say how long to wait: give one of `for`, `until`, `until_field` or `window`"
            } else {
                "the delay gives more than one of `for`, `until`, `until_field` and `window`: keep one"
            };
            self.report(at, "", "bad_delay", message);
        }
        if let Some(d) = &s.duration {
            self.duration(at, "for", "the delay", d, true, None);
        }
        if let Some(u) = &s.until {
            if !is_moment(u) {
                self.report(
                    at,
                    "until",
                    "bad_delay",
                    format!("`{u}` is not a moment: write `2026-03-01 10:00` (the contact's time) or `2026-03-01T10:00:00+03:00`"),
                );
            }
        }
        if let Some(m) = &s.until_field {
            self.date_field(
                at,
                "until_field.field",
                "the delay waits for the date in",
                &m.field,
            );
            if let Some(o) = &m.offset {
                self.duration(at, "until_field.offset", "the offset", o, false, None);
            }
            if let Some(t) = &m.at {
                self.time(at, "until_field.at", t);
            }
        }
        if let Some(w) = &s.window {
            self.weekdays(at, "window.weekdays", &w.weekdays, true);
            self.time_range(at, "window", &w.from, &w.to);
        }
    }

    fn http(&mut self, at: &At, s: &'a HttpStep) {
        if !HTTP_METHODS.contains(&s.method.as_str()) {
            self.report(
                at,
                "method",
                "bad_http",
                format!(
                    "`{}` is not an HTTP method here: use one of {}",
                    s.method,
                    HTTP_METHODS.join(", ")
                ),
            );
        }
        self.template(at, "url", "the URL", &s.url);
        if !starts_with_http(leading_literal(&s.url)) {
            self.report(
                at,
                "url",
                "bad_http",
                format!(
                    "the URL `{}` must start with http:// or https:// written out",
                    s.url
                ),
            );
        }
        for (name, value) in &s.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.report(
                    at,
                    "headers",
                    "bad_http",
                    format!("`{name}` is not a valid header name"),
                );
            }
            self.template(
                at,
                &format!("headers.{name}"),
                &format!("the header `{name}`"),
                value,
            );
        }
        if let Some(body) = &s.body {
            self.template(at, "body", "the body", body);
            if s.method == "GET" {
                self.report(
                    at,
                    "body",
                    "bad_http",
                    "a GET request sends no body: use POST, or put the data in the URL",
                );
            }
        }
        if let Some(t) = &s.timeout {
            self.duration(
                at,
                "timeout",
                "the time limit",
                t,
                true,
                Some(MAX_HTTP_TIMEOUT_SECS),
            );
        }
        for (target, pointer) in &s.save {
            let sub = format!("save.{target}");
            if !pointer.starts_with('/') {
                self.report(
                    at,
                    &sub,
                    "bad_http",
                    format!("`{pointer}` is not a place in the answer: write a JSON pointer starting with `/`, e.g. `/data/id`"),
                );
            }
            match target.strip_prefix("var.") {
                Some(name) if name.trim().is_empty() => {
                    self.report(
                        at,
                        &sub,
                        "bad_http",
                        "`var.` needs a variable name after it",
                    );
                }
                Some(_) => {}
                None => {
                    self.field(at, &sub, "the answer is saved to", target);
                }
            }
        }
    }

    fn trigger(&mut self, path: &str, t: &Trigger) {
        let at = At {
            step: None,
            path: path.to_string(),
        };
        match t {
            Trigger::Keyword {
                keywords, matching, ..
            } => {
                if *matching != KeywordMatch::Any && keywords.is_empty() {
                    self.report(
                        &at,
                        "keywords",
                        "bad_trigger",
                        "the keyword trigger has no keywords (use `match: any` for every message)",
                    );
                }
                for (i, k) in keywords.iter().enumerate() {
                    let sub = format!("keywords[{i}]");
                    match matching {
                        KeywordMatch::Regex => {
                            if let Err(e) = regex::Regex::new(k) {
                                let why = e.to_string();
                                let why = why
                                    .lines()
                                    .rfind(|l| !l.trim().is_empty())
                                    .unwrap_or("")
                                    .trim()
                                    .trim_start_matches("error: ");
                                self.report(
                                    &at,
                                    &sub,
                                    "bad_trigger",
                                    format!("“{k}” is not a valid regular expression ({why})"),
                                );
                            }
                        }
                        KeywordMatch::Exact | KeywordMatch::Contains => {
                            if crate::keywords::normalize(k).is_empty() {
                                self.report(&at, &sub, "bad_trigger", format!("the keyword “{k}” has no letters or digits, so no message can match it"));
                            }
                        }
                        KeywordMatch::Any => {}
                    }
                }
            }
            Trigger::Ref { reference } => {
                if reference.trim().is_empty() {
                    self.report(
                        &at,
                        "ref",
                        "bad_trigger",
                        "the link trigger has an empty `ref`",
                    );
                }
            }
            Trigger::NewSubscriber { .. } => {}
            Trigger::Button { payload } => {
                if payload.trim().is_empty() {
                    self.report(
                        &at,
                        "payload",
                        "bad_trigger",
                        "the button trigger has an empty `payload`",
                    );
                }
            }
            Trigger::TagAdded { tag } => self.tag_used(&at, "tag", tag),
            Trigger::FieldDate {
                field,
                at: time,
                offset_days,
            } => {
                self.date_field(&at, "field", "the trigger waits for the date in", field);
                if let Some(time) = time {
                    self.time(&at, "at", time);
                }
                if offset_days.unsigned_abs() > 366 {
                    self.report(
                        &at,
                        "offset_days",
                        "bad_trigger",
                        "`offset_days` must be within a year (-366 to 366)",
                    );
                }
            }
            Trigger::Event { name } => {
                if name.trim().is_empty() {
                    self.report(
                        &at,
                        "name",
                        "bad_trigger",
                        "the event trigger has no event name",
                    );
                } else if !is_event_name(name) {
                    // The events API accepts only these names, so any other never fires.
                    self.report(
                        &at,
                        "name",
                        "bad_trigger",
                        format!(
                            "`{name}` cannot be an event name: use 1 to 64 lower-case letters, digits, `_`, `.` or `-` (like `order_paid`)"
                        ),
                    );
                }
            }
            Trigger::Inactivity { after } => {
                self.duration(&at, "after", "the inactivity period", after, true, None);
            }
        }
    }

    fn field(&mut self, at: &At, sub: &str, what: &str, name: &str) -> Lookup<'a> {
        if name.trim().is_empty() {
            self.report(
                at,
                sub,
                "unknown_field",
                format!("{what} a field with no name"),
            );
            return Lookup::Missing;
        }
        if PROFILE_ATTRIBUTES.contains(&name) {
            return Lookup::Profile;
        }
        let Some(fields) = &self.fields else {
            return Lookup::Unchecked;
        };
        if let Some(def) = fields.get(name) {
            return Lookup::Custom(def);
        }
        let hint = suggestion(
            name,
            PROFILE_ATTRIBUTES
                .iter()
                .copied()
                .chain(fields.keys().copied()),
        );
        self.report(
            at,
            sub,
            "unknown_field",
            format!(
                "{what} `{name}`, which is neither a contact attribute nor a custom field{hint}"
            ),
        );
        Lookup::Missing
    }

    fn date_field(&mut self, at: &At, sub: &str, what: &str, name: &str) {
        match self.field(at, sub, what, name) {
            Lookup::Profile => {
                self.report(
                    at,
                    sub,
                    "wrong_field_type",
                    format!("{what} `{name}`, which holds no date: use a date or date-time field"),
                );
            }
            Lookup::Custom(def)
                if !matches!(def.spec.field_type, FieldType::Date | FieldType::Datetime) =>
            {
                self.report(
                    at,
                    sub,
                    "wrong_field_type",
                    format!(
                        "{what} `{name}`, a {} field: use a date or date-time field",
                        def.spec.field_type.as_str()
                    ),
                );
            }
            _ => {}
        }
    }

    fn tag_used(&mut self, at: &At, sub: &str, tag: &str) {
        if tag.trim().is_empty() {
            self.report(at, sub, "empty_name", "the tag name is empty");
            return;
        }
        let Some(tags) = &self.catalog.tags else {
            return;
        };
        if tags.iter().any(|t| t == tag) || self.added_tags.contains(tag) {
            return;
        }
        let hint = suggestion(
            tag,
            tags.iter()
                .map(String::as_str)
                .chain(self.added_tags.iter().copied()),
        );
        self.report(
            at,
            sub,
            "unknown_tag",
            format!("the tag “{tag}” does not exist and this flow never adds it{hint}"),
        );
    }

    fn topic(&mut self, at: &At, sub: &str, topic: &str) {
        if topic.trim().is_empty() {
            self.report(at, sub, "empty_name", "the topic name is empty");
            return;
        }
        let Some(topics) = &self.catalog.topics else {
            return;
        };
        if !topics.iter().any(|t| t == topic) {
            let hint = suggestion(topic, topics.iter().map(String::as_str));
            self.report(
                at,
                sub,
                "unknown_topic",
                format!("there is no subscription topic “{topic}”{hint}"),
            );
        }
    }

    fn template(&mut self, at: &At, sub: &str, what: &str, source: &'a str) {
        let Err(e) = self.templates.template_from_str(source) else {
            return;
        };
        let detail = e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string);
        let line = e
            .line()
            .map(|l| format!(" on line {l}"))
            .unwrap_or_default();
        self.report(
            at,
            sub,
            "bad_template",
            format!("{what} has a template error{line}: {detail}"),
        );
    }

    fn duration(
        &mut self,
        at: &At,
        sub: &str,
        what: &str,
        text: &str,
        positive: bool,
        max_secs: Option<i64>,
    ) {
        let parsed = if positive {
            duration::parse_positive(text)
        } else {
            duration::parse(text)
        };
        match parsed {
            Err(e) => self.report(at, sub, "bad_duration", format!("{what}: {e}")),
            Ok(d) => {
                if let Some(max) = max_secs.filter(|m| d.as_secs() > *m) {
                    self.report(
                        at,
                        sub,
                        "bad_duration",
                        format!("{what} `{text}` is too long: at most {max}s"),
                    );
                }
            }
        }
    }

    fn time(&mut self, at: &At, sub: &str, text: &str) {
        if parse_hhmm(text).is_none() {
            self.report(
                at,
                sub,
                "bad_time",
                format!("`{text}` is not a time of day: write HH:MM, e.g. 09:30"),
            );
        }
    }

    fn time_range(&mut self, at: &At, sub: &str, from: &str, to: &str) {
        self.time(at, &format!("{sub}.from"), from);
        self.time(at, &format!("{sub}.to"), to);
        if let (Some(a), Some(b)) = (parse_hhmm(from), parse_hhmm(to)) {
            if a == b {
                self.report(
                    at,
                    sub,
                    "bad_time",
                    format!("the time range {from}–{to} is empty: `from` and `to` must differ"),
                );
            }
        }
    }

    fn weekdays(&mut self, at: &At, sub: &str, days: &[String], empty_ok: bool) {
        if days.is_empty() && !empty_ok {
            self.report(at, sub, "bad_weekday", "the condition names no weekday");
        }
        for (i, d) in days.iter().enumerate() {
            if !WEEKDAYS.contains(&d.as_str()) {
                self.report(
                    at,
                    &format!("{sub}[{i}]"),
                    "bad_weekday",
                    format!("`{d}` is not a weekday: use {}", WEEKDAYS.join(", ")),
                );
            }
        }
    }
}

/// Every edge of a step: how the marketer would name it, its path inside the step, and
/// the target.
fn edges(step: &Step) -> Vec<(String, String, &str)> {
    fn opt<'s>(e: &mut Vec<(String, String, &'s str)>, name: &str, v: &'s Option<String>) {
        if let Some(t) = v {
            e.push((format!("`{name}`"), name.to_string(), t.as_str()));
        }
    }
    let mut e: Vec<(String, String, &str)> = Vec::new();
    match step {
        Step::Send(s) => {
            opt(&mut e, "next", &s.next);
            for (i, b) in s.buttons.iter().enumerate() {
                if let Some(t) = &b.next {
                    e.push((
                        format!("button “{}”", b.label),
                        format!("buttons[{i}].next"),
                        t.as_str(),
                    ));
                }
            }
            if let Some(to) = &s.timeout {
                e.push((
                    "the timeout".into(),
                    "timeout.next".into(),
                    to.next.as_str(),
                ));
            }
        }
        Step::Ask(s) => {
            opt(&mut e, "next", &s.next);
            opt(&mut e, "on_fail", &s.on_fail);
            for (i, c) in s.choices.iter().enumerate() {
                if let Some(t) = &c.next {
                    e.push((
                        format!("choice “{}”", c.label),
                        format!("choices[{i}].next"),
                        t.as_str(),
                    ));
                }
            }
            if let Some(to) = &s.timeout {
                e.push((
                    "the timeout".into(),
                    "timeout.next".into(),
                    to.next.as_str(),
                ));
            }
        }
        Step::Condition(s) => {
            for (i, b) in s.branches.iter().enumerate() {
                e.push((
                    format!("branch #{}", i + 1),
                    format!("branches[{i}].next"),
                    b.next.as_str(),
                ));
            }
            e.push(("`else`".into(), "else".into(), s.otherwise.as_str()));
        }
        Step::Split(s) => {
            for (i, v) in s.variants.iter().enumerate() {
                e.push((
                    format!("variant “{}”", v.name),
                    format!("variants[{i}].next"),
                    v.next.as_str(),
                ));
            }
        }
        Step::Action(s) => opt(&mut e, "next", &s.next),
        Step::Delay(s) => {
            opt(&mut e, "next", &s.next);
            opt(&mut e, "if_past", &s.if_past);
        }
        Step::Http(s) => {
            opt(&mut e, "next", &s.next);
            opt(&mut e, "on_error", &s.on_error);
        }
        Step::StartFlow(s) => opt(&mut e, "next", &s.next),
        Step::Handoff(s) => opt(&mut e, "next", &s.next),
        Step::Stop(_) => {}
    }
    e
}

/// Strongly connected components (Kosaraju, without recursion so a long chain of steps
/// cannot overflow the stack), each sorted by index.
fn components(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = graph.len();
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for s in 0..n {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut stack = vec![(s, 0usize)];
        while let Some((v, i)) = stack.pop() {
            if let Some(&w) = graph[v].get(i) {
                stack.push((v, i + 1));
                if !seen[w] {
                    seen[w] = true;
                    stack.push((w, 0));
                }
            } else {
                order.push(v);
            }
        }
    }
    let mut reverse = vec![Vec::new(); n];
    for (v, ws) in graph.iter().enumerate() {
        for &w in ws {
            reverse[w].push(v);
        }
    }
    let mut assigned = vec![false; n];
    let mut out = Vec::new();
    for &s in order.iter().rev() {
        if assigned[s] {
            continue;
        }
        assigned[s] = true;
        let mut members = Vec::new();
        let mut stack = vec![s];
        while let Some(v) = stack.pop() {
            members.push(v);
            for &w in &reverse[v] {
                if !assigned[w] {
                    assigned[w] = true;
                    stack.push(w);
                }
            }
        }
        members.sort_unstable();
        out.push(members);
    }
    out.sort_by_key(|m| m[0]);
    out
}

/// The shortest way from `start` back to itself inside a component, as step indexes
/// beginning and ending with `start`.
fn shortest_cycle(graph: &[Vec<usize>], members: &[usize], start: usize) -> Vec<usize> {
    let inside: HashSet<usize> = members.iter().copied().collect();
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &graph[v] {
            if !inside.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![start, v];
                let mut at = v;
                while let Some(&p) = prev.get(&at) {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    members.to_vec()
}

fn valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_STEP_ID
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn expect_name(e: Expect) -> &'static str {
    match e {
        Expect::Text => "text",
        Expect::Email => "an e-mail address",
        Expect::Phone => "a phone number",
        Expect::Number => "a number",
        Expect::Date => "a date",
        Expect::Choice => "a choice",
    }
}

/// Whether a custom field of type `t` can store an answer of kind `e`.
fn answer_fits(e: Expect, t: FieldType) -> bool {
    match e {
        Expect::Text | Expect::Email | Expect::Phone => t == FieldType::Text,
        Expect::Number => matches!(t, FieldType::Text | FieldType::Number),
        Expect::Date => matches!(t, FieldType::Text | FieldType::Date),
        Expect::Choice => matches!(t, FieldType::Text | FieldType::Choice),
    }
}

/// `HH:MM` (or `H:MM`) as hours and minutes.
fn parse_hhmm(text: &str) -> Option<(u8, u8)> {
    let (h, m) = text.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return None;
    }
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

/// RFC 3339, or `YYYY-MM-DD HH:MM` in the contact's time zone.
fn is_moment(text: &str) -> bool {
    let t = text.trim();
    t.parse::<jiff::Timestamp>().is_ok()
        || jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", t).is_ok()
}

/// The text of a template before its first tag, which is all that is known for certain
/// about what it renders to.
fn leading_literal(source: &str) -> &str {
    let end = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|tag| source.find(tag))
        .min()
        .unwrap_or(source.len());
    &source[..end]
}

/// Whether a template renders to an http(s) URL as far as can be told: its leading text
/// says so, or it starts with a tag (a link taken whole from a variable).
fn is_link(source: &str) -> bool {
    let literal = leading_literal(source);
    starts_with_http(literal) || (literal.trim().is_empty() && literal.len() < source.len())
}

fn starts_with_http(text: &str) -> bool {
    let t = text.trim_start().to_ascii_lowercase();
    t.starts_with("http://") || t.starts_with("https://")
}

/// Characters of a template outside its tags: a lower bound of the rendered length.
fn literal_chars(source: &str) -> usize {
    let mut count = 0;
    let mut rest = source;
    loop {
        let next = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|open| rest.find(open).map(|i| (i, *open)))
            .min_by_key(|(i, _)| *i);
        let Some((i, open)) = next else {
            return count + rest.chars().count();
        };
        count += rest[..i].chars().count();
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        match rest[i + 2..].find(close) {
            Some(j) => rest = &rest[i + 2 + j + 2..],
            None => return count,
        }
    }
}

/// ` (did you mean `x`?)` when a candidate is a likely typo of `name`.
fn suggestion<'b>(name: &str, candidates: impl Iterator<Item = &'b str>) -> String {
    let limit = match name.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .filter(|c| *c != name && !c.is_empty())
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldSpec;
    use crate::FieldId;
    use serde_json::{json, Value};

    fn field(id: i64, key: &str, t: FieldType, choices: &[&str]) -> FieldDefinition {
        FieldDefinition {
            id: FieldId(id),
            spec: FieldSpec {
                key: key.into(),
                label: key.into(),
                field_type: t,
                choices: choices.iter().map(|c| c.to_string()).collect(),
            },
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            fields: Some(vec![
                field(1, "city", FieldType::Text, &[]),
                field(2, "age", FieldType::Number, &[]),
                field(3, "birthday", FieldType::Date, &[]),
                field(4, "webinar_at", FieldType::Datetime, &[]),
                field(5, "plan", FieldType::Choice, &["basic", "pro"]),
            ]),
            tags: Some(vec!["vip".into(), "lead".into()]),
            topics: Some(vec!["news".into()]),
            flows: Some(vec!["onboarding".into()]),
            channels: vec![
                ChannelLimits {
                    name: "telegram".into(),
                    text_limit: None,
                    max_buttons: 12,
                    button_label_limit: 64,
                    payload_limit_bytes: 1000,
                    media: true,
                },
                ChannelLimits {
                    name: "sms".into(),
                    text_limit: Some(40),
                    max_buttons: 3,
                    button_label_limit: 10,
                    payload_limit_bytes: 8,
                    media: false,
                },
            ],
        }
    }

    fn doc(v: Value) -> FlowDocument {
        serde_json::from_value(v).expect("a well-formed document")
    }

    /// A flow of the given steps after a first step `a` that leads to the first of them.
    fn flow(steps: Value) -> FlowDocument {
        let mut all = vec![
            json!({"type": "action", "id": "a", "actions": [{"add_tag": "started"}],
            "next": steps[0]["id"]}),
        ];
        all.extend(steps.as_array().cloned().unwrap_or_default());
        doc(json!({"start": "a", "steps": all}))
    }

    fn check(d: &FlowDocument) -> Vec<Problem> {
        validate(d, &catalog())
    }

    /// The only problem of `d`, which must have `code` and be in `step`.
    fn only(d: &FlowDocument, code: &str, step: Option<&str>) -> Problem {
        let problems = check(d);
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        let p = problems.into_iter().next().expect("one problem");
        assert_eq!((p.code, p.step.as_deref()), (code, step), "{p:#?}");
        p
    }

    fn says(p: &Problem, words: &[&str]) {
        for w in words {
            assert!(
                p.message.contains(w),
                "{:?} should mention {w:?}",
                p.message
            );
        }
    }

    #[test]
    fn a_realistic_flow_has_no_problems() {
        let d = doc(json!({
            "name": "Webinar funnel",
            "triggers": [
                {"type": "keyword", "keywords": ["вебинар", "webinar"]},
                {"type": "keyword", "keywords": ["^промо\\d+$"], "match": "regex"},
                {"type": "ref", "ref": "webinar_ads"},
                {"type": "tag_added", "tag": "vip"},
                {"type": "field_date", "field": "birthday", "at": "10:00", "offset_days": -1},
                {"type": "inactivity", "after": "7d"}
            ],
            "exit_on": [{"type": "event", "name": "order_paid"}],
            "start": "hello",
            "steps": [
                {"type": "send", "id": "hello",
                 "text": "Привет, {{ contact.first_name | default(\"друг\") }}! Придёшь на вебинар?",
                 "media": {"kind": "image", "url": "https://cdn.example.com/{{ contact.id }}.png"},
                 "buttons": [{"label": "Да", "next": "ask_email"}, {"label": "Нет", "next": "bye"},
                             {"label": "Сайт", "url": "https://example.com"}],
                 "timeout": {"after": "1d", "next": "bye"}},
                {"type": "ask", "id": "ask_email", "text": "Ваш e-mail?", "expect": "email",
                 "field": "email", "retry_text": "Похоже, это не адрес", "next": "ask_plan", "on_fail": "bye"},
                {"type": "ask", "id": "ask_plan", "text": "Тариф?", "expect": "choice", "field": "plan",
                 "choices": [{"label": "Basic", "value": "basic"}, {"label": "Pro", "value": "pro", "next": "crm"}],
                 "next": "segment"},
                {"type": "http", "id": "crm", "method": "POST", "url": "https://crm.example.com/leads?src={{ flow.name }}",
                 "headers": {"Authorization": "Bearer {{ secrets.crm }}"}, "body": "{{ contact | tojson }}",
                 "timeout": "10s", "save": {"city": "/data/city", "var.lead_id": "/data/id"},
                 "next": "segment", "on_error": "segment"},
                {"type": "condition", "id": "segment", "branches": [
                    {"if": {"all": [{"tag": "vip"}, {"field": {"name": "age", "op": "gte", "value": 18}}]}, "next": "vip"},
                    {"if": {"any": [{"subscribed": "news"}, {"not": {"channel": "webchat"}}]}, "next": "wait"},
                    {"if": {"weekday": ["sat", "sun"]}, "next": "wait"},
                    {"if": {"local_time": {"from": "22:00", "to": "08:00"}}, "next": "wait"},
                    {"if": {"var": {"name": "http.status", "op": "exists"}}, "next": "wait"}
                 ], "else": "ab"},
                {"type": "split", "id": "ab", "variants": [
                    {"name": "A", "weight": 50, "next": "wait"}, {"name": "B", "weight": 50, "next": "remind"}]},
                {"type": "action", "id": "vip", "actions": [
                    {"add_tag": "webinar"}, {"remove_tag": "lead"}, {"set_field": {"field": "city", "value": "{{ answers.ask_email }}"}},
                    {"set_var": {"name": "x", "value": "1"}}, {"subscribe": "news"}, {"notify": "VIP {{ contact.first_name }}"},
                    {"conversion": {"name": "vip", "value": 10.5, "currency": "RUB"}}],
                 "next": "wait"},
                {"type": "delay", "id": "wait", "until_field": {"field": "webinar_at", "offset": "-1h"},
                 "smart": true, "next": "remind", "if_past": "later"},
                {"type": "delay", "id": "remind", "window": {"weekdays": ["mon", "tue"], "from": "10:00", "to": "12:00"},
                 "next": "loop_back"},
                {"type": "condition", "id": "loop_back", "branches": [
                    {"if": {"tag": "webinar"}, "next": "hello"}], "else": "handoff"},
                {"type": "handoff", "id": "handoff", "note": "Поговорите с {{ contact.first_name }}", "next": "onboard"},
                {"type": "start_flow", "id": "onboard", "flow": "onboarding", "next": "bye"},
                {"type": "delay", "id": "later", "until": "2026-03-01 10:00", "next": "bye"},
                {"type": "stop", "id": "bye"}
            ]
        }));
        let mut telegram_only = catalog();
        telegram_only.channels.retain(|c| c.name == "telegram");
        assert_eq!(validate(&d, &telegram_only), vec![]);
        // Without a database, nothing that needs one is checked.
        let offline = Catalog::default();
        assert_eq!(validate(&d, &offline), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let d = doc(json!({
            "start": "hello",
            "triggers": [{"type": "keyword"}],
            "steps": [
                {"type": "send", "id": "hello", "text": "{{ oops", "next": "nowhere"},
                {"type": "delay", "id": "wait", "for": "2 hours"},
                {"type": "send", "id": "hello"}
            ]
        }));
        let problems = check(&d);
        let codes: Vec<(&str, Option<&str>)> = problems
            .iter()
            .map(|p| (p.code, p.step.as_deref()))
            .collect();
        for expected in [
            ("bad_trigger", None),
            ("duplicate_step", Some("hello")),
            ("dangling_target", Some("hello")),
            ("bad_template", Some("hello")),
            ("bad_duration", Some("wait")),
            ("empty_message", Some("hello")),
            ("unreachable_step", Some("wait")),
        ] {
            assert!(
                codes.contains(&expected),
                "{expected:?} missing from {problems:#?}"
            );
        }
    }

    #[test]
    fn problems_display_with_their_step_or_path() {
        let p = Problem {
            step: Some("ask_email".into()),
            path: "steps[2].field".into(),
            code: "unknown_field",
            message: "boom".into(),
        };
        assert_eq!(p.to_string(), "step ask_email: boom");
        let p = Problem { step: None, ..p };
        assert_eq!(p.to_string(), "steps[2].field: boom");
        let p = Problem {
            path: String::new(),
            ..p
        };
        assert_eq!(p.to_string(), "boom");
    }

    #[test]
    fn duplicate_step() {
        let d = flow(json!([{"type": "stop", "id": "end"}, {"type": "stop", "id": "end"}]));
        let p = only(&d, "duplicate_step", Some("end"));
        assert_eq!(p.path, "steps[2].id");
        says(&p, &["two steps", "`end`"]);
    }

    #[test]
    fn empty_and_bad_step_ids() {
        let d = flow(
            json!([{"type": "action", "id": "x", "actions": [{"add_tag": "t"}], "next": ""},
            {"type": "stop", "id": ""}]),
        );
        let problems = check(&d);
        assert!(
            problems.iter().any(|p| p.code == "empty_step_id"
                && p.step.is_none()
                && p.path == "steps[2].id"
                && p.message.contains("no id")),
            "{problems:#?}"
        );
        let d = flow(json!([{"type": "stop", "id": "шаг 1"}]));
        let p = only(&d, "bad_step_id", Some("шаг 1"));
        says(&p, &["not a valid step id", "letters, digits"]);
    }

    #[test]
    fn no_steps() {
        let d = doc(json!({"start": "a", "steps": []}));
        let problems = check(&d);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].code, "no_steps");
        says(&problems[0], &["no steps"]);
    }

    #[test]
    fn missing_start() {
        let d = doc(json!({"start": "helo", "steps": [{"type": "stop", "id": "hello"}]}));
        let problems = check(&d);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        assert_eq!((p.code, p.path.as_str()), ("missing_start", "start"));
        says(p, &["`helo`", "not a step", "did you mean `hello`"]);
    }

    #[test]
    fn dangling_target() {
        let d = flow(json!([
            {"type": "send", "id": "offer", "text": "Хотите гайд?",
             "buttons": [{"label": "Yes", "next": "ask_emial"}, {"label": "No", "next": "end"}]},
            {"type": "ask", "id": "ask_email", "text": "E-mail?", "next": "end"},
            {"type": "stop", "id": "end"}
        ]));
        let problems = check(&d);
        let p = problems
            .iter()
            .find(|p| p.code == "dangling_target")
            .expect("dangling");
        assert_eq!(
            (p.step.as_deref(), p.path.as_str()),
            (Some("offer"), "steps[1].buttons[0].next")
        );
        says(
            p,
            &[
                "button “Yes” leads to `ask_emial`, which is not a step",
                "did you mean `ask_email`",
            ],
        );
        // The misspelt target leaves the real step unreached.
        assert!(problems
            .iter()
            .any(|p| p.code == "unreachable_step" && p.step.as_deref() == Some("ask_email")));
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }

    #[test]
    fn unreachable_step() {
        let d = flow(
            json!([{"type": "stop", "id": "end"}, {"type": "send", "id": "orphan", "text": "hi"}]),
        );
        let p = only(&d, "unreachable_step", Some("orphan"));
        says(&p, &["no contact ever gets here", "start step `a`"]);
    }

    #[test]
    fn loop_without_wait() {
        let d = flow(json!([
            {"type": "condition", "id": "check", "branches": [{"if": {"tag": "vip"}, "next": "tag"}], "else": "end"},
            {"type": "action", "id": "tag", "actions": [{"add_tag": "x"}], "next": "check"},
            {"type": "stop", "id": "end"}
        ]));
        let p = only(&d, "loop_without_wait", Some("check"));
        says(&p, &["`check` → `tag` → `check`", "loop forever"]);

        // A wait anywhere in the loop makes it harmless.
        let d = flow(json!([
            {"type": "condition", "id": "check", "branches": [{"if": {"tag": "vip"}, "next": "pause"}], "else": "end"},
            {"type": "delay", "id": "pause", "for": "1d", "next": "check"},
            {"type": "stop", "id": "end"}
        ]));
        assert_eq!(check(&d), vec![]);

        // A step leading to itself.
        let d = flow(
            json!([{"type": "action", "id": "spin", "actions": [{"add_tag": "x"}], "next": "spin"}]),
        );
        let p = only(&d, "loop_without_wait", Some("spin"));
        says(&p, &["`spin` → `spin`"]);
    }

    #[test]
    fn unknown_field() {
        let d =
            flow(json!([{"type": "ask", "id": "ask_city", "text": "Город?", "field": "citty"}]));
        let p = only(&d, "unknown_field", Some("ask_city"));
        assert_eq!(p.path, "steps[1].field");
        says(
            &p,
            &[
                "`citty`",
                "neither a contact attribute nor a custom field",
                "did you mean `city`",
            ],
        );

        let d = flow(json!([{"type": "condition", "id": "c", "branches": [
            {"if": {"not": {"field": {"name": "score", "op": "gt", "value": 3}}}, "next": "end"}], "else": "end"},
            {"type": "action", "id": "set", "actions": [{"set_field": {"field": "zip", "value": "1"}}]},
            {"type": "stop", "id": "end"}]));
        let problems = check(&d);
        assert!(problems.iter().any(
            |p| p.code == "unknown_field" && p.path == "steps[1].branches[0].if.not.field.name"
        ));
        assert!(problems
            .iter()
            .any(|p| p.code == "unknown_field" && p.step.as_deref() == Some("set")));

        let d = flow(
            json!([{"type": "http", "id": "crm", "url": "https://x.example/", "save": {"crm_id": "/id"}}]),
        );
        let p = only(&d, "unknown_field", Some("crm"));
        says(&p, &["`crm_id`"]);

        // Without the workspace's fields only contact attributes are known, and nothing
        // else is reported.
        let d =
            flow(json!([{"type": "ask", "id": "ask_city", "text": "Город?", "field": "citty"}]));
        assert_eq!(validate(&d, &Catalog::default()), vec![]);
    }

    #[test]
    fn wrong_field_type() {
        let d = flow(json!([{"type": "delay", "id": "wait", "until_field": {"field": "city"}}]));
        let p = only(&d, "wrong_field_type", Some("wait"));
        says(&p, &["`city`", "text field", "date"]);

        let d = doc(
            json!({"start": "a", "triggers": [{"type": "field_date", "field": "first_name"}],
            "steps": [{"type": "stop", "id": "a"}]}),
        );
        let p = only(&d, "wrong_field_type", None);
        assert_eq!(p.path, "triggers[0].field");
        says(&p, &["`first_name`", "no date"]);

        let d = flow(
            json!([{"type": "ask", "id": "born", "text": "Дата?", "expect": "date", "field": "age"}]),
        );
        let p = only(&d, "wrong_field_type", Some("born"));
        says(&p, &["a date", "`age`", "number field"]);

        // A number fits a text field.
        let d = flow(
            json!([{"type": "ask", "id": "n", "text": "Сколько?", "expect": "number", "field": "city"}]),
        );
        assert_eq!(check(&d), vec![]);

        let d = flow(
            json!([{"type": "ask", "id": "p", "text": "Тариф?", "expect": "choice", "field": "plan",
            "choices": [{"label": "basic"}, {"label": "Gold", "value": "gold"}]}]),
        );
        let p = only(&d, "wrong_field_type", Some("p"));
        says(&p, &["“gold”", "basic, pro"]);
    }

    #[test]
    fn unknown_tag() {
        let d = flow(
            json!([{"type": "condition", "id": "c", "branches": [{"if": {"tag": "vipp"}, "next": "end"}], "else": "end"},
            {"type": "stop", "id": "end"}]),
        );
        let p = only(&d, "unknown_tag", Some("c"));
        assert_eq!(p.path, "steps[1].branches[0].if.tag");
        says(&p, &["“vipp”", "does not exist", "did you mean `vip`"]);

        // A tag added by the flow itself (`started`, by step `a`) is known.
        let d =
            flow(json!([{"type": "action", "id": "r", "actions": [{"remove_tag": "started"}]}]));
        assert_eq!(check(&d), vec![]);

        let d = doc(
            json!({"start": "a", "exit_on": [{"type": "tag_added", "tag": "buyer"}],
            "steps": [{"type": "stop", "id": "a"}]}),
        );
        let p = only(&d, "unknown_tag", None);
        assert_eq!(p.path, "exit_on[0].tag");
    }

    #[test]
    fn unknown_topic_and_flow() {
        let d = flow(
            json!([{"type": "action", "id": "s", "actions": [{"subscribe": "promo"}], "next": "go"},
            {"type": "start_flow", "id": "go", "flow": "onbording"}]),
        );
        let problems = check(&d);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        let topic = problems
            .iter()
            .find(|p| p.code == "unknown_topic")
            .expect("topic");
        assert_eq!(topic.step.as_deref(), Some("s"));
        says(topic, &["“promo”"]);
        let flow_p = problems
            .iter()
            .find(|p| p.code == "unknown_flow")
            .expect("flow");
        assert_eq!(flow_p.step.as_deref(), Some("go"));
        says(flow_p, &["`onbording`", "did you mean `onboarding`"]);
    }

    #[test]
    fn bad_template() {
        let d = flow(
            json!([{"type": "send", "id": "hi", "text": "Привет,\n{{ contact.first_name | default(\"друг\") }\n"}]),
        );
        let p = only(&d, "bad_template", Some("hi"));
        assert_eq!(p.path, "steps[1].text");
        says(&p, &["the text has a template error", "line 2"]);

        let d = flow(json!([{"type": "http", "id": "h", "url": "https://x.example/{% if %}"}]));
        let p = only(&d, "bad_template", Some("h"));
        says(&p, &["the URL"]);
    }

    #[test]
    fn bad_duration() {
        let d = flow(json!([{"type": "delay", "id": "wait", "for": "2 hours"}]));
        let p = only(&d, "bad_duration", Some("wait"));
        says(&p, &["`2 hours` is not a duration"]);
        let d = flow(
            json!([{"type": "http", "id": "h", "url": "https://x.example/", "timeout": "1m"}]),
        );
        let p = only(&d, "bad_duration", Some("h"));
        says(&p, &["too long", "30s"]);
        let d = flow(
            json!([{"type": "delay", "id": "w", "until_field": {"field": "birthday", "offset": "-1x"}}]),
        );
        only(&d, "bad_duration", Some("w"));
        let d = doc(
            json!({"start": "a", "triggers": [{"type": "inactivity", "after": "0s"}],
            "steps": [{"type": "stop", "id": "a"}]}),
        );
        let p = only(&d, "bad_duration", None);
        says(&p, &["positive"]);
    }

    #[test]
    fn bad_time_and_weekday() {
        let d = flow(
            json!([{"type": "delay", "id": "w", "window": {"weekdays": ["mon", "Friday"], "from": "9:00", "to": "25:00"}}]),
        );
        let problems = check(&d);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        let time = problems
            .iter()
            .find(|p| p.code == "bad_time")
            .expect("time");
        assert_eq!(time.path, "steps[1].window.to");
        says(time, &["`25:00`", "HH:MM"]);
        let day = problems
            .iter()
            .find(|p| p.code == "bad_weekday")
            .expect("weekday");
        says(day, &["`Friday`", "mon, tue"]);

        let d = doc(
            json!({"start": "a", "triggers": [{"type": "field_date", "field": "birthday", "at": "noon"}],
            "steps": [{"type": "stop", "id": "a"}]}),
        );
        only(&d, "bad_time", None);
    }

    #[test]
    fn bad_delay() {
        let d = flow(json!([{"type": "delay", "id": "w"}]));
        let p = only(&d, "bad_delay", Some("w"));
        says(&p, &["how long to wait"]);
        let d =
            flow(json!([{"type": "delay", "id": "w", "for": "1h", "until": "2026-03-01 10:00"}]));
        let p = only(&d, "bad_delay", Some("w"));
        says(&p, &["more than one"]);
        let d = flow(json!([{"type": "delay", "id": "w", "until": "01.03.2026"}]));
        let p = only(&d, "bad_delay", Some("w"));
        says(&p, &["`01.03.2026` is not a moment"]);
        let d = flow(json!([{"type": "delay", "id": "w", "until": "2026-03-01T10:00:00+03:00"}]));
        assert_eq!(check(&d), vec![]);
    }

    #[test]
    fn bad_condition_op_and_empty_condition() {
        let d = flow(json!([{"type": "condition", "id": "c", "branches": [
            {"if": {"field": {"name": "age", "op": ">", "value": 3}}, "next": "end"},
            {"if": {"var": {"name": "answers.q", "op": "eq"}}, "next": "end"}], "else": "end"},
            {"type": "stop", "id": "end"}]));
        let problems = check(&d);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems
            .iter()
            .all(|p| p.code == "bad_condition_op" && p.step.as_deref() == Some("c")));
        says(&problems[0], &["`>` is not a comparison", "gte"]);
        says(&problems[1], &["needs a value"]);

        let d = flow(
            json!([{"type": "condition", "id": "c", "branches": [], "else": "end"}, {"type": "stop", "id": "end"}]),
        );
        let p = only(&d, "empty_condition", Some("c"));
        says(&p, &["no branches", "`end`"]);
        let d = flow(
            json!([{"type": "condition", "id": "c", "branches": [{"if": {"any": []}, "next": "end"}], "else": "end"},
            {"type": "stop", "id": "end"}]),
        );
        let p = only(&d, "empty_condition", Some("c"));
        says(&p, &["empty `any`", "never"]);
    }

    #[test]
    fn bad_split() {
        let d = flow(json!([{"type": "split", "id": "ab", "variants": []}]));
        let p = only(&d, "bad_split", Some("ab"));
        says(&p, &["no variants"]);
        let d = flow(json!([{"type": "split", "id": "ab", "variants": [
            {"name": "A", "weight": 0, "next": "end"}, {"name": "A", "weight": 0, "next": "end"}]},
            {"type": "stop", "id": "end"}]));
        let problems = check(&d);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        says(&problems[0], &["weight 0"]);
        says(&problems[1], &["two variants", "“A”"]);
    }

    #[test]
    fn empty_message() {
        let d = flow(json!([{"type": "send", "id": "hi", "text": "  "}]));
        let p = only(&d, "empty_message", Some("hi"));
        says(&p, &["neither text nor a picture"]);
    }

    #[test]
    fn over_limit() {
        let d = flow(json!([{"type": "send", "id": "hi",
            "text": "{{ contact.first_name }}, this text is longer than forty characters",
            "media": {"kind": "image", "url": "https://x.example/a.png"},
            "buttons": [{"label": "One", "next": "end"}, {"label": "Two", "next": "end"},
                        {"label": "Three", "next": "end"}, {"label": "A very long label", "value": "123456789", "next": "end"}]},
            {"type": "stop", "id": "end"}]));
        let problems = check(&d);
        assert!(
            problems
                .iter()
                .all(|p| p.code == "over_limit" && p.step.as_deref() == Some("hi")),
            "{problems:#?}"
        );
        let all: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(all.len(), 5, "{all:#?}");
        assert!(
            all[0].contains("at least 43 characters") && all[0].contains("sms shows at most 40"),
            "{all:#?}"
        );
        assert!(
            all[1].contains("4 buttons") && all[1].contains("at most 3"),
            "{all:#?}"
        );
        assert!(all[2].contains("“A very long label”"), "{all:#?}");
        assert!(all[3].contains("9 bytes"), "{all:#?}");
        assert!(all[4].contains("sms cannot send pictures"), "{all:#?}");

        let d = flow(
            json!([{"type": "ask", "id": "q", "text": "?", "expect": "choice",
            "choices": [{"label": "a"}, {"label": "b"}, {"label": "c"}, {"label": "d"}]}]),
        );
        let p = only(&d, "over_limit", Some("q"));
        says(&p, &["4 choices", "sms"]);
    }

    #[test]
    fn bad_button() {
        let d = flow(
            json!([{"type": "send", "id": "hi", "text": "Сайт", "buttons": [
            {"label": "Open", "url": "https://x.example", "next": "end"},
            {"label": "Mail", "url": "mailto:a@b.c"}, {"label": " "}]}, {"type": "stop", "id": "end"}]),
        );
        let problems = check(&d);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems
            .iter()
            .all(|p| p.code == "bad_button" && p.step.as_deref() == Some("hi")));
        says(&problems[0], &["“Open”", "both `next` and `url`"]);
        says(&problems[1], &["“Mail”", "http:// or https://"]);
        says(&problems[2], &["no label"]);

        // A link taken whole from a variable cannot be checked before it is sent.
        let d = flow(json!([{"type": "send", "id": "pay", "text": "Оплата",
            "buttons": [{"label": "Pay", "url": "{{ http.body.url }}"}]}]));
        assert_eq!(check(&d), vec![]);
    }

    #[test]
    fn bad_media() {
        let d = flow(json!([{"type": "send", "id": "pic",
            "media": {"kind": "image", "url": "cdn.example.com/a.png"}}]));
        let mut catalog = catalog();
        catalog.channels.clear();
        let problems = validate(&d, &catalog);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(
            (problems[0].code, problems[0].path.as_str()),
            ("bad_media", "steps[1].media.url")
        );
        says(&problems[0], &["http:// or https://"]);
    }

    #[test]
    fn bad_ask() {
        let d = flow(json!([{"type": "ask", "id": "q", "text": "Тариф?", "expect": "choice"}]));
        let p = only(&d, "bad_ask", Some("q"));
        says(&p, &["expects a choice", "no choices"]);
        let d = flow(
            json!([{"type": "ask", "id": "q", "text": "Тариф?", "choices": [{"label": "A"}, {"label": "A"}]}]),
        );
        let problems = check(&d);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        says(&problems[0], &["expect: choice"]);
        says(&problems[1], &["“A”", "twice"]);
    }

    #[test]
    fn bad_http() {
        let d = flow(
            json!([{"type": "http", "id": "h", "method": "get", "url": "{{ vars.host }}/x",
            "body": "{}", "headers": {"Bad Header": "1"}, "save": {"var.id": "data.id", "var.": "/x"}}]),
        );
        let problems = check(&d);
        assert!(
            problems
                .iter()
                .all(|p| p.code == "bad_http" && p.step.as_deref() == Some("h")),
            "{problems:#?}"
        );
        let text: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(text[0].contains("`get` is not an HTTP method") && text[0].contains("GET, POST"));
        assert!(text[1].contains("must start with http:// or https://"));
        assert!(text[2].contains("`Bad Header`"));
        assert!(text
            .iter()
            .any(|t| t.contains("`data.id`") && t.contains("starting with `/`")));
        assert!(text
            .iter()
            .any(|t| t.contains("`var.` needs a variable name")));

        let d = flow(
            json!([{"type": "http", "id": "h", "method": "GET", "url": "https://x.example", "body": "{}"}]),
        );
        let p = only(&d, "bad_http", Some("h"));
        says(&p, &["GET request sends no body"]);
    }

    #[test]
    fn bad_trigger() {
        let d = doc(
            json!({"start": "a", "steps": [{"type": "stop", "id": "a"}], "triggers": [
            {"type": "keyword", "keywords": []},
            {"type": "keyword", "match": "regex", "keywords": ["(промо"]},
            {"type": "keyword", "keywords": ["!!!"]},
            {"type": "keyword", "match": "any"},
            {"type": "ref", "ref": ""},
            {"type": "button", "payload": " "},
            {"type": "event", "name": ""},
            {"type": "event", "name": "Order Paid"}
        ], "exit_on": [{"type": "keyword", "match": "contains"}]}),
        );
        let problems = check(&d);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "triggers[0].keywords",
                "triggers[1].keywords[0]",
                "triggers[2].keywords[0]",
                "triggers[4].ref",
                "triggers[5].payload",
                "triggers[6].name",
                "triggers[7].name",
                "exit_on[0].keywords"
            ]
        );
        assert!(problems
            .iter()
            .all(|p| p.code == "bad_trigger" && p.step.is_none()));
        says(&problems[0], &["no keywords", "match: any"]);
        says(
            &problems[1],
            &[
                "“(промо” is not a valid regular expression",
                "unclosed group",
            ],
        );
        says(&problems[2], &["no letters or digits"]);
        assert_eq!(
            problems[1].to_string(),
            format!("triggers[1].keywords[0]: {}", problems[1].message)
        );
    }

    #[test]
    fn no_trigger_is_fine() {
        let d = doc(json!({"start": "a", "steps": [{"type": "send", "id": "a", "text": "hi"}]}));
        assert_eq!(check(&d), vec![]);
    }

    #[test]
    fn literal_length_skips_template_tags() {
        assert_eq!(literal_chars("Hi {{ contact.first_name }}!"), 4);
        assert_eq!(literal_chars("{% if x %}да{% endif %}{# note #}"), 2);
        assert_eq!(literal_chars("broken {{ tag"), 7);
        assert_eq!(leading_literal("https://x/{{ a }}"), "https://x/");
    }
}
