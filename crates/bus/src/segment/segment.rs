//! Segment files: the append-only files the log is made of.
//!
//! A segment is named after the first sequence number it may hold, zero
//! padded to 20 digits (`00000000000000000001.seg`), so names sort in log
//! order and every record in a segment has a seq below the next segment's
//! name. It starts with a 32-byte header followed by records
//! ([`record`](mod@super::record)):
//!
//! ```text
//! magic "SPWLSEG\0" | version u32 (1) | flags u32 (0) | base_seq u64 | reserved u32 | crc32c u32 of bytes 0..28
//! ```
//!
//! # What it guarantees
//!
//! - Positional reads ([`SegmentLog::read`](super::SegmentLog::read)) use
//!   `pread` on a shared handle and never block the writer or each other:
//!   the segment table's lock is held only to clone a file handle.
//! - [`SegmentLog::delete_before`](super::SegmentLog::delete_before) removes
//!   only whole segments whose every record is below the floor, oldest
//!   first, never the last (active) one. A reader that already holds a
//!   deleted segment's handle still finishes its read (the file lives until
//!   the handle is closed).
//! - A new segment's header and directory entry are synced before any
//!   record is written to it, so an acked record is never in a file whose
//!   name a crash could lose.
//! - A segment's name appears only once its header is durable: the header
//!   is written under `<base>.seg.tmp` (ignored by recovery, deleted on
//!   open) and renamed into place. So a failed roll leaves no file named
//!   `<base>.seg` unless the rename happened, in which case the writer
//!   adopts the new segment (`CreateError`). The invariant the writer
//!   keeps: **never append seqs ≥ N to an older segment while a file named
//!   N exists** (recovery bounds each segment's seqs by the next name, and
//!   would cut such records off and reuse their seqs).

use super::error::LogError;
use super::record::{self, Record, RECORD_HEADER_LEN};
use super::state_file::sync_dir;
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// The segment format version this build reads and writes.
pub const SEGMENT_VERSION: u32 = 1;
const SEGMENT_MAGIC: [u8; 8] = *b"SPWLSEG\0";
/// Largest read [`Segments::read_many`] makes at once: a fetch's records
/// come back in a few large reads, and its buffer stays small.
pub const MAX_RUN_BYTES: u64 = 1 << 20;

/// Where a record lives: enough to read it back without any index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The segment's base sequence (its file name).
    pub segment: u64,
    /// Byte offset of the record's frame in the segment file.
    pub offset: u64,
    /// Length of the frame on disk (header included).
    pub len: u32,
}

/// The length of the frame at `loc` if it is a possible record length.
fn frame_len(seq: u64, loc: Location) -> Result<usize, LogError> {
    let len = loc.len as usize;
    if (RECORD_HEADER_LEN + record::MIN_BODY_LEN..=RECORD_HEADER_LEN + record::MAX_BODY_LEN)
        .contains(&len)
    {
        Ok(len)
    } else {
        Err(LogError::Corrupt {
            seq,
            location: loc,
            source: record::RecordError::BadLength { len },
        })
    }
}

/// Decodes `frame`, read from `loc`, checking it is record `seq`.
fn decode_at(seq: u64, loc: Location, frame: &Bytes) -> Result<Record, LogError> {
    let corrupt = |source| LogError::Corrupt {
        seq,
        location: loc,
        source,
    };
    let rec = Record::from_frame(frame).map_err(corrupt)?;
    if rec.seq != seq {
        return Err(corrupt(record::RecordError::Malformed(
            "the record at this location has another seq",
        )));
    }
    Ok(rec)
}

/// `00000000000000000042.seg` for base 42.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.{SEGMENT_EXT}")
}

/// The base sequence of a segment file name, if it is one (exactly 20 digits
/// and `.seg`).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_header(base: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Short,
    BadMagic,
    BadCrc,
    /// A valid header of another format version.
    Version(u32),
    /// A valid header naming another base than the file name.
    BaseMismatch(u64),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => f.write_str("file shorter than the segment header"),
            HeaderError::BadMagic => f.write_str("bad segment marker"),
            HeaderError::BadCrc => f.write_str("segment header checksum mismatch"),
            HeaderError::Version(v) => write!(f, "unsupported segment version {v}"),
            HeaderError::BaseMismatch(b) => write!(f, "header names base seq {b}"),
        }
    }
}

