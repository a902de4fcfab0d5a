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
//! parent: Load{path, context, kv_type, pool, pool_max, ...}   worker: Loaded{...} | Error
//! parent: Generate{id, prompt, sampling, n_keep, truncate, ...}
//!                                 worker: (Logprobs{id, tokens}? Token{id, text})* then Done{id, finish, stats} | Error{id}
//! parent: Embed{id, inputs}       worker: Embeddings{id, vectors, prompt_tokens} | Error{id}
//! parent: Cancel{id}              (the generation ends before its next token: Done{finish: cancelled})
//! parent: Stats                   worker: Stats{...}
//! parent: Sequences               worker: Sequences{...}   (what each sequence holds; for tests and debugging)
//! parent: Resize{cells}           worker: Resized{...}     (at any time; see "The K/V pool")
//! worker: PoolFull{...}           parent: Resize{cells} | DenyGrowth   (exactly one answer each)
//! parent: Exit (or closes stdin)  worker writes its disk tier (if any), exits; unloading a model ends its worker
//! ```
//! Several generations may run at once (up to `Load.parallel`); their events
//! interleave and carry the request's `id`.
//!
//! # The K/V pool
//!
//! All sequences of a worker share one pool of K/V cells (llama.cpp's
//! unified K/V cache; a cell holds one token of one sequence). `context`
//! is the most one sequence may hold, not a reservation. The pool starts at
//! `Load.pool` cells and may grow to `Load.pool_max`; pool sizes are
//! multiples of [`crate::pool::CELL_STEP`] (llama.cpp's own rounding), and
//! every size the worker reports is the real one.
//!
//! **Cached sequences.** When a generation ends (any way but an error) its
//! sequence keeps its tokens (prompt plus the generated tokens that were
//! decoded) and their K/V. A new request goes to the free sequence whose
//! cache it continues (longest common token prefix), removes the cells
//! after the common prefix and prefills only the rest
//! (`GenerationStats.prompt_cached_tokens` says how many it reused); see
//! [`crate::pool::choose_sequence`]. Cached sequences are idle memory: the
//! worker drops them, least recently used first, whenever live sequences
//! need their cells.
//!
//! **Tiers.** With `Load.ram_cache_bytes` a cached sequence that leaves the
//! pool is kept as saved state in the worker's memory (the RAM tier) and
//! comes back when a request continues it. With `Load.disk_cache_dir`,
//! `disk_cache_bytes` and `model_sha256` the worker also writes every
//! cached conversation (pool and RAM tier) to a file of that directory when
//! it exits, most recently used first, and at load indexes the files there
//! (see [`crate::disk`]). A new conversation whose prompt continues a
//! stored one further than the pool and the RAM tier can is restored from
//! its file. If the file holds more tokens than the pool can free, the
//! worker first sends [`Event::PoolFull`] (`waiting: 1`) and the request
//! waits for the answer: `Resize` restores it, `DenyGrowth` prefills it. A
//! file that does not match the worker or is damaged is deleted and
//! reported as `Error{id: None, kind: disk_cache}`.
//!
//! **Growth is the parent's.** When the live sequences need more cells than
//! the pool has even after every cached sequence is dropped, the worker
//! sends [`Event::PoolFull`] once and holds the generations that need room
//! (others go on) until the parent answers with exactly one of:
//!
//! * `Resize{cells}`: the parent grants a pool of `cells` (normally
//!   `suggested_cells`, after the governor approved its bytes). The worker
//!   moves every live and cached sequence into a new context of that size,
//!   answers `Resized`, and the held generations go on, with the same
//!   tokens as if the pool had been that large from the start.
//! * `DenyGrowth`: each held generation makes room in its own sequence by a
//!   context shift (keep its first `n_keep` tokens, discard the oldest half
//!   of the rest; reported in `GenerationStats.shifted_tokens`) when its
//!   request allows truncation and the model can shift; otherwise it ends
//!   with `Error{kind: pool_exhausted}` naming the numbers.
//!
//! A worker whose pool is already `pool_max` never sends `PoolFull`; it acts
//! as if growth were denied. A parent that leaves `Load.pool` unset gets
//! `pool_max` from the start and never sees `PoolFull`; a parent that sets
//! it must answer every `PoolFull`, or the held generations wait forever.
//!
//! **Resize at any time.** `Resize{cells}` outside a `PoolFull` (shrinking
//! an idle pool, say) makes the pool `cells`, but never smaller than the
//! live sequences' cells plus one each, nor larger than `pool_max`. Cached
//! sequences are kept most recently used first while they fit; the others
//! are dropped. The answer is always [`Event::Resized`] (with zero moves if
//! the size did not change). A `Resize` sent while a `PoolFull` is open
//! answers it too. If llama.cpp cannot make the new pool, an
//! `Error{id: None, kind: resize_failed}` comes first, the old size is made
//! again with every sequence in it, generations waiting for room are
//! treated as if growth were refused, and `Resized` reports the old size.
//! A resize frees the old pool before it allocates the new one: the peak is
//! the new pool plus the moved sequences' state (`Resized.state_bytes`).
//!
//! **Context shift** also happens when a sequence reaches its own
//! `context` during generation (unless `truncate` is false, or the model
//! cannot shift: then it ends with `finish: length`). A chat prompt longer
//! than the context loses its oldest non-system messages first
//! (`GenerationStats.dropped_messages`) unless `truncate` is false (then:
//! `Error{kind: prompt_too_long}`).

