//! Runs `voronka flow check` on flow files: a good one, one with problems, one that is
//! not a flow at all, and one checked against a workspace's fields and tags.

use std::path::Path;
use std::process::{Command, Output};

fn voronka(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voronka"));
    c.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("VORONKA_") {
            c.env_remove(k);
        }
    }
    c.output().expect("voronka runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const GOOD: &str = r#"
name: Guide
triggers:
  - type: keyword
    keywords: [гайд, guide]
start: hello
steps:
  - type: send
    id: hello
    text: "Привет, {{ contact.first_name | default(\"друг\") }}! Прислать гайд?"
    buttons:
      - label: Да
        next: ask_email
      - label: Нет
        next: bye
  - type: ask
    id: ask_email
    text: Куда прислать?
    expect: email
    field: email
    next: bye
  - type: stop
    id: bye
"#;

const BAD: &str = r#"{
  "start": "hello",
  "steps": [
    {"type": "send", "id": "hello", "text": "Прислать гайд?",
     "buttons": [{"label": "Да", "next": "ask_emial"}, {"label": "Нет", "next": "bye"}]},
    {"type": "ask", "id": "ask_email", "text": "Куда?", "expect": "email", "field": "email", "next": "bye"},
    {"type": "delay", "id": "wait", "for": "2 hours", "next": "bye"},
    {"type": "stop", "id": "bye"}
  ]
}"#;

#[test]
fn good_flows_pass_and_bad_ones_list_their_problems() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();

    std::fs::write(dir.join("good.yaml"), GOOD).expect("write");
    let o = voronka(dir, &["flow", "check", "good.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok: 3 steps, 1 triggers");

    std::fs::write(dir.join("bad.json"), BAD).expect("write");
    let o = voronka(dir, &["flow", "check", "bad.json"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(
            &"step hello: button “Да” leads to `ask_emial`, which is not a step (did you mean `ask_email`?)"
        ),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("step wait: the delay: `2 hours` is not a duration")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("step ask_email: no contact ever gets here")),
        "{out}"
    );
    assert!(lines.iter().all(|l| l.starts_with("step ")), "{out}");

    // A document of the wrong shape names the place, and nothing is printed on stdout.
    std::fs::write(
        dir.join("typo.yaml"),
        "start: a\nsteps:\n  - type: send\n    id: a\n    txt: hi\n",
    )
    .expect("write");
    let o = voronka(dir, &["flow", "check", "typo.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("step a: unknown field `txt`"),
        "{}",
        stderr(&o)
    );

    std::fs::write(dir.join("broken.json"), "{\"start\": ").expect("write");
    let o = voronka(dir, &["flow", "check", "broken.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 1"), "{}", stderr(&o));

    let o = voronka(dir, &["flow", "check", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot read missing.yaml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_workspace_adds_its_fields_and_tags() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let o = voronka(dir, &["workspace", "create", "Shop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ws = stdout(&o).trim().to_string();

    let flow = "start: a\nsteps:\n  - type: action\n    id: a\n    actions:\n      - remove_tag: vip\n      - set_field: { field: city, value: Москва }\n      - set_field: { field: first_name, value: Иван }\n";
    std::fs::write(dir.join("f.yaml"), flow).expect("write");

    // Alone, the file cannot be faulted for names only a workspace knows.
    let o = voronka(dir, &["flow", "check", "f.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let o = voronka(dir, &["flow", "check", "f.yaml", "--workspace", &ws]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("step a: the tag “vip” does not exist"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("step a: `set_field` writes to `city`, which is neither"),
        "{out}"
    );

    let o = voronka(dir, &["flow", "check", "f.yaml", "--workspace", "999"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("workspace 999"), "{}", stderr(&o));
}