pub(crate) fn check_header(h: &[u8], base: u64) -> Result<(), HeaderError> {
    let Some(h) = h.get(..SEGMENT_HEADER_LEN as usize) else {
        return Err(HeaderError::Short);
    };
    if h[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if crc32c::crc32c(&h[..28]).to_le_bytes() != h[28..32] {
        return Err(HeaderError::BadCrc);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[16..24]);
    let found = u64::from_le_bytes(b);
    if found != base {
        return Err(HeaderError::BaseMismatch(found));
    }
    Ok(())
}

/// Suffix of a segment file whose header is being written: it becomes
/// `<base>.seg` by a rename once its header is durable. Recovery ignores
/// such files (they hold no records) and open deletes them.
const UNFINISHED_SUFFIX: &str = ".seg.tmp";

/// A step of [`Segment::create`] / [`Segment::install`], at which tests
/// inject failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateStep {
    /// Writing and syncing the header, under the temporary name.
    Header,
    /// The rename to `<base>.seg` fails without taking effect.
    Rename,
    /// The rename takes effect but reports an error anyway.
    RenameReported,
    /// The directory fsync after the rename (also the writer's retry).
    SyncDir,
}

/// Fault injection for [`CreateStep`]s: `Err` makes the step fail.
pub(crate) type Fault<'a> = &'a dyn Fn(CreateStep) -> std::io::Result<()>;

/// The [`Fault`] of production code: no step is made to fail.
pub(crate) fn no_fault(_: CreateStep) -> std::io::Result<()> {
    Ok(())
}

/// Why a new segment could not be made, by what it left on disk: the writer
/// must never append seqs ≥ `base` to an older segment while a file named
/// `<base>.seg` exists (recovery bounds the older segment's seqs by that
/// name and would cut those records off).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// No file named `<base>.seg` was created or replaced; the temporary
    /// file was deleted as far as possible.
    #[error(transparent)]
    NotCreated(LogError),
    /// `<base>.seg` is the new segment (the rename took effect), but its
    /// directory entry may not be durable yet: adopt `segment` and sync the
    /// directory before writing a record to it.
    #[error("{error}")]
    Unsynced { segment: Segment, error: LogError },
    /// The rename failed and whether it took effect is unknown (the new
    /// name cannot be examined): neither segment can be trusted.
    #[error("{error}; cannot tell whether the rename took effect (stat: {check})")]
    Uncertain {
        error: LogError,
        check: std::io::Error,
    },
}

impl From<CreateError> for LogError {
    fn from(e: CreateError) -> LogError {
        match e {
            CreateError::NotCreated(error)
            | CreateError::Unsynced { error, .. }
            | CreateError::Uncertain { error, .. } => error,
        }
    }
}

/// Makes `file`, open at `tmp` in `dir`, segment `base`: header, sync,
/// rename to `<base>.seg`, directory sync. See [`CreateError`].
fn place(
    dir: &Path,
    base: u64,
    file: File,
    tmp: &Path,
    fault: Fault<'_>,
) -> Result<Segment, CreateError> {
    let path = dir.join(segment_file_name(base));
    let not_created = |error: LogError| {
        // Not `<base>.seg`, so harmless if this fails: open deletes it.
        let _ = std::fs::remove_file(tmp);
        CreateError::NotCreated(error)
    };
    fault(CreateStep::Header)
        .and_then(|()| file.write_all_at(&encode_header(base), 0))
        .and_then(|()| file.sync_data())
        .map_err(|e| not_created(LogError::io("write segment header", tmp)(e)))?;
    let renamed = fault(CreateStep::Rename)
        .and_then(|()| std::fs::rename(tmp, &path))
        .and_then(|()| fault(CreateStep::RenameReported));
    let segment = |file| Segment {
        base,
        path: path.clone(),
        file,
        len: AtomicU64::new(SEGMENT_HEADER_LEN),
    };
    if let Err(e) = renamed {
        let error = LogError::io("rename into place", &path)(e);
        // A rename is atomic, but an error does not prove it did not happen
        // (e.g. on network file systems): ask the file system.
        return match is_same_file(&file, &path) {
            Ok(false) => Err(not_created(error)),
            Ok(true) => Err(CreateError::Unsynced {
                segment: segment(file),
                error,
            }),
            Err(e) => Err(CreateError::Uncertain { error, check: e }),
        };
    }
    let segment = segment(file);
    match fault(CreateStep::SyncDir).and_then(|()| sync_dir(dir)) {
        Ok(()) => Ok(segment),
        Err(e) => Err(CreateError::Unsynced {
            segment,
            error: LogError::io("fsync directory", dir)(e),
        }),
    }
}

