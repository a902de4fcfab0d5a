//! Tool calling over the real router and a fake engine that answers with
//! a scripted call: the request's checks, what reaches the worker, and the
//! answers' shapes, whole and streamed, in OpenAI's and Ollama's forms.

use super::*;

/// A call to `get_weather` as a model writes it, cut where tokens might
/// fall (inside the tag, the name, a string holding a brace).
const CALL: &[&str] = &[
    "<tool",
    "_call>\n{\"name\": \"get_",
    "weather\", \"arguments\": {\"city\": \"Par",
    "is {x}\", \"days\": [1, 2]}",
    "}\n</tool_call>",
];

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "array", "items": {"type": "integer"}},
        }, "required": ["city"]},
    }}])
}

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = body_text(response).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// The `data:` payloads of an SSE body, `[DONE]` left out.
async fn sse_chunks(response: Response) -> Vec<Value> {
    body_text(response)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

#[tokio::test]
async fn a_call_comes_back_as_openais_tool_calls_and_the_worker_gets_the_grammar() {
    let d = Daemon::new(FakeEngine::scripted(CALL), true, RawServeConfig::default());
    let (status, body) = json_of(
        d.send(post(
            "/v1/chat/completions",
            None,
            chat(
                "m:1",
                json!({"tools": weather_tools(), "tool_choice": "required"}),
            ),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris {x}", "days": [1, 2]}));

    // The worker got the tools in the system message and the call grammar.
    let g = d.engine.requests().pop().unwrap();
    let Prompt::Chat { messages } = &g.prompt else {
        panic!("{:?}", g.prompt)
    };
    assert_eq!(messages[0].role, "system");
    assert!(
        messages[0].content.contains("\"name\":\"get_weather\""),
        "{}",
        messages[0].content
    );
    let grammar = g.sampling.grammar.unwrap();
    assert!(
        grammar.starts_with("root ::= call ( ws call )"),
        "{grammar}"
    );
    assert!(!grammar.contains("| text"), "{grammar}");
}

#[tokio::test]
async fn a_streamed_call_comes_as_openais_deltas() {
    let d = Daemon::new(FakeEngine::scripted(CALL), true, RawServeConfig::default());
    let response = d
        .send(post(
            "/v1/chat/completions",
            None,
            chat(
                "m:1",
                json!({"tools": weather_tools(), "stream": true,
                               "stream_options": {"include_usage": true}}),
            ),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let chunks = sse_chunks(response).await;
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|c| &c["delta"]))
        .collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    // No text: the held-back tag turned out to be a call.
    assert!(
        deltas
            .iter()
            .all(|d| d.get("content").is_none_or(|c| c == "")),
        "{deltas:?}"
    );
    let calls: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d.get("tool_calls"))
        .map(|c| &c[0])
        .collect();
    let first = calls[0];
    assert_eq!(first["index"], 0);
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(first["type"], "function");
    assert_eq!(
        first["function"],
        json!({"name": "get_weather", "arguments": ""})
    );
    let mut arguments = String::new();
    for c in &calls[1..] {
        assert_eq!(c["index"], 0);
        assert!(
            c.get("id").is_none() && c["function"].get("name").is_none(),
            "{c}"
        );
        arguments.push_str(c["function"]["arguments"].as_str().unwrap());
    }
    assert!(calls.len() > 2, "arguments come in fragments: {calls:?}");
    assert_eq!(arguments, "{\"city\": \"Paris {x}\", \"days\": [1, 2]}");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    assert!(chunks.last().unwrap()["usage"].is_object());
}

#[tokio::test]
async fn auto_text_is_content_and_stop() {
    let d = Daemon::new(
        FakeEngine::scripted(&["<t", "able> is", " HTML"]),
        true,
        RawServeConfig::default(),
    );
    let (status, body) = json_of(
        d.send(post(
            "/v1/chat/completions",
            None,
            chat("m:1", json!({"tools": weather_tools()})),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], "<table> is HTML");
    assert!(
        body["choices"][0]["message"].get("tool_calls").is_none(),
        "{body}"
    );
    let grammar = d.engine.requests().pop().unwrap().sampling.grammar.unwrap();
    assert!(grammar.contains("| text"), "{grammar}");
}

#[tokio::test]
async fn tool_refusals_are_400s_naming_the_field_before_the_worker() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters":
                {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}]}),
            "tools[0].function.parameters.properties.n",
        ),
        (json!({"tools": weather_tools(), "stop": ["x"]}), "stop"),
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice.function.name",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
    ] {
        let (status, body) = json_of(
            d.send(post(
                "/v1/chat/completions",
                None,
                chat("m:1", extra.clone()),
            ))
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    assert!(d.engine.requests().is_empty());
}

#[tokio::test]
async fn a_tool_result_goes_back_into_the_conversation() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let (status, body) = json_of(
        d.send(post(
            "/v1/chat/completions",
            None,
            json!({"model": "m:1", "tools": weather_tools(), "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
            ]}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let g = d.engine.requests().pop().unwrap();
    let Prompt::Chat { messages } = &g.prompt else {
        panic!("{:?}", g.prompt)
    };
    let turns: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .skip(1)
        .collect();
    assert_eq!(
        turns,
        [
            ("user", "Weather in Paris?"),
            (
                "assistant",
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
            ),
            (
                "user",
                "<tool_response>\n{\"name\": \"get_weather\", \"content\": \"21 C\"}\n</tool_response>"
            ),
        ]
    );
}

#[tokio::test]
async fn ollama_gets_its_call_shape_whole_and_streamed() {
    let d = Daemon::new(FakeEngine::scripted(CALL), true, RawServeConfig::default());
    let body = json!({"model": "m:1", "messages": [{"role": "user", "content": "Weather?"}],
                      "tools": weather_tools(), "stream": false});
    let (status, whole) = json_of(d.send(post("/api/chat", None, body.clone())).await).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["done"], true);
    assert_eq!(whole["done_reason"], "stop");
    assert_eq!(whole["message"]["content"], "");
    assert_eq!(
        whole["message"]["tool_calls"],
        json!([{"function": {"index": 0, "name": "get_weather",
                             "arguments": {"city": "Paris {x}", "days": [1, 2]}}}])
    );
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let response = d.send(post("/api/chat", None, streamed)).await;
    let lines: Vec<Value> = body_text(response)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One line with the whole call, then the last line.
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["done"], false);
    assert_eq!(
        lines[0]["message"]["tool_calls"],
        whole["message"]["tool_calls"]
    );
    assert_eq!(lines[1]["done"], true);
}

#[tokio::test]
async fn ollama_format_reaches_the_worker_as_a_grammar() {
    let d = Daemon::new(FakeEngine::new(2), true, RawServeConfig::default());
    let (status, body) = json_of(
        d.send(post(
            "/api/generate",
            None,
            json!({"model": "m:1", "prompt": "Ann?", "stream": false,
                   "format": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grammar = d.engine.requests().pop().unwrap().sampling.grammar.unwrap();
    assert!(
        grammar.contains(r#""\"name\"" ws ":" ws string ws"#),
        "{grammar}"
    );
    let (status, body) = json_of(
        d.send(post(
            "/api/chat",
            None,
            json!({"model": "m:1", "messages": [{"role": "user", "content": "x"}], "format": {"type": "string", "pattern": "a"}}),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("format uses the JSON Schema keyword \"pattern\""),
        "{body}"
    );
}
