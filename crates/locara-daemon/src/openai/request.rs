//! Request bodies: lenient types of our own, parsed and checked.
//!
//! Unknown fields are ignored, as OpenAI's own clients send fields a local
//! runtime has no use for (`user`, `store`, `metadata`, ...). A field set to
//! `null` counts as absent (many clients send `"stop": null`). Every known
//! field is type- and range-checked; the error names the field (as `param`),
//! the value and the limit: `temperature 3.5 is out of range: 0 to 2`.
//! Features Locara does not have (`functions`, `n > 1`, a JSON Schema keyword
//! it cannot enforce, ...) are refused by name rather than silently
//! ignored, so a client never gets an answer that looks like what it asked
//! for and is not.
//!
//! Structured output: `response_format` `json_object` or `json_schema`
//! becomes a GBNF grammar here ([`locara_engine::grammar`], which says what
//! subset of JSON Schema it enforces), so a schema it cannot take is a 400
//! naming the keyword and its place
//! (`response_format.json_schema.schema.properties.when`) before any model
//! is loaded. Both endpoints take it (on `/v1/completions` it is
//! llama-server's extension, not OpenAI's).
//!
//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` are read
//! by [`super::tools`], which adds the functions to the system message and
//! gives the grammar of the answer; earlier calls (`tool_calls` of an
//! assistant message) and their results (`role: "tool"`) are written into
//! the conversation in the same format.
//!
//! Locara's own fields: `keep_alive`, `context` and `truncate` (whether a
//! prompt or an answer too long for the context may be shortened; see
//! [`GenerationParams::truncate`]).
//!
//! Defaults for omitted sampling fields are [`Sampling::default`], that is
//! llama.cpp's own (temperature 0.8, top_p 0.95, top_k 40, min_p 0.05), not
//! OpenAI's temperature 1.0: the same model gives the same kind of answer
//! through `locara run`, this API, `llama-server` and Ollama (which all use
//! 0.8), and the other defaults (top_k, min_p) are llama.cpp's anyway.

use super::error::ApiError;
#[cfg(doc)]
use super::response::ContextReport;
use super::tools::{self, CallFormat, CallNames};
use locara_core::text::shorten;
use locara_core::{LARGEST_CONTEXT, SMALLEST_CONTEXT};
use locara_engine::grammar::{self, Json, SchemaError};
use locara_engine::protocol::{ChatMessage, LogitBias, Sampling, MAX_TOP_LOGPROBS};
use serde_json::{Map, Value};
use std::fmt;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;

pub use locara_core::governor::MAX_KEEP_ALIVE;

// One type for the setting, shared with the config and the governor.
pub use locara_core::governor::{KeepAlive, KeepAliveError};

/// Reads `keep_alive` from a request: a number of seconds or a string as
/// [`KeepAlive::parse`] takes.
pub fn parse_keep_alive(v: &Value) -> Result<KeepAlive, ApiError> {
    let parsed = match v {
        Value::Number(n) => {
            KeepAlive::from_seconds(n.as_f64().unwrap_or(f64::NAN)).map_err(|e| match e {
                KeepAliveError::TooLong { .. } => KeepAliveError::TooLong {
                    input: n.to_string(),
                },
                other => other,
            })
        }
        Value::String(s) => KeepAlive::parse(s),
        other => {
            return Err(ApiError::invalid(
                "keep_alive",
                format!(
                    "keep_alive must be a number of seconds or a duration string such as \"5m\", got {}",
                    describe(other)
                ),
            ))
        }
    };
    parsed.map_err(|e| ApiError::invalid("keep_alive", format!("keep_alive {e}")))
}

/// What both endpoints share: how much to generate, how to sample, how to
/// load the model and how to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate; `None` = until the model stops or the
    /// context is full. `max_completion_tokens` wins over `max_tokens`.
    pub max_tokens: Option<u32>,
    /// [`Sampling::default`] for every field the request omits (module docs
    /// say why the temperature default is 0.8, not OpenAI's 1.0), with
    /// `frequency_penalty`, `presence_penalty`, `logit_bias`, the grammar of
    /// `response_format` and the log-probabilities asked for.
    pub sampling: Sampling,
    /// Generation ends before any of these; at most [`MAX_STOP`], none empty.
    pub stop: Vec<String>,
    /// `None` = the daemon's configured default.
    pub keep_alive: Option<KeepAlive>,
    /// Context to load the model with, in tokens; `None` = the default.
    pub context: Option<u32>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: send a usage chunk before `[DONE]`.
    /// Only meaningful with `stream`.
    pub include_usage: bool,
    /// Locara's `truncate`: whether the worker may shorten the context to
    /// go on (leave out the oldest non-system messages of a prompt too long
    /// for it, shift the context of an answer that fills it). `false`
    /// refuses instead: a prompt too long is `context_length_exceeded`, an
    /// answer ends at the context with `length`. Default `true`, so a long
    /// conversation goes on as chat apps expect; the response says what
    /// was left out ([`ContextReport`]).
    pub truncate: bool,
    /// `cache_prompt` (llama-server's field of the same name): whether the
    /// prompt may start from a finished conversation's cached K/V. `false`
    /// prefills it whole, as a benchmark of prefill needs. Default `true`.
    pub cache_prompt: bool,
    /// How to read the answer into tool calls; `None`: it is text (no
    /// tools, `tool_choice: "none"`, or the completion route).
    pub tools: Option<CallFormat>,
}

/// A checked `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// Roles `system`, `user`, `assistant`, `tool` (`developer` becomes
    /// `system`, which is what chat templates know).
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
}

/// A checked `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    /// Given to the model as it is, without a chat template.
    pub prompt: String,
    pub params: GenerationParams,
}

/// Parses and checks a chat completion request body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    ChatRequest::read(&parse_body(body)?, &Ordered::of_openai_body(body))
}

/// Parses and checks a text completion request body.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    CompletionRequest::read(&parse_body(body)?, &Ordered::of_openai_body(body))
}

/// The JSON Schemas of a body with their keys in the order the body has
/// them (`serde_json::Value` sorts them, and a schema's properties are
/// generated in their order). Each is `None` where the body has none or
/// is not shaped for it (the checks then say what is wrong); the checks
/// fall back to the sorted schema.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ordered {
    /// `response_format.json_schema.schema`.
    pub response_schema: Option<Json>,
    /// Each `tools[i].function.parameters`.
    pub tool_parameters: Vec<Option<Json>>,
}

#[derive(serde::Deserialize)]
pub(crate) struct OrderedTool {
    function: Option<OrderedFunction>,
}

#[derive(serde::Deserialize)]
struct OrderedFunction {
    parameters: Option<Json>,
}

impl OrderedTool {
    pub(crate) fn parameters(tools: Option<Vec<OrderedTool>>) -> Vec<Option<Json>> {
        tools
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.function.and_then(|f| f.parameters))
            .collect()
    }
}

impl Ordered {
    fn of_openai_body(body: &[u8]) -> Ordered {
        #[derive(serde::Deserialize)]
        struct Format {
            json_schema: Option<Schema>,
        }
        #[derive(serde::Deserialize)]
        struct Schema {
            schema: Option<Json>,
        }
        // Read apart, so that a misshapen one keeps the other's order.
        #[derive(serde::Deserialize)]
        struct Formats {
            response_format: Option<Format>,
        }
        #[derive(serde::Deserialize)]
        struct Tools {
            tools: Option<Vec<OrderedTool>>,
        }
        Ordered {
            response_schema: serde_json::from_slice::<Formats>(body)
                .ok()
                .and_then(|b| b.response_format?.json_schema?.schema),
            tool_parameters: OrderedTool::parameters(
                serde_json::from_slice::<Tools>(body)
                    .ok()
                    .and_then(|b| b.tools),
            ),
        }
    }
}