/// Whether `path` names the open `file` (`false` if nothing is there).
fn is_same_file(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(there) => Ok(there.dev() == ours.dev() && there.ino() == ours.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the temporary files of segments whose creation a crash
/// interrupted (they hold only a header); returns how many.
pub(crate) fn remove_unfinished(dir: &Path) -> std::io::Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name
            .strip_suffix(UNFINISHED_SUFFIX)
            .is_some_and(|digits| parse_segment_name(&format!("{digits}.{SEGMENT_EXT}")).is_some())
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One open segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    /// Read+write handle: the writer uses `pwrite`, readers `pread`.
    pub file: File,
    /// Bytes of valid data (header + complete records) in the file; a
    /// preallocated file is longer (zeros).
    pub len: AtomicU64,
}

impl Segment {
    /// Opens an existing segment file for reading and writing.
    pub fn open(path: PathBuf, base: u64) -> Result<Segment, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(LogError::io("open segment", &path))?;
        let len = file
            .metadata()
            .map_err(LogError::io("stat segment", &path))?
            .len();
        Ok(Segment {
            base,
            path,
            file,
            len: AtomicU64::new(len),
        })
    }

    /// Creates segment `base` in `dir` and makes its header and directory
    /// entry durable. The header is written and synced under a temporary
    /// name (`<base>.seg.tmp`, which recovery ignores and open deletes) and
    /// only then renamed to `<base>.seg`, so a failure before the rename
    /// leaves no file of the segment's name behind (see [`CreateError`]).
    /// `fault` injects failures in tests; pass [`no_fault`] otherwise.
    pub fn create(dir: &Path, base: u64, fault: Fault<'_>) -> Result<Segment, CreateError> {
        let tmp = dir.join(format!("{base:020}{UNFINISHED_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| CreateError::NotCreated(LogError::io("create segment", &tmp)(e)))?;
        place(dir, base, file, &tmp, fault)
    }

    /// Turns a preallocated `spare` into segment `base` of `dir`: header,
    /// sync, rename, directory sync. Replaces an existing file of that name
    /// (an empty active segment being swapped for a preallocated one). A
    /// failure before the rename deletes the spare (best effort: open
    /// deletes leftover spares too).
    pub fn install(
        dir: &Path,
        base: u64,
        spare: super::prealloc::Spare,
        fault: Fault<'_>,
    ) -> Result<Segment, CreateError> {
        place(dir, base, spare.file, &spare.path, fault)
    }

    /// Empties the file down to a fresh header, durably.
    pub fn rewrite_header(&self) -> Result<(), LogError> {
        let path = &self.path;
        self.file
            .set_len(0)
            .map_err(LogError::io("truncate segment", path))?;
        self.file
            .write_all_at(&encode_header(self.base), 0)
            .map_err(LogError::io("write segment header", path))?;
        self.file
            .sync_data()
            .map_err(LogError::io("fdatasync", path))?;
        self.len.store(SEGMENT_HEADER_LEN, Ordering::Release);
        Ok(())
    }

    /// Reads the frame at `loc` and decodes it, checking it is `seq`.
    pub fn read(&self, seq: u64, loc: Location) -> Result<Record, LogError> {
        let corrupt = |source| LogError::Corrupt {
            seq,
            location: loc,
            source,
        };
        let len = frame_len(seq, loc)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(record::RecordError::Truncated {
                    needed: len,
                    available: 0,
                })
            } else {
                LogError::io("read", &self.path)(e)
            }
        })?;
        decode_at(seq, loc, &Bytes::from(buf))
    }

    /// Reads the records of `run`, which lie back to back in this segment
    /// (each one's frame starts where the previous one's ends), with one
    /// `pread`. Answers one result per record, in order; if the run cannot
    /// be read as a whole, each record is read on its own so that every
    /// error belongs to the record it is about.
    pub fn read_run(&self, run: &[(u64, Location)]) -> Vec<Result<Record, LogError>> {
        let (Some(&(_, first)), Some(&(_, last))) = (run.first(), run.last()) else {
            return Vec::new();
        };
        let start = first.offset;
        let end = last.offset + u64::from(last.len);
        let one_by_one = || run.iter().map(|&(seq, loc)| self.read(seq, loc)).collect();
        if run.len() == 1 || !run.iter().all(|&(seq, loc)| frame_len(seq, loc).is_ok()) {
            return one_by_one();
        }
        let mut buf = vec![0u8; (end - start) as usize];
        if self.file.read_exact_at(&mut buf, start).is_err() {
            return one_by_one();
        }
        let buf = Bytes::from(buf);
        run.iter()
            .map(|&(seq, loc)| {
                let from = (loc.offset - start) as usize;
                decode_at(seq, loc, &buf.slice(from..from + loc.len as usize))
            })
            .collect()
    }
}

