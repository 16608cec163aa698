//! Segments: a JSON filter language over contacts (and/or/not over tags, fields,
//! channels, consent, profile attributes and behaviour).
//!
//! A filter goes through two steps. [`parse`] checks the shape of the JSON alone (so a
//! filter can be checked anywhere, and a saved one keeps its names, not ids: renaming a
//! field must not silently retarget a segment). [`resolve`] then checks every name
//! against the workspace's [`SegmentCatalog`], types every operand against its field
//! definition and turns relative days into absolute times, giving a [`Resolved`] tree
//! the store compiles to SQL. Both steps report every problem at once, each with a JSON
//! pointer to the node at fault, so an editor can underline all of them.

use crate::channel::ChannelKind;
use crate::field::{FieldDefinition, FieldType, FieldValue};
use crate::filter::{FieldOp, Operand};
use crate::subscription::SubscriptionState;
use crate::{BroadcastId, ChannelId, FlowId, TagId};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};

/// Deepest nesting of and/or/not accepted: deeper trees are machine-made mistakes and
/// would make SQL the database refuses to parse.
pub const MAX_DEPTH: usize = 12;

/// Most nodes in one filter: keeps the generated SQL (and its parameters) bounded.
pub const MAX_NODES: usize = 300;

/// Most values in one `in` / language / time zone / source list.
pub const MAX_VALUES: usize = 500;

/// Largest day count (`within_days`, `older_than_days`): a century.
pub const MAX_DAYS: u64 = 36_500;

/// Seconds in a day (days are counted in UTC).
const DAY_SECONDS: i64 = 86_400;

/// One thing wrong with a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Problem {
    /// JSON pointer to the node or value at fault (`/and/1/op`; empty for the whole).
    pub path: String,
    /// Stable machine code, e.g. `unknown_tag`, `invalid_value`.
    pub code: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl Problem {
    /// Builds a problem at `path`.
    pub fn new(path: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// A parsed filter; names (tags, fields, flows, channels, topics) are not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Every child matches (an empty list matches everyone).
    And(Vec<Node>),
    /// At least one child matches.
    Or(Vec<Node>),
    /// The child does not match.
    Not(Box<Node>),
    /// A leaf condition.
    Cond(Condition),
}

/// A leaf of a parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Has the tag (by name).
    Tag(String),
    /// A custom field or profile attribute compared with `op` (value is `Null` for `exists`).
    Field {
        /// Field key or profile attribute name.
        key: String,
        /// The comparison.
        op: SegmentOp,
        /// The operand as written.
        value: Value,
    },
    /// Has an identity on that channel.
    Channel(ChannelRef),
    /// Has an identity in `state` (on that channel, if given).
    Subscription {
        /// Channel restriction (none = any channel).
        channel: Option<ChannelRef>,
        /// The consent state.
        state: SubscriptionState,
    },
    /// Subscribed with that topic on some channel.
    Topic(String),
    /// Profile language is one of these (`ru` also matches `ru-RU`).
    Language(Vec<String>),
    /// Profile time zone is one of these.
    TimeZone(Vec<String>),
    /// Acquisition source is one of these.
    Source(Vec<String>),
    /// Got / read / clicked a broadcast.
    Broadcast {
        /// The broadcast.
        id: BroadcastId,
        /// What happened.
        event: BroadcastEvent,
    },
    /// Entered / finished a flow.
    Flow {
        /// The flow, by name or id.
        flow: FlowRef,
        /// What happened.
        event: FlowEvent,
    },
    /// Sent a message in the last `within_days` days.
    Replied {
        /// Window in days.
        within_days: u64,
    },
    /// Has a conversion event (in the last `within_days` days, if given).
    Converted {
        /// Window in days (none = ever).
        within_days: Option<u64>,
    },
    /// Last inbound activity in a time span.
    LastActivity(TimeSpan),
    /// Contact creation in a time span.
    Created(TimeSpan),
}

/// A channel named by kind (every channel of that kind) or by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRef {
    /// Every connected channel of this kind.
    Kind(ChannelKind),
    /// One channel.
    Id(ChannelId),
}

/// A flow named by name or by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowRef {
    /// Exact name.
    Name(String),
    /// Id.
    Id(FlowId),
}

/// A time condition on a contact column; all given bounds apply together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeSpan {
    /// Strictly before this instant.
    pub before: Option<Timestamp>,
    /// At or after this instant.
    pub after: Option<Timestamp>,
    /// Within the last N days (at or after now − N days).
    pub within_days: Option<u64>,
    /// More than N days ago (before now − N days).
    pub older_than_days: Option<u64>,
}

/// The comparisons of a `field` leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOp {
    /// Equal.
    Eq,
    /// Not equal (contacts without the field do not match).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Text contains (case-insensitive for ASCII).
    Contains,
    /// The field has a value.
    Exists,
    /// Equal to one of a list.
    In,
    /// Between two bounds, both included.
    Between,
    /// Date strictly before.
    Before,
    /// Date strictly after.
    After,
    /// Date within the last N days (up to now).
    WithinLastDays,
    /// Date more than N days ago.
    OlderThanDays,
}

impl SegmentOp {
    /// Every operator with its JSON name.
    const NAMES: [(&'static str, SegmentOp); 14] = [
        ("eq", SegmentOp::Eq),
        ("ne", SegmentOp::Ne),
        ("lt", SegmentOp::Lt),
        ("lte", SegmentOp::Lte),
        ("gt", SegmentOp::Gt),
        ("gte", SegmentOp::Gte),
        ("contains", SegmentOp::Contains),
        ("exists", SegmentOp::Exists),
        ("in", SegmentOp::In),
        ("between", SegmentOp::Between),
        ("before", SegmentOp::Before),
        ("after", SegmentOp::After),
        ("within_last_days", SegmentOp::WithinLastDays),
        ("older_than_days", SegmentOp::OlderThanDays),
    ];

    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, op)| *op == self)
            .map(|(n, _)| *n)
            .unwrap_or("eq")
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, op)| *op)
    }
}

/// What a contact did with a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastEvent {
    /// It was sent to them (sent, delivered, read or clicked).
    Received,
    /// They read it (or clicked, which implies reading).
    Read,
    /// They clicked a button or link in it.
    Clicked,
}

/// What a contact did with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowEvent {
    /// Any run started.
    Entered,
    /// A run reached its end.
    Finished,
}

/// What names a filter may use in one workspace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentCatalog {
    /// Custom field definitions.
    pub fields: Vec<FieldDefinition>,
    /// Tags (id, name).
    pub tags: Vec<(TagId, String)>,
    /// Connected channels (id, kind).
    pub channels: Vec<(ChannelId, ChannelKind)>,
    /// Topic keys.
    pub topics: Vec<String>,
    /// Flows (id, name).
    pub flows: Vec<(FlowId, String)>,
    /// Broadcast ids.
    pub broadcasts: Vec<BroadcastId>,
}

