//! Unpacking of OCI image layers into overlayfs lower directories.
//!
//! Each layer is applied once into its own empty directory, the way containerd's overlay
//! snapshotter applies a layer into a snapshot's upper directory. An OCI whiteout
//! `dir/.wh.NAME` becomes the overlayfs whiteout, a character device 0/0 at `dir/NAME`.
//! An opaque marker `dir/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on
//! `dir`. The layer directories can then be stacked as overlayfs `lowerdir`s.
//!
//! Every entry path is resolved inside the destination directory as if it were `/`.
//! Parent directories are opened with `openat2(RESOLVE_IN_ROOT)`, or walked one component
//! at a time with `O_NOFOLLOW` when directories must be created. The final component is
//! created with `*at` calls that never follow a symlink. So `..`, absolute paths and
//! symlinks that point outside the destination all stay inside it.

mod entry;
mod lower;
mod metadata;
mod sparse;
mod stream;
mod tree;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use stream::{Decoder, HashingReader};

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// A gzip-compressed tar stream, possibly of several gzip members.
    Gzip,
    /// A zstd-compressed tar stream, possibly of several zstd frames.
    Zstd,
}

impl Compression {
    /// Maps an OCI or Docker layer media type to the compression of its blob.
    ///
    /// Returns `None` for media types that are not tar layers (configs, manifests,
    /// unknown compressions). Parameters after `;` and letter case are ignored.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// Limits applied while unpacking a layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Maximum size in bytes of the uncompressed tar stream. A larger layer fails with
    /// [`UnpackError::TooLarge`]. The default is 16 GiB.
    pub max_uncompressed_bytes: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_uncompressed_bytes: 16 << 30,
        }
    }
}

/// Digest and size of an unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// `sha256:<hex>` of the whole uncompressed tar stream, including any bytes after the
    /// end-of-archive marker. It matches the image config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    /// Size in bytes of the uncompressed tar stream.
    pub bytes: u64,
}

/// Error from [`unpack_layer`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The compressed blob or the tar stream could not be read or decoded.
    #[error("failed to read layer stream{}: {source}", describe_entry(.entry))]
    Read {
        /// Entry being read, or the last entry read before a header failed to parse.
        entry: Option<String>,
        /// Decoder, tar or I/O error.
        source: io::Error,
    },
    /// The uncompressed stream exceeds [`UnpackOptions::max_uncompressed_bytes`].
    #[error("layer exceeds the maximum uncompressed size of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// An entry is malformed, unsupported or cannot be applied inside the destination.
    #[error("invalid layer entry {path:?}: {reason}")]
    InvalidEntry {
        /// Entry path as written in the archive.
        path: String,
        /// The problem with the entry.
        reason: String,
    },
    /// A filesystem operation for an entry failed.
    #[error("failed to {action} for layer entry {path:?}: {source}")]
    Io {
        /// Entry path as written in the archive.
        path: String,
        /// The operation that failed, for example `create file`.
        action: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The destination or a parent layer directory could not be opened.
    #[error("failed to open layer directory {}: {source}", .path.display())]
    OpenDirectory {
        /// The directory.
        path: PathBuf,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The destination directory already has entries.
    #[error("destination directory {} is not empty", .path.display())]
    DestinationNotEmpty {
        /// The directory.
        path: PathBuf,
    },
}

fn describe_entry(entry: &Option<String>) -> String {
    match entry {
        Some(path) => format!(" at entry {path:?}"),
        None => String::new(),
    }
}

/// Unpacks one layer blob into `dest` in overlayfs format and returns its diff ID.
///
/// `dest` must be an existing empty directory. `parents` are the already unpacked lower
/// layer directories, nearest first, and are only read. A directory that this layer
/// implies without listing it, including the layer root, gets the mode, owner, xattrs and
/// mtime of the same directory in the nearest parent layer, or 0755 root:root. A hardlink
/// whose target is only in a parent layer gets a copy of that target in `dest`.
///
/// The whole stream is read, including bytes after the end-of-archive marker, so the
/// returned diff ID can be checked against the image config. On error, `dest` holds a
/// partial tree that the caller must remove.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    parents: &[PathBuf],
    options: &UnpackOptions,
) -> Result<UnpackedLayer, UnpackError> {
    let mut tree = tree::Tree::open(dest, parents)?;
    let decoder = Decoder::new(blob, compression).map_err(|source| UnpackError::Read {
        entry: None,
        source,
    })?;
    let mut stream = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
        bytes: 0,
        limit: options.max_uncompressed_bytes,
        exceeded: false,
    };

    let applied = entry::apply_archive(&mut stream, &mut tree).and_then(|()| {
        // The tar reader stops at the first zero block, but the diff ID covers the
        // rest of the end-of-archive marker and any padding after it.
        io::copy(&mut stream, &mut io::sink())
            .map(drop)
            .map_err(|source| UnpackError::Read {
                entry: None,
                source,
            })
    });
    if stream.exceeded {
        return Err(UnpackError::TooLarge {
            limit: options.max_uncompressed_bytes,
        });
    }
    applied?;
    tree.finish()?;

    Ok(UnpackedLayer {
        diff_id: format!("sha256:{}", hex::encode(stream.hasher.finalize())),
        bytes: stream.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                Some(Compression::None),
            ),
            (
                "Application/VND.OCI.image.layer.v1.tar+gzip; x=y",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "media type {media_type:?}"
            );
        }
    }

    #[test]
    fn default_limit_is_16_gib() {
        assert_eq!(
            UnpackOptions::default().max_uncompressed_bytes,
            16 * 1024 * 1024 * 1024
        );
    }
}
