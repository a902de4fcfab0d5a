//! What a memory probe reports: the machine's memory at one moment, the
//! footprint of one process, and the pressure level.

use serde::{Deserialize, Serialize};

/// How hard the OS is pressed for memory: the pressure ladder's levels,
/// defined with the ladder in `locara-core`.
pub use locara_core::ladder::{ParsePressureLevelError, PressureLevel};

/// What the OS charges one process, in bytes, in docs/ARCHITECTURE.md's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFootprint {
    /// Memory the OS charges the process and can only get back by swapping
    /// or ending it: macOS `phys_footprint`; Linux `RssAnon + VmSwap` from
    /// `/proc/<pid>/status`.
    pub footprint: u64,
    /// Resident file-backed pages (the mmap'd weights): reclaimable without
    /// swap, never counted as used. On macOS, resident pages not charged to
    /// the footprint (the OS does not split them by backing in this call).
    pub mapped_weights: u64,
    /// Resident set size; shown only next to footprint, because it counts
    /// mapped weights too and misleads for mmap'd models.
    pub rss: u64,
}

/// The machine's memory at one moment, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSnapshot {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Physical memory the OS manages (Linux `MemTotal`, macOS `hw.memsize`).
    pub total: u64,
    /// What can still be handed out without swapping or compressing: Linux
    /// `MemAvailable` (lowered to the cgroup's headroom in a memory-limited
    /// cgroup); macOS total minus app memory, wired and compressed, as
    /// Activity Monitor counts "memory used".
    pub available: u64,
    /// Pages nobody uses right now. Low free memory is normal: the OS keeps
    /// spare RAM busy as file cache.
    pub free: u64,
    /// File contents kept in RAM, mapped weights included: reclaimable
    /// without swap (Linux `Buffers + Cached - Shmem`; macOS external plus
    /// purgeable pages).
    pub cached_files: u64,
    /// Memory held by the compressor (macOS; Linux `Zswap` where the kernel
    /// reports it). `None` where the OS has no such figure.
    pub compressed: Option<u64>,
    /// Pages that can never be paged out: kernel, GPU buffers (macOS).
    pub wired: Option<u64>,
    /// Swap in use.
    pub swap_used: u64,
    /// Swap configured (0 when there is none).
    pub swap_total: u64,
    /// The pressure level right now, from this one reading (no hysteresis:
    /// a [`PressureWatch`](crate::PressureWatch) holds a level through a quiet
    /// period before it drops).
    pub pressure: PressureLevel,
    /// Linux pressure stall information for memory, when the kernel has it.
    pub psi: Option<Psi>,
    /// The memory-limited cgroup this process runs in, when there is one.
    pub cgroup: Option<CgroupMemory>,
}

impl SystemSnapshot {
    /// The memory `available` is a share of, bytes: `total`, or the
    /// cgroup's limit where that is lower (the pressure level's "usable
    /// memory", docs/ARCHITECTURE.md 3.3).
    pub fn usable(&self) -> u64 {
        self.cgroup
            .as_ref()
            .map_or(self.total, |c| c.limit.min(self.total))
    }
}

/// One line of a PSI file: the share of wall time in which tasks stalled on
/// memory, in percent, averaged over 10, 60 and 300 seconds, and the total
/// stall time in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiAverages {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// Memory pressure stall information (`/proc/pressure/memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// Time in which at least one task stalled on memory.
    pub some: PsiAverages,
    /// Time in which all non-idle tasks stalled at once (absent on old kernels).
    pub full: Option<PsiAverages>,
}

/// The memory controller of the cgroup that limits this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMemory {
    /// Cgroup version: 1 or 2.
    pub version: u8,
    /// The directory of the limiting cgroup.
    pub path: String,
    /// The limit in bytes (`memory.max`, or v1's hierarchical limit).
    pub limit: u64,
    /// Charged to the cgroup, page cache included (`memory.current`, v1
    /// `memory.usage_in_bytes`).
    pub usage: u64,
    /// Inactive file cache within `usage`: the kernel drops it first when the
    /// limit is near.
    pub reclaimable_files: u64,
    /// Event counters since the cgroup was created.
    pub events: CgroupEvents,
}

impl CgroupMemory {
    /// Bytes the cgroup can still take before its limit, counting inactive
    /// file cache as free (the working-set rule container runtimes use).
    pub fn headroom(&self) -> u64 {
        let working_set = self.usage.saturating_sub(self.reclaimable_files);
        self.limit.saturating_sub(working_set)
    }
}

/// Cumulative counters of the cgroup's memory events (v2 `memory.events`;
/// v1 has `failcnt` for `max` and `oom_control`'s `oom_kill`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupEvents {
    /// Times the cgroup went over `memory.high` and was throttled.
    pub high: u64,
    /// Times the cgroup hit its limit and reclaimed (v1: `failcnt`).
    pub max: u64,
    /// Times reclaim at the limit failed.
    pub oom: u64,
    /// Processes killed by the OOM killer in the cgroup.
    pub oom_kill: u64,
}
