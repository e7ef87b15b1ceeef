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

#[cfg(test)]
mod tests {
    use super::*;

    const INSIDE: &str = "FERROLB_TEST_IN_NETNS";

    /// Solicited-node groups of `ip` joined on `interface`, read from the kernel (`/proc/net/igmp6`).
    fn kernel_groups(interface: &str) -> BTreeSet<Ipv6Addr> {
        let text = std::fs::read_to_string("/proc/net/igmp6").expect("igmp6");
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&interface)).then(|| u128::from_str_radix(f.get(2)?, 16).ok()).flatten()
            })
            .map(Ipv6Addr::from)
            .filter(|g| g.segments()[..6] == [0xff02, 0, 0, 0, 0, 1])
            .collect()
    }

    /// More groups than one socket's option memory holds (2,340 here), in a network namespace of its own (the
    /// test re-runs itself under `unshare --net`, so no interface of the machine is touched; needs root, as the
    /// lab does).
    #[test]
    fn groups_beyond_one_sockets_memory_are_all_joined_and_left_again() {
        if std::env::var_os(INSIDE).is_none() {
            let exe = std::env::current_exe().expect("test binary");
            let name = "datapath::groups::tests::groups_beyond_one_sockets_memory_are_all_joined_and_left_again";
            let status = std::process::Command::new("unshare")
                .arg("--net")
                .arg(exe)
                .args(["--exact", name, "--nocapture"])
                .env(INSIDE, "1")
                .status()
                .expect("unshare");
            assert!(status.success(), "the test failed inside its network namespace");
            return;
        }
        for args in [&["link", "add", "va", "type", "veth", "peer", "name", "vb"][..], &["link", "set", "va", "up"]] {
            let ok = std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        }
        // Not /sys/class/net: sysfs shows the namespace it was mounted in, not this one.
        let index = pnet_datalink::interfaces().into_iter().find(|i| i.name == "va").expect("va").index;
        let own = kernel_groups("va");
        let mut groups = Groups::new(index);
        let addresses: BTreeSet<Ipv6Addr> =
            (1..=3000u128).map(|i| Ipv6Addr::from(0x2001_0db8_0019_0000_0000_0000_0000_0000 | i)).collect();
        let failed = groups.set(&addresses);
        assert!(failed.is_empty(), "{} joins failed, first {:?}", failed.len(), failed.first());
        let want: BTreeSet<Ipv6Addr> = addresses.iter().map(|ip| ndp::solicited_node(*ip)).collect();
        assert_eq!(kernel_groups("va").difference(&own).count(), want.difference(&own).count());
        let few: BTreeSet<Ipv6Addr> = addresses.iter().take(10).copied().collect();
        assert!(groups.set(&few).is_empty());
        let left: BTreeSet<Ipv6Addr> = kernel_groups("va").difference(&own).copied().collect();
        let few_groups: BTreeSet<Ipv6Addr> = few.iter().map(|ip| ndp::solicited_node(*ip)).collect();
        assert_eq!(left, few_groups.difference(&own).copied().collect(), "the rest were left");
    }
}
