//! The governor's policy: which models are loaded, within one budget of
//! bytes.
//!
//! [`Governor`] is plain state: the models loaded or loading, what each is
//! estimated and measured to hold, how many requests use it, when it was
//! last used and how long it may stay idle. Its methods take an event (a
//! request wants a model, a load finished, a request ended, time passed) and
//! the time as a value, and return what to do ([`Acquire`], [`Unload`]); the
//! daemon's governor task carries that out with real workers. Nothing here
//! waits, spawns or reads a clock, so every rule is tested with values.
//!
//! Admission follows docs/ARCHITECTURE.md: a model is loaded when its estimate fits in
//! the effective budget less what stays loaded; otherwise idle, unpinned
//! models are evicted in least-recently-used order until it fits; otherwise
//! a shorter context is tried (halving, floor [`DOWNSHIFT_FLOOR`]) when the
//! request allows it; otherwise the request is refused with the numbers.
//!
//! ```
//! use locara_core::governor::{Acquire, Governor, KeepAlive, Policy, Wish};
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let mut g = Governor::new(1000, Policy::default());
//! let wish = Wish::new("a", vec![(8192, 600)]);
//! let Acquire::Load(load) = g.acquire(&wish, t0) else { panic!() };
//! g.loaded(load.instance, None, t0);
//! g.release("a", load.instance, t0);
//! // A second model that does not fit beside the first evicts it, idle.
//! let Acquire::Load(b) = g.acquire(&Wish::new("b", vec![(8192, 600)]), t0) else { panic!() };
//! assert_eq!(b.evict[0].model, "a");
//! // Idle models unload after keep_alive (3 minutes by default).
//! g.loaded(b.instance, None, t0);
//! g.release("b", b.instance, t0);
//! assert!(g.expire(t0 + Duration::from_secs(179)).is_empty());
//! assert_eq!(g.expire(t0 + Duration::from_secs(180))[0].model, "b");
//! ```

use crate::load::DOWNSHIFT_FLOOR;
use crate::manifest::Role;
use crate::text::shorten;
use crate::threads::Priority;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

/// How long a model stays loaded after its last request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepAlive {
    /// Until unloaded by hand or by pressure at critical: pinned.
    Forever,
    /// Unloaded as soon as no request uses it.
    UnloadWhenDone,
    /// Unloaded after this long idle.
    For(Duration),
}

/// The longest finite keep-alive: beyond this, pin the model instead.
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(30 * 24 * 3600);

/// docs/ARCHITECTURE.md's default: idle models unload after three minutes.
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(180));

/// A `keep_alive` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepAliveError {
    #[error(
        "{input:?} is not a duration: use seconds (300), a duration (\"90s\", \"5m\", \"1h30m\", \"2d\"), \
         0 to unload when done or -1 (or forever) to keep loaded"
    )]
    Malformed { input: String },
    #[error("{input} is out of range: at most 30 days (-1 keeps the model loaded)")]
    TooLong { input: String },
}

/// Longest `keep_alive` string read; anything longer is not a duration.
const MAX_KEEP_ALIVE_LEN: usize = 64;

impl KeepAlive {
    /// Reads a config, flag, environment or request string: whole or
    /// fractional seconds (`"300"`, `"0"`, `"-1"`, `"+90"`), number-unit
    /// pairs with units `ms`, `s`, `m`, `h`, `d` (`"90s"`, `"3m"`,
    /// `"1h30m"`, `"1.5h"`), or `forever`. Zero means
    /// [`KeepAlive::UnloadWhenDone`], a negative value
    /// [`KeepAlive::Forever`]; more than [`MAX_KEEP_ALIVE`] is an error.
    /// What [`KeepAlive`]'s `Display` prints reads back as the same value.
    pub fn parse(input: &str) -> Result<Self, KeepAliveError> {
        let malformed = || KeepAliveError::Malformed {
            input: shorten(input, MAX_KEEP_ALIVE_LEN),
        };
        let s = input.trim();
        if s.is_empty() || s.len() > MAX_KEEP_ALIVE_LEN {
            return Err(malformed());
        }
        if s.eq_ignore_ascii_case("forever") {
            return Ok(KeepAlive::Forever);
        }
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let seconds = if is_decimal(body) {
            body.parse::<f64>().map_err(|_| malformed())?
        } else {
            parse_unit_pairs(body).ok_or_else(malformed)?
        };
        if negative && seconds > 0.0 {
            return Ok(KeepAlive::Forever);
        }
        Self::from_seconds_checked(seconds, || s.to_owned())
    }

    /// From a number of seconds: negative is [`KeepAlive::Forever`], zero
    /// [`KeepAlive::UnloadWhenDone`], more than [`MAX_KEEP_ALIVE`] an error.
    pub fn from_seconds(seconds: f64) -> Result<Self, KeepAliveError> {
        if seconds.is_nan() {
            return Err(KeepAliveError::Malformed {
                input: seconds.to_string(),
            });
        }
        if seconds < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        Self::from_seconds_checked(seconds, || seconds.to_string())
    }

    fn from_seconds_checked(
        seconds: f64,
        input: impl FnOnce() -> String,
    ) -> Result<Self, KeepAliveError> {
        if seconds.is_nan() || seconds > MAX_KEEP_ALIVE.as_secs_f64() {
            return Err(KeepAliveError::TooLong { input: input() });
        }
        // In range 0..=30 days, so the cast cannot saturate.
        let millis = (seconds * 1000.0).round() as u64;
        Ok(if millis == 0 {
            KeepAlive::UnloadWhenDone
        } else {
            KeepAlive::For(Duration::from_millis(millis))
        })
    }

