//! The embedded durable [`Bus`] backend: the shared stream state machine
//! (the private `stream` module) over the segment log
//! ([`SegmentLog`]).
//!
//! # Layout
//!
//! `DIR/log/` holds the segment files; `DIR/consumer-<name>.state` one file
//! per durable consumer; `DIR/stream.state` the stream metadata;
//! `DIR/consumer-<name>.deleted` the tombstone of a consumer being deleted
//! (see the private `state` module). One process per directory (nothing
//! locks it).
//!
//! # How it works
//!
//! - **Publish** checks the limits first (`TooLarge` / `Full` hand the
//!   message back at once, exactly like the memory backend, with the same
//!   drain-rate `retry_after`), reserving room for the message, then
//!   appends it to the log. The log's commit hook indexes each committed
//!   batch in sequence order (so a consumer can never skip a hole), and the
//!   append returns only after the `fdatasync` covering it
//!   ([`SyncPolicy::Always`](crate::segment::SyncPolicy::Always), the
//!   default): `Ok(seq)` means the message is on disk.
//! - **The index** holds, per retained message, its subject (interned), size,
//!   publish instant, holder count and log location, never the payload; a
//!   fetch reads its records back from the log (outside the stream lock,
//!   one `pread` per run of consecutive records, normally served by the
//!   page cache) and checks each one's CRC.
//! - **Consumer state** (cursor + pending set, see the private `state`
//!   module) is written by a background thread every
//!   [`SegmentBusOptions::state_sync_interval`]
//!   for each consumer that changed, at [`Bus::close`], when the bus handle
//!   is dropped, and when a consumer is created (that write is synchronous:
//!   a durable consumer exists on disk before `consumer()` returns, and a
//!   bind whose write fails is undone and fails with `Unavailable`). A
//!   state sync in which every consumer's write succeeded also raises the
//!   stored discard floor to the oldest message then held: what every
//!   consumer released stays released across a restart.
//! - **Retention**: after each state sync, segments whose every record is
//!   below the oldest retained message are deleted (`delete_before`), but
//!   only once the consumer state that released them is on disk.
//! - **Deleting a consumer** ([`Bus::delete_consumer`]) writes its tombstone
//!   first (synchronously, fsync'd), then takes it out of the stream, which
//!   releases every message it held, then stores the metadata without it
//!   and removes its state file and the tombstone. A crash anywhere after
//!   the tombstone finishes the delete at the next open; the segments only
//!   it held are deleted by the next state sync like any released ones.
//! - **Open** recovers the log (CRC check of every record, torn tail
//!   truncated, corrupt regions skipped, counted and logged by the log),
//!   loads the consumer state, and re-indexes only the records some consumer
//!   still holds (or, with no consumer, every record). Seqs continue past
//!   every seq the consumer state mentions, even if the log lost its tail.
//!
//! # What it guarantees
//!
//! - **Accepted = on disk** (design guarantee 1): `publish` returns `Ok`
//!   only after the record's `fdatasync` (under the default sync policy).
//! - **At least once across crashes** (guarantee 2): after `kill -9` or a
//!   power loss, every accepted message that a consumer had not acked as of
//!   the last completed state sync is delivered to it after the restart
//!   (again, if it had been delivered: pending messages are due at once and
//!   their delivery counts carry on towards `max_deliver`). Durable consumers are re-bound by name: the same name
//!   continues from the same position.
//! - **The redelivery window.** An ack (term, `max_deliver` give-up) is
//!   durable once the next state sync has completed: at most
//!   `state_sync_interval` (default 100 ms) plus the sync itself (two
//!   `fsync`s per changed consumer, a few ms) after it. A crash inside that
//!   window redelivers those messages once more. After a clean
//!   [`Bus::close`] or drop nothing acked is redelivered. The same window
//!   applies to messages dropped by `discard: old` / `max_age`: a crash
//!   right after may bring them back once.
//! - **Corruption never panics and never blocks startup** (guarantee 5):
//!   corrupt records are skipped (the messages in them are lost, counted in
//!   the [`OpenReport`] and logged); a missing or unreadable consumer state
//!   file resets that consumer to the start of the log (everything still
//!   held is redelivered, logged with `warn`); an unreadable metadata file
//!   is rebuilt from the consumer files. `open` fails only on I/O errors
//!   (and an unknown segment format), with the path in the message.
//! - **Bounded memory** (guarantee 4): no payload is kept in memory. Each
//!   retained message costs one index entry of 80 bytes (`seq`, the
//!   stream's slot and its [`Location`]) in a ring indexed by seq, at most
//!   half of whose entries are holes left by out-of-order releases and
//!   whose capacity is at most twice its entries: about 105 bytes in all
//!   when released in order (measured by
//!   `memory_per_retained_message_is_small_and_bounded`), at most 240
//!   bytes with holes, plus its subject
//!   string once per distinct subject. Retained messages are bounded by
//!   `max_msgs` (and `max_bytes`): set one of them, the index has no other
//!   bound. Each consumer adds about 113 bytes per pending (delivered,
//!   unacked) message, bounded by `max_ack_pending`. Recovery streams the
//!   log; a fetch holds one record per message it returns.
//!
//! # What it does not guarantee
//!
//! - No more than once: redelivery after a crash is the price of at least
//!   once (see the window above).
//! - Messages in a corrupt region of the log are lost (recovery cannot tell
//!   what they were). With a weaker [`SyncPolicy`](crate::segment::SyncPolicy)
//!   an OS crash can lose acknowledged messages (see its docs).
//! - A consumer's configuration cannot change across restarts: binding an
//!   existing durable name with another configuration is
//!   [`BusError::ConsumerMismatch`] (as within one run).
//! - Creating or deleting a consumer and closing the bus do blocking file
//!   I/O (a few `fsync`s) on the calling thread; fetches `pread` on it.
//!   Deleting also walks the held messages above the consumer's cursor
//!   once, under the stream lock.
//! - Counters in [`BusStats`] (published, rejected, discarded) restart at
//!   zero with each process.
//! - Durable consumers are deleted only when asked
//!   ([`Bus::delete_consumer`]): one that is no longer bound after a restart
//!   still holds its messages (retention by interest) until the stream
//!   fills up. The spillway binary deletes, at start-up, every consumer no
//!   trigger of its config binds (none if it has no trigger at all).
//! - A consumer created while the stream holds messages starts at the
//!   oldest of them; a message released before it existed but lying above
//!   that start (wanted by nobody, or held only by a deleted consumer) is
//!   passed over for good once the new consumer has caught up. A restart
//!   before that delivers it to the new consumer once (at least once errs
//!   towards an extra delivery).
//! - Binding a name whose earlier delete is not finished on disk (removing
//!   its files failed and no retry has succeeded yet) finishes that delete
//!   first, and fails with [`BusError::Unavailable`] if it still cannot:
//!   a tombstone left beside a live consumer would delete it at the next
//!   open.
//! - While a consumer is being created (its state file being written), a
//!   publish it alone wants is admitted as held; if the creation then
//!   fails, that message is released, and under `discard: old` at a full
//!   stream the oldest message it displaced stays discarded.
//! - A publish whose future is dropped after the message was queued is
//!   still stored (the log's contract) and may take the stream one message
//!   past `max_msgs`; its publisher never learns the seq.
//! - A record that fails its CRC when read back (corrupted after it was
//!   written) is discarded at fetch, counted in `discarded` and logged.

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod model_tests;
mod state;
#[cfg(test)]
mod tests;

