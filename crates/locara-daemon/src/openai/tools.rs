//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` read and
//! checked, the prompt that tells the model about its functions, the
//! conversation's earlier calls and results written into its messages, and
//! the answer read back into calls ([`CallParser`]).
//!
//! # The format
//!
//! The worker renders chats with llama.cpp's built-in template matcher
//! (`llama_chat_apply_template`, all that `llama-cpp-2` 0.1.160 exposes):
//! it has no tools, so no model's own tool format is reachable and every
//! model gets one generic format, the tags of the Hermes and Qwen formats
//! (which small instruction models, SmolLM2 among them, have seen):
//!
//! * the system message gains a block listing the functions (as OpenAI's
//!   `{"type": "function", "function": {...}}` objects) and saying how to
//!   call them;
//! * a call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//!   and the answer is decoded under a grammar
//!   ([`locara_engine::grammar::tool_calls`]) in which each function's
//!   arguments follow its parameters' schema: a forced call is always
//!   well-formed and its arguments validate;
//! * with `tool_choice: "auto"` the grammar allows plain text as the other
//!   choice: an answer that begins with `<tool_call>` is calls to its end,
//!   any other is text. A call comes first or not at all (no text before
//!   it);
//! * an assistant message's earlier `tool_calls` are written into its
//!   content in the same format; `role: "tool"` results become a user turn
//!   of `<tool_response>` blocks (`{"name", "content"}`; consecutive
//!   results share one turn), as chat templates without tools know no
//!   `tool` role.
//!
//! `tool_choice: "none"` leaves the functions out of the prompt and the
//! answer is text. `parallel_tool_calls: false` allows one call; true (the
//! default) up to [`MAX_TOOL_CALLS`]. A named function allows one call of
//! it.

use super::error::ApiError;
use super::request::{as_bool, as_str, describe, field, no_nul};
use locara_core::text::shorten;
use locara_engine::grammar::{
    self, Json, SchemaError, ToolSpec, MAX_TOOL_CALLS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN,
};
use locara_engine::protocol::ChatMessage;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Most functions one request may list (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// What opens a tool result in the prompt.
pub const TOOL_RESPONSE_OPEN: &str = "<tool_response>";

/// What closes a tool result.
pub const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the functions are left out of the prompt.
    None,
    /// Text or calls, as the model chooses.
    Auto,
    /// One call or more.
    Required,
    /// One call of this function.
    Function(String),
}

/// How an answer to a request with tools is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFormat {
    /// Whether the answer may be text instead of calls (`auto`).
    pub text_allowed: bool,
}

/// What a request's tools change: the prompt's block, the grammar of the
/// answer and how it is read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSetup {
    /// Added to the system message (or made the system message).
    pub prompt: String,
    /// GBNF of the answer.
    pub grammar: String,
    pub format: CallFormat,
}

/// One function of `tools`.
#[derive(Debug, Clone, PartialEq)]
struct Function {
    name: String,
    /// The whole `{"type":"function","function":{...}}` as the prompt shows it.
    listing: String,
    parameters: Option<Json>,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; `None` when
/// there are no tools or the choice is `none`. `ordered` holds each tool's
/// `parameters` with the body's key order, where the body could be read so.
pub fn parse_tools(
    obj: &Map<String, Value>,
    ordered: &[Option<Json>],
) -> Result<Option<ToolSetup>, ApiError> {
    let functions = match field(obj, "tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => parse_functions(tools, ordered)?,
        Some(other) => {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "tools must be an array of {{\"type\": \"function\", \"function\": {{...}}}}, got {}",
                    describe(other)
                ),
            ))
        }
    };
    let choice = parse_choice(obj, &functions)?;
    let parallel = field(obj, "parallel_tool_calls")
        .map(|v| as_bool("parallel_tool_calls", v))
        .transpose()?
        .unwrap_or(true);
    if functions.is_empty() || choice == ToolChoice::None {
        return Ok(None);
    }
    // Every function's schema is checked, even when one is named.
    let specs: Vec<ToolSpec<'_>> = functions
        .iter()
        .map(|f| ToolSpec {
            name: &f.name,
            parameters: f.parameters.as_ref(),
        })
        .collect();
    let max_calls = if parallel { MAX_TOOL_CALLS } else { 1 };
    let text_allowed = choice == ToolChoice::Auto;
    let all = grammar::tool_calls(&specs, text_allowed, max_calls).map_err(|e| {
        let param = format!("tools[{}].function.parameters{}", e.index, e.error.path());
        let message = format!("{param} {}", e.error);
        match e.error {
            SchemaError::Unsupported { .. } => {
                ApiError::invalid(param, message).with_code("unsupported_parameter")
            }
            SchemaError::Invalid { .. } => ApiError::invalid(param, message),
        }
    })?;
    let grammar = match &choice {
        ToolChoice::Function(name) => {
            let spec = specs
                .iter()
                .find(|s| s.name == name)
                .expect("parse_choice checked the name");
            grammar::tool_calls(std::slice::from_ref(spec), false, 1)
                .expect("the same schema converted above")
        }
        _ => all,
    };
    Ok(Some(ToolSetup {
        prompt: prompt_block(&functions, &choice, parallel),
        grammar,
        format: CallFormat { text_allowed },
    }))
}

