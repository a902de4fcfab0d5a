//! The worker process: owns llama.cpp, serves the [`protocol`](crate::protocol).
//!
//! Threads: the main thread owns the model and context (a llama.cpp context
//! is not `Send`) and runs the generation loop; a reader thread turns stdin
//! frames into messages for it and ends the process when stdin closes.
//! Generations share one context, each on a sequence of its own; every step
//! decodes one batch holding the next token of every running generation plus
//! prompt chunks of new ones (continuous batching), so a new request joins
//! between tokens.

use crate::protocol::{
    read_frame, write_frame, ErrorKind, Event, FinishReason, GenerateRequest, GenerationStats,
    LoadRequest, LoadedInfo, Prompt, Request, Sampling, WorkerStats, PROTOCOL_VERSION,
};
use crate::stop::{StopMatcher, StopStep};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use locara_core::{KvType, LoadDefaults};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::num::NonZeroU32;
use std::os::fd::FromRawFd;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Instant;

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
            Request::Stats => write_frame(&mut out, &Event::Stats(WorkerStats::default()))?,
            Request::Exit => return Ok(()),
            Request::Generate(g) => error(
                &mut out,
                Some(g.id),
                ErrorKind::BadRequest,
                "no model is loaded",
            )?,
            Request::Cancel { .. } => {}
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
                        // is idle; a busy one is cut short.
                        std::thread::sleep(std::time::Duration::from_millis(200));
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
    // mmap on, mlock off, always (DESIGN.md): no request can change this.
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
    let trained = model.n_ctx_train();
    let context = LoadDefaults::default().context_for(load.context, trained);
    let total_ctx = context.saturating_mul(load.parallel);
    let threads = i32::try_from(load.threads).unwrap_or(i32::MAX);
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total_ctx))
        .with_n_seq_max(load.parallel)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(kv_cache_type(load.kv_type))
        .with_type_v(kv_cache_type(load.kv_type))
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED)
        // Sliding-window layers keep only their window (plus one
        // micro-batch), not the whole context: a full-length window cache
        // serves only prompt-prefix reuse, which this worker never does, and
        // costs Gemma 3 at 32768 tokens four fifths of its K/V cache.
        // `locara_core::estimate::ENGINE_FULL_WINDOW_CACHE` follows this.
        .with_swa_full(false)
        .with_no_perf(true);
    let mut ctx = match model.new_context(backend, ctx_params) {
        Ok(c) => c,
        Err(e) => {
            error(
                out,
                None,
                ErrorKind::LoadFailed,
                format!("llama.cpp could not create a context of {total_ctx} tokens: {e}"),
            )?;
            return Ok(());
        }
    };
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
        }),
    )?;

    let mut engine = Engine {
        model: &model,
        chat_template,
        context,
        parallel: load.parallel as usize,
        slots: Vec::new(),
        queue: VecDeque::new(),
        generated_total: 0,
        batch: LlamaBatch::new(ctx.n_batch() as usize, load.parallel as i32),
    };
    engine.serve(&mut ctx, rx, out)
}

/// One running generation.
struct Slot {
    id: u64,
    seq: i32,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    prompt_done: usize,
    /// Next position in the sequence.
    pos: i32,
    /// The last sampled token, to be decoded next step.
    next: Option<LlamaToken>,
    /// Index in the current batch whose logits this slot samples from.
    logits_at: Option<i32>,
    picker: Picker,
    utf8: encoding_rs::Decoder,
    stop: StopMatcher,
    max_tokens: u32,
    generated: u32,
    started: Instant,
    first_token: Option<Instant>,
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

struct Engine<'m> {
    model: &'m LlamaModel,
    chat_template: ChatTemplate,
    /// Context per sequence, tokens.
    context: u32,
    parallel: usize,
    slots: Vec<Slot>,
    queue: VecDeque<GenerateRequest>,
    generated_total: u64,
    batch: LlamaBatch<'static>,
}

enum Control {
    Continue,
    Exit,
}

