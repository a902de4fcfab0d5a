//! What the daemon remembers of the last hour: a bounded ring of samples
//! (the machine's memory, the pressure level, each model's figures, one a
//! second by default) and a bounded ring of events (loads, unloads with the
//! bytes they held, ladder actions, bytes freed, refusals), so "what
//! happened at 14:02 when the Mac stalled?" has an answer.
//!
//! Pure like the rest of core: the daemon measures and stamps each sample
//! and event with the wall-clock time (milliseconds since the Unix epoch);
//! this module only keeps them within their bounds and answers
//! [`History::since`].
//!
//! ```
//! use locara_core::history::{History, HistoryConfig, HistoryEvent, EventKind, Sample};
//! use locara_core::ladder::PressureLevel;
//!
//! let mut h = History::new(HistoryConfig { samples: 2, events: 8 }).unwrap();
//! for at in [1_000, 2_000, 3_000] {
//!     h.push_sample(Sample { at_unix_ms: at, ..Sample::default() });
//! }
//! h.push_event(HistoryEvent::new(2_500, EventKind::Level).level(PressureLevel::Warn));
//! let page = h.since(1_500);
//! // The oldest sample fell out of the ring; only newer ones come back.
//! assert_eq!(page.samples.iter().map(|s| s.at_unix_ms).collect::<Vec<_>>(), [2_000, 3_000]);
//! assert_eq!(page.events.len(), 1);
//! ```

use crate::ladder::PressureLevel;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One hour at one sample a second (issue 21's default).
pub const DEFAULT_SAMPLES: usize = 3600;

/// Events kept: far more than an hour of a calm daemon makes, and bounded
/// whatever a busy one does (each event is a few hundred bytes).
pub const DEFAULT_EVENTS: usize = 2000;

/// Most samples a history may keep: a day at one a second. A sample of a
/// daemon with a few models is well under 1 KiB, so this bounds the ring
/// near 80 MiB at worst.
pub const MAX_SAMPLES: usize = 86_400;

/// Most events a history may keep.
pub const MAX_EVENTS: usize = 100_000;

/// How much a [`History`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Samples kept, the oldest dropped first (1 to [`MAX_SAMPLES`]).
    pub samples: usize,
    /// Events kept, the oldest dropped first (1 to [`MAX_EVENTS`]).
    pub events: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            samples: DEFAULT_SAMPLES,
            events: DEFAULT_EVENTS,
        }
    }
}

/// A [`HistoryConfig`] out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("history {field} = {value} is out of range: it must be from 1 to {max}")]
    OutOfRange {
        field: &'static str,
        value: usize,
        max: usize,
    },
}

/// The machine's memory in one sample, bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemFigures {
    /// Physical memory the OS manages.
    pub total: u64,
    /// What can still be handed out without swapping or compressing.
    pub available: u64,
    /// File contents kept in RAM (mapped weights included): reclaimable.
    pub cached_files: u64,
    /// Held by the memory compressor, where the OS has one.
    pub compressed: Option<u64>,
    /// Swap in use.
    pub swap_used: u64,
}

/// One model in one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSample {
    /// The load's name (`model`, or `model@type` for a second K/V type).
    pub name: String,
    /// `loading` or `loaded`.
    pub state: String,
    /// What the OS charges its worker, bytes; `None` until measured.
    pub footprint: Option<u64>,
    /// Resident bytes of its mapped model file; `None` until measured.
    pub mapped_weights: Option<u64>,
    /// K/V pool cells allocated and in use (one cell holds one token of one
    /// sequence); 0 while loading.
    pub kv_cells: u32,
    pub kv_used_cells: u32,
    /// Finished conversations kept for prefix reuse: in the pool, and in
    /// the RAM and disk tiers (with their bytes).
    pub cached_sequences: u32,
    pub ram_cache_bytes: u64,
    pub disk_cache_bytes: u64,
    /// Sequences generating now.
    pub sequences_busy: u32,
    /// Tokens generated per second since the previous sample.
    pub tokens_per_second: f64,
}

