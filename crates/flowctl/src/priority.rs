//! Priority load shedding ([`PriorityShedder`]) and priority dispatch with
//! aging ([`PriorityQueue`]).
//!
//! Priorities are `0..=9` and a LOWER number is a HIGHER priority (0 is the
//! most critical), as in the seed's `heapq`. A value above 9 is clamped to 9
//! (see [`clamp_priority`]): it can only make an event *more* likely to be
//! shed or served later, never less, so a bad `X-Priority` header cannot buy
//! precedence. Parsing the header (and what to do with `-1` or `abc`) is the
//! caller's business; this module only sees `u8`.
//!
//! Shedding guarantees:
//! - [`SheddingPolicy`] holds one or more levels `queue_depth_above →
//!   shed_priority_above`. Under the deepest level whose threshold the depth
//!   exceeds (strictly: `depth > queue_depth_above`), priorities
//!   `> shed_priority_above` are shed and the rest admitted; below every
//!   threshold everything is admitted.
//! - Priority 0 is never shed, by construction: `shed_priority_above` is
//!   unsigned, and [`ShedLevel::new`] refuses a negative value (the only one
//!   that could shed priority 0) with [`PolicyError::WouldShedCritical`].
//! - Levels are validated: thresholds strictly increasing, and a deeper level
//!   never sheds less than a shallower one. So shedding is monotonic: if
//!   priority `p` is shed at depth `d`, so is every `p' > p` at every
//!   `d' >= d`.
//! - [`PriorityShedder`] counts admitted and shed decisions per priority
//!   (lock-free, 10 counters each).
//!
//! Dispatch guarantees ([`PriorityQueue`]):
//! - Anti-starvation rule (aging): an item's effective priority is
//!   `priority − waited / aging_interval` (continuous, not floored), and pop
//!   serves the lowest effective priority, ties to the older item. Since every
//!   item ages at the same rate this is the same as serving the smallest
//!   *virtual deadline* `enqueued_at + priority × aging_interval`, so the order
//!   never depends on when pop is called and only the head of each
//!   per-priority FIFO needs comparing (10 comparisons per pop).
//! - Bound: an item of priority `p` pushed at `t` is popped before every item
//!   pushed at or after `t + p × aging_interval`. So newer arrivals overtake
//!   it only during its first `p × aging_interval` of waiting; after that at
//!   most `n − 1` items are popped before it, `n` being the queue length at
//!   that moment (at most the capacity). A priority-0 item is never overtaken
//!   by a newer one.
//! - When backlogged, higher priority goes first: an item of priority `p`
//!   goes before one of priority `q > p` pushed less than `(q − p) ×
//!   aging_interval` earlier. Items pushed at the same instant go by
//!   priority, then FIFO. A zero `aging_interval` makes the queue plain FIFO.
//! - Bounded: at most `capacity` items. A push into a full queue evicts the
//!   NEWEST item of the lowest-priority (largest number) non-empty level if
//!   the new item's priority is strictly higher, and returns the evicted
//!   item; otherwise it refuses with [`QueueFull`], handing the new item
//!   back. Eviction is shedding, not starvation: the bound above holds for
//!   every item that is not evicted.
//!
//! Not guaranteed: [`PriorityQueue`] is not synchronised (`&mut self`); wrap
//! it in a mutex to share it.

use crate::clock::{Clock, TokioClock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The lowest priority (the largest number); larger values are clamped to it.
pub const LOWEST_PRIORITY: u8 = 9;

/// Number of distinct priorities, `0..=LOWEST_PRIORITY`.
pub const PRIORITY_LEVELS: usize = LOWEST_PRIORITY as usize + 1;

/// `priority`, or [`LOWEST_PRIORITY`] if it is out of range.
pub fn clamp_priority(priority: u8) -> u8 {
    priority.min(LOWEST_PRIORITY)
}

/// Why a shedding level or policy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("shedPriorityAbove {shed_priority_above} would shed priority 0, which is never shed")]
    WouldShedCritical { shed_priority_above: i64 },
    #[error("shedPriorityAbove {shed_priority_above} is out of range 0..={LOWEST_PRIORITY}")]
    PriorityOutOfRange { shed_priority_above: i64 },
    #[error("queueDepthAbove must increase from level to level: {next} follows {previous}")]
    ThresholdsNotIncreasing { previous: u64, next: u64 },
    #[error(
        "the level above depth {queue_depth_above} sheds only priorities above \
         {shed_priority_above}, less than the shallower level (above {previous})"
    )]
    ShedsLessWhenDeeper {
        queue_depth_above: u64,
        shed_priority_above: u8,
        previous: u8,
    },
}

