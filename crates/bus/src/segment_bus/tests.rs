//! Segment-bus tests: the conformance suite, reopen (clean and crash),
//! corruption at the bus level, and memory per retained message.

use super::*;
use crate::conformance::{msg, unlimited, Backend};
use crate::segment::SyncPolicy;
use crate::DiscardPolicy;
use tempfile::TempDir;

/// Small segments, no preallocation (64 MiB of zeros per test bus would be
/// slow), a fast state sync.
pub(crate) fn test_options() -> SegmentBusOptions {
    SegmentBusOptions {
        state_sync_interval: Duration::from_millis(20),
        log: LogConfig {
            segment_bytes: 16 << 10,
            preallocate: false,
            sync: SyncPolicy::Always,
            ..LogConfig::default()
        },
    }
}

/// Fresh segment buses in temporary directories, for the conformance suite.
#[derive(Default)]
pub(crate) struct SegmentBackend {
    dirs: Mutex<Vec<TempDir>>,
}

#[async_trait]
impl Backend for SegmentBackend {
    async fn open(&self, limits: Limits) -> Arc<dyn Bus> {
        let dir = tempfile::tempdir().unwrap();
        let (bus, report) = SegmentBus::open(dir.path(), limits, test_options()).unwrap();
        assert_eq!(report.recovery.records, 0);
        self.dirs.lock().push(dir);
        bus
    }
}

mod conformance_tests {
    crate::conformance::conformance_suite!(super::SegmentBackend::default());
}

/// Message `i`: subject `s`, a payload `payload-<i>` padded to 100 bytes.
fn numbered(i: u64) -> Message {
    let mut payload = format!("payload-{i:06}-").into_bytes();
    payload.resize(100, b'.');
    Message {
        subject: "s".into(),
        headers: vec![("ce-id".into(), i.to_string())],
        payload: bytes::Bytes::from(payload),
    }
}

fn open_with(
    dir: &Path,
    limits: Limits,
    options: SegmentBusOptions,
) -> (Arc<SegmentBus>, OpenReport) {
    SegmentBus::open(dir, limits, options).expect("open")
}

fn open(dir: &Path) -> (Arc<SegmentBus>, OpenReport) {
    open_with(dir, unlimited(), test_options())
}

/// Never syncs on its own: only `sync_state`, close and drop write state.
fn manual_sync() -> SegmentBusOptions {
    SegmentBusOptions {
        state_sync_interval: Duration::from_secs(3600),
        ..test_options()
    }
}

async fn publish_range(bus: &Arc<SegmentBus>, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in range {
        seqs.push(bus.publish(numbered(i)).await.expect("publish"));
    }
    seqs
}

