//! A bounded memory hog, for tests and benchmarks of real memory pressure.
//!
//! It takes anonymous memory in steps, writing every page so that the kernel
//! really hands it out, until the machine's available memory (as the daemon
//! reads it: [`SystemSnapshot::available`](crate::SystemSnapshot::available), `MemAvailable` lowered to a
//! memory-limited cgroup's headroom) is down to a target. It never lets
//! available memory fall below a floor: a step that would cross it is made
//! smaller or not made, and when something else takes available memory
//! below the floor the hog gives memory back at once (while it is still
//! taking, it stops: the target cannot be reached safely). It holds what it
//! took for a while, then gives everything back by returning, within a hard
//! time limit.
//!
//! The decisions are [`HogPlan::next`], a function of one reading; [`Hog::run`]
//! carries them out with real memory.
//!
//! ```no_run
//! use locara_platform::testing::hog::{Hog, HogPlan};
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
//! # Ok::<(), locara_platform::PlatformError>(())
//! ```

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

/// How often the hog reads available memory while it holds.
pub const POLL: Duration = Duration::from_millis(20);

/// One write per this many bytes touches every page (4 KiB pages; larger
/// pages are touched several times).
const PAGE: usize = 4096;

/// How far a hog may go, in bytes of available memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HogPlan {
    /// Take memory until available memory is at or below this.
    pub target: u64,
    /// Never let available memory fall below this.
    pub floor: u64,
    /// Bytes taken per step.
    pub step: u64,
}

/// What the hog does after one reading of available memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Take this many more bytes.
    Take(u64),
    /// Available memory is at or below the target.
    Reached,
    /// Available memory is below the floor: give a step back.
    GiveBack,
    /// The target cannot be reached without crossing the floor.
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

impl HogPlan {
    /// The plan that takes a machine with `usable` bytes of usable memory
    /// below its warn threshold (`warn_fraction` of it available) and keeps
    /// at least max([`MIN_FLOOR`], [`FLOOR_FRACTION`]) available: the target
    /// is halfway between the two, so neither the threshold nor the floor
    /// is within a step of it. An error when they are less than two steps
    /// apart.
    pub fn below_warn(usable: u64, warn_fraction: f64) -> Result<HogPlan, NoSafeTarget> {
        let warn = (usable as f64 * warn_fraction) as u64;
        let floor = MIN_FLOOR.max((usable as f64 * FLOOR_FRACTION) as u64);
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
        })
    }

    /// What to do with `available` bytes available now.
    pub fn next(&self, available: u64) -> Move {
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
    /// Available memory is down to the target; the hold starts.
    Reached { held: u64, available: u64 },
    /// A step given back: available memory fell below the floor.
    GaveBack { held: u64, available: u64 },
    /// The target cannot be reached safely; the hog gives everything back.
    Blocked { held: u64, available: u64 },
    /// Available memory could not be read; the hog gives everything back.
    Unreadable,
    /// Everything given back; the hog ends.
    Done(HogSummary),
}

/// How a hog's run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HogSummary {
    /// Available memory reached the target.
    pub reached: bool,
    /// The most the hog held, bytes.
    pub peak: u64,
    /// The least available memory it read, bytes.
    pub lowest_available: u64,
    /// Steps given back because available memory fell below the floor.
    pub gave_back: u32,
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
                "{PREFIX} done reached={} peak={} lowest_available={} gave_back={}",
                s.reached, s.peak, s.lowest_available, s.gave_back
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
                reached: get("reached")?.parse().map_err(|_| bad())?,
                peak: number("peak")?,
                lowest_available: number("lowest_available")?,
                gave_back: u32::try_from(number("gave_back")?).map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        })
    }
}

/// A hog: its plan, how long it holds, and its hard time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hog {
    pub plan: HogPlan,
    /// How long it holds once the target is reached.
    pub hold: Duration,
    /// The longest it runs, taking and holding together.
    pub limit: Duration,
}

impl Hog {
    /// The hog as one argument (for a child process's environment).
    pub fn to_arg(&self) -> String {
        format!(
            "target={} floor={} step={} hold_ms={} limit_ms={}",
            self.plan.target,
            self.plan.floor,
            self.plan.step,
            self.hold.as_millis(),
            self.limit.as_millis()
        )
    }

    /// Reads [`Hog::to_arg`]'s form back; `None` if any field is missing or
    /// not a number.
    pub fn from_arg(arg: &str) -> Option<Hog> {
        let get = |name: &str| -> Option<u64> {
            arg.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .find(|(k, _)| *k == name)?
                .1
                .parse()
                .ok()
        };
        Some(Hog {
            plan: HogPlan {
                target: get("target")?,
                floor: get("floor")?,
                step: get("step")?.max(MIN_STEP),
            },
            hold: Duration::from_millis(get("hold_ms")?),
            limit: Duration::from_millis(get("limit_ms")?),
        })
    }

