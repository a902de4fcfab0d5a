//! The HTTP API: OpenAI-compatible endpoints and Locara's own.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | chat through the model's template; SSE with `stream: true` |
//! | `POST /v1/completions` | raw text completion |
//! | `POST /v1/embeddings` | vectors of a string or a batch |
//! | `GET /v1/models` | the models in the store |
//! | `/api/...` | Ollama's API ([`crate::ollama`]) |
//! | `GET /locara/v1/status` | budget, models (state, estimate, footprint, ...), system memory |
//! | `POST /locara/v1/models/{name}/load` | load and keep loaded (idle) |
//! | `POST /locara/v1/models/{name}/unload[?hold=true]` | unload (and keep unloaded) |
//! | `GET /locara/v1/events` | SSE: pressure level changes, actions, bytes freed, power state |
//! | `POST /locara/v1/pressure/simulate` | `{"level": "warn", "for": "60s"}`: drive the pressure handler |
//! | `POST /locara/v1/power/simulate` | `{"mode": "battery", "for": "60s"}`: drive the power policy |
//! | `GET /metrics` | Prometheus text |
//!
//! A generation request may set Locara's `truncate` (default true): a
//! prompt or an answer too long for the context is shortened rather than
//! refused. Every answer says what was reused and left out in its `locara`
//! field (a stream: in its last chunk and its usage chunk); a whole answer
//! whose context was shortened also has the `X-Locara-Context` header
//! ([`openai::ContextReport`]).
//!
//! Tokens are streamed as the worker decodes them, one SSE event each,
//! never buffered. A client that goes away drops its stream, which cancels
//! the generation in the worker and frees its sequence.

use crate::host::{Embedded, Generation, StreamEvent};
use crate::metrics::{Gauges, KvPoolGauges, ModelGauges, CONTENT_TYPE};
use crate::openai::tools::{Call, CallParser, Piece};
use crate::openai::{self, ApiError, ContextReport, DaemonError, Delta, GenerationParams, Usage};
use crate::runtime::{Lease, ModelWish, Runtime, Status};
use crate::store::{Catalog, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use locara_core::controller::AppClaim;
use locara_core::governor::KeepAlive;
use locara_core::manifest::{ModelDecl, Role};
use locara_core::threads::Priority;
use locara_core::KvType;
use locara_engine::protocol::{EmbedInput, FinishReason, GenerationStats, Prompt, TokenLogprobs};
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What every handler shares.
pub struct AppState {
    pub runtime: Runtime,
    pub store: Store,
    /// The models a pull may fetch (`/api/pull`; `locara pull`'s catalog).
    pub catalog: Catalog,
    /// The address the daemon listens on (for the `Host` check).
    pub listen: std::net::SocketAddr,
    /// Web origins allowed to call the API.
    pub allowed_origins: Vec<String>,
    /// Who may call: app tokens from the registry and the admin token.
    pub auth: Auth,
    /// Set at SIGTERM: new requests get 503 while in-flight ones finish.
    pub draining: AtomicBool,
    /// Generation requests in flight (streams included).
    pub in_flight: AtomicUsize,
    /// Becomes true when the daemon stops: endless streams (events) end.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Each app's generations in flight, held to its manifest's
    /// `max_concurrency`, by app id.
    app_slots: std::sync::Mutex<std::collections::HashMap<String, AppSlots>>,
    /// The web page's one-time login codes and sessions.
    pub web: crate::web::WebLogins,
}

/// An app's share of generations: `max_concurrency` permits, and how many
/// of its requests wait for one.
#[derive(Clone)]
struct AppSlots {
    limit: u32,
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// Requests of one app that may wait for one of its `max_concurrency`
/// places; one more is answered 429.
pub const APP_QUEUE: usize = 16;

impl AppState {
    pub fn new(
        runtime: Runtime,
        store: Store,
        catalog: Catalog,
        listen: std::net::SocketAddr,
        allowed_origins: Vec<String>,
        auth: Auth,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            runtime,
            store,
            catalog,
            listen,
            allowed_origins,
            auth,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            closing: tokio::sync::watch::Sender::new(false),
            app_slots: Default::default(),
            web: Default::default(),
        })
    }
}

/// Who may call the API.
pub struct Auth {
    /// Installed apps and their token hashes.
    pub apps: crate::apps::AppRegistry,
    /// The admin token (management routes; the CLI reads it from the data
    /// directory).
    pub admin: crate::apps::Token,
    /// Single-user set-up: requests need no token (off by default).
    pub tokenless: bool,
}

/// Who is calling, as the auth layer found out.
#[derive(Clone)]
pub enum Caller {
    /// The admin token, or tokenless mode: every route, every model.
    Admin,
    /// An installed app: app routes, and only the models its manifest
    /// declares.
    App(Arc<locara_core::manifest::Manifest>),
}

impl Caller {
    /// An app may use only the models its manifest declares.
    fn may_use(&self, model: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::App(m) if m.declares(model) => Ok(()),
            Caller::App(m) => Err(ApiError::forbidden(format!(
                "app {} may not use model {model}: its manifest declares {}",
                m.id,
                m.models
                    .iter()
                    .map(|d| d.reference.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_param("model")
            .with_code("model_not_declared")),
        }
    }
}

/// The routes, with the body size cap.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let management = Router::new()
        .route("/locara/v1/models/{name}/load", post(load))
        .route("/locara/v1/models/{name}/unload", post(unload))
        .route("/locara/v1/pressure/simulate", post(simulate))
        .route("/locara/v1/power/simulate", post(simulate_power))
        .route("/locara/v1/login", post(crate::web::new_login))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            admin_only,
        ));
    let apps = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/locara/v1/status", get(status))
        .route("/locara/v1/events", get(events))
        .route("/locara/v1/history", get(history))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            app_or_admin,
        ));
    let ollama = crate::ollama::routes(&state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            app_or_admin,
        ))
        .layer(axum::middleware::map_response(
            crate::ollama::reshape_errors,
        ));
    // The page and its files carry no data; what they show comes from the
    // API with the session cookie `/login` sets.
    let page = Router::new()
        .route("/", get(crate::web::index))
        .route("/app.js", get(crate::web::app_js))
        .route("/app.css", get(crate::web::app_css))
        .route("/login", get(crate::web::login));
    Router::new()
        .merge(management)
        .merge(apps)
        .merge(ollama)
        .merge(page)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            web_guard,
        ))
        .with_state(state)
}

/// Defences against web pages: the `Host` header must name this daemon by
/// a loopback name or address and its port (a DNS-rebinding page sends its
/// own host name), and an `Origin` header, which browsers send on
/// cross-site requests, must be on the configured allow-list.
async fn web_guard(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host_allowed(host, state.listen) {
        return ApiError::forbidden(format!(
            "Host {:?} is not this daemon's address: use localhost:{port}, 127.0.0.1:{port} or [::1]:{port}",
            host.unwrap_or(""),
            port = state.listen.port()
        ))
        .with_code("host_not_allowed")
        .into_response();
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // The daemon's own page (`/`) calls the API from the origin the
        // Host check just let in.
        let own = host.is_some_and(|h| origin.strip_prefix("http://") == Some(h));
        if !own && !state.allowed_origins.iter().any(|o| o == origin) {
            return ApiError::forbidden(format!(
                "Origin {origin:?} may not call this daemon; add it to allowed_origins in the serve config to let its pages in"
            ))
            .with_code("origin_not_allowed")
            .into_response();
        }
    }
    next.run(request).await
}

