//! What the speaker counts: prometheus-client metrics (as the controller's), bumped by the hot paths (responder
//! threads, the liveness receiver, the announcer, the planner) and registered once in [`super::metrics`]; and the
//! few tables that are rendered at scrape time instead (MetalLB's per-address series, strangers seen lately).

use crate::wire::Mac;
use ferrolb_crds::service::ServiceKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// The `reason` label of the per-reason families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// A closed set of labels (drop reasons, refusal reasons, rescan triggers).
    pub reason: &'static str,
}

/// Counters per reason.
pub type ByReason = Family<Reason, Counter>;

/// Gauges per reason whose labels, once seen, stay at 0 rather than vanish (so alerts see the drop to 0).
#[derive(Debug, Default)]
pub struct ReasonGauges {
    /// The family registered.
    pub family: Family<Reason, Gauge>,
    seen: Mutex<BTreeSet<&'static str>>,
}

impl ReasonGauges {
    /// Sets the gauges to `now`; labels seen before and absent now go to 0.
    pub fn set(&self, now: BTreeMap<&'static str, u64>) {
        let Ok(mut seen) = self.seen.lock() else { return };
        seen.extend(now.keys());
        for reason in seen.iter() {
            let value = now.get(reason).copied().unwrap_or(0);
            self.family.get_or_create(&Reason { reason }).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
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

/// Everything the speaker counts.
#[derive(Debug)]
pub struct Stats {
    /// ARP requests seen (answered or not).
    pub requests: Counter,
    /// ARP requests answered.
    pub replies: Counter,
    /// Neighbour solicitations seen (answered or not).
    pub solicitations: Counter,
    /// Neighbour solicitations answered.
    pub advertisements: Counter,
    /// Unsolicited neighbour advertisements sent (the IPv6 gratuitous ARP).
    pub unsolicited_advertisements: Counter,
    /// Solicited-node multicast groups that could not be joined (solicitations for those addresses may be lost).
    pub group_join_failures: Counter,
    /// Frames seen (of any kind) on the raw sockets.
    pub frames: Counter,
    /// Gratuitous frames sent.
    pub gratuitous: Counter,
    /// Times this node took over an address.
    pub takeovers: Counter,
    /// Times this node gave an address up.
    pub releases: Counter,
    /// Probes (RFC 5227 ARP, RFC 4862 duplicate-address) sent before answering for an address.
    pub probes: Counter,
    /// Claims by another node of an address this node answered for.
    pub conflicts_node: Counter,
    /// Claims by a MAC that is no node's, of an address this node answers for.
    pub conflicts_stranger: Counter,
    /// ARP requests not answered, by reason.
    pub drops: ByReason,
    /// Neighbour solicitations (and malformed NDP) not answered, by reason.
    pub ndp_drops: ByReason,
    /// Liveness datagrams rejected, by reason.
    pub gossip_rejects: ByReason,
    /// Times the interfaces were read again, by reason (`netlink`, `timer`).
    pub interface_rescans: ByReason,
    /// Service addresses nobody may announce, by reason (set by the reporting speaker only).
    pub unannounced: ReasonGauges,
    /// Service addresses this node won but cannot answer for, by reason.
    pub announce_failed: ReasonGauges,
    /// 1 while kube-proxy IPVS runs without strictARP on this node.
    pub strict_arp_missing: Gauge,
    /// Addresses the election gives this node that another node's MAC answers for (held back).
    pub held_back: Gauge,
    /// Peers this node cannot hear although their node shows signs of life.
    pub unheard_live_peers: Gauge,
    /// A peer's silence when declared dead (alive → dead): the detection latency.
    pub failure_detection: Histogram,
    /// Time to plan, per wake.
    pub plan: Histogram,
    /// Strangers (no node's MAC) seen claiming an address this node answers for: (address, MAC) → when.
    pub strangers: Mutex<BTreeMap<(IpAddr, Mac), std::time::Instant>>,
    /// Per address this node answered for: MetalLB's per-address ARP/NDP counters.
    pub per_address: Mutex<BTreeMap<IpAddr, AddressCounters>>,
    /// The Services this node answers for, per address.
    pub announced: Mutex<BTreeMap<IpAddr, Vec<ServiceKey>>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            replies: Counter::default(),
            solicitations: Counter::default(),
            advertisements: Counter::default(),
            unsolicited_advertisements: Counter::default(),
            group_join_failures: Counter::default(),
            frames: Counter::default(),
            gratuitous: Counter::default(),
            takeovers: Counter::default(),
            releases: Counter::default(),
            probes: Counter::default(),
            conflicts_node: Counter::default(),
            conflicts_stranger: Counter::default(),
            drops: ByReason::default(),
            ndp_drops: ByReason::default(),
            gossip_rejects: ByReason::default(),
            interface_rescans: ByReason::default(),
            unannounced: ReasonGauges::default(),
            announce_failed: ReasonGauges::default(),
            strict_arp_missing: Gauge::default(),
            held_back: Gauge::default(),
            unheard_live_peers: Gauge::default(),
            // Detection is the heartbeat timeout (200 ms by default) plus the detector's tick.
            failure_detection: Histogram::new([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.0, 5.0, 30.0]),
            // A pass is tens of microseconds idle and up to tens of milliseconds with 10,000 Services.
            plan: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            strangers: Mutex::default(),
            per_address: Mutex::default(),
            announced: Mutex::default(),
        }
    }
}

/// A count as a gauge value.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stats {
    /// Adds to one address's counters.
    pub fn count_for(&self, ip: IpAddr, add: impl FnOnce(&mut AddressCounters)) {
        if let Ok(mut map) = self.per_address.lock() {
            add(map.entry(ip).or_default());
        }
    }

    /// Counts one more of `reason` in `family`; returns the count now (for logging the 1st, 2nd, 4th … only).
    pub fn count(family: &ByReason, reason: &'static str) -> u64 {
        family.get_or_create(&Reason { reason }).inc() + 1
    }

    /// The Services (`namespace/name`) this node answers for, per address. The per-address counters of the
    /// addresses it no longer answers for go with them: like MetalLB's, the series exist only on the node that
    /// announces, and a speaker that handed over thousands of addresses keeps no memory of them.
    pub fn set_announced(&self, per_address: BTreeMap<IpAddr, Vec<ServiceKey>>) {
        if let Ok(mut counters) = self.per_address.lock() {
            counters.retain(|ip, _| per_address.contains_key(ip));
        }
        if let Ok(mut announced) = self.announced.lock() {
            *announced = per_address;
        }
    }

    /// Strangers seen at `now` claiming addresses this node answers for.
    pub fn saw_strangers(&self, claims: impl IntoIterator<Item = (IpAddr, Mac)>, now: std::time::Instant) {
        if let Ok(mut s) = self.strangers.lock() {
            s.extend(claims.into_iter().map(|claim| (claim, now)));
        }
    }

    /// Sets a count-valued gauge.
    pub fn set_count(gauge: &Gauge, n: usize) {
        gauge.set(gauge_value(n));
    }

    /// Records a duration in a seconds histogram.
    pub fn observe(histogram: &Histogram, took: Duration) {
        histogram.observe(took.as_secs_f64());
    }
}
