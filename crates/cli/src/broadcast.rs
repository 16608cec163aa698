//! `voronka broadcast watch ID`: a broadcast's live progress in the terminal, read from
//! the server's progress stream (server-sent events), so it works against a remote server
//! as well as the local one.

use anyhow::{bail, Context};
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// Broadcast commands.
#[derive(Debug, Subcommand)]
pub enum BroadcastCommand {
    /// Show a broadcast's live progress (planned, queued, sent, failed, skipped by
    /// reason) with an ETA from the channels' rate limits, until it is over.
    Watch {
        /// The broadcast's id.
        id: i64,
        /// The server's address (default: `public_url`, else the `listen` address).
        #[arg(long)]
        url: Option<String>,
        /// An API key with `broadcasts:read`.
        #[arg(long, env = "VORONKA_API_KEY", hide_env_values = true)]
        api_key: String,
    },
}

/// Runs a broadcast command.
pub async fn run(cfg: &crate::config::Config, cmd: BroadcastCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BroadcastCommand::Watch { id, url, api_key } => {
            let base = url.unwrap_or_else(|| default_url(cfg));
            watch(base.trim_end_matches('/'), id, &api_key).await
        }
    }
}

/// Where the configured server answers.
fn default_url(cfg: &crate::config::Config) -> String {
    if let Some(p) = &cfg.public_url {
        return p.clone();
    }
    let addr = cfg.listen;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}

/// Follows the stream; reconnects when the connection drops mid-way.
async fn watch(base: &str, id: i64, key: &str) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40.cyan/blue}] {pos}/{len} {msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("broadcast {id}"));
    let url = format!("{base}/api/v1/broadcasts/{id}/events");
    let mut last: Option<Value> = None;
    for attempt in 0..5u32 {
        let response = http
            .get(&url)
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no details");
            bail!("GET {url} answered {status}: {message}");
        }
        let mut stream = response.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            // Events end with a blank line; `data:` lines carry the JSON.
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                            show(&bar, &v);
                            last = Some(v);
                        }
                    }
                }
            }
        }
        if last.as_ref().is_some_and(is_over) {
            break;
        }
        // The stream ended early (a proxy, a restart): come back.
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
    }
    bar.finish();
    let Some(last) = last else {
        bail!("the server sent no progress for broadcast {id}");
    };
    println!("{}", summary(&last));
    Ok(ExitCode::SUCCESS)
}

/// Whether the broadcast reached an end state.
fn is_over(v: &Value) -> bool {
    matches!(
        v.get("status").and_then(Value::as_str),
        Some("finished" | "cancelled")
    )
}

/// A number in `totals`, or `None` when the channel cannot report it.
fn total(v: &Value, key: &str) -> Option<u64> {
    match v.pointer(&format!("/totals/{key}"))? {
        Value::Number(n) => n.as_u64(),
        Value::Object(m) => Some(m.values().filter_map(Value::as_u64).sum()),
        _ => None,
    }
}

fn show(bar: &ProgressBar, v: &Value) {
    let n = |k: &str| total(v, k).unwrap_or(0);
    let skipped = n("skipped");
    // `planned` counts every recipient not skipped.
    let recipients = n("planned") + skipped;
    bar.set_length(recipients.max(1));
    bar.set_position(n("sent") + n("failed") + skipped);
    let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
    let eta = v
        .get("eta_seconds")
        .and_then(Value::as_f64)
        .map(|s| format!(" · ETA {}", human(s)))
        .unwrap_or_default();
    bar.set_message(format!(
        "{status} · queued {} · sent {} · failed {} · skipped {skipped}{eta}",
        n("queued"),
        n("sent"),
        n("failed"),
    ));
}

/// The closing lines: every counter, "not available" where the channel cannot tell.
fn summary(v: &Value) -> String {
    let mut lines = vec![format!(
        "status: {}",
        v.get("status").and_then(Value::as_str).unwrap_or("?")
    )];
    for key in [
        "planned",
        "queued",
        "sent",
        "delivered",
        "read",
        "clicked",
        "failed",
    ] {
        let shown = match v.pointer(&format!("/totals/{key}")) {
            Some(Value::Number(n)) => n.to_string(),
            _ => "not available".to_string(),
        };
        lines.push(format!("{key}: {shown}"));
    }
    if let Some(Value::Object(reasons)) = v.get("skipped") {
        for (reason, n) in reasons {
            lines.push(format!("skipped ({reason}): {n}"));
        }
    }
    lines.join("\n")
}

/// `95 s` → `1 min 35 s`.
fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_says_not_available_instead_of_zero() {
        let v = json!({"status": "finished", "totals": {"planned": 3, "queued": 0, "sent": 3,
            "delivered": null, "read": null, "clicked": 1, "failed": 0, "skipped": 2},
            "skipped": {"not_subscribed": 2}});
        let s = summary(&v);
        assert!(s.contains("read: not available"), "{s}");
        assert!(s.contains("skipped (not_subscribed): 2"), "{s}");
        assert!(is_over(&v));
        assert_eq!(total(&v, "skipped"), Some(2));
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(95.0), "1 min 35 s");
        assert_eq!(human(7300.0), "2 h 1 min");
    }
}
