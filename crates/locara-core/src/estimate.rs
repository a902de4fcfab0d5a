//! The memory estimate: what a model will cost at a context, K/V type and
//! number of parallel sequences, before it is loaded.
//!
//! Every admission, eviction and refusal rests on this number, so each part
//! of it follows how the pinned llama.cpp (`llama-cpp-sys-2` 0.1.161) sizes
//! the buffer in question, with the file and function named where it is
//! derived, and the parts that llama.cpp does not fix (scratch memory the
//! graph touches, the worker's own heap) are calibrated against the measured
//! footprint of real engine workers (`crates/locara/examples/estimate_accuracy.rs`).
//!
//! The estimate has the breakdown of docs/ARCHITECTURE.md's memory accounting:
//!
//! * **mapped weights**: the tensor data, memory-mapped from the GGUF file:
//!   file-backed and clean, so reported apart from the footprint;
//! * the parts the OS charges the worker as its **footprint** (dirty,
//!   anonymous memory): weights the CPU backend copies into a repacked
//!   layout, the **K/V cache**, the logits **output buffer**, the **compute
//!   buffers** (scratch of the graph), and the **overhead** of the process.
//!
//! ```
//! use locara_core::estimate::{estimate, Backend, EstimateOptions, ModelShape};
//! use locara_core::KvType;
//!
//! // A llama-style model: 30 layers, 3 K/V heads of 64 dims.
//! let shape = ModelShape::dense("llama", 30, 576, 1536, 9, 3, 64, 8192, 49152, 96_000_000);
//! let options = EstimateOptions {
//!     context: 8192,
//!     kv_type: KvType::Q8_0,
//!     parallel: 1,
//!     backend: Backend::Gpu,
//!     full_window_cache: false,
//!     pool: None,
//! };
//! let e = estimate(&shape, &options).unwrap();
//! // 30 layers × (K + V) × 192 elements × 8192 cells × 34/32 bytes.
//! assert_eq!(e.kv_cache, 30 * 2 * 192 * 8192 * 34 / 32);
//! assert!(e.total() > e.mapped_weights + e.kv_cache);
//! ```

use crate::load::{KvType, LoadDefaults};
use serde::Serialize;

/// Tokens llama.cpp processes in one micro-batch (`n_ubatch`): its default,
/// which the engine worker keeps. The compute buffers scale with it.
pub const UBATCH_TOKENS: u32 = 512;

/// llama.cpp rounds the context up to a multiple of this many cells
/// (`GGML_PAD(n_ctx, 256)` in `llama_context::llama_context`,
/// `src/llama-context.cpp`), and pads the sliding-window cache the same way
/// (`llama_kv_cache_iswa::llama_kv_cache_iswa`, `src/llama-kv-cache-iswa.cpp`).
pub const CELL_PAD: u32 = 256;

/// The most tokens one input of an embedding request may hold (and the
/// cells of the worker's embedding context, at most the model's context).
/// OpenAI's own embedding models take 8191; 2048 covers the passages that
/// retrieval apps embed while keeping the context's K/V small (24 MiB for
/// SmolLM2-135M at q8_0, 9 MiB for Gemma 3 270M).
pub const EMBED_MAX_TOKENS: u32 = 2048;

/// Tokens per decode of the embedding context. llama.cpp computes logits for
/// every token of an embedding context (`n_vocab` f32 each, in the output
/// buffer and again in the compute buffer) even though only the hidden
/// states are read; decoding an input in micro-batches of this many tokens
/// bounds that to `2 × 32 × n_vocab × 4` bytes (12 MiB for SmolLM2's 49k
/// vocabulary, 64 MiB for Gemma 3's 262k) instead of 512 rows' worth.
pub const EMBED_CHUNK_TOKENS: u32 = 32;

/// Architectures llama.cpp runs with a recurrent state instead of (or beside)
/// a K/V cache: `llm_arch_is_recurrent` and `llm_arch_is_hybrid` in
/// `src/llama-arch.cpp`. Their state is sized by other rules
/// (`llama_memory_recurrent`); the estimate refuses them rather than guess.
const RECURRENT: &[&str] = &["mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"];
const HYBRID: &[&str] = &[
    "jamba",
    "falcon-h1",
    "plamo2",
    "granitehybrid",
    "lfm2",
    "lfm2moe",
    "nemotron_h",
    "nemotron_h_moe",
    "qwen3next",
    "kimi-linear",
    "bailingmoe3",
    "kimi-k3",
    "glm5-next",
    "qwen35",
    "qwen35moe",
    "qwen4exp",
    "deepseek4",
    "minimax-01",
];

/// Architectures whose cache `llama_model::create_memory`
/// (`src/llama-model.cpp`) builds by rules of their own (latent attention,
/// indexer caches, layers that reuse another layer's cache, or no cache at
/// all), with the reason shown to the user.
const SPECIAL_CACHE: &[(&str, &str)] = &[
    ("deepseek2", LATENT),
    ("deepseek32", INDEXER),
    ("glm-dsa", INDEXER),
    ("minimax-m3", INDEXER),
    ("hy_v4", INDEXER),
    ("dots3note", INDEXER),
    ("gemma3n", REUSE),
    ("gemma4", REUSE),
    ("gemma4-assistant", DRAFT),
    ("eagle3", DRAFT),
    ("dflash", DRAFT),
    ("bert", ENCODER),
    ("nomic-bert", ENCODER),
    ("nomic-bert-moe", ENCODER),
    ("jina-bert-v2", ENCODER),
    ("jina-bert-v3", ENCODER),
    ("neo-bert", ENCODER),
    ("eurobert", ENCODER),
    ("modern-bert", ENCODER),
    ("gemma-embedding", ENCODER),
    ("t5encoder", ENCODER),
    ("dream", NO_CACHE),
    ("llada", NO_CACHE),
    ("llada-moe", NO_CACHE),
    ("rnd1", NO_CACHE),
    ("clef", NO_CACHE),
    ("wavtokenizer-dec", NO_CACHE),
    (
        "t5",
        "an encoder-decoder model keeps a cross-attention cache as well",
    ),
];
const LATENT: &str = "multi-head latent attention caches a compressed latent, not K/V heads";
const INDEXER: &str = "its sparse-attention indexer keeps a cache of its own";
const REUSE: &str = "later layers reuse the K/V cache of earlier ones";
const DRAFT: &str = "a draft head shares the cache of the model it runs beside";
const ENCODER: &str = "an encoder (embedding model) has no K/V cache";
const NO_CACHE: &str = "llama.cpp runs it without a K/V cache (a diffusion or audio model)";