    /// How long the model stays loaded once idle; `None` = forever.
    pub fn idle_limit(self) -> Option<Duration> {
        match self {
            KeepAlive::Forever => None,
            KeepAlive::UnloadWhenDone => Some(Duration::ZERO),
            KeepAlive::For(d) => Some(d),
        }
    }
}

impl std::str::FromStr for KeepAlive {
    type Err = KeepAliveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for KeepAlive {
    /// A string [`KeepAlive::parse`] reads back: `-1`, `0`, `1h30m`, `90ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = match self {
            KeepAlive::Forever => return f.write_str("-1"),
            KeepAlive::UnloadWhenDone => return f.write_str("0"),
            KeepAlive::For(d) => *d,
        };
        let secs = d.as_secs();
        let parts = [
            (secs / 86_400, "d"),
            (secs / 3600 % 24, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (u64::from(d.subsec_millis()), "ms"),
        ];
        let mut wrote = false;
        for (n, unit) in parts {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            f.write_str("0")?;
        }
        Ok(())
    }
}

/// Digits with at most one `.`, and at least one digit.
fn is_decimal(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1
}

/// `1h30m`, `90s`, `1.5h` → seconds; `None` if it is not such a string.
fn parse_unit_pairs(s: &str) -> Option<f64> {
    let mut rest = s;
    let mut total = 0.0_f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, after) = rest.split_at(number_len);
        if !is_decimal(number) {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        total += value * scale;
        rest = after;
    }
    Some(total)
}

/// Settings of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long an idle model stays loaded unless a request says otherwise.
    pub keep_alive: KeepAlive,
    /// Requests that may wait for a sequence of a model beyond the ones
    /// that generate at once; more are refused (HTTP 429).
    pub queue_depth: u32,
    /// The shortest context a load is lowered to when memory is short.
    pub min_context: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_alive: DEFAULT_KEEP_ALIVE,
            queue_depth: 16,
            min_context: DOWNSHIFT_FLOOR,
        }
    }
}

/// Whether a model is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Loading,
    Loaded,
}

impl Phase {
    /// `loading` or `loaded`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Loaded => "loaded",
        }
    }
}

/// What the OS charges a loaded model's worker, as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measured {
    /// The worker's footprint, bytes.
    pub footprint: u64,
    /// Resident bytes of its mapping of the model file, bytes.
    pub mapped_weights: u64,
}

/// One model the governor holds (loading or loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelState {
    /// Identifies this load: a model unloaded and loaded again is a new
    /// instance, so late news of the old one is told apart.
    pub instance: u64,
    pub phase: Phase,
    /// Context per sequence, tokens.
    pub context: u32,
    /// Sequences that generate at once.
    pub parallel: u32,
    /// The estimate at this context, mapped weights included, bytes.
    pub estimate: u64,
    pub measured: Option<Measured>,
    /// Requests using the model: generating, or waiting for a sequence.
    pub active: u32,
    pub last_used: Instant,
    pub keep_alive: KeepAlive,
    /// What the model is for (the pressure ladder unloads secondary roles
    /// first); set by the request that loaded it.
    pub role: Role,
}

impl ModelState {
    /// The bytes admission counts for this model: its estimate, or what it
    /// was measured to hold when that is more.
    pub fn held(&self) -> u64 {
        let measured = self
            .measured
            .map_or(0, |m| m.footprint.saturating_add(m.mapped_weights));
        self.estimate.max(measured)
    }

    /// Pinned models are never evicted or unloaded for idleness.
    pub fn pinned(&self) -> bool {
        self.keep_alive == KeepAlive::Forever
    }

    /// Sequences generating now.
    pub fn busy(&self) -> u32 {
        self.active.min(self.parallel)
    }

    /// Requests waiting for a sequence.
    pub fn queued(&self) -> u32 {
        self.active.saturating_sub(self.parallel)
    }

    /// When this model unloads if nothing uses it before: `None` while it
    /// is busy, loading or pinned.
    pub fn unload_at(&self) -> Option<Instant> {
        if self.phase != Phase::Loaded || self.active > 0 {
            return None;
        }
        match self.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::UnloadWhenDone => Some(self.last_used),
            KeepAlive::For(d) => Some(self.last_used + d),
        }
    }
}

/// A request's wish for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wish {
    pub model: String,
    /// Contexts to try, in order, each with its estimate in bytes (mapped
    /// weights included): the context asked for first, then shorter ones
    /// when the request allows lowering it (see [`downshift_contexts`]).
    pub candidates: Vec<(u32, u64)>,
    /// Sequences that generate at once.
    pub parallel: u32,
    /// A keep-alive for the model from now on (the latest request's wins).
    pub keep_alive: Option<KeepAlive>,
    /// What the model is for, when this wish loads it.
    pub role: Role,
    /// How the request weighs for the CPU (its app's manifest says).
    pub priority: Priority,
}

impl Wish {
    /// A wish with one sequence at a time and the default keep-alive.
    pub fn new(model: &str, candidates: Vec<(u32, u64)>) -> Wish {
        Wish {
            model: model.to_string(),
            candidates,
            parallel: 1,
            keep_alive: None,
            role: Role::Chat,
            priority: Priority::Interactive,
        }
    }
}

/// The contexts admission tries for a request that allows lowering its
/// context: `context`, then halved while it stays at or above `floor`.
pub fn downshift_contexts(context: u32, floor: u32) -> Vec<u32> {
    let mut out = vec![context];
    let mut c = context / 2;
    while c >= floor && c > 0 {
        out.push(c);
        c /= 2;
    }
    out
}

/// Why a model stops being loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnloadReason {
    /// Idle past its keep-alive.
    Idle,
    /// Made room for another model.
    Evicted,
    /// Asked for (API or CLI).
    Requested,
    /// Its worker died.
    WorkerDied,
    /// The daemon is stopping.
    Shutdown,
    /// The pressure ladder at warn (idle past the grace).
    PressureWarn,
    /// The pressure ladder at critical.
    PressureCritical,
}

