//! The Linux probes against the real `/proc`: footprints of child processes
//! that dirty memory or map a file, measured by pid as the daemon measures
//! its engine workers.
#![cfg(target_os = "linux")]

use locara_platform::{MemoryProbe, ProcessFootprint, SystemProbe};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Set in a child: what it does (`dirty:MIB` or `map:PATH`).
const CHILD_ROLE: &str = "LOCARA_PLATFORM_TEST_CHILD";
const MIB: u64 = 1 << 20;
/// Enough for a loaded machine to start a process and touch 64 MiB.
const DEADLINE: Duration = Duration::from_secs(60);

/// Not a test of its own: the body of the child processes started below (the
/// test binary re-runs itself with only this test selected). It reports on
/// stderr, which the test harness leaves alone, and takes orders on stdin.
#[test]
fn child_process_body() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let mut orders = std::io::stdin().lock().lines();
    eprintln!("child:ready");
    assert_eq!(orders.next().unwrap().unwrap(), "go");
    let held: Box<dyn std::any::Any> = if let Some(mib) = role.strip_prefix("dirty:") {
        let len = mib.parse::<usize>().unwrap() << 20;
        let mut block = vec![0u8; len];
        // A non-zero byte on every page: each one becomes private and dirty.
        for i in (0..len).step_by(4096) {
            block[i] = 1;
        }
        Box::new(block)
    } else if let Some(path) = role.strip_prefix("map:") {
        Box::new(Mapping::read_all(path))
    } else {
        panic!("unknown role {role}");
    };
    eprintln!("child:done");
    // Hold the memory until the parent has measured and closes stdin.
    for _ in orders {}
    std::hint::black_box(&held);
}

/// A read-only shared mapping of a whole file, every page touched.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn read_all(path: &str) -> Mapping {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh read-only mapping of an open file of `len` bytes;
        // checked for MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let mut sum = 0u64;
        for offset in (0..len).step_by(4096) {
            // SAFETY: `offset < len`, inside the mapping.
            sum += u64::from(unsafe { std::ptr::read_volatile(ptr.cast::<u8>().add(offset)) });
        }
        std::hint::black_box(sum);
        Mapping { ptr, len }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `read_all`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A child running `child_process_body`.
struct TestChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl TestChild {
    fn start(role: &str) -> TestChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process_body",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        TestChild {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits, up to the deadline, for the child to say `marker`.
    fn expect(&self, marker: &str) {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("child never said {marker}; it said: {seen:#?}");
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Footprint before and after the child does its work.
    fn measure(role: &str) -> (ProcessFootprint, ProcessFootprint) {
        let probe = SystemProbe::default();
        TestChild::read(role, |pid| probe.process_footprint(pid).unwrap())
    }

    /// What `read` finds of the child's pid before and after it does its
    /// work.
    fn read<T>(role: &str, read: impl Fn(u32) -> T) -> (T, T) {
        let mut child = TestChild::start(role);
        child.expect("child:ready");
        let before = read(child.pid());
        child.send("go");
        child.expect("child:done");
        let after = read(child.pid());
        drop(child.stdin.take());
        let status = child.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
        (before, after)
    }
}

/// `Anonymous + Swap` and `Rss` of a process's `smaps_rollup`, which walks
/// its page tables, in bytes.
fn walked(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kb = |key: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in smaps_rollup:\n{text}"))
            * 1024
    };
    (kb("Anonymous") + kb("Swap"), kb("Rss"))
}

fn within(actual: u64, expected: u64, percent: u64) -> bool {
    actual.abs_diff(expected) * 100 <= expected * percent
}

#[test]
fn a_child_that_dirties_memory_has_that_footprint() {
    let n = 64 * MIB;
    let (before, after) = TestChild::measure(&format!("dirty:{}", n / MIB));
    let grown = after.footprint - before.footprint;
    eprintln!(
        "dirtied {n} bytes: footprint grew {grown}, RSS grew {}",
        after.rss - before.rss
    );
    assert!(
        within(grown, n, 5),
        "footprint grew {grown} bytes for {n} dirtied"
    );
    let mapped = after.mapped_weights.abs_diff(before.mapped_weights);
    assert!(
        mapped < n / 20,
        "dirty memory showed as {mapped} bytes of mapped weights"
    );
}

