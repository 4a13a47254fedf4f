//! Registry access: mirrors, plain HTTP for loopback registries, credentials, and the
//! manifest and blob requests of the OCI distribution specification (through oci-client).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::blobs::{BlobError, BlobStore};
use crate::digest::Digest;
use crate::reference::{ImageReference, is_loopback_registry};

/// How to reach registries: mirrors, extra CA certificates and where credentials are.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Registry host to mirror URL, e.g. `docker.io` → `http://127.0.0.1:5000`. A mirror
    /// replaces the registry for every request; nothing is sent to the original.
    pub mirrors: BTreeMap<String, String>,
    /// Registries (`host:port`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// PEM files of CA certificates trusted in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// A Docker `config.json` with credentials; `None` reads `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// Failures of registry requests, each naming the registry and the reference or digest.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an error, or could not be reached.
    #[error("{operation} {target} from {registry} failed: {source}")]
    Request {
        /// `fetch manifest` or `fetch blob`.
        operation: &'static str,
        /// The reference or digest requested.
        target: String,
        /// The registry address requests went to (the mirror, when one is configured).
        registry: String,
        /// oci-client's error.
        source: oci_client::errors::OciDistributionError,
    },
    /// The blob received does not match its descriptor.
    #[error("blob {digest} from {registry}: {source}")]
    Blob {
        /// The digest requested.
        digest: Digest,
        /// The registry address requests went to.
        registry: String,
        /// The size or digest check that failed.
        source: BlobError,
    },
    /// The connection failed while a blob was being received.
    #[error("download of blob {digest} from {registry} failed after {received} bytes: {source}")]
    Transfer {
        /// The digest requested.
        digest: Digest,
        /// The registry address requests went to.
        registry: String,
        /// Bytes received before the failure.
        received: u64,
        /// The transport error.
        source: std::io::Error,
    },
    /// A configuration value is unusable (a CA file, a mirror URL, credentials).
    #[error("{0}")]
    Config(String),
}

/// The manifest media types this client asks for, newest format first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

/// How a client reaches its registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
    /// HTTPS, falling back to plain HTTP when the TLS connection fails, as Docker does for
    /// loopback and insecure registries.
    HttpsThenHttp,
}

/// A registry client for one image reference.
pub struct RegistryClient {
    https: Client,
    http: Client,
    scheme: Scheme,
    /// Set once a request in [`Scheme::HttpsThenHttp`] mode succeeded over plain HTTP.
    use_http: std::sync::atomic::AtomicBool,
    auth: RegistryAuth,
    /// The address requests go to: the reference's registry or its mirror.
    endpoint: String,
}

impl RegistryClient {
    /// Creates a client for pulling `reference` under `config`.
    pub fn new(config: &RegistryConfig, reference: &ImageReference) -> Result<Self, RegistryError> {
        let (endpoint, explicit) = match config.mirrors.get(reference.registry()) {
            Some(mirror) => parse_mirror(mirror)?,
            None => (reference.registry().to_owned(), None),
        };
        let scheme = match explicit {
            Some(scheme) => scheme,
            None if is_loopback_registry(&endpoint)
                || config.insecure.iter().any(|host| host == &endpoint) =>
            {
                Scheme::HttpsThenHttp
            }
            None => Scheme::Https,
        };

        let mut extra_root_certificates = Vec::new();
        for path in &config.ca_files {
            let data = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let client = |protocol| {
            Client::new(ClientConfig {
                protocol,
                extra_root_certificates: extra_root_certificates.clone(),
                platform_resolver: None,
                connect_timeout: Some(std::time::Duration::from_secs(15)),
                read_timeout: Some(std::time::Duration::from_secs(60)),
                ..Default::default()
            })
        };
        let auth = credentials_for(config.docker_config.as_deref(), &endpoint)?;
        Ok(RegistryClient {
            https: client(ClientProtocol::Https),
            http: client(ClientProtocol::Http),
            use_http: std::sync::atomic::AtomicBool::new(scheme == Scheme::Http),
            scheme,
            auth,
            endpoint,
        })
    }

    fn client(&self) -> &Client {
        if self.use_http.load(std::sync::atomic::Ordering::Relaxed) {
            &self.http
        } else {
            &self.https
        }
    }

    /// The registry address requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn target(&self, reference: &ImageReference) -> Reference {
        let mut target = reference.as_oci().clone();
        if self.endpoint != reference.registry() {
            target.set_mirror_registry(self.endpoint.clone());
        }
        target
    }

