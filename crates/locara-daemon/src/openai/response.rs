//! Responses in OpenAI's shapes: whole answers, stream chunks and the model
//! list, plus Locara's `locara` field ([`ContextReport`]): the prompt tokens
//! reused from the cache, what was left out to fit the context, and what
//! speculative decoding drafted. A whole
//! answer has it at the top level (and the [`CONTEXT_HEADER`] when something
//! was left out); a stream has it in its last chunk (the one with the finish
//! reason) and its usage chunk. `usage` carries OpenAI's
//! `prompt_tokens_details.cached_tokens`.

use super::tools::Call;
use locara_engine::protocol::{FinishReason, GenerationStats, TokenLogprobs, TokenProb};
use serde_json::{json, Value};

/// What a stream sends after its last chunk, as the `data:` of its last event.
pub const STREAM_DONE: &str = "[DONE]";

/// Token counts of one generation, as OpenAI's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt as it was run (after the chat template, and
    /// after any messages left out to fit the context).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Prompt tokens whose K/V came from a cached sequence instead of a
    /// prefill: OpenAI's `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u32,
}

impl Usage {
    pub fn from_stats(stats: &GenerationStats) -> Self {
        Self {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.generated_tokens,
            cached_tokens: stats.prompt_cached_tokens,
        }
    }

    /// Prompt plus completion tokens.
    pub fn total_tokens(self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }

    /// `{"prompt_tokens","completion_tokens","total_tokens",
    /// "prompt_tokens_details":{"cached_tokens"}}`, the shape OpenAI's
    /// clients read cached tokens from.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Milliseconds as whole microseconds (negative or not a number: 0).
fn micros(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    }
}

/// The response header that says a request's context was shortened; sent
/// on whole (non-streamed) answers only, as a stream's headers go out
/// before the generation ends. See [`ContextReport::header_value`].
pub const CONTEXT_HEADER: &str = "x-locara-context";

/// What the worker reused and left out to fit a request in its context:
/// Locara's `locara` field of a response (the whole answer, and a stream's
/// last chunk and usage chunk) and its [`CONTEXT_HEADER`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextReport {
    /// Prompt tokens taken from a cached sequence instead of prefilled.
    pub prompt_cached_tokens: u32,
    /// Oldest non-system chat messages left out so the prompt fits.
    pub dropped_messages: u32,
    /// Tokens discarded by context shifts while generating.
    pub shifted_tokens: u32,
    /// Tokens at the start that a context shift keeps (the system prompt,
    /// as the template renders it).
    pub kept_tokens: u32,
    /// Speculative decoding: drafted tokens the model checked, those it
    /// kept, and the decodes the answer took (`GenerationStats`).
    pub draft_tokens: u32,
    pub draft_accepted_tokens: u32,
    pub decode_steps: u32,
    /// The worker's own time for the prompt (up to the first token's
    /// logits) and for the rest, microseconds: what a client's time to
    /// first token is, less the way there and back (llama-server's
    /// `timings.prompt_ms` and `predicted_ms` say the same).
    pub prefill_us: u64,
    pub decode_us: u64,
}

impl ContextReport {
    pub fn from_stats(stats: &GenerationStats) -> Self {
        Self {
            prompt_cached_tokens: stats.prompt_cached_tokens,
            dropped_messages: stats.dropped_messages,
            shifted_tokens: stats.shifted_tokens,
            kept_tokens: stats.kept_tokens,
            draft_tokens: stats.draft_tokens,
            draft_accepted_tokens: stats.draft_accepted_tokens,
            decode_steps: stats.decode_steps,
            prefill_us: micros(stats.prefill_ms),
            decode_us: micros(stats.decode_ms),
        }
    }

    /// Whether the model saw less than the request sent or than it wrote:
    /// messages left out, or tokens shifted out of the context.
    pub fn shortened(self) -> bool {
        self.dropped_messages > 0 || self.shifted_tokens > 0
    }

