//! The K/V pool's decisions, without llama.cpp: which sequence a request
//! goes to and how much of its cache it reuses, what a context shift
//! drops, which idle sequences give way when live ones need room, what
//! survives a resize, and how much to ask the parent for when the pool is
//! full. The worker carries these decisions out; the tests below drive them
//! with plain values.
//!
//! Words: a *cell* holds the K/V of one token of one sequence; the *pool*
//! is the cells of one worker, shared by all its sequences (llama.cpp's
//! unified K/V). A sequence is *live* while a generation runs on it and
//! *cached* when a finished generation left its tokens for prefix reuse.
//!
//! ```
//! use locara_engine::pool::{choose_sequence, Candidate};
//!
//! // Sequence 1 holds the previous turn of this conversation: 40 of its
//! // 42 cached tokens are the start of the new prompt.
//! let choice = choose_sequence(&[
//!     Candidate { seq: 0, cached: 0, reusable: 0, last_used: 0 },
//!     Candidate { seq: 1, cached: 42, reusable: 40, last_used: 7 },
//! ]).unwrap();
//! assert_eq!((choice.seq, choice.reuse), (1, 40));
//! ```

/// llama.cpp rounds every context up to a multiple of 256 cells
/// (`GGML_PAD(n_ctx, 256)` in `llama_context`'s constructor), so pools are
/// sized in these steps and a smaller step would only be rounded away.
pub const CELL_STEP: u32 = 256;

/// The smallest pool: one step.
pub const MIN_POOL_CELLS: u32 = CELL_STEP;

/// `n` cells rounded up to the pool's step, at least [`MIN_POOL_CELLS`].
pub fn round_cells(n: u32) -> u32 {
    n.max(MIN_POOL_CELLS)
        .div_ceil(CELL_STEP)
        .checked_mul(CELL_STEP)
        .unwrap_or(u32::MAX / CELL_STEP * CELL_STEP)
}

/// Length of the longest common prefix of two token lists.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How many leading tokens of `prompt` a new generation may take from a
/// sequence's cache instead of prefilling them.
///
/// * `cached`: the tokens the sequence holds, at positions `0..len`;
/// * `exact`: how many of them hold the K/V a fresh prefill of them would
///   compute (a context shift leaves later ones computed over tokens that
///   are gone, so they must not be reused as if they were fresh);
/// * `window` and `pos_min`: for a model with sliding-window layers, their
///   window in tokens and the smallest position the sequence still holds
///   in them. With `swa_full` off those layers keep only about the last
///   window of a sequence, so decoding from position `p` needs positions
///   from `p - window` on still there; if they are gone the cache cannot
///   be used at all (the same test as llama.cpp's server, which then
///   re-processes the whole prompt too).
///
/// At least one prompt token is always left to decode: its logits give the
/// first token of the answer.
pub fn reusable_prefix<T: PartialEq>(
    cached: &[T],
    exact: usize,
    prompt: &[T],
    window: Option<u32>,
    pos_min: i32,
) -> usize {
    let exact = exact.min(cached.len());
    let reuse = common_prefix(&cached[..exact], prompt).min(prompt.len().saturating_sub(1));
    if reuse == 0 {
        return 0;
    }
    if let Some(window) = window {
        let needed_from = reuse.saturating_sub(window as usize);
        if pos_min < 0 || pos_min as usize > needed_from {
            return 0;
        }
    }
    reuse
}

/// How many of `next`, the tokens a finished conversation's next prompt
/// will have after those its sequence holds (its answer's end of turn and
/// the next user turn's opening: `<|im_end|> \n <|im_start|> user \n` on
/// ChatML), may be decoded into the sequence ahead of that prompt: those up
/// to and including the last control token (`<|im_start|>`,
/// `<start_of_turn>`). A tokenizer splits text at control tokens first, so
/// those come out the same whatever the user writes; the rest (`user \n`)
/// could merge with the user's first characters, and a token that does not
/// match costs more than it saves (on a sliding-window model, the whole
/// cache).
pub fn follow_up_len<T: Copy>(next: &[T], is_control: impl Fn(T) -> bool) -> usize {
    next.iter()
        .rposition(|&t| is_control(t))
        .map_or(0, |i| i + 1)
}

