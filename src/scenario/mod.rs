//! Built-in scenarios: a pipeline (YAML shipped in `examples/scenarios/`
//! and embedded here, so `spillway storm --scenario NAME` needs no file),
//! the storm that hits it, and the checks its run must pass.
//!
//! - [`downstream`]: the built-in slow downstream that records ids.
//! - [`narrator`]: a few lines about what the pipeline does, from status.
//! - [`checks`]: the verdict and `scenario.md`.
//! - [`runner`]: starts it all in-process, runs, checks, reports.
//!
//! A scenario's YAML is used as written except for the few exact strings
//! [`Scenario::pipeline_yaml`] rewrites (webhook port, downstream URL and,
//! when scaled, the bus size and shedding threshold); each must occur
//! exactly once, which a test checks, so the file and the code cannot
//! drift apart unnoticed.

pub mod checks;
pub mod downstream;
pub mod narrator;
pub mod runner;

use crate::storm::priority_mix::PriorityMix;
use crate::storm::profile::Profile;
use std::time::Duration;

/// A scenario that cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("unknown scenario {name:?}; built-in: {known}")]
    Unknown { name: String, known: String },
    #[error("scenario {scenario}: {find:?} occurs {count} times in its YAML, expected once")]
    Template {
        scenario: &'static str,
        find: String,
        count: usize,
    },
    #[error("scale {0} must be above 0 and at most 1")]
    Scale(f64),
    #[error("scenario storm: {0}")]
    Storm(String),
}

/// The storm a scenario runs (open loop, spike profile).
#[derive(Debug, Clone, Copy)]
pub struct StormPlan {
    pub base: f64,
    pub peak: f64,
    pub base_for: Duration,
    pub peak_for: Duration,
    pub priorities: &'static str,
    pub payload_bytes: usize,
    pub max_outstanding: usize,
    /// Retries per event after a 429's `Retry-After`, at most (clients
    /// that give up, so shed events do not pile up as retries forever).
    pub max_retries: u32,
    pub timeout: Duration,
}

/// A built-in scenario; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    /// Where the YAML is shipped, relative to the repository.
    pub file: &'static str,
    pub yaml: &'static str,
    /// Webhook path the storm posts to.
    pub endpoint: &'static str,
    /// The exact strings of the YAML that are rewritten.
    pub port_text: &'static str,
    pub downstream_text: &'static str,
    /// The bus's `max_msgs`, `max_bytes` and the webhook's
    /// `queueDepthAbove` and `shedPriorityAbove`, as in the YAML.
    pub max_msgs: u64,
    pub max_bytes: u64,
    pub shed_depth: u64,
    pub shed_priority_above: u32,
    /// The trigger's `rateLimit` (events/s).
    pub rate_limit: f64,
    pub storm: StormPlan,
    /// Latency of the built-in downstream per request.
    pub downstream_latency: Duration,
    /// How long to wait for the bus to drain after the storm.
    pub drain_limit: Duration,
    /// Resident memory spillway must stay under (a sanity bound: the bus
    /// is on disk, so this catches an unbounded buffer, not a few MiB).
    pub rss_limit: u64,
    /// How it was scaled to a 2-core machine, for the report.
    pub scaling: &'static str,
}

/// Scenario 1 (seed 004): the midnight spike.
pub const MIDNIGHT_SPIKE: Scenario = Scenario {
    name: "midnight-spike",
    summary: "base rate, then 5x for a minute, then base again, into a 300/s drain: bus bounded, no accepted event lost, 429 + Retry-After, priority 0 never shed, recovery",
    file: "examples/scenarios/midnight-spike.yaml",
    yaml: include_str!("../../examples/scenarios/midnight-spike.yaml"),
    endpoint: "/impressions",
    port_text: "port: \"12000\"",
    downstream_text: "url: http://127.0.0.1:12001/sink",
    max_msgs: 15_000,
    max_bytes: 32 * 1024 * 1024,
    shed_depth: 11_250,
    shed_priority_above: 2,
    rate_limit: 300.0,
    storm: StormPlan {
        base: 200.0,
        peak: 1000.0,
        base_for: Duration::from_secs(30),
        peak_for: Duration::from_secs(60),
        priorities: "0:10,2:40,5:50",
        payload_bytes: 256,
        max_outstanding: 8000,
        max_retries: 2,
        timeout: Duration::from_secs(10),
    },
    downstream_latency: Duration::from_millis(5),
    drain_limit: Duration::from_secs(300),
    rss_limit: 512 * 1024 * 1024,
    scaling: "seed 004's 100k/s -> 500k/s is 200/s -> 1000/s here (5x for 60 s between 30 s of base), the broker a 15000-event / 32 MiB bus, the consumer an http trigger held to 300/s",
};

/// Every built-in scenario.
pub const SCENARIOS: &[Scenario] = &[MIDNIGHT_SPIKE];

/// The built-in scenario `name`.
pub fn find(name: &str) -> Result<&'static Scenario, ScenarioError> {
    SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ScenarioError::Unknown {
            name: name.to_string(),
            known: SCENARIOS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// How a scenario is shrunk, each factor in (0, 1]: durations by `time`,
/// the bus size and the shedding threshold by `bus`, the storm's rates and
/// the trigger's rateLimit by `rate` (so a slow debug build on a busy
/// machine can still run a faithful miniature).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub time: f64,
    pub bus: f64,
    pub rate: f64,
}

