//! `/v1/embeddings` and Ollama's routes over the real router and the fake
//! engine: their shapes, their refusals, and that they keep the daemon's
//! token and model rules.

use super::*;
use crate::testing::{fake_embedding, FAKE_EMBEDDING, TOO_LONG};
use locara_engine::protocol::Request as WorkerRequest;

/// The lines of an NDJSON body, parsed.
async fn ndjson_lines(response: Response) -> Vec<Value> {
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/x-ndjson"
    );
    body_text(response)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = body_text(response).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[tokio::test]
async fn embeddings_come_in_openais_shape_float_or_base64() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let (status, body) = json_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": ["alpha", "beta gamma"]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "m:1");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let (want, tokens_a) = fake_embedding(&EmbedInput::Text("alpha".into()));
    let (_, tokens_b) = fake_embedding(&EmbedInput::Text("beta gamma".into()));
    assert_eq!(data[0]["index"], 0);
    assert_eq!(data[1]["index"], 1);
    let got: Vec<f32> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.len(), FAKE_EMBEDDING as usize);
    assert_eq!(body["usage"]["prompt_tokens"], tokens_a + tokens_b);
    assert_eq!(body["usage"]["total_tokens"], tokens_a + tokens_b);

    // base64: the same floats, little-endian.
    let (_, b64) = json_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": "alpha", "encoding_format": "base64",
                   "dimensions": FAKE_EMBEDDING}),
        ))
        .await,
    )
    .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, want);

    // Token arrays reach the worker as token ids.
    let (status, _) = json_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": [[1, 2], [3]]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let asked = d.engine.worker(0).requests();
    assert!(asked.iter().any(|r| matches!(r, WorkerRequest::Embed(e)
        if e.inputs == vec![EmbedInput::Tokens(vec![1, 2]), EmbedInput::Tokens(vec![3])])));
}

