//! macOS probes: `sysctlbyname`, `host_statistics64`, `proc_pid_rusage`,
//! libproc, the dispatch memory-pressure source, `NSProcessInfo` and Metal.
//!
//! All the FFI of the macOS build is in this file, each `unsafe` block with
//! its reason. The arithmetic and the parsers are in `macos_parse.rs`, where
//! Linux CI tests them.

use crate::macos_parse::{
    level_from_dispatch_flags, level_from_kernel, on_battery_from_pmset, parse_procargs2, VmPages,
};
pub(crate) use crate::unix::disk_space;
use crate::{
    time::unix_now_ms, BudgetBasis, GpuInfo, HardwareProfile, HeldMapped, LevelDeriver,
    PlatformError, PowerState, PressureConfig, PressureEvent, PressureLevel, PressureSample,
    PressureWatch, ProcessFootprint, ProgramProcess, SystemSnapshot, ThermalState, Thresholds,
    Tier,
};
use dispatch2::{
    dispatch_source_memorypressure_flags_t as Flags, DispatchObject, DispatchQoS, DispatchQueue,
    DispatchRetained, DispatchSource, GlobalQueueIdentifier,
};
use locara_core::threads::ThreadClass;
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{NSObjectProtocol, ProtocolObject};
use objc2_foundation::{NSActivityOptions, NSProcessInfo, NSProcessInfoThermalState, NSString};
use objc2_metal::{MTLCreateSystemDefaultDevice, MTLDevice};
use std::ffi::CString;
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- sysctl

/// Reads an integer sysctl by name (4 or 8 bytes wide).
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
        // Little-endian (Apple Silicon and Intel): a 4-byte int is the low half.
        4 => Some(value & 0xffff_ffff),
        8 => Some(value),
        _ => None,
    }
}

