//! Structured output: JSON Schema to a GBNF grammar (llama.cpp's grammar
//! format), which the worker's grammar sampler enforces token by token.
//!
//! # Why our own converter, and llama.cpp's grammar sampler
//!
//! `llama-cpp-2` offers three ways to constrain output: llama.cpp's GBNF
//! grammar sampler (`LlamaSampler::grammar`), llama.cpp's own JSON Schema
//! converter (`json_schema_to_grammar`, behind the crate's `common`
//! feature) and llguidance (behind its `llguidance` feature). We use the
//! grammar sampler with a converter of our own:
//!
//! * llguidance brings two more Rust crates (and their dependencies) into
//!   the worker, for features (regexes, lazy grammars, Lark) a JSON answer
//!   does not need.
//! * llama.cpp's converter needs the `common` feature (a second C++
//!   library built into every worker), and it quietly drops keywords it
//!   does not know, so a schema it cannot enforce gives output that does
//!   not validate. The API must refuse such a schema instead, naming the
//!   keyword, and that needs a converter that knows exactly what it
//!   enforces.
//! * A converter of our own is pure code: it runs in the daemon, so a
//!   schema it cannot take is a 400 before any model is loaded, and its
//!   tests need no model.
//!
//! # The subset
//!
//! Enforced: `type` (`object`, `array`, `string`, `number`, `integer`,
//! `boolean`, `null`, or an array of them), `properties` (generated in
//! their order), `required`, `additionalProperties` (`true` or `false`:
//! only the declared properties are ever generated), `items`, `minItems`
//! and `maxItems` (up to [`MAX_ITEMS`]), `minLength` and `maxLength` (up
//! to [`MAX_LENGTH`]), `enum`, `const`, `anyOf`, `oneOf` (when its branches
//! cannot match the same value), and `$ref` to `#`, `#/$defs/NAME` or
//! `#/definitions/NAME` (recursion included). Annotations (`title`,
//! `description`, `default`, `examples`, ...) are allowed and change
//! nothing. Any other keyword (`pattern`, `format`, `minimum`, `allOf`,
//! `not`, ...) is a [`SchemaError`] that names it and where it is.
//!
//! Every answer the grammar allows validates against the schema; the
//! grammar may allow less than the schema (no undeclared properties, at
//! most 16 digits in a number, at most 20 spaces of indentation, no `\u`
//! escapes in strings, so that every character of a string is one code
//! point as `minLength` and `maxLength` count them).
//!
//! # Tool calls
//!
//! [`tool_calls`] builds the grammar of an answer that calls functions:
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or
//! several, each function's arguments under its own parameters' schema
//! (the same subset, rules kept apart by a prefix), optionally with plain
//! text as the other choice (text that does not begin with the tag).
//!
//! ```
//! use locara_engine::grammar::{json_schema, Json};
//!
//! let schema: Json = serde_json::from_str(
//!     r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#,
//! )?;
//! let gbnf = json_schema(&schema).unwrap();
//! assert!(gbnf.starts_with("root ::= "));
//! let err = json_schema(&serde_json::from_str(r#"{"type":"string","pattern":"^a"}"#)?).unwrap_err();
//! assert_eq!(err.keyword(), Some("pattern"));
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt::{self, Write as _};

/// Most items `minItems` and `maxItems` may ask for: each is a rule of the
/// grammar, and llama.cpp refuses repetitions past 2000 rules
/// (`MAX_REPETITION_THRESHOLD` in llama-grammar.cpp).
pub const MAX_ITEMS: u64 = 100;

/// Most characters `minLength` and `maxLength` may ask for (see
/// [`MAX_ITEMS`]).
pub const MAX_LENGTH: u64 = 1000;

/// The grammar's start rule.
pub const ROOT: &str = "root";

/// A JSON value that keeps its objects' keys in document order
/// (`serde_json::Value` sorts them): the grammar generates properties in
/// the order the schema declares them, which is the order a model should
/// write them in (a `reasoning` before its `answer`, say).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Json::Null => Kind::Null,
            Json::Bool(_) => Kind::Boolean,
            Json::Number(_) => Kind::Number,
            Json::String(_) => Kind::String,
            Json::Array(_) => Kind::Array,
            Json::Object(_) => Kind::Object,
        }
    }

    /// Compact JSON text, keys in their order.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    /// Compact JSON text.
    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(&n.to_string()),
            Json::String(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// Whether two values are equal as JSON Schema compares them (numbers
    /// by value, objects regardless of key order).
    fn same(&self, other: &Json) -> bool {
        serde_json::Value::from(self) == serde_json::Value::from(other)
    }
}

impl From<&serde_json::Value> for Json {
    /// Keys come in `serde_json`'s (sorted) order.
    fn from(v: &serde_json::Value) -> Json {
        match v {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => Json::Number(n.clone()),
            serde_json::Value::String(s) => Json::String(s.clone()),
            serde_json::Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            serde_json::Value::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (k.clone(), Json::from(v))).collect())
            }
        }
    }
}

