//! The governor task: one task owns the [`Governor`] state and carries out
//! its decisions with real engine workers.
//!
//! [`Runtime`] is the handle: it sends commands over a channel to the task
//! and awaits the answers. The task never blocks: loads, unloads and
//! footprint reads run on blocking threads and report back as commands.
//! The policy itself (admission, eviction, idle expiry) lives in
//! `locara_core::governor` and is tested there with values alone.
//!
//! A request that gets its model holds a [`Lease`]; dropping the lease tells
//! the governor the request ended (which starts the idle clock).

use crate::config::ServeConfig;
use crate::host::{Engine, PoolNews, WorkerExit, WorkerHost};
use crate::metrics::Metrics;
use crate::store::{ModelName, Store, StoreError};
use locara_core::estimate::{self, ENGINE_FULL_WINDOW_CACHE};
use locara_core::governor::{
    downshift_contexts, Acquire, Governor, KeepAlive, Measured, Phase, Policy, Refusal, Unload,
    UnloadReason, Wish,
};
use locara_core::ladder::{
    self, Ladder, LadderConfig, LadderState, ModelView, PressureLevel, Role, RuntimeView, TokenCaps,
};
use locara_core::{Backend, Bytes, EstimateOptions, KvType, ModelShape, PoolSize};
use locara_engine::protocol::LoadRequest;
use locara_platform::{MemoryProbe, SystemSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// How long a worker may take to exit when asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long a model stays idle before its K/V pool shrinks back to its
/// starting size. Long enough that the next turn of a chat (a person
/// reading and typing) finds its conversation cached; short enough that an
/// idle model does not hold a grown pool for its whole keep-alive.
pub const POOL_IDLE_SHRINK: Duration = Duration::from_secs(60);

/// What the task needs from the outside, fixed at start.
pub struct Settings {
    pub config: ServeConfig,
    /// The budget in bytes (the config's, or the machine's).
    pub budget: u64,
    pub store: Store,
    /// Starts engine workers.
    pub engine: Arc<dyn Engine>,
    /// The time, for every decision.
    pub clock: Arc<dyn Clock>,
    /// CPU threads per worker.
    pub threads: u32,
    /// The memory layout llama.cpp will use here, for estimates.
    pub backend: Backend,
    pub probe: Arc<dyn MemoryProbe>,
    /// The pressure ladder's settings.
    pub ladder: LadderConfig,
}

/// Where the governor task gets the time: all its decisions take `now`
/// from here, never from a clock read of their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// tokio's clock: the system's monotonic clock, which tests can pause and
/// advance (`tokio::time::pause`), so timers and decisions agree.
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// Why a request cannot have its model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("model {model:?} not found: {reason}")]
    NotFound { model: String, reason: String },
    #[error("model {model} cannot be used: {message}")]
    InvalidModel { model: String, message: String },
    #[error("{0}")]
    Refused(Refusal),
    #[error("loading {model} failed: {message}")]
    LoadFailed { model: String, message: String },
    #[error("{model} was unloaded before its load finished")]
    UnloadedWhileLoading { model: String },
    #[error("memory pressure is {level}: {detail}; retry in {} s", retry_after.as_secs())]
    Pressure {
        level: PressureLevel,
        retry_after: Duration,
        detail: String,
    },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the governor task has stopped")]
    Stopped,
}

/// What a request asks of its model.
#[derive(Debug, Clone, Default)]
pub struct ModelWish {
    pub model: String,
    /// An exact context per sequence, tokens; `None`: the configured
    /// default, which may be lowered when memory is short.
    pub context: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
}

/// A request's hold on a loaded model. Dropping it ends the hold.
pub struct Lease {
    pub host: Arc<WorkerHost>,
    pub model: String,
    pub instance: u64,
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Release {
            model: std::mem::take(&mut self.model),
            instance: self.instance,
        });
    }
}

/// One model in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    /// `loading` or `loaded`.
    pub state: Phase,
    /// The estimate at this context, mapped weights included, bytes.
    pub estimate: u64,
    /// The estimate's footprint part (what the OS will charge the worker),
    /// bytes.
    pub estimated_footprint: u64,
    /// Measured by the OS just now, bytes; `None` while loading.
    pub footprint: Option<u64>,
    /// Resident bytes of the mapped model file, measured, bytes.
    pub mapped_weights: Option<u64>,
    /// Context per sequence, tokens.
    pub context: u32,
    pub kv_type: KvType,
    /// Sequences that generate at once.
    pub parallel: u32,
    pub sequences_busy: u32,
    pub queued: u32,
    /// Milliseconds since the Unix epoch.
    pub last_used_unix_ms: u64,
    pub pinned: bool,
    /// The keep-alive as `KeepAlive::parse` reads it back: `-1` (pinned), `0` or a
    /// duration (`3m`).
    pub keep_alive: String,
    /// When it unloads if it stays idle, milliseconds since the Unix epoch;
    /// `None` while busy, loading or pinned.
    pub unload_at_unix_ms: Option<u64>,
    pub pid: Option<u32>,
    /// The llama.cpp build its worker runs.
    pub engine: Option<String>,
    /// The K/V pool its sequences share; `None` while it loads.
    #[serde(default)]
    pub pool: Option<PoolStatus>,
}

/// A loaded model's K/V pool, as its worker last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Cells allocated now (one cell holds one token of one sequence).
    pub cells: u32,
    /// Cells at load; an idle pool shrinks back to this.
    pub start_cells: u32,
    /// The most it may grow to: every sequence at its whole context.
    pub max_cells: u32,
    /// Cells that live and cached sequences hold (as of the worker's last
    /// figures).
    pub used_cells: u32,
    /// Finished conversations kept for prefix reuse.
    pub cached_sequences: u32,
    /// Resizes since load, both ways.
    pub resizes: u32,
    /// Growths the governor refused (budget or pressure).
    pub growth_refused: u32,
    /// Prompt tokens taken from cached K/V instead of prefilled, since load.
    pub reused_tokens: u64,
}

/// The runtime's state for `/locara/v1/status`, `locara ps` and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Bytes the runtime may hold.
    pub budget: u64,
    /// The budget as pressure leaves it, bytes.
    pub effective_budget: u64,
    /// Bytes held by loaded and loading models, bytes.
    pub held: u64,
    pub models: Vec<ModelStatus>,
    /// Models unloaded with `hold`: requests for them fail until loaded.
    pub held_unloaded: Vec<String>,
    /// The machine's memory now; `None` where it cannot be read.
    pub system: Option<SystemSnapshot>,
    pub pressure: PressureStatus,
    pub shutting_down: bool,
}

