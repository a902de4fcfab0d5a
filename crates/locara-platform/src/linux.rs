//! Linux probes: `/proc` and `/sys`.
//!
//! The parsers are pure functions over the files' text, tested on recorded
//! samples; the readers around them are thin. The `unsafe` calls are
//! `sched_getaffinity`/`sysconf`, the `poll()` of the pressure thread,
//! `statvfs` (free disk space), a thread's scheduling policy and nice
//! value (`sched_setscheduler`, `setpriority`), and dropping a file's page
//! cache (`posix_fadvise`, with `mmap`/`mincore`/`munmap` to count it).

pub(crate) use crate::unix::disk_space;
use crate::{
    assess, time::unix_now_ms, CgroupEvents, CgroupMemory, HardwareProfile, HeldMapped,
    LevelDeriver, PlatformError, PowerState, PressureConfig, PressureEvent, PressureSample,
    PressureWatch, ProcessFootprint, ProgramProcess, Psi, PsiAverages, PsiTriggerSpec,
    SystemSnapshot, ThermalState, Thresholds,
};
use locara_core::threads::ThreadClass;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, PipeReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

/// Memory PSI of the whole machine (tasks stalled by a cgroup's limit count
/// here too).
pub(crate) const PSI_MEMORY: &str = "/proc/pressure/memory";
const MEMINFO: &str = "/proc/meminfo";

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlatformError {
    let what = what.into();
    move |source| PlatformError::Io { what, source }
}

fn read(path: &str) -> Result<String, PlatformError> {
    fs::read_to_string(path).map_err(io_error(path))
}

// ---------------------------------------------------------------- footprint

pub(crate) fn process_footprint(pid: u32) -> Result<ProcessFootprint, PlatformError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::PermissionDenied => PlatformError::NoSuchProcess { pid },
        _ => PlatformError::Io {
            what: path.clone(),
            source: e,
        },
    })?;
    parse_status(&text).ok_or_else(|| PlatformError::Parse {
        what: path,
        detail: "no VmRSS or RssAnon line".into(),
    })
}

/// Footprint from `/proc/<pid>/status` (values in kB): `RssAnon + VmSwap`
/// is what the process alone holds and that cannot be dropped without
/// writing it to swap (heap, K/V cache, compute buffers; the private copy
/// of any written file page is anonymous too); `VmRSS - RssAnon` is
/// resident file-backed and shared pages (mapped weights).
///
/// These are the kernel's running counters of the process's pages, so
/// reading them costs the same whatever the process holds. The same split
/// from `smaps_rollup` walks every page table entry under the process's
/// memory lock: about 90 ms of kernel time for a worker holding 3 GiB of
/// repacked weights and 3 GiB mapped, every time the daemon measures (every
/// 2 s), which made the apps beside it wait for a CPU. The counters agree
/// with `smaps_rollup`'s `Anonymous + Swap` to within the kernel's
/// batching of its counter updates: up to 64 pages per thread before Linux
/// 6.2, and since then up to a batch per CPU (32 pages on a machine of up
/// to 16 CPUs, 2 MiB in all), against gigabytes of model. This crate's
/// `linux_probes` test compares the two.
///
/// Not `Private_Dirty + Swap` (smaps): it counts a file page as dirty while
/// the page cache has not written it back yet, so a model file written
/// moments ago (a fresh pull) would show its whole size as footprint for the
/// first half minute after it is mapped, though the OS can drop those pages
/// once written. `RssAnon` has no such case: a clean or dirty page of the
/// file is a file page.
pub(crate) fn parse_status(text: &str) -> Option<ProcessFootprint> {
    let (mut rss, mut anon) = (None, None);
    let mut swap = 0u64;
    for (key, kb) in kb_lines(text) {
        let bytes = kb.saturating_mul(1024);
        match key {
            "VmRSS" => rss = Some(bytes),
            "RssAnon" => anon = Some(bytes),
            "VmSwap" => swap = bytes,
            _ => {}
        }
    }
    let (rss, anon) = (rss?, anon?);
    Some(ProcessFootprint {
        footprint: anon.saturating_add(swap),
        mapped_weights: rss.saturating_sub(anon),
        rss,
    })
}

/// `Key:   1234 kB` lines, as (key, number).
fn kb_lines(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (key, rest) = line.split_once(':')?;
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((key.trim(), value))
    })
}

// ---------------------------------------------------------------- file cache

/// Drops the page cache of `path` that no process maps
/// (`POSIX_FADV_DONTNEED`); the bytes of it resident before and not after,
/// counted with `mincore`.
pub(crate) fn drop_file_cache(path: &Path) -> Result<u64, PlatformError> {
    let what = || path.display().to_string();
    let file = File::open(path).map_err(io_error(what()))?;
    let len = file.metadata().map_err(io_error(what()))?.len();
    let resident = |when: &str| {
        resident_bytes(&file, len).map_err(io_error(format!("{} (mincore, {when})", what())))
    };
    let before = resident("before")?;
    // SAFETY: posix_fadvise takes the open file's descriptor and a range
    // (0, 0: the whole file); it reads and writes no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(PlatformError::Io {
            what: format!("{} (posix_fadvise DONTNEED)", what()),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(before.saturating_sub(resident("after")?))
}

/// Bytes of `file` (`len` bytes long) in the page cache: `mincore` over a
/// mapping of it that touches no page.
fn resident_bytes(file: &File, len: u64) -> std::io::Result<u64> {
    let Ok(len) = usize::try_from(len) else {
        return Err(std::io::Error::other("larger than the address space"));
    };
    if len == 0 {
        return Ok(0);
    }
    let page = page_size() as usize;
    // SAFETY: a new read-only shared mapping of an open file, at an address
    // the kernel picks; nothing reads through it, and it is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mut pages = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr..addr + len` is the mapping made above, and `pages` has
    // one byte for each of its pages, as mincore writes.
    let rc = unsafe { libc::mincore(addr, len, pages.as_mut_ptr()) };
    let failed = (rc != 0).then(std::io::Error::last_os_error);
    // SAFETY: unmaps exactly the mapping made above, which nothing uses.
    unsafe { libc::munmap(addr, len) };
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(pages.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
}

// ---------------------------------------------------------------- meminfo

/// The `/proc/meminfo` figures a snapshot needs, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub buffers: u64,
    pub cached: u64,
    pub shmem: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    /// Memory in the zswap pool, where the kernel reports it.
    pub zswap: Option<u64>,
}

