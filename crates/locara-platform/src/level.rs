//! Turning readings into a pressure level: pure code, fed with samples and
//! the time as a value, so scripted sequences test it without an OS or a
//! clock.
//!
//! A level rises at once, on the first reading that calls for it. It drops
//! only after a quiet period with no reading at or above it, so a machine that
//! hovers around a threshold does not make the runtime load and unload models
//! every second.
//!
//! ```
//! use locara_platform::{LevelDeriver, PressureConfig, PressureLevel, PressureSample, Psi};
//! use std::time::Duration;
//!
//! let config = PressureConfig::default(); // quiet period 30 s
//! let mut deriver = LevelDeriver::new(config);
//! let mut sample = PressureSample::from_memory(8 << 30, 16 << 30);
//! sample.psi = Some(Psi::with_some_avg10(25.0)); // tasks stalled 25 % of the time
//! let change = deriver.observe(&sample, Duration::from_secs(0)).unwrap();
//! assert_eq!(change.to, PressureLevel::Warn);
//!
//! sample.psi = Some(Psi::with_some_avg10(0.0));
//! assert!(deriver.observe(&sample, Duration::from_secs(29)).is_none());
//! let change = deriver.observe(&sample, Duration::from_secs(30)).unwrap();
//! assert_eq!(change.to, PressureLevel::Normal);
//! ```

use crate::{CgroupEvents, PlatformError, PressureLevel, Psi, PsiAverages};
use locara_core::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Thresholds that turn one reading into a level (Linux; macOS reports its
/// own level). PSI figures are percent of wall time (0 to 100) over the last
/// 10 seconds; available-memory figures are fractions (0 to 1) of the usable
/// memory (the cgroup's limit where that is lower than the RAM).
///
/// The defaults act well before a killer would: systemd-oomd's default kill
/// point is `full` pressure of 60 % for 30 s (`ManagedOOMMemoryPressureLimit`,
/// `ManagedOOMMemoryPressureDurationSec`), so `critical` starts at a third of
/// that. The available-memory steps are our choice: below 10 % the kernel is
/// reclaiming cache in earnest, below 5 % it is close to swapping or killing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// `warn` when PSI `some` avg10 reaches this (percent). Default 10.
    pub warn_some_avg10: f64,
    /// `critical` when PSI `some` avg10 reaches this (percent). Default 40.
    pub critical_some_avg10: f64,
    /// `warn` when PSI `full` avg10 reaches this (percent). Default 5.
    pub warn_full_avg10: f64,
    /// `critical` when PSI `full` avg10 reaches this (percent). Default 20.
    pub critical_full_avg10: f64,
    /// `warn` when available memory, less the loaded models' mapped
    /// weights ([`PressureSample::held_mapped`]), falls below this fraction.
    /// Default 0.10.
    pub warn_available_fraction: f64,
    /// `critical` when available memory falls below this fraction. Default 0.05.
    pub critical_available_fraction: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warn_some_avg10: 10.0,
            critical_some_avg10: 40.0,
            warn_full_avg10: 5.0,
            critical_full_avg10: 20.0,
            warn_available_fraction: 0.10,
            critical_available_fraction: 0.05,
        }
    }
}

/// A PSI trigger: wake when tasks stalled on memory for `stall_us` within a
/// `window_us` window. The default, 150 ms in 1 s, is the kernel's own
/// example (Documentation/accounting/psi.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PsiTriggerSpec {
    /// Stall time that fires the trigger, in microseconds.
    pub stall_us: u64,
    /// The window, in microseconds: 500 ms to 10 s (the kernel's bounds).
    pub window_us: u64,
}

impl Default for PsiTriggerSpec {
    fn default() -> Self {
        PsiTriggerSpec {
            stall_us: 150_000,
            window_us: 1_000_000,
        }
    }
}

impl PsiTriggerSpec {
    /// The line written to a PSI file to register it (`some 150000 1000000`).
    pub fn line(&self) -> String {
        format!("some {} {}", self.stall_us, self.window_us)
    }
}

/// Everything that shapes how a pressure watch derives and reports levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PressureConfig {
    pub thresholds: Thresholds,
    /// A level drops only after this many seconds without a reading at or
    /// above it. Default 30.
    pub quiet_period_s: u64,
    /// How often the watch reads the OS between events, in milliseconds.
    /// Default 1000.
    pub poll_interval_ms: u64,
    /// The PSI trigger registered on Linux.
    pub psi_trigger: PsiTriggerSpec,
}

