//! `app install|list|remove|rotate-token` and `manifest check`: the app
//! registry (`locara_daemon::apps`) from the command line.
//!
//! These commands work on the data directory's files, not through a daemon:
//! a running daemon sees each change at its next request.

use crate::config::Config;
use anyhow::{Context, Result};
use clap::Subcommand;
use locara_core::manifest::AppId;
use locara_core::{Bytes, LoadDefaults};
use locara_daemon::apps::{
    self, AppError, AppRegistry, Fit, FitError, LimitError, MachineLimits, ModelCost,
};
use locara_daemon::config::{RawServeConfig, ServeConfig};
use locara_daemon::manifest::read_manifest;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const TOKEN_NOTE: &str = "The token goes alone to standard output and everything else to \
standard error, so `TOKEN=$(locara app install notes.toml)` captures it. It is shown this once: Locara keeps \
only its sha256. The app sends it with each request as `Authorization: Bearer TOKEN`.";

#[derive(Subcommand)]
pub enum AppCommand {
    /// Install an app from its manifest and print its token.
    ///
    /// The manifest is validated (as `locara manifest check` does), then
    /// checked against this machine: `requires.memory_gb` must be within
    /// its memory, and the estimates of all its models at their declared
    /// contexts, K/V types and `max_concurrency` must fit the budget
    /// together (both models of a speculative pair count). Every model must
    /// be in the store first (`locara pull NAME`). A machine too small is
    /// told so here, with the numbers, and nothing is installed.
    #[command(after_help = TOKEN_NOTE)]
    Install {
        /// The app's manifest (TOML; docs/app-manifest.example.toml shows
        /// every key).
        manifest: PathBuf,
    },
    /// List the installed apps: id, name, version and models.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Uninstall an app: its token stops working at once.
    ///
    /// The models it used stay in the store (`locara rm NAME` removes one).
    #[command(alias = "rm")]
    Remove {
        /// The app's id, e.g. com.example.notes (`locara app list`).
        id: String,
    },
    /// Issue a new token for an app; the old one stops working at once.
    ///
    /// For a token that was lost or leaked.
    #[command(after_help = TOKEN_NOTE)]
    RotateToken {
        /// The app's id, e.g. com.example.notes (`locara app list`).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Validate an app manifest without installing it.
    ///
    /// Prints every problem, one per line as FILE:LINE: message, and exits
    /// with status 1; or prints "FILE: valid (N models)". The models need
    /// not be in the store, unless --fit is given.
    Check {
        /// The manifest (TOML).
        file: PathBuf,
        /// Also check the app against this machine as `locara app install`
        /// does: its models (which must be in the store) within the budget
        /// at their declared contexts, and `requires.memory_gb` within the
        /// machine's memory. Exit status 1 when it does not fit.
        #[arg(long)]
        fit: bool,
    },
}

pub fn app(command: AppCommand) -> Result<ExitCode> {
    match command {
        AppCommand::Install { manifest } => install(&manifest),
        AppCommand::List { json } => list(json),
        AppCommand::Remove { id } => remove(&id),
        AppCommand::RotateToken { id } => rotate_token(&id),
    }
}

pub fn manifest(command: ManifestCommand) -> Result<ExitCode> {
    match command {
        ManifestCommand::Check { file, fit } => check(&file, fit),
    }
}

fn registry(config: &Config) -> Result<AppRegistry> {
    AppRegistry::open(&config.home)
        .with_context(|| format!("opening the app registry in {}", config.home.display()))
}

fn check(file: &Path, fit: bool) -> Result<ExitCode> {
    let manifest = match read_manifest(file) {
        Ok(m) => m,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let n = manifest.models.len();
    println!(
        "{}: valid ({n} model{})",
        file.display(),
        if n == 1 { "" } else { "s" }
    );
    if !fit {
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(false)?;
    let machine = machine_limits()?;
    match apps::check_fit(&manifest, &config.store()?, &machine, &load_defaults()?) {
        Ok(fit) => {
            print_costs(&fit.models, &mut std::io::stdout());
            println!("{}", fits_line(&fit, &machine));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refuse(e),
    }
}

fn install(path: &Path) -> Result<ExitCode> {
    let config = Config::load(false)?;
    // Every problem of the file, with its line, before anything else.
    if let Err(errors) = read_manifest(path) {
        eprintln!("{errors}");
        return Ok(ExitCode::FAILURE);
    }
    // Read once more for the registry's copy: it was valid UTF-8 under the
    // size cap a moment ago, and the registry validates it again.
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = registry(&config)?;
    let store = config.store()?;
    let machine = machine_limits()?;
    let defaults = load_defaults()?;
    let mut fit = None;
    let installed = registry.install(&text, &path.display().to_string(), |m| {
        fit = Some(apps::check_fit(m, &store, &machine, &defaults)?);
        Ok(())
    });
    let (manifest, token) = match installed {
        Ok(done) => done,
        Err(AppError::InvalidManifest(errors)) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
        Err(AppError::DoesNotFit(e)) => return refuse(*e),
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "installed {} ({} {})",
        manifest.id, manifest.name, manifest.version
    );
    if let Some(fit) = &fit {
        print_costs(&fit.models, &mut std::io::stderr());
        eprintln!("{}", fits_line(fit, &machine));
    }
    print_token(&manifest.id, &token);
    Ok(ExitCode::SUCCESS)
}

fn list(json: bool) -> Result<ExitCode> {
    let config = Config::load(false)?;
    let apps = registry(&config)?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(ExitCode::SUCCESS);
    }
    if apps.is_empty() {
        println!("no apps installed; `locara app install MANIFEST` installs one");
        return Ok(ExitCode::SUCCESS);
    }
    let id_width = apps.iter().map(|a| a.id.as_str().len()).max().unwrap_or(0);
    let name_width = apps
        .iter()
        .map(|a| a.name.chars().count())
        .max()
        .unwrap_or(0);
    let id_width = id_width.max("ID".len());
    let name_width = name_width.max("NAME".len());
    println!(
        "{:<id_width$}  {:<name_width$}  {:<12} MODELS",
        "ID", "NAME", "VERSION"
    );
    for a in apps {
        println!(
            "{:<id_width$}  {:<name_width$}  {:<12} {}",
            a.id,
            a.name,
            a.version,
            a.models
                .iter()
                .map(|m| m.reference.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(id: &str) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let config = Config::load(false)?;
    registry(&config)?.remove(&id)?;
    println!("removed {id}; its token no longer works");
    Ok(ExitCode::SUCCESS)
}

fn rotate_token(id: &str) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let config = Config::load(false)?;
    let token = registry(&config)?.rotate_token(&id)?;
    eprintln!("new token for {id}; the old one no longer works");
    print_token(&id, &token);
    Ok(ExitCode::SUCCESS)
}

fn parse_id(id: &str) -> Result<AppId> {
    Ok(apps::parse_app_id(id)?)
}

fn print_token(id: &AppId, token: &apps::Token) {
    eprintln!(
        "token (shown this once; Locara keeps only its hash; `locara app rotate-token {id}` \
         issues a new one):"
    );
    println!("{}", token.as_str());
}

/// The machine's budget and memory: what `check_fit` holds an app to.
fn machine_limits() -> Result<MachineLimits> {
    let budget = crate::plan::machine_budget()?;
    let physical_memory =
        locara_platform::physical_memory().context("reading the physical memory")?;
    Ok(MachineLimits {
        budget: budget.bytes,
        budget_basis: budget.basis,
        physical_memory,
    })
}

/// The context and K/V type the daemon gives a model an app declares
/// without them: its defaults as `LOCARA_CONTEXT` and `LOCARA_KV_TYPE` set
/// them (a `locara serve` started with other flags or a config file
/// decides for itself; its admission takes the same numbers from the same
/// place, `ModelDecl::load_terms`).
fn load_defaults() -> Result<LoadDefaults> {
    let env = RawServeConfig::from_env(|k| std::env::var(k).ok())?;
    Ok(ServeConfig::build(&[env])?.load_defaults())
}

/// Prints why an app does not fit (with its models' estimates where that
/// is the reason) and ends with status 1.
fn refuse(e: FitError) -> Result<ExitCode> {
    if let FitError::Limit(LimitError::OverBudget { models, .. }) = &e {
        print_costs(models, &mut std::io::stderr());
    }
    Err(e.into())
}

fn fits_line(fit: &Fit, machine: &MachineLimits) -> String {
    format!(
        "fits: needs {} of the {} budget ({}), {} to spare",
        Bytes(fit.needs),
        Bytes(fit.budget),
        machine.budget_basis,
        Bytes(fit.budget - fit.needs)
    )
}

/// The estimate of each model, as a table.
fn print_costs(models: &[ModelCost], out: &mut dyn std::io::Write) {
    let width = models
        .iter()
        .map(|m| m.reference.len())
        .max()
        .unwrap_or(0)
        .max("MODEL".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<9}  {:>7}  {:>4}  {:<4}  {:>10}",
        "MODEL", "ROLE", "CONTEXT", "SEQS", "K/V", "ESTIMATE"
    );
    for m in models {
        let _ = writeln!(
            out,
            "{:<width$}  {:<9}  {:>7}  {:>4}  {:<4}  {:>10}",
            m.reference,
            m.role.as_str(),
            m.context,
            m.parallel,
            m.kv_type.as_str(),
            Bytes(m.estimate).to_string()
        );
    }
}
