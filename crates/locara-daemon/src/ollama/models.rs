//! The handlers of Ollama's routes (see the module above for the table).

use super::request::{model_of, parse_chat, parse_embed, parse_generate, GenerateBody};
use super::{resolve_name, rfc3339, OllamaError, NDJSON, OLLAMA_VERSION};
use crate::host::StreamEvent;
use crate::openai::tools::{Call, Piece};
use crate::openai::{ApiError, DaemonError, ErrorType};
use crate::runtime::ModelWish;
use crate::server::{
    add_keep_alive_note, app_terms, serve_embeddings, start_generation, AppState, AppTerms, Caller,
    Endpoint, Run,
};
use crate::store::hub::{HubConfig, HubRef, PlannedPull};
use crate::store::{ModelEntry, ModelName, Progress, StoreError};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, StreamExt};
use locara_core::governor::KeepAlive;
use locara_engine::protocol::{FinishReason, GenerationStats};
use locara_platform::time::unix_now_ms;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Answer = Result<Response, OllamaError>;

fn answer(a: Answer) -> Response {
    a.unwrap_or_else(IntoResponse::into_response)
}

/// The names in the store, for [`resolve_name`].
fn stored_names(state: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .list()?
        .into_iter()
        .map(|m| m.name.as_str().to_owned())
        .collect())
}

fn resolve(state: &AppState, asked: &str) -> Result<String, ApiError> {
    Ok(resolve_name(&stored_names(state)?, asked))
}

pub(super) async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(async { serve(state, &caller, parse_chat(&body)?, Endpoint::Chat).await }.await)
}

pub(super) async fn generate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(
        async { serve(state, &caller, parse_generate(&body)?, Endpoint::Completion).await }.await,
    )
}

/// A chat or generate request: a load (or unload) when it has no prompt,
/// else a generation through the daemon's own path, answered as NDJSON
/// lines or one object.
async fn serve(
    state: Arc<AppState>,
    caller: &Caller,
    body: GenerateBody,
    endpoint: Endpoint,
) -> Answer {
    let started = Instant::now();
    let model = resolve(&state, &body.model)?;
    let Some(prompt) = body.prompt else {
        return load_or_unload(&state, caller, model, body.params.keep_alive, endpoint).await;
    };
    let begun = start_generation(
        Arc::clone(&state),
        caller,
        model,
        prompt,
        body.params,
        endpoint,
    )
    .await?;
    let shape = Shape {
        endpoint,
        model: begun.run.model.clone(),
        started,
    };
    let mut response = if body.stream {
        stream_lines(shape, begun.run, begun.first)
    } else {
        whole(shape, begun.run, begun.first).await?
    };
    add_keep_alive_note(&mut response, begun.keep_alive_note);
    Ok(response)
}

/// Ollama's answer to a chat without messages or a generate without a
/// prompt: the model loads (`done_reason: "load"`); with `keep_alive: 0`
/// it unloads instead (`"unload"`; the admin only, as unloading is a
/// management route).
async fn load_or_unload(
    state: &Arc<AppState>,
    caller: &Caller,
    model: String,
    keep_alive: Option<KeepAlive>,
    endpoint: Endpoint,
) -> Answer {
    caller_may_use(caller, &model)?;
    let reason = if keep_alive == Some(KeepAlive::UnloadWhenDone) {
        if !matches!(caller, Caller::Admin) {
            return Err(ApiError::forbidden(
                "unloading a model (keep_alive 0 without a prompt) needs the admin token",
            )
            .into());
        }
        state.runtime.unload(&model, false).await?;
        "unload"
    } else {
        let AppTerms {
            app,
            role,
            kv_type,
            priority,
            draft,
            ..
        } = app_terms(state, caller, &model).await?;
        // Through admission like any request; the lease goes at once.
        drop(
            state
                .runtime
                .acquire(ModelWish {
                    model: model.clone(),
                    kv_type,
                    keep_alive,
                    role,
                    app,
                    priority,
                    draft,
                    ..ModelWish::default()
                })
                .await?,
        );
        "load"
    };
    let mut line = head(endpoint, &model);
    put_text(&mut line, endpoint, "");
    line.insert("done".into(), true.into());
    line.insert("done_reason".into(), reason.into());
    Ok(Json(Value::Object(line)).into_response())
}

