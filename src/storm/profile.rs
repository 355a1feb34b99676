//! Load profiles: the arrival rate a storm aims for, as a function of the
//! time since the run started.
//!
//! A profile is a list of stages, each a straight line from one rate to
//! another over a duration (`constant`, `ramp` and `spike` are special
//! cases); after the last stage the rate stays at that stage's final rate.
//! Everything here is pure arithmetic, so tests assert exact answers.
//!
//! Guarantees: `arrival_time(n)` is the instant at which the integral of the
//! rate reaches `n` (rounded to the nanosecond; the end of a pause when the
//! rate is 0 there), so the number of arrivals in
//! any interval `[a, b)` is the integral over it whenever the integral is a
//! whole number at `a` and `b` (100/s for 10 s is exactly 1000 arrivals,
//! exactly 100 in each second). Not guaranteed: anything about when requests
//! are actually sent; that is the schedule's job.

use std::time::Duration;

/// One straight piece of a profile: the rate goes from `from` to `to`
/// (events per second) over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub from: f64,
    pub to: f64,
}

/// A rate that a profile cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("rate {0} must be a finite number ≥ 0 (events per second)")]
    InvalidRate(f64),
    #[error("a profile needs at least one stage")]
    NoStages,
}

/// The arrival rate over time; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    stages: Vec<Stage>,
    /// For each stage: when it starts and how many arrivals came before it.
    starts: Vec<(Duration, f64)>,
    kind: Kind,
}

/// What the profile was built as, for reports.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Constant,
    Ramp,
    Spike,
    Stages,
}

impl Profile {
    /// `rate` events per second for ever.
    pub fn constant(rate: f64) -> Result<Profile, ProfileError> {
        Profile::build(
            vec![Stage {
                duration: Duration::ZERO,
                from: rate,
                to: rate,
            }],
            Kind::Constant,
        )
    }

    /// From `from` to `to` events per second linearly over `over`, then `to`.
    pub fn ramp(from: f64, to: f64, over: Duration) -> Result<Profile, ProfileError> {
        Profile::build(
            vec![Stage {
                duration: over,
                from,
                to,
            }],
            Kind::Ramp,
        )
    }

    /// `base` for `base_for`, then `peak` for `peak_for`, then `base` again.
    pub fn spike(
        base: f64,
        peak: f64,
        base_for: Duration,
        peak_for: Duration,
    ) -> Result<Profile, ProfileError> {
        let stages = vec![
            Stage {
                duration: base_for,
                from: base,
                to: base,
            },
            Stage {
                duration: peak_for,
                from: peak,
                to: peak,
            },
            Stage {
                duration: base_for,
                from: base,
                to: base,
            },
        ];
        Profile::build(stages, Kind::Spike)
    }

    /// Any sequence of stages (named scenarios are built from these).
    pub fn from_stages(stages: Vec<Stage>) -> Result<Profile, ProfileError> {
        Profile::build(stages, Kind::Stages)
    }

    fn build(stages: Vec<Stage>, kind: Kind) -> Result<Profile, ProfileError> {
        if stages.is_empty() {
            return Err(ProfileError::NoStages);
        }
        let mut starts = Vec::with_capacity(stages.len());
        let mut at = Duration::ZERO;
        let mut before = 0.0;
        for stage in &stages {
            for rate in [stage.from, stage.to] {
                if !rate.is_finite() || rate < 0.0 {
                    return Err(ProfileError::InvalidRate(rate));
                }
            }
            starts.push((at, before));
            at += stage.duration;
            before += stage_area(stage);
        }
        Ok(Profile {
            stages,
            starts,
            kind,
        })
    }

    /// The length of the profile's stages: how long a run lasts when no
    /// duration is given (`None` for a constant rate, which has no end).
    pub fn natural_duration(&self) -> Option<Duration> {
        match self.kind {
            Kind::Constant => None,
            _ => Some(self.stages.iter().map(|s| s.duration).sum()),
        }
    }