/// Everything the consumer can fetch right now, acking nothing.
async fn drain(c: &Arc<dyn Consumer>) -> Vec<Received> {
    let mut out = Vec::new();
    loop {
        let batch = c.fetch(1000, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn seq_list(batch: &[Received]) -> Vec<u64> {
    batch.iter().map(|r| r.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Payload `i` arrived intact with its seq.
fn check_payloads(batch: &[Received], index_of: impl Fn(u64) -> u64) {
    for r in batch {
        let i = index_of(r.seq);
        assert_eq!(r.payload, numbered(i).payload, "seq {}", r.seq);
        assert_eq!(r.header("ce-id"), Some(i.to_string().as_str()));
    }
}

#[tokio::test]
async fn reopen_after_close_redelivers_only_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let seqs = publish_range(&bus, 0..10).await;
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        seq_list(&c.fetch(6, Duration::ZERO).await.unwrap()),
        (1..=6).collect::<Vec<_>>()
    );
    for seq in [1, 3, 5] {
        c.ack(seq).await.unwrap();
    }
    bus.close().await;
    drop((bus, c));

    let (bus, report) = open(dir.path());
    assert_eq!(
        (report.consumers, report.held, report.pending_lost),
        (1, 7, 0)
    );
    assert!(report.consumers_reset.is_empty());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    // Pending ones first (due at once, second delivery), then the rest.
    assert_eq!(seq_list(&got), vec![2, 4, 6, 7, 8, 9, 10]);
    assert_eq!(
        got.iter().map(|r| r.delivery_count).collect::<Vec<_>>(),
        vec![2, 2, 2, 1, 1, 1, 1]
    );
    check_payloads(&got, |seq| seq - 1);
    assert_eq!(bus.stats().last_seq, 10);
    assert_eq!(bus.publish(numbered(10)).await.unwrap(), 11);
}

#[tokio::test]
async fn a_crash_redelivers_acks_since_the_last_sync_and_nothing_before() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..10).await;
    assert_eq!(drain(&c).await.len(), 10);
    for seq in 1..=5 {
        c.ack(seq).await.unwrap();
    }
    bus.sync_state().unwrap();
    // Inside the window: lost with the crash.
    for seq in 6..=8 {
        c.ack(seq).await.unwrap();
    }
    bus.crash().await;
    drop(c);

    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert_eq!(report.held, 5);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    assert_eq!(seq_list(&got), vec![6, 7, 8, 9, 10]);
    assert!(got.iter().all(|r| r.delivery_count == 2));
}

#[tokio::test]
async fn the_sync_thread_makes_acks_durable_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..4).await;
    drain(&c).await;
    c.ack(1).await.unwrap();
    c.ack(2).await.unwrap();
    // Interval 20 ms: well past it, the acks are on disk without any close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.crash().await;
    drop(c);
    let (bus, _) = open(dir.path());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), vec![3, 4]);
}

#[tokio::test]
async fn drop_without_close_keeps_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..6).await;
    drain(&c).await;
    for seq in [2, 4, 6] {
        c.ack(seq).await.unwrap();
    }
    drop((bus, c));
    // The log's writer finishes in the background after a drop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (bus, report) = open(dir.path());
    assert_eq!(report.held, 3);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), vec![1, 3, 5]);
}

#[tokio::test]
async fn consumer_positions_survive_and_rebind_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let mut xs = ConsumerConfig::new("xs");
    xs.filter_subjects = vec!["x".into()];
    let x = bus.consumer(xs.clone()).await.unwrap();
    let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();
    for i in 0..6 {
        let subject = if i % 2 == 0 { "x" } else { "y" };
        bus.publish(msg(subject, &i.to_string())).await.unwrap();
    }
    // x: 1 and 3 delivered, 1 acked. all: 1..=4 delivered and acked.
    assert_eq!(
        seq_list(&x.fetch(2, Duration::ZERO).await.unwrap()),
        vec![1, 3]
    );
    x.ack(1).await.unwrap();
    for r in all.fetch(4, Duration::ZERO).await.unwrap() {
        all.ack(r.seq).await.unwrap();
    }
    bus.close().await;
    drop((bus, x, all));

    let (bus, report) = open(dir.path());
    // 3 (pending for x), 5 (x, unseen), 5 and 6 (all, unseen).
    assert_eq!((report.consumers, report.held), (2, 3));
    let mut other = xs.clone();
    other.max_ack_pending = 7;
    assert!(matches!(
        bus.consumer(other).await,
        Err(BusError::ConsumerMismatch { .. })
    ));
    let x = bus.consumer(xs).await.unwrap();
    let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();
    assert_eq!(x.stats().pending, 1);
    assert_eq!(all.stats().pending, 2);
    assert_eq!(seq_list(&drain(&x).await), vec![3, 5]);
    assert_eq!(seq_list(&drain(&all).await), vec![5, 6]);
    // A consumer created after the restart starts at the first held message.
    let late = bus.consumer(ConsumerConfig::new("late")).await.unwrap();
    assert_eq!(seq_list(&drain(&late).await), vec![3, 5, 6]);
    assert_eq!(bus.stats().consumers, 3);
}

