//! The result: a table for people, JSON for scripts.

use crate::stats::Comparison;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Everything one benchmark run found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub model: PathBuf,
    pub threads: u32,
    pub kv_type: String,
    pub flash_attention: bool,
    /// Measured repetitions per side (warm-ups not counted).
    pub reps: u32,
    /// Prompt length of llama-bench's prefill test, tokens.
    pub prompt_tokens: u32,
    /// Generated tokens of both decode tests.
    pub gen_tokens: u32,
    /// Context depth both decode tests started at (llama-bench's `-d`).
    pub decode_depth: u32,
    pub llama_bench: LlamaBenchInfo,
    pub locara: LocaraInfo,
    /// `None` when `--only` left the test out.
    pub prefill: Option<Comparison>,
    pub decode: Option<Comparison>,
    /// Share of the machine's CPU time (0 to 1) that processes other than
    /// this benchmark's took during the measured reps; Linux only.
    pub others_cpu_share: Option<f64>,
    /// Every ratio measured meets its target.
    pub pass: bool,
    /// Anything that makes the figures less comparable than they should be.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LlamaBenchInfo {
    pub path: PathBuf,
    /// Its llama.cpp: source, commit, ggml version, `--version`.
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct LocaraInfo {
    /// The llama.cpp build the worker reported.
    pub engine: String,
    /// Length of the prefill prompt as the worker tokenized it.
    pub prompt_tokens: u32,
    /// Context the worker loaded, tokens.
    pub context: u32,
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model        {}", self.model.display());
        let _ = writeln!(
            s,
            "settings     {} threads, K/V {}, flash attention {}, mmap on, {} alternating reps",
            self.threads,
            self.kv_type,
            if self.flash_attention { "on" } else { "off" },
            self.reps
        );
        let _ = writeln!(s, "llama-bench  {}", self.llama_bench.version);
        let _ = writeln!(s, "Locara       {}", self.locara.engine);
        if let Some(share) = self.others_cpu_share {
            let _ = writeln!(
                s,
                "machine      other processes took {:.1} % of the CPU while this measured",
                share * 100.0
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<22}{:>26}{:>26}{:>12}{:>31}{:>9}",
            "tokens/s",
            "llama-bench median (range)",
            "Locara median (range)",
            "of medians",
            "ratio: pairs' median (range)",
            "target"
        );
        let rows = [
            (
                "prefill",
                format!("pp{}", self.prompt_tokens),
                &self.prefill,
            ),
            (
                "decode",
                match self.decode_depth {
                    0 => format!("tg{}", self.gen_tokens),
                    d => format!("tg{} @ d{d}", self.gen_tokens),
                },
                &self.decode,
            ),
        ];
        let measured = rows
            .iter()
            .filter_map(|(what, test, c)| Some((*what, test, c.as_ref()?)));
        for (what, test, c) in measured.clone() {
            let name = format!("{what} ({test})");
            let _ = writeln!(
                s,
                "{:<22}{:>26}{:>26}{:>12.3}{:>31}{:>9}",
                name,
                cell(&c.llama_bench),
                cell(&c.locara),
                c.ratio_of_medians,
                format!(
                    "{:.3} ({:.3}–{:.3})",
                    c.pairs.median, c.pairs.min, c.pairs.max
                ),
                format!("≥ {:.2}", c.target)
            );
        }
        let _ = writeln!(s);
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let verdicts: Vec<String> = measured
            .map(|(what, _, c)| {
                format!(
                    "{what} ratio {:.3} {} (target {:.2})",
                    c.ratio,
                    if c.pass { "pass" } else { "FAIL" },
                    c.target
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

fn cell(s: &crate::stats::Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            model: "/m/smollm2.gguf".into(),
            threads: 2,
            kv_type: "q8_0".into(),
            flash_attention: true,
            reps: 3,
            prompt_tokens: 512,
            gen_tokens: 128,
            decode_depth: 40,
            llama_bench: LlamaBenchInfo {
                path: "llama-bench".into(),
                version: "llama-cpp-python 0.3.36".into(),
            },
            locara: LocaraInfo {
                engine: "ggml 0.26.0".into(),
                prompt_tokens: 512,
                context: 4096,
            },
            prefill: Comparison::new(&[800.0, 810.0, 790.0], &[780.0, 790.0, 770.0], 0.95),
            decode: Comparison::new(&[150.0, 151.0, 149.0], &[140.0, 141.0, 136.0], 0.97),
            others_cpu_share: Some(0.01),
            pass: false,
            notes: vec!["something odd".into()],
        }
    }

    #[test]
    fn table_shows_medians_ratios_and_verdict() {
        let table = sample().table();
        assert!(table.contains("prefill (pp512)"), "{table}");
        assert!(table.contains("decode (tg128 @ d40)"), "{table}");
        assert!(table.contains("800.0 (790.0–810.0)"), "{table}");
        assert!(table.contains("0.975 (0.975–0.975)"), "{table}");
        assert!(table.contains("0.933 (0.913–0.934)"), "{table}");
        assert!(table.contains("note: something odd"), "{table}");
        assert!(table.contains("took 1.0 % of the CPU"), "{table}");
        assert!(table.contains("FAIL: prefill ratio 0.975 pass"), "{table}");
        assert!(table.contains("decode ratio 0.933 FAIL"), "{table}");
    }

    #[test]
    fn table_leaves_out_a_test_not_measured() {
        let report = Report {
            prefill: None,
            decode: Comparison::new(&[150.0, 151.0, 149.0], &[147.0, 148.0, 146.0], 0.97),
            pass: true,
            ..sample()
        };
        let table = report.table();
        assert!(!table.contains("prefill"), "{table}");
        assert!(table.contains("PASS: decode ratio 0.980 pass"), "{table}");
    }
}
