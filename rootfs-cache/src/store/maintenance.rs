//! Listing, removing and pruning cached images, and the locks that keep a prune from
//! removing what a pull or a run is about to use.
//!
//! A run takes `prune.lock` shared while it chooses its image and records the layers it
//! mounts (outside this crate). A prune takes it exclusively, so every layer list that a
//! run wrote exists before the prune reads the lists. A prune also takes
//! `pull.lock`, so no pull adds blobs or layers while it runs.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{ImageRecord, ImageStore, StoreError, io_error, unix_now};
use crate::digest::{Digest, chain_ids};
use crate::image::{ImageConfig, Manifest};
use crate::source::ImageSource;

/// How old `last_used` may be before a run rewrites it, in seconds.
pub const LAST_USED_RESOLUTION_SECONDS: u64 = 60;

/// An image record with the space its blobs and layers take.
#[derive(Clone, Debug)]
pub struct ImageSummary {
    /// The record.
    pub record: ImageRecord,
    /// Bytes of the stored blobs the image refers to: the resolved index or manifest, the
    /// platform manifest, the config and the layer blobs as fetched (compressed, for most
    /// registry images).
    pub blob_bytes: u64,
    /// Apparent size in bytes of the image's unpacked layer directories, as
    /// `du --apparent-size --bytes` counts it: file, directory and symlink sizes, each
    /// hard-linked file once. Layers shared with other images count in each image.
    pub unpacked_bytes: u64,
    /// The number of layers.
    pub layers: usize,
    /// Whether every layer is unpacked, so the image runs without a pull.
    pub complete: bool,
}

/// Layers that sandboxes use, which a prune keeps even if no image refers to them.
#[derive(Clone, Debug)]
pub enum LayersInUse {
    /// These layer directories, as [`super::Image::layer_dirs`] lists them.
    Dirs(Vec<PathBuf>),
    /// Every layer, because some sandbox's layers are unknown.
    All,
}

/// The counts and bytes a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs that no image record refers to.
    pub blobs: usize,
    /// Unpacked layers that neither an image record nor a sandbox uses.
    pub layers: usize,
    /// Entries in `blobs/tmp` and `layers/tmp`, left by interrupted pulls (the entries that
    /// a live process still writes stay).
    pub temporary: usize,
    /// Apparent size of everything removed, in bytes (as `du --apparent-size --bytes`).
    pub bytes_freed: u64,
}

/// `prune.lock` held shared: no prune runs until it is dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// `prune.lock` and `pull.lock` held exclusively by a prune.
#[derive(Debug)]
pub struct PruneLock {
    _prune: File,
    _pull: File,
}

/// The blobs and layers one image record refers to.
struct Contents {
    blobs: BTreeSet<Digest>,
    chain_ids: Vec<Digest>,
}

fn flock(path: &Path, operation: rustix::fs::FlockOperation) -> Result<File, StoreError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    rustix::fs::flock(&file, operation).map_err(|e| io_error("lock", path)(e.into()))?;
    Ok(file)
}

impl ImageStore {
    /// Takes `images.lock`, held while a record is read, changed and replaced.
    pub(super) fn lock_records(&self) -> Result<File, StoreError> {
        flock(
            &self.root.join("images.lock"),
            rustix::fs::FlockOperation::LockExclusive,
        )
    }

