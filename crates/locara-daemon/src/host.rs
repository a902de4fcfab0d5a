//! One loaded model: an engine worker and the generations streaming from it.
//!
//! A [`WorkerHost`] owns a [`Worker`] (the child process) and one thread
//! that reads the worker's events and routes each token to the stream of the
//! generation it belongs to. Generations are [`Generation`]s: an async
//! receiver of [`StreamEvent`]s that cancels its generation in the worker
//! when it is dropped before the end (a client that went away), so the
//! sequence is free before the next token.
//!
//! When the worker dies, the host reports the exit through the callback it
//! was started with, then every open stream gets an error event.

use locara_engine::protocol::{
    EmbedInput, EmbedRequest, ErrorKind, Event, FinishReason, GenerateRequest, GenerationStats,
    LoadRequest, LoadedInfo, Prompt, Request, Sampling, TokenLogprobs,
};
use locara_engine::{EngineError, Worker, WorkerCommand};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a generation's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Text of one or more tokens.
    Token(String),
    /// The log-probabilities of tokens drawn since the last `Token` (only
    /// when the request asked); their text is in the next `Token`, or
    /// never sent (a stop string).
    Logprobs(Vec<TokenLogprobs>),
    /// The end, with the worker's figures.
    Done {
        finish: FinishReason,
        stats: GenerationStats,
    },
    /// The end, failed.
    Error { kind: StreamError, message: String },
}

/// Why a generation's stream ended in error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The worker reported this error for the generation.
    Worker(ErrorKind),
    /// The model was unloaded (its worker asked to stop) while it ran.
    Unloaded,
    /// The worker exited unasked.
    WorkerDied,
}

impl StreamError {
    /// The stable machine name: the worker's kind, `model_unloaded` or
    /// `worker_died`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamError::Worker(kind) => kind.as_str(),
            StreamError::Unloaded => "model_unloaded",
            StreamError::WorkerDied => "worker_died",
        }
    }
}

type Streams = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<StreamEvent>>>>;

/// What an embedding request gets: the vectors and the tokens counted, or
/// how it failed.
pub type EmbedAnswer = Result<Embedded, (StreamError, String)>;

/// The worker's answer to an embedding request.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One L2-normalized vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all inputs together.
    pub prompt_tokens: u32,
}

/// Embedding requests waiting for their answer, by id (the same counter as
/// generations, so an `Error { id }` names one or the other).
type Embeds = Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<EmbedAnswer>>>>;

/// What a worker says of its K/V pool, for the governor, as the protocol
/// says it: [`Event::PoolFull`] (live sequences need more cells; generations
/// wait for [`WorkerHost::resize`] or [`WorkerHost::deny_growth`]),
/// [`Event::Resized`], [`Event::Stats`] (the answer to
/// [`WorkerHost::request_stats`]) and an [`Event::Error`] of no generation
/// (a resize llama.cpp could not make, say). The host passes no other
/// event here.
pub type PoolNews = Event;

/// Hears a worker's [`PoolNews`], on the host's routing thread.
pub type PoolListener = Box<dyn Fn(PoolNews) + Send + 'static>;

/// How a worker ended, as the host's exit callback hears it.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// The daemon asked for it (unload, eviction, shutdown).
    pub expected: bool,
    /// The exit status in words.
    pub status: String,
}

/// One engine worker as a host drives it: requests in, events out.
pub trait WorkerLink: Send + Sync {
    fn send(&self, request: &Request) -> Result<(), EngineError>;
    /// The next event; an error once the worker has ended.
    fn recv(&self) -> Result<Event, EngineError>;
    /// Asks the worker to exit, waits up to `grace`, then kills it.
    fn stop(&self, grace: Duration);
    fn pid(&self) -> u32;
    /// The llama.cpp build it runs.
    fn engine(&self) -> &str;
}

impl WorkerLink for Worker {
    fn send(&self, request: &Request) -> Result<(), EngineError> {
        Worker::send(self, request)
    }
    fn recv(&self) -> Result<Event, EngineError> {
        Worker::recv(self)
    }
    fn stop(&self, grace: Duration) {
        Worker::stop(self, grace)
    }
    fn pid(&self) -> u32 {
        Worker::pid(self)
    }
    fn engine(&self) -> &str {
        Worker::engine(self)
    }
}

