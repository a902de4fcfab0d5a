//! The worker process: owns llama.cpp, serves the [`protocol`](crate::protocol).
//!
//! Threads: the main thread owns the model and context (a llama.cpp context
//! is not `Send`) and runs the generation loop; a reader thread turns stdin
//! frames into messages for it and ends the process when stdin closes.
//! Generations share one context, each on a sequence of its own; every step
//! decodes one batch holding the next token of every running generation plus
//! prompt chunks of new ones (continuous batching), so a new request joins
//! between tokens.
//!
//! The context's K/V cache is the worker's pool (see the protocol's module
//! docs): unified, so sequences hold only the cells they use; finished
//! sequences stay cached for prefix reuse; growth and shrinking replace the
//! context with one of the new size and move every sequence across with
//! llama.cpp's per-sequence state save/restore. The decisions themselves
//! are in [`crate::pool`].
//!
//! Two tiers keep finished conversations outside the pool as that same
//! saved state: the RAM tier ([`pool::RamTier`], the worker's memory) and
//! the disk tier ([`crate::disk`], files the worker writes when it exits and
//! restores from when a new worker of the model continues a conversation).

use crate::disk::{self, DiskTier};
use crate::draft::{self, DraftCounts, DraftLength};
use crate::drafter::Drafter;
use crate::embed::{EmbedShape, Embedder};
use crate::pool::{self, Candidate, Held};
use crate::protocol::{
    read_frame, write_frame, ChatMessage, DraftInfo, ErrorKind, Event, FinishReason,
    GenerateRequest, GenerationStats, LoadRequest, LoadedInfo, Prompt, Request, Sampling,
    SequenceInfo, TokenLogprobs, TokenProb, WorkerStats, PROTOCOL_VERSION,
};
use crate::stop::{StopMatcher, StopStep};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel, RopeType};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use locara_core::threads::ThreadClass;
use locara_core::{KvType, LoadDefaults};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::num::NonZeroU32;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

mod park;

use park::{park_or_end, serve_parked, FileIdentity, SleepReport};

/// Set while the main thread writes the disk tier on its way out: the
/// reader thread then lets it finish instead of ending the process.
static WRITING_DISK_TIER: AtomicBool = AtomicBool::new(false);

/// Longest the disk tier's writing may delay the exit of a worker whose
/// parent is gone (a parent that is still there kills it after its own
/// grace). Files go most recently used first, each whole, so a cut-short
/// write loses only the oldest conversations.
const DISK_WRITE_LIMIT: Duration = Duration::from_secs(60);

/// Errors that end the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("could not set up the protocol channel: {0}")]
    Setup(std::io::Error),
    #[error("the parent's channel failed: {0}")]
    Channel(#[from] crate::protocol::FrameError),
    #[error("llama.cpp backend failed to start: {0}")]
    Backend(String),
}

/// Runs the worker until the parent says `Exit` or closes the channel.
pub fn run() -> Result<(), WorkerError> {
    let out = protocol_stdout()?;
    let mut out = BufWriter::new(out);
    let rx = spawn_reader();

    let mut backend = LlamaBackend::init().map_err(|e| WorkerError::Backend(e.to_string()))?;
    if std::env::var_os("LOCARA_ENGINE_LOG").is_none() {
        backend.void_logs();
    }
    // Decodes of interactive work run on this thread (macOS: QoS
    // user-initiated; on Linux this is the normal policy it has anyway).
    if let Err(e) = locara_platform::set_thread_class(ThreadClass::Interactive) {
        eprintln!("locara engine: {e}");
    }
    write_frame(
        &mut out,
        &Event::Ready {
            protocol: PROTOCOL_VERSION,
            engine: engine_description(),
        },
    )?;

    // Until a model is loaded only Load, Stats and Exit make sense.
    loop {
        let Ok(req) = rx.recv() else { return Ok(()) };
        match req {
            Request::Load(load) => return serve_model(&backend, load, &rx, &mut out),
            Request::Stats | Request::DropTier { .. } => {
                write_frame(&mut out, &Event::Stats(WorkerStats::default()))?
            }
            Request::Sequences => write_frame(
                &mut out,
                &Event::Sequences {
                    sequences: Vec::new(),
                },
            )?,
            Request::Exit => return Ok(()),
            Request::Generate(g) => error(
                &mut out,
                Some(g.id),
                ErrorKind::BadRequest,
                "no model is loaded",
            )?,
            Request::Embed(e) => error(
                &mut out,
                Some(e.id),
                ErrorKind::BadRequest,
                "no model is loaded",
            )?,
            Request::Resize { .. } | Request::DenyGrowth => error(
                &mut out,
                None,
                ErrorKind::BadRequest,
                "no model is loaded, so there is no K/V pool to resize",
            )?,
            // Threads matter from the first decode, after a load (which
            // brings its own count).
            Request::Cancel { .. } | Request::SetThreads { .. } => {}
        }
    }
}

/// Makes fd 1 safe: the protocol gets a private duplicate of stdout, and fd 1
/// is pointed at stderr, so a stray `printf` in C++ can never corrupt a frame.
fn protocol_stdout() -> Result<File, WorkerError> {
    // SAFETY: plain fd syscalls on fds this process owns; `dup` returns a new
    // fd that the File takes sole ownership of.
    unsafe {
        let fd = libc::dup(libc::STDOUT_FILENO);
        if fd < 0 {
            return Err(WorkerError::Setup(std::io::Error::last_os_error()));
        }
        if libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            return Err(WorkerError::Setup(std::io::Error::last_os_error()));
        }
        // Terminal Ctrl-C is the parent's to handle; the parent spawns us in a
        // process group of our own, and this covers other parents too.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        Ok(File::from_raw_fd(fd))
    }
}

