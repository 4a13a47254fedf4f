//! Security profiles: the resource limits, network mode and filesystem policy of a sandbox.

/// A named set of isolation settings, chosen per run with `--profile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Host network, no memory or CPU limit, the host working directory mounted read-write at
    /// `/workspace` and `$HOME` read-only at `/home/user`.
    Permissive,
    /// Host network, 512 MiB of memory, one CPU and 1024 processes.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new network namespace that contains only the loopback interface, which is brought up.
    None,
    /// The host's network namespace.
    Host,
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
            Profile::Permissive | Profile::Moderate => NetworkMode::Host,
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
        assert_eq!(Profile::Moderate.network(), NetworkMode::Host);
        assert_eq!(Profile::Restrictive.network(), NetworkMode::None);
        assert!(Profile::Restrictive.read_only_root());
        assert!(!Profile::Moderate.read_only_root());
        assert!(Profile::Permissive.mounts_workspace());
        assert!(!Profile::Moderate.mounts_workspace());
        assert!(!Profile::Restrictive.mounts_workspace());
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