/// The body as JSON; the JSON error (with line and column) otherwise.
/// The deepest JSON nesting a request body may have: a chat request needs
/// four levels (body, messages, message, content parts), a JSON Schema in
/// `response_format` four more and two per level of the answer it
/// describes (`properties`, the property); the cap keeps a hostile body
/// from costing stack or time.
pub const MAX_JSON_DEPTH: usize = 64;

/// The nesting depth of a JSON text, counted without parsing it (brackets
/// inside strings do not count).
pub fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body(
            "request body is empty; expected a JSON object",
        ));
    }
    let depth = json_depth(body);
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::invalid_body(format!(
            "request body nests JSON {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(format!("request body is not valid JSON: {e}")))
}

pub(crate) fn as_object(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::invalid_body(format!(
            "request body must be a JSON object, got {}",
            describe(v)
        ))
    })
}

impl ChatRequest {
    /// Checks an already-parsed body (a JSON Schema's properties are
    /// generated in `serde_json`'s sorted order: [`parse_chat`] keeps the
    /// body's).
    pub fn from_json(v: &Value) -> Result<Self, ApiError> {
        Self::read(v, &Ordered::default())
    }

    /// Checks an already-parsed body whose schemas' key order was read
    /// apart (Ollama's routes, which rename the fields that hold them).
    pub fn from_json_ordered(v: &Value, ordered: &Ordered) -> Result<Self, ApiError> {
        Self::read(v, ordered)
    }

    fn read(v: &Value, ordered: &Ordered) -> Result<Self, ApiError> {
        let obj = as_object(v)?;
        let model = parse_model(obj)?;
        refuse_if_set(
            obj,
            "functions",
            "use tools (functions is OpenAI's older form of it)",
        )?;
        refuse_if_set(
            obj,
            "function_call",
            "use tool_choice (function_call is OpenAI's older form of it)",
        )?;
        let mut messages = parse_messages(obj)?;
        let mut params = parse_params(obj, Route::Chat, ordered.response_schema.clone())?;
        if let Some(setup) = tools::parse_tools(obj, &ordered.tool_parameters)? {
            if params.sampling.grammar.is_some() {
                return Err(ApiError::invalid(
                    "response_format",
                    "response_format json_object or json_schema with tools is not supported: the answer is decoded under the tools' grammar (send tool_choice \"none\" for a structured answer)",
                )
                .with_code("unsupported_parameter"));
            }
            if !params.stop.is_empty() {
                return Err(ApiError::invalid(
                    "stop",
                    "stop with tools is not supported: a stop string could end the answer inside a tool call",
                )
                .with_code("unsupported_parameter"));
            }
            tools::add_to_system(&mut messages, &setup.prompt);
            params.sampling.grammar = Some(setup.grammar);
            params.tools = Some(setup.format);
        }
        Ok(Self {
            model,
            messages,
            params,
        })
    }
}

impl CompletionRequest {
    /// Checks an already-parsed body (see [`ChatRequest::from_json`]).
    pub fn from_json(v: &Value) -> Result<Self, ApiError> {
        Self::read(v, &Ordered::default())
    }

    /// See [`ChatRequest::from_json_ordered`].
    pub fn from_json_ordered(v: &Value, ordered: &Ordered) -> Result<Self, ApiError> {
        Self::read(v, ordered)
    }

    fn read(v: &Value, ordered: &Ordered) -> Result<Self, ApiError> {
        let obj = as_object(v)?;
        let model = parse_model(obj)?;
        if let Some(v) = field(obj, "echo") {
            if as_bool("echo", v)? {
                return Err(ApiError::unsupported(
                    "echo",
                    "Locara does not repeat the prompt in the answer",
                ));
            }
        }
        if let Some(v) = field(obj, "suffix") {
            if !as_str("suffix", v)?.is_empty() {
                return Err(ApiError::unsupported(
                    "suffix",
                    "Locara does not fill in the middle",
                ));
            }
        }
        if let Some(v) = field(obj, "best_of") {
            let n = as_integer("best_of", v)?;
            if n != 1 {
                return Err(ApiError::invalid(
                    "best_of",
                    format!(
                        "best_of {n} is not supported: Locara generates one choice per request"
                    ),
                )
                .with_code("unsupported_parameter"));
            }
        }
        let prompt = parse_prompt(obj)?;
        let params = parse_params(obj, Route::Completion, ordered.response_schema.clone())?;
        Ok(Self {
            model,
            prompt,
            params,
        })
    }
}

/// A field, with `null` counted as absent.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

pub(crate) fn parse_model(obj: &Map<String, Value>) -> Result<String, ApiError> {
    let v = field(obj, "model")
        .ok_or_else(|| ApiError::invalid("model", "model is required: the name of a model"))?;
    let name = as_str("model", v)?.trim();
    if name.is_empty() {
        return Err(ApiError::invalid("model", "model must not be empty"));
    }
    Ok(name.to_owned())
}

/// Refuses `name` when it is set to anything but a neutral value (null,
/// false, an empty array or object).
pub(crate) fn refuse_if_set(
    obj: &Map<String, Value>,
    name: &str,
    why: &str,
) -> Result<(), ApiError> {
    let neutral = match field(obj, name) {
        None => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    };
    if neutral {
        Ok(())
    } else {
        Err(ApiError::unsupported(name, why))
    }
}

/// Which endpoint a body is for, where their fields differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completion,
}

/// Most alternatives the legacy `logprobs` of `/v1/completions` may ask
/// for (OpenAI's limit).
pub const MAX_LEGACY_LOGPROBS: u32 = 5;

/// `response_format` as the grammar that enforces it; `None` for `text`
/// or no format. `ordered` is the schema with the body's key order.
fn parse_response_format(
    obj: &Map<String, Value>,
    ordered: Option<Json>,
) -> Result<Option<String>, ApiError> {
    let Some(v) = field(obj, "response_format") else {
        return Ok(None);
    };
    let Value::Object(format) = v else {
        return Err(ApiError::invalid(
            "response_format",
            format!(
                "response_format must be an object such as {{\"type\": \"json_object\"}}, got {}",
                describe(v)
            ),
        ));
    };
    let kind = field(format, "type").ok_or_else(|| {
        ApiError::invalid(
            "response_format.type",
            "response_format.type is required: text, json_object or json_schema",
        )
    })?;
    match as_str("response_format.type", kind)? {
        "text" => Ok(None),
        "json_object" => Ok(Some(grammar::json_object())),
        "json_schema" => {
            let at = "response_format.json_schema";
            let Some(Value::Object(spec)) = field(format, "json_schema") else {
                return Err(ApiError::invalid(
                    at,
                    format!("{at} is required with type json_schema: an object with name and schema"),
                ));
            };
            let name_at = "response_format.json_schema.name";
            let name = field(spec, "name")
                .ok_or_else(|| ApiError::invalid(name_at, format!("{name_at} is required")))?;
            let name = as_str(name_at, name)?;
            // OpenAI's rule for the name.
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ApiError::invalid(
                    name_at,
                    format!(
                        "{name_at} {:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                        shorten(name, 40)
                    ),
                ));
            }
            if let Some(strict) = field(spec, "strict") {
                // Either way the schema is enforced.
                as_bool("response_format.json_schema.strict", strict)?;
            }
            let schema_at = "response_format.json_schema.schema";
            let schema = match (ordered, field(spec, "schema")) {
                (_, None) => Json::Bool(true),
                (Some(ordered), Some(_)) => ordered,
                (None, Some(v)) => Json::from(v),
            };
            grammar::json_schema(&schema).map(Some).map_err(|e| {
                let param = format!("{schema_at}{}", e.path());
                let message = format!("{param} {e}");
                match e {
                    SchemaError::Unsupported { .. } => {
                        ApiError::invalid(param, message).with_code("unsupported_parameter")
                    }
                    SchemaError::Invalid { .. } => ApiError::invalid(param, message),
                }
            })
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!(
                "response_format.type {other:?} is not supported: use text, json_object or json_schema"
            ),
        )
        .with_code("unsupported_parameter")),
    }
}