/// What the estimate needs to know about a model: the facts of its GGUF
/// metadata and tensor table (see `locara_gguf::ModelMetadata`). Lengths are
/// in elements, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    /// `general.architecture`, e.g. `"llama"`, `"gemma3"`.
    pub architecture: String,
    /// Transformer layers.
    pub block_count: u32,
    /// Width of the hidden state.
    pub embedding_length: u32,
    /// Width of the feed-forward layer (the largest over layers; for a
    /// mixture of experts, the experts a token selects together); 0 when
    /// the file does not say, which the compute estimate then takes as 4 ×
    /// the embedding width.
    pub feed_forward_length: u32,
    /// Query heads.
    pub head_count: u32,
    /// K/V heads of each layer (`block_count` entries); 0 for a layer with
    /// no attention.
    pub head_count_kv: Vec<u32>,
    /// Elements per key head.
    pub key_length: u32,
    /// Elements per value head.
    pub value_length: u32,
    /// The context the model was trained for, in tokens; a load never gets
    /// more (0: unknown, no clamp).
    pub context_length: u32,
    /// The sliding window in tokens, for models with sliding-window layers.
    pub sliding_window: Option<u32>,
    /// One flag per layer, `true` where the layer attends over the window
    /// only. Empty when every layer is global (or the layout is unknown,
    /// which can only over-estimate).
    pub sliding_window_layers: Vec<bool>,
    /// Tokens in the vocabulary: the logits are this wide.
    pub vocab_size: u32,
    /// BPE merges of the tokenizer (`tokenizer.ggml.merges`); 0 for other
    /// tokenizers.
    pub vocab_merges: u32,
    /// Bytes of all tensor data: the mapped weights.
    pub weights_bytes: u64,
    /// The weight matrices that a CPU backend may copy into a repacked
    /// layout (see [`Backend::Cpu`]): every 2-D or 3-D tensor a matrix
    /// multiplication reads, which is all but the token embeddings (read by
    /// row lookup) and the 1-D norms and biases.
    pub matmul_weights: Vec<MatmulWeight>,
}

/// One weight matrix, for the repacking rules of the CPU backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatmulWeight {
    /// ggml's name of the storage type (`"q4_K"`, `"q4_0"`, `"f16"`, ...).
    pub ggml_type: String,
    /// Rows (`ne[1]`): the repacked layouts interleave 4 or 8 rows and apply
    /// only when the row count is a multiple of that.
    pub rows: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
}

impl ModelShape {
    /// A model with every layer alike and no sliding window, for tests and
    /// examples. The token embeddings are counted in `weights_bytes` but not
    /// as a matrix multiplication weight.
    #[allow(clippy::too_many_arguments)]
    pub fn dense(
        architecture: &str,
        block_count: u32,
        embedding_length: u32,
        feed_forward_length: u32,
        head_count: u32,
        head_count_kv: u32,
        head_dim: u32,
        context_length: u32,
        vocab_size: u32,
        weights_bytes: u64,
    ) -> Self {
        Self {
            architecture: architecture.to_owned(),
            block_count,
            embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv: vec![head_count_kv; block_count as usize],
            key_length: head_dim,
            value_length: head_dim,
            context_length,
            sliding_window: None,
            sliding_window_layers: Vec::new(),
            vocab_size,
            vocab_merges: 0,
            weights_bytes,
            matmul_weights: Vec::new(),
        }
    }

    fn is_window_layer(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_window_layers.get(layer) == Some(&true)
    }

    fn has_window_layers(&self) -> bool {
        (0..self.block_count as usize).any(|il| self.is_window_layer(il))
    }
}

/// Where the model's layers run, as far as memory is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backend {
    /// llama.cpp's CPU backend. Weight matrices whose type the CPU has a
    /// faster interleaved layout for are copied out of the mapping into
    /// anonymous memory at load (ggml's `CPU_REPACK` buffer type,
    /// `ggml_repack_get_optimal_repack_type` in
    /// `ggml/src/ggml-cpu/repack.cpp`): those bytes count in the footprint.
    Cpu {
        /// The types this CPU repacks, with the row multiple each needs.
        repack: Vec<RepackRule>,
    },
    /// Every layer offloaded to a GPU that shares memory with the CPU
    /// (Apple Silicon with Metal): weights stay in the mapping, nothing is
    /// repacked.
    Gpu,
}

/// One repacking rule of the CPU backend: matrices of `ggml_type` whose row
/// count is a multiple of `row_multiple` are copied into the repacked layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepackRule {
    pub ggml_type: String,
    pub row_multiple: u64,
}

impl RepackRule {
    fn new(ggml_type: &str, row_multiple: u64) -> Self {
        Self {
            ggml_type: ggml_type.to_owned(),
            row_multiple,
        }
    }
}

impl Backend {
    /// The K/V cache type a load gets when nothing asks for one.
    ///
    /// With a GPU (Metal) `q8_0`: half of `f16`'s bytes, and its flash
    /// attention kernels read quantized K/V at full speed. On the CPU
    /// backend `f16`: llama.cpp's CPU flash attention has its tiled prompt
    /// path and its split-K/V decode path for `f16` (and `f32`) K/V only;
    /// quantized K/V falls back to one query row at a time, which made the
    /// time to first token of a chat's later turns 1.25x to 1.9x slower
    /// (`locara-serve-bench --only chat8`, SmolLM2 and Gemma 3 on two x86
    /// cores), while the K/V pool starts at 2048 cells and grows only with
    /// what conversations use, so `f16` costs a few tens of MiB on small
    /// models.
    pub fn default_kv_type(&self) -> KvType {
        match self {
            Backend::Cpu { .. } => KvType::F16,
            Backend::Gpu => KvType::Q8_0,
        }
    }

    /// The CPU backend of an x86-64 CPU with AVX2 (and without AVX-512):
    /// `q4_0`, `q4_K`, `iq4_nl` and `mxfp4` in 8-row groups.
    pub fn cpu_x86_avx2() -> Self {
        Backend::Cpu {
            repack: ["q4_0", "q4_K", "iq4_nl", "mxfp4"]
                .iter()
                .map(|t| RepackRule::new(t, 8))
                .collect(),
        }
    }

    /// An x86-64 CPU with AVX-512: as AVX2, plus `q2_K`.
    pub fn cpu_x86_avx512() -> Self {
        let Backend::Cpu { mut repack } = Self::cpu_x86_avx2() else {
            unreachable!("cpu_x86_avx2 is a CPU backend")
        };
        repack.push(RepackRule::new("q2_K", 8));
        Backend::Cpu { repack }
    }

    /// An Arm CPU with the dot-product extension (and int8 matrix multiply
    /// or not: the groups differ, the copied bytes do not).
    pub fn cpu_arm_dotprod() -> Self {
        Backend::Cpu {
            repack: vec![
                RepackRule::new("q4_0", 4),
                RepackRule::new("q4_K", 8),
                RepackRule::new("q5_K", 8),
                RepackRule::new("q6_K", 8),
                RepackRule::new("iq4_nl", 4),
                RepackRule::new("mxfp4", 4),
                RepackRule::new("q8_0", 4),
                RepackRule::new("q1_0", 4),
            ],
        }
    }

    /// A CPU with none of the repacked layouts.
    pub fn cpu_plain() -> Self {
        Backend::Cpu { repack: Vec::new() }
    }

    /// Whether this backend copies any of `shape`'s weights into its
    /// interleaved layout. llama.cpp's kernels for those multiply a batch
    /// four rows at a time and the rest one by one, rounding the two ways
    /// differently: the engine keeps a verified draft within three rows
    /// (`locara_engine::draft::EXACT_BATCH_DRAFTS`) on such models, so that
    /// drafting never changes a greedy answer.
    pub fn repacks(&self, shape: &ModelShape) -> bool {
        self.repacked_bytes(shape) > 0
    }

