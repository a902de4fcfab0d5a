//! The model facts that memory estimates need, read from the metadata and
//! checked for sanity.
//!
//! Keys and defaults follow llama.cpp's `llama_model_base::load_hparams`
//! (`src/llama-model.cpp`) and the per-architecture `load_arch_hparams`
//! (`src/models/*.cpp`) of the pinned revision. Where llama.cpp would accept
//! an absurd value (a zero head count, a 4-billion-layer model) and then
//! misbehave, this module refuses it with the key's name.

use crate::error::GgufError;
use crate::ggml::file_type_name;
use crate::value::{Array, Value};
use crate::{TensorInfo, TensorSummary, MAX_BLOCK_COUNT, MAX_EMBEDDING_LENGTH, MAX_HEAD_DIM};

/// What a memory estimate needs to know about a model, from its metadata.
/// Counts are plain numbers; lengths are in elements unless named `_bytes`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelMetadata {
    /// `general.architecture`, e.g. `"llama"`, `"gemma3"`; the prefix of the
    /// architecture's own keys.
    pub architecture: String,
    /// `general.name`, for display.
    pub name: Option<String>,
    /// Total elements over all tensors (the "135M" of a model's name).
    pub parameter_count: u64,
    /// `general.file_type` (llama.cpp's `llama_ftype`), when present.
    pub file_type: Option<u32>,
    /// Name of the quantisation: the `general.file_type` name (`"Q4_K_M"`)
    /// when known, else the name of the ggml type holding the most bytes,
    /// else `"unknown"` (a file with no tensors).
    pub quantization: String,
    /// `{arch}.block_count`: transformer layers.
    pub block_count: u32,
    /// `{arch}.embedding_length`: width of the hidden state.
    pub embedding_length: u32,
    /// `{arch}.attention.head_count` (query heads). When the file gives one
    /// value per layer, this is layer 0's, as llama.cpp's `n_head()` is. Zero
    /// only for recurrent architectures (Mamba, RWKV), which have no attention.
    pub head_count: u32,
    /// `{arch}.attention.head_count_kv` per layer (`block_count` entries):
    /// the file may give a scalar (expanded here) or one value per layer;
    /// defaults to the head count. Zero for a layer with no attention (the
    /// recurrent layers of hybrid models): it holds no KV cache.
    pub head_count_kv: Vec<u32>,
    /// `{arch}.attention.key_length`: elements per key head; defaults to
    /// `embedding_length / head_count`.
    pub key_length: u32,
    /// `{arch}.attention.value_length`: elements per value head; defaults to
    /// `embedding_length / head_count`.
    pub value_length: u32,
    /// `{arch}.context_length`: the context the model was trained for, in tokens.
    pub context_length: u32,
    /// `{arch}.attention.sliding_window`, in tokens; `None` when absent or 0
    /// (llama.cpp treats 0 as "no sliding window").
    pub sliding_window: Option<u32>,
    /// The period of the sliding-window layout, as llama.cpp's
    /// `set_swa_pattern` takes it: in every group of this many layers all but
    /// one use the window (0: every layer does). From
    /// `{arch}.attention.sliding_window_pattern` when that is a number, else
    /// the default llama.cpp's code for the architecture uses (gemma3: 6;
    /// see [`swa_default`]). `None` when there is no sliding window, when the
    /// file lists the layers one by one, or when the layout is unknown.
    pub sliding_window_pattern: Option<u32>,
    /// One flag per layer, `true` where the layer attends over the sliding
    /// window only (its KV cache is capped at `sliding_window` tokens).
    /// Empty when the model has no sliding window or its layout is unknown:
    /// then every layer is taken to be global, which can only over-estimate.
    pub sliding_window_layers: Vec<bool>,
    /// Number of tokens: the length of `tokenizer.ggml.tokens`, else
    /// `{arch}.vocab_size`, else 0 (a file with no vocabulary).
    pub vocab_size: u32,
    /// Whether `tokenizer.chat_template` is present.
    pub has_chat_template: bool,
    /// Sum of the tensors' data sizes in bytes: the mapped weights.
    pub tensor_data_bytes: u64,
}

