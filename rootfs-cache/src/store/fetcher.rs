//! The origin of a pull's manifests and blobs: a registry, or a local image.

use std::sync::Arc;

use super::StoreError;
use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::local::{CopyError, LocalImage};
use crate::reference::ImageReference;
use crate::registry::{RegistryClient, RegistryConfig};
use crate::source::ImageSource;

/// The origin of one pull.
pub(super) enum Fetcher {
    /// A registry (or its mirror).
    Registry {
        client: RegistryClient,
        reference: ImageReference,
    },
    /// An OCI image layout or a `docker save` archive, its root manifest already read.
    Local(LocalImage),
}

fn local_error(image: &str, reason: String) -> StoreError {
    StoreError::Local {
        image: image.to_owned(),
        reason,
    }
}

impl Fetcher {
    /// Creates the registry client, or opens the local image and resolves its root.
    pub(super) async fn open(
        source: &ImageSource,
        registry: &RegistryConfig,
    ) -> Result<Arc<Fetcher>, StoreError> {
        let fetcher = match source {
            ImageSource::Registry(reference) => Fetcher::Registry {
                client: RegistryClient::new(registry, reference)?,
                reference: reference.clone(),
            },
            local => {
                let local = local.clone();
                let image = tokio::task::spawn_blocking(move || {
                    LocalImage::open(&local)
                        .map_err(|reason| local_error(&local.to_string(), reason))
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
                Fetcher::Local(image)
            }
        };
        Ok(Arc::new(fetcher))
    }

    /// Returns the digest the source resolves to when it is known without a request, which
    /// is the case for local images because [`Fetcher::open`] resolves them.
    pub(super) fn known_root(&self) -> Option<&Digest> {
        match self {
            Fetcher::Registry { .. } => None,
            Fetcher::Local(image) => Some(image.root().1),
        }
    }

    /// Fetches the manifest or index the source names.
    pub(super) async fn root_manifest(&self) -> Result<(Vec<u8>, Digest), StoreError> {
        match self {
            Fetcher::Registry { client, reference } => Ok(client.fetch_manifest(reference).await?),
            Fetcher::Local(image) => {
                let (bytes, digest) = image.root();
                Ok((bytes.to_vec(), digest.clone()))
            }
        }
    }

    /// Fetches the manifest `digest` that an index points to.
    pub(super) async fn child_manifest(
        self: &Arc<Self>,
        digest: &Digest,
    ) -> Result<(Vec<u8>, Digest), StoreError> {
        match &**self {
            Fetcher::Registry { client, reference } => Ok(client
                .fetch_manifest(&reference.with_digest(digest))
                .await?),
            Fetcher::Local(_) => {
                let fetcher = Arc::clone(self);
                let digest = digest.clone();
                tokio::task::spawn_blocking(move || {
                    let Fetcher::Local(image) = &*fetcher else {
                        unreachable!("matched as a local image above");
                    };
                    image
                        .read_manifest(&digest)
                        .map(|bytes| (bytes, digest))
                        .map_err(|reason| local_error(image.name(), reason))
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
            }
        }
    }

    /// Stores blob `digest` of `size` bytes in `blobs` after checking it, and calls
    /// `on_bytes` with the length of each chunk as it arrives.
    pub(super) async fn fetch_blob(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        blobs: &BlobStore,
        mut on_bytes: impl FnMut(u64) + Send + 'static,
    ) -> Result<(), StoreError> {
        match &**self {
            Fetcher::Registry { client, reference } => {
                client
                    .fetch_blob(reference, digest, size, blobs, on_bytes)
                    .await?;
                Ok(())
            }
            Fetcher::Local(_) => {
                let fetcher = Arc::clone(self);
                let digest = digest.clone();
                let blobs = blobs.clone();
                tokio::task::spawn_blocking(move || {
                    let Fetcher::Local(image) = &*fetcher else {
                        unreachable!("matched as a local image above");
                    };
                    image
                        .copy_blob(&digest, size, &blobs, &mut on_bytes)
                        .map_err(|error| match error {
                            CopyError::Source(reason) => local_error(image.name(), reason),
                            CopyError::Store(error) => StoreError::Blob(error),
                        })
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
            }
        }
    }
}
