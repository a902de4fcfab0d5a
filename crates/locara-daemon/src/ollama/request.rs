//! Ollama's request bodies, checked and turned into the daemon's own.
//!
//! A chat or generate body becomes the OpenAI-shaped body of the daemon's
//! own parser ([`openai::ChatRequest::from_json`]), so both APIs share one
//! set of checks and defaults; errors are then renamed to the field the
//! client sent (`options.num_predict`, not `max_tokens`).
//!
//! `options`: `num_ctx` (the context), `num_predict` (-1 and -2: no limit),
//! `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `stop`,
//! `repeat_penalty`, `repeat_last_n`, `frequency_penalty` and
//! `presence_penalty` are mapped. Options that would undo the runtime's
//! memory and thread policy (`use_mmap: false`, `use_mlock: true`,
//! `num_thread`, `num_gpu`, `numa`) are refused by name, as manifests
//! refuse them; sampling options Locara does not have (`typical_p`,
//! `mirostat`, `tfs_z`, `num_keep`, `penalize_newline`) are refused when set
//! to anything but their neutral value. Other options are ignored, as
//! Ollama ignores options it does not know.
//!
//! `format` (`"json"` or a JSON Schema) becomes `response_format`
//! (`json_object`, or `json_schema` with the schema in the body's key
//! order); `tools` on `/api/chat` are OpenAI's shape already and take the
//! OpenAI path with `tool_choice: "auto"` (Ollama has no other choice);
//! assistant messages' `tool_calls` (arguments as objects) and `tool`
//! results (with `tool_name`) go back into the conversation as there.

use crate::openai::{
    self, as_bool, as_integer, as_object, as_str, describe, field, no_nul, parse_body,
    parse_keep_alive, parse_model, refuse_if_set, ApiError, GenerationParams, KeepAlive, Ordered,
    OrderedTool,
};
use locara_core::manifest::forbidden_key_reason;
use locara_engine::grammar::Json;
use locara_engine::protocol::{ChatMessage, EmbedInput, Prompt};
use serde_json::{Map, Value};

/// Ollama's `options` names and the daemon's names for them.
const OPTION_NAMES: &[(&str, &str)] = &[
    ("num_ctx", "context"),
    ("num_predict", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("seed", "seed"),
    ("stop", "stop"),
    ("repeat_penalty", "repeat_penalty"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
];

/// Sampling options Locara does not have, with the value that turns each
/// off (what a client that does not use it sends, if anything).
const NEUTRAL_OPTIONS: &[(&str, f64)] = &[
    ("typical_p", 1.0),
    ("tfs_z", 1.0),
    ("mirostat", 0.0),
    ("mirostat_tau", 5.0),
    ("mirostat_eta", 0.1),
];

/// A checked `/api/chat` or `/api/generate` body.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateBody {
    pub model: String,
    /// `None`: no messages (chat) or an empty prompt (generate): Ollama's
    /// way to load (or, with `keep_alive: 0`, unload) a model.
    pub prompt: Option<Prompt>,
    pub params: GenerationParams,
    /// Ollama's `stream`, which defaults to true.
    pub stream: bool,
}

/// A checked `/api/embed` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedBody {
    pub model: String,
    pub inputs: Vec<EmbedInput>,
    pub keep_alive: Option<KeepAlive>,
    pub dimensions: Option<u32>,
}

/// The model a body names: `model`, or the older `name`.
pub fn model_of(obj: &Map<String, Value>) -> Result<String, ApiError> {
    if field(obj, "model").is_none() {
        if let Some(v) = field(obj, "name") {
            let name = as_str("name", v)?.trim();
            if !name.is_empty() {
                return Ok(name.to_owned());
            }
        }
    }
    parse_model(obj)
}

