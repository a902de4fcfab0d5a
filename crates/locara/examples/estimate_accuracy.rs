//! How close `locara-core`'s memory estimate comes to what real engine
//! workers hold: the accuracy benchmark of issue 4.
//!
//! ```text
//! cargo build --release -p locara            # the worker binary
//! nice -n 10 cargo run --release -p locara --example estimate_accuracy
//! ```
//!
//! For each model × context × K/V type × parallel sequences it starts a real
//! worker (`target/<profile>/locara engine`), loads the model, fills the
//! context, measures the worker's footprint by pid from the parent (as the
//! daemon will) and prints it next to the estimate. Memory figures come from
//! the OS: Linux `RssAnon + VmSwap` of `/proc/<pid>/status` for the
//! footprint and the resident pages of the model file's mapping for the
//! mapped weights; macOS `phys_footprint`.
//!
//! # What "fill" touches
//!
//! llama.cpp clears the K/V cache and the output buffer when it allocates
//! them, so both are dirty from the load on. The compute buffer is reserved
//! at load for the worst case but untouched until a batch runs; prefill then
//! writes one micro-batch of activations (the same at every fill) and an
//! attention mask of `n_kv × 512` f16 values per cache, `n_kv` being the
//! filled cells rounded up to 256; llama.cpp also keeps two set nodes per
//! used cell. So the footprint grows with the fill until the last
//! micro-batch of a full context, and stays there. Measured on SmolLM2 at
//! 8192 tokens, q8_0: after load 116.9 MiB; filled 510, 2046, 4094, 8190
//! tokens: 132.5, 136.1, 138.1, 142.5 MiB (the mask adds 2.0 and 4.0 MiB
//! for the last two steps, the cell sets 0.2 and 0.4).
//!
//! Filling one sequence is enough: a micro-batch's mask is `n_kv × 512`
//! however many sequences it holds. The other sequences run short
//! generations beside it so that batches carry an output for every
//! sequence.
//!
//! A full context costs CPU prefill time that grows with its square
//! (Gemma 3 at 32768 tokens, f16: 19 minutes on two busy cores; SmolLM2 at
//! 8192, q8_0: 28 minutes), too long for every grid point. So by default
//! the longest sequence is filled with 2048 tokens (all of a 2048 context),
//! and each row's estimate is [`estimate_filled`] at the fill the row
//! measured; the "estimate at full ctx" column is what admission uses.
//! `--fill full` fills every context.
//!
//! [`estimate_filled`]: locara_core::estimate::estimate_filled

use anyhow::{bail, Context, Result};
use locara_core::estimate::{self, EstimateCheck};
use locara_core::{Bytes, EstimateOptions, KvType, ModelShape};
use locara_engine::client::{Worker, WorkerCommand};
use locara_engine::protocol::{
    Event, GenerateRequest, LoadRequest, LoadedInfo, Prompt, Request, Sampling,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USAGE: &str = "\
estimate_accuracy: the estimate of locara-core against measured engine workers

options:
  --model PATH        a GGUF model (repeatable; default: the two test models
                      in ~/.cache/locara-test/models)
  --ctx N[,N..]       contexts (default: 2048, 8192 and the trained context or
                      32768, whichever is smaller)
  --kv T[,T..]        K/V types (default: f16,q8_0,q4_0)
  --parallel N[,N..]  sequences (default: 1,4)
  --fill N|full       tokens to fill the longest sequence with (default 2048;
                      never more than the context)
  --fills N[,N..]     instead of the grid: one worker per --ctx/--kv/--parallel
                      point, filled again and again with each of these fills,
                      footprint after each (how the fill moves the footprint)
  --pool N            a K/V pool of N cells that all sequences share (the
                      daemon starts a model at 2048); default: every
                      sequence's whole context
  --threads N         CPU threads of the worker (default 1)
  --smaps             with --fills: list the worker's dirty mappings at each
                      step (Linux)
";

struct Args {
    models: Vec<PathBuf>,
    contexts: Option<Vec<u32>>,
    kv_types: Vec<KvType>,
    parallel: Vec<u32>,
    fill: Option<u32>,
    fills: Option<Vec<u32>>,
    pool: Option<u32>,
    threads: u32,
    smaps: bool,
}

fn list<T: std::str::FromStr>(text: &str, flag: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{flag}: {s:?} is not valid"))
        })
        .collect()
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        models: Vec::new(),
        contexts: None,
        kv_types: KvType::ALL.to_vec(),
        parallel: vec![1, 4],
        fill: Some(2048),
        fills: None,
        pool: None,
        threads: 1,
        smaps: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--smaps" {
            args.smaps = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        match flag.as_str() {
            "--model" => args.models.push(PathBuf::from(value)),
            "--ctx" => args.contexts = Some(list(&value, "--ctx")?),
            "--kv" => args.kv_types = list(&value, "--kv")?,
            "--parallel" => args.parallel = list(&value, "--parallel")?,
            "--fill" if value == "full" => args.fill = None,
            "--fill" => args.fill = Some(value.parse().context("--fill: a number or full")?),
            "--fills" => args.fills = Some(list(&value, "--fills")?),
            "--threads" => args.threads = value.parse().context("--threads: a number")?,
            "--pool" => args.pool = Some(value.parse().context("--pool: a number of cells")?),
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    if args.models.is_empty() {
        let home = std::env::var_os("HOME").context("HOME is not set; pass --model")?;
        let dir = Path::new(&home).join(".cache/locara-test/models");
        for name in ["smollm2+135m", "gemma3+270m"] {
            let path = dir.join(name).join("model.gguf");
            if !path.exists() {
                bail!(
                    "{} is missing: run the engine tests once (they download the test models) or pass --model",
                    path.display()
                );
            }
            args.models.push(path);
        }
    }
    Ok(args)
}

