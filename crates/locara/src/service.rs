//! `locara service install|uninstall|status`: run `locara serve` at login,
//! as a systemd user unit on Linux or a launchd LaunchAgent on macOS, and
//! the rotation of the log file the service writes.
//!
//! ```text
//! locara service install     # write the unit (or agent), enable and start it
//! locara service status      # installed? where? running?
//! locara service uninstall   # stop it and remove the file
//! ```
//!
//! The file's contents come from pure functions ([`systemd_unit`],
//! [`launchd_plist`]) tested inline on every platform; every call of
//! `systemctl` or `launchctl` goes through [`tool`], which `--no-activate`
//! (or `LOCARA_SERVICE_NO_ACTIVATE=1`) turns off, so the tests never touch
//! the machine's service manager.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use locara_core::Bytes;
use locara_platform::fs::{write_atomic, Access};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The log file in the data directory that the service's stdout and stderr
/// are appended to.
pub const LOG_FILE: &str = "serve.log";
/// Bytes past which `locara serve` rotates its log when it starts. The
/// daemon logs events (loads, evictions, pressure, worker deaths), not
/// requests, a line or two each: 10 MiB holds months of them.
const LOG_CAP: u64 = 10 << 20;
/// Rotated logs kept: `serve.log.1` (newest) to `serve.log.3`.
const LOG_KEEP: u32 = 3;

/// The systemd user unit's name.
const UNIT_NAME: &str = "locara.service";
/// The launchd job's label (also the plist's file name).
const AGENT_LABEL: &str = "dev.locara.serve";
/// The first systemd release that knows `RestartSteps=` and
/// `RestartMaxDelaySec=` (systemd 254 NEWS). Older ones log "Unknown key"
/// for them, so the unit names them only where they exist.
const SYSTEMD_RESTART_STEPS_SINCE: u32 = 254;
/// Seconds launchd waits before starting the agent again after it ends
/// (launchd's own default is 10 too; written out so it is visible). launchd
/// has no growing back-off: this is the floor between restarts.
const LAUNCHD_THROTTLE_SECONDS: i64 = 10;

#[derive(Args)]
#[command(after_help = "\
On Linux, `install` writes a systemd user unit ($XDG_CONFIG_HOME/systemd/user/locara.service, \
default ~/.config/systemd/user), enables it and starts it; on macOS a LaunchAgent \
(~/Library/LaunchAgents/dev.locara.serve.plist), loaded with launchctl. Either runs \
`<this locara binary> serve` at login with LOCARA_HOME set to the current data directory, and \
starts it again when it fails: systemd after 2s, backing off to 60s between tries on systemd 254 \
and later (older ones give up after 5 failed starts within a minute; `status` then says \
failed); launchd at most once every 10s. The unit names this binary by its absolute path: run \
`install` again after moving or updating it. Installing twice replaces the file.\n\n\
Log: the daemon's output is appended to serve.log in the data directory. Each start of \
`locara serve` whose output goes to that file rotates it when it is over 10 MiB: serve.log is \
copied to serve.log.1 (older copies move to .2 and .3; the oldest is deleted) and emptied. The \
daemon logs events (loads, evictions, pressure), not requests, so a check at each start (at \
login and at each restart) keeps the log near that size.\n\n\
--no-activate (or LOCARA_SERVICE_NO_ACTIVATE=1) writes and removes the file only and never runs \
systemctl or launchctl: for tests, packaging, or a machine without a user service manager.\n\n\
Examples:\n  locara service install\n  locara service status\n  locara service uninstall")]
pub struct ServiceArgs {
    #[command(subcommand)]
    command: ServiceCommand,
    /// Write or remove the unit (agent) file only; never run systemctl or
    /// launchctl.
    // Falsey: the variable's "1" means on, "0", "false", "no", "off" off.
    #[arg(
        long,
        global = true,
        env = "LOCARA_SERVICE_NO_ACTIVATE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    no_activate: bool,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write the unit (agent) file, replacing one already there, then enable
    /// and (re)start it.
    Install,
    /// Stop the service (best effort) and remove its file.
    Uninstall,
    /// Whether the service is installed, where, and whether it runs.
    Status,
}