/// One shedding level: past `queue_depth_above`, shed priorities above
/// `shed_priority_above`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedLevel {
    queue_depth_above: u64,
    shed_priority_above: u8,
}

impl ShedLevel {
    /// A level, refusing a `shed_priority_above` outside `0..=9` (negative
    /// would shed priority 0).
    pub fn new(queue_depth_above: u64, shed_priority_above: i64) -> Result<Self, PolicyError> {
        if shed_priority_above < 0 {
            return Err(PolicyError::WouldShedCritical {
                shed_priority_above,
            });
        }
        let shed_priority_above = u8::try_from(shed_priority_above)
            .ok()
            .filter(|&p| p <= LOWEST_PRIORITY)
            .ok_or(PolicyError::PriorityOutOfRange {
                shed_priority_above,
            })?;
        Ok(ShedLevel {
            queue_depth_above,
            shed_priority_above,
        })
    }

    pub fn queue_depth_above(&self) -> u64 {
        self.queue_depth_above
    }

    pub fn shed_priority_above(&self) -> u8 {
        self.shed_priority_above
    }
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Refuse the event (429 at a webhook, skipped at a sensor).
    Shed {
        /// The (clamped) priority of the event.
        priority: u8,
        queue_depth: u64,
        /// The level that shed it.
        queue_depth_above: u64,
        shed_priority_above: u8,
    },
}

impl Decision {
    /// Whether the event is admitted.
    pub fn is_admit(&self) -> bool {
        matches!(self, Decision::Admit)
    }
}

/// Validated shedding levels, ordered by increasing depth threshold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SheddingPolicy {
    levels: Vec<ShedLevel>,
}

impl SheddingPolicy {
    /// Levels in increasing threshold order, each shedding at least as much
    /// as the one before.
    pub fn new(levels: impl IntoIterator<Item = ShedLevel>) -> Result<Self, PolicyError> {
        let levels: Vec<ShedLevel> = levels.into_iter().collect();
        for pair in levels.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            if next.queue_depth_above <= previous.queue_depth_above {
                return Err(PolicyError::ThresholdsNotIncreasing {
                    previous: previous.queue_depth_above,
                    next: next.queue_depth_above,
                });
            }
            if next.shed_priority_above > previous.shed_priority_above {
                return Err(PolicyError::ShedsLessWhenDeeper {
                    queue_depth_above: next.queue_depth_above,
                    shed_priority_above: next.shed_priority_above,
                    previous: previous.shed_priority_above,
                });
            }
        }
        Ok(SheddingPolicy { levels })
    }

    /// The one-level policy of spillway's `shedding: {queueDepthAbove,
    /// shedPriorityAbove}`.
    pub fn single(queue_depth_above: u64, shed_priority_above: i64) -> Result<Self, PolicyError> {
        SheddingPolicy::new([ShedLevel::new(queue_depth_above, shed_priority_above)?])
    }

    /// A policy that sheds nothing.
    pub fn never() -> Self {
        SheddingPolicy::default()
    }

    pub fn levels(&self) -> &[ShedLevel] {
        &self.levels
    }

    /// The deepest level whose threshold `queue_depth` exceeds.
    pub fn level_for(&self, queue_depth: u64) -> Option<ShedLevel> {
        let exceeded = self
            .levels
            .partition_point(|level| level.queue_depth_above < queue_depth);
        exceeded.checked_sub(1).map(|i| self.levels[i])
    }

    /// The decision for one event, without counting it.
    pub fn decide(&self, priority: u8, queue_depth: u64) -> Decision {
        let priority = clamp_priority(priority);
        match self.level_for(queue_depth) {
            Some(level) if priority > level.shed_priority_above => Decision::Shed {
                priority,
                queue_depth,
                queue_depth_above: level.queue_depth_above,
                shed_priority_above: level.shed_priority_above,
            },
            _ => Decision::Admit,
        }
    }
}