    /// Bytes of weights this backend copies into anonymous memory.
    fn repacked_bytes(&self, shape: &ModelShape) -> u64 {
        let Backend::Cpu { repack } = self else {
            return 0;
        };
        shape
            .matmul_weights
            .iter()
            .filter(|w| {
                repack.iter().any(|r| {
                    r.ggml_type.eq_ignore_ascii_case(&w.ggml_type)
                        && w.rows.is_multiple_of(r.row_multiple)
                })
            })
            .map(|w| w.bytes)
            .sum()
    }
}

/// How the model is to be loaded: what the engine worker's `Load` request
/// says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EstimateOptions {
    /// Context per sequence asked for, in tokens; clamped to the trained
    /// context as the worker clamps it.
    pub context: u32,
    /// Element type of the K and V caches.
    pub kv_type: KvType,
    /// Sequences that can generate at once (llama.cpp's `n_seq_max`); each
    /// gets the whole context.
    pub parallel: u32,
    /// Where the layers run.
    pub backend: Backend,
    /// Whether the sliding-window layers keep a cache as long as the
    /// context (llama.cpp's `swa_full`) instead of the window plus one
    /// micro-batch. See [`ENGINE_FULL_WINDOW_CACHE`].
    pub full_window_cache: bool,
    /// The worker's K/V pool in cells: its sequences share one (llama.cpp's
    /// unified cache), which starts small and grows. `None`: the pool at
    /// its cap, every sequence's whole context (`context` × `parallel`).
    pub pool: Option<u32>,
}

/// What the engine worker runs llama.cpp with: `swa_full` off (llama.cpp's
/// default, `llama_context_default_params`, is on), so each sliding-window
/// layer holds its window plus one micro-batch rather than the whole
/// context. The full-length cache only serves reusing a cached prompt
/// prefix, which the worker never does; turning it off cuts the K/V cache of
/// Gemma 3 at 32768 tokens by about four fifths. Keep in step with
/// `crates/locara-engine/src/worker.rs`.
pub const ENGINE_FULL_WINDOW_CACHE: bool = false;

/// The predicted memory of an engine worker holding a model, in bytes, when
/// its contexts are full (the steady-state maximum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// Context per sequence after clamping, in tokens.
    pub context: u32,
    /// K/V cells of the global layers: the pool that all sequences share,
    /// rounded up to [`CELL_PAD`] (see [`EstimateOptions::pool`]).
    pub cells: u32,
    /// K/V cells of the sliding-window layers, when the model has them:
    /// every sequence's window plus one micro-batch, or `cells` with a full
    /// window cache.
    pub window_cells: Option<u32>,
    pub parallel: u32,
    pub kv_type: KvType,
    /// Tensor data mapped from the file: file-backed, clean, reclaimable.
    pub mapped_weights: u64,
    /// Weights the CPU backend copies out of the mapping into its repacked
    /// layout: anonymous, part of the footprint.
    pub repacked_weights: u64,
    /// The K and V caches of all layers and sequences.
    pub kv_cache: u64,
    /// llama.cpp's output buffer: the logits of one token per sequence.
    pub output_buffer: u64,
    /// Scratch memory of the graph that prefill touches: activations of one
    /// micro-batch, the attention masks over the filled cells, the logits of
    /// the outputs.
    pub compute_buffers: u64,
    /// The worker process itself with the model loaded and generating: its
    /// heap (the vocabulary, llama.cpp's model, context, cell bookkeeping and
    /// graph objects, the validated GGUF metadata, the sampler's and the CPU
    /// backend's working arrays) and thread stacks.
    pub overhead: u64,
    /// The embedding context at its largest ([`embedding_context`]): it
    /// exists only while the worker serves an embedding request, so it is
    /// not part of [`Estimate::footprint`] (what a worker is measured
    /// against after load), but admission counts it in [`Estimate::total`]:
    /// any loaded model may be asked for embeddings.
    pub embedding_context: u64,
}

impl Estimate {
    /// The predicted footprint: everything the OS charges the worker as
    /// dirty memory, which is every part but the mapped weights.
    pub fn footprint(&self) -> u64 {
        self.repacked_weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.output_buffer)
            .saturating_add(self.compute_buffers)
            .saturating_add(self.overhead)
    }

    /// Mapped weights plus footprint: what admission compares with the
    /// budget. The weights count because a model whose weights do not stay
    /// resident reads them from disk for every token (and on Apple Silicon
    /// the GPU wires them).
    pub fn total(&self) -> u64 {
        self.mapped_weights
            .saturating_add(self.footprint())
            .saturating_add(self.embedding_context)
    }
}

impl Estimate {
    /// The estimate of a worker that holds this model and `draft`, a draft
    /// model for speculative decoding ([`draft_options`]), budgeted as one:
    /// both models' weights, caches and buffers, and the draft's heap (its
    /// vocabulary and llama.cpp's objects), but one process: the base of
    /// the process and of the runtime's heap count once. The draft serves
    /// no embeddings.
    pub fn with_draft(&self, draft: &Estimate) -> Estimate {
        let shared = BASE_OVERHEAD + RUNTIME_HEAP;
        Estimate {
            mapped_weights: self.mapped_weights.saturating_add(draft.mapped_weights),
            repacked_weights: self.repacked_weights.saturating_add(draft.repacked_weights),
            kv_cache: self.kv_cache.saturating_add(draft.kv_cache),
            output_buffer: self.output_buffer.saturating_add(draft.output_buffer),
            compute_buffers: self.compute_buffers.saturating_add(draft.compute_buffers),
            overhead: self
                .overhead
                .saturating_add(draft.overhead.saturating_sub(shared)),
            ..self.clone()
        }
    }
}

/// The options of a draft model beside a model loaded with `target`: one
/// sequence (it drafts for one generation at a time) of the model's context,
/// with its K/V type, in a pool of exactly that context (the engine's
/// `drafter.rs`).
pub fn draft_options(target: &EstimateOptions) -> EstimateOptions {
    EstimateOptions {
        parallel: 1,
        pool: Some(target.context),
        ..target.clone()
    }
}

/// An estimate next to what the worker was measured to hold: the numbers
/// the daemon records for each load and exports as the estimate's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EstimateCheck {
    /// [`Estimate::footprint`], bytes.
    pub estimated_footprint: u64,
    /// The worker's footprint as the OS reports it, bytes.
    pub measured_footprint: u64,
    /// [`Estimate::mapped_weights`], bytes.
    pub estimated_mapped_weights: u64,
    /// Resident bytes of the worker's mapping of the model file.
    pub measured_mapped_weights: u64,
}

impl EstimateCheck {
    pub fn new(estimate: &Estimate, measured_footprint: u64, measured_mapped_weights: u64) -> Self {
        Self {
            estimated_footprint: estimate.footprint(),
            measured_footprint,
            estimated_mapped_weights: estimate.mapped_weights,
            measured_mapped_weights,
        }
    }

    /// (estimate − measured) / measured: positive when the estimate is
    /// above the measurement; 0 when nothing was measured.
    pub fn footprint_error(&self) -> f64 {
        relative_error(self.estimated_footprint, self.measured_footprint)
    }

    /// The same for the mapped weights.
    pub fn mapped_weights_error(&self) -> f64 {
        relative_error(self.estimated_mapped_weights, self.measured_mapped_weights)
    }
}

fn relative_error(estimated: u64, measured: u64) -> f64 {
    if measured == 0 {
        return 0.0;
    }
    (estimated as f64 - measured as f64) / measured as f64
}

