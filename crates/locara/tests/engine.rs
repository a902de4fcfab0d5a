//! The engine worker against the real default model: determinism, chat
//! templates, cancellation, crashes, and the GGUF guard in front of llama.cpp.

mod common;

use common::*;
use locara_core::KvType;
use locara_engine::protocol::*;
use locara_engine::{EngineError, Worker};
use std::time::{Duration, Instant};

fn load(worker: &Worker, name: &str) -> LoadedInfo {
    worker
        .load(LoadRequest {
            path: model(name),
            context: Some(2048),
            kv_type: KvType::Q8_0,
            parallel: 1,
            threads: TEST_THREADS,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .expect("loading the model")
}

fn generate(id: u64, prompt: Prompt, max_tokens: u32) -> Request {
    Request::Generate(request(id, prompt, max_tokens))
}

fn chat(text: &str) -> Prompt {
    Prompt::Chat {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
    }
}

/// Collects generation `id` to its end: (text, tokens events, finish, stats).
fn collect(worker: &Worker, id: u64) -> (String, usize, FinishReason, GenerationStats) {
    let mut text = String::new();
    let mut events = 0;
    loop {
        match worker.recv_timeout(Duration::from_secs(120)).unwrap() {
            Some(Event::Token { id: i, text: t }) if i == id => {
                text.push_str(&t);
                events += 1;
            }
            Some(Event::Done {
                id: i,
                finish,
                stats,
            }) if i == id => return (text, events, finish, stats),
            Some(Event::Error { message, .. }) => panic!("worker error: {message}"),
            Some(_) => {}
            None => panic!("no event within 120 s"),
        }
    }
}

#[test]
fn load_reports_the_defaults_and_the_models_shape() {
    let worker = spawn_worker();
    let info = worker
        .load(LoadRequest {
            path: model(SMOLLM2),
            context: None,
            kv_type: KvType::default(),
            parallel: 1,
            threads: TEST_THREADS,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .unwrap();
    // 8192 by default, and SmolLM2 was trained on 8192.
    assert_eq!(info.context, 8192);
    assert_eq!(info.trained_context, 8192);
    assert_eq!(info.kv_type, KvType::Q8_0);
    assert!(info.flash_attention);
    assert!(info.has_chat_template);
    assert_eq!(
        (info.layers, info.heads, info.kv_heads, info.embedding),
        (30, 9, 3, 576)
    );
}

#[test]
fn gguf_metadata_agrees_with_what_llama_cpp_reports() {
    for name in [SMOLLM2, GEMMA3] {
        let file = locara_gguf::validate_file(&model(name)).unwrap();
        let m = &file.model;
        let worker = spawn_worker();
        let info = load(&worker, name);
        assert_eq!(m.block_count, info.layers, "{name}: layers");
        assert_eq!(m.embedding_length, info.embedding, "{name}: embedding");
        assert_eq!(m.head_count, info.heads, "{name}: heads");
        assert_eq!(m.head_count_kv[0], info.kv_heads, "{name}: KV heads");
        assert_eq!(
            m.context_length, info.trained_context,
            "{name}: trained context"
        );
        assert_eq!(
            m.tensor_data_bytes, info.weights_bytes,
            "{name}: mapped weights"
        );
    }
}

#[test]
fn context_is_clamped_to_the_trained_context() {
    let worker = spawn_worker();
    let info = worker
        .load(LoadRequest {
            path: model(SMOLLM2),
            context: Some(1 << 20),
            kv_type: KvType::F16,
            parallel: 1,
            threads: TEST_THREADS,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .unwrap();
    assert_eq!(info.context, 8192);
    assert_eq!(info.kv_type, KvType::F16);
}

#[test]
fn greedy_generation_is_deterministic_across_two_workers() {
    let mut answers = Vec::new();
    for _ in 0..2 {
        let worker = spawn_worker();
        load(&worker, SMOLLM2);
        worker
            .send(&generate(
                1,
                Prompt::Raw {
                    text: "The capital of France is".into(),
                },
                24,
            ))
            .unwrap();
        let (text, _, finish, stats) = collect(&worker, 1);
        assert!(!text.trim().is_empty());
        assert!(matches!(finish, FinishReason::Length | FinishReason::Stop));
        assert!(stats.prompt_tokens > 3);
        answers.push(text);
    }
    assert_eq!(answers[0], answers[1]);
}

#[test]
fn a_chat_through_the_template_answers() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2);
    worker
        .send(&generate(
            5,
            chat("What is the capital of France? Answer in one word."),
            32,
        ))
        .unwrap();
    let (text, _, finish, stats) = collect(&worker, 5);
    assert!(text.contains("Paris"), "answer: {text:?}");
    // The template wraps the question in role markers: more tokens than the text.
    assert!(stats.prompt_tokens > 12, "{stats:?}");
    assert_eq!(
        finish,
        FinishReason::Stop,
        "the model ends its turn by itself"
    );
    assert!(
        !text.contains("<|im_end|>"),
        "control tokens are not text: {text:?}"
    );
}

#[test]
fn gemma_chat_template_answers_too() {
    let worker = spawn_worker();
    let info = load(&worker, GEMMA3);
    assert_eq!(info.trained_context, 32768);
    // This GGUF ships no template; gemma's built-in one is used.
    assert!(!info.has_chat_template);
    assert_eq!(info.chat_template, "built-in gemma (by architecture)");
    worker.send(&generate(1, chat("Say hello."), 16)).unwrap();
    let (text, _, _, _) = collect(&worker, 1);
    assert!(!text.trim().is_empty());
}

#[test]
fn stop_strings_end_the_answer_before_them() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2);
    worker
        .send(&Request::Generate(GenerateRequest {
            id: 1,
            prompt: Prompt::Raw {
                text: "1, 2, 3, 4, 5,".into(),
            },
            sampling: Sampling::greedy(),
            max_tokens: Some(40),
            stop: vec!["8".into()],
            n_keep: None,
            truncate: true,
            cache_prompt: true,
        }))
        .unwrap();
    let (text, _, finish, _) = collect(&worker, 1);
    assert_eq!(finish, FinishReason::Stop);
    assert!(!text.contains('8'), "{text:?}");
    assert!(text.contains('7'), "{text:?}");
}

#[test]
fn cancel_stops_within_one_token() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2);
    // A prompt the model continues for a long time.
    let prompt = Prompt::Raw {
        text: "Count to five hundred: 1, 2, 3, 4,".into(),
    };
    worker.send(&generate(9, prompt, 2000)).unwrap();
    let mut before = 0;
    while before < 3 {
        match worker.recv().unwrap() {
            Event::Token { .. } => before += 1,
            other => panic!("the generation should still run, got {other:?}"),
        }
    }
    worker.send(&Request::Cancel { id: 9 }).unwrap();
    let (_, after, finish, stats) = collect(&worker, 9);
    assert_eq!(finish, FinishReason::Cancelled);
    assert!(after <= 1, "{after} tokens arrived after the cancel");
    assert!(stats.generated_tokens <= 5, "{stats:?}");
    // The worker serves the next request normally.
    worker
        .send(&generate(
            10,
            Prompt::Raw {
                text: "Hello".into(),
            },
            4,
        ))
        .unwrap();
    let (_, _, finish, _) = collect(&worker, 10);
    assert_eq!(finish, FinishReason::Length);
}

