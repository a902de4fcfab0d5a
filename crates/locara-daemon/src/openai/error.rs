//! Errors in OpenAI's shape: [`ErrorType`] (the stable `type` and its
//! status) and [`ApiError`], whose `IntoResponse` gives the status,
//! `{"error":{"message","type","param","code"}}` and `Retry-After`.
//! In a stream that has already sent its 200, [`ApiError::sse_data`] is the
//! `data:` line (OpenAI's clients raise on a chunk with an `error` key).
//!
//! The daemon's own errors ([`DaemonError`]: the governor's, the app
//! registry's, the store's, the workers') become an [`ApiError`] in one
//! place, its `From<DaemonError>`. A request refused on its own terms (a
//! bad field, a token, a Host, an app's budget) is an [`ApiError`] from the
//! start, built where it is checked.

use crate::apps::AppError;
use crate::host::StreamError;
use crate::runtime::RuntimeError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use locara_core::governor::Refusal;
use locara_engine::protocol::ErrorKind;
use locara_engine::EngineError;
use serde_json::{json, Value};
use std::fmt;

/// Stable kinds of API error. [`ErrorType::as_str`] is the `type` of the
/// error body; clients may branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// 400: the request is malformed, out of range or asks for a feature
    /// Locara does not have.
    InvalidRequest,
    /// 404: the named model is not installed (code `model_not_found`).
    NotFound,
    /// 503: the model does not fit in the memory budget now. 503 rather than
    /// 507 (a WebDAV status about disk that clients do not retry): memory
    /// comes back as other models unload or pressure eases, and the ladder
    /// refuses loads under critical pressure with 503 + Retry-After.
    InsufficientMemory,
    /// 429: too many requests queued; `Retry-After` says when to try again.
    RateLimit,
    /// 503: the model exists but cannot be served now (held unloaded,
    /// loading failed, its file failed validation).
    ModelUnavailable,
    /// 500: a fault of the daemon itself.
    ServerError,
    /// 502: the model's engine worker exited during the request. 502 (Bad
    /// Gateway) because the daemon fronts the worker process and it is the
    /// worker that failed; OpenAI's clients retry 502, and a retry gets a
    /// fresh worker.
    WorkerDied,
    /// 401: no token, or one that is not valid.
    Unauthorized,
    /// 403: a valid token that may not do this.
    Forbidden,
    /// 503: the daemon is shutting down and takes no new work.
    ShuttingDown,
}

impl ErrorType {
    /// Every kind, for tests and docs.
    pub const ALL: [ErrorType; 10] = [
        ErrorType::InvalidRequest,
        ErrorType::NotFound,
        ErrorType::InsufficientMemory,
        ErrorType::RateLimit,
        ErrorType::ModelUnavailable,
        ErrorType::ServerError,
        ErrorType::WorkerDied,
        ErrorType::Unauthorized,
        ErrorType::Forbidden,
        ErrorType::ShuttingDown,
    ];

