//! Recovery: what [`SegmentLog::open`](super::SegmentLog::open) does before
//! accepting writes.
//!
//! Segments are scanned in order and every record's CRC is verified. The
//! scan streams through each file with a bounded window (1 MiB, or one
//! record if larger), handing each valid record's metadata to a visitor, so
//! memory does not grow with the log.
//!
//! # Rules
//!
//! - A record is valid when its frame decodes (marker, length, CRC, body)
//!   and its seq is above every seq before it, at least the segment's base
//!   and below the next segment's base.
//! - An invalid stretch followed by a valid record (flipped bytes in the
//!   middle) is skipped: the scan resynchronises on the next record marker
//!   whose record is valid. One `warn!` line and one count per region.
//! - An invalid stretch that runs to the end of the **last** segment (a torn
//!   write, or the zero-filled end a crash leaves behind) is truncated away,
//!   so new records follow the last valid one. In an older segment it is
//!   only skipped and counted (sealed segments are not rewritten), unless it
//!   is all zeros (a preallocated end whose cut a crash interrupted): that
//!   holds no records and is truncated. Zero tails are logged at `info`,
//!   anything else at `warn`.
//! - A last segment too short for its header is rewritten empty. (Earlier
//!   versions could leave one when a crash interrupted a roll; segments are
//!   now created under a temporary name and renamed once their header is
//!   durable.) Any other unreadable segment header is reported with
//!   `warn!` and counted, and the segment's records are scanned anyway (they
//!   carry their own CRCs); the last segment's header is repaired. A header
//!   of another format version is an error ([`LogError::UnsupportedVersion`]):
//!   scanning it with this format could only mislead.
//! - A `.seg` file whose name is not 20 digits is left alone, listed in
//!   [`RecoveryReport::ignored_files`] and warned about. I/O errors (an
//!   unreadable file) fail the open with the path in the error.
//!
//! Nothing here panics on file contents.

use super::error::LogError;
use super::record::{self, RecordError, RecordRef, RECORD_HEADER_LEN, RECORD_MAGIC};
use super::segment::{
    check_header, encode_header, parse_segment_name, HeaderError, Location, Segment,
    SEGMENT_HEADER_LEN,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{info, warn};

/// Bytes read from a segment at a time.
const CHUNK: usize = 1 << 20;

/// One valid record found by recovery, as the bus needs it to rebuild its
/// index. Borrowed: copy out what you keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta<'a> {
    pub seq: u64,
    pub location: Location,
    /// Bytes counted against limits ([`Message::size`](crate::Message::size)).
    pub size: u64,
    pub published_at: SystemTime,
    pub subject: &'a str,
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files opened.
    pub segments: u64,
    /// Valid records (each was handed to the visitor).
    pub records: u64,
    /// Lowest and highest valid seq (`None` when the log is empty).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Corrupt regions skipped (each may have held one or more records).
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
    /// Bytes cut off the end of the last segment (torn or zero-filled tail).
    pub bytes_truncated: u64,
    /// Segment headers that were unreadable.
    pub bad_headers: u64,
    /// `.seg` files with names that are not a segment's; left untouched.
    pub ignored_files: Vec<PathBuf>,
    /// The seq the next append gets (see [`SegmentLog`](super::SegmentLog)
    /// for how it is chosen).
    pub next_seq: u64,
}

/// The recovered segments, oldest first; the last one is where writing
/// continues, its `len` being its valid end.
pub(crate) struct Recovered {
    pub report: RecoveryReport,
    pub segments: Vec<Arc<Segment>>,
}

