//! Builds GGUF bytes for tests: valid synthetic models, and the raw material
//! for malformed ones (every field can be set to a value a writer would never
//! produce).
//!
//! ```
//! use locara_gguf::testing::GgufBuilder;
//!
//! let bytes = GgufBuilder::synthetic().build();
//! let file = locara_gguf::validate_bytes(&bytes).unwrap();
//! assert_eq!(file.model.architecture, "llama");
//! ```

use crate::value::{Array, Value};
use crate::GgmlType;

/// Data past this offset is never written for a tensor: a test that places a
/// tensor far away wants it past the end of the file, not a huge buffer.
const MAX_SYNTHETIC_DATA: u64 = 16 << 20;

/// A metadata entry as it will be written.
#[derive(Debug, Clone)]
pub struct RawKv {
    /// Key bytes (need not be UTF-8).
    pub key: Vec<u8>,
    /// Value type id (need not be one the format defines).
    pub type_id: u32,
    /// Encoded value, written after the type id.
    pub payload: Vec<u8>,
}

/// A tensor info as it will be written.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Name bytes (need not be UTF-8).
    pub name: Vec<u8>,
    /// Dimensions, innermost first; their count is written as n_dims.
    pub dims: Vec<u64>,
    /// ggml type id (need not be one ggml defines).
    pub type_id: u32,
    /// Offset relative to the data section; `None` packs the tensor after
    /// the previous one, padded to the alignment, as writers do.
    pub offset: Option<u64>,
}

/// A GGUF writer for tests. Fields are public so a test can break any of them.
#[derive(Debug, Clone)]
pub struct GgufBuilder {
    /// The four magic bytes (`GGUF`).
    pub magic: [u8; 4],
    /// The version field (3).
    pub version: u32,
    /// Written instead of the real tensor count when set.
    pub tensor_count_override: Option<u64>,
    /// Written instead of the real metadata count when set.
    pub kv_count_override: Option<u64>,
    /// Alignment used to pad and place the data, in bytes; independent of any
    /// `general.alignment` entry so that tests can make them disagree.
    pub alignment: u64,
    /// Length of the data section when set; otherwise it ends with the last
    /// tensor that lies within 16 MiB.
    pub data_len: Option<u64>,
    /// Metadata entries, in order.
    pub kvs: Vec<RawKv>,
    /// Tensor infos, in order.
    pub tensors: Vec<TensorSpec>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder::new()
    }
}

