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
        })
        .expect("loading the model")
}

fn generate(id: u64, prompt: Prompt, max_tokens: u32) -> Request {
    Request::Generate(GenerateRequest {
        id,
        prompt,
        sampling: Sampling::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
    })
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
