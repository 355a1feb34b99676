//! Lua scripts for `filters.script` and `transform.script`, as in Argo: the
//! event data is the global table `event`; a filter script returns a bool, a
//! transform script returns the new event data (a table).
//!
//! Each evaluation runs in a fresh Lua 5.4 state, so nothing leaks from one
//! event to the next, on a thread of the sensor's evaluation pool
//! ([`crate::sensor::evaluation`]), never on a tokio worker. Its limits make
//! a runaway script an error on that one event, never a stuck or dead
//! sensor:
//! - [`INSTRUCTION_LIMIT`] VM instructions, counted by a hook every
//!   [`HOOK_EVERY`] instructions;
//! - the evaluation's [`Budget`]: the same hook stops the script once its
//!   wall-clock deadline has passed or its caller stopped waiting;
//! - [`MEMORY_LIMIT`] bytes for the whole state, the event included;
//! - the hook does not run inside C functions, so `string.find`, `match`,
//!   `gmatch` and `gsub` first check the worst-case cost of the call
//!   ([`pattern_cost`]) and refuse it with an error above
//!   [`pattern_cost::PATTERN_STEP_LIMIT`] steps. The other C functions are
//!   bounded by the memory limit (`string.rep`, `table.concat`) or call back
//!   into Lua, where the hook runs (`table.sort`'s comparator, `gsub`'s
//!   replacement function). What is left (a long C call under the bounds)
//!   is what the pool's deadline and thread abandonment cover.
//!
//! A transform's result table is checked before it is converted to JSON
//! (which runs without the hook): at most [`MAX_RESULT_DEPTH`] deep and
//! [`MAX_RESULT_VALUES`] keys and values written out.
//!
//! The state has the `string`, `table`, `math` and `utf8` libraries and the
//! safe base functions. Not available, unlike Argo: `io`, `os`, `package`,
//! `debug`, `coroutine`, `load`/`dofile`/`loadfile` (no file or process
//! access), and `pcall`/`xpcall` (they could catch the limit errors and keep
//! a loop going). A script is compiled once at start-up (a syntax error is a
//! config error) and each evaluation loads the compiled chunk.

mod pattern_cost;

use super::FilterError;
use crate::sensor::evaluation::{Budget, EvaluationError};
use mlua::chunk::ChunkMode;
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, VmState,
};
use pattern_cost::{worst_case_steps, PATTERN_STEP_LIMIT};
use serde_json::Value;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Most Lua VM instructions one evaluation may run.
pub const INSTRUCTION_LIMIT: u64 = 1_000_000;
/// Most memory (bytes) one evaluation's Lua state may hold.
pub const MEMORY_LIMIT: usize = 16 * 1024 * 1024;
/// Deepest table nesting a transform script may return (serde_json's own
/// limit when it reads JSON).
pub const MAX_RESULT_DEPTH: usize = 128;
/// Most keys and values a transform script's result may have once written
/// out as JSON.
pub const MAX_RESULT_VALUES: usize = 1_000_000;
/// Most bytes of strings (keys included) a transform's result may hold once
/// written out: Lua strings are shared, so a table can reference one 8 MiB
/// string 100 000 times inside the memory limit.
pub const MAX_RESULT_STRING_BYTES: usize = 64 * 1024 * 1024;
/// Most elements one `table.move` may copy: it loops in C, where the
/// instruction hook never runs, and moving nils allocates nothing.
pub const MAX_TABLE_MOVE: i64 = 1_000_000;
/// How often (instructions) the limit hook runs.
const HOOK_EVERY: u32 = 1_000;
/// Base-library globals removed from the state (see the module docs).
const REMOVED_GLOBALS: [&str; 6] = [
    "load",
    "dofile",
    "loadfile",
    "pcall",
    "xpcall",
    "collectgarbage",
];
/// The pattern functions guarded by [`pattern_cost`]: (name, whether `^`
/// anchors, index of the `plain` flag if the function has one).
const PATTERN_FUNCTIONS: [(&str, bool, Option<usize>); 4] = [
    ("find", true, Some(3)),
    ("match", true, None),
    ("gmatch", false, None),
    ("gsub", true, None),
];
const LIMIT_MESSAGE: &str = "evaluation limit reached";
/// Why the hook stopped a script ([`Stop::None`] while it runs).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stop {
    None = 0,
    Instructions = 1,
    Deadline = 2,
}

/// A compiled Lua script.
#[derive(Debug)]
pub struct LuaScript {
    name: &'static str,
    bytecode: Vec<u8>,
    instruction_limit: u64,
}

