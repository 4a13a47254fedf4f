//! The JSON documents of an image: manifests, indexes and the image configuration, as the
//! OCI image specification and Docker's schema 2 define them, parsed just far enough to
//! pull and run an image.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// A descriptor: the digest, size and media type of a blob.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    #[serde(default)]
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The platform, for entries of an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    /// CPU architecture in Go's naming (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v8` for arm64), if any.
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest document as fetched by tag or digest.
#[derive(Debug)]
pub enum Manifest {
    /// An OCI index or Docker manifest list: one manifest per platform.
    Index(Vec<Descriptor>),
    /// An image manifest: a config and layers, bottom layer first.
    Image {
        /// The image configuration blob.
        config: Descriptor,
        /// The layer blobs in the order they are applied.
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses a manifest or index. The `mediaType` field decides when present (it is
    /// optional in OCI documents); otherwise the presence of `manifests` does.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest JSON: {e}"))?;
        if raw.schema_version != Some(2) {
            return Err(format!(
                "unsupported manifest schemaVersion {:?}: only schema 2 is supported",
                raw.schema_version
            ));
        }
        let is_index = match raw.media_type.as_deref() {
            Some(
                "application/vnd.oci.image.index.v1+json"
                | "application/vnd.docker.distribution.manifest.list.v2+json",
            ) => true,
            Some(
                "application/vnd.oci.image.manifest.v1+json"
                | "application/vnd.docker.distribution.manifest.v2+json",
            ) => false,
            Some(other) => return Err(format!("unsupported manifest media type {other}")),
            None => raw.manifests.is_some(),
        };
        if is_index {
            return Ok(Manifest::Index(raw.manifests.unwrap_or_default()));
        }
        let config = raw
            .config
            .ok_or_else(|| "image manifest has no config descriptor".to_owned())?;
        Ok(Manifest::Image {
            config,
            layers: raw.layers.unwrap_or_default(),
        })
    }
}

/// The Go architecture name of the host, as image indexes use it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Picks the manifest for `linux/<architecture>` from an index; for arm64, an entry with
/// variant `v8` or no variant.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    architecture: &str,
) -> Option<&'a Descriptor> {
    entries.iter().find(|entry| {
        entry.platform.as_ref().is_some_and(|platform| {
            platform.os == "linux"
                && platform.architecture == architecture
                && (architecture != "arm64"
                    || matches!(platform.variant.as_deref(), None | Some("v8")))
        })
    })
}

/// The image configuration, reduced to what running a container needs.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ImageConfig {
    /// CPU architecture the image was built for.
    #[serde(default)]
    pub architecture: String,
    /// Operating system the image was built for.
    #[serde(default)]
    pub os: String,
    /// Default process settings.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The layer digests of the uncompressed tars.
    pub rootfs: RootFs,
}

/// The defaults for the container process (`config` in the image configuration).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// The entrypoint, prepended to the command.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The default command, replaced by the command given at run time.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// The `rootfs` section of the image configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The uncompressed digest of each layer, bottom layer first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parse_oci_manifest_without_media_type() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":20}}]}}"#
        );
        match Manifest::parse(json.as_bytes()).unwrap() {
            Manifest::Image { config, layers } => {
                assert_eq!(config.digest.to_string(), D1);
                assert_eq!(layers.len(), 1);
                assert_eq!(
                    layers[0].media_type,
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                );
                assert_eq!(layers[0].size, 20);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parse_docker_list_and_select_platform() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D2}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Manifest::Index(entries) = Manifest::parse(json.as_bytes()).unwrap() else {
            panic!("not an index");
        };
        assert_eq!(
            select_platform(&entries, "amd64")
                .unwrap()
                .digest
                .to_string(),
            D2
        );
        assert_eq!(
            select_platform(&entries, "arm64")
                .unwrap()
                .digest
                .to_string(),
            D1
        );
        assert!(select_platform(&entries, "s390x").is_none());
    }

    #[test]
    fn parse_rejects_schema_one_and_bad_digests() {
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#).is_err());
        let bad = r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn parse_image_config() {
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/srv","User":"1000:1000"}},
            "rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}"]}}}}"#
        );
        let config: ImageConfig = serde_json::from_str(&json).unwrap();
        let process = config.config.unwrap();
        assert_eq!(process.env.unwrap(), vec!["PATH=/bin"]);
        assert_eq!(process.cmd.unwrap(), vec!["sh"]);
        assert_eq!(process.working_dir.as_deref(), Some("/srv"));
        assert_eq!(process.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.rootfs.diff_ids.len(), 2);
    }
}
