//! CPU threads for the engine workers: who computes on how many cores, and
//! at what priority.
//!
//! Every loaded model has a worker process whose llama.cpp threads compute
//! one batch at a time. Two busy workers that each run a thread per core
//! oversubscribe the cores: ggml's threads meet at spin barriers inside
//! every graph, so a thread descheduled for the other worker stalls all of
//! its own (measured on 2 cores: SmolLM2 90 and Gemma 3 45 tok/s alone,
//! 21.5 and 17.9 together with 2 threads each; 55 and 29, alone or
//! together, with 1 thread each). So the daemon hands out the performance
//! cores as a budget ([`assign`]):
//!
//! * an idle worker holds no threads (ggml's pool, built without OpenMP,
//!   has no thread between graphs), so it takes nothing from the budget;
//! * the busy workers share the cores, whole threads, fairly: one busy
//!   model gets all of them, two get half each;
//! * interactive work comes first ([`Priority`]): while a worker serves an
//!   interactive request, the workers serving only background requests
//!   pause (a share of 0 threads: their generations wait, their sequences
//!   stay) and the interactive ones share every core; with no interactive
//!   work, background workers share the cores at
//!   [`ThreadClass::Background`] priority, below the user's own programs.
//!   A third thread beside an interactive model's threads on their cores,
//!   even one the OS runs only when a core is idle (Linux `SCHED_IDLE`),
//!   measured 8 times slower interactive decoding on 2 cores (200 tokens in
//!   17.7 s against 2.1 s): its threads meet at spin barriers every
//!   operation, and each time one waits for a core the others spin.
//!
//! [`CpuBudget`] keeps the requests in flight per worker and says which
//! workers' shares changed, so the daemon tells only those.
//!
//! ```
//! use locara_core::threads::{assign, Demand, Share, ThreadClass};
//!
//! let busy = Demand { interactive: 1, background: 0 };
//! let idle = Demand::default();
//! // One busy model gets every core; an idle one holds none.
//! assert_eq!(
//!     assign(8, &[busy, idle]),
//!     vec![Some(Share { threads: 8, class: ThreadClass::Interactive }), None]
//! );
//! // Two busy models share them.
//! assert_eq!(assign(8, &[busy, busy])[1], Some(Share { threads: 4, class: ThreadClass::Interactive }));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How an app's requests weigh against other work (manifest `priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone waits for the answer: full CPU priority, cores first.
    #[default]
    Interactive,
    /// Batch work (indexing, summaries nobody watches): lower CPU
    /// priority, and it gives way to interactive requests.
    Background,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Background];

    /// The name used in manifests and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Background => "background",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?}: expected \"interactive\" or \"background\"")]
pub struct ParsePriorityError(pub String);

impl FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Priority, ParsePriorityError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParsePriorityError(s.to_string()))
    }
}

/// At what OS priority a worker's threads compute. The platform crate maps
/// each to the OS (`locara_platform::set_thread_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadClass {
    /// Normal priority (macOS: QoS user-initiated).
    #[default]
    Interactive,
    /// Below the user's programs (Linux: `SCHED_BATCH` and nice 10; macOS:
    /// QoS utility): background work.
    Background,
}

impl ThreadClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadClass::Interactive => "interactive",
            ThreadClass::Background => "background",
        }
    }
}

impl fmt::Display for ThreadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Requests with a place on one worker (generating or queued), by
/// priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub interactive: u32,
    pub background: u32,
}

impl Demand {
    pub fn is_idle(&self) -> bool {
        self.interactive == 0 && self.background == 0
    }

    /// The priority the worker computes at: interactive if any of its
    /// requests is (a batch holds every running sequence, so the
    /// interactive one cannot go faster than the batch); `None` when idle.
    pub fn priority(&self) -> Option<Priority> {
        if self.interactive > 0 {
            Some(Priority::Interactive)
        } else if self.background > 0 {
            Some(Priority::Background)
        } else {
            None
        }
    }

    fn requests(&self) -> u32 {
        self.interactive.saturating_add(self.background)
    }
}

