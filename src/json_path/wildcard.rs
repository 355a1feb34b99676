//! gjson's key and `%` patterns: `*` matches any run of characters
//! (including none), `?` exactly one; every other character (escaped ones
//! included) matches itself.
//!
//! Matching is the two-pointer algorithm with one backtrack point, so its
//! cost is at most the product of the two lengths — never exponential,
//! whatever pattern an event or a config brings.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyRun,
    AnyOne,
}

/// Collects a pattern byte by byte while a path is parsed.
pub(crate) struct PatternBuilder {
    bytes: Vec<u8>,
    /// Byte offsets of the unescaped `*` and `?`.
    wild: Vec<usize>,
}

impl Pattern {
    pub(crate) fn builder() -> PatternBuilder {
        PatternBuilder {
            bytes: Vec::new(),
            wild: Vec::new(),
        }
    }

    /// A `%` query pattern: `\` escapes the next character.
    pub(crate) fn from_query(text: &str) -> Pattern {
        let mut builder = Pattern::builder();
        let mut bytes = text.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'\\' => {
                    if let Some(escaped) = bytes.next() {
                        builder.literal(escaped);
                    }
                }
                b'*' | b'?' => builder.wildcard(b),
                _ => builder.literal(b),
            }
        }
        builder.build()
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0, 0);
        // Where the last `*` was, and how much of the text it has taken.
        let mut backtrack: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    backtrack = Some((p, t));
                    p += 1;
                }
                Some(Token::AnyOne) => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Literal(c)) if *c == text[t] => {
                    t += 1;
                    p += 1;
                }
                _ => match backtrack {
                    Some((star, taken)) => {
                        p = star + 1;
                        t = taken + 1;
                        backtrack = Some((star, taken + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p.min(self.tokens.len())..]
            .iter()
            .all(|token| *token == Token::AnyRun)
    }
}

impl PatternBuilder {
    pub(crate) fn literal(&mut self, byte: u8) {
        self.bytes.push(byte);
    }

    pub(crate) fn wildcard(&mut self, byte: u8) {
        self.wild.push(self.bytes.len());
        self.bytes.push(byte);
    }

    pub(crate) fn build(self) -> Pattern {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut tokens = Vec::new();
        for (offset, c) in text.char_indices() {
            let token = match c {
                '*' if self.wild.contains(&offset) => Token::AnyRun,
                '?' if self.wild.contains(&offset) => Token::AnyOne,
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Pattern { tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        let cases = [
            ("child*", "children", true),
            ("c?ildren", "children", true),
            ("c?ildren", "cildren", false),
            ("*", "", true),
            ("D*", "Dale", true),
            ("D*", "Roger", false),
            ("*a*", "Sara", true),
            ("*a*", "Jck", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Pattern::from_query(pattern).matches(text),
                expected,
                "{pattern:?} on {text:?}"
            );
        }
    }

    #[test]
    fn a_pathological_pattern_stays_quadratic() {
        let pattern = Pattern::from_query(&"*a".repeat(50));
        let text = "a".repeat(49) + "b";
        assert!(!pattern.matches(&text));
    }
}
