//! Small durable files (consumer state, stream metadata, the sequence
//! high-water mark), replaced atomically and checksummed.
//!
//! # What it guarantees
//!
//! - [`StateFile::store`] returns only once the new contents are durable:
//!   it writes `<name>.tmp`, fsyncs it, renames it over `<name>` and fsyncs the
//!   directory. A crash at any point leaves either the old or the new
//!   contents, never a mix.
//! - [`StateFile::load`] answers `Ok(None)` for a missing file and
//!   [`StateFileError::Corrupt`] for anything that does not check out
//!   (marker, length, CRC32C), so the caller can fall back (the bus
//!   redelivers everything: at-least-once). It never panics and never reads
//!   more than [`MAX_STATE_BYTES`].
//!
//! # What it does not guarantee
//!
//! - Concurrent writers: one writer per path (the temporary name is fixed).
//! - Speed: a store costs two fsyncs plus a rename; it is for small files
//!   written now and then, not per message.
//!
//! File layout: marker `SPWS`, contents length (u32 LE), CRC32C of the length
//! bytes followed by the contents (u32 LE), contents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: [u8; 4] = *b"SPWS";
const HEADER_LEN: usize = 12;
/// Largest contents a state file may hold (16 MiB).
pub const MAX_STATE_BYTES: usize = 16 << 20;

/// Why a state file could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateFileError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The file exists but its contents do not check out.
    #[error("state file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    /// Contents to store exceed [`MAX_STATE_BYTES`].
    #[error("state of {len} bytes exceeds the limit of {MAX_STATE_BYTES}")]
    TooLarge { len: usize },
}

/// One durable, atomically replaced, checksummed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path` (nothing is touched yet).
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> StateFileError + '_ {
        move |e| StateFileError::Io {
            op,
            path: self.path.clone(),
            source: Arc::new(e),
        }
    }

    fn corrupt(&self, reason: &'static str) -> StateFileError {
        StateFileError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// The stored contents; `Ok(None)` if the file does not exist.
    pub fn load(&self) -> Result<Option<Vec<u8>>, StateFileError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("open")(e)),
        };
        let limit = (HEADER_LEN + MAX_STATE_BYTES) as u64;
        let mut raw = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut raw)
            .map_err(self.io("read"))?;
        if raw.len() as u64 > limit {
            return Err(self.corrupt("larger than any state file"));
        }
        if raw.len() < HEADER_LEN {
            return Err(self.corrupt("shorter than its header"));
        }
        if raw[..4] != MAGIC {
            return Err(self.corrupt("bad marker"));
        }
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        if len != raw.len() - HEADER_LEN {
            return Err(self.corrupt("length does not match the file size"));
        }
        let stored = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let computed = crc32c::crc32c_append(crc32c::crc32c(&raw[4..8]), &raw[HEADER_LEN..]);
        if stored != computed {
            return Err(self.corrupt("checksum mismatch"));
        }
        raw.drain(..HEADER_LEN);
        Ok(Some(raw))
    }

    /// Durably replaces the contents with `contents` (see the module docs).
    pub fn store(&self, contents: &[u8]) -> Result<(), StateFileError> {
        if contents.len() > MAX_STATE_BYTES {
            return Err(StateFileError::TooLarge {
                len: contents.len(),
            });
        }
        let len = (contents.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), contents);
        let mut buf = Vec::with_capacity(HEADER_LEN + contents.len());
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(contents);

        let tmp = self.tmp_path();
        let tmp_err = |op: &'static str| {
            let tmp = tmp.clone();
            move |e| StateFileError::Io {
                op,
                path: tmp,
                source: Arc::new(e),
            }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(tmp_err("create"))?;
        f.write_all(&buf).map_err(tmp_err("write"))?;
        f.sync_all().map_err(tmp_err("fsync"))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(self.io("rename onto"))?;
        sync_dir(self.dir()).map_err(self.io("fsync the directory of"))
    }

    /// Durably deletes the file; a missing file is fine.
    pub fn remove(&self) -> Result<(), StateFileError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("remove")(e)),
        }
        sync_dir(self.dir()).map_err(self.io("fsync the directory of"))
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    fn tmp_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, and makes each new directory's own
/// entry durable by syncing its parent: syncing the files inside a
/// directory does not make the directory itself survive a crash. Does
/// nothing to a directory that exists.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    create_dir_durable_with(dir, sync_dir)
}

