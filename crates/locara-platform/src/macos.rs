//! macOS probes: `proc_pid_rusage` and `sysctlbyname`.

use crate::{PlatformError, ProcessFootprint};
use std::ffi::CString;

pub(crate) fn process_footprint(pid: u32) -> Result<ProcessFootprint, PlatformError> {
    let c_pid = libc::c_int::try_from(pid).map_err(|_| PlatformError::NoSuchProcess { pid })?;
    // SAFETY: `rusage_info_v4` is plain data; proc_pid_rusage writes at most
    // one RUSAGE_INFO_V4 struct into it.
    let info = unsafe {
        let mut info: libc::rusage_info_v4 = std::mem::zeroed();
        let ret = libc::proc_pid_rusage(
            c_pid,
            libc::RUSAGE_INFO_V4,
            (&mut info as *mut libc::rusage_info_v4).cast::<libc::rusage_info_t>(),
        );
        if ret != 0 {
            return Err(PlatformError::NoSuchProcess { pid });
        }
        info
    };
    Ok(ProcessFootprint {
        // What Activity Monitor shows as "Memory" and what jetsam acts on.
        footprint: info.ri_phys_footprint,
        // macOS does not split resident pages by backing in this call.
        mapped_weights: info.ri_resident_size.saturating_sub(info.ri_phys_footprint),
        rss: info.ri_resident_size,
    })
}

/// Reads an integer sysctl by name.
fn sysctl_u64(name: &str) -> Option<u64> {
    let cname = CString::new(name).ok()?;
    let mut value: u64 = 0;
    let mut size = std::mem::size_of::<u64>();
    // SAFETY: `value` is 8 writable bytes and `size` says so; the kernel
    // writes at most `size` bytes and updates `size` to what it wrote.
    let ret = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            (&mut value as *mut u64).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if ret != 0 {
        return None;
    }
    match size {
        4 => Some(value & 0xffff_ffff),
        8 => Some(value),
        _ => None,
    }
}

pub(crate) fn performance_cores() -> Option<u32> {
    sysctl_u64("hw.perflevel0.physicalcpu")
        .or_else(|| sysctl_u64("hw.physicalcpu"))
        .and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn physical_memory() -> Result<u64, PlatformError> {
    sysctl_u64("hw.memsize").ok_or(PlatformError::Unsupported("hw.memsize"))
}
