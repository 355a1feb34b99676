//! Turns gjson path text into [`Step`]s, once, at config load.
//!
//! Everything spillway does not evaluate (JSON literals `!…`, JSON lines
//! `..`, the `@pretty`/`@dig`/`@group` modifiers, modifier options other
//! than `@flatten:{"deep":…}`) is a [`PathError`] naming the character where
//! it starts, so a path is refused at load instead of never matching.

use super::wildcard::Pattern;
use super::PathError;

/// One component of a path, applied to the value the previous one produced.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    /// An object key (escapes removed); all digits also index an array.
    Key {
        name: String,
        index: Option<usize>,
    },
    /// A key with `*` / `?`: the first key of the object that matches.
    Wildcard(Pattern),
    /// `#`: the length of an array.
    Count,
    /// `#.rest` or `#(…)#.rest`: `rest` applied to every element of an
    /// array; the elements where it exists, as a new array.
    Each(Vec<Step>),
    /// `#(…)` (first matching element) or `#(…)#` (all, as an array).
    Query {
        query: Query,
        all: bool,
    },
    /// `[a,b]` or `{a,"name":b}`: a new array or object of the results.
    Multi {
        object: bool,
        items: Vec<(String, Vec<Step>)>,
    },
    Modifier(Modifier),
}