    /// `{"prompt_cached_tokens","dropped_messages","shifted_tokens","kept_tokens",
    /// "speculative":{"draft_tokens","draft_accepted_tokens","decode_steps"},
    /// "timings":{"prefill_ms","decode_ms"}}`.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_cached_tokens": self.prompt_cached_tokens,
            "dropped_messages": self.dropped_messages,
            "shifted_tokens": self.shifted_tokens,
            "kept_tokens": self.kept_tokens,
            "speculative": {
                "draft_tokens": self.draft_tokens,
                "draft_accepted_tokens": self.draft_accepted_tokens,
                "decode_steps": self.decode_steps,
            },
            "timings": {
                "prefill_ms": self.prefill_us as f64 / 1000.0,
                "decode_ms": self.decode_us as f64 / 1000.0,
            },
        })
    }

    /// The [`CONTEXT_HEADER`] value when the context was
    /// [`shortened`](Self::shortened), else `None`: a structured-field
    /// dictionary (RFC 8941), so a client can read it with a library,
    /// e.g. `dropped_messages=2, shifted_tokens=0, kept_tokens=31`.
    pub fn header_value(self) -> Option<String> {
        self.shortened().then(|| {
            format!(
                "dropped_messages={}, shifted_tokens={}, kept_tokens={}",
                self.dropped_messages, self.shifted_tokens, self.kept_tokens
            )
        })
    }
}

impl From<&GenerationStats> for Usage {
    fn from(stats: &GenerationStats) -> Self {
        Self::from_stats(stats)
    }
}

/// The `delta` of one chat stream chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta<'a> {
    /// The first chunk: `{"role":"assistant","content":""}`.
    Role,
    /// Generated text: `{"content":"..."}`.
    Content(&'a str),
    /// A tool call begins, as OpenAI streams it: `{"tool_calls":[{"index",
    /// "id","type":"function","function":{"name","arguments":""}}]}`.
    CallStart {
        index: usize,
        id: &'a str,
        name: &'a str,
    },
    /// More of a call's arguments: `{"tool_calls":[{"index",
    /// "function":{"arguments"}}]}`.
    Arguments { index: usize, text: &'a str },
    /// The last chunk, which carries the finish reason: `{}`.
    Empty,
}

impl Delta<'_> {
    fn to_json(self) -> Value {
        match self {
            Delta::Role => json!({"role": "assistant", "content": ""}),
            Delta::Content(text) => json!({ "content": text }),
            Delta::CallStart { index, id, name } => json!({"tool_calls": [{
                "index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}),
            Delta::Arguments { index, text } => json!({"tool_calls": [{
                "index": index, "function": {"arguments": text},
            }]}),
            Delta::Empty => json!({}),
        }
    }
}

/// The finish reason of an answer that called tools: OpenAI's
/// `tool_calls` when the model ended it, else the reason as it is (an
/// answer cut by `max_tokens` is `length` whatever it holds).
pub fn tool_finish_reason(f: FinishReason, called: bool) -> &'static str {
    match f {
        FinishReason::Stop if called => "tool_calls",
        f => finish_reason(f),
    }
}

/// Puts an answer's calls into its (only) choice's message:
/// `tool_calls: [{"id","type":"function","function":{"name","arguments"}}]`
/// (arguments as JSON text), and `content: null` when there was no text,
/// as OpenAI answers a call.
pub fn set_tool_calls(answer: &mut Value, calls: &[Call]) {
    if calls.is_empty() {
        return;
    }
    let message = &mut answer["choices"][0]["message"];
    if message["content"] == "" {
        message["content"] = Value::Null;
    }
    message["tool_calls"] = calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect();
}

/// OpenAI's name for why a generation ended. A cancelled generation (the
/// daemon stopped it) reads as `length`: the answer was cut short, which is
/// what `length` tells a client, whereas `stop` would claim the model
/// finished; OpenAI's clients (some deserialize into a closed enum) know no
/// other name.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// The JSON of one `chat.completion.chunk`, for one SSE `data:` line.
/// `created` is in Unix seconds. Send [`Delta::Role`] first, then
/// [`Delta::Content`]s, then [`Delta::Empty`] with the finish reason.
pub fn chat_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Delta<'_>,
    finish_reason: Option<&str>,
) -> String {
    chat_chunk_json(id, created, model, delta, finish_reason).to_string()
}

pub(crate) fn chat_chunk_json(
    id: &str,
    created: u64,
    model: &str,
    delta: Delta<'_>,
    finish_reason: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "delta": delta.to_json(),
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    })
}

/// The last chunk of a chat stream: [`Delta::Empty`], the finish reason,
/// and the `locara` field, so a client that did not ask for usage still
/// learns what was left out (OpenAI's clients keep or ignore fields they
/// do not know).
pub fn chat_last_chunk(
    id: &str,
    created: u64,
    model: &str,
    finish_reason: &str,
    report: ContextReport,
) -> String {
    chat_last_chunk_json(id, created, model, finish_reason, report).to_string()
}

