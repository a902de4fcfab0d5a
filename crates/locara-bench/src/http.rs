//! HTTP for OpenAI-compatible servers on loopback, through `ureq`: a `GET`
//! that returns the body, and a streamed `POST /v1/chat/completions` whose
//! server-sent events are timed as they arrive.
//!
//! Every request has a connection of its own (`Connection: close`, no
//! pool). Both llama-server and Locara answer a stream with chunked
//! transfer encoding; ureq's body reader returns what has arrived of a
//! chunk without waiting for more, so each `data:` line is timed when its
//! last byte has been read.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most bytes of an error body quoted in a message.
const MAX_QUOTED_BYTES: usize = 600;

/// Where a server listens: `http://HOST:PORT`, no path, no TLS; and the
/// bearer token its requests carry, if it wants one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    host: String,
    port: u16,
    token: Option<String>,
}

impl FromStr for BaseUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<BaseUrl> {
        let rest = s
            .strip_prefix("http://")
            .with_context(|| format!("{s:?} is not an http:// URL (https is not supported)"))?;
        let authority = rest.trim_end_matches('/');
        ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "{s:?} has a path; give only http://HOST:PORT"
        );
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("{s:?} has no port"))?;
        let port = port
            .parse()
            .with_context(|| format!("{s:?}: {port:?} is not a port"))?;
        ensure!(!host.is_empty(), "{s:?} has no host");
        Ok(BaseUrl {
            host: host.to_string(),
            port,
            token: None,
        })
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl BaseUrl {
    /// The same server, with `Authorization: Bearer <token>` on every
    /// request.
    pub fn with_token(mut self, token: impl Into<String>) -> BaseUrl {
        self.token = Some(token.into());
        self
    }

    /// A `method path` request whose connection, and each read and write on
    /// it, `timeout` bounds.
    fn request(&self, method: &str, path: &str, timeout: Duration) -> ureq::Request {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            // Straight to the server on loopback, one connection a request.
            .try_proxy_from_env(false)
            .redirects(0)
            .max_idle_connections(0)
            .user_agent("locara-serve-bench")
            .build();
        let request = agent
            .request(method, &format!("{self}{path}"))
            .set("Connection", "close");
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }
}

/// A response of any status; a transport error is an error.
fn response(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response> {
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(e) => Err(e.into()),
    }
}

/// `GET path`: the status and the body as text. `timeout` bounds the
/// connection and each read.
pub fn get(base: &BaseUrl, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let response = response(base.request("GET", path, timeout).call())
        .with_context(|| format!("GET {base}{path}"))?;
    let status = response.status();
    let text = response
        .into_string()
        .with_context(|| format!("reading the body of GET {base}{path}"))?;
    Ok((status, text))
}

/// `POST path` with a JSON `body`: the status and the body as text.
/// `timeout` bounds the connection and each read.
pub fn post_json(
    base: &BaseUrl,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, String)> {
    let response = response(
        base.request("POST", path, timeout)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
    )
    .with_context(|| format!("POST {base}{path}"))?;
    let status = response.status();
    let text = response
        .into_string()
        .with_context(|| format!("reading the body of POST {base}{path}"))?;
    Ok((status, text))
}

/// Sends a streamed chat completion request (`body` is its JSON) and reads
/// the events to the end of the stream, timing every token. `timeout`
/// bounds the connection and every read (the wait for the first token
/// included). The clock starts when the request's last byte is written:
/// connecting is not part of the time to first token.
pub fn stream_chat(base: &BaseUrl, body: &[u8], timeout: Duration) -> Result<StreamResult> {
    stream_chat_until(base, body, timeout, &AtomicBool::new(false))
}

