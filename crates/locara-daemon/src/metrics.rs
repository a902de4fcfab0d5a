//! Prometheus metrics for `GET /metrics`, in the text exposition format
//! 0.0.4, through `prometheus-client`.
//!
//! The daemon owns one [`Metrics`] value (shared as `Arc<Metrics>`; there are
//! no global statics). Two kinds of numbers reach it:
//!
//! * **events** — tokens, finished requests, loads, unloads, evictions,
//!   refusals, estimate checks — are counted as they happen in
//!   `prometheus-client` counters, gauges and histograms, one family per
//!   metric; an update is an atomic add under a family's read lock, cheap
//!   enough to call on every token. Counters are cumulative: a model's
//!   counters stay after it unloads.
//! * **current state** — budget, footprint, mapped weights, estimate, model
//!   state, busy sequences, queue depth — is not stored here. At scrape time
//!   the daemon passes a [`Gauges`] snapshot of the governor's state to
//!   [`Metrics::render`], which exports it through a collector, so the
//!   exported gauges cannot drift from it.
//!
//! Memory words are docs/ARCHITECTURE.md's: *footprint* is what the OS charges the
//! engine worker, *mapped weights* are the clean, file-backed pages of the
//! mmap'd GGUF (not part of the footprint), the *estimate* is what admission
//! predicted before loading, and the *budget* is the bytes the runtime may
//! hold (the *effective* budget shrinks under memory pressure).
//!
//! ```
//! use std::sync::Arc;
//! use locara_core::governor::Phase;
//! use locara_daemon::metrics::{Gauges, Metrics, ModelGauges, CONTENT_TYPE};
//!
//! let metrics = Arc::new(Metrics::new());
//! metrics.load_finished("smollm2:135m", 0.4, true);
//! metrics.prompt_tokens("smollm2:135m", 12);
//! metrics.observe_time_to_first_token("smollm2:135m", 0.08);
//! metrics.tokens_generated("smollm2:135m", 1);
//! metrics.tokens_generated("smollm2:135m", 1);
//! metrics.observe_decode("smollm2:135m", 2, 0.01);
//! metrics.request_finished("smollm2:135m", "/v1/chat/completions", "stop");
//!
//! // At scrape time: a snapshot of the governor's state.
//! let text = metrics.render(&Gauges {
//!     budget_bytes: 11 << 30,
//!     effective_budget_bytes: 11 << 30,
//!     models: vec![ModelGauges {
//!         model: "smollm2:135m".into(),
//!         state: Phase::Loaded,
//!         footprint_bytes: Some(180 << 20),
//!         mapped_weights_bytes: Some(98 << 20),
//!         estimate_bytes: 200 << 20,
//!         sequences_busy: 0,
//!         queue_depth: 0,
//!         threads: 0,
//!         kv_pool: None,
//!     }],
//! });
//! assert!(text.contains("locara_models_loaded 1\n"));
//! assert!(text.contains("locara_tokens_generated_total{model=\"smollm2:135m\"} 2\n"));
//! assert!(text.contains("locara_decode_tokens_per_second_last{model=\"smollm2:135m\"} 200.0\n"));
//! // Serve `text` with this Content-Type.
//! assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
//! ```
//!
//! Label values are taken as given: pass model names the store knows and
//! endpoint, outcome, reason and kind strings from the code, never raw
//! request fields, or one client could grow the series without bound.

use locara_core::governor::Phase;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::AtomicU64;

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text
/// exposition format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bucket upper bounds of time to first token, in seconds: from a warm small
/// model answering a short prompt (tens of milliseconds) to a long prompt
/// processed on CPU cores (tens of seconds).
const TIME_TO_FIRST_TOKEN_BUCKETS: &[f64] =
    &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bucket upper bounds of decode rate, in tokens per second: from a large
/// model on a few CPU cores (a few tokens per second) to a 135M model on a GPU
/// (hundreds).
const DECODE_TOKENS_PER_SECOND_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Bucket upper bounds of model load time, in seconds: an mmap'd GGUF whose
/// pages are cached loads in well under a second; a cold multi-GB file on a
/// slow disk takes minutes.
const MODEL_LOAD_SECONDS_BUCKETS: &[f64] =
    &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Current state of the daemon, passed to [`Metrics::render`] at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Bytes the runtime may hold: the configured budget.
    pub budget_bytes: u64,
    /// Bytes the runtime may hold now: the budget after shrinking for memory
    /// pressure.
    pub effective_budget_bytes: u64,
    /// One entry per model the governor tracks (loading, loaded or
    /// unloading). A name listed twice is exported once (its first entry
    /// after sorting by name), because a duplicate series would make
    /// Prometheus reject the whole scrape.
    pub models: Vec<ModelGauges>,
}

/// Current state of one model, part of [`Gauges`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelGauges {
    /// Model name, e.g. `smollm2:135m`.
    pub model: String,
    /// Lifecycle state: loading or loaded.
    pub state: Phase,
    /// Measured footprint of the model's engine worker, in bytes; `None`
    /// until the first measurement (no sample is exported then).
    pub footprint_bytes: Option<u64>,
    /// Resident bytes of the mmap'd GGUF's clean, file-backed pages; `None`
    /// where not measured (no sample is exported then).
    pub mapped_weights_bytes: Option<u64>,
    /// Footprint in bytes that admission predicted for this model.
    pub estimate_bytes: u64,
    /// Sequences (requests) the engine worker is decoding now.
    pub sequences_busy: u32,
    /// Requests waiting for a free sequence of this model.
    pub queue_depth: u32,
    /// Threads its decodes run on now, from the runtime's CPU budget; 0
    /// while idle.
    pub threads: u32,
    /// The model's K/V pool: cells allocated, cells its sequences hold,
    /// and finished conversations kept for reuse; `None` while loading.
    pub kv_pool: Option<KvPoolGauges>,
}

/// A model's K/V pool in a [`ModelGauges`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvPoolGauges {
    pub cells: u32,
    pub used_cells: u32,
    pub cached_sequences: u32,
    /// Conversations kept in the worker's RAM tier, and their bytes.
    pub ram_cached_sequences: u32,
    pub ram_cache_bytes: u64,
}

