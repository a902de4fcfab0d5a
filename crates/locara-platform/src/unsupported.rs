//! Platforms with no probes: every probe says so.

use crate::{
    HardwareProfile, HeldMapped, PlatformError, PowerState, PressureConfig, PressureWatch,
    ProcessFootprint, ProgramProcess, SystemSnapshot, Thresholds,
};
use std::path::Path;

pub(crate) fn process_footprint(_pid: u32) -> Result<ProcessFootprint, PlatformError> {
    Err(PlatformError::Unsupported("process footprint"))
}

pub(crate) fn drop_file_cache(_path: &Path) -> Result<u64, PlatformError> {
    Err(PlatformError::Unsupported("dropping a file's page cache"))
}

pub(crate) fn performance_cores() -> Option<u32> {
    None
}

pub(crate) fn physical_memory() -> Result<u64, PlatformError> {
    Err(PlatformError::Unsupported("physical memory"))
}

pub(crate) fn snapshot(
    _thresholds: &Thresholds,
    _held_mapped: u64,
) -> Result<SystemSnapshot, PlatformError> {
    Err(PlatformError::Unsupported("memory snapshot"))
}

pub(crate) fn watch(
    _config: &PressureConfig,
    _held: HeldMapped,
) -> Result<PressureWatch, PlatformError> {
    Err(PlatformError::Unsupported("pressure events"))
}

pub(crate) fn hardware_profile() -> Result<HardwareProfile, PlatformError> {
    Err(PlatformError::Unsupported("hardware profile"))
}

pub(crate) fn power_state() -> PowerState {
    PowerState::default()
}

pub(crate) fn check_supported() -> Result<(), PlatformError> {
    Err(PlatformError::UnsupportedMachine(
        "Locara runs on Apple Silicon Macs and on Linux; this operating system is not supported"
            .into(),
    ))
}

pub(crate) fn set_thread_class(
    _class: locara_core::threads::ThreadClass,
) -> Result<(), PlatformError> {
    Err(PlatformError::Unsupported("thread priority"))
}

pub(crate) fn disk_space(_path: &Path) -> Result<crate::DiskSpace, PlatformError> {
    Err(PlatformError::Unsupported("disk space"))
}

pub(crate) fn processes_of(_exe: &Path) -> Result<Vec<ProgramProcess>, PlatformError> {
    Err(PlatformError::Unsupported("process list"))
}

/// No-op: see [`crate::ActivityGuard`].
pub(crate) struct Activity;

impl Activity {
    pub(crate) fn begin(_reason: &str) -> Activity {
        Activity
    }

    pub(crate) fn is_held(&self) -> bool {
        false
    }
}
