//! How a model is loaded: the K/V cache type and the defaults docs/ARCHITECTURE.md fixes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Context length (tokens) used when a request names none. Long enough for
/// real chats, small enough that the K/V cache of a small model stays in the
/// tens of MiB at `q8_0`.
pub const DEFAULT_CONTEXT: u32 = 8192;

/// The smallest context (tokens) anything may name: a request's `context`,
/// a manifest's, the serve config's, `locara run --ctx`, `locara plan --ctx`.
/// Below this a chat template and a short answer no longer fit.
pub const SMALLEST_CONTEXT: u32 = 256;

/// The largest context (tokens) anything may name; the loader clamps it to
/// the model's trained context.
pub const LARGEST_CONTEXT: u32 = 1_048_576;

/// The floor admission lowers a load's context to when memory is short
/// (a request that names no context); below this most chat prompts no
/// longer fit.
pub const DOWNSHIFT_FLOOR: u32 = 2048;

/// Element type of the K and V caches.
///
/// `q8_0` is the default: it halves the cache against `f16` with no quality
/// loss that chat users notice; `f16` is an opt-in for apps that ask for it;
/// `q4_0` is for tight machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    F16,
    #[default]
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The name used in flags, manifests and output (`f16`, `q8_0`, `q4_0`).
    pub fn as_str(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// ggml block geometry: (elements per block, bytes per block).
    /// From ggml's type traits: f16 is 1 element in 2 bytes; q8_0 is 32
    /// elements in 34 bytes (one f16 scale + 32 i8); q4_0 is 32 elements in 18
    /// bytes (one f16 scale + 16 bytes of nibbles).
    pub fn block(self) -> (u64, u64) {
        match self {
            KvType::F16 => (1, 2),
            KvType::Q8_0 => (32, 34),
            KvType::Q4_0 => (32, 18),
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A K/V type name that is not one of `f16`, `q8_0`, `q4_0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown K/V cache type {0:?}: expected one of f16, q8_0, q4_0")]
pub struct ParseKvTypeError(pub String);

impl FromStr for KvType {
    type Err = ParseKvTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "q8_0" | "q8" => Ok(KvType::Q8_0),
            "q4_0" | "q4" => Ok(KvType::Q4_0),
            _ => Err(ParseKvTypeError(s.to_string())),
        }
    }
}

/// The name of one load of a model. Apps that opt in to a K/V type other
/// than the runtime's default (`kv_quality = "high"` on a machine whose
/// default is q8_0) get a load of their own, budgeted like any other:
/// llama.cpp fixes a context's K/V type when it is made, so one load
/// cannot serve both. The load with the default type keeps the model's
/// name; another is `model@type` (`smollm2:135m@f16`). A load with a draft
/// model (an app's `[speculative]` pair, see [`drafted`]) adds `+draft`.
/// Model names have neither `@` nor `+`, so [`model_of`], [`kv_type_of`]
/// and [`draft_of`] read the parts back.
pub fn load_name(model: &str, kv_type: KvType, default: KvType) -> String {
    if kv_type == default {
        model.to_string()
    } else {
        format!("{model}@{kv_type}")
    }
}

/// The name of `load` (see [`load_name`]) with `draft` loaded beside it in
/// the same worker, proposing the tokens speculative decoding checks
/// (`smollm2:1.7b+smollm2:135m`). Such a load is budgeted as one: both
/// models' weights, the model's pool and the draft's one sequence.
pub fn drafted(load: &str, draft: &str) -> String {
    format!("{load}+{draft}")
}

/// The model a load (see [`load_name`]) is of.
pub fn model_of(load: &str) -> &str {
    load.split(['@', '+']).next().unwrap_or(load)
}

/// The K/V type of a load (see [`load_name`]): the one its name carries,
/// else the runtime's `default`.
pub fn kv_type_of(load: &str, default: KvType) -> KvType {
    let without_draft = load.split_once('+').map_or(load, |(l, _)| l);
    without_draft
        .split_once('@')
        .and_then(|(_, kv)| kv.parse().ok())
        .unwrap_or(default)
}

/// The draft model of a load (see [`drafted`]), if it has one.
pub fn draft_of(load: &str) -> Option<&str> {
    load.split_once('+').map(|(_, draft)| draft)
}

/// The models whose files a load maps: its model, then its draft if it has
/// one.
///
/// ```
/// use locara_core::load::models_of;
/// let models: Vec<&str> = models_of("smollm2:1.7b@f16+smollm2:135m").collect();
/// assert_eq!(models, ["smollm2:1.7b", "smollm2:135m"]);
/// assert_eq!(models_of("smollm2:1.7b").collect::<Vec<_>>(), ["smollm2:1.7b"]);
/// ```
pub fn models_of(load: &str) -> impl Iterator<Item = &str> {
    std::iter::once(model_of(load)).chain(draft_of(load))
}

/// The load defaults of docs/ARCHITECTURE.md, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadDefaults {
    /// Context length in tokens when none is asked for.
    pub context: u32,
    /// K/V cache element type when none is asked for.
    pub kv_type: KvType,
}

impl Default for LoadDefaults {
    fn default() -> Self {
        Self {
            context: DEFAULT_CONTEXT,
            kv_type: KvType::Q8_0,
        }
    }
}

impl LoadDefaults {
    /// The context (tokens) a load gets: the one asked for or the default,
    /// never more than the model was trained on (`trained`, from its GGUF
    /// metadata; 0 means unknown and leaves the value as it is).
    pub fn context_for(&self, requested: Option<u32>, trained: u32) -> u32 {
        let ctx = requested.unwrap_or(self.context).max(1);
        if trained > 0 {
            ctx.min(trained)
        } else {
            ctx
        }
    }
}

/// The K/V pool a loaded model starts with, in cells (all its sequences
/// together): a first chat turn fits with room to spare (a system prompt,
/// a question and an answer of a few hundred tokens each) and so does one
/// whole llama.cpp batch (2048 tokens), while it is a quarter of one
/// default context. SmolLM2's K/V at `q8_0` is about 25 MiB at 2048 cells
/// and 400 MiB at the old fixed reservation of 4 × 8192. The pool grows
/// when its sequences need more, with the governor's leave.
pub const STARTING_POOL_CELLS: u32 = 2048;

/// The K/V pool of a model: where it starts and the most it may grow to, in
/// cells. `context` is the most one sequence may hold, not a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolSize {
    /// Cells at load.
    pub start: u32,
    /// The cap: every sequence at its whole context at once.
    pub max: u32,
}

impl PoolSize {
    /// The pool of a model with `parallel` sequences of up to `context`
    /// tokens each.
    pub fn new(context: u32, parallel: u32) -> PoolSize {
        let max = context.max(1).saturating_mul(parallel.max(1));
        PoolSize {
            start: STARTING_POOL_CELLS.min(max),
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_names_carry_the_kv_type_and_the_draft() {
        let plain = load_name("smollm2:135m", KvType::Q8_0, KvType::Q8_0);
        assert_eq!(plain, "smollm2:135m");
        let f16 = load_name("smollm2:135m", KvType::F16, KvType::Q8_0);
        assert_eq!(f16, "smollm2:135m@f16");
        let pair = drafted(&f16, "smol-draft:135m");
        assert_eq!(pair, "smollm2:135m@f16+smol-draft:135m");
        for (load, kv, draft) in [
            (plain.as_str(), KvType::Q8_0, None),
            (&f16, KvType::F16, None),
            (&pair, KvType::F16, Some("smol-draft:135m")),
            ("smollm2:135m+d:1b", KvType::Q8_0, Some("d:1b")),
        ] {
            assert_eq!(model_of(load), "smollm2:135m", "{load}");
            assert_eq!(kv_type_of(load, KvType::Q8_0), kv, "{load}");
            assert_eq!(draft_of(load), draft, "{load}");
        }
    }

    #[test]
    fn a_pool_starts_small_and_is_capped_at_every_sequence_full() {
        assert_eq!(
            PoolSize::new(8192, 4),
            PoolSize {
                start: 2048,
                max: 32768
            }
        );
        assert_eq!(
            PoolSize::new(1024, 1),
            PoolSize {
                start: 1024,
                max: 1024
            }
        );
    }

    #[test]
    fn context_is_clamped_to_the_trained_context() {
        let d = LoadDefaults::default();
        assert_eq!(d.context_for(None, 32768), 8192);
        assert_eq!(d.context_for(None, 2048), 2048);
        assert_eq!(d.context_for(Some(65536), 32768), 32768);
        assert_eq!(d.context_for(Some(512), 8192), 512);
        assert_eq!(d.context_for(Some(0), 8192), 1);
        assert_eq!(d.context_for(None, 0), 8192);
    }

    #[test]
    fn a_load_name_carries_a_kv_type_other_than_the_default() {
        let plain = load_name("smollm2:135m", KvType::Q8_0, KvType::Q8_0);
        assert_eq!(plain, "smollm2:135m");
        let high = load_name("smollm2:135m", KvType::F16, KvType::Q8_0);
        assert_eq!(high, "smollm2:135m@f16");
        for name in [&plain, &high] {
            assert_eq!(model_of(name), "smollm2:135m");
        }
        assert_eq!(kv_type_of(&plain, KvType::Q8_0), KvType::Q8_0);
        assert_eq!(kv_type_of(&high, KvType::Q8_0), KvType::F16);
    }

    #[test]
    fn kv_type_names_round_trip() {
        for kv in KvType::ALL {
            assert_eq!(kv.as_str().parse::<KvType>(), Ok(kv));
        }
        let err = "q5_1".parse::<KvType>().unwrap_err();
        assert!(err.to_string().contains("q5_1"));
        assert!(err.to_string().contains("q8_0"));
    }
}