/// [`stream_chat`], but it stops reading (and closes the connection, which
/// cancels the generation) at the first event after `stop` is set, with the
/// tokens read so far.
pub fn stream_chat_until(
    base: &BaseUrl,
    body: &[u8],
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<StreamResult> {
    let path = "/v1/chat/completions";
    let what = || format!("POST {base}{path}");
    let sent = Cell::new(None);
    let request = base
        .request("POST", path, timeout)
        .set("Content-Type", "application/json")
        .set("Content-Length", &body.len().to_string());
    let response = response(request.send(TimedBody {
        rest: body,
        sent: &sent,
    }))
    .with_context(what)?;
    let sent = sent
        .get()
        .with_context(|| format!("{}: the request body was not read to its end", what()))?;
    let status = response.status();
    if status != 200 {
        let text = response.into_string().unwrap_or_default();
        bail!("{} answered {status}: {}", what(), quote(&text));
    }
    let mut reader = BufReader::new(response.into_reader());
    let mut events = StreamEvents::default();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("reading the event stream of {}", what()))?;
        if n == 0 {
            break;
        }
        if events.line(line.trim_end_matches(['\r', '\n']), Instant::now())? {
            break;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    events.finish(sent)
}

/// A request body that notes when it was read to its end. ureq copies it
/// to the connection, writing what it has read before it reads again, so
/// the end is read just after the request's last byte was written.
struct TimedBody<'a> {
    rest: &'a [u8],
    sent: &'a Cell<Option<Instant>>,
}

impl Read for TimedBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.rest.read(buf)?;
        if n == 0 && self.sent.get().is_none() {
            self.sent.set(Some(Instant::now()));
        }
        Ok(n)
    }
}

/// The events of one streamed chat completion, as they were read: the
/// parsing half of [`stream_chat`], apart so that tests can
/// feed it lines.
#[derive(Debug, Default)]
pub struct StreamEvents {
    /// When each chunk with text (`choices[0].delta.content`) arrived.
    tokens: Vec<Instant>,
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    cached_prompt_tokens: Option<u32>,
    server_prefill_ms: Option<f64>,
}

/// Token counts a server reports (OpenAI's `usage`; sent in a stream when
/// asked with `stream_options.include_usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl StreamEvents {
    /// Takes one line of the event stream, read at `at`; true at the end of
    /// the stream (`data: [DONE]`).
    pub fn line(&mut self, line: &str, at: Instant) -> Result<bool> {
        if let Some(error) = line.strip_prefix("error:") {
            bail!("the server sent an error event: {}", quote(error.trim()));
        }
        let Some(data) = line.strip_prefix("data:") else {
            // Blank separators, comments (`:`), `event:`, `id:`, `retry:`.
            return Ok(false);
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: Value = serde_json::from_str(data)
            .with_context(|| format!("an event is not JSON: {}", quote(data)))?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string());
            bail!(
                "the server sent an error in the stream: {}",
                quote(&message)
            );
        }
        if let Some(choice) = chunk.pointer("/choices/0") {
            if let Some(content) = choice.pointer("/delta/content").and_then(Value::as_str) {
                if !content.is_empty() {
                    self.tokens.push(at);
                    self.text.push_str(content);
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_string());
            }
        }
        // Prompt tokens the server took from its cache instead of
        // prefilling: llama-server says so in `timings.cache_n`, OpenAI's
        // API in `usage.prompt_tokens_details.cached_tokens`.
        let cached = chunk
            .pointer("/timings/cache_n")
            .or_else(|| chunk.pointer("/usage/prompt_tokens_details/cached_tokens"))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        if cached.is_some() {
            self.cached_prompt_tokens = cached;
        }
        // The server's own time for the prompt: llama-server's
        // `timings.prompt_ms`, Locara's `locara.timings.prefill_ms`.
        let prefill = chunk
            .pointer("/timings/prompt_ms")
            .or_else(|| chunk.pointer("/locara/timings/prefill_ms"))
            .and_then(Value::as_f64);
        if prefill.is_some() {
            self.server_prefill_ms = prefill;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let field = |name| {
                usage
                    .get(name)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            if let (Some(prompt_tokens), Some(completion_tokens)) =
                (field("prompt_tokens"), field("completion_tokens"))
            {
                self.usage = Some(Usage {
                    prompt_tokens,
                    completion_tokens,
                });
            }
        }
        Ok(false)
    }

    /// The stream's figures, for a request sent at `sent`.
    pub fn finish(self, sent: Instant) -> Result<StreamResult> {
        let (Some(&first), Some(&last)) = (self.tokens.first(), self.tokens.last()) else {
            bail!(
                "the stream ended without any text (finish reason {})",
                self.finish_reason.as_deref().unwrap_or("none")
            );
        };
        Ok(StreamResult {
            sent,
            first_token: first,
            last_token: last,
            tokens: u32::try_from(self.tokens.len()).unwrap_or(u32::MAX),
            usage: self.usage,
            finish_reason: self.finish_reason,
            text: self.text,
            cached_prompt_tokens: self.cached_prompt_tokens,
            server_prefill_ms: self.server_prefill_ms,
            token_times: self.tokens,
        })
    }
}

