//! `locara-pressure-bench`: what a Locara daemon holding models costs a
//! neighbouring process when an app on the machine wants more memory than is
//! free, with the daemon's governor answering the OS's pressure and with the
//! daemon ignoring it (`locara serve --pressure ignore`).
//!
//! # What it measures
//!
//! A **probe** process takes 256 MiB of its own and wakes every 10 ms to
//! write every page of it once: its **lateness** (when it woke less when it
//! was due: p50, p99, max) is what a neighbour feels. The **PSI** memory
//! `some` and `full` totals (`/proc/pressure/memory`) grow by the time tasks
//! stalled on memory; `/proc/vmstat`'s `pswpout` and `pswpin` say how much
//! the kernel **swapped**; the **hog's steps** (allocating and writing 256
//! MiB each) stall when the kernel has to reclaim to hand memory out. All
//! are taken from the hog's start to its exit. An **idle neighbour**, an
//! app in the background (`--idle-mib`, default 1 GiB), writes every page
//! of its own once before the hog starts and again halfway through the
//! hog's hold: how long that takes is what a user switching back to it
//! waits, pages the kernel swapped out coming back in.
//!
//! # How
//!
//! Each run starts `locara serve` from a temporary data directory holding
//! the models, chats once with each (they stay loaded, idle, each with a
//! cached conversation), waits until the machine is calm (its one-reading
//! pressure level normal and PSI `some` avg10 under 1 %), starts the probe,
//! reads available memory (A0, `MemAvailable`, the probe's memory taken)
//! and the daemon's footprint (D: its workers' measured footprints in
//! `/locara/v1/status`, together), then starts a **hog** (this program
//! again) that takes a fixed **W = A0 - G + D** bytes, G being a guard
//! (`--guard`, default max(1 GiB, 4 % of usable memory)), in 256 MiB steps
//! at most one every 500 ms (so the daemon, which reads the level once a
//! second, has time to answer), holds them, and exits. With the governor, the daemon gives D back at warn (its idle
//! models' pools and weights) and W fits with G to spare; ignoring
//! pressure, the kernel must find about D - G bytes by swapping. W is
//! measured in the first run of each pair and used by both. The hog never
//! lets available memory plus free swap fall below max(1 GiB, 3 %); where
//! its next step would, it stops short, holds what it took, and the run is
//! marked (see `locara_platform::testing::hog`). A repetition runs the
//! scenario with the governor and without it, alternating which goes first;
//! the table shows medians, ranges, and the median of the pairs' ratios
//! (governor / ignoring). The daemon runs at its defaults, with
//! `keep_alive` long enough to outlast a run.
//!
//! # What it needs
//!
//! * **Swap**: at least D + 1 GiB free. Without it the benchmark exits
//!   with status 1 and says how to add a swap file (as root: `fallocate -l
//!   6G /swapfile; chmod 600 /swapfile; mkswap /swapfile; swapon
//!   /swapfile`; afterwards `swapoff /swapfile; rm /swapfile`).
//! * **A model that holds a large share of memory**, so that D matters:
//!   the two test models hold about 545 MiB together. `scripts/bench-model.py`
//!   writes a memory fixture: a llama model with random Q4_0 weights (its
//!   answers are noise), which llama.cpp repacks into anonymous memory on
//!   x86, so its worker's footprint is about the file's size. Make one and
//!   pass it with `--model PATH`.
//!
//! Linux only (PSI, `MemAvailable`, `/proc/vmstat`). Exit status: 0 when
//! the p99 lateness ratio is at most 0.25 (the issue's goal) and every hog
//! took all it wanted, 2 when not, 1 on an error (no swap included).
//!
//! # Example
//!
//! ```text
//! cargo build --release -p locara-bench -p locara
//! python3 scripts/bench-model.py --size 3GiB     # prints the file's path
//! target/release/locara-pressure-bench --reps 3 \
//!     --model ~/.cache/locara-bench-model/bench-q4_0-3GiB.gguf
//! ```

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use locara_bench::dirs::{data_dir, WorkDir};
use locara_bench::http::{self, BaseUrl};
use locara_bench::locara_server::Locara;
use locara_bench::noise::CpuSnapshot;
use locara_bench::pressure::{
    default_guard, hog_wants, run_probe, swap_advice, swap_needed, touch_idle, Mode,
    PressureReport, ProbeResult, Run, SwapCounts, SWAP_SLACK,
};
use locara_bench::progress;
use locara_bench::scenario;
use locara_core::Bytes;
use locara_platform::testing::hog::{Hog, HogNews, HogPlan, Reading, FIXED_PACE, STEP};
use locara_platform::{HardwareProbe, MemoryProbe, PressureLevel, SystemProbe, Thresholds};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The p99 lateness with the governor at most this share of it without:
/// the issue's goal.
const P99_GOAL: f64 = 0.25;