/// The caller a request's `Authorization: Bearer` token names.
fn caller(state: &AppState, request: &axum::extract::Request) -> Result<Caller, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        if state.auth.tokenless {
            return Ok(Caller::Admin);
        }
        // The web page's session (`/login`): the admin's, in a browser.
        if crate::web::session_cookie(request.headers())
            .is_some_and(|s| state.web.session_valid(s, Instant::now()))
        {
            return Ok(Caller::Admin);
        }
        return Err(ApiError::unauthorized(
            "this route needs Authorization: Bearer <token> (an app's token from `locara app install`, or the admin token in the data directory)",
        ));
    };
    if state.auth.admin.matches(token) {
        return Ok(Caller::Admin);
    }
    match state.auth.apps.authenticate(token) {
        Ok(Some(manifest)) => Ok(Caller::App(manifest)),
        Ok(None) if state.auth.tokenless => Ok(Caller::Admin),
        Ok(None) => Err(ApiError::unauthorized("the bearer token is not valid")),
        Err(e) => Err(e.into()),
    }
}

/// App routes: an app token or the admin token.
async fn app_or_admin(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&state, &request) {
        Ok(c) => {
            request.extensions_mut().insert(c);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// Management routes: the admin token only.
async fn admin_only(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&state, &request) {
        Ok(Caller::Admin) => {
            request.extensions_mut().insert(Caller::Admin);
            next.run(request).await
        }
        Ok(Caller::App(m)) => ApiError::forbidden(format!(
            "app {} may not manage the daemon: this route needs the admin token",
            m.id
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// What admission needs to know of the calling app: the role and K/V type
/// its manifest gives `model`, and for its budget (`requires.memory_gb`)
/// its id and the loads every installed app uses (a shared load's bytes
/// are split among them), and its `priority` for the CPU. The registry is
/// read on a blocking thread; the budget itself is checked by the
/// controller, in the same step as admission. The place among the app's
/// `max_concurrency` comes later.
pub(crate) async fn app_terms(
    state: &Arc<AppState>,
    caller: &Caller,
    model: &str,
) -> Result<AppTerms, ApiError> {
    let Caller::App(manifest) = caller else {
        return Ok(AppTerms::default());
    };
    let decls: Vec<&ModelDecl> = manifest
        .models
        .iter()
        .filter(|d| d.reference == model)
        .collect();
    let role = if decls.iter().any(|d| d.role == Role::Chat) {
        Role::Chat
    } else {
        decls.first().map_or(Role::Chat, |d| d.role)
    };
    // A model declared twice (two roles) loads once: with f16 when either
    // declaration asks for it (the only type a manifest can ask for).
    let kv_type = decls.iter().filter_map(|d| d.kv_type).next();
    // The app's speculative target loads with its draft beside it.
    let draft = manifest
        .speculative
        .as_ref()
        .filter(|s| s.target == model)
        .map(|s| s.draft.clone());
    let Some(budget) = manifest.requires.memory_bytes().map(|b| b.0) else {
        return Ok(AppTerms {
            role,
            kv_type,
            priority: manifest.priority,
            draft,
            ..AppTerms::default()
        });
    };
    let runtime_state = Arc::clone(state);
    let installed = tokio::task::spawn_blocking(move || runtime_state.auth.apps.list())
        .await
        .map_err(|e| ApiError::server_error(format!("reading the app registry: {e}")))??;
    let uses = installed
        .iter()
        .map(|a| {
            let loads = state.runtime.app_loads(&a.models, a.speculative.as_ref());
            (a.id.to_string(), loads)
        })
        .collect();
    let claim = AppClaim {
        id: manifest.id.to_string(),
        budget: Some(budget),
        uses,
    };
    Ok(AppTerms {
        app: Some(claim),
        role,
        kv_type,
        place: None,
        priority: manifest.priority,
        draft,
    })
}

/// Whether a `Host` header names the daemon: a loopback name or address
/// with its port, or the address it listens on when that is not loopback.
pub fn host_allowed(host: Option<&str>, listen: std::net::SocketAddr) -> bool {
    let Some(host) = host else { return false };
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<std::net::IpAddr>() {
        Ok(addr) => addr.is_loopback() || addr == listen.ip(),
        Err(_) => name.eq_ignore_ascii_case("localhost"),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(openai::ErrorType::NotFound, "no such route").with_status(404)
}

/// Counts a generation request in flight for as long as it lives.
pub(crate) struct InFlight(Arc<AppState>);

impl InFlight {
    fn enter(state: &Arc<AppState>) -> Result<InFlight, ApiError> {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(state));
        if state.draining.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        Ok(guard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which kind of generation a request is (the metrics' `endpoint` label;
/// Ollama's `/api/chat` and `/api/generate` count as chat and completions).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completions",
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Response {
    let answer = match openai::parse_chat(&body) {
        Ok(r) => {
            let prompt = Prompt::Chat {
                messages: r.messages,
            };
            serve_generation(state, &caller, r.model, prompt, r.params, Endpoint::Chat).await
        }
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Response {
    let answer = match openai::parse_completion(&body) {
        Ok(r) => {
            let prompt = Prompt::Raw { text: r.prompt };
            serve_generation(
                state,
                &caller,
                r.model,
                prompt,
                r.params,
                Endpoint::Completion,
            )
            .await
        }
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// What both generation endpoints do once the body is read: check that the
/// caller may use the model and that its app budget allows it, then
/// generate.
async fn serve_generation(
    state: Arc<AppState>,
    caller: &Caller,
    model: String,
    prompt: Prompt,
    params: GenerationParams,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let stream = params.stream;
    let started = start_generation(state, caller, model, prompt, params, endpoint).await?;
    let mut response = if stream {
        stream_response(started.run, started.first).into_response()
    } else {
        collect_response(started.run, started.first).await?
    };
    add_keep_alive_note(&mut response, started.keep_alive_note);
    Ok(response)
}

/// A generation that has begun: its run, its first event (a token or the
/// end: an error first is answered as an error), and the note for
/// [`KEEP_ALIVE_HEADER`] when the request's `keep_alive` was capped.
pub(crate) struct Started {
    pub(crate) run: Run,
    pub(crate) first: StreamEvent,
    pub(crate) keep_alive_note: Option<String>,
}

/// What every generation route does once the body is read (the OpenAI
/// routes and Ollama's alike): check that the caller may use the model and
/// that its app budget allows it, acquire it, start the generation and
/// wait for its first event.
pub(crate) async fn start_generation(
    state: Arc<AppState>,
    caller: &Caller,
    model: String,
    prompt: Prompt,
    params: GenerationParams,
    endpoint: Endpoint,
) -> Result<Started, ApiError> {
    caller.may_use(&model)?;
    let mut terms = app_terms(&state, caller, &model).await?;
    let mut params = params;
    app_context(caller, &model, &mut params)?;
    let capped = app_keep_alive(
        caller,
        &model,
        &mut params.keep_alive,
        state.runtime.keep_alive(),
    );
    terms.place = app_place(&state, caller).await?;
    let (run, first) = generate(state, model, prompt, params, endpoint, terms).await?;
    Ok(Started {
        run,
        first,
        keep_alive_note: capped,
    })
}

/// Sets [`KEEP_ALIVE_HEADER`] to `note`, when there is one.
pub(crate) fn add_keep_alive_note(response: &mut Response, note: Option<String>) {
    if let Some(note) = note.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert(KEEP_ALIVE_HEADER, note);
    }
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Response {
    let answer = async {
        let r = openai::parse_embeddings(&body)?;
        let done = serve_embeddings(
            &state,
            &caller,
            r.model,
            r.inputs,
            r.keep_alive,
            r.dimensions,
        )
        .await?;
        let body = openai::embeddings_response(
            &done.model,
            &done.embedded.vectors,
            r.encoding,
            done.embedded.prompt_tokens,
        );
        let mut response = Json(body).into_response();
        add_keep_alive_note(&mut response, done.keep_alive_note);
        Ok::<_, ApiError>(response)
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// An embedding request's answer, with what the handlers report of it.
pub(crate) struct EmbeddingsDone {
    pub(crate) model: String,
    pub(crate) embedded: Embedded,
    /// From the request's start to the answer.
    pub(crate) elapsed: std::time::Duration,
    pub(crate) keep_alive_note: Option<String>,
}

/// What both embedding routes (`/v1/embeddings`, Ollama's `/api/embed`)
/// do: the checks of a generation (the model declared, the app's budget,
/// its place, `keep_alive` capped), then the model's worker computes the
/// vectors (`locara_engine::embed`). A manifest that declares the model
/// with role `embedding` loads it as such.
pub(crate) async fn serve_embeddings(
    state: &Arc<AppState>,
    caller: &Caller,
    model: String,
    inputs: Vec<EmbedInput>,
    keep_alive: Option<KeepAlive>,
    dimensions: Option<u32>,
) -> Result<EmbeddingsDone, ApiError> {
    caller.may_use(&model)?;
    let AppTerms {
        app,
        mut role,
        kv_type,
        priority,
        draft,
        ..
    } = app_terms(state, caller, &model).await?;
    if let Caller::App(manifest) = caller {
        if manifest
            .models
            .iter()
            .any(|d| d.reference == model && d.role == Role::Embedding)
        {
            role = Role::Embedding;
        }
    }
    let mut keep_alive = keep_alive;
    let capped = app_keep_alive(caller, &model, &mut keep_alive, state.runtime.keep_alive());
    let _place = app_place(state, caller).await?;
    let _in_flight = InFlight::enter(state)?;
    let started = Instant::now();
    let lease = state
        .runtime
        .acquire(ModelWish {
            model: model.clone(),
            context: None,
            kv_type,
            keep_alive,
            role,
            app,
            priority,
            draft,
        })
        .await?;
    openai::check_dimensions(dimensions, &model, lease.host.info.embedding)?;
    let metrics = &state.runtime.metrics;
    match lease.host.embed(inputs).await {
        Ok(embedded) => {
            metrics.request_finished(&model, "embeddings", "stop");
            metrics.prompt_tokens(&model, embedded.prompt_tokens.into());
            Ok(EmbeddingsDone {
                model,
                embedded,
                elapsed: started.elapsed(),
                keep_alive_note: capped,
            })
        }
        Err((kind, message)) => {
            metrics.request_finished(&model, "embeddings", "error");
            Err(DaemonError::from_stream(kind, message).into())
        }
    }
}

/// An app's request gets at most the context its manifest declares for the
/// model: a request naming more is refused with the limit; one naming none
/// asks for the declared context (the model loads with it when not loaded
/// yet).
fn app_context(
    caller: &Caller,
    model: &str,
    params: &mut GenerationParams,
) -> Result<(), ApiError> {
    let Caller::App(manifest) = caller else {
        return Ok(());
    };
    let Some(limit) = manifest
        .models
        .iter()
        .filter(|d| d.reference == model)
        .filter_map(|d| d.context)
        .max()
    else {
        return Ok(());
    };
    match params.context {
        Some(asked) if asked > limit => Err(ApiError::invalid(
            "context",
            format!(
                "context {asked} is more than app {} may use with {model}: its manifest declares context = {limit}",
                manifest.id
            ),
        )),
        Some(_) => Ok(()),
        None => {
            params.context = Some(limit);
            Ok(())
        }
    }
}

/// What the calling app's manifest brings to a generation.
#[derive(Default)]
pub(crate) struct AppTerms {
    /// Its budget claim (`None` for the admin or an app without a budget).
    pub(crate) app: Option<AppClaim>,
    /// The model's role in its manifest.
    pub(crate) role: Role,
    /// The K/V type its manifest asks for (`kv_quality = "high"`: f16);
    /// `None`: the daemon's.
    pub(crate) kv_type: Option<KvType>,
    /// Its place among its `max_concurrency` (`None` for the admin).
    pub(crate) place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// How its requests weigh for the CPU (interactive for the admin).
    pub(crate) priority: Priority,
    /// The draft model its `[speculative]` pair loads beside this model.
    pub(crate) draft: Option<String>,
}

/// One of the calling app's `max_concurrency` places for a generation,
/// waiting for one while fewer than [`APP_QUEUE`] of its requests wait;
/// beyond that, 429 with Retry-After. The admin has no such limit.
async fn app_place(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    let Caller::App(manifest) = caller else {
        return Ok(None);
    };
    let limit = manifest.max_concurrency.max(1);
    let slots = {
        let mut all = state.app_slots.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all
            .entry(manifest.id.to_string())
            .or_insert_with(|| AppSlots {
                limit,
                permits: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
                waiting: Arc::default(),
            });
        // A reinstalled manifest with another limit: a fresh set of places
        // (generations holding the old ones finish on them).
        if entry.limit != limit {
            *entry = AppSlots {
                limit,
                permits: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
                waiting: Arc::default(),
            };
        }
        entry.clone()
    };
    if let Ok(permit) = Arc::clone(&slots.permits).try_acquire_owned() {
        return Ok(Some(permit));
    }
    if slots.waiting.fetch_add(1, Ordering::SeqCst) >= APP_QUEUE {
        slots.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::rate_limited(
            format!(
                "app {} has {limit} request(s) generating (max_concurrency of its manifest) and {APP_QUEUE} waiting; retry shortly",
                manifest.id
            ),
            Some(1),
        )
        .with_code("app_concurrency"));
    }
    let permit = Arc::clone(&slots.permits).acquire_owned().await;
    slots.waiting.fetch_sub(1, Ordering::SeqCst);
    permit.map(Some).map_err(|_| ApiError::shutting_down())
}

/// Set on a response whose request's `keep_alive` was capped: the value
/// applied and why.
pub const KEEP_ALIVE_HEADER: &str = "x-locara-keep-alive";

/// An app pins a model only through its manifest (`keep_loaded = true`,
/// which pins it for the app's requests that name no keep-alive); its
/// request's `keep_alive` beyond the daemon's (`-1`, or longer) is capped
/// to the daemon's. Returns the note for [`KEEP_ALIVE_HEADER`] when it
/// capped one. The admin may pin.
fn app_keep_alive(
    caller: &Caller,
    model: &str,
    keep_alive: &mut Option<KeepAlive>,
    daemon: KeepAlive,
) -> Option<String> {
    let Caller::App(manifest) = caller else {
        return None;
    };
    let keep_loaded = manifest
        .models
        .iter()
        .any(|d| d.reference == model && d.keep_loaded);
    if keep_loaded {
        keep_alive.get_or_insert(KeepAlive::Forever);
        return None;
    }
    let asked = (*keep_alive)?;
    // `idle_limit`: `None` is forever.
    let longer = match (asked.idle_limit(), daemon.idle_limit()) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(d)) => a > d,
    };
    if !longer {
        return None;
    }
    *keep_alive = Some(daemon);
    Some(format!(
        "{daemon} (asked {asked}; capped: the app's manifest does not set keep_loaded for {model})"
    ))
}

/// One generation, from acquiring the model to the last byte.
pub(crate) struct Run {
    endpoint: Endpoint,
    id: String,
    created: u64,
    pub(crate) model: String,
    include_usage: bool,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    /// Log-probabilities not yet sent: a stream sends them with the next
    /// text (or the last chunk), a whole answer with everything.
    pending_logprobs: Vec<TokenLogprobs>,
    /// Characters of text the legacy (`/v1/completions`) log-probabilities
    /// have covered: their `text_offset`.
    text_offset: usize,
    /// Reads the answer into text and tool calls, when the request has
    /// tools.
    calls: Option<CallParser>,
    /// Tokens streamed so far, and the most allowed once the pressure
    /// ladder caps the remaining tokens of in-flight responses.
    tokens: u32,
    token_limit: Option<u32>,
    generation: Generation,
    runtime: Runtime,
    // Dropped with the run: the lease releases the model's place. The
    // in-flight guard may outlive the run ([`Run::end`]).
    _lease: Lease,
    in_flight: InFlight,
    /// The app's place among its `max_concurrency` (none for the admin).
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Run {
    /// The next event, ending the generation early (as `length`) once the
    /// pressure ladder's cap on remaining tokens is used up.
    pub(crate) async fn next(&mut self) -> Option<StreamEvent> {
        if let Some(cap) = self.runtime.caps().remaining_tokens {
            let limit = *self
                .token_limit
                .get_or_insert(self.tokens.saturating_add(cap));
            if self.tokens >= limit {
                // Dropping the generation would cancel it too; say so now.
                self.generation.cancel();
                return Some(StreamEvent::Done {
                    finish: FinishReason::Length,
                    stats: GenerationStats {
                        generated_tokens: self.tokens,
                        ..GenerationStats::default()
                    },
                });
            }
        }
        let ev = self.generation.next().await;
        if matches!(ev, Some(StreamEvent::Token(_))) {
            self.tokens += 1;
            self.runtime.history.token(&self._lease.model);
        }
        ev
    }

    /// Releases the model's sequence (the lease and the generation go);
    /// the in-flight guard stays with the caller.
    pub(crate) fn end(self) -> InFlight {
        self.in_flight
    }

    /// Counts the end of the generation in the metrics: its outcome and
    /// figures (`None`: it failed).
    pub(crate) fn finished(&self, finish: Option<FinishReason>, stats: Option<&GenerationStats>) {
        let m = &self.runtime.metrics;
        let outcome = finish.map_or("error", FinishReason::as_str);
        m.request_finished(&self.model, self.endpoint.as_str(), outcome);
        if let Some(s) = stats {
            m.prompt_tokens(&self.model, s.prompt_tokens.into());
            m.tokens_generated(&self.model, s.generated_tokens.into());
            m.speculation(
                &self.model,
                s.draft_tokens.into(),
                s.draft_accepted_tokens.into(),
                s.decode_steps.into(),
            );
            if s.generated_tokens > 1 {
                m.observe_decode(
                    &self.model,
                    u64::from(s.generated_tokens - 1),
                    s.decode_ms / 1000.0,
                );
            }
        }
    }

    /// What a piece of generated text is: text, or parts of tool calls
    /// (some text may be held back until it is known which).
    pub(crate) fn pieces(&mut self, text: &str) -> Vec<Piece> {
        match &mut self.calls {
            Some(parser) => parser.feed(text),
            None => vec![Piece::Text(text.to_owned())],
        }
    }

    /// Text held back at the end of the answer.
    pub(crate) fn last_pieces(&mut self) -> Vec<Piece> {
        self.calls
            .as_mut()
            .map(CallParser::finish)
            .unwrap_or_default()
    }

    /// The tool calls read from the answer so far.
    pub(crate) fn calls(&self) -> &[Call] {
        self.calls.as_ref().map_or(&[], CallParser::calls)
    }

    /// OpenAI's finish reason (`tool_calls` when the model ended an answer
    /// that called tools).
    fn finish_reason(&self, finish: FinishReason) -> &'static str {
        openai::tool_finish_reason(finish, !self.calls().is_empty())
    }

    /// The stream chunks of a piece of the answer.
    fn piece_chunks(&mut self, piece: &Piece) -> Option<String> {
        match piece {
            Piece::Text(text) => Some(self.chunk(text)),
            Piece::CallStart { index, name } => {
                let id = self.calls()[*index].id.clone();
                Some(self.delta_chunk(Delta::CallStart {
                    index: *index,
                    id: &id,
                    name,
                }))
            }
            Piece::Arguments { index, text } => Some(self.delta_chunk(Delta::Arguments {
                index: *index,
                text,
            })),
            Piece::CallEnd { .. } => None,
        }
    }

    /// A chat chunk, with the log-probabilities of its tokens.
    fn delta_chunk(&mut self, delta: Delta<'_>) -> String {
        let mut chunk = openai::chat_chunk_json(&self.id, self.created, &self.model, delta, None);
        if let Some(logprobs) = self.take_logprobs() {
            openai::set_logprobs(&mut chunk, logprobs);
        }
        chunk.to_string()
    }

    /// The `logprobs` of the pending tokens in the endpoint's shape (and
    /// they are no longer pending); `None` when the request did not ask.
    fn take_logprobs(&mut self) -> Option<Value> {
        if !self.logprobs {
            return None;
        }
        let tokens = std::mem::take(&mut self.pending_logprobs);
        Some(match self.endpoint {
            Endpoint::Chat => openai::chat_logprobs(&tokens),
            Endpoint::Completion => openai::text_logprobs(&tokens, &mut self.text_offset),
        })
    }

    /// A chunk of generated text, with the log-probabilities of its tokens.
    fn chunk(&mut self, text: &str) -> String {
        let mut chunk = match self.endpoint {
            Endpoint::Chat => openai::chat_chunk_json(
                &self.id,
                self.created,
                &self.model,
                Delta::Content(text),
                None,
            ),
            Endpoint::Completion => {
                openai::text_chunk_json(&self.id, self.created, &self.model, text, None)
            }
        };
        if let Some(logprobs) = self.take_logprobs() {
            openai::set_logprobs(&mut chunk, logprobs);
        }
        chunk.to_string()
    }

    /// The chunk with the finish reason, and what was left out (and the
    /// log-probabilities of tokens whose text was never sent).
    fn last_chunk(&mut self, finish: &str, report: ContextReport) -> String {
        let mut chunk = match self.endpoint {
            Endpoint::Chat => {
                openai::chat_last_chunk_json(&self.id, self.created, &self.model, finish, report)
            }
            Endpoint::Completion => {
                openai::text_last_chunk_json(&self.id, self.created, &self.model, finish, report)
            }
        };
        if !self.pending_logprobs.is_empty() {
            if let Some(logprobs) = self.take_logprobs() {
                openai::set_logprobs(&mut chunk, logprobs);
            }
        }
        chunk.to_string()
    }

    fn usage_chunk(&self, usage: Usage, report: ContextReport) -> String {
        match self.endpoint {
            Endpoint::Chat => {
                openai::chat_usage_chunk(&self.id, self.created, &self.model, usage, report)
            }
            Endpoint::Completion => {
                openai::text_usage_chunk(&self.id, self.created, &self.model, usage, report)
            }
        }
    }
}

async fn generate(
    state: Arc<AppState>,
    model: String,
    prompt: Prompt,
    params: GenerationParams,
    endpoint: Endpoint,
    terms: AppTerms,
) -> Result<(Run, StreamEvent), ApiError> {
    let AppTerms {
        app,
        role,
        kv_type,
        place,
        priority,
        draft,
    } = terms;
    let in_flight = InFlight::enter(&state)?;
    let started = Instant::now();
    let lease = state
        .runtime
        .acquire(ModelWish {
            model: model.clone(),
            context: params.context,
            kv_type,
            keep_alive: params.keep_alive,
            role,
            app,
            priority,
            draft,
        })
        .await?;
    let context = lease.host.info.context;
    let mut params = params;
    // Under pressure, requests that start now are capped (the ladder's
    // queued-request cap).
    if let Some(cap) = state.runtime.caps().queued_max_tokens {
        params.max_tokens = Some(params.max_tokens.map_or(cap, |m| m.min(cap)));
    }
    if let Some(max) = params.max_tokens {
        if max > context {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens {max} is more than the model's context of {context} tokens"),
            ));
        }
    }
    let logprobs = params.sampling.logprobs.is_some();
    let calls = params.tools.map(CallParser::new);
    let mut generation = lease.host.generate(
        prompt,
        params.sampling,
        params.max_tokens,
        params.stop,
        params.truncate,
        params.cache_prompt,
    )?;
    // The first event decides between a stream and an error answer: a
    // prompt too long for the context (with `truncate: false`, or too long
    // even after leaving out messages) is a 400, not a broken stream.
    let first = generation.next().await;
    let first = match first {
        Some(StreamEvent::Error { kind, message }) => {
            state
                .runtime
                .metrics
                .request_finished(&model, endpoint.as_str(), "error");
            return Err(DaemonError::from_stream(kind, message).into());
        }
        None => return Err(DaemonError::StreamEnded.into()),
        Some(ev) => ev,
    };
    // A drawn token's log-probabilities come just before its text.
    if matches!(first, StreamEvent::Token(_) | StreamEvent::Logprobs(_)) {
        state
            .runtime
            .metrics
            .observe_time_to_first_token(&model, started.elapsed().as_secs_f64());
    }
    let run = Run {
        endpoint,
        id: openai::completion_id(match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        }),
        created: locara_platform::time::unix_now_s(),
        model,
        include_usage: params.include_usage,
        logprobs,
        pending_logprobs: Vec::new(),
        text_offset: 0,
        calls,
        tokens: 0,
        token_limit: None,
        generation,
        runtime: state.runtime.clone(),
        _lease: lease,
        in_flight,
        _place: place,
    };
    // The history's tokens per second count the first token too.
    if matches!(first, StreamEvent::Token(_)) {
        run.runtime.history.token(&run._lease.model);
    }
    Ok((run, first))
}

async fn collect_response(mut run: Run, first: StreamEvent) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut next = Some(first);
    loop {
        match next {
            Some(StreamEvent::Token(t)) => {
                for piece in run.pieces(&t) {
                    if let Piece::Text(t) = piece {
                        text.push_str(&t);
                    }
                }
            }
            Some(StreamEvent::Logprobs(tokens)) => run.pending_logprobs.extend(tokens),
            Some(StreamEvent::Done { finish, stats }) => {
                for piece in run.last_pieces() {
                    if let Piece::Text(t) = piece {
                        text.push_str(&t);
                    }
                }
                run.finished(Some(finish), Some(&stats));
                let usage = Usage::from_stats(&stats);
                let report = ContextReport::from_stats(&stats);
                let reason = run.finish_reason(finish);
                let mut body = match run.endpoint {
                    Endpoint::Chat => openai::chat_completion(
                        &run.id,
                        run.created,
                        &run.model,
                        &text,
                        reason,
                        usage,
                        report,
                    ),
                    Endpoint::Completion => openai::text_completion(
                        &run.id,
                        run.created,
                        &run.model,
                        &text,
                        reason,
                        usage,
                        report,
                    ),
                };
                if let Some(logprobs) = run.take_logprobs() {
                    openai::set_logprobs(&mut body, logprobs);
                }
                openai::set_tool_calls(&mut body, run.calls());
                let mut response = Json(body).into_response();
                // Digits, letters, `_`, `=`, `,` and spaces: always a valid value.
                if let Some(value) = report
                    .header_value()
                    .and_then(|v| header::HeaderValue::from_str(&v).ok())
                {
                    response.headers_mut().insert(openai::CONTEXT_HEADER, value);
                }
                return Ok(response);
            }
            Some(StreamEvent::Error { kind, message }) => {
                run.finished(None, None);
                return Err(DaemonError::from_stream(kind, message).into());
            }
            None => {
                run.finished(None, None);
                return Err(DaemonError::StreamEnded.into());
            }
        }
        next = run.next().await;
    }
}

enum Phase {
    Start(Run, StreamEvent),
    Next(Run),
    /// The last events are out; the guard holds shutdown until they are
    /// written.
    Ended {
        _guard: InFlight,
    },
}

fn stream_response(
    run: Run,
    first: StreamEvent,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // The run's lease and generation are dropped before the last events
    // are yielded: a client that reads `[DONE]` and asks again at once finds
    // the model's sequence free, as with a whole answer.
    let events = stream::unfold(Phase::Start(run, first), |phase| async move {
        let (mut run, event, mut out): (Run, Option<StreamEvent>, Vec<String>) = match phase {
            Phase::Ended { .. } => return None,
            Phase::Start(run, first) => {
                let mut out = Vec::new();
                if run.endpoint == Endpoint::Chat {
                    out.push(openai::chat_chunk(
                        &run.id,
                        run.created,
                        &run.model,
                        Delta::Role,
                        None,
                    ));
                }
                (run, Some(first), out)
            }
            Phase::Next(mut run) => {
                let event = run.next().await;
                (run, event, Vec::new())
            }
        };
        match event {
            Some(StreamEvent::Token(t)) => {
                for piece in run.pieces(&t) {
                    out.extend(run.piece_chunks(&piece));
                }
                return Some((out, Phase::Next(run)));
            }
            // Sent with the text they belong to.
            Some(StreamEvent::Logprobs(tokens)) => {
                run.pending_logprobs.extend(tokens);
                return Some((out, Phase::Next(run)));
            }
            Some(StreamEvent::Done { finish, stats }) => {
                for piece in run.last_pieces() {
                    out.extend(run.piece_chunks(&piece));
                }
                run.finished(Some(finish), Some(&stats));
                let report = ContextReport::from_stats(&stats);
                let reason = run.finish_reason(finish);
                out.push(run.last_chunk(reason, report));
                if run.include_usage {
                    out.push(run.usage_chunk(Usage::from_stats(&stats), report));
                }
                out.push(openai::STREAM_DONE.to_string());
            }
            Some(StreamEvent::Error { kind, message }) => {
                run.finished(None, None);
                out.push(ApiError::from(DaemonError::from_stream(kind, message)).sse_data());
            }
            None => {
                run.finished(None, None);
                out.push(ApiError::from(DaemonError::StreamEnded).sse_data());
            }
        }
        Some((out, Phase::Ended { _guard: run.end() }))
    });
    let flat = futures_util::StreamExt::flat_map(events, |datas| {
        stream::iter(
            datas
                .into_iter()
                .map(|d| Ok::<_, Infallible>(SseEvent::default().data(d))),
        )
    });
    Sse::new(flat)
}

async fn models(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = state.store.list()?;
    // An app sees the models it may use.
    let entries: Vec<(String, u64, &str)> = list
        .iter()
        .filter(|m| caller.may_use(m.name.as_str()).is_ok())
        .map(|m| (m.name.as_str().to_string(), m.added, "locara"))
        .collect();
    Ok(Json(openai::models_list(&entries)))
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    state
        .runtime
        .status()
        .await
        .map(Json)
        .map_err(ApiError::from)
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// Milliseconds since the Unix epoch; only later samples and events.
    #[serde(default)]
    since: u64,
}

/// `GET /locara/v1/history?since=MS`: the samples (one a second, the last
/// hour) and events kept after `since`. An app sees the rows and events of
/// the models its manifest declares, its own budget events and the
/// machine's; the admin sees everything.
async fn history(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(q): Query<HistoryQuery>,
) -> Json<serde_json::Value> {
    let page = state.runtime.history.since(q.since);
    let page = match &caller {
        Caller::Admin => page,
        Caller::App(m) => page.only(m.id.as_str(), |load| {
            m.declares(locara_core::load::model_of(load))
        }),
    };
    Json(serde_json::json!({
        "version": 1,
        "sample_every_ms": crate::history::SAMPLE_EVERY.as_millis() as u64,
        "samples": page.samples,
        "events": page.events,
    }))
}

#[derive(Deserialize)]
struct LoadQuery {
    /// How long the model stays loaded idle (`-1`/`forever` pins it); the
    /// configured keep-alive when absent.
    #[serde(default)]
    keep_alive: Option<String>,
}

#[derive(Deserialize)]
struct UnloadQuery {
    #[serde(default)]
    hold: bool,
}

async fn load(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<LoadQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keep_alive = q
        .keep_alive
        .as_deref()
        .map(|k| KeepAlive::parse(k).map_err(|e| ApiError::invalid("keep_alive", e.to_string())))
        .transpose()?;
    state
        .runtime
        .load(ModelWish {
            model: name.clone(),
            keep_alive,
            ..ModelWish::default()
        })
        .await?;
    Ok(Json(serde_json::json!({ "model": name, "loaded": true })))
}

async fn unload(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<UnloadQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let was_loaded = state.runtime.unload(&name, q.hold).await?;
    Ok(Json(serde_json::json!({
        "model": name,
        "was_loaded": was_loaded,
        "held": q.hold,
    })))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let s = state.runtime.status().await?;
    let gauges = Gauges {
        budget_bytes: s.budget,
        effective_budget_bytes: s.effective_budget,
        models: s
            .models
            .iter()
            .map(|m| ModelGauges {
                model: m.name.clone(),
                state: m.state,
                footprint_bytes: m.footprint,
                mapped_weights_bytes: m.mapped_weights,
                estimate_bytes: m.estimate,
                sequences_busy: m.sequences_busy,
                queue_depth: m.queued,
                threads: m.threads,
                kv_pool: m.pool.as_ref().map(|p| KvPoolGauges {
                    cells: p.cells,
                    used_cells: p.used_cells,
                    cached_sequences: p.cached_sequences,
                    ram_cached_sequences: p.ram_cached_sequences,
                    ram_cache_bytes: p.ram_cache_bytes,
                }),
            })
            .collect(),
    };
    let text = state.runtime.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Where a running daemon says how to reach it: `daemon.json` in the data
/// directory, written at start and removed at exit.
pub const DAEMON_FILE: &str = "daemon.json";

/// The models held unloaded (`locara stop --hold`), remembered across
/// restarts of the daemon, in the data directory.
pub const HOLDS_FILE: &str = "holds.json";

/// What `daemon.json` holds.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct DaemonInfo {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub pid: u32,
    /// The command that runs this daemon for itself alone (`"run"`), which
    /// other `locara run`s must not share: it ends when that command does.
    /// Absent for `locara serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_to: Option<String>,
}

/// Serves until SIGTERM or SIGINT: then new requests get 503, in-flight
/// ones may finish within `grace`, the workers are stopped and the server
/// exits. `on_listening` hears the bound address first (the port may have
/// been 0).
/// Serves until `shutdown` resolves (e.g. [`shutdown_signal`], or a
/// channel when the daemon lives inside another command), then drains:
/// new requests are refused, in-flight ones get `grace` to finish, and every
/// worker is stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    max_body_bytes: usize,
    grace: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(Arc::clone(&state), max_body_bytes);
    let drain_state = Arc::clone(&state);
    // Tokens go out as they are decoded: no Nagle delay for small writes.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.draining.store(true, Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + grace;
            while drain_state.in_flight.load(Ordering::SeqCst) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Stops every worker: streams still open end with an error.
            drain_state.runtime.shutdown().await;
            drain_state.closing.send_replace(true);
        })
        .await
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `GET /locara/v1/events`: server-sent events for apps, one JSON object
/// each with a `version`: `level` (the level in force and the effective
/// budget; the first event of every stream says the state as it is),
/// `action` (each action of the pressure ladder), `freed` (bytes the OS got
/// back, and how long it took), `budget.exceeded`, `power` (the power state
/// in force and what it changes; the second event of every stream says it
/// as it is). An app sees the level,
/// the settings and the events of the models its manifest declares (and
/// its own budget crossings), never other apps' models; the admin sees
/// everything.
async fn events(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let rx = state.runtime.subscribe();
    let closing = state.closing.subscribe();
    let now = state.runtime.status().await?;
    let first = locara_core::controller::AppEvent::Level {
        level: now.pressure.level,
        budget: now.budget,
        effective_budget: now.effective_budget,
    };
    let power = locara_core::controller::AppEvent::Power {
        mode: now.power.mode,
        thermal: now.power.state.thermal,
        on_battery: now.power.state.on_battery,
        low_power_mode: now.power.state.low_power_mode,
        simulated: now.power.simulated.is_some(),
        limits: now.power.limits,
    };
    // Whom the stream is for: `None` sees everything.
    let app: Option<(String, Vec<String>)> = match &caller {
        Caller::Admin => None,
        Caller::App(m) => Some((
            m.id.to_string(),
            m.models.iter().map(|d| d.reference.clone()).collect(),
        )),
    };
    use futures_util::StreamExt;
    let head = stream::iter([first, power].map(|e| Ok(SseEvent::default().data(e.to_json()))));
    let rest = stream::unfold(
        (rx, closing, app),
        |(mut rx, mut closing, app)| async move {
            loop {
                if *closing.borrow() {
                    return None;
                }
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            if let Some((id, models)) = &app {
                                if !ev.concerns(id, models) {
                                    continue;
                                }
                            }
                            let event = SseEvent::default().data(ev.to_json());
                            return Some((Ok(event), (rx, closing, app)));
                        }
                        // A slow reader misses events rather than holding memory.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                    // The daemon stops: the stream ends so the connection closes.
                    _ = closing.changed() => return None,
                }
            }
        },
    );
    Ok(Sse::new(head.chain(rest)).keep_alive(axum::response::sse::KeepAlive::default()))
}

#[derive(Deserialize)]
struct SimulateBody {
    level: String,
    #[serde(default, rename = "for")]
    duration: Option<String>,
}

/// `POST /locara/v1/pressure/simulate`: drives the pressure handler as an
/// OS report would.
async fn simulate(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: SimulateBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_body(format!(
            "expected {{\"level\": \"warn\"|\"critical\"|\"normal\", \"for\": \"60s\"}}: {e}"
        ))
    })?;
    let level: locara_core::ladder::PressureLevel = body.level.parse().map_err(|_| {
        ApiError::invalid(
            "level",
            format!(
                "level {:?} is not one of normal, warn, critical",
                body.level
            ),
        )
    })?;
    let duration = simulation_duration(body.duration.as_deref())?;
    state.runtime.simulate_pressure(level, duration).await?;
    Ok(Json(serde_json::json!({
        "level": level,
        "for_seconds": duration.map(|d| d.as_secs()),
    })))
}

#[derive(Deserialize)]
struct SimulatePowerBody {
    mode: String,
    #[serde(default, rename = "for")]
    duration: Option<String>,
}

/// `POST /locara/v1/power/simulate`: drives the power policy as an OS
/// report would; `normal` ends the simulation.
async fn simulate_power(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: SimulatePowerBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_body(format!(
            "expected {{\"mode\": \"battery\"|\"low-power\"|\"thermal-serious\"|\"thermal-critical\"|\"normal\", \"for\": \"60s\"}}: {e}"
        ))
    })?;
    let mode: locara_core::power::PowerMode =
        body.mode
            .parse()
            .map_err(|e: locara_core::power::ParsePowerModeError| {
                ApiError::invalid("mode", e.to_string())
            })?;
    let duration = simulation_duration(body.duration.as_deref())?;
    state.runtime.simulate_power(mode, duration).await?;
    Ok(Json(serde_json::json!({
        "mode": mode,
        "for_seconds": duration.map(|d| d.as_secs()),
    })))
}