/// A sequence that is free (no generation runs on it), as a candidate for
/// a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// llama.cpp's sequence id.
    pub seq: usize,
    /// Tokens it holds in the pool (0: empty).
    pub cached: usize,
    /// Of those, how many the new request may reuse ([`reusable_prefix`]).
    pub reusable: usize,
    /// When it was last used, on the worker's use counter (higher = later).
    pub last_used: u64,
}

/// Where a new request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub seq: usize,
    /// Leading prompt tokens taken from the cache; the sequence's cells
    /// after them are removed.
    pub reuse: usize,
}

/// Picks the sequence for a new request, in this order:
///
/// 1. a cached sequence the request continues: the reusable prefix is at
///    least half of what it holds (a next turn of its conversation, a
///    regenerated answer), the longest such prefix first, then the most
///    recently used;
/// 2. an empty sequence;
/// 3. the least recently used cached sequence, keeping whatever prefix it
///    shares with the request.
///
/// The half-the-cache rule keeps one conversation from being cut back to a
/// short prefix it merely shares with another (the same chat template
/// header or default system prompt) while an empty sequence is free:
/// losing the rest of its cache would cost its next turn a full prefill.
/// `None` when no sequence is free.
pub fn choose_sequence(candidates: &[Candidate]) -> Option<Choice> {
    let continuation = candidates
        .iter()
        .filter(|c| c.cached > 0 && c.reusable > 0 && c.reusable * 2 >= c.cached)
        .max_by_key(|c| (c.reusable, c.last_used));
    if let Some(c) = continuation {
        return Some(Choice {
            seq: c.seq,
            reuse: c.reusable,
        });
    }
    if let Some(c) = candidates.iter().find(|c| c.cached == 0) {
        return Some(Choice {
            seq: c.seq,
            reuse: 0,
        });
    }
    candidates
        .iter()
        .min_by_key(|c| (c.last_used, c.seq))
        .map(|c| Choice {
            seq: c.seq,
            reuse: c.reusable,
        })
}

/// A context shift, as llama.cpp does it: keep the first `keep` tokens,
/// discard the `discard` after them, move the rest back by `discard`
/// positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    pub keep: usize,
    pub discard: usize,
}

/// The shift of a sequence holding `len` tokens whose first `n_keep` are
/// kept (the system prompt): the oldest half of the rest goes. `None` when
/// that frees nothing (everything is kept, or one token is left).
pub fn context_shift(len: usize, n_keep: usize) -> Option<Shift> {
    let keep = n_keep.min(len);
    let discard = (len - keep) / 2;
    (discard > 0).then_some(Shift { keep, discard })
}

/// A sequence as the pool's bookkeeping sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub seq: usize,
    /// Cells it holds.
    pub cells: usize,
    /// Use counter of its last use (higher = later).
    pub last_used: u64,
}

/// Cached sequences to drop, least recently used first, until `free` cells
/// plus theirs cover `needed`. Drops all of them if even that is short.
pub fn evict_for_room(needed: usize, free: usize, cached: &[Held]) -> Vec<usize> {
    let mut order: Vec<&Held> = cached.iter().collect();
    order.sort_by_key(|h| (h.last_used, h.seq));
    let mut free = free;
    let mut out = Vec::new();
    for h in order {
        if free >= needed {
            break;
        }
        free += h.cells;
        out.push(h.seq);
    }
    out
}

/// What a resize to a requested size does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizePlan {
    /// The new pool, in cells.
    pub cells: u32,
    /// Cached sequences moved into the new pool (live ones always move).
    pub keep: Vec<usize>,
    /// Cached sequences that do not fit and are dropped.
    pub drop: Vec<usize>,
}

