//! Saying why an address goes unanswered, where the user looks: a Warning Event on the Service, a gauge and a
//! log line. Everything here is pure: the election's outcome in, words and decisions out.
//!
//! Two cases. Nobody may announce (no eligible node, no ready endpoint, no advertisement): every speaker sees
//! the same, so one speaker speaks for all ([`reporter`]). This node won the election but has no interface to
//! answer on: only this node knows, so it says so itself (MetalLB's `announceFailed`).

use crate::model::election::{Ineligible, Nobody, NodeFacts};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Event reason when nobody may announce an address of the Service.
pub const NO_ELIGIBLE_NODE: &str = "NoEligibleNode";
/// Event reason when this node won an address but cannot answer for it (MetalLB's name for it).
pub const ANNOUNCE_FAILED: &str = "announceFailed";
/// The chart value that makes the exclude label harmless.
pub const IGNORE_EXCLUDE_VALUE: &str = "speaker.ignoreExcludeLB";

/// Node names listed per reason before "and N more": Event notes are cut at 1024 characters.
const NAMES_SHOWN: usize = 5;

/// The speaker that reports "nobody announces": the lowest-named one alive in this speaker's view.
///
/// Why one reporter and not dedup at the publisher: every speaker sees the same Services and nodes, so any one
/// can speak for all, and a pure rule needs no coordination. Deduplicating Events instead would need every
/// speaker to read the Service's Events (more RBAC, and a race between N writers anyway). While views
/// disagree (a speaker just died or joined) two speakers may briefly both report, which costs one duplicate
/// Event, never a missing one for long.
pub fn reporter(nodes: &[NodeFacts]) -> Option<&str> {
    nodes.iter().filter(|n| n.has_speaker && n.speaker_alive).map(|n| n.name.as_str()).min()
}

/// A node's reason, as a noun phrase.
fn phrase(reason: Ineligible) -> &'static str {
    match reason {
        Ineligible::NoSpeaker => {
            "no ferrolb speaker runs there: the speaker DaemonSet's nodeSelector/tolerations leave it out"
        }
        Ineligible::SpeakerDown => "no live speaker",
        Ineligible::Excluded => "label node.kubernetes.io/exclude-from-external-load-balancers",
        Ineligible::NetworkUnavailable => "NetworkUnavailable",
        Ineligible::OutOfService => "taint node.kubernetes.io/out-of-service",
        Ineligible::NotSelected => "not selected by the L2Advertisement's nodeSelectors",
        Ineligible::NoInterface => "no interface the L2Advertisement allows",
        Ineligible::NoLocalEndpoint => "no ready endpoint on it (externalTrafficPolicy: Local)",
    }
}

fn names(list: &[&str]) -> String {
    let shown = list.iter().take(NAMES_SHOWN).copied().collect::<Vec<_>>().join(", ");
    match list.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Why nobody announces, in words a user can act on.
pub fn explain(nobody: &Nobody) -> String {
    let reasons = match nobody {
        Nobody::NoAdvertisement => {
            return "no L2Advertisement applies to its pool and this Service (see the advertisements' \
                    ipAddressPools, ipAddressPoolSelectors and serviceSelectors)"
                .into();
        }
        Nobody::NoReadyEndpoints => return "the Service has no ready endpoints".into(),
        Nobody::NoNodes => return "there are no nodes".into(),
        Nobody::SharedIpWithServiceSelectors => {
            return "the Service has allow-shared-ip and an L2Advertisement selects it by serviceSelectors: Services \
                    sharing an address could then be given to different nodes, so, as MetalLB, nobody announces it \
                    (drop the serviceSelectors or the allow-shared-ip annotation)"
                .into();
        }
        Nobody::Ineligible(reasons) => reasons,
    };
    // Groups in the order of their first node, so the note reads down the node list.
    let mut groups: Vec<(Ineligible, Vec<&str>)> = Vec::new();
    for (node, reason) in reasons {
        match groups.iter_mut().find(|(r, _)| r == reason) {
            Some((_, nodes)) => nodes.push(node),
            None => groups.push((*reason, vec![node])),
        }
    }
    let body = match groups.as_slice() {
        [(reason, nodes)] if nodes.len() == 1 => {
            format!("the only node, {}, is not eligible ({})", names(nodes), phrase(*reason))
        }
        [(reason, nodes)] => format!("all {} nodes are not eligible ({})", nodes.len(), phrase(*reason)),
        _ => {
            let each: Vec<String> =
                groups.iter().map(|(reason, nodes)| format!("{}: {}", names(nodes), phrase(*reason))).collect();
            format!("no node is eligible ({})", each.join("; "))
        }
    };
    if groups.iter().any(|(r, _)| *r == Ineligible::Excluded) {
        format!("{body}; set {IGNORE_EXCLUDE_VALUE}=true to announce from labelled nodes anyway")
    } else {
        body
    }
}

/// What one Service's unanswered addresses look like to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The Service's uid: a Service deleted and created again with the same trouble is news too.
    pub uid: String,
    /// The Event note (and log message).
    pub note: String,
    /// Unanswered addresses per metric label.
    pub labels: BTreeMap<&'static str, u64>,
}

