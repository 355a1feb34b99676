//! Go templates for Argo's `dataTemplate` / `contextTemplate`, on the
//! `gtmpl` crate (Go's text/template for Rust).
//!
//! Guarantees:
//! - A template is parsed once, when the config is decoded (so a syntax
//!   error or an unknown function is a `FILE:LINE:COL` config error), and
//!   rendered per event without parsing again.
//! - The data a template sees is Argo's: `.Input` is the event's data (for
//!   `dataTemplate`) or context (for `contextTemplate`) as JSON, so
//!   `{{ .Input.body.name }}` reads a webhook body field. JSON objects behave
//!   like Go maps: a missing key is `<no value>`, not an error.
//! - Besides Go's built-ins (`eq`, `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`,
//!   `not`, `len`, `index`, `print`, `printf`, `println`, `urlquery`), the
//!   Sprig functions listed in [`SPRIG`] are available, with Sprig's
//!   argument order (the piped value is the last argument). Sprig functions
//!   that read the clock, the environment or random numbers are left out on
//!   purpose: a parameter is a function of its event.
//!
//! Not done: the rest of Sprig (about 200 functions); using one is an
//! "unknown function" error at load, never a silent empty string.

use base64::Engine as _;
use gtmpl::{Context, Func, FuncError, Template};
use gtmpl_value::{Number, Value};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The Sprig-style functions spillway adds to Go's built-ins.
pub const SPRIG: &[(&str, Func)] = &[
    ("upper", upper),
    ("lower", lower),
    ("title", title),
    ("trim", trim),
    ("trimPrefix", trim_prefix),
    ("trimSuffix", trim_suffix),
    ("replace", replace),
    ("contains", contains),
    ("hasPrefix", has_prefix),
    ("hasSuffix", has_suffix),
    ("default", default),
    ("empty", empty),
    ("coalesce", coalesce),
    ("quote", quote),
    ("squote", squote),
    ("toString", to_string),
    ("toJson", to_json),
    ("b64enc", b64enc),
    ("b64dec", b64dec),
];

/// A parsed Go template with the text it came from.
#[derive(Clone)]
pub struct GoTemplate {
    text: String,
    compiled: Arc<Template>,
}

/// Why a template did not produce a value for an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template failed: {0}")]
    Failed(String),
    /// Argo treats an empty result (or Go's `<no value>`) as "not found".
    #[error("template evaluated to an empty string or <no value>")]
    Empty,
}

impl GoTemplate {
    /// Parses `text`; the error names what is wrong (with the template's own
    /// line when it has several).
    pub fn parse(text: &str) -> Result<Self, String> {
        check_actions_closed(text).map_err(|e| format!("invalid Go template: {e}"))?;
        check_no_nested_templates(text)?;
        // gtmpl lexes on a thread of its own; a lexer stuck at the end of
        // the input (see `check_actions_closed`) must not hang the loader.
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = text.to_string();
        std::thread::spawn(move || {
            let mut template = Template::with_name("template");
            template.add_funcs(SPRIG);
            let parsed = template.parse(owned).map(|()| template);
            let _ = tx.send(parsed.map_err(|e| match e {
                // The context is the template's name and a line count that
                // is off by one; the message alone reads better.
                gtmpl::error::ParseError::WithContext(_, message) => message,
                other => other.to_string(),
            }));
        });
        let template = match rx.recv_timeout(PARSE_TIMEOUT) {
            Ok(parsed) => parsed.map_err(|e| format!("invalid Go template: {e}"))?,
            Err(_) => {
                return Err(
                    "invalid Go template: the parser did not finish (an unclosed action?)"
                        .to_string(),
                )
            }
        };
        Ok(GoTemplate {
            text: text.to_string(),
            compiled: Arc::new(template),
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Renders with `.Input` = `input`.
    pub fn render(&self, input: &serde_json::Value) -> Result<String, RenderError> {
        let mut root = HashMap::new();
        root.insert("Input".to_string(), from_json(input));
        let out = self
            .compiled
            .render(&Context::from(Value::Map(root)))
            .map_err(|e| RenderError::Failed(e.to_string()))?;
        if out.is_empty() || out == "<no value>" {
            return Err(RenderError::Empty);
        }
        Ok(out)
    }
}

impl fmt::Debug for GoTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GoTemplate").field(&self.text).finish()
    }
}

/// Two templates are equal when their text is: parsing is deterministic.
impl PartialEq for GoTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<'de> Deserialize<'de> for GoTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        GoTemplate::parse(&text).map_err(de::Error::custom)
    }
}