/// What the runtime and the machine looked like at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The pressure level in force.
    pub level: PressureLevel,
    /// The budget as pressure leaves it, and what the governor counts as
    /// held, bytes.
    pub effective_budget: u64,
    pub held: u64,
    /// The sum of the models' measured footprints, bytes.
    pub footprint_total: u64,
    /// The machine's memory; `None` where it could not be read.
    pub system: Option<SystemFigures>,
    pub models: Vec<ModelSample>,
}

/// What happened, in a [`HistoryEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A model finished loading (`bytes`: its footprint when measured).
    Loaded,
    /// A load failed (`detail`: why).
    LoadFailed,
    /// A model was unloaded (`bytes`: what it held; `detail`: why).
    Unloaded,
    /// A worker exited unasked.
    WorkerDied,
    /// A request was refused (`detail`: the kind).
    Refused,
    /// The pressure level in force changed.
    Level,
    /// The pressure ladder acted.
    Action,
    /// Memory back to the OS after a pressure order (`bytes`).
    Freed,
    /// An app's models hold more than its budget.
    BudgetExceeded,
    /// The power state in force changed.
    Power,
}

/// One event, stamped with its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Bytes the event is about, where it has a size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<PressureLevel>,
    /// The app a budget event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// In words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl HistoryEvent {
    pub fn new(at_unix_ms: u64, kind: EventKind) -> HistoryEvent {
        HistoryEvent {
            at_unix_ms,
            kind,
            model: None,
            bytes: None,
            level: None,
            app: None,
            detail: String::new(),
        }
    }

    pub fn model(mut self, model: impl Into<String>) -> HistoryEvent {
        self.model = Some(model.into());
        self
    }

    pub fn bytes(mut self, bytes: u64) -> HistoryEvent {
        self.bytes = Some(bytes);
        self
    }

    pub fn level(mut self, level: PressureLevel) -> HistoryEvent {
        self.level = Some(level);
        self
    }

    pub fn app(mut self, app: impl Into<String>) -> HistoryEvent {
        self.app = Some(app.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> HistoryEvent {
        self.detail = detail.into();
        self
    }
}

/// A ring of at most `capacity` items: a push past it drops the oldest.
#[derive(Debug, Clone)]
struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    fn new(capacity: usize) -> Ring<T> {
        Ring {
            // Grown as items come: a daemon that ran a minute holds a minute.
            items: VecDeque::new(),
            capacity,
        }
    }

    fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }
}

/// The samples and events after a time: what `GET /locara/v1/history`
/// answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub samples: Vec<Sample>,
    pub events: Vec<HistoryEvent>,
}

/// The two rings.
#[derive(Debug, Clone)]
pub struct History {
    samples: Ring<Sample>,
    events: Ring<HistoryEvent>,
}

impl History {
    pub fn new(config: HistoryConfig) -> Result<History, HistoryError> {
        for (field, value, max) in [
            ("samples", config.samples, MAX_SAMPLES),
            ("events", config.events, MAX_EVENTS),
        ] {
            if value == 0 || value > max {
                return Err(HistoryError::OutOfRange { field, value, max });
            }
        }
        Ok(History {
            samples: Ring::new(config.samples),
            events: Ring::new(config.events),
        })
    }

