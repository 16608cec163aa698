//! The outgoing HTTP client against a local server. Every connection goes to 127.0.0.1;
//! requests aimed anywhere else must be refused before connecting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::outgoing::{
    OutgoingClient, OutgoingError, OutgoingPolicy, OutgoingRequest, OutgoingResponse, USER_AGENT,
};
use axum::extract::Query;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn echo(method: Method, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = serde_json::json!({
        "method": method.as_str(),
        "body": body,
        "user_agent": header("user-agent"),
        "token": header("x-token"),
        "authorization": header("authorization"),
        "content_type": header("content-type"),
    });
    // Deliberately not application/json: the client parses JSON whatever the label.
    ([(header::CONTENT_TYPE, "text/plain")], reply.to_string()).into_response()
}

async fn redirect(Query(query): Query<HashMap<String, String>>) -> Response {
    let to = query
        .get("to")
        .cloned()
        .unwrap_or_else(|| "/json".to_owned());
    let status = query
        .get("status")
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FOUND);
    (status, [(header::LOCATION, to)]).into_response()
}

/// Starts the test server on an ephemeral 127.0.0.1 port.
async fn server() -> SocketAddr {
    let app = Router::new()
        .route(
            "/json",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::HeaderName::from_static("x-reply"), "Yes"),
                    ],
                    r#"{"ok":true,"n":1}"#,
                )
            }),
        )
        .route("/text", get(|| async { "hello" }))
        .route("/echo", any(echo))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/big", get(|| async { "a".repeat(4096) }))
        .route("/redirect", any(redirect))
        .route("/loop", get(|| async { Redirect::to("/loop") }))
        .route("/see-other", post(|| async { Redirect::to("/echo") }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

/// A server that streams an endless chunked body without announcing its length.
async fn endless_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("200\r\n{}\r\n", "b".repeat(0x200));
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    addr
}

fn client_allowing(allow: &str) -> OutgoingClient {
    OutgoingClient::new(OutgoingPolicy {
        allow: OutgoingPolicy::parse_allow(allow).expect("valid allow-list"),
        ..OutgoingPolicy::default()
    })
}

async fn fetch(client: &OutgoingClient, url: String) -> Result<OutgoingResponse, OutgoingError> {
    client
        .send(OutgoingRequest::new(Method::GET, url).timeout(Duration::from_secs(5)))
        .await
}

#[tokio::test]
async fn refuses_loopback_without_allow_list() {
    let addr = server().await;
    let client = OutgoingClient::new(OutgoingPolicy::default());
    let err = fetch(&client, format!("http://{addr}/json"))
        .await
        .expect_err("loopback is refused");
    assert_eq!(err.code(), "forbidden_address");
    assert_eq!(
        err.to_string(),
        "127.0.0.1 is a loopback address; add it to outgoing_allow to permit it"
    );
}

#[tokio::test]
async fn refuses_other_spellings_of_loopback() {
    let addr = server().await;
    let port = addr.port();
    let client = OutgoingClient::new(OutgoingPolicy::default());
    for url in [
        format!("http://2130706433:{port}/json"),
        format!("http://0x7f.1:{port}/json"),
        format!("http://[::ffff:127.0.0.1]:{port}/json"),
        format!("http://[::1]:{port}/json"),
        format!("http://0.0.0.0:{port}/json"),
    ] {
        let err = fetch(&client, url.clone()).await.expect_err(&url);
        assert_eq!(err.code(), "forbidden_address", "{url}: {err}");
    }
}

#[tokio::test]
async fn allow_listed_address_is_reached_and_json_parsed() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let response = fetch(&client, format!("http://{addr}/json"))
        .await
        .expect("allowed");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json,
        Some(serde_json::json!({ "ok": true, "n": 1 }))
    );
    assert_eq!(response.body.as_ref(), br#"{"ok":true,"n":1}"#);
    assert_eq!(response.header("X-Reply"), Some("Yes"));
    assert!(response
        .headers
        .iter()
        .all(|(name, _)| *name == name.to_lowercase()));
}

#[tokio::test]
async fn port_bound_rule_only_opens_its_port() {
    let addr = server().await;
    let open = client_allowing(&format!("127.0.0.1:{}", addr.port()));
    assert_eq!(
        fetch(&open, format!("http://{addr}/text"))
            .await
            .expect("rule's port")
            .status,
        200
    );
    let other_port = if addr.port() == 65535 {
        1
    } else {
        addr.port() + 1
    };
    let closed = client_allowing(&format!("127.0.0.1:{other_port}"));
    let err = fetch(&closed, format!("http://{addr}/text"))
        .await
        .expect_err("other port");
    assert_eq!(err.code(), "forbidden_address");
}

