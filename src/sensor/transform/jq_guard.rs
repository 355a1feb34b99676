//! Stopping a jq (jaq) evaluation from inside: a step limit, the
//! evaluation's deadline, and a recursion-depth limit.
//!
//! jaq-core 3.1 has no step limit and no cancellation API, but two of its
//! extension points see every step: the interpreter asks the evaluation
//! context's data for the program's look-up table ([`HasLut::lut`]) once per
//! term it runs, and native filters are plain functions. So programs are
//! compiled for [`Guarded`] data, whose `lut()` counts a step, and `range`,
//! the one native filter that makes values without running terms, is
//! replaced by a copy that counts a step per value. Every
//! [`CHECK_EVERY`] steps the thread's [`Budget`] is checked. When the step
//! limit, the budget or the stack allowance ([`STACK_ALLOWANCE`] below the
//! point where [`run_guarded`] was entered) runs out, the step unwinds the
//! evaluation with a private payload (`resume_unwind`: no panic message)
//! and [`run_guarded`] turns it into an error; jaq's values for that
//! evaluation are dropped on the way. Outside [`run_guarded`] a step counts
//! nothing.
//!
//! `fromjson` is replaced too: jaq's JSON parser recurses without a limit,
//! so text nested deeper than [`MAX_PARSE_DEPTH`] is refused first.
//!
//! Not covered: one native operation that takes long or allocates a lot on
//! its own runs to its end, because no step is counted inside it —
//! `"x" * 1e9` (string repetition allocates 1 GB at once), and `tojson`,
//! `tostring` or comparisons of a value that shares structure
//! (`reduce range(60) as $i (1; [., .])` is 2⁶⁰ values when written out).
//! The pool's deadline and thread abandonment bound the time the sensor
//! waits for it; nothing bounds the memory such an operation takes.

use crate::sensor::evaluation::Budget;
use jaq_core::data::HasLut;
use jaq_core::native::{v, Fun};
use jaq_core::{Cv, DataT, Exn, Lut, Native, ValX, ValXs};
use jaq_json::Val;
use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Most interpreter steps (terms run, plus values `range` makes) of one
/// evaluation: the counterpart of the Lua instruction limit; a rewrite of
/// an event with a few thousand array items takes a few thousand steps. It
/// also bounds how deep a value can nest (each level costs ≈ 5 steps, so
/// ≈ 5 000 levels), and so the stack that printing, comparing or dropping a
/// value takes: printing costs ≈ 4 KiB of stack per level in a debug build,
/// ≈ 20 MiB at that depth, within a pool thread's stack.
pub const STEP_LIMIT: u64 = 25_000;
/// How often (steps) the budget's clock is read.
pub const CHECK_EVERY: u64 = 1024;
/// Stack one evaluation may use below where it started; deeper recursion
/// (`def f: 1 + f; f`) is stopped before it overflows the pool thread's
/// stack (`sensor::evaluation::pool::WORKER_STACK_SIZE`, 64 MiB).
pub const STACK_ALLOWANCE: usize = 8 * 1024 * 1024;

/// The data type programs are compiled for: jaq's JSON values, with a
/// context whose look-up is the step hook.
pub struct Guarded;

impl DataT for Guarded {
    type V<'a> = Val;
    type Data<'a> = GuardedLut<'a>;
}

/// The evaluation context's data: the program's look-up table.
#[derive(Clone)]
pub struct GuardedLut<'a>(pub &'a Lut<Guarded>);

impl<'a> HasLut<'a, Guarded> for GuardedLut<'a> {
    fn lut(&self) -> &'a Lut<Guarded> {
        step();
        self.0
    }
}

/// Why a guarded evaluation stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    Steps(u64),
    Deadline,
    TooDeep,
}

/// Payload of the unwind that stops an evaluation.
struct Stop(Interrupted);

struct Guard {
    budget: Budget,
    step_limit: u64,
    steps: u64,
    /// Stack address where the evaluation started (the stack grows down on
    /// every target spillway builds for).
    stack_base: usize,
}

thread_local! {
    static GUARD: RefCell<Option<Guard>> = const { RefCell::new(None) };
}

/// Runs `evaluation` on this thread with the step hook armed; `Err` when it
/// was stopped. A real panic inside is passed on.
pub fn run_guarded<T>(
    budget: &Budget,
    step_limit: u64,
    evaluation: impl FnOnce() -> T,
) -> Result<T, Interrupted> {
    let marker = 0u8;
    let guard = Guard {
        budget: budget.clone(),
        step_limit,
        steps: 0,
        stack_base: stack_address(&marker),
    };
    GUARD.with(|g| *g.borrow_mut() = Some(guard));
    let outcome = catch_unwind(AssertUnwindSafe(evaluation));
    GUARD.with(|g| *g.borrow_mut() = None);
    match outcome {
        Ok(value) => Ok(value),
        Err(payload) => match payload.downcast::<Stop>() {
            Ok(stop) => Err(stop.0),
            Err(other) => resume_unwind(other),
        },
    }
}

fn stack_address(marker: &u8) -> usize {
    std::hint::black_box(marker as *const u8 as usize)
}

