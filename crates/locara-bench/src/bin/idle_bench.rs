//! `locara-idle-bench`: what a loaded, idle model still holds after the
//! pressure ladder's warn rung, against what it held loaded; and what the
//! warn costs the conversation's next turn.
//!
//! # What it measures
//!
//! One `locara serve` of its own (the `locara` binary next to this one)
//! holds the models (SmolLM2 and Gemma 3 270M by default) at its defaults,
//! except three settings that make the warn rung the thing measured:
//! `pressure_idle_grace` is long (the models are not unloaded at a warn, so
//! the rung's K/V steps act alone: spill cached conversations to disk,
//! drop the RAM tier, free idle pools and set their models aside),
//! `pressure_quiet_period` is short (the level is back at normal a moment
//! after the simulation ends), and `keep_alive` is long (no idle unload
//! during the run).
//!
//! Each repetition, for each model:
//!
//! 1. **loaded**: turn 1 of a conversation ([`chat`]'s first turn, greedy);
//!    once its worker is idle, its footprint and mapped weights are read
//!    from the OS (`locara_platform::process_footprint`: Linux
//!    `Anonymous + Swap`, macOS `phys_footprint`);
//! 2. **after warn**: `POST /locara/v1/pressure/simulate {"level": "warn"}`;
//!    once the status shows the model's pool at zero cells (or after
//!    [`SHRINK_DEADLINE`]), the same worker's footprint again, and a check
//!    that it is the same process (the model was not unloaded: its worker
//!    freed the pool and set the llama.cpp model aside, to load it again
//!    from the same file at the next request). The figure is after warn /
//!    loaded (the issue's goal: at most 0.10);
//! 3. **next turn**: the simulation ends (`normal`); the conversation's
//!    turn 2 is timed to its first token (the model loads again, and its
//!    K/V comes back from the disk tier into a pool made again) against turn 2 of a second conversation
//!    on the same model that saw no warn. The two conversations alternate
//!    which goes first from rep to rep.
//!
//! # Example
//!
//! ```text
//! cargo build --release -p locara -p locara-bench
//! target/release/locara-idle-bench --reps 3
//! ```
//!
//! Exit status: 0 when every model's ratio meets the goal, 2 when one does
//! not, 1 on an error.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use locara_bench::chat;
use locara_bench::dirs::{data_dir, WorkDir};
use locara_bench::http::{self, BaseUrl, StreamResult};
use locara_bench::locara_server::Locara;
use locara_bench::progress;
use locara_bench::scenario::messages_body;
use locara_bench::stats::Summary;
use locara_platform::ProcessFootprint;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The goal: an idle model's footprint after warn, at most this share of
/// its footprint loaded.
const GOAL: f64 = 0.10;
/// Exit status when the run worked but a ratio is above the goal.
const EXIT_ABOVE_GOAL: u8 = 2;

/// How long one stream may take, the wait for its first token included.
const STREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a status or simulation request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to start listening.
const SERVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the warn rung may take to shrink an idle model's pool.
const SHRINK_DEADLINE: Duration = Duration::from_secs(30);
/// How long the level may take to come back to normal after the
/// simulation ends (the quiet period is [`QUIET_PERIOD`]).
const NORMAL_DEADLINE: Duration = Duration::from_secs(30);
/// The daemon's quiet period in this benchmark.
const QUIET_PERIOD: &str = "2s";
/// How long a finished answer's worker may take to show no sequence busy.
const IDLE_DEADLINE: Duration = Duration::from_secs(10);
/// Settling time after the pool is gone, before the footprint is read: the
/// worker gives its freed heap back to the OS after the context is dropped.
const SETTLE: Duration = Duration::from_millis(500);