impl From<&Json> for serde_json::Value {
    fn from(v: &Json) -> serde_json::Value {
        match v {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Number(n) => serde_json::Value::Number(n.clone()),
            Json::String(s) => serde_json::Value::String(s.clone()),
            Json::Array(a) => serde_json::Value::Array(a.iter().map(Into::into).collect()),
            Json::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(v)))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                Json::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members: Vec<(String, Json)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    // A repeated key: the last one counts, as in serde_json.
                    members.retain(|(old, _)| *old != k);
                    members.push((k, v));
                }
                Ok(Json::Object(members))
            }
        }
        d.deserialize_any(JsonVisitor)
    }
}

/// A schema the converter cannot enforce, or one that is not a schema.
/// `path` is where, below the schema's root: `""` for the root,
/// `.properties.name`, `.items`, `.anyOf[1]`, `.$defs.Address`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A keyword outside the subset (see the module docs).
    #[error("uses the JSON Schema keyword {keyword:?}, which Locara cannot enforce{note}; supported: {SUPPORTED}")]
    Unsupported {
        path: String,
        keyword: String,
        /// A precision (`" as an array"`, say), empty or starting with a space.
        note: String,
    },
    /// A keyword with a value the converter cannot use.
    #[error("{why}")]
    Invalid { path: String, why: String },
}

/// The keywords the converter enforces, for error messages.
pub const SUPPORTED: &str = "type, properties, required, additionalProperties (true or false), \
items, minItems, maxItems, minLength, maxLength, enum, const, anyOf, oneOf, $ref, $defs";

impl SchemaError {
    /// Where, below the schema's root.
    pub fn path(&self) -> &str {
        match self {
            SchemaError::Unsupported { path, .. } | SchemaError::Invalid { path, .. } => path,
        }
    }

    /// The keyword refused, for [`SchemaError::Unsupported`].
    pub fn keyword(&self) -> Option<&str> {
        match self {
            SchemaError::Unsupported { keyword, .. } => Some(keyword),
            SchemaError::Invalid { .. } => None,
        }
    }
}

/// Keywords that describe and never constrain.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

/// Keywords the converter enforces.
const ENFORCED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
];

/// What every grammar holds: whitespace (bounded, so a model cannot spend
/// its tokens on it), strings, numbers (at most 16 digits a part, so a
/// model cannot run on in digits), literals and any JSON value.
const BASE_RULES: &str = r#"ws ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x00-\x1F] | "\\" ["\\/bfnrt]
string ::= "\"" char* "\""
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
member ::= string ws ":" ws value ws
object ::= "{" ws ( member ( "," ws member )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
"#;

/// A grammar for any JSON object: OpenAI's `json_object` response format.
pub fn json_object() -> String {
    format!("{ROOT} ::= object\n{BASE_RULES}")
}

/// A grammar whose every sentence is a JSON text valid against `schema`,
/// or the first keyword (in document order) it cannot enforce.
pub fn json_schema(schema: &Json) -> Result<String, SchemaError> {
    let mut b = Builder {
        root: schema,
        prefix: "",
        rules: Vec::new(),
        refs: HashMap::new(),
    };
    let root = b.visit(schema, "")?;
    let mut out = format!("{ROOT} ::= {root}\n");
    for (name, body) in &b.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(BASE_RULES);
    Ok(out)
}

/// What opens a tool call in an answer (the tag of the Hermes and Qwen
/// formats, which small instruction models have often seen).
pub const TOOL_CALL_OPEN: &str = "<tool_call>";

/// What closes a tool call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// Most calls one answer may hold when several are allowed: the grammar
/// must end somewhere, or a small model could call functions until its
/// tokens run out.
pub const MAX_TOOL_CALLS: u32 = 8;

/// A function a tool call may name.
#[derive(Debug, Clone, Copy)]
pub struct ToolSpec<'a> {
    /// Its name, written as it is between quotes (the caller checks it
    /// needs no JSON escape).
    pub name: &'a str,
    /// The JSON Schema of its arguments, an object schema; `None`: it takes
    /// none (`{}`).
    pub parameters: Option<&'a Json>,
}

/// A tool schema the converter cannot take: which function (its index in
/// the list given to [`tool_calls`]) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("function {index}: {error}")]
pub struct ToolSchemaError {
    pub index: usize,
    pub error: SchemaError,
}

