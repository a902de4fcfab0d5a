//! `locara serve` with the real default model on an ephemeral port: the
//! OpenAI endpoints, concurrency, disconnects, worker deaths, the budget
//! (eviction and refusal), idle unload, the queue limit and shutdown.

mod common;

use common::daemon::{chat_body, describe, event_log, Daemon, Sse};
use common::{alive, children, eventually, locara, model, GEMMA3, SMOLLM2};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[test]
fn chat_streams_and_answers_whole() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let whole = d.chat(chat_body(
        SMOLLM2,
        "What is the capital of France?",
        24,
        false,
    ));
    assert_eq!(whole["object"], "chat.completion");
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.trim().is_empty(), "{whole}");
    assert!(whole["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    let generated = whole["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&generated), "{whole}");
    assert!(
        ["stop", "length"].contains(&whole["choices"][0]["finish_reason"].as_str().unwrap()),
        "{whole}"
    );

    let r = d
        .post(
            "/v1/chat/completions",
            &chat_body(SMOLLM2, "What is the capital of France?", 24, true),
        )
        .unwrap();
    let (text, finish, usage, done) = Sse::new(r).collect();
    assert!(done, "no [DONE]");
    // Greedy: the stream is the same answer.
    assert_eq!(text, content);
    assert_eq!(
        finish.as_deref(),
        whole["choices"][0]["finish_reason"].as_str()
    );
    assert_eq!(usage.unwrap()["completion_tokens"], generated);

    // The sequence is free by the time `[DONE]` arrives: a client that asks
    // again at once is not queued behind its own finished answer.
    let r = d
        .post("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 4, true))
        .unwrap();
    let mut sse = Sse::new(r);
    while sse.next_data().expect("the stream ended without [DONE]") != "[DONE]" {}
    assert_eq!(d.model_status(SMOLLM2).unwrap()["sequences_busy"], 0);

    // The raw completion endpoint and the model list.
    let c: Value = d
        .post(
            "/v1/completions",
            &json!({"model": SMOLLM2, "prompt": "1, 2, 3, 4,", "max_tokens": 5, "temperature": 0}),
        )
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(c["object"], "text_completion");
    assert!(
        c["choices"][0]["text"].as_str().unwrap().contains('5'),
        "{c}"
    );
    let models: Value = d.get("/v1/models").into_json().unwrap();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == SMOLLM2));

    // Bad input names the field; an unknown model is a 404.
    let e = d
        .post(
            "/v1/chat/completions",
            &json!({"model": SMOLLM2, "messages": [], "n": 2}),
        )
        .unwrap_err();
    let ureq::Error::Status(400, r) = e else {
        panic!("expected 400")
    };
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let e = d
        .post(
            "/v1/chat/completions",
            &chat_body("nope:1b", "hi", 4, false),
        )
        .unwrap_err();
    assert!(matches!(e, ureq::Error::Status(404, _)));

    // Metrics count what happened.
    let m = d.metrics();
    assert!(
        m.contains(&format!(
            "locara_tokens_generated_total{{model=\"{SMOLLM2}\"}}"
        )),
        "{m}"
    );
    assert!(
        m.contains("locara_time_to_first_token_seconds_count"),
        "{m}"
    );
}

#[test]
fn four_concurrent_streams_each_get_their_full_answer() {
    let d = Daemon::start(&["--context", "1024", "--parallel", "4"]);
    let url = d.url.clone();
    let bearer = d.bearer();
    let prompts = [
        "Count from 1 to 20.",
        "Name some colours.",
        "List the days of the week.",
        "Write about the sea.",
    ];
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let url = url.clone();
            let bearer = bearer.clone();
            let body = chat_body(SMOLLM2, p, 20, true);
            std::thread::spawn(move || {
                let r = ureq::post(&format!("{url}/v1/chat/completions"))
                    .set("Authorization", &bearer)
                    .send_json(body)
                    .unwrap();
                Sse::new(r).collect()
            })
        })
        .collect();
    for (h, p) in handles.into_iter().zip(prompts) {
        let (text, finish, usage, done) = h.join().unwrap();
        assert!(done, "{p}: no [DONE]");
        assert!(!text.is_empty(), "{p}: empty answer");
        let usage = usage.unwrap();
        match finish.as_deref() {
            Some("length") => assert_eq!(usage["completion_tokens"], 20, "{p}"),
            Some("stop") => assert!(usage["completion_tokens"].as_u64().unwrap() < 20),
            other => panic!("{p}: finish {other:?}"),
        }
    }
    // The four arrived with the model unloaded: it was loaded once, and
    // one worker served all four.
    let m = d.model_status(SMOLLM2).unwrap();
    assert_eq!(m["parallel"], 4);
    assert_eq!(children(d.pid()).len(), 1);
    let metrics = d.metrics();
    assert!(
        metrics.contains(&format!(
            "locara_model_loads_total{{model=\"{SMOLLM2}\",result=\"ok\"}} 1"
        )),
        "{metrics}"
    );
}

/// A streamed chat asking for a long answer (up to 1500 tokens).
fn long_stream(d: &Daemon) -> Sse {
    let r = d
        .post(
            "/v1/chat/completions",
            &chat_body(SMOLLM2, "Count from 1 to 1000.", 1500, true),
        )
        .unwrap();
    Sse::new(r)
}