/// Reads a string sysctl by name.
fn sysctl_string(name: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    let mut size = 0usize;
    // SAFETY: a null buffer asks only for the size, written to `size`.
    let ret = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if ret != 0 || size == 0 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has `size` writable bytes; the kernel writes at most that
    // and updates `size`.
    let ret = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if ret != 0 {
        return None;
    }
    buf.truncate(size);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

// ---------------------------------------------------------------- footprint

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

/// macOS has no `posix_fadvise`; its file cache is the OS's to manage
/// under its own pressure levels.
pub(crate) fn drop_file_cache(_path: &Path) -> Result<u64, PlatformError> {
    Err(PlatformError::Unsupported("dropping a file's page cache"))
}

pub(crate) fn performance_cores() -> Option<u32> {
    sysctl_u64("hw.perflevel0.physicalcpu")
        .or_else(|| sysctl_u64("hw.physicalcpu"))
        .and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn physical_memory() -> Result<u64, PlatformError> {
    sysctl_u64("hw.memsize").ok_or(PlatformError::Unsupported("hw.memsize"))
}

// ---------------------------------------------------------------- snapshot

/// The host port, asked for once: each `mach_host_self()` adds a user
/// reference to the port name, so a `locara mem --watch` that asked every
/// second would pile them up.
fn host_port() -> libc::mach_port_t {
    static HOST: OnceLock<libc::mach_port_t> = OnceLock::new();
    *HOST.get_or_init(|| {
        #[allow(deprecated)] // libc points to the mach2 crate; the call is the same.
        // SAFETY: no arguments; returns a send right to this host's port.
        unsafe {
            libc::mach_host_self()
        }
    })
}

fn vm_pages() -> Result<VmPages, PlatformError> {
    // SAFETY: `vm_statistics64` is plain data. host_statistics64 writes at
    // most `count` integers into it, `count` being its size in integers, and
    // sets `count` to what it wrote.
    let stats = unsafe {
        let mut stats: libc::vm_statistics64 = std::mem::zeroed();
        let mut count = libc::HOST_VM_INFO64_COUNT;
        let ret = libc::host_statistics64(
            host_port(),
            libc::HOST_VM_INFO64,
            (&mut stats as *mut libc::vm_statistics64).cast(),
            &mut count,
        );
        if ret != libc::KERN_SUCCESS {
            return Err(PlatformError::Io {
                what: "host_statistics64(HOST_VM_INFO64)".into(),
                source: std::io::Error::other(format!("kern_return_t {ret}")),
            });
        }
        stats
    };
    Ok(VmPages {
        free: u64::from(stats.free_count),
        speculative: u64::from(stats.speculative_count),
        external: u64::from(stats.external_page_count),
        internal: u64::from(stats.internal_page_count),
        purgeable: u64::from(stats.purgeable_count),
        wired: u64::from(stats.wire_count),
        compressor: u64::from(stats.compressor_page_count),
    })
}

/// `vm.swapusage`: (used, total) in bytes.
fn swap_usage() -> (u64, u64) {
    let Ok(name) = CString::new("vm.swapusage") else {
        return (0, 0);
    };
    // SAFETY: `xsw_usage` is plain data and `size` is its size; the kernel
    // writes at most that.
    unsafe {
        let mut usage: libc::xsw_usage = std::mem::zeroed();
        let mut size = std::mem::size_of::<libc::xsw_usage>();
        let ret = libc::sysctlbyname(
            name.as_ptr(),
            (&mut usage as *mut libc::xsw_usage).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        );
        if ret != 0 {
            return (0, 0);
        }
        (usage.xsu_used, usage.xsu_total)
    }
}

/// The kernel's own pressure level.
fn kernel_pressure_level() -> Option<PressureLevel> {
    sysctl_u64("kern.memorystatus_vm_pressure_level").and_then(level_from_kernel)
}

fn page_size() -> u64 {
    sysctl_u64("hw.pagesize").unwrap_or(16384)
}

/// macOS reports its own pressure level; the Linux thresholds, and the
/// runtime's own mapped weights they take into account, do not apply.
pub(crate) fn snapshot(
    _thresholds: &Thresholds,
    _held_mapped: u64,
) -> Result<SystemSnapshot, PlatformError> {
    let total = physical_memory()?;
    let figures = vm_pages()?.figures(page_size(), total);
    let (swap_used, swap_total) = swap_usage();
    Ok(SystemSnapshot {
        taken_at_unix_ms: unix_now_ms(),
        total,
        available: figures.available,
        free: figures.free,
        cached_files: figures.cached_files,
        compressed: Some(figures.compressed),
        wired: Some(figures.wired),
        swap_used,
        swap_total,
        pressure: kernel_pressure_level().unwrap_or_default(),
        psi: None,
        cgroup: None,
    })
}

// ---------------------------------------------------------------- pressure watch

enum Wake {
    Stop,
    /// The dispatch source fired with this level.
    Dispatch(Option<PressureLevel>),
}

/// `DISPATCH_SOURCE_TYPE_MEMORYPRESSURE` on a global queue; its handler
/// passes each event to the watch thread.
fn memory_pressure_source(wake: Sender<Wake>) -> DispatchRetained<DispatchSource> {
    let queue = DispatchQueue::global_queue(GlobalQueueIdentifier::QualityOfService(
        DispatchQoS::Utility,
    ));
    let mask = Flags::DISPATCH_MEMORYPRESSURE_NORMAL.0
        | Flags::DISPATCH_MEMORYPRESSURE_WARN.0
        | Flags::DISPATCH_MEMORYPRESSURE_CRITICAL.0;
    // SAFETY: the memory-pressure type takes handle 0 and a mask of
    // DISPATCH_MEMORYPRESSURE_* flags (dispatch/source.h); the type constant
    // is a static of libdispatch that lives as long as the process.
    let source = unsafe {
        DispatchSource::new(
            (&raw const dispatch2::_dispatch_source_type_memorypressure).cast_mut(),
            0,
            mask as usize,
            Some(&queue),
        )
    };
    // The handler holds the source to read its data; cancelling the source
    // (when the watch ends) makes libdispatch release the handler, and with
    // it this reference.
    let in_handler = source.clone();
    let handler = block2::RcBlock::new(move || {
        let level = level_from_dispatch_flags(in_handler.data() as u64);
        let _ = wake.send(Wake::Dispatch(level));
    });
    // SAFETY: libdispatch copies the block (Block_copy) and keeps the copy
    // until the source is cancelled; the block is `Fn() + 'static`.
    unsafe { source.set_event_handler_with_block(block2::RcBlock::as_ptr(&handler)) };
    source.activate();
    source
}

pub(crate) fn watch(
    config: &PressureConfig,
    _held: HeldMapped,
) -> Result<PressureWatch, PlatformError> {
    let start = Instant::now();
    let mut deriver = LevelDeriver::new(*config);
    let os_level = kernel_pressure_level().ok_or(PlatformError::Unsupported(
        "kern.memorystatus_vm_pressure_level",
    ))?;
    let sample = |os_level| PressureSample {
        os_level: Some(os_level),
        ..PressureSample::default()
    };
    deriver.observe(&sample(os_level), Duration::ZERO);
    let initial = deriver.level();

    let interval = config.poll_interval();
    let (wake_tx, wake_rx) = channel();
    let source = memory_pressure_source(wake_tx.clone());
    let (tx, rx) = channel();
    let thread = std::thread::Builder::new()
        .name("locara-pressure".into())
        .spawn(move || {
            loop {
                // The dispatch source wakes us at once; the sysctl, polled,
                // sees the way back to normal, which the source may never
                // report.
                let dispatched = match wake_rx.recv_timeout(interval) {
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(Wake::Dispatch(level)) => level,
                    Err(RecvTimeoutError::Timeout) => None,
                };
                let level = kernel_pressure_level().max(dispatched);
                let Some(level) = level else { continue };
                if let Some(change) = deriver.observe(&sample(level), start.elapsed()) {
                    let event = PressureEvent::seen_now(change);
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            }
            source.cancel();
        })
        .map_err(|source| PlatformError::Io {
            what: "starting the pressure thread".into(),
            source,
        })?;
    let method = format!(
        "DISPATCH_SOURCE_TYPE_MEMORYPRESSURE, and kern.memorystatus_vm_pressure_level every {} ms",
        config.poll_interval_ms
    );
    let stop = Box::new(move || {
        let _ = wake_tx.send(Wake::Stop);
    });
    Ok(PressureWatch::new(
        initial,
        rx,
        method,
        Some(stop),
        Some(thread),
    ))
}

// ---------------------------------------------------------------- hardware

fn is_apple_silicon() -> bool {
    // 1 on Apple Silicon, also for an x86_64 process under Rosetta; absent
    // on Intel Macs.
    sysctl_u64("hw.optional.arm64") == Some(1)
}

/// The Metal device's name, working-set cap and memory kind.
fn metal_gpu() -> Option<GpuInfo> {
    autoreleasepool(|_| {
        let device = MTLCreateSystemDefaultDevice()?;
        Some(GpuInfo {
            name: device.name().to_string(),
            working_set_cap: device.recommendedMaxWorkingSetSize(),
            unified_memory: device.hasUnifiedMemory(),
        })
    })
}

pub(crate) fn hardware_profile() -> Result<HardwareProfile, PlatformError> {
    let apple_silicon = is_apple_silicon();
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let count = |name: &str| sysctl_u64(name).and_then(|n| u32::try_from(n).ok());
    let mut profile = HardwareProfile {
        os: "macos".into(),
        os_version: sysctl_string("kern.osproductversion").unwrap_or_default(),
        arch: if apple_silicon { "aarch64" } else { "x86_64" }.into(),
        chip: sysctl_string("machdep.cpu.brand_string").unwrap_or_else(|| "unknown".into()),
        apple_silicon,
        physical_ram: physical_memory()?,
        memory_limit: None,
        performance_cores: count("hw.perflevel0.physicalcpu")
            .or_else(|| count("hw.physicalcpu"))
            .unwrap_or(logical),
        // Chips with one kind of core have no perflevel1.
        efficiency_cores: count("hw.perflevel1.physicalcpu").unwrap_or(0),
        page_size: page_size(),
        gpu: metal_gpu(),
        iogpu_wired_limit_mb: sysctl_u64("iogpu.wired_limit_mb"),
        tier: Tier::Gb8,
        default_budget: 0,
        budget_basis: BudgetBasis::RamShare,
    };
    profile.derive_tier_and_budget();
    Ok(profile)
}

pub(crate) fn check_supported() -> Result<(), PlatformError> {
    if !is_apple_silicon() {
        let chip = sysctl_string("machdep.cpu.brand_string").unwrap_or_else(|| "Intel".into());
        return Err(PlatformError::UnsupportedMachine(format!(
            "Locara needs a Mac with Apple Silicon (M1 or later); this Mac has an Intel \
             processor ({chip}). Intel Macs have no unified memory for Metal to run models in."
        )));
    }
    if sysctl_u64("sysctl.proc_translated") == Some(1) {
        return Err(PlatformError::UnsupportedMachine(
            "this copy of locara is an Intel (x86_64) build running under Rosetta; \
             install the Apple Silicon (arm64) build"
                .into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- power

fn thermal_state(state: NSProcessInfoThermalState) -> ThermalState {
    match state {
        NSProcessInfoThermalState::Nominal => ThermalState::Nominal,
        NSProcessInfoThermalState::Fair => ThermalState::Fair,
        NSProcessInfoThermalState::Serious => ThermalState::Serious,
        NSProcessInfoThermalState::Critical => ThermalState::Critical,
        _ => ThermalState::Unknown,
    }
}

pub(crate) fn power_state() -> PowerState {
    let (thermal, low_power_mode) = autoreleasepool(|_| {
        let info = NSProcessInfo::processInfo();
        (
            thermal_state(info.thermalState()),
            info.isLowPowerModeEnabled(),
        )
    });
    // IOKit's power-source API would need CoreFoundation plumbing for one
    // boolean; pmset prints the same answer.
    let on_battery = std::process::Command::new("/usr/bin/pmset")
        .args(["-g", "batt"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| on_battery_from_pmset(&String::from_utf8_lossy(&o.stdout)));
    PowerState {
        thermal,
        low_power_mode: Some(low_power_mode),
        on_battery,
    }
}

// ---------------------------------------------------------------- processes

fn all_pids() -> Result<Vec<libc::pid_t>, PlatformError> {
    // SAFETY: a null buffer of size 0 asks only for the number of pids.
    let n = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Err(PlatformError::Io {
            what: "proc_listallpids".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // Room for processes started since.
    let mut pids: Vec<libc::pid_t> = vec![0; n as usize + 64];
    let bytes = libc::c_int::try_from(pids.len() * std::mem::size_of::<libc::pid_t>())
        .unwrap_or(libc::c_int::MAX);
    // SAFETY: `pids` has `bytes` writable bytes; the call writes at most that
    // many and returns the number of pids written.
    let n = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast(), bytes) };
    pids.truncate(usize::try_from(n).unwrap_or(0).min(pids.len()));
    Ok(pids)
}

fn pid_path(pid: libc::pid_t) -> Option<std::path::PathBuf> {
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: `buf` has PROC_PIDPATHINFO_MAXSIZE writable bytes, as the call
    // requires; it returns the length written.
    let len = unsafe { libc::proc_pidpath(pid, buf.as_mut_ptr().cast(), buf.len() as u32) };
    let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
    buf.truncate(len);
    Some(std::path::PathBuf::from(
        String::from_utf8_lossy(&buf).into_owned(),
    ))
}

fn pid_args(pid: libc::pid_t) -> Option<Vec<String>> {
    let argmax = sysctl_u64("kern.argmax").unwrap_or(1 << 20).min(16 << 20) as usize;
    let mut buf = vec![0u8; argmax];
    let mut size = buf.len();
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, pid];
    // SAFETY: `mib` names KERN_PROCARGS2 of `pid` (3 levels); `buf` has
    // `size` writable bytes and the kernel writes at most that, updating
    // `size`.
    let ret = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            mib.len() as libc::c_uint,
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if ret != 0 {
        return None;
    }
    parse_procargs2(&buf[..size.min(buf.len())])
}

pub(crate) fn processes_of(exe: &Path) -> Result<Vec<ProgramProcess>, PlatformError> {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let mut found = Vec::new();
    for pid in all_pids()? {
        if pid <= 0 || pid_path(pid).as_deref() != Some(exe.as_path()) {
            continue;
        }
        // Other users' arguments are not ours to read; neither are they ours.
        if let Some(args) = pid_args(pid) {
            found.push(ProgramProcess {
                pid: pid as u32,
                args,
            });
        }
    }
    found.sort_by_key(|p| p.pid);
    Ok(found)
}

// ---------------------------------------------------------------- activity

// ---------------------------------------------------------------- thread priority

pub(crate) fn set_thread_class(class: ThreadClass) -> Result<(), PlatformError> {
    // Apple's QoS classes: user-initiated for work someone waits on;
    // utility for long work the user knows of but does not watch. A thread
    // may move its own QoS either way, and threads it creates (ggml's
    // workers) start at its class.
    let qos = match class {
        ThreadClass::Interactive => libc::qos_class_t::QOS_CLASS_USER_INITIATED,
        ThreadClass::Background => libc::qos_class_t::QOS_CLASS_UTILITY,
    };
    // SAFETY: sets the calling thread's own QoS; relative priority 0 is in
    // the allowed range (QOS_MIN_RELATIVE_PRIORITY..=0).
    let ret = unsafe { libc::pthread_set_qos_class_self_np(qos, 0) };
    if ret != 0 {
        return Err(PlatformError::Io {
            what: format!("setting this thread's QoS class for {class} work"),
            source: std::io::Error::from_raw_os_error(ret),
        });
    }
    Ok(())
}

/// An `NSProcessInfo` activity, ended on drop.
pub(crate) struct Activity {
    token: Option<Retained<ProtocolObject<dyn NSObjectProtocol>>>,
}

// SAFETY: NSProcessInfo's activity methods are thread-safe (Apple's
// documentation of NSProcessInfo); the token is opaque to us and only handed
// back to `endActivity:`, from whichever thread drops the guard.
unsafe impl Send for Activity {}

impl Activity {
    pub(crate) fn begin(reason: &str) -> Activity {
        let token = autoreleasepool(|_| {
            let info = NSProcessInfo::processInfo();
            let options =
                NSActivityOptions::UserInitiated | NSActivityOptions::IdleSystemSleepDisabled;
            info.beginActivityWithOptions_reason(options, &NSString::from_str(reason))
        });
        Activity { token: Some(token) }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.token.is_some()
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            autoreleasepool(|_| {
                // SAFETY: `token` came from beginActivityWithOptions:reason:
                // of the process-wide NSProcessInfo and is ended exactly once.
                unsafe { NSProcessInfo::processInfo().endActivity(&token) };
            });
        }
    }
}
