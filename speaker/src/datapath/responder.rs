//! Raw-socket I/O through `pnet_datalink` (an `AF_PACKET` socket per interface; no `unsafe` here): one thread
//! per interface reads frames, asks [`crate::wire::answer`] (ARP or neighbour discovery) and sends what it says.
//! For IPv6 the interface also joins the solicited-node multicast group of every address it may answer for:
//! solicitations are sent there, and a NIC or an MLD-snooping switch drops them unless someone joined.

use crate::datapath::claims::{ClaimSink, Owned};
use crate::datapath::groups::Groups;
use crate::model::interfaces::InterfaceInfo;
use crate::telemetry::stats::Stats;
use crate::wire::{self, Answer, Mac};
use pnet_datalink::{Channel, DataLinkSender};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
                    stats.frames.inc();
                    claims.offer(frame, mac);
                    let owns = |ip: IpAddr| owned.read().is_ok_and(|o| o.get(&ip).is_some_and(|on| on.contains(&name)));
                    if let Some(ip) = wire::asked(frame, mac)
                        && !owns(ip)
                    {
                        claims.saw_asked(ip);
                    }
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
                            requests.inc();
                            replies.inc();
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
                                requests.inc();
                            }
                            Stats::count(drops, reason);
                        }
                        // Ordinary traffic (most frames on a raw socket): counting it would drown the rest.
                        Answer::Ignore => {}
                    }
                }
            })
            .map_err(err)?;
        let groups = Mutex::new(Groups::new(iface.index));
        Ok(Self { name: iface.name.clone(), mac, index: iface.index, sender, stop, groups })
    }

    /// Asks who answers for `ip` (an RFC 5227 ARP probe or an RFC 4862 duplicate-address probe).
    pub fn probe(&self, ip: IpAddr, stats: &Stats) {
        if let Ok(mut tx) = self.sender.lock() {
            let _ = tx.send_to(&wire::probe(self.mac, ip), None);
            stats.probes.inc();
        }
    }

    /// Sends the frames that move neighbour caches to this interface for `ip` (gratuitous ARP, or an
    /// unsolicited neighbour advertisement).
    pub fn announce(&self, ip: IpAddr, stats: &Stats) {
        if let Ok(mut tx) = self.sender.lock() {
            for frame in wire::announcements(self.mac, ip) {
                let _ = tx.send_to(&frame, None);
                let counter = if ip.is_ipv4() { &stats.gratuitous } else { &stats.unsolicited_advertisements };
                counter.inc();
                stats.count_for(ip, |c| c.gratuitous += 1);
            }
        }
    }

    /// Listens for solicitations of exactly these IPv6 addresses (joins and leaves their solicited-node groups).
    pub fn listen_for(&self, addresses: &BTreeSet<Ipv6Addr>, stats: &Stats) {
        let Ok(mut groups) = self.groups.lock() else { return };
        for (group, error) in groups.set(addresses) {
            stats.group_join_failures.inc();
            tracing::warn!(interface = %self.name, %group, %error, "cannot join a solicited-node multicast group; solicitations for its addresses may not reach this node");
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
