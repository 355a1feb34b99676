//! A worst-case bound on the work of one Lua pattern call, checked before
//! the C matcher starts, because Lua's instruction hook does not run inside
//! `string.find`, `match`, `gmatch` and `gsub`: an evaluation's deadline
//! cannot stop them.
//!
//! Lua patterns have no alternation, so their backtracking is bounded by
//! the shape of the pattern: at each start position, an item repeated with
//! `*`, `+` or `-` can take any of `n + 1` lengths (n = subject length), `?`
//! one of two, a `%b` scan or a `%1` back-reference compares up to `n`
//! bytes. The product of those, times the start positions (one when the
//! pattern is anchored with `^`, `n + 1` otherwise), bounds the steps. It is
//! pessimistic: `("a*"):rep(12) .. "b"` on 200 000 `a`s really does take
//! about that long, while `%s+` on ordinary text finishes far sooner; a
//! refused call is an error on that one event, with a message saying what
//! to change.

/// Most worst-case matching steps one pattern call may need. About 0.3 s of
/// C matching on the project's machine at the measured ≈ 3 ns per step, so
/// a call that passes the check comes back soon after an evaluation's
/// deadline even in its worst case.
pub const PATTERN_STEP_LIMIT: f64 = 1e8;

/// The worst-case steps of matching `pattern` in a subject of
/// `subject_len` bytes; `anchorable` is false for `gmatch`, where `^` does
/// not anchor. Malformed patterns are estimated as far as they parse (the
/// matcher itself reports them).
pub fn worst_case_steps(pattern: &[u8], subject_len: usize, anchorable: bool) -> f64 {
    let lengths = subject_len as f64 + 1.0;
    let mut at = 0;
    let mut steps = lengths;
    if anchorable && pattern.first() == Some(&b'^') {
        steps = 1.0;
        at = 1;
    }
    while at < pattern.len() {
        match pattern[at] {
            b'(' | b')' => at += 1,
            b'%' => match pattern.get(at + 1) {
                Some(b'b') => {
                    steps *= lengths;
                    at += 4;
                }
                Some(b'f') => at = after_set(pattern, at + 2),
                Some(digit) if digit.is_ascii_digit() => {
                    steps *= lengths;
                    at += 2;
                }
                _ => at = quantified(pattern, at + 2, lengths, &mut steps),
            },
            b'[' => at = quantified(pattern, after_set(pattern, at), lengths, &mut steps),
            _ => at = quantified(pattern, at + 1, lengths, &mut steps),
        }
    }
    steps
}

/// Applies the quantifier (if any) at `at`, after a single-character item;
/// returns where the next item starts.
fn quantified(pattern: &[u8], at: usize, lengths: f64, steps: &mut f64) -> usize {
    match pattern.get(at) {
        Some(b'*' | b'+' | b'-') => {
            *steps *= lengths;
            at + 1
        }
        Some(b'?') => {
            *steps *= 2.0;
            at + 1
        }
        _ => at,
    }
}

/// Where the item after the set `[...]` starting at `at` begins (Lua's
/// rules: `^` first negates, a `]` right after `[` or `[^` is a member, `%`
/// escapes the next byte).
fn after_set(pattern: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    if pattern.get(i) == Some(&b'^') {
        i += 1;
    }
    if pattern.get(i) == Some(&b']') {
        i += 1;
    }
    while i < pattern.len() {
        match pattern[i] {
            b'%' => i += 2,
            b']' => return i + 1,
            _ => i += 1,
        }
    }
    pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_table() {
        // (pattern, subject length, anchorable, expected steps)
        let cases: [(&str, usize, bool, f64); 12] = [
            ("abc", 9, true, 10.0),
            ("^abc", 9, true, 1.0),
            ("^abc", 9, false, 10.0),
            ("a*b", 9, true, 100.0),
            ("^a*a*b", 9, true, 100.0),
            ("%s+", 99, true, 10_000.0),
            ("[%]*]*x", 9, true, 100.0),
            ("[^]]-x", 9, true, 100.0),
            ("a?b?", 9, true, 40.0),
            ("%bxyz*", 9, true, 1000.0),
            ("%f[%w]%w+", 9, true, 100.0),
            ("(a)%1", 9, true, 100.0),
        ];
        for (pattern, len, anchorable, expected) in cases {
            assert_eq!(
                worst_case_steps(pattern.as_bytes(), len, anchorable),
                expected,
                "{pattern} on {len} bytes"
            );
        }
    }

    #[test]
    fn the_backtracking_bomb_is_over_the_limit_and_plain_searches_are_not() {
        let bomb = format!("{}b", "a*".repeat(12));
        assert!(worst_case_steps(bomb.as_bytes(), 200_000, true) > PATTERN_STEP_LIMIT);
        assert!(worst_case_steps(b"order", 1_000_000, true) < PATTERN_STEP_LIMIT);
        assert!(worst_case_steps(b"^(%w+)=(%w+)$", 5_000, true) < PATTERN_STEP_LIMIT);
        // A malformed set is estimated as far as it parses.
        assert!(worst_case_steps(b"[abc", 10, true).is_finite());
    }
}