use crate::segment::Location;
use crate::segment::{
    AppendError, CommitHook, Committed, LogConfig, LogError, LogStats, RecordError, RecoveryReport,
    SegmentLog, StateFile, StateFileError,
};
use crate::stream::{Admitted, ConsumerId, ConsumerSnapshot, Shared, Stream};
use crate::{
    Bus, BusError, BusStats, Consumer, ConsumerConfig, ConsumerStats, Limits, Message,
    PublishError, Received,
};
use async_trait::async_trait;
use parking_lot::{Condvar, Mutex};
use state::{Manifest, STREAM_FILE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The log lives in this subdirectory of the bus directory.
pub const LOG_DIR: &str = "log";

/// Redelivery delay of a message whose record could not be read for a
/// reason other than corruption.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Settings of a [`SegmentBus`].
#[derive(Debug, Clone)]
pub struct SegmentBusOptions {
    /// How often changed consumer state is written to disk; bounds the
    /// redelivery window after a crash (see the [module docs](self)).
    /// Default 100 ms; at least 1 ms.
    pub state_sync_interval: Duration,
    /// Storage-engine settings. The bus sets `on_commit` (its index) and
    /// raises `min_next_seq` past every seq its state mentions.
    pub log: LogConfig,
}

impl Default for SegmentBusOptions {
    fn default() -> Self {
        SegmentBusOptions {
            state_sync_interval: Duration::from_millis(100),
            log: LogConfig::default(),
        }
    }
}

/// What [`SegmentBus::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The log's recovery: records, corrupt regions, truncated bytes.
    pub recovery: RecoveryReport,
    /// Durable consumers restored.
    pub consumers: u64,
    /// Messages held again (some consumer, or with no consumer the stream,
    /// still needs them) and their bytes.
    pub held: u64,
    pub held_bytes: u64,
    /// Consumers whose state file was missing or unreadable: everything
    /// at or above the discard floor (every message still held at the last
    /// state sync, and any acked since) that matches their filter is
    /// redelivered to them.
    pub consumers_reset: Vec<String>,
    /// Consumers whose deletion a crash interrupted (their tombstone was on
    /// disk): finished now, they are not restored.
    pub consumers_deleted: Vec<String>,
    /// Delivered, unacked messages that consumer state mentions but the log
    /// no longer has (lost in a corrupt region): they cannot be redelivered.
    pub pending_lost: u64,
    /// Consumer state files that could not be read and belong to no known
    /// consumer; each was renamed to `<name>.corrupt`.
    pub unreadable_state_files: Vec<PathBuf>,
    /// The stream metadata file was unreadable (rebuilt from the consumer
    /// files; the discard floor restarts at 0).
    pub metadata_reset: bool,
}

/// The embedded durable bus. See the [module docs](self).
pub struct SegmentBus {
    inner: Arc<Inner>,
    syncer: Mutex<Option<Syncer>>,
}

impl std::fmt::Debug for SegmentBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBus")
            .field("dir", &self.inner.dir)
            .field("limits", &self.inner.shared.limits)
            .finish_non_exhaustive()
    }
}

/// What the bus and its consumer handles share.
struct Inner {
    dir: PathBuf,
    shared: Arc<Shared<Location>>,
    log: SegmentLog,
    /// Serialises state-file writes (sync thread, consumer creation, close).
    persist: Mutex<Persist>,
}