/// A grammar for an answer made of tool calls, each
/// `<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>` (whitespace
/// allowed between the parts) where NAME is one of `tools` and ARGS
/// validates against its parameters' schema. At most `max_calls` calls
/// (1 to [`MAX_TOOL_CALLS`]).
///
/// `text_allowed` (the `auto` tool choice): the answer may instead be
/// plain text, any text that does not begin with [`TOOL_CALL_OPEN`]. So a
/// call comes first or not at all, and once the answer begins with the
/// tag it must be well-formed calls to its end.
pub fn tool_calls(
    tools: &[ToolSpec<'_>],
    text_allowed: bool,
    max_calls: u32,
) -> Result<String, ToolSchemaError> {
    assert!(!tools.is_empty(), "a tool grammar needs a function");
    let no_arguments = Json::Object(vec![
        ("type".to_owned(), Json::String("object".to_owned())),
        ("properties".to_owned(), Json::Object(Vec::new())),
        ("additionalProperties".to_owned(), Json::Bool(false)),
    ]);
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut functions = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        let schema = tool.parameters.unwrap_or(&no_arguments);
        let fail = |error| ToolSchemaError { index, error };
        match schema {
            Json::Object(_) if schema.get("type") == Some(&Json::String("object".into())) => {}
            Json::Object(_) => {
                return Err(fail(invalid(
                    "",
                    "a function's parameters must be an object schema: {\"type\": \"object\", ...}",
                )))
            }
            _ => return Err(fail(invalid("", "a schema must be an object"))),
        }
        let prefix = format!("t{index}-");
        let mut b = Builder {
            root: schema,
            prefix: &prefix,
            rules: Vec::new(),
            refs: HashMap::new(),
        };
        let arguments = b.visit(schema, "").map_err(fail)?;
        rules.append(&mut b.rules);
        let mut name = String::new();
        Json::String(tool.name.to_owned()).write(&mut name);
        let rule = format!("fn-{index}");
        rules.push((
            rule.clone(),
            format!(
                "{} ws \",\" ws \"\\\"arguments\\\"\" ws \":\" ws {arguments}",
                literal(&name)
            ),
        ));
        functions.push(rule);
    }
    let max_calls = max_calls.clamp(1, MAX_TOOL_CALLS);
    let calls = if max_calls == 1 {
        "call".to_owned()
    } else {
        format!("call ( ws call ){{0,{}}}", max_calls - 1)
    };
    let root = if text_allowed {
        format!("{calls} | text")
    } else {
        calls
    };
    let mut out = format!("{ROOT} ::= {root}\n");
    let _ = writeln!(
        out,
        "call ::= {} ws \"{{\" ws \"\\\"name\\\"\" ws \":\" ws ( {} ) ws \"}}\" ws {}",
        literal(TOOL_CALL_OPEN),
        functions.join(" | "),
        literal(TOOL_CALL_CLOSE)
    );
    if text_allowed {
        out.push_str(&not_beginning_with("text", TOOL_CALL_OPEN));
    }
    for (name, body) in &rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(BASE_RULES);
    Ok(out)
}

/// Rules `{name}` (and `{name}-1`, ...) for any text that does not begin
/// with `marker` (the empty text included): at each place of the marker
/// the text may end, leave the marker with another character, or go on
/// with the marker's next one; after the whole marker but its last
/// character, only another character may follow.
fn not_beginning_with(name: &str, marker: &str) -> String {
    let chars: Vec<char> = marker.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        let this = if i == 0 {
            name.to_owned()
        } else {
            format!("{name}-{i}")
        };
        let class = match c {
            '\\' | ']' | '^' | '-' => format!("[^\\{c}]"),
            c => format!("[^{c}]"),
        };
        let go_on = if i + 1 < chars.len() {
            format!(" | {} {name}-{}", literal(&c.to_string()), i + 1)
        } else {
            String::new()
        };
        let _ = writeln!(out, "{this} ::= | {class} .*{go_on}");
    }
    out
}

/// The JSON types, with `integer` counted as `number` (the kinds two
/// schemas may both produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
}

const ALL_KINDS: [Kind; 6] = [
    Kind::Object,
    Kind::Array,
    Kind::String,
    Kind::Number,
    Kind::Boolean,
    Kind::Null,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Null => "null",
        }
    }
}

/// One value of `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Object,
    Array,
    String,
    Number,
    Integer,
    Boolean,
    Null,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "number" => Type::Number,
            "integer" => Type::Integer,
            "boolean" => Type::Boolean,
            "null" => Type::Null,
            _ => return None,
        })
    }

    fn kind(self) -> Kind {
        match self {
            Type::Object => Kind::Object,
            Type::Array => Kind::Array,
            Type::String => Kind::String,
            Type::Number | Type::Integer => Kind::Number,
            Type::Boolean => Kind::Boolean,
            Type::Null => Kind::Null,
        }
    }

    /// Whether `v` is of this type (an integer is a number whose value has
    /// no fraction, as JSON Schema counts it).
    fn holds(self, v: &Json) -> bool {
        match (self, v) {
            (Type::Integer, Json::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|x| x.fract() == 0.0)
            }
            _ => self.kind() == v.kind(),
        }
    }
}

struct Builder<'a> {
    /// The whole schema, for `$ref`.
    root: &'a Json,
    /// Put before every rule name, so that the rules of several schemas
    /// (a tool grammar's functions) can share one grammar.
    prefix: &'a str,
    /// Rules made so far, in order: name, body.
    rules: Vec<(String, String)>,
    /// `$ref` targets already given a rule: pointer → rule name.
    refs: HashMap<String, String>,
}

fn invalid(path: &str, why: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        path: path.to_owned(),
        why: why.into(),
    }
}

fn unsupported(path: &str, keyword: &str, note: &str) -> SchemaError {
    SchemaError::Unsupported {
        path: path.to_owned(),
        keyword: keyword.to_owned(),
        note: note.to_owned(),
    }
}

/// `text` as a GBNF string literal.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A count keyword (`minItems`, ...): a whole number up to `limit`.
fn count(schema: &Json, key: &str, path: &str, limit: u64) -> Result<Option<u64>, SchemaError> {
    let Some(v) = schema.get(key) else {
        return Ok(None);
    };
    let n = match v {
        Json::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|x| *x >= 0.0 && x.fract() == 0.0)
                .map(|x| x as u64)
        }),
        _ => None,
    };
    let Some(n) = n else {
        return Err(invalid(
            path,
            format!("{key} must be a whole number of 0 or more"),
        ));
    };
    if n > limit {
        return Err(invalid(
            path,
            format!("{key} {n} is more than Locara enforces: at most {limit}"),
        ));
    }
    Ok(Some(n))
}