#[tokio::test]
async fn limits_are_enforced_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_msgs: Some(3),
        ..unlimited()
    };
    let (bus, _) = open_with(dir.path(), limits, test_options());
    publish_range(&bus, 0..3).await;
    assert!(bus.publish(numbered(3)).await.is_err());
    bus.close().await;
    drop(bus);
    let (bus, _) = open_with(dir.path(), limits, test_options());
    assert_eq!(bus.stats().messages, 3);
    match bus.publish(numbered(3)).await {
        Err(PublishError::Full { limit, .. }) => assert_eq!(limit, "max_msgs"),
        other => panic!("expected Full, got {other:?}"),
    }
}

#[tokio::test]
async fn discarded_messages_do_not_come_back_after_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_msgs: Some(3),
        discard: DiscardPolicy::Old,
        ..unlimited()
    };
    let (bus, _) = open_with(dir.path(), limits, test_options());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..5).await;
    assert_eq!(bus.stats().discarded, 2);
    bus.close().await;
    drop((bus, c));
    let (bus, report) = open_with(dir.path(), limits, test_options());
    assert_eq!(report.held, 3);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), vec![3, 4, 5]);
}

#[tokio::test]
async fn max_deliver_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConsumerConfig::new("c");
    cfg.max_deliver = Some(2);
    let (bus, _) = open(dir.path());
    let c = bus.consumer(cfg.clone()).await.unwrap();
    publish_range(&bus, 0..2).await;
    drain(&c).await;
    c.nak(1, Duration::ZERO).await.unwrap();
    // Seq 1: second (last) delivery under way; seq 2: first.
    assert_eq!(seq_list(&drain(&c).await), vec![1]);
    bus.close().await;
    drop((bus, c));
    let (bus, report) = open(dir.path());
    assert_eq!(report.held, 1);
    let c = bus.consumer(cfg).await.unwrap();
    let got = drain(&c).await;
    assert_eq!((seq_list(&got), got[0].delivery_count), (vec![2], 2));
}

#[tokio::test]
async fn fully_acked_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    // 300 records of ~150 bytes: about 3 segments of 16 KiB.
    let seqs = publish_range(&bus, 0..300).await;
    let before = bus.log_stats().segments;
    assert!(before >= 3, "{before}");
    // Acking the first half frees the segments below it, not the others.
    let got = drain(&c).await;
    assert_eq!(got.len(), 300);
    for seq in &seqs[..150] {
        c.ack(*seq).await.unwrap();
    }
    bus.sync_state().unwrap();
    let mid = bus.log_stats().segments;
    assert!(mid < before && mid >= 2, "{before} -> {mid}");
    for seq in &seqs[150..] {
        c.ack(*seq).await.unwrap();
    }
    bus.sync_state().unwrap();
    assert_eq!(bus.log_stats().segments, 1);
    assert_eq!(bus.stats().messages, 0);
    bus.close().await;
    drop((bus, c));
    assert_eq!(segment_files(dir.path()).len(), 1);
    let (bus, report) = open(dir.path());
    assert_eq!(report.held, 0);
    assert_eq!(bus.publish(numbered(0)).await.unwrap(), 301);
}

#[tokio::test]
async fn with_no_consumer_the_stream_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    publish_range(&bus, 0..5).await;
    bus.close().await;
    drop(bus);
    let (bus, report) = open(dir.path());
    assert_eq!((report.consumers, report.held), (0, 5));
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    assert_eq!(seq_list(&got), vec![1, 2, 3, 4, 5]);
    check_payloads(&got, |seq| seq - 1);
}

#[tokio::test]
async fn seqs_are_not_reused_when_the_log_lost_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..5).await;
    drain(&c).await;
    for seq in 1..=3 {
        c.ack(seq).await.unwrap();
    }
    bus.close().await;
    drop((bus, c));
    // Records 4 and 5 vanish (say, bit rot in a synced tail), and with them
    // the high-water mark.
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let record = (len - 32) / 5;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(32 + 3 * record)
        .unwrap();
    std::fs::remove_file(dir.path().join(LOG_DIR).join(crate::segment::HWM_FILE)).unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!((report.recovery.records, report.pending_lost), (3, 2));
    // Consumer state says 5 was delivered: the next seq is 6, and a new
    // message is delivered (not skipped as "already seen").
    assert_eq!(bus.publish(numbered(9)).await.unwrap(), 6);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), vec![6]);
}