struct Persist {
    /// The metadata as last written.
    stored_manifest: Option<Manifest>,
    /// The floor last handed to `delete_before`.
    deleted_floor: u64,
    /// Deleted consumers whose tombstone is still on disk: removed (with
    /// any state file left behind) once metadata without them is stored.
    tombstones: BTreeSet<String>,
    /// Consecutive failed syncs (the warning is logged at powers of two).
    failures: u64,
    /// Consecutive failed removals of deleted consumers' files.
    tidy_failures: u64,
    /// Consumers whose state file was never written (a first consumer
    /// whose creation write failed): left out of the metadata until it is,
    /// so that a restart finds no consumer and holds every record rather
    /// than resetting one that never existed on disk.
    unwritten: BTreeSet<String>,
}

impl SegmentBus {
    /// Opens (creating if needed, durably: a new directory's entry is synced
    /// in its parent) the bus in `dir`, enforcing `limits`:
    /// recovers the log, restores the durable consumers and their positions,
    /// and starts the state-sync thread. Blocking (file I/O, a scan of the
    /// whole log): call it before serving, or from `spawn_blocking`.
    pub fn open(
        dir: impl Into<PathBuf>,
        limits: Limits,
        options: SegmentBusOptions,
    ) -> Result<(Arc<SegmentBus>, OpenReport), BusError> {
        let dir = dir.into();
        let shown = dir.display().to_string();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BusError::Unavailable(format!(
                "cannot open the segment bus in {shown}: {what}: {e}"
            ))
        };
        crate::segment::state_file::create_dir_durable(&dir)
            .map_err(|e| fail("create directory", &e))?;
        let mut report = OpenReport::default();

        let manifest = load_manifest(&dir, &mut report).map_err(|e| fail("read", &e))?;
        let (restored, tombstones) = load_consumers(&dir, manifest.as_ref(), &mut report)
            .map_err(|e| fail("read consumer state", &e))?;

        let shared = Arc::new(Shared::new(limits));
        let discard_floor = manifest.as_ref().map_or(0, |m| m.discard_floor);
        let mut min_next_seq = discard_floor.max(options.log.min_next_seq);
        {
            let mut st = shared.lock();
            st.discard_floor = discard_floor;
            for (snapshot, dirty) in restored {
                min_next_seq = min_next_seq.max(snapshot.cursor);
                if let Some(&(seq, _)) = snapshot.pending.iter().max() {
                    min_next_seq = min_next_seq.max(seq.saturating_add(1));
                }
                st.restore_consumer(snapshot, dirty);
            }
        }

        let hook_shared = Arc::clone(&shared);
        let on_commit: CommitHook = Arc::new(move |batch: &[Committed<'_>]| {
            let now = Instant::now();
            let mut st = hook_shared.lock();
            for c in batch {
                let a = &c.appended;
                st.insert(a.seq, &c.message.subject, a.size, now, a.location);
            }
        });
        let log_config = LogConfig {
            min_next_seq,
            on_commit: Some(on_commit),
            ..options.log.clone()
        };
        let (log, recovery) = {
            let mut st = shared.lock();
            let now = Instant::now();
            let wall = SystemTime::now();
            SegmentLog::open(dir.join(LOG_DIR), log_config, |m| {
                // Ages survive the restart: back-date by the wall-clock age.
                let age = wall.duration_since(m.published_at).unwrap_or_default();
                let stored_at = now.checked_sub(age).unwrap_or(now);
                st.insert_recovered(m.seq, m.subject, m.size, stored_at, m.location);
            })
            .map_err(|e| fail("recover the log", &e))?
        };
        {
            let mut st = shared.lock();
            st.last_seq = st.last_seq.max(recovery.next_seq.saturating_sub(1));
            for (id, lost) in st.prune_missing_pending() {
                warn!(
                    consumer = %st.consumers[&id].config.name,
                    lost,
                    "delivered, unacked messages are missing from the log (corrupt region); they cannot be redelivered"
                );
                report.pending_lost += lost;
            }
            report.consumers = st.consumers.len() as u64;
            report.held = st.msgs.len() as u64;
            report.held_bytes = st.bytes;
        }
        report.recovery = recovery;
        let r = &report.recovery;
        info!(
            dir = %dir.display(),
            records = r.records,
            held = report.held,
            consumers = report.consumers,
            corrupt_regions = r.corrupt_regions,
            bytes_truncated = r.bytes_truncated,
            next_seq = r.next_seq,
            "segment bus open"
        );

