//! `locara plan`: what a model will cost before it is loaded, and whether it
//! fits this machine's budget.

use crate::config::Config;
use anyhow::{Context, Result};
use clap::Args;
use locara_core::estimate;
use locara_core::{
    Bytes, Estimate, EstimateOptions, KvType, LoadDefaults, ModelShape, LARGEST_CONTEXT,
    SMALLEST_CONTEXT,
};
use locara_platform::SystemProbe;
use std::path::Path;
use std::process::ExitCode;

#[derive(Args)]
#[command(
    after_help = "The estimate is what an engine worker will hold once its contexts are full: \
the mapped weights (file-backed, clean) plus its footprint (K/V cache, compute buffers, \
output buffer, repacked weights, process overhead). Exit status 1 when it does not fit.\n\n\
Examples:\n  locara plan gemma3:270m\n  locara plan smollm2:135m --ctx 8192 --kv f16 --parallel 4\n  \
locara plan ./model.gguf --budget 4GiB --json"
)]
pub struct PlanArgs {
    /// A stored model name or a path to a .gguf file.
    model: String,
    /// Context per sequence in tokens (default 8192, never more than the
    /// model's trained context).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(i64::from(SMALLEST_CONTEXT)..=i64::from(LARGEST_CONTEXT)))]
    ctx: Option<u32>,
    /// K/V cache type: f16, q8_0 or q4_0 (default: f16 on the CPU, where
    /// llama.cpp's attention is fastest with it; q8_0 with a GPU).
    #[arg(long, value_name = "TYPE")]
    kv: Option<KvType>,
    /// Sequences that generate at once; each gets the whole context.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// Plan against this budget instead of this machine's, e.g. 4GiB,
    /// 512MiB, 6G or a byte count.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    budget: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn plan(args: PlanArgs) -> Result<ExitCode> {
    let (path, file) = crate::inspect::validated(&args.model)?;
    let shape = file.shape();
    let backend = locara_platform::estimate_backend();
    let asked = args.ctx.unwrap_or(LoadDefaults::default().context);
    let options = EstimateOptions {
        context: asked,
        kv_type: args.kv.unwrap_or_else(|| backend.default_kv_type()),
        parallel: args.parallel,
        backend: backend.clone(),
        full_window_cache: estimate::ENGINE_FULL_WINDOW_CACHE,
        pool: None,
    };
    let est = estimate::estimate(&shape, &options)
        .with_context(|| format!("cannot estimate {}", args.model))?;
    // The pool the worker's sequences share: it starts small and grows, with
    // the governor's leave, up to every sequence at its whole context.
    let pool_size = locara_core::PoolSize::new(est.context, args.parallel);
    let at_pool = |cells: u32| {
        estimate::estimate(
            &shape,
            &EstimateOptions {
                pool: Some(cells),
                ..options.clone()
            },
        )
    };
    let pool = PoolPlan {
        size: pool_size,
        start: at_pool(pool_size.start)?,
        max: at_pool(pool_size.max)?,
    };
    let budget = match args.budget {
        Some(bytes) => Budget {
            bytes,
            basis: "given with --budget".to_string(),
        },
        None => machine_budget()?,
    };
    let fits = est.total() <= budget.bytes;
    let largest = largest_contexts(&shape, &options, budget.bytes)?;

