//! Who answers for an address: every speaker computes this from the same inputs and gets the same answer, so
//! no write to the API server is needed to elect.
//!
//! Candidates are the nodes that run a live speaker, are selected by an L2Advertisement that applies to the
//! Service, are not excluded (label — unless [`Policy::ignore_exclude_label`] —, `NetworkUnavailable`,
//! out-of-service taint), have an interface the advertisement allows, and — for `externalTrafficPolicy: Local`
//! — host a ready endpoint. The owner is the candidate with the lowest `hash(node, address)` (rendezvous
//! hashing): addresses spread across nodes, and a node that leaves or joins moves only its own addresses.

use ferrolb_crds::selector::Selector;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Label that keeps a node out of external load balancing (a Kubernetes convention MetalLB honours too).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Taint that marks a node as shut down for good.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// What all speakers know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Its speaker is alive (liveness protocol, or the Node/Lease fallback).
    pub speaker_alive: bool,
    /// `NetworkUnavailable=True`.
    pub network_unavailable: bool,
    /// Has the out-of-service taint.
    pub out_of_service: bool,
    /// Interfaces its speaker reported as usable; `None` when not reported (then not a reason to skip it).
    pub interfaces: Option<BTreeSet<String>>,
}

/// One L2Advertisement that applies to the Service's pool and the Service.
#[derive(Debug, Clone)]
pub struct Advertisement {
    /// Nodes it allows (none: all).
    pub node_selectors: Vec<Selector>,
    /// Interfaces it allows (none: any).
    pub interfaces: BTreeSet<String>,
}

/// What decides the owner of one Service's address.
#[derive(Debug, Clone, Default)]
pub struct ServiceFacts {
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// Nodes hosting a ready (or serving) endpoint.
    pub ready_endpoint_nodes: BTreeSet<String>,
    /// Whether any endpoint anywhere is ready (nodeless endpoints included).
    pub any_ready_endpoint: bool,
}

/// Cluster-wide choices that change who may announce. Every speaker must run with the same policy, or they
/// disagree on owners (the chart passes one value to the whole DaemonSet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// The exclude label no longer excludes: single-node clusters (kubeadm, kind, minikube) label their only
    /// node, which would otherwise leave nobody to announce.
    pub ignore_exclude_label: bool,
}

/// Why a node is not a candidate (what `kubectl describe` should be able to say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ineligible {
    /// Its speaker is not alive.
    SpeakerDown,
    /// Labelled out of external load balancing.
    Excluded,
    /// `NetworkUnavailable=True`.
    NetworkUnavailable,
    /// Out-of-service taint.
    OutOfService,
    /// No applicable L2Advertisement selects it.
    NotSelected,
    /// None of its interfaces is allowed by the advertisements that select it.
    NoInterface,
    /// `Local` traffic policy and no ready endpoint on it.
    NoLocalEndpoint,
}

/// Whether `node` may announce the Service's address.
pub fn eligibility(
    node: &NodeFacts,
    svc: &ServiceFacts,
    ads: &[Advertisement],
    policy: Policy,
) -> Result<(), Ineligible> {
    if !node.speaker_alive {
        return Err(Ineligible::SpeakerDown);
    }
    if !policy.ignore_exclude_label && node.labels.contains_key(EXCLUDE_LABEL) {
        return Err(Ineligible::Excluded);
    }
    if node.network_unavailable {
        return Err(Ineligible::NetworkUnavailable);
    }
    if node.out_of_service {
        return Err(Ineligible::OutOfService);
    }
    let selecting: Vec<&Advertisement> = ads
        .iter()
        .filter(|a| a.node_selectors.is_empty() || a.node_selectors.iter().any(|s| s.matches(&node.labels)))
        .collect();
    if selecting.is_empty() {
        return Err(Ineligible::NotSelected);
    }
    let has_interface = selecting.iter().any(|a| {
        a.interfaces.is_empty() || node.interfaces.as_ref().is_none_or(|have| !have.is_disjoint(&a.interfaces))
    });
    if !has_interface {
        return Err(Ineligible::NoInterface);
    }
    if svc.local && !svc.ready_endpoint_nodes.contains(&node.name) {
        return Err(Ineligible::NoLocalEndpoint);
    }
    Ok(())
}