#[test]
fn a_disconnect_mid_stream_frees_the_sequence_within_a_second() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let mut sse = long_stream(&d);
    for _ in 0..3 {
        sse.next_data().unwrap();
    }
    assert_eq!(d.model_status(SMOLLM2).unwrap()["sequences_busy"], 1);
    drop(sse);
    let dropped = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || d
            .model_status(SMOLLM2)
            .is_some_and(|m| m["sequences_busy"] == 0)),
        "the sequence is still busy 1 s after the client left"
    );
    eprintln!("sequence free {:?} after the disconnect", dropped.elapsed());
    // And the model still answers.
    let whole = d.chat(chat_body(SMOLLM2, "Hi", 4, false));
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[test]
fn a_worker_killed_mid_stream_ends_it_with_an_error_and_the_next_request_reloads() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let mut sse = long_stream(&d);
    sse.next_data().unwrap();
    let pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let killed = Instant::now();
    let error = loop {
        let data = sse
            .next_data()
            .expect("the stream ended without an error event");
        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        if v.get("error").is_some() {
            break v;
        }
        assert_ne!(data, "[DONE]", "the stream finished as if nothing happened");
    };
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(error["error"]["type"], "worker_died", "{error}");
    assert!(
        sse.next_data().is_none(),
        "the stream goes on after the error"
    );
    // The daemon is up and the next request gets a new worker.
    let whole = d.chat(chat_body(SMOLLM2, "Hi", 4, false));
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    let new_pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));
}

/// The estimate `locara plan` gives for a model at context 2048, one
/// sequence: what the daemon admits against.
fn planned(name: &str) -> u64 {
    let out = locara()
        .args(["plan", name, "--ctx", "2048", "--parallel", "1", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["total"].as_u64().unwrap()
}

/// A budget that holds either test model but not both.
fn budget_for_one() -> u64 {
    let (a, b) = (planned(SMOLLM2), planned(GEMMA3));
    let budget = a.max(b) + a.min(b) / 4;
    assert!(budget < a + b);
    budget
}

#[test]
fn a_second_model_evicts_the_first_when_it_is_idle() {
    let budget = budget_for_one().to_string();
    let d = Daemon::start(&["--context", "2048", "--parallel", "1", "--budget", &budget]);
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
    let first_pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    d.chat(chat_body(GEMMA3, "Hi", 2, false));
    assert!(d.model_status(SMOLLM2).is_none(), "{}", d.status());
    assert!(d.model_status(GEMMA3).is_some());
    assert!(!alive(first_pid), "the evicted worker is still running");
    let m = d.metrics();
    assert!(
        m.contains(&format!("locara_evictions_total{{model=\"{SMOLLM2}\"}} 1")),
        "{m}"
    );
}

#[test]
fn a_pinned_first_model_is_not_evicted_and_the_refusal_names_the_numbers() {
    let budget = budget_for_one().to_string();
    let d = Daemon::start(&["--context", "2048", "--parallel", "1", "--budget", &budget]);
    let mut pin = chat_body(SMOLLM2, "Hi", 2, false);
    pin["keep_alive"] = json!(-1);
    d.chat(pin);
    assert_eq!(d.model_status(SMOLLM2).unwrap()["pinned"], true);
    let e = d
        .post("/v1/chat/completions", &chat_body(GEMMA3, "Hi", 2, false))
        .unwrap_err();
    let ureq::Error::Status(code, r) = e else {
        panic!("expected an error status")
    };
    assert_eq!(code, 503);
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["type"], "insufficient_memory", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("needs") && message.contains("budget"),
        "{message}"
    );
    assert!(
        message.contains(SMOLLM2) && message.contains("pinned"),
        "{message}"
    );
    assert!(d.model_status(SMOLLM2).is_some());
}

#[test]
fn an_idle_model_unloads_after_its_keep_alive() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let mut body = chat_body(SMOLLM2, "Hi", 2, false);
    body["keep_alive"] = json!("1s");
    d.chat(body);
    let pid = d
        .model_status(SMOLLM2)
        .map(|m| m["pid"].as_u64().unwrap() as u32);
    assert!(pid.is_some(), "{}", d.status());
    assert!(
        eventually(Duration::from_secs(10), || d
            .model_status(SMOLLM2)
            .is_none()),
        "still loaded: {}",
        d.status()
    );
    assert!(eventually(Duration::from_secs(3), || !alive(pid.unwrap())));
    assert!(d.metrics().contains("reason=\"idle\""));
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1", "--queue", "0"]);
    let mut sse = long_stream(&d);
    sse.next_data().unwrap();
    let e = d
        .post("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 2, false))
        .unwrap_err();
    let ureq::Error::Status(429, r) = e else {
        panic!("expected 429, got {}", describe(e))
    };
    assert!(r.header("retry-after").is_some());
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[test]
fn load_unload_and_hold_through_the_api_and_the_cli() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let cli = |args: &[&str]| {
        let out = d.cli().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["load", SMOLLM2]);
    let ps = cli(&["ps"]);
    assert!(ps.contains("FOOTPRINT") && ps.contains(SMOLLM2), "{ps}");
    cli(&["stop", SMOLLM2, "--hold"]);
    assert!(d.model_status(SMOLLM2).is_none());
    let e = d
        .post("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 2, false))
        .unwrap_err();
    let ureq::Error::Status(503, r) = e else {
        panic!("expected 503, got {}", describe(e))
    };
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "model_held", "{body}");
    cli(&["load", SMOLLM2]);
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
}

/// A conversation goes on after its model was unloaded: the worker wrote
/// it to the model's disk tier (`<home>/kv-cache/<sha256>/<kv_type>/`) on its way
/// out, and the next worker restores it, prefilling only the new turn.
#[test]
fn a_conversation_continues_after_its_model_was_unloaded() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let turn = |messages: &Value| {
        d.chat(json!({
            "model": SMOLLM2,
            "messages": messages,
            "max_tokens": 16,
            "temperature": 0,
        }))
    };
    let mut messages = json!([
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]);
    let first = turn(&messages);
    let answer = first["choices"][0]["message"]["content"].clone();
    let kv_type = d.model_status(SMOLLM2).unwrap()["kv_type"]
        .as_str()
        .unwrap()
        .to_string();
    let out = d.cli().args(["stop", SMOLLM2]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(
        &std::fs::read(d.home.path().join("models/smollm2+135m/info.json")).unwrap(),
    )
    .unwrap();
    let dir = d
        .home
        .path()
        .join("kv-cache")
        .join(info["sha256"].as_str().unwrap())
        .join(kv_type);
    let written = || {
        std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "kv"))
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || d
            .model_status(SMOLLM2)
            .is_none()
            && written()),
        "no conversation in {}",
        dir.display()
    );
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "assistant", "content": answer}));
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "And of Italy?"}));
    let second = turn(&messages);
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let before = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached >= before, "{}", second["usage"]);
    assert!(prompt - cached <= 16, "{}", second["usage"]);
}

