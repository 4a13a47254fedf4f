//! The image store: image records by reference, blobs by digest and unpacked layers by
//! chain ID, under one root directory.
//!
//! ```text
//! <root>/blobs/sha256/<digest>        manifests, configs and compressed layers
//! <root>/layers/<chain id>/fs         a layer unpacked in overlayfs format
//! <root>/layers/<chain id>/layer.json its diff ID and blob digest
//! <root>/images/<sha256 of reference>.json
//! <root>/pull.lock                    held by a pull, and by a prune
//! <root>/images.lock                  held while an image record is rewritten
//! <root>/prune.lock                   shared by runs choosing layers, exclusive for a prune
//! ```
//!
//! The reference of a record is an [`ImageSource`] in text form, so images from OCI layouts
//! (`oci:/dir:tag`) and `docker save` archives have records like registry images.
//!
//! Every entry appears by an atomic rename once it is complete and verified, so a crash
//! at any point leaves only temporary files, which lookups never read. A pull holds an
//! `flock` on each of its temporary entries, and the next pull removes those that no
//! process holds locked any more. Entries are never modified afterwards: a sandbox stacks
//! layers read-only under its own upper directory. Image records are the exception:
//! `last_used` is rewritten in place by an atomic rename.

mod fetcher;
mod maintenance;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::blobs::{BlobError, BlobStore, MAX_TEMPORARY_ATTEMPTS, lock_temporary, sync_dir};
use crate::digest::{Digest, chain_ids};
use crate::image::{Descriptor, ImageConfig, Manifest, host_architecture, select_platform};
use crate::registry::{RegistryConfig, RegistryError};
use crate::source::ImageSource;
use crate::unpack::{Compression, UnpackError, UnpackOptions, unpack_layer};
use fetcher::Fetcher;
pub use maintenance::{
    ImageSummary, LAST_USED_RESOLUTION_SECONDS, LayersInUse, PruneLock, PruneReport, RunLock,
};

/// How many layer blobs are downloaded at the same time.
const CONCURRENT_DOWNLOADS: usize = 3;

/// Failures of a pull or a cache lookup, each naming the reference, digest or path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A blob on disk is damaged, or could not be written.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A manifest, index or config is not usable.
    #[error("invalid {what} {digest} of {reference}: {reason}")]
    InvalidDocument {
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// The document's digest.
        digest: Digest,
        /// The image reference.
        reference: String,
        /// The reason the document was rejected.
        reason: String,
    },
    /// The index has no manifest for this host's platform.
    #[error("{reference} has no image for linux/{architecture} (index {digest})")]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The host architecture.
        architecture: String,
        /// The index digest.
        digest: Digest,
    },
    /// A layer could not be unpacked.
    #[error("layer {digest} of {reference}: {source}")]
    Unpack {
        /// The layer blob's digest.
        digest: Digest,
        /// The image reference.
        reference: String,
        /// The unpacker's error, naming the entry.
        source: UnpackError,
    },
    /// The unpacked layer does not hash to the diff ID in the config.
    #[error(
        "layer {digest} of {reference}: uncompressed content hashes to {actual}, config diff_ids says {expected}"
    )]
    DiffIdMismatch {
        /// The layer blob's digest.
        digest: Digest,
        /// The image reference.
        reference: String,
        /// The diff ID from the config.
        expected: Digest,
        /// The digest of the uncompressed layer.
        actual: Digest,
    },
    /// A local image (an OCI layout or a `docker save` archive) is missing, unreadable or
    /// malformed, or one of its blobs does not match its digest.
    #[error("{image}: {reason}")]
    Local {
        /// The source in text form, e.g. `oci:/srv/layout:app`.
        image: String,
        /// The problem, naming the file inside the source.
        reason: String,
    },
    /// A file system operation on the store failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// The operation that failed.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Returns the current time in seconds since the Unix epoch (0 if the clock is before 1970).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        operation,
        path,
        source,
    }
}

/// An image that is ready to run: its configuration and its unpacked layers.
#[derive(Clone, Debug)]
pub struct Image {
    /// The source it was pulled from: a registry reference or a local image.
    pub reference: ImageSource,
    /// The digest the source resolved to (an index or a manifest).
    pub resolved_digest: Digest,
    /// The digest of the image manifest (the platform manifest, for an index).
    pub manifest_digest: Digest,
    /// The digest of the image configuration.
    pub config_digest: Digest,
    /// The image configuration.
    pub config: ImageConfig,
    /// The unpacked layer directories in overlayfs format, bottom layer first.
    pub layer_dirs: Vec<PathBuf>,
}