#[test]
fn a_worker_killed_mid_generation_is_an_error_not_a_hang() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2);
    worker
        .send(&generate(
            1,
            Prompt::Raw {
                text: "Count to one thousand:".into(),
            },
            4000,
        ))
        .unwrap();
    assert!(matches!(worker.recv().unwrap(), Event::Token { .. }));
    // SAFETY: kill(2) on a pid we spawned.
    unsafe { libc::kill(worker.pid() as i32, libc::SIGKILL) };
    let started = Instant::now();
    let err = loop {
        match worker.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error within 5 s of SIGKILL"),
            Err(e) => break e,
        }
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, EngineError::WorkerDied { .. }), "{err:?}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert!(worker.send(&Request::Stats).is_err());
}

#[test]
fn a_file_the_guard_rejects_never_reaches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    // A GGUF header that claims 2^40 tensors.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let worker = spawn_worker();
    let err = worker
        .load(LoadRequest {
            path,
            context: None,
            kv_type: KvType::Q8_0,
            parallel: 1,
            threads: 1,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .unwrap_err();
    match err {
        EngineError::Worker { kind, message } => {
            assert_eq!(kind, ErrorKind::InvalidModel);
            assert!(message.contains("tensor count"), "{message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn the_worker_exits_when_its_parent_closes_the_channel() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2);
    let pid = worker.pid();
    drop(worker);
    assert!(eventually(Duration::from_secs(3), || !alive(pid)));
}

#[test]
fn concurrent_generations_share_one_worker() {
    let worker = spawn_worker();
    worker
        .load(LoadRequest {
            path: model(SMOLLM2),
            context: Some(1024),
            kv_type: KvType::Q8_0,
            parallel: 2,
            threads: TEST_THREADS,
            gpu_layers: None,
            pool: None,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .unwrap();
    worker
        .send(&generate(
            2,
            Prompt::Raw {
                text: "The sky is".into(),
            },
            12,
        ))
        .unwrap();
    worker
        .send(&generate(
            3,
            Prompt::Raw {
                text: "Rust is a language".into(),
            },
            12,
        ))
        .unwrap();
    let mut texts = std::collections::HashMap::new();
    let mut done = 0;
    while done < 2 {
        match worker.recv().unwrap() {
            Event::Token { id, text } => {
                texts.entry(id).or_insert_with(String::new).push_str(&text)
            }
            Event::Done { .. } => done += 1,
            other => panic!("{other:?}"),
        }
    }
    // Both ran to their end; llama.cpp does not promise bit-identical
    // logits across batch shapes, so the texts are not compared.
    assert!(!texts[&2].is_empty());
    assert!(!texts[&3].is_empty());
}

// --- The K/V pool: prefix reuse, growth, shift, shrink (issue 13) ---

fn load_pool(
    worker: &Worker,
    name: &str,
    context: u32,
    parallel: u32,
    pool: Option<u32>,
) -> LoadedInfo {
    worker
        .load(LoadRequest {
            path: model(name),
            context: Some(context),
            kv_type: KvType::Q8_0,
            parallel,
            threads: TEST_THREADS,
            gpu_layers: None,
            pool,
            pool_max: None,
            ram_cache_bytes: 0,
        })
        .expect("loading the model")
}

fn messages(turns: &[(&str, &str)]) -> Prompt {
    Prompt::Chat {
        messages: turns
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.to_string(),
                content: content.to_string(),
            })
            .collect(),
    }
}

fn request(id: u64, prompt: Prompt, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        id,
        prompt,
        sampling: Sampling::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        n_keep: None,
        truncate: true,
        cache_prompt: true,
    }
}

/// How the test, playing the parent, answers `PoolFull`.
#[derive(Clone, Copy, PartialEq)]
enum Growth {
    Grant,
    Deny,
}

/// One generation's end as the parent saw it.
#[derive(Debug, Clone)]
struct Ended {
    text: String,
    finish: Result<FinishReason, ErrorKind>,
    stats: GenerationStats,
}

/// What a run of generations showed besides their answers.
#[derive(Debug, Default)]
struct Seen {
    pool_full: u32,
    /// (cells, previous_cells, moved_sequences, moved_tokens, state_bytes, ms)
    resized: Vec<(u32, u32, u32, u32, u64, f64)>,
}

/// Runs generations `ids` to their ends, answering every `PoolFull` as
/// `growth` says.
fn run_all(worker: &Worker, ids: &[u64], growth: Growth) -> (Vec<Ended>, Seen) {
    let mut ended: std::collections::HashMap<u64, Ended> = Default::default();
    let mut texts: std::collections::HashMap<u64, String> = Default::default();
    let mut seen = Seen::default();
    while ended.len() < ids.len() {
        match worker.recv_timeout(Duration::from_secs(120)).unwrap() {
            Some(Event::Token { id, text }) => texts.entry(id).or_default().push_str(&text),
            Some(Event::Done { id, finish, stats }) => {
                let text = texts.remove(&id).unwrap_or_default();
                ended.insert(
                    id,
                    Ended {
                        text,
                        finish: Ok(finish),
                        stats,
                    },
                );
            }
            Some(Event::Error {
                id: Some(id),
                kind,
                message,
            }) => {
                eprintln!("generation {id}: {} ({message})", kind.as_str());
                let text = texts.remove(&id).unwrap_or_default();
                ended.insert(
                    id,
                    Ended {
                        text,
                        finish: Err(kind),
                        stats: GenerationStats::default(),
                    },
                );
            }
            Some(Event::PoolFull {
                suggested_cells,
                needed_cells,
                pool_cells,
                used_cells,
                ..
            }) => {
                seen.pool_full += 1;
                assert!(used_cells <= pool_cells);
                assert!(suggested_cells >= used_cells + needed_cells.min(pool_cells));
                let answer = match growth {
                    Growth::Grant => Request::Resize {
                        cells: suggested_cells,
                    },
                    Growth::Deny => Request::DenyGrowth,
                };
                worker.send(&answer).unwrap();
            }
            Some(Event::Resized {
                cells,
                previous_cells,
                moved_sequences,
                moved_tokens,
                state_bytes,
                ms,
                ..
            }) => seen.resized.push((
                cells,
                previous_cells,
                moved_sequences,
                moved_tokens,
                state_bytes,
                ms,
            )),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no event within 120 s"),
        }
    }
    (ids.iter().map(|id| ended[id].clone()).collect(), seen)
}

fn run_one(worker: &Worker, req: GenerateRequest, growth: Growth) -> (Ended, Seen) {
    let id = req.id;
    worker.send(&Request::Generate(req)).unwrap();
    let (mut ended, seen) = run_all(worker, &[id], growth);
    (ended.remove(0), seen)
}

fn worker_stats(worker: &Worker) -> WorkerStats {
    worker.send(&Request::Stats).unwrap();
    match worker.recv().unwrap() {
        Event::Stats(s) => s,
        other => panic!("expected stats, got {other:?}"),
    }
}

fn sequences(worker: &Worker) -> Vec<SequenceInfo> {
    worker.send(&Request::Sequences).unwrap();
    match worker.recv().unwrap() {
        Event::Sequences { sequences } => sequences,
        other => panic!("expected sequences, got {other:?}"),
    }
}

fn resize(worker: &Worker, cells: u32) -> (u32, u32, u32, u32, u64, f64) {
    worker.send(&Request::Resize { cells }).unwrap();
    match worker.recv().unwrap() {
        Event::Resized {
            cells,
            previous_cells,
            moved_sequences,
            moved_tokens,
            state_bytes,
            ms,
            ..
        } => (
            cells,
            previous_cells,
            moved_sequences,
            moved_tokens,
            state_bytes,
            ms,
        ),
        other => panic!("expected resized, got {other:?}"),
    }
}

const SYSTEM: &str = "You are a concise assistant. Answer in one or two sentences.";

#[test]
fn a_next_turn_reuses_the_cache_and_answers_as_a_fresh_worker() {
    let turn1 = [
        ("system", SYSTEM),
        ("user", "What is the capital of France?"),
    ];
    let worker = spawn_worker();
    load_pool(&worker, SMOLLM2, 2048, 1, None);
    let (first, _) = run_one(&worker, request(1, messages(&turn1), 32), Growth::Deny);
    assert_eq!(first.stats.prompt_cached_tokens, 0);
    let turn2 = [
        turn1[0],
        turn1[1],
        ("assistant", first.text.as_str()),
        ("user", "And of Italy?"),
    ];
    let (second, _) = run_one(&worker, request(2, messages(&turn2), 32), Growth::Deny);
    let s = &second.stats;
    eprintln!(
        "turn 1: {} prompt tokens, {} generated; turn 2: {} prompt tokens, {} from the cache",
        first.stats.prompt_tokens,
        first.stats.generated_tokens,
        s.prompt_tokens,
        s.prompt_cached_tokens
    );
    // All of turn 1's prompt and its answer come from the cache; only the
    // new turn is prefilled.
    assert!(
        s.prompt_cached_tokens >= first.stats.prompt_tokens + first.stats.generated_tokens - 2,
        "{s:?}"
    );
    assert!(s.prompt_tokens - s.prompt_cached_tokens <= 16, "{s:?}");
    let ws = worker_stats(&worker);
    assert_eq!(ws.reused_tokens_total, u64::from(s.prompt_cached_tokens));
    assert_eq!(ws.cached_sequences, 1);

    let fresh = spawn_worker();
    load_pool(&fresh, SMOLLM2, 2048, 1, None);
    let (expected, _) = run_one(&fresh, request(2, messages(&turn2), 32), Growth::Deny);
    assert_eq!(expected.stats.prompt_cached_tokens, 0);
    assert_eq!(expected.stats.prompt_tokens, s.prompt_tokens);
    assert_eq!(second.text, expected.text);
    assert_eq!(second.finish, expected.finish);
}

/// A system prompt of about 120 tokens: four conversations with it need
/// more than one 256-cell step of pool before they answer.
const LONG_SYSTEM: &str = "You are a helpful assistant for a small team of gardeners. \
    Answer briefly and plainly, in one or two sentences, without lists. \
    If you do not know something, say so instead of guessing. Prefer \
    metric units, name plants by their common names, and mention the \
    season when it matters. Never recommend chemical pesticides; suggest \
    companion planting, hand picking or barriers instead. Be friendly, \
    but do not greet the user or repeat the question before answering.";

const QUESTIONS: [&str; 4] = [
    "Name three colours of the rainbow.",
    "What is two plus two?",
    "Which planet is closest to the sun?",
    "Write one sentence about cats.",
];

#[test]
fn four_conversations_outgrow_a_small_pool_with_the_same_answers() {
    let run = |pool: Option<u32>| {
        let worker = spawn_worker();
        let info = load_pool(&worker, SMOLLM2, 1024, 4, pool);
        for (i, q) in QUESTIONS.iter().enumerate() {
            let prompt = messages(&[("system", LONG_SYSTEM), ("user", q)]);
            worker
                .send(&Request::Generate(request(i as u64 + 1, prompt, 48)))
                .unwrap();
        }
        let (ended, seen) = run_all(&worker, &[1, 2, 3, 4], Growth::Grant);
        (info, ended, seen, worker_stats(&worker))
    };
    // The full reservation: 4 × 1024 cells, never short.
    let (full_info, expected, full_seen, _) = run(None);
    assert_eq!(full_info.pool_cells, 4096);
    assert_eq!(full_seen.pool_full, 0);
    // One step of 256 cells: the four prompts alone need more.
    let (info, ended, seen, stats) = run(Some(256));
    assert_eq!((info.pool_cells, info.pool_max_cells), (256, 4096));
    assert!(seen.pool_full >= 1, "{seen:?}");
    assert_eq!(seen.resized.len() as u32, seen.pool_full);
    assert_eq!(stats.resizes, seen.resized.len() as u64);
    for (cells, previous, moved, tokens, bytes, ms) in &seen.resized {
        assert!(cells > previous);
        eprintln!(
            "resize {previous} -> {cells} cells: {moved} sequences, {tokens} tokens, {bytes} bytes ({} per token), {ms:.2} ms",
            bytes / u64::from((*tokens).max(1))
        );
    }
    assert!(
        stats.pool_cells > 256 && stats.pool_cells <= 4096,
        "{stats:?}"
    );
    for (got, want) in ended.iter().zip(&expected) {
        assert!(!want.text.trim().is_empty());
        assert_eq!(got.text, want.text);
        assert_eq!(got.finish, want.finish);
    }
}

#[test]
fn refused_growth_shifts_the_context_and_keeps_n_keep_tokens() {
    let worker = spawn_worker();
    load_pool(&worker, SMOLLM2, 2048, 1, Some(256));
    let text = "Count to one thousand: 1, 2, 3, 4, 5,";
    // The prompt's tokens, as the cache holds them after a one-token run.
    let (_, _) = run_one(
        &worker,
        request(1, Prompt::Raw { text: text.into() }, 1),
        Growth::Deny,
    );
    let prompt: Vec<i32> = sequences(&worker)[0].tokens.clone();
    assert!(prompt.len() > 8);
    let n_keep = 6;
    // 256 cells hold the prompt and about 240 tokens: 280 need one shift.
    let mut req = request(2, Prompt::Raw { text: text.into() }, 280);
    req.n_keep = Some(n_keep);
    let (ended, seen) = run_one(&worker, req, Growth::Deny);
    assert_eq!(ended.finish, Ok(FinishReason::Length), "{ended:?}");
    assert_eq!(ended.stats.generated_tokens, 280);
    assert!(seen.pool_full >= 1);
    assert!(seen.resized.is_empty());
    assert!(ended.stats.shifted_tokens > 0, "{:?}", ended.stats);
    assert_eq!(ended.stats.kept_tokens, n_keep);
    let held = &sequences(&worker)[0];
    let n_keep = n_keep as usize;
    // The first n_keep tokens are the prompt's; the oldest after them went.
    assert_eq!(held.tokens[..n_keep], prompt[..n_keep]);
    assert_ne!(held.tokens[n_keep..prompt.len()], prompt[n_keep..]);
    assert!(held.tokens.len() <= 256);
    // Nothing after the kept tokens may be reused as if fresh.
    assert_eq!(held.exact as usize, n_keep);
    let stats = worker_stats(&worker);
    assert_eq!(stats.pool_cells, 256);
    assert_eq!(
        stats.shifted_tokens_total,
        u64::from(ended.stats.shifted_tokens)
    );
}

/// SmolLM2's chat template (ChatML) renders a system message on its own.
fn chatml_system(system: &str) -> String {
    format!("<|im_start|>system\n{system}<|im_end|>\n")
}

#[test]
fn a_sequence_at_its_context_shifts_and_keeps_the_system_prompt() {
    let worker = spawn_worker();
    // The pool (256) is larger than one sequence's context (128): this is
    // the sequence's own limit, not the pool's.
    load_pool(&worker, SMOLLM2, 128, 2, Some(256));
    let (_, _) = run_one(
        &worker,
        request(
            1,
            Prompt::Raw {
                text: chatml_system(SYSTEM),
            },
            1,
        ),
        Growth::Deny,
    );
    let system: Vec<i32> = sequences(&worker)
        .into_iter()
        .find(|s| !s.tokens.is_empty())
        .unwrap()
        .tokens;
    let prompt = messages(&[
        ("system", SYSTEM),
        ("user", "Count from 1 to 500, separated by commas."),
    ]);
    let (ended, seen) = run_one(&worker, request(2, prompt.clone(), 120), Growth::Deny);
    assert_eq!(seen.pool_full, 0);
    assert!(ended.stats.shifted_tokens > 0, "{ended:?}");
    // By default n_keep is the system message, as the template renders it.
    assert_eq!(ended.stats.kept_tokens as usize, system.len());
    let held = sequences(&worker)
        .into_iter()
        .find(|s| s.tokens.len() > system.len())
        .unwrap();
    assert_eq!(held.tokens[..system.len()], system[..]);
    assert!(held.tokens.len() <= 128);

    // Opting out gives the old limit: the answer ends at the context.
    let mut strict = request(3, prompt, 120);
    strict.truncate = false;
    let (ended, _) = run_one(&worker, strict, Growth::Deny);
    assert_eq!(ended.stats.shifted_tokens, 0);
    assert_eq!(ended.finish, Ok(FinishReason::Length));
    assert!(ended.stats.prompt_tokens + ended.stats.generated_tokens <= 128);
}

#[test]
fn a_chat_longer_than_the_context_loses_its_oldest_messages_unless_asked_not_to() {
    let worker = spawn_worker();
    load_pool(&worker, SMOLLM2, 256, 1, None);
    let long = "This is a long message about nothing in particular. ".repeat(8);
    let mut turns = vec![("system", SYSTEM)];
    for _ in 0..4 {
        turns.push(("user", long.as_str()));
        turns.push(("assistant", "I see."));
    }
    turns.push(("user", "Say hello."));
    let (ended, _) = run_one(&worker, request(1, messages(&turns), 16), Growth::Deny);
    assert!(ended.finish.is_ok(), "{ended:?}");
    assert!(ended.stats.dropped_messages >= 2, "{:?}", ended.stats);
    assert!(ended.stats.prompt_tokens + 16 <= 256);
    let mut strict = request(2, messages(&turns), 16);
    strict.truncate = false;
    let (ended, _) = run_one(&worker, strict, Growth::Deny);
    assert_eq!(ended.finish, Err(ErrorKind::PromptTooLong));
}

#[test]
fn refused_growth_on_a_sliding_window_model_is_a_clear_error() {
    let worker = spawn_worker();
    let info = load_pool(&worker, GEMMA3, 2048, 1, Some(256));
    assert_eq!(info.sliding_window, Some(512));
    assert!(!info.context_shift);
    // A prompt of about 200 tokens fills most of the pool (prefill is far
    // cheaper than decode on CI's cores).
    let prompt = Prompt::Raw {
        text: format!("{LONG_SYSTEM} {LONG_SYSTEM} Now count to one thousand: 1, 2, 3, 4, 5,"),
    };
    let (ended, seen) = run_one(&worker, request(1, prompt.clone(), 80), Growth::Deny);
    assert_eq!(seen.pool_full, 1);
    assert_eq!(ended.finish, Err(ErrorKind::PoolExhausted));
    // It ran until the pool was full.
    assert!(!ended.text.is_empty(), "{ended:?}");
    // Granted, the same request runs to its end: the window layers' state
    // moves into the larger pool too.
    let (ended, seen) = run_one(&worker, request(2, prompt.clone(), 80), Growth::Grant);
    assert!(ended.stats.prompt_tokens + 80 > 256, "{:?}", ended.stats);
    let fresh = spawn_worker();
    load_pool(&fresh, GEMMA3, 2048, 1, None);
    let (want, _) = run_one(&fresh, request(2, prompt, 80), Growth::Deny);
    assert_eq!(ended.text, want.text);
    assert_eq!(ended.finish, Ok(FinishReason::Length));
    assert_eq!(seen.resized.len(), 1);
}

#[test]
fn an_idle_shrink_keeps_the_cached_conversations_that_fit() {
    // Two conversations of about 150 tokens that share only the short
    // system prompt (a longer shared prefix would make the second one
    // continue the first's sequence, as it should).
    fn conv(q: &str) -> Vec<(&'static str, String)> {
        vec![
            ("system", SYSTEM.to_string()),
            ("user", format!("{q} Some background: {LONG_SYSTEM}")),
        ]
    }
    fn owned(turns: &[(&'static str, String)]) -> Prompt {
        let borrowed: Vec<(&str, &str)> = turns.iter().map(|(r, c)| (*r, c.as_str())).collect();
        messages(&borrowed)
    }
    let worker = spawn_worker();
    load_pool(&worker, SMOLLM2, 1024, 2, Some(1024));
    let a = conv(QUESTIONS[0]);
    let b = conv(QUESTIONS[2]);
    let (ea, _) = run_one(&worker, request(1, owned(&a), 64), Growth::Deny);
    let (eb, _) = run_one(&worker, request(2, owned(&b), 64), Growth::Deny);
    let before = worker_stats(&worker);
    assert_eq!(before.cached_sequences, 2);
    let held_b = u64::from(eb.stats.prompt_tokens + eb.stats.generated_tokens);
    // 256 cells hold B (the more recent) but not both.
    assert!(before.pool_used_cells > 256 && held_b <= 256, "{before:?}");
    let (cells, previous, moved, tokens, bytes, ms) = resize(&worker, 256);
    eprintln!(
        "shrink {previous} -> {cells} cells: {moved} sequences, {tokens} tokens, {bytes} bytes, {ms:.2} ms"
    );
    assert_eq!((cells, previous), (256, 1024));
    let after = worker_stats(&worker);
    assert_eq!(after.pool_cells, 256);
    assert_eq!(after.resizes, 1);
    assert_eq!(moved, 1);
    assert_eq!(after.cached_sequences, 1);
    // B's next turn reuses its moved cache and answers as a fresh worker.
    let mut b2 = b.clone();
    b2.push(("assistant", eb.text.clone()));
    b2.push(("user", "Why?".to_string()));
    let (got, seen) = run_one(&worker, request(3, owned(&b2), 32), Growth::Grant);
    assert!(
        got.stats.prompt_cached_tokens >= eb.stats.prompt_tokens,
        "{:?}",
        got.stats
    );
    let fresh = spawn_worker();
    load_pool(&fresh, SMOLLM2, 1024, 2, None);
    let (want, _) = run_one(&fresh, request(3, owned(&b2), 32), Growth::Grant);
    assert_eq!(got.text, want.text);
    eprintln!("after the shrink: {seen:?}; A said {:?}", ea.text);
}

/// Gemma 3's window layers keep about one window per sequence (`swa_full`
/// off): a chat's next turn continues at the end of the cache, where the
/// window is whole, so it reuses the cache, also once the conversation has
/// outgrown the window layers' cache; a prompt that leaves the cache
/// further back than the window still reaches must not reuse it.
#[test]
fn gemma3_multi_turn_chat_reuses_its_cache() {
    let worker = spawn_worker();
    let info = load_pool(&worker, GEMMA3, 4096, 1, None);
    let window = info.sliding_window.expect("Gemma 3 has a sliding window");
    let notes = |n: usize| vec![LONG_SYSTEM; n].join(" ");
    let asks = [
        format!("Here are my notes: {} What do I grow?", notes(6)),
        format!("More notes: {} Which season is it?", notes(6)),
        "Summarise it in one sentence.".to_string(),
    ];
    let mut turns: Vec<(String, String)> = vec![("system".into(), SYSTEM.into())];
    let as_prompt = |turns: &[(String, String)]| {
        let t: Vec<(&str, &str)> = turns
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        messages(&t)
    };
    let mut last: Option<GenerationStats> = None;
    let mut reused = None;
    for (n, ask) in asks.iter().enumerate() {
        turns.push(("user".into(), ask.clone()));
        let (ended, _) = run_one(
            &worker,
            request(n as u64 + 1, as_prompt(&turns), 16),
            Growth::Deny,
        );
        let s = ended.stats.clone();
        let held = &sequences(&worker)[0];
        eprintln!(
            "gemma3 turn {}: {} prompt tokens, {} from the cache, {} prefilled in {:.0} ms; \
             the window layers now hold positions {}..{}",
            n + 1,
            s.prompt_tokens,
            s.prompt_cached_tokens,
            s.prompt_tokens - s.prompt_cached_tokens,
            s.prefill_ms,
            held.pos_min,
            held.tokens.len()
        );
        if let Some(prev) = &last {
            // The whole previous turn comes from the cache: its prompt and
            // the answer tokens that were decoded (all but the last).
            assert!(
                s.prompt_cached_tokens >= prev.prompt_tokens + prev.generated_tokens - 1,
                "turn {}: {s:?} after {prev:?}",
                n + 1
            );
        }
        if n == 2 {
            reused = Some((ended.text.clone(), held.pos_min));
        }
        last = Some(s);
        turns.push(("assistant".into(), ended.text.clone()));
    }
    let (answer, pos_min) = reused.unwrap();
    // The third turn reused a cache whose window layers had dropped their
    // oldest positions.
    assert!(
        pos_min > 0,
        "the conversation did not outgrow the window cache"
    );

    // A prompt that shares only the first few tokens: continuing there
    // needs positions the window layers dropped.
    let short = [("system", SYSTEM), ("user", "Here are my notes: none.")];
    let (got, _) = run_one(&worker, request(9, messages(&short), 8), Growth::Deny);
    assert!(got.stats.prompt_tokens < window);
    assert_eq!(got.stats.prompt_cached_tokens, 0, "{:?}", got.stats);

    // The reused third turn answers as a fresh worker does.
    let fresh = spawn_worker();
    load_pool(&fresh, GEMMA3, 4096, 1, None);
    let (want, _) = run_one(
        &fresh,
        request(3, as_prompt(&turns[..turns.len() - 1]), 16),
        Growth::Deny,
    );
    assert_eq!(want.stats.prompt_cached_tokens, 0);
    assert_eq!(answer, want.text);
}

/// Conversation A, then B on the worker's only sequence (A moves to the
/// RAM tier), then A's next turn: A comes back from the tier, prefills only
/// its new turn, and answers as a fresh worker does.
#[test]
fn a_conversation_moved_to_the_ram_tier_comes_back_with_the_same_answer() {
    for name in [SMOLLM2, GEMMA3] {
        let load = |worker: &Worker, tier: u64| {
            worker
                .load(LoadRequest {
                    path: model(name),
                    context: Some(2048),
                    kv_type: KvType::F16,
                    parallel: 1,
                    threads: TEST_THREADS,
                    gpu_layers: None,
                    pool: None,
                    pool_max: None,
                    ram_cache_bytes: tier,
                })
                .expect("loading the model")
        };
        let worker = spawn_worker();
        load(&worker, 256 << 20);
        let a1 = [
            ("system", SYSTEM),
            ("user", "What is the capital of France?"),
        ];
        let (first, _) = run_one(&worker, request(1, messages(&a1), 24), Growth::Deny);
        let b1 = [("user", "Name three colours of the rainbow.")];
        let (_, _) = run_one(&worker, request(2, messages(&b1), 24), Growth::Deny);
        let ws = worker_stats(&worker);
        assert_eq!(
            (ws.ram_cached_sequences, ws.cached_sequences),
            (1, 1),
            "{name}: {ws:?}"
        );
        assert!(ws.ram_cache_bytes > 0, "{name}: {ws:?}");

        let a2 = [
            a1[0],
            a1[1],
            ("assistant", first.text.as_str()),
            ("user", "And of Italy?"),
        ];
        let (second, _) = run_one(&worker, request(3, messages(&a2), 24), Growth::Deny);
        let s = &second.stats;
        eprintln!(
            "{name}: turn 2 of A: {} prompt tokens, {} from the RAM tier ({} bytes held before)",
            s.prompt_tokens, s.prompt_cached_tokens, ws.ram_cache_bytes
        );
        assert!(
            s.prompt_cached_tokens >= first.stats.prompt_tokens + first.stats.generated_tokens - 2,
            "{name}: {s:?}"
        );
        let ws = worker_stats(&worker);
        assert_eq!(ws.ram_restores_total, 1, "{name}: {ws:?}");
        // B went to the tier in its turn.
        assert_eq!(ws.ram_cached_sequences, 1, "{name}: {ws:?}");

        // Dropping the tier (memory pressure) forgets B.
        worker.send(&Request::DropTier).unwrap();
        match worker.recv().unwrap() {
            Event::Stats(after) => {
                assert_eq!((after.ram_cached_sequences, after.ram_cache_bytes), (0, 0))
            }
            other => panic!("expected stats, got {other:?}"),
        }

        let fresh = spawn_worker();
        load(&fresh, 0);
        let (expected, _) = run_one(&fresh, request(3, messages(&a2), 24), Growth::Deny);
        assert_eq!(expected.stats.prompt_cached_tokens, 0, "{name}");
        assert_eq!(second.text, expected.text, "{name}");
        assert_eq!(second.finish, expected.finish, "{name}");
    }
}

/// Memory pressure frees an idle worker's whole pool (`Resize` to 0
/// cells): its footprint falls, and the next request makes the pool again
/// and answers as before.
#[test]
fn a_freed_pool_gives_its_memory_back_and_the_next_request_answers_as_before() {
    for name in [SMOLLM2, GEMMA3] {
        let worker = spawn_worker();
        let info = load_pool(&worker, name, 2048, 2, None);
        let ask = |id| {
            request(
                id,
                messages(&[("user", "Name three colours of the rainbow.")]),
                16,
            )
        };
        let (before, _) = run_one(&worker, ask(1), Growth::Deny);
        let loaded = locara_platform::process_footprint(worker.pid()).unwrap();
        let (cells, previous, ..) = resize(&worker, 0);
        assert_eq!((cells, previous), (0, info.pool_cells), "{name}");
        let freed = locara_platform::process_footprint(worker.pid()).unwrap();
        eprintln!(
            "{name}: footprint loaded {} KiB, pool freed {} KiB ({:.1} %), mapped weights {} KiB",
            loaded.footprint >> 10,
            freed.footprint >> 10,
            100.0 * freed.footprint as f64 / loaded.footprint as f64,
            freed.mapped_weights >> 10
        );
        // The pool and the compute buffers (tens of MiB here) come back;
        // what stays is the process, the vocabulary and any weights
        // llama.cpp repacked into anonymous memory.
        assert!(
            freed.footprint + (16 << 20) < loaded.footprint,
            "{name}: {freed:?} vs {loaded:?}"
        );
        assert_eq!(worker_stats(&worker).pool_cells, 0, "{name}");
        // The next request: the pool comes back at its size first.
        worker.send(&Request::Generate(ask(2))).unwrap();
        match worker.recv().unwrap() {
            Event::Resized {
                cells,
                previous_cells: 0,
                ..
            } => assert_eq!(cells, info.pool_cells, "{name}"),
            other => panic!("{name}: expected the pool back first, got {other:?}"),
        }
        let (text, _, finish, _) = collect(&worker, 2);
        assert_eq!((text, Ok(finish)), (before.text, before.finish), "{name}");
    }
}
