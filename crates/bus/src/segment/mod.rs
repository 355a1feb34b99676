//! The durable storage engine of the embedded bus: an append-only log of
//! CRC-checked records in segment files, written by group commit.
//!
//! This is the layer under the segment-log [`Bus`](crate::Bus) backend: it
//! stores and reads messages by sequence number and location; consumers, ack
//! state, limits and retention decisions live above it.
//!
//! - [`record`]: the framing of one record (marker, length, CRC32C, seq,
//!   publish time, subject, headers, payload).
//! - [`segment`](mod@segment): segment files named by their first seq,
//!   positional reads, deletion of whole old segments.
//! - [`writer`]: group commit, [`SyncPolicy`].
//! - [`prealloc`]: zero-filled spare segments, which halve the cost of each
//!   `fdatasync`.
//! - [`recovery`]: the scan on open, torn-tail truncation, skipping of
//!   corrupt regions.
//! - [`state_file`]: small atomically replaced, checksummed files (consumer
//!   state, stream metadata).
//!
//! # What it guarantees
//!
//! - **Accepted = durable** (design guarantee 1): with the default
//!   [`SyncPolicy::Always`], [`SegmentLog::append`] returns only after the
//!   `fdatasync` that covers the record. Many concurrent appends share one
//!   write and one sync ([`LogStats::syncs`] counts them).
//! - **Ordered, gap-free within a run**: seqs are consecutive in append
//!   order; the commit hook ([`LogConfig::on_commit`]) sees batches in seq
//!   order before any of their appends returns, so an index built from it
//!   never has a hole a consumer could skip.
//! - **Corruption never panics and never yields a bad record** (guarantee
//!   5): every read and every recovered record passes its CRC; torn tails
//!   are truncated, corrupt regions skipped, counted and logged.
//! - **A seq is never reused** for a different message once anyone could
//!   have seen it:
//!   - `Always`: an acked record was synced, together with everything before
//!     it, and a new segment's directory entry is synced before its first
//!     record is written, so recovery finds every acked record; what it
//!     truncates (a torn tail) was never acked. Seqs of a batch that failed
//!     were never acked either, so handing them out again is safe.
//!   - `Interval` / `Never`: acked records can vanish with an OS crash, so
//!     the writer durably reserves seqs ahead in `seq.hwm` (one small
//!     state-file write per million records) before using them, and recovery
//!     starts at or above the reservation. After such a crash seqs jump by
//!     up to a million; a clean `close` records the exact next seq, so a
//!     clean restart continues without a gap.
//!   - In every policy the log also starts at or above the last segment's
//!     base and at or above [`LogConfig::min_next_seq`], which the bus
//!     should set past every seq its consumer state mentions: that covers
//!     bit rot in a synced tail, the only remaining way to lose an acked
//!     record.
//! - **Bounded memory** (guarantee 4): the queue is bounded in bytes
//!   ([`LogConfig::queue_bytes`]), a batch in bytes and records, recovery
//!   streams with a bounded window, reads allocate one record.
//!
//! # What it does not guarantee
//!
//! - One process per data directory: nothing locks it; two writers would
//!   corrupt each other.
//! - Durability on a disk that lies about flushes.
//! - Seqs without gaps across crashes: corrupt regions and the `Interval`
//!   reservation leave holes; count messages, not seq differences.
//! - Records of a failed batch that reached the disk anyway are found by the
//!   next recovery although their publisher got an error (at-least-once).

pub mod error;
mod log;
pub mod prealloc;
pub mod record;
pub mod recovery;
#[allow(clippy::module_inception)]
pub mod segment;
pub mod state_file;
pub mod writer;

pub use error::{AppendError, LogError};
pub use log::{LogConfig, LogStats, SegmentLog, HWM_FILE};
pub use record::{Record, RecordError};
pub use recovery::{RecordMeta, RecoveryReport};
pub use segment::{DeleteReport, Location};
pub use state_file::{StateFile, StateFileError};
pub use writer::{Appended, CommitHook, Committed, SyncPolicy};

#[cfg(test)]
pub(crate) mod test_util;
