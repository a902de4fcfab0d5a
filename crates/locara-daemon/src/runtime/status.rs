//! The runtime's state for `/locara/v1/status`, `locara ps` and metrics,
//! built from the controller's state and the figures the last measure tick
//! brought: reading it measures nothing.

use super::task::LoadMeta;
use crate::host::WorkerHost;
use locara_core::controller::{Controller, PoolStatus};
use locara_core::governor::Phase;
use locara_core::ladder::{LadderState, PressureLevel};
use locara_core::power::{PowerLimits, PowerMode, PowerState};
use locara_core::threads::ThreadClass;
use locara_core::KvType;
use locara_platform::SystemSnapshot;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

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
    /// Measured by the OS at the last measure tick (every few seconds),
    /// bytes; `None` while loading.
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
    /// The threads its decodes run on now, and their class, from the
    /// runtime's CPU budget (`locara_core::threads`); 0 while idle.
    #[serde(default)]
    pub threads: u32,
    #[serde(default)]
    pub thread_class: Option<ThreadClass>,
    /// The draft model loaded beside it (an app's `[speculative]` pair).
    #[serde(default)]
    pub draft: Option<String>,
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
    /// The power and thermal state and what it changes.
    #[serde(default)]
    pub power: PowerStatus,
    pub shutting_down: bool,
    /// A model loads or serves a request, so the daemon holds an activity
    /// that keeps macOS from idle-sleeping (a no-op elsewhere).
    #[serde(default)]
    pub keeping_awake: bool,
}

/// The pressure ladder in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PressureStatus {
    /// The level whose restrictions are in force.
    pub level: PressureLevel,
    /// The level last reported (by the OS or a simulation).
    pub reported: PressureLevel,
    /// Where the ladder stands.
    pub state: LadderStage,
    /// The OS's level, when a simulation overrides it.
    pub os_level: PressureLevel,
    /// A simulated level in force, and until when (milliseconds since the
    /// Unix epoch; `None`: until changed).
    pub simulated: Option<PressureLevel>,
    pub simulated_until_unix_ms: Option<u64>,
    /// New loads are refused (critical).
    pub refusing_loads: bool,
}

/// The power policy in [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PowerStatus {
    /// The strongest condition in force: `normal`, `battery`,
    /// `low-power`, `thermal-serious`, `thermal-critical`.
    pub mode: PowerMode,
    /// The state in force (a simulation's, or the OS's); `null` and
    /// `unknown` where the OS does not say (counted as mains power and
    /// cool).
    pub state: PowerState,
    /// The OS's last reported state, when a simulation overrides it.
    pub os: PowerState,
    /// A simulated mode in force, and until when (milliseconds since the
    /// Unix epoch; `None`: until changed).
    pub simulated: Option<PowerMode>,
    pub simulated_until_unix_ms: Option<u64>,
    /// What the state changes now.
    pub limits: PowerLimits,
    /// What the state changes, in words (`nothing` when nothing).
    pub changes: String,
    /// The cores the busy workers share now (of `cores`).
    pub shared_cores: u32,
    pub cores: u32,
}

/// Where the ladder stands: `normal`, `warn`, `critical`, or `recovering`
/// (reports are lower, the quiet period runs before restrictions lift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LadderStage {
    Normal,
    Warn,
    Critical,
    Recovering,
}

/// What [`build`] reads besides the controller.
pub(super) struct Sources<'a> {
    pub controller: &'a Controller,
    pub hosts: &'a HashMap<String, (u64, Arc<WorkerHost>)>,
    pub loads: &'a HashMap<u64, LoadMeta>,
    pub kv_type: KvType,
    pub system: Option<SystemSnapshot>,
    pub keeping_awake: bool,
}

/// The status at `now`.
pub(super) fn build(s: Sources<'_>, now: Instant) -> Status {
    let unix_now = locara_platform::time::unix_now_ms();
    let to_unix = |t: Instant| -> u64 {
        if t >= now {
            unix_now.saturating_add((t - now).as_millis() as u64)
        } else {
            unix_now.saturating_sub((now - t).as_millis() as u64)
        }
    };
    let governor = s.controller.governor();
    let models = governor
        .models()
        .map(|(name, m)| {
            let host = s
                .hosts
                .get(name)
                .filter(|(i, _)| *i == m.instance)
                .map(|(_, h)| h);
            let meta = s.loads.get(&m.instance);
            let share = s.controller.threads(m.instance);
            ModelStatus {
                name: name.to_string(),
                state: m.phase,
                estimate: m.estimate,
                estimated_footprint: meta.map_or(0, |l| l.estimated_footprint),
                footprint: m.measured.map(|x| x.footprint),
                mapped_weights: m.measured.map(|x| x.mapped_weights),
                context: m.context,
                // What the worker reports it made; before that, what it
                // was asked for.
                kv_type: host
                    .map(|h| h.info.kv_type)
                    .or(meta.map(|l| l.kv_type))
                    .unwrap_or(s.kv_type),
                parallel: m.parallel,
                sequences_busy: m.busy(),
                queued: m.queued(),
                last_used_unix_ms: to_unix(m.last_used),
                pinned: m.pinned(),
                keep_alive: m.keep_alive.to_string(),
                unload_at_unix_ms: m.unload_at().map(to_unix),
                pid: host.map(|h| h.pid()),
                engine: host.map(|h| h.engine().to_string()),
                pool: s.controller.pool(m.instance).cloned(),
                threads: share.map_or(0, |t| t.threads),
                thread_class: share.map(|t| t.class),
                draft: locara_core::load::draft_of(name).map(str::to_string),
            }
        })
        .collect();
    let pressure = s.controller.pressure();
    Status {
        budget: governor.budget,
        effective_budget: governor.effective_budget,
        held: governor.held_bytes(),
        models,
        held_unloaded: governor.held_models().map(str::to_string).collect(),
        system: s.system,
        pressure: PressureStatus {
            level: pressure.level,
            reported: pressure.reported,
            state: match pressure.state {
                LadderState::Normal => LadderStage::Normal,
                LadderState::Warn { .. } => LadderStage::Warn,
                LadderState::Critical { .. } => LadderStage::Critical,
                LadderState::Recovering { .. } => LadderStage::Recovering,
            },
            os_level: pressure.os_level,
            simulated: pressure.simulated.map(|(l, _)| l),
            simulated_until_unix_ms: pressure.simulated.and_then(|(_, u)| u).map(to_unix),
            refusing_loads: pressure.refusing_loads,
        },
        power: {
            let p = s.controller.power();
            PowerStatus {
                mode: p.mode,
                state: p.state,
                os: p.os,
                simulated: p.simulated.map(|(m, _)| m),
                simulated_until_unix_ms: p.simulated.and_then(|(_, u)| u).map(to_unix),
                limits: p.limits,
                changes: p.limits.describe(),
                shared_cores: s.controller.shared_cores(),
                cores: s.controller.cores(),
            }
        },
        shutting_down: s.controller.shutting_down(),
        keeping_awake: s.keeping_awake,
    }
}
