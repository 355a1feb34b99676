//! Which storm events were accepted, for checking a run for loss.
//!
//! [`IdSet`] is a fixed-size bitset over event numbers (`storm-<n>`): one
//! bit per id below its capacity, set lock-free from any task. Memory is
//! `capacity / 8` bytes, fixed when the set is made and at most
//! [`MAX_TRACKED_IDS`] / 8 (16 MiB); an id at or above the capacity is not
//! stored but counted in [`IdSet::untracked`], so a run that outgrows its
//! set says so instead of silently checking less. [`Tracker`] is what a
//! storm fills in while it runs: the accepted ids, and how many 429 answers
//! came without a usable `Retry-After`.
//!
//! Guarantees: `insert` never allocates and never blocks; counts are exact.

use super::target::Outcome;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most ids an [`IdSet`] holds (bits), whatever it is asked for.
pub const MAX_TRACKED_IDS: u64 = 128 * 1024 * 1024;

/// What [`IdSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The id was already in the set (a duplicate).
    Again,
    /// The id is at or above the capacity: counted, not stored.
    Untracked,
}

/// A bounded, lock-free set of event numbers; see the module docs.
pub struct IdSet {
    words: Vec<AtomicU64>,
    capacity: u64,
    untracked: AtomicU64,
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSet")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("untracked", &self.untracked())
            .finish()
    }
}

impl IdSet {
    /// A set for ids `0..capacity` (capacity clamped to [`MAX_TRACKED_IDS`]).
    pub fn new(capacity: u64) -> IdSet {
        let capacity = capacity.min(MAX_TRACKED_IDS);
        let words = capacity.div_ceil(64) as usize;
        IdSet {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            capacity,
            untracked: AtomicU64::new(0),
        }
    }

    /// Ids `0..capacity` are stored.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn insert(&self, id: u64) -> Inserted {
        if id >= self.capacity {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return Inserted::Untracked;
        }
        let bit = 1u64 << (id % 64);
        let before = self.words[(id / 64) as usize].fetch_or(bit, Ordering::Relaxed);
        if before & bit == 0 {
            Inserted::New
        } else {
            Inserted::Again
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        id < self.capacity
            && self.words[(id / 64) as usize].load(Ordering::Relaxed) & (1u64 << (id % 64)) != 0
    }

    /// Ids stored.
    pub fn len(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts refused because the id was at or above the capacity.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Ids in `self` that are not in `other`, and the first few of them
    /// (at most `examples`), for a loss report.
    pub fn missing_from(&self, other: &IdSet, examples: usize) -> (u64, Vec<u64>) {
        let mut count = 0;
        let mut first = Vec::new();
        for (i, word) in self.words.iter().enumerate() {
            let theirs = other.words.get(i).map_or(0, |w| w.load(Ordering::Relaxed));
            let mut missing = word.load(Ordering::Relaxed) & !theirs;
            count += u64::from(missing.count_ones());
            while missing != 0 && first.len() < examples {
                let bit = missing.trailing_zeros();
                first.push(i as u64 * 64 + u64::from(bit));
                missing &= missing - 1;
            }
        }
        (count, first)
    }
}

/// What a storm records per event beyond the per-second counts.
#[derive(Debug)]
pub struct Tracker {
    /// Ids answered 2xx (a retry that is accepted again counts once).
    pub accepted: IdSet,
    /// 429 answers without a `Retry-After` the storm could read.
    rejected_without_retry_after: AtomicU64,
    /// The `Retry-After` (seconds) of the latest 429 `bus_full`.
    last_bus_full_retry_after: AtomicU64,
}

/// `last_bus_full_retry_after` before any 429 `bus_full`.
const NONE_SEEN: u64 = u64::MAX;

impl Tracker {
    /// A tracker for event ids `0..capacity`.
    pub fn new(capacity: u64) -> Tracker {
        Tracker {
            accepted: IdSet::new(capacity),
            rejected_without_retry_after: AtomicU64::new(0),
            last_bus_full_retry_after: AtomicU64::new(NONE_SEEN),
        }
    }

    /// Records the outcome of one attempt at event `id`.
    pub fn observe(&self, id: u64, outcome: &Outcome) {
        match outcome {
            Outcome::Accepted => {
                self.accepted.insert(id);
            }
            Outcome::Rejected {
                reason,
                retry_after,
            } => match retry_after {
                None => {
                    self.rejected_without_retry_after
                        .fetch_add(1, Ordering::Relaxed);
                }
                Some(wait) if *reason == super::target::Rejection::BusFull => {
                    self.last_bus_full_retry_after
                        .store(wait.as_secs(), Ordering::Relaxed);
                }
                Some(_) => {}
            },
            _ => {}
        }
    }

    pub fn rejected_without_retry_after(&self) -> u64 {
        self.rejected_without_retry_after.load(Ordering::Relaxed)
    }

    /// Seconds of the latest `bus_full` `Retry-After`, if any came.
    pub fn last_bus_full_retry_after(&self) -> Option<u64> {
        match self.last_bus_full_retry_after.load(Ordering::Relaxed) {
            NONE_SEEN => None,
            secs => Some(secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::target::Rejection;
    use std::time::Duration;

    #[test]
    fn ids_are_stored_once_and_duplicates_are_seen() {
        let set = IdSet::new(130);
        assert_eq!(set.insert(0), Inserted::New);
        assert_eq!(set.insert(129), Inserted::New);
        assert_eq!(set.insert(64), Inserted::New);
        assert_eq!(set.insert(64), Inserted::Again);
        assert!(set.contains(129) && set.contains(64) && !set.contains(63));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn ids_past_the_capacity_are_counted_not_stored() {
        let set = IdSet::new(10);
        assert_eq!(set.capacity(), 10);
        assert_eq!(set.insert(10), Inserted::Untracked);
        assert_eq!(set.insert(u64::MAX), Inserted::Untracked);
        assert!(!set.contains(10));
        assert_eq!((set.len(), set.untracked()), (0, 2));
        // The capacity itself is bounded.
        assert_eq!(IdSet::new(u64::MAX).capacity(), MAX_TRACKED_IDS);
        assert_eq!(IdSet::new(0).insert(0), Inserted::Untracked);
    }

    #[test]
    fn missing_ids_are_counted_with_examples() {
        let accepted = IdSet::new(200);
        let received = IdSet::new(100);
        for id in [1, 5, 70, 150, 199] {
            accepted.insert(id);
        }
        for id in [1, 70, 99] {
            received.insert(id);
        }
        // 5 is missing; 150 and 199 are past what `received` can hold.
        assert_eq!(accepted.missing_from(&received, 2), (3, vec![5, 150]));
        assert_eq!(received.missing_from(&accepted, 10), (1, vec![99]));
    }

    #[test]
    fn tracker_keeps_accepted_ids_and_retry_after_facts() {
        let t = Tracker::new(100);
        assert_eq!(t.last_bus_full_retry_after(), None);
        t.observe(3, &Outcome::Accepted);
        t.observe(
            4,
            &Outcome::Rejected {
                reason: Rejection::BusFull,
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        t.observe(
            5,
            &Outcome::Rejected {
                reason: Rejection::Shed,
                retry_after: None,
            },
        );
        t.observe(6, &Outcome::Failed);
        assert!(t.accepted.contains(3) && !t.accepted.contains(4));
        assert_eq!(t.accepted.len(), 1);
        assert_eq!(t.last_bus_full_retry_after(), Some(2));
        assert_eq!(t.rejected_without_retry_after(), 1);
    }
}
