//! The worker protocol: how the daemon (or `locara run`) talks to an engine
//! worker over the worker's stdin and stdout.
//!
//! # Framing
//!
//! Each message is one frame: a 4-byte little-endian length `n`, then `n`
//! bytes of UTF-8 JSON. A frame longer than [`MAX_FRAME_BYTES`] is a protocol
//! error (so a corrupt length can never make either side allocate gigabytes).
//! Requests go parent → worker on the worker's stdin; events go worker →
//! parent on the worker's stdout. The worker's stderr is for logs only.
//!
//! # Versioning
//!
//! The first frame the worker writes is [`Event::Ready`] with
//! [`PROTOCOL_VERSION`]. The parent refuses a worker whose version differs
//! (a stale binary on `PATH`, say) before sending anything. A change that an
//! older peer would misread bumps the version.
//!
//! # Lifetime
//!
//! The worker exits by itself as soon as its stdin reaches end of file: the
//! kernel closes the parent's end of the pipe when the parent exits for any
//! reason, SIGKILL included, so a worker never outlives its parent.
//!
//! # Conversation
//!
//! ```text
//! worker: Ready{protocol, engine}
//! parent: Load{path, context, kv_type, ...}      worker: Loaded{...} | Error
//! parent: Generate{id, prompt, sampling, ...}    worker: Token{id, text}* then Done{id, finish, stats} | Error{id}
//! parent: Cancel{id}                             (the generation ends before its next token: Done{finish: cancelled})
//! parent: Stats                                  worker: Stats{...}
//! parent: Exit (or closes stdin)                 worker exits; unloading a model ends its worker
//! ```
//! Several generations may run at once (up to `Load.parallel`); their events
//! interleave and carry the request's `id`.

use locara_core::KvType;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Version of this protocol; see the module docs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts, in bytes. A prompt of the longest
/// context we load (128k tokens) is well under 4 MiB of text; 64 MiB leaves
/// room for chat histories while bounding what a corrupt length can cost.
pub const MAX_FRAME_BYTES: u32 = 64 << 20;

/// Parent → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Load the model. Sent once; a worker holds one model for its lifetime.
    Load(LoadRequest),
    /// Start a generation.
    Generate(GenerateRequest),
    /// Stop generation `id` before its next token.
    Cancel { id: u64 },
    /// Ask for [`Event::Stats`].
    Stats,
    /// Unload and exit.
    Exit,
}

/// How to load a model. There is deliberately no field for mmap or mlock:
/// weights are always memory-mapped and never locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The GGUF file. It is validated by `locara-gguf` before llama.cpp sees it.
    pub path: PathBuf,
    /// Context per sequence, in tokens; `None` = the default (8192), clamped
    /// to the model's trained context either way.
    pub context: Option<u32>,
    /// Element type of the K and V caches.
    pub kv_type: KvType,
    /// Sequences that can generate at once (llama.cpp's `n_seq_max`); each
    /// gets the full context.
    pub parallel: u32,
    /// CPU threads for decode and prefill: the machine's performance cores.
    pub threads: u32,
    /// Layers to offload to the GPU; `None` = all of them where a GPU exists.
    pub gpu_layers: Option<u32>,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prompt {
    /// Chat messages, rendered with the model's own chat template.
    Chat { messages: Vec<ChatMessage> },
    /// Text given to the model as it is.
    Raw { text: String },
}

/// Sampling settings. With `temperature == 0` decoding is greedy and the
/// other settings are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    pub temperature: f32,
    /// Nucleus sampling mass, (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Drop tokens less likely than `min_p` × the top token's; 0 disables it.
    pub min_p: f32,
    /// Penalty on tokens seen in the last `repeat_last_n` tokens; 1 disables it.
    pub repeat_penalty: f32,
    /// Window of the repeat penalty, in tokens.
    pub repeat_last_n: u32,
    /// Seed of the sampler; `None` = a random one.
    pub seed: Option<u32>,
}

impl Default for Sampling {
    /// llama.cpp's own defaults (`common_params_sampling`), so answers match
    /// what users of llama.cpp tools expect.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl Sampling {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A generation to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Chosen by the parent; every event of this generation carries it.
    pub id: u64,
    pub prompt: Prompt,
    #[serde(default)]
    pub sampling: Sampling,
    /// Most tokens to generate; `None` = until the context is full.
    pub max_tokens: Option<u32>,
    /// Generation ends before any of these strings would be emitted.
    #[serde(default)]
    pub stop: Vec<String>,
}