pub(crate) fn chat_last_chunk_json(
    id: &str,
    created: u64,
    model: &str,
    finish_reason: &str,
    report: ContextReport,
) -> Value {
    let mut chunk = chat_chunk_json(id, created, model, Delta::Empty, Some(finish_reason));
    chunk["locara"] = report.to_json();
    chunk
}

/// The chunk after the last when `stream_options.include_usage` is set:
/// no choices, the usage, and the `locara` field.
pub fn chat_usage_chunk(
    id: &str,
    created: u64,
    model: &str,
    usage: Usage,
    report: ContextReport,
) -> String {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.to_json(),
        "locara": report.to_json(),
    })
    .to_string()
}

/// A whole (non-streamed) `chat.completion`, with the `locara` field.
/// `created` in Unix seconds.
pub fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    content: &str,
    finish_reason: &str,
    usage: Usage,
    report: ContextReport,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage.to_json(),
        "locara": report.to_json(),
    })
}

/// The JSON of one streamed `text_completion` chunk, for one SSE `data:`
/// line; the last carries the finish reason (and may have empty text).
pub fn text_chunk(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: Option<&str>,
) -> String {
    text_chunk_json(id, created, model, text, finish_reason).to_string()
}

pub(crate) fn text_chunk_json(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    })
}

/// The last chunk of a text completion stream: empty text, the finish
/// reason and the `locara` field (see [`chat_last_chunk`]).
pub fn text_last_chunk(
    id: &str,
    created: u64,
    model: &str,
    finish_reason: &str,
    report: ContextReport,
) -> String {
    text_last_chunk_json(id, created, model, finish_reason, report).to_string()
}

pub(crate) fn text_last_chunk_json(
    id: &str,
    created: u64,
    model: &str,
    finish_reason: &str,
    report: ContextReport,
) -> Value {
    let mut chunk = text_chunk_json(id, created, model, "", Some(finish_reason));
    chunk["locara"] = report.to_json();
    chunk
}

/// Sets the `logprobs` of an answer's or a chunk's (only) choice.
pub fn set_logprobs(answer: &mut Value, logprobs: Value) {
    answer["choices"][0]["logprobs"] = logprobs;
}

fn token_json(t: &TokenProb) -> Value {
    json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes})
}

/// A chat choice's `logprobs` in OpenAI's shape: `{"content": [{"token",
/// "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
/// "refusal": null}`, one entry per token.
pub fn chat_logprobs(tokens: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut entry = token_json(&t.chosen);
            entry["top_logprobs"] = t.top.iter().map(token_json).collect();
            entry
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// A text completion choice's `logprobs` in OpenAI's legacy shape:
/// `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
/// "text_offset"}`. As OpenAI's, each `top_logprobs` entry holds the
/// drawn token besides the most likely ones. `offset` is where these
/// tokens start in the answer's text, in characters; it moves past them.
pub fn text_logprobs(tokens: &[TokenLogprobs], offset: &mut usize) -> Value {
    let mut texts = Vec::with_capacity(tokens.len());
    let mut logprobs = Vec::with_capacity(tokens.len());
    let mut tops = Vec::with_capacity(tokens.len());
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        texts.push(t.chosen.token.clone());
        logprobs.push(t.chosen.logprob);
        let mut top = serde_json::Map::new();
        for p in t.top.iter().chain(std::iter::once(&t.chosen)) {
            top.insert(p.token.clone(), json!(p.logprob));
        }
        tops.push(Value::Object(top));
        offsets.push(*offset);
        *offset += t.chosen.token.chars().count();
    }
    json!({
        "tokens": texts,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}

/// The usage chunk of a text completion stream (`choices: []`), with the
/// `locara` field.
pub fn text_usage_chunk(
    id: &str,
    created: u64,
    model: &str,
    usage: Usage,
    report: ContextReport,
) -> String {
    json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.to_json(),
        "locara": report.to_json(),
    })
    .to_string()
}

/// A whole (non-streamed) `text_completion`, with the `locara` field.
/// `created` in Unix seconds.
pub fn text_completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: &str,
    usage: Usage,
    report: ContextReport,
) -> Value {
    json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage.to_json(),
        "locara": report.to_json(),
    })
}

