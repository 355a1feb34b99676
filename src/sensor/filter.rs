//! Argo data filters: does an event's data match a dependency's filters?
//!
//! A filter matches when the value at `path` matches any of `value` (regular
//! string equality for `string`, numeric comparison for `number`, `true` /
//! `false` for `bool`). Filters combine with `dataLogicalOperator` (`and` by
//! default). A missing path never matches. Pure functions, no I/O.

use crate::config::sensor::{Comparator, DataFilter, DependencyFilters, JsonType, LogicalOperator};
use crate::json_path;
use serde_json::Value;

/// Whether `data` passes `filters` (no filters: always).
pub fn matches(filters: Option<&DependencyFilters>, data: &Value) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    let Some(data_filters) = filters.data.as_ref().filter(|f| !f.is_empty()) else {
        return true;
    };
    let operator = filters
        .data_logical_operator
        .as_ref()
        .map_or(LogicalOperator::And, |o| o.value);
    match operator {
        LogicalOperator::And => data_filters.iter().all(|f| data_matches(f, data)),
        LogicalOperator::Or => data_filters.iter().any(|f| data_matches(f, data)),
    }
}

fn data_matches(filter: &DataFilter, data: &Value) -> bool {
    let Some(actual) = json_path::get(data, &filter.path.value) else {
        return false;
    };
    let comparator = filter
        .comparator
        .as_ref()
        .map_or(Comparator::Equal, |c| c.value);
    let wanted = &filter.value.value;
    match filter.kind.value {
        JsonType::String => {
            let actual = json_path::to_plain_string(actual);
            let equal = wanted.iter().any(|w| w.value == actual);
            if comparator == Comparator::NotEqual {
                !equal
            } else {
                equal
            }
        }
        JsonType::Bool => {
            let actual = match actual {
                Value::Bool(b) => *b,
                Value::String(s) => match s.parse::<bool>() {
                    Ok(b) => b,
                    Err(_) => return false,
                },
                _ => return false,
            };
            let equal = wanted.iter().any(|w| w.value.parse::<bool>() == Ok(actual));
            if comparator == Comparator::NotEqual {
                !equal
            } else {
                equal
            }
        }
        JsonType::Number => {
            let actual = match actual {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            let Some(actual) = actual else {
                return false;
            };
            let compare = |w: f64| match comparator {
                Comparator::Equal => actual == w,
                Comparator::NotEqual => actual != w,
                Comparator::Greater => actual > w,
                Comparator::GreaterEqual => actual >= w,
                Comparator::Less => actual < w,
                Comparator::LessEqual => actual <= w,
            };
            let values = wanted
                .iter()
                .filter_map(|w| w.value.trim().parse::<f64>().ok());
            if comparator == Comparator::NotEqual {
                values.into_iter().all(compare)
            } else {
                values.into_iter().any(compare)
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

    fn filters(list: Vec<DataFilter>, or: bool) -> DependencyFilters {
        DependencyFilters {
            data: Some(list),
            data_logical_operator: or.then(|| Spanned::new(LogicalOperator::Or, Pos::default())),
        }
    }

    #[test]
    fn string_number_bool() {
        let data = json!({"body": {"type": "order", "total": 42, "paid": true}});
        let f = |list, or| matches(Some(&filters(list, or)), &data);
        assert!(f(
            vec![filter(
                "body.type",
                JsonType::String,
                &["order", "refund"],
                None
            )],
            false
        ));
        assert!(!f(
            vec![filter("body.type", JsonType::String, &["refund"], None)],
            false
        ));
        assert!(f(
            vec![filter(
                "body.total",
                JsonType::Number,
                &["40"],
                Some(Comparator::Greater)
            )],
            false
        ));
        assert!(!f(
            vec![filter(
                "body.total",
                JsonType::Number,
                &["50"],
                Some(Comparator::GreaterEqual)
            )],
            false
        ));
        assert!(f(
            vec![filter("body.paid", JsonType::Bool, &["true"], None)],
            false
        ));
        assert!(!f(
            vec![filter("body.missing", JsonType::String, &["x"], None)],
            false
        ));
        let mixed = vec![
            filter("body.type", JsonType::String, &["refund"], None),
            filter("body.paid", JsonType::Bool, &["true"], None),
        ];
        assert!(!f(mixed.clone(), false));
        assert!(f(mixed, true));
    }
}