/// [`create_dir_durable`], syncing directories with `sync` (tests record).
fn create_dir_durable_with(
    dir: &Path,
    mut sync: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    // The ancestors about to be created, deepest first.
    let mut missing = Vec::new();
    for p in dir.ancestors() {
        if p.as_os_str().is_empty() || p.try_exists()? {
            break;
        }
        missing.push(p);
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for p in missing.iter().rev() {
        let parent = match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        sync(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_directory_is_synced_in_its_parent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/c");
        let mut synced = Vec::new();
        create_dir_durable_with(&dir, |p| {
            synced.push(p.to_path_buf());
            sync_dir(p)
        })
        .unwrap();
        assert!(dir.is_dir());
        let r = root.path();
        assert_eq!(synced, vec![r.to_path_buf(), r.join("a"), r.join("a/b")]);
        // An existing directory: nothing to do.
        create_dir_durable_with(&dir, |p| panic!("synced {}", p.display())).unwrap();
        create_dir_durable(&root.path().join("a/d")).unwrap();
        assert!(root.path().join("a/d").is_dir());
    }

    #[test]
    fn missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("consumer.state"));
        assert_eq!(f.load().unwrap(), None);
        f.remove().unwrap();
    }

    #[test]
    fn store_load_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("consumer.state"));
        f.store(b"first").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"first"[..]));
        f.store(b"").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b""[..]));
        f.store(b"second").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"second"[..]));
        assert!(!dir.path().join("consumer.state.tmp").exists());
        f.remove().unwrap();
        assert_eq!(f.load().unwrap(), None);
    }

    #[test]
    fn a_leftover_temp_file_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("s"));
        f.store(b"good").unwrap();
        fs::write(dir.path().join("s.tmp"), b"half-written garbage").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"good"[..]));
        f.store(b"newer").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"newer"[..]));
    }

    fn corrupt_reason(f: &StateFile) -> &'static str {
        match f.load() {
            Err(StateFileError::Corrupt { reason, path }) => {
                assert_eq!(path, f.path());
                reason
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("s"));
        f.store(b"contents").unwrap();
        let good = fs::read(f.path()).unwrap();

        let mut flipped = good.clone();
        flipped[HEADER_LEN + 2] ^= 0x40;
        fs::write(f.path(), &flipped).unwrap();
        assert_eq!(corrupt_reason(&f), "checksum mismatch");

        fs::write(f.path(), &good[..good.len() - 1]).unwrap();
        assert_eq!(corrupt_reason(&f), "length does not match the file size");

        fs::write(f.path(), &good[..5]).unwrap();
        assert_eq!(corrupt_reason(&f), "shorter than its header");

        fs::write(f.path(), b"").unwrap();
        assert_eq!(corrupt_reason(&f), "shorter than its header");

        let mut bad = good.clone();
        bad[0] = b'X';
        fs::write(f.path(), &bad).unwrap();
        assert_eq!(corrupt_reason(&f), "bad marker");

        let mut huge = good.clone();
        huge.resize(HEADER_LEN + MAX_STATE_BYTES + 1, 0);
        fs::write(f.path(), &huge).unwrap();
        assert_eq!(corrupt_reason(&f), "larger than any state file");

        // Storing again repairs it.
        f.store(b"fresh").unwrap();
        assert_eq!(f.load().unwrap().as_deref(), Some(&b"fresh"[..]));
    }

    #[test]
    fn too_large_to_store() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("s"));
        assert!(matches!(
            f.store(&vec![0; MAX_STATE_BYTES + 1]),
            Err(StateFileError::TooLarge { .. })
        ));
        assert_eq!(f.load().unwrap(), None);
    }

    #[test]
    fn unreadable_path_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        fs::create_dir(dir.path().join("s")).unwrap();
        let f = StateFile::new(dir.path().join("s"));
        assert!(matches!(f.load(), Err(StateFileError::Io { .. })));
    }
}
