//! [`PendingMap`]: the delivery handles of one bus consumer's delivered, not
//! yet settled messages, by stream sequence.
//!
//! # What it guarantees
//!
//! - **Bounded.** At most `cap` entries (`max_ack_pending`): inserting into
//!   a full map first drops the entry due first, preferring one whose ack
//!   deadline already passed (the server redelivers those anyway, possibly
//!   to another instance). An ack for a dropped entry is a no-op: the
//!   message is redelivered and processed again (at-least-once).
//! - **Cheap at any size.** Lookup by sequence is a hash lookup; the free
//!   credit, the next due time and the eviction victim come from a due-time
//!   index, so every operation is O(log n) (amortised for
//!   [`credit`](PendingMap::credit)), never a scan of the entries.
//!
//! Entries whose due time passed are moved, when [`credit`](PendingMap::credit)
//! looks, from the `waiting` index to the `overdue` one: only waiting
//! entries take credit.

use std::collections::{BTreeSet, HashMap};
use tokio::time::Instant;

/// A delivered, not yet settled message.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Where acks go.
    pub(crate) reply: async_nats::Subject,
    /// When the server will make it available again (ack_wait or nak delay).
    pub(crate) due: Instant,
    pub(crate) deliveries: u32,
    /// Nakked and not redelivered since: `in_progress` has no effect.
    pub(crate) nakked: bool,
}

/// Delivery handles by stream sequence; at most `cap` entries. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct PendingMap {
    cap: usize,
    entries: HashMap<u64, Entry>,
    /// `(due, seq)` of every entry not found due yet: these take credit.
    waiting: BTreeSet<(Instant, u64)>,
    /// `(due, seq)` of entries found due at an earlier look.
    overdue: BTreeSet<(Instant, u64)>,
}

impl PendingMap {
    /// An empty map holding at most `cap` entries (at least one).
    pub(crate) fn new(cap: usize) -> PendingMap {
        PendingMap {
            cap: cap.max(1),
            entries: HashMap::new(),
            waiting: BTreeSet::new(),
            overdue: BTreeSet::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// Free credit (`cap` minus the entries not yet due) and the next due
    /// time among the entries that are not due yet.
    pub(crate) fn credit(&mut self, now: Instant) -> (usize, Option<Instant>) {
        while let Some(&(due, seq)) = self.waiting.first() {
            if due > now {
                break;
            }
            self.waiting.pop_first();
            self.overdue.insert((due, seq));
        }
        (
            self.cap.saturating_sub(self.waiting.len()),
            self.waiting.first().map(|&(due, _)| due),
        )
    }

    /// Records a delivery of `seq`, replacing an earlier one of the same
    /// seq (a redelivery); drops the entry due first while the map is full.
    pub(crate) fn insert(&mut self, seq: u64, entry: Entry, now: Instant) {
        if self.remove(seq).is_none() {
            while self.entries.len() >= self.cap {
                let victim = match (self.overdue.first(), self.waiting.first()) {
                    (Some(&a), Some(&b)) => a.min(b),
                    (a, b) => match a.or(b) {
                        Some(&v) => v,
                        None => break,
                    },
                };
                let (due, seq) = victim;
                if due > now {
                    tracing::debug!(seq, "delivery map full; dropping the handle due first");
                }
                self.remove(seq);
            }
        }
        self.waiting.insert((entry.due, seq));
        self.entries.insert(seq, entry);
    }

    /// Forgets `seq` (settled); returns its entry.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        if !self.waiting.remove(&(entry.due, seq)) {
            self.overdue.remove(&(entry.due, seq));
        }
        Some(entry)
    }

    /// Moves `seq`'s due time to `due` (nak delay, `in_progress`), marking it
    /// nakked if `nakked`. Does nothing for an unknown seq.
    pub(crate) fn reschedule(&mut self, seq: u64, due: Instant, nakked: bool) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        if !self.waiting.remove(&(entry.due, seq)) {
            self.overdue.remove(&(entry.due, seq));
        }
        entry.due = due;
        entry.nakked |= nakked;
        self.waiting.insert((due, seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(due: Instant) -> Entry {
        Entry {
            reply: "r".into(),
            due,
            deliveries: 1,
            nakked: false,
        }
    }

    #[test]
    fn bounded_and_drops_expired_first() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut map = PendingMap::new(2);
        map.insert(1, entry(later), now);
        map.insert(2, entry(now), now);
        assert_eq!(map.credit(now), (1, Some(later)));
        map.insert(3, entry(later), now);
        assert_eq!(map.len(), 2);
        assert!(map.get(1).is_some() && map.get(3).is_some());
        assert_eq!(map.credit(now), (0, Some(later)));
        // Re-inserting a known seq (a redelivery) evicts nothing.
        map.insert(3, entry(later), now);
        assert_eq!(map.len(), 2);
        // Full of waiting entries: the one due first goes.
        map.insert(4, entry(later + Duration::from_secs(1)), now);
        assert!(map.get(1).is_none() && map.get(3).is_some());
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn credit_follows_due_times_and_reschedules() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut map = PendingMap::new(3);
        for (seq, due) in [(1, t0 + s), (2, t0 + 2 * s), (3, t0 + 3 * s)] {
            map.insert(seq, entry(due), t0);
        }
        assert_eq!(map.credit(t0), (0, Some(t0 + s)));
        // Due at exactly 1 s: no longer takes credit.
        assert_eq!(map.credit(t0 + s), (1, Some(t0 + 2 * s)));
        // A nak with a delay makes an overdue entry wait again.
        map.reschedule(1, t0 + 5 * s, true);
        assert!(map.get(1).is_some_and(|e| e.nakked));
        assert_eq!(map.credit(t0 + s), (0, Some(t0 + 2 * s)));
        // in_progress on a waiting entry moves its deadline.
        map.reschedule(2, t0 + 4 * s, false);
        assert_eq!(map.credit(t0 + 3 * s), (1, Some(t0 + 4 * s)));
        assert!(map.remove(3).is_some());
        assert!(map.remove(3).is_none());
        assert_eq!(map.credit(t0 + 3 * s), (1, Some(t0 + 4 * s)));
        assert_eq!(map.credit(t0 + 6 * s), (3, None));
        map.reschedule(99, t0, false);
        assert_eq!(map.len(), 2);
    }
}
