//! A small Bot API client: JSON POSTs to `{api_base}/bot{token}/{method}`.
//!
//! The token is a bearer credential and sits in the URL path, so nothing here ever
//! formats the URL: reqwest errors are stripped of it and `Debug` hides the token.

use super::types::{ApiResponse, User};
use crate::SendError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// How long an ordinary call may take before it counts as a transient failure.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long poll gets over its own `timeout` before we give up on it.
const POLL_GRACE: Duration = Duration::from_secs(15);

/// A failed Bot API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Telegram answered with an error envelope (or an error status).
    #[error("Telegram error {code}: {description}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// `error_code`, falling back to the HTTP status.
        code: i64,
        /// `description` from the envelope.
        description: String,
        /// `parameters.retry_after`, if given.
        retry_after: Option<u64>,
        /// `parameters.migrate_to_chat_id`, if given.
        migrate_to_chat_id: Option<i64>,
    },
    /// The request did not complete (connection refused, timeout…).
    #[error("request to Telegram failed: {0}")]
    Transport(String),
    /// Telegram answered something that is not the expected envelope or result.
    #[error("undecodable Telegram answer (HTTP {status}): {reason}")]
    Decode {
        /// The HTTP status.
        status: u16,
        /// What did not fit.
        reason: String,
    },
    /// The call was refused before sending (bad method name or parameters).
    #[error("invalid Telegram call: {0}")]
    Invalid(String),
}

impl ApiError {
    /// What the sender should do about this failure.
    pub fn classify(&self) -> SendError {
        match self {
            ApiError::Api {
                status,
                code,
                description,
                retry_after,
                ..
            } => {
                let reason = description.clone();
                if *status == 429 || *code == 429 {
                    SendError::RateLimited {
                        retry_after: Duration::from_secs(retry_after.unwrap_or(1).max(1)),
                    }
                } else if *code == 403 || *status == 403 {
                    SendError::Blocked { reason }
                } else if matches!(*code, 401 | 404) || matches!(*status, 401 | 404) {
                    // Every call goes to /bot{token}/…, and Telegram answers 404 for a
                    // token it does not know, so 404 means the token, not the message.
                    SendError::Unauthorized { reason }
                } else if (400..500).contains(code) || (400..500).contains(status) {
                    SendError::Refused { reason }
                } else {
                    SendError::Transient {
                        reason: format!("Telegram error {code}: {reason}"),
                    }
                }
            }
            ApiError::Decode { status: 429, .. } => SendError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            ApiError::Transport(_) | ApiError::Decode { .. } => SendError::Transient {
                reason: self.to_string(),
            },
            ApiError::Invalid(reason) => SendError::Refused {
                reason: reason.clone(),
            },
        }
    }
}

impl From<ApiError> for SendError {
    fn from(e: ApiError) -> Self {
        e.classify()
    }
}