/// Why one address goes unanswered: the address, a metric label and the explanation.
pub type Cause = (IpAddr, &'static str, String);

/// Addresses sharing an explanation are listed together; groups in address order.
fn problem(uid: &str, causes: &[Cause], headline: impl Fn(&str) -> String) -> Problem {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    let mut sorted: Vec<&Cause> = causes.iter().collect();
    sorted.sort();
    let mut labels = BTreeMap::new();
    for (ip, label, why) in sorted {
        *labels.entry(*label).or_insert(0) += 1;
        match groups.iter_mut().find(|(w, _)| w == why) {
            Some((_, ips)) => ips.push(ip.to_string()),
            None => groups.push((why, vec![ip.to_string()])),
        }
    }
    let note = groups.iter().map(|(why, ips)| format!("{}: {why}", headline(&ips.join(", ")))).collect::<Vec<_>>();
    Problem { uid: uid.into(), note: note.join(". "), labels }
}

/// The problem of a Service whose addresses nobody may announce.
pub fn nobody(uid: &str, causes: &[Cause]) -> Problem {
    problem(uid, causes, |ips| format!("nobody announces {ips}"))
}

/// The problem of a Service whose addresses this node won but cannot answer for.
pub fn announce_failed(uid: &str, node: &str, causes: &[Cause]) -> Problem {
    problem(uid, causes, |ips| format!("node {node} was elected for {ips} but cannot announce"))
}

/// What is new or different in `now` compared with `before`: what to say (only on change, not every tick).
pub fn changed<'a, K: Ord, V: PartialEq>(before: &BTreeMap<K, V>, now: &'a BTreeMap<K, V>) -> Vec<(&'a K, &'a V)> {
    now.iter().filter(|(k, v)| before.get(*k) != Some(*v)).collect()
}

/// Unanswered addresses per metric label, over all Services.
pub fn count<'a>(problems: impl IntoIterator<Item = &'a Problem>) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for (label, n) in problems.into_iter().flat_map(|p| p.labels.iter()) {
        *out.entry(*label).or_insert(0) += n;
    }
    out
}

/// Event reason when this node starts answering for a Service (MetalLB's).
pub const NODE_ASSIGNED: &str = "nodeAssigned";
/// Event reason when a MAC that is no node's answers for an address this node answers for.
pub const ADDRESS_CONFLICT: &str = "AddressConflict";
/// Event reason when kube-proxy's IPVS runs without strictARP on this node.
pub const STRICT_ARP_DISABLED: &str = "StrictARPDisabled";
/// Event reason when peers are unheard over the liveness port although alive.
pub const LIVENESS_CHANNEL_BROKEN: &str = "LivenessChannelBroken";
/// Event reason when every live peer is heard again.
pub const LIVENESS_CHANNEL_HEALED: &str = "LivenessChannelHealed";

/// The `nodeAssigned` note: MetalLB's reason and wording, so alerts and scripts written for MetalLB's Event still
/// match.
pub fn node_assigned(node: &str, ips: &[String], interfaces: &[&str]) -> String {
    format!("announcing from node \"{node}\" with protocol \"layer2\": {} on {}", ips.join(", "), interfaces.join(", "))
}

