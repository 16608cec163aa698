//! The Telegram client against a tiny local Bot API stand-in: error classification and
//! that the token never leaks into errors.

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::time::Duration;
use voronka_channels::telegram::{render_message, ApiError, TelegramAdapter, TelegramClient};
use voronka_channels::{ChannelAdapter, RenderContext, RenderedPart, SendError};
use voronka_core::message::OutboundMessage;

const TOKEN: &str = "123456789:AAH-very-SECRET-token_xyz";
const SECRET: &str = "SECRET-token";

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(result: Value) -> Response {
    reply(200, json!({ "ok": true, "result": result }))
}

fn err(code: u16, description: &str) -> Response {
    reply(
        code,
        json!({ "ok": false, "error_code": code, "description": description }),
    )
}

/// Answers by method and, for sends, by `chat_id`, which picks the failure to simulate.
async fn fake(uri: Uri, body: Bytes) -> Response {
    let prefix = format!("/bot{TOKEN}/");
    let Some(method) = uri.path().strip_prefix(&prefix) else {
        return err(404, "Not Found");
    };
    let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match method {
        "getMe" => ok(
            json!({ "id": 123456789, "is_bot": true, "first_name": "Voronka",
                              "username": "voronka_bot", "can_join_groups": true }),
        ),
        "setWebhook" | "deleteWebhook" | "answerCallbackQuery" | "deleteMessage" => ok(json!(true)),
        "getWebhookInfo" => ok(json!({ "url": "", "has_custom_certificate": false,
                                       "pending_update_count": 0 })),
        "getUpdates" => ok(json!([
            { "update_id": 5, "message": { "message_id": 1, "date": 1, "text": "hi",
              "chat": { "id": 7, "type": "private" }, "from": { "id": 7, "is_bot": false, "first_name": "A" } } },
            { "update_id": 6, "message_reaction": { "chat": { "id": 7, "type": "private" },
              "message_id": 1, "date": 1, "old_reaction": [], "new_reaction": [] } },
            { "update_id": 7, "some_future_kind": { "x": [1, 2, 3] } }
        ])),
        "sendMessage" => match params["chat_id"].as_i64() {
            Some(1) => ok(json!({
                "message_id": 4242, "date": 1, "text": params["text"],
                "chat": { "id": 1, "type": "private" }
            })),
            Some(2) => reply(
                429,
                json!({ "ok": false, "error_code": 429,
                        "description": "Too Many Requests: retry after 3",
                        "parameters": { "retry_after": 3 } }),
            ),
            Some(3) => err(403, "Forbidden: bot was blocked by the user"),
            Some(4) => err(400, "Bad Request: chat not found"),
            Some(5) => err(500, "Internal Server Error"),
            Some(6) => err(401, "Unauthorized"),
            Some(7) => (
                StatusCode::BAD_GATEWAY,
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response(),
            Some(8) => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                ok(json!({ "message_id": 1 }))
            }
            Some(9) => ok(json!({ "unexpected": true })),
            Some(10) => err(403, "Forbidden: user is deactivated"),
            _ => err(400, "Bad Request: chat_id is empty"),
        },
        _ => err(404, "Not Found"),
    }
}

async fn start() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(fake);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}")
}

fn http() -> reqwest::Client {
    // A proxy from the environment must not intercept loopback test traffic.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn adapter(base: &str, token: &str) -> TelegramAdapter {
    let client = TelegramClient::new(http(), base, token).with_timeout(Duration::from_millis(500));
    TelegramAdapter::new(client, None)
}

fn text_part() -> RenderedPart {
    render_message(
        &OutboundMessage::text("Hi <there>"),
        &RenderContext::default(),
    )
    .remove(0)
}

fn assert_no_token(what: &dyn std::fmt::Debug, shown: &str) {
    for secret in [TOKEN, SECRET] {
        assert!(!shown.contains(secret), "token leaked in {what:?}: {shown}");
    }
}

fn check_no_token(e: &SendError) {
    assert_no_token(e, &e.to_string());
    assert_no_token(e, &format!("{e:?}"));
}

#[tokio::test]
async fn send_success_returns_the_message_id() {
    let base = start().await;
    let sent = adapter(&base, TOKEN)
        .send("1", &text_part())
        .await
        .expect("sent");
    assert_eq!(sent.provider_message_id, "4242");
}

