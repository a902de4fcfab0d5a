//! llama.cpp's own tools, built from the llama.cpp tree that a
//! `llama-cpp-python` source distribution vendors: `llama-bench` for
//! `locara-bench`, `llama-server` for `locara-serve-bench`. Both come from the
//! same tree and the same CMake options, so the two benchmarks compare Locara
//! with one llama.cpp.
//!
//! Unless the user names a binary, a tool is built once from the source
//! distribution on the Python package index, which vendors a whole llama.cpp
//! tree (`vendor/llama.cpp`, `tools/` included), and kept in the cache
//! directory:
//!
//! ```text
//! <cache>/llama-cpp-python-<version>-threadpool/
//!     sdist/llama_cpp_python-<version>.tar.gz   what pip downloaded
//!     llama-bench, llama-server                 the built binaries
//!     tree.json                                 which llama.cpp they were built from
//!     build.log, build-server.log               CMake's output of the last build of each
//! ```
//!
//! The extracted source and CMake's build directory are removed after a
//! successful build; the binaries are linked statically against llama.cpp,
//! so they need neither.

use crate::{progress, tail};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The `llama-cpp-python` release whose source distribution the tools are
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

/// CMake options of every tool's build, beyond the source and build
/// directories and the tool's own ([`Tool::cmake_options`]). They follow how
/// `llama-cpp-sys-2` builds the engine's llama.cpp (its build script), so
/// both sides run the same kind of binary:
const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    // The workspace builds with `-C target-cpu=native`, which llama-cpp-sys-2
    // turns into GGML_NATIVE=ON (see .cargo/config.toml).
    "-DGGML_NATIVE=ON",
    // The workspace leaves llama-cpp-2's `openmp` feature off: ggml's own
    // thread pool, GGML_OPENMP=OFF (the cache directory says so: [`THREADING`]).
    "-DGGML_OPENMP=OFF",
    // llama-cpp-sys-2 links llama.cpp statically; so does this, which also
    // makes the cached binary independent of the build directory.
    "-DBUILD_SHARED_LIBS=OFF",
    // llama-bench and llama-server live in tools/, which needs the common
    // library.
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    // No network code: older trees download with curl, newer ones with OpenSSL.
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
];

/// How the tools' ggml runs its threads, as the engine's does: its own
/// thread pool (`GGML_OPENMP=OFF`). Part of the cache directory's name, so
/// that a binary built with OpenMP (as the engine was before it shared the
/// cores between workers) is never taken for one built the engine's way.
pub const THREADING: &str = "threadpool";

/// The CMake include that every llama.cpp build of the engine gets
/// (`.cargo/config.toml`): options that depend on the target CPU.
const ENGINE_CMAKE_INCLUDE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../locara-engine/cmake/llama-cpp.cmake"
);

/// A llama.cpp tool this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    LlamaBench,
    LlamaServer,
}

impl Tool {
    /// The CMake target, and the name of the cached binary.
    pub fn name(self) -> &'static str {
        match self {
            Tool::LlamaBench => "llama-bench",
            Tool::LlamaServer => "llama-server",
        }
    }

    /// CMake options of this tool's build, on top of [`CMAKE_OPTIONS`].
    pub fn cmake_options(self) -> &'static [&'static str] {
        match self {
            Tool::LlamaBench => &["-DLLAMA_BUILD_SERVER=OFF"],
            Tool::LlamaServer => &[
                "-DLLAMA_BUILD_SERVER=ON",
                // The server embeds a web UI, built with npm or downloaded
                // from Hugging Face; with neither it embeds an empty one
                // (`scripts/ui-assets.cmake`), which a benchmark never asks for.
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
            ],
        }
    }

    /// Where the tool's sources are in the llama.cpp tree.
    fn source_dir(self) -> &'static str {
        match self {
            Tool::LlamaBench => "tools/llama-bench",
            Tool::LlamaServer => "tools/server",
        }
    }

    /// Added to the names of the tool's work directories and build log, so
    /// that two tools can be built at once and the log of one survives the
    /// build of the other. Empty for llama-bench, whose names came first.
    fn suffix(self) -> &'static str {
        match self {
            Tool::LlamaBench => "",
            Tool::LlamaServer => "-server",
        }
    }

    /// The command-line flag that names an existing binary instead.
    fn flag(self) -> &'static str {
        match self {
            Tool::LlamaBench => "--llama-bench",
            Tool::LlamaServer => "--llama-server",
        }
    }
}

