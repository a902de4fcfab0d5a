//! The memory estimate's view of a validated file ([`GgufFile::shape`]).

use crate::GgufFile;
use locara_core::estimate::MatmulWeight;
use locara_core::ModelShape;

impl GgufFile {
    /// The estimate's view of this model: the shape `locara_core::estimate`
    /// sizes the K/V cache, compute buffers and repacked weights from.
    pub fn shape(&self) -> ModelShape {
        shape_of(self)
    }
}

fn shape_of(file: &GgufFile) -> ModelShape {
    let m = &file.model;
    let feed_forward_length = feed_forward_width(file);
    let matmul_weights = file
        .tensors
        .iter()
        .filter(|t| matches!(t.dims.len(), 2 | 3) && !is_row_lookup(&t.name))
        .map(|t| MatmulWeight {
            ggml_type: t.ggml_type.name().to_string(),
            rows: t.dims[1],
            bytes: t.n_bytes,
        })
        .collect();
    ModelShape {
        architecture: m.architecture.clone(),
        block_count: m.block_count,
        embedding_length: m.embedding_length,
        feed_forward_length,
        head_count: m.head_count,
        head_count_kv: m.head_count_kv.clone(),
        key_length: m.key_length,
        value_length: m.value_length,
        context_length: m.context_length,
        sliding_window: m.sliding_window,
        sliding_window_layers: m.sliding_window_layers.clone(),
        vocab_size: m.vocab_size,
        vocab_merges: file
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .map_or(0, |a| u32::try_from(a.len()).unwrap_or(u32::MAX)),
        weights_bytes: m.tensor_data_bytes,
        matmul_weights,
    }
}

/// The feed-forward width a micro-batch's activations have: the largest
/// `{arch}.feed_forward_length` over layers, or for a mixture of experts the
/// selected experts together (`expert_feed_forward_length ×
/// expert_used_count`) when that is wider; 0 when the file says neither.
fn feed_forward_width(file: &GgufFile) -> u32 {
    let arch = &file.model.architecture;
    let largest = |key: &str| -> u64 {
        match file.get(&format!("{arch}.{key}")) {
            Some(v) => match v.as_array() {
                Some(a) => (0..a.len()).filter_map(|i| a.integer_at(i)).max(),
                None => v.as_integer(),
            }
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)),
            None => 0,
        }
    };
    let dense = largest("feed_forward_length");
    let experts =
        largest("expert_feed_forward_length").saturating_mul(largest("expert_used_count"));
    u32::try_from(dense.max(experts)).unwrap_or(u32::MAX)
}

/// Tensors llama.cpp reads by row (`GGML_OP_GET_ROWS`), never by matrix
/// multiplication, so the CPU backend never repacks them.
fn is_row_lookup(name: &str) -> bool {
    [
        "token_embd.",
        "pos_embd.",
        "token_types.",
        "per_layer_token_embd.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}
