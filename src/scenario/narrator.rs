//! Tells in a few lines what a pipeline under a spike is doing, from its
//! status document read once a second.
//!
//! [`Narrator::observe`] is a pure function of the readings it was fed (no
//! clock, no I/O): the caller passes each [`Reading`] with its time, so
//! tests feed a sequence and assert the exact lines. Each kind of line is
//! said once per run, when its transition happens, never once per second:
//! the bus starts filling (depth above 10 % of `max_msgs`), shedding
//! starts, the bus is full (a `bus_full` refusal), the spike is over, the
//! bus has drained. Memory: the last [`RATE_WINDOW`] readings.

use crate::api::status::Status;
use std::collections::VecDeque;
use std::time::Duration;

/// Readings the trigger rate is averaged over.
pub const RATE_WINDOW: usize = 3;

/// The numbers the narrator needs from one status document.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    /// Since the storm started.
    pub at: Duration,
    /// Events on the bus, and the bus's `max_msgs` (if bounded).
    pub depth: u64,
    pub max_msgs: Option<u64>,
    /// Webhook refusals so far, summed over sources.
    pub shed: u64,
    pub bus_full: u64,
    /// Successful trigger invocations so far, summed over triggers.
    pub triggered: u64,
    /// Consumer lag summed over triggers, and events fetched but not yet
    /// acked (`ack_pending`; the status's `inflight` counts reserved
    /// concurrency slots, which an idle trigger holds too).
    pub lag: u64,
    pub ack_pending: u64,
    /// The `Retry-After` (seconds) of the latest `bus_full` answer the
    /// storm got, if any.
    pub bus_full_retry_after: Option<u64>,
}

impl Reading {
    /// Reads `status`, taken `at` after the storm started.
    pub fn from_status(
        at: Duration,
        status: &Status,
        bus_full_retry_after: Option<u64>,
    ) -> Reading {
        let outcome = |name: &str| -> u64 {
            status
                .sources
                .iter()
                .filter_map(|s| s.outcomes.get(name))
                .sum()
        };
        Reading {
            at,
            depth: status.bus.messages,
            max_msgs: status.bus.limits.max_msgs,
            shed: outcome("shed"),
            bus_full: outcome("bus_full"),
            triggered: status
                .triggers
                .iter()
                .filter_map(|t| t.invocations.get("success"))
                .sum(),
            lag: status.triggers.iter().map(|t| t.lag).sum(),
            ack_pending: status.triggers.iter().map(|t| t.ack_pending).sum(),
            bus_full_retry_after,
        }
    }
}

/// What the narrator knows of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// When the peak ends (since the storm started).
    pub peak_end: Duration,
    /// The webhook's `shedPriorityAbove`.
    pub shed_priority_above: u32,
}

/// Turns readings into lines; see the module docs.
#[derive(Debug)]
pub struct Narrator {
    plan: Plan,
    recent: VecDeque<Reading>,
    filling: bool,
    shedding: bool,
    full: bool,
    peak_over: bool,
    drained: bool,
}

impl Narrator {
    pub fn new(plan: Plan) -> Narrator {
        Narrator {
            plan,
            recent: VecDeque::with_capacity(RATE_WINDOW),
            filling: false,
            shedding: false,
            full: false,
            peak_over: false,
            drained: false,
        }
    }

    /// Triggers per second over the recent readings and `now`.
    fn trigger_rate(&self, now: &Reading) -> Option<f64> {
        let first = self.recent.front()?;
        let seconds = now.at.checked_sub(first.at)?.as_secs_f64();
        (seconds > 0.0).then(|| now.triggered.saturating_sub(first.triggered) as f64 / seconds)
    }

