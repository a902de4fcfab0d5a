//! `locara-serve-bench`: Locara's OpenAI-compatible HTTP API against
//! llama.cpp's `llama-server`, built from the same llama.cpp tree as
//! `locara-bench`'s llama-bench, on the same model and threads, in two
//! comparisons: one at equal settings, with llama-server's prompt cache and
//! unified K/V cache turned off to match Locara's engine, and one with both
//! servers at their defaults, as users run them.
//!
//! # What it measures
//!
//! Streamed, greedy `POST /v1/chat/completions` requests, timed by the
//! client as the server-sent events arrive:
//!
//! * **time to first token**: request written → first event with text
//!   (`choices[0].delta.content`);
//! * **decode tokens/s**: (chunks with text − 1) / (last one − first one).
//!   Both servers send one chunk per token; the `usage` each sends at the
//!   end of the stream (`stream_options.include_usage`) checks that, and the
//!   counts are reported.
//!
//! **At equal settings** (`--only equal`): the same K/V cache type, parallel
//! slots and context per sequence on both sides, one K/V cache that the
//! slots share (`--kv-unified`), and neither side's prompt cache
//! (llama-server: `--cache-ram 0`; both: `cache_prompt: false`). One user message that a small model
//! answers at length, `max_tokens` each, in two scenarios: **1 stream** (one
//! request at a time), and **N concurrent streams** (`--parallel`, default
//! 4, sent together): all their tokens over the time from
//! the first first token to the last last token, and the median of their
//! times to first token.
//!
//! **At their defaults** (`--only chat8`): `llama-server -m MODEL --port 0
//! -t THREADS` (prompt cache on, 4 slots sharing one unified K/V cache) and
//! `locara serve` with a configuration file that sets only `threads`. An
//! 8-turn conversation ([`locara_bench::chat`]): a system prompt, 8 user
//! messages of about 130 tokens, and fixed assistant answers of about 100
//! tokens between them, the whole history sent each turn, `max_tokens` 32;
//! time to first token turn by turn. Then the **footprint after one chat**:
//! Anonymous + Swap (Linux; macOS `phys_footprint`) of llama-server's
//! process and of Locara's engine worker (its pid from
//! `/locara/v1/status`), read from the OS after the first conversation on
//! fresh servers.
//!
//! # How
//!
//! Both servers of a comparison run at once, each on an ephemeral loopback
//! port, and stay up for the whole comparison; an idle server takes no CPU,
//! so each measures while the other waits. At equal settings each
//! repetition runs both scenarios on both sides back to back, alternating
//! which side goes first, after one warm-up per side and scenario (Locara
//! loads its model on its first request: the warm-up covers that). In the
//! conversation each rep is a new conversation (its system prompt starts
//! with words of its own, so no cache from an earlier rep matches), run on
//! both sides turn by turn, alternating which side goes first from rep to
//! rep, after one untimed conversation (the one the footprint is taken
//! after), with a pause of 150 ms (`--turn-gap-ms`) before every turn on
//! either side (so what one server does after its answer, such as Locara
//! decoding the opening of the next turn, never overlaps the other's timed
//! turn). Medians, ranges,
//! and the ratios Locara / llama-server; see `locara-bench` for why.
//!
//! # Example
//!
//! ```text
//! cargo build --release -p locara-bench -p locara
//! target/release/locara-serve-bench --threads 2 --reps 6
//! target/release/locara-serve-bench --only chat8 --threads 2 --reps 4
//! ```

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use locara_bench::chat::{self, TURNS};
use locara_bench::chat_report::{self, ChatReport, ChatTurn, FootprintGoal, Footprints};
use locara_bench::dirs::{cache_dir, model_path, WorkDir};
use locara_bench::http::{BaseUrl, StreamResult};
use locara_bench::llama_server::{self, LlamaServer, ServeParams};
use locara_bench::locara_server::{self, Locara};
use locara_bench::noise::{self, CpuSnapshot};
use locara_bench::scenario::{self, Concurrent, PROMPT};
use locara_bench::sdist::{Source, LLAMA_CPP_PYTHON_VERSION};
use locara_bench::serve_report::{ServeReport, SideInfo, Target, TokenCounts, Versus};
use locara_bench::server::ServerProcess;
use locara_bench::{parse_percent, progress};
use locara_core::KvType;
use serde::Serialize;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Single-stream decode ratio (Locara / llama-server) Locara must reach:
/// the issue's "done when" for this benchmark.
const SINGLE_DECODE_TARGET: f64 = 0.95;
/// Aggregate decode ratio of the concurrent streams (same source).
const MULTI_DECODE_TARGET: f64 = 1.0;
/// Largest time-to-first-token ratio, for both scenarios (same source).
const TTFT_TARGET: f64 = 1.1;

/// Largest time-to-first-token ratio of every turn of the conversation,
/// both servers at their defaults: issue 13's "done when".
const CHAT_TTFT_GOAL: f64 = 1.0;
/// Largest footprint ratio, Locara's engine worker over llama-server,
/// after one chat at both sides' defaults (same source).
const CHAT_FOOTPRINT_GOAL: f64 = 0.6;

/// Exit status when the run worked but a ratio misses its target.
const EXIT_BELOW_TARGET: u8 = 2;

/// How many attempts the measurement may take per rep asked for, counting
/// the reps discarded because other processes disturbed them.
const ATTEMPTS_PER_REP: u32 = 3;

/// How long a server gets to start and say it is ready (llama-server loads
/// its model in that time; Locara loads on the first request).
const START_DEADLINE: Duration = Duration::from_secs(180);

/// How long any one read of a response may wait: a cold model load on the
/// warm-up request included.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A side's generated tokens are called far fewer when under this share of
/// the other side's.
const FEWER_TOKENS_SHARE: f64 = 0.9;