    /// Runs the hog: `available` reads available memory (`None`: it cannot
    /// be read, and the hog stops), `tell` hears each piece of news, the
    /// last one [`HogNews::Done`]. Everything taken is given back before it
    /// returns.
    pub fn run(
        &self,
        mut available: impl FnMut() -> Option<u64>,
        mut tell: impl FnMut(&HogNews),
    ) -> HogSummary {
        let start = Instant::now();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut held = 0u64;
        let mut summary = HogSummary {
            lowest_available: u64::MAX,
            ..HogSummary::default()
        };
        let mut reached_at: Option<Instant> = None;
        while start.elapsed() < self.limit && reached_at.is_none_or(|t| t.elapsed() < self.hold) {
            let Some(now) = available() else {
                tell(&HogNews::Unreadable);
                break;
            };
            summary.lowest_available = summary.lowest_available.min(now);
            match self.plan.next(now) {
                Move::GiveBack => match chunks.pop() {
                    Some(chunk) => {
                        held -= chunk.len() as u64;
                        drop(chunk);
                        summary.gave_back += 1;
                        tell(&HogNews::GaveBack {
                            held,
                            available: now,
                        });
                        if reached_at.is_none() {
                            // Something else wants this memory: stop here
                            // rather than take it back and forth.
                            tell(&HogNews::Blocked {
                                held,
                                available: now,
                            });
                            break;
                        }
                    }
                    // Nothing left to give: someone else is below the
                    // floor by themselves; wait for the time limit.
                    None => std::thread::sleep(POLL),
                },
                Move::Take(bytes) if reached_at.is_none() => {
                    chunks.push(touched(bytes));
                    held += bytes;
                    summary.peak = summary.peak.max(held);
                }
                Move::Reached if reached_at.is_none() => {
                    reached_at = Some(Instant::now());
                    summary.reached = true;
                    tell(&HogNews::Reached {
                        held,
                        available: now,
                    });
                }
                Move::Blocked if reached_at.is_none() => {
                    tell(&HogNews::Blocked {
                        held,
                        available: now,
                    });
                    break;
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

    #[test]
    fn a_24_gib_machine_is_pressed_halfway_between_warn_and_the_floor() {
        let usable = 24 * GIB;
        let plan = HogPlan::below_warn(usable, 0.10).unwrap();
        let warn = usable / 10;
        assert_eq!(plan.floor, MIN_FLOOR, "3 % of 24 GiB is less than 1 GiB");
        assert!(plan.target < warn && plan.target > plan.floor);
        assert!(warn - plan.target >= STEP && plan.target - plan.floor >= STEP);
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
        let plan = HogPlan {
            target: 2 * GIB,
            floor: GIB,
            step: STEP,
        };
        assert_eq!(plan.next(10 * GIB), Move::Take(STEP));
        // The last step takes just what is left to the target.
        assert_eq!(plan.next(2 * GIB + (100 << 20)), Move::Take(100 << 20));
        assert_eq!(plan.next(2 * GIB + 1), Move::Take(MIN_STEP));
        assert_eq!(plan.next(2 * GIB), Move::Reached);
        assert_eq!(plan.next(GIB), Move::Reached);
        assert_eq!(plan.next(GIB - 1), Move::GiveBack);
        // A target at the floor: a step that would cross it is smaller,
        // or not made.
        let tight = HogPlan {
            target: GIB,
            floor: GIB,
            step: STEP,
        };
        assert_eq!(tight.next(GIB + (100 << 20)), Move::Take(100 << 20));
        let below = HogPlan {
            target: GIB / 2,
            floor: GIB,
            step: STEP,
        };
        assert_eq!(below.next(GIB + (1 << 20)), Move::Blocked);
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
                peak: 7,
                lowest_available: 8,
                gave_back: 9,
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
            plan: HogPlan {
                target: 3,
                floor: 2,
                step: MIN_STEP,
            },
            hold: Duration::from_millis(1500),
            limit: Duration::from_secs(60),
        };
        assert_eq!(Hog::from_arg(&hog.to_arg()), Some(hog));
        assert_eq!(Hog::from_arg("target=1"), None);
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
            plan: HogPlan {
                target: target_mib << 20,
                floor: floor_mib << 20,
                step: MIN_STEP,
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
        assert!(summary.reached);
        assert_eq!(
            (summary.peak, summary.lowest_available),
            (48 << 20, 60 << 20)
        );
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
        assert!(!summary.reached);
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
}
