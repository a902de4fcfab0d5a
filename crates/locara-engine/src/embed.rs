//! Embeddings: one vector per input, computed by the worker of the model.
//!
//! # Where they run: a context of their own, made per request
//!
//! The worker's K/V pool is a generation context: embeddings off, shared
//! by the sequences of a continuous batch. Turning embeddings on in it
//! would change what every decode of every running generation outputs
//! (llama.cpp outputs every token of an embedding context), so an
//! [`Request::Embed`](crate::protocol::Request::Embed) gets a second
//! llama.cpp context over the same loaded model: the weights are mapped
//! once and shared; only the context's own buffers are new. It is made when
//! the request arrives and dropped when it is answered, so a worker that
//! serves no embeddings never holds it, and one that did gives its memory
//! back at once (making a context of this size takes a few milliseconds).
//!
//! Its memory, which `locara_core::estimate::embedding_context` predicts
//! and admission counts for every loaded model (any model may be asked): a
//! K/V cache of one sequence of up to [`EMBED_MAX_TOKENS`] cells (the
//! worker's K/V type; window layers hold their window), and llama.cpp's
//! logits for every token of a micro-batch, which it computes for a
//! generative model even though only hidden states are read: inputs are
//! decoded [`EMBED_CHUNK_TOKENS`] tokens at a time to bound those (about
//! 38 MiB in all for SmolLM2-135M, 75 MiB for Gemma 3 270M, whose 262k
//! vocabulary makes a row of logits 1 MiB).
//!
//! The request runs between two steps of the generation loop, so running
//! generations pause for its length (tens of milliseconds for a passage).
//!
//! # Pooling
//!
//! The context runs with llama.cpp's pooling off and the worker pools the
//! hidden states of the last layer (after the final norm) itself, as the
//! GGUF says (`{arch}.pooling_type`): a generative model (none stated) and
//! `mean` average over all tokens, `cls` takes the first token's, `last`
//! the last token's. For a model with causal attention that is what
//! llama.cpp's own pooling computes, and it does not need the whole input in
//! one micro-batch, so the chunks above work for every model. A model with
//! non-causal attention (an encoder) would need it; the estimate refuses
//! those architectures, and this module refuses a file that says its
//! attention is not causal. `rank` (a reranker's score) is not an embedding
//! and is refused. Every vector is L2-normalized, as OpenAI's are, so a dot
//! product is the cosine similarity.

use crate::protocol::{EmbedInput, EmbedRequest, ErrorKind};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
pub use locara_core::estimate::{EMBED_CHUNK_TOKENS, EMBED_MAX_TOKENS};
use locara_gguf::GgufFile;
use std::num::NonZeroU32;

/// How the hidden states of an input's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over all tokens: what a generative model gets.
    Mean,
    /// The first token's (`cls`).
    First,
    /// The last token's (`last`).
    Last,
}

/// What the worker knows of the model's embeddings from its GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedShape {
    Pooled(Pooling),
    /// Why this model gives no embeddings.
    Refused(String),
}

impl EmbedShape {
    /// Reads `{arch}.pooling_type` (llama.cpp's `enum llama_pooling_type`:
    /// 0 none, 1 mean, 2 cls, 3 last, 4 rank) and `{arch}.attention.causal`.
    pub fn of(gguf: &GgufFile) -> EmbedShape {
        let arch = &gguf.model.architecture;
        let causal = gguf
            .get(&format!("{arch}.attention.causal"))
            .and_then(|v| v.as_integer())
            .is_none_or(|c| c != 0);
        if !causal {
            return EmbedShape::Refused(format!(
                "{arch} attends in both directions, which needs a whole input in one micro-batch; Locara embeds with causal models only"
            ));
        }
        let pooling = gguf
            .get(&format!("{arch}.pooling_type"))
            .and_then(|v| v.as_integer());
        match pooling {
            None | Some(0) | Some(1) => EmbedShape::Pooled(Pooling::Mean),
            Some(2) => EmbedShape::Pooled(Pooling::First),
            Some(3) => EmbedShape::Pooled(Pooling::Last),
            Some(4) => EmbedShape::Refused(
                "this model is a reranker (pooling type rank): it scores pairs, it gives no embeddings"
                    .into(),
            ),
            Some(other) => {
                EmbedShape::Refused(format!("its pooling type {other} is unknown to Locara"))
            }
        }
    }
}

/// The settings every embedding context of a worker shares.
#[derive(Debug, Clone)]
pub struct Embedder {
    pub shape: EmbedShape,
    /// The worker's K/V type and CPU threads.
    pub kv_type: KvCacheType,
    pub threads: i32,
    /// Tokens one input may hold: [`EMBED_MAX_TOKENS`], at most the
    /// worker's context per sequence.
    pub max_tokens: u32,
}

/// A failed embedding request: the kind and the message for the parent.
pub type EmbedError = (ErrorKind, String);