/// The pressure ladder in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PressureStatus {
    /// The level whose restrictions are in force.
    pub level: PressureLevel,
    /// The level last reported (by the OS or a simulation).
    pub reported: PressureLevel,
    /// `normal`, `warn`, `critical` or `recovering`.
    pub state: String,
    /// The OS's level, when a simulation overrides it.
    pub os_level: PressureLevel,
    /// A simulated level in force, and until when (milliseconds since the
    /// Unix epoch; `None`: until changed).
    pub simulated: Option<PressureLevel>,
    pub simulated_until_unix_ms: Option<u64>,
    /// New loads are refused (critical).
    pub refusing_loads: bool,
}

enum Command {
    Acquire {
        wish: ModelWish,
        reply: oneshot::Sender<Result<Lease, RuntimeError>>,
    },
    Release {
        model: String,
        instance: u64,
    },
    LoadDone {
        model: String,
        instance: u64,
        result: Result<(Arc<WorkerHost>, Option<Measured>), String>,
        seconds: f64,
    },
    WorkerExited {
        model: String,
        instance: u64,
        exit: WorkerExit,
    },
    Unload {
        model: String,
        hold: bool,
        reply: oneshot::Sender<bool>,
    },
    Unhold {
        model: String,
        reply: oneshot::Sender<bool>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// What each model holds now, as the governor counts it.
    Holdings {
        reply: oneshot::Sender<Vec<(String, u64)>>,
    },
    /// The estimate (mapped weights included) of loading a model with the
    /// configured context, bytes.
    Estimate {
        model: String,
        reply: oneshot::Sender<Result<u64, RuntimeError>>,
    },
    /// A worker's news of its K/V pool.
    Pool {
        model: String,
        instance: u64,
        news: PoolNews,
    },
    /// The OS's pressure level changed.
    OsPressure {
        level: PressureLevel,
        reason: String,
    },
    /// A simulated level (like `memory_pressure -S`), for `duration` or until
    /// changed; `normal` ends a simulation.
    Simulate {
        level: PressureLevel,
        duration: Option<Duration>,
        reply: oneshot::Sender<()>,
    },
}

/// A message on `GET /locara/v1/events`: one JSON object per event, with a
/// `version` field (see [`EVENTS_VERSION`]).
pub type AppEvent = serde_json::Value;

/// The version of the event payloads.
pub const EVENTS_VERSION: u32 = 1;

/// The handle to the governor task.
#[derive(Clone)]
pub struct Runtime {
    tx: mpsc::UnboundedSender<Command>,
    pub metrics: Arc<Metrics>,
    /// Token caps the pressure ladder sets, read by every generation.
    caps: watch::Receiver<TokenCaps>,
    events: broadcast::Sender<AppEvent>,
}

impl Runtime {
    /// Starts the governor task on the current tokio runtime.
    pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Runtime {
        let (tx, rx) = mpsc::unbounded_channel();
        let (caps_tx, caps) = watch::channel(TokenCaps::NONE);
        let (events, _) = broadcast::channel(256);
        let ladder = Ladder::new(settings.ladder).unwrap_or_default();
        let policy = Policy {
            keep_alive: settings.config.keep_alive,
            queue_depth: settings.config.queue,
            ..Policy::default()
        };
        let task = Task {
            governor: Governor::new(settings.budget, policy),
            hosts: HashMap::new(),
            waiters: HashMap::new(),
            loads: HashMap::new(),
            shapes: HashMap::new(),
            settings: Arc::new(settings),
            metrics: Arc::clone(&metrics),
            tx: tx.clone(),
            shutting_down: false,
            stopping: Vec::new(),
            ladder,
            os_level: PressureLevel::Normal,
            simulated: None,
            refusing: None,
            draining: HashSet::new(),
            caps: caps_tx,
            events: events.clone(),
            pressure_unloads: HashMap::new(),
            pools: HashMap::new(),
            shrunk: HashMap::new(),
        };
        tokio::spawn(task.run(rx));
        Runtime {
            tx,
            metrics,
            caps,
            events,
        }
    }

    /// The token caps in force now (pressure).
    pub fn caps(&self) -> TokenCaps {
        *self.caps.borrow()
    }

    /// What loading `model` at the configured context would cost, bytes.
    pub async fn estimate(&self, model: &str) -> Result<u64, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Estimate {
                model: model.to_string(),
                reply,
            })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Each loaded or loading model and the bytes it holds (its estimate, or
    /// its last measurement when more), without measuring anew: cheap
    /// enough for every request.
    pub async fn holdings(&self) -> Result<Vec<(String, u64)>, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Holdings { reply })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Sends an event to every `GET /locara/v1/events` reader.
    pub fn publish(&self, event: AppEvent) {
        let _ = self.events.send(event);
    }

    /// Events for apps: level changes, actions, bytes freed.
    pub fn subscribe(&self) -> broadcast::Receiver<AppEvent> {
        self.events.subscribe()
    }

    /// The OS reports a pressure level (from the platform's watch thread).
    pub fn report_pressure(&self, level: PressureLevel, reason: String) {
        let _ = self.tx.send(Command::OsPressure { level, reason });
    }

    /// Simulates a pressure level, driving exactly the handler that OS
    /// reports drive.
    pub async fn simulate_pressure(
        &self,
        level: PressureLevel,
        duration: Option<Duration>,
    ) -> Result<(), RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Simulate {
                level,
                duration,
                reply,
            })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Waits until the model is loaded (loading it if needed) and a place
    /// in it is held.
    pub async fn acquire(&self, wish: ModelWish) -> Result<Lease, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Acquire { wish, reply })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Unloads a model; `hold` keeps it unloaded. True when it was loaded.
    pub async fn unload(&self, model: &str, hold: bool) -> Result<bool, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Unload {
                model: model.to_string(),
                hold,
                reply,
            })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Loads a model (lifting a hold) and leaves it loaded, idle.
    pub async fn load(&self, wish: ModelWish) -> Result<(), RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Unhold {
                model: wish.model.clone(),
                reply,
            })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?;
        drop(self.acquire(wish).await?);
        Ok(())
    }

    pub async fn status(&self) -> Result<Status, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Status { reply })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Refuses new requests, stops every worker and waits for them to exit.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A load weighed before admission: see [`Task::plan_load`].
struct PlannedLoad {
    path: PathBuf,
    /// (context, estimate with mapped weights), bytes, in the order tried.
    candidates: Vec<(u32, u64)>,
    /// The footprint part of each candidate's estimate, bytes.
    footprints: Vec<u64>,
}