/// `logit_bias`: token ids (as the object's keys) to a bias of -100 to
/// 100. Whether each id is in the model's vocabulary the worker checks.
fn parse_logit_bias(v: &Value) -> Result<Vec<LogitBias>, ApiError> {
    let Value::Object(map) = v else {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "logit_bias must be an object of token ids to biases, got {}",
                describe(v)
            ),
        ));
    };
    map.iter()
        .map(|(key, bias)| {
            let token = key.trim().parse::<u32>().map_err(|_| {
                ApiError::invalid(
                    "logit_bias",
                    format!(
                        "logit_bias key {:?} is not a token id: keys are the ids of the model's tokens, as strings",
                        shorten(key, 40)
                    ),
                )
            })?;
            let at = format!("logit_bias.{token}");
            let bias = as_number(&at, bias, Bounds::closed(-100.0, 100.0))? as f32;
            Ok(LogitBias { token, bias })
        })
        .collect()
}

/// How many alternatives to report with each token's log-probability;
/// `None`: no log-probabilities. Chat: `logprobs` (bool) and
/// `top_logprobs` (0 to 20); completions: `logprobs` (0 to 5), OpenAI's
/// legacy field.
fn parse_logprobs(obj: &Map<String, Value>, route: Route) -> Result<Option<u32>, ApiError> {
    match route {
        Route::Chat => {
            let wanted = field(obj, "logprobs")
                .map(|v| as_bool("logprobs", v))
                .transpose()?
                .unwrap_or(false);
            let top = field(obj, "top_logprobs")
                .map(|v| as_u32_in("top_logprobs", v, 0, MAX_TOP_LOGPROBS, ""))
                .transpose()?;
            match (wanted, top) {
                (false, Some(n)) if n > 0 => Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs {n} needs logprobs: true"),
                )),
                (false, _) => Ok(None),
                (true, top) => Ok(Some(top.unwrap_or(0))),
            }
        }
        Route::Completion => field(obj, "logprobs")
            .map(|v| as_u32_in("logprobs", v, 0, MAX_LEGACY_LOGPROBS, ""))
            .transpose(),
    }
}

const ROLES: &str = "system, user, assistant, tool or developer";

pub(crate) fn parse_messages(obj: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let v = field(obj, "messages").ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "messages is required: an array of chat messages",
        )
    })?;
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            "messages",
            format!("messages must be an array, got {}", describe(v)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must not be empty: give at least one message",
        ));
    }
    let mut names = CallNames::default();
    let mut messages: Vec<ChatMessage> = Vec::with_capacity(items.len());
    let mut after_result = false;
    for (i, m) in items.iter().enumerate() {
        let message = parse_message(i, m, &mut names)?;
        let result = is_tool_result(m);
        // Results of one turn's calls share one user turn.
        match messages.last_mut() {
            Some(last) if result && after_result => {
                last.content.push('\n');
                last.content.push_str(&message.content);
            }
            _ => messages.push(message),
        }
        after_result = result;
    }
    Ok(messages)
}

fn is_tool_result(m: &Value) -> bool {
    m.get("role").and_then(Value::as_str) == Some("tool")
}

/// The role a tool result takes in the prompt: chat templates without
/// tools know no `tool` role (see [`super::tools`]).
const TOOL_RESULT_ROLE: &str = "user";

fn parse_message(i: usize, m: &Value, names: &mut CallNames) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = m else {
        return Err(ApiError::invalid(
            &at,
            format!(
                "{at} must be an object with role and content, got {}",
                describe(m)
            ),
        ));
    };
    let role_param = format!("{at}.role");
    let role = field(m, "role")
        .ok_or_else(|| ApiError::invalid(&role_param, format!("{role_param} is required")))?;
    let role = match as_str(&role_param, role)? {
        r @ ("system" | "user" | "assistant" | "tool") => r,
        // OpenAI's newer name for system; chat templates know only system.
        "developer" => "system",
        other => {
            return Err(ApiError::invalid(
                &role_param,
                format!("{role_param} {other:?} is not a role: use {ROLES}"),
            ))
        }
    };
    let content_param = format!("{at}.content");
    let content = match field(m, "content") {
        // An assistant turn that only called tools has no content.
        None if role == "assistant" => String::new(),
        None => {
            return Err(ApiError::invalid(
                &content_param,
                format!("{content_param} is required"),
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parse_content_parts(&content_param, parts)?,
        Some(other) => {
            return Err(ApiError::invalid(
                &content_param,
                format!(
                    "{content_param} must be a string or an array of text parts, got {}",
                    describe(other)
                ),
            ))
        }
    };
    no_nul(&content_param, &content)?;
    if role == "assistant" {
        if let Some(calls) = field(m, "tool_calls") {
            let (text, called) = tools::read_assistant_calls(&at, calls)?;
            names.add(&called);
            let mut content = content;
            if !content.is_empty() && !text.is_empty() {
                content.push('\n');
            }
            content.push_str(&text);
            return Ok(ChatMessage {
                role: role.to_owned(),
                content,
            });
        }
    }
    if role == "tool" {
        // OpenAI's results name their call's id; Ollama's the function
        // (`tool_name`).
        let mut name = None;
        for key in ["tool_name", "name"] {
            if let Some(v) = field(m, key) {
                name = Some(as_str(&format!("{at}.{key}"), v)?.to_owned());
            }
        }
        if let Some(id) = field(m, "tool_call_id") {
            let id = as_str(&format!("{at}.tool_call_id"), id)?;
            if name.is_none() {
                name = names.get(id).map(str::to_owned);
            }
        }
        if let Some(name) = &name {
            no_nul(&format!("{at}.name"), name)?;
        }
        return Ok(ChatMessage {
            role: TOOL_RESULT_ROLE.to_owned(),
            content: tools::tool_response(name.as_deref(), &content),
        });
    }
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
    })
}

/// A NUL byte is the client's input, refused here: llama.cpp's tokenizer
/// and chat templates take C strings, and the worker answered it with an
/// internal error (a 500 for what is a bad request).
pub(crate) fn no_nul(param: &str, text: &str) -> Result<(), ApiError> {
    match text.find('\0') {
        Some(at) => Err(ApiError::invalid(
            param,
            format!("{param} holds a NUL byte (at byte {at}): text must not contain U+0000"),
        )),
        None => Ok(()),
    }
}

/// Joins the text of `[{"type":"text","text":..}, ..]` with newlines (parts
/// are separate blocks to the client; vLLM joins them the same way).
fn parse_content_parts(param: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{param}[{j}]");
        let Value::Object(part) = part else {
            return Err(ApiError::invalid(
                &at,
                format!("{at} must be a content part object, got {}", describe(part)),
            ));
        };
        let type_param = format!("{at}.type");
        let kind = field(part, "type")
            .ok_or_else(|| ApiError::invalid(&type_param, format!("{type_param} is required")))?;
        match as_str(&type_param, kind)? {
            "text" => {
                let text_param = format!("{at}.text");
                let text = field(part, "text").ok_or_else(|| {
                    ApiError::invalid(&text_param, format!("{text_param} is required"))
                })?;
                texts.push(as_str(&text_param, text)?);
            }
            other => {
                return Err(ApiError::invalid(
                    &type_param,
                    format!(
                    "{type_param} {other:?} is not supported: Locara models take text parts only"
                ),
                )
                .with_code("unsupported_parameter"))
            }
        }
    }
    Ok(texts.join("\n"))
}

