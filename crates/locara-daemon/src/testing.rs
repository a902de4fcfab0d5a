//! Fakes for tests of the governor task, the worker host and the HTTP API:
//! an engine whose workers answer at once, with no model and no process,
//! and which a test can drive by hand ([`FakeWorker`]).

pub mod hub;

use crate::host::{Engine, WorkerLink};
use locara_engine::protocol::{
    EmbedInput, ErrorKind, Event, FinishReason, GenerateRequest, GenerationStats, LoadedInfo,
    Prompt, Request, TokenLogprobs, TokenProb,
};
use locara_engine::EngineError;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A prompt holding this text is, to a fake worker, longer than the
/// context: with the request's `truncate` it leaves out one message, as a
/// real worker drops the oldest ones (`dropped_messages: 1` in its stats);
/// with `truncate: false` it answers `prompt_too_long`, as a real one does.
pub const TOO_LONG: &str = "<fake: longer than the context>";

/// Tokens in a fake worker's vocabulary: a `logit_bias` naming one at or
/// past it is answered `invalid_sampling`, as a real worker does.
pub const FAKE_VOCAB: u32 = 1000;

/// What a fake worker reports for token `i` of an answer when asked for
/// log-probabilities: `"t{i} "` with logprob `-(i + 1) / 10`, and `top`
/// alternatives `"a0"`, `"a1"`, ... with logprobs -0.05, -1.05, ...
pub fn fake_logprobs(i: u32, top: u32) -> TokenLogprobs {
    let prob = |token: String, logprob: f32| TokenProb {
        bytes: token.clone().into_bytes(),
        token,
        logprob,
    };
    TokenLogprobs {
        chosen: prob(format!("t{i} "), -(i as f32 + 1.0) / 10.0),
        top: (0..top)
            .map(|j| prob(format!("a{j}"), -0.05 - j as f32))
            .collect(),
    }
}

/// Width of a fake worker's embeddings (its `LoadedInfo.embedding`).
pub const FAKE_EMBEDDING: u32 = 64;