    /// The rate (events per second) at `elapsed`.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        for (stage, (start, _)) in self.stages.iter().zip(&self.starts) {
            let into = elapsed.saturating_sub(*start);
            if elapsed >= *start && into < stage.duration {
                let fraction = into.as_secs_f64() / stage.duration.as_secs_f64();
                return stage.from + (stage.to - stage.from) * fraction;
            }
        }
        self.last().to
    }

    /// The integral of the rate over `[0, elapsed)`: how many arrivals the
    /// profile asks for by then (fractional).
    pub fn arrivals_before(&self, elapsed: Duration) -> f64 {
        for (stage, (start, before)) in self.stages.iter().zip(&self.starts) {
            if elapsed < *start + stage.duration {
                let s = elapsed.saturating_sub(*start).as_secs_f64();
                let slope = (stage.to - stage.from) / stage.duration.as_secs_f64();
                return before + stage.from * s + slope * s * s / 2.0;
            }
        }
        let (end, total) = self.end();
        total + self.last().to * (elapsed - end).as_secs_f64()
    }

    /// When arrival number `n` (from 0) is due: the last instant at which
    /// [`arrivals_before`](Self::arrivals_before) is still at most `n`
    /// (where the rate is positive that is where the integral equals `n`).
    /// `None` when the rate drops to 0 for good before that.
    pub fn arrival_time(&self, n: u64) -> Option<Duration> {
        let target = n as f64;
        for (stage, (start, before)) in self.stages.iter().zip(&self.starts) {
            let area = stage_area(stage);
            // Strictly below the stage's end: an arrival that falls exactly
            // on the boundary belongs to what comes next, and a stage at
            // rate 0 holds none.
            if target < before + area {
                let m = target - before;
                let length = stage.duration.as_secs_f64();
                let slope = (stage.to - stage.from) / length;
                let s = if m <= 0.0 {
                    0.0
                } else if slope == 0.0 {
                    m / stage.from
                } else {
                    // The root of from·s + slope·s²/2 = m written so that it
                    // does not cancel when `slope` is small.
                    2.0 * m / (stage.from + (stage.from * stage.from + 2.0 * slope * m).sqrt())
                };
                return Some(*start + seconds(s.clamp(0.0, length)));
            }
        }
        let (end, total) = self.end();
        let rate = self.last().to;
        if rate <= 0.0 {
            return None;
        }
        Some(end + seconds((target - total).max(0.0) / rate))
    }

    /// One line for reports, e.g. `spike 10/s → 100/s for 1s → 10/s (base 2s)`.
    pub fn describe(&self) -> String {
        let first = self.stages[0];
        match self.kind {
            Kind::Constant => format!("constant {}/s", first.from),
            Kind::Ramp => format!(
                "ramp {}/s → {}/s over {}",
                first.from,
                first.to,
                humantime::format_duration(first.duration)
            ),
            Kind::Spike => format!(
                "spike {}/s for {} → {}/s for {} → {}/s",
                first.from,
                humantime::format_duration(first.duration),
                self.stages[1].from,
                humantime::format_duration(self.stages[1].duration),
                first.from
            ),
            Kind::Stages => self
                .stages
                .iter()
                .map(|s| {
                    format!(
                        "{}/s → {}/s over {}",
                        s.from,
                        s.to,
                        humantime::format_duration(s.duration)
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn last(&self) -> &Stage {
        // `build` refuses an empty list.
        &self.stages[self.stages.len() - 1]
    }

    /// When the last stage ends and how many arrivals came before.
    fn end(&self) -> (Duration, f64) {
        let (start, before) = self.starts[self.starts.len() - 1];
        let last = self.last();
        (start + last.duration, before + stage_area(last))
    }
}

fn stage_area(stage: &Stage) -> f64 {
    stage.duration.as_secs_f64() * (stage.from + stage.to) / 2.0
}

/// Seconds to a `Duration`, rounded to the nanosecond so that float noise
/// just below a whole second does not move an arrival into the second before.
fn seconds(s: f64) -> Duration {
    Duration::from_nanos((s * 1e9).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Arrivals due in each whole second of `[0, total)`.
    fn per_second(profile: &Profile, total: u64) -> Vec<u64> {
        let mut counts = vec![0; total as usize];
        let mut n = 0;
        while let Some(at) = profile.arrival_time(n) {
            if at >= secs(total) {
                break;
            }
            counts[at.as_secs() as usize] += 1;
            n += 1;
        }
        counts
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let p = Profile::constant(100.0).unwrap();
        assert_eq!(p.arrival_time(0), Some(Duration::ZERO));
        assert_eq!(p.arrival_time(1), Some(Duration::from_millis(10)));
        assert_eq!(p.arrival_time(1000), Some(secs(10)));
        assert_eq!(per_second(&p, 10), vec![100; 10]);
        assert_eq!(p.rate_at(secs(1234)), 100.0);
        assert_eq!(p.natural_duration(), None);
    }

    #[test]
    fn ramp_counts_are_the_integral_of_the_rate() {
        // 10/s + 10/s per second: second k holds 15 + 10k arrivals.
        let p = Profile::ramp(10.0, 110.0, secs(10)).unwrap();
        let expected: Vec<u64> = (0..10).map(|k| 15 + 10 * k).collect();
        assert_eq!(per_second(&p, 10), expected);
        assert_eq!(p.arrivals_before(secs(10)), 600.0);
        assert_eq!(p.rate_at(Duration::from_millis(2500)), 35.0);
        // After the ramp the rate stays at its end.
        assert_eq!(per_second(&p, 12)[10..], [110, 110]);
        assert_eq!(p.natural_duration(), Some(secs(10)));
    }

    #[test]
    fn ramp_down_and_from_zero() {
        let down = Profile::ramp(110.0, 10.0, secs(10)).unwrap();
        let expected: Vec<u64> = (0..10).rev().map(|k| 15 + 10 * k).collect();
        assert_eq!(per_second(&down, 10), expected);
        let up = Profile::ramp(0.0, 20.0, secs(2)).unwrap();
        assert_eq!(per_second(&up, 2), vec![5, 15]);
    }

    #[test]
    fn spike_has_exact_counts_per_phase() {
        let p = Profile::spike(10.0, 100.0, secs(2), secs(1)).unwrap();
        assert_eq!(p.natural_duration(), Some(secs(5)));
        assert_eq!(per_second(&p, 5), vec![10, 10, 100, 10, 10]);
        assert_eq!(p.rate_at(Duration::from_millis(2999)), 100.0);
        assert_eq!(p.rate_at(secs(3)), 10.0);
        assert_eq!(p.arrival_time(20), Some(secs(2)));
        assert_eq!(p.arrival_time(120), Some(secs(3)));
    }

    #[test]
    fn zero_rate_ends_the_arrivals() {
        let p = Profile::spike(0.0, 50.0, secs(1), secs(1)).unwrap();
        assert_eq!(per_second(&p, 3), vec![0, 50, 0]);
        assert_eq!(p.arrival_time(50), None);
        let idle = Profile::constant(0.0).unwrap();
        assert_eq!(idle.arrival_time(1), None);
    }

    #[test]
    fn invalid_rates_are_refused() {
        assert_eq!(
            Profile::constant(-1.0),
            Err(ProfileError::InvalidRate(-1.0))
        );
        assert!(matches!(
            Profile::ramp(f64::NAN, 1.0, secs(1)),
            Err(ProfileError::InvalidRate(_))
        ));
        assert_eq!(Profile::from_stages(vec![]), Err(ProfileError::NoStages));
    }

    #[test]
    fn stages_chain() {
        let p = Profile::from_stages(vec![
            Stage {
                duration: secs(2),
                from: 0.0,
                to: 100.0,
            },
            Stage {
                duration: secs(1),
                from: 100.0,
                to: 100.0,
            },
        ])
        .unwrap();
        assert_eq!(per_second(&p, 4), vec![25, 75, 100, 100]);
        assert_eq!(p.describe(), "0/s → 100/s over 2s, 100/s → 100/s over 1s");
    }
}
