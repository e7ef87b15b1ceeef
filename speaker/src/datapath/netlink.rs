//! Interface changes as the kernel announces them: a `NETLINK_ROUTE` socket subscribed to link and address
//! events wakes the planner so a NIC added, removed, brought up or down, or readdressed is picked up at once
//! instead of at the next rescan (docs/design.md §4.4). Only a wake: what changed is read again from the OS
//! by [`crate::datapath::host`], so nothing here has to understand more of a message than its type.

use crate::wake::{Wake, WakeSender};

/// `RTMGRP_LINK`: links appearing, vanishing, going up or down.
const RTMGRP_LINK: u32 = 0x1;
/// `RTMGRP_IPV4_IFADDR`: IPv4 addresses added or removed.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// `RTMGRP_IPV6_IFADDR`: IPv6 addresses added or removed.
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// One kernel notification that matters to the interface list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `RTM_NEWLINK` / `RTM_DELLINK` for this interface index.
    Link(u32),
    /// `RTM_NEWADDR` / `RTM_DELADDR` on this interface index.
    Address(u32),
}

/// The link and address notifications in one datagram from the socket (pure). A datagram holds one or more
/// messages, each a `nlmsghdr` (length, type, flags, sequence, port; host byte order) padded to 4 bytes; link
/// (`ifinfomsg`) and address (`ifaddrmsg`) bodies both carry the interface index 4 bytes in. Anything else, or
/// a truncated message, is skipped.
pub fn changes(datagram: &[u8]) -> Vec<Change> {
    const HEADER: usize = 16;
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes);
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).and_then(|s| s.try_into().ok()).map(u16::from_ne_bytes);
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(datagram, at), u16_at(datagram, at + 4)) {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < HEADER || at.saturating_add(len) > datagram.len() {
            break;
        }
        let message = &datagram[at..at + len];
        let index = u32_at(message, HEADER + 4);
        match (kind, index) {
            (16 | 17, Some(index)) => out.push(Change::Link(index)),
            (20 | 21, Some(index)) => out.push(Change::Address(index)),
            _ => {}
        }
        at += len.div_ceil(4) * 4;
    }
    out
}

/// Listens for link and address changes on a thread of its own; on each, wakes the planner to read the
/// interfaces again.
/// Fails when the socket cannot be opened (the caller then rescans on its timer alone).
pub fn watch(wake: WakeSender) -> std::io::Result<()> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
    std::thread::Builder::new().name("netlink".into()).spawn(move || {
        loop {
            match socket.recv_from_full() {
                Ok((datagram, _)) => {
                    let seen = changes(&datagram);
                    if seen.is_empty() {
                        continue;
                    }
                    tracing::debug!(changes = ?seen, "netlink: interfaces changed");
                }
                // ENOBUFS: the kernel dropped notifications (a burst); what changed is unknown, so look.
                Err(e) => {
                    tracing::warn!(error = %e, "netlink socket: reading interfaces again");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
            if wake.send(Wake::Interfaces).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + body.len()).expect("small");
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    fn link(index: u32) -> Vec<u8> {
        let mut body = vec![0, 0, 1, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        message(16, &body)
    }

    fn address(kind: u16, index: u32, extra: usize) -> Vec<u8> {
        let mut body = vec![2, 24, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend(std::iter::repeat_n(7, extra));
        message(kind, &body)
    }

    #[test]
    fn link_and_address_messages_are_read_with_their_index_and_others_skipped() {
        let mut datagram = link(3);
        datagram.extend(address(21, 7, 5)); // padded to 4 bytes
        datagram.extend(message(24, &[0; 12])); // RTM_NEWROUTE: not ours
        datagram.extend(address(20, 9, 0));
        assert_eq!(changes(&datagram), [Change::Link(3), Change::Address(7), Change::Address(9)]);
        assert!(changes(&message(17, &[0; 4])).is_empty(), "a link message too short for its index");
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        assert!(changes(&[]).is_empty());
        assert!(changes(&[1, 2, 3]).is_empty());
        let mut truncated = link(3);
        truncated.truncate(20);
        assert!(changes(&truncated).is_empty());
        let mut zero_length = link(3);
        zero_length[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(changes(&zero_length).is_empty(), "a zero length would loop forever");
        let mut huge = link(3);
        huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(changes(&huge).is_empty());
    }
}
