//! Telegram channels: credentials, connecting a bot, and keeping updates flowing by
//! webhook (when the server has a public URL) or by long polling (behind NAT).

use super::Messaging;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use voronka_channels::telegram::{parse_update, TelegramAdapter, TelegramClient};
use voronka_core::crypto::{Sealed, SecretKey};
use voronka_core::ValidationError;
use voronka_store::{Channel, ChannelPatch, ChannelRuntime, StoreError};

/// What a Telegram channel keeps sealed: the bot token and the webhook secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The bot token from @BotFather.
    pub token: String,
    /// The secret Telegram echoes in `X-Telegram-Bot-Api-Secret-Token`.
    pub webhook_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    /// Opens a channel's sealed credentials.
    pub fn open(key: &SecretKey, channel: &Channel) -> Result<Credentials, StoreError> {
        let plain = key.open(&channel.credentials).map_err(|e| {
            StoreError::Invalid(ValidationError::new(
                "credentials",
                format!(
                    "cannot decrypt the credentials of channel {}: {e}",
                    channel.id
                ),
            ))
        })?;
        serde_json::from_slice(&plain).map_err(|e| {
            StoreError::Invalid(ValidationError::new(
                "credentials",
                format!(
                    "the credentials of channel {} are not a Telegram token: {e}",
                    channel.id
                ),
            ))
        })
    }

    /// Seals them for storage.
    pub fn seal(&self, key: &SecretKey) -> Sealed {
        key.seal(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Checks that `token` looks like a bot token, before asking Telegram.
pub fn token_shape_ok(token: &str) -> bool {
    match token.split_once(':') {
        Some((id, secret)) => {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && secret.len() >= 10
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        None => false,
    }
}

pub(crate) fn adapter(http: &reqwest::Client, api: &str, creds: &Credentials) -> TelegramAdapter {
    TelegramAdapter::new(
        TelegramClient::new(http.clone(), api, &creds.token),
        Some(creds.webhook_secret.clone()),
    )
}

/// The bot a token belongs to.
#[derive(Debug, Clone)]
pub struct BotInfo {
    /// Telegram's id of the bot.
    pub id: i64,
    /// `@username` without the at.
    pub username: String,
    /// Display name.
    pub first_name: String,
}

impl Messaging {
    /// Validates a bot token with `getMe` and returns sealed credentials (with a fresh
    /// webhook secret) and the runtime record to store with the new channel.
    pub async fn prepare_telegram(
        &self,
        token: &str,
    ) -> Result<(Sealed, ChannelRuntime, BotInfo), super::MessagingError> {
        let token = token.trim();
        if !token_shape_ok(token) {
            return Err(super::MessagingError::InvalidCredentials(
                "this is not a Telegram bot token (expected `123456789:AA…` from @BotFather)"
                    .into(),
            ));
        }
        let client = TelegramClient::new(self.http.clone(), &self.config.telegram_api_url, token);
        let me = client.get_me().await.map_err(|e| match e.classify() {
            voronka_channels::SendError::Unauthorized { .. }
            | voronka_channels::SendError::Refused { .. }
            | voronka_channels::SendError::Blocked { .. } => {
                super::MessagingError::InvalidCredentials(format!(
                    "Telegram refused the token: {e}"
                ))
            }
            other => super::MessagingError::Unreachable(format!(
                "cannot reach Telegram to check the token: {other}"
            )),
        })?;
        let info = BotInfo {
            id: me.id,
            username: me.username.clone().unwrap_or_default(),
            first_name: me.first_name.clone(),
        };
        let creds = Credentials {
            token: token.to_string(),
            webhook_secret: voronka_channels::telegram::webhook_secret(),
        };
        let runtime = ChannelRuntime {
            mode: String::new(),
            account_name: Some(info.username.clone()),
            account_id: Some(info.id.to_string()),
            last_error: None,
            last_error_at: None,
        };
        Ok((creds.seal(&self.secret), runtime, info))
    }
}

/// Registers the webhook or starts the poller for a Telegram channel.
pub(crate) async fn activate(m: Arc<Messaging>, channel: Channel) {
    let creds = match Credentials::open(m.secret_key(), &channel) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(channel = %channel.id, error = %e, "cannot start the Telegram channel");
            m.record_channel_error(&channel, &e.to_string()).await;
            return;
        }
    };
    let client = TelegramClient::new(m.http().clone(), &m.config().telegram_api_url, &creds.token);
    let mode = match &m.config().public_url {
        Some(base) => {
            let url = format!(
                "{}/hooks/telegram/{}",
                base.trim_end_matches('/'),
                channel.id
            );
            match client
                .set_webhook(&url, &creds.webhook_secret, &[], false)
                .await
            {
                Ok(()) => {
                    tracing::info!(channel = %channel.id, "Telegram webhook registered");
                    "webhook"
                }
                Err(e) => {
                    tracing::error!(channel = %channel.id, error = %e, "cannot register the Telegram webhook");
                    m.record_channel_error(&channel, &format!("setWebhook failed: {e}"))
                        .await;
                    return;
                }
            }
        }
        None => {
            let handle = tokio::spawn(poll(m.clone(), channel.clone(), client));
            m.add_poller(channel.id, handle);
            "polling"
        }
    };
    if channel.runtime.mode != mode || channel.runtime.last_error.is_some() {
        let mut runtime = channel.runtime.clone();
        runtime.mode = mode.to_string();
        runtime.last_error = None;
        runtime.last_error_at = None;
        let patch = ChannelPatch {
            runtime: Some(runtime),
            ..Default::default()
        };
        if let Err(e) = m
            .store()
            .update_channel(channel.workspace_id, channel.id, patch)
            .await
        {
            tracing::warn!(channel = %channel.id, error = %e, "cannot record the channel mode");
        }
        m.invalidate(channel.id);
    }
}

/// Long-polls `getUpdates`, storing each batch before confirming it: the next call's
/// offset is what tells Telegram the updates are safe, so a crash before storing only
/// means Telegram hands them out again (and the store skips any it already has).
async fn poll(m: Arc<Messaging>, channel: Channel, client: TelegramClient) {
    // A webhook left behind by another install would make every getUpdates a 409.
    if let Err(e) = client.delete_webhook(false).await {
        tracing::warn!(channel = %channel.id, error = %e, "deleteWebhook before polling failed");
    }
    let mut offset: Option<i64> = None;
    let mut backoff = Duration::from_millis(500);
    // What was last written to the channel's runtime: a failing poll retries every few
    // seconds, and the same error need not be stored each time.
    let mut recorded: Option<String> = channel.runtime.last_error.clone();
    let timeout = m.config().poll_timeout.as_secs().min(50) as u32;
    loop {
        if m.shutdown_token().is_cancelled() {
            return;
        }
        let got = tokio::select! {
            r = client.get_updates(offset, timeout, 100) => r,
            _ = m.shutdown_token().cancelled() => return,
        };
        match got {
            Ok(updates) => {
                backoff = Duration::from_millis(500);
                if updates.is_empty() {
                    continue;
                }
                let mut events = Vec::new();
                let mut last = None;
                for (id, raw) in &updates {
                    last = Some(*id);
                    match parse_update(raw) {
                        Ok(mut e) => events.append(&mut e),
                        Err(e) => {
                            tracing::warn!(channel = %channel.id, update_id = id, error = %e, "skipping an update Telegram sent that cannot be read")
                        }
                    }
                }
                match m.store_events(&channel, events).await {
                    Ok(_) => offset = last.map(|l| l + 1),
                    Err(e) => {
                        // Not confirming: Telegram hands the batch out again.
                        tracing::error!(channel = %channel.id, error = %e, "cannot store polled updates");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel = %channel.id, error = %e, "getUpdates failed");
                let error = format!("getUpdates failed: {e}");
                if recorded.as_deref() != Some(error.as_str()) {
                    m.record_channel_error(&channel, &error).await;
                    recorded = Some(error);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = m.shutdown_token().cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        assert!(token_shape_ok("123456:ABCdefGHIjkl-_x"));
        assert!(!token_shape_ok("123456"));
        assert!(!token_shape_ok("abc:ABCdefGHIjkl"));
        assert!(!token_shape_ok("123:short"));
        assert!(!token_shape_ok("123:has space in it"));
    }
}
