//! Image sources: a registry reference, an OCI image layout directory, or an archive
//! written by `docker save`.
//!
//! The text forms follow skopeo's transport names:
//!
//! ```text
//! python:3.12-alpine                  a registry reference, normalised as Docker does
//! oci:DIR[:REF]                       an OCI image layout; REF is matched against the
//!                                     org.opencontainers.image.ref.name annotation
//! docker-archive:FILE[:NAME:TAG]      a `docker save` tar; NAME:TAG is matched against
//!                                     its RepoTags
//! ```
//!
//! The path ends at the first `:` after the prefix, so paths that contain `:` cannot be
//! named. Relative paths are made absolute against the working directory when parsed, so
//! the same file always has the same image record.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::reference::{ImageReference, ReferenceError};

const OCI_PREFIX: &str = "oci:";
const DOCKER_ARCHIVE_PREFIX: &str = "docker-archive:";

/// An image source: a registry reference or a local image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// An image in a registry.
    Registry(ImageReference),
    /// An OCI image layout directory (`index.json`, `oci-layout`, `blobs/`).
    OciLayout {
        /// The absolute path of the layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to select; the first manifest if `None`.
        tag: Option<String>,
    },
    /// A tar archive written by `docker save` or `skopeo copy … docker-archive:`.
    DockerArchive {
        /// The absolute path of the archive.
        file: PathBuf,
        /// The normalised reference to select among the archive's RepoTags; the first
        /// image if `None`.
        reference: Option<ImageReference>,
    },
}

impl ImageSource {
    /// Reports whether the source is on this host, so resolving it needs no network.
    pub fn is_local(&self) -> bool {
        !matches!(self, ImageSource::Registry(_))
    }

    /// Returns the registry reference of a registry source.
    pub fn registry_reference(&self) -> Option<&ImageReference> {
        match self {
            ImageSource::Registry(reference) => Some(reference),
            _ => None,
        }
    }
}

impl From<ImageReference> for ImageSource {
    fn from(reference: ImageReference) -> ImageSource {
        ImageSource::Registry(reference)
    }
}

impl From<&ImageReference> for ImageSource {
    fn from(reference: &ImageReference) -> ImageSource {
        ImageSource::Registry(reference.clone())
    }
}

impl From<&ImageSource> for ImageSource {
    fn from(source: &ImageSource) -> ImageSource {
        source.clone()
    }
}

impl FromStr for ImageSource {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<ImageSource, ReferenceError> {
        let invalid = |reason: &str| ReferenceError {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = text.strip_prefix(OCI_PREFIX) {
            let (path, tag) = split_path(rest);
            let dir = absolute(path).map_err(|reason| invalid(&reason))?;
            if tag.is_some_and(str::is_empty) {
                return Err(invalid("the reference after the directory is empty"));
            }
            return Ok(ImageSource::OciLayout {
                dir,
                tag: tag.map(str::to_owned),
            });
        }
        if let Some(rest) = text.strip_prefix(DOCKER_ARCHIVE_PREFIX) {
            let (path, name) = split_path(rest);
            let file = absolute(path).map_err(|reason| invalid(&reason))?;
            let reference = match name {
                None => None,
                Some(name) => Some(name.parse::<ImageReference>().map_err(|e| {
                    invalid(&format!("invalid image name after the archive path: {e}"))
                })?),
            };
            return Ok(ImageSource::DockerArchive { file, reference });
        }
        text.parse().map(ImageSource::Registry)
    }
}

/// Splits `PATH[:REST]` at the first `:`.
fn split_path(text: &str) -> (&str, Option<&str>) {
    match text.split_once(':') {
        Some((path, rest)) => (path, Some(rest)),
        None => (text, None),
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("the path is empty".to_owned());
    }
    std::path::absolute(Path::new(path))
        .map_err(|e| format!("cannot make {path:?} an absolute path: {e}"))
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(reference) => write!(f, "{reference}"),
            ImageSource::OciLayout { dir, tag } => {
                write!(f, "{OCI_PREFIX}{}", dir.display())?;
                match tag {
                    Some(tag) => write!(f, ":{tag}"),
                    None => Ok(()),
                }
            }
            ImageSource::DockerArchive { file, reference } => {
                write!(f, "{DOCKER_ARCHIVE_PREFIX}{}", file.display())?;
                match reference {
                    Some(reference) => write!(f, ":{reference}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_are_normalised() {
        let source: ImageSource = "busybox".parse().unwrap();
        assert_eq!(source.to_string(), "docker.io/library/busybox:latest");
        assert!(!source.is_local());
        assert_eq!(
            source.registry_reference().unwrap().repository(),
            "library/busybox"
        );
    }

    #[test]
    fn oci_layouts_with_and_without_tag() {
        let source: ImageSource = "oci:/srv/layout:busybox-amd64".parse().unwrap();
        assert_eq!(
            source,
            ImageSource::OciLayout {
                dir: PathBuf::from("/srv/layout"),
                tag: Some("busybox-amd64".to_owned()),
            }
        );
        assert_eq!(source.to_string(), "oci:/srv/layout:busybox-amd64");
        assert!(source.is_local());

        let source: ImageSource = "oci:/srv/layout".parse().unwrap();
        assert_eq!(source.to_string(), "oci:/srv/layout");

        // A ref.name may itself be a full reference with a colon.
        let source: ImageSource = "oci:/srv/layout:docker.io/library/busybox:1"
            .parse()
            .unwrap();
        assert_eq!(
            source,
            ImageSource::OciLayout {
                dir: PathBuf::from("/srv/layout"),
                tag: Some("docker.io/library/busybox:1".to_owned()),
            }
        );
    }

    #[test]
    fn relative_paths_become_absolute() {
        let source: ImageSource = "oci:layout".parse().unwrap();
        let expected = std::env::current_dir().unwrap().join("layout");
        assert_eq!(
            source,
            ImageSource::OciLayout {
                dir: expected,
                tag: None
            }
        );
    }

    #[test]
    fn docker_archives_with_and_without_name() {
        let source: ImageSource = "docker-archive:/tmp/x.tar".parse().unwrap();
        assert_eq!(source.to_string(), "docker-archive:/tmp/x.tar");
        let source: ImageSource = "docker-archive:/tmp/x.tar:busybox:test".parse().unwrap();
        assert_eq!(
            source.to_string(),
            "docker-archive:/tmp/x.tar:docker.io/library/busybox:test"
        );
    }

    #[test]
    fn invalid_local_sources_are_rejected() {
        for text in [
            "oci:",
            "oci::tag",
            "oci:/dir:",
            "docker-archive:",
            "docker-archive:/x.tar:Not A Name",
        ] {
            let result = text.parse::<ImageSource>();
            assert!(result.is_err(), "{text:?} parsed as {result:?}");
        }
    }
}
