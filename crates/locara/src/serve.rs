//! `locara serve` and the commands that talk to a running daemon:
//! `locara ps`, `locara load`, `locara stop`.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use clap::Args;
use locara_core::Bytes;
use locara_daemon::apps::{admin_token, AppRegistry};
use locara_daemon::config::{OsPressure, RawServeConfig, ServeConfig};
use locara_daemon::host::ProcessEngine;
use locara_daemon::metrics::Metrics;
use locara_daemon::runtime::{ModelStatus, Runtime, Settings, Status, TokioClock};
use locara_daemon::server::{self, AppState, Auth, DaemonInfo, DAEMON_FILE, HOLDS_FILE};
use locara_platform::fs::{write_atomic, Access};
use locara_platform::{HeldMapped, SystemProbe};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
#[command(
    after_help = "Settings come from the config file, then the environment (LOCARA_HOST, \
LOCARA_PORT, LOCARA_BUDGET, LOCARA_KEEP_ALIVE, LOCARA_PARALLEL, LOCARA_CONTEXT, LOCARA_KV_TYPE), \
then these flags; later ones win. Config file keys: host, port, allow_non_loopback, budget, \
keep_alive, parallel, queue, context, kv_type, kv_ram_cache, kv_disk_cache, threads, shutdown_grace, \
max_body_bytes, tokenless, allowed_origins, pressure, pressure_idle_grace, pressure_quiet_period, \
pressure_max_tokens, pressure_remaining_tokens, power.\n\n\
The first line on stdout is `listening on http://ADDRESS`; the address is also written to \
daemon.json in the data directory, where `locara ps`, `load` and `stop` find it.\n\n\
Examples:\n  locara serve\n  locara serve --port 0 --budget 4GiB\n  locara serve --config ~/.config/locara/serve.toml"
)]
pub struct ServeArgs {
    /// Port to listen on (default 11480; 0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Allow listening on an address other than loopback: anyone who can
    /// reach it can use the API.
    #[arg(long)]
    allow_non_loopback: bool,
    /// A TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bytes the runtime may hold, e.g. 6GiB (default: the machine's budget,
    /// see `locara profile`).
    #[arg(long, value_name = "SIZE")]
    budget: Option<String>,
    /// How long an idle model stays loaded: 3m (default), 0 (unload when
    /// done), -1 (keep loaded).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    keep_alive: Option<String>,
    /// Sequences per model that generate at once (default 4).
    #[arg(long, value_name = "N")]
    parallel: Option<u32>,
    /// Requests per model that may wait beyond those (default 16); more get 429.
    #[arg(long, value_name = "N")]
    queue: Option<u32>,
    /// Context per sequence in tokens, unless a request names one (default 8192).
    #[arg(long, value_name = "TOKENS")]
    context: Option<u32>,
    /// K/V cache type: f16, q8_0 or q4_0 (default: f16 on the CPU, where
    /// llama.cpp's attention is fastest with it; q8_0 with a GPU).
    #[arg(long, value_name = "TYPE")]
    kv: Option<String>,
    /// CPU threads per worker (default: the performance cores).
    #[arg(long, value_name = "N")]
    threads: Option<u32>,
    /// Memory pressure from the OS: watch (default: the pressure ladder
    /// unloads and restricts when the OS is short of memory) or ignore (the
    /// OS is not watched; only `locara pressure simulate` moves the ladder).
    #[arg(long, value_name = "MODE", value_parser = ["watch", "ignore"])]
    pressure: Option<String>,
    /// Power and thermal state: watch (default: on battery, in Low Power
    /// Mode or when hot the runtime uses less) or ignore (only `locara power
    /// simulate` moves the power policy).
    #[arg(long, value_name = "MODE", value_parser = ["watch", "ignore"])]
    power: Option<String>,
    /// Pass llama.cpp's own log through to stderr.
    #[arg(long)]
    engine_log: bool,
    /// The log's format on stderr: human (lines) or json (one object per
    /// line, for log collectors). LOCARA_LOG sets the level (default info).
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

impl ServeArgs {
    pub fn json_log(&self) -> bool {
        self.log_format == "json"
    }
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    locara_platform::check_supported()?;
    let base = Config::load(args.engine_log)?;
    crate::service::rotate_log_at_start(&base.home);
    let mut sources = Vec::new();
    if let Some(path) = &args.config {
        sources.push(RawServeConfig::from_file(path)?);
    }
    sources.push(RawServeConfig::from_env(|k| std::env::var(k).ok())?);
    sources.push(RawServeConfig {
        host: args.host,
        port: args.port,
        allow_non_loopback: args.allow_non_loopback.then_some(true),
        budget: args.budget,
        keep_alive: args.keep_alive,
        parallel: args.parallel,
        queue: args.queue,
        context: args.context,
        kv_type: args.kv,
        threads: args.threads,
        pressure: args.pressure,
        power: args.power,
        ..Default::default()
    });
    let config = ServeConfig::build(&sources)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("locara-serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = async {
            server::shutdown_signal().await;
            tracing::info!("stopping: new requests are refused, in-flight ones finish");
        };
        run_daemon(&base, config, None, shutdown, |url| {
            println!("listening on {url}");
            let _ = std::io::stdout().flush();
        })
        .await?;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a daemon until `shutdown` resolves: the governor, the OS pressure
/// watch and the HTTP API, with its address in `daemon.json` while it runs
/// (so `locara ps`, `load`, `stop` and `pressure simulate` find it).
/// `listening` is told the address once requests can be made. `private_to`
/// names the command that runs it for itself alone (see
/// [`DaemonInfo::private_to`]).
async fn run_daemon(
    base: &Config,
    config: ServeConfig,
    private_to: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(&str),
) -> Result<()> {
    let (budget, basis) = match config.budget {
        Some(b) => (b, "configured".to_string()),
        None => {
            let b = crate::plan::machine_budget()?;
            (b.bytes, b.basis)
        }
    };
    let store = base.store()?;
    let held_mapped = HeldMapped::default();
    let settings = Settings {
        config: config.clone(),
        budget,
        store: base.store()?,
        engine: Arc::new(ProcessEngine(base.worker.clone())),
        clock: Arc::new(TokioClock),
        threads: config
            .threads
            .unwrap_or_else(locara_platform::performance_cores),
        backend: locara_platform::estimate_backend(),
        probe: Arc::new(SystemProbe::default().with_held_mapped(held_mapped.clone())),
        ladder: config.ladder,
        holds_file: Some(base.home.join(HOLDS_FILE)),
        held_mapped: held_mapped.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening on an address that is not loopback: anyone who can reach it can use the API"
        );
    }
    // The admin token exists before anyone is told where to connect.
    let auth = Auth {
        apps: AppRegistry::open(&base.home)?,
        admin: admin_token(&base.home)?,
        tokenless: config.tokenless,
    };
    if config.tokenless {
        tracing::warn!("tokenless: requests need no token (single-user set-up)");
    }
    let info_path = base.home.join(DAEMON_FILE);
    write_daemon_info(&info_path, &url, private_to)?;
    let runtime = Runtime::start(settings, Arc::new(Metrics::new()));
    tracing::info!(
        budget_bytes = budget,
        "budget {} ({basis}); {} sequences per model, context {}, K/V {}, keep_alive {}",
        Bytes(budget),
        config.parallel,
        config.context,
        config.kv_type.as_str(),
        config.keep_alive
    );
    if config.watch_power {
        watch_power(runtime.clone());
    } else {
        tracing::warn!(
            "power = ignore: battery, Low Power Mode and heat are not followed; only `locara power simulate` moves the power policy"
        );
    }
    match config.os_pressure {
        OsPressure::Watch => watch_pressure(runtime.clone(), held_mapped),
        OsPressure::Ignore => tracing::warn!(
            "pressure = ignore: the OS's memory pressure is not watched; only `locara pressure simulate` moves the ladder"
        ),
    }
    let state = AppState::new(
        runtime,
        store,
        base.catalog.clone(),
        addr,
        config.allowed_origins.clone(),
        auth,
    );
    listening(&url);
    let served = server::serve(
        listener,
        state,
        usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
        config.shutdown_grace,
        shutdown,
    )
    .await;
    // Only our own file: another daemon may have started since.
    if read_daemon_info(&info_path).is_some_and(|i| i.pid == std::process::id() && i.url == url) {
        let _ = std::fs::remove_file(&info_path);
    }
    served.context("serving")
}

/// A daemon of this process's own, for a command (`locara run`) that finds
/// none running: the same governor, budget, admission and pressure ladder as
/// `locara serve`, on an ephemeral loopback port, on a thread of its own.
/// Dropping it stops the daemon and its workers.
pub struct OwnDaemon {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl OwnDaemon {
    /// Starts it and returns once it takes requests. `config` is built like
    /// `locara serve`'s (the caller picks the port, normally 0).
    pub fn start(base: Config, config: ServeConfig) -> Result<OwnDaemon> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("locara-daemon".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .thread_name("locara-daemon")
                    .build()
                    .context("starting the async runtime")?;
                runtime.block_on(run_daemon(
                    &base,
                    config,
                    Some("run"),
                    async {
                        let _ = stop_rx.await;
                    },
                    |url| {
                        let _ = ready_tx.send(url.to_string());
                    },
                ))
            })
            .context("starting the daemon's thread")?;
        match ready_rx.recv() {
            Ok(url) => Ok(OwnDaemon {
                url,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            // It ended before it listened: its error says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e.context("starting Locara's governor")),
                Ok(Ok(())) => bail!("the daemon stopped before it took requests"),
                Err(_) => bail!("the daemon's thread panicked while starting"),
            },
        }
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if let Ok(Err(e)) = thread.join() {
                tracing::error!("the daemon ended with an error: {e:#}");
            }
        }
    }
}