        let inner = Arc::new(Inner {
            dir,
            shared,
            log,
            persist: Mutex::new(Persist {
                stored_manifest: manifest,
                deleted_floor: 0,
                tombstones,
                failures: 0,
                tidy_failures: 0,
                unwritten: BTreeSet::new(),
            }),
        });
        // Writes reset consumers and rebuilt metadata, deletes what nobody holds.
        if let Err(e) = inner.sync_state() {
            warn!(error = %e, "cannot write the bus state at open; retrying in the background");
        }
        let syncer = Syncer::start(
            Arc::downgrade(&inner),
            options.state_sync_interval.max(Duration::from_millis(1)),
        )
        .map_err(|e| fail("start the state-sync thread", &e))?;
        Ok((
            Arc::new(SegmentBus {
                inner,
                syncer: Mutex::new(Some(syncer)),
            }),
            report,
        ))
    }

    /// The bus directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Names of the durable consumers, oldest first.
    pub fn consumer_names(&self) -> Vec<String> {
        let st = self.inner.shared.lock();
        st.consumers
            .values()
            .map(|c| c.config.name.clone())
            .collect()
    }

    /// Counters of the underlying log (syncs, batches, segments, disk bytes).
    pub fn log_stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    /// Writes every changed consumer state now and deletes released
    /// segments (what the sync thread does each interval). Blocking.
    pub fn sync_state(&self) -> Result<(), BusError> {
        self.inner.sync_state()
    }

    /// Tests: a crash as the bus layer sees it. The sync thread stops
    /// without a final sync, so consumer state stays as of the last sync;
    /// the log is closed (its records were synced anyway).
    #[cfg(test)]
    pub(crate) async fn crash(self: Arc<Self>) {
        if let Some(s) = self.syncer.lock().take() {
            s.stop(false);
        }
        self.inner.shared.lock().close();
        let _ = self.inner.log.close().await;
    }
}

impl Drop for SegmentBus {
    /// Stops the sync thread after a final sync (so acks made after `close`
    /// are kept too). The log drains its queue in the background.
    fn drop(&mut self) {
        if let Some(s) = self.syncer.get_mut().take() {
            s.stop(true);
        }
    }
}

/// `stream.state`, if readable (`report.metadata_reset` if not).
fn load_manifest(dir: &Path, report: &mut OpenReport) -> Result<Option<Manifest>, StateFileError> {
    let file = StateFile::new(dir.join(STREAM_FILE));
    let reason = match file.load() {
        Ok(None) => return Ok(None),
        Ok(Some(bytes)) => match state::decode_manifest(&bytes) {
            Ok(m) => return Ok(Some(m)),
            Err(reason) => reason.to_string(),
        },
        Err(e @ StateFileError::Corrupt { .. }) => e.to_string(),
        Err(e) => return Err(e),
    };
    warn!(file = %file.path().display(), %reason, "stream metadata unreadable; rebuilding it from the consumer state files");
    report.metadata_reset = true;
    Ok(None)
}

/// Consumers to restore: each one's persisted position, and whether it was
/// reset (and must be written back).
type Restored = Vec<(ConsumerSnapshot, bool)>;