/// What a busy worker gets: threads per decode and their class; 0 threads
/// pauses it (background work while interactive work runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub threads: u32,
    pub class: ThreadClass,
}

impl Share {
    /// Background work waiting for interactive work to end.
    pub const PAUSED: Share = Share {
        threads: 0,
        class: ThreadClass::Background,
    };

    pub fn is_paused(&self) -> bool {
        self.threads == 0
    }
}

/// The share of each worker of `demands` (same order), on a machine with
/// `cores` performance cores (0 counts as 1). Idle workers get `None`.
///
/// The workers that compete for the cores (the interactive ones, or the
/// background ones when nothing interactive runs) get `cores / n` threads
/// each, the remainder going one each to those with the most requests
/// (then the first): together exactly the cores, or one thread each when
/// there are more of them than cores. While interactive work runs, a
/// background-only worker is paused ([`Share::PAUSED`]).
pub fn assign(cores: u32, demands: &[Demand]) -> Vec<Option<Share>> {
    assign_with(cores, demands, false)
}

/// [`assign`], where `pause_background` pauses background-only workers
/// even when no interactive work runs (the power policy's thermal serious:
/// `crate::power`).
pub fn assign_with(cores: u32, demands: &[Demand], pause_background: bool) -> Vec<Option<Share>> {
    let cores = cores.max(1);
    let interactive_busy = demands.iter().any(|d| d.interactive > 0);
    if pause_background && !interactive_busy {
        return demands
            .iter()
            .map(|d| d.priority().map(|_| Share::PAUSED))
            .collect();
    }
    let (competing, class) = if interactive_busy {
        (Priority::Interactive, ThreadClass::Interactive)
    } else {
        (Priority::Background, ThreadClass::Background)
    };
    let mut out: Vec<Option<Share>> = demands
        .iter()
        .map(|d| match d.priority() {
            Some(Priority::Background) if interactive_busy => Some(Share::PAUSED),
            _ => None,
        })
        .collect();
    let mut order: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].priority() == Some(competing))
        .collect();
    if order.is_empty() {
        return out;
    }
    // Most requests first, then the order given: who gets the remainder.
    order.sort_by_key(|&i| (std::cmp::Reverse(demands[i].requests()), i));
    let n = order.len() as u32;
    let each = (cores / n).max(1);
    let extra = if cores > n { cores % n } else { 0 };
    for (rank, &i) in order.iter().enumerate() {
        let threads = each + u32::from((rank as u32) < extra);
        out[i] = Some(Share { threads, class });
    }
    out
}

/// The CPU budget across workers as the controller keeps it: each worker's
/// requests in flight and the share it was last told, by instance.
#[derive(Debug, Clone)]
pub struct CpuBudget {
    cores: u32,
    /// The power policy's limit on the cores shared (`None`: all of them).
    limit: Option<u32>,
    /// The power policy pauses background work whatever else runs.
    pause_background: bool,
    workers: BTreeMap<u64, Worker>,
}

#[derive(Debug, Clone, Default)]
struct Worker {
    /// Its worker runs (a loading one computes nothing yet).
    loaded: bool,
    demand: Demand,
    /// The share its worker has now: what it was started with, then what
    /// it was last told.
    told: Option<Share>,
}

impl CpuBudget {
    /// A budget of `cores` performance cores (at least 1).
    pub fn new(cores: u32) -> CpuBudget {
        CpuBudget {
            cores: cores.max(1),
            limit: None,
            pause_background: false,
            workers: BTreeMap::new(),
        }
    }

    /// The performance cores of the machine.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// The cores the busy workers share now: the machine's, or fewer under
    /// the power policy's limit.
    pub fn shared_cores(&self) -> u32 {
        self.limit.map_or(self.cores, |l| l.clamp(1, self.cores))
    }

    /// The power policy's limits from now on (`crate::power`): at most
    /// `limit` cores, and background work paused whatever else runs. The
    /// next [`CpuBudget::changes`] tells the workers.
    pub fn set_power(&mut self, limit: Option<u32>, pause_background: bool) {
        self.limit = limit;
        self.pause_background = pause_background;
    }

