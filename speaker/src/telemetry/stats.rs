//! The counters and gauges the hot paths (responder threads, the liveness receiver, the announcer) bump and
//! `/metrics` reads at scrape time.

use crate::wire::Mac;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

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

/// Replaces a gauge family's values; labels seen before stay at 0 so their series do not vanish.
fn set_gauge(gauge: &Mutex<BTreeMap<&'static str, u64>>, now: BTreeMap<&'static str, u64>) {
    if let Ok(mut g) = gauge.lock() {
        g.values_mut().for_each(|v| *v = 0);
        g.extend(now);
    }
}

impl Stats {
    /// Unanswered addresses nobody may announce, per reason (all zero on a speaker that does not report).
    pub fn set_unannounced(&self, per_reason: BTreeMap<&'static str, u64>) {
        set_gauge(&self.unannounced, per_reason);
    }

    /// Addresses this node won but cannot answer for, per reason.
    pub fn set_announce_failed(&self, per_reason: BTreeMap<&'static str, u64>) {
        set_gauge(&self.announce_failed, per_reason);
    }

    /// The Services (`namespace/name`) this node answers for, per address.
    pub fn set_announced(&self, per_address: BTreeMap<IpAddr, BTreeSet<String>>) {
        if let Ok(mut announced) = self.announced.lock() {
            *announced = per_address;
        }
    }

    /// One more reading of the interfaces, for this reason (`netlink` or `timer`).
    pub fn count_rescan(&self, trigger: &'static str) {
        if let Ok(mut counts) = self.interface_rescans.lock() {
            *counts.entry(trigger).or_default() += 1;
        }
    }

    /// Strangers seen at `now` claiming addresses this node answers for.
    pub fn saw_strangers(&self, claims: impl IntoIterator<Item = (IpAddr, Mac)>, now: std::time::Instant) {
        if let Ok(mut s) = self.strangers.lock() {
            s.extend(claims.into_iter().map(|claim| (claim, now)));
        }
    }
}