#[test]
fn sigterm_lets_a_stream_finish_then_stops_the_workers() {
    let mut d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    // An app listening for events must not hold the daemon up.
    let _events = event_log(&d);
    let r = d
        .post(
            "/v1/chat/completions",
            &chat_body(SMOLLM2, "Count from 1 to 100.", 40, true),
        )
        .unwrap();
    let mut sse = Sse::new(r);
    sse.next_data().unwrap();
    let worker = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    unsafe {
        libc::kill(d.pid() as i32, libc::SIGTERM);
    }
    let (_, finish, _, done) = sse.collect();
    assert!(done, "the in-flight stream was cut");
    assert!(finish.is_some());
    assert!(
        eventually(Duration::from_secs(15), || d
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "the daemon is still running after SIGTERM"
    );
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(eventually(Duration::from_secs(3), || !alive(worker)));
    assert!(
        !d.home.path().join("daemon.json").exists(),
        "daemon.json outlived the daemon"
    );
}

#[test]
fn kill_9_of_the_daemon_leaves_no_worker() {
    let mut d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
    let workers = children(d.pid());
    assert_eq!(workers.len(), 1);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !alive(workers[0])),
        "worker {} outlived the daemon",
        workers[0]
    );
}

/// Runs `script` (in tests/) with the official `openai` Python client
/// against `d`'s OpenAI routes with SMOLLM2; its standard output.
fn python_client(d: &Daemon, script: &str) -> String {
    common::python_script(script, &[&format!("{}/v1", d.url), SMOLLM2, &d.token])
}

#[test]
fn the_openai_python_client_streams_and_gets_a_whole_answer() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let stdout = python_client(&d, "openai_client.py");
    assert!(
        stdout.contains("stream ok") && stdout.contains("whole ok"),
        "{stdout}"
    );
}

/// Structured output (validated with `jsonschema`), log-probabilities and
/// penalties, as the official client asks for them.
#[test]
fn the_openai_python_client_gets_structured_output_logprobs_and_penalties() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let stdout = python_client(&d, "openai_sampling.py");
    for part in [
        "json_schema ok",
        "json_object ok",
        "parse ok",
        "logprobs ok",
        "streamed logprobs ok",
        "legacy logprobs ok",
        "penalties ok",
        "refusal ok",
    ] {
        assert!(stdout.contains(part), "{part} missing:\n{stdout}");
    }
}