impl Default for PressureConfig {
    fn default() -> Self {
        PressureConfig {
            thresholds: Thresholds::default(),
            quiet_period_s: 30,
            poll_interval_ms: 1000,
            psi_trigger: PsiTriggerSpec::default(),
        }
    }
}

impl PressureConfig {
    pub fn quiet_period(&self) -> Duration {
        Duration::from_secs(self.quiet_period_s)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Checks every figure against its range; the error names the field.
    pub fn validate(&self) -> Result<(), PlatformError> {
        fn check(
            field: &'static str,
            ok: bool,
            value: String,
            limit: &'static str,
        ) -> Result<(), PlatformError> {
            if ok {
                Ok(())
            } else {
                Err(PlatformError::InvalidConfig {
                    field,
                    value,
                    limit,
                })
            }
        }
        let t = &self.thresholds;
        let pct = |v: f64| (0.0..=100.0).contains(&v);
        let frac = |v: f64| (0.0..=1.0).contains(&v);
        check(
            "thresholds.warn_some_avg10",
            pct(t.warn_some_avg10),
            t.warn_some_avg10.to_string(),
            "0 to 100",
        )?;
        check(
            "thresholds.critical_some_avg10",
            pct(t.critical_some_avg10) && t.critical_some_avg10 >= t.warn_some_avg10,
            t.critical_some_avg10.to_string(),
            "warn_some_avg10 to 100",
        )?;
        check(
            "thresholds.warn_full_avg10",
            pct(t.warn_full_avg10),
            t.warn_full_avg10.to_string(),
            "0 to 100",
        )?;
        check(
            "thresholds.critical_full_avg10",
            pct(t.critical_full_avg10) && t.critical_full_avg10 >= t.warn_full_avg10,
            t.critical_full_avg10.to_string(),
            "warn_full_avg10 to 100",
        )?;
        check(
            "thresholds.warn_available_fraction",
            frac(t.warn_available_fraction),
            t.warn_available_fraction.to_string(),
            "0 to 1",
        )?;
        check(
            "thresholds.critical_available_fraction",
            frac(t.critical_available_fraction)
                && t.critical_available_fraction <= t.warn_available_fraction,
            t.critical_available_fraction.to_string(),
            "0 to warn_available_fraction",
        )?;
        check(
            "quiet_period_s",
            self.quiet_period_s <= 3600,
            self.quiet_period_s.to_string(),
            "0 to 3600",
        )?;
        check(
            "poll_interval_ms",
            (10..=60_000).contains(&self.poll_interval_ms),
            self.poll_interval_ms.to_string(),
            "10 to 60000",
        )?;
        let p = &self.psi_trigger;
        check(
            "psi_trigger.window_us",
            (500_000..=10_000_000).contains(&p.window_us),
            p.window_us.to_string(),
            "500000 to 10000000 (the kernel's bounds)",
        )?;
        check(
            "psi_trigger.stall_us",
            p.stall_us > 0 && p.stall_us <= p.window_us,
            p.stall_us.to_string(),
            "1 to window_us",
        )
    }
}

/// One reading of everything a level is derived from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureSample {
    /// Memory PSI (Linux).
    pub psi: Option<Psi>,
    /// The PSI trigger fired since the last sample: tasks stalled at least
    /// the trigger's stall time within its window.
    pub psi_trigger_fired: bool,
    /// Available memory in bytes (cgroup-aware).
    pub available: u64,
    /// Bytes of `available` that are this runtime's own: file pages of the
    /// loaded models' weights, mapped by their workers and resident (Linux
    /// counts them in `MemAvailable`). Other processes get them only once
    /// the kernel unmaps them, which is slow: with 3.6 GiB "available", 3 GiB
    /// of it a loaded model's weights, reclaim stalled processes for
    /// seconds before available memory reached the warn threshold. So warn
    /// judges `available - held_mapped`; critical judges `available`, so a
    /// model that fills the machine is never refused for its own weights.
    pub held_mapped: u64,
    /// The memory `available` is a share of: usable memory in bytes. 0 when
    /// unknown (then available memory is not judged).
    pub total: u64,
    /// Cumulative cgroup memory events, when in a memory-limited cgroup.
    pub cgroup_events: Option<CgroupEvents>,
    /// The level the OS reports itself (macOS
    /// `kern.memorystatus_vm_pressure_level` and the dispatch source).
    pub os_level: Option<PressureLevel>,
}

