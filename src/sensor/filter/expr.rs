//! Argo `exprs` filters: a boolean expression over named values from the
//! event data (`fields: [{name, path}]`), Argo's govaluate syntax evaluated
//! by `evalexpr`.
//!
//! What carries over from govaluate: `== != < <= > >=`, `&& || !`,
//! arithmetic, parentheses, `"double"` and `'single'` quoted strings; every
//! number is a float, as in govaluate, so `total == 10` holds for `10` and
//! `10.0`. Not available (a config error at load, never a surprise at run
//! time): `=~`/`!~`, `in`, `?:`, `??` and bit operators. Expressions are
//! parsed once at start-up.
//!
//! Per event (as Argo): a field whose path is missing is an error; an
//! expression without fields is skipped; an expression that fails to
//! evaluate, or gives something other than a bool, is an error. Expressions
//! combine with `exprLogicalOperator` (`and` by default); under `or` an
//! error only counts when no expression passed.

use super::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::{ExprFilter as ExprConfig, LogicalOperator};
use crate::json_path;
use evalexpr::{ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node, Operator};
use serde_json::Value;

type ExprValue = evalexpr::Value<DefaultNumericTypes>;

/// A dependency's `exprs` filters, parsed.
#[derive(Debug)]
pub struct ExprFilters {
    operator: LogicalOperator,
    exprs: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    text: String,
    tree: Node<DefaultNumericTypes>,
    /// `(name, path)` pairs.
    fields: Vec<(String, json_path::Path)>,
}

impl ExprFilters {
    pub fn compile(exprs: &[ExprConfig], operator: LogicalOperator) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut compiled = Vec::new();
        for expr in exprs {
            let mut fields = Vec::new();
            for field in &expr.fields {
                if field.name.value.trim().is_empty() {
                    problems.push((field.name.pos, "field name must not be empty".to_string()));
                }
                if field.path.value.trim().is_empty() {
                    problems.push((field.path.pos, "field path must not be empty".to_string()));
                    continue;
                }
                match json_path::Path::parse(&field.path.value) {
                    Ok(path) => fields.push((field.name.value.clone(), path)),
                    Err(err) => problems.push((
                        field.path.pos,
                        format!("field path {:?}: {err}", field.path.value),
                    )),
                }
            }
            match parse(&expr.expr.value) {
                Ok(tree) => compiled.push(Compiled {
                    text: expr.expr.value.clone(),
                    tree,
                    fields,
                }),
                Err(message) => problems.push((expr.expr.pos, message)),
            }
        }
        if problems.is_empty() {
            Ok(ExprFilters {
                operator,
                exprs: compiled,
            })
        } else {
            Err(problems)
        }
    }

    /// Whether `data` passes the expressions.
    pub fn evaluate(&self, data: &Value) -> Result<bool, FilterError> {
        // An expression without fields is skipped, as in Argo.
        let verdicts = self
            .exprs
            .iter()
            .filter_map(|e| e.evaluate(data).transpose());
        super::combine(self.operator, verdicts).unwrap_or(Ok(self.operator == LogicalOperator::And))
    }
}

impl Compiled {
    /// `None` when the expression has no fields (skipped).
    fn evaluate(&self, data: &Value) -> Result<Option<bool>, FilterError> {
        if self.fields.is_empty() {
            return Ok(None);
        }
        let mut context = HashMapContext::<DefaultNumericTypes>::new();
        for (name, path) in &self.fields {
            let value = path.get(data).ok_or_else(|| FilterError::MissingPath {
                filter: "expr",
                path: path.to_string(),
            })?;
            context
                .set_value(name.clone(), to_expr_value(&value))
                .map_err(|e| FilterError::Expr(format!("{}: {e}", self.text)))?;
        }
        match self.tree.eval_with_context(&context) {
            Ok(ExprValue::Boolean(pass)) => Ok(Some(pass)),
            Ok(other) => Err(FilterError::Expr(format!(
                "{:?} gave {other}, not a bool",
                self.text
            ))),
            Err(e) => Err(FilterError::Expr(format!("{:?}: {e}", self.text))),
        }
    }
}

/// Parses govaluate-style `text`: single quotes become double quotes and
/// every integer literal a float (govaluate numbers are all float64).
fn parse(text: &str) -> Result<Node<DefaultNumericTypes>, String> {
    for unsupported in ["=~", "!~", "??", "?", " in ", "<<", ">>", "|", "&", "~"] {
        let bare = strip_strings(text);
        let found = match unsupported {
            "|" => bare.replace("||", "").contains('|'),
            "&" => bare.replace("&&", "").contains('&'),
            "~" => bare.contains('~'),
            other => bare.contains(other),
        };
        if found {
            return Err(format!(
                "expression {text:?}: the govaluate operator {:?} is not supported",
                unsupported.trim()
            ));
        }
    }
    let mut tree = evalexpr::build_operator_tree::<DefaultNumericTypes>(&double_quoted(text))
        .map_err(|e| format!("expression {text:?} does not parse: {e}"))?;
    ints_to_floats(&mut tree);
    Ok(tree)
}

fn ints_to_floats(node: &mut Node<DefaultNumericTypes>) {
    if let Operator::Const { value } = node.operator_mut() {
        if let ExprValue::Int(i) = value {
            *value = ExprValue::Float(*i as f64);
        }
    }
    for child in node.children_mut() {
        ints_to_floats(child);
    }
}

