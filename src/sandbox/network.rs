//! Network setup of a sandbox: loopback in a new network namespace, and for the isolated mode a
//! veth pair to the host with NAT and firewall rules.
//!
//! Isolated mode gives each sandbox a /30 from 10.200.0.0/16: the host side of the veth pair
//! (`ak<hash of id>`) gets the first address and is the sandbox's default gateway, the sandbox's
//! `eth0` the second. iptables rules tagged with the comment `agentkernel:<id>` masquerade its
//! outbound traffic, drop everything it sends to the host itself (which covers every host
//! address), to 169.254.0.0/16 and to other sandboxes. The host side has IPv6 disabled, so no
//! link-local IPv6 route to the host exists either. The sandbox's `127.0.0.1` is its own
//! loopback. The rules and the link are removed by [`remove_isolated`], which the cleanup of
//! every sandbox calls.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::profile::NetworkMode;
use nix::sched::{CloneFlags, setns};
use nix::unistd::Pid;

/// Sets up the network of a created container whose init is `pid`, before it starts: nothing
/// for the host network, `lo` for `none`, and the veth pair with NAT for `isolated`.
pub(super) fn set_up(
    mode: NetworkMode,
    pid: Pid,
    container: &libcontainer::container::Container,
) -> anyhow::Result<()> {
    match mode {
        NetworkMode::Host => Ok(()),
        NetworkMode::None => bring_up_loopback(pid),
        NetworkMode::Isolated => setup_isolated(container.bundle(), container.id(), pid)
            .with_context(|| format!("failed to set up the network of sandbox {}", container.id())),
    }
}

/// Brings up the loopback interface in the network namespace of `pid`.
///
/// libcontainer 0.7 leaves `lo` down in a new network namespace (runc brings it up). `setns`
/// would move the calling thread for good, so a short-lived thread enters the namespace and
/// sets `IFF_UP` with `SIOCSIFFLAGS`.
pub(super) fn bring_up_loopback(pid: Pid) -> anyhow::Result<()> {
    let namespace_path = format!("/proc/{pid}/ns/net");
    let namespace =
        File::open(&namespace_path).with_context(|| format!("failed to open {namespace_path}"))?;
    std::thread::Builder::new()
        .name("sandbox-net".to_string())
        .spawn(move || -> anyhow::Result<()> {
            setns(&namespace, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("failed to enter {namespace_path}"))?;
            set_interface_up("lo").context("failed to bring up lo")
        })
        .context("failed to start the network setup thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the network setup thread panicked"))?
}

fn set_interface_up(name: &str) -> io::Result<()> {
    use nix::libc;

    // SAFETY: socket has no memory arguments and returns a new file descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new file descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain old data, for which all zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifru_flags of the ifreq that `request`
    // points to, which lives for the whole call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled ifru_flags, so reading that union field is defined.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads ifr_name and ifru_flags of the valid ifreq behind `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// First two octets of the sandbox subnets.
const SUBNET_PREFIX: [u8; 2] = [10, 200];

/// Number of /30 subnets in 10.200.0.0/16.
const SUBNET_COUNT: u32 = 16384;

/// File in the sandbox directory that records the isolated network's host interface and
/// subnet; its presence tells [`remove_isolated`] that there are rules to remove.
const MARKER_FILE: &str = "network";

/// Lock that serializes subnet allocation between concurrent runs.
const LOCK_FILE: &str = "/run/agentkernel-network.lock";

/// Addresses of one sandbox's veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IsolatedLink {
    /// Host-side interface name.
    pub host_interface: String,
    /// Host-side address, the sandbox's gateway.
    pub gateway: [u8; 4],
    /// The sandbox's address.
    pub address: [u8; 4],
}