/// Every known consumer's persisted position (`true`: reset, must be
/// written back), and the names of deleted consumers whose tombstone is
/// still on disk. Consumers listed in the metadata without a readable state
/// file restart at the discard floor (at-least-once: every message still
/// held at the last state sync is redelivered); state files of unknown consumers
/// that cannot be read are renamed out of the way. A consumer with a
/// tombstone is not restored, whatever else is on disk, and its state file
/// is removed; tombstones of consumers found nowhere else are removed.
fn load_consumers(
    dir: &Path,
    manifest: Option<&Manifest>,
    report: &mut OpenReport,
) -> Result<(Restored, BTreeSet<String>), StateFileError> {
    let mut found: BTreeMap<String, ConsumerSnapshot> = BTreeMap::new();
    let mut unreadable: Vec<(PathBuf, String)> = Vec::new();
    let paths = state::consumer_files(dir).map_err(|e| StateFileError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source: Arc::new(e),
    })?;
    for path in paths {
        let file = StateFile::new(&path);
        match file.load() {
            Ok(None) => {}
            Ok(Some(bytes)) => match state::decode_consumer(&bytes) {
                Ok(s) => {
                    found.insert(s.config.name.clone(), s);
                }
                Err(reason) => unreadable.push((path, reason.to_string())),
            },
            Err(e @ StateFileError::Corrupt { .. }) => unreadable.push((path, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let listed = manifest.map(|m| m.consumers.as_slice()).unwrap_or_default();
    let mut tombstone_paths: BTreeSet<PathBuf> = state::tombstone_files(dir)
        .map_err(|e| StateFileError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?
        .into_iter()
        .collect();
    let mut deleted = BTreeSet::new();
    if !tombstone_paths.is_empty() {
        let names = listed
            .iter()
            .map(|c| c.name.clone())
            .chain(found.keys().cloned())
            .collect::<BTreeSet<_>>();
        for name in names {
            if tombstone_paths.remove(state::tombstone_file(dir, &name).path()) {
                // Deleted, and the crash came before the delete finished.
                found.remove(&name);
                state::consumer_file(dir, &name).remove()?;
                info!(consumer = %name, "finishing the deletion of a durable consumer interrupted by a restart");
                report.consumers_deleted.push(name.clone());
                deleted.insert(name);
            }
        }
        // The delete had finished but for removing its tombstone.
        for path in tombstone_paths {
            StateFile::new(path).remove()?;
        }
    }
    let mut restored = Vec::new();
    for config in listed {
        if deleted.contains(&config.name) {
            continue;
        }
        match found.remove(&config.name) {
            Some(s) => restored.push((s, false)),
            None => {
                let path = state::consumer_file(dir, &config.name).path().to_path_buf();
                let why = unreadable
                    .iter()
                    .position(|(p, _)| *p == path)
                    .map(|i| unreadable.remove(i).1)
                    .unwrap_or_else(|| "missing".to_string());
                warn!(
                    consumer = %config.name,
                    file = %path.display(),
                    reason = %why,
                    "consumer state lost; every message at or above the discard floor that matches its filter will be redelivered to it"
                );
                report.consumers_reset.push(config.name.clone());
                restored.push((
                    ConsumerSnapshot {
                        config: config.clone(),
                        cursor: 0,
                        pending: Vec::new(),
                    },
                    true,
                ));
            }
        }
    }
    // Created just before a crash (its file is written before the metadata),
    // or the metadata was lost.
    restored.extend(found.into_values().map(|s| (s, false)));
    for (path, reason) in unreadable {
        let mut quarantine = path.clone().into_os_string();
        quarantine.push(".corrupt");
        warn!(
            file = %path.display(),
            %reason,
            renamed_to = %Path::new(&quarantine).display(),
            "unreadable consumer state file of an unknown consumer; set aside"
        );
        if let Err(e) = std::fs::rename(&path, &quarantine) {
            warn!(file = %path.display(), error = %e, "cannot rename the unreadable state file");
        }
        report.unreadable_state_files.push(path);
    }
    Ok((restored, deleted))
}

/// What `stream.state` should hold now.
/// Refuses a consumer whose state could not fit one state file even empty
/// of pending messages plus `max_ack_pending` of them: every state write
/// would fail, so no ack would ever be durable.
fn check_fits_state_file(config: &ConsumerConfig) -> Result<(), BusError> {
    let invalid = |reason: String| {
        Err(BusError::InvalidConsumer {
            name: config.name.clone(),
            reason,
        })
    };
    if config.max_ack_pending > MAX_ACK_PENDING {
        return invalid(format!(
            "max_ack_pending {} is over the segment bus's {MAX_ACK_PENDING} (its pending set \
             must fit one state file)",
            config.max_ack_pending
        ));
    }
    let empty = state::encode_consumer(&ConsumerSnapshot {
        config: config.clone(),
        cursor: 0,
        pending: Vec::new(),
    })
    .len();
    let max = crate::segment::state_file::MAX_STATE_BYTES;
    if empty.saturating_add(config.max_ack_pending.saturating_mul(12)) > max {
        return invalid(format!(
            "its configuration ({empty} bytes) and a full pending set do not fit one state \
             file of {max} bytes; use fewer or shorter filter subjects"
        ));
    }
    Ok(())
}

/// Most delivered, unacked messages a consumer may have: its pending set
/// (12 bytes an entry) must fit one state file
/// ([`MAX_STATE_BYTES`](crate::segment::state_file::MAX_STATE_BYTES)).
pub const MAX_ACK_PENDING: usize = 1 << 20;
const _: () = assert!(
    MAX_ACK_PENDING * 12 + (1 << 20) <= crate::segment::state_file::MAX_STATE_BYTES,
    "a full pending set and 1 MiB of configuration fit one state file"
);

/// The metadata for the live state: every consumer whose state file has
/// been written (see [`Persist::unwritten`]).
fn manifest_of(st: &Stream<Location>, p: &Persist) -> Manifest {
    Manifest {
        discard_floor: st.discard_floor,
        consumers: st
            .consumers
            .values()
            .filter(|c| !p.unwritten.contains(&c.config.name))
            .map(|c| c.config.clone())
            .collect(),
    }
}

impl Inner {
    /// Writes every changed consumer and the metadata, then deletes the
    /// segments that state released. Serialised by `persist`.
    fn sync_state(&self) -> Result<(), BusError> {
        let mut p = self.persist.lock();
        let (snapshots, floor) = {
            let mut st = self.shared.lock();
            let ids: Vec<ConsumerId> = st.consumers.keys().copied().collect();
            let snapshots: Vec<(ConsumerId, ConsumerSnapshot)> = ids
                .into_iter()
                .filter_map(|id| st.snapshot(id, false).map(|s| (id, s)))
                .collect();
            (snapshots, st.retention_floor())
        };
        let mut error = None;
        for (id, snapshot) in &snapshots {
            let file = state::consumer_file(&self.dir, &snapshot.config.name);
            match file.store(&state::encode_consumer(snapshot)) {
                Ok(()) => {
                    p.unwritten.remove(&snapshot.config.name);
                }
                Err(e) => {
                    // Try again next time.
                    if let Some(c) = self.shared.lock().consumers.get_mut(id) {
                        c.dirty = true;
                    }
                    error = Some(e);
                }
            }
        }
        // Built after the writes: lists exactly the consumers on disk (a
        // consumer bound meanwhile cannot be: binds hold `persist`).
        let mut manifest = manifest_of(&self.shared.lock(), &p);
        if error.is_none() && floor > manifest.discard_floor {
            // Every consumer's state as of the snapshot is on disk, and
            // everything below the oldest message held then was released by
            // all of them: no state needs it again. Raising the floor keeps
            // released messages released at the next open — without it,
            // deleting the last consumer would bring its messages back
            // (with no consumer, open holds every record above the floor),
            // and a consumer whose state file is lost would get messages
            // acked long ago. Kept in memory too, so no later metadata
            // write lowers it.
            manifest.discard_floor = floor;
            let mut st = self.shared.lock();
            st.discard_floor = st.discard_floor.max(floor);
        }
        if p.stored_manifest.as_ref() != Some(&manifest) {
            let file = StateFile::new(self.dir.join(STREAM_FILE));
            match file.store(&state::encode_manifest(&manifest)) {
                Ok(()) => p.stored_manifest = Some(manifest),
                Err(e) => error = Some(e),
            }
        }
        if error.is_none() {
            // Tidying is not a precondition of anything: open honours a
            // tombstone whether or not its files are gone. So a file that
            // cannot be removed must not hold segment deletion back.
            if let Err(e) = self.clear_tombstones(&mut p) {
                p.tidy_failures += 1;
                if p.tidy_failures.is_power_of_two() {
                    warn!(error = %e, failures = p.tidy_failures, "cannot remove a deleted consumer's files; retrying (the delete itself is durable)");
                }
            } else {
                p.tidy_failures = 0;
            }
        }
        if let Some(e) = error {
            // Nothing is deleted until the state releasing it is on disk.
            p.failures += 1;
            if p.failures.is_power_of_two() {
                warn!(error = %e, failures = p.failures, "cannot write consumer state; acks since the last successful write would be redelivered after a crash");
            }
            return Err(BusError::Unavailable(e.to_string()));
        }
        p.failures = 0;
        if floor > p.deleted_floor {
            match self.log.delete_before(floor) {
                Ok(r) => {
                    p.deleted_floor = floor;
                    if r.segments > 0 {
                        debug!(
                            segments = r.segments,
                            bytes = r.bytes,
                            floor,
                            "deleted fully released segments"
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot delete released segments; retrying later");
                    return Err(BusError::Unavailable(e.to_string()));
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, message: Message) -> Result<u64, PublishError> {
        let size = message.size() as u64;
        let admitted = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(PublishError::Closed { message });
            }
            let now = Instant::now();
            st.maintain(now);
            match st.admit(&message.subject, size, now) {
                Err(refusal) => return Err(refusal.into_error(message)),
                Ok(a) => {
                    if a == Admitted::Held {
                        st.reserve(size);
                    }
                    a
                }
            }
        };
        // Held until the append is answered (or this future is dropped): the
        // commit hook has indexed the message by then, if it was stored.
        let _reservation = (admitted == Admitted::Held).then(|| Reservation {
            shared: &self.shared,
            size,
        });
        match self.log.append(message).await {
            Ok(appended) => Ok(appended.seq),
            Err(AppendError { error, message }) => {
                let message = *message;
                Err(match error {
                    LogError::Closed => PublishError::Closed { message },
                    LogError::Invalid(RecordError::TooLarge { max, .. }) => {
                        self.shared.lock().count_too_large();
                        PublishError::TooLarge {
                            message,
                            size,
                            max: max as u64,
                        }
                    }
                    other => PublishError::Unavailable {
                        message,
                        reason: other.to_string(),
                    },
                })
            }
        }
    }

    /// [`Bus::consumer`]: binds `config.name`, creating the consumer if it
    /// does not exist. A new consumer is on disk before this returns: its
    /// state file, then the metadata listing it (a crash in between leaves
    /// a state file the next open adopts). If either write fails the
    /// consumer is taken out again and the bind fails with `Unavailable` —
    /// except the first consumer of the stream: adding it released the
    /// messages it does not want (held only because there was no
    /// consumer), which cannot be undone, so it stays, marked for the
    /// state sync to write; until then a restart finds no consumer and
    /// holds every record, so nothing is lost (and the metadata leaves it
    /// out until it is written: [`Persist::unwritten`]). A bind holds
    /// `persist` throughout, so no delete, bind or state sync runs in
    /// between, and a bind of a name being created waits until it is on
    /// disk. Blocking file I/O.
    fn bind(&self, mut config: ConsumerConfig) -> Result<(ConsumerId, Arc<Notify>), BusError> {
        let name = config.name.clone();
        // Stored in nanoseconds as a u64 (≈ 584 years): what is read back
        // after a restart must equal what is bound again.
        config.ack_wait = config.ack_wait.min(Duration::from_nanos(u64::MAX));
        // Even to bind an existing consumer: one being created right now is
        // not on disk until its creator releases `persist`.
        let mut p = self.persist.lock();
        if self.shared.lock().find_consumer(&name).is_none() {
            check_fits_state_file(&config)?;
            self.finish_delete(&mut p, &name)?;
        }
        let (id, wake, snapshot, manifest, first) = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(BusError::Closed);
            }
            let now = Instant::now();
            st.maintain(now);
            let before = st.consumers.len();
            let (id, wake) = st.add_consumer(config, now)?;
            if st.consumers.len() == before {
                return Ok((id, wake));
            }
            let first = before == 0;
            (id, wake, st.snapshot(id, true), manifest_of(&st, &p), first)
        };
        let Some(snapshot) = snapshot else {
            return Ok((id, wake));
        };
        let file = state::consumer_file(&self.dir, &name);
        let stored = file
            .store(&state::encode_consumer(&snapshot))
            .and_then(|()| {
                StateFile::new(self.dir.join(STREAM_FILE)).store(&state::encode_manifest(&manifest))
            });
        match stored {
            Ok(()) => {
                p.stored_manifest = Some(manifest);
                Ok((id, wake))
            }
            Err(e) => {
                // The metadata write may have failed after its rename: make
                // the next state sync write it whatever it compares to.
                p.stored_manifest = None;
                if first {
                    // Not listed in metadata until its state file is written.
                    p.unwritten.insert(name.clone());
                    warn!(consumer = %name, error = %e, "cannot write the first consumer's state; kept, and written by the next state sync (until then a restart holds every record)");
                    if let Some(c) = self.shared.lock().consumers.get_mut(&id) {
                        c.dirty = true;
                    }
                    return Ok((id, wake));
                }
                // Not the first: adding it changed nothing but the holder
                // counts its removal takes back.
                self.shared.lock().remove_consumer(id, Instant::now());
                // Unlisted, so an open would adopt it: best effort.
                if let Err(e2) = file.remove() {
                    warn!(consumer = %name, error = %e2, "cannot remove the state file of a consumer whose creation failed; the next open adopts it");
                }
                Err(BusError::Unavailable(format!(
                    "cannot create consumer {name:?}: {e}"
                )))
            }
        }
    }

    /// [`Bus::delete_consumer`]: a durable tombstone first (from then on
    /// the delete survives any crash), then the consumer leaves the stream,
    /// releasing what it held, then the metadata without it is stored and
    /// its state file and tombstone are removed. Failures after the
    /// tombstone are retried by the state sync. Blocking file I/O.
    fn delete_consumer(&self, name: &str) -> Result<bool, BusError> {
        let mut p = self.persist.lock();
        let Some(id) = self.shared.lock().find_consumer(name).map(|(&id, _)| id) else {
            return Ok(false);
        };
        let tombstone = state::tombstone_file(&self.dir, name);
        if let Err(e) = tombstone.store(name.as_bytes()) {
            // The store can fail after its rename (at the directory fsync):
            // a tombstone nobody tracks would delete the consumer at the
            // next open. Refuse only once it is surely gone; otherwise the
            // delete is as good as durable, so finish it.
            if tombstone.remove().is_ok() {
                return Err(BusError::Unavailable(format!(
                    "cannot delete consumer {name:?}: {e}"
                )));
            }
            warn!(consumer = %name, error = %e, "the tombstone may be on disk although writing it failed; deleting the consumer");
        }
        p.tombstones.insert(name.to_string());
        let (manifest, released) = {
            let mut st = self.shared.lock();
            let held = st.msgs.len();
            st.remove_consumer(id, Instant::now());
            // Every live consumer's state file is on disk (a bind holds
            // `persist` until it is), so the live list is safe to store.
            p.unwritten.remove(name);
            let manifest = manifest_of(&st, &p);
            (manifest, held - st.msgs.len())
        };
        info!(consumer = %name, released, "deleted durable consumer");
        let stored = StateFile::new(self.dir.join(STREAM_FILE))
            .store(&state::encode_manifest(&manifest))
            .and_then(|()| {
                p.stored_manifest = Some(manifest);
                self.clear_tombstones(&mut p)
            });
        if let Err(e) = stored {
            warn!(consumer = %name, error = %e, "consumer deleted, but its files are not tidied yet; retrying in the background");
        }
        Ok(true)
    }

    /// Before `name` is bound again: finishes its earlier delete if removing
    /// its files had failed (metadata without it, state file, tombstone, in
    /// that order, as [`Inner::clear_tombstones`] does). Otherwise the new
    /// consumer would live beside the old tombstone, and a crash before a
    /// retry removed it would delete the new consumer at the next open.
    fn finish_delete(&self, p: &mut Persist, name: &str) -> Result<(), BusError> {
        if !p.tombstones.contains(name) {
            return Ok(());
        }
        let unlisted = match &p.stored_manifest {
            Some(stored) if stored.consumers.iter().any(|c| c.name == name) => {
                let manifest = manifest_without(stored, name);
                StateFile::new(self.dir.join(STREAM_FILE))
                    .store(&state::encode_manifest(&manifest))
                    .map(|()| p.stored_manifest = Some(manifest))
            }
            _ => Ok(()),
        };
        let finished = unlisted.and_then(|()| self.remove_deleted_files(name));
        match finished {
            Ok(()) => {
                p.tombstones.remove(name);
                Ok(())
            }
            Err(e) => Err(BusError::Unavailable(format!(
                "cannot bind consumer {name:?} again yet: its earlier delete is not finished on \
                 disk ({e})"
            ))),
        }
    }

    /// Removes deleted consumer `name`'s state file, then its tombstone (the
    /// other order could leave a state file with nothing saying it is
    /// deleted).
    fn remove_deleted_files(&self, name: &str) -> Result<(), StateFileError> {
        state::consumer_file(&self.dir, name)
            .remove()
            .and_then(|()| state::tombstone_file(&self.dir, name).remove())
    }

    /// Removes the state file and tombstone of every deleted consumer the
    /// stored metadata no longer lists (only the tombstone of one listed
    /// again, which [`Inner::finish_delete`] rules out; kept as a guard).
    /// Call only once the metadata and every consumer's state are stored.
    fn clear_tombstones(&self, p: &mut Persist) -> Result<(), StateFileError> {
        let listed: BTreeSet<&str> = p
            .stored_manifest
            .iter()
            .flat_map(|m| m.consumers.iter().map(|c| c.name.as_str()))
            .collect();
        let mut result = Ok(());
        p.tombstones.retain(|name| {
            let removed = if listed.contains(name.as_str()) {
                state::tombstone_file(&self.dir, name).remove()
            } else {
                self.remove_deleted_files(name)
            };
            match removed {
                Ok(()) => false,
                Err(e) => {
                    result = Err(e);
                    true
                }
            }
        });
        result
    }
}

/// `stored` without consumer `name`.
fn manifest_without(stored: &Manifest, name: &str) -> Manifest {
    Manifest {
        consumers: stored
            .consumers
            .iter()
            .filter(|c| c.name != name)
            .cloned()
            .collect(),
        ..stored.clone()
    }
}

/// Room reserved by an admitted publish, returned when it is answered.
struct Reservation<'a> {
    shared: &'a Shared<Location>,
    size: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared.lock().unreserve(self.size);
    }
}

/// The background thread writing consumer state every interval.
struct Syncer {
    /// `Some(final_sync)` once asked to stop.
    stop: Arc<(Mutex<Option<bool>>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(inner: Weak<Inner>, interval: Duration) -> std::io::Result<Syncer> {
        let stop = Arc::new((Mutex::new(None), Condvar::new()));
        let ctl = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("spillway-bus-sync".into())
            .spawn(move || loop {
                let (lock, cond) = &*ctl;
                let mut stop = lock.lock();
                if stop.is_none() {
                    cond.wait_for(&mut stop, interval);
                }
                let request = *stop;
                drop(stop);
                let Some(inner) = inner.upgrade() else { return };
                match request {
                    Some(final_sync) => {
                        if final_sync {
                            let _ = inner.sync_state();
                        }
                        return;
                    }
                    None => {
                        let _ = inner.sync_state();
                    }
                }
            })?;
        Ok(Syncer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (after one last sync if `final_sync`) and joins it.
    fn stop(mut self, final_sync: bool) {
        let (lock, cond) = &*self.stop;
        *lock.lock() = Some(final_sync);
        cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[async_trait]
impl Bus for SegmentBus {
    async fn publish(&self, message: Message) -> Result<u64, PublishError> {
        self.inner.publish(message).await
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Arc<dyn Consumer>, BusError> {
        let name = config.name.clone();
        let (id, wake) = self.inner.bind(config)?;
        Ok(Arc::new(SegmentConsumer {
            inner: Arc::clone(&self.inner),
            id,
            name,
            wake,
        }))
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool, BusError> {
        self.inner.delete_consumer(name)
    }

    async fn wait_for_space(&self, timeout: Duration) {
        self.inner.shared.wait_for_space(timeout).await
    }

    fn limits(&self) -> Limits {
        self.inner.shared.limits
    }

    fn stats(&self) -> BusStats {
        let mut st = self.inner.shared.lock();
        st.maintain(Instant::now());
        st.stats()
    }

    /// Refuses new publishes, wakes fetches, waits for queued appends to be
    /// written and synced, and writes every consumer's state. Acks after
    /// `close` still count and are written when the bus is dropped.
    async fn close(&self) {
        self.inner.shared.lock().close();
        if let Err(e) = self.inner.log.close().await {
            warn!(error = %e, "segment log did not close cleanly");
        }
        if let Err(e) = self.inner.sync_state() {
            warn!(error = %e, "final consumer-state sync failed");
        }
    }
}

/// A handle on one durable consumer of a [`SegmentBus`]; handles bound to
/// the same name share its state.
struct SegmentConsumer {
    inner: Arc<Inner>,
    id: ConsumerId,
    name: String,
    wake: Arc<Notify>,
}

#[async_trait]
impl Consumer for SegmentConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Received>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let id = self.id;
        let deadline = crate::stream::later(Instant::now(), max_wait);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let batch = self
                .inner
                .shared
                .fetch(id, &self.wake, wait, |st, now| {
                    st.take_batch(id, max, now, |seq, m, n| (seq, m.body, n))
                })
                .await
                .map_err(|_| BusError::ConsumerDeleted {
                    name: self.name.clone(),
                })?;
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            // Read outside the lock, with no `.await` before returning: the
            // batch is already marked delivered.
            // Consecutive messages lie back to back in the log: one read
            // per run instead of one per message.
            let locations: Vec<(u64, Location)> =
                batch.iter().map(|&(seq, loc, _)| (seq, loc)).collect();
            let records = self.inner.log.read_many(&locations);
            let mut out = Vec::with_capacity(batch.len());
            let mut unreadable = Vec::new();
            for ((seq, _, delivery_count), record) in batch.into_iter().zip(records) {
                match record {
                    // `read_many` checked that the record is `seq`.
                    Ok(r) => out.push(r.into_received(delivery_count)),
                    Err(e) => unreadable.push((seq, e)),
                }
            }
            if !unreadable.is_empty() {
                let now = Instant::now();
                let mut st = self.inner.shared.lock();
                for (seq, e) in unreadable {
                    match e {
                        LogError::Corrupt { .. } | LogError::NotFound { .. } => {
                            warn!(consumer = %self.name, seq, error = %e, "message unreadable from the log (corrupted since it was written); discarded");
                            st.discard(seq, now, "unreadable");
                        }
                        // Possibly transient (EIO, EMFILE): try again soon.
                        _ => {
                            warn!(consumer = %self.name, seq, error = %e, "cannot read message from the log; retrying in {READ_RETRY:?}");
                            st.undeliver(id, seq, READ_RETRY, now);
                        }
                    }
                }
            }
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }

    async fn ack(&self, seq: u64) -> Result<(), BusError> {
        self.inner.shared.settle(self.id, seq);
        Ok(())
    }

    async fn nak(&self, seq: u64, delay: Duration) -> Result<(), BusError> {
        self.inner.shared.nak(self.id, seq, delay);
        Ok(())
    }

    async fn in_progress(&self, seq: u64) -> Result<(), BusError> {
        self.inner.shared.in_progress(self.id, seq);
        Ok(())
    }

    async fn term(&self, seq: u64) -> Result<(), BusError> {
        self.inner.shared.settle(self.id, seq);
        Ok(())
    }

    fn stats(&self) -> ConsumerStats {
        self.inner.shared.consumer_stats(self.id)
    }
}