    /// What a worker is started with: every core, at interactive priority
    /// (the first [`CpuBudget::changes`] after it loads corrects it).
    pub fn starting_share(&self) -> Share {
        Share {
            threads: self.cores,
            class: ThreadClass::Interactive,
        }
    }

    /// A request got a place on `instance` (loaded or still loading).
    pub fn place(&mut self, instance: u64, priority: Priority) {
        let d = &mut self.workers.entry(instance).or_default().demand;
        match priority {
            Priority::Interactive => d.interactive += 1,
            Priority::Background => d.background += 1,
        }
    }

    /// A request on `instance` ended. One the budget does not know (its
    /// worker is gone) changes nothing.
    pub fn release(&mut self, instance: u64, priority: Priority) {
        if let Some(w) = self.workers.get_mut(&instance) {
            let n = match priority {
                Priority::Interactive => &mut w.demand.interactive,
                Priority::Background => &mut w.demand.background,
            };
            *n = n.saturating_sub(1);
        }
    }

    /// The worker of `instance` runs, with the [`CpuBudget::starting_share`].
    pub fn loaded(&mut self, instance: u64) {
        let start = self.starting_share();
        let w = self.workers.entry(instance).or_default();
        w.loaded = true;
        w.told = Some(start);
    }

    /// The worker of `instance` is gone (or never came): it holds nothing.
    pub fn forget(&mut self, instance: u64) {
        self.workers.remove(&instance);
    }

    /// The requests in flight on `instance`.
    pub fn demand(&self, instance: u64) -> Demand {
        self.workers
            .get(&instance)
            .map_or_else(Demand::default, |w| w.demand)
    }

    /// The share the worker of `instance` has now, while it is busy; `None`
    /// when idle (it holds no threads) or not running.
    pub fn share(&self, instance: u64) -> Option<Share> {
        self.workers
            .get(&instance)
            .filter(|w| w.loaded && !w.demand.is_idle())
            .and_then(|w| w.told)
    }

