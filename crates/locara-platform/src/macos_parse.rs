//! The pure parts of the macOS probes: the arithmetic and the parsers, with
//! no system calls. Compiled on every OS so that Linux CI runs their tests.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use crate::PressureLevel;

/// Page counts from `host_statistics64(HOST_VM_INFO64)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VmPages {
    pub free: u64,
    pub speculative: u64,
    pub external: u64,
    pub internal: u64,
    pub purgeable: u64,
    pub wired: u64,
    pub compressor: u64,
}

/// Byte figures for a snapshot, counted as Activity Monitor counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VmFigures {
    pub available: u64,
    pub free: u64,
    pub cached_files: u64,
    pub wired: u64,
    pub compressed: u64,
}

impl VmPages {
    /// Activity Monitor's "memory used" is app memory (internal less
    /// purgeable pages) plus wired plus compressed; what is left of the RAM
    /// can be had without compressing or swapping. Cached files are external
    /// (file-backed) pages plus purgeable ones. `free_count` includes the
    /// speculative (read-ahead) pages, which `vm_stat` shows apart.
    pub fn figures(&self, page_size: u64, total: u64) -> VmFigures {
        let bytes = |pages: u64| pages.saturating_mul(page_size);
        let app = bytes(self.internal.saturating_sub(self.purgeable));
        let wired = bytes(self.wired);
        let compressed = bytes(self.compressor);
        let used = app.saturating_add(wired).saturating_add(compressed);
        VmFigures {
            available: total.saturating_sub(used),
            free: bytes(self.free.saturating_sub(self.speculative)),
            cached_files: bytes(self.external.saturating_add(self.purgeable)),
            wired,
            compressed,
        }
    }
}

/// `kern.memorystatus_vm_pressure_level`: 1 normal, 2 warn, 4 critical
/// (the `DISPATCH_MEMORYPRESSURE_*` values, which the dispatch source's data
/// uses too).
pub(crate) fn level_from_kernel(value: u64) -> Option<PressureLevel> {
    match value {
        1 => Some(PressureLevel::Normal),
        2 => Some(PressureLevel::Warn),
        4 => Some(PressureLevel::Critical),
        _ => None,
    }
}

/// The highest level among the dispatch source's flags (it may coalesce
/// several events into one).
pub(crate) fn level_from_dispatch_flags(flags: u64) -> Option<PressureLevel> {
    if flags & 4 != 0 {
        Some(PressureLevel::Critical)
    } else if flags & 2 != 0 {
        Some(PressureLevel::Warn)
    } else if flags & 1 != 0 {
        Some(PressureLevel::Normal)
    } else {
        None
    }
}

/// On battery, from `pmset -g batt`'s first line: "Now drawing from 'AC
/// Power'" or "'Battery Power'" (or "'UPS Power'", a battery too).
pub(crate) fn on_battery_from_pmset(output: &str) -> Option<bool> {
    let line = output.lines().find(|l| l.contains("drawing from"))?;
    if line.contains("'AC Power'") {
        Some(false)
    } else if line.contains("'Battery Power'") || line.contains("'UPS Power'") {
        Some(true)
    } else {
        None
    }
}

/// The arguments in a `KERN_PROCARGS2` buffer: `argc` (a native-endian
/// i32), the executable path, NUL padding, then `argc` NUL-terminated
/// arguments (and the environment, which is not read).
pub(crate) fn parse_procargs2(buf: &[u8]) -> Option<Vec<String>> {
    let argc = i32::from_ne_bytes(buf.get(..4)?.try_into().ok()?);
    let argc = usize::try_from(argc).ok()?;
    let rest = &buf[4..];
    let path_end = rest.iter().position(|&b| b == 0)?;
    let mut at = path_end;
    while rest.get(at) == Some(&0) {
        at += 1;
    }
    let mut args = Vec::with_capacity(argc.min(256));
    for _ in 0..argc {
        let tail = rest.get(at..)?;
        let len = tail.iter().position(|&b| b == 0)?;
        args.push(String::from_utf8_lossy(&tail[..len]).into_owned());
        at += len + 1;
    }
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_pages_become_activity_monitor_figures() {
        let page = 16384;
        let total = 16 << 30;
        let pages = VmPages {
            free: 20_000,
            speculative: 5_000,
            external: 200_000,
            internal: 400_000,
            purgeable: 10_000,
            wired: 150_000,
            compressor: 50_000,
        };
        let f = pages.figures(page, total);
        assert_eq!(f.free, 15_000 * page);
        assert_eq!(f.cached_files, 210_000 * page);
        assert_eq!(f.wired, 150_000 * page);
        assert_eq!(f.compressed, 50_000 * page);
        assert_eq!(f.available, total - (390_000 + 150_000 + 50_000) * page);
        // Counts that do not add up never underflow.
        let odd = VmPages {
            internal: 1,
            purgeable: 5,
            wired: u64::MAX / page,
            ..Default::default()
        };
        assert_eq!(odd.figures(page, total).available, 0);
    }

    #[test]
    fn kernel_and_dispatch_levels_map() {
        assert_eq!(level_from_kernel(1), Some(PressureLevel::Normal));
        assert_eq!(level_from_kernel(2), Some(PressureLevel::Warn));
        assert_eq!(level_from_kernel(4), Some(PressureLevel::Critical));
        assert_eq!(level_from_kernel(0), None);
        assert_eq!(level_from_dispatch_flags(2 | 1), Some(PressureLevel::Warn));
        assert_eq!(
            level_from_dispatch_flags(4 | 2),
            Some(PressureLevel::Critical)
        );
        assert_eq!(level_from_dispatch_flags(0), None);
    }

    #[test]
    fn pmset_output_says_where_power_comes_from() {
        let battery = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=1234)\t87%; discharging; 5:12 remaining present: true\n";
        let ac = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=1234)\t100%; charged; 0:00 remaining present: true\n";
        let desktop = "Now drawing from 'AC Power'\n";
        assert_eq!(on_battery_from_pmset(battery), Some(true));
        assert_eq!(on_battery_from_pmset(ac), Some(false));
        assert_eq!(on_battery_from_pmset(desktop), Some(false));
        assert_eq!(on_battery_from_pmset(""), None);
    }

    #[test]
    fn procargs2_gives_the_arguments() {
        let mut buf = 3i32.to_ne_bytes().to_vec();
        buf.extend_from_slice(b"/usr/local/bin/locara\0\0\0\0locara\0engine\0--x\0HOME=/Users/a\0");
        assert_eq!(parse_procargs2(&buf).unwrap(), ["locara", "engine", "--x"]);
        // Truncated: no panic, no arguments.
        assert_eq!(parse_procargs2(&buf[..30]), None);
        assert_eq!(parse_procargs2(&[1, 0]), None);
    }
}
