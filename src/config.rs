//! agentkernel.toml: the project's sandbox settings.
//!
//! Read from `--config FILE`, else `./agentkernel.toml` when it exists. Command-line flags
//! override the file, and the file overrides the profile's defaults. Unknown keys produce a
//! warning that names the key and the file; invalid values are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::profile::{NetworkMode, Profile};

/// The parsed file; every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[sandbox]`.
    pub sandbox: SandboxSection,
    /// `[security]`.
    pub security: SecuritySection,
    /// `[resources]`.
    pub resources: ResourcesSection,
    /// `[registry]`.
    pub registry: RegistrySection,
}

/// `[sandbox]`: what runs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SandboxSection {
    /// The sandbox name used with `--keep`.
    pub name: Option<String>,
    /// A language shorthand (`python`, `node`, `go`, `rust`, `ruby`, `base`).
    pub runtime: Option<String>,
    /// An image reference; overrides `runtime`.
    pub base_image: Option<String>,
}

/// `[security]`: the profile and its overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SecuritySection {
    /// `permissive`, `moderate` or `restrictive`.
    pub profile: Option<Profile>,
    /// `none`, `isolated` or `host`; `false` means `none` and `true` keeps the profile's mode.
    #[serde(deserialize_with = "network_setting")]
    pub network: Option<NetworkMode>,
    /// Whether the current directory is mounted at /workspace.
    pub mount_cwd: Option<bool>,
    /// Path of an OCI or Docker seccomp JSON file that replaces the built-in filter, relative
    /// to the config file.
    pub seccomp: Option<PathBuf>,
}

/// `[resources]`: limits.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResourcesSection {
    /// CPUs the sandbox may use.
    pub vcpus: Option<f64>,
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
}

/// `[registry]`: where images come from.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegistrySection {
    /// Registry host to mirror URL, e.g. `"docker.io" = "http://127.0.0.1:5000"`.
    pub mirrors: BTreeMap<String, String>,
    /// Registries reached over plain HTTP (loopback registries always are).
    pub insecure: Vec<String>,
    /// PEM CA certificate files trusted for registry TLS, relative to the config file.
    pub ca_files: Vec<PathBuf>,
    /// Maximum uncompressed size of one image layer in MiB. A pull of a larger layer
    /// fails, and `None` keeps the default of 16384 (16 GiB).
    pub max_layer_mb: Option<u64>,
}

const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("sandbox", &["name", "runtime", "base_image"]),
    (
        "security",
        &[
            "profile",
            "network",
            "mount_cwd",
            "seccomp",
            "domains",
            "commands",
        ],
    ),
    ("resources", &["vcpus", "memory_mb"]),
    (
        "registry",
        &["mirrors", "insecure", "ca_files", "max_layer_mb"],
    ),
    ("agent", &["preferred", "compatibility_mode"]),
    ("network", &["vsock_cid"]),
    ("build", &[]),
    ("files", &[]),
];

impl Config {
    /// Loads `explicit`, or `./agentkernel.toml` if present, or the empty configuration.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => {
                let local = PathBuf::from("agentkernel.toml");
                if !local.is_file() {
                    return Ok(Config::default());
                }
                local
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = Config::parse(&text, &path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for ca in &mut config.registry.ca_files {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(seccomp) = &mut config.security.seccomp {
            if seccomp.is_relative() {
                *seccomp = base.join(&*seccomp);
            }
        }
        Ok(config)
    }

    /// Parses the text of `path`, warning on stderr about keys this version does not use.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
        let table: toml::Table =
            toml::from_str(text).with_context(|| format!("invalid TOML in {}", path.display()))?;
        for warning in unknown_keys(&table) {
            eprintln!(
                "agentkernel: warning: unknown key {warning} in {}, ignored",
                path.display()
            );
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid_value(text, path, e))?;
        if let Some(vcpus) = config.resources.vcpus {
            if !(vcpus > 0.0 && vcpus.is_finite()) {
                bail!(
                    "{}: invalid resources.vcpus = {vcpus}: expected a number of CPUs above 0",
                    path.display()
                );
            }
        }
        if config.registry.max_layer_mb == Some(0) {
            bail!(
                "{}: invalid registry.max_layer_mb = 0: expected a size in MiB above 0",
                path.display()
            );
        }
        if config.resources.memory_mb == Some(0) {
            bail!(
                "{}: invalid resources.memory_mb = 0: expected a limit in MiB above 0",
                path.display()
            );
        }
        Ok(config)
    }
}

/// Reads `[security] network`: a mode name, or a boolean for files written before the modes
/// existed.
fn network_setting<'de, D>(deserializer: D) -> Result<Option<NetworkMode>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = toml::Value::deserialize(deserializer)?;
    match &value {
        toml::Value::Boolean(false) => Ok(Some(NetworkMode::None)),
        toml::Value::Boolean(true) => Ok(None),
        toml::Value::String(name) => match name.as_str() {
            "none" => Ok(Some(NetworkMode::None)),
            "isolated" => Ok(Some(NetworkMode::Isolated)),
            "host" => Ok(Some(NetworkMode::Host)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid security.network = {value}: expected \"none\", \"isolated\" or \"host\""
            ))),
        },
        _ => Err(serde::de::Error::custom(format!(
            "invalid security.network = {value}: expected \"none\", \"isolated\" or \"host\""
        ))),
    }
}