/// What [`SegmentLog::delete_before`](super::SegmentLog::delete_before) removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Segment files deleted.
    pub segments: u64,
    /// Their size on disk.
    pub bytes: u64,
}

/// The table of open segments, ordered by base sequence. The last one is the
/// writer's active segment.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    map: RwLock<BTreeMap<u64, Arc<Segment>>>,
}

impl Segments {
    pub fn new(dir: PathBuf, segments: impl IntoIterator<Item = Arc<Segment>>) -> Segments {
        let map = segments.into_iter().map(|s| (s.base, s)).collect();
        Segments {
            dir,
            map: RwLock::new(map),
        }
    }

    /// Adds a new (active) segment.
    pub fn push(&self, seg: Arc<Segment>) {
        self.map.write().insert(seg.base, seg);
    }

    pub fn get(&self, base: u64) -> Option<Arc<Segment>> {
        self.map.read().get(&base).cloned()
    }

    /// Reads record `seq` at `loc` (blocking `pread`, normally served from
    /// the page cache).
    pub fn read(&self, seq: u64, loc: Location) -> Result<Record, LogError> {
        let seg = self.get(loc.segment).ok_or(LogError::NotFound {
            seq,
            segment: loc.segment,
        })?;
        seg.read(seq, loc)
    }

    /// Reads many records: each run of records lying back to back in one
    /// segment (up to [`MAX_RUN_BYTES`]) with one `pread`. One result per
    /// record, in the order given.
    pub fn read_many(&self, records: &[(u64, Location)]) -> Vec<Result<Record, LogError>> {
        let mut out = Vec::with_capacity(records.len());
        let mut rest = records;
        while let Some(&(_, first)) = rest.first() {
            let mut end = first.offset + u64::from(first.len);
            let mut n = 1;
            while let Some(&(_, next)) = rest.get(n) {
                let next_end = next.offset + u64::from(next.len);
                if next.segment != first.segment
                    || next.offset != end
                    || next_end - first.offset > MAX_RUN_BYTES
                {
                    break;
                }
                end = next_end;
                n += 1;
            }
            let (run, tail) = rest.split_at(n);
            match self.get(first.segment) {
                Some(seg) => out.extend(seg.read_run(run)),
                None => out.extend(run.iter().map(|&(seq, loc)| {
                    Err(LogError::NotFound {
                        seq,
                        segment: loc.segment,
                    })
                })),
            }
            rest = tail;
        }
        out
    }

    /// (segment count, bytes on disk).
    pub fn usage(&self) -> (u64, u64) {
        let map = self.map.read();
        let bytes = map.values().map(|s| s.len.load(Ordering::Acquire)).sum();
        (map.len() as u64, bytes)
    }