/// Plans a resize to `requested` cells. The pool never gets smaller than
/// the live sequences' cells plus one cell each (so each can take its next
/// token) and never larger than `pool_max`; cached sequences fill what is
/// left, most recently used first; those that do not fit are dropped.
pub fn plan_resize(requested: u32, pool_max: u32, live: &[Held], cached: &[Held]) -> ResizePlan {
    let live_cells: usize = live.iter().map(|h| h.cells + 1).sum();
    let floor = u32::try_from(live_cells).unwrap_or(u32::MAX);
    let cells = round_cells(requested.max(floor)).min(round_cells(pool_max));
    let mut order: Vec<&Held> = cached.iter().collect();
    order.sort_by_key(|h| std::cmp::Reverse((h.last_used, h.seq)));
    let mut used = live.iter().map(|h| h.cells).sum::<usize>();
    let (mut keep, mut drop) = (Vec::new(), Vec::new());
    for h in order {
        if used + h.cells <= cells as usize {
            used += h.cells;
            keep.push(h.seq);
        } else {
            drop.push(h.seq);
        }
    }
    ResizePlan { cells, keep, drop }
}

/// The pool the worker proposes when live sequences are `needed` cells
/// short of a full `pool` with `used` cells taken: half as large again, or
/// what covers the shortage if that is more, rounded to the pool's step and
/// capped at `pool_max`. Growing by half keeps the number of resizes (each
/// one moves every sequence) logarithmic in the final size while never
/// holding more than half again what was needed.
pub fn suggest_growth(pool: u32, used: u32, needed: u32, pool_max: u32) -> u32 {
    let want = pool
        .saturating_add(pool / 2)
        .max(used.saturating_add(needed));
    round_cells(want).min(round_cells(pool_max))
}

/// Whether a choice continues the conversation its sequence holds (rule 1
/// of [`choose_sequence`]): the reused prefix is at least half of what the
/// sequence held. Anything else starts a new conversation there.
pub fn continues(choice: Choice, cached: usize) -> bool {
    choice.reuse > 0 && choice.reuse * 2 >= cached
}

/// A finished conversation kept outside the pool: its tokens and its
/// sequence state as llama.cpp saved it.
#[derive(Debug)]
pub struct Spilled<T, S> {
    pub tokens: Vec<T>,
    /// Leading tokens whose K/V is exactly what a fresh prefill gives.
    pub exact: usize,
    /// The lowest position its sliding-window layers still held.
    pub pos_min: i32,
    pub state: S,
    /// Bytes of `state`.
    pub bytes: u64,
    /// Use counter of its last use (higher = later).
    pub last_used: u64,
}

/// The RAM tier: conversations that left the pool (its cells were needed,
/// or a new conversation started and the pool was compacted), kept as
/// saved state up to a byte budget, least recently used dropped first.
/// Keeping finished conversations out of the pool keeps its used cells
/// together at its start: llama.cpp's attention reads every cell up to the
/// highest one in use, whichever sequence holds it.
#[derive(Debug)]
pub struct RamTier<T, S> {
    budget: u64,
    bytes: u64,
    entries: Vec<Spilled<T, S>>,
}

impl<T: PartialEq, S> RamTier<T, S> {
    /// A tier of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: u64) -> Self {
        RamTier {
            budget,
            bytes: 0,
            entries: Vec::new(),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of saved state held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps `entry`, dropping the least recently used entries while the
    /// tier is over its budget. An entry larger than the whole budget is
    /// not kept. Returns how many entries were dropped (`entry` included
    /// when it was not kept).
    pub fn put(&mut self, entry: Spilled<T, S>) -> usize {
        if entry.bytes > self.budget || entry.tokens.is_empty() {
            return 1;
        }
        self.bytes += entry.bytes;
        self.entries.push(entry);
        let mut dropped = 0;
        while self.bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .expect("over budget means not empty");
            let gone = self.entries.swap_remove(oldest);
            self.bytes -= gone.bytes;
            dropped += 1;
        }
        dropped
    }

    /// The entries, in no particular order (to write them to the disk tier).
    pub fn entries(&self) -> &[Spilled<T, S>] {
        &self.entries
    }

    /// What [`RamTier::take_best`] would reuse, leaving the entry in.
    pub fn best_reuse(&self, prompt: &[T], window: Option<u32>, at_least: usize) -> Option<usize> {
        self.best(prompt, window, at_least).map(|(_, reuse)| reuse)
    }

