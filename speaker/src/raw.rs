//! Raw-socket I/O through `pnet_datalink` (an `AF_PACKET` socket per interface; no `unsafe` here): one thread
//! per interface reads frames, asks [`crate::wire::answer`] (ARP or neighbour discovery) and sends what it says.
//! For IPv6 the interface also joins the solicited-node multicast group of every address it may answer for:
//! solicitations are sent there, and a NIC or an MLD-snooping switch drops them unless someone joined.

use crate::arp::Mac;
use crate::claim::Heard;
use crate::iface::{Exclusions, InterfaceInfo};
use crate::ndp;
use crate::wire::{self, Answer};
use pnet_datalink::{Channel, DataLinkSender};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The node's interfaces as the OS reports them, each marked when `exclusions` names it.
pub fn interfaces(exclusions: &Exclusions) -> Vec<InterfaceInfo> {
    pnet_datalink::interfaces()
        .into_iter()
        .map(|i| {
            let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
            for network in &i.ips {
                match network.ip() {
                    IpAddr::V4(v4) => ipv4.push((v4, network.prefix())),
                    IpAddr::V6(v6) => ipv6.push((v6, network.prefix())),
                }
            }
            InterfaceInfo {
                up: i.is_up() && i.is_running(),
                mac: i.mac.map(|m| m.octets()),
                ipv4,
                ipv6,
                index: i.index,
                excluded: exclusions.matches(&i.name),
                name: i.name,
            }
        })
        .collect()
}

/// `net.ipv4.conf.{all,<iface>}.arp_ignore` of this network namespace (missing files read as 0).
pub fn arp_ignore(interfaces: &[InterfaceInfo]) -> BTreeMap<String, u8> {
    std::iter::once("all")
        .chain(interfaces.iter().map(|i| i.name.as_str()))
        .map(|name| {
            let path = format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore");
            let value = std::fs::read_to_string(path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            (name.to_string(), value)
        })
        .collect()
}

/// Counters the responder threads update and `/metrics` reads.
#[derive(Default)]
pub struct Stats {
    /// ARP requests seen (answered or not).
    pub requests: AtomicU64,
    /// ARP requests answered.
    pub replies: AtomicU64,
    /// Neighbour solicitations seen (answered or not).
    pub solicitations: AtomicU64,
    /// Neighbour solicitations answered.
    pub advertisements: AtomicU64,
    /// Unsolicited neighbour advertisements sent (the IPv6 gratuitous ARP).
    pub unsolicited_advertisements: AtomicU64,
    /// Solicited-node multicast groups that could not be joined (solicitations for those addresses may be lost).
    pub group_join_failures: AtomicU64,
    /// Frames seen (of any kind) on the raw sockets.
    pub frames: AtomicU64,
    /// Gratuitous frames sent.
    pub gratuitous: AtomicU64,
    /// ARP requests not answered, by reason label.
    pub drops: Mutex<BTreeMap<&'static str, u64>>,
    /// Neighbour solicitations (and malformed NDP) not answered, by reason label.
    pub ndp_drops: Mutex<BTreeMap<&'static str, u64>>,
    /// Set while kube-proxy IPVS runs without strictARP on this node.
    pub strict_arp_missing: AtomicBool,
    /// Peers this node saw die (alive → dead).
    pub detections: AtomicU64,
    /// Sum over those of the peer's silence when declared dead, in µs.
    pub detection_micros: AtomicU64,
    /// Times this node took over an address.
    pub takeovers: AtomicU64,
    /// Times this node gave an address up.
    pub releases: AtomicU64,
    /// Liveness datagrams rejected, by reason label.
    pub gossip_rejects: Mutex<BTreeMap<&'static str, u64>>,
    /// Service addresses nobody may announce, by reason label (counted by the reporting speaker only).
    pub unannounced: Mutex<BTreeMap<&'static str, u64>>,
    /// Service addresses this node won but cannot answer for, by reason label.
    pub announce_failed: Mutex<BTreeMap<&'static str, u64>>,
    /// Probes (RFC 5227 ARP, RFC 4862 duplicate-address) sent before answering for an address.
    pub probes: AtomicU64,
    /// Addresses the election gives this node that another node's MAC answers for (held back).
    pub held_back: AtomicU64,
    /// Claims by another node of an address this node answered for.
    pub conflicts_node: AtomicU64,
    /// Claims by a MAC that is no node's, of an address this node answers for.
    pub conflicts_stranger: AtomicU64,
    /// Peers this node cannot hear although their Node Lease is being renewed.
    pub unheard_live_peers: AtomicU64,
    /// Strangers (no node's MAC) seen claiming an address this node answers for: (address, MAC) → when.
    pub strangers: Mutex<BTreeMap<(IpAddr, Mac), std::time::Instant>>,
    /// Times the interfaces were read again, by reason (`netlink`, `timer`).
    pub interface_rescans: Mutex<BTreeMap<&'static str, u64>>,
    /// Plans made (one per wake).
    pub plans: AtomicU64,
    /// Time spent planning, summed, in microseconds.
    pub plan_micros: AtomicU64,
    /// Per address this node answered for: MetalLB's per-address ARP/NDP counters.
    pub per_address: Mutex<BTreeMap<IpAddr, AddressCounters>>,
    /// The Services (`namespace/name`) this node answers for, per address.
    pub announced: Mutex<BTreeMap<IpAddr, BTreeSet<String>>>,
}

/// ARP or NDP counters of one address, kept under MetalLB's names (`metallb_layer2_*`) so its dashboards keep working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressCounters {
    /// Requests for it this node answered.
    pub requests: u64,
    /// Replies sent for it.
    pub responses: u64,
    /// Gratuitous frames sent for it.
    pub gratuitous: u64,
}

