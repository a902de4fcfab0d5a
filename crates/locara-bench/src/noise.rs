//! How much of the machine something other than this benchmark used while it
//! measured: the one number that says whether a run can be trusted.
//!
//! With as many compute threads as cores, llama.cpp's threads wait for each
//! other at every operation of the graph; one other runnable process stalls
//! them all, and decode speed falls by far more than the CPU time it took
//! (on a 2-core machine a parallel build cut decode to a tenth). Linux
//! only: it reads `/proc/stat` for the whole machine and `/proc/<pid>/stat`
//! for this process, its reaped children (the llama-bench runs) and the
//! processes it measures (the engine worker; llama-server, and the Locara
//! daemon with its workers). Elsewhere nothing is reported.

use std::fs;

/// CPU time counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// Ticks every CPU spent busy, the hypervisor's steal included.
    busy: u64,
    /// Ticks every CPU spent in total (busy, idle and waiting for I/O).
    total: u64,
    /// Ticks of this process, its reaped children, and the processes
    /// measured.
    ours: u64,
}

impl CpuSnapshot {
    /// Now, counting the worker `worker_pid` as ours. `None` where `/proc`
    /// is not Linux's.
    pub fn take(worker_pid: u32) -> Option<CpuSnapshot> {
        CpuSnapshot::take_of(&[worker_pid])
    }

    /// Now, counting the processes `pids` as ours. `None` where `/proc` is
    /// not Linux's or one of them is gone.
    pub fn take_of(pids: &[u32]) -> Option<CpuSnapshot> {
        let (busy, total) = machine_ticks(&fs::read_to_string("/proc/stat").ok()?)?;
        let mut ours = process_ticks(&fs::read_to_string("/proc/self/stat").ok()?, true)?;
        for pid in pids {
            ours += process_ticks(
                &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
                false,
            )?;
        }
        Some(CpuSnapshot { busy, total, ours })
    }

    /// Share of all CPU time between `self` and `later` that went to
    /// anything but this benchmark, 0 to 1.
    pub fn others_share(&self, later: &CpuSnapshot) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        let busy = later.busy.saturating_sub(self.busy);
        let ours = later.ours.saturating_sub(self.ours);
        (busy.saturating_sub(ours) as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// `root` and every process below it (a daemon's workers), by the parent
/// ids in `/proc/<pid>/stat`; just `root` where `/proc` is not Linux's.
pub fn with_descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if let Some(ppid) = parent_pid(&stat) {
                parents.push((pid, ppid));
            }
        }
    }
    descendants_in(root, &parents)
}

/// `root` and its descendants in a list of (pid, parent pid).
fn descendants_in(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(pid, ppid)| ppid == parent && !found.contains(&pid))
                .map(|&(pid, _)| pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    found
}

/// Field 4 of `/proc/<pid>/stat`, the parent's pid.
fn parent_pid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Busy and total ticks from the `cpu` line of `/proc/stat`: user, nice,
/// system, idle, iowait, irq, softirq, steal (guest time is already in user).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, busy + idle))
}

/// A process's user + system ticks from `/proc/<pid>/stat`, with those of
/// its reaped children when `children` is set. Fields are counted after the
/// command name, which may itself hold spaces and parentheses.
fn process_ticks(stat: &str, children: bool) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 of proc(5) (state) is fields[0]; utime is field 14.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let mut ticks = field(14)? + field(15)?;
    if children {
        ticks += field(16)? + field(17)?;
    }
    Some(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_count_steal_as_busy() {
        let stat = "cpu  100 5 20 800 10 1 2 12 0 0\ncpu0 50 2 10 400 5 0 1 6 0 0\n";
        assert_eq!(machine_ticks(stat), Some((140, 950)));
        assert_eq!(machine_ticks("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn process_ticks_survive_odd_command_names() {
        let stat = "42 (a b) c) R 1 42 42 0 -1 4194304 100 0 0 0 700 30 9 1 20 0 3 0 1 2 3";
        assert_eq!(process_ticks(stat, false), Some(730));
        assert_eq!(process_ticks(stat, true), Some(740));
        assert_eq!(process_ticks("42 (x) R 1", false), None);
    }

    #[test]
    fn descendants_follow_parent_ids() {
        let parents = [(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)];
        assert_eq!(descendants_in(10, &parents), vec![10, 11, 13, 12]);
        assert_eq!(descendants_in(20, &parents), vec![20]);
        assert_eq!(
            parent_pid("42 (a b) c) S 7 42 42 0 -1 4194304"),
            Some(7),
            "the name may hold spaces and parentheses"
        );
    }

    #[test]
    fn this_process_is_found_below_its_parent_on_linux() {
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            let parent = parent_pid(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
            assert!(with_descendants(parent).contains(&me));
            assert!(CpuSnapshot::take_of(&[me, parent]).is_some());
        }
    }

    #[test]
    fn others_share_is_what_we_did_not_use() {
        let a = CpuSnapshot {
            busy: 1000,
            total: 2000,
            ours: 500,
        };
        let b = CpuSnapshot {
            busy: 1180,
            total: 2200,
            ours: 660,
        };
        // 180 busy ticks of 200, 160 of them ours: 20 of 200 went elsewhere.
        assert!((a.others_share(&b) - 0.1).abs() < 1e-12);
        assert_eq!(a.others_share(&a), 0.0);
    }

    #[test]
    fn this_process_can_be_read_on_linux() {
        if cfg!(target_os = "linux") {
            let pid = std::process::id();
            let s = CpuSnapshot::take(pid).expect("/proc is readable on Linux");
            assert!(s.total >= s.busy);
        }
    }
}
