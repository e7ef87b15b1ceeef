//! Signs that a peer is alive that do not travel over the liveness channel: its kubelet renewing the node's
//! Lease, and its speaker answering ARP for an address. A peer unheard on the channel but showing such signs
//! means the channel is broken, not the node dead (docs/design.md §5.6). Pure: `now` is passed in.

use crate::model::membership::Membership;
use crate::wire::Mac;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// When this speaker saw each node's Lease renewed (by its own monotonic clock: the kubelet's wall clock is not
/// compared with ours).
#[derive(Debug, Clone, Default)]
pub struct LeaseRenewals {
    seen: BTreeMap<String, (String, Vec<Instant>)>,
}

impl LeaseRenewals {
    /// Takes in the node Leases as they are at `now`. The first sight of a Lease is not a renewal: it may be
    /// from long before.
    pub fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) {
        for lease in leases {
            let renew = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| format!("{:?}", t.0));
            let Some(renew) = renew else { continue };
            match self.seen.get_mut(&lease.name_any()) {
                Some((last, times)) if *last != renew => {
                    *last = renew;
                    times.push(now);
                    if times.len() > 2 {
                        times.remove(0);
                    }
                }
                Some(_) => {}
                None => {
                    self.seen.insert(lease.name_any(), (renew, Vec::new()));
                }
            }
        }
    }

    /// Per node, the earlier of its last two renewals seen: a sign of life after `t` then means the kubelet renewed
    /// twice since `t`, so a single renewal racing a node's death is not taken for life.
    pub fn signs(&self) -> BTreeMap<String, Instant> {
        self.seen.iter().filter(|(_, (_, t))| t.len() == 2).map(|(node, (_, t))| (node.clone(), t[0])).collect()
    }
}

/// Nodes whose MAC answers (at `now`) for addresses this node holds back from.
pub fn from_arp(
    held_back: &BTreeMap<IpAddr, Mac>,
    node_macs: &BTreeMap<Mac, String>,
    now: Instant,
) -> BTreeMap<String, Instant> {
    held_back.values().filter_map(|mac| node_macs.get(mac)).map(|node| (node.clone(), now)).collect()
}

/// The later sign per node of two sources.
pub fn latest(a: BTreeMap<String, Instant>, b: BTreeMap<String, Instant>) -> BTreeMap<String, Instant> {
    let mut out = a;
    for (node, at) in b {
        let e = out.entry(node).or_insert(at);
        *e = (*e).max(at);
    }
    out
}

/// Peers unheard over the liveness channel although their node shows signs of life at `now`: the Lease
/// renewals seen, or their MAC answering for an address this node holds back from.
pub fn unheard_but_alive(
    view: &Membership,
    renewals: &LeaseRenewals,
    held_back: &BTreeMap<IpAddr, Mac>,
    now: Instant,
) -> BTreeSet<String> {
    let node_macs: BTreeMap<Mac, String> = view.node_macs().into_iter().map(|(mac, node)| (Mac(mac), node)).collect();
    view.unheard_but_alive(&latest(renewals.signs(), from_arp(held_back, &node_macs, now)), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn lease(node: &str, renew: &str) -> Arc<Lease> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "renewTime": renew}}))
            .expect("lease"),
        )
    }

    #[test]
    fn two_renewals_after_the_first_sight_make_a_sign() {
        let t0 = Instant::now();
        let mut r = LeaseRenewals::default();
        r.observe(&[lease("node-2", "2026-11-27T02:00:00.000000Z")], t0);
        assert!(r.signs().is_empty(), "first sight is no renewal");
        r.observe(&[lease("node-2", "2026-11-27T02:00:00.000000Z")], t0 + Duration::from_secs(1));
        r.observe(&[lease("node-2", "2026-11-27T02:00:04.000000Z")], t0 + Duration::from_secs(4));
        assert!(r.signs().is_empty(), "one renewal is not enough");
        r.observe(&[lease("node-2", "2026-11-27T02:00:08.000000Z")], t0 + Duration::from_secs(8));
        assert_eq!(r.signs(), BTreeMap::from([("node-2".to_string(), t0 + Duration::from_secs(4))]));
        // A Lease whose renew time steps back (the kubelet's clock stepped) is still a renewal: it changed.
        r.observe(&[lease("node-2", "2026-11-27T01:59:00.000000Z")], t0 + Duration::from_secs(12));
        assert_eq!(r.signs()["node-2"], t0 + Duration::from_secs(8));
    }

    #[test]
    fn arp_answers_name_their_node_and_the_later_sign_wins() {
        let t0 = Instant::now();
        let mac = Mac([2, 0, 0, 0, 0, 2]);
        let held = BTreeMap::from([(IpAddr::from([198, 19, 0, 1]), mac), (IpAddr::from([198, 19, 0, 2]), Mac([9; 6]))]);
        let nodes = BTreeMap::from([(mac, "node-2".to_string())]);
        let arp = from_arp(&held, &nodes, t0 + Duration::from_secs(5));
        assert_eq!(arp, BTreeMap::from([("node-2".to_string(), t0 + Duration::from_secs(5))]));
        let lease = BTreeMap::from([("node-2".to_string(), t0), ("node-3".to_string(), t0)]);
        let both = latest(lease, arp);
        assert_eq!(both["node-2"], t0 + Duration::from_secs(5));
        assert_eq!(both["node-3"], t0);
    }
}
