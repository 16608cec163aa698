//! Drives the fake Telegram over real HTTP, the way Voronka's client will.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use voronka_fakes::telegram::{FakeConfig, FakeTelegram};

const TOKEN: &str = "123456:ABC-xyz";
const USER: i64 = 1001;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Fixture {
    fake: FakeTelegram,
    http: reqwest::Client,
}

impl Fixture {
    async fn new(cfg: FakeConfig) -> Result<Self, Box<dyn std::error::Error>> {
        let fake = FakeTelegram::start(cfg).await?;
        assert_eq!(fake.add_bot(TOKEN, "voronka_test_bot"), 123_456);
        fake.add_user(USER, "Anna", Some("K"), Some("anna"), Some("ru"));
        Ok(Self {
            fake,
            http: reqwest::Client::new(),
        })
    }

    /// Unlimited sends, so tests about content are not disturbed by flood limits.
    async fn relaxed() -> Result<Self, Box<dyn std::error::Error>> {
        Self::new(FakeConfig {
            enforce_limits: false,
            ..FakeConfig::default()
        })
        .await
    }

    fn url(&self, token: &str, method: &str) -> String {
        format!("{}/bot{token}/{method}", self.fake.api_url())
    }

    /// POSTs a JSON body; returns the HTTP status and the parsed answer.
    async fn call(&self, method: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
        let resp = self
            .http
            .post(self.url(TOKEN, method))
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    async fn send(&self, chat_id: i64, text: &str) -> Result<(u16, Value), reqwest::Error> {
        self.call("sendMessage", json!({"chat_id": chat_id, "text": text}))
            .await
    }
}

fn description(body: &Value) -> &str {
    body["description"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn get_me_and_bad_token() -> TestResult {
    let f = Fixture::relaxed().await?;
    let resp = f.http.get(f.url(TOKEN, "getMe")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await?;
    assert_eq!(body["ok"], json!(true));
    assert_eq!(body["result"]["id"], json!(123_456));
    assert_eq!(body["result"]["is_bot"], json!(true));
    assert_eq!(body["result"]["username"], json!("voronka_test_bot"));
    assert_eq!(body["result"]["supports_inline_queries"], json!(false));

    // Method names are case-insensitive.
    let (status, _) = f.call("GETME", json!({})).await?;
    assert_eq!(status, 200);

    let resp = f.http.get(f.url("999:nope", "getMe")).send().await?;
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await?;
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );

    let (status, body) = f.call("sendTelepathy", json!({})).await?;
    assert_eq!((status, description(&body)), (404, "Not Found"));

    let reqs = f.fake.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[1].method, "getMe");
    assert_eq!(reqs[2].bot_id, None);
    assert_eq!(reqs[2].status, 401);
    assert_eq!(f.fake.stats().by_method.get("getMe"), Some(&3));
    Ok(())
}

#[tokio::test]
async fn send_message_content_rules() -> TestResult {
    let f = Fixture::relaxed().await?;
    let d = f.fake.send_text(TOKEN, USER, "/start").await?;
    assert_eq!(d.webhook_status, None);

    let (status, body) = f.send(USER, "Hello").await?;
    assert_eq!(status, 200, "{body}");
    let msg = &body["result"];
    assert_eq!(
        msg["message_id"],
        json!(2),
        "the user's /start was message 1"
    );
    assert_eq!(msg["chat"]["id"], json!(USER));
    assert_eq!(msg["chat"]["type"], json!("private"));
    assert_eq!(msg["from"]["is_bot"], json!(true));
    assert_eq!(msg["text"], json!("Hello"));

    // Form-encoded, with the markup as a JSON string, as many clients send it.
    let resp = f
        .http
        .post(f.url(TOKEN, "sendMessage"))
        .form(&[
            ("chat_id", USER.to_string()),
            ("text", "<b>Hi</b> &lt;b&gt; &amp; co".to_string()),
            ("parse_mode", "HTML".to_string()),
            (
                "reply_markup",
                r#"{"inline_keyboard":[[{"text":"Go","callback_data":"go"}]]}"#.to_string(),
            ),
        ])
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    let msg = &body["result"];
    assert_eq!(msg["text"], json!("Hi <b> & co"));
    assert_eq!(
        msg["entities"],
        json!([{"offset": 0, "length": 2, "type": "bold"}])
    );
    assert_eq!(
        msg["reply_markup"]["inline_keyboard"][0][0]["text"],
        json!("Go")
    );

    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "<b>bold <i>x</b>", "parse_mode": "HTML"}),
        )
        .await?;
    assert_eq!(status, 400);
    assert!(
        description(&body).starts_with("Bad Request: can't parse entities: "),
        "{body}"
    );
    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "a <foo> b", "parse_mode": "HTML"}),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(
        description(&body),
        "Bad Request: can't parse entities: Unsupported start tag \"foo\" at byte offset 2"
    );

    let (status, body) = f.send(USER, &"x".repeat(4097)).await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: message is too long")
    );
    let (status, _) = f.send(USER, &"я".repeat(4096)).await?;
    assert_eq!(status, 200);
    let (status, body) = f.send(USER, "").await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: message text is empty")
    );
    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "x", "parse_mode": "BBCode"}),
        )
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: unsupported parse_mode")
    );

    let sent = f.fake.messages_to(TOKEN, USER);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[1].text.as_deref(), Some("Hi <b> & co"));
    assert_eq!(sent[1].raw.as_deref(), Some("<b>Hi</b> &lt;b&gt; &amp; co"));
    assert_eq!(
        sent[1].entities,
        vec![json!({"offset": 0, "length": 2, "type": "bold"})]
    );
    assert_eq!(sent[1].parse_mode.as_deref(), Some("HTML"));
    assert!(sent[1].reply_markup.is_some());
    assert_eq!(f.fake.stats().sent_messages, 3);
    Ok(())
}

