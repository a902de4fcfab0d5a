//! Prometheus metrics for `GET /metrics`, in the text exposition format
//! 0.0.4, written by hand.
//!
//! The daemon owns one [`Metrics`] value (shared as `Arc<Metrics>`; there are
//! no global statics). Two kinds of numbers reach it:
//!
//! * **events** — tokens, finished requests, loads, unloads, evictions,
//!   refusals, estimate checks — are counted as they happen, each update under
//!   one short mutex, cheap enough to call on every token. Counters are
//!   cumulative: a model's counters stay after it unloads.
//! * **current state** — budget, footprint, mapped weights, estimate, model
//!   state, busy sequences, queue depth — is not stored here. At scrape time
//!   the daemon passes a [`Gauges`] snapshot of the governor's state to
//!   [`Metrics::render`], so the exported gauges cannot drift from it.
//!
//! Memory words are docs/ARCHITECTURE.md's: *footprint* is what the OS charges the
//! engine worker, *mapped weights* are the clean, file-backed pages of the
//! mmap'd GGUF (not part of the footprint), the *estimate* is what admission
//! predicted before loading, and the *budget* is the bytes the runtime may
//! hold (the *effective* budget shrinks under memory pressure).
//!
//! ```
//! use std::sync::Arc;
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
//!         state: "loaded".into(),
//!         footprint_bytes: Some(180 << 20),
//!         mapped_weights_bytes: Some(98 << 20),
//!         estimate_bytes: 200 << 20,
//!         sequences_busy: 0,
//!         queue_depth: 0,
//!         kv_pool: None,
//!     }],
//! });
//! assert!(text.contains("locara_models_loaded 1\n"));
//! assert!(text.contains("locara_tokens_generated_total{model=\"smollm2:135m\"} 2\n"));
//! assert!(text.contains("locara_decode_tokens_per_second_last{model=\"smollm2:135m\"} 200\n"));
//! // Serve `text` with this Content-Type.
//! assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
//! ```
//!
//! Label values are taken as given: pass model names the store knows and
//! endpoint, outcome, reason and kind strings from the code, never raw
//! request fields, or one client could grow the series without bound.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text
/// exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Lifecycle state: `loading`, `loaded` or `unloading`.
    pub state: String,
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
}

/// The daemon's Prometheus metrics: event counters and histograms, rendered
/// together with a [`Gauges`] snapshot. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per-model counters, by model name. One mutex: an update is a map
    /// lookup and an add, and a scrape (rare) formats under it.
    models: Mutex<BTreeMap<String, ModelCounters>>,
    /// What the pressure ladder did: actions by (action, level), bytes the
    /// OS gave back by level, and the level in force (0 normal, 1 warn, 2
    /// critical).
    pressure: Mutex<PressureCounters>,
}

#[derive(Debug, Default)]
struct PressureCounters {
    actions: BTreeMap<(String, String), u64>,
    bytes_freed: BTreeMap<String, u64>,
    level: u64,
}

/// Everything counted for one model since the daemon started.
#[derive(Debug)]
struct ModelCounters {
    /// Prompt tokens processed.
    prompt_tokens: u64,
    /// Tokens generated.
    tokens_generated: u64,
    /// Finished requests by (endpoint, outcome).
    requests: BTreeMap<(String, String), u64>,
    /// Successful loads.
    loads_ok: u64,
    /// Failed loads.
    loads_failed: u64,
    /// Unloads by reason.
    unloads: BTreeMap<String, u64>,
    /// Evictions to make room under the budget.
    evictions: u64,
    /// Refusals by kind.
    refusals: BTreeMap<String, u64>,
    /// Signed relative error of the last estimate against the measured
    /// footprint; `None` before the first check.
    estimate_error_ratio: Option<f64>,
    /// Decode rate of the last observed request, tokens per second.
    decode_tokens_per_second_last: Option<f64>,
    /// Time to first token, seconds.
    time_to_first_token: Histogram,
    /// Decode rate per request, tokens per second.
    decode_tokens_per_second: Histogram,
    /// Duration of successful loads, seconds.
    load_seconds: Histogram,
    /// K/V pool resizes by direction (`grow`, `shrink`).
    pool_resizes: BTreeMap<String, u64>,
    /// K/V pool growths the governor refused.
    pool_growth_refused: u64,
}

impl ModelCounters {
    fn new() -> Self {
        Self {
            prompt_tokens: 0,
            tokens_generated: 0,
            requests: BTreeMap::new(),
            loads_ok: 0,
            loads_failed: 0,
            unloads: BTreeMap::new(),
            evictions: 0,
            refusals: BTreeMap::new(),
            estimate_error_ratio: None,
            decode_tokens_per_second_last: None,
            time_to_first_token: Histogram::new(TIME_TO_FIRST_TOKEN_BUCKETS),
            decode_tokens_per_second: Histogram::new(DECODE_TOKENS_PER_SECOND_BUCKETS),
            load_seconds: Histogram::new(MODEL_LOAD_SECONDS_BUCKETS),
            pool_resizes: BTreeMap::new(),
            pool_growth_refused: 0,
        }
    }
}

