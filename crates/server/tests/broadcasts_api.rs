//! End-to-end tests of broadcasts: the real server on 127.0.0.1:0 over a fresh store
//! (SQLite, and PostgreSQL when reachable for the main scenario), the real messaging,
//! flow and broadcast runtimes, and the real Telegram adapter talking to the fake
//! Telegram Bot API. Hours are skipped by moving the shared clock, not by sleeping.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use voronka_core::apikey;
use voronka_core::contact::Profile;
use voronka_core::crypto::SecretKey;
use voronka_core::message::{OutboundMessage, Purpose};
use voronka_core::role::Scope;
use voronka_core::subscription::{ConsentProof, SubscriptionChange, SubscriptionState};
use voronka_core::{ChannelId, ContactId, WorkspaceId};
use voronka_engine::broadcasts::{Broadcasts, BroadcastsConfig};
use voronka_engine::flows::{Flows, FlowsConfig};
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_fakes::telegram::{FakeConfig, FakeTelegram, SentMessage};
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::{DynStore, NewApiKey, NewContact, NewIdentity, NewOutbound, WorkspaceSettings};

const TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const TOKEN2: &str = "220302654:BBHdqTcvCH1vGWJxfSeofSAs0K5PALDsbx";

struct App {
    base: String,
    http: reqwest::Client,
    store: DynStore,
    key: String,
    ws: WorkspaceId,
    fake: FakeTelegram,
    messaging: Arc<Messaging>,
    flows: Arc<Flows>,
    broadcasts: Arc<Broadcasts>,
    bot1: ChannelId,
    bot2: ChannelId,
    next_user: AtomicI64,
    _db: TestStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.broadcasts.stop();
        self.flows.stop();
        self.messaging.stop();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Polls `check` until it returns `Some`, for up to 20 seconds.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
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

async fn start(backend: Backend) -> Option<App> {
    let db = fresh_store(backend).await?;
    let store = db.store.clone();
    let fake = FakeTelegram::start(FakeConfig::default())
        .await
        .expect("fake telegram");
    fake.add_bot(TOKEN, "voronka_news_bot");
    fake.add_bot(TOKEN2, "voronka_shop_bot");
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
    let flows = Flows::new(messaging.clone(), FlowsConfig::default());
    flows.start().await.expect("start flows");
    let broadcasts = Broadcasts::new(
        flows.clone(),
        BroadcastsConfig {
            tick: Duration::from_millis(50),
            follow_up_interval: Duration::from_millis(100),
            ..BroadcastsConfig::default()
        },
    );
    broadcasts.start().await.expect("start broadcasts");
    let state = AppState::with_runtimes(messaging.clone(), flows.clone(), broadcasts.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(voronka_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let ws = store.create_workspace("Shop").await.expect("workspace").id;
    // No quiet hours unless a test sets them: the default (21:00–09:00 UTC) would make
    // the outcome depend on when the test runs.
    store
        .set_workspace_settings(
            ws,
            WorkspaceSettings {
                quiet_from: None,
                quiet_to: None,
                ..WorkspaceSettings::default()
            },
        )
        .await
        .expect("settings");
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
    store
        .create_topic(
            ws,
            voronka_store::Topic {
                key: "news".into(),
                name: "News".into(),
            },
        )
        .await
        .expect("topic");
    let mut app = App {
        base,
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        store,
        key: g.token,
        ws,
        fake,
        messaging,
        flows,
        broadcasts,
        bot1: ChannelId(0),
        bot2: ChannelId(0),
        next_user: AtomicI64::new(7001),
        _db: db,
        stop: Some(stop),
    };
    for (token, name) in [(TOKEN, "News bot"), (TOKEN2, "Shop bot")] {
        let (status, body) = app
            .call(
                reqwest::Method::POST,
                "/channels",
                Some(json!({"kind": "telegram", "name": name, "credentials": {"token": token}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = ChannelId(body["id"].as_i64().expect("channel id"));
        if token == TOKEN {
            app.bot1 = id;
        } else {
            app.bot2 = id;
        }
    }
    Some(app)
}

/// How a test person is reachable.
#[derive(Clone, Copy)]
enum Sub {
    /// Subscribed with the `news` topic.
    News,
    /// Subscribed to another topic only (an empty list would mean every topic).
    OtherTopic,
    /// Unsubscribed.
    Unsubscribed,
    /// Blocked the bot.
    Blocked,
}

struct Person {
    user: i64,
    contact: ContactId,
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

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    fn change(&self, sub: Sub) -> SubscriptionChange {
        let now = jiff::Timestamp::now();
        let proof = ConsentProof {
            source: "test".into(),
            at: now,
            text_shown: None,
            ip: None,
            message_id: None,
        };
        let (state, topics, proof) = match sub {
            Sub::News => (
                SubscriptionState::Subscribed,
                vec!["news".to_string()],
                Some(proof),
            ),
            Sub::OtherTopic => (
                SubscriptionState::Subscribed,
                vec!["promo".to_string()],
                Some(proof),
            ),
            Sub::Unsubscribed => (SubscriptionState::Unsubscribed, Vec::new(), None),
            Sub::Blocked => (SubscriptionState::Blocked, Vec::new(), None),
        };
        SubscriptionChange::new(state, topics, proof, now).expect("change")
    }

    /// A contact with Telegram identities on the given bots.
    async fn person(
        &self,
        name: &str,
        time_zone: Option<&str>,
        last_name: Option<&str>,
        tags: &[&str],
        on: &[(ChannelId, Sub)],
    ) -> Person {
        let user = self.next_user.fetch_add(1, Ordering::Relaxed);
        self.fake.add_user(user, name, last_name, None, Some("en"));
        let mut identities = Vec::new();
        for (channel, sub) in on {
            let token = if *channel == self.bot1 { TOKEN } else { TOKEN2 };
            self.fake.open_chat(token, user).expect("open chat");
            identities.push(NewIdentity {
                channel_id: *channel,
                external_id: user.to_string(),
                subscription: Some(self.change(*sub)),
            });
        }
        let contact = self
            .store
            .create_contact(
                self.ws,
                NewContact {
                    profile: Profile {
                        first_name: Some(name.to_string()),
                        last_name: last_name.map(str::to_string),
                        time_zone: time_zone.map(str::to_string),
                        ..Default::default()
                    },
                    source: None,
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    fields: Vec::new(),
                    identities,
                },
            )
            .await
            .expect("contact")
            .id;
        Person { user, contact }
    }

    fn inbox(&self, token: &str, p: &Person) -> Vec<SentMessage> {
        self.fake.messages_to(token, p.user)
    }

    /// Creates a broadcast and answers its id.
    async fn broadcast(&self, name: &str, spec: Value) -> i64 {
        let (status, body) = self
            .post("/broadcasts", json!({"name": name, "spec": spec}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().expect("broadcast id")
    }

    async fn report(&self, id: i64) -> Value {
        self.get(&format!("/broadcasts/{id}/report")).await
    }

    async fn status(&self, id: i64) -> String {
        self.get(&format!("/broadcasts/{id}")).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn wait_status(&self, id: i64, want: &str) {
        eventually(&format!("broadcast {id} {want}"), || async {
            (self.status(id).await == want).then_some(())
        })
        .await
    }

    /// Every message the bot sent to these people.
    fn total_sent(&self, token: &str, people: &[Person]) -> usize {
        people.iter().map(|p| self.inbox(token, p).len()).sum()
    }
}

fn skipped(report: &Value, reason: &str) -> u64 {
    report["skipped"][reason].as_u64().unwrap_or(0)
}

/// Kiritimati (UTC+14) and Pago Pago (UTC−11) are a day apart and an hour apart on the
/// clock: quiet hours around Kiritimati's current time hold one and not the other.
fn quiet_window_around_kiritimati() -> (String, String) {
    let tz = jiff::tz::TimeZone::get("Pacific/Kiritimati").expect("zone");
    let local = jiff::Timestamp::now().to_zoned(tz);
    let from = local
        .checked_sub(jiff::SignedDuration::from_mins(30))
        .expect("from");
    let to = local
        .checked_add(jiff::SignedDuration::from_mins(30))
        .expect("to");
    (
        format!("{:02}:{:02}", from.hour(), from.minute()),
        format!("{:02}:{:02}", to.hour(), to.minute()),
    )
}

/// Each rule skips with its reason, quiet hours defer (never drop), and the report
/// counts it all.
async fn rules_and_skips(backend: Backend) {
    let Some(app) = start(backend).await else {
        return;
    };
    let (quiet_from, quiet_to) = quiet_window_around_kiritimati();
    app.store
        .set_workspace_settings(
            app.ws,
            WorkspaceSettings {
                quiet_from: Some(quiet_from),
                quiet_to: Some(quiet_to),
                ..WorkspaceSettings::default()
            },
        )
        .await
        .expect("settings");
    let (b1, b2) = (app.bot1, app.bot2);
    let ann = app
        .person("Ann", None, None, &["vip"], &[(b1, Sub::News)])
        .await;
    let bob = app
        .person("Bob", None, None, &["vip"], &[(b1, Sub::Unsubscribed)])
        .await;
    let bea = app
        .person("Bea", None, None, &["vip"], &[(b1, Sub::Blocked)])
        .await;
    let cat = app
        .person("Cat", None, None, &["vip"], &[(b1, Sub::OtherTopic)])
        .await;
    let dan = app
        .person(
            "Dan",
            None,
            None,
            &["vip"],
            &[(b1, Sub::News), (b2, Sub::News)],
        )
        .await;
    let eve = app
        .person("Eve", None, None, &["vip"], &[(b1, Sub::News)])
        .await;
    let kim = app
        .person(
            "Kim",
            Some("Pacific/Kiritimati"),
            None,
            &["vip"],
            &[(b1, Sub::News)],
        )
        .await;
    let pat = app
        .person(
            "Pat",
            Some("Pacific/Pago_Pago"),
            None,
            &["vip"],
            &[(b1, Sub::News)],
        )
        .await;
    let long = "L".repeat(80);
    let rob = app
        .person("Rob", None, Some(&long), &["vip"], &[(b1, Sub::News)])
        .await;
    let zed = app.person("Zed", None, None, &[], &[(b1, Sub::News)]).await;
    let nia = app
        .store
        .create_contact(
            app.ws,
            NewContact {
                profile: Profile {
                    first_name: Some("Nia".into()),
                    ..Default::default()
                },
                source: None,
                tags: vec!["vip".into()],
                fields: Vec::new(),
                identities: Vec::new(),
            },
        )
        .await
        .expect("nia");
    // Dan was active on the news bot more recently than on the shop bot: the news bot
    // is his preferred channel.
    app.fake
        .send_text(TOKEN2, dan.user, "hello shop")
        .await
        .expect("say");
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.fake
        .send_text(TOKEN, dan.user, "hello news")
        .await
        .expect("say");
    eventually("dan's messages processed", || async {
        let n = app
            .store
            .pending_inbound(None, 10)
            .await
            .expect("pending")
            .len();
        (n == 0).then_some(())
    })
    .await;
    // Eve already had two marketing messages today: the cap (2 per 24 h) is reached.
    for i in 0..2 {
        app.messaging
            .send_to_contact(
                app.ws,
                eve.contact,
                NewOutbound {
                    channel_id: b1,
                    purpose: Purpose::Marketing,
                    message: OutboundMessage::text(format!("promo {i}")),
                    source: "api".into(),
                    run_at: None,
                },
            )
            .await
            .expect("marketing");
    }
    eventually("eve's promos", || async {
        (app.inbox(TOKEN, &eve).len() == 2).then_some(())
    })
    .await;

    let id = app
        .broadcast(
            "Spring sale",
            json!({
                "segment": {"filter": {"tag": "vip"}},
                "channels": "all",
                "topic": "news",
                "variants": [{"key": "A", "percent": 100, "message": {
                    "text": "Hi {{ contact.first_name }}, spring sale!",
                    "buttons": [{"label": "{% if contact.last_name %}{{ contact.last_name }}{% else %}Shop{% endif %}",
                                 "url": "https://shop.example/spring"}]}}]
            }),
        )
        .await;
    let (status, body) = app.post(&format!("/broadcasts/{id}/send"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (who, token) in [(&ann, TOKEN), (&dan, TOKEN), (&pat, TOKEN)] {
        eventually("the broadcast message", || async {
            (app.inbox(token, who).len() == 1).then_some(())
        })
        .await;
    }
    let first = &app.inbox(TOKEN, &ann)[0];
    assert_eq!(first.text.as_deref(), Some("Hi Ann, spring sale!"));
    // Kim is in quiet hours in Kiritimati: deferred, not dropped.
    let kim_rows = app
        .get(&format!("/broadcasts/{id}/recipients?status=planned"))
        .await;
    let rows = kim_rows["data"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{kim_rows}");
    assert_eq!(rows[0]["contact_id"], json!(kim.contact.0));
    let run_at: jiff::Timestamp = rows[0]["run_at"]
        .as_str()
        .expect("run_at")
        .parse()
        .expect("timestamp");
    assert!(run_at > jiff::Timestamp::now(), "deferred into the future");
    assert!(app.inbox(TOKEN, &kim).is_empty());
    let report = app.report(id).await;
    assert_eq!(report["status"], "sending", "{report}");
    for (reason, n) in [
        ("not_subscribed", 1),
        ("blocked", 1),
        ("topic_not_subscribed", 1),
        ("duplicate_person", 1),
        ("frequency_cap", 1),
        ("provider_rule", 1),
        ("no_identity", 1),
    ] {
        assert_eq!(skipped(&report, reason), n, "{reason}: {report}");
    }
    // After the quiet hours Kim gets hers, and the broadcast is over.
    app.broadcasts.advance_clock(Duration::from_secs(31 * 60));
    eventually("kim's message", || async {
        (app.inbox(TOKEN, &kim).len() == 1).then_some(())
    })
    .await;
    app.wait_status(id, "finished").await;
    let report = app.report(id).await;
    assert_eq!(report["totals"]["sent"], 4, "{report}");
    assert_eq!(report["totals"]["delivered"], Value::Null, "{report}");
    assert_eq!(report["totals"]["read"], Value::Null, "{report}");
    assert!(
        report["not_available"]
            .as_array()
            .expect("list")
            .contains(&json!("read")),
        "{report}"
    );
    assert_eq!(report["remaining"], 0, "{report}");
    // Exactly what the rules say, per chat.
    assert_eq!(app.inbox(TOKEN, &ann).len(), 1);
    assert_eq!(app.inbox(TOKEN, &dan).len(), 1);
    assert!(
        app.inbox(TOKEN2, &dan)
            .iter()
            .all(|m| m.text.as_deref() != Some("Hi Dan, spring sale!")),
        "dan got the broadcast twice"
    );
    assert_eq!(app.inbox(TOKEN, &eve).len(), 2, "only eve's earlier promos");
    for p in [&bob, &bea, &cat, &rob, &zed] {
        assert!(
            app.inbox(TOKEN, p).is_empty(),
            "contact {} got a message",
            p.contact
        );
    }
    let skipped_rows = app
        .get(&format!("/broadcasts/{id}/recipients?reason=no_identity"))
        .await;
    assert_eq!(skipped_rows["data"][0]["contact_id"], json!(nia.id.0));
}

/// Pause, resume and cancel take effect within a second and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_never_double_send() {
    let Some(app) = start(Backend::Sqlite).await else {
        return;
    };
    let mut people = Vec::new();
    for i in 0..150 {
        people.push(
            app.person(&format!("P{i}"), None, None, &[], &[(app.bot1, Sub::News)])
                .await,
        );
    }
    let spec = json!({"channels": {"channel": app.bot1.0},
        "variants": [{"key": "A", "percent": 100, "message": {"text": "Hello {{ contact.first_name }}"}}]});
    let id = app.broadcast("Big", spec.clone()).await;
    let (status, body) = app.post(&format!("/broadcasts/{id}/send"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("some messages", || async {
        (app.total_sent(TOKEN, &people) >= 20).then_some(())
    })
    .await;
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "paused");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let at_pause = app.total_sent(TOKEN, &people);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.total_sent(TOKEN, &people),
        at_pause,
        "sending went on after a pause"
    );
    assert!(at_pause < 150, "everything went out before the pause");
    // Pausing twice is a conflict.
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_status(id, "finished").await;
    for p in &people {
        assert_eq!(app.inbox(TOKEN, p).len(), 1, "contact {}", p.contact);
    }
    let report = app.report(id).await;
    assert_eq!(report["totals"]["sent"], 150, "{report}");

    // Cancel: the rest is skipped as cancelled, nothing arrives after a second.
    let id = app.broadcast("Big again", spec).await;
    let before = app.total_sent(TOKEN, &people);
    app.post(&format!("/broadcasts/{id}/send"), json!({})).await;
    eventually("some messages", || async {
        (app.total_sent(TOKEN, &people) >= before + 20).then_some(())
    })
    .await;
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let at_cancel = app.total_sent(TOKEN, &people);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.total_sent(TOKEN, &people),
        at_cancel,
        "sending went on after cancel"
    );
    for p in &people {
        assert!(app.inbox(TOKEN, p).len() <= 2, "contact {}", p.contact);
    }
    let report = app.report(id).await;
    let sent = report["totals"]["sent"].as_u64().unwrap_or(0);
    assert_eq!(sent as usize, at_cancel - before, "{report}");
    assert_eq!(sent + skipped(&report, "cancelled"), 150, "{report}");
    assert_eq!(report["status"], "cancelled");
    // A cancelled broadcast can be deleted; a finished one too.
    let (status, _) = app
        .call(reqwest::Method::DELETE, &format!("/broadcasts/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A/B variants, tracked links and flow buttons, the follow-up to those who did not
/// click, live progress over SSE, and recall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_clicks_follow_up_events_and_recall() {
    let Some(app) = start(Backend::Sqlite).await else {
        return;
    };
    // A flow the button starts.
    let (status, body) = app
        .post(
            "/flows",
            json!({"name": "quiz", "document": {"name": "quiz", "start": "hello", "steps": [
                {"id": "hello", "type": "send", "text": "Quiz time!"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let flow = body["id"].as_i64().expect("flow id");
    let (status, body) = app.post(&format!("/flows/{flow}/publish"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut people = Vec::new();
    for i in 0..30 {
        people.push(
            app.person(&format!("V{i}"), None, None, &[], &[(app.bot1, Sub::News)])
                .await,
        );
    }
    let button = |text: &str| {
        json!({"text": text, "buttons": [
            {"label": "Shop", "url": "https://shop.example/ab"},
            {"label": "Play", "start_flow": "quiz"}]})
    };
    let id = app
        .broadcast(
            "A/B",
            json!({"channels": {"channel": app.bot1.0},
                "variants": [
                    {"key": "A", "percent": 50, "message": button("Variant A")},
                    {"key": "B", "percent": 50, "message": button("Variant B")}],
                "follow_up": {"if_not": "clicked", "after_hours": 1,
                    "message": {"text": "Still thinking, {{ contact.first_name }}?"}}}),
        )
        .await;
    // Live progress: subscribe before sending.
    let events = app
        .http
        .get(format!("{}/api/v1/broadcasts/{id}/events", app.base))
        .bearer_auth(&app.key)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let reader = tokio::spawn(async move {
        let mut stream = events.bytes_stream();
        let mut buf = String::new();
        let mut seen = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                            seen.push(v);
                        }
                    }
                }
            }
        }
        seen
    });
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/schedule"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "sending", "a `now` schedule sends at once");
    for p in &people {
        eventually("the broadcast message", || async {
            (app.inbox(TOKEN, p).len() == 1).then_some(())
        })
        .await;
    }
    // Each person got the text of the variant stored on their row.
    let rows = app
        .get(&format!("/broadcasts/{id}/recipients?limit=100"))
        .await;
    let mut per_variant = [0u64; 2];
    for row in rows["data"].as_array().expect("rows") {
        let contact = row["contact_id"].as_i64().expect("contact");
        let p = people
            .iter()
            .find(|p| p.contact.0 == contact)
            .expect("a person");
        let v = row["variant"].as_u64().expect("variant") as usize;
        per_variant[v] += 1;
        let want = if v == 0 { "Variant A" } else { "Variant B" };
        assert_eq!(app.inbox(TOKEN, p)[0].text.as_deref(), Some(want));
    }
    assert!(per_variant[0] > 0 && per_variant[1] > 0, "{per_variant:?}");
    let report = eventually("everyone counted as sent", || async {
        let r = app.report(id).await;
        (r["totals"]["sent"] == 30).then_some(r)
    })
    .await;
    assert_eq!(
        report["variants"][0]["counts"]["sent"], per_variant[0],
        "{report}"
    );
    assert_eq!(
        report["variants"][1]["counts"]["sent"], per_variant[1],
        "{report}"
    );
    assert_eq!(report["variants"][0]["key"], "A");

    // A tracked link: 302 to the button's URL, one click counted.
    let clicker = &people[0];
    let msg = &app.inbox(TOKEN, clicker)[0];
    let url = buttons_of(msg)
        .iter()
        .find_map(|b| b["url"].as_str().map(str::to_string))
        .expect("a link button");
    assert!(url.starts_with(&format!("{}/r/", app.base)), "{url}");
    let res = app.http.get(&url).send().await.expect("follow");
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://shop.example/ab")
    );
    let bad = app
        .http
        .get(format!("{}/r/1.2.3.{}", app.base, "ab".repeat(16)))
        .send()
        .await
        .expect("bad link");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad: Value = bad.json().await.expect("json");
    assert_eq!(bad["error"]["code"], "invalid_link");

    // A start_flow button: the flow runs for the person who pressed it.
    let player = &people[1];
    let msg = app.inbox(TOKEN, player)[0].clone();
    let data = buttons_of(&msg)
        .iter()
        .find_map(|b| b["callback_data"].as_str().map(str::to_string))
        .expect("a callback button");
    assert!(data.starts_with("p:bc:"), "{data}");
    app.fake
        .press_button(TOKEN, player.user, msg.message_id, &data)
        .await
        .expect("press");
    eventually("the quiz", || async {
        app.inbox(TOKEN, player)
            .iter()
            .any(|m| m.text.as_deref() == Some("Quiz time!"))
            .then_some(())
    })
    .await;
    let report = eventually("two clicks", || async {
        let r = app.report(id).await;
        (r["totals"]["clicked"] == 2).then_some(r)
    })
    .await;
    assert_eq!(
        report["status"], "sending",
        "waiting for the follow-up window"
    );

    // An hour later the others get the follow-up; the two who clicked do not.
    app.broadcasts.advance_clock(Duration::from_secs(61 * 60));
    for p in &people[2..] {
        eventually("the follow-up", || async {
            (app.inbox(TOKEN, p).len() == 2).then_some(())
        })
        .await;
        assert_eq!(
            app.inbox(TOKEN, p)[1]
                .text
                .as_deref()
                .map(|t| t.starts_with("Still thinking")),
            Some(true)
        );
    }
    assert_eq!(app.inbox(TOKEN, clicker).len(), 1);
    assert!(app.inbox(TOKEN, player).iter().all(|m| !m
        .text
        .as_deref()
        .unwrap_or_default()
        .starts_with("Still thinking")));
    app.wait_status(id, "finished").await;
    let report = app.report(id).await;
    assert_eq!(report["follow_up"]["sent"], 28, "{report}");

    // The events stream ended with the broadcast, after several progress events.
    let seen = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(
        seen.last().map(|v| v["status"].clone()),
        Some(json!("finished"))
    );
    assert_eq!(seen.last().map(|v| v["over"].clone()), Some(json!(true)));
    assert!(seen.iter().any(|v| v["status"] == "sending"), "{seen:?}");

    // Recall deletes the first messages in the chats.
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/recall"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for p in &people {
        eventually("the recall", || async {
            app.inbox(TOKEN, p)[0].deleted.then_some(())
        })
        .await;
    }
    let report = eventually("recalls counted", || async {
        let r = app.report(id).await;
        (r["totals"]["recalled"] == 30).then_some(r)
    })
    .await;
    assert_eq!(report["totals"]["sent"], 30);
}

/// The inline buttons under a message.
fn buttons_of(m: &SentMessage) -> Vec<Value> {
    m.reply_markup
        .as_ref()
        .and_then(|r| r["inline_keyboard"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .flat_map(|r| r.as_array().cloned().unwrap_or_default())
        .collect()
}

/// Bad documents are refused with problems pointing at the bad node; schedules from
/// the wrong status are conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_point_at_the_bad_node() {
    let Some(app) = start(Backend::Sqlite).await else {
        return;
    };
    let (status, body) = app
        .post(
            "/broadcasts",
            json!({"name": "Bad", "spec": {
                "topic": "nope",
                "segment": {"filter": {"and": [{"tag": "vip"}, {"field": "age", "op": "gt", "value": 3}]}},
                "variants": [{"key": "A", "percent": 100, "message": {"text": "Hi",
                    "buttons": [{"label": "Go", "url": "javascript:alert(1)"}]}}],
                "winner": {"test_percent": 10, "after_hours": 2, "by": "read"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_broadcast");
    let problems: Vec<(String, String)> = body["error"]["details"]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap_or_default().to_string(),
                p["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (path, code) in [
        ("/topic", "unknown_topic"),
        ("/variants/0/message/buttons/0/url", "invalid_url"),
        ("/winner", "winner_needs_variants"),
        ("/winner/by", "read_receipts_unavailable"),
    ] {
        assert!(
            problems.contains(&(path.to_string(), code.to_string())),
            "{path} {code} missing in {problems:?}"
        );
    }
    assert!(
        problems
            .iter()
            .any(|(p, _)| p.starts_with("/segment/filter/and/1")),
        "{problems:?}"
    );
    // Validation without saving answers the same problems with 200.
    let (status, body) = app
        .post(
            "/broadcasts/validate",
            json!({"spec": {"variants": [{"key": "A", "percent": 90, "message": {"text": "x"}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["problems"][0]["code"], "percent_sum", "{body}");
    // A good draft, scheduled for later, then edited back and scheduled by `at`.
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(2))
        .expect("later");
    let id = app
        .broadcast(
            "Later",
            json!({"variants": [{"key": "A", "percent": 100, "message": {"text": "Later"}}],
                "schedule": {"at": later.to_string()}}),
        )
        .await;
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/schedule"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "scheduled");
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/schedule"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .call(reqwest::Method::DELETE, &format!("/broadcasts/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The report of a broadcast that has not started says so, with nulls for what
    // Telegram cannot tell.
    let report = app.report(id).await;
    assert_eq!(report["totals"]["read"], Value::Null);
    assert_eq!(report["remaining"], 0);
    // Once its time comes (the clock moves), the scheduler sends it.
    let (status, body) = app
        .post(&format!("/broadcasts/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = app
        .broadcast(
            "Soon",
            json!({"variants": [{"key": "A", "percent": 100, "message": {"text": "Soon"}}]}),
        )
        .await;
    let p = app
        .person("Sam", None, None, &[], &[(app.bot1, Sub::News)])
        .await;
    let soon = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(3))
        .expect("soon");
    let (status, body) = app
        .post(
            &format!("/broadcasts/{id}/schedule"),
            json!({"at": soon.to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "scheduled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.inbox(TOKEN, &p).is_empty());
    app.broadcasts
        .advance_clock(Duration::from_secs(3 * 3600 + 5));
    eventually("the scheduled message", || async {
        (app.inbox(TOKEN, &p).len() == 1).then_some(())
    })
    .await;
    app.wait_status(id, "finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_skips_sqlite() {
    rules_and_skips(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_skips_postgres() {
    rules_and_skips(Backend::Postgres).await;
}