/// Ten messages, no consumer, bus closed: the corruption tests' fixture.
async fn ten_messages(dir: &Path) -> PathBuf {
    let (bus, _) = open(dir);
    publish_range(&bus, 0..10).await;
    bus.close().await;
    drop(bus);
    let segs = segment_files(dir);
    assert_eq!(segs.len(), 1);
    segs[0].clone()
}

#[tokio::test]
async fn a_truncated_tail_is_cut_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten_messages(dir.path()).await;
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let (bus, report) = open(dir.path());
    assert!(report.recovery.bytes_truncated > 0);
    assert_eq!((report.recovery.records, report.held), (9, 9));
    let seq = bus.publish(numbered(10)).await.unwrap();
    assert!(seq >= 10, "{seq}");
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    let mut expected: Vec<u64> = (1..=9).collect();
    expected.push(seq);
    assert_eq!(seq_list(&got), expected);
    check_payloads(&got[..9], |seq| seq - 1);
}

#[tokio::test]
async fn flipped_bytes_inside_a_record_skip_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten_messages(dir.path()).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = b"payload-000004-";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + 3] ^= 0x20;
    bytes[at + 20] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!(report.recovery.corrupt_regions, 1);
    assert_eq!(report.recovery.bytes_truncated, 0);
    assert_eq!(report.held, 9);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    assert_eq!(seq_list(&got), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    check_payloads(&got, |seq| seq - 1);
    assert_eq!(bus.publish(numbered(10)).await.unwrap(), 11);
}

#[tokio::test]
async fn a_zero_filled_segment_end_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten_messages(dir.path()).await;
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!(report.recovery.bytes_truncated, 8192);
    assert_eq!(report.recovery.corrupt_regions, 0);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), (1..=10).collect::<Vec<_>>());
}

/// Consumer "c" has acked 1..=5 of 10 and the bus is closed.
async fn half_acked(dir: &Path) {
    let (bus, _) = open(dir);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..10).await;
    drain(&c).await;
    for seq in 1..=5 {
        c.ack(seq).await.unwrap();
    }
    bus.close().await;
    drop((bus, c));
}

/// `keep` has acked all 300 messages, `gone` holds them all (the first 10
/// delivered and unacked), state synced: the log keeps every segment.
async fn held_only_by_gone(bus: &Arc<SegmentBus>) -> usize {
    let keep = bus.consumer(ConsumerConfig::new("keep")).await.unwrap();
    let gone = bus.consumer(ConsumerConfig::new("gone")).await.unwrap();
    // 300 records of ~150 bytes: about 3 segments of 16 KiB.
    for seq in publish_range(bus, 0..300).await {
        assert_eq!(
            seq_list(&keep.fetch(1, Duration::ZERO).await.unwrap()),
            [seq]
        );
        keep.ack(seq).await.unwrap();
    }
    assert_eq!(gone.fetch(10, Duration::ZERO).await.unwrap().len(), 10);
    bus.sync_state().unwrap();
    let segments = bus.log_stats().segments;
    assert!(segments >= 3, "{segments}");
    assert_eq!(bus.stats().messages, 300);
    segments as usize
}

