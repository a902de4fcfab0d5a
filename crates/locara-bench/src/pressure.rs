//! The pressure benchmark's pieces (`locara-pressure-bench`): the probe, a
//! process that wakes on a fixed period and touches its own memory, whose
//! lateness says what a machine short of memory costs its neighbours; and
//! the report that sets a daemon whose governor answers the pressure against
//! one that ignores it.

use crate::stats::Summary;
use locara_core::Bytes;
use locara_platform::PressureLevel;
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One write per this many bytes touches every page.
const PAGE: usize = 4096;

/// What the probe measured, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// Wakes it made.
    pub wakes: u64,
    /// Periods it skipped because it woke more than a period late.
    pub missed: u64,
    /// Lateness of a wake: the time it woke less the time it was due.
    pub late_p50_us: u64,
    pub late_p99_us: u64,
    pub late_max_us: u64,
    /// Time to touch every page of its memory once.
    pub touch_p50_us: u64,
    pub touch_p99_us: u64,
    pub touch_max_us: u64,
}

const PREFIX: &str = "probe:";

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} wakes={} missed={} late_p50_us={} late_p99_us={} late_max_us={} \
             touch_p50_us={} touch_p99_us={} touch_max_us={}",
            self.wakes,
            self.missed,
            self.late_p50_us,
            self.late_p99_us,
            self.late_max_us,
            self.touch_p50_us,
            self.touch_p99_us,
            self.touch_max_us
        )
    }
}

impl FromStr for ProbeResult {
    type Err = String;

    /// Reads [`ProbeResult`]'s line back.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let rest = line
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("not the probe's line: {line:?}"))?;
        let get = |name: &str| -> Result<u64, String> {
            rest.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse().ok())
                .ok_or_else(|| format!("the probe's line has no {name}: {line:?}"))
        };
        Ok(ProbeResult {
            wakes: get("wakes")?,
            missed: get("missed")?,
            late_p50_us: get("late_p50_us")?,
            late_p99_us: get("late_p99_us")?,
            late_max_us: get("late_max_us")?,
            touch_p50_us: get("touch_p50_us")?,
            touch_p99_us: get("touch_p99_us")?,
            touch_max_us: get("touch_max_us")?,
        })
    }
}

/// The nearest-rank percentile `p` (0 to 1) of sorted samples; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl ProbeResult {
    /// The result of wakes late by `late` and touches that took `touch`,
    /// microseconds each, with `missed` periods skipped.
    pub fn of(mut late: Vec<u64>, mut touch: Vec<u64>, missed: u64) -> ProbeResult {
        late.sort_unstable();
        touch.sort_unstable();
        ProbeResult {
            wakes: late.len() as u64,
            missed,
            late_p50_us: percentile(&late, 0.50),
            late_p99_us: percentile(&late, 0.99),
            late_max_us: late.last().copied().unwrap_or(0),
            touch_p50_us: percentile(&touch, 0.50),
            touch_p99_us: percentile(&touch, 0.99),
            touch_max_us: touch.last().copied().unwrap_or(0),
        }
    }
}

/// The probe: takes `bytes` of memory and writes every page of it, calls
/// `ready`, then every `period` wakes and writes every page again, until
/// `stop` says so. A wake more than a period late skips the periods it
/// missed (counted), so one stall is one late wake, not a burst.
pub fn run_probe(
    bytes: usize,
    period: Duration,
    ready: impl FnOnce(),
    stop: impl Fn() -> bool,
) -> ProbeResult {
    let mut memory = vec![0u8; bytes];
    let touch = |memory: &mut Vec<u8>, round: u8| {
        for i in (0..memory.len()).step_by(PAGE) {
            memory[i] = round;
        }
        std::hint::black_box(&mut *memory);
    };
    touch(&mut memory, 1);
    ready();
    let (mut late, mut touches, mut missed) = (Vec::new(), Vec::new(), 0u64);
    let mut due = Instant::now() + period;
    let mut round = 1u8;
    while !stop() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let woke = Instant::now();
        late.push((woke - due).as_micros() as u64);
        round = round.wrapping_add(1);
        touch(&mut memory, round);
        touches.push(woke.elapsed().as_micros() as u64);
        due += period;
        let now = Instant::now();
        while due + period <= now {
            due += period;
            missed += 1;
        }
    }
    ProbeResult::of(late, touches, missed)
}

/// Which daemon a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `locara serve` as it ships: its governor answers the OS's pressure.
    Governor,
    /// `locara serve --pressure ignore`: no OS watch.
    Ignore,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Governor => "governor",
            Mode::Ignore => "ignoring pressure",
        }
    }
}