/// Why a model cannot be estimated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    #[error("{architecture} is a recurrent architecture; its state is not a K/V cache and the estimate does not model it")]
    Recurrent { architecture: String },
    #[error("{architecture} is a hybrid (recurrent + attention) architecture; the estimate does not model its recurrent state")]
    Hybrid { architecture: String },
    #[error("the estimate does not model {architecture}: {why}")]
    UnsupportedCache {
        architecture: String,
        why: &'static str,
    },
    #[error("the model has no attention layers (every layer has 0 K/V heads)")]
    NoAttention,
    #[error("head_count_kv has {found} entries for {block_count} layers")]
    LayerCount { found: usize, block_count: u32 },
    #[error("a {kv_type} K/V cache needs head dims that are multiples of {block}; this model's are {key_length} (K) and {value_length} (V)")]
    HeadDim {
        kv_type: KvType,
        block: u64,
        key_length: u32,
        value_length: u32,
    },
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
}

impl EstimateError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            EstimateError::Recurrent { .. } => "recurrent_architecture",
            EstimateError::Hybrid { .. } => "hybrid_architecture",
            EstimateError::UnsupportedCache { .. } => "unsupported_cache",
            EstimateError::NoAttention => "no_attention",
            EstimateError::LayerCount { .. } => "layer_count",
            EstimateError::HeadDim { .. } => "head_dim",
            EstimateError::Zero { .. } => "zero",
        }
    }
}

/// Checks that the estimate models this architecture and these options.
fn check(shape: &ModelShape, options: &EstimateOptions) -> Result<(), EstimateError> {
    let arch = shape.architecture.as_str();
    if RECURRENT.contains(&arch) {
        return Err(EstimateError::Recurrent {
            architecture: arch.to_owned(),
        });
    }
    if HYBRID.contains(&arch) {
        return Err(EstimateError::Hybrid {
            architecture: arch.to_owned(),
        });
    }
    if let Some((_, why)) = SPECIAL_CACHE.iter().find(|(a, _)| *a == arch) {
        return Err(EstimateError::UnsupportedCache {
            architecture: arch.to_owned(),
            why,
        });
    }
    if shape.head_count_kv.len() != shape.block_count as usize {
        return Err(EstimateError::LayerCount {
            found: shape.head_count_kv.len(),
            block_count: shape.block_count,
        });
    }
    if shape.head_count_kv.iter().all(|&h| h == 0) {
        return Err(EstimateError::NoAttention);
    }
    if options.parallel == 0 {
        return Err(EstimateError::Zero { field: "parallel" });
    }
    if options.context == 0 {
        return Err(EstimateError::Zero { field: "context" });
    }
    // `llama_init_from_model` (src/llama-context.cpp) refuses a quantised
    // cache whose block does not divide the head dims.
    let (block, _) = options.kv_type.block();
    if !u64::from(shape.key_length).is_multiple_of(block)
        || !u64::from(shape.value_length).is_multiple_of(block)
    {
        return Err(EstimateError::HeadDim {
            kv_type: options.kv_type,
            block,
            key_length: shape.key_length,
            value_length: shape.value_length,
        });
    }
    Ok(())
}

fn pad(n: u64, to: u64) -> u64 {
    n.div_ceil(to).saturating_mul(to)
}

/// Cells of a shared pool: llama.cpp rounds `n_ctx` up to 256.
pub fn pool_cells(pool: u32) -> u64 {
    pad(u64::from(pool.max(1)), CELL_PAD.into())
}

/// Cells of the sliding-window cache of a shared pool without `swa_full`
/// (`llama_kv_cache_iswa::llama_kv_cache_iswa`, unified): every sequence's
/// window plus one micro-batch, rounded up to 256, never more than the
/// pool.
fn pooled_window_cells(window: u32, parallel: u32, cells: u64) -> u64 {
    pad(
        u64::from(window) * u64::from(parallel) + u64::from(UBATCH_TOKENS),
        CELL_PAD.into(),
    )
    .min(cells)
}

/// Bytes of `elements` values of the K/V type: `ggml_row_size`.
fn kv_row_bytes(kv: KvType, elements: u64) -> u64 {
    let (block, bytes) = kv.block();
    elements / block * bytes
}

/// The estimate: what the worker will hold with this model and these
/// options once its contexts are full (the steady-state maximum, which
/// admission uses).
pub fn estimate(shape: &ModelShape, options: &EstimateOptions) -> Result<Estimate, EstimateError> {
    estimate_filled(shape, options, u32::MAX)
}

/// The estimate for a worker whose sequences have held up to `filled` tokens
/// (prompt and answer). The caches and the output buffer are allocated and
/// cleared at load; what grows as the context fills is the attention masks
/// of the compute buffers, which span the filled cells, and llama.cpp's
/// bookkeeping of used cells (counted here for every sequence). `filled` at
/// or above the context gives [`estimate`].
pub fn estimate_filled(
    shape: &ModelShape,
    options: &EstimateOptions,
    filled: u32,
) -> Result<Estimate, EstimateError> {
    check(shape, options)?;
    let context = LoadDefaults::default().context_for(Some(options.context), shape.context_length);
    let parallel = u64::from(options.parallel);
    // The worker's sequences share one pool (`kv_unified`: one stream,
    // n_ctx_seq = n_ctx), of `pool` cells or, unset, every sequence's whole
    // context.
    let pool = options
        .pool
        .unwrap_or_else(|| context.saturating_mul(options.parallel));
    let (cells, streams) = (pool_cells(pool), 1);
    let window = shape
        .sliding_window
        .filter(|_| shape.has_window_layers())
        .map(|w| {
            if options.full_window_cache {
                cells
            } else {
                pooled_window_cells(w, options.parallel, cells)
            }
        });

    // The K/V cache (`llama_kv_cache::llama_kv_cache`, src/llama-kv-cache.cpp):
    // per layer with K/V heads, one K tensor of `n_embd_k_gqa × kv_size ×
    // n_stream` and one V tensor of `n_embd_v_gqa × kv_size × n_stream`
    // elements of the cache type (V is not transposed: flash attention is
    // on). The buffer is cleared at creation (`ggml_backend_buffer_clear`),
    // so every byte is dirty from the load on.
    let mut kv_cache = 0u64;
    for (il, &kv_heads) in shape.head_count_kv.iter().enumerate() {
        if kv_heads == 0 {
            continue;
        }
        let layer_cells = match window {
            Some(w) if shape.is_window_layer(il) => w,
            _ => cells,
        };
        let k = kv_row_bytes(
            options.kv_type,
            u64::from(kv_heads) * u64::from(shape.key_length),
        );
        let v = kv_row_bytes(
            options.kv_type,
            u64::from(kv_heads) * u64::from(shape.value_length),
        );
        kv_cache = kv_cache.saturating_add((k + v).saturating_mul(layer_cells * streams));
    }

    // The output buffer (`llama_context::output_reserve`): f32 logits for
    // max(outputs of a batch, n_seq_max) tokens. The worker asks for one
    // output per sequence per batch, so it stays at n_seq_max rows; it is
    // cleared at allocation.
    let output_buffer = u64::from(shape.vocab_size) * 4 * parallel;

    // `llama_kv_cache::get_n_kv` (src/llama-kv-cache.cpp): the cells a
    // graph attends over are the used ones rounded up to 256, at most the
    // cache. Every sequence is taken to hold `filled` tokens; in a pool
    // they all count against one stream.
    let per_stream = u64::from(filled.max(1)).saturating_mul(parallel / streams);
    let used = pad(per_stream, CELL_PAD.into());
    let caches = Caches {
        cells,
        used: used.min(cells),
        window: window.map(|w| (w, used.min(w))),
    };
    let compute_buffers = compute_buffers(shape, &caches, options.parallel);
    let overhead = overhead(shape, &caches, streams);

    Ok(Estimate {
        context,
        cells: u32::try_from(cells).unwrap_or(u32::MAX),
        window_cells: window.map(|w| u32::try_from(w).unwrap_or(u32::MAX)),
        parallel: options.parallel,
        kv_type: options.kv_type,
        mapped_weights: shape.weights_bytes,
        repacked_weights: options.backend.repacked_bytes(shape),
        kv_cache,
        output_buffer,
        compute_buffers,
        overhead,
        embedding_context: embedding_context(shape, options.kv_type, context),
    })
}

