//! Security profiles: the resource limits, network mode and filesystem policy of a sandbox.

use std::path::PathBuf;

/// A named set of isolation settings, chosen per run with `--profile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Host network, no memory or CPU limit, the host working directory mounted read-write at
    /// `/workspace` and `$HOME` read-only at `/home/user`.
    Permissive,
    /// Isolated network (outbound only), 512 MiB of memory, one CPU and 1024 processes.
    #[default]
    Moderate,
    /// No network (only `lo`), a read-only root with a 64 MiB `/tmp`, 256 MiB of memory, half a
    /// CPU, 256 processes and no `CAP_NET_RAW`.
    Restrictive,
}

/// Cgroup limits applied to every process of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (`memory.limit_in_bytes` or `memory.max`); `None` for no limit.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs, enforced as a CFS quota per 100 ms period; `None` for no limit.
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (`pids.max`).
    pub pids: i64,
}

/// Network setup of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A new network namespace that contains only the loopback interface, which is brought up.
    None,
    /// A new network namespace with a veth link to the host that is NATed for outbound
    /// traffic; the host's own addresses and 169.254.0.0/16 are unreachable.
    Isolated,
    /// The host's network namespace.
    Host,
}

impl NetworkMode {
    /// Returns whether the sandbox gets its own network namespace.
    pub fn has_namespace(self) -> bool {
        self != NetworkMode::Host
    }
}

/// Volume bound from the host into a sandbox (`-v HOST:CONTAINER[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub container: String,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [host, container] => (*host, *container, false),
            [host, container, "ro"] => (*host, *container, true),
            [host, container, "rw"] => (*host, *container, false),
            _ => {
                return Err(format!(
                    "invalid volume {text:?}: expected HOST:CONTAINER, HOST:CONTAINER:ro or HOST:CONTAINER:rw"
                ));
            }
        };
        if !container.starts_with('/') {
            return Err(format!(
                "invalid volume {text:?}: the container path {container:?} must be absolute"
            ));
        }
        let host = std::path::absolute(host)
            .map_err(|error| format!("invalid volume {text:?}: {error}"))?;
        // Checked here so the error names the volume; libcontainer only reports that the
        // rootfs could not be prepared.
        if !host.exists() {
            return Err(format!(
                "invalid volume {text:?}: the host path {} does not exist",
                host.display()
            ));
        }
        Ok(Volume {
            host,
            container: container.to_string(),
            read_only,
        })
    }
}

/// Per-run changes to a profile's defaults, from the command line and agentkernel.toml.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub network: Option<NetworkMode>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs.
    pub cpus: Option<f64>,
    /// Whether the host working directory is mounted at `/workspace`.
    pub mount_cwd: Option<bool>,
    /// OCI or Docker seccomp JSON file used instead of the built-in filter.
    pub seccomp: Option<PathBuf>,
    /// `KEY=VALUE` entries added to the image's environment, later ones winning.
    pub env: Vec<String>,
    pub volumes: Vec<Volume>,
    /// Working directory of the command inside the sandbox.
    pub workdir: Option<String>,
}

impl Overrides {
    /// Returns the network mode of `profile` with this override applied.
    pub fn network(&self, profile: Profile) -> NetworkMode {
        self.network.unwrap_or(profile.network())
    }

    /// Returns the limits of `profile` with these overrides applied.
    pub fn limits(&self, profile: Profile) -> Limits {
        let mut limits = profile.limits();
        if self.memory_bytes.is_some() {
            limits.memory_bytes = self.memory_bytes;
        }
        if self.cpus.is_some() {
            limits.cpus = self.cpus;
        }
        limits
    }

    /// Returns whether the host working directory and home are mounted.
    pub fn mounts_workspace(&self, profile: Profile) -> bool {
        self.mount_cwd.unwrap_or(profile.mounts_workspace())
    }
}

/// Parses a memory size such as `256m`, `1g`, `512k` or `1048576` (bytes); the suffixes are
/// binary multiples, as in `docker run --memory`.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let trimmed = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, multiplier) = match trimmed.char_indices().last() {
        Some((index, 'k')) => (&trimmed[..index], 1024),
        Some((index, 'm')) => (&trimmed[..index], MIB),
        Some((index, 'g')) => (&trimmed[..index], 1024 * MIB),
        _ => (trimmed, 1),
    };
    let invalid = || {
        format!(
            "invalid memory size {text:?}: expected a number with k, m or g, such as 256m or 1g"
        )
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let bytes = number.checked_mul(multiplier).ok_or_else(invalid)?;
    if bytes < 4 * MIB {
        return Err(format!("invalid memory size {text:?}: the minimum is 4m"));
    }
    Ok(bytes)
}

/// Parses a CPU count such as `0.5` or `2`.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(cpus) if cpus >= 0.01 && cpus.is_finite() => Ok(cpus),
        _ => Err(format!(
            "invalid CPU count {text:?}: expected a number of CPUs of at least 0.01, such as 0.5"
        )),
    }
}

const MIB: u64 = 1024 * 1024;