/// Where a tool comes from.
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

impl Source {
    /// The binary of `tool`: the one given, or the cached build, or a new
    /// build from the source distribution (minutes; progress on stderr);
    /// with what is known of its llama.cpp tree (only for builds of this
    /// program).
    pub fn locate(&self, tool: Tool) -> Result<(PathBuf, Option<TreeInfo>)> {
        Ok(match self {
            Source::Binary(path) => (path.clone(), None),
            Source::Sdist {
                version,
                cache,
                jobs,
            } => {
                let dir = cache.join(format!("llama-cpp-python-{version}-{THREADING}"));
                let binary = dir.join(tool.name());
                if !binary.is_file() {
                    build_from_sdist(tool, version, &dir, *jobs)?;
                }
                let tree = fs::read(dir.join("tree.json"))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                (binary, tree)
            }
        })
    }
}

/// What is known of the llama.cpp tree a tool was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeInfo {
    /// The `llama-cpp-python` release whose source distribution held the tree.
    pub llama_cpp_python: String,
    /// The llama.cpp commit, from that release's changelog.
    pub llama_cpp_commit: Option<String>,
    /// ggml's version, from `ggml/CMakeLists.txt`.
    pub ggml_version: Option<String>,
}

impl TreeInfo {
    /// One line naming the tree and the tool's own `--version`.
    pub fn describe(tree: Option<&TreeInfo>, version: &str) -> String {
        match tree {
            Some(t) => format!(
                "llama-cpp-python {} sdist: llama.cpp {}, ggml {} ({})",
                t.llama_cpp_python,
                t.llama_cpp_commit.as_deref().unwrap_or("commit unknown"),
                t.ggml_version.as_deref().unwrap_or("version unknown"),
                version
            ),
            None => version.to_string(),
        }
    }
}

