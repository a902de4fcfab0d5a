//! Platform probes for Locara: what the OS says about memory and the machine.
//!
//! Everything the governor learns about the outside world comes through
//! three traits, so that tests and `locara pressure simulate` can stand in
//! for the OS:
//!
//! * [`MemoryProbe`]: a [`SystemSnapshot`] of the machine's memory, and the
//!   [`ProcessFootprint`] of a pid (footprint, mapped weights, RSS);
//! * [`PressureSource`]: a [`PressureWatch`], the stream of
//!   [`PressureEvent`]s as the [`PressureLevel`] moves between normal, warn
//!   and critical;
//! * [`HardwareProbe`]: the [`HardwareProfile`] (chip, RAM, cores, GPU
//!   working-set cap, [`Tier`], default budget) and the [`PowerState`].
//!
//! [`SystemProbe`] implements them for the OS it runs on, one file per OS
//! (`linux.rs`, `macos.rs`; all `unsafe` FFI stays in those files).
//! [`SimulatedProbe`] is a machine scripted by hand. [`ActivityGuard`] keeps
//! a Mac from idle-sleeping while a model loads or generates, and
//! [`check_supported`] refuses machines the runtime cannot serve (Intel Macs).
//!
//! ```no_run
//! use locara_platform::{MemoryProbe, PressureSource, SystemProbe};
//!
//! locara_platform::check_supported()?;
//! let probe = SystemProbe::default();
//! let snap = probe.snapshot()?;
//! println!("available {} of {} bytes, pressure {}", snap.available, snap.total, snap.pressure);
//! let fp = probe.process_footprint(std::process::id())?;
//! println!("footprint {} (RSS {})", fp.footprint, fp.rss);
//! let watch = probe.watch()?;
//! while let Some(event) = watch.recv() {
//!     println!("pressure {} -> {}: {}", event.previous, event.level, event.reason);
//! }
//! # Ok::<(), locara_platform::PlatformError>(())
//! ```

mod activity;
pub mod fs;
mod hardware;
mod level;
mod macos_parse;
pub mod simulated;
mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
mod watch;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod unix;
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
#[path = "unsupported.rs"]
mod os;

pub use activity::ActivityGuard;
pub use hardware::{
    default_budget, estimate_backend, BudgetBasis, GpuInfo, HardwareProfile, PowerState,
    ThermalState, Tier, DEFAULT_BUDGET_PERCENT,
};
pub use level::{
    assess, Assessment, LevelChange, LevelDeriver, PressureConfig, PressureSample, PsiTriggerSpec,
    Thresholds,
};
pub use simulated::SimulatedProbe;
pub use snapshot::{
    CgroupEvents, CgroupMemory, ParsePressureLevelError, PressureLevel, ProcessFootprint, Psi,
    PsiAverages, SystemSnapshot,
};
pub use watch::{PressureEvent, PressureWatch, WatchEnded};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of the probes.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("process {pid} does not exist (or is not ours to read)")]
    NoSuchProcess { pid: u32 },
    #[error("reading {what} failed: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} has an unexpected format: {detail}")]
    Parse { what: String, detail: String },
    #[error("this platform has no probe for {0}")]
    Unsupported(&'static str),
    /// The machine cannot run Locara (an Intel Mac, an x86_64 build under
    /// Rosetta); the message says what to do.
    #[error("{0}")]
    UnsupportedMachine(String),
    #[error("pressure setting {field} = {value} is out of range ({limit})")]
    InvalidConfig {
        field: &'static str,
        value: String,
        limit: &'static str,
    },
}

impl PlatformError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            PlatformError::NoSuchProcess { .. } => "no_such_process",
            PlatformError::Io { .. } => "probe_io",
            PlatformError::Parse { .. } => "probe_parse",
            PlatformError::Unsupported(_) => "unsupported",
            PlatformError::UnsupportedMachine(_) => "unsupported_machine",
            PlatformError::InvalidConfig { .. } => "invalid_config",
        }
    }
}

/// Memory figures: the machine's, and one process's.
pub trait MemoryProbe: Send + Sync {
    /// The machine's memory now.
    fn snapshot(&self) -> Result<SystemSnapshot, PlatformError>;
    /// What the OS charges process `pid`.
    fn process_footprint(&self, pid: u32) -> Result<ProcessFootprint, PlatformError>;
}

/// Pressure level changes as they happen.
pub trait PressureSource: Send + Sync {
    /// Starts watching. The watch knows the level at its start and reports
    /// each change after; dropping it stops the watching.
    fn watch(&self) -> Result<PressureWatch, PlatformError>;
}

/// What the machine is, and how warm and powered it is now.
pub trait HardwareProbe: Send + Sync {
    /// Probes the hardware (cheap enough to call at start; the CLI persists
    /// the result because it does not change).
    fn hardware_profile(&self) -> Result<HardwareProfile, PlatformError>;
    /// Thermal state, low-power mode and battery now.
    fn power_state(&self) -> PowerState;
}