/// Bytes of the engine worker's embedding context (`crates/locara-engine/src/embed.rs`)
/// for a model loaded with `context` tokens per sequence: a second llama.cpp
/// context over the same mapped weights, with embeddings on, one sequence of
/// at most [`EMBED_MAX_TOKENS`] cells, decoding [`EMBED_CHUNK_TOKENS`] tokens
/// at a time. Its parts, sized as for the pool above: the K/V cache of its
/// cells (window layers: the window plus one micro-batch), the output buffer
/// (logits and hidden states of every token of a micro-batch), the compute
/// buffer that a micro-batch writes (activations, the attention mask, the
/// logits again) and the cell bookkeeping.
pub fn embedding_context(shape: &ModelShape, kv_type: KvType, context: u32) -> u64 {
    let chunk = u64::from(EMBED_CHUNK_TOKENS);
    let cells = pool_cells(context.clamp(1, EMBED_MAX_TOKENS));
    let window = shape
        .sliding_window
        .filter(|_| shape.has_window_layers())
        .map(|w| pad(u64::from(w) + chunk, CELL_PAD.into()).min(cells));
    let mut kv_cache = 0u64;
    for (il, &kv_heads) in shape.head_count_kv.iter().enumerate() {
        if kv_heads == 0 {
            continue;
        }
        let layer_cells = match window {
            Some(w) if shape.is_window_layer(il) => w,
            _ => cells,
        };
        let k = kv_row_bytes(kv_type, u64::from(kv_heads) * u64::from(shape.key_length));
        let v = kv_row_bytes(kv_type, u64::from(kv_heads) * u64::from(shape.value_length));
        kv_cache = kv_cache.saturating_add((k + v).saturating_mul(layer_cells));
    }
    let n_vocab = u64::from(shape.vocab_size);
    let n_embd = u64::from(shape.embedding_length);
    let n_ff = if shape.feed_forward_length > 0 {
        u64::from(shape.feed_forward_length)
    } else {
        4 * n_embd
    };
    let output_buffer = chunk * (n_vocab + n_embd) * 4;
    let activations = chunk * 4 * (3 * n_ff + 3 * n_embd);
    let masks = (cells + window.unwrap_or(0)) * chunk * 2;
    let logits = chunk * n_vocab * 4;
    let all_cells = cells + window.unwrap_or(0);
    kv_cache
        .saturating_add(output_buffer)
        .saturating_add(activations + masks + logits)
        .saturating_add(all_cells * (CELL_BYTES + USED_CELL_BYTES))
}

/// The K/V caches of one sequence: cells, and cells the graph attends over
/// (`n_kv`), of the global cache and of the window cache when there is one.
struct Caches {
    cells: u64,
    used: u64,
    window: Option<(u64, u64)>,
}

/// Bytes of one f16 attention mask over `n_kv` cells for a micro-batch
/// (`build_attn_inp_kq_mask`, src/llama-graph.cpp: `n_kv × n_tokens`, f16
/// because flash attention wants it so).
fn mask_bytes(n_kv: u64) -> u64 {
    n_kv * u64::from(UBATCH_TOKENS) * 2
}

/// The compute buffers that prefill touches.
///
/// llama.cpp reserves one CPU compute buffer at load for its worst-case
/// graph (`llama_context::sched_reserve` → `graph_reserve`,
/// src/llama-context.cpp: 512 tokens, the whole cache, and 512 outputs),
/// planned by ggml's allocator (`ggml_gallocr_reserve_n`,
/// ggml/src/ggml-alloc.c), which places the graph inputs first and lets
/// later tensors reuse the space of ones no longer needed. Nothing in it is
/// touched until a batch runs, and only what a batch writes becomes
/// footprint: the reserved size itself is far larger (it holds f32 logits
/// for 512 outputs, `n_vocab × 512 × 4` bytes: 512 MiB for a 262k
/// vocabulary) and says little. What prefill writes, measured page by page
/// (`/proc/<pid>/pagemap`) on both test models:
///
/// * the attention masks, one per cache, `n_kv × 512` f16, `n_kv` growing
///   with the filled cells to the whole cache;
/// * the activations of one micro-batch at their peak, in the feed-forward
///   block: the residual stream, its norm and the token embeddings (3 ×
///   `n_embd`) and gate, up and their product (3 × `n_ff`), f32 × 512
///   tokens: 12.4 MiB for SmolLM2-135M (12.3 measured), 15.8 MiB for Gemma 3
///   270M (15.8 measured);
/// * the logits of the outputs, one row of `n_vocab` f32 per sequence; the
///   allocator plans them last, at the start of the last free block, whose
///   first pages the last layers' activations have touched already, so only
///   logits wider than a feed-forward block (`3 × n_ff` f32 × 512) add pages
///   (measured: none for either test model, at 1 or 4 sequences).
///
/// With a window cache, the mask freed first (the window mask when the last
/// layer is global, as in Gemma 3) leaves its slot to the last layers'
/// activations: up to a feed-forward block's worth of pages that a context
/// filled only in part adds on top (a full context has written the whole
/// mask anyway).
fn compute_buffers(shape: &ModelShape, caches: &Caches, parallel: u32) -> u64 {
    let ub = u64::from(UBATCH_TOKENS);
    let n_embd = u64::from(shape.embedding_length);
    let n_ff = if shape.feed_forward_length > 0 {
        u64::from(shape.feed_forward_length)
    } else {
        4 * n_embd
    };
    let activations = ub * 4 * (3 * n_ff + 3 * n_embd);
    let mut masks = mask_bytes(caches.used);
    let mut reused = 0;
    if let Some((window, used)) = caches.window {
        masks += mask_bytes(used);
        let last = shape.block_count.saturating_sub(1) as usize;
        let unused = if shape.is_window_layer(last) {
            mask_bytes(caches.cells) - mask_bytes(caches.used)
        } else {
            mask_bytes(window) - mask_bytes(used)
        };
        reused = unused.min(ub * 4 * 3 * n_ff);
    }
    // The logits slot is planned last, over pages the last layers' activations
    // touched already: only logits beyond a feed-forward block's worth add.
    let logits =
        (u64::from(shape.vocab_size) * 4 * u64::from(parallel)).saturating_sub(ub * 4 * 3 * n_ff);
    activations + masks + reused + logits
}

