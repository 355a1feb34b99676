//! The conversions gjson's `Result` applies when Argo reads a value as a
//! string, number or bool (`String()`, `Float()`, `Bool()`), so a filter
//! sees the value exactly as Argo's does.
//!
//! None of them fails: a value of another type converts (a word to the
//! number 0, an object to its JSON text, null to `""`), as in gjson.

use serde_json::Value;
use std::borrow::Cow;

/// gjson `Result.String()`: strings without quotes, integers as written,
/// other numbers in shortest decimal form without exponent (`1.0` → `1`,
/// `1e3` → `1000`), `true`/`false`, null as `""`, arrays and objects as
/// compact JSON.
pub fn string(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
        // Rust's `Display` for f64 is Go's `FormatFloat(f, 'f', -1, 64)`:
        // shortest round-trip digits, never an exponent.
        Value::Number(n) => Cow::Owned(format!("{}", n.as_f64().unwrap_or(0.0))),
        other => Cow::Owned(other.to_string()),
    }
}

/// gjson `Result.Float()`: numbers as they are, `true` as 1, a string
/// parsed as a float (0 when it is not one), anything else 0.
pub fn float(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Bool(true) => 1.0,
        Value::String(s) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// gjson `Result.Bool()`: `true`, a non-zero number, or a string Go's
/// `ParseBool` reads as true once lower-cased (`"1"`, `"t"`, `"TRUE"`);
/// everything else is false.
pub fn bool(value: &Value) -> bool {
    match value {
        Value::String(s) => parse_bool(&s.to_ascii_lowercase()) == Some(true),
        other => truthy(other),
    }
}

/// [`bool`] for the non-string types.
pub(super) fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

/// Go's `strconv.ParseBool`: exactly `1 t T TRUE true True` and
/// `0 f F FALSE false False`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_as_gjson_gives_them() {
        let cases = [
            (json!("v"), "v"),
            (json!(null), ""),
            (json!(true), "true"),
            (json!(42), "42"),
            (json!(-7), "-7"),
            (json!(1.0), "1"),
            (json!(2.75), "2.75"),
            (json!(1e3), "1000"),
            (json!(1e21), "1000000000000000000000"),
            (json!([1, "a"]), r#"[1,"a"]"#),
            (json!({"a": 1}), r#"{"a":1}"#),
        ];
        for (value, expected) in cases {
            assert_eq!(string(&value), expected, "{value}");
        }
    }

    #[test]
    fn floats_and_bools_as_gjson_gives_them() {
        assert_eq!(float(&json!("2.5")), 2.5);
        assert_eq!(float(&json!("abc")), 0.0);
        assert_eq!(float(&json!(" 1")), 0.0, "Go's ParseFloat does not trim");
        assert_eq!(float(&json!(true)), 1.0);
        assert_eq!(float(&json!({"a": 1})), 0.0);
        assert!(bool(&json!("TRUE")));
        assert!(bool(&json!("t")));
        assert!(bool(&json!(2)));
        assert!(!bool(&json!("yes")));
        assert!(!bool(&json!(null)));
        assert!(!bool(&json!([true])));
    }
}
