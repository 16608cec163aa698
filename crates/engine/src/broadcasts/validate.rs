//! Checking a broadcast document before it is stored or scheduled.
//!
//! The check is pure: the runtime gathers what the document may name (channels, topics,
//! flows, the saved segment's filter) into a [`BroadcastCatalog`] and this module reports
//! every problem it finds, each with a JSON pointer into the document, a stable code and
//! a sentence — the same shape as segment problems, so the API answers both alike.

use super::capabilities;
use crate::flows::channel_limits;
use jiff::Timestamp;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use voronka_core::broadcast::{
    BroadcastButton, BroadcastMessage, BroadcastSpec, ChannelChoice, Engagement, Schedule,
    SegmentTarget, WinnerMetric,
};
use voronka_core::channel::ChannelKind;
use voronka_core::flow::template::Templates;
use voronka_core::message::{MAX_PAYLOAD_BYTES, MAX_TEXT_CHARS};
use voronka_core::segment::{self, Problem, SegmentCatalog};
use voronka_core::{ChannelId, SegmentId};

/// Most variants of one broadcast.
pub const MAX_VARIANTS: usize = 5;
/// Longest variant key.
const MAX_KEY_CHARS: usize = 20;
/// How far in the past a fixed send time may lie (a form submitted a little late).
const PAST_TOLERANCE_SECS: i64 = 60;

/// What a broadcast document may name in its workspace.
#[derive(Debug, Clone, Default)]
pub struct BroadcastCatalog {
    /// The workspace's channels.
    pub channels: Vec<(ChannelId, ChannelKind)>,
    /// Topic keys.
    pub topics: Vec<String>,
    /// Names of flows with a published version.
    pub published_flows: Vec<String>,
    /// Names of flows never published (named in a clearer message).
    pub draft_flows: Vec<String>,
    /// What segment filters may name.
    pub segments: SegmentCatalog,
    /// Filters of the saved segments the document names (absent: no such segment).
    pub saved_segments: HashMap<SegmentId, Value>,
}

impl BroadcastCatalog {
    /// The channels a broadcast with this choice may use.
    pub fn targets(&self, choice: &ChannelChoice) -> Vec<(ChannelId, ChannelKind)> {
        match choice {
            ChannelChoice::All | ChannelChoice::Preferred => self.channels.clone(),
            ChannelChoice::One { channel } => self
                .channels
                .iter()
                .filter(|(id, _)| id == channel)
                .cloned()
                .collect(),
        }
    }
}

fn problem(path: &str, code: &str, message: impl Into<String>) -> Problem {
    Problem::new(path, code, message)
}

/// Reads a document, pointing at the part that does not read when it does not.
pub fn read_spec(v: &Value) -> Result<BroadcastSpec, Vec<Problem>> {
    match serde_json::from_value::<BroadcastSpec>(v.clone()) {
        Ok(spec) => Ok(spec),
        Err(e) => Err(vec![locate_read_error(v, &e.to_string())]),
    }
}

