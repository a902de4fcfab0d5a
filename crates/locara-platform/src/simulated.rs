//! A scriptable machine: memory figures, footprints, power state and the
//! pressure level are set by hand. Tests use it in place of the OS.
//! (`locara pressure simulate` does not go through it: the daemon's governor
//! holds a simulated level of its own, which overrides the OS's the way
//! `memory_pressure -S` does on macOS.)
//!
//! ```
//! use locara_platform::{PressureLevel, PressureSource, SimulatedProbe};
//!
//! let probe = SimulatedProbe::new(locara_platform::simulated::mac_profile(16));
//! let watch = probe.watch().unwrap();
//! probe.set_level(PressureLevel::Warn, "simulated");
//! assert_eq!(watch.try_recv().unwrap().level, PressureLevel::Warn);
//! ```

use crate::{
    time::unix_now_ms, BudgetBasis, GpuInfo, HardwareProbe, HardwareProfile, MemoryProbe,
    PlatformError, PowerState, PressureEvent, PressureLevel, PressureSource, PressureWatch,
    ProcessFootprint, SystemSnapshot, ThermalState, Tier,
};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

const GIB: u64 = 1 << 30;

/// A machine whose every figure is set by hand. Clones share one state, so a
/// test keeps a clone to script what the code under test sees.
#[derive(Clone)]
pub struct SimulatedProbe {
    state: Arc<Mutex<State>>,
}

struct State {
    snapshot: SystemSnapshot,
    footprints: HashMap<u32, ProcessFootprint>,
    hardware: HardwareProfile,
    power: PowerState,
    level: PressureLevel,
    watchers: Vec<Sender<PressureEvent>>,
}