/// A Prometheus histogram with fixed bucket bounds.
#[derive(Debug)]
struct Histogram {
    /// Upper bounds (inclusive), increasing; `+Inf` is implicit.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one per bound; those above
    /// every bound are only in `count`.
    counts: Vec<u64>,
    /// Sum of all observations.
    sum: f64,
    /// Number of observations: the `+Inf` bucket.
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records `value`; a NaN, infinite or negative value is dropped, because
    /// it would poison `_sum` for the rest of the daemon's life.
    fn observe(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&bound| value <= bound) {
            self.counts[i] = self.counts[i].saturating_add(1);
        }
        self.sum += value;
        self.count = self.count.saturating_add(1);
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(value) => *value = value.saturating_add(n),
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

impl Metrics {
    /// No events counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A poisoned lock still holds valid counters (every update is a plain
    /// add), and metrics must never take the daemon down.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ModelCounters>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `update` on `model`'s counters, creating them on first use. The
    /// model name is copied only then, so the per-token path does not
    /// allocate.
    fn with_model(&self, model: &str, update: impl FnOnce(&mut ModelCounters)) {
        let mut models = self.lock();
        match models.get_mut(model) {
            Some(counters) => update(counters),
            None => {
                let mut counters = ModelCounters::new();
                update(&mut counters);
                models.insert(model.to_owned(), counters);
            }
        }
    }

    /// Counts one action of the pressure ladder
    /// (`locara_pressure_actions_total{action,level}`).
    pub fn pressure_action(&self, action: &str, level: &str) {
        let mut p = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        *p.actions
            .entry((action.to_owned(), level.to_owned()))
            .or_insert(0) += 1;
    }

    /// Adds bytes the OS gave back after a pressure unload
    /// (`locara_pressure_bytes_freed_total{level}`).
    pub fn pressure_freed(&self, level: &str, bytes: u64) {
        let mut p = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        let e = p.bytes_freed.entry(level.to_owned()).or_insert(0);
        *e = e.saturating_add(bytes);
    }

    /// The pressure level in force: 0 normal, 1 warn, 2 critical
    /// (`locara_pressure_level`).
    pub fn pressure_level(&self, level: u64) {
        self.pressure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .level = level;
    }

    /// Counts `n` generated tokens (`locara_tokens_generated_total{model}`).
    /// Cheap enough to call once per token.
    pub fn tokens_generated(&self, model: &str, n: u64) {
        self.with_model(model, |m| {
            m.tokens_generated = m.tokens_generated.saturating_add(n)
        });
    }

    /// Counts `n` processed prompt tokens (`locara_prompt_tokens_total{model}`).
    pub fn prompt_tokens(&self, model: &str, n: u64) {
        self.with_model(model, |m| {
            m.prompt_tokens = m.prompt_tokens.saturating_add(n)
        });
    }

    /// Counts one finished request
    /// (`locara_requests_total{model,endpoint,outcome}`). `endpoint` is the
    /// route, e.g. `/v1/chat/completions`; `outcome` is how it ended: `stop`,
    /// `length`, `cancelled` or `error`.
    pub fn request_finished(&self, model: &str, endpoint: &str, outcome: &str) {
        self.with_model(model, |m| {
            let count = m
                .requests
                .entry((endpoint.to_owned(), outcome.to_owned()))
                .or_insert(0);
            *count = count.saturating_add(1);
        });
    }

    /// Records the time from accepting a request to its first generated
    /// token, in seconds (`locara_time_to_first_token_seconds{model}`). NaN,
    /// infinite and negative values are dropped.
    pub fn observe_time_to_first_token(&self, model: &str, seconds: f64) {
        self.with_model(model, |m| m.time_to_first_token.observe(seconds));
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
        self.with_model(model, |m| {
            m.decode_tokens_per_second.observe(rate);
            m.decode_tokens_per_second_last = Some(rate);
        });
    }

    /// Counts one unload (`locara_model_unloads_total{model,reason}`);
    /// `reason` is one of `idle`, `evicted`, `requested`, `worker_died`,
    /// `shutdown`, `pressure_warn`, `pressure_critical`.
    pub fn unloaded(&self, model: &str, reason: &str) {
        self.with_model(model, |m| bump(&mut m.unloads, reason, 1));
    }

    /// Counts one eviction of `model` to make room under the budget
    /// (`locara_evictions_total{model}`).
    pub fn evicted(&self, model: &str) {
        self.with_model(model, |m| m.evictions = m.evictions.saturating_add(1));
    }

    /// Counts one finished load (`locara_model_loads_total{model,result}`,
    /// `result` being `ok` or `error`) and, if it succeeded, records its
    /// duration in seconds (`locara_model_load_seconds{model}`). Failed loads
    /// are left out of the histogram: they often fail at once (a bad file, a
    /// refused manifest) and would hide how long real loads take.
    pub fn load_finished(&self, model: &str, seconds: f64, ok: bool) {
        self.with_model(model, |m| {
            if ok {
                m.loads_ok = m.loads_ok.saturating_add(1);
                m.load_seconds.observe(seconds);
            } else {
                m.loads_failed = m.loads_failed.saturating_add(1);
            }
        });
    }

    /// Counts one resize of the model's K/V pool
    /// (`locara_kv_pool_resizes_total{model,direction}`).
    pub fn pool_resized(&self, model: &str, grew: bool) {
        let direction = if grew { "grow" } else { "shrink" };
        self.with_model(model, |m| bump(&mut m.pool_resizes, direction, 1));
    }

    /// Counts one growth of the model's K/V pool that the governor refused
    /// (`locara_kv_pool_growth_refused_total{model}`).
    pub fn pool_growth_refused(&self, model: &str) {
        self.with_model(model, |m| {
            m.pool_growth_refused = m.pool_growth_refused.saturating_add(1)
        });
    }

    /// Counts one refused request or load (`locara_refusals_total{model,kind}`);
    /// `kind` is e.g. `insufficient_memory`, `queue_full` or `held`.
    pub fn refused(&self, model: &str, kind: &str) {
        self.with_model(model, |m| bump(&mut m.refusals, kind, 1));
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
        self.with_model(model, |m| m.estimate_error_ratio = Some(ratio));
    }