/// Longest a template may take to parse (they are one-liners; this only
/// bounds a parser that does not stop).
const PARSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `define`, `template` and `block` are refused: gtmpl lets a template call
/// itself up to 100 000 levels deep, which overflows a worker's stack (an
/// abort, not an error) on the first event. Parameters need none of them.
fn check_no_nested_templates(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        rest = &rest[open + 2..];
        let action = rest.trim_start_matches('-').trim_start();
        for keyword in ["define", "template", "block"] {
            let follows = action.strip_prefix(keyword);
            if follows.is_some_and(|f| f.starts_with(|c: char| c.is_whitespace() || c == '}')) {
                return Err(format!(
                    "invalid Go template: `{keyword}` is not supported (nested templates could \
                     recurse without bound); write the text inline"
                ));
            }
        }
    }
    Ok(())
}

/// Every `{{` action is closed by `}}` (strings, raw strings, characters
/// and comments inside an action are skipped). gtmpl 0.7's lexer loops
/// forever when the input ends inside an action, so this is checked first.
fn check_actions_closed(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(open) = text[i..].find("{{") {
        i += open + 2;
        let start_line = text[..i].matches('\n').count() + 1;
        let unclosed = || format!("unclosed action started on line {start_line}");
        loop {
            match bytes.get(i) {
                None => return Err(unclosed()),
                Some(b'}') if bytes.get(i + 1) == Some(&b'}') => {
                    i += 2;
                    break;
                }
                Some(b'/') if bytes.get(i + 1) == Some(&b'*') => {
                    let end = text[i + 2..]
                        .find("*/")
                        .ok_or_else(|| "unclosed comment".to_string())?;
                    i += 2 + end + 2;
                }
                Some(&quote @ (b'"' | b'\'' | b'`')) => {
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => return Err(unclosed()),
                            Some(b'\\') if quote != b'`' => i += 2,
                            Some(&c) if c == quote => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                Some(_) => i += 1,
            }
        }
    }
    Ok(())
}

/// JSON as template data: objects become maps (missing key → `<no value>`).
fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Number(Number::from(i))
            } else if let Some(u) = n.as_u64() {
                Value::Number(Number::from(u))
            } else {
                Value::Number(Number::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(map) => {
            Value::Map(map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    }
}

/// Template data back to JSON (for `toJson`).
fn to_json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json_value).collect()),
        Value::Object(map) | Value::Map(map) => serde_json::Value::Object(
            // Sorted keys, like Go's encoding/json.
            map.iter()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| (k.clone(), to_json_value(v)))
                .collect(),
        ),
    }
}

/// Sprig's `toString`: strings as is, nothing as "", the rest as JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => to_json_value(other).to_string(),
    }
}

/// Go's notion of an empty value (what `default` and `empty` test).
fn is_empty(value: &Value) -> bool {
    match value {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) | Value::Map(m) => m.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Function(_) => false,
    }
}

fn exactly<'a, const N: usize>(name: &str, args: &'a [Value]) -> Result<&'a [Value; N], FuncError> {
    args.try_into()
        .map_err(|_| FuncError::ExactlyXArgs(name.to_string(), N))
}

fn map_text(name: &str, args: &[Value], f: impl Fn(&str) -> String) -> Result<Value, FuncError> {
    let [s] = exactly::<1>(name, args)?;
    Ok(Value::String(f(&as_text(s))))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    map_text("upper", args, str::to_uppercase)
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    map_text("lower", args, str::to_lowercase)
}