/// A filter checked against a workspace, ready for SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// Everyone (an empty `and`).
    All,
    /// Every child matches.
    And(Vec<Resolved>),
    /// At least one child matches.
    Or(Vec<Resolved>),
    /// The child does not match.
    Not(Box<Resolved>),
    /// A leaf.
    Leaf(Leaf),
}

/// A resolved comparison of a field or profile column.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// One comparison (eq … gte, contains, exists).
    Cmp(FieldOp, Operand),
    /// Equal to one of the operands.
    In(Vec<Operand>),
    /// Between both operands, inclusive.
    Between(Operand, Operand),
}

/// A profile column a `field` leaf may name when no custom field has that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileColumn {
    /// `first_name`.
    FirstName,
    /// `last_name`.
    LastName,
    /// `username`.
    Username,
    /// `language`.
    Language,
    /// `time_zone`.
    TimeZone,
    /// `phone`.
    Phone,
    /// `email`.
    Email,
    /// `source`.
    Source,
}

impl ProfileColumn {
    const ALL: [ProfileColumn; 8] = [
        ProfileColumn::FirstName,
        ProfileColumn::LastName,
        ProfileColumn::Username,
        ProfileColumn::Language,
        ProfileColumn::TimeZone,
        ProfileColumn::Phone,
        ProfileColumn::Email,
        ProfileColumn::Source,
    ];

    /// The `contacts` column (also its name in filters).
    pub fn column(self) -> &'static str {
        match self {
            ProfileColumn::FirstName => "first_name",
            ProfileColumn::LastName => "last_name",
            ProfileColumn::Username => "username",
            ProfileColumn::Language => "language",
            ProfileColumn::TimeZone => "time_zone",
            ProfileColumn::Phone => "phone",
            ProfileColumn::Email => "email",
            ProfileColumn::Source => "source",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.column() == s)
    }
}

/// A resolved leaf condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    /// Has the tag.
    Tag(TagId),
    /// A custom field comparison (operands in the stored columns' units).
    Field {
        /// The field.
        field_id: crate::FieldId,
        /// The comparison.
        test: FieldTest,
    },
    /// A profile column comparison (text operands).
    Profile {
        /// The column.
        column: ProfileColumn,
        /// The comparison.
        test: FieldTest,
    },
    /// Has an identity on one of these channels.
    Channels(Vec<ChannelId>),
    /// Has an identity in `state` on one of `channels` (empty = any channel).
    Subscription {
        /// Channels (empty = any).
        channels: Vec<ChannelId>,
        /// State.
        state: SubscriptionState,
    },
    /// Subscribed with this topic on some identity.
    Topic(String),
    /// Language is one of these; a bare primary tag also matches its regional forms.
    Language(Vec<String>),
    /// Time zone is one of these.
    TimeZone(Vec<String>),
    /// Source is one of these.
    Source(Vec<String>),
    /// A broadcast event.
    Broadcast {
        /// Broadcast.
        id: BroadcastId,
        /// Event.
        event: BroadcastEvent,
    },
    /// A flow event.
    Flow {
        /// Flow.
        id: FlowId,
        /// Event.
        event: FlowEvent,
    },
    /// An inbound message at or after `since`.
    Replied {
        /// Start of the window.
        since: Timestamp,
    },
    /// A conversion event (at or after `since`, if given).
    Converted {
        /// Start of the window.
        since: Option<Timestamp>,
    },
    /// `last_activity_at` in `[after, before)` (a contact without activity never matches).
    LastActivity {
        /// Exclusive upper bound.
        before: Option<Timestamp>,
        /// Inclusive lower bound.
        after: Option<Timestamp>,
    },
    /// `created_at` in `[after, before)`.
    Created {
        /// Exclusive upper bound.
        before: Option<Timestamp>,
        /// Inclusive lower bound.
        after: Option<Timestamp>,
    },
}

impl Resolved {
    /// The top-level conjuncts (one for anything but an `And`): what a count may drive from.
    pub fn conjuncts(&self) -> Vec<&Resolved> {
        match self {
            Resolved::And(items) => items.iter().collect(),
            Resolved::All => Vec::new(),
            other => vec![other],
        }
    }
}

/// Parses and resolves in one go (what saving, previewing and sending do).
pub fn compile(v: &Value, cat: &SegmentCatalog, now: Timestamp) -> Result<Resolved, Vec<Problem>> {
    let node = parse(v)?;
    resolve(&node, cat, now)
}

// ---------------------------------------------------------------------------------------
// Parsing

/// The keys that make a node what it is; exactly one must be present.
const HEADS: [&str; 17] = [
    "and",
    "or",
    "not",
    "tag",
    "field",
    "channel",
    "subscription",
    "topic",
    "language",
    "time_zone",
    "source",
    "broadcast",
    "flow",
    "replied",
    "converted",
    "last_activity",
    "created",
];

/// Appends a JSON-pointer segment, escaping `~` and `/` as RFC 6901 says.
fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

struct Parser {
    problems: Vec<Problem>,
    nodes: usize,
}