/// Architectures llama.cpp treats as recurrent (`llm_arch_is_recurrent` in
/// `src/llama-arch.cpp`): they have no attention heads, so a head count of 0
/// (which their converters write) is expected.
const RECURRENT_ARCHITECTURES: &[&str] =
    &["mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"];

/// The sliding-window layout llama.cpp assumes for an architecture whose file
/// has a window but no `sliding_window_pattern` key: `(period, dense_first)`,
/// from the `load_swa_pattern(ml, period, dense_first)` calls in
/// `src/models/*.cpp`. Only architectures where llama.cpp applies the pattern
/// whenever a window is set are listed; for others the layout is left
/// unknown (every layer counted as global).
///
/// gemma3 (`src/models/gemma3.cpp`): with `sliding_window > 0`, llama.cpp
/// calls `load_swa_pattern(ml, 6)`; `set_swa_pattern(6)` makes layer `il` a
/// window layer when `il % 6 < 5`, so layers 5, 11, 17, … are global.
pub fn swa_default(architecture: &str) -> Option<(u32, bool)> {
    Some(match architecture {
        "gemma2" => (2, false),
        "gemma3" => (6, false),
        "gemma3n" => (5, false),
        "gemma-embedding" => (6, false),
        "cohere2" => (4, false),
        "gpt-oss" => (2, false),
        "olmo2" => (4, false),
        _ => return None,
    })
}

/// Per-layer window flags for a period, as llama.cpp's
/// `llama_hparams::set_swa_pattern` (`src/llama-hparams.cpp`) computes them.
fn swa_layers(block_count: u32, period: u32, dense_first: bool) -> Vec<bool> {
    (0..block_count)
        .map(|il| {
            if period == 0 {
                true
            } else if dense_first {
                il % period != 0
            } else {
                il % period < period - 1
            }
        })
        .collect()
}

/// Typed, range-checked access to the metadata.
struct Meta<'a> {
    metadata: &'a [(String, Value)],
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "str", other)),
        }
    }

    /// An integer value of any width, checked to lie in `min..=max`.
    fn u32_in(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Some(n) = value.as_integer() else {
            return Err(wrong_type(key, "unsigned integer", value));
        };
        check_range(key, n, min, max).map(Some)
    }

    fn required_u32(&self, key: &str, min: u32, max: u32) -> Result<u32, GgufError> {
        self.u32_in(key, min, max)?
            .ok_or_else(|| GgufError::MissingKey {
                key: key.to_owned(),
            })
    }

    /// A value llama.cpp reads with `get_key_or_arr`: a scalar for every
    /// layer, or an array with exactly one entry per layer.
    fn per_layer(
        &self,
        key: &str,
        n_layers: u32,
        min: u32,
        max: u32,
    ) -> Result<Option<Vec<u32>>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(array)) => {
                let values = array_u32s(key, array, min, max)?;
                if values.len() != n_layers as usize {
                    return Err(GgufError::MetadataArrayLength {
                        key: key.to_owned(),
                        len: values.len(),
                        expected: n_layers as usize,
                    });
                }
                Ok(Some(values))
            }
            Some(_) => {
                let value = self.required_u32(key, min, max)?;
                Ok(Some(vec![value; n_layers as usize]))
            }
        }
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongValueType {
        key: key.to_owned(),
        expected,
        found: found.value_type().name(),
    }
}

fn check_range(key: &str, value: i128, min: u32, max: u32) -> Result<u32, GgufError> {
    if value < i128::from(min) || value > i128::from(max) {
        return Err(GgufError::MetadataRange {
            key: key.to_owned(),
            value,
            min: min.into(),
            max: max.into(),
        });
    }
    // In min..=max, so it fits.
    Ok(value as u32)
}

