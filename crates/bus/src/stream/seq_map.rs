//! [`SeqMap`]: the held messages by sequence number, in a ring buffer.
//!
//! Messages arrive in increasing seq order and mostly leave from the front
//! (acked in order, discarded oldest first), which is what a `VecDeque`
//! does in O(1) without the allocation per few inserts of a `BTreeMap`
//! (measured: the index insert was most of the segment bus's commit hook).
//! A message released out of order leaves a hole (`None`) behind; holes at
//! either end are dropped at once, and when holes outnumber live entries
//! they are compacted away, so memory stays proportional to what is held
//! (amortised O(1) per removal).
//!
//! Lookups by seq take the direct index when the seqs between the front and
//! the wanted one have no gaps (the common case: seqs are handed out
//! consecutively), and a binary search otherwise. An insert below the
//! newest key (which the streams never do) is still correct, in O(n).

use std::collections::VecDeque;

/// Fewest holes worth a compaction pass.
const MIN_HOLES_TO_COMPACT: usize = 64;
/// Capacity kept however few entries there are.
const MIN_CAPACITY: usize = 64;

struct Entry<V> {
    seq: u64,
    value: Option<V>,
}

/// A map from seq to `V`, ordered by seq (see the module docs).
pub(crate) struct SeqMap<V> {
    /// Sorted by seq, strictly increasing; the first and last are live.
    entries: VecDeque<Entry<V>>,
    live: usize,
}

impl<V> Default for SeqMap<V> {
    fn default() -> Self {
        SeqMap {
            entries: VecDeque::new(),
            live: 0,
        }
    }
}