fn parse_prompt(obj: &Map<String, Value>) -> Result<String, ApiError> {
    let v = field(obj, "prompt")
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required: the text to continue"))?;
    let prompt = match v {
        Value::String(s) => s.as_str(),
        Value::Array(items) => match items.as_slice() {
            [Value::String(s)] => s.as_str(),
            [] => {
                return Err(ApiError::invalid(
                    "prompt",
                    "prompt must not be an empty array",
                ))
            }
            [first, ..] if first.is_number() => {
                return Err(ApiError::invalid(
                    "prompt",
                    "prompt as token ids is not supported: send the text",
                )
                .with_code("unsupported_parameter"))
            }
            [_] => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("prompt[0] must be a string, got {}", describe(&items[0])),
                ))
            }
            many => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "prompt holds {} entries: Locara generates for one prompt per request",
                        many.len()
                    ),
                )
                .with_code("unsupported_parameter"))
            }
        },
        other => {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt must be a string, got {}", describe(other)),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    no_nul("prompt", prompt)?;
    Ok(prompt.to_owned())
}

fn parse_params(
    obj: &Map<String, Value>,
    route: Route,
    schema: Option<Json>,
) -> Result<GenerationParams, ApiError> {
    let get_f32 = |name: &str, bounds: Bounds| -> Result<Option<f32>, ApiError> {
        field(obj, name)
            .map(|v| as_number(name, v, bounds).map(|x| x as f32))
            .transpose()
    };
    let get_u32 = |name: &str, low: u32| -> Result<Option<u32>, ApiError> {
        field(obj, name)
            .map(|v| as_u32_in(name, v, low, u32::MAX, ""))
            .transpose()
    };

    if let Some(v) = field(obj, "n") {
        let n = as_integer("n", v)?;
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("n {n} is not supported: Locara generates one choice per request"),
            )
            .with_code("unsupported_parameter"));
        }
    }
    let mut sampling = Sampling::default();
    if let Some(t) = get_f32("temperature", Bounds::closed(0.0, 2.0))? {
        sampling.temperature = t;
    }
    if let Some(p) = get_f32("top_p", Bounds::open_low(0.0, 1.0))? {
        sampling.top_p = p;
    }
    if let Some(k) = get_u32("top_k", 0)? {
        sampling.top_k = k;
    }
    if let Some(p) = get_f32("min_p", Bounds::closed(0.0, 1.0))? {
        sampling.min_p = p;
    }
    if let Some(p) = get_f32("repeat_penalty", Bounds::open_low(0.0, 10.0))? {
        sampling.repeat_penalty = p;
    }
    if let Some(p) = get_f32("frequency_penalty", Bounds::closed(-2.0, 2.0))? {
        sampling.frequency_penalty = p;
    }
    if let Some(p) = get_f32("presence_penalty", Bounds::closed(-2.0, 2.0))? {
        sampling.presence_penalty = p;
    }
    if let Some(v) = field(obj, "logit_bias") {
        sampling.logit_bias = parse_logit_bias(v)?;
    }
    sampling.logprobs = parse_logprobs(obj, route)?;
    sampling.grammar = parse_response_format(obj, schema)?;
    if let Some(v) = field(obj, "seed") {
        sampling.seed = parse_seed(v)?;
    }

    let max_tokens = get_u32("max_tokens", 1)?;
    let max_completion_tokens = get_u32("max_completion_tokens", 1)?;

    let stream = field(obj, "stream")
        .map(|v| as_bool("stream", v))
        .transpose()?
        .unwrap_or(false);
    let include_usage = match field(obj, "stream_options") {
        None => false,
        Some(Value::Object(o)) => field(o, "include_usage")
            .map(|v| as_bool("stream_options.include_usage", v))
            .transpose()?
            .unwrap_or(false),
        Some(other) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("stream_options must be an object, got {}", describe(other)),
            ))
        }
    };

    Ok(GenerationParams {
        max_tokens: max_completion_tokens.or(max_tokens),
        sampling,
        stop: field(obj, "stop")
            .map(parse_stop)
            .transpose()?
            .unwrap_or_default(),
        keep_alive: field(obj, "keep_alive").map(parse_keep_alive).transpose()?,
        context: field(obj, "context")
            .map(|v| as_u32_in("context", v, SMALLEST_CONTEXT, LARGEST_CONTEXT, ""))
            .transpose()?,
        stream,
        include_usage,
        truncate: field(obj, "truncate")
            .map(|v| as_bool("truncate", v))
            .transpose()?
            .unwrap_or(true),
        tools: None,
        cache_prompt: field(obj, "cache_prompt")
            .map(|v| as_bool("cache_prompt", v))
            .transpose()?
            .unwrap_or(true),
    })
}

/// `-1` is llama.cpp's "random seed"; anything else must fit a u32.
pub(crate) fn parse_seed(v: &Value) -> Result<Option<u32>, ApiError> {
    if as_integer("seed", v)? == -1 {
        return Ok(None);
    }
    as_u32_in("seed", v, 0, u32::MAX, " (or -1 for a random seed)").map(Some)
}

pub(crate) fn parse_stop(v: &Value) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) if s.is_empty() => Err(ApiError::invalid(
            "stop",
            "stop must not be an empty string",
        )),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "stop has {} strings, more than the limit of {MAX_STOP}",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = format!("stop[{i}]");
                    let s = as_str(&at, item)?;
                    if s.is_empty() {
                        return Err(ApiError::invalid(&at, format!("{at} must not be empty")));
                    }
                    Ok(s.to_owned())
                })
                .collect()
        }
        other => Err(ApiError::invalid(
            "stop",
            format!(
                "stop must be a string or an array of strings, got {}",
                describe(other)
            ),
        )),
    }
}

/// A closed or half-open range of numbers, for range checks and messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    low: f64,
    low_inclusive: bool,
    high: f64,
}

impl Bounds {
    /// `low..=high`.
    pub(crate) fn closed(low: f64, high: f64) -> Self {
        Self {
            low,
            low_inclusive: true,
            high,
        }
    }

    /// Above `low`, up to `high` inclusive.
    pub(crate) fn open_low(low: f64, high: f64) -> Self {
        Self {
            low,
            low_inclusive: false,
            high,
        }
    }

    fn contains(self, x: f64) -> bool {
        let above = if self.low_inclusive {
            x >= self.low
        } else {
            x > self.low
        };
        above && x <= self.high
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low_inclusive {
            write!(f, "{} to {}", self.low, self.high)
        } else {
            write!(f, "above {}, up to {}", self.low, self.high)
        }
    }
}

pub(crate) fn as_bool(param: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| {
        ApiError::invalid(
            param,
            format!("{param} must be true or false, got {}", describe(v)),
        )
    })
}

pub(crate) fn as_str<'a>(param: &str, v: &'a Value) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| {
        ApiError::invalid(
            param,
            format!("{param} must be a string, got {}", describe(v)),
        )
    })
}

pub(crate) fn as_number(param: &str, v: &Value, bounds: Bounds) -> Result<f64, ApiError> {
    let Value::Number(n) = v else {
        return Err(ApiError::invalid(
            param,
            format!("{param} must be a number, got {}", describe(v)),
        ));
    };
    match n.as_f64() {
        Some(x) if bounds.contains(x) => Ok(x),
        _ => Err(ApiError::invalid(
            param,
            format!("{param} {n} is out of range: {bounds}"),
        )),
    }
}

