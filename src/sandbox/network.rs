//! Network setup of a sandbox: loopback in a new network namespace, and for the isolated mode a
//! veth pair to the host behind NAT and firewall rules.
//!
//! Isolated mode gives each sandbox a /30 from 10.200.0.0/16. The host side of the veth pair
//! (`ak` and the subnet's index in 8 hex digits) gets the first address and is the sandbox's
//! default gateway, and the sandbox's `eth0` gets the second. Links, addresses and routes are
//! made with rtnetlink requests from this process. One static iptables rule set (see
//! [`firewall`]) covers all sandboxes: it masquerades their outbound traffic and drops
//! everything they send to the host itself (which covers every host address), to
//! 169.254.0.0/16 and to other sandboxes.
//!
//! Each setup checks the rule set and reinstalls missing rules before the sandbox gets its
//! link, and the setup fails if that fails. The check is skipped while the nftables ruleset is
//! unchanged since a complete one (see [`generation`]). The host side has IPv6 disabled, so no
//! link-local IPv6 route to the host exists either. The sandbox's `127.0.0.1` is its own
//! loopback.
//!
//! The kernel deletes the veth pair together with the sandbox's network namespace. The cleanup
//! of every sandbox calls [`remove_isolated`], which deletes the link itself only when some of
//! the sandbox's processes survived. The rule set stays until `agentkernel prune` calls
//! [`remove_unused_rules`] while no sandbox link exists.

mod firewall;
mod generation;
mod netlink;

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::profile::NetworkMode;
use netlink::{LOOPBACK_INDEX, Netlink};
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

/// Prefix length of a sandbox subnet.
const PREFIX_LENGTH: u8 = 30;

/// Name of the sandbox side of the veth pair.
const SANDBOX_INTERFACE: &str = "eth0";

/// File in the sandbox directory that records the name and index of the isolated network's host
/// interface, as `<name> <index>`. [`remove_isolated`] deletes a link only when this file exists.
const MARKER_FILE: &str = "network";

/// Lock that serializes subnet allocation and changes to the iptables rule set between
/// concurrent runs and `agentkernel prune`.
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

/// Returns the host-side interface name of the sandbox with subnet `index`: `ak` and the index
/// as 8 hex digits, which fits the 15-character limit of interface names.
///
/// A name that follows from the subnet does not collide with an existing link, because
/// [`allocate`] skips every subnet whose gateway address a link still has, including a link
/// that the kernel has yet to delete.
fn host_interface(index: u32) -> String {
    format!("ak{index:08x}")
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

/// Sets up the isolated network of sandbox `id`, whose init is `pid`: the host's iptables rule
/// set if any rule is missing, a veth pair, addresses and a default route. It records the link
/// in `sandbox_dir` as soon as the link exists.
pub(super) fn setup_isolated(sandbox_dir: &Path, id: &str, pid: Pid) -> anyhow::Result<()> {
    let started = Instant::now();
    let namespace_path = format!("/proc/{pid}/ns/net");
    let namespace =
        File::open(&namespace_path).with_context(|| format!("failed to open {namespace_path}"))?;
    let link = {
        // Held until the host side has its address: that address marks the subnet as taken,
        // and `remove_unused_rules` must not remove the rules before a link uses them.
        let _lock = lock()?;
        firewall::ensure_installed()?;
        create_host_link(sandbox_dir, id, pid)?
    };
    // NOTE: forwarding is a host-wide setting; it stays on after the sandbox is removed.
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    std::thread::Builder::new()
        .name("sandbox-net".to_string())
        .spawn(move || -> anyhow::Result<()> {
            setns(&namespace, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("failed to enter {namespace_path}"))?;
            configure_sandbox_side(&link)
        })
        .context("failed to start the network setup thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the network setup thread panicked"))??;
    tracing::debug!(%id, elapsed = ?started.elapsed(), "isolated network set up");
    Ok(())
}

