//! The pressure ladder: what the runtime does, step by step, as the OS
//! reports memory pressure (docs/ARCHITECTURE.md, "The ladder").
//!
//! [`Ladder`] is plain state. [`Ladder::on_event`] takes an [`Event`] (a
//! pressure report, time passing, a generation ending), a [`RuntimeView`] of
//! what is loaded now, and the time as a value, and returns the
//! [`Action`]s the governor carries out, in order. Nothing here reads a
//! clock, waits or touches a worker.
//!
//! | level in force | what the ladder orders |
//! |---|---|
//! | normal | nothing; restrictions are lifted once reports stayed below the level in force for [`LadderConfig::quiet_period`] |
//! | warn | stop preloading, freeze the effective budget at what stays loaded, cap `max_tokens` of queued requests, drop the K/V cells of idle sequences, unload unpinned models idle past [`LadderConfig::idle_grace`], tell apps |
//! | critical | also refuse loads (503 + Retry-After), cap the remaining tokens of in-flight responses, drain generating models and unload every other one (drafts and embedders first, pinned ones too), tell apps |
//!
//! **Time.** `now` is a [`std::time::Instant`] the governor reads from its
//! `Clock`, as [`crate::governor`] takes it. It must not go backwards; if it
//! does, elapsed times count as zero.
//!
//! **Hysteresis.** A level rises at once, on the first report that calls for
//! it. It drops only after every report for [`LadderConfig::quiet_period`]
//! was below it; until then the state is [`LadderState::Recovering`] and the
//! restrictions of the higher level stay in force. Critical steps down to
//! warn when warn reports came within the quiet period, straight to normal
//! otherwise.
//!
//! **No repeats.** Each action is ordered once per cause. Settings (loads,
//! preloading, effective budget, token caps, what apps were told) are
//! ordered only when they change. Per-model orders are remembered by the
//! model's load ([`ModelView::instance`]); what counts as a new cause:
//!
//! * [`Action::Unload`]: a new load of the model, or a new pressure episode
//!   (the ladder went back to normal in between);
//! * [`Action::Drain`]: a new load, or a new rise to critical;
//! * [`Action::DropIdleKv`]: a new load, a new episode, or a
//!   [`Event::GenerationFinished`] for the model (a sequence went idle).
//!
//! Repeated reports of the same level order nothing; an [`Event::Tick`]
//! orders what time made due (a model idle past the grace, the end of a
//! quiet period). [`Ladder::next_deadline`] says when the next one is due.
//!
//! **Order.** Within one step: settings first (loads, preloading, effective
//! budget, token caps), so nothing new starts while memory is freed; then
//! drains, K/V drops and unloads (secondary roles first, then larger models
//! first); the [`Action::Notify`] for apps last, with the figures after
//! the step.
//!
//! ```
//! use locara_core::ladder::{
//!     Action, Event, Ladder, LadderConfig, LadderState, ModelView, PressureLevel, Role,
//!     RuntimeView, TokenCaps,
//! };
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now(); // the governor's clock; the ladder never reads one
//! let at = |s| t0 + Duration::from_secs(s);
//! let mut ladder = Ladder::new(LadderConfig::default())?; // grace 30 s, quiet 30 s
//! let mut chat = ModelView::new("mistral:7b", 1, Role::Chat);
//! chat.mapped_weights = 4 << 30;
//! chat.idle_since = Some(t0);
//! let view = RuntimeView { models: vec![chat], held_bytes: 4 << 30, budget: 10 << 30 };
//!
//! // Warn a minute after the model went idle: past the grace, it goes.
//! let warn = Event::Level(PressureLevel::Warn);
//! let actions = ladder.on_event(&warn, &view, at(60));
//! let unload = Action::Unload { model: "mistral:7b".into(), instance: 1, level: PressureLevel::Warn };
//! assert!(actions.contains(&unload));
//! // The same report again is no new cause.
//! assert!(ladder.on_event(&warn, &view, at(61)).is_empty());
//!
//! // Normal again: restrictions are lifted after 30 quiet seconds.
//! let empty = RuntimeView { models: vec![], held_bytes: 0, budget: 10 << 30 };
//! ladder.on_event(&Event::Level(PressureLevel::Normal), &empty, at(70));
//! assert!(ladder.on_event(&Event::Tick, &empty, at(99)).is_empty());
//! assert_eq!(ladder.next_deadline(&empty), Some(at(100)));
//! let lifted = ladder.on_event(&Event::Tick, &empty, at(100));
//! assert!(lifted.contains(&Action::SetTokenCaps(TokenCaps::NONE)));
//! assert_eq!(ladder.state(), LadderState::Normal);
//! # Ok::<(), locara_core::ladder::LadderConfigError>(())
//! ```

use crate::Bytes;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How hard the OS is pressed for memory, in the three steps of the ladder.
/// Ordered: `Normal < Warn < Critical`.
///
/// Re-exported as `locara_platform::PressureLevel`, which the probes report.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PressureLevel {
    /// Memory to spare; earlier restrictions are lifted after a quiet period.
    #[default]
    Normal,
    /// The OS is reclaiming hard or is short: shed caches and idle models.
    Warn,
    /// The OS is about to kill processes or swap heavily: unload everything
    /// that is not generating.
    Critical,
}

impl PressureLevel {
    /// All levels, lowest first.
    pub const ALL: [PressureLevel; 3] = [
        PressureLevel::Normal,
        PressureLevel::Warn,
        PressureLevel::Critical,
    ];

    /// The stable machine name: `normal`, `warn` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            PressureLevel::Normal => "normal",
            PressureLevel::Warn => "warn",
            PressureLevel::Critical => "critical",
        }
    }

    /// The level below this one (`Normal` stays `Normal`).
    fn lower(self) -> PressureLevel {
        match self {
            PressureLevel::Critical => PressureLevel::Warn,
            _ => PressureLevel::Normal,
        }
    }
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A pressure level name that is not one of `normal`, `warn`, `critical`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pressure level `{0}` (expected normal, warn or critical)")]
pub struct ParsePressureLevelError(pub String);

impl FromStr for PressureLevel {
    type Err = ParsePressureLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(PressureLevel::Normal),
            "warn" | "warning" => Ok(PressureLevel::Warn),
            "critical" => Ok(PressureLevel::Critical),
            _ => Err(ParsePressureLevelError(s.to_string())),
        }
    }
}

/// Settings of the ladder. Build once, check with [`LadderConfig::validate`]
/// (or [`Ladder::new`], which does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderConfig {
    /// At warn, unpinned models idle at least this long are unloaded.
    /// Default 30 s (the issue that asked for the ladder): short beside the
    /// 3-minute idle unload of normal times, long enough that a model in a
    /// conversation survives the user reading its answer.
    pub idle_grace: Duration,
    /// Under pressure, queued requests generate at most this many tokens.
    /// Default 256 (our choice): a complete short answer, while bounding
    /// the K/V cells and the time each queued request adds.
    pub queued_max_tokens_cap: u32,
    /// At critical, in-flight responses generate at most this many more
    /// tokens, so their model can be unloaded soon; they end at a token
    /// boundary with `finish_reason: "length"`. Default 64 (our choice): a
    /// few seconds at the 20 to 50 tokens/s of the models this runtime
    /// serves on its target machines.
    pub critical_remaining_tokens_cap: u32,
    /// Reports must stay below the level in force this long before it drops
    /// and its restrictions are lifted. Default 30 s, the quiet period of
    /// `locara_platform::PressureConfig`, so a simulated source (which has
    /// no hysteresis of its own) behaves like the OS ones.
    pub quiet_period: Duration,
    /// The `Retry-After` of loads refused at critical, rounded up to whole
    /// seconds in the header. Default 30 s: no load is accepted sooner than
    /// one quiet period after the last critical report.
    pub retry_after: Duration,
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            idle_grace: Duration::from_secs(30),
            queued_max_tokens_cap: 256,
            critical_remaining_tokens_cap: 64,
            quiet_period: Duration::from_secs(30),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// The longest grace, quiet period or Retry-After the ladder takes: an hour.
/// Longer would keep restrictions in force long after any pressure ended.
pub const MAX_LADDER_DURATION: Duration = Duration::from_secs(3600);

/// A ladder setting out of range; names the field, the value and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pressure ladder setting {field} = {value} is out of range ({limit})")]
pub struct LadderConfigError {
    pub field: &'static str,
    pub value: String,
    pub limit: &'static str,
}

