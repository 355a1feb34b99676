//! Group commit: many concurrent appends, one writer thread, one write and
//! one `fdatasync` per batch.
//!
//! [`SegmentLog::append`](super::SegmentLog::append) reserves queue space
//! (bounded by [`LogConfig::queue_bytes`](super::LogConfig::queue_bytes):
//! publishers wait, memory does not grow), enqueues the message with a
//! oneshot reply and waits. The dedicated writer thread takes everything
//! queued (up to `max_batch_bytes` / `max_batch_records`), assigns
//! consecutive seqs, encodes the batch into one buffer, does one `pwrite`
//! and, under [`SyncPolicy::Always`], one `fdatasync`, then calls the commit
//! hook and answers every request. While it syncs, new requests queue up and
//! form the next batch, so batches grow with load by themselves. Under
//! `Always` the writer also lingers briefly (at most half the last sync
//! time, ≤ 1 ms) for the publishers it just answered, so a closed loop of N
//! publishers forms batches of N rather than two alternating halves (see
//! `Writer::linger`).
//!
//! # What it guarantees
//!
//! - **Durable before acknowledged** (`Always`): no append returns `Ok`
//!   before the `fdatasync` covering its record (and every earlier record)
//!   has returned.
//! - **Seqs are consecutive and increasing within a run**, and the commit
//!   hook sees batches in seq order before any publisher of the batch is
//!   answered.
//! - **A failed batch leaves no trace in the seq space.** If the `pwrite`
//!   fails (ENOSPC, EIO), the file is truncated back to the end of the last
//!   good record, every request in the batch gets the error, and the seqs
//!   are handed out again to later records: nobody was told about them. If
//!   that truncation fails too, or an `fdatasync` fails, the state of the
//!   page cache and disk is unknown (a failed fsync may drop dirty pages):
//!   the log truncates back as a best effort and turns **read-only**: every
//!   queued and later append gets [`LogError::Failed`] until the log is
//!   reopened, when recovery decides from what is actually on disk. Records
//!   of a failed batch that did reach the disk are then found and
//!   delivered (at-least-once: the publisher saw an error and may retry).
//! - **A failed roll loses nothing.** If no file of the new segment's name
//!   was made, records keep going to the current segment; if the name
//!   exists, the new segment is used (or the log turns read-only): seqs ≥ N
//!   are never appended to an older segment while a file named N exists,
//!   since recovery would cut them off as out of range and reuse them.
//! - **A dead writer answers everyone.** If the writer thread panics (a
//!   bug, or a panicking commit hook), the log turns read-only ("writer
//!   thread panicked: …"): the batch in flight, every queued append and
//!   every later one get [`LogError::Failed`], and `close` returns it.
//!   The records of that batch may be on disk (at-least-once, as above).
//! - **Seqs never wrap.** `u64::MAX` is never handed out; once the next seq
//!   would be `u64::MAX` (a stray segment named near it), appends get
//!   [`LogError::SeqsExhausted`].
//! - **Cancellation**: dropping an `append` future after it was queued does
//!   not withdraw the message; it is written and the commit hook sees it.
//! - **Shutdown**: `close()` stops new appends, lets the writer write and
//!   sync everything already queued, records the exact next seq, and joins
//!   the thread.

use super::error::{AppendError, LogError};
use super::prealloc::{Preparer, Spare};
use super::record;
use super::segment::{CreateError, CreateStep, Location, Segment, Segments, SEGMENT_HEADER_LEN};
use super::state_file::sync_dir;
use super::state_file::StateFile;
use crate::Message;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{error, warn};

/// When appended records are forced to disk, and what each choice risks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync` every batch before answering it (group commit).
    /// Risks nothing: an acknowledged record survives a process crash, an
    /// OS crash and a power loss (given a disk that honours flushes).
    #[default]
    Always,
    /// Answer after the write (page cache); `fdatasync` at most this long
    /// after the first unsynced write, and at roll and close. A process
    /// crash (`kill -9`) loses nothing (the page cache survives it); an OS
    /// crash or power loss can lose up to this interval of acknowledged
    /// records. Seqs are still never reused (see the module docs of
    /// [`segment`](super)).
    Interval(Duration),
    /// Answer after the write and leave flushing to the OS, except that each
    /// segment is synced once when it is sealed (at roll) and the active one
    /// at close, so a clean close leaves every record durable. A process
    /// crash loses nothing; an OS crash or power loss can lose whatever the
    /// kernel had not written back yet (typically up to ~30 s).
    Never,
}

/// A stored record, as `append` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub location: Location,
    /// Bytes counted against limits ([`Message::size`]).
    pub size: u64,
    /// The time the writer stamped on the record (one per batch).
    pub published_at: SystemTime,
}

/// One record of a committed batch, as the commit hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub appended: Appended,
    pub message: &'a Message,
}