pub fn service(args: ServiceArgs) -> Result<ExitCode> {
    let setup = Setup::load(!args.no_activate)?;
    match args.command {
        ServiceCommand::Install => install(&setup),
        ServiceCommand::Uninstall => uninstall(&setup),
        ServiceCommand::Status => status(&setup),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// What the service runs, all paths absolute and UTF-8 (a unit file and a
/// plist hold text).
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    /// The locara binary the service starts.
    exe: String,
    /// The data directory, passed as LOCARA_HOME so that the service and the
    /// CLI agree on it whatever the login environment holds.
    home: String,
    /// Where the daemon's stdout and stderr go.
    log: String,
}

/// Everything the commands need, read from the environment once.
struct Setup {
    spec: Spec,
    /// The unit (agent) file.
    file: PathBuf,
    /// Whether `systemctl` / `launchctl` may be run.
    activate: bool,
}

impl Setup {
    fn load(activate: bool) -> Result<Setup> {
        let home = std::path::absolute(Config::load(false)?.home)
            .context("making the data directory's path absolute")?;
        let exe = std::env::current_exe().context("locating the locara binary")?;
        let exe = std::path::absolute(exe).context("making the binary's path absolute")?;
        let user_home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .context("HOME is not set: it is needed to find the service's directory")?;
        let file = service_file(
            &user_home,
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        );
        let spec = Spec {
            exe: text(&exe, "the locara binary's path")?,
            log: text(&home.join(LOG_FILE), "the log's path")?,
            home: text(&home, "the data directory's path")?,
        };
        Ok(Setup {
            spec,
            file,
            activate,
        })
    }
}

/// The unit (agent) file's path: `$XDG_CONFIG_HOME/systemd/user` (default
/// `~/.config/systemd/user`) on Linux, `~/Library/LaunchAgents` on macOS.
fn service_file(user_home: &Path, xdg_config: Option<PathBuf>) -> PathBuf {
    if cfg!(target_os = "macos") {
        return user_home
            .join("Library/LaunchAgents")
            .join(format!("{AGENT_LABEL}.plist"));
    }
    // The XDG spec says a relative value is to be ignored.
    let config = xdg_config
        .filter(|c| c.is_absolute())
        .unwrap_or_else(|| user_home.join(".config"));
    config.join("systemd/user").join(UNIT_NAME)
}

/// A path as text for a unit or plist: UTF-8, no control characters (a
/// newline would end a unit file's line and start a key of its own).
fn text(path: &Path, what: &str) -> Result<String> {
    let Some(s) = path.to_str() else {
        bail!("{what} is not UTF-8: {}", path.display());
    };
    if s.chars().any(char::is_control) {
        bail!("{what} holds a control character: {s:?}");
    }
    Ok(s.to_string())
}

// ---------------------------------------------------------------------------
// The files.

/// The systemd user unit. `systemd_version` (from `systemctl --version`)
/// decides whether the restart delay can grow; `None` (unknown) takes the
/// keys every systemd since 240 (`Type=exec`) knows.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn systemd_unit(spec: &Spec, systemd_version: Option<u32>) -> String {
    let backoff = systemd_version.is_some_and(|v| v >= SYSTEMD_RESTART_STEPS_SINCE);
    // With a growing delay a crash loop costs one start a minute, so the
    // unit may keep trying as launchd does. Without one it would start every
    // 2s for ever; systemd's start limit stops it instead, and the unit
    // shows "failed" until the user looks.
    let (start_limit, restart_backoff) = if backoff {
        (
            "StartLimitIntervalSec=0\n",
            "RestartSteps=5\nRestartMaxDelaySec=60\n",
        )
    } else {
        ("StartLimitIntervalSec=60\nStartLimitBurst=5\n", "")
    };
    format!(
        "# Written by `locara service install`; `locara service uninstall` removes it.\n\
         [Unit]\n\
         Description=Locara local LLM runtime (locara serve)\n\
         {start_limit}\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={exe} serve\n\
         Environment={env}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         {restart_backoff}\
         StandardOutput=append:{log}\n\
         StandardError=inherit\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = systemd_quoted(&spec.exe),
        env = systemd_quoted(&format!("LOCARA_HOME={}", spec.home)),
        log = spec.log.replace('%', "%%"),
    )
}