/// Heap of a worker with a model loaded that does not depend on the
/// vocabulary or the caches: the Rust runtime, llama.cpp's model, context
/// and graph objects, thread stacks, ggml's tensor metadata. Calibrated:
/// the rest of the measured footprint after load of both test models once
/// the terms below are taken off (6.7 MiB).
const BASE_OVERHEAD: u64 = 6_950_000;

/// Heap per vocabulary token after load: llama.cpp's `llama_vocab` keeps
/// each token as `token_data` (40 bytes), as a key of the `token_to_id`
/// hash map (a 64-byte node and an 8-byte bucket), in the
/// `cache_token_to_piece` strings (32 bytes), plus the heap copies of
/// tokens longer than the small-string buffer; the validated GGUF metadata
/// the worker keeps (text and offsets); `token_ids_full_vocab` (4 bytes).
/// About 165 bytes from the structures, 175 calibrated.
const OVERHEAD_PER_TOKEN: u64 = 175;

/// Heap per BPE merge: llama.cpp's `bpe_ranks`, a `std::map` of string
/// pairs (a 112-byte node), and the merge text with its offset in the GGUF
/// metadata the worker keeps.
const OVERHEAD_PER_MERGE: u64 = 130;

/// Heap that generation adds and keeps (glibc does not hand freed heap
/// back): the sampler's candidate array (12 bytes per vocabulary token) and
/// token ids, the batch and tokenizer buffers, the CPU backend's work
/// buffer. Calibrated on both test models after a fill of 2048 tokens:
/// 3.65 MiB plus 18 bytes per vocabulary token.
const RUNTIME_HEAP: u64 = 3_830_000;
const RUNTIME_HEAP_PER_TOKEN: u64 = 18;

/// Per K/V cell of each cache and sequence, `llama_kv_cells`
/// (src/llama-kv-cells.h) keeps position, shift, extension and a 256-bit
/// sequence set (52 bytes, allocated at load), and for each used cell a
/// node in the `used` set and one in the sequence's position set (48 bytes
/// each).
const CELL_BYTES: u64 = 52;
const USED_CELL_BYTES: u64 = 96;

/// The worker process with a model loaded, less the buffers above;
/// `streams`: the caches' streams (a sequence each, or one shared pool).
fn overhead(shape: &ModelShape, caches: &Caches, streams: u64) -> u64 {
    let vocab = u64::from(shape.vocab_size);
    let (cells, used) = match caches.window {
        Some((w, u)) => (caches.cells + w, caches.used + u),
        None => (caches.cells, caches.used),
    };
    BASE_OVERHEAD
        + vocab * (OVERHEAD_PER_TOKEN + RUNTIME_HEAP_PER_TOKEN)
        + u64::from(shape.vocab_merges) * OVERHEAD_PER_MERGE
        + RUNTIME_HEAP
        + (cells * CELL_BYTES + used * USED_CELL_BYTES) * streams
}