/// Counts one step; unwinds when the evaluation must stop.
fn step() {
    let marker = 0u8;
    let here = stack_address(&marker);
    let stop = GUARD.with(|g| {
        let mut g = g.borrow_mut();
        let guard = g.as_mut()?;
        guard.steps += 1;
        if guard.steps > guard.step_limit {
            Some(Interrupted::Steps(guard.step_limit))
        } else if guard.stack_base.saturating_sub(here) > STACK_ALLOWANCE {
            Some(Interrupted::TooDeep)
        } else if guard.steps % CHECK_EVERY == 0 && guard.budget.exhausted() {
            Some(Interrupted::Deadline)
        } else {
            None
        }
    });
    if let Some(why) = stop {
        // Disarm first: drops during the unwind may still look up terms.
        GUARD.with(|g| *g.borrow_mut() = None);
        resume_unwind(Box::new(Stop(why)));
    }
}

/// Deepest nesting `fromjson` parses (jaq's parser recurses without a
/// limit; serde_json's limit).
pub const MAX_PARSE_DEPTH: usize = 128;

/// jaq's native filters, with `range/3` replaced by [`guarded_range`] and
/// `fromjson` by [`guarded_fromjson`], and without `env`: the process
/// environment holds secrets (`SPILLWAY_SECRET_…`), and a transform's
/// output is event data anyone downstream reads.
pub fn funs() -> impl Iterator<Item = Fun<Guarded>> {
    let replaced = |name: &str, arity: usize| {
        (name == "range" && arity == 3)
            || (name == "fromjson" && arity == 0)
            || (name == "env" && arity == 0)
    };
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(move |(name, arity, _)| !replaced(name, arity.len()))
        .chain([
            ("range", v(3), Native::<Guarded>::new(guarded_range)),
            ("fromjson", v(0), Native::<Guarded>::new(guarded_fromjson)),
        ])
}

/// `fromjson` as in jaq-json, refusing text nested deeper than
/// [`MAX_PARSE_DEPTH`] before parsing it.
fn guarded_fromjson<'a>(cv: Cv<'a, Guarded>) -> ValXs<'a, Val> {
    let fail = |message: String| -> ValXs<'a, Val> {
        Box::new(std::iter::once(Err(Exn::from(jaq_json::Error::str(
            message,
        )))))
    };
    let text = match cv.1.try_as_utf8_bytes_owned() {
        Ok(text) => text,
        Err(err) => return Box::new(std::iter::once(Err(Exn::from(err)))),
    };
    if json_nesting(&text) > MAX_PARSE_DEPTH {
        return fail(format!(
            "cannot parse as JSON: it nests deeper than {MAX_PARSE_DEPTH} arrays/objects"
        ));
    }
    // Up to and including the first error: the parser does not move past
    // the byte it fails on, so it would yield that error forever (and
    // after an error inside a string it would parse what `json_nesting`
    // took for string contents).
    let mut values: Vec<ValX<'a, Val>> = Vec::new();
    for parsed in jaq_json::read::parse_many(&text) {
        match parsed {
            Ok(value) => values.push(Ok(value)),
            Err(e) => {
                values.push(Err(Exn::from(jaq_json::Error::str(format_args!(
                    "cannot parse {} as JSON: {e}",
                    cv.1
                )))));
                break;
            }
        }
    }
    Box::new(values.into_iter())
}

/// The deepest `[`/`{` nesting of JSON text, strings skipped.
fn json_nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

/// `range($from; $to; $by)` as in jaq-core, counting a step per value.
fn guarded_range<'a>(mut cv: Cv<'a, Guarded>) -> ValXs<'a, Val> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let mut from: ValX<'a, Val> = Ok(cv.0.pop_var());
    let direction = by.partial_cmp(&Val::from(0isize)).unwrap_or(Equal);
    Box::new(std::iter::from_fn(move || {
        step();
        match from.clone() {
            Ok(x) => match direction {
                Greater => x < to,
                Less => x > to,
                Equal => x != to,
            }
            .then(|| std::mem::replace(&mut from, (x + by.clone()).map_err(Exn::from))),
            error @ Err(_) => {
                // One error, then the end.
                from = Ok(to.clone());
                Some(error)
            }
        }
    }))
}

/// What is wrong with `value` as an output: nested deeper than
/// `max_depth` arrays/objects, or more than `max_values` values once
/// written out (shared structure counted each time it appears). Walks
/// without recursion and stops at the first limit, so neither a deep nor a
/// shared value can make the check itself long or deep.
pub fn oversized(
    value: &Val,
    max_depth: usize,
    max_values: usize,
    max_string_bytes: usize,
) -> Option<String> {
    let mut pending = vec![(value, 0usize)];
    let mut values = 0usize;
    // Strings are shared too: one long string referenced many times.
    let mut string_bytes = 0usize;
    while let Some((value, depth)) = pending.pop() {
        values += 1;
        if values > max_values {
            return Some(format!("has more than {max_values} values"));
        }
        if let Val::TStr(bytes) | Val::BStr(bytes) = value {
            string_bytes = string_bytes.saturating_add(bytes.len());
            if string_bytes > max_string_bytes {
                return Some(format!("has more than {max_string_bytes} bytes of strings"));
            }
        }
        let children: Box<dyn Iterator<Item = &Val>> = match value {
            Val::Arr(items) => Box::new(items.iter()),
            Val::Obj(fields) => Box::new(fields.iter().flat_map(|(k, v)| [k, v])),
            _ => continue,
        };
        if depth >= max_depth {
            return Some(format!("nests deeper than {max_depth} arrays/objects"));
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    None
}
