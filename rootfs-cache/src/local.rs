//! Images on the local file system, for hosts without registry access: OCI image layouts
//! and `docker save` archives.
//!
//! A local image offers what a registry offers: a root manifest (or index) resolved from a
//! name, manifests by digest and blobs by digest. The store copies blobs into its own blob
//! store through the same size and digest checks as downloads, and unpacks and verifies
//! layers the same way.
//!
//! A `docker save` archive is read in one of two formats. Docker 25 and later write an OCI
//! image layout into the tar (`index.json`, `blobs/sha256/…`), which is read like a
//! layout directory. Older Docker versions and skopeo write only `manifest.json`, which
//! names a config file and one layer tar per layer but no digests. For those archives an
//! OCI manifest is made from the config. An uncompressed layer's blob digest is its diff
//! ID, so copying it into the blob store checks it against the config's `rootfs.diff_ids`.

mod files;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::{BlobError, BlobStore};
use crate::digest::Digest;
use crate::image::{Descriptor, ImageConfig, Platform, host_architecture, select_platform};
use crate::reference::ImageReference;
use crate::source::ImageSource;
use files::Files;

/// The maximum size of `index.json`, `manifest.json`, a manifest or a config read whole.
const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

/// The annotation that names a manifest in an OCI image layout.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation with the full image name that Docker 25+ writes into `docker save`.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";