/// Exit status when the run worked but the goal is missed.
const EXIT_BELOW_GOAL: u8 = 2;

/// How long `locara serve` gets to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a chat, the model's load included, may take.
const CHAT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the machine may take to calm down before a run (PSI's 10 s
/// average decays from the last run's stalls within about 30 s).
const CALM_WITHIN: Duration = Duration::from_secs(120);

/// PSI `some` avg10 (percent) under which the machine counts as calm.
const CALM_SOME_AVG10: f64 = 1.0;

/// The least time the hog gets to take its bytes: taking ~20 GiB, writing
/// every page, was measured at 35-50 s on a 2-core VM.
const HOG_TAKING_LIMIT: Duration = Duration::from_secs(150);

/// The hog gets this many times its steps at its pace to take its bytes,
/// for steps slowed by swapping.
const HOG_SLOWDOWN: u32 = 3;

/// A daemon footprint below this share of usable memory is too small for
/// its giving back to show (the two test models hold about 2 % of 24 GiB).
const SMALL_FOOTPRINT: f64 = 0.05;

/// How often the daemon's status (and, ignoring pressure, the machine's
/// level) is read while the hog runs: seldom, because each read is work on
/// the CPUs the probe shares, the same on both sides. On a 2-core VM, with
/// the daemon holding its model idle and the hog growing, a status read
/// twice a second (with `curl`) took the probe's p99 lateness from 0.18 to
/// 2.2 ms: a wake that finds the other core busy for a moment queues
/// behind the hog for its time slice.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The models held by default: (directory in the data directory's store,
/// name), the two test models.
const DEFAULT_MODELS: [(&str, &str); 2] = [
    ("smollm2+135m", "smollm2:135m"),
    ("gemma3+270m", "gemma3:270m"),
];

/// What a daemon holding models costs a neighbouring process when an app
/// wants more memory than is free, with its governor on and with the OS's
/// pressure ignored (`locara serve --pressure ignore`).
///
/// Each run starts `locara serve` holding the models (each idle after one
/// chat), a probe process that writes every page of its own 256 MiB every
/// 10 ms, and a hog that takes W = A0 - G + D bytes in 256 MiB steps (A0:
/// available memory at calm, D: the daemon's footprint at calm, G: the
/// guard), holds them and exits. With the governor the daemon gives D back
/// and W fits; ignoring pressure, the kernel swaps about D - G. The probe's
/// lateness (p50, p99, max), the PSI memory totals, the bytes swapped and
/// the hog's step times are compared, governor against ignoring, in
/// alternating pairs; goal: p99 lateness with the governor at most 0.25 of
/// it without.
///
/// Needs swap (at least D + 1 GiB free) and a model that holds a large
/// share of memory: make one with `python3 scripts/bench-model.py --size
/// 3GiB` (a memory fixture with random weights; it prints its path) and
/// pass it with `--model PATH`. Linux only. Exit status: 0 when the goal is
/// met, 2 when not, 1 on an error (no swap included).
#[derive(Parser, Debug)]
#[command(name = "locara-pressure-bench", version, about, long_about)]
struct Cli {
    /// The locara binary [default: `locara` in this program's directory]
    #[arg(long, value_name = "PATH")]
    locara: Option<PathBuf>,

    /// A GGUF model for the daemon to hold; repeat for more [default: the
    /// two test models in the data directory, smollm2+135m and gemma3+270m,
    /// too small to matter: make a large one with scripts/bench-model.py]
    #[arg(long = "model", value_name = "PATH")]
    models: Vec<PathBuf>,

    /// Repetitions, each one run with the governor and one without.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,

    /// Seconds the hog holds once it took its bytes.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    hold: u64,

    /// The guard G: what stays available once the hog holds W = A0 - G + D
    /// and the daemon gave its footprint back (4GiB, 512MiB, or bytes)
    /// [default: the larger of 1 GiB and 4 % of usable memory]
    #[arg(long, value_name = "SIZE", value_parser = parse_guard)]
    guard: Option<u64>,

    /// The daemon's `pressure_idle_grace` (default: its own, 30s).
    #[arg(long, value_name = "DURATION")]
    idle_grace: Option<String>,

    /// MiB the probe writes each wake.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=16384))]
    probe_mib: u64,

    /// MiB of the idle neighbour, an app in the background that writes its
    /// pages once at its start and again halfway through the hog's hold (a
    /// user switching back to it); 0: none.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=16384))]
    idle_mib: u64,

    /// The probe's period, milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    period_ms: u64,

    /// Print the result as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,

    /// Keep the working directory (daemon logs, its data directory).
    #[arg(long)]
    keep_work_dir: bool,

    /// Run as the hog with these settings (`Hog::to_arg`), printing its
    /// news on stdout.
    #[arg(long, hide = true, value_name = "SETTINGS")]
    as_hog: Option<String>,

    /// Run as the probe, until stdin closes; then print its result.
    #[arg(long, hide = true)]
    as_probe: bool,

    /// Run as the idle neighbour: write its pages, print "ready", wait for
    /// a line on stdin, write them again and print "touched MICROSECONDS".
    #[arg(long, hide = true)]
    as_idle: bool,
}

fn parse_guard(text: &str) -> Result<u64, String> {
    locara_core::bytes::parse_size(text).map_err(|e| format!("--guard: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if let Some(settings) = &cli.as_hog {
        as_hog(settings).map(|()| ExitCode::SUCCESS)
    } else if cli.as_probe {
        as_probe(&cli).map(|()| ExitCode::SUCCESS)
    } else if cli.as_idle {
        as_idle(&cli).map(|()| ExitCode::SUCCESS)
    } else {
        run(&cli)
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("locara-pressure-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn as_hog(settings: &str) -> Result<()> {
    let hog = Hog::from_arg(settings).with_context(|| format!("{settings:?} is not a hog"))?;
    let probe = SystemProbe::default();
    hog.run_with_swap(
        || probe.snapshot().ok().map(|s| Reading::of(&s)),
        |news| println!("{news}"),
    );
    Ok(())
}

fn as_probe(cli: &Cli) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        // The parent closes stdin to stop the probe.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        stopped.store(true, Ordering::Relaxed);
    });
    let result = run_probe(
        usize::try_from(cli.probe_mib << 20)?,
        Duration::from_millis(cli.period_ms),
        || {
            println!("ready");
            let _ = std::io::stdout().flush();
        },
        || stop.load(Ordering::Relaxed),
    );
    println!("{result}");
    Ok(())
}

fn as_idle(cli: &Cli) -> Result<()> {
    let touched = touch_idle(
        usize::try_from(cli.idle_mib << 20)?,
        || {
            println!("ready");
            let _ = std::io::stdout().flush();
        },
        || {
            let mut line = String::new();
            matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0)
        },
    );
    if let Some(took) = touched {
        println!("touched {}", took.as_micros());
    }
    Ok(())
}

