//! llama.cpp's own benchmark, `llama-bench`: where the binary comes from and
//! how one measurement is run and read.
//!
//! Unless `--llama-bench PATH` names a binary, it is built once from the
//! source distribution of `llama-cpp-python` on the Python package index,
//! which vendors a whole llama.cpp tree (`vendor/llama.cpp`, `tools/` included),
//! and kept in the cache directory:
//!
//! ```text
//! <cache>/llama-cpp-python-<version>/
//!     sdist/llama_cpp_python-<version>.tar.gz   what pip downloaded
//!     llama-bench                               the built binary
//!     tree.json                                 which llama.cpp it was built from
//!     build.log                                 CMake's output of the last build
//! ```
//!
//! The extracted source and CMake's build directory are removed after a
//! successful build; the binary is linked statically against llama.cpp, so it
//! needs neither.

use anyhow::{bail, ensure, Context, Result};
use locara_core::KvType;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The `llama-cpp-python` release whose source distribution llama-bench is
/// built from.
///
/// The engine links llama.cpp through `llama-cpp-sys-2` 0.1.161, whose tree
/// has ggml 0.26.0. No `llama-cpp-python` release vendors a tree that new:
/// 0.3.36, the newest on the index when this was written, vendors
/// ggml-org/llama.cpp@0c1e57098 with ggml 0.25.3 (0.3.30 has ggml 0.15.1), so
/// it is the closest one. Its `ggml-cpu` sources differ from the engine's in
/// a handful of files; both llama.cpp versions are printed with every result
/// so a reader can judge. Bump this together with `llama-cpp-sys-2`, picking
/// the release whose `vendor/llama.cpp/ggml/CMakeLists.txt` `GGML_VERSION_*`
/// lines are closest to the engine's.
pub const LLAMA_CPP_PYTHON_VERSION: &str = "0.3.36";

/// CMake options for the llama-bench build, beyond the source and build
/// directories. They follow how `llama-cpp-sys-2` builds the engine's
/// llama.cpp (its build script), so both sides run the same kind of binary:
const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    // The workspace builds with `-C target-cpu=native`, which llama-cpp-sys-2
    // turns into GGML_NATIVE=ON (see .cargo/config.toml).
    "-DGGML_NATIVE=ON",
    // The workspace enables llama-cpp-2's `openmp` feature: GGML_OPENMP=ON.
    "-DGGML_OPENMP=ON",
    // llama-cpp-sys-2 links llama.cpp statically; so does this, which also
    // makes the cached binary independent of the build directory.
    "-DBUILD_SHARED_LIBS=OFF",
    // llama-bench lives in tools/, which needs the common library.
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    // No network code: older trees download with curl, newer ones with OpenSSL.
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
];

/// Where llama-bench comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A binary the user named.
    Binary(PathBuf),
    /// Built from a `llama-cpp-python` source distribution, cached in `cache`.
    Sdist {
        version: String,
        cache: PathBuf,
        /// Parallel jobs for the C++ build.
        jobs: usize,
    },
}

/// What is known of the llama.cpp tree a llama-bench was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeInfo {
    /// The `llama-cpp-python` release whose source distribution held the tree.
    pub llama_cpp_python: String,
    /// The llama.cpp commit, from that release's changelog.
    pub llama_cpp_commit: Option<String>,
    /// ggml's version, from `ggml/CMakeLists.txt`.
    pub ggml_version: Option<String>,
}

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
}

/// One llama-bench run: prefill and decode of one model and settings.
#[derive(Debug, Clone, Copy)]
pub struct RunParams<'a> {
    pub model: &'a Path,
    pub threads: u32,
    pub kv_type: KvType,
    /// Prompt length of the prefill test, tokens (`-p`).
    pub prompt_tokens: u32,
    /// Generated tokens of the decode test (`-n`).
    pub gen_tokens: u32,
}

/// What one llama-bench run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Prompt tokens per second (the `pp` test).
    pub prefill_tps: f64,
    /// Generated tokens per second (the `tg` test).
    pub decode_tps: f64,
}

impl LlamaBench {
    /// Finds llama-bench: the binary given, or the cached build, or a new
    /// build from the source distribution (minutes; progress on stderr).
    pub fn locate(source: &Source) -> Result<LlamaBench> {
        let (path, tree) = match source {
            Source::Binary(path) => (path.clone(), None),
            Source::Sdist {
                version,
                cache,
                jobs,
            } => {
                let dir = cache.join(format!("llama-cpp-python-{version}"));
                let binary = dir.join("llama-bench");
                if !binary.is_file() {
                    build_from_sdist(version, &dir, *jobs)?;
                }
                let tree = fs::read(dir.join("tree.json"))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                (binary, tree)
            }
        };
        let version = version_of(&path)?;
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", path.display()))?;
        let help = String::from_utf8_lossy(&help.stdout);
        Ok(LlamaBench {
            mmap_args: mmap_args(&help),
            path,
            version,
            tree,
        })
    }

