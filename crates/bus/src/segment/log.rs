//! [`SegmentLog`]: the handle that ties recovery, the segment table, reads,
//! retention and the group-commit writer together.

use super::error::{AppendError, LogError};
use super::prealloc::{self, Preparer};
use super::record::Record;
use super::recovery::{self, RecordMeta, RecoveryReport};
use super::segment::{
    self, no_fault, DeleteReport, Location, Segment, Segments, SEGMENT_HEADER_LEN,
};
use super::state_file::{create_dir_durable, StateFile};
use super::writer::{Appended, CommitHook, Queue, Shared, SyncPolicy, Writer};
use crate::Message;
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, warn};

/// File (in the data dir) holding the sequence high-water mark.
pub const HWM_FILE: &str = "seq.hwm";

/// Settings of a [`SegmentLog`].
#[derive(Clone)]
pub struct LogConfig {
    /// Roll to a new segment once the active one reaches this size (a batch
    /// is never split, so a segment can exceed it by one batch). Default
    /// 64 MiB.
    pub segment_bytes: u64,
    /// See [`SyncPolicy`]; default `Always`.
    pub sync: SyncPolicy,
    /// Most bytes one batch takes from the queue (a single larger record
    /// still goes alone). Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Most records in one batch. Default 8192.
    pub max_batch_records: usize,
    /// Encoded bytes queued or in flight before `append` waits for room:
    /// bounds the writer's memory. Default 64 MiB.
    pub queue_bytes: usize,
    /// The first seq this log may hand out: the bus passes one more than the
    /// highest seq any consumer state or stream metadata mentions, so a seq
    /// is never reused even if the log lost its tail. Default 1.
    pub min_next_seq: u64,
    /// Zero-fill the next segment in the background so appends overwrite
    /// existing blocks, which makes each `fdatasync` about twice as cheap on
    /// ext4 (see [`prealloc`](super::prealloc)). Costs up to two segments
    /// of extra disk. Default true.
    pub preallocate: bool,
    /// Called with every committed batch; see [`CommitHook`].
    pub on_commit: Option<CommitHook>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            sync: SyncPolicy::Always,
            max_batch_bytes: 4 << 20,
            max_batch_records: 8192,
            queue_bytes: 64 << 20,
            min_next_seq: 1,
            preallocate: true,
            on_commit: None,
        }
    }
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("segment_bytes", &self.segment_bytes)
            .field("sync", &self.sync)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_records", &self.max_batch_records)
            .field("queue_bytes", &self.queue_bytes)
            .field("min_next_seq", &self.min_next_seq)
            .field("preallocate", &self.preallocate)
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}

/// Counters of a [`SegmentLog`] since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records written.
    pub appended: u64,
    /// Batches written (one `pwrite` each).
    pub batches: u64,
    /// `fdatasync` calls on segment data (one per batch under `Always`).
    pub syncs: u64,
    /// Time spent in those calls.
    pub sync_time: Duration,
    /// Record bytes written.
    pub bytes_written: u64,
    /// Most records in one batch.
    pub largest_batch: u64,
    /// Appends waiting for the writer right now.
    pub queued: u64,
    /// Failed writes or syncs.
    pub write_errors: u64,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// Segment files, and the bytes of header and records in them
    /// (preallocated zeros not counted).
    pub segments: u64,
    pub disk_bytes: u64,
    /// Why the log is read-only, if it is.
    pub failed: Option<String>,
}

