//! Crash points for tests that must kill the process at an exact step.
//!
//! `kill -9` from a test lands wherever the process happens to be; some
//! guarantees are about one precise window (the trigger succeeded but the
//! bus has not been acked yet). Setting `SPILLWAY_CRASH_AT=<point>` makes the
//! process abort — no destructors, no flush, like `kill -9` — the first time
//! it reaches that point. Unset (always, in production) a crash point costs
//! one load of an initialised `OnceLock`.
//!
//! Points: see [`CrashPoint`].

use std::sync::OnceLock;

/// The environment variable naming the crash point to abort at.
pub const CRASH_AT_ENV: &str = "SPILLWAY_CRASH_AT";

/// A step at which a test can ask the process to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A trigger call succeeded; its bus message is not acked yet.
    AfterTriggerSuccess,
}

impl CrashPoint {
    /// The value of `SPILLWAY_CRASH_AT` that selects this point.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterTriggerSuccess => "after-trigger-success",
        }
    }
}

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(CRASH_AT_ENV).ok())
        .as_deref()
}

/// Aborts the process if `SPILLWAY_CRASH_AT` names `point`.
pub fn crash_point(point: CrashPoint) {
    if armed() == Some(point.name()) {
        // stderr is unbuffered: the test can see why the process died.
        eprintln!("{CRASH_AT_ENV}={}: aborting here on purpose", point.name());
        std::process::abort();
    }
}
