//! `POST /v1/embeddings`: the request, checked, and the answer in OpenAI's
//! shape.
//!
//! `input` is a string, an array of strings (a batch), an array of token
//! ids, or an array of such arrays; each input is one vector. Inputs must
//! not be empty, at most [`MAX_INPUTS`] per request (OpenAI's limit).
//! `encoding_format` is `float` (the default) or `base64` (the f32 values'
//! little-endian bytes, which the `openai` Python client asks for by
//! default). `dimensions` is refused unless it equals the model's own width:
//! shortening a vector is only meaningful for models trained for it
//! (Matryoshka), which Locara cannot tell. `user` is ignored (OpenAI's own
//! advisory field); `keep_alive` is Locara's.

use super::error::ApiError;
use super::request::{
    as_integer, as_object, as_str, describe, field, no_nul, parse_body, parse_keep_alive,
    parse_model, KeepAlive,
};
use base64::Engine as _;
use locara_engine::protocol::EmbedInput;
use serde_json::{json, Map, Value};

/// Most inputs in one request (OpenAI's limit for its embedding models).
pub const MAX_INPUTS: usize = 2048;

/// How the vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    Float,
    /// The f32 values as little-endian bytes, in base64.
    Base64,
}

/// A checked `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<EmbedInput>,
    pub encoding: EncodingFormat,
    /// The width the client asked for; checked against the model's once
    /// it is loaded ([`check_dimensions`]).
    pub dimensions: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
}

/// Parses and checks an embeddings request body.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let v = parse_body(body)?;
    let obj = as_object(&v)?;
    let model = parse_model(obj)?;
    let inputs = parse_inputs("input", field(obj, "input"))?;
    let encoding = match field(obj, "encoding_format") {
        None => EncodingFormat::Float,
        Some(v) => match as_str("encoding_format", v)? {
            "float" => EncodingFormat::Float,
            "base64" => EncodingFormat::Base64,
            other => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("encoding_format {other:?} is not one of: float, base64"),
                ))
            }
        },
    };
    let dimensions = field(obj, "dimensions").map(parse_dimensions).transpose()?;
    let keep_alive = field(obj, "keep_alive").map(parse_keep_alive).transpose()?;
    Ok(EmbeddingsRequest {
        model,
        inputs,
        encoding,
        dimensions,
        keep_alive,
    })
}

/// Reads the inputs of an embedding request from field `param` (`input`
/// for OpenAI and Ollama alike): a string, strings, token ids, or arrays of
/// token ids.
pub fn parse_inputs(param: &str, v: Option<&Value>) -> Result<Vec<EmbedInput>, ApiError> {
    let Some(v) = v else {
        return Err(ApiError::invalid(
            param,
            format!("{param} is required: a string or an array of strings to embed"),
        ));
    };
    let inputs = match v {
        Value::String(s) => vec![text_input(param, s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid(
                param,
                format!("{param} must not be an empty array"),
            ))
        }
        // One array of token ids is one input.
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![tokens_input(param, items)?]
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{param}[{i}]");
                match item {
                    Value::String(s) => text_input(&at, s),
                    Value::Array(ids) => tokens_input(&at, ids),
                    other => Err(ApiError::invalid(
                        &at,
                        format!(
                            "{at} must be a string or an array of token ids, got {}",
                            describe(other)
                        ),
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "{param} must be a string or an array of strings or token arrays, got {}",
                    describe(other)
                ),
            ))
        }
    };
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} holds {} inputs; at most {MAX_INPUTS} per request",
                inputs.len()
            ),
        ));
    }
    Ok(inputs)
}

fn text_input(param: &str, s: &str) -> Result<EmbedInput, ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("{param} is an empty string: there is nothing to embed"),
        ));
    }
    no_nul(param, s)?;
    Ok(EmbedInput::Text(s.to_owned()))
}

