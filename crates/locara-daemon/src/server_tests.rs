//! The real router, driven in-process with `tower::ServiceExt::oneshot`
//! over the fake engine: the Host/Origin guard, tokens, app budgets, a
//! stream whose worker dies, and `Retry-After` on 429 and 503.

use super::*;
use crate::apps::Token;
use crate::config::RawServeConfig;
use crate::testing::FakeEngine;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

// `/v1/embeddings` and Ollama's routes, with these helpers.
#[path = "api_tests.rs"]
mod api_tests;

// Tool calling on both APIs, with these helpers.
#[path = "tools_tests.rs"]
mod tools_tests;

/// The address the daemon says it listens on; nothing is bound.
const LISTEN: &str = "127.0.0.1:11480";

/// The one web origin let in.
const ALLOWED_ORIGIN: &str = "http://localhost:3000";

/// How long a test waits for a body before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// A manifest declaring `m:1` only, with `extra` appended.
fn manifest(id: &str, extra: &str) -> String {
    format!(
        "id = \"{id}\"\nname = \"App\"\nversion = \"1.0.0\"\n[[models]]\nref = \"m:1\"\n{extra}"
    )
}

/// The router over a runtime of `engine`'s fake workers, with the models
/// `m:1` and `n:1` in the store.
struct Daemon {
    router: Router,
    state: Arc<AppState>,
    engine: Arc<FakeEngine>,
    _home: tempfile::TempDir,
}

impl Daemon {
    fn new(engine: Arc<FakeEngine>, tokenless: bool, extra: RawServeConfig) -> Daemon {
        let home = tempfile::tempdir().unwrap();
        let state = crate::testing::app_state(
            home.path(),
            &["m:1", "n:1"],
            Arc::clone(&engine),
            extra,
            LISTEN.parse().unwrap(),
            vec![ALLOWED_ORIGIN.to_owned()],
            tokenless,
        );
        Daemon {
            router: router(Arc::clone(&state), 1 << 20),
            state,
            engine,
            _home: home,
        }
    }

    /// Installs an app; its token.
    fn install(&self, manifest_text: &str) -> Token {
        let (_, token) = self
            .state
            .auth
            .apps
            .install(manifest_text, "app.toml", |_| Ok(()))
            .unwrap();
        token
    }

    fn admin(&self) -> String {
        self.state.auth.admin.as_str().to_owned()
    }

    async fn send(&self, request: Request<Body>) -> Response {
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// Loads each model through the admin's load route; each must answer
    /// 200.
    async fn load_as_admin(&self, models: &[&str]) {
        let admin = self.admin();
        for model in models {
            let load = post(
                &format!("/locara/v1/models/{model}/load"),
                Some(&admin),
                json!({}),
            );
            assert_eq!(self.send(load).await.status(), StatusCode::OK, "{model}");
        }
    }
}

/// A request to `path` with this daemon's Host, `token` as a bearer token
/// and `body` as JSON.
fn request(method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, LISTEN);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(b) => r
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => r.body(Body::empty()),
    }
    .unwrap()
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    request(Method::GET, path, token, None)
}

fn post(path: &str, token: Option<&str>, body: Value) -> Request<Body> {
    request(Method::POST, path, token, Some(body))
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    body
}

/// The whole body, read within the deadline.
async fn body_text(response: Response) -> String {
    let bytes = tokio::time::timeout(
        DEADLINE,
        axum::body::to_bytes(response.into_body(), 1 << 20),
    )
    .await
    .expect("the body ends within the deadline")
    .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The status, `Retry-After` and the error body of an error answer.
async fn error_of(response: Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = body_text(response).await;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, retry_after, body["error"].clone())
}