impl MemInfo {
    /// File pages in RAM that the kernel can drop: buffers and page cache,
    /// less shared memory (tmpfs, shm), which is counted in `Cached` but can
    /// only go to swap.
    pub fn cached_files(&self) -> u64 {
        (self.buffers + self.cached).saturating_sub(self.shmem)
    }
}

pub(crate) fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut m = MemInfo::default();
    let (mut total, mut free, mut available) = (None, None, None);
    for (key, kb) in kb_lines(text) {
        let bytes = kb.saturating_mul(1024);
        match key {
            "MemTotal" => total = Some(bytes),
            "MemFree" => free = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "Shmem" => m.shmem = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            "Zswap" => m.zswap = Some(bytes),
            _ => {}
        }
    }
    m.total = total.ok_or("no MemTotal line")?;
    m.free = free.ok_or("no MemFree line")?;
    // Kernels before 3.14 have no MemAvailable: free plus droppable cache is
    // the estimate it replaced.
    m.available = available.unwrap_or_else(|| m.free + m.cached_files());
    Ok(m)
}

fn read_meminfo() -> Result<MemInfo, PlatformError> {
    parse_meminfo(&read(MEMINFO)?).map_err(|detail| PlatformError::Parse {
        what: MEMINFO.into(),
        detail,
    })
}

// ---------------------------------------------------------------- PSI

/// Parses a PSI file (`some avg10=0.12 avg60=... avg300=... total=...` and,
/// on kernels since 5.2 for memory, a `full` line).
pub(crate) fn parse_psi(text: &str) -> Option<Psi> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next()?;
        let mut a = PsiAverages::default();
        let mut seen = 0;
        for field in parts {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => a.avg10 = value.parse().ok()?,
                "avg60" => a.avg60 = value.parse().ok()?,
                "avg300" => a.avg300 = value.parse().ok()?,
                "total" => a.total_us = value.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        if seen < 4 {
            return None;
        }
        match kind {
            "some" => some = Some(a),
            "full" => full = Some(a),
            _ => {}
        }
    }
    Some(Psi { some: some?, full })
}

fn read_psi() -> Option<Psi> {
    parse_psi(&fs::read_to_string(PSI_MEMORY).ok()?)
}

// ---------------------------------------------------------------- cgroups

/// Where this process's memory cgroup lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupLocation {
    /// cgroup v2: (the unified hierarchy's mount point, this process's directory).
    pub v2: Option<(PathBuf, PathBuf)>,
    /// cgroup v1: this process's directory in the memory controller.
    pub v1_memory: Option<PathBuf>,
}

/// Finds this process's cgroup directories from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
pub(crate) fn locate_cgroups(proc_cgroup: &str, mountinfo: &str) -> CgroupLocation {
    let mut v2_path = None;
    let mut v1_path = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path.to_string());
        }
    }
    let mut v2_mount = None;
    let mut v1_mount = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split_whitespace().collect();
        let post: Vec<&str> = post.split_whitespace().collect();
        let (Some(root), Some(mount), Some(fstype)) = (pre.get(3), pre.get(4), post.first()) else {
            continue;
        };
        let super_opts = post.get(2).copied().unwrap_or("");
        if *fstype == "cgroup2" && v2_mount.is_none() {
            v2_mount = Some((unescape_mount(root), unescape_mount(mount)));
        } else if *fstype == "cgroup" && super_opts.split(',').any(|o| o == "memory") {
            v1_mount = Some((unescape_mount(root), unescape_mount(mount)));
        }
    }
    let join = |(root, mount): (String, String), path: String| -> (PathBuf, PathBuf) {
        // In a cgroup namespace the mount's root is our own cgroup; the path
        // below it is what lies under the mount point.
        let rel = path.strip_prefix(root.as_str()).unwrap_or(&path);
        let mount = PathBuf::from(mount);
        let dir = mount.join(rel.trim_start_matches('/'));
        (mount, dir)
    };
    CgroupLocation {
        v2: v2_mount.zip(v2_path).map(|(m, p)| join(m, p)),
        v1_memory: v1_mount.zip(v1_path).map(|(m, p)| join(m, p).1),
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(v) = u8::try_from(value) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, memory.events, oom_control).
fn key_values(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut parts = l.split_whitespace();
        Some((parts.next()?, parts.next()?.parse().ok()?))
    })
}

fn stat_value(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(dir.join(file)).ok()?;
    let value = key_values(&text).find(|(k, _)| *k == key).map(|(_, v)| v);
    value
}

pub(crate) fn parse_memory_events(text: &str) -> CgroupEvents {
    let mut e = CgroupEvents::default();
    for (key, value) in key_values(text) {
        match key {
            "high" => e.high = value,
            "max" => e.max = value,
            "oom" => e.oom = value,
            "oom_kill" => e.oom_kill = value,
            _ => {}
        }
    }
    e
}

/// The memory controller of the cgroup that limits this process, if a limit
/// below `mem_total` applies (v2 preferred where it has the controller).
pub(crate) fn cgroup_memory(loc: &CgroupLocation, mem_total: u64) -> Option<CgroupMemory> {
    if let Some((mount, dir)) = &loc.v2 {
        // The tightest `memory.max` on the way from our cgroup to the root.
        let mut tightest: Option<(u64, PathBuf)> = None;
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| d.starts_with(mount)) {
            if let Some(limit) = read_u64(&d.join("memory.max")) {
                if tightest.as_ref().is_none_or(|(t, _)| limit < *t) {
                    tightest = Some((limit, d.to_path_buf()));
                }
            }
            at = d.parent();
        }
        if let Some((limit, d)) = tightest.filter(|(l, _)| *l < mem_total) {
            let events = fs::read_to_string(d.join("memory.events"))
                .map(|t| parse_memory_events(&t))
                .unwrap_or_default();
            return Some(CgroupMemory {
                version: 2,
                path: d.display().to_string(),
                limit,
                usage: read_u64(&d.join("memory.current")).unwrap_or(0),
                reclaimable_files: stat_value(&d, "memory.stat", "inactive_file").unwrap_or(0),
                events,
            });
        }
    }
    let dir = loc.v1_memory.as_ref()?;
    // The hierarchical limit takes the ancestors' limits into account.
    let limit = stat_value(dir, "memory.stat", "hierarchical_memory_limit")
        .or_else(|| read_u64(&dir.join("memory.limit_in_bytes")))?;
    if limit >= mem_total {
        return None;
    }
    Some(CgroupMemory {
        version: 1,
        path: dir.display().to_string(),
        limit,
        usage: read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0),
        reclaimable_files: stat_value(dir, "memory.stat", "total_inactive_file").unwrap_or(0),
        events: CgroupEvents {
            max: read_u64(&dir.join("memory.failcnt")).unwrap_or(0),
            oom_kill: stat_value(dir, "memory.oom_control", "oom_kill").unwrap_or(0),
            ..CgroupEvents::default()
        },
    })
}