impl UnloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnloadReason::Idle => "idle",
            UnloadReason::Evicted => "evicted",
            UnloadReason::Requested => "requested",
            UnloadReason::WorkerDied => "worker_died",
            UnloadReason::Shutdown => "shutdown",
            UnloadReason::PressureWarn => "pressure_warn",
            UnloadReason::PressureCritical => "pressure_critical",
        }
    }
}

/// Stop a model's worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unload {
    pub model: String,
    pub instance: u64,
    pub reason: UnloadReason,
    /// What the model held, bytes (see [`ModelState::held`]).
    pub held: u64,
}

/// Start a worker for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub model: String,
    pub instance: u64,
    /// Context per sequence, tokens: the one asked for, or lower.
    pub context: u32,
    pub parallel: u32,
    /// The estimate at that context, bytes.
    pub estimate: u64,
    /// Models to unload first, least recently used first.
    pub evict: Vec<Unload>,
}

/// A model that holds memory a refused load would need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub model: String,
    /// Bytes it holds.
    pub held: u64,
    /// Why it could not be evicted: `pinned`, `busy` or `loading`.
    pub why: &'static str,
}

/// Why a request cannot have its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unloaded with `hold`: requests fail until it is loaded again.
    Held { model: String },
    /// Every sequence is busy and the queue is full.
    QueueFull {
        model: String,
        active: u32,
        capacity: u32,
    },
    /// Even with every idle, unpinned model evicted and the context as low
    /// as allowed, the estimate does not fit.
    InsufficientMemory(Shortfall),
}

/// The numbers of a load that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub model: String,
    /// The context asked for, tokens, and its estimate, bytes.
    pub context: u32,
    pub needed: u64,
    /// The shortest context tried, and its estimate.
    pub lowest_context: u32,
    pub lowest_needed: u64,
    /// Effective budget less what stays loaded (and what is still being
    /// given back), bytes, with every evictable model evicted.
    pub free: u64,
    pub effective_budget: u64,
    /// The models that hold the rest and could not be evicted.
    pub holders: Vec<Holder>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Held { model } => write!(
                f,
                "{model} is held unloaded; load it again (locara load {model}) to use it"
            ),
            Refusal::QueueFull {
                model,
                active,
                capacity,
            } => write!(
                f,
                "{model} is busy: {active} requests are generating or queued, the most it takes is {capacity}; retry shortly"
            ),
            Refusal::InsufficientMemory(s) => {
                write!(
                    f,
                    "{} needs {} at context {}",
                    s.model,
                    crate::Bytes(s.needed),
                    s.context
                )?;
                if s.lowest_context != s.context {
                    write!(
                        f,
                        " ({} at context {})",
                        crate::Bytes(s.lowest_needed),
                        s.lowest_context
                    )?;
                }
                write!(
                    f,
                    ", {} of a {} budget free",
                    crate::Bytes(s.free),
                    crate::Bytes(s.effective_budget)
                )?;
                if !s.holders.is_empty() {
                    let list: Vec<String> = s
                        .holders
                        .iter()
                        .map(|h| format!("{} ({}, {})", h.model, crate::Bytes(h.held), h.why))
                        .collect();
                    write!(f, "; held by {}", list.join(", "))?;
                    write!(f, "; unload one of them or ask for a shorter context")?;
                } else {
                    write!(f, "; ask for a shorter context or a smaller model")?;
                }
                Ok(())
            }
        }
    }
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The model is loaded; the request holds a place until [`Governor::release`].
    Ready,
    /// The model is loading; the request holds a place and waits for
    /// [`Governor::loaded`] or [`Governor::load_failed`].
    Wait,
    /// Load it (after the evictions); the request holds a place and waits.
    Load(Load),
    Refused(Refusal),
}

/// The governor's state.
#[derive(Debug, Clone)]
pub struct Governor {
    /// Bytes the runtime may hold.
    pub budget: u64,
    /// The budget as pressure leaves it; never above `budget`.
    pub effective_budget: u64,
    pub policy: Policy,
    models: BTreeMap<String, ModelState>,
    /// Bytes of unloaded workers that have not exited yet, by instance.
    releasing: BTreeMap<u64, u64>,
    held: BTreeSet<String>,
    next_instance: u64,
}

impl Governor {
    pub fn new(budget: u64, policy: Policy) -> Governor {
        Governor {
            budget,
            effective_budget: budget,
            policy,
            models: BTreeMap::new(),
            releasing: BTreeMap::new(),
            held: BTreeSet::new(),
            next_instance: 1,
        }
    }