/// OpenAI's rule for a function's name; it also keeps the name free of
/// anything JSON or the grammar would have to escape.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_functions(tools: &[Value], ordered: &[Option<Json>]) -> Result<Vec<Function>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "tools holds {} functions; the limit is {MAX_TOOLS}",
                tools.len()
            ),
        ));
    }
    let mut functions: Vec<Function> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(tool) = tool else {
            return Err(ApiError::invalid(
                &at,
                format!(
                    "{at} must be an object such as {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {}",
                    describe(tool)
                ),
            ));
        };
        if let Some(kind) = field(tool, "type") {
            let type_at = format!("{at}.type");
            let kind = as_str(&type_at, kind)?;
            if kind != "function" {
                return Err(ApiError::invalid(
                    &type_at,
                    format!(
                        "{type_at} {:?} is not supported: Locara's tools are functions",
                        shorten(kind, 40)
                    ),
                )
                .with_code("unsupported_parameter"));
            }
        }
        let fn_at = format!("{at}.function");
        let Some(Value::Object(function)) = field(tool, "function") else {
            return Err(ApiError::invalid(
                &fn_at,
                format!("{fn_at} is required: an object with name, description and parameters"),
            ));
        };
        let name_at = format!("{fn_at}.name");
        let name = field(function, "name")
            .ok_or_else(|| ApiError::invalid(&name_at, format!("{name_at} is required")))?;
        let name = as_str(&name_at, name)?;
        if !valid_name(name) {
            return Err(ApiError::invalid(
                &name_at,
                format!(
                    "{name_at} {:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                    shorten(name, 40)
                ),
            ));
        }
        if let Some(j) = functions.iter().position(|f| f.name == name) {
            return Err(ApiError::invalid(
                &name_at,
                format!("{name_at} {name:?} is the name of tools[{j}] too: names must differ"),
            ));
        }
        let description = field(function, "description")
            .map(|v| as_str(&format!("{fn_at}.description"), v))
            .transpose()?;
        if let Some(d) = description {
            no_nul(&format!("{fn_at}.description"), d)?;
        }
        if let Some(strict) = field(function, "strict") {
            // Either way the schema is enforced.
            as_bool(&format!("{fn_at}.strict"), strict)?;
        }
        let params_at = format!("{fn_at}.parameters");
        let parameters = match field(function, "parameters") {
            None => None,
            Some(v @ Value::Object(_)) => Some(
                ordered
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| Json::from(v)),
            ),
            Some(other) => {
                return Err(ApiError::invalid(
                    &params_at,
                    format!(
                        "{params_at} must be a JSON Schema object, got {}",
                        describe(other)
                    ),
                ))
            }
        };
        let mut listing = vec![("name".to_owned(), Json::String(name.to_owned()))];
        if let Some(d) = description {
            listing.push(("description".to_owned(), Json::String(d.to_owned())));
        }
        if let Some(p) = &parameters {
            listing.push(("parameters".to_owned(), p.clone()));
        }
        let listing = Json::Object(vec![
            ("type".to_owned(), Json::String("function".to_owned())),
            ("function".to_owned(), Json::Object(listing)),
        ]);
        functions.push(Function {
            name: name.to_owned(),
            listing: listing.to_text(),
            parameters,
        });
    }
    Ok(functions)
}