use locara_core::KvType;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Version of this protocol; see the module docs.
pub const PROTOCOL_VERSION: u32 = 3;

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
    /// Compute embeddings of `inputs` (see [`crate::embed`]); answered by
    /// [`Event::Embeddings`] or an [`Event::Error`] with the request's id.
    Embed(EmbedRequest),
    /// Stop generation `id` before its next token.
    Cancel { id: u64 },
    /// Ask for [`Event::Stats`].
    Stats,
    /// Make the K/V pool `cells` cells: the answer to a [`Event::PoolFull`]
    /// that grants growth, or a resize of the parent's own (shrinking an
    /// idle pool). Answered by [`Event::Resized`]; see the module docs.
    /// `cells: 0` frees an idle pool entirely (memory pressure): the model
    /// stays mapped, its cached conversations go, and the next request
    /// makes the pool again at the size it had (another `Resized`, from 0).
    /// A pool with a generation running stays as it is.
    Resize { cells: u32 },
    /// The answer to a [`Event::PoolFull`] that refuses growth: the held
    /// generations shift their context or end with `pool_exhausted`.
    DenyGrowth,
    /// Ask for [`Event::Sequences`].
    Sequences,
    /// Forget the conversations kept in the RAM tier (memory pressure) and
    /// give their memory back to the OS. Answered by [`Event::Stats`].
    DropTier {
        /// Write them to the disk tier first (warn); critical drops them
        /// without the writing.
        spill: bool,
    },
    /// Compute with `threads` threads per decode, at the CPU priority of
    /// `class`, from the next decode on (the daemon's share of the cores
    /// for this worker: `locara_core::threads`); 0 threads pauses it: its
    /// generations wait (cancels, stats and the rest are still answered)
    /// until a share with threads comes. Nothing answers it;
    /// [`WorkerStats::threads`] and [`WorkerStats::thread_class`] show it.
    SetThreads {
        threads: u32,
        class: locara_core::threads::ThreadClass,
    },
    /// Unload and exit.
    Exit,
}