/// One streamed completion, timed.
#[derive(Debug, Clone)]
pub struct StreamResult {
    /// When the request's last byte was written.
    pub sent: Instant,
    /// When the first chunk with text arrived.
    pub first_token: Instant,
    /// When the last chunk with text arrived.
    pub last_token: Instant,
    /// Chunks with text: tokens, for servers that send one chunk per token
    /// (both do; `usage` checks it).
    pub tokens: u32,
    pub usage: Option<Usage>,
    /// `stop`, `length`, ... as the server said.
    pub finish_reason: Option<String>,
    /// The generated text.
    pub text: String,
    /// Prompt tokens the server reused from its cache rather than
    /// prefilled, where it says (llama-server does; see [`StreamEvents`]).
    pub cached_prompt_tokens: Option<u32>,
    /// The server's own time for the prompt, milliseconds, where it says
    /// (see [`StreamEvents`]): the time to first token less the way there
    /// and back.
    pub server_prefill_ms: Option<f64>,
    /// When each chunk with text arrived, in order (the first is
    /// `first_token`, the last `last_token`).
    pub token_times: Vec<Instant>,
}

impl StreamResult {
    /// Time to first token: request sent to first text, seconds.
    pub fn ttft(&self) -> f64 {
        (self.first_token - self.sent).as_secs_f64()
    }

    /// Decode speed, tokens per second, after the first token; `None` with
    /// fewer than two tokens.
    pub fn decode_tps(&self) -> Option<f64> {
        let span = (self.last_token - self.first_token).as_secs_f64();
        (self.tokens >= 2 && span > 0.0).then(|| f64::from(self.tokens - 1) / span)
    }
}