/// Feeds the OS's pressure reports to the governor from a thread of their
/// own (the platform's watch is a blocking channel). `held_mapped` is where
/// the governor publishes the loaded models' mapped weights.
fn watch_pressure(runtime: Runtime, held_mapped: HeldMapped) {
    // The OS level as the readings say it, with no hysteresis of its own:
    // the ladder keeps the one quiet period (`pressure_quiet_period`). With
    // both holding 30 s, loads stayed refused about 60 s after a real hog
    // had exited.
    let raw = locara_platform::PressureConfig {
        quiet_period_s: 0,
        ..Default::default()
    };
    let probe = match SystemProbe::new(raw) {
        Ok(p) => p.with_held_mapped(held_mapped),
        Err(e) => {
            tracing::warn!("no OS pressure reports ({e}); `locara pressure simulate` still works");
            return;
        }
    };
    let watch = match locara_platform::PressureSource::watch(&probe) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("no OS pressure reports ({e}); `locara pressure simulate` still works");
            return;
        }
    };
    tracing::info!(method = %watch.method(), "watching memory pressure");
    let initial = watch.initial_level();
    let _ = std::thread::Builder::new()
        .name("locara-pressure".into())
        .spawn(move || {
            if initial != locara_platform::PressureLevel::Normal {
                runtime.report_pressure(initial, "level at start".into());
            }
            while let Some(ev) = watch.recv() {
                runtime.report_pressure(ev.level, ev.reason);
            }
        });
}

