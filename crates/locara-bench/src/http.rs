//! Just enough HTTP/1.1 for OpenAI-compatible servers on loopback: a `GET`
//! that returns the body, and a streamed `POST /v1/chat/completions` whose
//! server-sent events are timed as they arrive.
//!
//! Plain `std::net::TcpStream`, one connection per request
//! (`Connection: close`), so that nothing between the socket and the clock
//! buffers a token: each `data:` line is timed when its last byte has been
//! read. Both llama-server and Locara answer a stream with chunked transfer
//! encoding, which [`Chunked`] undoes.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Longest response head (status line and headers) read, bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

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

    fn connect(&self, timeout: Duration) -> Result<TcpStream> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let mut last = None;
        for addr in (host, self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {self}"))?
        {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e).with_context(|| format!("connecting to {self}")),
            None => bail!("{self} resolves to no address"),
        }
    }

    fn head(&self, method: &str, path: &str, body: Option<(&str, usize)>) -> String {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: locara-serve-bench\r\n",
            self.host, self.port
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some((content_type, len)) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {len}\r\n"
            ));
        }
        head.push_str("\r\n");
        head
    }
}

/// `GET path`: the status and the body as text. `timeout` bounds the
/// connection and each read.
pub fn get(base: &BaseUrl, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut stream = base.connect(timeout)?;
    stream.write_all(base.head("GET", path, None).as_bytes())?;
    let (status, mut body) = read_response(stream)?;
    let mut text = String::new();
    body.read_to_string(&mut text)
        .with_context(|| format!("reading the body of GET {base}{path}"))?;
    Ok((status, text))
}

/// A connection opened for one streamed request, not yet sent: opening it
/// is not part of the time to first token.
pub struct Connection {
    stream: TcpStream,
    base: BaseUrl,
}

impl Connection {
    /// Connects to `base`; `timeout` bounds the connection and, later,
    /// every read (the wait for the first token included).
    pub fn open(base: &BaseUrl, timeout: Duration) -> Result<Connection> {
        Ok(Connection {
            stream: base.connect(timeout)?,
            base: base.clone(),
        })
    }

    /// Sends a streamed chat completion request (`body` is its JSON) and
    /// reads the events to the end of the stream, timing every token.
    pub fn stream_chat(mut self, body: &[u8]) -> Result<StreamResult> {
        let path = "/v1/chat/completions";
        let mut request = self
            .base
            .head("POST", path, Some(("application/json", body.len())))
            .into_bytes();
        request.extend_from_slice(body);
        // One write: the clock starts when the whole request is out.
        self.stream.write_all(&request)?;
        let sent = Instant::now();
        let what = || format!("POST {}{path}", self.base);
        let (status, body) = read_response(self.stream.try_clone()?).with_context(what)?;
        let mut reader = BufReader::new(body);
        if status != 200 {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            bail!("{} answered {status}: {}", what(), quote(&text));
        }
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
        }
        events.finish(sent)
    }
}

/// Reads the status line and headers; returns the status and the body,
/// its framing undone.
fn read_response(stream: TcpStream) -> Result<(u16, Body)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the status line")?;
    let status = parse_status(&line)?;
    let mut chunked = false;
    let mut length = None;
    let mut head_bytes = line.len();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).context("reading the headers")?;
        head_bytes += n;
        ensure!(n > 0, "the connection closed inside the response headers");
        ensure!(
            head_bytes <= MAX_HEAD_BYTES,
            "the response headers exceed {MAX_HEAD_BYTES} bytes"
        );
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<u64>()
                        .with_context(|| format!("Content-Length {value:?}"))?,
                );
            }
        }
    }
    let body = if chunked {
        Body::Chunked(Chunked::new(reader))
    } else if let Some(length) = length {
        Body::Length(reader.take(length))
    } else {
        Body::UntilClose(reader)
    };
    Ok((status, body))
}

fn parse_status(line: &str) -> Result<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {}",
        quote(line)
    );
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status code in {}", quote(line)))
}

/// A response body with its framing undone.
enum Body {
    Chunked(Chunked<BufReader<TcpStream>>),
    Length(io::Take<BufReader<TcpStream>>),
    UntilClose(BufReader<TcpStream>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Chunked(r) => r.read(buf),
            Body::Length(r) => r.read(buf),
            Body::UntilClose(r) => r.read(buf),
        }
    }
}

/// Undoes chunked transfer encoding (RFC 9112, 7.1). A read returns what
/// has arrived of the current chunk; it never waits for more than that.
pub struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    pub fn new(inner: R) -> Chunked<R> {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }

    fn next_size(&mut self) -> io::Result<u64> {
        let mut line = String::new();
        if self.inner.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunked body",
            ));
        }
        let size = line.trim_end_matches(['\r', '\n']);
        // Chunk extensions (`;name=value`) are allowed and meaningless here.
        let size = size.split(';').next().unwrap_or_default().trim();
        u64::from_str_radix(size, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line {line:?}"),
            )
        })
    }

    fn skip_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        self.inner.read_line(&mut line)?;
        Ok(line)
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.left = self.next_size()?;
            if self.left == 0 {
                // The last chunk: trailer fields until an empty line.
                while !self.skip_line()?.trim_end_matches(['\r', '\n']).is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunk",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            // The CRLF after the chunk's data.
            self.skip_line()?;
        }
        Ok(n)
    }
}

/// The events of one streamed chat completion, as they were read: the
/// parsing half of [`Connection::stream_chat`], apart so that tests can
/// feed it lines.
#[derive(Debug, Default)]
pub struct StreamEvents {
    /// When each chunk with text (`choices[0].delta.content`) arrived.
    tokens: Vec<Instant>,
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    cached_prompt_tokens: Option<u32>,
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
        assert!(with_token
            .head("GET", "/v1/models", None)
            .contains("\r\nAuthorization: Bearer lca_admin_x\r\n"));
        assert!(!url.head("GET", "/", None).contains("Authorization"));
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

    #[test]
    fn chunked_bodies_are_joined() {
        let wire = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nAFTER";
        let mut body = Chunked::new(wire.as_bytes());
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello, world");
        let mut more = String::new();
        body.inner.read_to_string(&mut more).unwrap();
        assert_eq!(more, "AFTER", "reads stop at the end of the body");
    }

    #[test]
    fn a_cut_chunked_body_is_an_error() {
        let mut text = String::new();
        let err = Chunked::new("5\r\nhel".as_bytes())
            .read_to_string(&mut text)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(Chunked::new("zz\r\n".as_bytes())
            .read_to_string(&mut text)
            .is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n").unwrap(), 200);
        assert_eq!(parse_status("HTTP/1.0 503\r\n").unwrap(), 503);
        assert!(parse_status("SSH-2.0-OpenSSH\r\n").is_err());
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
        r#"data: {"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":31,"total_tokens":34},"object":"chat.completion.chunk","timings":{"cache_n":20,"prompt_n":11}}"#,
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