/// The largest context (tokens per sequence) up to `options.context` whose
/// estimate, weights included, is within `budget` bytes with the other
/// options as given: `options.context` itself (clamped to the trained
/// context) when that fits, else a multiple of [`CELL_PAD`] (costs change
/// only there); `None` when not even 256 tokens fit.
pub fn max_context_fitting(
    shape: &ModelShape,
    options: &EstimateOptions,
    budget: u64,
) -> Result<Option<u32>, EstimateError> {
    let fits = |context: u32| -> Result<bool, EstimateError> {
        let options = EstimateOptions {
            context,
            ..options.clone()
        };
        Ok(estimate(shape, &options)?.total() <= budget)
    };
    let top = LoadDefaults::default().context_for(Some(options.context), shape.context_length);
    if fits(top)? {
        return Ok(Some(top));
    }
    // The estimate grows with the context: bisect over multiples of the pad.
    // Invariant: lo × PAD fits; hi × PAD does not (it costs at least what
    // `top` costs).
    let (mut lo, mut hi) = (1u32, top.div_ceil(CELL_PAD));
    if hi <= 1 || !fits(CELL_PAD)? {
        return Ok(None);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid * CELL_PAD)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo * CELL_PAD))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// SmolLM2-135M's shape (llama architecture).
    fn smollm2() -> ModelShape {
        ModelShape::dense("llama", 30, 576, 1536, 9, 3, 64, 8192, 49152, 96_572_160)
    }

    /// Gemma 3 270M's shape: 1 K/V head of 256, a 512-token window on five
    /// of every six layers.
    fn gemma3() -> ModelShape {
        let mut s = ModelShape::dense(
            "gemma3",
            18,
            640,
            2048,
            4,
            1,
            256,
            32768,
            262144,
            253_000_000,
        );
        s.sliding_window = Some(512);
        s.sliding_window_layers = (0..18).map(|il| il % 6 < 5).collect();
        s
    }

    fn options(context: u32, kv_type: KvType, parallel: u32) -> EstimateOptions {
        EstimateOptions {
            context,
            kv_type,
            parallel,
            backend: Backend::Gpu,
            full_window_cache: false,
            pool: None,
        }
    }

    #[test]
    fn a_draft_adds_its_weights_and_one_sequence_but_not_a_second_process() {
        let target = options(8192, KvType::Q8_0, 4);
        let alone = estimate(&smollm2(), &target).unwrap();
        let draft = estimate(&smollm2(), &draft_options(&target)).unwrap();
        // One sequence of the whole context.
        assert_eq!((draft.parallel, draft.cells), (1, 8192));
        let pair = alone.with_draft(&draft);
        assert_eq!(pair.mapped_weights, 2 * alone.mapped_weights);
        assert_eq!(pair.kv_cache, alone.kv_cache + draft.kv_cache);
        assert_eq!(
            pair.footprint() - alone.footprint(),
            draft.footprint() - BASE_OVERHEAD - RUNTIME_HEAP
        );
        assert_eq!(pair.embedding_context, alone.embedding_context);
        assert_eq!(
            (pair.context, pair.parallel),
            (alone.context, alone.parallel)
        );
    }

    #[test]
    fn kv_cache_matches_llama_cpp_for_a_dense_model() {
        // llama.cpp's log for SmolLM2 at 8192 cells, q8_0: "K (q8_0): 47.81
        // MiB, V (q8_0): 47.81 MiB".
        let e = estimate(&smollm2(), &options(8192, KvType::Q8_0, 1)).unwrap();
        assert_eq!(e.kv_cache, 2 * 30 * 192 / 32 * 34 * 8192);
        assert_eq!(format!("{:.2}", e.kv_cache as f64 / MIB as f64), "95.62");
        let f16 = estimate(&smollm2(), &options(8192, KvType::F16, 1)).unwrap();
        assert_eq!(f16.kv_cache, 2 * 30 * 192 * 2 * 8192);
        let q4 = estimate(&smollm2(), &options(8192, KvType::Q4_0, 1)).unwrap();
        assert_eq!(q4.kv_cache, 2 * 30 * 192 / 32 * 18 * 8192);
    }

    #[test]
    fn window_layers_hold_the_window_plus_a_micro_batch() {
        let e = estimate(&gemma3(), &options(32768, KvType::F16, 1)).unwrap();
        assert_eq!(e.cells, 32768);
        // 512 + 512, padded to 256.
        assert_eq!(e.window_cells, Some(1024));
        let per_cell = 2 * 256 * 2; // K and V, 256 f16 each
        assert_eq!(e.kv_cache, per_cell * (3 * 32768 + 15 * 1024));
        // A context shorter than the window caps the window cache.
        let short = estimate(&gemma3(), &options(512, KvType::F16, 1)).unwrap();
        assert_eq!(short.window_cells, Some(512));
        assert_eq!(short.kv_cache, per_cell * 18 * 512);
    }

    /// A shared pool holds one stream: its K/V cache is that of one
    /// sequence as long as the pool, whatever the number of sequences.
    #[test]
    fn a_pool_is_one_stream_of_its_cells() {
        let shape = smollm2();
        let mut pooled = options(8192, KvType::Q8_0, 4);
        pooled.pool = Some(2048);
        let e = estimate(&shape, &pooled).unwrap();
        let one = estimate(&shape, &options(2048, KvType::Q8_0, 1)).unwrap();
        assert_eq!(e.cells, 2048);
        assert_eq!(e.context, 8192, "the context per sequence stays");
        assert_eq!(e.kv_cache, one.kv_cache);
        // The logits of four sequences, as without a pool.
        assert_eq!(e.output_buffer, 4 * one.output_buffer);
        // llama.cpp rounds a pool up to 256 cells.
        pooled.pool = Some(2049);
        assert_eq!(estimate(&shape, &pooled).unwrap().cells, 2304);
        // The pool's cap, parallel × context, costs what four streams do.
        pooled.pool = Some(4 * 8192);
        let full = estimate(&shape, &pooled).unwrap();
        let fixed = estimate(&shape, &options(8192, KvType::Q8_0, 4)).unwrap();
        assert_eq!(full.kv_cache, fixed.kv_cache);
    }

    /// In a pool the window layers hold every sequence's window plus one
    /// micro-batch, in one stream.
    #[test]
    fn a_pool_of_a_window_model_holds_each_sequences_window() {
        let shape = gemma3();
        let mut pooled = options(8192, KvType::F16, 4);
        pooled.pool = Some(4096);
        let e = estimate(&shape, &pooled).unwrap();
        assert_eq!(e.window_cells, Some(2560), "4 × 512 + 512");
        pooled.pool = Some(1024);
        let small = estimate(&shape, &pooled).unwrap();
        assert_eq!(small.window_cells, Some(1024), "never more than the pool");
        assert!(small.kv_cache < e.kv_cache);
    }

    #[test]
    fn a_full_window_cache_is_as_long_as_the_context() {
        // llama.cpp's default `swa_full`, which the worker turns off.
        let mut o = options(32768, KvType::F16, 1);
        o.full_window_cache = true;
        let e = estimate(&gemma3(), &o).unwrap();
        assert_eq!(e.window_cells, Some(32768));
        assert_eq!(e.kv_cache, 2 * 256 * 2 * 18 * 32768);
        // llama.cpp's log for Gemma 3 at 8192 cells, q8_0: "non-SWA ... 12.75
        // MiB", "SWA ... 63.75 MiB".
        let mut o = options(8192, KvType::Q8_0, 1);
        o.full_window_cache = true;
        let e = estimate(&gemma3(), &o).unwrap();
        assert_eq!(e.kv_cache, (12.75 + 63.75) as u64 * MIB + MIB / 2);
    }

    #[test]
    fn only_the_masks_grow_as_the_context_fills() {
        let o = options(8192, KvType::Q8_0, 1);
        let half = estimate_filled(&smollm2(), &o, 4096).unwrap();
        let full = estimate(&smollm2(), &o).unwrap();
        assert_eq!(half.kv_cache, full.kv_cache);
        // One f16 mask of 512 rows over 4096 more cells, and 4096 more used
        // cells of bookkeeping.
        assert_eq!(full.compute_buffers - half.compute_buffers, 4096 * 512 * 2);
        assert_eq!(full.overhead - half.overhead, 4096 * USED_CELL_BYTES);
        assert_eq!(estimate_filled(&smollm2(), &o, u32::MAX).unwrap(), full);
    }

    #[test]
    fn window_flags_without_a_window_count_every_layer_as_global() {
        let mut s = gemma3();
        s.sliding_window = None;
        let e = estimate(&s, &options(4096, KvType::F16, 1)).unwrap();
        assert_eq!(e.window_cells, None);
        assert_eq!(e.kv_cache, 2 * 256 * 2 * 18 * 4096);
    }

    #[test]
    fn every_sequence_gets_the_whole_context() {
        let one = estimate(&smollm2(), &options(2048, KvType::Q8_0, 1)).unwrap();
        let four = estimate(&smollm2(), &options(2048, KvType::Q8_0, 4)).unwrap();
        assert_eq!(four.kv_cache, 4 * one.kv_cache);
        assert_eq!(four.output_buffer, 4 * one.output_buffer);
    }

    #[test]
    fn cells_are_padded_like_llama_cpp() {
        assert_eq!(pool_cells(8192), 8192);
        assert_eq!(pool_cells(1000), 1024);
        assert_eq!(pool_cells(3000), 3072);
        assert_eq!(pool_cells(1), 256);
        assert_eq!(pool_cells(0), 256);
    }

    #[test]
    fn the_context_is_clamped_to_the_trained_one() {
        let e = estimate(&smollm2(), &options(65536, KvType::Q8_0, 1)).unwrap();
        assert_eq!(e.context, 8192);
        assert_eq!(e.cells, 8192);
    }

    #[test]
    fn the_cpu_backend_counts_the_weights_it_repacks() {
        let mut s = smollm2();
        s.matmul_weights = vec![
            MatmulWeight {
                ggml_type: "Q4_K".into(),
                rows: 640,
                bytes: 1000,
            },
            // Rows not a multiple of 8: left in place.
            MatmulWeight {
                ggml_type: "Q4_K".into(),
                rows: 650,
                bytes: 20,
            },
            MatmulWeight {
                ggml_type: "Q6_K".into(),
                rows: 640,
                bytes: 300,
            },
        ];
        let mut o = options(2048, KvType::Q8_0, 1);
        o.backend = Backend::cpu_x86_avx2();
        assert_eq!(estimate(&s, &o).unwrap().repacked_weights, 1000);
        o.backend = Backend::cpu_arm_dotprod();
        assert_eq!(estimate(&s, &o).unwrap().repacked_weights, 1300);
        o.backend = Backend::Gpu;
        assert_eq!(estimate(&s, &o).unwrap().repacked_weights, 0);
        o.backend = Backend::cpu_plain();
        assert_eq!(estimate(&s, &o).unwrap().repacked_weights, 0);
    }

    #[test]
    fn recurrent_and_hybrid_models_are_refused_by_name() {
        let mut s = smollm2();
        s.architecture = "mamba2".into();
        let err = estimate(&s, &options(2048, KvType::Q8_0, 1)).unwrap_err();
        assert_eq!(err.kind(), "recurrent_architecture");
        assert!(
            err.to_string().starts_with("mamba2 is a recurrent"),
            "{err}"
        );
        s.architecture = "jamba".into();
        let err = estimate(&s, &options(2048, KvType::Q8_0, 1)).unwrap_err();
        assert_eq!(err.kind(), "hybrid_architecture");
        assert!(err.to_string().contains("jamba"), "{err}");
        s.architecture = "deepseek2".into();
        let err = estimate(&s, &options(2048, KvType::Q8_0, 1)).unwrap_err();
        assert_eq!(err.kind(), "unsupported_cache");
        assert!(err.to_string().contains("latent"), "{err}");
    }

    #[test]
    fn bad_inputs_name_the_field_and_the_limit() {
        let mut s = smollm2();
        s.key_length = 80;
        s.value_length = 80;
        let err = estimate(&s, &options(2048, KvType::Q8_0, 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a q8_0 K/V cache needs head dims that are multiples of 32; this model's are 80 (K) and 80 (V)"
        );
        // f16 has no blocks: any head dim works.
        assert!(estimate(&s, &options(2048, KvType::F16, 1)).is_ok());
        let err = estimate(&smollm2(), &options(2048, KvType::Q8_0, 0)).unwrap_err();
        assert_eq!(err.to_string(), "parallel must be at least 1");
        let mut s = smollm2();
        s.head_count_kv = vec![0; 30];
        assert_eq!(
            estimate(&s, &options(2048, KvType::Q8_0, 1)).unwrap_err(),
            EstimateError::NoAttention
        );
        s.head_count_kv = vec![3; 29];
        assert_eq!(
            estimate(&s, &options(2048, KvType::Q8_0, 1))
                .unwrap_err()
                .kind(),
            "layer_count"
        );
    }

    #[test]
    fn the_largest_fitting_context_fits_and_the_next_step_does_not() {
        let s = gemma3();
        let at = |ctx| {
            estimate(&s, &options(ctx, KvType::Q8_0, 2))
                .unwrap()
                .total()
        };
        let budget = at(12_000) + 1;
        let up_to = |context| options(context, KvType::Q8_0, 2);
        let n = max_context_fitting(&s, &up_to(u32::MAX), budget)
            .unwrap()
            .unwrap();
        assert_eq!(n % CELL_PAD, 0);
        assert!(at(n) <= budget);
        assert!(at(n + CELL_PAD) > budget);
        // Everything fits: the trained context, or the one asked for.
        assert_eq!(
            max_context_fitting(&s, &up_to(u32::MAX), u64::MAX).unwrap(),
            Some(32768)
        );
        assert_eq!(
            max_context_fitting(&s, &up_to(5000), u64::MAX).unwrap(),
            Some(5000)
        );
        // Not even the weights fit.
        assert_eq!(
            max_context_fitting(&s, &up_to(u32::MAX), 1 << 20).unwrap(),
            None
        );
    }

    fn kv_rank(kv: KvType) -> u8 {
        match kv {
            KvType::Q4_0 => 0,
            KvType::Q8_0 => 1,
            KvType::F16 => 2,
        }
    }

    fn any_kv() -> impl Strategy<Value = KvType> {
        prop_oneof![Just(KvType::F16), Just(KvType::Q8_0), Just(KvType::Q4_0)]
    }

    fn any_shape() -> impl Strategy<Value = ModelShape> {
        (
            1u32..64,
            prop_oneof![Just(64u32), Just(128), Just(256)],
            1u32..8,
            1u32..16,
            1u32..200_000,
            prop::option::of(prop_oneof![Just(128u32), Just(512), Just(4096)]),
            1u32..8,
        )
            .prop_map(
                |(layers, head_dim, kv_heads, groups, vocab, window, period)| {
                    let heads = kv_heads * groups;
                    let mut s = ModelShape::dense(
                        "llama",
                        layers,
                        heads * head_dim,
                        4 * heads * head_dim,
                        heads,
                        kv_heads,
                        head_dim,
                        131_072,
                        vocab,
                        1 << 28,
                    );
                    s.sliding_window = window;
                    if window.is_some() {
                        s.sliding_window_layers = (0..layers).map(|il| il % period != 0).collect();
                    }
                    s
                },
            )
    }

    #[test]
    fn the_embedding_context_is_its_cache_and_a_micro_batch_of_logits() {
        // SmolLM2 at q8_0: 30 layers × 2 × 204 bytes per cell × 2048 cells
        // of K/V; 32 rows of 49152 logits, twice (output and compute buffer).
        let e = estimate(&smollm2(), &options(8192, KvType::Q8_0, 1)).unwrap();
        let kv = 30 * 2 * 204 * 2048;
        let logits = 2 * 32 * 49152 * 4;
        assert!(e.embedding_context > kv + logits, "{}", e.embedding_context);
        assert!(
            e.embedding_context < kv + logits + 4 * MIB,
            "{}",
            e.embedding_context
        );
        // A short context shortens it; the footprint never holds it.
        let short = estimate(&smollm2(), &options(512, KvType::Q8_0, 1)).unwrap();
        assert!(short.embedding_context < e.embedding_context - kv / 2);
        assert_eq!(
            e.total(),
            e.mapped_weights + e.footprint() + e.embedding_context
        );
        // Gemma 3: its 262k vocabulary's logits dominate; window layers keep a window.
        let g = estimate(&gemma3(), &options(8192, KvType::Q8_0, 1)).unwrap();
        assert!(
            g.embedding_context > 64 * MIB && g.embedding_context < 80 * MIB,
            "{}",
            g.embedding_context
        );
    }

    proptest! {
        #[test]
        fn the_estimate_grows_with_the_context(
            shape in any_shape(), kv in any_kv(), parallel in 1u32..8,
            a in 1u32..140_000, b in 1u32..140_000,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let small = estimate(&shape, &options(lo, kv, parallel)).unwrap();
            let large = estimate(&shape, &options(hi, kv, parallel)).unwrap();
            prop_assert!(small.kv_cache <= large.kv_cache);
            prop_assert!(small.compute_buffers <= large.compute_buffers);
            prop_assert!(small.footprint() <= large.footprint());
        }

        #[test]
        fn the_estimate_grows_with_the_kv_bytes(
            shape in any_shape(), a in any_kv(), b in any_kv(),
            context in 1u32..140_000, parallel in 1u32..8,
        ) {
            let (lo, hi) = if kv_rank(a) <= kv_rank(b) { (a, b) } else { (b, a) };
            let small = estimate(&shape, &options(context, lo, parallel)).unwrap();
            let large = estimate(&shape, &options(context, hi, parallel)).unwrap();
            prop_assert!(small.kv_cache <= large.kv_cache);
            prop_assert!(small.footprint() <= large.footprint());
        }

        #[test]
        fn the_estimate_grows_with_the_sequences(
            shape in any_shape(), kv in any_kv(), context in 1u32..140_000,
            a in 1u32..64, b in 1u32..64,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let small = estimate(&shape, &options(context, kv, lo)).unwrap();
            let large = estimate(&shape, &options(context, kv, hi)).unwrap();
            prop_assert!(small.kv_cache <= large.kv_cache);
            prop_assert!(small.footprint() <= large.footprint());
        }

        #[test]
        fn the_parts_add_up(shape in any_shape(), kv in any_kv(), context in 1u32..140_000) {
            let e = estimate(&shape, &options(context, kv, 1)).unwrap();
            prop_assert_eq!(e.total(), e.mapped_weights + e.repacked_weights + e.kv_cache
                + e.output_buffer + e.compute_buffers + e.overhead + e.embedding_context);
            prop_assert!(e.context <= 131_072);
            prop_assert!(u64::from(e.cells) >= u64::from(e.context));
        }
    }
}