    /// The arguments of one run: one prefill test and one decode test, once
    /// each (`-r 1`; this program does the repeating, alternating with Locara).
    fn args(&self, p: &RunParams) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-m".into(),
            p.model.to_string_lossy().into_owned(),
            "-t".into(),
            p.threads.to_string(),
            "-ctk".into(),
            p.kv_type.as_str().into(),
            "-ctv".into(),
            p.kv_type.as_str().into(),
            // The engine always runs with flash attention (DESIGN.md).
            "-fa".into(),
            "1".into(),
        ];
        args.extend(self.mmap_args.iter().map(|a| a.to_string()));
        args.extend(
            [
                "-p",
                &p.prompt_tokens.to_string(),
                "-n",
                &p.gen_tokens.to_string(),
                "-r",
                "1",
                "-o",
                "json",
            ]
            .map(String::from),
        );
        args
    }

    /// Runs llama-bench once and reads its JSON.
    pub fn run(&self, p: &RunParams) -> Result<Measurement> {
        let args = self.args(p);
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
        parse_results(&out.stdout, p).with_context(|| {
            format!(
                "reading the output of {} {}",
                self.path.display(),
                args.join(" ")
            )
        })
    }

    /// One line naming this llama-bench's llama.cpp.
    pub fn describe(&self) -> String {
        match &self.tree {
            Some(t) => format!(
                "llama-cpp-python {} sdist: llama.cpp {}, ggml {} ({})",
                t.llama_cpp_python,
                t.llama_cpp_commit.as_deref().unwrap_or("commit unknown"),
                t.ggml_version.as_deref().unwrap_or("version unknown"),
                self.version
            ),
            None => self.version.clone(),
        }
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
    /// Tokens per second, averaged over the test's repetitions.
    avg_ts: f64,
}