/// The starting pool the parent is advised to ask for, in cells (the
/// daemon's policy, in `locara_core`, says why 2048).
pub use locara_core::STARTING_POOL_CELLS;

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
    /// Sequences that can generate at once (llama.cpp's `n_seq_max`). Each
    /// may hold up to `context` tokens; all of them share the K/V pool, and
    /// finished ones stay cached in it for prefix reuse.
    pub parallel: u32,
    /// CPU threads for decode and prefill: the machine's performance cores.
    pub threads: u32,
    /// Layers to offload to the GPU; `None` = all of them where a GPU exists.
    pub gpu_layers: Option<u32>,
    /// Starting size of the K/V pool that all sequences share, in cells
    /// (one cell holds one token of one sequence). `None` = `pool_max`: the
    /// whole reservation up front, so the worker never sends
    /// [`Event::PoolFull`] to a parent that may not answer it. A parent
    /// that sets it (normally to [`STARTING_POOL_CELLS`]) must answer every
    /// `PoolFull`. Rounded up to [`crate::pool::CELL_STEP`], capped at
    /// `pool_max`.
    #[serde(default)]
    pub pool: Option<u32>,
    /// Most cells the pool may grow to; `None` = `parallel` × `context`
    /// (every sequence at its full context at once, what a fixed
    /// reservation would hold). A cap below `context` lowers `context` to
    /// it.
    #[serde(default)]
    pub pool_max: Option<u32>,
    /// Bytes of finished conversations the worker may keep outside the
    /// pool, as saved sequence state in its own memory (the RAM tier):
    /// cached sequences move there instead of being dropped when the pool
    /// needs their cells or a new conversation starts, and come back when a
    /// request continues one. 0 keeps none.
    #[serde(default)]
    pub ram_cache_bytes: u64,
    /// The directory of this model's disk tier (the daemon's
    /// `<home>/kv-cache/<model sha256>/<kv_type>/`): the worker writes its cached
    /// conversations there when it exits and restores them from there when
    /// a request continues one (see [`crate::disk`]). `None` keeps none.
    #[serde(default)]
    pub disk_cache_dir: Option<PathBuf>,
    /// Most bytes of files in `disk_cache_dir`; 0 keeps none.
    #[serde(default)]
    pub disk_cache_bytes: u64,
    /// sha256 of the model file, lowercase hex, as the store recorded it
    /// (the worker never hashes a model): a disk-tier file is used only by
    /// the model it was saved from. `None` turns the disk tier off.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// A second GGUF file, a smaller model with the same vocabulary, that
    /// proposes the tokens speculative decoding checks (an app's
    /// `[speculative]` pair). Validated like `path`, and its vocabulary
    /// checked against the model's, before llama.cpp sees it. It has one
    /// sequence of `context` cells, with the model's K/V type and threads
    /// (see [`crate::drafter`]).
    #[serde(default)]
    pub draft: Option<PathBuf>,
}

impl LoadRequest {
    /// A load of `path` with one sequence, the default context and K/V
    /// type, every layer on the GPU where there is one, the whole pool up
    /// front and no cache tiers; callers change what they need with
    /// `LoadRequest { field, ..LoadRequest::new(path, threads) }`.
    pub fn new(path: PathBuf, threads: u32) -> LoadRequest {
        LoadRequest {
            path,
            context: None,
            kv_type: KvType::default(),
            parallel: 1,
            threads,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
            disk_cache_dir: None,
            disk_cache_bytes: 0,
            model_sha256: None,
            draft: None,
        }
    }
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

/// Sampling settings. With `temperature == 0` decoding is greedy and
/// `top_p`, `top_k`, `min_p` and `seed` are ignored; the penalties, the
/// logit bias and the grammar apply either way.
///
/// The worker's sampler chain, in order: `logit_bias`, the repeat penalty,
/// the frequency and presence penalties, the grammar, then top-k, top-p,
/// min-p, temperature and a seeded draw (or the most likely token).
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
    /// OpenAI's `frequency_penalty`: subtracted from a token's logit once
    /// for every time the generation has produced it so far (the prompt
    /// does not count, as with vLLM); 0 disables it.
    pub frequency_penalty: f32,
    /// OpenAI's `presence_penalty`: subtracted from the logit of every
    /// token the generation has produced so far; 0 disables it.
    pub presence_penalty: f32,
    /// Added to these tokens' logits before anything else (OpenAI's
    /// `logit_bias`). A token outside the model's vocabulary is an
    /// `Error{kind: invalid_sampling}`.
    pub logit_bias: Vec<LogitBias>,
    /// A GBNF grammar (llama.cpp's format, start rule `root`) every answer
    /// must match: only tokens that keep the output inside it are drawn,
    /// and an end-of-generation token only where the grammar is complete.
    /// Made from a JSON Schema by [`crate::grammar`]. One llama.cpp cannot
    /// parse is an `Error{kind: invalid_sampling}`.
    pub grammar: Option<String>,
    /// Report the log-probability of each drawn token, with this many of
    /// the most likely alternatives (0 to [`MAX_TOP_LOGPROBS`]), as
    /// [`Event::Logprobs`]; `None` reports nothing. Not a sampling setting,
    /// but it reads the same logits at the same moment.
    pub logprobs: Option<u32>,
    /// Seed of the sampler; `None` = a random one.
    pub seed: Option<u32>,
}

/// Most alternatives [`Sampling::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A bias added to one token's logit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogitBias {
    /// The token id in the model's vocabulary.
    pub token: u32,
    /// Added to its logit; OpenAI's range is -100 to 100 (-100 bans it in
    /// practice, 100 all but forces it).
    pub bias: f32,
}

