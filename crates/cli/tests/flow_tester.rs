//! `voronka flow test`: a scripted conversation piped into the terminal tester reaches
//! the end of the flow, clock skips included.

use std::io::Write;
use std::process::{Command, Stdio};

fn converse(flow: &str, script: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = format!("{}/../../examples/flows/{flow}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_voronka"))
        .args(["flow", "test", &path, "--name", "Anna"])
        .current_dir(dir.path())
        .env_remove("VORONKA_CONFIG")
        .env("VORONKA_LOG_LEVEL", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start voronka flow test");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), text)
}

#[test]
fn a_quiz_is_answered_by_number_and_by_label() {
    let (ok, out) = converse("quiz.yaml", "2\nUnder 1000\n/contact\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("bot: How long have you been doing marketing in messengers?"),
        "{out}"
    );
    assert!(out.contains("     [2] A year or more"), "{out}");
    assert!(
        out.contains("bot: You are a pro. We will send you advanced cases."),
        "{out}"
    );
    assert!(out.contains("segment_pro"), "{out}");
    assert!(out.contains("done at step `pro_result`"), "{out}");
}

#[test]
fn delays_are_skipped_and_events_end_runs() {
    let (ok, out) = converse(
        "abandoned_cart.yaml",
        "/state\n/skip 2h 1m\n/event order_paid {}\n/skip 2d\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("waiting for delay"), "{out}");
    assert!(
        out.contains("bot: You left something in your cart. It is still waiting for you."),
        "{out}"
    );
    assert!(out.contains("cancelled at step `wait_more`"), "{out}");
    assert!(!out.contains("CART10"), "{out}");
}

#[test]
fn a_broken_flow_is_refused_with_its_problems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "start: a\nsteps:\n  - { id: a, type: send, text: hi, next: nowhere }\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_voronka"))
        .args(["flow", "test"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("step a:") && text.contains("nowhere"),
        "{text}"
    );
}