    /// The models loaded or loading, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelState)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn model(&self, name: &str) -> Option<&ModelState> {
        self.models.get(name)
    }

    /// Models held unloaded.
    pub fn held_models(&self) -> impl Iterator<Item = &str> {
        self.held.iter().map(String::as_str)
    }

    /// Bytes held by loaded and loading models and by workers still exiting.
    pub fn held_bytes(&self) -> u64 {
        self.models
            .values()
            .map(ModelState::held)
            .chain(self.releasing.values().copied())
            .fold(0u64, u64::saturating_add)
    }

    /// A request wants `wish.model`.
    pub fn acquire(&mut self, wish: &Wish, now: Instant) -> Acquire {
        // A hold names a model and covers each of its loads.
        let model = crate::load::model_of(&wish.model);
        if self.held.contains(model) {
            return Acquire::Refused(Refusal::Held {
                model: model.to_string(),
            });
        }
        let queue_depth = self.policy.queue_depth;
        if let Some(m) = self.models.get_mut(&wish.model) {
            let capacity = m.parallel.saturating_add(queue_depth);
            if m.active >= capacity {
                return Acquire::Refused(Refusal::QueueFull {
                    model: wish.model.clone(),
                    active: m.active,
                    capacity,
                });
            }
            m.active += 1;
            m.last_used = now;
            if let Some(k) = wish.keep_alive {
                m.keep_alive = k;
            }
            return match m.phase {
                Phase::Loaded => Acquire::Ready,
                Phase::Loading => Acquire::Wait,
            };
        }
        match self.admit(wish) {
            Ok((context, estimate, evict)) => {
                let evict: Vec<Unload> = evict
                    .into_iter()
                    .filter_map(|name| self.remove(&name, UnloadReason::Evicted))
                    .collect();
                let instance = self.next_instance;
                self.next_instance += 1;
                self.models.insert(
                    wish.model.clone(),
                    ModelState {
                        instance,
                        phase: Phase::Loading,
                        context,
                        parallel: wish.parallel.max(1),
                        estimate,
                        measured: None,
                        active: 1,
                        last_used: now,
                        keep_alive: wish.keep_alive.unwrap_or(self.policy.keep_alive),
                        role: wish.role,
                    },
                );
                Acquire::Load(Load {
                    model: wish.model.clone(),
                    instance,
                    context,
                    parallel: wish.parallel.max(1),
                    estimate,
                    evict,
                })
            }
            Err(shortfall) => Acquire::Refused(Refusal::InsufficientMemory(shortfall)),
        }
    }

    /// Admission: the first candidate context that fits, evicting idle,
    /// unpinned models least recently used first as needed.
    fn admit(&self, wish: &Wish) -> Result<(u32, u64, Vec<String>), Shortfall> {
        let mut evictable: Vec<(&String, &ModelState)> = self
            .models
            .iter()
            .filter(|(_, m)| m.phase == Phase::Loaded && m.active == 0 && !m.pinned())
            .collect();
        evictable.sort_by_key(|(name, m)| (m.last_used, *name));
        // Signed: when pressure lowered the effective budget below what is
        // held, evicting frees bytes that only count once the total is
        // back under it.
        let free_now = i128::from(self.effective_budget) - i128::from(self.held_bytes());
        for &(context, needed) in &wish.candidates {
            let needed_i = i128::from(needed);
            let mut free = free_now;
            let mut evict = Vec::new();
            for (name, m) in &evictable {
                if free >= needed_i {
                    break;
                }
                free += i128::from(m.held());
                evict.push((*name).clone());
            }
            if free >= needed_i {
                return Ok((context, needed, evict));
            }
        }
        let (context, needed) = wish.candidates.first().copied().unwrap_or((0, 0));
        let (lowest_context, lowest_needed) = wish.candidates.last().copied().unwrap_or((0, 0));
        let free = evictable
            .iter()
            .fold(free_now, |f, (_, m)| f + i128::from(m.held()))
            .clamp(0, i128::from(u64::MAX)) as u64;
        let holders = self
            .models
            .iter()
            .filter(|(_, m)| !(m.phase == Phase::Loaded && m.active == 0 && !m.pinned()))
            .map(|(name, m)| Holder {
                model: name.clone(),
                held: m.held(),
                why: if m.phase == Phase::Loading {
                    "loading"
                } else if m.active > 0 {
                    "busy"
                } else {
                    "pinned"
                },
            })
            .collect();
        Err(Shortfall {
            model: wish.model.clone(),
            context,
            needed,
            lowest_context,
            lowest_needed,
            free,
            effective_budget: self.effective_budget,
            holders,
        })
    }

    /// A load finished: the model is ready for the requests waiting on it.
    /// Returns false when the instance is no longer wanted (it was unloaded
    /// while loading); the caller then stops the worker.
    pub fn loaded(&mut self, instance: u64, measured: Option<Measured>, now: Instant) -> bool {
        match self.models.values_mut().find(|m| m.instance == instance) {
            Some(m) => {
                m.phase = Phase::Loaded;
                m.measured = measured;
                m.last_used = now;
                true
            }
            None => false,
        }
    }

    /// A load failed: the model is forgotten; its waiting requests fail.
    pub fn load_failed(&mut self, instance: u64) {
        self.models.retain(|_, m| m.instance != instance);
    }

    /// A new measurement of a loaded model's worker.
    pub fn measured(&mut self, instance: u64, measured: Measured) {
        if let Some(m) = self.models.values_mut().find(|m| m.instance == instance) {
            m.measured = Some(measured);
        }
    }

    /// A request that held a place in `instance` of `model` ends (news of
    /// an instance since unloaded is ignored). With a keep-alive of 0 the
    /// model unloads as soon as the last one ends.
    pub fn release(&mut self, model: &str, instance: u64, now: Instant) -> Option<Unload> {
        let m = self
            .models
            .get_mut(model)
            .filter(|m| m.instance == instance)?;
        m.active = m.active.saturating_sub(1);
        m.last_used = now;
        if m.active == 0 && m.phase == Phase::Loaded && m.keep_alive == KeepAlive::UnloadWhenDone {
            return self.remove(model, UnloadReason::Idle);
        }
        None
    }

    /// Models idle past their keep-alive at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Unload> {
        let due: Vec<String> = self
            .models
            .iter()
            .filter(|(_, m)| m.unload_at().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        due.iter()
            .filter_map(|name| self.remove(name, UnloadReason::Idle))
            .collect()
    }

    /// The next time [`Governor::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.models.values().filter_map(ModelState::unload_at).min()
    }

    /// Unload by request. `hold` keeps it unloaded: requests for it are
    /// refused until [`Governor::unhold`]. Unloads even when busy: the
    /// caller ends its requests.
    pub fn unload(&mut self, model: &str, hold: bool) -> Option<Unload> {
        if hold {
            self.held.insert(crate::load::model_of(model).to_string());
        }
        self.remove(model, UnloadReason::Requested)
    }

    /// Unloads `instance` of `model` (news of an older instance is ignored)
    /// for `reason`, even when busy: the caller ends its requests.
    pub fn unload_instance(
        &mut self,
        model: &str,
        instance: u64,
        reason: UnloadReason,
    ) -> Option<Unload> {
        if self.models.get(model)?.instance != instance {
            return None;
        }
        self.remove(model, reason)
    }

    /// A loaded model's K/V pool asks to grow so that its estimate becomes
    /// `estimate` bytes (mapped weights included), like a load asks for
    /// its own: granted when it fits the effective budget with what else is
    /// held, evicting idle, unpinned models least recently used first if
    /// need be (the caller stops their workers); refused with the numbers
    /// otherwise, and then the pool stays as it is. `context` in the
    /// refusal is the model's context. News of an older instance is
    /// refused as if nothing were free.
    pub fn grow(
        &mut self,
        model: &str,
        instance: u64,
        estimate: u64,
    ) -> Result<Vec<Unload>, Shortfall> {
        let Some(m) = self
            .models
            .get(model)
            .filter(|m| m.instance == instance && m.phase == Phase::Loaded)
        else {
            return Err(Shortfall {
                model: model.to_string(),
                context: 0,
                needed: estimate,
                lowest_context: 0,
                lowest_needed: estimate,
                free: 0,
                effective_budget: self.effective_budget,
                holders: Vec::new(),
            });
        };
        let context = m.context;
        let measured = m
            .measured
            .map_or(0, |x| x.footprint.saturating_add(x.mapped_weights));
        let wanted = estimate.max(measured);
        let wish = Wish {
            model: model.to_string(),
            candidates: vec![(context, wanted)],
            parallel: m.parallel,
            keep_alive: None,
            role: m.role,
            priority: Priority::Interactive,
        };
        // Admission sees this model as not held: take it out for the check.
        let me = self.models.remove(model).expect("found above");
        let admitted = self.admit(&wish);
        self.models.insert(model.to_string(), me);
        match admitted {
            Ok((_, _, evict)) => {
                let evicted = evict
                    .into_iter()
                    .filter_map(|name| self.remove(&name, UnloadReason::Evicted))
                    .collect();
                if let Some(m) = self.models.get_mut(model) {
                    m.estimate = estimate;
                }
                Ok(evicted)
            }
            Err(shortfall) => Err(shortfall),
        }
    }

    /// A loaded model's K/V pool shrank (or its estimate was revised down):
    /// it now counts `estimate` bytes, or its measured footprint while that
    /// is more (the next measurement shows the pages given back).
    pub fn shrink(&mut self, model: &str, instance: u64, estimate: u64) {
        if let Some(m) = self
            .models
            .get_mut(model)
            .filter(|m| m.instance == instance)
        {
            m.estimate = m.estimate.min(estimate);
        }
    }

    /// Keeps `model` from loading until [`Governor::unhold`] (a hold
    /// remembered from before a restart).
    pub fn hold(&mut self, model: &str) {
        self.held.insert(crate::load::model_of(model).to_string());
    }

    /// Lets requests load a held model again.
    pub fn unhold(&mut self, model: &str) -> bool {
        self.held.remove(crate::load::model_of(model))
    }

    /// A worker died: its model is gone and so is its memory.
    pub fn worker_died(&mut self, instance: u64) -> Option<Unload> {
        let name = self
            .models
            .iter()
            .find(|(_, m)| m.instance == instance)
            .map(|(k, _)| k.clone())?;
        let m = self.models.remove(&name)?;
        Some(Unload {
            model: name,
            instance,
            reason: UnloadReason::WorkerDied,
            held: m.held(),
        })
    }

    /// An unloaded worker has exited: its memory is back.
    pub fn worker_exited(&mut self, instance: u64) {
        self.releasing.remove(&instance);
    }

    /// Every model, for shutdown.
    pub fn unload_all(&mut self, reason: UnloadReason) -> Vec<Unload> {
        let names: Vec<String> = self.models.keys().cloned().collect();
        names
            .iter()
            .filter_map(|n| self.remove(n, reason))
            .collect()
    }

    fn remove(&mut self, model: &str, reason: UnloadReason) -> Option<Unload> {
        let m = self.models.remove(model)?;
        let held = m.held();
        self.releasing.insert(m.instance, held);
        Some(Unload {
            model: model.to_string(),
            instance: m.instance,
            reason,
            held,
        })
    }
}