    if args.json {
        let out = serde_json::json!({
            "model": args.model,
            "path": path,
            "architecture": shape.architecture,
            "trained_context": shape.context_length,
            "backend": backend,
            "estimate": est,
            "footprint": est.footprint(),
            "total": est.total(),
            "budget": budget.bytes,
            "budget_basis": budget.basis,
            "fits": fits,
            "pool": {
                "start_cells": pool.size.start,
                "max_cells": pool.size.max,
                "start_estimate": pool.start.total(),
                "start_footprint": pool.start.footprint(),
                "max_estimate": pool.max.total(),
                "max_footprint": pool.max.footprint(),
            },
            "largest_context": largest
                .iter()
                .map(|(kv, n)| (kv.as_str().to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let verdict = Verdict {
            budget,
            fits,
            largest,
        };
        print_plan(&args, &path, &shape, &est, &pool, &verdict);
    }
    Ok(if fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `locara plan`'s verdict for a model not downloaded yet (its header read
/// from the Hub): one line, and whether any context fits this machine's
/// budget at all.
pub(crate) struct QuickVerdict {
    pub line: String,
    pub fits_some_context: bool,
}

/// The verdict `locara plan MODEL` would give with the default context and
/// K/V type, for `shape` (`weights_bytes` set to what all files hold).
pub(crate) fn quick_verdict(shape: &ModelShape) -> Result<QuickVerdict> {
    let backend = locara_platform::estimate_backend();
    let options = EstimateOptions {
        context: LoadDefaults::default().context,
        kv_type: backend.default_kv_type(),
        parallel: 1,
        backend: backend.clone(),
        full_window_cache: estimate::ENGINE_FULL_WINDOW_CACHE,
        pool: None,
    };
    let est = estimate::estimate(shape, &options).context("cannot estimate the model")?;
    let budget = machine_budget()?;
    let largest = largest_contexts(shape, &options, budget.bytes)?;
    let fits_some_context = largest.iter().any(|(_, n)| n.is_some());
    let line = if est.total() <= budget.bytes {
        format!(
            "fits: estimate {} at context {} with {} K/V, budget {} ({} to spare)",
            Bytes(est.total()),
            est.context,
            est.kv_type,
            Bytes(budget.bytes),
            Bytes(budget.bytes - est.total())
        )
    } else {
        format!(
            "does not fit at context {}: {}",
            est.context,
            not_fitting(&est, budget.bytes, &largest)
        )
    };
    Ok(QuickVerdict {
        line,
        fits_some_context,
    })
}

/// For each K/V type, the longest context (up to the trained one) whose
/// estimate with `options` otherwise fits `budget` bytes; `None` where not
/// even the smallest does.
fn largest_contexts(
    shape: &ModelShape,
    options: &EstimateOptions,
    budget: u64,
) -> Result<Vec<(KvType, Option<u32>)>> {
    KvType::ALL
        .into_iter()
        .map(|kv_type| {
            let up_to_trained = EstimateOptions {
                context: u32::MAX,
                kv_type,
                ..options.clone()
            };
            Ok((
                kv_type,
                estimate::max_context_fitting(shape, &up_to_trained, budget)?,
            ))
        })
        .collect()
}

/// Whether the load fits the budget, and the longest contexts that do.
struct Verdict {
    budget: Budget,
    fits: bool,
    largest: Vec<(KvType, Option<u32>)>,
}

/// The K/V pool's two ends and the estimate at each.
struct PoolPlan {
    size: locara_core::PoolSize,
    start: Estimate,
    max: Estimate,
}

pub(crate) struct Budget {
    pub bytes: u64,
    pub basis: String,
}

/// The machine's default budget, from the machine profile `locara profile`
/// shows (docs/ARCHITECTURE.md: min(GPU working-set cap, 70 % of memory)); where the
/// profile cannot be had, 70 % of physical memory.
pub(crate) fn machine_budget() -> Result<Budget> {
    let profile = Config::load(false).and_then(|config| {
        crate::profile::load_or_probe(&SystemProbe::default(), &config.home, false)
    });
    if let Ok((profile, _)) = profile {
        let hw = &profile.hardware;
        return Ok(Budget {
            bytes: hw.default_budget,
            basis: format!(
                "{} ({} usable), from the machine profile",
                hw.budget_basis,
                Bytes(hw.usable_memory())
            ),
        });
    }
    let physical = locara_platform::physical_memory().context("reading the physical memory")?;
    let (bytes, basis) = locara_platform::default_budget(physical, None);
    Ok(Budget {
        bytes,
        basis: format!("{basis} ({} physical)", Bytes(physical)),
    })
}

fn print_plan(
    args: &PlanArgs,
    path: &Path,
    shape: &ModelShape,
    est: &Estimate,
    pool: &PoolPlan,
    verdict: &Verdict,
) {
    let Verdict {
        budget,
        fits,
        largest,
    } = verdict;
    let b = |n: u64| format!("{:>10}", Bytes(n).to_string());
    if Path::new(&args.model) == path {
        println!("model             {}", path.display());
    } else {
        println!("model             {} ({})", args.model, path.display());
    }
    println!(
        "architecture      {}, {} layers, trained context {}",
        shape.architecture, shape.block_count, shape.context_length
    );
    let clamped = match args.ctx {
        Some(asked) if asked > est.context => format!(" (asked {asked}; the trained maximum)"),
        _ => String::new(),
    };
    println!(
        "load              context {}{clamped} × {} sequence{}, K/V cache {}",
        est.context,
        est.parallel,
        if est.parallel == 1 { "" } else { "s" },
        est.kv_type
    );
    println!("estimate          {}", b(est.total()));
    println!(
        "  mapped weights  {}  file-backed, clean: the OS can drop and re-read it",
        b(est.mapped_weights)
    );
    println!(
        "  footprint       {}  what the OS will charge the engine worker",
        b(est.footprint())
    );
    let cells = match est.window_cells {
        Some(w) if w == est.cells => format!(
            "{} cells per sequence, window layers too (llama.cpp's full window cache)",
            est.cells
        ),
        Some(w) => format!("{} cells per sequence, window layers {w}", est.cells),
        None => format!("{} cells per sequence", est.cells),
    };
    println!("    K/V cache     {}  {cells}", b(est.kv_cache));
    println!(
        "    compute       {}  scratch of prefill over a full context",
        b(est.compute_buffers)
    );
    println!(
        "    output        {}  logits of one token per sequence",
        b(est.output_buffer)
    );
    if est.repacked_weights > 0 {
        println!(
            "    repacked      {}  weights the CPU backend copies into its own layout",
            b(est.repacked_weights)
        );
    }
    println!(
        "    overhead      {}  the worker process itself",
        b(est.overhead)
    );
    println!(
        "K/V pool          shared by the sequences; starts small, grows with the governor's leave"
    );
    println!(
        "  at load         {}  footprint {} with {} cells: what a load is admitted on",
        b(pool.start.total()),
        Bytes(pool.start.footprint()),
        pool.size.start
    );
    println!(
        "  at most         {}  footprint {} with {} cells: every sequence at its whole context",
        b(pool.max.total()),
        Bytes(pool.max.footprint()),
        pool.size.max
    );
    println!("budget            {}  {}", b(budget.bytes), budget.basis);
    if *fits {
        println!(
            "fits              yes, {} to spare",
            Bytes(budget.bytes - est.total())
        );
    } else {
        println!(
            "fits              no: {}",
            not_fitting(est, budget.bytes, largest)
        );
    }
    println!(
        "largest context that fits ({} sequence{}):",
        est.parallel,
        if est.parallel == 1 { "" } else { "s" }
    );
    for (kv, n) in largest {
        let text = match n {
            Some(n) if *n == shape.context_length => format!("{n} (the trained maximum)"),
            Some(n) => n.to_string(),
            None => "none".to_string(),
        };
        println!("  {:<6} {text}", kv.as_str());
    }
}

/// "needs 6.1 GiB, budget 4.3 GiB; the largest context that fits is 16384
/// with q8_0".
fn not_fitting(est: &Estimate, budget: u64, largest: &[(KvType, Option<u32>)]) -> String {
    let needs = format!("needs {}, budget {}", Bytes(est.total()), Bytes(budget));
    // The K/V type that fits the longest context (the first of equals, in
    // quality order).
    let best = largest
        .iter()
        .filter_map(|(kv, n)| n.map(|n| (n, *kv)))
        .fold(None, |acc: Option<(u32, KvType)>, (n, kv)| match acc {
            Some((m, _)) if m >= n => acc,
            _ => Some((n, kv)),
        });
    let same = largest.iter().find(|(kv, _)| *kv == est.kv_type);
    if let Some((kv, Some(n))) = same {
        let mut text = format!("{needs}; the largest context that fits is {n} with {kv}");
        if let Some((m, other)) = best.filter(|(m, _)| m > n) {
            text.push_str(&format!(" ({m} with {other})"));
        }
        return text;
    }
    // Nothing fits with this K/V type: name the best of the others.
    match best {
        Some((n, kv)) => format!(
            "{needs}; nothing fits with {}, the largest context that fits is {n} with {kv}",
            est.kv_type
        ),
        None => format!(
            "{needs}; no context fits (the mapped weights alone are {})",
            Bytes(est.mapped_weights)
        ),
    }
}

/// `--budget`'s parser: `locara_core::bytes::parse_size`.
fn parse_size(text: &str) -> Result<u64, locara_core::bytes::SizeError> {
    locara_core::bytes::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_does_not_fit_names_the_numbers_and_the_way_out() {
        let est = Estimate {
            context: 32768,
            cells: 32768,
            window_cells: None,
            parallel: 1,
            kv_type: KvType::Q8_0,
            mapped_weights: 4 << 30,
            repacked_weights: 0,
            kv_cache: 2 << 30,
            output_buffer: 0,
            compute_buffers: 0,
            overhead: 0,
            embedding_context: 0,
        };
        let largest = [
            (KvType::F16, Some(8192)),
            (KvType::Q8_0, Some(16384)),
            (KvType::Q4_0, Some(24576)),
        ];
        assert_eq!(
            not_fitting(&est, 5 << 30, &largest),
            "needs 6.0 GiB, budget 5.0 GiB; the largest context that fits is 16384 with q8_0 \
             (24576 with q4_0)"
        );
        let only_q4 = [
            (KvType::F16, None),
            (KvType::Q8_0, None),
            (KvType::Q4_0, Some(4096)),
        ];
        assert_eq!(
            not_fitting(&est, 5 << 30, &only_q4),
            "needs 6.0 GiB, budget 5.0 GiB; nothing fits with q8_0, the largest context that fits \
             is 4096 with q4_0"
        );
        let none = [
            (KvType::F16, None),
            (KvType::Q8_0, None),
            (KvType::Q4_0, None),
        ];
        assert!(not_fitting(&est, 1 << 30, &none).contains("mapped weights alone are 4.0 GiB"));
    }
}
