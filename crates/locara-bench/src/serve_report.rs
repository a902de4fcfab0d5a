//! The serve benchmark's result: a table for people, JSON for scripts.

use crate::http::StreamResult;
use crate::stats::Summary;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What a ratio Locara / llama-server must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// At least this (throughput: higher is better).
    AtLeast(f64),
    /// At most this (latency: lower is better).
    AtMost(f64),
}

impl Target {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(t) => ratio >= t,
            Target::AtMost(t) => ratio <= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtLeast(t) => write!(f, "≥ {t:.2}"),
            Target::AtMost(t) => write!(f, "≤ {t:.2}"),
        }
    }
}

/// One metric on both sides, and how they compare.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versus {
    pub llama_server: Summary,
    pub locara: Summary,
    /// Median of Locara over median of llama-server.
    pub ratio: f64,
    pub target: Target,
    pub pass: bool,
}

impl Versus {
    /// `None` without samples on a side, or against a zero median.
    pub fn new(llama_server: &[f64], locara: &[f64], target: Target) -> Option<Versus> {
        let llama_server = Summary::of(llama_server)?;
        let locara = Summary::of(locara)?;
        if llama_server.median <= 0.0 {
            return None;
        }
        let ratio = locara.median / llama_server.median;
        Some(Versus {
            pass: target.met(ratio),
            llama_server,
            locara,
            ratio,
            target,
        })
    }
}

/// How many tokens one side's streams produced, and whether its `usage`
/// agrees that one chunk with text is one token.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenCounts {
    /// Streams counted (warm-ups included).
    pub streams: u32,
    /// Fewest and most chunks with text in one stream.
    pub min: u32,
    pub max: u32,
    /// Streams whose `usage.completion_tokens` differs from their count of
    /// chunks with text.
    pub usage_mismatches: u32,
    /// Streams that reported no `usage`.
    pub without_usage: u32,
    /// Streams that ended for another reason than `max_tokens`.
    pub stopped_early: u32,
    /// Prompt tokens, from `usage`, as the first stream reported them.
    pub prompt_tokens: Option<u32>,
    /// One mismatch, as an example: (chunks with text, completion tokens).
    pub example_mismatch: Option<(u32, u32)>,
    /// Most prompt tokens a stream's server said it took from its cache
    /// instead of prefilling (0 where it never said).
    pub max_cached_prompt_tokens: u32,
}

impl TokenCounts {
    pub fn add(&mut self, s: &StreamResult) {
        if self.streams == 0 {
            self.min = s.tokens;
            self.max = s.tokens;
        } else {
            self.min = self.min.min(s.tokens);
            self.max = self.max.max(s.tokens);
        }
        self.streams += 1;
        match s.usage {
            Some(u) => {
                if u.completion_tokens != s.tokens {
                    self.usage_mismatches += 1;
                    self.example_mismatch
                        .get_or_insert((s.tokens, u.completion_tokens));
                }
                self.prompt_tokens.get_or_insert(u.prompt_tokens);
            }
            None => self.without_usage += 1,
        }
        if s.finish_reason.as_deref() != Some("length") {
            self.stopped_early += 1;
        }
        self.max_cached_prompt_tokens = self
            .max_cached_prompt_tokens
            .max(s.cached_prompt_tokens.unwrap_or(0));
    }

    /// `128 per stream (usage agrees)`, for the table.
    pub(crate) fn describe(&self) -> String {
        let count = if self.min == self.max {
            format!("{} per stream", self.min)
        } else {
            format!("{}–{} per stream", self.min, self.max)
        };
        let usage = if self.without_usage == self.streams {
            "no usage reported".to_string()
        } else if self.usage_mismatches == 0 && self.without_usage == 0 {
            "usage.completion_tokens agrees".to_string()
        } else {
            let (chunks, usage) = self.example_mismatch.unwrap_or_default();
            format!(
                "usage.completion_tokens differs in {} of {} streams, e.g. {chunks} chunks for {usage} tokens",
                self.usage_mismatches, self.streams
            )
        };
        format!("{count} ({usage})")
    }
}

/// One side's server.
#[derive(Debug, Clone, Serialize)]
pub struct SideInfo {
    /// The binary that ran, or the URL of a server this program did not start.
    pub location: String,
    /// Its llama.cpp (and for Locara, its own version).
    pub version: String,
    pub tokens: TokenCounts,
}

