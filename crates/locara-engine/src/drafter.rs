//! A draft model: a second, smaller model in the worker that proposes the
//! tokens speculative decoding checks, for an app whose manifest pairs a
//! target with a draft (`[speculative]`). Prompt lookup ([`crate::draft`])
//! guesses only where the answer copies its input; a draft model guesses
//! everywhere it agrees with the target, which for a well-matched pair is
//! most of an ordinary answer.
//!
//! The worker checks the proposals exactly as it checks prompt lookup's
//! (`worker.rs`: each kept token is the target's argmax after the tokens
//! before it), so the answer is the target's greedy answer whatever the
//! draft proposes; the draft model only changes how many target decodes it
//! takes.
//!
//! The draft model has one sequence of its own, in a context of one target
//! sequence's length: it drafts for one generation at a time (its
//! *owner*), and the worker's other generations use prompt lookup. Before
//! each proposal it brings its sequence up to the owner's tokens, keeping
//! the longest common prefix, so the usual case (the owner's next step,
//! or the next turn of the same chat) decodes only the few tokens that are
//! new. It stops a proposal early where its own top token is unsure
//! ([`MIN_CONFIDENCE`]), since a guess the target is unlikely to keep costs
//! a wider target decode for nothing.

use crate::cpu;
use crate::worker::argmax;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::{BatchAddError, LlamaBatch};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use locara_core::threads::ThreadClass;

/// Lowest probability the draft model must give its own top token for the
/// proposal to go on. llama.cpp's speculative examples stop at 0.75; a
/// little lower keeps more of a self-similar pair's long agreements, and
/// the adaptive draft length (`draft::DraftLength`) trims what the target
/// rejects.
pub(crate) const MIN_CONFIDENCE: f32 = 0.6;

/// Why the draft model could not propose. The generation goes on without
/// its proposals (the worker turns the draft model off and says why).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DrafterError {
    #[error("llama.cpp could not make the draft model's context of {cells} cells: {message}")]
    Context { cells: u32, message: String },
    #[error("the draft model's decode failed: {0}")]
    Decode(#[from] DecodeError),
    #[error("the draft model's batch refused a token: {0}")]
    Batch(#[from] BatchAddError),
}

/// The draft model's context and what its one sequence holds.
pub(crate) struct Drafter<'m> {
    model: &'m LlamaModel,
    params: LlamaContextParams,
    /// Cells of its context: one target sequence's context.
    cells: u32,
    /// `None` while the worker's pool is freed (idle, or memory pressure):
    /// made again at the next proposal.
    ctx: Option<LlamaContext<'m>>,
    batch: LlamaBatch<'static>,
    /// The tokens whose K/V the context holds, at positions `0..len`.
    tokens: Vec<LlamaToken>,
    /// The generation it drafts for.
    pub(crate) owner: Option<u64>,
    /// Tokens decoded to catch up with an owner's sequence (prompt and the
    /// target's own tokens), over the worker's life.
    pub(crate) caught_up: u64,
}

/// A [`Drafter`] without its model: its context's parameters and size, and
/// its count of tokens caught up.
pub(crate) struct ParkedDrafter {
    params: LlamaContextParams,
    cells: u32,
    caught_up: u64,
}

