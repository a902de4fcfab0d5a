//! A bounded memory hog, for tests and benchmarks of real memory pressure.
//!
//! It takes anonymous memory in steps, writing every page so that the kernel
//! really hands it out, until the machine's available memory (as the daemon
//! reads it: [`SystemSnapshot::available`](crate::SystemSnapshot::available), `MemAvailable` lowered to a
//! memory-limited cgroup's headroom) is down to a target
//! ([`HogPlan::below_warn`]), or until it holds a fixed number of bytes
//! ([`HogPlan::fixed`]: the user's app that wants that much, whatever is
//! free; the kernel may have to swap to make room). It never lets its room
//! (available memory; for a fixed plan, available memory plus free swap)
//! fall below a floor: a step that would cross it is made smaller or not
//! made, and when something else takes the room below the floor the hog
//! gives memory back at once (while it is still taking, it stops: the
//! target cannot be reached safely). It holds what it took for a while,
//! then gives everything back by returning, within a hard time limit.
//!
//! The decisions are [`HogPlan::next`], a function of one [`Reading`] and
//! what the hog holds; [`Hog::run`] and [`Hog::run_with_swap`] carry them out
//! with real memory.
//!
//! ```no_run
//! use locara_platform::testing::hog::{Hog, HogPlan, Reading};
//! use locara_platform::{MemoryProbe, SystemProbe};
//! use std::time::Duration;
//!
//! let probe = SystemProbe::default();
//! let usable = probe.snapshot()?.usable();
//! let plan = HogPlan::below_warn(usable, 0.10).expect("a machine large enough");
//! let hog = Hog {
//!     plan,
//!     hold: Duration::from_secs(15),
//!     limit: Duration::from_secs(90),
//! };
//! let summary = hog.run(
//!     || probe.snapshot().ok().map(|s| s.available),
//!     |news| println!("{news}"),
//! );
//! assert!(summary.reached);
//!
//! // An app that wants 4 GiB more than is available: the kernel swaps to
//! // make room, unless someone gives memory back.
//! let machine = probe.snapshot()?;
//! let hog = Hog {
//!     plan: HogPlan::fixed(machine.available + (4 << 30), usable),
//!     hold: Duration::from_secs(15),
//!     limit: Duration::from_secs(150),
//! };
//! let summary = hog.run_with_swap(
//!     || probe.snapshot().ok().map(|s| Reading::of(&s)),
//!     |news| println!("{news}"),
//! );
//! println!("took {} steps, the longest in {} µs", summary.steps, summary.step_max_us);
//! # Ok::<(), locara_platform::PlatformError>(())
//! ```

use crate::SystemSnapshot;
use locara_core::Bytes;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Bytes taken per step: small enough that one step cannot jump from above
/// the target to below the floor (the plan keeps two steps between them).
pub const STEP: u64 = 256 << 20;

/// The smallest step worth taking, bytes.
pub const MIN_STEP: u64 = 16 << 20;

/// The least available memory the hog leaves on any machine, bytes; larger
/// machines keep [`FLOOR_FRACTION`] of their usable memory.
pub const MIN_FLOOR: u64 = 1 << 30;

/// The share of usable memory the hog leaves available.
pub const FLOOR_FRACTION: f64 = 0.03;

/// The least time from the start of one step of a fixed plan to the start
/// of the next: [`STEP`] per 500 ms is at most 512 MiB/s. A daemon reads
/// the level once a second
/// ([`PressureConfig::poll_interval_ms`](crate::PressureConfig::poll_interval_ms)),
/// and a worker set its model aside and gave 3.1 GiB back in 245 ms
/// (`locara pressure simulate warn` with the 3 GiB fixture of
/// `scripts/bench-model.py`, debug build, 2-core VM), so
/// from the warn threshold of a 24 GiB machine (10 %, 2.4 GiB available)
/// to the point where the kernel has nothing left but swap, the hog takes
/// about 4.8 s: four readings and the answer to them. Taking every step at
/// once would test only how fast the kernel swaps. Writing a step's pages
/// takes about as long on a 2-core VM (20 GiB in 35-50 s), so there the
/// pace changes little.
pub const FIXED_PACE: Duration = Duration::from_millis(500);