    /// Renders every metric family, the snapshot's gauges and all counters
    /// and histograms, as Prometheus text (serve with [`CONTENT_TYPE`]).
    ///
    /// Each family has one `# HELP` and one `# TYPE` line before its samples,
    /// and families are not interleaved. A family with no samples is left out
    /// entirely. Per-model counters without open-ended labels (tokens,
    /// prompt tokens, loads, evictions) are exported, at 0 if need be, for
    /// every model either in `gauges` or seen by an event, so that a rate
    /// over them counts from the first event.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut snapshot: Vec<&ModelGauges> = gauges.models.iter().collect();
        snapshot.sort_by(|a, b| a.model.cmp(&b.model));
        snapshot.dedup_by(|later, first| later.model == first.model);

        let counters = self.lock();
        let idle = ModelCounters::new();
        let known: BTreeSet<&str> = counters
            .keys()
            .map(String::as_str)
            .chain(snapshot.iter().map(|m| m.model.as_str()))
            .collect();
        let counters_of = |model: &str| counters.get(model).unwrap_or(&idle);

        let mut out = String::with_capacity(4096);

        Family::new(
            &mut out,
            "locara_budget_bytes",
            Kind::Gauge,
            "Bytes the runtime may hold: the configured memory budget.",
        )
        .sample("", &[], gauges.budget_bytes);
        Family::new(
            &mut out,
            "locara_effective_budget_bytes",
            Kind::Gauge,
            "Bytes the runtime may hold now: the budget after shrinking for memory pressure.",
        )
        .sample("", &[], gauges.effective_budget_bytes);
        let loaded = snapshot.iter().filter(|m| m.state == "loaded").count();
        Family::new(
            &mut out,
            "locara_models_loaded",
            Kind::Gauge,
            "Models whose engine worker is loaded and serving.",
        )
        .sample("", &[], loaded as u64);
        {
            let p = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
            Family::new(
                &mut out,
                "locara_pressure_level",
                Kind::Gauge,
                "Memory pressure level in force: 0 normal, 1 warn, 2 critical.",
            )
            .sample("", &[], p.level);
            let mut f = Family::new(
                &mut out,
                "locara_pressure_actions_total",
                Kind::Counter,
                "Actions the pressure ladder took, by action and level.",
            );
            for ((action, level), n) in &p.actions {
                f.sample("", &[("action", action), ("level", level)], *n);
            }
            let mut f = Family::new(
                &mut out,
                "locara_pressure_bytes_freed_total",
                Kind::Counter,
                "Bytes the OS gave back after pressure unloads (the workers' measured footprints), by level.",
            );
            for (level, n) in &p.bytes_freed {
                f.sample("", &[("level", level)], *n);
            }
        }