/// `GET /v1/models`: one entry per `(id, created in Unix seconds, owned_by)`.
pub fn models_list(models: &[(String, u64, &str)]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|(id, created, owned_by)| {
            json!({
                "id": id,
                "object": "model",
                "created": created,
                "owned_by": owned_by,
            })
        })
        .collect();
    json!({ "object": "list", "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// Reads a chunk the way the `openai` Python client does: it needs
    /// `id`, `object`, `created`, `model`, and per choice `index`, `delta`,
    /// `finish_reason`.
    fn read_chunk(text: &str) -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["id"], "chatcmpl-abc");
        assert_eq!(v["created"], 1_700_000_000u64);
        assert_eq!(v["model"], "smollm2:135m");
        v
    }

    #[test]
    fn chat_stream_chunks_read_back_as_openai_clients_expect() {
        let (id, t, m) = ("chatcmpl-abc", 1_700_000_000, "smollm2:135m");
        let stream = [
            chat_chunk(id, t, m, Delta::Role, None),
            chat_chunk(id, t, m, Delta::Content("Hel"), None),
            chat_chunk(id, t, m, Delta::Content("lo \"✓\"\n"), None),
            chat_chunk(
                id,
                t,
                m,
                Delta::Empty,
                Some(finish_reason(FinishReason::Stop)),
            ),
        ];
        let chunks: Vec<Value> = stream.iter().map(|c| read_chunk(c)).collect();
        for c in &chunks {
            assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
            assert_eq!(c["choices"][0]["index"], 0);
            assert!(c["choices"][0]["delta"].is_object());
            assert!(c["choices"][0].get("finish_reason").is_some());
        }
        assert!(
            !stream.iter().any(|s| s.contains('\n')),
            "SSE data must be one line"
        );
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello \"✓\"\n");
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");

        let report = ContextReport {
            prompt_cached_tokens: 4,
            dropped_messages: 2,
            shifted_tokens: 0,
            kept_tokens: 6,
            draft_tokens: 12,
            draft_accepted_tokens: 9,
            decode_steps: 5,
            prefill_us: 41_250,
            decode_us: 0,
        };
        let locara = json!({
            "prompt_cached_tokens": 4, "dropped_messages": 2,
            "shifted_tokens": 0, "kept_tokens": 6,
            "speculative": {"draft_tokens": 12, "draft_accepted_tokens": 9, "decode_steps": 5},
            "timings": {"prefill_ms": 41.25, "decode_ms": 0.0},
        });
        let finished = read_chunk(&chat_last_chunk(id, t, m, "stop", report));
        assert_eq!(finished["choices"], chunks[3]["choices"]);
        assert_eq!(finished["locara"], locara);

        let usage = Usage {
            prompt_tokens: 9,
            completion_tokens: 3,
            cached_tokens: 4,
        };
        let last = read_chunk(&chat_usage_chunk(id, t, m, usage, report));
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({
                "prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 4},
            })
        );
        assert_eq!(last["locara"], locara);
    }

    #[test]
    fn the_context_header_says_what_was_left_out_and_only_then() {
        let stats = GenerationStats {
            prompt_cached_tokens: 100,
            kept_tokens: 31,
            ..GenerationStats::default()
        };
        let report = ContextReport::from_stats(&stats);
        assert!(!report.shortened());
        assert_eq!(report.header_value(), None);
        let dropped = ContextReport {
            dropped_messages: 2,
            ..report
        };
        assert_eq!(
            dropped.header_value().as_deref(),
            Some("dropped_messages=2, shifted_tokens=0, kept_tokens=31")
        );
        let shifted = ContextReport {
            shifted_tokens: 900,
            ..report
        };
        assert_eq!(
            shifted.header_value().as_deref(),
            Some("dropped_messages=0, shifted_tokens=900, kept_tokens=31")
        );
        // A valid header value as it stands.
        assert!(HeaderValue::from_str(&shifted.header_value().unwrap()).is_ok());
    }

    #[test]
    fn chat_completion_shape() {
        let stats = GenerationStats {
            prompt_tokens: 20,
            generated_tokens: 5,
            prompt_cached_tokens: 12,
            dropped_messages: 1,
            kept_tokens: 7,
            ..GenerationStats::default()
        };
        let v = chat_completion(
            "chatcmpl-1",
            17,
            "m",
            "Hello",
            finish_reason(FinishReason::Length),
            Usage::from(&stats),
            ContextReport::from_stats(&stats),
        );
        assert_eq!(
            v,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 17, "model": "m",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "logprobs": null,
                    "finish_reason": "length",
                }],
                "usage": {
                    "prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
                    "prompt_tokens_details": {"cached_tokens": 12},
                },
                "locara": {
                    "prompt_cached_tokens": 12, "dropped_messages": 1,
                    "shifted_tokens": 0, "kept_tokens": 7,
                    "speculative": {"draft_tokens": 0, "draft_accepted_tokens": 0, "decode_steps": 0},
                    "timings": {"prefill_ms": 0.0, "decode_ms": 0.0},
                },
            })
        );
    }

    #[test]
    fn text_completion_shapes() {
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 1,
            cached_tokens: 1,
        };
        let report = ContextReport {
            shifted_tokens: 64,
            ..ContextReport::default()
        };
        let full = text_completion("cmpl-1", 5, "m", " a time", "stop", usage, report);
        assert_eq!(full["object"], "text_completion");
        assert_eq!(full["choices"][0]["text"], " a time");
        assert_eq!(full["choices"][0]["index"], 0);
        assert_eq!(full["choices"][0]["logprobs"], Value::Null);
        assert_eq!(full["choices"][0]["finish_reason"], "stop");
        assert_eq!(full["usage"]["total_tokens"], 3);
        assert_eq!(full["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        assert_eq!(full["locara"]["shifted_tokens"], 64);

        let chunk: Value = serde_json::from_str(&text_chunk("cmpl-1", 5, "m", " a", None)).unwrap();
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], " a");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        let last: Value =
            serde_json::from_str(&text_last_chunk("cmpl-1", 5, "m", "length", report)).unwrap();
        assert_eq!(last["choices"][0]["text"], "");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["locara"]["shifted_tokens"], 64);
        let usage: Value =
            serde_json::from_str(&text_usage_chunk("cmpl-1", 5, "m", usage, report)).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 2);
        assert_eq!(usage["locara"]["shifted_tokens"], 64);
    }

    fn lp(token: &str, logprob: f32) -> TokenProb {
        TokenProb {
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob,
        }
    }

    #[test]
    fn logprobs_shapes_are_openais() {
        let tokens = [
            TokenLogprobs {
                chosen: lp("Hé", -0.5),
                top: vec![lp("Hé", -0.5), lp("Hi", -1.0)],
            },
            TokenLogprobs {
                chosen: lp("!", -2.0),
                top: vec![lp(".", -0.25), lp("?", -1.5)],
            },
        ];
        assert_eq!(
            chat_logprobs(&tokens),
            json!({"content": [
                {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169], "top_logprobs": [
                    {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]},
                    {"token": "Hi", "logprob": -1.0, "bytes": [72, 105]},
                ]},
                {"token": "!", "logprob": -2.0, "bytes": [33], "top_logprobs": [
                    {"token": ".", "logprob": -0.25, "bytes": [46]},
                    {"token": "?", "logprob": -1.5, "bytes": [63]},
                ]},
            ], "refusal": null})
        );
        let mut offset = 3;
        assert_eq!(
            text_logprobs(&tokens, &mut offset),
            json!({
                "tokens": ["Hé", "!"],
                "token_logprobs": [-0.5, -2.0],
                "top_logprobs": [{"Hé": -0.5, "Hi": -1.0}, {".": -0.25, "?": -1.5, "!": -2.0}],
                "text_offset": [3, 5],
            })
        );
        assert_eq!(offset, 6);
        let mut chunk = chat_chunk_json("c", 1, "m", Delta::Content("Hé"), None);
        set_logprobs(&mut chunk, chat_logprobs(&tokens[..1]));
        assert_eq!(chunk["choices"][0]["logprobs"]["content"][0]["token"], "Hé");
    }

    #[test]
    fn models_list_shape() {
        let v = models_list(&[
            ("smollm2:135m".to_owned(), 1_700_000_000, "locara"),
            ("gemma3:270m".to_owned(), 1_700_000_001, "locara"),
        ]);
        assert_eq!(
            v,
            json!({"object": "list", "data": [
                {"id": "smollm2:135m", "object": "model", "created": 1_700_000_000u64, "owned_by": "locara"},
                {"id": "gemma3:270m", "object": "model", "created": 1_700_000_001u64, "owned_by": "locara"},
            ]})
        );
        assert_eq!(models_list(&[]), json!({"object": "list", "data": []}));
    }

    #[test]
    fn finish_reasons_stay_in_openais_set() {
        assert_eq!(finish_reason(FinishReason::Stop), "stop");
        assert_eq!(finish_reason(FinishReason::Length), "length");
        assert_eq!(finish_reason(FinishReason::Cancelled), "length");
    }
}