/// Each app's share of what is loaded, bytes: every loaded model's bytes
/// split evenly among the apps that declare it (a model no app declares
/// counts for none). `apps` is (app, the models it declares); `loaded` is
/// (model, bytes it holds, K/V cache included).
pub fn app_shares(apps: &[(String, Vec<String>)], loaded: &[(String, u64)]) -> Vec<(String, u64)> {
    apps.iter()
        .map(|(app, models)| {
            let share = loaded
                .iter()
                .filter(|(m, _)| models.contains(m))
                .map(|(m, bytes)| {
                    let users = apps.iter().filter(|(_, ms)| ms.contains(m)).count() as u64;
                    bytes / users.max(1)
                })
                .fold(0u64, u64::saturating_add);
            (app.clone(), share)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    impl Governor {
        /// `release` of whichever instance is loaded now.
        fn release_now(&mut self, model: &str, now: Instant) -> Option<Unload> {
            let i = self.model(model)?.instance;
            self.release(model, i, now)
        }
    }

    fn load(g: &mut Governor, name: &str, bytes: u64, now: Instant) -> u64 {
        match g.acquire(&Wish::new(name, vec![(8192, bytes)]), now) {
            Acquire::Load(l) => {
                assert!(g.loaded(l.instance, None, now));
                l.instance
            }
            other => panic!("expected a load, got {other:?}"),
        }
    }

    /// A pool's growth is admitted like a load: within the budget, idle
    /// models evicted first, refused with the numbers when busy and pinned
    /// ones fill it.
    #[test]
    fn a_pool_grows_within_the_budget_evicting_idle_models_and_never_past_it() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let chat = load(&mut g, "chat", 300, t); // busy: not released
        load(&mut g, "idle", 300, t);
        g.release_now("idle", t);
        // 400 free: growing to 600 (+300) fits without evicting.
        assert_eq!(g.grow("chat", chat, 600), Ok(vec![]));
        assert_eq!(g.held_bytes(), 900);
        // Growing to 900 needs the idle model's 300.
        let evicted = g.grow("chat", chat, 900).unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].model, "idle");
        assert_eq!(evicted[0].reason, UnloadReason::Evicted);
        g.worker_exited(evicted[0].instance);
        assert_eq!(g.held_bytes(), 900);
        // Past the budget: refused, and the model keeps what it had.
        let refused = g.grow("chat", chat, 1001).unwrap_err();
        assert_eq!((refused.needed, refused.free), (1001, 1000));
        assert_eq!(g.model("chat").unwrap().estimate, 900);
        // A shrink lowers what it counts; news of an old instance is ignored.
        g.shrink("chat", chat, 400);
        assert_eq!(g.held_bytes(), 400);
        g.shrink("chat", chat + 99, 100);
        assert!(g.grow("chat", chat + 99, 500).is_err());
        assert_eq!(g.held_bytes(), 400);
    }

    /// Growth counts what the worker was measured to hold when that is more
    /// than the new estimate.
    #[test]
    fn growth_counts_the_measured_footprint_when_it_is_more() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let i = load(&mut g, "m", 300, t);
        g.measured(
            i,
            Measured {
                footprint: 900,
                mapped_weights: 50,
            },
        );
        assert!(g.grow("m", i, 400).is_ok(), "950 fits 1000");
        assert!(g.grow("m", i, 400).is_ok());
        g.measured(
            i,
            Measured {
                footprint: 990,
                mapped_weights: 50,
            },
        );
        assert!(g.grow("m", i, 500).is_err(), "1040 does not");
    }

    #[test]
    fn a_model_that_fits_loads_without_evicting() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        load(&mut g, "a", 400, t);
        g.release_now("a", t);
        let Acquire::Load(l) = g.acquire(&Wish::new("b", vec![(8192, 600)]), t) else {
            panic!()
        };
        assert!(l.evict.is_empty());
        assert_eq!(g.held_bytes(), 1000);
    }

    #[test]
    fn eviction_takes_idle_models_least_recently_used_first_and_only_as_many_as_needed() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        load(&mut g, "old", 300, t);
        load(&mut g, "mid", 300, t + S);
        load(&mut g, "new", 300, t + 2 * S);
        for (n, at) in [("old", 1), ("mid", 5), ("new", 3)] {
            g.release_now(n, t + at * S);
        }
        // 100 free; needs 600: evict "old" (last used at 1 s) then "new" (3 s).
        let Acquire::Load(l) = g.acquire(&Wish::new("big", vec![(8192, 600)]), t + 9 * S) else {
            panic!()
        };
        let evicted: Vec<_> = l.evict.iter().map(|u| u.model.as_str()).collect();
        assert_eq!(evicted, ["old", "new"]);
        assert!(l.evict.iter().all(|u| u.reason == UnloadReason::Evicted));
        assert!(g.model("mid").is_some());
        // Evicted workers still count until they have exited.
        assert_eq!(g.held_bytes(), 300 + 600 + 600);
        for u in &l.evict {
            g.worker_exited(u.instance);
        }
        assert_eq!(g.held_bytes(), 900);
    }

    #[test]
    fn pinned_and_busy_models_are_never_evicted_and_the_refusal_names_the_numbers() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let mut pinned = Wish::new("pinned", vec![(8192, 500)]);
        pinned.keep_alive = Some(KeepAlive::Forever);
        let Acquire::Load(l) = g.acquire(&pinned, t) else {
            panic!()
        };
        g.loaded(l.instance, None, t);
        g.release_now("pinned", t);
        load(&mut g, "busy", 300, t); // not released: a request holds it
        let r = g.acquire(&Wish::new("c", vec![(8192, 400)]), t);
        let Acquire::Refused(Refusal::InsufficientMemory(s)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!((s.needed, s.free, s.effective_budget), (400, 200, 1000));
        let text = match &r {
            Acquire::Refused(refusal) => refusal.to_string(),
            _ => unreachable!(),
        };
        assert!(text.contains("pinned (500 B, pinned)"), "{text}");
        assert!(text.contains("busy (300 B, busy)"), "{text}");
        assert!(text.contains("200 B of a 1000 B budget free"), "{text}");
        assert!(g.model("c").is_none());
    }

    #[test]
    fn a_lower_context_is_tried_only_after_evicting_and_only_when_offered() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let mut p = Wish::new("pinned", vec![(8192, 500)]);
        p.keep_alive = Some(KeepAlive::Forever);
        let Acquire::Load(l) = g.acquire(&p, t) else {
            panic!()
        };
        g.loaded(l.instance, None, t);
        g.release_now("pinned", t);
        load(&mut g, "idle", 200, t);
        g.release_now("idle", t);
        // 8192 needs 500 (fits once "idle" goes); offered lower contexts are
        // not used while eviction makes the asked one fit.
        let w = Wish::new("x", vec![(8192, 500), (4096, 350), (2048, 250)]);
        let Acquire::Load(l) = g.acquire(&w, t) else {
            panic!()
        };
        assert_eq!((l.context, l.evict.len()), (8192, 1));
        g.worker_exited(l.evict[0].instance);
        g.loaded(l.instance, None, t);
        // Now 0 free beside the pinned model and x: a new model at 8192 does
        // not fit; with downshift it still does not; refused with both.
        g.release_now("x", t);
        let w = Wish::new("y", vec![(8192, 900), (4096, 700)]);
        let Acquire::Refused(Refusal::InsufficientMemory(s)) = g.acquire(&w, t) else {
            panic!()
        };
        assert_eq!((s.context, s.lowest_context, s.free), (8192, 4096, 500));
        // A model that fits only at a lower context gets it.
        let w = Wish::new("z", vec![(8192, 900), (4096, 450)]);
        let Acquire::Load(l) = g.acquire(&w, t) else {
            panic!()
        };
        assert_eq!((l.context, l.estimate), (4096, 450));
    }

    #[test]
    fn two_requests_for_an_unloaded_model_load_it_once() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let w = Wish::new("a", vec![(8192, 100)]);
        assert!(matches!(g.acquire(&w, t), Acquire::Load(_)));
        assert_eq!(g.acquire(&w, t), Acquire::Wait);
        assert_eq!(g.model("a").unwrap().active, 2);
        let i = g.model("a").unwrap().instance;
        assert!(g.loaded(i, None, t));
        assert_eq!(g.acquire(&w, t), Acquire::Ready);
    }

    #[test]
    fn a_full_queue_is_refused() {
        let t = Instant::now();
        let policy = Policy {
            queue_depth: 1,
            ..Policy::default()
        };
        let mut g = Governor::new(1000, policy);
        let mut w = Wish::new("a", vec![(8192, 100)]);
        w.parallel = 2;
        assert!(matches!(g.acquire(&w, t), Acquire::Load(_)));
        assert_eq!(g.acquire(&w, t), Acquire::Wait);
        assert_eq!(g.acquire(&w, t), Acquire::Wait);
        let r = g.acquire(&w, t);
        assert_eq!(
            r,
            Acquire::Refused(Refusal::QueueFull {
                model: "a".into(),
                active: 3,
                capacity: 3
            })
        );
        let m = g.model("a").unwrap();
        assert_eq!((m.busy(), m.queued()), (2, 1));
    }

    #[test]
    fn idle_expiry_follows_keep_alive_and_busy_models_never_expire() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        load(&mut g, "a", 100, t);
        assert_eq!(g.next_deadline(), None, "busy");
        g.release_now("a", t + S);
        assert_eq!(g.next_deadline(), Some(t + S + Duration::from_secs(180)));
        assert!(g.expire(t + Duration::from_secs(180)).is_empty());
        let u = g.expire(t + Duration::from_secs(181));
        assert_eq!(
            (u[0].model.as_str(), u[0].reason),
            ("a", UnloadReason::Idle)
        );
        assert!(g.model("a").is_none());
    }

    #[test]
    fn keep_alive_zero_unloads_when_the_last_request_ends() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let mut w = Wish::new("a", vec![(8192, 100)]);
        w.keep_alive = Some(KeepAlive::UnloadWhenDone);
        let Acquire::Load(l) = g.acquire(&w, t) else {
            panic!()
        };
        g.loaded(l.instance, None, t);
        assert_eq!(g.acquire(&w, t), Acquire::Ready);
        assert!(g.release_now("a", t).is_none(), "one request still runs");
        assert_eq!(g.release_now("a", t).unwrap().reason, UnloadReason::Idle);
    }

    #[test]
    fn a_held_model_is_refused_until_unheld() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        load(&mut g, "a", 100, t);
        let u = g.unload("a", true).unwrap();
        assert_eq!(u.reason, UnloadReason::Requested);
        let w = Wish::new("a", vec![(8192, 100)]);
        assert!(matches!(
            g.acquire(&w, t),
            Acquire::Refused(Refusal::Held { .. })
        ));
        assert!(g.unhold("a"));
        assert!(matches!(g.acquire(&w, t), Acquire::Load(_)));
    }

    #[test]
    fn a_hold_covers_every_load_of_the_model() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        load(&mut g, "a@f16", 100, t);
        assert!(g.unload("a@f16", true).is_some());
        for name in ["a", "a@f16"] {
            let w = Wish::new(name, vec![(8192, 100)]);
            assert!(
                matches!(g.acquire(&w, t), Acquire::Refused(Refusal::Held { ref model }) if model == "a"),
                "{name}"
            );
        }
        assert!(g.unhold("a"));
        assert!(matches!(
            g.acquire(&Wish::new("a@f16", vec![(8192, 100)]), t),
            Acquire::Load(_)
        ));
    }

    #[test]
    fn news_of_an_unloaded_instance_is_ignored() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let Acquire::Load(l) = g.acquire(&Wish::new("a", vec![(8192, 100)]), t) else {
            panic!()
        };
        g.unload("a", false);
        assert!(!g.loaded(l.instance, None, t), "unloaded while loading");
        assert!(g.worker_died(l.instance).is_none());
    }

    #[test]
    fn measured_footprint_above_the_estimate_counts() {
        let t = Instant::now();
        let mut g = Governor::new(1000, Policy::default());
        let i = load(&mut g, "a", 100, t);
        g.measured(
            i,
            Measured {
                footprint: 150,
                mapped_weights: 50,
            },
        );
        assert_eq!(g.held_bytes(), 200);
    }

    #[test]
    fn keep_alive_parses_numbers_and_durations() {
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("-5m").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("0").unwrap(), KeepAlive::UnloadWhenDone);
        assert_eq!(KeepAlive::parse("0s").unwrap(), KeepAlive::UnloadWhenDone);
        assert_eq!(KeepAlive::parse("90").unwrap(), KeepAlive::For(90 * S));
        assert_eq!(KeepAlive::parse("1h30m").unwrap(), KeepAlive::For(5400 * S));
        assert_eq!(
            KeepAlive::parse("500ms").unwrap(),
            KeepAlive::For(Duration::from_millis(500))
        );
        for bad in ["", "m", "5x", "five", "1.2.3s", "31d"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeepAlive::parse("5x")
            .unwrap_err()
            .to_string()
            .contains("\"5x\""));
        assert_eq!(KeepAlive::parse("forever").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse("+5m").unwrap(), KeepAlive::For(300 * S));
        assert_eq!(
            KeepAlive::parse("31d"),
            Err(KeepAliveError::TooLong {
                input: "31d".into()
            })
        );
    }

    /// Regression: the daemon's status printed `180s` and `forever`, and
    /// the request parser and the config parser disagreed on `+5m`, the
    /// 30-day cap and `forever`. One type, one parser, and what it prints
    /// reads back.
    #[test]
    fn keep_alive_prints_what_it_reads_back() {
        for k in [
            KeepAlive::Forever,
            KeepAlive::UnloadWhenDone,
            KeepAlive::For(Duration::from_millis(90)),
            KeepAlive::For(180 * S),
            KeepAlive::For(5400 * S),
            KeepAlive::For(MAX_KEEP_ALIVE),
        ] {
            assert_eq!(KeepAlive::parse(&k.to_string()), Ok(k), "{k}");
        }
        assert_eq!(DEFAULT_KEEP_ALIVE.to_string(), "3m");
        assert_eq!(KeepAlive::Forever.idle_limit(), None);
        assert_eq!(KeepAlive::from_seconds(-3.0), Ok(KeepAlive::Forever));
        assert_eq!(
            KeepAlive::from_seconds(1.5),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn shared_models_are_split_among_the_apps_that_declare_them() {
        let apps = vec![
            (
                "a".to_string(),
                vec!["chat".to_string(), "embed".to_string()],
            ),
            ("b".to_string(), vec!["chat".to_string()]),
            ("c".to_string(), vec!["other".to_string()]),
        ];
        let loaded = vec![("chat".to_string(), 1000), ("embed".to_string(), 300)];
        assert_eq!(
            app_shares(&apps, &loaded),
            [("a".into(), 800), ("b".into(), 500), ("c".into(), 0)]
        );
    }

    #[test]
    fn downshift_halves_to_the_floor() {
        assert_eq!(downshift_contexts(8192, 2048), [8192, 4096, 2048]);
        assert_eq!(downshift_contexts(3000, 2048), [3000]);
        assert_eq!(downshift_contexts(1024, 2048), [1024]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire { model: u8, bytes: u64, pin: bool },
        Loaded,
        Release { model: u8 },
        Tick { secs: u64 },
        Exit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..5, 1u64..600, any::<bool>()).prop_map(|(model, bytes, pin)| Op::Acquire {
                model,
                bytes,
                pin
            }),
            Just(Op::Loaded),
            (0u8..5).prop_map(|model| Op::Release { model }),
            (0u64..400).prop_map(|secs| Op::Tick { secs }),
            Just(Op::Exit),
        ]
    }

    proptest! {
        /// Whatever happens, what the governor admits stays within the
        /// budget, and it never evicts a busy or pinned model.
        #[test]
        fn admission_keeps_within_the_budget(ops in proptest::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut g = Governor::new(1000, Policy::default());
            let mut exiting = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire { model, bytes, pin } => {
                        let mut w = Wish::new(&format!("m{model}"), vec![(8192, bytes), (4096, bytes / 2)]);
                        if pin { w.keep_alive = Some(KeepAlive::Forever); }
                        let before = g.clone();
                        if let Acquire::Load(l) = g.acquire(&w, now) {
                            for u in &l.evict {
                                let m = before.model(&u.model).unwrap();
                                prop_assert_eq!(m.active, 0);
                                prop_assert!(!m.pinned());
                                exiting.push(u.instance);
                            }
                        }
                    }
                    Op::Loaded => {
                        let loading: Vec<u64> = g.models().filter(|(_, m)| m.phase == Phase::Loading).map(|(_, m)| m.instance).collect();
                        for i in loading { g.loaded(i, None, now); }
                    }
                    Op::Release { model } => {
                        let name = format!("m{model}");
                        if g.model(&name).is_some_and(|m| m.active > 0) {
                            if let Some(u) = g.release_now(&name, now) { exiting.push(u.instance); }
                        }
                    }
                    Op::Tick { secs } => {
                        now += Duration::from_secs(secs);
                        let before = g.clone();
                        for u in g.expire(now) {
                            let m = before.model(&u.model).unwrap();
                            prop_assert_eq!(m.active, 0);
                            prop_assert!(!m.pinned());
                            exiting.push(u.instance);
                        }
                    }
                    Op::Exit => {
                        for i in exiting.drain(..) { g.worker_exited(i); }
                    }
                }
                // Evicted workers still exiting may overlap a new load for a
                // moment (the daemon waits for them before it loads);
                // what is loaded never exceeds the budget.
                let loaded: u64 = g.models().map(|(_, m)| m.held()).sum();
                prop_assert!(loaded <= g.budget, "held {} > budget {}", loaded, g.budget);
                for (_, m) in g.models() {
                    if m.active > 0 || m.pinned() {
                        prop_assert!(m.unload_at().is_none());
                    }
                }
            }
        }
    }
}