impl Stats {
    /// Adds to one address's counters.
    pub fn count_for(&self, ip: IpAddr, add: impl FnOnce(&mut AddressCounters)) {
        if let Ok(mut map) = self.per_address.lock() {
            add(map.entry(ip).or_default());
        }
    }
}

/// Addresses owned, and the interfaces each is answered on.
pub type Owned = Arc<RwLock<BTreeMap<IpAddr, BTreeSet<String>>>>;

/// Where responders leave the claims they hear for addresses the announcer watches, and how they wake it.
#[derive(Default)]
pub struct ClaimSink {
    watched: RwLock<BTreeSet<IpAddr>>,
    heard: Mutex<Vec<Heard>>,
    /// Signalled when a claim arrives.
    pub notify: tokio::sync::Notify,
}

impl ClaimSink {
    /// Listen for claims of exactly these addresses.
    pub fn watch(&self, ips: BTreeSet<IpAddr>) {
        if let Ok(mut w) = self.watched.write() {
            *w = ips;
        }
    }

    /// The claims heard since the last call.
    pub fn drain(&self) -> Vec<Heard> {
        self.heard.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default()
    }

    fn offer(&self, frame: &[u8], on: Mac) {
        let Some((ip, mac)) = wire::claim(frame, on) else { return };
        if !self.watched.read().is_ok_and(|w| w.contains(&ip)) {
            return;
        }
        if let Ok(mut h) = self.heard.lock() {
            // Bounded: a flood of claims must not grow memory; the newest are what matter.
            if h.len() >= 4096 {
                h.remove(0);
            }
            h.push(Heard { ip, mac, on, at: std::time::Instant::now() });
        }
        self.notify.notify_one();
    }
}

/// A running responder on one interface.
pub struct Responder {
    /// The interface.
    pub name: String,
    /// Its MAC.
    pub mac: Mac,
    /// Its interface index: a NIC removed and added again under the same name is another interface, and its
    /// old socket hears nothing.
    pub index: u32,
    sender: Arc<Mutex<Box<dyn DataLinkSender>>>,
    stop: Arc<AtomicBool>,
    groups: Mutex<Groups>,
}

/// The solicited-node multicast groups one interface has joined, through IPv6 UDP sockets: joining there makes
/// the kernel program the NIC's filter and send MLD reports (which snooping switches need), and leaving happens by
/// itself when the sockets close with the responder. One socket holds only so many groups (its option memory,
/// `net.core.optmem_max`: 2,340 with the default 128 KiB here), so more sockets are opened as they fill up.
struct Groups {
    index: u32,
    sockets: Vec<std::net::UdpSocket>,
    /// The groups last asked for: an unchanged request does nothing (a failed join is not retried, and not
    /// logged again, until what is wanted changes).
    wanted: BTreeSet<Ipv6Addr>,
    /// Joined groups, with the socket that holds each.
    joined: BTreeMap<Ipv6Addr, usize>,
}