#[tokio::test]
async fn a_deleted_consumer_stays_deleted_after_a_crash_and_its_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    let before = held_only_by_gone(&bus).await;
    assert_eq!(segment_files(dir.path()).len(), before);

    assert!(bus.delete_consumer("gone").await.unwrap());
    assert_eq!(bus.stats().messages, 0);
    // Durable at once: no state sync between the delete and the crash.
    bus.crash().await;
    assert!(!state::consumer_file(dir.path(), "gone").path().exists());
    assert!(!state::tombstone_file(dir.path(), "gone").path().exists());

    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert_eq!((report.consumers, report.held), (1, 0));
    assert!(report.consumers_deleted.is_empty());
    assert!(report.consumers_reset.is_empty());
    // Fully-acked segment deletion no longer waits for `gone`.
    assert_eq!(bus.log_stats().segments, 1);
    assert_eq!(segment_files(dir.path()).len(), 1);

    // The name bound again is a new consumer, and it survives a restart.
    let gone = bus.consumer(ConsumerConfig::new("gone")).await.unwrap();
    assert!(drain(&gone).await.is_empty());
    let seq = bus.publish(numbered(300)).await.unwrap();
    assert_eq!(seq, 301);
    bus.close().await;
    drop((bus, gone));
    let (bus, report) = open(dir.path());
    assert_eq!((report.consumers, report.held), (2, 1));
    let gone = bus.consumer(ConsumerConfig::new("gone")).await.unwrap();
    assert_eq!(seq_list(&drain(&gone).await), [301]);
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_delete_does_not_bring_the_consumer_back() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    held_only_by_gone(&bus).await;
    bus.close().await;
    drop(bus);
    // What a crash right after the delete's first step leaves: the
    // tombstone, the consumer's state file, metadata that still lists it.
    state::tombstone_file(dir.path(), "gone")
        .store(b"gone")
        .unwrap();
    assert!(state::consumer_file(dir.path(), "gone").path().exists());

    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert_eq!(report.consumers_deleted, ["gone".to_string()]);
    assert!(report.consumers_reset.is_empty());
    assert_eq!((report.consumers, report.held), (1, 0));
    assert_eq!(bus.log_stats().segments, 1);
    for file in [
        state::consumer_file(dir.path(), "gone"),
        state::tombstone_file(dir.path(), "gone"),
    ] {
        assert!(!file.path().exists(), "{}", file.path().display());
    }
    let manifest = StateFile::new(dir.path().join(STREAM_FILE)).load().unwrap();
    let manifest = state::decode_manifest(&manifest.unwrap()).unwrap();
    let names: Vec<&str> = manifest.consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["keep"]);
    // A stray tombstone of a consumer nobody knows is tidied away.
    drop(bus);
    state::tombstone_file(dir.path(), "never")
        .store(b"never")
        .unwrap();
    let (_bus, report) = open(dir.path());
    assert!(report.consumers_deleted.is_empty());
    assert!(!state::tombstone_file(dir.path(), "never").path().exists());
}

#[tokio::test]
async fn a_name_is_bound_again_only_once_its_earlier_delete_is_finished_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    held_only_by_gone(&bus).await;
    bus.close().await;
    drop(bus);
    // An interrupted delete whose tombstone cannot be removed (a non-empty
    // directory stands in for a file the OS refuses to unlink).
    let tombstone = state::tombstone_file(dir.path(), "gone");
    std::fs::create_dir(tombstone.path()).unwrap();
    std::fs::write(tombstone.path().join("stuck"), b"x").unwrap();
    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert_eq!(report.consumers_deleted, ["gone".to_string()]);
    assert!(tombstone.path().exists());

    // Binding the name now would leave the tombstone beside the new
    // consumer, and a crash would delete it at the next open: refused.
    let err = bus
        .consumer(ConsumerConfig::new("gone"))
        .await
        .err()
        .expect("bind refused");
    assert!(
        matches!(&err, BusError::Unavailable(why) if why.contains("earlier delete")),
        "{err:?}"
    );
    assert_eq!(bus.stats().consumers, 1, "nothing was bound");

    // Once the tombstone can go, the bind finishes the delete first.
    std::fs::remove_dir_all(tombstone.path()).unwrap();
    let gone = bus.consumer(ConsumerConfig::new("gone")).await.unwrap();
    let seq = bus.publish(numbered(1000)).await.unwrap();
    assert_eq!(seq_list(&drain(&gone).await), [seq]);
    bus.crash().await;
    drop(gone);
    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert!(report.consumers_deleted.is_empty(), "{report:?}");
    assert!(report.consumers_reset.is_empty(), "{report:?}");
    assert_eq!(report.consumers, 2);
    let gone = bus.consumer(ConsumerConfig::new("gone")).await.unwrap();
    // Delivered before the crash, never acked: redelivered, not lost.
    assert_eq!(seq_list(&drain(&gone).await), [seq]);
}