impl LadderConfigError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        "invalid_config"
    }
}

impl LadderConfig {
    /// Checks every setting against its range.
    pub fn validate(&self) -> Result<(), LadderConfigError> {
        fn check(
            field: &'static str,
            ok: bool,
            value: String,
            limit: &'static str,
        ) -> Result<(), LadderConfigError> {
            if ok {
                Ok(())
            } else {
                Err(LadderConfigError {
                    field,
                    value,
                    limit,
                })
            }
        }
        let secs = |d: Duration| format!("{} s", d.as_secs_f64());
        check(
            "idle_grace",
            self.idle_grace <= MAX_LADDER_DURATION,
            secs(self.idle_grace),
            "0 to 3600 s",
        )?;
        check(
            "queued_max_tokens_cap",
            self.queued_max_tokens_cap >= 1,
            self.queued_max_tokens_cap.to_string(),
            "at least 1 token",
        )?;
        check(
            "critical_remaining_tokens_cap",
            self.critical_remaining_tokens_cap >= 1,
            self.critical_remaining_tokens_cap.to_string(),
            "at least 1 token, so in-flight responses end at a token boundary",
        )?;
        check(
            "quiet_period",
            self.quiet_period <= MAX_LADDER_DURATION,
            secs(self.quiet_period),
            "0 to 3600 s",
        )?;
        check(
            "retry_after",
            self.retry_after >= Duration::from_secs(1) && self.retry_after <= MAX_LADDER_DURATION,
            secs(self.retry_after),
            "1 to 3600 s",
        )
    }
}

/// What a model is for: one type for manifests and the ladder. Secondary
/// roles are unloaded first at critical.
pub use crate::manifest::Role;

/// One loaded (or loading) model, as the governor sees it when an event
/// arrives. Names are unique within a [`RuntimeView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelView {
    pub name: String,
    /// Tells one load of the model from the next (the governor's
    /// `ModelState::instance`, a counter never reused). A new value is a
    /// new cause for every per-model order.
    pub instance: u64,
    pub role: Role,
    /// An app asked to keep it loaded: it survives warn, not critical.
    pub pinned: bool,
    /// Sequences in flight now (processing a prompt or generating tokens).
    /// A draft that a generating target uses counts its sequences too.
    pub generating: u32,
    /// Idle sequences whose K/V cells are still kept (for prefix reuse).
    pub idle_sequences_with_cells: u32,
    /// When its last sequence ended (or its load finished); `None` while a
    /// sequence is in flight or the model is still loading.
    pub idle_since: Option<Instant>,
    /// The worker's footprint as last measured, bytes.
    pub footprint: u64,
    /// Resident mapped weights of the worker as last measured, bytes.
    pub mapped_weights: u64,
}

impl ModelView {
    /// A model with nothing in flight, no kept cells, not idle yet, not
    /// pinned, holding nothing; set the fields that matter.
    pub fn new(name: &str, instance: u64, role: Role) -> ModelView {
        ModelView {
            name: name.to_string(),
            instance,
            role,
            pinned: false,
            generating: 0,
            idle_sequences_with_cells: 0,
            idle_since: None,
            footprint: 0,
            mapped_weights: 0,
        }
    }

    /// Bytes it holds against the budget: footprint plus mapped weights.
    pub fn held(&self) -> u64 {
        self.footprint.saturating_add(self.mapped_weights)
    }
}

/// What the runtime holds when an event arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeView {
    pub models: Vec<ModelView>,
    /// Bytes held against the budget now: footprints plus mapped weights of
    /// every worker, those still exiting included.
    pub held_bytes: u64,
    /// The configured budget, bytes.
    pub budget: u64,
}

/// What the ladder reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pressure report from a source (the OS watch or the simulated one);
    /// the same level may be reported again.
    Level(PressureLevel),
    /// Time passed: grace periods and quiet periods may have run out. The
    /// governor sends one at [`Ladder::next_deadline`].
    Tick,
    /// A sequence of `model` stopped (finished, capped, cancelled or
    /// failed): at warn its cells are idle now; at critical the model may
    /// have nothing in flight any more.
    GenerationFinished { model: String },
}

/// Limits on tokens while pressure lasts. `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenCaps {
    /// The most tokens a queued (not yet started) request generates.
    pub queued_max_tokens: Option<u32>,
    /// The most further tokens an in-flight response generates.
    pub remaining_tokens: Option<u32>,
}

impl TokenCaps {
    /// No limits: the caps lifted.
    pub const NONE: TokenCaps = TokenCaps {
        queued_max_tokens: None,
        remaining_tokens: None,
    };
}

/// What the governor does. Each is logged with the level, the bytes it
/// freed (measured) and the time from the event to the memory being back,
/// and counted by [`Action::kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Refuse loads with 503 and this `Retry-After`; requests for a drained
    /// model are answered the same way.
    RefuseLoads { retry_after: Duration },
    /// Accept loads again (admission decides), and admit new sequences to
    /// models drained at critical.
    AcceptLoads,
    /// Cancel preloads in progress and start none.
    StopPreload,
    /// Preloading may start again.
    ResumePreload,
    /// Admission uses this effective budget, bytes (never above the
    /// budget), until [`Action::RestoreBudget`].
    SetEffectiveBudget { bytes: u64 },
    /// The effective budget is the budget again, and follows it.
    RestoreBudget,
    /// Cap tokens from now on; [`TokenCaps::NONE`] lifts the caps.
    SetTokenCaps(TokenCaps),
    /// Admit no new sequence to this load of the model; its in-flight
    /// responses run to their end (capped). The ladder orders its unload
    /// once nothing is in flight.
    Drain { model: String, instance: u64 },
    /// Free the K/V cells (and saved prefix states) of the model's idle
    /// sequences; sequences in flight are not touched.
    DropIdleKv { model: String, instance: u64 },
    /// End this load's worker now. Never ordered while the view shows a
    /// sequence in flight on it.
    Unload {
        model: String,
        instance: u64,
        /// The level in force that ordered it.
        level: PressureLevel,
    },
    /// Tell apps (a `level` event on `/locara/v1/events`) and the log the
    /// level in force and the effective budget, bytes.
    Notify {
        level: PressureLevel,
        effective_budget: u64,
    },
}

impl Action {
    /// Stable machine name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::RefuseLoads { .. } => "refuse_loads",
            Action::AcceptLoads => "accept_loads",
            Action::StopPreload => "stop_preload",
            Action::ResumePreload => "resume_preload",
            Action::SetEffectiveBudget { .. } => "set_effective_budget",
            Action::RestoreBudget => "restore_budget",
            Action::SetTokenCaps(_) => "set_token_caps",
            Action::Drain { .. } => "drain",
            Action::DropIdleKv { .. } => "drop_idle_kv",
            Action::Unload { .. } => "unload",
            Action::Notify { .. } => "notify",
        }
    }

    /// The model a per-model order is about; `None` for a setting.
    pub fn model(&self) -> Option<&str> {
        match self {
            Action::Drain { model, .. }
            | Action::DropIdleKv { model, .. }
            | Action::Unload { model, .. } => Some(model),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn cap(f: &mut fmt::Formatter<'_>, cap: Option<u32>) -> fmt::Result {
            match cap {
                Some(n) => write!(f, "{n}"),
                None => f.write_str("none"),
            }
        }
        match self {
            Action::RefuseLoads { retry_after } => write!(
                f,
                "refuse loads (503, Retry-After {} s)",
                retry_after.as_secs_f64().ceil()
            ),
            Action::AcceptLoads => f.write_str("accept loads"),
            Action::StopPreload => f.write_str("stop preloading"),
            Action::ResumePreload => f.write_str("resume preloading"),
            Action::SetEffectiveBudget { bytes } => {
                write!(f, "effective budget {}", Bytes(*bytes))
            }
            Action::RestoreBudget => f.write_str("effective budget back to the budget"),
            Action::SetTokenCaps(c) => {
                f.write_str("token caps: queued max_tokens ")?;
                cap(f, c.queued_max_tokens)?;
                f.write_str(", in-flight remaining tokens ")?;
                cap(f, c.remaining_tokens)
            }
            Action::Drain { model, instance } => write!(
                f,
                "drain {model} (instance {instance}): no new sequences, unload when its responses end"
            ),
            Action::DropIdleKv { model, instance } => write!(
                f,
                "drop the K/V cells of idle sequences of {model} (instance {instance})"
            ),
            Action::Unload {
                model,
                instance,
                level,
            } => write!(f, "unload {model} (instance {instance}) at {level}"),
            Action::Notify {
                level,
                effective_budget,
            } => write!(
                f,
                "tell apps: pressure {level}, effective budget {}",
                Bytes(*effective_budget)
            ),
        }
    }
}