#[tokio::test]
async fn media_edit_and_delete() -> TestResult {
    let f = Fixture::relaxed().await?;
    f.fake.open_chat(TOKEN, USER)?;
    let (status, body) = f
        .call(
            "sendPhoto",
            json!({"chat_id": USER, "photo": "https://e.x/cat.jpg", "caption": "<i>cat</i>", "parse_mode": "HTML"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["caption"], json!("cat"));
    assert!(body["result"]["photo"][0]["file_id"].is_string());
    let (status, body) = f
        .call(
            "sendPhoto",
            json!({"chat_id": USER, "photo": "https://e.x/cat.jpg", "caption": "c".repeat(1025)}),
        )
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: message caption is too long")
    );
    let (status, body) = f
        .call(
            "sendDocument",
            json!({"chat_id": USER, "document": "https://e.x/price.pdf"}),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["document"]["file_name"], json!("price.pdf"));

    let (_, body) = f.send(USER, "v1").await?;
    let id = body["result"]["message_id"].clone();
    let (status, body) = f
        .call(
            "editMessageText",
            json!({"chat_id": USER, "message_id": id, "text": "v2"}),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["text"], json!("v2"));
    let (status, body) = f
        .call(
            "editMessageText",
            json!({"chat_id": USER, "message_id": id, "text": "v2"}),
        )
        .await?;
    assert_eq!(status, 400);
    assert!(description(&body).starts_with("Bad Request: message is not modified"));
    let (status, body) = f
        .call(
            "editMessageText",
            json!({"chat_id": USER, "message_id": 999, "text": "v3"}),
        )
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: message to edit not found")
    );

    let (status, _) = f
        .call("deleteMessage", json!({"chat_id": USER, "message_id": id}))
        .await?;
    assert_eq!(status, 200);
    let (status, body) = f
        .call("deleteMessage", json!({"chat_id": USER, "message_id": id}))
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: message to delete not found")
    );
    let last = f.fake.messages_to(TOKEN, USER).pop().ok_or("no message")?;
    assert!(last.edited && last.deleted);
    assert_eq!(last.text.as_deref(), Some("v2"));

    let resp = f
        .http
        .post(f.url(TOKEN, "sendPhoto"))
        .multipart_like()
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    Ok(())
}