/// Reads the prefill and decode figures from llama-bench's `-o json` output,
/// checking that it ran with the settings asked for.
fn parse_results(stdout: &[u8], p: &RunParams) -> Result<Measurement> {
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
    let find = |prompt: u32, gen: u32| {
        tests
            .iter()
            .find(|t| t.n_prompt == prompt && t.n_gen == gen)
            .map(|t| t.avg_ts)
            .with_context(|| format!("llama-bench's output has no test of pp{prompt} tg{gen}"))
    };
    Ok(Measurement {
        prefill_tps: find(p.prompt_tokens, 0)?,
        decode_tps: find(0, p.gen_tokens)?,
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

fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    ensure!(
        out.status.success(),
        "{} --version failed ({}); is it llama-bench?",
        path.display(),
        out.status
    );
    // It prints to stderr; some versions to stdout.
    let text = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; "))
}

/// Downloads, extracts and builds llama-bench into `dir`.
fn build_from_sdist(version: &str, dir: &Path, jobs: usize) -> Result<()> {
    let started = Instant::now();
    progress(&format!(
        "building llama-bench from llama-cpp-python {version} in {} (once; takes minutes)",
        dir.display()
    ));
    let sdist_dir = dir.join("sdist");
    fs::create_dir_all(&sdist_dir)
        .with_context(|| format!("creating the cache directory {}", sdist_dir.display()))?;
    let tarball = match find_sdist(&sdist_dir, version) {
        Some(t) => t,
        None => {
            download_sdist(version, &sdist_dir)?;
            find_sdist(&sdist_dir, version).with_context(|| {
                format!(
                    "pip reported success but left no llama_cpp_python-{version}.tar.gz in {}",
                    sdist_dir.display()
                )
            })?
        }
    };

    let src = dir.join("src");
    recreate_dir(&src)?;
    progress(&format!("extracting {}", tarball.display()));
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .status()
        .context("running tar")?;
    ensure!(
        status.success(),
        "tar -xzf {} failed ({status})",
        tarball.display()
    );
    let (package_root, tree_root) = find_llama_tree(&src)?;
    let tree = TreeInfo {
        llama_cpp_python: version.to_string(),
        llama_cpp_commit: fs::read_to_string(package_root.join("CHANGELOG.md"))
            .ok()
            .and_then(|text| changelog_commit(&text, version)),
        ggml_version: fs::read_to_string(tree_root.join("ggml/CMakeLists.txt"))
            .ok()
            .and_then(|text| ggml_version(&text)),
    };
    ensure!(
        tree_root.join("tools/llama-bench").is_dir(),
        "{} has no tools/llama-bench; choose another --llama-cpp-python version",
        tree_root.display()
    );

    let build = dir.join("build");
    recreate_dir(&build)?;
    let log_path = dir.join("build.log");
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    progress("configuring with cmake");
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(&tree_root)
        .arg("-B")
        .arg(&build)
        .args(CMAKE_OPTIONS)
        // The tree has no .git; without these its CMake would ask git, which
        // might answer for a repository the cache directory happens to be in.
        .arg(format!(
            "-DLLAMA_BUILD_COMMIT={}",
            tree.llama_cpp_commit.as_deref().unwrap_or("unknown")
        ))
        .arg("-DLLAMA_BUILD_NUMBER=0");
    run_logged(&mut configure, &mut log, &log_path, |_| {})?;

    progress(&format!("compiling llama-bench with {jobs} jobs"));
    let mut last_shown = (0u32, Instant::now());
    let mut compile = Command::new("cmake");
    compile
        .arg("--build")
        .arg(&build)
        .args(["--config", "Release", "--target", "llama-bench", "-j"])
        .arg(jobs.to_string());
    run_logged(&mut compile, &mut log, &log_path, |line| {
        // One line per 10 % or per half minute, not one per source file.
        if let Some(pct) = build_percent(line) {
            let (shown, at) = last_shown;
            if pct >= shown + 10 || at.elapsed().as_secs() >= 30 {
                progress(&format!(
                    "llama-bench build {pct:>3} % ({} s)",
                    started.elapsed().as_secs()
                ));
                last_shown = (pct, Instant::now());
            }
        }
    })?;

    let built = ["bin/llama-bench", "bin/Release/llama-bench"]
        .iter()
        .map(|p| build.join(p))
        .find(|p| p.is_file())
        .with_context(|| format!("the build left no llama-bench in {}", build.display()))?;
    // Copy, then rename: a cached `llama-bench` is always a complete one.
    let partial = dir.join("llama-bench.partial");
    fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    fs::write(dir.join("tree.json"), serde_json::to_vec_pretty(&tree)?)?;
    fs::rename(&partial, dir.join("llama-bench"))?;
    // Best effort: the binary is all that is needed from here on.
    let _ = fs::remove_dir_all(&src);
    let _ = fs::remove_dir_all(&build);
    progress(&format!(
        "built llama-bench in {} s",
        started.elapsed().as_secs()
    ));
    Ok(())
}

fn download_sdist(version: &str, into: &Path) -> Result<()> {
    progress(&format!(
        "downloading the llama-cpp-python {version} source distribution with pip (about 80 MB)"
    ));
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
        .arg(format!("llama-cpp-python=={version}"))
        .arg("-d")
        .arg(into)
        .stdin(Stdio::null())
        .output()
        .context("running python3 -m pip (llama-bench is built from a Python source distribution; pass --llama-bench PATH to use an existing binary)")?;
    ensure!(
        out.status.success(),
        "pip could not download llama-cpp-python {version} ({}):\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    );
    Ok(())
}

/// The source distribution of `version` in `dir`, if pip already put it there.
fn find_sdist(dir: &Path, version: &str) -> Option<PathBuf> {
    // pip names it after the normalised project name; older pips kept dashes.
    let names = [
        format!("llama_cpp_python-{version}.tar.gz"),
        format!("llama-cpp-python-{version}.tar.gz"),
    ];
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The package's root (`llama_cpp_python-<version>/`) and its llama.cpp tree.
fn find_llama_tree(src: &Path) -> Result<(PathBuf, PathBuf)> {
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let root = entry?.path();
        let tree = root.join("vendor/llama.cpp");
        if tree.join("CMakeLists.txt").is_file() {
            return Ok((root, tree));
        }
    }
    bail!(
        "the source distribution extracted in {} holds no vendor/llama.cpp",
        src.display()
    )
}

/// ggml's version from the `set(GGML_VERSION_MAJOR 0)` lines of
/// `ggml/CMakeLists.txt`.
fn ggml_version(cmake: &str) -> Option<String> {
    let part = |name: &str| {
        let prefix = format!("set({name} ");
        cmake.lines().find_map(|l| {
            l.trim()
                .strip_prefix(&prefix)?
                .strip_suffix(')')
                .map(|v| v.trim().to_string())
        })
    };
    Some(format!(
        "{}.{}.{}",
        part("GGML_VERSION_MAJOR")?,
        part("GGML_VERSION_MINOR")?,
        part("GGML_VERSION_PATCH")?
    ))
}

/// The llama.cpp commit a `llama-cpp-python` release vendors, from its
/// changelog: the first "llama.cpp@<commit>" at or after the release's own
/// heading (a release that did not update llama.cpp has the previous one's).
fn changelog_commit(changelog: &str, version: &str) -> Option<String> {
    let heading = format!("## [{version}]");
    let from = changelog.find(&heading)?;
    let rest = &changelog[from..];
    let at = rest.find("llama.cpp@")? + "llama.cpp@".len();
    let commit: String = rest[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (commit.len() >= 7).then_some(commit)
}

/// How far a build is, from a line of CMake's Makefile (`[ 42%] Building`)
/// or Ninja (`[12/150] Building`) output.
fn build_percent(line: &str) -> Option<u32> {
    let inner = line.strip_prefix('[')?.split_once(']')?.0.trim();
    if let Some(pct) = inner.strip_suffix('%') {
        return pct.trim().parse().ok();
    }
    let (done, total) = inner.split_once('/')?;
    let (done, total): (u32, u32) = (done.parse().ok()?, total.parse().ok()?);
    (total > 0).then(|| done.saturating_mul(100) / total)
}

/// Runs `cmd` with its output in `log`, calling `on_line` for each line of
/// its stdout; on failure the error carries the log's last lines.
fn run_logged(
    cmd: &mut Command,
    log: &mut fs::File,
    log_path: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<()> {
    let stderr = log.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("running cmake (is it installed?)")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        on_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        let text = fs::read_to_string(log_path).unwrap_or_default();
        bail!(
            "{cmd:?} failed ({status}); the whole log is in {}:\n{}",
            log_path.display(),
            tail(&text, 30)
        );
    }
    Ok(())
}

fn recreate_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn progress(message: &str) {
    eprintln!("locara-bench: {message}");
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
        let m = parse_results(OUTPUT.as_bytes(), &params()).unwrap();
        assert_eq!(
            m,
            Measurement {
                prefill_tps: 812.5,
                decode_tps: 151.25
            }
        );
    }

    #[test]
    fn refuses_a_run_with_other_settings() {
        let p = RunParams {
            threads: 4,
            ..params()
        };
        let err = parse_results(OUTPUT.as_bytes(), &p).unwrap_err();
        assert!(err.to_string().contains("2 threads, not 4"), "{err}");
        let p = RunParams {
            kv_type: KvType::F16,
            ..params()
        };
        assert!(parse_results(OUTPUT.as_bytes(), &p).is_err());
        let p = RunParams {
            gen_tokens: 64,
            ..params()
        };
        let err = parse_results(OUTPUT.as_bytes(), &p).unwrap_err();
        assert!(err.to_string().contains("tg64"), "{err}");
    }

    #[test]
    fn args_ask_for_the_same_settings_as_the_engine() {
        let bench = LlamaBench {
            path: "llama-bench".into(),
            version: String::new(),
            tree: None,
            mmap_args: mmap_args("  -lm, --load-mode <auto|none|mmap>"),
        };
        assert_eq!(
            bench.args(&params()).join(" "),
            "-m /m/model.gguf -t 2 -ctk q8_0 -ctv q8_0 -fa 1 -lm mmap -p 512 -n 128 -r 1 -o json"
        );
        assert_eq!(mmap_args("  -mmp, --mmap <0|1>"), ["-mmp", "1"]);
    }

    #[test]
    fn ggml_version_from_cmake() {
        let text = "project(\"ggml\")\nset(GGML_VERSION_MAJOR 0)\nset(GGML_VERSION_MINOR 25)\nset(GGML_VERSION_PATCH 3)\nset(GGML_VERSION_BASE \"x\")\n";
        assert_eq!(ggml_version(text).as_deref(), Some("0.25.3"));
        assert_eq!(ggml_version("set(GGML_VERSION_MAJOR 0)"), None);
    }

    #[test]
    fn changelog_commit_of_a_release() {
        let text = "## [Unreleased]\n\n## [0.3.36]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098\n\n## [0.3.35]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f\n## [0.3.34]\n- fix: something\n## [0.3.33]\n- feat: update llama.cpp to ggml-org/llama.cpp@78d2f5246\n";
        assert_eq!(
            changelog_commit(text, "0.3.36").as_deref(),
            Some("0c1e57098")
        );
        assert_eq!(
            changelog_commit(text, "0.3.35").as_deref(),
            Some("4df29be4f")
        );
        // No update in 0.3.34: it still vendors 0.3.33's llama.cpp.
        assert_eq!(
            changelog_commit(text, "0.3.34").as_deref(),
            Some("78d2f5246")
        );
        assert_eq!(changelog_commit(text, "9.9.9"), None);
    }

    #[test]
    fn build_progress_of_make_and_ninja() {
        assert_eq!(
            build_percent("[ 42%] Building CXX object src/llama.cpp.o"),
            Some(42)
        );
        assert_eq!(build_percent("[100%] Built target llama-bench"), Some(100));
        assert_eq!(build_percent("[12/150] Building C object"), Some(8));
        assert_eq!(build_percent("-- Configuring done"), None);
        assert_eq!(build_percent("[0/0] nothing"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
