//! Text helpers for messages.

/// At most `max` bytes of `s`, cut at a character boundary, with `…` if
/// cut: an error quotes what it was given, not a megabyte of it.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn cuts_at_a_character_boundary_and_says_so() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(shorten("aé", 2), "a…");
    }
}
