//! The pressure benchmark's pieces (`locara-pressure-bench`): the probe, a
//! process that wakes on a fixed period and touches its own memory, whose
//! lateness says what a machine short of memory costs its neighbours; the
//! hog's size and the swap it needs ([`hog_wants`], [`swap_needed`]); the
//! kernel's swap counters ([`SwapCounts`]); and the report that sets a
//! daemon whose governor answers the pressure against one that ignores it.

use crate::stats::Summary;
use locara_core::Bytes;
use locara_platform::PressureLevel;
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One write per this many bytes touches every page.
const PAGE: usize = 4096;

const GIB: u64 = 1 << 30;

/// Free swap beyond the daemon's footprint the benchmark asks for, bytes:
/// without the governor the kernel must swap out about the footprint less
/// the guard, and the hog's floor counts free swap as room.
pub const SWAP_SLACK: u64 = GIB;

/// The guard's default: the larger of 1 GiB and this share of usable
/// memory is left available once the hog holds its bytes and the governor
/// gave the daemon's back.
pub const GUARD_FRACTION: f64 = 0.04;

/// The guard's default on a machine with `usable` bytes of usable memory:
/// max(1 GiB, [`GUARD_FRACTION`]).
pub fn default_guard(usable: u64) -> u64 {
    GIB.max((usable as f64 * GUARD_FRACTION) as u64)
}

/// The bytes the hog takes, `W = A0 - G + D`: all that was available at
/// calm (`available`, A0) less the guard (G), plus what the daemon holds
/// (`footprint`, D). With the governor, the daemon gives D back at warn and
/// G stays available; without it, the kernel must find about D - G bytes
/// by swapping. `None` when A0 is not above G.
pub fn hog_wants(available: u64, guard: u64, footprint: u64) -> Option<u64> {
    available
        .checked_sub(guard)
        .filter(|w| *w > 0)
        .map(|w| w + footprint)
}

/// The free swap a run needs with the daemon holding `footprint` bytes:
/// the footprint and [`SWAP_SLACK`].
pub fn swap_needed(footprint: u64) -> u64 {
    footprint + SWAP_SLACK
}

/// Why the benchmark cannot run on this swap, and how to add it: `total`
/// and `free` swap now, `need` bytes free wanted; `estimated` when `need`
/// is reckoned from the model files' sizes before the daemon held them.
pub fn swap_advice(total: u64, free: u64, need: u64, estimated: bool) -> String {
    let size_gib = need.div_ceil(GIB) + 1;
    let need = if estimated {
        format!(
            "about {} (the daemon's footprint D, measured once it holds the models and about \
             the model files' size for Q4_0 models on x86, plus {})",
            Bytes(need),
            Bytes(SWAP_SLACK)
        )
    } else {
        format!(
            "{} (the daemon's footprint D, measured, plus {})",
            Bytes(need),
            Bytes(SWAP_SLACK)
        )
    };
    format!(
        "this benchmark needs swap: SwapTotal is {} ({} free), and it needs {need} free. \
         Without the governor, the hog's memory fits only when the kernel swaps out what the \
         daemon holds. Add a swap file, as root:\n\
         \n    fallocate -l {size_gib}G /swapfile\
         \n    chmod 600 /swapfile\
         \n    mkswap /swapfile\
         \n    swapon /swapfile\
         \n\n\
         (where swapon refuses a file made by fallocate, make it with \
         `dd if=/dev/zero of=/swapfile bs=1M count={}` instead), and remove it afterwards with \
         `swapoff /swapfile && rm /swapfile`.",
        Bytes(total),
        Bytes(free),
        size_gib * 1024
    )
}

/// Pages the kernel swapped in and out since boot (`/proc/vmstat`
/// `pswpin`, `pswpout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapCounts {
    pub pages_in: u64,
    pub pages_out: u64,
}