/// What the task remembers of a load beyond the governor's state.
struct LoadMeta {
    kv_type: KvType,
    estimated_footprint: u64,
}

/// The pressure ladder's view of the governor's state: every model with
/// its instance, pin, generating sequences (a loading model counts as busy),
/// idle time and what it holds (measured where it was, else its estimate).
pub fn ladder_view(governor: &Governor) -> RuntimeView {
    let models = governor
        .models()
        .map(|(name, m)| {
            let mut v = ModelView::new(name, m.instance, Role::Chat);
            v.pinned = m.pinned();
            v.generating = if m.phase == Phase::Loaded {
                m.active
            } else {
                1
            };
            v.idle_since = (m.phase == Phase::Loaded && m.active == 0).then_some(m.last_used);
            match m.measured {
                Some(x) => {
                    v.footprint = x.footprint;
                    v.mapped_weights = x.mapped_weights;
                }
                None => v.footprint = m.estimate,
            }
            v
        })
        .collect();
    RuntimeView {
        models,
        held_bytes: governor.held_bytes(),
        budget: governor.budget,
    }
}

struct Task {
    governor: Governor,
    /// Loaded models' workers, by name, with their instance.
    hosts: HashMap<String, (u64, Arc<WorkerHost>)>,
    /// Requests waiting for a load, by instance.
    waiters: HashMap<u64, Vec<oneshot::Sender<Result<Lease, RuntimeError>>>>,
    loads: HashMap<u64, LoadMeta>,
    /// Validated model files: path and estimate shape, by name.
    shapes: HashMap<String, (PathBuf, ModelShape)>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Command>,
    shutting_down: bool,
    /// Blocking stops in flight (joined at shutdown).
    stopping: Vec<tokio::task::JoinHandle<()>>,
    ladder: Ladder,
    /// The level the OS reports.
    os_level: PressureLevel,
    /// A simulated level overriding it, until when.
    simulated: Option<(PressureLevel, Option<Instant>)>,
    /// New loads are refused (critical), with this Retry-After.
    refusing: Option<Duration>,
    /// Instances draining at critical: no new requests.
    draining: HashSet<u64>,
    caps: watch::Sender<TokenCaps>,
    events: broadcast::Sender<AppEvent>,
    /// Pressure unloads waiting for their worker to exit: when the event
    /// came, the level, and the worker's footprint just before.
    pressure_unloads: HashMap<u64, (Instant, PressureLevel, u64)>,
    /// Loaded models' K/V pools, by instance.
    pools: HashMap<u64, PoolStatus>,
    /// Idle pools already asked to shrink, by instance, with the model's
    /// last use then: one shrink per idle spell.
    shrunk: HashMap<u64, Instant>,
}