/// The ids in a `/v1/models` answer.
async fn model_ids(response: Response) -> Vec<String> {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn app_routes_take_an_app_or_the_admin_token_and_nothing_else() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.notes", ""));

    let (status, _, e) = error_of(d.send(get("/v1/models", None)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(e["type"], "unauthorized");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{e}"
    );

    // The form of an app token, but not one the registry issued.
    let forged = format!("lca_{}", "0".repeat(64));
    for bad in [forged.as_str(), "lca_admin_nope", ""] {
        let (status, _, e) = error_of(d.send(get("/v1/models", Some(bad))).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(e["type"], "unauthorized");
    }

    // The admin sees every model, an app the ones its manifest declares.
    let admin = d.admin();
    let all = model_ids(d.send(get("/v1/models", Some(&admin))).await).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.contains(&"m:1".to_owned()) && all.contains(&"n:1".to_owned()));
    let mine = model_ids(d.send(get("/v1/models", Some(app.as_str()))).await).await;
    assert_eq!(mine, ["m:1"]);
}

#[tokio::test]
async fn management_routes_take_the_admin_token_only() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.notes", ""));
    let load = "/locara/v1/models/m:1/load";

    let (status, _, e) = error_of(d.send(post(load, None, json!({}))).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(e["type"], "unauthorized");

    let (status, _, e) = error_of(d.send(post(load, Some(app.as_str()), json!({}))).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e["type"], "forbidden");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("com.example.notes may not manage the daemon"),
        "{e}"
    );
    assert_eq!(d.engine.spawned(), 0, "refused before any load");

    let admin = d.admin();
    let response = d.send(post(load, Some(&admin), json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body, json!({"model": "m:1", "loaded": true}));
    assert_eq!(d.engine.spawned(), 1);
}

#[tokio::test]
async fn an_app_may_generate_only_with_the_models_it_declares() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.notes", ""));

    let refused = post(
        "/v1/chat/completions",
        Some(app.as_str()),
        chat("n:1", json!({})),
    );
    let (status, _, e) = error_of(d.send(refused).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "model_not_declared");
    assert_eq!(e["param"], "model");
    assert_eq!(d.engine.spawned(), 0, "refused before any load");

    let allowed = post(
        "/v1/chat/completions",
        Some(app.as_str()),
        chat("m:1", json!({})),
    );
    let response = d.send(allowed).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "t0 t1 ");
}

#[tokio::test]
async fn host_and_origin_are_checked_before_the_token() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let admin = d.admin();
    let with = |host: Option<&str>, origin: Option<&str>, token: Option<&str>| {
        let mut r = get("/v1/models", token);
        let headers = r.headers_mut();
        match host {
            Some(h) => headers.insert(header::HOST, HeaderValue::from_str(h).unwrap()),
            None => headers.remove(header::HOST),
        };
        if let Some(o) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        r
    };

    // A DNS-rebinding page's host name, another port, no Host at all: 403,
    // with or without a token, and never a 401 that would invite one.
    for host in [Some("evil.example:11480"), Some("localhost:80"), None] {
        for token in [None, Some(admin.as_str())] {
            let (status, _, e) = error_of(d.send(with(host, None, token)).await).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host:?}");
            assert_eq!(e["code"], "host_not_allowed", "{host:?}");
        }
    }
    for origin in ["http://evil.example", "null", "http://localhost:3001"] {
        let (status, _, e) = error_of(d.send(with(Some(LISTEN), Some(origin), None)).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(e["code"], "origin_not_allowed", "{origin}");
    }

    // Past the guard, the token decides.
    let (status, _, _) = error_of(d.send(with(Some("localhost:11480"), None, None)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (host, origin) in [
        ("localhost:11480", None),
        ("[::1]:11480", None),
        (LISTEN, Some(ALLOWED_ORIGIN)),
    ] {
        let response = d.send(with(Some(host), origin, Some(&admin))).await;
        assert_eq!(response.status(), StatusCode::OK, "{host} {origin:?}");
    }
}

#[tokio::test]
async fn an_app_whose_load_would_pass_its_budget_is_refused_with_the_numbers() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    // 0.001 GiB: about 1 MiB, less than the synthetic model's estimate.
    let app = d.install(&manifest(
        "com.example.notes",
        "[requires]\nmemory_gb = 0.001\n",
    ));
    let ask = || {
        post(
            "/v1/chat/completions",
            Some(app.as_str()),
            chat("m:1", json!({})),
        )
    };
    let (status, retry_after, e) = error_of(d.send(ask()).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["type"], "insufficient_memory");
    assert_eq!(e["code"], "app_budget_exceeded");
    assert_eq!(retry_after, None, "waiting does not raise a budget");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "app com.example.notes may hold 1.0 MiB (requires.memory_gb of its manifest); \
             it holds 0 B and loading m:1 would add "
        ),
        "{message}"
    );
    assert_eq!(d.engine.spawned(), 0, "refused before any load");

    // The admin has no app budget: the same request is served.
    let admin = d.admin();
    let served = post("/v1/chat/completions", Some(&admin), chat("m:1", json!({})));
    assert_eq!(d.send(served).await.status(), StatusCode::OK);
    assert_eq!(d.engine.spawned(), 1);
    let estimate = d.state.runtime.status().await.unwrap().models[0].estimate;
    assert!(estimate > 1 << 20, "the model could not fit: {estimate}");
}

/// The next piece of a streamed body, within the deadline; `None` at its end.
async fn next_chunk(body: &mut axum::body::BodyDataStream) -> Option<String> {
    use futures_util::StreamExt;
    tokio::time::timeout(DEADLINE, body.next())
        .await
        .expect("the stream moves within the deadline")
        .map(|chunk| String::from_utf8(chunk.unwrap().to_vec()).unwrap())
}