    /// Keeps a sample. Samples are kept in the order pushed; one stamped
    /// earlier than the last (the wall clock stepped back) still goes last.
    pub fn push_sample(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    pub fn push_event(&mut self, event: HistoryEvent) {
        self.events.push(event);
    }

    /// The samples and events stamped after `after_unix_ms` (0: all kept).
    pub fn since(&self, after_unix_ms: u64) -> HistoryPage {
        HistoryPage {
            samples: self
                .samples
                .items
                .iter()
                .filter(|s| s.at_unix_ms > after_unix_ms)
                .cloned()
                .collect(),
            events: self
                .events
                .items
                .iter()
                .filter(|e| e.at_unix_ms > after_unix_ms)
                .cloned()
                .collect(),
        }
    }

    /// How many samples and events are kept now.
    pub fn len(&self) -> (usize, usize) {
        (self.samples.items.len(), self.events.items.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

impl HistoryPage {
    /// The page as an app sees it: only the rows and events of models
    /// `sees` accepts (by load name), its own budget events, and the
    /// machine-wide ones (level, power, ladder actions without a model).
    pub fn only(mut self, app: &str, sees: impl Fn(&str) -> bool) -> HistoryPage {
        for s in &mut self.samples {
            s.models.retain(|m| sees(&m.name));
            // The other apps' models are not this app's business.
            s.footprint_total = s.models.iter().filter_map(|m| m.footprint).sum();
        }
        self.events.retain(|e| match (&e.model, &e.app) {
            (_, Some(a)) => a == app,
            (Some(m), None) => sees(m),
            (None, None) => true,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, models: &[(&str, u64)]) -> Sample {
        Sample {
            at_unix_ms: at,
            models: models
                .iter()
                .map(|(n, f)| ModelSample {
                    name: n.to_string(),
                    footprint: Some(*f),
                    ..ModelSample::default()
                })
                .collect(),
            footprint_total: models.iter().map(|(_, f)| f).sum(),
            ..Sample::default()
        }
    }

    #[test]
    fn the_rings_never_hold_more_than_their_capacity() {
        let mut h = History::new(HistoryConfig {
            samples: 3,
            events: 2,
        })
        .unwrap();
        for at in 1..=10 {
            h.push_sample(sample(at, &[]));
            h.push_event(HistoryEvent::new(at, EventKind::Refused));
            assert!(h.len().0 <= 3 && h.len().1 <= 2);
        }
        let page = h.since(0);
        let at: Vec<u64> = page.samples.iter().map(|s| s.at_unix_ms).collect();
        assert_eq!(at, [8, 9, 10]);
        let at: Vec<u64> = page.events.iter().map(|e| e.at_unix_ms).collect();
        assert_eq!(at, [9, 10]);
    }

    #[test]
    fn since_is_strictly_after() {
        let mut h = History::new(HistoryConfig::default()).unwrap();
        for at in [100, 200, 300] {
            h.push_sample(sample(at, &[]));
        }
        assert_eq!(h.since(200).samples.len(), 1);
        assert_eq!(h.since(300).samples.len(), 0);
        assert_eq!(h.since(99).samples.len(), 3);
    }

    #[test]
    fn bounds_are_checked_by_name() {
        let e = History::new(HistoryConfig {
            samples: 0,
            events: 1,
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "history samples = 0 is out of range: it must be from 1 to 86400"
        );
        let e = History::new(HistoryConfig {
            samples: 1,
            events: MAX_EVENTS + 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains("events = 100001"), "{e}");
    }

    #[test]
    fn an_app_sees_its_own_models_budget_and_the_machine() {
        let mut h = History::new(HistoryConfig::default()).unwrap();
        h.push_sample(sample(1, &[("mine:1", 100), ("theirs:1", 50)]));
        h.push_event(HistoryEvent::new(2, EventKind::Loaded).model("mine:1"));
        h.push_event(HistoryEvent::new(3, EventKind::Loaded).model("theirs:1"));
        h.push_event(HistoryEvent::new(4, EventKind::Level).level(PressureLevel::Warn));
        h.push_event(HistoryEvent::new(5, EventKind::BudgetExceeded).app("other"));
        h.push_event(HistoryEvent::new(6, EventKind::BudgetExceeded).app("me"));
        let page = h.since(0).only("me", |m| m == "mine:1");
        assert_eq!(page.samples[0].models.len(), 1);
        assert_eq!(page.samples[0].models[0].name, "mine:1");
        assert_eq!(page.samples[0].footprint_total, 100);
        let at: Vec<u64> = page.events.iter().map(|e| e.at_unix_ms).collect();
        assert_eq!(at, [2, 4, 6]);
    }

    #[test]
    fn events_serialize_with_snake_case_kinds_and_no_empty_fields() {
        let e = HistoryEvent::new(7, EventKind::LoadFailed).model("m");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"at_unix_ms": 7, "kind": "load_failed", "model": "m"})
        );
    }
}