fn array_u32s(key: &str, array: &Array, min: u32, max: u32) -> Result<Vec<u32>, GgufError> {
    (0..array.len())
        .map(|i| match array.integer_at(i) {
            Some(n) => check_range(&format!("{key}[{i}]"), n, min, max),
            None => Err(GgufError::WrongValueType {
                key: key.to_owned(),
                expected: "array of integers",
                found: array.element_type().name(),
            }),
        })
        .collect()
}

pub(crate) fn derive(
    metadata: &[(String, Value)],
    tensors: &[TensorInfo],
) -> Result<ModelMetadata, GgufError> {
    let meta = Meta { metadata };

    const ARCH_KEY: &str = "general.architecture";
    let architecture = meta
        .string(ARCH_KEY)?
        .ok_or_else(|| GgufError::MissingKey {
            key: ARCH_KEY.to_owned(),
        })?;
    if architecture.is_empty() {
        return Err(GgufError::EmptyValue {
            key: ARCH_KEY.to_owned(),
        });
    }
    let key = |suffix: &str| format!("{architecture}.{suffix}");

    let name = meta.string("general.name")?.map(str::to_owned);
    let block_count = meta.required_u32(&key("block_count"), 1, MAX_BLOCK_COUNT)?;
    let embedding_length = meta.required_u32(&key("embedding_length"), 1, MAX_EMBEDDING_LENGTH)?;
    let context_length = meta.required_u32(&key("context_length"), 1, u32::MAX)?;

    let recurrent = RECURRENT_ARCHITECTURES.contains(&architecture);
    let head_count_key = key("attention.head_count");
    // A head needs at least one element of the hidden state.
    let heads = match meta.per_layer(&head_count_key, block_count, 0, embedding_length)? {
        Some(heads) => heads,
        None if recurrent => vec![0; block_count as usize],
        None => {
            return Err(GgufError::MissingKey {
                key: head_count_key,
            })
        }
    };
    // Layers may have no attention (hybrid models), but an attention model
    // with no heads at all is corrupt.
    if !recurrent && heads.iter().all(|&h| h == 0) {
        return Err(GgufError::MetadataRange {
            key: head_count_key,
            value: 0,
            min: 1,
            max: embedding_length.into(),
        });
    }
    let head_count = heads[0];

    let kv_key = key("attention.head_count_kv");
    let head_count_kv = meta
        .per_layer(&kv_key, block_count, 0, u32::MAX)?
        .unwrap_or_else(|| heads.clone());
    for (layer, (&kv_heads, &heads)) in head_count_kv.iter().zip(&heads).enumerate() {
        if kv_heads > heads {
            return Err(GgufError::KvHeads {
                key: kv_key,
                layer,
                kv_heads,
                heads,
            });
        }
    }

    let head_dim = |suffix: &str| -> Result<u32, GgufError> {
        if let Some(n) = meta.u32_in(&key(suffix), 1, MAX_HEAD_DIM)? {
            return Ok(n);
        }
        if head_count == 0 {
            return Ok(0);
        }
        // llama.cpp divides silently; a remainder means the default is wrong
        // for this file, so ask for the key instead of guessing.
        if embedding_length % head_count != 0 {
            return Err(GgufError::MetadataNotDivisible {
                key: key("embedding_length"),
                value: embedding_length.into(),
                divisor_key: key("attention.head_count"),
                divisor: head_count.into(),
            });
        }
        Ok(embedding_length / head_count)
    };
    let key_length = head_dim("attention.key_length")?;
    let value_length = head_dim("attention.value_length")?;

    let sliding_window = meta
        .u32_in(&key("attention.sliding_window"), 0, u32::MAX)?
        .filter(|&w| w > 0);
    let (sliding_window_pattern, sliding_window_layers) =
        sliding_window_layout(&meta, architecture, block_count, sliding_window.is_some())?;

    let vocab_size = match meta.get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::String(tokens))) => {
            // At most MAX_ARRAY_LEN, which fits in u32.
            u32::try_from(tokens.len()).unwrap_or(u32::MAX)
        }
        Some(other) => return Err(wrong_type("tokenizer.ggml.tokens", "array of str", other)),
        None => meta.u32_in(&key("vocab_size"), 0, u32::MAX)?.unwrap_or(0),
    };
    let has_chat_template = meta.string("tokenizer.chat_template")?.is_some();

    let file_type = meta.u32_in("general.file_type", 0, u32::MAX)?;
    let summary = TensorSummary::of(tensors);
    let quantization = file_type
        .and_then(file_type_name)
        .or_else(|| summary.by_type.first().map(|t| t.ggml_type))
        .unwrap_or("unknown")
        .to_owned();

    Ok(ModelMetadata {
        architecture: architecture.to_owned(),
        name,
        parameter_count: tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.n_elements)),
        file_type,
        quantization,
        block_count,
        embedding_length,
        head_count,
        head_count_kv,
        key_length,
        value_length,
        context_length,
        sliding_window,
        sliding_window_pattern,
        sliding_window_layers,
        vocab_size,
        has_chat_template,
        tensor_data_bytes: summary.total_bytes,
    })
}

