//! Who answers for an address: every speaker computes this from the same inputs and gets the same answer, so
//! no write to the API server is needed to elect.
//!
//! Candidates are the nodes that run a speaker of this release, whose speaker is alive, are selected by an L2Advertisement that applies to the
//! Service, are not excluded (label — unless [`Policy::ignore_exclude_label`] —, `NetworkUnavailable`,
//! out-of-service taint), have an interface the advertisement allows, and — for `externalTrafficPolicy: Local`
//! — host a ready endpoint. The owner is the candidate with the highest preference (the weights of the
//! advertisements' `preferredNodeSelectors` that match it, MetalLB main's rule), then the lowest
//! `hash(node, address)` (rendezvous hashing): addresses spread across nodes, and a node that leaves or joins
//! moves only its own addresses. Without preferences every node's is 0 and the hash alone decides.
//!
//! When there is no owner, [`decide`] says why ([`Nobody`]), per node when it comes to that, so the speaker
//! can tell the user instead of silently answering nothing.

use ferrolb_crds::selector::Selector;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

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
    /// A speaker of this release runs on it (its pod is listed), or the speaker pods are unknown: a node without
    /// one (the DaemonSet's nodeSelector or tolerations leave it out) is never a candidate, whatever its `Ready`.
    pub has_speaker: bool,
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
    /// It applies to the Service through `serviceSelectors` (rather than to every Service of its pools).
    pub selects_services: bool,
    /// `preferredNodeSelectors`: each selector with its weight (1–100).
    pub preferences: Vec<(Selector, u32)>,
}

impl Advertisement {
    /// Whether its node selectors pick `node` (none: every node).
    fn selects(&self, node: &NodeFacts) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| s.matches(&node.labels))
    }
}

/// What decides the owner of one Service's address.
#[derive(Debug, Clone, Default)]
pub struct ServiceFacts {
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// Nodes hosting a ready (or serving) endpoint; one set shared by every Service whose endpoints sit on the
    /// same nodes (the plan interns them: with thousands of Services most sets repeat).
    pub ready_endpoint_nodes: Arc<BTreeSet<String>>,
    /// Whether any endpoint anywhere is ready (nodeless endpoints included).
    pub any_ready_endpoint: bool,
    /// It carries `allow-shared-ip` (any value, either prefix): it may share its address with other Services.
    pub allows_sharing: bool,
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
    /// No speaker of this release runs on it.
    NoSpeaker,
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

impl Ineligible {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ineligible::NoSpeaker => "no_speaker",
            Ineligible::SpeakerDown => "speaker_down",
            Ineligible::Excluded => "excluded",
            Ineligible::NetworkUnavailable => "network_unavailable",
            Ineligible::OutOfService => "out_of_service",
            Ineligible::NotSelected => "not_selected",
            Ineligible::NoInterface => "no_interface",
            Ineligible::NoLocalEndpoint => "no_local_endpoint",
        }
    }
}

/// The advertisements whose node selectors pick `node`.
fn selecting<'a>(node: &NodeFacts, ads: &'a [Advertisement]) -> Vec<&'a Advertisement> {
    ads.iter().filter(|a| a.selects(node)).collect()
}

/// How strongly the advertisements prefer `node`: the weights of every preference that matches it, summed over
/// the advertisements that apply to the Service, each counting only for the nodes its own `nodeSelectors`
/// pick (MetalLB main's `preferredNodeScores` and `preferredScoresFor`). Preferences never make a node
/// eligible; they only order the eligible ones.
pub fn preference(node: &NodeFacts, ads: &[Advertisement]) -> u64 {
    ads.iter()
        .filter(|a| !a.preferences.is_empty() && a.selects(node))
        .flat_map(|a| a.preferences.iter())
        .filter(|(selector, _)| selector.matches(&node.labels))
        .map(|(_, weight)| u64::from(*weight))
        .sum()
}

/// A node's place in the election for one address: smaller wins. Higher preference first, then the lower
/// rendezvous score, then the name (a tie no two real names produce, but the order must be total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'a> {
    preference: std::cmp::Reverse<u64>,
    score: u64,
    name: &'a str,
}

impl<'a> Rank<'a> {
    /// The rank of `name` with the given preference.
    pub fn new(name: &'a str, preference: u64, ip: IpAddr) -> Self {
        Self { preference: std::cmp::Reverse(preference), score: score(name, ip), name }
    }

