//! The two scenarios of the serve benchmark, run against one server: one
//! stream, and several concurrent streams started together.

use crate::http::{self, BaseUrl, StreamResult};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::sync::Barrier;
use std::time::Duration;

/// The user message of every request. Greedy decoding of SmolLM2-135M
/// answers it with hundreds of tokens without stopping (400 of 400 on
/// llama-server), like the engine benchmark's raw decode prompts
/// (`engine::DECODE_PROMPTS`), here in the chat form both servers put
/// through the model's template. "Count from 1 to 1000" was tried and
/// stops after "20. 20" (122 tokens).
pub const PROMPT: &str = "Write the numbers from 1 to 500, separated by commas.";

/// A streamed, greedy chat completion request of one user message.
/// `extra` adds side-specific fields (llama-server's `cache_prompt`).
pub fn chat_body(model: &str, prompt: &str, max_tokens: u32, extra: &[(&str, Value)]) -> Vec<u8> {
    messages_body(
        model,
        json!([{"role": "user", "content": prompt}]),
        max_tokens,
        extra,
    )
}

/// A streamed, greedy chat completion request of the chat `messages` (a
/// JSON array of `{"role", "content"}` objects), as [`chat_body`].
pub fn messages_body(
    model: &str,
    messages: Value,
    max_tokens: u32,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        // The final chunk then carries `usage`, which checks that a chunk
        // with text is one token.
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "max_tokens": max_tokens,
    });
    for (key, value) in extra {
        body[*key] = value.clone();
    }
    serde_json::to_vec(&body).expect("a JSON value serialises")
}

/// One request, nothing else running.
pub fn one_stream(base: &BaseUrl, body: &[u8], timeout: Duration) -> Result<StreamResult> {
    http::stream_chat(base, body, timeout)
}

/// What `n` streams started together measured.
#[derive(Debug, Clone)]
pub struct Concurrent {
    pub streams: Vec<StreamResult>,
}

impl Concurrent {
    /// Tokens of all streams over the time from the first stream's first
    /// token to the last stream's last token, tokens per second.
    pub fn aggregate_tps(&self) -> Option<f64> {
        let first = self.streams.iter().map(|s| s.first_token).min()?;
        let last = self.streams.iter().map(|s| s.last_token).max()?;
        let span = (last - first).as_secs_f64();
        let tokens: u32 = self.streams.iter().map(|s| s.tokens).sum();
        (span > 0.0).then(|| f64::from(tokens) / span)
    }

    /// Whether every stream was decoding at one moment: the last first token
    /// came before the first last token. A server that runs the streams one
    /// after another (or too few at a time) fails this.
    pub fn overlapped(&self) -> bool {
        let last_first = self.streams.iter().map(|s| s.first_token).max();
        let first_last = self.streams.iter().map(|s| s.last_token).min();
        matches!((last_first, first_last), (Some(a), Some(b)) if a < b)
    }

    /// Median of the streams' times to first token, seconds.
    pub fn median_ttft(&self) -> Option<f64> {
        let mut ttfts: Vec<f64> = self.streams.iter().map(StreamResult::ttft).collect();
        ttfts.sort_by(f64::total_cmp);
        let n = ttfts.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(ttfts[n / 2]),
            _ => Some((ttfts[n / 2 - 1] + ttfts[n / 2]) / 2.0),
        }
    }
}

/// `n` requests on `n` connections, sent together (a barrier releases the
/// threads at once).
pub fn concurrent(base: &BaseUrl, body: &[u8], n: u32, timeout: Duration) -> Result<Concurrent> {
    let barrier = Barrier::new(n as usize);
    let results: Vec<Result<StreamResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    http::stream_chat(base, body, timeout)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a stream thread panicked"))
            .collect()
    });
    let streams = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("stream {} of {n}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Concurrent { streams })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn stream(sent: Instant, first_ms: u64, last_ms: u64, tokens: u32) -> StreamResult {
        StreamResult {
            sent,
            first_token: sent + Duration::from_millis(first_ms),
            last_token: sent + Duration::from_millis(last_ms),
            tokens,
            usage: None,
            finish_reason: Some("length".into()),
            text: String::new(),
            cached_prompt_tokens: None,
            server_prefill_ms: None,
            token_times: Vec::new(),
        }
    }

    #[test]
    fn aggregate_spans_first_first_token_to_last_last_token() {
        let t = Instant::now();
        let c = Concurrent {
            streams: vec![
                stream(t, 100, 1100, 100),
                stream(t, 200, 1300, 100),
                stream(t, 150, 1000, 100),
                stream(t, 300, 1200, 100),
            ],
        };
        // 400 tokens from 100 ms to 1300 ms.
        assert!((c.aggregate_tps().unwrap() - 400.0 / 1.2).abs() < 1e-9);
        // TTFTs 100, 150, 200, 300 ms: median 175 ms.
        assert!((c.median_ttft().unwrap() - 0.175).abs() < 1e-9);
        assert!(c.overlapped());
        assert_eq!(Concurrent { streams: vec![] }.aggregate_tps(), None);
        let one_after_another = Concurrent {
            streams: vec![stream(t, 100, 500, 50), stream(t, 600, 1000, 50)],
        };
        assert!(!one_after_another.overlapped());
    }

    #[test]
    fn request_is_streamed_greedy_and_asks_for_usage() {
        let body = chat_body(
            "smollm2:135m",
            "hi",
            128,
            &[("cache_prompt", Value::Bool(false))],
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["temperature"], 0);
        assert_eq!(v["max_tokens"], 128);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["cache_prompt"], false);
        assert_eq!(v["model"], "smollm2:135m");
    }
}
