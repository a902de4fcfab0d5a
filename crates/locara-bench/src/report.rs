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
    pub llama_bench: LlamaBenchInfo,
    pub locara: LocaraInfo,
    pub prefill: Comparison,
    pub decode: Comparison,
    /// Share of the machine's CPU time (0 to 1) that processes other than
    /// this benchmark's took during the measured reps; Linux only.
    pub others_cpu_share: Option<f64>,
    /// Both ratios meet their targets.
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
            "{:<17}{:>26}{:>26}{:>9}{:>9}",
            "tokens/s", "llama-bench median (range)", "Locara median (range)", "ratio", "target"
        );
        let rows = [
            (format!("prefill (pp{})", self.prompt_tokens), &self.prefill),
            (format!("decode (tg{})", self.gen_tokens), &self.decode),
        ];
        for (name, c) in rows {
            let _ = writeln!(
                s,
                "{:<17}{:>26}{:>26}{:>9.3}{:>9}",
                name,
                cell(&c.llama_bench),
                cell(&c.locara),
                c.ratio,
                format!("≥ {:.2}", c.target)
            );
        }
        let _ = writeln!(s);
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let verdict = |c: &Comparison| if c.pass { "pass" } else { "FAIL" };
        let _ = writeln!(
            s,
            "{}: prefill ratio {:.3} {} (target {:.2}), decode ratio {:.3} {} (target {:.2})",
            if self.pass { "PASS" } else { "FAIL" },
            self.prefill.ratio,
            verdict(&self.prefill),
            self.prefill.target,
            self.decode.ratio,
            verdict(&self.decode),
            self.decode.target,
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

    #[test]
    fn table_shows_medians_ratios_and_verdict() {
        let report = Report {
            model: "/m/smollm2.gguf".into(),
            threads: 2,
            kv_type: "q8_0".into(),
            flash_attention: true,
            reps: 3,
            prompt_tokens: 512,
            gen_tokens: 128,
            llama_bench: LlamaBenchInfo {
                path: "llama-bench".into(),
                version: "llama-cpp-python 0.3.36".into(),
            },
            locara: LocaraInfo {
                engine: "ggml 0.26.0".into(),
                prompt_tokens: 512,
                context: 4096,
            },
            prefill: Comparison::new(&[800.0, 810.0, 790.0], &[780.0, 790.0, 770.0], 0.95).unwrap(),
            decode: Comparison::new(&[150.0, 151.0, 149.0], &[140.0, 141.0, 139.0], 0.97).unwrap(),
            others_cpu_share: Some(0.01),
            pass: false,
            notes: vec!["something odd".into()],
        };
        let table = report.table();
        assert!(table.contains("prefill (pp512)"), "{table}");
        assert!(table.contains("800.0 (790.0–810.0)"), "{table}");
        assert!(table.contains("0.975"), "{table}");
        assert!(table.contains("note: something odd"), "{table}");
        assert!(table.contains("took 1.0 % of the CPU"), "{table}");
        assert!(table.contains("FAIL: prefill ratio 0.975 pass"), "{table}");
        assert!(table.contains("decode ratio 0.933 FAIL"), "{table}");
    }
}