impl PressureSample {
    /// A sample with memory figures only.
    pub fn from_memory(available: u64, total: u64) -> Self {
        PressureSample {
            available,
            total,
            ..PressureSample::default()
        }
    }
}

impl Psi {
    /// PSI with only `some` avg10 set (tests and examples).
    pub fn with_some_avg10(avg10: f64) -> Psi {
        Psi {
            some: PsiAverages {
                avg10,
                ..PsiAverages::default()
            },
            full: Some(PsiAverages::default()),
        }
    }
}

/// The level one reading calls for, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub level: PressureLevel,
    /// The strongest signal, for people and logs.
    pub reason: String,
}

/// The level one sample calls for, with no memory of earlier samples except
/// `previous_events` (the cgroup counters of the last sample, to see which
/// rose).
pub fn assess(
    sample: &PressureSample,
    thresholds: &Thresholds,
    previous_events: Option<&CgroupEvents>,
) -> Assessment {
    use PressureLevel::{Critical, Normal, Warn};
    let mut best = Assessment {
        level: Normal,
        reason: "no pressure signal".into(),
    };
    let mut consider = |level: PressureLevel, reason: &dyn Fn() -> String| {
        if level > best.level {
            best = Assessment {
                level,
                reason: reason(),
            };
        }
    };

    if let Some(level) = sample.os_level {
        consider(level, &|| format!("the OS reports {level}"));
    }
    if let Some(psi) = &sample.psi {
        let some = psi.some.avg10;
        let full = psi.full.map_or(0.0, |f| f.avg10);
        let t = thresholds;
        let full_msg = |limit: f64| format!("PSI full avg10 {full:.1} % ≥ {limit} %");
        let some_msg = |limit: f64| format!("PSI some avg10 {some:.1} % ≥ {limit} %");
        if full >= t.critical_full_avg10 {
            consider(Critical, &|| full_msg(t.critical_full_avg10));
        }
        if some >= t.critical_some_avg10 {
            consider(Critical, &|| some_msg(t.critical_some_avg10));
        }
        if full >= t.warn_full_avg10 {
            consider(Warn, &|| full_msg(t.warn_full_avg10));
        }
        if some >= t.warn_some_avg10 {
            consider(Warn, &|| some_msg(t.warn_some_avg10));
        }
    }
    if sample.psi_trigger_fired {
        consider(Warn, &|| {
            "PSI trigger fired: tasks stalled on memory".into()
        });
    }
    if sample.total > 0 {
        let share = |bytes: u64| bytes as f64 / sample.total as f64;
        let below = |limit: f64| format!("below {:.0} % of {}", limit * 100.0, Bytes(sample.total));
        if share(sample.available) < thresholds.critical_available_fraction {
            consider(Critical, &|| {
                let limit = below(thresholds.critical_available_fraction);
                format!("available {} is {limit}", Bytes(sample.available))
            });
        }
        let others = sample.available.saturating_sub(sample.held_mapped);
        if share(others) < thresholds.warn_available_fraction {
            consider(Warn, &|| {
                let limit = below(thresholds.warn_available_fraction);
                if sample.held_mapped == 0 {
                    format!("available {} is {limit}", Bytes(sample.available))
                } else {
                    format!(
                        "available to other processes {} ({} less {} of model weights \
                         mapped by this runtime) is {limit}",
                        Bytes(others),
                        Bytes(sample.available),
                        Bytes(sample.held_mapped)
                    )
                }
            });
        }
    }
    if let (Some(now), Some(before)) = (&sample.cgroup_events, previous_events) {
        let rose = |name: &str, now: u64, before: u64| {
            format!(
                "cgroup memory event {name} rose by {}",
                now.saturating_sub(before)
            )
        };
        if now.oom_kill > before.oom_kill {
            consider(Critical, &|| {
                rose("oom_kill", now.oom_kill, before.oom_kill)
            });
        }
        if now.oom > before.oom {
            consider(Critical, &|| rose("oom", now.oom, before.oom));
        }
        if now.max > before.max {
            consider(Warn, &|| rose("max", now.max, before.max));
        }
        if now.high > before.high {
            consider(Warn, &|| rose("high", now.high, before.high));
        }
    }
    best
}