/// Decode speed and time to first token of Locara's HTTP API against
/// llama-server: at equal settings, one stream and several concurrent
/// streams; and at both servers' defaults, an 8-turn conversation and the
/// footprint after it.
///
/// At equal settings (--only equal): starts llama-server and `locara
/// serve` on ephemeral loopback ports with the same model, threads, K/V
/// type (with flash attention), parallel slots and context per sequence,
/// and sends both the same streamed, greedy chat completion requests (one user message that a small model answers at
/// length; `max_tokens` each). Time to first token is from writing the
/// request to the first event with text; decode tokens/s is (chunks with
/// text − 1) over the time between the first and the last of them, and for
/// concurrent streams all their tokens over the time from the first first
/// token to the last last token. Each repetition runs both scenarios on
/// both sides, alternating which side goes first, after one warm-up each;
/// the table shows per-side medians and ranges and the ratios Locara /
/// llama-server.
///
/// llama-server is built on first use from the llama.cpp tree vendored in
/// llama-cpp-python's source distribution, the same tree as locara-bench's
/// llama-bench (fetched with pip; needs python3, cmake and a C++ compiler;
/// takes minutes), with the same CMake options plus the server (its web UI
/// neither built nor downloaded), and cached in $XDG_CACHE_HOME/locara/bench
/// (default ~/.cache/locara/bench). At equal settings it runs with
/// --no-jinja (the same template path as Locara), one K/V cache the slots
/// share,
/// -c = context × slots (it divides its context among its slots; Locara's
/// context is per sequence), and no prompt cache (--cache-ram 0, and
/// `cache_prompt: false` in every request), and Locara's requests say
/// `cache_prompt: false` too: this comparison is of prefill and decode, not
/// of prompt caches (the chat8 comparison has both sides' caches on).
///
/// Locara runs from a temporary data directory into which the model is
/// imported (`locara import`), at equal settings with a configuration file
/// setting parallel, threads, context, kv_type and keep_alive = "-1";
/// requests carry the daemon's admin token as their bearer token. The
/// locara binary is found next to this one (cargo build --release -p
/// locara) unless --locara names it; --locara-url measures an
/// OpenAI-compatible server that is already running instead (its settings
/// are then its own).
///
/// At their defaults (--only chat8): starts `llama-server -m MODEL --port
/// 0 -t THREADS` (nothing else: its prompt cache on, 4 slots sharing one
/// unified K/V cache of the model's trained context, f16) and `locara
/// serve` with a configuration file setting only threads, and holds the
/// same conversation with both: a system prompt, 8 user messages of about
/// 130 tokens and fixed assistant answers of about 100 tokens between
/// them, the whole history sent each turn, max_tokens 32, greedy. The first
/// conversation is not timed; after it the footprint of llama-server and of
/// Locara's engine worker (Anonymous + Swap on Linux) is read from the OS.
/// Then --reps conversations, each new (its system prompt starts with words
/// of its own), turn by turn on both sides, alternating which side goes
/// first; the table shows each turn's median time to first token. --kv,
/// --parallel, --context and --max-tokens do not apply to it.
///
/// Both llama.cpp versions are printed. Run it on a quiet machine: the
/// result says how much CPU other processes took while it measured (on
/// Linux), and a rep during which they took more than --max-others is
/// measured again.
///
/// Exit status: 0 when every ratio meets its target (at equal settings:
/// 1-stream decode ≥ 0.95, concurrent decode ≥ 1.0, time to first token ≤
/// 1.1 in both scenarios; at the defaults: time to first token ≤ 1.0 on
/// every turn, footprint after one chat ≤ 0.6), 2 when one does not, 1 on
/// an error.
#[derive(Parser, Debug)]
#[command(name = "locara-serve-bench", version, about, long_about)]
struct Cli {
    /// The GGUF model, for both servers [default: the default model in the
    /// data directory, $LOCARA_HOME/models/smollm2+135m/model.gguf]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// CPU threads of each server.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,

    /// Element type of the K and V caches, for both servers: f16, q8_0 or q4_0.
    #[arg(long, value_name = "TYPE", default_value = "q8_0")]
    kv: KvType,

    /// Parallel slots of each server (sequences decoded at once), and the
    /// streams of the concurrent scenario.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    parallel: u32,

    /// Context of each sequence, tokens (llama-server gets -c context × parallel).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..))]
    context: u32,

    /// max_tokens of every request; at least 2, because decode speed is
    /// measured after the first token.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..))]
    max_tokens: u32,

    /// Measured repetitions per side and scenario, after one warm-up each
    /// (in chat8: measured conversations, after one untimed one). An odd
    /// number is rounded up: each side goes first in half of them.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reps: u32,

    /// Run one comparison only: `equal` (1 stream and concurrent streams at
    /// equal settings) or `chat8` (the 8-turn conversation and the
    /// footprint, both servers at their defaults) [default: both]
    #[arg(long, value_name = "SCENARIO")]
    only: Option<Scenario>,

    /// Use this llama-server binary instead of building one.
    #[arg(long, value_name = "PATH")]
    llama_server: Option<PathBuf>,

    /// The llama-cpp-python release whose vendored llama.cpp llama-server is
    /// built from (the default is locara-bench's: the release closest to the
    /// engine's own llama.cpp).
    #[arg(long, value_name = "VERSION", default_value = LLAMA_CPP_PYTHON_VERSION, conflicts_with = "llama_server")]
    llama_cpp_python: String,

    /// Where built llama.cpp tools are cached [default:
    /// $XDG_CACHE_HOME/locara/bench or ~/.cache/locara/bench]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Parallel jobs for building llama-server [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    build_jobs: Option<u32>,

    /// The locara binary to serve with [default: `locara` in this program's
    /// directory]
    #[arg(long, value_name = "PATH")]
    locara: Option<PathBuf>,

    /// Measure the OpenAI-compatible server already running at this URL
    /// (http://HOST:PORT) as Locara's side instead of starting `locara serve`.
    #[arg(long, value_name = "URL", conflicts_with = "locara")]
    locara_url: Option<String>,

    /// Bearer token for the server at --locara-url (a Locara app's token, or
    /// the admin token in its data directory).
    #[arg(long, value_name = "TOKEN", requires = "locara_url")]
    locara_token: Option<String>,

    /// The model name Locara's side is asked for (and the model is imported
    /// under).
    #[arg(long, value_name = "NAME", default_value = "smollm2:135m")]
    locara_model: String,

    /// Discard and repeat a rep during which other processes took more than
    /// this share of the machine's CPU, in percent (Linux only; 100 keeps
    /// every rep). At most 3 attempts per rep are made.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0, value_parser = parse_percent)]
    max_others: f64,

    /// The pause before each turn of the conversation, on both sides, in
    /// milliseconds: what a server does once its answer is sent (Locara
    /// decodes the opening of the conversation's next turn) is over before
    /// the other side's turn is timed, as it would be before a person's next
    /// message. 0 sends each turn as soon as the last one ended.
    #[arg(long, value_name = "MS", default_value_t = 150)]
    turn_gap_ms: u64,

    /// Locate or build llama-server and locara, print both llama.cpp
    /// versions, and exit without measuring.
    #[arg(long)]
    prepare_only: bool,

    /// Print the result as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,

    /// Keep the working directory (server logs, Locara's data directory)
    /// and print where it is; it is kept anyway after an error.
    #[arg(long)]
    keep_work_dir: bool,
}