#[test]
fn a_child_that_maps_a_file_shows_mapped_weights_not_footprint() {
    let n = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.gguf");
    // Non-zero bytes: the pages are real file pages, in the page cache now.
    std::fs::write(&path, vec![7u8; n as usize]).unwrap();
    let (before, after) = TestChild::measure(&format!("map:{}", path.display()));
    let mapped = after.mapped_weights - before.mapped_weights;
    let footprint = after.footprint.abs_diff(before.footprint);
    eprintln!("mapped {n} bytes: mapped weights grew {mapped}, footprint moved {footprint}");
    assert!(
        within(mapped, n, 5),
        "mapped weights grew {mapped} bytes for {n} mapped"
    );
    assert!(
        footprint < n / 20,
        "a clean file mapping moved the footprint by {footprint} bytes"
    );
    assert!(
        after.rss - before.rss >= n * 95 / 100,
        "RSS counts mapped weights too"
    );
}

#[test]
fn the_footprint_counters_agree_with_the_page_table_walk() {
    // The footprint is read from the kernel's page counters; walking every
    // page (`smaps_rollup`) finds the same, to within the kernel's batching
    // of counter updates, for dirtied memory and for a mapped file alike.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.gguf");
    std::fs::write(&path, vec![7u8; 16 * MIB as usize]).unwrap();
    let probe = SystemProbe::default();
    let slack = 8 * MIB;
    for role in ["dirty:64".to_string(), format!("map:{}", path.display())] {
        let (_, (counters, (footprint, rss))) = TestChild::read(&role, |pid| {
            (probe.process_footprint(pid).unwrap(), walked(pid))
        });
        eprintln!("{role}: counters {counters:?}, walk footprint {footprint} rss {rss}");
        assert!(
            counters.footprint.abs_diff(footprint) <= slack,
            "{role}: the counters say {} of footprint, the walk {footprint}",
            counters.footprint
        );
        assert!(
            counters.rss.abs_diff(rss) <= slack,
            "{role}: the counters say {} resident, the walk {rss}",
            counters.rss
        );
        let (held, what) = if role.starts_with("dirty:") {
            (counters.footprint, "footprint")
        } else {
            (counters.mapped_weights, "mapped weights")
        };
        assert!(held >= 16 * MIB, "{role}: only {held} bytes of {what}");
    }
}

#[test]
fn a_files_page_cache_is_dropped_except_the_pages_a_process_maps() {
    let n = 32 * MIB;
    // Under the target directory: a disk's file system, not a tmpfs /tmp,
    // whose pages are memory and cannot be dropped.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("weights.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&vec![7u8; n as usize]).unwrap();
    // Written back: clean pages, as a model file's are.
    file.sync_all().unwrap();
    drop(file);
    // Before the child maps the file, its cached pages go; once it maps
    // them (reading every page back), they stay.
    let (unmapped, mapped) = TestChild::read(&format!("map:{}", path.display()), |_| {
        locara_platform::drop_file_cache(&path).unwrap()
    });
    eprintln!("dropped {unmapped} bytes of {n} cached, {mapped} while a process mapped them");
    assert!(
        within(unmapped, n, 10),
        "dropped {unmapped} bytes of a {n}-byte file just written"
    );
    assert!(
        mapped < n / 20,
        "dropped {mapped} bytes of a file a process maps"
    );
    // The child has exited: the pages it read back can go now, and then
    // nothing is left to drop.
    let after_exit = locara_platform::drop_file_cache(&path).unwrap();
    assert!(
        within(after_exit, n, 10),
        "dropped {after_exit} bytes once the process that mapped them exited"
    );
    assert_eq!(locara_platform::drop_file_cache(&path).unwrap(), 0);
}