#[tokio::test]
async fn sends_method_headers_body_and_user_agent() {
    let addr = server().await;
    let client = client_allowing("127.0.0.0/8");
    let request = OutgoingRequest::new(Method::PUT, format!("http://{addr}/echo"))
        .header("X-Token", "t0ken")
        .json(&serde_json::json!({ "contact": { "id": 7 } }))
        .timeout(Duration::from_secs(5));
    let response = client.send(request).await.expect("sent");
    assert_eq!(response.header("content-type"), Some("text/plain"));
    let json = response.json.expect("JSON parsed despite text/plain");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["body"], r#"{"contact":{"id":7}}"#);
    assert_eq!(json["token"], "t0ken");
    assert_eq!(json["content_type"], "application/json");
    assert_eq!(json["user_agent"], USER_AGENT);
    assert!(USER_AGENT.starts_with("Voronka/"));
}

#[tokio::test]
async fn non_json_body_has_no_json() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let response = fetch(&client, format!("http://{addr}/text"))
        .await
        .expect("allowed");
    assert_eq!(response.body.as_ref(), b"hello");
    assert_eq!(response.json, None);
}

#[tokio::test]
async fn times_out_when_server_is_slow() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let started = Instant::now();
    let err = client
        .send(
            OutgoingRequest::new(Method::GET, format!("http://{addr}/slow"))
                .timeout(Duration::from_millis(300)),
        )
        .await
        .expect_err("too slow");
    assert_eq!(err.code(), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn request_timeout_is_capped_by_policy() {
    let addr = server().await;
    let client = OutgoingClient::new(OutgoingPolicy {
        allow: OutgoingPolicy::parse_allow("127.0.0.1").expect("valid"),
        timeout_max: Duration::from_millis(300),
        ..OutgoingPolicy::default()
    });
    let started = Instant::now();
    let err = client
        .send(
            OutgoingRequest::new(Method::GET, format!("http://{addr}/slow"))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .expect_err("capped");
    assert!(matches!(err, OutgoingError::Timeout(d) if d == Duration::from_millis(300)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn refuses_response_larger_than_limit() {
    let addr = server().await;
    let client = OutgoingClient::new(OutgoingPolicy {
        allow: OutgoingPolicy::parse_allow("127.0.0.1").expect("valid"),
        max_response_bytes: 1024,
        ..OutgoingPolicy::default()
    });
    let err = fetch(&client, format!("http://{addr}/big"))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), "too_large");
    assert!(fetch(&client, format!("http://{addr}/json")).await.is_ok());
}

#[tokio::test]
async fn cuts_streamed_body_past_limit() {
    let addr = endless_server().await;
    let client = OutgoingClient::new(OutgoingPolicy {
        allow: OutgoingPolicy::parse_allow("127.0.0.1").expect("valid"),
        max_response_bytes: 64 * 1024,
        ..OutgoingPolicy::default()
    });
    let err = fetch(&client, format!("http://{addr}/"))
        .await
        .expect_err("endless body");
    assert_eq!(err.code(), "too_large");
}

#[tokio::test]
async fn follows_redirects_between_allowed_addresses() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let response = fetch(&client, format!("http://{addr}/redirect?to=/json"))
        .await
        .expect("followed");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json,
        Some(serde_json::json!({ "ok": true, "n": 1 }))
    );
}

#[tokio::test]
async fn refuses_redirect_to_address_outside_allow_list() {
    let addr = server().await;
    let port = addr.port();
    // The rule names the server's port, so the same address on another port is forbidden.
    let client = client_allowing(&format!("127.0.0.1:{port}"));
    let other_port = if port == 65535 { 1 } else { port + 1 };
    for target in [
        format!("http://127.0.0.1:{other_port}/json"),
        format!("http://127.0.0.2:{port}/json"),
        format!("http://[::1]:{port}/json"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let err = fetch(&client, format!("http://{addr}/redirect?to={target}"))
            .await
            .expect_err(&target);
        assert_eq!(err.code(), "forbidden_address", "{target}: {err}");
    }
}

#[tokio::test]
async fn refuses_redirect_to_other_schemes() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let err = fetch(
        &client,
        format!("http://{addr}/redirect?to=file:///etc/passwd"),
    )
    .await
    .expect_err("file redirect");
    assert_eq!(err.code(), "invalid_url");
}

#[tokio::test]
async fn stops_after_max_redirects() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let err = fetch(&client, format!("http://{addr}/loop"))
        .await
        .expect_err("loop");
    assert_eq!(err.code(), "too_many_redirects");
    assert!(matches!(err, OutgoingError::TooManyRedirects(3)));
}

