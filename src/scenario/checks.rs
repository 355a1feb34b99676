//! The verdict of a scenario run: what was measured ([`Facts`]), the
//! checks it passes or fails ([`Facts::checks`]) and `scenario.md`
//! ([`Facts::markdown`]). Pure: no I/O, no clock, so every check is
//! tested on made-up facts.

use super::narrator::Reading;
use crate::storm::recorder::Bucket;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// The pipeline as sampled once a second (by the scenario, during the
/// storm and the drain).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub reading: Reading,
    pub bus_bytes: u64,
    pub rss_bytes: Option<u64>,
}

/// Everything a scenario run measured.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub scenario: String,
    /// What the scenario was scaled to, in words, for the report.
    pub scaling: String,
    /// The command that reproduces the run.
    pub command: String,
    /// Machine and load, in words.
    pub machine: String,
    pub storm: Bucket,
    /// Ids the storm used (`storm-0` … `storm-<ids_used - 1>`).
    pub ids_used: u64,
    /// Distinct ids answered 2xx, and 2xx answers whose id was past the
    /// accepted-id set (not checkable).
    pub accepted_ids: u64,
    pub accepted_untracked: u64,
    pub rejected_without_retry_after: u64,
    /// Distinct storm ids the downstream received, extra arrivals of an id
    /// (at-least-once duplicates), requests without a checkable id.
    pub received_ids: u64,
    pub duplicates: u64,
    pub received_untracked: u64,
    /// Accepted ids the downstream never received, and the first few.
    pub lost: u64,
    pub lost_examples: Vec<u64>,
    /// `spillway_source_events_shed_total` by priority.
    pub shed_by_priority: BTreeMap<u8, u64>,
    pub shed_priority_above: u32,
    pub max_msgs: u64,
    pub max_bytes: u64,
    pub shed_depth: u64,
    /// Resident memory spillway must stay under (a sanity bound).
    pub rss_limit: u64,
    pub samples: Vec<Sample>,
    /// Phases of the storm, since it started.
    pub peak_start: Duration,
    pub peak_end: Duration,
    pub storm_end: Duration,
    /// The trigger's rateLimit (events/s).
    pub rate_limit: f64,
    /// How long after the storm the bus was waited for, and whether it
    /// drained in that time.
    pub drain_limit: Duration,
    pub drained: bool,
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// Triggers per second between the first and last sample in `from..to`.
pub fn trigger_rate(samples: &[Sample], from: Duration, to: Duration) -> Option<f64> {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.reading.at >= from && s.reading.at <= to)
        .collect();
    let (first, last) = (inside.first()?, inside.last()?);
    let seconds = last.reading.at.checked_sub(first.reading.at)?.as_secs_f64();
    (seconds >= 1.0).then(|| {
        last.reading
            .triggered
            .saturating_sub(first.reading.triggered) as f64
            / seconds
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".to_string(), |r| format!("{r:.0}/s"))
}

impl Facts {
    pub fn peak_depth(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.reading.depth)
            .max()
            .unwrap_or(0)
    }

    pub fn peak_bus_bytes(&self) -> u64 {
        self.samples.iter().map(|s| s.bus_bytes).max().unwrap_or(0)
    }

    pub fn peak_rss(&self) -> Option<u64> {
        self.samples.iter().filter_map(|s| s.rss_bytes).max()
    }

    /// Seconds from the end of the peak to the first sample at or under
    /// `depth`.
    pub fn after_peak_at_or_under(&self, depth: u64, idle: bool) -> Option<Duration> {
        self.samples
            .iter()
            .find(|s| {
                s.reading.at >= self.peak_end
                    && s.reading.depth <= depth
                    && (!idle || (s.reading.lag == 0 && s.reading.ack_pending == 0))
            })
            .map(|s| s.reading.at - self.peak_end)
    }

    fn shed_above(&self) -> u64 {
        self.shed_by_priority
            .iter()
            .filter(|(p, _)| u32::from(**p) > self.shed_priority_above)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn checks(&self) -> Vec<Check> {
        let t = &self.storm;
        let mut checks = Vec::new();
        checks.push(Check {
            name: "no accepted event lost",
            pass: self.lost == 0 && self.accepted_untracked == 0 && self.accepted_ids > 0,
            detail: format!(
                "{} ids accepted, {} received by the downstream, {} lost{}{}; {} duplicate deliveries (at-least-once)",
                self.accepted_ids,
                self.received_ids,
                self.lost,
                if self.lost_examples.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (e.g. {})",
                        self.lost_examples
                            .iter()
                            .map(|id| format!("storm-{id}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                if self.accepted_untracked > 0 {
                    format!(", {} accepted ids past the tracked range", self.accepted_untracked)
                } else {
                    String::new()
                },
                self.duplicates
            ),
        });
        let critical = self.shed_by_priority.get(&0).copied().unwrap_or(0);
        let shed_above = self.shed_above();
        checks.push(Check {
            name: "critical events never shed",
            pass: critical == 0 && shed_above > 0,
            detail: if shed_above == 0 {
                format!("nothing was shed: the bus never got past the shedding threshold ({}), so the run did not overload the pipeline", self.shed_depth)
            } else {
                format!(
                    "shed by priority: {} (priority 0: {critical})",
                    self.shed_by_priority
                        .iter()
                        .map(|(p, n)| format!("{p}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        });
        let (depth, bytes) = (self.peak_depth(), self.peak_bus_bytes());
        checks.push(Check {
            name: "bus bounded",
            pass: depth <= self.max_msgs && bytes <= self.max_bytes && !self.samples.is_empty(),
            detail: format!(
                "peak depth {depth} of max_msgs {}, peak {} of max_bytes {}",
                self.max_msgs,
                mib(bytes),
                mib(self.max_bytes)
            ),
        });
        let rss = self.peak_rss();
        checks.push(Check {
            name: "memory bounded",
            pass: rss.is_some_and(|r| r <= self.rss_limit),
            detail: match rss {
                Some(r) => format!("peak RSS {} (bound {})", mib(r), mib(self.rss_limit)),
                None => "the status document had no resident memory".to_string(),
            },
        });
        checks.push(Check {
            name: "excess refused with 429 + Retry-After, no crash",
            pass: t.rejected() > 0
                && self.rejected_without_retry_after == 0
                && t.server_errors == 0
                && t.errors == 0
                && t.client_errors == 0,
            detail: format!(
                "{} × 429 (bus_full {}, shed {}, rate_limited {}, other {}), {} without Retry-After; {} × 5xx, {} other 4xx, {} unanswered",
                t.rejected(),
                t.rejected_bus_full,
                t.rejected_shed,
                t.rejected_rate_limited,
                t.rejected_other,
                self.rejected_without_retry_after,
                t.server_errors,
                t.client_errors,
                t.errors
            ),
        });
        let peak_rate = trigger_rate(&self.samples, self.peak_start, self.peak_end);
        checks.push(Check {
            name: "trigger rate held",
            // The GCRA burst lets a few events past the rate once.
            pass: peak_rate.is_some_and(|r| r <= self.rate_limit * 1.1),
            detail: format!(
                "during the peak {} (rateLimit {:.0}/s); before it {}",
                rate_text(peak_rate),
                self.rate_limit,
                rate_text(trigger_rate(&self.samples, Duration::ZERO, self.peak_start))
            ),
        });
        let drained_after = self.after_peak_at_or_under(0, true);
        checks.push(Check {
            name: "recovers after the spike",
            pass: self.drained && drained_after.is_some(),
            detail: format!(
                "after the peak: under the shedding threshold in {}, drained in {} (waited up to {} s after the storm); triggers during the drain {}",
                self.after_peak_at_or_under(self.shed_depth, false)
                    .map_or_else(|| "never".to_string(), |d| format!("{} s", d.as_secs())),
                drained_after.map_or_else(|| "never".to_string(), |d| format!("{} s", d.as_secs())),
                self.drain_limit.as_secs(),
                rate_text(trigger_rate(
                    &self.samples,
                    self.peak_end,
                    self.peak_end + drained_after.unwrap_or(self.drain_limit)
                )),
            ),
        });
        checks
    }

    pub fn passed(&self) -> bool {
        self.checks().iter().all(|c| c.pass)
    }

    /// `scenario.md`.
    pub fn markdown(&self) -> String {
        let t = &self.storm;
        let checks = self.checks();
        let mut md = String::new();
        let verdict = if checks.iter().all(|c| c.pass) {
            "PASS"
        } else {
            "FAIL"
        };
        let _ = writeln!(md, "# Scenario: {} — {verdict}\n", self.scenario);
        let _ = writeln!(md, "- Command: `{}`", self.command);
        let _ = writeln!(md, "- Scaling: {}", self.scaling);
        let _ = writeln!(md, "- Machine: {}", self.machine);
        let _ = writeln!(
            md,
            "- Storm: {} sent (+{} retries), {} accepted, {} × 429, {} dropped by the generator; latency p50 {:.1} ms, p99 {:.1} ms (details in report.md)\n",
            t.sent,
            t.retries,
            t.accepted,
            t.rejected(),
            t.dropped_by_generator,
            t.latency.p50_us as f64 / 1000.0,
            t.latency.p99_us as f64 / 1000.0
        );
        let _ = writeln!(md, "| check | result | numbers |\n|---|---|---|");
        for c in &checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                c.name,
                if c.pass { "PASS" } else { "FAIL" },
                c.detail
            );
        }
        let _ = writeln!(
            md,
            "\nPhases (s since the storm started): peak {}–{}, storm end {}. Ids used: {}; the downstream got {} requests without a checkable id.",
            self.peak_start.as_secs(),
            self.peak_end.as_secs(),
            self.storm_end.as_secs(),
            self.ids_used,
            self.received_untracked
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, depth: u64, triggered: u64) -> Sample {
        Sample {
            reading: Reading {
                at: Duration::from_secs(at),
                depth,
                triggered,
                lag: depth,
                ..Reading::default()
            },
            bus_bytes: depth * 500,
            rss_bytes: Some(50 << 20),
        }
    }

    /// A run where everything went right.
    fn good() -> Facts {
        Facts {
            scenario: "midnight-spike".into(),
            storm: Bucket {
                sent: 1000,
                accepted: 800,
                rejected_shed: 150,
                rejected_bus_full: 50,
                ..Bucket::default()
            },
            ids_used: 1000,
            accepted_ids: 800,
            received_ids: 800,
            shed_by_priority: BTreeMap::from([(5, 150)]),
            shed_priority_above: 2,
            max_msgs: 100,
            max_bytes: 1 << 20,
            shed_depth: 75,
            rss_limit: 512 << 20,
            samples: vec![
                sample(0, 0, 0),
                sample(10, 20, 1000),
                sample(20, 100, 2000),
                sample(30, 60, 3000),
                sample(35, 0, 3500),
            ],
            peak_start: Duration::from_secs(10),
            peak_end: Duration::from_secs(30),
            storm_end: Duration::from_secs(30),
            rate_limit: 100.0,
            drain_limit: Duration::from_secs(60),
            drained: true,
            ..Facts::default()
        }
    }

    fn failed(facts: &Facts) -> Vec<&'static str> {
        facts
            .checks()
            .into_iter()
            .filter(|c| !c.pass)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_good_run_passes_every_check() {
        let facts = good();
        assert_eq!(failed(&facts), Vec::<&str>::new(), "{}", facts.markdown());
        assert!(facts
            .markdown()
            .starts_with("# Scenario: midnight-spike — PASS"));
        assert_eq!(
            facts.after_peak_at_or_under(75, false),
            Some(Duration::from_secs(0))
        );
        assert_eq!(
            facts.after_peak_at_or_under(0, true),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn each_broken_promise_fails_its_check() {
        let mut f = good();
        f.lost = 2;
        f.lost_examples = vec![4, 9];
        assert_eq!(failed(&f), vec!["no accepted event lost"]);
        assert!(f.markdown().contains("storm-4, storm-9"));
        assert!(f.markdown().contains("— FAIL"));

        let mut f = good();
        f.shed_by_priority.insert(0, 1);
        assert_eq!(failed(&f), vec!["critical events never shed"]);

        let mut f = good();
        f.shed_by_priority.clear();
        assert_eq!(failed(&f), vec!["critical events never shed"]);
        assert!(f.checks()[1].detail.contains("did not overload"));

        let mut f = good();
        f.samples[2].reading.depth = 101;
        assert_eq!(failed(&f), vec!["bus bounded"]);

        let mut f = good();
        f.samples[1].rss_bytes = Some(600 << 20);
        assert_eq!(failed(&f), vec!["memory bounded"]);

        let mut f = good();
        f.rejected_without_retry_after = 1;
        assert_eq!(
            failed(&f),
            vec!["excess refused with 429 + Retry-After, no crash"]
        );

        let mut f = good();
        f.storm.errors = 1;
        assert_eq!(
            failed(&f),
            vec!["excess refused with 429 + Retry-After, no crash"]
        );

        let mut f = good();
        // 150/s during the peak against a 100/s limit.
        f.samples[3].reading.triggered = 4000;
        f.samples[4].reading.triggered = 4000;
        assert_eq!(failed(&f), vec!["trigger rate held"]);

        let mut f = good();
        f.drained = false;
        f.samples.pop();
        assert_eq!(failed(&f), vec!["recovers after the spike"]);
    }

    #[test]
    fn trigger_rate_needs_a_second_of_samples() {
        let s = [sample(0, 0, 0), sample(2, 0, 500), sample(4, 0, 700)];
        assert_eq!(
            trigger_rate(&s, Duration::ZERO, Duration::from_secs(4)),
            Some(175.0)
        );
        assert_eq!(
            trigger_rate(&s, Duration::from_secs(2), Duration::from_secs(3)),
            None
        );
    }
}
