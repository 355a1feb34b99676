//! Lua scripts for `filters.script` and `transform.script`, as in Argo: the
//! event data is the global table `event`; a filter script returns a bool, a
//! transform script returns the new event data (a table).
//!
//! Each evaluation runs in a fresh Lua 5.4 state, so nothing leaks from one
//! event to the next, with two limits that make a runaway script an error
//! on that one event, never a stuck or dead sensor:
//! - [`INSTRUCTION_LIMIT`] VM instructions, counted by
//!   a hook every [`HOOK_EVERY`] instructions;
//! - [`MEMORY_LIMIT`] bytes for the whole state, the event included.
//!
//! The state has the `string`, `table`, `math` and `utf8` libraries and the
//! safe base functions. Not available, unlike Argo: `io`, `os`, `package`,
//! `debug`, `coroutine`, `load`/`dofile`/`loadfile` (no file or process
//! access), and `pcall`/`xpcall` (they could catch the limit errors and keep
//! a loop going). A script is compiled once at start-up (a syntax error is a
//! config error) and each evaluation loads the compiled chunk. Evaluation
//! runs on the calling task: its cost is bounded by the instruction limit.

use super::FilterError;
use mlua::chunk::ChunkMode;
use mlua::{HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, VmState};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most Lua VM instructions one evaluation may run.
pub const INSTRUCTION_LIMIT: u64 = 1_000_000;
/// Most memory (bytes) one evaluation's Lua state may hold.
pub const MEMORY_LIMIT: usize = 16 * 1024 * 1024;
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
const LIMIT_MESSAGE: &str = "instruction limit reached";

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

    /// Runs the script with `data` as `event`; `convert` reads its result.
    fn run<T>(
        &self,
        data: &Value,
        convert: impl FnOnce(&Lua, mlua::Value) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        let executed = Arc::new(AtomicU64::new(0));
        let lua = sandbox().map_err(|e| self.error(e))?;
        lua.set_memory_limit(MEMORY_LIMIT)
            .map_err(|e| self.error(e))?;
        let limit = self.instruction_limit;
        let counter = Arc::clone(&executed);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let done = counter.fetch_add(u64::from(HOOK_EVERY), Ordering::Relaxed)
                    + u64::from(HOOK_EVERY);
                if done > limit {
                    Err(mlua::Error::RuntimeError(LIMIT_MESSAGE.to_string()))
                } else {
                    Ok(VmState::Continue)
                }
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
        match outcome {
            Ok(result) => convert(&lua, result),
            Err(_) if executed.load(Ordering::Relaxed) > limit => Err(FilterError::ScriptLimit(
                format!("Lua {} stopped after {limit} instructions", self.name),
            )),
            Err(mlua::Error::MemoryError(_)) => Err(FilterError::ScriptLimit(format!(
                "Lua {} went over {MEMORY_LIMIT} bytes",
                self.name
            ))),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: mlua::Error) -> FilterError {
        FilterError::Script(format!("Lua {}: {e}", self.name))
    }

    /// Runs a filter script: it must return `true` or `false`.
    pub fn evaluate_bool(&self, data: &Value) -> Result<bool, FilterError> {
        self.run(data, |_, result| match result {
            mlua::Value::Boolean(pass) => Ok(pass),
            other => Err(FilterError::Script(format!(
                "Lua {} returned {}, not a bool",
                self.name,
                other.type_name()
            ))),
        })
    }

    /// Runs a transform script: it must return a table, the new data.
    pub fn evaluate_table(&self, data: &Value) -> Result<Value, FilterError> {
        self.run(data, |lua, result| match result {
            table @ mlua::Value::Table(_) => lua.from_value::<Value>(table).map_err(|e| {
                FilterError::Script(format!(
                    "Lua {} returned a table that is not JSON: {e}",
                    self.name
                ))
            }),
            other => Err(FilterError::Script(format!(
                "Lua {} returned {}, not a table",
                self.name,
                other.type_name()
            ))),
        })
    }
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
    Ok(lua)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            let got = script.evaluate_bool(&data);
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
        let err = script.evaluate_bool(&json!({})).expect_err("must stop");
        assert!(matches!(err, FilterError::ScriptLimit(_)), "{err:?}");
        // The next evaluation is a fresh state and works.
        let ok = LuaScript::compile("return true", "filter script").expect("compiles");
        assert_eq!(ok.evaluate_bool(&json!({})).ok(), Some(true));
    }

    #[test]
    fn default_instruction_limit_stops_a_loop() {
        let script = LuaScript::compile("local n = 0 while true do n = n + 1 end", "filter script")
            .expect("compiles");
        let err = script.evaluate_bool(&json!({})).expect_err("must stop");
        assert!(err.to_string().contains("1000000 instructions"), "{err}");
    }

    #[test]
    fn memory_limit_stops_a_growing_script() {
        let script = LuaScript::compile(
            "local t = {} local s = string.rep('x', 1024 * 1024) for i = 1, 1000 do t[i] = s .. i end return true",
            "filter script",
        )
        .expect("compiles");
        let err = script.evaluate_bool(&json!({})).expect_err("must stop");
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
            .evaluate_table(&json!({"body": {"message": "hi", "n": 1}}))
            .expect("transforms");
        assert_eq!(
            out,
            json!({"body": {"message": "updated", "n": 1}, "extra": [1, 2]})
        );
        let bad = LuaScript::compile("return 'x'", "transform script").expect("compiles");
        assert!(bad.evaluate_table(&json!({})).is_err());
    }

    #[test]
    fn syntax_error_does_not_compile() {
        let err = LuaScript::compile("return event.", "filter script").expect_err("syntax error");
        assert!(err.contains("does not compile"), "{err}");
    }
}
