//! End-to-end tests of the HTTP API: the real router on 127.0.0.1:0 over a fresh store
//! (SQLite, and PostgreSQL when reachable), driven with reqwest.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use voronka_core::apikey;
use voronka_core::crypto::SecretKey;
use voronka_core::role::Scope;
use voronka_core::WorkspaceId;
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::{DynStore, NewApiKey};

/// A running server over a fresh store.
struct Harness {
    base: String,
    http: reqwest::Client,
    store: DynStore,
    _db: TestStore,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(backend: Backend) -> Option<Harness> {
    let db = fresh_store(backend).await?;
    let store = db.store.clone();
    let state = AppState::new(store.clone(), SecretKey::generate());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(voronka_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Some(Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        store,
        _db: db,
        stop,
        server,
    })
}

/// A key with `scopes` in `ws`, created directly through the store.
async fn key(store: &DynStore, ws: WorkspaceId, scopes: &[Scope]) -> String {
    let g = apikey::generate();
    store
        .create_api_key(
            ws,
            NewApiKey {
                name: "test".into(),
                prefix: g.prefix,
                secret_hash: g.hash,
                scopes: scopes.to_vec(),
            },
        )
        .await
        .expect("create key");
    g.token
}

/// A workspace with an all-scopes key.
async fn workspace(h: &Harness, name: &str) -> (WorkspaceId, String) {
    let ws = h
        .store
        .create_workspace(name)
        .await
        .expect("create workspace")
        .id;
    (ws, key(&h.store, ws, &Scope::ALL).await)
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn field(&self) -> String {
        self.json()["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Harness {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        Answer {
            status,
            headers,
            text,
        }
    }

    /// Sends only the head of a JSON POST declaring `length` bytes of body, and reads the
    /// answer: how a body over the limit is refused without racing the body's upload.
    async fn head_only_post(&self, path: &str, token: &str, length: usize) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read answer");
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None, &[]).await
    }

    async fn delete(&self, path: &str, token: &str) -> Answer {
        self.send(Method::DELETE, path, Some(token), None, &[])
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(
            Method::POST,
            path,
            Some(token),
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    async fn post_raw(&self, path: &str, token: &str, ct: &str, body: &[u8]) -> Answer {
        self.send(
            Method::POST,
            path,
            Some(token),
            Some((ct, body.to_vec())),
            &[],
        )
        .await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(
            Method::PATCH,
            path,
            Some(token),
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    async fn count(&self, token: &str) -> u64 {
        let a = self.get("/api/v1/contacts/count", token).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.json()["count"].as_u64().expect("count")
    }

    async fn channel(&self, token: &str, name: &str) -> i64 {
        let a = self
            .post(
                "/api/v1/channels",
                token,
                json!({"kind": "webchat", "name": name}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json()["id"].as_i64().expect("channel id")
    }
}

fn proof() -> Value {
    json!({"source": "landing:spring", "at": "2026-01-01T10:00:00Z", "ip": "203.0.113.7", "text_shown": "Yes, send me offers"})
}

/// Generates one test per backend for each scenario; PostgreSQL ones skip when no
/// server answers (unless CI=true).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let h = super::start(voronka_store::testing::Backend::Sqlite).await.expect("sqlite store");
                super::$name(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match super::start(voronka_store::testing::Backend::Postgres).await {
                    Some(h) => super::$name(h).await,
                    None => eprintln!("skipped: no PostgreSQL"),
                }
            }
        }
    )*};
}

on_both_backends!(
    workspace_isolation,
    authentication_and_scopes,
    invalid_input_is_refused_and_writes_nothing,
    idempotency_keys,
    erasure_leaves_no_personal_data,
    contact_lifecycle,
    channels_keep_credentials_secret,
    api_keys_lifecycle,
    csv_import_and_export,
);

async fn workspace_isolation(h: Harness) {
    let (_a, ka) = workspace(&h, "A").await;
    let (_b, kb) = workspace(&h, "B").await;
    let ch_b = h.channel(&kb, "B bot").await;
    let b = h
        .post(
            "/api/v1/contacts",
            &kb,
            json!({"first_name": "Boris", "phone": "+79990000001", "tags": ["b-only"],
                   "identities": [{"channel_id": ch_b, "external_id": "b-1"}]}),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.text);
    let b = b.json();
    let bid = b["id"].as_i64().expect("id");
    let b_identity = b["identities"][0]["id"].as_i64().expect("identity id");
    let tags_b = h.get("/api/v1/tags", &kb).await.json();
    let b_tag = tags_b[0]["id"].as_i64().expect("tag id");
    let a = h
        .post("/api/v1/contacts", &ka, json!({"first_name": "Anna"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let aid = a.json()["id"].as_i64().expect("id");

    for (method, path, body) in [
        (Method::GET, format!("/api/v1/contacts/{bid}"), None),
        (
            Method::PATCH,
            format!("/api/v1/contacts/{bid}"),
            Some(json!({"first_name": "X"})),
        ),
        (Method::DELETE, format!("/api/v1/contacts/{bid}"), None),
        (
            Method::GET,
            format!("/api/v1/contacts/{bid}/identities"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/contacts/{bid}/identities/{b_identity}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/contacts/{aid}/identities/{b_identity}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/contacts/{bid}/tags"),
            Some(json!({"tags": ["x"]})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/contacts/{bid}/tags/b-only"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/contacts/{bid}/fields"),
            Some(json!({"fields": {}})),
        ),
        (Method::GET, format!("/api/v1/contacts/{bid}/events"), None),
        (
            Method::GET,
            format!("/api/v1/contacts/{bid}/subscriptions"),
            None,
        ),
        (Method::GET, format!("/api/v1/contacts/{bid}/export"), None),
        (Method::POST, format!("/api/v1/contacts/{bid}/erase"), None),
        (
            Method::POST,
            format!("/api/v1/contacts/{bid}/unsubscribe"),
            Some(json!({"identity_id": b_identity})),
        ),
        (Method::DELETE, format!("/api/v1/tags/{b_tag}"), None),
        (Method::GET, format!("/api/v1/channels/{ch_b}"), None),
        (Method::DELETE, format!("/api/v1/channels/{ch_b}"), None),
    ] {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let r = h.send(method.clone(), &path, Some(&ka), body, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            r.text
        );
        assert_eq!(r.code(), "not_found");
    }
    // A's identity on B's channel is refused, naming the field.
    let r = h
        .post(
            "/api/v1/contacts",
            &ka,
            json!({"identities": [{"channel_id": ch_b, "external_id": "a-1"}]}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "identities[0].channel_id")
    );

    let list = h.get("/api/v1/contacts", &ka).await.json();
    let ids: Vec<i64> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|c| c["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![aid]);
    assert_eq!(h.count(&ka).await, 1);
    let by_tag = h.get("/api/v1/contacts/count?tag=b-only", &ka).await.json();
    assert_eq!(by_tag["count"], 0);
    let by_q = h.get("/api/v1/contacts?q=Boris", &ka).await.json();
    assert_eq!(by_q["data"], json!([]));
    let tags_a = h.get("/api/v1/tags", &ka).await.json();
    assert_eq!(tags_a, json!([]));
    assert_eq!(h.get("/api/v1/channels", &ka).await.json(), json!([]));
    assert_eq!(h.get("/api/v1/workspace", &ka).await.json()["name"], "A");
    // B still has everything.
    let still = h.get(&format!("/api/v1/contacts/{bid}"), &kb).await;
    assert_eq!(still.status, StatusCode::OK);
    assert_eq!(still.json()["tags"], json!(["b-only"]));
}

async fn authentication_and_scopes(h: Harness) {
    let (ws, admin) = workspace(&h, "W").await;
    let missing = h
        .send(Method::GET, "/api/v1/contacts", None, None, &[])
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "unauthorized");
    let garbage = h.get("/api/v1/contacts", "not-a-key").await;
    let wrong_secret = h.get("/api/v1/contacts", &format!("{admin}x")).await;
    let unknown = h.get("/api/v1/contacts", &apikey::generate().token).await;
    // Revoke a key through the API, then use it.
    let victim = h
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "victim", "scopes": ["contacts:read"]}),
        )
        .await;
    assert_eq!(victim.status, StatusCode::CREATED, "{}", victim.text);
    let victim = victim.json();
    let token = victim["token"].as_str().expect("token").to_string();
    assert_eq!(
        h.get("/api/v1/contacts", &token).await.status,
        StatusCode::OK
    );
    let vid = victim["key"]["id"].as_i64().expect("id");
    let revoked = h.delete(&format!("/api/v1/api-keys/{vid}"), &admin).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert!(revoked.json()["revoked_at"].is_string());
    let after = h.get("/api/v1/contacts", &token).await;
    let expected = missing.json();
    for a in [&garbage, &wrong_secret, &unknown, &after] {
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
        assert_eq!(a.json(), expected, "every 401 says the same");
    }

    let reader = key(&h.store, ws, &[Scope::ContactsRead]).await;
    let r = h
        .post("/api/v1/contacts", &reader, json!({"first_name": "Ivan"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "forbidden");
    assert_eq!(
        r.json()["error"]["details"]["required_scope"],
        "contacts:write"
    );
    assert_eq!(h.count(&reader).await, 0);
    // The scope is checked before the body is read.
    let r = h
        .post_raw("/api/v1/contacts", &reader, "application/json", b"{oops")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = h
        .post("/api/v1/tags", &reader, json!({"name": "vip"}))
        .await;
    assert_eq!(
        r.json()["error"]["details"]["required_scope"],
        "schema:write"
    );
    assert_eq!(
        h.get("/api/v1/channels", &reader).await.json()["error"]["details"]["required_scope"],
        "channels:read"
    );
    assert_eq!(
        h.get("/api/v1/api-keys", &reader).await.status,
        StatusCode::FORBIDDEN
    );
    let c = h
        .post("/api/v1/contacts", &admin, json!({"first_name": "Ivan"}))
        .await
        .json();
    let erase = h
        .post(
            &format!("/api/v1/contacts/{}/erase", c["id"]),
            &reader,
            json!({}),
        )
        .await;
    assert_eq!(
        erase.json()["error"]["details"]["required_scope"],
        "contacts:erase"
    );
    // Any valid key reads its workspace.
    assert_eq!(
        h.get("/api/v1/workspace", &reader).await.status,
        StatusCode::OK
    );
}

async fn invalid_input_is_refused_and_writes_nothing(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let ch = h.channel(&k, "bot").await;
    let f = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "age", "label": "Age", "type": "number"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
    let before = h.count(&k).await;

    let bad = h
        .post_raw(
            "/api/v1/contacts",
            &k,
            "application/json",
            b"{\"first_name\": \"Ivan\",\n  oops}",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(bad.code(), "malformed_json");
    assert_eq!(bad.json()["error"]["details"]["line"], 2);
    assert!(bad.json()["error"]["details"]["column"].as_u64().is_some());

    for (body, field) in [
        (json!({"first_name": "Ivan", "nickname": "x"}), "nickname"),
        (json!({"first_name": 5}), "first_name"),
        (json!({"tags": "vip"}), "tags"),
        (
            json!({"identities": [{"channel_id": ch}]}),
            "identities[0].external_id",
        ),
        (
            json!({"identities": [{"channel_id": ch, "external_id": "1", "color": "red"}]}),
            "identities[0].color",
        ),
        (
            json!({"identities": [{"channel_id": "one", "external_id": "1"}]}),
            "identities[0].channel_id",
        ),
        (json!({"email": "not-an-email"}), "email"),
        (json!({"phone": "12"}), "phone"),
        (json!({"fields": {"nope": 1}}), "fields.nope"),
        (json!({"fields": {"age": "old"}}), "fields.age"),
        (json!({"tags": ["ok", ""]}), "tags[1]"),
        (
            json!({"identities": [{"channel_id": ch, "external_id": "1", "subscription": {"state": "subscribed"}}]}),
            "identities[0].subscription.proof",
        ),
        (
            json!({"identities": [{"channel_id": ch + 1000, "external_id": "1"}]}),
            "identities[0].channel_id",
        ),
    ] {
        let r = h.post("/api/v1/contacts", &k, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.code(), "validation_failed", "{body}");
        assert_eq!(r.field(), field, "{body}: {}", r.text);
    }
    let r = h.post("/api/v1/tags", &k, json!({})).await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "name")
    );
    let r = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "Bad Key", "label": "x", "type": "text"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "key")
    );
    let r = h
        .post(
            "/api/v1/api-keys",
            &k,
            json!({"name": "x", "scopes": ["root"]}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "scopes[0]")
    );

    let r = h
        .post_raw("/api/v1/contacts", &k, "text/plain", b"{}")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    // The server refuses on the declared length, before reading the body, and closes the
    // connection. Only the head is sent: a client still writing the body could see the
    // connection reset before it reads the answer.
    let (status, text) = h
        .head_only_post("/api/v1/contacts", &k, 2 * 1024 * 1024)
        .await;
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON error body");
    assert_eq!(v["error"]["code"], "payload_too_large");

    for q in [
        "limit=0",
        "limit=abc",
        "cursor=zzz",
        "subscription=maybe",
        "bogus=1",
        "channel=x",
    ] {
        let r = h.get(&format!("/api/v1/contacts?{q}"), &k).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{q}: {}",
            r.text
        );
    }
    for q in ["field=nope:eq:1", "field=age:between:1", "field=age:gt:old"] {
        let r = h.get(&format!("/api/v1/contacts/count?{q}"), &k).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{q}: {}",
            r.text
        );
        assert!(r.field().starts_with("field"), "{q}: {}", r.text);
    }
    assert_eq!(h.count(&k).await, before, "nothing was written");
    assert_eq!(
        h.get("/api/v1/tags", &k).await.json(),
        json!([]),
        "no tag was created"
    );

    // Unknown routes, wrong methods, bad ids: JSON errors too.
    let r = h.get("/api/v1/nothing-here", &k).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = h
        .send(Method::PUT, "/api/v1/contacts", Some(&k), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");
    let r = h.get("/api/v1/contacts/abc", &k).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let r = h.get("/api/v1/contacts/999999", &k).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

async fn idempotency_keys(h: Harness) {
    let (ws, k) = workspace(&h, "W").await;
    let body = json!({"first_name": "Ivan", "phone": "+79161234567"})
        .to_string()
        .into_bytes();
    let send = |key: &'static str, body: Vec<u8>| {
        let h = &h;
        let k = k.clone();
        async move {
            h.send(
                Method::POST,
                "/api/v1/contacts",
                Some(&k),
                Some(("application/json", body)),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let first = send("create-ivan-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let second = send("create-ivan-1", body.clone()).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_eq!(
        second
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(second.json(), first.json());
    assert_eq!(h.count(&k).await, 1, "the replay wrote nothing");

    let other = json!({"first_name": "Petr"}).to_string().into_bytes();
    let mismatch = send("create-ivan-1", other).await;
    assert_eq!(
        (mismatch.status, mismatch.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    assert_eq!(h.count(&k).await, 1);

    // A request still running under the same key (reserved here directly) is refused.
    let hash = voronka_server::idempotency::request_hash(&Method::POST, "/api/v1/contacts", &body);
    let begun = h
        .store
        .idempotency_begin(ws, "busy-1", &hash)
        .await
        .expect("begin");
    assert_eq!(begun, voronka_store::IdempotencyBegin::Started);
    let busy = send("busy-1", body.clone()).await;
    assert_eq!(
        (busy.status, busy.code().as_str()),
        (StatusCode::CONFLICT, "idempotency_in_progress")
    );
    assert_eq!(h.count(&k).await, 1);

    let bad = send("has space", body.clone()).await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert_eq!(h.count(&k).await, 1);

    // A refused request is saved too: the retry gets the same refusal.
    let invalid = json!({"email": "nope"}).to_string().into_bytes();
    let r1 = send("invalid-1", invalid.clone()).await;
    let r2 = send("invalid-1", invalid).await;
    assert_eq!(
        (r1.status, r2.status),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::UNPROCESSABLE_ENTITY
        )
    );
    assert_eq!(
        r2.headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(r1.json(), r2.json());

    // Keys are per workspace and need a valid key even to replay.
    let (_ws2, k2) = workspace(&h, "W2").await;
    let elsewhere = h
        .send(
            Method::POST,
            "/api/v1/contacts",
            Some(&k2),
            Some(("application/json", body.clone())),
            &[("Idempotency-Key", "create-ivan-1")],
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);
    assert!(elsewhere.headers.get("idempotent-replayed").is_none());
    let anon = h
        .send(
            Method::POST,
            "/api/v1/contacts",
            None,
            Some(("application/json", body)),
            &[("Idempotency-Key", "create-ivan-1")],
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
}

async fn erasure_leaves_no_personal_data(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let ch = h.channel(&k, "bot").await;
    let f = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "city", "label": "City", "type": "text"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::CREATED);
    let pii = [
        "Zinaida",
        "Kuznetsova",
        "zina.k@example.org",
        "+79161112233",
        "tg-zina-777",
        "Novosibirsk-Akademgorodok",
        "203.0.113.7",
    ];
    let body = json!({
        "first_name": pii[0], "last_name": pii[1], "email": pii[2], "phone": pii[3],
        "tags": ["vip"], "fields": {"city": pii[5]},
        "identities": [{"channel_id": ch, "external_id": pii[4], "subscription": {"state": "subscribed", "topics": ["news"], "proof": proof()}}]
    });
    // Created with an Idempotency-Key: the saved answer holds the PII and must go too.
    let created = h
        .send(
            Method::POST,
            "/api/v1/contacts",
            Some(&k),
            Some(("application/json", body.to_string().into_bytes())),
            &[("Idempotency-Key", "zina")],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let c = created.json();
    let id = c["id"].as_i64().expect("id");
    let identity = c["identities"][0]["id"].as_i64().expect("identity");
    assert_eq!(c["identities"][0]["subscription"]["state"], "subscribed");
    let un = h
        .post(
            &format!("/api/v1/contacts/{id}/unsubscribe"),
            &k,
            json!({"identity_id": identity}),
        )
        .await;
    assert_eq!(un.status, StatusCode::OK, "{}", un.text);
    let export = h.get(&format!("/api/v1/contacts/{id}/export"), &k).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export
        .headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("attachment")));
    for p in pii {
        assert!(export.text.contains(p), "export before erasure has {p}");
    }

    let erased = h
        .send(
            Method::POST,
            &format!("/api/v1/contacts/{id}/erase"),
            Some(&k),
            None,
            &[("Idempotency-Key", "erase-zina")],
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    assert_eq!(erased.json(), json!({"erased": true, "id": id}));

    let export = h.get(&format!("/api/v1/contacts/{id}/export"), &k).await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.text);
    for p in pii {
        assert!(
            !export.text.contains(p),
            "export after erasure still has {p}: {}",
            export.text
        );
        let left = h.store.find_text_everywhere(p).await.expect("search");
        assert!(left.is_empty(), "{p} still in {left:?}");
    }
    let e = export.json();
    assert!(e["contact"]["erased_at"].is_string());
    assert_eq!(e["contact"]["identities"], json!([]));
    assert!(e["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|ev| ev["kind"] == "erased"));
    assert_eq!(
        h.count(&k).await,
        0,
        "erased contacts leave lists and counts"
    );
    // An erased contact cannot be given personal data again.
    let patch = h
        .send(
            Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(&k),
            Some((
                "application/json",
                json!({"first_name": pii[0]}).to_string().into_bytes(),
            )),
            &[],
        )
        .await;
    assert_eq!(patch.status, StatusCode::CONFLICT, "{}", patch.text);
    assert_eq!(patch.json()["error"]["code"], "contact_erased");
    let tag = h
        .post(
            &format!("/api/v1/contacts/{id}/tags"),
            &k,
            json!({"tags": ["vip"]}),
        )
        .await;
    assert_eq!(tag.status, StatusCode::CONFLICT, "{}", tag.text);
    assert!(h
        .store
        .find_text_everywhere(pii[0])
        .await
        .expect("search")
        .is_empty());
    // Replaying the creation cannot bring the data back.
    let replay = h
        .send(
            Method::POST,
            "/api/v1/contacts",
            Some(&k),
            Some(("application/json", body.to_string().into_bytes())),
            &[("Idempotency-Key", "zina")],
        )
        .await;
    assert!(
        replay.headers.get("idempotent-replayed").is_none(),
        "the saved answer was deleted"
    );
}

async fn contact_lifecycle(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let ch = h.channel(&k, "bot").await;
    for (key, t) in [("age", "number"), ("city", "text")] {
        let r = h
            .post(
                "/api/v1/fields",
                &k,
                json!({"key": key, "label": key, "type": t}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let dup = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "age", "label": "Age", "type": "number"}),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code().as_str()),
        (StatusCode::CONFLICT, "field_exists")
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = h
            .post(
                "/api/v1/contacts",
                &k,
                json!({"first_name": format!("P{i}"), "source": "api-test",
                       "tags": if i % 2 == 0 { json!(["even"]) } else { json!(["odd"]) },
                       "fields": {"age": 20 + i * 10, "city": "Moscow"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        ids.push(r.json()["id"].as_i64().expect("id"));
    }
    let c0 = h
        .get(&format!("/api/v1/contacts/{}", ids[0]), &k)
        .await
        .json();
    assert_eq!(c0["fields"], json!({"age": 20, "city": "Moscow"}));
    assert_eq!(c0["source"], "api-test");

    // Paging with the opaque cursor, newest first.
    let p1 = h.get("/api/v1/contacts?limit=2", &k).await.json();
    let p1_ids: Vec<i64> = p1["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|c| c["id"].as_i64())
        .collect();
    assert_eq!(p1_ids, vec![ids[4], ids[3]]);
    let cursor = p1["next_cursor"].as_str().expect("more pages").to_string();
    let p2 = h
        .get(&format!("/api/v1/contacts?limit=2&cursor={cursor}"), &k)
        .await
        .json();
    assert_eq!(p2["data"][0]["id"].as_i64(), Some(ids[2]));
    let p3 = h
        .get(
            &format!(
                "/api/v1/contacts?limit=2&cursor={}",
                p2["next_cursor"].as_str().expect("cursor")
            ),
            &k,
        )
        .await
        .json();
    assert_eq!(p3["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(p3["next_cursor"], Value::Null);

    // Filters.
    let n = |q: &'static str| {
        let h = &h;
        let k = k.clone();
        async move {
            h.get(&format!("/api/v1/contacts/count?{q}"), &k)
                .await
                .json()["count"]
                .as_u64()
                .expect("count")
        }
    };
    assert_eq!(n("tag=even").await, 3);
    assert_eq!(n("tag=even&field=age:gt:30").await, 2);
    assert_eq!(n("field=age:gte:30&field=age:lt:50").await, 2);
    assert_eq!(n("field=city:contains:mosc").await, 5);
    assert_eq!(n("q=p3").await, 1);
    assert_eq!(n("tag=even&tag=odd").await, 0);
    let listed = h
        .get("/api/v1/contacts?tag=odd&field=age:exists", &k)
        .await
        .json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));

    // Profile patch: absent stays, null clears.
    let id = ids[0];
    let r = h
        .patch(
            &format!("/api/v1/contacts/{id}"),
            &k,
            json!({"last_name": "Petrov", "first_name": null, "email": "P@Example.COM"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let c = r.json();
    assert_eq!(
        (
            c["first_name"].clone(),
            c["last_name"].clone(),
            c["email"].clone()
        ),
        (Value::Null, json!("Petrov"), json!("P@example.com"))
    );
    let r = h
        .patch(
            &format!("/api/v1/contacts/{id}"),
            &k,
            json!({"phone": "abc"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "phone")
    );
    let r = h
        .patch(
            &format!("/api/v1/contacts/{id}"),
            &k,
            json!({"source": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "source")
    );

    // Tags.
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/tags"),
            &k,
            json!({"tags": ["vip", "even"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({"added": ["vip"], "tags": ["even", "vip"]}));
    let r = h
        .delete(&format!("/api/v1/contacts/{id}/tags/vip"), &k)
        .await;
    assert_eq!(r.json(), json!({"removed": true}));
    let r = h
        .delete(&format!("/api/v1/contacts/{id}/tags/vip"), &k)
        .await;
    assert_eq!(r.json(), json!({"removed": false}));
    let tags = h.get("/api/v1/tags", &k).await.json();
    let vip = tags
        .as_array()
        .expect("tags")
        .iter()
        .find(|t| t["name"] == "vip")
        .expect("vip exists");
    assert_eq!(vip["contacts"], 0);
    let dup = h.post("/api/v1/tags", &k, json!({"name": "vip"})).await;
    assert_eq!(
        (dup.status, dup.code().as_str(), dup.field().as_str()),
        (StatusCode::CONFLICT, "tag_exists", "name")
    );
    let del = h.delete(&format!("/api/v1/tags/{}", vip["id"]), &k).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);

    // Fields.
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/fields"),
            &k,
            json!({"fields": {"age": "41"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["fields"]["age"], 41);
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/fields"),
            &k,
            json!({"fields": {"zzz": "1"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "fields.zzz")
    );
    let r = h
        .delete(&format!("/api/v1/contacts/{id}/fields/age"), &k)
        .await;
    assert_eq!(r.json(), json!({"removed": true}));
    assert_eq!(
        h.delete(&format!("/api/v1/contacts/{id}/fields/zzz"), &k)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Identities and consent.
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/identities"),
            &k,
            json!({"channel_id": ch, "external_id": "chat-1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let ident = r.json();
    assert_eq!(ident["subscription"]["state"], "unsubscribed");
    let iid = ident["id"].as_i64().expect("identity id");
    let taken = h
        .post(
            &format!("/api/v1/contacts/{}/identities", ids[1]),
            &k,
            json!({"channel_id": ch, "external_id": "chat-1"}),
        )
        .await;
    assert_eq!(
        (taken.status, taken.code().as_str()),
        (StatusCode::CONFLICT, "identity_taken")
    );
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/identities"),
            &k,
            json!({"channel_id": ch, "external_id": ""}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "external_id")
    );
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/subscribe"),
            &k,
            json!({"identity_id": iid, "topics": ["news"]}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "proof")
    );
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/subscribe"),
            &k,
            json!({"identity_id": iid, "topics": ["news"], "proof": proof()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["subscription"]["state"], "subscribed");
    assert_eq!(n("subscription=subscribed").await, 1);
    let r = h
        .post(
            &format!("/api/v1/contacts/{id}/unsubscribe"),
            &k,
            json!({"identity_id": iid}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["subscription"]["proof"]["source"], "api");
    let hist = h
        .get(&format!("/api/v1/contacts/{id}/subscriptions"), &k)
        .await
        .json();
    let states: Vec<&str> = hist
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states, vec!["subscribed", "unsubscribed"]);
    let idents = h
        .get(&format!("/api/v1/contacts/{id}/identities"), &k)
        .await
        .json();
    assert_eq!(idents.as_array().map(Vec::len), Some(1));
    assert_eq!(
        h.delete(&format!("/api/v1/channels/{ch}"), &k).await.code(),
        "channel_in_use"
    );
    assert_eq!(
        h.delete(&format!("/api/v1/contacts/{id}/identities/{iid}"), &k)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.delete(&format!("/api/v1/contacts/{id}/identities/{iid}"), &k)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Timeline, newest first, paged.
    let ev = h
        .get(&format!("/api/v1/contacts/{id}/events?limit=3"), &k)
        .await
        .json();
    assert_eq!(ev["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(ev["data"][0]["kind"], "identity_removed");
    let next = ev["next_cursor"].as_str().expect("more events").to_string();
    let ev2 = h
        .get(
            &format!("/api/v1/contacts/{id}/events?limit=500&before={next}"),
            &k,
        )
        .await
        .json();
    let kinds: Vec<&str> = ev2["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds.last(), Some(&"contact_created"));
    assert!(ev2["data"][0]["id"].as_i64() < ev["data"][2]["id"].as_i64());

    // Delete.
    assert_eq!(
        h.delete(&format!("/api/v1/contacts/{id}"), &k).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get(&format!("/api/v1/contacts/{id}"), &k).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.count(&k).await, 4);
}

async fn channels_keep_credentials_secret(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let secret = "bot-token-5f3c9e1d";
    let r = h
        .post(
            "/api/v1/channels",
            &k,
            json!({"kind": "webchat", "name": " Shop bot ", "credentials": {"token": secret}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains(secret));
    let c = r.json();
    assert_eq!(
        (c["name"].clone(), c["status"].clone()),
        (json!("Shop bot"), json!("active"))
    );
    let id = c["id"].as_i64().expect("id");
    assert!(
        h.store
            .find_text_everywhere(secret)
            .await
            .expect("search")
            .is_empty(),
        "stored encrypted"
    );
    let r = h
        .patch(
            &format!("/api/v1/channels/{id}"),
            &k,
            json!({"status": "disabled", "credentials": {"token": "t2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "disabled");
    let sealed = h
        .store
        .get_channel(_ws, voronka_core::ChannelId(id))
        .await
        .expect("channel")
        .credentials;
    assert!(!sealed.data.is_empty());
    let list = h.get("/api/v1/channels", &k).await;
    assert!(!list.text.contains("t2") || !list.text.contains("\"token\""));
    assert_eq!(list.json().as_array().map(Vec::len), Some(1));
    let r = h
        .post(
            "/api/v1/channels",
            &k,
            json!({"kind": "carrier-pigeon", "name": "x", "credentials": {}}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "kind")
    );
    let r = h
        .post(
            "/api/v1/channels",
            &k,
            json!({"kind": "vk", "name": "x", "credentials": "token"}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "credentials")
    );
    assert_eq!(
        h.delete(&format!("/api/v1/channels/{id}"), &k).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get(&format!("/api/v1/channels/{id}"), &k).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn api_keys_lifecycle(h: Harness) {
    let (_ws, admin) = workspace(&h, "W").await;
    let r = h
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "crm", "scopes": ["contacts:write", "contacts:read"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = r.json();
    let token = created["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("vk_"));
    assert_eq!(
        created["key"]["scopes"],
        json!(["contacts:read", "contacts:write"])
    );
    let r = h
        .post(
            "/api/v1/contacts",
            &token,
            json!({"first_name": "Via new key"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let list = h.get("/api/v1/api-keys", &admin).await;
    assert_eq!(list.json().as_array().map(Vec::len), Some(2));
    assert!(!list.text.contains(&token), "tokens are shown once");
    let r = h
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "none", "scopes": []}),
        )
        .await;
    assert_eq!(
        (r.status, r.field().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "scopes")
    );
    // last_used_at is recorded in the background.
    let mut used = false;
    for _ in 0..50 {
        let keys = h.get("/api/v1/api-keys", &admin).await.json();
        if keys
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["name"] == "crm" && k["last_used_at"].is_string())
        {
            used = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(used, "last_used_at was set");
    // ...at most once a minute: more requests now leave it alone.
    let used_at = |keys: &Value| {
        keys.as_array()
            .expect("keys")
            .iter()
            .find(|k| k["name"] == "crm")
            .map(|k| k["last_used_at"].clone())
            .expect("crm key")
    };
    let first = used_at(&h.get("/api/v1/api-keys", &admin).await.json());
    for _ in 0..3 {
        assert_eq!(
            h.get("/api/v1/contacts", &token).await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        used_at(&h.get("/api/v1/api-keys", &admin).await.json()),
        first
    );
}

async fn csv_import_and_export(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let ch = h.channel(&k, "bot").await;
    let f = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "city", "label": "City", "type": "text"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::CREATED);
    let csv = "phone,first_name,Город,external_id\n+79160000001,Ivan,Moscow,chat-1\n+79160000002,Olga,Kazan,chat-2\nnot-a-phone,Bad,X,chat-3\n";
    let path = format!("/api/v1/contacts/import?channel={ch}&source=import:test&map=%D0%93%D0%BE%D1%80%D0%BE%D0%B4:field.city");
    let r = h.post_raw(&path, &k, "text/csv", csv.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let report = r.json();
    assert_eq!(
        (report["rows"].clone(), report["created"].clone()),
        (json!(3), json!(2)),
        "{report}"
    );
    assert_eq!(report["failed"][0]["line"], 4, "{report}");
    assert_eq!(h.count(&k).await, 2);
    let moscow = h
        .get("/api/v1/contacts?field=city:eq:Moscow", &k)
        .await
        .json();
    assert_eq!(moscow["data"][0]["first_name"], "Ivan");
    assert_eq!(moscow["data"][0]["source"], "import:test");
    // The same file again changes nothing.
    let again = h
        .post_raw(&path, &k, "text/csv", csv.as_bytes())
        .await
        .json();
    assert_eq!(
        (again["created"].clone(), again["unchanged"].clone()),
        (json!(0), json!(2)),
        "{again}"
    );

    let bad = h
        .post_raw(
            "/api/v1/contacts/import",
            &k,
            "text/csv",
            b"shoe_size,color\n42,red\n",
        )
        .await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_csv"),
        "{}",
        bad.text
    );
    let wrong_type = h
        .post_raw("/api/v1/contacts/import", &k, "application/json", b"{}")
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let out = h
        .get("/api/v1/contacts/export?field=city:eq:Kazan", &k)
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
    assert!(out
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv")));
    assert!(
        out.text.contains("+79160000002") && out.text.contains("Olga"),
        "{}",
        out.text
    );
    assert!(!out.text.contains("Ivan"));
    let all = h.get("/api/v1/contacts/export", &k).await;
    assert_eq!(all.text.lines().count(), 3, "{}", all.text);

    // A file of many body frames and store batches streams through whole.
    let n = 20_000u64;
    let mut big = String::from("phone,first_name,tags\n");
    for i in 0..n {
        big.push_str(&format!("+7917{i:07},Name{i},bulk\n"));
    }
    let started = std::time::Instant::now();
    let r = h
        .post_raw("/api/v1/contacts/import", &k, "text/csv", big.as_bytes())
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["created"], json!(n), "{}", r.text);
    eprintln!(
        "imported {n} contacts ({} bytes) through the API in {took:?}",
        big.len()
    );
    let started = std::time::Instant::now();
    let out = h.get("/api/v1/contacts/export?tag=bulk", &k).await;
    eprintln!(
        "exported {n} contacts through the API in {:?}",
        started.elapsed()
    );
    assert_eq!(out.text.lines().count() as u64, n + 1);
    assert!(out.text.contains("+79170019999"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_valid_and_covers_every_route() {
    let h = start(Backend::Sqlite).await.expect("sqlite store");
    let r = h
        .send(Method::GET, "/api/v1/openapi.json", None, None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    if let Ok(path) = std::env::var("VORONKA_DUMP_OPENAPI") {
        // For reviewing the document by hand.
        std::fs::write(path, &r.text).expect("write the document");
    }
    assert_eq!(
        doc,
        serde_json::to_value(voronka_server::openapi()).expect("serializes")
    );
    oas3::from_json(&r.text).expect("oas3 parses the document as OpenAPI 3.1");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }

    // No allOf part closes the object against the other parts.
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        for part in schema["allOf"].as_array().into_iter().flatten() {
            let target = match part["$ref"].as_str() {
                Some(r) => doc
                    .pointer(r.trim_start_matches('#'))
                    .cloned()
                    .unwrap_or_default(),
                None => part.clone(),
            };
            assert_ne!(
                target["additionalProperties"],
                json!(false),
                "{name}: allOf part is closed"
            );
        }
    }

    // Path parameters declared, operation ids unique, errors documented.
    let mut op_ids = BTreeSet::new();
    let mut documented = BTreeSet::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        for (method, op) in item.as_object().expect("path item") {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(op_ids.insert(id.to_string()), "duplicate operationId {id}");
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, templated, "{method} {path} path parameters");
            assert!(
                op["responses"]
                    .as_object()
                    .is_some_and(|r| r.keys().any(|c| c.starts_with('2'))),
                "{method} {path} has a success response"
            );
            if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                assert_eq!(
                    op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody"
                );
            }
        }
    }

    // Every route the router serves is in the document, and nothing else.
    let served: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/v1/openapi.json",
        "GET /api/v1/workspace",
        "GET /api/v1/flows",
        "POST /api/v1/flows",
        "POST /api/v1/flows/validate",
        "GET /api/v1/flows/{id}",
        "PATCH /api/v1/flows/{id}",
        "POST /api/v1/flows/{id}/publish",
        "POST /api/v1/flows/{id}/archive",
        "GET /api/v1/flows/{id}/versions/{version}",
        "GET /api/v1/flows/{id}/export",
        "GET /api/v1/flows/{id}/runs",
        "POST /api/v1/flows/{id}/runs",
        "GET /api/v1/flows/{id}/stats",
        "GET /api/v1/contacts/{id}/runs",
        "POST /api/v1/contacts/{id}/release",
        "POST /api/v1/events",
        "GET /api/v1/segments",
        "POST /api/v1/segments",
        "POST /api/v1/segments/preview",
        "POST /api/v1/segments/validate",
        "GET /api/v1/segments/{id}",
        "PATCH /api/v1/segments/{id}",
        "DELETE /api/v1/segments/{id}",
        "GET /api/v1/segments/{id}/count",
        "GET /api/v1/segments/{id}/sample",
        "GET /api/v1/broadcasts",
        "POST /api/v1/broadcasts",
        "POST /api/v1/broadcasts/validate",
        "GET /api/v1/broadcasts/{id}",
        "PATCH /api/v1/broadcasts/{id}",
        "DELETE /api/v1/broadcasts/{id}",
        "POST /api/v1/broadcasts/{id}/schedule",
        "POST /api/v1/broadcasts/{id}/send",
        "POST /api/v1/broadcasts/{id}/pause",
        "POST /api/v1/broadcasts/{id}/resume",
        "POST /api/v1/broadcasts/{id}/cancel",
        "POST /api/v1/broadcasts/{id}/recall",
        "GET /api/v1/broadcasts/{id}/report",
        "GET /api/v1/broadcasts/{id}/recipients",
        "GET /api/v1/broadcasts/{id}/events",
        "GET /api/v1/topics",
        "POST /api/v1/topics",
        "GET /api/v1/workspace/settings",
        "PUT /api/v1/workspace/settings",
        "GET /api/v1/channels",
        "POST /api/v1/channels",
        "GET /api/v1/channels/{id}",
        "PATCH /api/v1/channels/{id}",
        "DELETE /api/v1/channels/{id}",
        "GET /api/v1/tags",
        "POST /api/v1/tags",
        "DELETE /api/v1/tags/{id}",
        "GET /api/v1/fields",
        "POST /api/v1/fields",
        "DELETE /api/v1/fields/{id}",
        "GET /api/v1/contacts",
        "POST /api/v1/contacts",
        "GET /api/v1/contacts/count",
        "GET /api/v1/contacts/export",
        "POST /api/v1/contacts/import",
        "GET /api/v1/contacts/{id}",
        "PATCH /api/v1/contacts/{id}",
        "DELETE /api/v1/contacts/{id}",
        "POST /api/v1/contacts/{id}/tags",
        "DELETE /api/v1/contacts/{id}/tags/{name}",
        "POST /api/v1/contacts/{id}/fields",
        "DELETE /api/v1/contacts/{id}/fields/{key}",
        "GET /api/v1/contacts/{id}/identities",
        "POST /api/v1/contacts/{id}/identities",
        "DELETE /api/v1/contacts/{id}/identities/{identity_id}",
        "POST /api/v1/contacts/{id}/subscribe",
        "POST /api/v1/contacts/{id}/unsubscribe",
        "GET /api/v1/contacts/{id}/subscriptions",
        "GET /api/v1/contacts/{id}/events",
        "GET /api/v1/contacts/{id}/export",
        "POST /api/v1/contacts/{id}/erase",
        "POST /api/v1/contacts/{id}/messages",
        "GET /api/v1/contacts/{id}/conversation",
        "GET /api/v1/outbox/{id}",
        "GET /api/v1/api-keys",
        "POST /api/v1/api-keys",
        "DELETE /api/v1/api-keys/{id}",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(documented, served);
    // ...and each documented route is really routed (no 404 "no such route" for it).
    let (_ws, k) = workspace(&h, "W").await;
    for route in &documented {
        let (method, path) = route.split_once(' ').expect("method and path");
        let concrete = path
            .replace("{id}", "999999")
            .replace("{identity_id}", "1")
            .replace("{name}", "x")
            .replace("{key}", "x");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let r = h.send(method, &concrete, Some(&k), None, &[]).await;
        let routed = !(r.status == StatusCode::NOT_FOUND && r.text.contains("no such route"))
            && r.status != StatusCode::METHOD_NOT_ALLOWED;
        assert!(routed, "{route} is not routed: {} {}", r.status, r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let h = start(Backend::Sqlite).await.expect("sqlite store");
    let r = h.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = h.send(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert!(
        r.headers.get("x-request-id").is_some(),
        "request ids are returned"
    );
    let (_ws, k) = workspace(&h, "W").await;
    for id in [123, 456] {
        let r = h.get(&format!("/api/v1/contacts/{id}"), &k).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = h.send(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    let text = r.text;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains("route=\"/api/v1/contacts/{id}\"")
                && l.contains("status=\"404\"")
                && l.contains("method=\"GET\"")
        })
        .unwrap_or_else(|| panic!("no counter for the route template in:\n{text}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(value >= 2.0, "{line}");
    assert!(
        !text.contains("/api/v1/contacts/123"),
        "raw paths are not labels"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "histogram exported:\n{text}"
    );
    // A second router in the same process shares the recorder.
    let h2 = start(Backend::Sqlite).await.expect("second store");
    let r = h2.send(Method::GET, "/metrics", None, None, &[]).await;
    assert!(r.text.contains("http_requests_total"));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
    {
        *counts.entry("lines").or_default() += 1;
        assert!(l.contains("route=\""), "{l}");
    }
    assert!(counts["lines"] >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_and_stops_listening() {
    let h = start(Backend::Sqlite).await.expect("sqlite store");
    let r = h.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let _ = h.stop.send(());
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), h.server)
        .await
        .expect("serve returns after shutdown")
        .expect("task joins");
    assert!(done.is_ok(), "{done:?}");
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    assert!(
        fresh
            .get(format!("{}/healthz", h.base))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}