#[tokio::test]
async fn a_stream_whose_worker_dies_ends_with_an_error_event() {
    let d = Daemon::new(FakeEngine::stalling(2), true, RawServeConfig::default());
    let response = d
        .send(post(
            "/v1/chat/completions",
            None,
            chat("m:1", json!({"stream": true})),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    // Both tokens are out; the worker stalls, then dies.
    while !text.contains("t1 ") {
        text.push_str(&next_chunk(&mut body).await.expect("the tokens"));
    }
    assert_eq!(d.state.in_flight.load(Ordering::SeqCst), 1);
    d.engine.kill_all();
    while let Some(chunk) = next_chunk(&mut body).await {
        text.push_str(&chunk);
    }

    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(!datas.contains(&openai::STREAM_DONE), "{text}");
    let events: Vec<Value> = datas
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let [role, t0, t1, error] = events.as_slice() else {
        panic!("{text}")
    };
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(t0["choices"][0]["delta"]["content"], "t0 ");
    assert_eq!(t1["choices"][0]["delta"]["content"], "t1 ");
    assert_eq!(error["error"]["type"], "worker_died", "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exited"));
    // The stream's in-flight count is given back with its end.
    assert_eq!(d.state.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    // One sequence, no queue: a second request while one streams is refused.
    let extra = RawServeConfig {
        queue: Some(0),
        ..RawServeConfig::default()
    };
    let d = Daemon::new(FakeEngine::stalling(1), true, extra);
    let ask = |stream: bool| {
        post(
            "/v1/chat/completions",
            None,
            chat("m:1", json!({"stream": stream})),
        )
    };
    let streaming = d.send(ask(true)).await;
    assert_eq!(streaming.status(), StatusCode::OK);

    let (status, retry_after, e) = error_of(d.send(ask(false)).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(retry_after.as_deref(), Some("1"));
    drop(streaming);
}

#[tokio::test]
async fn critical_pressure_refuses_loads_with_503_and_retry_after() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let simulate = post(
        "/locara/v1/pressure/simulate",
        None,
        json!({"level": "critical"}),
    );
    assert_eq!(d.send(simulate).await.status(), StatusCode::OK);

    let ask = post("/v1/chat/completions", None, chat("m:1", json!({})));
    let (status, retry_after, e) = error_of(d.send(ask).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["type"], "model_unavailable");
    assert_eq!(e["code"], "memory_pressure");
    let ladder = locara_core::ladder::LadderConfig::default().retry_after;
    assert_eq!(retry_after, Some(ladder.as_secs().to_string()));
    assert_eq!(d.engine.spawned(), 0, "no load under critical pressure");
}

/// The `data:` payloads that arrive on an event stream until it has been
/// quiet for `quiet`.
async fn events_until_quiet(body: &mut axum::body::BodyDataStream, quiet: Duration) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(quiet, body.next()).await {
        let text = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                out.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn an_app_hears_the_state_first_then_the_level_and_its_own_models_only() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.notes", ""));
    let admin = d.admin();
    d.load_as_admin(&["m:1", "n:1"]).await;
    let subscribe = |token: &str| d.send(get("/locara/v1/events", Some(token)));
    let mut app_events = subscribe(app.as_str()).await.into_body().into_data_stream();
    let mut all_events = subscribe(&admin).await.into_body().into_data_stream();
    // The first events say the state as it is: the level, then power.
    for stream in [&mut app_events, &mut all_events] {
        let first = events_until_quiet(stream, Duration::from_millis(300)).await;
        assert_eq!(first.len(), 2, "{first:?}");
        assert_eq!(
            (first[0]["type"].as_str(), first[0]["level"].as_str()),
            (Some("level"), Some("normal"))
        );
        assert_eq!(first[0]["version"], 1);
        assert_eq!(
            (first[1]["type"].as_str(), first[1]["mode"].as_str()),
            (Some("power"), Some("normal"))
        );
    }
    // Critical: both idle models unload.
    let simulate = post(
        "/locara/v1/pressure/simulate",
        Some(&admin),
        json!({"level": "critical"}),
    );
    assert_eq!(d.send(simulate).await.status(), StatusCode::OK);
    let seen = events_until_quiet(&mut app_events, Duration::from_millis(800)).await;
    let all = events_until_quiet(&mut all_events, Duration::from_millis(300)).await;
    let unloads = |events: &[Value]| -> Vec<String> {
        let mut m: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "action" && e["action"] == "unload")
            .map(|e| e["model"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    };
    assert_eq!(unloads(&all), ["m:1", "n:1"], "{all:?}");
    assert_eq!(unloads(&seen), ["m:1"], "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| e["type"] == "level" && e["level"] == "critical"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| e.to_string().contains("n:1")),
        "another app's model reached this app: {seen:?}"
    );
}

#[tokio::test]
async fn an_app_pins_a_model_only_through_its_manifest() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let plain = d.install(&manifest("com.example.plain", ""));
    let pinned = d.install(&manifest("com.example.pinned", "keep_loaded = true\n"));
    let admin = d.admin();
    let model_status = || async {
        let r = d.send(get("/locara/v1/status", Some(&admin))).await;
        let s: Value = serde_json::from_str(&body_text(r).await).unwrap();
        s["models"][0].clone()
    };

    // keep_alive -1 from an app whose manifest does not ask keep_loaded:
    // capped to the daemon's 3 minutes, and the response says so.
    let ask = post(
        "/v1/chat/completions",
        Some(plain.as_str()),
        chat("m:1", json!({"keep_alive": -1})),
    );
    let r = d.send(ask).await;
    assert_eq!(r.status(), StatusCode::OK);
    let note = r.headers()[crate::server::KEEP_ALIVE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(note.starts_with("3m (asked -1; capped"), "{note}");
    body_text(r).await;
    let m = model_status().await;
    assert_eq!(
        (m["pinned"].as_bool(), m["keep_alive"].as_str()),
        (Some(false), Some("3m")),
        "{m}"
    );

    // An app whose manifest keeps the model loaded pins it without asking.
    let ask = post(
        "/v1/chat/completions",
        Some(pinned.as_str()),
        chat("m:1", json!({})),
    );
    let r = d.send(ask).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get(crate::server::KEEP_ALIVE_HEADER).is_none());
    body_text(r).await;
    assert_eq!(model_status().await["pinned"], true);

    // The admin may pin; nothing is capped for it.
    let ask = post(
        "/v1/chat/completions",
        Some(&admin),
        chat("m:1", json!({"keep_alive": "1h"})),
    );
    let r = d.send(ask).await;
    assert!(r.headers().get(crate::server::KEEP_ALIVE_HEADER).is_none());
    body_text(r).await;
    assert_eq!(model_status().await["keep_alive"], "1h");
}

#[tokio::test]
async fn an_app_generates_at_most_max_concurrency_at_once_then_queues_then_429() {
    let d = Daemon::new(
        FakeEngine::stalling(1),
        false,
        RawServeConfig {
            queue: Some(64),
            parallel: Some(4),
            ..RawServeConfig::default()
        },
    );
    let app = d.install(
        "id = \"com.example.one\"\nname = \"App\"\nversion = \"1.0.0\"\nmax_concurrency = 1\n[[models]]\nref = \"m:1\"\n",
    );
    let ask = || {
        post(
            "/v1/chat/completions",
            Some(app.as_str()),
            chat("m:1", json!({"stream": true})),
        )
    };
    // The first stream takes the app's one place and keeps it (its worker
    // never ends the answer).
    let first = d.send(ask()).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The next waits for it: no answer yet.
    let router = d.router.clone();
    let waiting = tokio::spawn(router.oneshot(ask()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a second generation ran beside the first"
    );
    // Fill the queue, then one more is refused at once.
    let mut queued = Vec::new();
    for _ in 1..crate::server::APP_QUEUE {
        queued.push(tokio::spawn(d.router.clone().oneshot(ask())));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, retry_after, e) = error_of(d.send(ask()).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["code"], "app_concurrency", "{e}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // The admin is not held to the app's limit.
    let admin = d.admin();
    let r = d
        .send(post(
            "/v1/chat/completions",
            Some(&admin),
            chat("m:1", json!({"stream": true})),
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The first ends: the waiting one gets its place.
    drop(first);
    let next = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    for q in queued {
        q.abort();
    }
}

#[tokio::test]
async fn an_app_asks_at_most_the_context_its_manifest_declares() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.short", "context = 1024\n"));
    let ask = |extra| {
        post(
            "/v1/chat/completions",
            Some(app.as_str()),
            chat("m:1", extra),
        )
    };
    let (status, _, e) = error_of(d.send(ask(json!({"context": 2048}))).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "context");
    assert!(
        e["message"].as_str().unwrap().contains("context = 1024"),
        "{e}"
    );
    assert_eq!(d.engine.spawned(), 0);
    // Naming none, the model loads with the declared context.
    let r = d.send(ask(json!({}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    body_text(r).await;
    let admin = d.admin();
    let s: Value = serde_json::from_str(
        &body_text(d.send(get("/locara/v1/status", Some(&admin))).await).await,
    )
    .unwrap();
    assert_eq!(s["models"][0]["context"], 1024, "{s}");
}

/// Imports a synthetic model whose heads are wide enough for a q8_0 K/V
/// cache (32; the plain synthetic model's 16 take f16 only) as `name`.
fn import_wide_model(d: &Daemon, name: &str) {
    let file = d._home.path().join("wide.gguf");
    let bytes = locara_gguf::testing::GgufBuilder::synthetic()
        .set("llama.attention.key_length", locara_gguf::Value::U32(32))
        .set("llama.attention.value_length", locara_gguf::Value::U32(32))
        .build();
    std::fs::write(&file, bytes).unwrap();
    d.state
        .store
        .import(&file, &name.parse().unwrap(), &mut crate::store::NoProgress)
        .unwrap();
}

#[tokio::test]
async fn an_app_that_opts_in_to_f16_gets_a_load_of_its_own() {
    let d = Daemon::new(
        FakeEngine::new(2),
        false,
        RawServeConfig {
            kv_type: Some("q8_0".into()),
            ..RawServeConfig::default()
        },
    );
    import_wide_model(&d, "w:1");
    let app = |id: &str, extra: &str| {
        d.install(&format!(
            "id = \"{id}\"\nname = \"App\"\nversion = \"1.0.0\"\n[[models]]\nref = \"w:1\"\n{extra}"
        ))
    };
    let plain = app("com.example.plain", "");
    let high = app("com.example.high", "kv_quality = \"high\"\n");
    for token in [&plain, &high, &plain] {
        let r = d
            .send(post(
                "/v1/chat/completions",
                Some(token.as_str()),
                chat("w:1", json!({})),
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        body_text(r).await;
    }
    assert_eq!(d.engine.spawned(), 2, "one load per K/V type");
    let admin = d.admin();
    let status = || async {
        let s: Value = serde_json::from_str(
            &body_text(d.send(get("/locara/v1/status", Some(&admin))).await).await,
        )
        .unwrap();
        let mut loads: Vec<(String, String)> = s["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let name = m["name"].as_str().unwrap().to_owned();
                (name, m["kv_type"].as_str().unwrap().to_owned())
            })
            .collect();
        loads.sort();
        loads
    };
    assert_eq!(
        status().await,
        [
            ("w:1".to_owned(), "q8_0".to_owned()),
            ("w:1@f16".to_owned(), "f16".to_owned())
        ]
    );
    // The model's name unloads (and holds) each of its loads.
    let r = d
        .send(request(
            Method::POST,
            "/locara/v1/models/w:1/unload?hold=true",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(status().await, []);
    let (status_code, _, e) = error_of(
        d.send(post(
            "/v1/chat/completions",
            Some(high.as_str()),
            chat("w:1", json!({})),
        ))
        .await,
    )
    .await;
    assert_eq!(status_code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["code"], "model_held", "{e}");
}

/// An app that installs never gets `insufficient_memory` on an otherwise
/// idle daemon: the install-time fit check and run-time admission take
/// their numbers from the same place (the app's context and K/V type, the
/// daemon's defaults otherwise). The budget is exactly what the fit check
/// says the app needs; a byte less and it does not install.
#[tokio::test]
async fn an_app_that_installs_is_admitted_on_an_idle_daemon() {
    use crate::apps::{model_costs, FitError};
    use locara_core::fit::{judge_fit, MachineLimits};
    let text = "id = \"com.example.both\"\nname = \"App\"\nversion = \"1.0.0\"\n\
                max_concurrency = 2\n[[models]]\nref = \"m:1\"\ncontext = 1024\n\
                [[models]]\nref = \"n:1\"\nrole = \"embedding\"\n";
    let needs = {
        let probe = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
        let manifest = crate::manifest::parse_manifest(text, "app.toml").unwrap();
        let defaults = probe.state.runtime.load_defaults();
        let costs = model_costs(
            &manifest,
            &probe.state.store,
            &locara_core::Backend::cpu_plain(),
            &defaults,
        )
        .unwrap();
        costs.iter().map(|c| c.estimate).sum::<u64>()
    };
    let d = Daemon::new(
        FakeEngine::stalling(1),
        false,
        RawServeConfig {
            budget: Some(needs.to_string()),
            ..RawServeConfig::default()
        },
    );
    let defaults = d.state.runtime.load_defaults();
    let store = &d.state.store;
    let fit = |budget: u64| {
        let defaults = &defaults;
        move |m: &locara_core::manifest::Manifest| -> Result<(), FitError> {
            let machine = MachineLimits {
                budget,
                budget_basis: "given".into(),
                physical_memory: 16 << 30,
            };
            let costs = model_costs(m, store, &locara_core::Backend::cpu_plain(), defaults)?;
            judge_fit(m, costs, &machine)?;
            Ok(())
        }
    };
    assert!(
        d.state
            .auth
            .apps
            .install(text, "app.toml", fit(needs - 1))
            .is_err(),
        "a byte short, the app does not install"
    );
    let (_, token) = d
        .state
        .auth
        .apps
        .install(text, "app.toml", fit(needs))
        .unwrap();
    // Both models loaded at once, a generation of the app's two on each.
    let mut streams = Vec::new();
    for model in ["m:1", "n:1"] {
        let r = d
            .send(post(
                "/v1/chat/completions",
                Some(token.as_str()),
                chat(model, json!({"stream": true})),
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{model}");
        streams.push(r);
    }
    assert_eq!(d.engine.spawned(), 2);
}

/// The role an app's manifest gives a model reaches the pressure ladder:
/// at critical, its idle embedding model unloads before its idle chat
/// model, though the chat model was used less recently.
#[tokio::test]
async fn a_models_role_from_the_manifest_orders_the_unloads_under_pressure() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(
        "id = \"com.example.both\"\nname = \"App\"\nversion = \"1.0.0\"\n\
         [[models]]\nref = \"m:1\"\n[[models]]\nref = \"n:1\"\nrole = \"embedding\"\n",
    );
    for model in ["m:1", "n:1"] {
        let r = d
            .send(post(
                "/v1/chat/completions",
                Some(app.as_str()),
                chat(model, json!({})),
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{model}");
        body_text(r).await;
    }
    let admin = d.admin();
    let mut events = d
        .send(get("/locara/v1/events", Some(&admin)))
        .await
        .into_body()
        .into_data_stream();
    events_until_quiet(&mut events, Duration::from_millis(300)).await;
    let simulate = post(
        "/locara/v1/pressure/simulate",
        Some(&admin),
        json!({"level": "critical"}),
    );
    assert_eq!(d.send(simulate).await.status(), StatusCode::OK);
    let seen = events_until_quiet(&mut events, Duration::from_millis(800)).await;
    let unloads: Vec<&str> = seen
        .iter()
        .filter(|e| e["type"] == "action" && e["action"] == "unload")
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(unloads, ["n:1", "m:1"], "{seen:?}");
}

/// An app's manifest declaring `m:1` at `priority`.
fn manifest_with_priority(id: &str, priority: &str) -> String {
    format!(
        "id = \"{id}\"\nname = \"App\"\nversion = \"1.0.0\"\npriority = \"{priority}\"\n[[models]]\nref = \"m:1\"\n"
    )
}

#[tokio::test]
async fn at_thermal_critical_a_background_apps_request_is_503_and_an_interactive_one_is_served() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let batch = d.install(&manifest_with_priority("com.example.indexer", "background"));
    let chat_app = d.install(&manifest_with_priority("com.example.chat", "interactive"));
    let admin = d.admin();
    let mut events = d
        .send(get("/locara/v1/events", Some(batch.as_str())))
        .await
        .into_body()
        .into_data_stream();
    events_until_quiet(&mut events, Duration::from_millis(300)).await;

    let simulate = post(
        "/locara/v1/power/simulate",
        Some(&admin),
        json!({"mode": "thermal-critical", "for": "5m"}),
    );
    assert_eq!(d.send(simulate).await.status(), StatusCode::OK);
    // Every app hears it, the background one too.
    let heard = events_until_quiet(&mut events, Duration::from_millis(300)).await;
    let power = heard
        .iter()
        .find(|e| e["type"] == "power")
        .unwrap_or_else(|| panic!("no power event: {heard:?}"));
    assert_eq!(power["mode"], "thermal-critical");
    assert_eq!(power["thermal"], "critical");
    assert_eq!(power["simulated"], true);
    assert_eq!(power["limits"]["pause_background"], true);

    let ask = |token: &Token| {
        post(
            "/v1/chat/completions",
            Some(token.as_str()),
            chat("m:1", json!({})),
        )
    };
    let (status, retry_after, e) = error_of(d.send(ask(&batch)).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["code"], "thermal_critical");
    assert_eq!(retry_after.as_deref(), Some("60"));
    assert!(e["message"].as_str().unwrap().contains("critical"), "{e}");
    let served = d.send(ask(&chat_app)).await;
    assert_eq!(served.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&body_text(served).await).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "t0 t1 ", "{body}");

    // Status and metrics say so.
    let status: Value = serde_json::from_str(
        &body_text(d.send(get("/locara/v1/status", Some(&admin))).await).await,
    )
    .unwrap();
    assert_eq!(status["power"]["mode"], "thermal-critical", "{status}");
    assert_eq!(status["power"]["simulated"], "thermal-critical");
    assert!(status["power"]["simulated_until_unix_ms"].is_u64());
    let metrics = body_text(d.send(get("/metrics", Some(&admin))).await).await;
    assert!(
        metrics.contains("locara_power_changes_total{mode=\"thermal-critical\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("locara_power_mode 4"), "{metrics}");
    assert!(
        metrics.contains("locara_refusals_total{model=\"m:1\",kind=\"thermal\"} 1"),
        "{metrics}"
    );

    // Cool again: the background app is served.
    let normal = post(
        "/locara/v1/power/simulate",
        Some(&admin),
        json!({"mode": "normal"}),
    );
    assert_eq!(d.send(normal).await.status(), StatusCode::OK);
    assert_eq!(d.send(ask(&batch)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn on_battery_workers_get_fewer_threads_requests_a_cap_and_drafting_stops() {
    let extra = RawServeConfig {
        threads: Some(4),
        ..RawServeConfig::default()
    };
    let d = Daemon::new(FakeEngine::stalling(1), true, extra);
    // A stream keeps the model busy: it computes on every core.
    let streaming = d
        .send(post(
            "/v1/chat/completions",
            None,
            chat("m:1", json!({"stream": true})),
        ))
        .await;
    assert_eq!(streaming.status(), StatusCode::OK);
    assert!(d.state.runtime.drafting_allowed());

    let simulate = post(
        "/locara/v1/power/simulate",
        None,
        json!({"mode": "battery"}),
    );
    assert_eq!(d.send(simulate).await.status(), StatusCode::OK);
    // The worker is told half the cores.
    let threads = |d: &Daemon| -> Vec<u32> {
        d.engine
            .worker(0)
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                locara_engine::protocol::Request::SetThreads { threads, .. } => Some(threads),
                _ => None,
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    while threads(&d).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(threads(&d), vec![2]);
    assert!(!d.state.runtime.drafting_allowed());
    // A request that starts now is capped.
    let ask = post(
        "/v1/completions",
        None,
        json!({"model": "m:1", "prompt": "Hi", "max_tokens": 1500, "stream": true}),
    );
    let capped = d.send(ask).await;
    assert_eq!(capped.status(), StatusCode::OK);
    let asked = d.engine.requests();
    assert!(asked[0].speculative, "drafting is allowed on mains power");
    let last = asked.last().cloned().unwrap();
    assert_eq!(last.max_tokens, Some(512));
    assert!(!last.speculative, "no drafting on battery");

    let status: Value =
        serde_json::from_str(&body_text(d.send(get("/locara/v1/status", None)).await).await)
            .unwrap();
    let power = &status["power"];
    assert_eq!(power["mode"], "battery", "{status}");
    assert_eq!(power["state"]["on_battery"], true);
    assert_eq!(
        (power["shared_cores"].as_u64(), power["cores"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(power["limits"]["max_tokens"], 512);
    assert_eq!(power["limits"]["parallel"], 1);
    assert_eq!(power["limits"]["drafting"], false);
    assert!(
        power["changes"].as_str().unwrap().contains("2 core(s)"),
        "{power}"
    );
    drop((streaming, capped));
}

#[tokio::test]
async fn a_power_simulation_names_the_modes_it_takes() {
    let d = Daemon::new(FakeEngine::new(1), true, RawServeConfig::default());
    let (status, _, e) = error_of(
        d.send(post(
            "/locara/v1/power/simulate",
            None,
            json!({"mode": "hot"}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "mode");
    assert!(
        e["message"].as_str().unwrap().contains("thermal-critical"),
        "{e}"
    );
    let (status, _, e) = error_of(
        d.send(post(
            "/locara/v1/power/simulate",
            None,
            json!({"mode": "battery", "for": "soon"}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "for");
}

/// The history's JSON, for `token`.
async fn history_of(d: &Daemon, token: &str) -> Value {
    let response = d.send(get("/locara/v1/history?since=0", Some(token))).await;
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&body_text(response).await).unwrap()
}

fn sampled_models(history: &Value) -> std::collections::BTreeSet<String> {
    history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["models"].as_array().unwrap().iter())
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn history_keeps_samples_and_events_and_an_app_sees_its_own_models_only() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.notes", ""));
    let admin = d.admin();
    d.load_as_admin(&["m:1", "n:1"]).await;
    // One sample a second: wait for one that has both models.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let all = loop {
        let h = history_of(&d, &admin).await;
        if sampled_models(&h).len() == 2 {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(all["version"], 1);
    assert_eq!(all["sample_every_ms"], 1000);
    let sample = all["samples"].as_array().unwrap().last().unwrap();
    assert_eq!(sample["level"], "normal");
    assert!(sample["system"]["total"].as_u64().unwrap() > 0, "{sample}");
    let loaded: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "loaded")
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(loaded.len(), 2, "{all}");

    // A generation's tokens show as a rate in the next sample.
    let answer = d
        .send(post(
            "/v1/chat/completions",
            Some(&admin),
            chat("m:1", json!({})),
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let h = history_of(&d, &admin).await;
        let rate = h["samples"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["models"].as_array().unwrap().iter())
            .filter(|m| m["name"] == "m:1")
            .filter_map(|m| m["tokens_per_second"].as_f64())
            .fold(0.0, f64::max);
        if rate > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An unload is kept with the bytes the model held.
    let unload = post("/locara/v1/models/n:1/unload", Some(&admin), json!({}));
    assert_eq!(d.send(unload).await.status(), StatusCode::OK);
    let all = history_of(&d, &admin).await;
    let unloaded = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "unloaded")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(unloaded["model"], "n:1");
    assert!(unloaded["bytes"].as_u64().unwrap() > 0, "{unloaded}");

    // The app declares m:1 only.
    let mine = history_of(&d, app.as_str()).await;
    assert_eq!(
        sampled_models(&mine).into_iter().collect::<Vec<_>>(),
        ["m:1"]
    );
    assert!(!mine.to_string().contains("n:1"), "{mine}");

    // `since` leaves out what came before.
    let newest = all["samples"].as_array().unwrap().last().unwrap()["at_unix_ms"]
        .as_u64()
        .unwrap();
    let later = d
        .send(get(
            &format!("/locara/v1/history?since={newest}"),
            Some(&admin),
        ))
        .await;
    let later: Value = serde_json::from_str(&body_text(later).await).unwrap();
    assert!(later["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["at_unix_ms"].as_u64().unwrap() > newest));
    // No token, no history.
    let anonymous = d.send(get("/locara/v1/history", None)).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_page_is_served_with_its_policy_and_a_login_code_works_once() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = d.send(get(path, None)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], crate::web::CSP);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    // The page has no inline script for the policy to refuse.
    let page = body_text(d.send(get("/", None)).await).await;
    assert!(!page.contains("<script>"), "{page}");

    // A foreign origin gets nothing, the page's own origin the API.
    let mut foreign = get("/", None);
    foreign.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_static("http://evil.example"),
    );
    assert_eq!(d.send(foreign).await.status(), StatusCode::FORBIDDEN);
    let mut own = get("/locara/v1/status", Some(&d.admin()));
    own.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(&format!("http://{LISTEN}")).unwrap(),
    );
    assert_eq!(d.send(own).await.status(), StatusCode::OK);

    // Codes are the admin's to ask for.
    let app = d.install(&manifest("com.example.notes", ""));
    let r = d
        .send(post("/locara/v1/login", Some(app.as_str()), json!({})))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = d
        .send(post("/locara/v1/login", Some(&d.admin()), json!({})))
        .await;
    let answer: Value = serde_json::from_str(&body_text(r).await).unwrap();
    let path = answer["path"].as_str().unwrap().to_owned();
    let r = d.send(get(&path, None)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();
    let mut with_cookie = get("/locara/v1/status", None);
    with_cookie
        .headers_mut()
        .insert(header::COOKIE, HeaderValue::from_str(&session).unwrap());
    assert_eq!(d.send(with_cookie).await.status(), StatusCode::OK);
    // The session is the admin's: management routes too.
    let mut manage = post("/locara/v1/models/m:1/unload", None, json!({}));
    manage
        .headers_mut()
        .insert(header::COOKIE, HeaderValue::from_str(&session).unwrap());
    assert_eq!(d.send(manage).await.status(), StatusCode::OK);
    // Used once; a made-up one never.
    assert_eq!(
        d.send(get(&path, None)).await.status(),
        StatusCode::FORBIDDEN
    );
    let made_up = get("/login?code=lcl_0000", None);
    assert_eq!(d.send(made_up).await.status(), StatusCode::FORBIDDEN);
    let mut forged = get("/locara/v1/status", None);
    forged.headers_mut().insert(
        header::COOKIE,
        HeaderValue::from_static("locara_session=lcs_0000"),
    );
    assert_eq!(d.send(forged).await.status(), StatusCode::UNAUTHORIZED);
}