/// Where the ladder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LadderState {
    /// No restrictions in force.
    Normal,
    /// Warn restrictions in force, and reports at warn or above.
    Warn {
        /// When warn came into force (by a rise, or a step down from
        /// critical).
        since: Instant,
    },
    /// Critical restrictions in force, and reports at critical.
    Critical { since: Instant },
    /// Reports are below the level in force; its restrictions stay until
    /// they have been for a quiet period.
    Recovering {
        /// The first report below `from` (after the last at or above it).
        since: Instant,
        /// The level whose restrictions are still in force.
        from: PressureLevel,
        /// The latest report.
        reported: PressureLevel,
    },
}

/// What the governor was last told to set, as the ladder ordered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    loads_refused: bool,
    preload_stopped: bool,
    /// `None`: the effective budget is the budget.
    effective: Option<u64>,
    caps: TokenCaps,
    /// The level and effective budget apps were last told.
    notified: (PressureLevel, Option<u64>),
}

impl Settings {
    /// The governor's state before any order: nothing restricted.
    const UNRESTRICTED: Settings = Settings {
        loads_refused: false,
        preload_stopped: false,
        effective: None,
        caps: TokenCaps::NONE,
        notified: (PressureLevel::Normal, None),
    };
}

/// Orders given for one load of a model in this pressure episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Orders {
    instance: u64,
    kv_dropped: bool,
    drained: bool,
    unloaded: bool,
}

impl Orders {
    fn new(instance: u64) -> Orders {
        Orders {
            instance,
            kv_dropped: false,
            drained: false,
            unloaded: false,
        }
    }
}

/// The per-model orders of one step, in the order they are given.
struct PerModel<'v> {
    drains: Vec<&'v ModelView>,
    drops: Vec<&'v ModelView>,
    unloads: Vec<&'v ModelView>,
}

/// The ladder's state: the level in force, the reports that hold it, and
/// the orders given in this episode. See the module docs.
#[derive(Debug, Clone)]
pub struct Ladder {
    config: LadderConfig,
    /// The level whose restrictions are in force.
    held: PressureLevel,
    /// When `held` came into force (meaningless at normal).
    held_since: Option<Instant>,
    /// The latest report.
    reported: PressureLevel,
    /// By level: since when every report has been below it (`None` while
    /// the latest report is at or above it). Index 0 (normal) is unused.
    below_since: [Option<Instant>; 3],
    /// The effective budget under pressure; `None` at normal.
    effective: Option<u64>,
    applied: Settings,
    /// By model name, for the current episode; cleared at normal.
    orders: BTreeMap<String, Orders>,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder::with_checked_config(LadderConfig::default())
    }
}

impl Ladder {
    /// A ladder at normal, with nothing ordered yet.
    pub fn new(config: LadderConfig) -> Result<Ladder, LadderConfigError> {
        config.validate()?;
        Ok(Ladder::with_checked_config(config))
    }

    fn with_checked_config(config: LadderConfig) -> Ladder {
        Ladder {
            config,
            held: PressureLevel::Normal,
            held_since: None,
            reported: PressureLevel::Normal,
            below_since: [None; 3],
            effective: None,
            applied: Settings::UNRESTRICTED,
            orders: BTreeMap::new(),
        }
    }

    /// The settings it was built with.
    pub fn config(&self) -> &LadderConfig {
        &self.config
    }

    /// The level whose restrictions are in force (what `/locara/v1/status`
    /// shows as the pressure level).
    pub fn level(&self) -> PressureLevel {
        self.held
    }

    /// The latest report.
    pub fn reported(&self) -> PressureLevel {
        self.reported
    }

    /// The effective budget in force, bytes, given the budget.
    pub fn effective_budget(&self, budget: u64) -> u64 {
        self.effective.map_or(budget, |e| e.min(budget))
    }

    /// Where the ladder stands (for `/locara/v1/status` and logs).
    pub fn state(&self) -> LadderState {
        // `held_since` is set on every change of the level in force, so it
        // is `None` only at normal.
        let (PressureLevel::Warn | PressureLevel::Critical, Some(since)) =
            (self.held, self.held_since)
        else {
            return LadderState::Normal;
        };
        match (self.held, self.below_since[self.held as usize]) {
            (from, Some(below)) => LadderState::Recovering {
                since: below,
                from,
                reported: self.reported,
            },
            (PressureLevel::Critical, None) => LadderState::Critical { since },
            (_, None) => LadderState::Warn { since },
        }
    }

    /// When a [`Event::Tick`] will next have something to do, given the
    /// view stays as it is: the end of a quiet period, or (at warn) a model
    /// reaching the idle grace. `None`: nothing is due without a new event.
    /// With a view that changed since the last event it may be in the past:
    /// then tick at once.
    pub fn next_deadline(&self, view: &RuntimeView) -> Option<Instant> {
        let quiet = self.below_since[self.held as usize]
            .filter(|_| self.held != PressureLevel::Normal)
            .and_then(|s| s.checked_add(self.config.quiet_period));
        let grace = if self.held == PressureLevel::Warn {
            view.models
                .iter()
                .filter(|m| !m.pinned && m.generating == 0)
                .filter(|m| {
                    !self
                        .orders
                        .get(&m.name)
                        .is_some_and(|o| o.instance == m.instance && o.unloaded)
                })
                .filter_map(|m| m.idle_since?.checked_add(self.config.idle_grace))
                .min()
        } else {
            None
        };
        match (quiet, grace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one event and returns what to do, in order (see the module
    /// docs for the order and for what counts as a new cause).
    pub fn on_event(&mut self, event: &Event, view: &RuntimeView, now: Instant) -> Vec<Action> {
        let before = self.held;
        if let Event::Level(reported) = event {
            self.observe(*reported, now);
        }
        self.descend(now);
        let held = self.held;
        if held == PressureLevel::Normal {
            self.orders.clear();
            self.effective = None;
        } else {
            if before == PressureLevel::Critical && held < PressureLevel::Critical {
                // Leaving critical ends the drains (AcceptLoads says so);
                // a later rise drains again.
                for o in self.orders.values_mut() {
                    o.drained = false;
                }
            }
            for m in &view.models {
                let o = self
                    .orders
                    .entry(m.name.clone())
                    .or_insert_with(|| Orders::new(m.instance));
                if o.instance != m.instance {
                    *o = Orders::new(m.instance);
                }
            }
            if let Event::GenerationFinished { model } = event {
                if let Some(o) = self.orders.get_mut(model) {
                    o.kv_dropped = false;
                }
            }
        }

        let PerModel {
            drains,
            drops,
            unloads,
        } = self.per_model_orders(view, now);

        if held != PressureLevel::Normal {
            let budget = self.effective.unwrap_or(view.budget).min(view.budget);
            self.effective = Some(
                if held > before || !drains.is_empty() || !unloads.is_empty() {
                    budget.min(self.bytes_that_stay(view))
                } else {
                    budget
                },
            );
        }

        let want = Settings {
            loads_refused: held == PressureLevel::Critical,
            preload_stopped: held != PressureLevel::Normal,
            effective: self.effective,
            caps: match held {
                PressureLevel::Normal => TokenCaps::NONE,
                PressureLevel::Warn => TokenCaps {
                    queued_max_tokens: Some(self.config.queued_max_tokens_cap),
                    remaining_tokens: None,
                },
                PressureLevel::Critical => TokenCaps {
                    queued_max_tokens: Some(self.config.queued_max_tokens_cap),
                    remaining_tokens: Some(self.config.critical_remaining_tokens_cap),
                },
            },
            notified: (held, self.effective),
        };
        let had = self.applied;
        self.applied = want;

        let mut actions = Vec::new();
        if want.loads_refused != had.loads_refused {
            actions.push(if want.loads_refused {
                Action::RefuseLoads {
                    retry_after: self.config.retry_after,
                }
            } else {
                Action::AcceptLoads
            });
        }
        if want.preload_stopped != had.preload_stopped {
            actions.push(if want.preload_stopped {
                Action::StopPreload
            } else {
                Action::ResumePreload
            });
        }
        if want.effective != had.effective {
            actions.push(match want.effective {
                Some(bytes) => Action::SetEffectiveBudget { bytes },
                None => Action::RestoreBudget,
            });
        }
        if want.caps != had.caps {
            actions.push(Action::SetTokenCaps(want.caps));
        }
        actions.extend(drains.into_iter().map(|m| Action::Drain {
            model: m.name.clone(),
            instance: m.instance,
        }));
        actions.extend(drops.into_iter().map(|m| Action::DropIdleKv {
            model: m.name.clone(),
            instance: m.instance,
        }));
        actions.extend(unloads.into_iter().map(|m| Action::Unload {
            model: m.name.clone(),
            instance: m.instance,
            level: held,
        }));
        if want.notified != had.notified {
            actions.push(Action::Notify {
                level: held,
                effective_budget: self.effective_budget(view.budget),
            });
        }
        actions
    }

    /// Records a report; the level in force rises at once.
    fn observe(&mut self, reported: PressureLevel, now: Instant) {
        self.reported = reported;
        for level in [PressureLevel::Warn, PressureLevel::Critical] {
            let below = &mut self.below_since[level as usize];
            if reported >= level {
                *below = None;
            } else if below.is_none() {
                *below = Some(now);
            }
        }
        if reported > self.held {
            self.held = reported;
            self.held_since = Some(now);
        }
    }

    /// Steps the level in force down while reports have stayed below it for
    /// a quiet period (critical may drop to normal in one go).
    fn descend(&mut self, now: Instant) {
        while self.held != PressureLevel::Normal {
            match self.below_since[self.held as usize] {
                Some(since) if now.saturating_duration_since(since) >= self.config.quiet_period => {
                    self.held = self.held.lower();
                    self.held_since = Some(now);
                }
                _ => break,
            }
        }
    }

    /// The drains, K/V drops and unloads the level in force calls for and
    /// that were not ordered yet for their cause; marks them ordered.
    fn per_model_orders<'v>(&mut self, view: &'v RuntimeView, now: Instant) -> PerModel<'v> {
        let (mut drains, mut drops, mut unloads) = (Vec::new(), Vec::new(), Vec::new());
        if self.held == PressureLevel::Normal {
            return PerModel {
                drains,
                drops,
                unloads,
            };
        }
        let critical = self.held == PressureLevel::Critical;
        for m in &view.models {
            let Some(o) = self.orders.get_mut(&m.name) else {
                continue;
            };
            if o.unloaded || o.instance != m.instance {
                continue;
            }
            let idle_past_grace = m
                .idle_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.idle_grace);
            let unload = m.generating == 0 && (critical || (!m.pinned && idle_past_grace));
            if unload {
                o.unloaded = true;
                unloads.push(m);
                continue;
            }
            if critical && !o.drained && m.generating > 0 {
                o.drained = true;
                drains.push(m);
            }
            if m.idle_sequences_with_cells > 0 && !o.kv_dropped {
                o.kv_dropped = true;
                drops.push(m);
            }
        }
        drains.sort_by(|a, b| a.name.cmp(&b.name));
        drops.sort_by(|a, b| a.name.cmp(&b.name));
        // Secondary roles first, then the largest first: the most memory
        // back soonest, and the chat models people wait on last.
        unloads.sort_by_key(|m| (!m.role.is_secondary(), Reverse(m.held()), m.name.clone()));
        PerModel {
            drains,
            drops,
            unloads,
        }
    }