/// `#(path op value)`: which elements of an array match.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Query {
    /// Applied to each element; empty means the element itself.
    pub lhs: Vec<Step>,
    /// `None`: the element only has to have `lhs`.
    pub op: Option<QueryOp>,
    /// The right-hand side as text (quotes removed, escapes resolved).
    pub text: String,
    /// The right-hand side as a number (0 when it is not one, as gjson).
    pub number: f64,
    /// `~true`, `~false`, `~null`, `~*`: compare the truthiness of the value.
    pub tilde: Option<Tilde>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueryOp {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Like,
    NotLike,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tilde {
    True,
    False,
    Null,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Modifier {
    This,
    Reverse,
    Keys,
    Values,
    Flatten { deep: bool },
    Join,
    ToStr,
    FromStr,
}

/// Modifiers gjson has and spillway refuses, with the reason.
const REFUSED_MODIFIERS: &[(&str, &str)] = &[
    (
        "pretty",
        "its output depends on whitespace, which parsed event data does not keep",
    ),
    ("dig", "not supported yet"),
    ("group", "not supported yet"),
];

pub(super) fn parse(text: &str) -> Result<Vec<Step>, PathError> {
    if text.is_empty() {
        return Err(PathError::new(0, "the path is empty"));
    }
    if text.starts_with("..") {
        return Err(PathError::new(
            0,
            "JSON-lines paths (`..`) are not supported",
        ));
    }
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    let steps = parser.steps(false)?;
    if parser.at < text.len() {
        return Err(parser.error(format!(
            "unexpected {:?}",
            char::from(text.as_bytes()[parser.at])
        )));
    }
    Ok(steps)
}

struct Parser<'t> {
    text: &'t [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.at + offset).copied()
    }

    fn error(&self, message: impl Into<String>) -> PathError {
        PathError::new(self.at, message)
    }

    /// Components separated by `.` or `|` up to the end, or (inside
    /// `#.rest`) up to a `|`, which ends the per-element part.
    fn steps(&mut self, inside_each: bool) -> Result<Vec<Step>, PathError> {
        let mut steps = Vec::new();
        loop {
            let (step, projects) = self.component()?;
            steps.push(step);
            match self.peek() {
                None => return Ok(steps),
                Some(b'|') if inside_each => return Ok(steps),
                Some(b'|') => self.at += 1,
                Some(b'.') if projects => {
                    self.at += 1;
                    // `#.rest` walks the array itself: no count.
                    if steps.last() == Some(&Step::Count) {
                        steps.pop();
                    }
                    let rest = self.steps(true)?;
                    steps.push(Step::Each(rest));
                    match self.peek() {
                        None => return Ok(steps),
                        Some(b'|') if inside_each => return Ok(steps),
                        _ => self.at += 1,
                    }
                }
                Some(b'.') => self.at += 1,
                Some(other) => {
                    return Err(self.error(format!("unexpected {:?}", char::from(other))))
                }
            }
            if self.peek().is_none() {
                return Err(self.error("the path ends with a separator"));
            }
        }
    }

    /// One component; `true` when a following `.` applies the rest to each
    /// element (`#`, `#(…)#`).
    fn component(&mut self) -> Result<(Step, bool), PathError> {
        match self.peek() {
            Some(b'#') => self.array_component(),
            Some(b'@') if self.peek_at(1).is_some_and(|c| c.is_ascii_alphabetic()) => {
                self.modifier_or_key()
            }
            Some(open @ (b'[' | b'{')) => Ok((self.multipath(open == b'{')?, false)),
            Some(b'!') => Err(self.error("JSON literals (`!…`) are not supported")),
            Some(b'.' | b'|') | None => Err(self.error("empty key")),
            Some(_) => Ok((self.key()?, false)),
        }
    }

    fn array_component(&mut self) -> Result<(Step, bool), PathError> {
        let start = self.at;
        self.at += 1;
        match self.peek() {
            None | Some(b'.' | b'|') => Ok((Step::Count, true)),
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                let inner = self.enclosed(close)?;
                let query = parse_query(inner, start + 2)?;
                let all = self.peek() == Some(b'#');
                if all {
                    self.at += 1;
                }
                Ok((Step::Query { query, all }, all))
            }
            Some(_) => Err(PathError::new(
                start,
                "`#` must be alone (`items.#`), start `#.key`, or a query `#(…)`",
            )),
        }
    }

    fn modifier_or_key(&mut self) -> Result<(Step, bool), PathError> {
        let start = self.at;
        let name_end = self.text[start + 1..]
            .iter()
            .position(|c| matches!(c, b'.' | b'|' | b':'))
            .map_or(self.text.len(), |p| start + 1 + p);
        let name = String::from_utf8_lossy(&self.text[start + 1..name_end]).into_owned();
        let modifier = match name.as_str() {
            "this" | "valid" | "ugly" => Modifier::This,
            "reverse" => Modifier::Reverse,
            "keys" => Modifier::Keys,
            "values" => Modifier::Values,
            "flatten" => Modifier::Flatten { deep: false },
            "join" => Modifier::Join,
            "tostr" => Modifier::ToStr,
            "fromstr" => Modifier::FromStr,
            _ => {
                if let Some((_, why)) = REFUSED_MODIFIERS.iter().find(|(m, _)| *m == name) {
                    return Err(PathError::new(
                        start,
                        format!("modifier @{name} is not supported: {why}"),
                    ));
                }
                // Not a modifier gjson knows: a key such as `@timestamp`.
                return Ok((self.key()?, false));
            }
        };
        self.at = name_end;
        if self.peek() != Some(b':') {
            return Ok((Step::Modifier(modifier), false));
        }
        self.at += 1;
        let arg_start = self.at;
        let arg = self.modifier_argument()?;
        let deep = match (modifier, serde_json::from_str::<serde_json::Value>(arg)) {
            (Modifier::Flatten { .. }, Ok(serde_json::Value::Object(options)))
                if options.keys().all(|k| k == "deep") =>
            {
                options.get("deep").and_then(serde_json::Value::as_bool)
            }
            _ => None,
        };
        match deep {
            Some(deep) => Ok((Step::Modifier(Modifier::Flatten { deep }), false)),
            None => Err(PathError::new(
                arg_start,
                format!(
                    "option {arg:?} of @{name} is not supported (only @flatten:{{\"deep\":true}})"
                ),
            )),
        }
    }

    /// A modifier's `:argument`: a JSON object/array/string, or characters
    /// up to the next separator.
    fn modifier_argument(&mut self) -> Result<&str, PathError> {
        let start = self.at;
        match self.peek() {
            Some(b'{') => {
                self.enclosed(b'}')?;
            }
            Some(b'[') => {
                self.enclosed(b']')?;
            }
            _ => {
                while self.peek().is_some_and(|c| c != b'.' && c != b'|') {
                    self.at += 1;
                }
            }
        }
        std::str::from_utf8(&self.text[start..self.at]).map_err(|_| self.error("not UTF-8"))
    }

    /// From an opening bracket at `self.at` to its `close`, skipping
    /// nested brackets and quoted strings; returns what is between them and
    /// leaves `self.at` after `close`.
    fn enclosed(&mut self, close: u8) -> Result<&str, PathError> {
        let open_at = self.at;
        let inner_start = self.at + 1;
        let end = matching_close(self.text, open_at).ok_or_else(|| {
            PathError::new(
                open_at,
                format!(
                    "{:?} is never closed by {:?}",
                    char::from(self.text[open_at]),
                    char::from(close)
                ),
            )
        })?;
        if self.text[end] != close {
            return Err(PathError::new(
                end,
                format!("expected {:?} here", char::from(close)),
            ));
        }
        self.at = end + 1;
        std::str::from_utf8(&self.text[inner_start..end]).map_err(|_| self.error("not UTF-8"))
    }

    fn multipath(&mut self, object: bool) -> Result<Step, PathError> {
        let start = self.at;
        let inner = self.enclosed(if object { b'}' } else { b']' })?;
        let mut items = Vec::new();
        for (offset, item) in split_top_level(inner.as_bytes()) {
            let item_at = start + 1 + offset;
            let text = &inner[offset..offset + item.len()];
            let trimmed_start = text.len() - text.trim_start().len();
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let item_at = item_at + trimmed_start;
            let (name, path, path_at) = match named_item(text) {
                Some((name, path_offset)) => (
                    Some(name),
                    text[path_offset..].trim_start(),
                    item_at + path_offset,
                ),
                None => (None, text, item_at),
            };
            let steps = parse(path).map_err(|e| e.shifted(path_at))?;
            let name = name.unwrap_or_else(|| match steps.last() {
                Some(Step::Key { name, .. }) => name.clone(),
                _ => "_".to_string(),
            });
            items.push((name, steps));
        }
        Ok(Step::Multi { object, items })
    }

    fn key(&mut self) -> Result<Step, PathError> {
        let start = self.at;
        let mut name = Vec::new();
        let mut pattern = Pattern::builder();
        let mut wild = false;
        while let Some(c) = self.peek() {
            match c {
                b'.' | b'|' => break,
                b'\\' => {
                    self.at += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("`\\` at the end of the path"))?;
                    name.push(escaped);
                    pattern.literal(escaped);
                }
                b'*' | b'?' => {
                    wild = true;
                    name.push(c);
                    pattern.wildcard(c);
                }
                _ => {
                    name.push(c);
                    pattern.literal(c);
                }
            }
            self.at += 1;
        }
        if name.is_empty() {
            return Err(PathError::new(start, "empty key"));
        }
        let name = String::from_utf8(name).map_err(|_| PathError::new(start, "not UTF-8"))?;
        if wild {
            return Ok(Step::Wildcard(pattern.build()));
        }
        let index = name
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| name.parse::<usize>().ok())
            .flatten();
        Ok(Step::Key { name, index })
    }
}