fn tokens_input(param: &str, ids: &[Value]) -> Result<EmbedInput, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("{param} is an empty token array: there is nothing to embed"),
        ));
    }
    ids.iter()
        .enumerate()
        .map(|(j, id)| {
            let at = format!("{param}[{j}]");
            let n = as_integer(&at, id)?;
            u32::try_from(n).map_err(|_| {
                ApiError::invalid(&at, format!("{at} {n} is not a token id (0 or more)"))
            })
        })
        .collect::<Result<Vec<u32>, _>>()
        .map(EmbedInput::Tokens)
}

/// `dimensions` as a request sends it: a positive integer (held to the
/// model's width by [`check_dimensions`]).
pub fn parse_dimensions(v: &Value) -> Result<u32, ApiError> {
    let n = as_integer("dimensions", v)?;
    u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::invalid(
            "dimensions",
            format!("dimensions {n} is out of range: a positive integer"),
        )
    })
}

/// `dimensions` is accepted only as the model's own width.
pub fn check_dimensions(asked: Option<u32>, model: &str, width: u32) -> Result<(), ApiError> {
    match asked {
        Some(d) if d != width => Err(ApiError::invalid(
            "dimensions",
            format!(
                "dimensions {d} is not supported: {model} gives vectors of {width} values, and Locara does not shorten them"
            ),
        )
        .with_code("unsupported_parameter")),
        _ => Ok(()),
    }
}

/// The answer: `{"object": "list", "data": [{"object": "embedding",
/// "index", "embedding"}], "model", "usage": {"prompt_tokens",
/// "total_tokens"}}`.
pub fn embeddings_response(
    model: &str,
    vectors: &[Vec<f32>],
    encoding: EncodingFormat,
    prompt_tokens: u32,
) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match encoding {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            let mut item = Map::new();
            item.insert("object".into(), "embedding".into());
            item.insert("index".into(), index.into());
            item.insert("embedding".into(), embedding);
            Value::Object(item)
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<EmbeddingsRequest, ApiError> {
        parse_embeddings(v.to_string().as_bytes())
    }

    #[test]
    fn every_input_form_is_read() {
        let one = parse(json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(one.inputs, vec![EmbedInput::Text("hi".into())]);
        assert_eq!(one.encoding, EncodingFormat::Float);
        let batch =
            parse(json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64"})).unwrap();
        assert_eq!(batch.inputs.len(), 2);
        assert_eq!(batch.encoding, EncodingFormat::Base64);
        let ids = parse(json!({"model": "m", "input": [1, 2, 3]})).unwrap();
        assert_eq!(ids.inputs, vec![EmbedInput::Tokens(vec![1, 2, 3])]);
        let id_batch = parse(json!({"model": "m", "input": [[1], [2, 3]]})).unwrap();
        assert_eq!(id_batch.inputs.len(), 2);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": ""}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": ["a", ""]}), "input[1]"),
            (json!({"model": "m", "input": ["a", 3]}), "input[1]"),
            (json!({"model": "m", "input": [[1, -2]]}), "input[0][1]"),
            (json!({"model": "m", "input": "a\u{0}b"}), "input"),
            (
                json!({"model": "m", "input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (
                json!({"model": "m", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
        ];
        for (body, param) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        }
        let many: Vec<&str> = vec!["x"; MAX_INPUTS + 1];
        let err = parse(json!({"model": "m", "input": many})).unwrap_err();
        assert!(err.message.contains("at most 2048"), "{}", err.message);
    }

    #[test]
    fn dimensions_pass_only_at_the_models_width() {
        assert!(check_dimensions(None, "m", 64).is_ok());
        assert!(check_dimensions(Some(64), "m", 64).is_ok());
        let err = check_dimensions(Some(32), "m", 64).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("dimensions"));
        assert!(err.message.contains("64 values"), "{}", err.message);
    }

    #[test]
    fn base64_holds_the_little_endian_floats() {
        let v = embeddings_response("m", &[vec![1.0, -0.5]], EncodingFormat::Base64, 3);
        let text = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, vec![1.0, -0.5]);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["object"], "embedding");
    }
}