    /// Bytes held less what is ordered unloaded or drained (and still shows
    /// in the view): what stays loaded once the orders are carried out.
    fn bytes_that_stay(&self, view: &RuntimeView) -> u64 {
        let leaving = view
            .models
            .iter()
            .filter(|m| {
                self.orders
                    .get(&m.name)
                    .is_some_and(|o| o.instance == m.instance && (o.unloaded || o.drained))
            })
            .map(ModelView::held)
            .fold(0u64, u64::saturating_add);
        view.held_bytes.saturating_sub(leaving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use PressureLevel::{Critical, Normal, Warn};

    const GB: u64 = 1_000_000_000;

    /// A fixed origin for scripted times (the only clock read, in tests).
    fn t0() -> Instant {
        Instant::now()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn level(l: PressureLevel) -> Event {
        Event::Level(l)
    }

    fn finished(model: &str) -> Event {
        Event::GenerationFinished {
            model: model.to_string(),
        }
    }

    fn model(name: &str, role: Role, bytes: u64, idle_since: Option<Instant>) -> ModelView {
        ModelView {
            mapped_weights: bytes,
            idle_since,
            ..ModelView::new(name, 1, role)
        }
    }

    fn view(models: Vec<ModelView>, budget: u64) -> RuntimeView {
        let held_bytes = models.iter().map(ModelView::held).sum();
        RuntimeView {
            models,
            held_bytes,
            budget,
        }
    }

    fn unload(name: &str, level: PressureLevel) -> Action {
        Action::Unload {
            model: name.into(),
            instance: 1,
            level,
        }
    }

    fn drop_kv(name: &str) -> Action {
        Action::DropIdleKv {
            model: name.into(),
            instance: 1,
        }
    }

    fn drain(name: &str) -> Action {
        Action::Drain {
            model: name.into(),
            instance: 1,
        }
    }

    fn warn_caps() -> Action {
        Action::SetTokenCaps(TokenCaps {
            queued_max_tokens: Some(256),
            remaining_tokens: None,
        })
    }

    fn critical_caps() -> Action {
        Action::SetTokenCaps(TokenCaps {
            queued_max_tokens: Some(256),
            remaining_tokens: Some(64),
        })
    }

    fn refuse() -> Action {
        Action::RefuseLoads {
            retry_after: secs(30),
        }
    }

    fn notify(level: PressureLevel, effective_budget: u64) -> Action {
        Action::Notify {
            level,
            effective_budget,
        }
    }

    fn budget(bytes: u64) -> Action {
        Action::SetEffectiveBudget { bytes }
    }

    #[test]
    fn warn_gates_growth_sheds_idle_models_and_keeps_busy_ones() {
        let t = t0();
        let mut busy = model("busy", Role::Chat, 4 * GB, None);
        busy.generating = 1;
        busy.idle_sequences_with_cells = 2;
        let mut pinned = model("pinned", Role::Chat, GB, Some(t));
        pinned.pinned = true;
        let v = view(
            vec![
                busy,
                pinned,
                model("old", Role::Chat, 2 * GB, Some(t)),
                model("fresh", Role::Embedding, GB, Some(t + secs(50))),
            ],
            20 * GB,
        );
        let mut ladder = Ladder::default();
        let actions = ladder.on_event(&level(Warn), &v, t + secs(60));
        assert_eq!(
            actions,
            [
                Action::StopPreload,
                // 8 GB held, less the 2 GB it unloads.
                budget(6 * GB),
                warn_caps(),
                drop_kv("busy"),
                unload("old", Warn),
                notify(Warn, 6 * GB),
            ]
        );
        assert_eq!(
            ladder.state(),
            LadderState::Warn {
                since: t + secs(60)
            }
        );
        assert_eq!(ladder.level(), Warn);
    }

    #[test]
    fn a_repeated_report_orders_nothing() {
        let t = t0();
        let v = view(vec![model("old", Role::Chat, GB, Some(t))], 10 * GB);
        let mut ladder = Ladder::default();
        assert!(!ladder.on_event(&level(Warn), &v, t + secs(60)).is_empty());
        // The governor has not carried out the unload yet: still no repeat.
        for s in 61..70 {
            assert!(ladder.on_event(&level(Warn), &v, t + secs(s)).is_empty());
            assert!(ladder.on_event(&Event::Tick, &v, t + secs(s)).is_empty());
        }
    }

    #[test]
    fn a_model_reaching_the_grace_at_warn_is_unloaded_on_the_next_tick() {
        let t = t0();
        let v = view(
            vec![model("m", Role::Draft, 3 * GB, Some(t + secs(50)))],
            10 * GB,
        );
        let mut ladder = Ladder::default();
        let first = ladder.on_event(&level(Warn), &v, t + secs(60));
        assert!(!first.iter().any(|a| a.kind() == "unload"), "{first:?}");
        assert_eq!(ladder.next_deadline(&v), Some(t + secs(80)));
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(79)).is_empty());
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(80)),
            [budget(0), unload("m", Warn), notify(Warn, 0)]
        );
        assert_eq!(ladder.next_deadline(&v), None);
    }

    #[test]
    fn a_new_load_at_warn_is_a_new_cause() {
        let t = t0();
        let mut ladder = Ladder::default();
        let v = view(vec![model("m", Role::Chat, GB, Some(t))], 10 * GB);
        assert!(ladder
            .on_event(&level(Warn), &v, t + secs(60))
            .contains(&unload("m", Warn)));
        // Unloaded, then loaded again for a request, then idle again.
        let mut again = model("m", Role::Chat, GB, Some(t + secs(100)));
        again.instance = 2;
        let v = view(vec![again], 10 * GB);
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(110)).is_empty());
        // (The effective budget is already down to nothing: no change.)
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(130)),
            [Action::Unload {
                model: "m".into(),
                instance: 2,
                level: Warn
            }]
        );
    }

    #[test]
    fn a_sequence_ending_at_warn_gets_its_cells_dropped() {
        let t = t0();
        let mut m = model("m", Role::Chat, GB, None);
        m.generating = 2;
        let mut ladder = Ladder::default();
        let v = view(vec![m.clone()], 10 * GB);
        let first = ladder.on_event(&level(Warn), &v, t);
        assert!(!first.iter().any(|a| a.kind() == "drop_idle_kv"));
        m.generating = 1;
        m.idle_sequences_with_cells = 1;
        let v = view(vec![m.clone()], 10 * GB);
        assert_eq!(
            ladder.on_event(&finished("m"), &v, t + secs(1)),
            [drop_kv("m")]
        );
        // Not applied yet: a tick is no new cause.
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(2)).is_empty());
        // The other sequence ends too: new cause, and the model stays (its
        // grace starts now).
        m.generating = 0;
        m.idle_sequences_with_cells = 1;
        m.idle_since = Some(t + secs(3));
        let v = view(vec![m], 10 * GB);
        assert_eq!(
            ladder.on_event(&finished("m"), &v, t + secs(3)),
            [drop_kv("m")]
        );
    }

    #[test]
    fn a_pinned_model_survives_warn_but_not_critical() {
        let t = t0();
        let mut p = model("p", Role::Chat, GB, Some(t));
        p.pinned = true;
        let v = view(vec![p], 10 * GB);
        let mut ladder = Ladder::default();
        let warn = ladder.on_event(&level(Warn), &v, t + secs(3600));
        assert!(!warn.iter().any(|a| a.kind() == "unload"), "{warn:?}");
        assert_eq!(ladder.next_deadline(&v), None);
        let critical = ladder.on_event(&level(Critical), &v, t + secs(3601));
        assert_eq!(
            critical,
            [
                refuse(),
                budget(0),
                critical_caps(),
                unload("p", Critical),
                notify(Critical, 0),
            ]
        );
    }

    #[test]
    fn at_critical_a_generating_model_is_drained_then_unloaded_when_done() {
        let t = t0();
        let mut g = model("g", Role::Chat, 5 * GB, None);
        g.generating = 1;
        g.idle_sequences_with_cells = 1;
        let mut ladder = Ladder::default();
        let v = view(vec![g.clone()], 10 * GB);
        assert_eq!(
            ladder.on_event(&level(Critical), &v, t),
            [
                refuse(),
                Action::StopPreload,
                budget(0),
                critical_caps(),
                drain("g"),
                drop_kv("g"),
                notify(Critical, 0),
            ]
        );
        assert!(ladder
            .on_event(&level(Critical), &v, t + secs(1))
            .is_empty());
        g.generating = 0;
        g.idle_since = Some(t + secs(2));
        let v = view(vec![g], 10 * GB);
        assert_eq!(
            ladder.on_event(&finished("g"), &v, t + secs(2)),
            [unload("g", Critical)]
        );
    }

    #[test]
    fn secondary_roles_unload_first_at_critical() {
        let t = t0();
        let v = view(
            vec![
                model("chat-big", Role::Chat, 9 * GB, Some(t)),
                model("chat-small", Role::Chat, GB, Some(t)),
                model("embed", Role::Embedding, GB / 2, Some(t)),
                model("draft", Role::Draft, GB, None), // still loading
            ],
            20 * GB,
        );
        let mut ladder = Ladder::default();
        let unloads: Vec<_> = ladder
            .on_event(&level(Critical), &v, t)
            .into_iter()
            .filter(|a| a.kind() == "unload")
            .collect();
        assert_eq!(
            unloads,
            [
                unload("draft", Critical),
                unload("embed", Critical),
                unload("chat-big", Critical),
                unload("chat-small", Critical),
            ]
        );
    }

    #[test]
    fn warn_to_normal_waits_for_a_quiet_period() {
        let t = t0();
        let v = view(vec![], 10 * GB);
        let mut ladder = Ladder::default();
        ladder.on_event(&level(Warn), &v, t);
        assert!(ladder.on_event(&level(Normal), &v, t + secs(5)).is_empty());
        assert_eq!(
            ladder.state(),
            LadderState::Recovering {
                since: t + secs(5),
                from: Warn,
                reported: Normal
            }
        );
        // A warn report inside the quiet period starts it over.
        assert!(ladder.on_event(&level(Warn), &v, t + secs(20)).is_empty());
        assert_eq!(ladder.state(), LadderState::Warn { since: t });
        assert!(ladder.on_event(&level(Normal), &v, t + secs(25)).is_empty());
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(54)).is_empty());
        assert_eq!(ladder.next_deadline(&v), Some(t + secs(55)));
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(55)),
            [
                Action::ResumePreload,
                Action::RestoreBudget,
                Action::SetTokenCaps(TokenCaps::NONE),
                notify(Normal, 10 * GB),
            ]
        );
        assert_eq!(ladder.state(), LadderState::Normal);
        assert_eq!(ladder.next_deadline(&v), None);
    }

    #[test]
    fn critical_steps_down_through_warn_while_warn_reports_last() {
        let t = t0();
        let v = view(vec![], 10 * GB);
        let mut ladder = Ladder::default();
        ladder.on_event(&level(Critical), &v, t);
        assert!(ladder.on_event(&level(Warn), &v, t + secs(10)).is_empty());
        assert!(ladder.on_event(&level(Normal), &v, t + secs(20)).is_empty());
        assert_eq!(
            ladder.state(),
            LadderState::Recovering {
                since: t + secs(10),
                from: Critical,
                reported: Normal
            }
        );
        // 30 s after the last critical report: warn's restrictions only.
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(40)),
            [Action::AcceptLoads, warn_caps(), notify(Warn, 0)]
        );
        assert_eq!(
            ladder.state(),
            LadderState::Recovering {
                since: t + secs(20),
                from: Warn,
                reported: Normal
            }
        );
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(49)).is_empty());
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(60)),
            [
                Action::ResumePreload,
                Action::RestoreBudget,
                Action::SetTokenCaps(TokenCaps::NONE),
                notify(Normal, 10 * GB),
            ]
        );
    }

    #[test]
    fn critical_drops_straight_to_normal_when_all_is_quiet() {
        let t = t0();
        let v = view(vec![], 10 * GB);
        let mut ladder = Ladder::default();
        ladder.on_event(&level(Critical), &v, t);
        ladder.on_event(&level(Normal), &v, t + secs(1));
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(31)),
            [
                Action::AcceptLoads,
                Action::ResumePreload,
                Action::RestoreBudget,
                Action::SetTokenCaps(TokenCaps::NONE),
                notify(Normal, 10 * GB),
            ]
        );
    }

    #[test]
    fn normal_to_critical_orders_warn_and_critical_restrictions_at_once() {
        let t = t0();
        let mut busy = model("busy", Role::Chat, 2 * GB, None);
        busy.generating = 1;
        let v = view(vec![busy, model("idle", Role::Chat, GB, Some(t))], 10 * GB);
        let mut ladder = Ladder::default();
        assert_eq!(
            ladder.on_event(&level(Critical), &v, t),
            [
                refuse(),
                Action::StopPreload,
                budget(0),
                critical_caps(),
                drain("busy"),
                unload("idle", Critical),
                notify(Critical, 0),
            ]
        );
    }

    #[test]
    fn the_effective_budget_only_shrinks_under_pressure() {
        let t = t0();
        let mut ladder = Ladder::default();
        let mut v = view(
            vec![
                model("a", Role::Chat, 2 * GB, Some(t + secs(100))),
                model("b", Role::Chat, 3 * GB, None),
            ],
            20 * GB,
        );
        v.models[1].generating = 1;
        let first = ladder.on_event(&level(Warn), &v, t + secs(100));
        assert!(first.contains(&budget(5 * GB)), "{first:?}");
        // Memory held rises (K/V filling): the budget does not follow.
        v.held_bytes = 7 * GB;
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(101)).is_empty());
        // The configured budget falls below it: it follows down.
        v.budget = 4 * GB;
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(102)),
            [budget(4 * GB), notify(Warn, 4 * GB)]
        );
        v.budget = 20 * GB;
        assert!(ladder.on_event(&Event::Tick, &v, t + secs(103)).is_empty());
        assert_eq!(ladder.effective_budget(v.budget), 4 * GB);
        // An unload shrinks it to what stays.
        v.held_bytes = 5 * GB;
        assert_eq!(
            ladder.on_event(&Event::Tick, &v, t + secs(130)),
            [budget(3 * GB), unload("a", Warn), notify(Warn, 3 * GB)]
        );
    }

    #[test]
    fn a_zero_quiet_period_follows_the_reports() {
        let config = LadderConfig {
            quiet_period: Duration::ZERO,
            ..LadderConfig::default()
        };
        let t = t0();
        let v = view(vec![], 10 * GB);
        let mut ladder = Ladder::new(config).unwrap();
        ladder.on_event(&level(Critical), &v, t);
        ladder.on_event(&level(Warn), &v, t);
        assert_eq!(ladder.level(), Warn);
        ladder.on_event(&level(Normal), &v, t);
        assert_eq!(ladder.state(), LadderState::Normal);
    }

    #[test]
    fn config_errors_name_the_field_and_the_limit() {
        assert!(LadderConfig::default().validate().is_ok());
        let bad = LadderConfig {
            critical_remaining_tokens_cap: 0,
            ..LadderConfig::default()
        };
        let err = Ladder::new(bad).unwrap_err();
        assert_eq!(err.kind(), "invalid_config");
        assert_eq!(err.field, "critical_remaining_tokens_cap");
        assert!(err.to_string().contains("= 0 is out of range"), "{err}");
        let bad = LadderConfig {
            retry_after: Duration::ZERO,
            ..LadderConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "retry_after");
        let bad = LadderConfig {
            quiet_period: secs(3601),
            ..LadderConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("quiet_period = 3601 s"));
    }

    #[test]
    fn levels_parse_and_print_as_the_platform_does() {
        for l in PressureLevel::ALL {
            assert_eq!(l.as_str().parse::<PressureLevel>(), Ok(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!(" Warning ".parse::<PressureLevel>(), Ok(Warn));
        assert!("high".parse::<PressureLevel>().is_err());
        assert!(Normal < Warn && Warn < Critical);
    }

    #[test]
    fn actions_read_well_in_logs() {
        assert_eq!(
            unload("m", Critical).to_string(),
            "unload m (instance 1) at critical"
        );
        assert_eq!(
            critical_caps().to_string(),
            "token caps: queued max_tokens 256, in-flight remaining tokens 64"
        );
        assert_eq!(
            notify(Warn, 3 << 30).to_string(),
            "tell apps: pressure warn, effective budget 3.0 GiB"
        );
        assert_eq!(refuse().to_string(), "refuse loads (503, Retry-After 30 s)");
    }

    // ------------------------------------------------------------ replay

    /// The governor's side, reduced to what the replay needs: it carries
    /// out unloads and K/V drops on the view, as a worker would.
    fn apply(v: &mut RuntimeView, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Unload { model, .. } => {
                    let i = v.models.iter().position(|m| &m.name == model).unwrap();
                    let m = v.models.remove(i);
                    v.held_bytes -= m.held();
                }
                Action::DropIdleKv { model, .. } => {
                    let m = v.models.iter_mut().find(|m| &m.name == model).unwrap();
                    m.idle_sequences_with_cells = 0;
                }
                _ => {}
            }
        }
    }

    /// One reading of the incident machine, in GB.
    struct Reading {
        at: u64,
        free: f64,
        compressed: f64,
        swap_used: f64,
        /// What the source reports for it: on macOS the kernel's own level
        /// (`kern.memorystatus_vm_pressure_level`); the classification of
        /// readings into levels is locara-platform's (`assess`), not this
        /// module's.
        level: PressureLevel,
    }

    /// Regression test of the documented incident: a 64 GB Mac with a 35 GB
    /// model loaded beside smaller ones; compressed memory rose from about
    /// 2 GB to 19.7 GB, free memory fell to 3 GB, swap rose. The ladder
    /// must reach warn, then critical, order the actions in the documented
    /// order, and come back to normal only after quiet periods.
    #[test]
    fn replay_of_the_64_gb_incident() {
        let t = t0();
        let at = |s: u64| t + secs(s);
        let readings = [
            (0, 14.0, 2.0, 0.0, Normal),
            (20, 10.5, 5.5, 0.0, Normal),
            (40, 7.0, 9.8, 0.5, Normal),
            (60, 5.5, 12.4, 1.5, Warn),
            (90, 4.1, 16.0, 3.2, Warn),
            (120, 3.0, 19.7, 5.8, Critical),
            (130, 9.6, 14.0, 5.8, Warn),
            (140, 30.0, 6.0, 5.8, Normal),
        ]
        .map(|(at, free, compressed, swap_used, level)| Reading {
            at,
            free,
            compressed,
            swap_used,
            level,
        });
        // The script is the incident: compressed 2 -> 19.7 GB, free down to
        // 3 GB, swap rising, until critical.
        let peak = readings.iter().position(|r| r.level == Critical).unwrap();
        assert_eq!(readings[0].compressed, 2.0);
        assert_eq!(
            (readings[peak].compressed, readings[peak].free),
            (19.7, 3.0)
        );
        assert!(readings[..=peak]
            .windows(2)
            .all(|w| w[1].swap_used >= w[0].swap_used && w[1].free < w[0].free));

        // 35 GB chat model: 4 GB footprint (K/V, compute) + 31 GB mapped
        // weights, generating one answer from t=5 s, one idle session kept.
        let mut big = model("llama3.3:70b", Role::Chat, 31 * GB, None);
        big.footprint = 4 * GB;
        big.generating = 1;
        big.idle_sequences_with_cells = 1;
        let mut embed = model("nomic-embed", Role::Embedding, GB / 2, Some(t));
        embed.pinned = true; // a notes app keeps it loaded
        let mut small = model("smollm2:135m", Role::Chat, GB / 5, Some(t));
        small.pinned = true;
        let draft = model("qwen2.5:0.5b", Role::Draft, GB, Some(at(40)));
        let stale = model("mistral:7b", Role::Chat, 5 * GB, Some(t - secs(600)));
        // 70 % of 64 GB, docs/ARCHITECTURE.md's default budget.
        let budget_bytes = 64 * GB * 7 / 10;
        let mut v = view(vec![big, embed, small, draft, stale], budget_bytes);
        assert!(v.held_bytes < budget_bytes);

        let mut ladder = Ladder::default();
        let mut state_at = Vec::new();
        let mut step = |ladder: &mut Ladder, event: Event, v: &mut RuntimeView, s: u64| {
            let actions = ladder.on_event(&event, v, at(s));
            apply(v, &actions);
            state_at.push((s, ladder.state()));
            actions
        };
        let report = |i: usize| level(readings[i].level);

        // Normal readings order nothing.
        for (i, r) in readings.iter().enumerate().take(3) {
            assert!(step(&mut ladder, report(i), &mut v, r.at).is_empty());
        }
        // Warn at 60 s: gates first, then the idle session's cells and the
        // model idle for 11 minutes; the pinned ones, the draft (idle 20 s)
        // and the generating model stay.
        let held_at_warn = (35 + 5) * GB + GB / 2 + GB / 5 + GB;
        let after_warn = held_at_warn - 5 * GB;
        assert_eq!(
            step(&mut ladder, report(3), &mut v, 60),
            [
                Action::StopPreload,
                budget(after_warn),
                warn_caps(),
                drop_kv("llama3.3:70b"),
                unload("mistral:7b", Warn),
                notify(Warn, after_warn),
            ]
        );
        assert_eq!(ladder.state(), LadderState::Warn { since: at(60) });
        // The draft reaches the 30 s grace at 70 s; the next tick unloads it.
        assert_eq!(ladder.next_deadline(&v), Some(at(70)));
        let after_draft = after_warn - GB;
        assert_eq!(
            step(&mut ladder, Event::Tick, &mut v, 75),
            [
                budget(after_draft),
                unload("qwen2.5:0.5b", Warn),
                notify(Warn, after_draft),
            ]
        );
        // The repeated warn at 90 s is no new cause.
        assert!(step(&mut ladder, report(4), &mut v, 90).is_empty());

        // Critical at 120 s: loads refused, responses capped, the
        // generating model drained, the pinned ones unloaded (embedder
        // first).
        assert_eq!(
            step(&mut ladder, report(peak), &mut v, 120),
            [
                refuse(),
                budget(0),
                critical_caps(),
                drain("llama3.3:70b"),
                unload("nomic-embed", Critical),
                unload("smollm2:135m", Critical),
                notify(Critical, 0),
            ]
        );
        assert_eq!(ladder.state(), LadderState::Critical { since: at(120) });
        // Its capped answer ends: nothing in flight, so it goes.
        assert_eq!(v.models.len(), 1);
        v.models[0].generating = 0;
        v.models[0].idle_sequences_with_cells = 1;
        v.models[0].idle_since = Some(at(124));
        assert_eq!(
            step(&mut ladder, finished("llama3.3:70b"), &mut v, 124),
            [unload("llama3.3:70b", Critical)]
        );
        assert!(v.models.is_empty());
        assert_eq!(v.held_bytes, 0);

        // Memory comes back; the restrictions lift after quiet periods.
        for (i, r) in readings.iter().enumerate().skip(peak + 1) {
            let actions = step(&mut ladder, report(i), &mut v, r.at);
            assert!(actions.is_empty(), "{}: {actions:?}", r.at);
        }
        assert!(matches!(
            ladder.state(),
            LadderState::Recovering { from: Critical, .. }
        ));
        assert_eq!(ladder.next_deadline(&v), Some(at(160)));
        assert_eq!(
            step(&mut ladder, Event::Tick, &mut v, 160),
            [Action::AcceptLoads, warn_caps(), notify(Warn, 0)]
        );
        assert!(matches!(
            ladder.state(),
            LadderState::Recovering { from: Warn, .. }
        ));
        assert_eq!(
            step(&mut ladder, Event::Tick, &mut v, 170),
            [
                Action::ResumePreload,
                Action::RestoreBudget,
                Action::SetTokenCaps(TokenCaps::NONE),
                notify(Normal, budget_bytes),
            ]
        );
        // The next request reloads the model lazily; the ladder has no say.
        let mut again = model("llama3.3:70b", Role::Chat, 35 * GB, None);
        again.instance = 2;
        again.generating = 1;
        let mut v = view(vec![again], budget_bytes);
        assert!(step(&mut ladder, Event::Tick, &mut v, 180).is_empty());

        // The level in force went normal, warn, critical, and back down.
        let kinds: Vec<_> = state_at
            .iter()
            .map(|(_, s)| match s {
                LadderState::Normal => "normal",
                LadderState::Warn { .. } => "warn",
                LadderState::Critical { .. } => "critical",
                LadderState::Recovering { .. } => "recovering",
            })
            .collect();
        let mut runs = kinds.clone();
        runs.dedup();
        assert_eq!(runs, ["normal", "warn", "critical", "recovering", "normal"]);
    }

    // ------------------------------------------------------------ properties

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    /// A model as generated: times are seconds before the step's `now`.
    #[derive(Debug, Clone)]
    struct GenModel {
        present: bool,
        /// Loaded again since the previous step: a new instance (the
        /// governor's counter never reuses one).
        reload: bool,
        role: Role,
        pinned: bool,
        generating: u32,
        cells: u32,
        idle_for: Option<u64>,
        footprint: u64,
        mapped_weights: u64,
    }

    #[derive(Debug, Clone)]
    struct GenStep {
        /// Seconds since the previous step.
        dt: u64,
        event: Event,
        models: Vec<GenModel>,
        extra_held: u64,
        budget: u64,
    }

    fn gen_model() -> impl Strategy<Value = GenModel> {
        (
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.15),
            prop_oneof![Just(Role::Chat), Just(Role::Draft), Just(Role::Embedding)],
            any::<bool>(),
            prop_oneof![3 => Just(0u32), 1 => 1u32..3],
            0u32..3,
            prop::option::weighted(0.8, 0u64..90),
            0u64..8 * GB,
            0u64..8 * GB,
        )
            .prop_map(
                |(present, reload, role, pinned, generating, cells, idle_for, fp, mw)| GenModel {
                    present,
                    reload,
                    role,
                    pinned,
                    generating,
                    cells,
                    idle_for,
                    footprint: fp,
                    mapped_weights: mw,
                },
            )
    }

    fn gen_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => prop_oneof![Just(Normal), Just(Warn), Just(Critical)].prop_map(Event::Level),
            2 => Just(Event::Tick),
            2 => (0usize..NAMES.len()).prop_map(|i| finished(NAMES[i])),
        ]
    }

    fn gen_step() -> impl Strategy<Value = GenStep> {
        (
            prop_oneof![0u64..3, 0u64..40],
            gen_event(),
            prop::collection::vec(gen_model(), NAMES.len()),
            0u64..GB,
            GB..64 * GB,
        )
            .prop_map(|(dt, event, models, extra_held, budget)| GenStep {
                dt,
                event,
                models,
                extra_held,
                budget,
            })
    }

    fn gen_config() -> impl Strategy<Value = LadderConfig> {
        (0u64..60, 1u32..512, 1u32..128, 0u64..60, 1u64..120).prop_map(
            |(grace, queued, remaining, quiet, retry)| LadderConfig {
                idle_grace: secs(grace),
                queued_max_tokens_cap: queued,
                critical_remaining_tokens_cap: remaining,
                quiet_period: secs(quiet),
                retry_after: secs(retry),
            },
        )
    }

    fn build_view(step: &GenStep, instances: &mut [u64], now: Instant) -> RuntimeView {
        for (g, i) in step.models.iter().zip(instances.iter_mut()) {
            *i += u64::from(g.reload);
        }
        let models: Vec<ModelView> = step
            .models
            .iter()
            .zip(NAMES)
            .zip(instances.iter())
            .filter(|((g, _), _)| g.present)
            .map(|((g, name), instance)| ModelView {
                name: name.to_string(),
                instance: *instance,
                role: g.role,
                pinned: g.pinned,
                generating: g.generating,
                idle_sequences_with_cells: g.cells,
                idle_since: g.idle_for.map(|s| now - secs(s)),
                footprint: g.footprint,
                mapped_weights: g.mapped_weights,
            })
            .collect();
        let held_bytes = models.iter().map(ModelView::held).sum::<u64>() + step.extra_held;
        RuntimeView {
            models,
            held_bytes,
            budget: step.budget,
        }
    }

    /// What the governor has been told, replayed from the actions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Told {
        loads_refused: bool,
        preload_stopped: bool,
        effective: Option<u64>,
        caps: TokenCaps,
        notified: Option<(PressureLevel, u64)>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random reports, ticks and generation ends over random views. The
        /// views need not follow the actions: the properties hold whatever
        /// the governor did.
        #[test]
        fn the_ladder_keeps_its_promises(
            config in gen_config(),
            steps in prop::collection::vec(gen_step(), 1..60),
        ) {
            // Times start 100 s after the origin, so `now - idle_for` exists.
            let origin = t0() + secs(100);
            let mut now = origin;
            let mut ladder = Ladder::new(config).unwrap();
            let mut told = Told {
                loads_refused: false,
                preload_stopped: false,
                effective: None,
                caps: TokenCaps::NONE,
                notified: None,
            };
            // Causes, for "no action repeats without a new cause".
            let mut episode = 0u32;
            let mut critical_rises = 0u32;
            let mut finishes: BTreeMap<String, u32> = BTreeMap::new();
            let mut unloaded: BTreeSet<(String, u64, u32)> = BTreeSet::new();
            let mut drained: BTreeSet<(String, u64, u32)> = BTreeSet::new();
            let mut dropped: BTreeSet<(String, u64, u32, u32)> = BTreeSet::new();
            let mut last_report = Normal;
            // By level: since when every report has been below it.
            let mut below_since: [Option<Instant>; 3] = [None; 3];
            let mut normal_since: Option<Instant> = None;
            let mut instances = [0u64; NAMES.len()];
            let mut last_view = build_view(&steps[0], &mut instances.clone(), now);

            for step in &steps {
                now += secs(step.dt);
                let v = build_view(step, &mut instances, now);
                let before = ladder.level();
                if let Event::GenerationFinished { model } = &step.event {
                    *finishes.entry(model.clone()).or_default() += 1;
                }
                if let Event::Level(r) = step.event {
                    if r == Normal && last_report != Normal {
                        normal_since = Some(now);
                    }
                    if r != Normal {
                        normal_since = None;
                    }
                    last_report = r;
                    for l in [Warn, Critical] {
                        if r >= l {
                            below_since[l as usize] = None;
                        } else if below_since[l as usize].is_none() {
                            below_since[l as usize] = Some(now);
                        }
                    }
                }
                let actions = ladder.on_event(&step.event, &v, now);
                let held = ladder.level();
                if before == Normal && held != Normal {
                    episode += 1;
                }
                if before != Critical && held == Critical {
                    critical_rises += 1;
                }
                let find = |name: &str| v.models.iter().find(|m| m.name == name);

                for a in &actions {
                    match a {
                        Action::RefuseLoads { retry_after } => {
                            prop_assert!(!told.loads_refused, "repeated {a:?}");
                            prop_assert_eq!(*retry_after, config.retry_after);
                            prop_assert_eq!(held, Critical);
                            told.loads_refused = true;
                        }
                        Action::AcceptLoads => {
                            prop_assert!(told.loads_refused, "repeated {a:?}");
                            told.loads_refused = false;
                        }
                        Action::StopPreload => {
                            prop_assert!(!told.preload_stopped, "repeated {a:?}");
                            told.preload_stopped = true;
                        }
                        Action::ResumePreload => {
                            prop_assert!(told.preload_stopped, "repeated {a:?}");
                            told.preload_stopped = false;
                        }
                        Action::SetEffectiveBudget { bytes } => {
                            prop_assert!(*bytes <= v.budget, "{bytes} over {}", v.budget);
                            if let Some(e) = told.effective {
                                // Under pressure it only goes down.
                                prop_assert!(*bytes < e, "{a:?} after {e}");
                            }
                            told.effective = Some(*bytes);
                        }
                        Action::RestoreBudget => {
                            prop_assert!(told.effective.is_some(), "repeated {a:?}");
                            prop_assert_eq!(held, Normal);
                            told.effective = None;
                        }
                        Action::SetTokenCaps(caps) => {
                            prop_assert_ne!(*caps, told.caps, "repeated {:?}", a);
                            // In-flight responses are only capped at critical.
                            prop_assert_eq!(caps.remaining_tokens.is_some(), held == Critical);
                            told.caps = *caps;
                        }
                        Action::Drain { model, instance } => {
                            prop_assert_eq!(held, Critical);
                            let m = find(model).unwrap();
                            prop_assert_eq!(m.instance, *instance);
                            prop_assert!(m.generating > 0);
                            prop_assert!(
                                drained.insert((model.clone(), *instance, critical_rises)),
                                "{:?} repeated without a new cause", a
                            );
                        }
                        Action::DropIdleKv { model, instance } => {
                            prop_assert!(held != Normal);
                            let m = find(model).unwrap();
                            prop_assert_eq!(m.instance, *instance);
                            prop_assert!(m.idle_sequences_with_cells > 0);
                            let n = finishes.get(model).copied().unwrap_or(0);
                            prop_assert!(
                                dropped.insert((model.clone(), *instance, episode, n)),
                                "{:?} repeated without a new cause", a
                            );
                        }
                        Action::Unload { model, instance, level } => {
                            prop_assert_eq!(*level, held);
                            let m = find(model).unwrap();
                            prop_assert_eq!(m.instance, *instance);
                            // Never cut a sequence in flight, at any level.
                            prop_assert_eq!(m.generating, 0);
                            if *level == Warn {
                                prop_assert!(!m.pinned, "pinned {model} unloaded at warn");
                                let idle = now - m.idle_since.unwrap();
                                prop_assert!(idle >= config.idle_grace);
                            }
                            prop_assert!(
                                unloaded.insert((model.clone(), *instance, episode)),
                                "{:?} repeated without a new cause", a
                            );
                        }
                        Action::Notify { level, effective_budget } => {
                            prop_assert_eq!(*level, held);
                            prop_assert!(*effective_budget <= v.budget);
                            let new = (*level, *effective_budget);
                            prop_assert_ne!(Some(new), told.notified, "repeated {:?}", a);
                            if told.notified.is_none() {
                                prop_assert!(*level != Normal);
                            }
                            told.notified = Some(new);
                        }
                    }
                }

                // The level in force is never below the report.
                if let Event::Level(r) = step.event {
                    prop_assert!(held >= r);
                }
                // Nothing in force between steps exceeds the budget.
                prop_assert!(ladder.effective_budget(v.budget) <= v.budget);
                prop_assert_eq!(told.effective, ladder.effective);
                if held == Critical {
                    // Critical spares nothing that is not generating, pinned
                    // or not, and drains what is.
                    for m in &v.models {
                        if m.generating == 0 {
                            prop_assert!(
                                unloaded.contains(&(m.name.clone(), m.instance, episode)),
                                "{} survived critical", m.name
                            );
                        } else {
                            prop_assert!(
                                unloaded.contains(&(m.name.clone(), m.instance, episode))
                                    || drained.contains(&(m.name.clone(), m.instance, critical_rises)),
                                "{} neither drained nor unloaded", m.name
                            );
                        }
                    }
                }
                // A level drops only after a quiet period below it.
                if held < before {
                    let since = below_since[before as usize].unwrap();
                    prop_assert!(now - since >= config.quiet_period, "dropped early");
                }
                let gone = |m: &ModelView| unloaded.contains(&(m.name.clone(), m.instance, episode));
                if held != Normal {
                    // Idle cells are dropped once per cause.
                    for m in v.models.iter().filter(|m| m.idle_sequences_with_cells > 0) {
                        let n = finishes.get(&m.name).copied().unwrap_or(0);
                        prop_assert!(
                            gone(m) || dropped.contains(&(m.name.clone(), m.instance, episode, n)),
                            "{} kept idle cells", m.name
                        );
                    }
                }
                if held == Warn {
                    // Unpinned models idle past the grace go.
                    for m in &v.models {
                        let due = !m.pinned
                            && m.generating == 0
                            && m.idle_since.is_some_and(|t| now - t >= config.idle_grace);
                        prop_assert!(!due || gone(m), "{} idle past the grace", m.name);
                    }
                    prop_assert!(!told.loads_refused);
                    prop_assert_eq!(told.caps.remaining_tokens, None);
                }
                // Normal reports for a quiet period: normal, all lifted.
                if let Some(s) = normal_since {
                    if now - s >= config.quiet_period {
                        prop_assert_eq!(ladder.state(), LadderState::Normal);
                        prop_assert!(!told.loads_refused && !told.preload_stopped);
                        prop_assert_eq!(told.caps, TokenCaps::NONE);
                        prop_assert_eq!(told.effective, None);
                    }
                }
                // Nothing is due before the deadline; something is at it.
                let mut probe = ladder.clone();
                let state = probe.state();
                match ladder.next_deadline(&v) {
                    Some(d) => {
                        prop_assert!(d > now, "deadline {:?} not after now", d - now);
                        let early = now + (d - now) / 2;
                        prop_assert!(probe.on_event(&Event::Tick, &v, early).is_empty());
                        prop_assert_eq!(probe.state(), state);
                        let due = probe.on_event(&Event::Tick, &v, d);
                        prop_assert!(!due.is_empty() || probe.state() != state);
                    }
                    None => {
                        let later = now + secs(3600);
                        prop_assert!(probe.on_event(&Event::Tick, &v, later).is_empty());
                    }
                }
                last_view = v;
            }

            // Then normal reports for a quiet period: everything lifted.
            ladder.on_event(&level(Normal), &last_view, now);
            let actions = ladder.on_event(&Event::Tick, &last_view, now + config.quiet_period);
            prop_assert_eq!(ladder.state(), LadderState::Normal);
            for a in &actions {
                prop_assert!(
                    matches!(
                        a,
                        Action::AcceptLoads
                            | Action::ResumePreload
                            | Action::RestoreBudget
                            | Action::SetTokenCaps(TokenCaps::NONE)
                            | Action::Notify { level: Normal, .. }
                    ),
                    "{:?} on the way to normal", a
                );
            }
        }
    }
}