/// What a loaded, idle model holds after the warn rung, against loaded.
#[derive(Parser)]
#[command(name = "locara-idle-bench", version)]
struct Args {
    /// Model files to measure, each given once (default: the data
    /// directory's smollm2:135m and gemma3:270m).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// The `locara` binary (default: the one next to this program).
    #[arg(long)]
    locara: Option<PathBuf>,
    /// The daemon's `threads` (default: its own, the performance cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Repetitions for each model.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Keep the working directory (the daemon's log and data directory).
    #[arg(long)]
    keep_work: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ABOVE_GOAL),
        Err(e) => {
            progress(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// One model under test.
struct Model {
    path: PathBuf,
    /// Its name in the daemon's store.
    name: String,
    /// The model's own memory besides its pool, as `locara plan --json`
    /// estimates it: repacked weights and overhead (vocabulary, merges,
    /// runtime), bytes.
    repacked: Option<u64>,
    overhead: Option<u64>,
}

/// One repetition's figures for one model.
#[derive(Debug, Clone, Copy)]
struct Rep {
    loaded: ProcessFootprint,
    after_warn: ProcessFootprint,
    /// Milliseconds from the simulated warn to the pool at zero cells.
    shrink_ms: f64,
    /// Turn 2's time to first token after the warn, and without one, ms.
    next_after_warn_ms: f64,
    next_plain_ms: f64,
}

fn run(args: Args) -> Result<bool> {
    ensure!(args.reps >= 1, "--reps must be at least 1");
    let mut models = models(args.models)?;
    let locara = Locara::locate(args.locara)?;
    progress(&format!("locara: {}", locara.describe()));
    let work = WorkDir::create(
        "locara-idle-bench",
        "the daemon's log and data",
        args.keep_work,
    )?;
    let mut home = None;
    for m in &mut models {
        let h = locara.prepare_home(&work.path, &m.path, &m.name)?;
        (m.repacked, m.overhead) = model_own_memory(&locara.path, &h, &m.name)?;
        home = Some(h);
    }
    let home = home.context("no model to measure")?;
    let mut config = format!(
        "# Written by locara-idle-bench.\nkeep_alive = \"60m\"\npressure_idle_grace = \"60m\"\n\
         pressure_quiet_period = \"{QUIET_PERIOD}\"\n"
    );
    if let Some(t) = args.threads {
        config.push_str(&format!("threads = {t}\n"));
    }
    let server = locara.serve(&home, &work.path, &config, SERVE_DEADLINE)?;
    let base = &server.base;

    let mut conversation = 0;
    let mut results = Vec::new();
    for m in &models {
        let mut reps = Vec::new();
        for rep in 0..args.reps {
            let warned = conversation + 1;
            let plain = conversation + 2;
            conversation += 2;
            // Which conversation goes first alternates from rep to rep.
            let (r, plain_ms) = if rep % 2 == 0 {
                let r = measure_warn(base, &m.name, warned)?;
                (r, plain_next_turn(base, &m.name, plain)?)
            } else {
                let plain_ms = plain_next_turn(base, &m.name, plain)?;
                (measure_warn(base, &m.name, warned)?, plain_ms)
            };
            let r = Rep {
                next_plain_ms: plain_ms,
                ..r
            };
            progress(&format!(
                "{} rep {}/{}: footprint loaded {:.1} MiB, after warn {:.1} MiB ({:.3}); resident file pages {:.1} -> {:.1} MiB; shrink {:.0} ms; next turn's first token {:.0} ms after warn, {:.0} ms without",
                m.name,
                rep + 1,
                args.reps,
                mib(r.loaded.footprint),
                mib(r.after_warn.footprint),
                ratio(&r),
                mib(r.loaded.mapped_weights),
                mib(r.after_warn.mapped_weights),
                r.shrink_ms,
                r.next_after_warn_ms,
                r.next_plain_ms,
            ));
            reps.push(r);
        }
        results.push((m, reps));
    }
    drop(server);
    report(&results, &locara.describe())
}

/// The models given, or the data directory's two test models, each with a
/// store name of its own.
fn models(given: Vec<PathBuf>) -> Result<Vec<Model>> {
    let paths = if given.is_empty() {
        let models = data_dir()?.join("models");
        vec![
            models.join("smollm2+135m").join("model.gguf"),
            models.join("gemma3+270m").join("model.gguf"),
        ]
    } else {
        given
    };
    paths
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            ensure!(
                path.is_file(),
                "no model at {}: pass --model or `locara pull` it",
                path.display()
            );
            Ok(Model {
                path,
                name: format!("idle-{}:1", i + 1),
                repacked: None,
                overhead: None,
            })
        })
        .collect()
}