    /// Reads the record of `reference`; `None` if there is none or it is unreadable.
    pub(super) fn read_record(
        &self,
        reference: &ImageSource,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(reference);
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    /// Keeps any prune from starting until the returned lock is dropped. A run keeps it
    /// from the lookup of its image until it has recorded the layers it will mount.
    pub fn lock_for_run(&self) -> Result<RunLock, StoreError> {
        let file = flock(
            &self.root.join("prune.lock"),
            rustix::fs::FlockOperation::LockShared,
        )?;
        Ok(RunLock { _file: file })
    }

    /// Waits until no run is choosing its layers and no pull is running, and keeps new ones
    /// from starting until the returned lock is dropped.
    pub fn lock_for_prune(&self) -> Result<PruneLock, StoreError> {
        let prune = flock(
            &self.root.join("prune.lock"),
            rustix::fs::FlockOperation::LockExclusive,
        )?;
        let pull = flock(
            &self.root.join("pull.lock"),
            rustix::fs::FlockOperation::LockExclusive,
        )?;
        Ok(PruneLock {
            _prune: prune,
            _pull: pull,
        })
    }

    /// Sets the `last_used` time of `image`'s record to now with one atomic file
    /// replacement, unless it was set less than [`LAST_USED_RESOLUTION_SECONDS`] ago. The
    /// replacement syncs the file (about 5 ms on the test VM's disk), so runs in quick
    /// succession skip it.
    pub fn mark_used(&self, image: &super::Image) -> Result<(), StoreError> {
        let now = unix_now();
        let recent = |record: &ImageRecord| {
            record
                .last_used
                .is_some_and(|time| time <= now && now - time < LAST_USED_RESOLUTION_SECONDS)
        };
        if self
            .read_record(&image.reference)?
            .is_none_or(|record| recent(&record))
        {
            return Ok(());
        }
        let _lock = self.lock_records()?;
        let Some(mut record) = self.read_record(&image.reference)? else {
            return Ok(());
        };
        if recent(&record) {
            return Ok(());
        }
        record.last_used = Some(now);
        self.replace_record(&image.reference, &record)
    }

    /// Removes the record of `reference`; returns `false` if there is none. Its blobs and
    /// layers stay until [`ImageStore::prune`].
    pub fn remove(&self, reference: impl Into<ImageSource>) -> Result<bool, StoreError> {
        let reference = reference.into();
        let _lock = self.lock_records()?;
        let path = self.record_path(&reference);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
        let dir = self.root.join("images");
        crate::blobs::sync_dir(&dir).map_err(io_error("sync", &dir))?;
        Ok(true)
    }

    /// Lists every record with the sizes of its blobs and layers.
    pub fn summaries(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut summaries = Vec::new();
        for record in self.records()? {
            let contents = self.contents(&record);
            let mut blob_bytes = 0;
            for digest in &contents.blobs {
                if let Ok(metadata) = fs::metadata(self.blobs.path(digest)) {
                    blob_bytes += metadata.len();
                }
            }
            let mut unpacked_bytes = 0;
            let mut complete = self.blobs.contains(&record.config_digest);
            for chain_id in &contents.chain_ids {
                let dir = self.layer_dir(chain_id);
                if dir.join("layer.json").is_file() {
                    unpacked_bytes += apparent_size(&dir)?;
                } else {
                    complete = false;
                }
            }
            summaries.push(ImageSummary {
                layers: contents.chain_ids.len(),
                record,
                blob_bytes,
                unpacked_bytes,
                complete,
            });
        }
        Ok(summaries)
    }

    /// Removes the blobs and layers that no image record refers to and `in_use` does not
    /// list, and the entries of `blobs/tmp` and `layers/tmp` that no live process writes
    /// (see [`ImageStore::remove_stale_temporary`]).
    ///
    /// A layer is first renamed into `layers/tmp` and then deleted, so a crash never leaves
    /// a partly deleted layer where lookups find it.
    pub fn prune(
        &self,
        _lock: &PruneLock,
        in_use: &LayersInUse,
    ) -> Result<PruneReport, StoreError> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = HashSet::new();
        for record in self.records()? {
            let contents = self.contents(&record);
            keep_blobs.extend(contents.blobs);
            keep_layers.extend(contents.chain_ids.iter().map(|id| id.encoded().to_owned()));
        }
        let layers_root = self.root.join("layers");
        if let LayersInUse::Dirs(dirs) = in_use {
            for dir in dirs {
                if let Some(name) = layer_name(&layers_root, dir) {
                    keep_layers.insert(name);
                }
            }
        }

        let mut report = PruneReport::default();
        let blob_dir = self.root.join("blobs/sha256");
        for name in dir_names(&blob_dir)? {
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if keep_blobs.contains(&digest) {
                continue;
            }
            let path = blob_dir.join(&name);
            report.bytes_freed += apparent_size(&path)?;
            remove_entry(&path)?;
            report.blobs += 1;
        }

        let staging = layers_root.join("tmp");
        if !matches!(in_use, LayersInUse::All) {
            for name in dir_names(&layers_root)? {
                if name == "tmp"
                    || keep_layers.contains(&name)
                    || format!("sha256:{name}").parse::<Digest>().is_err()
                {
                    continue;
                }
                let path = layers_root.join(&name);
                report.bytes_freed += apparent_size(&path)?;
                let doomed = staging.join(format!("{name}.removed"));
                fs::rename(&path, &doomed).map_err(io_error("move out of the cache", &path))?;
                remove_entry(&doomed)?;
                report.layers += 1;
            }
        }

        let (temporary, bytes) = self.remove_stale_temporary()?;
        report.temporary = temporary;
        report.bytes_freed += bytes;
        Ok(report)
    }