fn parse_choice(obj: &Map<String, Value>, functions: &[Function]) -> Result<ToolChoice, ApiError> {
    let at = "tool_choice";
    let choice = match field(obj, at) {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    at,
                    format!(
                        "{at} {:?} is not a choice: use none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                        shorten(other, 40)
                    ),
                ))
            }
        },
        Some(Value::Object(o)) => {
            if let Some(kind) = field(o, "type") {
                let kind = as_str("tool_choice.type", kind)?;
                if kind != "function" {
                    return Err(ApiError::invalid(
                        "tool_choice.type",
                        format!(
                            "tool_choice.type {:?} is not supported: name a function with {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                            shorten(kind, 40)
                        ),
                    )
                    .with_code("unsupported_parameter"));
                }
            }
            let name_at = "tool_choice.function.name";
            let name = match field(o, "function") {
                Some(Value::Object(f)) => field(f, "name"),
                _ => None,
            }
            .ok_or_else(|| ApiError::invalid(name_at, format!("{name_at} is required")))?;
            let name = as_str(name_at, name)?;
            if !functions.iter().any(|f| f.name == name) {
                return Err(ApiError::invalid(
                    name_at,
                    format!(
                        "{name_at} {:?} is not one of the functions in tools",
                        shorten(name, 40)
                    ),
                ));
            }
            ToolChoice::Function(name.to_owned())
        }
        Some(other) => {
            return Err(ApiError::invalid(
                at,
                format!(
                    "{at} must be none, auto, required or an object naming a function, got {}",
                    describe(other)
                ),
            ))
        }
    };
    if functions.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(ApiError::invalid(
            at,
            format!("{at} asks for a call, but the request has no tools"),
        ));
    }
    Ok(choice)
}

/// The system prompt's block: the functions and how to call them.
fn prompt_block(functions: &[Function], choice: &ToolChoice, parallel: bool) -> String {
    let mut out = String::from(
        "You can call functions to help you answer. Their signatures, as JSON Schema, are between <tools> and </tools>:\n<tools>\n",
    );
    for f in functions {
        out.push_str(&f.listing);
        out.push('\n');
    }
    out.push_str("</tools>\n");
    out.push_str(&format!(
        "To call a function, reply with a JSON object holding its name and its arguments between {TOOL_CALL_OPEN} and {TOOL_CALL_CLOSE}, like this:\n{TOOL_CALL_OPEN}\n{{\"name\": \"function_name\", \"arguments\": {{\"argument\": \"value\"}}}}\n{TOOL_CALL_CLOSE}\n"
    ));
    out.push_str(match choice {
        ToolChoice::Auto => {
            "If no function is needed, answer in plain text instead. The results of your calls will come back to you between <tool_response> and </tool_response>."
        }
        _ => "The results of your calls will come back to you between <tool_response> and </tool_response>.",
    });
    match choice {
        ToolChoice::Required => out.push_str(" Call a function now."),
        ToolChoice::Function(name) => out.push_str(&format!(" Call the function {name} now.")),
        _ => {}
    }
    if parallel && !matches!(choice, ToolChoice::Function(_)) {
        out.push_str(" To call several functions, write one block after another.");
    } else {
        out.push_str(" Call one function at a time.");
    }
    out
}

/// Puts the tools' block into the conversation: after the first system
/// message's text, or as a system message of its own at the start.
pub fn add_to_system(messages: &mut Vec<ChatMessage>, block: &str) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            if !m.content.is_empty() {
                m.content.push_str("\n\n");
            }
            m.content.push_str(block);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                content: block.to_owned(),
            },
        ),
    }
}

