//! `locara-bench`: prefill and decode tokens per second of the Locara engine
//! worker path against llama.cpp's own `llama-bench`, on the same model,
//! threads and K/V cache type.
//!
//! # What it measures
//!
//! * **prefill**: prompt tokens per second of one prompt of `--prompt-tokens`
//!   tokens (llama-bench's `pp512`);
//! * **decode**: generated tokens per second over `--gen-tokens` tokens,
//!   greedy on Locara's side (llama-bench's `tg128`). Locara's generation
//!   continues a short prompt, so llama-bench's test starts at the same
//!   context depth (`-d`, the prompt's length in tokens).
//!
//! Locara's figures come from the path users run: this binary spawns itself
//! as an engine worker (`locara-bench engine`, as `locara run` spawns
//! `locara engine`), loads the model over the framed protocol and reads the
//! worker's own generation stats. Tokenizing, the batch loop, sampling and
//! sending every token to the parent are inside the measurement; llama-bench
//! times bare `llama_decode` calls on random tokens. Both run with flash
//! attention, mmap'd weights and one sequence. The ratio Locara / llama-bench
//! is the cost of everything the worker adds to llama.cpp.
//!
//! # Why pairs, alternating order and medians
//!
//! The machines this runs on are small and shared: a neighbour on the same
//! host, frequency scaling or a thermal limit moves throughput by tens of
//! percent within a minute. So each test is measured in pairs: llama-bench's
//! run of that one test and Locara's, back to back, a second or two apart,
//! so that both see the same machine. The order alternates from rep to rep
//! (llama-bench first, then Locara first, ...), which cancels a steady drift.
//! The ratio that counts is the median of the pairs' ratios, which one
//! disturbed pair cannot move; each side's median and range, and the ratio
//! of the two medians, are printed too, so that a noisy run looks noisy.
//! Both sides get a warm-up run that is not counted.
//!
//! # Example
//!
//! ```text
//! cargo build --release -p locara-bench
//! target/release/locara-bench --model smollm2.gguf --threads 2 --reps 5
//! ```

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use locara_bench::dirs::{cache_dir, model_path};
use locara_bench::engine::{Engine, LoadParams};
use locara_bench::llama_bench::{LlamaBench, RunParams, Test};
use locara_bench::noise::CpuSnapshot;
use locara_bench::report::{LlamaBenchInfo, LocaraInfo, Report};
use locara_bench::sdist::{Source, LLAMA_CPP_PYTHON_VERSION};
use locara_bench::stats::Comparison;
use locara_bench::{parse_percent, progress};
use locara_core::KvType;
use std::path::PathBuf;
use std::process::ExitCode;

/// Prefill ratio (Locara / llama-bench) the engine must reach: the issue's
/// "done when" for the benchmark.
const PREFILL_TARGET: f64 = 0.95;
/// Decode ratio the engine must reach (same source).
const DECODE_TARGET: f64 = 0.97;

/// Exit status when the run worked but a ratio is below its target.
const EXIT_BELOW_TARGET: u8 = 2;

/// How many attempts the measurement may take per rep asked for, counting
/// the reps discarded because other processes disturbed them.
const ATTEMPTS_PER_REP: u32 = 3;