    /// The lines `reading` gives rise to (usually none).
    pub fn observe(&mut self, reading: Reading) -> Vec<String> {
        let mut lines = Vec::new();
        let t = reading.at.as_secs();
        let of_max = |depth: u64| match reading.max_msgs {
            Some(max) => format!("{depth}/{max}"),
            None => depth.to_string(),
        };
        let previous = self.recent.back().copied();
        let rate = self.trigger_rate(&reading);
        let rate_text = rate.map_or_else(String::new, |r| format!(", triggers at {r:.0}/s"));

        if !self.filling {
            let threshold = reading.max_msgs.map_or(1, |max| (max / 10).max(1));
            if reading.depth >= threshold {
                self.filling = true;
                lines.push(format!(
                    "[{t:>3}s] bus filling: {} events{rate_text}",
                    of_max(reading.depth)
                ));
            }
        }
        if let Some(previous) = previous {
            if !self.shedding && reading.shed > previous.shed {
                self.shedding = true;
                lines.push(format!(
                    "[{t:>3}s] shedding priority > {}: 429 shed with Retry-After 5 s (bus {}; priority 0 is never shed)",
                    self.plan.shed_priority_above,
                    of_max(reading.depth)
                ));
            }
            if !self.full && reading.bus_full > previous.bus_full {
                self.full = true;
                let wait = reading
                    .bus_full_retry_after
                    .map_or_else(String::new, |s| format!(", Retry-After {s} s"));
                lines.push(format!(
                    "[{t:>3}s] bus full ({}): 429 bus_full{wait}{rate_text}",
                    of_max(reading.depth)
                ));
            }
        }
        if !self.peak_over && reading.at >= self.plan.peak_end {
            self.peak_over = true;
            let draining = rate.map_or_else(String::new, |r| format!(", draining at {r:.0}/s"));
            lines.push(format!(
                "[{t:>3}s] spike over: {} events on the bus{draining}",
                of_max(reading.depth)
            ));
        }
        if self.filling
            && self.peak_over
            && !self.drained
            && reading.depth == 0
            && reading.lag == 0
            && reading.ack_pending == 0
        {
            self.drained = true;
            let after = reading.at.saturating_sub(self.plan.peak_end).as_secs();
            lines.push(format!(
                "[{t:>3}s] drained in {after} s after the spike: bus empty, every trigger caught up"
            ));
        }

        if self.recent.len() == RATE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(reading);
        lines
    }

    /// Whether the bus has been seen empty after the spike.
    pub fn drained(&self) -> bool {
        self.drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            peak_end: Duration::from_secs(6),
            shed_priority_above: 2,
        }
    }

    /// A reading at second `at` with `depth` of 1000 and the given counters.
    fn r(at: u64, depth: u64, shed: u64, bus_full: u64, triggered: u64) -> Reading {
        Reading {
            at: Duration::from_secs(at),
            depth,
            max_msgs: Some(1000),
            shed,
            bus_full,
            triggered,
            lag: depth,
            ack_pending: 0,
            bus_full_retry_after: (bus_full > 0).then_some(2),
        }
    }

    fn narrate(readings: &[Reading]) -> Vec<String> {
        let mut n = Narrator::new(plan());
        readings.iter().flat_map(|x| n.observe(*x)).collect()
    }

    #[test]
    fn a_spike_is_told_once_per_transition() {
        let lines = narrate(&[
            r(0, 0, 0, 0, 0),
            r(1, 50, 0, 0, 100),
            r(2, 300, 0, 0, 200),
            r(3, 800, 10, 0, 300),
            r(4, 1000, 40, 5, 400),
            r(5, 1000, 90, 30, 500),
            r(6, 700, 90, 30, 800),
            r(7, 400, 90, 30, 1100),
            r(8, 0, 90, 30, 1400),
            r(9, 0, 90, 30, 1400),
        ]);
        assert_eq!(
            lines,
            vec![
                "[  2s] bus filling: 300/1000 events, triggers at 100/s",
                "[  3s] shedding priority > 2: 429 shed with Retry-After 5 s (bus 800/1000; priority 0 is never shed)",
                "[  4s] bus full (1000/1000): 429 bus_full, Retry-After 2 s, triggers at 100/s",
                "[  6s] spike over: 700/1000 events on the bus, draining at 167/s",
                "[  8s] drained in 2 s after the spike: bus empty, every trigger caught up",
            ]
        );
    }

    #[test]
    fn a_quiet_run_says_only_that_the_spike_is_over() {
        let lines = narrate(&[r(0, 0, 0, 0, 0), r(5, 20, 0, 0, 50), r(7, 0, 0, 0, 70)]);
        // Never filled: no "drained" line either.
        assert_eq!(
            lines,
            vec!["[  7s] spike over: 0/1000 events on the bus, draining at 10/s"]
        );
    }

    #[test]
    fn refusals_counted_before_the_first_reading_are_not_news() {
        // The first reading has nothing to compare with.
        let lines = narrate(&[r(0, 0, 5, 5, 0), r(1, 0, 5, 5, 0)]);
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn drained_needs_the_triggers_to_have_caught_up() {
        let mut n = Narrator::new(plan());
        n.observe(r(0, 0, 0, 0, 0));
        n.observe(r(1, 500, 0, 0, 0));
        n.observe(r(6, 10, 0, 0, 0));
        let busy = Reading {
            ack_pending: 3,
            ..r(7, 0, 0, 0, 0)
        };
        assert!(n.observe(busy).is_empty());
        assert!(!n.drained());
        assert_eq!(n.observe(r(8, 0, 0, 0, 0)).len(), 1);
        assert!(n.drained());
    }
}