/// One run of the scenario: a daemon holding the models, the probe, and the
/// hog pressing available memory below warn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub mode: Mode,
    pub probe: ProbeResult,
    /// Growth of PSI memory `some` and `full` totals from the hog's start
    /// to its exit, milliseconds.
    pub psi_some_ms: f64,
    pub psi_full_ms: f64,
    /// From the hog's start to its exit, seconds.
    pub window_s: f64,
    /// The hog reached its target; how long it took, seconds; the most it
    /// held, bytes.
    pub hog_reached: bool,
    pub hog_reach_s: f64,
    pub hog_peak: u64,
    /// The least available memory the hog read, bytes.
    pub lowest_available: u64,
    /// The highest level the daemon read from the OS (with `ignore`, which
    /// reads none, the one-reading level of the machine the benchmark read).
    pub top_level: PressureLevel,
    /// Bytes the daemon held before the hog and the least while it held.
    pub held_before: u64,
    pub held_least: u64,
    /// Models loaded when the hog exited.
    pub models_after: usize,
}

/// The benchmark's result: its settings, every run, and the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PressureReport {
    pub locara: String,
    pub models: Vec<String>,
    /// What the machine is, for people.
    pub machine: String,
    pub probe_bytes: u64,
    pub probe_period_ms: u64,
    /// The hog's target and floor, and warn's threshold, bytes of
    /// available memory; how long it held, seconds.
    pub hog_target: u64,
    pub hog_floor: u64,
    pub warn_below: u64,
    pub hold_s: u64,
    /// Runs in the order they ran.
    pub runs: Vec<Run>,
    /// Share of the machine's CPU time (0 to 1) that processes other than
    /// this benchmark, its children and the daemons took during the runs.
    pub others_cpu_share: Option<f64>,
    /// The goal: p99 lateness with the governor at most this share of it
    /// without.
    pub goal: f64,
}

/// One figure on both sides: medians, ranges and the median of the
/// pairs' ratios (governor / ignoring; run `i` of each side ran back to
/// back).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versus {
    pub governor: Summary,
    pub ignoring: Summary,
    pub ratio: Option<f64>,
}

impl Versus {
    fn of(runs: &[Run], figure: impl Fn(&Run) -> f64) -> Option<Versus> {
        let side =
            |m: Mode| -> Vec<f64> { runs.iter().filter(|r| r.mode == m).map(&figure).collect() };
        let (g, i) = (side(Mode::Governor), side(Mode::Ignore));
        let ratios: Vec<f64> = g
            .iter()
            .zip(&i)
            .filter(|(_, i)| **i > 0.0)
            .map(|(g, i)| g / i)
            .collect();
        Some(Versus {
            governor: Summary::of(&g)?,
            ignoring: Summary::of(&i)?,
            ratio: Summary::of(&ratios).map(|s| s.median),
        })
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// One figure of a run, as the table shows it.
type Figure = fn(&Run) -> f64;

impl PressureReport {
    /// The rows of the table: a name and the figure.
    fn rows() -> [(&'static str, Figure); 9] {
        fn ms(us: u64) -> f64 {
            us as f64 / 1000.0
        }
        [
            ("probe lateness p50, ms", |r: &Run| ms(r.probe.late_p50_us)),
            ("probe lateness p99, ms", |r: &Run| ms(r.probe.late_p99_us)),
            ("probe lateness max, ms", |r: &Run| ms(r.probe.late_max_us)),
            ("probe touch p99, ms", |r: &Run| ms(r.probe.touch_p99_us)),
            ("PSI memory some, ms", |r: &Run| r.psi_some_ms),
            ("PSI memory full, ms", |r: &Run| r.psi_full_ms),
            ("daemon held, least, MiB", |r: &Run| {
                r.held_least as f64 / MIB
            }),
            ("models loaded after", |r: &Run| r.models_after as f64),
            ("lowest available, MiB", |r: &Run| {
                r.lowest_available as f64 / MIB
            }),
        ]
    }

    /// The p99 lateness comparison the goal is about.
    pub fn p99(&self) -> Option<Versus> {
        Versus::of(&self.runs, |r| r.probe.late_p99_us as f64)
    }

    /// Whether the p99 ratio meets the goal.
    pub fn pass(&self) -> bool {
        self.p99()
            .and_then(|v| v.ratio)
            .is_some_and(|r| r <= self.goal)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "machine       {}", self.machine);
        let _ = match self.others_cpu_share {
            Some(share) => writeln!(
                s,
                "              other processes took {:.1} % of the CPU while this measured",
                share * 100.0
            ),
            None => writeln!(s, "              CPU taken by other processes unknown"),
        };
        let _ = writeln!(s, "Locara        {}", self.locara);
        let _ = writeln!(
            s,
            "daemon        holds {}, each idle after one chat",
            self.models.join(" and ")
        );
        let _ = writeln!(
            s,
            "probe         {} of its own, every page written every {} ms",
            Bytes(self.probe_bytes),
            self.probe_period_ms
        );
        let _ = writeln!(
            s,
            "hog           takes available memory down to {} (warn below {}, floor {}), holds {} s",
            Bytes(self.hog_target),
            Bytes(self.warn_below),
            Bytes(self.hog_floor),
            self.hold_s
        );
        let reps = self.runs.len() / 2;
        let _ = writeln!(s, "reps          {reps}, alternating which side runs first");
        for (i, r) in self.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  run {:<2} {:<18} hog {} in {:.0} s (held {}), level {}, daemon held {} -> {}, \
                 p99 {:.2} ms, PSI some {:.0} ms",
                i + 1,
                r.mode.name(),
                if r.hog_reached {
                    "reached its target"
                } else {
                    "did NOT reach its target"
                },
                r.hog_reach_s,
                Bytes(r.hog_peak),
                r.top_level,
                Bytes(r.held_before),
                Bytes(r.held_least),
                r.probe.late_p99_us as f64 / 1000.0,
                r.psi_some_ms
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<27}{:>28}{:>34}{:>8}",
            "", "governor median (range)", "ignoring pressure median (range)", "ratio"
        );
        for (name, figure) in Self::rows() {
            let Some(v) = Versus::of(&self.runs, figure) else {
                continue;
            };
            let _ = writeln!(
                s,
                "{:<27}{:>28}{:>34}{:>8}",
                name,
                cell(&v.governor),
                cell(&v.ignoring),
                v.ratio.map_or("-".to_string(), |r| format!("{r:.3}"))
            );
        }
        let ratio = self.p99().and_then(|v| v.ratio);
        let _ = writeln!(
            s,
            "{}: p99 lateness with the governor {} of it without (goal ≤ {})",
            if self.pass() { "PASS" } else { "FAIL" },
            ratio.map_or("unknown".to_string(), |r| format!("{r:.3}×")),
            self.goal
        );
        s
    }
}

