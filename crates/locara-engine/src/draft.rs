//! Speculative decoding's choices, as plain functions and values: what to
//! draft (prompt lookup) and how many tokens (an adaptive draft length).
//!
//! A generation that decodes greedily can check several guessed tokens in
//! one decode: the worker places its next token and `k` drafted tokens
//! after it in the batch, takes the target model's argmax at each of them,
//! keeps the longest prefix of drafts the model agrees with plus the
//! model's own token after it, and removes the K/V cells of the rest. The
//! answer is the one greedy decoding gives (each kept token is the model's
//! argmax after the tokens before it); only the number of decodes changes.
//! The worker does that part (`worker.rs`); this module decides:
//!
//! * [`lookup`]: *prompt lookup* (n-gram drafting, no draft model): the
//!   last `n` tokens of the sequence (prompt, earlier turns and answer so
//!   far) are searched for earlier in it, longest `n` first, and the tokens
//!   that followed the latest match are the draft. It pays where the answer
//!   copies its input: editing, quoting, summaries with citations, code
//!   changes.
//! * [`DraftLength`]: how many tokens a generation drafts at its next step.
//!   A verified draft costs a wider decode whether or not it is kept (on a
//!   CPU a batch of 9 tokens of a small model takes about twice as long as
//!   one), so the length follows what was accepted and drafting pauses,
//!   for longer each time, while nothing is.
//!
//! ```
//! use locara_engine::draft::{lookup, DraftLength};
//!
//! // "a b c d e ... a b" -> the tokens after the earlier "a b".
//! let history = [1, 2, 3, 4, 5, 9, 1, 2];
//! assert_eq!(lookup(&history, 2, 3, 8), &[3, 4, 5, 9, 1, 2]);
//!
//! let mut length = DraftLength::default();
//! let k = length.want();
//! length.record(k, k); // all accepted: draft more next time
//! assert!(length.want() > k);
//! ```

/// Longest n-gram [`lookup`] tries to match, tokens.
pub const NGRAM_MAX: usize = 3;
/// Shortest n-gram [`lookup`] accepts as a match, tokens. A single token
/// matches almost anywhere ("the", a space) and its continuation is mostly
/// wrong; two already say much more.
pub const NGRAM_MIN: usize = 2;
/// Most tokens one generation drafts at one step. vLLM and llama.cpp's
/// lookup decoding use 5 to 16; a decode on a CPU grows in cost with its
/// width, so past this more drafts pay less than they cost.
pub const MAX_DRAFT: usize = 12;
/// Fewest tokens a generation drafts while it drafts at all.
pub const MIN_DRAFT: usize = 2;
/// Most tokens one generation drafts at one step on a model whose weights
/// the CPU backend repacks (`locara_core::estimate::Backend::repacks`):
/// llama.cpp multiplies those four batch rows at a time with a kernel that
/// rounds differently from its one-row kernel, which takes rows past the
/// last whole four. The model's next token and two drafts make three rows,
/// all through the one-row kernel, as decoding one token at a time, so a
/// draft checked that way never changes a greedy answer (measured on Gemma
/// 3's Q4_K: with longer drafts its answers part where its top two tokens
/// are within 0.2 nats). Three tokens a step at best is less than a long
/// copy could give, and the same answer is worth it.
pub const EXACT_BATCH_DRAFTS: usize = 2;
/// Most drafted tokens in one batch, all generations together. Each one
/// asks llama.cpp for a row of logits (`n_vocab` f32: 0.2 MiB for
/// SmolLM2, 1 MiB for Gemma 3), so this bounds the output buffer's growth.
pub const MAX_DRAFTS_PER_BATCH: usize = 16;
/// Drafts in a row with nothing accepted before drafting pauses.
const MISSES_BEFORE_PAUSE: u32 = 2;
/// The first pause, steps; each further one doubles, up to [`MAX_PAUSE`].
const FIRST_PAUSE: u32 = 4;
/// The longest pause, steps: a generation whose answer turns to copying
/// later finds out within this many tokens.
const MAX_PAUSE: u32 = 64;

