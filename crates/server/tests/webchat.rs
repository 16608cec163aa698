//! The web chat in a real headless Chromium: a visitor opens a page with the widget,
//! consents, writes, receives the reply with buttons, clicks one, reloads and sees the
//! history. Needs Debian's `chromium` and `chromium-driver`; skipped with a reason when
//! they are missing, unless CI requires it (`CI=true` or `VORONKA_REQUIRE_BROWSER=1`).

use fantoccini::{ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use voronka_core::apikey;
use voronka_core::crypto::SecretKey;
use voronka_core::role::Scope;
use voronka_core::subscription::SubscriptionState;
use voronka_core::ChannelId;
use voronka_engine::messaging::{Messaging, MessagingConfig};
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend};
use voronka_store::NewApiKey;

fn browser_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VORONKA_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

fn find(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

/// Kills chromedriver when the test ends, however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_chats_consents_presses_a_button_and_keeps_history_across_reloads() {
    let driver_bin = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let (Some(driver_bin), Some(chromium)) = (driver_bin, chromium) else {
        assert!(
            !browser_required(),
            "the browser test is required here but chromium/chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: the web chat browser test needs chromium and chromedriver (Debian packages chromium, chromium-driver)");
        return;
    };

    let _ = rustls::crypto::ring::default_provider().install_default();
    // The server, with the messaging runtime running.
    let db = fresh_store(Backend::Sqlite).await.expect("sqlite");
    let store = db.store.clone();
    let messaging = Messaging::new(
        store.clone(),
        SecretKey::generate(),
        MessagingConfig::default(),
    );
    messaging.start().await.expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(voronka_server::serve(
        listener,
        AppState::with_messaging(messaging.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let ws = store.create_workspace("Cafe").await.expect("ws").id;
    let g = apikey::generate();
    store
        .create_api_key(
            ws,
            NewApiKey {
                name: "t".into(),
                prefix: g.prefix,
                secret_hash: g.hash,
                scopes: Scope::ALL.to_vec(),
            },
        )
        .await
        .expect("key");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let res = http
        .post(format!("{base}/api/v1/channels"))
        .bearer_auth(&g.token)
        .json(&json!({
            "kind": "webchat",
            "name": "Cafe chat",
            "settings": {
                "welcome": {"text": "Hello! How can we help?"},
                "auto_reply": {"text": "Want our menu?", "buttons": [
                    {"type": "postback", "label": "Yes, please", "payload": "MENU_YES"},
                    {"type": "postback", "label": "No", "payload": "MENU_NO"}
                ]},
                "consent_text": "Send me news and offers from Cafe"
            }
        }))
        .send()
        .await
        .expect("create channel");
    assert_eq!(res.status(), StatusCode::CREATED);
    let channel: Value = res.json().await.expect("json");
    let channel = ChannelId(channel["id"].as_i64().expect("id"));

    // A real browser.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let _driver = Driver(
        Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"]
        }
    }))
    .expect("caps");
    let mut client = None;
    for _ in 0..50 {
        match ClientBuilder::rustls()
            .expect("tls")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("chromedriver answers");
    let page = format!("{base}/webchat/{channel}");
    c.goto(&page).await.expect("open page");

    let wait_text = |text: &'static str| {
        let c = c.clone();
        async move {
            c.wait()
                .at_most(Duration::from_secs(20))
                .for_element(Locator::XPath(&format!(
                    "//*[@data-voronka='log']//*[contains(normalize-space(.), \"{text}\")]"
                )))
                .await
                .unwrap_or_else(|e| panic!("`{text}` never appeared: {e}"))
        }
    };

    // The welcome arrives; the visitor consents and writes.
    wait_text("Hello! How can we help?").await;
    let consent = c
        .wait()
        .for_element(Locator::Css("[data-voronka=consent]"))
        .await
        .expect("consent box");
    let label = c
        .find(Locator::Css(".vk-consent label"))
        .await
        .expect("label")
        .text()
        .await
        .expect("text");
    assert!(label.contains("Send me news and offers from Cafe"));
    consent.click().await.expect("consent");
    let input = c
        .find(Locator::Css("[data-voronka=input]"))
        .await
        .expect("input");
    input
        .send_keys("Do you deliver? <b>now</b>")
        .await
        .expect("type");
    c.find(Locator::Css("[data-voronka=send]"))
        .await
        .expect("send")
        .click()
        .await
        .expect("click send");

    // The reply comes with its buttons; press one.
    wait_text("Want our menu?").await;
    let button = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//button[@data-voronka='button' and normalize-space(.)='Yes, please']",
        ))
        .await
        .expect("button");
    button.click().await.expect("press");

    // The press and the consent reach the pipeline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let contact = loop {
        let found = find_visitor(&store, ws, channel).await;
        if let Some((contact, state)) = found {
            let events = store
                .list_events(ws, contact, None, 100)
                .await
                .expect("events");
            let pressed = events
                .items
                .iter()
                .any(|e| e.kind.as_str() == "button_pressed" && e.data["payload"] == "MENU_YES");
            if pressed && state == SubscriptionState::Subscribed {
                break contact;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "press and consent not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let history = store
        .subscription_history(ws, contact)
        .await
        .expect("history");
    let proof = history.last().and_then(|h| h.proof.clone()).expect("proof");
    assert_eq!(proof.source, "webchat_consent");
    assert_eq!(
        proof.text_shown.as_deref(),
        Some("Send me news and offers from Cafe")
    );

    // A reload shows the whole conversation again, the visitor's words as text (the
    // markup they typed is not interpreted), and no consent box.
    c.refresh().await.expect("reload");
    wait_text("Hello! How can we help?").await;
    wait_text("Do you deliver? <b>now</b>").await;
    wait_text("Want our menu?").await;
    let bold = c
        .find_all(Locator::Css("[data-voronka=log] b"))
        .await
        .expect("query");
    assert!(bold.is_empty(), "visitor text must not become markup");
    let hidden = c
        .execute(
            "return document.querySelector('.vk-consent').hidden",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(hidden, Value::Bool(true), "consent is remembered");

    c.close().await.expect("close browser");
    messaging.stop();
    let _ = stop.send(());
}

/// The web chat's only contact and its subscription state.
async fn find_visitor(
    store: &voronka_store::DynStore,
    ws: voronka_core::WorkspaceId,
    channel: ChannelId,
) -> Option<(voronka_core::ContactId, SubscriptionState)> {
    let page = store
        .list_contacts(
            ws,
            &voronka_store::ContactQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .ok()?;
    let contact = page.items.first()?;
    let identity = contact
        .identities
        .iter()
        .find(|i| i.channel_id == channel)?;
    Some((contact.id, identity.subscription.state))
}
