//! `locara mem`: the machine's memory and the runtime's own processes, in
//! the words of the memory accounting (footprint, mapped weights, RSS,
//! budget), each figure with a line that says what it means.

use crate::config::Config;
use crate::profile;
use anyhow::{Context, Result};
use locara_core::Bytes;
use locara_platform::{HeldMapped, MemoryProbe, ProcessFootprint, SystemProbe, SystemSnapshot};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

/// One process of the runtime.
struct RuntimeProcess {
    pid: u32,
    role: &'static str,
    footprint: ProcessFootprint,
}

pub fn mem(json: bool, watch: bool) -> Result<ExitCode> {
    locara_platform::check_supported()?;
    let config = Config::load(false)?;
    // The level shown judges warn as the daemon does: with the workers'
    // mapped weights not available to other processes.
    let held_mapped = HeldMapped::default();
    let probe = SystemProbe::default().with_held_mapped(held_mapped.clone());
    let (profile, _) = profile::load_or_probe(&probe, &config.home, false)?;
    let budget = profile.hardware.default_budget;
    let basis = profile.hardware.budget_basis;
    let exe = std::env::current_exe().context("locating the locara binary")?;
    let clear = watch && !json && std::io::stdout().is_terminal();
    loop {
        let processes = runtime_processes(&probe, &exe);
        held_mapped.set(
            processes
                .iter()
                .filter(|p| p.role == "engine worker")
                .map(|p| p.footprint.mapped_weights)
                .fold(0, u64::saturating_add),
        );
        let snapshot = probe.snapshot().context("reading the memory snapshot")?;
        let held: u64 = processes
            .iter()
            .filter(|p| p.pid != std::process::id())
            .map(|p| p.footprint.footprint)
            .sum();
        let mut out = std::io::stdout().lock();
        if json {
            let doc = json!({
                "snapshot": snapshot,
                "budget": { "bytes": budget, "basis": basis, "held": held },
                "processes": processes.iter().map(|p| json!({
                    "pid": p.pid,
                    "role": p.role,
                    "footprint": p.footprint.footprint,
                    "mapped_weights": p.footprint.mapped_weights,
                    "rss": p.footprint.rss,
                })).collect::<Vec<_>>(),
            });
            // One object per line under --watch (JSON lines).
            let text = if watch {
                serde_json::to_string(&doc)?
            } else {
                serde_json::to_string_pretty(&doc)?
            };
            writeln!(out, "{text}")?;
        } else {
            if clear {
                // Home the cursor and clear the screen.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            print_snapshot(&mut out, &snapshot)?;
            writeln!(
                out,
                "Budget {} (default: {}); Locara's models and daemon hold {} of it (footprint)",
                Bytes(budget),
                basis,
                Bytes(held)
            )?;
            writeln!(out)?;
            print_processes(&mut out, &processes)?;
            if watch {
                writeln!(out, "\nRefreshing every second; Ctrl-C stops.")?;
            }
        }
        out.flush()?;
        drop(out);
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        // The refresh period of the display, not a wait for an event.
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// This process, and the other processes of the same `locara` binary that
/// belong to the runtime: engine workers, `locara run`, the daemon.
fn runtime_processes(probe: &SystemProbe, exe: &std::path::Path) -> Vec<RuntimeProcess> {
    let me = std::process::id();
    let mut found = Vec::new();
    if let Ok(footprint) = probe.process_footprint(me) {
        found.push(RuntimeProcess {
            pid: me,
            role: "this command",
            footprint,
        });
    }
    // Listing can fail (no /proc); this process is still worth showing.
    for p in locara_platform::processes_of(exe).unwrap_or_default() {
        if p.pid == me {
            continue;
        }
        let role = match p.args.get(1).map(String::as_str) {
            Some("engine") => "engine worker",
            Some("run") => "locara run",
            Some("serve") => "daemon",
            _ => continue,
        };
        // A process that exited since the listing is simply not shown.
        if let Ok(footprint) = probe.process_footprint(p.pid) {
            found.push(RuntimeProcess {
                pid: p.pid,
                role,
                footprint,
            });
        }
    }
    found
}

fn print_snapshot(out: &mut impl Write, s: &SystemSnapshot) -> Result<()> {
    let pressure_detail = match &s.psi {
        Some(psi) => format!(
            " (PSI: tasks stalled on memory {:.1} % of the last 10 s, all tasks {:.1} %)",
            psi.some.avg10,
            psi.full.map_or(0.0, |f| f.avg10)
        ),
        None => String::new(),
    };
    writeln!(
        out,
        "Memory at {}: pressure {}{pressure_detail}",
        profile::utc(s.taken_at_unix_ms),
        s.pressure
    )?;
    let mut row = |label: &str, value: String, meaning: &str| -> std::io::Result<()> {
        writeln!(out, "  {label:<14}{value:>10}  {meaning}")
    };
    row(
        "total",
        Bytes(s.total).to_string(),
        "physical RAM the OS manages",
    )?;
    row(
        "available",
        Bytes(s.available).to_string(),
        "can be handed out without swapping or compressing: free plus cache the OS can drop",
    )?;
    row(
        "free",
        Bytes(s.free).to_string(),
        "unused right now; a small figure is normal, the OS keeps spare RAM busy as cache",
    )?;
    row(
        "cached files",
        Bytes(s.cached_files).to_string(),
        "file contents in RAM, mapped weights included: reclaimable at once, a healthy sign",
    )?;
    if let Some(c) = s.compressed {
        row(
            "compressed",
            Bytes(c).to_string(),
            "pages the OS squeezed instead of swapping them; growth means memory is short",
        )?;
    }
    if let Some(w) = s.wired {
        row(
            "wired",
            Bytes(w).to_string(),
            "pages that can never be paged out: the kernel, GPU buffers",
        )?;
    }
    let swap = if s.swap_total == 0 {
        "no swap configured".to_string()
    } else {
        format!(
            "of {}; pages written to disk, growth while a model runs means the machine is short",
            Bytes(s.swap_total)
        )
    };
    row("swap used", Bytes(s.swap_used).to_string(), &swap)?;
    if let Some(cg) = &s.cgroup {
        row(
            "cgroup limit",
            Bytes(cg.limit).to_string(),
            &format!(
                "this process's cgroup (v{}) at {}: {} charged, {} of it reclaimable cache",
                cg.version,
                cg.path,
                Bytes(cg.usage),
                Bytes(cg.reclaimable_files)
            ),
        )?;
        let e = cg.events;
        row(
            "cgroup events",
            String::new(),
            &format!(
                "throttled at memory.high {}x, hit the limit {}x, out of memory {}x, OOM kills {}",
                e.high, e.max, e.oom, e.oom_kill
            ),
        )?;
    }
    Ok(())
}

fn print_processes(out: &mut impl Write, processes: &[RuntimeProcess]) -> Result<()> {
    writeln!(out, "Locara processes")?;
    writeln!(
        out,
        "  {:>8}  {:<14}{:>12}{:>16}{:>12}",
        "PID", "ROLE", "FOOTPRINT", "MAPPED WEIGHTS", "RSS"
    )?;
    for p in processes {
        writeln!(
            out,
            "  {:>8}  {:<14}{:>12}{:>16}{:>12}",
            p.pid,
            p.role,
            Bytes(p.footprint.footprint),
            Bytes(p.footprint.mapped_weights),
            Bytes(p.footprint.rss)
        )?;
    }
    if !processes.iter().any(|p| p.role == "engine worker") {
        writeln!(out, "  (no engine worker running: no model is loaded)")?;
    }
    writeln!(
        out,
        "  footprint       what the OS charges the process: memory only it holds, that can only go to swap; the budget counts this"
    )?;
    writeln!(
        out,
        "  mapped weights  model file pages in RAM through mmap: the OS drops them under pressure and reads them back; never \"used\""
    )?;
    writeln!(
        out,
        "  RSS             both together, shown for comparison only: it overstates what an mmap'd model costs"
    )?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    /// Set in the stand-in engine below.
    const STAND_IN: &str = "LOCARA_MEM_TEST_STAND_IN";

    /// Not a test of its own: the body of a stand-in `locara engine` (this
    /// test binary re-run with `engine` as its first argument), which waits
    /// until its stdin closes.
    #[test]
    fn stand_in_engine_body() {
        if std::env::var_os(STAND_IN).is_none() {
            return;
        }
        eprintln!("stand-in:ready");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }

    #[test]
    fn engine_workers_of_this_binary_are_found_with_their_footprint() {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(&exe)
            .args([
                "engine",
                "--exact",
                "mem::tests::stand_in_engine_body",
                "--nocapture",
            ])
            .env(STAND_IN, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("stand-in:ready") => break,
                Ok(_) => {}
                Err(e) => panic!("the stand-in engine never started: {e}"),
            }
        }
        let found = runtime_processes(&SystemProbe::default(), &exe);
        drop(child.stdin.take());
        child.wait().unwrap();
        let me = found.iter().find(|p| p.pid == std::process::id()).unwrap();
        assert_eq!(me.role, "this command");
        let worker = found
            .iter()
            .find(|p| p.pid == child.id())
            .expect("the stand-in engine is listed");
        assert_eq!(worker.role, "engine worker");
        assert!(
            worker.footprint.footprint > 0 && worker.footprint.rss >= worker.footprint.footprint
        );
    }
}