    /// Fetches a manifest or index by tag or digest. oci-client checks the bytes against the
    /// digest in the reference, if any, and against the registry's `Docker-Content-Digest`.
    pub async fn fetch_manifest(
        &self,
        reference: &ImageReference,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let target = self.target(reference);
        let mut result = self
            .client()
            .pull_manifest_raw(&target, &self.auth, MANIFEST_MEDIA_TYPES)
            .await;
        let mut operation = "fetch manifest";
        if self.scheme == Scheme::HttpsThenHttp
            && !self.use_http.load(std::sync::atomic::Ordering::Relaxed)
            && result.as_ref().is_err_and(is_transport_error)
        {
            let retry = self
                .http
                .pull_manifest_raw(&target, &self.auth, MANIFEST_MEDIA_TYPES)
                .await;
            match retry {
                Ok(answer) => {
                    self.use_http
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    result = Ok(answer);
                }
                // An HTTPS-only registry rejects plain HTTP with 400, and a dead one fails
                // both ways: the HTTPS error explains more in both cases.
                Err(error) if is_transport_error(&error) || is_status(&error, 400) => {
                    operation = "fetch manifest (over HTTPS, then plain HTTP)";
                }
                Err(error) => result = Err(error),
            }
        }
        let (bytes, digest) = result.map_err(|source| match verification_failure(&source) {
            // oci-client checked the bytes against the digest requested or the registry's
            // Docker-Content-Digest: report that as content that does not match its digest.
            Some((expected, actual)) => RegistryError::Blob {
                digest: expected.clone(),
                registry: self.endpoint.clone(),
                source: BlobError::DigestMismatch { expected, actual },
            },
            None => RegistryError::Request {
                operation,
                target: reference.to_string(),
                registry: self.endpoint.clone(),
                source,
            },
        })?;
        let digest: Digest = digest.parse().map_err(|e| {
            RegistryError::Config(format!(
                "registry {} returned an unusable digest for {reference}: {e}",
                self.endpoint
            ))
        })?;
        // Verify here as well: oci-client only compares against a digest the registry sent.
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(RegistryError::Blob {
                digest: digest.clone(),
                registry: self.endpoint.clone(),
                source: BlobError::DigestMismatch {
                    expected: digest,
                    actual,
                },
            });
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Downloads the blob `descriptor` of `reference`'s repository into `store`, checking
    /// its size and digest as the bytes arrive; `on_bytes` sees the size of each chunk.
    pub async fn fetch_blob(
        &self,
        reference: &ImageReference,
        digest: &Digest,
        size: u64,
        store: &BlobStore,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<PathBuf, RegistryError> {
        let target = self.target(reference);
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let request_error = |source| RegistryError::Request {
            operation: "fetch blob",
            target: digest.to_string(),
            registry: self.endpoint.clone(),
            source,
        };
        let blob_error = |source| RegistryError::Blob {
            digest: digest.clone(),
            registry: self.endpoint.clone(),
            source,
        };
        let mut stream = self
            .client()
            .pull_blob_stream(&target, &descriptor)
            .await
            .map_err(request_error)?;
        let mut writer = store.writer(digest, Some(size)).map_err(blob_error)?;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client reports a digest mismatch as a stream error after the last
                // chunk. The commit below checks size and digest itself and names both
                // values, which tells a truncated blob from a wrong one.
                Err(error) if is_verification_error(&error) => break,
                Err(source) => {
                    return Err(RegistryError::Transfer {
                        digest: digest.clone(),
                        registry: self.endpoint.clone(),
                        received: writer.written(),
                        source,
                    });
                }
            };
            writer.write_chunk(&chunk).map_err(blob_error)?;
            on_bytes(chunk.len() as u64);
        }
        writer.commit().map_err(blob_error)
    }
}