/// The comparisons this program makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// One stream and concurrent streams, at equal settings.
    Equal,
    /// The 8-turn conversation and the footprint after one chat, both
    /// servers at their defaults.
    Chat8,
}

/// Where Locara's side comes from.
#[derive(Debug)]
enum LocaraSide {
    /// `locara serve`, from this binary (`None`: the default place).
    Binary(Option<PathBuf>),
    /// A server that is already running.
    Url(BaseUrl),
}

/// The checked settings of one benchmark run.
#[derive(Debug)]
struct Config {
    model: PathBuf,
    threads: u32,
    kv_type: KvType,
    parallel: u32,
    context: u32,
    max_tokens: u32,
    reps: u32,
    /// The one comparison to run; `None`: both.
    only: Option<Scenario>,
    llama_server: Source,
    locara: LocaraSide,
    locara_model: String,
    /// Share of the CPU (0 to 1) other processes may take during a rep
    /// before it is discarded.
    max_others: f64,
    /// The pause before each turn of the conversation, on both sides.
    turn_gap: Duration,
    prepare_only: bool,
    json: bool,
    keep_work_dir: bool,
}

impl Config {
    fn from_args(args: Cli) -> Result<Config> {
        let model = model_path(args.model)?;
        // The prompt and its template take well under 128 tokens.
        let needed = args.max_tokens.saturating_add(128);
        ensure!(
            args.only == Some(Scenario::Chat8) || args.context >= needed,
            "--context {} cannot hold a request: it needs about {needed} tokens (max_tokens {} and the prompt)",
            args.context,
            args.max_tokens
        );
        let llama_server = match args.llama_server {
            Some(path) => {
                ensure!(
                    path.is_file(),
                    "--llama-server {}: no such file",
                    path.display()
                );
                Source::Binary(path)
            }
            None => Source::Sdist {
                version: args.llama_cpp_python,
                cache: match args.cache_dir {
                    Some(dir) => dir,
                    None => cache_dir()?,
                },
                jobs: args
                    .build_jobs
                    .map(|j| j as usize)
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            },
        };
        let locara = match args.locara_url {
            Some(url) => {
                let url: BaseUrl = url.parse().context("--locara-url")?;
                LocaraSide::Url(match args.locara_token {
                    Some(token) => url.with_token(token),
                    None => url,
                })
            }
            None => LocaraSide::Binary(args.locara),
        };
        Ok(Config {
            model,
            threads: args.threads,
            kv_type: args.kv,
            parallel: args.parallel,
            context: args.context,
            max_tokens: args.max_tokens,
            reps: even_reps(args.reps),
            only: args.only,
            llama_server,
            locara,
            locara_model: args.locara_model,
            max_others: args.max_others / 100.0,
            turn_gap: Duration::from_millis(args.turn_gap_ms),
            prepare_only: args.prepare_only,
            json: args.json,
            keep_work_dir: args.keep_work_dir,
        })
    }

    /// Whether this run makes the comparison `scenario`.
    fn runs(&self, scenario: Scenario) -> bool {
        self.only.is_none_or(|only| only == scenario)
    }

    fn serve_params(&self) -> ServeParams<'_> {
        ServeParams {
            model: &self.model,
            threads: self.threads,
            kv_type: self.kv_type,
            parallel: self.parallel,
            context: self.context,
        }
    }
}

fn main() -> ExitCode {
    let result = Config::from_args(Cli::parse()).and_then(|config| run(&config));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("locara-serve-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One side of a comparison, up and ready for requests.
struct Side {
    name: &'static str,
    base: BaseUrl,
    /// Its process, if this program started it (ended on drop).
    process: Option<ServerProcess>,
    info: SideInfo,
    /// How it was started, for the report.
    command: String,
}

impl Side {
    /// Processes whose CPU time is this side's: the server and its
    /// children (Locara's engine workers). `None` for a server this
    /// program did not start.
    fn pids(&self) -> Option<Vec<u32>> {
        Some(noise::with_descendants(self.process.as_ref()?.pid()))
    }

    fn one(&self, body: &[u8]) -> Result<StreamResult> {
        scenario::one_stream(&self.base, body, READ_TIMEOUT)
            .with_context(|| format!("{}: one stream", self.name))
    }

    fn concurrent(&self, body: &[u8], n: u32) -> Result<Concurrent> {
        scenario::concurrent(&self.base, body, n, READ_TIMEOUT)
            .with_context(|| format!("{}: {n} concurrent streams", self.name))
    }
}

/// How a comparison's servers are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settings {
    /// The same K/V type, slots and context on both sides, and
    /// llama-server without what Locara's engine lacks.
    Equal,
    /// Each server at its defaults; only the threads are set, alike.
    Defaults,
}

/// Starts llama-server and Locara (or connects to the one at
/// --locara-url) in `work`, with `settings`; [llama-server, Locara].
fn start_sides(
    config: &Config,
    llama: &LlamaServer,
    locara: Option<&Locara>,
    work: &Path,
    settings: Settings,
    notes: &mut Vec<String>,
) -> Result<[Side; 2]> {
    let params = config.serve_params();
    let llama_args = match settings {
        Settings::Equal => llama.args(&params),
        Settings::Defaults => llama_server::default_args(&config.model, config.threads),
    };
    progress(&format!(
        "starting llama-server {}",
        match settings {
            Settings::Equal => "at Locara's settings",
            Settings::Defaults => "at its defaults",
        }
    ));
    let llama_process =
        llama.start_with(&llama_args, &work.join("llama-server.log"), START_DEADLINE)?;
    let llama_side = Side {
        name: "llama-server",
        base: llama_process.base.clone(),
        process: Some(llama_process),
        info: SideInfo {
            location: llama.path.display().to_string(),
            version: llama.describe(),
            tokens: TokenCounts::default(),
        },
        command: format!("{} {}", llama.path.display(), llama_args.join(" ")),
    };

    let locara_side = match (locara, &config.locara) {
        (Some(locara), _) => {
            progress(&format!(
                "importing {} into a temporary data directory as {}",
                config.model.display(),
                config.locara_model
            ));
            let home = locara.prepare_home(work, &config.model, &config.locara_model)?;
            let config_text = match settings {
                Settings::Equal => locara_server::config_toml(&params),
                Settings::Defaults => locara_server::defaults_toml(config.threads),
            };
            progress(&format!(
                "starting locara serve {}",
                match settings {
                    Settings::Equal => "at llama-server's settings",
                    Settings::Defaults => "at its defaults",
                }
            ));
            let process = locara.serve(&home, work, &config_text, START_DEADLINE)?;
            let set: Vec<&str> = config_text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .collect();
            Side {
                name: "Locara",
                base: process.base.clone(),
                process: Some(process),
                info: SideInfo {
                    location: locara.path.display().to_string(),
                    version: locara.describe(),
                    tokens: TokenCounts::default(),
                },
                command: format!(
                    "{} serve --port 0 --config {} ({}), LOCARA_HOME={}",
                    locara.path.display(),
                    work.join("locara.toml").display(),
                    set.join(", "),
                    home.display()
                ),
            }
        }
        (None, LocaraSide::Url(url)) => {
            notes.push(format!(
                "Locara's side is the server at {url}, which this program did not start: its model, threads, K/V type, slots and context are its own, and the CPU it takes counts as other processes' (so no rep is discarded for it)"
            ));
            Side {
                name: "Locara",
                base: url.clone(),
                process: None,
                info: SideInfo {
                    location: url.to_string(),
                    version: locara_server::engine_from_status(url)
                        .unwrap_or_else(|| "unknown (a server this program did not start)".into()),
                    tokens: TokenCounts::default(),
                },
                command: format!("the server at {url}, started elsewhere"),
            }
        }
        (None, LocaraSide::Binary(_)) => bail!("Locara's binary was not located"),
    };
    Ok([llama_side, locara_side])
}

/// Adds the engine's llama.cpp to Locara's version when the binary could
/// not say it before serving (its running worker can).
fn engine_version(locara: Option<&Locara>, side: &mut Side) {
    if locara.is_some_and(|l| l.engine.is_none()) {
        if let Some(engine) = locara_server::engine_from_status(&side.base) {
            side.info.version = format!("{}; engine: {engine}", side.info.version);
        }
    }
}

fn run(config: &Config) -> Result<ExitCode> {
    let llama = LlamaServer::locate(&config.llama_server)?;
    progress(&format!(
        "llama-server: {} ({})",
        llama.describe(),
        llama.path.display()
    ));
    let locara = match &config.locara {
        LocaraSide::Binary(path) => {
            let locara = Locara::locate(path.clone())?;
            progress(&format!(
                "Locara: {} ({})",
                locara.describe(),
                locara.path.display()
            ));
            Some(locara)
        }
        LocaraSide::Url(url) => {
            progress(&format!("Locara: the server at {url}"));
            None
        }
    };
    if config.prepare_only {
        return Ok(ExitCode::SUCCESS);
    }

    // Declared first, dropped last: the servers end before their logs go.
    let mut work = WorkDir::create("locara-serve-bench", "server logs", config.keep_work_dir)?;
    let result = measure_all(config, &llama, locara.as_ref(), &work.path);
    if result.is_err() {
        work.keep = true;
    }
    let report = result?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let tables: Vec<String> = [
            report.equal_settings.as_ref().map(ServeReport::table),
            report.chat8.as_ref().map(ChatReport::table),
        ]
        .into_iter()
        .flatten()
        .collect();
        print!("{}", tables.join("\n"));
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BELOW_TARGET)
    })
}