/// How often the machine's power and thermal state is read: a change of
/// power source or of heat is acted on within this time. Reading is cheap
/// on Linux (a few sysfs files); on macOS it runs `pmset` once.
const POWER_POLL: Duration = Duration::from_secs(10);

/// Polls the machine's power and thermal state from a thread of its own
/// and passes it to the governor, which acts on changes only. Ends when
/// the governor does.
fn watch_power(runtime: Runtime) {
    let first = locara_platform::HardwareProbe::power_state(&SystemProbe::default());
    tracing::info!(
        thermal = %first.thermal,
        on_battery = ?first.on_battery,
        low_power_mode = ?first.low_power_mode,
        "following the power state (unknown parts count as mains power and cool)"
    );
    let _ = std::thread::Builder::new()
        .name("locara-power".into())
        .spawn(move || {
            let probe = SystemProbe::default();
            let mut state = first;
            while runtime.report_power(state) {
                std::thread::sleep(POWER_POLL);
                state = locara_platform::HardwareProbe::power_state(&probe);
            }
        });
}

fn write_daemon_info(path: &Path, url: &str, private_to: Option<&str>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let info = DaemonInfo {
        url: url.to_string(),
        pid: std::process::id(),
        private_to: private_to.map(str::to_string),
    };
    write_atomic(path, &serde_json::to_vec_pretty(&info)?, Access::Default)?;
    Ok(())
}