/// Everything one run of the serve benchmark found.
#[derive(Debug, Serialize)]
pub struct ServeReport {
    pub model: PathBuf,
    pub threads: u32,
    pub kv_type: String,
    /// Slots of each server, and streams of the concurrent scenario.
    pub parallel: u32,
    /// Context of each sequence, tokens.
    pub context: u32,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Measured repetitions per side and scenario (warm-ups not counted).
    pub reps: u32,
    /// The user message of every request.
    pub prompt: String,
    pub llama_server: SideInfo,
    pub locara: SideInfo,
    /// How each side was started: the command line, and for Locara its
    /// configuration file.
    pub llama_server_command: String,
    pub locara_command: String,
    /// One stream: decode tokens/s after the first token.
    pub single_decode: Versus,
    /// One stream: time to first token, milliseconds.
    pub single_ttft_ms: Versus,
    /// Concurrent streams: all their tokens over the span from the first
    /// first token to the last last token, tokens/s.
    pub multi_decode: Versus,
    /// Concurrent streams: median of their times to first token, ms.
    pub multi_ttft_ms: Versus,
    /// Share of the machine's CPU time (0 to 1) that processes other than
    /// this benchmark and the two servers took during the measured reps;
    /// Linux only, and unknown for a server this program did not start.
    pub others_cpu_share: Option<f64>,
    /// Every ratio meets its target.
    pub pass: bool,
    /// Anything that makes the figures less comparable than they should be.
    pub notes: Vec<String>,
}