const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The image to select in a layout or archive.
enum Selector<'a> {
    First,
    /// `org.opencontainers.image.ref.name` of an OCI layout entry.
    RefName(&'a str),
    /// A RepoTag of a `docker save` archive.
    Reference(&'a ImageReference),
}

/// An opened local image with its root manifest resolved.
#[derive(Debug)]
pub(crate) struct LocalImage {
    /// The source as text, for messages.
    name: String,
    files: Files,
    root: Vec<u8>,
    root_digest: Digest,
    /// Blobs that are not at `blobs/sha256/<encoded>`: the config and layers of a
    /// `manifest.json`-only archive.
    members: HashMap<Digest, ArchiveMember>,
}

#[derive(Debug)]
struct ArchiveMember {
    path: String,
    /// Whether the digest is a diff ID from the config, which the copy verifies.
    is_diff_id: bool,
}

/// A failure of a local image: the reason, without the source's name.
type LocalResult<T> = Result<T, String>;

impl LocalImage {
    /// Opens `source` (a local kind) and resolves its root manifest. Blocks on file I/O.
    pub(crate) fn open(source: &ImageSource) -> LocalResult<LocalImage> {
        match source {
            ImageSource::Registry(reference) => Err(format!(
                "{reference} is a registry reference, not a local image"
            )),
            ImageSource::OciLayout { dir, tag } => {
                if !dir.is_dir() {
                    return Err(format!(
                        "{} is not a directory holding an OCI image layout",
                        dir.display()
                    ));
                }
                let files = Files::Dir(dir.clone());
                if files.open("oci-layout")?.is_none() {
                    return Err(format!(
                        "{} is not an OCI image layout: it has no oci-layout file",
                        dir.display()
                    ));
                }
                let selector = match tag {
                    Some(tag) => Selector::RefName(tag),
                    None => Selector::First,
                };
                Self::from_layout(source, files, selector)
            }
            ImageSource::DockerArchive { file, reference } => {
                if file.is_dir() {
                    return Err(format!(
                        "{} is a directory; name an OCI layout directory as oci:{}",
                        file.display(),
                        file.display()
                    ));
                }
                let files = Files::tar(file)?;
                let selector = match reference {
                    Some(reference) => Selector::Reference(reference),
                    None => Selector::First,
                };
                if files.open("index.json")?.is_some() {
                    Self::from_layout(source, files, selector)
                } else if files.open("manifest.json")?.is_some() {
                    Self::from_docker_manifest(source, files, selector)
                } else {
                    Err(format!(
                        "{} is not a docker save archive: it has neither index.json nor manifest.json",
                        file.display()
                    ))
                }
            }
        }
    }

    /// Returns the root manifest or index and its digest.
    pub(crate) fn root(&self) -> (&[u8], &Digest) {
        (&self.root, &self.root_digest)
    }

    /// Returns the text form of the source.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Reads the manifest `digest` and checks it against the digest.
    pub(crate) fn read_manifest(&self, digest: &Digest) -> LocalResult<Vec<u8>> {
        if digest == &self.root_digest {
            return Ok(self.root.clone());
        }
        let path = blob_path(digest);
        let bytes = self
            .files
            .read_small(&path, MAX_DOCUMENT_BYTES)?
            .ok_or_else(|| format!("manifest {digest} is missing: there is no {path}"))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(format!(
                "manifest {path} is damaged: its content hashes to {actual}"
            ));
        }
        Ok(bytes)
    }

    /// Copies blob `digest` of `size` bytes into `blobs`, checking size and digest as the
    /// bytes are copied, and calls `on_bytes` with the length of each chunk. A blob that
    /// does not match is a [`CopyError::Source`], and a failed write to the store a
    /// [`CopyError::Store`].
    pub(crate) fn copy_blob(
        &self,
        digest: &Digest,
        size: u64,
        blobs: &BlobStore,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), CopyError> {
        let (path, is_diff_id) = match self.members.get(digest) {
            Some(member) => (member.path.clone(), member.is_diff_id),
            None => (blob_path(digest), false),
        };
        let (mut reader, _) = self
            .files
            .open(&path)
            .map_err(CopyError::Source)?
            .ok_or_else(|| {
                CopyError::Source(format!("blob {digest} is missing: there is no {path}"))
            })?;
        let mismatch = |error: BlobError| match error {
            BlobError::DigestMismatch { expected, actual } if is_diff_id => {
                CopyError::Source(format!(
                    "layer {path} hashes to {actual}, but the config's rootfs.diff_ids expects {expected}"
                ))
            }
            BlobError::DigestMismatch { actual, .. } => CopyError::Source(format!(
                "blob {path} is damaged: its content hashes to {actual}, not {digest}"
            )),
            BlobError::SizeMismatch {
                expected, actual, ..
            } => CopyError::Source(format!(
                "size mismatch for blob {path}: its descriptor gives {expected} bytes, {actual} were read"
            )),
            other => CopyError::Store(other),
        };
        let mut writer = blobs.writer(digest, Some(size)).map_err(CopyError::Store)?;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| CopyError::Source(format!("cannot read {path}: {e}")))?;
            if read == 0 {
                break;
            }
            writer.write_chunk(&buffer[..read]).map_err(mismatch)?;
            on_bytes(read as u64);
        }
        writer.commit().map_err(mismatch)?;
        Ok(())
    }

    /// Resolves the root through `index.json` of an OCI image layout.
    fn from_layout(
        source: &ImageSource,
        files: Files,
        selector: Selector<'_>,
    ) -> LocalResult<LocalImage> {
        let bytes = files
            .read_small("index.json", MAX_DOCUMENT_BYTES)?
            .ok_or("the OCI image layout has no index.json")?;
        let index: LayoutIndex =
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid index.json: {e}"))?;
        let entry = select_layout_entry(&index.manifests, &selector)?;
        let path = blob_path(&entry.digest);
        let root = files
            .read_small(&path, MAX_DOCUMENT_BYTES)?
            .ok_or_else(|| format!("index.json names {}, but there is no {path}", entry.digest))?;
        let actual = Digest::of(&root);
        if actual != entry.digest {
            return Err(format!(
                "manifest {path} is damaged: its content hashes to {actual}"
            ));
        }
        if root.len() as u64 != entry.size {
            return Err(format!(
                "manifest {path} is {} bytes, but index.json says {}",
                root.len(),
                entry.size
            ));
        }
        Ok(LocalImage {
            name: source.to_string(),
            files,
            root,
            root_digest: entry.digest.clone(),
            members: HashMap::new(),
        })
    }

    /// Makes an OCI manifest for an image of a `manifest.json`-only `docker save` archive.
    fn from_docker_manifest(
        source: &ImageSource,
        files: Files,
        selector: Selector<'_>,
    ) -> LocalResult<LocalImage> {
        let bytes = files
            .read_small("manifest.json", MAX_DOCUMENT_BYTES)?
            .ok_or("the archive has no manifest.json")?;
        let entries: Vec<ArchiveEntry> =
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid manifest.json: {e}"))?;
        let entry = select_archive_entry(&entries, &selector)?;

        let config_bytes = files
            .read_small(&entry.config, MAX_DOCUMENT_BYTES)?
            .ok_or_else(|| {
                format!(
                    "manifest.json names config {}, which is missing",
                    entry.config
                )
            })?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("invalid image config {}: {e}", entry.config))?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(format!(
                "config {} has {} rootfs.diff_ids, but manifest.json lists {} layers",
                entry.config,
                diff_ids.len(),
                entry.layers.len()
            ));
        }

        let config_digest = Digest::of(&config_bytes);
        let mut members = HashMap::new();
        members.insert(
            config_digest.clone(),
            ArchiveMember {
                path: entry.config.clone(),
                is_diff_id: false,
            },
        );
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
            let (layer, is_diff_id) = describe_layer(&files, path, diff_id)?;
            members.insert(
                layer.digest.clone(),
                ArchiveMember {
                    path: path.clone(),
                    is_diff_id,
                },
            );
            layers.push(layer);
        }
        let manifest = MadeManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST_MEDIA_TYPE,
            config: MadeDescriptor {
                media_type: OCI_CONFIG_MEDIA_TYPE,
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers,
        };
        let root = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        Ok(LocalImage {
            name: source.to_string(),
            files,
            root_digest: Digest::of(&root),
            root,
            members,
        })
    }
}