/// The tokens that followed the latest earlier occurrence of the last `n`
/// tokens of `history`, for the longest `n` from `max_n` down to `min_n`
/// that occurs earlier; at most `max_draft` of them. Empty when no such
/// n-gram occurs earlier (or `history` is too short).
///
/// The latest match is taken because in a copy the answer's own recent text
/// is the best guess of where in the source it is. The scan is linear in
/// the history (a few microseconds for thousands of tokens), which is small
/// next to a decode.
pub fn lookup<T: PartialEq>(history: &[T], min_n: usize, max_n: usize, max_draft: usize) -> &[T] {
    let len = history.len();
    if max_draft == 0 || min_n == 0 {
        return &[];
    }
    for n in (min_n..=max_n).rev() {
        if n >= len {
            continue;
        }
        let suffix = &history[len - n..];
        // Start positions of earlier occurrences: the match must end before
        // the suffix does, so at least one token follows it.
        for start in (0..len - n).rev() {
            if &history[start..start + n] == suffix {
                let from = start + n;
                let to = (from + max_draft).min(len);
                return &history[from..to];
            }
        }
    }
    &[]
}

/// How many tokens one generation drafts at its next step, from what its
/// earlier drafts got accepted.
///
/// A draft that was kept whole doubles the length (a copy goes on); one
/// kept in part sets it just past what was kept; one with nothing kept
/// lowers it to [`MIN_DRAFT`], and [`MISSES_BEFORE_PAUSE`] of those in a
/// row pause drafting ([`DraftLength::want`] gives 0) for [`FIRST_PAUSE`]
/// steps, doubling with every further miss up to [`MAX_PAUSE`]. Any
/// accepted token ends the pause's growth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftLength {
    /// Tokens to draft at the next step that drafts.
    next: usize,
    /// Drafts in a row with nothing accepted.
    misses: u32,
    /// Steps left before drafting again.
    paused: u32,
    /// The length of the last pause, steps (0: none yet).
    last_pause: u32,
    max: usize,
}

impl Default for DraftLength {
    fn default() -> Self {
        DraftLength::new(MAX_DRAFT)
    }
}

impl DraftLength {
    /// Starts at half of `max` (at least [`MIN_DRAFT`]): a first guess
    /// that is cheap to get wrong and grows at once when it is right.
    pub fn new(max: usize) -> Self {
        DraftLength {
            next: (max / 2).max(MIN_DRAFT).min(max),
            misses: 0,
            paused: 0,
            last_pause: 0,
            max,
        }
    }

    /// Tokens to draft at this step; 0 while paused (and a paused step
    /// counts down).
    pub fn want(&mut self) -> usize {
        if self.paused > 0 {
            self.paused -= 1;
            return 0;
        }
        self.next
    }

    /// Whether drafting is paused for the next step (no lookup needed).
    pub fn paused(&self) -> bool {
        self.paused > 0
    }

    /// Records one verified draft: `proposed` tokens, of which the first
    /// `accepted` were the target's own. A step that found nothing to draft
    /// is not recorded.
    pub fn record(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        let accepted = accepted.min(proposed);
        if accepted == 0 {
            self.next = MIN_DRAFT.min(self.max);
            self.misses += 1;
            if self.misses >= MISSES_BEFORE_PAUSE {
                self.last_pause = if self.last_pause == 0 {
                    FIRST_PAUSE
                } else {
                    (self.last_pause * 2).min(MAX_PAUSE)
                };
                self.paused = self.last_pause;
                self.misses = 0;
            }
            return;
        }
        self.misses = 0;
        self.last_pause = 0;
        self.next = if accepted == proposed {
            proposed.saturating_mul(2)
        } else {
            accepted + 1
        }
        .clamp(MIN_DRAFT, self.max.max(MIN_DRAFT))
        .min(self.max);
    }
}

