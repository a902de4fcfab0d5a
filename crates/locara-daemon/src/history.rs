//! The daemon's memory of the last hour (`GET /locara/v1/history`): the
//! bounded rings of `locara_core::history`, behind a lock, filled by two
//! writers. The governor task stamps each event it carries out (loads,
//! unloads with the bytes they held, refusals, deaths, and every
//! [`AppEvent`] it publishes); a sampler task
//! ([`crate::runtime::Runtime::start`] starts it) turns the status it
//! already keeps (`Status`: the last measure tick's footprints, the pool
//! figures) into one [`Sample`] a second, with the machine's memory read
//! fresh where the status's snapshot is older than a sample.

use crate::runtime::{AppEvent, Status};
use locara_core::history::{
    EventKind, History, HistoryConfig, HistoryEvent, HistoryPage, ModelSample, Sample,
    SystemFigures,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How often the sampler takes a sample (issue 21: one a second).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The history, shared by the governor task, the sampler and the server.
pub struct HistoryLog {
    inner: Mutex<History>,
    /// Tokens each load has streamed since the daemon started, counted as
    /// they go out (the metrics count a generation's tokens when it ends,
    /// which would make a rate of bursts).
    tokens: Mutex<HashMap<String, u64>>,
    /// Those counts at the last sample, and when: its tokens per second is
    /// the difference.
    last_tokens: Mutex<(u64, HashMap<String, u64>)>,
}

impl Default for HistoryLog {
    fn default() -> Self {
        HistoryLog::new(HistoryConfig::default()).expect("the default bounds are valid")
    }
}

impl HistoryLog {
    pub fn new(config: HistoryConfig) -> Result<HistoryLog, locara_core::history::HistoryError> {
        Ok(HistoryLog {
            inner: Mutex::new(History::new(config)?),
            tokens: Mutex::new(HashMap::new()),
            last_tokens: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic while holding the lock leaves whole rings behind: go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an event, stamped now.
    pub fn event(&self, event: impl FnOnce(u64) -> HistoryEvent) {
        let e = event(locara_platform::time::unix_now_ms());
        self.lock().push_event(e);
    }

    /// Keeps what the task published to apps.
    pub fn app_event(&self, event: &AppEvent) {
        self.event(|at| of_app_event(at, event));
    }

    /// Counts one token streamed by the load `model`.
    pub fn token(&self, model: &str) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match t.get_mut(model) {
            Some(n) => *n += 1,
            None => {
                t.insert(model.to_string(), 1);
            }
        }
    }

    pub fn push_sample(&self, sample: Sample) {
        self.lock().push_sample(sample);
    }

    /// What was kept after `after_unix_ms`.
    pub fn since(&self, after_unix_ms: u64) -> HistoryPage {
        self.lock().since(after_unix_ms)
    }

    /// A sample of `status` at `at_unix_ms`, with `system` where the
    /// status's own snapshot is stale, and each model's tokens per second
    /// since the last sample.
    pub fn sample_of(
        &self,
        at_unix_ms: u64,
        status: &Status,
        system: Option<&locara_platform::SystemSnapshot>,
    ) -> Sample {
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tokens = |m: &str| tokens.get(m).copied().unwrap_or(0);
        let mut last = self.last_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let seconds = at_unix_ms.saturating_sub(last.0) as f64 / 1000.0;
        let mut now_tokens = HashMap::new();
        let models: Vec<ModelSample> = status
            .models
            .iter()
            .map(|m| {
                let t = tokens(&m.name);
                now_tokens.insert(m.name.clone(), t);
                let rate = match last.1.get(&m.name) {
                    Some(&before) if seconds > 0.0 && t >= before => (t - before) as f64 / seconds,
                    _ => 0.0,
                };
                let pool = m.pool.as_ref();
                ModelSample {
                    name: m.name.clone(),
                    state: m.state.as_str().to_string(),
                    footprint: m.footprint,
                    mapped_weights: m.mapped_weights,
                    kv_cells: pool.map_or(0, |p| p.cells),
                    kv_used_cells: pool.map_or(0, |p| p.used_cells),
                    cached_sequences: pool.map_or(0, |p| p.cached_sequences),
                    ram_cache_bytes: pool.map_or(0, |p| p.ram_cache_bytes),
                    disk_cache_bytes: pool.map_or(0, |p| p.disk_cache_bytes),
                    sequences_busy: m.sequences_busy,
                    tokens_per_second: rate,
                }
            })
            .collect();
        *last = (at_unix_ms, now_tokens);
        let system = system.or(status.system.as_ref()).map(|s| SystemFigures {
            total: s.total,
            available: s.available,
            cached_files: s.cached_files,
            compressed: s.compressed,
            swap_used: s.swap_used,
        });
        Sample {
            at_unix_ms,
            level: status.pressure.level,
            effective_budget: status.effective_budget,
            held: status.held,
            footprint_total: models.iter().filter_map(|m| m.footprint).sum(),
            system,
            models,
        }
    }
}

/// An event published to apps, as the history keeps it.
fn of_app_event(at: u64, event: &AppEvent) -> HistoryEvent {
    match event {
        AppEvent::Level {
            level,
            effective_budget,
            ..
        } => HistoryEvent::new(at, EventKind::Level)
            .level(*level)
            .detail(format!(
                "pressure level {level} in force; effective budget {}",
                locara_core::Bytes(*effective_budget)
            )),
        AppEvent::Action {
            level,
            action,
            model,
            detail,
        } => {
            let e = HistoryEvent::new(at, EventKind::Action)
                .level(*level)
                .detail(format!("{action}: {detail}"));
            match model {
                Some(m) => e.model(m.clone()),
                None => e,
            }
        }
        AppEvent::Freed {
            level,
            model,
            bytes,
            ms,
        } => HistoryEvent::new(at, EventKind::Freed)
            .level(*level)
            .model(model.clone())
            .bytes(*bytes)
            .detail(format!("back to the OS in {ms} ms")),
        AppEvent::Power { mode, limits, .. } => HistoryEvent::new(at, EventKind::Power)
            .detail(format!("power {mode}; changes: {}", limits.describe())),
        AppEvent::BudgetExceeded { app, share, budget } => {
            HistoryEvent::new(at, EventKind::BudgetExceeded)
                .app(app.clone())
                .bytes(*share)
                .detail(format!(
                    "app {app} holds {} of its {} budget",
                    locara_core::Bytes(*share),
                    locara_core::Bytes(*budget)
                ))
        }
    }
}