/// An app may use only the models its manifest declares (checked again by
/// the generation path; here for loads and unloads).
fn caller_may_use(caller: &Caller, model: &str) -> Result<(), ApiError> {
    match caller {
        Caller::App(m) if !m.declares(model) => Err(ApiError::forbidden(format!(
            "app {} may not use model {model}: its manifest does not declare it",
            m.id
        ))
        .with_param("model")
        .with_code("model_not_declared")),
        _ => Ok(()),
    }
}

/// What every line of one answer shares.
struct Shape {
    endpoint: Endpoint,
    model: String,
    /// When the request came in: `total_duration` counts from here.
    started: Instant,
}

/// `model`, `created_at` (and, for chat, the message's role goes with the text).
fn head(_endpoint: Endpoint, model: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("model".into(), model.into());
    m.insert("created_at".into(), rfc3339(unix_now_ms()).into());
    m
}

/// The text of a line: chat's `message`, generate's `response`.
fn put_text(line: &mut Map<String, Value>, endpoint: Endpoint, text: &str) {
    match endpoint {
        Endpoint::Chat => {
            line.insert(
                "message".into(),
                json!({"role": "assistant", "content": text}),
            );
        }
        Endpoint::Completion => {
            line.insert("response".into(), text.into());
        }
    }
}

/// A complete call in Ollama's shape: `{"function": {"index", "name",
/// "arguments": {object}}}`; `None` for one cut short (its arguments are
/// no JSON object).
fn ollama_call(index: usize, call: &Call) -> Option<Value> {
    if !call.complete {
        return None;
    }
    let arguments: Value = serde_json::from_str(&call.arguments).ok()?;
    Some(json!({"function": {"index": index, "name": call.name, "arguments": arguments}}))
}

/// Ollama's `message.tool_calls` of the complete calls; `None` when there
/// are none.
fn ollama_calls(calls: &[Call]) -> Option<Value> {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .filter_map(|(i, c)| ollama_call(i, c))
        .collect();
    (!calls.is_empty()).then_some(Value::Array(calls))
}

impl Shape {
    /// A streamed line with one finished call (Ollama streams a call
    /// whole, once it is complete).
    fn call_line(&self, index: usize, call: &Call) -> Option<Value> {
        let mut line = head(self.endpoint, &self.model);
        put_text(&mut line, self.endpoint, "");
        line["message"]["tool_calls"] = Value::Array(vec![ollama_call(index, call)?]);
        line.insert("done".into(), false.into());
        Some(Value::Object(line))
    }

    fn token_line(&self, text: &str) -> Value {
        let mut line = head(self.endpoint, &self.model);
        put_text(&mut line, self.endpoint, text);
        line.insert("done".into(), false.into());
        Value::Object(line)
    }