/// What `<tool> --version` says (its build number and commit, and the
/// compiler it was built with), on one line.
pub fn version_of(path: &Path, tool: Tool) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    ensure!(
        out.status.success(),
        "{} --version failed ({}); is it {}?",
        path.display(),
        out.status,
        tool.name()
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

/// Downloads, extracts and builds `tool` into `dir`.
fn build_from_sdist(tool: Tool, version: &str, dir: &Path, jobs: usize) -> Result<()> {
    let started = Instant::now();
    let name = tool.name();
    let suffix = tool.suffix();
    progress(&format!(
        "building {name} from llama-cpp-python {version} in {} (once; takes minutes)",
        dir.display()
    ));
    let sdist_dir = dir.join("sdist");
    fs::create_dir_all(&sdist_dir)
        .with_context(|| format!("creating the cache directory {}", sdist_dir.display()))?;
    let tarball = match find_sdist(&sdist_dir, version) {
        Some(t) => t,
        None => {
            download_sdist(tool, version, &sdist_dir)?;
            find_sdist(&sdist_dir, version).with_context(|| {
                format!(
                    "pip reported success but left no llama_cpp_python-{version}.tar.gz in {}",
                    sdist_dir.display()
                )
            })?
        }
    };

    let src = dir.join(format!("src{suffix}"));
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
        tree_root.join(tool.source_dir()).is_dir(),
        "{} has no {}; choose another --llama-cpp-python version",
        tree_root.display(),
        tool.source_dir()
    );

    let build = dir.join(format!("build{suffix}"));
    recreate_dir(&build)?;
    let log_path = dir.join(format!("build{suffix}.log"));
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
        .args(tool.cmake_options())
        // The engine's own CMake include, so both sides leave out the same
        // kernels (llama.cpp's AMX kernels crash on CPUs with AMX).
        .arg(format!("-DCMAKE_PROJECT_INCLUDE={}", ENGINE_CMAKE_INCLUDE))
        // The tree has no .git; without these its CMake would ask git, which
        // might answer for a repository the cache directory happens to be in.
        .arg(format!(
            "-DLLAMA_BUILD_COMMIT={}",
            tree.llama_cpp_commit.as_deref().unwrap_or("unknown")
        ))
        .arg("-DLLAMA_BUILD_NUMBER=0");
    run_logged(&mut configure, &mut log, &log_path, |_| {})?;

    progress(&format!("compiling {name} with {jobs} jobs"));
    let mut last_shown = (0u32, Instant::now());
    let mut compile = Command::new("cmake");
    compile
        .arg("--build")
        .arg(&build)
        .args(["--config", "Release", "--target", name, "-j"])
        .arg(jobs.to_string());
    run_logged(&mut compile, &mut log, &log_path, |line| {
        // One line per 10 % or per half minute, not one per source file.
        if let Some(pct) = build_percent(line) {
            let (shown, at) = last_shown;
            if pct >= shown + 10 || at.elapsed().as_secs() >= 30 {
                progress(&format!(
                    "{name} build {pct:>3} % ({} s)",
                    started.elapsed().as_secs()
                ));
                last_shown = (pct, Instant::now());
            }
        }
    })?;

    let built = [format!("bin/{name}"), format!("bin/Release/{name}")]
        .iter()
        .map(|p| build.join(p))
        .find(|p| p.is_file())
        .with_context(|| format!("the build left no {name} in {}", build.display()))?;
    // Copy, then rename: a cached binary is always a complete one.
    let partial = dir.join(format!("{name}.partial"));
    fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    fs::write(dir.join("tree.json"), serde_json::to_vec_pretty(&tree)?)?;
    fs::rename(&partial, dir.join(name))?;
    // Best effort: the binary is all that is needed from here on.
    let _ = fs::remove_dir_all(&src);
    let _ = fs::remove_dir_all(&build);
    progress(&format!(
        "built {name} in {} s",
        started.elapsed().as_secs()
    ));
    Ok(())
}

fn download_sdist(tool: Tool, version: &str, into: &Path) -> Result<()> {
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
        .with_context(|| format!("running python3 -m pip ({} is built from a Python source distribution; pass {} PATH to use an existing binary)", tool.name(), tool.flag()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn llama_bench_is_built_with_the_options_it_always_had() {
        let mut options: Vec<&str> = CMAKE_OPTIONS.to_vec();
        options.extend(Tool::LlamaBench.cmake_options());
        options.sort_unstable();
        // As before, but ggml's own thread pool, as the engine has (and a
        // cache directory of its own, so no OpenMP build is reused).
        assert_eq!(THREADING, "threadpool");
        let mut before = vec![
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            "-DGGML_OPENMP=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_COMMON=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_APP=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
        ];
        before.sort_unstable();
        assert_eq!(options, before);
        assert!(
            std::path::Path::new(ENGINE_CMAKE_INCLUDE).is_file(),
            "{ENGINE_CMAKE_INCLUDE} is missing"
        );
    }

    #[test]
    fn llama_server_differs_only_in_the_server_and_its_ui() {
        let server = Tool::LlamaServer.cmake_options();
        assert!(server.contains(&"-DLLAMA_BUILD_SERVER=ON"));
        assert!(server.contains(&"-DLLAMA_BUILD_UI=OFF"));
        assert!(server.contains(&"-DLLAMA_USE_PREBUILT_UI=OFF"));
        for option in server {
            let key = option.split('=').next().unwrap();
            assert!(
                !CMAKE_OPTIONS.iter().any(|o| o.starts_with(key)),
                "{option} overrides a shared option"
            );
        }
        assert_eq!(Tool::LlamaServer.name(), "llama-server");
        assert_eq!(Tool::LlamaServer.suffix(), "-server");
        assert_eq!(
            Tool::LlamaBench.suffix(),
            "",
            "llama-bench keeps its cache layout"
        );
    }
}
