//! Linux probes: `/proc` and `/sys`.

use crate::{PlatformError, ProcessFootprint};
use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;

pub(crate) fn process_footprint(pid: u32) -> Result<ProcessFootprint, PlatformError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::PermissionDenied => PlatformError::NoSuchProcess { pid },
        _ => PlatformError::Io {
            what: path.clone(),
            source: e,
        },
    })?;
    parse_smaps_rollup(&text).ok_or_else(|| PlatformError::Parse {
        what: path,
        detail: "no Rss line".into(),
    })
}

/// Footprint from `smaps_rollup` (values in kB): `Private_Dirty + Swap` is
/// what the process alone holds and that cannot be dropped without writing it
/// somewhere; `Rss - Anonymous` is resident file-backed pages (mapped weights).
pub(crate) fn parse_smaps_rollup(text: &str) -> Option<ProcessFootprint> {
    let mut rss = None;
    let (mut dirty, mut swap, mut anon) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(kb) = value.parse::<u64>() else {
            continue;
        };
        let bytes = kb.saturating_mul(1024);
        match key {
            "Rss:" => rss = Some(bytes),
            "Private_Dirty:" => dirty = bytes,
            "Swap:" => swap = bytes,
            "Anonymous:" => anon = bytes,
            _ => {}
        }
    }
    let rss = rss?;
    Some(ProcessFootprint {
        footprint: dirty.saturating_add(swap),
        mapped_weights: rss.saturating_sub(anon),
        rss,
    })
}

/// Distinct (package, core) pairs among the CPUs this process may run on.
pub(crate) fn performance_cores() -> Option<u32> {
    // SAFETY: `cpu_set_t` is plain data; sched_getaffinity fills it for pid 0
    // (this thread) and we only read it with the CPU_ISSET macro.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    };
    let mut cores = HashSet::new();
    for cpu in allowed {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let package = fs::read_to_string(format!("{base}/physical_package_id")).ok()?;
        let core = fs::read_to_string(format!("{base}/core_id")).ok()?;
        cores.insert((package.trim().to_string(), core.trim().to_string()));
    }
    u32::try_from(cores.len()).ok().filter(|&n| n > 0)
}

pub(crate) fn physical_memory() -> Result<u64, PlatformError> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|source| PlatformError::Io {
        what: "/proc/meminfo".into(),
        source,
    })?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| PlatformError::Parse {
            what: "/proc/meminfo".into(),
            detail: "no MemTotal line".into(),
        })?;
    // A memory-limited cgroup (v2) is the machine this process really has.
    let limit = fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Ok(limit.map_or(total, |l| l.min(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "55d0c6a2d000-7ffc3b9f9000 ---p 00000000 00:00 0    [rollup]
Rss:              120000 kB
Pss:              110000 kB
Pss_Anon:          20000 kB
Pss_File:          90000 kB
Shared_Clean:       8000 kB
Shared_Dirty:          0 kB
Private_Clean:     90000 kB
Private_Dirty:     22000 kB
Referenced:       120000 kB
Anonymous:         21000 kB
Swap:               1000 kB
SwapPss:            1000 kB
Locked:                0 kB
";

    #[test]
    fn smaps_rollup_is_split_into_footprint_and_mapped_weights() {
        let fp = parse_smaps_rollup(SAMPLE).unwrap();
        assert_eq!(fp.footprint, (22000 + 1000) * 1024);
        assert_eq!(fp.mapped_weights, (120000 - 21000) * 1024);
        assert_eq!(fp.rss, 120000 * 1024);
    }

    #[test]
    fn own_footprint_grows_with_dirtied_memory() {
        let before = process_footprint(std::process::id()).unwrap();
        let mut block = vec![0u8; 64 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        let after = process_footprint(std::process::id()).unwrap();
        std::hint::black_box(&block);
        let grown = after.footprint.saturating_sub(before.footprint);
        assert!(grown >= 60 << 20, "footprint grew by only {grown} bytes");
    }

    #[test]
    fn missing_process_is_named() {
        // pid_max on Linux is at most 2^22.
        let err = process_footprint(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), "no_such_process");
    }

    #[test]
    fn core_and_memory_counts_are_sane() {
        let cores = crate::performance_cores();
        assert!(cores >= 1);
        assert!(physical_memory().unwrap() > 64 << 20);
    }
}