/// Bytes of file pages that the runtime's own processes map and keep
/// resident: the loaded models' weights, as the governor last measured
/// them. The governor sets it; the pressure level reads it with each sample
/// ([`PressureSample::held_mapped`]). Clones share one figure.
#[derive(Debug, Clone, Default)]
pub struct HeldMapped(Arc<AtomicU64>);

impl HeldMapped {
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The probes of the OS this runs on.
#[derive(Debug, Clone, Default)]
pub struct SystemProbe {
    config: PressureConfig,
    held: HeldMapped,
}

impl SystemProbe {
    /// Probes whose pressure watch uses `config` (checked first).
    pub fn new(config: PressureConfig) -> Result<Self, PlatformError> {
        config.validate()?;
        Ok(SystemProbe {
            config,
            held: HeldMapped::default(),
        })
    }

    /// The same probes, judging pressure with `held` as the runtime's own
    /// mapped weights (Linux; macOS reports its own level).
    pub fn with_held_mapped(self, held: HeldMapped) -> Self {
        SystemProbe { held, ..self }
    }

    pub fn config(&self) -> &PressureConfig {
        &self.config
    }
}

impl MemoryProbe for SystemProbe {
    fn snapshot(&self) -> Result<SystemSnapshot, PlatformError> {
        os::snapshot(&self.config.thresholds, self.held.get())
    }

    fn process_footprint(&self, pid: u32) -> Result<ProcessFootprint, PlatformError> {
        os::process_footprint(pid)
    }
}

impl PressureSource for SystemProbe {
    fn watch(&self) -> Result<PressureWatch, PlatformError> {
        os::watch(&self.config, self.held.clone())
    }
}

impl HardwareProbe for SystemProbe {
    fn hardware_profile(&self) -> Result<HardwareProfile, PlatformError> {
        os::hardware_profile()
    }

    fn power_state(&self) -> PowerState {
        os::power_state()
    }
}

/// Refuses machines the runtime cannot serve, with a message that says what
/// to do: an Intel Mac, or an x86_64 build running under Rosetta on Apple
/// Silicon. Linux machines pass. The binary calls this when it starts.
pub fn check_supported() -> Result<(), PlatformError> {
    os::check_supported()
}

/// The footprint of process `pid` (see [`MemoryProbe::process_footprint`]).
pub fn process_footprint(pid: u32) -> Result<ProcessFootprint, PlatformError> {
    os::process_footprint(pid)
}

/// Gives the page cache of the file at `path` back to the OS, the pages no
/// process maps; returns the bytes of it that were resident and are no
/// more. After a model is unloaded under pressure its weights stay cached
/// (on Linux, seen on the kernel's active list after a load), and a kernel
/// short of memory scans and stalls before it gets them back. Linux only: macOS manages its file cache under its own
/// pressure levels (`Unsupported` there).
pub fn drop_file_cache(path: &Path) -> Result<u64, PlatformError> {
    os::drop_file_cache(path)
}

/// CPU threads an engine should use: the performance cores (macOS
/// `hw.perflevel0.physicalcpu`) or physical cores (Linux, less the
/// efficiency cores of a hybrid CPU), never "all" logical CPUs, and never
/// more than this process may run on.
pub fn performance_cores() -> u32 {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    os::performance_cores().unwrap_or(logical).clamp(1, logical)
}

/// Sets the calling thread's CPU priority for work of `class`: Linux
/// `SCHED_OTHER`, or `SCHED_BATCH` with nice 10; macOS QoS user-initiated or
/// utility. Threads the caller creates after this start with it (ggml's
/// worker threads are created per graph by the thread that decodes).
///
/// On Linux an unprivileged thread cannot take back a raised nice value,
/// so the background class is for threads made for the work
/// (the engine worker decodes background batches on a thread of their own);
/// asking a thread for `Interactive` after that gives it the normal policy
/// but leaves its nice value raised.
pub fn set_thread_class(class: locara_core::threads::ThreadClass) -> Result<(), PlatformError> {
    os::set_thread_class(class)
}

/// Physical memory of the machine in bytes (or of the memory-limited cgroup
/// the process runs in, on Linux, when that is smaller).
pub fn physical_memory() -> Result<u64, PlatformError> {
    os::physical_memory()
}

/// Space of the file system a path is on, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Size of the file system.
    pub total: u64,
    /// Bytes an unprivileged process may still write (`f_bavail`: the
    /// blocks reserved for root are not counted).
    pub available: u64,
}

/// The size and free space of the file system `path` is on (`statvfs`).
pub fn disk_space(path: &Path) -> Result<DiskSpace, PlatformError> {
    os::disk_space(path)
}

/// A running process of a given program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramProcess {
    pub pid: u32,
    /// Its arguments, the program name first.
    pub args: Vec<String>,
}

/// The processes running the executable `exe` (this user's, or all where we
/// may read them), e.g. the `locara` binary's engine workers.
pub fn processes_of(exe: &Path) -> Result<Vec<ProgramProcess>, PlatformError> {
    os::processes_of(exe)
}