/// Returns the host-side interface name of sandbox `id`: `ak` and 8 hex digits of an FNV-1a
/// hash of the id, which fits the 15-character limit of interface names.
pub(super) fn host_interface(id: &str) -> String {
    format!("ak{:08x}", fnv1a(id))
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

fn dotted(address: [u8; 4]) -> String {
    format!(
        "{}.{}.{}.{}",
        address[0], address[1], address[2], address[3]
    )
}

/// Returns the /30 with index `index` in 10.200.0.0/16 as (gateway, sandbox address).
fn subnet(index: u32) -> ([u8; 4], [u8; 4]) {
    let base = index * 4;
    let third = (base / 256) as u8;
    let fourth = (base % 256) as u8;
    (
        [SUBNET_PREFIX[0], SUBNET_PREFIX[1], third, fourth + 1],
        [SUBNET_PREFIX[0], SUBNET_PREFIX[1], third, fourth + 2],
    )
}

/// Sets up the isolated network of sandbox `id`, whose init is `pid`: a veth pair, addresses,
/// routes and the host's NAT and firewall rules. It records them in `sandbox_dir` first, so a
/// cleanup after a failure here removes what was created.
pub(super) fn setup_isolated(sandbox_dir: &Path, id: &str, pid: Pid) -> anyhow::Result<()> {
    let _lock = lock()?;

    let host_interface = host_interface(id);
    let used = command_output(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    let start = fnv1a(id) % SUBNET_COUNT;
    let link = (0..SUBNET_COUNT)
        .map(|offset| subnet((start + offset) % SUBNET_COUNT))
        .find(|(gateway, _)| !used.contains(&format!("inet {}/", dotted(*gateway))))
        .map(|(gateway, address)| IsolatedLink {
            host_interface: host_interface.clone(),
            gateway,
            address,
        })
        .context("no free /30 subnet left in 10.200.0.0/16")?;
    let marker = sandbox_dir.join(MARKER_FILE);
    std::fs::write(&marker, format!("{host_interface}\n"))
        .with_context(|| format!("failed to write {}", marker.display()))?;

    let gateway = dotted(link.gateway);
    let address = dotted(link.address);
    run_with_input(
        Command::new("ip").args(["-batch", "-"]),
        &format!(
            "link add {host_interface} type veth peer name eth0 netns {pid}\n\
             addr add {gateway}/30 dev {host_interface}\n\
             link set {host_interface} up\n"
        ),
    )?;
    write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{host_interface}/disable_ipv6"),
        "1",
    )?;
    let namespace = format!("--net=/proc/{pid}/ns/net");
    run_with_input(
        Command::new("nsenter").args([namespace.as_str(), "ip", "-batch", "-"]),
        &format!(
            "addr add {address}/30 dev eth0\n\
             link set lo up\n\
             link set eth0 up\n\
             route add default via {gateway}\n"
        ),
    )?;
    // NOTE: forwarding is a host-wide setting; it stays on after the sandbox is removed.
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    let comment = format!("-m comment --comment agentkernel:{id}");
    let tag = |rule: &str| format!("{rule} {comment}");
    let [a, b, c, d] = link.gateway;
    let subnet = format!("{}/30", dotted([a, b, c, d - 1]));
    let rules = [
        "*filter".to_string(),
        tag(&format!("-I FORWARD -i {host_interface} -j ACCEPT")),
        tag(&format!(
            "-I FORWARD -o {host_interface} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        )),
        tag(&format!(
            "-I FORWARD -i {host_interface} -d 169.254.0.0/16 -j DROP"
        )),
        tag(&format!("-I FORWARD -i {host_interface} -o ak+ -j DROP")),
        tag(&format!("-I INPUT -i {host_interface} -j DROP")),
        "COMMIT".to_string(),
        "*nat".to_string(),
        tag(&format!(
            "-A POSTROUTING -s {subnet} ! -o {host_interface} -j MASQUERADE"
        )),
        "COMMIT".to_string(),
    ];
    run_with_input(
        Command::new("iptables-restore").args(["-w", "--noflush"]),
        &(rules.join("\n") + "\n"),
    )
    .context("failed to add the sandbox's iptables rules")?;
    Ok(())
}

/// Removes the iptables rules and the veth pair of sandbox `id`. Rules and links that are
/// already gone are skipped.
///
/// The rules are looked up by their comment whenever this host has set up an isolated network
/// since boot (the lock file exists), not only when `sandbox_dir` records one: a sandbox
/// directory whose files were deleted by other means must not leave its rules behind. That
/// lookup costs one `iptables-save` (about 5 ms).
pub(super) fn remove_isolated(sandbox_dir: &Path, id: &str) -> anyhow::Result<()> {
    let marker = sandbox_dir.join(MARKER_FILE);
    if !marker.exists() && !Path::new(LOCK_FILE).exists() {
        return Ok(());
    }
    // The run itself and a concurrent `remove` may both get here; the lock makes the second
    // one find the rules already gone.
    let _lock = lock()?;
    let host_interface = host_interface(id);
    let comment = format!("agentkernel:{id}");
    let saved = command_output(&mut Command::new("iptables-save"))?;
    let mut deletions = Vec::new();
    let mut rules = 0;
    for line in saved.lines() {
        if line.starts_with('*') || line == "COMMIT" {
            deletions.push(line.to_string());
        } else if let Some(rule) = line.strip_prefix("-A ") {
            // iptables-save quotes comments that contain a colon.
            if rule
                .split_whitespace()
                .any(|word| word.trim_matches('"') == comment)
            {
                deletions.push(format!("-D {rule}"));
                rules += 1;
            }
        }
    }
    if rules > 0 {
        run_with_input(
            Command::new("iptables-restore").args(["-w", "--noflush"]),
            &(deletions.join("\n") + "\n"),
        )
        .with_context(|| format!("failed to remove the iptables rules of sandbox {id}"))?;
    }
    if Path::new("/sys/class/net").join(&host_interface).exists() {
        let status = Command::new("ip")
            .args(["link", "del", &host_interface])
            .stderr(Stdio::null())
            .status()
            .context("failed to run ip")?;
        // The link disappears by itself when the sandbox's network namespace goes away, which
        // can happen between the check and the deletion.
        if !status.success() && Path::new("/sys/class/net").join(&host_interface).exists() {
            bail!("failed to delete network interface {host_interface}");
        }
    }
    match std::fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", marker.display())),
    }
}

/// Takes the lock that serializes changes to the sandbox networks.
fn lock() -> anyhow::Result<nix::fcntl::Flock<File>> {
    let file = File::create(LOCK_FILE).with_context(|| format!("failed to open {LOCK_FILE}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("failed to lock {LOCK_FILE}"))
}

fn write_sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("failed to write {value} to {path}"))
}

fn command_output(command: &mut Command) -> anyhow::Result<String> {
    let program = format!("{:?}", command.get_program());
    let output = command
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("failed to run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_with_input(command: &mut Command, input: &str) -> anyhow::Result<()> {
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(input.as_bytes())
        .with_context(|| format!("failed to write to {program}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Returns the name servers of the host's `resolv.conf` that a sandbox can reach through NAT:
/// every one outside the loopback ranges.
pub(super) fn reachable_resolv_conf(host: &str) -> String {
    host.lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(server)) => {
                    !(server.starts_with("127.") || server == "::1")
                }
                _ => true,
            }
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_cover_the_range() {
        assert_eq!(subnet(0), ([10, 200, 0, 1], [10, 200, 0, 2]));
        assert_eq!(subnet(65), ([10, 200, 1, 5], [10, 200, 1, 6]));
        assert_eq!(subnet(16383), ([10, 200, 255, 253], [10, 200, 255, 254]));
    }

    #[test]
    fn interface_names_fit() {
        let name = host_interface("a-very-long-sandbox-name-with-64-characters");
        assert_eq!(name.len(), 10);
        assert!(name.starts_with("ak"));
        assert_ne!(host_interface("run-1"), host_interface("run-2"));
    }

    #[test]
    fn loopback_name_servers_are_dropped() {
        let host =
            "search example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.1\nnameserver ::1\n";
        assert_eq!(
            reachable_resolv_conf(host),
            "search example.org\nnameserver 10.0.0.1\n"
        );
    }
}