/// Called by the writer thread with each committed batch, in seq order,
/// after the batch is durable (as the policy defines it) and before any of
/// its appends returns. It runs on the writer thread: keep it short, and
/// never call back into the log's `append`/`close` from it (deadlock).
pub type CommitHook = Arc<dyn Fn(&[Committed<'_>]) + Send + Sync>;

/// Seqs reserved ahead in the high-water-mark file under `Interval` and
/// `Never` (one small durable write per this many records).
pub(crate) const HWM_RESERVE: u64 = 1_000_000;

/// Counters shared by the writer and the handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Why the log went read-only; set once (the first failure is the
    /// cause), read on every append, so a lock-free cell.
    pub failed: std::sync::OnceLock<Arc<str>>,
    pub next_seq: AtomicU64,
    pub appended: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub bytes_written: AtomicU64,
    pub largest_batch: AtomicU64,
    pub write_errors: AtomicU64,
    /// The error of the final sync at close, if any.
    pub close_error: Mutex<Option<LogError>>,
    /// Tests: fail this many of the next `pwrite`s (half-written) / syncs.
    #[cfg(test)]
    pub inject_write_errors: std::sync::atomic::AtomicU32,
    #[cfg(test)]
    pub inject_sync_errors: std::sync::atomic::AtomicU32,
    /// Tests: steps of making a new segment that fail, one entry each.
    #[cfg(test)]
    pub inject_create_errors: Mutex<Vec<CreateStep>>,
    /// Tests: iterations of the writer's main loop.
    #[cfg(test)]
    pub writer_loops: AtomicU64,
}

impl Shared {
    pub fn failed(&self) -> Option<Arc<str>> {
        self.failed.get().cloned()
    }

    /// Why a closed queue refuses an append: the failure if the log failed
    /// (a dead writer's queue is closed too, and the publisher should learn
    /// why), else [`LogError::Closed`].
    fn refusal(&self) -> LogError {
        match self.failed() {
            Some(reason) => LogError::Failed { reason },
            None => LogError::Closed,
        }
    }
}

/// A queued append. If it is dropped unanswered (a bug), the publisher
/// still gets an error and its message back.
pub(crate) struct Request {
    message: Option<Message>,
    encoded_len: usize,
    reply: Option<oneshot::Sender<Result<Appended, AppendError>>>,
    _permit: OwnedSemaphorePermit,
}

impl Request {
    fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    fn answer(&mut self, result: Result<Appended, LogError>) {
        let message = self.message.take();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(match (result, message) {
                (Ok(a), _) => Ok(a),
                (Err(error), Some(message)) => Err(AppendError {
                    error,
                    message: Box::new(message),
                }),
                (Err(error), None) => Err(AppendError {
                    error,
                    message: Box::new(Message {
                        subject: String::new(),
                        headers: Vec::new(),
                        payload: bytes::Bytes::new(),
                    }),
                }),
            });
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.answer(Err(LogError::Failed {
                reason: "writer thread stopped".into(),
            }));
        }
    }
}

struct QueueState {
    reqs: VecDeque<Request>,
    /// Encoded bytes of `reqs`.
    bytes: usize,
    closed: bool,
    /// Publishers wake the writer once this many requests are queued (1,
    /// or the linger target while the writer lingers).
    wake_at: usize,
}

/// The bounded hand-off between publishers and the writer thread.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    cond: Condvar,
    /// Bytes of encoded records queued or in flight.
    space: Arc<Semaphore>,
    capacity: usize,
    /// Tests hold this to keep the writer from taking a batch.
    #[cfg(test)]
    pub gate: Mutex<()>,
    /// Tests: times the writer waited with no deadline (idle, parked).
    #[cfg(test)]
    pub untimed_waits: AtomicU64,
}

enum Take {
    Batch,
    /// The wait deadline passed with nothing queued.
    Idle,
    Closed,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Queue {
            state: Mutex::new(QueueState {
                reqs: VecDeque::new(),
                bytes: 0,
                closed: false,
                wake_at: 1,
            }),
            cond: Condvar::new(),
            space: Arc::new(Semaphore::new(capacity)),
            capacity,
            #[cfg(test)]
            gate: Mutex::new(()),
            #[cfg(test)]
            untimed_waits: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().reqs.len()
    }

    /// After the writer thread died: refuses new appends and answers every
    /// queued one with [`LogError::Failed`] (nobody else ever would).
    pub fn fail_all(&self, reason: &Arc<str>) {
        let reqs = {
            let mut st = self.state.lock();
            st.closed = true;
            st.bytes = 0;
            std::mem::take(&mut st.reqs)
        };
        self.space.close();
        self.cond.notify_all();
        // Answered outside the lock: a reply wakes a publisher.
        for mut req in reqs {
            req.answer(Err(LogError::Failed {
                reason: Arc::clone(reason),
            }));
        }
    }

