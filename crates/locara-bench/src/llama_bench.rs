//! llama.cpp's own benchmark, `llama-bench`: how one measurement is run and
//! read. Where the binary comes from is [`crate::sdist`]'s business.

use crate::sdist::{self, Source, Tool, TreeInfo};
use crate::tail;
use anyhow::{bail, ensure, Context, Result};
use locara_core::KvType;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A llama-bench binary, ready to run.
#[derive(Debug, Clone)]
pub struct LlamaBench {
    pub path: PathBuf,
    /// What `llama-bench --version` says (its build number and commit, and
    /// the compiler it was built with).
    pub version: String,
    /// Known only for binaries this program built.
    pub tree: Option<TreeInfo>,
    /// The flag that asks for mmap'd weights, which changed across
    /// llama.cpp versions (`-mmp 1`, later `-lm mmap`).
    mmap_args: Vec<&'static str>,
    /// Whether it has `-d` (a context filled before the test starts).
    has_depth: bool,
}

/// The model and settings of llama-bench's runs.
#[derive(Debug, Clone, Copy)]
pub struct RunParams<'a> {
    pub model: &'a Path,
    pub threads: u32,
    pub kv_type: KvType,
    /// Prompt length of the prefill test, tokens (`-p`).
    pub prompt_tokens: u32,
    /// Generated tokens of the decode test (`-n`).
    pub gen_tokens: u32,
    /// Tokens already in the context when the decode test starts (`-d`):
    /// the length of Locara's decode prompt, so that both sides' decoding
    /// attends over the same context. Attention is a few percent of a small
    /// model's decode time and grows with the context.
    pub decode_depth: u32,
}

/// Which of llama-bench's tests one run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Test {
    /// `pp`: one prompt of `prompt_tokens` tokens; prompt tokens per second.
    Prefill,
    /// `tg`: `gen_tokens` single-token decodes; generated tokens per second.
    Decode,
}

impl Test {
    /// llama-bench's `-p` and `-n` for this test.
    fn prompt_and_gen(self, p: &RunParams) -> (u32, u32) {
        match self {
            Test::Prefill => (p.prompt_tokens, 0),
            Test::Decode => (0, p.gen_tokens),
        }
    }
}

impl LlamaBench {
    /// Finds llama-bench: the binary given, or the cached build, or a new
    /// build from the source distribution (minutes; progress on stderr).
    pub fn locate(source: &Source) -> Result<LlamaBench> {
        let (path, tree) = source.locate(Tool::LlamaBench)?;
        let version = sdist::version_of(&path, Tool::LlamaBench)?;
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", path.display()))?;
        let help = String::from_utf8_lossy(&help.stdout);
        Ok(LlamaBench {
            mmap_args: mmap_args(&help),
            has_depth: help.contains("--n-depth"),
            path,
            version,
            tree,
        })
    }

    /// The arguments of one run: one test, once (`-r 1`; this program does
    /// the repeating, alternating with Locara).
    fn args(&self, p: &RunParams, test: Test) -> Vec<String> {
        let (prompt, gen) = test.prompt_and_gen(p);
        let mut args: Vec<String> = vec![
            "-m".into(),
            p.model.to_string_lossy().into_owned(),
            "-t".into(),
            p.threads.to_string(),
            "-ctk".into(),
            p.kv_type.as_str().into(),
            "-ctv".into(),
            p.kv_type.as_str().into(),
            // The engine always runs with flash attention (docs/ARCHITECTURE.md).
            "-fa".into(),
            "1".into(),
        ];
        args.extend(self.mmap_args.iter().map(|a| a.to_string()));
        args.extend(
            [
                "-p",
                &prompt.to_string(),
                "-n",
                &gen.to_string(),
                "-r",
                "1",
                "-o",
                "json",
            ]
            .map(String::from),
        );
        let depth = self.depth(p, test);
        if depth > 0 {
            args.extend(["-d".to_string(), depth.to_string()]);
        }
        args
    }

    /// Runs one test once; tokens per second.
    pub fn run(&self, p: &RunParams, test: Test) -> Result<f64> {
        let args = self.args(p, test);
        let out = Command::new(&self.path)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.path.display()))?;
        if !out.status.success() {
            bail!(
                "{} {} failed ({}):\n{}",
                self.path.display(),
                args.join(" "),
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            );
        }
        parse_results(&out.stdout, p, test, self.depth(p, test)).with_context(|| {
            format!(
                "reading the output of {} {}",
                self.path.display(),
                args.join(" ")
            )
        })
    }

    /// The context depth `test` starts at in this llama-bench: 0 where it
    /// has no `-d` (see [`LlamaBench::can_match_depth`]).
    fn depth(&self, p: &RunParams, test: Test) -> u32 {
        match test {
            Test::Decode if self.has_depth => p.decode_depth,
            _ => 0,
        }
    }

    /// Whether its decode test can start at Locara's context depth; older
    /// llama-bench builds always start from an empty context.
    pub fn can_match_depth(&self) -> bool {
        self.has_depth
    }

    /// One line naming this llama-bench's llama.cpp.
    pub fn describe(&self) -> String {
        TreeInfo::describe(self.tree.as_ref(), &self.version)
    }
}

/// One test of llama-bench's JSON output (the fields this program reads;
/// the rest are ignored).
#[derive(Debug, Deserialize)]
struct TestRecord {
    n_prompt: u32,
    n_gen: u32,
    n_threads: u32,
    type_k: String,
    type_v: String,
    /// Absent in builds without `-d`.
    #[serde(default)]
    n_depth: u32,
    /// Tokens per second, averaged over the test's repetitions.
    avg_ts: f64,
}