/// The `locara` binary next to this example (`target/<profile>/locara`).
fn worker_program() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this example")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("this example is not in target/<profile>/examples")?;
    let program = profile_dir.join(format!("locara{}", std::env::consts::EXE_SUFFIX));
    if !program.exists() {
        let profile = profile_dir
            .file_name()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        bail!(
            "{} is missing: build it first with `cargo build{flag} -p locara`",
            program.display()
        );
    }
    Ok(program)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let program = worker_program()?;
    let backend = locara_platform::estimate_backend();
    println!("worker: {}", program.display());
    println!("backend: {}", serde_json::to_string(&backend)?);
    let mut rows = Vec::new();
    for path in &args.models {
        let file = locara_gguf::validate_file(path)
            .with_context(|| format!("{} is not a valid GGUF model", path.display()))?;
        let shape = file.shape();
        let name = path.parent().and_then(Path::file_name).map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let contexts = args.contexts.clone().unwrap_or_else(|| {
            let mut c = vec![2048, 8192, shape.context_length.min(32768)];
            c.dedup();
            c
        });
        for &context in &contexts {
            for &kv_type in &args.kv_types {
                for &parallel in &args.parallel {
                    let point = Point {
                        name: &name,
                        path,
                        shape: &shape,
                        options: EstimateOptions {
                            context,
                            kv_type,
                            parallel,
                            backend: backend.clone(),
                            full_window_cache: estimate::ENGINE_FULL_WINDOW_CACHE,
                            pool: args.pool,
                        },
                    };
                    if let Some(fills) = &args.fills {
                        fill_series(&program, &point, fills, args.threads, args.smaps)?;
                        continue;
                    }
                    let row = measure(&program, &point, args.fill, args.threads)
                        .with_context(|| format!("{name} ctx {context} {kv_type} × {parallel}"))?;
                    print_row(&row);
                    rows.push(row);
                }
            }
        }
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    Ok(())
}

/// One grid point.
struct Point<'a> {
    name: &'a str,
    path: &'a Path,
    shape: &'a ModelShape,
    options: EstimateOptions,
}

/// One measured grid point.
struct Row {
    name: String,
    context: u32,
    kv_type: KvType,
    parallel: u32,
    /// Tokens in the longest sequence when the footprint was measured.
    filled: u32,
    check: EstimateCheck,
    /// The estimate at a full context (what admission uses).
    full_estimate: u64,
    after_load: u64,
    file_size: u64,
    fill_seconds: f64,
}

fn spawn(program: &Path) -> Result<Worker> {
    Ok(Worker::spawn(&WorkerCommand {
        program: program.to_path_buf(),
        args: vec!["engine".into()],
        engine_log: std::env::var_os("LOCARA_ENGINE_LOG").is_some(),
    })?)
}

fn load(worker: &Worker, point: &Point, threads: u32) -> Result<LoadedInfo> {
    Ok(worker.load(LoadRequest {
        context: Some(point.options.context),
        kv_type: point.options.kv_type,
        parallel: point.options.parallel,
        // The pool the daemon would start with; fills stay within it, so
        // the worker never asks to grow it (a cap of the pool itself would
        // lower the context to it).
        pool: point.options.pool,
        ..LoadRequest::new(point.path.to_path_buf(), threads)
    })?)
}

