//! Model-based test: random publish / fetch / ack / nak / sync / reopen
//! (clean or crash) / delete-and-rebind sequences against a simple model of
//! at-least-once.
//!
//! The model, per consumer:
//! - a delivered message was published, matches the consumer's filter and
//!   carries its payload;
//! - a message acked durably (before a state sync, a clean close, or a
//!   drop) is never delivered again; one acked in this run is not delivered
//!   again in this run either; one acked since the last sync may come back
//!   after a crash (the documented window);
//! - in the end every published message that matches is delivered at least
//!   once, and after acking everything the stream is empty and a clean
//!   reopen delivers nothing;
//! - a consumer deleted and bound again (with or without a crash right
//!   after the delete) is a new consumer: what it is owed starts after the
//!   delete, and nothing of the old one comes back (a message it has not
//!   had yet arrives as a first delivery, never as a redelivery of the old
//!   consumer's).

use super::tests::test_options;
use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const SUBJECTS: [&str; 3] = ["s", "t", "u"];

#[derive(Debug, Clone)]
enum Op {
    Publish { subject: usize, n: u8 },
    Fetch { consumer: usize, max: u8 },
    Ack { consumer: usize, pick: u16 },
    Nak { consumer: usize, pick: u16 },
    Sync,
    Reopen { clean: bool },
    Delete { consumer: usize, crash: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SUBJECTS.len(), 1u8..4).prop_map(|(subject, n)| Op::Publish { subject, n }),
        3 => (0..2usize, 1u8..6).prop_map(|(consumer, max)| Op::Fetch { consumer, max }),
        3 => (0..2usize, any::<u16>()).prop_map(|(consumer, pick)| Op::Ack { consumer, pick }),
        1 => (0..2usize, any::<u16>()).prop_map(|(consumer, pick)| Op::Nak { consumer, pick }),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (0..2usize, any::<bool>()).prop_map(|(consumer, crash)| Op::Delete { consumer, crash }),
    ]
}

/// "all" sees every subject; "t" only subject `t`. Nobody wants `u`.
fn configs() -> [ConsumerConfig; 2] {
    let mut t = ConsumerConfig::new("t");
    t.filter_subjects = vec!["t".into()];
    t.ack_wait = Duration::from_secs(3600);
    let mut all = ConsumerConfig::new("all");
    all.ack_wait = Duration::from_secs(3600);
    [all, t]
}

#[derive(Default)]
struct ConsumerModel {
    /// Acked, and the ack is on disk: never delivered again.
    acked_durable: BTreeSet<u64>,
    /// Acked in this run, not synced yet.
    acked_volatile: BTreeSet<u64>,
    /// Delivered in this run and not acked (what the test may ack or nak).
    outstanding: BTreeSet<u64>,
    /// Delivered at least once, ever.
    delivered: BTreeSet<u64>,
}

struct Harness {
    dir: tempfile::TempDir,
    bus: Option<Arc<SegmentBus>>,
    consumers: Vec<Arc<dyn Consumer>>,
    /// seq → (subject, payload) of every accepted message.
    published: BTreeMap<u64, (usize, Bytes)>,
    models: [ConsumerModel; 2],
    /// Per consumer, the last seq published before it was last deleted:
    /// it is owed only what follows.
    floors: [u64; 2],
    next_id: u64,
}

fn options() -> SegmentBusOptions {
    SegmentBusOptions {
        // Only explicit syncs, close and drop write consumer state.
        state_sync_interval: Duration::from_secs(3600),
        log: LogConfig {
            segment_bytes: 2048,
            ..test_options().log
        },
    }
}

impl Harness {
    async fn open(&mut self) {
        let (bus, _) =
            SegmentBus::open(self.dir.path(), crate::conformance::unlimited(), options())
                .expect("open");
        self.consumers.clear();
        for cfg in configs() {
            self.consumers.push(bus.consumer(cfg).await.expect("bind"));
        }
        self.bus = Some(bus);
    }

    fn bus(&self) -> &Arc<SegmentBus> {
        self.bus.as_ref().expect("open")
    }

    fn check(&mut self, consumer: usize, batch: &[Received]) {
        let filter = &configs()[consumer];
        let m = &mut self.models[consumer];
        for r in batch {
            let (subject, payload) = self
                .published
                .get(&r.seq)
                .unwrap_or_else(|| panic!("seq {} was never published", r.seq));
            assert!(
                filter.matches(SUBJECTS[*subject]),
                "seq {} not for {}",
                r.seq,
                filter.name
            );
            assert_eq!(&r.payload, payload, "seq {}", r.seq);
            assert!(
                !m.acked_durable.contains(&r.seq),
                "durably acked seq {} redelivered",
                r.seq
            );
            assert!(
                !m.acked_volatile.contains(&r.seq),
                "seq {} redelivered in the run it was acked",
                r.seq
            );
            if !m.delivered.contains(&r.seq) {
                assert_eq!(
                    r.delivery_count, 1,
                    "seq {} first reaches {} as a redelivery: a deleted consumer's state came back?",
                    r.seq, filter.name
                );
            }
            m.outstanding.insert(r.seq);
            m.delivered.insert(r.seq);
        }
    }