/// Starts engine workers: the governor task's way to the engine.
pub trait Engine: Send + Sync {
    fn spawn(&self) -> Result<Arc<dyn WorkerLink>, EngineError>;
}

/// The real engine: a `locara engine` child process per worker.
pub struct ProcessEngine(pub WorkerCommand);

impl Engine for ProcessEngine {
    fn spawn(&self) -> Result<Arc<dyn WorkerLink>, EngineError> {
        Ok(Arc::new(Worker::spawn(&self.0)?))
    }
}

/// A loaded model's worker.
pub struct WorkerHost {
    worker: Arc<dyn WorkerLink>,
    /// What the worker loaded.
    pub info: LoadedInfo,
    streams: Streams,
    embeds: Embeds,
    next_id: AtomicU64,
    stopping: Arc<AtomicBool>,
    /// Whether new generations may draft tokens (speculative decoding,
    /// `GenerateRequest::speculative`); on by default, for a power policy
    /// to turn off ([`WorkerHost::set_speculative`]).
    speculative: AtomicBool,
}

impl WorkerHost {
    /// Spawns a worker, loads the model (blocking: call from a blocking
    /// task) and starts routing its events. `on_exit` runs once, on the
    /// routing thread, when the worker's channel closes, before any open
    /// stream hears of it.
    pub fn start(
        engine: &dyn Engine,
        load: LoadRequest,
        on_exit: impl FnOnce(WorkerExit) + Send + 'static,
        on_pool: PoolListener,
    ) -> Result<Arc<WorkerHost>, EngineError> {
        let worker = engine.spawn()?;
        worker.send(&Request::Load(load))?;
        let info = match worker.recv()? {
            Event::Loaded(info) => info,
            Event::Error { kind, message, .. } => {
                return Err(EngineError::Worker { kind, message })
            }
            other => return Err(EngineError::Unexpected(format!("{other:?}"))),
        };
        let streams: Streams = Arc::default();
        let embeds: Embeds = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let host = Arc::new(WorkerHost {
            worker: Arc::clone(&worker),
            info,
            streams: Arc::clone(&streams),
            embeds: Arc::clone(&embeds),
            next_id: AtomicU64::new(1),
            speculative: AtomicBool::new(true),
            stopping: Arc::clone(&stopping),
        });
        let pid = worker.pid();
        thread::Builder::new()
            .name(format!("worker-{pid}-events"))
            .spawn(move || {
                let waiting = Waiting { streams, embeds };
                route(&*worker, &waiting, &stopping, on_exit, on_pool)
            })
            .map_err(|source| EngineError::Spawn {
                program: format!("the event thread of worker {pid}").into(),
                source,
            })?;
        Ok(host)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// Lets generations started from now on draft tokens, or not. Drafted
    /// tokens are checked by wider decodes, which a power policy may find
    /// not worth their energy; the answers are the same either way.
    pub fn set_speculative(&self, on: bool) {
        self.speculative.store(on, Ordering::Relaxed);
    }

    /// The llama.cpp build the worker runs.
    pub fn engine(&self) -> &str {
        self.worker.engine()
    }

    /// Starts a generation. Its events arrive on the returned stream.
    /// `truncate`: the context may be shortened to go on (oldest messages
    /// left out, context shift); `false` fails instead. `cache_prompt`:
    /// the prompt may start from a cached conversation's K/V.
    pub fn generate(
        self: &Arc<Self>,
        prompt: Prompt,
        sampling: Sampling,
        max_tokens: Option<u32>,
        stop: Vec<String>,
        truncate: bool,
        cache_prompt: bool,
    ) -> Result<Generation, EngineError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.streams).insert(id, tx);
        let request = Request::Generate(GenerateRequest {
            id,
            prompt,
            sampling,
            max_tokens,
            stop,
            // The leading system message(s), as the template renders them.
            n_keep: None,
            truncate,
            cache_prompt,
            speculative: self.speculative.load(Ordering::Relaxed),
        });
        if let Err(e) = self.worker.send(&request) {
            lock(&self.streams).remove(&id);
            return Err(e);
        }
        Ok(Generation {
            id,
            events: rx,
            host: Arc::clone(self),
            finished: false,
        })
    }

    /// Computes embeddings of `inputs` in the worker (in a context of its
    /// own: `locara_engine::embed`). The answer comes when all are done; a
    /// worker that ends first answers with its end.
    pub async fn embed(&self, inputs: Vec<EmbedInput>) -> EmbedAnswer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.embeds).insert(id, tx);
        if let Err(e) = self
            .worker
            .send(&Request::Embed(EmbedRequest { id, inputs }))
        {
            lock(&self.embeds).remove(&id);
            return Err((StreamError::WorkerDied, e.to_string()));
        }
        rx.await.unwrap_or_else(|_| {
            Err((
                StreamError::WorkerDied,
                "the worker's event thread ended".into(),
            ))
        })
    }

    /// Makes the K/V pool `cells` cells: the answer to [`PoolNews::Full`]
    /// when the governor granted the bytes, or a shrink of an idle pool.
    /// The worker answers with [`PoolNews::Resized`].
    pub fn resize(&self, cells: u32) {
        let _ = self.worker.send(&Request::Resize { cells });
    }

    /// The answer to [`PoolNews::Full`] when growth is refused: the waiting
    /// generations shift their context or end with `pool_exhausted`.
    pub fn deny_growth(&self) {
        let _ = self.worker.send(&Request::DenyGrowth);
    }

    /// Forgets the conversations the worker keeps in its RAM tier (memory
    /// pressure), writing them to its disk tier first when `spill`; its
    /// figures come back as [`PoolNews::Stats`].
    pub fn drop_tier(&self, spill: bool) {
        let _ = self.worker.send(&Request::DropTier { spill });
    }

    /// Tells the worker its share of the cores: threads per decode and
    /// their CPU priority, from its next decode on.
    pub fn set_threads(&self, share: locara_core::threads::Share) {
        let _ = self.worker.send(&Request::SetThreads {
            threads: share.threads,
            class: share.class,
        });
    }

    /// Asks for the worker's figures; they come back as
    /// [`PoolNews::Stats`].
    pub fn request_stats(&self) {
        let _ = self.worker.send(&Request::Stats);
    }

    /// Cancels a generation: it ends before its next token.
    pub fn cancel(&self, id: u64) {
        let _ = self.worker.send(&Request::Cancel { id });
    }

    /// Stops the worker (blocking up to `grace`, then it is killed). Open
    /// streams end with an error saying the model was unloaded.
    pub fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.worker.stop(grace);
    }

    /// Generations streaming now.
    pub fn open_streams(&self) -> usize {
        lock(&self.streams).len()
    }
}