/// The daemon's Prometheus metrics: event counters, gauges and histograms,
/// rendered together with a [`Gauges`] snapshot. See the [module docs](self).
///
/// Metric names are registered without the `_total` that the encoder adds to
/// counters, and without units (the names carry them), so that the exported
/// names are exactly those documented on each method.
#[derive(Debug)]
pub struct Metrics {
    /// Every family below, under the prefix `locara`, in the order they are
    /// rendered.
    registry: Registry,
    /// The pressure level in force: 0 normal, 1 warn, 2 critical.
    pressure_level: Gauge<u64, AtomicU64>,
    pressure_actions: Family<ActionLabels, Counter>,
    /// Bytes the OS gave back after pressure unloads, by level.
    pressure_bytes_freed: Family<LevelLabels, Counter>,
    /// Signed relative error of the last estimate against the measured
    /// footprint; no sample before the first check.
    estimate_error_ratio: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    /// Decode rate of the last observed request, tokens per second.
    decode_tokens_per_second_last: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    prompt_tokens: Family<ModelLabels, Counter>,
    tokens_generated: Family<ModelLabels, Counter>,
    /// Speculative decoding: drafted tokens the model checked, those it
    /// kept, and the decodes generations took part in.
    draft_tokens: Family<ModelLabels, Counter>,
    draft_accepted_tokens: Family<ModelLabels, Counter>,
    decode_steps: Family<ModelLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
    unloads: Family<UnloadLabels, Counter>,
    evictions: Family<ModelLabels, Counter>,
    pool_resizes: Family<ResizeLabels, Counter>,
    pool_growth_refused: Family<ModelLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    /// Changes of the power state in force, by the mode changed to.
    power_changes: Family<ModeLabels, Counter>,
    /// The power mode in force: 0 normal, 1 battery, 2 low-power, 3
    /// thermal-serious, 4 thermal-critical.
    power_mode: Gauge<u64, AtomicU64>,
    /// Time to first token, seconds.
    time_to_first_token: Family<ModelLabels, Histogram, Buckets>,
    /// Decode rate per request, tokens per second.
    decode_tokens_per_second: Family<ModelLabels, Histogram, Buckets>,
    /// Duration of successful loads, seconds.
    load_seconds: Family<ModelLabels, Histogram, Buckets>,
}

