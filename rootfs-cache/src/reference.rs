//! Image references, normalised the way Docker normalises them.
//!
//! `python:3.12-alpine` means `docker.io/library/python:3.12-alpine`; a reference without a
//! tag or digest means `:latest`; `@sha256:` digests are kept. Parsing is oci-spec's
//! distribution [`Reference`], which implements the grammar of the Docker reference library.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use crate::digest::Digest;

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    inner: Reference,
}

/// An image reference that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The text as the user gave it.
    pub reference: String,
    /// The reason it was rejected.
    pub reason: String,
}

impl ImageReference {
    /// The registry host (and port) the reference names, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path, e.g. `library/python`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The manifest digest, if the reference pins one.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// The oci-client form of the reference.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }

    /// Returns the same repository pinned to `digest`, for fetching a child manifest.
    pub fn with_digest(&self, digest: &Digest) -> ImageReference {
        ImageReference {
            inner: Reference::with_digest(
                self.inner.registry().to_owned(),
                self.inner.repository().to_owned(),
                digest.to_string(),
            ),
        }
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<ImageReference, ReferenceError> {
        let invalid = |reason: String| ReferenceError {
            reference: text.to_owned(),
            reason,
        };
        let inner: Reference = text.parse().map_err(|e| invalid(format!("{e}")))?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase".to_owned()));
        }
        if let Some(digest) = inner.digest() {
            digest
                .parse::<Digest>()
                .map_err(|e| invalid(e.to_string()))?;
        }
        // oci-spec leaves the tag empty when only a digest is given, as Docker does, and
        // fills in `latest` itself when neither is given.
        Ok(ImageReference { inner })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.whole())
    }
}

/// Reports whether `registry` (a `host` or `host:port`) is on the loopback interface.
///
/// Docker falls back to plain HTTP for such registries without configuration, and so does this crate.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        // A bracketed IPv6 literal, with or without a port.
        _ if registry.starts_with('[') => registry
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or_default(),
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalised(text: &str) -> String {
        text.parse::<ImageReference>().unwrap().to_string()
    }

    #[test]
    fn short_names_get_docker_hub_and_library() {
        assert_eq!(
            normalised("python:3.12-alpine"),
            "docker.io/library/python:3.12-alpine"
        );
        assert_eq!(normalised("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(normalised("someuser/tool:1"), "docker.io/someuser/tool:1");
    }

    #[test]
    fn explicit_registries_are_kept() {
        let reference: ImageReference = "127.0.0.1:5000/library/busybox:zstd".parse().unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "library/busybox");
        assert_eq!(reference.tag(), Some("zstd"));
        assert_eq!(
            normalised("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalised("ghcr.io/owner/image:v1"),
            "ghcr.io/owner/image:v1"
        );
    }

    #[test]
    fn digests_are_kept() {
        let text =
            "busybox@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let reference: ImageReference = text.parse().unwrap();
        assert_eq!(
            reference.digest().unwrap().encoded(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(reference.to_string(), format!("docker.io/library/{text}"));
    }

    #[test]
    fn invalid_references_are_rejected() {
        for text in [
            "",
            "UPPER/case",
            "busybox@sha256:123",
            "a:b:c",
            "busybox@md5:00",
        ] {
            let result = text.parse::<ImageReference>();
            assert!(result.is_err(), "{text:?} parsed as {result:?}");
        }
    }

    #[test]
    fn loopback_registries() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("127.1.2.3"));
        assert!(is_loopback_registry("localhost:443"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("docker.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
        assert!(!is_loopback_registry("localhost.example.com"));
    }
}