#[test]
fn locara_run_uses_a_running_daemon() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let out = d
        .cli()
        .args([
            "run",
            SMOLLM2,
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8(out.stdout).unwrap();
    // The daemon generated it: its model is loaded and counted the tokens.
    assert!(d.model_status(SMOLLM2).is_some(), "{}", d.status());
    let whole = d.chat(chat_body(
        SMOLLM2,
        "What is the capital of France?",
        12,
        false,
    ));
    assert_eq!(
        answer.trim(),
        whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim()
    );
}

/// A daemon of 2048-token contexts and `parallel` sequences, with
/// `config` as its configuration file (the file lives as long as the
/// returned handle).
fn configured_daemon(config: &str, parallel: &str) -> (Daemon, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let d = Daemon::start(&[
        "--context",
        "2048",
        "--parallel",
        parallel,
        "--config",
        &path,
    ]);
    (d, file)
}

/// A daemon whose pressure ladder acts within a second or two.
fn pressure_daemon() -> (Daemon, tempfile::NamedTempFile) {
    configured_daemon(
        "pressure_idle_grace = \"1s\"\npressure_quiet_period = \"1s\"\npressure_remaining_tokens = 5\n",
        "1",
    )
}

/// A daemon whose warn frees idle K/V but unloads nothing: the idle grace
/// outlasts the test.
fn warn_daemon() -> (Daemon, tempfile::NamedTempFile) {
    configured_daemon(
        "pressure_idle_grace = \"10m\"\npressure_quiet_period = \"1s\"\n",
        "2",
    )
}

fn simulate(d: &Daemon, level: &str) {
    let out = d
        .cli()
        .args(["pressure", "simulate", level])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn simulated_warn_unloads_an_idle_model_tells_apps_and_lifts_after_normal() {
    let (d, _config) = pressure_daemon();
    let events = event_log(&d);
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
    let pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    simulate(&d, "warn");
    assert!(
        eventually(Duration::from_secs(5), || d.model_status(SMOLLM2).is_none()),
        "the idle model is still loaded at warn: {}",
        d.status()
    );
    assert!(eventually(Duration::from_secs(3), || !alive(pid)));
    assert_eq!(d.status()["pressure"]["level"], "warn");
    // Apps were told: the level, the unload, and the bytes the OS got back.
    assert!(eventually(Duration::from_secs(3), || {
        let log = events.lock().unwrap();
        log.iter()
            .any(|e| e["type"] == "level" && e["level"] == "warn")
            && log
                .iter()
                .any(|e| e["type"] == "action" && e["action"] == "unload")
            && log
                .iter()
                .any(|e| e["type"] == "freed" && e["bytes"].as_u64().unwrap() > 1 << 20)
    }));
    assert!(events.lock().unwrap().iter().all(|e| e["version"] == 1));
    // Nothing new grows while it lasts.
    let e = d
        .post("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 2, false))
        .unwrap_err();
    let ureq::Error::Status(503, r) = e else {
        panic!("expected 503, got {}", describe(e))
    };
    assert!(r.header("retry-after").is_some());
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "memory_pressure", "{body}");
    let m = d.metrics();
    assert!(
        m.contains("locara_pressure_actions_total{action=\"unload\",level=\"warn\"} 1"),
        "{m}"
    );
    assert!(m.contains("reason=\"pressure_warn\""), "{m}");
    // Normal again: after the quiet period the model reloads on request.
    simulate(&d, "normal");
    assert!(eventually(Duration::from_secs(5), || d.status()
        ["pressure"]["level"]
        == "normal"));
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
}

#[test]
fn simulated_warn_drops_idle_kv_within_the_grace_and_publishes_the_bytes() {
    let (d, _config) = warn_daemon();
    let events = event_log(&d);
    d.chat(chat_body(SMOLLM2, "Name three colours.", 8, false));
    // The finished conversation stays cached in the pool.
    assert!(eventually(Duration::from_secs(10), || {
        d.model_status(SMOLLM2)
            .is_some_and(|m| m["pool"]["cached_sequences"].as_u64() >= Some(1))
    }));
    let pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    simulate(&d, "warn");
    assert!(
        eventually(Duration::from_secs(10), || {
            events.lock().unwrap().iter().any(|e| {
                e["type"] == "freed" && e["model"] == SMOLLM2 && e["bytes"].as_u64() > Some(0)
            })
        }),
        "no freed event: {:?}",
        events.lock().unwrap()
    );
    // Still loaded, same worker, its pool freed.
    let m = d.model_status(SMOLLM2).expect("the model stays loaded");
    assert_eq!(m["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(m["pool"]["cells"], 0, "{m}");
    assert!(alive(pid));
    let log = events.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|e| e["type"] == "action" && e["action"] == "drop_idle_kv"),
        "{log:?}"
    );
    assert!(!log
        .iter()
        .any(|e| e["type"] == "action" && e["action"] == "unload"));
    simulate(&d, "normal");
    assert!(eventually(Duration::from_secs(5), || d.status()
        ["pressure"]["level"]
        == "normal"));
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
}

/// Under warn, a model whose answer just ended gives its pool back and is
/// set aside again, though the worker reports the conversation cached only
/// after the answer's release (the ladder steps on the worker's figures
/// too, not only on the next level report).
#[test]
fn an_answer_that_ends_under_warn_has_its_pool_freed_and_its_model_set_aside() {
    let (d, _config) = warn_daemon();
    let events = event_log(&d);
    d.chat(chat_body(SMOLLM2, "Name three colours.", 8, false));
    let pid = d.model_status(SMOLLM2).unwrap()["pid"].as_u64().unwrap() as u32;
    let loaded = locara_platform::process_footprint(pid).unwrap().footprint;
    simulate(&d, "warn");
    let freed = |n: usize| {
        eventually(Duration::from_secs(10), || {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "freed" && e["model"] == SMOLLM2)
                .count()
                >= n
        })
    };
    assert!(freed(1), "no freed event: {:?}", events.lock().unwrap());
    // The same worker, its pool freed and its model set aside: what stays
    // is the process, a small part of what the loaded model held.
    let aside = locara_platform::process_footprint(pid).unwrap().footprint;
    assert!(aside * 4 < loaded, "{aside} of {loaded} bytes stayed");
    // An answer under warn loads the model again in the same worker...
    d.chat(chat_body(SMOLLM2, "Name three animals.", 8, false));
    assert_eq!(
        d.model_status(SMOLLM2).unwrap()["pid"].as_u64(),
        Some(u64::from(pid))
    );
    // ...and once it ends, the pool and the model go again, with no new
    // level report.
    assert!(
        freed(2),
        "no second freed event: {:?}",
        events.lock().unwrap()
    );
    assert!(eventually(Duration::from_secs(10), || {
        d.model_status(SMOLLM2)
            .is_some_and(|m| m["pool"]["cells"] == 0)
    }));
    simulate(&d, "normal");
    d.chat(chat_body(SMOLLM2, "Hi", 2, false));
}

#[test]
fn simulated_critical_caps_a_stream_in_flight_then_unloads_and_refuses_loads() {
    let (d, _config) = pressure_daemon();
    // A raw prompt a small model continues for as long as it may.
    let r = d
        .post(
            "/v1/completions",
            &json!({
                "model": SMOLLM2,
                "prompt": "Numbers from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6,",
                "max_tokens": 1500,
                "temperature": 0,
                "stream": true,
            }),
        )
        .unwrap();
    let mut sse = Sse(BufReader::new(r.into_reader()));
    sse.next_data().unwrap();
    sse.next_data().unwrap();
    simulate(&d, "critical");
    // The stream ends soon (at most the remaining-tokens cap, 5, plus what
    // was in the pipe), as `length`, not cut with an error.
    let mut tokens = 0;
    let mut finish = None;
    while let Some(data) = sse.next_data() {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        if let Some(c) = v["choices"].get(0) {
            if c["text"].as_str().is_some_and(|t| !t.is_empty()) {
                tokens += 1;
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    assert_eq!(finish.as_deref(), Some("length"));
    assert!(tokens <= 40, "{tokens} tokens after critical");
    assert!(
        eventually(Duration::from_secs(5), || d.model_status(SMOLLM2).is_none()),
        "{}",
        d.status()
    );
    let e = d
        .post("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 2, false))
        .unwrap_err();
    let ureq::Error::Status(503, r) = e else {
        panic!("expected 503, got {}", describe(e))
    };
    assert!(r.header("retry-after").is_some());
    assert_eq!(d.status()["pressure"]["refusing_loads"], true);
}

/// A raw HTTP/1.1 request with the headers given; the status code. The
/// request is written on a thread of its own while the answer is read: a
/// daemon that refuses a body too large answers and closes before it has
/// read it all, and the rest of the write then fails (broken pipe).
fn raw_status(d: &Daemon, request: &str) -> u16 {
    use std::io::Write;
    let addr = d.url.trim_start_matches("http://");
    let s = std::net::TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let bytes = request.replace("ADDR", addr).into_bytes();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let _ = writer.join();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn web_pages_cannot_reach_the_api() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let get = |headers: &str| {
        raw_status(
            &d,
            &format!("GET /v1/models HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"),
        )
    };
    let auth = format!("Authorization: {}\r\n", d.bearer());
    assert_eq!(get(&format!("Host: ADDR\r\n{auth}")), 200);
    let port = d.url.rsplit(':').next().unwrap().to_string();
    assert_eq!(get(&format!("Host: localhost:{port}\r\n{auth}")), 200);
    // No token, or a wrong one: 401.
    assert_eq!(get("Host: ADDR\r\n"), 401);
    assert_eq!(get("Host: ADDR\r\nAuthorization: Bearer lca_00\r\n"), 401);
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    assert_eq!(get(&format!("Host: evil.example:{port}\r\n")), 403);
    assert_eq!(get("Host: ADDR\r\nOrigin: http://evil.example\r\n"), 403);
    // Bodies are capped in size and in nesting.
    let big = "x".repeat(5 << 20);
    let status = raw_status(
        &d,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: ADDR\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_eq!(status, 413);
    let deep = format!(
        "{{\"model\":\"m\",\"messages\":{}{}}}",
        "[".repeat(70),
        "]".repeat(70)
    );
    let e = d
        .post(
            "/v1/chat/completions",
            &serde_json::from_str::<Value>(&deep).unwrap(),
        )
        .unwrap_err();
    let ureq::Error::Status(400, r) = e else {
        panic!("expected 400")
    };
    let body: Value = r.into_json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("71 levels deep"), "{message}");
}

/// Installs an app from manifest text in the daemon's data directory; its
/// token (printed once, alone on stdout).
fn install_app(d: &Daemon, manifest: &str) -> String {
    let path = d.home.path().join("app.toml");
    std::fs::write(&path, manifest).unwrap();
    let out = locara()
        .env("LOCARA_HOME", d.home.path())
        .args(["app", "install"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        token.starts_with("lca_") && !token.starts_with("lca_admin_"),
        "{token:?}"
    );
    token
}

#[test]
fn an_app_token_reaches_only_its_models_and_no_management_route() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let token = install_app(
        &d,
        &format!(
            "id = \"com.example.notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n\n[[models]]\nref = \"{SMOLLM2}\"\ncontext = 2048\n"
        ),
    );
    let as_app = |path: &str, body: &Value| {
        ureq::post(&format!("{}{path}", d.url))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(body.clone())
            .map_err(Box::new)
    };
    // Its own model: fine.
    let r: Value = as_app("/v1/chat/completions", &chat_body(SMOLLM2, "Hi", 2, false))
        .unwrap()
        .into_json()
        .unwrap();
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    // Another model: 403 naming it.
    let e = as_app("/v1/chat/completions", &chat_body(GEMMA3, "Hi", 2, false)).unwrap_err();
    let ureq::Error::Status(403, r) = *e else {
        panic!("expected 403, got {}", describe(*e))
    };
    let body: Value = r.into_json().unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains(GEMMA3),
        "{body}"
    );
    // Management routes need the admin token.
    let e = as_app(&format!("/locara/v1/models/{SMOLLM2}/unload"), &json!({})).unwrap_err();
    assert!(
        matches!(*e, ureq::Error::Status(403, _)),
        "{}",
        describe(*e)
    );
    // Its model list holds only its models.
    let models: Value = ureq::get(&format!("{}/v1/models", d.url))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [SMOLLM2]);
}

#[test]
fn an_app_is_held_to_its_budget() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    // 0.25 GiB: SmolLM2 (about 156 MiB here) fits, Gemma 3 (about 337 MiB)
    // does not.
    let token = install_app(
        &d,
        &format!(
            "id = \"com.example.small\"\nname = \"Small\"\nversion = \"1.0.0\"\n\n[requires]\nmemory_gb = 0.25\n\n[[models]]\nref = \"{SMOLLM2}\"\ncontext = 2048\n\n[[models]]\nref = \"{GEMMA3}\"\ncontext = 2048\n"
        ),
    );
    let events = event_log(&d);
    let as_app = |model: &str| {
        ureq::post(&format!("{}/v1/chat/completions", d.url))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(chat_body(model, "Hi", 2, false))
            .map_err(Box::new)
    };
    as_app(SMOLLM2).unwrap();
    // Loading Gemma beside it would take the app over: refused, with numbers.
    let e = as_app(GEMMA3).unwrap_err();
    let ureq::Error::Status(503, r) = *e else {
        panic!("expected 503, got {}", describe(*e))
    };
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "app_budget_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("256.0 MiB") && message.contains(GEMMA3),
        "{message}"
    );
    // Loaded by the admin, Gemma counts against the app, which is told.
    d.cli().args(["load", GEMMA3]).output().unwrap();
    as_app(SMOLLM2).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || events
            .lock()
            .unwrap()
            .iter()
            .any(
                |e| e["type"] == "budget.exceeded" && e["app"] == "com.example.small"
            )),
        "{:?}",
        events.lock().unwrap()
    );
}

