//! Fakes for tests of crates that use this one (feature `testing`).
//! [`SimulatedProbe`](crate::SimulatedProbe) is the scriptable machine; these
//! are the pieces only a test wants, and [`hog`] makes real memory pressure
//! for tests and benchmarks.

pub mod hog;

use crate::{
    time::unix_now_ms, HardwareProbe, HardwareProfile, MemoryProbe, PlatformError, PowerState,
    PressureLevel, PressureSource, PressureWatch, ProcessFootprint, SystemSnapshot,
};

/// A snapshot of a calm machine with `total` bytes of which `available` are
/// available; the rest of the figures are plausible and consistent.
pub fn snapshot(total: u64, available: u64) -> SystemSnapshot {
    SystemSnapshot {
        taken_at_unix_ms: unix_now_ms(),
        total,
        available,
        free: available / 2,
        cached_files: available / 2,
        compressed: None,
        wired: None,
        swap_used: 0,
        swap_total: 0,
        pressure: PressureLevel::Normal,
        psi: None,
        cgroup: None,
    }
}

/// A probe whose every call fails, as on a machine where `/proc` is not
/// mounted: for testing that callers survive probe errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailingProbe;

impl FailingProbe {
    fn error() -> PlatformError {
        PlatformError::Io {
            what: "a failing test probe".into(),
            source: std::io::Error::other("the test asked for a failure"),
        }
    }
}

impl MemoryProbe for FailingProbe {
    fn snapshot(&self) -> Result<SystemSnapshot, PlatformError> {
        Err(Self::error())
    }

    fn process_footprint(&self, _pid: u32) -> Result<ProcessFootprint, PlatformError> {
        Err(Self::error())
    }
}

impl PressureSource for FailingProbe {
    fn watch(&self) -> Result<PressureWatch, PlatformError> {
        Err(Self::error())
    }
}

impl HardwareProbe for FailingProbe {
    fn hardware_profile(&self) -> Result<HardwareProfile, PlatformError> {
        Err(Self::error())
    }

    fn power_state(&self) -> PowerState {
        PowerState::default()
    }
}