/// The index of the `"` closing the string opened at `open` (or the end of
/// `text`), backslash escapes skipped.
fn closing_quote(text: &[u8], open: usize) -> usize {
    let mut at = open + 1;
    while at < text.len() && text[at] != b'"' {
        if text[at] == b'\\' {
            at += 1;
        }
        at += 1;
    }
    at
}

/// The index of the bracket closing the one at `open` (any of `)]}`;
/// the caller checks it is the right kind).
fn matching_close(text: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = open;
    while at < text.len() {
        match text[at] {
            b'\\' => at += 1,
            b'"' => at = closing_quote(text, at),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// The comma-separated parts of a multipath, with their offsets.
fn split_top_level(text: &[u8]) -> Vec<(usize, &[u8])> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'\\' => at += 1,
            b'"' => at = closing_quote(text, at),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                parts.push((start, &text[start..at]));
                start = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
    parts.push((start, &text[start..text.len().min(at)]));
    parts
}

/// `"name":path` → the name and where the path starts.
fn named_item(item: &str) -> Option<(String, usize)> {
    if !item.starts_with('"') {
        return None;
    }
    let mut stream = serde_json::Deserializer::from_str(item).into_iter::<String>();
    let name = stream.next()?.ok()?;
    let after = stream.byte_offset();
    let rest = &item[after..];
    let colon = rest.len() - rest.trim_start().len();
    rest.trim_start()
        .starts_with(':')
        .then_some((name, after + colon + 1))
}

/// The inside of `#(…)`; `at` is where it starts in the whole path.
fn parse_query(inner: &str, at: usize) -> Result<Query, PathError> {
    let bytes = inner.as_bytes();
    let op_at = query_operator_position(bytes);
    let (lhs_text, op, rhs) = match op_at {
        None => (inner, None, ""),
        Some(i) => {
            let rest = &inner[i..];
            let (op, len) = match rest.as_bytes() {
                [b'!', b'=', ..] => (QueryOp::NotEqual, 2),
                [b'!', b'%', ..] => (QueryOp::NotLike, 2),
                [b'<', b'=', ..] => (QueryOp::LessEqual, 2),
                [b'>', b'=', ..] => (QueryOp::GreaterEqual, 2),
                [b'=', b'=', ..] => (QueryOp::Equal, 2),
                [b'<', ..] => (QueryOp::Less, 1),
                [b'>', ..] => (QueryOp::Greater, 1),
                [b'=', ..] => (QueryOp::Equal, 1),
                [b'%', ..] => (QueryOp::Like, 1),
                _ => {
                    return Err(PathError::new(
                        at + i,
                        "unknown query operator (use ==, !=, <, <=, >, >=, % or !%)",
                    ))
                }
            };
            (&inner[..i], Some(op), rest[len..].trim())
        }
    };
    let lhs_trimmed = lhs_text.trim();
    let lhs = if lhs_trimmed.is_empty() {
        Vec::new()
    } else {
        let lhs_at = at + (lhs_text.len() - lhs_text.trim_start().len());
        parse(lhs_trimmed).map_err(|e| e.shifted(lhs_at))?
    };
    if op.is_some() && rhs.is_empty() {
        return Err(PathError::new(
            at + inner.len(),
            "the query has no value after its operator",
        ));
    }
    let (tilde, text) = match rhs.strip_prefix('~') {
        Some(kind) => {
            let tilde = match kind {
                "true" => Tilde::True,
                "false" => Tilde::False,
                "null" => Tilde::Null,
                "*" => Tilde::Exists,
                _ => {
                    return Err(PathError::new(
                        at,
                        format!("~{kind} is not one of ~true, ~false, ~null, ~*"),
                    ))
                }
            };
            (Some(tilde), "true".to_string())
        }
        None => (None, unquote(rhs).map_err(|m| PathError::new(at, m))?),
    };
    let number = text.parse::<f64>().unwrap_or(0.0);
    Ok(Query {
        lhs,
        op,
        text,
        number,
        tilde,
    })
}

/// Where the operator of a query starts: the first `! = < > %` outside
/// quotes and nested brackets.
fn query_operator_position(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 1,
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    if bytes[at] == b'\\' {
                        at += 1;
                    }
                    at += 1;
                }
            }
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            b'!' | b'=' | b'<' | b'>' | b'%' if depth == 0 => return Some(at),
            _ => {}
        }
        at += 1;
    }
    None
}

/// A query value: a JSON string loses its quotes, anything else is kept
/// as written (`5`, `true`, `Murphy`).
fn unquote(text: &str) -> Result<String, String> {
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|e| format!("query value {text} is not a valid JSON string: {e}"))
    } else {
        Ok(text.to_string())
    }
}