/// A call written into the prompt (an earlier answer's) or read from one.
fn call_text(name: &str, arguments: &str) -> String {
    // Arguments that are not JSON stay as the client sent them, a string.
    let arguments = serde_json::from_str::<Value>(arguments)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| Value::String(arguments.to_owned()).to_string());
    format!(
        "{TOOL_CALL_OPEN}\n{{\"name\": {}, \"arguments\": {arguments}}}\n{TOOL_CALL_CLOSE}",
        Value::String(name.to_owned())
    )
}

/// An earlier call: its id (OpenAI's; Ollama's calls have none) and its
/// function's name.
pub type CallRef = (Option<String>, String);

/// An assistant message's `tool_calls` (OpenAI's, arguments a JSON string,
/// or Ollama's, arguments an object): the text the prompt shows after its
/// content, and each call's id and name (for the results that follow).
pub fn read_assistant_calls(at: &str, calls: &Value) -> Result<(String, Vec<CallRef>), ApiError> {
    let at = format!("{at}.tool_calls");
    let Value::Array(calls) = calls else {
        return Err(ApiError::invalid(
            &at,
            format!("{at} must be an array, got {}", describe(calls)),
        ));
    };
    let mut text = Vec::with_capacity(calls.len());
    let mut named = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let call_at = format!("{at}[{j}]");
        let Value::Object(call) = call else {
            return Err(ApiError::invalid(
                &call_at,
                format!("{call_at} must be an object, got {}", describe(call)),
            ));
        };
        let id = field(call, "id")
            .map(|v| as_str(&format!("{call_at}.id"), v).map(str::to_owned))
            .transpose()?;
        let fn_at = format!("{call_at}.function");
        let Some(Value::Object(function)) = field(call, "function") else {
            return Err(ApiError::invalid(
                &fn_at,
                format!("{fn_at} is required: an object with name and arguments"),
            ));
        };
        let name_at = format!("{fn_at}.name");
        let name = field(function, "name")
            .ok_or_else(|| ApiError::invalid(&name_at, format!("{name_at} is required")))?;
        let name = as_str(&name_at, name)?;
        no_nul(&name_at, name)?;
        let args_at = format!("{fn_at}.arguments");
        let arguments = match field(function, "arguments") {
            None => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(other) => {
                return Err(ApiError::invalid(
                    &args_at,
                    format!(
                        "{args_at} must be a JSON string or an object, got {}",
                        describe(other)
                    ),
                ))
            }
        };
        no_nul(&args_at, &arguments)?;
        text.push(call_text(name, &arguments));
        named.push((id, name.to_owned()));
    }
    Ok((text.join("\n"), named))
}

/// A tool result as the prompt shows it: a `<tool_response>` block with
/// the function's name (when known) and the result (as JSON when it is
/// JSON, else as a string).
pub fn tool_response(name: Option<&str>, content: &str) -> String {
    let result = serde_json::from_str::<Value>(content)
        .unwrap_or_else(|_| Value::String(content.to_owned()));
    // Written by hand: `json!` would sort the keys, and the name reads
    // better first.
    let body = match name {
        Some(name) => format!("{{\"name\": {}, \"content\": {result}}}", Value::from(name)),
        None => format!("{{\"content\": {result}}}"),
    };
    format!("{TOOL_RESPONSE_OPEN}\n{body}\n{TOOL_RESPONSE_CLOSE}")
}

/// The names of the calls made so far in a conversation, by id, for the
/// results that name only the id.
#[derive(Debug, Default)]
pub struct CallNames(HashMap<String, String>);

