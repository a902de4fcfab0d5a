//! The controller: the daemon's whole memory policy as one state machine.
//!
//! It owns the [`Governor`] (admission, eviction, idle expiry, K/V pool
//! growth), the pressure [`Ladder`] and what pressure leaves in force
//! (refused loads, drained models, a simulated level), each app's share of
//! the budget, and the sizes of the loaded models' K/V pools. The daemon's
//! task feeds it [`Event`]s with the time and carries out the [`Effect`]s
//! it returns, in order: it starts and stops workers, resizes pools,
//! answers requests, publishes app events and records metrics. Nothing here
//! does I/O or reads a clock, so every decision can be tested, and a
//! recorded incident replayed, with values alone (see
//! `docs/ARCHITECTURE.md`, "The controller").
//!
//! ```
//! use locara_core::controller::{Controller, ControllerConfig, Effect, Event, Request};
//! use locara_core::governor::Wish;
//! use std::time::Instant;
//!
//! let mut c = Controller::new(ControllerConfig::new(8 << 30)).unwrap();
//! let now = Instant::now();
//! let wish = Wish::new("m", vec![(4096, 1 << 30)]);
//! let effects = c.handle(Event::Acquire(Request { ticket: 1, wish, app: None }), now);
//! assert!(matches!(effects[0], Effect::Load { .. }));
//! ```

use crate::bytes::Bytes;
use crate::governor::{
    app_shares, Acquire, Governor, Load, Measured, Phase, Policy, Refusal, Unload, UnloadReason,
    Wish,
};
use crate::ladder::{
    self, Action, Ladder, LadderConfig, LadderConfigError, LadderState, ModelView, PressureLevel,
    RuntimeView, TokenCaps,
};
use crate::load::PoolSize;
use crate::power::{self, PowerConfig, PowerLimits, PowerMode, PowerState, ThermalState};
use crate::threads::{CpuBudget, Priority, Share};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// Names one request for a model until it is answered.
pub type Ticket = u64;

/// How long a model stays idle before its K/V pool shrinks back to its
/// starting size. Long enough that the next turn of a chat (a person
/// reading and typing) finds its conversation cached; short enough that an
/// idle model does not hold a grown pool for its whole keep-alive.
pub const POOL_IDLE_SHRINK: Duration = Duration::from_secs(60);

/// The version of the [`AppEvent`] payloads.
pub const EVENTS_VERSION: u32 = 1;

/// What the controller is given at start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Bytes the runtime may hold.
    pub budget: u64,
    pub policy: Policy,
    pub ladder: LadderConfig,
    /// How long an idle model keeps a grown K/V pool.
    pub pool_idle_shrink: Duration,
    /// Models held unloaded (`unload --hold`), remembered across restarts.
    pub held: Vec<String>,
    /// Performance cores the busy workers share (`crate::threads`).
    pub cores: u32,
    /// What battery, Low Power Mode and heat change (`crate::power`).
    pub power: PowerConfig,
}

impl ControllerConfig {
    /// `budget` bytes with the default policy, ladder and pool shrink.
    pub fn new(budget: u64) -> ControllerConfig {
        ControllerConfig {
            budget,
            policy: Policy::default(),
            ladder: LadderConfig::default(),
            pool_idle_shrink: POOL_IDLE_SHRINK,
            held: Vec::new(),
            cores: 1,
            power: PowerConfig::default(),
        }
    }
}

/// The app a request comes from, with what admission needs to know of the
/// registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppClaim {
    pub id: String,
    /// The most its models may hold (`requires.memory_gb` of its
    /// manifest), bytes; `None`: only the daemon's budget.
    pub budget: Option<u64>,
    /// Every installed app with the models it declares: a model several
    /// apps declare is split evenly among them.
    pub uses: Vec<(String, Vec<String>)>,
}

/// A request for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub ticket: Ticket,
    /// The model, its candidate contexts with their estimates (empty when
    /// the model is held already: admission weighs new loads only), its
    /// keep-alive and role.
    pub wish: Wish,
    pub app: Option<AppClaim>,
}

/// A pool's figures as its worker last reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolFigures {
    pub cells: u32,
    pub used_cells: u32,
    pub cached_sequences: u32,
    pub reused_tokens: u64,
    /// Conversations kept in the worker's RAM tier, and their bytes.
    pub ram_cached_sequences: u32,
    pub ram_cache_bytes: u64,
    pub ram_restores: u64,
    /// Conversations in the model's disk tier, their bytes, and how many
    /// came back from it since load.
    pub disk_cached_sequences: u32,
    pub disk_cache_bytes: u64,
    pub disk_restores: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request wants a model.
    Acquire(Request),
    /// A request that had its model ended (`priority`: the one it was
    /// acquired with).
    Release {
        model: String,
        instance: u64,
        priority: Priority,
    },
    /// A load finished: the worker runs, with a pool of `pool.start` cells
    /// that may grow to `pool.max`.
    Loaded {
        model: String,
        instance: u64,
        measured: Option<Measured>,
        pool: PoolSize,
    },
    /// A load failed.
    LoadFailed {
        model: String,
        instance: u64,
        message: String,
    },
    /// A worker exited: asked to (`expected`), or it died.
    WorkerExited {
        model: String,
        instance: u64,
        expected: bool,
    },
    /// The API or CLI asks to unload a model (`hold`: and keep it unloaded).
    Unload { model: String, hold: bool },
    /// Fresh footprints of running workers, by instance.
    Measured(Vec<(u64, Measured)>),
    /// A worker's pool is full: it asks to grow to `cells`, whose estimate
    /// (mapped weights included) is `estimate` bytes (`None`: unknown).
    PoolFull {
        model: String,
        instance: u64,
        cells: u32,
        estimate: Option<u64>,
    },
    /// A worker's pool was resized; `estimate` is the model's estimate at
    /// the new size.
    PoolResized {
        model: String,
        instance: u64,
        cells: u32,
        previous_cells: u32,
        estimate: Option<u64>,
    },
    /// A worker's pool figures.
    PoolStats { instance: u64, figures: PoolFigures },
    /// The OS reports a level.
    OsPressure(PressureLevel),
    /// A simulated level overrides the OS's for `duration` (or until
    /// changed); `normal` ends a simulation.
    Simulate {
        level: PressureLevel,
        duration: Option<Duration>,
    },
    /// The OS reports its power state (polled: the same state again
    /// changes nothing).
    Power(PowerState),
    /// A simulated power mode overrides the OS's state for `duration` (or
    /// until changed); `normal` ends a simulation.
    SimulatePower {
        mode: PowerMode,
        duration: Option<Duration>,
    },
    /// Time passed (see [`Controller::next_deadline`]).
    Tick,
    /// The daemon stops.
    Shutdown,
}

/// Why a request does not get its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    ShuttingDown,
    /// Pressure holds it back; retry after `retry_after`.
    Pressure {
        level: PressureLevel,
        retry_after: Duration,
        detail: String,
    },
    /// The machine is too hot for new background work; retry after
    /// `retry_after`.
    Thermal {
        thermal: ThermalState,
        retry_after: Duration,
        detail: String,
    },
    /// Admission refused it.
    Refused(Refusal),
    /// Loading the model would take its app over the app's budget.
    AppBudget {
        app: String,
        model: String,
        budget: u64,
        share: u64,
        /// What the load adds to the app's share: the estimate split among
        /// the `users` apps that declare the model.
        added: u64,
        estimate: u64,
        users: u64,
    },
    /// The model was unloaded before its load finished.
    UnloadedWhileLoading {
        model: String,
    },
    LoadFailed {
        model: String,
        message: String,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::ShuttingDown => write!(f, "the daemon is shutting down"),
            Denial::Pressure {
                level,
                retry_after,
                detail,
            } => write!(
                f,
                "memory pressure is {level}: {detail}; retry in {} s",
                retry_after.as_secs()
            ),
            Denial::Thermal {
                thermal,
                retry_after,
                detail,
            } => write!(
                f,
                "the machine's thermal state is {thermal}: {detail}; retry in {} s",
                retry_after.as_secs()
            ),
            Denial::Refused(r) => write!(f, "{r}"),
            Denial::AppBudget {
                app,
                model,
                budget,
                share,
                added,
                estimate,
                users,
            } => write!(
                f,
                "app {app} may hold {} (requires.memory_gb of its manifest); it holds {} and loading {model} would add {} ({} shared by {users} app(s))",
                Bytes(*budget),
                Bytes(*share),
                Bytes(*added),
                Bytes(*estimate)
            ),
            Denial::UnloadedWhileLoading { model } => {
                write!(f, "{model} was unloaded before its load finished")
            }
            Denial::LoadFailed { model, message } => write!(f, "loading {model} failed: {message}"),
        }
    }
}

/// A message for apps on `GET /locara/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AppEvent {
    /// The level in force and the effective budget, bytes.
    #[serde(rename = "level")]
    Level {
        level: PressureLevel,
        budget: u64,
        effective_budget: u64,
    },
    /// An action of the pressure ladder; `model` names the model of a
    /// per-model order.
    #[serde(rename = "action")]
    Action {
        level: PressureLevel,
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        detail: String,
    },
    /// Bytes the OS got back after a pressure unload, and how long it took.
    #[serde(rename = "freed")]
    Freed {
        level: PressureLevel,
        model: String,
        bytes: u64,
        ms: u64,
    },
    /// The power state in force changed (battery, Low Power Mode, heat),
    /// with what the runtime gives up for it; the first event of every
    /// stream says it too.
    #[serde(rename = "power")]
    Power {
        /// The strongest condition: `normal`, `battery`, `low-power`,
        /// `thermal-serious`, `thermal-critical`.
        mode: PowerMode,
        /// The state in force; `None` and `unknown` where the OS does not
        /// say (counted as mains power and cool).
        thermal: ThermalState,
        on_battery: Option<bool>,
        low_power_mode: Option<bool>,
        /// A simulation stands in for the OS's state.
        simulated: bool,
        limits: PowerLimits,
    },
    /// An app's models hold more than its budget.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded {
        app: String,
        share: u64,
        budget: u64,
    },
}

impl AppEvent {
    /// Whether an app that declares `models` sees this event: the level
    /// and budget settings go to every app; an order about a model, or the
    /// bytes it freed, only to the apps that declare it; an app's budget
    /// crossing only to that app.
    pub fn concerns(&self, app: &str, models: &[String]) -> bool {
        match self {
            AppEvent::Level { .. } | AppEvent::Power { .. } => true,
            AppEvent::Action { model: None, .. } => true,
            AppEvent::Action {
                model: Some(model), ..
            }
            | AppEvent::Freed { model, .. } => {
                models.iter().any(|m| m == crate::load::model_of(model))
            }
            AppEvent::BudgetExceeded { app: a, .. } => a == app,
        }
    }

    /// The event as sent: one JSON object with its `version` and `type`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Versioned<'a> {
            version: u32,
            #[serde(flatten)]
            event: &'a AppEvent,
        }
        serde_json::to_string(&Versioned {
            version: EVENTS_VERSION,
            event: self,
        })
        .unwrap_or_default()
    }
}