/// `/api/chat`.
pub fn parse_chat(body: &[u8]) -> Result<GenerateBody, ApiError> {
    let v = parse_body(body)?;
    let obj = as_object(&v)?;
    let mut openai_body = common(obj)?;
    if let Some(tools) = field(obj, "tools") {
        openai_body.insert("tools".into(), tools.clone());
    }
    let has_messages = matches!(field(obj, "messages"), Some(Value::Array(a)) if !a.is_empty());
    if let Some(Value::Array(messages)) = field(obj, "messages") {
        for (i, m) in messages.iter().enumerate() {
            if let Some(m) = m.as_object() {
                refuse_if_set(
                    m,
                    "images",
                    &format!("messages[{i}].images: Locara's models read text only"),
                )
                .map_err(|e| e.with_param(format!("messages[{i}].images")))?;
            }
        }
    }
    openai_body.insert(
        "messages".into(),
        if has_messages {
            obj["messages"].clone()
        } else {
            Value::Array(vec![placeholder()])
        },
    );
    let request =
        openai::ChatRequest::from_json_ordered(&Value::Object(openai_body), &ordered(body))
            .map_err(rename_error)?;
    finish(
        obj,
        request.model,
        has_messages.then_some(()),
        request.params,
    )
    .map(|mut b| {
        if b.prompt.is_some() {
            b.prompt = Some(Prompt::Chat {
                messages: request.messages,
            });
        }
        b
    })
}

/// `/api/generate`: the prompt through the model's template (with
/// `system` first), or as it is with `raw: true`.
pub fn parse_generate(body: &[u8]) -> Result<GenerateBody, ApiError> {
    let v = parse_body(body)?;
    let obj = as_object(&v)?;
    for (name, why) in [
        ("images", "Locara's models read text only"),
        ("suffix", "Locara does not fill in the middle"),
        ("template", "Locara renders prompts with the model's own chat template"),
        (
            "context",
            "Locara does not take a conversation as token ids: send the text (a cached conversation's K/V is reused when the prompt continues it)",
        ),
    ] {
        let set = match field(obj, name) {
            None => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(ApiError::unsupported(name, why));
        }
    }
    let prompt = field(obj, "prompt")
        .map(|v| as_str("prompt", v).map(str::to_owned))
        .transpose()?
        .unwrap_or_default();
    let system = field(obj, "system")
        .map(|v| as_str("system", v).map(str::to_owned))
        .transpose()?;
    let raw = field(obj, "raw")
        .map(|v| as_bool("raw", v))
        .transpose()?
        .unwrap_or(false);
    let mut openai_body = common(obj)?;
    let text = if prompt.is_empty() { " " } else { &prompt };
    openai_body.insert("prompt".into(), Value::String(text.to_owned()));
    let request =
        openai::CompletionRequest::from_json_ordered(&Value::Object(openai_body), &ordered(body))
            .map_err(rename_error)?;
    let mut body = finish(
        obj,
        request.model,
        (!prompt.is_empty()).then_some(()),
        request.params,
    )?;
    if body.prompt.is_some() {
        body.prompt = Some(if raw {
            Prompt::Raw { text: prompt }
        } else {
            let mut messages = Vec::new();
            if let Some(system) = system.filter(|s| !s.is_empty()) {
                no_nul("system", &system)?;
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system,
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: prompt,
            });
            Prompt::Chat { messages }
        });
    }
    Ok(body)
}

/// `/api/embed`: `input` a string or strings; `truncate`, Ollama's
/// default true, is refused when an input is too long rather than done
/// (see the README).
pub fn parse_embed(body: &[u8]) -> Result<EmbedBody, ApiError> {
    let v = parse_body(body)?;
    let obj = as_object(&v)?;
    let model = model_of(obj)?;
    let inputs = openai::parse_inputs("input", field(obj, "input"))?;
    if let Some(options) = field(obj, "options") {
        check_options(options)?;
    }
    let dimensions = field(obj, "dimensions")
        .map(openai::parse_dimensions)
        .transpose()?;
    if let Some(v) = field(obj, "truncate") {
        as_bool("truncate", v)?;
    }
    Ok(EmbedBody {
        model,
        inputs,
        keep_alive: keep_alive(obj)?,
        dimensions,
    })
}

/// Ollama's `keep_alive`: seconds or a duration string; negative is forever.
fn keep_alive(obj: &Map<String, Value>) -> Result<Option<KeepAlive>, ApiError> {
    field(obj, "keep_alive").map(parse_keep_alive).transpose()
}

/// A stand-in message so the OpenAI parser checks the rest of a body
/// that has none (a load request).
fn placeholder() -> Value {
    serde_json::json!({"role": "user", "content": " "})
}

/// `format` and `tools[i].function.parameters` in the body's key order
/// (see [`Ordered`]).
fn ordered(body: &[u8]) -> Ordered {
    #[derive(serde::Deserialize)]
    struct Format {
        format: Option<Json>,
    }
    #[derive(serde::Deserialize)]
    struct Tools {
        tools: Option<Vec<OrderedTool>>,
    }
    Ordered {
        response_schema: serde_json::from_slice::<Format>(body)
            .ok()
            .and_then(|b| b.format)
            .filter(|f| matches!(f, Json::Object(_))),
        tool_parameters: OrderedTool::parameters(
            serde_json::from_slice::<Tools>(body)
                .ok()
                .and_then(|b| b.tools),
        ),
    }
}

