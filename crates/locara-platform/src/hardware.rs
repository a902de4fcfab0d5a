//! The machine profile (chip, RAM, cores, GPU, tier, default budget) and the
//! power state.
//!
//! Tiers and the default budget are policy and belong in `locara-core` with
//! the rest of the memory math; they live here, as pure functions, until that
//! crate has a place for them.

use locara_core::Backend;
use serde::{Deserialize, Serialize};
use std::fmt;

const GIB: u64 = 1 << 30;

/// What a machine is, probed once: RAM is soldered on a Mac, so this is a
/// permanent property, persisted by the CLI and used to gate what an app may
/// install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareProfile {
    /// `macos` or `linux`.
    pub os: String,
    /// The OS release (macOS product version, Linux kernel release).
    pub os_version: String,
    /// CPU architecture of the machine (`aarch64`, `x86_64`).
    pub arch: String,
    /// Chip name: macOS `machdep.cpu.brand_string` ("Apple M2 Pro"), Linux
    /// `/proc/cpuinfo` model name.
    pub chip: String,
    /// An Apple Silicon machine (unified memory shared by CPU and GPU).
    pub apple_silicon: bool,
    /// Installed RAM in bytes (`hw.memsize`; Linux `MemTotal`).
    pub physical_ram: u64,
    /// The memory limit of the cgroup this process runs in, when it is below
    /// the physical RAM (Linux): then it is the machine this process has.
    pub memory_limit: Option<u64>,
    /// Performance cores (`hw.perflevel0.physicalcpu`; Linux: physical cores
    /// this process may run on, less efficiency cores).
    pub performance_cores: u32,
    /// Efficiency cores (`hw.perflevel1.physicalcpu`; Linux: hybrid CPUs'
    /// `cpu_atom` cores); 0 where there are none.
    pub efficiency_cores: u32,
    /// The VM page size in bytes (16 KiB on Apple Silicon).
    pub page_size: u64,
    /// The Metal GPU, where there is one.
    pub gpu: Option<GpuInfo>,
    /// `iogpu.wired_limit_mb` as set by the user (0 = the OS default); read,
    /// never written. `None` where the sysctl does not exist.
    pub iogpu_wired_limit_mb: Option<u64>,
    /// The memory tier, from the usable memory.
    pub tier: Tier,
    /// Bytes the runtime may hold by default: see [`default_budget`].
    pub default_budget: u64,
    /// Where the default budget comes from.
    pub budget_basis: BudgetBasis,
}

impl HardwareProfile {
    /// Memory this process can have: the physical RAM, or the cgroup's limit
    /// when that is lower.
    pub fn usable_memory(&self) -> u64 {
        self.memory_limit
            .map_or(self.physical_ram, |l| l.min(self.physical_ram))
    }

    /// Sets `tier`, `default_budget` and `budget_basis` from the other fields.
    pub fn derive_tier_and_budget(&mut self) {
        let usable = self.usable_memory();
        self.tier = Tier::for_memory(usable);
        let (budget, basis) = default_budget(usable, self.gpu.as_ref().map(|g| g.working_set_cap));
        self.default_budget = budget;
        self.budget_basis = basis;
    }
}

/// The Metal device (macOS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The device name ("Apple M2 Pro").
    pub name: String,
    /// `MTLDevice.recommendedMaxWorkingSetSize` in bytes: how much memory the
    /// GPU may use before performance suffers.
    pub working_set_cap: u64,
    /// CPU and GPU share one memory (every Apple Silicon Mac).
    pub unified_memory: bool,
}

/// Share of usable memory the runtime takes by default, in percent
/// (docs/ARCHITECTURE.md: leave the rest of the machine room to work).
pub const DEFAULT_BUDGET_PERCENT: u64 = 70;

/// Where a default budget comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetBasis {
    /// The GPU working-set cap was the smaller figure.
    GpuWorkingSetCap,
    /// 70 % of the usable memory was the smaller figure.
    RamShare,
}

impl fmt::Display for BudgetBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetBasis::GpuWorkingSetCap => f.write_str("the GPU working-set cap"),
            BudgetBasis::RamShare => write!(f, "{DEFAULT_BUDGET_PERCENT} % of memory"),
        }
    }
}

/// The default budget (docs/ARCHITECTURE.md): min(GPU working-set cap where one exists,
/// 70 % of the usable memory).
pub fn default_budget(usable_memory: u64, gpu_working_set_cap: Option<u64>) -> (u64, BudgetBasis) {
    let share = (u128::from(usable_memory) * u128::from(DEFAULT_BUDGET_PERCENT) / 100) as u64;
    match gpu_working_set_cap {
        Some(cap) if cap > 0 && cap < share => (cap, BudgetBasis::GpuWorkingSetCap),
        _ => (share, BudgetBasis::RamShare),
    }
}