/// The estimate's repacked weights and overhead for `model`, from
/// `locara plan MODEL --json` on the data directory `home`.
fn model_own_memory(locara: &Path, home: &Path, model: &str) -> Result<(Option<u64>, Option<u64>)> {
    let out = Command::new(locara)
        .args(["plan", model, "--json"])
        .env("LOCARA_HOME", home)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} plan", locara.display()))?;
    // plan exits 1 when the model does not fit: its JSON is still printed.
    let plan: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`locara plan {model} --json` printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let field = |name: &str| {
        plan.pointer(&format!("/estimate/{name}"))
            .and_then(Value::as_u64)
    };
    Ok((field("repacked_weights"), field("overhead")))
}

/// Turn 1 of `conversation`, its footprint loaded, a simulated warn, the
/// footprint after it, then the warn's end and turn 2 timed.
fn measure_warn(base: &BaseUrl, model: &str, conversation: u32) -> Result<Rep> {
    turn(base, model, conversation, 0)?;
    let pid = idle_worker(base, model)?;
    let loaded = footprint(pid)?;
    simulate(base, "warn")?;
    let started = Instant::now();
    loop {
        let m = model_status(base, model)?;
        let cells = m.pointer("/pool/cells").and_then(Value::as_u64);
        if cells == Some(0) {
            break;
        }
        if started.elapsed() > SHRINK_DEADLINE {
            simulate(base, "normal")?;
            bail!(
                "{model}'s pool still has {} cells {} s after a simulated warn: the warn rung did not shrink it",
                cells.map_or("?".into(), |c| c.to_string()),
                SHRINK_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let shrink_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(SETTLE);
    let after_pid = model_status(base, model)?
        .get("pid")
        .and_then(Value::as_u64);
    ensure!(
        after_pid == Some(u64::from(pid)),
        "{model}'s worker changed from process {pid} to {after_pid:?} during the warn: it was unloaded, not shrunk"
    );
    let after_warn = footprint(pid)?;
    simulate(base, "normal")?;
    wait_normal(base)?;
    let next = turn(base, model, conversation, 1)?;
    Ok(Rep {
        loaded,
        after_warn,
        shrink_ms,
        next_after_warn_ms: next.ttft() * 1000.0,
        next_plain_ms: f64::NAN,
    })
}

/// Turns 1 and 2 of `conversation` with no warn between them: turn 2's
/// time to first token, ms.
fn plain_next_turn(base: &BaseUrl, model: &str, conversation: u32) -> Result<f64> {
    turn(base, model, conversation, 0)?;
    idle_worker(base, model)?;
    Ok(turn(base, model, conversation, 1)?.ttft() * 1000.0)
}

/// Turn `turn` (0-based) of `conversation`, streamed and greedy.
fn turn(base: &BaseUrl, model: &str, conversation: u32, turn: usize) -> Result<StreamResult> {
    let body = messages_body(
        model,
        chat::messages(conversation, turn),
        chat::MAX_TOKENS,
        &[],
    );
    http::stream_chat(base, &body, STREAM_TIMEOUT)
        .with_context(|| format!("turn {} of a conversation on {model}", turn + 1))
}

fn simulate(base: &BaseUrl, level: &str) -> Result<()> {
    let body = if level == "normal" {
        json!({"level": level})
    } else {
        // Long enough for the measurement; ended by hand.
        json!({"level": level, "for": "5m"})
    };
    let (status, text) =
        http::post_json(base, "/locara/v1/pressure/simulate", &body, REQUEST_TIMEOUT)?;
    ensure!(
        status == 200,
        "simulating {level} answered {status}: {}",
        text.trim()
    );
    Ok(())
}

/// Waits until the status's pressure level is normal again.
fn wait_normal(base: &BaseUrl) -> Result<()> {
    let started = Instant::now();
    loop {
        let status = status(base)?;
        let level = status.pointer("/pressure/level").and_then(Value::as_str);
        if level == Some("normal") {
            return Ok(());
        }
        ensure!(
            started.elapsed() < NORMAL_DEADLINE,
            "the pressure level is {level:?} {} s after the simulation ended",
            NORMAL_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(base: &BaseUrl) -> Result<Value> {
    let (code, body) = http::get(base, "/locara/v1/status", REQUEST_TIMEOUT)?;
    ensure!(
        code == 200,
        "/locara/v1/status answered {code}: {}",
        body.trim()
    );
    serde_json::from_str(&body).context("/locara/v1/status is not JSON")
}

/// The model's entry in the status.
fn model_status(base: &BaseUrl, model: &str) -> Result<Value> {
    let status = status(base)?;
    status
        .get("models")
        .and_then(Value::as_array)
        .and_then(|models| {
            models
                .iter()
                .find(|m| m.get("name").and_then(Value::as_str) == Some(model))
        })
        .cloned()
        .with_context(|| format!("/locara/v1/status shows no model {model}"))
}

/// The model's worker pid once none of its sequences is busy.
fn idle_worker(base: &BaseUrl, model: &str) -> Result<u32> {
    let started = Instant::now();
    loop {
        let m = model_status(base, model)?;
        let busy = m.get("sequences_busy").and_then(Value::as_u64).unwrap_or(0);
        if busy == 0 {
            let pid = m
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .with_context(|| format!("{model} has no worker pid in the status"))?;
            return Ok(pid);
        }
        ensure!(
            started.elapsed() < IDLE_DEADLINE,
            "{model} still has {busy} busy sequences {} s after its answer ended",
            IDLE_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn footprint(pid: u32) -> Result<ProcessFootprint> {
    locara_platform::process_footprint(pid)
        .with_context(|| format!("reading the footprint of process {pid}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ratio(r: &Rep) -> f64 {
    r.after_warn.footprint as f64 / r.loaded.footprint.max(1) as f64
}

/// Prints the table; true when every model's median ratio meets the goal.
fn report(results: &[(&Model, Vec<Rep>)], locara: &str) -> Result<bool> {
    println!("locara-idle-bench: footprint of an idle model's worker after the warn rung (its worker stays: idle grace 60m)");
    println!("  locara: {locara}");
    let mut pass = true;
    for (m, reps) in results {
        let col = |f: &dyn Fn(&Rep) -> f64| {
            Summary::of(&reps.iter().map(f).collect::<Vec<_>>())
                .context("no repetition gave figures")
        };
        let loaded = col(&|r| mib(r.loaded.footprint))?;
        let after = col(&|r| mib(r.after_warn.footprint))?;
        let ratio = col(&ratio)?;
        let mapped_loaded = col(&|r| mib(r.loaded.mapped_weights))?;
        let mapped_after = col(&|r| mib(r.after_warn.mapped_weights))?;
        let shrink = col(&|r| r.shrink_ms)?;
        let next_warn = col(&|r| r.next_after_warn_ms)?;
        let next_plain = col(&|r| r.next_plain_ms)?;
        let ok = ratio.median <= GOAL;
        pass &= ok;
        println!(
            "  {} ({}), {} reps, medians:",
            m.name,
            m.path.display(),
            reps.len()
        );
        println!(
            "    footprint loaded        {:>8.1} MiB   after warn {:>8.1} MiB",
            loaded.median, after.median
        );
        println!(
            "    after warn / loaded     {:>8.3}       (min {:.3}, max {:.3}; goal <= {GOAL}) {}",
            ratio.median,
            ratio.min,
            ratio.max,
            if ok { "ok" } else { "ABOVE" }
        );
        println!(
            "    resident file pages     {:>8.1} MiB   after warn {:>8.1} MiB (loaded: the mapped weights; after: the program's own)",
            mapped_loaded.median, mapped_after.median
        );
        let estimated =
            |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.1} MiB", mib(b)));
        println!(
            "    model's own (estimate)  repacked weights {}, overhead (vocabulary, merges, runtime) {}: set aside with the model",
            estimated(m.repacked),
            estimated(m.overhead)
        );
        println!("    warn to pool gone       {:>8.0} ms", shrink.median);
        println!(
            "    next turn, first token  {:>8.0} ms after the warn, {:.0} ms without ({:.2}x)",
            next_warn.median,
            next_plain.median,
            next_warn.median / next_plain.median
        );
    }
    Ok(pass)
}