/// An integer, as i128 so every JSON integer fits. `2.0` counts (Python's
/// `json` writes floats that way); `2.5` does not.
pub(crate) fn as_integer(param: &str, v: &Value) -> Result<i128, ApiError> {
    let not_integer = || {
        ApiError::invalid(
            param,
            format!("{param} must be an integer, got {}", describe(v)),
        )
    };
    let Value::Number(n) = v else {
        return Err(not_integer());
    };
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Ok(i128::from(u));
    }
    match n.as_f64() {
        // 2^53: beyond it a float no longer names one integer.
        Some(x) if x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0 => Ok(x as i128),
        _ => Err(not_integer()),
    }
}

/// An integer in `low..=high`; `note` is appended to the range message.
pub(crate) fn as_u32_in(
    param: &str,
    v: &Value,
    low: u32,
    high: u32,
    note: &str,
) -> Result<u32, ApiError> {
    let i = as_integer(param, v)?;
    u32::try_from(i)
        .ok()
        .filter(|x| (low..=high).contains(x))
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                format!("{param} {i} is out of range: {low} to {high}{note}"),
            )
        })
}

/// A JSON value as an error message shows it.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {:?}", shorten(s, 40)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::error::ErrorType;
    use serde_json::json;
    use std::time::Duration;

    /// A minimal valid chat body with `extra` fields merged in.
    fn chat_with(extra: Value) -> Result<ChatRequest, ApiError> {
        let mut body = json!({
            "model": "smollm2:135m",
            "messages": [{"role": "user", "content": "Hi"}],
        });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        ChatRequest::from_json(&body)
    }

    fn completion_with(extra: Value) -> Result<CompletionRequest, ApiError> {
        let mut body = json!({"model": "smollm2:135m", "prompt": "Once upon"});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        CompletionRequest::from_json(&body)
    }

    #[track_caller]
    fn assert_invalid(result: Result<impl fmt::Debug, ApiError>, param: &str, message: &str) {
        let err = result.expect_err("request should be refused");
        assert_eq!(err.kind, ErrorType::InvalidRequest, "{err:?}");
        assert_eq!(err.status, 400);
        assert_eq!(err.param.as_deref(), Some(param), "{err:?}");
        assert_eq!(err.message, message);
    }

    #[test]
    fn deeply_nested_bodies_are_refused_with_the_limit() {
        assert_eq!(json_depth(br#"{"a":[{"b":"[[[[{{"}]}"#), 3);
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        let body = format!(r#"{{"model":"m","messages":{deep}}}"#);
        let e = parse_chat(body.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("65 levels deep") && e.message.contains("64"),
            "{}",
            e.message
        );
    }

    #[test]
    fn minimal_chat_gets_sampling_defaults() {
        let req = chat_with(json!({})).unwrap();
        assert_eq!(req.model, "smollm2:135m");
        assert_eq!(
            req.messages,
            vec![ChatMessage {
                role: "user".into(),
                content: "Hi".into()
            }]
        );
        let p = &req.params;
        assert_eq!(p.sampling, Sampling::default());
        assert_eq!(p.sampling.temperature, 0.8);
        assert_eq!(p.max_tokens, None);
        assert!(p.stop.is_empty());
        assert_eq!(p.keep_alive, None);
        assert_eq!(p.context, None);
        assert!(!p.stream);
        assert!(!p.include_usage);
        assert!(p.truncate);
    }

    #[test]
    fn every_known_field_is_read() {
        let req = chat_with(json!({
            "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
            "repeat_penalty": 1.1, "seed": 42, "max_tokens": 16,
            "stop": ["\n\n", "END"], "keep_alive": "1h30m", "context": 4096,
            "stream": true, "stream_options": {"include_usage": true},
            "frequency_penalty": 0.5, "presence_penalty": -0.5, "n": 1,
            "user": "someone", "response_format": {"type": "text"},
            "logit_bias": {}, "logprobs": false, "tools": [], "truncate": false,
        }))
        .unwrap();
        let p = req.params;
        assert_eq!(
            p.sampling,
            Sampling {
                temperature: 0.0,
                top_p: 0.5,
                top_k: 7,
                min_p: 0.1,
                repeat_penalty: 1.1,
                frequency_penalty: 0.5,
                presence_penalty: -0.5,
                seed: Some(42),
                ..Sampling::default()
            }
        );
        assert_eq!(p.max_tokens, Some(16));
        assert_eq!(p.stop, ["\n\n", "END"]);
        assert_eq!(
            p.keep_alive,
            Some(KeepAlive::For(Duration::from_secs(5400)))
        );
        assert_eq!(p.context, Some(4096));
        assert!(p.stream);
        assert!(p.include_usage);
        assert!(!p.truncate);
    }

    #[test]
    fn range_checks_name_field_value_and_limit() {
        let cases = [
            (
                "temperature",
                json!(3.5),
                "temperature 3.5 is out of range: 0 to 2",
            ),
            (
                "temperature",
                json!(-0.1),
                "temperature -0.1 is out of range: 0 to 2",
            ),
            (
                "top_p",
                json!(0),
                "top_p 0 is out of range: above 0, up to 1",
            ),
            (
                "top_p",
                json!(1.5),
                "top_p 1.5 is out of range: above 0, up to 1",
            ),
            ("min_p", json!(2), "min_p 2 is out of range: 0 to 1"),
            (
                "repeat_penalty",
                json!(0),
                "repeat_penalty 0 is out of range: above 0, up to 10",
            ),
            (
                "repeat_penalty",
                json!(11),
                "repeat_penalty 11 is out of range: above 0, up to 10",
            ),
            (
                "frequency_penalty",
                json!(2.5),
                "frequency_penalty 2.5 is out of range: -2 to 2",
            ),
            (
                "presence_penalty",
                json!(-3),
                "presence_penalty -3 is out of range: -2 to 2",
            ),
            (
                "top_k",
                json!(-1),
                "top_k -1 is out of range: 0 to 4294967295",
            ),
            (
                "max_tokens",
                json!(0),
                "max_tokens 0 is out of range: 1 to 4294967295",
            ),
            (
                "max_completion_tokens",
                json!(0),
                "max_completion_tokens 0 is out of range: 1 to 4294967295",
            ),
            (
                "max_tokens",
                json!(5_000_000_000u64),
                "max_tokens 5000000000 is out of range: 1 to 4294967295",
            ),
            (
                "context",
                json!(100),
                "context 100 is out of range: 256 to 1048576",
            ),
            (
                "context",
                json!(2_000_000),
                "context 2000000 is out of range: 256 to 1048576",
            ),
            (
                "seed",
                json!(4_294_967_296u64),
                "seed 4294967296 is out of range: 0 to 4294967295 (or -1 for a random seed)",
            ),
            (
                "seed",
                json!(-2),
                "seed -2 is out of range: 0 to 4294967295 (or -1 for a random seed)",
            ),
        ];
        for (name, value, message) in cases {
            assert_invalid(chat_with(json!({ name: value.clone() })), name, message);
            // The completion endpoint shares the checks.
            assert_invalid(completion_with(json!({ name: value })), name, message);
        }
    }

    #[test]
    fn range_edges_are_accepted() {
        let req = chat_with(json!({
            "temperature": 2, "top_p": 1, "min_p": 0, "repeat_penalty": 10,
            "frequency_penalty": -2, "presence_penalty": 2, "context": 256,
            "max_tokens": 1, "seed": 4_294_967_295u64, "top_k": 0,
        }))
        .unwrap();
        assert_eq!(req.params.sampling.temperature, 2.0);
        assert_eq!(req.params.sampling.seed, Some(u32::MAX));
        assert_eq!(req.params.context, Some(256));
        assert_eq!(req.params.max_tokens, Some(1));
    }

    #[test]
    fn type_errors_name_the_field_and_what_came() {
        assert_invalid(
            chat_with(json!({"temperature": "hot"})),
            "temperature",
            "temperature must be a number, got the string \"hot\"",
        );
        assert_invalid(
            chat_with(json!({"stream": "yes"})),
            "stream",
            "stream must be true or false, got the string \"yes\"",
        );
        assert_invalid(
            chat_with(json!({"max_tokens": 1.5})),
            "max_tokens",
            "max_tokens must be an integer, got 1.5",
        );
        assert_invalid(
            chat_with(json!({"stream_options": {"include_usage": 1}})),
            "stream_options.include_usage",
            "stream_options.include_usage must be true or false, got 1",
        );
        assert_invalid(
            chat_with(json!({"model": 7})),
            "model",
            "model must be a string, got 7",
        );
    }

    #[test]
    fn truncate_is_a_bool_that_defaults_to_true_on_both_endpoints() {
        for (value, expected) in [
            (json!(true), true),
            (json!(false), false),
            (Value::Null, true),
        ] {
            let body = json!({ "truncate": value });
            assert_eq!(
                chat_with(body.clone()).unwrap().params.truncate,
                expected,
                "{value}"
            );
            assert_eq!(
                completion_with(body).unwrap().params.truncate,
                expected,
                "{value}"
            );
        }
        assert!(completion_with(json!({})).unwrap().params.truncate);
        assert!(chat_with(json!({})).unwrap().params.cache_prompt);
        assert!(
            !chat_with(json!({"cache_prompt": false}))
                .unwrap()
                .params
                .cache_prompt
        );
        assert_invalid(
            chat_with(json!({"cache_prompt": 1})),
            "cache_prompt",
            "cache_prompt must be true or false, got 1",
        );
        for bad in [json!("yes"), json!(1), json!({})] {
            let message = format!("truncate must be true or false, got {}", describe(&bad));
            let body = json!({ "truncate": bad });
            assert_invalid(chat_with(body.clone()), "truncate", &message);
            assert_invalid(completion_with(body), "truncate", &message);
        }
    }

    #[test]
    fn integral_floats_count_as_integers() {
        // Python's json module writes 100.0 for a float 100.
        let req = chat_with(json!({"max_tokens": 100.0, "seed": 3.0})).unwrap();
        assert_eq!(req.params.max_tokens, Some(100));
        assert_eq!(req.params.sampling.seed, Some(3));
    }

    #[test]
    fn unknown_fields_and_nulls_are_ignored() {
        let req = chat_with(json!({
            "store": true, "metadata": {"a": 1}, "service_tier": "auto",
            "parallel_tool_calls": false, "tool_choice": "none",
            "some_future_field": [1, 2, 3],
            "temperature": null, "stop": null, "max_tokens": null, "seed": null,
            "tools": null, "logprobs": null, "response_format": null, "n": null,
        }))
        .unwrap();
        assert_eq!(req.params, chat_with(json!({})).unwrap().params);
    }

    #[test]
    fn seed_minus_one_is_random() {
        let req = chat_with(json!({"seed": -1})).unwrap();
        assert_eq!(req.params.sampling.seed, None);
    }

    #[test]
    fn n_other_than_one_is_refused_by_name() {
        assert_invalid(
            chat_with(json!({"n": 2})),
            "n",
            "n 2 is not supported: Locara generates one choice per request",
        );
        assert_invalid(
            completion_with(json!({"n": 0})),
            "n",
            "n 0 is not supported: Locara generates one choice per request",
        );
        assert!(chat_with(json!({"n": 1})).is_ok());
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let both = chat_with(json!({"max_tokens": 10, "max_completion_tokens": 20})).unwrap();
        assert_eq!(both.params.max_tokens, Some(20));
        let old = chat_with(json!({"max_tokens": 10})).unwrap();
        assert_eq!(old.params.max_tokens, Some(10));
        let new = chat_with(json!({"max_completion_tokens": 30})).unwrap();
        assert_eq!(new.params.max_tokens, Some(30));
        // A bad max_tokens is refused even when max_completion_tokens is fine.
        assert_invalid(
            chat_with(json!({"max_tokens": 0, "max_completion_tokens": 5})),
            "max_tokens",
            "max_tokens 0 is out of range: 1 to 4294967295",
        );
    }

    #[test]
    fn stop_as_string_and_array() {
        let one = chat_with(json!({"stop": "\n"})).unwrap();
        assert_eq!(one.params.stop, ["\n"]);
        let four = chat_with(json!({"stop": ["a", "b", "c", "d"]})).unwrap();
        assert_eq!(four.params.stop, ["a", "b", "c", "d"]);
        let none = chat_with(json!({"stop": []})).unwrap();
        assert!(none.params.stop.is_empty());
        assert_invalid(
            chat_with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
            "stop has 5 strings, more than the limit of 4",
        );
        assert_invalid(
            chat_with(json!({"stop": ["a", ""]})),
            "stop[1]",
            "stop[1] must not be empty",
        );
        assert_invalid(
            chat_with(json!({"stop": ""})),
            "stop",
            "stop must not be an empty string",
        );
        assert_invalid(
            chat_with(json!({"stop": ["a", 3]})),
            "stop[1]",
            "stop[1] must be a string, got 3",
        );
        assert_invalid(
            chat_with(json!({"stop": 3})),
            "stop",
            "stop must be a string or an array of strings, got 3",
        );
    }

    /// A NUL byte in a message was a 500 `server_error` from the worker.
    #[test]
    fn a_nul_byte_in_text_is_a_400_naming_the_field() {
        assert_invalid(
            chat_with(json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "a\0b"},
            ]})),
            "messages[1].content",
            "messages[1].content holds a NUL byte (at byte 1): text must not contain U+0000",
        );
        assert_invalid(
            completion_with(json!({"prompt": "\0"})),
            "prompt",
            "prompt holds a NUL byte (at byte 0): text must not contain U+0000",
        );
    }

    #[test]
    fn content_parts_of_text_are_joined() {
        let req = chat_with(json!({"messages": [{
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        }]}))
        .unwrap();
        assert_eq!(req.messages[0].content, "first\nsecond");
    }

    #[test]
    fn content_parts_other_than_text_are_refused_by_name() {
        let result = chat_with(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ]}));
        assert_invalid(
            result,
            "messages[1].content[1].type",
            "messages[1].content[1].type \"image_url\" is not supported: Locara models take text parts only",
        );
        assert_invalid(
            chat_with(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})),
            "messages[0].content[0].text",
            "messages[0].content[0].text is required",
        );
        assert_invalid(
            chat_with(json!({"messages": [{"role": "user", "content": 5}]})),
            "messages[0].content",
            "messages[0].content must be a string or an array of text parts, got 5",
        );
    }

    #[test]
    fn roles_are_checked_and_developer_becomes_system() {
        let req = chat_with(json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null},
            {"role": "tool", "content": "42"},
        ]}))
        .unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        // A tool result is a user turn (see tools.rs).
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(req.messages[2].content, "");
        assert_eq!(
            req.messages[3].content,
            "<tool_response>\n{\"content\": 42}\n</tool_response>"
        );
        assert_invalid(
            chat_with(json!({"messages": [{"role": "function", "content": "x"}]})),
            "messages[0].role",
            "messages[0].role \"function\" is not a role: use system, user, assistant, tool or developer",
        );
        assert_invalid(
            chat_with(json!({"messages": [{"role": "user"}]})),
            "messages[0].content",
            "messages[0].content is required",
        );
    }

    #[test]
    fn messages_and_model_are_required() {
        assert_invalid(
            chat_with(json!({"messages": []})),
            "messages",
            "messages must not be empty: give at least one message",
        );
        assert_invalid(
            ChatRequest::from_json(&json!({"model": "m"})),
            "messages",
            "messages is required: an array of chat messages",
        );
        assert_invalid(
            ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "Hi"}]})),
            "model",
            "model is required: the name of a model",
        );
        assert_invalid(
            chat_with(json!({"model": " "})),
            "model",
            "model must not be empty",
        );
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        for (name, value) in [
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!("auto")),
        ] {
            let err = chat_with(json!({ name: value })).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(name), "{err:?}");
            assert!(
                err.message
                    .starts_with(&format!("{name} is not supported: ")),
                "{err:?}"
            );
            assert_eq!(err.code.as_deref(), Some("unsupported_parameter"));
        }
    }

    #[test]
    fn tools_put_their_block_in_the_system_message_and_the_grammar_in_sampling() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather?"}],
            "tools":[{"type":"function","function":{"name":"get_weather",
              "parameters":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},"required":["zeta"]}}}],
            "tool_choice":"required"}"#;
        let req = parse_chat(body).unwrap();
        assert_eq!(req.messages.len(), 2);
        assert!(req.messages[0]
            .content
            .starts_with("Be brief.\n\nYou can call functions"));
        // The body's property order, in the prompt and in the grammar.
        assert!(
            req.messages[0]
                .content
                .contains(r#""properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}"#),
            "{}",
            req.messages[0].content
        );
        let g = req.params.sampling.grammar.unwrap();
        assert!(g.find("zeta").unwrap() < g.find("alpha").unwrap(), "{g}");
        assert!(g.starts_with("root ::= call ( ws call )"), "{g}");
        assert_eq!(
            req.params.tools,
            Some(CallFormat {
                text_allowed: false
            })
        );
        // tool_choice none: text, no block, no grammar.
        let none = chat_with(json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}))
            .unwrap();
        assert_eq!(none.params.tools, None);
        assert_eq!(none.params.sampling.grammar, None);
        assert_eq!(none.messages.len(), 1);
    }

    #[test]
    fn tools_refuse_what_would_break_a_call() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_invalid(
            chat_with(json!({"tools": tools, "stop": ["\n"]})),
            "stop",
            "stop with tools is not supported: a stop string could end the answer inside a tool call",
        );
        let err = chat_with(json!({"tools": tools, "response_format": {"type": "json_object"}}))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("response_format"));
        assert_eq!(err.code.as_deref(), Some("unsupported_parameter"));
        // Both are fine without a call to protect.
        chat_with(json!({"tools": tools, "tool_choice": "none", "stop": ["\n"], "response_format": {"type": "json_object"}}))
            .unwrap();
    }

    #[test]
    fn earlier_calls_and_their_results_go_back_into_the_conversation() {
        let req = chat_with(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "21 C"},
            {"role": "tool", "tool_call_id": "call_b", "content": "{\"celsius\": 25}"},
            {"role": "user", "content": "Thanks"},
        ]}))
        .unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "user"]);
        assert_eq!(
            req.messages[1].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Rome\"}}\n</tool_call>"
        );
        assert_eq!(
            req.messages[2].content,
            "<tool_response>\n{\"name\": \"get_weather\", \"content\": \"21 C\"}\n</tool_response>\n<tool_response>\n{\"name\": \"get_weather\", \"content\": {\"celsius\":25}}\n</tool_response>"
        );
        assert_eq!(req.messages[3].content, "Thanks");
        assert_invalid(
            chat_with(json!({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]})),
            "messages[0].tool_calls",
            "messages[0].tool_calls must be an array, got an object",
        );
    }

    #[test]
    fn response_format_becomes_a_grammar() {
        let grammar = |extra: Value| chat_with(extra).unwrap().params.sampling.grammar;
        assert_eq!(grammar(json!({"response_format": {"type": "text"}})), None);
        assert_eq!(
            grammar(json!({"response_format": {"type": "json_object"}})),
            Some(grammar::json_object())
        );
        let g = grammar(
            json!({"response_format": {"type": "json_schema", "json_schema": {
                "name": "person", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                           "required": ["name"], "additionalProperties": false},
            }}}),
        )
        .unwrap();
        assert!(g.contains(r#""\"name\"" ws ":" ws string ws"#), "{g}");
        // No schema: any JSON value, as OpenAI's schema is optional.
        let g = grammar(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "any"}}}),
        );
        assert!(g.unwrap().starts_with("root ::= value\n"));
        // The completion endpoint takes it too.
        assert_eq!(
            completion_with(json!({"response_format": {"type": "json_object"}}))
                .unwrap()
                .params
                .sampling
                .grammar,
            Some(grammar::json_object())
        );
    }

    #[test]
    fn parse_chat_keeps_the_schemas_property_order() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"Hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"o","schema":
            {"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},
             "required":["zeta","alpha"]}}}}"#;
        let g = parse_chat(body).unwrap().params.sampling.grammar.unwrap();
        assert!(g.find("zeta").unwrap() < g.find("alpha").unwrap(), "{g}");
        // from_json has only serde_json's sorted order.
        let v: Value = serde_json::from_slice(body).unwrap();
        let g = ChatRequest::from_json(&v)
            .unwrap()
            .params
            .sampling
            .grammar
            .unwrap();
        assert!(g.find("alpha").unwrap() < g.find("zeta").unwrap(), "{g}");
    }

    #[test]
    fn a_schema_keyword_locara_cannot_enforce_is_a_400_naming_it() {
        let err = chat_with(json!({"response_format": {"type": "json_schema", "json_schema": {
            "name": "event",
            "schema": {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}},
        }}}))
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(
            err.param.as_deref(),
            Some("response_format.json_schema.schema.properties.when")
        );
        assert!(
            err.message.starts_with(
                "response_format.json_schema.schema.properties.when uses the JSON Schema keyword \"format\", which Locara cannot enforce"
            ),
            "{}",
            err.message
        );
        assert_eq!(err.code.as_deref(), Some("unsupported_parameter"));
        let err = chat_with(
            json!({"response_format": {"type": "json_schema", "json_schema": {
                "name": "n", "schema": {"type": "array", "maxItems": 1000},
            }}}),
        )
        .unwrap_err();
        assert_eq!(
            err.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(err.message.contains("at most 100"), "{}", err.message);
    }

    #[test]
    fn response_format_shapes_are_checked_by_name() {
        let rf = |v: Value| chat_with(json!({ "response_format": v }));
        assert_invalid(
            rf(json!({"type": "xml"})),
            "response_format.type",
            "response_format.type \"xml\" is not supported: use text, json_object or json_schema",
        );
        assert_invalid(
            rf(json!("json")),
            "response_format",
            "response_format must be an object such as {\"type\": \"json_object\"}, got the string \"json\"",
        );
        assert_invalid(
            rf(json!({"type": "json_schema"})),
            "response_format.json_schema",
            "response_format.json_schema is required with type json_schema: an object with name and schema",
        );
        assert_invalid(
            rf(json!({"type": "json_schema", "json_schema": {"schema": {}}})),
            "response_format.json_schema.name",
            "response_format.json_schema.name is required",
        );
        assert_invalid(
            rf(json!({"type": "json_schema", "json_schema": {"name": "a b"}})),
            "response_format.json_schema.name",
            "response_format.json_schema.name \"a b\" must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
        );
        assert_invalid(
            rf(json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}})),
            "response_format.json_schema.strict",
            "response_format.json_schema.strict must be true or false, got the string \"yes\"",
        );
    }

    #[test]
    fn logit_bias_is_read_and_checked() {
        let req = chat_with(json!({"logit_bias": {"50256": -100, "7": 2.5}})).unwrap();
        let mut bias = req.params.sampling.logit_bias;
        bias.sort_by_key(|b| b.token);
        assert_eq!(
            bias,
            [
                LogitBias {
                    token: 7,
                    bias: 2.5
                },
                LogitBias {
                    token: 50256,
                    bias: -100.0
                }
            ]
        );
        assert_invalid(
            chat_with(json!({"logit_bias": {"hello": 1}})),
            "logit_bias",
            "logit_bias key \"hello\" is not a token id: keys are the ids of the model's tokens, as strings",
        );
        assert_invalid(
            chat_with(json!({"logit_bias": {"5": 101}})),
            "logit_bias.5",
            "logit_bias.5 101 is out of range: -100 to 100",
        );
        assert_invalid(
            completion_with(json!({"logit_bias": [1]})),
            "logit_bias",
            "logit_bias must be an object of token ids to biases, got an array",
        );
    }

    #[test]
    fn logprobs_take_each_endpoints_shape() {
        let chat = |extra: Value| chat_with(extra).map(|r| r.params.sampling.logprobs);
        assert_eq!(chat(json!({})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": false})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(
            chat(json!({"logprobs": true, "top_logprobs": 20})).unwrap(),
            Some(20)
        );
        assert_eq!(chat(json!({"top_logprobs": 0})).unwrap(), None);
        assert_invalid(
            chat(json!({"top_logprobs": 3})),
            "top_logprobs",
            "top_logprobs 3 needs logprobs: true",
        );
        assert_invalid(
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
            "top_logprobs 21 is out of range: 0 to 20",
        );
        assert_invalid(
            chat(json!({"logprobs": 2})),
            "logprobs",
            "logprobs must be true or false, got 2",
        );
        let completion = |extra: Value| completion_with(extra).map(|r| r.params.sampling.logprobs);
        assert_eq!(completion(json!({"logprobs": 2})).unwrap(), Some(2));
        assert_eq!(completion(json!({"logprobs": 0})).unwrap(), Some(0));
        assert_invalid(
            completion(json!({"logprobs": 6})),
            "logprobs",
            "logprobs 6 is out of range: 0 to 5",
        );
    }

    #[test]
    fn body_that_is_not_an_object_is_refused() {
        let err = parse_chat(b"[1, 2]").unwrap_err();
        assert_eq!(err.kind, ErrorType::InvalidRequest);
        assert_eq!(err.param, None);
        assert_eq!(
            err.message,
            "request body must be a JSON object, got an array"
        );
        let err = parse_completion(b"\"text\"").unwrap_err();
        assert_eq!(
            err.message,
            "request body must be a JSON object, got the string \"text\""
        );
        let err = parse_chat(b"{\"model\": ").unwrap_err();
        assert!(
            err.message.starts_with("request body is not valid JSON: "),
            "{err:?}"
        );
        let err = parse_chat(b"  \n").unwrap_err();
        assert_eq!(err.message, "request body is empty; expected a JSON object");
    }

    #[test]
    fn parse_chat_reads_bytes() {
        let req = parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":5}"#,
        )
        .unwrap();
        assert_eq!(req.model, "m");
        assert_eq!(req.params.max_tokens, Some(5));
    }

    #[test]
    fn completion_prompt_forms() {
        assert_eq!(completion_with(json!({})).unwrap().prompt, "Once upon");
        let one = completion_with(json!({"prompt": ["a time"]})).unwrap();
        assert_eq!(one.prompt, "a time");
        assert_invalid(
            completion_with(json!({"prompt": ["a", "b"]})),
            "prompt",
            "prompt holds 2 entries: Locara generates for one prompt per request",
        );
        assert_invalid(
            completion_with(json!({"prompt": [1, 2, 3]})),
            "prompt",
            "prompt as token ids is not supported: send the text",
        );
        assert_invalid(
            completion_with(json!({"prompt": []})),
            "prompt",
            "prompt must not be an empty array",
        );
        assert_invalid(
            completion_with(json!({"prompt": ""})),
            "prompt",
            "prompt must not be empty",
        );
        assert_invalid(
            completion_with(json!({"prompt": {"text": "x"}})),
            "prompt",
            "prompt must be a string, got an object",
        );
    }

    #[test]
    fn completion_refuses_echo_suffix_best_of_by_name() {
        assert_invalid(
            completion_with(json!({"echo": true})),
            "echo",
            "echo is not supported: Locara does not repeat the prompt in the answer",
        );
        assert_invalid(
            completion_with(json!({"suffix": "}"})),
            "suffix",
            "suffix is not supported: Locara does not fill in the middle",
        );
        assert_invalid(
            completion_with(json!({"best_of": 3})),
            "best_of",
            "best_of 3 is not supported: Locara generates one choice per request",
        );
        let neutral =
            completion_with(json!({"echo": false, "suffix": "", "best_of": 1, "logprobs": null}))
                .unwrap();
        assert_eq!(neutral.params, completion_with(json!({})).unwrap().params);
    }

    #[test]
    fn keep_alive_forms() {
        let secs = |s| KeepAlive::For(Duration::from_secs(s));
        let cases = [
            (json!(0), KeepAlive::UnloadWhenDone),
            (json!(-1), KeepAlive::Forever),
            (json!(-300), KeepAlive::Forever),
            (json!(300), secs(300)),
            (json!(1.5), KeepAlive::For(Duration::from_millis(1500))),
            (json!("0"), KeepAlive::UnloadWhenDone),
            (json!("0s"), KeepAlive::UnloadWhenDone),
            (json!("-1"), KeepAlive::Forever),
            (json!("-5m"), KeepAlive::Forever),
            (json!("300"), secs(300)),
            (json!("30s"), secs(30)),
            (json!("90s"), secs(90)),
            (json!("3m"), secs(180)),
            (json!("5m"), secs(300)),
            (json!("1h"), secs(3600)),
            (json!("1h30m"), secs(5400)),
            (json!("1.5h"), secs(5400)),
            (json!(" 2d "), secs(2 * 86_400)),
            (json!("250ms"), KeepAlive::For(Duration::from_millis(250))),
            (json!("30d"), KeepAlive::For(MAX_KEEP_ALIVE)),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_keep_alive(&value), Ok(expected), "{value}");
        }
        for bad in ["", "5x", "m", "1h30", "1..5s", "--1", "five minutes", "5 m"] {
            let err = parse_keep_alive(&json!(bad)).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("keep_alive"));
            assert!(
                err.message
                    .starts_with(&format!("keep_alive {bad:?} is not a duration")),
                "{bad}: {err:?}"
            );
        }
        assert_invalid(
            chat_with(json!({"keep_alive": "31d"})),
            "keep_alive",
            "keep_alive 31d is out of range: at most 30 days (-1 keeps the model loaded)",
        );
        assert_invalid(
            chat_with(json!({"keep_alive": 2_592_001})),
            "keep_alive",
            "keep_alive 2592001 is out of range: at most 30 days (-1 keeps the model loaded)",
        );
        assert_invalid(
            chat_with(json!({"keep_alive": true})),
            "keep_alive",
            "keep_alive must be a number of seconds or a duration string such as \"5m\", got true",
        );
    }

    #[test]
    fn keep_alive_config_strings_round_trip() {
        for s in ["3m", "0", "-1", "90s", "1h30m", "2d", "250ms", "1h1m1s"] {
            let k: KeepAlive = s.parse().unwrap();
            let shown = k.to_string();
            assert_eq!(KeepAlive::parse(&shown), Ok(k), "{s} -> {shown}");
        }
        assert_eq!(KeepAlive::parse("90s").unwrap().to_string(), "1m30s");
        assert_eq!(
            KeepAlive::parse("3m").unwrap().idle_limit(),
            Some(Duration::from_secs(180))
        );
        assert_eq!(KeepAlive::Forever.idle_limit(), None);
        // Huge numbers are out of range, not an overflow.
        assert!(matches!(
            KeepAlive::parse("99999999999999999999999h"),
            Err(KeepAliveError::TooLong { .. })
        ));
    }
}