/// The rendezvous score of a node for an address: FNV-1a over the name and the address, then a 64-bit
/// finaliser (splitmix64) so that similar names still spread. Fixed forever: every speaker version must agree.
pub fn score(node: &str, ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    node.bytes().for_each(&mut eat);
    eat(0xff);
    match ip {
        IpAddr::V4(v4) => v4.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(v6) => v6.octets().into_iter().for_each(&mut eat),
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The owner among candidates: lowest score, ties broken by name.
pub fn owner<'a>(ip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().min_by_key(|name| (score(name, ip), *name))
}

/// The node that announces `ip`, or `None` (no advertisement, no ready endpoint, or no eligible node).
pub fn elect<'a>(
    ip: IpAddr,
    svc: &ServiceFacts,
    nodes: &'a [NodeFacts],
    ads: &[Advertisement],
    policy: Policy,
) -> Option<&'a str> {
    if ads.is_empty() || !svc.any_ready_endpoint {
        return None;
    }
    owner(ip, nodes.iter().filter(|n| eligibility(n, svc, ads, policy).is_ok()).map(|n| n.name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            speaker_alive: true,
            network_unavailable: false,
            out_of_service: false,
            interfaces: None,
        }
    }

    fn all_nodes() -> Advertisement {
        Advertisement { node_selectors: vec![], interfaces: BTreeSet::new() }
    }

    fn served() -> ServiceFacts {
        ServiceFacts { local: false, ready_endpoint_nodes: BTreeSet::new(), any_ready_endpoint: true }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn each_exclusion_has_its_reason() {
        let svc = served();
        let ads = [all_nodes()];
        let check = |f: &dyn Fn(&mut NodeFacts)| {
            let mut n = node("n");
            f(&mut n);
            eligibility(&n, &svc, &ads, Policy::default())
        };
        assert_eq!(check(&|_| {}), Ok(()));
        assert_eq!(check(&|n| n.speaker_alive = false), Err(Ineligible::SpeakerDown));
        assert_eq!(
            check(&|n| {
                n.labels.insert(EXCLUDE_LABEL.into(), String::new());
            }),
            Err(Ineligible::Excluded)
        );
        assert_eq!(check(&|n| n.network_unavailable = true), Err(Ineligible::NetworkUnavailable));
        assert_eq!(check(&|n| n.out_of_service = true), Err(Ineligible::OutOfService));
    }

    #[test]
    fn node_selectors_and_interfaces_of_the_advertisements() {
        let zone_a = Selector::parse(&LabelSelector {
            match_labels: Some(BTreeMap::from([("zone".to_string(), "a".to_string())])),
            ..LabelSelector::default()
        })
        .expect("selector");
        let ads = [Advertisement { node_selectors: vec![zone_a], interfaces: BTreeSet::from(["eth1".to_string()]) }];
        let mut n = node("n");
        assert_eq!(eligibility(&n, &served(), &ads, Policy::default()), Err(Ineligible::NotSelected));
        n.labels.insert("zone".into(), "a".into());
        assert_eq!(
            eligibility(&n, &served(), &ads, Policy::default()),
            Ok(()),
            "interfaces not reported: not a reason to skip"
        );
        n.interfaces = Some(BTreeSet::from(["eth0".to_string()]));
        assert_eq!(eligibility(&n, &served(), &ads, Policy::default()), Err(Ineligible::NoInterface));
        n.interfaces = Some(BTreeSet::from(["eth0".to_string(), "eth1".to_string()]));
        assert_eq!(eligibility(&n, &served(), &ads, Policy::default()), Ok(()));
    }

    #[test]
    fn local_policy_needs_a_ready_endpoint_on_the_node_and_nothing_is_announced_without_endpoints() {
        let nodes = [node("a"), node("b"), node("c")];
        let svc = ServiceFacts {
            local: true,
            ready_endpoint_nodes: BTreeSet::from(["b".to_string()]),
            any_ready_endpoint: true,
        };
        let p = Policy::default();
        for i in 0..50 {
            let addr = IpAddr::from([198, 19, 0, i]);
            assert_eq!(elect(addr, &svc, &nodes, &[all_nodes()], p), Some("b"));
        }
        let none = ServiceFacts { any_ready_endpoint: false, ..served() };
        assert_eq!(elect(ip("198.19.0.1"), &none, &nodes, &[all_nodes()], p), None);
        assert_eq!(elect(ip("198.19.0.1"), &served(), &nodes, &[], p), None, "no advertisement applies");
    }

    #[test]
    fn the_knob_lets_an_excluded_node_announce() {
        let mut only = node("minikube");
        only.labels.insert(EXCLUDE_LABEL.into(), String::new());
        let nodes = [only];
        let addr = ip("198.19.0.1");
        assert_eq!(elect(addr, &served(), &nodes, &[all_nodes()], Policy::default()), None);
        let ignore = Policy { ignore_exclude_label: true };
        assert_eq!(elect(addr, &served(), &nodes, &[all_nodes()], ignore), Some("minikube"));
        // The knob is about the label only: the other exclusions still hold.
        let mut down = nodes[0].clone();
        down.network_unavailable = true;
        assert_eq!(eligibility(&down, &served(), &[all_nodes()], ignore), Err(Ineligible::NetworkUnavailable));
    }

    #[test]
    fn the_score_is_fixed_forever() {
        // Speakers of different versions must agree: these values may never change.
        assert_eq!(score("node-1", ip("198.19.0.1")), score("node-1", ip("198.19.0.1")));
        let golden =
            [score("node-1", ip("198.19.0.1")), score("node-2", ip("198.19.0.1")), score("node-1", ip("fc00::1"))];
        assert_eq!(golden, GOLDEN_SCORES);
    }

    // Pinned from the first implementation; a change here would split old and new speakers.
    const GOLDEN_SCORES: [u64; 3] = [16778102389053929777, 12555109948382595303, 15042259789938777912];
}
