use super::*;
use voronka_core::field::FieldSpec;
use voronka_core::flow::format::{parse, Format};
use voronka_core::FieldId;

fn doc(yaml: &str) -> FlowDocument {
    match parse(yaml, Format::Yaml) {
        Ok(d) => d,
        Err(p) => panic!("test flow does not parse: {p}"),
    }
}

fn now() -> Timestamp {
    "2026-03-02T12:00:00Z".parse().expect("time")
}

struct World {
    templates: Templates,
    fields: Vec<FieldDefinition>,
}

impl World {
    fn new() -> World {
        let spec: FieldSpec =
            serde_json::from_value(json!({"key": "age", "label": "Age", "type": "number"}))
                .expect("field spec");
        World {
            templates: Templates::new(),
            fields: vec![FieldDefinition {
                id: FieldId(1),
                spec,
            }],
        }
    }

    fn env(&self, roll: f64) -> Env<'_> {
        Env {
            flow_id: FlowId(7),
            version: 1,
            now: now(),
            tz: TimeZone::UTC,
            quiet: Some(QuietHours {
                from: jiff::civil::time(21, 0, 0, 0),
                to: jiff::civil::time(9, 0, 0, 0),
                weekends: false,
            }),
            channel: Some((ChannelId(3), ChannelKind::Telegram)),
            templates: &self.templates,
            fields: &self.fields,
            responding: true,
            roll,
        }
    }
}

fn contact() -> ContactView {
    ContactView {
        id: 1,
        profile: Profile {
            first_name: Some("Анна".into()),
            ..Profile::default()
        },
        ..ContactView::default()
    }
}

fn texts(fx: &Effects) -> Vec<String> {
    fx.messages
        .iter()
        .map(|m| m.message.text.clone().unwrap_or_default())
        .collect()
}

const LEAD: &str = r#"
start: hello
steps:
  - id: hello
    type: send
    text: "Привет, {{ contact.first_name | default('друг') }}!"
    next: ask_email
  - id: ask_email
    type: ask
    text: Your e-mail?
    expect: email
    field: email
    retries: 1
    retry_text: "That is not an e-mail."
    next: tag
    on_fail: sorry
  - id: tag
    type: action
    actions:
      - add_tag: lead
    next: done
  - id: done
    type: send
    text: "Here is your checklist, {{ answers.ask_email }}"
  - id: sorry
    type: send
    text: Maybe later.
"#;

#[test]
fn a_lead_magnet_asks_retries_and_stores_the_answer() {
    let w = World::new();
    let d = doc(LEAD);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    assert_eq!(m.advance(Input::Start), Pause::Settled);
    assert_eq!(texts(&m.effects), ["Привет, Анна!", "Your e-mail?"]);
    assert_eq!(m.cursor.status, RunStatus::Waiting);
    assert_eq!(m.cursor.wait, Some(WaitKind::Answer));
    assert_eq!(m.cursor.step_id, "ask_email");

    let (view, cursor) = (m.contact.clone(), m.cursor.clone());
    let mut m = Machine::new(&d, w.env(0.5), view, cursor);
    m.advance(Input::Reply {
        text: "nope".into(),
        payload: None,
    });
    assert_eq!(texts(&m.effects), ["That is not an e-mail."]);
    assert_eq!(m.cursor.attempts, 1);
    assert_eq!(m.cursor.wait, Some(WaitKind::Answer));

    let (view, cursor) = (m.contact.clone(), m.cursor.clone());
    let mut m = Machine::new(&d, w.env(0.5), view, cursor);
    m.advance(Input::Reply {
        text: " Anna@Example.COM ".into(),
        payload: None,
    });
    assert_eq!(m.cursor.status, RunStatus::Done);
    assert_eq!(m.effects.add_tags, ["lead"]);
    let email = m.effects.profile.as_ref().and_then(|p| p.email.clone());
    assert_eq!(email.as_deref(), Some("Anna@example.com"));
    assert_eq!(
        texts(&m.effects),
        ["Here is your checklist, Anna@example.com"]
    );
    let ask = m.effects.counters.iter().find(|c| c.step_id == "ask_email");
    assert_eq!(ask.map(|c| c.completed), Some(1));
}