/// A change of the reported level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelChange {
    pub from: PressureLevel,
    pub to: PressureLevel,
    /// Why: the signal that raised the level, or the quiet period that let
    /// it drop.
    pub reason: String,
}

/// Derives the reported level from a sequence of samples, with hysteresis:
/// each level is held until `quiet_period` has passed without a reading at or
/// above it. Time is a value (`now`: any monotonic clock's reading since a
/// fixed origin), so tests script it.
#[derive(Debug, Clone)]
pub struct LevelDeriver {
    config: PressureConfig,
    level: PressureLevel,
    /// The last time a reading was at or above warn, and at or above critical.
    last_warn: Option<Duration>,
    last_critical: Option<Duration>,
    last_events: Option<CgroupEvents>,
}

impl LevelDeriver {
    pub fn new(config: PressureConfig) -> Self {
        LevelDeriver {
            config,
            level: PressureLevel::Normal,
            last_warn: None,
            last_critical: None,
            last_events: None,
        }
    }

    /// The level reported now.
    pub fn level(&self) -> PressureLevel {
        self.level
    }

    /// Takes one sample at `now`; returns the change of the reported level,
    /// if any.
    pub fn observe(&mut self, sample: &PressureSample, now: Duration) -> Option<LevelChange> {
        let raw = assess(sample, &self.config.thresholds, self.last_events.as_ref());
        if sample.cgroup_events.is_some() {
            self.last_events = sample.cgroup_events;
        }
        if raw.level >= PressureLevel::Warn {
            self.last_warn = Some(now);
        }
        if raw.level >= PressureLevel::Critical {
            self.last_critical = Some(now);
        }
        let quiet = self.config.quiet_period();
        let held = |t: Option<Duration>| t.is_some_and(|t| now.saturating_sub(t) < quiet);
        let held_level = if held(self.last_critical) {
            PressureLevel::Critical
        } else if held(self.last_warn) {
            PressureLevel::Warn
        } else {
            PressureLevel::Normal
        };
        let new = held_level.max(raw.level);
        if new == self.level {
            return None;
        }
        let reason = if new > self.level {
            raw.reason
        } else {
            format!(
                "no {}-level signal for {} s",
                self.level, self.config.quiet_period_s
            )
        };
        let change = LevelChange {
            from: self.level,
            to: new,
            reason,
        };
        self.level = new;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PressureLevel::{Critical, Normal, Warn};

    const GIB: u64 = 1 << 30;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn psi(some: f64, full: f64) -> PressureSample {
        PressureSample {
            psi: Some(Psi {
                some: PsiAverages {
                    avg10: some,
                    ..Default::default()
                },
                full: Some(PsiAverages {
                    avg10: full,
                    ..Default::default()
                }),
            }),
            available: 8 * GIB,
            total: 16 * GIB,
            ..Default::default()
        }
    }

    /// Runs (time in s, sample) through a deriver; returns the level after each.
    fn run(config: PressureConfig, script: &[(u64, PressureSample)]) -> Vec<PressureLevel> {
        let mut d = LevelDeriver::new(config);
        script
            .iter()
            .map(|(t, s)| {
                d.observe(s, secs(*t));
                d.level()
            })
            .collect()
    }

    #[test]
    fn calm_machine_stays_normal() {
        let levels = run(
            PressureConfig::default(),
            &[(0, psi(0.0, 0.0)), (1, psi(3.0, 0.5))],
        );
        assert_eq!(levels, [Normal, Normal]);
    }

    #[test]
    fn level_rises_at_once_and_drops_only_after_the_quiet_period() {
        let script = [
            (0, psi(0.0, 0.0)),
            (1, psi(12.0, 0.0)), // warn
            (2, psi(2.0, 0.0)),
            (30, psi(2.0, 0.0)), // 29 s since the last warn reading: held
            (31, psi(2.0, 0.0)), // 30 s: drops
        ];
        let levels = run(PressureConfig::default(), &script);
        assert_eq!(levels, [Normal, Warn, Warn, Warn, Normal]);
    }

    #[test]
    fn hovering_around_the_threshold_holds_the_level() {
        // Above, below, above ... every 10 s: never 30 s quiet.
        let script: Vec<_> = (0..10)
            .map(|i| (i * 10, psi(if i % 2 == 0 { 11.0 } else { 9.0 }, 0.0)))
            .collect();
        let levels = run(PressureConfig::default(), &script);
        assert!(levels.iter().all(|&l| l == Warn), "{levels:?}");
    }

    #[test]
    fn critical_steps_down_through_warn_while_warn_signals_last() {
        let script = [
            (0, psi(50.0, 25.0)), // critical
            (10, psi(15.0, 0.0)), // warn-level signal
            (35, psi(15.0, 0.0)), // 35 s since critical: down to warn
            (50, psi(0.0, 0.0)),
            (64, psi(0.0, 0.0)), // 29 s since the last warn reading
            (65, psi(0.0, 0.0)), // 30 s: normal
        ];
        let levels = run(PressureConfig::default(), &script);
        assert_eq!(levels, [Critical, Critical, Warn, Warn, Warn, Normal]);
    }

    #[test]
    fn critical_drops_straight_to_normal_when_all_is_quiet() {
        let script = [
            (0, psi(0.0, 30.0)),
            (29, psi(0.0, 0.0)),
            (30, psi(0.0, 0.0)),
        ];
        let levels = run(PressureConfig::default(), &script);
        assert_eq!(levels, [Critical, Critical, Normal]);
    }

    #[test]
    fn zero_quiet_period_follows_the_readings() {
        let config = PressureConfig {
            quiet_period_s: 0,
            ..Default::default()
        };
        let script = [(0, psi(12.0, 0.0)), (0, psi(0.0, 0.0)), (1, psi(45.0, 0.0))];
        assert_eq!(run(config, &script), [Warn, Normal, Critical]);
    }

    #[test]
    fn available_memory_alone_raises_the_level() {
        let total = 16 * GIB;
        let script = [
            (0, PressureSample::from_memory(2 * GIB, total)), // 12.5 %
            (1, PressureSample::from_memory(GIB + GIB / 2, total)), // 9.4 %: warn
            (2, PressureSample::from_memory(GIB / 2, total)), // 3.1 %: critical
        ];
        assert_eq!(
            run(PressureConfig::default(), &script),
            [Normal, Warn, Critical]
        );
        // Unknown total: not judged.
        let unknown = [(0, PressureSample::from_memory(0, 0))];
        assert_eq!(run(PressureConfig::default(), &unknown), [Normal]);
    }

    #[test]
    fn warn_counts_the_models_mapped_weights_as_not_available_and_critical_does_not() {
        let total = 16 * GIB;
        let held = |available: u64, held_mapped: u64| PressureSample {
            held_mapped,
            ..PressureSample::from_memory(available, total)
        };
        let t = Thresholds::default();
        // 5 GiB available, 4 GiB of it a loaded model's weights: 1 GiB
        // (6 %) is left to others.
        let a = assess(&held(5 * GIB, 4 * GIB), &t, None);
        assert_eq!(a.level, Warn);
        assert_eq!(
            a.reason,
            "available to other processes 1.0 GiB (5.0 GiB less 4.0 GiB of model weights \
             mapped by this runtime) is below 10 % of 16.0 GiB"
        );
        // The same figures with no model loaded: normal.
        assert_eq!(assess(&held(5 * GIB, 0), &t, None).level, Normal);
        // Held bytes beyond what is available leave nothing, not less.
        assert_eq!(assess(&held(GIB, 4 * GIB), &t, None).level, Warn);
        // 0.5 GiB (3 %) available is critical whatever is held; 1 GiB
        // (6 %) with all of it the model's weights is warn, not critical.
        assert_eq!(assess(&held(GIB / 2, 0), &t, None).level, Critical);
        assert_eq!(assess(&held(GIB, GIB), &t, None).level, Warn);
    }

    #[test]
    fn thresholds_are_configurable() {
        let mut config = PressureConfig::default();
        config.thresholds.warn_some_avg10 = 2.0;
        assert_eq!(run(config, &[(0, psi(3.0, 0.0))]), [Warn]);
    }

    #[test]
    fn cgroup_events_count_only_when_they_rise() {
        let with = |events: CgroupEvents| PressureSample {
            cgroup_events: Some(events),
            ..PressureSample::from_memory(4 * GIB, 8 * GIB)
        };
        let base = CgroupEvents {
            high: 5,
            max: 2,
            oom: 0,
            oom_kill: 0,
        };
        let script = [
            // The first reading is the baseline, however high its counters.
            (0, with(base)),
            (1, with(base)),
            (2, with(CgroupEvents { max: 3, ..base })),
            (
                3,
                with(CgroupEvents {
                    max: 3,
                    oom_kill: 1,
                    ..base
                }),
            ),
        ];
        assert_eq!(
            run(PressureConfig::default(), &script),
            [Normal, Normal, Warn, Critical]
        );
    }

    #[test]
    fn a_fired_trigger_is_a_warn_reading() {
        let mut fired = psi(0.0, 0.0);
        fired.psi_trigger_fired = true;
        let script = [(0, fired), (10, psi(0.0, 0.0)), (30, psi(0.0, 0.0))];
        assert_eq!(
            run(PressureConfig::default(), &script),
            [Warn, Warn, Normal]
        );
    }

    #[test]
    fn the_os_level_is_taken_as_it_is_with_the_same_hysteresis() {
        let os = |level| PressureSample {
            os_level: Some(level),
            ..Default::default()
        };
        let script = [
            (0, os(Warn)),
            (5, os(Normal)),
            (20, os(Critical)),
            (40, os(Normal)),
            (50, os(Normal)),
        ];
        assert_eq!(
            run(PressureConfig::default(), &script),
            [Warn, Warn, Critical, Critical, Normal]
        );
    }

    #[test]
    fn changes_carry_their_reasons() {
        let mut d = LevelDeriver::new(PressureConfig::default());
        let up = d.observe(&psi(0.0, 22.5), secs(0)).unwrap();
        assert_eq!((up.from, up.to), (Normal, Critical));
        assert_eq!(up.reason, "PSI full avg10 22.5 % ≥ 20 %");
        assert!(d.observe(&psi(0.0, 0.0), secs(10)).is_none());
        let down = d.observe(&psi(0.0, 0.0), secs(30)).unwrap();
        assert_eq!((down.from, down.to), (Critical, Normal));
        assert_eq!(down.reason, "no critical-level signal for 30 s");
    }

    /// Invariants over a long pseudo-random script: the reported level is
    /// never below the reading, and it only drops after a quiet period.
    #[test]
    fn hysteresis_invariants_hold_on_a_random_walk() {
        let config = PressureConfig::default();
        let mut d = LevelDeriver::new(config);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut last_at_or_above = [None::<u64>; 3];
        for t in 0..5_000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let some = ((seed >> 33) % 60) as f64;
            let sample = psi(some, 0.0);
            let raw = assess(&sample, &config.thresholds, None).level;
            let before = d.level();
            d.observe(&sample, secs(t));
            let after = d.level();
            for l in PressureLevel::ALL {
                if raw >= l {
                    last_at_or_above[l as usize] = Some(t);
                }
            }
            assert!(after >= raw, "t={t}: reported {after} below reading {raw}");
            if after < before {
                let last = last_at_or_above[before as usize].unwrap();
                assert!(
                    t - last >= config.quiet_period_s,
                    "t={t}: dropped {before}->{after} after {} s",
                    t - last
                );
            }
        }
    }

    #[test]
    fn config_errors_name_the_field_and_the_limit() {
        let mut c = PressureConfig::default();
        assert!(c.validate().is_ok());
        c.thresholds.critical_available_fraction = 0.2;
        let err = c.validate().unwrap_err();
        assert_eq!(err.kind(), "invalid_config");
        assert!(
            err.to_string()
                .contains("thresholds.critical_available_fraction"),
            "{err}"
        );
        let c = PressureConfig {
            psi_trigger: PsiTriggerSpec {
                stall_us: 100,
                window_us: 100,
            },
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("psi_trigger.window_us"));
        assert_eq!(PsiTriggerSpec::default().line(), "some 150000 1000000");
    }
}