/// One token as [`Event::Logprobs`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    /// Its text (invalid UTF-8, a piece of a character, is replaced).
    pub token: String,
    /// Its bytes, exactly.
    pub bytes: Vec<u8>,
    /// Natural log of its probability under the model: the softmax of the
    /// raw logits, before any penalty, bias, grammar or temperature (what
    /// OpenAI reports and vLLM reports by default).
    pub logprob: f32,
}

/// A drawn token, and the most likely tokens at its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub chosen: TokenProb,
    /// Most likely first, at most `Sampling.logprobs` of them.
    pub top: Vec<TokenProb>,
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
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            grammar: None,
            logprobs: None,
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
    /// Tokens at the start of the sequence that a context shift keeps, the
    /// BOS token included. `None` = the leading system message(s) of a chat
    /// prompt as the chat template renders them; the BOS token alone for a
    /// raw prompt or a chat without a system message.
    #[serde(default)]
    pub n_keep: Option<u32>,
    /// Whether the context may be shortened to go on: a too-long chat
    /// prompt loses its oldest non-system messages, a generation that fills
    /// its sequence's context (or finds the pool full and growth refused)
    /// shifts. `false` = today's strictness: `prompt_too_long`, `finish:
    /// length` at the context, `pool_exhausted` when growth is refused.
    #[serde(default = "yes")]
    pub truncate: bool,
    /// Whether the prompt may start from a cached sequence's K/V (prefix
    /// reuse; llama-server's option of the same name). `false` prefills the
    /// whole prompt, as a benchmark of prefill needs.
    #[serde(default = "yes")]
    pub cache_prompt: bool,
    /// Whether the worker may draft tokens for this generation and verify
    /// them in one decode (speculative decoding; see [`crate::draft`]). It
    /// does so only where the answer stays exactly what decoding one token
    /// at a time gives: greedy sampling (temperature 0) with no logit bias,
    /// penalties or grammar. `false` decodes one token per step, as under
    /// low power, where the wider decodes cost more energy than they save.
    #[serde(default = "yes")]
    pub speculative: bool,
}

fn yes() -> bool {
    true
}

/// Embeddings to compute: one vector per input, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Chosen by the parent, from the same counter as generations; the
    /// answer carries it.
    pub id: u64,
    pub inputs: Vec<EmbedInput>,
}

/// One input of an embedding request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedInput {
    /// Text, tokenized by the model (its BOS token first, special tokens
    /// read as text).
    Text(String),
    /// Token ids as they are; each must be below the vocabulary's size.
    Tokens(Vec<u32>),
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
    /// The log-probabilities of tokens drawn since the last `Token` (only
    /// when `Sampling.logprobs` asked), sent before the `Token` that
    /// carries their text. A token's text may come later than its entry
    /// (text that might begin a stop string is held back); the end token
    /// has none; the tokens of a stop string have theirs though their text
    /// is never sent.
    Logprobs {
        id: u64,
        tokens: Vec<TokenLogprobs>,
    },
    Done {
        id: u64,
        finish: FinishReason,
        stats: GenerationStats,
    },
    Stats(WorkerStats),
    /// The answer to [`Request::Embed`].
    Embeddings {
        id: u64,
        /// One L2-normalized vector per input, in the request's order.
        vectors: Vec<Vec<f32>>,
        /// Tokens of all inputs together.
        prompt_tokens: u32,
    },
    /// The live sequences need `needed_cells` more cells than the pool has
    /// free, after every cached sequence was dropped; generations that need
    /// room wait for the parent's `Resize` or `DenyGrowth` (see the module
    /// docs). Sent once per shortage: no second one before the answer.
    PoolFull {
        /// Cells the waiting generations need beyond the free ones now (their
        /// next token, or their next prompt chunk).
        needed_cells: u32,
        /// The pool now, in cells.
        pool_cells: u32,
        /// Cells the live sequences hold.
        used_cells: u32,
        /// The most the pool may grow to, in cells.
        pool_max_cells: u32,
        /// The size the worker proposes: half as large again, or what covers
        /// the shortage if more, capped at `pool_max_cells`
        /// ([`crate::pool::suggest_growth`]).
        suggested_cells: u32,
        /// Generations waiting for the answer.
        waiting: u32,
    },
    /// The answer to [`Request::Resize`]: the pool now.
    Resized {
        /// The pool now, in cells (what llama.cpp allocated).
        cells: u32,
        /// The pool before, in cells.
        previous_cells: u32,
        /// Live and cached sequences moved into the new pool.
        moved_sequences: u32,
        /// Tokens they hold.
        moved_tokens: u32,
        /// Cached sequences dropped because they did not fit.
        dropped_sequences: u32,
        /// Bytes of sequence state copied out of the old pool and into the
        /// new one (what a move costs in memory, briefly, on top of the new
        /// pool; the old one is freed first).
        state_bytes: u64,
        /// Wall time of the whole resize, in milliseconds.
        ms: f64,
    },
    /// What each sequence holds; the answer to [`Request::Sequences`].
    Sequences {
        sequences: Vec<SequenceInfo>,
    },
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
    /// Context per sequence in tokens, after clamping to the trained
    /// context and to `pool_max_cells`.
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
    /// The K/V pool at load, in cells (all sequences together).
    #[serde(default)]
    pub pool_cells: u32,
    /// The most the pool may grow to, in cells.
    #[serde(default)]
    pub pool_max_cells: u32,
    /// The window of the model's sliding-window layers, in tokens (`None`:
    /// no such layers). Their cache holds about the last window of each
    /// sequence, which limits prefix reuse (see [`crate::pool::reusable_prefix`]).
    #[serde(default)]
    pub sliding_window: Option<u32>,
    /// Whether sequences can shift their context (false for sliding-window
    /// and recurrent models: they end instead).
    #[serde(default)]
    pub context_shift: bool,
    /// The draft model loaded beside the model, when the load asked for one.
    #[serde(default)]
    pub draft: Option<DraftInfo>,
}

