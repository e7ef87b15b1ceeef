//! Solicited-node multicast membership for the IPv6 addresses an interface may answer for.

use crate::wire::ndp;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

/// The solicited-node multicast groups one interface has joined, through IPv6 UDP sockets: joining there makes
/// the kernel program the NIC's filter and send MLD reports (which snooping switches need), and leaving happens by
/// itself when the sockets close with the responder. One socket holds only so many groups (its option memory,
/// `net.core.optmem_max`: 2,340 with the default 128 KiB here), so more sockets are opened as they fill up.
pub struct Groups {
    index: u32,
    sockets: Vec<std::net::UdpSocket>,
    /// The groups last asked for: an unchanged request does nothing (a failed join is not retried, and not
    /// logged again, until what is wanted changes).
    wanted: BTreeSet<Ipv6Addr>,
    /// Joined groups, with the socket that holds each.
    joined: BTreeMap<Ipv6Addr, usize>,
}

impl Groups {
    /// No group joined yet on the interface with this index.
    pub fn new(index: u32) -> Self {
        Self { index, sockets: Vec::new(), wanted: BTreeSet::new(), joined: BTreeMap::new() }
    }

    /// Joins the groups of `addresses` not joined yet and leaves those no longer needed; returns the failures.
    pub fn set(&mut self, addresses: &BTreeSet<Ipv6Addr>) -> Vec<(Ipv6Addr, std::io::Error)> {
        let want: BTreeSet<Ipv6Addr> = addresses.iter().map(|ip| ndp::solicited_node(*ip)).collect();
        if want == self.wanted {
            return Vec::new();
        }
        self.wanted = want.clone();
        let gone: Vec<Ipv6Addr> = self.joined.keys().filter(|g| !want.contains(g)).copied().collect();
        for group in gone {
            if let Some(socket) = self.joined.remove(&group).and_then(|i| self.sockets.get(i)) {
                let _ = socket.leave_multicast_v6(&group, self.index);
            }
        }
        let new: Vec<Ipv6Addr> = want.into_iter().filter(|g| !self.joined.contains_key(g)).collect();
        new.into_iter().filter_map(|group| self.join(group).err().map(|e| (group, e))).collect()
    }

    /// Joins one group on the newest socket, opening a new one when there is none or it is full.
    fn join(&mut self, group: Ipv6Addr) -> std::io::Result<()> {
        if let Some(socket) = self.sockets.last() {
            match socket.join_multicast_v6(&group, self.index) {
                Ok(()) => {
                    self.joined.insert(group, self.sockets.len() - 1);
                    return Ok(());
                }
                // ENOMEM / ENOBUFS: this socket's option memory is used up; another socket has its own.
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS)) => return Err(e),
                Err(_) => {}
            }
        }
        let socket = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
        socket.join_multicast_v6(&group, self.index)?;
        self.sockets.push(socket);
        self.joined.insert(group, self.sockets.len() - 1);
        Ok(())
    }
}