/// When a pull contacts the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use the cached image when the reference is known; contact the registry otherwise.
    #[default]
    IfMissing,
    /// Always resolve the reference at the registry (cached blobs and layers are reused).
    Always,
}

/// The work a pull does for one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerWork {
    /// The layer is unpacked already.
    None,
    /// The layer blob is stored; the layer is unpacked from it.
    Unpack,
    /// The layer blob is fetched (downloaded, or copied from a local image), then unpacked.
    FetchAndUnpack,
}

/// Receives progress of a pull; every method has an empty default.
pub trait PullProgress: Send + Sync {
    /// Called once for each layer, bottom layer first, before any layer is fetched.
    fn layer_queued(&self, _digest: &Digest, _size: u64, _work: LayerWork) {}
    /// A layer blob download starts.
    fn download_started(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more bytes of a layer blob arrived.
    fn downloaded(&self, _digest: &Digest, _bytes: u64) {}
    /// A layer blob is stored and verified.
    fn download_finished(&self, _digest: &Digest) {}
    /// A layer is being unpacked.
    fn unpack_started(&self, _digest: &Digest) {}
    /// A layer is unpacked and verified.
    fn unpack_finished(&self, _digest: &Digest) {}
}

struct NoProgress;
impl PullProgress for NoProgress {}

/// Settings of one pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Registry mirrors, CAs and credentials.
    pub registry: RegistryConfig,
    /// Whether a cached reference is trusted without asking the registry.
    pub policy: PullPolicy,
    /// Limits for unpacking.
    pub unpack: UnpackOptions,
    /// Where progress goes.
    pub progress: Arc<dyn PullProgress>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            registry: RegistryConfig::default(),
            policy: PullPolicy::IfMissing,
            unpack: UnpackOptions::default(),
            progress: Arc::new(NoProgress),
        }
    }
}

/// The record of a pulled reference, `images/<sha256 of reference>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference.
    pub reference: String,
    /// The digest the reference resolved to at the registry (an index or a manifest).
    pub resolved_digest: Digest,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The config's digest.
    pub config_digest: Digest,
    /// Seconds since the Unix epoch when the image was pulled.
    pub pulled_at: u64,
    /// Seconds since the Unix epoch when a sandbox last used the image, up to
    /// [`LAST_USED_RESOLUTION_SECONDS`] early; `None` if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    blob_digest: Digest,
    media_type: String,
}

/// An image store rooted at one directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
}

