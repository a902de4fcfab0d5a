//! The task that owns the [`Controller`]: a loop that turns commands into
//! controller events and carries out the effects. Anything that may block
//! (reading and validating a model file, starting or stopping a worker,
//! reading a footprint) runs on a blocking thread and comes back as a
//! command.

use super::status::{self, Sources, Status};
use super::{Command, Lease, ModelWish, Reply, RuntimeError, Settings};
use crate::history::HistoryLog;
use crate::host::{PoolNews, WorkerHost};
use crate::metrics::Metrics;
use crate::store::{ModelName, StoreError};
use locara_core::controller::{
    AppEvent, Controller, ControllerConfig, Effect, Event, PoolFigures, Record, Request, Ticket,
};
use locara_core::estimate::{self, ENGINE_FULL_WINDOW_CACHE};
use locara_core::governor::{downshift_contexts, Load, Measured, Policy, Unload, Wish};
use locara_core::history::{EventKind, HistoryEvent};
use locara_core::ladder::{PressureLevel, TokenCaps};
use locara_core::{load, Bytes, EstimateOptions, KvType, ModelShape, PoolSize};
use locara_engine::protocol::LoadRequest;
use locara_platform::SystemSnapshot;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// How long a worker may take to exit when asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How often running workers' footprints (and the pools' figures) are
/// refreshed while any model is loaded: admission and the ladder weigh
/// these, and status shows them.
pub const MEASURE_EVERY: Duration = Duration::from_secs(2);

/// A stored model's file and estimate shape.
pub type Shape = (PathBuf, ModelShape);

/// What the task remembers of a load beyond the controller's state.
pub(super) struct LoadMeta {
    pub kv_type: KvType,
    pub estimated_footprint: u64,
}

pub(super) struct Task {
    controller: Controller,
    /// Loaded models' workers, by name, with their instance.
    hosts: HashMap<String, (u64, Arc<WorkerHost>)>,
    /// Requests the controller has not answered yet.
    tickets: HashMap<Ticket, Reply>,
    next_ticket: Ticket,
    loads: HashMap<u64, LoadMeta>,
    /// Validated model files, by name.
    shapes: HashMap<String, Shape>,
    /// Requests waiting for their model's file to be validated, by model.
    shaping: HashMap<String, Vec<(ModelWish, Reply)>>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Command>,
    /// Blocking stops in flight (joined at shutdown).
    stopping: Vec<tokio::task::JoinHandle<()>>,
    caps: watch::Sender<TokenCaps>,
    drafting: watch::Sender<bool>,
    events: broadcast::Sender<AppEvent>,
    /// The machine's memory at the last measure tick.
    system: Option<SystemSnapshot>,
    /// When the next measure tick is due; `None` while one runs.
    next_measure: Option<Instant>,
    /// A measurement is on a blocking thread now.
    measuring: bool,
    /// Measure again as soon as it is back (a worker finished dropping
    /// K/V while it ran).
    measure_again: bool,
    /// Held while a model loads or a request uses one: macOS does not
    /// idle-sleep mid-answer (a no-op elsewhere).
    activity: Option<locara_platform::ActivityGuard>,
    /// The last hour's events (`GET /locara/v1/history`).
    history: Arc<HistoryLog>,
}

