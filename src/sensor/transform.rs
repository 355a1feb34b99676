//! Argo dependency `transform`: rewrites an event's data before the
//! dependency's filters run (Argo's order), with `jq` or a Lua `script`.
//!
//! As in Argo: only the data is transformed, not the context; `jq` keeps its
//! first output, which must be a JSON object; a script gets the data as the
//! global `event` and returns the new data table (limits in
//! [`super::filter::script`]). Empty data is left as it is. A transform that
//! fails on an event rejects that event (acked unrun, counted), never the
//! sensor. Both run on the sensor's evaluation pool
//! ([`crate::sensor::evaluation`]) within its deadline.
//!
//! `jq` runs on jaq (`jaq-core` + `jaq-std`), compiled once at start-up. An
//! evaluation stops with an error after [`jq_guard::STEP_LIMIT`] steps, at
//! its deadline, or when it recurses [`jq_guard::STACK_ALLOWANCE`] deep
//! ([`jq_guard`]); an output nested deeper than [`MAX_OUTPUT_DEPTH`] or
//! with more than [`MAX_OUTPUT_VALUES`] values is an error (checked before
//! it is written out). Not bounded: one native operation, e.g. `"x" * 1e9`
//! or `tojson` of a value that shares structure (see [`jq_guard`]).

mod jq_guard;

use super::filter::script::LuaScript;
use super::filter::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::Transform as TransformConfig;
use crate::sensor::evaluation::{Budget, EvaluationError};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jq_guard::{Guarded, GuardedLut, Interrupted};
use serde_json::Value;

/// Deepest array/object nesting a jq output may have (serde_json's own
/// limit when it reads JSON).
pub const MAX_OUTPUT_DEPTH: usize = 128;
/// Most values (each array item, object key and value counted) a jq output
/// may have once written out: jq values share structure, so a few steps can
/// build one that would print as 2⁶⁰ values.
pub const MAX_OUTPUT_VALUES: usize = 1_000_000;
/// Most bytes of strings (keys included) a jq output may hold once written
/// out: a string is shared, so `[$s, $s] | [., .] …` doubles the text per
/// step. The largest event a default bus accepts is far smaller.
pub const MAX_OUTPUT_STRING_BYTES: usize = 64 * 1024 * 1024;

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
    filter: jaq_core::Filter<Guarded>,
    step_limit: u64,
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

    /// The transformed data, computed within `budget` (on a pool thread).
    pub fn apply(&self, data: &Value, budget: &Budget) -> Result<Value, FilterError> {
        match self {
            Transform::Jq(program) => program.run(data, budget),
            Transform::Script(script) => script.evaluate_table(data, budget),
        }
    }
}

