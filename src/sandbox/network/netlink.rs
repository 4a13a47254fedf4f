//! Synchronous rtnetlink requests for the links, addresses and routes of the isolated network.
//!
//! A [`Netlink`] socket acts in the network namespace of the thread that opened it, so a thread
//! that has entered a sandbox's namespace configures that namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// Interface index of `lo`, which is the same in every network namespace.
pub(super) const LOOPBACK_INDEX: u32 = 1;

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
pub(super) struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Creates a veth pair: `name` in this namespace and `peer` in the network namespace of
    /// process `pid`. Both ends start down.
    pub fn create_veth(&mut self, name: &str, peer: &str, pid: u32) -> io::Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::NetNsPid(pid),
        ];
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Returns the index of interface `name`.
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut message = LinkMessage::default();
        message.attributes = vec![LinkAttribute::IfName(name.to_string())];
        let replies = self.request(RouteNetlinkMessage::GetLink(message), 0)?;
        replies
            .into_iter()
            .find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("no reply for interface {name}")))
    }

    /// Returns the names of all interfaces.
    pub fn link_names(&mut self) -> io::Result<Vec<String>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies.into_iter().filter_map(interface_name).collect())
    }

    /// Sets `IFF_UP` on the interface with index `index`.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)?;
        Ok(())
    }

    /// Returns the name of the interface with index `index`, or `None` when there is none.
    pub fn link_name(&mut self, index: u32) -> io::Result<Option<String>> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let replies = match self.request(RouteNetlinkMessage::GetLink(message), 0) {
            Ok(replies) => replies,
            Err(error) if error.raw_os_error() == Some(nix::libc::ENODEV) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(replies.into_iter().find_map(interface_name))
    }

    /// Deletes the interface with index `index` and returns whether it existed.
    pub fn delete_link(&mut self, index: u32) -> io::Result<bool> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(message), 0) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(nix::libc::ENODEV) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Adds `address/prefix_length` to the interface with index `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix_length: u8,
    ) -> io::Result<()> {
        let broadcast = Ipv4Addr::from(u32::from(address) | (u32::MAX >> prefix_length));
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix_length;
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
            AddressAttribute::Broadcast(broadcast),
        ];
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Returns every IPv4 address of every interface.
    pub fn ipv4_addresses(&mut self) -> io::Result<Vec<Ipv4Addr>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(address) => Some(address.attributes),
                _ => None,
            })
            .flatten()
            .filter_map(|attribute| match attribute {
                AddressAttribute::Local(IpAddr::V4(address)) => Some(address),
                _ => None,
            })
            .collect())
    }

    /// Adds a default IPv4 route in the main table via `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Sends `message` with `flags` and collects the replies up to the acknowledgement, or up
    /// to the end of the dump when `flags` contains `NLM_F_DUMP`. A negative acknowledgement
    /// becomes the error with its errno.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(message),
        );
        packet.header.flags = NLM_F_REQUEST | flags;
        if flags & NLM_F_DUMP != NLM_F_DUMP {
            packet.header.flags |= NLM_F_ACK;
        }
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|error| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("invalid netlink reply: {error}"),
                        )
                    })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                // Messages in one datagram start at 4-byte boundaries.
                offset += length.next_multiple_of(4);
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(_) => Err(error.to_io()),
                        };
                    }
                    NetlinkPayload::Done(done) => {
                        return match done.code {
                            0 => Ok(replies),
                            code => Err(io::Error::from_raw_os_error(code.abs())),
                        };
                    }
                    NetlinkPayload::InnerMessage(message) => replies.push(message),
                    _ => {}
                }
            }
        }
    }
}

/// Returns the interface name of a `NewLink` reply.
fn interface_name(reply: RouteNetlinkMessage) -> Option<String> {
    let RouteNetlinkMessage::NewLink(link) = reply else {
        return None;
    };
    link.attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
}