/// Turns a deserialization error into a message that names the file and the key. Parsing the
/// text again gives the error a span, and the key is read from the line it points at.
fn invalid_value(text: &str, path: &Path, error: toml::de::Error) -> anyhow::Error {
    let message = error.message().to_string();
    let key = toml::from_str::<Config>(text)
        .err()
        .and_then(|spanned| spanned.span())
        .and_then(|span| key_at(text, span.start));
    match key {
        Some(key) if !message.contains(&key) => {
            anyhow::anyhow!("{}: invalid {key}: {message}", path.display())
        }
        _ => anyhow::anyhow!("{}: {message}", path.display()),
    }
}

/// Returns `section.key` for the `key = value` line that contains byte `offset` of `text`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut section = String::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") {
            section = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        if offset < start + line.len() {
            let (key, _) = line.split_once('=')?;
            let key = key.trim();
            return Some(match section.is_empty() {
                true => key.to_string(),
                false => format!("{section}.{key}"),
            });
        }
        start += line.len();
    }
    None
}

fn unknown_keys(table: &toml::Table) -> Vec<String> {
    let mut unknown = Vec::new();
    for (section, value) in table {
        let Some((_, keys)) = KNOWN_KEYS.iter().find(|(name, _)| name == section) else {
            unknown.push(section.clone());
            continue;
        };
        if keys.is_empty() {
            continue;
        }
        if let Some(inner) = value.as_table() {
            for key in inner.keys() {
                if !keys.contains(&key.as_str()) {
                    unknown.push(format!("{section}.{key}"));
                }
            }
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_full_file() {
        let text = r#"
            [sandbox]
            name = "my-app"
            base_image = "python:3.12-alpine"
            [security]
            profile = "restrictive"
            network = false
            [resources]
            vcpus = 2
            memory_mb = 1024
            [registry]
            mirrors = { "docker.io" = "http://127.0.0.1:5000" }
        "#;
        let config = Config::parse(text, Path::new("agentkernel.toml")).unwrap();
        assert_eq!(config.sandbox.name.as_deref(), Some("my-app"));
        assert_eq!(
            config.sandbox.base_image.as_deref(),
            Some("python:3.12-alpine")
        );
        assert_eq!(config.security.profile, Some(Profile::Restrictive));
        assert_eq!(config.security.network, Some(NetworkMode::None));
        assert_eq!(config.resources.vcpus, Some(2.0));
        assert_eq!(config.resources.memory_mb, Some(1024));
        assert_eq!(
            config.registry.mirrors.get("docker.io").map(String::as_str),
            Some("http://127.0.0.1:5000")
        );
    }

    #[test]
    fn unknown_keys_are_listed() {
        let table: toml::Table =
            toml::from_str("[sandbox]\nname='x'\nimage='y'\n[extra]\na=1\n").unwrap();
        assert_eq!(unknown_keys(&table), vec!["extra", "sandbox.image"]);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let error = Config::parse("[security]\nprofile = \"paranoid\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a.toml"), "{error}");
        assert!(error.contains("paranoid"), "{error}");
        assert!(error.contains("invalid security.profile"), "{error}");
        assert!(error.contains("restrictive"), "{error}");
        let error = Config::parse("[resources]\nvcpus = -1\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("resources.vcpus = -1"), "{error}");
        let error = Config::parse("[security]\nnetwork = \"bridge\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a.toml"), "{error}");
        assert!(error.contains("security.network = \"bridge\""), "{error}");
        assert!(error.contains("\"isolated\""), "{error}");
    }

    #[test]
    fn network_modes_and_seccomp_path() {
        let config = Config::parse(
            "[security]\nnetwork = \"isolated\"\nseccomp = \"profiles/strict.json\"\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert_eq!(config.security.network, Some(NetworkMode::Isolated));
        assert_eq!(
            config.security.seccomp,
            Some(PathBuf::from("profiles/strict.json"))
        );
        let config = Config::parse("[security]\nnetwork = true\n", Path::new("a.toml")).unwrap();
        assert_eq!(config.security.network, None);
    }

    #[test]
    fn seccomp_path_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentkernel.toml");
        std::fs::write(&path, "[security]\nseccomp = \"strict.json\"\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(
            config.security.seccomp,
            Some(dir.path().join("strict.json"))
        );
    }

    #[test]
    fn max_layer_mb_is_read_and_checked() {
        let config =
            Config::parse("[registry]\nmax_layer_mb = 512\n", Path::new("a.toml")).unwrap();
        assert_eq!(config.registry.max_layer_mb, Some(512));
        let error = Config::parse("[registry]\nmax_layer_mb = 0\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("registry.max_layer_mb = 0"), "{error}");
    }
}