/// `{min,max}` as GBNF writes a repetition.
fn repeat(min: u64, max: Option<u64>) -> String {
    match max {
        Some(max) => format!("{{{min},{max}}}"),
        None => format!("{{{min},}}"),
    }
}

impl<'a> Builder<'a> {
    /// Adds a rule named after `hint`; returns its name.
    fn rule(&mut self, hint: &str, body: String) -> String {
        let name = self.reserve(hint);
        self.define(&name, body);
        name
    }

    /// A fresh rule name (defined later with [`Builder::define`]).
    fn reserve(&mut self, hint: &str) -> String {
        let name = format!("{}{hint}-{}", self.prefix, self.rules.len());
        self.rules.push((name.clone(), String::new()));
        name
    }

    fn define(&mut self, name: &str, body: String) {
        if let Some(rule) = self.rules.iter_mut().find(|(n, _)| n == name) {
            rule.1 = body;
        }
    }

    /// The GBNF expression (a rule name or a small expression) for `schema`.
    fn visit(&mut self, schema: &Json, path: &str) -> Result<String, SchemaError> {
        let members = match schema {
            Json::Bool(true) => return Ok("value".to_owned()),
            Json::Bool(false) => {
                return Err(invalid(
                    path,
                    "the schema false allows no value, so no answer can match it",
                ))
            }
            Json::Object(members) => members,
            _ => return Err(invalid(path, "a schema must be an object or a boolean")),
        };
        for (key, _) in members {
            if !ANNOTATIONS.contains(&key.as_str()) && !ENFORCED.contains(&key.as_str()) {
                return Err(unsupported(path, key, ""));
            }
        }
        // Keywords that take the whole schema over may have only
        // annotations beside them (`type` too, for enum and const).
        let alone = |allowed: &[&str]| -> Result<(), SchemaError> {
            for (key, _) in members {
                let k = key.as_str();
                if !ANNOTATIONS.contains(&k) && !allowed.contains(&k) {
                    let with = allowed[0];
                    return Err(invalid(
                        path,
                        format!("{k} beside {with} is not supported: give {with} alone (with annotations)"),
                    ));
                }
            }
            Ok(())
        };
        if let Some(target) = schema.get("$ref") {
            alone(&["$ref"])?;
            return self.reference(target, path);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key) {
                alone(&[key])?;
                return self.union(key, branches, path);
            }
        }
        let types = self.types(schema, path)?;
        if schema.get("enum").is_some() || schema.get("const").is_some() {
            alone(&["enum", "const", "type"])?;
            return self.literals(schema, types.as_deref(), path);
        }
        let Some(types) = types.or_else(|| inferred(schema)) else {
            return Ok("value".to_owned());
        };
        let mut alternatives = Vec::with_capacity(types.len());
        for t in types {
            alternatives.push(match t {
                Type::Object => self.object(schema, path)?,
                Type::Array => self.array(schema, path)?,
                Type::String => self.string(schema, path)?,
                Type::Number => "number".to_owned(),
                Type::Integer => "integer".to_owned(),
                Type::Boolean => "boolean".to_owned(),
                Type::Null => "null".to_owned(),
            });
        }
        Ok(match alternatives.as_slice() {
            [one] => one.clone(),
            _ => format!("( {} )", alternatives.join(" | ")),
        })
    }

    /// `type`, as a list; `None` when absent.
    fn types(&self, schema: &Json, path: &str) -> Result<Option<Vec<Type>>, SchemaError> {
        let one = |v: &Json| {
            match v {
            Json::String(s) => Type::parse(s).ok_or_else(|| {
                invalid(
                    path,
                    format!("type {s:?} is not a JSON Schema type: use object, array, string, number, integer, boolean or null"),
                )
            }),
            _ => Err(invalid(path, "type must be a string or an array of strings")),
        }
        };
        match schema.get("type") {
            None => Ok(None),
            Some(Json::Array(list)) if !list.is_empty() => {
                let mut types: Vec<Type> = Vec::new();
                for v in list {
                    let t = one(v)?;
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                Ok(Some(types))
            }
            Some(Json::Array(_)) => Err(invalid(path, "type must not be an empty array")),
            Some(v) => one(v).map(|t| Some(vec![t])),
        }
    }

    fn reference(&mut self, target: &Json, path: &str) -> Result<String, SchemaError> {
        let Json::String(pointer) = target else {
            return Err(invalid(path, "$ref must be a string"));
        };
        if let Some(name) = self.refs.get(pointer) {
            return Ok(name.clone());
        }
        let Some((resolved, at)) = self.resolve(pointer) else {
            return Err(unsupported(
                path,
                "$ref",
                &format!(
                    " to {pointer:?} (only \"#\", \"#/$defs/NAME\" and \"#/definitions/NAME\" of this schema)"
                ),
            ));
        };
        let hint = if pointer == "#" { "root-ref" } else { "def" };
        let name = self.reserve(hint);
        self.refs.insert(pointer.clone(), name.clone());
        let body = self.visit(resolved, &at)?;
        self.define(&name, body);
        Ok(name)
    }

    fn union(&mut self, key: &str, branches: &Json, path: &str) -> Result<String, SchemaError> {
        let Json::Array(branches) = branches else {
            return Err(invalid(path, format!("{key} must be an array of schemas")));
        };
        if branches.is_empty() {
            return Err(invalid(path, format!("{key} must not be empty")));
        }
        let mut alternatives = Vec::with_capacity(branches.len());
        for (i, branch) in branches.iter().enumerate() {
            alternatives.push(self.visit(branch, &format!("{path}.{key}[{i}]"))?);
        }
        if key == "oneOf" {
            self.check_exclusive(branches, path)?;
        }
        Ok(format!("( {} )", alternatives.join(" | ")))
    }

    /// A value generated for one branch of a `oneOf` must match no other,
    /// or it would not validate. Branches are taken to be exclusive when
    /// they produce different JSON types, or are literals that differ.
    fn check_exclusive(&self, branches: &[Json], path: &str) -> Result<(), SchemaError> {
        let literals: Option<Vec<Vec<&Json>>> =
            branches.iter().map(|b| self.literal_values(b)).collect();
        if let Some(sets) = literals {
            let all: Vec<&Json> = sets.iter().flatten().copied().collect();
            let distinct = all
                .iter()
                .enumerate()
                .all(|(i, a)| all[i + 1..].iter().all(|b| !a.same(b)));
            if distinct {
                return Ok(());
            }
        }
        let kinds: Vec<Vec<Kind>> = branches.iter().map(|b| self.kinds(b, 0)).collect();
        for i in 0..kinds.len() {
            for j in i + 1..kinds.len() {
                if let Some(k) = kinds[i].iter().find(|k| kinds[j].contains(k)) {
                    return Err(invalid(
                        path,
                        format!(
                            "oneOf branches {i} and {j} can both be a {}, so an answer could match both and fail oneOf; use anyOf",
                            k.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The values a schema of only `enum`/`const` (and annotations, `type`)
    /// allows; `None` for any other schema.
    fn literal_values<'s>(&'s self, schema: &'s Json) -> Option<Vec<&'s Json>> {
        if let Some(Json::String(pointer)) = schema.get("$ref") {
            let (target, _) = self.resolve(pointer)?;
            return self.literal_values(target);
        }
        match (schema.get("const"), schema.get("enum")) {
            (Some(c), _) => Some(vec![c]),
            (None, Some(Json::Array(values))) => Some(values.iter().collect()),
            _ => None,
        }
    }

    /// The schema a `$ref` names, and its path: `#` (the root),
    /// `#/$defs/NAME` or `#/definitions/NAME`.
    fn resolve(&self, pointer: &str) -> Option<(&'a Json, String)> {
        if pointer == "#" {
            return Some((self.root, String::new()));
        }
        ["$defs", "definitions"].iter().find_map(|defs| {
            let name = pointer.strip_prefix(&format!("#/{defs}/"))?;
            // JSON Pointer escapes (RFC 6901): ~1 is /, ~0 is ~.
            let name = name.replace("~1", "/").replace("~0", "~");
            let schema = self.root.get(defs)?.get(&name)?;
            Some((schema, format!(".{defs}.{name}")))
        })
    }

    /// The JSON types a schema can produce (all of them where unsure).
    fn kinds(&self, schema: &Json, depth: u32) -> Vec<Kind> {
        // A `$ref` cycle: assume anything.
        if depth > 32 {
            return ALL_KINDS.to_vec();
        }
        if let Some(values) = self.literal_values(schema) {
            let mut kinds: Vec<Kind> = values.iter().map(|v| v.kind()).collect();
            kinds.dedup();
            return kinds;
        }
        if let Some(Json::String(pointer)) = schema.get("$ref") {
            return self
                .resolve(pointer)
                .map_or(ALL_KINDS.to_vec(), |(s, _)| self.kinds(s, depth + 1));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Json::Array(branches)) = schema.get(key) {
                let mut kinds: Vec<Kind> = Vec::new();
                for k in branches.iter().flat_map(|b| self.kinds(b, depth + 1)) {
                    if !kinds.contains(&k) {
                        kinds.push(k);
                    }
                }
                return kinds;
            }
        }
        match self
            .types(schema, "")
            .ok()
            .flatten()
            .or_else(|| inferred(schema))
        {
            Some(types) => types.iter().map(|t| t.kind()).collect(),
            None => ALL_KINDS.to_vec(),
        }
    }

    fn literals(
        &mut self,
        schema: &Json,
        types: Option<&[Type]>,
        path: &str,
    ) -> Result<String, SchemaError> {
        let values: Vec<&Json> = match (schema.get("const"), schema.get("enum")) {
            (Some(c), None) => vec![c],
            (Some(c), Some(Json::Array(values))) => values.iter().filter(|v| v.same(c)).collect(),
            (None, Some(Json::Array(values))) => values.iter().collect(),
            (_, Some(_)) => return Err(invalid(path, "enum must be an array")),
            (None, None) => unreachable!("called for a schema with enum or const"),
        };
        let values: Vec<&Json> = values
            .into_iter()
            .filter(|v| types.is_none_or(|types| types.iter().any(|t| t.holds(v))))
            .collect();
        if values.is_empty() {
            return Err(invalid(
                path,
                "no value of enum/const matches the rest of the schema (its type, or the other of enum and const), so no answer can",
            ));
        }
        let alternatives: Vec<String> = values
            .iter()
            .map(|v| {
                let mut text = String::new();
                v.write(&mut text);
                literal(&text)
            })
            .collect();
        Ok(match alternatives.as_slice() {
            [one] => one.clone(),
            _ => format!("( {} )", alternatives.join(" | ")),
        })
    }

    fn object(&mut self, schema: &Json, path: &str) -> Result<String, SchemaError> {
        let closed = match schema.get("additionalProperties") {
            None | Some(Json::Bool(true)) => false,
            Some(Json::Bool(false)) => true,
            Some(_) => {
                return Err(unsupported(
                    path,
                    "additionalProperties",
                    " as a schema (only true or false)",
                ))
            }
        };
        let declared: &[(String, Json)] = match schema.get("properties") {
            None => &[],
            Some(Json::Object(props)) => props,
            Some(_) => return Err(invalid(path, "properties must be an object")),
        };
        let required: Vec<&str> = match schema.get("required") {
            None => Vec::new(),
            Some(Json::Array(names)) => names
                .iter()
                .map(|n| match n {
                    Json::String(s) => Ok(s.as_str()),
                    _ => Err(invalid(path, "required must be an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid(path, "required must be an array of strings")),
        };
        // Required properties the schema does not declare take any value.
        let any = Json::Bool(true);
        let mut props: Vec<(&str, &Json)> = declared.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for name in &required {
            if !props.iter().any(|(k, _)| k == name) {
                if closed {
                    return Err(invalid(
                        path,
                        format!("required property {name:?} is not in properties and additionalProperties is false, so no answer can match"),
                    ));
                }
                props.push((name, &any));
            }
        }
        if props.is_empty() {
            return Ok(if closed {
                r#""{" ws "}""#.to_owned()
            } else {
                "object".to_owned()
            });
        }
        // One `name: value` rule per property, then two rules per place in
        // the order: the rest of the object when nothing came before it
        // (`first`), and when something did (`more`, with its comma).
        let mut members = Vec::with_capacity(props.len());
        for (name, sub) in &props {
            let value = self.visit(sub, &format!("{path}.properties.{name}"))?;
            let mut key = String::new();
            Json::String((*name).to_owned()).write(&mut key);
            members.push(self.rule("kv", format!("{} ws \":\" ws {value} ws", literal(&key))));
        }
        // `None`: nothing (the end of the object).
        let (mut first, mut more): (Option<String>, Option<String>) = (None, None);
        for (i, member) in members.iter().enumerate().rev() {
            let needed = required.contains(&props[i].0);
            let then = more.as_deref().map_or(String::new(), |m| format!(" {m}"));
            let first_body = match (needed, &first) {
                (true, _) => format!("{member}{then}"),
                (false, Some(f)) => format!("{member}{then} | {f}"),
                (false, None) => format!("{member}{then} |"),
            };
            first = Some(self.rule("first", first_body));
            if i > 0 {
                let more_body = match (needed, &more) {
                    (true, _) => format!("\",\" ws {member}{then}"),
                    (false, Some(m)) => format!("\",\" ws {member}{then} | {m}"),
                    (false, None) => format!("\",\" ws {member}{then} |"),
                };
                more = Some(self.rule("more", more_body));
            }
        }
        let first = first.expect("props is not empty");
        Ok(self.rule("obj", format!("\"{{\" ws {first} \"}}\"")))
    }

    fn array(&mut self, schema: &Json, path: &str) -> Result<String, SchemaError> {
        let item = match schema.get("items") {
            None => "value".to_owned(),
            Some(Json::Array(_)) => {
                return Err(unsupported(
                    path,
                    "items",
                    " as an array of schemas (tuples)",
                ))
            }
            Some(items) => self.visit(items, &format!("{path}.items"))?,
        };
        let min = count(schema, "minItems", path, MAX_ITEMS)?.unwrap_or(0);
        let max = count(schema, "maxItems", path, MAX_ITEMS)?;
        if max.is_some_and(|max| max < min) {
            return Err(invalid(path, "maxItems is less than minItems"));
        }
        let one = self.rule("item", format!("{item} ws"));
        let more = self.rule("items", format!("\",\" ws {one}"));
        let body = match (min, max) {
            (_, Some(0)) => r#""[" ws "]""#.to_owned(),
            (0, None) => format!("\"[\" ws ( {one} {more}* )? \"]\""),
            (0, Some(max)) => format!("\"[\" ws ( {one} {more}{{0,{}}} )? \"]\"", max - 1),
            (min, max) => format!(
                "\"[\" ws {one} {more}{} \"]\"",
                repeat(min - 1, max.map(|m| m - 1))
            ),
        };
        Ok(self.rule("arr", body))
    }

    fn string(&mut self, schema: &Json, path: &str) -> Result<String, SchemaError> {
        let min = count(schema, "minLength", path, MAX_LENGTH)?;
        let max = count(schema, "maxLength", path, MAX_LENGTH)?;
        if min.is_none() && max.is_none() {
            return Ok("string".to_owned());
        }
        let min = min.unwrap_or(0);
        if max.is_some_and(|max| max < min) {
            return Err(invalid(path, "maxLength is less than minLength"));
        }
        Ok(self.rule("str", format!("\"\\\"\" char{} \"\\\"\"", repeat(min, max))))
    }
}

/// The types a schema without `type` implies by its keywords (an object
/// for `properties`, ...); `None` when it implies none.
fn inferred(schema: &Json) -> Option<Vec<Type>> {
    let has = |keys: &[&str]| keys.iter().any(|k| schema.get(k).is_some());
    let mut types = Vec::new();
    if has(&["properties", "required", "additionalProperties"]) {
        types.push(Type::Object);
    }
    if has(&["items", "minItems", "maxItems"]) {
        types.push(Type::Array);
    }
    if has(&["minLength", "maxLength"]) {
        types.push(Type::String);
    }
    (!types.is_empty()).then_some(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    fn grammar(text: &str) -> String {
        json_schema(&schema(text)).unwrap()
    }

    fn error(text: &str) -> SchemaError {
        json_schema(&schema(text)).unwrap_err()
    }

    #[test]
    fn a_tool_grammar_names_each_function_and_keeps_their_rules_apart() {
        let weather = schema(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#,
        );
        let add = schema(
            r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"],"additionalProperties":false}"#,
        );
        let tools = [
            ToolSpec {
                name: "get_weather",
                parameters: Some(&weather),
            },
            ToolSpec {
                name: "add",
                parameters: Some(&add),
            },
            ToolSpec {
                name: "now",
                parameters: None,
            },
        ];
        let g = tool_calls(&tools, false, 1).unwrap();
        assert!(g.starts_with("root ::= call\n"), "{g}");
        assert!(
            g.contains(r#"call ::= "<tool_call>" ws "{" ws "\"name\"" ws ":" ws ( fn-0 | fn-1 | fn-2 ) ws "}" ws "</tool_call>""#),
            "{g}"
        );
        assert!(
            g.contains(r#"fn-0 ::= "\"get_weather\"" ws "," ws "\"arguments\"" ws ":" ws t0-obj-"#),
            "{g}"
        );
        assert!(
            g.contains(r#"t1-kv-0 ::= "\"a\"" ws ":" ws integer ws"#),
            "{g}"
        );
        // A function without parameters takes the empty object.
        assert!(
            g.contains(r#"fn-2 ::= "\"now\"" ws "," ws "\"arguments\"" ws ":" ws "{" ws "}""#),
            "{g}"
        );
        // Every rule is defined once.
        let mut names: Vec<&str> = g.lines().filter_map(|l| l.split(" ::= ").next()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "{g}");
        assert!(!g.contains("text"), "{g}");

        let several = tool_calls(&tools, true, 4).unwrap();
        assert!(
            several.starts_with("root ::= call ( ws call ){0,3} | text\n"),
            "{several}"
        );
        assert!(
            several.contains("text ::= | [^<] .* | \"<\" text-1\n"),
            "{several}"
        );
        assert!(several.contains("text-10 ::= | [^>] .*\n"), "{several}");
        // The cap holds whatever is asked.
        assert!(tool_calls(&tools, false, 1000)
            .unwrap()
            .starts_with(&format!(
                "root ::= call ( ws call ){{0,{}}}\n",
                MAX_TOOL_CALLS - 1
            )));
    }

    #[test]
    fn a_tool_schema_that_is_not_an_object_or_not_enforceable_names_the_function() {
        let good = schema(r#"{"type":"object"}"#);
        let text = schema(r#"{"type":"string"}"#);
        let pattern =
            schema(r#"{"type":"object","properties":{"id":{"type":"string","pattern":"^a"}}}"#);
        let spec = |parameters| ToolSpec {
            name: "f",
            parameters: Some(parameters),
        };
        let err = tool_calls(&[spec(&good), spec(&text)], true, 1).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(
            err.error.to_string().contains("must be an object schema"),
            "{err}"
        );
        let err = tool_calls(&[spec(&pattern)], true, 1).unwrap_err();
        assert_eq!(err.index, 0);
        assert_eq!(err.error.keyword(), Some("pattern"));
        assert_eq!(err.error.path(), ".properties.id");
    }

    #[test]
    fn keys_keep_their_document_order() {
        let s = schema(r#"{"b": 1, "a": {"z": 2, "y": 3}, "b": 4}"#);
        let Json::Object(members) = &s else { panic!() };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        let mut text = String::new();
        s.write(&mut text);
        assert_eq!(text, r#"{"a":{"z":2,"y":3},"b":4}"#);
    }

    #[test]
    fn properties_are_generated_in_order_required_ones_always() {
        let g = grammar(
            r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},
                "required":["name"]}"#,
        );
        assert!(
            g.contains(r#"kv-0 ::= "\"name\"" ws ":" ws string ws"#),
            "{g}"
        );
        assert!(
            g.contains(r#"kv-1 ::= "\"age\"" ws ":" ws integer ws"#),
            "{g}"
        );
        // name is required: the first member is always it.
        assert!(g.contains("first-4 ::= kv-0 more-3\n"), "{g}");
        // age is optional after it.
        assert!(g.contains(r#"more-3 ::= "," ws kv-1 |"#), "{g}");
        assert!(g.starts_with("root ::= obj-5\n"), "{g}");
    }

    #[test]
    fn every_unsupported_keyword_is_named_with_its_path() {
        for (text, path, keyword) in [
            (r#"{"type":"string","pattern":"^a"}"#, "", "pattern"),
            (
                r#"{"type":"object","properties":{"when":{"type":"string","format":"date-time"}}}"#,
                ".properties.when",
                "format",
            ),
            (
                r#"{"type":"array","items":{"type":"number","minimum":0}}"#,
                ".items",
                "minimum",
            ),
            (
                r#"{"anyOf":[{"type":"string"},{"allOf":[]}]}"#,
                ".anyOf[1]",
                "allOf",
            ),
            (r#"{"not":{"type":"null"}}"#, "", "not"),
            (
                r#"{"type":"object","additionalProperties":{"type":"string"}}"#,
                "",
                "additionalProperties",
            ),
            (
                r#"{"type":"array","items":[{"type":"string"}]}"#,
                "",
                "items",
            ),
            (r#"{"$ref":"https://example.com/s.json"}"#, "", "$ref"),
            (r#"{"type":"object","nullable":true}"#, "", "nullable"),
        ] {
            let e = error(text);
            assert_eq!(
                (e.path(), e.keyword()),
                (path, Some(keyword)),
                "{text}: {e}"
            );
            assert!(e.to_string().contains(keyword), "{e}");
        }
    }

    #[test]
    fn impossible_or_malformed_schemas_are_refused() {
        for (text, path, says) in [
            ("false", "", "allows no value"),
            (r#"{"type":"text"}"#, "", "not a JSON Schema type"),
            (r#"{"type":"array","maxItems":101}"#, "", "at most 100"),
            (
                r#"{"type":"string","maxLength":2,"minLength":3}"#,
                "",
                "less than",
            ),
            (r#"{"type":"string","enum":[1,2]}"#, "", "no value of enum"),
            (
                r#"{"type":"object","required":["x"],"additionalProperties":false}"#,
                "",
                "\"x\" is not in properties",
            ),
            (
                r#"{"oneOf":[{"type":"integer"},{"type":"number"}]}"#,
                "",
                "branches 0 and 1 can both be a number",
            ),
            (
                r#"{"type":"string","anyOf":[{"type":"string"}]}"#,
                "",
                "type beside anyOf",
            ),
            (
                r#"{"enum":["a"],"minLength":1}"#,
                "",
                "minLength beside enum",
            ),
        ] {
            let e = error(text);
            assert_eq!(e.path(), path, "{text}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn one_of_with_distinct_types_or_literals_is_taken() {
        grammar(r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#);
        grammar(r#"{"oneOf":[{"const":"a"},{"enum":["b","c"]}]}"#);
        grammar(r#"{"oneOf":[{"type":"object"},{"type":["array","null"]}]}"#);
    }

    #[test]
    fn literals_keep_their_json_text() {
        let g = grammar(r#"{"enum":["a\"b", 1.5, null, {"k": [true]}]}"#);
        assert!(
            g.starts_with(r#"root ::= ( "\"a\\\"b\"" | "1.5" | "null" | "{\"k\":[true]}" )"#),
            "{g}"
        );
        // Filtered by type.
        let g = grammar(r#"{"type":"integer","enum":[1, 2.5, "3"]}"#);
        assert!(g.starts_with("root ::= \"1\"\n"), "{g}");
    }

    #[test]
    fn refs_become_rules_and_may_recurse() {
        let g = grammar(
            r##"{"$defs":{"node":{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#/$defs/node"},{"type":"null"}]}},"required":["next"]}},
                 "$ref":"#/$defs/node"}"##,
        );
        assert!(g.starts_with("root ::= def-0\n"), "{g}");
        assert!(g.contains("( def-0 | null )"), "{g}");
        let e = error(r##"{"$ref":"#/$defs/missing"}"##);
        assert_eq!(e.keyword(), Some("$ref"));
    }

    #[test]
    fn arrays_and_strings_take_their_bounds() {
        let g = grammar(
            r#"{"type":"array","items":{"type":"string","maxLength":5},"minItems":1,"maxItems":3}"#,
        );
        assert!(g.contains(r#"str-0 ::= "\"" char{0,5} "\"""#), "{g}");
        assert!(
            g.contains(r#"arr-3 ::= "[" ws item-1 items-2{0,2} "]""#),
            "{g}"
        );
        let g = grammar(r#"{"type":"array","maxItems":2}"#);
        assert!(g.contains(r#"( item-0 items-1{0,1} )?"#), "{g}");
        let g = grammar(r#"{"type":"array","maxItems":0}"#);
        assert!(g.contains(r#"arr-2 ::= "[" ws "]""#), "{g}");
        let g = grammar(r#"{"minLength":2}"#);
        assert!(g.contains(r#"char{2,}"#), "{g}");
    }

    #[test]
    fn a_schema_without_constraints_is_any_value() {
        for text in ["true", "{}", r#"{"description":"anything"}"#] {
            assert!(grammar(text).starts_with("root ::= value\n"), "{text}");
        }
        assert!(
            grammar(r#"{"type":["string","null"]}"#).starts_with("root ::= ( string | null )\n")
        );
        assert!(json_object().starts_with("root ::= object\n"));
    }

    #[test]
    fn literal_escapes_what_gbnf_needs() {
        assert_eq!(literal("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\x01é""#);
    }
}
