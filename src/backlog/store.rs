//! The durable backlog store: one file per stored event under
//! `<data-dir>/backlog/`, named `backlog-<suffix>` as Kubernetes names an
//! object created with `generateName: backlog-`.
//!
//! Guarantees:
//! - **Atomic, durable records.** A record is written to a temporary file,
//!   fsync'd, linked to its final name (a link never replaces an existing
//!   record; a taken name draws a new suffix) and the directory is fsync'd
//!   before [`BacklogStore::put`] returns. A crash leaves either no record
//!   or a whole one, never a half one; leftover temporary files are removed
//!   by [`BacklogStore::open`].
//! - **Bounded.** At most `maxEvents` records and `maxBytes` bytes; a put
//!   that would pass either limit is refused with [`StoreError::Full`] (the
//!   caller keeps the event: the trigger fails like `onReject: error`).
//! - **Damage is reported, never fatal.** A record that cannot be read back
//!   is named in [`Scan::corrupt`] or refused by [`BacklogStore::read`] with
//!   the reason; it is left in place for the operator.
//!
//! Not guaranteed: the usage counters follow this process's own puts and
//! removes; files added or deleted by hand are seen at the next `open`. All
//! methods do blocking file I/O: call them from `spawn_blocking`.

use super::record::{Record, RecordError, NAME_PREFIX};
use parking_lot::Mutex;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Subdirectory of `--data-dir` holding the records.
pub const DIR_NAME: &str = "backlog";
/// Prefix of temporary files (never a valid record name).
const TMP_PREFIX: &str = ".tmp-";
/// Kubernetes' `generateName` suffix: 5 characters of this alphabet.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const SUFFIX_LEN: usize = 5;
/// Name draws before giving up (a store nearly as large as the name space).
const NAME_TRIES: usize = 64;

/// How much the store may hold (`spillway run --backlog-max-events/-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogLimits {
    pub max_events: u64,
    pub max_bytes: u64,
}