impl Scale {
    pub const FULL: Scale = Scale {
        time: 1.0,
        bus: 1.0,
        rate: 1.0,
    };

    pub fn check(&self) -> Result<(), ScenarioError> {
        for v in [self.time, self.bus, self.rate] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(ScenarioError::Scale(v));
            }
        }
        Ok(())
    }
}

/// `text` with the one occurrence of `find` replaced.
fn replace_once(
    scenario: &'static str,
    text: &str,
    find: &str,
    with: &str,
) -> Result<String, ScenarioError> {
    match text.matches(find).count() {
        1 => Ok(text.replacen(find, with, 1)),
        count => Err(ScenarioError::Template {
            scenario,
            find: find.to_string(),
            count,
        }),
    }
}

fn scaled(n: u64, by: f64) -> u64 {
    ((n as f64 * by).round() as u64).max(1)
}

impl Scenario {
    pub fn max_msgs_at(&self, scale: Scale) -> u64 {
        scaled(self.max_msgs, scale.bus)
    }

    pub fn shed_depth_at(&self, scale: Scale) -> u64 {
        scaled(self.shed_depth, scale.bus)
    }

    pub fn rate_limit_at(&self, scale: Scale) -> f64 {
        scaled(self.rate_limit as u64, scale.rate) as f64
    }

    /// The YAML to run: the webhook on `port`, the trigger posting to
    /// `downstream`, the bus and shedding threshold scaled.
    pub fn pipeline_yaml(
        &self,
        port: u16,
        downstream: &str,
        scale: Scale,
    ) -> Result<String, ScenarioError> {
        let yaml = replace_once(
            self.name,
            self.yaml,
            self.port_text,
            &format!("port: \"{port}\""),
        )?;
        let yaml = replace_once(
            self.name,
            &yaml,
            self.downstream_text,
            &format!("url: {downstream}"),
        )?;
        let yaml = replace_once(
            self.name,
            &yaml,
            &format!("max_msgs: {}", self.max_msgs),
            &format!("max_msgs: {}", self.max_msgs_at(scale)),
        )?;
        let yaml = replace_once(
            self.name,
            &yaml,
            &format!("queueDepthAbove: {}", self.shed_depth),
            &format!("queueDepthAbove: {}", self.shed_depth_at(scale)),
        )?;
        replace_once(
            self.name,
            &yaml,
            &format!("requestsPerUnit: {}", self.rate_limit),
            &format!("requestsPerUnit: {}", self.rate_limit_at(scale)),
        )
    }

    /// The storm's phases at `scale`: base, peak, base.
    pub fn phases(&self, scale: Scale) -> (Duration, Duration) {
        (
            self.storm.base_for.mul_f64(scale.time),
            self.storm.peak_for.mul_f64(scale.time),
        )
    }

    pub fn profile(&self, scale: Scale) -> Result<Profile, ScenarioError> {
        let (base_for, peak_for) = self.phases(scale);
        Profile::spike(
            self.storm.base * scale.rate,
            self.storm.peak * scale.rate,
            base_for,
            peak_for,
        )
        .map_err(|e| ScenarioError::Storm(e.to_string()))
    }

    pub fn priorities(&self) -> Result<PriorityMix, ScenarioError> {
        PriorityMix::parse(self.storm.priorities).map_err(|e| ScenarioError::Storm(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rewritten_string_occurs_once_and_is_rewritten() {
        for s in SCENARIOS {
            let half = Scale {
                time: 0.5,
                bus: 0.5,
                rate: 0.5,
            };
            let yaml = s
                .pipeline_yaml(4242, "http://127.0.0.1:9/sink", half)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(yaml.contains("port: \"4242\""), "{yaml}");
            assert!(yaml.contains("url: http://127.0.0.1:9/sink"), "{yaml}");
            assert!(yaml.contains(&format!("max_msgs: {}", s.max_msgs / 2)));
            assert!(yaml.contains(&format!("queueDepthAbove: {}", s.shed_depth / 2)));
            assert!(yaml.contains(&format!("shedPriorityAbove: {}", s.shed_priority_above)));
            assert!(yaml.contains(&format!("requestsPerUnit: {}", s.rate_limit / 2.0)));
            assert!(yaml.contains(&format!("endpoint: {}", s.endpoint)));
            assert!(s.yaml.contains("max_bytes: 32MiB") && s.max_bytes == 32 << 20);
            // Unscaled, only the addresses change.
            let full = s.pipeline_yaml(12000, "http://127.0.0.1:12001/sink", Scale::FULL);
            assert_eq!(full.ok().as_deref(), Some(s.yaml));
        }
    }

    #[test]
    fn the_peak_is_five_times_the_base_and_scenarios_are_found_by_name() {
        let s = find("midnight-spike").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.storm.peak, 5.0 * s.storm.base);
        assert!(s.profile(Scale::FULL).is_ok() && s.priorities().is_ok());
        let err = find("noon").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown scenario \"noon\"; built-in: midnight-spike")
        );
        let bad = |time, bus, rate| Scale { time, bus, rate }.check().is_err();
        assert!(bad(0.0, 1.0, 1.0) && bad(1.0, 1.5, 1.0) && bad(1.0, 1.0, f64::NAN));
        assert!(!bad(0.1, 0.02, 0.2));
    }
}