/// Scans every segment in `dir` (see the module docs).
pub(crate) fn recover(
    dir: &Path,
    visit: &mut dyn FnMut(&RecordMeta<'_>),
) -> Result<Recovered, LogError> {
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(LogError::io("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io("read directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".seg") {
            continue;
        }
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(LogError::io("stat", &path))?
            .is_file();
        match parse_segment_name(&name) {
            Some(base) if is_file => found.push((base, path)),
            _ => {
                warn!(file = %path.display(), "not a segment file (expected a regular file named <20 digits>.seg); ignored");
                report.ignored_files.push(path);
            }
        }
    }
    found.sort();

    let mut segments = Vec::with_capacity(found.len());
    let mut last_seq: Option<u64> = None;
    let count = found.len();
    for i in 0..count {
        let (base, path) = found[i].clone();
        let upper = found.get(i + 1).map(|(b, _)| *b);
        let seg = Segment::open(path, base)?;
        scan_segment(&seg, upper, &mut last_seq, &mut report, visit)?;
        report.segments += 1;
        segments.push(Arc::new(seg));
    }
    report.last_seq = last_seq;
    Ok(Recovered { report, segments })
}

/// Why a stretch of bytes is not a valid record.
#[derive(Debug)]
enum Invalid {
    Record(RecordError),
    /// Seq below the previous record's or the segment's base.
    SeqTooLow {
        seq: u64,
        min: u64,
    },
    /// Seq at or above the next segment's base.
    SeqTooHigh {
        seq: u64,
        limit: u64,
    },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Record(e) => e.fmt(f),
            Invalid::SeqTooLow { seq, min } => {
                write!(f, "seq {seq} out of order (expected ≥ {min})")
            }
            Invalid::SeqTooHigh { seq, limit } => {
                write!(
                    f,
                    "seq {seq} belongs to a later segment (< {limit} expected)"
                )
            }
        }
    }
}

/// A bounded, re-positionable read window over one file.
struct Window<'f> {
    file: &'f File,
    path: &'f Path,
    file_len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// The bytes from `pos` to the end of the window, which holds at least
    /// `min(n, file_len - pos)` of them.
    fn get(&mut self, pos: u64, n: usize) -> Result<&[u8], LogError> {
        let end = pos.saturating_add(n as u64).min(self.file_len);
        let win_end = self.start + self.buf.len() as u64;
        if pos < self.start || end > win_end {
            let want = (n.max(CHUNK) as u64).min(self.file_len.saturating_sub(pos)) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, pos)
                .map_err(LogError::io("read segment", self.path))?;
            self.start = pos;
        }
        let from = ((pos - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[from..])
    }
}

/// The record at `pos`, if valid and its seq is in `min..limit`.
fn record_at<'w>(
    win: &'w mut Window<'_>,
    pos: u64,
    min: u64,
    limit: u64,
) -> Result<Result<(RecordRef<'w>, usize), Invalid>, LogError> {
    let file_len = win.file_len;
    let head = win.get(pos, RECORD_HEADER_LEN)?;
    let len = match record::frame_len(head) {
        Ok(len) => len,
        Err(e) => return Ok(Err(Invalid::Record(e))),
    };
    if pos + len as u64 > file_len {
        return Ok(Err(Invalid::Record(RecordError::Truncated {
            needed: len,
            available: (file_len - pos) as usize,
        })));
    }
    let bytes = win.get(pos, len)?;
    let (rec, used) = match record::decode(bytes) {
        Ok(ok) => ok,
        Err(e) => return Ok(Err(Invalid::Record(e))),
    };
    if rec.seq < min {
        return Ok(Err(Invalid::SeqTooLow { seq: rec.seq, min }));
    }
    if rec.seq >= limit {
        return Ok(Err(Invalid::SeqTooHigh {
            seq: rec.seq,
            limit,
        }));
    }
    Ok(Ok((rec, used)))
}