/// A fake worker's embedding of one input: a unit vector of
/// [`FAKE_EMBEDDING`] values that depends on the input's bytes (equal
/// inputs, equal vectors), and its token count (a token per 4 bytes,
/// rounded up; a token array counts its ids).
pub fn fake_embedding(input: &EmbedInput) -> (Vec<f32>, u32) {
    let (bytes, tokens): (Vec<u8>, usize) = match input {
        EmbedInput::Text(t) => (t.as_bytes().to_vec(), t.len().div_ceil(4)),
        EmbedInput::Tokens(ids) => (
            ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ids.len(),
        ),
    };
    let mut v: Vec<f32> = (0..FAKE_EMBEDDING as usize)
        .map(|i| {
            let b = bytes.get(i % bytes.len().max(1)).copied().unwrap_or(0);
            f32::from(b) - 64.0 + i as f32
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    (v, u32::try_from(tokens).unwrap_or(u32::MAX))
}

/// An engine of fake workers. Each generation yields `tokens` tokens
/// (`"t0 "`, `"t1 "`, ...) then ends as `length`, or, from
/// [`FakeEngine::stalling`], stays open after them, as a long answer would.
/// Prompts holding [`TOO_LONG`] are too long for the context.
/// [`FakeEngine::worker`] hands a test one worker to drive: events of its
/// choosing, a death at the point it picks.
pub struct FakeEngine {
    pub tokens: u32,
    stall: bool,
    /// The tokens every generation yields instead, ending as `stop` (see
    /// [`FakeEngine::scripted`]).
    script: Option<Vec<String>>,
    /// What every `Done` reports, but `generated_tokens` and
    /// `dropped_messages` (see [`FakeEngine::reporting`]).
    stats: GenerationStats,
    spawned: AtomicUsize,
    next_pid: AtomicU32,
    links: Mutex<Vec<Arc<FakeLink>>>,
    /// Every generation asked of any worker, in order.
    requests: Arc<Mutex<Vec<GenerateRequest>>>,
}

impl FakeEngine {
    pub fn new(tokens: u32) -> Arc<FakeEngine> {
        Arc::new(FakeEngine {
            tokens,
            stall: false,
            script: None,
            stats: GenerationStats {
                prompt_tokens: 1,
                prefill_ms: 1.0,
                decode_ms: 1.0,
                ..GenerationStats::default()
            },
            spawned: AtomicUsize::new(0),
            next_pid: AtomicU32::new(1_000_000),
            links: Mutex::new(Vec::new()),
            requests: Arc::default(),
        })
    }

    /// Workers whose generations yield `tokens` tokens and then never end.
    pub fn stalling(tokens: u32) -> Arc<FakeEngine> {
        let mut engine = FakeEngine::new(tokens);
        Arc::get_mut(&mut engine).expect("not shared yet").stall = true;
        engine
    }

    /// Workers whose generations yield these tokens (a tool call, say) and
    /// end as `stop`; as `length` when `max_tokens` cuts them first.
    pub fn scripted(tokens: &[&str]) -> Arc<FakeEngine> {
        let mut engine = FakeEngine::new(u32::try_from(tokens.len()).unwrap_or(u32::MAX));
        Arc::get_mut(&mut engine).expect("not shared yet").script =
            Some(tokens.iter().map(|t| (*t).to_owned()).collect());
        engine
    }

    /// Workers whose `Done` events report `stats` (cached prompt tokens,
    /// a context shift, ...), with `generated_tokens` the tokens sent and
    /// one more dropped message for a [`TOO_LONG`] prompt.
    pub fn reporting(tokens: u32, stats: GenerationStats) -> Arc<FakeEngine> {
        let mut engine = FakeEngine::new(tokens);
        Arc::get_mut(&mut engine).expect("not shared yet").stats = stats;
        engine
    }

    /// The generations asked of this engine's workers so far, in order.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        lock(&self.requests).clone()
    }

    /// Workers started so far.
    pub fn spawned(&self) -> usize {
        self.spawned.load(Ordering::SeqCst)
    }

    /// Workers that have not ended.
    pub fn live(&self) -> usize {
        lock(&self.links)
            .iter()
            .filter(|l| lock(&l.tx).is_some())
            .count()
    }

    /// Ends every worker as if it had crashed.
    pub fn kill_all(&self) {
        for l in lock(&self.links).iter() {
            lock(&l.tx).take();
        }
    }

    /// The `n`th worker started (from 0), to drive by hand.
    pub fn worker(&self, n: usize) -> FakeWorker {
        let links = lock(&self.links);
        let Some(link) = links.get(n) else {
            panic!("worker {n} asked for; {} started", links.len());
        };
        FakeWorker(Arc::clone(link))
    }
}

/// One fake worker as a test drives it: events it sends, its death, and
/// what it was asked.
#[derive(Clone)]
pub struct FakeWorker(Arc<FakeLink>);

impl FakeWorker {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// Sends `event` as the worker would (a token of some generation, pool
    /// news, ...). Nothing is sent once it has ended.
    pub fn emit(&self, event: Event) {
        if let Some(tx) = lock(&self.0.tx).as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Ends the worker as if it had crashed: the events it sent before are
    /// still read, then its end; requests fail from now on.
    pub fn kill(&self) {
        lock(&self.0.tx).take();
    }

    /// Every request the worker took, in order (`Load`, `Generate`,
    /// `Cancel`, `Resize`, ...).
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.0.taken).clone()
    }

    /// Blocks until the thread that read this worker's end has finished.
    /// For a host's routing thread that is after it reported the exit and
    /// ended every open stream, so whatever the exit callback sent is on
    /// its way. Panics after 10 s. In an async test, call it on a blocking
    /// thread (`spawn_blocking`): tokio's paused clock does not move while
    /// a blocking task runs.
    pub fn wait_end_heard(&self) {
        let heard = &self.0.heard;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = lock(&heard.done);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no thread finished after reading the end of worker {}",
                self.0.pid
            );
            done = heard
                .changed
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Whether a thread that read a worker's end has finished.
#[derive(Default)]
struct Heard {
    done: Mutex<bool>,
    changed: Condvar,
}

/// Marks its [`Heard`] done when dropped: with the thread's locals, when
/// the thread that read the end finishes.
struct HeardBy(Arc<Heard>);

impl Drop for HeardBy {
    fn drop(&mut self) {
        *lock(&self.0.done) = true;
        self.0.changed.notify_all();
    }
}

thread_local! {
    /// The worker ends this thread has read.
    static ENDS_READ: RefCell<Vec<HeardBy>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine for FakeEngine {
    fn spawn(&self) -> Result<Arc<dyn WorkerLink>, EngineError> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let link = Arc::new(FakeLink {
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(rx),
            pid: self.next_pid.fetch_add(1, Ordering::SeqCst),
            tokens: self.tokens,
            stall: self.stall,
            script: self.script.clone(),
            stats: self.stats.clone(),
            requests: Arc::clone(&self.requests),
            taken: Mutex::default(),
            heard: Arc::default(),
        });
        lock(&self.links).push(Arc::clone(&link));
        Ok(link)
    }
}

struct FakeLink {
    tx: Mutex<Option<Sender<Event>>>,
    rx: Mutex<Receiver<Event>>,
    pid: u32,
    tokens: u32,
    stall: bool,
    script: Option<Vec<String>>,
    stats: GenerationStats,
    requests: Arc<Mutex<Vec<GenerateRequest>>>,
    /// Every request this worker took.
    taken: Mutex<Vec<Request>>,
    heard: Arc<Heard>,
}

impl FakeLink {
    fn died(&self) -> EngineError {
        EngineError::WorkerDied {
            pid: self.pid,
            status: "fake worker ended".into(),
        }
    }
}

impl WorkerLink for FakeLink {
    fn send(&self, request: &Request) -> Result<(), EngineError> {
        let guard = lock(&self.tx);
        let Some(tx) = guard.as_ref() else {
            return Err(self.died());
        };
        lock(&self.taken).push(request.clone());
        let emit = |ev| {
            let _ = tx.send(ev);
        };
        match request {
            Request::Load(load) => emit(Event::Loaded(LoadedInfo {
                context: load.context.unwrap_or(2048),
                trained_context: 2048,
                parallel: load.parallel,
                kv_type: load.kv_type,
                flash_attention: true,
                threads: load.threads,
                gpu_layers: 0,
                layers: 1,
                embedding: FAKE_EMBEDDING,
                heads: 4,
                kv_heads: 2,
                weights_bytes: 0,
                parameters: 0,
                has_chat_template: true,
                chat_template: "fake".into(),
                load_ms: 0.0,
                pool_cells: 0,
                pool_max_cells: 0,
                sliding_window: None,
                context_shift: true,
                draft: None,
            })),
            Request::Generate(g) => {
                lock(&self.requests).push(g.clone());
                let too_long = match &g.prompt {
                    Prompt::Chat { messages } => {
                        messages.iter().any(|m| m.content.contains(TOO_LONG))
                    }
                    Prompt::Raw { text } => text.contains(TOO_LONG),
                };
                if too_long && !g.truncate {
                    emit(Event::Error {
                        id: Some(g.id),
                        kind: ErrorKind::PromptTooLong,
                        message: "the prompt is 4096 tokens; the context holds 2048 (and the answer needs room)".into(),
                    });
                    return Ok(());
                }
                if let Some(b) = g.sampling.logit_bias.iter().find(|b| b.token >= FAKE_VOCAB) {
                    emit(Event::Error {
                        id: Some(g.id),
                        kind: ErrorKind::InvalidSampling,
                        message: format!(
                            "logit_bias names token {}, outside the model's vocabulary of {FAKE_VOCAB} tokens (0 to {})",
                            b.token,
                            FAKE_VOCAB - 1
                        ),
                    });
                    return Ok(());
                }
                let n = g.max_tokens.unwrap_or(self.tokens).min(self.tokens);
                for i in 0..n {
                    if let Some(top) = g.sampling.logprobs {
                        emit(Event::Logprobs {
                            id: g.id,
                            tokens: vec![fake_logprobs(i, top)],
                        });
                    }
                    let text = match &self.script {
                        Some(script) => script[i as usize].clone(),
                        None => format!("t{i} "),
                    };
                    emit(Event::Token { id: g.id, text });
                }
                if self.stall {
                    return Ok(());
                }
                let finished = self.script.as_ref().is_some_and(|s| n as usize == s.len());
                emit(Event::Done {
                    id: g.id,
                    finish: if finished {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    },
                    stats: GenerationStats {
                        generated_tokens: n,
                        dropped_messages: self.stats.dropped_messages + u32::from(too_long),
                        ..self.stats.clone()
                    },
                });
            }
            Request::Embed(e) => {
                if let Some(i) = e
                    .inputs
                    .iter()
                    .position(|x| matches!(x, EmbedInput::Text(t) if t.contains(TOO_LONG)))
                {
                    emit(Event::Error {
                        id: Some(e.id),
                        kind: ErrorKind::PromptTooLong,
                        message: format!("input {i} is 4096 tokens; an input to embed may hold at most 2048 with this model"),
                    });
                    return Ok(());
                }
                let (vectors, counts): (Vec<_>, Vec<_>) =
                    e.inputs.iter().map(fake_embedding).unzip();
                emit(Event::Embeddings {
                    id: e.id,
                    vectors,
                    prompt_tokens: counts.iter().sum(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn recv(&self) -> Result<Event, EngineError> {
        lock(&self.rx).recv().map_err(|_| {
            let by = HeardBy(Arc::clone(&self.heard));
            ENDS_READ.with(|ends| ends.borrow_mut().push(by));
            self.died()
        })
    }

    fn stop(&self, _grace: Duration) {
        lock(&self.tx).take();
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn engine(&self) -> &str {
        "fake engine"
    }
}

/// The governor's settings for unit tests of the task and the HTTP API: a
/// store in `home` holding the synthetic model under each of `names`, one
/// sequence of 2048 tokens per model (`extra` overrides or adds settings),
/// `engine`'s fake workers, a simulated 16 GB machine and this budget.
pub fn synthetic_settings(
    home: &std::path::Path,
    names: &[&str],
    engine: Arc<FakeEngine>,
    extra: crate::config::RawServeConfig,
    budget: u64,
) -> crate::runtime::Settings {
    use crate::config::{RawServeConfig, ServeConfig};
    let store = crate::store::Store::open(home).unwrap();
    let file = home.join("synthetic.gguf");
    std::fs::write(
        &file,
        locara_gguf::testing::GgufBuilder::synthetic().build(),
    )
    .unwrap();
    for n in names {
        store
            .import(&file, &n.parse().unwrap(), &mut crate::store::NoProgress)
            .unwrap();
    }
    let extra_threads = extra.threads;
    let base = RawServeConfig {
        parallel: Some(1),
        context: Some(2048),
        // The synthetic model's heads (16) are too narrow for q8_0.
        kv_type: Some("f16".into()),
        ..Default::default()
    };
    crate::runtime::Settings {
        config: ServeConfig::build(&[base, extra]).unwrap(),
        budget,
        store,
        engine: engine as Arc<dyn Engine>,
        clock: Arc::new(crate::runtime::TokioClock),
        // One core unless `extra` names more (`threads`).
        threads: extra_threads.unwrap_or(1),
        backend: locara_core::Backend::cpu_plain(),
        probe: Arc::new(locara_platform::SimulatedProbe::new(
            locara_platform::simulated::linux_profile(16),
        )),
        ladder: locara_core::ladder::LadderConfig::default(),
        holds_file: Some(home.join("holds.json")),
        held_mapped: locara_platform::HeldMapped::default(),
    }
}

/// The server's state over a runtime of `engine`'s fake workers, with the
/// synthetic models `names` in a store under `home`, a budget of 1 TiB
/// unless `extra` names one, listening (for the
/// Host check) on `listen`, allowing `origins`; `tokenless` lets every
/// caller in as admin.
#[cfg(test)]
pub fn app_state(
    home: &std::path::Path,
    names: &[&str],
    engine: Arc<FakeEngine>,
    extra: crate::config::RawServeConfig,
    listen: std::net::SocketAddr,
    origins: Vec<String>,
    tokenless: bool,
) -> Arc<crate::server::AppState> {
    let mut settings = synthetic_settings(home, names, engine, extra, 1 << 40);
    // A configured budget stands in for the machine's, as in `locara serve`.
    settings.budget = settings.config.budget.unwrap_or(settings.budget);
    let store = settings.store.clone();
    let runtime =
        crate::runtime::Runtime::start(settings, Arc::new(crate::metrics::Metrics::new()));
    let auth = crate::server::Auth {
        apps: crate::apps::AppRegistry::open(home).unwrap(),
        admin: crate::apps::admin_token(home).unwrap(),
        tokenless,
    };
    let catalog = crate::store::Catalog::builtin().unwrap();
    crate::server::AppState::new(runtime, store, catalog, listen, origins, auth)
}

/// A simulated 16 GB machine on which the first 64 fake workers (their
/// pids: [`FakeEngine`] counts from 1 000 000) have footprints: 96 MiB plus
/// 16 MiB per worker started before, with 100 MiB of mapped weights, so
/// views of a fake daemon show figures.
pub(crate) fn fake_probe() -> locara_platform::SimulatedProbe {
    let probe = locara_platform::SimulatedProbe::new(locara_platform::simulated::linux_profile(16));
    for i in 0..64u32 {
        let footprint = (96 + 16 * u64::from(i)) << 20;
        probe.set_footprint(
            1_000_000 + i,
            locara_platform::ProcessFootprint {
                footprint,
                mapped_weights: 100 << 20,
                rss: footprint + (100 << 20),
            },
        );
    }
    probe
}

/// A daemon over `engine`'s fake workers, serving HTTP on an ephemeral
/// loopback port from a thread of its own, for other crates' tests (the
/// CLI's `locara top` renders what it answers). The store under `home`
/// holds the synthetic model under each of `names`. Dropping it stops the
/// daemon.
pub struct FakeDaemon {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `Bearer <admin token>`.
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDaemon {
    pub fn start(home: &std::path::Path, names: &[&str], engine: Arc<FakeEngine>) -> FakeDaemon {
        let home = home.to_path_buf();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut settings =
                    synthetic_settings(&home, &names, engine, Default::default(), 1 << 40);
                settings.probe = Arc::new(fake_probe());
                let store = settings.store.clone();
                let runtime = crate::runtime::Runtime::start(
                    settings,
                    Arc::new(crate::metrics::Metrics::new()),
                );
                let auth = crate::server::Auth {
                    apps: crate::apps::AppRegistry::open(&home).expect("the app registry"),
                    admin: crate::apps::admin_token(&home).expect("the admin token"),
                    tokenless: false,
                };
                let admin = format!("Bearer {}", auth.admin.as_str());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("an ephemeral port");
                let addr = listener.local_addr().expect("its address");
                let catalog = crate::store::Catalog::builtin().expect("the catalog");
                let state =
                    crate::server::AppState::new(runtime, store, catalog, addr, Vec::new(), auth);
                let _ = ready_tx.send((format!("http://{addr}"), admin));
                let _ = crate::server::serve(
                    listener,
                    state,
                    1 << 20,
                    Duration::from_secs(1),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
            });
        });
        let (url, admin) = ready_rx.recv().expect("the fake daemon started");
        FakeDaemon {
            url,
            admin,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