/// Everything one run found: the comparisons it made.
#[derive(Debug, Serialize)]
struct Report {
    /// 1 stream and concurrent streams, at equal settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    equal_settings: Option<ServeReport>,
    /// The 8-turn conversation and the footprint, at both sides' defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    chat8: Option<ChatReport>,
    /// Every comparison made meets its targets.
    pass: bool,
}

/// Makes the comparisons asked for, one after the other, each with a pair
/// of servers of its own (their settings differ) in a directory of its own
/// under `work`.
fn measure_all(
    config: &Config,
    llama: &LlamaServer,
    locara: Option<&Locara>,
    work: &Path,
) -> Result<Report> {
    let phase_dir = |name: &str| -> Result<PathBuf> {
        let dir = work.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    };
    let equal_settings = if config.runs(Scenario::Equal) {
        let dir = phase_dir("equal-settings")?;
        Some(start_and_measure(config, llama, locara, &dir)?)
    } else {
        None
    };
    let chat8 = if config.runs(Scenario::Chat8) {
        Some(measure_chat(config, llama, locara, &phase_dir("chat8")?)?)
    } else {
        None
    };
    let pass =
        equal_settings.as_ref().is_none_or(|r| r.pass) && chat8.as_ref().is_none_or(|r| r.pass);
    Ok(Report {
        equal_settings,
        chat8,
        pass,
    })
}

/// The comparison at equal settings: 1 stream and concurrent streams.
fn start_and_measure(
    config: &Config,
    llama: &LlamaServer,
    locara: Option<&Locara>,
    work: &Path,
) -> Result<ServeReport> {
    let mut notes = Vec::new();
    let mut sides = start_sides(config, llama, locara, work, Settings::Equal, &mut notes)?;
    // The model field is not checked by llama-server; its prompt cache is
    // turned off per request too.
    let bodies = [
        scenario::chat_body(
            &config.locara_model,
            PROMPT,
            config.max_tokens,
            &[("cache_prompt", Value::Bool(false))],
        ),
        // Locara's reuse of a cached prompt is turned off the same way.
        scenario::chat_body(
            &config.locara_model,
            PROMPT,
            config.max_tokens,
            &[("cache_prompt", Value::Bool(false))],
        ),
    ];

    warm_up(config, &mut sides, &bodies)?;
    let samples = measure(config, &mut sides, &bodies, &mut notes)?;
    engine_version(locara, &mut sides[1]);
    token_notes(config, &sides, &mut notes);

    let versus = |l: &[f64], r: &[f64], target, what: &str| {
        Versus::new(l, r, target).with_context(|| format!("no usable samples of {what}"))
    };
    let single_decode = versus(
        &samples.single_decode[0],
        &samples.single_decode[1],
        Target::AtLeast(SINGLE_DECODE_TARGET),
        "1-stream decode",
    )?;
    let single_ttft_ms = versus(
        &samples.single_ttft_ms[0],
        &samples.single_ttft_ms[1],
        Target::AtMost(TTFT_TARGET),
        "1-stream time to first token",
    )?;
    let multi_decode = versus(
        &samples.multi_decode[0],
        &samples.multi_decode[1],
        Target::AtLeast(MULTI_DECODE_TARGET),
        "concurrent decode",
    )?;
    let multi_ttft_ms = versus(
        &samples.multi_ttft_ms[0],
        &samples.multi_ttft_ms[1],
        Target::AtMost(TTFT_TARGET),
        "concurrent time to first token",
    )?;
    let pass = single_decode.pass && single_ttft_ms.pass && multi_decode.pass && multi_ttft_ms.pass;
    let [llama_side, locara_side] = sides;
    // Stop both before reporting, so no stray process outlives a report.
    drop(llama_side.process);
    drop(locara_side.process);
    Ok(ServeReport {
        model: config.model.clone(),
        threads: config.threads,
        kv_type: config.kv_type.to_string(),
        parallel: config.parallel,
        context: config.context,
        max_tokens: config.max_tokens,
        reps: config.reps,
        prompt: PROMPT.to_string(),
        llama_server: llama_side.info,
        locara: locara_side.info,
        llama_server_command: llama_side.command,
        locara_command: locara_side.command,
        single_decode,
        single_ttft_ms,
        multi_decode,
        multi_ttft_ms,
        others_cpu_share: samples.others_cpu_share,
        pass,
        notes,
    })
}

