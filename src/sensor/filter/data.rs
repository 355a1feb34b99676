//! Argo `data` filters: the value at `path` in the event data against a list
//! of `value`s, with Argo Events' own rules (`filterData` in its
//! `sensors/dependencies/filter.go`), so an Argo config gives Argo's results.
//!
//! - `path` is a gjson path ([`crate::json_path`]), parsed at load.
//! - The value found is converted as gjson converts it, never rejected for
//!   its type ([`crate::json_path::gjson`]): for `string` to text (null → `""`,
//!   objects and arrays → compact JSON), for `number` to a float (a
//!   non-numeric string, null, an object → 0), for `bool` to true/false
//!   (`true`, a non-zero number, `"true"`/`"1"`/`"t"` → true; else false).
//! - `string`: each value is a regular expression that may match anywhere
//!   (unanchored, Go's `regexp.MatchString`); `=` (default) passes when one
//!   matches, `!=` when one does *not* match.
//! - `number`: passes when the value compares true with `comparator` (`=`
//!   default, `!=`, `<`, `<=`, `>`, `>=`) against at least one of `value`;
//!   so `!=` with several values passes unless the value equals them all.
//! - `bool`: passes when the value is one of `value`; Argo ignores
//!   `comparator` for bool (`spillway validate` warns about one).
//! - A missing path is an error (the event is rejected and counted).
//!
//! Filters combine with `dataLogicalOperator` (`and` by default; under `or`
//! an error only counts when no filter passed), as Argo does.
//!
//! What Argo only discovers per event (an empty `path` or `value` list, a
//! value that is not a regex / number / bool, an unsupported path) is
//! refused at load, with its position.

use super::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::{Comparator, DataFilter, JsonType, LogicalOperator};
use crate::json_path::{gjson, Path};
use crate::triggers::params::template::GoTemplate;
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
    path: Path,
    /// Argo's `template`: renders the found value's text (`.Input`); the
    /// output, as a string, is what the test sees.
    template: Option<GoTemplate>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    /// Passes when one regex matches (`=`) or one does not (`!=`); any
    /// other comparator never passes (refused at load).
    Strings {
        patterns: Vec<Regex>,
        comparator: Comparator,
    },
    /// Passes when `value <comparator> wanted` holds for one `wanted`.
    Numbers {
        wanted: Vec<f64>,
        comparator: Comparator,
    },
    /// Passes when the value is one of these; no comparator (Argo's rule).
    Bools(Vec<bool>),
}