/// reqwest is built without its `multipart` feature here; a hand-made body is enough.
trait MultipartLike {
    fn multipart_like(self) -> Self;
}

impl MultipartLike for reqwest::RequestBuilder {
    fn multipart_like(self) -> Self {
        self.header("content-type", "multipart/form-data; boundary=x")
            .body("--x\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n1\r\n--x--\r\n")
    }
}

#[tokio::test]
async fn keyboard_validation() -> TestResult {
    let f = Fixture::relaxed().await?;
    f.fake.open_chat(TOKEN, USER)?;
    let markup =
        |data: String| json!({"inline_keyboard": [[{"text": "b", "callback_data": data}]]});
    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "x", "reply_markup": markup("d".repeat(65))}),
        )
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: BUTTON_DATA_INVALID")
    );
    let (status, _) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "x", "reply_markup": markup("d".repeat(64))}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "x", "reply_markup": {"inline_keyboard": [[{"text": "b", "url": "e.x"}]]}}),
        )
        .await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: BUTTON_URL_INVALID")
    );
    let (status, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "x", "reply_markup": {"keyboard": [[{"text": "Share", "request_contact": true}]]}}),
        )
        .await?;
    assert_eq!(status, 200);
    assert!(
        body["result"].get("reply_markup").is_none(),
        "reply keyboards are not echoed"
    );
    Ok(())
}

