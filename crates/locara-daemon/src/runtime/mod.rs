//! The governor task: one task feeds the [`Controller`] (the daemon's
//! whole memory policy, in `locara_core`) events and carries out its
//! effects with real engine workers.
//!
//! [`Runtime`] is the handle: it sends commands over a channel to the task
//! and awaits the answers. The task never blocks: model files are read and
//! validated, workers started and stopped, and footprints measured on
//! blocking threads, which report back as commands. A measure tick keeps
//! the footprints admission weighs fresh; status reads those figures and
//! measures nothing itself.
//!
//! A request that gets its model holds a [`Lease`]; dropping the lease tells
//! the controller the request ended (which starts the idle clock).

use crate::config::ServeConfig;
use crate::host::{Engine, PoolNews, WorkerExit, WorkerHost};
use crate::metrics::Metrics;
use crate::store::Store;
use locara_core::controller::{AppClaim, Denial};
use locara_core::governor::{KeepAlive, Measured, Refusal};
use locara_core::ladder::{LadderConfig, PressureLevel, Role, TokenCaps};
use locara_core::manifest::{ModelDecl, Speculative};
use locara_core::power::{PowerMode, PowerState, ThermalState};
use locara_core::threads::Priority;
use locara_core::{Backend, KvType, LoadDefaults};
use locara_platform::MemoryProbe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

mod status;
mod task;

use crate::history::{HistoryLog, SAMPLE_EVERY};

pub use locara_core::controller::{AppEvent, PoolStatus, EVENTS_VERSION, POOL_IDLE_SHRINK};
pub use status::{LadderStage, ModelStatus, PowerStatus, PressureStatus, Status};

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
    /// Performance cores the busy workers share (`locara_core::threads`);
    /// a worker starts with all of them.
    pub threads: u32,
    /// The memory layout llama.cpp will use here, for estimates.
    pub backend: Backend,
    pub probe: Arc<dyn MemoryProbe>,
    /// The pressure ladder's settings.
    pub ladder: LadderConfig,
    /// Where the models held unloaded are remembered across restarts;
    /// `None`: not remembered.
    pub holds_file: Option<std::path::PathBuf>,
    /// Where the governor publishes the loaded models' mapped weights, as
    /// last measured, for the OS pressure watch (which counts them as not
    /// available to other processes when it judges warn).
    pub held_mapped: locara_platform::HeldMapped,
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
    /// The machine is too hot for new background work.
    #[error("the machine's thermal state is {thermal}: {detail}; retry in {} s", retry_after.as_secs())]
    Thermal {
        thermal: ThermalState,
        retry_after: Duration,
        detail: String,
    },
    /// Loading the model would take the calling app over its budget.
    #[error("{0}")]
    AppBudget(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the governor task has stopped")]
    Stopped,
}

impl From<Denial> for RuntimeError {
    fn from(denial: Denial) -> RuntimeError {
        match denial {
            Denial::ShuttingDown => RuntimeError::ShuttingDown,
            Denial::Pressure {
                level,
                retry_after,
                detail,
            } => RuntimeError::Pressure {
                level,
                retry_after,
                detail,
            },
            Denial::Thermal {
                thermal,
                retry_after,
                detail,
            } => RuntimeError::Thermal {
                thermal,
                retry_after,
                detail,
            },
            Denial::Refused(r) => RuntimeError::Refused(r),
            d @ Denial::AppBudget { .. } => RuntimeError::AppBudget(d.to_string()),
            Denial::UnloadedWhileLoading { model } => RuntimeError::UnloadedWhileLoading { model },
            Denial::LoadFailed { model, message } => RuntimeError::LoadFailed { model, message },
        }
    }
}