impl GgufBuilder {
    /// An empty version-3 file: no metadata, no tensors.
    pub fn new() -> Self {
        GgufBuilder {
            magic: *b"GGUF",
            version: 3,
            tensor_count_override: None,
            kv_count_override: None,
            alignment: crate::DEFAULT_ALIGNMENT,
            data_len: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The minimal metadata a language model needs to pass validation.
    pub fn minimal_model(arch: &str) -> Self {
        GgufBuilder::new()
            .kv("general.architecture", Value::String(arch.to_owned()))
            .kv(&format!("{arch}.block_count"), Value::U32(1))
            .kv(&format!("{arch}.context_length"), Value::U32(2048))
            .kv(&format!("{arch}.embedding_length"), Value::U32(64))
            .kv(&format!("{arch}.attention.head_count"), Value::U32(4))
    }

    /// A small valid model: metadata of every value type (a nested array and
    /// a chat template among them) and five tensors of different types.
    ///
    /// Its facts, for assertions: architecture `llama`, 1 layer, embedding
    /// length 64, 4 heads, 2 KV heads, context 2048, 32 tokens, file type 7
    /// (`Q8_0`), tensors as listed in the body.
    pub fn synthetic() -> Self {
        let tokens: Vec<String> = (0..32)
            .map(|i| match i {
                0 => "<s>".to_owned(),
                1 => "</s>".to_owned(),
                2 => "héllo".to_owned(),
                i => format!("tok{i}"),
            })
            .collect();
        GgufBuilder::new()
            .kv("general.architecture", Value::String("llama".to_owned()))
            .kv("general.name", Value::String("Synthetic Test Model".to_owned()))
            .kv("general.alignment", Value::U32(32))
            .kv("general.file_type", Value::U32(7))
            .kv("llama.block_count", Value::U32(1))
            // u64 on purpose: writers disagree on integer widths.
            .kv("llama.context_length", Value::U64(2048))
            .kv("llama.embedding_length", Value::U32(64))
            .kv("llama.attention.head_count", Value::U32(4))
            .kv("llama.attention.head_count_kv", Value::Array(Array::U32(vec![2])))
            .kv("llama.rope.freq_base", Value::F32(10000.0))
            .kv("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5))
            .kv("test.u8", Value::U8(200))
            .kv("test.i8", Value::I8(-5))
            .kv("test.u16", Value::U16(60000))
            .kv("test.i16", Value::I16(-30000))
            .kv("test.i32", Value::I32(-7))
            .kv("test.i64", Value::I64(-1 << 40))
            .kv("test.bool", Value::Bool(true))
            .kv("test.flags", Value::Array(Array::Bool(vec![true, false, true])))
            .kv(
                "test.nested",
                Value::Array(Array::Array(vec![
                    Array::U8(vec![1, 2, 3]),
                    Array::String(vec!["inner".to_owned()].into()),
                    Array::Array(vec![Array::I64(vec![-1, 1]), Array::F64(vec![0.5])]),
                ])),
            )
            .kv("tokenizer.ggml.model", Value::String("gpt2".to_owned()))
            .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens.into())))
            .kv("tokenizer.ggml.scores", Value::Array(Array::F32((0..32).map(|i| -(i as f32)).collect())))
            .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 32])))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(0))
            .kv(
                "tokenizer.chat_template",
                Value::String(
                    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
                        .to_owned(),
                ),
            )
            .tensor("token_embd.weight", &[64, 32], GgmlType::Q8_0)
            .tensor("blk.0.attn_norm.weight", &[64], GgmlType::F32)
            .tensor("blk.0.attn_q.weight", &[256, 4], GgmlType::Q4_K)
            .tensor("blk.0.ffn_up.weight", &[64, 4], GgmlType::F16)
            .tensor("output.weight", &[64, 32], GgmlType::Q4_0)
    }

    /// Adds a metadata entry.
    pub fn kv(mut self, key: &str, value: Value) -> Self {
        let (type_id, payload) = encode_value(&value);
        self.kvs.push(RawKv {
            key: key.as_bytes().to_vec(),
            type_id,
            payload,
        });
        self
    }

    /// Adds a metadata entry with raw key bytes, type id and payload.
    pub fn kv_raw(mut self, key: &[u8], type_id: u32, payload: Vec<u8>) -> Self {
        self.kvs.push(RawKv {
            key: key.to_vec(),
            type_id,
            payload,
        });
        self
    }

    /// Replaces the value of the first entry with key `key`, or adds it.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        let (type_id, payload) = encode_value(&value);
        match self.kvs.iter_mut().find(|kv| kv.key == key.as_bytes()) {
            Some(kv) => {
                kv.type_id = type_id;
                kv.payload = payload;
                self
            }
            None => self.kv(key, value),
        }
    }

    /// Removes every entry with key `key`.
    pub fn remove(mut self, key: &str) -> Self {
        self.kvs.retain(|kv| kv.key != key.as_bytes());
        self
    }

    /// Adds a tensor, packed after the previous one.
    pub fn tensor(self, name: &str, dims: &[u64], ggml_type: GgmlType) -> Self {
        self.tensor_spec(TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            type_id: ggml_type.id(),
            offset: None,
        })
    }

    /// Adds a tensor described field by field.
    pub fn tensor_spec(mut self, spec: TensorSpec) -> Self {
        self.tensors.push(spec);
        self
    }

    /// Offsets (relative to the data section) that packing gives each tensor,
    /// with explicit offsets kept; and each tensor's size in bytes (0 when
    /// the type or shape is invalid).
    pub fn layout(&self) -> Vec<(u64, u64)> {
        let mut next = 0u64;
        self.tensors
            .iter()
            .map(|spec| {
                let size = spec_bytes(spec);
                let offset = spec.offset.unwrap_or(next);
                next = align_up(offset.saturating_add(size), self.alignment);
                (offset, size)
            })
            .collect()
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        let tensor_count = self
            .tensor_count_override
            .unwrap_or(self.tensors.len() as u64);
        let kv_count = self.kv_count_override.unwrap_or(self.kvs.len() as u64);
        out.extend_from_slice(&tensor_count.to_le_bytes());
        out.extend_from_slice(&kv_count.to_le_bytes());
        for kv in &self.kvs {
            put_bytes(&mut out, &kv.key);
            out.extend_from_slice(&kv.type_id.to_le_bytes());
            out.extend_from_slice(&kv.payload);
        }
        let layout = self.layout();
        for (spec, &(offset, _)) in self.tensors.iter().zip(&layout) {
            put_bytes(&mut out, &spec.name);
            out.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for dim in &spec.dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&spec.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        if self.tensors.is_empty() {
            return out;
        }
        let data_start = align_up(out.len() as u64, self.alignment);
        let data_len = self.data_len.unwrap_or_else(|| {
            layout
                .iter()
                .map(|&(offset, size)| offset.saturating_add(size))
                .filter(|&end| end <= MAX_SYNTHETIC_DATA)
                .max()
                .unwrap_or(0)
        });
        out.resize((data_start + data_len) as usize, 0);
        out
    }
}

fn spec_bytes(spec: &TensorSpec) -> u64 {
    let Ok(ty) = GgmlType::from_id(spec.type_id) else {
        return 0;
    };
    spec.dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| ty.n_bytes(n))
        .unwrap_or(0)
}

fn align_up(value: u64, alignment: u64) -> u64 {
    if alignment == 0 {
        return value;
    }
    value.div_ceil(alignment).saturating_mul(alignment)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a value as GGUF stores it after its type id; returns the type id
/// and the payload.
pub fn encode_value(value: &Value) -> (u32, Vec<u8>) {
    let mut out = Vec::new();
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_bytes(&mut out, s.as_bytes()),
        Value::Array(a) => encode_array(&mut out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
    (value.value_type().id(), out)
}

fn encode_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, values: &[T], f: fn(T) -> [u8; N]) {
        for &v in values {
            out.extend_from_slice(&f(v));
        }
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_bytes(out, s.as_bytes())),
        Array::Array(v) => v.iter().for_each(|a| encode_array(out, a)),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
    }
}