impl DataFilters {
    /// Compiles `filters`; every value or path that cannot be used is a
    /// problem.
    pub fn compile(
        filters: &[DataFilter],
        operator: LogicalOperator,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut compiled = Vec::new();
        for filter in filters {
            if let Some(one) = Compiled::new(filter, &mut problems) {
                compiled.push(one);
            }
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
    fn new(filter: &DataFilter, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let comparator = filter
            .comparator
            .as_ref()
            .map_or(Comparator::Equal, |c| c.value);
        let path = if filter.path.value.is_empty() {
            problems.push((filter.path.pos, "filter path must not be empty".to_string()));
            None
        } else {
            Path::parse(&filter.path.value)
                .map_err(|err| {
                    problems.push((
                        filter.path.pos,
                        format!("filter path {:?}: {err}", filter.path.value),
                    ))
                })
                .ok()
        };
        let values = &filter.value.value;
        if values.is_empty() {
            problems.push((
                filter.value.pos,
                "filter needs at least one value".to_string(),
            ));
        }
        for empty in values.iter().filter(|v| v.value.is_empty()) {
            problems.push((
                empty.pos,
                "filter values must not be empty (Argo refuses them)".to_string(),
            ));
        }
        let mut parsed = |what: &str, kind: &str, parse: &dyn Fn(&str) -> bool| {
            for v in values
                .iter()
                .filter(|v| !v.value.is_empty() && !parse(&v.value))
            {
                problems.push((
                    v.pos,
                    format!("{:?} is not {what}, but the filter type is {kind}", v.value),
                ));
            }
        };
        let test = match filter.kind.value {
            JsonType::String => {
                if !matches!(comparator, Comparator::Equal | Comparator::NotEqual) {
                    let pos = filter
                        .comparator
                        .as_ref()
                        .map_or(filter.kind.pos, |c| c.pos);
                    problems.push((
                        pos,
                        "ordering comparators (<, <=, >, >=) need `type: number` (Argo never passes a string filter with one)"
                            .to_string(),
                    ));
                }
                let mut patterns = Vec::new();
                for v in values {
                    match Regex::new(&v.value) {
                        Ok(re) => patterns.push(re),
                        Err(err) => problems.push((
                            v.pos,
                            format!("{:?} is not a valid regular expression: {err}", v.value),
                        )),
                    }
                }
                Test::Strings {
                    patterns,
                    comparator,
                }
            }
            JsonType::Number => {
                parsed("a number", "number", &|v| v.parse::<f64>().is_ok());
                Test::Numbers {
                    wanted: values.iter().filter_map(|v| v.value.parse().ok()).collect(),
                    comparator,
                }
            }
            JsonType::Bool => {
                parsed("true or false", "bool", &|v| gjson::parse_bool(v).is_some());
                Test::Bools(
                    values
                        .iter()
                        .filter_map(|v| gjson::parse_bool(&v.value))
                        .collect(),
                )
            }
        };
        let template = filter.template.as_ref().and_then(|t| {
            GoTemplate::parse(&t.value)
                .map_err(|err| problems.push((t.pos, format!("filter template: {err}"))))
                .ok()
        });
        match path {
            Some(path) if problems.len() == before => Some(Compiled {
                path,
                template,
                test,
            }),
            _ => None,
        }
    }

    fn evaluate(&self, data: &Value) -> Result<bool, FilterError> {
        let mut found = self
            .path
            .get(data)
            .ok_or_else(|| FilterError::MissingPath {
                filter: "data",
                path: self.path.to_string(),
            })?;
        if let Some(template) = &self.template {
            let input = Value::String(gjson::string(&found).into_owned());
            let out = template.render(&input).map_err(|err| {
                FilterError::Template(format!("{:?} on {}: {err}", template.text(), self.path))
            })?;
            found = std::borrow::Cow::Owned(Value::String(out));
        }
        Ok(match &self.test {
            Test::Strings {
                patterns,
                comparator,
            } => {
                let text = gjson::string(&found);
                patterns.iter().any(|re| match comparator {
                    Comparator::Equal => re.is_match(&text),
                    Comparator::NotEqual => !re.is_match(&text),
                    _ => false,
                })
            }
            Test::Numbers { wanted, comparator } => {
                let actual = gjson::float(&found);
                wanted.iter().any(|&w| match comparator {
                    Comparator::Equal => actual == w,
                    Comparator::NotEqual => actual != w,
                    Comparator::Greater => actual > w,
                    Comparator::GreaterEqual => actual >= w,
                    Comparator::Less => actual < w,
                    Comparator::LessEqual => actual <= w,
                })
            }
            Test::Bools(wanted) => wanted.contains(&gjson::bool(&found)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::Spanned;
    use crate::config::yaml::Pos;
    use serde_json::json;
    use Comparator::*;
    use JsonType::*;

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
            template: None,
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

    fn templated(path: &str, kind: JsonType, values: &[&str], template: &str) -> DataFilter {
        DataFilter {
            template: Some(Spanned::new(template.to_string(), Pos::default())),
            ..filter(path, kind, values, None)
        }
    }

    /// Argo's `template`: rendered with `.Input` = the value's text, its
    /// output compared as a string; an empty output is an error.
    #[test]
    fn templates_transform_the_value_before_the_test() {
        let order = json!({"body": {"kind": "order", "version": "v42", "ok": "yes"}});
        let and = LogicalOperator::And;
        let cases = [
            (
                templated("body.kind", String, &["^ORDER$"], "{{ .Input | upper }}"),
                Ok(true),
            ),
            (
                templated("body.kind", String, &["^order$"], "{{ .Input | upper }}"),
                Ok(false),
            ),
            (
                templated(
                    "body.version",
                    Number,
                    &["42"],
                    r#"{{ .Input | trimPrefix "v" }}"#,
                ),
                Ok(true),
            ),
            (
                templated(
                    "body.version",
                    Number,
                    &["41"],
                    r#"{{ .Input | trimPrefix "v" }}"#,
                ),
                Ok(false),
            ),
            (
                templated(
                    "body.ok",
                    Bool,
                    &["true"],
                    r#"{{ if eq .Input "yes" }}true{{ else }}false{{ end }}"#,
                ),
                Ok(true),
            ),
        ];
        for (one, want) in cases {
            let got = eval(std::slice::from_ref(&one), and, &order).map_err(|e| e.to_string());
            assert_eq!(got, want, "{:?}", one.template);
        }
        let empty = templated(
            "body.kind",
            String,
            &["x"],
            r#"{{ .Input | trimPrefix "order" }}"#,
        );
        let err = eval(&[empty], and, &order).expect_err("empty output");
        assert!(
            matches!(&err, FilterError::Template(m) if m.contains("empty")),
            "{err}"
        );
        let broken = templated("body.kind", String, &["x"], "{{ .Input ");
        let problems = DataFilters::compile(&[broken], and).expect_err("does not parse");
        assert!(problems[0].1.contains("filter template"), "{problems:?}");
    }

    /// `TestFilterData` in Argo Events' sensors/dependencies/filter_data_test.go,
    /// every case that reaches the filter (nil events, non-JSON and empty
    /// data are decided before it, in `DependencyFilter::apply`; `template`
    /// has its own test above; an empty path or value list is a config error
    /// here, see `argo_refusals_are_config_errors`).
    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is Argo's test data, not π
    fn argo_filter_data_cases() {
        let kv = json!({"k": "v"});
        let nested = json!({"k": true, "k1": {"k": 3.14, "k2": "hello, world"}});
        let and = LogicalOperator::And;
        let or = LogicalOperator::Or;
        // (Argo's test name, filters, operator, data, Argo's expected result)
        let cases: Vec<(&str, Vec<DataFilter>, LogicalOperator, Value, bool)> = vec![
            (
                "string filter",
                vec![filter("k", String, &["v"], None)],
                and,
                kv.clone(),
                true,
            ),
            (
                "string filter EqualTo",
                vec![filter("k", String, &["v"], Some(Equal))],
                and,
                kv.clone(),
                true,
            ),
            (
                "string filter NotEqualTo",
                vec![filter("k", String, &["b"], Some(NotEqual))],
                and,
                kv.clone(),
                true,
            ),
            (
                "number filter (data: string)",
                vec![filter("k", Number, &["1.0"], None)],
                and,
                json!({"k": "1.0"}),
                true,
            ),
            (
                "GreaterThan (data: string)",
                vec![filter("k", Number, &["1.0"], Some(Greater))],
                and,
                json!({"k": "2.0"}),
                true,
            ),
            (
                "LessThanOrEqualTo (data: string)",
                vec![filter("k", Number, &["1.0"], Some(LessEqual))],
                and,
                json!({"k": "2.0"}),
                false,
            ),
            (
                "NotEqualTo (data: string)",
                vec![filter("k", Number, &["1.0"], Some(NotEqual))],
                and,
                json!({"k": "1.0"}),
                false,
            ),
            (
                "EqualTo (data: string)",
                vec![filter("k", Number, &["5.0"], Some(Equal))],
                and,
                json!({"k": "5.0"}),
                true,
            ),
            (
                "comparator empty (data: string)",
                vec![filter("k", Number, &["10.0"], None)],
                and,
                json!({"k": "10.0"}),
                true,
            ),
            (
                "number filter (data: number)",
                vec![filter("k", Number, &["1.0"], None)],
                and,
                json!({"k": 1.0}),
                true,
            ),
            (
                "GreaterThan (data: number)",
                vec![filter("k", Number, &["1.0"], Some(Greater))],
                and,
                json!({"k": 2.0}),
                true,
            ),
            (
                "LessThanOrEqualTo (data: number)",
                vec![filter("k", Number, &["1.0"], Some(LessEqual))],
                and,
                json!({"k": 2.0}),
                false,
            ),
            (
                "NotEqualTo (data: number)",
                vec![filter("k", Number, &["1.0"], Some(NotEqual))],
                and,
                json!({"k": 1.0}),
                false,
            ),
            (
                "EqualTo (data: number)",
                vec![filter("k", Number, &["5.0"], Some(Equal))],
                and,
                json!({"k": 5.0}),
                true,
            ),
            (
                "comparator empty (data: number)",
                vec![filter("k", Number, &["10.0"], None)],
                and,
                json!({"k": 10.0}),
                true,
            ),
            (
                "multiple filters, EMPTY operator",
                vec![
                    filter("k", String, &["v"], None),
                    filter("k1.k", Number, &["2.14"], None),
                    filter("k1.k2", String, &["hello,world", "hello there"], None),
                ],
                and,
                nested.clone(),
                false,
            ),
            (
                "multiple filters, AND operator",
                vec![
                    filter("k", Bool, &["true"], None),
                    filter("k1.k", Number, &["3.14"], None),
                    filter(
                        "k1.k2",
                        String,
                        &["hello,world", "hello, world", "hello there"],
                        None,
                    ),
                ],
                and,
                nested.clone(),
                true,
            ),
            (
                "multiple filters, OR operator",
                vec![
                    filter("k", Bool, &["false"], None),
                    filter("k1.k", Number, &["3.14"], None),
                    filter("k1.k2", String, &["hello,world", "hello there"], None),
                ],
                or,
                nested.clone(),
                true,
            ),
            (
                "string filter Regex",
                vec![filter(
                    r#"[k,k1.a.#(k2=="v2").k2]"#,
                    String,
                    &[r"\bv\b.*\bv2\b"],
                    Some(Equal),
                )],
                and,
                json!({"k": "v", "k1": {"a": [{"k2": "v2"}]}}),
                true,
            ),
            (
                "string filter Regex2",
                vec![filter(
                    r#"[k,k1.a.#(k2=="v2").k2,,k1.a.#(k2=="v3").k2]"#,
                    String,
                    &[r"(\bz\b.*\bv2\b)|(\bv\b.*(\bv2\b.*\bv3\b))"],
                    None,
                )],
                and,
                json!({"k": "v", "k1": {"a": [{"k2": "v2"}, {"k2": "v3"}]}}),
                true,
            ),
        ];
        for (name, filters, operator, data, expected) in cases {
            assert_eq!(eval(&filters, operator, &data), Ok(expected), "{name}");
        }
    }

    /// Argo's rules where they surprise; each row is what Argo's
    /// `filterData` gives for it.
    #[test]
    fn argo_rules_for_each_type() {
        let data = json!({"body": {"type": "order", "ref": "preorder", "total": 42, "paid": true,
                                   "count": "7", "word": "abc", "none": null,
                                   "tags": ["a"], "obj": {"a": 1}, "items": [{"sku": "x", "n": 2}, {"sku": "y", "n": 5}],
                                   "meta.name": "web"}});
        // (filter, expected: Some(pass) or None for an error)
        let cases: Vec<(DataFilter, Option<bool>)> = vec![
            // Strings: unanchored regexes; `!=` passes when one value does not match.
            (filter("body.ref", String, &["order"], None), Some(true)),
            (filter("body.ref", String, &["^order$"], None), Some(false)),
            (
                filter("body.type", String, &["refund", "ord"], None),
                Some(true),
            ),
            (
                filter("body.type", String, &["order"], Some(NotEqual)),
                Some(false),
            ),
            (
                filter("body.type", String, &["order", "refund"], Some(NotEqual)),
                Some(true),
            ),
            (
                filter("body.type", String, &["^(order|refund)$"], Some(NotEqual)),
                Some(false),
            ),
            // Non-strings as gjson prints them.
            (filter("body.total", String, &["^42$"], None), Some(true)),
            (filter("body.paid", String, &["^true$"], None), Some(true)),
            (filter("body.none", String, &["^$"], None), Some(true)),
            (
                filter("body.tags", String, &[r#"^\["a"\]$"#], None),
                Some(true),
            ),
            (filter("body.obj", String, &[r#""a":1"#], None), Some(true)),
            // Numbers: any value satisfying the comparator; strings and others coerced.
            (
                filter("body.total", Number, &["40"], Some(Greater)),
                Some(true),
            ),
            (
                filter("body.total", Number, &["42"], Some(Less)),
                Some(false),
            ),
            (filter("body.total", Number, &["1", "42"], None), Some(true)),
            (
                filter("body.total", Number, &["1", "42"], Some(NotEqual)),
                Some(true),
            ),
            (
                filter("body.total", Number, &["42", "42.0"], Some(NotEqual)),
                Some(false),
            ),
            (filter("body.total", Number, &["4.2e1"], None), Some(true)),
            (filter("body.count", Number, &["7"], None), Some(true)),
            (filter("body.word", Number, &["0"], None), Some(true)),
            (filter("body.obj", Number, &["0"], None), Some(true)),
            (filter("body.paid", Number, &["1"], None), Some(true)),
            // Bools: one of the values; the comparator is ignored.
            (filter("body.paid", Bool, &["true"], None), Some(true)),
            (filter("body.paid", Bool, &["false"], None), Some(false)),
            (
                filter("body.paid", Bool, &["true"], Some(NotEqual)),
                Some(true),
            ),
            (filter("body.paid", Bool, &["T"], None), Some(true)),
            (filter("body.word", Bool, &["false"], None), Some(true)),
            (filter("body.total", Bool, &["1"], None), Some(true)),
            (filter("body.none", Bool, &["false"], None), Some(true)),
            // gjson paths.
            (filter("body.items.#", Number, &["2"], None), Some(true)),
            (
                filter("body.items.#(n>3).sku", String, &["^y$"], None),
                Some(true),
            ),
            (
                filter("body.items.#.sku", String, &[r#"^\["x","y"\]$"#], None),
                Some(true),
            ),
            (
                filter(r"body.meta\.name", String, &["^web$"], None),
                Some(true),
            ),
            (filter("body.t*e", String, &["^order$"], None), Some(true)),
            // A missing path is an error.
            (filter("body.missing", String, &["x"], None), None),
            (filter("body.items.#(n>9).sku", String, &["x"], None), None),
        ];
        for (i, (f, expected)) in cases.iter().enumerate() {
            let got = eval(std::slice::from_ref(f), LogicalOperator::And, &data);
            assert_eq!(
                got.as_ref().ok().copied(),
                *expected,
                "case {i}: {:?} {:?} -> {got:?}",
                f.path.value,
                f.value.value.iter().map(|v| &v.value).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn logical_operators_in_argo_order() {
        let data = json!({"body": {"type": "order", "paid": true}});
        let refund = filter("body.type", String, &["refund"], None);
        let paid = filter("body.paid", Bool, &["true"], None);
        let missing = filter("body.nope", String, &["x"], None);
        let and = LogicalOperator::And;
        let or = LogicalOperator::Or;
        assert_eq!(eval(&[refund.clone(), paid.clone()], and, &data), Ok(false));
        assert_eq!(eval(&[refund.clone(), paid.clone()], or, &data), Ok(true));
        // `or`: an error does not reject an event another filter passed.
        assert_eq!(eval(&[missing.clone(), paid], or, &data), Ok(true));
        assert!(eval(&[missing.clone(), refund.clone()], or, &data).is_err());
        // `and` stops at the first filter that fails or errs, in order.
        assert!(eval(&[missing.clone(), refund.clone()], and, &data).is_err());
        assert_eq!(eval(&[refund, missing], and, &data), Ok(false));
    }

    /// What Argo refuses at admission (empty path, value list or value) or
    /// fails on every event (a value of the wrong kind, a bad regex, an
    /// unsupported path) is a config problem here.
    #[test]
    fn argo_refusals_are_config_errors() {
        let cases = [
            (filter("", String, &["v"], None), "path must not be empty"),
            (filter("k", String, &[], None), "at least one value"),
            (filter("k", String, &[""], None), "must not be empty"),
            (filter("k", String, &["("], None), "regular expression"),
            (filter("k", Number, &["abc"], None), "is not a number"),
            (filter("k", Number, &[" 5"], None), "is not a number"),
            (filter("k", Bool, &["yes"], None), "is not true or false"),
            (
                filter("k", String, &["a"], Some(Greater)),
                "ordering comparators",
            ),
            (filter("k.#(a==", String, &["a"], None), "never closed"),
            (filter("k.@pretty", String, &["a"], None), "@pretty"),
        ];
        for (f, message) in cases {
            let problems = DataFilters::compile(std::slice::from_ref(&f), LogicalOperator::And)
                .expect_err(&f.path.value);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].1.contains(message), "{problems:?}");
        }
        // Go's ParseBool spellings are all accepted.
        let spellings = [
            "1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False",
        ];
        assert!(
            DataFilters::compile(&[filter("k", Bool, &spellings, None)], LogicalOperator::And)
                .is_ok()
        );
    }
}