#[tokio::test]
async fn deleting_the_last_consumer_does_not_bring_its_messages_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let only = bus.consumer(ConsumerConfig::new("only")).await.unwrap();
    publish_range(&bus, 0..5).await;
    assert_eq!(drain(&only).await.len(), 5);
    assert!(bus.delete_consumer("only").await.unwrap());
    assert_eq!(bus.stats().messages, 0);
    bus.close().await;
    drop((bus, only));
    let (bus, report) = open(dir.path());
    assert_eq!((report.consumers, report.held), (0, 0), "{report:?}");
    let next = bus.consumer(ConsumerConfig::new("next")).await.unwrap();
    assert!(drain(&next).await.is_empty());
    let seq = bus.publish(numbered(9)).await.unwrap();
    assert_eq!(seq, 6);
    assert_eq!(seq_list(&drain(&next).await), [6]);
}

/// Makes writing consumer `name`'s state file fail (as a full disk would)
/// by putting a directory where its temporary copy goes; returns that path.
fn block_state_file(dir: &Path, name: &str) -> PathBuf {
    let file = state::consumer_file(dir, name);
    let mut tmp = file.path().as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("x"), b"x").unwrap();
    tmp
}

#[tokio::test]
async fn a_consumer_that_cannot_be_written_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let keep = bus.consumer(ConsumerConfig::new("keep")).await.unwrap();
    let file = state::consumer_file(dir.path(), "n");
    let tmp = block_state_file(dir.path(), "n");
    let err = bus
        .consumer(ConsumerConfig::new("n"))
        .await
        .err()
        .expect("bind refused");
    assert!(
        matches!(&err, BusError::Unavailable(why) if why.contains("cannot create consumer")),
        "{err:?}"
    );
    assert_eq!(bus.stats().consumers, 1);
    assert!(!file.path().exists());
    std::fs::remove_dir_all(&tmp).unwrap();
    let n = bus.consumer(ConsumerConfig::new("n")).await.unwrap();
    let seq = bus.publish(numbered(1)).await.unwrap();
    bus.crash().await;
    drop((n, keep));
    let (bus, report) = open(dir.path());
    assert_eq!((report.consumers, report.held), (2, 1), "{report:?}");
    let n = bus.consumer(ConsumerConfig::new("n")).await.unwrap();
    assert_eq!(seq_list(&drain(&n).await), [seq]);
}

#[tokio::test]
async fn a_first_consumer_that_cannot_be_written_keeps_every_held_message() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open_with(dir.path(), unlimited(), manual_sync());
    // Held only because there is no consumer yet; "a.*" wants none of them.
    let seqs = publish_range(&bus, 0..3).await;
    let tmp = block_state_file(dir.path(), "first");
    let mut config = ConsumerConfig::new("first");
    config.filter_subjects = vec!["a.>".into()];
    // Adding it released what it does not want: undoing that is not
    // possible, so it stays and is written later.
    let first = bus.consumer(config.clone()).await.unwrap();
    assert_eq!(bus.stats().consumers, 1);
    // A state sync that still cannot write it must not list it either.
    assert!(bus.sync_state().is_err());
    bus.crash().await;
    drop(first);
    // It never reached the disk: no consumer, so every record is held.
    let (bus, report) = open_with(dir.path(), unlimited(), manual_sync());
    assert_eq!((report.consumers, report.held), (0, 3), "{report:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
    let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();
    assert_eq!(seq_list(&drain(&all).await), seqs);
}