/// A child process of this program's (the hog, the probe); killed if it is
/// still running when dropped.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    fn start(args: &[String]) -> Result<Helper> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting this program with {args:?}"))?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Helper { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What stays the same from run to run.
struct Setup {
    locara: Locara,
    home: PathBuf,
    /// The models' names in the daemon's store.
    names: Vec<String>,
    /// Usable memory, bytes (the hog's floor is a share of it).
    usable: u64,
    /// The guard G, bytes.
    guard: u64,
    /// How long the hog holds its bytes.
    hold: Duration,
    /// Bytes per page, for `/proc/vmstat`'s page counts.
    page_size: u64,
    probe_args: Vec<String>,
    /// The idle neighbour's arguments; `None`: none.
    idle_args: Option<Vec<String>>,
    idle_grace: Option<String>,
}

fn run(cli: &Cli) -> Result<ExitCode> {
    ensure!(
        cfg!(target_os = "linux"),
        "this benchmark reads PSI, MemAvailable and /proc/vmstat: Linux only"
    );
    let models: Vec<(PathBuf, String)> = if cli.models.is_empty() {
        let store = data_dir()?.join("models");
        DEFAULT_MODELS
            .iter()
            .map(|(dir, name)| (store.join(dir).join("model.gguf"), name.to_string()))
            .collect()
    } else {
        cli.models
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), format!("bench-{}", i + 1)))
            .collect()
    };
    let mut files = 0u64;
    for (path, name) in &models {
        let meta = fs::metadata(path).ok().filter(|m| m.is_file());
        let Some(meta) = meta else {
            bail!(
                "{name}: no model at {} (pull it with `locara pull {name}`, or make a large one \
                 with `python3 scripts/bench-model.py --size 3GiB` and pass it with --model PATH)",
                path.display()
            );
        };
        files += meta.len();
    }

    let probe = SystemProbe::default();
    let machine = probe.snapshot().context("reading the machine's memory")?;
    // No swap at all: no daemon footprint fits, so say so before loading
    // anything; the exact need is checked once the daemon holds the models.
    let swap = Reading::of(&machine);
    if machine.swap_total < SWAP_SLACK {
        bail!(
            "{}",
            swap_advice(machine.swap_total, swap.swap_free, swap_needed(files), true)
        );
    }
    let locara = Locara::locate(cli.locara.clone())?;
    progress(&format!(
        "Locara: {} ({})",
        locara.describe(),
        locara.path.display()
    ));
    let warn_fraction = Thresholds::default().warn_available_fraction;
    let usable = machine.usable();
    let guard = cli.guard.unwrap_or_else(|| default_guard(usable));
    let floor = HogPlan::fixed(0, usable).floor;
    let page_size = probe
        .hardware_profile()
        .context("reading the page size")?
        .page_size;

    let mut work = WorkDir::create("locara-pressure-bench", "daemon logs", cli.keep_work_dir)?;
    let mut home = work.path.clone();
    for (path, name) in &models {
        home = locara.prepare_home(&work.path, path, name)?;
    }
    let setup = Setup {
        locara,
        home,
        names: models.iter().map(|(_, n)| n.clone()).collect(),
        usable,
        guard,
        hold: Duration::from_secs(cli.hold),
        page_size,
        probe_args: vec![
            "--as-probe".into(),
            "--probe-mib".into(),
            cli.probe_mib.to_string(),
            "--period-ms".into(),
            cli.period_ms.to_string(),
        ],
        idle_args: (cli.idle_mib > 0).then(|| {
            vec![
                "--as-idle".into(),
                "--idle-mib".into(),
                cli.idle_mib.to_string(),
            ]
        }),
        idle_grace: cli.idle_grace.clone(),
    };

    let mut runs = Vec::new();
    let mut others = Vec::new();
    let result = (|| -> Result<()> {
        for rep in 0..cli.reps {
            let order = if rep % 2 == 0 {
                [Mode::Governor, Mode::Ignore]
            } else {
                [Mode::Ignore, Mode::Governor]
            };
            // The first run of the pair measures W; the second takes the same.
            let mut wants = None;
            for mode in order {
                let n = runs.len() + 1;
                progress(&format!("run {n} of {}: {}", cli.reps * 2, mode.name()));
                let dir = work.path.join(format!("run-{n}"));
                fs::create_dir_all(&dir)?;
                let (run, share) = run_once(&setup, mode, &dir, wants)?;
                wants = Some(run.hog_wants);
                others.extend(share.map(|s| (s, run.window_s)));
                runs.push(run);
            }
        }
        Ok(())
    })();
    if result.is_err() {
        work.keep = true;
    }
    result?;

    let seconds: f64 = others.iter().map(|(_, w)| w).sum();
    let report = PressureReport {
        locara: setup.locara.describe(),
        models: setup.names.clone(),
        machine: describe_machine(usable, machine.swap_total),
        probe_bytes: cli.probe_mib << 20,
        probe_period_ms: cli.period_ms,
        idle_bytes: cli.idle_mib << 20,
        guard,
        swap_total: machine.swap_total,
        hog_step: STEP,
        hog_pace_ms: FIXED_PACE.as_millis() as u64,
        hog_floor: floor,
        warn_below: (usable as f64 * warn_fraction) as u64,
        hold_s: cli.hold,
        others_cpu_share: (seconds > 0.0)
            .then(|| others.iter().map(|(s, w)| s * w).sum::<f64>() / seconds),
        runs,
        goal: P99_GOAL,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let reached = report.runs.iter().all(|r| r.hog_reached);
    Ok(if report.pass() && reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BELOW_GOAL)
    })
}