/// Decisions worth a metric or a log line that no other effect carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A request was refused (`kind`: `pressure`, `held`, `queue_full`,
    /// `insufficient_memory`).
    Refused { model: String, kind: &'static str },
    /// The level in force changed.
    LevelInForce {
        from: PressureLevel,
        to: PressureLevel,
    },
    /// The ladder ordered an action, at the level in force; `bytes` is what
    /// it is about where it has a size (the bytes a model held when it is
    /// drained, unloaded or its idle K/V dropped, a budget set).
    Action {
        level: PressureLevel,
        action: Action,
        bytes: Option<u64>,
    },
    /// Memory back to the OS after a pressure order, `ms` after it: a
    /// pressure unload's worker exited (`bytes`: its last footprint), or an
    /// idle model's K/V was dropped (`bytes`: its footprint before less
    /// after, both measured).
    Freed {
        level: PressureLevel,
        model: String,
        bytes: u64,
        ms: u64,
    },
    /// A worker died unasked.
    WorkerDied(Unload),
    /// An app's models hold more than its budget (said once per crossing).
    AppOverBudget {
        app: String,
        share: u64,
        budget: u64,
    },
    /// The simulated pressure ended.
    SimulationEnded,
    /// The power state in force changed, and with it (maybe) the limits.
    Power {
        from: PowerMode,
        to: PowerMode,
        state: PowerState,
        simulated: bool,
        limits: PowerLimits,
    },
    /// The simulated power mode ended.
    PowerSimulationEnded,
}

/// What the daemon does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The request has a place on this load of its model.
    Admit {
        ticket: Ticket,
        model: String,
        instance: u64,
    },
    /// The request is answered with an error.
    Deny {
        ticket: Ticket,
        model: String,
        denial: Denial,
    },
    /// Stop the evicted workers (`load.evict`) and wait for them, then
    /// start this load with a pool of `pool.start` cells.
    Load {
        load: Load,
        pool: PoolSize,
    },
    /// The model is unloaded: count it and stop its worker (if it is still
    /// loading, stop it when the load finishes).
    Unloaded(Unload),
    /// Give the page cache of these models' files back to the OS: a
    /// worker unloaded under pressure has exited and no other load uses
    /// them. Unmapped weights are cache the kernel would reclaim anyway,
    /// but only once it is short, scanning while the processes that ask
    /// for memory wait; a load after the pressure reads them from disk
    /// again.
    DropFileCache {
        level: PressureLevel,
        models: Vec<String>,
    },
    /// Stop this worker; nothing else to count (it was unloaded while it
    /// loaded).
    StopWorker {
        model: String,
        instance: u64,
    },
    /// Stop the evicted workers and wait for them, then resize the pool to
    /// `cells`.
    Resize {
        model: String,
        instance: u64,
        cells: u32,
        evict: Vec<Unload>,
    },
    /// Forget the conversations this worker keeps in its RAM tier; at
    /// warn (`spill`) it writes them to its disk tier first, at critical it
    /// does not take the time.
    DropTier {
        model: String,
        instance: u64,
        spill: bool,
    },
    /// The pool may not grow: its waiting generations shift their context
    /// or end.
    DenyGrowth {
        model: String,
        instance: u64,
        why: String,
    },
    /// The worker's threads per decode and their priority from now on
    /// (`crate::threads`): a worker became busy or idle, or its priority
    /// changed.
    SetThreads {
        model: String,
        instance: u64,
        share: Share,
    },
    /// Token caps from now on: the stricter of the pressure ladder's and
    /// the power policy's.
    SetCaps(TokenCaps),
    /// Whether workers may draft tokens speculatively from now on (off on
    /// battery, in Low Power Mode and when hot: `crate::power`).
    SetDrafting {
        allowed: bool,
    },
    Publish(AppEvent),
    Record(Record),
}

/// A loaded model's K/V pool, as its worker last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Finished conversations kept outside the pool, in the worker's RAM
    /// tier, and the bytes of their saved state.
    #[serde(default)]
    pub ram_cached_sequences: u32,
    #[serde(default)]
    pub ram_cache_bytes: u64,
    /// Conversations brought back from the RAM tier since load.
    #[serde(default)]
    pub ram_restores: u64,
    /// Conversations in the model's disk tier (kept across unloads), and
    /// their bytes.
    #[serde(default)]
    pub disk_cached_sequences: u32,
    #[serde(default)]
    pub disk_cache_bytes: u64,
    /// Conversations brought back from the disk tier since load.
    #[serde(default)]
    pub disk_restores: u64,
}

/// Pressure as the controller holds it, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PressureState {
    /// The level whose restrictions are in force.
    pub level: PressureLevel,
    /// The level last reported (by the OS or a simulation).
    pub reported: PressureLevel,
    pub state: LadderState,
    /// The OS's level, when a simulation overrides it.
    pub os_level: PressureLevel,
    /// A simulated level in force, and until when.
    pub simulated: Option<(PressureLevel, Option<Instant>)>,
    /// New loads are refused (critical).
    pub refusing_loads: bool,
}

/// The power policy as the controller holds it, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerStatus {
    /// The strongest condition in force.
    pub mode: PowerMode,
    /// The state in force (the simulation's, or the OS's).
    pub state: PowerState,
    /// The OS's last reported state.
    pub os: PowerState,
    /// A simulated mode in force, and until when.
    pub simulated: Option<(PowerMode, Option<Instant>)>,
    /// What the state changes now.
    pub limits: PowerLimits,
}

/// The daemon's policy state. See the module documentation.
#[derive(Debug)]
pub struct Controller {
    governor: Governor,
    ladder: Ladder,
    pool_idle_shrink: Duration,
    /// The level the OS reports.
    os_level: PressureLevel,
    /// A simulated level overriding it, until when.
    simulated: Option<(PressureLevel, Option<Instant>)>,
    /// New loads are refused (critical), with this Retry-After.
    refusing: Option<Duration>,
    /// Instances draining at critical: no new requests.
    draining: HashSet<u64>,
    shutting_down: bool,
    /// Requests waiting for a load, by instance.
    waiting: HashMap<u64, Vec<Ticket>>,
    /// Loaded models' K/V pools, by instance.
    pools: HashMap<u64, PoolStatus>,
    /// Idle pools already asked to shrink, by instance, with the model's
    /// last use then: one shrink per idle spell.
    shrunk: HashMap<u64, Instant>,
    /// Pressure unloads waiting for their worker to exit: when the order
    /// came, the level, and the worker's last measured footprint.
    pressure_unloads: HashMap<u64, (Instant, PressureLevel, u64)>,
    /// Apps over their budget now (each is told once per crossing).
    over_budget: BTreeSet<String>,
    /// Idle K/V dropped under pressure, waiting for the worker's next
    /// measurement: when, the level, and its footprint before.
    pending_frees: HashMap<u64, (Instant, PressureLevel, u64)>,
    /// Of those, the ones whose pool was ordered freed and has not reported
    /// back yet: a measurement before the report would miss what the
    /// worker gives back with it (the model it sets aside).
    frees_resizing: HashSet<u64>,
    /// The apps with a budget, as their latest requests described them: a
    /// pool's growth is held to the budgets of the apps that declare its
    /// model.
    apps: BTreeMap<String, AppClaim>,
    /// The cores the busy workers share, and what each was told.
    cpu: CpuBudget,
    power_config: PowerConfig,
    /// The power state the OS last reported.
    power_os: PowerState,
    /// A simulated power mode overriding it, until when.
    power_simulated: Option<(PowerMode, Option<Instant>)>,
    /// The power state in force and what it changes.
    power_state: PowerState,
    power_limits: PowerLimits,
    /// The ladder's token caps, and the caps last told (the stricter of
    /// the ladder's and the power policy's).
    ladder_caps: TokenCaps,
    caps: TokenCaps,
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Result<Controller, LadderConfigError> {
        let mut governor = Governor::new(config.budget, config.policy);
        for model in &config.held {
            governor.hold(model);
        }
        Ok(Controller {
            governor,
            ladder: Ladder::new(config.ladder)?,
            pool_idle_shrink: config.pool_idle_shrink,
            os_level: PressureLevel::Normal,
            simulated: None,
            refusing: None,
            draining: HashSet::new(),
            shutting_down: false,
            waiting: HashMap::new(),
            pools: HashMap::new(),
            shrunk: HashMap::new(),
            pressure_unloads: HashMap::new(),
            over_budget: BTreeSet::new(),
            pending_frees: HashMap::new(),
            frees_resizing: HashSet::new(),
            apps: BTreeMap::new(),
            cpu: CpuBudget::new(config.cores),
            power_config: config.power,
            power_os: PowerState::default(),
            power_simulated: None,
            power_state: PowerState::default(),
            power_limits: PowerLimits::default(),
            ladder_caps: TokenCaps::NONE,
            caps: TokenCaps::NONE,
        })
    }

    /// The governor's state (read only: changes go through events).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Whether the model is held (loading or loaded): a request for it then
    /// needs no estimate.
    pub fn holds(&self, model: &str) -> bool {
        self.governor.model(model).is_some()
    }

    /// The threads this load's worker computes with and their class, while
    /// it is busy (`None`: idle, holding no threads).
    pub fn threads(&self, instance: u64) -> Option<Share> {
        self.cpu.share(instance)
    }

    /// The performance cores of the machine, and those the busy workers
    /// share now (fewer under the power policy).
    pub fn cores(&self) -> u32 {
        self.cpu.cores()
    }

    pub fn shared_cores(&self) -> u32 {
        self.cpu.shared_cores()
    }