/// `text` with the contents of string literals removed (for operator checks).
fn strip_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// Rewrites `'single quoted'` strings as `"double quoted"` (govaluate has
/// both, evalexpr only the latter).
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    out.push('"');
                } else {
                    out.push(c);
                }
            }
            Some(q) => {
                if escaped {
                    escaped = false;
                    out.push(c);
                } else if c == '\\' {
                    escaped = true;
                    out.push(c);
                } else if c == q {
                    quote = None;
                    out.push('"');
                } else if c == '"' {
                    // A double quote inside single quotes.
                    out.push_str("\\\"");
                } else {
                    out.push(c);
                }
            }
        }
    }
    out
}

fn to_expr_value(value: &Value) -> ExprValue {
    match value {
        Value::Null => ExprValue::Empty,
        Value::Bool(b) => ExprValue::Boolean(*b),
        Value::Number(n) => ExprValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => ExprValue::String(s.clone()),
        Value::Array(items) => ExprValue::Tuple(items.iter().map(to_expr_value).collect()),
        Value::Object(_) => ExprValue::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sensor::PayloadField;
    use crate::config::yaml::Pos;
    use crate::config::Spanned;
    use serde_json::json;

    fn expr(text: &str, fields: &[(&str, &str)]) -> ExprConfig {
        let s = |v: &str| Spanned::new(v.to_string(), Pos::default());
        ExprConfig {
            expr: s(text),
            fields: fields
                .iter()
                .map(|(name, path)| PayloadField {
                    name: s(name),
                    path: s(path),
                })
                .collect(),
        }
    }

    #[test]
    fn table() {
        let data =
            json!({"a": "b", "c": 10, "d": 10.5, "e": false, "name": "it's", "items": [1, 2]});
        // (expr, fields, expected: Some(pass) / None = error)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<bool>);
        let cases: Vec<Case> = vec![
            (
                r#"a == "b" && c > 5"#,
                vec![("a", "a"), ("c", "c")],
                Some(true),
            ),
            (
                r#"a == "b" && c > 10"#,
                vec![("a", "a"), ("c", "c")],
                Some(false),
            ),
            (
                r#"a == "x" || c != 11"#,
                vec![("a", "a"), ("c", "c")],
                Some(true),
            ),
            ("a == 'b'", vec![("a", "a")], Some(true)),
            (r#"name == "it's""#, vec![("name", "name")], Some(true)),
            // Numbers are floats: 10 == 10.0, and mixed arithmetic works.
            ("c == 10.0 && c == 10", vec![("c", "c")], Some(true)),
            (
                "d > c && d - c == 0.5",
                vec![("c", "c"), ("d", "d")],
                Some(true),
            ),
            ("c % 3 == 1", vec![("c", "c")], Some(true)),
            ("e == false", vec![("e", "e")], Some(true)),
            ("!e", vec![("e", "e")], Some(true)),
            // No fields: skipped (passes under `and`), as in Argo.
            ("1 == 2", vec![], Some(true)),
            // Errors: missing path, not a bool, type error at run time.
            ("x == 1", vec![("x", "nope")], None),
            ("c + 1", vec![("c", "c")], None),
            ("a > 1", vec![("a", "a")], None),
        ];
        for (i, (text, fields, expected)) in cases.iter().enumerate() {
            let filters = ExprFilters::compile(&[expr(text, fields)], LogicalOperator::And)
                .unwrap_or_else(|p| panic!("case {i} {text:?} does not compile: {p:?}"));
            let got = filters.evaluate(&data);
            assert_eq!(
                got.as_ref().ok().copied(),
                *expected,
                "case {i}: {text:?} -> {got:?}"
            );
        }
    }

    #[test]
    fn logical_operator_or() {
        let data = json!({"a": 1});
        let pass = expr("a == 1", &[("a", "a")]);
        let fail = expr("a == 2", &[("a", "a")]);
        let broken = expr("z == 2", &[("z", "missing")]);
        let or = |list: &[ExprConfig]| {
            ExprFilters::compile(list, LogicalOperator::Or)
                .expect("compiles")
                .evaluate(&data)
        };
        assert_eq!(or(&[fail.clone(), pass.clone()]).ok(), Some(true));
        assert_eq!(or(&[fail.clone(), fail.clone()]).ok(), Some(false));
        assert_eq!(or(&[broken.clone(), pass]).ok(), Some(true));
        assert!(or(&[broken, fail]).is_err());
    }

    #[test]
    fn unsupported_and_malformed_are_problems() {
        for text in [
            r#"a =~ "x""#,
            "a in (1, 2)",
            "a ? 1 : 2",
            "a & 1",
            "a == (",
            "(a == 1",
            "a >> 2",
        ] {
            let result = ExprFilters::compile(&[expr(text, &[("a", "a")])], LogicalOperator::And);
            assert!(result.is_err(), "{text:?} should not compile");
        }
        // Operators inside strings are only text.
        assert!(ExprFilters::compile(
            &[expr(r#"a == "x in y ? | ~""#, &[("a", "a")])],
            LogicalOperator::And
        )
        .is_ok());
    }
}
