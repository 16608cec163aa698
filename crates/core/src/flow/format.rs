//! Flow documents as files: JSON or YAML in, either out.
//!
//! Text is read into a JSON value first and only then into a [`FlowDocument`], so YAML
//! and JSON report mistakes the same way, with the path of the offending value
//! (`steps[3].buttons[0]`) and the id of the step it is in.

use super::document::{
    ActionStep, AskStep, ConditionStep, DelayStep, FlowDocument, HandoffStep, HttpStep, SendStep,
    SplitStep, StartFlowStep, StopStep,
};
use super::validate::Problem;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;

/// How a flow document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// The format a file name suggests: `.yaml` and `.yml` are YAML, anything else JSON.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Json,
        }
    }

    /// The format a text looks like: a JSON document starts with `{`, anything else is
    /// taken for YAML.
    pub fn guess(text: &str) -> Format {
        if text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('{')
        {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Parses a flow document. The error says where the document is wrong; it is not
/// validated beyond its shape (see [`super::validate::validate`]).
pub fn parse(text: &str, format: Format) -> Result<FlowDocument, Problem> {
    let text = text.trim_start_matches('\u{feff}');
    let value: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
        Format::Yaml => serde_norway::from_str(text).map_err(|e| syntax(e.to_string()))?,
    };
    from_value(value)
}

/// Reads a document from a JSON value (as parsed from either format).
pub fn from_value(value: Value) -> Result<FlowDocument, Problem> {
    match &value {
        Value::Object(_) => {}
        Value::Null => return Err(shape("", None, "the document is empty".into())),
        _ => {
            return Err(shape(
                "",
                None,
                "the document must be a mapping with `start` and `steps`".into(),
            ))
        }
    }
    match serde_path_to_error::deserialize::<_, FlowDocument>(&value) {
        Ok(doc) => Ok(doc),
        Err(e) => {
            let path = path_text(e.path());
            let message = e.into_inner().to_string();
            Err(locate(&value, path, message))
        }
    }
}

/// The document as YAML.
pub fn to_yaml(doc: &FlowDocument) -> String {
    // Through a JSON value, so enums come out as plain mappings (`field: {…}`) rather
    // than YAML tags (`!field`), which read back the same as hand-written YAML. Every map
    // in a document has string keys, so rendering cannot fail.
    serde_json::to_value(doc)
        .ok()
        .and_then(|v| serde_norway::to_string(&v).ok())
        .unwrap_or_default()
}

/// The document as indented JSON.
pub fn to_json_pretty(doc: &FlowDocument) -> String {
    // Every map in a document has string keys, so rendering cannot fail.
    serde_json::to_string_pretty(doc).unwrap_or_default()
}

fn syntax(message: String) -> Problem {
    Problem {
        step: None,
        path: String::new(),
        code: "syntax",
        message,
    }
}

fn shape(path: &str, step: Option<String>, message: String) -> Problem {
    Problem {
        step,
        path: path.to_string(),
        code: "bad_document",
        message,
    }
}

fn path_text(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        p
    }
}

/// Turns a deserialization error into a problem, naming the step it is in. Steps are
/// tagged by `type`, which makes serde read them whole and lose the path inside; reading
/// the step again as its own type finds the exact place.
fn locate(root: &Value, path: String, message: String) -> Problem {
    let Some(index) = step_index(&path) else {
        return shape(&path, None, message);
    };
    let step = root.get("steps").and_then(|s| s.get(index));
    let id = step
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    let step_path = format!("steps[{index}]");
    if path == step_path {
        if let Some((inner, inner_message)) = step.and_then(inside_step) {
            let full = if inner.is_empty() {
                step_path
            } else {
                format!("{step_path}.{inner}")
            };
            return shape(&full, id, inner_message);
        }
    }
    shape(&path, id, message)
}