impl Parser {
    fn problem(&mut self, path: &str, code: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(path, code, message));
    }

    /// Parses the node at `path`; `None` when it had problems (already recorded).
    fn node(&mut self, v: &Value, path: &str, depth: usize) -> Option<Node> {
        self.nodes += 1;
        if self.nodes == MAX_NODES + 1 {
            self.problem(
                path,
                "too_large",
                format!("a filter may have at most {MAX_NODES} conditions"),
            );
        }
        if depth > MAX_DEPTH {
            self.problem(
                path,
                "too_deep",
                format!("conditions may nest at most {MAX_DEPTH} levels deep"),
            );
            return None;
        }
        let Value::Object(obj) = v else {
            self.problem(
                path,
                "invalid_node",
                format!(
                    "a condition must be a JSON object such as {{\"tag\": \"vip\"}}, not {}",
                    kind(v)
                ),
            );
            return None;
        };
        let heads: Vec<&str> = HEADS
            .iter()
            .copied()
            .filter(|h| obj.contains_key(*h))
            .collect();
        let head = match heads.as_slice() {
            [one] => *one,
            [] => {
                self.problem(
                    path,
                    "invalid_node",
                    format!(
                        "a condition needs one of: {} (found {})",
                        HEADS.join(", "),
                        if obj.is_empty() {
                            "an empty object".to_string()
                        } else {
                            keys(obj)
                        }
                    ),
                );
                return None;
            }
            many => {
                self.problem(
                    path,
                    "invalid_node",
                    format!(
                        "a condition is exactly one of its kinds, but this one has {}; wrap several in {{\"and\": [...]}}",
                        many.join(", ")
                    ),
                );
                return None;
            }
        };
        let allowed: &[&str] = match head {
            "field" => &["field", "op", "value"],
            "broadcast" | "flow" => &[head, "event"],
            _ => &[head],
        };
        let mut ok = true;
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                ok = false;
                self.problem(
                    &child(path, k),
                    "unknown_key",
                    format!("`{k}` does not belong in a `{head}` condition"),
                );
            }
        }
        let at = child(path, head);
        let body = &obj[head];
        let parsed = match head {
            "and" | "or" => self.list(body, &at, depth, head == "and"),
            "not" => self
                .node(body, &at, depth + 1)
                .map(|n| Node::Not(Box::new(n))),
            "tag" => self
                .name(body, &at, "tag")
                .map(|n| Node::Cond(Condition::Tag(n))),
            "topic" => self
                .name(body, &at, "topic")
                .map(|n| Node::Cond(Condition::Topic(n))),
            "field" => self.field(obj, path),
            "channel" => self
                .channel(body, &at)
                .map(|c| Node::Cond(Condition::Channel(c))),
            "subscription" => self.subscription(body, &at),
            "language" => self
                .strings(body, &at, |s| {
                    crate::contact::language(s.to_string()).map_err(|e| e.message)
                })
                .map(|v| Node::Cond(Condition::Language(v))),
            "time_zone" => self
                .strings(body, &at, |s| {
                    crate::contact::time_zone(s.to_string()).map_err(|e| e.message)
                })
                .map(|v| Node::Cond(Condition::TimeZone(v))),
            "source" => self
                .strings(body, &at, |s| {
                    let s = s.trim();
                    if s.is_empty() {
                        Err("a source must not be empty".into())
                    } else {
                        Ok(s.to_string())
                    }
                })
                .map(|v| Node::Cond(Condition::Source(v))),
            "broadcast" => self.broadcast(obj, path),
            "flow" => self.flow(obj, path),
            "replied" => self.replied(body, &at),
            "converted" => self.converted(body, &at),
            "last_activity" => self
                .span(body, &at)
                .map(|s| Node::Cond(Condition::LastActivity(s))),
            "created" => self
                .span(body, &at)
                .map(|s| Node::Cond(Condition::Created(s))),
            _ => None,
        };
        if ok {
            parsed
        } else {
            None
        }
    }

    fn list(&mut self, v: &Value, path: &str, depth: usize, and: bool) -> Option<Node> {
        let Value::Array(items) = v else {
            self.problem(
                path,
                "invalid_type",
                format!("expected an array of conditions, got {}", kind(v)),
            );
            return None;
        };
        if items.is_empty() && !and {
            self.problem(
                path,
                "empty",
                "an `or` needs at least one condition (it would match nobody)",
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.node(item, &child(path, &i.to_string()), depth + 1) {
                Some(n) => out.push(n),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(if and { Node::And(out) } else { Node::Or(out) })
    }

    fn name(&mut self, v: &Value, path: &str, what: &str) -> Option<String> {
        match v.as_str().map(str::trim) {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            Some(_) => {
                self.problem(path, "invalid_value", format!("the {what} name is empty"));
                None
            }
            None => {
                self.problem(
                    path,
                    "invalid_type",
                    format!("expected the {what} name as a string, got {}", kind(v)),
                );
                None
            }
        }
    }

    fn field(&mut self, obj: &Map<String, Value>, path: &str) -> Option<Node> {
        let key = self.name(&obj["field"], &child(path, "field"), "field");
        let op_path = child(path, "op");
        let op = match obj.get("op") {
            None => {
                self.problem(
                    &op_path,
                    "missing",
                    "a field condition needs `op` (eq, ne, lt, lte, gt, gte, contains, exists, in, between, before, after, within_last_days or older_than_days)",
                );
                None
            }
            Some(Value::String(s)) => match SegmentOp::from_name(s) {
                Some(op) => Some(op),
                None => {
                    self.problem(
                        &op_path,
                        "unknown_op",
                        format!("unknown operator `{s}` (expected eq, ne, lt, lte, gt, gte, contains, exists, in, between, before, after, within_last_days or older_than_days)"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    &op_path,
                    "invalid_type",
                    format!("expected the operator as a string, got {}", kind(other)),
                );
                None
            }
        };
        let value_path = child(path, "value");
        let value = obj.get("value").cloned().unwrap_or(Value::Null);
        let value_ok = match op {
            None => false,
            Some(SegmentOp::Exists) => {
                if value.is_null() {
                    true
                } else {
                    self.problem(&value_path, "invalid_value", "`exists` takes no value");
                    false
                }
            }
            Some(SegmentOp::In) => match &value {
                Value::Array(a) if !a.is_empty() && a.len() <= MAX_VALUES => {
                    let mut ok = true;
                    for (i, x) in a.iter().enumerate() {
                        if !is_scalar(x) {
                            ok = false;
                            self.problem(
                                &child(&value_path, &i.to_string()),
                                "invalid_type",
                                format!("expected a string, number or boolean, got {}", kind(x)),
                            );
                        }
                    }
                    ok
                }
                _ => {
                    self.problem(
                        &value_path,
                        "invalid_value",
                        format!("`in` needs an array of 1 to {MAX_VALUES} values"),
                    );
                    false
                }
            },
            Some(SegmentOp::Between) => match &value {
                Value::Array(a) if a.len() == 2 && a.iter().all(is_scalar) => true,
                _ => {
                    self.problem(
                        &value_path,
                        "invalid_value",
                        "`between` needs an array of two bounds, e.g. [18, 30]",
                    );
                    false
                }
            },
            Some(SegmentOp::WithinLastDays | SegmentOp::OlderThanDays) => {
                self.days(&value, &value_path).is_some()
            }
            Some(op) => {
                if is_scalar(&value) {
                    true
                } else {
                    self.problem(
                        &value_path,
                        if value.is_null() {
                            "missing"
                        } else {
                            "invalid_type"
                        },
                        format!(
                            "`{}` needs a value (a string, number or boolean), got {}",
                            op.as_str(),
                            kind(&value)
                        ),
                    );
                    false
                }
            }
        };
        match (key, op, value_ok) {
            (Some(key), Some(op), true) => Some(Node::Cond(Condition::Field { key, op, value })),
            _ => None,
        }
    }

    fn days(&mut self, v: &Value, path: &str) -> Option<u64> {
        match v.as_u64() {
            Some(n) if n <= MAX_DAYS => Some(n),
            _ => {
                self.problem(
                    path,
                    "invalid_value",
                    format!(
                        "expected a whole number of days from 0 to {MAX_DAYS}, got {}",
                        shown(v)
                    ),
                );
                None
            }
        }
    }

    fn channel(&mut self, v: &Value, path: &str) -> Option<ChannelRef> {
        match v {
            Value::String(s) => match s.parse::<ChannelKind>() {
                Ok(k) => Some(ChannelRef::Kind(k)),
                Err(_) => {
                    let kinds: Vec<&str> = ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.problem(
                        path,
                        "invalid_value",
                        format!(
                            "`{s}` is not a channel kind (expected {} or a channel id)",
                            kinds.join(", ")
                        ),
                    );
                    None
                }
            },
            Value::Number(n) => match n.as_i64() {
                Some(id) if id > 0 => Some(ChannelRef::Id(ChannelId(id))),
                _ => {
                    self.problem(path, "invalid_value", format!("`{n}` is not a channel id"));
                    None
                }
            },
            other => {
                self.problem(
                    path,
                    "invalid_type",
                    format!(
                        "expected a channel kind (\"telegram\") or id, got {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    fn state(&mut self, v: &Value, path: &str) -> Option<SubscriptionState> {
        match v {
            Value::String(s) => match s.parse::<SubscriptionState>() {
                Ok(st) => Some(st),
                Err(e) => {
                    self.problem(path, "invalid_value", e);
                    None
                }
            },
            other => {
                self.problem(
                    path,
                    "invalid_type",
                    format!(
                        "expected a subscription state as a string, got {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    fn subscription(&mut self, v: &Value, path: &str) -> Option<Node> {
        let (channel, state) = match v {
            // Shorthand: {"subscription": "subscribed"}.
            Value::String(_) => (None, self.state(v, path)?),
            Value::Object(o) => {
                let mut ok = true;
                for k in o.keys() {
                    if k != "channel" && k != "state" {
                        ok = false;
                        self.problem(
                            &child(path, k),
                            "unknown_key",
                            format!(
                                "`{k}` does not belong in a subscription (use channel and state)"
                            ),
                        );
                    }
                }
                let channel = match o.get("channel") {
                    None | Some(Value::Null) => Some(None),
                    Some(c) => self.channel(c, &child(path, "channel")).map(Some),
                };
                let state = match o.get("state") {
                    Some(s) => self.state(s, &child(path, "state")),
                    None => {
                        self.problem(
                            &child(path, "state"),
                            "missing",
                            "a subscription condition needs `state` (subscribed, unsubscribed, blocked or pending_double_opt_in)",
                        );
                        None
                    }
                };
                match (ok, channel, state) {
                    (true, Some(c), Some(s)) => (c, s),
                    _ => return None,
                }
            }
            other => {
                self.problem(
                    path,
                    "invalid_type",
                    format!(
                        "expected {{\"channel\": …, \"state\": \"subscribed\"}}, got {}",
                        kind(other)
                    ),
                );
                return None;
            }
        };
        Some(Node::Cond(Condition::Subscription { channel, state }))
    }

    fn strings(
        &mut self,
        v: &Value,
        path: &str,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Option<Vec<String>> {
        let items: Vec<(String, &Value)> = match v {
            Value::String(_) => vec![(path.to_string(), v)],
            Value::Array(a) if !a.is_empty() && a.len() <= MAX_VALUES => a
                .iter()
                .enumerate()
                .map(|(i, x)| (child(path, &i.to_string()), x))
                .collect(),
            _ => {
                self.problem(
                    path,
                    "invalid_value",
                    format!("expected a string or an array of 1 to {MAX_VALUES} strings"),
                );
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (p, x) in items {
            match x.as_str().map(&check) {
                Some(Ok(s)) => {
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                Some(Err(m)) => {
                    ok = false;
                    self.problem(&p, "invalid_value", m);
                }
                None => {
                    ok = false;
                    self.problem(
                        &p,
                        "invalid_type",
                        format!("expected a string, got {}", kind(x)),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn event<T: Copy>(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        names: &[(&str, T)],
    ) -> Option<T> {
        let p = child(path, "event");
        let expected = names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        match obj.get("event") {
            Some(Value::String(s)) => match names.iter().find(|(n, _)| n == s) {
                Some((_, e)) => Some(*e),
                None => {
                    self.problem(
                        &p,
                        "invalid_value",
                        format!("unknown event `{s}` (expected {expected})"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    &p,
                    "invalid_type",
                    format!(
                        "expected the event as a string ({expected}), got {}",
                        kind(other)
                    ),
                );
                None
            }
            None => {
                self.problem(&p, "missing", format!("`event` is required ({expected})"));
                None
            }
        }
    }

    fn broadcast(&mut self, obj: &Map<String, Value>, path: &str) -> Option<Node> {
        let p = child(path, "broadcast");
        let id = match obj["broadcast"].as_i64() {
            Some(id) if id > 0 => Some(BroadcastId(id)),
            _ => {
                self.problem(
                    &p,
                    "invalid_value",
                    format!("expected a broadcast id, got {}", shown(&obj["broadcast"])),
                );
                None
            }
        };
        let event = self.event(
            obj,
            path,
            &[
                ("received", BroadcastEvent::Received),
                ("read", BroadcastEvent::Read),
                ("clicked", BroadcastEvent::Clicked),
            ],
        );
        Some(Node::Cond(Condition::Broadcast {
            id: id?,
            event: event?,
        }))
    }

    fn flow(&mut self, obj: &Map<String, Value>, path: &str) -> Option<Node> {
        let p = child(path, "flow");
        let flow = match &obj["flow"] {
            Value::Number(n) => match n.as_i64() {
                Some(id) if id > 0 => Some(FlowRef::Id(FlowId(id))),
                _ => {
                    self.problem(&p, "invalid_value", format!("`{n}` is not a flow id"));
                    None
                }
            },
            v => self.name(v, &p, "flow").map(FlowRef::Name),
        };
        let event = self.event(
            obj,
            path,
            &[
                ("entered", FlowEvent::Entered),
                ("finished", FlowEvent::Finished),
            ],
        );
        Some(Node::Cond(Condition::Flow {
            flow: flow?,
            event: event?,
        }))
    }

    fn window(&mut self, v: &Value, path: &str, required: bool) -> Option<Option<u64>> {
        let Value::Object(o) = v else {
            self.problem(
                path,
                "invalid_type",
                format!("expected {{\"within_days\": N}}, got {}", kind(v)),
            );
            return None;
        };
        let mut ok = true;
        for k in o.keys() {
            if k != "within_days" {
                ok = false;
                self.problem(
                    &child(path, k),
                    "unknown_key",
                    format!("`{k}` does not belong here (only within_days)"),
                );
            }
        }
        let days = match o.get("within_days") {
            Some(d) => Some(self.days(d, &child(path, "within_days"))?),
            None if required => {
                self.problem(
                    &child(path, "within_days"),
                    "missing",
                    "`within_days` is required",
                );
                return None;
            }
            None => None,
        };
        ok.then_some(days)
    }

    fn replied(&mut self, v: &Value, path: &str) -> Option<Node> {
        let days = self.window(v, path, true)??;
        Some(Node::Cond(Condition::Replied { within_days: days }))
    }

    fn converted(&mut self, v: &Value, path: &str) -> Option<Node> {
        let days = self.window(v, path, false)?;
        Some(Node::Cond(Condition::Converted { within_days: days }))
    }

    fn span(&mut self, v: &Value, path: &str) -> Option<TimeSpan> {
        let Value::Object(o) = v else {
            self.problem(
                path,
                "invalid_type",
                format!(
                    "expected an object with before, after, within_days or older_than_days, got {}",
                    kind(v)
                ),
            );
            return None;
        };
        if o.is_empty() {
            self.problem(
                path,
                "missing",
                "give at least one of before, after, within_days, older_than_days",
            );
            return None;
        }
        let mut span = TimeSpan::default();
        let mut ok = true;
        for (k, x) in o {
            let p = child(path, k);
            match k.as_str() {
                "before" => match instant(x) {
                    Ok(t) => span.before = Some(t),
                    Err(m) => {
                        ok = false;
                        self.problem(&p, "invalid_value", m);
                    }
                },
                "after" => match instant(x) {
                    Ok(t) => span.after = Some(t),
                    Err(m) => {
                        ok = false;
                        self.problem(&p, "invalid_value", m);
                    }
                },
                "within_days" => match self.days(x, &p) {
                    Some(d) => span.within_days = Some(d),
                    None => ok = false,
                },
                "older_than_days" => match self.days(x, &p) {
                    Some(d) => span.older_than_days = Some(d),
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.problem(
                        &p,
                        "unknown_key",
                        format!("`{k}` does not belong here (before, after, within_days, older_than_days)"),
                    );
                }
            }
        }
        ok.then_some(span)
    }
}

/// Reads an instant: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn instant(v: &Value) -> Result<Timestamp, String> {
    let Some(s) = v.as_str().map(str::trim) else {
        return Err(format!(
            "expected a date (\"2026-01-01\") or RFC 3339 time, got {}",
            kind(v)
        ));
    };
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            format!("`{s}` is not a date (YYYY-MM-DD) or RFC 3339 time (2026-01-01T10:00:00+03:00)")
        })
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a value for messages.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

fn keys(o: &Map<String, Value>) -> String {
    o.keys()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the shape of a filter. Every problem is reported, each with a JSON pointer.
pub fn parse(v: &Value) -> Result<Node, Vec<Problem>> {
    let mut p = Parser {
        problems: Vec::new(),
        nodes: 0,
    };
    let node = p.node(v, "", 0);
    match node {
        Some(n) if p.problems.is_empty() => Ok(n),
        _ => Err(p.problems),
    }
}

// ---------------------------------------------------------------------------------------
// Resolution

struct Resolver<'a> {
    cat: &'a SegmentCatalog,
    now: Timestamp,
    problems: Vec<Problem>,
}

/// Checks a parsed filter against the workspace: names exist, operands fit their field
/// types; relative days become absolute times measured from `now`.
pub fn resolve(
    node: &Node,
    cat: &SegmentCatalog,
    now: Timestamp,
) -> Result<Resolved, Vec<Problem>> {
    let mut r = Resolver {
        cat,
        now,
        problems: Vec::new(),
    };
    let out = r.node(node, "");
    if r.problems.is_empty() {
        out.ok_or_else(|| vec![Problem::new("", "invalid", "the filter is invalid")])
    } else {
        Err(r.problems)
    }
}

impl Resolver<'_> {
    fn problem(&mut self, path: &str, code: &str, message: impl Into<String>) -> Option<Leaf> {
        self.problems.push(Problem::new(path, code, message));
        None
    }

    fn node(&mut self, n: &Node, path: &str) -> Option<Resolved> {
        match n {
            Node::And(items) | Node::Or(items) => {
                let and = matches!(n, Node::And(_));
                let at = child(path, if and { "and" } else { "or" });
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = self.node(item, &child(&at, &i.to_string())) {
                        out.push(r);
                    }
                }
                if out.len() != items.len() {
                    return None;
                }
                // `All` inside an and is a no-op; a single child needs no wrapper.
                if and {
                    out.retain(|r| *r != Resolved::All);
                }
                Some(match (and, out.len()) {
                    (true, 0) => Resolved::All,
                    (_, 1) => out.pop().unwrap_or(Resolved::All),
                    (true, _) => Resolved::And(out),
                    (false, _) => Resolved::Or(out),
                })
            }
            Node::Not(inner) => self
                .node(inner, &child(path, "not"))
                .map(|r| Resolved::Not(Box::new(r))),
            Node::Cond(c) => self.cond(c, path).map(Resolved::Leaf),
        }
    }

    fn days_ago(&self, days: u64) -> Timestamp {
        let secs = i64::try_from(days).unwrap_or(0).saturating_mul(DAY_SECONDS);
        self.now
            .checked_sub(SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MIN)
    }

    fn channels(&mut self, r: ChannelRef, path: &str) -> Option<Vec<ChannelId>> {
        match r {
            ChannelRef::Id(id) => {
                if self.cat.channels.iter().any(|(c, _)| *c == id) {
                    Some(vec![id])
                } else {
                    self.problem(path, "unknown_channel", format!("there is no channel {id}"));
                    None
                }
            }
            ChannelRef::Kind(k) => {
                let ids: Vec<ChannelId> = self
                    .cat
                    .channels
                    .iter()
                    .filter(|(_, kind)| *kind == k)
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    self.problem(
                        path,
                        "unknown_channel",
                        format!("no {} channel is connected", k.as_str()),
                    );
                    None
                } else {
                    Some(ids)
                }
            }
        }
    }

    fn cond(&mut self, c: &Condition, path: &str) -> Option<Leaf> {
        match c {
            Condition::Tag(name) => match self.cat.tags.iter().find(|(_, n)| n == name) {
                Some((id, _)) => Some(Leaf::Tag(*id)),
                None => self.problem(
                    &child(path, "tag"),
                    "unknown_tag",
                    format!("there is no tag `{name}`"),
                ),
            },
            Condition::Field { key, op, value } => self.field(key, *op, value, path),
            Condition::Channel(r) => self
                .channels(*r, &child(path, "channel"))
                .map(Leaf::Channels),
            Condition::Subscription { channel, state } => {
                let channels = match channel {
                    None => Vec::new(),
                    Some(r) => {
                        self.channels(*r, &child(&child(path, "subscription"), "channel"))?
                    }
                };
                Some(Leaf::Subscription {
                    channels,
                    state: *state,
                })
            }
            Condition::Topic(t) => {
                if self.cat.topics.iter().any(|k| k == t) {
                    Some(Leaf::Topic(t.clone()))
                } else {
                    self.problem(
                        &child(path, "topic"),
                        "unknown_topic",
                        format!("there is no topic `{t}`"),
                    )
                }
            }
            Condition::Language(v) => Some(Leaf::Language(v.clone())),
            Condition::TimeZone(v) => Some(Leaf::TimeZone(v.clone())),
            Condition::Source(v) => Some(Leaf::Source(v.clone())),
            Condition::Broadcast { id, event } => {
                if self.cat.broadcasts.contains(id) {
                    Some(Leaf::Broadcast {
                        id: *id,
                        event: *event,
                    })
                } else {
                    self.problem(
                        &child(path, "broadcast"),
                        "unknown_broadcast",
                        format!("there is no broadcast {id}"),
                    )
                }
            }
            Condition::Flow { flow, event } => {
                let found = self.cat.flows.iter().find(|(id, name)| match flow {
                    FlowRef::Id(f) => id == f,
                    FlowRef::Name(n) => name == n,
                });
                match (found, flow) {
                    (Some((id, _)), _) => Some(Leaf::Flow {
                        id: *id,
                        event: *event,
                    }),
                    (None, FlowRef::Id(id)) => self.problem(
                        &child(path, "flow"),
                        "unknown_flow",
                        format!("there is no flow {id}"),
                    ),
                    (None, FlowRef::Name(n)) => self.problem(
                        &child(path, "flow"),
                        "unknown_flow",
                        format!("there is no flow named `{n}`"),
                    ),
                }
            }
            Condition::Replied { within_days } => Some(Leaf::Replied {
                since: self.days_ago(*within_days),
            }),
            Condition::Converted { within_days } => Some(Leaf::Converted {
                since: within_days.map(|d| self.days_ago(d)),
            }),
            Condition::LastActivity(s) => {
                let (before, after) = self.span(s);
                Some(Leaf::LastActivity { before, after })
            }
            Condition::Created(s) => {
                let (before, after) = self.span(s);
                Some(Leaf::Created { before, after })
            }
        }
    }

    /// The tightest `[after, before)` the span's bounds allow.
    fn span(&self, s: &TimeSpan) -> (Option<Timestamp>, Option<Timestamp>) {
        let before = [s.before, s.older_than_days.map(|d| self.days_ago(d))]
            .into_iter()
            .flatten()
            .min();
        let after = [s.after, s.within_days.map(|d| self.days_ago(d))]
            .into_iter()
            .flatten()
            .max();
        (before, after)
    }

    fn field(&mut self, key: &str, op: SegmentOp, value: &Value, path: &str) -> Option<Leaf> {
        if let Some(def) = self.cat.fields.iter().find(|f| f.spec.key == key) {
            let def = def.clone();
            return self
                .field_test(&def, op, value, path)
                .map(|test| Leaf::Field {
                    field_id: def.id,
                    test,
                });
        }
        if let Some(column) = ProfileColumn::from_name(key) {
            return self
                .profile_test(column, op, value, path)
                .map(|test| Leaf::Profile { column, test });
        }
        self.problem(
            &child(path, "field"),
            "unknown_field",
            format!(
                "there is no field `{key}` (custom fields and first_name, last_name, username, language, time_zone, phone, email, source)"
            ),
        )
    }

    fn not_allowed(&mut self, path: &str, op: SegmentOp, what: &str, allowed: &str) {
        self.problems.push(Problem::new(
            &child(path, "op"),
            "op_not_allowed",
            format!("`{}` does not apply to {what} (use {allowed})", op.as_str()),
        ));
    }

    fn profile_test(
        &mut self,
        column: ProfileColumn,
        op: SegmentOp,
        value: &Value,
        path: &str,
    ) -> Option<FieldTest> {
        let value_path = child(path, "value");
        let text = |r: &mut Self, v: &Value, p: &str| -> Option<Operand> {
            match v {
                Value::String(s) => Some(Operand::Text(s.clone())),
                other => {
                    r.problems.push(Problem::new(
                        p,
                        "invalid_type",
                        format!(
                            "`{}` is text: expected a string, got {}",
                            column.column(),
                            kind(other)
                        ),
                    ));
                    None
                }
            }
        };
        match op {
            SegmentOp::Exists => Some(FieldTest::Cmp(FieldOp::Exists, Operand::None)),
            SegmentOp::Eq | SegmentOp::Ne | SegmentOp::Contains => {
                let fop = match op {
                    SegmentOp::Eq => FieldOp::Eq,
                    SegmentOp::Ne => FieldOp::Ne,
                    _ => FieldOp::Contains,
                };
                text(self, value, &value_path).map(|o| FieldTest::Cmp(fop, o))
            }
            SegmentOp::In => {
                let items = value.as_array().cloned().unwrap_or_default();
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.extend(text(self, x, &child(&value_path, &i.to_string())));
                }
                (out.len() == items.len()).then_some(FieldTest::In(out))
            }
            _ => {
                self.not_allowed(
                    path,
                    op,
                    &format!("the text attribute `{}`", column.column()),
                    "eq, ne, contains, in or exists",
                );
                None
            }
        }
    }

    /// An operand in the stored column's units: text for text and choice, the number for
    /// number, bool (0/1), date (days since 1970-01-01) and datetime (Unix seconds).
    fn operand(&mut self, def: &FieldDefinition, v: &Value, path: &str) -> Option<Operand> {
        let t = def.spec.field_type;
        // A bare date for a datetime field means its midnight UTC.
        if t == FieldType::Datetime {
            if let Some(d) = v
                .as_str()
                .and_then(|s| s.trim().parse::<jiff::civil::Date>().ok())
            {
                if let Ok(z) = d.to_zoned(jiff::tz::TimeZone::UTC) {
                    return Some(Operand::Num(z.timestamp().as_second() as f64));
                }
            }
        }
        match FieldValue::validate(def, v, path) {
            Ok(fv) => match t {
                FieldType::Text | FieldType::Choice => {
                    Some(Operand::Text(fv.text().unwrap_or_default().to_string()))
                }
                _ => Some(Operand::Num(fv.num().unwrap_or_default())),
            },
            Err(e) => {
                self.problems
                    .push(Problem::new(path, "invalid_value", e.message));
                None
            }
        }
    }

    fn field_test(
        &mut self,
        def: &FieldDefinition,
        op: SegmentOp,
        value: &Value,
        path: &str,
    ) -> Option<FieldTest> {
        use SegmentOp as S;
        let t = def.spec.field_type;
        let allowed: &[SegmentOp] = match t {
            FieldType::Text => &[S::Eq, S::Ne, S::Contains, S::Exists, S::In],
            FieldType::Choice => &[S::Eq, S::Ne, S::Exists, S::In],
            FieldType::Number => &[
                S::Eq,
                S::Ne,
                S::Lt,
                S::Lte,
                S::Gt,
                S::Gte,
                S::Between,
                S::In,
                S::Exists,
            ],
            FieldType::Bool => &[S::Eq, S::Ne, S::Exists],
            FieldType::Date | FieldType::Datetime => &[
                S::Eq,
                S::Ne,
                S::Lt,
                S::Lte,
                S::Gt,
                S::Gte,
                S::Between,
                S::Before,
                S::After,
                S::WithinLastDays,
                S::OlderThanDays,
                S::Exists,
            ],
        };
        if !allowed.contains(&op) {
            let names = allowed
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.not_allowed(
                path,
                op,
                &format!("the {} field `{}`", t.as_str(), def.spec.key),
                &names,
            );
            return None;
        }
        let value_path = child(path, "value");
        let cmp = |fop: FieldOp, r: &mut Self| {
            r.operand(def, value, &value_path)
                .map(|o| FieldTest::Cmp(fop, o))
        };
        match op {
            S::Exists => Some(FieldTest::Cmp(FieldOp::Exists, Operand::None)),
            S::Eq => cmp(FieldOp::Eq, self),
            S::Ne => cmp(FieldOp::Ne, self),
            S::Lt | S::Before => cmp(FieldOp::Lt, self),
            S::Lte => cmp(FieldOp::Lte, self),
            S::Gt | S::After => cmp(FieldOp::Gt, self),
            S::Gte => cmp(FieldOp::Gte, self),
            S::Contains => match value {
                // Any text may be a substring; it is not checked as a whole value.
                Value::String(s) => {
                    Some(FieldTest::Cmp(FieldOp::Contains, Operand::Text(s.clone())))
                }
                other => {
                    self.problems.push(Problem::new(
                        &value_path,
                        "invalid_type",
                        format!("`contains` needs a string, got {}", kind(other)),
                    ));
                    None
                }
            },
            S::In | S::Between => {
                let items = value.as_array().cloned().unwrap_or_default();
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    out.extend(self.operand(def, x, &child(&value_path, &i.to_string())));
                }
                if out.len() != items.len() {
                    return None;
                }
                if op == S::In {
                    return Some(FieldTest::In(out));
                }
                let mut it = out.into_iter();
                match (it.next(), it.next()) {
                    (Some(lo), Some(hi)) => {
                        if let (Operand::Num(a), Operand::Num(b)) = (&lo, &hi) {
                            if a > b {
                                self.problems.push(Problem::new(
                                    &value_path,
                                    "invalid_value",
                                    "the lower bound comes first: [low, high]",
                                ));
                                return None;
                            }
                        }
                        Some(FieldTest::Between(lo, hi))
                    }
                    _ => None,
                }
            }
            S::WithinLastDays | S::OlderThanDays => {
                let days = value.as_u64().unwrap_or(0);
                let days_i = i64::try_from(days).unwrap_or(0);
                let (now, back) = if t == FieldType::Date {
                    let today = self.now.as_second().div_euclid(DAY_SECONDS);
                    (today as f64, (today - days_i) as f64)
                } else {
                    let now = self.now.as_second();
                    (now as f64, (now - days_i * DAY_SECONDS) as f64)
                };
                Some(if op == S::WithinLastDays {
                    FieldTest::Between(Operand::Num(back), Operand::Num(now))
                } else {
                    FieldTest::Cmp(FieldOp::Lt, Operand::Num(back))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldSpec;
    use crate::FieldId;
    use serde_json::json;

    fn cat() -> SegmentCatalog {
        let f = |id, key: &str, t, choices: &[&str]| FieldDefinition {
            id: FieldId(id),
            spec: FieldSpec {
                key: key.into(),
                label: key.into(),
                field_type: t,
                choices: choices.iter().map(|s| s.to_string()).collect(),
            },
        };
        SegmentCatalog {
            fields: vec![
                f(1, "age", FieldType::Number, &[]),
                f(2, "born", FieldType::Date, &[]),
                f(3, "city", FieldType::Text, &[]),
                f(4, "plan", FieldType::Choice, &["free", "pro"]),
                f(5, "paid_at", FieldType::Datetime, &[]),
                f(6, "ok", FieldType::Bool, &[]),
            ],
            tags: vec![(TagId(10), "vip".into())],
            channels: vec![
                (ChannelId(3), ChannelKind::Telegram),
                (ChannelId(4), ChannelKind::Telegram),
                (ChannelId(5), ChannelKind::Viber),
            ],
            topics: vec!["news".into()],
            flows: vec![(FlowId(7), "quiz".into())],
            broadcasts: vec![BroadcastId(12)],
        }
    }

    fn now() -> Timestamp {
        "2026-03-10T12:00:00Z".parse().expect("time")
    }

    fn paths(v: Value) -> Vec<(String, String)> {
        let problems = compile(&v, &cat(), now()).expect_err("should fail");
        problems.into_iter().map(|p| (p.path, p.code)).collect()
    }

    #[test]
    fn parses_every_node_kind() {
        let v = json!({"and": [
            {"tag": "vip"},
            {"field": "age", "op": "between", "value": [18, 30]},
            {"field": "plan", "op": "in", "value": ["free", "pro"]},
            {"field": "first_name", "op": "contains", "value": "ann"},
            {"channel": "telegram"}, {"channel": 5},
            {"subscription": {"channel": 3, "state": "subscribed"}},
            {"subscription": "blocked"},
            {"topic": "news"},
            {"language": ["ru", "en_gb"]}, {"time_zone": "Europe/Moscow"}, {"source": ["instagram"]},
            {"broadcast": 12, "event": "clicked"},
            {"flow": "quiz", "event": "finished"}, {"flow": 7, "event": "entered"},
            {"replied": {"within_days": 7}}, {"converted": {}}, {"converted": {"within_days": 30}},
            {"last_activity": {"older_than_days": 30}}, {"created": {"after": "2026-01-01", "before": "2026-02-01T00:00:00Z"}},
            {"or": [{"not": {"tag": "vip"}}, {"field": "ok", "op": "exists"}]}
        ]});
        let r = compile(&v, &cat(), now()).expect("valid");
        let Resolved::And(items) = r else {
            panic!("an and")
        };
        assert_eq!(items.len(), 21);
        assert_eq!(items[0], Resolved::Leaf(Leaf::Tag(TagId(10))));
        assert_eq!(
            items[4],
            Resolved::Leaf(Leaf::Channels(vec![ChannelId(3), ChannelId(4)]))
        );
        assert_eq!(
            items[9],
            Resolved::Leaf(Leaf::Language(vec!["ru".into(), "en-GB".into()]))
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let got = paths(json!({"and": [
            {"tag": "vip"},
            {"field": "age", "op": "near", "value": 3},
            {"or": [{"tag": 5}, {"nonsense": 1}]},
            {"not": {"field": "age", "op": "gt"}},
            {"broadcast": "x", "event": "opened"},
            {"tag": "a", "extra": 1}
        ]}));
        assert_eq!(
            got,
            vec![
                ("/and/1/op".to_string(), "unknown_op".to_string()),
                ("/and/2/or/0/tag".into(), "invalid_type".into()),
                ("/and/2/or/1".into(), "invalid_node".into()),
                ("/and/3/not/value".into(), "missing".into()),
                ("/and/4/broadcast".into(), "invalid_value".into()),
                ("/and/4/event".into(), "invalid_value".into()),
                ("/and/5/extra".into(), "unknown_key".into()),
            ]
        );
        assert_eq!(paths(json!([1])), vec![("".into(), "invalid_node".into())]);
        assert_eq!(
            paths(json!({"tag": "vip", "topic": "news"})),
            vec![("".into(), "invalid_node".into())]
        );
        assert_eq!(
            paths(json!({"or": []})),
            vec![("/or".into(), "empty".into())]
        );
    }

    #[test]
    fn unknown_names_are_problems() {
        let got = paths(json!({"or": [
            {"tag": "nobody"},
            {"field": "shoe_size", "op": "gt", "value": 40},
            {"topic": "sales"},
            {"flow": "missing", "event": "entered"},
            {"flow": 99, "event": "entered"},
            {"channel": "whatsapp"},
            {"channel": 99},
            {"subscription": {"channel": "vk", "state": "subscribed"}},
            {"broadcast": 13, "event": "read"}
        ]}));
        let codes: Vec<(&str, &str)> = got.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        assert_eq!(
            codes,
            vec![
                ("/or/0/tag", "unknown_tag"),
                ("/or/1/field", "unknown_field"),
                ("/or/2/topic", "unknown_topic"),
                ("/or/3/flow", "unknown_flow"),
                ("/or/4/flow", "unknown_flow"),
                ("/or/5/channel", "unknown_channel"),
                ("/or/6/channel", "unknown_channel"),
                ("/or/7/subscription/channel", "unknown_channel"),
                ("/or/8/broadcast", "unknown_broadcast"),
            ]
        );
    }

    #[test]
    fn operands_are_typed_by_the_field() {
        let got = paths(json!({"and": [
            {"field": "age", "op": "gt", "value": "old"},
            {"field": "city", "op": "gt", "value": "M"},
            {"field": "plan", "op": "eq", "value": "gold"},
            {"field": "born", "op": "before", "value": "1.1.2000"},
            {"field": "age", "op": "between", "value": [30, 18]},
            {"field": "age", "op": "in", "value": [1, "x"]},
            {"field": "email", "op": "gt", "value": "a"}
        ]}));
        let codes: Vec<(&str, &str)> = got.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        assert_eq!(
            codes,
            vec![
                ("/and/0/value", "invalid_value"),
                ("/and/1/op", "op_not_allowed"),
                ("/and/2/value", "invalid_value"),
                ("/and/3/value", "invalid_value"),
                ("/and/4/value", "invalid_value"),
                ("/and/5/value/1", "invalid_value"),
                ("/and/6/op", "op_not_allowed"),
            ]
        );
        let r = compile(
            &json!({"field": "born", "op": "before", "value": "1970-01-11"}),
            &cat(),
            now(),
        );
        assert_eq!(
            r,
            Ok(Resolved::Leaf(Leaf::Field {
                field_id: FieldId(2),
                test: FieldTest::Cmp(FieldOp::Lt, Operand::Num(10.0))
            }))
        );
        // A bare date on a datetime field is its midnight UTC, in Unix seconds.
        let r = compile(
            &json!({"field": "paid_at", "op": "after", "value": "1970-01-02"}),
            &cat(),
            now(),
        );
        assert_eq!(
            r,
            Ok(Resolved::Leaf(Leaf::Field {
                field_id: FieldId(5),
                test: FieldTest::Cmp(FieldOp::Gt, Operand::Num(86_400.0))
            }))
        );
    }

    #[test]
    fn relative_days_become_absolute_times() {
        let n = now();
        let today = (n.as_second() / 86_400) as f64;
        let r = compile(
            &json!({"field": "born", "op": "within_last_days", "value": 7}),
            &cat(),
            n,
        );
        assert_eq!(
            r,
            Ok(Resolved::Leaf(Leaf::Field {
                field_id: FieldId(2),
                test: FieldTest::Between(Operand::Num(today - 7.0), Operand::Num(today))
            }))
        );
        let r = compile(
            &json!({"field": "paid_at", "op": "older_than_days", "value": 1}),
            &cat(),
            n,
        );
        assert_eq!(
            r,
            Ok(Resolved::Leaf(Leaf::Field {
                field_id: FieldId(5),
                test: FieldTest::Cmp(FieldOp::Lt, Operand::Num((n.as_second() - 86_400) as f64))
            }))
        );
        let week_ago: Timestamp = "2026-03-03T12:00:00Z".parse().expect("t");
        assert_eq!(
            compile(&json!({"replied": {"within_days": 7}}), &cat(), n),
            Ok(Resolved::Leaf(Leaf::Replied { since: week_ago }))
        );
        let r = compile(
            &json!({"last_activity": {"within_days": 7, "after": "2026-01-01", "older_than_days": 1}}),
            &cat(),
            n,
        );
        let day_ago: Timestamp = "2026-03-09T12:00:00Z".parse().expect("t");
        assert_eq!(
            r,
            Ok(Resolved::Leaf(Leaf::LastActivity {
                before: Some(day_ago),
                after: Some(week_ago)
            }))
        );
        assert_eq!(compile(&json!({"and": []}), &cat(), n), Ok(Resolved::All));
        assert!(paths(json!({"replied": {"within_days": -1}}))
            .contains(&("/replied/within_days".into(), "invalid_value".into())));
    }

    #[test]
    fn limits_depth() {
        let mut v = json!({"tag": "vip"});
        for _ in 0..20 {
            v = json!({"not": v});
        }
        let got = paths(v);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, "too_deep");
    }
}