/// One word of `ExecStart=` or `Environment=`, quoted: systemd splits
/// these at spaces, C-unescapes inside quotes, expands `%` specifiers, and
/// (in `ExecStart=`) `$` variables. A data directory with a space in it is
/// ordinary on macOS ("Application Support").
fn systemd_quoted(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The launchd agent's plist (XML). Built on every platform so that its
/// tests run on Linux too; only macOS installs it.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn launchd_plist(spec: &Spec) -> Result<Vec<u8>> {
    use plist::{Dictionary, Value};
    let mut agent = Dictionary::new();
    agent.insert("Label".into(), AGENT_LABEL.into());
    agent.insert(
        "ProgramArguments".into(),
        Value::Array(vec![spec.exe.clone().into(), "serve".into()]),
    );
    let mut env = Dictionary::new();
    env.insert("LOCARA_HOME".into(), spec.home.clone().into());
    agent.insert("EnvironmentVariables".into(), env.into());
    agent.insert("RunAtLoad".into(), true.into());
    // Start it again when it ends in failure (non-zero exit or a signal),
    // not after a clean stop (`locara serve` exits 0 on SIGTERM).
    let mut keep_alive = Dictionary::new();
    keep_alive.insert("SuccessfulExit".into(), false.into());
    agent.insert("KeepAlive".into(), keep_alive.into());
    agent.insert("ThrottleInterval".into(), LAUNCHD_THROTTLE_SECONDS.into());
    // Not Background: that would confine the daemon to the efficiency cores
    // and throttle its I/O, and the user is waiting for every token it makes.
    agent.insert("ProcessType".into(), "Interactive".into());
    agent.insert("StandardOutPath".into(), spec.log.clone().into());
    agent.insert("StandardErrorPath".into(), spec.log.clone().into());
    let mut out = Vec::new();
    Value::Dictionary(agent)
        .to_writer_xml(&mut out)
        .context("writing the launchd plist")?;
    out.push(b'\n');
    Ok(out)
}

/// The file `install` writes on this platform.
fn contents(setup: &Setup) -> Result<Vec<u8>> {
    #[cfg(target_os = "macos")]
    {
        launchd_plist(&setup.spec)
    }
    #[cfg(not(target_os = "macos"))]
    {
        let version = systemd_version(setup.activate);
        Ok(systemd_unit(&setup.spec, version).into_bytes())
    }
}

// ---------------------------------------------------------------------------
// Running systemctl and launchctl.

/// Why systemctl or launchctl was not run, for messages.
const OFF: &str = "(--no-activate or LOCARA_SERVICE_NO_ACTIVATE is set)";

/// What running an outside program gave.
enum Ran {
    /// Not run: activation is off.
    Off,
    /// It could not be started (not installed, most often).
    Missing(String),
    /// It ran.
    Done {
        ok: bool,
        stdout: String,
        stderr: String,
    },
}

impl Ran {
    /// The program's complaint, for a message.
    fn complaint(&self) -> String {
        match self {
            Ran::Off => "not run".into(),
            Ran::Missing(why) => why.clone(),
            Ran::Done { stderr, stdout, .. } => {
                let s = if stderr.trim().is_empty() {
                    stdout
                } else {
                    stderr
                };
                s.trim().to_string()
            }
        }
    }
}

/// The only place this module runs another program (`systemctl`,
/// `launchctl`, `id`): with `activate` off it runs nothing, which is what
/// `--no-activate` and the tests rely on.
fn tool(activate: bool, program: &str, args: &[&str]) -> Ran {
    if !activate {
        return Ran::Off;
    }
    match std::process::Command::new(program).args(args).output() {
        Ok(out) => Ran::Done {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ran::Missing(format!("{program} was not found"))
        }
        Err(e) => Ran::Missing(format!("{program} could not be run: {e}")),
    }
}