    /// Removes the entries of `blobs/tmp` and `layers/tmp` that no open file has an
    /// `flock` on, and returns their number and apparent size in bytes.
    ///
    /// A blob writer and a layer unpack lock their temporary entry from its creation until
    /// it is renamed or deleted (see [`crate::blobs::lock_temporary`]), and the kernel
    /// drops the lock when the process dies. So an unlocked entry was left by a process
    /// that was killed, or by a prune that was killed while it deleted a layer, and a
    /// locked one is skipped because a live process may still write it.
    pub(super) fn remove_stale_temporary(&self) -> Result<(usize, u64), StoreError> {
        let mut removed = 0;
        let mut bytes = 0;
        for dir in [self.root.join("blobs/tmp"), self.root.join("layers/tmp")] {
            for name in dir_names(&dir)? {
                if let Some(size) = remove_if_stale(&dir.join(name))? {
                    removed += 1;
                    bytes += size;
                }
            }
        }
        Ok((removed, bytes))
    }

    /// Runs [`ImageStore::remove_stale_temporary`] and logs what it removed or why it
    /// failed. A pull calls it and goes on after a failure, because the entries it could
    /// not remove do not affect the pull.
    pub(super) fn remove_stale_temporary_logged(&self) {
        match self.remove_stale_temporary() {
            Ok((0, _)) => {}
            Ok((removed, bytes)) => tracing::debug!(
                root = %self.root.display(),
                removed,
                bytes,
                "removed temporary entries of interrupted pulls"
            ),
            Err(error) => tracing::warn!(
                root = %self.root.display(),
                %error,
                "failed to remove temporary entries of interrupted pulls"
            ),
        }
    }

    /// Collects the blobs and layers a record refers to, as far as its stored manifest and
    /// config list them. A missing or damaged document contributes nothing.
    fn contents(&self, record: &ImageRecord) -> Contents {
        let mut blobs = BTreeSet::from([
            record.resolved_digest.clone(),
            record.manifest_digest.clone(),
            record.config_digest.clone(),
        ]);
        if let Ok(bytes) = self.blobs.read_verified(&record.manifest_digest) {
            if let Ok(Manifest::Image { layers, .. }) = Manifest::parse(&bytes) {
                blobs.extend(layers.into_iter().map(|layer| layer.digest));
            }
        }
        let chain_ids = self
            .blobs
            .read_verified(&record.config_digest)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ImageConfig>(&bytes).ok())
            .map(|config| chain_ids(&config.rootfs.diff_ids))
            .unwrap_or_default();
        Contents { blobs, chain_ids }
    }
}

/// Returns the name of the layer directory below `layers_root` that contains `path`.
fn layer_name(layers_root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(layers_root).ok()?;
    let first = relative.components().next()?;
    Some(first.as_os_str().to_str()?.to_owned())
}

fn dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read directory", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read directory", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the temporary entry `path` unless an open file has an `flock` on it, and
/// returns its apparent size if it was removed. The lock taken here keeps a writer that
/// created the entry but has not locked it yet from using it: that writer's
/// [`crate::blobs::lock_temporary`] waits for the lock, then finds the entry removed.
fn remove_if_stale(path: &Path) -> Result<Option<u64>, StoreError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read metadata of", path)(e)),
    };
    // Writers create only regular files and directories here, so any other entry has no
    // writer. Opening a device node or FIFO could block or have side effects.
    let _lock = if metadata.is_file() || metadata.is_dir() {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", path)(e)),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(io_error("lock", path)(e.into())),
        }
        // `path` was replaced between the metadata read and the open: leave it to the
        // next pull.
        let opened =
            rustix::fs::fstat(&file).map_err(|e| io_error("read metadata of", path)(e.into()))?;
        if (opened.st_dev, opened.st_ino) != (metadata.dev(), metadata.ino()) {
            return Ok(None);
        }
        Some(file)
    } else {
        None
    };
    let size = apparent_size(path)?;
    remove_entry(path)?;
    Ok(Some(size))
}

