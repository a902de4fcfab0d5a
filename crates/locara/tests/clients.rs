//! The official `ollama` and `openai` Python clients against the real
//! binary and a real model: Ollama's routes and OpenAI's embeddings. The
//! clients come from the virtualenv scripts/test.sh makes
//! (`LOCARA_TEST_PYTHON`).

mod common;

use common::daemon::Daemon;
use common::{python_script, GEMMA3, SMOLLM2};

/// chat (streamed and whole), generate, embed, tags, ps, show and pull:
/// a model already stored pulls at once; an unknown name is a 404; a
/// catalog model whose file is missing fails cleanly, with an error line
/// naming it and nothing left in the store.
#[test]
fn the_ollama_python_client_chats_embeds_lists_shows_and_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("models.toml");
    let builtin = include_str!("../../../catalog/models.toml");
    let missing = dir.path().join("missing.gguf");
    std::fs::write(
        &catalog,
        format!(
            "{builtin}\n[[model]]\nname = \"missing:1\"\nsha256 = \"{}\"\n\n[[model.parts]]\npath = \"{}\"\n",
            "0".repeat(64),
            missing.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with_env(
        &["--context", "2048", "--parallel", "1"],
        &[("LOCARA_CATALOG", &catalog)],
    );
    let stdout = python_script(
        "ollama_client.py",
        &[&d.url, SMOLLM2, &d.token, "missing:1"],
    );
    for line in [
        "chat stream ok",
        "chat whole ok",
        "generate ok",
        "embed ok",
        "tags ok",
        "ps ok",
        "show ok",
        "pull ok",
        "pull failure ok",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
}

/// A batch through the `openai` client (base64, its default), floats, and
/// `dimensions` refused unless it is the model's width; with both test
/// models (Gemma 3: sliding-window layers and a 262k vocabulary).
#[test]
fn the_openai_python_client_embeds_a_batch() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    for model in [SMOLLM2, GEMMA3] {
        let stdout = python_script(
            "openai_embeddings.py",
            &[&format!("{}/v1", d.url), model, &d.token],
        );
        assert!(stdout.contains("embeddings ok"), "{model}: {stdout}");
    }
}

/// Tool calling through the `openai` client: a forced call whose arguments
/// validate (jsonschema) against the function's schema, a required call
/// streamed as deltas, a round trip with the tool's result, auto, and a
/// 400 for a keyword the grammar cannot enforce.
#[test]
fn the_openai_python_client_calls_tools_and_sends_their_results_back() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let stdout = python_script(
        "openai_tools.py",
        &[&format!("{}/v1", d.url), SMOLLM2, &d.token],
    );
    for part in [
        "forced call ok",
        "streamed call ok",
        "round trip ok",
        "auto ok",
        "refusal ok",
    ] {
        assert!(stdout.contains(part), "{part} missing from:\n{stdout}");
    }
}

/// Ollama's `format` (a schema, validated; "json") and `tools` (the
/// model's choice, a call and its result in the history) through the
/// `ollama` client.
#[test]
fn the_ollama_python_client_gets_structured_output_and_tools() {
    let d = Daemon::start(&["--context", "2048", "--parallel", "1"]);
    let stdout = python_script("ollama_tools.py", &[&d.url, SMOLLM2, &d.token]);
    for part in [
        "format schema ok",
        "format json ok",
        "tools ok",
        "round trip ok",
    ] {
        assert!(stdout.contains(part), "{part} missing from:\n{stdout}");
    }
}