        let mut f = Family::new(
            &mut out,
            "locara_model_state",
            Kind::Gauge,
            "Lifecycle state of each model the governor tracks (1 for its current state: loading, loaded or unloading).",
        );
        for m in &snapshot {
            f.sample("", &[("model", &m.model), ("state", &m.state)], 1u64);
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_estimate_bytes",
            Kind::Gauge,
            "Footprint in bytes that admission estimated for the model (weights, KV cache, compute buffers, overhead).",
        );
        for m in &snapshot {
            f.sample("", &[("model", &m.model)], m.estimate_bytes);
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_footprint_bytes",
            Kind::Gauge,
            "Measured footprint in bytes of the model's engine worker (macOS phys_footprint; Linux Anonymous + Swap from smaps_rollup).",
        );
        for m in &snapshot {
            if let Some(bytes) = m.footprint_bytes {
                f.sample("", &[("model", &m.model)], bytes);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_mapped_weights_bytes",
            Kind::Gauge,
            "Resident bytes of the model's mmap'd GGUF weights: clean, file-backed pages, reclaimable without swap, not part of the footprint.",
        );
        for m in &snapshot {
            if let Some(bytes) = m.mapped_weights_bytes {
                f.sample("", &[("model", &m.model)], bytes);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_kv_pool_cells",
            Kind::Gauge,
            "K/V cells the model's pool holds allocated (one cell: one token of one sequence); it grows with the governor's leave and shrinks when idle.",
        );
        for m in &snapshot {
            if let Some(p) = m.kv_pool {
                f.sample("", &[("model", &m.model)], u64::from(p.cells));
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_kv_pool_used_cells",
            Kind::Gauge,
            "K/V cells of the model's pool that live and cached sequences hold.",
        );
        for m in &snapshot {
            if let Some(p) = m.kv_pool {
                f.sample("", &[("model", &m.model)], u64::from(p.used_cells));
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_kv_cached_sequences",
            Kind::Gauge,
            "Finished conversations the model keeps in its K/V pool for prefix reuse.",
        );
        for m in &snapshot {
            if let Some(p) = m.kv_pool {
                f.sample("", &[("model", &m.model)], u64::from(p.cached_sequences));
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_sequences_busy",
            Kind::Gauge,
            "Sequences (requests) the model's engine worker is decoding now.",
        );
        for m in &snapshot {
            f.sample("", &[("model", &m.model)], u64::from(m.sequences_busy));
        }
        let mut f = Family::new(
            &mut out,
            "locara_queue_depth",
            Kind::Gauge,
            "Requests waiting for a free sequence of the model.",
        );
        for m in &snapshot {
            f.sample("", &[("model", &m.model)], u64::from(m.queue_depth));
        }
        let mut f = Family::new(
            &mut out,
            "locara_estimate_error_ratio",
            Kind::Gauge,
            "Signed error of the last estimate against the measured footprint, (estimate - footprint) / footprint; positive means the estimate was too high.",
        );
        for (model, c) in counters.iter() {
            if let Some(ratio) = c.estimate_error_ratio {
                f.sample("", &[("model", model)], ratio);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_decode_tokens_per_second_last",
            Kind::Gauge,
            "Decode rate of the model's last finished request, in tokens per second.",
        );
        for (model, c) in counters.iter() {
            if let Some(rate) = c.decode_tokens_per_second_last {
                f.sample("", &[("model", model)], rate);
            }
        }

        let mut f = Family::new(
            &mut out,
            "locara_prompt_tokens_total",
            Kind::Counter,
            "Prompt tokens processed.",
        );
        for &model in &known {
            f.sample("", &[("model", model)], counters_of(model).prompt_tokens);
        }
        let mut f = Family::new(
            &mut out,
            "locara_tokens_generated_total",
            Kind::Counter,
            "Tokens generated.",
        );
        for &model in &known {
            f.sample("", &[("model", model)], counters_of(model).tokens_generated);
        }
        let mut f = Family::new(
            &mut out,
            "locara_requests_total",
            Kind::Counter,
            "Finished requests by endpoint and outcome (stop, length, cancelled, error).",
        );
        for (model, c) in counters.iter() {
            for ((endpoint, outcome), &n) in &c.requests {
                f.sample(
                    "",
                    &[
                        ("model", model),
                        ("endpoint", endpoint),
                        ("outcome", outcome),
                    ],
                    n,
                );
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_loads_total",
            Kind::Counter,
            "Finished model loads by result (ok, error).",
        );
        for &model in &known {
            let c = counters_of(model);
            f.sample("", &[("model", model), ("result", "ok")], c.loads_ok);
            f.sample("", &[("model", model), ("result", "error")], c.loads_failed);
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_unloads_total",
            Kind::Counter,
            "Model unloads by reason (idle, evicted, requested, worker_died, shutdown, pressure_warn, pressure_critical).",
        );
        for (model, c) in counters.iter() {
            for (reason, &n) in &c.unloads {
                f.sample("", &[("model", model), ("reason", reason)], n);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_evictions_total",
            Kind::Counter,
            "Times the model was evicted to make room for another under the budget.",
        );
        for &model in &known {
            f.sample("", &[("model", model)], counters_of(model).evictions);
        }
        let mut f = Family::new(
            &mut out,
            "locara_kv_pool_resizes_total",
            Kind::Counter,
            "Resizes of the model's K/V pool, by direction (grow: the governor granted the bytes; shrink: idle or under pressure).",
        );
        for (model, c) in counters.iter() {
            for (direction, &n) in &c.pool_resizes {
                f.sample("", &[("model", model), ("direction", direction)], n);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_kv_pool_growth_refused_total",
            Kind::Counter,
            "Growths of the model's K/V pool the governor refused (budget or pressure): the sequence shifted its context or ended.",
        );
        for (model, c) in counters.iter() {
            if c.pool_growth_refused > 0 {
                f.sample("", &[("model", model)], c.pool_growth_refused);
            }
        }
        let mut f = Family::new(
            &mut out,
            "locara_refusals_total",
            Kind::Counter,
            "Refused requests and loads by kind (insufficient_memory, queue_full, held).",
        );
        for (model, c) in counters.iter() {
            for (kind, &n) in &c.refusals {
                f.sample("", &[("model", model), ("kind", kind)], n);
            }
        }

        let mut f = Family::new(
            &mut out,
            "locara_time_to_first_token_seconds",
            Kind::Histogram,
            "Seconds from accepting a request to its first generated token.",
        );
        for (model, c) in counters.iter() {
            f.histogram(model, &c.time_to_first_token);
        }
        let mut f = Family::new(
            &mut out,
            "locara_decode_tokens_per_second",
            Kind::Histogram,
            "Decode rate of each finished request, in tokens per second.",
        );
        for (model, c) in counters.iter() {
            f.histogram(model, &c.decode_tokens_per_second);
        }
        let mut f = Family::new(
            &mut out,
            "locara_model_load_seconds",
            Kind::Histogram,
            "Seconds to load a model (successful loads only).",
        );
        for (model, c) in counters.iter() {
            f.histogram(model, &c.load_seconds);
        }

        out
    }
}

/// A metric family's type, as the `# TYPE` line spells it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: counts stay integers, measurements are floats.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Self {
        Value::Int(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

/// Writes one family: its `# HELP` and `# TYPE` lines come before its first
/// sample, so a family with no samples writes nothing.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    started: bool,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            out,
            name,
            kind,
            help,
            started: false,
        }
    }

    /// Writes the sample `<family name><suffix>{labels} value`.
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        if !self.started {
            self.started = true;
            self.out.push_str("# HELP ");
            self.out.push_str(self.name);
            self.out.push(' ');
            escape_help(self.out, self.help);
            self.out.push_str("\n# TYPE ");
            self.out.push_str(self.name);
            self.out.push(' ');
            self.out.push_str(self.kind.as_str());
            self.out.push('\n');
        }
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape_label_value(self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::Int(n) => {
                let _ = write!(self.out, "{n}");
            }
            Value::Float(x) => write_f64(self.out, x),
        }
        self.out.push('\n');
    }

    /// Writes `model`'s cumulative `_bucket` samples (ending with `+Inf`,
    /// equal to `_count`), `_sum` and `_count`; nothing before the first
    /// observation.
    fn histogram(&mut self, model: &str, h: &Histogram) {
        if h.count == 0 {
            return;
        }
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (&bound, &n) in h.bounds.iter().zip(&h.counts) {
            cumulative = cumulative.saturating_add(n);
            le.clear();
            write_f64(&mut le, bound);
            self.sample("_bucket", &[("model", model), ("le", &le)], cumulative);
        }
        self.sample("_bucket", &[("model", model), ("le", "+Inf")], h.count);
        self.sample("_sum", &[("model", model)], h.sum);
        self.sample("_count", &[("model", model)], h.count);
    }
}

/// Writes `x` the way Prometheus (Go's `ParseFloat`) reads it: `+Inf`,
/// `-Inf`, `NaN`, or Rust's shortest round-trip decimal (`0.025`, `1`).
fn write_f64(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x == f64::INFINITY {
        out.push_str("+Inf");
    } else if x == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{x}");
    }
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `# HELP` text escapes backslash and line feed (format 0.0.4).
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label (name, value) pairs in output order.
    type Labels = Vec<(String, String)>;

    /// One parsed sample line.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    impl Sample {
        fn label(&self, name: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A parsed exposition: the type of each family, and the samples in order.
    #[derive(Debug)]
    struct Exposition {
        kinds: BTreeMap<String, String>,
        samples: Vec<Sample>,
    }

    impl Exposition {
        /// The value of the one sample named `name` with exactly `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let mut found = self.samples.iter().filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(n, v)| s.label(n) == Some(*v))
            });
            let first = found.next().map(|s| s.value);
            assert!(found.next().is_none(), "{name} {labels:?} twice");
            first
        }

        fn family_names(&self) -> Vec<&str> {
            self.kinds.keys().map(String::as_str).collect()
        }
    }

    fn valid_name(name: &str, colons: bool) -> bool {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'));
        first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    }

    /// A strict reader of the text format 0.0.4 as this module writes it:
    /// panics on anything Prometheus would reject, and on the looser things
    /// it accepts but this module promises not to do (blank lines, a sample
    /// before its family's HELP and TYPE, interleaved families, empty
    /// families, timestamps, NaN, duplicate series).
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with('\n'), "output must end with a line feed");
        let mut helps = BTreeSet::new();
        let mut kinds: BTreeMap<String, String> = BTreeMap::new();
        let mut with_samples = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut series = BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            assert!(!line.is_empty(), "blank line");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name and text");
                assert!(valid_name(name, true), "bad family name {name:?}");
                assert!(!help.trim().is_empty(), "empty HELP for {name}");
                assert!(helps.insert(name.to_owned()), "second HELP for {name}");
                if let Some(previous) = &current {
                    assert!(
                        with_samples.contains(previous),
                        "family {previous} has no samples"
                    );
                }
                current = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name and kind");
                assert_eq!(
                    current.as_deref(),
                    Some(name),
                    "TYPE {name} not right after its HELP"
                );
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "unexpected type {kind:?} of {name}"
                );
                let previous = kinds.insert(name.to_owned(), kind.to_owned());
                assert!(previous.is_none(), "second TYPE for {name}");
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let sample = parse_sample(line);
                let family = family_of(&sample.name, &kinds)
                    .unwrap_or_else(|| panic!("sample {line:?} has no TYPE before it"));
                assert_eq!(
                    current.as_deref(),
                    Some(family.as_str()),
                    "sample {line:?} interleaved into another family"
                );
                match kinds[&family].as_str() {
                    "counter" => {
                        assert!(sample.name.ends_with("_total"), "counter {line:?}");
                        assert!(sample.value >= 0.0 && sample.value.is_finite(), "{line:?}");
                    }
                    "histogram" => {
                        let is_bucket = sample.name.ends_with("_bucket");
                        assert_eq!(is_bucket, sample.label("le").is_some(), "{line:?}");
                    }
                    _ => {}
                }
                let mut key = sample.labels.clone();
                key.sort();
                assert!(
                    series.insert((sample.name.clone(), key)),
                    "duplicate series {line:?}"
                );
                with_samples.insert(family);
                samples.push(sample);
            }
        }
        if let Some(last) = &current {
            assert!(with_samples.contains(last), "family {last} has no samples");
        }
        assert_eq!(helps.len(), kinds.len(), "a HELP without TYPE");
        Exposition { kinds, samples }
    }

    fn family_of(sample: &str, kinds: &BTreeMap<String, String>) -> Option<String> {
        if let Some(kind) = kinds.get(sample) {
            return (kind != "histogram").then(|| sample.to_owned());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            (kinds.get(base)? == "histogram").then(|| base.to_owned())
        })
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("sample name");
        let name = &line[..name_end];
        assert!(valid_name(name, true), "bad sample name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            let mut chars = after_brace.char_indices();
            loop {
                let mut label = String::new();
                let mut c = chars.next().expect("label").1;
                while c != '=' {
                    label.push(c);
                    c = chars.next().expect("label name").1;
                }
                assert!(
                    valid_name(&label, false),
                    "bad label name {label:?} in {line:?}"
                );
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other} in {line:?}"),
                        },
                        '\n' => panic!("raw line feed in {line:?}"),
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.iter().all(|(n, _)| n != &label),
                    "label {label} twice in {line:?}"
                );
                labels.push((label, value));
                match chars.next().expect("',' or '}'") {
                    (_, ',') => continue,
                    (i, '}') => {
                        rest = &after_brace[i + 1..];
                        break;
                    }
                    (_, other) => panic!("unexpected {other:?} in {line:?}"),
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("space before the value");
        assert!(
            !value.contains(' '),
            "timestamp or junk after the value in {line:?}"
        );
        Sample {
            name: name.to_owned(),
            labels,
            value: parse_value(value),
        }
    }

    /// Go's `ParseFloat` spellings only: Rust also reads `inf` and `nan`,
    /// which must not pass here.
    fn parse_value(text: &str) -> f64 {
        match text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => panic!("NaN sample value"),
            _ => {
                assert!(
                    !text.is_empty()
                        && text
                            .chars()
                            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)),
                    "bad value {text:?}"
                );
                text.parse()
                    .unwrap_or_else(|e| panic!("bad value {text:?}: {e}"))
            }
        }
    }

    /// Checks every series of histogram `family`: buckets in increasing `le`
    /// order, cumulative, ending with `+Inf` equal to `_count`, with a `_sum`.
    /// Returns the number of series.
    fn check_histogram(exp: &Exposition, family: &str) -> usize {
        assert_eq!(exp.kinds.get(family).map(String::as_str), Some("histogram"));
        let bucket_name = format!("{family}_bucket");
        // Labels other than `le` -> (le, cumulative count) in output order.
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp.samples.iter().filter(|s| s.name == bucket_name) {
            let rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(n, _)| n != "le")
                .cloned()
                .collect();
            let le = parse_value(s.label("le").expect("le"));
            by_series.entry(rest).or_default().push((le, s.value));
        }
        for (labels, buckets) in &by_series {
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            for pair in buckets.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{family} {labels:?}: le not increasing"
                );
                assert!(
                    pair[0].1 <= pair[1].1,
                    "{family} {labels:?}: not cumulative"
                );
            }
            let (last_le, last_count) = *buckets.last().expect("buckets");
            assert_eq!(
                last_le,
                f64::INFINITY,
                "{family} {labels:?}: last bucket not +Inf"
            );
            let count = exp.value(&format!("{family}_count"), &labels);
            assert_eq!(
                count,
                Some(last_count),
                "{family} {labels:?}: +Inf != _count"
            );
            assert!(exp.value(&format!("{family}_sum"), &labels).is_some());
        }
        by_series.len()
    }

    fn model(name: &str, state: &str) -> ModelGauges {
        ModelGauges {
            model: name.into(),
            state: state.into(),
            footprint_bytes: Some(180 << 20),
            mapped_weights_bytes: Some(98 << 20),
            estimate_bytes: 200 << 20,
            sequences_busy: 1,
            queue_depth: 2,
            kv_pool: Some(KvPoolGauges {
                cells: 2048,
                used_cells: 300,
                cached_sequences: 1,
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
        m
    }

    #[test]
    fn render_is_well_formed_exposition_with_every_family() {
        let m = busy_metrics();
        let text = m.render(&gauges(vec![
            model("smollm2:135m", "loaded"),
            model("gemma3:270m", "loading"),
        ]));
        let exp = parse(&text);
        let expected = [
            ("locara_budget_bytes", "gauge"),
            ("locara_effective_budget_bytes", "gauge"),
            ("locara_models_loaded", "gauge"),
            ("locara_model_state", "gauge"),
            ("locara_model_estimate_bytes", "gauge"),
            ("locara_model_footprint_bytes", "gauge"),
            ("locara_model_mapped_weights_bytes", "gauge"),
            ("locara_sequences_busy", "gauge"),
            ("locara_queue_depth", "gauge"),
            ("locara_kv_pool_cells", "gauge"),
            ("locara_kv_pool_used_cells", "gauge"),
            ("locara_kv_cached_sequences", "gauge"),
            ("locara_kv_pool_resizes_total", "counter"),
            ("locara_kv_pool_growth_refused_total", "counter"),
            ("locara_estimate_error_ratio", "gauge"),
            ("locara_decode_tokens_per_second_last", "gauge"),
            ("locara_prompt_tokens_total", "counter"),
            ("locara_tokens_generated_total", "counter"),
            ("locara_requests_total", "counter"),
            ("locara_model_loads_total", "counter"),
            ("locara_model_unloads_total", "counter"),
            ("locara_evictions_total", "counter"),
            ("locara_refusals_total", "counter"),
            ("locara_time_to_first_token_seconds", "histogram"),
            ("locara_decode_tokens_per_second", "histogram"),
            ("locara_model_load_seconds", "histogram"),
            ("locara_pressure_level", "gauge"),
        ];
        for (name, kind) in expected {
            assert_eq!(
                exp.kinds.get(name).map(String::as_str),
                Some(kind),
                "{name}"
            );
        }
        assert_eq!(exp.kinds.len(), expected.len(), "{:?}", exp.family_names());
        for family in [
            "locara_time_to_first_token_seconds",
            "locara_decode_tokens_per_second",
            "locara_model_load_seconds",
        ] {
            assert_eq!(
                check_histogram(&exp, family),
                2,
                "{family}: one series per model"
            );
        }
        assert_eq!(exp.value("locara_models_loaded", &[]), Some(1.0));
        assert_eq!(
            exp.value("locara_effective_budget_bytes", &[]),
            Some((8u64 << 30) as f64)
        );
        let state = [("model", "gemma3:270m"), ("state", "loading")];
        assert_eq!(exp.value("locara_model_state", &state), Some(1.0));
        let smol = [("model", "smollm2:135m")];
        assert_eq!(exp.value("locara_queue_depth", &smol), Some(2.0));
        assert_eq!(exp.value("locara_sequences_busy", &smol), Some(1.0));
        assert_eq!(
            exp.value("locara_model_mapped_weights_bytes", &smol),
            Some((98u64 << 20) as f64)
        );
        assert_eq!(
            exp.value("locara_decode_tokens_per_second_last", &smol),
            Some(128.0)
        );
        let ok = [("model", "smollm2:135m"), ("result", "ok")];
        let error = [("model", "smollm2:135m"), ("result", "error")];
        assert_eq!(exp.value("locara_model_loads_total", &ok), Some(1.0));
        assert_eq!(exp.value("locara_model_loads_total", &error), Some(1.0));
        // Only the successful load is timed.
        assert_eq!(
            exp.value("locara_model_load_seconds_count", &smol),
            Some(1.0)
        );
        assert_eq!(exp.value("locara_model_load_seconds_sum", &smol), Some(0.7));
        let refusal = [("model", "smollm2:135m"), ("kind", "queue_full")];
        assert_eq!(exp.value("locara_refusals_total", &refusal), Some(1.0));
        let unload = [("model", "smollm2:135m"), ("reason", "idle")];
        assert_eq!(exp.value("locara_model_unloads_total", &unload), Some(1.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count() {
        let m = Metrics::new();
        // 0.1 is a bound: `le` is inclusive, so it lands in le="0.1".
        for seconds in [0.01, 0.03, 0.03, 0.1, 0.7, 100.0] {
            m.observe_time_to_first_token("smollm2:135m", seconds);
        }
        let exp = parse(&m.render(&gauges(vec![])));
        assert_eq!(
            check_histogram(&exp, "locara_time_to_first_token_seconds"),
            1
        );
        let bucket = |le: &str| {
            exp.value(
                "locara_time_to_first_token_seconds_bucket",
                &[("model", "smollm2:135m"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.025"), Some(1.0));
        assert_eq!(bucket("0.05"), Some(3.0));
        assert_eq!(bucket("0.1"), Some(4.0));
        assert_eq!(bucket("0.25"), Some(4.0));
        assert_eq!(bucket("1"), Some(5.0));
        assert_eq!(bucket("30"), Some(5.0));
        assert_eq!(bucket("+Inf"), Some(6.0));
        let smol = [("model", "smollm2:135m")];
        assert_eq!(
            exp.value("locara_time_to_first_token_seconds_count", &smol),
            Some(6.0)
        );
        let sum = exp
            .value("locara_time_to_first_token_seconds_sum", &smol)
            .expect("sum");
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
        let exp = parse(&m.render(&gauges(vec![])));
        let labels = [("model", "m")];
        assert_eq!(
            exp.value("locara_time_to_first_token_seconds_count", &labels),
            Some(1.0)
        );
        assert_eq!(
            exp.value("locara_time_to_first_token_seconds_sum", &labels),
            Some(0.2)
        );
        assert_eq!(
            exp.value("locara_decode_tokens_per_second_count", &labels),
            None
        );
        assert_eq!(
            exp.value("locara_decode_tokens_per_second_last", &labels),
            None
        );
        // The load still counts; its bogus duration is not timed.
        let ok = [("model", "m"), ("result", "ok")];
        assert_eq!(exp.value("locara_model_loads_total", &ok), Some(1.0));
        assert_eq!(exp.value("locara_model_load_seconds_count", &labels), None);
    }

    #[test]
    fn decode_rate_fills_histogram_and_last_value_gauge() {
        let m = Metrics::new();
        m.observe_decode("m", 100, 2.0); // 50 tok/s
        m.observe_decode("m", 30, 0.1); // 300 tok/s, the last one
        let exp = parse(&m.render(&gauges(vec![])));
        check_histogram(&exp, "locara_decode_tokens_per_second");
        let labels = [("model", "m")];
        assert_eq!(
            exp.value("locara_decode_tokens_per_second_last", &labels),
            Some(300.0)
        );
        let bucket = |le: &str| {
            exp.value(
                "locara_decode_tokens_per_second_bucket",
                &[("model", "m"), ("le", le)],
            )
        };
        assert_eq!(bucket("20"), Some(0.0));
        assert_eq!(bucket("50"), Some(1.0));
        assert_eq!(bucket("200"), Some(1.0));
        assert_eq!(bucket("500"), Some(2.0));
        let sum = exp.value("locara_decode_tokens_per_second_sum", &labels);
        assert!((sum.expect("sum") - 350.0).abs() < 1e-6);
    }

    #[test]
    fn label_values_are_escaped() {
        let tricky = "a\"b\\c";
        let with_newline = "x\ny";
        let m = Metrics::new();
        m.tokens_generated(tricky, 3);
        m.request_finished(with_newline, "/v1/\"odd\"", "stop");
        let text = m.render(&gauges(vec![model(tricky, "loaded")]));
        assert!(
            text.contains("locara_tokens_generated_total{model=\"a\\\"b\\\\c\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("locara_model_state{model=\"a\\\"b\\\\c\",state=\"loaded\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("{model=\"x\\ny\",endpoint=\"/v1/\\\"odd\\\"\",outcome=\"stop\"}"));
        // The parser undoes the escapes: the names come back whole.
        let exp = parse(&text);
        assert_eq!(
            exp.value("locara_tokens_generated_total", &[("model", tricky)]),
            Some(3.0)
        );
        let request = [
            ("model", with_newline),
            ("endpoint", "/v1/\"odd\""),
            ("outcome", "stop"),
        ];
        assert_eq!(exp.value("locara_requests_total", &request), Some(1.0));
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
        let exp = parse(&m.render(&gauges(vec![])));
        let labels = [("model", "m")];
        assert_eq!(
            exp.value("locara_tokens_generated_total", &labels),
            Some(15.0)
        );
        assert_eq!(
            exp.value("locara_tokens_generated_total", &[("model", "other")]),
            Some(4.0)
        );
        assert_eq!(exp.value("locara_prompt_tokens_total", &labels), Some(15.0));
        let request = |outcome| {
            exp.value(
                "locara_requests_total",
                &[
                    ("model", "m"),
                    ("endpoint", "/v1/chat/completions"),
                    ("outcome", outcome),
                ],
            )
        };
        assert_eq!(request("stop"), Some(2.0));
        assert_eq!(request("cancelled"), Some(1.0));
        assert_eq!(request("error"), None);
        assert_eq!(exp.value("locara_evictions_total", &labels), Some(2.0));
        let unloads = |reason| {
            exp.value(
                "locara_model_unloads_total",
                &[("model", "m"), ("reason", reason)],
            )
        };
        assert_eq!(unloads("evicted"), Some(2.0));
        assert_eq!(unloads("pressure_critical"), Some(1.0));
        let refusals = [("model", "m"), ("kind", "insufficient_memory")];
        assert_eq!(exp.value("locara_refusals_total", &refusals), Some(2.0));
        // A second scrape sees the same totals: rendering does not reset.
        let again = parse(&m.render(&gauges(vec![])));
        assert_eq!(
            again.value("locara_tokens_generated_total", &labels),
            Some(15.0)
        );
    }

    #[test]
    fn counters_outlive_the_model_and_gauges_do_not() {
        let m = Metrics::new();
        m.tokens_generated("m", 9);
        let loaded = parse(&m.render(&gauges(vec![model("m", "loaded")])));
        assert!(loaded
            .value("locara_model_footprint_bytes", &[("model", "m")])
            .is_some());
        m.unloaded("m", "idle");
        let unloaded = parse(&m.render(&gauges(vec![])));
        assert_eq!(
            unloaded.value("locara_tokens_generated_total", &[("model", "m")]),
            Some(9.0)
        );
        assert_eq!(unloaded.value("locara_models_loaded", &[]), Some(0.0));
        assert!(!unloaded.kinds.contains_key("locara_model_footprint_bytes"));
        assert!(!unloaded.kinds.contains_key("locara_model_state"));
    }

    #[test]
    fn models_known_only_from_the_snapshot_get_zero_counters() {
        let m = Metrics::new();
        let exp = parse(&m.render(&gauges(vec![model("fresh", "loading")])));
        let labels = [("model", "fresh")];
        assert_eq!(
            exp.value("locara_tokens_generated_total", &labels),
            Some(0.0)
        );
        assert_eq!(exp.value("locara_prompt_tokens_total", &labels), Some(0.0));
        assert_eq!(exp.value("locara_evictions_total", &labels), Some(0.0));
        let ok = [("model", "fresh"), ("result", "ok")];
        assert_eq!(exp.value("locara_model_loads_total", &ok), Some(0.0));
        // No observations, so no histogram and no ratio yet.
        assert!(!exp.kinds.contains_key("locara_time_to_first_token_seconds"));
        assert!(!exp.kinds.contains_key("locara_estimate_error_ratio"));
        // Loading is not loaded.
        assert_eq!(exp.value("locara_models_loaded", &[]), Some(0.0));
    }

    #[test]
    fn estimate_error_is_signed_and_the_last_check_wins() {
        let m = Metrics::new();
        let ratio = |m: &Metrics| {
            parse(&m.render(&gauges(vec![])))
                .value("locara_estimate_error_ratio", &[("model", "m")])
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
        let exp = parse(&m.render(&gauges(vec![])));
        assert_eq!(exp.value("locara_pressure_level", &[]), Some(2.0));
        assert_eq!(
            exp.value(
                "locara_pressure_actions_total",
                &[("action", "unload"), ("level", "critical")]
            ),
            Some(2.0)
        );
        assert_eq!(
            exp.value(
                "locara_pressure_bytes_freed_total",
                &[("level", "critical")]
            ),
            Some(1024.0)
        );
    }

    #[test]
    fn empty_daemon_renders_budget_gauges_and_no_model_lines() {
        let text = Metrics::new().render(&gauges(vec![]));
        let exp = parse(&text);
        assert_eq!(
            exp.value("locara_budget_bytes", &[]),
            Some((11u64 << 30) as f64)
        );
        assert_eq!(
            exp.value("locara_effective_budget_bytes", &[]),
            Some((8u64 << 30) as f64)
        );
        assert_eq!(exp.value("locara_models_loaded", &[]), Some(0.0));
        assert_eq!(exp.value("locara_pressure_level", &[]), Some(0.0));
        assert_eq!(exp.samples.len(), 4, "{text}");
        assert!(!text.contains("model="), "{text}");
        assert!(text.starts_with("# HELP locara_budget_bytes "), "{text}");
        assert!(
            text.contains("\nlocara_budget_bytes 11811160064\n"),
            "{text}"
        );
    }

    #[test]
    fn a_model_listed_twice_in_the_snapshot_is_exported_once() {
        let mut second = model("m", "unloading");
        second.queue_depth = 9;
        let text = Metrics::new().render(&gauges(vec![model("m", "loaded"), second]));
        // `parse` panics on a duplicate series.
        let exp = parse(&text);
        assert_eq!(
            exp.value("locara_queue_depth", &[("model", "m")]),
            Some(2.0)
        );
        assert_eq!(exp.value("locara_models_loaded", &[]), Some(1.0));
    }

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        let cases = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1.0, "1"),
            (0.025, "0.025"),
            (-0.25, "-0.25"),
            (1e-7, "0.0000001"),
        ];
        for (x, expected) in cases {
            let mut out = String::new();
            write_f64(&mut out, x);
            assert_eq!(out, expected);
        }
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
        let exp = parse(&m.render(&gauges(vec![])));
        assert_eq!(
            exp.value("locara_tokens_generated_total", &[("model", "m")]),
            Some(4000.0)
        );
    }
}