fn own_cgroup_memory(mem_total: u64) -> Option<CgroupMemory> {
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_memory(&locate_cgroups(&proc_cgroup, &mountinfo), mem_total)
}

// ---------------------------------------------------------------- snapshot

pub(crate) fn physical_memory() -> Result<u64, PlatformError> {
    let total = read_meminfo()?.total;
    Ok(own_cgroup_memory(total).map_or(total, |c| c.limit.min(total)))
}

/// One reading for the level derivation; `trigger_fired` says the PSI
/// trigger woke us, and `held_mapped` is the runtime's own mapped weights
/// (counted only up to the page cache they live in).
fn pressure_sample(
    trigger_fired: bool,
    held_mapped: u64,
) -> Result<(PressureSample, SystemSnapshot), PlatformError> {
    let mi = read_meminfo()?;
    let cgroup = own_cgroup_memory(mi.total);
    let psi = read_psi();
    let available = cgroup
        .as_ref()
        .map_or(mi.available, |c| mi.available.min(c.headroom()));
    let usable = cgroup.as_ref().map_or(mi.total, |c| c.limit.min(mi.total));
    let sample = PressureSample {
        psi,
        psi_trigger_fired: trigger_fired,
        available,
        held_mapped: held_mapped.min(mi.cached_files()),
        total: usable,
        cgroup_events: cgroup.as_ref().map(|c| c.events),
        os_level: None,
    };
    let snapshot = SystemSnapshot {
        taken_at_unix_ms: unix_now_ms(),
        total: mi.total,
        available,
        free: mi.free,
        cached_files: mi.cached_files(),
        compressed: mi.zswap,
        wired: None,
        swap_used: mi.swap_total.saturating_sub(mi.swap_free),
        swap_total: mi.swap_total,
        pressure: crate::PressureLevel::Normal,
        psi,
        cgroup,
    };
    Ok((sample, snapshot))
}

pub(crate) fn snapshot(
    thresholds: &Thresholds,
    held_mapped: u64,
) -> Result<SystemSnapshot, PlatformError> {
    let (sample, mut snapshot) = pressure_sample(false, held_mapped)?;
    snapshot.pressure = assess(&sample, thresholds, None).level;
    Ok(snapshot)
}

// ---------------------------------------------------------------- pressure watch

/// A registered PSI trigger: the kernel wakes `poll()` with `POLLPRI` when
/// tasks stalled on memory for the trigger's stall time within its window.
/// Closing the file (drop) removes the trigger.
#[derive(Debug)]
pub(crate) struct PsiTrigger {
    file: File,
    spec: PsiTriggerSpec,
}

impl PsiTrigger {
    /// Registers `spec` on the PSI file at `path`.
    pub(crate) fn register(path: &Path, spec: PsiTriggerSpec) -> Result<Self, PlatformError> {
        let what = || path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_error(what()))?;
        // The kernel replaces the last byte written with a NUL (psi_write in
        // kernel/sched/psi.c), so the line carries its own.
        let mut line = spec.line().into_bytes();
        line.push(0);
        file.write_all(&line).map_err(io_error(format!(
            "{} (trigger `{}`)",
            what(),
            spec.line()
        )))?;
        Ok(PsiTrigger { file, spec })
    }

    /// Registers `spec`, or where that is refused, the same share of a
    /// window rounded up to whole 2 s: since Linux 6.5 a process without
    /// CAP_SYS_RESOURCE may only use such windows (root in a container often
    /// lacks that capability; the default 1 s window then becomes
    /// `some 300000 2000000`).
    pub(crate) fn register_or_widen(
        path: &Path,
        spec: PsiTriggerSpec,
    ) -> Result<Self, PlatformError> {
        match Self::register(path, spec) {
            Ok(t) => Ok(t),
            Err(first) => {
                const TWO_S: u64 = 2_000_000;
                if spec.window_us.is_multiple_of(TWO_S) {
                    return Err(first);
                }
                let window_us = spec.window_us.div_ceil(TWO_S) * TWO_S;
                let widened = PsiTriggerSpec {
                    stall_us: spec.stall_us * window_us / spec.window_us,
                    window_us,
                };
                Self::register(path, widened).map_err(|_| first)
            }
        }
    }

    pub(crate) fn spec(&self) -> PsiTriggerSpec {
        self.spec
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Checks the PSI trigger's wakes against the `some` stall total. A trigger
/// registered without CAP_SYS_RESOURCE (one the kernel updates with the
/// averages, every 2 s) was seen to fire once, about 2 s after it was
/// registered, with no new stall at all, whenever the stall since boot was
/// above its threshold (Linux 6.18, `some 300000 2000000`): every daemon
/// started after any memory stall went to warn for a quiet period for
/// nothing. A wake counts only when the total grew by the trigger's stall
/// time within its window (or up to one reading more).
#[derive(Debug)]
struct StallWindow {
    spec: PsiTriggerSpec,
    /// (when, `some` total in microseconds) of recent readings, oldest
    /// first; the oldest is the newest one at least a window old, if any.
    readings: VecDeque<(Duration, u64)>,
}

impl StallWindow {
    /// A window whose first reading, at `now`, found `total_us`.
    fn new(spec: PsiTriggerSpec, now: Duration, total_us: u64) -> Self {
        StallWindow {
            spec,
            readings: VecDeque::from([(now, total_us)]),
        }
    }

    /// Records a reading of `total_us` at `now`; whether a wake of the
    /// trigger at `now` is backed by stall.
    fn confirms(&mut self, now: Duration, total_us: u64) -> bool {
        let window = Duration::from_micros(self.spec.window_us);
        while self.readings.len() >= 2 && self.readings[1].0 + window <= now {
            self.readings.pop_front();
        }
        let base = self.readings.front().map_or(total_us, |r| r.1);
        self.readings.push_back((now, total_us));
        total_us.saturating_sub(base) >= self.spec.stall_us
    }
}

enum Wake {
    /// The watch was dropped.
    Stop,
    /// The PSI trigger fired.
    Fired,
    /// The interval passed.
    Tick,
    /// The trigger's file reported an error; poll without it from now on.
    TriggerGone,
}

/// Blocks until the trigger fires, `stop` is closed, or `timeout` passes.
fn wait(
    trigger: Option<&PsiTrigger>,
    stop: &PipeReader,
    timeout: Duration,
) -> Result<Wake, std::io::Error> {
    let mut fds = vec![libc::pollfd {
        fd: stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(t) = trigger {
        fds.push(libc::pollfd {
            fd: t.fd().as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        });
    }
    let timeout_ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structs whose fds
    // stay open for the call (borrowed from `stop` and `trigger`); poll only
    // writes their `revents`.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return if err.kind() == ErrorKind::Interrupted {
            Ok(Wake::Tick)
        } else {
            Err(err)
        };
    }
    if fds[0].revents != 0 {
        return Ok(Wake::Stop);
    }
    if let Some(t) = fds.get(1) {
        if t.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Ok(Wake::TriggerGone);
        }
        if t.revents & libc::POLLPRI != 0 {
            return Ok(Wake::Fired);
        }
    }
    Ok(Wake::Tick)
}