/// The running daemon's address: `LOCARA_URL`, else `daemon.json` in the
/// data directory when its process is alive and takes connections (a file
/// left by a daemon that was killed is ignored). `shared` leaves out a
/// daemon that a `locara run` keeps for itself.
pub fn daemon_url(home: &Path, shared: bool) -> Option<String> {
    if let Ok(url) = std::env::var("LOCARA_URL") {
        if !url.is_empty() {
            return Some(url.trim_end_matches('/').to_string());
        }
    }
    let info = read_daemon_info(&home.join(DAEMON_FILE))?;
    if shared && info.private_to.is_some() {
        return None;
    }
    let addr = info.url.strip_prefix("http://")?.parse().ok()?;
    let listening = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok();
    (alive(info.pid) && listening).then_some(info.url)
}

fn read_daemon_info(path: &Path) -> Option<DaemonInfo> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        Path::new(&format!("/proc/{pid}")).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        true
    }
}

/// The running daemon's address and the admin token's header value.
pub(crate) fn require_daemon() -> Result<(String, String)> {
    let config = Config::load(false)?;
    let url = daemon_url(&config.home, false).context(
        "no Locara daemon is running (start one with `locara serve`; LOCARA_URL names another)",
    )?;
    Ok((url, admin_header(&config.home)?))
}

/// `Bearer <admin token>`: `LOCARA_TOKEN` when set, else the admin token in
/// the data directory.
pub fn admin_header(home: &Path) -> Result<String> {
    if let Ok(t) = std::env::var("LOCARA_TOKEN") {
        if !t.is_empty() {
            return Ok(format!("Bearer {t}"));
        }
    }
    let token = admin_token(home).context("reading the admin token")?;
    Ok(format!("Bearer {}", token.as_str()))
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .build()
}

/// Reads an error answer's message (OpenAI's shape).
pub(crate) fn api_error(e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, response) => {
            let body: serde_json::Value = response.into_json().unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            anyhow::anyhow!("the daemon answered {code}: {message}")
        }
        other => anyhow::anyhow!("talking to the daemon: {other}"),
    }
}

pub(crate) fn status(url: &str, auth: &str) -> Result<Status> {
    agent()
        .get(&format!("{url}/locara/v1/status"))
        .set("Authorization", auth)
        .call()
        .map_err(api_error)?
        .into_json()
        .context("reading the daemon's status")
}

/// What the daemon at `url` says of `model`; `None` when it is not loaded.
pub fn model_status(url: &str, auth: &str, model: &str) -> Result<Option<ModelStatus>> {
    Ok(status(url, auth)?
        .models
        .into_iter()
        .find(|m| m.name == model))
}

