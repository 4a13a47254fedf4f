//! Network setup inside a new network namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;
use nix::sched::{CloneFlags, setns};
use nix::unistd::Pid;

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