impl Groups {
    /// Joins the groups of `addresses` not joined yet and leaves those no longer needed; returns the failures.
    fn set(&mut self, addresses: &BTreeSet<Ipv6Addr>) -> Vec<(Ipv6Addr, std::io::Error)> {
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
                Err(e) if !matches!(e.raw_os_error(), Some(12 | 105)) => return Err(e),
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

impl Responder {
    /// Opens the interface's raw socket and starts answering for what `owned` lists on it.
    pub fn start(
        iface: &InterfaceInfo,
        owned: Owned,
        claims: Arc<ClaimSink>,
        stats: Arc<Stats>,
    ) -> crate::error::Result<Self> {
        let err = |e: std::io::Error| crate::error::Error::RawSocket { interface: iface.name.clone(), source: e };
        let pnet_iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface.name)
            .ok_or_else(|| err(std::io::Error::new(std::io::ErrorKind::NotFound, "interface vanished")))?;
        let config = pnet_datalink::Config { read_timeout: Some(Duration::from_millis(250)), ..Default::default() };
        let (tx, mut rx) = match pnet_datalink::channel(&pnet_iface, config).map_err(err)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(err(std::io::Error::other("not an Ethernet channel"))),
        };
        let mac = Mac(iface.mac.unwrap_or([0; 6]));
        let sender = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let (name, thread_sender, thread_stop) = (iface.name.clone(), sender.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("arp-{name}"))
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    let Ok(frame) = rx.next() else { continue };
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    claims.offer(frame, mac);
                    let owns = |ip: IpAddr| owned.read().is_ok_and(|o| o.get(&ip).is_some_and(|on| on.contains(&name)));
                    match wire::answer(frame, mac, owns) {
                        Answer::Reply { reply, ip } => {
                            let sent = thread_sender
                                .lock()
                                .ok()
                                .and_then(|mut tx| tx.send_to(&reply, None))
                                .is_some_and(|r| r.is_ok());
                            let (requests, replies) = match ip {
                                IpAddr::V4(_) => (&stats.requests, &stats.replies),
                                IpAddr::V6(_) => (&stats.solicitations, &stats.advertisements),
                            };
                            requests.fetch_add(1, Ordering::Relaxed);
                            replies.fetch_add(1, Ordering::Relaxed);
                            stats.count_for(ip, |c| {
                                c.requests += 1;
                                c.responses += u64::from(sent);
                            });
                        }
                        Answer::Drop { protocol, reason } => {
                            let (requests, drops) = match protocol {
                                "ndp" => (&stats.solicitations, &stats.ndp_drops),
                                _ => (&stats.requests, &stats.drops),
                            };
                            if wire::is_request(frame) {
                                requests.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Ok(mut d) = drops.lock() {
                                *d.entry(reason).or_default() += 1;
                            }
                        }
                        // Ordinary traffic (most frames on a raw socket): counting it would drown the rest.
                        Answer::Ignore => {}
                    }
                }
            })
            .map_err(err)?;
        let groups = Mutex::new(Groups {
            index: iface.index,
            sockets: Vec::new(),
            wanted: BTreeSet::new(),
            joined: BTreeMap::new(),
        });
        Ok(Self { name: iface.name.clone(), mac, index: iface.index, sender, stop, groups })
    }

    /// Asks who answers for `ip` (an RFC 5227 ARP probe or an RFC 4862 duplicate-address probe).
    pub fn probe(&self, ip: IpAddr, stats: &Stats) {
        if let Ok(mut tx) = self.sender.lock() {
            let _ = tx.send_to(&wire::probe(self.mac, ip), None);
            stats.probes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the frames that move neighbour caches to this interface for `ip` (gratuitous ARP, or an
    /// unsolicited neighbour advertisement).
    pub fn announce(&self, ip: IpAddr, stats: &Stats) {
        if let Ok(mut tx) = self.sender.lock() {
            for frame in wire::announcements(self.mac, ip) {
                let _ = tx.send_to(&frame, None);
                let counter = if ip.is_ipv4() { &stats.gratuitous } else { &stats.unsolicited_advertisements };
                counter.fetch_add(1, Ordering::Relaxed);
                stats.count_for(ip, |c| c.gratuitous += 1);
            }
        }
    }

    /// Listens for solicitations of exactly these IPv6 addresses (joins and leaves their solicited-node groups).
    pub fn listen_for(&self, addresses: &BTreeSet<Ipv6Addr>, stats: &Stats) {
        let Ok(mut groups) = self.groups.lock() else { return };
        for (group, error) in groups.set(addresses) {
            stats.group_join_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(interface = %self.name, %group, %error, "cannot join a solicited-node multicast group; solicitations for its addresses may not reach this node");
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
            let name = "raw::tests::groups_beyond_one_sockets_memory_are_all_joined_and_left_again";
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
        let mut groups = Groups { index, sockets: Vec::new(), wanted: BTreeSet::new(), joined: BTreeMap::new() };
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
