//! A content-addressed blob store: `blobs/sha256/<encoded digest>`.
//!
//! A blob enters the store only through [`BlobWriter::commit`], which checks its size and
//! digest, syncs it to disk and renames it into place. A crash or a failed check leaves at
//! most a file under `blobs/tmp/`, which no lookup ever reads.
//!
//! A writer holds an exclusive `flock` on its file in `blobs/tmp/` until the file is
//! renamed or deleted, so an unlocked file there belongs to no live process and
//! [`crate::ImageStore::pull`] removes it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Failures of the blob store, each naming the blob or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes hash to another digest than the one they were fetched by.
    #[error("digest mismatch for blob {expected}: content hashes to {actual}")]
    DigestMismatch {
        /// The digest the blob was requested by.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The blob is longer or shorter than the size in its descriptor.
    #[error("size mismatch for blob {digest}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob's digest.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The number of bytes received (so far, when the blob was too long).
        actual: u64,
    },
    /// A file system operation on the store failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// The operation that failed, e.g. `write`.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError::Io {
        operation,
        path,
        source,
    }
}

/// The blob directory of an image cache.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (and creates if needed) the blob store in `dir`.
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        for sub in ["sha256", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error("create directory", &path))?;
        }
        Ok(BlobStore {
            dir: dir.to_owned(),
        })
    }

    /// The path a blob has (or would have) in the store.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.encoded())
    }

    /// Reports whether the store has the blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a small blob (a manifest or config) and checks it against its digest again,
    /// so a blob damaged on disk is reported instead of being used.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest);
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a stored blob for streaming.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(io_error("open", &path))
    }

    /// Starts writing the blob `digest`; `size` is the descriptor's size, when known.
    pub fn writer(&self, digest: &Digest, size: Option<u64>) -> Result<BlobWriter, BlobError> {
        let dir = self.dir.join("tmp");
        let mut attempts = 0;
        let temp = loop {
            let temp = tempfile::Builder::new()
                .prefix(digest.encoded())
                .tempfile_in(&dir)
                .map_err(io_error("create temporary file in", &dir))?;
            if lock_temporary(temp.as_file()).map_err(io_error("lock", temp.path()))? {
                break temp;
            }
            attempts += 1;
            if attempts == MAX_TEMPORARY_ATTEMPTS {
                return Err(io_error("create temporary file in", &dir)(
                    io::Error::other(format!(
                        "another process removed {MAX_TEMPORARY_ATTEMPTS} new files before they were locked"
                    )),
                ));
            }
        };
        Ok(BlobWriter {
            temp,
            hasher: Sha256::new(),
            written: 0,
            digest: digest.clone(),
            size,
            destination: self.path(digest),
        })
    }

    /// Stores `bytes` as the blob `digest` after checking them.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, BlobError> {
        let mut writer = self.writer(digest, Some(bytes.len() as u64))?;
        writer.write_chunk(bytes)?;
        writer.commit()
    }

    /// Copies a blob from `reader` into the store, checking size and digest.
    pub fn put_reader(
        &self,
        digest: &Digest,
        size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<PathBuf, BlobError> {
        let mut writer = self.writer(digest, size)?;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(io_error("read source of", &writer.destination))?;
            if read == 0 {
                break;
            }
            writer.write_chunk(&buffer[..read])?;
        }
        writer.commit()
    }

    /// Removes a blob; a missing blob is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// A blob being written. Dropping it without [`BlobWriter::commit`] deletes the partial file.
pub struct BlobWriter {
    temp: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    digest: Digest,
    size: Option<u64>,
    destination: PathBuf,
}

impl BlobWriter {
    /// Appends bytes, failing as soon as the blob grows past its descriptor's size.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.written += bytes.len() as u64;
        if let Some(expected) = self.size.filter(|&size| self.written > size) {
            return Err(BlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.written,
            });
        }
        self.hasher.update(bytes);
        let path = self.temp.path().to_owned();
        self.temp
            .as_file_mut()
            .write_all(bytes)
            .map_err(io_error("write", &path))
    }

    /// The number of bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, syncs the file and moves it into the store.
    pub fn commit(self) -> Result<PathBuf, BlobError> {
        if let Some(expected) = self.size.filter(|&size| size != self.written) {
            return Err(BlobError::SizeMismatch {
                digest: self.digest,
                expected,
                actual: self.written,
            });
        }
        let actual = Digest::from_sha256(self.hasher.finalize().into());
        if actual != self.digest {
            return Err(BlobError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let temp_path = self.temp.path().to_owned();
        self.temp
            .as_file()
            .sync_all()
            .map_err(io_error("sync", &temp_path))?;
        self.temp
            .persist(&self.destination)
            .map_err(|e| io_error("rename into place", &self.destination)(e.error))?;
        if let Some(parent) = self.destination.parent() {
            sync_dir(parent).map_err(io_error("sync", parent))?;
        }
        Ok(self.destination)
    }
}

/// Maximum number of temporary entries that a writer creates in a row when each one is
/// removed as stale before the writer can lock it.
pub(crate) const MAX_TEMPORARY_ATTEMPTS: u32 = 8;

/// Takes an exclusive `flock` on `file`, a temporary file or directory that this process
/// has just created, for as long as `file` stays open. Returns `false` if the entry was
/// removed before the lock was taken: a concurrent removal of stale entries can lock and
/// remove an entry in the moment between its creation and this call, and the caller then
/// creates another one. The kernel releases the lock when the process dies, even by
/// SIGKILL.
pub(crate) fn lock_temporary(file: &File) -> io::Result<bool> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive)?;
    // A removed file or directory has no links left.
    Ok(rustix::fs::fstat(file)?.st_nlink > 0)
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        let path = store.put(&digest, b"hello").unwrap();
        assert_eq!(path, dir.path().join("sha256").join(digest.encoded()));
        assert_eq!(store.read_verified(&digest).unwrap(), b"hello");
        assert!(store.contains(&digest));
    }

    #[test]
    fn wrong_bytes_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        let error = store.put(&digest, b"jello").unwrap_err();
        match error {
            BlobError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, digest);
                assert_eq!(actual, Digest::of(b"jello"));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(!store.contains(&digest));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn size_lies_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        let mut writer = store.writer(&digest, Some(3)).unwrap();
        let error = writer.write_chunk(b"hello").unwrap_err();
        assert!(
            matches!(
                error,
                BlobError::SizeMismatch {
                    expected: 3,
                    actual: 5,
                    ..
                }
            ),
            "{error}"
        );
        let short = store
            .put_reader(&digest, Some(9), &b"hello"[..])
            .unwrap_err();
        assert!(
            matches!(
                short,
                BlobError::SizeMismatch {
                    expected: 9,
                    actual: 5,
                    ..
                }
            ),
            "{short}"
        );
        assert!(!store.contains(&digest));
    }

    #[test]
    fn damaged_blob_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        store.put(&digest, b"hello").unwrap();
        fs::write(store.path(&digest), b"HELLO").unwrap();
        assert!(matches!(
            store.read_verified(&digest),
            Err(BlobError::DigestMismatch { .. })
        ));
    }
}