/// The draft model of a load ([`LoadRequest::draft`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftInfo {
    /// Bytes of tensor data in its file (mapped, like the model's).
    pub weights_bytes: u64,
    pub parameters: u64,
    /// Cells of its one sequence's K/V.
    pub cells: u32,
}

/// One sequence of the pool, for [`Event::Sequences`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceInfo {
    /// llama.cpp's sequence id.
    pub seq: u32,
    /// The generation running on it; `None` = cached (or empty).
    pub id: Option<u64>,
    /// The tokens it holds, at positions `0..len`.
    pub tokens: Vec<i32>,
    /// How many leading tokens a new request may reuse as if freshly
    /// prefilled (a context shift makes the ones after the kept ones differ).
    pub exact: u32,
    /// Smallest position still held in every layer (-1: empty); above 0 for
    /// a sliding-window model whose window layers dropped the oldest ones.
    pub pos_min: i32,
    /// Largest position llama.cpp holds for it (-1: empty): `tokens.len() -
    /// 1` whenever the worker's record and the K/V agree (a drafted token
    /// that was not kept is gone from both).
    #[serde(default)]
    pub pos_max: i32,
    /// Worker's use counter at its last use (higher = later).
    pub last_used: u64,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full and may not (or cannot)
    /// shift.
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
#[serde(default)]
pub struct GenerationStats {
    /// Tokens of the prompt as it was run (after any dropped messages).
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// From the start of prompt processing to the first token, in ms.
    pub prefill_ms: f64,
    /// From the first token to the last, in ms.
    pub decode_ms: f64,
    /// Prompt tokens taken from a cached sequence instead of prefilled.
    pub prompt_cached_tokens: u32,
    /// Tokens discarded by context shifts during this generation.
    pub shifted_tokens: u32,
    /// Tokens a context shift keeps at the start (`n_keep` as applied).
    pub kept_tokens: u32,
    /// Oldest chat messages left out so the prompt fits the context.
    pub dropped_messages: u32,
    /// Drafted tokens checked by the model (speculative decoding; 0 when
    /// nothing was drafted).
    pub draft_tokens: u32,
    /// Of `draft_tokens`, those the model agreed with: each saved a decode.
    pub draft_accepted_tokens: u32,
    /// Decodes that gave this generation tokens, the prefill's last one
    /// included: `generated_tokens` without drafting, fewer with it.
    pub decode_steps: u32,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill (the tokens actually prefilled:
    /// reused ones cost nothing).
    pub fn prefill_tps(&self) -> f64 {
        per_second(
            self.prompt_tokens.saturating_sub(self.prompt_cached_tokens),
            self.prefill_ms,
        )
    }

    /// Generated tokens per second after the first (which prefill produced).
    pub fn decode_tps(&self) -> f64 {
        per_second(self.generated_tokens.saturating_sub(1), self.decode_ms)
    }

    /// Share of drafted tokens the model accepted; `None` when nothing was
    /// drafted.
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.draft_tokens > 0)
            .then(|| f64::from(self.draft_accepted_tokens) / f64::from(self.draft_tokens))
    }

    /// Tokens per decode this generation took part in (1.0 without
    /// drafting); `None` before any decode.
    pub fn tokens_per_step(&self) -> Option<f64> {
        (self.decode_steps > 0)
            .then(|| f64::from(self.generated_tokens) / f64::from(self.decode_steps))
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
#[serde(default)]
pub struct WorkerStats {
    pub loaded: bool,
    /// Generations running now.
    pub active: u32,
    /// Generations waiting for a free sequence.
    pub queued: u32,
    /// Tokens generated since the model was loaded.
    pub generated_total: u64,
    /// The K/V pool allocated now, in cells.
    pub pool_cells: u32,
    /// Cells holding tokens of live or cached sequences.
    pub pool_used_cells: u32,
    /// The most the pool may grow to, in cells.
    pub pool_max_cells: u32,
    /// Sequences holding a finished generation's tokens for reuse.
    pub cached_sequences: u32,
    /// Resizes of the pool since load.
    pub resizes: u64,
    /// Prompt tokens taken from cached sequences since load.
    pub reused_tokens_total: u64,
    /// Tokens discarded by context shifts since load.
    pub shifted_tokens_total: u64,
    /// Whether a [`Event::PoolFull`] waits for its answer.
    pub growth_pending: bool,
    /// Conversations kept in the RAM tier (outside the pool).
    #[serde(default)]
    pub ram_cached_sequences: u32,
    /// Bytes of saved state they hold.
    #[serde(default)]
    pub ram_cache_bytes: u64,
    /// Conversations brought back from the RAM tier since load.
    #[serde(default)]
    pub ram_restores_total: u64,
    /// Conversations stored in the disk tier's directory (as indexed).
    #[serde(default)]
    pub disk_cached_sequences: u32,
    /// Bytes of their files.
    #[serde(default)]
    pub disk_cache_bytes: u64,
    /// Conversations restored from the disk tier since load.
    #[serde(default)]
    pub disk_restores_total: u64,
    /// Disk-tier files skipped and deleted since load (another model or
    /// llama.cpp build, another K/V type, damaged).
    #[serde(default)]
    pub disk_rejected_total: u64,
    /// Threads per decode now (the load's, or the last `SetThreads`; 0:
    /// paused).
    #[serde(default)]
    pub threads: u32,
    /// The CPU priority its decodes run at now.
    #[serde(default)]
    pub thread_class: locara_core::threads::ThreadClass,
    /// Cells of the draft model's K/V (its one sequence) while it exists;
    /// 0 with no draft model, or while the pool is freed.
    #[serde(default)]
    pub draft_cells: u32,
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
    /// The K/V pool is full, growth was refused, and the generation could
    /// not shift its context (the model cannot, or `truncate` was false).
    PoolExhausted,
    /// A resize could not create the new context; the pool is unchanged.
    ResizeFailed,
    /// A file of the disk tier was skipped and deleted (it does not match
    /// this worker, or it is damaged), or the tier could not be read or
    /// written. Always `id: None`: the worker goes on without the file.
    DiskCache,
    /// The sampling settings do not fit the model: a `logit_bias` token
    /// outside its vocabulary, a grammar llama.cpp cannot parse.
    InvalidSampling,
    /// An embedding request's input cannot be embedded: empty, a token id
    /// outside the vocabulary, or a model that gives no embeddings (a
    /// reranker). The message names the input and the limit.
    InvalidInput,
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
            ErrorKind::PoolExhausted => "pool_exhausted",
            ErrorKind::ResizeFailed => "resize_failed",
            ErrorKind::DiskCache => "disk_cache",
            ErrorKind::InvalidSampling => "invalid_sampling",
            ErrorKind::InvalidInput => "invalid_input",
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
            n_keep: Some(5),
            truncate: false,
            cache_prompt: false,
            speculative: false,
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
    fn fields_added_in_version_2_have_defaults() {
        // A request written without them (an older parent) still reads.
        let g: GenerateRequest = serde_json::from_str(
            r#"{"id":1,"prompt":{"kind":"raw","text":"hi"},"max_tokens":null}"#,
        )
        .unwrap();
        assert_eq!(
            (g.n_keep, g.truncate, g.cache_prompt, g.speculative),
            (None, true, true, true)
        );
        let l: LoadRequest = serde_json::from_str(
            r#"{"path":"m.gguf","context":null,"kv_type":"q8_0","parallel":1,"threads":1,"gpu_layers":null}"#,
        )
        .unwrap();
        assert_eq!((l.pool, l.pool_max), (None, None));
        assert_eq!(
            (
                l.ram_cache_bytes,
                l.disk_cache_dir,
                l.disk_cache_bytes,
                l.model_sha256
            ),
            (0, None, 0, None)
        );
        let s: GenerationStats = serde_json::from_str(
            r#"{"prompt_tokens":3,"generated_tokens":1,"prefill_ms":1.0,"decode_ms":0.0}"#,
        )
        .unwrap();
        assert_eq!(s.prompt_cached_tokens, 0);
    }

    #[test]
    fn sampling_fields_of_version_3_default_to_off_and_round_trip() {
        let s: Sampling = serde_json::from_str(r#"{"temperature":0}"#).unwrap();
        assert_eq!(
            (s.frequency_penalty, s.presence_penalty, s.logit_bias.len()),
            (0.0, 0.0, 0)
        );
        assert_eq!((s.grammar, s.logprobs), (None, None));
        let s = Sampling {
            frequency_penalty: 0.5,
            presence_penalty: -1.0,
            logit_bias: vec![LogitBias {
                token: 7,
                bias: -100.0,
            }],
            grammar: Some("root ::= \"a\"".into()),
            logprobs: Some(2),
            ..Sampling::greedy()
        };
        let back: Sampling = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let ev = Event::Logprobs {
            id: 3,
            tokens: vec![TokenLogprobs {
                chosen: TokenProb {
                    token: "\u{fffd}".into(),
                    bytes: vec![0xe2, 0x9c],
                    logprob: -0.25,
                },
                top: vec![],
            }],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &ev).unwrap();
        assert_eq!(read_frame::<_, Event>(&mut &buf[..]).unwrap(), ev);
    }

    #[test]
    fn pool_messages_round_trip() {
        for ev in [
            Event::PoolFull {
                needed_cells: 1,
                pool_cells: 256,
                used_cells: 256,
                pool_max_cells: 4096,
                suggested_cells: 512,
                waiting: 1,
            },
            Event::Resized {
                cells: 512,
                previous_cells: 256,
                moved_sequences: 2,
                moved_tokens: 300,
                dropped_sequences: 0,
                state_bytes: 3_600_000,
                ms: 4.5,
            },
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &ev).unwrap();
            assert_eq!(read_frame::<_, Event>(&mut &buf[..]).unwrap(), ev);
        }
        assert_eq!(
            serde_json::to_string(&Request::Resize { cells: 512 }).unwrap(),
            r#"{"type":"resize","cells":512}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::SetThreads {
                threads: 3,
                class: locara_core::threads::ThreadClass::Background
            })
            .unwrap(),
            r#"{"type":"set_threads","threads":3,"class":"background"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::DenyGrowth).unwrap(),
            r#"{"type":"deny_growth"}"#
        );
    }

    #[test]
    fn embed_messages_round_trip() {
        let req = Request::Embed(EmbedRequest {
            id: 9,
            inputs: vec![
                EmbedInput::Text("hi".into()),
                EmbedInput::Tokens(vec![1, 2]),
            ],
        });
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"type":"embed","id":9,"inputs":[{"text":"hi"},{"tokens":[1,2]}]}"#
        );
        let ev = Event::Embeddings {
            id: 9,
            vectors: vec![vec![0.6, -0.8], vec![1.0, 0.0]],
            prompt_tokens: 4,
        };
        for frame in [
            serde_json::to_value(&req).unwrap(),
            serde_json::to_value(&ev).unwrap(),
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &frame).unwrap();
            assert_eq!(
                read_frame::<_, serde_json::Value>(&mut &buf[..]).unwrap(),
                frame
            );
        }
        let mut buf = Vec::new();
        write_frame(&mut buf, &ev).unwrap();
        assert_eq!(read_frame::<_, Event>(&mut &buf[..]).unwrap(), ev);
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Cancel { id: 3 }).unwrap();
        assert_eq!(&buf[4..], br#"{"type":"cancel","id":3}"#);
    }
}