impl Task {
    fn now(&self) -> Instant {
        self.settings.clock.now()
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = [
                self.governor.next_deadline(),
                self.ladder.next_deadline(&self.view()),
                self.simulated.and_then(|(_, until)| until),
                self.next_pool_shrink(),
            ]
            .into_iter()
            .flatten()
            .min();
            let command = match deadline {
                Some(at) => {
                    tokio::select! {
                        c = rx.recv() => c,
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                            self.tick();
                            continue;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(command) = command else { return };
            match command {
                Command::Acquire { wish, reply } => self.acquire(wish, reply),
                Command::Release { model, instance } => {
                    if let Some(u) = self.governor.release(&model, instance, self.now()) {
                        self.unload(u);
                    }
                    if self.ladder.level() != PressureLevel::Normal {
                        self.pressure_step(ladder::Event::GenerationFinished { model });
                    }
                }
                Command::LoadDone {
                    model,
                    instance,
                    result,
                    seconds,
                } => self.load_done(&model, instance, result, seconds),
                Command::WorkerExited {
                    model,
                    instance,
                    exit,
                } => self.worker_exited(&model, instance, exit),
                Command::Unload { model, hold, reply } => {
                    let u = self.governor.unload(&model, hold);
                    let was = u.is_some();
                    if let Some(u) = u {
                        self.unload(u);
                    }
                    let _ = reply.send(was);
                }
                Command::Unhold { model, reply } => {
                    let _ = reply.send(self.governor.unhold(&model));
                }
                Command::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                Command::Shutdown { reply } => {
                    self.shutting_down = true;
                    for u in self.governor.unload_all(UnloadReason::Shutdown) {
                        self.unload(u);
                    }
                    let stops = std::mem::take(&mut self.stopping);
                    tokio::spawn(async move {
                        for s in stops {
                            let _ = s.await;
                        }
                        let _ = reply.send(());
                    });
                }
                Command::Holdings { reply } => {
                    let held = self
                        .governor
                        .models()
                        .map(|(name, m)| (name.to_string(), m.held()))
                        .collect();
                    let _ = reply.send(held);
                }
                Command::Estimate { model, reply } => {
                    let _ = reply.send(self.estimate_of(&model));
                }
                Command::Pool {
                    model,
                    instance,
                    news,
                } => self.pool_news(&model, instance, news),
                Command::OsPressure { level, reason } => {
                    tracing::info!(%level, %reason, "the OS reports memory pressure");
                    self.os_level = level;
                    if self.simulated.is_none() {
                        self.pressure_step(ladder::Event::Level(level));
                    }
                }
                Command::Simulate {
                    level,
                    duration,
                    reply,
                } => {
                    let now = self.now();
                    tracing::info!(
                        %level,
                        for_s = duration.map(|d| d.as_secs()),
                        "simulating memory pressure"
                    );
                    self.simulated = if level == PressureLevel::Normal {
                        None
                    } else {
                        Some((level, duration.map(|d| now + d)))
                    };
                    let reported = if level == PressureLevel::Normal {
                        self.os_level
                    } else {
                        level
                    };
                    self.pressure_step(ladder::Event::Level(reported));
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Time passed: idle expiry, the end of a simulation, the ladder's
    /// grace and quiet periods.
    fn tick(&mut self) {
        self.expire();
        self.shrink_idle_pools(POOL_IDLE_SHRINK);
        let now = self.now();
        if let Some((_, Some(until))) = self.simulated {
            if until <= now {
                tracing::info!("the simulated pressure has ended");
                self.simulated = None;
                self.pressure_step(ladder::Event::Level(self.os_level));
                return;
            }
        }
        self.pressure_step(ladder::Event::Tick);
    }

    /// What the ladder decides over: every model, with what it holds.
    fn view(&self) -> RuntimeView {
        ladder_view(&self.governor)
    }

    /// One step of the pressure ladder, its actions carried out in order.
    fn pressure_step(&mut self, event: ladder::Event) {
        let now = self.now();
        let view = self.view();
        let before = self.ladder.level();
        let actions = self.ladder.on_event(&event, &view, now);
        let level = self.ladder.level();
        if level != before {
            tracing::info!(from = %before, to = %level, "memory pressure level in force");
            self.metrics.pressure_level(match level {
                PressureLevel::Normal => 0,
                PressureLevel::Warn => 1,
                PressureLevel::Critical => 2,
            });
        }
        for action in actions {
            self.apply(action, level, now);
        }
    }

    fn publish(&self, event: AppEvent) {
        let _ = self.events.send(event);
    }

    fn apply(&mut self, action: ladder::Action, level: PressureLevel, at: Instant) {
        use ladder::Action;
        tracing::info!(%level, action = action.kind(), detail = %action, "pressure action");
        self.metrics.pressure_action(action.kind(), level.as_str());
        self.publish(serde_json::json!({
            "version": EVENTS_VERSION,
            "type": "action",
            "level": level,
            "action": action.kind(),
            "detail": action.to_string(),
        }));
        match action {
            Action::RefuseLoads { retry_after } => self.refusing = Some(retry_after),
            // Loads come back, and so do new requests to models drained at
            // critical (the action says so): a drained model whose last
            // responses outlasted the episode refused every request until it
            // unloaded, which for a pinned model could be never.
            Action::AcceptLoads => {
                self.refusing = None;
                self.draining.clear();
            }
            // Nothing preloads models yet: loads happen on request only.
            Action::StopPreload | Action::ResumePreload => {}
            Action::SetEffectiveBudget { bytes } => {
                self.governor.effective_budget = bytes.min(self.governor.budget);
            }
            Action::RestoreBudget => self.governor.effective_budget = self.governor.budget,
            Action::SetTokenCaps(caps) => {
                self.caps.send_replace(caps);
            }
            Action::Drain { instance, .. } => {
                self.draining.insert(instance);
            }
            // Idle pools give back what they grew by, now: cached
            // conversations beyond the starting pool are dropped.
            Action::DropIdleKv { .. } => self.shrink_idle_pools(Duration::ZERO),
            Action::Unload {
                model,
                instance,
                level,
            } => {
                let reason = if level == PressureLevel::Critical {
                    UnloadReason::PressureCritical
                } else {
                    UnloadReason::PressureWarn
                };
                if let Some(u) = self.governor.unload_instance(&model, instance, reason) {
                    let footprint = self
                        .hosts
                        .get(&model)
                        .filter(|(i, _)| *i == instance)
                        .and_then(|(_, h)| self.settings.probe.process_footprint(h.pid()).ok())
                        .map_or(0, |f| f.footprint);
                    self.pressure_unloads
                        .insert(instance, (at, level, footprint));
                    self.unload(u);
                }
            }
            Action::Notify {
                level,
                effective_budget,
            } => {
                self.publish(serde_json::json!({
                    "version": EVENTS_VERSION,
                    "type": "level",
                    "level": level,
                    "budget": self.governor.budget,
                    "effective_budget": effective_budget,
                }));
            }
        }
    }

    /// A worker's news of its K/V pool. Growth is admitted like a load:
    /// within the effective budget, idle models evicted first, never under
    /// pressure; the worker holds the generations that need room until it
    /// hears the answer.
    fn pool_news(&mut self, model: &str, instance: u64, news: PoolNews) {
        let Some((_, host)) = self
            .hosts
            .get(model)
            .filter(|(i, _)| *i == instance)
            .map(|(i, h)| (*i, Arc::clone(h)))
        else {
            return;
        };
        match news {
            PoolNews::Full {
                needed_cells,
                pool_cells,
                used_cells,
                pool_max_cells,
                suggested_cells,
            } => {
                let level = self.ladder.level();
                let verdict = if self.shutting_down {
                    Err("the daemon is stopping".to_string())
                } else if level != PressureLevel::Normal {
                    Err(format!("memory pressure is {level}"))
                } else {
                    self.grant_growth(model, instance, suggested_cells)
                };
                match verdict {
                    Ok(evicted) => {
                        tracing::info!(
                            %model,
                            from_cells = pool_cells,
                            to_cells = suggested_cells,
                            needed_cells,
                            "growing the K/V pool"
                        );
                        // Evicted workers exit first, so their memory is back
                        // before the new pool is made.
                        tokio::task::spawn_blocking(move || {
                            for h in evicted {
                                h.stop(STOP_GRACE);
                            }
                            host.resize(suggested_cells);
                        });
                    }
                    Err(why) => {
                        tracing::info!(
                            %model,
                            pool_cells,
                            used_cells,
                            pool_max_cells,
                            wanted_cells = suggested_cells,
                            "K/V pool growth refused: {why}; the waiting generations shift their context or end"
                        );
                        if let Some(p) = self.pools.get_mut(&instance) {
                            p.growth_refused += 1;
                        }
                        self.metrics.pool_growth_refused(model);
                        host.deny_growth();
                    }
                }
            }
            PoolNews::Resized {
                cells,
                previous_cells,
                moved_sequences,
                dropped_sequences,
                state_bytes,
                ms,
            } => {
                tracing::info!(
                    %model,
                    cells,
                    previous_cells,
                    moved_sequences,
                    dropped_sequences,
                    state_bytes,
                    ms,
                    "K/V pool resized"
                );
                self.metrics.pool_resized(model, cells > previous_cells);
                if let Some(p) = self.pools.get_mut(&instance) {
                    p.cells = cells;
                    p.resizes += 1;
                }
                // The estimate follows the pool: a grown one was admitted
                // at its new size already; a smaller one counts less now.
                if cells < previous_cells {
                    if let Some(estimate) = self.pool_estimate(model, cells) {
                        self.governor.shrink(model, instance, estimate);
                    }
                }
            }
            PoolNews::Stats(stats) => {
                if let Some(p) = self.pools.get_mut(&instance) {
                    p.cells = stats.pool_cells;
                    p.used_cells = stats.pool_used_cells;
                    p.cached_sequences = stats.cached_sequences;
                    p.reused_tokens = stats.reused_tokens_total;
                }
            }
            PoolNews::Failed { kind, message } => {
                tracing::warn!(%model, %kind, %message, "the worker reports a failure");
            }
        }
    }

    /// Asks the governor for the bytes of a pool of `cells` cells.
    fn grant_growth(
        &mut self,
        model: &str,
        instance: u64,
        cells: u32,
    ) -> Result<Vec<Arc<WorkerHost>>, String> {
        let estimate = self
            .pool_estimate(model, cells)
            .ok_or_else(|| "its estimate is unknown".to_string())?;
        match self.governor.grow(model, instance, estimate) {
            Ok(evict) => Ok(self.evicted_hosts(&evict, model)),
            Err(shortfall) => Err(format!(
                "a pool of {cells} cells needs {}, {} of a {} budget free",
                Bytes(shortfall.needed),
                Bytes(shortfall.free),
                Bytes(shortfall.effective_budget)
            )),
        }
    }

    /// Counts and logs the models the governor evicted to make room for
    /// `for_model` (a load, or its pool's growth), and takes their workers
    /// out of the loaded set; the caller stops them before the memory is
    /// used again.
    fn evicted_hosts(&mut self, evicted: &[Unload], for_model: &str) -> Vec<Arc<WorkerHost>> {
        let mut hosts = Vec::new();
        for u in evicted {
            self.metrics.evicted(&u.model);
            self.metrics.unloaded(&u.model, u.reason.as_str());
            tracing::info!(
                model = %u.model,
                held_bytes = u.held,
                held = %locara_core::Bytes(u.held),
                for_model,
                "evicting to make room"
            );
            if let Some((_, host)) = self.hosts.remove(&u.model) {
                hosts.push(host);
            }
        }
        hosts
    }

    /// The estimate of a loaded model with a pool of `cells` cells.
    fn pool_estimate(&self, model: &str, cells: u32) -> Option<u64> {
        let context = self.governor.model(model)?.context;
        let (_, shape) = self.shapes.get(model)?;
        self.estimate_at(model, shape, context, Some(cells))
            .ok()
            .map(|e| e.total())
    }

    /// Pools grown past their start whose model has been idle `after`:
    /// back to the starting size (the worker keeps the most recent cached
    /// conversations that fit).
    fn shrink_idle_pools(&mut self, after: Duration) {
        let now = self.now();
        for (name, m) in self.governor.models() {
            let Some(pool) = self.pools.get(&m.instance) else {
                continue;
            };
            let idle = m.phase == Phase::Loaded
                && m.active == 0
                && now.saturating_duration_since(m.last_used) >= after;
            let asked = self.shrunk.get(&m.instance) == Some(&m.last_used);
            if idle && !asked && pool.cells > pool.start_cells {
                if let Some((_, host)) = self.hosts.get(name).filter(|(i, _)| *i == m.instance) {
                    host.resize(pool.start_cells);
                    self.shrunk.insert(m.instance, m.last_used);
                }
            }
        }
    }

    /// When the next idle pool is due to shrink.
    fn next_pool_shrink(&self) -> Option<Instant> {
        self.governor
            .models()
            .filter(|(_, m)| m.phase == Phase::Loaded && m.active == 0)
            .filter(|(_, m)| {
                self.pools
                    .get(&m.instance)
                    .is_some_and(|p| p.cells > p.start_cells)
                    && self.shrunk.get(&m.instance) != Some(&m.last_used)
            })
            .map(|(_, m)| m.last_used + POOL_IDLE_SHRINK)
            .min()
    }

    fn expire(&mut self) {
        for u in self.governor.expire(self.now()) {
            self.unload(u);
        }
    }

    /// The path and estimate shape of a stored model.
    fn shape(&mut self, model: &str) -> Result<(PathBuf, ModelShape), RuntimeError> {
        if let Some(s) = self.shapes.get(model) {
            return Ok(s.clone());
        }
        let name: ModelName = model
            .parse()
            .map_err(|e: StoreError| RuntimeError::NotFound {
                model: model.to_string(),
                reason: e.to_string(),
            })?;
        let entry = self
            .settings
            .store
            .get(&name)
            .map_err(|e| RuntimeError::InvalidModel {
                model: model.to_string(),
                message: e.to_string(),
            })?
            .ok_or_else(|| RuntimeError::NotFound {
                model: model.to_string(),
                reason: format!(
                    "it is not in the store; run `locara pull {model}` or `locara import`"
                ),
            })?;
        let file =
            locara_gguf::validate_file(&entry.path).map_err(|e| RuntimeError::InvalidModel {
                model: model.to_string(),
                message: e.to_string(),
            })?;
        let found = (entry.path, file.shape());
        self.shapes.insert(model.to_string(), found.clone());
        Ok(found)
    }

    /// The estimate of `shape` at `context` with the configured K/V type
    /// and sequences, sharing a pool of `pool` cells (`None`: the pool's
    /// starting size at that context).
    fn estimate_at(
        &self,
        model: &str,
        shape: &ModelShape,
        context: u32,
        pool: Option<u32>,
    ) -> Result<locara_core::Estimate, RuntimeError> {
        let config = &self.settings.config;
        let pool = pool.unwrap_or_else(|| PoolSize::new(context, config.parallel).start);
        let options = EstimateOptions {
            context,
            kv_type: config.kv_type,
            parallel: config.parallel,
            backend: self.settings.backend.clone(),
            full_window_cache: ENGINE_FULL_WINDOW_CACHE,
            pool: Some(pool),
        };
        estimate::estimate(shape, &options).map_err(|e| RuntimeError::InvalidModel {
            model: model.to_string(),
            message: e.to_string(),
        })
    }

    fn estimate_of(&mut self, model: &str) -> Result<u64, RuntimeError> {
        let (_, shape) = self.shape(model)?;
        Ok(self
            .estimate_at(model, &shape, self.settings.config.context, None)?
            .total())
    }

    /// What loading a model not yet held needs: its file, and the contexts
    /// admission may try, each with its estimate (mapped weights included)
    /// and footprint, in bytes.
    fn plan_load(&mut self, wish: &ModelWish) -> Result<PlannedLoad, RuntimeError> {
        let (path, shape) = self.shape(&wish.model)?;
        let contexts = match wish.context {
            Some(c) => vec![c],
            None => downshift_contexts(
                self.settings
                    .config
                    .context
                    .min(shape.context_length.max(1)),
                self.governor.policy.min_context,
            ),
        };
        let mut candidates: Vec<(u32, u64)> = Vec::new();
        let mut footprints = Vec::new();
        for context in contexts {
            let e = self.estimate_at(&wish.model, &shape, context, None)?;
            if !candidates.iter().any(|&(c, _)| c == e.context) {
                candidates.push((e.context, e.total()));
                footprints.push(e.footprint());
            }
        }
        Ok(PlannedLoad {
            path,
            candidates,
            footprints,
        })
    }

    fn acquire(&mut self, wish: ModelWish, reply: oneshot::Sender<Result<Lease, RuntimeError>>) {
        if self.shutting_down {
            let _ = reply.send(Err(RuntimeError::ShuttingDown));
            return;
        }
        let level = self.ladder.level();
        let retry_after = self.ladder.config().retry_after;
        match self.governor.model(&wish.model) {
            Some(m) if self.draining.contains(&m.instance) => {
                self.metrics.refused(&wish.model, "pressure");
                let _ = reply.send(Err(RuntimeError::Pressure {
                    level,
                    retry_after,
                    detail: format!(
                        "{} is finishing its last responses before it unloads",
                        wish.model
                    ),
                }));
                return;
            }
            None if self.refusing.is_some() => {
                self.metrics.refused(&wish.model, "pressure");
                let _ = reply.send(Err(RuntimeError::Pressure {
                    level,
                    retry_after: self.refusing.unwrap_or(retry_after),
                    detail: format!("new loads are refused, so {} cannot load", wish.model),
                }));
                return;
            }
            _ => {}
        }
        // A model already held needs no estimate: admission only weighs new
        // loads.
        let planned = if self.governor.model(&wish.model).is_some() {
            None
        } else {
            match self.plan_load(&wish) {
                Ok(p) => Some(p),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        };
        let settings = Arc::clone(&self.settings);
        let config = &settings.config;
        let gwish = Wish {
            model: wish.model.clone(),
            candidates: planned
                .as_ref()
                .map_or_else(Vec::new, |p| p.candidates.clone()),
            parallel: config.parallel,
            keep_alive: wish.keep_alive,
        };
        match self.governor.acquire(&gwish, self.now()) {
            Acquire::Ready => {
                let lease = self.lease(&wish.model);
                let _ = reply.send(lease);
            }
            Acquire::Wait => {
                let instance = self.governor.model(&wish.model).map_or(0, |m| m.instance);
                self.waiters.entry(instance).or_default().push(reply);
            }
            Acquire::Load(load) => {
                let planned = planned.expect("the governor loads only models it did not hold");
                let footprint = planned
                    .candidates
                    .iter()
                    .position(|&(c, _)| c == load.context)
                    .map_or(0, |i| planned.footprints[i]);
                self.loads.insert(
                    load.instance,
                    LoadMeta {
                        kv_type: config.kv_type,
                        estimated_footprint: footprint,
                    },
                );
                self.waiters.insert(load.instance, vec![reply]);
                let evicted = self.evicted_hosts(&load.evict, &load.model);
                let request = LoadRequest {
                    path: planned.path,
                    context: Some(load.context),
                    kv_type: config.kv_type,
                    parallel: load.parallel,
                    threads: self.settings.threads,
                    gpu_layers: None,
                    // The pool starts small and grows when the governor
                    // grants the bytes (PoolFull, answered in `pool_news`).
                    pool: Some(PoolSize::new(load.context, load.parallel).start),
                    pool_max: Some(PoolSize::new(load.context, load.parallel).max),
                };
                self.spawn_load(load.model, load.instance, request, evicted);
            }
            Acquire::Refused(refusal) => {
                let kind = match &refusal {
                    Refusal::Held { .. } => "held",
                    Refusal::QueueFull { .. } => "queue_full",
                    Refusal::InsufficientMemory(_) => "insufficient_memory",
                };
                self.metrics.refused(&wish.model, kind);
                let err = match refusal {
                    Refusal::InsufficientMemory(_) if level != PressureLevel::Normal => {
                        RuntimeError::Pressure {
                            level,
                            retry_after,
                            detail: format!(
                                "the effective budget is lowered to {} of {}; {refusal}",
                                Bytes(self.governor.effective_budget),
                                Bytes(self.governor.budget)
                            ),
                        }
                    }
                    other => RuntimeError::Refused(other),
                };
                let _ = reply.send(Err(err));
            }
        }
    }

    fn lease(&self, model: &str) -> Result<Lease, RuntimeError> {
        match self.hosts.get(model) {
            Some((instance, host)) => Ok(Lease {
                host: Arc::clone(host),
                model: model.to_string(),
                instance: *instance,
                tx: self.tx.clone(),
            }),
            None => Err(RuntimeError::UnloadedWhileLoading {
                model: model.to_string(),
            }),
        }
    }

    /// Stops the evicted workers (waiting for them, so their memory is back
    /// before the new one grows), then starts the new one, off the task.
    fn spawn_load(
        &mut self,
        model: String,
        instance: u64,
        request: LoadRequest,
        evicted: Vec<Arc<WorkerHost>>,
    ) {
        let settings = Arc::clone(&self.settings);
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            for host in evicted {
                host.stop(STOP_GRACE);
            }
            let started = Instant::now();
            let exit_tx = tx.clone();
            let exit_model = model.clone();
            let pool_tx = tx.clone();
            let pool_model = model.clone();
            let result = WorkerHost::start(
                &*settings.engine,
                request,
                move |exit| {
                    let _ = exit_tx.send(Command::WorkerExited {
                        model: exit_model,
                        instance,
                        exit,
                    });
                },
                Box::new(move |news| {
                    let _ = pool_tx.send(Command::Pool {
                        model: pool_model.clone(),
                        instance,
                        news,
                    });
                }),
            )
            .map(|host| {
                let measured =
                    settings
                        .probe
                        .process_footprint(host.pid())
                        .ok()
                        .map(|f| Measured {
                            footprint: f.footprint,
                            mapped_weights: f.mapped_weights,
                        });
                (host, measured)
            })
            .map_err(|e| e.to_string());
            let _ = tx.send(Command::LoadDone {
                model,
                instance,
                result,
                seconds: started.elapsed().as_secs_f64(),
            });
        });
    }

    fn load_done(
        &mut self,
        model: &str,
        instance: u64,
        result: Result<(Arc<WorkerHost>, Option<Measured>), String>,
        seconds: f64,
    ) {
        let waiters = self.waiters.remove(&instance).unwrap_or_default();
        match result {
            Ok((host, measured)) => {
                self.metrics.load_finished(model, seconds, true);
                if !self.governor.loaded(instance, measured, self.now()) {
                    // Unloaded while it loaded: its waiters were told then.
                    self.stop_host(host);
                    return;
                }
                if let (Some(m), Some(meta)) = (measured, self.loads.get(&instance)) {
                    self.metrics
                        .estimate_checked(model, meta.estimated_footprint, m.footprint);
                }
                self.pools.insert(
                    instance,
                    PoolStatus {
                        cells: host.info.pool_cells,
                        start_cells: host.info.pool_cells,
                        max_cells: host.info.pool_max_cells,
                        ..PoolStatus::default()
                    },
                );
                self.hosts
                    .insert(model.to_string(), (instance, Arc::clone(&host)));
                for w in waiters {
                    // A waiter that went away drops its lease, which
                    // releases its place.
                    let _ = w.send(self.lease(model));
                }
            }
            Err(message) => {
                self.metrics.load_finished(model, seconds, false);
                self.governor.load_failed(instance);
                self.loads.remove(&instance);
                tracing::warn!(%model, %message, "loading failed");
                for w in waiters {
                    let _ = w.send(Err(RuntimeError::LoadFailed {
                        model: model.to_string(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    fn worker_exited(&mut self, model: &str, instance: u64, exit: WorkerExit) {
        self.draining.remove(&instance);
        self.pools.remove(&instance);
        self.shrunk.remove(&instance);
        if let Some((at, level, footprint)) = self.pressure_unloads.remove(&instance) {
            let ms = at.elapsed().as_millis();
            tracing::info!(
                %level,
                %model,
                freed_bytes = footprint,
                freed = %Bytes(footprint),
                ms = ms as u64,
                "pressure unload: memory back to the OS"
            );
            self.metrics.pressure_freed(level.as_str(), footprint);
            self.publish(serde_json::json!({
                "version": EVENTS_VERSION,
                "type": "freed",
                "level": level,
                "model": model,
                "bytes": footprint,
                "ms": ms as u64,
            }));
        }
        if exit.expected {
            self.governor.worker_exited(instance);
        } else if let Some(u) = self.governor.worker_died(instance) {
            tracing::warn!(%model, status = %exit.status, "the worker died");
            self.metrics.unloaded(model, u.reason.as_str());
        }
        self.loads.remove(&instance);
        if self.hosts.get(model).is_some_and(|(i, _)| *i == instance) {
            self.hosts.remove(model);
        }
    }

    fn unload(&mut self, u: Unload) {
        self.metrics.unloaded(&u.model, u.reason.as_str());
        tracing::info!(
            model = %u.model,
            reason = u.reason.as_str(),
            held_bytes = u.held,
            held = %locara_core::Bytes(u.held),
            "unloading"
        );
        for w in self.waiters.remove(&u.instance).unwrap_or_default() {
            let _ = w.send(Err(RuntimeError::UnloadedWhileLoading {
                model: u.model.clone(),
            }));
        }
        match self.hosts.get(&u.model) {
            Some((i, _)) if *i == u.instance => {
                if let Some((_, host)) = self.hosts.remove(&u.model) {
                    self.stop_host(host);
                }
            }
            // Still loading: `load_done` stops it when it arrives.
            _ => {}
        }
    }

    fn stop_host(&mut self, host: Arc<WorkerHost>) {
        self.stopping.retain(|h| !h.is_finished());
        self.stopping
            .push(tokio::task::spawn_blocking(move || host.stop(STOP_GRACE)));
    }

    fn status(&mut self) -> Status {
        let now = self.now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let to_unix = |t: Instant| -> u64 {
            if t >= now {
                unix_now.saturating_add((t - now).as_millis() as u64)
            } else {
                unix_now.saturating_sub((now - t).as_millis() as u64)
            }
        };
        // Measure every worker now: the OS's figure, not a remembered one.
        let fresh: Vec<(u64, Measured)> = self
            .hosts
            .values()
            .filter_map(|(instance, host)| {
                let f = self.settings.probe.process_footprint(host.pid()).ok()?;
                Some((
                    *instance,
                    Measured {
                        footprint: f.footprint,
                        mapped_weights: f.mapped_weights,
                    },
                ))
            })
            .collect();
        for (instance, m) in fresh {
            self.governor.measured(instance, m);
        }
        // The pools' figures come back as events; this status shows the
        // last ones, the next shows these.
        for (_, host) in self.hosts.values() {
            host.request_stats();
        }
        let models = self
            .governor
            .models()
            .map(|(name, m)| {
                let host = self
                    .hosts
                    .get(name)
                    .filter(|(i, _)| *i == m.instance)
                    .map(|(_, h)| h);
                let meta = self.loads.get(&m.instance);
                ModelStatus {
                    name: name.to_string(),
                    state: m.phase,
                    estimate: m.estimate,
                    estimated_footprint: meta.map_or(0, |l| l.estimated_footprint),
                    footprint: m.measured.map(|x| x.footprint),
                    mapped_weights: m.measured.map(|x| x.mapped_weights),
                    context: m.context,
                    kv_type: meta.map_or(self.settings.config.kv_type, |l| l.kv_type),
                    parallel: m.parallel,
                    sequences_busy: m.busy(),
                    queued: m.queued(),
                    last_used_unix_ms: to_unix(m.last_used),
                    pinned: m.pinned(),
                    keep_alive: m.keep_alive.to_string(),
                    unload_at_unix_ms: m.unload_at().map(to_unix),
                    pid: host.map(|h| h.pid()),
                    engine: host.map(|h| h.engine().to_string()),
                    pool: self.pools.get(&m.instance).cloned(),
                }
            })
            .collect();
        Status {
            budget: self.governor.budget,
            effective_budget: self.governor.effective_budget,
            held: self.governor.held_bytes(),
            models,
            held_unloaded: self.governor.held_models().map(str::to_string).collect(),
            system: self.settings.probe.snapshot().ok(),
            pressure: PressureStatus {
                level: self.ladder.level(),
                reported: self.ladder.reported(),
                state: match self.ladder.state() {
                    LadderState::Normal => "normal",
                    LadderState::Warn { .. } => "warn",
                    LadderState::Critical { .. } => "critical",
                    LadderState::Recovering { .. } => "recovering",
                }
                .to_string(),
                os_level: self.os_level,
                simulated: self.simulated.map(|(l, _)| l),
                simulated_until_unix_ms: self.simulated.and_then(|(_, u)| u).map(to_unix),
                refusing_loads: self.refusing.is_some(),
            },
            shutting_down: self.shutting_down,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The governor task with fake workers and tokio's paused clock: no
    //! model, no process, no sleeps (a `sleep` here advances paused time).
    use super::*;
    use crate::config::RawServeConfig;
    use crate::host::StreamEvent;
    use crate::testing::FakeEngine;

    struct Setup {
        runtime: Runtime,
        engine: Arc<FakeEngine>,
        _home: tempfile::TempDir,
    }

    /// A runtime over a store holding synthetic models `names`, with this
    /// budget (`None`: plenty).
    fn setup(names: &[&str], budget: Option<u64>) -> Setup {
        setup_with(names, budget, FakeEngine::new(3))
    }

    fn setup_with(names: &[&str], budget: Option<u64>, engine: Arc<FakeEngine>) -> Setup {
        let home = tempfile::tempdir().unwrap();
        let settings = crate::testing::synthetic_settings(
            home.path(),
            names,
            Arc::clone(&engine),
            RawServeConfig {
                queue: Some(1),
                ..Default::default()
            },
            budget.unwrap_or(1 << 40),
        );
        let runtime = Runtime::start(settings, Arc::new(Metrics::new()));
        Setup {
            runtime,
            engine,
            _home: home,
        }
    }

    fn wish(model: &str) -> ModelWish {
        ModelWish {
            model: model.into(),
            ..ModelWish::default()
        }
    }

    async fn loaded(rt: &Runtime) -> Vec<String> {
        rt.status()
            .await
            .unwrap()
            .models
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn two_requests_for_an_unloaded_model_load_it_once() {
        let s = setup(&["a:1"], None);
        let (x, y) = tokio::join!(
            s.runtime.acquire(wish("a:1")),
            s.runtime.acquire(wish("a:1"))
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.instance, y.instance);
        assert_eq!(s.engine.spawned(), 1);
        // A third waits beyond the one sequence and the queue of one.
        let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
        assert!(
            matches!(e, RuntimeError::Refused(Refusal::QueueFull { .. })),
            "{e}"
        );
    }

    /// Regression: `AcceptLoads` did not end the drains of critical, so a
    /// model whose response outlasted the episode refused every new
    /// request with 503 until it unloaded.
    #[tokio::test(start_paused = true)]
    async fn a_model_drained_at_critical_takes_requests_again_once_loads_are_accepted() {
        let s = setup(&["a:1"], None);
        let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
        s.runtime
            .simulate_pressure(PressureLevel::Critical, None)
            .await
            .unwrap();
        let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
        assert!(matches!(e, RuntimeError::Pressure { .. }), "{e}");
        s.runtime
            .simulate_pressure(PressureLevel::Normal, None)
            .await
            .unwrap();
        // One quiet period later the ladder accepts loads again.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(!s.runtime.status().await.unwrap().pressure.refusing_loads);
        drop(lease);
        let again = s.runtime.acquire(wish("a:1")).await;
        assert!(again.is_ok(), "{:?}", again.err());
        assert_eq!(s.engine.spawned(), 1, "the same worker serves it");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_model_unloads_after_keep_alive() {
        let s = setup(&["a:1"], None);
        let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
        // Busy: never unloaded, however long.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(loaded(&s.runtime).await, ["a:1"]);
        drop(lease);
        tokio::time::sleep(Duration::from_secs(179)).await;
        assert_eq!(loaded(&s.runtime).await, ["a:1"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(loaded(&s.runtime).await.is_empty());
        let m = s.runtime.metrics.render(&crate::metrics::Gauges::default());
        assert!(m.contains("reason=\"idle\""), "{m}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_model_evicts_the_idle_first_within_the_budget() {
        let s = setup(&["a:1", "b:1"], None);
        let one = s.runtime.estimate("a:1").await.unwrap();
        let s = {
            drop(s);
            setup(&["a:1", "b:1"], Some(one + one / 2))
        };
        drop(s.runtime.acquire(wish("a:1")).await.unwrap());
        let b = s.runtime.acquire(wish("b:1")).await.unwrap();
        assert_eq!(loaded(&s.runtime).await, ["b:1"]);
        assert_eq!(s.engine.spawned(), 2);
        // With b busy, a cannot come back: refused with the numbers.
        let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
        let text = e.to_string();
        assert!(text.contains("b:1") && text.contains("busy"), "{text}");
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_dies_ends_its_streams_and_the_next_request_reloads() {
        let s = setup(&["a:1"], None);
        let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
        let mut generation = lease
            .host
            .generate(
                locara_engine::protocol::Prompt::Raw { text: "x".into() },
                locara_engine::protocol::Sampling::greedy(),
                Some(2),
                Vec::new(),
                true,
                true,
            )
            .unwrap();
        let mut texts = Vec::new();
        while let Some(ev) = generation.next().await {
            texts.push(ev);
        }
        assert_eq!(texts.len(), 3, "{texts:?}");
        drop(lease);
        s.engine.kill_all();
        // The death reaches the task from the worker's event thread (a real
        // thread: poll with a real deadline); the model is gone, and comes
        // back on the next request.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !loaded(&s.runtime).await.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(loaded(&s.runtime).await.is_empty());
        let m = s.runtime.metrics.render(&crate::metrics::Gauges::default());
        assert!(m.contains("reason=\"worker_died\""), "{m}");
        drop(s.runtime.acquire(wish("a:1")).await.unwrap());
        assert_eq!(s.engine.spawned(), 2);
    }

    #[tokio::test]
    async fn a_request_right_after_a_worker_died_mid_stream_gets_a_new_worker() {
        // The client hears of the death from its stream and asks again at
        // once: the task must have heard of it first, or the new request
        // is handed the dead worker.
        for round in 0..50 {
            let s = setup_with(&["a:1"], None, FakeEngine::stalling(2));
            let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
            let dead = lease.host.pid();
            let mut generation = lease
                .host
                .generate(
                    locara_engine::protocol::Prompt::Raw { text: "x".into() },
                    locara_engine::protocol::Sampling::greedy(),
                    None,
                    Vec::new(),
                    true,
                    true,
                )
                .unwrap();
            for _ in 0..2 {
                let ev = generation.next().await;
                assert!(matches!(ev, Some(StreamEvent::Token(_))), "{ev:?}");
            }
            s.engine.kill_all();
            match generation.next().await {
                Some(StreamEvent::Error { kind, .. }) => assert_eq!(kind, "worker_died"),
                other => panic!("round {round}: {other:?}"),
            }
            drop(generation);
            drop(lease);
            let next = s.runtime.acquire(wish("a:1")).await.unwrap();
            assert_ne!(next.host.pid(), dead, "round {round}: the dead worker");
            assert_eq!(s.engine.spawned(), 2, "round {round}");
        }
    }
}