impl<'m> Engine<'m> {
    fn serve(
        &mut self,
        ctx: &mut LlamaContext<'m>,
        rx: &Receiver<Request>,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        loop {
            // Idle: block for work. Busy: take what has arrived, then step.
            if self.slots.is_empty() && self.queue.is_empty() {
                let Ok(req) = rx.recv() else { return Ok(()) };
                if let Control::Exit = self.handle(req, ctx, out)? {
                    return Ok(());
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(req) => {
                        if let Control::Exit = self.handle(req, ctx, out)? {
                            return Ok(());
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.admit(ctx, out)?;
            if !self.slots.is_empty() {
                self.step(ctx, out)?;
            }
        }
    }

    fn handle(
        &mut self,
        req: Request,
        ctx: &mut LlamaContext<'m>,
        out: &mut impl Write,
    ) -> Result<Control, WorkerError> {
        match req {
            Request::Generate(g) => self.queue.push_back(g),
            Request::Cancel { id } => {
                if let Some(i) = self.slots.iter().position(|s| s.id == id) {
                    self.finish(i, FinishReason::Cancelled, ctx, out)?;
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
            Request::Stats => write_frame(
                out,
                &Event::Stats(WorkerStats {
                    loaded: true,
                    active: self.slots.len() as u32,
                    queued: self.queue.len() as u32,
                    generated_total: self.generated_total,
                }),
            )?,
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

    /// Moves queued requests onto free sequences.
    fn admit(
        &mut self,
        ctx: &mut LlamaContext<'m>,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        while self.slots.len() < self.parallel {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let seq = (0..self.parallel as i32)
                .find(|s| !self.slots.iter().any(|slot| slot.seq == *s))
                .expect("a free sequence exists when fewer slots than sequences run");
            let id = req.id;
            match self.prepare(req, seq) {
                Ok(slot) => {
                    // A sequence may hold cells of an earlier generation.
                    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                    self.slots.push(slot);
                }
                Err((kind, message)) => error(out, Some(id), kind, message)?,
            }
        }
        Ok(())
    }

    fn prepare(&self, req: GenerateRequest, seq: i32) -> Result<Slot, (ErrorKind, String)> {
        let started = Instant::now();
        let text = match &req.prompt {
            Prompt::Raw { text } => text.clone(),
            Prompt::Chat { messages } => {
                let template = match &self.chat_template {
                    ChatTemplate::Model => self.model.chat_template(None).map_err(|e| {
                        (
                            ErrorKind::ChatTemplate,
                            format!("this model's chat template is unusable ({e}); send a raw prompt instead"),
                        )
                    })?,
                    ChatTemplate::Builtin { name, .. } => LlamaChatTemplate::new(name)
                        .expect("built-in template names have no NUL byte"),
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
                    .apply_chat_template(&template, &msgs, true)
                    .map_err(|e| {
                        (
                            ErrorKind::ChatTemplate,
                            format!("llama.cpp cannot apply this model's chat template: {e}"),
                        )
                    })?
            }
        };
        let prompt = self.model.vocab().tokenize(text.as_bytes(), true, true);
        if prompt.is_empty() {
            return Err((ErrorKind::BadRequest, "the prompt is empty".to_string()));
        }
        if prompt.len() >= self.context as usize {
            return Err((
                ErrorKind::PromptTooLong,
                format!(
                    "the prompt is {} tokens; the context holds {} (and the answer needs room)",
                    prompt.len(),
                    self.context
                ),
            ));
        }
        let room = self.context - prompt.len() as u32;
        Ok(Slot {
            id: req.id,
            seq,
            prompt,
            prompt_done: 0,
            pos: 0,
            next: None,
            logits_at: None,
            picker: Picker::new(self.model, &req.sampling),
            utf8: encoding_rs::UTF_8.new_decoder(),
            stop: StopMatcher::new(&req.stop),
            max_tokens: req.max_tokens.unwrap_or(room).min(room),
            generated: 0,
            started,
            first_token: None,
        })
    }

    /// Decodes one batch and samples one token for each slot that got logits.
    fn step(
        &mut self,
        ctx: &mut LlamaContext<'m>,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        let capacity = ctx.n_batch() as usize;
        self.batch.clear();
        // Running generations first: their next token costs one cell each.
        for slot in self.slots.iter_mut() {
            slot.logits_at = None;
            if let Some(tok) = slot.next {
                let at = self.batch.n_tokens();
                self.batch
                    .add(tok, slot.pos, &[slot.seq], true)
                    .expect("the batch holds one token per sequence");
                slot.logits_at = Some(at);
            }
        }
        // Then prompt chunks, as much as the batch has room for.
        for slot in self.slots.iter_mut() {
            if slot.next.is_some() || slot.prompt_done == slot.prompt.len() {
                continue;
            }
            let room = capacity - self.batch.n_tokens() as usize;
            if room == 0 {
                break;
            }
            let end = (slot.prompt_done + room).min(slot.prompt.len());
            for i in slot.prompt_done..end {
                let last = i + 1 == slot.prompt.len();
                let at = self.batch.n_tokens();
                self.batch
                    .add(slot.prompt[i], slot.pos, &[slot.seq], last)
                    .expect("the batch was sized to its capacity");
                slot.pos += 1;
                if last {
                    slot.logits_at = Some(at);
                }
            }
            slot.prompt_done = end;
        }
        if self.batch.n_tokens() == 0 {
            return Ok(());
        }
        if let Err(e) = ctx.decode(&mut self.batch) {
            // Every generation in the batch is lost; tell each of them.
            let ids: Vec<u64> = self.slots.iter().map(|s| s.id).collect();
            for slot in self.slots.drain(..) {
                let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            }
            for id in ids {
                error(
                    out,
                    Some(id),
                    ErrorKind::DecodeFailed,
                    format!("llama.cpp failed to decode: {e}"),
                )?;
            }
            return Ok(());
        }

        let mut i = 0;
        while i < self.slots.len() {
            let Some(at) = self.slots[i].logits_at else {
                i += 1;
                continue;
            };
            let slot = &mut self.slots[i];
            if slot.next.is_some() {
                slot.pos += 1;
            }
            let token = slot.picker.pick(ctx, at);
            let now = Instant::now();
            slot.first_token.get_or_insert(now);
            slot.generated += 1;
            self.generated_total += 1;
            let vocab = self.model.vocab();
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
                if finish.is_none()
                    && (slot.generated >= slot.max_tokens || slot.pos as u32 + 1 >= self.context)
                {
                    finish = Some(FinishReason::Length);
                }
            }
            match finish {
                Some(reason) => {
                    // `finish` removes slot i; the next one moves into its place.
                    self.finish(i, reason, ctx, out)?;
                }
                None => {
                    slot.next = Some(token);
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Ends slot `i`: flushes held text, frees its sequence, reports.
    fn finish(
        &mut self,
        i: usize,
        reason: FinishReason,
        ctx: &mut LlamaContext<'m>,
        out: &mut impl Write,
    ) -> Result<(), WorkerError> {
        let mut slot = self.slots.swap_remove(i);
        if reason != FinishReason::Cancelled {
            let mut rest = slot.stop.finish();
            if reason != FinishReason::Stop {
                let _ = slot.utf8.decode_to_string(&[], &mut rest, true);
            }
            if !rest.is_empty() {
                write_frame(
                    out,
                    &Event::Token {
                        id: slot.id,
                        text: rest,
                    },
                )?;
            }
        }
        let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        let end = Instant::now();
        let prefill_end = slot.first_token.unwrap_or(end);
        let stats = GenerationStats {
            prompt_tokens: slot.prompt.len() as u32,
            generated_tokens: slot.generated,
            prefill_ms: (prefill_end - slot.started).as_secs_f64() * 1000.0,
            decode_ms: (end - prefill_end).as_secs_f64() * 1000.0,
        };
        write_frame(
            out,
            &Event::Done {
                id: slot.id,
                finish: reason,
                stats,
            },
        )?;
        Ok(())
    }
}

/// How one generation picks its next token.
enum Picker {
    /// Temperature 0: the token with the highest logit, the first of equals
    /// (as llama.cpp's greedy sampler). Read straight from the logits: the
    /// sampler API would first copy all of them into a fresh candidate array
    /// every token, which measured about 1 % of decode time on a 49k-token
    /// vocabulary.
    Greedy,
    /// llama.cpp's sampler chain.
    Chain(LlamaSampler),
}

impl Picker {
    fn new(model: &LlamaModel, s: &Sampling) -> Picker {
        if s.temperature <= 0.0 {
            Picker::Greedy
        } else {
            Picker::Chain(sampler_chain(model, s))
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
/// an empty or all-NaN slice.
fn argmax(values: &[f32]) -> i32 {
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

/// The sampler chain for one generation, in llama.cpp's usual order:
/// penalties, top-k, top-p, min-p, temperature, then a seeded draw.
fn sampler_chain(model: &LlamaModel, s: &Sampling) -> LlamaSampler {
    let mut chain = Vec::new();
    if s.repeat_penalty != 1.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            s.repeat_last_n as i32,
            s.repeat_penalty,
            0.0,
            0.0,
        ));
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
    LlamaSampler::chain_simple(chain)
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_the_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[-3.0, -2.0, -7.5]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