    /// The busy running workers whose share differs from what they were
    /// last told, with the new share, which is recorded as told. Idle
    /// workers are not told anything: they hold no threads, and their next
    /// request brings a new assignment.
    pub fn changes(&mut self) -> Vec<(u64, Share)> {
        let running: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.loaded)
            .map(|(&i, _)| i)
            .collect();
        let demands: Vec<Demand> = running.iter().map(|i| self.workers[i].demand).collect();
        let shares = assign_with(self.shared_cores(), &demands, self.pause_background);
        let mut out = Vec::new();
        for (instance, share) in running.into_iter().zip(shares) {
            let Some(share) = share else { continue };
            let w = self.workers.get_mut(&instance).expect("listed above");
            if w.told != Some(share) {
                w.told = Some(share);
                out.push((instance, share));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const I: Demand = Demand {
        interactive: 1,
        background: 0,
    };
    const B: Demand = Demand {
        interactive: 0,
        background: 1,
    };
    const IDLE: Demand = Demand {
        interactive: 0,
        background: 0,
    };

    fn share(threads: u32, class: ThreadClass) -> Option<Share> {
        Some(Share { threads, class })
    }

    fn threads(shares: &[Option<Share>]) -> Vec<u32> {
        shares.iter().map(|s| s.map_or(0, |s| s.threads)).collect()
    }

    #[test]
    fn one_busy_model_gets_every_core_and_idle_ones_hold_none() {
        let got = assign(8, &[IDLE, I, IDLE]);
        assert_eq!(
            got,
            vec![None, share(8, ThreadClass::Interactive), None],
            "{got:?}"
        );
        assert_eq!(assign(8, &[IDLE, IDLE]), vec![None, None]);
        assert_eq!(assign(8, &[]), Vec::<Option<Share>>::new());
    }

    #[test]
    fn busy_models_share_the_cores() {
        assert_eq!(threads(&assign(8, &[I, I])), vec![4, 4]);
        assert_eq!(threads(&assign(2, &[I, I])), vec![1, 1]);
        // The remainder goes to the one with more requests, then the first.
        let two = Demand {
            interactive: 2,
            background: 0,
        };
        assert_eq!(threads(&assign(8, &[I, I, two])), vec![3, 2, 3]);
        assert_eq!(threads(&assign(7, &[I, I])), vec![4, 3]);
    }

    #[test]
    fn more_busy_models_than_cores_get_one_thread_each() {
        assert_eq!(threads(&assign(2, &[I, I, I])), vec![1, 1, 1]);
        // No cores known counts as one.
        assert_eq!(threads(&assign(0, &[I])), vec![1]);
    }

    #[test]
    fn background_work_yields_to_interactive_work() {
        let got = assign(2, &[B, I]);
        assert_eq!(
            got,
            vec![Some(Share::PAUSED), share(2, ThreadClass::Interactive)]
        );
        // A worker with any interactive request computes at interactive
        // priority: its batch holds that request.
        let mixed = Demand {
            interactive: 1,
            background: 3,
        };
        assert_eq!(
            assign(4, &[mixed, B]),
            vec![share(4, ThreadClass::Interactive), Some(Share::PAUSED)]
        );
    }

    #[test]
    fn background_work_alone_shares_the_cores_at_background_priority() {
        assert_eq!(
            assign(4, &[B, IDLE, B]),
            vec![
                share(2, ThreadClass::Background),
                None,
                share(2, ThreadClass::Background)
            ]
        );
    }

    #[test]
    fn priorities_parse_and_print() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        assert_eq!(Priority::default(), Priority::Interactive);
        let e = "urgent".parse::<Priority>().unwrap_err();
        assert!(e.to_string().contains("\"urgent\""), "{e}");
        assert_eq!(
            serde_json::to_string(&ThreadClass::Background).unwrap(),
            "\"background\""
        );
    }

    #[test]
    fn the_budget_tells_only_changed_shares_of_running_busy_workers() {
        let mut b = CpuBudget::new(2);
        // A request for a model still loading: nothing runs yet.
        b.place(1, Priority::Interactive);
        assert_eq!(b.changes(), vec![]);
        // Loaded with every core, which is what it should have.
        b.loaded(1);
        assert_eq!(b.changes(), vec![]);
        assert_eq!(b.share(1), share(2, ThreadClass::Interactive));
        // A second model: both halve.
        b.loaded(2);
        b.place(2, Priority::Interactive);
        assert_eq!(
            b.changes(),
            vec![
                (
                    1,
                    Share {
                        threads: 1,
                        class: ThreadClass::Interactive
                    }
                ),
                (
                    2,
                    Share {
                        threads: 1,
                        class: ThreadClass::Interactive
                    }
                )
            ]
        );
        // The first goes idle: it holds nothing and is told nothing; the
        // second gets every core.
        b.release(1, Priority::Interactive);
        assert_eq!(b.share(1), None);
        assert_eq!(
            b.changes(),
            vec![(
                2,
                Share {
                    threads: 2,
                    class: ThreadClass::Interactive
                }
            )]
        );
        // Background work on the first waits for the second.
        b.place(1, Priority::Background);
        assert_eq!(b.changes(), vec![(1, Share::PAUSED)]);
        // The interactive request ends: background gets the cores.
        b.release(2, Priority::Interactive);
        assert_eq!(
            b.changes(),
            vec![(
                1,
                Share {
                    threads: 2,
                    class: ThreadClass::Background
                }
            )]
        );
        // A release for a worker that is gone changes nothing.
        b.forget(2);
        b.release(2, Priority::Interactive);
        assert_eq!(b.changes(), vec![]);
        assert_eq!(b.demand(2), Demand::default());
    }

    #[test]
    fn the_power_policy_lowers_the_cores_and_pauses_background_work() {
        // Thermal serious: background work pauses even alone; interactive
        // work is not touched.
        assert_eq!(
            assign_with(4, &[B, IDLE], true),
            vec![Some(Share::PAUSED), None]
        );
        assert_eq!(
            assign_with(4, &[B, I], true),
            vec![Some(Share::PAUSED), share(4, ThreadClass::Interactive)]
        );
        let mut b = CpuBudget::new(4);
        b.loaded(1);
        b.place(1, Priority::Interactive);
        b.loaded(2);
        b.place(2, Priority::Background);
        assert_eq!(b.changes(), vec![(2, Share::PAUSED)]);
        // On battery: half the cores for the busy workers.
        b.set_power(Some(2), false);
        assert_eq!(b.shared_cores(), 2);
        assert_eq!(
            b.changes(),
            vec![(
                1,
                Share {
                    threads: 2,
                    class: ThreadClass::Interactive
                }
            )]
        );
        // The interactive request ends: background work gets the lowered
        // cores, unless the machine is hot.
        b.release(1, Priority::Interactive);
        b.set_power(Some(2), true);
        assert_eq!(b.changes(), vec![]);
        assert_eq!(b.share(2), Some(Share::PAUSED));
        b.set_power(None, false);
        assert_eq!(
            b.changes(),
            vec![(
                2,
                Share {
                    threads: 4,
                    class: ThreadClass::Background
                }
            )]
        );
        // A limit above the machine's cores is the machine's cores.
        b.set_power(Some(16), false);
        assert_eq!(b.shared_cores(), 4);
    }

    fn demand() -> impl Strategy<Value = Demand> {
        (0u32..3, 0u32..3).prop_map(|(interactive, background)| Demand {
            interactive,
            background,
        })
    }

    proptest! {
        #[test]
        fn the_cores_are_shared_and_never_exceeded(
            cores in 0u32..17,
            demands in proptest::collection::vec(demand(), 0..10),
        ) {
            let got = assign(cores, &demands);
            let cores = cores.max(1);
            prop_assert_eq!(got.len(), demands.len());
            let interactive_busy = demands.iter().any(|d| d.interactive > 0);
            let mut competing = Vec::new();
            for (d, s) in demands.iter().zip(&got) {
                match (d.is_idle(), s) {
                    // Idle workers hold nothing; busy ones a share (a thread
                    // or more, or paused behind interactive work).
                    (true, s) => prop_assert_eq!(*s, None),
                    (false, None) => prop_assert!(false, "a busy worker got nothing: {:?}", got),
                    (false, Some(s)) if s.is_paused() => {
                        // Only background work beside interactive work
                        // waits.
                        prop_assert!(interactive_busy && d.interactive == 0);
                    }
                    (false, Some(s)) => {
                        match s.class {
                            ThreadClass::Interactive => {
                                prop_assert!(d.interactive > 0);
                                competing.push(s.threads);
                            }
                            ThreadClass::Background => {
                                prop_assert!(!interactive_busy);
                                competing.push(s.threads);
                            }
                        }
                    }
                }
            }
            if !competing.is_empty() {
                let sum: u32 = competing.iter().sum();
                let n = competing.len() as u32;
                // The cores and no more (paused workers hold none); one
                // each when there are more workers than cores.
                prop_assert_eq!(sum, cores.max(n));
                // Fair to a thread.
                let (lo, hi) = (competing.iter().min().unwrap(), competing.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "{:?}", competing);
            }
        }

        #[test]
        fn the_budget_agrees_with_assign_after_any_sequence(
            ops in proptest::collection::vec((0u8..5, 0u64..4, any::<bool>()), 0..60),
        ) {
            let mut b = CpuBudget::new(4);
            for (op, instance, background) in ops {
                let p = if background { Priority::Background } else { Priority::Interactive };
                match op {
                    0 | 1 => b.place(instance, p),
                    2 => b.release(instance, p),
                    3 => b.loaded(instance),
                    _ => b.forget(instance),
                }
                b.changes();
                // What the running busy workers were told is what the
                // policy gives them now.
                let running: Vec<u64> = (0..4).filter(|&i| b.workers.get(&i).is_some_and(|w| w.loaded)).collect();
                let demands: Vec<Demand> = running.iter().map(|&i| b.demand(i)).collect();
                let want = assign(4, &demands);
                for (i, w) in running.iter().zip(want) {
                    prop_assert_eq!(b.share(*i), w);
                }
            }
        }
    }
}