/// Reads requests from stdin on a thread of their own. When stdin closes, the
/// parent is gone (whatever way it died): the worker ends at once, with
/// `_exit` so no C++ destructor runs under a generation in progress.
fn spawn_reader() -> Receiver<Request> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("protocol-reader".into())
        .spawn(move || {
            let mut stdin = BufReader::new(std::io::stdin().lock());
            loop {
                match read_frame::<_, Request>(&mut stdin) {
                    Ok(Request::Exit) | Err(_) => {
                        let _ = tx.send(Request::Exit);
                        // Give the main thread a moment to exit cleanly if it
                        // is idle; a busy one is cut short. One that is
                        // writing the disk tier is let finish, within a bound.
                        std::thread::sleep(Duration::from_millis(200));
                        let deadline = Instant::now() + DISK_WRITE_LIMIT;
                        while WRITING_DISK_TIER.load(Ordering::SeqCst) && Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        // SAFETY: `_exit` ends the process without running
                        // atexit handlers; nothing is left to flush.
                        unsafe { libc::_exit(0) };
                    }
                    Ok(req) => {
                        if tx.send(req).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .expect("spawning the protocol reader thread");
    rx
}

fn engine_description() -> String {
    // SAFETY: these return pointers to static NUL-terminated strings.
    let (version, commit, system) = unsafe {
        (
            std::ffi::CStr::from_ptr(llama_cpp_sys_2::ggml_version()),
            std::ffi::CStr::from_ptr(llama_cpp_sys_2::ggml_commit()),
            std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()),
        )
    };
    // The vendored tree is built without git, so the commit is often "unknown".
    let commit = commit.to_string_lossy();
    let commit = if commit == "unknown" {
        String::new()
    } else {
        format!(" {commit}")
    };
    format!(
        "llama.cpp (ggml {}{commit}) via llama-cpp-sys-2; {}",
        version.to_string_lossy(),
        system.to_string_lossy().trim()
    )
}

fn error(
    out: &mut impl Write,
    id: Option<u64>,
    kind: ErrorKind,
    message: impl Into<String>,
) -> Result<(), WorkerError> {
    write_frame(
        out,
        &Event::Error {
            id,
            kind,
            message: message.into(),
        },
    )?;
    Ok(())
}

fn kv_cache_type(kv: KvType) -> KvCacheType {
    match kv {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

/// Loads the model, then serves generations until Exit.
fn serve_model(
    backend: &LlamaBackend,
    load: LoadRequest,
    rx: &Receiver<Request>,
    out: &mut impl Write,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    // The guard: a file that fails validation never reaches llama.cpp.
    let gguf = match locara_gguf::validate_file(&load.path) {
        Ok(g) => g,
        Err(e) => {
            error(
                out,
                None,
                ErrorKind::InvalidModel,
                format!("{}: {e}", load.path.display()),
            )?;
            return Ok(());
        }
    };
    if load.parallel == 0 || load.threads == 0 {
        error(
            out,
            None,
            ErrorKind::BadRequest,
            format!(
                "parallel ({}) and threads ({}) must be at least 1",
                load.parallel, load.threads
            ),
        )?;
        return Ok(());
    }

    let gpu_layers = if backend.supports_gpu_offload() {
        load.gpu_layers
            .unwrap_or(u32::MAX)
            .min(gguf.model.block_count + 1)
    } else {
        0
    };
    // mmap on, mlock off, always (docs/ARCHITECTURE.md): no request can change this.
    let model_params = LlamaModelParams::default()
        .with_n_gpu_layers(gpu_layers)
        .with_use_mmap(true)
        .with_use_mlock(false);
    let model = match LlamaModel::load_from_file(backend, &load.path, &model_params) {
        Ok(m) => m,
        Err(e) => {
            error(
                out,
                None,
                ErrorKind::LoadFailed,
                format!("llama.cpp could not load {}: {e}", load.path.display()),
            )?;
            return Ok(());
        }
    };
    // The draft model of a speculative pair: validated, and its vocabulary
    // checked against the model's, before llama.cpp sees it.
    let draft_model = match &load.draft {
        None => None,
        Some(path) => match load_draft(backend, &gguf, path, &model_params) {
            Ok(m) => Some(m),
            Err((kind, message)) => {
                error(out, None, kind, message)?;
                return Ok(());
            }
        },
    };
    // The files as loaded: a model set aside is loaded again only from
    // these (serve_parked).
    let mut files = Vec::new();
    for path in std::iter::once(&load.path).chain(load.draft.as_ref()) {
        match FileIdentity::of(path) {
            Ok(identity) => files.push((path.clone(), identity)),
            Err(e) => {
                error(
                    out,
                    None,
                    ErrorKind::LoadFailed,
                    format!("{}: {e}", path.display()),
                )?;
                return Ok(());
            }
        }
    }
    let trained = model.n_ctx_train();
    let requested_context = LoadDefaults::default().context_for(load.context, trained);
    let pool_max = pool::round_cells(
        load.pool_max
            .unwrap_or_else(|| requested_context.saturating_mul(load.parallel)),
    );
    // One sequence can never hold more than the whole pool.
    let context = requested_context.min(pool_max);
    let pool_cells = pool::round_cells(load.pool.unwrap_or(pool_max)).min(pool_max);
    // The sliding window as the GGUF states it. llama.cpp gives these
    // layers a cache of about one window per sequence (`swa_full` off),
    // which limits prefix reuse and rules out context shift.
    let window = gguf.model.sliding_window;
    let shape = PoolShape {
        parallel: load.parallel,
        threads: i32::try_from(load.threads).unwrap_or(i32::MAX),
        kv_type: load.kv_type,
    };
    let ctx = match model.new_context(backend, shape.params(pool_cells)) {
        Ok(c) => c,
        Err(e) => {
            error(
                out,
                None,
                ErrorKind::LoadFailed,
                format!("llama.cpp could not create a K/V pool of {pool_cells} cells: {e}"),
            )?;
            return Ok(());
        }
    };
    let drafter = match &draft_model {
        None => None,
        Some((draft, _)) => {
            let cells = pool::round_cells(context);
            let params = PoolShape {
                parallel: 1,
                ..shape
            }
            .params(cells);
            match Drafter::new(backend, draft, params, cells) {
                Ok(d) => Some(d),
                Err(e) => {
                    error(out, None, ErrorKind::LoadFailed, e.to_string())?;
                    return Ok(());
                }
            }
        }
    };
    let can_shift = can_shift(&model, window);
    let has_chat_template = model.chat_template(None).is_ok();
    let chat_template = ChatTemplate::choose(has_chat_template, &gguf.model.architecture);
    write_frame(
        out,
        &Event::Loaded(LoadedInfo {
            context,
            trained_context: trained,
            parallel: load.parallel,
            kv_type: load.kv_type,
            flash_attention: true,
            threads: load.threads,
            gpu_layers,
            layers: model.n_layer(),
            embedding: u32::try_from(model.n_embd()).unwrap_or(0),
            heads: model.n_head(),
            kv_heads: model.n_head_kv(),
            weights_bytes: gguf.model.tensor_data_bytes,
            parameters: model.n_params(),
            has_chat_template,
            chat_template: chat_template.describe(),
            load_ms: started.elapsed().as_secs_f64() * 1000.0,
            pool_cells: ctx.n_ctx(),
            pool_max_cells: pool_max,
            sliding_window: window,
            context_shift: can_shift,
            draft: draft_model
                .as_ref()
                .map(|(draft, weights_bytes)| DraftInfo {
                    weights_bytes: *weights_bytes,
                    parameters: draft.n_params(),
                    cells: drafter.as_ref().map_or(0, Drafter::cells),
                }),
        }),
    )?;

    let parallel = load.parallel as usize;
    let mut engine = Engine {
        backend,
        model: &model,
        settings: Settings {
            chat_template,
            context,
            parallel,
            shape,
            pool_max,
            window,
            can_shift,
            can_draft: !model.is_recurrent() && !model.is_hybrid(),
            draft_cap: if locara_platform::estimate_backend().repacks(&gguf.shape()) {
                draft::EXACT_BATCH_DRAFTS
            } else {
                draft::MAX_DRAFT
            },
        },
        pool_cells: ctx.n_ctx(),
        batch: LlamaBatch::new(ctx.n_batch() as usize, load.parallel as i32),
        ctx: Some(ctx),
        seqs: (0..parallel).map(|_| Sequence::default()).collect(),
        slots: Vec::new(),
        queue: VecDeque::new(),
        clock: 0,
        growth_pending: false,
        stalled: false,
        kept: Kept {
            generated_total: 0,
            resizes: 0,
            reused_total: 0,
            shifted_total: 0,
            tier: pool::RamTier::new(load.ram_cache_bytes),
            ram_restores: 0,
            disk: None,
            disk_restores: 0,
            disk_rejected: 0,
            class: ThreadClass::Interactive,
            paused: false,
        },
        asleep: None,
        sleep_report: None,
        disk_growth: None,
        embedder: Embedder {
            shape: EmbedShape::of(&gguf),
            kv_type: kv_cache_type(load.kv_type),
            threads: shape.threads,
            max_tokens: context.min(crate::embed::EMBED_MAX_TOKENS),
        },
        drafter,
    };
    engine.open_disk_tier(&load, out)?;
    let served = engine.serve(rx, out);
    let Some(mut parked) = park_or_end(engine, served, out)? else {
        return Ok(());
    };
    // The pool was freed and nothing waits: the models are set aside too,
    // until a request needs them.
    drop(draft_model);
    drop(model);
    parked.settle(out)?;
    serve_parked(backend, &load, &model_params, files, parked, rx, out)
}

/// The draft model at `path` for the model of `target`: the guard, the
/// vocabulary check ([`locara_gguf::vocab::check_draft_vocabulary`]), then
/// llama.cpp's load with the model's parameters (mapped, never locked).
/// With its weights' bytes.
fn load_draft(
    backend: &LlamaBackend,
    target: &locara_gguf::GgufFile,
    path: &std::path::Path,
    params: &LlamaModelParams,
) -> Result<(LlamaModel, u64), (ErrorKind, String)> {
    let gguf = locara_gguf::validate_file(path).map_err(|e| {
        (
            ErrorKind::InvalidModel,
            format!("draft model {}: {e}", path.display()),
        )
    })?;
    locara_gguf::vocab::check_draft_vocabulary(target, &gguf).map_err(|e| {
        (
            ErrorKind::BadRequest,
            format!("{} cannot draft for this model: {e}", path.display()),
        )
    })?;
    let model = LlamaModel::load_from_file(backend, path, params).map_err(|e| {
        (
            ErrorKind::LoadFailed,
            format!(
                "llama.cpp could not load the draft model {}: {e}",
                path.display()
            ),
        )
    })?;
    Ok((model, gguf.model.tensor_data_bytes))
}

/// Whether llama.cpp can shift this model's positions (`seq_add` on its
/// K/V). llama.cpp answers this per context (`llama_memory_can_shift`), but
/// llama-cpp-2 does not expose a context's memory, and asking wrongly is an
/// abort ("does not support K-shift"), so this errs on the safe side with
/// what the model says about itself:
/// * sliding-window models: their window cache can shift only while it is
///   as large as the full one, which with `swa_full` off depends on the
///   pool size; a shift that works at one pool size and aborts at the next
///   is not a behaviour to offer;
/// * recurrent and hybrid models hold state that positions cannot move;
/// * multi-axis RoPE (vision models) shifts one axis only.
fn can_shift(model: &LlamaModel, window: Option<u32>) -> bool {
    window.is_none()
        && !model.is_recurrent()
        && !model.is_hybrid()
        && !matches!(
            model.rope_type(),
            Some(RopeType::MRope | RopeType::IMRope | RopeType::Vision)
        )
}

/// What every context of a worker shares; only the pool size changes.
#[derive(Debug, Clone, Copy)]
struct PoolShape {
    parallel: u32,
    threads: i32,
    kv_type: KvType,
}

impl PoolShape {
    fn params(&self, cells: u32) -> LlamaContextParams {
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cells))
            .with_n_seq_max(self.parallel)
            // One pool of cells for all sequences, so a sequence holds only
            // the cells it uses and idle ones can stay cached.
            .with_kv_unified(true)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_type_k(kv_cache_type(self.kv_type))
            .with_type_v(kv_cache_type(self.kv_type))
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED)
            // Sliding-window layers keep only about one window per
            // sequence (plus one micro-batch), not the whole pool. A
            // full-size window cache would let a cached sequence be reused
            // from any prefix, but 15 of Gemma 3's 18 layers are window
            // layers: at 8192 cells and one sequence that is 3.7 times the
            // K/V (18 × 8192 layer-cells instead of 3 × 8192 + 15 × 1024).
            // The usual reuse, a chat's next turn, continues at the end of
            // the cache, where the window is still whole, and
            // `pool::reusable_prefix` refuses the rest. The tests measure
            // it (gemma3_multi_turn_chat_reuses_its_cache).
            // `locara_core::estimate::ENGINE_FULL_WINDOW_CACHE` follows this.
            .with_swa_full(false)
            .with_no_perf(true)
    }
}

/// One sequence of the pool.
#[derive(Debug, Default)]
struct Sequence {
    /// The tokens whose K/V the pool holds for it, at positions `0..len`.
    tokens: Vec<LlamaToken>,
    /// How many leading tokens hold exactly what a fresh prefill of them
    /// would compute; a context shift leaves the ones after the kept part
    /// computed over tokens that are gone.
    exact: usize,
    /// The use counter at its last use, for least-recently-used choices.
    last_used: u64,
    /// The generation running on it; `None` = cached (or empty).
    live: Option<u64>,
    /// Tokens to decode into it while it waits for its conversation's next
    /// turn ([`Engine::place_follow_ups`]).
    follow_up: Option<FollowUp>,
}

/// The opening of a finished conversation's next turn, decoded into its
/// sequence while the user writes that turn, so the next prompt finds it
/// cached: `<|im_end|>\n<|im_start|>` on ChatML ([`pool::follow_up_len`]).
#[derive(Debug)]
struct FollowUp {
    /// The sequence's length when its answer ended: a change to its
    /// tokens since (a new request on it, a spill, a shift) makes the
    /// follow-up stale.
    after: usize,
    tokens: Vec<LlamaToken>,
}

impl Sequence {
    /// Empties it.
    fn forget(&mut self) {
        self.hold(Vec::new(), 0);
    }

    /// Makes it hold `tokens` (restored into its cells), `exact` of them
    /// exact; a follow-up of what it held before goes.
    fn hold(&mut self, tokens: Vec<LlamaToken>, exact: usize) {
        self.tokens = tokens;
        self.exact = exact;
        self.follow_up = None;
    }

    /// Whether it has a follow-up still to decode: no request took it
    /// since its answer ended, and nothing changed its tokens.
    fn follow_up_due(&self) -> bool {
        self.live.is_none()
            && self
                .follow_up
                .as_ref()
                .is_some_and(|f| f.after == self.tokens.len())
    }

    /// Records a token placed in the next batch. It is exact only if all
    /// before it are: after a shift nothing new is as a fresh prefill.
    fn push(&mut self, token: LlamaToken) {
        if self.exact == self.tokens.len() {
            self.exact += 1;
        }
        self.tokens.push(token);
    }
}

/// One running generation.
struct Slot {
    id: u64,
    seq: usize,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache (reused or prefilled).
    prompt_done: usize,
    /// The last sampled token, to be decoded next step.
    next: Option<LlamaToken>,
    /// Index in the current batch whose logits this slot samples from.
    logits_at: Option<i32>,
    /// It needed cells this step and did not get them all.
    held: bool,
    picker: Picker,
    /// Alternatives to report with each drawn token's log-probability;
    /// `None`: report none.
    logprobs: Option<u32>,
    utf8: encoding_rs::Decoder,
    stop: StopMatcher,
    max_tokens: u32,
    generated: u32,
    /// Tokens a context shift keeps at the start of the sequence.
    n_keep: usize,
    /// Whether the request allows a context shift.
    truncate: bool,
    /// Whether the request may reuse a cached prefix.
    cache_prompt: bool,
    /// Prompt tokens taken from the cache.
    cached: u32,
    /// Tokens discarded by context shifts.
    shifted: u32,
    dropped_messages: u32,
    started: Instant,
    first_token: Option<Instant>,
    /// Whether it drafts tokens: its request allows it and its picker is
    /// [`Picker::Greedy`], the one whose choice a drafted token can be
    /// checked against exactly (a sampler chain keeps state, a grammar's or
    /// the penalties', that every drawn token changes).
    speculative: bool,
    draft_length: DraftLength,
    /// Tokens drafted this step, placed in the batch after `next`.
    drafts: Vec<LlamaToken>,
    /// Their indices in the batch, in order.
    draft_at: Vec<i32>,
    /// The position of `next` in its sequence this step: the drafts follow
    /// it.
    draft_base: usize,
    counts: DraftCounts,
    /// A chat's messages as rendered, and the answer's text so far: the
    /// conversation's next prompt, where a [`FollowUp`] is looked for.
    /// `None` for raw prompts and recurrent models (whose state cannot
    /// take back a token the next prompt turns out not to have).
    conversation: Option<(Vec<ChatMessage>, String)>,
}

/// Which chat template renders chat prompts.
#[derive(Debug, Clone)]
enum ChatTemplate {
    /// The model's own (`tokenizer.chat_template`).
    Model,
    /// One of llama.cpp's built-in templates, by name, for a model that
    /// ships none: by its architecture where that is unambiguous, else ChatML
    /// (what llama-server also falls back to).
    Builtin {
        name: &'static str,
        why: &'static str,
    },
}

impl ChatTemplate {
    fn choose(model_has_one: bool, architecture: &str) -> ChatTemplate {
        if model_has_one {
            return ChatTemplate::Model;
        }
        match architecture {
            "gemma" | "gemma2" | "gemma3" => ChatTemplate::Builtin {
                name: "gemma",
                why: "by architecture",
            },
            _ => ChatTemplate::Builtin {
                name: "chatml",
                why: "fallback",
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            ChatTemplate::Model => "the model's own".to_string(),
            ChatTemplate::Builtin { name, why } => format!("built-in {name} ({why})"),
        }
    }
}

/// Text no chat message is expected to contain (a private-use character
/// around a name), used to find where the first user message starts in a
/// rendered prompt.
const CONTENT_MARKER: &str = "\u{E000}locara\u{E000}";

struct Engine<'m> {
    backend: &'m LlamaBackend,
    model: &'m LlamaModel,
    /// The pool. `None` only inside a resize, between dropping the old
    /// context and creating the new one.
    ctx: Option<LlamaContext<'m>>,
    settings: Settings,
    /// The pool's size now, cells (what llama.cpp allocated).
    pool_cells: u32,
    seqs: Vec<Sequence>,
    slots: Vec<Slot>,
    queue: VecDeque<GenerateRequest>,
    batch: LlamaBatch<'static>,
    /// Use counter: ticks on every admission and finish.
    clock: u64,
    /// A PoolFull waits for its answer.
    growth_pending: bool,
    /// The last step could do nothing: wait for a message before the next.
    stalled: bool,
    /// Its counters, tiers and share of the cores.
    kept: Kept,
    /// The pool was freed (`Resize { cells: 0 }`): the size to make it
    /// again at the next request.
    asleep: Option<u32>,
    /// The freed pool's report, written once the models are set aside too
    /// (so that the footprint the daemon measures on it shows them gone),
    /// or before the pool is made again or resized, whichever comes first.
    sleep_report: Option<SleepReport>,
    /// The request waiting for the pool to grow so that a stored
    /// conversation it continues can be restored from the disk tier.
    disk_growth: Option<u64>,
    /// Embedding requests, each in a context of its own ([`crate::embed`]).
    embedder: Embedder,
    /// The draft model's proposals ([`crate::drafter`]), when the load has
    /// one; `None` also after it failed (prompt lookup goes on).
    drafter: Option<Drafter<'m>>,
}

/// What the model and the load settled for a worker, kept whether it holds
/// its model or has set it aside ([`Engine`], [`Parked`]).
struct Settings {
    chat_template: ChatTemplate,
    /// Context per sequence, tokens.
    context: u32,
    parallel: usize,
    shape: PoolShape,
    /// The most the pool may grow to, cells.
    pool_max: u32,
    /// The window of sliding-window layers, tokens.
    window: Option<u32>,
    can_shift: bool,
    /// Whether generations may draft tokens: rejected drafts are taken back
    /// out of the K/V, which a recurrent model's state (Mamba, RWKV, and
    /// the hybrids) cannot undo.
    can_draft: bool,
    /// Most tokens a generation drafts at one step: [`draft::MAX_DRAFT`],
    /// or [`draft::EXACT_BATCH_DRAFTS`] where the CPU backend repacks the
    /// model's weights.
    draft_cap: usize,
}

enum Control {
    Continue,
    Exit,
}

/// What a worker keeps whether it holds its model or has set it aside
/// ([`Engine`], [`Parked`]): its counters, its RAM and disk tiers, and the
/// daemon's share of the cores.
struct Kept {
    generated_total: u64,
    resizes: u64,
    reused_total: u64,
    shifted_total: u64,
    /// Finished conversations kept outside the pool, as saved state.
    tier: pool::RamTier<LlamaToken, Vec<u8>>,
    ram_restores: u64,
    /// Conversations kept on disk across workers.
    disk: Option<DiskTier>,
    disk_restores: u64,
    /// Disk-tier files skipped and deleted.
    disk_rejected: u64,
    /// The CPU priority decodes run at (the daemon's `SetThreads`); the
    /// thread count is `PoolShape::threads`.
    class: ThreadClass,
    /// Told 0 threads: nothing decodes until a share with threads comes.
    paused: bool,
}

impl Kept {
    /// The worker's stats as far as these figures, its pool's cap and its
    /// thread count say: those of a worker with no pool, nothing running or
    /// waiting ([`Engine::stats`] fills in the rest).
    fn stats(&self, pool_max: u32, threads: i32) -> WorkerStats {
        WorkerStats {
            loaded: true,
            active: 0,
            queued: 0,
            generated_total: self.generated_total,
            pool_cells: 0,
            pool_used_cells: 0,
            pool_max_cells: pool_max,
            cached_sequences: 0,
            resizes: self.resizes,
            reused_tokens_total: self.reused_total,
            shifted_tokens_total: self.shifted_total,
            growth_pending: false,
            ram_cached_sequences: self.tier.len() as u32,
            ram_cache_bytes: self.tier.bytes(),
            ram_restores_total: self.ram_restores,
            disk_cached_sequences: self.disk.as_ref().map_or(0, |d| d.entries().len() as u32),
            disk_cache_bytes: self.disk.as_ref().map_or(0, |d| d.bytes()),
            disk_restores_total: self.disk_restores,
            disk_rejected_total: self.disk_rejected,
            threads: if self.paused {
                0
            } else {
                u32::try_from(threads).unwrap_or(0)
            },
            thread_class: self.class,
            draft_cells: 0,
        }
    }
}

/// How [`Engine::serve`] ended.
enum Served {
    /// Exit, or the parent is gone.
    Exit,
    /// The pool is freed and nothing waits: the models may be set aside
    /// ([`Engine::park`]).
    Asleep,
}

impl<'m> Engine<'m> {
    fn ctx(&mut self) -> &mut LlamaContext<'m> {
        self.ctx.as_mut().expect("the pool exists outside a resize")
    }

    fn serve(
        &mut self,
        rx: &Receiver<Request>,
        out: &mut impl Write,
    ) -> Result<Served, WorkerError> {
        loop {
            let idle = self.slots.is_empty() && self.queue.is_empty();
            if idle && self.asleep.is_some() {
                return Ok(Served::Asleep);
            }
            // Idle, waiting for the parent (a PoolFull answer, a cancel), or
            // paused (background work while interactive work runs): block
            // for a message. Busy: take what has arrived, then step.
            if idle || self.stalled || self.kept.paused {
                let Ok(req) = rx.recv() else {
                    return Ok(Served::Exit);
                };
                self.stalled = false;
                if let Control::Exit = self.handle(req, out)? {
                    return Ok(Served::Exit);
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(req) => {
                        if let Control::Exit = self.handle(req, out)? {
                            return Ok(Served::Exit);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(Served::Exit),
                }
            }
            if self.kept.paused {
                continue;
            }
            self.admit(out)?;
            if !self.slots.is_empty() {
                self.stalled = !self.step(out)?;
            } else {
                // Requests still queued with no slot running cannot happen
                // (admission takes them), but never spin.
                self.stalled = !self.queue.is_empty();
            }
        }
    }

    fn handle(&mut self, req: Request, out: &mut impl Write) -> Result<Control, WorkerError> {
        match req {
            Request::Generate(g) => self.queue.push_back(g),
            // Answered at once, between two generation steps (crate::embed says why).
            Request::Embed(e) => match self.embedder.embed(self.backend, self.model, &e) {
                Ok((vectors, prompt_tokens)) => write_frame(
                    out,
                    &Event::Embeddings {
                        id: e.id,
                        vectors,
                        prompt_tokens,
                    },
                )?,
                Err((kind, message)) => error(out, Some(e.id), kind, message)?,
            },
            Request::Cancel { id } => {
                if let Some(i) = self.slots.iter().position(|s| s.id == id) {
                    self.finish(i, FinishReason::Cancelled, out)?;
                } else if let Some(i) = self.queue.iter().position(|g| g.id == id) {
                    self.queue.remove(i);
                    write_frame(
                        out,
                        &Event::Done {
                            id,
                            finish: FinishReason::Cancelled,
                            stats: GenerationStats::default(),
                        },
                    )?;
                }
            }
            Request::Stats => {
                let stats = self.stats();
                write_frame(out, &Event::Stats(stats))?
            }
            Request::Sequences => {
                let sequences = self.sequence_infos();
                write_frame(out, &Event::Sequences { sequences })?
            }
            Request::Resize { cells } => {
                self.drop_follow_ups();
                self.resize(cells, out)?
            }
            Request::DropTier { spill } => {
                self.drop_follow_ups();
                if spill {
                    self.write_disk_tier(out);
                }
                self.kept.tier = pool::RamTier::new(self.kept.tier.budget());
                give_back_freed_memory();
                write_frame(out, &Event::Stats(self.stats()))?
            }
            Request::DenyGrowth => self.deny_growth(out)?,
            Request::SetThreads { threads, class } => self.set_threads(threads, class, out)?,
            Request::Load(_) => error(
                out,
                None,
                ErrorKind::BadRequest,
                "a model is already loaded; a worker holds one model",
            )?,
            Request::Exit => return Ok(Control::Exit),
        }
        Ok(Control::Continue)
    }

    fn used_cells(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    fn free_cells(&self) -> usize {
        (self.pool_cells as usize).saturating_sub(self.used_cells())
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            active: self.slots.len() as u32,
            queued: self.queue.len() as u32,
            pool_cells: self.pool_cells,
            pool_used_cells: self.used_cells() as u32,
            cached_sequences: self
                .seqs
                .iter()
                .filter(|s| s.live.is_none() && !s.tokens.is_empty())
                .count() as u32,
            growth_pending: self.growth_pending,
            draft_cells: self.drafter.as_ref().map_or(0, Drafter::cells),
            ..self
                .kept
                .stats(self.settings.pool_max, self.settings.shape.threads)
        }
    }

    /// The daemon's share of the cores for this worker, from the next
    /// decode on; a new context (a resize) is made with it too. 0 threads
    /// pauses the worker (the context keeps its last count).
    fn set_threads(
        &mut self,
        threads: u32,
        class: ThreadClass,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        self.kept.class = class;
        self.kept.paused = threads == 0;
        if self.kept.paused {
            return Ok(());
        }
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        self.settings.shape.threads = threads;
        if let Some(ctx) = self.ctx.as_mut() {
            if let Err(e) = crate::cpu::set_threads(ctx, threads) {
                error(out, None, ErrorKind::BadRequest, e.to_string())?;
            }
        }
        Ok(())
    }

    fn sequence_infos(&mut self) -> Vec<SequenceInfo> {
        let pos_min: Vec<i32> = (0..self.seqs.len())
            .map(|i| {
                self.ctx
                    .as_mut()
                    .map_or(-1, |c| c.kv_cache_seq_pos_min(i as i32))
            })
            .collect();
        let pos_max: Vec<i32> = (0..self.seqs.len())
            .map(|i| {
                self.ctx
                    .as_ref()
                    .map_or(-1, |c| c.kv_cache_seq_pos_max(i as i32))
            })
            .collect();
        self.seqs
            .iter()
            .enumerate()
            .map(|(i, s)| SequenceInfo {
                seq: i as u32,
                id: s.live,
                tokens: s.tokens.iter().map(|t| t.0).collect(),
                exact: s.exact as u32,
                pos_min: pos_min[i],
                pos_max: pos_max[i],
                last_used: s.last_used,
            })
            .collect()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Empties sequence `seq`'s cells.
    fn clear_sequence(&mut self, seq: usize) {
        let _ = self.ctx().clear_kv_cache_seq(Some(seq as u32), None, None);
        self.seqs[seq].forget();
    }

    /// Cached sequences, as the pool's bookkeeping sees them.
    fn cached(&self) -> Vec<Held> {
        self.seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live.is_none() && !s.tokens.is_empty())
            .map(|(seq, s)| Held {
                seq,
                cells: s.tokens.len(),
                last_used: s.last_used,
            })
            .collect()
    }

    /// Drops cached sequences, least recently used first, until `needed`
    /// cells are free (or none is left). Returns the free cells.
    fn make_room(&mut self, needed: usize) -> usize {
        let free = self.free_cells();
        if free >= needed {
            return free;
        }
        for seq in pool::evict_for_room(needed, free, &self.cached()) {
            self.spill(seq);
        }
        self.free_cells()
    }

    /// Moves queued requests onto free sequences.
    fn admit(&mut self, out: &mut impl Write) -> Result<(), WorkerError> {
        // A freed pool is made again for the first request that comes.
        if self.asleep.is_some() && (self.queue.is_empty() || !self.wake(out)?) {
            return Ok(());
        }
        while self.slots.len() < self.settings.parallel {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let id = req.id;
            // Kept only while a restore from disk may have to wait for room.
            let original = self.kept.disk.is_some().then(|| req.clone());
            match self.prepare(req) {
                Ok(mut slot) => {
                    let mut choice = self.choose(&slot.prompt, slot.cache_prompt);
                    let held = self.seqs[choice.seq].tokens.len();
                    if !pool::continues(choice, held) {
                        if slot.cache_prompt
                            && self.wait_for_disk_room(id, choice, &slot.prompt, out)?
                        {
                            // Back to the front until the parent answers.
                            self.queue
                                .push_front(original.expect("only the disk tier waits"));
                            break;
                        }
                        // A new conversation: the finished ones leave the
                        // pool for the RAM tier, and one this prompt
                        // continues comes back from the disk tier or the
                        // RAM tier.
                        choice =
                            self.compact_and_restore(choice, &slot.prompt, slot.cache_prompt, out)?;
                    }
                    if self.disk_growth == Some(id) {
                        self.disk_growth = None;
                    }
                    self.take_sequence(choice, &mut slot);
                    self.slots.push(slot);
                }
                Err((kind, message)) => error(out, Some(id), kind, message)?,
            }
        }
        Ok(())
    }

    /// The free sequence for a prompt, and how much of its cache to reuse.
    fn choose(&mut self, prompt: &[LlamaToken], reuse: bool) -> pool::Choice {
        let window = self.settings.window;
        let mut candidates = Vec::new();
        for i in 0..self.seqs.len() {
            if self.seqs[i].live.is_some() {
                continue;
            }
            let pos_min = if reuse && window.is_some() && !self.seqs[i].tokens.is_empty() {
                self.ctx().kv_cache_seq_pos_min(i as i32)
            } else {
                0
            };
            let s = &self.seqs[i];
            candidates.push(Candidate {
                seq: i,
                cached: s.tokens.len(),
                reusable: if reuse {
                    pool::reusable_prefix(&s.tokens, s.exact, prompt, window, pos_min)
                } else {
                    0
                },
                last_used: s.last_used,
            });
        }
        pool::choose_sequence(&candidates)
            .expect("a free sequence exists when fewer slots than sequences run")
    }

    /// Moves cached sequence `seq` to the RAM tier (when it has room for
    /// it) and empties its cells.
    fn spill(&mut self, seq: usize) {
        self.save(seq);
        self.clear_sequence(seq);
    }

    /// Copies cached sequence `seq` into the RAM tier, leaving it in the
    /// pool.
    fn save(&mut self, seq: usize) {
        if self.kept.tier.budget() == 0 || self.seqs[seq].tokens.is_empty() {
            return;
        }
        let pos_min = self.ctx().kv_cache_seq_pos_min(seq as i32);
        let Some(state) = seq_state(self.ctx(), seq) else {
            return;
        };
        let s = &self.seqs[seq];
        self.kept.tier.put(pool::Spilled {
            tokens: s.tokens.clone(),
            exact: s.exact,
            pos_min,
            bytes: state.len() as u64,
            state,
            last_used: s.last_used,
        });
    }

    /// Before a new conversation starts on `choice.seq`: with a RAM tier,
    /// every other cached sequence moves to it (so the pool's used cells stay
    /// together: attention reads every cell up to the highest one in use),
    /// and so does what `choice.seq` held beyond the prefix it keeps. Then
    /// a conversation this prompt continues further than the pool could
    /// comes back into `choice.seq`: from the disk tier if it has the one
    /// that goes furthest, else from the RAM tier. Returns the choice to
    /// take.
    fn compact_and_restore(
        &mut self,
        choice: pool::Choice,
        prompt: &[LlamaToken],
        reuse: bool,
        out: &mut impl Write,
    ) -> Result<pool::Choice, WorkerError> {
        // Without a tier, moving them out would lose them: they stay.
        for other in 0..self.seqs.len() {
            let s = &self.seqs[other];
            if self.kept.tier.budget() > 0
                && other != choice.seq
                && s.live.is_none()
                && !s.tokens.is_empty()
            {
                self.spill(other);
            }
        }
        if self.seqs[choice.seq].tokens.len() > choice.reuse {
            self.save(choice.seq);
        }
        if !reuse {
            return Ok(choice);
        }
        if let Some(taken) = self.restore_from_disk(choice, prompt, out)? {
            return Ok(taken);
        }
        let Some((entry, restored)) =
            self.kept
                .tier
                .take_best(prompt, self.settings.window, choice.reuse)
        else {
            return Ok(choice);
        };
        let seq = choice.seq;
        self.clear_sequence(seq);
        if self.free_cells() < entry.tokens.len() || !set_seq_state(self.ctx(), &entry.state, seq) {
            // No room for it now (or llama.cpp refused it): the prompt
            // starts over on an empty sequence; the entry is gone.
            let _ = self.ctx().clear_kv_cache_seq(Some(seq as u32), None, None);
            return Ok(pool::Choice { seq, reuse: 0 });
        }
        self.kept.ram_restores += 1;
        self.seqs[seq].hold(entry.tokens, entry.exact);
        Ok(pool::Choice {
            seq,
            reuse: restored,
        })
    }

    /// Opens the disk tier the load asks for, indexing its directory; the
    /// files it deletes are reported.
    fn open_disk_tier(
        &mut self,
        load: &LoadRequest,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        let (Some(dir), Some(sha256)) = (&load.disk_cache_dir, &load.model_sha256) else {
            return Ok(());
        };
        if load.disk_cache_bytes == 0 {
            return Ok(());
        }
        let expected = disk::Expected {
            model_sha256: sha256.clone(),
            engine: engine_description(),
            kv_type: load.kv_type,
            layout: disk::Layout::WORKER,
        };
        match DiskTier::open(dir, load.disk_cache_bytes, expected) {
            Ok((tier, rejected)) => {
                self.kept.disk = Some(tier);
                self.report_rejected(rejected, out)
            }
            Err(e) => error(
                out,
                None,
                ErrorKind::DiskCache,
                format!(
                    "the disk tier is off: {} cannot be used: {e}",
                    dir.display()
                ),
            ),
        }
    }

    fn report_rejected(
        &mut self,
        rejected: Vec<disk::Rejection>,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        for r in rejected {
            self.kept.disk_rejected += 1;
            error(out, None, ErrorKind::DiskCache, r.to_string())?;
        }
        Ok(())
    }

    /// The stored conversation `prompt` continues further than `choice`
    /// and the RAM tier do: its index in the disk tier, the prompt tokens it
    /// gives, and the tokens it holds. Files other workers of the model
    /// wrote since the last look are indexed first.
    fn disk_candidate(
        &mut self,
        choice: pool::Choice,
        prompt: &[LlamaToken],
        out: &mut impl Write,
    ) -> Result<Option<(usize, usize, usize)>, WorkerError> {
        let Some(disk) = self.kept.disk.as_mut() else {
            return Ok(None);
        };
        let rejected = disk.rescan();
        self.report_rejected(rejected, out)?;
        let ram = self
            .kept
            .tier
            .best_reuse(prompt, self.settings.window, choice.reuse)
            .unwrap_or(0);
        let ids: Vec<i32> = prompt.iter().map(|t| t.0).collect();
        let disk = self.kept.disk.as_ref().expect("checked above");
        Ok(disk
            .best(&ids, self.settings.window, choice.reuse.max(ram))
            .map(|(i, reuse)| (i, reuse, disk.entries()[i].tokens.len())))
    }

    /// Cells live sequences hold.
    fn live_cells(&self) -> usize {
        self.seqs
            .iter()
            .filter(|s| s.live.is_some())
            .map(|s| s.tokens.len())
            .sum()
    }

    /// Whether request `id` must wait before it starts: a stored
    /// conversation it continues holds more tokens than the pool can free,
    /// and the pool may grow. The first time, this asks the parent for
    /// growth (`PoolFull`); the request then waits for the answer, once.
    fn wait_for_disk_room(
        &mut self,
        id: u64,
        choice: pool::Choice,
        prompt: &[LlamaToken],
        out: &mut impl Write,
    ) -> Result<bool, WorkerError> {
        if self.disk_growth == Some(id) {
            // Asked already: wait for the answer, then go on with what
            // there is.
            return Ok(self.growth_pending);
        }
        if self.growth_pending || self.pool_cells >= self.settings.pool_max {
            return Ok(false);
        }
        let Some((_, _, tokens)) = self.disk_candidate(choice, prompt, out)? else {
            return Ok(false);
        };
        let live = self.live_cells();
        let room = (self.pool_cells as usize).saturating_sub(live);
        if tokens <= room || live + tokens > self.settings.pool_max as usize {
            return Ok(false);
        }
        // `needed` is beyond the `room` the pool can free; as the pool's
        // own shortage is beyond a full pool, the suggestion is the pool
        // plus it (at least half again).
        let needed = u32::try_from(tokens - room).unwrap_or(u32::MAX);
        let live = u32::try_from(live).unwrap_or(u32::MAX);
        self.growth_pending = true;
        self.disk_growth = Some(id);
        write_frame(
            out,
            &Event::PoolFull {
                needed_cells: needed,
                pool_cells: self.pool_cells,
                used_cells: live,
                pool_max_cells: self.settings.pool_max,
                suggested_cells: pool::suggest_growth(
                    self.pool_cells,
                    self.pool_cells,
                    needed,
                    self.settings.pool_max,
                ),
                waiting: 1,
            },
        )?;
        Ok(true)
    }

    /// Restores the stored conversation `prompt` continues furthest into
    /// `choice.seq`, if the disk tier has one that beats the pool and the
    /// RAM tier and the pool can make room for it. `None`: nothing was
    /// touched. A file that fails its checks is deleted and reported; so is
    /// one llama.cpp refuses, and then the sequence is left empty.
    fn restore_from_disk(
        &mut self,
        choice: pool::Choice,
        prompt: &[LlamaToken],
        out: &mut impl Write,
    ) -> Result<Option<pool::Choice>, WorkerError> {
        let Some((i, reuse, tokens)) = self.disk_candidate(choice, prompt, out)? else {
            return Ok(None);
        };
        // Every cell but the live sequences' may be had.
        if tokens > (self.pool_cells as usize).saturating_sub(self.live_cells()) {
            return Ok(None);
        }
        let disk = self.kept.disk.as_mut().expect("a candidate came from it");
        let (entry, state) = match disk.read(i) {
            Ok(read) => read,
            Err(rejected) => {
                self.report_rejected(vec![rejected], out)?;
                return Ok(None);
            }
        };
        let seq = choice.seq;
        self.clear_sequence(seq);
        self.make_room(tokens);
        if self.free_cells() < tokens || !set_seq_state(self.ctx(), &state, seq) {
            let _ = self.ctx().clear_kv_cache_seq(Some(seq as u32), None, None);
            if let Some(disk) = self.kept.disk.as_mut() {
                disk.forget(&entry.path);
            }
            self.kept.disk_rejected += 1;
            error(
                out,
                None,
                ErrorKind::DiskCache,
                format!(
                    "K/V cache file {} skipped and deleted: llama.cpp refused its state",
                    entry.path.display()
                ),
            )?;
            return Ok(Some(pool::Choice { seq, reuse: 0 }));
        }
        self.kept.disk_restores += 1;
        self.seqs[seq].hold(
            entry.tokens.into_iter().map(LlamaToken).collect(),
            entry.exact,
        );
        Ok(Some(pool::Choice { seq, reuse }))
    }

    /// Writes every cached conversation, in the pool and in the RAM tier, to
    /// the disk tier, the most recently used first (a parent that kills the
    /// worker mid-way loses the oldest): on the way out, and before memory
    /// pressure drops them. Failures are reported; none stops the exit.
    fn write_disk_tier(&mut self, out: &mut impl Write) {
        let Some(mut disk) = self.kept.disk.take() else {
            return;
        };
        self.write_to_disk(&mut disk, out);
        self.kept.disk = Some(disk);
    }

    fn write_to_disk(&mut self, disk: &mut DiskTier, out: &mut impl Write) {
        enum Held {
            Pool(usize),
            Ram(usize),
        }
        let mut order: Vec<(u64, Held)> = self
            .cached()
            .into_iter()
            .map(|h| (h.last_used, Held::Pool(h.seq)))
            .chain(
                self.kept
                    .tier
                    .entries()
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.last_used, Held::Ram(i))),
            )
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        WRITING_DISK_TIER.store(true, Ordering::SeqCst);
        let mut space = match locara_platform::disk_space(disk.dir()) {
            Ok(space) => space,
            Err(e) => {
                let _ = error(out, None, ErrorKind::DiskCache, e.to_string());
                WRITING_DISK_TIER.store(false, Ordering::SeqCst);
                return;
            }
        };
        let now = SystemTime::now();
        let mut left_out = 0;
        for (rank, (_, held)) in order.into_iter().enumerate() {
            let pool_state;
            let (tokens, exact, pos_min, state): (&[LlamaToken], usize, i32, &[u8]) = match held {
                Held::Pool(seq) => {
                    let Some(state) = seq_state(self.ctx(), seq) else {
                        continue;
                    };
                    pool_state = state;
                    let pos_min = self.ctx().kv_cache_seq_pos_min(seq as i32);
                    let s = &self.seqs[seq];
                    (&s.tokens, s.exact, pos_min, &pool_state)
                }
                Held::Ram(i) => {
                    let e = &self.kept.tier.entries()[i];
                    (&e.tokens, e.exact, e.pos_min, &e.state)
                }
            };
            let expected = disk.expected();
            let header = disk::Header {
                model_sha256: expected.model_sha256.clone(),
                engine: expected.engine.clone(),
                kv_type: expected.kv_type,
                layout: expected.layout,
                context: self.settings.context,
                parallel: self.settings.parallel as u32,
                tokens: tokens.iter().map(|t| t.0).collect(),
                exact: exact as u32,
                pos_min,
                payload_bytes: state.len() as u64,
            };
            // The order of use survives in the files' mtimes.
            let used = now - Duration::from_millis(rank as u64);
            match disk.write(&header, state, used, &mut space) {
                Ok(true) => {}
                Ok(false) => left_out += 1,
                Err(e) => {
                    // The disk is full or failing: the rest would fail too.
                    let _ = error(out, None, ErrorKind::DiskCache, e.to_string());
                    break;
                }
            }
        }
        if left_out > 0 {
            let _ = error(
                out,
                None,
                ErrorKind::DiskCache,
                format!(
                    "{left_out} conversations were not written to {}: they do not fit in its cap of \
                     {} bytes, or would leave less than {} bytes of the disk free",
                    disk.dir().display(),
                    disk.cap(),
                    disk::free_floor(space.total)
                ),
            );
        }
        WRITING_DISK_TIER.store(false, Ordering::SeqCst);
    }

    /// Puts `slot` on the chosen sequence: its cells after the reused
    /// prefix go, the prompt continues after it.
    fn take_sequence(&mut self, choice: pool::Choice, slot: &mut Slot) {
        let seq = choice.seq;
        let mut reuse = choice.reuse;
        if reuse > 0
            && self
                .ctx()
                .kv_cache_seq_rm(seq as i32, Some(reuse as u32), None)
                .is_err()
        {
            // A cache that cannot drop a suffix (a recurrent one) starts over.
            reuse = 0;
        }
        if reuse == 0 {
            self.clear_sequence(seq);
        }
        let now = self.tick();
        let s = &mut self.seqs[seq];
        s.tokens.truncate(reuse);
        s.exact = s.exact.min(reuse);
        s.follow_up = None;
        s.live = Some(slot.id);
        s.last_used = now;
        slot.seq = seq;
        slot.prompt_done = reuse;
        slot.cached = reuse as u32;
        self.kept.reused_total += reuse as u64;
    }

    fn render(
        &self,
        messages: &[ChatMessage],
        add_ass: bool,
    ) -> Result<String, (ErrorKind, String)> {
        let template = match &self.settings.chat_template {
            ChatTemplate::Model => self.model.chat_template(None).map_err(|e| {
                (
                    ErrorKind::ChatTemplate,
                    format!(
                        "this model's chat template is unusable ({e}); send a raw prompt instead"
                    ),
                )
            })?,
            ChatTemplate::Builtin { name, .. } => {
                LlamaChatTemplate::new(name).expect("built-in template names have no NUL byte")
            }
        };
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                (
                    ErrorKind::BadRequest,
                    "a chat message contains a NUL byte".to_string(),
                )
            })?;
        self.model
            .apply_chat_template(&template, &msgs, add_ass)
            .map_err(|e| {
                (
                    ErrorKind::ChatTemplate,
                    format!("llama.cpp cannot apply this model's chat template: {e}"),
                )
            })
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Tokens of the leading system message(s) at the start of `prompt`:
    /// what a context shift keeps by default.
    fn system_prefix(&self, messages: &[ChatMessage], prompt: &[LlamaToken]) -> usize {
        let n_sys = messages.iter().take_while(|m| m.role == "system").count();
        if n_sys == 0 {
            return 0;
        }
        // Most templates render system messages on their own...
        if let Ok(text) = self.render(&messages[..n_sys], false) {
            let tokens = self.tokenize(&text);
            let n = pool::common_prefix(&tokens, prompt);
            if !text.is_empty() && n == tokens.len() {
                return n;
            }
        }
        // ... others fold them into the first user turn (Gemma's renders
        // nothing for a system message alone): then it is the prompt up to
        // where the user's own text begins.
        let mut with_user = messages[..n_sys].to_vec();
        with_user.push(ChatMessage {
            role: "user".into(),
            content: CONTENT_MARKER.into(),
        });
        match self.render(&with_user, false) {
            Ok(text) => match text.find(CONTENT_MARKER) {
                Some(at) => pool::common_prefix(&self.tokenize(&text[..at]), prompt),
                None => 0,
            },
            Err(_) => 0,
        }
    }

    /// Tokenizes a request into a slot (not yet on a sequence).
    fn prepare(&self, req: GenerateRequest) -> Result<Slot, (ErrorKind, String)> {
        let started = Instant::now();
        let context = self.settings.context as usize;
        // Room a too-long chat keeps for the answer when it drops messages:
        // max_tokens, at most a quarter of the context.
        let answer_room = (req.max_tokens.unwrap_or(u32::MAX) as usize)
            .min(context / 4)
            .max(1);
        // The system prefix matters only to a shift; finding it renders the
        // template twice more, so only where a shift may happen.
        let shifts = req.truncate && self.settings.can_shift;
        let (prompt, system, dropped, conversation) = match &req.prompt {
            Prompt::Raw { text } => (self.tokenize(text), 0, 0, None),
            Prompt::Chat { messages } => {
                let n_sys = messages.iter().take_while(|m| m.role == "system").count();
                let mut messages = messages.clone();
                let mut dropped = 0u32;
                let prompt = loop {
                    let prompt = self.tokenize(&self.render(&messages, true)?);
                    // Keep the system messages and the last message.
                    if !req.truncate
                        || prompt.len() + answer_room <= context
                        || messages.len() <= n_sys + 1
                    {
                        break prompt;
                    }
                    // Drop the oldest message after the system ones, and an
                    // answer it leaves at the front, so the history still
                    // opens with a user turn.
                    messages.remove(n_sys);
                    dropped += 1;
                    while messages.len() > n_sys + 1 && messages[n_sys].role == "assistant" {
                        messages.remove(n_sys);
                        dropped += 1;
                    }
                };
                let system = if shifts && req.n_keep.is_none() {
                    self.system_prefix(&messages, &prompt)
                } else {
                    0
                };
                let conversation = self.settings.can_draft.then(|| (messages, String::new()));
                (prompt, system, dropped, conversation)
            }
        };
        if prompt.is_empty() {
            return Err((ErrorKind::BadRequest, "the prompt is empty".to_string()));
        }
        if prompt.len() >= context {
            return Err((
                ErrorKind::PromptTooLong,
                format!(
                    "the prompt is {} tokens; the context holds {} (and the answer needs room){}",
                    prompt.len(),
                    self.settings.context,
                    if dropped > 0 {
                        format!(" even after leaving out its {dropped} oldest messages")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        // The BOS token is always kept: models answer badly without it.
        let bos = usize::from(prompt.first() == Some(&self.model.vocab().bos()));
        let n_keep = req
            .n_keep
            .map_or(system, |k| k as usize)
            .max(bos)
            .min(prompt.len());
        let room = self.settings.context - prompt.len() as u32;
        // Without shifts a sequence ends at its context; with them only
        // max_tokens ends it ("None" still means: until the context is full).
        let max_tokens = match req.max_tokens {
            Some(n) if shifts => n,
            Some(n) => n.min(room),
            None => room,
        };
        // The frequency and presence penalties count the whole answer.
        let picker = Picker::new(
            self.model,
            &req.sampling,
            max_tokens.min(self.settings.context),
        )?;
        let speculative =
            req.speculative && self.settings.can_draft && matches!(picker, Picker::Greedy);
        Ok(Slot {
            id: req.id,
            seq: 0,
            prompt,
            prompt_done: 0,
            next: None,
            logits_at: None,
            held: false,
            picker,
            logprobs: req.sampling.logprobs,
            utf8: encoding_rs::UTF_8.new_decoder(),
            stop: StopMatcher::new(&req.stop),
            max_tokens,
            generated: 0,
            n_keep,
            truncate: req.truncate,
            cache_prompt: req.cache_prompt,
            cached: 0,
            shifted: 0,
            dropped_messages: dropped,
            started,
            first_token: None,
            speculative,
            draft_length: DraftLength::default(),
            drafts: Vec::new(),
            draft_at: Vec::new(),
            draft_base: 0,
            counts: DraftCounts::default(),
            conversation,
        })
    }

    /// The tokens a finished chat's next prompt will have after `held`,
    /// the tokens its sequence holds, that may be decoded ahead
    /// ([`FollowUp`], [`pool::follow_up_len`]): its conversation with the
    /// answer and a next user message is rendered and tokenized up to that
    /// message's text. None unless `held` is how that starts (a template
    /// that trims or rewrites the answer, or a tokenizer that splits it
    /// otherwise, leaves nothing certain to decode).
    fn follow_up(
        &self,
        mut messages: Vec<ChatMessage>,
        answer: String,
        held: &[LlamaToken],
    ) -> Vec<LlamaToken> {
        for (role, content) in [("assistant", answer), ("user", CONTENT_MARKER.to_string())] {
            messages.push(ChatMessage {
                role: role.into(),
                content,
            });
        }
        let Ok(rendered) = self.render(&messages, false) else {
            return Vec::new();
        };
        let Some(at) = rendered.find(CONTENT_MARKER) else {
            return Vec::new();
        };
        let tokens = self.tokenize(&rendered[..at]);
        if tokens.len() <= held.len() || !tokens.starts_with(held) {
            return Vec::new();
        }
        let next = &tokens[held.len()..];
        let vocab = self.model.vocab();
        next[..pool::follow_up_len(next, |t| vocab.is_control(t))].to_vec()
    }

    /// Shifts slot `i`'s sequence: its first `n_keep` tokens stay, the
    /// oldest half of the rest goes, later positions move back. Returns the
    /// tokens discarded, `None` if it cannot shift.
    fn shift(&mut self, i: usize) -> Option<usize> {
        if !(self.settings.can_shift && self.slots[i].truncate) {
            return None;
        }
        let seq = self.slots[i].seq;
        let len = self.seqs[seq].tokens.len();
        let shift = pool::context_shift(len, self.slots[i].n_keep)?;
        let (keep, discard) = (shift.keep, shift.discard);
        let ctx = self.ctx();
        ctx.kv_cache_seq_rm(seq as i32, Some(keep as u32), Some((keep + discard) as u32))
            .ok()?;
        ctx.kv_cache_seq_add(
            seq as i32,
            Some((keep + discard) as u32),
            Some(len as u32),
            -(discard as i32),
        )
        .ok()?;
        let s = &mut self.seqs[seq];
        s.tokens.drain(keep..keep + discard);
        s.exact = s.exact.min(keep);
        self.slots[i].shifted += discard as u32;
        self.kept.shifted_total += discard as u64;
        Some(discard)
    }

    /// Decodes one batch and samples one token for each slot that got
    /// logits. Returns whether anything happened; `false` means every
    /// running generation waits for the parent (a PoolFull answer).
    fn step(&mut self, out: &mut impl Write) -> Result<bool, WorkerError> {
        let capacity = self.batch_capacity();
        self.batch.clear();
        // Cells the generations that wait for room are short of.
        let mut short = 0usize;
        // Running generations first: their next token costs one cell each.
        // Placed tokens join their sequence at once, so the free count
        // below always reflects this batch too.
        let running = self.slots.iter().filter(|s| s.next.is_some()).count();
        let mut free = self.make_room(running);
        for slot in self.slots.iter_mut() {
            slot.logits_at = None;
            slot.held = false;
            slot.drafts.clear();
            slot.draft_at.clear();
            let Some(tok) = slot.next else { continue };
            if free == 0 {
                slot.held = true;
                short += 1;
                continue;
            }
            let seq = &mut self.seqs[slot.seq];
            let at = self.batch.n_tokens();
            slot.draft_base = seq.tokens.len();
            self.batch
                .add(tok, seq.tokens.len() as i32, &[slot.seq as i32], true)
                .expect("the batch holds one token per sequence");
            seq.push(tok);
            free -= 1;
            slot.logits_at = Some(at);
        }
        // Then prompt chunks, as much as the batch and the pool have room for.
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.next.is_some() || slot.prompt_done == slot.prompt.len() {
                continue;
            }
            let room = capacity - self.batch.n_tokens() as usize;
            if room == 0 {
                break;
            }
            let want = (slot.prompt.len() - slot.prompt_done).min(room);
            if free < want {
                free = self.make_room(want);
            }
            let slot = &mut self.slots[i];
            let n = want.min(free);
            if n < want {
                slot.held = true;
                short += want - n;
            }
            let seq = &mut self.seqs[slot.seq];
            for _ in 0..n {
                let p = slot.prompt_done;
                let last = p + 1 == slot.prompt.len();
                let at = self.batch.n_tokens();
                self.batch
                    .add(
                        slot.prompt[p],
                        seq.tokens.len() as i32,
                        &[slot.seq as i32],
                        last,
                    )
                    .expect("the batch was sized to its capacity");
                seq.push(slot.prompt[p]);
                slot.prompt_done += 1;
                if last {
                    slot.logits_at = Some(at);
                }
            }
            free -= n;
        }
        self.place_drafts(capacity, free);
        let followed = self.place_follow_ups(capacity);
        if self.batch.n_tokens() == 0 {
            // Nothing fits: everything waits for room.
            return if short > 0 {
                self.pool_full(short, out)
            } else {
                Ok(false)
            };
        }
        let decoded = crate::cpu::decode(
            self.ctx.as_mut().expect("the pool exists outside a resize"),
            &mut self.batch,
            self.kept.class,
            self.settings.shape.threads,
        );
        if let Err(e) = decoded {
            for seq in followed {
                self.clear_sequence(seq);
            }
            // Every generation in the batch is lost; tell each of them.
            let lost: Vec<(u64, usize)> = self.slots.drain(..).map(|s| (s.id, s.seq)).collect();
            for &(id, seq) in &lost {
                self.clear_sequence(seq);
                self.seqs[seq].live = None;
                error(
                    out,
                    Some(id),
                    ErrorKind::DecodeFailed,
                    format!("llama.cpp failed to decode: {e}"),
                )?;
            }
            return Ok(true);
        }

        let mut i = 0;
        while i < self.slots.len() {
            let Some(at) = self.slots[i].logits_at else {
                i += 1;
                continue;
            };
            self.slots[i].counts.steps += 1;
            // The model's token after `next`, then, while it is the drafted
            // one, the token after that draft (already in the batch), and
            // so on: each is the argmax after the tokens before it, as
            // decoding one at a time would pick.
            let mut accepted = 0;
            let (token, mut finish) = loop {
                let at = if accepted == 0 {
                    at
                } else {
                    self.slots[i].draft_at[accepted - 1]
                };
                let token = {
                    let ctx = self.ctx.as_ref().expect("the pool exists outside a resize");
                    self.slots[i].picker.pick(ctx, at)
                };
                let finish = self.emit(i, token, at, out)?;
                let slot = &self.slots[i];
                if finish.is_some()
                    || accepted == slot.drafts.len()
                    || token != slot.drafts[accepted]
                {
                    break (token, finish);
                }
                accepted += 1;
            };
            self.settle_drafts(i, accepted);
            let slot = &mut self.slots[i];
            if finish.is_none() {
                slot.next = Some(token);
                // The next token needs a position inside the sequence's
                // context: shift to make one, or end there.
                if self.seqs[slot.seq].tokens.len() >= self.settings.context as usize
                    && self.shift(i).is_none()
                {
                    finish = Some(FinishReason::Length);
                }
            }
            match finish {
                // `finish` removes slot i; the next one moves into its place.
                Some(reason) => self.finish(i, reason, out)?,
                None => i += 1,
            }
        }
        // Only now, with no token of theirs in flight, may waiting
        // sequences be shifted.
        if short > 0 {
            self.pool_full(short, out)?;
        }
        // The last answer has ended: its follow-up is decoded now, before
        // the next message is read (while others run, it joins their next
        // batch instead).
        if self.slots.is_empty() && self.follow_ups_due() {
            self.step(out)?;
        }
        Ok(true)
    }

    /// Reports `token`, drawn for slot `i` from the logits at batch index
    /// `at`: its log-probabilities, its text (through the stop strings), and
    /// whether it ends the generation (an end token, a stop string,
    /// `max_tokens`).
    fn emit(
        &mut self,
        i: usize,
        token: LlamaToken,
        at: i32,
        out: &mut impl Write,
    ) -> Result<Option<FinishReason>, WorkerError> {
        let slot = &mut self.slots[i];
        let now = Instant::now();
        slot.first_token.get_or_insert(now);
        slot.generated += 1;
        self.kept.generated_total += 1;
        let vocab = self.model.vocab();
        if let (Some(top), false) = (slot.logprobs, vocab.is_eog(token)) {
            let ctx = self.ctx.as_ref().expect("the pool exists outside a resize");
            let tokens = vec![token_logprobs(
                self.model,
                ctx.get_logits_ith(at),
                token,
                top,
            )];
            write_frame(
                out,
                &Event::Logprobs {
                    id: slot.id,
                    tokens,
                },
            )?;
        }
        let mut finish = None;
        if vocab.is_eog(token) {
            finish = Some(FinishReason::Stop);
        } else {
            let bytes = vocab.token_to_piece(token, false, None);
            let mut piece = String::with_capacity(bytes.len() + 4);
            let _ = slot.utf8.decode_to_string(&bytes, &mut piece, false);
            match slot.stop.push(&piece) {
                StopStep::Emit(text) => {
                    if !text.is_empty() {
                        if let Some((_, answer)) = slot.conversation.as_mut() {
                            answer.push_str(&text);
                        }
                        write_frame(out, &Event::Token { id: slot.id, text })?;
                    }
                }
                StopStep::Stop(text) => {
                    if !text.is_empty() {
                        write_frame(out, &Event::Token { id: slot.id, text })?;
                    }
                    finish = Some(FinishReason::Stop);
                }
            }
            if finish.is_none() && slot.generated >= slot.max_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        Ok(finish)
    }

    /// Drafts tokens for the running generations that may
    /// ([`Slot::speculative`]) and places them in the batch after their
    /// next token, each with its own logits. Drafts come last, so they use
    /// only what the running tokens and the prompt chunks left of the batch
    /// and of the free cells (`free`): drafting never holds up a prompt or
    /// drops a cached sequence. A draft stays inside its sequence's context
    /// and never reaches past `max_tokens`. The drafted tokens carry only
    /// their own sequence's id, so in the unified pool no other sequence
    /// attends to them, and [`Engine::settle_drafts`] removes the rejected
    /// ones before the next decode.
    fn place_drafts(&mut self, capacity: usize, mut free: usize) {
        let mut budget = draft::MAX_DRAFTS_PER_BATCH;
        // The draft model drafts for one generation at a time; it is free
        // again once that one has finished.
        if let Some(d) = self.drafter.as_mut() {
            if d.owner
                .is_some_and(|o| !self.slots.iter().any(|s| s.id == o))
            {
                d.owner = None;
            }
        }
        for slot in self.slots.iter_mut() {
            if !slot.speculative || slot.logits_at.is_none() || slot.next.is_none() {
                continue;
            }
            let room = capacity.saturating_sub(self.batch.n_tokens() as usize);
            let seq = &mut self.seqs[slot.seq];
            // Tokens the answer may still have after `next`'s successor.
            let answer_left = slot.max_tokens.saturating_sub(slot.generated + 1) as usize;
            let context_left = (self.settings.context as usize).saturating_sub(seq.tokens.len());
            let most = room
                .min(free)
                .min(budget)
                .min(answer_left)
                .min(context_left)
                .min(self.settings.draft_cap);
            if most == 0 || slot.draft_length.paused() {
                // A paused generation's step still counts down.
                slot.draft_length.want();
                continue;
            }
            let want = slot.draft_length.want().min(most);
            let by_model = self
                .drafter
                .as_mut()
                .filter(|d| d.owner.is_none_or(|o| o == slot.id));
            if let Some(d) = by_model {
                d.owner = Some(slot.id);
                match d.propose(
                    self.backend,
                    &seq.tokens,
                    want,
                    self.kept.class,
                    self.settings.shape.threads,
                ) {
                    Ok(proposed) => slot.drafts = proposed,
                    Err(e) => {
                        // The answer goes on without the draft model, and
                        // with prompt lookup from the next step.
                        eprintln!("locara engine: draft model turned off: {e}");
                        self.drafter = None;
                    }
                }
            } else {
                let found = draft::lookup(&seq.tokens, draft::NGRAM_MIN, draft::NGRAM_MAX, want);
                slot.drafts.extend_from_slice(found);
            }
            if slot.drafts.is_empty() {
                continue;
            }
            for &tok in &slot.drafts {
                let at = self.batch.n_tokens();
                self.batch
                    .add(tok, seq.tokens.len() as i32, &[slot.seq as i32], true)
                    .expect("drafts fit the room left in the batch");
                seq.push(tok);
                slot.draft_at.push(at);
            }
            free -= slot.drafts.len();
            budget -= slot.drafts.len();
        }
    }

    /// Whether a finished conversation's follow-up may be decoded now: one
    /// is due, the pool exists, and no request waits for a sequence
    /// (requests come first).
    fn follow_ups_due(&self) -> bool {
        self.queue.is_empty()
            && self.ctx.is_some()
            && self.asleep.is_none()
            && self.seqs.iter().any(Sequence::follow_up_due)
    }

    /// Forgets the follow-ups not decoded yet: a resize or a dropped tier
    /// means memory is short (or the pool is being made again), and a
    /// follow-up decoded after its conversation was written to the disk
    /// tier would leave that file behind the pool.
    fn drop_follow_ups(&mut self) {
        for s in &mut self.seqs {
            s.follow_up = None;
        }
    }

    /// Places the due follow-ups ([`FollowUp`]) in what the batch and the
    /// free cells have left, without logits: nothing is sampled after
    /// them. A follow-up never makes room for itself by dropping a cached
    /// sequence; one the free cells (or an empty batch) cannot take is
    /// dropped, one the batch has no room for this step waits for the
    /// next. Returns the sequences that got theirs.
    fn place_follow_ups(&mut self, capacity: usize) -> Vec<usize> {
        let mut placed = Vec::new();
        if !self.queue.is_empty() {
            return placed;
        }
        let mut free = self.free_cells();
        for (i, seq) in self.seqs.iter_mut().enumerate() {
            if !seq.follow_up_due() {
                seq.follow_up = None;
                continue;
            }
            let room = capacity.saturating_sub(self.batch.n_tokens() as usize);
            let f = seq.follow_up.take().expect("a due follow-up is there");
            if f.tokens.len() > free.min(capacity) {
                continue;
            }
            if f.tokens.len() > room {
                seq.follow_up = Some(f);
                continue;
            }
            for &tok in &f.tokens {
                self.batch
                    .add(tok, seq.tokens.len() as i32, &[i as i32], false)
                    .expect("the follow-up fits the room left in the batch");
                seq.push(tok);
            }
            free -= f.tokens.len();
            placed.push(i);
        }
        placed
    }

    /// After slot `i`'s step: its first `accepted` drafts were the model's
    /// own tokens and stay; the cells of the others leave the pool, so the
    /// sequence holds what decoding one token at a time would have put
    /// there.
    fn settle_drafts(&mut self, i: usize, accepted: usize) {
        let slot = &mut self.slots[i];
        if slot.drafts.is_empty() {
            return;
        }
        let proposed = slot.drafts.len();
        slot.draft_length.record(proposed, accepted);
        slot.counts.proposed += proposed as u32;
        slot.counts.accepted += accepted as u32;
        let keep = slot.draft_base + 1 + accepted;
        let seq_id = slot.seq;
        let seq = &mut self.seqs[seq_id];
        if seq.tokens.len() > keep {
            seq.tokens.truncate(keep);
            seq.exact = seq.exact.min(keep);
            // llama.cpp refuses to remove part of a sequence only from a
            // recurrent model's state, and those never draft (`can_draft`).
            let _ = self
                .ctx
                .as_mut()
                .expect("the pool exists outside a resize")
                .kv_cache_seq_rm(seq_id as i32, Some(keep as u32), None);
        }
    }

    /// Most tokens one decode may take: llama.cpp's batch, which it caps at
    /// the pool size.
    fn batch_capacity(&self) -> usize {
        self.ctx.as_ref().map_or(0, |c| c.n_batch() as usize)
    }

    /// Live sequences are `short` cells short of a full pool. Asks the
    /// parent for growth (once per shortage), or, at the cap, acts as if it
    /// were refused. Returns whether anything changed.
    fn pool_full(&mut self, short: usize, out: &mut impl Write) -> Result<bool, WorkerError> {
        if self.pool_cells >= self.settings.pool_max {
            self.deny_growth(out)?;
            return Ok(true);
        }
        if self.growth_pending {
            return Ok(false);
        }
        self.growth_pending = true;
        let used = self.used_cells() as u32;
        let needed = u32::try_from(short).unwrap_or(u32::MAX);
        write_frame(
            out,
            &Event::PoolFull {
                needed_cells: needed,
                pool_cells: self.pool_cells,
                used_cells: used,
                pool_max_cells: self.settings.pool_max,
                suggested_cells: pool::suggest_growth(
                    self.pool_cells,
                    used,
                    needed,
                    self.settings.pool_max,
                ),
                waiting: self.slots.iter().filter(|s| s.held).count() as u32,
            },
        )?;
        Ok(false)
    }

    /// Growth refused (or impossible): each generation waiting for room
    /// shifts its own context, or ends.
    fn deny_growth(&mut self, out: &mut impl Write) -> Result<(), WorkerError> {
        self.growth_pending = false;
        let waiting: Vec<u64> = self.slots.iter().filter(|s| s.held).map(|s| s.id).collect();
        for id in waiting {
            let Some(i) = self.slots.iter().position(|s| s.id == id) else {
                continue;
            };
            if self.shift(i).is_some() {
                self.slots[i].held = false;
                continue;
            }
            let why = if !self.settings.can_shift {
                "this model cannot shift its context (sliding-window or recurrent layers)"
            } else if !self.slots[i].truncate {
                "the request does not allow truncation"
            } else {
                "its sequence holds nothing a shift could drop"
            };
            let message = format!(
                "the K/V pool is full ({} of {} cells held by {} generations) and may not grow{}; {why}",
                self.used_cells(),
                self.pool_cells,
                self.slots.len(),
                if self.pool_cells >= self.settings.pool_max {
                    format!(" past its cap of {} cells", self.settings.pool_max)
                } else {
                    String::new()
                },
            );
            let slot = self.slots.swap_remove(i);
            let now = self.tick();
            let s = &mut self.seqs[slot.seq];
            s.live = None;
            s.last_used = now;
            error(out, Some(id), ErrorKind::PoolExhausted, message)?;
        }
        Ok(())
    }

    /// Frees the whole pool of an idle worker. Its report waits
    /// ([`Engine::report_sleep`]): where nothing else comes first, the
    /// worker sets the models aside too ([`serve_parked`]) and reports then.
    fn sleep(&mut self, out: &mut impl Write) -> Result<(), WorkerError> {
        let started = Instant::now();
        // The cached conversations go to the disk tier first, where there
        // is one: the next turn of a chat comes back from there.
        self.write_disk_tier(out);
        let previous = self.pool_cells;
        let dropped = self.seqs.iter().filter(|s| !s.tokens.is_empty()).count() as u32;
        for s in &mut self.seqs {
            s.forget();
        }
        drop(self.ctx.take());
        if let Some(d) = self.drafter.as_mut() {
            d.sleep();
        }
        give_back_freed_memory();
        self.asleep = Some(previous);
        self.pool_cells = 0;
        self.sleep_report = Some(SleepReport {
            previous,
            dropped,
            started,
        });
        Ok(())
    }

    /// Writes the report of [`Engine::sleep`] if it is still to be written.
    fn report_sleep(&mut self, out: &mut impl Write) -> Result<(), WorkerError> {
        match self.sleep_report.take() {
            Some(r) => r.write(out),
            None => Ok(()),
        }
    }

    /// Makes the pool again after [`Engine::sleep`], at the size it had.
    /// Returns false (and fails the waiting requests) when llama.cpp
    /// cannot.
    fn wake(&mut self, out: &mut impl Write) -> Result<bool, WorkerError> {
        let Some(cells) = self.asleep else {
            return Ok(true);
        };
        self.report_sleep(out)?;
        let started = Instant::now();
        match self
            .model
            .new_context(self.backend, self.settings.shape.params(cells))
        {
            Ok(ctx) => {
                self.pool_cells = ctx.n_ctx();
                self.batch = LlamaBatch::new(ctx.n_batch() as usize, self.settings.parallel as i32);
                self.ctx = Some(ctx);
                self.asleep = None;
                resized_in_place(out, self.pool_cells, 0, 0, started)?;
                Ok(true)
            }
            Err(e) => {
                for req in std::mem::take(&mut self.queue) {
                    error(
                        out,
                        Some(req.id),
                        ErrorKind::ResizeFailed,
                        format!(
                            "llama.cpp could not make the K/V pool of {cells} cells again: {e}"
                        ),
                    )?;
                }
                Ok(false)
            }
        }
    }

    /// Makes the pool `requested` cells (see [`pool::plan_resize`]): every
    /// live sequence and the cached ones that fit move into a new context.
    /// 0 frees an idle pool ([`Engine::sleep`]).
    fn resize(&mut self, requested: u32, out: &mut impl Write) -> Result<(), WorkerError> {
        self.report_sleep(out)?;
        if requested == 0 {
            // Only an idle pool is freed; a busy one stays as it is.
            return if self.slots.is_empty() && self.asleep.is_none() {
                self.sleep(out)
            } else {
                resized_in_place(out, self.pool_cells, self.pool_cells, 0, Instant::now())
            };
        }
        if let Some(cells) = self.asleep.as_mut() {
            // Asleep: the next request makes the pool at this size.
            *cells = requested;
            return resized_in_place(out, 0, 0, 0, Instant::now());
        }
        let started = Instant::now();
        self.growth_pending = false;
        let live: Vec<Held> = self
            .seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live.is_some())
            .map(|(seq, s)| Held {
                seq,
                cells: s.tokens.len(),
                last_used: s.last_used,
            })
            .collect();
        let plan = pool::plan_resize(requested, self.settings.pool_max, &live, &self.cached());
        for &seq in &plan.drop {
            self.spill(seq);
        }
        let previous = self.pool_cells;
        let movers: Vec<usize> = (0..self.seqs.len())
            .filter(|&s| !self.seqs[s].tokens.is_empty())
            .collect();
        let moved_tokens: usize = movers.iter().map(|&s| self.seqs[s].tokens.len()).sum();
        let mut state_bytes = 0u64;
        let mut moved = 0u32;
        if plan.cells != previous {
            // Out of the old pool first, then free it before the new one is
            // made: the peak is the new pool plus the sequences' state, not
            // both pools (the parent's budget granted the new pool).
            let mut states = Vec::with_capacity(movers.len());
            for &seq in &movers {
                match self
                    .ctx()
                    .state_seq_get(seq as i32, LlamaStateSeqFlags::empty())
                {
                    Ok(state) => {
                        state_bytes += state.byte_len() as u64;
                        states.push((seq, state));
                    }
                    Err(_) => self.lose_sequence(seq, out)?,
                }
            }
            drop(self.ctx.take());
            match self
                .model
                .new_context(self.backend, self.settings.shape.params(plan.cells))
            {
                Ok(ctx) => {
                    self.pool_cells = ctx.n_ctx();
                    self.batch =
                        LlamaBatch::new(ctx.n_batch() as usize, self.settings.parallel as i32);
                    self.ctx = Some(ctx);
                    moved = self.restore(states, out)?;
                    self.kept.resizes += 1;
                }
                Err(e) => {
                    // Put the old pool back: the generations go on as before,
                    // and those that waited for room are refused it (asking
                    // again would fail again).
                    let ctx = self
                        .model
                        .new_context(self.backend, self.settings.shape.params(previous))
                        .map_err(|e2| {
                            WorkerError::Backend(format!(
                                "a resize to {} cells failed ({e}) and the pool of {previous} cells could not be made again ({e2})",
                                plan.cells
                            ))
                        })?;
                    self.ctx = Some(ctx);
                    moved = self.restore(states, out)?;
                    error(
                        out,
                        None,
                        ErrorKind::ResizeFailed,
                        format!(
                            "llama.cpp could not make a K/V pool of {} cells ({e}); the pool stays at {previous} cells",
                            plan.cells
                        ),
                    )?;
                    self.deny_growth(out)?;
                }
            }
        }
        write_frame(
            out,
            &Event::Resized {
                cells: self.pool_cells,
                previous_cells: previous,
                moved_sequences: moved,
                moved_tokens: if moved > 0 { moved_tokens as u32 } else { 0 },
                dropped_sequences: plan.drop.len() as u32,
                state_bytes,
                ms: started.elapsed().as_secs_f64() * 1000.0,
            },
        )?;
        Ok(())
    }

    /// Puts saved sequences into the (new) pool; returns how many made it.
    fn restore(
        &mut self,
        states: Vec<(usize, SeqState)>,
        out: &mut impl Write,
    ) -> Result<u32, WorkerError> {
        let mut moved = 0;
        for (seq, state) in states {
            if self.ctx().state_seq_set(&state, seq as i32).is_ok() {
                moved += 1;
            } else {
                self.lose_sequence(seq, out)?;
            }
        }
        Ok(moved)
    }

    /// A sequence whose state could not be moved: a cached one is simply
    /// gone; a live one's generation ends with an error.
    fn lose_sequence(&mut self, seq: usize, out: &mut impl Write) -> Result<(), WorkerError> {
        if self.ctx.is_some() {
            let _ = self.ctx().clear_kv_cache_seq(Some(seq as u32), None, None);
        }
        let s = &mut self.seqs[seq];
        s.forget();
        if let Some(id) = s.live.take() {
            if let Some(i) = self.slots.iter().position(|slot| slot.id == id) {
                self.slots.swap_remove(i);
            }
            error(
                out,
                Some(id),
                ErrorKind::ResizeFailed,
                "llama.cpp could not move this generation's K/V into the resized pool",
            )?;
        }
        Ok(())
    }

    /// Ends slot `i`: flushes held text, leaves its sequence cached, reports.
    fn finish(
        &mut self,
        i: usize,
        reason: FinishReason,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        let mut slot = self.slots.swap_remove(i);
        if reason != FinishReason::Cancelled {
            let mut rest = slot.stop.finish();
            if reason != FinishReason::Stop {
                let _ = slot.utf8.decode_to_string(&[], &mut rest, true);
            }
            if !rest.is_empty() {
                if let Some((_, answer)) = slot.conversation.as_mut() {
                    answer.push_str(&rest);
                }
                write_frame(
                    out,
                    &Event::Token {
                        id: slot.id,
                        text: rest,
                    },
                )?;
            }
        }
        // The sequence keeps its tokens for the next turn of the conversation.
        let now = self.tick();
        let s = &mut self.seqs[slot.seq];
        s.live = None;
        s.last_used = now;
        let end = Instant::now();
        let prefill_end = slot.first_token.unwrap_or(end);
        let stats = GenerationStats {
            prompt_tokens: slot.prompt.len() as u32,
            generated_tokens: slot.generated,
            prefill_ms: (prefill_end - slot.started).as_secs_f64() * 1000.0,
            decode_ms: (end - prefill_end).as_secs_f64() * 1000.0,
            prompt_cached_tokens: slot.cached,
            shifted_tokens: slot.shifted,
            kept_tokens: slot.n_keep as u32,
            dropped_messages: slot.dropped_messages,
            draft_tokens: slot.counts.proposed,
            draft_accepted_tokens: slot.counts.accepted,
            decode_steps: slot.counts.steps,
        };
        write_frame(
            out,
            &Event::Done {
                id: slot.id,
                finish: reason,
                stats,
            },
        )?;
        // Then it takes the next turn's opening ahead, while the user
        // writes that turn (a cancelled answer has no next turn); only
        // where every token it holds is exact (reuse stops at the first one
        // that is not).
        let next_turn = reason != FinishReason::Cancelled;
        if let (true, Some((messages, answer))) = (next_turn, slot.conversation.take()) {
            let held = &self.seqs[slot.seq].tokens;
            if self.seqs[slot.seq].exact == held.len() {
                let tokens = self.follow_up(messages, answer, held);
                if !tokens.is_empty() && held.len() + tokens.len() < self.settings.context as usize
                {
                    let after = held.len();
                    self.seqs[slot.seq].follow_up = Some(FollowUp { after, tokens });
                }
            }
        }
        Ok(())
    }
}

/// How one generation picks its next token.
enum Picker {
    /// Temperature 0 and nothing else that changes the logits: the token
    /// with the highest logit, the first of equals (as llama.cpp's greedy
    /// sampler). Read straight from the logits: the sampler API would first
    /// copy all of them into a fresh candidate array every token, which
    /// measured about 1 % of decode time on a 49k-token vocabulary.
    Greedy,
    /// llama.cpp's sampler chain (see [`sampler_chain`]).
    Chain(LlamaSampler),
}

impl Picker {
    /// `window`: the most tokens the answer may have, which the frequency
    /// and presence penalties look back over.
    fn new(model: &LlamaModel, s: &Sampling, window: u32) -> Result<Picker, (ErrorKind, String)> {
        let plain = s.logit_bias.is_empty()
            && s.repeat_penalty == 1.0
            && s.frequency_penalty == 0.0
            && s.presence_penalty == 0.0
            && s.grammar.is_none();
        if s.temperature <= 0.0 && plain {
            Ok(Picker::Greedy)
        } else {
            sampler_chain(model, s, window).map(Picker::Chain)
        }
    }

    /// The next token, from the logits at batch index `at`.
    fn pick(&mut self, ctx: &LlamaContext, at: i32) -> LlamaToken {
        match self {
            Picker::Greedy => LlamaToken(argmax(ctx.get_logits_ith(at))),
            Picker::Chain(sampler) => sampler.sample(ctx, at),
        }
    }
}

/// Index of the largest value, the first of equals; NaNs never win. 0 for
/// an empty or all-NaN slice. A draft model's proposals take it too
/// (`drafter.rs`), so they are the greedy pick a target would make.
pub(crate) fn argmax(values: &[f32]) -> i32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    i32::try_from(best).unwrap_or(0)
}

/// The sampler chain for one generation, in llama.cpp's usual order: the
/// logit bias, the penalties, the grammar, then top-k, top-p, min-p,
/// temperature and a seeded draw, or, at temperature 0, the most likely
/// token. The grammar comes before the truncating samplers so that they
/// choose among allowed tokens only; the bias (at most ±100, finite) comes
/// before it so that no bias can bring back a token the grammar ruled out.
///
/// The repeat penalty looks back `repeat_last_n` tokens; the frequency and
/// presence penalties (a second penalties sampler) over `window` tokens,
/// the whole answer as OpenAI defines them. Both count generated tokens
/// only: the chain sees the tokens it draws, not the prompt.
fn sampler_chain(
    model: &LlamaModel,
    s: &Sampling,
    window: u32,
) -> Result<LlamaSampler, (ErrorKind, String)> {
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();
    if !s.logit_bias.is_empty() {
        let mut biases = Vec::with_capacity(s.logit_bias.len());
        for b in &s.logit_bias {
            match i32::try_from(b.token) {
                Ok(token) if token < n_vocab => {
                    biases.push(LlamaLogitBias::new(LlamaToken(token), b.bias));
                }
                _ => {
                    return Err((
                        ErrorKind::InvalidSampling,
                        format!(
                            "logit_bias names token {}, outside the model's vocabulary of {n_vocab} tokens (0 to {})",
                            b.token,
                            n_vocab - 1
                        ),
                    ))
                }
            }
        }
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if s.repeat_penalty != 1.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            s.repeat_last_n as i32,
            s.repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            i32::try_from(window.max(1)).unwrap_or(i32::MAX),
            1.0,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if let Some(grammar) = &s.grammar {
        let sampler = LlamaSampler::grammar(model, grammar, crate::grammar::ROOT).map_err(|e| {
            (
                ErrorKind::InvalidSampling,
                format!("llama.cpp could not use the output grammar ({e}); see the worker's log"),
            )
        })?;
        chain.push(sampler);
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return Ok(LlamaSampler::chain_simple(chain));
    }
    if s.top_k > 0 {
        chain.push(LlamaSampler::top_k(s.top_k as i32));
    }
    if s.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(s.top_p, 1));
    }
    if s.min_p > 0.0 {
        chain.push(LlamaSampler::min_p(s.min_p, 1));
    }
    chain.push(LlamaSampler::temp(s.temperature));
    let seed = s.seed.unwrap_or_else(random_seed);
    chain.push(LlamaSampler::dist(seed));
    Ok(LlamaSampler::chain_simple(chain))
}

/// The drawn token's log-probability and the `top` most likely tokens',
/// from the raw logits (see [`TokenProb::logprob`]).
fn token_logprobs(
    model: &LlamaModel,
    logits: &[f32],
    chosen: LlamaToken,
    top: u32,
) -> TokenLogprobs {
    let log_z = log_sum_exp(logits);
    let prob = |token: usize| {
        let bytes = model
            .vocab()
            .token_to_piece(LlamaToken(token as i32), false, None);
        TokenProb {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob: logits
                .get(token)
                .map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - log_z) as f32),
        }
    };
    TokenLogprobs {
        chosen: prob(chosen.0.max(0) as usize),
        top: top_indices(logits, top as usize)
            .into_iter()
            .map(prob)
            .collect(),
    }
}