impl SwapCounts {
    /// The counters in the text of `/proc/vmstat`; `None` without them.
    pub fn parse(vmstat: &str) -> Option<SwapCounts> {
        let get = |name: &str| {
            vmstat.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok()).flatten()
            })
        };
        Some(SwapCounts {
            pages_in: get("pswpin")?,
            pages_out: get("pswpout")?,
        })
    }

    /// The counters now; `None` where `/proc/vmstat` cannot be read.
    pub fn read() -> Option<SwapCounts> {
        SwapCounts::parse(&std::fs::read_to_string("/proc/vmstat").ok()?)
    }

    /// Bytes swapped (in, out) from `self` to `later`, with pages of
    /// `page_size` bytes.
    pub fn bytes_until(&self, later: &SwapCounts, page_size: u64) -> (u64, u64) {
        (
            later.pages_in.saturating_sub(self.pages_in) * page_size,
            later.pages_out.saturating_sub(self.pages_out) * page_size,
        )
    }
}

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

/// Writes `round` into every page of `memory`, so the kernel must have
/// each page resident (faulting it in, or back in from swap).
fn write_every_page(memory: &mut [u8], round: u8) {
    for i in (0..memory.len()).step_by(PAGE) {
        memory[i] = round;
    }
    std::hint::black_box(memory);
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
    write_every_page(&mut memory, 1);
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
        write_every_page(&mut memory, round);
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

/// The idle neighbour: an app in the background. It writes every page of
/// `bytes` of its own once, calls `ready`, and waits until `wait` returns
/// (`false`: it is not asked to touch them, and it ends); then it writes
/// every page again and returns how long that took, as a user switching
/// back to it waits for it. Pages the kernel swapped out meanwhile come
/// back in that time.
pub fn touch_idle(
    bytes: usize,
    ready: impl FnOnce(),
    wait: impl FnOnce() -> bool,
) -> Option<Duration> {
    let mut memory = vec![0u8; bytes];
    write_every_page(&mut memory, 1);
    ready();
    if !wait() {
        return None;
    }
    let started = Instant::now();
    write_every_page(&mut memory, 2);
    Some(started.elapsed())
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
/// hog taking `hog_wants` bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub mode: Mode,
    pub probe: ProbeResult,
    /// Available memory at calm, just before the hog started (A0), bytes.
    pub available_at_calm: u64,
    /// The daemon's footprint at calm: its workers' measured footprints
    /// together (D), bytes.
    pub daemon_footprint: u64,
    /// The bytes the hog was to take (W = A0 - G + D, from the first run
    /// of the pair).
    pub hog_wants: u64,
    /// Bytes the kernel swapped out and in from the hog's start to its exit
    /// (`/proc/vmstat` `pswpout`, `pswpin`).
    pub swapped_out: u64,
    pub swapped_in: u64,
    /// Growth of PSI memory `some` and `full` totals from the hog's start
    /// to its exit, milliseconds.
    pub psi_some_ms: f64,
    pub psi_full_ms: f64,
    /// From the hog's start to its exit, seconds.
    pub window_s: f64,
    /// The hog took all it wanted; how long that took, seconds; the most
    /// it held, bytes.
    pub hog_reached: bool,
    pub hog_reach_s: f64,
    pub hog_peak: u64,
    /// The hog stopped short: its next step would have taken available
    /// memory plus free swap below its floor.
    pub hog_stopped_short: bool,
    /// How long the hog's steps took (allocating and writing 256 MiB: the
    /// stall of an app that grows), median and longest, microseconds.
    pub hog_step_p50_us: u64,
    pub hog_step_max_us: u64,
    /// How long the idle neighbour took to write its pages again halfway
    /// through the hog's hold ([`touch_idle`]), microseconds; 0 without one.
    pub idle_touch_us: u64,
    /// The least available memory the hog read, bytes.
    pub lowest_available: u64,
    /// The highest level the daemon read from the OS (with `ignore`, which
    /// reads none, the one-reading level of the machine the benchmark read).
    pub top_level: PressureLevel,
    /// Bytes the daemon held (the governor's count, estimates included)
    /// before the hog and the least while it ran.
    pub held_before: u64,
    pub held_least: u64,
    /// The least the daemon's workers' footprints came to together while
    /// the hog ran, bytes (models unloaded count 0).
    pub footprint_least: u64,
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
    /// The idle neighbour's memory, bytes (0: none).
    pub idle_bytes: u64,
    /// The guard G: what stays available once the hog holds its bytes and
    /// the daemon gave its footprint back, bytes.
    pub guard: u64,
    /// Swap configured, bytes.
    pub swap_total: u64,
    /// The hog's step, bytes, and its pace (the least time from one
    /// step's start to the next's), milliseconds.
    pub hog_step: u64,
    pub hog_pace_ms: u64,
    /// The hog's floor (on available memory plus free swap) and warn's
    /// threshold (available memory), bytes; how long the hog held, seconds.
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
            // A ratio to what the table shows as 0.00 says nothing.
            .filter(|(_, i)| **i >= SHOWN)
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

/// The least figure the table shows as more than 0.00.
const SHOWN: f64 = 0.005;

/// One figure of a run, as the table shows it.
type Figure = fn(&Run) -> f64;

impl PressureReport {
    /// The rows of the table: a name and the figure.
    fn rows() -> [(&'static str, Figure); 16] {
        fn ms(us: u64) -> f64 {
            us as f64 / 1000.0
        }
        [
            ("probe lateness p50, ms", |r: &Run| ms(r.probe.late_p50_us)),
            ("probe lateness p99, ms", |r: &Run| ms(r.probe.late_p99_us)),
            ("probe lateness max, ms", |r: &Run| ms(r.probe.late_max_us)),
            ("probe touch p99, ms", |r: &Run| ms(r.probe.touch_p99_us)),
            ("idle neighbour's touch, ms", |r: &Run| ms(r.idle_touch_us)),
            ("PSI memory some, ms", |r: &Run| r.psi_some_ms),
            ("PSI memory full, ms", |r: &Run| r.psi_full_ms),
            ("swapped out, MiB", |r: &Run| r.swapped_out as f64 / MIB),
            ("swapped in, MiB", |r: &Run| r.swapped_in as f64 / MIB),
            ("hog step p50, ms", |r: &Run| ms(r.hog_step_p50_us)),
            ("hog step max, ms", |r: &Run| ms(r.hog_step_max_us)),
            ("hog took its bytes in, s", |r: &Run| r.hog_reach_s),
            ("daemon footprint, least, MiB", |r: &Run| {
                r.footprint_least as f64 / MIB
            }),
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
        if self.idle_bytes > 0 {
            let _ = writeln!(
                s,
                "idle app      {} of its own, every page written at its start and again halfway\n\
                 {:14}through the hog's hold (a user switching back to it)",
                Bytes(self.idle_bytes),
                ""
            );
        }
        let _ = writeln!(
            s,
            "hog           takes W = A0 - G + D (A0: available memory at calm, D: the daemon's \
             footprint at calm, G: guard {}; W from the first run of each pair, used by both)",
            Bytes(self.guard)
        );
        let _ = writeln!(
            s,
            "              in {} steps, one at most every {} ms, holds {} s; never lets available \
             memory plus free swap fall below {}",
            Bytes(self.hog_step),
            self.hog_pace_ms,
            self.hold_s,
            Bytes(self.hog_floor)
        );
        let _ = writeln!(
            s,
            "swap          {}; warn below {} available",
            Bytes(self.swap_total),
            Bytes(self.warn_below)
        );
        let reps = self.runs.len() / 2;
        let _ = writeln!(s, "reps          {reps}, alternating which side runs first");
        for (i, r) in self.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  run {:<2} {:<18} A0 {}, D {}, W {}: hog {} in {:.0} s (steps p50 {:.0} ms, \
                 max {:.0} ms)\n{:28}level {}, daemon footprint {} -> {}, swapped out {}, \
                 p99 {:.2} ms, PSI some {:.0} ms",
                i + 1,
                r.mode.name(),
                Bytes(r.available_at_calm),
                Bytes(r.daemon_footprint),
                Bytes(r.hog_wants),
                if r.hog_reached {
                    "took it all".to_string()
                } else if r.hog_stopped_short {
                    format!("STOPPED SHORT at {} (its floor)", Bytes(r.hog_peak))
                } else {
                    format!("did NOT take it all (held {})", Bytes(r.hog_peak))
                },
                r.hog_reach_s,
                r.hog_step_p50_us as f64 / 1000.0,
                r.hog_step_max_us as f64 / 1000.0,
                "",
                r.top_level,
                Bytes(r.daemon_footprint),
                Bytes(r.footprint_least),
                Bytes(r.swapped_out),
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
            available_at_calm: 20 << 30,
            daemon_footprint: 3 << 30,
            hog_wants: 22 << 30,
            swapped_out: 0,
            swapped_in: 0,
            psi_some_ms: 0.0,
            psi_full_ms: 0.0,
            window_s: 60.0,
            hog_reached: true,
            hog_reach_s: 30.0,
            hog_peak: 22 << 30,
            hog_stopped_short: false,
            hog_step_p50_us: 400_000,
            hog_step_max_us: 900_000,
            idle_touch_us: 0,
            lowest_available: 1 << 30,
            top_level: PressureLevel::Warn,
            held_before: 500 << 20,
            held_least: 0,
            footprint_least: 0,
            models_after: 0,
        }
    }

    #[test]
    fn the_hog_wants_what_was_available_less_the_guard_plus_the_footprint() {
        let gib = 1u64 << 30;
        assert_eq!(hog_wants(20 * gib, gib, 3 * gib), Some(22 * gib));
        assert_eq!(hog_wants(gib, gib, 3 * gib), None);
        assert_eq!(hog_wants(gib / 2, gib, 3 * gib), None);
        assert_eq!(default_guard(24 * gib), gib, "4 % of 24 GiB is below 1 GiB");
        assert_eq!(default_guard(100 * gib), 4 * gib);
        assert_eq!(swap_needed(3 * gib), 4 * gib);
    }

    #[test]
    fn the_swap_advice_names_what_is_there_what_is_needed_and_the_commands() {
        let text = swap_advice(0, 0, (3 << 30) + (1 << 30), true);
        for part in [
            "SwapTotal is 0 B",
            "about 4.0 GiB",
            "fallocate -l 5G /swapfile",
            "mkswap /swapfile",
            "swapon /swapfile",
            "swapoff /swapfile",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        let measured = swap_advice(2 << 30, 1 << 30, 5 << 30, false);
        assert!(
            measured.contains("SwapTotal is 2.0 GiB (1.0 GiB free)"),
            "{measured}"
        );
        assert!(measured.contains("needs 5.0 GiB"), "{measured}");
    }

    #[test]
    fn swap_counts_read_from_vmstat() {
        let before = SwapCounts::parse("pgpgout 9\npswpin 10\npswpout 100\npgfault 5\n").unwrap();
        assert_eq!(
            before,
            SwapCounts {
                pages_in: 10,
                pages_out: 100
            }
        );
        let after = SwapCounts {
            pages_in: 12,
            pages_out: 356,
        };
        assert_eq!(before.bytes_until(&after, 4096), (2 * 4096, 256 * 4096));
        // `pswpin` is not `pswpin_foo`, and both must be there.
        assert_eq!(SwapCounts::parse("pswpin_foo 1\npswpout 2\n"), None);
    }

    #[test]
    fn the_goal_is_the_median_of_paired_p99_ratios() {
        let mut report = PressureReport {
            locara: "locara 0.1.0".into(),
            models: vec!["a:1".into(), "b:2".into()],
            machine: "2 CPUs".into(),
            probe_bytes: 256 << 20,
            probe_period_ms: 10,
            idle_bytes: 0,
            guard: 1 << 30,
            swap_total: 8 << 30,
            hog_step: 256 << 20,
            hog_pace_ms: 500,
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
        assert!(table.contains("swapped out, MiB"), "{table}");
        assert!(
            table.contains("A0 20.0 GiB, D 3.0 GiB, W 22.0 GiB"),
            "{table}"
        );
        report.runs[1].hog_reached = false;
        report.runs[1].hog_stopped_short = true;
        let table = report.table();
        assert!(table.contains("STOPPED SHORT"), "{table}");
    }

    #[test]
    fn no_ratio_is_taken_to_a_figure_shown_as_zero() {
        // Lowest available memory ignoring pressure: 4 KiB, shown as 0.00 MiB.
        let mut runs = vec![run(Mode::Governor, 0), run(Mode::Ignore, 0)];
        runs[1].lowest_available = 4 << 10;
        let lowest = |r: &Run| r.lowest_available as f64 / MIB;
        let v = Versus::of(&runs, lowest).unwrap();
        assert_eq!(v.ratio, None, "{v:?}");
        runs[1].lowest_available = 64 << 20;
        let v = Versus::of(&runs, lowest).unwrap();
        assert_eq!(v.ratio, Some(16.0), "{v:?}");
    }
}