/// One generation's drafting figures, summed over its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftCounts {
    /// Drafted tokens that were verified.
    pub proposed: u32,
    /// Of those, the ones the target agreed with (and kept).
    pub accepted: u32,
    /// Decodes that gave the generation tokens, the prefill's last
    /// included.
    pub steps: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_the_continuation_of_the_latest_match() {
        // "1 2" occurs at 0 and at 4; the latest earlier one is at 4.
        let h = [1, 2, 7, 8, 1, 2, 5, 6, 1, 2];
        assert_eq!(lookup(&h, 2, 3, 8), &[5, 6, 1, 2]);
    }

    #[test]
    fn lookup_prefers_the_longest_ngram() {
        // The 2-gram "2 3" latest occurs at 5 (-> 9), the 3-gram "1 2 3"
        // only at 0 (-> 4): the longer match wins.
        let h = [1, 2, 3, 4, 0, 2, 3, 9, 1, 2, 3];
        assert_eq!(lookup(&h, 2, 3, 1), &[4]);
        assert_eq!(lookup(&h, 2, 2, 1), &[9]);
    }

    #[test]
    fn lookup_caps_the_draft_and_stops_at_the_end_of_the_history() {
        let h = [1, 2, 3, 4, 5, 6, 1, 2];
        assert_eq!(lookup(&h, 2, 2, 3), &[3, 4, 5]);
        // A match just before the suffix: one token follows it.
        let h = [5, 5, 5];
        assert_eq!(lookup(&h, 2, 2, 8), &[5]);
    }

    #[test]
    fn lookup_finds_nothing_without_an_earlier_match() {
        assert!(lookup(&[1, 2, 3, 4], 2, 3, 8).is_empty());
        // A single-token match is below the minimum.
        assert!(lookup(&[1, 2, 3, 1], 2, 3, 8).is_empty());
        assert_eq!(lookup(&[1, 2, 3, 1], 1, 3, 8), &[2, 3, 1]);
        assert!(lookup::<u32>(&[], 2, 3, 8).is_empty());
        assert!(lookup(&[1, 2], 2, 3, 8).is_empty());
        assert!(lookup(&[1, 2, 1, 2], 2, 3, 0).is_empty());
    }

    #[test]
    fn a_kept_draft_doubles_the_length_up_to_the_maximum() {
        let mut d = DraftLength::new(12);
        assert_eq!(d.want(), 6);
        d.record(6, 6);
        assert_eq!(d.want(), 12);
        d.record(12, 12);
        assert_eq!(d.want(), 12);
    }

    #[test]
    fn a_draft_kept_in_part_sets_the_length_just_past_it() {
        let mut d = DraftLength::new(12);
        d.record(6, 3);
        assert_eq!(d.want(), 4);
        d.record(4, 1);
        assert_eq!(d.want(), MIN_DRAFT);
    }

    #[test]
    fn misses_in_a_row_pause_drafting_for_longer_each_time() {
        let mut d = DraftLength::new(12);
        d.record(6, 0);
        assert_eq!(d.want(), MIN_DRAFT, "one miss only shortens");
        d.record(2, 0);
        // Paused for FIRST_PAUSE steps.
        assert!(d.paused());
        for _ in 0..FIRST_PAUSE {
            assert_eq!(d.want(), 0);
        }
        assert_eq!(d.want(), MIN_DRAFT);
        d.record(2, 0);
        d.record(2, 0);
        let pause = (0..1000).take_while(|_| d.want() == 0).count();
        assert_eq!(pause, 2 * FIRST_PAUSE as usize);
        // A hit resets the growth of the pause.
        d.record(2, 1);
        d.record(2, 0);
        d.record(2, 0);
        let pause = (0..1000).take_while(|_| d.want() == 0).count();
        assert_eq!(pause, FIRST_PAUSE as usize);
    }

    #[test]
    fn pauses_stop_growing_at_the_longest() {
        let mut d = DraftLength::new(12);
        let mut last = 0;
        for _ in 0..20 {
            d.record(2, 0);
            d.record(2, 0);
            last = (0..1000).take_while(|_| d.want() == 0).count();
        }
        assert_eq!(last, MAX_PAUSE as usize);
    }

    #[test]
    fn an_empty_step_changes_nothing() {
        let mut d = DraftLength::new(12);
        let before = d.clone();
        d.record(0, 0);
        assert_eq!(d, before);
    }

    #[test]
    fn a_small_maximum_is_respected() {
        let mut d = DraftLength::new(1);
        assert_eq!(d.want(), 1);
        d.record(1, 1);
        assert_eq!(d.want(), 1);
        d.record(1, 0);
        assert_eq!(d.want(), 1);
    }
}