/// Worker → parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// First frame of every worker.
    Ready {
        protocol: u32,
        /// The llama.cpp build the worker runs (for `--verbose` and bug reports).
        engine: String,
    },
    Loaded(LoadedInfo),
    /// Text of one or more decoded tokens, sent as soon as it is known (text
    /// that might begin a stop string is held back until it is decided).
    Token {
        id: u64,
        text: String,
    },
    Done {
        id: u64,
        finish: FinishReason,
        stats: GenerationStats,
    },
    Stats(WorkerStats),
    /// Something failed. `id` names the generation it belongs to; `None`
    /// means the request was not about one (a failed load, say).
    Error {
        id: Option<u64>,
        kind: ErrorKind,
        message: String,
    },
}

/// What the worker loaded, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedInfo {
    /// Context per sequence in tokens, after clamping.
    pub context: u32,
    /// Context the model was trained on, in tokens.
    pub trained_context: u32,
    pub parallel: u32,
    pub kv_type: KvType,
    pub flash_attention: bool,
    pub threads: u32,
    /// Layers offloaded to a GPU (0 on a CPU-only build).
    pub gpu_layers: u32,
    /// Model shape as llama.cpp sees it.
    pub layers: u32,
    pub embedding: u32,
    pub heads: u32,
    pub kv_heads: u32,
    /// Bytes of tensor data in the file (the mapped weights).
    pub weights_bytes: u64,
    pub parameters: u64,
    /// Whether the model ships a chat template.
    pub has_chat_template: bool,
    /// The template chat prompts are rendered with: the model's own, or a
    /// llama.cpp built-in when the model has none.
    pub chat_template: String,
    /// Time from the Load request to a ready context, in milliseconds.
    pub load_ms: f64,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// Cancelled by the parent.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Counts and times of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// From the start of prompt processing to the first token, in ms.
    pub prefill_ms: f64,
    /// From the first token to the last, in ms.
    pub decode_ms: f64,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tps(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_ms)
    }

    /// Generated tokens per second after the first (which prefill produced).
    pub fn decode_tps(&self) -> f64 {
        per_second(self.generated_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn per_second(n: u32, ms: f64) -> f64 {
    if ms > 0.0 {
        f64::from(n) * 1000.0 / ms
    } else {
        0.0
    }
}

/// The worker's state, answered to [`Request::Stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub loaded: bool,
    /// Generations running now.
    pub active: u32,
    /// Generations waiting for a free sequence.
    pub queued: u32,
    /// Tokens generated since the model was loaded.
    pub generated_total: u64,
}

/// Stable machine names of worker errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file failed GGUF validation; llama.cpp never saw it.
    InvalidModel,
    /// llama.cpp could not load the model or create its context.
    LoadFailed,
    /// A request came in a state that cannot take it (Generate before Load...).
    BadRequest,
    /// The model has no chat template, or llama.cpp cannot render it.
    ChatTemplate,
    /// The prompt does not fit in the context.
    PromptTooLong,
    /// llama.cpp failed to decode a batch.
    DecodeFailed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidModel => "invalid_model",
            ErrorKind::LoadFailed => "load_failed",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ChatTemplate => "chat_template",
            ErrorKind::PromptTooLong => "prompt_too_long",
            ErrorKind::DecodeFailed => "decode_failed",
        }
    }
}

/// A framing failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the channel")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge { len: u32 },
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("channel I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// Writes one frame and flushes it (tokens are streamed, never buffered).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge {
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
        })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. End of file before a frame starts is [`FrameError::Closed`].
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request::Generate(GenerateRequest {
            id: 7,
            prompt: Prompt::Chat {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "hi ✓".into(),
                }],
            },
            sampling: Sampling::greedy(),
            max_tokens: Some(3),
            stop: vec!["\n".into()],
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        write_frame(&mut buf, &Request::Exit).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, Request>(&mut r).unwrap(), req);
        assert_eq!(read_frame::<_, Request>(&mut r).unwrap(), Request::Exit);
        assert!(matches!(
            read_frame::<_, Request>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let buf = (MAX_FRAME_BYTES + 1).to_le_bytes();
        let err = read_frame::<_, Request>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_BYTES + 1));
    }

    #[test]
    fn truncated_frame_reads_as_closed() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Stats).unwrap();
        buf.pop();
        assert!(matches!(
            read_frame::<_, Request>(&mut &buf[..]),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Cancel { id: 3 }).unwrap();
        assert_eq!(&buf[4..], br#"{"type":"cancel","id":3}"#);
    }
}