/// Decisions taken for one priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PriorityCounts {
    pub admitted: u64,
    pub shed: u64,
}

/// A [`SheddingPolicy`] that counts its decisions per priority.
#[derive(Debug, Default)]
pub struct PriorityShedder {
    policy: SheddingPolicy,
    admitted: [AtomicU64; PRIORITY_LEVELS],
    shed: [AtomicU64; PRIORITY_LEVELS],
}

impl PriorityShedder {
    /// A shedder with all counters at zero.
    pub fn new(policy: SheddingPolicy) -> Self {
        PriorityShedder {
            policy,
            ..PriorityShedder::default()
        }
    }

    pub fn policy(&self) -> &SheddingPolicy {
        &self.policy
    }

    /// Decides for one event (priority clamped to 0..=9) and counts it.
    pub fn decide(&self, priority: u8, queue_depth: u64) -> Decision {
        let priority = clamp_priority(priority);
        let decision = self.policy.decide(priority, queue_depth);
        let counters = if decision.is_admit() {
            &self.admitted
        } else {
            &self.shed
        };
        // Counters are statistics; no other memory depends on them.
        counters[usize::from(priority)].fetch_add(1, Ordering::Relaxed);
        decision
    }

    /// Decisions counted for `priority` (clamped to 0..=9).
    pub fn counts(&self, priority: u8) -> PriorityCounts {
        let i = usize::from(clamp_priority(priority));
        PriorityCounts {
            admitted: self.admitted[i].load(Ordering::Relaxed),
            shed: self.shed[i].load(Ordering::Relaxed),
        }
    }

    /// Decisions counted for every priority, indexed by priority.
    pub fn snapshot(&self) -> [PriorityCounts; PRIORITY_LEVELS] {
        std::array::from_fn(|p| self.counts(p as u8))
    }
}

/// An item leaving a [`PriorityQueue`] (popped or evicted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    /// The (clamped) priority it was pushed with.
    pub priority: u8,
    /// The queue's clock reading at push time.
    pub enqueued_at: Duration,
    pub item: T,
}

/// A push refused because the queue is full of items at least as important.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority queue full ({capacity} items, none of lower priority than {priority})")]
pub struct QueueFull<T> {
    /// The (clamped) priority of the refused item.
    pub priority: u8,
    pub capacity: usize,
    pub item: T,
}

struct Slot<T> {
    deadline: Duration,
    seq: u64,
    enqueued_at: Duration,
    item: T,
}

/// A bounded priority queue with aging; see the module docs for its rules.
pub struct PriorityQueue<T, C: Clock = TokioClock> {
    // One FIFO per priority: deadlines grow along each one, so its head is
    // its minimum.
    levels: [VecDeque<Slot<T>>; PRIORITY_LEVELS],
    len: usize,
    capacity: usize,
    aging_interval: Duration,
    next_seq: u64,
    clock: C,
}

impl<T, C: Clock> std::fmt::Debug for PriorityQueue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_level: Vec<usize> = self.levels.iter().map(VecDeque::len).collect();
        f.debug_struct("PriorityQueue")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("aging_interval", &self.aging_interval)
            .field("per_level", &per_level)
            .finish_non_exhaustive()
    }
}

impl<T> PriorityQueue<T, TokioClock> {
    /// A queue on tokio time.
    pub fn new(capacity: usize, aging_interval: Duration) -> Self {
        PriorityQueue::with_clock(capacity, aging_interval, TokioClock::new())
    }
}