/// How often the hog reads available memory while it holds.
pub const POLL: Duration = Duration::from_millis(20);

/// One write per this many bytes touches every page (4 KiB pages; larger
/// pages are touched several times).
const PAGE: usize = 4096;

/// How far a hog may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HogPlan {
    /// Without `take`: take memory until available memory is at or below
    /// this, bytes. Not used with `take`.
    pub target: u64,
    /// Never let the room fall below this, bytes. The room is available
    /// memory; with `take`, available memory plus free swap (what the
    /// kernel can still hand out, swapping if it must).
    pub floor: u64,
    /// Bytes taken per step.
    pub step: u64,
    /// Take this many bytes, whatever available memory does, bytes; `None`:
    /// take until available memory is at `target`.
    pub take: Option<u64>,
    /// The least time from the start of one step to the start of the next
    /// (zero: as fast as pages can be written).
    pub pace: Duration,
}

/// One reading of the machine's memory, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Available memory ([`SystemSnapshot::available`]).
    pub available: u64,
    /// Free swap (0 without swap, or where it is not read).
    pub swap_free: u64,
}

impl Reading {
    /// Available memory and free swap from a snapshot.
    pub fn of(snapshot: &SystemSnapshot) -> Reading {
        Reading {
            available: snapshot.available,
            swap_free: snapshot.swap_total.saturating_sub(snapshot.swap_used),
        }
    }

    /// Available memory alone, swap not counted.
    pub fn available(available: u64) -> Reading {
        Reading {
            available,
            swap_free: 0,
        }
    }
}

/// What the hog does after one reading of available memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Take this many more bytes.
    Take(u64),
    /// The goal is reached: available memory is at or below the target, or
    /// the hog holds what a fixed plan takes.
    Reached,
    /// The room is below the floor: give a step back.
    GiveBack,
    /// The goal cannot be reached without crossing the floor.
    Blocked,
}

/// No target below the warn threshold keeps a safe distance from the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSafeTarget {
    /// Usable memory, bytes.
    pub usable: u64,
    /// Available memory below which the level is warn, bytes.
    pub warn: u64,
    /// The floor, bytes.
    pub floor: u64,
}

impl fmt::Display for NoSafeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warn needs available memory below {} of {} usable, but the hog keeps at least {} \
             available (max(1 GiB, 3 %)): less than two steps ({}) between them, so this machine \
             cannot be pressed to warn safely",
            Bytes(self.warn),
            Bytes(self.usable),
            Bytes(self.floor),
            Bytes(2 * STEP)
        )
    }
}

/// The floor on a machine with `usable` bytes of usable memory:
/// max([`MIN_FLOOR`], [`FLOOR_FRACTION`] of it).
fn floor_of(usable: u64) -> u64 {
    MIN_FLOOR.max((usable as f64 * FLOOR_FRACTION) as u64)
}

impl HogPlan {
    /// The plan that takes a machine with `usable` bytes of usable memory
    /// below its warn threshold (`warn_fraction` of it available) and keeps
    /// at least max([`MIN_FLOOR`], [`FLOOR_FRACTION`]) available: the target
    /// is halfway between the two, so neither the threshold nor the floor
    /// is within a step of it. An error when they are less than two steps
    /// apart.
    pub fn below_warn(usable: u64, warn_fraction: f64) -> Result<HogPlan, NoSafeTarget> {
        let warn = (usable as f64 * warn_fraction) as u64;
        let floor = floor_of(usable);
        if warn < floor + 2 * STEP {
            return Err(NoSafeTarget {
                usable,
                warn,
                floor,
            });
        }
        Ok(HogPlan {
            target: floor + (warn - floor) / 2,
            floor,
            step: STEP,
            take: None,
            pace: Duration::ZERO,
        })
    }

