//! One validated configuration, built once from the environment and flags.

use anyhow::{Context, Result};
use locara_daemon::store::{Catalog, Store};
use locara_engine::WorkerCommand;
use std::path::{Path, PathBuf};

/// Everything the commands need, checked.
pub struct Config {
    /// The data directory: models, profile, tokens.
    pub home: PathBuf,
    pub catalog: Catalog,
    /// How to start an engine worker.
    pub worker: WorkerCommand,
}

impl Config {
    /// Reads `LOCARA_HOME` and `LOCARA_CATALOG`; `engine_log` passes
    /// llama.cpp's own log through to stderr.
    pub fn load(engine_log: bool) -> Result<Config> {
        let home = match std::env::var_os("LOCARA_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => default_home()?,
        };
        let catalog = match std::env::var_os("LOCARA_CATALOG") {
            Some(p) if !p.is_empty() => Catalog::load(Path::new(&p))?,
            _ => Catalog::builtin()?,
        };
        let mut worker = WorkerCommand::current_exe().context("locating the locara binary")?;
        worker.engine_log = engine_log;
        Ok(Config {
            home,
            catalog,
            worker,
        })
    }

    pub fn store(&self) -> Result<Store> {
        Store::open(&self.home)
            .with_context(|| format!("opening the model store in {}", self.home.display()))
    }
}

/// The platform's place for application data: `~/Library/Application
/// Support/Locara` on macOS, `$XDG_DATA_HOME/locara` (default
/// `~/.local/share/locara`) elsewhere.
fn default_home() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set; set LOCARA_HOME to choose the data directory")?;
    if cfg!(target_os = "macos") {
        return Ok(home.join("Library/Application Support/Locara"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local/share"));
    Ok(data.join("locara"))
}
