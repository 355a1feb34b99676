//! The segment bus's small durable files, all written with [`StateFile`]
//! (atomic replace, CRC-checked), next to the `log/` directory:
//!
//! - `consumer-<name>.state`, one per durable consumer: its configuration,
//!   cursor (every matching seq below it was delivered or released) and
//!   pending set (`(seq, deliveries)` of each delivered, unacked message,
//!   at most `max_ack_pending`). `<name>` is the consumer name with every
//!   byte outside `[A-Za-z0-9_-]` written `%XX` (long names are cut and
//!   suffixed with a checksum of the whole name).
//! - `stream.state`: the discard floor (every seq below it was released or
//!   discarded) and the configuration of every consumer, so that a consumer
//!   whose own file is lost is still known and gets everything still in the
//!   log redelivered rather than silently nothing.
//! - `consumer-<name>.deleted`, a tombstone: consumer `<name>` was deleted.
//!   Written (durably) before anything else of a delete and removed last,
//!   so a crash at any point in between cannot bring the consumer back:
//!   while it exists, open treats `<name>` as deleted whatever the metadata
//!   and state files say. Its contents (the name) are for people; only its
//!   existence counts.
//!
//! Layout (little-endian): a format version (u32), then fields; strings are
//! a u32 length and UTF-8 bytes. Decoding checks every length against what
//! is present and never panics; a file that does not decode is treated like
//! a corrupt one.

use super::super::segment::StateFile;
use crate::stream::ConsumerSnapshot;
use crate::ConsumerConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the stream metadata file.
pub(crate) const STREAM_FILE: &str = "stream.state";
const CONSUMER_PREFIX: &str = "consumer-";
const STATE_SUFFIX: &str = ".state";
const TOMBSTONE_SUFFIX: &str = ".deleted";
const VERSION: u32 = 1;
/// Longest escaped name kept whole in a file name.
const MAX_NAME_IN_FILE: usize = 160;

/// What `stream.state` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub discard_floor: u64,
    pub consumers: Vec<ConsumerConfig>,
}

/// The state file of consumer `name` in `dir`.
pub(crate) fn consumer_file(dir: &Path, name: &str) -> StateFile {
    StateFile::new(dir.join(format!(
        "{CONSUMER_PREFIX}{}{STATE_SUFFIX}",
        escaped_name(name)
    )))
}

/// The tombstone of consumer `name` in `dir` (see the module docs).
pub(crate) fn tombstone_file(dir: &Path, name: &str) -> StateFile {
    StateFile::new(dir.join(format!(
        "{CONSUMER_PREFIX}{}{TOMBSTONE_SUFFIX}",
        escaped_name(name)
    )))
}

/// `name` as it appears in file names: bytes outside `[A-Za-z0-9_-]` as
/// `%XX`, cut and suffixed with a checksum of the whole name when long.
fn escaped_name(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    if escaped.len() > MAX_NAME_IN_FILE {
        // Only ASCII above: any byte index is a char boundary.
        escaped.truncate(MAX_NAME_IN_FILE);
        escaped.push_str(&format!("~{:08x}", crc32c::crc32c(name.as_bytes())));
    }
    escaped
}

/// Paths of every consumer state file in `dir`, sorted.
pub(crate) fn consumer_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    files_with_suffix(dir, STATE_SUFFIX)
}

/// Paths of every consumer tombstone in `dir`, sorted.
pub(crate) fn tombstone_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    files_with_suffix(dir, TOMBSTONE_SUFFIX)
}

fn files_with_suffix(dir: &Path, suffix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(CONSUMER_PREFIX) && name.ends_with(suffix) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.u32(VERSION);
    e.u64(m.discard_floor);
    e.u32(m.consumers.len() as u32);
    for c in &m.consumers {
        e.config(c);
    }
    e.0
}

pub(crate) fn decode_manifest(bytes: &[u8]) -> Result<Manifest, &'static str> {
    let mut d = Dec { buf: bytes, pos: 0 };
    d.version()?;
    let discard_floor = d.u64()?;
    let n = d.count(8)?;
    let mut consumers = Vec::with_capacity(n);
    for _ in 0..n {
        consumers.push(d.config()?);
    }
    d.end()?;
    Ok(Manifest {
        discard_floor,
        consumers,
    })
}

pub(crate) fn encode_consumer(s: &ConsumerSnapshot) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(64 + 12 * s.pending.len()));
    e.u32(VERSION);
    e.config(&s.config);
    e.u64(s.cursor);
    e.u32(s.pending.len() as u32);
    for &(seq, deliveries) in &s.pending {
        e.u64(seq);
        e.u32(deliveries);
    }
    e.0
}