/// `text` for an error message: trimmed, at most [`MAX_QUOTED_BYTES`].
fn quote(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_QUOTED_BYTES {
        return text.to_string();
    }
    let mut end = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn base_urls_are_host_and_port_only() {
        let url: BaseUrl = "http://127.0.0.1:8080/".parse().unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8080");
        let with_token = url.clone().with_token("lca_admin_x");
        assert_eq!(
            with_token.to_string(),
            url.to_string(),
            "tokens are not shown"
        );
        let timeout = Duration::from_secs(1);
        assert_eq!(
            with_token
                .request("GET", "/v1/models", timeout)
                .header("Authorization"),
            Some("Bearer lca_admin_x")
        );
        assert_eq!(
            url.request("GET", "/", timeout).header("Authorization"),
            None
        );
        assert_eq!(
            "http://[::1]:9".parse::<BaseUrl>().unwrap().to_string(),
            "http://[::1]:9"
        );
        for bad in [
            "https://127.0.0.1:1",
            "127.0.0.1:1",
            "http://127.0.0.1",
            "http://127.0.0.1:1/v1",
            "http://:1",
            "http://h:99999",
        ] {
            assert!(bad.parse::<BaseUrl>().is_err(), "{bad}");
        }
    }

    /// A server on an ephemeral loopback port that reads one request and
    /// answers with `respond`. Returns its URL and a handle that yields the
    /// request it read.
    fn serve_once(
        respond: impl FnOnce(&mut TcpStream) + Send + 'static,
    ) -> (BaseUrl, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            respond(&mut stream);
            request
        });
        (format!("http://127.0.0.1:{port}").parse().unwrap(), server)
    }

    #[test]
    fn tokens_are_timed_as_they_arrive_not_at_the_end_of_the_response() {
        let pause = Duration::from_millis(500);
        let (base, server) = serve_once(move |stream| {
            let chunks = [
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
            ];
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            for chunk in chunks {
                write!(stream, "{:x}\r\n{chunk}\r\n", chunk.len()).unwrap();
                stream.flush().unwrap();
                std::thread::sleep(pause);
            }
            stream.write_all(b"0\r\n\r\n").unwrap();
        });
        let result = stream_chat(
            &base.with_token("lca_x"),
            br#"{"stream":true}"#,
            Duration::from_secs(10),
        )
        .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nAuthorization: Bearer lca_x\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{\"stream\":true}"), "{request}");
        assert_eq!(result.text, "ab");
        assert_eq!(result.tokens, 2);
        assert!(result.sent <= result.first_token);
        // A client that read the whole response first would time both
        // tokens at once; half the server's pause leaves room for a slow
        // machine.
        let gap = result.last_token - result.first_token;
        assert!(gap >= pause / 2, "tokens {gap:?} apart");
    }

    #[test]
    fn an_error_status_comes_back_with_its_body() {
        let (base, server) = serve_once(|stream| {
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\nloading")
                .unwrap();
        });
        let (status, body) = get(&base, "/health", Duration::from_secs(10)).unwrap();
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /health HTTP/1.1\r\n"));
        assert_eq!((status, body.as_str()), (503, "loading"));
    }

    /// Events as llama-server 0.3.36's tree sends them (abridged): a role
    /// chunk without text, one chunk per token, the finish reason, then the
    /// usage in a chunk with no choices, with the timings (`cache_n`: prompt
    /// tokens reused from its cache).
    const LLAMA_SERVER_STREAM: &[&str] = &[
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"1"}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":","}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":""}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" 2"}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":31,"total_tokens":34},"object":"chat.completion.chunk","timings":{"cache_n":20,"prompt_n":11,"prompt_ms":12.5}}"#,
        "",
        "data: [DONE]",
    ];

    #[test]
    fn stream_events_count_text_chunks_and_read_usage() {
        let start = Instant::now();
        let mut events = StreamEvents::default();
        let mut done = false;
        for (i, line) in LLAMA_SERVER_STREAM.iter().enumerate() {
            assert!(!done, "nothing after [DONE]");
            done = events
                .line(line, start + Duration::from_millis(10 * i as u64))
                .unwrap();
        }
        assert!(done);
        let result = events.finish(start).unwrap();
        assert_eq!(
            result.tokens, 3,
            "the empty content and the role chunk are not tokens"
        );
        assert_eq!(result.text, "1, 2");
        assert_eq!(result.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            result.usage,
            Some(Usage {
                prompt_tokens: 31,
                completion_tokens: 3
            })
        );
        assert_eq!(result.cached_prompt_tokens, Some(20));
        assert_eq!(result.server_prefill_ms, Some(12.5));
        // Tokens at lines 2, 4 and 8: 20 ms to the first, 2 more in 60 ms.
        assert!((result.ttft() - 0.020).abs() < 1e-9);
        assert!((result.decode_tps().unwrap() - 2.0 / 0.060).abs() < 1e-6);
    }

    #[test]
    fn cached_prompt_tokens_in_openai_usage_are_read() {
        let now = Instant::now();
        let mut events = StreamEvents::default();
        events
            .line(r#"data: {"choices":[{"delta":{"content":"x"}}]}"#, now)
            .unwrap();
        events
            .line(
                r#"data: {"choices":[],"usage":{"prompt_tokens":900,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":640}}}"#,
                now,
            )
            .unwrap();
        let result = events.finish(now).unwrap();
        assert_eq!(result.cached_prompt_tokens, Some(640));
        assert_eq!(result.usage.unwrap().prompt_tokens, 900);
    }

    #[test]
    fn errors_in_a_stream_are_errors() {
        let now = Instant::now();
        let err = StreamEvents::default()
            .line(r#"data: {"error":{"code":500,"message":"boom"}}"#, now)
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(StreamEvents::default()
            .line(r#"error: {"message":"x"}"#, now)
            .is_err());
        assert!(StreamEvents::default()
            .line("data: {not json", now)
            .is_err());
    }

    #[test]
    fn a_stream_without_text_has_no_figures() {
        let now = Instant::now();
        let mut events = StreamEvents::default();
        events
            .line(
                r#"data: {"choices":[{"finish_reason":"stop","delta":{}}]}"#,
                now,
            )
            .unwrap();
        let err = events.finish(now).unwrap_err();
        assert!(err.to_string().contains("finish reason stop"), "{err}");
    }

    #[test]
    fn one_token_has_no_decode_speed() {
        let now = Instant::now();
        let mut events = StreamEvents::default();
        events
            .line(r#"data: {"choices":[{"delta":{"content":"x"}}]}"#, now)
            .unwrap();
        assert_eq!(events.finish(now).unwrap().decode_tps(), None);
    }

    #[test]
    fn quotes_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_QUOTED_BYTES);
        let q = quote(&long);
        assert!(q.ends_with('…'));
        assert!(q.len() <= MAX_QUOTED_BYTES + '…'.len_utf8());
    }
}