/// Prefill and decode tokens/s of the Locara engine worker against llama.cpp's
/// llama-bench on the same model, threads and K/V type.
///
/// Each repetition measures two pairs: llama-bench's prefill test and a
/// Locara prefill of the same length, back to back; then llama-bench's
/// decode test and a greedy Locara generation of the same length. Which side
/// goes first alternates from rep to rep. The ratio Locara / llama-bench
/// that counts is the median of the pairs' ratios; the table also shows each
/// side's median and range.
///
/// llama-bench is built on first use from the llama.cpp tree vendored in
/// llama-cpp-python's source distribution (fetched with pip; needs python3,
/// cmake and a C++ compiler; takes minutes) and cached in
/// $XDG_CACHE_HOME/locara/bench (default ~/.cache/locara/bench).
///
/// Run it on a quiet machine: with a compute thread on every core, any other
/// busy process slows both sides, and unevenly; the result says how much CPU
/// other processes took while it measured (on Linux).
///
/// Exit status: 0 when both ratios meet their targets (prefill ≥ 0.95,
/// decode ≥ 0.97), 2 when one does not, 1 on an error.
#[derive(Parser, Debug)]
#[command(
    name = "locara-bench",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The engine worker (started by locara-bench itself).
    #[command(hide = true)]
    Engine,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// The GGUF model [default: the default model in the data directory,
    /// $LOCARA_HOME/models/smollm2+135m/model.gguf]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// CPU threads, for both sides (prefill and decode).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,

    /// Element type of the K and V caches, for both sides: f16, q8_0 or q4_0.
    #[arg(long, value_name = "TYPE", default_value = "q8_0")]
    kv: KvType,

    /// Measured repetitions per side, after one warm-up each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reps: u32,

    /// Prompt length of the prefill test, tokens (llama-bench's -p).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_tokens: u32,

    /// Generated tokens of the decode test (llama-bench's -n); at least 2,
    /// because decode speed is measured after the first token.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..))]
    gen_tokens: u32,

    /// Context the Locara worker loads, tokens; must hold the prefill prompt
    /// and the decode test. llama-bench sizes its own to the test.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    context: u32,

    /// Use this llama-bench binary instead of building one.
    #[arg(long, value_name = "PATH")]
    llama_bench: Option<PathBuf>,

    /// The llama-cpp-python release whose vendored llama.cpp llama-bench is
    /// built from (the default is the release closest to the engine's own
    /// llama.cpp).
    #[arg(long, value_name = "VERSION", default_value = LLAMA_CPP_PYTHON_VERSION, conflicts_with = "llama_bench")]
    llama_cpp_python: String,

    /// Where built llama-bench binaries are cached [default:
    /// $XDG_CACHE_HOME/locara/bench or ~/.cache/locara/bench]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Parallel jobs for building llama-bench [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    build_jobs: Option<u32>,

    /// Discard and repeat a rep during which other processes took more than
    /// this share of the machine's CPU, in percent (Linux only; 100 keeps
    /// every rep). At most 3 attempts per rep are made.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0, value_parser = parse_percent)]
    max_others: f64,

    /// Measure only this test: prefill or decode [default: both]
    #[arg(long, value_name = "TEST")]
    only: Option<Test>,

    /// Locate or build llama-bench, print both llama.cpp versions, and exit
    /// without measuring.
    #[arg(long)]
    prepare_only: bool,

    /// Print the result as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,

    /// Pass llama.cpp's own log of the Locara worker through to stderr.
    #[arg(long)]
    engine_log: bool,
}

/// The checked settings of one benchmark run.
#[derive(Debug)]
struct Config {
    model: PathBuf,
    threads: u32,
    kv_type: KvType,
    reps: u32,
    prompt_tokens: u32,
    gen_tokens: u32,
    context: u32,
    source: Source,
    /// Share of the CPU (0 to 1) other processes may take during a rep
    /// before it is discarded.
    max_others: f64,
    /// Which tests run.
    prefill: bool,
    decode: bool,
    prepare_only: bool,
    json: bool,
    engine_log: bool,
}