/// One uncounted run of each scenario on each side: Locara loads its model
/// on the first request, and page cache, CPU caches and clocks settle.
fn warm_up(config: &Config, sides: &mut [Side; 2], bodies: &[Vec<u8>; 2]) -> Result<()> {
    progress("warming up (not counted): llama-server, then Locara");
    for (side, body) in sides.iter_mut().zip(bodies) {
        let one = side.one(body)?;
        side.info.tokens.add(&one);
        let many = side.concurrent(body, config.parallel)?;
        for s in &many.streams {
            side.info.tokens.add(s);
        }
    }
    Ok(())
}

/// Samples of the measured reps; index 0 is llama-server, 1 Locara.
#[derive(Debug, Default)]
struct Samples {
    single_decode: [Vec<f64>; 2],
    single_ttft_ms: [Vec<f64>; 2],
    multi_decode: [Vec<f64>; 2],
    multi_ttft_ms: [Vec<f64>; 2],
    others_cpu_share: Option<f64>,
}

/// One rep's figures of one side.
#[derive(Debug, Clone, Copy)]
struct RepFigures {
    single_decode: f64,
    single_ttft_ms: f64,
    multi_decode: f64,
    multi_ttft_ms: f64,
}

/// `reps` rounded up to an even number.
fn even_reps(reps: u32) -> u32 {
    let even = reps + reps % 2;
    if even != reps {
        progress(&format!(
            "--reps {reps} rounded up to {even}, so that each side goes first in half of the reps"
        ));
    }
    even
}