/// Finds the innermost known part of the document that fails to read on its own, so the
/// problem points at it instead of at the whole document.
fn locate_read_error(v: &Value, whole: &str) -> Problem {
    fn fails<T: serde::de::DeserializeOwned>(v: &Value) -> Option<String> {
        serde_json::from_value::<T>(v.clone())
            .err()
            .map(|e| e.to_string())
    }
    let Some(obj) = v.as_object() else {
        return problem(
            "",
            "invalid_document",
            "a broadcast document is a JSON object",
        );
    };
    let message_problem = |m: &Value, at: &str| -> Option<Problem> {
        let mo = m.as_object()?;
        if let Some(bs) = mo.get("buttons").and_then(Value::as_array) {
            for (j, b) in bs.iter().enumerate() {
                if fails::<BroadcastButton>(b).is_some() {
                    return Some(problem(
                        &format!("{at}/buttons/{j}"),
                        "invalid_button",
                        "a button is {\"label\", \"url\"}, {\"label\", \"start_flow\"} or {\"label\", \"payload\"}",
                    ));
                }
            }
        }
        fails::<BroadcastMessage>(m).map(|e| problem(at, "invalid_message", e))
    };
    if let Some(vs) = obj.get("variants") {
        match vs.as_array() {
            None => return problem("/variants", "invalid_variants", "variants is a list"),
            Some(list) => {
                for (i, variant) in list.iter().enumerate() {
                    let at = format!("/variants/{i}");
                    if let Some(m) = variant.get("message") {
                        if let Some(p) = message_problem(m, &format!("{at}/message")) {
                            return p;
                        }
                    }
                    if let Some(e) = fails::<voronka_core::broadcast::Variant>(variant) {
                        return problem(&at, "invalid_variant", e);
                    }
                }
            }
        }
    } else {
        return problem("/variants", "missing", "variants are required");
    }
    if let Some(f) = obj.get("follow_up") {
        if let Some(m) = f.get("message") {
            if let Some(p) = message_problem(m, "/follow_up/message") {
                return p;
            }
        }
        if let Some(e) = fails::<Option<voronka_core::broadcast::FollowUp>>(f) {
            return problem("/follow_up", "invalid_follow_up", e);
        }
    }
    for (key, code) in [
        ("schedule", "invalid_schedule"),
        ("winner", "invalid_winner"),
        ("channels", "invalid_channels"),
        ("segment", "invalid_segment"),
    ] {
        if let Some(part) = obj.get(key) {
            let e = match key {
                "schedule" => fails::<Schedule>(part),
                "winner" => fails::<Option<voronka_core::broadcast::WinnerRule>>(part),
                "channels" => fails::<ChannelChoice>(part),
                _ => fails::<Option<SegmentTarget>>(part),
            };
            if let Some(e) = e {
                return problem(&format!("/{key}"), code, e);
            }
        }
    }
    problem("", "invalid_document", whole)
}

/// Checks a document against a workspace at `now`. Every problem is listed.
pub fn validate(
    v: &Value,
    cat: &BroadcastCatalog,
    templates: &Templates,
    now: Timestamp,
) -> Vec<Problem> {
    match read_spec(v) {
        Ok(spec) => validate_spec(&spec, cat, templates, now),
        Err(p) => p,
    }
}