impl CallNames {
    pub fn add(&mut self, calls: &[CallRef]) {
        for (id, name) in calls {
            if let Some(id) = id {
                self.0.insert(id.clone(), name.clone());
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(String::as_str)
    }
}

/// What a piece of an answer turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Plain text (the message's content).
    Text(String),
    /// A call begins: its place among the answer's calls and its function.
    CallStart { index: usize, name: String },
    /// More of a call's arguments (JSON text).
    Arguments { index: usize, text: String },
    /// A call's arguments are complete.
    CallEnd { index: usize },
}

/// A call read from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `call_` and 24 hex digits, unique per call.
    pub id: String,
    pub name: String,
    /// JSON text (incomplete when the answer was cut short).
    pub arguments: String,
    /// Whether the arguments were read to their end.
    pub complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `auto`, nothing decided yet: the text so far is a prefix of the tag.
    Undecided,
    Text,
    /// Before a call's arguments: the tag, `{"name": "...", "arguments":`.
    Head,
    /// In a call's arguments, at this depth of brackets.
    Arguments {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments: `}` and the closing tag.
    Tail,
    /// Between calls.
    Between,
}

/// Reads an answer, as it is generated, into text and calls. The grammar
/// makes the calls well-formed; text that does not fit them (an answer cut
/// short before a call's arguments began) comes out as text, so nothing
/// generated is lost.
#[derive(Debug)]
pub struct CallParser {
    state: State,
    /// Text not yet placed.
    pending: String,
    calls: Vec<Call>,
}

/// Whitespace as the grammar's `ws` writes it.
fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\n' | '\t' | '\r')
}

/// How far a head of text matched.
enum Scan {
    /// All of it matched and more is needed.
    More,
    /// It does not have the expected shape.
    Mismatch,
    /// Matched: the function's name and where its arguments begin.
    Head { name: String, arguments_at: usize },
}

/// Reads `<tool_call> {"name": "NAME", "arguments":` and the whitespace
/// between.
fn scan_head(text: &str) -> Scan {
    let mut rest = text;
    let expect = |lit: &str, rest: &mut &str| -> Option<Scan> {
        *rest = rest.trim_start_matches(is_ws);
        if rest.is_empty() {
            return Some(Scan::More);
        }
        if let Some(after) = rest.strip_prefix(lit) {
            *rest = after;
            None
        } else if lit.starts_with(*rest) {
            Some(Scan::More)
        } else {
            Some(Scan::Mismatch)
        }
    };
    for lit in [TOOL_CALL_OPEN, "{", "\"name\"", ":", "\""] {
        if let Some(scan) = expect(lit, &mut rest) {
            return scan;
        }
    }
    let Some(end) = rest.find('"') else {
        return if rest.contains('\\') {
            Scan::Mismatch
        } else {
            Scan::More
        };
    };
    let name = rest[..end].to_owned();
    rest = &rest[end + 1..];
    for lit in [",", "\"arguments\"", ":"] {
        if let Some(scan) = expect(lit, &mut rest) {
            return scan;
        }
    }
    rest = rest.trim_start_matches(is_ws);
    if rest.is_empty() {
        return Scan::More;
    }
    Scan::Head {
        name,
        arguments_at: text.len() - rest.len(),
    }
}

/// Reads `}` and the closing tag; `Some(consumed)` once complete, `None`
/// when more is needed, `Some(0)` when it does not fit.
fn scan_tail(text: &str) -> Option<usize> {
    let mut rest = text;
    for lit in ["}", TOOL_CALL_CLOSE] {
        rest = rest.trim_start_matches(is_ws);
        if rest.is_empty() {
            return None;
        }
        if let Some(after) = rest.strip_prefix(lit) {
            rest = after;
        } else if lit.starts_with(rest) {
            return None;
        } else {
            return Some(0);
        }
    }
    Some(text.len() - rest.len())
}

impl CallParser {
    pub fn new(format: CallFormat) -> Self {
        Self {
            state: if format.text_allowed {
                State::Undecided
            } else {
                State::Head
            },
            pending: String::new(),
            calls: Vec::new(),
        }
    }

