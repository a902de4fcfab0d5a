//! Shared set-up of the integration tests: the real binary and the real
//! test models, fetched once into a cache outside the repository.

#![allow(dead_code)]

pub mod daemon;

use locara_engine::client::{Worker, WorkerCommand};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub const SMOLLM2: &str = "smollm2:135m";
pub const GEMMA3: &str = "gemma3:270m";

/// CPU threads per engine worker in tests. The test harness runs two tests
/// at once on CI's two cores; two workers of two threads each would
/// oversubscribe them, and llama.cpp's OpenMP barriers spin-wait: decode was
/// measured falling from ~60 to 0.4 tokens/s that way.
pub const TEST_THREADS: u32 = 1;

/// The cache the test models live in (`LOCARA_TEST_HOME`, default
/// `~/.cache/locara-test`): a Locara data directory of its own.
pub fn test_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LOCARA_TEST_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join("locara-test")
}

/// `locara` with the test data directory.
pub fn locara() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locara"));
    cmd.env("LOCARA_HOME", test_home())
        .env_remove("LOCARA_CATALOG");
    cmd
}

/// The path of a test model, pulling it (sha256-verified) on first use.
/// Concurrent tests are serialised by the store's lock.
pub fn model(name: &str) -> PathBuf {
    let path = test_home()
        .join("models")
        .join(name.replace(':', "+"))
        .join("model.gguf");
    if !path.exists() {
        let out = locara()
            .args(["pull", name])
            .output()
            .expect("running locara pull");
        assert!(
            out.status.success(),
            "pulling {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(path.exists(), "{} missing after pull", path.display());
    path
}

/// A data directory of its own, for tests that start a daemon (whose
/// `daemon.json` must not meet another test's), with both test models
/// linked from the test cache (pulled once) and the machine's stored
/// profile, so the budget need not be probed again.
pub fn home_with_models() -> tempfile::TempDir {
    model(SMOLLM2);
    model(GEMMA3);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    for dir in ["smollm2+135m", "gemma3+270m"] {
        std::os::unix::fs::symlink(
            test_home().join("models").join(dir),
            home.path().join("models").join(dir),
        )
        .unwrap();
    }
    let _ = std::fs::copy(
        test_home().join("profile.json"),
        home.path().join("profile.json"),
    );
    home
}

pub fn worker_command() -> WorkerCommand {
    WorkerCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_locara")),
        args: vec!["engine".into()],
        engine_log: std::env::var_os("LOCARA_TEST_ENGINE_LOG").is_some(),
    }
}

pub fn spawn_worker() -> Worker {
    Worker::spawn(&worker_command()).expect("spawning an engine worker")
}

/// Polls `f` until it is true or `within` has passed.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Direct children of `pid` (from the parent field of `/proc/*/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Runs `script` (in tests/) with the official Python clients, from the
/// virtualenv the test command makes (`LOCARA_TEST_PYTHON`, set by
/// scripts/test.sh), with `args`; its standard output (echoed to the test's
/// log), once it succeeded.
pub fn python_script(script: &str, args: &[&str]) -> String {
    let python = std::env::var("LOCARA_TEST_PYTHON").expect(
        "LOCARA_TEST_PYTHON is not set: run the suite with scripts/test.sh, which makes a \
         virtualenv with the openai and ollama clients",
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