/// Allocates a free /30, creates the veth pair with `eth0` in the network namespace of `pid` and
/// records the host side in the marker file. The host side gets the gateway address and is
/// brought up. The caller holds the network lock.
fn create_host_link(sandbox_dir: &Path, id: &str, pid: Pid) -> anyhow::Result<IsolatedLink> {
    let mut netlink = Netlink::open().context("failed to open a netlink socket")?;
    let used = netlink
        .ipv4_addresses()
        .context("failed to list the host's IPv4 addresses")?;
    let link = allocate(id, &used).context("no free /30 subnet left in 10.200.0.0/16")?;
    let host_interface = &link.host_interface;
    let pid_number = pid.as_raw().unsigned_abs();
    netlink
        .create_veth(host_interface, SANDBOX_INTERFACE, pid_number)
        .with_context(|| {
            format!(
                "failed to create veth pair {host_interface} with {SANDBOX_INTERFACE} in the \
                 network namespace of process {pid}"
            )
        })?;
    let index = netlink
        .link_index(host_interface)
        .with_context(|| format!("failed to look up network interface {host_interface}"))?;
    let marker = sandbox_dir.join(MARKER_FILE);
    std::fs::write(&marker, format!("{host_interface} {index}\n"))
        .with_context(|| format!("failed to write {}", marker.display()))?;
    write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{host_interface}/disable_ipv6"),
        "1",
    )?;
    netlink
        .add_address(index, Ipv4Addr::from(link.gateway), PREFIX_LENGTH)
        .with_context(|| {
            format!(
                "failed to add address {}/{PREFIX_LENGTH} to {host_interface}",
                dotted(link.gateway)
            )
        })?;
    netlink
        .set_up(index)
        .with_context(|| format!("failed to bring up {host_interface}"))?;
    Ok(link)
}

/// Gives `eth0` the sandbox's address, brings up `lo` and `eth0` and adds the default route via
/// the gateway. Runs on a thread in the sandbox's network namespace.
fn configure_sandbox_side(link: &IsolatedLink) -> anyhow::Result<()> {
    let mut netlink = Netlink::open().context("failed to open a netlink socket in the sandbox")?;
    let index = netlink
        .link_index(SANDBOX_INTERFACE)
        .with_context(|| format!("failed to look up {SANDBOX_INTERFACE} in the sandbox"))?;
    netlink
        .add_address(index, Ipv4Addr::from(link.address), PREFIX_LENGTH)
        .with_context(|| {
            format!(
                "failed to add address {}/{PREFIX_LENGTH} to {SANDBOX_INTERFACE} in the sandbox",
                dotted(link.address)
            )
        })?;
    netlink
        .set_up(LOOPBACK_INDEX)
        .context("failed to bring up lo in the sandbox")?;
    netlink
        .set_up(index)
        .with_context(|| format!("failed to bring up {SANDBOX_INTERFACE} in the sandbox"))?;
    netlink
        .add_default_route(Ipv4Addr::from(link.gateway))
        .with_context(|| {
            format!(
                "failed to add the default route via {} in the sandbox",
                dotted(link.gateway)
            )
        })?;
    Ok(())
}

/// Returns the link of sandbox `id`: the first /30, counting from the one its id hashes to,
/// whose gateway address is not in `used`. Returns `None` when all are taken.
fn allocate(id: &str, used: &[Ipv4Addr]) -> Option<IsolatedLink> {
    let start = fnv1a(id) % SUBNET_COUNT;
    (0..SUBNET_COUNT)
        .map(|offset| (start + offset) % SUBNET_COUNT)
        .find(|index| !used.contains(&Ipv4Addr::from(subnet(*index).0)))
        .map(|index| {
            let (gateway, address) = subnet(index);
            IsolatedLink {
                host_interface: host_interface(index),
                gateway,
                address,
            }
        })
}

/// Removes the isolated network recorded in `sandbox_dir`, if any, and its marker file.
///
/// When `processes_gone` is set, no process is left in the sandbox's network namespace, so the
/// kernel deletes the namespace and with it both ends of the veth pair, in a worker thread.
/// Deleting the link here as well took 15 to 30 ms, mostly RCU grace periods (`ip link del` of
/// a veth, kernel 6.18 on 2 vCPUs). Otherwise the host side is deleted here, which cuts a
/// sandbox whose processes survived off the network. The link is looked up by its index, and
/// deleted only if it still has its name, so a link that is gone is skipped, and so is a newer
/// link with the same name.
pub(super) fn remove_isolated(sandbox_dir: &Path, processes_gone: bool) -> anyhow::Result<()> {
    let marker = sandbox_dir.join(MARKER_FILE);
    let text = match std::fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", marker.display()));
        }
    };
    if !processes_gone {
        let (name, index) = parse_marker(&text)
            .with_context(|| format!("invalid network marker {}: {text:?}", marker.display()))?;
        let delete = || -> io::Result<bool> {
            let mut netlink = Netlink::open()?;
            match netlink.link_name(index)? {
                Some(current) if current == name => netlink.delete_link(index),
                _ => Ok(false),
            }
        };
        delete().with_context(|| format!("failed to delete network interface {name}"))?;
    }
    match std::fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", marker.display())),
    }
}