    /// The plan that takes `bytes`, [`STEP`] at a time and one step at most
    /// every [`FIXED_PACE`], on a machine with `usable` bytes of usable
    /// memory, whatever is available: an app that wants that much. It never
    /// lets available memory plus free swap fall below max([`MIN_FLOOR`],
    /// [`FLOOR_FRACTION`]) (the floor of [`HogPlan::below_warn`]); where the
    /// next step would cross it, the hog stops short ([`HogNews::Blocked`])
    /// and holds what it took.
    pub fn fixed(bytes: u64, usable: u64) -> HogPlan {
        HogPlan {
            target: 0,
            floor: floor_of(usable),
            step: STEP,
            take: Some(bytes),
            pace: FIXED_PACE,
        }
    }

    /// What to do with `reading` now, holding `held` bytes.
    pub fn next(&self, reading: Reading, held: u64) -> Move {
        let Some(take) = self.take else {
            return self.next_below(reading.available);
        };
        let room = reading.available.saturating_add(reading.swap_free);
        if room < self.floor {
            return Move::GiveBack;
        }
        if held >= take {
            return Move::Reached;
        }
        let step = (take - held).min(self.step);
        if room - self.floor < step {
            Move::Blocked
        } else {
            Move::Take(step)
        }
    }

    /// [`HogPlan::next`] for a plan without `take`: only available memory
    /// counts.
    fn next_below(&self, available: u64) -> Move {
        if available < self.floor {
            return Move::GiveBack;
        }
        if available <= self.target {
            return Move::Reached;
        }
        let room = available - self.floor;
        let take = (available - self.target)
            .max(MIN_STEP)
            .min(self.step)
            .min(room);
        if take < MIN_STEP {
            Move::Blocked
        } else {
            Move::Take(take)
        }
    }
}

/// What the hog tells its parent, one line each (`Display` writes the line,
/// `FromStr` reads it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HogNews {
    /// The goal is reached; the hold starts.
    Reached { held: u64, available: u64 },
    /// A step given back: the room fell below the floor.
    GaveBack { held: u64, available: u64 },
    /// The goal cannot be reached safely: the hog stopped short. A plan
    /// without `take` gives everything back; a fixed plan holds what it
    /// took.
    Blocked { held: u64, available: u64 },
    /// Available memory could not be read; the hog gives everything back.
    Unreadable,
    /// Everything given back; the hog ends.
    Done(HogSummary),
}

/// How a hog's run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HogSummary {
    /// The goal was reached.
    pub reached: bool,
    /// It stopped short: the next step would have crossed the floor.
    pub blocked: bool,
    /// The most the hog held, bytes.
    pub peak: u64,
    /// The least available memory it read, bytes.
    pub lowest_available: u64,
    /// Steps given back because the room fell below the floor.
    pub gave_back: u32,
    /// Steps taken.
    pub steps: u32,
    /// How long taking one step took (allocating and writing its pages:
    /// the app's own stall as it grows), median and longest, microseconds.
    pub step_p50_us: u64,
    pub step_max_us: u64,
}

const PREFIX: &str = "hog:";

impl fmt::Display for HogNews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HogNews::Reached { held, available } => {
                write!(f, "{PREFIX} reached held={held} available={available}")
            }
            HogNews::GaveBack { held, available } => {
                write!(f, "{PREFIX} gave_back held={held} available={available}")
            }
            HogNews::Blocked { held, available } => {
                write!(f, "{PREFIX} blocked held={held} available={available}")
            }
            HogNews::Unreadable => write!(f, "{PREFIX} unreadable"),
            HogNews::Done(s) => write!(
                f,
                "{PREFIX} done reached={} blocked={} peak={} lowest_available={} gave_back={} \
                 steps={} step_p50_us={} step_max_us={}",
                s.reached,
                s.blocked,
                s.peak,
                s.lowest_available,
                s.gave_back,
                s.steps,
                s.step_p50_us,
                s.step_max_us
            ),
        }
    }
}