impl Config {
    fn from_args(args: BenchArgs) -> Result<Config> {
        let model = model_path(args.model)?;
        let needed = tokens_needed(args.prompt_tokens, args.gen_tokens);
        ensure!(
            args.context >= needed,
            "--context {} cannot hold the tests: they need at least {needed} tokens (prompt {} + generated {})",
            args.context,
            args.prompt_tokens,
            args.gen_tokens
        );
        let source = match args.llama_bench {
            Some(path) => {
                ensure!(
                    path.is_file(),
                    "--llama-bench {}: no such file",
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
        Ok(Config {
            model,
            threads: args.threads,
            kv_type: args.kv,
            reps: args.reps,
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            context: args.context,
            source,
            max_others: args.max_others / 100.0,
            prefill: args.only != Some(Test::Decode),
            decode: args.only != Some(Test::Prefill),
            prepare_only: args.prepare_only,
            json: args.json,
            engine_log: args.engine_log,
        })
    }

    /// The tests this run measures, in the order each rep runs them.
    fn tests(&self) -> impl Iterator<Item = Test> {
        [(self.prefill, Test::Prefill), (self.decode, Test::Decode)]
            .into_iter()
            .filter_map(|(on, test)| on.then_some(test))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Engine) => engine_worker(),
        None => Config::from_args(cli.bench).and_then(|config| run(&config)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("locara-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden `engine` subcommand: the worker's main loop, as in `locara engine`.
fn engine_worker() -> Result<ExitCode> {
    locara_engine::worker::run()?;
    Ok(ExitCode::SUCCESS)
}

fn run(config: &Config) -> Result<ExitCode> {
    let bench = LlamaBench::locate(&config.source)?;
    let mut engine = Engine::start(&LoadParams {
        model: &config.model,
        threads: config.threads,
        kv_type: config.kv_type,
        context: config.context,
        engine_log: config.engine_log,
    })?;
    progress(&format!(
        "llama-bench: {} ({})",
        bench.describe(),
        bench.path.display()
    ));
    progress(&format!("Locara engine: {}", engine.version()));
    if config.prepare_only {
        engine.shutdown();
        return Ok(ExitCode::SUCCESS);
    }
    let needed = tokens_needed(config.prompt_tokens, config.gen_tokens);
    ensure!(
        engine.loaded.context >= needed,
        "the worker loaded a context of {} tokens (the model was trained on {}); the tests need {needed}",
        engine.loaded.context,
        engine.loaded.trained_context,
    );

    let mut notes = Vec::new();
    if !engine.loaded.flash_attention {
        notes.push(
            "the Locara worker loaded without flash attention; llama-bench ran with it".to_string(),
        );
    }
    if engine.loaded.threads != config.threads {
        notes.push(format!(
            "the Locara worker runs {} threads, not {}",
            engine.loaded.threads, config.threads
        ));
    }
    let mut params = RunParams {
        model: &config.model,
        threads: config.threads,
        kv_type: config.kv_type,
        prompt_tokens: config.prompt_tokens,
        gen_tokens: config.gen_tokens,
        decode_depth: 0,
    };
    warm_up(config, &bench, &mut params, &mut engine, &mut notes)?;
    let (samples, others_cpu_share) = measure(config, &bench, &params, &mut engine, &mut notes)?;

    let prefill = config
        .prefill
        .then(|| {
            Comparison::new(
                &samples.llama_prefill,
                &samples.locara_prefill,
                PREFILL_TARGET,
            )
            .context("no usable prefill samples")
        })
        .transpose()?;
    let decode = config
        .decode
        .then(|| {
            Comparison::new(&samples.llama_decode, &samples.locara_decode, DECODE_TARGET)
                .context("no usable decode samples")
        })
        .transpose()?;
    let report = Report {
        model: config.model.clone(),
        threads: config.threads,
        kv_type: config.kv_type.to_string(),
        flash_attention: engine.loaded.flash_attention,
        reps: config.reps,
        prompt_tokens: config.prompt_tokens,
        gen_tokens: config.gen_tokens,
        decode_depth: params.decode_depth,
        llama_bench: LlamaBenchInfo {
            path: bench.path.clone(),
            version: bench.describe(),
        },
        locara: LocaraInfo {
            engine: engine.version().to_string(),
            prompt_tokens: engine.prefill_tokens,
            context: engine.loaded.context,
        },
        others_cpu_share,
        pass: [&prefill, &decode]
            .iter()
            .all(|c| c.as_ref().is_none_or(|c| c.pass)),
        prefill,
        decode,
        notes,
    };
    engine.shutdown();
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BELOW_TARGET)
    })
}

/// One uncounted run of each side: page cache, CPU caches and clocks settle
/// first. Locara's warm-up also steers its prefill prompt to the length
/// llama-bench uses, and sets the depth llama-bench's decode test starts at
/// to the length of Locara's decode prompt.
fn warm_up(
    config: &Config,
    bench: &LlamaBench,
    params: &mut RunParams,
    engine: &mut Engine,
    notes: &mut Vec<String>,
) -> Result<()> {
    progress("warming up (not counted): Locara, then llama-bench");
    if config.prefill {
        engine.calibrate_prefill(config.prompt_tokens)?;
        if engine.prefill_tokens != config.prompt_tokens {
            notes.push(format!(
                "Locara's prefill prompt is {} tokens, llama-bench's {} (the tokenizer allowed no closer length)",
                engine.prefill_tokens, config.prompt_tokens
            ));
        }
    }
    if config.decode {
        params.decode_depth = engine.decode(config.gen_tokens)?.prompt_tokens;
        if !bench.can_match_depth() {
            notes.push(format!(
                "this llama-bench has no -d: its decode test starts from an empty context, Locara's after a prompt of {} tokens",
                params.decode_depth
            ));
        }
    }
    for test in config.tests() {
        bench
            .run(params, test)
            .context("warm-up run of llama-bench")?;
    }
    Ok(())
}

/// The measured reps, alternating which side goes first. A rep that other
/// processes disturbed is discarded and run again (within
/// [`ATTEMPTS_PER_REP`]); returns the samples and the share of the CPU other
/// processes took over the whole measurement (Linux only).
fn measure(
    config: &Config,
    bench: &LlamaBench,
    params: &RunParams,
    engine: &mut Engine,
    notes: &mut Vec<String>,
) -> Result<(Samples, Option<f64>)> {
    let mut samples = Samples::default();
    let mut short_decodes = 0;
    let mut other_depths = 0;
    let mut discarded = 0;
    let mut attempt = 0;
    let started = CpuSnapshot::take(engine.pid());
    while samples.reps < config.reps as usize && attempt < config.reps * ATTEMPTS_PER_REP {
        attempt += 1;
        let rep_started = CpuSnapshot::take(engine.pid());
        // Alternate which side goes first, so a steady drift (a machine
        // warming up, a build finishing) favours neither.
        let llama_first = attempt % 2 == 1;
        let prefill = config
            .prefill
            .then(|| {
                pair(
                    llama_first,
                    || bench.run(params, Test::Prefill),
                    || engine.prefill(),
                )
            })
            .transpose()?;
        let decode = config
            .decode
            .then(|| {
                pair(
                    llama_first,
                    || bench.run(params, Test::Decode),
                    || engine.decode(config.gen_tokens),
                )
            })
            .transpose()?;

        let others = others_share(rep_started, engine.pid());
        let disturbed = others.is_some_and(|share| share > config.max_others);
        let mut figures = Vec::new();
        if let Some((llama, locara)) = prefill {
            figures.push(format!("prefill llama-bench {llama:.1} Locara {locara:.1}"));
        }
        if let Some((llama, locara)) = decode {
            figures.push(format!(
                "decode llama-bench {llama:.1} Locara {:.1}",
                locara.tps
            ));
        }
        progress(&format!(
            "{} {}/{}: {} tokens/s{}{}",
            if disturbed { "discarded" } else { "rep" },
            samples.reps + usize::from(!disturbed),
            config.reps,
            figures.join("; "),
            others
                .map(|share| format!("; other processes took {:.0} % of the CPU", share * 100.0))
                .unwrap_or_default(),
            if disturbed {
                ", more than --max-others"
            } else {
                ""
            },
        ));
        if disturbed {
            discarded += 1;
            continue;
        }
        samples.reps += 1;
        if let Some((llama, locara)) = prefill {
            samples.llama_prefill.push(llama);
            samples.locara_prefill.push(locara);
        }
        if let Some((llama, locara)) = decode {
            if locara.generated < config.gen_tokens {
                short_decodes += 1;
            }
            if locara.prompt_tokens != params.decode_depth {
                other_depths += 1;
            }
            samples.llama_decode.push(llama);
            samples.locara_decode.push(locara.tps);
        }
    }
    ensure!(
        samples.reps > 0,
        "other processes took more than --max-others {} % of the CPU in every one of {attempt} reps; rerun on a quiet machine",
        config.max_others * 100.0
    );
    if samples.reps < config.reps as usize {
        notes.push(format!(
            "only {} of {} reps ran undisturbed by other processes",
            samples.reps, config.reps
        ));
    }
    if discarded > 0 {
        notes.push(format!(
            "{discarded} reps were discarded and repeated because other processes took more than {} % of the CPU",
            config.max_others * 100.0
        ));
    }
    if other_depths > 0 {
        notes.push(format!(
            "{other_depths} Locara decodes started after a prompt of another length than llama-bench's depth {} (a prompt ended early and the next one was used)",
            params.decode_depth
        ));
    }
    if short_decodes > 0 {
        notes.push(format!(
            "{short_decodes} Locara decodes ended before {} tokens (the model stopped on every prompt)",
            config.gen_tokens
        ));
    }
    Ok((samples, others_share(started, engine.pid())))
}

/// Runs both sides of one pair back to back, llama-bench first or Locara
/// first; returns (llama-bench's result, Locara's).
fn pair<A, B>(
    llama_first: bool,
    llama: impl FnOnce() -> Result<A>,
    locara: impl FnOnce() -> Result<B>,
) -> Result<(A, B)> {
    if llama_first {
        let a = llama()?;
        Ok((a, locara()?))
    } else {
        let b = locara()?;
        Ok((llama()?, b))
    }
}

/// Context (tokens) the tests need: the prefill prompt, or the decode
/// prompt (under 64 tokens) and the tokens generated after it.
fn tokens_needed(prompt_tokens: u32, gen_tokens: u32) -> u32 {
    prompt_tokens.max(64).saturating_add(gen_tokens)
}

/// Share of the CPU other processes took since `since` (Linux only).
fn others_share(since: Option<CpuSnapshot>, worker_pid: u32) -> Option<f64> {
    Some(since?.others_share(&CpuSnapshot::take(worker_pid)?))
}

/// Tokens per second of every measured repetition, per side and test.
#[derive(Debug, Default)]
struct Samples {
    /// Reps measured.
    reps: usize,
    llama_prefill: Vec<f64>,
    llama_decode: Vec<f64>,
    locara_prefill: Vec<f64>,
    locara_decode: Vec<f64>,
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
        let cli = Cli::try_parse_from(["locara-bench"]).unwrap();
        assert!(cli.command.is_none());
        let a = cli.bench;
        assert_eq!((a.threads, a.kv, a.reps), (2, KvType::Q8_0, 5));
        assert_eq!((a.prompt_tokens, a.gen_tokens), (512, 128));
        assert_eq!(a.llama_cpp_python, LLAMA_CPP_PYTHON_VERSION);
        assert_eq!(a.only, None);
    }

    #[test]
    fn only_picks_one_test() {
        let model = std::env::current_exe().unwrap();
        let model = model.to_str().unwrap();
        let config = |only: &str| {
            let cli = Cli::try_parse_from([
                "locara-bench",
                "--model",
                model,
                "--llama-bench",
                model,
                "--only",
                only,
            ])
            .unwrap();
            let config = Config::from_args(cli.bench).unwrap();
            config.tests().collect::<Vec<_>>()
        };
        assert_eq!(config("decode"), [Test::Decode]);
        assert_eq!(config("prefill"), [Test::Prefill]);
        assert!(Cli::try_parse_from(["locara-bench", "--only", "both"]).is_err());
    }

    #[test]
    fn engine_subcommand_is_hidden_and_takes_no_flags() {
        let cli = Cli::try_parse_from(["locara-bench", "engine"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Engine)));
        assert!(Cli::try_parse_from(["locara-bench", "--json", "engine"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("Commands:"), "{help}");
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["locara-bench", "--kv", "q5_1"][..],
            &["locara-bench", "--threads", "0"],
            &["locara-bench", "--gen-tokens", "1"],
            &[
                "locara-bench",
                "--llama-bench",
                "x",
                "--llama-cpp-python",
                "0.3.30",
            ],
            &["locara-bench", "--max-others", "101"],
            &["locara-bench", "--max-others", "-1"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn context_must_hold_the_tests() {
        let model = std::env::current_exe().unwrap();
        let cli = Cli::try_parse_from([
            "locara-bench",
            "--model",
            model.to_str().unwrap(),
            "--llama-bench",
            model.to_str().unwrap(),
            "--context",
            "600",
        ])
        .unwrap();
        let err = Config::from_args(cli.bench).unwrap_err();
        assert!(
            err.to_string().contains("need at least 640 tokens"),
            "{err}"
        );
    }

    #[test]
    fn missing_model_names_the_flag() {
        let cli = Cli::try_parse_from(["locara-bench", "--model", "/nonexistent/m.gguf"]).unwrap();
        let err = Config::from_args(cli.bench).unwrap_err();
        assert!(
            err.to_string().contains("--model /nonexistent/m.gguf"),
            "{err}"
        );
    }
}