/// A Bot API client for one bot.
#[derive(Clone)]
pub struct TelegramClient {
    http: reqwest::Client,
    api_base: String,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for TelegramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramClient")
            .field("api_base", &self.api_base)
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct MessageRef {
    message_id: i64,
}

impl TelegramClient {
    /// A client for the bot with `token`, talking to `api_base` ("https://api.telegram.org"
    /// in production, a fake server's URL in tests).
    pub fn new(http: reqwest::Client, api_base: &str, token: &str) -> TelegramClient {
        TelegramClient {
            http,
            api_base: api_base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long an ordinary call may take (long polls get their own timeout plus a
    /// margin). Default 30 s.
    pub fn with_timeout(mut self, timeout: Duration) -> TelegramClient {
        self.timeout = timeout;
        self
    }

    /// Calls `method` with JSON `params` and decodes its `result`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &Value,
    ) -> Result<T, ApiError> {
        self.call_with_timeout(method, params, self.timeout).await
    }

    async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        // The method becomes a path segment; anything but a plain name could redirect
        // the request elsewhere on the server.
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ApiError::Invalid(format!("bad method name `{method}`")));
        }
        let url = format!("{}/bot{}/{}", self.api_base, self.token, method);
        let response = self
            .http
            .post(url)
            .json(params)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        let envelope: ApiResponse<Value> =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
                status,
                reason: format!("not a Bot API envelope: {e}"),
            })?;
        if !envelope.ok || !(200..300).contains(&status) {
            let code = envelope.error_code.unwrap_or(i64::from(status));
            let parameters = envelope.parameters.unwrap_or_default();
            tracing::debug!(method, status, code, "Telegram call failed");
            return Err(ApiError::Api {
                status,
                code,
                description: envelope
                    .description
                    .unwrap_or_else(|| format!("HTTP {status} without description")),
                retry_after: parameters.retry_after,
                migrate_to_chat_id: parameters.migrate_to_chat_id,
            });
        }
        let result = envelope.result.ok_or_else(|| ApiError::Decode {
            status,
            reason: "`ok` without `result`".into(),
        })?;
        serde_path_to_error::deserialize(result).map_err(|e| ApiError::Decode {
            status,
            reason: format!(
                "unexpected `result` of {method} at `{}`: {}",
                e.path(),
                e.inner()
            ),
        })
    }

    /// Sends a `send*` method and returns the new message's id.
    pub async fn send_message_call(&self, method: &str, params: &Value) -> Result<i64, ApiError> {
        let m: MessageRef = self.call(method, params).await?;
        Ok(m.message_id)
    }

    /// The bot itself (checks the token).
    pub async fn get_me(&self) -> Result<User, ApiError> {
        self.call("getMe", &json!({})).await
    }

    /// Points Telegram at our webhook `url`, signed with `secret_token`.
    pub async fn set_webhook(
        &self,
        url: &str,
        secret_token: &str,
        allowed_updates: &[&str],
        drop_pending: bool,
    ) -> Result<(), ApiError> {
        let _: bool = self
            .call(
                "setWebhook",
                &json!({
                    "url": url,
                    "secret_token": secret_token,
                    "allowed_updates": allowed_updates,
                    "drop_pending_updates": drop_pending,
                }),
            )
            .await?;
        Ok(())
    }

    /// Removes the webhook (needed before polling with [`Self::get_updates`]).
    pub async fn delete_webhook(&self, drop_pending: bool) -> Result<(), ApiError> {
        let _: bool = self
            .call(
                "deleteWebhook",
                &json!({ "drop_pending_updates": drop_pending }),
            )
            .await?;
        Ok(())
    }

    /// The webhook's state as Telegram reports it (url, pending count, last error…).
    pub async fn get_webhook_info(&self) -> Result<Value, ApiError> {
        self.call("getWebhookInfo", &json!({})).await
    }

    /// Long-polls for updates after `offset`, waiting up to `timeout_secs`; returns each
    /// update's id with its raw JSON, so update kinds we don't know never fail the poll.
    pub async fn get_updates(
        &self,
        offset: Option<i64>,
        timeout_secs: u32,
        limit: u32,
    ) -> Result<Vec<(i64, Value)>, ApiError> {
        let mut params = json!({ "timeout": timeout_secs, "limit": limit.clamp(1, 100) });
        if let Some(o) = offset {
            params["offset"] = json!(o);
        }
        let wait = Duration::from_secs(u64::from(timeout_secs)) + POLL_GRACE;
        let updates: Vec<Value> = self
            .call_with_timeout("getUpdates", &params, wait.max(self.timeout))
            .await?;
        updates
            .into_iter()
            .enumerate()
            .map(|(i, u)| match u.get("update_id").and_then(Value::as_i64) {
                Some(id) => Ok((id, u)),
                None => Err(ApiError::Decode {
                    status: 200,
                    reason: format!("update {i} has no integer `update_id`"),
                }),
            })
            .collect()
    }

    /// Answers a button press (stops the client's spinner), optionally with a toast.
    pub async fn answer_callback_query(
        &self,
        callback_query_id: &str,
        text: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut params = json!({ "callback_query_id": callback_query_id });
        if let Some(t) = text {
            // Telegram refuses toasts over 200 characters; a cut toast beats an error.
            params["text"] = json!(crate::render::truncate_label(t, 200));
        }
        let _: bool = self.call("answerCallbackQuery", &params).await?;
        Ok(())
    }

    /// Deletes one of the bot's messages.
    pub async fn delete_message(&self, chat_id: i64, message_id: i64) -> Result<(), ApiError> {
        let _: bool = self
            .call(
                "deleteMessage",
                &json!({ "chat_id": chat_id, "message_id": message_id }),
            )
            .await?;
        Ok(())
    }
}

/// A transport failure, described without the URL (it contains the token).
fn transport(e: reqwest::Error) -> ApiError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport(format!("{kind}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: i64, retry_after: Option<u64>) -> ApiError {
        ApiError::Api {
            status,
            code,
            description: "d".into(),
            retry_after,
            migrate_to_chat_id: None,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(
            api(429, 429, Some(3)).classify(),
            SendError::RateLimited {
                retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            api(200, 429, None).classify(),
            SendError::RateLimited {
                retry_after: Duration::from_secs(1)
            }
        );
        assert!(matches!(
            api(403, 403, None).classify(),
            SendError::Blocked { .. }
        ));
        assert!(matches!(
            api(401, 401, None).classify(),
            SendError::Unauthorized { .. }
        ));
        assert!(matches!(
            api(404, 404, None).classify(),
            SendError::Unauthorized { .. }
        ));
        assert!(matches!(
            api(400, 400, None).classify(),
            SendError::Refused { .. }
        ));
        assert!(matches!(
            api(409, 409, None).classify(),
            SendError::Refused { .. }
        ));
        assert!(matches!(
            api(502, 502, None).classify(),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            ApiError::Decode {
                status: 502,
                reason: "html".into()
            }
            .classify(),
            SendError::Transient { .. }
        ));
    }

    #[test]
    fn debug_hides_the_token() {
        let c = TelegramClient::new(reqwest::Client::new(), "http://x/", "123:SECRET");
        let d = format!("{c:?}");
        assert!(!d.contains("SECRET"), "{d}");
        assert_eq!(c.api_base, "http://x");
    }
}