/// A simulation's `for`: a duration from 1 s to 24 h; `None`: until
/// changed.
fn simulation_duration(d: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    match d {
        None => Ok(None),
        Some(d) => match KeepAlive::parse(d) {
            Ok(KeepAlive::For(d)) if d <= std::time::Duration::from_secs(24 * 3600) => Ok(Some(d)),
            _ => Err(ApiError::invalid(
                "for",
                format!("for {d:?} is not a duration from 1s to 24h, e.g. 60s"),
            )),
        },
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod router_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawServeConfig;
    use crate::testing::{FakeEngine, TOO_LONG};
    use serde_json::{json, Value};

    /// A daemon on an ephemeral port, tokenless, over `engine`'s fake
    /// workers, with one synthetic model `m:1` (context 2048).
    struct Daemon {
        url: String,
        engine: Arc<FakeEngine>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        _home: tempfile::TempDir,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn daemon(engine: Arc<FakeEngine>) -> Daemon {
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = crate::testing::app_state(
            home.path(),
            &["m:1"],
            Arc::clone(&engine),
            RawServeConfig::default(),
            addr,
            Vec::new(),
            true,
        );
        let app = router(state, 1 << 20);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Daemon {
            url: format!("http://{addr}"),
            engine,
            server,
            _home: home,
        }
    }

    /// What came back: the status, the context header, the body.
    struct Answer {
        status: u16,
        context: Option<String>,
        body: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
        }

        /// The `data:` of each server-sent event, `[DONE]` left out.
        fn events(&self) -> Vec<Value> {
            let datas: Vec<&str> = self
                .body
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            assert_eq!(datas.last(), Some(&openai::STREAM_DONE), "{}", self.body);
            datas[..datas.len() - 1]
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        }
    }

    impl Daemon {
        /// POSTs `body` to `path` over real HTTP (a blocking client on
        /// tokio's blocking pool, while this thread serves).
        async fn post(&self, path: &str, body: Value) -> Answer {
            let url = format!("{}{path}", self.url);
            tokio::task::spawn_blocking(move || {
                let agent = ureq::AgentBuilder::new().try_proxy_from_env(false).build();
                let response = match agent
                    .post(&url)
                    .set("Content-Type", "application/json")
                    .send_string(&body.to_string())
                {
                    Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                    Err(e) => panic!("POST {url}: {e}"),
                };
                Answer {
                    status: response.status(),
                    context: response.header(openai::CONTEXT_HEADER).map(str::to_owned),
                    body: response.into_string().unwrap(),
                }
            })
            .await
            .unwrap()
        }

        /// The `truncate` of the last generation the workers were asked.
        fn last_truncate(&self) -> bool {
            self.engine
                .requests()
                .last()
                .expect("a generation")
                .truncate
        }
    }

    fn chat(extra: Value) -> Value {
        let mut body = json!({
            "model": "m:1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
        });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body
    }

    fn too_long_chat(extra: Value) -> Value {
        let mut body = chat(extra);
        body["messages"][1]["content"] = json!(format!("Hi {TOO_LONG}"));
        body
    }

    #[tokio::test]
    async fn truncate_reaches_the_worker_and_is_checked_by_name() {
        let d = daemon(FakeEngine::new(3)).await;
        for (path, body) in [
            ("/v1/chat/completions", chat(json!({}))),
            ("/v1/completions", json!({"model": "m:1", "prompt": "Once"})),
        ] {
            let mut body = body;
            for (value, sent) in [
                (Value::Null, true),
                (json!(true), true),
                (json!(false), false),
            ] {
                body["truncate"] = value.clone();
                let a = d.post(path, body.clone()).await;
                assert_eq!(a.status, 200, "{path} {value}: {}", a.body);
                assert_eq!(d.last_truncate(), sent, "{path} {value}");
            }
            let asked = d.engine.requests().len();
            body["truncate"] = json!("yes");
            let a = d.post(path, body).await;
            assert_eq!(a.status, 400, "{}", a.body);
            let e = a.json();
            assert_eq!(e["error"]["param"], "truncate");
            assert_eq!(
                e["error"]["message"],
                "truncate must be true or false, got the string \"yes\""
            );
            assert_eq!(
                d.engine.requests().len(),
                asked,
                "refused before the worker"
            );
        }
        // Omitted, it is true.
        d.post("/v1/chat/completions", chat(json!({}))).await;
        assert!(d.last_truncate());
    }

    #[tokio::test]
    async fn without_truncate_a_prompt_too_long_is_context_length_exceeded() {
        let d = daemon(FakeEngine::new(3)).await;
        let raw = json!({"model": "m:1", "prompt": format!("Once {TOO_LONG}"), "truncate": false});
        for (path, body) in [
            (
                "/v1/chat/completions",
                too_long_chat(json!({"truncate": false})),
            ),
            (
                "/v1/chat/completions",
                too_long_chat(json!({"truncate": false, "stream": true})),
            ),
            ("/v1/completions", raw),
        ] {
            let a = d.post(path, body).await;
            assert_eq!(a.status, 400, "{path}: {}", a.body);
            let e = a.json();
            assert_eq!(e["error"]["type"], "invalid_request_error");
            assert_eq!(e["error"]["code"], "context_length_exceeded");
            assert!(!d.last_truncate());
        }
        // With it, the same prompt is answered (the fake leaves a message out).
        let a = d
            .post("/v1/chat/completions", too_long_chat(json!({})))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["locara"]["dropped_messages"], 1);
        // max_tokens beyond the context is still refused up front.
        let a = d
            .post("/v1/chat/completions", chat(json!({"max_tokens": 4096})))
            .await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.json()["error"]["param"], "max_tokens");
    }

    #[tokio::test]
    async fn a_whole_answer_says_what_was_reused_and_left_out_in_body_and_header() {
        let stats = GenerationStats {
            prompt_tokens: 40,
            prompt_cached_tokens: 12,
            kept_tokens: 9,
            draft_tokens: 10,
            draft_accepted_tokens: 7,
            decode_steps: 4,
            ..GenerationStats::default()
        };
        let d = daemon(FakeEngine::reporting(3, stats)).await;
        let a = d
            .post("/v1/chat/completions", too_long_chat(json!({})))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        assert_eq!(
            v["locara"],
            json!({
                "prompt_cached_tokens": 12, "dropped_messages": 1,
                "shifted_tokens": 0, "kept_tokens": 9,
                "speculative": {"draft_tokens": 10, "draft_accepted_tokens": 7, "decode_steps": 4},
                "timings": {"prefill_ms": 0.0, "decode_ms": 0.0},
            })
        );
        assert_eq!(v["usage"]["prompt_tokens"], 40);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 12);
        assert_eq!(
            a.context.as_deref(),
            Some("dropped_messages=1, shifted_tokens=0, kept_tokens=9")
        );
        // Nothing left out: the field is there, the header is not.
        for (path, body) in [
            ("/v1/chat/completions", chat(json!({}))),
            ("/v1/completions", json!({"model": "m:1", "prompt": "Once"})),
        ] {
            let a = d.post(path, body).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let v = a.json();
            assert_eq!(v["locara"]["dropped_messages"], 0, "{path}");
            assert_eq!(v["locara"]["prompt_cached_tokens"], 12, "{path}");
            assert_eq!(a.context, None, "{path}");
        }
    }

    #[tokio::test]
    async fn a_stream_says_it_in_its_last_chunk_and_its_usage_chunk() {
        let stats = GenerationStats {
            prompt_tokens: 700,
            prompt_cached_tokens: 5,
            shifted_tokens: 512,
            kept_tokens: 9,
            ..GenerationStats::default()
        };
        let report = json!({
            "prompt_cached_tokens": 5, "dropped_messages": 0,
            "shifted_tokens": 512, "kept_tokens": 9,
            "speculative": {"draft_tokens": 0, "draft_accepted_tokens": 0, "decode_steps": 0},
            "timings": {"prefill_ms": 0.0, "decode_ms": 0.0},
        });
        let d = daemon(FakeEngine::reporting(3, stats)).await;

        // Without usage: the chunk with the finish reason carries it.
        let a = d
            .post("/v1/chat/completions", chat(json!({"stream": true})))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        // The header goes out before the generation ends: it cannot know.
        assert_eq!(a.context, None);
        let events = a.events();
        let last = events.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["locara"], report);
        assert!(events[..events.len() - 1]
            .iter()
            .all(|e| e.get("locara").is_none()));
        assert!(events.iter().all(|e| e.get("usage").is_none()));

        // With usage: the usage chunk carries it too, and cached tokens.
        let a = d
            .post(
                "/v1/chat/completions",
                chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
            )
            .await;
        let events = a.events();
        let [.., finished, usage] = events.as_slice() else {
            panic!("{}", a.body)
        };
        assert_eq!(finished["choices"][0]["finish_reason"], "length");
        assert_eq!(finished["locara"], report);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
        assert_eq!(usage["locara"], report);

        // A text completion stream alike.
        let a = d
            .post(
                "/v1/completions",
                json!({"model": "m:1", "prompt": "Once", "stream": true}),
            )
            .await;
        let events = a.events();
        let last = events.last().unwrap();
        assert_eq!(last["object"], "text_completion");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["locara"], report);
    }

    #[test]
    fn only_loopback_names_with_our_port_pass_the_host_check() {
        let listen = "127.0.0.1:11480".parse().unwrap();
        for ok in [
            "localhost:11480",
            "127.0.0.1:11480",
            "[::1]:11480",
            "LOCALHOST:11480",
        ] {
            assert!(host_allowed(Some(ok), listen), "{ok}");
        }
        for bad in [
            "evil.example:11480",
            "localhost:80",
            "localhost",
            "127.0.0.1.nip.io:11480",
            "10.0.0.5:11480",
            "",
        ] {
            assert!(!host_allowed(Some(bad), listen), "{bad}");
        }
        assert!(!host_allowed(None, listen));
        // Bound to a LAN address on purpose: that address passes too.
        let lan = "192.168.1.5:11480".parse().unwrap();
        assert!(host_allowed(Some("192.168.1.5:11480"), lan));
        assert!(!host_allowed(Some("192.168.1.6:11480"), lan));
    }

    #[tokio::test]
    async fn sampling_fields_and_the_schema_grammar_reach_the_worker() {
        let d = daemon(FakeEngine::new(3)).await;
        let a = d
            .post(
                "/v1/chat/completions",
                chat(json!({
                    "frequency_penalty": 0.5, "presence_penalty": 1.25,
                    "logit_bias": {"5": -100},
                    "response_format": {"type": "json_schema", "json_schema": {
                        "name": "answer", "strict": true,
                        "schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                                   "required": ["city"], "additionalProperties": false},
                    }},
                })),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let s = d.engine.requests().last().unwrap().sampling.clone();
        assert_eq!((s.frequency_penalty, s.presence_penalty), (0.5, 1.25));
        assert_eq!(
            s.logit_bias,
            [locara_engine::protocol::LogitBias {
                token: 5,
                bias: -100.0
            }]
        );
        let grammar = s.grammar.unwrap();
        assert!(
            grammar.contains(r#"( "\"Paris\"" | "\"Rome\"" )"#),
            "{grammar}"
        );
        assert_eq!(s.logprobs, None);
        // Answers without logprobs say null, as OpenAI's.
        assert_eq!(a.json()["choices"][0]["logprobs"], Value::Null);
    }

    #[tokio::test]
    async fn a_schema_keyword_we_cannot_enforce_is_a_400_before_the_worker() {
        let d = daemon(FakeEngine::new(3)).await;
        for stream in [false, true] {
            let a = d
                .post(
                    "/v1/chat/completions",
                    chat(json!({"stream": stream, "response_format": {"type": "json_schema", "json_schema": {
                        "name": "n",
                        "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
                    }}})),
                )
                .await;
            assert_eq!(a.status, 400, "{}", a.body);
            let e = &a.json()["error"];
            assert_eq!(
                e["param"],
                "response_format.json_schema.schema.properties.n"
            );
            assert_eq!(e["code"], "unsupported_parameter");
            assert!(
                e["message"].as_str().unwrap().contains("\"minimum\""),
                "{e}"
            );
        }
        assert!(d.engine.requests().is_empty(), "refused before the worker");
    }

    #[tokio::test]
    async fn a_logit_bias_token_outside_the_vocabulary_is_a_400() {
        let d = daemon(FakeEngine::new(3)).await;
        for stream in [false, true] {
            let a = d
                .post(
                    "/v1/chat/completions",
                    chat(json!({"stream": stream, "logit_bias": {"999999": 1}})),
                )
                .await;
            assert_eq!(a.status, 400, "{}", a.body);
            let e = &a.json()["error"];
            assert_eq!(e["type"], "invalid_request_error");
            assert_eq!(e["code"], "invalid_sampling");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("logit_bias names token 999999"),
                "{e}"
            );
        }
    }

    /// A NUL byte was a 500 from the worker; now a 400 that never reaches it.
    #[tokio::test]
    async fn a_nul_byte_in_a_message_is_a_400_not_a_500() {
        let d = daemon(FakeEngine::new(3)).await;
        let mut body = chat(json!({}));
        body["messages"][1]["content"] = json!("a\u{0}b");
        let a = d.post("/v1/chat/completions", body).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.json()["error"]["param"], "messages[1].content");
        let a = d
            .post(
                "/v1/completions",
                json!({"model": "m:1", "prompt": "\u{0}"}),
            )
            .await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.json()["error"]["param"], "prompt");
        assert!(d.engine.requests().is_empty());
    }

    #[tokio::test]
    async fn chat_logprobs_come_whole_and_with_each_streamed_text() {
        let d = daemon(FakeEngine::new(3)).await;
        let asked = json!({"logprobs": true, "top_logprobs": 2});
        let a = d.post("/v1/chat/completions", chat(asked.clone())).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            d.engine.requests().last().unwrap().sampling.logprobs,
            Some(2)
        );
        let lp = &a.json()["choices"][0]["logprobs"];
        assert_eq!(lp["refusal"], Value::Null);
        let content = lp["content"].as_array().unwrap();
        assert_eq!(content.len(), 3, "{lp}");
        assert_eq!(
            content[1],
            json!({"token": "t1 ", "logprob": -0.2f32, "bytes": [116, 49, 32], "top_logprobs": [
                {"token": "a0", "logprob": -0.05f32, "bytes": [97, 48]},
                {"token": "a1", "logprob": -1.05f32, "bytes": [97, 49]},
            ]})
        );

        let mut body = chat(asked);
        body["stream"] = json!(true);
        let events = d.post("/v1/chat/completions", body).await.events();
        let texts: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            })
            .collect();
        assert_eq!(texts.len(), 3);
        for (i, e) in texts.iter().enumerate() {
            let choice = &e["choices"][0];
            let content = choice["logprobs"]["content"].as_array().unwrap();
            assert_eq!(content.len(), 1, "{e}");
            assert_eq!(content[0]["token"], choice["delta"]["content"], "{e}");
            assert_eq!(content[0]["token"], format!("t{i} "));
        }
    }

    #[tokio::test]
    async fn completion_logprobs_take_the_legacy_shape_with_offsets() {
        let d = daemon(FakeEngine::new(3)).await;
        let body = json!({"model": "m:1", "prompt": "Once", "logprobs": 1});
        let a = d.post("/v1/completions", body.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let lp = &a.json()["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["t0 ", "t1 ", "t2 "]));
        assert_eq!(lp["text_offset"], json!([0, 3, 6]));
        assert_eq!(lp["token_logprobs"], json!([-0.1f32, -0.2f32, -0.3f32]));
        assert_eq!(
            lp["top_logprobs"][2],
            json!({"a0": -0.05f32, "t2 ": -0.3f32})
        );

        let mut body = body;
        body["stream"] = json!(true);
        let events = d.post("/v1/completions", body).await.events();
        let offsets: Vec<Value> = events
            .iter()
            .filter(|e| {
                e["choices"][0]["text"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            })
            .map(|e| e["choices"][0]["logprobs"]["text_offset"][0].clone())
            .collect();
        assert_eq!(offsets, [json!(0), json!(3), json!(6)]);
    }
}