impl Task {
    pub(super) fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        tx: mpsc::UnboundedSender<Command>,
        caps: watch::Sender<TokenCaps>,
        drafting: watch::Sender<bool>,
        events: broadcast::Sender<AppEvent>,
        history: Arc<HistoryLog>,
    ) -> Task {
        let config = ControllerConfig {
            budget: settings.budget,
            policy: Policy {
                keep_alive: settings.config.keep_alive,
                queue_depth: settings.config.queue,
                ..Policy::default()
            },
            ladder: settings.ladder,
            pool_idle_shrink: locara_core::controller::POOL_IDLE_SHRINK,
            held: settings
                .holds_file
                .as_deref()
                .map(read_holds)
                .unwrap_or_default(),
            cores: settings.threads,
            power: Default::default(),
        };
        // The ladder's settings were validated with the config; a bad set
        // falls back to the defaults rather than running without a ladder.
        let controller = Controller::new(config.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "invalid pressure settings; using the defaults");
            Controller::new(ControllerConfig {
                ladder: Default::default(),
                ..config
            })
            .expect("the default ladder settings are valid")
        });
        let system = settings.probe.snapshot().ok();
        Task {
            controller,
            hosts: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            loads: HashMap::new(),
            shapes: HashMap::new(),
            shaping: HashMap::new(),
            settings: Arc::new(settings),
            metrics,
            tx,
            stopping: Vec::new(),
            caps,
            drafting,
            events,
            system,
            next_measure: None,
            measuring: false,
            measure_again: false,
            activity: None,
            history,
        }
    }

    fn now(&self) -> Instant {
        self.settings.clock.now()
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = [self.controller.next_deadline(), self.next_measure]
                .into_iter()
                .flatten()
                .min();
            let command = match deadline {
                Some(at) => {
                    tokio::select! {
                        c = rx.recv() => c,
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                            self.tick();
                            self.keep_awake();
                            self.publish_held_mapped();
                            continue;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(command) = command else { return };
            self.command(command);
            self.keep_awake();
            self.publish_held_mapped();
        }
    }

    /// Tells the OS pressure watch how much of the page cache the loaded
    /// models' workers map: their mapped weights as last measured. A model
    /// the governor let go of counts no more, though its worker may take a
    /// moment to exit.
    fn publish_held_mapped(&self) {
        let held = self
            .controller
            .governor()
            .models()
            .filter_map(|(_, m)| m.measured)
            .map(|m| m.mapped_weights)
            .fold(0u64, u64::saturating_add);
        self.settings.held_mapped.set(held);
    }

    /// Takes the activity guard while any model loads or serves a request,
    /// and lets it go when all are idle.
    fn keep_awake(&mut self) {
        let busy = self
            .controller
            .governor()
            .models()
            .any(|(_, m)| m.phase == locara_core::governor::Phase::Loading || m.active > 0);
        if busy && self.activity.is_none() {
            self.activity = Some(locara_platform::ActivityGuard::begin(
                "Locara is loading a model or answering a request",
            ));
        } else if !busy {
            self.activity = None;
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Acquire { wish, reply } => self.acquire(wish, reply),
            Command::Shaped { model, result } => {
                let waiting = self.shaping.remove(&model).unwrap_or_default();
                match result {
                    Ok(shape) => {
                        self.shapes.insert(model, shape);
                        for (wish, reply) in waiting {
                            self.acquire(wish, reply);
                        }
                    }
                    Err(e) => {
                        for (_, reply) in waiting {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            Command::Measured { figures, system } => {
                self.measuring = false;
                self.system = system.or(self.system.take());
                self.handle(Event::Measured(figures));
                self.next_measure = (!self.hosts.is_empty()).then(|| self.now() + MEASURE_EVERY);
                if std::mem::take(&mut self.measure_again) {
                    self.measure();
                }
            }
            Command::Release {
                model,
                instance,
                priority,
            } => self.handle(Event::Release {
                model,
                instance,
                priority,
            }),
            Command::LoadDone {
                model,
                instance,
                result,
                seconds,
            } => self.load_done(model, instance, result, seconds),
            Command::WorkerExited {
                model,
                instance,
                exit,
            } => {
                if !exit.expected {
                    tracing::warn!(%model, status = %exit.status, "the worker died");
                }
                self.loads.remove(&instance);
                if self.hosts.get(&model).is_some_and(|(i, _)| *i == instance) {
                    self.hosts.remove(&model);
                }
                self.handle(Event::WorkerExited {
                    model,
                    instance,
                    expected: exit.expected,
                });
            }
            Command::Unload { model, hold, reply } => {
                // A model's name covers each of its loads (one per K/V
                // type); a load's own name only that load.
                let mut loads: Vec<String> = self
                    .controller
                    .governor()
                    .models()
                    .map(|(name, _)| name)
                    .filter(|name| *name == model || load::model_of(name) == model)
                    .map(str::to_string)
                    .collect();
                if loads.is_empty() {
                    // Nothing loaded: a hold is still recorded.
                    loads.push(model);
                }
                let mut was = false;
                for name in loads {
                    let effects = self.controller.handle(
                        Event::Unload {
                            model: name.clone(),
                            hold,
                        },
                        self.now(),
                    );
                    was |= effects
                        .iter()
                        .any(|e| matches!(e, Effect::Unloaded(u) if u.model == name));
                    self.carry_out(effects);
                }
                if hold {
                    self.save_holds();
                }
                let _ = reply.send(was);
            }
            Command::Unhold { model, reply } => {
                let was = self.controller.unhold(&model);
                if was {
                    self.save_holds();
                }
                let _ = reply.send(was);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { reply } => {
                self.handle(Event::Shutdown);
                for (_, waiting) in self.shaping.drain() {
                    for (_, r) in waiting {
                        let _ = r.send(Err(RuntimeError::ShuttingDown));
                    }
                }
                let stops = std::mem::take(&mut self.stopping);
                tokio::spawn(async move {
                    for s in stops {
                        let _ = s.await;
                    }
                    let _ = reply.send(());
                });
            }
            Command::Pool {
                model,
                instance,
                news,
            } => self.pool_news(model, instance, news),
            Command::OsPressure { level, reason } => {
                tracing::info!(%level, %reason, "the OS reports memory pressure");
                self.handle(Event::OsPressure(level));
            }
            Command::Simulate {
                level,
                duration,
                reply,
            } => {
                tracing::info!(
                    %level,
                    for_s = duration.map(|d| d.as_secs()),
                    "simulating memory pressure"
                );
                self.handle(Event::Simulate { level, duration });
                let _ = reply.send(());
            }
            Command::Power { state } => self.handle(Event::Power(state)),
            Command::SimulatePower {
                mode,
                duration,
                reply,
            } => {
                tracing::info!(
                    %mode,
                    for_s = duration.map(|d| d.as_secs()),
                    "simulating a power state"
                );
                self.handle(Event::SimulatePower { mode, duration });
                let _ = reply.send(());
            }
        }
    }

    /// Writes the held models to the holds file, off the task.
    fn save_holds(&self) {
        let Some(path) = self.settings.holds_file.clone() else {
            return;
        };
        let held: Vec<&str> = self.controller.governor().held_models().collect();
        let text = serde_json::to_string_pretty(&held).unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = locara_platform::fs::write_atomic(
                &path,
                text.as_bytes(),
                locara_platform::fs::Access::Default,
            ) {
                tracing::warn!(error = %e, "the held models could not be remembered");
            }
        });
    }

    /// Time passed: the controller's deadlines, and the measure tick.
    fn tick(&mut self) {
        let now = self.now();
        if self.next_measure.is_some_and(|at| at <= now) {
            self.measure();
        }
        if self.controller.next_deadline().is_some_and(|at| at <= now) {
            self.handle(Event::Tick);
        }
    }

    /// Reads every worker's footprint and the machine's memory on a
    /// blocking thread, and asks the workers for their pools' figures; the
    /// answers come back as commands.
    fn measure(&mut self) {
        if self.measuring {
            self.measure_again = true;
            return;
        }
        self.measuring = true;
        self.next_measure = None;
        let workers: Vec<(u64, u32)> = self
            .hosts
            .values()
            .map(|(instance, host)| (*instance, host.pid()))
            .collect();
        for (_, host) in self.hosts.values() {
            host.request_stats();
        }
        let probe = Arc::clone(&self.settings.probe);
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let figures = workers
                .into_iter()
                .filter_map(|(instance, pid)| {
                    let f = probe.process_footprint(pid).ok()?;
                    Some((
                        instance,
                        Measured {
                            footprint: f.footprint,
                            mapped_weights: f.mapped_weights,
                        },
                    ))
                })
                .collect();
            let system = probe.snapshot().ok();
            let _ = tx.send(Command::Measured { figures, system });
        });
    }

    fn handle(&mut self, event: Event) {
        let effects = self.controller.handle(event, self.now());
        self.carry_out(effects);
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Admit {
                    ticket,
                    model,
                    instance,
                } => {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        // A requester that went away drops its lease, which
                        // releases its place.
                        let _ = reply.send(self.lease(&model, instance));
                    }
                }
                Effect::Deny { ticket, denial, .. } => {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        let _ = reply.send(Err(denial.into()));
                    }
                }
                Effect::Load { load, pool } => self.start_load(load, pool),
                Effect::Unloaded(u) => {
                    self.metrics.unloaded(&u.model, u.reason.as_str());
                    self.history.event(|at| {
                        HistoryEvent::new(at, EventKind::Unloaded)
                            .model(u.model.clone())
                            .bytes(u.held)
                            .detail(u.reason.as_str())
                    });
                    tracing::info!(
                        model = %u.model,
                        reason = u.reason.as_str(),
                        held_bytes = u.held,
                        held = %Bytes(u.held),
                        "unloading"
                    );
                    // Still loading: the load's end stops it.
                    self.stop_worker(&u.model, u.instance);
                }
                Effect::StopWorker { model, instance } => self.stop_worker(&model, instance),
                Effect::DropFileCache { level, models } => self.drop_file_cache(level, models),
                Effect::Resize {
                    model,
                    instance,
                    cells,
                    evict,
                } => {
                    let Some(host) = self.host(&model, instance) else {
                        continue;
                    };
                    if evict.is_empty() {
                        tracing::info!(%model, cells, "resizing the K/V pool");
                        host.resize(cells);
                    } else {
                        tracing::info!(%model, cells, evicted = evict.len(), "growing the K/V pool");
                        // Evicted workers exit first, so their memory is
                        // back before the new pool is made.
                        let evicted = self.evicted_hosts(&evict, &model);
                        tokio::task::spawn_blocking(move || {
                            for h in evicted {
                                h.stop(STOP_GRACE);
                            }
                            host.resize(cells);
                        });
                    }
                }
                Effect::DropTier {
                    model,
                    instance,
                    spill,
                } => {
                    if let Some(host) = self.host(&model, instance) {
                        tracing::info!(%model, spill, "dropping the RAM tier's conversations");
                        host.drop_tier(spill);
                    }
                }
                Effect::DenyGrowth {
                    model,
                    instance,
                    why,
                } => {
                    tracing::info!(
                        %model,
                        "K/V pool growth refused: {why}; the waiting generations shift their context or end"
                    );
                    self.metrics.pool_growth_refused(&model);
                    if let Some(host) = self.host(&model, instance) {
                        host.deny_growth();
                    }
                }
                Effect::SetThreads {
                    model,
                    instance,
                    share,
                } => self.set_threads(&model, instance, share),
                Effect::SetCaps(caps) => {
                    self.caps.send_replace(caps);
                }
                Effect::SetDrafting { allowed } => {
                    self.drafting.send_replace(allowed);
                    // Generations that start from now on draft or not.
                    for (_, host) in self.hosts.values() {
                        host.set_speculative(allowed);
                    }
                }
                Effect::Publish(event) => {
                    self.history.app_event(&event);
                    let _ = self.events.send(event);
                }
                Effect::Record(record) => self.record(record),
            }
        }
    }

    /// Logs and counts what the controller decided.
    fn record(&self, record: Record) {
        match record {
            Record::Refused { model, kind } => {
                self.metrics.refused(&model, kind);
                self.history.event(|at| {
                    HistoryEvent::new(at, EventKind::Refused)
                        .model(model.clone())
                        .detail(kind)
                });
            }
            Record::LevelInForce { from, to } => {
                tracing::info!(%from, %to, "memory pressure level in force");
                self.metrics.pressure_level(match to {
                    PressureLevel::Normal => 0,
                    PressureLevel::Warn => 1,
                    PressureLevel::Critical => 2,
                });
            }
            Record::Action {
                level,
                action,
                bytes,
            } => {
                tracing::info!(
                    %level,
                    action = action.kind(),
                    bytes,
                    detail = %action,
                    "pressure action"
                );
                self.metrics.pressure_action(action.kind(), level.as_str());
            }
            Record::Freed {
                level,
                model,
                bytes,
                ms,
            } => {
                tracing::info!(
                    %level,
                    %model,
                    freed_bytes = bytes,
                    freed = %Bytes(bytes),
                    ms,
                    "pressure unload: memory back to the OS"
                );
                self.metrics.pressure_freed(level.as_str(), bytes);
            }
            Record::WorkerDied(u) => {
                self.metrics.unloaded(&u.model, u.reason.as_str());
                self.history.event(|at| {
                    HistoryEvent::new(at, EventKind::WorkerDied)
                        .model(u.model.clone())
                        .bytes(u.held)
                        .detail(u.reason.as_str())
                });
            }
            Record::AppOverBudget { app, share, budget } => tracing::warn!(
                %app,
                share_bytes = share,
                budget_bytes = budget,
                "app over its budget: holds {}, budget {}",
                Bytes(share),
                Bytes(budget)
            ),
            Record::SimulationEnded => tracing::info!("the simulated pressure has ended"),
            Record::Power {
                from,
                to,
                state,
                simulated,
                limits,
            } => {
                tracing::info!(
                    %from,
                    %to,
                    thermal = %state.thermal,
                    on_battery = ?state.on_battery,
                    low_power_mode = ?state.low_power_mode,
                    simulated,
                    "power state: {to}; changes: {}",
                    limits.describe()
                );
                self.metrics.power_changed(to);
            }
            Record::PowerSimulationEnded => {
                tracing::info!("the simulated power state has ended")
            }
        }
    }

    fn host(&self, model: &str, instance: u64) -> Option<Arc<WorkerHost>> {
        self.hosts
            .get(model)
            .filter(|(i, _)| *i == instance)
            .map(|(_, h)| Arc::clone(h))
    }

    /// A request: its model's file is validated first (once, off the task),
    /// then the controller weighs it.
    fn acquire(&mut self, wish: ModelWish, reply: Reply) {
        // The load that serves the wish: the model with the K/V type the
        // app asked for (one load per model and K/V type).
        let default_kv = self.settings.config.kv_type;
        let kv_type = wish.kv_type.unwrap_or(default_kv);
        let mut model = load::load_name(&wish.model, kv_type, default_kv);
        if let Some(draft) = &wish.draft {
            model = load::drafted(&model, draft);
            // Both files are validated before a drafted load is weighed.
            if !self.shapes.contains_key(draft) {
                let draft = draft.clone();
                self.validate(draft, wish, reply);
                return;
            }
        }
        // A model held, or one the controller turns away anyway, needs no
        // estimate.
        // Fewer sequences per new load on battery (the estimates follow).
        let parallel = self
            .controller
            .parallel_for_new_loads(self.settings.config.parallel);
        let candidates =
            if self.controller.holds(&model) || self.controller.closed_to(&model).is_some() {
                Vec::new()
            } else if let Some((_, shape)) = self.shapes.get(&wish.model) {
                match self.candidates(&wish, &model, kv_type, parallel, &shape.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            } else {
                let file = wish.model.clone();
                self.validate(file, wish, reply);
                return;
            };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, reply);
        let request = Request {
            ticket,
            wish: Wish {
                model,
                candidates,
                parallel,
                keep_alive: wish.keep_alive,
                role: wish.role,
                priority: wish.priority,
            },
            app: wish.app,
        };
        self.handle(Event::Acquire(request));
    }

    /// Finds and validates the file of `model` (the wish's model, or its
    /// draft) on a blocking thread; the request waits in `shaping` until
    /// the answer comes back, then is weighed again.
    fn validate(&mut self, model: String, wish: ModelWish, reply: Reply) {
        let waiting = self.shaping.entry(model.clone()).or_default();
        waiting.push((wish, reply));
        if waiting.len() > 1 {
            return;
        }
        let settings = Arc::clone(&self.settings);
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = shape(&settings, &model);
            let _ = tx.send(Command::Shaped { model, result });
        });
    }

    /// The contexts admission may try for `load` with `kv_type`, each with
    /// its estimate (mapped weights included), in bytes.
    fn candidates(
        &self,
        wish: &ModelWish,
        load: &str,
        kv_type: KvType,
        parallel: u32,
        shape: &ModelShape,
    ) -> Result<Vec<(u32, u64)>, RuntimeError> {
        let contexts = match wish.context {
            Some(c) => vec![c],
            None => downshift_contexts(
                self.settings
                    .config
                    .context
                    .min(shape.context_length.max(1)),
                self.controller.governor().policy.min_context,
            ),
        };
        let mut candidates: Vec<(u32, u64)> = Vec::new();
        for context in contexts {
            let e = self.estimate_at(load, shape, context, kv_type, parallel, None)?;
            if !candidates.iter().any(|&(c, _)| c == e.context) {
                candidates.push((e.context, e.total()));
            }
        }
        Ok(candidates)
    }

    /// The estimate of `load` (its model's `shape`) at `context` with
    /// `kv_type` and `parallel` sequences, sharing a pool of `pool` cells
    /// (`None`: the pool's starting size at that context); with its draft
    /// model's, when it has one (`Estimate::with_draft`).
    fn estimate_at(
        &self,
        load: &str,
        shape: &ModelShape,
        context: u32,
        kv_type: KvType,
        parallel: u32,
        pool: Option<u32>,
    ) -> Result<locara_core::Estimate, RuntimeError> {
        let pool = pool.unwrap_or_else(|| PoolSize::new(context, parallel).start);
        let options = EstimateOptions {
            context,
            kv_type,
            parallel,
            backend: self.settings.backend.clone(),
            full_window_cache: ENGINE_FULL_WINDOW_CACHE,
            pool: Some(pool),
        };
        let invalid = |model: &str, e: estimate::EstimateError| RuntimeError::InvalidModel {
            model: model.to_string(),
            message: e.to_string(),
        };
        let alone = estimate::estimate(shape, &options).map_err(|e| invalid(load, e))?;
        let Some(draft) = load::draft_of(load) else {
            return Ok(alone);
        };
        let (_, draft_shape) =
            self.shapes
                .get(draft)
                .ok_or_else(|| RuntimeError::InvalidModel {
                    model: draft.to_string(),
                    message: "the draft model's file was not validated".into(),
                })?;
        // The draft holds one sequence of the context the load ends up with.
        let options = EstimateOptions {
            context: alone.context,
            ..options
        };
        let drafted = estimate::estimate(draft_shape, &estimate::draft_options(&options))
            .map_err(|e| invalid(draft, e))?;
        Ok(alone.with_draft(&drafted))
    }

    /// The estimate of a loaded model with a pool of `cells` cells; none for
    /// a freed pool (0 cells), whose estimate stays counted until the
    /// next request makes it again.
    fn pool_estimate(&self, model: &str, cells: u32) -> Option<u64> {
        if cells == 0 {
            return None;
        }
        let m = self.controller.governor().model(model)?;
        let (context, parallel) = (m.context, m.parallel);
        let (_, shape) = self.shapes.get(load::model_of(model))?;
        let kv_type = load::kv_type_of(model, self.settings.config.kv_type);
        self.estimate_at(model, shape, context, kv_type, parallel, Some(cells))
            .ok()
            .map(|e| e.total())
    }

    fn lease(&self, model: &str, instance: u64) -> Result<Lease, RuntimeError> {
        match self.host(model, instance) {
            Some(host) => Ok(Lease {
                host,
                model: model.to_string(),
                instance,
                // The reply gives it the request's (`Reply::send`).
                priority: Default::default(),
                tx: self.tx.clone(),
            }),
            None => Err(RuntimeError::UnloadedWhileLoading {
                model: model.to_string(),
            }),
        }
    }

    /// Counts and logs the models the controller evicted to make room for
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
                held = %Bytes(u.held),
                for_model,
                "evicting to make room"
            );
            if let Some((_, host)) = self.hosts.remove(&u.model) {
                hosts.push(host);
            }
        }
        hosts
    }

    /// Stops the evicted workers (waiting for them, so their memory is back
    /// before the new one grows), then starts the new one, off the task.
    fn start_load(&mut self, load: Load, pool: PoolSize) {
        let settings = Arc::clone(&self.settings);
        let config = &settings.config;
        let Some((path, shape)) = self.shapes.get(load::model_of(&load.model)).cloned() else {
            // The controller loads only models whose file was validated.
            return;
        };
        let kv_type = load::kv_type_of(&load.model, config.kv_type);
        let estimated_footprint = self
            .estimate_at(
                &load.model,
                &shape,
                load.context,
                kv_type,
                load.parallel,
                None,
            )
            .map_or(0, |e| e.footprint());
        self.loads.insert(
            load.instance,
            LoadMeta {
                kv_type,
                estimated_footprint,
            },
        );
        let evicted = self.evicted_hosts(&load.evict, &load.model);
        let request = LoadRequest {
            path,
            context: Some(load.context),
            kv_type,
            parallel: load.parallel,
            threads: self.settings.threads,
            gpu_layers: None,
            // The pool starts small and grows when the controller grants
            // the bytes (PoolFull, answered in `pool_news`).
            pool: Some(pool.start),
            pool_max: Some(pool.max),
            ram_cache_bytes: config.kv_ram_cache_for(self.settings.budget),
            // The directory and the sha256 come from the store's entry, read
            // on the blocking thread below.
            disk_cache_dir: None,
            disk_cache_bytes: config.kv_disk_cache,
            model_sha256: None,
            draft: load::draft_of(&load.model)
                .and_then(|d| self.shapes.get(d))
                .map(|(path, _)| path.clone()),
        };
        let tx = self.tx.clone();
        let (model, instance) = (load.model, load.instance);
        tokio::task::spawn_blocking(move || {
            for host in evicted {
                host.stop(STOP_GRACE);
            }
            let mut request = request;
            // The disk tier belongs to the model file, by the sha256 the
            // store recorded when it was pulled or imported.
            let entry = load::model_of(&model)
                .parse()
                .ok()
                .and_then(|n| settings.store.get(&n).ok().flatten());
            if let Some(entry) = entry.filter(|_| request.disk_cache_bytes > 0) {
                request.disk_cache_dir =
                    Some(settings.store.kv_cache_dir(&entry.sha256, request.kv_type));
                request.model_sha256 = Some(entry.sha256);
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
        model: String,
        instance: u64,
        result: Result<(Arc<WorkerHost>, Option<Measured>), String>,
        seconds: f64,
    ) {
        match result {
            Ok((host, measured)) => {
                self.metrics.load_finished(&model, seconds, true);
                self.history.event(|at| {
                    let e = HistoryEvent::new(at, EventKind::Loaded)
                        .model(model.clone())
                        .detail(format!("loaded in {seconds:.1} s"));
                    match measured {
                        Some(m) => e.bytes(m.footprint),
                        None => e,
                    }
                });
                if let (Some(m), Some(meta)) = (measured, self.loads.get(&instance)) {
                    self.metrics
                        .estimate_checked(&model, meta.estimated_footprint, m.footprint);
                }
                let pool = PoolSize {
                    start: host.info.pool_cells,
                    max: host.info.pool_max_cells,
                };
                // In the loaded set first, so the controller's answer can
                // admit the waiting requests to it; a load no longer wanted
                // (unloaded while it loaded) stops.
                let wanted = self
                    .controller
                    .governor()
                    .model(&model)
                    .is_some_and(|m| m.instance == instance);
                if wanted {
                    host.set_speculative(self.controller.drafting_allowed());
                    self.hosts.insert(model.clone(), (instance, host));
                } else {
                    self.stopping
                        .push(tokio::task::spawn_blocking(move || host.stop(STOP_GRACE)));
                }
                if self.next_measure.is_none() {
                    self.next_measure = Some(self.now() + MEASURE_EVERY);
                }
                self.handle(Event::Loaded {
                    model,
                    instance,
                    measured,
                    pool,
                });
            }
            Err(message) => {
                self.metrics.load_finished(&model, seconds, false);
                self.history.event(|at| {
                    HistoryEvent::new(at, EventKind::LoadFailed)
                        .model(model.clone())
                        .detail(message.clone())
                });
                self.loads.remove(&instance);
                tracing::warn!(%model, %message, "loading failed");
                self.handle(Event::LoadFailed {
                    model,
                    instance,
                    message,
                });
            }
        }
    }

    /// A worker's news of its K/V pool, with the estimates the controller
    /// weighs it by.
    fn pool_news(&mut self, model: String, instance: u64, news: PoolNews) {
        if self.host(&model, instance).is_none() {
            return;
        }
        match news {
            PoolNews::PoolFull {
                needed_cells,
                pool_cells,
                used_cells,
                pool_max_cells,
                suggested_cells,
                ..
            } => {
                tracing::debug!(
                    %model,
                    needed_cells,
                    pool_cells,
                    used_cells,
                    pool_max_cells,
                    suggested_cells,
                    "the K/V pool is full"
                );
                let estimate = self.pool_estimate(&model, suggested_cells);
                self.handle(Event::PoolFull {
                    model,
                    instance,
                    cells: suggested_cells,
                    estimate,
                });
            }
            PoolNews::Resized {
                cells,
                previous_cells,
                moved_sequences,
                dropped_sequences,
                state_bytes,
                ms,
                ..
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
                self.metrics.pool_resized(&model, cells > previous_cells);
                let estimate = self.pool_estimate(&model, cells);
                self.handle(Event::PoolResized {
                    model,
                    instance,
                    cells,
                    previous_cells,
                    estimate,
                });
                // Pressure dropped its idle K/V: the bytes that came back.
                if self.controller.awaits_measure(instance) {
                    self.measure();
                }
            }
            PoolNews::Stats(stats) => {
                self.handle(Event::PoolStats {
                    instance,
                    figures: PoolFigures {
                        cells: stats.pool_cells,
                        used_cells: stats.pool_used_cells,
                        cached_sequences: stats.cached_sequences,
                        reused_tokens: stats.reused_tokens_total,
                        ram_cached_sequences: stats.ram_cached_sequences,
                        ram_cache_bytes: stats.ram_cache_bytes,
                        ram_restores: stats.ram_restores_total,
                        disk_cached_sequences: stats.disk_cached_sequences,
                        disk_cache_bytes: stats.disk_cache_bytes,
                        disk_restores: stats.disk_restores_total,
                    },
                });
                if self.controller.awaits_measure(instance) {
                    self.measure();
                }
            }
            PoolNews::Error { kind, message, .. } => {
                tracing::warn!(%model, kind = kind.as_str(), %message, "the worker reports a failure");
            }
            // The host passes pool news only.
            _ => {}
        }
    }

    /// Tells a worker its share of the cores (`locara_core::threads`).
    fn set_threads(&self, model: &str, instance: u64, share: locara_core::threads::Share) {
        if let Some(host) = self.host(model, instance) {
            tracing::debug!(%model, threads = share.threads, class = %share.class, "CPU share");
            host.set_threads(share);
        }
    }

    /// Gives the page cache of the files of models unloaded under pressure
    /// back to the OS, off the task, and logs the bytes that came back
    /// (nothing on macOS, whose file cache is the OS's to manage).
    fn drop_file_cache(&self, level: PressureLevel, models: Vec<String>) {
        let files: Vec<(String, PathBuf)> = models
            .into_iter()
            .filter_map(|m| {
                let path = self.shapes.get(&m)?.0.clone();
                Some((m, path))
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            for (model, path) in files {
                let started = Instant::now();
                match locara_platform::drop_file_cache(&path) {
                    Ok(bytes) => tracing::info!(
                        %level,
                        %model,
                        freed_bytes = bytes,
                        freed = %Bytes(bytes),
                        ms = started.elapsed().as_millis() as u64,
                        "pressure unload: the model file's page cache back to the OS"
                    ),
                    Err(locara_platform::PlatformError::Unsupported(_)) => {}
                    Err(e) => tracing::warn!(
                        %model,
                        error = %e,
                        "the model file's page cache could not be dropped"
                    ),
                }
            }
        });
    }

    /// Takes this load's worker out of the loaded set and stops it, off the
    /// task; nothing when it is not (yet) there.
    fn stop_worker(&mut self, model: &str, instance: u64) {
        if self.hosts.get(model).is_some_and(|(i, _)| *i == instance) {
            if let Some((_, host)) = self.hosts.remove(model) {
                self.stopping.retain(|h| !h.is_finished());
                self.stopping
                    .push(tokio::task::spawn_blocking(move || host.stop(STOP_GRACE)));
            }
        }
    }

    fn status(&self) -> Status {
        status::build(
            Sources {
                controller: &self.controller,
                hosts: &self.hosts,
                loads: &self.loads,
                kv_type: self.settings.config.kv_type,
                system: self.system.clone(),
                keeping_awake: self.activity.is_some(),
            },
            self.now(),
        )
    }
}

/// The path and estimate shape of a stored model: reads the store and the
/// model file (blocking).
fn shape(settings: &Settings, model: &str) -> Result<Shape, RuntimeError> {
    let name: ModelName = model
        .parse()
        .map_err(|e: StoreError| RuntimeError::NotFound {
            model: model.to_string(),
            reason: e.to_string(),
        })?;
    let entry = settings
        .store
        .get(&name)
        .map_err(|e| RuntimeError::InvalidModel {
            model: model.to_string(),
            message: e.to_string(),
        })?
        .ok_or_else(|| RuntimeError::NotFound {
            model: model.to_string(),
            reason: format!("it is not in the store; run `locara pull {model}` or `locara import`"),
        })?;
    // An adopted model's file is checked to be the one hashed; a split
    // model is validated over all its parts.
    let file = settings
        .store
        .check_for_load(&entry)
        .map_err(|e| RuntimeError::InvalidModel {
            model: model.to_string(),
            message: e.to_string(),
        })?;
    Ok((entry.path, file.shape()))
}

/// The models held unloaded before a restart, from `path` (a JSON list of
/// names); none when it is missing or unreadable (said in the log).
fn read_holds(path: &std::path::Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable holds file");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable holds file");
            Vec::new()
        }
    }
}