impl Profile {
    /// Returns the cgroup limits of this profile.
    pub fn limits(self) -> Limits {
        match self {
            Profile::Permissive => Limits {
                memory_bytes: None,
                cpus: None,
                pids: 4096,
            },
            Profile::Moderate => Limits {
                memory_bytes: Some(512 * MIB),
                cpus: Some(1.0),
                pids: 1024,
            },
            Profile::Restrictive => Limits {
                memory_bytes: Some(256 * MIB),
                cpus: Some(0.5),
                pids: 256,
            },
        }
    }

    /// Returns the network mode of this profile.
    pub fn network(self) -> NetworkMode {
        match self {
            Profile::Permissive => NetworkMode::Host,
            Profile::Moderate => NetworkMode::Isolated,
            Profile::Restrictive => NetworkMode::None,
        }
    }

    /// Returns whether the root filesystem is mounted read-only, with a writable tmpfs on `/tmp`.
    pub fn read_only_root(self) -> bool {
        self == Profile::Restrictive
    }

    /// Returns whether the host working directory and home directory are mounted into the sandbox.
    pub fn mounts_workspace(self) -> bool {
        self == Profile::Permissive
    }

    /// Returns whether `CAP_NET_RAW` is removed from Docker's default capability set.
    pub fn drops_net_raw(self) -> bool {
        self == Profile::Restrictive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_moderate() {
        assert_eq!(Profile::default(), Profile::Moderate);
    }

    #[test]
    fn limits_per_profile() {
        let permissive = Profile::Permissive.limits();
        assert_eq!(permissive.memory_bytes, None);
        assert_eq!(permissive.cpus, None);
        assert_eq!(permissive.pids, 4096);

        let moderate = Profile::Moderate.limits();
        assert_eq!(moderate.memory_bytes, Some(536_870_912));
        assert_eq!(moderate.cpus, Some(1.0));
        assert_eq!(moderate.pids, 1024);

        let restrictive = Profile::Restrictive.limits();
        assert_eq!(restrictive.memory_bytes, Some(268_435_456));
        assert_eq!(restrictive.cpus, Some(0.5));
        assert_eq!(restrictive.pids, 256);
    }

    #[test]
    fn network_and_filesystem_policy() {
        assert_eq!(Profile::Permissive.network(), NetworkMode::Host);
        assert_eq!(Profile::Moderate.network(), NetworkMode::Isolated);
        assert_eq!(Profile::Restrictive.network(), NetworkMode::None);
        assert!(Profile::Restrictive.read_only_root());
        assert!(!Profile::Moderate.read_only_root());
        assert!(Profile::Permissive.mounts_workspace());
        assert!(!Profile::Moderate.mounts_workspace());
        assert!(!Profile::Restrictive.mounts_workspace());
    }

    #[test]
    fn overrides_replace_profile_values() {
        let overrides = Overrides {
            network: Some(NetworkMode::None),
            memory_bytes: Some(256 * MIB),
            ..Overrides::default()
        };
        assert_eq!(overrides.network(Profile::Permissive), NetworkMode::None);
        let limits = overrides.limits(Profile::Moderate);
        assert_eq!(limits.memory_bytes, Some(268_435_456));
        assert_eq!(limits.cpus, Some(1.0));
        assert_eq!(
            Overrides::default().network(Profile::Moderate),
            NetworkMode::Isolated
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256m"), Ok(268_435_456));
        assert_eq!(parse_memory("1g"), Ok(1_073_741_824));
        assert_eq!(parse_memory("1G"), Ok(1_073_741_824));
        assert_eq!(parse_memory("8192k"), Ok(8_388_608));
        assert_eq!(parse_memory("8388608"), Ok(8_388_608));
        assert!(parse_memory("1m").unwrap_err().contains("minimum is 4m"));
        assert!(parse_memory("lots").unwrap_err().contains("\"lots\""));
        assert!(parse_memory("99999999999g").is_err());
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("NaN").is_err());
    }

    #[test]
    fn volume_syntax() {
        let volume: Volume = "/etc:/mnt/data:ro".parse().unwrap();
        assert_eq!(volume.host, PathBuf::from("/etc"));
        assert_eq!(volume.container, "/mnt/data");
        assert!(volume.read_only);
        let volume: Volume = "/tmp:/data".parse().unwrap();
        assert!(!volume.read_only);
        assert!("/etc".parse::<Volume>().is_err());
        assert!("/etc:relative".parse::<Volume>().is_err());
        assert!("/etc:/x:rx".parse::<Volume>().is_err());
        let missing = "/no/such/host/dir:/x".parse::<Volume>().unwrap_err();
        assert!(
            missing.contains("/no/such/host/dir does not exist"),
            "{missing}"
        );
    }

    #[test]
    fn deserializes_lowercase_names() {
        #[derive(serde::Deserialize)]
        struct Config {
            profile: Profile,
        }
        let config: Config = toml::from_str("profile = \"restrictive\"").expect("valid toml");
        assert_eq!(config.profile, Profile::Restrictive);
        assert!(toml::from_str::<Config>("profile = \"Restrictive\"").is_err());
    }
}