#[tokio::test]
async fn consumer_settings_the_state_file_cannot_hold_are_refused_or_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let mut big = ConsumerConfig::new("big");
    big.max_ack_pending = MAX_ACK_PENDING + 1;
    let err = bus.consumer(big).await.err().expect("refused");
    assert!(
        matches!(&err, BusError::InvalidConsumer { name, reason } if name == "big" && reason.contains("max_ack_pending")),
        "{err:?}"
    );
    let mut wide = ConsumerConfig::new("wide");
    wide.filter_subjects = vec!["x".repeat(16 << 20)];
    let err = bus.consumer(wide).await.err().expect("refused");
    assert!(
        matches!(&err, BusError::InvalidConsumer { reason, .. } if reason.contains("do not fit one state file")),
        "{err:?}"
    );
    assert_eq!(bus.stats().consumers, 0);
    // An ack_wait of "forever" binds again after a restart.
    let mut forever = ConsumerConfig::new("forever");
    forever.ack_wait = Duration::MAX;
    bus.consumer(forever.clone()).await.unwrap();
    bus.consumer(forever.clone()).await.unwrap();
    bus.close().await;
    drop(bus);
    let (bus, _) = open(dir.path());
    bus.consumer(forever).await.unwrap();
}

#[tokio::test]
async fn a_missing_consumer_state_file_redelivers_everything_held() {
    let dir = tempfile::tempdir().unwrap();
    half_acked(dir.path()).await;
    let file = state::consumer_file(dir.path(), "c");
    std::fs::remove_file(file.path()).unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!(report.consumers_reset, vec!["c".to_string()]);
    // Everything held at the last state sync: the unacked half (acked
    // messages below the discard floor the sync raised are not needed).
    assert_eq!(report.held, 5);
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let got = drain(&c).await;
    assert_eq!(seq_list(&got), (6..=10).collect::<Vec<_>>());
    check_payloads(&got, |seq| seq - 1);
    // The reset state was written back at open.
    assert!(file.load().unwrap().is_some());
}

#[tokio::test]
async fn a_corrupt_consumer_state_file_is_treated_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    half_acked(dir.path()).await;
    let file = state::consumer_file(dir.path(), "c");
    let mut bytes = std::fs::read(file.path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(file.path(), &bytes).unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!(report.consumers_reset, vec!["c".to_string()]);
    assert!(report.unreadable_state_files.is_empty());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), (6..=10).collect::<Vec<_>>());
    assert!(file.load().is_ok());
}

#[tokio::test]
async fn corrupt_metadata_is_rebuilt_from_the_consumer_files() {
    let dir = tempfile::tempdir().unwrap();
    half_acked(dir.path()).await;
    std::fs::write(dir.path().join(STREAM_FILE), b"not a state file").unwrap();
    let (bus, report) = open(dir.path());
    assert!(report.metadata_reset);
    assert!(report.consumers_reset.is_empty());
    assert_eq!((report.consumers, report.held), (1, 5));
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(seq_list(&drain(&c).await), vec![6, 7, 8, 9, 10]);
    drop((bus, c));
    let loaded = StateFile::new(dir.path().join(STREAM_FILE)).load().unwrap();
    assert!(state::decode_manifest(&loaded.unwrap()).is_ok());
}

#[tokio::test]
async fn an_unreadable_state_file_of_an_unknown_consumer_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    half_acked(dir.path()).await;
    let stray = dir.path().join("consumer-ghost.state");
    std::fs::write(&stray, b"garbage").unwrap();
    let (bus, report) = open(dir.path());
    assert_eq!(report.unreadable_state_files, vec![stray.clone()]);
    assert!(!stray.exists());
    assert!(dir.path().join("consumer-ghost.state.corrupt").exists());
    assert_eq!(report.held, 5);
    drop(bus);
}

#[tokio::test]
async fn an_unopenable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SegmentBus::open(&file, unlimited(), test_options()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("not-a-dir") && text.contains("cannot open"),
        "{text}"
    );
}