pub(crate) fn watch(
    config: &PressureConfig,
    held: HeldMapped,
) -> Result<PressureWatch, PlatformError> {
    let start = Instant::now();
    let mut deriver = LevelDeriver::new(*config);
    let (first, _) = pressure_sample(false, held.get())?;
    deriver.observe(&first, Duration::ZERO);
    let initial = deriver.level();

    let interval = config.poll_interval();
    let trigger = PsiTrigger::register_or_widen(Path::new(PSI_MEMORY), config.psi_trigger);
    let polled = format!(
        "MemAvailable and cgroup limits every {} ms",
        config.poll_interval_ms
    );
    let method = match &trigger {
        Ok(t) => format!(
            "PSI trigger `{}` on {PSI_MEMORY}; {polled}",
            t.spec().line()
        ),
        Err(e) => format!("{polled} (no PSI trigger: {e})"),
    };
    let stalls = match (&trigger, first.psi) {
        (Ok(t), Some(psi)) => Some(StallWindow::new(
            t.spec(),
            Duration::ZERO,
            psi.some.total_us,
        )),
        _ => None,
    };
    let (stop_rx, stop_tx) = std::io::pipe().map_err(io_error("a pipe for the pressure thread"))?;
    let (tx, rx) = channel();
    let thread = std::thread::Builder::new()
        .name("locara-pressure".into())
        .spawn(move || {
            let watching = Watching {
                deriver,
                start,
                trigger: trigger.ok(),
                stalls,
                held,
            };
            watching.run(stop_rx, interval, tx)
        })
        .map_err(io_error("starting the pressure thread"))?;
    // Closing the pipe's writing end wakes the thread's poll() with POLLHUP.
    let stop = Box::new(move || drop(stop_tx));
    Ok(PressureWatch::new(
        initial,
        rx,
        method,
        Some(stop),
        Some(thread),
    ))
}

/// The watch thread's state.
struct Watching {
    deriver: LevelDeriver,
    start: Instant,
    trigger: Option<PsiTrigger>,
    stalls: Option<StallWindow>,
    held: HeldMapped,
}

impl Watching {
    fn run(mut self, stop: PipeReader, interval: Duration, events: Sender<PressureEvent>) {
        loop {
            let fired = match wait(self.trigger.as_ref(), &stop, interval) {
                Ok(Wake::Stop) | Err(_) => return,
                Ok(Wake::Fired) => true,
                Ok(Wake::Tick) => false,
                Ok(Wake::TriggerGone) => {
                    self.trigger = None;
                    false
                }
            };
            // A failed read (a cgroup file vanishing mid-read) is skipped;
            // the next interval reads again.
            let Ok((mut sample, _)) = pressure_sample(fired, self.held.get()) else {
                continue;
            };
            let now = self.start.elapsed();
            if let (Some(stalls), Some(psi)) = (self.stalls.as_mut(), sample.psi) {
                sample.psi_trigger_fired &= stalls.confirms(now, psi.some.total_us);
            }
            if let Some(change) = self.deriver.observe(&sample, now) {
                let event = PressureEvent::seen_now(change);
                if events.send(event).is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- hardware

/// Parses a CPU list (`0-3,8,10-11`).
pub(crate) fn parse_cpu_list(text: &str) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b.min(a + 65_536));
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    cpus.insert(a);
                }
            }
        }
    }
    cpus
}

/// (performance, efficiency) physical cores among the CPUs this process may
/// run on. Efficiency cores are those of a hybrid CPU's `cpu_atom` PMU.
fn core_counts() -> Option<(u32, u32)> {
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
    let atom = fs::read_to_string("/sys/devices/cpu_atom/cpus")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    let mut performance = HashSet::new();
    let mut efficiency = HashSet::new();
    for cpu in allowed {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let package = fs::read_to_string(format!("{base}/physical_package_id")).ok()?;
        let core = fs::read_to_string(format!("{base}/core_id")).ok()?;
        let key = (package.trim().to_string(), core.trim().to_string());
        if atom.contains(&cpu) {
            efficiency.insert(key);
        } else {
            performance.insert(key);
        }
    }
    Some((performance.len() as u32, efficiency.len() as u32))
}

pub(crate) fn performance_cores() -> Option<u32> {
    let (p, e) = core_counts()?;
    Some(if p > 0 { p } else { e }).filter(|&n| n > 0)
}

/// The CPU's name from `/proc/cpuinfo` (x86 `model name`; Arm boards'
/// `Hardware` or `Model`).
pub(crate) fn cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Hardware", "Model"] {
        let found = cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