    /// The calls read so far.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Takes the next piece of generated text.
    pub fn feed(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.pending.is_empty() {
                return out;
            }
            match self.state {
                State::Undecided => {
                    if self.pending.starts_with(TOOL_CALL_OPEN) {
                        self.state = State::Head;
                    } else if TOOL_CALL_OPEN.starts_with(self.pending.as_str()) {
                        return out;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => out.push(Piece::Text(std::mem::take(&mut self.pending))),
                State::Head => match scan_head(&self.pending) {
                    Scan::More => return out,
                    Scan::Mismatch => self.state = State::Text,
                    Scan::Head { name, arguments_at } => {
                        self.pending.drain(..arguments_at);
                        let index = self.calls.len();
                        self.calls.push(Call {
                            id: call_id(),
                            name: name.clone(),
                            arguments: String::new(),
                            complete: false,
                        });
                        out.push(Piece::CallStart { index, name });
                        self.state = State::Arguments {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        };
                    }
                },
                State::Arguments {
                    mut depth,
                    mut in_string,
                    mut escaped,
                } => {
                    let mut end = None;
                    for (i, c) in self.pending.char_indices() {
                        if in_string {
                            match c {
                                _ if escaped => escaped = false,
                                '\\' => escaped = true,
                                '"' => in_string = false,
                                _ => {}
                            }
                        } else {
                            match c {
                                '"' => in_string = true,
                                '{' | '[' => depth += 1,
                                '}' | ']' => depth = depth.saturating_sub(1),
                                _ => {}
                            }
                        }
                        if depth == 0 && !in_string {
                            end = Some(i + c.len_utf8());
                            break;
                        }
                    }
                    let index = self.calls.len() - 1;
                    let taken = end.unwrap_or(self.pending.len());
                    let text: String = self.pending.drain(..taken).collect();
                    self.calls[index].arguments.push_str(&text);
                    if !text.is_empty() {
                        out.push(Piece::Arguments { index, text });
                    }
                    if end.is_some() {
                        self.calls[index].complete = true;
                        out.push(Piece::CallEnd { index });
                        self.state = State::Tail;
                    } else {
                        self.state = State::Arguments {
                            depth,
                            in_string,
                            escaped,
                        };
                    }
                }
                State::Tail => match scan_tail(&self.pending) {
                    None => return out,
                    Some(0) => self.state = State::Text,
                    Some(n) => {
                        self.pending.drain(..n);
                        self.state = State::Between;
                    }
                },
                State::Between => {
                    let trimmed = self.pending.trim_start_matches(is_ws);
                    if trimmed.is_empty() {
                        // Whitespace between or after calls is no content.
                        self.pending.clear();
                        return out;
                    }
                    let skip = self.pending.len() - trimmed.len();
                    self.pending.drain(..skip);
                    if TOOL_CALL_OPEN.starts_with(self.pending.as_str())
                        || self.pending.starts_with(TOOL_CALL_OPEN)
                    {
                        self.state = State::Head;
                        if !self.pending.starts_with(TOOL_CALL_OPEN) {
                            return out;
                        }
                    } else {
                        self.state = State::Text;
                    }
                }
            }
        }
    }

    /// At the end of the answer: text still held back comes out as text
    /// (a prefix of the tag, or a call cut short before its arguments).
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.pending);
        match self.state {
            State::Undecided | State::Head | State::Text if !held.is_empty() => {
                vec![Piece::Text(held)]
            }
            _ => Vec::new(),
        }
    }
}

