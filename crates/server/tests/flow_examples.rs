//! The example flows in `examples/flows/`, each with a scripted conversation, over the
//! fake Telegram Bot API and over the web chat: the real server, the real messaging and
//! flow runtimes, the real adapters over HTTP. Delays are skipped by moving the flows'
//! clock forward, so hours of waiting take milliseconds while timers stay rows.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use voronka_core::apikey;
use voronka_core::crypto::SecretKey;
use voronka_core::flow::format::{parse, Format};
use voronka_core::role::Scope;
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_engine::flows::{Flows, FlowsConfig};
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::{DynStore, NewApiKey, RunQuery, RunStatus};

const TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const BOT: &str = "voronka_flows_bot";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Telegram,
    Webchat,
}

struct App {
    base: String,
    http: reqwest::Client,
    store: DynStore,
    key: String,
    ws: WorkspaceId,
    fake: FakeTelegram,
    messaging: Arc<Messaging>,
    flows: Arc<Flows>,
    channel: ChannelId,
    via: Via,
    next_user: AtomicU64,
    _db: TestStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.flows.stop();
        self.messaging.stop();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One person talking to the bot.
struct Person {
    /// Telegram user id, or the web chat visitor id.
    external: String,
    /// Web chat visitor token.
    token: Option<String>,
    user: i64,
}

async fn start(backend: Backend, via: Via) -> Option<App> {
    let db = fresh_store(backend).await?;
    let store = db.store.clone();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    fake.add_bot(TOKEN, BOT);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let messaging = Messaging::new(
        store.clone(),
        SecretKey::generate(),
        MessagingConfig {
            telegram_api_url: fake.api_url(),
            public_url: Some(base.clone()),
            outbox_lease: Duration::from_secs(5),
            ..Default::default()
        },
    );
    messaging.start().await.expect("start messaging");
    let mut config = FlowsConfig {
        // Date and inactivity triggers are scanned often so clock skips show at once.
        scan_interval: Duration::from_millis(100),
        ..FlowsConfig::default()
    };
    // HTTP steps in these tests call a server on this machine.
    config.outgoing.allow =
        voronka_engine::outgoing::OutgoingPolicy::parse_allow("127.0.0.1").expect("allow-list");
    let flows = Flows::new(messaging.clone(), config);
    flows.start().await.expect("start flows");
    let state = AppState::with_runtime(messaging.clone(), flows.clone());
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
    let mut app = App {
        base,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        store,
        key: g.token,
        ws,
        fake,
        messaging,
        flows,
        channel: ChannelId(0),
        via,
        next_user: AtomicU64::new(9001),
        _db: db,
        stop: Some(stop),
    };
    let body = match via {
        Via::Telegram => {
            json!({"kind": "telegram", "name": "Shop bot", "credentials": {"token": TOKEN},
            "settings": {"auto_reply": {"text": "We will answer soon."}}})
        }
        Via::Webchat => json!({"kind": "webchat", "name": "Site chat",
            "settings": {"auto_reply": {"text": "We will answer soon."}}}),
    };
    let (status, body) = app
        .call(reqwest::Method::POST, "/channels", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.channel = ChannelId(body["id"].as_i64().expect("channel id"));
    Some(app)
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

    /// Creates and publishes an example flow.
    async fn publish(&self, file: &str) -> voronka_core::FlowId {
        let path = format!("{}/../../examples/flows/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("example flow");
        let doc = parse(&text, Format::Yaml).expect("example parses");
        let flow = self
            .store
            .create_flow(
                self.ws,
                &doc.name,
                serde_json::to_value(&doc).expect("json"),
            )
            .await
            .expect("create flow");
        match self.flows.publish(self.ws, flow.id).await {
            Ok(v) => assert_eq!(v.version, 1),
            Err(e) => panic!("{file} does not publish: {e} {e:?}"),
        }
        flow.id
    }

    /// A new person who opened the bot (Telegram `/start`) or the chat and ticked the
    /// consent box (web chat).
    async fn person(&self, first_name: &str) -> Person {
        let user = self.next_user.fetch_add(1, Ordering::Relaxed) as i64;
        match self.via {
            Via::Telegram => {
                self.fake.add_user(user, first_name, None, None, Some("en"));
                self.fake
                    .send_text(TOKEN, user, "/start")
                    .await
                    .expect("start");
                let p = Person {
                    external: user.to_string(),
                    token: None,
                    user,
                };
                self.contact(&p).await;
                p
            }
            Via::Webchat => {
                let res = self
                    .http
                    .post(format!("{}/webchat/{}/visitors", self.base, self.channel))
                    .send()
                    .await
                    .expect("visitor");
                assert_eq!(res.status(), StatusCode::CREATED);
                let v: Value = res.json().await.expect("visitor json");
                let p = Person {
                    external: v["visitor"].as_str().expect("visitor id").to_string(),
                    token: v["token"].as_str().map(str::to_string),
                    user,
                };
                self.web_post(&p, json!({"type": "start"})).await;
                let c = self.contact(&p).await;
                // Name the visitor so templates have a first name, as Telegram does.
                self.store
                    .update_profile(
                        self.ws,
                        c,
                        voronka_core::contact::Profile {
                            first_name: Some(first_name.to_string()),
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("name the visitor");
                // Consent after naming, so flows welcoming new subscribers see the name.
                self.web_post(&p, json!({"type": "consent"})).await;
                eventually("the consent", || async {
                    let i = self
                        .store
                        .find_identity(self.ws, self.channel, &p.external)
                        .await
                        .ok()
                        .flatten()?;
                    (i.subscription.state
                        == voronka_core::subscription::SubscriptionState::Subscribed)
                        .then_some(())
                })
                .await;
                p
            }
        }
    }

    async fn web_post(&self, p: &Person, mut body: Value) {
        static CLIENT: AtomicU64 = AtomicU64::new(1);
        body["client_id"] = json!(format!("c{}", CLIENT.fetch_add(1, Ordering::Relaxed)));
        let res = self
            .http
            .post(format!("{}/webchat/{}/messages", self.base, self.channel))
            .bearer_auth(p.token.as_deref().unwrap_or_default())
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{body}");
    }

    async fn contact(&self, p: &Person) -> ContactId {
        eventually("the contact", || async {
            self.store
                .find_identity(self.ws, self.channel, &p.external)
                .await
                .ok()
                .flatten()
                .map(|i| i.contact_id)
        })
        .await
    }

    async fn say(&self, p: &Person, text: &str) {
        match self.via {
            Via::Telegram => {
                self.fake.send_text(TOKEN, p.user, text).await.expect("say");
            }
            Via::Webchat => {
                self.web_post(p, json!({"type": "text", "text": text}))
                    .await
            }
        }
    }

    /// What the bot has said to the person, oldest first: (text, buttons as
    /// (label, payload-or-url)).
    async fn heard(&self, p: &Person) -> Vec<(String, Vec<(String, String)>)> {
        match self.via {
            Via::Telegram => self
                .fake
                .messages_to(TOKEN, p.user)
                .into_iter()
                .map(|m| {
                    let mut buttons = Vec::new();
                    if let Some(markup) = &m.reply_markup {
                        for key in ["inline_keyboard", "keyboard"] {
                            for row in markup[key].as_array().into_iter().flatten() {
                                for b in row.as_array().into_iter().flatten() {
                                    let label = b["text"].as_str().unwrap_or_default().to_string();
                                    let data = b["callback_data"]
                                        .as_str()
                                        .or(b["url"].as_str())
                                        .unwrap_or_default()
                                        .to_string();
                                    buttons.push((label, data));
                                }
                            }
                        }
                    }
                    (m.text.or(m.caption).unwrap_or_default(), buttons)
                })
                .collect(),
            Via::Webchat => {
                let res = self
                    .http
                    .get(format!("{}/webchat/{}/history", self.base, self.channel))
                    .bearer_auth(p.token.as_deref().unwrap_or_default())
                    .send()
                    .await
                    .expect("history");
                let v: Value = res.json().await.expect("history json");
                v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| i["dir"] == "out")
                    .map(|i| {
                        let m = &i["message"];
                        let buttons = m["buttons"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|b| {
                                let label = b["label"].as_str().unwrap_or_default().to_string();
                                let data = b["payload"]
                                    .as_str()
                                    .or(b["url"].as_str())
                                    .unwrap_or(&label)
                                    .to_string();
                                (label, data)
                            })
                            .collect();
                        (m["text"].as_str().unwrap_or_default().to_string(), buttons)
                    })
                    .collect()
            }
        }
    }

    /// Waits until the bot has said `n` things to the person and returns their texts.
    async fn hear(&self, p: &Person, n: usize) -> Vec<String> {
        eventually(&format!("{n} messages"), || async {
            let h = self.heard(p).await;
            (h.len() >= n).then(|| h.into_iter().map(|(t, _)| t).collect())
        })
        .await
    }

    /// Presses the button labelled `label` under the bot's latest message with buttons.
    async fn press(&self, p: &Person, label: &str) {
        let heard = self.heard(p).await;
        let (_, buttons) = heard
            .iter()
            .rev()
            .find(|(_, b)| !b.is_empty())
            .expect("a message with buttons");
        let (_, data) = buttons
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no button {label:?} in {buttons:?}"));
        match self.via {
            Via::Telegram => {
                let msgs = self.fake.messages_to(TOKEN, p.user);
                let inline = msgs.iter().rev().find(|m| {
                    m.reply_markup
                        .as_ref()
                        .is_some_and(|r| r["inline_keyboard"].is_array())
                });
                match inline {
                    Some(m) if data.starts_with("p:") || data.starts_with("o:") => {
                        self.fake
                            .press_button(TOKEN, p.user, m.message_id, data)
                            .await
                            .expect("press");
                    }
                    // A reply keyboard: pressing sends the label as text.
                    _ => self.say(p, label).await,
                }
            }
            Via::Webchat => {
                if data.starts_with("flow:") {
                    self.web_post(p, json!({"type": "button", "payload": data}))
                        .await
                } else {
                    self.say(p, label).await
                }
            }
        }
    }

    async fn tags(&self, c: ContactId) -> Vec<String> {
        self.store
            .get_contact(self.ws, c)
            .await
            .expect("contact")
            .tags
    }

    async fn runs(&self, flow: voronka_core::FlowId) -> Vec<voronka_store::FlowRun> {
        self.store
            .list_runs(
                self.ws,
                RunQuery {
                    flow_id: Some(flow),
                    limit: 100,
                    ..RunQuery::default()
                },
            )
            .await
            .expect("runs")
    }

    async fn event(&self, c: ContactId, name: &str, data: Value) {
        self.flows
            .event(self.ws, c, name, data)
            .await
            .expect("event");
    }

    /// Moves the flows' clock and lets the timers fire.
    fn skip(&self, by: Duration) {
        self.flows.advance_clock(by);
    }
}

async fn lead_magnet(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let flow = app.publish("lead_magnet.yaml").await;
    let anna = app.person("Anna").await;
    let before = app.heard(&anna).await.len();
    app.say(&anna, "Checklist").await;
    let heard = app.hear(&anna, before + 2).await;
    assert_eq!(
        heard[before..],
        [
            "Hi Anna! The checklist is free: where should we send it?",
            "Your e-mail, please."
        ]
    );
    // A wrong answer is asked again; the auto-reply stays quiet.
    app.say(&anna, "anna at example").await;
    let heard = app.hear(&anna, before + 3).await;
    assert_eq!(
        heard[before + 2],
        "Hmm, that does not look like an e-mail. Try again, like name@example.com."
    );
    app.say(&anna, "anna@example.com").await;
    let heard = app.hear(&anna, before + 4).await;
    assert!(
        heard[before + 3].starts_with("Thank you! Here it is"),
        "{heard:?}"
    );
    let all = app.heard(&anna).await;
    assert!(all[before + 3]
        .1
        .iter()
        .any(|(l, u)| l == "Open the checklist" && u == "https://example.com/checklist.pdf"));
    let c = app.contact(&anna).await;
    eventually("the lead tag", || async {
        app.tags(c)
            .await
            .contains(&"lead".to_string())
            .then_some(())
    })
    .await;
    let contact = app.store.get_contact(app.ws, c).await.expect("contact");
    assert_eq!(contact.profile.email.as_deref(), Some("anna@example.com"));
    let runs = app.runs(flow).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Done);
    let stats = app.store.step_counters(app.ws, flow).await.expect("stats");
    let ask = stats
        .iter()
        .find(|s| s.step_id == "ask_email")
        .expect("ask");
    assert_eq!((ask.entered, ask.completed), (1, 1));
    // Nothing more is said.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.heard(&anna).await.len(), before + 4);

    // STOP wins over the question waiting for an answer: the run stops, the channel's
    // stop reply is the only answer.
    let boris = app.person("Boris").await;
    let b0 = app.heard(&boris).await.len();
    app.say(&boris, "checklist").await;
    app.hear(&boris, b0 + 2).await;
    app.say(&boris, "STOP").await;
    let c = app.contact(&boris).await;
    eventually("Boris's run stopped", || async {
        let runs = app.runs(flow).await;
        runs.iter()
            .any(|r| r.contact_id == c && r.status == RunStatus::Stopped)
            .then_some(())
    })
    .await;
    let heard = app.hear(&boris, b0 + 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.heard(&boris).await.len(), b0 + 3, "{heard:?}");
    assert!(!heard[b0 + 2].starts_with("Hmm"), "{heard:?}");
}

async fn quiz(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    app.publish("quiz.yaml").await;
    for (name, level, size, tag, result) in [
        (
            "Pro",
            "A year or more",
            "Under 1000",
            "segment_pro",
            "You are a pro. We will send you advanced cases.",
        ),
        (
            "Newbie",
            "Just starting",
            "Under 1000",
            "segment_beginner",
            "Welcome aboard! We will start with the basics.",
        ),
    ] {
        let p = app.person(name).await;
        let before = app.heard(&p).await.len();
        app.say(&p, "quiz").await;
        app.hear(&p, before + 1).await;
        app.press(&p, level).await;
        let heard = app.hear(&p, before + 2).await;
        assert_eq!(heard[before + 1], "How many subscribers do you have?");
        app.press(&p, size).await;
        let heard = app.hear(&p, before + 3).await;
        assert_eq!(heard[before + 2], result);
        let c = app.contact(&p).await;
        eventually("the segment tag", || async {
            app.tags(c).await.contains(&tag.to_string()).then_some(())
        })
        .await;
    }
}

async fn webinar_reminders(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/fields",
            Some(json!({"key": "webinar_at", "label": "Webinar at", "type": "datetime"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let flow = app.publish("webinar_reminders.yaml").await;
    let p = app.person("Olga").await;
    let c = app.contact(&p).await;
    let at = app.flows.now() + jiff::SignedDuration::from_hours(48);
    let at = at.round(jiff::Unit::Second).expect("round");
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/contacts/{c}/fields"),
            Some(json!({"fields": {"webinar_at": at.to_string()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = app.heard(&p).await.len();
    app.event(c, "webinar_registered", json!({})).await;
    let heard = app.hear(&p, before + 1).await;
    assert!(
        heard[before].starts_with("You are registered for the webinar on"),
        "{heard:?}"
    );
    // 1 day before.
    app.skip(Duration::from_secs(24 * 3600 + 60));
    let heard = app.hear(&p, before + 2).await;
    assert_eq!(heard[before + 1], "The webinar is tomorrow. See you there!");
    // 1 hour before.
    app.skip(Duration::from_secs(23 * 3600));
    let heard = app.hear(&p, before + 3).await;
    assert_eq!(heard[before + 2], "One hour to go.");
    // 5 minutes before.
    app.skip(Duration::from_secs(55 * 60));
    let heard = app.hear(&p, before + 4).await;
    assert_eq!(heard[before + 3], "We are starting in 5 minutes!");
    eventually("the run to end", || async {
        let runs = app.runs(flow).await;
        (runs.first().map(|r| r.status) == Some(RunStatus::Done)).then_some(())
    })
    .await;
}

async fn abandoned_cart(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let flow = app.publish("abandoned_cart.yaml").await;
    let buyer = app.person("Ivan").await;
    let payer = app.person("Petr").await;
    let (cb, cp) = (app.contact(&buyer).await, app.contact(&payer).await);
    let (b0, p0) = (app.heard(&buyer).await.len(), app.heard(&payer).await.len());
    let cart = json!({"cart_url": "https://shop.example/cart/42", "total": 1990});
    app.event(cb, "cart_abandoned", cart.clone()).await;
    app.event(cp, "cart_abandoned", cart).await;
    eventually("two waiting runs", || async {
        let runs = app.runs(flow).await;
        (runs.len() == 2 && runs.iter().all(|r| r.status == RunStatus::Waiting)).then_some(())
    })
    .await;
    // Petr pays: his run ends, nothing is sent to him.
    app.event(cp, "order_paid", json!({})).await;
    eventually("Petr's run cancelled", || async {
        let runs = app.runs(flow).await;
        runs.iter()
            .any(|r| r.contact_id == cp && r.status == RunStatus::Cancelled)
            .then_some(())
    })
    .await;
    // Nothing before two hours.
    app.skip(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.heard(&buyer).await.len(), b0);
    app.skip(Duration::from_secs(3600 + 60));
    let heard = app.hear(&buyer, b0 + 1).await;
    assert_eq!(
        heard[b0],
        "You left something in your cart (1990 ₽). It is still waiting for you."
    );
    let all = app.heard(&buyer).await;
    assert!(all[b0]
        .1
        .iter()
        .any(|(l, u)| l == "Back to the cart" && u == "https://shop.example/cart/42"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.heard(&payer).await.len(), p0, "Petr paid: no reminder");
    let runs = app.runs(flow).await;
    let ivan = runs
        .iter()
        .find(|r| r.contact_id == cb)
        .expect("Ivan's run");
    assert_eq!(
        (ivan.status, ivan.step_id.as_str()),
        (RunStatus::Waiting, "wait_more")
    );
}

async fn operator_handoff(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let flow = app.publish("operator_handoff.yaml").await;
    let p = app.person("Vera").await;
    let c = app.contact(&p).await;
    let before = app.heard(&p).await.len();
    app.say(&p, "Can I talk to a manager please").await;
    let heard = app.hear(&p, before + 1).await;
    assert_eq!(
        heard[before],
        "Connecting you to a manager. They usually answer within 5 minutes."
    );
    eventually("the handoff", || async {
        let runs = app.runs(flow).await;
        (runs.first().and_then(|r| r.wait) == Some(voronka_store::WaitKind::Handoff)).then_some(())
    })
    .await;
    let (status, events) = app
        .call(
            reqwest::Method::GET,
            &format!("/contacts/{c}/events?limit=200"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"operator_notified"), "{kinds:?}");
    assert!(kinds.contains(&"handed_off"), "{kinds:?}");
    // While a human has the conversation the bot says nothing, not even the auto-reply.
    app.say(&p, "hello? anyone?").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.heard(&p).await.len(), before + 1);
    // The operator releases the conversation: the bot is back.
    app.flows.release(app.ws, c).await.expect("release");
    let heard = app.hear(&p, before + 2).await;
    assert!(
        heard[before + 1].starts_with("The manager has finished."),
        "{heard:?}"
    );
}

/// An HTTP step against a CRM that answers, one that is too slow, and one that answers
/// garbage: the good answer is saved and branched on, the others follow `on_error`, and
/// every run ends healthy.
async fn http_steps(backend: Backend, via: Via) {
    use axum::routing::post;
    let Some(app) = start(backend, via).await else {
        return;
    };
    let crm = axum::Router::new()
        .route(
            "/ok",
            post(|body: String| async move {
                let contact: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                axum::Json(
                    json!({"lead": {"id": 77, "plan": "pro"}, "echo": contact["first_name"]}),
                )
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/garbage", post(|| async { "<html>not json</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let crm_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, crm).await });
    let yaml = format!(
        r#"
name: CRM
triggers:
  - {{ type: keyword, keywords: [ok, slow, garbage] }}
start: call
steps:
  - id: call
    type: http
    url: "{crm_url}/{{{{ trigger.text }}}}"
    timeout: 1s
    save: {{ "var.lead_id": /lead/id, "var.echo": /echo }}
    next: check
    on_error: sorry
  - id: check
    type: condition
    branches:
      - if: {{ var: {{ name: http.body.lead.plan, op: eq, value: pro }} }}
        next: done
    else: sorry
  - {{ id: done, type: send, text: "Lead {{{{ vars.lead_id }}}} for {{{{ vars.echo }}}}" }}
  - {{ id: sorry, type: send, text: "The CRM is not answering, we will call you." }}
"#
    );
    let doc = parse(&yaml, Format::Yaml).expect("flow parses");
    let flow = app
        .store
        .create_flow(app.ws, "CRM", serde_json::to_value(&doc).expect("json"))
        .await
        .expect("create");
    if let Err(e) = app.flows.publish(app.ws, flow.id).await {
        panic!("publish: {e:?}");
    }
    for (who, word, answer) in [
        ("Ok", "ok", "Lead 77 for Ok"),
        (
            "Slow",
            "slow",
            "The CRM is not answering, we will call you.",
        ),
        (
            "Garbage",
            "garbage",
            "The CRM is not answering, we will call you.",
        ),
    ] {
        let p = app.person(who).await;
        let before = app.heard(&p).await.len();
        app.say(&p, word).await;
        let heard = app.hear(&p, before + 1).await;
        assert_eq!(heard[before], answer, "{word}");
        let c = app.contact(&p).await;
        let runs = app
            .store
            .list_runs(
                app.ws,
                RunQuery {
                    contact_id: Some(c),
                    limit: 10,
                    ..RunQuery::default()
                },
            )
            .await
            .expect("runs");
        assert_eq!(runs[0].status, RunStatus::Done, "{word}: {:?}", runs[0]);
    }
}

/// Publishing a new version leaves runs in flight on theirs; new runs take the new one.
async fn versions(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let flow_yaml = |v: u32| {
        format!(
            "triggers: [{{ type: keyword, keywords: [go] }}]\nstart: q\nsteps:\n  - {{ id: q, type: ask, text: \"v{v} question\", next: a }}\n  - {{ id: a, type: send, text: \"v{v} answer to {{{{ answers.q }}}}\" }}\n"
        )
    };
    let doc = |v: u32| {
        serde_json::to_value(parse(&flow_yaml(v), Format::Yaml).expect("parses")).expect("json")
    };
    let flow = app
        .store
        .create_flow(app.ws, "Versions", doc(1))
        .await
        .expect("create");
    app.flows
        .publish(app.ws, flow.id)
        .await
        .expect("publish v1");
    let early = app.person("Early").await;
    let e0 = app.heard(&early).await.len();
    app.say(&early, "go").await;
    assert_eq!(app.hear(&early, e0 + 1).await[e0], "v1 question");
    app.store
        .update_flow(app.ws, flow.id, None, Some(doc(2)), None)
        .await
        .expect("edit the draft");
    let v2 = app
        .flows
        .publish(app.ws, flow.id)
        .await
        .expect("publish v2");
    assert_eq!(v2.version, 2);
    app.say(&early, "yes").await;
    assert_eq!(app.hear(&early, e0 + 2).await[e0 + 1], "v1 answer to yes");
    let late = app.person("Late").await;
    let l0 = app.heard(&late).await.len();
    app.say(&late, "go").await;
    assert_eq!(app.hear(&late, l0 + 1).await[l0], "v2 question");
    let runs = app.runs(flow.id).await;
    let mut versions: Vec<u32> = runs.iter().map(|r| r.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2]);
}

/// Birthday-style date triggers and "no activity for a day" fire once when the clock
/// passes their moment, and not before.
async fn date_and_inactivity_triggers(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/fields",
            Some(json!({"key": "birthday", "label": "Birthday", "type": "date"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (name, yaml) in [
        (
            "Birthday",
            "triggers: [{ type: field_date, field: birthday, at: \"00:00\" }]\nstart: hi\nsteps:\n  - { id: hi, type: send, text: Happy birthday! }\n",
        ),
        (
            "Miss you",
            "triggers: [{ type: inactivity, after: 1d }]\nstart: hi\nsteps:\n  - { id: hi, type: send, text: We miss you }\n",
        ),
    ] {
        let doc = serde_json::to_value(parse(yaml, Format::Yaml).expect("parses")).expect("json");
        let flow = app.store.create_flow(app.ws, name, doc).await.expect("create");
        app.flows.publish(app.ws, flow.id).await.expect("publish");
    }
    let p = app.person("Gala").await;
    let c = app.contact(&p).await;
    // Born on the day after tomorrow (UTC), some years ago.
    let day = (app.flows.now() + jiff::SignedDuration::from_hours(48))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    // Days 29–31 do not exist in every month: then the birthday is put half a year away
    // and must not fire.
    let birthday_passed = day.day() <= 28;
    let born = if birthday_passed {
        jiff::civil::date(1990, day.month(), day.day())
    } else {
        jiff::civil::date(1990, (day.month() + 5) % 12 + 1, 15)
    };
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/contacts/{c}/fields"),
            Some(json!({"fields": {"birthday": born.to_string()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = app.heard(&p).await.len();
    // Let the scanners take their first look (it only sets their marks).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.heard(&p).await.len(), before);
    // A day and a bit later: inactive for a day, birthday not yet.
    app.skip(Duration::from_secs(26 * 3600));
    let heard = app.hear(&p, before + 1).await;
    assert_eq!(heard[before], "We miss you");
    // Past midnight of the birthday.
    app.skip(Duration::from_secs(2 * 24 * 3600));
    if birthday_passed {
        let heard = app.hear(&p, before + 2).await;
        assert_eq!(heard[before + 1], "Happy birthday!");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let n = app.heard(&p).await.len();
    assert_eq!(
        n,
        before + 1 + usize::from(birthday_passed),
        "each fires once"
    );
}

/// A new subscriber is welcomed by one flow, which starts another.
async fn new_subscriber_and_start_flow(backend: Backend, via: Via) {
    let Some(app) = start(backend, via).await else {
        return;
    };
    for (name, yaml) in [
        (
            "Tips",
            "start: tip\nsteps:\n  - { id: tip, type: send, text: \"Tip 1: reply within 5 minutes\" }\n",
        ),
        (
            "Welcome",
            "triggers: [{ type: new_subscriber }]\nstart: hi\nsteps:\n  - { id: hi, type: send, text: \"Welcome, {{ contact.first_name }}!\", next: tips }\n  - { id: tips, type: start_flow, flow: Tips }\n",
        ),
    ] {
        let doc = serde_json::to_value(parse(yaml, Format::Yaml).expect("parses")).expect("json");
        let flow = app.store.create_flow(app.ws, name, doc).await.expect("create");
        app.flows.publish(app.ws, flow.id).await.expect("publish");
    }
    let p = app.person("Lena").await;
    let heard = app.hear(&p, 2).await;
    assert_eq!(
        heard[..2],
        ["Welcome, Lena!", "Tip 1: reply within 5 minutes"]
    );
}

macro_rules! conversation_tests {
    ($($name:ident),* $(,)?) => {
        mod telegram {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite, super::Via::Telegram).await;
                }
            )*
        }
        mod webchat {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite, super::Via::Webchat).await;
                }
            )*
        }
        mod postgres_telegram {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres, super::Via::Telegram).await;
                }
            )*
        }
    };
}

conversation_tests!(
    new_subscriber_and_start_flow,
    date_and_inactivity_triggers,
    versions,
    http_steps,
    lead_magnet,
    quiz,
    webinar_reminders,
    abandoned_cart,
    operator_handoff
);