/// Checks a document that reads.
pub fn validate_spec(
    spec: &BroadcastSpec,
    cat: &BroadcastCatalog,
    templates: &Templates,
    now: Timestamp,
) -> Vec<Problem> {
    let mut out = Vec::new();
    // Channels.
    if cat.channels.is_empty() {
        out.push(problem(
            "/channels",
            "no_channel",
            "the workspace has no channel to send on",
        ));
    }
    if let ChannelChoice::One { channel } = spec.channels {
        if !cat.channels.iter().any(|(id, _)| *id == channel) {
            out.push(problem(
                "/channels/channel",
                "unknown_channel",
                format!("channel {channel} does not exist in this workspace"),
            ));
        }
    }
    let targets = cat.targets(&spec.channels);
    let reads = targets
        .iter()
        .any(|(_, k)| capabilities(*k).is_some_and(|c| c.read_receipts));
    // Topic.
    if let Some(t) = &spec.topic {
        if !cat.topics.iter().any(|k| k == t) {
            out.push(problem(
                "/topic",
                "unknown_topic",
                format!("topic `{t}` does not exist"),
            ));
        }
    }
    // Audience.
    match &spec.segment {
        None => {}
        Some(SegmentTarget::Inline { filter }) => {
            if let Err(ps) = segment::compile(filter, &cat.segments, now) {
                out.extend(ps.into_iter().map(|p| Problem {
                    path: format!("/segment/filter{}", p.path),
                    ..p
                }));
            }
        }
        Some(SegmentTarget::Saved { segment_id }) => match cat.saved_segments.get(segment_id) {
            None => out.push(problem(
                "/segment/segment_id",
                "unknown_segment",
                format!("segment {segment_id} does not exist"),
            )),
            Some(filter) => {
                if let Err(ps) = segment::compile(filter, &cat.segments, now) {
                    let first = ps.first().map(|p| p.to_string()).unwrap_or_default();
                    out.push(problem(
                        "/segment/segment_id",
                        "invalid_segment",
                        format!("segment {segment_id} no longer resolves: {first}"),
                    ));
                }
            }
        },
    }
    // Variants.
    if spec.variants.is_empty() || spec.variants.len() > MAX_VARIANTS {
        out.push(problem(
            "/variants",
            "variant_count",
            format!("a broadcast has 1 to {MAX_VARIANTS} variants"),
        ));
    }
    let mut keys = HashSet::new();
    let mut sum: u32 = 0;
    for (i, variant) in spec.variants.iter().enumerate() {
        let at = format!("/variants/{i}");
        let key = variant.key.trim();
        if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
            out.push(problem(
                &format!("{at}/key"),
                "invalid_key",
                format!("a variant key is 1 to {MAX_KEY_CHARS} characters"),
            ));
        } else if !keys.insert(key.to_string()) {
            out.push(problem(
                &format!("{at}/key"),
                "duplicate_key",
                format!("variant key `{key}` is used twice"),
            ));
        }
        if variant.percent == 0 || variant.percent > 100 {
            out.push(problem(
                &format!("{at}/percent"),
                "invalid_percent",
                "a variant's percent is 1 to 100",
            ));
        }
        sum += u32::from(variant.percent);
        check_message(
            &variant.message,
            &format!("{at}/message"),
            &targets,
            cat,
            templates,
            &mut out,
        );
    }
    if !spec.variants.is_empty() && sum != 100 {
        out.push(problem(
            "/variants",
            "percent_sum",
            format!("the variants' percents sum to {sum}, not 100"),
        ));
    }
    // Schedule.
    match &spec.schedule {
        Schedule::Now => {}
        Schedule::At { at } => {
            if at.as_second() < now.as_second() - PAST_TOLERANCE_SECS {
                out.push(problem(
                    "/schedule/at",
                    "in_past",
                    format!("{at} is in the past"),
                ));
            }
        }
        Schedule::Local { local } => match super::latest_local(*local) {
            Some(latest) if latest >= now => {}
            _ => out.push(problem(
                "/schedule/local",
                "in_past",
                format!("{local} has passed in every time zone"),
            )),
        },
    }
    // Winner.
    if let Some(w) = &spec.winner {
        if spec.variants.len() < 2 {
            out.push(problem(
                "/winner",
                "winner_needs_variants",
                "picking a winner needs at least two variants",
            ));
        }
        if w.test_percent == 0 || w.test_percent > 99 {
            out.push(problem(
                "/winner/test_percent",
                "invalid_percent",
                "the test group is 1 to 99 percent of the audience",
            ));
        }
        if w.after_hours == 0 {
            out.push(problem(
                "/winner/after_hours",
                "invalid_hours",
                "the winner is picked at least 1 hour after the test starts",
            ));
        }
        if w.by == WinnerMetric::Read && !reads {
            out.push(problem(
                "/winner/by",
                "read_receipts_unavailable",
                "none of the broadcast's channels reports reads (Telegram does not); pick the winner by click",
            ));
        }
    }
    // Follow-up.
    if let Some(f) = &spec.follow_up {
        if f.after_hours == 0 {
            out.push(problem(
                "/follow_up/after_hours",
                "invalid_hours",
                "a follow-up goes out at least 1 hour after the first message",
            ));
        }
        if f.if_not == Engagement::Read && !reads {
            out.push(problem(
                "/follow_up/if_not",
                "read_receipts_unavailable",
                "none of the broadcast's channels reports reads (Telegram does not); follow up on `clicked`",
            ));
        }
        let follow_targets = match f.channel {
            Some(ch) => {
                let t: Vec<_> = cat
                    .channels
                    .iter()
                    .filter(|(id, _)| *id == ch)
                    .cloned()
                    .collect();
                if t.is_empty() {
                    out.push(problem(
                        "/follow_up/channel",
                        "unknown_channel",
                        format!("channel {ch} does not exist in this workspace"),
                    ));
                }
                t
            }
            None => targets.clone(),
        };
        check_message(
            &f.message,
            "/follow_up/message",
            &follow_targets,
            cat,
            templates,
            &mut out,
        );
    }
    out
}