    /// The ack / nak target: the `pick`-th outstanding message, if any.
    fn pick(&self, consumer: usize, pick: u16) -> Option<u64> {
        let o = &self.models[consumer].outstanding;
        (!o.is_empty()).then(|| *o.iter().nth(pick as usize % o.len()).unwrap())
    }

    fn make_durable(&mut self) {
        for m in &mut self.models {
            let v = std::mem::take(&mut m.acked_volatile);
            m.acked_durable.extend(v);
        }
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish { subject, n } => {
                for _ in 0..n {
                    self.next_id += 1;
                    let payload = Bytes::from(format!("id-{}-{}", self.next_id, "x".repeat(40)));
                    let m = Message {
                        subject: SUBJECTS[subject].into(),
                        headers: Vec::new(),
                        payload: payload.clone(),
                    };
                    let seq = self.bus().publish(m).await.expect("publish");
                    assert!(
                        self.published.insert(seq, (subject, payload)).is_none(),
                        "seq {seq} reused"
                    );
                }
            }
            Op::Fetch { consumer, max } => {
                let batch = self.consumers[consumer]
                    .fetch(max as usize, Duration::ZERO)
                    .await
                    .unwrap();
                self.check(consumer, &batch);
            }
            Op::Ack { consumer, pick } => {
                if let Some(seq) = self.pick(consumer, pick) {
                    self.consumers[consumer].ack(seq).await.unwrap();
                    let m = &mut self.models[consumer];
                    m.outstanding.remove(&seq);
                    m.acked_volatile.insert(seq);
                }
            }
            Op::Nak { consumer, pick } => {
                if let Some(seq) = self.pick(consumer, pick) {
                    self.consumers[consumer]
                        .nak(seq, Duration::ZERO)
                        .await
                        .unwrap();
                }
            }
            Op::Sync => {
                self.bus().sync_state().unwrap();
                self.make_durable();
            }
            Op::Reopen { clean } => self.reopen(clean).await,
            Op::Delete { consumer, crash } => {
                let config = configs()[consumer].clone();
                assert!(self.bus().delete_consumer(&config.name).await.unwrap());
                self.models[consumer] = ConsumerModel::default();
                self.floors[consumer] = self.published.keys().last().copied().unwrap_or(0);
                if crash {
                    self.reopen(false).await;
                } else {
                    self.consumers[consumer] = self.bus().consumer(config).await.unwrap();
                }
            }
        }
    }

    async fn reopen(&mut self, clean: bool) {
        {
            {
                let bus = self.bus.take().unwrap();
                if clean {
                    bus.close().await;
                    drop(bus);
                    self.make_durable();
                } else {
                    bus.crash().await;
                    // Acks since the last sync are lost: those messages may
                    // (and here will) be delivered again.
                    for m in &mut self.models {
                        m.acked_volatile.clear();
                    }
                }
                self.consumers.clear();
                for m in &mut self.models {
                    // Everything outstanding is redelivered after a restart.
                    m.outstanding.clear();
                }
                self.open().await;
            }
        }
    }

    /// Acks what is outstanding, then fetches and acks until nothing is left.
    async fn drain_all(&mut self) {
        for consumer in 0..2 {
            for seq in std::mem::take(&mut self.models[consumer].outstanding) {
                self.consumers[consumer].ack(seq).await.unwrap();
                self.models[consumer].acked_volatile.insert(seq);
            }
            loop {
                let batch = self.consumers[consumer]
                    .fetch(1000, Duration::ZERO)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                self.check(consumer, &batch);
                for r in batch {
                    self.consumers[consumer].ack(r.seq).await.unwrap();
                    let m = &mut self.models[consumer];
                    m.outstanding.remove(&r.seq);
                    m.acked_volatile.insert(r.seq);
                }
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness {
            dir: tempfile::tempdir().unwrap(),
            bus: None,
            consumers: Vec::new(),
            published: BTreeMap::new(),
            models: Default::default(),
            floors: [0; 2],
            next_id: 0,
        };
        h.open().await;
        for op in &ops {
            h.apply(op).await;
        }
        h.drain_all().await;
        // At least once: everything published that matches was delivered.
        for (consumer, cfg) in configs().iter().enumerate() {
            for (seq, (subject, _)) in &h.published {
                if cfg.matches(SUBJECTS[*subject]) && *seq > h.floors[consumer] {
                    assert!(
                        h.models[consumer].delivered.contains(seq),
                        "seq {seq} never delivered to {}",
                        cfg.name
                    );
                }
            }
        }
        assert_eq!(h.bus().stats().messages, 0);
        // After a clean reopen nothing acked comes back.
        h.apply(&Op::Reopen { clean: true }).await;
        for c in &h.consumers {
            assert!(c.fetch(1000, Duration::ZERO).await.unwrap().is_empty());
        }
        let bus = h.bus.take().unwrap();
        bus.close().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn at_least_once_across_reopens_and_crashes(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
