//! The `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` files bound read-only into a
//! sandbox.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::profile::NetworkMode;

const LOCALHOST_LINES: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Writes `hosts`, `hostname` and `resolv.conf` into `<sandbox_dir>/etc` and returns that
/// directory.
///
/// With the host network the files copy the host's `/etc/hosts` (plus a line for `hostname`) and
/// `/etc/resolv.conf`. Otherwise `hosts` maps only localhost names, `hostname` included, to the
/// loopback addresses. Without network `resolv.conf` lists no name server, and with the isolated
/// network it lists the host's name servers outside 127.0.0.0/8 and `::1`, which NAT reaches.
pub(super) fn write(
    sandbox_dir: &Path,
    network: NetworkMode,
    hostname: &str,
) -> anyhow::Result<PathBuf> {
    let dir = sandbox_dir.join("etc");
    std::fs::create_dir(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let local_hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let (hosts, resolv_conf) = match network {
        NetworkMode::None => (local_hosts, "# this sandbox has no network\n".to_string()),
        NetworkMode::Isolated => {
            let host = read_host_file("/etc/resolv.conf")?.unwrap_or_default();
            (local_hosts, super::network::reachable_resolv_conf(&host))
        }
        NetworkMode::Host => {
            let mut hosts = read_host_file("/etc/hosts")?.unwrap_or(LOCALHOST_LINES.to_string());
            if !hosts.is_empty() && !hosts.ends_with('\n') {
                hosts.push('\n');
            }
            hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
            let resolv_conf = read_host_file("/etc/resolv.conf")?.unwrap_or_default();
            (hosts, resolv_conf)
        }
    };
    for (name, content) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv_conf),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(dir)
}

/// Reads a host file; `None` when it does not exist.
fn read_host_file(path: &str) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("failed to read {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_network_maps_only_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let etc = write(dir.path(), NetworkMode::None, "agentkernel").unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("hosts")).unwrap(),
            "127.0.0.1\tlocalhost agentkernel\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "agentkernel\n"
        );
        let resolv_conf = std::fs::read_to_string(etc.join("resolv.conf")).unwrap();
        assert!(!resolv_conf.contains("nameserver"));
    }

    #[test]
    fn isolated_network_keeps_reachable_name_servers() {
        let dir = tempfile::tempdir().unwrap();
        let etc = write(dir.path(), NetworkMode::Isolated, "agentkernel").unwrap();
        assert!(
            std::fs::read_to_string(etc.join("hosts"))
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost agentkernel\n")
        );
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            super::super::network::reachable_resolv_conf(&host)
        );
    }

    #[test]
    fn host_network_copies_host_files() {
        let dir = tempfile::tempdir().unwrap();
        let etc = write(dir.path(), NetworkMode::Host, "agentkernel").unwrap();
        let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap();
        let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        assert!(hosts.starts_with(host_hosts.trim_end()));
        assert!(hosts.ends_with("127.0.1.1\tagentkernel\n"));
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        );
    }
}
