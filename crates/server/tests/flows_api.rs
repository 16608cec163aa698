//! End-to-end tests of the flow endpoints: the real router on 127.0.0.1:0 over a fresh
//! store (SQLite, and PostgreSQL when reachable), with the flow runtime's workers
//! running so started flows really create runs.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use voronka_core::apikey;
use voronka_core::crypto::SecretKey;
use voronka_core::role::Scope;
use voronka_core::WorkspaceId;
use voronka_server::AppState;
use voronka_store::testing::{fresh_store, Backend, TestStore};
use voronka_store::{DynStore, NewApiKey};

/// A running server, with its flow runtime, over a fresh store.
struct Harness {
    base: String,
    http: reqwest::Client,
    store: DynStore,
    state: AppState,
    _db: TestStore,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Before the database goes away under the workers.
        self.state.flows().stop();
    }
}

async fn start(backend: Backend) -> Option<Harness> {
    let db = fresh_store(backend).await?;
    let store = db.store.clone();
    let state = AppState::new(store.clone(), SecretKey::generate());
    state.flows().start().await.expect("start the flow runtime");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(voronka_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Some(Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        store,
        state,
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

    /// The `code`s of the problems in a flow view, a validation answer or an
    /// `invalid_flow` error.
    fn problem_codes(&self) -> Vec<String> {
        let v = self.json();
        let list = if v["problems"].is_array() {
            v["problems"].clone()
        } else {
            v["error"]["details"]["problems"].clone()
        };
        list.as_array()
            .unwrap_or_else(|| panic!("no problems list: {}", self.text))
            .iter()
            .map(|p| p["code"].as_str().unwrap_or_default().to_string())
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
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        Answer {
            status,
            headers,
            text,
        }
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

    async fn put(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    async fn contact(&self, token: &str, body: Value) -> i64 {
        let a = self.post("/api/v1/contacts", token, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json()["id"].as_i64().expect("contact id")
    }

    /// Creates a flow from a JSON document; answers its id.
    async fn flow(&self, token: &str, name: &str, document: Value) -> i64 {
        let a = self
            .post(
                "/api/v1/flows",
                token,
                json!({"name": name, "document": document}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json()["id"].as_i64().expect("flow id")
    }

    /// Creates and publishes a flow; answers its id.
    async fn published(&self, token: &str, name: &str, document: Value) -> i64 {
        let id = self.flow(token, name, document).await;
        let a = self
            .post(&format!("/api/v1/flows/{id}/publish"), token, json!({}))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        id
    }

    /// Polls `path` until `done` holds for its JSON (the runtime works in the background).
    async fn eventually(&self, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let a = self.get(path, token).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            let v = a.json();
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never got there: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Tags the contact, waits an hour, ends.
fn waiting_flow() -> Value {
    json!({
        "triggers": [{"type": "event", "name": "order_shipped"}],
        "start": "hello",
        "steps": [
            {"type": "action", "id": "hello", "actions": [{"add_tag": "welcomed"}], "next": "wait"},
            {"type": "delay", "id": "wait", "for": "1h", "next": "bye"},
            {"type": "stop", "id": "bye"}
        ]
    })
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
    flow_lifecycle,
    runs_stats_and_release,
    events_start_flows,
    tags_added_through_the_api_start_flows,
    workspace_isolation,
    scopes,
    topics_and_settings,
);

async fn flow_lifecycle(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;

    // A draft that reads but is incomplete is kept, with its problems.
    let draft = json!({
        "start": "hello",
        "steps": [{"type": "action", "id": "hello", "actions": [{"add_tag": "welcomed"}], "next": "wiat"}]
    });
    let a = h
        .post(
            "/api/v1/flows",
            &k,
            json!({"name": "Welcome", "document": draft}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let created = a.json();
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["revision"], 1);
    assert_eq!(created["published_version"], Value::Null);
    assert_eq!(created["draft"]["start"], "hello");
    assert_eq!(a.problem_codes(), vec!["dangling_target"]);
    assert_eq!(created["problems"][0]["step"], "hello");
    assert_eq!(created["problems"][0]["path"], "steps[0].next");

    // YAML in, the name taken from the document.
    let yaml = "name: From YAML\nstart: a\nsteps:\n  - type: delay\n    id: a\n    for: 2h\n    next: b\n  - type: stop\n    id: b\n";
    let a = h.post("/api/v1/flows", &k, json!({"yaml": yaml})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json()["name"], "From YAML");
    assert_eq!(a.json()["draft"]["steps"][0]["for"], "2h");
    assert!(a.problem_codes().is_empty(), "{}", a.text);

    // A YAML file posted as is.
    let res = h
        .http
        .post(format!("{}/api/v1/flows", h.base))
        .bearer_auth(&k)
        .header("content-type", "application/yaml")
        .body(yaml.replace("From YAML", "Raw YAML"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["name"], "Raw YAML");

    // What does not read as a flow is refused, saying where, and nothing is saved.
    let a = h
        .post(
            "/api/v1/flows",
            &k,
            json!({"name": "Broken", "document": {"start": "a", "steps": [{"type": "sned", "id": "a"}]}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(
        (a.code().as_str(), a.field().as_str()),
        ("invalid_flow", "document")
    );
    assert_eq!(a.problem_codes(), vec!["bad_document"]);
    assert_eq!(a.json()["error"]["details"]["problems"][0]["step"], "a");
    let a = h
        .post(
            "/api/v1/flows",
            &k,
            json!({"name": "Broken", "yaml": "start: [a\n"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow".to_string())
    );
    assert_eq!(a.problem_codes(), vec!["syntax"]);
    let a = h
        .post(
            "/api/v1/flows",
            &k,
            json!({"name": "Both", "yaml": yaml, "document": draft}),
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "yaml".to_string())
    );
    let a = h.post("/api/v1/flows", &k, json!({"name": "None"})).await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "document".to_string())
    );
    let a = h
        .post("/api/v1/flows", &k, json!({"document": draft}))
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "name".to_string())
    );
    let a = h
        .post(
            "/api/v1/flows",
            &k,
            json!({"name": "Welcome", "document": draft}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_name_taken".to_string())
    );
    let list = h.get("/api/v1/flows", &k).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let names: BTreeSet<String> = list
        .json()
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "Welcome".to_string(),
            "From YAML".to_string(),
            "Raw YAML".to_string()
        ])
    );

    // Reading computes the problems again.
    let a = h.get(&format!("/api/v1/flows/{id}"), &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.problem_codes(), vec!["dangling_target"]);

    // Optimistic editing: a change on an old revision is refused.
    let a = h
        .patch(
            &format!("/api/v1/flows/{id}"),
            &k,
            json!({"name": "Welcome chain", "revision": 1}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (a.json()["name"].clone(), a.json()["revision"].clone()),
        (json!("Welcome chain"), json!(2))
    );
    let a = h
        .patch(
            &format!("/api/v1/flows/{id}"),
            &k,
            json!({"name": "Stale", "revision": 1}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_changed".to_string())
    );
    assert_eq!(
        h.get(&format!("/api/v1/flows/{id}"), &k).await.json()["name"],
        "Welcome chain"
    );
    let a = h
        .patch(
            &format!("/api/v1/flows/{id}"),
            &k,
            json!({"document": {"start": 5}}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow".to_string())
    );
    let a = h
        .patch(&format!("/api/v1/flows/{id}"), &k, json!({"nmae": "x"}))
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "nmae".to_string())
    );

    // Publishing refuses a draft with problems, naming the steps.
    let a = h
        .post(&format!("/api/v1/flows/{id}/publish"), &k, json!({}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow".to_string())
    );
    let problems = a.json()["error"]["details"]["problems"].clone();
    assert_eq!(problems[0]["step"], "hello", "{}", a.text);
    assert_eq!(problems[0]["code"], "dangling_target");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("1 problem"));

    // Fixed, it publishes as version 1, then 2.
    let a = h
        .patch(
            &format!("/api/v1/flows/{id}"),
            &k,
            json!({"document": waiting_flow(), "revision": 2}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.problem_codes().is_empty(), "{}", a.text);
    let a = h
        .post(&format!("/api/v1/flows/{id}/publish"), &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["version"], 1);
    assert_eq!(a.json()["flow_id"], id);
    assert_eq!(a.json()["document"]["start"], "hello");
    let a = h
        .post(&format!("/api/v1/flows/{id}/publish"), &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["version"], 2);
    let flow = h.get(&format!("/api/v1/flows/{id}"), &k).await.json();
    assert_eq!(
        (flow["status"].clone(), flow["published_version"].clone()),
        (json!("published"), json!(2))
    );
    let a = h.get(&format!("/api/v1/flows/{id}/versions/1"), &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["document"]["steps"][1]["id"], "wait");
    let a = h.get(&format!("/api/v1/flows/{id}/versions/3"), &k).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "not_found".to_string())
    );

    // Export: YAML by default, JSON on request.
    let a = h.get(&format!("/api/v1/flows/{id}/export"), &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.headers["content-type"], "text/yaml; charset=utf-8");
    assert!(a.headers["content-disposition"]
        .to_str()
        .unwrap_or_default()
        .contains(&format!("flow-{id}.yaml")));
    assert!(a.text.contains("start: hello"), "{}", a.text);
    assert!(a.text.contains("order_shipped"), "{}", a.text);
    let same = h
        .post("/api/v1/flows/validate", &k, json!({"yaml": a.text}))
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert!(same.problem_codes().is_empty(), "{}", same.text);
    let a = h
        .get(&format!("/api/v1/flows/{id}/export?format=json"), &k)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.headers["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("application/json"));
    assert_eq!(a.json()["steps"][0]["id"], "hello");
    let a = h
        .get(&format!("/api/v1/flows/{id}/export?format=xml"), &k)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_request".to_string())
    );

    // Validation without saving: 200 with problems, 422 only for what does not read.
    let a = h
        .post("/api/v1/flows/validate", &k, json!({"document": draft}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.problem_codes(), vec!["dangling_target"]);
    let a = h
        .post("/api/v1/flows/validate", &k, json!({"yaml": "steps: []\n"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_flow".to_string())
    );
    assert_eq!(a.problem_codes(), vec!["bad_document"]);

    // Stats of a flow nobody ran yet.
    let a = h.get(&format!("/api/v1/flows/{id}/stats"), &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json()["runs"],
        json!({"active": 0, "waiting": 0, "done": 0, "stopped": 0, "cancelled": 0, "failed": 0})
    );

    // Archived: out of the default list, frozen, not startable.
    let a = h
        .post(&format!("/api/v1/flows/{id}/archive"), &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["status"], "archived");
    let listed = |v: &Value| -> BTreeSet<i64> {
        v.as_array()
            .expect("list")
            .iter()
            .filter_map(|f| f["id"].as_i64())
            .collect()
    };
    assert!(!listed(&h.get("/api/v1/flows", &k).await.json()).contains(&id));
    assert!(listed(&h.get("/api/v1/flows?archived=true", &k).await.json()).contains(&id));
    let a = h.get("/api/v1/flows?archived=maybe", &k).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = h
        .patch(&format!("/api/v1/flows/{id}"), &k, json!({"name": "Again"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_archived".to_string())
    );
    let a = h
        .post(&format!("/api/v1/flows/{id}/publish"), &k, json!({}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_archived".to_string())
    );
    let c = h.contact(&k, json!({"first_name": "Ann"})).await;
    let a = h
        .post(
            &format!("/api/v1/flows/{id}/runs"),
            &k,
            json!({"contact_id": c}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_archived".to_string())
    );
}

async fn runs_stats_and_release(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let id = h.published(&k, "Welcome", waiting_flow()).await;
    let c = h.contact(&k, json!({"first_name": "Ann"})).await;

    // Refusals first: unknown contact, unpublished flow, bad data.
    let a = h
        .post(
            &format!("/api/v1/flows/{id}/runs"),
            &k,
            json!({"contact_id": 999_999}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "not_found".to_string())
    );
    let a = h
        .post("/api/v1/flows/999999/runs", &k, json!({"contact_id": c}))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let unpublished = h.flow(&k, "Draft only", waiting_flow()).await;
    let a = h
        .post(
            &format!("/api/v1/flows/{unpublished}/runs"),
            &k,
            json!({"contact_id": c}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "flow_not_published".to_string())
    );
    let a = h
        .post(
            &format!("/api/v1/flows/{id}/runs"),
            &k,
            json!({"contact_id": c, "data": [1]}),
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "data".to_string())
    );

    let a = h
        .post(
            &format!("/api/v1/flows/{id}/runs"),
            &k,
            json!({"contact_id": c, "data": {"source": "crm"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json(), json!({"queued": true}));

    // The run goes through the action and waits at the delay.
    let page = h
        .eventually(
            &format!("/api/v1/flows/{id}/runs?status=waiting&step=wait"),
            &k,
            |v| v["data"].as_array().is_some_and(|d| d.len() == 1),
        )
        .await;
    let run = &page["data"][0];
    assert_eq!(run["contact_id"], c);
    assert_eq!(run["flow_id"], id);
    assert_eq!(run["version"], 1);
    assert_eq!(run["wait"], "delay");
    assert_eq!(run["trigger"], "api");
    assert_eq!(run["vars"]["trigger"]["source"], "crm");
    assert_eq!(page["next_cursor"], Value::Null);
    let tags = h.get(&format!("/api/v1/contacts/{c}"), &k).await.json()["tags"].clone();
    assert_eq!(tags, json!(["welcomed"]));

    // Filters and paging.
    let a = h
        .get(&format!("/api/v1/flows/{id}/runs?status=done"), &k)
        .await;
    assert_eq!(a.json()["data"], json!([]));
    let a = h
        .get(&format!("/api/v1/flows/{id}/runs?step=hello"), &k)
        .await;
    assert_eq!(a.json()["data"], json!([]));
    let a = h
        .get(&format!("/api/v1/flows/{id}/runs?status=sleeping"), &k)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_request".to_string())
    );
    let a = h
        .get(&format!("/api/v1/flows/{id}/runs?before=zzz"), &k)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = h.get(&format!("/api/v1/flows/{id}/runs?limit=0"), &k).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = h
        .get(&format!("/api/v1/flows/{id}/runs?colour=red"), &k)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // A second contact: two runs, one per page.
    let c2 = h.contact(&k, json!({"first_name": "Bob"})).await;
    let a = h
        .post(
            &format!("/api/v1/flows/{id}/runs"),
            &k,
            json!({"contact_id": c2}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    h.eventually(
        &format!("/api/v1/flows/{id}/runs?status=waiting"),
        &k,
        |v| v["data"].as_array().is_some_and(|d| d.len() == 2),
    )
    .await;
    let first = h
        .get(&format!("/api/v1/flows/{id}/runs?limit=1"), &k)
        .await
        .json();
    assert_eq!(first["data"][0]["contact_id"], c2, "newest first");
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_string();
    let second = h
        .get(
            &format!("/api/v1/flows/{id}/runs?limit=1&before={cursor}"),
            &k,
        )
        .await
        .json();
    assert_eq!(second["data"][0]["contact_id"], c);

    // The contact's own runs.
    let a = h.get(&format!("/api/v1/contacts/{c}/runs"), &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json().as_array().map(Vec::len), Some(1));
    assert_eq!(a.json()[0]["step_id"], "wait");
    let a = h.get("/api/v1/contacts/999999/runs", &k).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    // Stats count runs by status and steps by version.
    let stats = h.get(&format!("/api/v1/flows/{id}/stats"), &k).await.json();
    assert_eq!(stats["runs"]["waiting"], 2, "{stats}");
    let hello = stats["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step_id"] == "hello")
        .cloned()
        .unwrap_or_else(|| panic!("no counter for hello: {stats}"));
    assert_eq!(
        (hello["version"].clone(), hello["entered"].clone()),
        (json!(1), json!(2))
    );

    // A handoff waits for an operator; releasing the contact lets the run go on.
    let handoff = h
        .published(
            &k,
            "Human",
            json!({"start": "human", "steps": [{"type": "handoff", "id": "human", "note": "call back"}]}),
        )
        .await;
    let a = h
        .post(
            &format!("/api/v1/flows/{handoff}/runs"),
            &k,
            json!({"contact_id": c2}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    h.eventually(
        &format!("/api/v1/flows/{handoff}/runs?status=waiting"),
        &k,
        |v| v["data"][0]["wait"] == "handoff",
    )
    .await;
    let a = h
        .post(&format!("/api/v1/contacts/{c2}/release"), &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json(), json!({"queued": true}));
    h.eventually(&format!("/api/v1/flows/{handoff}/runs"), &k, |v| {
        v["data"][0]["status"] == "done"
    })
    .await;
    let a = h
        .post("/api/v1/contacts/999999/release", &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    // Archiving cancels the runs in flight.
    let a = h
        .post(&format!("/api/v1/flows/{id}/archive"), &k, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let stats = h.get(&format!("/api/v1/flows/{id}/stats"), &k).await.json();
    assert_eq!(
        (
            stats["runs"]["waiting"].clone(),
            stats["runs"]["cancelled"].clone()
        ),
        (json!(0), json!(2))
    );
}

async fn events_start_flows(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let channel = h
        .post(
            "/api/v1/channels",
            &k,
            json!({"kind": "webchat", "name": "Site"}),
        )
        .await;
    assert_eq!(channel.status, StatusCode::CREATED, "{}", channel.text);
    let channel = channel.json()["id"].as_i64().expect("channel id");
    let id = h.published(&k, "Shipping", waiting_flow()).await;
    let c = h
        .contact(
            &k,
            json!({"first_name": "Ann", "identities": [{"channel_id": channel, "external_id": "visitor-1"}]}),
        )
        .await;

    // Refusals.
    for (body, field) in [
        (json!({"contact_id": c, "name": "Order Shipped"}), "name"),
        (json!({"contact_id": c, "name": ""}), "name"),
        (json!({"contact_id": c, "name": "x".repeat(65)}), "name"),
        (
            json!({"contact_id": c, "name": "order_shipped", "data": "A-1"}),
            "data",
        ),
        (json!({"name": "order_shipped"}), "contact_id"),
        (
            json!({"contact_id": c, "identity": {"channel_id": channel, "external_id": "visitor-1"}, "name": "order_shipped"}),
            "identity",
        ),
        (
            json!({"contact_id": c, "name": "order_shipped", "extra": 1}),
            "extra",
        ),
    ] {
        let a = h.post("/api/v1/events", &k, body.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            a.text
        );
        assert_eq!(
            (a.code().as_str(), a.field().as_str()),
            ("validation_failed", field),
            "{body}"
        );
    }
    let a = h
        .post(
            "/api/v1/events",
            &k,
            json!({"contact_id": 999_999, "name": "order_shipped"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "not_found".to_string())
    );
    let a = h
        .post(
            "/api/v1/events",
            &k,
            json!({"identity": {"channel_id": channel, "external_id": "nobody"}, "name": "order_shipped"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert!(h
        .get(&format!("/api/v1/contacts/{c}/runs"), &k)
        .await
        .json()
        .as_array()
        .is_some_and(Vec::is_empty));

    // Accepted: the flow listening for it starts, with the event's data.
    let a = h
        .post(
            "/api/v1/events",
            &k,
            json!({"contact_id": c, "name": "order_shipped", "data": {"order_id": "A-1"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json(), json!({"accepted": true}));
    let runs = h
        .eventually(&format!("/api/v1/contacts/{c}/runs"), &k, |v| {
            v.as_array().is_some_and(|r| r.len() == 1)
        })
        .await;
    assert_eq!(runs[0]["flow_id"], id);
    assert_eq!(runs[0]["vars"]["trigger"]["order_id"], "A-1");

    // An event nobody listens for is accepted and starts nothing.
    let a = h
        .post(
            "/api/v1/events",
            &k,
            json!({"contact_id": c, "name": "v2.page-view"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);

    // By identity; the contact's run is still live, so re-entry waits for its end.
    let a = h
        .post(
            "/api/v1/events",
            &k,
            json!({"identity": {"channel_id": channel, "external_id": " visitor-1 "}, "name": "order_shipped"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);

    // Without the scope.
    let (ws2, _) = workspace(&h, "Other").await;
    let writer = key(&h.store, ws2, &[Scope::ContactsWrite]).await;
    let a = h
        .post(
            "/api/v1/events",
            &writer,
            json!({"contact_id": c, "name": "order_shipped"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "forbidden".to_string())
    );
    assert_eq!(
        a.json()["error"]["details"]["required_scope"],
        "events:write"
    );
}

async fn tags_added_through_the_api_start_flows(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;
    let a = h.post("/api/v1/tags", &k, json!({"name": "vip"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = h
        .published(
            &k,
            "VIP",
            json!({"triggers": [{"type": "tag_added", "tag": "vip"}], "start": "wait",
                   "steps": [{"type": "delay", "id": "wait", "for": "1d"}]}),
        )
        .await;

    // Added to an existing contact.
    let c = h.contact(&k, json!({"first_name": "Ann"})).await;
    let a = h
        .post(
            &format!("/api/v1/contacts/{c}/tags"),
            &k,
            json!({"tags": ["vip", "other"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let runs = h
        .eventually(&format!("/api/v1/contacts/{c}/runs"), &k, |v| {
            v.as_array().is_some_and(|r| r.len() == 1)
        })
        .await;
    assert_eq!(runs[0]["flow_id"], id);
    assert_eq!(
        runs[0]["trigger"].as_str().map(|t| t.contains("vip")),
        Some(true),
        "{runs}"
    );

    // Given to a new contact.
    let c2 = h
        .contact(&k, json!({"first_name": "Bob", "tags": ["vip"]}))
        .await;
    h.eventually(&format!("/api/v1/contacts/{c2}/runs"), &k, |v| {
        v.as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
}

async fn workspace_isolation(h: Harness) {
    let (_a, ka) = workspace(&h, "A").await;
    let (_b, kb) = workspace(&h, "B").await;
    let fa = h.published(&ka, "Welcome", waiting_flow()).await;
    let ca = h.contact(&ka, json!({"first_name": "Ann"})).await;
    let fb = h.published(&kb, "Welcome", waiting_flow()).await;
    let cb = h.contact(&kb, json!({"first_name": "Bob"})).await;

    for (method, path, body) in [
        (Method::GET, format!("/api/v1/flows/{fa}"), None),
        (
            Method::PATCH,
            format!("/api/v1/flows/{fa}"),
            Some(json!({"name": "Mine"})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{fa}/publish"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{fa}/archive"),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/flows/{fa}/versions/1"), None),
        (Method::GET, format!("/api/v1/flows/{fa}/export"), None),
        (Method::GET, format!("/api/v1/flows/{fa}/runs"), None),
        (Method::GET, format!("/api/v1/flows/{fa}/stats"), None),
        (
            Method::POST,
            format!("/api/v1/flows/{fa}/runs"),
            Some(json!({"contact_id": cb})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{fb}/runs"),
            Some(json!({"contact_id": ca})),
        ),
        (Method::GET, format!("/api/v1/contacts/{ca}/runs"), None),
        (
            Method::POST,
            format!("/api/v1/contacts/{ca}/release"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/v1/events".to_string(),
            Some(json!({"contact_id": ca, "name": "order_shipped"})),
        ),
    ] {
        let a = h.send(method.clone(), &path, &kb, body).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::NOT_FOUND, "not_found".to_string()),
            "{method} {path}: {}",
            a.text
        );
    }
    let listed = h.get("/api/v1/flows", &kb).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], fb);
    // A's flow is untouched.
    let a = h.get(&format!("/api/v1/flows/{fa}"), &ka).await.json();
    assert_eq!(
        (
            a["name"].clone(),
            a["status"].clone(),
            a["published_version"].clone()
        ),
        (json!("Welcome"), json!("published"), json!(1))
    );
    // Topics and settings are per workspace too.
    assert_eq!(
        h.post(
            "/api/v1/topics",
            &ka,
            json!({"key": "news", "name": "News"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(h.get("/api/v1/topics", &kb).await.json(), json!([]));
    assert_eq!(
        h.post(
            "/api/v1/topics",
            &kb,
            json!({"key": "news", "name": "News"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let a = h
        .put(
            "/api/v1/workspace/settings",
            &ka,
            json!({"time_zone": "Asia/Tokyo"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        h.get("/api/v1/workspace/settings", &kb).await.json()["time_zone"],
        "UTC"
    );
}

async fn scopes(h: Harness) {
    let (ws, k) = workspace(&h, "W").await;
    let id = h.flow(&k, "Welcome", waiting_flow()).await;
    let c = h.contact(&k, json!({"first_name": "Ann"})).await;
    let reader = key(&h.store, ws, &[Scope::FlowsRead]).await;
    let contacts = key(&h.store, ws, &[Scope::ContactsRead, Scope::ContactsWrite]).await;

    // Reading needs flows:read; changing needs flows:write.
    assert_eq!(h.get("/api/v1/flows", &reader).await.status, StatusCode::OK);
    assert_eq!(
        h.get(&format!("/api/v1/flows/{id}"), &reader).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get(&format!("/api/v1/contacts/{c}/runs"), &reader)
            .await
            .status,
        StatusCode::OK
    );
    let a = h
        .post(
            "/api/v1/flows/validate",
            &reader,
            json!({"document": waiting_flow()}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/flows".to_string(),
            Some(json!({"name": "X", "document": waiting_flow()})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/flows/{id}"),
            Some(json!({"name": "Y"})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{id}/publish"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{id}/archive"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{id}/runs"),
            Some(json!({"contact_id": c})),
        ),
    ] {
        let a = h.send(method.clone(), &path, &reader, body).await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            a.text
        );
        assert_eq!(
            a.json()["error"]["details"]["required_scope"],
            "flows:write"
        );
    }
    let a = h.get("/api/v1/flows", &contacts).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json()["error"]["details"]["required_scope"], "flows:read");
    // Releasing a handed-off contact is an operator's job: contacts:write.
    let a = h
        .post(&format!("/api/v1/contacts/{c}/release"), &reader, json!({}))
        .await;
    assert_eq!(
        a.json()["error"]["details"]["required_scope"],
        "contacts:write"
    );
    let a = h
        .post(
            &format!("/api/v1/contacts/{c}/release"),
            &contacts,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    // Settings: any key reads them, only admin changes them.
    assert_eq!(
        h.get("/api/v1/workspace/settings", &reader).await.status,
        StatusCode::OK
    );
    let a = h
        .put(
            "/api/v1/workspace/settings",
            &reader,
            json!({"time_zone": "UTC"}),
        )
        .await;
    assert_eq!(a.json()["error"]["details"]["required_scope"], "admin");
    // Topics: contacts:read lists, schema:write creates.
    assert_eq!(
        h.get("/api/v1/topics", &contacts).await.status,
        StatusCode::OK
    );
    let a = h
        .post(
            "/api/v1/topics",
            &contacts,
            json!({"key": "news", "name": "News"}),
        )
        .await;
    assert_eq!(
        a.json()["error"]["details"]["required_scope"],
        "schema:write"
    );
    // Nothing changed.
    let flow = h.get(&format!("/api/v1/flows/{id}"), &k).await.json();
    assert_eq!(
        (flow["name"].clone(), flow["status"].clone()),
        (json!("Welcome"), json!("draft"))
    );
}

async fn topics_and_settings(h: Harness) {
    let (_ws, k) = workspace(&h, "W").await;

    // Topics.
    assert_eq!(h.get("/api/v1/topics", &k).await.json(), json!([]));
    let a = h
        .post("/api/v1/topics", &k, json!({"key": "news", "name": "News"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json(), json!({"key": "news", "name": "News"}));
    let a = h
        .post(
            "/api/v1/topics",
            &k,
            json!({"key": "news", "name": "Other"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "topic_exists".to_string())
    );
    let a = h
        .post(
            "/api/v1/topics",
            &k,
            json!({"key": "two words", "name": "X"}),
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "key".to_string())
    );
    let a = h
        .post("/api/v1/topics", &k, json!({"key": "promo", "name": ""}))
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "name".to_string())
    );
    let a = h.post("/api/v1/topics", &k, json!({"key": "promo"})).await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "name".to_string())
    );
    assert_eq!(
        h.get("/api/v1/topics", &k).await.json(),
        json!([{"key": "news", "name": "News"}])
    );

    // Flows are checked against the workspace's topics and fields as they are now.
    let doc = json!({"start": "a", "steps": [
        {"type": "action", "id": "a", "actions": [{"subscribe": "promo"}, {"set_field": {"field": "city", "value": "Kazan"}}]}
    ]});
    let a = h
        .post("/api/v1/flows/validate", &k, json!({"document": doc}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.problem_codes(), vec!["unknown_topic", "unknown_field"]);
    assert_eq!(
        h.post(
            "/api/v1/topics",
            &k,
            json!({"key": "promo", "name": "Promo"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let field = h
        .post(
            "/api/v1/fields",
            &k,
            json!({"key": "city", "label": "City", "type": "text"}),
        )
        .await;
    assert_eq!(field.status, StatusCode::CREATED, "{}", field.text);
    let a = h
        .post("/api/v1/flows/validate", &k, json!({"document": doc}))
        .await;
    assert!(a.problem_codes().is_empty(), "{}", a.text);

    // Settings: defaults, a round trip, and refusals that change nothing.
    let a = h.get("/api/v1/workspace/settings", &k).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json(),
        json!({"time_zone": "UTC", "quiet_from": "21:00", "quiet_to": "09:00", "quiet_weekends": false, "frequency_cap": {"messages": 2, "hours": 24}})
    );
    let saved = json!({"time_zone": "Europe/Moscow", "quiet_from": "22:00", "quiet_to": "08:30", "quiet_weekends": true, "frequency_cap": {"messages": 2, "hours": 24}});
    let a = h
        .put(
            "/api/v1/workspace/settings",
            &k,
            json!({"time_zone": "Europe/Moscow", "quiet_from": "22:00", "quiet_to": "8:30", "quiet_weekends": true}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json(), saved);
    assert_eq!(h.get("/api/v1/workspace/settings", &k).await.json(), saved);
    for (body, field) in [
        (json!({"time_zone": "Mars/Olympus"}), "time_zone"),
        (
            json!({"time_zone": "UTC", "quiet_from": "22:00", "quiet_to": null}),
            "quiet_to",
        ),
        (
            json!({"time_zone": "UTC", "quiet_from": null, "quiet_to": "07:00"}),
            "quiet_from",
        ),
        (
            json!({"time_zone": "UTC", "quiet_from": "25:00", "quiet_to": "07:00"}),
            "quiet_from",
        ),
        (
            json!({"time_zone": "UTC", "quiet_from": "22:00", "quiet_to": "7"}),
            "quiet_to",
        ),
        (
            json!({"time_zone": "UTC", "quiet_hours": true}),
            "quiet_hours",
        ),
        (json!({"time_zone": 3}), "time_zone"),
    ] {
        let a = h.put("/api/v1/workspace/settings", &k, body.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            a.text
        );
        assert_eq!(
            (a.code().as_str(), a.field().as_str()),
            ("validation_failed", field),
            "{body}"
        );
    }
    assert_eq!(h.get("/api/v1/workspace/settings", &k).await.json(), saved);
    // No quiet hours at all.
    let a = h
        .put(
            "/api/v1/workspace/settings",
            &k,
            json!({"time_zone": "UTC", "quiet_from": null, "quiet_to": null}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        h.get("/api/v1/workspace/settings", &k).await.json(),
        json!({"time_zone": "UTC", "quiet_from": null, "quiet_to": null, "quiet_weekends": false, "frequency_cap": {"messages": 2, "hours": 24}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_flow_routes() {
    let h = start(Backend::Sqlite).await.expect("sqlite store");
    let (_ws, k) = workspace(&h, "W").await;
    let r = h.get("/api/v1/openapi.json", &k).await;
    assert_eq!(r.status, StatusCode::OK);
    oas3::from_json(&r.text).expect("oas3 parses the document as OpenAPI 3.1");
    let doc = r.json();
    let routes = [
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
        "GET /api/v1/topics",
        "POST /api/v1/topics",
        "GET /api/v1/workspace/settings",
        "PUT /api/v1/workspace/settings",
    ];
    for route in routes {
        let (method, path) = route.split_once(' ').expect("method and path");
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op["operationId"].is_string(), "{route} is not documented");
        assert_eq!(
            op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{route}"
        );
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, templated, "{route} path parameters");
        // Routed: not the fallback's "no such route".
        let concrete = path.replace("{id}", "999999").replace("{version}", "1");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let a = h.send(method, &concrete, &k, None).await;
        assert!(
            !(a.status == StatusCode::NOT_FOUND && a.text.contains("no such route"))
                && a.status != StatusCode::METHOD_NOT_ALLOWED,
            "{route} is not routed: {} {}",
            a.status,
            a.text
        );
    }
    for schema in [
        "FlowView",
        "Problem",
        "RunPage",
        "FlowStats",
        "WorkspaceSettings",
        "Topic",
        "PostEvent",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "no schema {schema}"
        );
    }
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
    for r in &all {
        assert!(
            doc.pointer(r.trim_start_matches('#')).is_some(),
            "unresolved $ref {r}"
        );
    }
}