/// A stranger's MAC answers for an address this node answers for (`kept`: this node keeps answering).
pub fn stranger_claims(ip: IpAddr, mac: impl std::fmt::Display, node: &str, kept: bool) -> String {
    if kept {
        format!(
            "address {ip} is also claimed by MAC {mac}, which belongs to no node: another host uses this address (a \
             static IP clash?). Node {node} keeps answering; remove the address from that host or from the pool"
        )
    } else {
        format!(
            "address {ip} is already answered by MAC {mac}, which belongs to no node: another host uses this address \
             (a static IP clash?), or a speaker from before an upgrade. Node {node} holds back; if that host is not \
             yours, remove the address from it or from the pool"
        )
    }
}

/// Another node answers for an address this node answers for (a log line: the two settle it by rank).
pub fn node_claims(ip: IpAddr, mac: impl std::fmt::Display, other: &str, kept: bool) -> String {
    let outcome = if kept { "this node keeps it (lower rank)" } else { "this node gives it up (higher rank)" };
    format!("node {other} (MAC {mac}) also answers for {ip}; {outcome}")
}

/// kube-proxy's IPVS interface makes this node's kernel answer ARP for every Service address.
pub const STRICT_ARP_MISSING: &str = "kube-proxy runs in IPVS mode without strictARP: kube-ipvs0 holds Service \
    addresses and this node's kernel answers ARP for all of them, so several nodes answer for one address. Set \
    strictARP: true in the kube-proxy ConfigMap (as for MetalLB)";

/// Peers unheard over the liveness port although their nodes show other signs of life.
pub fn channel_broken(peers: &[&str], port: u16) -> String {
    format!(
        "liveness channel broken: no heartbeat from {} over UDP {port} although their nodes are alive (Lease renewed \
         or answering ARP); check firewalls and security groups for that port. Addresses stay with the nodes that \
         answer them (ARP evidence), but a real failure of those nodes is detected more slowly until this heals",
        peers.join(", ")
    )
}

