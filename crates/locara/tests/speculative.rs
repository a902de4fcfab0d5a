//! Speculative decoding in the engine worker, on the real test models:
//! drafted tokens change how many decodes an answer takes, never the
//! answer. Each test runs the same greedy requests with drafting and
//! without and compares everything the parent sees.

mod common;

use common::*;
use locara_engine::protocol::*;
use locara_engine::Worker;
use std::collections::HashMap;
use std::time::Duration;

/// A paragraph to copy: an answer that repeats it is what prompt lookup
/// drafts well.
const PARAGRAPH: &str = "The river rises in the hills above the town, runs past the old mill \
and the school, and reaches the sea twenty miles to the south. In spring the water is high \
and brown; in late summer it is low and clear, and children wade across it at the ford \
below the bridge.";

fn copy_prompt() -> Prompt {
    Prompt::Chat {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: format!(
                "Repeat this paragraph exactly, word for word, and add nothing:\n\n{PARAGRAPH}"
            ),
        }],
    }
}

fn story_prompt() -> Prompt {
    Prompt::Chat {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Write a short story about a lighthouse keeper and a storm.".into(),
        }],
    }
}

fn load(worker: &Worker, name: &str, parallel: u32) -> LoadedInfo {
    worker
        .load(LoadRequest {
            context: Some(2048),
            parallel,
            ..LoadRequest::new(model(name), TEST_THREADS)
        })
        .expect("loading the model")
}

fn request(id: u64, prompt: Prompt, max_tokens: u32, speculative: bool) -> GenerateRequest {
    GenerateRequest {
        id,
        prompt,
        sampling: Sampling::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        n_keep: None,
        truncate: true,
        // Each answer from a fresh prefill, so the two runs start alike.
        cache_prompt: false,
        speculative,
    }
}

/// Everything the parent saw of one generation.
#[derive(Debug, Clone, Default)]
struct Answer {
    /// The text of each `Token` event, in order.
    pieces: Vec<String>,
    finish: Option<FinishReason>,
    stats: GenerationStats,
}