/// Returns the expected and actual digest of an oci-client digest check that failed.
fn verification_failure(
    error: &oci_client::errors::OciDistributionError,
) -> Option<(Digest, Digest)> {
    match error {
        oci_client::errors::OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError { expected, actual },
        ) => Some((expected.parse().ok()?, actual.parse().ok()?)),
        _ => None,
    }
}

/// Reports whether a blob stream error is oci-client's digest check at the end of the stream.
fn is_verification_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        .is_some_and(|inner| {
            matches!(
                inner,
                oci_client::errors::DigestError::VerificationError { .. }
            )
        })
}

fn is_transport_error(error: &oci_client::errors::OciDistributionError) -> bool {
    matches!(error, oci_client::errors::OciDistributionError::RequestError(e) if e.is_connect() || e.is_request())
}

fn is_status(error: &oci_client::errors::OciDistributionError, status: u16) -> bool {
    matches!(error, oci_client::errors::OciDistributionError::ServerError { code, .. } if *code == status)
}

/// Splits a mirror URL into `host:port` and its scheme, if the URL has one.
fn parse_mirror(mirror: &str) -> Result<(String, Option<Scheme>), RegistryError> {
    let (scheme, rest) = if let Some(rest) = mirror.strip_prefix("http://") {
        (Some(Scheme::Http), rest)
    } else if let Some(rest) = mirror.strip_prefix("https://") {
        (Some(Scheme::Https), rest)
    } else {
        (None, mirror)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(RegistryError::Config(format!(
            "invalid registry mirror {mirror:?}: expected a URL like http://127.0.0.1:5000"
        )));
    }
    Ok((host.to_owned(), scheme))
}

/// Finds credentials for `registry` in a Docker `config.json`, in the order Docker uses:
/// the credential helper `credHelpers.<host>`, else the helper `credsStore`, else
/// `auths.<host>` (`auth`, the base64 of `user:password`, or `username` and `password`).
/// A helper that has no credentials for the registry falls back to `auths`. No file or no
/// entry means anonymous access, which still follows a registry's Bearer-token challenge.
fn credentials_for(
    docker_config: Option<&Path>,
    registry: &str,
) -> Result<RegistryAuth, RegistryError> {
    let path = match docker_config {
        Some(path) => path.to_owned(),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(RegistryAuth::Anonymous),
            },
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => {
            return Err(RegistryError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let config: DockerConfig = serde_json::from_str(&text)
        .map_err(|e| RegistryError::Config(format!("invalid JSON in {}: {e}", path.display())))?;
    let keys: Vec<&str> = if registry == "docker.io" {
        vec![
            "docker.io",
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
        ]
    } else {
        vec![registry]
    };
    let matches = |key: &str| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        keys.iter().any(|k| *k == key || *k == host)
    };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, helper)| matches(key) && !helper.is_empty())
        .map(|(_, helper)| helper)
        .or(config.creds_store.as_ref())
        .filter(|helper| !helper.is_empty());
    if let Some(helper) = helper {
        // Docker stores Docker Hub credentials under its v1 index URL.
        let server = if registry == "docker.io" {
            "https://index.docker.io/v1/"
        } else {
            registry
        };
        if let Some(auth) = run_credential_helper(helper, server, &path)? {
            return Ok(auth);
        }
    }
    let entry = config.auths.iter().find(|(key, _)| matches(key));
    let Some((_, entry)) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    let Some(encoded) = &entry.auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    let invalid = || {
        RegistryError::Config(format!(
            "invalid auths.{registry}.auth in {}: expected base64 of user:password",
            path.display()
        ))
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (user, password) = decoded.split_once(':').ok_or_else(invalid)?;
    Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
}

