//! The speculative-decoding benchmark: decode speed of a copy-heavy answer
//! with prompt-lookup drafting against the same worker without it, and
//! whether the answers are the same.
//!
//! One worker is loaded; each rep runs the same greedy request (a chat
//! asking the model to repeat a paragraph given in the prompt, with a small
//! edit) twice, once with `speculative: true` and once with `false`, in an
//! order that alternates from rep to rep, each prefilled afresh
//! (`cache_prompt: false`). The figure is the worker's own decode rate
//! (tokens after the first over the time after the first); the ratio that
//! counts is the median of the pairs' ratios (with / without; the goal is
//! at least 1.5). Every pair's answers must be identical, token event by
//! token event: a difference is reported and fails the run. The acceptance
//! rate and tokens per decode step of the drafting side are reported too.
//!
//! With `--draft PATH` the worker loads a draft model beside the model
//! (an app's `[speculative]` pair), which then proposes the drafts for the
//! drafting side; `--prompt story` asks for a story instead of a copy,
//! where prompt lookup finds little and a draft model is what drafts. The
//! pair's figures (speed ratio, acceptance rate, tokens per step) are
//! reported; the 1.5x goal is prompt lookup's on the copy, so a run with a
//! draft model is held only to identical answers (a model drafting for
//! itself, the mechanics' check, cannot be faster).
//!
//! ```text
//! cargo run --release -p locara-bench --bin locara-spec-bench -- --reps 5
//! cargo run --release -p locara-bench --bin locara-spec-bench -- --reps 5 \
//!     --draft ~/.locara/models/smollm2+135m/model.gguf --prompt story
//! ```
//!
//! Exit status: 0 when the ratio meets the goal (prompt lookup) and every
//! answer matched, 2 when not, 1 on an error.

use anyhow::{bail, Context, Result};
use clap::Parser;
use locara_bench::dirs::model_path;
use locara_bench::progress;
use locara_bench::stats::Summary;
use locara_core::KvType;
use locara_engine::protocol::{
    ChatMessage, Event, FinishReason, GenerateRequest, GenerationStats, LoadRequest, Prompt,
    Request, Sampling,
};
use locara_engine::{Worker, WorkerCommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The goal: decode with drafting at least this many times as fast.
const GOAL: f64 = 1.5;

/// The text the answer copies: editing a paragraph is the use prompt
/// lookup is for.
const PARAGRAPH: &str = "The river rises in the hills above the town, runs past the old mill \
and the school, and reaches the sea twenty miles to the south. In spring the water is high \
and brown; in late summer it is low and clear, and children wade across it at the ford \
below the bridge. The town council has twice proposed a dam above the mill, and twice the \
people of the valley have voted it down, because the river floods the meadows every winter \
and the meadows feed the farms.";

/// Decode speed of a copy-heavy greedy answer with prompt-lookup drafting
/// and without.
#[derive(Parser, Debug)]
#[command(name = "locara-spec-bench", version, about)]
struct Cli {
    /// The GGUF model [default: $LOCARA_HOME/models/smollm2+135m/model.gguf]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// CPU threads of the worker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,

    /// K/V cache type: f16, q8_0 or q4_0.
    #[arg(long, value_name = "TYPE", default_value = "q8_0")]
    kv: KvType,

    /// Most tokens of each answer.
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(8..))]
    tokens: u32,

    /// Measured reps (each side once per rep).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,

    /// A draft model (GGUF with the model's vocabulary) loaded beside the
    /// model: it proposes the drafts instead of prompt lookup.
    #[arg(long, value_name = "PATH")]
    draft: Option<PathBuf>,

    /// What to ask: `copy` (repeat a paragraph with an edit, where prompt
    /// lookup pays) or `story` (new text, where only a draft model drafts).
    #[arg(long, value_enum, default_value = "copy")]
    prompt: Ask,
}

/// The request of each rep.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Copy,
    Story,
}

