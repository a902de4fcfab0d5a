//! The `locara` command line, run as a user would.

mod common;

use common::*;
use locara_daemon::testing::hub::{sha_hex, FakeHub, TOKEN as FAKE_TOKEN};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running locara");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `command` (a long `locara run`) with no stdin and its stdout
/// piped, and returns once the first answer bytes arrived: the worker is
/// loaded and generating.
fn generating(command: &mut Command) -> std::process::Child {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    child
}

/// A fresh, empty data directory.
fn fresh_home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn run_streams_a_greedy_answer_and_repeats_it() {
    model(SMOLLM2);
    let answer = || {
        run_ok(locara().args([
            "run",
            "What is 2 + 2?",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--threads",
            "1",
        ]))
    };
    let first = answer();
    assert!(!first.trim().is_empty());
    assert_eq!(first, answer());
}

#[test]
fn run_takes_the_prompt_from_stdin_and_a_model_name_first() {
    model(SMOLLM2);
    let mut child = locara()
        .args([
            "run",
            SMOLLM2,
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--verbose",
            "--threads",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Name a colour.")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let kv = format!(
        "K/V {}",
        locara_platform::estimate_backend()
            .default_kv_type()
            .as_str()
    );
    for want in [
        "loaded smollm2:135m",
        kv.as_str(),
        "prefill:",
        "decode:",
        "tokens/s",
        // Speculative decoding's figures, from the answer's `locara` field.
        "speculative:",
        "tokens per decode step",
        "footprint",
        "RSS",
    ] {
        assert!(err.contains(want), "--verbose lacks {want:?}: {err}");
    }
}

#[test]
fn chat_mode_keeps_the_conversation_until_bye() {
    model(SMOLLM2);
    // Not a terminal, so feed the chat through a pseudo-chat: no prompt
    // argument and stdin piped would read stdin as one prompt; the chat
    // needs a terminal, which `script` provides where it exists.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed, no pseudo-terminal to chat on");
        return;
    }
    let cmd = format!(
        "{} run --temperature 0 --max-tokens 16 --threads 1",
        env!("CARGO_BIN_EXE_locara")
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("LOCARA_HOME", test_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"My name is Ada.\nWhat is my name?\n/bye\n")
        .unwrap();
    drop(stdin);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{stdout}");
    assert_eq!(stdout.matches(">>> ").count(), 3, "{stdout}");
    assert!(
        stdout.contains("Ada"),
        "the model should recall the name: {stdout}"
    );
}

#[test]
fn bad_flags_are_named_with_their_range() {
    let out = locara()
        .args(["run", "hi", "--temperature", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--temperature 3") && err.contains("0 to 2"),
        "{err}"
    );

    let out = locara()
        .args(["run", "nosuch:model", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuch:model") && err.contains("catalog"),
        "{err}"
    );
}

#[test]
fn pull_with_a_wrong_sha256_fails_and_leaves_no_model() {
    let source = model(SMOLLM2);
    let home = fresh_home();
    let catalog = home.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        format!(
            "default = \"smollm2:135m\"\n[[model]]\nname = \"smollm2:135m\"\nsha256 = \"{}\"\n[[model.parts]]\npath = \"{}\"\n",
            "ab".repeat(32),
            source.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_locara"))
        .args(["pull", SMOLLM2])
        .env("LOCARA_HOME", home.path())
        .env("LOCARA_CATALOG", &catalog)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&"ab".repeat(32)), "{err}");
    assert!(
        err.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{err}"
    );
    let list = run_ok(
        Command::new(env!("CARGO_BIN_EXE_locara"))
            .args(["list", "--json"])
            .env("LOCARA_HOME", home.path()),
    );
    assert_eq!(list.trim(), "[]");
    let tmp: Vec<_> = std::fs::read_dir(home.path().join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(tmp.is_empty(), "staging left behind: {tmp:?}");
}

/// `locara` with a fresh data directory, the fake Hub as `HF_ENDPOINT` and
/// no token or Ollama directory from the environment.
fn locara_with_hub(home: &std::path::Path, hub: &FakeHub) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_locara"));
    c.env("LOCARA_HOME", home)
        .env("HF_ENDPOINT", hub.endpoint())
        .env_remove("HF_TOKEN")
        .env_remove("OLLAMA_MODELS");
    c
}

#[test]
fn pull_from_the_hub_says_which_file_and_the_plan_before_downloading() {
    let smol = std::sync::Arc::new(std::fs::read(model(SMOLLM2)).unwrap());
    let hub = FakeHub::start();
    hub.add_repo(
        "test/SmolLM2-135M-Instruct-GGUF",
        false,
        vec![
            ("README.md", std::sync::Arc::new(b"readme".to_vec())),
            (
                "SmolLM2-135M-Instruct-Q8_0.gguf",
                std::sync::Arc::new(b"other".to_vec()),
            ),
            ("SmolLM2-135M-Instruct-Q4_K_M.gguf", smol.clone()),
        ],
    );
    let home = fresh_home();
    let out = run_ok(
        locara_with_hub(home.path(), &hub).args(["pull", "hf.co/test/SmolLM2-135M-Instruct-GGUF"]),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("SmolLM2-135M-Instruct-Q4_K_M.gguf") && lines[0].contains("the default"),
        "{out}"
    );
    let plan = lines
        .iter()
        .position(|l| l.starts_with("plan: fits"))
        .expect(&out);
    let stored = lines
        .iter()
        .position(|l| l.contains("smollm2-135m-instruct:q4_k_m") && l.contains("sha256 verified"))
        .expect(&out);
    assert!(plan < stored, "{out}");
    let list = run_ok(locara_with_hub(home.path(), &hub).args(["list"]));
    assert!(
        list.contains("smollm2-135m-instruct:q4_k_m") && list.contains(" hf "),
        "{list}"
    );
    let again = run_ok(
        locara_with_hub(home.path(), &hub).args(["pull", "hf.co/test/SmolLM2-135M-Instruct-GGUF"]),
    );
    assert!(again.contains("already here"), "{again}");
}

#[test]
fn a_gated_pull_asks_for_hf_token_and_never_prints_it() {
    let smol = std::sync::Arc::new(std::fs::read(model(SMOLLM2)).unwrap());
    let hub = FakeHub::start();
    hub.add_repo("meta/gated-GGUF", true, vec![("gated-Q4_K_M.gguf", smol)]);
    let home = fresh_home();
    let out = locara_with_hub(home.path(), &hub)
        .args(["pull", "hf.co/meta/gated-GGUF"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("set HF_TOKEN"), "{err}");
    let out = locara_with_hub(home.path(), &hub)
        .args(["pull", "hf.co/meta/gated-GGUF", "--name", "gated"])
        .env("HF_TOKEN", FAKE_TOKEN)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("gated ("), "{all}");
    assert!(!all.contains(FAKE_TOKEN), "the token was printed: {all}");
}

#[test]
fn import_from_ollama_adopts_in_place_and_rm_keeps_ollamas_file() {
    let source = std::fs::canonicalize(model(SMOLLM2)).unwrap();
    let dir = fresh_home();
    let ollama = dir.path().join("ollama");
    let sha = sha_hex(&std::fs::read(&source).unwrap());
    let blob = ollama.join(format!("blobs/sha256-{sha}"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    if std::fs::hard_link(&source, &blob).is_err() {
        std::fs::copy(&source, &blob).unwrap();
    }
    let manifest = ollama.join("manifests/registry.ollama.ai/library/smollm2/135m");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{sha}","size":1}}]}}"#
        ),
    )
    .unwrap();
    let home = dir.path().join("locara");
    let locara = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locara"));
        c.env("LOCARA_HOME", &home).env("OLLAMA_MODELS", &ollama);
        c
    };
    let out = run_ok(locara().args(["import", "--from", "ollama"]));
    assert!(
        out.contains("adopted Ollama smollm2:135m as smollm2:135m"),
        "{out}"
    );
    let list = run_ok(locara().args(["list"]));
    assert!(
        list.contains("smollm2:135m") && list.contains(&blob.display().to_string()),
        "{list}"
    );
    let out = run_ok(locara().args(["import", "--from", "ollama", "smollm2:135m"]));
    assert!(out.contains("already here"), "{out}");
    run_ok(locara().args(["rm", "smollm2:135m"]));
    assert!(blob.exists(), "locara rm deleted Ollama's blob");
}

#[test]
fn import_list_inspect_and_rm() {
    let source = model(SMOLLM2);
    let home = fresh_home();
    let with_home = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locara"));
        c.args(args).env("LOCARA_HOME", home.path());
        c
    };
    let src = source.to_str().unwrap();
    let out = run_ok(&mut with_home(&["import", src, "--name", "mine:q4"]));
    assert!(out.contains("mine:q4"), "{out}");
    let list = run_ok(&mut with_home(&["list"]));
    assert!(
        list.contains("mine:q4") && list.contains("llama") && list.contains("Q4_1"),
        "{list}"
    );
    let inspect = run_ok(&mut with_home(&["inspect", "mine:q4", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(json["metadata"]["architecture"], "llama");
    assert_eq!(json["metadata"]["block_count"], 30);
    // A second import under the same name is refused, not overwritten.
    let out = with_home(&["import", src, "--name", "mine:q4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in the store"));
    run_ok(&mut with_home(&["rm", "mine:q4"]));
    assert_eq!(run_ok(&mut with_home(&["list", "--json"])).trim(), "[]");
}

#[test]
fn import_of_a_non_gguf_file_fails_with_a_clear_message() {
    let home = fresh_home();
    let file = home.path().join("notes.txt");
    std::fs::write(&file, "just some notes, not a model\n".repeat(10)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_locara"))
        .args(["import", file.to_str().unwrap()])
        .env("LOCARA_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.txt") && err.contains("not a valid GGUF model"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("magic"), "{err}");
}

#[test]
fn names_that_leave_the_store_are_refused() {
    let home = fresh_home();
    for name in ["../../etc/passwd", "/abs/path", "a/../../b"] {
        for cmd in [vec!["rm", name], vec!["pull", name]] {
            let out = Command::new(env!("CARGO_BIN_EXE_locara"))
                .args(&cmd)
                .env("LOCARA_HOME", home.path())
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("invalid model name"), "{cmd:?}: {err}");
        }
    }
}

#[test]
fn kill_9_of_locara_run_leaves_no_worker() {
    model(SMOLLM2);
    let mut command = locara();
    command
        .args([
            "run",
            "Count to five hundred: 1, 2, 3,",
            "--raw",
            "--max-tokens",
            "4000",
            "--threads",
            "1",
        ])
        .stderr(Stdio::null());
    let mut child = generating(&mut command);
    let workers = children(child.id());
    assert_eq!(
        workers.len(),
        1,
        "expected one engine worker, found {workers:?}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !alive(workers[0])),
        "worker {} outlived its parent",
        workers[0]
    );
}

#[test]
fn help_explains_the_commands() {
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_locara")).arg("--help"));
    for cmd in ["run", "pull", "import", "list", "rm", "inspect"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
    assert!(
        !out.contains("engine "),
        "the worker subcommand is hidden: {out}"
    );
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_locara")).args(["run", "--help"]));
    assert!(
        out.contains("--temperature") && out.contains("Examples"),
        "{out}"
    );
}

/// Without a daemon, `locara run` goes through a governor of its own: a
/// model that does not fit the budget is refused with the numbers, before
/// any worker starts (it used to start a worker with no budget at all).
#[test]
fn run_without_a_daemon_is_refused_with_the_numbers_when_the_model_does_not_fit() {
    let home = home_with_models();
    let out = locara()
        .env("LOCARA_HOME", home.path())
        .env("LOCARA_BUDGET", "32MiB")
        .args(["run", SMOLLM2, "hi", "--threads", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 32 MiB budget fit a 98 MB model");
    assert!(
        err.contains("needs") && err.contains("of a 32.0 MiB budget free"),
        "the refusal names the estimate and the budget: {err}"
    );
    assert!(out.stdout.is_empty(), "no answer was expected");
}

/// Without a daemon, `locara run`'s governor reacts to memory pressure like
/// `locara serve`'s: `locara ps` and `locara pressure simulate` reach it,
/// and at critical it refuses loads while its answer finishes.
#[test]
fn run_without_a_daemon_reacts_to_simulated_pressure() {
    let home = home_with_models();
    let cli = |args: &[&str]| {
        locara()
            .env("LOCARA_HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let mut command = locara();
    command
        .env("LOCARA_HOME", home.path())
        .args([
            "run",
            SMOLLM2,
            "Count to five hundred: 1, 2, 3,",
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "3000",
            "--threads",
            "1",
        ])
        .stderr(Stdio::piped());
    let mut child = generating(&mut command);

    let out = cli(&["pressure", "simulate", "critical", "--for", "5m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["ps", "--json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pressure"]["level"], "critical", "{status}");
    assert_eq!(status["pressure"]["refusing_loads"], true, "{status}");
    let out = cli(&["load", GEMMA3]);
    assert!(!out.status.success(), "a load was admitted at critical");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503"), "{err}");

    // Critical lets the answer in flight finish (within the ladder's
    // remaining-tokens cap), then the command ends normally.
    let finished = eventually(Duration::from_secs(120), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(
        finished,
        "locara run did not finish under critical pressure"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !home.path().join("daemon.json").exists(),
        "the run's own daemon left its daemon.json behind"
    );
}

/// Ollama's `POST /api/pull` takes a Hugging Face reference as `locara
/// pull` does (the file for the quantisation, checked against the sha256
/// the Hub publishes), and `/api/tags` lists the model after; a repository
/// the Hub does not have ends the stream with an error line.
#[test]
fn ollama_api_pull_takes_a_hub_reference() {
    let smol = std::sync::Arc::new(std::fs::read(model(SMOLLM2)).unwrap());
    let hub = FakeHub::start();
    hub.add_repo(
        "test/SmolLM2-135M-Instruct-GGUF",
        false,
        vec![("SmolLM2-135M-Instruct-Q4_K_M.gguf", smol)],
    );
    let endpoint = hub.endpoint().to_string();
    let d =
        daemon::Daemon::start_with_env(&[], &[("HF_ENDPOINT", std::path::Path::new(&endpoint))]);
    let pulled: serde_json::Value = d
        .post(
            "/api/pull",
            &serde_json::json!({
                "model": "hf.co/test/SmolLM2-135M-Instruct-GGUF:Q4_K_M",
                "stream": false,
            }),
        )
        .unwrap_or_else(|e| panic!("{}", daemon::describe(e)))
        .into_json()
        .unwrap();
    assert_eq!(pulled["status"], "success", "{pulled}");
    let tags: serde_json::Value = d.get("/api/tags").into_json().unwrap();
    assert!(
        tags["models"].as_array().unwrap().iter().any(|m| m["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("smollm2-135m-instruct:q4_k_m"))),
        "{tags}"
    );
    let missing = d
        .post(
            "/api/pull",
            &serde_json::json!({"model": "hf.co/test/missing-GGUF"}),
        )
        .unwrap_or_else(|e| panic!("{}", daemon::describe(e)))
        .into_string()
        .unwrap();
    let last = missing.lines().last().unwrap_or_default();
    assert!(last.contains("\"error\""), "{missing}");
}