impl LuaScript {
    /// Compiles `source`; the error is Lua's message (with the line).
    pub fn compile(source: &str, name: &'static str) -> Result<Self, String> {
        let lua = sandbox().map_err(|e| e.to_string())?;
        let function = lua
            .load(source)
            .set_name(name)
            .into_function()
            .map_err(|e| format!("Lua {name} does not compile: {e}"))?;
        Ok(LuaScript {
            name,
            bytecode: function.dump(false),
            instruction_limit: INSTRUCTION_LIMIT,
        })
    }

    /// The same script with another instruction limit (tests).
    #[cfg(test)]
    pub fn with_instruction_limit(mut self, limit: u64) -> Self {
        self.instruction_limit = limit;
        self
    }

    /// Runs the script with `data` as `event` within `budget`; `convert`
    /// reads its result.
    fn run<T>(
        &self,
        data: &Value,
        budget: &Budget,
        convert: impl FnOnce(&Lua, mlua::Value) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        let stop = Arc::new(AtomicU8::new(Stop::None as u8));
        let lua = sandbox().map_err(|e| self.error(e))?;
        lua.set_memory_limit(MEMORY_LIMIT)
            .map_err(|e| self.error(e))?;
        let limit = self.instruction_limit;
        let stopped = Arc::clone(&stop);
        let hook_budget = budget.clone();
        let counter = std::cell::Cell::new(0u64);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let done = counter.get() + u64::from(HOOK_EVERY);
                counter.set(done);
                let why = if done > limit {
                    Stop::Instructions
                } else if hook_budget.exhausted() {
                    Stop::Deadline
                } else {
                    return Ok(VmState::Continue);
                };
                stopped.store(why as u8, Ordering::Relaxed);
                Err(mlua::Error::RuntimeError(LIMIT_MESSAGE.to_string()))
            },
        )
        .map_err(|e| self.error(e))?;
        let outcome = (|| {
            let options = mlua::serde::SerializeOptions::new()
                .serialize_none_to_null(false)
                .serialize_unit_to_null(false);
            let event = lua.to_value_with(data, options)?;
            lua.globals().set("event", event)?;
            let function = lua
                .load(&self.bytecode[..])
                .set_name(self.name)
                .set_mode(ChunkMode::Binary)
                .into_function()?;
            function.call::<mlua::Value>(())
        })();
        match (outcome, stop.load(Ordering::Relaxed)) {
            (Ok(result), _) => convert(&lua, result),
            (Err(_), s) if s == Stop::Instructions as u8 => Err(FilterError::ScriptLimit(format!(
                "Lua {} stopped after {limit} instructions",
                self.name
            ))),
            (Err(_), s) if s == Stop::Deadline as u8 => {
                Err(FilterError::Evaluation(EvaluationError::DeadlineExceeded {
                    timeout: budget.timeout(),
                }))
            }
            (Err(mlua::Error::MemoryError(_)), _) => Err(FilterError::ScriptLimit(format!(
                "Lua {} went over {MEMORY_LIMIT} bytes",
                self.name
            ))),
            (Err(e), _) => Err(self.error(e)),
        }
    }

    fn error(&self, e: mlua::Error) -> FilterError {
        FilterError::Script(format!("Lua {}: {e}", self.name))
    }

    /// Runs a filter script: it must return `true` or `false`.
    pub fn evaluate_bool(&self, data: &Value, budget: &Budget) -> Result<bool, FilterError> {
        self.run(data, budget, |_, result| match result {
            mlua::Value::Boolean(pass) => Ok(pass),
            other => Err(FilterError::Script(format!(
                "Lua {} returned {}, not a bool",
                self.name,
                other.type_name()
            ))),
        })
    }

    /// Runs a transform script: it must return a table, the new data.
    pub fn evaluate_table(&self, data: &Value, budget: &Budget) -> Result<Value, FilterError> {
        self.run(data, budget, |lua, result| match result {
            mlua::Value::Table(table) => {
                if let Some(problem) = oversized(&table) {
                    return Err(FilterError::ScriptLimit(format!(
                        "Lua {} returned a table that {problem}",
                        self.name
                    )));
                }
                lua.from_value::<Value>(mlua::Value::Table(table))
                    .map_err(|e| {
                        FilterError::Script(format!(
                            "Lua {} returned a table that is not JSON: {e}",
                            self.name
                        ))
                    })
            }
            other => Err(FilterError::Script(format!(
                "Lua {} returned {}, not a table",
                self.name,
                other.type_name()
            ))),
        })
    }
}