impl<'m> Drafter<'m> {
    /// A drafter of `model` with a context of `cells` cells, with the K/V
    /// cache types and threads of `params` (the target's).
    pub(crate) fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        params: LlamaContextParams,
        cells: u32,
    ) -> Result<Drafter<'m>, DrafterError> {
        let ctx = make_context(backend, model, &params, cells)?;
        let batch = LlamaBatch::new(ctx.n_batch() as usize, 1);
        Ok(Drafter {
            model,
            params,
            cells,
            ctx: Some(ctx),
            batch,
            tokens: Vec::new(),
            owner: None,
            caught_up: 0,
        })
    }

    /// A drafter of `model` whose context is made at its first proposal:
    /// one taken apart by [`Drafter::park`] and put together again over the
    /// model loaded anew.
    pub(crate) fn unpark(model: &'m LlamaModel, parked: ParkedDrafter) -> Drafter<'m> {
        Drafter {
            model,
            batch: LlamaBatch::new(parked.params.n_batch().max(1) as usize, 1),
            params: parked.params,
            cells: parked.cells,
            ctx: None,
            tokens: Vec::new(),
            owner: None,
            caught_up: parked.caught_up,
        }
    }

    /// What outlives the draft model while the worker has set its models
    /// aside ([`Drafter::unpark`] takes it back).
    pub(crate) fn park(self) -> ParkedDrafter {
        ParkedDrafter {
            params: self.params,
            cells: self.cells,
            caught_up: self.caught_up,
        }
    }

    /// Frees the context (its K/V and compute buffers) until the next
    /// proposal.
    pub(crate) fn sleep(&mut self) {
        self.ctx = None;
        self.tokens.clear();
    }

    /// Cells of its context while it exists, else 0: for the worker's
    /// report.
    pub(crate) fn cells(&self) -> u32 {
        if self.ctx.is_some() {
            self.cells
        } else {
            0
        }
    }

    /// Up to `want` tokens the draft model predicts after `history` (the
    /// owner's sequence, its next token last), each its top choice after
    /// the ones before it, stopping where it is unsure. Empty when the
    /// history does not fit its context.
    pub(crate) fn propose(
        &mut self,
        backend: &LlamaBackend,
        history: &[LlamaToken],
        want: usize,
        class: ThreadClass,
        threads: i32,
    ) -> Result<Vec<LlamaToken>, DrafterError> {
        let cells = self.cells as usize;
        if history.is_empty() || want == 0 || history.len() >= cells {
            return Ok(Vec::new());
        }
        // The last proposed token is never decoded here, so `want - 1` more
        // positions after the history.
        let want = want.min(cells - history.len() + 1);
        if self.ctx.is_none() {
            self.ctx = Some(make_context(backend, self.model, &self.params, self.cells)?);
            self.tokens.clear();
        }
        let ctx = self.ctx.as_mut().expect("made above");

        // Keep the longest common prefix, less the history's last token
        // when it is all there: the proposal needs its logits.
        let mut keep = common_prefix(&self.tokens, history).min(history.len() - 1);
        if keep < self.tokens.len() {
            if ctx.kv_cache_seq_rm(0, Some(keep as u32), None).is_err() {
                ctx.clear_kv_cache();
                keep = 0;
            }
            self.tokens.truncate(keep);
        }

        // Catch up in batches of the context's size; logits at the end.
        let capacity = ctx.n_batch().max(1) as usize;
        let mut at = 0;
        for chunk in history[keep..].chunks(capacity) {
            self.batch.clear();
            for &token in chunk {
                let pos = self.tokens.len();
                let last = pos + 1 == history.len();
                self.batch.add(token, pos as i32, &[0], last)?;
                self.tokens.push(token);
            }
            if let Err(e) = cpu::decode(ctx, &mut self.batch, class, threads) {
                // What this chunk held is unknown now: start afresh next time.
                ctx.clear_kv_cache();
                self.tokens.clear();
                return Err(e.into());
            }
            self.caught_up += chunk.len() as u64;
            at = self.batch.n_tokens() - 1;
        }

        let mut proposed = Vec::with_capacity(want);
        loop {
            let (token, p) = top_token(ctx.get_logits_ith(at));
            if p < MIN_CONFIDENCE {
                break;
            }
            proposed.push(token);
            if proposed.len() == want {
                break;
            }
            self.batch.clear();
            self.batch
                .add(token, self.tokens.len() as i32, &[0], true)?;
            self.tokens.push(token);
            if let Err(e) = cpu::decode(ctx, &mut self.batch, class, threads) {
                ctx.clear_kv_cache();
                self.tokens.clear();
                return Err(e.into());
            }
            at = 0;
        }
        Ok(proposed)
    }
}

/// The draft model's context of `cells` cells with `params`.
fn make_context<'m>(
    backend: &LlamaBackend,
    model: &'m LlamaModel,
    params: &LlamaContextParams,
    cells: u32,
) -> Result<LlamaContext<'m>, DrafterError> {
    model
        .new_context(backend, params.clone())
        .map_err(|e| DrafterError::Context {
            cells,
            message: e.to_string(),
        })
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The most likely token of `logits` ([`argmax`]: the first of equal
/// logits wins, as the target's greedy pick does; NaNs never win) and its
/// probability (softmax); probability 0 when no logit is finite.
fn top_token(logits: &[f32]) -> (LlamaToken, f32) {
    let best = argmax(logits);
    let max = logits.get(best as usize).copied().unwrap_or(f32::NAN);
    if !max.is_finite() {
        return (LlamaToken(0), 0.0);
    }
    let sum: f32 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (v - max).exp())
        .sum();
    (LlamaToken(best), 1.0 / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix::<i32>(&[], &[1]), 0);
    }

    #[test]
    fn the_top_token_has_its_softmax_probability() {
        // ln 3: the first token is three times as likely as the second.
        let (token, p) = top_token(&[3f32.ln(), 0.0]);
        assert_eq!(token, LlamaToken(0));
        assert!((p - 0.75).abs() < 1e-6, "{p}");
        // Ties go to the first; a NaN never wins and is left out.
        let (token, p) = top_token(&[0.0, 1.0, 1.0, f32::NAN]);
        assert_eq!(token, LlamaToken(1));
        // exp(0 - 1) + 1 + 1: two equal tops share the mass.
        let expected = 1.0 / (2.0 + (-1f32).exp());
        assert!((p - expected).abs() < 1e-6, "{p} vs {expected}");
        assert_eq!(top_token(&[f32::NAN]).1, 0.0);
    }
}