/// A durable, append-only, CRC-checked log of messages in segment files,
/// with group commit. See the [module docs](super).
pub struct SegmentLog {
    dir: PathBuf,
    segments: Arc<Segments>,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    exited: watch::Receiver<bool>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SegmentLog {
    /// Opens (creating if needed, with its entry synced in the parent
    /// directory so that the directory itself survives a crash) the log in
    /// `dir`: runs recovery, handing
    /// each valid record's metadata to `visit` in seq order, and starts the
    /// writer thread. Blocking (file I/O): call it before serving, or from
    /// `spawn_blocking`.
    ///
    /// The next seq is the highest of: one past the last valid record, the
    /// last segment's base, the high-water mark file, and
    /// `config.min_next_seq`.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        mut visit: impl FnMut(&RecordMeta<'_>),
    ) -> Result<(SegmentLog, RecoveryReport), LogError> {
        let dir = dir.into();
        create_dir_durable(&dir).map_err(LogError::io("create directory", &dir))?;
        prealloc::remove_leftovers(&dir)
            .map_err(LogError::io("remove leftover preallocated files in", &dir))?;
        segment::remove_unfinished(&dir)
            .map_err(LogError::io("remove unfinished segment files in", &dir))?;
        let recovered = recovery::recover(&dir, &mut visit)?;
        let mut report = recovered.report;
        let mut segments = recovered.segments;

        let hwm = StateFile::new(dir.join(HWM_FILE));
        let hwm_seq = match hwm.load() {
            Ok(Some(bytes)) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(b) => u64::from_le_bytes(b),
                Err(_) => {
                    warn!(file = %hwm.path().display(), "sequence high-water mark has the wrong size; ignored");
                    0
                }
            },
            Ok(None) => 0,
            Err(e @ super::state_file::StateFileError::Corrupt { .. }) => {
                warn!(error = %e, "sequence high-water mark unreadable; continuing after the last valid record");
                0
            }
            Err(e) => return Err(e.into()),
        };
        let mut next_seq = report
            .last_seq
            .map_or(1, |s| s.saturating_add(1))
            .max(hwm_seq)
            .max(config.min_next_seq)
            .max(1);
        if let Some(last) = segments.last() {
            next_seq = next_seq.max(last.base);
        }
        let active = match segments.last() {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(Segment::create(&dir, next_seq, &no_fault)?);
                segments.push(Arc::clone(&s));
                s
            }
        };
        report.next_seq = next_seq;

        let segments = Arc::new(Segments::new(dir.clone(), segments));
        let queue = Arc::new(Queue::new(config.queue_bytes));
        let shared = Arc::new(Shared::default());
        shared.next_seq.store(next_seq, Ordering::Release);
        let end = active.len.load(Ordering::Acquire);
        let writer = Writer {
            dir: dir.clone(),
            segments: Arc::clone(&segments),
            queue: Arc::clone(&queue),
            shared: Arc::clone(&shared),
            active,
            end,
            next_seq,
            policy: config.sync,
            segment_bytes: config.segment_bytes.max(1),
            max_batch_bytes: config.max_batch_bytes.max(1),
            max_batch_records: config.max_batch_records.max(1),
            on_commit: config.on_commit,
            hwm,
            reserved: next_seq,
            dirty_since: None,
            roll_failures: 0,
            last_sync: Duration::ZERO,
            preparer: config
                .preallocate
                .then(|| Preparer::start(&dir, config.segment_bytes.max(SEGMENT_HEADER_LEN))),
            active_prealloc: false,
        };
        let (exited_tx, exited) = watch::channel(false);
        let (thread_queue, thread_shared) = (Arc::clone(&queue), Arc::clone(&shared));
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("spillway-seglog".into())
            .spawn(move || {
                // A panic (a bug, or a panicking commit hook) must not leave
                // publishers waiting forever for a writer that is gone: fail
                // the log, refuse new appends and answer every queued one.
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| writer.run()));
                if let Err(panic) = run {
                    let what = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(no message)");
                    let reason: Arc<str> = format!("writer thread panicked: {what}").into();
                    error!(dir = %thread_dir.display(), %reason, "segment log is now read-only until reopened");
                    let _ = thread_shared.failed.set(reason);
                    if let Some(reason) = thread_shared.failed() {
                        thread_queue.fail_all(&reason);
                        *thread_shared.close_error.lock() = Some(LogError::Failed { reason });
                    }
                    let _ = exited_tx.send(true);
                    // Still a panic for whoever joins the thread.
                    std::panic::resume_unwind(panic);
                }
                let _ = exited_tx.send(true);
            })
            .map_err(LogError::io("start the writer thread for", &dir))?;
        Ok((
            SegmentLog {
                dir,
                segments,
                queue,
                shared,
                thread: Mutex::new(Some(thread)),
                exited,
            },
            report,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `message` and returns its seq and location once it is durable
    /// (as [`SyncPolicy`] defines it). Waits while the queue is full. On
    /// error the message is handed back, unstored.
    pub async fn append(&self, message: Message) -> Result<Appended, AppendError> {
        self.queue.append(&self.shared, message).await
    }

    /// Reads record `seq` back from `location` (as `append` or recovery
    /// reported it). A blocking `pread`, normally served by the page cache;
    /// it never waits for the writer.
    pub fn read(&self, seq: u64, location: Location) -> Result<Record, LogError> {
        self.segments.read(seq, location)
    }

    /// [`read`](Self::read) for many records, one result each, in order:
    /// records lying back to back in a segment (consecutive appends) are
    /// read with one `pread` per run of up to 1 MiB instead of one each.
    pub fn read_many(&self, records: &[(u64, Location)]) -> Vec<Result<Record, LogError>> {
        self.segments.read_many(records)
    }

    /// Deletes whole segments whose every record has a seq below `floor`,
    /// oldest first; never the segment being written.
    pub fn delete_before(&self, floor: u64) -> Result<DeleteReport, LogError> {
        self.segments.delete_before(floor)
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq.load(Ordering::Acquire)
    }

    /// Why the log is read-only, if it is (see [`LogError::Failed`]).
    pub fn failed(&self) -> Option<Arc<str>> {
        self.shared.failed()
    }

    pub fn stats(&self) -> LogStats {
        let s = &self.shared;
        let (segments, disk_bytes) = self.segments.usage();
        LogStats {
            appended: s.appended.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            sync_time: Duration::from_nanos(s.sync_nanos.load(Ordering::Relaxed)),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            queued: self.queue.len() as u64,
            write_errors: s.write_errors.load(Ordering::Relaxed),
            next_seq: self.next_seq(),
            segments,
            disk_bytes,
            failed: s.failed().map(|r| r.to_string()),
        }
    }

    /// Stops accepting appends ([`LogError::Closed`]), writes and syncs
    /// everything already queued, records the next seq, and stops the writer
    /// thread. Reads keep working. Idempotent.
    pub async fn close(&self) -> Result<(), LogError> {
        self.queue.close();
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|done| *done).await;
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                return Err(LogError::Failed {
                    reason: self
                        .shared
                        .failed()
                        .unwrap_or_else(|| "the writer thread panicked".into()),
                });
            }
        }
        match self.shared.close_error.lock().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn test_queue(&self) -> &Queue {
        &self.queue
    }

    #[cfg(test)]
    pub(crate) fn test_shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for SegmentLog {
    /// Without `close`, the writer still drains and syncs what is queued,
    /// then exits on its own (not joined).
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::segment_file_name;
    use super::super::test_util::{crash, msg, open, plain, segment_files, seqs};
    use super::*;

    /// Segments of about three records of `msg(200..)`.
    fn small_segments() -> LogConfig {
        LogConfig {
            segment_bytes: 700,
            ..plain()
        }
    }

    #[tokio::test]
    async fn roundtrip_and_reopen_continues_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(report.next_seq, 1);
        assert!(metas.is_empty());
        let mut appended = Vec::new();
        for i in 0..5 {
            appended.push(log.append(msg(i)).await.unwrap());
        }
        for (i, a) in appended.iter().enumerate() {
            assert_eq!(a.seq, i as u64 + 1);
            let rec = log.read(a.seq, a.location).unwrap();
            assert_eq!(rec.published_at, a.published_at);
            assert_eq!(rec.into_message(), msg(i as u64));
        }
        log.close().await.unwrap();
        drop(log);

        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(
            report,
            RecoveryReport {
                segments: 1,
                records: 5,
                first_seq: Some(1),
                last_seq: Some(5),
                next_seq: 6,
                ..RecoveryReport::default()
            }
        );
        for (m, a) in metas.iter().zip(&appended) {
            assert_eq!(
                (m.seq, m.location, m.size, m.published_at),
                (a.seq, a.location, a.size, a.published_at)
            );
            assert_eq!(m.subject, format!("s.{}", a.seq - 1));
        }
        assert_eq!(log.append(msg(5)).await.unwrap().seq, 6);
        // After a crash (no close, no high-water mark update) too.
        crash(log);
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!((report.last_seq, report.next_seq), (Some(6), 7));
        assert_eq!(seqs(&metas), (1..=6).collect::<Vec<_>>());
        assert_eq!(log.append(msg(6)).await.unwrap().seq, 7);
    }

    /// Runs across segments, gaps, a deleted segment and a corrupt record:
    /// the same answers as one `read` per record.
    #[tokio::test]
    async fn read_many_matches_read() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), small_segments());
        let mut appended = Vec::new();
        for i in 200..212 {
            appended.push(log.append(msg(i)).await.unwrap());
        }
        let all: Vec<(u64, Location)> = appended.iter().map(|a| (a.seq, a.location)).collect();
        let check = |wanted: &[(u64, Location)]| {
            let many = log.read_many(wanted);
            assert_eq!(many.len(), wanted.len());
            for (&(seq, loc), got) in wanted.iter().zip(many) {
                match (log.read(seq, loc), got) {
                    (Ok(one), Ok(got)) => assert_eq!(one, got),
                    (Err(one), Err(got)) => assert_eq!(one.to_string(), got.to_string()),
                    (one, got) => panic!("seq {seq}: read {one:?}, read_many {got:?}"),
                }
            }
        };
        check(&all);
        // Gaps and out of order: several runs.
        check(&[all[0], all[1], all[3], all[2], all[7], all[8], all[11]]);
        check(&[]);
        // A record whose location claims another seq, and one whose length
        // is impossible, inside a run.
        let mut wrong = all.clone();
        wrong[1].0 = 999;
        wrong[2].1.len = 1;
        check(&wrong);
        let many = log.read_many(&wrong);
        assert!(many[0].is_ok() && many[3].is_ok());
        assert!(matches!(many[1], Err(LogError::Corrupt { seq: 999, .. })));
        assert!(matches!(many[2], Err(LogError::Corrupt { .. })));
        // A deleted segment: NotFound for its records, the rest still read.
        log.delete_before(all[6].0).unwrap();
        let many = log.read_many(&all);
        assert!(matches!(many[0], Err(LogError::NotFound { .. })));
        assert!(many[11].is_ok());
        check(&all);
    }

    #[tokio::test]
    async fn segments_roll_and_old_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), small_segments());
        let mut appended = Vec::new();
        for i in 200..212 {
            appended.push(log.append(msg(i)).await.unwrap());
        }
        // Each segment holds records until it reaches 700 bytes.
        let bases: Vec<u64> = {
            let mut b: Vec<u64> = appended.iter().map(|a| a.location.segment).collect();
            b.dedup();
            b
        };
        assert!(bases.len() >= 3, "{bases:?}");
        let files: Vec<_> = segment_files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let expected: Vec<_> = bases.iter().map(|b| segment_file_name(*b)).collect();
        assert_eq!(files, expected);
        for a in &appended {
            // A record's segment is named after the first seq it holds.
            assert!(a.location.segment <= a.seq);
            assert_eq!(log.read(a.seq, a.location).unwrap().seq, a.seq);
        }
        let stats = log.stats();
        assert_eq!(stats.segments, files.len() as u64);

        // Floor = first seq of the third segment: the first two go.
        let floor = bases[2];
        let deleted = log.delete_before(floor).unwrap();
        assert_eq!(deleted.segments, 2);
        assert!(deleted.bytes > 0);
        assert_eq!(log.stats().segments, stats.segments - 2);
        assert!(stats.disk_bytes > log.stats().disk_bytes);
        for a in &appended {
            let read = log.read(a.seq, a.location);
            if a.seq < floor {
                assert!(matches!(read, Err(LogError::NotFound { .. })), "{read:?}");
            } else {
                assert_eq!(read.unwrap().seq, a.seq);
            }
        }
        // A floor inside a segment keeps that segment.
        assert_eq!(log.delete_before(floor + 1).unwrap().segments, 0);
        log.close().await.unwrap();
        drop(log);

        let (log, report, metas) = open(dir.path(), small_segments());
        assert_eq!(seqs(&metas), (floor..=12).collect::<Vec<_>>());
        assert_eq!((report.first_seq, report.next_seq), (Some(floor), 13));
        assert_eq!(log.append(msg(1)).await.unwrap().seq, 13);
        // Nothing deletes the segment being written.
        log.delete_before(u64::MAX).unwrap();
        let last = log.append(msg(2)).await.unwrap();
        assert_eq!(log.read(14, last.location).unwrap().seq, 14);
    }

    fn valid_ends(appended: &[Appended]) -> std::collections::BTreeMap<u64, u64> {
        let mut ends = std::collections::BTreeMap::new();
        for a in appended {
            let end = a.location.offset + a.location.len as u64;
            let e = ends.entry(a.location.segment).or_insert(0);
            *e = end.max(*e);
        }
        ends
    }

    fn file_len(dir: &Path, base: u64) -> u64 {
        std::fs::metadata(dir.join(segment_file_name(base)))
            .unwrap()
            .len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preallocated_segments_roll_recover_and_close_clean() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        assert!(config.preallocate);
        let (log, _, _) = open(dir.path(), config.clone());
        // Records of about 300 bytes: a segment holds about 13.
        let m = |i: u64| msg(200 + i % 60);
        let mut appended = Vec::new();
        for i in 0..60 {
            appended.push(log.append(m(i)).await.unwrap());
            if i % 8 == 0 {
                // Give the preparer time to have a spare ready.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // With a spare surely ready, append until the next roll: the new
        // active segment is a preallocated one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = appended.last().unwrap().location.segment;
        for i in 60..100 {
            appended.push(log.append(m(i)).await.unwrap());
            if appended.last().unwrap().location.segment != before {
                break;
            }
        }
        let n = appended.len() as u64;
        for (i, a) in appended.iter().enumerate() {
            assert_eq!(
                log.read(a.seq, a.location).unwrap().into_message(),
                m(i as u64)
            );
        }
        let ends = valid_ends(&appended);
        assert!(ends.len() >= 4, "{ends:?}");
        // Sealed segments had their unused zeros cut; the active one is
        // preallocated.
        let (&active, &active_end) = ends.last_key_value().unwrap();
        for (&base, &end) in &ends {
            if base != active {
                assert_eq!(file_len(dir.path(), base), end, "segment {base}");
            }
        }
        assert!(file_len(dir.path(), active) > active_end);
        let active_len = file_len(dir.path(), active);

        crash(log);
        let (log, report, metas) = open(dir.path(), config.clone());
        assert_eq!(seqs(&metas), (1..=n).collect::<Vec<_>>());
        assert_eq!(report.corrupt_regions, 0);
        assert_eq!(report.bytes_truncated, active_len - active_end);
        assert_eq!(file_len(dir.path(), active), active_end);
        for i in n..n + 10 {
            appended.push(log.append(m(i)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        log.close().await.unwrap();
        // A clean close leaves no zeros and no spare behind.
        for (&base, &end) in &valid_ends(&appended) {
            assert_eq!(file_len(dir.path(), base), end, "segment {base}");
        }
        let spares = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("prealloc-")
            })
            .count();
        assert_eq!(spares, 0);
        drop(log);
        let (_log, report, metas) = open(dir.path(), config);
        assert_eq!(seqs(&metas), (1..=n + 10).collect::<Vec<_>>());
        assert_eq!((report.bytes_truncated, report.corrupt_regions), (0, 0));
    }

    #[tokio::test]
    async fn min_next_seq_lifts_the_next_seq() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            min_next_seq: 100,
            ..plain()
        };
        let (log, report, _) = open(dir.path(), config.clone());
        assert_eq!(report.next_seq, 100);
        assert_eq!(log.append(msg(1)).await.unwrap().seq, 100);
        assert!(dir.path().join(segment_file_name(100)).exists());
        crash(log);
        let (log, report, metas) = open(dir.path(), config);
        assert_eq!((seqs(&metas), report.next_seq), (vec![100], 101));
        assert_eq!(log.append(msg(2)).await.unwrap().seq, 101);
    }

    #[tokio::test]
    async fn a_corrupt_high_water_mark_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), plain());
        log.append(msg(1)).await.unwrap();
        log.close().await.unwrap();
        drop(log);
        std::fs::write(dir.path().join(HWM_FILE), b"garbage").unwrap();
        let (log, report, _) = open(dir.path(), plain());
        assert_eq!(report.next_seq, 2);
        assert_eq!(log.append(msg(2)).await.unwrap().seq, 2);
    }
}