fn main() -> ExitCode {
    if let Some(code) = locara_bench::engine::worker_mode("locara-spec-bench") {
        return code;
    }
    match run(&Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("locara-spec-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One answer as the parent saw it.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    pieces: Vec<String>,
    finish: FinishReason,
    stats: GenerationStats,
}

fn prompt(ask: Ask) -> Prompt {
    let content = match ask {
        Ask::Copy => format!(
            "Repeat the following paragraph exactly as it is, but write \"village\" \
             instead of \"town\":\n\n{PARAGRAPH}"
        ),
        Ask::Story => "Write a short story about a lighthouse keeper and a storm.".into(),
    };
    Prompt::Chat {
        messages: vec![ChatMessage {
            role: "user".into(),
            content,
        }],
    }
}

fn generate(
    worker: &Worker,
    ask: Ask,
    id: u64,
    max_tokens: u32,
    speculative: bool,
) -> Result<Answer> {
    worker.send(&Request::Generate(GenerateRequest {
        id,
        prompt: prompt(ask),
        sampling: Sampling::greedy(),
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        n_keep: None,
        truncate: false,
        // Both sides prefill the whole prompt: only decoding differs.
        cache_prompt: false,
        speculative,
    }))?;
    let mut pieces = Vec::new();
    loop {
        match worker.recv_timeout(Duration::from_secs(600))? {
            Some(Event::Token { id: i, text }) if i == id => pieces.push(text),
            Some(Event::Done {
                id: i,
                finish,
                stats,
            }) if i == id => {
                return Ok(Answer {
                    pieces,
                    finish,
                    stats,
                })
            }
            Some(Event::Error { kind, message, .. }) => {
                bail!("the engine worker failed ({}): {message}", kind.as_str())
            }
            Some(_) => {}
            None => bail!("no answer within 600 s"),
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let model = model_path(cli.model.clone())?;
    let cmd = WorkerCommand {
        program: std::env::current_exe().context("locating this executable")?,
        args: vec!["engine".into()],
        engine_log: false,
    };
    let worker = Worker::spawn(&cmd).context("starting an engine worker")?;
    let info = worker
        .load(LoadRequest {
            context: Some(4096),
            kv_type: cli.kv,
            draft: cli.draft.clone(),
            ..LoadRequest::new(model.clone(), cli.threads)
        })
        .with_context(|| format!("loading {}", model.display()))?;
    let drafter = match (&cli.draft, &info.draft) {
        (Some(path), Some(d)) => format!(
            "draft model {} ({} parameters, {} cells)",
            path.display(),
            d.parameters,
            d.cells
        ),
        _ => "prompt lookup".to_string(),
    };
    progress(&format!(
        "{}: {} reps of a {}-token {:?}, {} threads, drafting by {drafter}",
        model.display(),
        cli.reps,
        cli.tokens,
        cli.prompt,
        cli.threads
    ));
    let ask = cli.prompt;
    // One unmeasured pair: page in the weights, warm the caches.
    generate(&worker, ask, 1, cli.tokens, true)?;
    generate(&worker, ask, 2, cli.tokens, false)?;

    let mut id = 10;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut ratios, mut acceptance, mut per_step) = (Vec::new(), Vec::new(), Vec::new());
    let mut mismatches = 0;
    for rep in 0..cli.reps {
        // Alternate which side goes first, so a drift of the machine's
        // speed does not favour one side.
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut pair = [None, None];
        for speculative in order {
            id += 1;
            pair[usize::from(speculative)] =
                Some(generate(&worker, ask, id, cli.tokens, speculative)?);
        }
        let [Some(plain), Some(drafted)] = pair else {
            unreachable!("both sides ran")
        };
        let same = plain.pieces == drafted.pieces
            && plain.finish == drafted.finish
            && plain.stats.generated_tokens == drafted.stats.generated_tokens;
        if !same {
            mismatches += 1;
            eprintln!(
                "rep {rep}: the answers differ:\n  without: {:?}\n  with:    {:?}",
                plain.pieces.concat(),
                drafted.pieces.concat()
            );
        }
        let (a, b) = (drafted.stats.decode_tps(), plain.stats.decode_tps());
        with.push(a);
        without.push(b);
        ratios.push(a / b);
        acceptance.push(drafted.stats.acceptance_rate().unwrap_or(0.0));
        per_step.push(drafted.stats.tokens_per_step().unwrap_or(0.0));
        progress(&format!(
            "rep {rep}: {} tokens; with drafting {a:.1} tokens/s ({} of {} drafts accepted, {:.2} tokens per step), without {b:.1} tokens/s: {:.2}x{}",
            drafted.stats.generated_tokens,
            drafted.stats.draft_accepted_tokens,
            drafted.stats.draft_tokens,
            drafted.stats.tokens_per_step().unwrap_or(0.0),
            a / b,
            if same { "" } else { ", DIFFERENT ANSWER" }
        ));
    }
    worker.shutdown(Duration::from_secs(2));

    let summary = |s: &[f64]| Summary::of(s).context("a measurement was not a number");
    let (with, without, ratios) = (summary(&with)?, summary(&without)?, summary(&ratios)?);
    let (acceptance, per_step) = (summary(&acceptance)?, summary(&per_step)?);
    println!("decode tokens/s, median (min-max) of {} reps", cli.reps);
    let side = if cli.draft.is_some() {
        "with a draft model"
    } else {
        "with prompt lookup"
    };
    println!(
        "  {side:<19} {:7.1} ({:.1}-{:.1})",
        with.median, with.min, with.max
    );
    println!(
        "  without             {:7.1} ({:.1}-{:.1})",
        without.median, without.min, without.max
    );
    let goal = if cli.draft.is_none() && ask == Ask::Copy {
        format!(" (goal {GOAL}x)")
    } else {
        String::new()
    };
    println!(
        "  ratio (median of pairs) {:.2}x{goal}; acceptance rate {:.0} %; {:.2} tokens per decode step",
        ratios.median,
        acceptance.median * 100.0,
        per_step.median
    );
    println!(
        "  identical answers: {} of {}",
        cli.reps - mismatches,
        cli.reps
    );
    let fast_enough = goal.is_empty() || ratios.median >= GOAL;
    Ok(fast_enough && mismatches == 0)
}