// Label sets: the fields are the label names, in the order they are written.

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    endpoint: String,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoadLabels {
    model: String,
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UnloadLabels {
    model: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResizeLabels {
    model: String,
    /// `grow` or `shrink`.
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    model: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    level: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LevelLabels {
    level: String,
}

/// Makes one model's histogram with these bucket upper bounds (inclusive,
/// increasing; `+Inf` is implicit).
#[derive(Debug, Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// No events counted yet.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("locara"),
            pressure_level: Gauge::default(),
            pressure_actions: Family::default(),
            pressure_bytes_freed: Family::default(),
            estimate_error_ratio: Family::default(),
            decode_tokens_per_second_last: Family::default(),
            prompt_tokens: Family::default(),
            tokens_generated: Family::default(),
            draft_tokens: Family::default(),
            draft_accepted_tokens: Family::default(),
            decode_steps: Family::default(),
            requests: Family::default(),
            loads: Family::default(),
            unloads: Family::default(),
            evictions: Family::default(),
            pool_resizes: Family::default(),
            pool_growth_refused: Family::default(),
            refusals: Family::default(),
            power_changes: Family::default(),
            power_mode: Gauge::default(),
            time_to_first_token: Family::new_with_constructor(Buckets(TIME_TO_FIRST_TOKEN_BUCKETS)),
            decode_tokens_per_second: Family::new_with_constructor(Buckets(
                DECODE_TOKENS_PER_SECOND_BUCKETS,
            )),
            load_seconds: Family::new_with_constructor(Buckets(MODEL_LOAD_SECONDS_BUCKETS)),
        };
        // Help texts without their final period: the registry adds one.
        let r = &mut m.registry;
        r.register(
            "pressure_level",
            "Memory pressure level in force: 0 normal, 1 warn, 2 critical",
            m.pressure_level.clone(),
        );
        r.register(
            "pressure_actions",
            "Actions the pressure ladder took, by action and level",
            m.pressure_actions.clone(),
        );
        r.register(
            "pressure_bytes_freed",
            "Bytes the OS gave back after pressure unloads (the workers' measured footprints), by level",
            m.pressure_bytes_freed.clone(),
        );
        r.register(
            "estimate_error_ratio",
            "Signed error of the last estimate against the measured footprint, (estimate - footprint) / footprint; positive means the estimate was too high",
            m.estimate_error_ratio.clone(),
        );
        r.register(
            "decode_tokens_per_second_last",
            "Decode rate of the model's last finished request, in tokens per second",
            m.decode_tokens_per_second_last.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "tokens_generated",
            "Tokens generated",
            m.tokens_generated.clone(),
        );
        r.register(
            "draft_tokens",
            "Drafted tokens the model checked (speculative decoding)",
            m.draft_tokens.clone(),
        );
        r.register(
            "draft_accepted_tokens",
            "Drafted tokens the model agreed with and kept",
            m.draft_accepted_tokens.clone(),
        );
        r.register(
            "decode_steps",
            "Decodes that gave generations tokens; tokens generated over this is tokens per step",
            m.decode_steps.clone(),
        );
        r.register(
            "requests",
            "Finished requests by endpoint and outcome (stop, length, cancelled, error)",
            m.requests.clone(),
        );
        r.register(
            "model_loads",
            "Finished model loads by result (ok, error)",
            m.loads.clone(),
        );
        r.register(
            "model_unloads",
            "Model unloads by reason (idle, evicted, requested, worker_died, shutdown, pressure_warn, pressure_critical)",
            m.unloads.clone(),
        );
        r.register(
            "evictions",
            "Times the model was evicted to make room for another under the budget",
            m.evictions.clone(),
        );
        r.register(
            "kv_pool_resizes",
            "Resizes of the model's K/V pool, by direction (grow: the governor granted the bytes; shrink: idle or under pressure)",
            m.pool_resizes.clone(),
        );
        r.register(
            "kv_pool_growth_refused",
            "Growths of the model's K/V pool the governor refused (budget or pressure): the sequence shifted its context or ended",
            m.pool_growth_refused.clone(),
        );
        r.register(
            "refusals",
            "Refused requests and loads by kind (insufficient_memory, queue_full, held, pressure, thermal)",
            m.refusals.clone(),
        );
        r.register(
            "power_changes",
            "Changes of the power state in force (battery, Low Power Mode, heat), by the mode changed to (normal, battery, low-power, thermal-serious, thermal-critical)",
            m.power_changes.clone(),
        );
        r.register(
            "power_mode",
            "Power mode in force: 0 normal, 1 battery, 2 low-power, 3 thermal-serious, 4 thermal-critical",
            m.power_mode.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Seconds from accepting a request to its first generated token",
            m.time_to_first_token.clone(),
        );
        r.register(
            "decode_tokens_per_second",
            "Decode rate of each finished request, in tokens per second",
            m.decode_tokens_per_second.clone(),
        );
        r.register(
            "model_load_seconds",
            "Seconds to load a model (successful loads only)",
            m.load_seconds.clone(),
        );
        m
    }

    /// `model`'s label set. On the model's first event its counters without
    /// open-ended labels (tokens, prompt tokens, loads, evictions) start at
    /// 0, so that a rate over them counts from that first event.
    fn seen(&self, model: &str) -> ModelLabels {
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        // `tokens_generated` is created last: once it exists, so do the rest.
        if self.tokens_generated.get(&labels).is_none() {
            drop(self.prompt_tokens.get_or_create(&labels));
            drop(self.draft_tokens.get_or_create(&labels));
            drop(self.draft_accepted_tokens.get_or_create(&labels));
            drop(self.decode_steps.get_or_create(&labels));
            drop(self.evictions.get_or_create(&labels));
            for result in ["ok", "error"] {
                drop(self.loads.get_or_create(&LoadLabels {
                    model: labels.model.clone(),
                    result,
                }));
            }
            drop(self.tokens_generated.get_or_create(&labels));
        }
        labels
    }

    /// Counts one action of the pressure ladder
    /// (`locara_pressure_actions_total{action,level}`).
    pub fn pressure_action(&self, action: &str, level: &str) {
        let labels = ActionLabels {
            action: action.to_owned(),
            level: level.to_owned(),
        };
        self.pressure_actions.get_or_create(&labels).inc();
    }

    /// Adds bytes the OS gave back after a pressure unload
    /// (`locara_pressure_bytes_freed_total{level}`).
    pub fn pressure_freed(&self, level: &str, bytes: u64) {
        let labels = LevelLabels {
            level: level.to_owned(),
        };
        self.pressure_bytes_freed
            .get_or_create(&labels)
            .inc_by(bytes);
    }

    /// The pressure level in force: 0 normal, 1 warn, 2 critical
    /// (`locara_pressure_level`).
    pub fn pressure_level(&self, level: u64) {
        self.pressure_level.set(level);
    }

    /// A change of the power state in force
    /// (`locara_power_changes_total{mode}`, `locara_power_mode`).
    pub fn power_changed(&self, mode: locara_core::power::PowerMode) {
        use locara_core::power::PowerMode;
        self.power_changes
            .get_or_create(&ModeLabels {
                mode: mode.as_str(),
            })
            .inc();
        self.power_mode.set(match mode {
            PowerMode::Normal => 0,
            PowerMode::Battery => 1,
            PowerMode::LowPower => 2,
            PowerMode::ThermalSerious => 3,
            PowerMode::ThermalCritical => 4,
        });
    }

    /// Counts `n` generated tokens (`locara_tokens_generated_total{model}`).
    /// Cheap enough to call once per token.
    pub fn tokens_generated(&self, model: &str, n: u64) {
        let labels = self.seen(model);
        self.tokens_generated.get_or_create(&labels).inc_by(n);
    }

    /// Counts one generation's speculative decoding: `drafted` tokens
    /// checked, `accepted` of them kept, in `steps` decodes
    /// (`locara_draft_tokens_total`, `locara_draft_accepted_tokens_total`,
    /// `locara_decode_steps_total`, by model). The acceptance rate is the
    /// ratio of the first two; tokens per decode step is
    /// `locara_tokens_generated_total` over the third.
    pub fn speculation(&self, model: &str, drafted: u64, accepted: u64, steps: u64) {
        let labels = self.seen(model);
        self.draft_tokens.get_or_create(&labels).inc_by(drafted);
        self.draft_accepted_tokens
            .get_or_create(&labels)
            .inc_by(accepted);
        self.decode_steps.get_or_create(&labels).inc_by(steps);
    }

    /// Counts `n` processed prompt tokens (`locara_prompt_tokens_total{model}`).
    pub fn prompt_tokens(&self, model: &str, n: u64) {
        let labels = self.seen(model);
        self.prompt_tokens.get_or_create(&labels).inc_by(n);
    }

    /// Counts one finished request
    /// (`locara_requests_total{model,endpoint,outcome}`). `endpoint` is the
    /// route, e.g. `/v1/chat/completions`; `outcome` is how it ended: `stop`,
    /// `length`, `cancelled` or `error`.
    pub fn request_finished(&self, model: &str, endpoint: &str, outcome: &str) {
        let ModelLabels { model } = self.seen(model);
        let labels = RequestLabels {
            model,
            endpoint: endpoint.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// Records the time from accepting a request to its first generated
    /// token, in seconds (`locara_time_to_first_token_seconds{model}`). NaN,
    /// infinite and negative values are dropped, because they would poison
    /// `_sum` for the rest of the daemon's life.
    pub fn observe_time_to_first_token(&self, model: &str, seconds: f64) {
        let labels = self.seen(model);
        if observable(seconds) {
            self.time_to_first_token
                .get_or_create(&labels)
                .observe(seconds);
        }
    }

    /// Records one request's decode phase: `tokens` generated in `seconds`.
    /// The rate in tokens per second goes to the histogram
    /// `locara_decode_tokens_per_second{model}` and replaces the gauge
    /// `locara_decode_tokens_per_second_last{model}`. A phase with no tokens
    /// or no positive, finite duration has no rate and is dropped.
    pub fn observe_decode(&self, model: &str, tokens: u64, seconds: f64) {
        if tokens == 0 || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        let rate = tokens as f64 / seconds;
        if !rate.is_finite() {
            return;
        }
        let labels = self.seen(model);
        self.decode_tokens_per_second
            .get_or_create(&labels)
            .observe(rate);
        self.decode_tokens_per_second_last
            .get_or_create(&labels)
            .set(rate);
    }

    /// Counts one unload (`locara_model_unloads_total{model,reason}`);
    /// `reason` is one of `idle`, `evicted`, `requested`, `worker_died`,
    /// `shutdown`, `pressure_warn`, `pressure_critical`.
    pub fn unloaded(&self, model: &str, reason: &str) {
        let ModelLabels { model } = self.seen(model);
        let labels = UnloadLabels {
            model,
            reason: reason.to_owned(),
        };
        self.unloads.get_or_create(&labels).inc();
    }

    /// Counts one eviction of `model` to make room under the budget
    /// (`locara_evictions_total{model}`).
    pub fn evicted(&self, model: &str) {
        let labels = self.seen(model);
        self.evictions.get_or_create(&labels).inc();
    }

    /// Counts one finished load (`locara_model_loads_total{model,result}`,
    /// `result` being `ok` or `error`) and, if it succeeded, records its
    /// duration in seconds (`locara_model_load_seconds{model}`). Failed loads
    /// are left out of the histogram: they often fail at once (a bad file, a
    /// refused manifest) and would hide how long real loads take. A NaN,
    /// infinite or negative duration is not recorded.
    pub fn load_finished(&self, model: &str, seconds: f64, ok: bool) {
        let labels = self.seen(model);
        let result = if ok { "ok" } else { "error" };
        self.loads
            .get_or_create(&LoadLabels {
                model: labels.model.clone(),
                result,
            })
            .inc();
        if ok && observable(seconds) {
            self.load_seconds.get_or_create(&labels).observe(seconds);
        }
    }

    /// Counts one resize of the model's K/V pool
    /// (`locara_kv_pool_resizes_total{model,direction}`).
    pub fn pool_resized(&self, model: &str, grew: bool) {
        let ModelLabels { model } = self.seen(model);
        let direction = if grew { "grow" } else { "shrink" };
        self.pool_resizes
            .get_or_create(&ResizeLabels { model, direction })
            .inc();
    }

    /// Counts one growth of the model's K/V pool that the governor refused
    /// (`locara_kv_pool_growth_refused_total{model}`).
    pub fn pool_growth_refused(&self, model: &str) {
        let labels = self.seen(model);
        self.pool_growth_refused.get_or_create(&labels).inc();
    }

    /// Counts one refused request or load (`locara_refusals_total{model,kind}`);
    /// `kind` is e.g. `insufficient_memory`, `queue_full` or `held`.
    pub fn refused(&self, model: &str, kind: &str) {
        let ModelLabels { model } = self.seen(model);
        let labels = RefusalLabels {
            model,
            kind: kind.to_owned(),
        };
        self.refusals.get_or_create(&labels).inc();
    }

    /// Compares an estimate with the footprint measured for the same model,
    /// both in bytes, and sets `locara_estimate_error_ratio{model}` to
    /// `(estimated - measured) / measured`: positive when the estimate was too
    /// high, negative when too low. The last check wins. A measured footprint
    /// of 0 has no ratio and is ignored.
    pub fn estimate_checked(&self, model: &str, estimated_footprint: u64, measured_footprint: u64) {
        if measured_footprint == 0 {
            return;
        }
        // Exact to well under a part per million for any real footprint.
        let ratio =
            (estimated_footprint as f64 - measured_footprint as f64) / measured_footprint as f64;
        let labels = self.seen(model);
        self.estimate_error_ratio.get_or_create(&labels).set(ratio);
    }

    /// Renders every metric family, the snapshot's gauges and all counters
    /// and histograms, as Prometheus text (serve with [`CONTENT_TYPE`]).
    ///
    /// Each family has one `# HELP` and one `# TYPE` line before its samples,
    /// and families are not interleaved. A family with no samples is left out
    /// entirely. Every model in `gauges` counts as seen (see the per-model
    /// counters that start at 0 on a model's first event).
    pub fn render(&self, gauges: &Gauges) -> String {
        let snapshot = Snapshot::new(gauges);
        for m in &snapshot.0.models {
            self.seen(&m.model);
        }
        let mut scrape = Registry::with_prefix("locara");
        scrape.register_collector(Box::new(snapshot));
        let mut out = String::with_capacity(4096);
        // The encoder fails only when its writer does; a String does not.
        let _ = prometheus_text::encode(&mut out, &scrape)
            .and_then(|()| prometheus_text::encode(&mut out, &self.registry));
        out
    }
}

/// Whether an observation can go into a histogram: a NaN, infinite or
/// negative one would poison `_sum` for the rest of the daemon's life.
fn observable(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

/// The governor's state at one scrape, written as gauges when the scrape
/// registry is encoded.
#[derive(Debug)]
struct Snapshot(Gauges);

impl Snapshot {
    /// `gauges` with each model once: its first entry after sorting by name,
    /// because a duplicate series would make Prometheus reject the whole
    /// scrape.
    fn new(gauges: &Gauges) -> Snapshot {
        let mut gauges = gauges.clone();
        gauges.models.sort_by(|a, b| a.model.cmp(&b.model));
        gauges
            .models
            .dedup_by(|later, first| later.model == first.model);
        Snapshot(gauges)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Gauges {
            budget_bytes,
            effective_budget_bytes,
            models,
        } = &self.0;
        let loaded = models.iter().filter(|m| m.state == Phase::Loaded).count() as u64;
        let e = &mut encoder;
        let none: [(&str, &str); 0] = [];
        gauges(
            e,
            "budget_bytes",
            "Bytes the runtime may hold: the configured memory budget.",
            [(none, *budget_bytes)],
        )?;
        gauges(
            e,
            "effective_budget_bytes",
            "Bytes the runtime may hold now: the budget after shrinking for memory pressure.",
            [(none, *effective_budget_bytes)],
        )?;
        gauges(
            e,
            "models_loaded",
            "Models whose engine worker is loaded and serving.",
            [(none, loaded)],
        )?;
        gauges(
            e,
            "model_state",
            "Lifecycle state of each model the governor tracks (1 for its current state: loading or loaded).",
            models
                .iter()
                .map(|m| ([("model", m.model.as_str()), ("state", m.state.as_str())], 1u64)),
        )?;
        fn model(m: &ModelGauges) -> [(&'static str, &str); 1] {
            [("model", m.model.as_str())]
        }
        gauges(
            e,
            "model_estimate_bytes",
            "Footprint in bytes that admission estimated for the model (weights, KV cache, compute buffers, overhead).",
            models.iter().map(|m| (model(m), m.estimate_bytes)),
        )?;
        gauges(
            e,
            "model_footprint_bytes",
            "Measured footprint in bytes of the model's engine worker (macOS phys_footprint; Linux RssAnon + VmSwap from /proc/<pid>/status).",
            models.iter().filter_map(|m| Some((model(m), m.footprint_bytes?))),
        )?;
        gauges(
            e,
            "model_mapped_weights_bytes",
            "Resident bytes of the model's mmap'd GGUF weights: clean, file-backed pages, reclaimable without swap, not part of the footprint.",
            models.iter().filter_map(|m| Some((model(m), m.mapped_weights_bytes?))),
        )?;
        gauges(
            e,
            "kv_pool_cells",
            "K/V cells the model's pool holds allocated (one cell: one token of one sequence); it grows with the governor's leave and shrinks when idle.",
            models.iter().filter_map(|m| Some((model(m), m.kv_pool?.cells))),
        )?;
        gauges(
            e,
            "kv_pool_used_cells",
            "K/V cells of the model's pool that live and cached sequences hold.",
            models
                .iter()
                .filter_map(|m| Some((model(m), m.kv_pool?.used_cells))),
        )?;
        gauges(
            e,
            "kv_cached_sequences",
            "Finished conversations the model keeps in its K/V pool for prefix reuse.",
            models
                .iter()
                .filter_map(|m| Some((model(m), m.kv_pool?.cached_sequences))),
        )?;
        gauges(
            e,
            "kv_ram_cached_sequences",
            "Finished conversations the model's worker keeps outside its pool, in its RAM tier.",
            models
                .iter()
                .filter_map(|m| Some((model(m), m.kv_pool?.ram_cached_sequences))),
        )?;
        gauges(
            e,
            "kv_ram_cache_bytes",
            "Bytes of saved K/V state in the model's RAM tier (part of its worker's footprint).",
            models
                .iter()
                .filter_map(|m| Some((model(m), m.kv_pool?.ram_cache_bytes))),
        )?;
        gauges(
            e,
            "sequences_busy",
            "Sequences (requests) the model's engine worker is decoding now.",
            models.iter().map(|m| (model(m), m.sequences_busy)),
        )?;
        gauges(
            e,
            "queue_depth",
            "Requests waiting for a free sequence of the model.",
            models.iter().map(|m| (model(m), m.queue_depth)),
        )?;
        gauges(
            e,
            "model_threads",
            "Threads the model's decodes run on now, its share of the performance cores (0 while idle).",
            models.iter().map(|m| (model(m), m.threads)),
        )
    }
}

/// Writes the gauge family `name`, one sample per (labels, value); nothing
/// at all without samples.
fn gauges<S: EncodeLabelSet, N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, N)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The value of the sample `series`, its name and labels as written
    /// (`locara_queue_depth{model="m"}`); `None` without one. A second
    /// sample of the series fails the test.
    fn value(text: &str, series: &str) -> Option<f64> {
        let mut values = text
            .lines()
            .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
        let value = values
            .next()
            .map(|v| v.parse().unwrap_or_else(|e| panic!("{series} {v:?}: {e}")));
        assert!(values.next().is_none(), "{series} twice in\n{text}");
        value
    }

    /// The type of family `name`, from its `# TYPE` line.
    fn kind<'t>(text: &'t str, name: &str) -> Option<&'t str> {
        text.lines().find_map(|line| {
            line.strip_prefix("# TYPE ")?
                .strip_prefix(name)?
                .strip_prefix(' ')
        })
    }

    /// The sample lines of `text`, each series once: a duplicate series
    /// makes Prometheus reject the whole scrape.
    fn samples(text: &str) -> Vec<&str> {
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let mut series = BTreeSet::new();
        for line in &lines {
            let (name_and_labels, _) = line.rsplit_once(' ').expect("a value");
            assert!(series.insert(name_and_labels), "duplicate series {line:?}");
        }
        lines
    }

    /// Checks `model`'s series of histogram `family`: buckets in increasing
    /// `le` order, cumulative, ending with `+Inf` equal to `_count`, and a
    /// `_sum`.
    fn check_histogram(text: &str, family: &str, model: &str) {
        assert_eq!(kind(text, family), Some("histogram"));
        let prefix = format!("{family}_bucket{{model=\"{model}\",le=\"");
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|rest| {
                let (le, count) = rest.split_once("\"} ").expect("le and count");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, count.parse().expect("count"))
            })
            .collect();
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family} {model}: {buckets:?}"
        );
        let &(last_le, last_count) = buckets.last().expect("buckets");
        assert_eq!(last_le, f64::INFINITY, "{family} {model}: last bucket");
        let count = value(text, &format!("{family}_count{{model=\"{model}\"}}"));
        assert_eq!(count, Some(last_count), "{family} {model}: +Inf != _count");
        assert!(value(text, &format!("{family}_sum{{model=\"{model}\"}}")).is_some());
    }

    fn model(name: &str, state: Phase) -> ModelGauges {
        ModelGauges {
            model: name.into(),
            state,
            footprint_bytes: Some(180 << 20),
            mapped_weights_bytes: Some(98 << 20),
            estimate_bytes: 200 << 20,
            sequences_busy: 1,
            queue_depth: 2,
            threads: 2,
            kv_pool: Some(KvPoolGauges {
                cells: 2048,
                used_cells: 300,
                cached_sequences: 1,
                ram_cached_sequences: 2,
                ram_cache_bytes: 5 << 20,
            }),
        }
    }

    fn gauges(models: Vec<ModelGauges>) -> Gauges {
        Gauges {
            budget_bytes: 11 << 30,
            effective_budget_bytes: 8 << 30,
            models,
        }
    }

    /// Every API call at least once, for two models.
    fn busy_metrics() -> Metrics {
        let m = Metrics::new();
        for name in ["smollm2:135m", "gemma3:270m"] {
            m.load_finished(name, 0.7, true);
            m.load_finished(name, 0.01, false);
            m.prompt_tokens(name, 20);
            m.tokens_generated(name, 5);
            m.speculation(name, 8, 6, 3);
            m.request_finished(name, "/v1/chat/completions", "stop");
            m.request_finished(name, "/v1/completions", "length");
            m.observe_time_to_first_token(name, 0.12);
            m.observe_decode(name, 64, 0.5);
            m.unloaded(name, "idle");
            m.evicted(name);
            m.refused(name, "queue_full");
            m.estimate_checked(name, 210 << 20, 200 << 20);
            m.pool_resized(name, true);
            m.pool_resized(name, false);
            m.pool_growth_refused(name);
        }
        m.pressure_level(1);
        m.pressure_action("unload", "critical");
        m.pressure_freed("critical", 1024);
        m.power_changed(locara_core::power::PowerMode::Battery);
        m
    }

    #[test]
    fn render_has_every_family_once_with_its_type() {
        let m = busy_metrics();
        let text = m.render(&gauges(vec![
            model("smollm2:135m", Phase::Loaded),
            model("gemma3:270m", Phase::Loading),
        ]));
        let expected = [
            ("locara_budget_bytes", "gauge"),
            ("locara_effective_budget_bytes", "gauge"),
            ("locara_models_loaded", "gauge"),
            ("locara_model_state", "gauge"),
            ("locara_model_estimate_bytes", "gauge"),
            ("locara_model_footprint_bytes", "gauge"),
            ("locara_model_mapped_weights_bytes", "gauge"),
            ("locara_sequences_busy", "gauge"),
            ("locara_model_threads", "gauge"),
            ("locara_queue_depth", "gauge"),
            ("locara_kv_pool_cells", "gauge"),
            ("locara_kv_pool_used_cells", "gauge"),
            ("locara_kv_cached_sequences", "gauge"),
            ("locara_kv_ram_cached_sequences", "gauge"),
            ("locara_kv_ram_cache_bytes", "gauge"),
            ("locara_kv_pool_resizes_total", "counter"),
            ("locara_kv_pool_growth_refused_total", "counter"),
            ("locara_estimate_error_ratio", "gauge"),
            ("locara_decode_tokens_per_second_last", "gauge"),
            ("locara_prompt_tokens_total", "counter"),
            ("locara_tokens_generated_total", "counter"),
            ("locara_draft_tokens_total", "counter"),
            ("locara_draft_accepted_tokens_total", "counter"),
            ("locara_decode_steps_total", "counter"),
            ("locara_requests_total", "counter"),
            ("locara_model_loads_total", "counter"),
            ("locara_model_unloads_total", "counter"),
            ("locara_evictions_total", "counter"),
            ("locara_refusals_total", "counter"),
            ("locara_time_to_first_token_seconds", "histogram"),
            ("locara_decode_tokens_per_second", "histogram"),
            ("locara_model_load_seconds", "histogram"),
            ("locara_pressure_level", "gauge"),
            ("locara_pressure_actions_total", "counter"),
            ("locara_pressure_bytes_freed_total", "counter"),
            ("locara_power_changes_total", "counter"),
            ("locara_power_mode", "gauge"),
        ];
        for (name, expected_kind) in expected {
            assert_eq!(kind(&text, name), Some(expected_kind), "{name}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!((types, helps), (expected.len(), expected.len()), "{text}");
        // Help texts end with one period, whoever adds it.
        assert!(
            text.lines()
                .filter(|l| l.starts_with("# HELP "))
                .all(|l| l.ends_with('.') && !l.ends_with("..")),
            "{text}"
        );
        samples(&text);
        for family in [
            "locara_time_to_first_token_seconds",
            "locara_decode_tokens_per_second",
            "locara_model_load_seconds",
        ] {
            for model in ["smollm2:135m", "gemma3:270m"] {
                check_histogram(&text, family, model);
            }
        }
        assert_eq!(value(&text, "locara_models_loaded"), Some(1.0));
        assert_eq!(
            value(&text, "locara_effective_budget_bytes"),
            Some((8u64 << 30) as f64)
        );
        let state = r#"locara_model_state{model="gemma3:270m",state="loading"}"#;
        assert_eq!(value(&text, state), Some(1.0));
        let smol = |family: &str| value(&text, &format!("{family}{{model=\"smollm2:135m\"}}"));
        assert_eq!(smol("locara_queue_depth"), Some(2.0));
        assert_eq!(smol("locara_sequences_busy"), Some(1.0));
        assert_eq!(smol("locara_model_threads"), Some(2.0));
        assert_eq!(
            smol("locara_model_mapped_weights_bytes"),
            Some((98u64 << 20) as f64)
        );
        assert_eq!(smol("locara_decode_tokens_per_second_last"), Some(128.0));
        let loads = |result: &str| {
            let series =
                format!("locara_model_loads_total{{model=\"smollm2:135m\",result=\"{result}\"}}");
            value(&text, &series)
        };
        assert_eq!(loads("ok"), Some(1.0));
        assert_eq!(loads("error"), Some(1.0));
        // Only the successful load is timed.
        assert_eq!(smol("locara_model_load_seconds_count"), Some(1.0));
        assert_eq!(smol("locara_model_load_seconds_sum"), Some(0.7));
        let refusal = r#"locara_refusals_total{model="smollm2:135m",kind="queue_full"}"#;
        assert_eq!(value(&text, refusal), Some(1.0));
        let unload = r#"locara_model_unloads_total{model="smollm2:135m",reason="idle"}"#;
        assert_eq!(value(&text, unload), Some(1.0));
        let resize = r#"locara_kv_pool_resizes_total{model="smollm2:135m",direction="grow"}"#;
        assert_eq!(value(&text, resize), Some(1.0));
        assert_eq!(smol("locara_draft_tokens_total"), Some(8.0));
        assert_eq!(smol("locara_draft_accepted_tokens_total"), Some(6.0));
        assert_eq!(smol("locara_decode_steps_total"), Some(3.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count() {
        let m = Metrics::new();
        // 0.1 is a bound: `le` is inclusive, so it lands in le="0.1".
        for seconds in [0.01, 0.03, 0.03, 0.1, 0.7, 100.0] {
            m.observe_time_to_first_token("smollm2:135m", seconds);
        }
        let text = m.render(&gauges(vec![]));
        check_histogram(&text, "locara_time_to_first_token_seconds", "smollm2:135m");
        // Bounds are written as Prometheus's own clients write them: "1",
        // not "1.0".
        let bucket = |le: &str| {
            let series = format!(
                "locara_time_to_first_token_seconds_bucket{{model=\"smollm2:135m\",le=\"{le}\"}}"
            );
            value(&text, &series)
        };
        assert_eq!(bucket("0.025"), Some(1.0));
        assert_eq!(bucket("0.05"), Some(3.0));
        assert_eq!(bucket("0.1"), Some(4.0));
        assert_eq!(bucket("0.25"), Some(4.0));
        assert_eq!(bucket("1"), Some(5.0));
        assert_eq!(bucket("30"), Some(5.0));
        assert_eq!(bucket("+Inf"), Some(6.0));
        let series = |suffix: &str| {
            value(
                &text,
                &format!("locara_time_to_first_token_seconds_{suffix}{{model=\"smollm2:135m\"}}"),
            )
        };
        assert_eq!(series("count"), Some(6.0));
        let sum = series("sum").expect("sum");
        assert!((sum - 100.87).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn non_finite_and_negative_observations_are_dropped() {
        let m = Metrics::new();
        m.observe_time_to_first_token("m", 0.2);
        m.observe_time_to_first_token("m", f64::NAN);
        m.observe_time_to_first_token("m", f64::INFINITY);
        m.observe_time_to_first_token("m", -1.0);
        m.observe_decode("m", 10, 0.0);
        m.observe_decode("m", 0, 1.0);
        m.observe_decode("m", 10, f64::NAN);
        m.load_finished("m", f64::NAN, true);
        let text = m.render(&gauges(vec![]));
        let series = |name: &str| value(&text, &format!("{name}{{model=\"m\"}}"));
        assert_eq!(
            series("locara_time_to_first_token_seconds_count"),
            Some(1.0)
        );
        assert_eq!(series("locara_time_to_first_token_seconds_sum"), Some(0.2));
        assert_eq!(series("locara_decode_tokens_per_second_count"), None);
        assert_eq!(series("locara_decode_tokens_per_second_last"), None);
        // The load still counts; its bogus duration is not timed.
        let ok = r#"locara_model_loads_total{model="m",result="ok"}"#;
        assert_eq!(value(&text, ok), Some(1.0));
        assert_eq!(series("locara_model_load_seconds_count"), None);
    }

    #[test]
    fn decode_rate_fills_histogram_and_last_value_gauge() {
        let m = Metrics::new();
        m.observe_decode("m", 100, 2.0); // 50 tok/s
        m.observe_decode("m", 30, 0.1); // 300 tok/s, the last one
        let text = m.render(&gauges(vec![]));
        check_histogram(&text, "locara_decode_tokens_per_second", "m");
        let last = r#"locara_decode_tokens_per_second_last{model="m"}"#;
        assert_eq!(value(&text, last), Some(300.0));
        let bucket = |le: &str| {
            let series =
                format!("locara_decode_tokens_per_second_bucket{{model=\"m\",le=\"{le}\"}}");
            value(&text, &series)
        };
        assert_eq!(bucket("20"), Some(0.0));
        assert_eq!(bucket("50"), Some(1.0));
        assert_eq!(bucket("200"), Some(1.0));
        assert_eq!(bucket("500"), Some(2.0));
        let sum = value(&text, r#"locara_decode_tokens_per_second_sum{model="m"}"#);
        assert!((sum.expect("sum") - 350.0).abs() < 1e-6);
    }

    #[test]
    fn label_values_are_escaped() {
        let tricky = "a\"b\\c";
        let with_newline = "x\ny";
        let m = Metrics::new();
        m.tokens_generated(tricky, 3);
        m.request_finished(with_newline, "/v1/\"odd\"", "stop");
        let text = m.render(&gauges(vec![model(tricky, Phase::Loaded)]));
        assert!(
            text.contains("locara_tokens_generated_total{model=\"a\\\"b\\\\c\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("locara_model_state{model=\"a\\\"b\\\\c\",state=\"loaded\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "locara_requests_total{model=\"x\\ny\",endpoint=\"/v1/\\\"odd\\\"\",outcome=\"stop\"} 1\n"
            ),
            "{text}"
        );
        // A raw line feed would cut a sample in two.
        assert!(
            samples(&text).iter().all(|l| !l.starts_with("y\"")),
            "{text}"
        );
    }

    #[test]
    fn counters_accumulate_across_calls() {
        let m = Metrics::new();
        for _ in 0..5 {
            m.tokens_generated("m", 1);
        }
        m.tokens_generated("m", 10);
        m.prompt_tokens("m", 7);
        m.prompt_tokens("m", 8);
        m.request_finished("m", "/v1/chat/completions", "stop");
        m.request_finished("m", "/v1/chat/completions", "stop");
        m.request_finished("m", "/v1/chat/completions", "cancelled");
        m.evicted("m");
        m.evicted("m");
        m.unloaded("m", "evicted");
        m.unloaded("m", "evicted");
        m.unloaded("m", "pressure_critical");
        m.refused("m", "insufficient_memory");
        m.refused("m", "insufficient_memory");
        m.tokens_generated("other", 4);
        let text = m.render(&gauges(vec![]));
        let tokens = r#"locara_tokens_generated_total{model="m"}"#;
        assert_eq!(value(&text, tokens), Some(15.0));
        let other = r#"locara_tokens_generated_total{model="other"}"#;
        assert_eq!(value(&text, other), Some(4.0));
        let prompt = r#"locara_prompt_tokens_total{model="m"}"#;
        assert_eq!(value(&text, prompt), Some(15.0));
        let request = |outcome: &str| {
            let series = format!(
                "locara_requests_total{{model=\"m\",endpoint=\"/v1/chat/completions\",outcome=\"{outcome}\"}}"
            );
            value(&text, &series)
        };
        assert_eq!(request("stop"), Some(2.0));
        assert_eq!(request("cancelled"), Some(1.0));
        assert_eq!(request("error"), None);
        let evictions = r#"locara_evictions_total{model="m"}"#;
        assert_eq!(value(&text, evictions), Some(2.0));
        let unloads = |reason: &str| {
            let series = format!("locara_model_unloads_total{{model=\"m\",reason=\"{reason}\"}}");
            value(&text, &series)
        };
        assert_eq!(unloads("evicted"), Some(2.0));
        assert_eq!(unloads("pressure_critical"), Some(1.0));
        let refusals = r#"locara_refusals_total{model="m",kind="insufficient_memory"}"#;
        assert_eq!(value(&text, refusals), Some(2.0));
        // A second scrape sees the same totals: rendering does not reset.
        let again = m.render(&gauges(vec![]));
        assert_eq!(value(&again, tokens), Some(15.0));
    }

    #[test]
    fn counters_outlive_the_model_and_gauges_do_not() {
        let m = Metrics::new();
        m.tokens_generated("m", 9);
        let loaded = m.render(&gauges(vec![model("m", Phase::Loaded)]));
        let footprint = r#"locara_model_footprint_bytes{model="m"}"#;
        assert!(value(&loaded, footprint).is_some());
        m.unloaded("m", "idle");
        let unloaded = m.render(&gauges(vec![]));
        let tokens = r#"locara_tokens_generated_total{model="m"}"#;
        assert_eq!(value(&unloaded, tokens), Some(9.0));
        assert_eq!(value(&unloaded, "locara_models_loaded"), Some(0.0));
        assert_eq!(kind(&unloaded, "locara_model_footprint_bytes"), None);
        assert_eq!(kind(&unloaded, "locara_model_state"), None);
    }

    #[test]
    fn models_known_only_from_the_snapshot_get_zero_counters() {
        let m = Metrics::new();
        let text = m.render(&gauges(vec![model("fresh", Phase::Loading)]));
        for family in [
            "locara_tokens_generated_total",
            "locara_prompt_tokens_total",
            "locara_evictions_total",
        ] {
            let series = format!("{family}{{model=\"fresh\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{family}");
        }
        let ok = r#"locara_model_loads_total{model="fresh",result="ok"}"#;
        assert_eq!(value(&text, ok), Some(0.0));
        // No observations, so no histogram and no ratio yet.
        assert_eq!(kind(&text, "locara_time_to_first_token_seconds"), None);
        assert_eq!(kind(&text, "locara_estimate_error_ratio"), None);
        // Loading is not loaded.
        assert_eq!(value(&text, "locara_models_loaded"), Some(0.0));
    }

    #[test]
    fn a_models_first_event_of_any_kind_starts_its_counters_at_zero() {
        let m = Metrics::new();
        m.refused("m", "queue_full");
        let text = m.render(&gauges(vec![]));
        let error = r#"locara_model_loads_total{model="m",result="error"}"#;
        assert_eq!(value(&text, error), Some(0.0));
        let tokens = r#"locara_tokens_generated_total{model="m"}"#;
        assert_eq!(value(&text, tokens), Some(0.0));
        // Open-ended labels have no series to start at 0.
        assert_eq!(kind(&text, "locara_requests_total"), None);
    }

    #[test]
    fn estimate_error_is_signed_and_the_last_check_wins() {
        let m = Metrics::new();
        let ratio = |m: &Metrics| {
            value(
                &m.render(&gauges(vec![])),
                r#"locara_estimate_error_ratio{model="m"}"#,
            )
        };
        m.estimate_checked("m", 500, 400); // estimate too high
        assert_eq!(ratio(&m), Some(0.25));
        m.estimate_checked("m", 300, 400); // estimate too low
        assert_eq!(ratio(&m), Some(-0.25));
        m.estimate_checked("m", 300, 0); // no ratio: ignored
        assert_eq!(ratio(&m), Some(-0.25));
        m.estimate_checked("m", 6 << 30, 6 << 30);
        assert_eq!(ratio(&m), Some(0.0));
    }

    #[test]
    fn pressure_actions_and_freed_bytes_are_counted() {
        let m = Metrics::new();
        m.pressure_level(2);
        m.pressure_action("unload", "critical");
        m.pressure_action("unload", "critical");
        m.pressure_freed("critical", 1000);
        m.pressure_freed("critical", 24);
        let text = m.render(&gauges(vec![]));
        assert_eq!(value(&text, "locara_pressure_level"), Some(2.0));
        let actions = r#"locara_pressure_actions_total{action="unload",level="critical"}"#;
        assert_eq!(value(&text, actions), Some(2.0));
        let freed = r#"locara_pressure_bytes_freed_total{level="critical"}"#;
        assert_eq!(value(&text, freed), Some(1024.0));
    }

    #[test]
    fn power_changes_are_counted_by_mode_and_the_mode_in_force_is_a_gauge() {
        use locara_core::power::PowerMode;
        let m = Metrics::new();
        m.power_changed(PowerMode::ThermalSerious);
        m.power_changed(PowerMode::ThermalCritical);
        m.power_changed(PowerMode::ThermalSerious);
        let text = m.render(&gauges(vec![]));
        assert_eq!(value(&text, "locara_power_mode"), Some(3.0));
        let serious = r#"locara_power_changes_total{mode="thermal-serious"}"#;
        assert_eq!(value(&text, serious), Some(2.0));
        let critical = r#"locara_power_changes_total{mode="thermal-critical"}"#;
        assert_eq!(value(&text, critical), Some(1.0));
    }

    #[test]
    fn empty_daemon_renders_budget_gauges_and_no_model_lines() {
        let text = Metrics::new().render(&gauges(vec![]));
        assert_eq!(
            value(&text, "locara_budget_bytes"),
            Some((11u64 << 30) as f64)
        );
        assert_eq!(
            value(&text, "locara_effective_budget_bytes"),
            Some((8u64 << 30) as f64)
        );
        assert_eq!(value(&text, "locara_models_loaded"), Some(0.0));
        assert_eq!(value(&text, "locara_pressure_level"), Some(0.0));
        assert_eq!(value(&text, "locara_power_mode"), Some(0.0));
        assert_eq!(samples(&text).len(), 5, "{text}");
        assert!(!text.contains("model="), "{text}");
        assert!(text.starts_with("# HELP locara_budget_bytes "), "{text}");
        assert!(
            text.contains("\nlocara_budget_bytes 11811160064\n"),
            "{text}"
        );
    }

    #[test]
    fn a_model_listed_twice_in_the_snapshot_is_exported_once() {
        let mut second = model("m", Phase::Loading);
        second.queue_depth = 9;
        let text = Metrics::new().render(&gauges(vec![model("m", Phase::Loaded), second]));
        // `samples` fails on a duplicate series.
        samples(&text);
        let queue = r#"locara_queue_depth{model="m"}"#;
        assert_eq!(value(&text, queue), Some(2.0));
        assert_eq!(value(&text, "locara_models_loaded"), Some(1.0));
    }

    #[test]
    fn bucket_bounds_increase() {
        for bounds in [
            TIME_TO_FIRST_TOKEN_BUCKETS,
            DECODE_TOKENS_PER_SECOND_BUCKETS,
            MODEL_LOAD_SECONDS_BUCKETS,
        ] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
            assert!(bounds.iter().all(|b| b.is_finite() && *b > 0.0));
        }
    }

    #[test]
    fn updates_from_many_threads_all_count() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.tokens_generated("m", 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let text = m.render(&gauges(vec![]));
        let tokens = r#"locara_tokens_generated_total{model="m"}"#;
        assert_eq!(value(&text, tokens), Some(4000.0));
    }
}