/// A chat whose user message is long: `words` repetitions of a sentence.
fn long_chat(model: &str, tag: usize, words: usize, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!(
                "Story {tag}: {} Summarise this in one sentence.",
                "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(words)
            )},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// Four ~700-token conversations sent at once (their answers in order):
/// together they need more than the 2048 cells a pool starts with.
fn four_long_chats_at_once(d: &Daemon, model: &str) -> Vec<Value> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| s.spawn(move || d.chat(long_chat(model, i, 45, 32))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Four conversations at once outgrow the pool a model starts with (2048
/// cells); the governor grants the growth and each answer is the one the
/// same request gets alone, byte for byte.
#[test]
fn concurrent_conversations_grow_the_kv_pool_and_answer_as_alone() {
    let d = Daemon::start(&[]);
    let model = SMOLLM2;
    let answers = four_long_chats_at_once(&d, model);
    let pool = d.model_status(model).unwrap()["pool"].clone();
    assert!(
        pool["resizes"].as_u64().unwrap() >= 1 && pool["cells"].as_u64().unwrap() > 2048,
        "the pool should have grown past 2048 cells: {pool}"
    );
    for (i, together) in answers.iter().enumerate() {
        let alone = d.chat(long_chat(model, i, 45, 32));
        assert_eq!(
            together["choices"][0]["message"]["content"], alone["choices"][0]["message"]["content"],
            "conversation {i}"
        );
        assert!(
            alone["usage"]["prompt_tokens"].as_u64().unwrap() > 600,
            "{alone}"
        );
    }
    let metrics = d.metrics();
    assert!(
        metrics.contains("locara_kv_pool_resizes_total{model=\"smollm2:135m\",direction=\"grow\"}"),
        "{metrics}"
    );
}

/// A budget that admits the starting pool but not its growth: the governor
/// refuses, and the conversations that needed room shift their context and
/// finish instead of failing.
#[test]
fn a_refused_growth_ends_in_a_context_shift_not_a_failure() {
    // The starting pool of SmolLM2 with 4 sequences and q8_0 K/V is
    // estimated at about 194 MiB (mapped weights and the 37 MiB embedding
    // context included); growing by half is about 202 MiB. (The K/V type
    // is named: the default is the backend's.)
    let d = Daemon::start(&["--budget", "198MiB", "--kv", "q8_0"]);
    let model = SMOLLM2;
    let answers = four_long_chats_at_once(&d, model);
    for a in &answers {
        assert!(
            !a["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .is_empty(),
            "{a}"
        );
    }
    assert!(
        answers
            .iter()
            .any(|a| a["locara"]["shifted_tokens"].as_u64().unwrap_or(0) > 0),
        "some conversation should report the tokens its context shift dropped: {answers:?}"
    );
    let pool = d.model_status(model).unwrap()["pool"].clone();
    assert!(
        pool["growth_refused"].as_u64().unwrap() >= 1,
        "growth should have been refused: {pool}"
    );
    assert_eq!(pool["cells"], 2048, "{pool}");
}

/// `POST path` with an app's token.
#[allow(clippy::result_large_err)]
fn post_as(
    d: &Daemon,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<ureq::Response, ureq::Error> {
    ureq::post(&format!("{}{path}", d.url))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(300))
        .send_json(body.clone())
}

/// `kv_quality = "high"` on a daemon whose K/V type is q8_0: the app's
/// requests go to a load of their own, whose worker reports f16, while an
/// app that leaves the quality to the runtime shares the q8_0 load.
#[test]
fn an_app_that_asks_for_f16_gets_a_worker_that_reports_f16() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1", "--kv", "q8_0"]);
    let app = |id: &str, extra: &str| {
        install_app(
            &d,
            &format!(
                "id = \"{id}\"\nname = \"App\"\nversion = \"1.0.0\"\n\n[[models]]\nref = \"{SMOLLM2}\"\ncontext = 2048\n{extra}"
            ),
        )
    };
    let high = app("com.example.high", "kv_quality = \"high\"\n");
    let plain = app("com.example.plain", "");
    for token in [&high, &plain] {
        let r: Value = post_as(
            &d,
            token,
            "/v1/chat/completions",
            &chat_body(SMOLLM2, "Hi", 4, false),
        )
        .unwrap_or_else(|e| panic!("{}", describe(e)))
        .into_json()
        .unwrap();
        assert!(
            r["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
            "{r}"
        );
    }
    let f16 = d
        .model_status(&format!("{SMOLLM2}@f16"))
        .expect("the app's own load");
    assert_eq!(f16["kv_type"], "f16", "{f16}");
    let q8 = d.model_status(SMOLLM2).expect("the runtime's load");
    assert_eq!(q8["kv_type"], "q8_0", "{q8}");
    assert_ne!(f16["pid"], q8["pid"], "two workers");
}

/// An app's `[speculative]` pair (SmolLM2 drafting for itself, imported
/// under a second name: the mechanics, not the speed): its requests for the
/// target go to one load with the draft beside it, budgeted as both, whose
/// greedy answers are the target's alone; the acceptance rate reaches
/// /metrics. A pair whose vocabularies differ is refused at install.
#[test]
fn an_app_with_a_speculative_pair_gets_one_load_with_its_draft() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let draft = "smollm2-draft:135m";
    let out = locara()
        .env("LOCARA_HOME", d.home.path())
        .arg("import")
        .arg(model(SMOLLM2))
        .args(["--name", draft])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = |id: &str, draft: &str| {
        format!(
            "id = \"{id}\"\nname = \"Pair\"\nversion = \"1.0.0\"\n\n\
             [[models]]\nref = \"{SMOLLM2}\"\ncontext = 2048\n\n\
             [[models]]\nref = \"{draft}\"\nrole = \"draft\"\n\n\
             [speculative]\ntarget = \"{SMOLLM2}\"\ndraft = \"{draft}\"\n"
        )
    };

    // Gemma 3's vocabulary is not SmolLM2's.
    let path = d.home.path().join("bad.toml");
    std::fs::write(&path, manifest("com.example.bad", GEMMA3)).unwrap();
    let out = locara()
        .env("LOCARA_HOME", d.home.path())
        .args(["app", "install"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mismatched pair installed");
    assert!(stderr.contains("cannot draft"), "{stderr}");
    assert!(
        stderr.contains(GEMMA3) && stderr.contains("tokenizer"),
        "{stderr}"
    );

    let token = install_app(&d, &manifest("com.example.pair", draft));
    let body = chat_body(
        SMOLLM2,
        "Write a short story about a lighthouse keeper.",
        64,
        false,
    );
    let answer = |token: &str| -> Value {
        post_as(&d, token, "/v1/chat/completions", &body)
            .unwrap_or_else(|e| panic!("{}", describe(e)))
            .into_json()
            .unwrap()
    };
    let alone = answer(&d.token);
    let paired = answer(&token);
    assert_eq!(
        paired["choices"][0]["message"]["content"], alone["choices"][0]["message"]["content"],
        "the pair answers as the target alone"
    );

    let load_name = format!("{SMOLLM2}+{draft}");
    let pair = d.model_status(&load_name).expect("the pair's load");
    let single = d.model_status(SMOLLM2).expect("the admin's load");
    assert_ne!(pair["pid"], single["pid"], "two workers");
    assert_eq!(pair["draft"], draft, "{pair}");
    assert_eq!(single["draft"], Value::Null, "{single}");
    // Idle workers hold no threads.
    assert_eq!(pair["threads"], 0, "{pair}");
    // The pair's estimate counts the draft's weights (SmolLM2's tensors
    // are 92 MiB) and its K/V too.
    let (pair_estimate, single_estimate) = (
        pair["estimate"].as_u64().unwrap(),
        single["estimate"].as_u64().unwrap(),
    );
    assert!(
        pair_estimate >= single_estimate + (92 << 20),
        "pair {pair_estimate} vs alone {single_estimate} ({pair})"
    );
    // The acceptance rate, in the answer and in /metrics (by model).
    let spec = &paired["locara"]["speculative"];
    let (proposed, accepted) = (
        spec["draft_tokens"].as_u64().unwrap(),
        spec["draft_accepted_tokens"].as_u64().unwrap(),
    );
    assert!(
        proposed > 0 && accepted * 10 > proposed * 8,
        "the draft model agrees with itself: {spec}"
    );
    let metrics = d.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("locara_draft_accepted_tokens_total")
                && l.contains(SMOLLM2)
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// An app with `max_concurrency = 1` generates one answer at a time: its
/// second request starts only once the first has ended, though the model
/// has room for two.
#[test]
fn an_app_generates_one_answer_at_a_time_with_max_concurrency_1() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "2"]);
    let token = install_app(
        &d,
        &format!(
            "id = \"com.example.one\"\nname = \"One\"\nversion = \"1.0.0\"\nmax_concurrency = 1\n\n[[models]]\nref = \"{SMOLLM2}\"\ncontext = 2048\n"
        ),
    );
    let body = json!({
        "model": SMOLLM2,
        "messages": [{"role": "user", "content": "Count from one to one hundred."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": true,
    });
    let first = post_as(&d, &token, "/v1/chat/completions", &body)
        .unwrap_or_else(|e| panic!("{}", describe(e)));
    let mut sse = Sse::new(first);
    assert!(sse.next_data().is_some(), "the first answer started");
    // The second request, on a thread: its answer starts when the app's
    // one place is free.
    let second = {
        let (url, token, body) = (d.url.clone(), token.clone(), body.clone());
        std::thread::spawn(move || {
            let r = ureq::post(&format!("{url}/v1/chat/completions"))
                .set("Authorization", &format!("Bearer {token}"))
                .timeout(Duration::from_secs(300))
                .send_json(body)
                .unwrap_or_else(|e| panic!("{}", describe(e)));
            let started = Instant::now();
            let (text, finish, _, done) = Sse::new(r).collect();
            (started, text, finish, done)
        })
    };
    let mut busy_most = 0;
    let mut last_token = Instant::now();
    while let Some(data) = sse.next_data() {
        if data == "[DONE]" {
            break;
        }
        last_token = Instant::now();
        let busy = d
            .model_status(SMOLLM2)
            .map_or(0, |m| m["sequences_busy"].as_u64().unwrap_or(0));
        busy_most = busy_most.max(busy);
    }
    let (started, text, finish, done) = second.join().unwrap();
    assert_eq!(busy_most, 1, "the app held one sequence at a time");
    assert!(
        started >= last_token,
        "the second answer started before the first ended"
    );
    assert!(done && !text.is_empty(), "{text:?} {finish:?}");
}

/// `locara power simulate` drives the daemon's power policy: on battery
/// `locara ps` says so and what it changes, apps hear a `power` event, an
/// answer that starts stops at the 512-token cap; `normal` lifts it.
#[test]
fn simulated_battery_caps_answers_and_normal_lifts_it() {
    // The machine's own state stays out of it (`--power ignore`).
    let d = Daemon::start(&["--context", "2048", "--parallel", "1", "--power", "ignore"]);
    let events = event_log(&d);
    let out = d
        .cli()
        .args(["power", "simulate", "battery", "--for", "10m"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("battery for 10m") && said.contains("capped at 512 tokens"),
        "{said}"
    );
    let ps = d.cli().arg("ps").output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.contains("power: battery (on battery") && ps.contains("no speculative drafting"),
        "{ps}"
    );
    let status = d.status();
    assert_eq!(status["power"]["mode"], "battery", "{status}");
    assert_eq!(status["power"]["limits"]["max_tokens"], 512, "{status}");

    let answer = d.chat(chat_body(
        SMOLLM2,
        "Count from 1 to 1000, one number per line.",
        1500,
        false,
    ));
    let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens <= 512, "{tokens} tokens on battery: {answer}");
    if answer["choices"][0]["finish_reason"] == "length" {
        assert_eq!(tokens, 512, "{answer}");
    }
    assert!(eventually(Duration::from_secs(3), || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "power" && e["mode"] == "battery")
    }));

    let out = d
        .cli()
        .args(["power", "simulate", "normal"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let status = d.status();
    assert_eq!(status["power"]["mode"], "normal", "{status}");
    assert_eq!(status["power"]["changes"], "nothing", "{status}");
    let metrics = d.metrics();
    assert!(
        metrics.contains("locara_power_changes_total{mode=\"battery\"} 1"),
        "{metrics}"
    );
}