/// The systemd version from `systemctl --version` ("systemd 252 (...)").
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn parse_systemd_version(stdout: &str) -> Option<u32> {
    stdout
        .lines()
        .next()?
        .strip_prefix("systemd ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether systemctl failed because no user systemd instance answers (a
/// container, or an SSH session without lingering), as opposed to a
/// problem with the unit.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn no_user_manager(stderr: &str) -> bool {
    [
        "Failed to connect to bus",
        "user scope bus",
        "XDG_RUNTIME_DIR",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

#[cfg(not(target_os = "macos"))]
fn systemd_version(activate: bool) -> Option<u32> {
    match tool(activate, "systemctl", &["--version"]) {
        Ran::Done {
            ok: true, stdout, ..
        } => parse_systemd_version(&stdout),
        _ => None,
    }
}

#[cfg(not(target_os = "macos"))]
fn systemctl(setup: &Setup, args: &[&str]) -> Ran {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    tool(setup.activate, "systemctl", &all)
}

/// Enables the unit (a link from default.target.wants, which systemctl
/// makes without a running user instance) and (re)starts it.
#[cfg(not(target_os = "macos"))]
fn activate_installed(setup: &Setup) -> Result<()> {
    let manual =
        format!("systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}");
    match systemctl(setup, &["enable", UNIT_NAME]) {
        Ran::Off => {
            println!("did not run systemctl {OFF}; to start it: {manual}");
            return Ok(());
        }
        Ran::Missing(why) => {
            eprintln!(
                "locara: {why}: the unit is written but nothing will start it (is this a \
                 systemd system?)"
            );
            return Ok(());
        }
        Ran::Done {
            ok: false,
            ref stderr,
            ..
        } if no_user_manager(stderr) => {
            eprintln!(
                "locara: no user systemd instance answers (containers and SSH sessions without \
                 lingering have none): the unit is written but neither enabled nor started; \
                 when one runs: {manual}"
            );
            return Ok(());
        }
        Ran::Done {
            ok: false, stderr, ..
        } => {
            bail!(
                "the unit is written, but `systemctl --user enable {UNIT_NAME}` failed: {}",
                stderr.trim()
            )
        }
        Ran::Done { ok: true, .. } => println!("enabled: it starts at login"),
    }
    let reload = systemctl(setup, &["daemon-reload"]);
    let started = match reload {
        Ran::Done { ok: true, .. } => systemctl(setup, &["restart", UNIT_NAME]),
        other => other,
    };
    match started {
        Ran::Done { ok: true, .. } => {
            println!("started: `locara service status` shows its state, the log shows its output");
            Ok(())
        }
        Ran::Done { ref stderr, .. } if no_user_manager(stderr) => {
            eprintln!(
                "locara: no user systemd instance answers (containers and SSH sessions without \
                 lingering have none): it was not started now; it starts at your next login, or \
                 with: {manual}"
            );
            Ok(())
        }
        other => bail!(
            "the unit is written and enabled, but starting it failed: {} (see `systemctl \
             --user status {UNIT_NAME}`)",
            other.complaint()
        ),
    }
}

/// Stops and disables the unit, best effort: the file goes either way.
#[cfg(not(target_os = "macos"))]
fn deactivate(setup: &Setup) {
    match systemctl(setup, &["stop", UNIT_NAME]) {
        Ran::Off => {
            println!("did not run systemctl {OFF}: a running service is not stopped");
            return;
        }
        Ran::Missing(why) => {
            println!("{why}: nothing to stop");
            return;
        }
        Ran::Done { ok: true, .. } => println!("stopped {UNIT_NAME}"),
        Ran::Done { ref stderr, .. } if no_user_manager(stderr) => {
            println!("no user systemd instance answers: nothing to stop")
        }
        other => eprintln!("locara: stopping {UNIT_NAME} failed: {}", other.complaint()),
    }
    match systemctl(setup, &["disable", UNIT_NAME]) {
        Ran::Done { ok: true, .. } => println!("disabled {UNIT_NAME}"),
        other => eprintln!(
            "locara: disabling {UNIT_NAME} failed: {}",
            other.complaint()
        ),
    }
}

/// Tells a running user instance that the file is gone.
#[cfg(not(target_os = "macos"))]
fn forget(setup: &Setup) {
    let _ = systemctl(setup, &["daemon-reload"]);
    let _ = systemctl(setup, &["reset-failed", UNIT_NAME]);
}

/// Best effort: whether the unit is enabled and active.
#[cfg(not(target_os = "macos"))]
fn report_state(setup: &Setup) {
    let answer = |r: Ran| match r {
        Ran::Off => format!("not checked {OFF}"),
        Ran::Missing(why) => format!("unknown: {why}"),
        Ran::Done { ref stderr, .. } if no_user_manager(stderr) => {
            "unknown: no user systemd instance answers (containers and SSH sessions without \
             lingering have none)"
                .to_string()
        }
        // is-enabled and is-active print the state and exit non-zero for
        // every state but the first ("inactive", "failed", "disabled").
        Ran::Done { ref stdout, .. } if !stdout.trim().is_empty() => stdout.trim().to_string(),
        other => format!("unknown: {}", other.complaint()),
    };
    println!(
        "enabled:  {}",
        answer(systemctl(setup, &["is-enabled", UNIT_NAME]))
    );
    println!(
        "state:    {}",
        answer(systemctl(setup, &["is-active", UNIT_NAME]))
    );
}

#[cfg(target_os = "macos")]
mod launchd {
    //! launchctl in the user's GUI domain (`gui/UID`), where LaunchAgents run.

    use super::{tool, Ran, Setup, AGENT_LABEL, OFF};
    use anyhow::{bail, Result};
    use std::time::{Duration, Instant};

    fn domain(setup: &Setup) -> Result<String> {
        match tool(setup.activate, "id", &["-u"]) {
            Ran::Done {
                ok: true, stdout, ..
            } => Ok(format!("gui/{}", stdout.trim())),
            other => bail!("finding the user id: {}", other.complaint()),
        }
    }

    fn launchctl(setup: &Setup, args: &[&str]) -> Ran {
        tool(setup.activate, "launchctl", args)
    }

    /// Unloads the agent if it is loaded, and waits (up to 30 s: longer than
    /// the daemon's default shutdown grace) until launchd has let it go:
    /// `bootstrap` fails with an I/O error while the old job is still exiting.
    fn bootout(setup: &Setup, domain: &str) -> bool {
        let target = format!("{domain}/{AGENT_LABEL}");
        let was_loaded = matches!(
            launchctl(setup, &["print", &target]),
            Ran::Done { ok: true, .. }
        );
        if !was_loaded {
            return false;
        }
        let _ = launchctl(setup, &["bootout", &target]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && matches!(
                launchctl(setup, &["print", &target]),
                Ran::Done { ok: true, .. }
            )
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    pub fn activate_installed(setup: &Setup) -> Result<()> {
        if !setup.activate {
            println!(
                "did not run launchctl {OFF}; to start it: launchctl bootstrap gui/$(id -u) {}",
                setup.file.display()
            );
            return Ok(());
        }
        let domain = domain(setup)?;
        if bootout(setup, &domain) {
            println!("unloaded the agent that was loaded");
        }
        // Clears a `launchctl disable` left from before, which would make
        // bootstrap refuse the agent.
        let _ = launchctl(setup, &["enable", &format!("{domain}/{AGENT_LABEL}")]);
        let file = setup.file.to_string_lossy();
        match launchctl(setup, &["bootstrap", &domain, &file]) {
            Ran::Done { ok: true, .. } => {
                println!("loaded into {domain}: it runs now and at login");
                Ok(())
            }
            other => bail!(
                "the agent is written, but `launchctl bootstrap {domain} {file}` failed: {}",
                other.complaint()
            ),
        }
    }

    pub fn deactivate(setup: &Setup) {
        if !setup.activate {
            println!("did not run launchctl {OFF}: a running agent is not stopped");
            return;
        }
        match domain(setup) {
            Ok(domain) if bootout(setup, &domain) => println!("stopped and unloaded {AGENT_LABEL}"),
            Ok(_) => println!("{AGENT_LABEL} was not loaded"),
            Err(e) => eprintln!("locara: could not stop the agent: {e:#}"),
        }
    }

    pub fn forget(_setup: &Setup) {}

    pub fn report_state(setup: &Setup) {
        if !setup.activate {
            println!("state:    not checked {OFF}");
            return;
        }
        let domain = match domain(setup) {
            Ok(d) => d,
            Err(e) => {
                println!("state:    unknown: {e:#}");
                return;
            }
        };
        match launchctl(setup, &["print", &format!("{domain}/{AGENT_LABEL}")]) {
            Ran::Done {
                ok: true, stdout, ..
            } => {
                let field = |name: &str| {
                    stdout.lines().find_map(|l| {
                        l.trim()
                            .strip_prefix(name)?
                            .trim_start()
                            .strip_prefix('=')
                            .map(|v| v.trim().to_string())
                    })
                };
                let state = field("state").unwrap_or_else(|| "loaded".into());
                match field("pid") {
                    Some(pid) => println!("state:    {state} (pid {pid}) in {domain}"),
                    None => println!("state:    {state} in {domain}"),
                }
            }
            Ran::Done { .. } => println!("state:    not loaded in {domain}"),
            other => println!("state:    unknown: {}", other.complaint()),
        }
    }
}

#[cfg(target_os = "macos")]
use launchd::{activate_installed, deactivate, forget, report_state};

// ---------------------------------------------------------------------------
// The commands.

fn kind() -> &'static str {
    if cfg!(target_os = "macos") {
        "launchd agent"
    } else {
        "systemd user unit"
    }
}

fn install(setup: &Setup) -> Result<()> {
    // The service manager opens the log before the daemon runs, and does
    // not make its directory.
    fs::create_dir_all(&setup.spec.home)
        .with_context(|| format!("creating the data directory {}", setup.spec.home))?;
    let bytes = contents(setup)?;
    let dir = setup
        .file
        .parent()
        .context("the service file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let replaced = setup.file.exists();
    // Written whole, so a service manager never reads half a file.
    write_atomic(&setup.file, &bytes, Access::Default)?;
    println!(
        "{} {} {}",
        if replaced { "replaced" } else { "wrote" },
        kind(),
        setup.file.display()
    );
    println!("runs:     {} serve", setup.spec.exe);
    println!("data:     {}", setup.spec.home);
    println!(
        "log:      {} (rotated at start past {}; {LOG_KEEP} old copies kept)",
        setup.spec.log,
        Bytes(LOG_CAP)
    );
    activate_installed(setup)
}

fn uninstall(setup: &Setup) -> Result<()> {
    if !setup.file.exists() {
        println!(
            "no {} at {}: nothing to remove",
            kind(),
            setup.file.display()
        );
        return Ok(());
    }
    deactivate(setup);
    fs::remove_file(&setup.file).with_context(|| format!("removing {}", setup.file.display()))?;
    println!("removed {}", setup.file.display());
    forget(setup);
    println!("the log stays: {}", setup.spec.log);
    Ok(())
}

fn status(setup: &Setup) -> Result<()> {
    let installed = match fs::read(&setup.file) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", setup.file.display())),
    };
    match &installed {
        None => {
            println!(
                "{}: not installed (`locara service install` writes {})",
                kind(),
                setup.file.display()
            );
            return Ok(());
        }
        Some(bytes) => {
            println!("{}: installed at {}", kind(), setup.file.display());
            if *bytes == contents(setup)? {
                println!("runs:     {} serve", setup.spec.exe);
            } else {
                println!(
                    "file:     differs from what `locara service install` writes now (another \
                     binary, data directory or version): run it again to update"
                );
            }
        }
    }
    report_state(setup);
    match fs::metadata(&setup.spec.log) {
        Ok(m) => println!("log:      {} ({})", setup.spec.log, Bytes(m.len())),
        Err(_) => println!("log:      {} (not written yet)", setup.spec.log),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Log rotation.

/// Rotates `serve.log` in the data directory when this process's stdout or
/// stderr is that file and it holds more than [`LOG_CAP`] bytes; the
/// service manager appends the daemon's output to it. `locara serve` calls
/// this first, before it writes anything. A failure is reported, never
/// fatal: a log is no reason to refuse to serve.
pub fn rotate_log_at_start(home: &Path) {
    let log = home.join(LOG_FILE);
    match rotate_if_ours(&log, LOG_CAP, LOG_KEEP) {
        Ok(Some(bytes)) => tracing::info!(
            log = %log.display(),
            size = %Bytes(bytes),
            "rotated the log: the old one is {LOG_FILE}.1"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(log = %log.display(), "could not rotate the log: {e}"),
    }
}

/// Rotates `log` if it is over `cap` bytes and this process writes to it;
/// returns the size it had.
fn rotate_if_ours(log: &Path, cap: u64, keep: u32) -> std::io::Result<Option<u64>> {
    let Ok(meta) = fs::metadata(log) else {
        return Ok(None);
    };
    if meta.len() <= cap {
        return Ok(None);
    }
    let streams = [
        std::io::stdout().as_fd().try_clone_to_owned(),
        std::io::stderr().as_fd().try_clone_to_owned(),
    ];
    let mut writers: Vec<File> = streams
        .into_iter()
        .flatten()
        .map(File::from)
        .filter(|f| {
            f.metadata()
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        })
        .collect();
    // Someone else's log (a `locara serve` in a terminal while the service
    // runs): not ours to touch.
    if writers.is_empty() {
        return Ok(None);
    }
    rotate(log, &mut writers, keep)?;
    Ok(Some(meta.len()))
}

/// `log.1` .. `log.{keep}`, newest first: shifts the older copies, copies
/// `log` to `log.1` and empties `log`. `writers` are this process's open
/// handles on `log`.
///
/// Copy and truncate rather than rename: the service manager opened the
/// file before the daemon started, and a renamed file would keep receiving
/// its output. The daemon is the file's only writer and has written nothing
/// yet, so no line is lost between the copy and the truncation.
fn rotate(log: &Path, writers: &mut [File], keep: u32) -> std::io::Result<()> {
    for n in (1..keep).rev() {
        let from = numbered(log, n);
        if from.exists() {
            // Replaces log.{n+1}: the oldest copy goes.
            fs::rename(&from, numbered(log, n + 1))?;
        }
    }
    fs::copy(log, numbered(log, 1))?;
    OpenOptions::new().write(true).open(log)?.set_len(0)?;
    // systemd and launchd open the log for appending, so the next write
    // lands at the new end anyway; a handle opened otherwise would write at
    // its old offset and leave a hole of zeros.
    for w in writers {
        w.seek(SeekFrom::Start(0))?;
    }
    Ok(())
}

fn numbered(log: &Path, n: u32) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> Spec {
        Spec {
            exe: "/opt/lo cara/bin/locara".into(),
            home: "/Users/me/Library/Application Support/Locara".into(),
            log: "/Users/me/Library/Application Support/Locara/serve.log".into(),
        }
    }

    fn line<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    #[test]
    fn the_unit_starts_serve_from_the_absolute_binary_and_restarts_on_failure() {
        let unit = systemd_unit(&spec(), Some(252));
        assert_eq!(
            line(&unit, "ExecStart"),
            Some("\"/opt/lo cara/bin/locara\" serve")
        );
        assert_eq!(
            line(&unit, "Environment"),
            Some("\"LOCARA_HOME=/Users/me/Library/Application Support/Locara\"")
        );
        assert_eq!(line(&unit, "Restart"), Some("on-failure"));
        assert_eq!(line(&unit, "RestartSec"), Some("2"));
        assert_eq!(
            line(&unit, "StandardOutput"),
            Some("append:/Users/me/Library/Application Support/Locara/serve.log")
        );
        assert_eq!(line(&unit, "StandardError"), Some("inherit"));
        assert_eq!(line(&unit, "WantedBy"), Some("default.target"));
        let sections: Vec<&str> = unit.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
    }

    #[test]
    fn the_unit_backs_off_only_where_systemd_knows_the_keys() {
        for old in [None, Some(252), Some(253)] {
            let unit = systemd_unit(&spec(), old);
            assert!(!unit.contains("RestartSteps"), "{old:?}: {unit}");
            assert!(!unit.contains("RestartMaxDelaySec"), "{old:?}");
            assert_eq!(line(&unit, "StartLimitBurst"), Some("5"));
        }
        let unit = systemd_unit(&spec(), Some(254));
        assert_eq!(line(&unit, "RestartSteps"), Some("5"));
        assert_eq!(line(&unit, "RestartMaxDelaySec"), Some("60"));
        assert_eq!(line(&unit, "StartLimitIntervalSec"), Some("0"));
    }

    #[test]
    fn unit_words_escape_quotes_backslashes_specifiers_and_variables() {
        assert_eq!(systemd_quoted(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(systemd_quoted("/x%h/$HOME"), "\"/x%%h/$$HOME\"");
        let mut s = spec();
        s.log = "/data/100%/serve.log".into();
        assert_eq!(
            line(&systemd_unit(&s, None), "StandardOutput"),
            Some("append:/data/100%%/serve.log")
        );
    }

    #[test]
    fn paths_with_newlines_or_invalid_utf8_are_refused() {
        assert!(text(Path::new("/tmp/a\nExecStartPre=/bin/evil"), "x").is_err());
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        assert!(text(bad, "x").is_err());
        assert_eq!(text(Path::new("/tmp/a b"), "x").unwrap(), "/tmp/a b");
    }

    #[test]
    fn the_plist_holds_the_agent_launchd_needs() {
        let bytes = launchd_plist(&spec()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("<!DOCTYPE plist"), "{text}");
        let value = plist::Value::from_reader_xml(&bytes[..]).unwrap();
        let agent = value.as_dictionary().unwrap();
        let string = |k: &str| agent.get(k).and_then(|v| v.as_string());
        assert_eq!(string("Label"), Some("dev.locara.serve"));
        let args: Vec<&str> = agent["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect();
        assert_eq!(args, ["/opt/lo cara/bin/locara", "serve"]);
        assert_eq!(agent["RunAtLoad"].as_boolean(), Some(true));
        let keep_alive = agent["KeepAlive"].as_dictionary().unwrap();
        assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(agent["ThrottleInterval"].as_signed_integer(), Some(10));
        assert_eq!(string("ProcessType"), Some("Interactive"));
        assert_eq!(string("StandardOutPath"), Some(spec().log.as_str()));
        assert_eq!(string("StandardErrorPath"), Some(spec().log.as_str()));
        let env = agent["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["LOCARA_HOME"].as_string(), Some(spec().home.as_str()));
    }

    #[test]
    fn the_service_file_lives_where_the_service_manager_looks() {
        let home = Path::new("/home/me");
        let file = service_file(home, Some("/xdg".into()));
        let relative = service_file(home, Some("rel".into()));
        let default = service_file(home, None);
        if cfg!(target_os = "macos") {
            let agent = Path::new("/home/me/Library/LaunchAgents/dev.locara.serve.plist");
            assert_eq!(file, agent);
            assert_eq!(default, agent);
        } else {
            assert_eq!(file, Path::new("/xdg/systemd/user/locara.service"));
            let default_path = Path::new("/home/me/.config/systemd/user/locara.service");
            assert_eq!(relative, default_path);
            assert_eq!(default, default_path);
        }
    }

    #[test]
    fn systemctl_answers_are_read() {
        assert_eq!(
            parse_systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT"),
            Some(252)
        );
        assert_eq!(parse_systemd_version("systemd 256.7\n"), None);
        assert_eq!(parse_systemd_version(""), None);
        assert!(no_user_manager(
            "Failed to connect to bus: No medium found\n"
        ));
        assert!(no_user_manager(
            "Failed to connect to user scope bus via local transport: $DBUS_SESSION_BUS_ADDRESS \
             and $XDG_RUNTIME_DIR not defined"
        ));
        assert!(!no_user_manager("Unit locara.service not found."));
    }

    #[test]
    fn rotation_keeps_the_newest_copies_and_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        for (n, text) in [(1, "one"), (2, "two"), (3, "three")] {
            fs::write(numbered(&log, n), text).unwrap();
        }
        fs::write(&log, "current run\n").unwrap();
        // A handle like the service manager's, not opened for appending, at
        // the end of the old text.
        let mut writer = OpenOptions::new().write(true).open(&log).unwrap();
        writer.seek(SeekFrom::End(0)).unwrap();
        rotate(&log, std::slice::from_mut(&mut writer), 3).unwrap();
        writer.write_all(b"next run\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "next run\n");
        assert_eq!(
            fs::read_to_string(numbered(&log, 1)).unwrap(),
            "current run\n"
        );
        assert_eq!(fs::read_to_string(numbered(&log, 2)).unwrap(), "one");
        assert_eq!(fs::read_to_string(numbered(&log, 3)).unwrap(), "two");
        assert!(!numbered(&log, 4).exists());
    }

    #[test]
    fn a_log_this_process_does_not_write_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        fs::write(&log, vec![b'x'; 100]).unwrap();
        // Over the cap, but the test's stdout and stderr are not this file.
        assert_eq!(rotate_if_ours(&log, 10, 3).unwrap(), None);
        assert_eq!(fs::metadata(&log).unwrap().len(), 100);
        assert!(!numbered(&log, 1).exists());
        assert_eq!(
            rotate_if_ours(&dir.path().join("absent.log"), 10, 3).unwrap(),
            None
        );
    }
}