/// Runs `docker-credential-<helper> get` with `server` on stdin, as the Docker credential
/// helper protocol defines. Returns `None` when the helper has no credentials for it.
fn run_credential_helper(
    helper: &str,
    server: &str,
    config_path: &Path,
) -> Result<Option<RegistryAuth>, RegistryError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let program = format!("docker-credential-{helper}");
    let failed = |reason: String| {
        RegistryError::Config(format!(
            "credential helper {program} (set in {}) failed for {server}: {reason}",
            config_path.display()
        ))
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| failed(format!("cannot write to its stdin: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot read its output: {e}")))?;
    if !output.status.success() {
        // The helpers print this message (to stdout) when they have no entry for `server`.
        let message = format!(
            "{} {}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if message.contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!("{}: {}", output.status, message.trim())));
    }
    let credentials: HelperCredentials = serde_json::from_slice(&output.stdout).map_err(|e| {
        failed(format!(
            "its output is not the expected JSON with Username and Secret: {e}"
        ))
    })?;
    // TODO: a "<token>" user name means Secret is an OAuth refresh token that `docker login`
    // stored. oci-client has no refresh-token flow, so such entries are rejected.
    if credentials.username == "<token>" {
        return Err(failed(
            "it returned an identity token, which agentkernel cannot use; log in with a user name and password".to_owned(),
        ));
    }
    Ok(Some(RegistryAuth::Basic(
        credentials.username,
        credentials.secret,
    )))
}

#[derive(serde::Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    /// The credential helper for every registry, e.g. `desktop` for docker-credential-desktop.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Credential helpers by registry host; they take precedence over `credsStore`.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// The output of `docker-credential-<helper> get`.
#[derive(serde::Deserialize)]
struct HelperCredentials {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls() {
        assert_eq!(
            parse_mirror("http://127.0.0.1:5000").unwrap(),
            ("127.0.0.1:5000".to_owned(), Some(Scheme::Http))
        );
        assert_eq!(
            parse_mirror("https://mirror.example:8443/").unwrap(),
            ("mirror.example:8443".to_owned(), Some(Scheme::Https))
        );
        assert!(parse_mirror("http://host/path").is_err());
        assert!(parse_mirror("").is_err());
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let encoded = base64::engine::general_purpose::STANDARD.encode("testuser:testpass");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"127.0.0.1:5001":{{"auth":"{encoded}"}},"https://index.docker.io/v1/":{{"username":"hub","password":"secret"}}}}}}"#),
        )
        .unwrap();
        match credentials_for(Some(&path), "127.0.0.1:5001").unwrap() {
            RegistryAuth::Basic(user, password) => {
                assert_eq!(user, "testuser");
                assert_eq!(password, "testpass");
            }
            other => panic!("unexpected {other:?}"),
        }
        match credentials_for(Some(&path), "docker.io").unwrap() {
            RegistryAuth::Basic(user, _) => assert_eq!(user, "hub"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            credentials_for(Some(&path), "127.0.0.1:5002").unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(matches!(
            credentials_for(Some(&dir.path().join("missing.json")), "x").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn missing_credential_helper_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credsStore":"agentkernel-no-such-helper","credHelpers":{"127.0.0.1:5001":""}}"#,
        )
        .unwrap();
        let error = credentials_for(Some(&path), "127.0.0.1:5002")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "credential helper docker-credential-agentkernel-no-such-helper (set in "
            ),
            "{error}"
        );
        assert!(
            error.contains("failed for 127.0.0.1:5002: cannot run it"),
            "{error}"
        );
        // An empty credHelpers entry falls back to the credsStore, as in Docker.
        assert!(credentials_for(Some(&path), "127.0.0.1:5001").is_err());
    }
}