pub(crate) fn hardware_profile() -> Result<HardwareProfile, PlatformError> {
    let mi = read_meminfo()?;
    let memory_limit = own_cgroup_memory(mi.total).map(|c| c.limit);
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (performance_cores, efficiency_cores) = core_counts()
        .filter(|(p, e)| p + e > 0)
        .unwrap_or((logical, 0));
    let chip = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| cpu_model(&t))
        .unwrap_or_else(|| "unknown".into());
    // Asahi Linux on a Mac: the device tree names the Apple SoC.
    let apple_silicon = fs::read("/sys/firmware/devicetree/base/compatible")
        .is_ok_and(|c| c.windows(6).any(|w| w == b"apple,"));
    let mut profile = HardwareProfile {
        os: "linux".into(),
        os_version: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.into(),
        chip,
        apple_silicon,
        physical_ram: mi.total,
        memory_limit,
        performance_cores,
        efficiency_cores,
        page_size: page_size(),
        gpu: None,
        iogpu_wired_limit_mb: None,
        tier: crate::Tier::Gb8,
        default_budget: 0,
        budget_basis: crate::BudgetBasis::RamShare,
    };
    profile.derive_tier_and_budget();
    Ok(profile)
}

pub(crate) fn check_supported() -> Result<(), PlatformError> {
    let missing = missing_cpu_features();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PlatformError::UnsupportedMachine(format!(
        "this build of locara (and its llama.cpp) was compiled for a CPU with {}, which this \
         CPU lacks: it would crash on its first such instruction. Build it on this machine \
         (./scripts/run.sh builds for the CPU it runs on).",
        missing.join(", ")
    )))
}

/// The x86 instruction-set extensions this binary was compiled to use that
/// the CPU it runs on does not have. Local builds use `target-cpu=native`
/// (`.cargo/config.toml`), and llama.cpp gets the same `-march=native`, so a
/// binary copied to an older CPU would die with SIGILL somewhere in a
/// generation; this names the cause before a model is loaded.
fn missing_cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut missing = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! need {
            ($($f:tt),*) => {$(
                if cfg!(target_feature = $f) && !std::arch::is_x86_feature_detected!($f) {
                    missing.push($f);
                }
            )*};
        }
        need!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avxvnni",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512vnni",
            "avx512vbmi",
            "avx512bf16"
        );
    }
    missing
}

// ---------------------------------------------------------------- power

/// One thermal zone: its temperature and trip points, in millidegrees C.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ThermalZone {
    pub temp: i64,
    /// (type: `active`, `passive`, `hot`, `critical`; temperature).
    pub trips: Vec<(String, i64)>,
}

/// The hottest zone's state against its own trip points: at `passive`
/// (where the kernel starts throttling) fair, at `hot` serious, at
/// `critical` critical.
pub(crate) fn thermal_state_of(zones: &[ThermalZone]) -> ThermalState {
    if zones.is_empty() {
        return ThermalState::Unknown;
    }
    zones
        .iter()
        .map(|z| {
            let reached = |kind: &str| {
                z.trips
                    .iter()
                    .any(|(t, temp)| t == kind && *temp > 0 && z.temp >= *temp)
            };
            if reached("critical") {
                ThermalState::Critical
            } else if reached("hot") {
                ThermalState::Serious
            } else if reached("passive") {
                ThermalState::Fair
            } else {
                ThermalState::Nominal
            }
        })
        .max()
        .unwrap_or(ThermalState::Unknown)
}

pub(crate) fn read_thermal_zones(root: &Path) -> Vec<ThermalZone> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut zones = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("thermal_zone") {
            continue;
        }
        let dir = entry.path();
        let Some(temp) = fs::read_to_string(dir.join("temp"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        else {
            continue;
        };
        let mut trips = Vec::new();
        for i in 0..32 {
            let kind = fs::read_to_string(dir.join(format!("trip_point_{i}_type")));
            let t = fs::read_to_string(dir.join(format!("trip_point_{i}_temp")));
            match (kind, t) {
                (Ok(kind), Ok(t)) => {
                    if let Ok(t) = t.trim().parse() {
                        trips.push((kind.trim().to_string(), t));
                    }
                }
                _ => break,
            }
        }
        zones.push(ThermalZone { temp, trips });
    }
    zones
}

/// One entry of `/sys/class/power_supply`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PowerSupply {
    /// `Mains`, `USB`, `Battery`, ...
    pub kind: String,
    pub online: Option<bool>,
    /// A battery's `Charging`, `Discharging`, `Full`, `Not charging`.
    pub status: Option<String>,
    /// `Device` for a mouse's or headset's battery, which says nothing about
    /// how the machine is powered.
    pub scope: Option<String>,
}

/// On battery: no mains supply online and a system battery discharging.
/// `None` when the machine reports no supply at all (a desktop or a VM).
pub(crate) fn on_battery_of(supplies: &[PowerSupply]) -> Option<bool> {
    let system = |s: &&PowerSupply| s.scope.as_deref() != Some("Device");
    let mains: Vec<_> = supplies
        .iter()
        .filter(system)
        .filter(|s| s.kind != "Battery")
        .collect();
    let batteries: Vec<_> = supplies
        .iter()
        .filter(system)
        .filter(|s| s.kind == "Battery")
        .collect();
    if mains.iter().any(|s| s.online == Some(true)) {
        return Some(false);
    }
    if batteries.is_empty() {
        return if mains.is_empty() { None } else { Some(false) };
    }
    Some(
        batteries
            .iter()
            .any(|b| b.status.as_deref() == Some("Discharging")),
    )
}

pub(crate) fn read_power_supplies(root: &Path) -> Vec<PowerSupply> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let text = |dir: &Path, f: &str| {
        fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            Some(PowerSupply {
                kind: text(&dir, "type")?,
                online: text(&dir, "online").map(|o| o == "1"),
                status: text(&dir, "status"),
                scope: text(&dir, "scope"),
            })
        })
        .collect()
}

pub(crate) fn power_state() -> PowerState {
    let low_power_mode = fs::read_to_string("/sys/firmware/acpi/platform_profile")
        .ok()
        .map(|p| p.trim() == "low-power");
    PowerState {
        thermal: thermal_state_of(&read_thermal_zones(Path::new("/sys/class/thermal"))),
        low_power_mode,
        on_battery: on_battery_of(&read_power_supplies(Path::new("/sys/class/power_supply"))),
    }
}

// ---------------------------------------------------------------- processes

