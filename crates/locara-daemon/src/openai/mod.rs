//! The OpenAI-compatible request and response layer: lenient request types
//! of our own, OpenAI-shaped responses and stream chunks, and the one place
//! where an error becomes an HTTP status and an OpenAI-shaped error body.
//!
//! The HTTP handlers (`server.rs`) read the body as bytes, call
//! [`parse_chat`] or [`parse_completion`], and send the results of the
//! builders here. Nothing in this module does I/O.
//!
//! * `request.rs`: [`parse_chat`], [`parse_completion`] and their checks.
//!   Unknown fields are ignored, known ones are type- and range-checked
//!   with errors that name the field, the value and the limit, and
//!   features Locara does not have are refused by name. Omitted sampling
//!   fields take llama.cpp's defaults (temperature 0.8), not OpenAI's.
//! * `response.rs`: whole answers, stream chunks and the model list, in
//!   OpenAI's shapes plus Locara's `locara` field ([`ContextReport`]).
//! * `tools.rs`: tool calling: `tools` and `tool_choice` read, the prompt's
//!   block, earlier calls and results written into the conversation, and
//!   [`tools::CallParser`], which reads an answer back into calls.
//! * `embeddings.rs`: [`parse_embeddings`] and [`embeddings_response`] for
//!   `POST /v1/embeddings`.
//! * `error.rs`: [`ApiError`] with its stable [`ErrorType`]; its
//!   `IntoResponse` gives the status, `{"error":{"message","type","param",
//!   "code"}}` and `Retry-After`. The daemon's own errors
//!   ([`DaemonError`]) become an [`ApiError`] there, in one `From`.
//! * here: response ids ([`completion_id`]) and times ([`unix_now`]).
//!
//! # Example
//!
//! ```
//! use locara_daemon::openai::{chat_chunk, parse_chat, Delta, ErrorType};
//!
//! let req = parse_chat(br#"{
//!     "model": "smollm2:135m",
//!     "messages": [{"role": "user", "content": "Hi"}],
//!     "temperature": 0, "stream": true, "keep_alive": "5m"
//! }"#)?;
//! assert_eq!(req.params.sampling.temperature, 0.0);
//! assert_eq!(req.messages[0].content, "Hi");
//!
//! let first = chat_chunk("chatcmpl-1", 1_700_000_000, &req.model, Delta::Role, None);
//! assert!(first.contains(r#""object":"chat.completion.chunk""#));
//!
//! let err = parse_chat(br#"{"model": "m", "messages": [{"role": "user", "content": "Hi"}],
//!                          "temperature": 3.5}"#).unwrap_err();
//! assert_eq!(err.kind, ErrorType::InvalidRequest);
//! assert_eq!(err.status, 400);
//! assert_eq!(err.param.as_deref(), Some("temperature"));
//! assert_eq!(err.message, "temperature 3.5 is out of range: 0 to 2");
//! # Ok::<(), locara_daemon::openai::ApiError>(())
//! ```

mod embeddings;
mod error;
mod request;
mod response;
pub mod tools;

pub use embeddings::*;
pub use error::*;
pub use request::*;
pub use response::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A response id: `prefix`, `-`, then 24 hex digits (`chatcmpl-…`,
/// `cmpl-…`; a trailing `-` on `prefix` is not doubled). Unique within the
/// process (a counter through a bijective mix) and unlikely to repeat
/// across runs (the mix is keyed by start time, pid and an address). Not
/// a secret: never use it for authentication.
pub fn completion_id(prefix: &str) -> String {
    static KEY: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as usize as u64;
        splitmix64(nanos ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 is a bijection and the golden-ratio step is odd, so
    // distinct counters give distinct `high` values.
    let x = key.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let high = splitmix64(x);
    let low = splitmix64(x ^ 0xD1B5_4A32_D192_ED03) >> 32;
    format!("{}-{high:016x}{low:08x}", prefix.trim_end_matches('-'))
}

/// Sebastiano Vigna's splitmix64 finalizer.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_ids_are_prefixed_hex_and_distinct() {
        let ids: Vec<String> = (0..1000).map(|_| completion_id("chatcmpl")).collect();
        for id in &ids {
            let hex = id.strip_prefix("chatcmpl-").expect("prefix");
            assert_eq!(hex.len(), 24, "{id}");
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(completion_id("cmpl-").starts_with("cmpl-"));
        assert!(!completion_id("cmpl-").starts_with("cmpl--"));
    }
}