/// Upper-cases the first letter of each space-separated word.
fn title(args: &[Value]) -> Result<Value, FuncError> {
    map_text("title", args, |s| {
        let mut out = String::with_capacity(s.len());
        let mut start = true;
        for c in s.chars() {
            if start {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            start = c.is_whitespace();
        }
        out
    })
}

fn trim(args: &[Value]) -> Result<Value, FuncError> {
    map_text("trim", args, |s| s.trim().to_string())
}

fn trim_prefix(args: &[Value]) -> Result<Value, FuncError> {
    let [prefix, s] = exactly::<2>("trimPrefix", args)?;
    let (prefix, s) = (as_text(prefix), as_text(s));
    Ok(Value::String(
        s.strip_prefix(&prefix).unwrap_or(&s).to_string(),
    ))
}

fn trim_suffix(args: &[Value]) -> Result<Value, FuncError> {
    let [suffix, s] = exactly::<2>("trimSuffix", args)?;
    let (suffix, s) = (as_text(suffix), as_text(s));
    Ok(Value::String(
        s.strip_suffix(&suffix).unwrap_or(&s).to_string(),
    ))
}

fn replace(args: &[Value]) -> Result<Value, FuncError> {
    let [old, new, s] = exactly::<3>("replace", args)?;
    Ok(Value::String(
        as_text(s).replace(&as_text(old), &as_text(new)),
    ))
}

fn contains(args: &[Value]) -> Result<Value, FuncError> {
    let [needle, s] = exactly::<2>("contains", args)?;
    Ok(Value::Bool(as_text(s).contains(&as_text(needle))))
}

fn has_prefix(args: &[Value]) -> Result<Value, FuncError> {
    let [prefix, s] = exactly::<2>("hasPrefix", args)?;
    Ok(Value::Bool(as_text(s).starts_with(&as_text(prefix))))
}

fn has_suffix(args: &[Value]) -> Result<Value, FuncError> {
    let [suffix, s] = exactly::<2>("hasSuffix", args)?;
    Ok(Value::Bool(as_text(s).ends_with(&as_text(suffix))))
}

/// `default FALLBACK GIVEN`: GIVEN unless it is empty (or not given at all,
/// as in `{{ .Input.missing | default "x" }}`).
fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [fallback] => Ok(fallback.clone()),
        [fallback, given] if is_empty(given) => Ok(fallback.clone()),
        [_, given] => Ok(given.clone()),
        _ => Err(FuncError::AtLeastXArgs("default".to_string(), 1)),
    }
}

fn empty(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly::<1>("empty", args)?;
    Ok(Value::Bool(is_empty(v)))
}

/// The first non-empty argument, or nil.
fn coalesce(args: &[Value]) -> Result<Value, FuncError> {
    Ok(args
        .iter()
        .find(|v| !is_empty(v))
        .cloned()
        .unwrap_or(Value::Nil))
}

/// Go's `%q` for strings: JSON string escaping is the same for the
/// characters config and event data contain.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|v| !matches!(v, Value::NoValue | Value::Nil))
        .map(|v| serde_json::Value::String(as_text(v)).to_string())
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn squote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|v| !matches!(v, Value::NoValue | Value::Nil))
        .map(|v| format!("'{}'", as_text(v)))
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn to_string(args: &[Value]) -> Result<Value, FuncError> {
    map_text("toString", args, str::to_string)
}

fn to_json(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly::<1>("toJson", args)?;
    Ok(Value::String(to_json_value(v).to_string()))
}

fn b64enc(args: &[Value]) -> Result<Value, FuncError> {
    map_text("b64enc", args, |s| {
        base64::engine::general_purpose::STANDARD.encode(s)
    })
}