fn remove_entry(path: &Path) -> Result<(), StoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Computes the apparent size of `path` and everything below it as
/// `du --apparent-size --bytes` does: the sizes of files, directories and symlinks, with
/// each hard-linked inode counted once.
pub(crate) fn apparent_size(path: &Path) -> Result<u64, StoreError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![path.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read metadata of", &path)(e)),
        };
        if metadata.nlink() > 1
            && !metadata.is_dir()
            && !seen.insert((metadata.dev(), metadata.ino()))
        {
            continue;
        }
        total += metadata.len();
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_error("read directory", &path))? {
                let entry = entry.map_err(io_error("read directory", &path))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparent_size_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("a"), vec![0u8; 1000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let dir_size = fs::metadata(&root).unwrap().len();
        assert_eq!(apparent_size(&root).unwrap(), dir_size + 1000 + 1);
    }

    /// Lists the names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        dir_names(dir).unwrap()
    }

    #[test]
    fn stale_removal_keeps_locked_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let blob_tmp = dir.path().join("blobs/tmp");
        let layer_tmp = dir.path().join("layers/tmp");

        // Entries of live writers: a blob being written and a layer being unpacked.
        let digest = Digest::of(b"hello");
        let mut writer = store.blobs().writer(&digest, Some(5)).unwrap();
        writer.write_chunk(b"he").unwrap();
        let (staging_lock, staging) = store.create_staging_dir(&digest).unwrap();
        fs::write(staging.path().join("file"), b"unpacked").unwrap();

        // Entries of a killed writer, which hold no lock: a file, a directory tree and a
        // symlink.
        fs::write(blob_tmp.join("stale-blob"), vec![1u8; 1000]).unwrap();
        fs::create_dir_all(layer_tmp.join("stale-layer/fs/etc")).unwrap();
        fs::write(layer_tmp.join("stale-layer/fs/etc/passwd"), vec![2u8; 500]).unwrap();
        std::os::unix::fs::symlink("/etc", layer_tmp.join("stale-link")).unwrap();
        let stale_bytes = 1000
            + apparent_size(&layer_tmp.join("stale-layer")).unwrap()
            + apparent_size(&layer_tmp.join("stale-link")).unwrap();

        let (removed, bytes) = store.remove_stale_temporary().unwrap();
        assert_eq!(removed, 3);
        assert_eq!(bytes, stale_bytes);
        let kept_blobs = names(&blob_tmp);
        assert_eq!(kept_blobs.len(), 1, "{kept_blobs:?}");
        assert!(
            kept_blobs[0].starts_with(digest.encoded()),
            "{kept_blobs:?}"
        );
        let staging_name = staging.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(names(&layer_tmp), [staging_name]);
        assert_eq!(fs::read(staging.path().join("file")).unwrap(), b"unpacked");

        // The kept writer still completes its blob.
        writer.write_chunk(b"llo").unwrap();
        writer.commit().unwrap();
        assert_eq!(store.blobs().read_verified(&digest).unwrap(), b"hello");
        assert_eq!(names(&blob_tmp), Vec::<String>::new());

        // Once its lock is released, the staging directory counts as stale.
        let staged = staging.keep();
        drop(staging_lock);
        assert_eq!(store.remove_stale_temporary().unwrap().0, 1);
        assert!(!staged.exists());
        assert_eq!(names(&layer_tmp), Vec::<String>::new());
    }

    #[test]
    fn lock_reports_entry_removed_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        // A writer that has created its file but not locked it yet.
        let temp = tempfile::NamedTempFile::new_in(dir.path().join("blobs/tmp")).unwrap();
        assert_eq!(store.remove_stale_temporary().unwrap().0, 1);
        assert!(!temp.path().exists());
        assert!(!crate::blobs::lock_temporary(temp.as_file()).unwrap());
    }

    #[test]
    fn layer_names_from_paths() {
        let root = Path::new("/cache/layers");
        assert_eq!(
            layer_name(root, Path::new("/cache/layers/abc/fs")).as_deref(),
            Some("abc")
        );
        assert_eq!(layer_name(root, Path::new("/elsewhere/abc/fs")), None);
    }
}
