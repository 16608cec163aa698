//! End-to-end tests of the segment endpoints: the real router on 127.0.0.1:0 over a
//! fresh store (SQLite, and PostgreSQL when reachable).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
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
    _stop: tokio::sync::oneshot::Sender<()>,
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
    tokio::spawn(voronka_server::serve(listener, state, async {
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
        _stop: stop,
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

    /// `(path, code)` of each problem of an `invalid_segment` error or a validation.
    fn problems(&self) -> Vec<(String, String)> {
        let v = self.json();
        let list = if v["problems"].is_array() {
            v["problems"].clone()
        } else {
            v["error"]["details"]["problems"].clone()
        };
        list.as_array()
            .unwrap_or_else(|| panic!("no problems list: {}", self.text))
            .iter()
            .map(|p| {
                assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()));
                (
                    p["path"].as_str().unwrap_or_default().to_string(),
                    p["code"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Harness {
    async fn send(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        Answer { status, text }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::POST, path, token, Some(body)).await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::PATCH, path, token, Some(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> Answer {
        self.send(Method::DELETE, path, token, None).await
    }

    async fn contact(&self, token: &str, body: Value) -> i64 {
        let a = self.post("/api/v1/contacts", token, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json()["id"].as_i64().expect("contact id")
    }

    /// A workspace with an `age` field and three contacts; answers the key and the ids.
    async fn people(&self, name: &str) -> (WorkspaceId, String, [i64; 3]) {
        let (ws, k) = workspace(self, name).await;
        let f = self
            .post(
                "/api/v1/fields",
                &k,
                json!({"key": "age", "label": "Age", "type": "number"}),
            )
            .await;
        assert_eq!(f.status, StatusCode::CREATED, "{}", f.text);
        let a = self
            .contact(
                &k,
                json!({"first_name": "Anna", "language": "ru", "tags": ["vip"], "fields": {"age": 35}}),
            )
            .await;
        let b = self
            .contact(
                &k,
                json!({"first_name": "Boris", "language": "en", "tags": ["vip"], "fields": {"age": 20}}),
            )
            .await;
        let c = self
            .contact(&k, json!({"first_name": "Vera", "fields": {"age": 50}}))
            .await;
        (ws, k, [a, b, c])
    }
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
    crud,
    invalid_filters_point_at_the_node,
    count_sample_and_preview,
    validate,
    stale_segments_and_isolation,
    scopes,
);

async fn crud(h: Harness) {
    let (_ws, k, _) = h.people("W").await;
    let created = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "VIPs", "filter": {"tag": "vip"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let seg = created.json();
    let id = seg["id"].as_i64().expect("id");
    assert_eq!(seg["name"], "VIPs");
    assert_eq!(seg["filter"], json!({"tag": "vip"}));
    assert_eq!(seg["revision"], 1);
    assert!(seg["created_at"].is_string());

    let taken = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "VIPs", "filter": {"tag": "vip"}}),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    assert_eq!(taken.code(), "segment_name_taken");

    h.post(
        "/api/v1/segments",
        &k,
        json!({"name": "Adults", "filter": {"field": "age", "op": "gte", "value": 18}}),
    )
    .await;
    let list = h.get("/api/v1/segments", &k).await.json();
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["Adults", "VIPs"]);

    let got = h.get(&format!("/api/v1/segments/{id}"), &k).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), seg);

    let patched = h
        .patch(
            &format!("/api/v1/segments/{id}"),
            &k,
            json!({"name": "Russian VIPs", "filter": {"and": [{"tag": "vip"}, {"language": "ru"}]}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let p = patched.json();
    assert_eq!(p["name"], "Russian VIPs");
    assert_eq!(p["revision"], 2);
    assert_eq!(p["filter"]["and"][1], json!({"language": "ru"}));

    let unknown = h
        .patch(
            &format!("/api/v1/segments/{id}"),
            &k,
            json!({"color": "red"}),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.text
    );

    let deleted = h.delete(&format!("/api/v1/segments/{id}"), &k).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let gone = h.get(&format!("/api/v1/segments/{id}"), &k).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.code(), "not_found");
}

async fn invalid_filters_point_at_the_node(h: Harness) {
    let (_ws, k, _) = h.people("W").await;
    let bad = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "Bad", "filter": {"and": [
                {"tag": "nobody"},
                {"field": "age", "op": "around", "value": 3},
                {"or": [{"field": "age", "op": "gt", "value": "old"}]}
            ]}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(bad.code(), "invalid_segment");
    // The shape is checked before the names, so only the unknown operator shows first.
    assert_eq!(
        bad.problems(),
        vec![("/and/1/op".to_string(), "unknown_op".to_string())]
    );

    let bad = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "Bad", "filter": {"and": [
                {"tag": "nobody"},
                {"or": [{"field": "age", "op": "gt", "value": "old"}, {"flow": "none", "event": "entered"}]}
            ]}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(
        bad.problems(),
        vec![
            ("/and/0/tag".to_string(), "unknown_tag".to_string()),
            ("/and/1/or/0/value".into(), "invalid_value".into()),
            ("/and/1/or/1/flow".into(), "unknown_flow".into()),
        ]
    );
    // Nothing was saved.
    assert_eq!(h.get("/api/v1/segments", &k).await.json(), json!([]));

    let ok = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "Good", "filter": {"tag": "vip"}}),
        )
        .await;
    let id = ok.json()["id"].as_i64().expect("id");
    let bad = h
        .patch(
            &format!("/api/v1/segments/{id}"),
            &k,
            json!({"filter": {"not": {"channel": "carrier-pigeon"}}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(
        bad.problems(),
        vec![("/not/channel".to_string(), "invalid_value".to_string())]
    );
    let still = h.get(&format!("/api/v1/segments/{id}"), &k).await.json();
    assert_eq!(still["filter"], json!({"tag": "vip"}));

    let bad = h
        .post(
            "/api/v1/segments/preview",
            &k,
            json!({"filter": {"tag": 1}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(
        bad.problems(),
        vec![("/tag".to_string(), "invalid_type".to_string())]
    );
}

async fn count_sample_and_preview(h: Harness) {
    let (_ws, k, [a, b, c]) = h.people("W").await;
    let seg = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "Adults", "filter": {"field": "age", "op": "gte", "value": 30}}),
        )
        .await
        .json();
    let id = seg["id"].as_i64().expect("id");
    let count = h.get(&format!("/api/v1/segments/{id}/count"), &k).await;
    assert_eq!(count.status, StatusCode::OK, "{}", count.text);
    assert_eq!(count.json(), json!({"count": 2}));

    let sample = h.get(&format!("/api/v1/segments/{id}/sample"), &k).await;
    assert_eq!(sample.status, StatusCode::OK, "{}", sample.text);
    let ids: Vec<i64> = sample.json()["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .filter_map(|x| x["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![c, a], "newest first");
    let one = h
        .get(&format!("/api/v1/segments/{id}/sample?limit=1"), &k)
        .await
        .json();
    assert_eq!(one["sample"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["sample"][0]["first_name"], "Vera");
    for bad in ["limit=0", "limit=101", "limit=x", "other=1"] {
        let r = h
            .get(&format!("/api/v1/segments/{id}/sample?{bad}"), &k)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }

    let preview = h
        .post(
            "/api/v1/segments/preview",
            &k,
            json!({"filter": {"or": [{"language": "en"}, {"not": {"tag": "vip"}}]}, "limit": 5}),
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    let p = preview.json();
    assert_eq!(p["count"], 2);
    let ids: Vec<i64> = p["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .filter_map(|x| x["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![c, b]);
    let everyone = h
        .post(
            "/api/v1/segments/preview",
            &k,
            json!({"filter": {"and": []}}),
        )
        .await
        .json();
    assert_eq!(everyone["count"], 3);
    let bad_limit = h
        .post(
            "/api/v1/segments/preview",
            &k,
            json!({"filter": {"and": []}, "limit": 1000}),
        )
        .await;
    assert_eq!(bad_limit.status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn validate(h: Harness) {
    let (_ws, k, _) = h.people("W").await;
    let ok = h
        .post(
            "/api/v1/segments/validate",
            &k,
            json!({"filter": {"and": [{"tag": "vip"}, {"field": "age", "op": "between", "value": [18, 30]}]}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.json(), json!({"valid": true, "problems": []}));
    let bad = h
        .post(
            "/api/v1/segments/validate",
            &k,
            json!({"filter": {"and": [{"tag": "vip"}, {"topic": "news"}, {"field": "age", "op": "contains", "value": "1"}]}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::OK, "{}", bad.text);
    assert_eq!(bad.json()["valid"], false);
    assert_eq!(
        bad.problems(),
        vec![
            ("/and/1/topic".to_string(), "unknown_topic".to_string()),
            ("/and/2/op".into(), "op_not_allowed".into()),
        ]
    );
}

async fn stale_segments_and_isolation(h: Harness) {
    let (_ws, k, _) = h.people("A").await;
    let seg = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "VIPs", "filter": {"tag": "vip"}}),
        )
        .await
        .json();
    let id = seg["id"].as_i64().expect("id");
    // Another workspace sees nothing of it.
    let (_other, kb, _) = h.people("B").await;
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/segments/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/segments/{id}"),
            Some(json!({"name": "mine"})),
        ),
        (Method::DELETE, format!("/api/v1/segments/{id}"), None),
        (Method::GET, format!("/api/v1/segments/{id}/count"), None),
        (Method::GET, format!("/api/v1/segments/{id}/sample"), None),
    ] {
        let r = h.send(method.clone(), &path, &kb, body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            r.text
        );
    }
    assert_eq!(h.get("/api/v1/segments", &kb).await.json(), json!([]));
    // B's preview counts B's contacts only.
    let p = h
        .post(
            "/api/v1/segments/preview",
            &kb,
            json!({"filter": {"tag": "vip"}}),
        )
        .await
        .json();
    assert_eq!(p["count"], 2);

    // Deleting the tag leaves the saved segment, which now reports the problem.
    let tags = h.get("/api/v1/tags", &k).await.json();
    let tag_id = tags[0]["id"].as_i64().expect("tag id");
    let d = h.delete(&format!("/api/v1/tags/{tag_id}"), &k).await;
    assert!(d.status.is_success(), "{}", d.text);
    let count = h.get(&format!("/api/v1/segments/{id}/count"), &k).await;
    assert_eq!(
        count.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        count.text
    );
    assert_eq!(count.code(), "invalid_segment");
    assert_eq!(
        count.problems(),
        vec![("/tag".to_string(), "unknown_tag".to_string())]
    );
}

async fn scopes(h: Harness) {
    let (ws, k, _) = h.people("W").await;
    let seg = h
        .post(
            "/api/v1/segments",
            &k,
            json!({"name": "VIPs", "filter": {"tag": "vip"}}),
        )
        .await
        .json();
    let id = seg["id"].as_i64().expect("id");
    let contacts_only = key(&h.store, ws, &[Scope::ContactsRead]).await;
    let r = h.get("/api/v1/segments", &contacts_only).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(
        r.json()["error"]["details"]["required_scope"],
        "broadcasts:read"
    );

    let reader = key(&h.store, ws, &[Scope::BroadcastsRead]).await;
    for path in [
        "/api/v1/segments".to_string(),
        format!("/api/v1/segments/{id}"),
        format!("/api/v1/segments/{id}/count"),
        format!("/api/v1/segments/{id}/sample"),
    ] {
        let r = h.get(&path, &reader).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let r = h
        .post(
            "/api/v1/segments/preview",
            &reader,
            json!({"filter": {"tag": "vip"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/segments".to_string(),
            Some(json!({"name": "x", "filter": {"tag": "vip"}})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/segments/{id}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/api/v1/segments/{id}"), None),
    ] {
        let r = h.send(method.clone(), &path, &reader, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.text
        );
        assert_eq!(
            r.json()["error"]["details"]["required_scope"],
            "broadcasts:write"
        );
    }
}
