//! Stop strings over a token stream.
//!
//! Tokens arrive a piece at a time and a stop string can span several of
//! them, so text that could be the start of a stop string is held back until
//! the next piece decides it. Nothing of a stop string is ever emitted.

/// Decides, piece by piece, what text may be emitted.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with one piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Emit this (possibly empty) text and go on.
    Emit(String),
    /// A stop string was found: emit this text, then end the generation.
    Stop(String),
}

impl StopMatcher {
    /// Empty strings are ignored: they would stop before the first token.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds one decoded piece.
    pub fn push(&mut self, piece: &str) -> StopStep {
        self.held.push_str(piece);
        if self.stops.is_empty() {
            return StopStep::Emit(std::mem::take(&mut self.held));
        }
        // The earliest stop string wins.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopStep::Stop(out);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let out = self.held[..split].to_string();
        self.held.replace_range(..split, "");
        StopStep::Emit(out)
    }

    /// Text still held back when the generation ends for another reason: it
    /// was not a stop string after all, so it belongs to the answer.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of
/// `stop`, cut at a char boundary of `text`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopStep::Emit(t) => out.push_str(&t),
                StopStep::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(run(&["END"], &["abcENDxyz"]), ("abc".into(), true));
    }

    #[test]
    fn stop_spanning_pieces_is_never_emitted() {
        let stops = vec!["</s>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("hello <"), StopStep::Emit("hello ".into()));
        assert_eq!(m.push("/"), StopStep::Emit(String::new()));
        assert_eq!(m.push("s> tail"), StopStep::Stop("".into()));
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        assert_eq!(run(&["\n\n"], &["a\n", "b"]), ("a\nb".into(), false));
        assert_eq!(run(&["\n\n"], &["a\n"]), ("a\n".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["yz", "c"], &["abcxyz"]), ("ab".into(), true));
    }

    #[test]
    fn multibyte_text_is_cut_at_char_boundaries() {
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
    }
}