    /// The stable machine string: the `type` of the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::NotFound => "not_found_error",
            ErrorType::InsufficientMemory => "insufficient_memory",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::ModelUnavailable => "model_unavailable",
            ErrorType::ServerError => "server_error",
            ErrorType::WorkerDied => "worker_died",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::Forbidden => "forbidden",
            ErrorType::ShuttingDown => "shutting_down",
        }
    }

    /// The HTTP status this kind is answered with (see each variant for why).
    pub fn status(self) -> u16 {
        match self {
            ErrorType::InvalidRequest => 400,
            ErrorType::NotFound => 404,
            ErrorType::InsufficientMemory => 503,
            ErrorType::RateLimit => 429,
            ErrorType::ModelUnavailable => 503,
            ErrorType::ServerError => 500,
            ErrorType::WorkerDied => 502,
            ErrorType::Unauthorized => 401,
            ErrorType::Forbidden => 403,
            ErrorType::ShuttingDown => 503,
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to an API client, in OpenAI's shape.
///
/// Build it with the constructors ([`ApiError::invalid`],
/// [`ApiError::not_found_model`], ...), which keep `status` and `kind` in
/// agreement; [`ApiError::with_status`] exists for the rare status a kind
/// does not imply (413 for an oversized body, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    pub kind: ErrorType,
    /// For people: names the field, the value and the limit where there is one.
    pub message: String,
    /// The request field at fault (`temperature`, `messages[1].content`).
    pub param: Option<String>,
    /// A finer stable machine string (`model_not_found`,
    /// `context_length_exceeded`).
    pub code: Option<String>,
    /// Seconds after which a retry may succeed; sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of `kind` with its usual status and no param or code.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            status: kind.status(),
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 about one request field; `message` should name the field, the
    /// value and the limit.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidRequest, message).with_param(param)
    }

    /// 400 about the request as a whole (not JSON, not an object).
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidRequest, message)
    }

    /// 400 with param `param`: a feature Locara does not have.
    pub fn unsupported(param: &str, why: &str) -> Self {
        Self::invalid(param, format!("{param} is not supported: {why}"))
            .with_code("unsupported_parameter")
    }

    /// 404 `model_not_found` for the model a request named.
    pub fn not_found_model(name: &str) -> Self {
        Self::new(
            ErrorType::NotFound,
            format!(
                "model {name:?} is not installed; GET /v1/models lists the installed models, \
                 `locara pull {name}` fetches one from the catalog"
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 503 `insufficient_memory`; `message` should give the numbers (needs,
    /// free, budget). `retry_after` (seconds) when waiting may help, as under
    /// memory pressure.
    pub fn insufficient_memory(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        Self::new(ErrorType::InsufficientMemory, message).with_retry(retry_after)
    }

    /// 429 `rate_limit_error`; `retry_after` in seconds.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        Self::new(ErrorType::RateLimit, message).with_retry(retry_after)
    }

    /// 503 `model_unavailable`.
    pub fn model_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ModelUnavailable, message)
    }

    /// 500 `server_error`.
    pub fn server_error(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ServerError, message)
    }

    /// 502 `worker_died`.
    pub fn worker_died(message: impl Into<String>) -> Self {
        Self::new(ErrorType::WorkerDied, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unauthorized, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, message)
    }

    /// 503 `shutting_down`.
    pub fn shutting_down() -> Self {
        Self::new(
            ErrorType::ShuttingDown,
            "the Locara daemon is shutting down and takes no new requests",
        )
    }

    /// 413 `invalid_request_error`: the body is larger than `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        Self::invalid_body(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
        .with_status(413)
    }

    /// Sets `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets `code`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Sets the HTTP status, keeping the kind.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    fn with_retry(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// The status as `http`'s type; a status outside 100..=999 becomes 500.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// OpenAI's error body:
    /// `{"error":{"message":..,"type":..,"param":..,"code":..}}`, with
    /// `param` and `code` null when absent.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind.as_str(),
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// The body as the `data:` of a server-sent event, for an error in a
    /// stream whose 200 status has already been sent.
    pub fn sse_data(&self) -> String {
        self.body().to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A failure of the daemon that a client is answered with. It becomes an
/// [`ApiError`] through [`ApiError::from`], the one mapping of the
/// daemon's errors to a status, a type, a code and `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The governor refused or failed a request for a model.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The app registry (tokens, manifests) could not be read.
    #[error("reading the app registry: {0}")]
    Apps(#[from] AppError),
    /// The model store could not be read.
    #[error("reading the model store: {0}")]
    Store(#[from] StoreError),
    /// The worker refused or failed a generation
    /// ([`EngineError::Worker`]), or could not be asked at all.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model was unloaded while a generation ran.
    #[error("{0}")]
    Unloaded(String),
    /// The worker exited while a generation ran.
    #[error("{0}")]
    WorkerDied(String),
    /// A generation's events ended without its last one.
    #[error("the worker ended the stream")]
    StreamEnded,
}

impl DaemonError {
    /// The error a generation's stream ended with.
    pub fn from_stream(kind: StreamError, message: String) -> DaemonError {
        match kind {
            StreamError::Worker(kind) => DaemonError::Engine(EngineError::Worker { kind, message }),
            StreamError::Unloaded => DaemonError::Unloaded(message),
            StreamError::WorkerDied => DaemonError::WorkerDied(message),
        }
    }
}

impl From<DaemonError> for ApiError {
    /// The one mapping of the daemon's errors to what a client is answered.
    /// The message is the error's own.
    ///
    /// | error | type | status | code |
    /// |---|---|---|---|
    /// | runtime `NotFound` | `not_found_error` | 404 | `model_not_found` |
    /// | runtime `Refused(QueueFull)` | `rate_limit_error` | 429, `Retry-After: 1` | |
    /// | runtime `Refused(InsufficientMemory)` | `insufficient_memory` | 503 | |
    /// | runtime `Refused(Held)` | `model_unavailable` | 503 | `model_held` |
    /// | runtime `InvalidModel`, `LoadFailed`, `UnloadedWhileLoading` | `model_unavailable` | 503 | |
    /// | runtime `Pressure` | `model_unavailable` | 503, `Retry-After` (at least 1 s) | `memory_pressure` |
    /// | runtime `Thermal` (background work at thermal critical) | `model_unavailable` | 503, `Retry-After` | `thermal_critical` |
    /// | runtime `AppBudget` | `insufficient_memory` | 503 | `app_budget_exceeded` |
    /// | runtime `ShuttingDown` | `shutting_down` | 503 | |
    /// | runtime `Stopped` | `server_error` | 500 | |
    /// | app registry, store | `server_error` | 500 | |
    /// | worker `prompt_too_long` | `invalid_request_error` | 400 | `context_length_exceeded` (OpenAI's) |
    /// | worker `invalid_sampling` (a `logit_bias` token outside the vocabulary) | `invalid_request_error` | 400 | `invalid_sampling` |
    /// | worker `chat_template` | `invalid_request_error` (use /v1/completions), param `messages` | 400 | `chat_template` |
    /// | worker `invalid_model`, `load_failed` | `model_unavailable` | 503 | the kind |
    /// | worker `bad_request`, `decode_failed`, `resize_failed` | `server_error` | 500 | the kind |
    /// | worker `pool_exhausted` | `insufficient_memory` | 503 | the kind |
    /// | other `EngineError`s (the worker not reached), `WorkerDied`, `StreamEnded` | `worker_died` | 502 | |
    /// | `Unloaded` | `model_unavailable` | 503 | |
    fn from(e: DaemonError) -> ApiError {
        let message = e.to_string();
        match e {
            DaemonError::Runtime(e) => match e {
                RuntimeError::NotFound { model, .. } => ApiError {
                    message,
                    ..ApiError::not_found_model(&model)
                },
                RuntimeError::Refused(Refusal::QueueFull { .. }) => {
                    ApiError::rate_limited(message, Some(1))
                }
                RuntimeError::Refused(Refusal::InsufficientMemory(_)) => {
                    ApiError::insufficient_memory(message, None)
                }
                RuntimeError::Refused(Refusal::Held { .. }) => {
                    ApiError::model_unavailable(message).with_code("model_held")
                }
                RuntimeError::InvalidModel { .. }
                | RuntimeError::LoadFailed { .. }
                | RuntimeError::UnloadedWhileLoading { .. } => ApiError::model_unavailable(message),
                RuntimeError::Pressure { retry_after, .. } => ApiError::model_unavailable(message)
                    .with_code("memory_pressure")
                    .with_retry_after(retry_after.as_secs().max(1)),
                RuntimeError::Thermal { retry_after, .. } => ApiError::model_unavailable(message)
                    .with_code("thermal_critical")
                    .with_retry_after(retry_after.as_secs().max(1)),
                RuntimeError::AppBudget(_) => {
                    ApiError::insufficient_memory(message, None).with_code("app_budget_exceeded")
                }
                RuntimeError::ShuttingDown => ApiError::shutting_down(),
                RuntimeError::Stopped => ApiError::server_error(message),
            },
            DaemonError::Apps(_) | DaemonError::Store(_) => ApiError::server_error(message),
            DaemonError::Engine(EngineError::Worker { kind, .. }) => {
                let err = match kind {
                    // The message names the field (logit_bias, the
                    // grammar of response_format).
                    ErrorKind::PromptTooLong | ErrorKind::InvalidSampling => {
                        ApiError::new(ErrorType::InvalidRequest, message)
                    }
                    // An embedding input the worker cannot embed: the client's.
                    ErrorKind::InvalidInput => {
                        ApiError::new(ErrorType::InvalidRequest, message).with_param("input")
                    }
                    ErrorKind::ChatTemplate => ApiError::new(
                        ErrorType::InvalidRequest,
                        format!(
                            "{message}; /v1/completions takes a prompt without a chat template"
                        ),
                    )
                    .with_param("messages"),
                    ErrorKind::InvalidModel | ErrorKind::LoadFailed => {
                        ApiError::model_unavailable(message)
                    }
                    // A disk-tier failure never ends a generation; mapped
                    // only so the match is total.
                    ErrorKind::BadRequest
                    | ErrorKind::DecodeFailed
                    | ErrorKind::ResizeFailed
                    | ErrorKind::DiskCache => ApiError::server_error(message),
                    // The K/V pool may not grow (engine protocol v2): memory,
                    // like a load that does not fit.
                    ErrorKind::PoolExhausted => {
                        ApiError::new(ErrorType::InsufficientMemory, message)
                    }
                };
                err.with_code(match kind {
                    ErrorKind::PromptTooLong => "context_length_exceeded",
                    other => other.as_str(),
                })
            }
            DaemonError::Engine(_) | DaemonError::WorkerDied(_) | DaemonError::StreamEnded => {
                ApiError::worker_died(message)
            }
            DaemonError::Unloaded(_) => ApiError::model_unavailable(message),
        }
    }
}

// `?` on each of the daemon's errors, through the one mapping above.

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        DaemonError::Runtime(e).into()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        DaemonError::Apps(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        DaemonError::Store(e).into()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        DaemonError::Engine(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_openai_shape_exactly() {
        let err = ApiError::invalid("temperature", "temperature 3.5 is out of range: 0 to 2");
        assert_eq!(
            err.body(),
            json!({"error": {
                "message": "temperature 3.5 is out of range: 0 to 2",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": null,
            }})
        );
        let err = ApiError::server_error("boom");
        assert_eq!(
            err.body().to_string(),
            r#"{"error":{"code":null,"message":"boom","param":null,"type":"server_error"}}"#
        );
        let err = ApiError::not_found_model("qwen:7b");
        assert_eq!(err.status, 404);
        assert_eq!(err.body()["error"]["type"], "not_found_error");
        assert_eq!(err.body()["error"]["code"], "model_not_found");
        assert_eq!(err.body()["error"]["param"], "model");
        assert!(err.message.contains("\"qwen:7b\""), "{err:?}");
    }

    #[test]
    fn error_kinds_have_their_statuses_and_stable_names() {
        let expected = [
            (ErrorType::InvalidRequest, 400, "invalid_request_error"),
            (ErrorType::NotFound, 404, "not_found_error"),
            (ErrorType::InsufficientMemory, 503, "insufficient_memory"),
            (ErrorType::RateLimit, 429, "rate_limit_error"),
            (ErrorType::ModelUnavailable, 503, "model_unavailable"),
            (ErrorType::ServerError, 500, "server_error"),
            (ErrorType::WorkerDied, 502, "worker_died"),
            (ErrorType::Unauthorized, 401, "unauthorized"),
            (ErrorType::Forbidden, 403, "forbidden"),
            (ErrorType::ShuttingDown, 503, "shutting_down"),
        ];
        assert_eq!(expected.len(), ErrorType::ALL.len());
        for (kind, status, name) in expected {
            assert_eq!(kind.status(), status, "{kind}");
            assert_eq!(kind.as_str(), name);
            assert_eq!(ApiError::new(kind, "x").status, status);
        }
        assert_eq!(ApiError::insufficient_memory("x", Some(5)).status, 503);
        assert_eq!(ApiError::worker_died("x").status, 502);
        assert_eq!(ApiError::shutting_down().kind, ErrorType::ShuttingDown);
        assert_eq!(ApiError::unauthorized("x").status, 401);
        assert_eq!(ApiError::forbidden("x").status, 403);
        assert_eq!(ApiError::model_unavailable("x").status, 503);
        let big = ApiError::body_too_large(1 << 20);
        assert_eq!((big.status, big.kind), (413, ErrorType::InvalidRequest));
    }

    /// What a client sees of an error: status, type, code, `Retry-After`.
    fn seen(e: impl Into<ApiError>) -> (u16, &'static str, Option<String>, Option<u64>) {
        let e = e.into();
        (e.status, e.kind.as_str(), e.code, e.retry_after)
    }

    #[test]
    fn worker_errors_map_to_api_errors() {
        let cases = [
            (ErrorKind::PromptTooLong, 400, "context_length_exceeded"),
            (ErrorKind::ChatTemplate, 400, "chat_template"),
            (ErrorKind::InvalidModel, 503, "invalid_model"),
            (ErrorKind::LoadFailed, 503, "load_failed"),
            (ErrorKind::BadRequest, 500, "bad_request"),
            (ErrorKind::InvalidSampling, 400, "invalid_sampling"),
            (ErrorKind::DecodeFailed, 500, "decode_failed"),
            (ErrorKind::ResizeFailed, 500, "resize_failed"),
            (ErrorKind::DiskCache, 500, "disk_cache"),
            (ErrorKind::PoolExhausted, 503, "pool_exhausted"),
            (ErrorKind::InvalidInput, 400, "invalid_input"),
        ];
        for (kind, status, code) in cases {
            // A stream's worker error and the engine's own error: one
            // answer.
            let err = ApiError::from(DaemonError::from_stream(
                StreamError::Worker(kind),
                "m".into(),
            ));
            assert_eq!((err.status, err.code.as_deref()), (status, Some(code)));
            let engine = EngineError::Worker {
                kind,
                message: "m".into(),
            };
            assert_eq!(ApiError::from(engine), err);
        }
        let template = ApiError::from(DaemonError::from_stream(
            StreamError::Worker(ErrorKind::ChatTemplate),
            "no template".into(),
        ));
        assert_eq!(template.param.as_deref(), Some("messages"));
        assert_eq!(
            template.message,
            "no template; /v1/completions takes a prompt without a chat template"
        );
    }

    #[test]
    fn the_hosts_own_stream_kinds() {
        let unloaded = DaemonError::from_stream(StreamError::Unloaded, "unloaded".into());
        assert_eq!(seen(unloaded), (503, "model_unavailable", None, None));
        let died = ApiError::from(DaemonError::from_stream(
            StreamError::WorkerDied,
            "exited".into(),
        ));
        assert_eq!((died.status, died.kind), (502, ErrorType::WorkerDied));
        assert_eq!(died.message, "exited");
        let ended = ApiError::from(DaemonError::StreamEnded);
        assert_eq!((ended.status, ended.kind), (502, ErrorType::WorkerDied));
        assert_eq!(ended.message, "the worker ended the stream");
        // A worker that cannot be asked has died as far as a client knows.
        let gone = EngineError::WorkerDied {
            pid: 7,
            status: "signal 9".into(),
        };
        let message = gone.to_string();
        let err = ApiError::from(gone);
        assert_eq!((err.status, err.message), (502, message));
    }

    #[test]
    fn runtime_errors_map_to_status_type_code_and_retry_after() {
        use locara_core::governor::Shortfall;
        use locara_core::ladder::PressureLevel;
        use std::time::Duration;
        let model = || "m:1".to_string();
        let shortfall = Shortfall {
            model: model(),
            context: 2048,
            needed: 2 << 30,
            lowest_context: 2048,
            lowest_needed: 2 << 30,
            free: 1 << 30,
            effective_budget: 1 << 30,
            holders: Vec::new(),
        };
        let pressure = |retry_after| RuntimeError::Pressure {
            level: PressureLevel::Critical,
            retry_after,
            detail: "new loads are refused".into(),
        };
        let code = |c: &str| Some(c.to_string());
        let cases = [
            (
                RuntimeError::NotFound {
                    model: model(),
                    reason: "not in the store".into(),
                },
                (404, "not_found_error", code("model_not_found"), None),
            ),
            (
                RuntimeError::Refused(Refusal::QueueFull {
                    model: model(),
                    active: 17,
                    capacity: 17,
                }),
                (429, "rate_limit_error", None, Some(1)),
            ),
            (
                RuntimeError::Refused(Refusal::InsufficientMemory(shortfall)),
                (503, "insufficient_memory", None, None),
            ),
            (
                RuntimeError::Refused(Refusal::Held { model: model() }),
                (503, "model_unavailable", code("model_held"), None),
            ),
            (
                RuntimeError::InvalidModel {
                    model: model(),
                    message: "bad".into(),
                },
                (503, "model_unavailable", None, None),
            ),
            (
                RuntimeError::LoadFailed {
                    model: model(),
                    message: "bad".into(),
                },
                (503, "model_unavailable", None, None),
            ),
            (
                RuntimeError::AppBudget("app x may hold 1.0 GiB".into()),
                (
                    503,
                    "insufficient_memory",
                    code("app_budget_exceeded"),
                    None,
                ),
            ),
            (
                RuntimeError::UnloadedWhileLoading { model: model() },
                (503, "model_unavailable", None, None),
            ),
            (
                pressure(Duration::from_secs(30)),
                (503, "model_unavailable", code("memory_pressure"), Some(30)),
            ),
            // Never `Retry-After: 0`, which invites a client to spin.
            (
                pressure(Duration::from_millis(200)),
                (503, "model_unavailable", code("memory_pressure"), Some(1)),
            ),
            (
                RuntimeError::Thermal {
                    thermal: locara_core::power::ThermalState::Critical,
                    retry_after: Duration::from_secs(60),
                    detail: "new background work is refused".into(),
                },
                (503, "model_unavailable", code("thermal_critical"), Some(60)),
            ),
            (
                RuntimeError::ShuttingDown,
                (503, "shutting_down", None, None),
            ),
            (RuntimeError::Stopped, (500, "server_error", None, None)),
        ];
        for (e, expected) in cases {
            let shown = e.to_string();
            let err = ApiError::from(e.clone());
            assert_eq!(seen(e), expected, "{shown}");
            if err.kind != ErrorType::ShuttingDown {
                assert_eq!(err.message, shown);
            }
        }
    }

    #[test]
    fn registry_and_store_failures_are_server_errors_naming_what_was_read() {
        let registry = AppError::Damaged {
            path: "/home/u/apps/tokens.json".into(),
            reason: "not JSON".into(),
        };
        let err = ApiError::from(registry);
        assert_eq!((err.status, err.kind), (500, ErrorType::ServerError));
        assert_eq!(
            err.message,
            "reading the app registry: /home/u/apps/tokens.json is damaged: not JSON"
        );
        let store = StoreError::Catalog {
            path: "catalog.toml".into(),
            reason: "bad".into(),
        };
        let err = ApiError::from(store);
        assert_eq!((err.status, err.kind), (500, ErrorType::ServerError));
        assert_eq!(
            err.message,
            "reading the model store: the catalog catalog.toml is invalid: bad"
        );
    }

    #[tokio::test]
    async fn into_response_sets_status_body_and_retry_after() {
        let response =
            ApiError::rate_limited("12 requests are queued for smollm2", Some(7)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({"error": {
                "message": "12 requests are queued for smollm2",
                "type": "rate_limit_error",
                "param": null,
                "code": null,
            }})
        );

        let response = ApiError::worker_died("the worker exited").into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn stream_error_is_one_data_line() {
        let err = ApiError::worker_died("the engine worker for smollm2 exited (signal 9)");
        let line = err.sse_data();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["type"], "worker_died");
    }
}
