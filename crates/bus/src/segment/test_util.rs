//! Helpers shared by the segment log's tests.

use super::{LogConfig, RecordMeta, RecoveryReport, SegmentLog};
use crate::Message;
use bytes::Bytes;
use std::path::Path;
use std::time::SystemTime;

/// Metadata of a recovered record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub seq: u64,
    pub location: super::Location,
    pub size: u64,
    pub published_at: SystemTime,
    pub subject: String,
}

impl From<&RecordMeta<'_>> for Meta {
    fn from(m: &RecordMeta<'_>) -> Meta {
        Meta {
            seq: m.seq,
            location: m.location,
            size: m.size,
            published_at: m.published_at,
            subject: m.subject.to_owned(),
        }
    }
}

/// Message `i`: subject `s.<i>`, one header, a payload of `i % 300` bytes.
pub fn msg(i: u64) -> Message {
    Message {
        subject: format!("s.{i}"),
        headers: vec![("ce-id".into(), i.to_string())],
        payload: Bytes::from(vec![(i % 251) as u8; (i % 300) as usize]),
    }
}

/// Default settings without preallocation (64 MiB of zeros per test log
/// would be slow, and rolls would depend on timing).
pub fn plain() -> LogConfig {
    LogConfig {
        preallocate: false,
        ..LogConfig::default()
    }
}

/// Opens the log in `dir`, collecting what recovery visits.
pub fn open(dir: &Path, config: LogConfig) -> (SegmentLog, RecoveryReport, Vec<Meta>) {
    let mut seen = Vec::new();
    let (log, report) = SegmentLog::open(dir, config, |m| seen.push(Meta::from(m))).unwrap();
    (log, report, seen)
}

pub fn seqs(metas: &[Meta]) -> Vec<u64> {
    metas.iter().map(|m| m.seq).collect()
}

/// Simulates `kill -9`: the handle vanishes without close (the writer
/// thread is left parked; nothing more is written).
pub fn crash(log: SegmentLog) {
    std::mem::forget(log);
}

/// Paths of the segment files in `dir`, in order.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