#[tokio::test]
async fn see_other_turns_post_into_get_without_body() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let request = OutgoingRequest::new(Method::POST, format!("http://{addr}/see-other"))
        .json(&serde_json::json!({ "a": 1 }))
        .timeout(Duration::from_secs(5));
    let json = client
        .send(request)
        .await
        .expect("followed")
        .json
        .expect("echo");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["body"], "");
    assert_eq!(json["content_type"], "");
}

#[tokio::test]
async fn temporary_redirect_keeps_method_and_body() {
    let addr = server().await;
    let client = client_allowing("127.0.0.1");
    let request = OutgoingRequest::new(
        Method::POST,
        format!("http://{addr}/redirect?to=/echo&status=307"),
    )
    .json(&serde_json::json!({ "a": 1 }))
    .timeout(Duration::from_secs(5));
    let json = client
        .send(request)
        .await
        .expect("followed")
        .json
        .expect("echo");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["body"], r#"{"a":1}"#);
}

#[tokio::test]
async fn redirect_to_another_host_drops_credentials() {
    let addr = server().await;
    let port = addr.port();
    let client = client_allowing("127.0.0.1");
    // "localhost" only counts as another host when it resolves to nothing but 127.0.0.1;
    // otherwise the hop is refused, which is checked elsewhere.
    if !localhost_is_only_127_0_0_1(port).await {
        return;
    }
    let request = OutgoingRequest::new(
        Method::GET,
        format!("http://{addr}/redirect?to=http://localhost:{port}/echo"),
    )
    .header("Authorization", "Bearer s3cret")
    .header("X-Token", "kept")
    .timeout(Duration::from_secs(5));
    let json = client
        .send(request)
        .await
        .expect("followed")
        .json
        .expect("echo");
    assert_eq!(json["authorization"], "");
    assert_eq!(json["token"], "kept");
}

async fn localhost_is_only_127_0_0_1(port: u16) -> bool {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .map(Iterator::collect)
        .unwrap_or_default();
    !addrs.is_empty()
        && addrs
            .iter()
            .all(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
}

#[tokio::test]
async fn refuses_localhost_name_without_allow_list() {
    let addr = server().await;
    let client = OutgoingClient::new(OutgoingPolicy::default());
    let err = fetch(&client, format!("http://localhost:{}/json", addr.port()))
        .await
        .expect_err("localhost is refused");
    assert_eq!(err.code(), "forbidden_address");
    let message = err.to_string();
    assert!(message.starts_with("localhost resolves to "), "{message}");
    assert!(message.contains("loopback address"), "{message}");
}

#[tokio::test]
async fn localhost_name_follows_the_allow_list() {
    let addr = server().await;
    let port = addr.port();
    let client = client_allowing(&format!("127.0.0.1:{port}"));
    let result = fetch(&client, format!("http://localhost:{port}/json")).await;
    if localhost_is_only_127_0_0_1(port).await {
        assert_eq!(result.expect("allow-listed name").status, 200);
    } else {
        // Any other address behind the name (such as ::1) is not covered by the rule.
        assert_eq!(
            result.expect_err("partly covered").code(),
            "forbidden_address"
        );
    }
}

#[tokio::test]
async fn refuses_non_http_schemes_and_bad_urls() {
    let client = client_allowing("127.0.0.1");
    for url in [
        "ftp://127.0.0.1/file",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "localhost:8080/json",
        "not a url",
        "http://",
    ] {
        let err = fetch(&client, url.to_owned()).await.expect_err(url);
        assert_eq!(err.code(), "invalid_url", "{url}: {err}");
    }
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let client = client_allowing("127.0.0.1");
    let err = fetch(&client, format!("http://{addr}/"))
        .await
        .expect_err("nothing listens");
    assert_eq!(err.code(), "connect", "{err}");
}

#[tokio::test]
async fn errors_never_contain_header_values() {
    let addr = server().await;
    let client = OutgoingClient::new(OutgoingPolicy::default());
    let request = OutgoingRequest::new(Method::GET, format!("http://{addr}/json"))
        .header("Authorization", "Bearer topsecret")
        .timeout(Duration::from_secs(5));
    let err = client.send(request).await.expect_err("refused");
    assert!(!format!("{err} {err:?}").contains("topsecret"));

    let bad = OutgoingRequest::new(Method::GET, format!("http://{addr}/json"))
        .header("X-Key", "topsecret\r\nInjected: 1");
    let err = client.send(bad).await.expect_err("invalid header");
    assert_eq!(err.code(), "invalid_request");
    assert!(!format!("{err} {err:?}").contains("topsecret"));
}
