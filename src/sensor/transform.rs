//! Argo dependency `transform`: rewrites an event's data before the
//! dependency's filters run (Argo's order), with `jq` or a Lua `script`.
//!
//! As in Argo: only the data is transformed, not the context; `jq` keeps its
//! first output, which must be a JSON object; a script gets the data as the
//! global `event` and returns the new data table (limits in
//! [`super::filter::script`]). Empty data is left as it is. A transform that
//! fails on an event rejects that event (acked unrun, counted), never the
//! sensor. `jq` runs on jaq (`jaq-core` + `jaq-std`), compiled once at
//! start-up; a program that never produces an output has no step limit, so
//! keep transforms to plain rewrites.

use super::filter::script::LuaScript;
use super::filter::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::Transform as TransformConfig;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

/// A dependency's transform, compiled.
pub enum Transform {
    Jq(JqProgram),
    Script(LuaScript),
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transform::Jq(p) => write!(f, "jq {:?}", p.source),
            Transform::Script(s) => s.fmt(f),
        }
    }
}

/// A compiled jq program.
pub struct JqProgram {
    source: String,
    filter: jaq_core::Filter<data::JustLut<Val>>,
}

impl Transform {
    /// Compiles `config`: exactly one of `jq` and `script`.
    pub fn compile(config: &crate::config::Spanned<TransformConfig>) -> Result<Self, Vec<Problem>> {
        match (&config.value.jq, &config.value.script) {
            (Some(jq), None) => JqProgram::compile(&jq.value)
                .map(Transform::Jq)
                .map_err(|message| vec![(jq.pos, message)]),
            (None, Some(script)) => LuaScript::compile(&script.value, "transform script")
                .map(Transform::Script)
                .map_err(|message| vec![(script.pos, message)]),
            (Some(_), Some(_)) => Err(vec![(
                config.pos,
                "a transform has either `jq` or `script`, not both".to_string(),
            )]),
            (None, None) => Err(vec![(
                config.pos,
                "a transform needs `jq` or `script`".to_string(),
            )]),
        }
    }

    /// The transformed data.
    pub fn apply(&self, data: &Value) -> Result<Value, FilterError> {
        match self {
            Transform::Jq(program) => program.run(data),
            Transform::Script(script) => script.evaluate_table(data),
        }
    }
}

impl JqProgram {
    pub fn compile(source: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errs| format!("jq program {source:?} does not parse: {}", describe(&errs)))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                format!(
                    "jq program {source:?} does not compile: {}",
                    describe(&errs)
                )
            })?;
        Ok(JqProgram {
            source: source.to_string(),
            filter,
        })
    }

    /// The first output of the program on `data`; it must be an object.
    pub fn run(&self, data: &Value) -> Result<Value, FilterError> {
        let error =
            |message: String| FilterError::Transform(format!("jq {:?}: {message}", self.source));
        let input = jaq_json::read::parse_single(data.to_string().as_bytes())
            .map_err(|e| error(format!("reading the event: {e}")))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let first = self
            .filter
            .id
            .run((ctx, input))
            .next()
            .ok_or_else(|| error("no output".to_string()))?;
        let output = match first {
            Ok(output) => output,
            Err(exn) => {
                // Never `unwrap_valr`: `halt` would exit the process.
                return Err(error(match exn.get_err() {
                    Ok(err) => err.to_string(),
                    Err(_) => "halt is not allowed in a transform".to_string(),
                }));
            }
        };
        let json: Value = serde_json::from_str(&output.to_string())
            .map_err(|e| error(format!("output is not JSON: {e}")))?;
        if json.is_object() {
            Ok(json)
        } else {
            Err(error(format!("output must be a JSON object, got {json}")))
        }
    }
}

fn describe<T: std::fmt::Debug>(errs: &T) -> String {
    let text = format!("{errs:?}");
    // jaq's errors carry the whole source; keep the message readable.
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jq_table() {
        let data =
            json!({"body": {"message": "hi", "n": 2, "items": [{"sku": "a"}, {"sku": "b"}]}});
        // (program, expected: Some(output) / None = error)
        let cases = [
            (
                ".body.message *= 2",
                Some(
                    json!({"body": {"message": "hihi", "n": 2, "items": [{"sku": "a"}, {"sku": "b"}]}}),
                ),
            ),
            (
                "{order: .body.message, skus: [.body.items[].sku]}",
                Some(json!({"order": "hi", "skus": ["a", "b"]})),
            ),
            (
                ".body | del(.items)",
                Some(json!({"message": "hi", "n": 2})),
            ),
            ("{n: (.body.n + 1)}, {n: 0}", Some(json!({"n": 3}))),
            // Errors: not an object, no output, a runtime error, halt.
            (".body.n", None),
            ("empty", None),
            (".body.message + 1", None),
            ("halt", None),
            ("error(\"nope\")", None),
        ];
        for (i, (program, expected)) in cases.iter().enumerate() {
            let p = JqProgram::compile(program).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let got = p.run(&data);
            assert_eq!(
                got.as_ref().ok(),
                expected.as_ref(),
                "case {i}: {program} -> {got:?}"
            );
        }
    }

    #[test]
    fn jq_that_does_not_compile() {
        for program in [".body |", "nosuchfunction(1)", "{"] {
            assert!(JqProgram::compile(program).is_err(), "{program}");
        }
    }

    #[test]
    fn compiled_transform_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Transform>();
    }
}