/// Every live peer is heard again.
pub const CHANNEL_HEALED: &str = "every peer speaker whose node is alive is heard again over the liveness port";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::election::Ineligible::{Excluded, NetworkUnavailable, NoLocalEndpoint, NoSpeaker, SpeakerDown};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn node(name: &str, alive: bool) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: BTreeMap::new(),
            has_speaker: true,
            speaker_alive: alive,
            network_unavailable: false,
            out_of_service: false,
            interfaces: None,
        }
    }

    #[test]
    fn the_only_excluded_node_gets_the_knob_hint() {
        let why = explain(&Nobody::Ineligible(vec![("minikube", Excluded)]));
        assert_eq!(
            why,
            "the only node, minikube, is not eligible (label node.kubernetes.io/exclude-from-external-load-balancers); \
             set speaker.ignoreExcludeLB=true to announce from labelled nodes anyway"
        );
        let all = explain(&Nobody::Ineligible(vec![("a", Excluded), ("b", Excluded), ("c", Excluded)]));
        assert!(all.starts_with("all 3 nodes are not eligible (label node.kubernetes.io/exclude-from-external"));
        assert!(all.ends_with("set speaker.ignoreExcludeLB=true to announce from labelled nodes anyway"));
    }

    #[test]
    fn mixed_reasons_are_listed_per_node_and_the_hint_only_when_a_label_is_to_blame() {
        let mixed = explain(&Nobody::Ineligible(vec![
            ("node-1", NetworkUnavailable),
            ("node-2", Excluded),
            ("node-3", NetworkUnavailable),
        ]));
        assert_eq!(
            mixed,
            "no node is eligible (node-1, node-3: NetworkUnavailable; node-2: label \
             node.kubernetes.io/exclude-from-external-load-balancers); set speaker.ignoreExcludeLB=true to announce \
             from labelled nodes anyway"
        );
        let no_label = explain(&Nobody::Ineligible(vec![("a", SpeakerDown), ("b", NoLocalEndpoint)]));
        assert_eq!(
            no_label,
            "no node is eligible (a: no live speaker; b: no ready endpoint on it (externalTrafficPolicy: Local))"
        );
    }

    #[test]
    fn nodes_without_a_speaker_are_named_with_the_daemonsets_placement_to_blame() {
        let why = explain(&Nobody::Ineligible(vec![("node-4", NoSpeaker), ("node-5", NoSpeaker)]));
        assert_eq!(
            why,
            "all 2 nodes are not eligible (no ferrolb speaker runs there: the speaker DaemonSet's \
             nodeSelector/tolerations leave it out)"
        );
        let mixed = explain(&Nobody::Ineligible(vec![("node-1", SpeakerDown), ("node-2", NoSpeaker)]));
        assert_eq!(
            mixed,
            "no node is eligible (node-1: no live speaker; node-2: no ferrolb speaker runs there: the speaker \
             DaemonSet's nodeSelector/tolerations leave it out)"
        );
    }

    #[test]
    fn no_endpoints_and_no_advertisement_are_worded_as_such() {
        assert_eq!(explain(&Nobody::NoReadyEndpoints), "the Service has no ready endpoints");
        assert!(explain(&Nobody::NoAdvertisement).starts_with("no L2Advertisement applies"));
        assert!(!explain(&Nobody::NoReadyEndpoints).contains("node"), "not the nodes' fault");
        let shared = explain(&Nobody::SharedIpWithServiceSelectors);
        assert!(shared.contains("allow-shared-ip") && shared.contains("serviceSelectors"), "{shared}");
    }

    #[test]
    fn long_node_lists_are_cut() {
        let many: Vec<String> = (0..40).map(|i| format!("node-{i:02}")).collect();
        let reasons = many.iter().map(|n| (n.as_str(), NetworkUnavailable)).collect::<Vec<_>>();
        let mut mixed = reasons.clone();
        mixed.push(("z", SpeakerDown));
        let why = explain(&Nobody::Ineligible(mixed));
        assert!(why.starts_with("no node is eligible (node-00, node-01, node-02, node-03, node-04 and 35 more: "));
        assert!(why.len() < 200, "{why}");
    }

    #[test]
    fn one_note_per_service_addresses_grouped_by_explanation() {
        let p = nobody(
            "u1",
            &[
                (ip("198.19.0.3"), "no_advertisement", "B".into()),
                (ip("198.19.0.1"), "excluded", "A".into()),
                (ip("198.19.0.2"), "excluded", "A".into()),
            ],
        );
        assert_eq!(p.note, "nobody announces 198.19.0.1, 198.19.0.2: A. nobody announces 198.19.0.3: B");
        assert_eq!(p.labels, BTreeMap::from([("excluded", 2), ("no_advertisement", 1)]));
        let f = announce_failed("u1", "node-2", &[(ip("198.19.0.9"), "none_up", "no interface is up".into())]);
        assert_eq!(f.note, "node node-2 was elected for 198.19.0.9 but cannot announce: no interface is up");
        assert_eq!(count([&p, &f]), BTreeMap::from([("excluded", 2), ("no_advertisement", 1), ("none_up", 1)]));
    }

    #[test]
    fn only_the_lowest_named_live_speaker_reports() {
        let nodes = [node("node-2", true), node("node-1", false), node("node-3", true)];
        assert_eq!(reporter(&nodes), Some("node-2"), "node-1's speaker is down: node-2 speaks");
        assert_eq!(reporter(&[node("a", false)]), None);
        // A Ready node without a speaker counts as alive by the fallback, yet nobody there would ever report.
        let speakerless = NodeFacts { has_speaker: false, ..node("node-0", true) };
        assert_eq!(reporter(&[speakerless, node("node-2", true)]), Some("node-2"));
        // Every speaker computes the same from the same view, in any order.
        let mut reversed = nodes.to_vec();
        reversed.reverse();
        assert_eq!(reporter(&reversed), reporter(&nodes));
    }

    #[test]
    fn said_on_change_only() {
        let p = |note: &str| Problem { uid: "u".into(), note: note.into(), labels: BTreeMap::new() };
        let key = |n: &str| ("ns".to_string(), n.to_string());
        let before = BTreeMap::from([(key("a"), p("x")), (key("b"), p("y"))]);
        assert!(changed(&before, &before).is_empty(), "the same every tick: nothing to say");
        let now = BTreeMap::from([(key("a"), p("x")), (key("b"), p("z")), (key("c"), p("w"))]);
        let said: Vec<&String> = changed(&before, &now).into_iter().map(|(k, _)| &k.1).collect();
        assert_eq!(said, ["b", "c"]);
        let recreated = BTreeMap::from([(key("a"), Problem { uid: "other".into(), ..p("x") })]);
        assert_eq!(changed(&before, &recreated).len(), 1, "a recreated Service is told again");
    }
}