    /// The node's summed preference weight.
    pub fn preference(&self) -> u64 {
        self.preference.0
    }

    /// The node ranked.
    pub fn name(&self) -> &'a str {
        self.name
    }
}

/// The rank of `node` for `ip` under the advertisements that apply.
pub fn rank<'a>(node: &'a NodeFacts, ip: IpAddr, ads: &[Advertisement]) -> Rank<'a> {
    Rank::new(&node.name, preference(node, ads), ip)
}

/// The interface names `node` may answer on (empty: any, as in an advertisement). Only advertisements that
/// select the node count, and one of them naming no interface allows any: another advertisement's list must
/// not narrow it.
pub fn allowed_interfaces(node: &NodeFacts, ads: &[Advertisement]) -> BTreeSet<String> {
    let selecting = selecting(node, ads);
    if selecting.iter().any(|a| a.interfaces.is_empty()) {
        return BTreeSet::new();
    }
    selecting.iter().flat_map(|a| a.interfaces.iter().cloned()).collect()
}

/// Whether `node` may announce the Service's address.
pub fn eligibility(
    node: &NodeFacts,
    svc: &ServiceFacts,
    ads: &[Advertisement],
    policy: Policy,
) -> Result<(), Ineligible> {
    if !node.has_speaker {
        return Err(Ineligible::NoSpeaker);
    }
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
    let selecting = selecting(node, ads);
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

/// The owner among equally preferred candidates (no `preferredNodeSelectors`): lowest score, ties broken by
/// name.
pub fn owner<'a>(ip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().min_by_key(|name| Rank::new(name, 0, ip)).map(|name| name as &str)
}

/// Why nobody announces an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nobody<'a> {
    /// No L2Advertisement applies to the address's pool and the Service.
    NoAdvertisement,
    /// No endpoint of the Service is ready anywhere: there is nothing to send traffic to, whoever announced.
    NoReadyEndpoints,
    /// The view holds no nodes at all.
    NoNodes,
    /// The Service may share its address (`allow-shared-ip`) and an advertisement with `serviceSelectors`
    /// applies to it: Services sharing one address could then have different candidate nodes, so, as MetalLB,
    /// nobody announces it.
    SharedIpWithServiceSelectors,
    /// Every node is ineligible, each for this reason (sorted by node name).
    Ineligible(Vec<(&'a str, Ineligible)>),
}

impl Nobody<'_> {
    /// Metric label: the Service-wide cause, or the nodes' common reason, or `mixed`.
    pub fn label(&self) -> &'static str {
        match self {
            Nobody::NoAdvertisement => "no_advertisement",
            Nobody::NoReadyEndpoints => "no_ready_endpoints",
            Nobody::NoNodes => "no_nodes",
            Nobody::SharedIpWithServiceSelectors => "shared_ip_with_service_selectors",
            Nobody::Ineligible(reasons) => match reasons.split_first() {
                Some(((_, first), rest)) if rest.iter().all(|(_, r)| r == first) => first.label(),
                _ => "mixed",
            },
        }
    }
}

/// The outcome of the election for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// This node announces it.
    Owner(&'a str),
    /// Nobody does, and why.
    Nobody(Nobody<'a>),
}

impl<'a> Decision<'a> {
    /// The owner, if any.
    pub fn owner(&self) -> Option<&'a str> {
        match self {
            Decision::Owner(node) => Some(node),
            Decision::Nobody(_) => None,
        }
    }
}

