//! Benchmarks of Locara against llama.cpp's own tools, both built from one
//! llama.cpp tree ([`sdist`]):
//!
//! * `locara-bench` (`src/main.rs`): prefill and decode of the engine worker
//!   path against `llama-bench`;
//! * `locara-serve-bench` (`src/bin/serve_bench.rs`): decode speed and time to
//!   first token of Locara's HTTP API against `llama-server`, one stream and
//!   several concurrent ones at equal settings; and, both servers at their
//!   defaults, time to first token turn by turn in an 8-turn conversation
//!   ([`chat`]) and the footprint after one chat;
//! * `locara-pressure-bench` (`src/bin/pressure_bench.rs`): what a daemon
//!   holding models under real memory pressure costs a neighbouring process
//!   ([`pressure`]), with its governor on and with the OS's pressure ignored;
//! * `locara-cpu-bench` (`src/bin/cpu_bench.rs`): two models decoding at
//!   once through the daemon against each alone, and an interactive stream
//!   beside a background one ([`cpu_share`]).
//!
//! All alternate the two sides, report medians, ranges and ratios, and say
//! how much CPU other processes took while they measured ([`noise`]); see
//! docs/ARCHITECTURE.md, "Build, tests, CI". This library holds what they share.
//!
//! ```no_run
//! use locara_bench::sdist::{Source, Tool, LLAMA_CPP_PYTHON_VERSION};
//!
//! let source = Source::Sdist {
//!     version: LLAMA_CPP_PYTHON_VERSION.to_string(),
//!     cache: locara_bench::dirs::cache_dir()?,
//!     jobs: 2,
//! };
//! let (llama_server, _tree) = source.locate(Tool::LlamaServer)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod chat;
pub mod chat_report;
pub mod cpu_share;
pub mod dirs;
pub mod engine;
pub mod http;
pub mod llama_bench;
pub mod llama_server;
pub mod locara_server;
pub mod noise;
pub mod pressure;
pub mod report;
pub mod scenario;
pub mod sdist;
pub mod serve_report;
pub mod server;
pub mod stats;

use std::sync::OnceLock;

/// Prints a progress line on stderr, prefixed with the running program's
/// name (`locara-bench`, `locara-serve-bench`).
pub fn progress(message: &str) {
    static NAME: OnceLock<String> = OnceLock::new();
    let name = NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_deref()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "locara-bench".to_string())
    });
    eprintln!("{name}: {message}");
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses a `--max-others` percentage, 0 to 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn percentages_are_from_0_to_100() {
        assert_eq!(parse_percent("5"), Ok(5.0));
        assert_eq!(parse_percent("100"), Ok(100.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("x").is_err());
    }
}