/// Whether every byte from `from` to the end of the file is zero.
fn all_zero(win: &mut Window<'_>, from: u64) -> Result<bool, LogError> {
    let mut p = from;
    while p < win.file_len {
        let chunk = win.get(p, CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        if chunk.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        p += chunk.len() as u64;
    }
    Ok(true)
}

/// The first offset at or after `from` holding a valid record.
fn resync(win: &mut Window<'_>, from: u64, min: u64, limit: u64) -> Result<Option<u64>, LogError> {
    let mut p = from;
    while p + RECORD_HEADER_LEN as u64 <= win.file_len {
        let chunk = win.get(p, CHUNK)?;
        match chunk
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)
        {
            None => p += chunk.len().saturating_sub(RECORD_MAGIC.len() - 1).max(1) as u64,
            Some(i) => {
                let q = p + i as u64;
                if record_at(win, q, min, limit)?.is_ok() {
                    return Ok(Some(q));
                }
                p = q + 1;
            }
        }
    }
    Ok(None)
}

fn scan_segment(
    seg: &Segment,
    upper: Option<u64>,
    last_seq: &mut Option<u64>,
    report: &mut RecoveryReport,
    visit: &mut dyn FnMut(&RecordMeta<'_>),
) -> Result<(), LogError> {
    let is_last = upper.is_none();
    let path = &seg.path;
    let file_len = seg.len.load(Ordering::Acquire);
    if file_len < SEGMENT_HEADER_LEN {
        if is_last {
            if file_len > 0 {
                warn!(segment = %path.display(), bytes = file_len, "segment header torn by a crash; segment rewritten empty");
                report.bytes_truncated += file_len;
            }
            seg.rewrite_header()?;
        } else {
            warn!(segment = %path.display(), bytes = file_len, "segment shorter than its header; it holds no records");
            report.bad_headers += 1;
        }
        return Ok(());
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    seg.file
        .read_exact_at(&mut header, 0)
        .map_err(LogError::io("read segment header", path))?;
    match check_header(&header, seg.base) {
        Ok(()) => {}
        Err(HeaderError::Version(version)) => {
            return Err(LogError::UnsupportedVersion {
                path: path.clone(),
                version,
            })
        }
        Err(e) => {
            report.bad_headers += 1;
            warn!(segment = %path.display(), problem = %e, repaired = is_last, "segment header unreadable; scanning its records anyway");
            if is_last {
                seg.file
                    .write_all_at(&encode_header(seg.base), 0)
                    .and_then(|()| seg.file.sync_data())
                    .map_err(LogError::io("repair segment header", path))?;
            }
        }
    }

    let mut win = Window {
        file: &seg.file,
        path,
        file_len,
        start: 0,
        buf: Vec::new(),
    };
    let limit = upper.unwrap_or(u64::MAX);
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < file_len {
        let min = match *last_seq {
            Some(s) => s.saturating_add(1).max(seg.base),
            None => seg.base,
        };
        let why = match record_at(&mut win, pos, min, limit)? {
            Ok((rec, len)) => {
                visit(&RecordMeta {
                    seq: rec.seq,
                    location: Location {
                        segment: seg.base,
                        offset: pos,
                        len: len as u32,
                    },
                    size: rec.message_size(),
                    published_at: rec.published_at,
                    subject: rec.subject,
                });
                report.records += 1;
                report.first_seq.get_or_insert(rec.seq);
                *last_seq = Some(rec.seq);
                pos += len as u64;
                continue;
            }
            Err(why) => why,
        };
        match resync(&mut win, pos + 1, min, limit)? {
            Some(next) => {
                warn!(segment = %path.display(), offset = pos, bytes = next - pos, problem = %why, "corrupt region skipped");
                report.corrupt_regions += 1;
                report.corrupt_bytes += next - pos;
                pos = next;
            }
            None if is_last || all_zero(&mut win, pos)? => {
                let bytes = file_len - pos;
                if all_zero(&mut win, pos)? {
                    // A preallocated segment's unused end, or the zeros a
                    // crash leaves after an extending write: no records.
                    info!(segment = %path.display(), offset = pos, bytes, "zero-filled tail truncated");
                } else {
                    warn!(segment = %path.display(), offset = pos, bytes, problem = %why, "torn tail truncated");
                }
                seg.file
                    .set_len(pos)
                    .and_then(|()| seg.file.sync_data())
                    .map_err(LogError::io("truncate the tail of", path))?;
                seg.len.store(pos, Ordering::Release);
                report.bytes_truncated += bytes;
                break;
            }
            None => {
                warn!(segment = %path.display(), offset = pos, bytes = file_len - pos, problem = %why, "corrupt end of a sealed segment skipped");
                report.corrupt_regions += 1;
                report.corrupt_bytes += file_len - pos;
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::segment::segment_file_name;
    use super::super::test_util::{crash, msg, open, plain, segment_files, seqs, Meta};
    use super::super::writer::{Appended, SyncPolicy};
    use super::super::{LogConfig, SegmentLog};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::fs::{self, OpenOptions};

    /// Writes `msg(i)` for `i` in `range`, then crashes (no close).
    async fn write_and_crash(
        dir: &Path,
        config: LogConfig,
        range: std::ops::Range<u64>,
    ) -> Vec<Appended> {
        let (log, _, _) = open(dir, config);
        let mut out = Vec::new();
        for i in range {
            out.push(log.append(msg(i)).await.unwrap());
        }
        crash(log);
        out
    }

    fn path_of(dir: &Path, a: &Appended) -> PathBuf {
        dir.join(segment_file_name(a.location.segment))
    }

    fn patch(path: &Path, offset: u64, f: impl FnOnce(&mut [u8])) {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes[offset as usize..]);
        fs::write(path, bytes).unwrap();
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn truncated_tail_is_cut_and_writing_continues_there() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), plain(), 0..3).await;
        let seg = path_of(dir.path(), &a[2]);
        let end = file_len(&seg);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(end - 10)
            .unwrap();
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2]);
        assert_eq!(report.bytes_truncated, a[2].location.len as u64 - 10);
        assert_eq!((report.corrupt_regions, report.next_seq), (0, 3));
        assert_eq!(file_len(&seg), a[2].location.offset);
        let b = log.append(msg(9)).await.unwrap();
        assert_eq!((b.seq, b.location.offset), (3, a[2].location.offset));
        log.close().await.unwrap();
        drop(log);
        let (_log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2, 3]);
        assert_eq!(metas[2].subject, "s.9");
        assert_eq!((report.bytes_truncated, report.corrupt_regions), (0, 0));
    }

    #[tokio::test]
    async fn zero_filled_end_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), plain(), 0..3).await;
        let seg = path_of(dir.path(), &a[2]);
        let end = file_len(&seg);
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .set_len(end + 4096)
            .unwrap();
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2, 3]);
        assert_eq!((report.bytes_truncated, report.corrupt_regions), (4096, 0));
        assert_eq!(file_len(&seg), end);
        let b = log.append(msg(3)).await.unwrap();
        assert_eq!((b.seq, b.location.offset), (4, end));
        assert_eq!(log.read(4, b.location).unwrap().into_message(), msg(3));
    }

    #[tokio::test]
    async fn flipped_bytes_in_a_middle_record_are_skipped_and_counted() {
        // Damage the marker, the length, the CRC, the seq, the last byte.
        for at in [0u64, 5, 9, 12, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            let a = write_and_crash(dir.path(), plain(), 0..5).await;
            let victim = a[2].location;
            let at = at.min(victim.len as u64 - 1);
            let seg = path_of(dir.path(), &a[2]);
            let len_before = file_len(&seg);
            patch(&seg, victim.offset + at, |b| b[0] ^= 0x5A);
            let (log, report, metas) = open(dir.path(), plain());
            assert_eq!(seqs(&metas), vec![1, 2, 4, 5], "damage at +{at}");
            assert_eq!(
                (
                    report.corrupt_regions,
                    report.corrupt_bytes,
                    report.bytes_truncated
                ),
                (1, victim.len as u64, 0),
                "damage at +{at}"
            );
            assert_eq!(report.next_seq, 6);
            assert_eq!(file_len(&seg), len_before, "the middle is not cut");
            // The records after the damage read back from their locations.
            for m in &metas[2..] {
                let rec = log.read(m.seq, m.location).unwrap();
                assert_eq!(rec.into_message(), msg(m.seq - 1));
            }
            assert!(matches!(
                log.read(3, victim),
                Err(LogError::Corrupt { seq: 3, .. })
            ));
            assert_eq!(log.append(msg(5)).await.unwrap().seq, 6);
        }
    }

    #[tokio::test]
    async fn a_stale_copy_of_an_old_record_is_not_taken_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), plain(), 0..3).await;
        let seg = path_of(dir.path(), &a[0]);
        let bytes = fs::read(&seg).unwrap();
        let l = a[0].location;
        let first = bytes[l.offset as usize..(l.offset + l.len as u64) as usize].to_vec();
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&first, bytes.len() as u64)
            .unwrap();
        let (_log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2, 3]);
        assert_eq!(report.bytes_truncated, l.len as u64);
        assert_eq!(report.next_seq, 4);
    }

    fn small_segments() -> LogConfig {
        LogConfig {
            segment_bytes: 700,
            ..plain()
        }
    }

    #[tokio::test]
    async fn a_corrupt_end_of_a_sealed_segment_is_skipped_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), small_segments(), 200..209).await;
        let first_seg = a[0].location.segment;
        let last_of_first = a
            .iter()
            .rfind(|x| x.location.segment == first_seg)
            .copied()
            .unwrap();
        let seg = path_of(dir.path(), &last_of_first);
        let len = file_len(&seg);
        patch(&seg, len - 20, |b| b[..20].fill(0));
        let (_log, report, metas) = open(dir.path(), small_segments());
        let expected: Vec<u64> = (1..=9).filter(|s| *s != last_of_first.seq).collect();
        assert_eq!(seqs(&metas), expected);
        assert_eq!(
            (
                report.corrupt_regions,
                report.corrupt_bytes,
                report.bytes_truncated
            ),
            (1, last_of_first.location.len as u64, 0)
        );
        assert_eq!(file_len(&seg), len);
        assert_eq!(report.next_seq, 10);
    }

    #[tokio::test]
    async fn a_zero_tail_of_a_sealed_segment_is_cut() {
        // A crash between sealing a preallocated segment and cutting its
        // unused zeros.
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), small_segments(), 200..209).await;
        let seg = path_of(dir.path(), &a[0]);
        let len = file_len(&seg);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len + 1000)
            .unwrap();
        let (_log, report, metas) = open(dir.path(), small_segments());
        assert_eq!(seqs(&metas), (1..=9).collect::<Vec<_>>());
        assert_eq!((report.bytes_truncated, report.corrupt_regions), (1000, 0));
        assert_eq!(file_len(&seg), len);
    }

    #[tokio::test]
    async fn bad_segment_names_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        write_and_crash(dir.path(), plain(), 0..2).await;
        fs::write(dir.path().join("abc.seg"), b"x").unwrap();
        fs::write(dir.path().join("1.seg"), b"y").unwrap();
        fs::create_dir(dir.path().join(segment_file_name(50))).unwrap();
        fs::write(dir.path().join("notes.txt"), b"z").unwrap();
        let (_log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2]);
        let mut ignored: Vec<_> = report
            .ignored_files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        ignored.sort();
        assert_eq!(
            ignored,
            vec!["00000000000000000050.seg", "1.seg", "abc.seg"]
        );
        assert!(dir.path().join("abc.seg").exists());
        assert_eq!(report.next_seq, 3);
    }

    #[tokio::test]
    async fn unreadable_segment_headers() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_and_crash(dir.path(), small_segments(), 200..209).await;
        let first = path_of(dir.path(), &a[0]);
        let last = path_of(dir.path(), &a[8]);
        patch(&first, 17, |b| b[0] ^= 1);
        patch(&last, 2, |b| b[0] ^= 1);
        let (log, report, metas) = open(dir.path(), small_segments());
        assert_eq!(seqs(&metas), (1..=9).collect::<Vec<_>>());
        assert_eq!((report.bad_headers, report.corrupt_regions), (2, 0));
        crash(log);
        // The last segment's header was repaired; a sealed one is left as is.
        let (_log, report, _) = open(dir.path(), small_segments());
        assert_eq!(report.bad_headers, 1);

        // A header of another version stops the open with a clear error.
        let dir = tempfile::tempdir().unwrap();
        write_and_crash(dir.path(), plain(), 0..1).await;
        let seg = &segment_files(dir.path())[0];
        patch(seg, 0, |h| {
            h[8] = 9;
            let crc = crc32c::crc32c(&h[..28]);
            h[28..32].copy_from_slice(&crc.to_le_bytes());
        });
        match SegmentLog::open(dir.path(), plain(), |_| {}) {
            Err(LogError::UnsupportedVersion { path, version: 9 }) => assert_eq!(&path, seg),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_torn_new_segment_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        write_and_crash(dir.path(), plain(), 0..3).await;
        // A crash right after creating segment 50, before its header landed.
        let torn = dir.path().join(segment_file_name(50));
        fs::write(&torn, [0x53u8; 10]).unwrap();
        let (log, report, metas) = open(dir.path(), plain());
        assert_eq!(seqs(&metas), vec![1, 2, 3]);
        assert_eq!((report.bytes_truncated, report.next_seq), (10, 50));
        assert_eq!(file_len(&torn), SEGMENT_HEADER_LEN);
        let b = log.append(msg(1)).await.unwrap();
        assert_eq!((b.seq, b.location.segment), (50, 50));
    }

    #[test]
    fn an_empty_directory_gets_its_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let (_log, report, metas) = open(&data, plain());
        assert!(metas.is_empty());
        assert_eq!((report.segments, report.next_seq), (0, 1));
        assert!(data.join(segment_file_name(1)).exists());
    }

    /// A pristine log written once: segment files and what each seq holds.
    struct Pristine {
        files: Vec<(String, Vec<u8>)>,
        records: BTreeMap<u64, Appended>,
    }

    fn pristine() -> &'static Pristine {
        static P: std::sync::OnceLock<Pristine> = std::sync::OnceLock::new();
        P.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let config = LogConfig {
                segment_bytes: 2048,
                sync: SyncPolicy::Never,
                ..plain()
            };
            let records = rt.block_on(async {
                let (log, _, _) = open(dir.path(), config);
                let mut records = BTreeMap::new();
                for i in 0..40u64 {
                    let a = log.append(msg(i * 37)).await.unwrap();
                    records.insert(a.seq, a);
                }
                log.close().await.unwrap();
                records
            });
            let files = segment_files(dir.path())
                .into_iter()
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, fs::read(&p).unwrap())
                })
                .collect();
            Pristine { files, records }
        })
    }

    #[derive(Debug, Clone)]
    enum Damage {
        Flip { at: usize, mask: u8 },
        Zero { at: usize, len: usize },
        Truncate { at: usize },
        AppendGarbage { bytes: Vec<u8> },
    }

    fn damage() -> impl Strategy<Value = (usize, Damage)> {
        let kind = prop_oneof![
            4 => (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
            2 => (any::<usize>(), 1usize..200).prop_map(|(at, len)| Damage::Zero { at, len }),
            1 => any::<usize>().prop_map(|at| Damage::Truncate { at }),
            1 => proptest::collection::vec(any::<u8>(), 1..100)
                .prop_map(|bytes| Damage::AppendGarbage { bytes }),
        ];
        (any::<usize>(), kind)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Random damage never panics recovery, every record it yields is the
        /// very record written under that seq (so its CRC is right), seqs
        /// come out increasing, and every record whose bytes were left
        /// intact is found.
        #[test]
        fn random_corruption_never_panics_or_yields_a_bad_record(
            damages in proptest::collection::vec(damage(), 1..6)
        ) {
            let p = pristine();
            let dir = tempfile::tempdir().unwrap();
            // Per file: its bytes, which original bytes are damaged, and how
            // much of the original survives truncation.
            let mut files: Vec<(String, Vec<u8>, Vec<bool>, usize)> = p
                .files
                .iter()
                .map(|(n, b)| (n.clone(), b.clone(), vec![false; b.len()], b.len()))
                .collect();
            for (which, d) in &damages {
                let n = files.len();
                let (_, bytes, damaged, kept) = &mut files[which % n];
                match d {
                    Damage::Flip { at, mask } if !bytes.is_empty() => {
                        let i = at % bytes.len();
                        bytes[i] ^= mask;
                        if let Some(d) = damaged.get_mut(i) { *d = true; }
                    }
                    Damage::Zero { at, len } if !bytes.is_empty() => {
                        let i = at % bytes.len();
                        let j = (i + len).min(bytes.len());
                        for (k, b) in bytes.iter_mut().enumerate().take(j).skip(i) {
                            if *b != 0 {
                                *b = 0;
                                if let Some(d) = damaged.get_mut(k) { *d = true; }
                            }
                        }
                    }
                    Damage::Truncate { at } => {
                        let i = at % (bytes.len() + 1);
                        bytes.truncate(i);
                        *kept = (*kept).min(i);
                    }
                    Damage::AppendGarbage { bytes: g } => bytes.extend_from_slice(g),
                    _ => {}
                }
            }
            for (name, bytes, _, _) in &files {
                fs::write(dir.path().join(name), bytes).unwrap();
            }

            let mut seen: Vec<Meta> = Vec::new();
            let recovered = recover(dir.path(), &mut |m| seen.push(Meta::from(m)));
            let recovered = match recovered {
                Ok(r) => r,
                // Only possible if damage forged a valid header of another
                // version; still not a panic.
                Err(LogError::UnsupportedVersion { .. }) => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
            };
            prop_assert_eq!(recovered.report.records, seen.len() as u64);
            prop_assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
            for m in &seen {
                let orig = p.records.get(&m.seq);
                prop_assert!(orig.is_some(), "invented seq {}", m.seq);
                let orig = orig.unwrap();
                prop_assert_eq!(m.location, orig.location);
                // Re-read the frame from the file as recovery left it.
                let path = dir.path().join(segment_file_name(m.location.segment));
                let bytes = fs::read(&path).unwrap();
                let start = m.location.offset as usize;
                let frame = &bytes[start..start + m.location.len as usize];
                let (rec, _) = record::decode(frame).unwrap();
                prop_assert_eq!(rec.seq, m.seq);
                let owned = record::Record::from_frame(&bytes::Bytes::copy_from_slice(frame)).unwrap();
                prop_assert_eq!(owned.into_message(), msg((m.seq - 1) * 37));
            }
            let found: std::collections::BTreeSet<u64> = seen.iter().map(|m| m.seq).collect();
            for (seq, a) in &p.records {
                let name = segment_file_name(a.location.segment);
                let Some((_, _, damaged, kept)) = files.iter().find(|f| f.0 == name) else {
                    continue;
                };
                let (start, end) = (a.location.offset as usize, (a.location.offset + a.location.len as u64) as usize);
                let intact = end <= *kept && !damaged[start..end].iter().any(|d| *d);
                if intact {
                    prop_assert!(found.contains(seq), "intact record {} lost", seq);
                }
            }
        }
    }
}
