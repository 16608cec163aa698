//! Pushing updates to a bot's webhook.
//!
//! Telegram delivers a bot's updates one at a time and in order, and re-POSTs an update
//! the webhook did not accept with a 2xx; the receiving side therefore sees the same
//! `update_id` more than once and must deduplicate. Each bot gets one worker task fed by a
//! channel, which gives exactly that order; different bots are delivered in parallel.
//!
//! If the webhook is removed while updates are still waiting, they go back to the
//! `getUpdates` queue, as Telegram keeps them; `drop_pending_updates` discards them instead.
//!
//! A webhook answer may itself be a Bot API call (`{"method": "sendMessage", …}`); Telegram
//! executes it without returning the result, and so does the fake.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::state::WebhookConf;
use super::{unix_now, Inner};

/// One update to deliver.
pub(crate) struct Job {
    pub update_id: i64,
    pub update: Value,
    /// The bot's drop epoch when queued; a newer epoch means the update was dropped.
    pub epoch: u64,
    /// Told the final outcome, when someone waits for it.
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// Final result of delivering one update.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub status: Option<u16>,
    pub attempts: u32,
    pub error: Option<String>,
}

/// Delivers one bot's updates, in order, until the fake shuts down.
pub(crate) async fn worker(inner: Arc<Inner>, bot_id: i64, mut jobs: mpsc::UnboundedReceiver<Job>) {
    loop {
        let job = tokio::select! {
            () = inner.cancel.cancelled() => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let outcome = deliver(&inner, bot_id, &job).await;
        if let Some(bot) = inner.lock().bots.get_mut(&bot_id) {
            bot.webhook_pending = bot.webhook_pending.saturating_sub(1);
        }
        if let Some(reply) = job.reply {
            // The waiter may have been dropped (test timed out); nothing to tell then.
            let _ = reply.send(outcome);
        }
    }
}

async fn deliver(inner: &Inner, bot_id: i64, job: &Job) -> Outcome {
    let delays = &inner.cfg.webhook_retry_delays;
    let mut outcome = Outcome::default();
    for attempt in 0..=delays.len() {
        let (conf, token) = {
            let mut st = inner.lock();
            let Some(bot) = st.bots.get_mut(&bot_id) else {
                return outcome;
            };
            if bot.drop_epoch != job.epoch {
                outcome.error = Some("update dropped by drop_pending_updates".into());
                return outcome;
            }
            let Some(conf) = bot.webhook.clone() else {
                bot.queue.insert(job.update_id, job.update.clone());
                bot.poll_notify.notify_waiters();
                return outcome;
            };
            (conf, bot.token.clone())
        };
        outcome.attempts += 1;
        let result = post(inner, &conf, &job.update).await;
        let error = {
            let mut st = inner.lock();
            st.stats.webhook_posts += 1;
            let error = match &result {
                Ok((status, _)) if (200..300).contains(status) => None,
                Ok((status, _)) => Some(format!(
                    "Wrong response from the webhook: {status} {}",
                    reason(*status)
                )),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = &error {
                st.stats.webhook_failures += 1;
                if let Some(bot) = st.bots.get_mut(&bot_id) {
                    bot.last_error = Some((unix_now(), e.clone()));
                }
            }
            error
        };
        outcome.status = result.as_ref().ok().map(|(s, _)| *s);
        outcome.error = error;
        match result {
            Ok((_, reply)) if outcome.error.is_none() => {
                if let Some((method, params)) = reply {
                    inner.call(&token, &method, Ok(params)).await;
                }
                return outcome;
            }
            _ => {}
        }
        if let Some(delay) = delays.get(attempt) {
            tokio::select! {
                () = inner.cancel.cancelled() => return outcome,
                () = tokio::time::sleep(*delay) => {}
            }
        }
    }
    tracing::debug!(
        bot_id,
        update_id = job.update_id,
        "webhook delivery given up"
    );
    outcome
}

/// A Bot API call carried in a webhook answer.
type ReplyCall = (String, Map<String, Value>);

async fn post(
    inner: &Inner,
    conf: &WebhookConf,
    update: &Value,
) -> Result<(u16, Option<ReplyCall>), String> {
    let mut request = inner.http.post(&conf.url).json(update);
    if let Some(secret) = &conf.secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    let response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let reply = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut call)) => match call.remove("method") {
            Some(Value::String(method)) => Some((method, call)),
            _ => None,
        },
        _ => None,
    };
    Ok((status, reply))
}

/// Telegram's wording for transport failures in `last_error_message`.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "Read timeout expired".into()
    } else if e.is_connect() {
        "Connection refused".into()
    } else {
        format!("Connection error: {e}")
    }
}

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}