impl<T, C: Clock> PriorityQueue<T, C> {
    /// A queue of at most `capacity` items, where waiting `aging_interval`
    /// is worth one priority step.
    pub fn with_clock(capacity: usize, aging_interval: Duration, clock: C) -> Self {
        PriorityQueue {
            levels: std::array::from_fn(|_| VecDeque::new()),
            len: 0,
            capacity,
            aging_interval,
            next_seq: 0,
            clock,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn aging_interval(&self) -> Duration {
        self.aging_interval
    }

    /// Items queued at `priority` (clamped to 0..=9).
    pub fn len_at(&self, priority: u8) -> usize {
        self.levels[usize::from(clamp_priority(priority))].len()
    }

    /// Queues `item`; when full, evicts (and returns) the newest item of the
    /// lowest priority if `item` outranks it, else hands `item` back.
    pub fn push(&mut self, priority: u8, item: T) -> Result<Option<Queued<T>>, QueueFull<T>> {
        let priority = clamp_priority(priority);
        let mut evicted = None;
        if self.len >= self.capacity {
            let lowest = self
                .levels
                .iter()
                .rposition(|level| !level.is_empty())
                .filter(|&lowest| usize::from(priority) < lowest);
            let Some(lowest) = lowest else {
                return Err(QueueFull {
                    priority,
                    capacity: self.capacity,
                    item,
                });
            };
            evicted = self.levels[lowest].pop_back().map(|slot| Queued {
                priority: lowest as u8,
                enqueued_at: slot.enqueued_at,
                item: slot.item,
            });
            self.len -= 1;
        }
        let enqueued_at = self.clock.now();
        let head_start = self.aging_interval.saturating_mul(u32::from(priority));
        self.levels[usize::from(priority)].push_back(Slot {
            deadline: enqueued_at.saturating_add(head_start),
            seq: self.next_seq,
            enqueued_at,
            item,
        });
        self.next_seq += 1;
        self.len += 1;
        Ok(evicted)
    }

    /// Every queued item, by priority then age (not the pop order, which
    /// aging can change).
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.levels.iter().flatten().map(|slot| &slot.item)
    }

    /// Removes the item with the lowest effective priority (oldest on ties).
    pub fn pop(&mut self) -> Option<Queued<T>> {
        let (priority, _) = self
            .levels
            .iter()
            .enumerate()
            .filter_map(|(p, level)| level.front().map(|head| (p, (head.deadline, head.seq))))
            .min_by_key(|&(_, key)| key)?;
        let slot = self.levels[priority].pop_front()?;
        self.len -= 1;
        Some(Queued {
            priority: priority as u8,
            enqueued_at: slot.enqueued_at,
            item: slot.item,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn admitted(policy: &SheddingPolicy, depth: u64) -> Vec<u8> {
        (0..=LOWEST_PRIORITY)
            .filter(|&p| policy.decide(p, depth).is_admit())
            .collect()
    }

    /// seed 004 / webhook `shedding: {queueDepthAbove: 80000,
    /// shedPriorityAbove: 2}`.
    #[test]
    fn webhook_policy_sheds_above_two_past_80000() {
        let shedder = PriorityShedder::new(SheddingPolicy::single(80_000, 2).unwrap());
        for p in 0..=9 {
            let decision = shedder.decide(p, 80_001);
            if p <= 2 {
                assert_eq!(decision, Decision::Admit, "priority {p}");
            } else {
                assert_eq!(
                    decision,
                    Decision::Shed {
                        priority: p,
                        queue_depth: 80_001,
                        queue_depth_above: 80_000,
                        shed_priority_above: 2
                    }
                );
            }
        }
        for p in 0..=9 {
            assert_eq!(shedder.decide(p, 80_000), Decision::Admit, "priority {p}");
        }
        let snapshot = shedder.snapshot();
        for (p, counts) in snapshot.iter().enumerate() {
            let expected = if p <= 2 {
                PriorityCounts {
                    admitted: 2,
                    shed: 0,
                }
            } else {
                PriorityCounts {
                    admitted: 1,
                    shed: 1,
                }
            };
            assert_eq!(*counts, expected, "priority {p}");
        }
    }

    /// Sensor `shedding: {queueDepthAbove: 50000, shedPriorityAbove: 3}`.
    #[test]
    fn sensor_policy_sheds_above_three_past_50000() {
        let policy = SheddingPolicy::single(50_000, 3).unwrap();
        assert_eq!(admitted(&policy, 50_000), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(admitted(&policy, 50_001), [0, 1, 2, 3]);
        assert_eq!(admitted(&policy, u64::MAX), [0, 1, 2, 3]);
    }

    #[test]
    fn the_deepest_exceeded_level_decides() {
        let policy = SheddingPolicy::new([
            ShedLevel::new(1_000, 7).unwrap(),
            ShedLevel::new(10_000, 4).unwrap(),
            ShedLevel::new(50_000, 0).unwrap(),
        ])
        .unwrap();
        assert_eq!(admitted(&policy, 0).len(), 10);
        assert_eq!(admitted(&policy, 1_000).len(), 10);
        assert_eq!(admitted(&policy, 1_001), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(admitted(&policy, 10_001), [0, 1, 2, 3, 4]);
        assert_eq!(admitted(&policy, 50_001), [0]);
        assert_eq!(SheddingPolicy::never().decide(9, u64::MAX), Decision::Admit);
    }

    #[test]
    fn invalid_levels_are_refused() {
        assert_eq!(
            ShedLevel::new(10, -1),
            Err(PolicyError::WouldShedCritical {
                shed_priority_above: -1
            })
        );
        assert_eq!(
            ShedLevel::new(10, 10),
            Err(PolicyError::PriorityOutOfRange {
                shed_priority_above: 10
            })
        );
        assert_eq!(
            ShedLevel::new(10, 300),
            Err(PolicyError::PriorityOutOfRange {
                shed_priority_above: 300
            })
        );
        let level = |depth, above| ShedLevel::new(depth, above).unwrap();
        assert_eq!(
            SheddingPolicy::new([level(100, 5), level(100, 3)]),
            Err(PolicyError::ThresholdsNotIncreasing {
                previous: 100,
                next: 100
            })
        );
        assert_eq!(
            SheddingPolicy::new([level(100, 5), level(50, 3)]),
            Err(PolicyError::ThresholdsNotIncreasing {
                previous: 100,
                next: 50
            })
        );
        assert_eq!(
            SheddingPolicy::new([level(100, 3), level(200, 5)]),
            Err(PolicyError::ShedsLessWhenDeeper {
                queue_depth_above: 200,
                shed_priority_above: 5,
                previous: 3
            })
        );
        assert_eq!(
            PolicyError::WouldShedCritical {
                shed_priority_above: -1
            }
            .to_string(),
            "shedPriorityAbove -1 would shed priority 0, which is never shed"
        );
    }

    #[test]
    fn out_of_range_priorities_count_and_shed_as_the_lowest() {
        let shedder = PriorityShedder::new(SheddingPolicy::single(10, 8).unwrap());
        assert_eq!(
            shedder.decide(200, 11),
            Decision::Shed {
                priority: 9,
                queue_depth: 11,
                queue_depth_above: 10,
                shed_priority_above: 8
            }
        );
        assert_eq!(
            shedder.counts(9),
            PriorityCounts {
                admitted: 0,
                shed: 1
            }
        );
        assert_eq!(shedder.counts(200), shedder.counts(9));
    }

    fn queue(capacity: usize) -> (PriorityQueue<&'static str, FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        let queue = PriorityQueue::with_clock(capacity, Duration::from_secs(1), clock.clone());
        (queue, clock)
    }

    fn drain<T, C: Clock>(queue: &mut PriorityQueue<T, C>) -> Vec<T> {
        std::iter::from_fn(|| queue.pop().map(|q| q.item)).collect()
    }

    #[test]
    fn a_backlog_pushed_at_once_goes_by_priority_then_fifo() {
        let (mut queue, _clock) = queue(10);
        for (p, item) in [(5, "a"), (0, "b"), (9, "c"), (5, "d"), (0, "e"), (2, "f")] {
            assert!(queue.push(p, item).unwrap().is_none());
        }
        assert_eq!(drain(&mut queue), ["b", "e", "f", "a", "d", "c"]);
    }

    /// Virtual deadlines (aging 1 s): a@0 p5 → 5, b@0 p9 → 9, c@2 p0 → 2,
    /// d@4 p1 → 5, e@6 p0 → 6. `a` has waited 4 s (worth 4 steps) when `d`
    /// arrives, ties with it and wins as the older.
    #[test]
    fn waiting_is_worth_one_priority_step_per_aging_interval() {
        let (mut queue, clock) = queue(10);
        queue.push(5, "a").unwrap();
        queue.push(9, "b").unwrap();
        clock.advance(Duration::from_secs(2));
        queue.push(0, "c").unwrap();
        clock.advance(Duration::from_secs(2));
        queue.push(1, "d").unwrap();
        clock.advance(Duration::from_secs(2));
        queue.push(0, "e").unwrap();
        assert_eq!(drain(&mut queue), ["c", "a", "d", "e", "b"]);
    }

    /// A priority-9 item under a steady stream of priority-0 traffic (one in,
    /// one out per second) waits exactly 9 aging intervals.
    #[test]
    fn a_lowest_priority_item_is_served_after_nine_aging_intervals() {
        let clock = FakeClock::new();
        let mut queue = PriorityQueue::with_clock(100, Duration::from_secs(1), clock.clone());
        queue.push(9, None).unwrap();
        let mut served_at = None;
        for second in 0..20u64 {
            queue.push(0, Some(second)).unwrap();
            if queue.pop().unwrap().item.is_none() {
                served_at = Some(clock.now());
            }
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(served_at, Some(Duration::from_secs(9)));
    }

    #[test]
    fn zero_aging_is_plain_fifo() {
        let mut queue = PriorityQueue::with_clock(10, Duration::ZERO, FakeClock::new());
        for (p, item) in [(9, "a"), (0, "b"), (5, "c")] {
            queue.push(p, item).unwrap();
        }
        assert_eq!(drain(&mut queue), ["a", "b", "c"]);
    }

    #[test]
    fn a_full_queue_evicts_the_newest_lowest_priority_item_for_a_higher_one() {
        let (mut queue, clock) = queue(3);
        queue.push(7, "old7").unwrap();
        queue.push(7, "new7").unwrap();
        queue.push(3, "three").unwrap();
        clock.advance(Duration::from_secs(1));

        let evicted = queue.push(5, "five").unwrap().unwrap();
        assert_eq!(
            evicted,
            Queued {
                priority: 7,
                enqueued_at: Duration::ZERO,
                item: "new7"
            }
        );
        assert_eq!(queue.len(), 3);

        // `old7` keeps 7 the lowest queued priority: an equal or lower
        // (clamped) priority is refused and handed back.
        assert_eq!(
            queue.push(7, "another7"),
            Err(QueueFull {
                priority: 7,
                capacity: 3,
                item: "another7"
            })
        );
        assert_eq!(
            queue.push(42, "clamped").unwrap_err().priority,
            LOWEST_PRIORITY
        );
        assert_eq!(queue.push(0, "zero").unwrap().unwrap().item, "old7");
        assert_eq!(drain(&mut queue), ["zero", "three", "five"]);
    }

    #[test]
    fn a_zero_capacity_queue_refuses_everything() {
        let (mut queue, _clock) = queue(0);
        assert_eq!(queue.push(0, "x").unwrap_err().item, "x");
        assert!(queue.is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn valid_policy() -> impl Strategy<Value = SheddingPolicy> {
            prop::collection::vec((1u64..1000, 0u8..=9), 0..5).prop_map(|steps| {
                // Increasing thresholds, non-increasing shed priorities.
                let mut depth = 0;
                let mut above = LOWEST_PRIORITY;
                let levels = steps.into_iter().map(|(gap, cap)| {
                    depth += gap;
                    above = above.min(cap);
                    ShedLevel::new(depth, i64::from(above)).unwrap()
                });
                SheddingPolicy::new(levels.collect::<Vec<_>>()).unwrap()
            })
        }

        #[derive(Debug, Clone)]
        enum Op {
            Push { priority: u8, after_ms: u64 },
            Pop,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..12, 0u64..3_000).prop_map(|(priority, after_ms)| Op::Push { priority, after_ms }),
                2 => Just(Op::Pop),
            ]
        }

        proptest! {
            /// Priority 0 is never shed, and shedding grows with priority
            /// number and with depth.
            #[test]
            fn shedding_is_monotonic_and_spares_priority_zero(
                policy in valid_policy(),
                depth in 0u64..6000,
                more in 0u64..6000,
                priority in 0u8..=9,
            ) {
                prop_assert!(policy.decide(0, depth).is_admit());
                prop_assert!(policy.decide(0, u64::MAX).is_admit());
                if !policy.decide(priority, depth).is_admit() {
                    for worse in priority..=LOWEST_PRIORITY {
                        prop_assert!(!policy.decide(worse, depth).is_admit());
                        prop_assert!(!policy.decide(worse, depth + more).is_admit());
                    }
                }
            }

            /// Every pop takes the smallest (deadline, age) queued; nothing
            /// pushed at or after `t + p × aging` overtakes an item pushed at
            /// `t` with priority `p`; the queue stays within capacity; every
            /// item pushed is popped, evicted, refused, or still queued.
            #[test]
            fn pops_respect_the_aging_bound(
                capacity in 1usize..12,
                aging_ms in 0u64..2_000,
                ops in prop::collection::vec(op(), 1..200),
            ) {
                let clock = FakeClock::new();
                let aging = Duration::from_millis(aging_ms);
                let mut queue = PriorityQueue::with_clock(capacity, aging, clock.clone());
                // Model of the queued items: (id, clamped priority, pushed at).
                let mut queued: Vec<(u64, u8, Duration)> = Vec::new();
                let (mut pushed, mut popped, mut evicted, mut refused) = (0u64, 0u64, 0u64, 0u64);
                for op in ops {
                    match op {
                        Op::Push { priority, after_ms } => {
                            clock.advance(Duration::from_millis(after_ms));
                            let id = pushed;
                            pushed += 1;
                            let p = clamp_priority(priority);
                            let was_full = queued.len() == capacity;
                            match queue.push(priority, id) {
                                Ok(None) => {
                                    prop_assert!(!was_full);
                                    queued.push((id, p, clock.now()));
                                }
                                Ok(Some(out)) => {
                                    prop_assert!(was_full);
                                    evicted += 1;
                                    let lowest = queued.iter().map(|q| q.1).max().unwrap();
                                    prop_assert!(p < lowest);
                                    let newest_lowest = queued
                                        .iter()
                                        .filter(|q| q.1 == lowest)
                                        .map(|q| q.0)
                                        .max()
                                        .unwrap();
                                    prop_assert_eq!(out.item, newest_lowest);
                                    prop_assert_eq!(out.priority, lowest);
                                    queued.retain(|q| q.0 != out.item);
                                    queued.push((id, p, clock.now()));
                                }
                                Err(full) => {
                                    prop_assert!(was_full);
                                    refused += 1;
                                    prop_assert_eq!(full.item, id);
                                    prop_assert!(queued.iter().all(|q| q.1 <= p));
                                }
                            }
                        }
                        Op::Pop => match queue.pop() {
                            None => prop_assert!(queued.is_empty()),
                            Some(out) => {
                                popped += 1;
                                let at = queued.iter().position(|q| q.0 == out.item).unwrap();
                                let (id, p, t) = queued.remove(at);
                                prop_assert_eq!((out.priority, out.enqueued_at), (p, t));
                                let deadline = t + aging * u32::from(p);
                                for &(other, op, ot) in &queued {
                                    let other_deadline = ot + aging * u32::from(op);
                                    prop_assert!((deadline, id) < (other_deadline, other));
                                    // The stated bound, checked directly
                                    // (same instant: the older item first).
                                    prop_assert!(
                                        (t, id) < (ot + aging * u32::from(op), other),
                                        "item {} pushed at {:?} overtook item {} (p{}) pushed at {:?}",
                                        id, t, other, op, ot
                                    );
                                }
                            }
                        },
                    }
                    prop_assert_eq!(queue.len(), queued.len());
                    prop_assert!(queue.len() <= capacity);
                }
                let rest = drain(&mut queue).len() as u64;
                prop_assert_eq!(pushed, popped + evicted + refused + rest);
            }
        }
    }
}
