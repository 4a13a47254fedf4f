//! Image references, normalised the way Docker normalises them.
//!
//! `python:3.12-alpine` means `docker.io/library/python:3.12-alpine`; a reference without a
//! tag or digest means `:latest`; `@sha256:` digests are kept. The parser below follows the
//! grammar of the Docker reference library by hand: oci-spec's parser compiles a regular
//! expression on its first use, which took about 33 ms of CPU per process on a 2-core VM.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use crate::digest::Digest;

/// Maximum length of a repository path in the Docker grammar, registry host excluded.
const NAME_MAX: usize = 255;

/// Maximum length of a tag in the Docker grammar.
const TAG_MAX: usize = 128;

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
        let invalid = |reason: &str| ReferenceError {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(invalid("the reference is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest: Digest = digest.parse().map_err(|e| invalid(&format!("{e}")))?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        // A tag follows the last colon, unless a slash comes after that colon, which then
        // separates a registry port from the path.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(invalid(
                    "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
                ));
            }
        }
        let (registry, repository) = split_registry(name);
        if let Some(registry) = registry {
            if !is_registry(registry) {
                return Err(invalid(
                    "the registry is not a valid host name with an optional port",
                ));
            }
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(invalid(
                "a repository is made of '/'-separated lowercase letters and digits, joined by '.', '_', '__' or dashes",
            ));
        }
        let registry = match registry {
            None | Some("index.docker.io") => "docker.io",
            Some(registry) => registry,
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if repository.len() > NAME_MAX {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        let inner = match (tag, digest) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                registry.to_owned(),
                repository,
                tag.to_owned(),
                digest.to_string(),
            ),
            // Docker leaves the tag out when only a digest is given.
            (None, Some(digest)) => {
                Reference::with_digest(registry.to_owned(), repository, digest.to_string())
            }
            (tag, None) => Reference::with_tag(
                registry.to_owned(),
                repository,
                tag.unwrap_or("latest").to_owned(),
            ),
        };
        Ok(ImageReference { inner })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.whole())
    }
}

/// Splits `name` into its registry, when it names one, and the repository path.
///
/// As in Docker, the first path component is a registry when it contains a `.` or a `:`, or is
/// `localhost`. Otherwise the whole name is a Docker Hub repository.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Reports whether `registry` is `host[:port]` with a host of dot-separated labels of letters,
/// digits and inner dashes.
fn is_registry(registry: &str) -> bool {
    let host = match registry.split_once(':') {
        Some((host, port)) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            host
        }
        None => registry,
    };
    host.split('.').all(|label| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
            _ => false,
        }
    })
}

/// Reports whether `component` is runs of `[a-z0-9]` joined by `.`, `_`, `__` or any number of
/// dashes.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut index = 0;
    loop {
        let run = bytes[index..]
            .iter()
            .take_while(|b| alphanumeric(b))
            .count();
        if run == 0 {
            return false;
        }
        index += run;
        if index == bytes.len() {
            return true;
        }
        let separator = bytes[index..]
            .iter()
            .take_while(|b| !alphanumeric(b))
            .count();
        let valid = match &bytes[index..index + separator] {
            b"." | b"_" | b"__" => true,
            dashes => dashes.iter().all(|b| *b == b'-'),
        };
        if !valid {
            return false;
        }
        index += separator;
    }
}

/// Reports whether `tag` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    bytes.len() <= TAG_MAX
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
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

    /// The parser agrees with oci-spec's regular-expression parser on every accepted and
    /// rejected case, except for uppercase names, which oci-spec also rejects.
    #[test]
    fn agrees_with_oci_spec() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            "busybox".to_owned(),
            "busybox:1.36".to_owned(),
            "test.com:tag".to_owned(),
            "test.com:5000".to_owned(),
            "test.com/repo:tag".to_owned(),
            "test:5000/repo".to_owned(),
            "test:5000/repo:tag".to_owned(),
            format!("test:5000/repo@sha256:{hex}"),
            format!("test:5000/repo:tag@sha256:{hex}"),
            "index.docker.io/busybox".to_owned(),
            "docker.io/someuser/tool".to_owned(),
            "localhost/app".to_owned(),
            "localhost:5000/a/b/c:v1.2-rc_3".to_owned(),
            "a.b-c.d:443/x__y/z-----w/v.u_t".to_owned(),
            "sub-dom1.foo.com/bar/baz/quux".to_owned(),
            "foo_bar.com:8080".to_owned(),
            "foo/foo_bar.com:8080".to_owned(),
            "x".repeat(255),
            "x".repeat(256),
            format!("repo:{}", "t".repeat(128)),
            format!("repo:{}", "t".repeat(129)),
            ":justtag".to_owned(),
            "@sha256:00".to_owned(),
            "repo@sha256:ffff".to_owned(),
            "repo@sha512:ffff".to_owned(),
            "validname@invaliddigest:ffff".to_owned(),
            "a/.b".to_owned(),
            "a/b.".to_owned(),
            "a/b___c".to_owned(),
            "a/b_-c".to_owned(),
            "a//b".to_owned(),
            "-host.com/repo".to_owned(),
            "host-.com/repo".to_owned(),
            "host..com/repo".to_owned(),
            "host.com:/repo".to_owned(),
            "host.com:abc/repo".to_owned(),
            "[::1]:5000/repo".to_owned(),
            "repo:-tag".to_owned(),
            "repo:.tag".to_owned(),
            "repo:ta+g".to_owned(),
            "repo:".to_owned(),
            "a:b:c".to_owned(),
            "a/b:c/d".to_owned(),
            "\u{e9}t\u{e9}".to_owned(),
            "repo:t\u{e9}".to_owned(),
        ];
        for case in &cases {
            let ours = case.parse::<ImageReference>().map(|r| r.to_string());
            let theirs = Reference::try_from(case.as_str()).map(|r| r.whole());
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{case:?}"),
                (Err(_), Err(_)) => {}
                // oci-spec's tag pattern uses Unicode word characters; Docker's is ASCII.
                (Err(_), Ok(_)) if !case.is_ascii() => {}
                _ => panic!("{case:?}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
    }
}
