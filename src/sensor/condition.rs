//! Argo trigger `conditions`: a boolean expression over dependency names,
//! e.g. `dep-a && (dep-b || dep-c)`.
//!
//! Grammar (what Argo's govaluate expressions over dependency names use):
//! names, `&&`, `||` and parentheses; `&&` binds tighter than `||`. A name
//! is letters, digits, `-`, `_` and `.` (Argo escapes the `-` in names such
//! as `dep-a` before handing them to govaluate, so they are names here too).
//! Anything else is a [`ConditionError`] with the byte offset it was found
//! at, so validation can point at it.
//!
//! A condition is evaluated against "which dependencies have an event
//! waiting": a name is true when its dependency has one.

use std::collections::BTreeSet;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Dependency(String),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
}

/// Why a condition does not parse; `offset` is a byte offset into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conditions: {message} (at character {})", offset + 1)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

/// Recursion limit for nested parentheses: a config cannot blow the stack.
const MAX_DEPTH: usize = 64;

impl Condition {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let mut parser = Parser {
            tokens: tokenize(text)?,
            at: 0,
            end: text.len(),
        };
        if parser.tokens.is_empty() {
            return Err(ConditionError {
                offset: 0,
                message: "empty expression; name at least one dependency".to_string(),
            });
        }
        let condition = parser.or(0)?;
        match parser.tokens.get(parser.at) {
            None => Ok(condition),
            Some((offset, token)) => Err(ConditionError {
                offset: *offset,
                message: format!(
                    "unexpected {}; expected `&&`, `||` or the end",
                    token.show()
                ),
            }),
        }
    }

    /// Every dependency name the condition mentions.
    pub fn names(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            Condition::Dependency(name) => {
                out.insert(name);
            }
            Condition::And(a, b) | Condition::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }

    /// The value of the condition when `present` says which dependencies
    /// have an event.
    pub fn eval(&self, present: &impl Fn(&str) -> bool) -> bool {
        match self {
            Condition::Dependency(name) => present(name),
            Condition::And(a, b) => a.eval(present) && b.eval(present),
            Condition::Or(a, b) => a.eval(present) || b.eval(present),
        }
    }

    /// Whether the condition can only be true when `name` has an event
    /// (conditions have no negation, so: false with every other name true).
    pub fn requires(&self, name: &str) -> bool {
        !self.eval(&|n| n != name)
    }

    /// Argo's meaning of a trigger without `conditions`: every dependency.
    pub fn all_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Condition> {
        names
            .into_iter()
            .map(|n| Condition::Dependency(n.to_string()))
            .reduce(|a, b| Condition::And(Box::new(a), Box::new(b)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    And,
    Or,
    Open,
    Close,
}

impl Token {
    fn show(&self) -> String {
        match self {
            Token::Name(name) => format!("name {name:?}"),
            Token::And => "`&&`".to_string(),
            Token::Or => "`||`".to_string(),
            Token::Open => "`(`".to_string(),
            Token::Close => "`)`".to_string(),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ConditionError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            '&' | '|' => {
                if chars.next_if(|&(_, next)| next == c).is_none() {
                    return Err(ConditionError {
                        offset,
                        message: format!("`{c}` must be doubled (`{c}{c}`)"),
                    });
                }
                if c == '&' {
                    Token::And
                } else {
                    Token::Or
                }
            }
            c if is_name_char(c) => {
                let mut name = String::from(c);
                while let Some((_, next)) = chars.next_if(|&(_, n)| is_name_char(n)) {
                    name.push(next);
                }
                Token::Name(name)
            }
            other => {
                return Err(ConditionError {
                    offset,
                    message: format!(
                        "unexpected {other:?}; a condition has dependency names, `&&`, `||` and parentheses"
                    ),
                })
            }
        };
        out.push((offset, token));
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    /// Offset reported for "ended too early".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(o, _)| *o)
    }

    fn or(&mut self, depth: usize) -> Result<Condition, ConditionError> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            let right = self.and(depth)?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Condition, ConditionError> {
        let mut left = self.operand(depth)?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            let right = self.operand(depth)?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn operand(&mut self, depth: usize) -> Result<Condition, ConditionError> {
        let offset = self.offset();
        match self.tokens.get(self.at).map(|(_, t)| t.clone()) {
            Some(Token::Name(name)) => {
                self.at += 1;
                Ok(Condition::Dependency(name))
            }
            Some(Token::Open) => {
                if depth >= MAX_DEPTH {
                    return Err(ConditionError {
                        offset,
                        message: format!("parentheses nested deeper than {MAX_DEPTH}"),
                    });
                }
                self.at += 1;
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(ConditionError {
                        offset: self.offset(),
                        message: format!("missing `)` for the `(` at character {}", offset + 1),
                    });
                }
                self.at += 1;
                Ok(inner)
            }
            Some(other) => Err(ConditionError {
                offset,
                message: format!(
                    "unexpected {}; expected a dependency name or `(`",
                    other.show()
                ),
            }),
            None => Err(ConditionError {
                offset,
                message: "the expression ends too early; expected a dependency name or `(`"
                    .to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, present: &[&str]) -> bool {
        Condition::parse(text)
            .expect("parses")
            .eval(&|name| present.contains(&name))
    }

    #[test]
    fn and_binds_tighter_than_or() {
        assert!(eval("a || b && c", &["a"]));
        assert!(!eval("a || b && c", &["b"]));
        assert!(eval("a || b && c", &["b", "c"]));
        assert!(!eval("(a || b) && c", &["a"]));
        assert!(eval("dep-a && (dep-b || dep-c)", &["dep-a", "dep-c"]));
        assert!(!eval("dep-a && (dep-b || dep-c)", &["dep-b", "dep-c"]));
    }

    #[test]
    fn names_are_collected() {
        let condition = Condition::parse("dep-a && (dep_b || x.y) && dep-a").expect("parses");
        assert_eq!(
            condition.names().into_iter().collect::<Vec<_>>(),
            ["dep-a", "dep_b", "x.y"]
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("a & b", 2),
            ("a &&", 4),
            ("(a || b", 7),
            ("a b", 2),
            ("a && !b", 5),
            ("", 0),
            (")", 0),
        ];
        for (text, offset) in cases {
            let err = Condition::parse(text).expect_err(text);
            assert_eq!(err.offset, offset, "{text}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let text = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        let err = Condition::parse(&text).expect_err("too deep");
        assert!(err.message.contains("nested"), "{err}");
    }

    #[test]
    fn requires_means_no_run_without_that_dependency() {
        let cases = [
            ("a && b", "b", true),
            ("a || b", "b", false),
            ("a && (b || c)", "a", true),
            ("a && (b || c)", "b", false),
            ("(a || b) && (a || c)", "a", false),
            ("(a && b) || (a && c)", "a", true),
            ("a", "z", false),
        ];
        for (text, name, want) in cases {
            let condition = Condition::parse(text).expect("parses");
            assert_eq!(condition.requires(name), want, "{text} requires {name}");
        }
    }

    #[test]
    fn all_of_is_every_dependency() {
        let all = Condition::all_of(["a", "b"]).expect("two names");
        assert!(all.eval(&|n| n == "a" || n == "b"));
        assert!(!all.eval(&|n| n == "a"));
        assert_eq!(Condition::all_of([]), None);
    }
}