/// What is wrong with a transform's result as JSON: nested deeper than
/// [`MAX_RESULT_DEPTH`] (a table that contains itself is endlessly deep),
/// or more than [`MAX_RESULT_VALUES`] keys and values once written out (a
/// sub-table referenced twice is written twice). Walks without recursion
/// and stops at the first limit: the conversion to JSON after it runs
/// without the instruction hook, so it must be bounded before it starts.
fn oversized(result: &Table) -> Option<String> {
    let mut pending = vec![(result.clone(), 0usize)];
    let mut values = 0usize;
    let mut string_bytes = 0usize;
    while let Some((table, depth)) = pending.pop() {
        if depth >= MAX_RESULT_DEPTH {
            return Some(format!("nests deeper than {MAX_RESULT_DEPTH} tables"));
        }
        for pair in table.pairs::<mlua::Value, mlua::Value>() {
            let Ok((key, value)) = pair else { continue };
            values += 2;
            if values > MAX_RESULT_VALUES {
                return Some(format!("has more than {MAX_RESULT_VALUES} keys and values"));
            }
            for child in [key, value] {
                match child {
                    mlua::Value::Table(child) => pending.push((child, depth + 1)),
                    mlua::Value::String(text) => {
                        string_bytes = string_bytes.saturating_add(text.as_bytes().len());
                        if string_bytes > MAX_RESULT_STRING_BYTES {
                            return Some(format!(
                                "has more than {MAX_RESULT_STRING_BYTES} bytes of strings"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    None
}

/// A Lua state with the safe libraries only.
fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
        LuaOptions::default(),
    )?;
    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.set(name, mlua::Value::Nil)?;
    }
    guard_patterns(&lua)?;
    guard_unhooked_loops(&lua)?;
    Ok(lua)
}

/// Closes two ways to run without the instruction hook: a `__gc`
/// finalizer (Lua turns hooks off while finalizers run, so `__gc = function()
/// while true do end end` could never be stopped) — `setmetatable` refuses
/// a metatable with `__gc`, which Lua only honours when it is present at
/// that call — and `table.move` over a huge index range (a C loop that
/// allocates nothing when it moves nils).
fn guard_unhooked_loops(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let setmetatable: Function = globals.get("setmetatable")?;
    let guarded = lua.create_function(move |_, args: MultiValue| {
        if let Some(mlua::Value::Table(metatable)) = args.get(1) {
            if !matches!(metatable.raw_get::<mlua::Value>("__gc")?, mlua::Value::Nil) {
                return Err(mlua::Error::RuntimeError(
                    "setmetatable refused: __gc finalizers are not allowed (they run where no limit can stop them)".to_string(),
                ));
            }
        }
        setmetatable.call::<MultiValue>(args)
    })?;
    globals.set("setmetatable", guarded)?;
    let table: Table = globals.get("table")?;
    let original: Function = table.get("move")?;
    let guarded = lua.create_function(move |_, args: MultiValue| {
        let index = |i: usize| match args.get(i) {
            Some(mlua::Value::Integer(n)) => Some(*n),
            Some(mlua::Value::Number(n)) if n.fract() == 0.0 => Some(*n as i64),
            _ => None,
        };
        if let (Some(first), Some(end)) = (index(1), index(2)) {
            if end.saturating_sub(first) >= MAX_TABLE_MOVE {
                return Err(mlua::Error::RuntimeError(format!(
                    "table.move refused: more than {MAX_TABLE_MOVE} elements"
                )));
            }
        }
        original.call::<MultiValue>(args)
    })?;
    table.set("move", guarded)?;
    Ok(())
}

/// Replaces the pattern functions of `string` (and so of string methods,
/// `s:find(...)`) with versions that refuse a call whose worst-case cost is
/// over [`PATTERN_STEP_LIMIT`] before the C matcher starts.
fn guard_patterns(lua: &Lua) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    for (name, anchorable, plain_at) in PATTERN_FUNCTIONS {
        let original: Function = string.get(name)?;
        let guarded = lua.create_function(move |_, args: MultiValue| {
            let plain = plain_at
                .and_then(|i| args.get(i))
                .is_some_and(|flag| !matches!(flag, mlua::Value::Nil | mlua::Value::Boolean(false)));
            if let (Some(mlua::Value::String(subject)), Some(mlua::Value::String(pattern))) =
                (args.front(), args.get(1))
            {
                let (subject_len, pattern) = (subject.as_bytes().len(), pattern.as_bytes());
                // Each matching step may compare the whole pattern (a long
                // literal), and a plain find compares it at every start.
                let per_step = pattern.len() as f64 + 1.0;
                let steps = if plain {
                    subject_len as f64 * per_step
                } else {
                    worst_case_steps(&pattern, subject_len, anchorable) * per_step
                };
                if steps > PATTERN_STEP_LIMIT {
                    return Err(mlua::Error::RuntimeError(format!(
                        "string.{name} refused: pattern {:?} on a {subject_len}-byte string could take up to {steps:.1e} matching steps (limit {PATTERN_STEP_LIMIT:.0e}); anchor it with ^, use fewer * + - ? items, or match a shorter string",
                        String::from_utf8_lossy(&pattern)
                    )));
                }
            }
            original.call::<MultiValue>(args)
        })?;
        string.set(name, guarded)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    /// A budget no test reaches.
    fn budget() -> Budget {
        Budget::starting_now(Duration::from_secs(3600))
    }

    #[test]
    fn filter_table() {
        let data =
            json!({"body": {"kind": "order", "total": 42, "items": [1, 2, 3], "none": null}});
        // (script, expected: Some(pass) / None = error)
        let cases = [
            ("return event.body.kind == 'order'", Some(true)),
            ("return event.body.total > 50", Some(false)),
            (
                "return #event.body.items == 3 and event.body.items[1] == 1",
                Some(true),
            ),
            ("return event.body.none == nil", Some(true)),
            (
                "return string.upper(event.body.kind) == 'ORDER'",
                Some(true),
            ),
            // Errors: a runtime error, a result that is not a bool, no result.
            ("return event.body.missing.field", None),
            ("return 1", None),
            ("local x = 1", None),
            ("error('boom')", None),
            // No file or process access, and no way to catch the limits.
            ("return io.open('/etc/passwd') ~= nil", None),
            ("return os.execute('true')", None),
            ("return pcall(function() end)", None),
            ("return load('return true')()", None),
        ];
        for (i, (source, expected)) in cases.iter().enumerate() {
            let script = LuaScript::compile(source, "filter script").expect("compiles");
            let got = script.evaluate_bool(&data, &budget());
            assert_eq!(
                got.as_ref().ok().copied(),
                *expected,
                "case {i}: {source} -> {got:?}"
            );
        }
    }

    #[test]
    fn endless_loop_is_stopped_by_the_instruction_limit() {
        let script = LuaScript::compile("while true do end", "filter script")
            .expect("compiles")
            .with_instruction_limit(50_000);
        let err = script
            .evaluate_bool(&json!({}), &budget())
            .expect_err("must stop");
        assert!(matches!(err, FilterError::ScriptLimit(_)), "{err:?}");
        // The next evaluation is a fresh state and works.
        let ok = LuaScript::compile("return true", "filter script").expect("compiles");
        assert_eq!(ok.evaluate_bool(&json!({}), &budget()).ok(), Some(true));
    }

    #[test]
    fn default_instruction_limit_stops_a_loop() {
        let script = LuaScript::compile("local n = 0 while true do n = n + 1 end", "filter script")
            .expect("compiles");
        let err = script
            .evaluate_bool(&json!({}), &budget())
            .expect_err("must stop");
        assert!(err.to_string().contains("1000000 instructions"), "{err}");
    }

    #[test]
    fn memory_limit_stops_a_growing_script() {
        let script = LuaScript::compile(
            "local t = {} local s = string.rep('x', 1024 * 1024) for i = 1, 1000 do t[i] = s .. i end return true",
            "filter script",
        )
        .expect("compiles");
        let err = script
            .evaluate_bool(&json!({}), &budget())
            .expect_err("must stop");
        assert!(matches!(err, FilterError::ScriptLimit(_)), "{err:?}");
    }

    #[test]
    fn transform_returns_new_data() {
        let script = LuaScript::compile(
            "event.body.message = 'updated' event.extra = {1, 2} return event",
            "transform script",
        )
        .expect("compiles");
        let out = script
            .evaluate_table(&json!({"body": {"message": "hi", "n": 1}}), &budget())
            .expect("transforms");
        assert_eq!(
            out,
            json!({"body": {"message": "updated", "n": 1}, "extra": [1, 2]})
        );
        let bad = LuaScript::compile("return 'x'", "transform script").expect("compiles");
        assert!(bad.evaluate_table(&json!({}), &budget()).is_err());
    }

    #[test]
    fn results_that_would_not_fit_in_json_are_errors() {
        for (source, problem) in [
            // 2^40 values once written out, from 40 tables.
            (
                "local t = {1} for i = 1, 40 do t = {a = t, b = t} end return t",
                "more than 1000000",
            ),
            ("local t = {} t.self = t return t", "deeper than 128"),
            (
                "local t = {} for i = 1, 200 do t = {t} end return t",
                "deeper than 128",
            ),
            // One 4 MiB string shared 100 000 times: 400 GB written out.
            (
                "local s = ('x'):rep(2^22) local t = {} for i = 1, 100000 do t[i] = s end return t",
                "bytes of strings",
            ),
        ] {
            let script = LuaScript::compile(source, "transform script").expect("compiles");
            let err = script
                .evaluate_table(&json!({}), &budget())
                .expect_err(source);
            assert!(
                matches!(&err, FilterError::ScriptLimit(m) if m.contains(problem)),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn syntax_error_does_not_compile() {
        let err = LuaScript::compile("return event.", "filter script").expect_err("syntax error");
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn the_deadline_stops_a_loop_the_instruction_limit_would_not() {
        let script = LuaScript::compile("while true do end", "filter script")
            .expect("compiles")
            .with_instruction_limit(u64::MAX);
        let past = Budget::starting_now(Duration::ZERO);
        let err = script
            .evaluate_bool(&json!({}), &past)
            .expect_err("must stop");
        assert_eq!(
            err,
            FilterError::Evaluation(EvaluationError::DeadlineExceeded {
                timeout: Duration::ZERO
            })
        );
    }

    #[test]
    fn a_pattern_bomb_is_refused_before_the_c_matcher_starts() {
        let bomb = r#"local s = ("a"):rep(200000); return s:find(("a*"):rep(12) .. "b") ~= nil"#;
        let script = LuaScript::compile(bomb, "filter script").expect("compiles");
        let err = script
            .evaluate_bool(&json!({}), &budget())
            .expect_err("refused");
        assert!(err.to_string().contains("string.find refused"), "{err}");
        // Each guarded function, called as a method or through `string`.
        for call in ["string.match(s, p)", "s:gmatch(p)", "s:gsub(p, '')"] {
            let source = format!(
                r#"local s = ("a"):rep(200000); local p = ("a*"):rep(12) .. "b"; return {call} ~= nil"#
            );
            let script = LuaScript::compile(&source, "filter script").expect("compiles");
            let err = script
                .evaluate_bool(&json!({}), &budget())
                .expect_err("refused");
            assert!(err.to_string().contains("refused"), "{call}: {err}");
        }
    }

    #[test]
    fn loops_the_hook_cannot_see_are_refused() {
        for (source, problem) in [
            // Finalizers run with hooks off.
            (
                "setmetatable({}, {__gc = function() while true do end end}) return true",
                "__gc finalizers are not allowed",
            ),
            // A C loop over 4.6e18 nils.
            (
                "table.move({}, 1, math.maxinteger // 2, 1, {}) return true",
                "table.move refused",
            ),
            // A long literal pattern: each start compares it all.
            (
                r#"local s = ("a"):rep(2^22) return s:match(("a"):rep(2^21) .. "b") ~= nil"#,
                "string.match refused",
            ),
            // A plain find is O(subject × needle) too.
            (
                r#"local s = ("a"):rep(2^22) return s:find(("a"):rep(2^20) .. "b", 1, true) ~= nil"#,
                "string.find refused",
            ),
        ] {
            let script = LuaScript::compile(source, "filter script").expect("compiles");
            let err = script
                .evaluate_bool(&json!({}), &budget())
                .expect_err(source);
            assert!(err.to_string().contains(problem), "{source}: {err}");
        }
        // Metatables without __gc, and small moves, still work.
        let fine = LuaScript::compile(
            "local t = setmetatable({}, {__index = function() return 1 end}) \
             local u = table.move({1, 2, 3}, 1, 3, 1, {}) return t.x == 1 and #u == 3",
            "filter script",
        )
        .expect("compiles");
        assert_eq!(fine.evaluate_bool(&json!({}), &budget()).ok(), Some(true));
    }

    #[test]
    fn ordinary_pattern_calls_still_work() {
        let data = json!({"body": {"text": "order=42 from shop", "list": "a,b,c"}});
        let cases = [
            "return event.body.text:find('order') == 1",
            "return event.body.text:match('^(%w+)=') == 'order'",
            "return select(2, event.body.list:gsub(',', ';')) == 2",
            "local n = 0 for _ in event.body.list:gmatch('%a') do n = n + 1 end return n == 3",
            // `plain` find is a substring search: no pattern, no check.
            "local s = ('a'):rep(200000) return s:find(('a*'):rep(12), 1, true) == nil",
        ];
        for source in cases {
            let script = LuaScript::compile(source, "filter script").expect("compiles");
            assert_eq!(script.evaluate_bool(&data, &budget()), Ok(true), "{source}");
        }
    }
}
