//! What simulated users do, and how it reaches the bot.
//!
//! Each action updates the chat (message ids, started/blocked flags) and produces the
//! `Update` Telegram would produce, under the state lock so update ids are handed out in
//! delivery order. Waiting for the webhook happens after the lock is released.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::markup;
use super::state::{chat_instance, BotState, CallbackState, ChatState, Routed, State, UserInfo};
use super::webhook;
use super::{unix_now, Delivery, FakeError, Inner, SentMessage};

impl Inner {
    pub(crate) fn add_bot(&self, token: &str, username: &str) -> Result<i64, FakeError> {
        let id = parse_token(token).ok_or_else(|| FakeError::InvalidToken(token.to_owned()))?;
        let mut st = self.lock();
        if let Some(bot) = st.bots.get_mut(&id) {
            let old = std::mem::replace(&mut bot.token, token.to_owned());
            bot.username = username.to_owned();
            st.tokens.remove(&old);
            st.tokens.insert(token.to_owned(), id);
            return Ok(id);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        st.bots.insert(id, BotState::new(id, token, username, tx));
        st.tokens.insert(token.to_owned(), id);
        drop(st);
        if let Some(me) = self.me.upgrade() {
            self.runtime.spawn(webhook::worker(me, id, rx));
        }
        Ok(id)
    }

    pub(crate) fn add_user(&self, user: UserInfo) {
        self.lock().users.insert(user.id, user);
    }

    pub(crate) fn open_chat(&self, bot_id: i64, user_id: i64) -> Result<(), FakeError> {
        let mut st = self.lock();
        if !st.users.contains_key(&user_id) {
            return Err(FakeError::UnknownUser(user_id));
        }
        let bot = st.bots.get_mut(&bot_id).ok_or(FakeError::UnknownBot)?;
        bot.chats
            .entry(user_id)
            .or_insert_with(ChatState::new)
            .started = true;
        Ok(())
    }

    /// Runs `build` on the bot and user under the lock, emits the update it returns, and
    /// waits for its delivery.
    async fn act(
        &self,
        bot_id: i64,
        user_id: i64,
        build: impl FnOnce(&mut BotState, &UserInfo) -> Result<(&'static str, Value), FakeError>,
    ) -> Result<Delivery, FakeError> {
        let routed = {
            let mut st = self.lock();
            let State {
                bots, users, stats, ..
            } = &mut *st;
            let bot = bots.get_mut(&bot_id).ok_or(FakeError::UnknownBot)?;
            let user = users.get(&user_id).ok_or(FakeError::UnknownUser(user_id))?;
            let (kind, body) = build(bot, user)?;
            stats.updates += 1;
            bot.emit(kind, body)
        };
        finish(routed).await
    }

    pub(crate) async fn send_text(
        &self,
        bot_id: i64,
        user_id: i64,
        text: &str,
    ) -> Result<Delivery, FakeError> {
        self.act(bot_id, user_id, |bot, user| {
            let mut message = user_message(bot, user)?;
            message["text"] = json!(text);
            let entities = command_entities(text);
            if !entities.is_empty() {
                message["entities"] = Value::Array(entities);
            }
            Ok(("message", message))
        })
        .await
    }

    pub(crate) async fn share_contact(
        &self,
        bot_id: i64,
        user_id: i64,
        phone: &str,
    ) -> Result<Delivery, FakeError> {
        self.act(bot_id, user_id, |bot, user| {
            let mut message = user_message(bot, user)?;
            let mut contact = json!({
                "phone_number": phone,
                "first_name": user.first_name,
                "user_id": user.id,
            });
            if let Some(last) = &user.last_name {
                contact["last_name"] = json!(last);
            }
            message["contact"] = contact;
            Ok(("message", message))
        })
        .await
    }

    pub(crate) async fn press_button(
        &self,
        bot_id: i64,
        user_id: i64,
        message_id: i64,
        data: &str,
    ) -> Result<Delivery, FakeError> {
        self.act(bot_id, user_id, |bot, user| {
            let from = bot.user_json();
            let chat = bot
                .chats
                .get_mut(&user.id)
                .ok_or(FakeError::MessageNotFound {
                    chat_id: user.id,
                    message_id,
                })?;
            if chat.blocked {
                return Err(FakeError::Blocked(user.id));
            }
            let stored = chat
                .message_mut(message_id)
                .ok_or(FakeError::MessageNotFound {
                    chat_id: user.id,
                    message_id,
                })?;
            if !stored
                .sent
                .reply_markup
                .as_ref()
                .is_some_and(|m| markup::has_callback(m, data))
            {
                return Err(FakeError::NoSuchButton {
                    message_id,
                    data: data.to_owned(),
                });
            }
            let message = stored.to_json(&from, user);
            let id = bot.callback_id();
            bot.callbacks.insert(
                id.clone(),
                CallbackState {
                    created: std::time::Instant::now(),
                    answered: false,
                },
            );
            Ok((
                "callback_query",
                json!({
                    "id": id,
                    "from": user.user_json(),
                    "message": message,
                    "chat_instance": chat_instance(bot.id, user.id),
                    "data": data,
                }),
            ))
        })
        .await
    }

    pub(crate) async fn set_blocked(
        &self,
        bot_id: i64,
        user_id: i64,
        blocked: bool,
    ) -> Result<Delivery, FakeError> {
        self.act(bot_id, user_id, |bot, user| {
            let me = bot.user_json();
            let chat = bot.chats.entry(user.id).or_insert_with(ChatState::new);
            chat.blocked = blocked;
            if !blocked {
                // Unblocking goes through the "Restart" button, which starts the bot again.
                chat.started = true;
            }
            let member = json!({"user": me, "status": "member"});
            let kicked = json!({"user": me, "status": "kicked", "until_date": 0});
            let (old, new) = if blocked {
                (member, kicked)
            } else {
                (kicked, member)
            };
            Ok((
                "my_chat_member",
                json!({
                    "chat": user.chat_json(),
                    "from": user.user_json(),
                    "date": unix_now(),
                    "old_chat_member": old,
                    "new_chat_member": new,
                }),
            ))
        })
        .await
    }

    pub(crate) async fn redeliver(
        &self,
        bot_id: i64,
        update_id: i64,
    ) -> Result<Delivery, FakeError> {
        let routed = {
            let mut st = self.lock();
            let bot = st.bots.get_mut(&bot_id).ok_or(FakeError::UnknownBot)?;
            let update = bot
                .history
                .get(&update_id)
                .cloned()
                .ok_or(FakeError::UnknownUpdate(update_id))?;
            bot.route(update_id, update)
        };
        finish(routed).await
    }

    pub(crate) fn messages(&self, bot_id: i64, chat_id: i64) -> Vec<SentMessage> {
        self.lock()
            .bots
            .get(&bot_id)
            .and_then(|b| b.chats.get(&chat_id))
            .map(|c| c.messages.iter().map(|m| m.sent.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) async fn wait_for_messages(
        &self,
        bot_id: i64,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<SentMessage>, FakeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a message stored in between still wakes us.
            let notified = self.messages_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages(bot_id, chat_id);
            if messages.len() >= n {
                return Ok(messages);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(FakeError::Timeout { wanted: n, got: messages.len() });
                }
                () = self.cancel.cancelled() => return Err(FakeError::ShutDown),
            }
        }
    }
}

/// A message from the user, with the next message id in the chat; opens the chat.
fn user_message(bot: &mut BotState, user: &UserInfo) -> Result<Value, FakeError> {
    let chat = bot.chats.entry(user.id).or_insert_with(ChatState::new);
    if chat.blocked {
        return Err(FakeError::Blocked(user.id));
    }
    chat.started = true;
    Ok(json!({
        "message_id": chat.next_message_id(),
        "from": user.user_json(),
        "chat": user.chat_json(),
        "date": unix_now(),
    }))
}

async fn finish(routed: Routed) -> Result<Delivery, FakeError> {
    match routed {
        Routed::Queued(update_id) | Routed::Filtered(update_id) => Ok(Delivery {
            update_id,
            webhook_status: None,
            webhook_attempts: 0,
            webhook_error: None,
        }),
        Routed::Webhook(update_id, outcome) => {
            let outcome = outcome.await.map_err(|_| FakeError::ShutDown)?;
            Ok(Delivery {
                update_id,
                webhook_status: outcome.status,
                webhook_attempts: outcome.attempts,
                webhook_error: outcome.error,
            })
        }
        Routed::Closed => Err(FakeError::ShutDown),
    }
}

/// The bot id of a token `<digits>:<secret>`.
fn parse_token(token: &str) -> Option<i64> {
    let (id, secret) = token.split_once(':')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || secret.is_empty() {
        return None;
    }
    id.parse().ok().filter(|&id: &i64| id > 0)
}

fn is_command_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `bot_command` entities the way Telegram marks them: `/word` (optionally `@botname`) at
/// the start of the text or after whitespace; offsets in UTF-16 units.
fn command_entities(text: &str) -> Vec<Value> {
    let chars: Vec<char> = text.chars().collect();
    let mut entities = Vec::new();
    let mut pos16 = 0;
    let mut after_space = true;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && after_space {
            let mut end = i + 1;
            while end < chars.len() && is_command_char(chars[end]) {
                end += 1;
            }
            if end > i + 1 {
                if end < chars.len() && chars[end] == '@' {
                    let mut at_end = end + 1;
                    while at_end < chars.len() && is_command_char(chars[at_end]) {
                        at_end += 1;
                    }
                    if at_end > end + 1 {
                        end = at_end;
                    }
                }
                // Every character of a command is ASCII: one UTF-16 unit each.
                let length = end - i;
                entities.push(json!({"offset": pos16, "length": length, "type": "bot_command"}));
                pos16 += length;
                i = end;
                after_space = false;
                continue;
            }
        }
        after_space = c.is_whitespace();
        pos16 += c.len_utf16();
        i += 1;
    }
    entities
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(parse_token("123456:ABC-xyz"), Some(123_456));
        assert_eq!(parse_token("123456"), None);
        assert_eq!(parse_token("abc:def"), None);
        assert_eq!(parse_token("12:"), None);
        assert_eq!(parse_token("0:x"), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            command_entities("/start abc"),
            vec![json!({"offset":0,"length":6,"type":"bot_command"})]
        );
        assert_eq!(
            command_entities("привет /help@my_bot ok"),
            vec![json!({"offset":7,"length":12,"type":"bot_command"})]
        );
        assert!(command_entities("a/b / http://x").is_empty());
    }
}