/// A line that is not one of the hog's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotNews(pub String);

impl FromStr for HogNews {
    type Err = NotNews;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let bad = || NotNews(line.to_string());
        let rest = line.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let mut words = rest.split_whitespace();
        let kind = words.next().ok_or_else(bad)?;
        let fields: Vec<(&str, &str)> = words
            .map(|w| w.split_once('=').ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        let get = |name: &str| -> Result<&str, NotNews> {
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .ok_or_else(bad)
        };
        let number = |name: &str| -> Result<u64, NotNews> { get(name)?.parse().map_err(|_| bad()) };
        let flag = |name: &str| -> Result<bool, NotNews> { get(name)?.parse().map_err(|_| bad()) };
        let count = |name: &str| -> Result<u32, NotNews> {
            u32::try_from(number(name)?).map_err(|_| bad())
        };
        Ok(match kind {
            "reached" => HogNews::Reached {
                held: number("held")?,
                available: number("available")?,
            },
            "gave_back" => HogNews::GaveBack {
                held: number("held")?,
                available: number("available")?,
            },
            "blocked" => HogNews::Blocked {
                held: number("held")?,
                available: number("available")?,
            },
            "unreadable" => HogNews::Unreadable,
            "done" => HogNews::Done(HogSummary {
                reached: flag("reached")?,
                blocked: flag("blocked")?,
                peak: number("peak")?,
                lowest_available: number("lowest_available")?,
                gave_back: count("gave_back")?,
                steps: count("steps")?,
                step_p50_us: number("step_p50_us")?,
                step_max_us: number("step_max_us")?,
            }),
            _ => return Err(bad()),
        })
    }
}

/// A hog: its plan, how long it holds, and its hard time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hog {
    pub plan: HogPlan,
    /// How long it holds once the goal is reached (or, for a fixed plan,
    /// once it stopped short).
    pub hold: Duration,
    /// The longest it runs, taking and holding together.
    pub limit: Duration,
}

impl Hog {
    /// The hog as one argument (for a child process's environment).
    pub fn to_arg(&self) -> String {
        let take = self
            .plan
            .take
            .map_or(String::new(), |t| format!(" take={t}"));
        format!(
            "target={} floor={} step={}{take} pace_ms={} hold_ms={} limit_ms={}",
            self.plan.target,
            self.plan.floor,
            self.plan.step,
            self.plan.pace.as_millis(),
            self.hold.as_millis(),
            self.limit.as_millis()
        )
    }