/// Footprint and resident mapped weights of the worker, measured by pid.
fn footprint(worker: &Worker, model: &Path) -> Result<(u64, u64)> {
    let fp = locara_platform::process_footprint(worker.pid())?;
    let mapped = mapped_file_bytes(worker.pid(), model).unwrap_or(fp.mapped_weights);
    Ok((fp.footprint, mapped))
}

/// Resident bytes of the mappings of `file` in process `pid` (Linux
/// `/proc/<pid>/smaps`); `None` elsewhere.
fn mapped_file_bytes(pid: u32, file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let file = std::fs::canonicalize(file).ok()?;
    let file = file.to_string_lossy();
    let mut in_file = false;
    let mut total = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode path.
            in_file = line.split_whitespace().nth(5) == Some(&*file);
        } else if in_file && first == "Rss:" {
            total += words.next()?.parse::<u64>().ok()? * 1024;
        }
    }
    Some(total)
}

/// Runs one generation per request and waits until all are done; returns
/// the prompt tokens of each.
fn generate(worker: &Worker, requests: Vec<GenerateRequest>) -> Result<Vec<u32>> {
    let ids: Vec<u64> = requests.iter().map(|r| r.id).collect();
    for r in requests {
        worker.send(&Request::Generate(r))?;
    }
    let mut prompt_tokens = vec![0; ids.len()];
    let mut done = 0;
    while done < ids.len() {
        match worker.recv()? {
            Event::Done { id, stats, .. } => {
                if let Some(i) = ids.iter().position(|&x| x == id) {
                    prompt_tokens[i] = stats.prompt_tokens + stats.generated_tokens;
                    done += 1;
                }
            }
            Event::Error { message, .. } => bail!("the worker refused a generation: {message}"),
            _ => {}
        }
    }
    Ok(prompt_tokens)
}

fn raw(id: u64, words: u32, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        id,
        prompt: Prompt::Raw {
            text: " the".repeat(words as usize),
        },
        sampling: Sampling::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        n_keep: None,
        truncate: false,
        // Each fill writes its own cells, as it did before prefix reuse.
        cache_prompt: false,
        speculative: true,
    }
}

/// Tokens a prompt of `words` repetitions of " the" becomes, as
/// `a × words + b`, from two probe prompts (the model's tokenizer may add a
/// BOS token, and a tokenizer could merge words).
fn tokenizer_line(worker: &Worker) -> Result<(f64, f64)> {
    let t = generate(worker, vec![raw(1, 64, 1), raw(2, 128, 1)])?;
    let a = f64::from(t[1].saturating_sub(t[0])) / 64.0;
    let b = f64::from(t[0]) - 64.0 * a;
    if a <= 0.0 {
        bail!("the probe prompts tokenize to {t:?} tokens");
    }
    Ok((a, b))
}

/// Fills the longest sequence with about `tokens` tokens (prompt plus one
/// generated) while the other sequences each run a short generation beside
/// it; returns the tokens the longest sequence held.
fn fill(
    worker: &Worker,
    line: (f64, f64),
    tokens: u32,
    parallel: u32,
    first_id: u64,
) -> Result<u32> {
    let (a, b) = line;
    // The prompt leaves room for the one generated token.
    let words = ((f64::from(tokens.saturating_sub(1)) - b) / a)
        .floor()
        .max(1.0) as u32;
    let mut requests = vec![raw(first_id, words, 1)];
    for i in 1..parallel {
        // Short prompts that decode while the long one fills, so that
        // batches carry one output per sequence.
        requests.push(raw(first_id + u64::from(i), 16, 48));
    }
    let held = generate(worker, requests)?;
    Ok(held[0])
}

fn measure(program: &Path, point: &Point, fill_cap: Option<u32>, threads: u32) -> Result<Row> {
    let worker = spawn(program)?;
    let info = load(&worker, point, threads)?;
    let (after_load, _) = footprint(&worker, point.path)?;
    let line = tokenizer_line(&worker)?;
    // Fill the context but the last token (the worker wants room to answer).
    let target = fill_cap.map_or(info.context, |cap| cap.min(info.context));
    let target = target.min(info.context.saturating_sub(1));
    let started = Instant::now();
    let filled = fill(&worker, line, target, point.options.parallel, 100)?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let (measured, mapped) = footprint(&worker, point.path)?;
    worker.shutdown(Duration::from_secs(2));

    let at_fill = estimate::estimate_filled(point.shape, &point.options, filled)?;
    let full = estimate::estimate(point.shape, &point.options)?;
    if at_fill.context != info.context {
        bail!(
            "the worker loaded a context of {}, the estimate assumed {}",
            info.context,
            at_fill.context
        );
    }
    Ok(Row {
        name: point.name.to_string(),
        context: info.context,
        kv_type: point.options.kv_type,
        parallel: point.options.parallel,
        filled,
        check: EstimateCheck::new(&at_fill, measured, mapped),
        full_estimate: full.footprint(),
        after_load,
        file_size: std::fs::metadata(point.path)?.len(),
        fill_seconds,
    })
}