#[tokio::test]
async fn embedding_refusals_name_the_field() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let (status, _, e) = error_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": "x", "dimensions": 8}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "dimensions");
    assert!(e["message"].as_str().unwrap().contains("64 values"), "{e}");
    // Too long for the worker: a 400, not a 500.
    let (status, _, e) = error_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": ["ok", TOO_LONG]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded");
    let (status, _, e) = error_of(
        d.send(post(
            "/v1/embeddings",
            None,
            json!({"model": "m:1", "input": [""]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "input[0]");
}

#[tokio::test]
async fn embeddings_keep_the_token_and_model_rules() {
    let d = Daemon::new(FakeEngine::new(2), false, RawServeConfig::default());
    let app = d.install(&manifest("com.example.search", ""));
    let body = json!({"model": "n:1", "input": "x"});
    let (status, _, _) = error_of(d.send(post("/v1/embeddings", None, body.clone())).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, e) = error_of(
        d.send(post("/v1/embeddings", Some(app.as_str()), body))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "model_not_declared");
    let ok = d
        .send(post(
            "/v1/embeddings",
            Some(app.as_str()),
            json!({"model": "m:1", "input": "x"}),
        ))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    // Ollama's routes take the same tokens.
    let (status, body) = json_of(d.send(get("/api/tags", None)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = json_of(d.send(get("/api/tags", Some(app.as_str()))).await).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["m:1"], "an app sees the models it declares");
    // Pull and delete are the admin's.
    let (status, _) = json_of(
        d.send(post(
            "/api/pull",
            Some(app.as_str()),
            json!({"model": "m:1"}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ollama_chat_streams_ndjson_by_default_and_answers_whole_when_asked() {
    let d = Daemon::new(FakeEngine::new(3), true, RawServeConfig::default());
    let lines = ndjson_lines(
        d.send(post(
            "/api/chat",
            None,
            json!({"model": "m:1", "messages": [{"role": "user", "content": "hi"}],
                   "options": {"temperature": 0, "num_predict": 3, "seed": 7}}),
        ))
        .await,
    )
    .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, l) in lines[..3].iter().enumerate() {
        assert_eq!(l["done"], false);
        assert_eq!(l["model"], "m:1");
        assert_eq!(l["message"]["role"], "assistant");
        assert_eq!(l["message"]["content"], format!("t{i} "));
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let last = &lines[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 3);
    assert_eq!(last["prompt_eval_count"], 1);
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[k].is_u64(), "{k}: {last}");
    }
    // The options reached the worker as ours.
    let g = d.engine.requests().pop().unwrap();
    assert_eq!(g.max_tokens, Some(3));
    assert_eq!((g.sampling.temperature, g.sampling.seed), (0.0, Some(7)));

    let (status, whole) = json_of(
        d.send(post(
            "/api/generate",
            None,
            json!({"model": "m:1", "prompt": "hi", "stream": false, "raw": true}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["response"], "t0 t1 t2 ");
    assert_eq!(whole["done"], true);
    assert!(matches!(
        d.engine.requests().pop().unwrap().prompt,
        Prompt::Raw { .. }
    ));
}

#[tokio::test]
async fn ollama_refusals_are_its_error_shape_naming_the_option() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    for (options, param) in [
        (json!({"use_mlock": true}), "options.use_mlock"),
        (json!({"use_mmap": false}), "options.use_mmap"),
        (json!({"num_thread": 8}), "options.num_thread"),
    ] {
        let (status, body) = json_of(
            d.send(post(
                "/api/generate",
                None,
                json!({"model": "m:1", "prompt": "hi", "options": options}),
            ))
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(param), "{message}");
    }
    let (status, body) =
        json_of(d.send(post("/api/chat", None, json!({"model": "nope:1", "messages": [{"role": "user", "content": "x"}], "stream": false}))).await)
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope:1"), "{body}");
    // Nothing reached a worker.
    assert_eq!(d.engine.spawned(), 0);
}

#[tokio::test]
async fn ollama_embed_tags_ps_show_version_and_delete() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    // `m` (no tag) is the one stored `m:*`.
    let (status, body) = json_of(
        d.send(post(
            "/api/embed",
            None,
            json!({"model": "m", "input": ["a", "b"]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "m:1");
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 2);
    assert!(body["prompt_eval_count"].as_u64().unwrap() > 0);

    let (_, tags) = json_of(d.send(get("/api/tags", None)).await).await;
    let m = &tags["models"][0];
    assert_eq!(m["name"], "m:1");
    assert_eq!(m["details"]["format"], "gguf");
    assert!(m["digest"].as_str().unwrap().len() == 64);

    let (_, ps) = json_of(d.send(get("/api/ps", None)).await).await;
    assert_eq!(ps["models"][0]["name"], "m:1", "{ps}");
    assert!(ps["models"][0]["size"].as_u64().unwrap() > 0);

    let (status, show) = json_of(
        d.send(post("/api/show", None, json!({"model": "m:1"})))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{show}");
    assert!(
        show["model_info"]["general.architecture"].is_string(),
        "{show}"
    );
    assert!(show["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("embedding")));

    let (_, v) = json_of(d.send(get("/api/version", None)).await).await;
    assert!(v["version"].is_string());

    // Pull of a name the catalog lacks: a clean 404.
    let (status, body) = json_of(
        d.send(post(
            "/api/pull",
            None,
            json!({"model": "nope:1", "stream": false}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("catalog"),
        "{body}"
    );

    let del = d
        .send(request(
            Method::DELETE,
            "/api/delete",
            None,
            Some(json!({"model": "m:1"})),
        ))
        .await;
    assert_eq!(del.status(), StatusCode::OK);
    let (status, _) = json_of(
        d.send(request(
            Method::DELETE,
            "/api/delete",
            None,
            Some(json!({"model": "m:1"})),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, tags) = json_of(d.send(get("/api/tags", None)).await).await;
    assert_eq!(tags["models"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn ollama_load_without_a_prompt_and_unload_with_keep_alive_zero() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let (status, body) = json_of(
        d.send(post("/api/generate", None, json!({"model": "m:1"})))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["done_reason"], "load");
    assert_eq!(d.engine.spawned(), 1);
    let (_, body) = json_of(
        d.send(post(
            "/api/chat",
            None,
            json!({"model": "m:1", "messages": [], "keep_alive": 0}),
        ))
        .await,
    )
    .await;
    assert_eq!(body["done_reason"], "unload", "{body}");
    // The worker is stopped on a blocking thread: poll with a deadline.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while d.engine.live() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker still runs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