/// Reads the figure of `test` at context depth `depth` from llama-bench's
/// `-o json` output, checking that it ran with the settings asked for.
fn parse_results(stdout: &[u8], p: &RunParams, test: Test, depth: u32) -> Result<f64> {
    let tests: Vec<TestRecord> =
        serde_json::from_slice(stdout).context("llama-bench's output is not its JSON")?;
    for t in &tests {
        ensure!(
            t.n_threads == p.threads,
            "llama-bench ran with {} threads, not {}",
            t.n_threads,
            p.threads
        );
        let kv = p.kv_type.as_str();
        ensure!(
            t.type_k == kv && t.type_v == kv,
            "llama-bench ran with K/V types {}/{}, not {kv}",
            t.type_k,
            t.type_v
        );
    }
    let (prompt, gen) = test.prompt_and_gen(p);
    tests
        .iter()
        .find(|t| t.n_prompt == prompt && t.n_gen == gen && t.n_depth == depth)
        .map(|t| t.avg_ts)
        .with_context(|| {
            format!("llama-bench's output has no test of pp{prompt} tg{gen} at depth {depth}")
        })
}

/// The mmap flag of this llama-bench, judged from its `--help`.
fn mmap_args(help: &str) -> Vec<&'static str> {
    if help.contains("--load-mode") {
        vec!["-lm", "mmap"]
    } else if help.contains("--mmap") {
        vec!["-mmp", "1"]
    } else {
        // Older versions than either flag always mmap.
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RunParams<'static> {
        RunParams {
            model: Path::new("/m/model.gguf"),
            threads: 2,
            kv_type: KvType::Q8_0,
            prompt_tokens: 512,
            gen_tokens: 128,
            decode_depth: 40,
        }
    }

    /// A real `llama-bench -o json` run (llama-cpp-python 0.3.36), with
    /// fields this program does not read left out.
    const OUTPUT: &str = r#"[
  {
    "build_commit": "0c1e57098",
    "build_number": 0,
    "cpu_info": "AMD EPYC",
    "backends": "CPU",
    "model_filename": "/m/model.gguf",
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "poll": 50,
    "type_k": "q8_0",
    "type_v": "q8_0",
    "flash_attn": 1,
    "load_mode": "mmap",
    "n_prompt": 512,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ns": 305596199,
    "stddev_ns": 0,
    "avg_ts": 812.5,
    "stddev_ts": 0.000000,
    "samples_ns": [ 305596199 ],
    "samples_ts": [ 812.5 ]
  },
  {
    "build_commit": "0c1e57098",
    "build_number": 0,
    "n_threads": 2,
    "type_k": "q8_0",
    "type_v": "q8_0",
    "flash_attn": 1,
    "n_prompt": 0,
    "n_gen": 128,
    "avg_ns": 145539468,
    "avg_ts": 151.25,
    "samples_ts": [ 151.25 ]
  }
]"#;

    #[test]
    fn reads_prefill_and_decode_from_json() {
        let read = |test| parse_results(OUTPUT.as_bytes(), &params(), test, 0).unwrap();
        assert_eq!(read(Test::Prefill), 812.5);
        assert_eq!(read(Test::Decode), 151.25);
    }

    #[test]
    fn refuses_a_run_with_other_settings() {
        let p = RunParams {
            threads: 4,
            ..params()
        };
        let err = parse_results(OUTPUT.as_bytes(), &p, Test::Decode, 0).unwrap_err();
        assert!(err.to_string().contains("2 threads, not 4"), "{err}");
        let p = RunParams {
            kv_type: KvType::F16,
            ..params()
        };
        assert!(parse_results(OUTPUT.as_bytes(), &p, Test::Prefill, 0).is_err());
        let p = RunParams {
            gen_tokens: 64,
            ..params()
        };
        let err = parse_results(OUTPUT.as_bytes(), &p, Test::Decode, 0).unwrap_err();
        assert!(err.to_string().contains("tg64"), "{err}");
    }

    #[test]
    fn decode_is_read_at_the_depth_asked_for() {
        // The output above has no n_depth (as older builds): depth 0.
        let err = parse_results(OUTPUT.as_bytes(), &params(), Test::Decode, 40).unwrap_err();
        assert!(err.to_string().contains("tg128 at depth 40"), "{err}");
        let deep = OUTPUT.replace(r#""n_gen": 128,"#, r#""n_gen": 128, "n_depth": 40,"#);
        let tps = parse_results(deep.as_bytes(), &params(), Test::Decode, 40).unwrap();
        assert_eq!(tps, 151.25);
    }

    #[test]
    fn args_ask_for_the_same_settings_as_the_engine() {
        let bench = LlamaBench {
            path: "llama-bench".into(),
            version: String::new(),
            tree: None,
            mmap_args: mmap_args("  -lm, --load-mode <auto|none|mmap>"),
            has_depth: true,
        };
        assert_eq!(
            bench.args(&params(), Test::Prefill).join(" "),
            "-m /m/model.gguf -t 2 -ctk q8_0 -ctv q8_0 -fa 1 -lm mmap -p 512 -n 0 -r 1 -o json"
        );
        assert_eq!(
            bench.args(&params(), Test::Decode).join(" "),
            "-m /m/model.gguf -t 2 -ctk q8_0 -ctv q8_0 -fa 1 -lm mmap -p 0 -n 128 -r 1 -o json -d 40"
        );
        let old = LlamaBench {
            has_depth: false,
            ..bench
        };
        assert!(old
            .args(&params(), Test::Decode)
            .join(" ")
            .ends_with("-n 128 -r 1 -o json"));
        assert_eq!(mmap_args("  -mmp, --mmap <0|1>"), ["-mmp", "1"]);
    }
}