fn strip_deleted(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

pub(crate) fn processes_of(exe: &Path) -> Result<Vec<ProgramProcess>, PlatformError> {
    let exe = strip_deleted(exe);
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").map_err(io_error("/proc"))?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Other users' processes cannot be read; they are not ours.
        let Ok(target) = fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if strip_deleted(&target) != exe {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(ProgramProcess { pid, args });
    }
    found.sort_by_key(|p| p.pid);
    Ok(found)
}

// ---------------------------------------------------------------- thread priority

/// Nice value of background work: below the user's programs (0) without
/// starving it when they are busy (nice 19 gets about 1.5 % of a core
/// beside one normal thread; nice 10 about 10 %, by the kernel's weight
/// table, `sched_prio_to_weight`).
const BACKGROUND_NICE: libc::c_int = 10;

pub(crate) fn set_thread_class(class: ThreadClass) -> Result<(), PlatformError> {
    let policy = match class {
        ThreadClass::Interactive => libc::SCHED_OTHER,
        ThreadClass::Background => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread (Linux schedules threads, not
    // processes); `param` is a valid sched_param for the call's duration.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(PlatformError::Io {
            what: format!("setting this thread's scheduling policy to {class}"),
            source: std::io::Error::last_os_error(),
        });
    }
    if class == ThreadClass::Background {
        // SAFETY: `gettid` has no preconditions.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // On Linux the nice value is per thread, and PRIO_PROCESS with a
        // thread id sets that thread's. An unprivileged thread may raise
        // its nice value but never lower it, so this never goes below what
        // the thread has.
        // SAFETY: plain syscalls on our own thread id; getpriority returns
        // -1 both as a value and for errors, which only matters for
        // reading an error as nice -1 (then 10 is still a raise).
        let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let nice = now.max(BACKGROUND_NICE);
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            return Err(PlatformError::Io {
                what: format!("setting this thread's nice value to {nice}"),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- activity

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

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's scheduling policy and nice value.
    fn thread_priority() -> (libc::c_int, libc::c_int) {
        // SAFETY: queries of the calling thread (pid 0, its own tid).
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, tid),
            )
        }
    }

    #[test]
    fn background_lowers_the_thread_and_the_threads_it_starts() {
        let main_before = thread_priority();
        std::thread::spawn(|| {
            set_thread_class(ThreadClass::Background).unwrap();
            let (policy, nice) = thread_priority();
            assert_eq!(policy, libc::SCHED_BATCH);
            assert!(nice >= BACKGROUND_NICE, "nice {nice}");
            // ggml's workers are started by the decoding thread: they
            // inherit both.
            let child = std::thread::spawn(thread_priority).join().unwrap();
            assert_eq!(child, (policy, nice));
            // Back to the normal policy (the nice value stays raised).
            set_thread_class(ThreadClass::Interactive).unwrap();
            assert_eq!(thread_priority().0, libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
        // Only the threads that asked.
        assert_eq!(thread_priority(), main_before);
    }
    use crate::{PressureLevel, PressureSource, SystemProbe};

    /// The memory lines of a worker's `/proc/<pid>/status`, recorded on a
    /// 24 GiB x86_64 VM (kernel 6.18) while it held a 3 GiB model.
    const STATUS: &str = "Name:\tlocara
Umask:\t0022
State:\tS (sleeping)
Pid:\t968
VmPeak:\t 7001884 kB
VmSize:\t 6977308 kB
VmLck:\t       0 kB
VmHWM:\t 6347700 kB
VmRSS:\t 6347700 kB
RssAnon:\t 3303404 kB
RssFile:\t 3044296 kB
RssShmem:\t       0 kB
VmData:\t 3411872 kB
VmSwap:\t    1000 kB
Threads:\t4
";

    /// Recorded on a 24 GiB x86_64 VM (kernel 6.18).
    const MEMINFO_SAMPLE: &str = "MemTotal:       24684096 kB
MemFree:        20047140 kB
MemAvailable:   23185448 kB
Buffers:           12928 kB
Cached:          3252584 kB
SwapCached:            0 kB
Active:          1709200 kB
Inactive:        2502916 kB
Unevictable:       14136 kB
Mlocked:           13180 kB
SwapTotal:       2097148 kB
SwapFree:        1048574 kB
Zswap:                 0 kB
Zswapped:              0 kB
Dirty:             41184 kB
AnonPages:        960940 kB
Mapped:           240996 kB
Shmem:              8788 kB
KReclaimable:     189980 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn disk_space_of_a_directory_and_of_a_missing_path() {
        let here = disk_space(Path::new("/")).unwrap();
        assert!(here.total > 0 && here.available <= here.total, "{here:?}");
        assert!(disk_space(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn status_is_split_into_footprint_and_mapped_weights() {
        let fp = parse_status(STATUS).unwrap();
        assert_eq!(fp.footprint, (3303404 + 1000) * 1024);
        assert_eq!(fp.mapped_weights, 3044296 * 1024);
        assert_eq!(fp.rss, 6347700 * 1024);
        assert!(parse_status("VmRSS:\t1 kB\n").is_none());
        assert!(parse_status("RssAnon:\t1 kB\n").is_none());
    }

    #[test]
    fn meminfo_sample_parses_to_bytes() {
        let m = parse_meminfo(MEMINFO_SAMPLE).unwrap();
        assert_eq!(m.total, 24684096 * 1024);
        assert_eq!(m.free, 20047140 * 1024);
        assert_eq!(m.available, 23185448 * 1024);
        assert_eq!(m.cached_files(), (12928 + 3252584 - 8788) * 1024);
        assert_eq!(m.swap_total - m.swap_free, (2097148 - 1048574) * 1024);
        assert_eq!(m.zswap, Some(0));
    }

    #[test]
    fn meminfo_without_mem_available_is_estimated() {
        // Kernels before 3.14.
        let old =
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 300 kB\nShmem: 50 kB\n";
        let m = parse_meminfo(old).unwrap();
        assert_eq!(m.available, (100 + 10 + 300 - 50) * 1024);
        assert_eq!(m.zswap, None);
        assert!(parse_meminfo("MemFree: 1 kB\n")
            .unwrap_err()
            .contains("MemTotal"));
    }

    #[test]
    fn psi_sample_parses() {
        let text = "some avg10=12.34 avg60=5.00 avg300=1.25 total=123456789\n\
                    full avg10=3.50 avg60=1.00 avg300=0.20 total=2345678\n";
        let psi = parse_psi(text).unwrap();
        assert_eq!(psi.some.avg10, 12.34);
        assert_eq!(psi.some.avg300, 1.25);
        assert_eq!(psi.some.total_us, 123456789);
        assert_eq!(psi.full.unwrap().avg10, 3.5);
        // Old kernels have no `full` line for memory... (and CPU has none).
        let some_only = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert!(some_only.full.is_none());
        assert!(parse_psi("some avg10=x avg60=0 avg300=0 total=0\n").is_none());
        assert!(parse_psi("").is_none());
    }

    #[test]
    fn real_psi_and_meminfo_parse() {
        let m = read_meminfo().unwrap();
        assert!(m.total > 0 && m.available <= m.total && m.free <= m.total);
        match fs::read_to_string(PSI_MEMORY) {
            Ok(text) => assert!(parse_psi(&text).is_some(), "unparsed PSI: {text}"),
            Err(e) => eprintln!("skipped the real PSI parse: {PSI_MEMORY}: {e}"),
        }
    }

    #[test]
    fn cgroup_v2_in_a_namespace_and_v1_are_located() {
        let v2 = locate_cgroups(
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "25 1 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            v2.v2,
            Some((
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope")
            ))
        );
        assert_eq!(v2.v1_memory, None);

        // A container whose mount root is its own cgroup.
        let ns = locate_cgroups(
            "0::/docker/abc\n",
            "30 20 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup rw\n",
        );
        assert_eq!(ns.v2.unwrap().1, PathBuf::from("/sys/fs/cgroup"));

        // Hybrid (as on the machine these tests were written on).
        let hybrid = locate_cgroups(
            "9:name=systemd:/\n4:memory:/process_api/5bb7\n0::/\n",
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(
            hybrid.v1_memory,
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/5bb7"))
        );
        assert_eq!(
            hybrid.v2.unwrap().1,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn a_limited_v2_cgroup_gives_limit_usage_and_events() {
        let root = tempfile::tempdir().unwrap();
        let mount = root.path().to_path_buf();
        let parent = mount.join("app.slice");
        let leaf = parent.join("locara.service");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(leaf.join("memory.max"), "max\n").unwrap();
        fs::write(parent.join("memory.max"), "4294967296\n").unwrap();
        fs::write(parent.join("memory.current"), "3221225472\n").unwrap();
        fs::write(
            parent.join("memory.stat"),
            "anon 1\nfile 2\ninactive_file 1073741824\n",
        )
        .unwrap();
        fs::write(
            parent.join("memory.events"),
            "low 0\nhigh 7\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let loc = CgroupLocation {
            v2: Some((mount, leaf)),
            v1_memory: None,
        };
        let cg = cgroup_memory(&loc, 16 << 30).unwrap();
        assert_eq!(cg.version, 2);
        assert_eq!(cg.limit, 4 << 30);
        assert_eq!(cg.usage, 3 << 30);
        assert_eq!(cg.headroom(), 2 << 30);
        assert_eq!(
            cg.events,
            CgroupEvents {
                high: 7,
                max: 3,
                oom: 1,
                oom_kill: 1
            }
        );
        assert!(cg.path.ends_with("app.slice"));
        // A limit above the RAM is no limit.
        assert!(cgroup_memory(&loc, 2 << 30).is_none());
    }

    #[test]
    fn a_limited_v1_cgroup_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(
            d.join("memory.stat"),
            "cache 1\nhierarchical_memory_limit 2147483648\ntotal_inactive_file 1048576\n",
        )
        .unwrap();
        fs::write(d.join("memory.usage_in_bytes"), "1073741824\n").unwrap();
        fs::write(d.join("memory.failcnt"), "12\n").unwrap();
        fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let loc = CgroupLocation {
            v2: None,
            v1_memory: Some(d.to_path_buf()),
        };
        let cg = cgroup_memory(&loc, 16 << 30).unwrap();
        assert_eq!((cg.version, cg.limit, cg.usage), (1, 2 << 30, 1 << 30));
        assert_eq!(cg.events.max, 12);
        assert_eq!(cg.events.oom_kill, 2);
        // The "unlimited" v1 value (PAGE_COUNTER_MAX pages) is no limit.
        fs::write(
            d.join("memory.stat"),
            "hierarchical_memory_limit 9223372036854771712\n",
        )
        .unwrap();
        assert!(cgroup_memory(&loc, 16 << 30).is_none());
    }

    #[test]
    fn cpu_lists_and_models_parse() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n")
                .into_iter()
                .collect::<Vec<_>>(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert!(parse_cpu_list("\n").is_empty());
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\n").as_deref(),
            Some("AMD EPYC")
        );
        assert_eq!(
            cpu_model("Hardware\t: BCM2835\n").as_deref(),
            Some("BCM2835")
        );
        assert_eq!(cpu_model("processor: 0\n"), None);
    }

    #[test]
    fn thermal_state_follows_trip_points() {
        let zone = |temp, trips: &[(&str, i64)]| ThermalZone {
            temp,
            trips: trips.iter().map(|(k, t)| (k.to_string(), *t)).collect(),
        };
        let trips = [("passive", 85_000), ("hot", 95_000), ("critical", 105_000)];
        assert_eq!(thermal_state_of(&[]), ThermalState::Unknown);
        assert_eq!(
            thermal_state_of(&[zone(45_000, &trips)]),
            ThermalState::Nominal
        );
        assert_eq!(
            thermal_state_of(&[zone(45_000, &trips), zone(90_000, &trips)]),
            ThermalState::Fair
        );
        assert_eq!(
            thermal_state_of(&[zone(99_000, &trips)]),
            ThermalState::Serious
        );
        assert_eq!(
            thermal_state_of(&[zone(106_000, &trips)]),
            ThermalState::Critical
        );
        assert_eq!(
            thermal_state_of(&[zone(50_000, &[])]),
            ThermalState::Nominal
        );
    }

    #[test]
    fn thermal_zones_and_supplies_are_read_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let z = root.path().join("thermal_zone0");
        fs::create_dir(&z).unwrap();
        fs::write(z.join("temp"), "97000\n").unwrap();
        fs::write(z.join("trip_point_0_type"), "passive\n").unwrap();
        fs::write(z.join("trip_point_0_temp"), "90000\n").unwrap();
        fs::write(z.join("trip_point_1_type"), "hot\n").unwrap();
        fs::write(z.join("trip_point_1_temp"), "96000\n").unwrap();
        fs::create_dir(root.path().join("cooling_device0")).unwrap();
        let zones = read_thermal_zones(root.path());
        assert_eq!(zones.len(), 1);
        assert_eq!(thermal_state_of(&zones), ThermalState::Serious);

        let supplies = tempfile::tempdir().unwrap();
        let bat = supplies.path().join("BAT0");
        let ac = supplies.path().join("AC");
        let mouse = supplies.path().join("hidpp_battery_0");
        for d in [&bat, &ac, &mouse] {
            fs::create_dir(d).unwrap();
        }
        fs::write(bat.join("type"), "Battery\n").unwrap();
        fs::write(bat.join("status"), "Discharging\n").unwrap();
        fs::write(ac.join("type"), "Mains\n").unwrap();
        fs::write(ac.join("online"), "0\n").unwrap();
        fs::write(mouse.join("type"), "Battery\n").unwrap();
        fs::write(mouse.join("scope"), "Device\n").unwrap();
        fs::write(mouse.join("status"), "Charging\n").unwrap();
        assert_eq!(
            on_battery_of(&read_power_supplies(supplies.path())),
            Some(true)
        );
        fs::write(ac.join("online"), "1\n").unwrap();
        assert_eq!(
            on_battery_of(&read_power_supplies(supplies.path())),
            Some(false)
        );
        assert_eq!(on_battery_of(&[]), None);
    }

    #[test]
    fn missing_process_is_named() {
        // pid_max on Linux is at most 2^22.
        let err = process_footprint(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), "no_such_process");
    }

    #[test]
    fn real_profile_and_snapshot_are_sane() {
        let hw = hardware_profile().unwrap();
        assert!(hw.performance_cores >= 1);
        assert!(hw.physical_ram > 64 << 20);
        assert!(hw.default_budget > 0 && hw.default_budget < hw.usable_memory());
        assert!(hw.page_size >= 4096 && hw.page_size.is_power_of_two());
        assert!(physical_memory().unwrap() <= hw.physical_ram);
        let s = snapshot(&Thresholds::default(), 0).unwrap();
        assert_eq!(s.total, hw.physical_ram);
        assert!(s.available <= s.total && s.free <= s.total && s.cached_files <= s.total);
        let _ = power_state();
    }

    #[test]
    fn this_test_binary_finds_itself() {
        let exe = std::env::current_exe().unwrap();
        let found = processes_of(&exe).unwrap();
        assert!(
            found.iter().any(|p| p.pid == std::process::id()),
            "{found:?}"
        );
    }

    /// A real trigger on /proc/pressure/memory: registered, polled, removed.
    #[test]
    fn a_real_psi_trigger_is_registered_and_torn_down() {
        let path = Path::new(PSI_MEMORY);
        if !path.exists() {
            eprintln!("skipped: {PSI_MEMORY} is absent (kernel without CONFIG_PSI, or psi=0)");
            return;
        }
        let trigger = match PsiTrigger::register_or_widen(path, PsiTriggerSpec::default()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: cannot register a PSI trigger here: {e}");
                return;
            }
        };
        let (stop_rx, stop_tx) = std::io::pipe().unwrap();
        // No stall of 150 ms in the last second on a calm machine, so this
        // must not report the trigger gone; a fired trigger is also fine.
        match wait(Some(&trigger), &stop_rx, Duration::ZERO).unwrap() {
            Wake::Tick | Wake::Fired => {}
            Wake::Stop => panic!("the stop pipe is still open"),
            Wake::TriggerGone => panic!("the kernel rejected polling the trigger"),
        }
        drop(trigger);
        // Torn down: a new one registers again, and closing the stop pipe wakes poll.
        let trigger = PsiTrigger::register_or_widen(path, PsiTriggerSpec::default()).unwrap();
        drop(stop_tx);
        assert!(matches!(
            wait(Some(&trigger), &stop_rx, Duration::from_secs(60)).unwrap(),
            Wake::Stop
        ));
    }

    #[test]
    fn a_second_trigger_on_one_file_is_refused() {
        let path = Path::new(PSI_MEMORY);
        let Ok(t) = PsiTrigger::register_or_widen(path, PsiTriggerSpec::default()) else {
            eprintln!("skipped: no PSI trigger can be registered here");
            return;
        };
        let mut file = t.file.try_clone().unwrap();
        let err = file.write_all(b"some 300000 2000000\0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    }

    #[test]
    fn the_real_watch_starts_and_stops_promptly() {
        let probe = SystemProbe::default();
        let watch = probe.watch().unwrap();
        eprintln!("watching by: {}", watch.method());
        assert!(watch.initial_level() <= PressureLevel::Critical);
        if Path::new(PSI_MEMORY).exists() {
            // As root (CI, these machines) the trigger registers.
            if is_root() {
                assert!(
                    watch.method().starts_with("PSI trigger"),
                    "{}",
                    watch.method()
                );
            }
        }
        let started = Instant::now();
        drop(watch);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            started.elapsed()
        );
    }

    /// Regression: a trigger registered without CAP_SYS_RESOURCE fired
    /// about 2 s after registration with a few milliseconds of new stall,
    /// because the stall since boot was above its threshold; each fresh
    /// daemon went to warn for nothing.
    #[test]
    fn a_trigger_wake_without_new_stall_is_not_pressure() {
        let spec = PsiTriggerSpec {
            stall_us: 300_000,
            window_us: 2_000_000,
        };
        let s = Duration::from_secs;
        // 2.36 s of stall since boot; 3 ms more by the wake.
        let mut w = StallWindow::new(spec, s(0), 2_361_107);
        assert!(!w.confirms(s(1), 2_362_315));
        assert!(!w.confirms(Duration::from_millis(2_800), 2_364_464));
        // Real stall: 400 ms within the window.
        assert!(w.confirms(s(4), 2_764_464));
        assert!(w.confirms(s(5), 2_800_000), "still within a window of it");
        // Two quiet seconds later the window has moved past it.
        assert!(!w.confirms(s(7), 2_800_000));
        assert!(!w.confirms(s(8), 2_900_000));
        // 300 ms spread over just over a window (readings 1 s apart) counts.
        assert!(w.confirms(s(9), 3_100_000));
        assert!(w.readings.len() <= 4, "old readings are dropped");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