/// Removes the host's iptables rule set of isolated networks when no host interface of a
/// sandbox exists, on any cache root, and returns whether it removed any rule. Runs under the
/// network lock, so no sandbox is between its rule check and its link creation meanwhile.
///
/// Does nothing when the lock file is missing: then no isolated network was set up since boot,
/// and iptables rules do not outlive a reboot unless a tool such as netfilter-persistent saved
/// them.
pub fn remove_unused_rules() -> anyhow::Result<bool> {
    if !Path::new(LOCK_FILE).exists() {
        return Ok(false);
    }
    let _lock = lock()?;
    let names = Netlink::open()
        .and_then(|mut netlink| netlink.link_names())
        .context("failed to list the host's network interfaces")?;
    if let Some(name) = names.iter().find(|name| is_host_interface(name)) {
        tracing::debug!(interface = %name, "keeping the iptables rules of isolated sandboxes");
        return Ok(false);
    }
    firewall::remove()
}

/// Checks whether `name` has the form of [`host_interface`]: `ak` and 8 lowercase hex digits.
fn is_host_interface(name: &str) -> bool {
    name.strip_prefix("ak").is_some_and(|digits| {
        digits.len() == 8
            && digits
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// Returns the interface name and index of a marker file's text, `<name> <index>`.
fn parse_marker(text: &str) -> Option<(&str, u32)> {
    let mut words = text.split_whitespace();
    let name = words.next().filter(|name| is_host_interface(name))?;
    let index = words.next()?.parse().ok()?;
    words.next().is_none().then_some((name, index))
}

/// Takes the lock that serializes changes to the sandbox networks and the iptables rule set.
fn lock() -> anyhow::Result<nix::fcntl::Flock<File>> {
    use std::os::unix::fs::OpenOptionsExt;

    // Mode 0600 whatever the umask: a user who can open the file could hold the lock.
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(LOCK_FILE)
        .with_context(|| format!("failed to open {LOCK_FILE}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("failed to lock {LOCK_FILE}"))
}

fn write_sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("failed to write {value} to {path}"))
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
        assert_eq!(host_interface(0), "ak00000000");
        assert_eq!(host_interface(SUBNET_COUNT - 1), "ak00003fff");
    }

    #[test]
    fn allocation_skips_used_gateways() {
        let id = "run-1";
        let first = allocate(id, &[]).unwrap();
        let start = fnv1a(id) % SUBNET_COUNT;
        assert_eq!(first.host_interface, host_interface(start));
        assert_eq!((first.gateway, first.address), subnet(start));
        let next = allocate(id, &[Ipv4Addr::from(first.gateway)]).unwrap();
        let next_index = (start + 1) % SUBNET_COUNT;
        assert_eq!(next.host_interface, host_interface(next_index));
        assert_eq!((next.gateway, next.address), subnet(next_index));
        // The sandbox-side address of another subnet does not take the gateway's subnet.
        let other = allocate(id, &[Ipv4Addr::from(first.address)]).unwrap();
        assert_eq!(other, first);
    }

    #[test]
    fn allocation_fails_when_full() {
        let used: Vec<Ipv4Addr> = (0..SUBNET_COUNT)
            .map(|index| Ipv4Addr::from(subnet(index).0))
            .collect();
        assert_eq!(allocate("run-1", &used), None);
        let all_but_last = &used[..used.len() - 1];
        let last = allocate("run-1", all_but_last).unwrap();
        assert_eq!(last.gateway, [10, 200, 255, 253]);
        assert_eq!(last.host_interface, "ak00003fff");
    }

    #[test]
    fn host_interface_names_are_recognized() {
        assert!(is_host_interface(&host_interface(16383)));
        assert!(is_host_interface("ak0123abcd"));
        assert!(!is_host_interface("ak0123abc"));
        assert!(!is_host_interface("ak0123abcde"));
        assert!(!is_host_interface("ak0123ABCD"));
        assert!(!is_host_interface("eth0"));
        assert!(!is_host_interface("akg123abcd"));
    }

    #[test]
    fn markers_are_parsed() {
        assert_eq!(parse_marker("ak00000a1f 17\n"), Some(("ak00000a1f", 17)));
        assert_eq!(parse_marker("ak00000a1f\n"), None);
        assert_eq!(parse_marker("eth0 17\n"), None);
        assert_eq!(parse_marker("ak00000a1f 17 18\n"), None);
        assert_eq!(parse_marker("ak00000a1f x\n"), None);
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
