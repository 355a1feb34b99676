//! Argo `data` filters: the value at `path` in the event data against a list
//! of `value`s.
//!
//! - `string`: each value is a regular expression matched against the whole
//!   value (anchored; Argo matches anywhere — write `.*x.*` for that). The
//!   value at `path` is taken as plain text (objects and arrays as JSON).
//! - `number`: the value (a JSON number or a numeric string) is compared
//!   with `comparator` (`=` default, `!=`, `<`, `<=`, `>`, `>=`).
//! - `bool`: `true`/`false` (or the strings `"true"`/`"false"`).
//!
//! With several values a filter passes when any value matches; `!=` passes
//! when none is equal. A missing path, or a value of the wrong type, is an
//! error (the event is rejected and counted), as Argo reports it. Filters
//! combine with `dataLogicalOperator` (`and` by default); under `or` an error
//! only counts when no filter passed. Regexes compile once at start-up.

use super::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::{Comparator, DataFilter, JsonType, LogicalOperator};
use crate::json_path;
use regex::Regex;
use serde_json::Value;

/// A dependency's `data` filters, compiled.
#[derive(Debug)]
pub struct DataFilters {
    operator: LogicalOperator,
    filters: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    path: String,
    comparator: Comparator,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Strings(Vec<Regex>),
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
}

impl DataFilters {
    /// Compiles `filters`; every value that cannot be used is a problem.
    pub fn compile(
        filters: &[DataFilter],
        operator: LogicalOperator,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut compiled = Vec::new();
        for filter in filters {
            let comparator = filter
                .comparator
                .as_ref()
                .map_or(Comparator::Equal, |c| c.value);
            let values = &filter.value.value;
            let test = match filter.kind.value {
                JsonType::String => Test::Strings(
                    values
                        .iter()
                        .filter_map(|v| match Regex::new(&format!("^(?:{})$", v.value)) {
                            Ok(re) => Some(re),
                            Err(err) => {
                                problems.push((
                                    v.pos,
                                    format!(
                                        "{:?} is not a valid regular expression: {err}",
                                        v.value
                                    ),
                                ));
                                None
                            }
                        })
                        .collect(),
                ),
                JsonType::Number => Test::Numbers(
                    values
                        .iter()
                        .filter_map(|v| v.value.trim().parse::<f64>().ok())
                        .collect(),
                ),
                JsonType::Bool => Test::Bools(
                    values
                        .iter()
                        .filter_map(|v| match v.value.trim().parse::<bool>() {
                            Ok(b) => Some(b),
                            Err(_) => {
                                problems.push((
                                    v.pos,
                                    format!(
                                        "{:?} is not true or false, but the filter type is bool",
                                        v.value
                                    ),
                                ));
                                None
                            }
                        })
                        .collect(),
                ),
            };
            compiled.push(Compiled {
                path: filter.path.value.clone(),
                comparator,
                test,
            });
        }
        if problems.is_empty() {
            Ok(DataFilters {
                operator,
                filters: compiled,
            })
        } else {
            Err(problems)
        }
    }

    /// Whether `data` passes; `Err` when a filter cannot be evaluated on it.
    pub fn evaluate(&self, data: &Value) -> Result<bool, FilterError> {
        // No filters: `and` of nothing passes, `or` of nothing does not.
        super::combine(self.operator, self.filters.iter().map(|f| f.evaluate(data)))
            .unwrap_or(Ok(self.operator == LogicalOperator::And))
    }
}