    /// The pool of this load of a model, once loaded.
    pub fn pool(&self, instance: u64) -> Option<&PoolStatus> {
        self.pools.get(&instance)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn pressure(&self) -> PressureState {
        PressureState {
            level: self.ladder.level(),
            reported: self.ladder.reported(),
            state: self.ladder.state(),
            os_level: self.os_level,
            simulated: self.simulated,
            refusing_loads: self.refusing.is_some(),
        }
    }

    /// The power policy now: the state in force and what it changes.
    pub fn power(&self) -> PowerStatus {
        PowerStatus {
            mode: PowerMode::of(&self.power_state),
            state: self.power_state,
            os: self.power_os,
            simulated: self.power_simulated,
            limits: self.power_limits,
        }
    }

    /// The power state as an event for apps (what a new events stream
    /// says first).
    pub fn power_event(&self) -> AppEvent {
        AppEvent::Power {
            mode: PowerMode::of(&self.power_state),
            thermal: self.power_state.thermal,
            on_battery: self.power_state.on_battery,
            low_power_mode: self.power_state.low_power_mode,
            simulated: self.power_simulated.is_some(),
            limits: self.power_limits,
        }
    }

    /// Whether workers may draft tokens speculatively now.
    pub fn drafting_allowed(&self) -> bool {
        self.power_limits.drafting
    }

    /// The sequences a new load gets: the configured ones, fewer on
    /// battery or in Low Power Mode.
    pub fn parallel_for_new_loads(&self, configured: u32) -> u32 {
        let configured = configured.max(1);
        self.power_limits
            .parallel
            .map_or(configured, |p| configured.min(p.max(1)))
    }

    /// The token caps in force: the stricter of the ladder's and the power
    /// policy's.
    pub fn caps(&self) -> TokenCaps {
        self.caps
    }

    /// Lets requests load a held model again.
    pub fn unhold(&mut self, model: &str) -> bool {
        self.governor.unhold(model)
    }

    /// Why a request for `model` would be turned away before admission
    /// weighs it, if it would: the daemon stops, the model drains, or new
    /// loads are refused. Lets the daemon skip reading a model file for a
    /// request that cannot load it.
    pub fn closed_to(&self, model: &str) -> Option<Denial> {
        if self.shutting_down {
            return Some(Denial::ShuttingDown);
        }
        let level = self.ladder.level();
        let retry_after = self.ladder.config().retry_after;
        match self.governor.model(model) {
            Some(m) if self.draining.contains(&m.instance) => Some(Denial::Pressure {
                level,
                retry_after,
                detail: format!("{model} is finishing its last responses before it unloads"),
            }),
            None => self.refusing.map(|retry_after| Denial::Pressure {
                level,
                retry_after,
                detail: format!("new loads are refused, so {model} cannot load"),
            }),
            Some(_) => None,
        }
    }

    /// What the ladder decides over: every model with its real role, pin,
    /// sequences in flight (a loading model counts as busy), idle time,
    /// idle cached conversations it could give back, and what it holds
    /// (measured where it was, else its estimate).
    pub fn view(&self) -> RuntimeView {
        let models = self
            .governor
            .models()
            .map(|(name, m)| {
                let mut v = ModelView::new(name, m.instance, m.role);
                v.pinned = m.pinned();
                let loaded = m.phase == Phase::Loaded;
                v.generating = if loaded { m.active } else { 1 };
                v.idle_since = (loaded && m.active == 0).then_some(m.last_used);
                // Finished conversations kept in the pool or its RAM tier.
                v.idle_sequences_with_cells = self
                    .pools
                    .get(&m.instance)
                    .map_or(0, |p| p.cached_sequences + p.ram_cached_sequences);
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
            held_bytes: self.governor.held_bytes(),
            budget: self.governor.budget,
        }
    }

    /// When the controller next wants a [`Event::Tick`]: idle expiry, a
    /// simulation's end, the ladder's grace and quiet periods, an idle
    /// pool's shrink.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.governor.next_deadline(),
            self.ladder.next_deadline(&self.view()),
            self.simulated.and_then(|(_, until)| until),
            self.power_simulated.and_then(|(_, until)| until),
            self.next_pool_shrink(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::Acquire(request) => self.acquire(request, now, &mut out),
            Event::Release {
                model,
                instance,
                priority,
            } => {
                self.cpu.release(instance, priority);
                if let Some(u) = self.governor.release(&model, instance, now) {
                    self.unloaded(u, &mut out);
                }
                if self.ladder.level() != PressureLevel::Normal {
                    self.pressure_step(ladder::Event::GenerationFinished { model }, now, &mut out);
                }
            }
            Event::Loaded {
                model,
                instance,
                measured,
                pool,
            } => {
                let waiting = self.waiting.remove(&instance).unwrap_or_default();
                if !self.governor.loaded(instance, measured, now) {
                    // Unloaded while it loaded: its requests were answered then.
                    self.cpu.forget(instance);
                    out.push(Effect::StopWorker { model, instance });
                    return out;
                }
                self.cpu.loaded(instance);
                self.pools.insert(
                    instance,
                    PoolStatus {
                        cells: pool.start,
                        start_cells: pool.start,
                        max_cells: pool.max,
                        ..PoolStatus::default()
                    },
                );
                out.extend(waiting.into_iter().map(|ticket| Effect::Admit {
                    ticket,
                    model: model.clone(),
                    instance,
                }));
            }
            Event::LoadFailed {
                model,
                instance,
                message,
            } => {
                self.governor.load_failed(instance);
                self.cpu.forget(instance);
                for ticket in self.waiting.remove(&instance).unwrap_or_default() {
                    out.push(Effect::Deny {
                        ticket,
                        model: model.clone(),
                        denial: Denial::LoadFailed {
                            model: model.clone(),
                            message: message.clone(),
                        },
                    });
                }
            }
            Event::WorkerExited {
                model,
                instance,
                expected,
            } => self.worker_exited(model, instance, expected, now, &mut out),
            Event::Unload { model, hold } => {
                if let Some(u) = self.governor.unload(&model, hold) {
                    self.unloaded(u, &mut out);
                }
            }
            Event::Measured(figures) => {
                for (instance, m) in figures {
                    self.governor.measured(instance, m);
                    if self.frees_resizing.contains(&instance) {
                        continue;
                    }
                    if let Some((at, level, before)) = self.pending_frees.remove(&instance) {
                        let model = self
                            .governor
                            .models()
                            .find(|(_, s)| s.instance == instance)
                            .map(|(n, _)| n.to_string())
                            .unwrap_or_default();
                        let bytes = before.saturating_sub(m.footprint);
                        let ms = now.saturating_duration_since(at).as_millis() as u64;
                        out.push(Effect::Record(Record::Freed {
                            level,
                            model: model.clone(),
                            bytes,
                            ms,
                        }));
                        out.push(Effect::Publish(AppEvent::Freed {
                            level,
                            model,
                            bytes,
                            ms,
                        }));
                    }
                }
            }
            Event::PoolFull {
                model,
                instance,
                cells,
                estimate,
            } => self.pool_full(model, instance, cells, estimate, &mut out),
            Event::PoolResized {
                model,
                instance,
                cells,
                previous_cells,
                estimate,
            } => {
                if let Some(p) = self.pools.get_mut(&instance) {
                    p.cells = cells;
                    p.resizes += 1;
                }
                // The answer to a pressure's freeing: measure it now.
                self.frees_resizing.remove(&instance);
                // The estimate follows the pool: a grown one was admitted
                // at its new size already; a smaller one counts less now.
                if let (true, Some(estimate)) = (cells < previous_cells, estimate) {
                    self.governor.shrink(&model, instance, estimate);
                }
            }
            Event::PoolStats { instance, figures } => {
                let mut more_idle = false;
                if let Some(p) = self.pools.get_mut(&instance) {
                    more_idle = figures.cached_sequences + figures.ram_cached_sequences
                        > p.cached_sequences + p.ram_cached_sequences;
                    p.cells = figures.cells;
                    p.used_cells = figures.used_cells;
                    p.cached_sequences = figures.cached_sequences;
                    p.reused_tokens = figures.reused_tokens;
                    p.ram_cached_sequences = figures.ram_cached_sequences;
                    p.ram_cache_bytes = figures.ram_cache_bytes;
                    p.ram_restores = figures.ram_restores;
                    p.disk_cached_sequences = figures.disk_cached_sequences;
                    p.disk_cache_bytes = figures.disk_cache_bytes;
                    p.disk_restores = figures.disk_restores;
                }
                // A finished answer's conversation is reported cached after
                // its release: under pressure the ladder sees it now, or it
                // would wait for the next level report to drop it.
                if more_idle && self.ladder.level() != PressureLevel::Normal {
                    self.pressure_step(ladder::Event::Tick, now, &mut out);
                }
            }
            Event::OsPressure(level) => {
                self.os_level = level;
                if self.simulated.is_none() {
                    self.pressure_step(ladder::Event::Level(level), now, &mut out);
                }
            }
            Event::Simulate { level, duration } => {
                self.simulated =
                    (level != PressureLevel::Normal).then(|| (level, duration.map(|d| now + d)));
                let reported = if level == PressureLevel::Normal {
                    self.os_level
                } else {
                    level
                };
                self.pressure_step(ladder::Event::Level(reported), now, &mut out);
            }
            Event::Power(state) => {
                self.power_os = state;
                self.power_step(&mut out);
            }
            Event::SimulatePower { mode, duration } => {
                self.power_simulated =
                    (mode != PowerMode::Normal).then(|| (mode, duration.map(|d| now + d)));
                self.power_step(&mut out);
            }
            Event::Tick => self.tick(now, &mut out),
            Event::Shutdown => {
                self.shutting_down = true;
                for u in self.governor.unload_all(UnloadReason::Shutdown) {
                    self.unloaded(u, &mut out);
                }
            }
        }
        self.reassign_threads(&mut out);
        out
    }

    /// Tells the workers whose share of the cores changed (one became busy
    /// or idle, or its priority changed): see `crate::threads`.
    fn reassign_threads(&mut self, out: &mut Vec<Effect>) {
        for (instance, share) in self.cpu.changes() {
            let model = self
                .governor
                .models()
                .find(|(_, m)| m.instance == instance)
                .map(|(name, _)| name.to_string());
            if let Some(model) = model {
                out.push(Effect::SetThreads {
                    model,
                    instance,
                    share,
                });
            }
        }
    }

    fn acquire(&mut self, request: Request, now: Instant, out: &mut Vec<Effect>) {
        let Request {
            ticket,
            mut wish,
            app,
        } = request;
        // On battery a new load gets fewer sequences (a loaded model keeps
        // its own).
        wish.parallel = self.parallel_for_new_loads(wish.parallel);
        let model = wish.model.clone();
        // What the app's request says of the registry, for its budget
        // and for growth of the models it declares.
        if let Some(claim) = app.as_ref().filter(|c| c.budget.is_some()) {
            self.apps.insert(claim.id.clone(), claim.clone());
        }
        let deny = |denial: Denial| Effect::Deny {
            ticket,
            model: model.clone(),
            denial,
        };
        if let Some(denial) = self.closed_to(&model) {
            if matches!(denial, Denial::Pressure { .. }) {
                out.push(Effect::Record(Record::Refused {
                    model: model.clone(),
                    kind: "pressure",
                }));
            }
            out.push(deny(denial));
            return;
        }
        if let (Priority::Background, Some(s)) = (
            wish.priority,
            self.power_limits.refuse_background_retry_after_s,
        ) {
            out.push(Effect::Record(Record::Refused {
                model: model.clone(),
                kind: "thermal",
            }));
            out.push(deny(Denial::Thermal {
                thermal: self.power_state.thermal,
                retry_after: Duration::from_secs(s),
                detail: "new background work is refused until the machine cools down".into(),
            }));
            return;
        }
        if let Some(claim) = &app {
            if let Err(denial) = self.app_admits(claim, &wish, out) {
                out.push(deny(denial));
                return;
            }
        }
        match self.governor.acquire(&wish, now) {
            Acquire::Ready => {
                let instance = self.governor.model(&model).map_or(0, |m| m.instance);
                self.cpu.place(instance, wish.priority);
                out.push(Effect::Admit {
                    ticket,
                    model,
                    instance,
                });
            }
            Acquire::Wait => {
                let instance = self.governor.model(&model).map_or(0, |m| m.instance);
                self.cpu.place(instance, wish.priority);
                self.waiting.entry(instance).or_default().push(ticket);
            }
            Acquire::Load(load) => {
                self.cpu.place(load.instance, wish.priority);
                self.waiting.insert(load.instance, vec![ticket]);
                let pool = PoolSize::new(load.context, load.parallel);
                out.push(Effect::Load { load, pool });
            }
            Acquire::Refused(refusal) => {
                let kind = match &refusal {
                    Refusal::Held { .. } => "held",
                    Refusal::QueueFull { .. } => "queue_full",
                    Refusal::InsufficientMemory(_) => "insufficient_memory",
                };
                out.push(Effect::Record(Record::Refused {
                    model: model.clone(),
                    kind,
                }));
                let level = self.ladder.level();
                let denial = match refusal {
                    Refusal::InsufficientMemory(_) if level != PressureLevel::Normal => {
                        Denial::Pressure {
                            level,
                            retry_after: self.ladder.config().retry_after,
                            detail: format!(
                                "the effective budget is lowered to {} of {}; {refusal}",
                                Bytes(self.governor.effective_budget),
                                Bytes(self.governor.budget)
                            ),
                        }
                    }
                    other => Denial::Refused(other),
                };
                out.push(deny(denial));
            }
        }
    }

    /// Holds an app to its budget, in the same step as admission (two
    /// requests of one app cannot both pass on the same free bytes). Its
    /// share is what its models hold as the governor counts them, each
    /// shared model split among the apps that declare it. Over the budget
    /// it gets a `budget.exceeded` event (once per crossing); a load that
    /// would take it over is refused with the numbers.
    fn app_admits(
        &mut self,
        claim: &AppClaim,
        wish: &Wish,
        out: &mut Vec<Effect>,
    ) -> Result<(), Denial> {
        let Some(budget) = claim.budget else {
            return Ok(());
        };
        let share = self.app_share(&claim.id, &claim.uses);
        if share > budget {
            if self.over_budget.insert(claim.id.clone()) {
                out.push(Effect::Record(Record::AppOverBudget {
                    app: claim.id.clone(),
                    share,
                    budget,
                }));
                out.push(Effect::Publish(AppEvent::BudgetExceeded {
                    app: claim.id.clone(),
                    share,
                    budget,
                }));
            }
        } else {
            self.over_budget.remove(&claim.id);
        }
        if self.holds(&wish.model) {
            return Ok(());
        }
        // The first candidate is the largest: what admission tries first.
        let Some(&(_, estimate)) = wish.candidates.first() else {
            return Ok(());
        };
        let users = claim
            .uses
            .iter()
            .filter(|(_, models)| models.contains(&wish.model))
            .count()
            .max(1) as u64;
        let added = estimate / users;
        if share.saturating_add(added) > budget {
            return Err(Denial::AppBudget {
                app: claim.id.clone(),
                model: wish.model.clone(),
                budget,
                share,
                added,
                estimate,
                users,
            });
        }
        Ok(())
    }

    /// The bytes an app's models hold, shared ones split among their apps.
    pub fn app_share(&self, app: &str, uses: &[(String, Vec<String>)]) -> u64 {
        let loaded: Vec<(String, u64)> = self
            .governor
            .models()
            .map(|(name, m)| (name.to_string(), m.held()))
            .collect();
        app_shares(uses, &loaded)
            .into_iter()
            .find(|(a, _)| a == app)
            .map_or(0, |(_, s)| s)
    }

    /// A worker's pool is full. Growth is admitted like a load: within the
    /// effective budget, idle models evicted first, never under pressure;
    /// the worker holds the generations that need room until it hears.
    fn pool_full(
        &mut self,
        model: String,
        instance: u64,
        cells: u32,
        estimate: Option<u64>,
        out: &mut Vec<Effect>,
    ) {
        if self
            .governor
            .model(&model)
            .is_none_or(|m| m.instance != instance)
        {
            return;
        }
        let level = self.ladder.level();
        let verdict = if self.shutting_down {
            Err("the daemon is stopping".to_string())
        } else if level != PressureLevel::Normal {
            Err(format!("memory pressure is {level}"))
        } else if let Some(why) = estimate.and_then(|e| self.growth_over_app_budget(&model, e)) {
            Err(why)
        } else if let Some(estimate) = estimate {
            self.governor
                .grow(&model, instance, estimate)
                .map_err(|shortfall| {
                    format!(
                        "a pool of {cells} cells needs {}, {} of a {} budget free",
                        Bytes(shortfall.needed),
                        Bytes(shortfall.free),
                        Bytes(shortfall.effective_budget)
                    )
                })
        } else {
            Err("its estimate is unknown".to_string())
        };
        match verdict {
            Ok(evict) => out.push(Effect::Resize {
                model,
                instance,
                cells,
                evict,
            }),
            Err(why) => {
                if let Some(p) = self.pools.get_mut(&instance) {
                    p.growth_refused += 1;
                }
                out.push(Effect::DenyGrowth {
                    model,
                    instance,
                    why,
                });
            }
        }
    }

    /// Why growing `model` to `estimate` bytes would take an app that
    /// declares it over its budget, if it would: each app's share grows by
    /// its part of the growth.
    fn growth_over_app_budget(&self, model: &str, estimate: u64) -> Option<String> {
        let held = self.governor.model(model)?.held();
        let grows_by = estimate.saturating_sub(held);
        for claim in self.apps.values() {
            let Some(budget) = claim.budget else { continue };
            let declares = |(_, models): &&(String, Vec<String>)| models.iter().any(|m| m == model);
            if !claim
                .uses
                .iter()
                .filter(declares)
                .any(|(a, _)| *a == claim.id)
            {
                continue;
            }
            let users = claim.uses.iter().filter(declares).count().max(1) as u64;
            let share = self.app_share(&claim.id, &claim.uses);
            let after = share.saturating_add(grows_by / users);
            if after > budget {
                return Some(format!(
                    "app {} may hold {} (requires.memory_gb of its manifest); it holds {} and the growth would add {}",
                    claim.id,
                    Bytes(budget),
                    Bytes(share),
                    Bytes(grows_by / users)
                ));
            }
        }
        None
    }

    fn worker_exited(
        &mut self,
        model: String,
        instance: u64,
        expected: bool,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        self.draining.remove(&instance);
        self.cpu.forget(instance);
        self.pending_frees.remove(&instance);
        self.frees_resizing.remove(&instance);
        self.pools.remove(&instance);
        self.shrunk.remove(&instance);
        let pressure_unload = self.pressure_unloads.remove(&instance);
        if let Some((at, level, bytes)) = pressure_unload {
            let ms = now.saturating_duration_since(at).as_millis() as u64;
            out.push(Effect::Record(Record::Freed {
                level,
                model: model.clone(),
                bytes,
                ms,
            }));
            out.push(Effect::Publish(AppEvent::Freed {
                level,
                model: model.clone(),
                bytes,
                ms,
            }));
        }
        if expected {
            self.governor.worker_exited(instance);
        } else if let Some(u) = self.governor.worker_died(instance) {
            out.push(Effect::Record(Record::WorkerDied(u)));
        }
        if let Some((_, level, _)) = pressure_unload {
            let in_use: HashSet<&str> = self
                .governor
                .models()
                .flat_map(|(name, _)| crate::load::models_of(name))
                .collect();
            let models: Vec<String> = crate::load::models_of(&model)
                .filter(|m| !in_use.contains(m))
                .map(str::to_string)
                .collect();
            if !models.is_empty() {
                out.push(Effect::DropFileCache { level, models });
            }
        }
    }

    /// Time passed: idle expiry, idle pools, the end of a simulation, the
    /// ladder's grace and quiet periods.
    fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        for u in self.governor.expire(now) {
            self.unloaded(u, out);
        }
        self.shrink_idle_pools(now, out);
        if let Some((_, Some(until))) = self.power_simulated {
            if until <= now {
                self.power_simulated = None;
                out.push(Effect::Record(Record::PowerSimulationEnded));
                self.power_step(out);
            }
        }
        if let Some((_, Some(until))) = self.simulated {
            if until <= now {
                self.simulated = None;
                out.push(Effect::Record(Record::SimulationEnded));
                self.pressure_step(ladder::Event::Level(self.os_level), now, out);
                return;
            }
        }
        self.pressure_step(ladder::Event::Tick, now, out);
    }