/// `3` for `steps[3]` and anything under it.
fn step_index(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("steps[")?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

/// The path and message of the first error inside one step, read as the type its `type`
/// names.
fn inside_step(step: &Value) -> Option<(String, String)> {
    let mut fields = step.as_object()?.clone();
    let kind = fields.remove("type")?;
    let body = Value::Object(fields);
    match kind.as_str()? {
        "send" => first_error::<SendStep>(&body),
        "ask" => first_error::<AskStep>(&body),
        "condition" => first_error::<ConditionStep>(&body),
        "split" => first_error::<SplitStep>(&body),
        "action" => first_error::<ActionStep>(&body),
        "delay" => first_error::<DelayStep>(&body),
        "http" => first_error::<HttpStep>(&body),
        "start_flow" => first_error::<StartFlowStep>(&body),
        "handoff" => first_error::<HandoffStep>(&body),
        "stop" => first_error::<StopStep>(&body),
        _ => None,
    }
}

fn first_error<T: DeserializeOwned>(body: &Value) -> Option<(String, String)> {
    serde_path_to_error::deserialize::<_, T>(body)
        .err()
        .map(|e| (path_text(e.path()), e.into_inner().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::document::Step;

    const FLOW: &str = r#"
name: Lead magnet
triggers:
  - type: keyword
    keywords: [гайд, guide]
  - type: ref
    ref: guide_ads
exit_on:
  - type: event
    name: order_paid
start: hello
steps:
  - type: send
    id: hello
    text: "Привет, {{ contact.first_name | default(\"друг\") }}! Прислать гайд?"
    buttons:
      - label: Да
        next: ask_email
      - label: Сайт
        url: https://example.com
    timeout:
      after: 1d
      next: bye
    layout: { x: 10.5, y: 20 }
  - type: ask
    id: ask_email
    text: Куда прислать?
    expect: email
    field: email
    next: check
  - type: condition
    id: check
    branches:
      - if: { field: { name: email, op: contains, value: "@gmail" } }
        next: wait
      - if: { all: [ { tag: vip }, { weekday: [mon, fri] }, { local_time: { from: "09:00", to: "18:00" } } ] }
        next: wait
    else: wait
  - type: delay
    id: wait
    window: { weekdays: [mon], from: 10:00, to: 12:00 }
    next: bye
  - type: action
    id: bye
    actions:
      - add_tag: got_guide
      - set_field: { field: city, value: "{{ answers.ask_email }}" }
      - conversion: { name: lead, value: 100, currency: RUB }
"#;

    #[test]
    fn yaml_round_trips() {
        let doc = parse(FLOW, Format::Yaml).expect("parses");
        assert_eq!(doc.steps.len(), 5);
        // `10:00` must stay a string (YAML 1.1 would read it as a number of minutes).
        let Some(Step::Delay(d)) = doc.step("wait") else {
            panic!("no delay step");
        };
        assert_eq!(d.window.as_ref().map(|w| w.from.as_str()), Some("10:00"));
        let yaml = to_yaml(&doc);
        let again = parse(&yaml, Format::Yaml).expect("rendered YAML parses");
        assert_eq!(again, doc);
        let json = to_json_pretty(&doc);
        assert_eq!(Format::guess(&json), Format::Json);
        assert_eq!(parse(&json, Format::Json).expect("JSON parses"), doc);
    }

    #[test]
    fn formats_follow_the_file_name_and_the_text() {
        assert_eq!(Format::from_path(Path::new("a/flow.yaml")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("flow.YML")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("flow.json")), Format::Json);
        assert_eq!(Format::from_path(Path::new("flow")), Format::Json);
        assert_eq!(Format::guess("  {\"start\": \"a\"}"), Format::Json);
        assert_eq!(Format::guess("start: a"), Format::Yaml);
    }

    #[test]
    fn errors_name_the_step_and_the_path() {
        let text = r#"{"start": "a", "steps": [
            {"type": "stop", "id": "a"},
            {"type": "send", "id": "offer", "text": "x",
             "buttons": [{"label": "Yes", "nxt": "a"}]}
        ]}"#;
        let p = parse(text, Format::Json).expect_err("unknown field");
        assert_eq!(p.code, "bad_document");
        assert_eq!(p.step.as_deref(), Some("offer"));
        assert_eq!(p.path, "steps[1].buttons[0].nxt");
        assert!(p.message.contains("unknown field `nxt`"), "{}", p.message);
        assert!(p.to_string().starts_with("step offer: "), "{p}");

        let yaml =
            "start: a\nsteps:\n  - type: delay\n    id: wait\n    for: 2h\n    smart: maybe\n";
        let p = parse(yaml, Format::Yaml).expect_err("not a bool");
        assert_eq!(
            (p.step.as_deref(), p.path.as_str()),
            (Some("wait"), "steps[0].smart")
        );

        let p = parse(
            "start: a\nsteps:\n  - type: sned\n    id: x\n",
            Format::Yaml,
        )
        .expect_err("unknown type");
        assert_eq!(p.step.as_deref(), Some("x"));
        assert!(p.message.contains("sned"), "{}", p.message);

        let p = parse("steps: []\n", Format::Yaml).expect_err("no start");
        assert_eq!((p.step, p.path.as_str()), (None, ""));
        assert!(p.message.contains("missing field `start`"), "{}", p.message);

        let p = parse("{\"start\": ", Format::Json).expect_err("syntax");
        assert_eq!(p.code, "syntax");
        assert!(p.message.contains("line 1"), "{}", p.message);

        let p = parse("start: [a\n", Format::Yaml).expect_err("syntax");
        assert_eq!(p.code, "syntax");

        let p = parse("", Format::Yaml).expect_err("empty");
        assert!(p.message.contains("empty"), "{}", p.message);
        let p = parse("- a\n", Format::Yaml).expect_err("a list");
        assert!(p.message.contains("mapping"), "{}", p.message);
    }

    #[test]
    fn errors_in_triggers_keep_their_path() {
        let p = parse(
            "start: a\ntriggers:\n  - type: keyword\n  - type: tag_added\nsteps: [{type: stop, id: a}]\n",
            Format::Yaml,
        )
        .expect_err("tag missing");
        assert_eq!(p.step, None);
        assert!(p.path.starts_with("triggers[1]"), "{}", p.path);
        assert!(p.message.contains("tag"), "{}", p.message);
    }
}