#[tokio::test]
async fn errors_are_classified() {
    let base = start().await;
    let a = adapter(&base, TOKEN);
    let part = text_part();
    let send = |to: &'static str| {
        let a = a.clone();
        let part = part.clone();
        async move { a.send(to, &part).await.expect_err(to) }
    };

    let e = send("2").await;
    check_no_token(&e);
    assert_eq!(
        e,
        SendError::RateLimited {
            retry_after: Duration::from_secs(3)
        }
    );

    let e = send("3").await;
    check_no_token(&e);
    assert_eq!(
        e,
        SendError::Blocked {
            reason: "Forbidden: bot was blocked by the user".into()
        }
    );
    assert!(
        matches!(send("10").await, SendError::Blocked { reason } if reason.contains("deactivated"))
    );

    let e = send("4").await;
    check_no_token(&e);
    assert_eq!(
        e,
        SendError::Refused {
            reason: "Bad Request: chat not found".into()
        }
    );

    let e = send("5").await;
    check_no_token(&e);
    assert!(matches!(e, SendError::Transient { .. }), "{e:?}");
    assert!(e.is_retryable());

    let e = send("6").await;
    check_no_token(&e);
    assert!(matches!(e, SendError::Unauthorized { .. }), "{e:?}");

    let e = send("7").await;
    check_no_token(&e);
    assert!(matches!(e, SendError::Transient { .. }), "{e:?}");

    let e = send("8").await;
    check_no_token(&e);
    assert!(
        matches!(&e, SendError::Transient { reason } if reason.contains("timed out")),
        "{e:?}"
    );

    let e = send("9").await;
    check_no_token(&e);
    assert!(matches!(e, SendError::Transient { .. }), "{e:?}");
}

#[tokio::test]
async fn an_unknown_token_is_unauthorized() {
    let base = start().await;
    let e = adapter(&base, "999:REVOKED-SECRET-token")
        .send("1", &text_part())
        .await
        .expect_err("404");
    assert!(matches!(e, SendError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("REVOKED"));
}

#[tokio::test]
async fn connection_errors_are_transient_and_do_not_leak_the_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = TelegramClient::new(http(), &format!("http://{addr}"), TOKEN);
    let e = client.get_me().await.expect_err("refused");
    assert!(matches!(e, ApiError::Transport(_)), "{e:?}");
    assert_no_token(&e, &format!("{e} {e:?}"));
    let e = SendError::from(e);
    check_no_token(&e);
    assert!(matches!(e, SendError::Transient { .. }));
}

#[tokio::test]
async fn setup_calls_and_polling() {
    let base = start().await;
    let client = TelegramClient::new(http(), &base, TOKEN);
    let me = client.get_me().await.expect("getMe");
    assert_eq!(me.username.as_deref(), Some("voronka_bot"));
    client
        .set_webhook(
            "https://example.com/hook",
            "secret",
            voronka_channels::telegram::ALLOWED_UPDATES,
            true,
        )
        .await
        .expect("setWebhook");
    client.delete_webhook(false).await.expect("deleteWebhook");
    let info = client.get_webhook_info().await.expect("getWebhookInfo");
    assert_eq!(info["pending_update_count"], 0);
    client
        .answer_callback_query("q1", Some("Thanks"))
        .await
        .expect("answer");
    client.delete_message(1, 2).await.expect("delete");

    let updates = client.get_updates(Some(5), 0, 100).await.expect("poll");
    let ids: Vec<i64> = updates.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![5, 6, 7]);
    let events: Vec<_> = updates
        .iter()
        .map(|(_, u)| voronka_channels::telegram::parse_update(u).expect("parse"))
        .collect();
    assert_eq!(
        events.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 0, 0]
    );

    let a = TelegramAdapter::new(client, None);
    a.acknowledge_button("q1", None).await.expect("ack");
}

#[tokio::test]
async fn bad_method_names_never_reach_the_server() {
    let base = start().await;
    let a = adapter(&base, TOKEN);
    let part = RenderedPart {
        method: "../getMe".into(),
        body: json!({}),
    };
    assert!(matches!(
        a.send("1", &part).await,
        Err(SendError::Refused { .. })
    ));
}