    /// Stops accepting appends and wakes the writer (and waiting publishers).
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.space.close();
        self.cond.notify_all();
    }

    /// Queues `message` and waits for the writer's answer.
    pub async fn append(&self, shared: &Shared, message: Message) -> Result<Appended, AppendError> {
        let fail = |error, message| {
            Err(AppendError {
                error,
                message: Box::new(message),
            })
        };
        let encoded_len = match record::encoded_len(&message) {
            Ok(n) => n,
            Err(e) => return fail(LogError::Invalid(e), message),
        };
        if let Some(reason) = shared.failed() {
            return fail(LogError::Failed { reason }, message);
        }
        let permits = encoded_len.min(self.capacity) as u32;
        let permit = match Arc::clone(&self.space).acquire_many_owned(permits).await {
            Ok(p) => p,
            Err(_) => return fail(shared.refusal(), message),
        };
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut st = self.state.lock();
            if st.closed || shared.failed().is_some() {
                return fail(shared.refusal(), message);
            }
            st.reqs.push_back(Request {
                message: Some(message),
                encoded_len,
                reply: Some(tx),
                _permit: permit,
            });
            st.bytes += encoded_len;
            st.reqs.len() >= st.wake_at
        };
        if wake {
            self.cond.notify_one();
        }
        match rx.await {
            Ok(result) => result,
            // Unreachable: a dropped Request answers. Kept total anyway.
            Err(_) => fail(
                LogError::Failed {
                    reason: "writer thread stopped".into(),
                },
                Message {
                    subject: String::new(),
                    headers: Vec::new(),
                    payload: bytes::Bytes::new(),
                },
            ),
        }
    }

    /// Moves the next batch into `into`, waiting until there is one, the
    /// queue is closed, or `deadline` passes. With `linger = (target,
    /// until)`, a non-empty queue is only taken once it holds `target`
    /// requests (or a full batch of bytes), or at `until`.
    fn take(
        &self,
        into: &mut Vec<Request>,
        max_bytes: usize,
        max_records: usize,
        deadline: Option<Instant>,
        linger: Option<(usize, Instant)>,
    ) -> Take {
        let mut st = self.state.lock();
        loop {
            if !st.reqs.is_empty() {
                if let Some((target, until)) = linger {
                    let short = st.reqs.len() < target.min(max_records) && st.bytes < max_bytes;
                    if short && !st.closed && Instant::now() < until {
                        st.wake_at = target;
                        self.cond.wait_until(&mut st, until);
                        continue;
                    }
                }
                st.wake_at = 1;
                #[cfg(test)]
                {
                    drop(st);
                    drop(self.gate.lock());
                    st = self.state.lock();
                }
                let mut bytes = 0usize;
                while let Some(front) = st.reqs.front() {
                    let full = into.len() >= max_records
                        || bytes.saturating_add(front.encoded_len) > max_bytes;
                    if !into.is_empty() && full {
                        break;
                    }
                    bytes = bytes.saturating_add(front.encoded_len);
                    let Some(req) = st.reqs.pop_front() else {
                        break;
                    };
                    st.bytes -= req.encoded_len;
                    into.push(req);
                }
                return Take::Batch;
            }
            st.wake_at = 1;
            if st.closed {
                return Take::Closed;
            }
            match deadline {
                Some(d) => {
                    if self.cond.wait_until(&mut st, d).timed_out() && st.reqs.is_empty() {
                        return if st.closed { Take::Closed } else { Take::Idle };
                    }
                }
                None => {
                    #[cfg(test)]
                    self.untimed_waits.fetch_add(1, Ordering::Relaxed);
                    self.cond.wait(&mut st)
                }
            }
        }
    }
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub dir: PathBuf,
    pub segments: Arc<Segments>,
    pub queue: Arc<Queue>,
    pub shared: Arc<Shared>,
    pub active: Arc<Segment>,
    /// End of the last good record in `active`.
    pub end: u64,
    pub next_seq: u64,
    pub policy: SyncPolicy,
    pub segment_bytes: u64,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    pub on_commit: Option<CommitHook>,
    pub hwm: StateFile,
    /// Seqs below this are covered by the durable high-water mark.
    pub reserved: u64,
    /// Since when `active` holds written, unsynced records.
    pub dirty_since: Option<Instant>,
    pub roll_failures: u64,
    /// Duration of the last batch's fdatasync (sizes the linger).
    pub last_sync: Duration,
    /// Makes zero-filled spare segments (`LogConfig::preallocate`).
    pub preparer: Option<Preparer>,
    /// Whether `active` is a preallocated (zero-filled) file.
    pub active_prealloc: bool,
}

/// Longest the writer lingers for publishers it just answered.
const MAX_LINGER: Duration = Duration::from_millis(1);