fn cell(s: &Summary) -> String {
    let digits = if s.median >= 100.0 { 0 } else { 2 };
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn the_probe_line_reads_back() {
        let r = ProbeResult::of(vec![30, 10, 20], vec![5, 6], 1);
        assert_eq!((r.wakes, r.late_p50_us, r.late_max_us), (3, 20, 30));
        assert_eq!(r.to_string().parse::<ProbeResult>(), Ok(r));
        assert!("probe: wakes=1".parse::<ProbeResult>().is_err());
        assert!("hello".parse::<ProbeResult>().is_err());
    }

    #[test]
    fn the_probe_wakes_on_its_period_and_stops() {
        let started = Instant::now();
        let r = run_probe(
            1 << 20,
            Duration::from_millis(5),
            || {},
            || started.elapsed() > Duration::from_millis(60),
        );
        assert!(r.wakes >= 5, "{r}");
        assert!(r.late_p50_us < 5_000, "{r}");
    }

    fn run(mode: Mode, p99_us: u64) -> Run {
        Run {
            mode,
            probe: ProbeResult {
                late_p99_us: p99_us,
                ..ProbeResult::default()
            },
            psi_some_ms: 0.0,
            psi_full_ms: 0.0,
            window_s: 60.0,
            hog_reached: true,
            hog_reach_s: 30.0,
            hog_peak: 20 << 30,
            lowest_available: 1 << 30,
            top_level: PressureLevel::Warn,
            held_before: 500 << 20,
            held_least: 0,
            models_after: 0,
        }
    }

    #[test]
    fn the_goal_is_the_median_of_paired_p99_ratios() {
        let mut report = PressureReport {
            locara: "locara 0.1.0".into(),
            models: vec!["a:1".into(), "b:2".into()],
            machine: "2 CPUs".into(),
            probe_bytes: 256 << 20,
            probe_period_ms: 10,
            hog_target: 1 << 30,
            hog_floor: 1 << 29,
            warn_below: 2 << 30,
            hold_s: 20,
            runs: vec![
                run(Mode::Governor, 1_000),
                run(Mode::Ignore, 10_000),
                run(Mode::Ignore, 8_000),
                run(Mode::Governor, 4_000),
            ],
            others_cpu_share: Some(0.01),
            goal: 0.25,
        };
        let v = report.p99().unwrap();
        // Pairs: 1000/10000 and 4000/8000.
        assert!((v.ratio.unwrap() - 0.3).abs() < 1e-12, "{v:?}");
        assert!(!report.pass());
        report.runs[3] = run(Mode::Governor, 1_600);
        assert!(report.pass());
        let table = report.table();
        assert!(table.contains("PASS: p99 lateness"), "{table}");
        assert!(table.contains("probe lateness p99, ms"), "{table}");
    }
}