impl JqProgram {
    pub fn compile(source: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
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
            .with_funs(jq_guard::funs())
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
            step_limit: jq_guard::STEP_LIMIT,
        })
    }

    /// The same program with another step limit (tests).
    #[cfg(test)]
    pub fn with_step_limit(mut self, limit: u64) -> Self {
        self.step_limit = limit;
        self
    }

    /// The first output of the program on `data`, computed within `budget`;
    /// it must be an object.
    pub fn run(&self, data: &Value, budget: &Budget) -> Result<Value, FilterError> {
        let error =
            |message: String| FilterError::Transform(format!("jq {:?}: {message}", self.source));
        let input = jaq_json::read::parse_single(data.to_string().as_bytes())
            .map_err(|e| error(format!("reading the event: {e}")))?;
        let guarded = jq_guard::run_guarded(budget, self.step_limit, || {
            let ctx = Ctx::<Guarded>::new(GuardedLut(&self.filter.lut), Vars::new([]));
            let first = self.filter.id.run((ctx, input)).next();
            match first {
                None => Err("no output".to_string()),
                // Never `unwrap_valr`: `halt` would exit the process.
                Some(Err(exn)) => Err(match exn.get_err() {
                    Ok(err) => err.to_string(),
                    Err(_) => "halt is not allowed in a transform".to_string(),
                }),
                Some(Ok(output)) => {
                    match jq_guard::oversized(
                        &output,
                        MAX_OUTPUT_DEPTH,
                        MAX_OUTPUT_VALUES,
                        MAX_OUTPUT_STRING_BYTES,
                    ) {
                        Some(problem) => Err(format!("output {problem}")),
                        None => Ok(output.to_string()),
                    }
                }
            }
        });
        let text = match guarded {
            Ok(result) => result.map_err(error)?,
            Err(Interrupted::Deadline) => {
                return Err(FilterError::Evaluation(EvaluationError::DeadlineExceeded {
                    timeout: budget.timeout(),
                }))
            }
            Err(Interrupted::Steps(limit)) => {
                return Err(FilterError::ScriptLimit(format!(
                    "jq {:?} stopped after {limit} steps",
                    self.source
                )))
            }
            Err(Interrupted::TooDeep) => {
                return Err(FilterError::ScriptLimit(format!(
                    "jq {:?} stopped: recursion deeper than {} bytes of stack",
                    self.source,
                    jq_guard::STACK_ALLOWANCE
                )))
            }
        };
        let json: Value =
            serde_json::from_str(&text).map_err(|e| error(format!("output is not JSON: {e}")))?;
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
    use crate::sensor::evaluation::pool::WORKER_STACK_SIZE;
    use serde_json::json;
    use std::time::Duration;

    /// A budget no test reaches.
    fn budget() -> Budget {
        Budget::starting_now(Duration::from_secs(3600))
    }

    /// Runs `program` on `{}` on a thread with a pool thread's stack.
    fn run_on_pool_stack(program: JqProgram, budget: Budget) -> Result<Value, FilterError> {
        std::thread::Builder::new()
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || program.run(&json!({"a": 1}), &budget))
            .expect("spawn")
            .join()
            .expect("no panic")
    }

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
            let got = p.run(&data, &budget());
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
    fn the_process_environment_is_not_readable() {
        // `env` would copy secrets into event data; `$ENV` is no variable.
        for program in ["{e: env}", "{e: $ENV}", "{e: env.HOME}"] {
            assert!(JqProgram::compile(program).is_err(), "{program}");
        }
        assert!(JqProgram::compile("{t: now, d: (.a | tostring)}").is_ok());
    }

    #[test]
    fn compiled_transform_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Transform>();
    }

    #[test]
    fn fromjson_of_bad_text_is_one_error() {
        // The parser does not move past the byte it fails on: collecting
        // its results would loop until memory ran out.
        for text in ["hello", "x 1", "\"\\u12", "\"\n[[[["] {
            let program = format!("{{p: ({} | fromjson)}}", serde_json::Value::from(text));
            let compiled = JqProgram::compile(&program).expect("compiles");
            let err = run_on_pool_stack(compiled, budget()).expect_err(text);
            assert!(err.to_string().contains("cannot parse"), "{text}: {err}");
        }
        let ok = JqProgram::compile(r#"{p: ("[1,{\"a\":2}]" | fromjson)}"#).expect("compiles");
        assert_eq!(
            run_on_pool_stack(ok, budget()).ok(),
            Some(json!({"p": [1, {"a": 2}]}))
        );
    }

    #[test]
    fn outputs_sharing_one_long_string_are_errors() {
        let program =
            r#"("x" * 10000000) as $s | [$s, $s] | [., .] | [., .] | [., .] | [., .] | {a: .}"#;
        let compiled = JqProgram::compile(program).expect("compiles");
        let err = run_on_pool_stack(compiled, budget()).expect_err("oversized");
        assert!(err.to_string().contains("bytes of strings"), "{err}");
    }

    #[test]
    fn jq_bombs_stop_at_the_step_limit() {
        for program in [
            "{a: [range(1e12)]}",
            "def f: f; f",
            "{a: [repeat(.)]}",
            "{a: last(range(1e15))}",
            "{a: [limit(1e12; repeat(1))] | length}",
        ] {
            let compiled = JqProgram::compile(program).expect("compiles");
            let err = run_on_pool_stack(compiled, budget()).expect_err(program);
            assert!(
                matches!(&err, FilterError::ScriptLimit(m) if m.contains("25000 steps")),
                "{program}: {err}"
            );
        }
    }

    #[test]
    fn jq_stops_at_the_deadline() {
        for program in ["def f: f; f", "{a: [range(1e12)]}"] {
            let compiled = JqProgram::compile(program)
                .expect("compiles")
                .with_step_limit(u64::MAX);
            let past = Budget::starting_now(Duration::ZERO);
            let err = run_on_pool_stack(compiled, past).expect_err(program);
            assert_eq!(
                err,
                FilterError::Evaluation(EvaluationError::DeadlineExceeded {
                    timeout: Duration::ZERO
                }),
                "{program}"
            );
        }
    }

    #[test]
    fn deep_recursion_stops_before_the_stack_overflows() {
        let compiled = JqProgram::compile("def f: 1 + f; {a: f}")
            .expect("compiles")
            .with_step_limit(u64::MAX);
        let err = run_on_pool_stack(compiled, budget()).expect_err("too deep");
        assert!(err.to_string().contains("recursion deeper"), "{err}");
    }

    #[test]
    fn deeply_nested_output_is_an_error() {
        let compiled =
            JqProgram::compile("reduce range(3000) as $i ({}; {a: .})").expect("compiles");
        let err = run_on_pool_stack(compiled, budget()).expect_err("too deep");
        assert!(err.to_string().contains("nests deeper than 128"), "{err}");
        // Shared structure: 2^60 values once written out, from a few steps.
        let compiled =
            JqProgram::compile("{a: reduce range(60) as $i (1; [., .])}").expect("compiles");
        let err = run_on_pool_stack(compiled, budget()).expect_err("too big");
        assert!(
            err.to_string().contains("more than 1000000 values"),
            "{err}"
        );
        // The same shape within the limit is fine.
        let compiled =
            JqProgram::compile("reduce range(100) as $i ({}; {a: .})").expect("compiles");
        assert!(run_on_pool_stack(compiled, budget()).is_ok());
    }

    #[test]
    fn values_as_deep_as_the_step_limit_allows_are_safe_to_use_and_drop() {
        // ≈ 5 steps per level: the deepest value the step limit lets a
        // program build, then printed, compared, walked and dropped (also
        // when the evaluation is stopped with it alive).
        let depth = jq_guard::STEP_LIMIT / 6;
        for tail in [
            "tojson | {n: length}",
            "{same: (. == .)}",
            "[..] | {n: length}",
            "{}",
        ] {
            let program = format!("reduce range({depth}) as $i ({{}}; {{a: .}}) | {tail}");
            let compiled = JqProgram::compile(&program).expect("compiles");
            // Ok, or stopped by a limit: never a crash.
            let _ = run_on_pool_stack(compiled, budget());
        }
        let compiled =
            JqProgram::compile("reduce range(1e9) as $i ({}; {a: .})").expect("compiles");
        let err = run_on_pool_stack(compiled, budget()).expect_err("stopped");
        assert!(err.to_string().contains("steps"), "{err}");
        // JSON text nested deeper than the output limit is refused by fromjson.
        let compiled = JqProgram::compile(r#"{a: ("[" * 1000000 | fromjson)}"#).expect("compiles");
        let err = run_on_pool_stack(compiled, budget()).expect_err("refused");
        assert!(err.to_string().contains("nests deeper"), "{err}");
        let compiled = JqProgram::compile(r#"{a: ("[[1]]" | fromjson)}"#).expect("compiles");
        assert_eq!(
            run_on_pool_stack(compiled, budget()),
            Ok(json!({"a": [[1]]}))
        );
    }

    #[test]
    fn the_guard_is_disarmed_after_a_stop() {
        // A stopped evaluation leaves nothing armed on the thread: the next
        // one on the same thread runs normally.
        std::thread::Builder::new()
            .stack_size(WORKER_STACK_SIZE)
            .spawn(|| {
                let bomb = JqProgram::compile("def f: f; f").expect("compiles");
                assert!(bomb.run(&json!({}), &budget()).is_err());
                let fine = JqProgram::compile("{b: .a}").expect("compiles");
                assert_eq!(fine.run(&json!({"a": 1}), &budget()), Ok(json!({"b": 1})));
            })
            .expect("spawn")
            .join()
            .expect("no panic");
    }
}