#[tokio::test]
async fn chat_not_found_and_cannot_initiate() -> TestResult {
    let f = Fixture::relaxed().await?;
    let (status, body) = f.send(777, "hi").await?;
    assert_eq!(
        (status, description(&body)),
        (400, "Bad Request: chat not found")
    );
    let (status, body) = f.send(USER, "hi").await?;
    assert_eq!(
        (status, description(&body)),
        (
            403,
            "Forbidden: bot can't initiate conversation with a user"
        )
    );
    f.fake.send_text(TOKEN, USER, "hello").await?;
    let (status, _) = f.send(USER, "hi").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn per_chat_limit() -> TestResult {
    let f = Fixture::new(FakeConfig::default()).await?;
    f.fake.open_chat(TOKEN, USER)?;
    for i in 0..3 {
        let (status, _) = f.send(USER, &format!("m{i}")).await?;
        assert_eq!(status, 200, "burst of 3 allowed");
    }
    let (status, body) = f.send(USER, "one too many").await?;
    assert_eq!(status, 429);
    let retry = body["parameters"]["retry_after"]
        .as_u64()
        .ok_or("no retry_after")?;
    assert!(retry >= 1);
    assert_eq!(body["error_code"], json!(429));
    assert_eq!(
        description(&body),
        format!("Too Many Requests: retry after {retry}")
    );
    assert_eq!(f.fake.stats().rate_limited_429, 1);
    assert_eq!(f.fake.messages_to(TOKEN, USER).len(), 3);
    Ok(())
}

#[tokio::test]
async fn per_bot_limit() -> TestResult {
    let f = Fixture::new(FakeConfig {
        bot_rate_per_sec: 1.0,
        bot_burst: 3,
        chat_burst: 100,
        chat_rate_per_sec: 100.0,
        ..FakeConfig::default()
    })
    .await?;
    for user in 1..=4 {
        f.fake.add_user(user, "U", None, None, None);
        f.fake.open_chat(TOKEN, user)?;
    }
    for user in 1..=3 {
        assert_eq!(f.send(user, "x").await?.0, 200);
    }
    let (status, body) = f.send(4, "x").await?;
    assert_eq!(status, 429);
    assert!(body["parameters"]["retry_after"].as_u64() >= Some(1));
    Ok(())
}

/// A webhook receiver: records (secret header, update) and fails the first `fail` POSTs.
struct Hook {
    seen: mpsc::UnboundedSender<(Option<String>, Value)>,
    fail: AtomicUsize,
    answer: Mutex<Value>,
}

async fn hook_handler(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    Json(update): Json<Value>,
) -> axum::response::Response {
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Decide the answer before reporting the POST, so a test reacting to the report
    // can't change the answer to this very POST.
    let failing = hook
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answer = hook.answer.lock().map(|a| a.clone()).unwrap_or_default();
    let _ = hook.seen.send((secret, update));
    if failing {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(answer).into_response()
}

async fn start_hook(
    fail: usize,
) -> Result<
    (
        String,
        Arc<Hook>,
        mpsc::UnboundedReceiver<(Option<String>, Value)>,
    ),
    std::io::Error,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hook = Arc::new(Hook {
        seen: tx,
        fail: AtomicUsize::new(fail),
        answer: Mutex::new(json!({})),
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook_handler))
        .with_state(Arc::clone(&hook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, hook, rx))
}

fn fast_retries() -> FakeConfig {
    FakeConfig {
        enforce_limits: false,
        webhook_retry_delays: vec![Duration::from_millis(20), Duration::from_millis(20)],
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn webhook_delivery_with_secret_and_retry() -> TestResult {
    let f = Fixture::new(fast_retries()).await?;
    // Queued before the webhook exists: setWebhook must push it.
    let early = f.fake.send_text(TOKEN, USER, "/start").await?;

    let (url, hook, mut seen) = start_hook(1).await?;
    let (status, body) = f
        .call(
            "setWebhook",
            json!({"url": url, "secret_token": "s3cr3t_-"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await?
        .ok_or("hook closed")?;
    assert_eq!(first.0.as_deref(), Some("s3cr3t_-"));
    assert_eq!(first.1["update_id"], json!(early.update_id));
    // That first POST got a 500; the retry brings the same update again.
    let retry = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await?
        .ok_or("hook closed")?;
    assert_eq!(retry.1, first.1);

    // A webhook answer may carry a method call, executed by Telegram.
    if let Ok(mut answer) = hook.answer.lock() {
        *answer = json!({"method": "sendMessage", "chat_id": USER, "text": "pong"});
    }
    hook.fail.store(1, Ordering::SeqCst);
    let d = f.fake.send_text(TOKEN, USER, "ping").await?;
    assert_eq!(d.webhook_status, Some(200));
    assert_eq!(d.webhook_attempts, 2);
    let (_, update) = seen.recv().await.ok_or("hook closed")?;
    assert_eq!(update["update_id"], json!(d.update_id));
    assert_eq!(update["message"]["text"], json!("ping"));
    assert_eq!(update["message"]["from"]["first_name"], json!("Anna"));
    assert_eq!(update["message"]["chat"]["type"], json!("private"));
    let sent = f
        .fake
        .wait_for_messages(TOKEN, USER, 1, Duration::from_secs(2))
        .await?;
    assert_eq!(sent[0].text.as_deref(), Some("pong"));

    let info = f.fake.webhook(TOKEN).ok_or("no webhook")?;
    assert_eq!(info.url, url);
    assert_eq!(info.secret_token.as_deref(), Some("s3cr3t_-"));
    let (_, body) = f.call("getWebhookInfo", json!({})).await?;
    assert_eq!(body["result"]["url"], json!(url));
    assert_eq!(body["result"]["pending_update_count"], json!(0));
    assert!(body["result"]["last_error_message"]
        .as_str()
        .is_some_and(|m| m.contains("500")));

    let (status, body) = f.call("getUpdates", json!({})).await?;
    assert_eq!(status, 409);
    assert_eq!(
        description(&body),
        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
    );

    let (status, body) = f
        .call("setWebhook", json!({"url": "https://example.com/hook"}))
        .await?;
    assert_eq!(status, 400);
    assert!(description(&body).starts_with("Bad Request: bad webhook:"));
    let (status, _) = f
        .call(
            "setWebhook",
            json!({"url": url, "secret_token": "no spaces"}),
        )
        .await?;
    assert_eq!(status, 400);

    let stats = f.fake.stats();
    assert_eq!(stats.webhook_failures, 2);
    assert_eq!(stats.webhook_posts, 4);
    Ok(())
}

#[tokio::test]
async fn webhook_gives_up_after_retries() -> TestResult {
    let f = Fixture::new(fast_retries()).await?;
    let (url, _hook, mut seen) = start_hook(usize::MAX).await?;
    f.call("setWebhook", json!({"url": url})).await?;
    let d = f.fake.send_text(TOKEN, USER, "hi").await?;
    assert_eq!(d.webhook_status, Some(500));
    assert_eq!(d.webhook_attempts, 3);
    assert!(d.webhook_error.is_some());
    for _ in 0..3 {
        seen.recv().await.ok_or("hook closed")?;
    }
    // An unreachable webhook is a connection error, not an HTTP status.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead = format!("http://{}/hook", closed.local_addr()?);
    drop(closed);
    f.call("setWebhook", json!({"url": dead})).await?;
    let d = f.fake.send_text(TOKEN, USER, "again").await?;
    assert_eq!(d.webhook_status, None);
    assert_eq!(d.webhook_error.as_deref(), Some("Connection refused"));
    Ok(())
}

#[tokio::test]
async fn redeliver_sends_the_same_update() -> TestResult {
    let f = Fixture::new(fast_retries()).await?;
    let (url, _hook, mut seen) = start_hook(0).await?;
    f.call("setWebhook", json!({"url": url})).await?;
    let d = f.fake.send_text(TOKEN, USER, "/start promo").await?;
    let again = f.fake.redeliver(TOKEN, d.update_id).await?;
    assert_eq!(again.update_id, d.update_id);
    let (_, a) = seen.recv().await.ok_or("hook closed")?;
    let (_, b) = seen.recv().await.ok_or("hook closed")?;
    assert_eq!(a, b);
    assert_eq!(a["update_id"], json!(d.update_id));
    assert_eq!(
        a["message"]["entities"],
        json!([{"offset": 0, "length": 6, "type": "bot_command"}])
    );
    assert!(f.fake.redeliver(TOKEN, d.update_id + 100).await.is_err());
    Ok(())
}

#[tokio::test]
async fn polling_offsets_and_long_poll() -> TestResult {
    let f = Fixture::relaxed().await?;
    let d1 = f.fake.send_text(TOKEN, USER, "one").await?;
    let d2 = f.fake.share_contact(TOKEN, USER, "+79990001122").await?;
    assert_eq!(d2.update_id, d1.update_id + 1);

    let (status, body) = f.call("getUpdates", json!({})).await?;
    assert_eq!(status, 200);
    let updates = body["result"].as_array().ok_or("not an array")?;
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["update_id"], json!(d1.update_id));
    assert_eq!(updates[0]["message"]["text"], json!("one"));
    assert_eq!(updates[0]["message"]["message_id"], json!(1));
    assert_eq!(updates[1]["message"]["message_id"], json!(2));
    assert_eq!(
        updates[1]["message"]["contact"],
        json!({"phone_number": "+79990001122", "first_name": "Anna", "last_name": "K", "user_id": USER})
    );

    // The offset confirms everything below it; query-string parameters work too.
    let resp = f
        .http
        .get(format!(
            "{}?offset={}&limit=10",
            f.url(TOKEN, "getUpdates"),
            d2.update_id
        ))
        .send()
        .await?;
    let body: Value = resp.json().await?;
    assert_eq!(body["result"].as_array().map(Vec::len), Some(1));
    let (_, body) = f
        .call("getUpdates", json!({"offset": d2.update_id + 1}))
        .await?;
    assert_eq!(body["result"], json!([]));

    // A long poll returns as soon as an update arrives.
    let started = Instant::now();
    let poll = {
        let http = f.http.clone();
        let url = f.url(TOKEN, "getUpdates");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"offset": d2.update_id + 1, "timeout": 5}))
                .send()
                .await?
                .json::<Value>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d3 = f.fake.send_text(TOKEN, USER, "three").await?;
    let body = poll.await??;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(body["result"][0]["update_id"], json!(d3.update_id));

    // A second getUpdates terminates the one waiting.
    let waiting = {
        let http = f.http.clone();
        let url = f.url(TOKEN, "getUpdates");
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"offset": d3.update_id + 1, "timeout": 5}))
                .send()
                .await?;
            let status = resp.status().as_u16();
            Ok::<_, reqwest::Error>((status, resp.json::<Value>().await?))
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = f
        .call("getUpdates", json!({"offset": d3.update_id + 1}))
        .await?;
    assert_eq!(status, 200);
    let (status, body) = waiting.await??;
    assert_eq!(status, 409);
    assert_eq!(
        description(&body),
        "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
    );
    Ok(())
}

async fn poll_one(f: &Fixture, offset: i64) -> Result<Value, Box<dyn std::error::Error>> {
    let (_, body) = f.call("getUpdates", json!({"offset": offset})).await?;
    let update = body["result"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .ok_or("no update")?;
    Ok(update)
}

#[tokio::test]
async fn block_and_unblock() -> TestResult {
    let f = Fixture::relaxed().await?;
    f.fake.send_text(TOKEN, USER, "/start").await?;
    let d = f.fake.block(TOKEN, USER).await?;
    let update = poll_one(&f, d.update_id).await?;
    let member = &update["my_chat_member"];
    assert_eq!(member["old_chat_member"]["status"], json!("member"));
    assert_eq!(member["new_chat_member"]["status"], json!("kicked"));
    assert_eq!(member["new_chat_member"]["user"]["id"], json!(123_456));
    assert_eq!(member["chat"]["id"], json!(USER));

    let (status, body) = f.send(USER, "still there?").await?;
    assert_eq!(
        (status, description(&body)),
        (403, "Forbidden: bot was blocked by the user")
    );

    let d = f.fake.unblock(TOKEN, USER).await?;
    let update = poll_one(&f, d.update_id).await?;
    assert_eq!(
        update["my_chat_member"]["new_chat_member"]["status"],
        json!("member")
    );
    assert_eq!(f.send(USER, "welcome back").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn press_button_and_answer() -> TestResult {
    let f = Fixture::relaxed().await?;
    f.fake.send_text(TOKEN, USER, "/start").await?;
    let (_, body) = f
        .call(
            "sendMessage",
            json!({"chat_id": USER, "text": "Pick", "reply_markup": {"inline_keyboard": [[{"text": "A", "callback_data": "pick:a"}]]}}),
        )
        .await?;
    let message_id = body["result"]["message_id"].as_i64().ok_or("no id")?;

    let d = f
        .fake
        .press_button(TOKEN, USER, message_id, "pick:a")
        .await?;
    let update = poll_one(&f, d.update_id).await?;
    let query = &update["callback_query"];
    assert_eq!(query["data"], json!("pick:a"));
    assert_eq!(query["from"]["id"], json!(USER));
    assert_eq!(query["message"]["message_id"], json!(message_id));
    assert_eq!(query["message"]["text"], json!("Pick"));
    assert!(query["chat_instance"].is_string());
    let id = query["id"].as_str().ok_or("no id")?;

    let (status, _) = f
        .call(
            "answerCallbackQuery",
            json!({"callback_query_id": id, "text": "Done", "show_alert": true}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, body) = f
        .call("answerCallbackQuery", json!({"callback_query_id": id}))
        .await?;
    assert_eq!(
        (status, description(&body)),
        (
            400,
            "Bad Request: query is too old and response timeout expired or query id is invalid"
        )
    );
    let answers = f.fake.callback_answers(TOKEN);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].text.as_deref(), Some("Done"));
    assert!(answers[0].show_alert);

    // Only buttons that exist can be pressed.
    assert!(f
        .fake
        .press_button(TOKEN, USER, message_id, "pick:zzz")
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn control_api() -> TestResult {
    let f = Fixture::relaxed().await?;
    let base = format!("{}/_fake", f.fake.api_url());
    let resp = f
        .http
        .post(format!("{base}/bots"))
        .json(&json!({"token": "777:other", "username": "other_bot"}))
        .send()
        .await?;
    assert_eq!(resp.json::<Value>().await?, json!({"id": 777}));
    let resp = f
        .http
        .post(format!("{base}/users"))
        .json(&json!({"id": 55, "first_name": "Ivan"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);

    let resp = f
        .http
        .post(format!("{base}/bots/777/users/55/text"))
        .json(&json!({"text": "/start"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let delivery: Value = resp.json().await?;
    assert!(delivery["update_id"].is_i64());
    assert_eq!(delivery["webhook_status"], Value::Null);

    let resp = f
        .http
        .post(format!("{}/bot777:other/sendMessage", f.fake.api_url()))
        .json(&json!({"chat_id": 55, "text": "Hi Ivan"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let messages: Value = f
        .http
        .get(format!(
            "{base}/bots/777/chats/55/messages?min=1&timeout_ms=1000"
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(messages[0]["text"], json!("Hi Ivan"));
    assert_eq!(messages[0]["message_id"], json!(2));

    let resp = f
        .http
        .post(format!("{base}/bots/777/users/999/text"))
        .json(&json!({"text": "x"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.json::<Value>().await?["error"].is_string());

    let stats: Value = f
        .http
        .get(format!("{base}/stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stats["sent_messages"], json!(1));
    assert_eq!(stats["by_method"]["sendMessage"], json!(1));
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_serving() -> TestResult {
    let f = Fixture::relaxed().await?;
    let url = f.url(TOKEN, "getMe");
    f.fake.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = reqwest::Client::new();
    assert!(client.get(url).send().await.is_err());
    Ok(())
}

#[test]
fn handle_is_shareable() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<FakeTelegram>();
}

#[tokio::test]
async fn refuses_non_loopback() -> TestResult {
    let any = "0.0.0.0:0".parse()?;
    let err = voronka_fakes::telegram::run(any, FakeConfig::default(), Vec::new()).await;
    assert_eq!(
        err.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::InvalidInput)
    );
    Ok(())
}

#[tokio::test]
async fn deleting_the_webhook_returns_pending_updates_to_polling() -> TestResult {
    let f = Fixture::new(fast_retries()).await?;
    f.fake.send_text(TOKEN, USER, "/start").await?;
    let (status, body) = f.call("getWebhookInfo", json!({})).await?;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["url"], json!(""));
    assert_eq!(body["result"]["pending_update_count"], json!(1));
    let (url, _hook, _seen) = start_hook(usize::MAX).await?;
    f.call(
        "setWebhook",
        json!({"url": url, "drop_pending_updates": true}),
    )
    .await?;
    f.call("deleteWebhook", json!({})).await?;
    let (_, body) = f.call("getUpdates", json!({})).await?;
    assert_eq!(
        body["result"],
        json!([]),
        "dropped with drop_pending_updates"
    );
    let d = f.fake.send_text(TOKEN, USER, "after").await?;
    assert_eq!(d.webhook_status, None);
    let (_, body) = f.call("getUpdates", json!({})).await?;
    assert_eq!(body["result"][0]["update_id"], json!(d.update_id));
    Ok(())
}
