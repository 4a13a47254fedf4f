//! A record of the last complete check of the rule set, so that runs skip `iptables-save` while
//! nothing in the host's nftables ruleset has changed.
//!
//! With the nf_tables backend of iptables, every change to any table of the network namespace
//! (by iptables, nft, firewalld or Docker) is an nftables transaction, and every transaction
//! increments the namespace's ruleset generation, which `NFT_MSG_GETGEN` reads. A [`Stamp`]
//! contains that generation with the boot id and the cookie of the network namespace it belongs
//! to (`SO_NETNS_COOKIE`, Linux 5.14+, never reused within a boot, unlike the namespace's inode
//! number). A run whose stamp equals the one recorded after the last complete check runs on
//! the ruleset that check found complete. The record is a root-only file, and a record that
//! others could have written is ignored.
//!
//! Rules of the legacy iptables backend live outside nftables and change no generation, so a
//! stamp is recorded only when `iptables-save` reports the nf_tables backend.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::libc;

use netlink_sys::Socket;

/// File that contains the stamp of the last complete check, written under the network lock.
const STAMP_FILE: &str = "/run/agentkernel-network.checked";

/// `NETLINK_NETFILTER` from `linux/netlink.h`.
const NETLINK_NETFILTER: isize = 12;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN` from `linux/netfilter/nfnetlink.h` and
/// `linux/netfilter/nf_tables.h`.
const GETGEN: u16 = (10 << 8) | 16;

/// `NFTA_GEN_ID`, the generation attribute of the `NFT_MSG_NEWGEN` reply.
const NFTA_GEN_ID: u16 = 1;

/// Length of `struct nlmsghdr` and of `struct nfgenmsg`.
const HEADER_LENGTH: usize = 16;
const NFGENMSG_LENGTH: usize = 4;

/// `NLMSG_ERROR` and `NLM_F_REQUEST` from `linux/netlink.h`.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

/// The state of the host's nftables ruleset at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    boot_id: String,
    /// Cookie of the network namespace.
    namespace: u64,
    generation: u32,
}

impl Stamp {
    /// Reads the current stamp. Returns `None` when a part of it cannot be read, for example
    /// without nftables in the kernel, so the caller checks the rules.
    pub fn current() -> Option<Stamp> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        match ruleset_generation() {
            Ok((namespace, generation)) => Some(Stamp {
                boot_id: boot_id.trim().to_string(),
                namespace,
                generation,
            }),
            Err(error) => {
                tracing::debug!(%error, "failed to read the nftables ruleset generation");
                None
            }
        }
    }

    /// Returns the stamp recorded after the last complete check, if any. A record that is not
    /// a regular file owned by this user and writable only by it is ignored.
    pub fn recorded() -> Option<Stamp> {
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(STAMP_FILE)
            .ok()?;
        let metadata = file.metadata().ok()?;
        let owner = nix::unistd::geteuid().as_raw();
        if !metadata.is_file() || metadata.uid() != owner || metadata.mode() & 0o022 != 0 {
            tracing::warn!(
                path = STAMP_FILE,
                "ignoring a rule check record that others can write"
            );
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Stamp::parse(&text)
    }

    /// Records this stamp as the one of a complete check, in a file only its owner can write.
    /// A failure only costs the next run an `iptables-save`, so it is logged and not returned.
    pub fn record(&self) {
        let text = format!("{} {} {}\n", self.boot_id, self.namespace, self.generation);
        let temporary = format!("{STAMP_FILE}.{}.tmp", std::process::id());
        let _ = std::fs::remove_file(&temporary);
        let written = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&temporary, STAMP_FILE));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::debug!(%error, path = STAMP_FILE, "failed to record the rule check");
        }
    }

    /// Forgets the recorded stamp, so the next run checks the rules.
    pub fn forget() -> io::Result<()> {
        match std::fs::remove_file(STAMP_FILE) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    fn parse(text: &str) -> Option<Stamp> {
        let mut fields = text.split_whitespace();
        let stamp = Stamp {
            boot_id: fields.next()?.to_string(),
            namespace: fields.next()?.parse().ok()?,
            generation: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(stamp)
    }
}

/// Reports whether `iptables-save` output comes from the nf_tables backend, whose rules are
/// part of the nftables ruleset.
pub(super) fn saved_by_nf_tables(saved: &str) -> bool {
    saved
        .lines()
        .take_while(|line| line.starts_with('#'))
        .any(|line| line.starts_with("# Generated by") && line.contains("(nf_tables)"))
}

/// Reads the cookie and the nftables ruleset generation of this thread's network namespace.
fn ruleset_generation() -> io::Result<(u64, u32)> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    let namespace = namespace_cookie(&socket)?;
    let sequence = std::process::id();
    let mut request = Vec::with_capacity(HEADER_LENGTH + NFGENMSG_LENGTH);
    request.extend_from_slice(&((HEADER_LENGTH + NFGENMSG_LENGTH) as u32).to_ne_bytes());
    request.extend_from_slice(&GETGEN.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&sequence.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    request.extend_from_slice(&[0, 0, 0, 0]);
    socket.send(&request, 0)?;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        if let Some(generation) = parse_reply(&reply, sequence)? {
            return Ok((namespace, generation));
        }
    }
}

/// Returns the cookie of the network namespace that `socket` belongs to.
fn namespace_cookie(socket: &Socket) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes to `cookie`, a live u64, and updates
    // `length`; both pointers are valid for the whole call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Returns the generation from the messages in `datagram` that reply to request `sequence`,
/// `None` when none does, or the error of a negative acknowledgement.
fn parse_reply(datagram: &[u8], sequence: u32) -> io::Result<Option<u32>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut offset = 0;
    while offset + HEADER_LENGTH <= datagram.len() {
        let header = &datagram[offset..offset + HEADER_LENGTH];
        let length = u32::from_ne_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let reply_sequence = u32::from_ne_bytes(header[8..12].try_into().unwrap_or_default());
        if length < HEADER_LENGTH || offset + length > datagram.len() {
            return Err(invalid("truncated netfilter netlink reply"));
        }
        let body = &datagram[offset + HEADER_LENGTH..offset + length];
        offset += length.next_multiple_of(4);
        if reply_sequence != sequence {
            continue;
        }
        if kind == NLMSG_ERROR {
            let code = body
                .get(0..4)
                .map(|bytes| i32::from_ne_bytes(bytes.try_into().unwrap_or_default()))
                .ok_or_else(|| invalid("truncated netlink error"))?;
            return Err(io::Error::from_raw_os_error(code.saturating_abs()));
        }
        let mut attributes = body.get(NFGENMSG_LENGTH..).unwrap_or_default();
        while attributes.len() >= 4 {
            let attribute_length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
            let attribute_kind = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
            if attribute_length < 4 || attribute_length > attributes.len() {
                return Err(invalid("truncated netfilter attribute"));
            }
            if attribute_kind == NFTA_GEN_ID && attribute_length == 8 {
                let value: [u8; 4] = attributes[4..8].try_into().unwrap_or_default();
                return Ok(Some(u32::from_be_bytes(value)));
            }
            let next = attribute_length.next_multiple_of(4).min(attributes.len());
            attributes = &attributes[next..];
        }
        return Err(invalid("netfilter reply without a generation"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::testutil::require_root;
    use std::process::Command;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            boot_id: "6c3a-11".to_string(),
            namespace: 4026531840,
            generation: 77,
        };
        let text = format!(
            "{} {} {}\n",
            stamp.boot_id, stamp.namespace, stamp.generation
        );
        assert_eq!(Stamp::parse(&text), Some(stamp));
        assert_eq!(Stamp::parse("6c3a-11 4026531840"), None);
        assert_eq!(Stamp::parse("6c3a-11 4026531840 77 extra"), None);
        assert_eq!(Stamp::parse("6c3a-11 x 77"), None);
    }

    #[test]
    fn backend_comes_from_the_header() {
        let nft = "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Fri Dec  4\n*filter\n";
        let legacy = "# Generated by iptables-save v1.8.9 on Fri Dec  4\n*filter\n";
        assert!(saved_by_nf_tables(nft));
        assert!(!saved_by_nf_tables(legacy));
        assert!(!saved_by_nf_tables(
            "*filter\n-A INPUT -m comment --comment (nf_tables)\n"
        ));
    }

    #[test]
    fn generation_counts_ruleset_changes() {
        if !require_root() {
            return;
        }
        let (namespace, before) = ruleset_generation().unwrap();
        let chain = format!("AK-GEN-TEST-{}", std::process::id());
        for action in ["-N", "-X"] {
            let status = Command::new("iptables")
                .args(["-w", action, &chain])
                .status()
                .unwrap();
            assert!(status.success(), "iptables {action} {chain}");
        }
        let (same_namespace, after) = ruleset_generation().unwrap();
        assert_eq!(same_namespace, namespace);
        assert!(after >= before.wrapping_add(2), "{before} -> {after}");
    }

    #[test]
    fn namespaces_have_their_own_cookie() {
        if !require_root() {
            return;
        }
        let (host, _) = ruleset_generation().unwrap();
        let cookies: Vec<u64> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    ruleset_generation().unwrap().0
                })
                .join()
                .unwrap()
            })
            .collect();
        assert_ne!(cookies[0], host);
        assert_ne!(cookies[1], host);
        assert_ne!(cookies[0], cookies[1]);
    }

    #[test]
    fn replies_of_other_requests_are_skipped() {
        // NFT_MSG_NEWGEN with NFTA_GEN_ID 5, sequence 9.
        let mut reply = Vec::new();
        reply.extend_from_slice(&28u32.to_ne_bytes());
        reply.extend_from_slice(&((10u16 << 8) | 15).to_ne_bytes());
        reply.extend_from_slice(&0u16.to_ne_bytes());
        reply.extend_from_slice(&9u32.to_ne_bytes());
        reply.extend_from_slice(&0u32.to_ne_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        reply.extend_from_slice(&8u16.to_ne_bytes());
        reply.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        reply.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(parse_reply(&reply, 9).unwrap(), Some(5));
        assert_eq!(parse_reply(&reply, 10).unwrap(), None);
        assert!(parse_reply(&reply[..20], 9).is_err());
    }
}