    /// Reads [`Hog::to_arg`]'s form back (`take` and `pace_ms` may be
    /// missing: a plan without them); `None` if any other field is missing
    /// or a field is not a number.
    pub fn from_arg(arg: &str) -> Option<Hog> {
        let field = |name: &str| -> Option<&str> {
            arg.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        let get = |name: &str| -> Option<u64> { field(name)?.parse().ok() };
        let optional = |name: &str| -> Option<Option<u64>> {
            field(name).map_or(Some(None), |v| v.parse().ok().map(Some))
        };
        Some(Hog {
            plan: HogPlan {
                target: get("target")?,
                floor: get("floor")?,
                step: get("step")?.max(MIN_STEP),
                take: optional("take")?,
                pace: Duration::from_millis(optional("pace_ms")?.unwrap_or(0)),
            },
            hold: Duration::from_millis(get("hold_ms")?),
            limit: Duration::from_millis(get("limit_ms")?),
        })
    }

    /// Runs the hog, counting no swap: `available` reads available memory
    /// (`None`: it cannot be read, and the hog stops), `tell` hears each
    /// piece of news, the last one [`HogNews::Done`]. Everything taken is
    /// given back before it returns.
    pub fn run(
        &self,
        mut available: impl FnMut() -> Option<u64>,
        tell: impl FnMut(&HogNews),
    ) -> HogSummary {
        self.run_with_swap(|| available().map(Reading::available), tell)
    }

    /// [`Hog::run`] with readings that count free swap too (a fixed plan's
    /// floor is on available memory plus free swap).
    pub fn run_with_swap(
        &self,
        mut read: impl FnMut() -> Option<Reading>,
        mut tell: impl FnMut(&HogNews),
    ) -> HogSummary {
        let start = Instant::now();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut held = 0u64;
        let mut step_us: Vec<u64> = Vec::new();
        let mut summary = HogSummary {
            lowest_available: u64::MAX,
            ..HogSummary::default()
        };
        // A fixed plan that stops short holds what it took; one without
        // `take` gives everything back.
        let holds_short = self.plan.take.is_some();
        let mut holding_since: Option<Instant> = None;
        while start.elapsed() < self.limit && holding_since.is_none_or(|t| t.elapsed() < self.hold)
        {
            let Some(now) = read() else {
                tell(&HogNews::Unreadable);
                break;
            };
            let available = now.available;
            summary.lowest_available = summary.lowest_available.min(available);
            match self.plan.next(now, held) {
                Move::GiveBack => match chunks.pop() {
                    Some(chunk) => {
                        held -= chunk.len() as u64;
                        drop(chunk);
                        summary.gave_back += 1;
                        tell(&HogNews::GaveBack { held, available });
                        if holding_since.is_none() {
                            // Something else wants this memory: stop here
                            // rather than take it back and forth.
                            summary.blocked = true;
                            tell(&HogNews::Blocked { held, available });
                            if !holds_short {
                                break;
                            }
                            holding_since = Some(Instant::now());
                        }
                    }
                    // Nothing left to give: someone else is below the
                    // floor by themselves; wait for the time limit.
                    None => std::thread::sleep(POLL),
                },
                Move::Take(bytes) if holding_since.is_none() => {
                    let started = Instant::now();
                    chunks.push(touched(bytes));
                    let took = started.elapsed();
                    step_us.push(took.as_micros() as u64);
                    held += bytes;
                    summary.peak = summary.peak.max(held);
                    if let Some(rest) = self.plan.pace.checked_sub(took) {
                        std::thread::sleep(rest);
                    }
                }
                Move::Reached if holding_since.is_none() => {
                    holding_since = Some(Instant::now());
                    summary.reached = true;
                    tell(&HogNews::Reached { held, available });
                }
                Move::Blocked if holding_since.is_none() => {
                    summary.blocked = true;
                    tell(&HogNews::Blocked { held, available });
                    if !holds_short {
                        break;
                    }
                    holding_since = Some(Instant::now());
                }
                // Holding: what the hog holds stays, nothing more is taken
                // when others give memory back.
                Move::Take(_) | Move::Reached | Move::Blocked => std::thread::sleep(POLL),
            }
        }
        drop(chunks);
        if summary.lowest_available == u64::MAX {
            summary.lowest_available = 0;
        }
        summary.steps = u32::try_from(step_us.len()).unwrap_or(u32::MAX);
        step_us.sort_unstable();
        summary.step_p50_us = step_us
            .get(step_us.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0);
        summary.step_max_us = step_us.last().copied().unwrap_or(0);
        tell(&HogNews::Done(summary));
        summary
    }
}

/// `bytes` of fresh anonymous memory with every page written, so the kernel
/// has handed all of it out.
fn touched(bytes: u64) -> Vec<u8> {
    let mut chunk = vec![0u8; usize::try_from(bytes).unwrap_or(usize::MAX)];
    for i in (0..chunk.len()).step_by(PAGE) {
        chunk[i] = 1;
    }
    // The writes must happen even though nothing reads them.
    std::hint::black_box(&mut chunk);
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// A plan without `take` that takes as fast as it can.
    fn below(target: u64, floor: u64, step: u64) -> HogPlan {
        HogPlan {
            target,
            floor,
            step,
            take: None,
            pace: Duration::ZERO,
        }
    }

    /// Available memory alone, for plans without `take`.
    fn at(available: u64) -> Reading {
        Reading::available(available)
    }

    #[test]
    fn a_24_gib_machine_is_pressed_halfway_between_warn_and_the_floor() {
        let usable = 24 * GIB;
        let plan = HogPlan::below_warn(usable, 0.10).unwrap();
        let warn = usable / 10;
        assert_eq!(plan.floor, MIN_FLOOR, "3 % of 24 GiB is less than 1 GiB");
        assert!(plan.target < warn && plan.target > plan.floor);
        assert!(warn - plan.target >= STEP && plan.target - plan.floor >= STEP);
        assert_eq!((plan.take, plan.pace), (None, Duration::ZERO));
        // A large machine keeps 3 %.
        let big = HogPlan::below_warn(256 * GIB, 0.10).unwrap();
        assert_eq!(big.floor, (256.0 * GIB as f64 * 0.03) as u64);
    }

    #[test]
    fn a_small_machine_is_refused_with_the_numbers() {
        let e = HogPlan::below_warn(8 * GIB, 0.10).unwrap_err();
        assert_eq!(e.floor, MIN_FLOOR);
        assert!(e.warn < e.floor);
        let text = e.to_string();
        assert!(text.contains("cannot be pressed to warn safely"), "{text}");
    }

    #[test]
    fn steps_stop_at_the_target_and_never_cross_the_floor() {
        let plan = below(2 * GIB, GIB, STEP);
        assert_eq!(plan.next(at(10 * GIB), 0), Move::Take(STEP));
        // The last step takes just what is left to the target.
        assert_eq!(plan.next(at(2 * GIB + 100 * MIB), 0), Move::Take(100 * MIB));
        assert_eq!(plan.next(at(2 * GIB + 1), 0), Move::Take(MIN_STEP));
        assert_eq!(plan.next(at(2 * GIB), 0), Move::Reached);
        assert_eq!(plan.next(at(GIB), 0), Move::Reached);
        assert_eq!(plan.next(at(GIB - 1), 0), Move::GiveBack);
        // Free swap does not count without `take`.
        let swap = Reading {
            available: GIB - 1,
            swap_free: 8 * GIB,
        };
        assert_eq!(plan.next(swap, 0), Move::GiveBack);
        // A target at the floor: a step that would cross it is smaller,
        // or not made.
        let tight = below(GIB, GIB, STEP);
        assert_eq!(tight.next(at(GIB + 100 * MIB), 0), Move::Take(100 * MIB));
        let under = below(GIB / 2, GIB, STEP);
        assert_eq!(under.next(at(GIB + MIB), 0), Move::Blocked);
    }

    #[test]
    fn a_fixed_plan_takes_its_bytes_whatever_is_available_with_swap_in_its_room() {
        let plan = HogPlan::fixed(10 * GIB, 24 * GIB);
        assert_eq!(plan.floor, MIN_FLOOR, "the floor of below_warn");
        assert_eq!((plan.take, plan.pace), (Some(10 * GIB), FIXED_PACE));
        let both = |available, swap_free| Reading {
            available,
            swap_free,
        };
        assert_eq!(plan.next(both(20 * GIB, 0), 0), Move::Take(STEP));
        // Below any target of available memory it goes on taking...
        assert_eq!(plan.next(both(GIB / 2, 4 * GIB), 5 * GIB), Move::Take(STEP));
        // ...the last step is what is left...
        assert_eq!(
            plan.next(both(8 * GIB, 0), 10 * GIB - 100 * MIB),
            Move::Take(100 * MIB)
        );
        // ...and it stops at its bytes, however much is available.
        assert_eq!(plan.next(both(20 * GIB, 0), 10 * GIB), Move::Reached);
        // A step that would take available memory plus free swap below the
        // floor is not made.
        assert_eq!(
            plan.next(both(GIB, 200 * MIB), 3 * GIB),
            Move::Blocked,
            "1 GiB + 200 MiB of room leaves less than a step above the 1 GiB floor"
        );
        assert_eq!(
            plan.next(both(GIB, STEP), 3 * GIB),
            Move::Take(STEP),
            "exactly a step above the floor"
        );
        // Below the floor, even holding everything: give a step back.
        assert_eq!(plan.next(both(GIB / 2, 0), 10 * GIB), Move::GiveBack);
        // A large machine keeps 3 %.
        assert_eq!(
            HogPlan::fixed(GIB, 256 * GIB).floor,
            (256.0 * GIB as f64 * 0.03) as u64
        );
    }

    #[test]
    fn news_and_the_hog_read_back_from_their_lines() {
        let all = [
            HogNews::Reached {
                held: 5,
                available: 6,
            },
            HogNews::GaveBack {
                held: 1,
                available: 2,
            },
            HogNews::Blocked {
                held: 3,
                available: 4,
            },
            HogNews::Unreadable,
            HogNews::Done(HogSummary {
                reached: true,
                blocked: false,
                peak: 7,
                lowest_available: 8,
                gave_back: 9,
                steps: 10,
                step_p50_us: 11,
                step_max_us: 12,
            }),
        ];
        for news in all {
            assert_eq!(news.to_string().parse::<HogNews>(), Ok(news));
        }
        assert!("running 1 test".parse::<HogNews>().is_err());
        assert!("hog: reached held=x available=1"
            .parse::<HogNews>()
            .is_err());
        let hog = Hog {
            plan: below(3, 2, MIN_STEP),
            hold: Duration::from_millis(1500),
            limit: Duration::from_secs(60),
        };
        assert_eq!(Hog::from_arg(&hog.to_arg()), Some(hog));
        let fixed = Hog {
            plan: HogPlan::fixed(20 * GIB, 24 * GIB),
            ..hog
        };
        assert_eq!(Hog::from_arg(&fixed.to_arg()), Some(fixed));
        // The form without `take` and `pace_ms` is a plan without them.
        assert_eq!(
            Hog::from_arg("target=3 floor=2 step=1 hold_ms=1500 limit_ms=60000"),
            Some(hog)
        );
        assert_eq!(Hog::from_arg("target=1"), None);
        assert_eq!(
            Hog::from_arg("target=3 floor=2 step=1 take=x hold_ms=1 limit_ms=1"),
            None
        );
    }

    /// Readings from a script; the last one repeats.
    fn script(mib: &[u64]) -> impl FnMut() -> Option<u64> {
        let readings: Vec<u64> = mib.iter().map(|m| m << 20).collect();
        let mut i = 0;
        move || {
            let r = readings[i.min(readings.len() - 1)];
            i += 1;
            Some(r)
        }
    }

    fn hog(target_mib: u64, floor_mib: u64) -> Hog {
        Hog {
            plan: below(target_mib << 20, floor_mib << 20, MIN_STEP),
            hold: Duration::from_millis(50),
            limit: Duration::from_secs(10),
        }
    }

    /// A fixed plan of `take_mib` in [`MIN_STEP`]s, with `pace`.
    fn fixed(take_mib: u64, floor_mib: u64, pace: Duration) -> Hog {
        Hog {
            plan: HogPlan {
                target: 0,
                floor: floor_mib << 20,
                step: MIN_STEP,
                take: Some(take_mib << 20),
                pace,
            },
            hold: Duration::from_millis(50),
            limit: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_run_takes_steps_to_its_target_holds_and_ends() {
        let mut news = Vec::new();
        // Each 16 MiB step shows in the next reading.
        let summary = hog(60, 32).run(script(&[100, 84, 68, 60]), |n| news.push(*n));
        assert_eq!(
            news,
            [
                HogNews::Reached {
                    held: 48 << 20,
                    available: 60 << 20
                },
                HogNews::Done(summary)
            ]
        );
        assert!(summary.reached && !summary.blocked);
        assert_eq!(
            (summary.peak, summary.lowest_available),
            (48 << 20, 60 << 20)
        );
        assert_eq!(summary.steps, 3);
        assert!(summary.step_p50_us <= summary.step_max_us);
    }

    #[test]
    fn while_holding_a_fall_below_the_floor_gives_a_step_back() {
        let mut news = Vec::new();
        let summary = hog(60, 32).run(script(&[70, 54, 20, 60]), |n| news.push(*n));
        assert_eq!(
            news[..2],
            [
                HogNews::Reached {
                    held: 16 << 20,
                    available: 54 << 20
                },
                HogNews::GaveBack {
                    held: 0,
                    available: 20 << 20
                },
            ]
        );
        assert!(summary.reached);
        assert_eq!(summary.gave_back, 1);
    }

    #[test]
    fn while_taking_a_fall_below_the_floor_stops_the_hog() {
        let mut news = Vec::new();
        // Others take 70 MiB at the second reading.
        let summary = hog(64, 48).run(script(&[128, 40]), |n| news.push(*n));
        assert!(!summary.reached && summary.blocked);
        assert_eq!(summary.gave_back, 1);
        assert_eq!(summary.lowest_available, 40 << 20);
        assert_eq!(
            news,
            [
                HogNews::GaveBack {
                    held: 0,
                    available: 40 << 20
                },
                HogNews::Blocked {
                    held: 0,
                    available: 40 << 20
                },
                HogNews::Done(summary)
            ]
        );
    }

    #[test]
    fn an_unreadable_machine_stops_the_hog() {
        let mut news = Vec::new();
        let summary = hog(64, 48).run(|| None, |n| news.push(*n));
        assert!(!summary.reached);
        assert_eq!(news, [HogNews::Unreadable, HogNews::Done(summary)]);
    }

    #[test]
    fn a_fixed_run_takes_its_bytes_at_its_pace_while_swap_makes_room() {
        let pace = Duration::from_millis(30);
        let mut news = Vec::new();
        // 40 MiB available and 1 GiB of free swap: the hog takes 48 MiB,
        // more than is available, as the kernel would swap to make room.
        let mut room = [(40, 1024), (24, 1024), (8, 1020), (0, 1000)]
            .map(|(a, s): (u64, u64)| Reading {
                available: a << 20,
                swap_free: s << 20,
            })
            .into_iter();
        let started = Instant::now();
        let summary = fixed(48, 32, pace).run_with_swap(
            || {
                Some(room.next().unwrap_or(Reading {
                    available: 0,
                    swap_free: 1000 << 20,
                }))
            },
            |n| news.push(*n),
        );
        assert!(summary.reached && !summary.blocked);
        assert_eq!((summary.steps, summary.peak), (3, 48 << 20));
        assert_eq!(
            news,
            [
                HogNews::Reached {
                    held: 48 << 20,
                    available: 0
                },
                HogNews::Done(summary)
            ]
        );
        assert!(
            started.elapsed() >= 3 * pace,
            "three steps, one at most every {pace:?}, took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_fixed_run_that_would_cross_the_floor_stops_short_and_holds_what_it_took() {
        let mut news = Vec::new();
        // No swap: after two steps the room is 40 MiB, less than a step
        // above the 32 MiB floor.
        let summary = fixed(64, 32, Duration::ZERO).run_with_swap(
            {
                let mut available = script(&[72, 56, 40]);
                move || available().map(Reading::available)
            },
            |n| news.push(*n),
        );
        assert!(!summary.reached && summary.blocked);
        assert_eq!((summary.steps, summary.peak), (2, 32 << 20));
        assert_eq!(
            news,
            [
                HogNews::Blocked {
                    held: 32 << 20,
                    available: 40 << 20
                },
                HogNews::Done(summary)
            ],
            "it held until its hold ended: nothing given back"
        );
        assert_eq!(summary.gave_back, 0);
    }
}