/// What a request asks of its model.
#[derive(Debug, Clone, Default)]
pub struct ModelWish {
    pub model: String,
    /// An exact context per sequence, tokens; `None`: the configured
    /// default, which may be lowered when memory is short.
    pub context: Option<u32>,
    /// The K/V type the calling app's manifest asks for; `None`: the
    /// configured one. A model has one load per K/V type in use
    /// (`locara_core::load::load_name`).
    pub kv_type: Option<KvType>,
    pub keep_alive: Option<KeepAlive>,
    /// What the model is for (the calling app's manifest says; chat
    /// otherwise): the pressure ladder unloads secondary roles first.
    pub role: Role,
    /// The calling app, held to its budget in the same step as admission;
    /// `None` for the admin and tokenless callers.
    pub app: Option<AppClaim>,
    /// How the request weighs for the CPU (the calling app's manifest
    /// says; interactive otherwise).
    pub priority: Priority,
    /// The draft model loaded beside it (the calling app's `[speculative]`
    /// pair names this model as its target): a load of its own, both
    /// models budgeted together (`locara_core::load::drafted`).
    pub draft: Option<String>,
}

/// A request's hold on a loaded model. Dropping it ends the hold.
pub struct Lease {
    pub host: Arc<WorkerHost>,
    pub model: String,
    pub instance: u64,
    /// The request's priority, which its release gives back.
    priority: Priority,
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Release {
            model: std::mem::take(&mut self.model),
            instance: self.instance,
            priority: self.priority,
        });
    }
}

/// Where a request's answer goes, with the priority its lease carries: the
/// lease takes it before it is sent, so a requester that left meanwhile
/// (the lease dropped undelivered) still releases what it held.
struct Reply {
    tx: oneshot::Sender<Result<Lease, RuntimeError>>,
    priority: Priority,
}

impl Reply {
    fn new(priority: Priority) -> (Reply, oneshot::Receiver<Result<Lease, RuntimeError>>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx, priority }, rx)
    }

    fn send(self, answer: Result<Lease, RuntimeError>) -> Result<(), Result<Lease, RuntimeError>> {
        let answer = answer.map(|mut lease| {
            lease.priority = self.priority;
            lease
        });
        self.tx.send(answer)
    }
}

enum Command {
    Acquire {
        wish: ModelWish,
        reply: Reply,
    },
    /// A model's file was found and validated (on a blocking thread).
    Shaped {
        model: String,
        result: Result<task::Shape, RuntimeError>,
    },
    /// Footprints of running workers, by instance, and the machine's
    /// memory, measured on a blocking thread.
    Measured {
        figures: Vec<(u64, Measured)>,
        system: Option<locara_platform::SystemSnapshot>,
    },
    Release {
        model: String,
        instance: u64,
        priority: Priority,
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
    /// The OS's power state, polled.
    Power {
        state: PowerState,
    },
    /// A simulated power mode, for `duration` or until changed; `normal`
    /// ends a simulation.
    SimulatePower {
        mode: PowerMode,
        duration: Option<Duration>,
        reply: oneshot::Sender<()>,
    },
}

/// The handle to the governor task.
#[derive(Clone)]
pub struct Runtime {
    tx: mpsc::UnboundedSender<Command>,
    pub metrics: Arc<Metrics>,
    /// Token caps the pressure ladder sets, read by every generation.
    caps: watch::Receiver<TokenCaps>,
    /// Whether workers may draft tokens speculatively (the power policy:
    /// off on battery, in Low Power Mode and when hot).
    drafting: watch::Receiver<bool>,
    events: broadcast::Sender<AppEvent>,
    /// The configured keep-alive of idle models.
    keep_alive: KeepAlive,
    /// The configured context and K/V type: what a load gets unless an app
    /// (or request) asks for another.
    defaults: LoadDefaults,
    /// The last hour's samples and events (`GET /locara/v1/history`).
    pub history: Arc<HistoryLog>,
}

impl Runtime {
    /// Starts the governor task on the current tokio runtime.
    pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Runtime {
        let (tx, rx) = mpsc::unbounded_channel();
        let (caps_tx, caps) = watch::channel(TokenCaps::NONE);
        let (drafting_tx, drafting) = watch::channel(true);
        let keep_alive = settings.config.keep_alive;
        let defaults = settings.config.load_defaults();
        let (events, _) = broadcast::channel(256);
        let history = Arc::new(HistoryLog::default());
        let probe = Arc::clone(&settings.probe);
        let task = task::Task::new(
            settings,
            Arc::clone(&metrics),
            tx.clone(),
            caps_tx,
            drafting_tx,
            events.clone(),
            Arc::clone(&history),
        );
        tokio::spawn(task.run(rx));
        tokio::spawn(sample_history(tx.downgrade(), Arc::clone(&history), probe));
        Runtime {
            tx,
            metrics,
            caps,
            drafting,
            events,
            keep_alive,
            defaults,
            history,
        }
    }