impl Default for BacklogLimits {
    /// 100 000 events (the seed bus's `max_msgs`) and 1 GiB.
    fn default() -> Self {
        BacklogLimits {
            max_events: 100_000,
            max_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("backlog store full ({events} events, {bytes} bytes stored; limits {max_events} events, {max_bytes} bytes); a record of {record} bytes does not fit")]
    Full {
        events: u64,
        bytes: u64,
        max_events: u64,
        max_bytes: u64,
        record: u64,
    },
    #[error("backlog store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a backlog record name (backlog-<letters and digits>)")]
    InvalidName(String),
    #[error("no backlog record {0:?} (already replayed or removed)")]
    NotFound(String),
    #[error("backlog record {name:?} is damaged and was left in place: {reason}")]
    Corrupt { name: String, reason: RecordError },
    #[error("no free record name after {NAME_TRIES} tries")]
    NoFreeName,
}

/// One record file, as listed without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// Every record, read and decoded (`spillway backlog list`).
#[derive(Debug, Default)]
pub struct Scan {
    /// Decoded records with their name and size, oldest first.
    pub records: Vec<(Entry, Record)>,
    /// Records that could not be read back, with the reason.
    pub corrupt: Vec<(Entry, String)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    events: u64,
    bytes: u64,
}

/// The backlog directory of one data dir.
#[derive(Debug)]
pub struct BacklogStore {
    dir: PathBuf,
    limits: BacklogLimits,
    usage: Mutex<Usage>,
}

impl BacklogStore {
    /// Opens (creating) `<data_dir>/backlog`, removes temporary files left
    /// by a crash, and counts what is stored.
    pub fn open(data_dir: &Path, limits: BacklogLimits) -> Result<BacklogStore, StoreError> {
        let dir = data_dir.join(DIR_NAME);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        for item in fs::read_dir(&dir).map_err(io(&dir))? {
            let item = item.map_err(io(&dir))?;
            if item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let path = item.path();
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        let store = BacklogStore {
            dir,
            limits,
            usage: Mutex::new(Usage::default()),
        };
        let entries = store.entries()?;
        *store.usage.lock() = Usage {
            events: entries.len() as u64,
            bytes: entries.iter().map(|e| e.bytes).sum(),
        };
        Ok(store)
    }

    /// The store of `data_dir` for reading only: nothing is created or
    /// removed (`spillway backlog list` next to a running pipeline).
    pub fn read_only(data_dir: &Path) -> BacklogStore {
        BacklogStore {
            dir: data_dir.join(DIR_NAME),
            limits: BacklogLimits::default(),
            usage: Mutex::new(Usage::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> BacklogLimits {
        self.limits
    }

    /// Records stored now, counting those being written (their space is
    /// reserved before the write, so the limits hold under concurrency).
    /// By this process's count.
    pub fn events(&self) -> u64 {
        self.usage.lock().events
    }

    /// Bytes stored now (by this process's count).
    pub fn bytes(&self) -> u64 {
        self.usage.lock().bytes
    }

    /// Stores `record` durably; returns its name. Refused when full.
    pub fn put(&self, record: &Record) -> Result<String, StoreError> {
        let mut name = generate_name();
        let mut contents = record.encode(&name);
        let size = contents.len() as u64;
        self.reserve(size)?;
        let result = (|| {
            for _ in 0..NAME_TRIES {
                let tmp = self
                    .dir
                    .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
                write_synced(&tmp, &contents)?;
                let target = self.dir.join(&name);
                // A hard link fails instead of replacing an existing record.
                let linked = fs::hard_link(&tmp, &target);
                fs::remove_file(&tmp).map_err(io(&tmp))?;
                match linked {
                    Ok(()) => {
                        sync_dir(&self.dir)?;
                        return Ok(name);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        name = generate_name();
                        contents = record.encode(&name);
                    }
                    Err(e) => return Err(io(&target)(e)),
                }
            }
            Err(StoreError::NoFreeName)
        })();
        if result.is_err() {
            self.release(size);
        }
        result
    }

    /// The record `name`, decoded.
    pub fn read(&self, name: &str) -> Result<Record, StoreError> {
        let path = self.path_of(name)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Record::decode(&bytes).map_err(|reason| StoreError::Corrupt {
            name: name.to_string(),
            reason,
        })
    }

    /// Deletes the record `name` durably.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path_of(name)?;
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        }
        self.release(size);
        sync_dir(&self.dir)
    }

    /// Every record file, oldest first (by write time, then name), without
    /// reading them. An absent directory is an empty store.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let items = match fs::read_dir(&self.dir) {
            Ok(items) => items,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut entries = Vec::new();
        for item in items {
            let item = item.map_err(io(&self.dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) {
                continue;
            }
            let meta = match item.metadata() {
                Ok(meta) => meta,
                // Removed meanwhile (replayed by another request).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&item.path())(e)),
            };
            entries.push(Entry {
                name,
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        entries.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
        Ok(entries)
    }

    /// Reads and decodes every record.
    pub fn scan(&self) -> Result<Scan, StoreError> {
        let mut scan = Scan::default();
        for entry in self.entries()? {
            match self.read(&entry.name) {
                Ok(record) => scan.records.push((entry, record)),
                Err(StoreError::NotFound(_)) => {}
                Err(StoreError::Corrupt { reason, .. }) => {
                    scan.corrupt.push((entry, reason.to_string()))
                }
                Err(other) => return Err(other),
            }
        }
        scan.records
            .sort_by(|a, b| (a.1.stored_at, &a.0.name).cmp(&(b.1.stored_at, &b.0.name)));
        Ok(scan)
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        if valid_name(name) {
            Ok(self.dir.join(name))
        } else {
            Err(StoreError::InvalidName(name.to_string()))
        }
    }

    fn reserve(&self, size: u64) -> Result<(), StoreError> {
        let mut usage = self.usage.lock();
        let limits = self.limits;
        if usage.events + 1 > limits.max_events || usage.bytes + size > limits.max_bytes {
            return Err(StoreError::Full {
                events: usage.events,
                bytes: usage.bytes,
                max_events: limits.max_events,
                max_bytes: limits.max_bytes,
                record: size,
            });
        }
        usage.events += 1;
        usage.bytes += size;
        Ok(())
    }

    fn release(&self, size: u64) {
        let mut usage = self.usage.lock();
        usage.events = usage.events.saturating_sub(1);
        usage.bytes = usage.bytes.saturating_sub(size);
    }
}

/// `backlog-` followed by lowercase letters and digits: also what keeps a
/// name from an HTTP path from leaving the directory.
pub fn valid_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX).is_some_and(|suffix| {
        !suffix.is_empty()
            && suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn generate_name() -> String {
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| char::from(SUFFIX_ALPHABET[fastrand::usize(..SUFFIX_ALPHABET.len())]))
        .collect();
    format!("{NAME_PREFIX}{suffix}")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_synced(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Makes a link or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn record(n: u32) -> Record {
        Record {
            sensor: "orders".into(),
            trigger: "api".into(),
            reason: "test".into(),
            stored_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(n)),
            event: Event::new(
                "shop",
                "webhook",
                "orders",
                bytes::Bytes::from(format!("{{\"n\":{n}}}")),
            ),
        }
    }

    #[test]
    fn put_read_remove_and_reopen_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = BacklogStore::open(dir.path(), BacklogLimits::default()).unwrap();
        let first = record(1);
        let a = store.put(&first).unwrap();
        let b = store.put(&record(2)).unwrap();
        assert!(valid_name(&a) && a.len() == "backlog-".len() + 5, "{a}");
        assert_ne!(a, b);
        assert_eq!(store.read(&a).unwrap(), first);
        assert_eq!(store.events(), 2);
        store.remove(&a).unwrap();
        assert!(matches!(store.read(&a), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove(&a), Err(StoreError::NotFound(_))));
        // A crash between writing and linking leaves only a temporary file.
        fs::write(store.dir().join(".tmp-leftover"), b"half").unwrap();
        let reopened = BacklogStore::open(dir.path(), BacklogLimits::default()).unwrap();
        assert_eq!(reopened.events(), 1);
        assert_eq!(reopened.bytes(), store.bytes());
        assert!(!reopened.dir().join(".tmp-leftover").exists());
        assert_eq!(reopened.entries().unwrap().len(), 1);
    }

    #[test]
    fn full_store_refuses_and_keeps_count() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BacklogLimits {
            max_events: 2,
            max_bytes: 1 << 20,
        };
        let store = BacklogStore::open(dir.path(), limits).unwrap();
        store.put(&record(1)).unwrap();
        store.put(&record(2)).unwrap();
        assert!(matches!(
            store.put(&record(3)),
            Err(StoreError::Full { events: 2, .. })
        ));
        assert_eq!(store.entries().unwrap().len(), 2);
        let tiny = BacklogStore::open(
            tempfile::tempdir().unwrap().path(),
            BacklogLimits {
                max_events: 10,
                max_bytes: 100,
            },
        )
        .unwrap();
        assert!(matches!(tiny.put(&record(1)), Err(StoreError::Full { .. })));
        assert_eq!(tiny.events(), 0);
    }

    #[test]
    fn corrupt_records_are_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BacklogStore::open(dir.path(), BacklogLimits::default()).unwrap();
        let good = store.put(&record(1)).unwrap();
        fs::write(store.dir().join("backlog-zzzzz"), b"{\"kind\":").unwrap();
        let scan = store.scan().unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.records[0].0.name, good);
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.corrupt[0].0.name, "backlog-zzzzz");
        assert!(matches!(
            store.read("backlog-zzzzz"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        let store = BacklogStore::read_only(Path::new("/nonexistent"));
        for name in ["../lock", "backlog-", "backlog-../x", "backlog-AB", "lock"] {
            assert!(
                matches!(store.read(name), Err(StoreError::InvalidName(_))),
                "{name}"
            );
        }
        assert!(store.entries().unwrap().is_empty());
    }
}