/// Who announces `ip`, or why nobody does.
pub fn decide<'a>(
    ip: IpAddr,
    svc: &ServiceFacts,
    nodes: &'a [NodeFacts],
    ads: &[Advertisement],
    policy: Policy,
) -> Decision<'a> {
    if ads.is_empty() {
        return Decision::Nobody(Nobody::NoAdvertisement);
    }
    if !svc.any_ready_endpoint {
        return Decision::Nobody(Nobody::NoReadyEndpoints);
    }
    // MetalLB's rule (speaker/layer2_controller.go, `sharedIPWithServiceSelector`): the Services sharing an
    // address are elected one by one, and with service selectors their candidate nodes could differ.
    if svc.allows_sharing && ads.iter().any(|a| a.selects_services) {
        return Decision::Nobody(Nobody::SharedIpWithServiceSelectors);
    }
    if nodes.is_empty() {
        return Decision::Nobody(Nobody::NoNodes);
    }
    let verdicts: Vec<(&NodeFacts, Result<(), Ineligible>)> =
        nodes.iter().map(|n| (n, eligibility(n, svc, ads, policy))).collect();
    match verdicts.iter().filter(|(_, v)| v.is_ok()).map(|(n, _)| rank(n, ip, ads)).min() {
        Some(best) => Decision::Owner(best.name()),
        None => {
            let mut reasons: Vec<(&str, Ineligible)> =
                verdicts.into_iter().filter_map(|(n, v)| v.err().map(|r| (n.name.as_str(), r))).collect();
            reasons.sort();
            Decision::Nobody(Nobody::Ineligible(reasons))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            has_speaker: true,
            speaker_alive: true,
            network_unavailable: false,
            out_of_service: false,
            interfaces: None,
        }
    }

    fn all_nodes() -> Advertisement {
        Advertisement {
            node_selectors: vec![],
            interfaces: BTreeSet::new(),
            selects_services: false,
            preferences: vec![],
        }
    }

    fn served() -> ServiceFacts {
        ServiceFacts {
            local: false,
            ready_endpoint_nodes: Arc::default(),
            any_ready_endpoint: true,
            allows_sharing: false,
        }
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
        assert_eq!(check(&|n| n.has_speaker = false), Err(Ineligible::NoSpeaker));
        assert_eq!(
            check(&|n| {
                n.has_speaker = false;
                n.speaker_alive = false;
            }),
            Err(Ineligible::NoSpeaker),
            "the more telling reason: no speaker at all, not a speaker down"
        );
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
        let ads = [Advertisement {
            node_selectors: vec![zone_a],
            interfaces: BTreeSet::from(["eth1".to_string()]),
            selects_services: false,
            preferences: vec![],
        }];
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
            ready_endpoint_nodes: Arc::new(BTreeSet::from(["b".to_string()])),
            any_ready_endpoint: true,
            allows_sharing: false,
        };
        let p = Policy::default();
        for i in 0..50 {
            let addr = IpAddr::from([198, 19, 0, i]);
            assert_eq!(decide(addr, &svc, &nodes, &[all_nodes()], p), Decision::Owner("b"));
        }
        let none = ServiceFacts { any_ready_endpoint: false, ..served() };
        assert_eq!(
            decide(ip("198.19.0.1"), &none, &nodes, &[all_nodes()], p),
            Decision::Nobody(Nobody::NoReadyEndpoints)
        );
        assert_eq!(
            decide(ip("198.19.0.1"), &served(), &nodes, &[], p),
            Decision::Nobody(Nobody::NoAdvertisement),
            "no advertisement applies"
        );
        assert_eq!(decide(ip("198.19.0.1"), &served(), &[], &[all_nodes()], p), Decision::Nobody(Nobody::NoNodes));
    }

    #[test]
    fn the_knob_lets_an_excluded_node_announce() {
        let mut only = node("minikube");
        only.labels.insert(EXCLUDE_LABEL.into(), String::new());
        let nodes = [only];
        let addr = ip("198.19.0.1");
        assert_eq!(
            decide(addr, &served(), &nodes, &[all_nodes()], Policy::default()),
            Decision::Nobody(Nobody::Ineligible(vec![("minikube", Ineligible::Excluded)]))
        );
        let ignore = Policy { ignore_exclude_label: true };
        assert_eq!(decide(addr, &served(), &nodes, &[all_nodes()], ignore), Decision::Owner("minikube"));
        // The knob is about the label only: the other exclusions still hold.
        let mut down = nodes[0].clone();
        down.network_unavailable = true;
        assert_eq!(eligibility(&down, &served(), &[all_nodes()], ignore), Err(Ineligible::NetworkUnavailable));
    }

    #[test]
    fn nobody_names_every_node_with_its_reason_sorted_by_name() {
        let mut c = node("c");
        c.network_unavailable = true;
        let mut a = node("a");
        a.labels.insert(EXCLUDE_LABEL.into(), String::new());
        let mut b = node("b");
        b.speaker_alive = false;
        let nodes = [c, a, b];
        let d = decide(ip("198.19.0.1"), &served(), &nodes, &[all_nodes()], Policy::default());
        let want =
            vec![("a", Ineligible::Excluded), ("b", Ineligible::SpeakerDown), ("c", Ineligible::NetworkUnavailable)];
        assert_eq!(d, Decision::Nobody(Nobody::Ineligible(want)));
        assert_eq!(d.owner(), None);
        let Decision::Nobody(why) = d else { unreachable!("asserted above") };
        assert_eq!(why.label(), "mixed");
        // One eligible node is enough: it is the owner, whatever the others' reasons.
        let mut nodes = nodes.to_vec();
        nodes.push(node("d"));
        assert_eq!(decide(ip("198.19.0.1"), &served(), &nodes, &[all_nodes()], Policy::default()).owner(), Some("d"));
    }

    #[test]
    fn a_ready_node_without_a_speaker_never_wins_an_address() {
        // Twelve Ready nodes, three of them running a speaker (the DaemonSet's nodeSelector): every address goes
        // to one of the three, also those whose rendezvous winner among all twelve is a node without one.
        let nodes: Vec<NodeFacts> = (1..=12)
            .map(|i| NodeFacts { has_speaker: [2, 7, 11].contains(&i), ..node(&format!("node-{i}")) })
            .collect();
        let with_speaker = ["node-11", "node-2", "node-7"];
        let mut moved = 0;
        for i in 1..=60 {
            let addr = IpAddr::from([198, 19, 0, i]);
            let owner = decide(addr, &served(), &nodes, &[all_nodes()], Policy::default()).owner();
            assert!(owner.is_some_and(|o| with_speaker.contains(&o)), "{addr}: {owner:?}");
            if owner != super::owner(addr, nodes.iter().map(|n| n.name.as_str())) {
                moved += 1;
            }
        }
        assert!(moved > 30, "most addresses would have gone to a node without a speaker: {moved}");
        let none: Vec<NodeFacts> = nodes.iter().map(|n| NodeFacts { has_speaker: false, ..n.clone() }).collect();
        let Decision::Nobody(why) = decide(ip("198.19.0.1"), &served(), &none, &[all_nodes()], Policy::default())
        else {
            panic!("no speaker anywhere: nobody announces")
        };
        assert_eq!(why.label(), "no_speaker");
    }

    #[test]
    fn metric_labels_name_the_common_reason() {
        assert_eq!(Nobody::NoReadyEndpoints.label(), "no_ready_endpoints");
        assert_eq!(Nobody::NoAdvertisement.label(), "no_advertisement");
        let all_excluded = Nobody::Ineligible(vec![("a", Ineligible::Excluded), ("b", Ineligible::Excluded)]);
        assert_eq!(all_excluded.label(), "excluded");
        assert_eq!(Nobody::Ineligible(vec![]).label(), "mixed");
    }

    #[test]
    fn only_advertisements_selecting_the_node_narrow_its_interfaces() {
        let zone = |z: &str| {
            Selector::parse(&LabelSelector {
                match_labels: Some(BTreeMap::from([("zone".to_string(), z.to_string())])),
                ..LabelSelector::default()
            })
            .expect("selector")
        };
        let on = |z: &str, ifaces: &[&str]| Advertisement {
            node_selectors: vec![zone(z)],
            interfaces: ifaces.iter().map(ToString::to_string).collect(),
            selects_services: false,
            preferences: vec![],
        };
        let mut n = node("n");
        n.labels.insert("zone".into(), "a".into());
        let set = |v: &[&str]| v.iter().map(ToString::to_string).collect::<BTreeSet<String>>();
        assert_eq!(allowed_interfaces(&n, &[on("a", &["eth1"]), on("b", &["eth2"])]), set(&["eth1"]));
        assert_eq!(allowed_interfaces(&n, &[on("a", &["eth1"]), on("a", &["eth3"])]), set(&["eth1", "eth3"]));
        assert_eq!(allowed_interfaces(&n, &[on("a", &["eth1"]), on("a", &[])]), set(&[]), "one allows any");
        assert_eq!(allowed_interfaces(&n, &[on("b", &[]), on("a", &["eth1"])]), set(&["eth1"]));
    }

    #[test]
    fn a_node_selected_by_any_applicable_advertisement_is_a_candidate() {
        let zone = |z: &str| {
            Selector::parse(&LabelSelector {
                match_labels: Some(BTreeMap::from([("zone".to_string(), z.to_string())])),
                ..LabelSelector::default()
            })
            .expect("selector")
        };
        let in_zones = |zones: &[&str]| Advertisement {
            node_selectors: zones.iter().map(|z| zone(z)).collect(),
            interfaces: BTreeSet::new(),
            selects_services: false,
            preferences: vec![],
        };
        let mut nodes = vec![node("a"), node("b"), node("c")];
        for (n, z) in nodes.iter_mut().zip(["x", "y", "z"]) {
            n.labels.insert("zone".into(), z.into());
        }
        let candidates = |ads: &[Advertisement]| -> Vec<&str> {
            nodes
                .iter()
                .filter(|n| eligibility(n, &served(), ads, Policy::default()).is_ok())
                .map(|n| n.name.as_str())
                .collect()
        };
        assert_eq!(candidates(&[in_zones(&["x", "z"])]), ["a", "c"], "several selectors in one: their union");
        assert_eq!(candidates(&[in_zones(&["x"]), in_zones(&["y"])]), ["a", "b"], "several advertisements: union");
        assert_eq!(candidates(&[in_zones(&["x"]), all_nodes()]), ["a", "b", "c"], "one without selectors: all");
        assert_eq!(
            decide(ip("198.19.0.1"), &served(), &nodes, &[in_zones(&["q"])], Policy::default()),
            Decision::Nobody(Nobody::Ineligible(vec![
                ("a", Ineligible::NotSelected),
                ("b", Ineligible::NotSelected),
                ("c", Ineligible::NotSelected)
            ]))
        );
    }

    #[test]
    fn a_shared_address_is_not_announced_through_service_selectors() {
        let nodes = [node("a"), node("b")];
        let sharing = ServiceFacts { allows_sharing: true, ..served() };
        let by_selector = Advertisement { selects_services: true, ..all_nodes() };
        let p = Policy::default();
        let addr = ip("198.19.0.1");
        assert_eq!(
            decide(addr, &sharing, &nodes, &[all_nodes(), by_selector.clone()], p),
            Decision::Nobody(Nobody::SharedIpWithServiceSelectors),
            "one applicable advertisement with serviceSelectors is enough, as in MetalLB"
        );
        assert!(decide(addr, &sharing, &nodes, &[all_nodes()], p).owner().is_some(), "sharing alone is fine");
        assert!(decide(addr, &served(), &nodes, &[by_selector], p).owner().is_some(), "selectors alone are fine");
        assert_eq!(Nobody::SharedIpWithServiceSelectors.label(), "shared_ip_with_service_selectors");
    }

    fn labels_selector(pairs: &[(&str, &str)]) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..LabelSelector::default()
        })
        .expect("selector")
    }

    /// An advertisement for every node (or those `nodes` selects) preferring `prefs`.
    fn preferring(nodes: &[(&str, &str)], prefs: &[(&[(&str, &str)], u32)]) -> Advertisement {
        Advertisement {
            node_selectors: if nodes.is_empty() { vec![] } else { vec![labels_selector(nodes)] },
            preferences: prefs.iter().map(|(sel, w)| (labels_selector(sel), *w)).collect(),
            ..all_nodes()
        }
    }

    fn labelled(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
        let mut n = node(name);
        n.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        n
    }

    #[test]
    fn preference_weights_add_up_within_and_across_advertisements_but_only_on_the_nodes_each_selects() {
        // MetalLB's cumulative case: zone=primary 60 and role=edge 50.
        let zone_and_role = preferring(&[], &[(&[("zone", "primary")], 60), (&[("role", "edge")], 50)]);
        let edge_a = labelled("edge-a", &[("zone", "primary"), ("role", "edge")]);
        let edge_b = labelled("edge-b", &[("role", "edge")]);
        let worker = labelled("worker-a", &[("zone", "primary")]);
        let plain = node("plain");
        let one = [zone_and_role.clone()];
        let scores: Vec<u64> = [&edge_a, &edge_b, &worker, &plain].iter().map(|n| preference(n, &one)).collect();
        assert_eq!(scores, [110, 50, 60, 0]);
        // Across advertisements: {a: 70} + {a: 30, b: 50} = {a: 100, b: 50}.
        let a = labelled("a", &[("x", "1"), ("y", "1")]);
        let b = labelled("b", &[("y", "1"), ("z", "1")]);
        let ads =
            [preferring(&[], &[(&[("x", "1")], 70)]), preferring(&[], &[(&[("y", "1")], 30), (&[("z", "1")], 50)])];
        assert_eq!((preference(&a, &ads), preference(&b, &ads)), (100, 80));
        // An advertisement scores only the nodes its nodeSelectors pick: a primary-zone node it does not select
        // gets nothing from it (design document: "C has zone=primary but scores 0").
        let lb_only = preferring(&[("role", "lb")], &[(&[("zone", "primary")], 100)]);
        let c = labelled("c", &[("zone", "primary"), ("role", "edge")]);
        let e = labelled("e", &[("zone", "primary"), ("role", "lb")]);
        assert_eq!((preference(&c, std::slice::from_ref(&lb_only)), preference(&e, &[lb_only])), (0, 100));
    }

    #[test]
    fn the_most_preferred_eligible_node_wins_whatever_the_hash_and_the_hash_breaks_ties() {
        let nodes: Vec<NodeFacts> = (1..=4).map(|i| node(&format!("node-{i}"))).collect();
        let p = Policy::default();
        let by_name = |names: &[&str]| {
            let selectors: Vec<(Selector, u32)> =
                names.iter().map(|n| (labels_selector(&[("kubernetes.io/hostname", n)]), 100)).collect();
            Advertisement { preferences: selectors, ..all_nodes() }
        };
        let mut natural_elsewhere = 0;
        for i in 1..=40 {
            let addr = IpAddr::from([198, 19, 0, i]);
            let natural = decide(addr, &served(), &nodes, &[all_nodes()], p).owner();
            assert_eq!(natural, owner(addr, nodes.iter().map(|n| n.name.as_str())), "no preference: the hash");
            assert_eq!(decide(addr, &served(), &nodes, &[by_name(&["node-3"])], p).owner(), Some("node-3"));
            natural_elsewhere += usize::from(natural != Some("node-3"));
            // Equal non-zero preference: the hash decides among the preferred nodes only.
            let pair = ["node-2", "node-4"];
            assert_eq!(decide(addr, &served(), &nodes, &[by_name(&pair)], p).owner(), owner(addr, pair), "{addr}");
            // A preference every node matches, or none does, changes nothing.
            let everyone = preferring(&[], &[(&[], 10), (&[("nomatch", "true")], 100)]);
            assert_eq!(decide(addr, &served(), &nodes, &[everyone], p).owner(), natural);
        }
        assert!(natural_elsewhere > 20, "the preference, not the hash, chose node-3: {natural_elsewhere}");
    }

    #[test]
    fn preferences_order_only_the_eligible_nodes_and_fall_back_when_the_preferred_one_goes() {
        let p = Policy::default();
        let addr = ip("198.19.0.7");
        // Disjoint: nodeSelectors allow node-1 only, the preference names node-2, which never announces.
        let nodes = [labelled("node-1", &[("eligible", "true")]), labelled("node-2", &[("preferred", "true")])];
        let disjoint = preferring(&[("eligible", "true")], &[(&[("preferred", "true")], 100)]);
        assert_eq!(decide(addr, &served(), &nodes, &[disjoint], p).owner(), Some("node-1"));
        // Failover: the preferred node down, excluded or without a local endpoint loses; back, it wins again.
        let mut nodes: Vec<NodeFacts> = (1..=3).map(|i| node(&format!("node-{i}"))).collect();
        let natural = owner(addr, nodes.iter().map(|n| n.name.as_str())).expect("owner").to_string();
        let natural = natural.as_str();
        let preferred = nodes.iter().map(|n| n.name.clone()).find(|n| n != natural).expect("another node");
        nodes.iter_mut().filter(|n| n.name == preferred).for_each(|n| {
            n.labels.insert("pref".into(), "yes".into());
        });
        let ads = [preferring(&[], &[(&[("pref", "yes")], 100)])];
        assert_eq!(decide(addr, &served(), &nodes, &ads, p).owner(), Some(preferred.as_str()));
        let mut down = nodes.clone();
        down.iter_mut().filter(|n| n.name == preferred).for_each(|n| n.speaker_alive = false);
        assert_eq!(decide(addr, &served(), &down, &ads, p).owner(), Some(natural), "back to the hash order");
        let mut excluded = nodes.clone();
        excluded.iter_mut().filter(|n| n.name == preferred).for_each(|n| {
            n.labels.insert(EXCLUDE_LABEL.into(), String::new());
        });
        assert_eq!(decide(addr, &served(), &excluded, &ads, p).owner(), Some(natural));
        let local_elsewhere = ServiceFacts {
            local: true,
            ready_endpoint_nodes: Arc::new(BTreeSet::from([natural.to_string()])),
            ..served()
        };
        assert_eq!(decide(addr, &local_elsewhere, &nodes, &ads, p).owner(), Some(natural), "Local filters first");
        assert_eq!(decide(addr, &served(), &nodes, &ads, p).owner(), Some(preferred.as_str()), "and back");
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