/// Where the OpenAI parser puts the schema of `format`.
const FORMAT_SCHEMA: &str = "response_format.json_schema.schema";

/// The fields chat and generate share, as an OpenAI-shaped body: model,
/// `format`, `think`, `keep_alive`, `stream` and the options.
fn common(obj: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let model = model_of(obj)?;
    let response_format = match field(obj, "format") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s == "json" => Some(serde_json::json!({"type": "json_object"})),
        Some(schema @ Value::Object(_)) => Some(serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": schema},
        })),
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!(
                    "format {} is not supported: use \"json\" or a JSON Schema object",
                    describe(other)
                ),
            )
            .with_code("unsupported_parameter"))
        }
    };
    if let Some(v) = field(obj, "think") {
        if !matches!(v, Value::Bool(false)) {
            return Err(ApiError::unsupported(
                "think",
                "Locara does not separate a model's thinking from its answer",
            ));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model));
    if let Some(f) = response_format {
        out.insert("response_format".into(), f);
    }
    if let Some(v) = field(obj, "keep_alive") {
        out.insert("keep_alive".into(), v.clone());
    }
    if let Some(v) = field(obj, "stream") {
        as_bool("stream", v)?;
    }
    if let Some(options) = field(obj, "options") {
        let options = check_options(options)?;
        for (ollama, ours) in OPTION_NAMES {
            let Some(v) = field(options, ollama) else {
                continue;
            };
            // num_predict -1: until the model stops; -2: until the context
            // is full. Both are "no limit" here (the context bounds every
            // answer).
            let unlimited = *ollama == "num_predict" && as_integer("options.num_predict", v)? < 0;
            let no_stop = *ollama == "stop" && v.as_array().is_some_and(Vec::is_empty);
            if unlimited || no_stop {
                continue;
            }
            out.insert((*ours).into(), v.clone());
        }
    }
    Ok(out)
}