/// Reads `{arch}.attention.sliding_window_pattern` the way llama.cpp's
/// `load_swa_pattern` does: an array gives one flag per layer (non-zero =
/// window), a number gives the period; absent, the architecture's default.
fn sliding_window_layout(
    meta: &Meta<'_>,
    architecture: &str,
    block_count: u32,
    has_window: bool,
) -> Result<(Option<u32>, Vec<bool>), GgufError> {
    let key = format!("{architecture}.attention.sliding_window_pattern");
    // Validated even without a window, so a corrupt value never passes.
    let (period, dense_first, flags) = match meta.get(&key) {
        Some(Value::Array(array)) => {
            let flags = array_u32s(&key, array, 0, u32::MAX)?;
            if flags.len() != block_count as usize {
                return Err(GgufError::MetadataArrayLength {
                    key,
                    len: flags.len(),
                    expected: block_count as usize,
                });
            }
            (
                None,
                false,
                Some(flags.into_iter().map(|f| f != 0).collect()),
            )
        }
        Some(_) => {
            let period = meta.required_u32(&key, 0, u32::MAX)?;
            // The explicit key keeps the architecture's dense-first choice.
            let dense_first = swa_default(architecture).is_some_and(|(_, dense_first)| dense_first);
            (Some(period), dense_first, None)
        }
        None => match swa_default(architecture) {
            Some((period, dense_first)) => (Some(period), dense_first, None),
            None => (None, false, None),
        },
    };
    if !has_window {
        return Ok((None, Vec::new()));
    }
    let layers = match (flags, period) {
        (Some(flags), _) => flags,
        (None, Some(period)) => swa_layers(block_count, period, dense_first),
        (None, None) => Vec::new(),
    };
    Ok((period, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn base(arch: &str) -> Vec<(String, Value)> {
        meta(&[
            ("general.architecture", Value::String(arch.to_owned())),
            (&format!("{arch}.block_count"), Value::U32(18)),
            (&format!("{arch}.embedding_length"), Value::U32(640)),
            (&format!("{arch}.context_length"), Value::U32(32768)),
            (&format!("{arch}.attention.head_count"), Value::U32(4)),
        ])
    }

    #[test]
    fn gemma3_window_layout_follows_llama_cpp() {
        // Layers 5, 11 and 17 are global in Gemma 3 (pattern 6).
        let mut m = base("gemma3");
        m.push((
            "gemma3.attention.sliding_window".to_owned(),
            Value::U32(512),
        ));
        let model = derive(&m, &[]).unwrap();
        assert_eq!(model.sliding_window, Some(512));
        assert_eq!(model.sliding_window_pattern, Some(6));
        let global: Vec<usize> = (0..18)
            .filter(|&i| !model.sliding_window_layers[i])
            .collect();
        assert_eq!(global, vec![5, 11, 17]);
    }

    #[test]
    fn gemma3_without_a_window_has_no_layout() {
        let model = derive(&base("gemma3"), &[]).unwrap();
        assert_eq!(model.sliding_window, None);
        assert_eq!(model.sliding_window_pattern, None);
        assert!(model.sliding_window_layers.is_empty());
    }

    #[test]
    fn explicit_pattern_array_is_used_per_layer() {
        let mut m = base("llama");
        m.push(("llama.attention.sliding_window".to_owned(), Value::U32(128)));
        let flags: Vec<bool> = (0..18).map(|i| i % 3 != 0).collect();
        m.push((
            "llama.attention.sliding_window_pattern".to_owned(),
            Value::Array(Array::Bool(flags.clone())),
        ));
        let model = derive(&m, &[]).unwrap();
        assert_eq!(model.sliding_window_pattern, None);
        assert_eq!(model.sliding_window_layers, flags);
    }

    #[test]
    fn unknown_architecture_window_layout_is_left_unknown() {
        let mut m = base("llama");
        m.push((
            "llama.attention.sliding_window".to_owned(),
            Value::U32(4096),
        ));
        let model = derive(&m, &[]).unwrap();
        assert_eq!(model.sliding_window, Some(4096));
        assert!(model.sliding_window_layers.is_empty());
    }

    #[test]
    fn swa_layers_matches_set_swa_pattern() {
        assert_eq!(swa_layers(4, 2, false), vec![true, false, true, false]);
        assert_eq!(swa_layers(4, 2, true), vec![false, true, false, true]);
        assert_eq!(swa_layers(3, 0, false), vec![true; 3]);
        assert_eq!(swa_layers(3, 1, false), vec![false; 3]);
    }

    #[test]
    fn scalar_kv_heads_expand_and_default_to_heads() {
        let model = derive(&base("llama"), &[]).unwrap();
        assert_eq!(model.head_count_kv, vec![4; 18]);
        assert_eq!(model.key_length, 160);
        let mut m = base("llama");
        m.push(("llama.attention.head_count_kv".to_owned(), Value::U32(1)));
        assert_eq!(derive(&m, &[]).unwrap().head_count_kv, vec![1; 18]);
    }

    #[test]
    fn kv_head_array_must_have_one_entry_per_layer() {
        let mut m = base("llama");
        m.push((
            "llama.attention.head_count_kv".to_owned(),
            Value::Array(Array::U32(vec![1; 17])),
        ));
        let err = derive(&m, &[]).unwrap_err();
        assert_eq!(err.kind(), "metadata_array_length");
        assert_eq!(
            err.to_string(),
            "metadata key \"llama.attention.head_count_kv\" has 17 entries, expected 18 (one per layer)"
        );
    }

    #[test]
    fn insane_counts_name_the_key() {
        let mut m = base("llama");
        m[1].1 = Value::U32(0);
        let err = derive(&m, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata key \"llama.block_count\" = 0 is outside 1..=512"
        );

        let mut m = base("llama");
        m[4].1 = Value::U32(0);
        assert_eq!(derive(&m, &[]).unwrap_err().kind(), "metadata_range");

        let mut m = base("llama");
        m[4].1 = Value::U32(7);
        let err = derive(&m, &[]).unwrap_err();
        assert_eq!(err.kind(), "metadata_not_divisible");
        assert!(err.to_string().contains("llama.embedding_length"), "{err}");

        let mut m = base("llama");
        m[1].1 = Value::I32(-3);
        assert!(derive(&m, &[]).unwrap_err().to_string().contains("= -3"));

        let mut m = base("llama");
        m[1].1 = Value::String("18".to_owned());
        assert_eq!(derive(&m, &[]).unwrap_err().kind(), "wrong_value_type");
    }

    #[test]
    fn recurrent_models_may_have_no_heads() {
        let mut m = base("mamba");
        m[4].1 = Value::U32(0);
        let model = derive(&m, &[]).unwrap();
        assert_eq!((model.head_count, model.key_length), (0, 0));
        assert_eq!(model.head_count_kv, vec![0; 18]);
    }

    #[test]
    fn missing_architecture_is_named() {
        let err = derive(&[], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata key \"general.architecture\" is missing"
        );
    }
}
