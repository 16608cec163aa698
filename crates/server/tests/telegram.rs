//! End to end against the fake Telegram Bot API: the real server (webhook routes, REST
//! API), the real messaging runtime (pipeline, outbox workers, poller) and the real
//! Telegram adapter over HTTP, in webhook mode and in polling mode, on SQLite and on
//! PostgreSQL.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use voronka_core::apikey;
use voronka_core::crypto::SecretKey;
use voronka_core::role::Scope;
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::{DynStore, NewApiKey};

const TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const BOT: &str = "voronka_test_bot";
const ANNA: i64 = 501;
const BORIS: i64 = 502;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Webhook,
    Polling,
}

struct App {
    base: String,
    http: reqwest::Client,
    store: DynStore,
    key: String,
    ws: WorkspaceId,
    fake: FakeTelegram,
    secret: SecretKey,
    messaging: Arc<Messaging>,
    _db: TestStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.messaging.stop();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(backend: Backend, mode: Mode) -> Option<App> {
    let db = fresh_store(backend).await?;
    let store = db.store.clone();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    fake.add_bot(TOKEN, BOT);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let base = format!("http://{addr}");
    let config = MessagingConfig {
        telegram_api_url: fake.api_url(),
        public_url: (mode == Mode::Webhook).then(|| base.clone()),
        poll_timeout: Duration::from_secs(1),
        outbox_lease: Duration::from_secs(5),
        ..Default::default()
    };
    let secret = SecretKey::generate();
    let messaging = Messaging::new(store.clone(), secret.clone(), config);
    messaging.start().await.expect("start messaging");
    let state = AppState::with_messaging(messaging.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(voronka_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let ws = store.create_workspace("Shop").await.expect("workspace").id;
    let g = apikey::generate();
    store
        .create_api_key(
            ws,
            NewApiKey {
                name: "test".into(),
                prefix: g.prefix,
                secret_hash: g.hash,
                scopes: Scope::ALL.to_vec(),
            },
        )
        .await
        .expect("key");
    Some(App {
        base,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        store,
        key: g.token,
        ws,
        fake,
        secret,
        messaging,
        _db: db,
        stop: Some(stop),
    })
}

impl App {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn connect_bot(&self) -> ChannelId {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/channels",
                Some(json!({
                    "kind": "telegram",
                    "name": "Shop bot",
                    "credentials": {"token": TOKEN},
                    "settings": {
                        "welcome": {
                            "text": "Welcome to <Shop> & co!",
                            "buttons": [
                                {"type": "postback", "label": "Show offers", "payload": "OFFERS"},
                                {"type": "url", "label": "Site", "url": "https://example.com/"}
                            ]
                        },
                        "auto_reply": {"text": "We will answer soon."}
                    }
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["runtime"]["account_name"], BOT);
        ChannelId(body["id"].as_i64().expect("id"))
    }

    async fn contact_of(&self, channel: ChannelId, user: i64) -> Option<ContactId> {
        self.store
            .find_identity(self.ws, channel, &user.to_string())
            .await
            .expect("find identity")
            .map(|i| i.contact_id)
    }

    async fn contact(&self, id: ContactId) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/contacts/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn events(&self, id: ContactId) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/contacts/{id}/events?limit=200"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    async fn state_of(&self, id: ContactId) -> String {
        self.contact(id).await["identities"][0]["subscription"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn send(&self, id: ContactId, channel: ChannelId, text: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/contacts/{id}/messages"),
            Some(json!({"channel_id": channel.0, "message": {"text": text}})),
        )
        .await
    }
}

/// Polls `check` until it returns `Some`, for up to 15 seconds.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn the_whole_journey(backend: Backend, mode: Mode) {
    let Some(app) = start(backend, mode).await else {
        return;
    };
    // A bad token is refused before anything is stored.
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/channels",
            Some(json!({"kind": "telegram", "name": "x", "credentials": {"token": "999:WRONGtokenWRONG"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");

    let channel = app.connect_bot().await;
    let expected_mode = match mode {
        Mode::Webhook => "webhook",
        Mode::Polling => "polling",
    };
    let ch = app
        .store
        .get_channel(app.ws, channel)
        .await
        .expect("channel");
    assert_eq!(ch.runtime.mode, expected_mode);
    if mode == Mode::Webhook {
        let hook = app.fake.webhook(TOKEN).expect("webhook set");
        assert_eq!(hook.url, format!("{}/hooks/telegram/{channel}", app.base));
        assert!(hook.secret_token.is_some());
    }

    // /start with a ref: a subscribed contact with proof, and the welcome with buttons.
    app.fake
        .add_user(ANNA, "Anna", Some("Petrova"), Some("anna_p"), Some("ru"));
    let start = app
        .fake
        .send_text(TOKEN, ANNA, "/start ref_summer")
        .await
        .expect("start");
    if mode == Mode::Webhook {
        assert_eq!(start.webhook_status, Some(200));
    }
    let welcome = app
        .fake
        .wait_for_messages(TOKEN, ANNA, 1, Duration::from_secs(15))
        .await
        .expect("welcome arrives");
    let w = &welcome[0];
    assert_eq!(w.text.as_deref(), Some("Welcome to <Shop> & co!"));
    assert_eq!(w.parse_mode.as_deref(), Some("HTML"));
    let markup = w.reply_markup.clone().expect("buttons");
    let rows = markup["inline_keyboard"]
        .as_array()
        .expect("inline keyboard");
    let buttons: Vec<&Value> = rows
        .iter()
        .flat_map(|r| r.as_array().into_iter().flatten())
        .collect();
    assert_eq!(buttons[0]["text"], "Show offers");
    let data = buttons[0]["callback_data"]
        .as_str()
        .expect("callback data")
        .to_string();
    assert_eq!(buttons[1]["url"], "https://example.com/");

    let anna = app.contact_of(channel, ANNA).await.expect("contact exists");
    let c = app.contact(anna).await;
    assert_eq!(c["source"], "ref_summer");
    assert_eq!(c["first_name"], "Anna");
    let sub = &c["identities"][0]["subscription"];
    assert_eq!(sub["state"], "subscribed");
    assert_eq!(sub["proof"]["source"], "telegram_start:ref_summer");
    assert_eq!(sub["proof"]["text_shown"], "/start ref_summer");

    // The same update delivered again (a provider retry) is processed once.
    if mode == Mode::Webhook {
        let again = app
            .fake
            .redeliver(TOKEN, start.update_id)
            .await
            .expect("redeliver");
        assert_eq!(again.webhook_status, Some(200));
    }

    // Pressing the button reaches the pipeline with its payload; the press is answered.
    app.fake
        .press_button(TOKEN, ANNA, w.message_id, &data)
        .await
        .expect("press");
    eventually("the press to be answered", || async {
        (!app.fake.callback_answers(TOKEN).is_empty()).then_some(())
    })
    .await;
    eventually("the press in the timeline", || async {
        let events = app.events(anna).await;
        let found = events
            .iter()
            .any(|e| e["kind"] == "button_pressed" && e["data"]["payload"] == "OFFERS");
        found.then_some(())
    })
    .await;

    // A plain message gets the auto-reply.
    app.fake
        .send_text(TOKEN, ANNA, "hello?")
        .await
        .expect("text");
    let msgs = app
        .fake
        .wait_for_messages(TOKEN, ANNA, 2, Duration::from_secs(15))
        .await
        .expect("auto reply");
    assert_eq!(msgs[1].text.as_deref(), Some("We will answer soon."));

    // "стоп" unsubscribes and confirms; marketing through the API is then refused.
    app.fake
        .send_text(TOKEN, ANNA, "Стоп!")
        .await
        .expect("stop");
    let msgs = app
        .fake
        .wait_for_messages(TOKEN, ANNA, 3, Duration::from_secs(15))
        .await
        .expect("stop confirmation");
    assert!(msgs[2]
        .text
        .as_deref()
        .unwrap_or_default()
        .contains("unsubscribed"));
    assert_eq!(app.state_of(anna).await, "unsubscribed");
    let (status, body) = app.send(anna, channel, "Sale!").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_subscribed");

    // СТАРТ resubscribes; then the API can send, and the message arrives.
    app.fake
        .send_text(TOKEN, ANNA, "СТАРТ")
        .await
        .expect("start word");
    app.fake
        .wait_for_messages(TOKEN, ANNA, 4, Duration::from_secs(15))
        .await
        .expect("start confirmation");
    assert_eq!(app.state_of(anna).await, "subscribed");
    let (status, body) = app
        .send(anna, channel, "Sale: -20% <today> & tomorrow")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let outbox = body["id"].as_i64().expect("outbox id");
    let msgs = app
        .fake
        .wait_for_messages(TOKEN, ANNA, 5, Duration::from_secs(15))
        .await
        .expect("API message arrives");
    assert_eq!(
        msgs[4].text.as_deref(),
        Some("Sale: -20% <today> & tomorrow")
    );
    eventually("the message to be marked sent", || async {
        let (_, m) = app
            .call(reqwest::Method::GET, &format!("/outbox/{outbox}"), None)
            .await;
        (m["state"] == "sent").then_some(())
    })
    .await;

    // Blocking the bot marks the contact blocked; sending is refused.
    app.fake.block(TOKEN, ANNA).await.expect("block");
    eventually("the contact to be blocked", || async {
        (app.state_of(anna).await == "blocked").then_some(())
    })
    .await;
    let (status, body) = app.send(anna, channel, "Hello?").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "blocked");

    // A webhook with a wrong secret gets 401 and changes nothing.
    let before = app.events(anna).await.len();
    let forged = json!({"update_id": 999_999_999, "message": {"message_id": 77, "date": 1_700_000_000,
        "chat": {"id": BORIS, "type": "private", "first_name": "Boris"},
        "from": {"id": BORIS, "is_bot": false, "first_name": "Boris"}, "text": "/start evil"}});
    for secret in [Some("wrong-secret"), None] {
        let mut req = app
            .http
            .post(format!("{}/hooks/telegram/{channel}", app.base))
            .json(&forged);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        let res = req.send().await.expect("forged hook");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "bad_signature");
    }
    // With the right secret, a body that is not an update is a 400 naming the problem.
    let ch = app
        .store
        .get_channel(app.ws, channel)
        .await
        .expect("channel");
    let creds = voronka_engine::messaging::telegram::Credentials::open(&app.secret, &ch)
        .expect("credentials");
    for body in [
        &b"{not json"[..],
        &br#"{"message":{"text":"no update id"}}"#[..],
    ] {
        let res = app
            .http
            .post(format!("{}/hooks/telegram/{channel}", app.base))
            .header("X-Telegram-Bot-Api-Secret-Token", &creds.webhook_secret)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("malformed hook");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "malformed_update");
        assert!(!body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.contact_of(channel, BORIS).await.is_none());
    assert_eq!(app.events(anna).await.len(), before);

    // Everything Anna did is in her timeline exactly once.
    let events = app.events(anna).await;
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("conversation_started"), 1, "{events:?}");
    assert_eq!(count("message_sent"), 5, "{events:?}");

    // The bot token never shows in any API answer.
    let (_, ch) = app
        .call(reqwest::Method::GET, &format!("/channels/{channel}"), None)
        .await;
    assert!(!ch.to_string().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_on_sqlite() {
    the_whole_journey(Backend::Sqlite, Mode::Webhook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_on_sqlite() {
    the_whole_journey(Backend::Sqlite, Mode::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_on_postgres() {
    the_whole_journey(Backend::Postgres, Mode::Webhook).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_on_postgres() {
    the_whole_journey(Backend::Postgres, Mode::Polling).await;
}

/// A message too long for one Telegram message arrives in order, split, with the
/// buttons on the last part; a 429 from the provider is waited out, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_are_split_and_rate_limits_respected() {
    let Some(app) = start(Backend::Sqlite, Mode::Webhook).await else {
        return;
    };
    let channel = app.connect_bot().await;
    app.fake.add_user(BORIS, "Boris", None, None, None);
    app.fake
        .send_text(TOKEN, BORIS, "/start")
        .await
        .expect("start");
    app.fake
        .wait_for_messages(TOKEN, BORIS, 1, Duration::from_secs(15))
        .await
        .expect("welcome");
    let boris = app.contact_of(channel, BORIS).await.expect("contact");
    let paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(20);
    let long = vec![paragraph; 9].join("\n\n");
    assert!(long.chars().count() > 8192);
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/contacts/{boris}/messages"),
            Some(json!({"channel_id": channel.0, "message": {"text": long,
                "buttons": [{"type": "postback", "label": "More", "payload": "MORE"}]}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Three quick messages more: the per-chat limit (1/s, burst 3) is reached and the
    // worker must pace itself rather than collect 429s.
    for i in 0..3 {
        let (status, _) = app.send(boris, channel, &format!("note {i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let msgs = app
        .fake
        .wait_for_messages(TOKEN, BORIS, 1 + 3 + 3, Duration::from_secs(30))
        .await
        .expect("all parts and notes");
    let parts: Vec<_> = msgs[1..4].iter().collect();
    let joined: usize = parts
        .iter()
        .map(|m| m.text.as_deref().unwrap_or_default().chars().count())
        .sum();
    assert!(joined >= long.chars().count() - 20, "all the text arrived");
    assert!(parts[0].reply_markup.is_none() && parts[1].reply_markup.is_none());
    assert!(parts[2].reply_markup.is_some(), "buttons on the last part");
    let notes: Vec<_> = msgs[4..]
        .iter()
        .map(|m| m.text.clone().unwrap_or_default())
        .collect();
    assert_eq!(notes, vec!["note 0", "note 1", "note 2"]);
    assert_eq!(
        app.fake.stats().rate_limited_429,
        0,
        "paced under the limit"
    );
}
