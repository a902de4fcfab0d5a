//! The worker's sampler against the real model: structured output through
//! a grammar, the frequency and presence penalties, the logit bias, and
//! log-probabilities.

mod common;

use common::*;
use locara_engine::grammar::{json_object, json_schema, Json};
use locara_engine::protocol::*;
use locara_engine::Worker;
use std::time::Duration;

fn loaded() -> Worker {
    let worker = spawn_worker();
    worker
        .load(LoadRequest {
            context: Some(2048),
            ..LoadRequest::new(model(SMOLLM2), TEST_THREADS)
        })
        .expect("loading the model");
    worker
}

/// What one generation sent back.
#[derive(Debug)]
struct Answer {
    text: String,
    logprobs: Vec<TokenLogprobs>,
    end: Result<(FinishReason, GenerationStats), (ErrorKind, String)>,
}

fn run(worker: &Worker, id: u64, text: &str, sampling: Sampling, max_tokens: u32) -> Answer {
    worker
        .send(&Request::Generate(GenerateRequest {
            id,
            prompt: Prompt::Chat {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: text.into(),
                }],
            },
            sampling,
            max_tokens: Some(max_tokens),
            stop: vec![],
            n_keep: None,
            truncate: true,
            cache_prompt: false,
            speculative: true,
        }))
        .unwrap();
    let mut answer = Answer {
        text: String::new(),
        logprobs: Vec::new(),
        end: Err((ErrorKind::BadRequest, "no end".into())),
    };
    loop {
        match worker.recv_timeout(Duration::from_secs(180)).unwrap() {
            Some(Event::Token { id: i, text }) if i == id => answer.text.push_str(&text),
            Some(Event::Logprobs { id: i, tokens }) if i == id => answer.logprobs.extend(tokens),
            Some(Event::Done {
                id: i,
                finish,
                stats,
            }) if i == id => {
                answer.end = Ok((finish, stats));
                return answer;
            }
            Some(Event::Error {
                id: Some(i),
                kind,
                message,
            }) if i == id => {
                answer.end = Err((kind, message));
                return answer;
            }
            Some(_) => {}
            None => panic!("no event within 180 s"),
        }
    }
}

fn with_grammar(grammar: String) -> Sampling {
    Sampling {
        grammar: Some(grammar),
        ..Sampling::greedy()
    }
}

#[test]
fn a_schema_grammar_makes_output_that_parses_and_matches() {
    let worker = loaded();
    let schema: Json = serde_json::from_str(
        r#"{"type":"object","properties":{
            "name":{"type":"string","maxLength":24},
            "age":{"type":"integer"},
            "pets":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":3},
            "mood":{"enum":["happy","sad"]}},
          "required":["name","age","pets","mood"],"additionalProperties":false}"#,
    )
    .unwrap();
    let grammar = json_schema(&schema).unwrap();
    let a = run(
        &worker,
        1,
        "Describe a person called Ann, 31, who has a cat, as JSON.",
        with_grammar(grammar),
        200,
    );
    let (finish, _) = a.end.expect("the generation ends");
    assert_eq!(finish, FinishReason::Stop, "{}", a.text);
    let v: serde_json::Value = serde_json::from_str(&a.text).expect(&a.text);
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{v}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 24, "{v}");
    assert!(o["age"].is_i64() || o["age"].is_u64(), "{v}");
    let pets = o["pets"].as_array().unwrap();
    assert!(pets.len() <= 3 && pets.iter().all(|p| p.is_string()), "{v}");
    assert!(
        ["happy", "sad"].contains(&o["mood"].as_str().unwrap()),
        "{v}"
    );
    // The properties come in the schema's order.
    let at = |k: &str| a.text.find(&format!("\"{k}\"")).unwrap();
    assert!(at("name") < at("age") && at("age") < at("pets") && at("pets") < at("mood"));

    // json_object: any object, even where the model would answer in prose.
    let a = run(&worker, 2, "Say hello.", with_grammar(json_object()), 120);
    assert_eq!(a.end.unwrap().0, FinishReason::Stop, "{}", a.text);
    let v: serde_json::Value = serde_json::from_str(&a.text).expect(&a.text);
    assert!(v.is_object(), "{v}");
}