/// Memory per retained message, measured: the index of 100 000 messages on
/// 10 subjects, with one consumer, and then one consumer's pending set.
#[test]
fn memory_per_retained_message_is_small_and_bounded() {
    use crate::segment::Location;
    use crate::stream::{Slot, Stream};
    const N: u64 = 100_000;
    assert!(std::mem::size_of::<u64>() + std::mem::size_of::<Slot<Location>>() <= 80);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let now = Instant::now();
    let mut st: Stream<Location> = Stream::new(unlimited(), Arc::new(Notify::new()), now);
    let mut cfg = ConsumerConfig::new("c");
    cfg.max_ack_pending = N as usize;
    let (id, _) = st.add_consumer(cfg, now).unwrap();
    let subjects: Vec<String> = (0..10).map(|i| format!("webhook.event-{i}")).collect();
    let before = crate::test_alloc::net_allocated();
    for seq in 1..=N {
        let location = Location {
            segment: 1,
            offset: seq * 100,
            len: 100,
        };
        st.insert(seq, &subjects[(seq % 10) as usize], 100, now, location);
    }
    let index = (crate::test_alloc::net_allocated() - before) as f64 / N as f64;
    let before = crate::test_alloc::net_allocated();
    let batch = st.take_batch(id, N as usize, now, |seq, _, _| seq);
    assert_eq!(batch.len() as u64, N);
    drop(batch);
    let pending = (crate::test_alloc::net_allocated() - before) as f64 / N as f64;
    println!("index: {index:.1} B/message, pending: {pending:.1} B/message");
    // 80-byte ring entries in a power-of-two capacity (131 072 here): ≈ 105.
    assert!(index < 120.0, "index costs {index:.1} bytes per message");
    assert!(
        pending < 130.0,
        "pending costs {pending:.1} bytes per message"
    );
}

#[tokio::test]
async fn a_record_corrupted_after_it_was_written_is_discarded_at_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    publish_range(&bus, 0..3).await;
    // Bit rot under a running bus (the write goes through the page cache
    // that the bus reads from).
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = b"payload-000001-";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let got = drain(&c).await;
    assert_eq!(seq_list(&got), vec![1, 3]);
    let stats = bus.stats();
    assert_eq!((stats.discarded, stats.messages), (1, 2));
    assert_eq!(c.stats().ack_pending, 2);
}

#[tokio::test]
async fn a_message_the_record_format_cannot_hold_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let huge_subject = Message {
        subject: "s".repeat(crate::segment::record::MAX_SUBJECT_LEN + 1),
        headers: Vec::new(),
        payload: bytes::Bytes::new(),
    };
    match bus.publish(huge_subject.clone()).await {
        Err(PublishError::TooLarge { message, max, .. }) => {
            assert_eq!(message, huge_subject);
            assert_eq!(max, crate::segment::record::MAX_SUBJECT_LEN as u64);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let stats = bus.stats();
    assert_eq!(
        (stats.rejected_too_large, stats.published, stats.messages),
        (1, 0, 0)
    );
    // The reservation was returned: the next publish fits.
    assert_eq!(bus.publish(numbered(0)).await.unwrap(), 1);
}

/// Found by the model test: `u` was held only by the deleted `all`, so the
/// delete released it, but it lies above the cursor of the `all` bound
/// again (which starts at the oldest held message). Once that consumer has
/// nothing left to see, its cursor moves past every released seq, so a
/// reopen does not bring `u` back.
#[tokio::test]
async fn a_message_released_by_a_delete_does_not_come_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, _) = open(dir.path());
    let mut t_only = ConsumerConfig::new("t");
    t_only.filter_subjects = vec!["t".into()];
    let t = bus.consumer(t_only.clone()).await.unwrap();
    bus.consumer(ConsumerConfig::new("all")).await.unwrap();
    let held = bus.publish(msg("t", "1")).await.unwrap();
    bus.publish(msg("u", "2")).await.unwrap();
    assert!(bus.delete_consumer("all").await.unwrap());
    assert_eq!(bus.stats().messages, 1);
    let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();
    for c in [&all, &t] {
        assert_eq!(seq_list(&drain(c).await), [held]);
        c.ack(held).await.unwrap();
    }
    assert_eq!(bus.stats().messages, 0);
    bus.close().await;
    drop((bus, all, t));

    let (bus, report) = open(dir.path());
    assert_eq!(report.held, 0);
    for config in [ConsumerConfig::new("all"), t_only] {
        let c = bus.consumer(config).await.unwrap();
        assert!(drain(&c).await.is_empty());
    }
}