impl<V> SeqMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.live
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let first = self.entries.front()?.seq;
        let direct = usize::try_from(seq.checked_sub(first)?).ok();
        if let Some(i) = direct.filter(|&i| self.entries.get(i).is_some_and(|e| e.seq == seq)) {
            return Some(i);
        }
        self.entries.binary_search_by_key(&seq, |e| e.seq).ok()
    }

    /// Inserts `value` at `seq`, returning the value it replaces.
    pub fn insert(&mut self, seq: u64, value: V) -> Option<V> {
        match self.entries.back() {
            None => {}
            Some(last) if seq > last.seq => {}
            Some(_) => {
                return match self.entries.binary_search_by_key(&seq, |e| e.seq) {
                    Ok(i) => {
                        let old = self.entries[i].value.replace(value);
                        if old.is_none() {
                            self.live += 1;
                        }
                        old
                    }
                    Err(i) => {
                        self.entries.insert(
                            i,
                            Entry {
                                seq,
                                value: Some(value),
                            },
                        );
                        self.live += 1;
                        None
                    }
                };
            }
        }
        self.entries.push_back(Entry {
            seq,
            value: Some(value),
        });
        self.live += 1;
        None
    }

    pub fn get(&self, seq: &u64) -> Option<&V> {
        let i = self.position(*seq)?;
        self.entries[i].value.as_ref()
    }

    pub fn get_mut(&mut self, seq: &u64) -> Option<&mut V> {
        let i = self.position(*seq)?;
        self.entries[i].value.as_mut()
    }

    pub fn contains_key(&self, seq: &u64) -> bool {
        self.get(seq).is_some()
    }

    pub fn remove(&mut self, seq: &u64) -> Option<V> {
        let i = self.position(*seq)?;
        let value = self.entries[i].value.take()?;
        self.live -= 1;
        self.tidy();
        Some(value)
    }

    /// The lowest seq held and its value.
    pub fn first(&self) -> Option<(u64, &V)> {
        let e = self.entries.front()?;
        e.value.as_ref().map(|v| (e.seq, v))
    }

    pub fn first_key(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Held entries with a seq of at least `from`, in seq order.
    pub fn range_from(&self, from: u64) -> impl Iterator<Item = (u64, &V)> {
        let start = self.entries.partition_point(|e| e.seq < from);
        self.entries
            .range(start..)
            .filter_map(|e| e.value.as_ref().map(|v| (e.seq, v)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.range_from(0)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().filter_map(|e| e.value.as_mut())
    }

    /// Restores the invariants after a removal: live entries at both ends,
    /// holes at most half as many as live entries (or a few), capacity at
    /// most twice the entries (or a few): at most three slots per live
    /// entry.
    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|e| e.value.is_none()) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|e| e.value.is_none()) {
            self.entries.pop_back();
        }
        let holes = self.entries.len() - self.live;
        if 2 * holes > self.live && holes >= MIN_HOLES_TO_COMPACT {
            self.entries.retain(|e| e.value.is_some());
        }
        // Growth doubles at full capacity, so shrinking to 1.5× cannot
        // alternate with it.
        let cap = self.entries.capacity();
        let len = self.entries.len();
        if cap > MIN_CAPACITY && cap > 2 * len {
            self.entries.shrink_to((len + len / 2).max(MIN_CAPACITY));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert at the next seq after skipping this many.
        Push(u8),
        /// Insert at an arbitrary seq (below the newest too).
        InsertAt(u16),
        Remove(u16),
        RemoveFirst,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..3).prop_map(Op::Push),
            1 => any::<u16>().prop_map(|s| Op::InsertAt(s % 512)),
            4 => any::<u16>().prop_map(|s| Op::Remove(s % 512)),
            2 => Just(Op::RemoveFirst),
        ]
    }

    proptest! {
        /// Every operation answers exactly as a `BTreeMap` does.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 0..400)) {
            let mut map = SeqMap::new();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(skip) => {
                        next += u64::from(skip);
                        prop_assert_eq!(map.insert(next, i), model.insert(next, i));
                        next += 1;
                    }
                    Op::InsertAt(seq) => {
                        let seq = u64::from(seq);
                        prop_assert_eq!(map.insert(seq, i), model.insert(seq, i));
                        next = next.max(seq + 1);
                    }
                    Op::Remove(seq) => {
                        let seq = u64::from(seq);
                        prop_assert_eq!(map.remove(&seq), model.remove(&seq));
                    }
                    Op::RemoveFirst => {
                        let first = model.keys().next().copied();
                        prop_assert_eq!(map.first_key(), first);
                        if let Some(seq) = first {
                            prop_assert_eq!(map.remove(&seq), model.remove(&seq));
                        }
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.first(), model.iter().next().map(|(&s, v)| (s, v)));
                let from = next / 2;
                prop_assert!(map.range_from(from).eq(model.range(from..).map(|(&s, v)| (s, v))));
                for seq in [0, from, next.saturating_sub(1), next] {
                    prop_assert_eq!(map.get(&seq), model.get(&seq));
                    prop_assert_eq!(map.contains_key(&seq), model.contains_key(&seq));
                }
                prop_assert!(2 * map.entries.len() <= 3 * map.live + 2 * MIN_HOLES_TO_COMPACT);
            }
            for v in map.values_mut() {
                *v += 1;
            }
            prop_assert!(map.iter().map(|(_, &v)| v).eq(model.values().map(|&v| v + 1)));
        }
    }

    #[test]
    fn holes_are_compacted_and_capacity_given_back() {
        let mut map = SeqMap::new();
        for seq in 1..=100_000u64 {
            map.insert(seq, seq);
        }
        // Keep every 1000th: the rest are holes in the middle.
        for seq in 1..=100_000u64 {
            if seq % 1000 != 1 {
                assert_eq!(map.remove(&seq), Some(seq));
            }
        }
        assert_eq!(map.len(), 100);
        assert!(map.entries.len() <= 150 + MIN_HOLES_TO_COMPACT);
        assert!(map.entries.capacity() <= 1024, "{}", map.entries.capacity());
        assert_eq!(map.get(&99_001), Some(&99_001));
        assert_eq!(map.get(&99_002), None);
    }
}