impl Embedder {
    /// Computes one vector per input and counts the tokens.
    pub fn embed(
        &self,
        backend: &LlamaBackend,
        model: &LlamaModel,
        request: &EmbedRequest,
    ) -> Result<(Vec<Vec<f32>>, u32), EmbedError> {
        let pooling = match &self.shape {
            EmbedShape::Pooled(p) => *p,
            EmbedShape::Refused(why) => return Err((ErrorKind::InvalidInput, why.clone())),
        };
        let inputs = self.tokenize(model, &request.inputs)?;
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let cells = u32::try_from(longest).unwrap_or(u32::MAX).max(1);
        let chunk = EMBED_CHUNK_TOKENS;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cells))
            .with_n_batch(chunk)
            .with_n_ubatch(chunk)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::None)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_type_k(self.kv_type)
            .with_type_v(self.kv_type)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED)
            .with_swa_full(false)
            .with_no_perf(true);
        let mut ctx = model.new_context(backend, params).map_err(|e| {
            (
                ErrorKind::DecodeFailed,
                format!("llama.cpp could not make an embedding context of {cells} cells: {e}"),
            )
        })?;
        let mut batch = LlamaBatch::new(chunk as usize, 1);
        let width = usize::try_from(model.n_embd()).unwrap_or(0);
        let mut vectors = Vec::with_capacity(inputs.len());
        for (i, tokens) in inputs.iter().enumerate() {
            ctx.clear_kv_cache();
            let mut pooled = vec![0f32; width];
            for (c, part) in tokens.chunks(chunk as usize).enumerate() {
                batch.clear();
                let start = c * chunk as usize;
                for (j, &t) in part.iter().enumerate() {
                    let pos = i32::try_from(start + j).unwrap_or(i32::MAX);
                    batch
                        .add(t, pos, &[0], true)
                        .map_err(|e| (ErrorKind::DecodeFailed, format!("input {i}: batch: {e}")))?;
                }
                ctx.decode(&mut batch).map_err(|e| {
                    (
                        ErrorKind::DecodeFailed,
                        format!("llama.cpp could not decode input {i}: {e}"),
                    )
                })?;
                for j in 0..part.len() {
                    let at = start + j;
                    let wanted = match pooling {
                        Pooling::Mean => true,
                        Pooling::First => at == 0,
                        Pooling::Last => at + 1 == tokens.len(),
                    };
                    if !wanted {
                        continue;
                    }
                    let row = ctx
                        .embeddings_ith(i32::try_from(j).unwrap_or(i32::MAX))
                        .map_err(|e| {
                            (
                                ErrorKind::DecodeFailed,
                                format!("no hidden state for token {at} of input {i}: {e}"),
                            )
                        })?;
                    for (p, x) in pooled.iter_mut().zip(row) {
                        *p += x;
                    }
                }
            }
            if pooling == Pooling::Mean {
                let n = tokens.len() as f32;
                pooled.iter_mut().for_each(|p| *p /= n);
            }
            normalize(&mut pooled);
            vectors.push(pooled);
        }
        let prompt_tokens = inputs.iter().map(Vec::len).sum::<usize>();
        Ok((vectors, u32::try_from(prompt_tokens).unwrap_or(u32::MAX)))
    }

    /// The tokens of each input, checked: not empty, within
    /// [`Embedder::max_tokens`], every id in the vocabulary (llama.cpp
    /// aborts on one that is not).
    fn tokenize(
        &self,
        model: &LlamaModel,
        inputs: &[EmbedInput],
    ) -> Result<Vec<Vec<LlamaToken>>, EmbedError> {
        let n_vocab = u32::try_from(model.n_vocab()).unwrap_or(0);
        let bad = |msg: String| (ErrorKind::InvalidInput, msg);
        if inputs.is_empty() {
            return Err(bad("no input to embed".into()));
        }
        let mut out = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let tokens = match input {
                EmbedInput::Text(text) => {
                    if text.is_empty() {
                        return Err(bad(format!("input {i} is empty")));
                    }
                    model.vocab().tokenize(text.as_bytes(), true, false)
                }
                EmbedInput::Tokens(ids) => {
                    if let Some(id) = ids.iter().find(|&&id| id >= n_vocab) {
                        return Err(bad(format!(
                            "input {i} holds token {id}: this model's vocabulary has {n_vocab} tokens (0 to {})",
                            n_vocab.saturating_sub(1)
                        )));
                    }
                    ids.iter()
                        .map(|&id| LlamaToken::new(i32::try_from(id).unwrap_or(0)))
                        .collect()
                }
            };
            if tokens.is_empty() {
                return Err(bad(format!("input {i} is empty")));
            }
            if tokens.len() > self.max_tokens as usize {
                return Err((
                    ErrorKind::PromptTooLong,
                    format!(
                        "input {i} is {} tokens; an input to embed may hold at most {} with this model",
                        tokens.len(),
                        self.max_tokens
                    ),
                ));
            }
            out.push(tokens);
        }
        Ok(out)
    }
}

/// Scales `v` to length 1 (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locara_gguf::testing::GgufBuilder;

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, -4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, -0.8]);
        let mut z = vec![0.0; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn pooling_comes_from_the_gguf_and_mean_is_the_default() {
        let plain = locara_gguf::validate_bytes(&GgufBuilder::synthetic().build()).unwrap();
        assert_eq!(EmbedShape::of(&plain), EmbedShape::Pooled(Pooling::Mean));
        let arch = plain.model.architecture.clone();
        for (value, shape) in [
            (2u32, Some(Pooling::First)),
            (3, Some(Pooling::Last)),
            (4, None),
        ] {
            let file = GgufBuilder::synthetic()
                .set(
                    &format!("{arch}.pooling_type"),
                    locara_gguf::Value::U32(value),
                )
                .build();
            let file = locara_gguf::validate_bytes(&file).unwrap();
            match (EmbedShape::of(&file), shape) {
                (EmbedShape::Pooled(p), Some(want)) => assert_eq!(p, want),
                (EmbedShape::Refused(why), None) => assert!(why.contains("reranker"), "{why}"),
                (got, want) => panic!("pooling {value}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
