//! Real memory pressure on Linux: while `locara serve` holds two idle models
//! with a cached conversation each, a hog process (this test binary, run
//! again as its `hog` test) takes the machine's available memory below the
//! daemon's warn threshold, never below a safety floor, holds it and exits.
//! The daemon, reading the OS (not a simulation), must rise to warn, shed
//! its idle models and give their memory back, survive, and return to
//! normal once the hog is gone. Nothing may be killed by the OOM killer.

#![cfg(target_os = "linux")]

mod common;

use common::daemon::{chat_body, event_log, Daemon};
use common::{alive, eventually, GEMMA3, SMOLLM2};
use locara_core::Bytes;
use locara_daemon::runtime::{LadderStage, Status};
use locara_platform::testing::hog::{Hog, HogNews, HogPlan};
use locara_platform::{MemoryProbe, PressureLevel, SystemProbe, Thresholds};
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The hog's settings, in [`Hog::to_arg`]'s form; set only for the hog.
const HOG_ENV: &str = "LOCARA_TEST_HOG";

/// How long the hog holds once available memory is below warn: the daemon
/// sees it within its 1 s poll (or at once, by the PSI trigger) and
/// unloads models idle longer than [`IDLE_GRACE`] at once.
const HOLD: Duration = Duration::from_secs(15);

/// The hog's hard limit, taking and holding together. Taking ~20 GiB,
/// writing every page, was measured at about 10 s on a 2-core VM.
const HOG_LIMIT: Duration = Duration::from_secs(120);

/// The ladder's settings in this test: unload models idle for 1 s at warn
/// (default 30 s), and lift restrictions after 10 s of lower reports
/// (default 30 s), so the test takes well under two minutes.
const IDLE_GRACE: &str = "1s";
const QUIET_PERIOD: Duration = Duration::from_secs(10);

/// After the hog exits, the OS level drops once PSI's 10 s averages decay
/// below the thresholds (the kernel updates them every 2 s by a factor of
/// e^(-2/10): from 40 %, critical, to under 10 % takes about 14 s; from
/// 100 %, about 23 s), then the quiet period runs.
const BACK_TO_NORMAL_SLACK: Duration = Duration::from_secs(30);

/// How long the daemon may take to hold both models on a calm machine
/// before the hog starts: a reload of evicted files may set off the ladder
/// twice, each time for its quiet period.
const CALM_WITHIN: Duration = Duration::from_secs(90);

/// Not a test by itself: the memory hog of
/// [`real_pressure_sheds_idle_models_and_the_daemon_recovers`], which runs this
/// binary again filtered to it, with the hog's settings in `LOCARA_TEST_HOG`.
/// It prints its news on stderr, one line each (the test harness leaves
/// stderr alone).
#[test]
#[ignore = "the memory hog of the real pressure test, which runs it as a child process"]
fn hog() {
    let Some(arg) = std::env::var_os(HOG_ENV) else {
        return;
    };
    let hog = Hog::from_arg(arg.to_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("{HOG_ENV}={arg:?} is not a hog"));
    let probe = SystemProbe::default();
    hog.run(
        || probe.snapshot().ok().map(|s| s.available),
        |news| eprintln!("{news}"),
    );
}

/// The hog as a child process; killed if the test ends before it does.
struct HogProcess {
    child: Child,
    news: mpsc::Receiver<HogNews>,
}

impl HogProcess {
    fn start(hog: &Hog) -> HogProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hog", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(HOG_ENV, hog.to_arg())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the hog");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, news) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                match line.parse::<HogNews>() {
                    Ok(n) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    // A panic's message, for the test's log.
                    Err(_) => eprintln!("{line}"),
                }
            }
        });
        HogProcess { child, news }
    }
}

impl Drop for HogProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's status every 250 ms, read on a thread of its own.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, Status)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(d: &Daemon) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (url, bearer) = (format!("{}/locara/v1/status", d.url), d.bearer());
        let (sink, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let status = ureq::get(&url)
                    .set("Authorization", &bearer)
                    .timeout(Duration::from_secs(5))
                    .call()
                    .ok()
                    .and_then(|r| r.into_json::<Status>().ok());
                if let Some(s) = status {
                    sink.lock().unwrap().push((Instant::now(), s));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Sampler { samples, stop }
    }

    /// The first sample after `since` for which `f` holds.
    fn first(&self, since: Instant, f: impl Fn(&Status) -> bool) -> Option<(Instant, Status)> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .find(|(t, s)| *t >= since && f(s))
            .cloned()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Processes the kernel's OOM killer has killed since boot (`/proc/vmstat`).
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .expect("reading /proc/vmstat")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .expect("/proc/vmstat has no oom_kill counter")
}

fn typed_status(d: &Daemon) -> Status {
    d.get("/locara/v1/status").into_json().unwrap()
}