#[test]
fn used_up_retries_follow_on_fail() {
    let w = World::new();
    let d = doc(LEAD);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    for _ in 0..2 {
        let (view, cursor) = (m.contact.clone(), m.cursor.clone());
        m = Machine::new(&d, w.env(0.5), view, cursor);
        m.advance(Input::Reply {
            text: "no".into(),
            payload: None,
        });
    }
    assert_eq!(texts(&m.effects), ["Maybe later."]);
    assert_eq!(m.cursor.status, RunStatus::Done);
    let ask = m.effects.counters.iter().find(|c| c.step_id == "ask_email");
    assert_eq!(ask.map(|c| c.dropped), Some(1));
}

#[test]
fn buttons_branch_and_count_clicks() {
    let w = World::new();
    let d = doc(r#"
start: q
steps:
  - id: q
    type: send
    text: Coffee or tea?
    buttons:
      - label: Coffee
        next: coffee
      - label: Tea
        next: tea
      - label: Site
        url: https://example.com
  - id: coffee
    type: send
    text: Coffee it is
  - id: tea
    type: send
    text: Tea it is
"#);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    let sent = &m.effects.messages[0].message;
    assert_eq!(sent.buttons.len(), 3);
    let tea = sent.buttons[1].payload().map(str::to_string);
    assert_eq!(tea.as_deref(), Some("flow:7:q:1"));
    assert_eq!(m.cursor.wait, Some(WaitKind::Button));
    let mut m = Machine::new(&d, w.env(0.5), m.contact.clone(), m.cursor.clone());
    m.advance(Input::Reply {
        text: String::new(),
        payload: tea,
    });
    assert_eq!(texts(&m.effects), ["Tea it is"]);
    let q = m.effects.counters.iter().find(|c| c.step_id == "q");
    assert_eq!(q.map(|c| c.clicked), Some(1));
    // Another flow's payload does not press this flow's buttons.
    let mut m2 = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m2.advance(Input::Start);
    let mut m2 = Machine::new(&d, w.env(0.5), m2.contact.clone(), m2.cursor.clone());
    m2.advance(Input::Reply {
        text: String::new(),
        payload: Some("flow:8:q:1".into()),
    });
    assert_eq!(m2.cursor.wait, Some(WaitKind::Button));
}

#[test]
fn conditions_and_splits() {
    let w = World::new();
    let d = doc(r#"
start: c
steps:
  - id: c
    type: condition
    branches:
      - if: { all: [ { tag: vip }, { field: { name: age, op: gte, value: 18 } } ] }
        next: vip
    else: ab
  - id: ab
    type: split
    variants:
      - { name: A, weight: 1, next: a }
      - { name: B, weight: 3, next: b }
  - { id: vip, type: send, text: VIP }
  - { id: a, type: send, text: A }
  - { id: b, type: send, text: B }
"#);
    let mut c = contact();
    c.tags = vec!["vip".into()];
    c.fields.insert("age".into(), json!(30));
    let mut m = Machine::new(&d, w.env(0.0), c.clone(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(texts(&m.effects), ["VIP"]);
    c.fields.insert("age".into(), json!(12));
    let mut m = Machine::new(&d, w.env(0.1), c.clone(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(texts(&m.effects), ["A"]);
    assert_eq!(m.cursor.vars["split"]["ab"], "A");
    let mut m = Machine::new(&d, w.env(0.9), c, Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(texts(&m.effects), ["B"]);
}

#[test]
fn delays_wait_and_smart_delays_skip_quiet_hours() {
    let w = World::new();
    let d = doc(r#"
start: wait
steps:
  - { id: wait, type: delay, for: 2h, next: night }
  - { id: night, type: delay, for: 10h, smart: true, next: hi }
  - { id: hi, type: send, text: Good morning }
"#);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(m.cursor.wait, Some(WaitKind::Delay));
    assert_eq!(
        m.cursor.due_at,
        Some("2026-03-02T14:00:00Z".parse().expect("t"))
    );
    let mut m = Machine::new(&d, w.env(0.5), m.contact.clone(), m.cursor.clone());
    m.advance(Input::Wake);
    // 12:00 + 10 h = 22:00, inside 21:00–09:00: moved to 09:00 next day.
    assert_eq!(m.cursor.step_id, "night");
    assert_eq!(
        m.cursor.due_at,
        Some("2026-03-03T09:00:00Z".parse().expect("t"))
    );
    assert!(m.effects.messages.is_empty());
}

#[test]
fn http_answers_are_saved_and_errors_follow_on_error() {
    let w = World::new();
    let d = doc(r#"
start: call
steps:
  - id: call
    type: http
    url: "https://crm.example/leads?name={{ contact.first_name }}"
    save: { "var.plan": /plan, age: /age }
    next: ok
    on_error: failed
  - { id: ok, type: send, text: "Plan {{ vars.plan }}, age {{ fields.age }}" }
  - { id: failed, type: send, text: CRM is down }
"#);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    let Pause::Http(call) = m.advance(Input::Start) else {
        panic!("expected an HTTP call")
    };
    assert_eq!(call.method, "POST");
    assert!(call.url.ends_with("name=Анна"));
    assert!(call.body.as_deref().is_some_and(|b| b.contains("Анна")));
    m.resume_http(HttpOutcome::Answer {
        status: 200,
        json: Some(json!({"plan": "pro", "age": "41"})),
        text: String::new(),
    });
    assert_eq!(texts(&m.effects), ["Plan pro, age 41"]);
    assert_eq!(m.effects.fields.len(), 1);

    for outcome in [
        HttpOutcome::Error {
            code: "timeout".into(),
            message: "no answer in 10 s".into(),
        },
        HttpOutcome::Answer {
            status: 200,
            json: None,
            text: "<html>garbage".into(),
        },
        HttpOutcome::Answer {
            status: 500,
            json: Some(json!({})),
            text: String::new(),
        },
    ] {
        let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
        m.advance(Input::Start);
        m.resume_http(outcome);
        assert_eq!(texts(&m.effects), ["CRM is down"]);
        assert_eq!(m.cursor.status, RunStatus::Done);
        assert!(m
            .effects
            .events
            .iter()
            .any(|(k, _)| *k == EventKind::FlowStepFailed));
    }
}

#[test]
fn a_template_error_fails_the_step_visibly_and_follows_on_error() {
    let w = World::new();
    let d = doc(r#"
start: bad
steps:
  - id: bad
    type: send
    text: "{{ contact.first_name | no_such_filter }}"
    on_error: fallback
  - { id: fallback, type: send, text: Hello }
  - id: bad2
    type: send
    text: "{{ contact.first_name | no_such_filter }}"
"#);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(texts(&m.effects), ["Hello"]);
    let failed = m
        .effects
        .events
        .iter()
        .find(|(k, _)| *k == EventKind::FlowStepFailed)
        .map(|(_, v)| v.clone());
    assert!(failed.is_some_and(|v| v["step_id"] == "bad"));

    let mut d2 = d.clone();
    d2.start = "bad2".into();
    let mut m = Machine::new(&d2, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(m.cursor.status, RunStatus::Failed);
    assert!(m
        .cursor
        .error
        .as_deref()
        .is_some_and(|e| e.contains("template")));
}

#[test]
fn handoff_waits_for_release() {
    let w = World::new();
    let d = doc(r#"
start: h
steps:
  - { id: h, type: handoff, note: "Call {{ contact.first_name }}", next: back }
  - { id: back, type: send, text: The bot is back }
"#);
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(m.cursor.wait, Some(WaitKind::Handoff));
    let mut m = Machine::new(&d, w.env(0.5), m.contact.clone(), m.cursor.clone());
    m.advance(Input::Reply {
        text: "hello?".into(),
        payload: None,
    });
    assert_eq!(m.cursor.wait, Some(WaitKind::Handoff));
    m.advance(Input::Release);
    assert_eq!(texts(&m.effects), ["The bot is back"]);
}

#[test]
fn purposes_follow_the_situation() {
    let w = World::new();
    let d = doc("start: a\nsteps:\n  - { id: a, type: send, text: hi }\n");
    let mut m = Machine::new(&d, w.env(0.5), contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(m.effects.messages[0].purpose, Purpose::Response);
    let mut env = w.env(0.5);
    env.responding = false;
    let mut m = Machine::new(&d, env, contact(), Cursor::fresh(json!({})));
    m.advance(Input::Start);
    assert_eq!(m.effects.messages[0].purpose, Purpose::Marketing);
}

#[test]
fn comparisons() {
    assert!(compare(Some(json!("10")), "gt", Some(&json!(9))));
    assert!(compare(
        Some(json!("2026-03-01")),
        "lt",
        Some(&json!("2026-03-02"))
    ));
    assert!(compare(Some(json!("Moscow")), "eq", Some(&json!("moscow"))));
    assert!(compare(
        Some(json!(["a", "b"])),
        "contains",
        Some(&json!("B"))
    ));
    assert!(compare(None, "empty", None));
    assert!(!compare(None, "exists", None));
    assert!(!compare(None, "ne", Some(&json!(1))));
}