#[test]
fn a_grammar_cut_by_max_tokens_ends_as_length() {
    let worker = loaded();
    let a = run(
        &worker,
        1,
        "List ten fruits as JSON.",
        with_grammar(json_object()),
        3,
    );
    let (finish, stats) = a.end.unwrap();
    assert_eq!((finish, stats.generated_tokens), (FinishReason::Length, 3));
    assert!(a.text.starts_with('{'), "{}", a.text);
}

#[test]
fn penalties_change_greedy_output() {
    let worker = loaded();
    let prompt = "Write the word apple ten times, separated by spaces.";
    let plain = run(&worker, 1, prompt, Sampling::greedy(), 24);
    let again = run(&worker, 2, prompt, Sampling::greedy(), 24);
    assert_eq!(plain.text, again.text, "greedy is deterministic");
    for (id, frequency, presence) in [(3, 1.5, 0.0), (4, 0.0, 1.5)] {
        let penalised = run(
            &worker,
            id,
            prompt,
            Sampling {
                frequency_penalty: frequency,
                presence_penalty: presence,
                ..Sampling::greedy()
            },
            24,
        );
        penalised.end.as_ref().unwrap();
        assert_ne!(
            penalised.text, plain.text,
            "frequency {frequency}, presence {presence}"
        );
        // Penalised words repeat less.
        let count = |t: &str| t.matches("apple").count();
        assert!(
            count(&penalised.text) < count(&plain.text),
            "{:?} vs {:?}",
            penalised.text,
            plain.text
        );
    }
}

#[test]
fn logprobs_report_each_token_with_sane_alternatives() {
    let worker = loaded();
    let sampling = Sampling {
        logprobs: Some(3),
        ..Sampling::greedy()
    };
    let a = run(&worker, 1, "What is the capital of France?", sampling, 12);
    let (_, stats) = a.end.unwrap();
    // One entry per token but the end token, whose text is the answer.
    let n = a.logprobs.len() as u32;
    assert!(n == stats.generated_tokens || n + 1 == stats.generated_tokens);
    let joined: Vec<u8> = a
        .logprobs
        .iter()
        .flat_map(|t| t.chosen.bytes.clone())
        .collect();
    assert_eq!(String::from_utf8(joined).unwrap(), a.text);
    for t in &a.logprobs {
        assert_eq!(t.top.len(), 3);
        assert!(
            t.chosen.logprob <= 0.0 && t.chosen.logprob.is_finite(),
            "{t:?}"
        );
        assert!(
            t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "{t:?}"
        );
        // Greedy draws the most likely token.
        assert_eq!(t.top[0].token, t.chosen.token, "{t:?}");
        assert_eq!(t.top[0].logprob, t.chosen.logprob, "{t:?}");
        let mass: f32 = t.top.iter().map(|p| p.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{t:?}");
    }
}

#[test]
fn a_logit_bias_forces_a_token_and_one_outside_the_vocabulary_is_refused() {
    let worker = loaded();
    let sampling = |token| Sampling {
        logit_bias: vec![LogitBias { token, bias: 100.0 }],
        logprobs: Some(1),
        ..Sampling::greedy()
    };
    // Token 1000 (some word piece) is drawn though the model would not.
    let a = run(
        &worker,
        1,
        "What is the capital of France?",
        sampling(1000),
        2,
    );
    a.end.unwrap();
    let first = &a.logprobs[0];
    assert!(
        first.chosen.logprob < first.top[0].logprob,
        "the bias did not decide: {first:?}"
    );
    let b = run(&worker, 2, "Name a colour.", sampling(1000), 2);
    assert_eq!(b.logprobs[0].chosen.bytes, first.chosen.bytes);

    let bad = run(&worker, 3, "Hi", sampling(10_000_000), 2);
    let (kind, message) = bad.end.unwrap_err();
    assert_eq!(kind, ErrorKind::InvalidSampling);
    assert!(message.contains("10000000"), "{message}");
    let bad = run(&worker, 4, "Hi", with_grammar("root ::= (".into()), 2);
    assert_eq!(bad.end.unwrap_err().0, ErrorKind::InvalidSampling);
    // The worker goes on.
    run(&worker, 5, "Hi", Sampling::greedy(), 2).end.unwrap();
}