/// Memory tiers, named by the RAM sizes Macs ship with. The bounds sit
/// between those sizes, so a Linux `MemTotal` a little under the installed
/// RAM lands in the right tier:
///
/// | tier | usable memory | Macs |
/// |---|---|---|
/// | `8gb` | below 12 GiB | 8 GB |
/// | `16gb` | 12 to below 20 GiB | 16, 18 GB |
/// | `24-36gb` | 20 to below 44 GiB | 24, 32, 36 GB |
/// | `48-64gb` | 44 to below 80 GiB | 48, 64 GB |
/// | `96gb+` | 80 GiB and up | 96, 128, 192 GB and more |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    #[serde(rename = "8gb")]
    Gb8,
    #[serde(rename = "16gb")]
    Gb16,
    #[serde(rename = "24-36gb")]
    Gb24To36,
    #[serde(rename = "48-64gb")]
    Gb48To64,
    #[serde(rename = "96gb+")]
    Gb96Plus,
}

impl Tier {
    /// The tier of a machine with `usable_memory` bytes.
    pub fn for_memory(usable_memory: u64) -> Tier {
        match usable_memory {
            m if m < 12 * GIB => Tier::Gb8,
            m if m < 20 * GIB => Tier::Gb16,
            m if m < 44 * GIB => Tier::Gb24To36,
            m if m < 80 * GIB => Tier::Gb48To64,
            _ => Tier::Gb96Plus,
        }
    }

    /// The stable machine name (`8gb`, `16gb`, `24-36gb`, `48-64gb`, `96gb+`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gb8 => "8gb",
            Tier::Gb16 => "16gb",
            Tier::Gb24To36 => "24-36gb",
            Tier::Gb48To64 => "48-64gb",
            Tier::Gb96Plus => "96gb+",
        }
    }

    /// What a tier typically runs, for people (4-bit weights, q8_0 K/V).
    pub fn describe(self) -> &'static str {
        match self {
            Tier::Gb8 => "small models (up to about 3B parameters), one at a time",
            Tier::Gb16 => "models up to about 8B parameters beside everyday apps",
            Tier::Gb24To36 => "models up to about 14B, or two small ones side by side",
            Tier::Gb48To64 => "models up to about 32B parameters",
            Tier::Gb96Plus => "70B-class models",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

// The power words are core's: the controller's power policy decides over
// them (`locara_core::power`).
pub use locara_core::power::{PowerState, ThermalState};

/// The memory layout llama.cpp's backend will use on this machine: Apple
/// Silicon runs every layer on the GPU (Metal); elsewhere the CPU backend
/// repacks the weight types this CPU has interleaved kernels for.
pub fn estimate_backend() -> Backend {
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        return Backend::Gpu;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Backend::cpu_x86_avx512();
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Backend::cpu_x86_avx2();
        }
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            return Backend::cpu_arm_dotprod();
        }
    }
    Backend::cpu_plain()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_the_ram_sizes_macs_ship_with() {
        let cases = [
            (8, Tier::Gb8),
            (16, Tier::Gb16),
            (18, Tier::Gb16),
            (24, Tier::Gb24To36),
            (36, Tier::Gb24To36),
            (48, Tier::Gb48To64),
            (64, Tier::Gb48To64),
            (96, Tier::Gb96Plus),
            (192, Tier::Gb96Plus),
        ];
        for (gb, tier) in cases {
            assert_eq!(Tier::for_memory(gb * GIB), tier, "{gb} GB");
        }
        // A Linux MemTotal sits a little under the installed RAM.
        assert_eq!(Tier::for_memory(15 * GIB + GIB / 2), Tier::Gb16);
        assert_eq!(Tier::for_memory(23 * GIB), Tier::Gb24To36);
    }

    #[test]
    fn budget_is_the_smaller_of_gpu_cap_and_seventy_percent() {
        // A 16 GB Mac: Metal recommends about 10.7 GiB, 70 % is 11.2 GiB.
        let cap = 11_453_251_584;
        assert_eq!(
            default_budget(16 * GIB, Some(cap)),
            (cap, BudgetBasis::GpuWorkingSetCap)
        );
        // A 64 GB Mac whose cap is above 70 %.
        let (b, basis) = default_budget(64 * GIB, Some(55 * GIB));
        assert_eq!((b, basis), (64 * GIB * 7 / 10, BudgetBasis::RamShare));
        // No GPU.
        assert_eq!(
            default_budget(10 * GIB, None),
            (7 * GIB, BudgetBasis::RamShare)
        );
    }

    #[test]
    fn a_cgroup_limit_is_the_machine() {
        let mut p = crate::simulated::linux_profile(64);
        p.memory_limit = Some(8 * GIB);
        p.derive_tier_and_budget();
        assert_eq!(p.tier, Tier::Gb8);
        assert_eq!(p.default_budget, 8 * GIB * 7 / 10);
    }

    #[test]
    fn tier_names_round_trip_through_json() {
        for tier in [
            Tier::Gb8,
            Tier::Gb16,
            Tier::Gb24To36,
            Tier::Gb48To64,
            Tier::Gb96Plus,
        ] {
            let json = serde_json::to_string(&tier).unwrap();
            assert_eq!(json, format!("\"{}\"", tier.as_str()));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
    }
}