/// Checks `options`: an object; forbidden keys refused by name; unneeded
/// sampling options refused unless neutral; `repeat_last_n` in range.
fn check_options(options: &Value) -> Result<&Map<String, Value>, ApiError> {
    let Value::Object(options) = options else {
        return Err(ApiError::invalid(
            "options",
            format!("options must be an object, got {}", describe(options)),
        ));
    };
    for (key, v) in options {
        if v.is_null() {
            continue;
        }
        let param = format!("options.{key}");
        if let Some(why) = forbidden_key_reason(key) {
            // What Locara does anyway is no request to refuse.
            let same = match key.as_str() {
                "use_mmap" => v == &Value::Bool(true),
                "use_mlock" => v == &Value::Bool(false),
                _ => false,
            };
            if !same {
                return Err(ApiError::invalid(
                    &param,
                    format!("{param} {} is not allowed: {why}", describe(v)),
                )
                .with_code("forbidden_option"));
            }
        }
        if let Some((_, neutral)) = NEUTRAL_OPTIONS.iter().find(|(k, _)| k == key) {
            if v.as_f64() != Some(*neutral) {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "{param} {} is not supported: Locara's sampler has no {key} (leave it out or send {neutral})",
                        describe(v)
                    ),
                )
                .with_code("unsupported_parameter"));
            }
        }
        match key.as_str() {
            "num_keep" | "penalize_newline" => {
                return Err(ApiError::unsupported(
                    &param,
                    match key.as_str() {
                        "num_keep" => "a context shift keeps the system prompt; the kept tokens are not chosen per request",
                        _ => "Locara's sampler has no newline penalty",
                    },
                ))
            }
            "repeat_last_n" => {
                let n = as_integer(&param, v)?;
                if !(0..=i128::from(locara_core::LARGEST_CONTEXT)).contains(&n) {
                    return Err(ApiError::invalid(
                        &param,
                        format!(
                            "{param} {n} is out of range: 0 to {} (-1, the whole context, is not supported)",
                            locara_core::LARGEST_CONTEXT
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(options)
}

/// The checked body, `repeat_last_n` applied (the OpenAI parser has no
/// such field).
fn finish(
    obj: &Map<String, Value>,
    model: String,
    has_prompt: Option<()>,
    mut params: GenerationParams,
) -> Result<GenerateBody, ApiError> {
    if let Some(n) = field(obj, "options")
        .and_then(|o| o.get("repeat_last_n"))
        .and_then(Value::as_u64)
    {
        params.sampling.repeat_last_n = u32::try_from(n).unwrap_or(u32::MAX);
    }
    let stream = field(obj, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    params.stream = stream;
    Ok(GenerateBody {
        model,
        prompt: has_prompt.map(|()| Prompt::Raw {
            text: String::new(),
        }),
        params,
        stream,
    })
}

/// An error of the OpenAI parser, named as the Ollama client sent it.
fn rename_error(mut e: ApiError) -> ApiError {
    let Some(param) = e.param.clone() else {
        return e;
    };
    if let Some(rest) = param.strip_prefix(FORMAT_SCHEMA) {
        let named = format!("format{rest}");
        e.message = e.message.replacen(&param, &named, 1);
        e.param = Some(named);
        return e;
    }
    if param == "response_format" {
        e.message = e
            .message
            .replacen("response_format json_object or json_schema", "format", 1);
        e.param = Some("format".into());
        return e;
    }
    if let Some((ollama, ours)) = OPTION_NAMES.iter().find(|(_, ours)| *ours == param) {
        let named = format!("options.{ollama}");
        e.message = e.message.replacen(ours, &named, 1);
        e.param = Some(named);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> Result<GenerateBody, ApiError> {
        parse_chat(v.to_string().as_bytes())
    }

    fn generate(v: Value) -> Result<GenerateBody, ApiError> {
        parse_generate(v.to_string().as_bytes())
    }

    const HI: &str = r#"[{"role": "user", "content": "hi"}]"#;

    fn messages() -> Value {
        serde_json::from_str(HI).unwrap()
    }

    #[test]
    fn options_map_to_ours_and_stream_defaults_to_true() {
        let b = chat(json!({"model": "m", "messages": messages(), "options": {
            "num_ctx": 4096, "num_predict": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
            "min_p": 0.1, "seed": 42, "stop": ["x"], "repeat_penalty": 1.1, "repeat_last_n": 32,
            "num_batch": 8, "some_future_option": true, "use_mmap": true, "use_mlock": false,
        }}))
        .unwrap();
        assert!(b.stream && b.params.stream);
        assert_eq!(b.params.context, Some(4096));
        assert_eq!(b.params.max_tokens, Some(7));
        let s = &b.params.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (0.0, 0.5, 3, 0.1)
        );
        assert_eq!(
            (s.seed, s.repeat_penalty, s.repeat_last_n),
            (Some(42), 1.1, 32)
        );
        assert_eq!(b.params.stop, vec!["x".to_string()]);
        assert!(matches!(b.prompt, Some(Prompt::Chat { .. })));
        let unlimited =
            chat(json!({"model": "m", "messages": messages(), "stream": false, "options": {"num_predict": -1}}))
                .unwrap();
        assert_eq!(unlimited.params.max_tokens, None);
        assert!(!unlimited.stream);
    }

    #[test]
    fn forbidden_and_unsupported_options_name_the_option() {
        for (options, param) in [
            (json!({"use_mlock": true}), "options.use_mlock"),
            (json!({"use_mmap": false}), "options.use_mmap"),
            (json!({"num_thread": 4}), "options.num_thread"),
            (json!({"num_gpu": 99}), "options.num_gpu"),
            (json!({"mirostat": 2}), "options.mirostat"),
            (json!({"num_keep": 5}), "options.num_keep"),
            (json!({"repeat_last_n": -1}), "options.repeat_last_n"),
            (json!({"temperature": 9}), "options.temperature"),
            (json!({"num_predict": 0}), "options.num_predict"),
            (json!({"num_ctx": 10}), "options.num_ctx"),
        ] {
            let err = chat(json!({"model": "m", "messages": messages(), "options": options}))
                .unwrap_err();
            assert_eq!(err.status, 400, "{options}");
            assert_eq!(
                err.param.as_deref(),
                Some(param),
                "{options}: {}",
                err.message
            );
            assert!(err.message.contains(param), "{}", err.message);
        }
    }

    #[test]
    fn features_we_lack_are_refused_by_name() {
        for (body, param) in [
            (
                json!({"model": "m", "messages": messages(), "format": "xml"}),
                "format",
            ),
            (
                json!({"model": "m", "messages": messages(), "tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (
                json!({"model": "m", "messages": messages(), "think": true}),
                "think",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}),
                "messages[0].images",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "a\u{0}"}]}),
                "messages[0].content",
            ),
        ] {
            let err = chat(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        }
        for (body, param) in [
            (
                json!({"model": "m", "prompt": "x", "suffix": "y"}),
                "suffix",
            ),
            (
                json!({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}),
                "template",
            ),
            (
                json!({"model": "m", "prompt": "x", "context": [1, 2]}),
                "context",
            ),
            (
                json!({"model": "m", "prompt": "x", "images": ["aGk="]}),
                "images",
            ),
        ] {
            let err = generate(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        }
    }

    #[test]
    fn format_becomes_structured_output_named_as_ollama_names_it() {
        let json_mode =
            chat(json!({"model": "m", "messages": messages(), "format": "json"})).unwrap();
        assert_eq!(
            json_mode.params.sampling.grammar,
            Some(locara_engine::grammar::json_object())
        );
        // A schema keeps the body's property order.
        let body = br#"{"model":"m","prompt":"Ann?","stream":false,"format":{"type":"object",
            "properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},"required":["zeta","alpha"]}}"#;
        let g = parse_generate(body)
            .unwrap()
            .params
            .sampling
            .grammar
            .unwrap();
        assert!(g.find("zeta").unwrap() < g.find("alpha").unwrap(), "{g}");
        let err = chat(
            json!({"model": "m", "messages": messages(), "format": {"type": "object",
            "properties": {"when": {"type": "string", "format": "date"}}}}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("format.properties.when"));
        assert!(
            err.message
                .starts_with("format.properties.when uses the JSON Schema keyword \"format\""),
            "{}",
            err.message
        );
        let err = chat(
            json!({"model": "m", "messages": messages(), "format": "json",
            "tools": [{"type": "function", "function": {"name": "f"}}]}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("format"));
        assert!(
            err.message
                .starts_with("format with tools is not supported"),
            "{}",
            err.message
        );
    }

    #[test]
    fn tools_take_the_openai_path_and_calls_go_back_into_the_conversation() {
        let b = chat(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_name": "get_weather", "content": "21 C"},
        ], "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}))
        .unwrap();
        assert_eq!(
            b.params.tools,
            Some(openai::tools::CallFormat { text_allowed: true })
        );
        let Some(Prompt::Chat { messages: turns }) = b.prompt else {
            panic!("{:?}", b.prompt)
        };
        let roles: Vec<&str> = turns.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            turns[2]
                .content
                .contains(r#""arguments": {"city":"Paris"}"#),
            "{}",
            turns[2].content
        );
        assert!(
            turns[3]
                .content
                .contains(r#""name": "get_weather", "content": "21 C""#),
            "{}",
            turns[3].content
        );
        let err = chat(json!({"model": "m", "messages": messages(), "tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "a"}}}}}]}))
        .unwrap_err();
        assert_eq!(
            err.param.as_deref(),
            Some("tools[0].function.parameters.properties.x")
        );
    }

    #[test]
    fn generate_uses_the_template_unless_raw_and_empty_means_load() {
        let b = generate(json!({"model": "m", "prompt": "hi", "system": "be brief"})).unwrap();
        let Some(Prompt::Chat { messages }) = b.prompt else {
            panic!("{:?}", b.prompt)
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, "system");
        let raw = generate(json!({"model": "m", "prompt": "hi", "raw": true})).unwrap();
        assert_eq!(raw.prompt, Some(Prompt::Raw { text: "hi".into() }));
        assert_eq!(generate(json!({"model": "m"})).unwrap().prompt, None);
        assert_eq!(
            chat(json!({"model": "m", "messages": []})).unwrap().prompt,
            None
        );
        // The older `name` names the model too.
        assert_eq!(generate(json!({"name": "n"})).unwrap().model, "n");
    }

    #[test]
    fn embed_takes_a_string_or_strings() {
        let b = parse_embed(br#"{"model": "m", "input": ["a", "b"], "keep_alive": "1m"}"#).unwrap();
        assert_eq!(b.inputs.len(), 2);
        assert!(b.keep_alive.is_some());
        let err = parse_embed(br#"{"model": "m", "input": ["a", ""]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input[1]"));
        let err = parse_embed(br#"{"model": "m", "input": "a", "options": {"use_mlock": true}}"#)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("options.use_mlock"));
    }
}