impl Writer {
    pub fn run(mut self) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        let mut results = Vec::new();
        let mut linger = None;
        loop {
            #[cfg(test)]
            self.shared.writer_loops.fetch_add(1, Ordering::Relaxed);
            let deadline = match (self.policy, self.dirty_since) {
                // Once failed nothing is synced any more: a deadline (long
                // past, as the failed sync left `dirty_since` set) would
                // make `take` return at once, forever: a busy loop.
                _ if self.shared.failed().is_some() => None,
                // A huge interval overflows `Instant`: no deadline then.
                (SyncPolicy::Interval(d), Some(since)) => since.checked_add(d),
                _ => None,
            };
            match self.queue.take(
                &mut batch,
                self.max_batch_bytes,
                self.max_batch_records,
                deadline,
                linger.take(),
            ) {
                Take::Batch => {
                    self.write_batch(&mut batch, &mut buf, &mut results);
                    linger = self.linger(batch.len());
                    batch.clear();
                    if buf.capacity() > 2 * self.max_batch_bytes {
                        buf = Vec::new();
                    }
                    if let Some(d) = deadline {
                        if Instant::now() >= d {
                            self.sync_dirty();
                        }
                    }
                }
                Take::Idle => self.sync_dirty(),
                Take::Closed => break,
            }
        }
        self.shutdown();
    }

    /// Group commit's batching aid. Under `Always`, publishers answered a
    /// moment ago are likely to append again at once (a closed loop), and the
    /// queue also holds those that arrived during the sync. Taking the queue
    /// the instant one request is there splits them into two half-size
    /// batches that alternate forever, halving throughput. So the next batch
    /// waits until as many requests are queued as were just answered plus
    /// were already waiting, but never longer than half the last sync (at
    /// most [`MAX_LINGER`]): little added latency when they do not come.
    fn linger(&self, answered: usize) -> Option<(usize, Instant)> {
        if self.policy != SyncPolicy::Always || answered <= 1 {
            return None;
        }
        let target = answered + self.queue.len();
        let wait = (self.last_sync / 2).min(MAX_LINGER);
        Some((target, Instant::now() + wait))
    }

    fn fail(&self, reason: String) {
        error!(dir = %self.dir.display(), %reason, "segment log is now read-only until reopened");
        // A later failure only follows from the first; keep the cause.
        let _ = self.shared.failed.set(reason.into());
    }

    /// Syncs written-but-unsynced records (Interval deadline, roll, close).
    fn sync_dirty(&mut self) {
        if self.dirty_since.is_none() || self.shared.failed().is_some() {
            return;
        }
        let started = Instant::now();
        #[cfg(test)]
        let injected = take_injected(&self.shared.inject_sync_errors);
        #[cfg(not(test))]
        let injected = false;
        let synced = if injected {
            Err(std::io::Error::other("injected fdatasync error"))
        } else {
            self.active.file.sync_data()
        };
        match synced {
            Ok(()) => {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .sync_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                self.dirty_since = None;
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                self.fail(format!(
                    "fdatasync {} failed ({e}); acknowledged records may be lost",
                    self.active.path.display()
                ));
            }
        }
    }

    fn write_batch(
        &mut self,
        batch: &mut [Request],
        buf: &mut Vec<u8>,
        results: &mut Vec<Result<Appended, LogError>>,
    ) {
        if let Some(reason) = self.shared.failed() {
            for req in batch.iter_mut() {
                req.answer(Err(LogError::Failed {
                    reason: Arc::clone(&reason),
                }));
            }
            return;
        }
        if self.next_seq == u64::MAX {
            // Checked before rolling: no segment is made for nothing.
            for req in batch.iter_mut() {
                req.answer(Err(LogError::SeqsExhausted));
            }
            return;
        }
        // Roll lazily, when there is something to write: no empty segment is
        // left behind at close, and the batch that filled a segment is
        // answered without waiting for the new one. A plain segment (the one
        // recovered or created at open) is also left as soon as a
        // preallocated one is ready.
        let full = self.end >= self.segment_bytes && self.end > SEGMENT_HEADER_LEN;
        let spare = match &mut self.preparer {
            Some(p) if full || !self.active_prealloc => p.take(),
            _ => None,
        };
        if full || spare.is_some() {
            self.roll(spare);
            if let Some(reason) = self.shared.failed() {
                for req in batch.iter_mut() {
                    req.answer(Err(LogError::Failed {
                        reason: Arc::clone(&reason),
                    }));
                }
                return;
            }
        }
        let n = batch.len() as u64;
        if self.policy != SyncPolicy::Always && self.next_seq.saturating_add(n) > self.reserved {
            let reserve = self.next_seq.saturating_add(n).saturating_add(HWM_RESERVE);
            if let Err(e) = self.hwm.store(&reserve.to_le_bytes()) {
                for req in batch.iter_mut() {
                    req.answer(Err(LogError::State(e.clone())));
                }
                return;
            }
            self.reserved = reserve;
        }

        buf.clear();
        results.clear();
        let now = SystemTime::now();
        let mut seq = self.next_seq;
        for req in batch.iter() {
            let Some(message) = req.message() else {
                results.push(Err(LogError::Closed));
                continue;
            };
            if seq == u64::MAX {
                // Never handed out, so `seq += 1` cannot overflow and
                // `next_seq == u64::MAX` means exhausted.
                results.push(Err(LogError::SeqsExhausted));
                continue;
            }
            let offset = self.end + buf.len() as u64;
            match record::encode(seq, now, message, buf) {
                Ok(len) => {
                    results.push(Ok(Appended {
                        seq,
                        location: Location {
                            segment: self.active.base,
                            offset,
                            len: len as u32,
                        },
                        size: message.size() as u64,
                        published_at: now,
                    }));
                    seq += 1;
                }
                Err(e) => results.push(Err(LogError::Invalid(e))),
            }
        }

        if !buf.is_empty() {
            if let Err(error) = self.write_and_sync(buf) {
                for req in batch.iter_mut() {
                    req.answer(Err(error.clone()));
                }
                return;
            }
            let written = seq - self.next_seq;
            self.end += buf.len() as u64;
            self.active.len.store(self.end, Ordering::Release);
            self.next_seq = seq;
            self.shared.next_seq.store(seq, Ordering::Release);
            self.shared.appended.fetch_add(written, Ordering::Relaxed);
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
            self.shared
                .bytes_written
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.shared
                .largest_batch
                .fetch_max(written, Ordering::Relaxed);
            if let Some(hook) = &self.on_commit {
                let committed: Vec<Committed<'_>> = results
                    .iter()
                    .zip(batch.iter())
                    .filter_map(|(r, req)| match (r, req.message()) {
                        (Ok(a), Some(m)) => Some(Committed {
                            appended: *a,
                            message: m,
                        }),
                        _ => None,
                    })
                    .collect();
                hook(&committed);
            }
        }
        for (req, result) in batch.iter_mut().zip(results.drain(..)) {
            req.answer(result);
        }
    }

    /// One `pwrite` of the batch at the end of the good data, then (Always)
    /// one `fdatasync`. On error the batch is rolled back (see module docs).
    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let path = &self.active.path;
        let file = &self.active.file;
        #[cfg(test)]
        let injected = take_injected(&self.shared.inject_write_errors);
        #[cfg(not(test))]
        let injected = false;
        let written = if injected {
            // Simulate a partial write followed by an error.
            let _ = file.write_all_at(&buf[..buf.len() / 2], self.end);
            Err(std::io::Error::other("injected write error"))
        } else {
            file.write_all_at(buf, self.end)
        };
        if let Err(e) = written {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            let error = LogError::io("write", path)(e);
            match file.set_len(self.end).and_then(|()| file.sync_data()) {
                Ok(()) => {
                    warn!(segment = %path.display(), %error, "write failed; batch rolled back, log still writable");
                }
                Err(e2) => self.fail(format!(
                    "{error}; rolling back to offset {} failed too: {e2}",
                    self.end
                )),
            }
            return Err(error);
        }
        match self.policy {
            SyncPolicy::Always => {
                #[cfg(test)]
                let injected = take_injected(&self.shared.inject_sync_errors);
                #[cfg(not(test))]
                let injected = false;
                let started = Instant::now();
                let synced = if injected {
                    Err(std::io::Error::other("injected fdatasync error"))
                } else {
                    file.sync_data()
                };
                self.last_sync = started.elapsed();
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .sync_nanos
                    .fetch_add(self.last_sync.as_nanos() as u64, Ordering::Relaxed);
                if let Err(e) = synced {
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    let error = LogError::io("fdatasync", path)(e);
                    // Best effort: keep unacknowledged bytes out of the file.
                    let _ = file.set_len(self.end);
                    self.fail(error.to_string());
                    return Err(error);
                }
            }
            SyncPolicy::Interval(_) | SyncPolicy::Never => {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at `next_seq`, from
    /// `spare` if there is one. If no file of the new segment's name was
    /// made, keeps writing to the current one and retries with the next
    /// batch. If the name exists (the rename happened but the directory
    /// fsync failed), the new segment is adopted whatever else failed: seqs
    /// ≥ its base must never go to an older segment (see
    /// [`CreateError`](super::segment::CreateError)); its directory entry is
    /// synced once more before its first record, and the log turns
    /// read-only if that fails too.
    fn roll(&mut self, spare: Option<Spare>) {
        // Under every policy, `Never` included: once sealed a segment is
        // never synced again (close syncs only the active one), and one
        // fdatasync per segment costs nothing worth saving.
        self.sync_dirty();
        if self.shared.failed().is_some() {
            return;
        }
        self.cut_zero_tail();
        let preallocated = spare.is_some();
        let shared = Arc::clone(&self.shared);
        let fault = move |step| injected_create_fault(&shared, step);
        let created = match spare {
            Some(spare) => Segment::install(&self.dir, self.next_seq, spare, &fault),
            None => Segment::create(&self.dir, self.next_seq, &fault),
        };
        match created {
            Ok(seg) => self.adopt(seg, preallocated),
            Err(CreateError::Unsynced { segment, error }) => {
                self.adopt(segment, preallocated);
                match fault(CreateStep::SyncDir).and_then(|()| sync_dir(&self.dir)) {
                    Ok(()) => {
                        warn!(%error, "new segment's directory entry synced on the second try");
                    }
                    Err(e) => self.fail(format!(
                        "{error}; retrying: {e}; the new segment's name may not survive a crash"
                    )),
                }
            }
            Err(e @ CreateError::Uncertain { .. }) => self.fail(e.to_string()),
            Err(CreateError::NotCreated(e)) => {
                self.roll_failures += 1;
                if self.roll_failures.is_power_of_two() {
                    warn!(error = %e, failures = self.roll_failures, "cannot start a new segment; still appending to the current one");
                }
            }
        }
    }

    /// Makes `seg` the active segment.
    fn adopt(&mut self, seg: Segment, preallocated: bool) {
        let seg = Arc::new(seg);
        self.segments.push(Arc::clone(&seg));
        self.active = seg;
        self.active_prealloc = preallocated;
        self.end = SEGMENT_HEADER_LEN;
        self.dirty_since = None;
        self.roll_failures = 0;
    }

    /// Cuts the unused zeros off a preallocated active segment (when it is
    /// sealed, and at close). Not fatal: recovery cuts zero tails too.
    fn cut_zero_tail(&mut self) {
        if !self.active_prealloc {
            return;
        }
        let file = &self.active.file;
        if let Err(e) = file.set_len(self.end).and_then(|()| file.sync_data()) {
            warn!(segment = %self.active.path.display(), error = %e, "cannot cut the preallocated tail of a sealed segment; recovery will");
        }
        self.active_prealloc = false;
    }

    fn shutdown(mut self) {
        if let Some(p) = &mut self.preparer {
            p.stop();
        }
        self.sync_dirty();
        if self.shared.failed().is_none() {
            self.cut_zero_tail();
        }
        if let Some(reason) = self.shared.failed() {
            *self.shared.close_error.lock() = Some(LogError::Failed { reason });
        } else if let Err(e) = self.hwm.store(&self.next_seq.to_le_bytes()) {
            // (Stored exact: the next open continues without a reservation gap.)
            warn!(error = %e, "cannot record the sequence high-water mark at close");
            *self.shared.close_error.lock() = Some(LogError::State(e));
        }
    }
}

/// The [`Fault`](super::segment::Fault) the writer makes segments with:
/// none, except the failures a test injected.
fn injected_create_fault(shared: &Shared, step: CreateStep) -> std::io::Result<()> {
    #[cfg(test)]
    {
        let mut steps = shared.inject_create_errors.lock();
        if let Some(i) = steps.iter().position(|s| *s == step) {
            steps.remove(i);
            return Err(std::io::Error::other(format!("injected {step:?} failure")));
        }
    }
    #[cfg(not(test))]
    let _ = (shared, step);
    Ok(())
}

#[cfg(test)]
fn take_injected(counter: &std::sync::atomic::AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
// Tests hold the writer's gate across awaits on purpose (multi-thread runtime).
#[allow(clippy::await_holding_lock)]
mod tests {
    use super::super::segment::segment_file_name;
    use super::super::test_util::{crash, msg, open, plain, seqs};
    use super::super::{LogConfig, SegmentLog};
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn spawn_appends(
        log: &Arc<SegmentLog>,
        range: std::ops::Range<u64>,
    ) -> Vec<tokio::task::JoinHandle<Result<Appended, AppendError>>> {
        range
            .map(|i| {
                let log = Arc::clone(log);
                tokio::spawn(async move { log.append(msg(i)).await })
            })
            .collect()
    }

    async fn wait_queued(log: &SegmentLog, n: u64) {
        for _ in 0..10_000 {
            if log.stats().queued >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("only {} of {n} appends queued", log.stats().queued);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_one_batch_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let committed = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&committed);
        let config = LogConfig {
            on_commit: Some(Arc::new(move |batch: &[Committed<'_>]| {
                seen.lock().push(
                    batch
                        .iter()
                        .map(|c| (c.appended.seq, c.message.subject.clone()))
                        .collect::<Vec<_>>(),
                );
            })),
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config);
        let log = Arc::new(log);
        let gate = log.test_queue().gate.lock();
        let tasks = spawn_appends(&log, 0..32);
        wait_queued(&log, 32).await;
        drop(gate);
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap().unwrap());
        }
        let stats = log.stats();
        assert_eq!(
            (
                stats.syncs,
                stats.batches,
                stats.largest_batch,
                stats.appended
            ),
            (1, 1, 32, 32)
        );
        assert_eq!(stats.next_seq, 33);
        done.sort_by_key(|a| a.seq);
        assert_eq!(
            done.iter().map(|a| a.seq).collect::<Vec<_>>(),
            (1..=32).collect::<Vec<_>>()
        );
        // One buffer: contiguous frames in one segment, one timestamp.
        for pair in done.windows(2) {
            let (a, b) = (pair[0].location, pair[1].location);
            assert_eq!(a.segment, b.segment);
            assert_eq!(a.offset + a.len as u64, b.offset);
            assert_eq!(pair[0].published_at, pair[1].published_at);
        }
        // The hook saw the whole batch once, in seq order, and each record
        // reads back as what its publisher sent.
        let batches = committed.lock().clone();
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=32).collect::<Vec<_>>()
        );
        for (seq, subject) in &batches[0] {
            let a = done[(*seq - 1) as usize];
            let rec = log.read(*seq, a.location).unwrap();
            assert_eq!(&rec.subject, subject);
            assert_eq!(rec.message_size(), a.size);
            let i: u64 = subject[2..].parse().unwrap();
            assert_eq!(rec.into_message(), msg(i));
        }
        log.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_respect_their_limits() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_batch_records: 5,
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config);
        let log = Arc::new(log);
        let gate = log.test_queue().gate.lock();
        let tasks = spawn_appends(&log, 0..12);
        wait_queued(&log, 12).await;
        drop(gate);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let stats = log.stats();
        assert_eq!((stats.batches, stats.syncs, stats.largest_batch), (3, 3, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let one = record::encoded_len(&msg(7)).unwrap();
        let config = LogConfig {
            queue_bytes: one,
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config);
        let log = Arc::new(log);
        let gate = log.test_queue().gate.lock();
        let tasks = spawn_appends(&log, 7..10);
        wait_queued(&log, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The others wait for room instead of queueing.
        assert_eq!(log.stats().queued, 1);
        drop(gate);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(log.stats().appended, 3);
    }

    #[tokio::test]
    async fn a_failed_write_rolls_back_and_reuses_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), plain());
        assert_eq!(log.append(msg(1)).await.unwrap().seq, 1);
        log.test_shared()
            .inject_write_errors
            .store(1, Ordering::Release);
        let err = log.append(msg(2)).await.unwrap_err();
        assert!(
            matches!(err.error, LogError::Io { op: "write", .. }),
            "{err:?}"
        );
        assert_eq!(*err.message, msg(2), "the message is handed back");
        assert_eq!(
            log.failed(),
            None,
            "a rolled-back write keeps the log writable"
        );
        // The seq of the failed record was never acknowledged: it is reused.
        let a = log.append(msg(3)).await.unwrap();
        assert_eq!(a.seq, 2);
        assert_eq!(log.read(2, a.location).unwrap().into_message(), msg(3));
        let stats = log.stats();
        assert_eq!((stats.write_errors, stats.appended), (1, 2));
        log.close().await.unwrap();
        drop(log);
        let (_log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2]);
        assert_eq!(metas[1].subject, "s.3");
        assert_eq!((report.corrupt_regions, report.bytes_truncated), (0, 0));
    }

    #[tokio::test]
    async fn a_failed_sync_makes_the_log_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), plain());
        let first = log.append(msg(1)).await.unwrap();
        log.test_shared()
            .inject_sync_errors
            .store(1, Ordering::Release);
        let err = log.append(msg(2)).await.unwrap_err();
        assert!(
            matches!(
                err.error,
                LogError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(log.failed().is_some());
        let err = log.append(msg(3)).await.unwrap_err();
        assert!(matches!(err.error, LogError::Failed { .. }), "{err:?}");
        assert_eq!(*err.message, msg(3));
        assert!(log.stats().failed.is_some());
        // Reads still work.
        assert_eq!(log.read(1, first.location).unwrap().into_message(), msg(1));
        assert!(matches!(log.close().await, Err(LogError::Failed { .. })));
        drop(log);
        // Reopening trusts the disk: the unacknowledged record was cut off.
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1]);
        assert_eq!(report.next_seq, 2);
        assert_eq!(log.append(msg(4)).await.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn close_flushes_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(
            dir.path(),
            LogConfig {
                sync: SyncPolicy::Never,
                ..plain()
            },
        );
        let log = Arc::new(log);
        let tasks = spawn_appends(&log, 0..50);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(log.stats().syncs, 0, "Never leaves flushing to the OS");
        log.close().await.unwrap();
        assert_eq!(log.stats().syncs, 1, "close syncs");
        let err = log.append(msg(99)).await.unwrap_err();
        assert!(matches!(err.error, LogError::Closed));
        assert_eq!(*err.message, msg(99));
        log.close().await.unwrap(); // idempotent
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_while_appending_loses_no_acknowledged_record() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), plain());
        let log = Arc::new(log);
        let tasks = spawn_appends(&log, 0..200);
        tokio::time::sleep(Duration::from_millis(2)).await;
        log.close().await.unwrap();
        let mut acked = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => acked.push(a.seq),
                Err(e) => assert!(matches!(e.error, LogError::Closed), "{e:?}"),
            }
        }
        acked.sort_unstable();
        assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
        drop(log);
        let (_log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), acked);
        assert_eq!(report.next_seq, acked.len() as u64 + 1);
    }

    #[tokio::test]
    async fn interval_acks_before_syncing_then_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(
            dir.path(),
            LogConfig {
                sync: SyncPolicy::Interval(Duration::from_millis(300)),
                ..plain()
            },
        );
        log.append(msg(1)).await.unwrap();
        log.append(msg(2)).await.unwrap();
        assert_eq!(log.stats().syncs, 0);
        let mut synced = false;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if log.stats().syncs == 1 {
                synced = true;
                break;
            }
        }
        assert!(synced, "no sync within 3 s of a 300 ms interval");
        log.close().await.unwrap();
        assert_eq!(log.stats().syncs, 1, "nothing left to sync at close");
    }

    #[tokio::test]
    async fn interval_reserves_seqs_so_a_crash_never_reuses_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = || LogConfig {
            sync: SyncPolicy::Interval(Duration::from_secs(60)),
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config());
        for i in 1..=3 {
            assert_eq!(log.append(msg(i)).await.unwrap().seq, i);
        }
        // An OS crash could lose records 1..=3 although they were acked: the
        // next run must start above anything that could have been acked.
        crash(log);
        let (log, report, _) = open(dir.path(), config());
        assert_eq!(report.next_seq, 2 + HWM_RESERVE);
        assert_eq!(log.append(msg(4)).await.unwrap().seq, 2 + HWM_RESERVE);
        // A clean close records the exact next seq: no gap on restart.
        log.close().await.unwrap();
        drop(log);
        let (log, report, metas) = open(dir.path(), config());
        assert_eq!(report.next_seq, 3 + HWM_RESERVE);
        assert_eq!(seqs(&metas), vec![1, 2, 3, 2 + HWM_RESERVE]);
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn invalid_messages_are_refused_before_queueing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), plain());
        let mut m = msg(1);
        m.subject = "x".repeat(record::MAX_SUBJECT_LEN + 1);
        let err = log.append(m.clone()).await.unwrap_err();
        assert!(matches!(
            err.error,
            LogError::Invalid(record::RecordError::TooLarge { .. })
        ));
        assert_eq!(*err.message, m);
        assert_eq!(log.stats().batches, 0);
        assert_eq!(log.append(msg(2)).await.unwrap().seq, 1);
    }

    #[test]
    fn injected_counters_count_down() {
        let c = AtomicU32::new(2);
        assert!(take_injected(&c));
        assert!(take_injected(&c));
        assert!(!take_injected(&c));
    }

    /// Every batch after the first rolls to a new segment.
    fn roll_every_batch() -> LogConfig {
        LogConfig {
            segment_bytes: 1,
            ..plain()
        }
    }

    /// Appends `msg(1)`, injects `steps` into the next roll, appends
    /// `msg(2)` (answered), then `msg(3)` if the log is still writable.
    async fn roll_with_faults(
        dir: &std::path::Path,
        steps: &[CreateStep],
    ) -> (SegmentLog, Result<Appended, AppendError>) {
        let (log, _, _) = open(dir, roll_every_batch());
        assert_eq!(log.append(msg(1)).await.unwrap().location.segment, 1);
        log.test_shared()
            .inject_create_errors
            .lock()
            .extend_from_slice(steps);
        let second = log.append(msg(2)).await;
        assert!(log.test_shared().inject_create_errors.lock().is_empty());
        (log, second)
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_roll_that_made_no_file_keeps_appending_to_the_current_segment() {
        for step in [CreateStep::Header, CreateStep::Rename] {
            let dir = tempfile::tempdir().unwrap();
            let (log, second) = roll_with_faults(dir.path(), &[step]).await;
            let second = second.unwrap();
            assert_eq!((second.seq, second.location.segment), (2, 1), "{step:?}");
            // No file of the failed segment's name (nor its temporary).
            assert_eq!(names(dir.path()), vec![segment_file_name(1)], "{step:?}");
            let third = log.append(msg(3)).await.unwrap();
            assert_eq!((third.seq, third.location.segment), (3, 3));
            crash(log);
            let (log, report, metas) = open(dir.path(), roll_every_batch());
            assert_eq!(seqs(&metas), vec![1, 2, 3], "{step:?}: nothing acked lost");
            assert_eq!((report.next_seq, report.corrupt_regions), (4, 0));
            assert_eq!(log.append(msg(4)).await.unwrap().seq, 4);
        }
    }

    #[tokio::test]
    async fn a_roll_whose_rename_happened_adopts_the_new_segment() {
        for step in [CreateStep::RenameReported, CreateStep::SyncDir] {
            let dir = tempfile::tempdir().unwrap();
            let (log, second) = roll_with_faults(dir.path(), &[step]).await;
            let second = second.unwrap();
            assert_eq!((second.seq, second.location.segment), (2, 2), "{step:?}");
            assert_eq!(log.failed(), None);
            let third = log.append(msg(3)).await.unwrap();
            assert_eq!((third.seq, third.location.segment), (3, 3));
            crash(log);
            let (_log, report, metas) = open(dir.path(), roll_every_batch());
            assert_eq!(seqs(&metas), vec![1, 2, 3], "{step:?}");
            assert_eq!((report.next_seq, report.corrupt_regions), (4, 0));
        }
    }

    #[tokio::test]
    async fn a_new_segment_whose_entry_cannot_be_synced_fails_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let steps = [CreateStep::SyncDir, CreateStep::SyncDir];
        let (log, second) = roll_with_faults(dir.path(), &steps).await;
        let err = second.unwrap_err();
        assert!(matches!(err.error, LogError::Failed { .. }), "{err:?}");
        assert!(log.failed().is_some());
        let err = log.append(msg(3)).await.unwrap_err();
        assert!(matches!(err.error, LogError::Failed { .. }), "{err:?}");
        assert!(log.close().await.is_err());
        drop(log);
        // Seq 2 was never acked: handing it out again is safe.
        let (log, report, metas) = open(dir.path(), roll_every_batch());
        assert_eq!((seqs(&metas), report.next_seq), (vec![1], 2));
        let a = log.append(msg(4)).await.unwrap();
        assert_eq!((a.seq, a.location.segment), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_commit_hook_fails_the_log_instead_of_hanging_it() {
        let dir = tempfile::tempdir().unwrap();
        // The hook stops in batch "s.2" until the test has queued more
        // appends behind it, then panics.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let hook_chans = Mutex::new((entered_tx, go_rx));
        let config = LogConfig {
            on_commit: Some(Arc::new(move |batch: &[Committed<'_>]| {
                if batch.iter().any(|c| c.message.subject == "s.2") {
                    let chans = hook_chans.lock();
                    let _ = chans.0.send(());
                    let _ = chans.1.recv();
                    panic!("hook bug");
                }
            })),
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config);
        let log = Arc::new(log);
        assert_eq!(log.append(msg(1)).await.unwrap().seq, 1);
        let in_hook = spawn_appends(&log, 2..3);
        tokio::task::spawn_blocking(move || entered_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let queued = spawn_appends(&log, 3..5);
        wait_queued(&log, 2).await;
        go_tx.send(()).unwrap();
        // Bounded only so that a regression fails instead of hanging.
        let limit = Duration::from_secs(30);
        let within = |t| tokio::time::timeout(limit, t);
        for t in in_hook.into_iter().chain(queued) {
            let err = within(t).await.expect("append hangs").unwrap().unwrap_err();
            assert!(matches!(err.error, LogError::Failed { .. }), "{err:?}");
        }
        let reason = log.failed().expect("the log failed");
        assert!(
            reason.contains("writer thread panicked: hook bug"),
            "{reason}"
        );
        let err = tokio::time::timeout(limit, log.append(msg(5)))
            .await
            .expect("append hangs")
            .unwrap_err();
        assert!(matches!(err.error, LogError::Failed { .. }), "{err:?}");
        assert_eq!(*err.message, msg(5));
        let closed = tokio::time::timeout(limit, log.close())
            .await
            .expect("close hangs");
        assert!(matches!(closed, Err(LogError::Failed { .. })), "{closed:?}");
        assert!(matches!(log.close().await, Err(LogError::Failed { .. })));
    }

    #[tokio::test]
    async fn a_huge_sync_interval_means_no_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            sync: SyncPolicy::Interval(Duration::MAX),
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config.clone());
        for i in 1..=3 {
            assert_eq!(log.append(msg(i)).await.unwrap().seq, i);
        }
        assert_eq!(log.failed(), None);
        log.close().await.unwrap();
        assert_eq!(log.stats().syncs, 1, "synced at close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_out_of_seqs_is_an_error_not_an_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            min_next_seq: u64::MAX - 1,
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config.clone());
        let log = Arc::new(log);
        // One batch of three with one seq left.
        let gate = log.test_queue().gate.lock();
        let tasks = spawn_appends(&log, 0..3);
        wait_queued(&log, 3).await;
        drop(gate);
        let mut ok = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => ok.push(a.seq),
                Err(e) => assert!(matches!(e.error, LogError::SeqsExhausted), "{e:?}"),
            }
        }
        assert_eq!(ok, vec![u64::MAX - 1]);
        assert_eq!(log.next_seq(), u64::MAX);
        let err = log.append(msg(9)).await.unwrap_err();
        assert!(matches!(err.error, LogError::SeqsExhausted), "{err:?}");
        assert_eq!(log.failed(), None, "reads and close still work");
        log.close().await.unwrap();
        drop(log);

        // A stray segment file named u64::MAX: the same refusal.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment_file_name(u64::MAX)), b"").unwrap();
        let (log, report, _) = open(dir.path(), plain());
        assert_eq!(report.next_seq, u64::MAX);
        let err = log.append(msg(1)).await.unwrap_err();
        assert!(matches!(err.error, LogError::SeqsExhausted), "{err:?}");
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_interval_sync_leaves_the_writer_parked_not_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            // The deadline passes as soon as anything is written.
            sync: SyncPolicy::Interval(Duration::ZERO),
            ..plain()
        };
        let (log, _, _) = open(dir.path(), config);
        let shared = log.test_shared();
        let queue = log.test_queue();
        // Polls are bounded only so that a regression fails, not hangs.
        let wait_until = |waits: u64| async move {
            for _ in 0..10_000 {
                if queue.untimed_waits.load(Ordering::Relaxed) >= waits {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        };
        // Loop 1 waits idle (untimed wait 1) and takes the batch; loop 2's
        // deadline has passed: the sync fails; loop 3 waits idle for good
        // (untimed wait 2).
        assert!(wait_until(1).await, "the writer never went idle");
        shared.inject_sync_errors.store(1, Ordering::Release);
        log.append(msg(1)).await.unwrap();
        let parked = wait_until(2).await;
        assert!(log.failed().is_some());
        assert!(parked, "the writer never went idle after the failed sync");
        assert_eq!(shared.writer_loops.load(Ordering::Relaxed), 3);
        assert_eq!(queue.untimed_waits.load(Ordering::Relaxed), 2);
        assert!(matches!(log.close().await, Err(LogError::Failed { .. })));
        assert_eq!(shared.writer_loops.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn never_syncs_each_sealed_segment_so_a_clean_close_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            sync: SyncPolicy::Never,
            ..roll_every_batch()
        };
        let (log, _, _) = open(dir.path(), config);
        for i in 1..=3 {
            assert_eq!(log.append(msg(i)).await.unwrap().location.segment, i);
        }
        // Segments 1 and 2 were sealed by a roll, each synced then.
        assert_eq!(log.stats().syncs, 2);
        log.close().await.unwrap();
        assert_eq!(log.stats().syncs, 3, "close syncs the active one");
    }
}
