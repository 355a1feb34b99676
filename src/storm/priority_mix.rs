//! The priority mix of a storm (`--priorities 0:10,5:90`): which priority
//! each request carries.
//!
//! Guarantees: the choice is a pure function of the request number, and
//! every run of `W` consecutive requests (`W` = the sum of the weights)
//! holds each priority exactly its weight times, spread through the run
//! rather than in blocks, so a short storm already has the asked-for mix.
//! Not guaranteed: any randomness; the same id always gets the same priority.

use std::fmt;

/// A mix that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriorityMixError {
    #[error(
        "priority mix {0:?}: expected PRIORITY:WEIGHT pairs separated by commas, like 0:10,5:90"
    )]
    Syntax(String),
    #[error("priority mix {0:?}: the weights must add up to more than 0 and at most 1000000")]
    Weights(String),
}

/// Priorities with whole-number weights; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityMix {
    /// (priority, weight), weights > 0.
    shares: Vec<(u8, u32)>,
    total: u64,
    /// Coprime with `total`, so `n·stride mod total` visits every slot once
    /// per `total` requests.
    stride: u64,
}

const MAX_TOTAL_WEIGHT: u64 = 1_000_000;

impl PriorityMix {
    /// Parses `0:10,5:90` (priority 0 for 10 of every 100 requests).
    pub fn parse(text: &str) -> Result<PriorityMix, PriorityMixError> {
        let syntax = || PriorityMixError::Syntax(text.to_string());
        let mut shares = Vec::new();
        for pair in text.split(',').map(str::trim) {
            let (priority, weight) = pair.split_once(':').ok_or_else(syntax)?;
            let priority: u8 = priority.trim().parse().map_err(|_| syntax())?;
            let weight: u32 = weight.trim().parse().map_err(|_| syntax())?;
            if weight > 0 {
                shares.push((priority, weight));
            }
        }
        let total: u64 = shares.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 || total > MAX_TOTAL_WEIGHT {
            return Err(PriorityMixError::Weights(text.to_string()));
        }
        // A stride near total/φ scatters consecutive requests over the slots.
        let mut stride = ((total as f64) * 0.618_033_988_75).floor().max(1.0) as u64;
        while gcd(stride, total) != 1 {
            stride -= 1;
        }
        Ok(PriorityMix {
            shares,
            total,
            stride,
        })
    }

    /// The priority of request number `n`.
    pub fn pick(&self, n: u64) -> u8 {
        let slot = ((u128::from(n) * u128::from(self.stride)) % u128::from(self.total)) as u64;
        let mut below = 0;
        for (priority, weight) in &self.shares {
            below += u64::from(*weight);
            if slot < below {
                return *priority;
            }
        }
        // Unreachable: slot < total = the sum of the weights.
        self.shares[self.shares.len() - 1].0
    }
}

impl fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self
            .shares
            .iter()
            .map(|(p, w)| format!("{p}:{w}"))
            .collect();
        f.write_str(&pairs.join(","))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(mix: &PriorityMix, from: u64, n: u64) -> [u64; 256] {
        let mut counts = [0; 256];
        for i in from..from + n {
            counts[mix.pick(i) as usize] += 1;
        }
        counts
    }

    #[test]
    fn every_window_of_the_total_weight_has_the_exact_mix() {
        let mix = PriorityMix::parse("0:10,5:90").unwrap();
        for from in [0, 7, 1234] {
            let c = counts(&mix, from, 100);
            assert_eq!((c[0], c[5]), (10, 90), "window from {from}");
        }
        // Spread out: the first 10 requests are not all priority 0.
        assert!(counts(&mix, 0, 10)[0] <= 2);
        assert_eq!(mix.to_string(), "0:10,5:90");
    }

    #[test]
    fn single_priority_and_odd_weights() {
        let one = PriorityMix::parse("3:1").unwrap();
        assert!((0..50).all(|n| one.pick(n) == 3));
        let odd = PriorityMix::parse("0:1, 1:2 ,2:4").unwrap();
        let c = counts(&odd, 5, 7);
        assert_eq!((c[0], c[1], c[2]), (1, 2, 4));
    }

    #[test]
    fn bad_mixes_are_refused() {
        for bad in ["", "0", "a:1", "0:x", "300:1", "0:-1"] {
            assert!(
                matches!(PriorityMix::parse(bad), Err(PriorityMixError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            PriorityMix::parse("0:0"),
            Err(PriorityMixError::Weights(_))
        ));
    }
}