    /// The last line: `done`, `done_reason`, the counts and durations
    /// (nanoseconds). `prompt_eval_duration` is the prefill, `eval_duration`
    /// the decode; `load_duration` is the rest of the time before the first
    /// token (waiting for the model: a load, a queue).
    fn done_line(&self, text: &str, finish: FinishReason, stats: &GenerationStats) -> Value {
        let total = self.started.elapsed();
        let prefill = Duration::from_secs_f64(stats.prefill_ms.max(0.0) / 1000.0);
        let decode = Duration::from_secs_f64(stats.decode_ms.max(0.0) / 1000.0);
        let load = total.saturating_sub(prefill + decode);
        let mut line = head(self.endpoint, &self.model);
        put_text(&mut line, self.endpoint, text);
        line.insert("done".into(), true.into());
        line.insert(
            "done_reason".into(),
            match finish {
                FinishReason::Length => "length",
                _ => "stop",
            }
            .into(),
        );
        for (k, v) in [
            ("total_duration", total),
            ("load_duration", load),
            ("prompt_eval_duration", prefill),
            ("eval_duration", decode),
        ] {
            line.insert(k.into(), nanos(v).into());
        }
        line.insert("prompt_eval_count".into(), stats.prompt_tokens.into());
        line.insert("eval_count".into(), stats.generated_tokens.into());
        Value::Object(line)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One object with the whole text (`stream: false`).
async fn whole(shape: Shape, mut run: Run, first: StreamEvent) -> Answer {
    let mut text = String::new();
    let mut next = Some(first);
    let take_text = |text: &mut String, pieces: Vec<Piece>| {
        for piece in pieces {
            if let Piece::Text(t) = piece {
                text.push_str(&t);
            }
        }
    };
    loop {
        match next {
            Some(StreamEvent::Token(t)) => take_text(&mut text, run.pieces(&t)),
            // Ollama's requests never ask for log-probabilities.
            Some(StreamEvent::Logprobs(_)) => {}
            Some(StreamEvent::Done { finish, stats }) => {
                take_text(&mut text, run.last_pieces());
                run.finished(Some(finish), Some(&stats));
                let mut line = shape.done_line(&text, finish, &stats);
                if let Some(calls) = ollama_calls(run.calls()) {
                    line["message"]["tool_calls"] = calls;
                }
                return Ok(Json(line).into_response());
            }
            Some(StreamEvent::Error { kind, message }) => {
                run.finished(None, None);
                return Err(ApiError::from(DaemonError::from_stream(kind, message)).into());
            }
            None => {
                run.finished(None, None);
                return Err(ApiError::from(DaemonError::StreamEnded).into());
            }
        }
        next = run.next().await;
    }
}

enum Phase {
    Start(Run, StreamEvent),
    Next(Run),
    /// The last line is out; the guard holds shutdown until it is written.
    Ended(#[allow(dead_code)] crate::server::InFlight),
}

/// NDJSON: a line per token (as the worker decodes it), then the `done`
/// line; an error after the start is a last `{"error": ...}` line.
fn stream_lines(shape: Shape, run: Run, first: StreamEvent) -> Response {
    let shape = Arc::new(shape);
    let lines = stream::unfold(Phase::Start(run, first), move |phase| {
        let shape = Arc::clone(&shape);
        async move {
            let (mut run, event) = match phase {
                Phase::Ended(_) => return None,
                Phase::Start(run, first) => (run, Some(first)),
                Phase::Next(mut run) => {
                    let event = run.next().await;
                    (run, event)
                }
            };
            let line = match event {
                Some(StreamEvent::Token(t)) => {
                    let pieces = run.pieces(&t);
                    let lines = shape.piece_lines(&run, pieces);
                    return Some((Ok(Bytes::from(lines)), Phase::Next(run)));
                }
                // Ollama's requests never ask for log-probabilities; an
                // empty piece is left out below.
                Some(StreamEvent::Logprobs(_)) => {
                    return Some((Ok(Bytes::new()), Phase::Next(run)))
                }
                Some(StreamEvent::Done { finish, stats }) => {
                    let pieces = run.last_pieces();
                    let held = shape.piece_lines(&run, pieces);
                    run.finished(Some(finish), Some(&stats));
                    let mut done = held.into_bytes();
                    done.extend_from_slice(
                        &ndjson(&shape.done_line("", finish, &stats)).unwrap_or_default(),
                    );
                    return Some((Ok(Bytes::from(done)), Phase::Ended(run.end())));
                }
                Some(StreamEvent::Error { kind, message }) => {
                    run.finished(None, None);
                    json!({"error": ApiError::from(DaemonError::from_stream(kind, message)).message})
                }
                None => {
                    run.finished(None, None);
                    json!({"error": ApiError::from(DaemonError::StreamEnded).message})
                }
            };
            let _ = &mut run;
            Some((ndjson(&line), Phase::Ended(run.end())))
        }
    });
    let lines =
        lines.filter(|piece| std::future::ready(piece.as_ref().is_ok_and(|b| !b.is_empty())));
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response()
}

impl Shape {
    /// The NDJSON lines of pieces of an answer: text as it comes, a call
    /// once complete.
    fn piece_lines(&self, run: &Run, pieces: Vec<Piece>) -> String {
        let mut out = String::new();
        for piece in pieces {
            let line = match piece {
                Piece::Text(t) => Some(self.token_line(&t)),
                Piece::CallEnd { index } => self.call_line(index, &run.calls()[index]),
                Piece::CallStart { .. } | Piece::Arguments { .. } => None,
            };
            if let Some(line) = line {
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        out
    }
}

fn ndjson(v: &Value) -> Result<Bytes, Infallible> {
    let mut text = v.to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

pub(super) async fn embed(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(
        async {
            let b = parse_embed(&body)?;
            let model = resolve(&state, &b.model)?;
            let done =
                serve_embeddings(&state, &caller, model, b.inputs, b.keep_alive, b.dimensions)
                    .await?;
            let took = nanos(done.elapsed);
            let mut response = Json(json!({
                "model": done.model,
                "embeddings": done.embedded.vectors,
                "total_duration": took,
                "load_duration": 0,
                "prompt_eval_count": done.embedded.prompt_tokens,
            }))
            .into_response();
            add_keep_alive_note(&mut response, done.keep_alive_note);
            Ok(response)
        }
        .await,
    )
}

/// `details` of a stored model, as `tags`, `ps` and `show` give them.
fn details(m: &ModelEntry) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": parameter_size(m.parameters),
        "quantization_level": m.quantization,
    })
}

/// Parameters as Ollama writes them: `135M`, `1.2B`.
fn parameter_size(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

fn visible(state: &AppState, caller: &Caller) -> Result<Vec<ModelEntry>, ApiError> {
    Ok(state
        .store
        .list()?
        .into_iter()
        .filter(|m| caller_may_use(caller, m.name.as_str()).is_ok())
        .collect())
}

pub(super) async fn tags(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    answer((|| {
        let models: Vec<Value> = visible(&state, &caller)?
            .iter()
            .map(|m| {
                json!({
                    "name": m.name.as_str(),
                    "model": m.name.as_str(),
                    "modified_at": rfc3339(m.added.saturating_mul(1000)),
                    "size": m.size,
                    "digest": m.sha256,
                    "details": details(m),
                })
            })
            .collect();
        Ok(Json(json!({ "models": models })).into_response())
    })())
}

/// The loaded models. `size` is the model's estimate (what the budget
/// holds for it); `size_vram` what of it is on a GPU (Locara does not
/// split it: all of it with a GPU, none without); `expires_at` when it
/// unloads (a pinned one: far in the future, as Ollama writes it).
pub(super) async fn ps(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    answer(
        async {
            let status = state.runtime.status().await?;
            let stored = visible(&state, &caller)?;
            let models: Vec<Value> = status
                .models
                .iter()
                .filter(|m| m.state == locara_core::governor::Phase::Loaded)
                .filter_map(|m| {
                    let entry = stored.iter().find(|e| e.name.as_str() == m.name)?;
                    let expires = m.unload_at_unix_ms.unwrap_or(if m.pinned {
                        // 2318-03-29, Ollama's "never".
                        10_727_000_000_000
                    } else {
                        unix_now_ms()
                    });
                    Some(json!({
                        "name": m.name,
                        "model": m.name,
                        "size": m.estimate,
                        "digest": entry.sha256,
                        "details": details(entry),
                        "expires_at": rfc3339(expires),
                        "size_vram": 0,
                        "context_length": m.context,
                    }))
                })
                .collect();
            Ok(Json(json!({ "models": models })).into_response())
        }
        .await,
    )
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(
        async {
            let v = crate::openai::parse_body(&body)?;
            let obj = crate::openai::as_object(&v)?;
            let asked = model_of(obj)?;
            let verbose = obj.get("verbose").and_then(Value::as_bool).unwrap_or(false);
            let name = resolve(&state, &asked)?;
            caller_may_use(&caller, &name)?;
            let entry = stored(&state, &name)?;
            let path = entry.path.clone();
            let gguf = tokio::task::spawn_blocking(move || locara_gguf::validate_file(&path))
                .await
                .map_err(|e| ApiError::server_error(format!("reading the model: {e}")))?
                .map_err(|e| {
                    ApiError::server_error(format!("{}: {e}", entry.path.display()))
                })?;
            let mut info = Map::new();
            for (key, value) in &gguf.metadata {
                if key == "tokenizer.chat_template" {
                    continue;
                }
                info.insert(key.clone(), gguf_value(value, verbose));
            }
            let template = gguf
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            Ok(Json(json!({
                "modelfile": format!("# Locara serves this model from its store; it has no Modelfile.\nFROM {}\n", entry.path.display()),
                "parameters": "",
                "template": template,
                "details": details(&entry),
                "model_info": info,
                "capabilities": ["completion", "embedding"],
                "modified_at": rfc3339(entry.added.saturating_mul(1000)),
            }))
            .into_response())
        }
        .await,
    )
}

/// A stored model, or Ollama's 404.
fn stored(state: &AppState, name: &str) -> Result<ModelEntry, ApiError> {
    let parsed: ModelName = name.parse()?;
    state.store.get(&parsed)?.ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ErrorType::NotFound, format!("model '{name}' not found"))
        .with_status(404)
        .with_param("model")
        .with_code("model_not_found")
}

/// A GGUF metadata value as JSON; arrays (the vocabulary, merges) only
/// when `verbose`, as Ollama does.
fn gguf_value(v: &locara_gguf::Value, verbose: bool) -> Value {
    use locara_gguf::Value as G;
    match v {
        G::String(s) => s.clone().into(),
        G::Bool(b) => (*b).into(),
        G::F32(x) => f64::from(*x).into(),
        G::F64(x) => (*x).into(),
        G::Array(a) if verbose => {
            let items: Vec<Value> = (0..a.len())
                .map(|i| {
                    a.integer_at(i)
                        .map(|n| Value::from(i64::try_from(n).unwrap_or(i64::MAX)))
                        .or_else(|| {
                            a.as_strings()
                                .and_then(|s| s.get(i))
                                .map(|s| Value::from(s.to_string()))
                        })
                        .unwrap_or(Value::Null)
                })
                .collect();
            Value::Array(items)
        }
        G::Array(_) => Value::Null,
        other => other
            .as_integer()
            .and_then(|n| i64::try_from(n).ok())
            .map_or(Value::Null, Value::from),
    }
}

pub(super) async fn version() -> Response {
    Json(json!({
        "version": OLLAMA_VERSION,
        "locara": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// Pulling and deleting change the store: the admin's (or `tokenless`).
fn admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::App(m) => Err(ApiError::forbidden(format!(
            "app {} may not {what}: this route needs the admin token",
            m.id
        ))),
    }
}

/// Sends the store's progress as Ollama's pull lines, one per percent.
struct PullProgress {
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
    digest: String,
    total: Option<u64>,
    completed: u64,
    shown: u64,
}

impl Progress for PullProgress {
    fn begin(&mut self, _label: &str, total: Option<u64>) {
        self.total = total;
        self.completed = 0;
        self.shown = 0;
        self.send();
    }
    fn advance(&mut self, bytes: u64) {
        self.completed = self.completed.saturating_add(bytes);
        let step = self.total.map_or(1 << 20, |t| (t / 100).max(1));
        if self.completed.saturating_sub(self.shown) >= step {
            self.shown = self.completed;
            self.send();
        }
    }
    fn end(&mut self) {
        self.send();
    }
}

impl PullProgress {
    fn send(&self) {
        let _ = self.tx.send(json!({
            "status": format!("pulling {}", &self.digest[..12.min(self.digest.len())]),
            "digest": format!("sha256:{}", self.digest),
            "total": self.total,
            "completed": self.completed,
        }));
    }
}

/// `POST /api/pull`: a model of the catalog, a catalog alias or a Hugging
/// Face reference (`hf.co/ORG/REPO[:QUANT]`, as `locara pull` takes them),
/// fetched, checked (sha256, the GGUF guard) and stored; a model already stored is
/// a success at once. Progress as Ollama's lines: `pulling manifest`,
/// `pulling <digest>` with `total` and `completed`, `verifying sha256
/// digest`, `writing manifest`, `success`; a failure is a last `error` line
/// (or, with `stream: false`, the error answer).
pub(super) async fn pull(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(
        async {
            admin(&caller, "pull models")?;
            let v = crate::openai::parse_body(&body)?;
            let obj = crate::openai::as_object(&v)?;
            let asked = model_of(obj)?;
            let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(true);
            let known: Vec<String> = state
                .catalog
                .models
                .iter()
                .map(|m| m.name.as_str().to_owned())
                .collect();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let _ = tx.send(json!({"status": "pulling manifest"}));
            let store = state.store.clone();
            // A Hugging Face reference, or a catalog alias of one: the
            // Hub pull `locara pull` makes (the listing, the file for the
            // quantisation, its sha256).
            let alias = asked
                .parse::<ModelName>()
                .ok()
                .and_then(|n| state.catalog.alias(&n).cloned());
            let work = if HubRef::looks_like(&asked) || alias.is_some() {
                tokio::task::spawn_blocking(move || {
                    let config = HubConfig::from_env()?;
                    let reference = match &alias {
                        Some(a) => a.reference(&config)?,
                        None => HubRef::parse(&asked, &config)?,
                    };
                    let planned = PlannedPull::new(
                        config,
                        reference,
                        alias.as_ref().map(|a| a.name.clone()),
                        alias.as_ref().and_then(|a| a.sha256.as_deref()),
                    )?;
                    let mut progress = PullProgress {
                        tx,
                        digest: planned.choice.files[0].sha256.clone().unwrap_or_default(),
                        total: Some(planned.choice.size()),
                        completed: 0,
                        shown: 0,
                    };
                    store.pull_hub(
                        &planned.hub,
                        &planned.reference,
                        &planned.choice,
                        &planned.name,
                        &mut progress,
                    )
                })
            } else {
                let name = resolve_name(&known, &asked);
                let entry = name
                    .parse::<ModelName>()
                    .ok()
                    .and_then(|n| state.catalog.find(&n).cloned())
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorType::NotFound,
                            format!(
                                "model '{asked}' is not in Locara's catalog; it knows {}, \
                                 its aliases and Hugging Face references (hf.co/ORG/REPO[:QUANT])",
                                known.join(", ")
                            ),
                        )
                        .with_status(404)
                        .with_param("model")
                        .with_code("model_not_found")
                    })?;
                let digest = entry.sha256.clone();
                tokio::task::spawn_blocking(move || {
                    let mut progress = PullProgress {
                        tx,
                        digest,
                        total: entry.size,
                        completed: 0,
                        shown: 0,
                    };
                    store.pull(&entry, &mut progress)
                })
            };
            let finish = async move {
                match work.await {
                    Ok(result) => result.map_err(ApiError::from),
                    Err(e) => Err(ApiError::server_error(format!("the pull stopped: {e}"))),
                }
            };
            if !stream {
                drop(rx);
                finish.await?;
                return Ok(Json(json!({"status": "success"})).into_response());
            }
            // Progress lines until the store's work drops its sender, then
            // the outcome.
            let lines = stream::unfold(Some((rx, Box::pin(finish))), |state| async move {
                let (mut rx, finish) = state?;
                if let Some(line) = rx.recv().await {
                    return Some((vec![line], Some((rx, finish))));
                }
                let last = match finish.await {
                    Ok(_) => vec![
                        json!({"status": "verifying sha256 digest"}),
                        json!({"status": "writing manifest"}),
                        json!({"status": "success"}),
                    ],
                    Err(e) => vec![json!({"error": e.message})],
                };
                Some((last, None))
            });
            let lines = futures_util::StreamExt::flat_map(lines, |batch| {
                stream::iter(batch.into_iter().map(|l| ndjson(&l)))
            });
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, NDJSON)],
                Body::from_stream(lines),
            )
                .into_response())
        }
        .await,
    )
}

/// `DELETE /api/delete`: unloads the model if it is loaded, then removes
/// it from the store; 404 when it is not there.
pub(super) async fn delete_model(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    answer(
        async {
            admin(&caller, "delete models")?;
            let v = crate::openai::parse_body(&body)?;
            let obj = crate::openai::as_object(&v)?;
            let asked = model_of(obj)?;
            let name = resolve(&state, &asked)?;
            let parsed: ModelName = name.parse()?;
            if state.store.get(&parsed)?.is_none() {
                return Err(not_found(&asked).into());
            }
            state.runtime.unload(&name, false).await?;
            match state.store.remove(&parsed) {
                Ok(()) => Ok(StatusCode::OK.into_response()),
                Err(StoreError::NotFound(_)) => Err(not_found(&asked).into()),
                Err(e) => Err(ApiError::from(e).into()),
            }
        }
        .await,
    )
}