/// The footprint after each of several fills of one worker.
fn fill_series(
    program: &Path,
    point: &Point,
    fills: &[u32],
    threads: u32,
    smaps: bool,
) -> Result<()> {
    let worker = spawn(program)?;
    let info = load(&worker, point, threads)?;
    let (after_load, mapped) = footprint(&worker, point.path)?;
    println!(
        "{} ctx {} {} × {}: after load {} (mapped weights {})",
        point.name,
        info.context,
        point.options.kv_type,
        point.options.parallel,
        Bytes(after_load),
        Bytes(mapped)
    );
    if smaps {
        dirty_mappings(worker.pid());
    }
    let line = tokenizer_line(&worker)?;
    for (i, &tokens) in fills.iter().enumerate() {
        let started = Instant::now();
        let target = tokens.min(info.context.saturating_sub(1));
        let filled = fill(
            &worker,
            line,
            target,
            point.options.parallel,
            100 + 10 * i as u64,
        )?;
        let (measured, _) = footprint(&worker, point.path)?;
        let est = estimate::estimate_filled(point.shape, &point.options, filled)?;
        println!(
            "  filled {filled:>6} in {:>6.1} s: footprint {:>10} (+{:>9} over load), estimate {:>10} ({:+.2} %)",
            started.elapsed().as_secs_f64(),
            Bytes(measured).to_string(),
            Bytes(measured.saturating_sub(after_load)).to_string(),
            Bytes(est.footprint()).to_string(),
            EstimateCheck::new(&est, measured, 0).footprint_error() * 100.0,
        );
        if smaps {
            dirty_mappings(worker.pid());
        }
    }
    worker.shutdown(Duration::from_secs(2));
    Ok(())
}

/// Prints the mappings of `pid` with at least 256 KiB of dirty pages.
fn dirty_mappings(pid: u32) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let (mut name, mut size) = (String::new(), 0u64);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            name = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_string();
        } else if first == "Size:" {
            size = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        } else if first == "Private_Dirty:" {
            let dirty: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            if dirty >= 256 {
                println!(
                    "      {:>10} dirty of {:>10}  {name}",
                    Bytes(dirty * 1024).to_string(),
                    Bytes(size * 1024).to_string()
                );
            }
        }
    }
}

fn print_row(r: &Row) {
    eprintln!(
        "{} ctx {} {} × {}: filled {} in {:.0} s, footprint {} (after load {}), estimate {} ({:+.2} %)",
        r.name,
        r.context,
        r.kv_type,
        r.parallel,
        r.filled,
        r.fill_seconds,
        Bytes(r.check.measured_footprint),
        Bytes(r.after_load),
        Bytes(r.check.estimated_footprint),
        r.check.footprint_error() * 100.0
    );
}

fn print_table(rows: &[Row]) {
    let mib = |n: u64| format!("{:.2}", n as f64 / f64::from(1 << 20));
    println!();
    println!("footprint = the non-weight part (K/V cache, compute and output buffers, repacked weights, overhead); MiB");
    println!(
        "| model | ctx | kv | par | filled | estimate | measured | error | estimate at full ctx | mapped weights est. | measured | file size |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:+.2} % | {} | {} | {} | {} |",
            r.name,
            r.context,
            r.kv_type,
            r.parallel,
            r.filled,
            mib(r.check.estimated_footprint),
            mib(r.check.measured_footprint),
            r.check.footprint_error() * 100.0,
            mib(r.full_estimate),
            mib(r.check.estimated_mapped_weights),
            mib(r.check.measured_mapped_weights),
            mib(r.file_size),
        );
    }
    let worst = rows
        .iter()
        .max_by(|a, b| {
            a.check
                .footprint_error()
                .abs()
                .total_cmp(&b.check.footprint_error().abs())
        })
        .expect("rows is not empty");
    println!();
    println!(
        "worst footprint error: {:+.2} % ({} ctx {} {} × {})",
        worst.check.footprint_error() * 100.0,
        worst.name,
        worst.context,
        worst.kv_type,
        worst.parallel
    );
    let worst_mapped = rows
        .iter()
        .map(|r| r.check.mapped_weights_error().abs())
        .fold(0.0, f64::max);
    println!("worst mapped weights error: {:.3} %", worst_mapped * 100.0);
}
