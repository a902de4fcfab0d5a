//! Platform probes for Locara: what the OS says about memory and the machine.
//!
//! One implementation per OS, each in its own file (`linux.rs`, `macos.rs`),
//! behind the same functions; all `unsafe` FFI stays in those files.
//!
//! ```no_run
//! let fp = locara_platform::process_footprint(std::process::id())?;
//! println!("footprint {} (RSS {})", fp.footprint, fp.rss);
//! # Ok::<(), locara_platform::PlatformError>(())
//! ```

use serde::Serialize;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;

/// What the OS charges one process, in bytes, in DESIGN.md's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessFootprint {
    /// Memory the OS charges the process: macOS `phys_footprint`; Linux
    /// `Private_Dirty + Swap` from `/proc/<pid>/smaps_rollup`.
    pub footprint: u64,
    /// Resident file-backed pages (the mmap'd weights): reclaimable without
    /// swap, never counted as used. 0 where the OS does not report it.
    pub mapped_weights: u64,
    /// Resident set size; shown only next to footprint, because it counts
    /// mapped weights too and misleads for mmap'd models.
    pub rss: u64,
}

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
}

impl PlatformError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            PlatformError::NoSuchProcess { .. } => "no_such_process",
            PlatformError::Io { .. } => "probe_io",
            PlatformError::Parse { .. } => "probe_parse",
            PlatformError::Unsupported(_) => "unsupported",
        }
    }
}

/// The footprint of process `pid`.
pub fn process_footprint(pid: u32) -> Result<ProcessFootprint, PlatformError> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        os::process_footprint(pid)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        Err(PlatformError::Unsupported("process footprint"))
    }
}

/// CPU threads an engine should use: the performance cores (macOS
/// `hw.perflevel0.physicalcpu`) or physical cores (Linux), never "all"
/// logical CPUs, and never more than this process may run on.
pub fn performance_cores() -> u32 {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        os::performance_cores().unwrap_or(logical).clamp(1, logical)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        logical
    }
}

/// Physical memory of the machine in bytes (or of the memory-limited cgroup
/// the process runs in, on Linux, when that is smaller).
pub fn physical_memory() -> Result<u64, PlatformError> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        os::physical_memory()
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        Err(PlatformError::Unsupported("physical memory"))
    }
}