/// ln Σ exp(x), without overflow (the largest value factored out).
fn log_sum_exp(values: &[f32]) -> f64 {
    let max = values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::from(max);
    }
    let sum: f64 = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (f64::from(v) - f64::from(max)).exp())
        .sum();
    f64::from(max) + sum.ln()
}

/// Indices of the `k` largest values, largest first, the first of equals
/// first; NaNs never count. One pass, keeping `k` candidates.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() || (best.len() == k && v <= values[best[k - 1]]) {
            continue;
        }
        let at = best.partition_point(|&j| values[j] >= v);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// Sequence `seq`'s state as llama.cpp serializes it
/// (`llama_state_seq_get_data_ext`), as plain bytes the tiers can keep and
/// write (llama-cpp-2's `SeqState` keeps its bytes to itself). `None` when
/// llama.cpp gives none.
fn seq_state(ctx: &LlamaContext, seq: usize) -> Option<Vec<u8>> {
    let flags = LlamaStateSeqFlags::empty();
    let size = ctx.state_seq_get_size_ext(seq as i32, flags);
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` holds `size` bytes, the size llama.cpp just gave for
    // this sequence's state; nothing ran on the context in between (it
    // lives on this thread), so the copy writes exactly that many, which
    // the returned count confirms.
    let written = unsafe { ctx.state_seq_get_data_ext(bytes.as_mut_ptr(), seq as i32, flags) };
    (size > 0 && written == size).then_some(bytes)
}

/// Puts a saved state into sequence `seq`; whether llama.cpp took it.
fn set_seq_state(ctx: &mut LlamaContext, state: &[u8], seq: usize) -> bool {
    // SAFETY: llama.cpp reads at most `state.len()` bytes (its reader checks
    // every read against the buffer's end and fails the call past it) and
    // checks what it reads (layer count, K/V types, row sizes, cell count)
    // before it writes a cell, failing the call on a mismatch. The bytes
    // are its own output for this model: a RAM-tier entry from
    // `seq_state`, or the payload of a disk-tier file whose header names
    // this model, llama.cpp build, K/V type and cache layout and whose
    // sha256 matched.
    unsafe { ctx.state_seq_set_data_ext(state, seq as i32, LlamaStateSeqFlags::empty()) }
}

/// Tells the parent its pool is `cells` cells, from `previous`, with no
/// sequence moved (`dropped` left out): a pool freed or made again, or a
/// resize with nothing to do. `ms` from `started`.
fn resized_in_place(
    out: &mut impl Write,
    cells: u32,
    previous: u32,
    dropped: u32,
    started: Instant,
) -> Result<(), WorkerError> {
    write_frame(
        out,
        &Event::Resized {
            cells,
            previous_cells: previous,
            moved_sequences: 0,
            moved_tokens: 0,
            dropped_sequences: dropped,
            state_bytes: 0,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        },
    )?;
    Ok(())
}

/// Returns the heap's free pages to the OS after a large release (the RAM
/// tier's saved states), so the footprint the OS charges shows it: glibc
/// keeps freed heap memory mapped otherwise.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their
    // locks; it takes no pointer and has no precondition.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::{argmax, log_sum_exp, top_indices};

    #[test]
    fn top_indices_are_the_largest_first_of_equals_first() {
        let v = [0.5, 3.0, f32::NAN, 3.0, -1.0, 2.0];
        assert_eq!(top_indices(&v, 3), [1, 3, 5]);
        assert_eq!(top_indices(&v, 0), Vec::<usize>::new());
        assert_eq!(top_indices(&v, 10), [1, 3, 5, 0, 4]);
    }

    #[test]
    fn log_sum_exp_normalises_without_overflow() {
        // Probabilities from it sum to 1 even for logits exp() overflows on.
        let logits = [1000.0f32, 1000.0, 999.0];
        let z = log_sum_exp(&logits);
        let total: f64 = logits.iter().map(|&l| (f64::from(l) - z).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!((log_sum_exp(&[0.0, 0.0]) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY]), f64::NEG_INFINITY);
    }

    #[test]
    fn argmax_takes_the_first_of_the_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[-3.0, -2.0, -7.5]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