/// A failure to copy a blob out of a local image.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The source is missing the blob, or its content does not match.
    Source(String),
    /// The blob store could not write it.
    Store(BlobError),
}

/// Describes layer `path` of a `manifest.json`-only archive, and reports whether its
/// digest is the diff ID (an uncompressed layer). A compressed layer is read once here to
/// compute its digest.
fn describe_layer(
    files: &Files,
    path: &str,
    diff_id: &Digest,
) -> LocalResult<(MadeDescriptor, bool)> {
    let missing = || format!("manifest.json names layer {path}, which is missing");
    let (mut reader, size) = files.open(path)?.ok_or_else(missing)?;
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        let read = reader
            .read(&mut magic[filled..])
            .map_err(|e| format!("cannot read layer {path}: {e}"))?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    let media_type = match &magic[..filled] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => {
            let layer = MadeDescriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                digest: diff_id.clone(),
                size,
            };
            return Ok((layer, true));
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(&magic[..filled]);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|e| format!("cannot read layer {path}: {e}"))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let layer = MadeDescriptor {
        media_type,
        digest: Digest::from_sha256(hasher.finalize().into()),
        size,
    };
    Ok((layer, false))
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.encoded())
}

#[derive(Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
struct LayoutEntry {
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

fn select_layout_entry<'a>(
    entries: &'a [LayoutEntry],
    selector: &Selector<'_>,
) -> LocalResult<&'a LayoutEntry> {
    let names = || {
        let names: Vec<&str> = entries
            .iter()
            .filter_map(|entry| entry.annotations.get(REF_NAME_ANNOTATION))
            .map(String::as_str)
            .collect();
        if names.is_empty() {
            "no entry has a name".to_owned()
        } else {
            format!("the names are {}", names.join(", "))
        }
    };
    let candidates: Vec<&LayoutEntry> = match selector {
        Selector::First => entries.iter().collect(),
        Selector::RefName(tag) => entries
            .iter()
            .filter(|entry| {
                entry
                    .annotations
                    .get(REF_NAME_ANNOTATION)
                    .map(String::as_str)
                    == Some(tag)
            })
            .collect(),
        Selector::Reference(reference) => entries
            .iter()
            .filter(|entry| {
                [IMAGE_NAME_ANNOTATION, REF_NAME_ANNOTATION]
                    .iter()
                    .filter_map(|key| entry.annotations.get(*key))
                    .any(|name| {
                        name.parse::<ImageReference>()
                            .is_ok_and(|name| &name == *reference)
                    })
            })
            .collect(),
    };
    // Some tools list one entry per platform in index.json itself, under the same name or
    // none, so the host's platform is preferred among the candidates that state one.
    let described: Vec<Descriptor> = candidates
        .iter()
        .map(|entry| Descriptor {
            media_type: String::new(),
            digest: entry.digest.clone(),
            size: entry.size,
            platform: entry.platform.clone(),
        })
        .collect();
    let found = match select_platform(&described, host_architecture()) {
        Some(host) => candidates
            .iter()
            .find(|entry| entry.digest == host.digest)
            .copied(),
        None => candidates.first().copied(),
    };
    found.ok_or_else(|| match selector {
        Selector::First => "index.json lists no manifests".to_owned(),
        Selector::RefName(tag) => {
            format!(
                "index.json has no manifest named {tag:?} ({REF_NAME_ANNOTATION}); {}",
                names()
            )
        }
        Selector::Reference(reference) => {
            format!("index.json has no image named {reference}; {}", names())
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn select_archive_entry<'a>(
    entries: &'a [ArchiveEntry],
    selector: &Selector<'_>,
) -> LocalResult<&'a ArchiveEntry> {
    match selector {
        Selector::First => entries
            .first()
            .ok_or_else(|| "manifest.json lists no images".to_owned()),
        Selector::RefName(name) => Err(format!("cannot select {name:?} in manifest.json")),
        Selector::Reference(reference) => entries
            .iter()
            .find(|entry| {
                entry.repo_tags.iter().flatten().any(|tag| {
                    tag.parse::<ImageReference>()
                        .is_ok_and(|tag| &tag == *reference)
                })
            })
            .ok_or_else(|| {
                let tags: Vec<&str> = entries
                    .iter()
                    .flat_map(|entry| entry.repo_tags.iter().flatten())
                    .map(String::as_str)
                    .collect();
                format!(
                    "manifest.json has no image tagged {reference}; its RepoTags are {}",
                    if tags.is_empty() {
                        "empty".to_owned()
                    } else {
                        tags.join(", ")
                    }
                )
            }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MadeManifest {
    schema_version: u32,
    media_type: &'static str,
    config: MadeDescriptor,
    layers: Vec<MadeDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MadeDescriptor {
    media_type: &'static str,
    digest: Digest,
    size: u64,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::image::Manifest;

    /// Writes a one-layer image whose layer contains `hello.txt`, as skopeo's docker-archive
    /// format does, and returns the layer's diff ID.
    fn write_legacy_archive(path: &Path, corrupt_diff_id: bool) -> Digest {
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(6);
        header.set_mode(0o644);
        layer
            .append_data(&mut header, "hello.txt", &b"hello\n"[..])
            .unwrap();
        let layer = layer.into_inner().unwrap();
        let diff_id = Digest::of(&layer);
        let claimed = if corrupt_diff_id {
            Digest::of(b"something else")
        } else {
            diff_id.clone()
        };
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{claimed}"]}}}}"#
        );
        let manifest = r#"[{"Config":"config.json","RepoTags":["example/hello:1"],"Layers":["abc/layer.tar"]}]"#;
        let mut archive = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            ("config.json", config.as_bytes()),
            ("abc/layer.tar", &layer[..]),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            archive.append_data(&mut header, name, data).unwrap();
        }
        archive.finish().unwrap();
        diff_id
    }

    #[test]
    fn legacy_archive_gets_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let diff_id = write_legacy_archive(&path, false);
        let source: ImageSource = format!("docker-archive:{}:example/hello:1", path.display())
            .parse()
            .unwrap();
        let image = LocalImage::open(&source).unwrap();
        let (root, digest) = image.root();
        assert_eq!(&Digest::of(root), digest);
        let Manifest::Image { config, layers } = Manifest::parse(root).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, diff_id);
        assert_eq!(
            layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );

        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let mut copied = 0;
        image
            .copy_blob(&layers[0].digest, layers[0].size, &store, &mut |n| {
                copied += n
            })
            .unwrap();
        assert_eq!(copied, layers[0].size);
        image
            .copy_blob(&config.digest, config.size, &store, &mut |_| {})
            .unwrap();
        assert!(store.contains(&config.digest));
        assert!(store.contains(&diff_id));
    }

    #[test]
    fn legacy_archive_checks_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let diff_id = write_legacy_archive(&path, true);
        let source: ImageSource = format!("docker-archive:{}", path.display())
            .parse()
            .unwrap();
        let image = LocalImage::open(&source).unwrap();
        let Manifest::Image { layers, .. } = Manifest::parse(image.root().0).unwrap() else {
            panic!("not an image manifest");
        };
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let Err(CopyError::Source(reason)) =
            image.copy_blob(&layers[0].digest, layers[0].size, &store, &mut |_| {})
        else {
            panic!("a layer that does not match its diff ID was copied");
        };
        assert!(reason.contains("abc/layer.tar"), "{reason}");
        assert!(reason.contains(&diff_id.to_string()), "{reason}");
        assert!(!store.contains(&layers[0].digest));
    }

    #[test]
    fn layout_entries_prefer_the_host_platform() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let mut entries = Vec::new();
        for architecture in ["other", host_architecture()] {
            let manifest = format!(r#"{{"schemaVersion":2,"note":"{architecture}"}}"#);
            let digest = Digest::of(manifest.as_bytes());
            std::fs::write(blobs.join(digest.encoded()), &manifest).unwrap();
            entries.push(format!(
                r#"{{"digest":"{digest}","size":{},"platform":{{"os":"linux","architecture":"{architecture}"}},"annotations":{{"org.opencontainers.image.ref.name":"app"}}}}"#,
                manifest.len()
            ));
        }
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries.join(",")
        );
        std::fs::write(dir.path().join("index.json"), index).unwrap();

        for source in [
            format!("oci:{}", dir.path().display()),
            format!("oci:{}:app", dir.path().display()),
        ] {
            let image = LocalImage::open(&source.parse().unwrap()).unwrap();
            let root = String::from_utf8(image.root().0.to_vec()).unwrap();
            assert!(root.contains(host_architecture()), "{source}: {root}");
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        write_legacy_archive(&path, false);
        let source: ImageSource = format!("docker-archive:{}:other:2", path.display())
            .parse()
            .unwrap();
        let error = LocalImage::open(&source).unwrap_err();
        assert_eq!(
            error,
            "manifest.json has no image tagged docker.io/library/other:2; its RepoTags are example/hello:1"
        );
    }
}
