//! `locara`: the command line. It parses flags into checked values and calls
//! into the crates; the work happens there.

mod apps;
mod config;
mod inspect;
mod mem;
mod models;
mod open;
mod plan;
mod profile;
mod progress;
mod run;
mod serve;
mod service;
mod top;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Locara: a local LLM runtime that is a good memory citizen.
///
/// Models are memory-mapped, never locked; the K/V cache is q8_0 by default;
/// every model runs in an engine worker process of its own. Data lives in
/// LOCARA_HOME (default: ~/.local/share/locara, or ~/Library/Application
/// Support/Locara on macOS).
#[derive(Parser)]
#[command(name = "locara", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model, or answer one prompt and exit.
    ///
    /// `locara run` alone opens a chat with the default model (pulled first
    /// if absent). `locara run "Why is the sky blue?"` answers one prompt;
    /// a prompt can also come on stdin. Ctrl-C stops a generation in a chat;
    /// Ctrl-D or /bye leaves it.
    Run(run::RunArgs),
    /// Download a model (the catalog, or the Hugging Face Hub), verify its
    /// sha256, and store it.
    ///
    /// From the Hub: `hf.co/ORG/REPO` takes the Q4_K_M file (else the
    /// smallest of four bits or more), `hf.co/ORG/REPO:Q8_0` another
    /// quantisation, and `https://huggingface.co/ORG/REPO/resolve/main/F.gguf`
    /// one file. Before downloading it prints `locara plan`'s verdict for this
    /// machine; an interrupted download continues where it stopped on the
    /// next pull. HF_TOKEN is sent for gated repositories (never printed);
    /// HF_ENDPOINT names a mirror.
    #[command(
        after_help = "Examples:\n  locara pull smollm2:135m\n  locara pull qwen2.5:7b\n  \
locara pull hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF\n  \
locara pull hf.co/unsloth/gemma-3-4b-it-GGUF:Q8_0 --name gemma3:4b-q8"
    )]
    Pull {
        /// A catalog name or alias (smollm2:135m, qwen2.5:7b), hf.co/ORG/REPO[:QUANT],
        /// or the URL of a .gguf file on the Hub.
        name: String,
        /// Name to store a Hub model under (default: the repository's name
        /// and the quantisation, e.g. llama-3.2-3b-instruct:q4_k_m).
        #[arg(long = "name", value_name = "NAME")]
        store_as: Option<String>,
        /// Download even when no context of the model fits this machine's
        /// budget.
        #[arg(long)]
        force: bool,
    },
    /// Copy a local GGUF file into the store, or adopt the models Ollama or
    /// LM Studio downloaded (in place, no copy).
    ///
    /// `--from ollama` reads Ollama's manifests ($OLLAMA_MODELS or
    /// ~/.ollama/models); `--from lmstudio` LM Studio's models directory
    /// (~/.lmstudio/models, or the older ~/.cache/lm-studio/models). Each
    /// model passes the GGUF guard and is hashed once; the store then holds
    /// a hard link to the file where the file system allows one, else a
    /// reference to it whose size and sha256 are checked before each load.
    /// `locara rm` of an adopted model never deletes the other tool's file.
    #[command(
        after_help = "Examples:\n  locara import ./model.gguf --name my-model\n  \
locara import --from ollama\n  locara import --from ollama llama3.2:3b\n  \
locara import --from lmstudio bartowski/Llama-3.2-1B-Instruct-GGUF"
    )]
    Import {
        /// The .gguf file; with --from, the model to adopt (default: all):
        /// an Ollama NAME or NAME:TAG, an LM Studio REPO, PUBLISHER/REPO or
        /// file name.
        #[arg(value_name = "FILE|MODEL")]
        what: Option<String>,
        /// Name to store it under (default: from the file or the tool's name).
        #[arg(long)]
        name: Option<String>,
        /// Adopt from another tool's models instead of copying a file.
        #[arg(long, value_parser = ["ollama", "lmstudio"])]
        from: Option<String>,
        /// The tool's models directory, where it is not in the usual place.
        #[arg(long, value_name = "DIR", requires = "from")]
        dir: Option<PathBuf>,
        /// Record a reference even where a hard link is possible (a hard
        /// link keeps the disk space in use after the other tool deletes
        /// its copy; a reference does not).
        #[arg(long, requires = "from")]
        reference: bool,
    },
    /// List stored models.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored model.
    Rm { name: String },
    /// Show a model's metadata and tensor summary (validating the file).
    Inspect {
        /// A stored model name or a path to a .gguf file.
        model: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show this machine's profile, memory tier and default budget.
    ///
    /// Chip, RAM, cores, page size and GPU working-set cap. Probed on first
    /// use and stored in the data directory (RAM does not change); later runs
    /// read the stored profile.
    Profile {
        /// Probe the machine again and store the new profile.
        #[arg(long)]
        refresh: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the machine's memory, the pressure level, and Locara's processes.
    ///
    /// Each figure comes with a line that says what it means; each process
    /// shows its footprint, its mapped weights and its RSS.
    Mem {
        /// Print JSON (one object per line with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Estimate a model's memory before loading it, and whether it fits.
    ///
    /// Prints the estimate (mapped weights plus footprint: K/V cache, compute
    /// buffers, output buffer, repacked weights, overhead), this machine's
    /// budget, whether the load fits, and the largest context that fits with
    /// each K/V type.
    Plan(plan::PlanArgs),
    /// Run the daemon: one process that serves every app over an
    /// OpenAI-compatible API and decides which models stay loaded.
    ///
    /// Models load on the first request that names them, within the memory
    /// budget: idle models are evicted least recently used first when a new
    /// one needs room, and unload after keep_alive (3 minutes) idle.
    Serve(serve::ServeArgs),
    /// Show the models a running daemon holds: state, footprint (measured),
    /// mapped weights, estimate, context, K/V type, idle time, unload time.
    Ps {
        /// Print JSON (the daemon's whole status).
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running daemon: memory, models, pressure, events.
    ///
    /// A memory bar (Locara's models, the rest of the system, free), a row
    /// per model, the pressure level and the models' footprint over the last
    /// samples, and the last events. Keys: up/down select a model, u unloads
    /// it, h unloads and holds it, p pins it (kept loaded while idle), l
    /// loads it, q quits.
    Top,
    /// Open the daemon's web page: memory, models and the last hour's charts.
    ///
    /// Prints a one-time login link (it works once, within two minutes) and
    /// tries to open it in a browser; the link sets an HttpOnly session
    /// cookie, so no token enters the page.
    Open {
        /// Only print the link.
        #[arg(long)]
        no_browser: bool,
    },
    /// Load a model in the running daemon and keep it loaded while idle
    /// (until keep_alive); also lifts a `stop --hold`.
    Load {
        /// A stored model name, e.g. smollm2:135m.
        model: String,
    },
    /// Unload a model from the running daemon.
    Stop {
        /// A stored model name, e.g. smollm2:135m.
        model: String,
        /// Keep it unloaded: requests for it fail until `locara load`.
        #[arg(long)]
        hold: bool,
    },
    /// Memory pressure in the running daemon.
    #[command(subcommand)]
    Pressure(PressureCommand),
    /// Power and thermal state in the running daemon.
    #[command(subcommand)]
    Power(PowerCommand),
    /// Install, list and remove apps, and issue their tokens.
    ///
    /// An app is installed from a TOML manifest that declares the models it
    /// uses; installing checks that this machine can hold them and prints the
    /// app's token, which its requests carry (`Authorization: Bearer TOKEN`).
    /// An app may use only the models its manifest declares.
    App {
        #[command(subcommand)]
        command: apps::AppCommand,
    },
    /// Check app manifests.
    Manifest {
        #[command(subcommand)]
        command: apps::ManifestCommand,
    },
    /// Run `locara serve` at login: a systemd user unit on Linux, a launchd
    /// agent on macOS; restarted when it fails, its log rotated.
    Service(service::ServiceArgs),
    /// The engine worker (started by locara itself; not for direct use).
    #[command(hide = true)]
    Engine,
}

#[derive(Subcommand)]
enum PressureCommand {
    /// Drive the daemon's pressure handler as an OS report would (like
    /// macOS `memory_pressure -S`): warn unloads idle models and caps
    /// requests; critical unloads everything not generating and refuses
    /// loads; normal ends the simulation (restrictions lift after the quiet
    /// period).
    Simulate {
        /// normal, warn or critical.
        #[arg(value_parser = ["normal", "warn", "critical"])]
        level: String,
        /// How long, e.g. 60s or 5m (default: until `simulate normal`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
}

#[derive(Subcommand)]
enum PowerCommand {
    /// Drive the daemon's power policy as the machine's state would:
    /// battery and low-power give the models half the cores, one sequence
    /// per new load, no speculative drafting and a 512-token cap on new
    /// requests; thermal-serious pauses background generations and caps new
    /// requests at 256 tokens; thermal-critical also refuses new background
    /// requests (503, Retry-After); normal ends the simulation.
    Simulate {
        /// normal, battery, low-power, thermal-serious or thermal-critical.
        #[arg(value_parser = ["normal", "battery", "low-power", "thermal-serious", "thermal-critical"])]
        mode: String,
        /// How long, e.g. 60s or 5m (default: until `simulate normal`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        // The worker's stderr is the daemon's log; it logs nothing itself.
        Command::Engine => {}
        Command::Serve(args) => init_logging("info", args.json_log()),
        // A run's own daemon speaks up only for what went wrong, unless asked.
        Command::Run(args) if args.verbose() => init_logging("info", false),
        _ => init_logging("warn", false),
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Engine => engine(),
        Command::Run(args) => run::run(args),
        Command::Pull {
            name,
            store_as,
            force,
        } => models::pull(&name, store_as.as_deref(), force),
        Command::Import {
            what,
            name,
            from,
            dir,
            reference,
        } => match from.as_deref() {
            Some(tool) => models::adopt(
                tool,
                what.as_deref(),
                name.as_deref(),
                dir.as_deref(),
                reference,
            ),
            None => match what {
                Some(file) => models::import(std::path::Path::new(&file), name.as_deref()),
                None => anyhow::bail!("name a .gguf file to import, or --from ollama|lmstudio"),
            },
        },
        Command::List { json } => models::list(json),
        Command::Rm { name } => models::rm(&name),
        Command::Inspect { model, json } => inspect::inspect(&model, json),
        Command::Plan(args) => plan::plan(args),
        Command::Profile { refresh, json } => profile::profile(refresh, json),
        Command::Mem { json, watch } => mem::mem(json, watch),
        Command::Serve(args) => serve::serve(args),
        Command::Pressure(PressureCommand::Simulate { level, duration }) => {
            serve::simulate(&level, duration.as_deref())
        }
        Command::Power(PowerCommand::Simulate { mode, duration }) => {
            serve::simulate_power(&mode, duration.as_deref())
        }
        Command::Ps { json } => serve::ps(json),
        Command::Top => top::top(),
        Command::Open { no_browser } => open::open(no_browser),
        Command::Load { model } => serve::load(&model),
        Command::Stop { model, hold } => serve::stop(&model, hold),
        Command::App { command } => apps::app(command),
        Command::Manifest { command } => apps::manifest(command),
        Command::Service(args) => service::service(args),
    }
}

/// Log lines (the daemon's events: loads, unloads, pressure actions) go to
/// stderr, as human-readable lines or one JSON object per line.
/// `LOCARA_LOG` (e.g. `debug`, `locara_daemon=debug`) overrides the level.
fn init_logging(default_level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LOCARA_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(feature = "engine")]
fn engine() -> Result<ExitCode> {
    // A worker on a CPU this binary was not built for would die with SIGILL
    // mid-generation; this names the missing instructions instead.
    locara_platform::check_supported()?;
    locara_engine::worker::run()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "engine"))]
fn engine() -> Result<ExitCode> {
    anyhow::bail!("this build of locara has no engine (built without the `engine` feature)")
}