impl ImageStore {
    /// Opens the store at `root`, creating its directories.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        for sub in ["layers/tmp", "images"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(io_error("create directory", &path))?;
        }
        // Unpacked layers keep the images' setuid-root files and file capabilities, so
        // only root may reach them: another host user could run them otherwise.
        let layers = root.join("layers");
        fs::set_permissions(&layers, fs::Permissions::from_mode(0o700))
            .map_err(io_error("set mode 0700 on", &layers))?;
        let blobs = BlobStore::open(&root.join("blobs"))?;
        Ok(ImageStore {
            root: root.to_owned(),
            blobs,
        })
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn record_path(&self, reference: &ImageSource) -> PathBuf {
        let key = Digest::of(reference.to_string().as_bytes());
        self.root
            .join("images")
            .join(format!("{}.json", key.encoded()))
    }

    fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(chain_id.encoded())
    }

    /// Lists the records of every pulled reference.
    pub fn records(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("read directory", &dir))? {
            let path = entry.map_err(io_error("read directory", &dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = fs::read(&path).map_err(io_error("read", &path))?;
                if let Ok(record) = serde_json::from_slice(&bytes) {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a: &ImageRecord, b| a.reference.cmp(&b.reference));
        Ok(records)
    }

    /// Returns the cached image for `reference` if it is complete, without any network access.
    pub fn lookup(&self, reference: impl Into<ImageSource>) -> Result<Option<Image>, StoreError> {
        let reference = &reference.into();
        let path = self.record_path(reference);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
            return Ok(None);
        };
        if !self.blobs.contains(&record.config_digest) {
            return Ok(None);
        }
        let config = self.read_config(reference, &record.config_digest)?;
        let layer_dirs: Vec<PathBuf> = chain_ids(&config.rootfs.diff_ids)
            .iter()
            .map(|chain_id| self.layer_dir(chain_id))
            .collect();
        if !layer_dirs
            .iter()
            .all(|dir| dir.join("layer.json").is_file())
        {
            return Ok(None);
        }
        Ok(Some(Image {
            reference: reference.clone(),
            resolved_digest: record.resolved_digest,
            manifest_digest: record.manifest_digest,
            config_digest: record.config_digest,
            config,
            layer_dirs: layer_dirs.iter().map(|dir| dir.join("fs")).collect(),
        }))
    }

    fn read_config(
        &self,
        reference: &ImageSource,
        digest: &Digest,
    ) -> Result<ImageConfig, StoreError> {
        let bytes = self.blobs.read_verified(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::InvalidDocument {
            what: "config",
            digest: digest.clone(),
            reference: reference.to_string(),
            reason: e.to_string(),
        })
    }

    /// Makes `reference` available locally: resolves it at its registry or in its local
    /// image (unless cached and `policy` is [`PullPolicy::IfMissing`]), copies what is
    /// missing, verifies every blob against its digest and every layer against its diff
    /// ID, and unpacks layers in manifest order.
    ///
    /// A local image is resolved even when it is cached, because that needs no network:
    /// when its layout or archive changed, the new image is pulled.
    ///
    /// Once it has taken `pull.lock`, the pull removes the temporary entries that killed
    /// pulls left in `blobs/tmp` and `layers/tmp`. It keeps the entries that a live
    /// process has an `flock` on.
    pub async fn pull(
        &self,
        reference: impl Into<ImageSource>,
        options: &PullOptions,
    ) -> Result<Image, StoreError> {
        let reference = &reference.into();
        let if_missing = options.policy == PullPolicy::IfMissing;
        if if_missing && !reference.is_local() {
            if let Some(image) = self.lookup(reference)? {
                return Ok(image);
            }
        }
        let fetcher = Fetcher::open(reference, &options.registry).await?;
        // A cached image counts only if it is what a local source resolves to now.
        let cached = || -> Result<Option<Image>, StoreError> {
            let image = self.lookup(reference)?;
            Ok(image.filter(|image| {
                fetcher
                    .known_root()
                    .is_none_or(|root| root == &image.resolved_digest)
            }))
        };
        if if_missing && reference.is_local() {
            if let Some(image) = cached()? {
                return Ok(image);
            }
        }
        let _lock = self.lock().await?;
        // Pulls killed by SIGKILL or a crash leave their temporary entries behind.
        self.remove_stale_temporary_logged();
        if if_missing {
            // Another process may have pulled it while this one waited for the lock.
            if let Some(image) = cached()? {
                return Ok(image);
            }
        }

        let (resolved_digest, manifest_digest, config_descriptor, layers) =
            self.fetch_manifests(&fetcher, reference).await?;

        let config_digest = config_descriptor.digest.clone();
        if !self.blobs.contains(&config_digest) {
            fetcher
                .fetch_blob(&config_digest, config_descriptor.size, &self.blobs, |_| {})
                .await?;
        }
        let config = self.read_config(reference, &config_digest)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != layers.len() {
            return Err(StoreError::InvalidDocument {
                what: "config",
                digest: config_digest,
                reference: reference.to_string(),
                reason: format!(
                    "rootfs.diff_ids has {} entries but the manifest has {} layers",
                    diff_ids.len(),
                    layers.len()
                ),
            });
        }

        let layer_dirs = self
            .fetch_layers(&fetcher, reference, &layers, &diff_ids, options)
            .await?;

        let record = ImageRecord {
            reference: reference.to_string(),
            resolved_digest,
            manifest_digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            pulled_at: unix_now(),
            last_used: None,
        };
        self.write_record(reference, &record)?;

        Ok(Image {
            reference: reference.clone(),
            resolved_digest: record.resolved_digest,
            manifest_digest,
            config_digest,
            config,
            layer_dirs,
        })
    }

    /// Takes the store's pull lock, so concurrent pulls download each blob once.
    async fn lock(&self) -> Result<File, StoreError> {
        let path = self.root.join("pull.lock");
        tokio::task::spawn_blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| io_error("lock", &path)(e.into()))?;
            Ok(file)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Fetches the manifest (through the index, if the reference names one) and stores both.
    /// Returns the digest the reference resolved to, the manifest digest, config and layers.
    async fn fetch_manifests(
        &self,
        fetcher: &Arc<Fetcher>,
        reference: &ImageSource,
    ) -> Result<(Digest, Digest, Descriptor, Vec<Descriptor>), StoreError> {
        let (bytes, resolved_digest) = fetcher.root_manifest().await?;
        self.blobs.put(&resolved_digest, &bytes)?;
        let invalid = |what, digest: &Digest, reason| StoreError::InvalidDocument {
            what,
            digest: digest.clone(),
            reference: reference.to_string(),
            reason,
        };
        let (manifest_digest, manifest) = match Manifest::parse(&bytes)
            .map_err(|reason| invalid("manifest", &resolved_digest, reason))?
        {
            Manifest::Index(entries) => {
                let architecture = host_architecture();
                let entry = select_platform(&entries, architecture).ok_or_else(|| {
                    StoreError::NoMatchingPlatform {
                        reference: reference.to_string(),
                        architecture: architecture.to_owned(),
                        digest: resolved_digest.clone(),
                    }
                })?;
                let (bytes, digest) = fetcher.child_manifest(&entry.digest).await?;
                if digest != entry.digest {
                    return Err(invalid(
                        "index",
                        &resolved_digest,
                        format!("entry {} was served as {digest}", entry.digest),
                    ));
                }
                self.blobs.put(&digest, &bytes)?;
                let manifest = Manifest::parse(&bytes)
                    .map_err(|reason| invalid("manifest", &digest, reason))?;
                (digest, manifest)
            }
            image => (resolved_digest.clone(), image),
        };
        match manifest {
            Manifest::Image { config, layers } => {
                Ok((resolved_digest, manifest_digest, config, layers))
            }
            Manifest::Index(_) => Err(invalid(
                "manifest",
                &manifest_digest,
                "an index entry points to another index".to_owned(),
            )),
        }
    }

    /// Downloads missing layer blobs concurrently and unpacks the missing layers strictly in
    /// manifest order, since each layer's implied directories copy from the layers below.
    async fn fetch_layers(
        &self,
        fetcher: &Arc<Fetcher>,
        reference: &ImageSource,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        options: &PullOptions,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let chain = chain_ids(diff_ids);
        let missing: Vec<bool> = chain
            .iter()
            .map(|chain_id| !self.layer_dir(chain_id).join("layer.json").is_file())
            .collect();

        let semaphore = Arc::new(Semaphore::new(CONCURRENT_DOWNLOADS));
        let mut downloads = Vec::with_capacity(layers.len());
        for (layer, &is_missing) in layers.iter().zip(&missing) {
            let work = if !is_missing {
                LayerWork::None
            } else if self.blobs.contains(&layer.digest) {
                LayerWork::Unpack
            } else {
                LayerWork::FetchAndUnpack
            };
            options
                .progress
                .layer_queued(&layer.digest, layer.size, work);
            if work != LayerWork::FetchAndUnpack {
                downloads.push(None);
                continue;
            }
            let fetcher = Arc::clone(fetcher);
            let semaphore = Arc::clone(&semaphore);
            let blobs = self.blobs.clone();
            let progress = Arc::clone(&options.progress);
            let layer = layer.clone();
            downloads.push(Some(tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                progress.download_started(&layer.digest, layer.size);
                let on_bytes = {
                    let progress = Arc::clone(&progress);
                    let digest = layer.digest.clone();
                    move |n| progress.downloaded(&digest, n)
                };
                let result = fetcher
                    .fetch_blob(&layer.digest, layer.size, &blobs, on_bytes)
                    .await;
                progress.download_finished(&layer.digest);
                result
            })));
        }

        let mut layer_dirs: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for (index, download) in downloads.into_iter().enumerate() {
            if let Some(handle) = download {
                handle
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))??;
            }
            let dir = self.layer_dir(&chain[index]);
            if missing[index] {
                let parents: Vec<PathBuf> = layer_dirs.iter().rev().cloned().collect();
                self.unpack(
                    reference,
                    &layers[index],
                    &diff_ids[index],
                    &dir,
                    parents,
                    options,
                )
                .await?;
            }
            layer_dirs.push(dir.join("fs"));
        }
        Ok(layer_dirs)
    }

    /// Unpacks one stored layer blob into `layers/tmp`, checks its diff ID, then renames it
    /// to `dir`.
    async fn unpack(
        &self,
        reference: &ImageSource,
        layer: &Descriptor,
        diff_id: &Digest,
        dir: &Path,
        parents: Vec<PathBuf>,
        options: &PullOptions,
    ) -> Result<(), StoreError> {
        let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
            StoreError::InvalidDocument {
                what: "manifest",
                digest: layer.digest.clone(),
                reference: reference.to_string(),
                reason: format!("unsupported layer media type {:?}", layer.media_type),
            }
        })?;
        options.progress.unpack_started(&layer.digest);
        // The lock is declared first so that it is released after an error removes `staging`.
        let (_staging_lock, staging) = self.create_staging_dir(diff_id)?;
        let fs_dir = staging.path().join("fs");
        fs::create_dir(&fs_dir).map_err(io_error("create directory", &fs_dir))?;

        let blob = self.blobs.open_blob(&layer.digest)?;
        let unpack_options = options.unpack.clone();
        let target = fs_dir.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            unpack_layer(
                std::io::BufReader::with_capacity(256 * 1024, blob),
                compression,
                &target,
                &parents,
                &unpack_options,
            )
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
        .map_err(|source| StoreError::Unpack {
            digest: layer.digest.clone(),
            reference: reference.to_string(),
            source,
        })?;

        let actual: Digest = unpacked
            .diff_id
            .parse()
            .map_err(|e| StoreError::Internal(format!("unpacker returned a bad digest: {e}")))?;
        if &actual != diff_id {
            return Err(StoreError::DiffIdMismatch {
                digest: layer.digest.clone(),
                reference: reference.to_string(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let record = LayerRecord {
            diff_id: diff_id.clone(),
            blob_digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        };
        let record_path = staging.path().join("layer.json");
        let json =
            serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Internal(e.to_string()))?;
        fs::write(&record_path, json).map_err(io_error("write", &record_path))?;
        sync_dir(staging.path()).map_err(io_error("sync", staging.path()))?;

        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, dir) {
            let _ = fs::remove_dir_all(&staged);
            // Pulls hold the store's lock, so the only way the target can exist is a
            // complete layer from an earlier pull, which is as good as this one.
            if !dir.join("layer.json").is_file() {
                return Err(io_error("rename into place", dir)(e));
            }
        }
        let layers_dir = self.root.join("layers");
        sync_dir(&layers_dir).map_err(io_error("sync", &layers_dir))?;
        options.progress.unpack_finished(&layer.digest);
        Ok(())
    }

    /// Creates a directory in `layers/tmp` for unpacking the layer `diff_id` and returns an
    /// open file that has an exclusive `flock` on it, and the directory. The lock marks the
    /// directory as in use until the file is closed, so that
    /// [`ImageStore::remove_stale_temporary`] of another pull skips it.
    fn create_staging_dir(
        &self,
        diff_id: &Digest,
    ) -> Result<(File, tempfile::TempDir), StoreError> {
        let staging_root = self.root.join("layers/tmp");
        for _ in 0..MAX_TEMPORARY_ATTEMPTS {
            let staging = tempfile::Builder::new()
                .prefix(diff_id.encoded())
                .tempdir_in(&staging_root)
                .map_err(io_error("create directory in", &staging_root))?;
            let file = match File::open(staging.path()) {
                Ok(file) => file,
                // Removed as stale before it was locked.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("open", staging.path())(e)),
            };
            if lock_temporary(&file).map_err(io_error("lock", staging.path()))? {
                return Ok((file, staging));
            }
        }
        Err(io_error("create directory in", &staging_root)(
            std::io::Error::other(format!(
                "another process removed {MAX_TEMPORARY_ATTEMPTS} new directories before they were locked"
            )),
        ))
    }

    /// Writes the record of a pull, keeping the `last_used` of the record it replaces.
    fn write_record(
        &self,
        reference: &ImageSource,
        record: &ImageRecord,
    ) -> Result<(), StoreError> {
        let _lock = self.lock_records()?;
        let mut record = record.clone();
        if let Some(previous) = self.read_record(reference)? {
            record.last_used = previous.last_used;
        }
        self.replace_record(reference, &record)
    }

    /// Replaces the record file of `reference` atomically. Call it with `images.lock` taken.
    fn replace_record(
        &self,
        reference: &ImageSource,
        record: &ImageRecord,
    ) -> Result<(), StoreError> {
        let path = self.record_path(reference);
        let dir = self.root.join("images");
        let mut temp =
            tempfile::NamedTempFile::new_in(&dir).map_err(io_error("create file in", &dir))?;
        serde_json::to_writer_pretty(&mut temp, record)
            .map_err(|e| io_error("write", temp.path())(e.into()))?;
        temp.as_file().sync_all().map_err(io_error("sync", &path))?;
        temp.persist(&path)
            .map_err(|e| io_error("rename into place", &path)(e.error))?;
        Ok(())
    }
}