    /// The power state in force may have changed (an OS report, a
    /// simulation, its end): the limits follow, and a change is logged,
    /// counted and told to apps. The CPU budget's new shares go out with
    /// every event's end (`reassign_threads`).
    fn power_step(&mut self, out: &mut Vec<Effect>) {
        let state = self
            .power_simulated
            .and_then(|(mode, _)| mode.state())
            .unwrap_or(self.power_os);
        if state == self.power_state {
            return;
        }
        let from = PowerMode::of(&self.power_state);
        let limits = power::limits(&state, self.cpu.cores(), &self.power_config);
        let before = std::mem::replace(&mut self.power_limits, limits);
        self.power_state = state;
        self.cpu.set_power(limits.cores, limits.pause_background);
        if before.drafting != limits.drafting {
            out.push(Effect::SetDrafting {
                allowed: limits.drafting,
            });
        }
        self.tell_caps(out);
        out.push(Effect::Record(Record::Power {
            from,
            to: PowerMode::of(&state),
            state,
            simulated: self.power_simulated.is_some(),
            limits,
        }));
        out.push(Effect::Publish(self.power_event()));
    }

    /// Tells the token caps when the stricter of the ladder's and the
    /// power policy's changed.
    fn tell_caps(&mut self, out: &mut Vec<Effect>) {
        let power = self.power_limits.max_tokens;
        let queued = match (self.ladder_caps.queued_max_tokens, power) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let caps = TokenCaps {
            queued_max_tokens: queued,
            remaining_tokens: self.ladder_caps.remaining_tokens,
        };
        if caps != self.caps {
            self.caps = caps;
            out.push(Effect::SetCaps(caps));
        }
    }

    /// One step of the pressure ladder, its actions carried out in order.
    fn pressure_step(&mut self, event: ladder::Event, now: Instant, out: &mut Vec<Effect>) {
        let view = self.view();
        let before = self.ladder.level();
        let actions = self.ladder.on_event(&event, &view, now);
        let level = self.ladder.level();
        if level != before {
            out.push(Effect::Record(Record::LevelInForce {
                from: before,
                to: level,
            }));
        }
        for action in actions {
            self.apply(action, level, now, out);
        }
        if before == PressureLevel::Normal && level != PressureLevel::Normal {
            self.shed_over_budget_apps(level, now, out);
        }
    }

    /// When pressure starts, the idle, unpinned models of apps over their
    /// budget go first, without the grace others get (a model another app
    /// within its budget also declares stays).
    fn shed_over_budget_apps(&mut self, level: PressureLevel, now: Instant, out: &mut Vec<Effect>) {
        let mut within: BTreeSet<&str> = BTreeSet::new();
        let mut over: BTreeSet<&str> = BTreeSet::new();
        for claim in self.apps.values() {
            let mine = claim
                .uses
                .iter()
                .filter(|(a, _)| *a == claim.id)
                .flat_map(|(_, models)| models.iter().map(String::as_str));
            if self.over_budget.contains(&claim.id) {
                over.extend(mine);
            } else {
                within.extend(mine);
            }
        }
        let shed: Vec<(String, u64)> = self
            .governor
            .models()
            .filter(|(name, m)| {
                over.contains(name)
                    && !within.contains(name)
                    && m.phase == Phase::Loaded
                    && m.active == 0
                    && !m.pinned()
            })
            .map(|(name, m)| (name.to_string(), m.instance))
            .collect();
        for (model, instance) in shed {
            self.apply(
                Action::Unload {
                    model,
                    instance,
                    level,
                },
                level,
                now,
                out,
            );
        }
    }