/// The order of the two sides (0 llama-server, 1 Locara) in the rep after
/// `measured` measured ones: alternating, by measured reps rather than
/// attempts, so that with an even number of reps each side goes first
/// equally often. The side that goes second can be slower by more than the
/// difference measured: on this kind of machine, the first request after a
/// pause (the first turn of a new conversation) ran about 100 ms faster
/// for whichever side went first.
fn first_goes(measured: u32) -> [usize; 2] {
    if measured.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// The measured reps, alternating which side goes first. A rep that other
/// processes disturbed is discarded and run again (within
/// [`ATTEMPTS_PER_REP`]).
fn measure(
    config: &Config,
    sides: &mut [Side; 2],
    bodies: &[Vec<u8>; 2],
    notes: &mut Vec<String>,
) -> Result<Samples> {
    let mut samples = Samples::default();
    let mut measured = 0u32;
    let mut discarded = 0;
    let mut attempt = 0;
    let mut serialised = [false; 2];
    let started = cpu_snapshot(sides);
    while measured < config.reps && attempt < config.reps * ATTEMPTS_PER_REP {
        attempt += 1;
        let rep_started = cpu_snapshot(sides);
        // Alternate which side goes first, so a steady drift (a machine
        // warming up, a build finishing) favours neither; a discarded rep's
        // order is run again, so each side goes first in half of the reps.
        let order = first_goes(measured);
        let mut singles: [Option<StreamResult>; 2] = [None, None];
        let mut multis: [Option<Concurrent>; 2] = [None, None];
        for &i in &order {
            singles[i] = Some(sides[i].one(&bodies[i])?);
        }
        for &i in &order {
            multis[i] = Some(sides[i].concurrent(&bodies[i], config.parallel)?);
        }
        let mut figures = Vec::with_capacity(2);
        for i in 0..2 {
            let single = singles[i].take().expect("both sides ran");
            let multi = multis[i].take().expect("both sides ran");
            let side = &mut sides[i];
            side.info.tokens.add(&single);
            for s in &multi.streams {
                side.info.tokens.add(s);
            }
            serialised[i] |= !multi.overlapped();
            figures.push(RepFigures {
                single_decode: single
                    .decode_tps()
                    .with_context(|| format!("{}'s stream had fewer than 2 tokens", side.name))?,
                single_ttft_ms: single.ttft() * 1000.0,
                multi_decode: multi
                    .aggregate_tps()
                    .with_context(|| format!("{}'s concurrent streams took no time", side.name))?,
                multi_ttft_ms: multi.median_ttft().expect("at least 2 streams") * 1000.0,
            });
        }

        let others = others_since(rep_started);
        let disturbed = others.is_some_and(|share| share > config.max_others);
        let (l, r) = (figures[0], figures[1]);
        progress(&format!(
            "{} {}/{}: 1 stream {:.1} / {:.1} tokens/s, first token {:.1} / {:.1} ms; {} streams {:.1} / {:.1} tokens/s, first token {:.1} / {:.1} ms (llama-server / Locara){}",
            if disturbed { "discarded" } else { "rep" },
            measured + u32::from(!disturbed),
            config.reps,
            l.single_decode,
            r.single_decode,
            l.single_ttft_ms,
            r.single_ttft_ms,
            config.parallel,
            l.multi_decode,
            r.multi_decode,
            l.multi_ttft_ms,
            r.multi_ttft_ms,
            others_said(others, disturbed),
        ));
        if disturbed {
            discarded += 1;
            continue;
        }
        measured += 1;
        for (i, f) in figures.iter().enumerate() {
            samples.single_decode[i].push(f.single_decode);
            samples.single_ttft_ms[i].push(f.single_ttft_ms);
            samples.multi_decode[i].push(f.multi_decode);
            samples.multi_ttft_ms[i].push(f.multi_ttft_ms);
        }
    }
    check_reps(config, measured, discarded, attempt, notes)?;
    for (i, side) in sides.iter().enumerate() {
        if serialised[i] {
            notes.push(format!(
                "{} did not decode all {} concurrent streams at once in some reps (one stream ended before another began)",
                side.name, config.parallel
            ));
        }
    }
    samples.others_cpu_share = others_since(started);
    Ok(samples)
}

/// The CPU counters now, counting both servers and their children (Locara's
/// engine workers) as ours, with the processes counted; `None` off Linux or
/// for a server this program did not start.
fn cpu_snapshot(sides: &[Side; 2]) -> Option<(Vec<u32>, CpuSnapshot)> {
    let mut pids = sides[0].pids()?;
    pids.extend(sides[1].pids()?);
    let snapshot = CpuSnapshot::take_of(&pids)?;
    Some((pids, snapshot))
}

/// Share of the CPU that other processes took since `before`, counting the
/// same processes as ours.
fn others_since(before: Option<(Vec<u32>, CpuSnapshot)>) -> Option<f64> {
    let (pids, before) = before?;
    Some(before.others_share(&CpuSnapshot::take_of(&pids)?))
}

/// The end of a rep's progress line: what other processes took.
fn others_said(others: Option<f64>, disturbed: bool) -> String {
    let share = others
        .map(|share| format!("; other processes took {:.0} % of the CPU", share * 100.0))
        .unwrap_or_default();
    let more = if disturbed {
        ", more than --max-others"
    } else {
        ""
    };
    format!("{share}{more}")
}

/// Fails when no rep ran undisturbed; notes reps lost to other processes.
fn check_reps(
    config: &Config,
    measured: u32,
    discarded: u32,
    attempts: u32,
    notes: &mut Vec<String>,
) -> Result<()> {
    ensure!(
        measured > 0,
        "other processes took more than --max-others {} % of the CPU in every one of {attempts} reps; rerun on a quiet machine",
        config.max_others * 100.0
    );
    if measured < config.reps {
        notes.push(format!(
            "only {measured} of {} reps ran undisturbed by other processes",
            config.reps
        ));
    }
    if discarded > 0 {
        notes.push(format!(
            "{discarded} reps were discarded and repeated because other processes took more than {} % of the CPU",
            config.max_others * 100.0
        ));
    }
    Ok(())
}

/// How long Locara's model may stay busy after the last answer of a
/// conversation before its footprint is read anyway.
const IDLE_DEADLINE: Duration = Duration::from_secs(10);

/// The comparison at both servers' defaults: the 8-turn conversation, and
/// the footprint after the first one.
fn measure_chat(
    config: &Config,
    llama: &LlamaServer,
    locara: Option<&Locara>,
    work: &Path,
) -> Result<ChatReport> {
    let mut notes = Vec::new();
    let mut sides = start_sides(config, llama, locara, work, Settings::Defaults, &mut notes)?;
    // llama-server logs its slots and K/V caches while it loads, before it
    // says it is ready.
    let llama_server_settings = llama_server::settings_from_log(
        &fs::read_to_string(work.join("llama-server.log")).unwrap_or_default(),
    );

    // The chat the footprint is taken after: the first requests both
    // servers see (Locara loads its model on the first). Not timed.
    let mut conversation = 1;
    progress(&format!(
        "chat8: conversation {conversation} (not timed; the footprint is read after it), {TURNS} turns, llama-server first each turn"
    ));
    converse(config, &mut sides, conversation, [0, 1])?;
    let after_one_chat = footprints(config, &sides, "after one chat", &mut notes);
    let locara_settings = locara_server::model_in_status(&sides[1].base, &config.locara_model)
        .ok()
        .map(|m| m.describe());

    let samples = measure_conversations(config, &mut sides, &mut conversation, &mut notes)?;
    let after_last_chat = footprints(config, &sides, "after the last conversation", &mut notes);
    engine_version(locara, &mut sides[1]);

    let mut turns = Vec::with_capacity(TURNS);
    for (n, turn) in (1u32..).zip(&samples.turns) {
        let ttft_ms = Versus::new(
            &turn.ttft_ms[0],
            &turn.ttft_ms[1],
            Target::AtMost(CHAT_TTFT_GOAL),
        )
        .with_context(|| format!("no usable samples of turn {n}'s time to first token"))?;
        turns.push(ChatTurn {
            turn: n,
            llama_server_prompt_tokens: turn.prompt_tokens[0],
            locara_prompt_tokens: turn.prompt_tokens[1],
            llama_server_cached_tokens: chat_report::median_of_known(&turn.cached_tokens[0]),
            locara_cached_tokens: chat_report::median_of_known(&turn.cached_tokens[1]),
            llama_server_prefill_ms: chat_report::median_of_known(&turn.prefill_ms[0]),
            locara_prefill_ms: chat_report::median_of_known(&turn.prefill_ms[1]),
            ttft_ms,
        });
    }
    chat_notes(&turns, &mut notes);
    notes.push(format!(
        "each turn was sent {} ms after the one before it ended, on either side (--turn-gap-ms)",
        config.turn_gap.as_millis()
    ));
    let footprint_goal = FootprintGoal::new(&after_one_chat, Target::AtMost(CHAT_FOOTPRINT_GOAL));
    let pass = chat_report::all_pass(&turns, &footprint_goal);
    let [llama_side, locara_side] = sides;
    // Stop both before reporting, so no stray process outlives a report.
    drop(llama_side.process);
    drop(locara_side.process);
    Ok(ChatReport {
        model: config.model.clone(),
        threads: config.threads,
        max_tokens: chat::MAX_TOKENS,
        reps: config.reps,
        system_prompt: chat::SYSTEM_PROMPT.to_string(),
        llama_server: llama_side.info,
        locara: locara_side.info,
        llama_server_command: llama_side.command,
        locara_command: locara_side.command,
        llama_server_settings,
        locara_settings,
        turns,
        after_one_chat,
        after_last_chat,
        conversations: conversation,
        footprint_goal,
        others_cpu_share: samples.others_cpu_share,
        pass,
        notes,
    })
}

/// One turn's samples over the measured conversations; index 0 is
/// llama-server, 1 Locara.
#[derive(Debug, Default)]
struct TurnSamples {
    ttft_ms: [Vec<f64>; 2],
    /// Prompt tokens as the last measured conversation's `usage` said.
    prompt_tokens: [Option<u32>; 2],
    /// Prompt tokens each server said it took from its cache, per
    /// conversation.
    cached_tokens: [Vec<Option<u32>>; 2],
    /// Each server's own prefill time, milliseconds, per conversation.
    prefill_ms: [Vec<Option<f64>>; 2],
}

/// What the measured conversations found.
#[derive(Debug)]
struct ChatSamples {
    /// One per turn, in turn order.
    turns: Vec<TurnSamples>,
    /// Share of the CPU other processes took meanwhile (Linux only).
    others_cpu_share: Option<f64>,
}

/// One conversation, [`TURNS`] turns on both sides: each turn on side
/// `order[0]`, then on `order[1]`, the same messages on both. Returns each
/// side's streams in turn order.
fn converse(
    config: &Config,
    sides: &mut [Side; 2],
    conversation: u32,
    order: [usize; 2],
) -> Result<[Vec<StreamResult>; 2]> {
    let mut streams: [Vec<StreamResult>; 2] = Default::default();
    for turn in 0..TURNS {
        // The model field is not checked by llama-server; nothing else is
        // added for either side, so each runs as its defaults say.
        let body = scenario::messages_body(
            &config.locara_model,
            chat::messages(conversation, turn),
            chat::MAX_TOKENS,
            &[],
        );
        for &i in &order {
            std::thread::sleep(config.turn_gap);
            let side = &mut sides[i];
            let stream =
                scenario::one_stream(&side.base, &body, READ_TIMEOUT).with_context(|| {
                    format!(
                        "{}: conversation {conversation}, turn {}",
                        side.name,
                        turn + 1
                    )
                })?;
            side.info.tokens.add(&stream);
            streams[i].push(stream);
        }
    }
    Ok(streams)
}

/// The measured conversations, each a new one (`conversation` counts them),
/// alternating which side goes first. A conversation that other processes
/// disturbed is discarded and held again (within [`ATTEMPTS_PER_REP`]).
fn measure_conversations(
    config: &Config,
    sides: &mut [Side; 2],
    conversation: &mut u32,
    notes: &mut Vec<String>,
) -> Result<ChatSamples> {
    let mut turns: Vec<TurnSamples> = (0..TURNS).map(|_| TurnSamples::default()).collect();
    let mut measured = 0u32;
    let mut discarded = 0;
    let mut attempt = 0;
    let started = cpu_snapshot(sides);
    while measured < config.reps && attempt < config.reps * ATTEMPTS_PER_REP {
        attempt += 1;
        *conversation += 1;
        let rep_started = cpu_snapshot(sides);
        // Alternate which side goes first, so a steady drift favours
        // neither (see first_goes).
        let order = first_goes(measured);
        let streams = converse(config, sides, *conversation, order)?;
        let others = others_since(rep_started);
        let disturbed = others.is_some_and(|share| share > config.max_others);
        let ms = |side: &[StreamResult]| {
            side.iter()
                .map(|s| format!("{:.0}", s.ttft() * 1000.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        progress(&format!(
            "chat8 {} {}/{} (conversation {}, {} first): first token ms, turns 1–{TURNS}: llama-server {}; Locara {}{}",
            if disturbed { "discarded" } else { "rep" },
            measured + u32::from(!disturbed),
            config.reps,
            *conversation,
            sides[order[0]].name,
            ms(&streams[0]),
            ms(&streams[1]),
            others_said(others, disturbed),
        ));
        if disturbed {
            discarded += 1;
            continue;
        }
        measured += 1;
        for (i, side) in streams.iter().enumerate() {
            for (turn, stream) in turns.iter_mut().zip(side) {
                turn.ttft_ms[i].push(stream.ttft() * 1000.0);
                if let Some(usage) = stream.usage {
                    turn.prompt_tokens[i] = Some(usage.prompt_tokens);
                }
                turn.cached_tokens[i].push(stream.cached_prompt_tokens);
                turn.prefill_ms[i].push(stream.server_prefill_ms);
            }
        }
    }
    check_reps(config, measured, discarded, attempt, notes)?;
    Ok(ChatSamples {
        turns,
        others_cpu_share: others_since(started),
    })
}

/// The footprints, read from the OS now, of llama-server and of Locara's
/// engine worker (its pid from `/locara/v1/status`, once it has no sequence
/// busy) and daemon. What cannot be read is `None`, and `notes` say why.
fn footprints(
    config: &Config,
    sides: &[Side; 2],
    when: &str,
    notes: &mut Vec<String>,
) -> Footprints {
    let mut read = |what: &str, pid: Result<u32>| match pid.and_then(|pid| {
        locara_platform::process_footprint(pid).with_context(|| format!("process {pid}"))
    }) {
        Ok(f) => Some(f),
        Err(e) => {
            notes.push(format!(
                "the footprint of {what} {when} could not be read: {e:#}"
            ));
            None
        }
    };
    let llama_pid = sides[0]
        .process
        .as_ref()
        .map(ServerProcess::pid)
        .context("llama-server was not started by this program");
    let daemon_pid = sides[1].process.as_ref().map(ServerProcess::pid);
    let worker_pid = idle_worker(config, &sides[1].base).and_then(|pid| {
        // The pid is the daemon's child when this program started the
        // daemon: a check that the status named the right process.
        if let Some(daemon) = daemon_pid {
            ensure!(
                noise::with_descendants(daemon).contains(&pid),
                "/locara/v1/status names process {pid}, which is not the daemon's ({daemon})"
            );
        }
        Ok(pid)
    });
    Footprints {
        llama_server: read("llama-server", llama_pid),
        locara_worker: read("Locara's engine worker", worker_pid),
        locara_daemon: daemon_pid.and_then(|pid| read("Locara's daemon", Ok(pid))),
    }
}

/// The pid of Locara's engine worker for the benchmark's model, once the
/// status shows none of its sequences busy (at most [`IDLE_DEADLINE`]: an
/// answer's stream may end a moment before the worker is done with it).
fn idle_worker(config: &Config, base: &BaseUrl) -> Result<u32> {
    let started = std::time::Instant::now();
    loop {
        let model = locara_server::model_in_status(base, &config.locara_model)?;
        if model.sequences_busy.unwrap_or(0) == 0 || started.elapsed() > IDLE_DEADLINE {
            return Ok(model.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Notes on the conversation that a reader of the table needs.
fn chat_notes(turns: &[ChatTurn], notes: &mut Vec<String>) {
    notes.push(format!(
        "each turn sends the same messages to both sides: the assistant's answers in the history are written in advance, not the {} tokens each server generated, so a server that reuses its cache still prefills the previous answer and the new user message each turn",
        chat::MAX_TOKENS
    ));
    let differ: Vec<String> = turns
        .iter()
        .filter(|t| {
            matches!(
                (t.llama_server_prompt_tokens, t.locara_prompt_tokens),
                (Some(a), Some(b)) if a != b
            )
        })
        .map(|t| t.turn.to_string())
        .collect();
    if !differ.is_empty() {
        notes.push(format!(
            "the prompt is a different number of tokens on the two sides in turns {}: llama-server applies the model's chat template with its Jinja engine (its default), Locara with llama.cpp's built-in template function",
            differ.join(", ")
        ));
    }
    let no_reuse: Vec<String> = turns
        .iter()
        .filter(|t| t.turn > 1 && t.llama_server_cached_tokens == Some(0.0))
        .map(|t| t.turn.to_string())
        .collect();
    if !no_reuse.is_empty() {
        notes.push(format!(
            "llama-server reused no cached prompt tokens in turns {}, though its prompt cache is on by default",
            no_reuse.join(", ")
        ));
    }
}

/// Notes on token counts that make the sides less comparable.
fn token_notes(config: &Config, sides: &[Side; 2], notes: &mut Vec<String>) {
    for side in sides {
        let t = &side.info.tokens;
        if t.stopped_early > 0 {
            notes.push(format!(
                "{} of {} {} streams ended before max_tokens {} (the model stopped)",
                t.stopped_early, t.streams, side.name, config.max_tokens
            ));
        }
        if t.usage_mismatches > 0 {
            notes.push(format!(
                "{}: in {} of {} streams the chunks with text were not one per token (see tokens); its decode speed counts chunks",
                side.name, t.usage_mismatches, t.streams
            ));
        }
    }
    let (l, r) = (&sides[0].info.tokens, &sides[1].info.tokens);
    let fewer = |a: u32, b: u32| f64::from(a) < FEWER_TOKENS_SHARE * f64::from(b);
    if fewer(l.min, r.min) || fewer(r.min, l.min) {
        notes.push(format!(
            "one side stops much earlier: fewest tokens in a stream llama-server {}, Locara {}",
            l.min, r.min
        ));
    }
    // llama-server's prompt cache is off here; a Locara that reuses the
    // repeated prompt skips its prefill, which this comparison does not
    // measure alike.
    if r.max_cached_prompt_tokens > l.max_cached_prompt_tokens {
        notes.push(format!(
            "Locara took up to {} prompt tokens from its cache instead of prefilling them (llama-server up to {}): its time to first token here is not measured like llama-server's, whose prompt cache is off",
            r.max_cached_prompt_tokens, l.max_cached_prompt_tokens
        ));
    }
    if let (Some(a), Some(b)) = (l.prompt_tokens, r.prompt_tokens) {
        if a != b {
            notes.push(format!(
                "the prompt is {a} tokens on llama-server and {b} on Locara: their chat templates differ"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_issue() {
        let a = Cli::try_parse_from(["locara-serve-bench"]).unwrap();
        assert_eq!((a.threads, a.kv, a.reps), (2, KvType::Q8_0, 6));
        assert_eq!((even_reps(5), even_reps(6), even_reps(1)), (6, 6, 2));
        assert_eq!(
            (first_goes(0), first_goes(1), first_goes(2)),
            ([0, 1], [1, 0], [0, 1])
        );
        assert_eq!((a.parallel, a.context, a.max_tokens), (4, 4096, 128));
        assert_eq!(a.llama_cpp_python, LLAMA_CPP_PYTHON_VERSION);
        assert_eq!(a.locara_model, "smollm2:135m");
        assert_eq!(a.max_others, 5.0);
        assert_eq!(a.only, None, "both comparisons unless asked");
    }

    #[test]
    fn only_picks_one_comparison() {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let config = |only: &str| {
            let args = [
                "locara-serve-bench",
                "--model",
                exe,
                "--llama-server",
                exe,
                "--only",
                only,
                // Too small for the equal-settings requests, which chat8
                // does not send.
                "--context",
                "256",
                "--max-tokens",
                "200",
            ];
            Config::from_args(Cli::try_parse_from(args).unwrap())
        };
        let chat = config("chat8").unwrap();
        assert!(chat.runs(Scenario::Chat8) && !chat.runs(Scenario::Equal));
        let err = config("equal").unwrap_err();
        assert!(err.to_string().contains("--context 256"), "{err}");
        let both = Config::from_args(
            Cli::try_parse_from(["locara-serve-bench", "--model", exe, "--llama-server", exe])
                .unwrap(),
        )
        .unwrap();
        assert!(both.runs(Scenario::Chat8) && both.runs(Scenario::Equal));
    }

    #[test]
    fn chat_notes_name_the_turns_where_the_sides_differ() {
        let turn = |n: u32, tokens: (u32, u32), cached: Option<f64>| ChatTurn {
            turn: n,
            llama_server_prompt_tokens: Some(tokens.0),
            locara_prompt_tokens: Some(tokens.1),
            llama_server_cached_tokens: cached,
            locara_cached_tokens: None,
            llama_server_prefill_ms: None,
            locara_prefill_ms: None,
            ttft_ms: Versus::new(&[100.0], &[100.0], Target::AtMost(CHAT_TTFT_GOAL)).unwrap(),
        };
        let mut notes = Vec::new();
        chat_notes(
            &[
                turn(1, (190, 190), Some(0.0)),
                turn(2, (420, 418), Some(0.0)),
                turn(3, (650, 650), Some(400.0)),
            ],
            &mut notes,
        );
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("written in advance"), "{notes:?}");
        assert!(notes[1].contains("in turns 2:"), "{notes:?}");
        assert!(
            notes[2].contains("no cached prompt tokens in turns 2,"),
            "turn 1 has nothing to reuse: {notes:?}"
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["locara-serve-bench", "--kv", "q5_1"][..],
            &["locara-serve-bench", "--threads", "0"],
            &["locara-serve-bench", "--parallel", "1"],
            &["locara-serve-bench", "--max-tokens", "1"],
            &[
                "locara-serve-bench",
                "--locara",
                "x",
                "--locara-url",
                "http://h:1",
            ],
            &[
                "locara-serve-bench",
                "--llama-server",
                "x",
                "--llama-cpp-python",
                "0.3.30",
            ],
            &["locara-serve-bench", "--max-others", "101"],
            &["locara-serve-bench", "--only", "chat9"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn config_checks_files_urls_and_context() {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec!["locara-serve-bench", "--model", exe, "--llama-server", exe];
            args.extend(extra);
            Config::from_args(Cli::try_parse_from(args).unwrap())
        };
        assert!(parse(&[]).is_ok());
        let err = parse(&["--context", "256", "--max-tokens", "200"]).unwrap_err();
        assert!(err.to_string().contains("--context 256"), "{err}");
        let err = parse(&["--locara-url", "https://h:1"]).unwrap_err();
        assert!(format!("{err:#}").contains("--locara-url"), "{err:#}");
        let config = parse(&["--locara-url", "http://127.0.0.1:8080"]).unwrap();
        assert!(matches!(config.locara, LocaraSide::Url(_)));
        let err = Config::from_args(
            Cli::try_parse_from(["locara-serve-bench", "--model", "/nonexistent/m.gguf"]).unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("--model /nonexistent/m.gguf"),
            "{err}"
        );
    }
}