impl Compiled {
    fn evaluate(&self, data: &Value) -> Result<bool, FilterError> {
        let actual = json_path::get(data, &self.path).ok_or_else(|| FilterError::MissingPath {
            filter: "data",
            path: self.path.clone(),
        })?;
        let mismatch = |expected: &'static str| FilterError::TypeMismatch {
            path: self.path.clone(),
            expected,
        };
        let not_equal = self.comparator == Comparator::NotEqual;
        match &self.test {
            Test::Strings(patterns) => {
                let actual = json_path::to_plain_string(actual);
                let any = patterns.iter().any(|re| re.is_match(&actual));
                Ok(any != not_equal)
            }
            Test::Bools(wanted) => {
                let actual = match actual {
                    Value::Bool(b) => *b,
                    Value::String(s) => s.trim().parse::<bool>().map_err(|_| mismatch("bool"))?,
                    _ => return Err(mismatch("bool")),
                };
                let any = wanted.contains(&actual);
                Ok(any != not_equal)
            }
            Test::Numbers(wanted) => {
                let actual = match actual {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| mismatch("number"))?;
                let compare = |w: f64| match self.comparator {
                    Comparator::Equal => actual == w,
                    Comparator::NotEqual => actual != w,
                    Comparator::Greater => actual > w,
                    Comparator::GreaterEqual => actual >= w,
                    Comparator::Less => actual < w,
                    Comparator::LessEqual => actual <= w,
                };
                Ok(if not_equal {
                    wanted.iter().all(|w| compare(*w))
                } else {
                    wanted.iter().any(|w| compare(*w))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::Spanned;
    use crate::config::yaml::Pos;
    use serde_json::json;

    fn filter(
        path: &str,
        kind: JsonType,
        values: &[&str],
        comparator: Option<Comparator>,
    ) -> DataFilter {
        DataFilter {
            path: Spanned::new(path.into(), Pos::default()),
            kind: Spanned::new(kind, Pos::default()),
            value: Spanned::new(
                values
                    .iter()
                    .map(|v| Spanned::new(v.to_string(), Pos::default()))
                    .collect(),
                Pos::default(),
            ),
            comparator: comparator.map(|c| Spanned::new(c, Pos::default())),
        }
    }

    fn eval(
        list: &[DataFilter],
        operator: LogicalOperator,
        data: &Value,
    ) -> Result<bool, FilterError> {
        DataFilters::compile(list, operator)
            .expect("filters compile")
            .evaluate(data)
    }

    #[test]
    fn table() {
        use Comparator::*;
        use JsonType::*;
        let data = json!({"body": {"type": "order", "total": 42, "paid": true, "ref": "preorder",
                                   "count": "7", "tags": ["a"]}});
        // (filter, expected: Some(pass) or None for an error)
        let cases: Vec<(DataFilter, Option<bool>)> = vec![
            (
                filter("body.type", String, &["order", "refund"], None),
                Some(true),
            ),
            (filter("body.type", String, &["refund"], None), Some(false)),
            (filter("body.type", String, &["ord.*"], None), Some(true)),
            // Anchored: Argo would match "order" inside "preorder".
            (filter("body.ref", String, &["order"], None), Some(false)),
            (filter("body.ref", String, &[".*order"], None), Some(true)),
            (
                filter("body.type", String, &["refund"], Some(NotEqual)),
                Some(true),
            ),
            (
                filter("body.type", String, &["order"], Some(NotEqual)),
                Some(false),
            ),
            (filter("body.total", String, &["42"], None), Some(true)),
            (
                filter("body.tags", String, &[r#"\["a"\]"#], None),
                Some(true),
            ),
            (
                filter("body.total", Number, &["40"], Some(Greater)),
                Some(true),
            ),
            (
                filter("body.total", Number, &["50"], Some(GreaterEqual)),
                Some(false),
            ),
            (
                filter("body.total", Number, &["42"], Some(LessEqual)),
                Some(true),
            ),
            (
                filter("body.total", Number, &["42"], Some(Less)),
                Some(false),
            ),
            (filter("body.total", Number, &["1", "42"], None), Some(true)),
            (
                filter("body.total", Number, &["1", "42"], Some(NotEqual)),
                Some(false),
            ),
            (
                filter("body.total", Number, &["1", "2"], Some(NotEqual)),
                Some(true),
            ),
            (filter("body.count", Number, &["7"], None), Some(true)),
            (filter("body.paid", Bool, &["true"], None), Some(true)),
            (filter("body.paid", Bool, &["false"], None), Some(false)),
            (
                filter("body.paid", Bool, &["true"], Some(NotEqual)),
                Some(false),
            ),
            // Errors: a missing path, a value of the wrong type.
            (filter("body.missing", String, &["x"], None), None),
            (filter("body.type", Number, &["1"], None), None),
            (filter("body.type", Bool, &["true"], None), None),
            (filter("body.tags", Number, &["1"], None), None),
        ];
        for (i, (f, expected)) in cases.iter().enumerate() {
            let got = eval(std::slice::from_ref(f), LogicalOperator::And, &data);
            assert_eq!(
                got.as_ref().ok().copied(),
                *expected,
                "case {i}: {:?} -> {got:?}",
                f.path.value
            );
        }
    }

    #[test]
    fn logical_operators() {
        let data = json!({"body": {"type": "order", "paid": true}});
        let refund = filter("body.type", JsonType::String, &["refund"], None);
        let paid = filter("body.paid", JsonType::Bool, &["true"], None);
        let missing = filter("body.nope", JsonType::String, &["x"], None);
        let and = LogicalOperator::And;
        let or = LogicalOperator::Or;
        assert_eq!(
            eval(&[refund.clone(), paid.clone()], and, &data).ok(),
            Some(false)
        );
        assert_eq!(
            eval(&[refund.clone(), paid.clone()], or, &data).ok(),
            Some(true)
        );
        // Under `or`, an error elsewhere does not reject an event that passed.
        assert_eq!(eval(&[missing.clone(), paid], or, &data).ok(), Some(true));
        assert!(eval(&[missing.clone(), refund.clone()], or, &data).is_err());
        assert!(eval(&[missing, refund], and, &data).is_err());
    }

    #[test]
    fn bad_values_are_problems() {
        let bad = [
            filter("a", JsonType::String, &["("], None),
            filter("b", JsonType::Bool, &["yes"], None),
        ];
        let problems =
            DataFilters::compile(&bad, LogicalOperator::And).expect_err("must not compile");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].1.contains("regular expression"), "{problems:?}");
    }
}