/// Like Sprig, a value that is not base64 decodes to the error text rather
/// than failing the template.
fn b64dec(args: &[Value]) -> Result<Value, FuncError> {
    map_text(
        "b64dec",
        args,
        |s| match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => e.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(text: &str, input: serde_json::Value) -> Result<String, RenderError> {
        GoTemplate::parse(text)
            .expect("template parses")
            .render(&input)
    }

    #[test]
    fn reads_input_fields_like_argo() {
        let input = json!({"body": {"name": "ada", "n": 3, "tags": ["a", "b"]}});
        let cases = [
            ("{{ .Input.body.name }}", "ada"),
            ("{{ .Input.body.name | upper }}", "ADA"),
            ("{{ upper .Input.body.name }}-x", "ADA-x"),
            ("{{ .Input.body.n }}", "3"),
            ("{{ index .Input.body.tags 1 }}", "b"),
            ("{{ .Input.body.missing | default \"none\" }}", "none"),
            ("{{ .Input.body.name | default \"none\" }}", "ada"),
            ("{{ .Input.body.name | quote }}", "\"ada\""),
            ("{{ .Input.body.name | squote }}", "'ada'"),
            (
                "{{ .Input.body | toJson }}",
                r#"{"n":3,"name":"ada","tags":["a","b"]}"#,
            ),
            (
                "{{ if eq .Input.body.name \"ada\" }}yes{{ else }}no{{ end }}",
                "yes",
            ),
            ("{{ .Input.body.name | title }}", "Ada"),
            ("{{ \"  x \" | trim }}", "x"),
            ("{{ .Input.body.name | trimPrefix \"a\" }}", "da"),
            ("{{ .Input.body.name | trimSuffix \"a\" }}", "ad"),
            ("{{ .Input.body.name | replace \"a\" \"o\" }}", "odo"),
            ("{{ contains \"d\" .Input.body.name }}", "true"),
            ("{{ hasPrefix \"ad\" .Input.body.name }}", "true"),
            ("{{ hasSuffix \"x\" .Input.body.name }}", "false"),
            ("{{ empty .Input.body.missing }}", "true"),
            ("{{ coalesce .Input.body.missing .Input.body.name }}", "ada"),
            ("{{ .Input.body.name | b64enc }}", "YWRh"),
            ("{{ \"YWRh\" | b64dec }}", "ada"),
            ("{{ .Input.body.n | toString | lower }}", "3"),
            ("{{ printf \"%s-%d\" .Input.body.name 7 }}", "ada-7"),
        ];
        for (text, want) in cases {
            assert_eq!(render(text, input.clone()).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn missing_or_empty_results_are_not_values() {
        let input = json!({"body": {"blank": ""}});
        assert_eq!(
            render("{{ .Input.body.missing }}", input.clone()),
            Err(RenderError::Empty)
        );
        assert_eq!(
            render("{{ .Input.body.blank }}", input),
            Err(RenderError::Empty)
        );
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let unknown = GoTemplate::parse("{{ now }}").expect_err("unknown function");
        assert!(unknown.contains("now"), "{unknown}");
        for text in [
            "{{ .Input.x ",
            "{{ .Input.x",
            "ok {{ .Input.x }} then {{ 12 ",
            "{{ \"}}\" .Input.x ",
            "{{ `}}` ",
            "{{ /* }} ",
            "{{ \"abc",
        ] {
            let err = GoTemplate::parse(text).expect_err("unclosed action");
            assert!(err.starts_with("invalid Go template"), "{text}: {err}");
        }
        assert!(GoTemplate::parse("{{ \"}}\" }} {{/* c */}}").is_ok());
    }

    #[test]
    fn decodes_from_a_yaml_string() {
        let t: GoTemplate = serde_json::from_value(json!("{{ .Input.a }}")).expect("decodes");
        assert_eq!(t.text(), "{{ .Input.a }}");
        assert!(serde_json::from_value::<GoTemplate>(json!("{{ nope }}")).is_err());
    }

    #[test]
    fn nested_templates_are_refused() {
        for text in [
            r#"{{define "t"}}{{template "t" .}}{{end}}{{template "t" .}}"#,
            r#"{{- block "b" .}}x{{end}}"#,
            r#"{{ template "x" }}"#,
        ] {
            let err = GoTemplate::parse(text).expect_err("nested template");
            assert!(err.contains("is not supported"), "{text}: {err}");
        }
        GoTemplate::parse(r#"{{ .Input.templateName }} {{ "define" }}"#).expect("not a keyword");
    }
}