/// A call's id, `call_` and 24 hex digits (OpenAI's ids begin so too).
fn call_id() -> String {
    let id = super::completion_id("call");
    format!("call_{}", id.trim_start_matches("call-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feed_all(parser: &mut CallParser, pieces: &[&str]) -> Vec<Piece> {
        let mut out: Vec<Piece> = pieces.iter().flat_map(|p| parser.feed(p)).collect();
        out.extend(parser.finish());
        out
    }

    /// Joins neighbouring text and argument pieces, so that a test does not
    /// depend on where the token boundaries fell.
    fn joined(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (
                    Some(Piece::Arguments { index: i, text: a }),
                    Piece::Arguments { index: j, text: b },
                ) if *i == j => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }

    const CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\\\" \", \"days\": [1, {\"a\": 2}]}}\n</tool_call>";

    #[test]
    fn a_call_is_read_whatever_the_token_boundaries() {
        let args = "{\"city\": \"Paris \\\"}\\\" \", \"days\": [1, {\"a\": 2}]}";
        for size in [1, 2, 3, 5, 7, 200] {
            let chars: Vec<char> = CALL.chars().collect();
            let tokens: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
            let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
            for format in [
                CallFormat { text_allowed: true },
                CallFormat {
                    text_allowed: false,
                },
            ] {
                let mut p = CallParser::new(format);
                let pieces = joined(feed_all(&mut p, &tokens));
                assert_eq!(
                    pieces,
                    [
                        Piece::CallStart {
                            index: 0,
                            name: "get_weather".into()
                        },
                        Piece::Arguments {
                            index: 0,
                            text: args.into()
                        },
                        Piece::CallEnd { index: 0 },
                    ],
                    "size {size}"
                );
                assert_eq!(p.calls().len(), 1);
                assert_eq!(p.calls()[0].arguments, args);
                assert!(p.calls()[0].complete);
                assert!(p.calls()[0].id.starts_with("call_"), "{}", p.calls()[0].id);
                let parsed: Value = serde_json::from_str(&p.calls()[0].arguments).unwrap();
                assert_eq!(parsed["city"], "Paris \"}\" ");
            }
        }
    }

    #[test]
    fn several_calls_get_their_own_indexes_and_ids() {
        let two =
            format!("{CALL}\n<tool_call>{{\"name\":\"now\",\"arguments\":{{}}}}</tool_call>\n");
        let mut p = CallParser::new(CallFormat {
            text_allowed: false,
        });
        let pieces = joined(feed_all(&mut p, &[&two]));
        assert_eq!(pieces.len(), 6, "{pieces:?}");
        assert_eq!(
            pieces[3],
            Piece::CallStart {
                index: 1,
                name: "now".into()
            }
        );
        assert_eq!(p.calls()[1].arguments, "{}");
        assert_ne!(p.calls()[0].id, p.calls()[1].id);
    }

    #[test]
    fn auto_text_comes_out_as_text_and_a_tag_prefix_is_held_until_it_differs() {
        let mut p = CallParser::new(CallFormat { text_allowed: true });
        assert_eq!(p.feed("<tool"), []);
        assert_eq!(p.feed("s are"), [Piece::Text("<tools are".into())]);
        assert_eq!(p.feed(" fine"), [Piece::Text(" fine".into())]);
        assert!(p.calls().is_empty());
        // An answer that ends inside the prefix is that text.
        let mut p = CallParser::new(CallFormat { text_allowed: true });
        assert_eq!(feed_all(&mut p, &["<to"]), [Piece::Text("<to".into())]);
        // Text that mentions the tag later is text.
        let mut p = CallParser::new(CallFormat { text_allowed: true });
        assert_eq!(
            joined(feed_all(&mut p, &["Use ", CALL])),
            [Piece::Text(format!("Use {CALL}"))]
        );
    }

    #[test]
    fn a_call_cut_short_keeps_what_was_generated() {
        // Before the arguments: the text.
        let mut p = CallParser::new(CallFormat {
            text_allowed: false,
        });
        assert_eq!(
            feed_all(&mut p, &["<tool_call>\n{\"na"]),
            [Piece::Text("<tool_call>\n{\"na".into())]
        );
        // In the arguments: an incomplete call.
        let mut p = CallParser::new(CallFormat {
            text_allowed: false,
        });
        let pieces = joined(feed_all(
            &mut p,
            &["<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"x"],
        ));
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(p.calls()[0].arguments, "{\"a\": \"x");
        assert!(!p.calls()[0].complete);
    }

    fn setup(body: Value) -> Result<Option<ToolSetup>, ApiError> {
        parse_tools(body.as_object().unwrap(), &[])
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }}])
    }

    #[test]
    fn choices_set_the_grammar_and_the_prompt() {
        let auto = setup(json!({ "tools": weather() })).unwrap().unwrap();
        assert!(auto.format.text_allowed);
        assert!(auto.grammar.contains("| text"), "{}", auto.grammar);
        assert!(auto.prompt.contains(r#"{"type":"function","function":{"name":"get_weather","description":"Weather of a city","parameters":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}}}"#), "{}", auto.prompt);
        assert!(auto.prompt.contains("plain text"), "{}", auto.prompt);
        let required = setup(
            json!({"tools": weather(), "tool_choice": "required", "parallel_tool_calls": false}),
        )
        .unwrap()
        .unwrap();
        assert!(!required.format.text_allowed);
        assert!(
            required.grammar.starts_with("root ::= call\n"),
            "{}",
            required.grammar
        );
        assert!(required.prompt.contains("Call a function now."));
        let named = setup(json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
            .unwrap()
            .unwrap();
        assert!(named.grammar.starts_with("root ::= call\n"));
        assert!(named.prompt.contains("Call the function get_weather now."));
        assert_eq!(
            setup(json!({"tools": weather(), "tool_choice": "none"})).unwrap(),
            None
        );
        assert_eq!(setup(json!({"tools": []})).unwrap(), None);
        assert_eq!(setup(json!({"tool_choice": "auto"})).unwrap(), None);
    }

    #[test]
    fn bad_tools_are_400s_that_name_the_field() {
        let err = |body: Value| setup(body).unwrap_err();
        let e = err(
            json!({"tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}]}),
        );
        assert_eq!(
            e.param.as_deref(),
            Some("tools[0].function.parameters.properties.d")
        );
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        assert!(e.message.contains("\"format\""), "{}", e.message);
        let e = err(
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}),
        );
        assert_eq!(e.param.as_deref(), Some("tools[0].function.parameters"));
        let e = err(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].function.name"));
        let e = err(
            json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
        );
        assert_eq!(
            e.message,
            "tools[1].function.name \"f\" is the name of tools[0] too: names must differ"
        );
        let e = err(json!({"tools": [{"type": "retrieval"}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = err(
            json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "other"}}}),
        );
        assert_eq!(
            e.message,
            "tool_choice.function.name \"other\" is not one of the functions in tools"
        );
        let e = err(json!({"tool_choice": "required"}));
        assert_eq!(
            e.message,
            "tool_choice asks for a call, but the request has no tools"
        );
        let e = err(json!({"tools": weather(), "tool_choice": "always"}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = err(json!({"tools": weather(), "parallel_tool_calls": "yes"}));
        assert_eq!(e.param.as_deref(), Some("parallel_tool_calls"));
        let e = err(json!({"tools": {"name": "f"}}));
        assert_eq!(e.param.as_deref(), Some("tools"));
    }

    #[test]
    fn earlier_calls_and_results_are_written_in_the_format() {
        let (text, named) = read_assistant_calls(
            "messages[1]",
            &json!([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
        )
        .unwrap();
        assert_eq!(
            text,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            named,
            [(Some("call_1".to_owned()), "get_weather".to_owned())]
        );
        // Ollama's shape: arguments an object, no id.
        let (text, named) = read_assistant_calls(
            "messages[1]",
            &json!([{"function": {"name": "f", "arguments": {"x": 1}}}]),
        )
        .unwrap();
        assert!(text.contains(r#""arguments": {"x":1}"#), "{text}");
        assert_eq!(named, [(None, "f".to_owned())]);
        let e = read_assistant_calls("messages[1]", &json!([{"function": {"arguments": "{}"}}]))
            .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[1].tool_calls[0].function.name")
        );
        assert_eq!(
            tool_response(Some("get_weather"), "{\"temp\": 21}"),
            "<tool_response>\n{\"name\": \"get_weather\", \"content\": {\"temp\":21}}\n</tool_response>"
        );
        assert_eq!(
            tool_response(None, "sunny"),
            "<tool_response>\n{\"content\": \"sunny\"}\n</tool_response>"
        );
    }

    #[test]
    fn the_block_joins_the_system_message_or_makes_one() {
        let mut with = vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ];
        add_to_system(&mut with, "TOOLS");
        assert_eq!(with[0].content, "Be brief.\n\nTOOLS");
        let mut without = vec![ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }];
        add_to_system(&mut without, "TOOLS");
        assert_eq!(without[0].role, "system");
        assert_eq!(without[0].content, "TOOLS");
        assert_eq!(without.len(), 2);
    }
}