    fn apply(&mut self, action: Action, level: PressureLevel, now: Instant, out: &mut Vec<Effect>) {
        let held = |model: &str, instance: u64| {
            self.governor
                .model(model)
                .filter(|m| m.instance == instance)
                .map(|m| m.held())
        };
        let bytes = match &action {
            Action::Unload {
                model, instance, ..
            }
            | Action::DropIdleKv { model, instance }
            | Action::Drain { model, instance } => held(model, *instance),
            Action::SetEffectiveBudget { bytes } => Some(*bytes),
            Action::Notify {
                effective_budget, ..
            } => Some(*effective_budget),
            _ => None,
        };
        out.push(Effect::Record(Record::Action {
            level,
            action: action.clone(),
            bytes,
        }));
        out.push(Effect::Publish(AppEvent::Action {
            level,
            action: action.kind().to_string(),
            model: action.model().map(str::to_string),
            detail: action.to_string(),
        }));
        match action {
            Action::RefuseLoads { retry_after } => self.refusing = Some(retry_after),
            // Loads come back, and so do new requests to models drained at
            // critical: a drained model whose last responses outlasted the
            // episode would refuse every request until it unloaded, which
            // for a pinned model could be never.
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
                self.ladder_caps = caps;
                self.tell_caps(out);
            }
            Action::Drain { instance, .. } => {
                self.draining.insert(instance);
            }
            // Idle pools give back what they grew by, now: cached
            // conversations beyond the starting pool are dropped, and so
            // is the model's RAM tier.
            Action::DropIdleKv { model, instance } => {
                self.drop_idle_kv(model, instance, level, now, out)
            }
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
                let footprint = self
                    .governor
                    .model(&model)
                    .filter(|m| m.instance == instance)
                    .and_then(|m| m.measured)
                    .map_or(0, |m| m.footprint);
                if let Some(u) = self.governor.unload_instance(&model, instance, reason) {
                    self.pressure_unloads
                        .insert(instance, (now, level, footprint));
                    self.unloaded(u, out);
                }
            }
            Action::Notify {
                level,
                effective_budget,
            } => out.push(Effect::Publish(AppEvent::Level {
                level,
                budget: self.governor.budget,
                effective_budget,
            })),
        }
    }

    /// A model left the governor: its waiting requests are answered and
    /// its worker stops.
    fn unloaded(&mut self, u: Unload, out: &mut Vec<Effect>) {
        // Its worker stops: what it computes now ends with it, so the
        // others get the cores back at once.
        self.cpu.forget(u.instance);
        for ticket in self.waiting.remove(&u.instance).unwrap_or_default() {
            out.push(Effect::Deny {
                ticket,
                model: u.model.clone(),
                denial: Denial::UnloadedWhileLoading {
                    model: u.model.clone(),
                },
            });
        }
        out.push(Effect::Unloaded(u));
    }

    /// Pressure's drop of idle K/V: an idle model's pool is freed entirely
    /// (`Resize` to 0 cells: its cached conversations and compute buffers
    /// go, the weights stay mapped, and the next request makes the pool
    /// again; its estimate stays counted, so that never overcommits), and
    /// any model's RAM tier is forgotten. The bytes that came back are published once the worker is
    /// measured again (see [`Controller::awaits_measure`]).
    fn drop_idle_kv(
        &mut self,
        model: String,
        instance: u64,
        level: PressureLevel,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(m) = self
            .governor
            .model(&model)
            .filter(|m| m.instance == instance)
        else {
            return;
        };
        let Some(pool) = self.pools.get(&instance) else {
            return;
        };
        let before = m.measured.map_or(0, |x| x.footprint);
        let mut acted = false;
        if m.phase == Phase::Loaded && m.active == 0 && pool.cells > 0 {
            out.push(Effect::Resize {
                model: model.clone(),
                instance,
                cells: 0,
                evict: Vec::new(),
            });
            self.shrunk.insert(instance, m.last_used);
            self.frees_resizing.insert(instance);
            acted = true;
        }
        if pool.ram_cached_sequences > 0 {
            out.push(Effect::DropTier {
                model,
                instance,
                spill: level == PressureLevel::Warn,
            });
            acted = true;
        }
        if acted {
            self.pending_frees.insert(instance, (now, level, before));
        }
    }

    /// Whether the controller waits for a fresh measurement of this load
    /// (idle K/V was dropped): the daemon measures it as soon as the worker
    /// says it is done.
    pub fn awaits_measure(&self, instance: u64) -> bool {
        self.pending_frees.contains_key(&instance) && !self.frees_resizing.contains(&instance)
    }

    /// Pools grown past their start whose model has been idle the pool
    /// idle time (`pool_idle_shrink`): back
    /// to the starting size (the worker keeps the most recent cached
    /// conversations that fit).
    fn shrink_idle_pools(&mut self, now: Instant, out: &mut Vec<Effect>) {
        for (name, m) in self.governor.models() {
            let Some(pool) = self.pools.get(&m.instance) else {
                continue;
            };
            let idle = m.phase == Phase::Loaded
                && m.active == 0
                && now.saturating_duration_since(m.last_used) >= self.pool_idle_shrink;
            let asked = self.shrunk.get(&m.instance) == Some(&m.last_used);
            if idle && !asked && pool.cells > pool.start_cells {
                out.push(Effect::Resize {
                    model: name.to_string(),
                    instance: m.instance,
                    cells: pool.start_cells,
                    evict: Vec::new(),
                });
                self.shrunk.insert(m.instance, m.last_used);
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
            .map(|(_, m)| m.last_used + self.pool_idle_shrink)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::KeepAlive;
    use crate::manifest::Role;
    use crate::threads::ThreadClass;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const GB: u64 = 1 << 30;

    fn request(ticket: Ticket, model: &str, bytes: u64, app: Option<AppClaim>) -> Event {
        Event::Acquire(Request {
            ticket,
            wish: Wish::new(model, vec![(4096, bytes)]),
            app,
        })
    }

    fn loaded(model: &str, instance: u64) -> Event {
        Event::Loaded {
            model: model.into(),
            instance,
            measured: None,
            pool: PoolSize::new(4096, 1),
        }
    }

    fn load_of(effects: &[Effect]) -> &Load {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::Load { load, .. } => Some(load),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no load in {effects:?}"))
    }

    fn claim(id: &str, budget: u64, uses: &[(&str, &[&str])]) -> AppClaim {
        AppClaim {
            id: id.into(),
            budget: Some(budget),
            uses: uses
                .iter()
                .map(|(a, ms)| (a.to_string(), ms.iter().map(|m| m.to_string()).collect()))
                .collect(),
        }
    }

    fn threads_of(effects: &[Effect]) -> Vec<(&str, u32, ThreadClass)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::SetThreads { model, share, .. } => {
                    Some((model.as_str(), share.threads, share.class))
                }
                _ => None,
            })
            .collect()
    }

    fn release(model: &str, instance: u64, priority: Priority) -> Event {
        Event::Release {
            model: model.into(),
            instance,
            priority,
        }
    }

    #[test]
    fn busy_workers_share_the_cores_and_idle_ones_give_them_back() {
        let mut c = Controller::new(ControllerConfig {
            cores: 4,
            ..ControllerConfig::new(100 * GB)
        })
        .unwrap();
        let now = Instant::now();
        let a = load_of(&c.handle(request(1, "a", GB, None), now)).instance;
        // Started with every core, which is its share alone: nothing to say.
        assert_eq!(threads_of(&c.handle(loaded("a", a), now)), vec![]);
        assert_eq!(c.threads(a).map(|s| s.threads), Some(4));
        let b = load_of(&c.handle(request(2, "b", GB, None), now)).instance;
        // Both busy: half each.
        assert_eq!(
            threads_of(&c.handle(loaded("b", b), now)),
            vec![
                ("a", 2, ThreadClass::Interactive),
                ("b", 2, ThreadClass::Interactive)
            ]
        );
        // `a` idle: it holds nothing, and `b` gets every core.
        assert_eq!(
            threads_of(&c.handle(release("a", a, Priority::Interactive), now)),
            vec![("b", 4, ThreadClass::Interactive)]
        );
        assert_eq!(c.threads(a), None);
        // A background request on `a` waits for `b`'s interactive one.
        let mut wish = Wish::new("a", vec![]);
        wish.priority = Priority::Background;
        let effects = c.handle(
            Event::Acquire(Request {
                ticket: 3,
                wish,
                app: None,
            }),
            now,
        );
        assert_eq!(
            threads_of(&effects),
            vec![("a", 0, ThreadClass::Background)],
            "paused"
        );
        // `b` done: the background work gets the cores, at background
        // priority.
        assert_eq!(
            threads_of(&c.handle(release("b", b, Priority::Interactive), now)),
            vec![("a", 4, ThreadClass::Background)]
        );
        // A worker that exits holds nothing, and a late release of it
        // changes nothing.
        c.handle(
            Event::WorkerExited {
                model: "a".into(),
                instance: a,
                expected: false,
            },
            now,
        );
        assert_eq!(c.threads(a), None);
        assert_eq!(
            threads_of(&c.handle(release("a", a, Priority::Background), now)),
            vec![]
        );
    }

    fn background(ticket: Ticket, model: &str, bytes: u64) -> Event {
        let mut wish = Wish::new(model, vec![(4096, bytes)]);
        wish.priority = Priority::Background;
        Event::Acquire(Request {
            ticket,
            wish,
            app: None,
        })
    }

    fn simulate_power(mode: PowerMode) -> Event {
        Event::SimulatePower {
            mode,
            duration: None,
        }
    }

    fn caps_of(effects: &[Effect]) -> Vec<TokenCaps> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::SetCaps(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    fn power_events(effects: &[Effect]) -> Vec<(PowerMode, PowerLimits)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(AppEvent::Power { mode, limits, .. }) => Some((*mode, *limits)),
                _ => None,
            })
            .collect()
    }

    fn capped(queued: Option<u32>) -> TokenCaps {
        TokenCaps {
            queued_max_tokens: queued,
            remaining_tokens: None,
        }
    }

    #[test]
    fn on_battery_workers_get_fewer_cores_new_loads_fewer_sequences_and_requests_a_cap() {
        let mut c = Controller::new(ControllerConfig {
            cores: 4,
            ..ControllerConfig::new(100 * GB)
        })
        .unwrap();
        let now = Instant::now();
        let a = load_of(&c.handle(request(1, "a", GB, None), now)).instance;
        c.handle(loaded("a", a), now);
        assert!(c.drafting_allowed());

        let effects = c.handle(simulate_power(PowerMode::Battery), now);
        // The busy worker computes on half the cores, drafting stops,
        // requests that start are capped; it is recorded and told to apps.
        assert_eq!(
            threads_of(&effects),
            vec![("a", 2, ThreadClass::Interactive)]
        );
        assert!(effects.contains(&Effect::SetDrafting { allowed: false }));
        assert_eq!(caps_of(&effects), vec![capped(Some(512))]);
        let told = power_events(&effects);
        assert_eq!(told.len(), 1, "{effects:?}");
        assert_eq!(told[0].0, PowerMode::Battery);
        assert_eq!(told[0].1.parallel, Some(1));
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Record(Record::Power {
                from: PowerMode::Normal,
                to: PowerMode::Battery,
                simulated: true,
                ..
            })
        )));
        assert!(!c.drafting_allowed());
        assert_eq!(c.power().mode, PowerMode::Battery);
        // The same state reported again changes nothing.
        assert_eq!(c.handle(simulate_power(PowerMode::Battery), now), vec![]);

        // A new load gets one sequence though four were asked for.
        let mut wish = Wish::new("b", vec![(4096, GB)]);
        wish.parallel = 4;
        let effects = c.handle(
            Event::Acquire(Request {
                ticket: 2,
                wish,
                app: None,
            }),
            now,
        );
        assert_eq!(load_of(&effects).parallel, 1);
        assert_eq!(c.parallel_for_new_loads(4), 1);

        // Back on mains: everything lifts.
        let effects = c.handle(simulate_power(PowerMode::Normal), now);
        assert_eq!(
            threads_of(&effects),
            vec![("a", 4, ThreadClass::Interactive)]
        );
        assert!(effects.contains(&Effect::SetDrafting { allowed: true }));
        assert_eq!(caps_of(&effects), vec![TokenCaps::NONE]);
        assert_eq!(
            power_events(&effects)[0],
            (PowerMode::Normal, PowerLimits::default())
        );
        assert_eq!(c.parallel_for_new_loads(4), 4);
    }

    #[test]
    fn when_hot_background_work_pauses_even_alone_and_at_critical_new_background_work_is_refused() {
        let mut c = Controller::new(ControllerConfig {
            cores: 2,
            ..ControllerConfig::new(100 * GB)
        })
        .unwrap();
        let now = Instant::now();
        let a = load_of(&c.handle(background(1, "a", GB), now)).instance;
        // Loaded with every core; background work alone gets them at
        // background priority.
        assert_eq!(
            threads_of(&c.handle(loaded("a", a), now)),
            vec![("a", 2, ThreadClass::Background)]
        );
        // The OS reports serious heat: the background generation pauses.
        let hot = PowerState {
            thermal: ThermalState::Serious,
            low_power_mode: Some(false),
            on_battery: Some(false),
        };
        let effects = c.handle(Event::Power(hot), now);
        assert_eq!(
            threads_of(&effects),
            vec![("a", 0, ThreadClass::Background)]
        );
        assert_eq!(caps_of(&effects), vec![capped(Some(256))]);
        // A new background request still gets its place (it waits).
        let effects = c.handle(background(2, "a", GB), now);
        assert!(
            matches!(effects[..], [Effect::Admit { ticket: 2, .. }]),
            "{effects:?}"
        );

        // Critical: new background work is refused with a Retry-After;
        // interactive work is served.
        let critical = PowerState {
            thermal: ThermalState::Critical,
            ..hot
        };
        c.handle(Event::Power(critical), now);
        let effects = c.handle(background(3, "a", GB), now);
        match &effects[..] {
            [Effect::Record(Record::Refused {
                kind: "thermal", ..
            }), Effect::Deny {
                ticket: 3,
                denial: denial @ Denial::Thermal { retry_after, .. },
                ..
            }] => {
                assert_eq!(*retry_after, Duration::from_secs(60));
                assert!(denial.to_string().contains("critical"), "{denial}");
            }
            other => panic!("{other:?}"),
        }
        let effects = c.handle(request(4, "a", GB, None), now);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Admit { ticket: 4, .. })),
            "{effects:?}"
        );
        // The interactive request runs on every core; background stays
        // paused after it ends, while it is hot.
        assert_eq!(c.threads(a).map(|s| s.threads), Some(2));
        let effects = c.handle(release("a", a, Priority::Interactive), now);
        assert_eq!(
            threads_of(&effects),
            vec![("a", 0, ThreadClass::Background)]
        );
        // Cool again: the background work resumes.
        let cool = PowerState {
            thermal: ThermalState::Nominal,
            ..hot
        };
        let effects = c.handle(Event::Power(cool), now);
        assert_eq!(
            threads_of(&effects),
            vec![("a", 2, ThreadClass::Background)]
        );
        assert_eq!(caps_of(&effects), vec![TokenCaps::NONE]);
    }

    #[test]
    fn a_power_simulation_overrides_the_os_until_it_ends() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let t0 = Instant::now();
        // A VM: nothing known; the state changes nothing and says so.
        assert_eq!(c.handle(Event::Power(PowerState::default()), t0), vec![]);
        assert_eq!(c.power().mode, PowerMode::Normal);
        let effects = c.handle(
            Event::SimulatePower {
                mode: PowerMode::LowPower,
                duration: Some(Duration::from_secs(60)),
            },
            t0,
        );
        assert_eq!(power_events(&effects)[0].0, PowerMode::LowPower);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(60)));
        // An OS report meanwhile is remembered, not applied.
        let ac = PowerState {
            thermal: ThermalState::Nominal,
            low_power_mode: Some(false),
            on_battery: Some(false),
        };
        assert_eq!(c.handle(Event::Power(ac), t0), vec![]);
        assert_eq!(c.power().os, ac);
        assert_eq!(c.handle(Event::Tick, t0 + Duration::from_secs(59)), vec![]);
        let effects = c.handle(Event::Tick, t0 + Duration::from_secs(60));
        assert!(effects.contains(&Effect::Record(Record::PowerSimulationEnded)));
        assert_eq!(
            power_events(&effects),
            vec![(PowerMode::Normal, PowerLimits::default())]
        );
        assert_eq!(c.power().state, ac);
        assert_eq!(c.power().simulated, None);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn the_stricter_of_the_ladders_and_the_power_caps_applies() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        assert_eq!(
            caps_of(&c.handle(simulate_power(PowerMode::Battery), now)),
            vec![capped(Some(512))]
        );
        // Warn caps at 256: that is stricter.
        let effects = c.handle(Event::OsPressure(PressureLevel::Warn), now);
        assert_eq!(caps_of(&effects), vec![capped(Some(256))]);
        // Off battery, warn's cap stays.
        assert_eq!(
            caps_of(&c.handle(simulate_power(PowerMode::Normal), now)),
            vec![]
        );
        assert_eq!(c.caps(), capped(Some(256)));
        // Critical's in-flight cap passes through.
        let effects = c.handle(Event::OsPressure(PressureLevel::Critical), now);
        assert_eq!(caps_of(&effects)[0].remaining_tokens, Some(64));
    }

    #[test]
    fn two_loads_of_one_app_cannot_both_pass_on_the_same_bytes() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let uses: &[(&str, &[&str])] = &[("app", &["a", "b"])];
        // The first load is still loading when the second request comes:
        // its estimate already counts against the app.
        let first = c.handle(
            request(1, "a", 3 * GB, Some(claim("app", 4 * GB, uses))),
            now,
        );
        load_of(&first);
        let second = c.handle(
            request(2, "b", 2 * GB, Some(claim("app", 4 * GB, uses))),
            now,
        );
        match &second[..] {
            [Effect::Deny {
                ticket: 2,
                denial: denial @ Denial::AppBudget { share, added, .. },
                ..
            }] => {
                assert_eq!((*share, *added), (3 * GB, 2 * GB));
                let text = denial.to_string();
                assert!(text.contains("app app may hold 4.0 GiB"), "{text}");
            }
            other => panic!("expected an app budget denial, got {other:?}"),
        }
        // Another app is not held to this one's budget.
        let other = c.handle(
            request(
                3,
                "b",
                2 * GB,
                Some(claim("other", 4 * GB, &[("other", &["b"])])),
            ),
            now,
        );
        load_of(&other);
    }

    #[test]
    fn an_app_over_its_budget_is_told_once_per_crossing() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let uses: &[(&str, &[&str])] = &[("app", &["a"])];
        let l = load_of(&c.handle(request(1, "a", 3 * GB, None), now)).instance;
        c.handle(loaded("a", l), now);
        let told = |effects: &[Effect]| {
            effects
                .iter()
                .filter(|e| matches!(e, Effect::Publish(AppEvent::BudgetExceeded { .. })))
                .count()
        };
        assert_eq!(
            told(&c.handle(request(2, "a", 0, Some(claim("app", GB, uses))), now)),
            1
        );
        assert_eq!(
            told(&c.handle(request(3, "a", 0, Some(claim("app", GB, uses))), now)),
            0
        );
        // Within budget again, then over again: told again.
        c.handle(request(4, "a", 0, Some(claim("app", 10 * GB, uses))), now);
        assert_eq!(
            told(&c.handle(request(5, "a", 0, Some(claim("app", GB, uses))), now)),
            1
        );
    }

    #[test]
    fn the_requests_role_reaches_the_ladder() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let mut wish = Wish::new("embed", vec![(512, GB)]);
        wish.role = Role::Embedding;
        let l = load_of(&c.handle(
            Event::Acquire(Request {
                ticket: 1,
                wish,
                app: None,
            }),
            now,
        ))
        .instance;
        c.handle(loaded("embed", l), now);
        assert_eq!(c.view().models[0].role, Role::Embedding);
    }

    #[test]
    fn an_idle_grown_pool_shrinks_after_its_idle_time_and_shows_idle_cells_until_then() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let t0 = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", l), t0);
        let grow = c.handle(
            Event::PoolFull {
                model: "a".into(),
                instance: l,
                cells: 4096,
                estimate: Some(2 * GB),
            },
            t0,
        );
        assert!(
            matches!(grow[..], [Effect::Resize { cells: 4096, .. }]),
            "{grow:?}"
        );
        c.handle(
            Event::PoolResized {
                model: "a".into(),
                instance: l,
                cells: 4096,
                previous_cells: 2048,
                estimate: Some(2 * GB),
            },
            t0,
        );
        c.handle(
            Event::Release {
                model: "a".into(),
                instance: l,
                priority: Priority::Interactive,
            },
            t0,
        );
        assert_eq!(c.view().models[0].idle_sequences_with_cells, 0);
        c.handle(
            Event::PoolStats {
                instance: l,
                figures: PoolFigures {
                    cells: 4096,
                    used_cells: 900,
                    cached_sequences: 1,
                    ram_cached_sequences: 2,
                    ..PoolFigures::default()
                },
            },
            t0,
        );
        // One cached in the pool, two in its RAM tier.
        assert_eq!(c.view().models[0].idle_sequences_with_cells, 3);
        assert_eq!(c.next_deadline(), Some(t0 + POOL_IDLE_SHRINK));
        let shrink = c.handle(Event::Tick, t0 + POOL_IDLE_SHRINK);
        assert!(
            shrink.contains(&Effect::Resize {
                model: "a".into(),
                instance: l,
                cells: 2048,
                evict: Vec::new(),
            }),
            "{shrink:?}"
        );
        // Asked once per idle spell.
        let again = c.handle(Event::Tick, t0 + 2 * POOL_IDLE_SHRINK);
        assert!(
            !again.iter().any(|e| matches!(e, Effect::Resize { .. })),
            "{again:?}"
        );
    }

    #[test]
    fn growth_is_held_to_the_budget_of_the_apps_that_declare_the_model() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let uses: &[(&str, &[&str])] = &[("app", &["a"])];
        let l = load_of(&c.handle(
            request(1, "a", 3 * GB, Some(claim("app", 4 * GB, uses))),
            now,
        ))
        .instance;
        c.handle(loaded("a", l), now);
        let grow = |estimate| Event::PoolFull {
            model: "a".into(),
            instance: l,
            cells: 4096,
            estimate: Some(estimate),
        };
        let e = c.handle(grow(5 * GB), now);
        assert!(
            matches!(&e[..], [Effect::DenyGrowth { why, .. }] if why.contains("app app may hold 4.0 GiB")),
            "{e:?}"
        );
        let e = c.handle(grow(4 * GB), now);
        assert!(
            matches!(&e[..], [Effect::Resize { cells: 4096, .. }]),
            "{e:?}"
        );
    }

    #[test]
    fn at_warn_an_over_budget_apps_idle_models_go_first() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let uses: &[(&str, &[&str])] = &[("big", &["a"]), ("small", &["b"])];
        for (ticket, model, app) in [(1, "a", "big"), (2, "b", "small")] {
            let l = load_of(&c.handle(
                request(ticket, model, 3 * GB, Some(claim(app, 4 * GB, uses))),
                now,
            ))
            .instance;
            c.handle(loaded(model, l), now);
            c.handle(
                Event::Release {
                    model: model.into(),
                    instance: l,
                    priority: Priority::Interactive,
                },
                now,
            );
        }
        // "big" is over its budget now (its budget lowered by a reinstall).
        c.handle(request(3, "a", 0, Some(claim("big", GB, uses))), now);
        c.handle(
            Event::Release {
                model: "a".into(),
                instance: c.governor().model("a").unwrap().instance,
                priority: Priority::Interactive,
            },
            now,
        );
        let e = c.handle(
            Event::OsPressure(PressureLevel::Warn),
            now + Duration::from_secs(1),
        );
        let unloaded: Vec<&str> = e
            .iter()
            .filter_map(|e| match e {
                Effect::Unloaded(u) => Some(u.model.as_str()),
                _ => None,
            })
            .collect();
        // Within the grace: only the over-budget app's model goes.
        assert_eq!(unloaded, ["a"], "{e:?}");
    }

    #[test]
    fn growth_is_refused_under_pressure_and_counted() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), now)).instance;
        c.handle(loaded("a", l), now);
        c.handle(Event::OsPressure(PressureLevel::Warn), now);
        let e = c.handle(
            Event::PoolFull {
                model: "a".into(),
                instance: l,
                cells: 4096,
                estimate: Some(2 * GB),
            },
            now,
        );
        assert!(
            matches!(&e[..], [Effect::DenyGrowth { why, .. }] if why.contains("warn")),
            "{e:?}"
        );
        assert_eq!(c.pool(l).unwrap().growth_refused, 1);
    }

    #[test]
    fn requests_waiting_for_a_load_are_told_when_it_is_unloaded() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let now = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), now)).instance;
        assert!(c.handle(request(2, "a", GB, None), now).is_empty());
        let e = c.handle(
            Event::Unload {
                model: "a".into(),
                hold: false,
            },
            now,
        );
        let denied: Vec<Ticket> = e
            .iter()
            .filter_map(|e| match e {
                Effect::Deny {
                    ticket,
                    denial: Denial::UnloadedWhileLoading { .. },
                    ..
                } => Some(*ticket),
                _ => None,
            })
            .collect();
        assert_eq!(denied, [1, 2]);
        // The load finishing later stops its worker.
        assert_eq!(
            c.handle(loaded("a", l), now),
            [Effect::StopWorker {
                model: "a".into(),
                instance: l
            }]
        );
    }

    #[test]
    fn a_pressure_unload_publishes_the_bytes_freed_when_the_worker_exits() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let t0 = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", l), t0);
        c.handle(
            Event::Measured(vec![(
                l,
                Measured {
                    footprint: 300 << 20,
                    mapped_weights: 700 << 20,
                },
            )]),
            t0,
        );
        c.handle(
            Event::Release {
                model: "a".into(),
                instance: l,
                priority: Priority::Interactive,
            },
            t0,
        );
        // Idle past the warn grace (30 s): unloaded at warn.
        let e = c.handle(
            Event::OsPressure(PressureLevel::Warn),
            t0 + Duration::from_secs(31),
        );
        assert!(
            e.iter()
                .any(|e| matches!(e, Effect::Unloaded(u) if u.instance == l)),
            "{e:?}"
        );
        let e = c.handle(
            Event::WorkerExited {
                model: "a".into(),
                instance: l,
                expected: true,
            },
            t0 + Duration::from_millis(31_500),
        );
        assert!(
            e.contains(&Effect::Publish(AppEvent::Freed {
                level: PressureLevel::Warn,
                model: "a".into(),
                bytes: 300 << 20,
                ms: 500,
            })),
            "{e:?}"
        );
        // Its file's page cache goes back too: no other load uses it.
        assert!(
            e.contains(&Effect::DropFileCache {
                level: PressureLevel::Warn,
                models: vec!["a".into()],
            }),
            "{e:?}"
        );
    }

    #[test]
    fn a_model_files_cache_is_dropped_only_after_a_pressure_unload_and_while_no_load_uses_it() {
        let t0 = Instant::now();
        let exited = |model: &str, instance| Event::WorkerExited {
            model: model.into(),
            instance,
            expected: true,
        };
        let drops = |e: &[Effect]| {
            e.iter()
                .filter(|e| matches!(e, Effect::DropFileCache { .. }))
                .count()
        };
        let release = |model: &str, instance| Event::Release {
            model: model.into(),
            instance,
            priority: Priority::Interactive,
        };

        // Unloaded for idleness (no pressure): the cache stays for the
        // next load.
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let a = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", a), t0);
        c.handle(release("a", a), t0);
        let e = c.handle(Event::Tick, t0 + Duration::from_secs(3600));
        assert!(
            e.iter()
                .any(|e| matches!(e, Effect::Unloaded(u) if u.instance == a)),
            "{e:?}"
        );
        assert_eq!(
            drops(&c.handle(exited("a", a), t0 + Duration::from_secs(3601))),
            0
        );

        // Unloaded at warn while another load of the same file (another
        // K/V type) is busy: that load maps the file, so nothing is dropped.
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let a = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", a), t0);
        c.handle(release("a", a), t0);
        let f16 = load_of(&c.handle(request(2, "a@f16", GB, None), t0)).instance;
        c.handle(loaded("a@f16", f16), t0);
        let e = c.handle(
            Event::OsPressure(PressureLevel::Warn),
            t0 + Duration::from_secs(31),
        );
        assert!(
            e.iter()
                .any(|e| matches!(e, Effect::Unloaded(u) if u.instance == a)),
            "{e:?}"
        );
        assert_eq!(
            drops(&c.handle(exited("a", a), t0 + Duration::from_secs(32))),
            0
        );
    }

    #[test]
    fn under_warn_a_conversation_reported_cached_after_its_release_is_dropped() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let t0 = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", l), t0);
        let stats = |cached_sequences| Event::PoolStats {
            instance: l,
            figures: PoolFigures {
                cells: 2048,
                used_cells: 400,
                cached_sequences,
                ..PoolFigures::default()
            },
        };
        c.handle(stats(0), t0);
        c.handle(Event::OsPressure(PressureLevel::Warn), t0);
        // The answer ends under warn; the worker's figures come after the
        // release, as they do from a real worker.
        let released = c.handle(
            Event::Release {
                model: "a".into(),
                instance: l,
                priority: Priority::Interactive,
            },
            t0 + Duration::from_millis(100),
        );
        let resize = Effect::Resize {
            model: "a".into(),
            instance: l,
            cells: 0,
            evict: Vec::new(),
        };
        assert!(!released.contains(&resize), "{released:?}");
        let e = c.handle(stats(1), t0 + Duration::from_millis(110));
        assert!(e.contains(&resize), "{e:?}");
        // The same figures again order nothing more.
        let again = c.handle(stats(1), t0 + Duration::from_millis(120));
        assert!(!again.contains(&resize), "{again:?}");
        // At normal, a cached conversation is only counted.
        let mut calm = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let l = load_of(&calm.handle(request(1, "a", GB, None), t0)).instance;
        calm.handle(loaded("a", l), t0);
        let e = calm.handle(
            Event::PoolStats {
                instance: l,
                figures: PoolFigures {
                    cells: 2048,
                    cached_sequences: 1,
                    ..PoolFigures::default()
                },
            },
            t0,
        );
        assert!(
            !e.iter().any(|e| matches!(e, Effect::Resize { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn warn_drops_idle_kv_before_the_grace_and_publishes_the_bytes_measured() {
        let mut c = Controller::new(ControllerConfig::new(100 * GB)).unwrap();
        let t0 = Instant::now();
        let l = load_of(&c.handle(request(1, "a", GB, None), t0)).instance;
        c.handle(loaded("a", l), t0);
        let measured = |footprint| {
            Event::Measured(vec![(
                l,
                Measured {
                    footprint,
                    mapped_weights: 500 << 20,
                },
            )])
        };
        c.handle(measured(300 << 20), t0);
        c.handle(
            Event::PoolStats {
                instance: l,
                figures: PoolFigures {
                    cells: 2048,
                    used_cells: 700,
                    cached_sequences: 1,
                    ram_cached_sequences: 1,
                    ram_cache_bytes: 20 << 20,
                    ..PoolFigures::default()
                },
            },
            t0,
        );
        c.handle(
            Event::Release {
                model: "a".into(),
                instance: l,
                priority: Priority::Interactive,
            },
            t0,
        );
        // Warn 1 s later: within the 30 s grace, nothing unloads, but the
        // idle pool is freed and the RAM tier goes.
        let e = c.handle(
            Event::OsPressure(PressureLevel::Warn),
            t0 + Duration::from_secs(1),
        );
        assert!(!e.iter().any(|e| matches!(e, Effect::Unloaded(_))), "{e:?}");
        assert!(
            e.contains(&Effect::Resize {
                model: "a".into(),
                instance: l,
                cells: 0,
                evict: Vec::new(),
            }),
            "{e:?}"
        );
        assert!(
            e.contains(&Effect::DropTier {
                model: "a".into(),
                instance: l,
                spill: true,
            }),
            "{e:?}"
        );
        // The tier's reply (or a periodic measure) before the pool's report
        // is too early: the worker gives its model back with the report.
        assert!(!c.awaits_measure(l));
        let early = c.handle(measured(250 << 20), t0 + Duration::from_millis(1100));
        assert!(
            !early
                .iter()
                .any(|e| matches!(e, Effect::Publish(AppEvent::Freed { .. }))),
            "{early:?}"
        );
        c.handle(
            Event::PoolResized {
                model: "a".into(),
                instance: l,
                cells: 0,
                previous_cells: 2048,
                estimate: None,
            },
            t0 + Duration::from_millis(1200),
        );
        assert!(c.awaits_measure(l));
        // The worker is measured once done: 220 MiB came back.
        let e = c.handle(measured(80 << 20), t0 + Duration::from_millis(1250));
        assert!(
            e.contains(&Effect::Publish(AppEvent::Freed {
                level: PressureLevel::Warn,
                model: "a".into(),
                bytes: 220 << 20,
                ms: 250,
            })),
            "{e:?}"
        );
        assert!(!c.awaits_measure(l));
        assert!(c.holds("a"));
    }

    #[test]
    fn an_app_sees_the_level_and_its_own_models_events_only() {
        let mine = vec!["a".to_string()];
        let level = AppEvent::Level {
            level: PressureLevel::Warn,
            budget: 1,
            effective_budget: 1,
        };
        let order = |model: Option<&str>| AppEvent::Action {
            level: PressureLevel::Warn,
            action: "unload".into(),
            model: model.map(str::to_string),
            detail: String::new(),
        };
        let freed = |model: &str| AppEvent::Freed {
            level: PressureLevel::Warn,
            model: model.into(),
            bytes: 1,
            ms: 1,
        };
        let over = |app: &str| AppEvent::BudgetExceeded {
            app: app.into(),
            share: 2,
            budget: 1,
        };
        assert!(level.concerns("x", &mine));
        assert!(order(None).concerns("x", &mine));
        assert!(order(Some("a")).concerns("x", &mine));
        assert!(!order(Some("b")).concerns("x", &mine));
        assert!(freed("a").concerns("x", &mine) && !freed("b").concerns("x", &mine));
        assert!(over("x").concerns("x", &mine) && !over("y").concerns("x", &mine));
    }

    #[test]
    fn app_events_carry_their_version_and_type() {
        let json = AppEvent::BudgetExceeded {
            app: "x".into(),
            share: 2,
            budget: 1,
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["version"], EVENTS_VERSION);
        assert_eq!(v["type"], "budget.exceeded");
        assert_eq!(v["share"], 2);
    }

    /// What the property tests do: one of the things that happen to a
    /// daemon, with its parameters drawn at random.
    #[derive(Debug, Clone)]
    enum Op {
        Acquire { model: usize, app: usize, pin: bool },
        Release(usize),
        FinishLoad { index: usize, fail: bool },
        Exit(usize),
        Pressure(u8),
        Simulate(u8),
        Power(u8),
        Advance(u16),
        Measure { index: usize, percent: u8 },
        Grow { index: usize },
        Unload(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5usize, 0..3usize, any::<bool>())
                .prop_map(|(model, app, pin)| Op::Acquire { model, app, pin }),
            3 => (0..8usize).prop_map(Op::Release),
            3 => (0..4usize, proptest::bool::weighted(0.1))
                .prop_map(|(index, fail)| Op::FinishLoad { index, fail }),
            2 => (0..4usize).prop_map(Op::Exit),
            1 => (0..3u8).prop_map(Op::Pressure),
            1 => (0..3u8).prop_map(Op::Simulate),
            1 => (0..5u8).prop_map(Op::Power),
            2 => (0..200u16).prop_map(Op::Advance),
            1 => (0..5usize, 50..150u8).prop_map(|(index, percent)| Op::Measure { index, percent }),
            1 => (0..5usize).prop_map(|index| Op::Grow { index }),
            1 => (0..5usize).prop_map(Op::Unload),
        ]
    }

    const MODELS: [(&str, u64); 5] = [
        ("a", 3 * GB),
        ("b", 5 * GB),
        ("c", 2 * GB),
        ("d", 8 * GB),
        ("e", GB),
    ];

    /// The apps: one without a budget, two with, sharing model `c`.
    fn app(i: usize) -> Option<AppClaim> {
        let uses: &[(&str, &[&str])] = &[("one", &["a", "c", "e"]), ("two", &["b", "c", "d"])];
        match i {
            0 => None,
            1 => Some(claim("one", 6 * GB, uses)),
            _ => Some(claim("two", 9 * GB, uses)),
        }
    }

    fn level(i: u8) -> PressureLevel {
        [
            PressureLevel::Normal,
            PressureLevel::Warn,
            PressureLevel::Critical,
        ][i as usize % 3]
    }

    /// The daemon's side, as the task keeps it: leases, loads in flight,
    /// workers asked to stop.
    /// The first model's requests are background work, the others'
    /// interactive.
    fn priority_of(model: &str) -> Priority {
        if model == MODELS[0].0 {
            Priority::Background
        } else {
            Priority::Interactive
        }
    }

    #[derive(Default)]
    struct World {
        leases: Vec<(String, u64)>,
        loading: Vec<(String, u64)>,
        stopping: Vec<(String, u64)>,
        next_ticket: Ticket,
        /// Requests by ticket: the app, when one asked.
        apps: BTreeMap<Ticket, Option<AppClaim>>,
        refusing: bool,
        /// Apps whose requests the controller has seen (it holds growth to
        /// their budgets).
        seen_apps: BTreeSet<String>,
        /// Per-instance ladder orders seen (unload, drain) in this episode.
        ordered: BTreeSet<(&'static str, u64)>,
    }

    impl World {
        /// Feeds one event and checks every property on what comes back.
        fn step(
            &mut self,
            c: &mut Controller,
            event: Event,
            now: Instant,
        ) -> Result<(), TestCaseError> {
            // Busy as the daemon knows it: a request holds a lease on it
            // (a released one no longer does), or it is loading.
            let before: BTreeMap<String, (bool, bool, u64)> = c
                .governor()
                .models()
                .map(|(n, m)| {
                    let busy = self.leases.iter().any(|(_, i)| *i == m.instance)
                        || self.loading.iter().any(|(_, i)| *i == m.instance);
                    (n.to_string(), (busy, m.pinned(), m.instance))
                })
                .collect();
            let ticket_app = match &event {
                Event::Acquire(r) => Some((r.ticket, r.app.clone())),
                _ => None,
            };
            // At thermal critical a background request is never admitted.
            let refused_background = match &event {
                Event::Acquire(r) => {
                    r.wish.priority == Priority::Background
                        && c.power().limits.refuse_background_retry_after_s.is_some()
                }
                _ => false,
            };
            if let Event::Acquire(Request {
                app: Some(claim), ..
            }) = &event
            {
                self.seen_apps.insert(claim.id.clone());
            }
            let grown = match &event {
                Event::PoolFull { model, .. } => Some(model.clone()),
                _ => None,
            };
            let effects = c.handle(event, now);
            for effect in &effects {
                match effect {
                    Effect::Admit {
                        model,
                        instance,
                        ticket,
                    } => {
                        prop_assert!(
                            !refused_background,
                            "a background request admitted at thermal critical"
                        );
                        self.apps.remove(ticket);
                        self.leases.push((model.clone(), *instance));
                    }
                    Effect::Deny { ticket, .. } => {
                        self.apps.remove(ticket);
                    }
                    Effect::Load { load, .. } => {
                        for u in &load.evict {
                            let (busy, pinned, _) = before[&u.model];
                            prop_assert!(
                                !busy && !pinned,
                                "evicted {} busy {busy} pinned {pinned}",
                                u.model
                            );
                            self.stopping.push((u.model.clone(), u.instance));
                        }
                        self.loading.push((load.model.clone(), load.instance));
                        // Admission keeps what the models hold within the
                        // effective budget.
                        let held: u64 = c.governor().models().map(|(_, m)| m.held()).sum();
                        prop_assert!(
                            held <= c.governor().effective_budget,
                            "held {held} over the effective budget {}: {effects:?}",
                            c.governor().effective_budget
                        );
                        // And the app that asked within its own.
                        if let Some((_, Some(claim))) = &ticket_app {
                            let share = c.app_share(&claim.id, &claim.uses);
                            prop_assert!(
                                share <= claim.budget.unwrap_or(u64::MAX),
                                "app {} holds {share} over its budget {:?}",
                                claim.id,
                                claim.budget
                            );
                        }
                    }
                    Effect::Resize { evict, .. } => {
                        for u in evict {
                            let (busy, pinned, _) = before[&u.model];
                            prop_assert!(
                                !busy && !pinned,
                                "evicted {} busy {busy} pinned {pinned}",
                                u.model
                            );
                            self.stopping.push((u.model.clone(), u.instance));
                        }
                        if !evict.is_empty() {
                            let held: u64 = c.governor().models().map(|(_, m)| m.held()).sum();
                            prop_assert!(held <= c.governor().effective_budget);
                        }
                        // A growth keeps every app that declares the model
                        // within its budget.
                        if let Some(model) = &grown {
                            for claim in [app(1), app(2)].into_iter().flatten() {
                                let declares = claim
                                    .uses
                                    .iter()
                                    .any(|(a, ms)| *a == claim.id && ms.contains(model));
                                let share = c.app_share(&claim.id, &claim.uses);
                                prop_assert!(
                                    !declares
                                        || !self.seen_apps.contains(&claim.id)
                                        || share <= claim.budget.unwrap(),
                                    "growth of {model} took {} to {share} over {:?}",
                                    claim.id,
                                    claim.budget
                                );
                            }
                        }
                    }
                    Effect::Unloaded(u) => {
                        if let Some(&(busy, pinned, _)) = before.get(&u.model) {
                            match u.reason {
                                UnloadReason::Idle | UnloadReason::Evicted => {
                                    prop_assert!(
                                        !busy && !pinned,
                                        "{:?} unloaded {} busy {busy} pinned {pinned}",
                                        u.reason,
                                        u.model
                                    )
                                }
                                UnloadReason::PressureWarn => prop_assert!(!busy && !pinned),
                                UnloadReason::PressureCritical => prop_assert!(!busy),
                                _ => {}
                            }
                        }
                        self.loading.retain(|(_, i)| *i != u.instance);
                        self.stopping.push((u.model.clone(), u.instance));
                    }
                    Effect::StopWorker { model, instance } => {
                        self.stopping.push((model.clone(), *instance));
                    }
                    // A new episode is a new cause for every order.
                    Effect::Record(Record::LevelInForce {
                        to: PressureLevel::Normal,
                        ..
                    }) => {
                        self.ordered.clear();
                    }
                    Effect::Record(Record::Action { action, .. }) => match action {
                        Action::Unload { instance, .. } => {
                            prop_assert!(
                                self.ordered.insert(("unload", *instance)),
                                "unload repeated: {action}"
                            );
                        }
                        Action::Drain { instance, .. } => {
                            prop_assert!(
                                self.ordered.insert(("drain", *instance)),
                                "drain repeated: {action}"
                            );
                        }
                        Action::RefuseLoads { .. } => {
                            prop_assert!(!self.refusing, "refuse loads repeated");
                            self.refusing = true;
                        }
                        // The critical episode ended: the next one is a
                        // new cause to drain.
                        Action::AcceptLoads => {
                            self.refusing = false;
                            self.ordered.retain(|(kind, _)| *kind != "drain");
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            self.check_threads(c)
        }

        /// The CPU budget: every busy running worker has a share, idle
        /// ones none; the ones competing for the cores hold them and no
        /// more (one each past that); only background work waits, while
        /// interactive work runs.
        fn check_threads(&self, c: &Controller) -> Result<(), TestCaseError> {
            // The power policy may lower the cores and pause background
            // work on its own.
            let limits = c.power().limits;
            let cores = limits.cores.unwrap_or(4);
            // The caps are never looser than the power policy's.
            if let Some(t) = limits.max_tokens {
                prop_assert!(c.caps().queued_max_tokens.is_some_and(|q| q <= t));
            }
            let mut competing = Vec::new();
            let mut interactive_busy = false;
            let mut paused = false;
            for (name, m) in c.governor().models() {
                let share = c.threads(m.instance);
                let running_busy = m.phase == Phase::Loaded && m.active > 0;
                prop_assert_eq!(share.is_some(), running_busy, "{} {:?}", name, share);
                let Some(share) = share else { continue };
                match share.class {
                    _ if share.is_paused() => {
                        prop_assert_eq!(priority_of(name), Priority::Background);
                        paused = true;
                    }
                    class => {
                        interactive_busy |= class == ThreadClass::Interactive;
                        competing.push(share.threads);
                    }
                }
            }
            prop_assert!(!paused || interactive_busy || limits.pause_background);
            let n = competing.len() as u32;
            if n > 0 {
                prop_assert_eq!(
                    competing.iter().sum::<u32>(),
                    cores.max(n),
                    "{:?}",
                    competing
                );
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random days of a daemon: requests from apps with and without
        /// budgets, loads finishing or failing, workers exiting, pressure
        /// coming and going, time passing, pools growing.
        #[test]
        fn the_controller_keeps_its_promises(ops in proptest::collection::vec(op(), 1..80)) {
            let mut config = ControllerConfig::new(16 * GB);
            config.policy.keep_alive = KeepAlive::For(Duration::from_secs(300));
            config.cores = 4;
            let mut c = Controller::new(config).unwrap();
            let mut w = World::default();
            let mut now = Instant::now();
            for op in ops {
                let event = match op {
                    Op::Acquire { model, app: a, pin } => {
                        let (name, bytes) = MODELS[model];
                        let held = c.holds(name);
                        let mut wish = Wish::new(name, if held { Vec::new() } else { vec![(8192, bytes), (4096, bytes * 3 / 4)] });
                        wish.parallel = 2;
                        wish.priority = priority_of(name);
                        if pin {
                            wish.keep_alive = Some(KeepAlive::Forever);
                        }
                        let ticket = w.next_ticket;
                        w.next_ticket += 1;
                        w.apps.insert(ticket, app(a));
                        Event::Acquire(Request { ticket, wish, app: app(a) })
                    }
                    Op::Release(i) if !w.leases.is_empty() => {
                        let (model, instance) = w.leases.remove(i % w.leases.len());
                        let priority = priority_of(&model);
                        Event::Release {
                            model,
                            instance,
                            priority,
                        }
                    }
                    Op::FinishLoad { index, fail } if !w.loading.is_empty() => {
                        let (model, instance) = w.loading.remove(index % w.loading.len());
                        if fail {
                            Event::LoadFailed { model, instance, message: "no".into() }
                        } else {
                            Event::Loaded { model, instance, measured: None, pool: PoolSize::new(8192, 2) }
                        }
                    }
                    Op::Exit(i) if !w.stopping.is_empty() => {
                        let (model, instance) = w.stopping.remove(i % w.stopping.len());
                        w.leases.retain(|(_, l)| *l != instance);
                        Event::WorkerExited { model, instance, expected: true }
                    }
                    Op::Pressure(l) => Event::OsPressure(level(l)),
                    Op::Simulate(l) => Event::Simulate { level: level(l), duration: Some(Duration::from_secs(90)) },
                    Op::Power(m) => Event::SimulatePower { mode: PowerMode::ALL[usize::from(m)], duration: Some(Duration::from_secs(120)) },
                    Op::Advance(s) => {
                        now += Duration::from_secs(u64::from(s));
                        Event::Tick
                    }
                    Op::Measure { index, percent } => {
                        let (name, _) = MODELS[index];
                        let Some(m) = c.governor().model(name).filter(|m| m.phase == Phase::Loaded) else { continue };
                        let bytes = m.estimate / 100 * u64::from(percent);
                        Event::Measured(vec![(m.instance, Measured { footprint: bytes / 4, mapped_weights: bytes - bytes / 4 })])
                    }
                    Op::Grow { index } => {
                        let (name, _) = MODELS[index];
                        let Some(m) = c.governor().model(name).filter(|m| m.phase == Phase::Loaded) else { continue };
                        Event::PoolFull { model: name.into(), instance: m.instance, cells: 16384, estimate: Some(m.estimate + GB) }
                    }
                    Op::Unload(index) => Event::Unload { model: MODELS[index].0.into(), hold: false },
                    _ => continue,
                };
                w.step(&mut c, event, now)?;
            }
        }
    }
}