impl ServeReport {
    pub fn rows(&self) -> [(String, &Versus); 4] {
        let n = self.parallel;
        [
            ("1 stream: decode tokens/s".into(), &self.single_decode),
            ("1 stream: first token ms".into(), &self.single_ttft_ms),
            (
                format!("{n} streams: decode tokens/s (sum)"),
                &self.multi_decode,
            ),
            (
                format!("{n} streams: first token ms (median)"),
                &self.multi_ttft_ms,
            ),
        ]
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model         {}", self.model.display());
        let _ = writeln!(
            s,
            "settings      {} threads, K/V {}, flash attention on, {} slots of {} tokens, \
             max_tokens {}, greedy, {} alternating reps",
            self.threads, self.kv_type, self.parallel, self.context, self.max_tokens, self.reps
        );
        let _ = writeln!(s, "prompt        {:?}", self.prompt);
        let _ = writeln!(
            s,
            "llama-server  {} ({})",
            self.llama_server.version, self.llama_server.location
        );
        let _ = writeln!(s, "  ran as      {}", self.llama_server_command);
        // A comparison that turns a peer's features off says so.
        let _ = writeln!(
            s,
            "  note        its prompt cache is off here, as Locara's is (not its defaults); \
             `--only chat8` compares both servers at their defaults"
        );
        let _ = writeln!(
            s,
            "Locara        {} ({})",
            self.locara.version, self.locara.location
        );
        let _ = writeln!(s, "  ran as      {}", self.locara_command);
        machine_line(&mut s, self.others_cpu_share);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<35}{:>28}{:>28}{:>8}{:>9}",
            "", "llama-server median (range)", "Locara median (range)", "ratio", "target"
        );
        for (name, v) in self.rows() {
            let _ = writeln!(
                s,
                "{:<35}{:>28}{:>28}{:>8.3}{:>9}",
                name,
                cell(&v.llama_server),
                cell(&v.locara),
                v.ratio,
                v.target.to_string()
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "tokens        llama-server: {}; Locara: {}",
            self.llama_server.tokens.describe(),
            self.locara.tokens.describe()
        );
        let prompt = |t: Option<u32>| t.map_or("?".to_string(), |n| n.to_string());
        let _ = writeln!(
            s,
            "prompt tokens llama-server {}, Locara {}",
            prompt(self.llama_server.tokens.prompt_tokens),
            prompt(self.locara.tokens.prompt_tokens)
        );
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let verdicts: Vec<String> = self
            .rows()
            .iter()
            .map(|(name, v)| {
                format!(
                    "{name} {:.3} {}",
                    v.ratio,
                    if v.pass { "pass" } else { "FAIL" }
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "{}: {}",
            if self.pass { "PASS" } else { "FAIL" },
            verdicts.join(", ")
        );
        s
    }
}

fn cell(s: &Summary) -> String {
    let digits = if s.median >= 100.0 { 0 } else { 1 };
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

/// The report's line on how much of the CPU other processes took while it
/// measured (`None`: not known).
pub(crate) fn machine_line(s: &mut String, others_cpu_share: Option<f64>) {
    let _ = match others_cpu_share {
        Some(share) => writeln!(
            s,
            "machine       other processes took {:.1} % of the CPU while this measured",
            share * 100.0
        ),
        None => writeln!(
            s,
            "machine       CPU taken by other processes unknown (not Linux, or a server this program did not start)"
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Usage;
    use std::time::{Duration, Instant};

    #[test]
    fn targets_point_both_ways() {
        assert!(Target::AtLeast(0.95).met(0.95));
        assert!(!Target::AtLeast(0.95).met(0.949));
        assert!(Target::AtMost(1.1).met(1.1));
        assert!(!Target::AtMost(1.1).met(1.11));
        assert_eq!(Target::AtMost(1.1).to_string(), "≤ 1.10");
        let v = Versus::new(
            &[100.0, 110.0, 90.0],
            &[105.0, 104.0, 106.0],
            Target::AtMost(1.1),
        )
        .unwrap();
        assert!((v.ratio - 1.05).abs() < 1e-12);
        assert!(v.pass);
        assert!(Versus::new(&[0.0], &[1.0], Target::AtLeast(1.0)).is_none());
        assert!(Versus::new(&[], &[1.0], Target::AtLeast(1.0)).is_none());
    }

    fn stream(tokens: u32, completion: Option<u32>, finish: &str) -> StreamResult {
        let t = Instant::now();
        StreamResult {
            sent: t,
            first_token: t + Duration::from_millis(10),
            last_token: t + Duration::from_millis(900),
            tokens,
            usage: completion.map(|c| Usage {
                prompt_tokens: 30,
                completion_tokens: c,
            }),
            finish_reason: Some(finish.into()),
            text: String::new(),
            cached_prompt_tokens: None,
            server_prefill_ms: None,
            token_times: Vec::new(),
        }
    }

    #[test]
    fn token_counts_check_usage_and_early_stops() {
        let mut c = TokenCounts::default();
        c.add(&stream(128, Some(128), "length"));
        c.add(&stream(128, Some(128), "length"));
        assert_eq!(
            c.describe(),
            "128 per stream (usage.completion_tokens agrees)"
        );
        c.add(&stream(40, Some(41), "stop"));
        assert_eq!(
            (c.min, c.max, c.usage_mismatches, c.stopped_early),
            (40, 128, 1, 1)
        );
        assert_eq!(c.prompt_tokens, Some(30));
        assert!(c
            .describe()
            .contains("differs in 1 of 3 streams, e.g. 40 chunks for 41 tokens"));
        assert_eq!(c.max_cached_prompt_tokens, 0);
        c.add(&StreamResult {
            cached_prompt_tokens: Some(25),
            ..stream(128, Some(128), "length")
        });
        assert_eq!(c.max_cached_prompt_tokens, 25);
        let mut none = TokenCounts::default();
        none.add(&stream(5, None, "length"));
        assert_eq!(none.describe(), "5 per stream (no usage reported)");
    }

    #[test]
    fn table_shows_every_row_and_the_verdict() {
        let v = |a: &[f64], b: &[f64], t| Versus::new(a, b, t).unwrap();
        let report = ServeReport {
            model: "/m/smollm2.gguf".into(),
            threads: 2,
            kv_type: "q8_0".into(),
            parallel: 4,
            context: 4096,
            max_tokens: 128,
            reps: 3,
            prompt: "Count".into(),
            llama_server: SideInfo {
                location: "/c/llama-server".into(),
                version: "llama-cpp-python 0.3.36".into(),
                tokens: TokenCounts::default(),
            },
            locara: SideInfo {
                location: "/t/locara".into(),
                version: "locara 0.1.0".into(),
                tokens: TokenCounts::default(),
            },
            llama_server_command: "llama-server -m /m/smollm2.gguf --cache-ram 0".into(),
            locara_command: "locara serve --config locara.toml".into(),
            single_decode: v(
                &[150.0, 151.0, 149.0],
                &[148.0, 147.0, 149.0],
                Target::AtLeast(0.95),
            ),
            single_ttft_ms: v(
                &[20.0, 21.0, 19.0],
                &[25.0, 26.0, 24.0],
                Target::AtMost(1.1),
            ),
            multi_decode: v(&[300.0], &[310.0], Target::AtLeast(1.0)),
            multi_ttft_ms: v(&[40.0], &[41.0], Target::AtMost(1.1)),
            others_cpu_share: Some(0.02),
            pass: false,
            notes: vec!["something odd".into()],
        };
        let table = report.table();
        assert!(table.contains("1 stream: decode tokens/s"), "{table}");
        assert!(table.contains("150 (149–151)"), "{table}");
        assert!(table.contains("20.0 (19.0–21.0)"), "{table}");
        assert!(
            table.contains("4 streams: decode tokens/s (sum)"),
            "{table}"
        );
        assert!(table.contains("≤ 1.10"), "{table}");
        assert!(table.contains("note: something odd"), "{table}");
        assert!(
            table.contains("ran as      llama-server -m /m/smollm2.gguf --cache-ram 0"),
            "{table}"
        );
        assert!(table.contains("its prompt cache is off"), "{table}");
        assert!(table.contains("took 2.0 % of the CPU"), "{table}");
        assert!(
            table.contains("FAIL: 1 stream: decode tokens/s 0.987 pass"),
            "{table}"
        );
        assert!(
            table.contains("1 stream: first token ms 1.250 FAIL"),
            "{table}"
        );
    }
}