pub fn ps(json: bool) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    let status = status(&url, &auth)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = locara_platform::time::unix_now_ms();
    println!(
        "{:<20} {:<8} {:>7} {:>10} {:>10} {:>10} {:>6} {:<5} {:>13} {:>6} {:>8} {:>10}",
        "NAME",
        "STATE",
        "THREADS",
        "FOOTPRINT",
        "MAPPED",
        "ESTIMATE",
        "CTX",
        "KV",
        "POOL",
        "CACHED",
        "IDLE",
        "UNTIL"
    );
    for m in &status.models {
        let state = match m.state {
            locara_core::governor::Phase::Loading => "loading",
            locara_core::governor::Phase::Loaded if m.sequences_busy > 0 => "busy",
            locara_core::governor::Phase::Loaded => "idle",
        };
        let opt = |b: Option<u64>| b.map_or("-".to_string(), |b| Bytes(b).to_string());
        let idle = if m.sequences_busy > 0 {
            "-".to_string()
        } else {
            seconds(now.saturating_sub(m.last_used_unix_ms) / 1000)
        };
        let until = match (m.pinned, m.unload_at_unix_ms) {
            (true, _) => "pinned".to_string(),
            (false, Some(t)) => format!("in {}", seconds(t.saturating_sub(now) / 1000)),
            (false, None) => "-".to_string(),
        };
        // K/V pool: cells its sequences hold / cells allocated.
        let (pool, cached) = match &m.pool {
            Some(p) => (
                format!("{}/{}", p.used_cells, p.cells),
                if p.ram_cached_sequences > 0 {
                    format!("{}+{}", p.cached_sequences, p.ram_cached_sequences)
                } else {
                    p.cached_sequences.to_string()
                },
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        // Its share of the cores while busy; "bg" marks background work.
        let threads = match m.thread_class {
            Some(locara_core::threads::ThreadClass::Background) if m.threads > 0 => {
                format!("{} bg", m.threads)
            }
            _ if m.threads > 0 => m.threads.to_string(),
            _ => "-".to_string(),
        };
        println!(
            "{:<20} {:<8} {:>7} {:>10} {:>10} {:>10} {:>6} {:<5} {:>13} {:>6} {:>8} {:>10}",
            m.name,
            state,
            threads,
            opt(m.footprint),
            opt(m.mapped_weights),
            Bytes(m.estimate).to_string(),
            m.context,
            m.kv_type.as_str(),
            pool,
            cached,
            idle,
            until
        );
    }
    println!("THREADS: its share of the cores while busy (bg: background priority); POOL: K/V cells its sequences hold / cells allocated (it grows with the governor's leave, shrinks when idle); CACHED: finished conversations kept for reuse (in the pool + in RAM); NAME+DRAFT: a speculative pair");
    println!(
        "budget {} (effective {}), held {}",
        Bytes(status.budget),
        Bytes(status.effective_budget),
        Bytes(status.held)
    );
    for h in &status.held_unloaded {
        println!("{h}: held unloaded (locara load {h} to use it again)");
    }
    println!("{}", power_line(&status.power));
    Ok(ExitCode::SUCCESS)
}

/// The power state in force and what it changes, for `locara ps`:
/// "power: battery (on battery, thermal nominal); changes: ...".
fn power_line(p: &locara_daemon::runtime::PowerStatus) -> String {
    let known = |v: Option<bool>, yes: &str, no: &str| match v {
        Some(true) => yes.to_string(),
        Some(false) => no.to_string(),
        None => format!("{no} (unknown)"),
    };
    let state = &p.state;
    let simulated = if p.simulated.is_some() {
        ", simulated"
    } else {
        ""
    };
    format!(
        "power: {} ({}, {}, thermal {}{simulated}); changes: {}",
        p.mode,
        known(state.on_battery, "on battery", "mains"),
        known(state.low_power_mode, "Low Power Mode", "no Low Power Mode"),
        state.thermal,
        p.changes
    )
}

fn seconds(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub fn load(model: &str) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    agent()
        .post(&format!("{url}/locara/v1/models/{model}/load"))
        .set("Authorization", &auth)
        .call()
        .map_err(api_error)?;
    println!("{model} is loaded");
    Ok(ExitCode::SUCCESS)
}

pub fn stop(model: &str, hold: bool) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    let answer: serde_json::Value = agent()
        .post(&format!("{url}/locara/v1/models/{model}/unload"))
        .set("Authorization", &auth)
        .query("hold", if hold { "true" } else { "false" })
        .call()
        .map_err(api_error)?
        .into_json()
        .context("reading the daemon's answer")?;
    if answer["was_loaded"].as_bool() == Some(true) {
        println!("{model} unloaded");
    } else {
        println!("{model} was not loaded");
    }
    if hold {
        println!("{model} stays unloaded until `locara load {model}`");
    }
    if answer.is_null() {
        bail!("the daemon gave no answer");
    }
    Ok(ExitCode::SUCCESS)
}

/// `locara power simulate`: drives the daemon's power policy as the OS's
/// state would.
pub fn simulate_power(mode: &str, duration: Option<&str>) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    let mut body = serde_json::json!({ "mode": mode });
    if let Some(d) = duration {
        body["for"] = d.into();
    }
    agent()
        .post(&format!("{url}/locara/v1/power/simulate"))
        .set("Authorization", &auth)
        .send_json(body)
        .map_err(api_error)?;
    let status = status(&url, &auth)?;
    match duration {
        Some(d) => println!("simulating power state {mode} for {d}"),
        None if mode == "normal" => println!("simulation ended; the machine's power state applies"),
        None => println!("simulating power state {mode} until `locara power simulate normal`"),
    }
    println!(
        "in force: {}; changes: {}",
        status.power.mode, status.power.changes
    );
    Ok(ExitCode::SUCCESS)
}

pub fn simulate(level: &str, duration: Option<&str>) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    let mut body = serde_json::json!({ "level": level });
    if let Some(d) = duration {
        body["for"] = d.into();
    }
    agent()
        .post(&format!("{url}/locara/v1/pressure/simulate"))
        .set("Authorization", &auth)
        .send_json(body)
        .map_err(api_error)?;
    match duration {
        Some(d) => println!("simulating memory pressure {level} for {d}"),
        None if level == "normal" => println!("simulation ended; the OS's level applies"),
        None => {
            println!("simulating memory pressure {level} until `locara pressure simulate normal`")
        }
    }
    Ok(ExitCode::SUCCESS)
}