    /// Deletes, oldest first, every segment whose records all have a seq
    /// below `floor` (its successor's base is ≤ `floor`). Never the last.
    pub fn delete_before(&self, floor: u64) -> Result<DeleteReport, LogError> {
        let mut report = DeleteReport::default();
        // Taken out of the table under the lock, unlinked after it: readers
        // and the writer's roll do not wait on the file system. A reader
        // still holding one of them keeps reading its open file.
        let mut victims = Vec::new();
        {
            let mut map = self.map.write();
            loop {
                let mut bases = map.keys();
                let (Some(&first), Some(&next)) = (bases.next(), bases.next()) else {
                    break; // only the active segment is left
                };
                if next > floor {
                    break;
                }
                let Some(seg) = map.remove(&first) else { break };
                victims.push((first, seg));
            }
        }
        let mut victims = victims.into_iter();
        while let Some((base, seg)) = victims.next() {
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Not deleted: back in the table, to be tried again.
                    let error = LogError::io("remove segment", &seg.path)(e);
                    let mut map = self.map.write();
                    map.insert(base, seg);
                    map.extend(victims);
                    return Err(error);
                }
            }
            report.segments += 1;
            report.bytes += seg.len.load(Ordering::Acquire);
        }
        if report.segments > 0 {
            sync_dir(&self.dir).map_err(LogError::io("fsync directory", &self.dir))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name("00000000000000000001.seg"), Some(1));
        assert_eq!(
            parse_segment_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "1.seg",
            "0000000000000000001x.seg",
            "00000000000000000001.log",
            "99999999999999999999.seg", // > u64::MAX
            "+0000000000000000001.seg",
            "000000000000000000001.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_checks() {
        let h = encode_header(7);
        assert_eq!(check_header(&h, 7), Ok(()));
        assert_eq!(check_header(&h, 8), Err(HeaderError::BaseMismatch(7)));
        assert_eq!(check_header(&h[..31], 7), Err(HeaderError::Short));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(check_header(&bad, 7), Err(HeaderError::BadMagic));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(check_header(&bad, 7), Err(HeaderError::BadCrc));
        let mut v2 = h;
        v2[8] = 2;
        let crc = crc32c::crc32c(&v2[..28]);
        v2[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_header(&v2, 7), Err(HeaderError::Version(2)));
    }

    #[test]
    fn create_read_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut locs = Vec::new();
        let mut segs = Vec::new();
        for (base, seqs) in [(1u64, 1..3u64), (3, 3..5), (5, 5..6)] {
            let seg = Segment::create(dir.path(), base, &no_fault).unwrap();
            let mut off = SEGMENT_HEADER_LEN;
            for seq in seqs {
                let mut buf = Vec::new();
                let m = crate::Message {
                    subject: format!("s{seq}"),
                    headers: Vec::new(),
                    payload: Bytes::from_static(b"p"),
                };
                let len = record::encode(seq, std::time::SystemTime::now(), &m, &mut buf).unwrap();
                seg.file.write_all_at(&buf, off).unwrap();
                locs.push((
                    seq,
                    Location {
                        segment: base,
                        offset: off,
                        len: len as u32,
                    },
                ));
                off += len as u64;
            }
            seg.len.store(off, Ordering::Release);
            segs.push(Arc::new(seg));
        }
        let table = Segments::new(dir.path().to_path_buf(), segs);
        for &(seq, loc) in &locs {
            assert_eq!(table.read(seq, loc).unwrap().subject, format!("s{seq}"));
        }
        // Wrong seq, wrong offset, unknown segment.
        let (_, loc2) = locs[1];
        assert!(matches!(
            table.read(3, loc2),
            Err(LogError::Corrupt { seq: 3, .. })
        ));
        assert!(matches!(
            table.read(
                2,
                Location {
                    offset: loc2.offset + 1,
                    ..loc2
                }
            ),
            Err(LogError::Corrupt { .. })
        ));
        assert!(matches!(
            table.read(
                2,
                Location {
                    offset: 1 << 40,
                    ..loc2
                }
            ),
            Err(LogError::Corrupt { .. })
        ));
        assert!(matches!(
            table.read(2, Location { len: 3, ..loc2 }),
            Err(LogError::Corrupt { .. })
        ));

        let held = table.get(1).unwrap();
        // Floor 3: segment 1 holds 1, 2 (< 3): deleted. Segment 3 holds 4.
        let r = table.delete_before(3).unwrap();
        assert_eq!(r.segments, 1);
        assert!(!dir.path().join(segment_file_name(1)).exists());
        assert!(matches!(
            table.read(1, locs[0].1),
            Err(LogError::NotFound { seq: 1, segment: 1 })
        ));
        // A handle taken before the delete still reads.
        assert_eq!(held.read(1, locs[0].1).unwrap().seq, 1);
        assert_eq!(table.delete_before(4).unwrap().segments, 0);
        // The active (last) segment is never deleted, whatever the floor.
        assert_eq!(table.delete_before(u64::MAX).unwrap().segments, 1);
        assert_eq!(table.usage().0, 1);
        assert!(dir.path().join(segment_file_name(5)).exists());
        assert_eq!(table.read(5, locs[4].1).unwrap().seq, 5);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn fail_at(step: CreateStep) -> impl Fn(CreateStep) -> std::io::Result<()> {
        move |s| {
            if s == step {
                Err(std::io::Error::other("injected"))
            } else {
                Ok(())
            }
        }
    }

    fn assert_header(seg: &Segment, base: u64) {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        seg.file.read_exact_at(&mut h, 0).unwrap();
        assert_eq!(check_header(&h, base), Ok(()));
        assert_eq!(seg.len.load(Ordering::Acquire), SEGMENT_HEADER_LEN);
    }

    #[test]
    fn a_failed_create_leaves_the_segment_name_only_if_it_renamed() {
        for step in [CreateStep::Header, CreateStep::Rename] {
            let dir = tempfile::tempdir().unwrap();
            let r = Segment::create(dir.path(), 5, &fail_at(step));
            assert!(matches!(r, Err(CreateError::NotCreated(_))), "{step:?}");
            assert!(names_in(dir.path()).is_empty(), "{step:?}");
        }
        for step in [CreateStep::RenameReported, CreateStep::SyncDir] {
            let dir = tempfile::tempdir().unwrap();
            let r = Segment::create(dir.path(), 5, &fail_at(step));
            let Err(CreateError::Unsynced { segment, .. }) = r else {
                panic!("{step:?}: {r:?}");
            };
            assert_eq!(names_in(dir.path()), vec![segment_file_name(5)]);
            assert_header(&segment, 5);
        }
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 5, &no_fault).unwrap();
        assert_eq!(names_in(dir.path()), vec![segment_file_name(5)]);
        assert_header(&seg, 5);
    }

    fn spare(dir: &Path) -> super::super::prealloc::Spare {
        let path = dir.join("prealloc-1.tmp");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        super::super::prealloc::Spare { file, path }
    }

    #[test]
    fn a_failed_install_deletes_the_spare_and_keeps_the_old_file() {
        let len = |dir: &Path| {
            std::fs::metadata(dir.join(segment_file_name(5)))
                .unwrap()
                .len()
        };
        for step in [CreateStep::Header, CreateStep::Rename] {
            let dir = tempfile::tempdir().unwrap();
            // The empty active segment a spare would replace.
            Segment::create(dir.path(), 5, &no_fault).unwrap();
            let spare = spare(dir.path());
            let r = Segment::install(dir.path(), 5, spare, &fail_at(step));
            assert!(matches!(r, Err(CreateError::NotCreated(_))), "{step:?}");
            assert_eq!(names_in(dir.path()), vec![segment_file_name(5)]);
            assert_eq!(len(dir.path()), SEGMENT_HEADER_LEN, "{step:?}");
        }
        for step in [CreateStep::RenameReported, CreateStep::SyncDir] {
            let dir = tempfile::tempdir().unwrap();
            Segment::create(dir.path(), 5, &no_fault).unwrap();
            let spare = spare(dir.path());
            let r = Segment::install(dir.path(), 5, spare, &fail_at(step));
            let Err(CreateError::Unsynced { segment, .. }) = r else {
                panic!("{step:?}: {r:?}");
            };
            assert_eq!(names_in(dir.path()), vec![segment_file_name(5)]);
            assert_eq!(len(dir.path()), 4096, "{step:?}: the spare replaced it");
            assert_header(&segment, 5);
        }
    }

    #[test]
    fn unfinished_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "00000000000000000005.seg.tmp",
            "5.seg.tmp",
            "prealloc-1.tmp",
            "00000000000000000005.seg",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_unfinished(dir.path()).unwrap(), 1);
        assert_eq!(
            names_in(dir.path()),
            vec!["00000000000000000005.seg", "5.seg.tmp", "prealloc-1.tmp"]
        );
    }
}
