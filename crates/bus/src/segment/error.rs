//! Errors of the segment log.

use super::record::RecordError;
use super::segment::Location;
use super::state_file::StateFileError;
use crate::Message;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a log operation failed. Cloneable: one failed batch answers every
/// request in it with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// A system call failed; `op` says which (`write`, `fdatasync`, …).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// [`SegmentLog::close`](super::SegmentLog::close) was called.
    #[error("segment log closed")]
    Closed,
    /// An earlier sync failed, so what the disk holds is unknown: the log
    /// refuses writes until it is reopened (recovery then decides from what
    /// is actually on disk). Reads keep working.
    #[error("segment log is read-only until reopened: {reason}")]
    Failed { reason: Arc<str> },
    /// Every sequence number has been handed out (the next would be
    /// `u64::MAX`, which is never used): the log refuses appends. Only a
    /// stray segment file named near `u64::MAX` or a huge
    /// [`LogConfig::min_next_seq`](super::LogConfig::min_next_seq) gets here.
    #[error("segment log has no sequence numbers left")]
    SeqsExhausted,
    /// The message cannot be stored in this format (too large, too many
    /// headers).
    #[error("message cannot be stored: {0}")]
    Invalid(#[from] RecordError),
    /// The segment holding `seq` is gone (deleted by retention).
    #[error("seq {seq}: segment {segment} is not in the log (deleted?)")]
    NotFound { seq: u64, segment: u64 },
    /// The bytes at `location` are not the record `seq` (corrupted since it
    /// was written, or a wrong location).
    #[error("seq {seq} at {location:?} is unreadable: {source}")]
    Corrupt {
        seq: u64,
        location: Location,
        #[source]
        source: RecordError,
    },
    /// A segment written by a newer format version.
    #[error("{}: segment format version {version} is not supported", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// The sequence high-water mark file could not be written.
    #[error(transparent)]
    State(#[from] StateFileError),
}

impl LogError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> LogError + 'a {
        move |e| LogError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}

/// A failed [`SegmentLog::append`](super::SegmentLog::append): the error and
/// the message, handed back unstored (boxed: keeps `Result` small on the
/// success path).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AppendError {
    #[source]
    pub error: LogError,
    pub message: Box<Message>,
}

impl From<AppendError> for LogError {
    fn from(e: AppendError) -> LogError {
        e.error
    }
}