impl SimulatedProbe {
    /// A calm machine of the given profile: a quarter of its memory in use, a
    /// quarter cached, no swap, pressure normal, nominal power on mains.
    pub fn new(hardware: HardwareProfile) -> Self {
        let total = hardware.usable_memory();
        let snapshot = SystemSnapshot {
            taken_at_unix_ms: unix_now_ms(),
            total,
            available: total / 4 * 3,
            free: total / 2,
            cached_files: total / 4,
            compressed: hardware.apple_silicon.then_some(0),
            wired: hardware.apple_silicon.then_some(GIB.min(total / 8)),
            swap_used: 0,
            swap_total: 0,
            pressure: PressureLevel::Normal,
            psi: None,
            cgroup: None,
        };
        SimulatedProbe {
            state: Arc::new(Mutex::new(State {
                snapshot,
                footprints: HashMap::new(),
                hardware,
                power: PowerState {
                    thermal: ThermalState::Nominal,
                    low_power_mode: Some(false),
                    on_battery: Some(false),
                },
                level: PressureLevel::Normal,
                watchers: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in a caller's closure
        // (each setter writes whole values), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The simulated pressure level now.
    pub fn level(&self) -> PressureLevel {
        self.state().level
    }

    /// Sets the pressure level; every open watch gets an event when it
    /// changes. Levels are passed on as they are, with no quiet period.
    pub fn set_level(&self, level: PressureLevel, reason: impl Into<String>) {
        let mut state = self.state();
        if state.level == level {
            return;
        }
        let event = PressureEvent {
            level,
            previous: state.level,
            at_unix_ms: unix_now_ms(),
            reason: reason.into(),
        };
        state.level = level;
        state.snapshot.pressure = level;
        state.watchers.retain(|w| w.send(event.clone()).is_ok());
    }

    /// Replaces the memory figures (its `pressure` is replaced by the
    /// simulated level).
    pub fn set_snapshot(&self, snapshot: SystemSnapshot) {
        let mut state = self.state();
        state.snapshot = SystemSnapshot {
            pressure: state.level,
            ..snapshot
        };
    }

    /// Changes some memory figures in place.
    pub fn update_snapshot(&self, change: impl FnOnce(&mut SystemSnapshot)) {
        let mut state = self.state();
        change(&mut state.snapshot);
        state.snapshot.pressure = state.level;
    }

    /// Sets what `process_footprint(pid)` answers.
    pub fn set_footprint(&self, pid: u32, footprint: ProcessFootprint) {
        self.state().footprints.insert(pid, footprint);
    }

    /// Makes `pid` vanish, as a process that exited.
    pub fn remove_process(&self, pid: u32) {
        self.state().footprints.remove(&pid);
    }

    pub fn set_power(&self, power: PowerState) {
        self.state().power = power;
    }

    pub fn set_hardware(&self, hardware: HardwareProfile) {
        self.state().hardware = hardware;
    }
}

impl MemoryProbe for SimulatedProbe {
    fn snapshot(&self) -> Result<SystemSnapshot, PlatformError> {
        Ok(self.state().snapshot.clone())
    }

    fn process_footprint(&self, pid: u32) -> Result<ProcessFootprint, PlatformError> {
        self.state()
            .footprints
            .get(&pid)
            .copied()
            .ok_or(PlatformError::NoSuchProcess { pid })
    }
}

impl PressureSource for SimulatedProbe {
    fn watch(&self) -> Result<PressureWatch, PlatformError> {
        let (tx, rx) = channel();
        let mut state = self.state();
        state.watchers.push(tx);
        Ok(PressureWatch::new(
            state.level,
            rx,
            "simulated".into(),
            None,
            None,
        ))
    }
}

impl HardwareProbe for SimulatedProbe {
    fn hardware_profile(&self) -> Result<HardwareProfile, PlatformError> {
        Ok(self.state().hardware.clone())
    }

    fn power_state(&self) -> PowerState {
        self.state().power
    }
}

/// The profile of an Apple Silicon Mac with `ram_gb` GB, with Metal's usual
/// working-set cap (about 2/3 of RAM up to 36 GB, 3/4 above).
pub fn mac_profile(ram_gb: u64) -> HardwareProfile {
    let ram = ram_gb * GIB;
    let cap = if ram_gb <= 36 {
        ram / 3 * 2
    } else {
        ram / 4 * 3
    };
    let mut p = HardwareProfile {
        os: "macos".into(),
        os_version: "15.0".into(),
        arch: "aarch64".into(),
        chip: "Apple M2 (simulated)".into(),
        apple_silicon: true,
        physical_ram: ram,
        memory_limit: None,
        performance_cores: 4,
        efficiency_cores: 4,
        page_size: 16384,
        gpu: Some(GpuInfo {
            name: "Apple M2 (simulated)".into(),
            working_set_cap: cap,
            unified_memory: true,
        }),
        iogpu_wired_limit_mb: Some(0),
        tier: Tier::Gb8,
        default_budget: 0,
        budget_basis: BudgetBasis::RamShare,
    };
    p.derive_tier_and_budget();
    p
}

/// The profile of a Linux machine with `ram_gb` GB and no GPU.
pub fn linux_profile(ram_gb: u64) -> HardwareProfile {
    let mut p = HardwareProfile {
        os: "linux".into(),
        os_version: "6.8.0".into(),
        arch: "x86_64".into(),
        chip: "Simulated CPU".into(),
        apple_silicon: false,
        physical_ram: ram_gb * GIB,
        memory_limit: None,
        performance_cores: 8,
        efficiency_cores: 0,
        page_size: 4096,
        gpu: None,
        iogpu_wired_limit_mb: None,
        tier: Tier::Gb8,
        default_budget: 0,
        budget_basis: BudgetBasis::RamShare,
    };
    p.derive_tier_and_budget();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use PressureLevel::{Critical, Normal, Warn};

    #[test]
    fn scripted_levels_reach_every_watch_in_order() {
        let probe = SimulatedProbe::new(mac_profile(16));
        let a = probe.watch().unwrap();
        probe.set_level(Warn, "script step 1");
        let b = probe.watch().unwrap();
        assert_eq!(b.initial_level(), Warn);
        probe.set_level(Warn, "no change, no event");
        probe.set_level(Critical, "script step 2");
        probe.set_level(Normal, "script step 3");

        let seen: Vec<_> = std::iter::from_fn(|| a.try_recv())
            .map(|e| (e.previous, e.level))
            .collect();
        assert_eq!(seen, [(Normal, Warn), (Warn, Critical), (Critical, Normal)]);
        let seen: Vec<_> = std::iter::from_fn(|| b.try_recv())
            .map(|e| e.level)
            .collect();
        assert_eq!(seen, [Critical, Normal]);
        assert_eq!(probe.snapshot().unwrap().pressure, Normal);
    }

    #[test]
    fn a_level_set_from_another_thread_wakes_a_waiting_watch() {
        let probe = SimulatedProbe::new(linux_profile(8));
        let watch = probe.watch().unwrap();
        let driver = probe.clone();
        let t = std::thread::spawn(move || driver.set_level(Critical, "from a thread"));
        let event = watch
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("an event before the deadline");
        assert_eq!(event.level, Critical);
        assert_eq!(event.reason, "from a thread");
        t.join().unwrap();
    }

    #[test]
    fn dropped_watches_are_forgotten() {
        let probe = SimulatedProbe::new(linux_profile(8));
        drop(probe.watch().unwrap());
        probe.set_level(Warn, "nobody listens");
        assert!(probe.state().watchers.is_empty());
    }

    #[test]
    fn footprints_and_figures_are_what_the_script_says() {
        let probe = SimulatedProbe::new(mac_profile(16));
        let fp = ProcessFootprint {
            footprint: 3 * GIB,
            mapped_weights: GIB,
            rss: 4 * GIB,
        };
        probe.set_footprint(42, fp);
        assert_eq!(probe.process_footprint(42).unwrap(), fp);
        probe.remove_process(42);
        assert_eq!(
            probe.process_footprint(42).unwrap_err().kind(),
            "no_such_process"
        );
        probe.update_snapshot(|s| s.available = GIB);
        assert_eq!(probe.snapshot().unwrap().available, GIB);
        let hw = probe.hardware_profile().unwrap();
        assert_eq!(hw.tier, Tier::Gb16);
        assert_eq!(hw.budget_basis, BudgetBasis::GpuWorkingSetCap);
    }
}