fn has_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

fn http_url(s: &str) -> bool {
    matches!(reqwest::Url::parse(s), Ok(u) if u.scheme() == "http" || u.scheme() == "https")
}

fn check_message(
    m: &BroadcastMessage,
    at: &str,
    targets: &[(ChannelId, ChannelKind)],
    cat: &BroadcastCatalog,
    templates: &Templates,
    out: &mut Vec<Problem>,
) {
    let text = m.text.as_deref().unwrap_or_default();
    if text.trim().is_empty() && m.media.is_none() {
        out.push(problem(
            at,
            "empty_message",
            "a message needs text or media",
        ));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        out.push(problem(
            &format!("{at}/text"),
            "text_too_long",
            format!("a text is at most {MAX_TEXT_CHARS} characters"),
        ));
    } else if let Err(e) = templates.check(text) {
        out.push(problem(
            &format!("{at}/text"),
            "template_error",
            format!("the text template does not compile: {e}"),
        ));
    }
    let limits: Vec<_> = targets
        .iter()
        .filter_map(|(_, k)| channel_limits(*k))
        .collect();
    if let Some(media) = &m.media {
        if !http_url(&media.url) {
            out.push(problem(
                &format!("{at}/media/url"),
                "invalid_url",
                "media is fetched from an http or https URL",
            ));
        }
        for l in limits.iter().filter(|l| !l.media) {
            out.push(problem(
                &format!("{at}/media"),
                "media_unsupported",
                format!("{} cannot send pictures or files", l.name),
            ));
        }
    }
    for l in &limits {
        if m.buttons.len() > l.max_buttons {
            out.push(problem(
                &format!("{at}/buttons"),
                "too_many_buttons",
                format!(
                    "{} shows at most {} buttons; this message has {}",
                    l.name,
                    l.max_buttons,
                    m.buttons.len()
                ),
            ));
        }
    }
    for (j, b) in m.buttons.iter().enumerate() {
        let bat = format!("{at}/buttons/{j}");
        let label = b.label();
        if label.trim().is_empty() {
            out.push(problem(
                &format!("{bat}/label"),
                "empty_label",
                "a button needs a label",
            ));
        } else if let Err(e) = templates.check(label) {
            out.push(problem(
                &format!("{bat}/label"),
                "template_error",
                format!("the label template does not compile: {e}"),
            ));
        } else if !has_template(label) {
            // A templated label is measured per recipient when it is rendered.
            let n = label.chars().count();
            for l in &limits {
                if n > l.button_label_limit {
                    out.push(problem(
                        &format!("{bat}/label"),
                        "label_too_long",
                        format!(
                            "{} shows button labels of at most {} characters; this one has {n}",
                            l.name, l.button_label_limit
                        ),
                    ));
                }
            }
        }
        match b {
            BroadcastButton::Url { url, .. } => {
                if !http_url(url) {
                    out.push(problem(
                        &format!("{bat}/url"),
                        "invalid_url",
                        "a link button opens an http or https URL",
                    ));
                }
            }
            BroadcastButton::StartFlow { start_flow, .. } => {
                if cat.published_flows.iter().any(|f| f == start_flow) {
                } else if cat.draft_flows.iter().any(|f| f == start_flow) {
                    out.push(problem(
                        &format!("{bat}/start_flow"),
                        "flow_not_published",
                        format!("flow `{start_flow}` has no published version"),
                    ));
                } else {
                    out.push(problem(
                        &format!("{bat}/start_flow"),
                        "unknown_flow",
                        format!("there is no flow named `{start_flow}`"),
                    ));
                }
            }
            BroadcastButton::Payload { payload, .. } => {
                if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
                    out.push(problem(
                        &format!("{bat}/payload"),
                        "invalid_payload",
                        format!("a payload is 1 to {MAX_PAYLOAD_BYTES} bytes"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> BroadcastCatalog {
        BroadcastCatalog {
            channels: vec![(ChannelId(1), ChannelKind::Telegram)],
            topics: vec!["news".into()],
            published_flows: vec!["quiz".into()],
            draft_flows: vec!["draft".into()],
            ..Default::default()
        }
    }

    fn codes(v: Value) -> Vec<(String, String)> {
        validate(&v, &catalog(), &Templates::new(), Timestamp::now())
            .into_iter()
            .map(|p| (p.path, p.code))
            .collect()
    }

    #[test]
    fn a_good_document_has_no_problems() {
        let v = json!({"topic": "news", "variants": [
            {"key": "A", "percent": 50, "message": {"text": "Hi {{ contact.first_name }}",
              "buttons": [{"label": "Shop", "url": "https://x.example"}, {"label": "Quiz", "start_flow": "quiz"}]}},
            {"key": "B", "percent": 50, "message": {"text": "Hello"}}],
            "winner": {"test_percent": 20, "after_hours": 4, "by": "click"},
            "follow_up": {"if_not": "clicked", "after_hours": 24, "message": {"text": "Still there?"}}});
        assert_eq!(codes(v), vec![]);
    }

    #[test]
    fn problems_point_at_their_node() {
        let v = json!({"topic": "promo", "variants": [
            {"key": "A", "percent": 60, "message": {"text": "{{ broken", "buttons": [
                {"label": "Go", "url": "ftp://x"}, {"label": "Quiz", "start_flow": "draft"}]}},
            {"key": "A", "percent": 30, "message": {}}],
            "winner": {"test_percent": 20, "after_hours": 0, "by": "read"},
            "follow_up": {"if_not": "read", "after_hours": 0, "message": {"text": "x"}}});
        let got = codes(v);
        for want in [
            ("/topic", "unknown_topic"),
            ("/variants/0/message/text", "template_error"),
            ("/variants/0/message/buttons/0/url", "invalid_url"),
            (
                "/variants/0/message/buttons/1/start_flow",
                "flow_not_published",
            ),
            ("/variants/1/key", "duplicate_key"),
            ("/variants/1/message", "empty_message"),
            ("/variants", "percent_sum"),
            ("/winner/after_hours", "invalid_hours"),
            ("/winner/by", "read_receipts_unavailable"),
            ("/follow_up/after_hours", "invalid_hours"),
            ("/follow_up/if_not", "read_receipts_unavailable"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing in {got:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_button_is_pointed_at() {
        let got = codes(json!({"variants": [{"key": "A", "percent": 100,
            "message": {"text": "x", "buttons": [{"label": "x"}]}}]}));
        assert_eq!(
            got,
            vec![(
                "/variants/0/message/buttons/0".to_string(),
                "invalid_button".to_string()
            )]
        );
    }

    #[test]
    fn a_past_time_and_a_lone_winner_are_refused() {
        let got = codes(
            json!({"variants": [{"key": "A", "percent": 100, "message": {"text": "x"}}],
            "schedule": {"at": "2001-01-01T00:00:00Z"},
            "winner": {"test_percent": 20, "after_hours": 2, "by": "click"}}),
        );
        assert!(
            got.contains(&("/schedule/at".into(), "in_past".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("/winner".into(), "winner_needs_variants".into())),
            "{got:?}"
        );
    }
}