    /// The configured context and K/V type (what `locara app install`'s
    /// fit check takes for an app that declares none).
    pub fn load_defaults(&self) -> LoadDefaults {
        self.defaults.clone()
    }

    /// The name of the load that serves `model` with `kv_type` (`None`: the
    /// configured type) and `draft` (an app's speculative pair): `model`,
    /// `model@type` for another type, `+draft` with a draft model.
    pub fn load_name(&self, model: &str, kv_type: Option<KvType>, draft: Option<&str>) -> String {
        let default = self.defaults.kv_type;
        let load = locara_core::load::load_name(model, kv_type.unwrap_or(default), default);
        match draft {
            Some(d) => locara_core::load::drafted(&load, d),
            None => load,
        }
    }

    /// The loads an app uses: one per model it declares (`models`), at its
    /// K/V type, the target of its `speculative` pair with the draft (the
    /// draft has no load of its own).
    pub fn app_loads(
        &self,
        models: &[ModelDecl],
        speculative: Option<&Speculative>,
    ) -> Vec<String> {
        let pair = speculative;
        models
            .iter()
            .filter(|d| !(d.role == Role::Draft && pair.is_some_and(|s| s.draft == d.reference)))
            .map(|d| {
                let draft = pair
                    .filter(|s| s.target == d.reference && d.role == Role::Chat)
                    .map(|s| s.draft.as_str());
                self.load_name(&d.reference, d.kv_type, draft)
            })
            .collect()
    }

    /// The configured keep-alive of idle models (what an app's requests
    /// may ask at most, unless its manifest asks to keep the model loaded).
    pub fn keep_alive(&self) -> KeepAlive {
        self.keep_alive
    }

    /// The token caps in force now (pressure).
    pub fn caps(&self) -> TokenCaps {
        *self.caps.borrow()
    }

    /// Whether workers may draft tokens speculatively now (the power
    /// policy turns it off on battery, in Low Power Mode and when hot).
    pub fn drafting_allowed(&self) -> bool {
        *self.drafting.borrow()
    }

    /// The OS's power state (polled; the same state again changes
    /// nothing). False once the governor task has ended: stop polling.
    pub fn report_power(&self, state: PowerState) -> bool {
        self.tx.send(Command::Power { state }).is_ok()
    }

    /// Simulates a power mode, driving exactly the handler that OS reports
    /// drive; `normal` ends the simulation.
    pub async fn simulate_power(
        &self,
        mode: PowerMode,
        duration: Option<Duration>,
    ) -> Result<(), RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::SimulatePower {
                mode,
                duration,
                reply,
            })
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
        let (reply, rx) = Reply::new(wish.priority);
        self.tx
            .send(Command::Acquire { wish, reply })
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Unloads every load of a model (or one load, by its name); `hold`
    /// keeps the model unloaded. True when one was loaded.
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

/// Takes a history sample every [`SAMPLE_EVERY`] from the task's status
/// (which measures nothing), reading the machine's memory afresh where the
/// status's snapshot is older than a sample (the measure tick runs only
/// while a worker does). Ends with the task: it holds no sender of its own.
async fn sample_history(
    tx: mpsc::WeakUnboundedSender<Command>,
    history: Arc<HistoryLog>,
    probe: Arc<dyn MemoryProbe>,
) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        let (reply, rx) = oneshot::channel();
        if tx.send(Command::Status { reply }).is_err() {
            return;
        }
        drop(tx);
        let Ok(status) = rx.await else { return };
        let now = locara_platform::time::unix_now_ms();
        let stale = status.system.as_ref().is_none_or(|s| {
            now.saturating_sub(s.taken_at_unix_ms) >= SAMPLE_EVERY.as_millis() as u64
        });
        let fresh = if stale {
            let probe = Arc::clone(&probe);
            tokio::task::spawn_blocking(move || probe.snapshot().ok())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        history.push_sample(history.sample_of(now, &status, fresh.as_ref()));
    }
}

#[cfg(test)]
mod tests;