impl Drop for WorkerHost {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Who waits for a worker's events: generations and embedding requests.
struct Waiting {
    streams: Streams,
    embeds: Embeds,
}

/// The routing thread: worker events to generation streams.
fn route(
    worker: &dyn WorkerLink,
    waiting: &Waiting,
    stopping: &AtomicBool,
    on_exit: impl FnOnce(WorkerExit),
    on_pool: PoolListener,
) {
    let streams = &waiting.streams;
    let status = loop {
        match worker.recv() {
            Ok(Event::Embeddings {
                id,
                vectors,
                prompt_tokens,
            }) => {
                if let Some(tx) = lock(&waiting.embeds).remove(&id) {
                    let _ = tx.send(Ok(Embedded {
                        vectors,
                        prompt_tokens,
                    }));
                }
            }
            Ok(Event::Token { id, text }) => {
                if let Some(tx) = lock(streams).get(&id) {
                    let _ = tx.send(StreamEvent::Token(text));
                }
            }
            Ok(Event::Logprobs { id, tokens }) => {
                if let Some(tx) = lock(streams).get(&id) {
                    let _ = tx.send(StreamEvent::Logprobs(tokens));
                }
            }
            Ok(Event::Done { id, finish, stats }) => {
                if let Some(tx) = lock(streams).remove(&id) {
                    let _ = tx.send(StreamEvent::Done { finish, stats });
                }
            }
            Ok(Event::Error {
                id: Some(id),
                kind,
                message,
            }) => {
                if let Some(tx) = lock(streams).remove(&id) {
                    let _ = tx.send(StreamEvent::Error {
                        kind: StreamError::Worker(kind),
                        message,
                    });
                } else if let Some(tx) = lock(&waiting.embeds).remove(&id) {
                    let _ = tx.send(Err((StreamError::Worker(kind), message)));
                }
            }
            Ok(
                news @ (Event::PoolFull { .. }
                | Event::Resized { .. }
                | Event::Stats(_)
                | Event::Error { id: None, .. }),
            ) => on_pool(news),
            // Nothing else is asked for once loaded.
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    let expected = stopping.load(Ordering::SeqCst);
    let (kind, message) = if expected {
        (
            StreamError::Unloaded,
            "the model was unloaded while this request was running".to_string(),
        )
    } else {
        (StreamError::WorkerDied, status.clone())
    };
    // The exit is reported before any stream hears of it: a client that
    // reads its error and asks again at once must find the model gone, not
    // be handed the dead worker.
    on_exit(WorkerExit { expected, status });
    for (_, tx) in lock(streams).drain() {
        let _ = tx.send(StreamEvent::Error {
            kind,
            message: message.clone(),
        });
    }
    for (_, tx) in lock(&waiting.embeds).drain() {
        let _ = tx.send(Err((kind, message.clone())));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One generation's events. Dropping it before its end cancels it.
pub struct Generation {
    pub id: u64,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    host: Arc<WorkerHost>,
    finished: bool,
}

impl Generation {
    /// Cancels the generation in the worker; its stream ends.
    pub fn cancel(&mut self) {
        if !self.finished {
            self.finished = true;
            lock(&self.host.streams).remove(&self.id);
            self.host.cancel(self.id);
        }
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if self.finished {
            return None;
        }
        let ev = self.events.recv().await;
        match &ev {
            Some(StreamEvent::Token(_) | StreamEvent::Logprobs(_)) => {}
            Some(_) | None => self.finished = true,
        }
        ev
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.host.streams).remove(&self.id);
            self.host.cancel(self.id);
        }
    }
}

/// The host over fake workers driven by hand: which stream an event
/// reaches, what the pool listener hears, and how an end is reported.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeEngine, FakeWorker};
    use futures_util::FutureExt;
    use locara_engine::protocol::ErrorKind;
    use std::sync::mpsc as std_mpsc;

    /// Long enough for a routing thread on a busy machine; a passing test
    /// never waits it out.
    const PATIENCE: Duration = Duration::from_secs(10);

    struct Started {
        host: Arc<WorkerHost>,
        worker: FakeWorker,
        exits: std_mpsc::Receiver<WorkerExit>,
        pool: std_mpsc::Receiver<PoolNews>,
    }

    /// A host over a fake worker whose generations send nothing but what
    /// the test emits; its exit and pool news arrive on channels.
    fn start() -> Started {
        let (exit_tx, exits) = std_mpsc::channel();
        let (host, worker, pool) = start_with(move |exit| exit_tx.send(exit).unwrap());
        Started {
            host,
            worker,
            exits,
            pool,
        }
    }

    fn start_with(
        on_exit: impl FnOnce(WorkerExit) + Send + 'static,
    ) -> (Arc<WorkerHost>, FakeWorker, std_mpsc::Receiver<PoolNews>) {
        let engine = FakeEngine::stalling(0);
        let (pool_tx, pool) = std_mpsc::channel();
        let host = WorkerHost::start(
            &*engine,
            LoadRequest {
                context: Some(2048),
                parallel: 2,
                ..LoadRequest::new("model.gguf".into(), 1)
            },
            on_exit,
            Box::new(move |news| {
                let _ = pool_tx.send(news);
            }),
        )
        .unwrap();
        (host, engine.worker(0), pool)
    }

    fn generate(host: &Arc<WorkerHost>) -> Generation {
        host.generate(
            Prompt::Raw { text: "x".into() },
            Sampling::greedy(),
            None,
            Vec::new(),
            true,
            true,
        )
        .unwrap()
    }

    fn token(id: u64, text: &str) -> Event {
        Event::Token {
            id,
            text: text.into(),
        }
    }

    /// Everything a generation's stream still yields, to its end.
    async fn rest(generation: &mut Generation) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        while let Some(ev) = generation.next().await {
            events.push(ev);
        }
        events
    }

    fn error_kind(ev: &StreamEvent) -> &str {
        match ev {
            StreamEvent::Error { kind, .. } => kind.as_str(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_reach_the_generation_they_belong_to() {
        let s = start();
        let mut a = generate(&s.host);
        let mut b = generate(&s.host);
        assert_ne!(a.id, b.id);
        let stats = GenerationStats {
            generated_tokens: 1,
            ..GenerationStats::default()
        };
        for ev in [
            token(b.id, "b0"),
            token(a.id, "a0"),
            Event::Done {
                id: b.id,
                finish: FinishReason::Stop,
                stats: stats.clone(),
            },
            // A token after its generation's end, and one of a generation
            // this host never started, reach no stream.
            token(b.id, "late"),
            token(a.id.max(b.id) + 1, "stray"),
            token(a.id, "a1"),
            Event::Error {
                id: Some(a.id),
                kind: ErrorKind::DecodeFailed,
                message: "llama_decode returned 1".into(),
            },
        ] {
            s.worker.emit(ev);
        }
        assert_eq!(
            rest(&mut b).await,
            [
                StreamEvent::Token("b0".into()),
                StreamEvent::Done {
                    finish: FinishReason::Stop,
                    stats
                },
            ]
        );
        assert_eq!(
            rest(&mut a).await,
            [
                StreamEvent::Token("a0".into()),
                StreamEvent::Token("a1".into()),
                StreamEvent::Error {
                    kind: StreamError::Worker(ErrorKind::DecodeFailed),
                    message: "llama_decode returned 1".into(),
                },
            ]
        );
        assert_eq!(s.host.open_streams(), 0);
        // Both ended in the worker: no cancel for either.
        assert!(
            !s.worker
                .requests()
                .iter()
                .any(|r| matches!(r, Request::Cancel { .. })),
            "{:?}",
            s.worker.requests()
        );
    }

    #[tokio::test]
    async fn a_generation_dropped_before_its_end_is_cancelled() {
        let s = start();
        let mut a = generate(&s.host);
        let b = generate(&s.host);
        let (a_id, b_id) = (a.id, b.id);
        drop(b);
        assert_eq!(s.host.open_streams(), 1);
        assert_eq!(
            s.worker.requests().last(),
            Some(&Request::Cancel { id: b_id })
        );
        a.cancel();
        assert_eq!(s.host.open_streams(), 0);
        assert_eq!(
            s.worker.requests().last(),
            Some(&Request::Cancel { id: a_id })
        );
        // The stream ends at once, and dropping it asks nothing more.
        assert_eq!(a.next().await, None);
        let asked = s.worker.requests().len();
        drop(a);
        assert_eq!(s.worker.requests().len(), asked);
    }

    #[test]
    fn pool_news_reach_the_listener_and_answers_reach_the_worker() {
        let s = start();
        let stats = locara_engine::protocol::WorkerStats {
            loaded: true,
            pool_cells: 512,
            ..locara_engine::protocol::WorkerStats::default()
        };
        let news = [
            Event::PoolFull {
                needed_cells: 300,
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
                dropped_sequences: 1,
                state_bytes: 3_600_000,
                ms: 4.5,
            },
            Event::Stats(stats.clone()),
            Event::Error {
                id: None,
                kind: ErrorKind::ResizeFailed,
                message: "no memory for 8192 cells".into(),
            },
        ];
        for ev in news.iter().cloned().chain([
            // Asked for by nobody once loaded: heard by nobody.
            Event::Ready {
                protocol: locara_engine::protocol::PROTOCOL_VERSION,
                engine: "fake".into(),
            },
        ]) {
            s.worker.emit(ev);
        }
        let heard: Vec<PoolNews> = (0..4)
            .map(|_| s.pool.recv_timeout(PATIENCE).unwrap())
            .collect();
        assert_eq!(heard, news);
        s.host.resize(1024);
        s.host.deny_growth();
        s.host.request_stats();
        let asked = s.worker.requests();
        assert_eq!(
            asked[asked.len() - 3..],
            [
                Request::Resize { cells: 1024 },
                Request::DenyGrowth,
                Request::Stats
            ]
        );
        // Nothing more comes: the listener goes with the routing thread.
        s.worker.kill();
        assert!(!s.exits.recv_timeout(PATIENCE).unwrap().expected);
        assert_eq!(
            s.pool.recv_timeout(PATIENCE),
            Err(std_mpsc::RecvTimeoutError::Disconnected)
        );
    }

    /// The exit is reported before any open stream hears of it, so a client
    /// that reads its error and asks again at once finds the death known
    /// (the runtime's `WorkerExited` is sent first). The callback holds the
    /// routing thread here until the streams have been looked at.
    #[tokio::test]
    async fn a_death_is_reported_before_the_open_streams_end() {
        let (reported_tx, reported) = std_mpsc::channel();
        let (go_on, hold) = std_mpsc::channel::<()>();
        let (host, worker, _pool) = start_with(move |exit| {
            reported_tx.send(exit).unwrap();
            let _ = hold.recv();
        });
        let mut a = generate(&host);
        let mut b = generate(&host);
        worker.emit(token(a.id, "a0"));
        worker.kill();
        let exit = reported.recv_timeout(PATIENCE).unwrap();
        assert!(!exit.expected);
        assert!(exit.status.contains("fake worker ended"), "{}", exit.status);
        // What the worker sent before it died has arrived; its end has not.
        assert_eq!(a.next().await, Some(StreamEvent::Token("a0".into())));
        assert_eq!(a.next().now_or_never(), None, "a heard before the report");
        assert_eq!(b.next().now_or_never(), None, "b heard before the report");
        assert_eq!(host.open_streams(), 2);
        go_on.send(()).unwrap();
        for g in [&mut a, &mut b] {
            let end = rest(g).await;
            assert_eq!(end.len(), 1, "{end:?}");
            assert_eq!(error_kind(&end[0]), "worker_died");
            assert!(
                matches!(&end[0], StreamEvent::Error { message, .. } if *message == exit.status)
            );
        }
        assert_eq!(host.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_stop_is_expected_and_ends_the_streams_as_unloaded() {
        let s = start();
        let mut a = generate(&s.host);
        s.host.stop(Duration::from_secs(2));
        assert!(s.exits.recv_timeout(PATIENCE).unwrap().expected);
        let end = rest(&mut a).await;
        assert_eq!(end.len(), 1, "{end:?}");
        assert_eq!(error_kind(&end[0]), "model_unloaded");
        // A generation asked of a stopped worker fails at once and leaves
        // no stream behind.
        let e = s
            .host
            .generate(
                Prompt::Raw { text: "x".into() },
                Sampling::greedy(),
                None,
                Vec::new(),
                true,
                true,
            )
            .err()
            .unwrap();
        assert_eq!(e.kind(), "worker_died");
        assert_eq!(s.host.open_streams(), 0);
    }

    #[test]
    fn a_kill_is_unexpected_but_an_end_after_the_host_is_dropped_is_expected() {
        let s = start();
        s.worker.kill();
        let exit = s.exits.recv_timeout(PATIENCE).unwrap();
        assert!(!exit.expected, "{exit:?}");

        // The host went away (the task dropped it: unloaded, evicted), so
        // the worker's end is no death.
        let s = start();
        drop(s.host);
        s.worker.kill();
        assert!(s.exits.recv_timeout(PATIENCE).unwrap().expected);
    }
}
