//! Ollama's API on the daemon's port, for apps and tools written for
//! Ollama (its Python and JavaScript clients, Open WebUI, editor plugins):
//! they switch by changing the URL.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/chat` | chat through the model's template; NDJSON stream by default; `format` (structured output) and `tools` (tool calls) |
//! | `POST /api/generate` | a prompt through the template (`raw`: as it is); `format` |
//! | `POST /api/embed` | vectors of a string or strings |
//! | `GET /api/tags` | the stored models |
//! | `GET /api/ps` | the loaded models |
//! | `POST /api/show` | a model's details, template and metadata |
//! | `GET /api/version` | the Ollama API version these routes follow |
//! | `POST /api/pull` | fetch a catalog model, an alias or a Hugging Face reference into the store, progress as NDJSON |
//! | `DELETE /api/delete` | remove a stored model (unloading it first) |
//!
//! Everything goes through the daemon's own paths: the same admission,
//! app budgets, token checks (an app or admin token; `tokenless`), Host
//! and Origin rules, and error mapping as the OpenAI routes; only the
//! shapes differ. Errors are Ollama's `{"error": "..."}` with the status
//! the OpenAI routes give; an error after a stream began is a last line
//! `{"error": "..."}`, as Ollama writes it. `pull` and `delete` change the
//! store, so they need the admin token (or `tokenless`).
//!
//! Model names are the store's (`smollm2:135m`, as Ollama spells its own);
//! Ollama's forms `library/NAME`, `registry.ollama.ai/library/NAME` and a
//! name without a tag (or with `:latest`) that only one stored model has
//! are mapped to it ([`resolve_name`]).

mod models;
mod request;

pub use request::{parse_chat, parse_embed, parse_generate, EmbedBody, GenerateBody};

use crate::openai::ApiError;
use crate::server::AppState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::Arc;

/// The Ollama API version whose shapes these routes follow, for clients
/// that check it (`/api/version`).
pub const OLLAMA_VERSION: &str = "0.12.0";

/// Ollama's streaming content type: one JSON object per line.
pub const NDJSON: &str = "application/x-ndjson";

/// The routes; the caller adds the authentication layer.
pub fn routes(_state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/chat", post(models::chat))
        .route("/api/generate", post(models::generate))
        .route("/api/embed", post(models::embed))
        .route("/api/tags", get(models::tags))
        .route("/api/ps", get(models::ps))
        .route("/api/show", post(models::show))
        .route("/api/version", get(models::version))
        .route("/api/pull", post(models::pull))
        .route("/api/delete", delete(models::delete_model))
}

/// An [`ApiError`] in Ollama's shape: `{"error": message}`, same status
/// and `Retry-After`.
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl From<crate::runtime::RuntimeError> for OllamaError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        OllamaError(e.into())
    }
}

impl From<crate::store::StoreError> for OllamaError {
    fn from(e: crate::store::StoreError) -> Self {
        OllamaError(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut response = (
            e.status_code(),
            axum::Json(serde_json::json!({ "error": e.message })),
        )
            .into_response();
        if let Some(s) = e.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
        }
        response
    }
}

/// The store's name for a name an Ollama client sends: the name itself
/// when stored; else without Ollama's registry prefixes; else, for a name
/// with no tag or `:latest`, the one stored model of that name, if there
/// is exactly one. Otherwise the name as given (the request then fails
/// as `model_not_found`, naming it).
pub fn resolve_name(stored: &[String], asked: &str) -> String {
    if stored.iter().any(|s| s == asked) {
        return asked.to_owned();
    }
    let bare = asked
        .trim_start_matches("registry.ollama.ai/")
        .trim_start_matches("library/");
    if stored.iter().any(|s| s == bare) {
        return bare.to_owned();
    }
    let base = bare.strip_suffix(":latest").unwrap_or(bare);
    if !base.contains(':') {
        let mut same = stored
            .iter()
            .filter(|s| s.split(':').next() == Some(base) && s.as_str() != base);
        if let (Some(only), None) = (same.next(), same.next()) {
            return only.clone();
        }
    }
    asked.to_owned()
}

/// Errors answered before an Ollama handler runs (the token check) come in
/// the OpenAI routes' shape; this layer rewrites them into Ollama's
/// `{"error": message}`, keeping status and headers.
pub async fn reshape_errors(response: Response) -> Response {
    if response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (
            parts.status,
            axum::Json(serde_json::json!({"error": "error"})),
        )
            .into_response();
    };
    let reshaped = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
    match reshaped {
        Some(message) => {
            let body = serde_json::json!({ "error": message }).to_string();
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(body))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// A time as Ollama writes it: RFC 3339 in UTC with milliseconds.
pub fn rfc3339(unix_ms: u64) -> String {
    let t = locara_platform::time::utc(unix_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millisecond
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_stores() {
        let stored = vec!["smollm2:135m".to_string(), "gemma3:270m".to_string()];
        for (asked, want) in [
            ("smollm2:135m", "smollm2:135m"),
            ("smollm2", "smollm2:135m"),
            ("smollm2:latest", "smollm2:135m"),
            ("library/gemma3:270m", "gemma3:270m"),
            ("registry.ollama.ai/library/gemma3", "gemma3:270m"),
            ("smollm2:360m", "smollm2:360m"),
            ("llama3", "llama3"),
        ] {
            assert_eq!(resolve_name(&stored, asked), want, "{asked}");
        }
        // Two of a name: no guess.
        let two = vec!["a:1".to_string(), "a:2".to_string()];
        assert_eq!(resolve_name(&two, "a"), "a");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }
}