impl Answer {
    fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// Sends `requests` at once and collects each to its end.
fn run(worker: &Worker, requests: Vec<GenerateRequest>) -> HashMap<u64, Answer> {
    let mut answers: HashMap<u64, Answer> =
        requests.iter().map(|r| (r.id, Answer::default())).collect();
    for r in requests {
        worker.send(&Request::Generate(r)).unwrap();
    }
    let mut open = answers.len();
    while open > 0 {
        match worker.recv_timeout(Duration::from_secs(180)).unwrap() {
            Some(Event::Token { id, text }) => answers.get_mut(&id).unwrap().pieces.push(text),
            Some(Event::Done { id, finish, stats }) => {
                let a = answers.get_mut(&id).unwrap();
                a.finish = Some(finish);
                a.stats = stats;
                open -= 1;
            }
            Some(Event::Error { message, .. }) => panic!("worker error: {message}"),
            Some(_) => {}
            None => panic!("no event within 180 s"),
        }
    }
    answers
}

fn one(worker: &Worker, req: GenerateRequest) -> Answer {
    let id = req.id;
    run(worker, vec![req]).remove(&id).unwrap()
}

/// The tokens each sequence of the worker holds, by sequence; checks that
/// llama.cpp's K/V holds exactly as many positions.
fn held_tokens(worker: &Worker) -> Vec<Vec<i32>> {
    worker.send(&Request::Sequences).unwrap();
    loop {
        match worker.recv_timeout(Duration::from_secs(30)).unwrap() {
            Some(Event::Sequences { sequences }) => {
                for s in &sequences {
                    assert_eq!(
                        s.pos_max,
                        s.tokens.len() as i32 - 1,
                        "sequence {}: the K/V's last position is its last token's",
                        s.seq
                    );
                }
                return sequences.into_iter().map(|s| s.tokens).collect();
            }
            Some(_) => {}
            None => panic!("no Sequences answer"),
        }
    }
}

/// The same answer event by event, the same end, the same token count.
fn assert_same(with: &Answer, without: &Answer, what: &str) {
    assert_eq!(with.text(), without.text(), "{what}: text");
    assert_eq!(with.finish, without.finish, "{what}: finish");
    assert_eq!(
        with.stats.generated_tokens, without.stats.generated_tokens,
        "{what}: generated tokens"
    );
    // Stop-string hold-back emits text at the same tokens either way.
    assert_eq!(with.pieces, without.pieces, "{what}: token events");
}

/// Greedy answers with and without drafting, on one model: a copy of
/// `copy_tokens` tokens (which drafts well) and a story (which drafts
/// little), then the copy cut short by `max_tokens` and by a stop string
/// inside the copied text.
fn greedy_equality(name: &str, copy_tokens: u32) {
    let worker = spawn_worker();
    load(&worker, name, 1);
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    for (what, prompt, max_tokens) in [
        ("copy", copy_prompt(), copy_tokens),
        ("story", story_prompt(), 96),
        ("copy to max_tokens", copy_prompt(), 13),
    ] {
        let without = one(&worker, request(next(), prompt.clone(), max_tokens, false));
        let cells_without = held_tokens(&worker);
        let with = one(&worker, request(next(), prompt, max_tokens, true));
        let cells_with = held_tokens(&worker);
        assert_same(&with, &without, &format!("{name} {what}"));
        // Rejected drafts left no cells behind: the sequence holds what it
        // holds after decoding one token at a time.
        assert_eq!(cells_with, cells_without, "{name} {what}: cells held");
        assert_eq!(without.stats.draft_tokens, 0);
        assert_eq!(
            without.stats.decode_steps, without.stats.generated_tokens,
            "{name} {what}: one token per decode without drafting"
        );
        if what == "copy" {
            let s = &with.stats;
            assert!(
                s.draft_accepted_tokens > 0 && s.decode_steps < s.generated_tokens,
                "{name}: a copied paragraph drafts and saves decodes: {s:?} ({:?})",
                with.text()
            );
            assert!(s.tokens_per_step().unwrap() > 1.0);
            assert!(s.acceptance_rate().unwrap() > 0.0);
        }
    }

    // A stop string inside the copied text: the answer ends before it,
    // whichever token of a draft it falls in.
    let copy = one(&worker, request(next(), copy_prompt(), 120, false)).text();
    let stop = "the school";
    if copy.contains(stop) {
        let mut without = request(next(), copy_prompt(), 120, false);
        without.stop = vec![stop.into()];
        let mut with = request(next(), copy_prompt(), 120, true);
        with.stop = vec![stop.into()];
        let without = one(&worker, without);
        let with = one(&worker, with);
        assert_same(&with, &without, &format!("{name} stop string"));
        assert_eq!(with.finish, Some(FinishReason::Stop));
        assert!(!with.text().contains(stop));
    } else {
        panic!("{name} did not copy the paragraph ({copy:?}): the stop-string case needs it");
    }
}

#[test]
fn smollm2_greedy_answers_are_the_same_with_and_without_drafting() {
    // Past the paragraph too: SmolLM2's kernels (Q4_1) compute a row the
    // same in a batch of any width, so even near-ties come out the same.
    greedy_equality(SMOLLM2, 120);
}

#[test]
fn gemma3_greedy_answers_are_the_same_with_and_without_drafting() {
    // Gemma 3's Q4_K weights are repacked for AVX2, AVX-512 and NEON, and
    // llama.cpp multiplies four batch rows at a time with a kernel that
    // rounds differently from the one-row kernel: after this model copies
    // the paragraph (58 tokens) it writes junk whose top two tokens are
    // 0.06 to 0.2 nats apart, where a wider verified draft picks the other
    // one. The worker keeps such a model's drafts to two a step (three
    // rows, all through the one-row kernel: `draft::EXACT_BATCH_DRAFTS`),
    // so the answers stay the same past the paragraph too.
    greedy_equality(GEMMA3, 120);
}

/// Two generations in one batch, one drafting a copy and one drafting
/// little: each answers as it does alone without drafting, so neither
/// sees the other's drafted (and removed) cells in the shared pool.
#[test]
fn drafts_of_one_sequence_never_disturb_another_in_the_batch() {
    // Gemma 3's copy is held to the paragraph: see the greedy test's note.
    for (name, copy_tokens) in [(SMOLLM2, 100), (GEMMA3, 58)] {
        let worker = spawn_worker();
        load(&worker, name, 2);
        let copy_alone = one(&worker, request(1, copy_prompt(), copy_tokens, false));
        let story_alone = one(&worker, request(2, story_prompt(), 100, false));
        let both = run(
            &worker,
            vec![
                request(3, copy_prompt(), copy_tokens, true),
                request(4, story_prompt(), 100, true),
            ],
        );
        assert_same(
            &both[&3],
            &copy_alone,
            &format!("{name} copy beside a story"),
        );
        assert_same(
            &both[&4],
            &story_alone,
            &format!("{name} story beside a copy"),
        );
        assert!(
            both[&3].stats.draft_accepted_tokens > 0,
            "{name}: the copy drafted beside the story: {:?}",
            both[&3].stats
        );
    }
}

/// A sampled (non-greedy) request and one with a penalty never draft: their
/// picks cannot be checked exactly against a draft.
#[test]
fn only_plain_greedy_generations_draft() {
    let worker = spawn_worker();
    load(&worker, SMOLLM2, 1);
    let mut sampled = request(1, copy_prompt(), 40, true);
    sampled.sampling = Sampling {
        seed: Some(7),
        ..Sampling::default()
    };
    let mut penalised = request(2, copy_prompt(), 40, true);
    penalised.sampling.repeat_penalty = 1.1;
    for req in [sampled, penalised] {
        let a = one(&worker, req);
        assert_eq!(a.stats.draft_tokens, 0, "{:?}", a.stats);
        assert_eq!(a.stats.decode_steps, a.stats.generated_tokens);
    }
}

fn load_with_draft(worker: &Worker, name: &str, draft: &str, parallel: u32) -> LoadedInfo {
    worker
        .load(LoadRequest {
            context: Some(2048),
            parallel,
            draft: Some(model(draft)),
            ..LoadRequest::new(model(name), TEST_THREADS)
        })
        .expect("loading the model with its draft")
}

/// A draft-model pair (SmolLM2 drafting for itself: the mechanics, not the
/// speed): the same greedy answers as without drafting, where prompt
/// lookup finds little to draft (a story) as well as in a copy; the
/// acceptance rate is reported; a second generation at the same time
/// drafts by prompt lookup and answers as it does alone.
#[test]
fn a_draft_model_drafts_and_the_answers_stay_the_same() {
    let worker = spawn_worker();
    let info = load_with_draft(&worker, SMOLLM2, SMOLLM2, 2);
    let draft = info.draft.expect("the draft model is reported");
    assert!(draft.weights_bytes > 0 && draft.parameters > 0, "{draft:?}");
    assert!(
        draft.cells >= info.context,
        "{draft:?} for context {}",
        info.context
    );

    let mut id = 0;
    for (what, prompt, max_tokens) in [("story", story_prompt(), 96), ("copy", copy_prompt(), 120)]
    {
        id += 2;
        let without = one(&worker, request(id, prompt.clone(), max_tokens, false));
        let with = one(&worker, request(id + 1, prompt, max_tokens, true));
        assert_same(&with, &without, &format!("draft pair {what}"));
        let s = &with.stats;
        // A model agrees with itself wherever it is sure of its next
        // token; where it is not, it stops drafting (MIN_CONFIDENCE).
        assert!(
            s.acceptance_rate().unwrap() > 0.8,
            "draft pair {what}: acceptance {:?} ({s:?})",
            s.acceptance_rate()
        );
        // It drafts wherever it is sure (in this story a third of the
        // tokens), where prompt lookup finds almost nothing to copy.
        assert!(
            s.draft_tokens * 4 > s.generated_tokens,
            "draft pair {what}: the draft model proposes a good share: {s:?}"
        );
        assert!(s.decode_steps < s.generated_tokens, "{what}: {s:?}");
    }

    // Two at once: the draft model serves one, prompt lookup the other;
    // each answers as alone.
    let story_alone = one(&worker, request(10, story_prompt(), 80, false));
    let copy_alone = one(&worker, request(11, copy_prompt(), 100, false));
    let both = run(
        &worker,
        vec![
            request(12, story_prompt(), 80, true),
            request(13, copy_prompt(), 100, true),
        ],
    );
    assert_same(
        &both[&12],
        &story_alone,
        "story beside a copy, with a draft model",
    );
    assert_same(
        &both[&13],
        &copy_alone,
        "copy beside a story, with a draft model",
    );
    assert!(both[&12].stats.draft_accepted_tokens > 0 && both[&13].stats.draft_accepted_tokens > 0);

    let stats = worker_stats(&worker);
    assert_eq!(stats.draft_cells, draft.cells, "{stats:?}");
}

/// A draft whose vocabulary differs from the model's is refused before
/// llama.cpp loads it, naming the difference.
#[test]
fn a_draft_of_another_vocabulary_is_refused_at_load() {
    let worker = spawn_worker();
    let err = worker
        .load(LoadRequest {
            context: Some(2048),
            draft: Some(model(GEMMA3)),
            ..LoadRequest::new(model(SMOLLM2), TEST_THREADS)
        })
        .expect_err("Gemma 3 cannot draft for SmolLM2");
    let message = err.to_string();
    assert!(message.contains("cannot draft for this model"), "{message}");
    assert!(message.contains("tokenizer"), "{message}");
}

fn worker_stats(worker: &Worker) -> WorkerStats {
    worker.send(&Request::Stats).unwrap();
    loop {
        match worker.recv_timeout(Duration::from_secs(30)).unwrap() {
            Some(Event::Stats(s)) => return s,
            Some(_) => {}
            None => panic!("no Stats answer"),
        }
    }
}