/// The events of type `kind` from the `from`th on.
fn events_of(events: &Mutex<Vec<Value>>, from: usize, kind: &str) -> Vec<Value> {
    events
        .lock()
        .unwrap()
        .iter()
        .skip(from)
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

#[test]
fn real_pressure_sheds_idle_models_and_the_daemon_recovers() {
    let started = Instant::now();
    let oom_kills_before = oom_kills();
    let probe = SystemProbe::default();
    let machine = probe.snapshot().expect("reading the machine's memory");
    let warn_fraction = Thresholds::default().warn_available_fraction;
    let plan = HogPlan::below_warn(machine.usable(), warn_fraction)
        .unwrap_or_else(|e| panic!("the real pressure test cannot run here: {e}"));

    let mut config = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut config,
        format!(
            "pressure_idle_grace = \"{IDLE_GRACE}\"\npressure_quiet_period = \"{}s\"\nkeep_alive = \"10m\"\n",
            QUIET_PERIOD.as_secs()
        )
        .as_bytes(),
    )
    .unwrap();
    let config_path = config.path().to_str().unwrap().to_string();
    // The model files and the binary in the page cache: reading them back
    // while the daemon watches would count as a memory stall.
    for file in [
        common::model(SMOLLM2),
        common::model(GEMMA3),
        env!("CARGO_BIN_EXE_locara").into(),
    ] {
        let mut f = std::fs::File::open(&file).unwrap();
        std::io::copy(&mut f, &mut std::io::sink()).unwrap();
    }
    let mut d = Daemon::start(&[
        "--context",
        "2048",
        "--parallel",
        "2",
        "--config",
        &config_path,
    ]);
    let events = event_log(&d);

    // Two models, each idle after a chat, with its conversation cached, on
    // a calm machine. Reading back file pages that earlier work pushed out
    // of the page cache counts as a memory stall, so a model's load can
    // fire the PSI trigger by itself; then the models unload at once
    // (their idle grace is 1 s) and the ladder waits out its quiet period
    // before they are loaded again.
    let calm = |s: &Status| {
        s.pressure.state == LadderStage::Normal
            && s.pressure.os_level == PressureLevel::Normal
            && s.models.len() == 2
            && s.models.iter().all(|m| {
                m.footprint.is_some()
                    && m.pool
                        .as_ref()
                        .is_some_and(|p| p.cached_sequences + p.ram_cached_sequences >= 1)
            })
    };
    let calm_deadline = Instant::now() + CALM_WITHIN;
    let before = loop {
        eventually(QUIET_PERIOD + BACK_TO_NORMAL_SLACK, || {
            typed_status(&d).pressure.state == LadderStage::Normal
        });
        for model in [SMOLLM2, GEMMA3] {
            d.chat(chat_body(model, "Say hello.", 8, false));
        }
        // Within two measure ticks (2 s each), both are measured.
        if eventually(Duration::from_secs(6), || calm(&typed_status(&d))) {
            break typed_status(&d);
        }
        assert!(
            Instant::now() < calm_deadline,
            "the machine was under memory pressure before the hog started, for {} s: {}",
            CALM_WITHIN.as_secs(),
            d.status()
        );
    };
    let workers: Vec<(String, u32)> = before
        .models
        .iter()
        .map(|m| (m.name.clone(), m.pid.expect("a loaded model has a worker")))
        .collect();
    let footprint_before: u64 = before.models.iter().filter_map(|m| m.footprint).sum();

    let sampler = Sampler::start(&d);
    let hog = Hog {
        plan,
        hold: HOLD,
        limit: HOG_LIMIT,
    };
    // Only what happens from here on is the hog's doing.
    let first_event = events.lock().unwrap().len();
    let hog_started = Instant::now();
    let mut hog_process = HogProcess::start(&hog);
    let usable = machine.usable();
    let numbers = format!(
        "usable {}, warn below {} available, the hog's target {} and floor {}",
        Bytes(usable),
        Bytes((usable as f64 * warn_fraction) as u64),
        Bytes(plan.target),
        Bytes(plan.floor)
    );

    // The hog takes memory until available memory is below warn.
    let reached = loop {
        match hog_process
            .news
            .recv_timeout(HOG_LIMIT + Duration::from_secs(10))
        {
            Ok(HogNews::Reached { held, available }) => break (held, available),
            Ok(HogNews::GaveBack { .. }) => {}
            Ok(news @ (HogNews::Blocked { .. } | HogNews::Unreadable | HogNews::Done(_))) => {
                panic!(
                    "the hog could not take available memory below warn safely ({news}); \
                     {numbers}; other processes may be using memory"
                )
            }
            Err(e) => panic!("no news from the hog ({e}); {numbers}"),
        }
    };
    let reached_after = hog_started.elapsed();

    // The daemon sees it from the OS: its level rises to warn or beyond.
    let warn_seen = eventually(Duration::from_secs(10), || {
        sampler
            .first(hog_started, |s| s.pressure.os_level >= PressureLevel::Warn)
            .is_some()
    });
    assert!(
        warn_seen,
        "the hog holds {} and available memory is {} ({numbers}), but the daemon's OS level \
         stayed normal: {:?}",
        Bytes(reached.0),
        Bytes(reached.1),
        sampler
            .samples
            .lock()
            .unwrap()
            .last()
            .map(|(_, s)| &s.pressure)
    );
    let (warn_at, at_warn) = sampler
        .first(hog_started, |s| s.pressure.os_level >= PressureLevel::Warn)
        .unwrap();

    // It sheds: both models, idle for longer than the grace, unload and
    // their workers' memory comes back, while the hog still holds.
    let shed = eventually(HOLD - Duration::from_secs(3), || {
        let freed = events_of(&events, first_event, "freed");
        freed.len() == workers.len()
            && freed
                .iter()
                .all(|e| e["bytes"].as_u64().unwrap_or(0) > 1 << 20)
            && sampler.first(hog_started, |s| s.held == 0).is_some()
    });
    assert!(
        shed,
        "the daemon did not shed under real pressure; events {:?}; status {}",
        events.lock().unwrap(),
        d.status()
    );
    let actions = events_of(&events, first_event, "action");
    assert!(
        actions.iter().any(|e| e["action"] == "unload"),
        "no unload action: {actions:?}"
    );
    let levels = events_of(&events, first_event, "level");
    assert!(
        levels.iter().any(|e| e["level"] != "normal"),
        "no level event: {levels:?}"
    );
    let freed = events_of(&events, first_event, "freed");
    for (name, pid) in &workers {
        assert!(
            freed.iter().any(|e| e["model"] == name.as_str()),
            "{name} was not unloaded: {freed:?}"
        );
        assert!(!alive(*pid), "{name}'s worker {pid} outlived its unload");
    }
    let freed_bytes: u64 = freed.iter().filter_map(|e| e["bytes"].as_u64()).sum();
    let least_held = sampler
        .samples
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= hog_started)
        .map(|(_, s)| s.held)
        .min()
        .unwrap_or(before.held);

    // The hog ends by itself, well.
    let hog_deadline = HOG_LIMIT + Duration::from_secs(10);
    assert!(
        eventually(hog_deadline.saturating_sub(hog_started.elapsed()), || {
            hog_process.child.try_wait().unwrap().is_some()
        }),
        "the hog ran past its time limit"
    );
    let hog_status = hog_process.child.wait().unwrap();
    assert!(hog_status.success(), "the hog failed: {hog_status}");
    let hog_summary = std::iter::from_fn(|| hog_process.news.recv().ok())
        .find_map(|n| match n {
            HogNews::Done(s) => Some(s),
            _ => None,
        })
        .expect("the hog said nothing at its end");
    let hog_exited = Instant::now();

    // The daemon lived through it and returns to normal once the quiet
    // period has passed after the OS's readings calm down.
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon exited under pressure"
    );
    let normal = eventually(QUIET_PERIOD + BACK_TO_NORMAL_SLACK, || {
        let s = typed_status(&d);
        s.pressure.level == PressureLevel::Normal && s.pressure.os_level == PressureLevel::Normal
    });
    assert!(
        normal,
        "the level is not normal {} s after the hog exited: {:?}, machine {:?}",
        (QUIET_PERIOD + BACK_TO_NORMAL_SLACK).as_secs(),
        typed_status(&d).pressure,
        typed_status(&d).system
    );
    let normal_after = hog_exited.elapsed();
    // Loads are allowed again: requests reload both models. That also
    // brings their files back into the page cache, and the test ends on a
    // calm machine, so that the tests after it do not start on the stalls
    // of reading back what the hog pushed out.
    for model in [SMOLLM2, GEMMA3] {
        d.chat(chat_body(model, "Say hello.", 8, false));
    }
    drop(sampler);
    assert!(
        eventually(QUIET_PERIOD + BACK_TO_NORMAL_SLACK, || {
            let s = typed_status(&d);
            s.pressure.state == LadderStage::Normal && s.pressure.os_level == PressureLevel::Normal
        }),
        "the reloads left the daemon under pressure: {:?}",
        typed_status(&d).pressure
    );

    assert_eq!(
        oom_kills(),
        oom_kills_before,
        "the OOM killer ran during the test"
    );
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    unsafe {
        libc::kill(d.pid() as i32, libc::SIGTERM);
    }
    assert!(
        eventually(Duration::from_secs(15), || d
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "the daemon is still running after SIGTERM"
    );
    let daemon_status = d.child.wait().unwrap();
    assert!(
        daemon_status.success(),
        "the daemon's exit: {daemon_status}"
    );

    eprintln!(
        "real pressure: {numbers}; the hog reached {} available holding {} after {:.1} s \
         (lowest available {}, {} steps given back); OS level {} after {:.1} s; held {} -> {} \
         (footprints {}), {} freed by {} unload(s); normal {:.1} s after the hog exited; \
         {:.0} s in all",
        Bytes(reached.1),
        Bytes(reached.0),
        reached_after.as_secs_f64(),
        Bytes(hog_summary.lowest_available),
        hog_summary.gave_back,
        at_warn.pressure.os_level,
        (warn_at - hog_started).as_secs_f64(),
        Bytes(before.held),
        Bytes(least_held),
        Bytes(footprint_before),
        Bytes(freed_bytes),
        freed.len(),
        normal_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
