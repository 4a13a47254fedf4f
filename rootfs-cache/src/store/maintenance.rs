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
    /// Entries in `blobs/tmp` and `layers/tmp`, left by interrupted pulls.
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
    /// list, and everything in `blobs/tmp` and `layers/tmp`.
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

        for dir in [self.root.join("blobs/tmp"), staging] {
            for name in dir_names(&dir)? {
                let path = dir.join(&name);
                report.bytes_freed += apparent_size(&path)?;
                remove_entry(&path)?;
                report.temporary += 1;
            }
        }
        Ok(report)
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