    /// Takes out the entry `prompt` continues best, if one lets it reuse
    /// more than `at_least` tokens and at least half of what the entry
    /// holds (as [`choose_sequence`] judges a continuation); with the
    /// prompt tokens it may reuse.
    pub fn take_best(
        &mut self,
        prompt: &[T],
        window: Option<u32>,
        at_least: usize,
    ) -> Option<(Spilled<T, S>, usize)> {
        let (i, reuse) = self.best(prompt, window, at_least)?;
        let entry = self.entries.swap_remove(i);
        self.bytes -= entry.bytes;
        Some((entry, reuse))
    }

    fn best(&self, prompt: &[T], window: Option<u32>, at_least: usize) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let reuse = reusable_prefix(&e.tokens, e.exact, prompt, window, e.pos_min);
                (i, reuse, e)
            })
            .filter(|&(_, reuse, e)| reuse > at_least && reuse * 2 >= e.tokens.len())
            .max_by_key(|&(_, reuse, e)| (reuse, e.last_used))
            .map(|(i, reuse, _)| (i, reuse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_ends_at_the_last_control_token() {
        // 1 and 3 are control tokens: `<|im_end|> \n <|im_start|> user \n`.
        let control = |t: u32| t == 1 || t == 3;
        assert_eq!(follow_up_len(&[1, 2, 3, 4, 5], control), 3);
        assert_eq!(follow_up_len(&[1], control), 1);
        assert_eq!(follow_up_len(&[2, 3, 4], control), 2);
        // Without a control token nothing is certain to come.
        assert_eq!(follow_up_len(&[2, 4], control), 0);
        assert_eq!(follow_up_len::<u32>(&[], control), 0);
    }

    fn cand(seq: usize, cached: usize, reusable: usize, last_used: u64) -> Candidate {
        Candidate {
            seq,
            cached,
            reusable,
            last_used,
        }
    }

    fn held(seq: usize, cells: usize, last_used: u64) -> Held {
        Held {
            seq,
            cells,
            last_used,
        }
    }

    #[test]
    fn cells_round_up_to_llama_cpps_step() {
        assert_eq!(round_cells(0), 256);
        assert_eq!(round_cells(1), 256);
        assert_eq!(round_cells(256), 256);
        assert_eq!(round_cells(257), 512);
        assert_eq!(round_cells(2048), 2048);
        assert_eq!(round_cells(u32::MAX), u32::MAX / 256 * 256);
    }

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix::<i32>(&[], &[1]), 0);
        assert_eq!(common_prefix(&[9], &[1]), 0);
    }

    #[test]
    fn reuse_leaves_one_prompt_token_to_decode() {
        // The same prompt again: all but its last token come from the cache.
        assert_eq!(reusable_prefix(&[1, 2, 3], 3, &[1, 2, 3], None, 0), 2);
        // A longer prompt that extends the cache reuses all of it.
        assert_eq!(reusable_prefix(&[1, 2, 3], 3, &[1, 2, 3, 4, 5], None, 0), 3);
        // A one-token prompt reuses nothing.
        assert_eq!(reusable_prefix(&[1, 2, 3], 3, &[1], None, 0), 0);
        assert_eq!(reusable_prefix::<i32>(&[1, 2, 3], 3, &[], None, 0), 0);
    }

    #[test]
    fn reuse_stops_where_the_cache_stops_being_exact() {
        // After a context shift only the kept tokens are as a fresh
        // prefill would make them.
        assert_eq!(
            reusable_prefix(&[1, 2, 3, 4], 2, &[1, 2, 3, 4, 5], None, 0),
            2
        );
        assert_eq!(
            reusable_prefix(&[1, 2, 3, 4], 0, &[1, 2, 3, 4, 5], None, 0),
            0
        );
    }

    #[test]
    fn sliding_window_reuse_needs_the_window_before_the_prefix() {
        let cached: Vec<i32> = (0..1000).collect();
        let mut prompt = cached.clone();
        prompt.push(-1);
        // Window 512: continuing at 1000 needs positions from 488 on.
        assert_eq!(
            reusable_prefix(&cached, 1000, &prompt, Some(512), 488),
            1000
        );
        assert_eq!(reusable_prefix(&cached, 1000, &prompt, Some(512), 489), 0);
        // Diverging at 600 needs positions from 88 on: gone at pos_min 300.
        let mut early = cached[..600].to_vec();
        early.push(-1);
        assert_eq!(reusable_prefix(&cached, 1000, &early, Some(512), 300), 0);
        assert_eq!(reusable_prefix(&cached, 1000, &early, Some(512), 88), 600);
        // Inside the first window every position from 0 is needed.
        let mut short = cached[..100].to_vec();
        short.push(-1);
        assert_eq!(reusable_prefix(&cached, 1000, &short, Some(512), 0), 100);
        assert_eq!(reusable_prefix(&cached, 1000, &short, Some(512), 1), 0);
        // An empty sequence (pos_min -1) has nothing to give.
        assert_eq!(reusable_prefix(&cached, 1000, &prompt, Some(512), -1), 0);
    }

    #[test]
    fn a_continued_conversation_goes_back_to_its_sequence() {
        let c = choose_sequence(&[cand(0, 0, 0, 0), cand(1, 100, 98, 3), cand(2, 50, 0, 9)]);
        assert_eq!(c, Some(Choice { seq: 1, reuse: 98 }));
    }

    #[test]
    fn the_longest_continuation_wins_then_the_most_recent() {
        let c = choose_sequence(&[
            cand(0, 100, 60, 1),
            cand(1, 100, 90, 2),
            cand(2, 100, 90, 5),
        ]);
        assert_eq!(c, Some(Choice { seq: 2, reuse: 90 }));
    }

    #[test]
    fn a_shared_header_does_not_take_another_conversations_sequence() {
        // 30 shared tokens of a 400-token conversation: an empty sequence
        // is better, so that conversation keeps its cache.
        let c = choose_sequence(&[cand(0, 400, 30, 9), cand(1, 0, 0, 0)]);
        assert_eq!(c, Some(Choice { seq: 1, reuse: 0 }));
    }

    #[test]
    fn without_an_empty_sequence_the_least_recently_used_is_taken() {
        let c = choose_sequence(&[cand(0, 400, 30, 9), cand(1, 300, 0, 2), cand(2, 500, 30, 4)]);
        assert_eq!(c, Some(Choice { seq: 1, reuse: 0 }));
        // ... keeping whatever prefix it shares.
        let c = choose_sequence(&[cand(0, 400, 30, 1), cand(1, 300, 0, 2)]);
        assert_eq!(c, Some(Choice { seq: 0, reuse: 30 }));
    }

    #[test]
    fn no_free_sequence_no_choice() {
        assert_eq!(choose_sequence(&[]), None);
    }

    #[test]
    fn a_shift_keeps_n_keep_and_drops_half_of_the_rest() {
        assert_eq!(
            context_shift(100, 20),
            Some(Shift {
                keep: 20,
                discard: 40
            })
        );
        assert_eq!(
            context_shift(101, 0),
            Some(Shift {
                keep: 0,
                discard: 50
            })
        );
        // n_keep past the end keeps everything: nothing to shift.
        assert_eq!(context_shift(10, 20), None);
        assert_eq!(context_shift(21, 20), None);
        assert_eq!(
            context_shift(22, 20),
            Some(Shift {
                keep: 20,
                discard: 1
            })
        );
    }

    #[test]
    fn eviction_takes_the_least_recently_used_until_there_is_room() {
        let cached = [held(0, 100, 5), held(1, 50, 1), held(2, 200, 3)];
        assert_eq!(evict_for_room(10, 20, &cached), Vec::<usize>::new());
        assert_eq!(evict_for_room(60, 20, &cached), vec![1]);
        assert_eq!(evict_for_room(100, 20, &cached), vec![1, 2]);
        assert_eq!(evict_for_room(10_000, 20, &cached), vec![1, 2, 0]);
    }

    #[test]
    fn a_shrink_keeps_live_sequences_and_the_most_recent_cached_that_fit() {
        let live = [held(0, 300, 9)];
        let cached = [held(1, 100, 5), held(2, 150, 7), held(3, 90, 1)];
        let plan = plan_resize(512, 4096, &live, &cached);
        assert_eq!(plan.cells, 512);
        // 300 live + 150 (most recent) = 450; 100 more would be 550.
        assert_eq!(plan.keep, vec![2]);
        assert_eq!(plan.drop, vec![1, 3]);
    }

    #[test]
    fn a_shrink_never_goes_below_the_live_sequences() {
        let live = [held(0, 300, 9), held(1, 255, 8)];
        let plan = plan_resize(0, 4096, &live, &[held(2, 10, 1)]);
        // 555 cells + one each for the next token, rounded up.
        assert_eq!(plan.cells, 768);
        assert_eq!(plan.keep, vec![2]);
        // Idle: everything cached may go.
        let plan = plan_resize(0, 4096, &[], &[held(2, 10, 1)]);
        assert_eq!(plan.cells, 256);
        assert_eq!(plan.keep, vec![2]);
        let plan = plan_resize(0, 4096, &[], &[held(2, 300, 1)]);
        assert_eq!(plan.drop, vec![2]);
    }

    #[test]
    fn a_resize_is_capped_at_the_pool_max() {
        let plan = plan_resize(100_000, 4096, &[], &[held(1, 100, 1)]);
        assert_eq!(plan.cells, 4096);
        assert_eq!(plan.keep, vec![1]);
    }

    #[test]
    fn growth_is_half_again_or_the_shortage() {
        assert_eq!(suggest_growth(2048, 2048, 1, 32768), 3072);
        assert_eq!(suggest_growth(2048, 2000, 4000, 32768), 6144);
        assert_eq!(suggest_growth(256, 256, 1, 32768), 512);
        assert_eq!(suggest_growth(8192, 8192, 10, 9000), 9216);
        assert_eq!(suggest_growth(8192, 8192, 10, 8192), 8192);
    }

    fn spilled(tokens: &[u32], bytes: u64, last_used: u64) -> Spilled<u32, ()> {
        Spilled {
            tokens: tokens.to_vec(),
            exact: tokens.len(),
            pos_min: 0,
            state: (),
            bytes,
            last_used,
        }
    }

    #[test]
    fn the_ram_tier_keeps_its_budget_dropping_the_least_recently_used() {
        let mut tier = RamTier::new(100);
        assert_eq!(tier.put(spilled(&[1, 2], 40, 1)), 0);
        assert_eq!(tier.put(spilled(&[3, 4], 40, 2)), 0);
        // 120 > 100: the oldest goes.
        assert_eq!(tier.put(spilled(&[5, 6], 40, 3)), 1);
        assert_eq!((tier.len(), tier.bytes()), (2, 80));
        assert!(tier.take_best(&[1, 2, 9], None, 0).is_none());
        // Larger than the whole budget: not kept, nothing else dropped.
        assert_eq!(tier.put(spilled(&[7], 101, 4)), 1);
        assert_eq!((tier.len(), tier.bytes()), (2, 80));
        // A budget of 0 keeps nothing.
        let mut none = RamTier::new(0);
        assert_eq!(none.put(spilled(&[1], 1, 1)), 1);
        assert!(none.is_empty());
    }

    #[test]
    fn the_ram_tier_gives_back_the_conversation_a_prompt_continues() {
        let mut tier = RamTier::new(1000);
        tier.put(spilled(&[1, 2, 3, 4, 5], 10, 1));
        tier.put(spilled(&[1, 2, 7, 8, 9, 10], 10, 2));
        // Shares only [1, 2] with each: not half of either, so no match.
        assert!(tier.take_best(&[1, 2, 5, 6], None, 0).is_none());
        // Continues the first: 5 tokens reused (one prompt token is left).
        assert_eq!(tier.best_reuse(&[1, 2, 3, 4, 5, 6], None, 0), Some(5));
        assert_eq!(tier.len(), 2);
        let (e, reuse) = tier.take_best(&[1, 2, 3, 4, 5, 6], None, 0).unwrap();
        assert_eq!((e.tokens, reuse), (vec![1, 2, 3, 4, 5], 5));
        assert_eq!((tier.len(), tier.bytes()), (1, 10));
        // Not better than what the pool already offers: stays.
        assert!(tier.take_best(&[1, 2, 7, 8, 9, 10, 11], None, 6).is_none());
        assert_eq!(tier.len(), 1);
    }

    #[test]
    fn a_choice_continues_when_it_reuses_half_of_its_sequence() {
        let c = |reuse| Choice { seq: 0, reuse };
        assert!(continues(c(5), 10));
        assert!(!continues(c(4), 10));
        assert!(!continues(c(0), 0));
    }
}