/// `2 CPUs, 23.5 GiB usable, no swap, Linux 6.18.44`.
fn describe_machine(usable: u64, swap: u64) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!("Linux {}", k.trim()))
        .unwrap_or_else(|_| "Linux".into());
    let swap = if swap == 0 {
        "no swap".to_string()
    } else {
        format!("{} of swap", Bytes(swap))
    };
    format!("{cpus} CPUs, {} usable, {swap}, {kernel}", Bytes(usable))
}

/// Waits until the machine is calm: its one-reading level normal and PSI
/// `some` avg10 under [`CALM_SOME_AVG10`].
fn wait_calm(probe: &SystemProbe) -> Result<()> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let s = probe.snapshot()?;
        let some = s.psi.map_or(0.0, |p| p.some.avg10);
        if s.pressure == PressureLevel::Normal && some < CALM_SOME_AVG10 {
            return Ok(());
        }
        ensure!(
            started.elapsed() < CALM_WITHIN,
            "the machine did not calm down within {} s (level {}, PSI some avg10 {some} %)",
            CALM_WITHIN.as_secs(),
            s.pressure
        );
        if !said {
            progress(&format!(
                "waiting for the machine to calm down (level {}, PSI some avg10 {some} %)",
                s.pressure
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The daemon's status, or `None` when it cannot be read.
fn status(base: &BaseUrl) -> Option<Value> {
    match http::get(base, "/locara/v1/status", STATUS_TIMEOUT) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn held(status: &Value) -> u64 {
    status["held"].as_u64().unwrap_or(0)
}

/// Asks the idle neighbour to write its pages again.
fn ask_to_touch(idle: &mut Helper) -> Result<()> {
    let stdin = idle
        .child
        .stdin
        .as_mut()
        .context("the idle neighbour's stdin is gone")?;
    stdin
        .write_all(b"touch\n")
        .and_then(|()| stdin.flush())
        .context("asking the idle neighbour to touch its pages")
}

/// How long the idle neighbour took to write its pages again,
/// microseconds (pages swapped out come back in meanwhile: up to minutes).
fn idle_touched(idle: &Helper) -> Result<u64> {
    loop {
        let line = idle
            .lines
            .recv_timeout(Duration::from_secs(300))
            .context("the idle neighbour did not say how long its touch took")?;
        if let Some(us) = line.strip_prefix("touched ") {
            return us
                .parse()
                .with_context(|| format!("the idle neighbour said {line:?}"));
        }
    }
}

/// The daemon's footprint: its workers' measured footprints together
/// (a model not yet measured counts 0).
fn footprint(status: &Value) -> u64 {
    status["models"].as_array().map_or(0, |models| {
        models.iter().filter_map(|m| m["footprint"].as_u64()).sum()
    })
}

fn models_loaded(status: &Value) -> usize {
    status["models"].as_array().map_or(0, Vec::len)
}

/// The hog's time limit for taking `bytes` (its steps at its pace, slowed
/// by swapping, at least [`HOG_TAKING_LIMIT`]) and holding them.
fn hog_limit(bytes: u64, hold: Duration) -> Duration {
    let steps = u32::try_from(bytes.div_ceil(STEP)).unwrap_or(u32::MAX);
    HOG_TAKING_LIMIT.max(FIXED_PACE.saturating_mul(steps.saturating_mul(HOG_SLOWDOWN))) + hold
}

/// Runs the scenario once with the daemon in `mode`, the hog taking `wants`
/// bytes (`None`: W = A0 - G + D, measured in this run); the run and the
/// share of the CPU other processes took.
fn run_once(
    setup: &Setup,
    mode: Mode,
    dir: &Path,
    wants: Option<u64>,
) -> Result<(Run, Option<f64>)> {
    let probe = SystemProbe::default();
    let mut config = String::from("# Written by locara-pressure-bench.\nkeep_alive = \"30m\"\n");
    if mode == Mode::Ignore {
        config.push_str("pressure = \"ignore\"\n");
    }
    if let Some(grace) = &setup.idle_grace {
        config.push_str(&format!("pressure_idle_grace = \"{grace}\"\n"));
    }
    wait_calm(&probe)?;
    let mut daemon = setup
        .locara
        .serve(&setup.home, dir, &config, START_DEADLINE)?;
    let base = daemon.base.clone();
    for name in &setup.names {
        scenario::one_stream(
            &base,
            &scenario::chat_body(name, "Say hello.", 8, &[]),
            CHAT_TIMEOUT,
        )
        .with_context(|| format!("chatting with {name}"))?;
    }
    // Every model measured (the daemon measures every 2 s).
    let measured = |s: &Value| {
        s["models"].as_array().is_some_and(|m| {
            m.len() == setup.names.len() && m.iter().all(|m| m["footprint"].is_u64())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        daemon.check_alive()?;
        if status(&base).is_some_and(|s| measured(&s)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon did not hold every model within 20 s: {:?}",
            status(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_calm(&probe)?;

    let probe_child = Helper::start(&setup.probe_args)?;
    match probe_child.lines.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line == "ready" => {}
        other => bail!("the probe did not start: {other:?}"),
    }
    // The idle neighbour's pages are written before the calm reading, so
    // they count in A0, and they sit idle from then on.
    let mut idle = match &setup.idle_args {
        Some(args) => {
            let idle = Helper::start(args)?;
            match idle.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line == "ready" => {}
                other => bail!("the idle neighbour did not start: {other:?}"),
            }
            Some(idle)
        }
        None => None,
    };
    // Available memory and the daemon's footprint at calm, with the probe's
    // memory already taken: the guard is what stays beside it.
    let calm = probe.snapshot()?;
    let before = status(&base).filter(|s| measured(s)).with_context(|| {
        format!(
            "the daemon's status did not show every model measured: {:?}",
            status(&base)
        )
    })?;
    let (a0, d) = (calm.available, footprint(&before));
    let swap = Reading::of(&calm);
    if swap.swap_free < swap_needed(d) {
        bail!(
            "{}",
            swap_advice(calm.swap_total, swap.swap_free, swap_needed(d), false)
        );
    }
    if (d as f64) < setup.usable as f64 * SMALL_FOOTPRINT {
        progress(&format!(
            "the daemon holds only {} of {} usable: what the governor gives back can hardly \
             matter; make a large model with `python3 scripts/bench-model.py --size 3GiB` and \
             pass it with --model PATH",
            Bytes(d),
            Bytes(setup.usable)
        ));
    }
    let w = match wants {
        Some(w) => w,
        None => hog_wants(a0, setup.guard, d).with_context(|| {
            format!(
                "available memory at calm ({}) is not above the guard ({}): nothing to take",
                Bytes(a0),
                Bytes(setup.guard)
            )
        })?,
    };
    progress(&format!(
        "A0 {} available at calm, D {} the daemon's footprint, G {}: the hog takes W {}{}",
        Bytes(a0),
        Bytes(d),
        Bytes(setup.guard),
        Bytes(w),
        if wants.is_some() {
            " (the pair's first run's)"
        } else {
            ""
        }
    ));
    let hog_setup = Hog {
        plan: HogPlan::fixed(w, setup.usable),
        hold: setup.hold,
        limit: hog_limit(w, setup.hold),
    };

    // The daemon and the probe; the hog is counted as a reaped child. The
    // engine workers, idle throughout and gone once unloaded, count as
    // others'.
    let ours = [daemon.pid(), probe_child.pid()];
    let cpu_before = CpuSnapshot::take_of(&ours);
    let psi_before = probe.snapshot()?.psi;
    let swap_before = SwapCounts::read();
    let started = Instant::now();
    let mut hog = Helper::start(&["--as-hog".into(), hog_setup.to_arg()])?;

    let (mut reached_at, mut summary) = (None, None);
    // The idle neighbour is asked to touch its pages halfway through the
    // hog's hold, while memory is shortest.
    let mut idle_asked = false;
    let (mut top_level, mut held_least) = (PressureLevel::Normal, held(&before));
    let mut footprint_least = d;
    let hog_deadline = hog_setup.limit + Duration::from_secs(30);
    let mut next_sample = Instant::now();
    loop {
        // The hog's news as it comes; otherwise wait for the next sample,
        // or for halfway through the hold.
        let halfway_at = reached_at.map(|at| started + at + setup.hold / 2);
        let wake = match halfway_at.filter(|_| !idle_asked) {
            Some(halfway) => next_sample.min(halfway),
            None => next_sample,
        };
        let mut lines = Vec::new();
        match hog
            .lines
            .recv_timeout(wake.saturating_duration_since(Instant::now()))
        {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Its output closed: it is exiting.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(50))
            }
        }
        lines.extend(hog.lines.try_iter());
        for line in lines {
            match line.parse::<HogNews>() {
                Ok(HogNews::Reached { .. }) => reached_at = Some(started.elapsed()),
                Ok(HogNews::Done(s)) => summary = Some(s),
                Ok(news @ HogNews::Blocked { .. }) => {
                    reached_at = Some(started.elapsed());
                    progress(&format!(
                        "{news}: the hog stopped short of {} (its floor: available memory plus \
                         free swap)",
                        Bytes(w)
                    ));
                }
                Ok(news) => progress(&format!("{news}")),
                Err(_) => {}
            }
        }
        let halfway = halfway_at.is_some_and(|at| Instant::now() >= at);
        if !idle_asked && (halfway || summary.is_some()) {
            idle_asked = true;
            if let Some(idle) = idle.as_mut() {
                ask_to_touch(idle)?;
            }
        }
        if summary.is_some() && hog.child.try_wait()?.is_some() {
            break;
        }
        ensure!(
            started.elapsed() < hog_deadline,
            "the hog ran past its time limit"
        );
        if Instant::now() < next_sample {
            continue;
        }
        next_sample = Instant::now() + SAMPLE_EVERY;
        let now = status(&base);
        if let Some(s) = &now {
            held_least = held_least.min(held(s));
            footprint_least = footprint_least.min(footprint(s));
        }
        let level = match mode {
            Mode::Governor => now.map(|s| {
                s["pressure"]["os_level"]
                    .as_str()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(PressureLevel::Normal)
            }),
            Mode::Ignore => probe.snapshot().ok().map(|s| s.pressure),
        };
        top_level = top_level.max(level.unwrap_or(PressureLevel::Normal));
    }
    let window = started.elapsed();
    let hog_status = hog.child.wait()?;
    ensure!(hog_status.success(), "the hog failed: {hog_status}");
    let psi_after = probe.snapshot()?.psi;
    let swap_after = SwapCounts::read();
    let models_after = status(&base).map_or(0, |s| models_loaded(&s));
    let cpu_after = CpuSnapshot::take_of(&ours);

    // The probe ends when its stdin closes.
    let mut probe_child = probe_child;
    drop(probe_child.child.stdin.take());
    let result = loop {
        match probe_child.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                if let Ok(r) = line.parse::<ProbeResult>() {
                    break r;
                }
            }
            Err(e) => bail!("the probe gave no result ({e})"),
        }
    };
    let idle_touch_us = match idle.as_ref() {
        Some(idle) => idle_touched(idle)?,
        None => 0,
    };
    drop(idle);
    daemon.stop();

    let summary = summary.expect("the loop ends on the hog's summary");
    let total_ms = |psi: Option<locara_platform::Psi>, full: bool| -> f64 {
        psi.map_or(0.0, |p| {
            let a = if full {
                p.full.map_or(0, |f| f.total_us)
            } else {
                p.some.total_us
            };
            a as f64 / 1000.0
        })
    };
    let (swapped_in, swapped_out) = match (swap_before, swap_after) {
        (Some(a), Some(b)) => a.bytes_until(&b, setup.page_size),
        _ => (0, 0),
    };
    let run = Run {
        mode,
        probe: result,
        available_at_calm: a0,
        daemon_footprint: d,
        hog_wants: w,
        swapped_out,
        swapped_in,
        psi_some_ms: total_ms(psi_after, false) - total_ms(psi_before, false),
        psi_full_ms: total_ms(psi_after, true) - total_ms(psi_before, true),
        window_s: window.as_secs_f64(),
        hog_reached: summary.reached,
        hog_reach_s: reached_at.unwrap_or(window).as_secs_f64(),
        hog_peak: summary.peak,
        hog_stopped_short: summary.blocked,
        hog_step_p50_us: summary.step_p50_us,
        hog_step_max_us: summary.step_max_us,
        idle_touch_us,
        lowest_available: summary.lowest_available,
        top_level,
        held_before: held(&before),
        held_least,
        footprint_least,
        models_after,
    };
    progress(&format!(
        "{}: p99 lateness {:.2} ms, idle neighbour's touch {:.0} ms, PSI some {:.0} ms, \
         swapped out {}, hog steps p50 {:.0} ms max {:.0} ms, level {}, daemon footprint {} -> {}",
        mode.name(),
        run.probe.late_p99_us as f64 / 1000.0,
        run.idle_touch_us as f64 / 1000.0,
        run.psi_some_ms,
        Bytes(run.swapped_out),
        run.hog_step_p50_us as f64 / 1000.0,
        run.hog_step_max_us as f64 / 1000.0,
        run.top_level,
        Bytes(run.daemon_footprint),
        Bytes(run.footprint_least)
    ));
    let share = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(a.others_share(&b)),
        _ => None,
    };
    Ok((run, share))
}