pub(crate) fn decode_consumer(bytes: &[u8]) -> Result<ConsumerSnapshot, &'static str> {
    let mut d = Dec { buf: bytes, pos: 0 };
    d.version()?;
    let config = d.config()?;
    let cursor = d.u64()?;
    let n = d.count(12)?;
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        pending.push((d.u64()?, d.u32()?));
    }
    d.end()?;
    Ok(ConsumerSnapshot {
        config,
        cursor,
        pending,
    })
}

struct Enc(Vec<u8>);

impl Enc {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn config(&mut self, c: &ConsumerConfig) {
        self.str(&c.name);
        self.u32(c.filter_subjects.len() as u32);
        for f in &c.filter_subjects {
            self.str(f);
        }
        self.u64(u64::try_from(c.ack_wait.as_nanos()).unwrap_or(u64::MAX));
        match c.max_deliver {
            Some(n) => {
                self.0.push(1);
                self.u32(n);
            }
            None => {
                self.0.push(0);
                self.u32(0);
            }
        }
        self.u64(c.max_ack_pending as u64);
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `min_item` bytes each, checked against
    /// the bytes left (no allocation sized from an unchecked number).
    fn count(&mut self, min_item: usize) -> Result<usize, &'static str> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() - self.pos {
            return Err("count larger than the file");
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, &'static str> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8")
    }
    fn version(&mut self) -> Result<(), &'static str> {
        if self.u32()? != VERSION {
            return Err("unsupported format version");
        }
        Ok(())
    }
    fn config(&mut self) -> Result<ConsumerConfig, &'static str> {
        let name = self.str()?;
        let n = self.count(4)?;
        let mut filter_subjects = Vec::with_capacity(n);
        for _ in 0..n {
            filter_subjects.push(self.str()?);
        }
        let ack_wait = Duration::from_nanos(self.u64()?);
        let max_deliver = match (self.u8()?, self.u32()?) {
            (0, _) => None,
            (1, n) => Some(n),
            _ => return Err("bad max_deliver flag"),
        };
        let max_ack_pending =
            usize::try_from(self.u64()?).map_err(|_| "max_ack_pending out of range")?;
        Ok(ConsumerConfig {
            name,
            filter_subjects,
            ack_wait,
            max_deliver,
            max_ack_pending,
        })
    }
    fn end(&self) -> Result<(), &'static str> {
        if self.pos != self.buf.len() {
            return Err("bytes after the end");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(name: &str) -> ConsumerConfig {
        ConsumerConfig {
            filter_subjects: vec!["a.b".into(), "ü".into()],
            ack_wait: Duration::from_millis(1500),
            max_deliver: Some(7),
            max_ack_pending: 12,
            ..ConsumerConfig::new(name)
        }
    }

    #[test]
    fn roundtrips() {
        let s = ConsumerSnapshot {
            config: config("sensor/one"),
            cursor: 42,
            pending: vec![(3, 1), (40, 9)],
        };
        assert_eq!(decode_consumer(&encode_consumer(&s)).unwrap(), s);
        let m = Manifest {
            discard_floor: 17,
            consumers: vec![config("a"), ConsumerConfig::new("b")],
        };
        assert_eq!(decode_manifest(&encode_manifest(&m)).unwrap(), m);
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        let dir = Path::new("/d");
        let name = |n: &str| {
            consumer_file(dir, n)
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(name("sensor-1_x"), "consumer-sensor-1_x.state");
        assert_eq!(
            tombstone_file(dir, "a/b").path(),
            Path::new("/d/consumer-a%2Fb.deleted")
        );
        assert_eq!(name("a/b c"), "consumer-a%2Fb%20c.state");
        assert_ne!(name("a/b"), name("a%2Fb"));
        let long_a = "x".repeat(500) + "a";
        let long_b = "x".repeat(500) + "b";
        assert!(name(&long_a).len() < 200);
        assert_ne!(name(&long_a), name(&long_b));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_consumer(&bytes);
            let _ = decode_manifest(&bytes);
        }

        /// Every truncation of a valid file is an error, not a panic.
        #[test]
        fn truncations_are_errors(cut in 0usize..60) {
            let s = ConsumerSnapshot { config: config("c"), cursor: 5, pending: vec![(1, 2)] };
            let bytes = encode_consumer(&s);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode_consumer(&bytes[..cut]).is_err());
        }
    }
}
