//! Turning Kubernetes objects into the election's plain inputs (pure: objects in, facts out).

use crate::model::digest::{ServiceDigest, SliceDigest};
use crate::model::election::{Advertisement, NodeFacts, OUT_OF_SERVICE_TAINT, ServiceFacts};
use ferrolb_crds::selector::Selector;
use ferrolb_crds::service::ServiceKey;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Facts about a Node, with liveness from the fallback signal (`Ready=True`) and a speaker on it, unless the
/// caller knows better.
pub fn node_facts(node: &Node) -> NodeFacts {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    let is = |kind: &str| conditions.into_iter().flatten().any(|c| c.type_ == kind && c.status == "True");
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        has_speaker: true,
        speaker_alive: is("Ready"),
        network_unavailable: is("NetworkUnavailable"),
        out_of_service: taints.into_iter().flatten().any(|t| t.key == OUT_OF_SERVICE_TAINT),
        interfaces: None,
    }
}

/// The node a speaker pod runs its speaker on, if it does or is about to: bound to a node and not finished.
/// `Pending` (starting), `Running`, `Unknown` (its node unreachable) and a pod being deleted (its speaker runs
/// until it exits, and says it is leaving) all count, since liveness, not the pod, says whether that speaker is
/// alive; `Failed` and `Succeeded` pods run nothing any more.
pub fn speaker_node(pod: &Pod) -> Option<&str> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        return None;
    }
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// The nodes that run a speaker, from the speaker pods of this release; `None` (unknown: every node counts, as
/// before speakers were discovered) when `me` — the asking speaker, which certainly runs — is not among them:
/// then the list is not what it seems (a selector matching other pods than ours, or a cache behind), and
/// trusting it would silence heartbeats and leave addresses unanswered. `me: None` (the plugin, no speaker of
/// its own) trusts the list.
pub fn speaker_nodes<'a>(pods: impl IntoIterator<Item = &'a Pod>, me: Option<&str>) -> Option<BTreeSet<String>> {
    let nodes: BTreeSet<String> = pods.into_iter().filter_map(speaker_node).map(str::to_string).collect();
    me.is_none_or(|me| nodes.contains(me)).then_some(nodes)
}

/// Whether `node` runs a speaker, given the speaker nodes if known (`None`: unknown, so it may).
pub fn has_speaker(node: &str, speaker_nodes: Option<&BTreeSet<String>>) -> bool {
    speaker_nodes.is_none_or(|nodes| nodes.contains(node))
}

/// Sets of endpoint nodes already built, so that Services whose endpoints sit on the same nodes share one.
pub type NodeSets = HashSet<Arc<BTreeSet<String>>>;

/// Endpoint facts of a Service from the digests of its EndpointSlices, taking the endpoint node set from
/// `interned` when an equal one was built before.
pub fn service_facts(svc: &ServiceDigest, slices: &[&SliceDigest], interned: &mut NodeSets) -> ServiceFacts {
    let nodes: BTreeSet<String> = slices.iter().flat_map(|s| s.serving_nodes.iter().cloned()).collect();
    let ready_endpoint_nodes = match interned.get(&nodes) {
        Some(shared) => shared.clone(),
        None => {
            let shared = Arc::new(nodes);
            interned.insert(shared.clone());
            shared
        }
    };
    ServiceFacts {
        local: svc.local,
        allows_sharing: svc.allows_sharing,
        any_ready_endpoint: slices.iter().any(|s| s.any_serving),
        ready_endpoint_nodes,
    }
}

/// An L2Advertisement with its selectors parsed once per wake, not once per Service.
#[derive(Debug, Clone)]
pub struct ParsedAdvertisement {
    pools: Vec<String>,
    pool_selectors: Vec<Selector>,
    service_selectors: Vec<Selector>,
    /// What the election reads of it.
    pub advertisement: Advertisement,
}

/// Parses every advertisement's selectors; one with a malformed selector (or a weight outside 1–100, which the
/// schema refuses anyway) matches nothing, so it is left out, and the speakers' ConfigurationState names it.
pub fn parse_advertisements(ads: &[&L2Advertisement]) -> Vec<ParsedAdvertisement> {
    let parse_all = |list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector]| {
        list.iter().map(Selector::parse).collect::<Result<Vec<_>, _>>()
    };
    ads.iter()
        .filter_map(|ad| {
            let spec = &ad.spec;
            Some(ParsedAdvertisement {
                pools: spec.ip_address_pools.clone(),
                pool_selectors: parse_all(&spec.ip_address_pool_selectors).ok()?,
                service_selectors: parse_all(&spec.service_selectors).ok()?,
                advertisement: Advertisement {
                    node_selectors: parse_all(&spec.node_selectors).ok()?,
                    interfaces: spec.interfaces.iter().cloned().collect::<BTreeSet<_>>(),
                    selects_services: !spec.service_selectors.is_empty(),
                    preferences: spec
                        .preferred_node_selectors
                        .iter()
                        .map(|p| {
                            let weight = u32::try_from(p.weight).ok().filter(|w| (1..=100).contains(w))?;
                            Some((Selector::parse(&p.preference).ok()?, weight))
                        })
                        .collect::<Option<Vec<_>>>()?,
                },
            })
        })
        .collect()
}

/// What is wrong with the advertisements, one line each naming the advertisement and the field: what the
/// speaker's ConfigurationState reports (an advertisement with any of these applies to nothing).
pub fn advertisement_problems(ads: &[&L2Advertisement]) -> Vec<String> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let mut problems = Vec::new();
    for ad in ads {
        let name = ad.metadata.name.as_deref().unwrap_or_default();
        let spec = &ad.spec;
        let mut check = |field: &str, list: &mut dyn Iterator<Item = &LabelSelector>| {
            for (i, selector) in list.enumerate() {
                if let Err(problem) = Selector::parse(selector) {
                    problems.push(format!("L2Advertisement {name:?}: {field}[{i}]: {problem}"));
                }
            }
        };
        check("ipAddressPoolSelectors", &mut spec.ip_address_pool_selectors.iter());
        check("nodeSelectors", &mut spec.node_selectors.iter());
        check("serviceSelectors", &mut spec.service_selectors.iter());
        check("preferredNodeSelectors.preference", &mut spec.preferred_node_selectors.iter().map(|p| &p.preference));
        for (i, p) in spec.preferred_node_selectors.iter().enumerate() {
            if !(1..=100).contains(&p.weight) {
                problems.push(format!(
                    "L2Advertisement {name:?}: preferredNodeSelectors[{i}].weight: {} is outside 1-100",
                    p.weight
                ));
            }
        }
    }
    problems
}

/// The L2Advertisements that apply to a Service whose address comes from `pool`: those naming the pool or
/// selecting it by label (or naming none: every pool), and whose service selectors match (or are empty). Returned
/// as positions in `ads`: a key to share one list among the many Services it is the same for.
pub fn applying(
    pool: &IPAddressPool,
    svc_labels: &BTreeMap<String, String>,
    ads: &[ParsedAdvertisement],
) -> Vec<usize> {
    let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let pool_labels = pool.metadata.labels.as_ref().unwrap_or(&empty);
    ads.iter()
        .enumerate()
        .filter(|(_, ad)| {
            let names_none = ad.pools.is_empty() && ad.pool_selectors.is_empty();
            let pool_ok = names_none
                || ad.pools.iter().any(|p| p == pool_name)
                || ad.pool_selectors.iter().any(|s| s.matches(pool_labels));
            let service_ok =
                ad.service_selectors.is_empty() || ad.service_selectors.iter().any(|s| s.matches(svc_labels));
            pool_ok && service_ok
        })
        .map(|(i, _)| i)
        .collect()
}

/// EndpointSlice digests grouped by the Service they belong to, built once per wake so that finding a Service's
/// slices costs a lookup instead of a scan of every slice.
pub fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a SliceDigest>,
) -> HashMap<&'a ServiceKey, Vec<&'a SliceDigest>> {
    let mut index: HashMap<&ServiceKey, Vec<&SliceDigest>> = HashMap::new();
    for slice in slices {
        if let Some(service) = &slice.service {
            index.entry(service).or_default().push(slice);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::{self, SLICE_SERVICE_LABEL};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn ad(spec: serde_json::Value) -> L2Advertisement {
        serde_json::from_value(json!({"metadata": {"name": "ad", "namespace": "metallb-system"}, "spec": spec}))
            .expect("advertisement")
    }

    fn pool(name: &str, labels: serde_json::Value) -> IPAddressPool {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"addresses": []}}))
            .expect("pool")
    }

    fn advertisements_for(p: &IPAddressPool, s: &ServiceDigest, ads: &[ParsedAdvertisement]) -> Vec<Advertisement> {
        applying(p, &s.labels, ads).into_iter().map(|i| ads[i].advertisement.clone()).collect()
    }

    #[test]
    fn services_with_the_same_endpoint_nodes_share_one_set() {
        let svc = service(json!({}));
        let slice = |nodes: &[&str]| SliceDigest {
            service: Some(svc.key.clone()),
            serving_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            any_serving: true,
        };
        let (a, b, c) = (slice(&["n1", "n2"]), slice(&["n2", "n1"]), slice(&["n3"]));
        let mut interned = NodeSets::default();
        let first = service_facts(&svc, &[&a], &mut interned).ready_endpoint_nodes;
        let same = service_facts(&svc, &[&b], &mut interned).ready_endpoint_nodes;
        let other = service_facts(&svc, &[&c], &mut interned).ready_endpoint_nodes;
        assert!(Arc::ptr_eq(&first, &same), "one set for the same nodes in another order");
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(interned.len(), 2);
    }

    fn service(labels: serde_json::Value) -> ServiceDigest {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "default",
            "labels": labels}, "spec": {"type": "LoadBalancer"}}))
        .expect("service");
        digest::service(&svc)
    }

    #[test]
    fn advertisements_apply_by_pool_name_pool_label_or_to_every_pool_and_by_service_label() {
        let ads = [
            ad(json!({})),
            ad(json!({"ipAddressPools": ["blue"], "interfaces": ["eth1"]})),
            ad(json!({"ipAddressPoolSelectors": [{"matchLabels": {"tier": "gold"}}], "interfaces": ["eth2"]})),
            ad(json!({"serviceSelectors": [{"matchLabels": {"app": "dns"}}], "interfaces": ["eth3"]})),
            ad(json!({"ipAddressPoolSelectors": [{"matchExpressions": [{"key": "x", "operator": "Bogus"}]}]})),
        ];
        let refs: Vec<&L2Advertisement> = ads.iter().collect();
        let parsed = parse_advertisements(&refs);
        assert_eq!(parsed.len(), 4, "the malformed selector matches nothing");
        let interfaces = |p: &IPAddressPool, s: &ServiceDigest| -> Vec<Vec<String>> {
            advertisements_for(p, s, &parsed).into_iter().map(|a| a.interfaces.into_iter().collect()).collect()
        };
        let plain = service(json!({}));
        assert_eq!(interfaces(&pool("red", json!({})), &plain), vec![Vec::<String>::new()]);
        assert_eq!(interfaces(&pool("blue", json!({})), &plain), vec![vec![], vec!["eth1".to_string()]]);
        assert_eq!(interfaces(&pool("red", json!({"tier": "gold"})), &plain), vec![vec![], vec!["eth2".to_string()]]);
        let dns = service(json!({"app": "dns"}));
        assert_eq!(interfaces(&pool("red", json!({})), &dns), vec![vec![], vec!["eth3".to_string()]]);
    }

    #[test]
    fn preferred_node_selectors_are_read_with_their_weights_and_a_malformed_one_drops_its_advertisement() {
        let ads = [
            ad(json!({"preferredNodeSelectors": [
                {"weight": 60, "preference": {"matchLabels": {"zone": "primary"}}},
                {"weight": 50, "preference": {}}]})),
            ad(json!({"interfaces": ["eth9"], "preferredNodeSelectors": [{"weight": 10,
                "preference": {"matchExpressions": [{"key": "zone", "operator": "Bogus"}]}}]})),
        ];
        let refs: Vec<&L2Advertisement> = ads.iter().collect();
        let parsed = parse_advertisements(&refs);
        assert_eq!(
            parsed.len(),
            1,
            "the malformed preference leaves its advertisement out, as a malformed selector does"
        );
        let weights: Vec<u32> = parsed[0].advertisement.preferences.iter().map(|(_, w)| *w).collect();
        assert_eq!(weights, [60, 50]);
        let primary = BTreeMap::from([("zone".to_string(), "primary".to_string())]);
        let matching: Vec<bool> =
            parsed[0].advertisement.preferences.iter().map(|(s, _)| s.matches(&primary)).collect();
        assert_eq!(matching, [true, true], "an empty preference matches every node");
        assert!(!parsed[0].advertisement.preferences[0].0.matches(&BTreeMap::new()));
    }

    #[test]
    fn advertisement_problems_name_the_advertisement_and_the_field() {
        let mut bad = ad(json!({"nodeSelectors": [{}, {"matchExpressions": [{"key": "zone", "operator": "Near"}]}],
            "preferredNodeSelectors": [{"weight": 0, "preference": {}}]}));
        bad.metadata.name = Some("edge".into());
        let good = ad(json!({"nodeSelectors": [{"matchLabels": {"zone": "a"}}]}));
        assert!(advertisement_problems(&[&good]).is_empty());
        assert_eq!(
            advertisement_problems(&[&good, &bad]),
            [
                "L2Advertisement \"edge\": nodeSelectors[1]: unknown operator \"Near\" for key \"zone\" (expected In, \
                 NotIn, Exists or DoesNotExist)",
                "L2Advertisement \"edge\": preferredNodeSelectors[0].weight: 0 is outside 1-100",
            ]
        );
    }

    #[test]
    fn selectors_are_or_within_a_list_and_pool_names_and_labels_add_up() {
        let ads = [
            ad(json!({"ipAddressPools": ["blue"], "ipAddressPoolSelectors": [{"matchLabels": {"tier": "gold"}}],
                "interfaces": ["eth1"]})),
            ad(json!({"serviceSelectors": [{"matchLabels": {"app": "web"}}, {"matchLabels": {"app": "dns"}}],
                "interfaces": ["eth2"]})),
            ad(json!({"ipAddressPoolSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In",
                "values": ["silver", "bronze"]}]}], "interfaces": ["eth3"]})),
        ];
        let refs: Vec<&L2Advertisement> = ads.iter().collect();
        let parsed = parse_advertisements(&refs);
        let applying = |p: &IPAddressPool, s: &ServiceDigest| -> Vec<(Vec<String>, bool)> {
            advertisements_for(p, s, &parsed)
                .into_iter()
                .map(|a| (a.interfaces.into_iter().collect(), a.selects_services))
                .collect()
        };
        let eth = |n: &str, by_service: bool| (vec![format!("eth{n}")], by_service);
        let plain = service(json!({}));
        assert_eq!(applying(&pool("blue", json!({})), &plain), [eth("1", false)], "by name");
        assert_eq!(applying(&pool("red", json!({"tier": "gold"})), &plain), [eth("1", false)], "or by label");
        assert_eq!(applying(&pool("red", json!({"tier": "bronze"})), &plain), [eth("3", false)], "matchExpressions");
        assert!(applying(&pool("red", json!({})), &plain).is_empty(), "neither: not this advertisement");
        for app in ["web", "dns"] {
            let svc = service(json!({"app": app}));
            assert_eq!(applying(&pool("red", json!({})), &svc), [eth("2", true)], "any service selector: {app}");
        }
        assert!(applying(&pool("red", json!({})), &service(json!({"app": "db"}))).is_empty());
    }

    #[test]
    fn a_service_may_share_with_the_annotation_under_either_prefix_whatever_its_value() {
        let with = |annotations: serde_json::Value| -> bool {
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s", "annotations": annotations}}))
                .expect("service");
            service_facts(&digest::service(&svc), &[], &mut NodeSets::default()).allows_sharing
        };
        assert!(with(json!({"metallb.io/allow-shared-ip": "dns"})));
        assert!(with(json!({"metallb.universe.tf/allow-shared-ip": "dns"})));
        assert!(with(json!({"metallb.io/allow-shared-ip": ""})), "present counts, as in MetalLB");
        assert!(!with(json!({"metallb.io/address-pool": "lab"})));
        assert!(!service_facts(&service(json!({})), &[], &mut NodeSets::default()).allows_sharing);
    }

    #[test]
    fn endpoints_count_as_metallb_counts_them() {
        let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "s-1", "namespace": "default"}, "addressType": "IPv4", "endpoints": [
            {"addresses": ["10.0.0.1"], "nodeName": "unset"},
            {"addresses": ["10.0.0.2"], "nodeName": "ready", "conditions": {"ready": true}},
            {"addresses": ["10.0.0.3"], "nodeName": "terminating", "conditions": {"ready": false, "serving": true}},
            {"addresses": ["10.0.0.4"], "nodeName": "down", "conditions": {"ready": false}},
            {"addresses": ["10.0.0.5"], "conditions": {"ready": true}}
        ]}))
        .expect("slice");
        let local: Service = serde_json::from_value(json!({"metadata": {"name": "s"},
            "spec": {"externalTrafficPolicy": "Local"}}))
        .expect("service");
        let facts =
            service_facts(&digest::service(&local), &[&digest::endpoint_slice(&slice)], &mut NodeSets::default());
        assert!(facts.local && facts.any_ready_endpoint);
        let nodes: Vec<&str> = facts.ready_endpoint_nodes.iter().map(String::as_str).collect();
        assert_eq!(nodes, ["ready", "terminating", "unset"], "not-ready and not serving does not count");
        let none = service_facts(&service(json!({})), &[], &mut NodeSets::default());
        assert!(!none.local && !none.any_ready_endpoint && none.ready_endpoint_nodes.is_empty());
    }

    #[test]
    fn node_facts_read_ready_network_and_the_out_of_service_taint() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"taints": [{"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "True"}]}}))
        .expect("node");
        let facts = node_facts(&node);
        assert_eq!(facts.name, "n1");
        assert_eq!(facts.labels.get("zone").map(String::as_str), Some("a"));
        assert!(facts.speaker_alive && facts.network_unavailable && facts.out_of_service);
        assert!(facts.has_speaker, "until the speaker pods say otherwise");
        assert_eq!(facts.interfaces, None, "interfaces are not published (docs/design.md §10.2)");
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n2"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}))
        .expect("node");
        let facts = node_facts(&bare);
        assert!(!facts.speaker_alive && !facts.network_unavailable && !facts.out_of_service);
    }

    fn speaker_pod(node: Option<&str>, phase: Option<&str>, deleting: bool) -> Pod {
        let deletion = deleting.then_some("2026-12-04T00:00:00Z");
        serde_json::from_value(json!({
            "metadata": {"name": "ferrolb-speaker-x", "namespace": "metallb-system", "deletionTimestamp": deletion},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase}}))
        .expect("pod")
    }

    #[test]
    fn a_speaker_pod_counts_for_its_node_until_it_has_finished() {
        let on = |phase: Option<&str>, deleting: bool| {
            speaker_node(&speaker_pod(Some("n1"), phase, deleting)).map(str::to_string)
        };
        for phase in [None, Some("Pending"), Some("Running"), Some("Unknown")] {
            assert_eq!(on(phase, false).as_deref(), Some("n1"), "{phase:?}");
        }
        assert_eq!(on(Some("Running"), true).as_deref(), Some("n1"), "being deleted: its speaker runs until it exits");
        assert_eq!(on(Some("Failed"), false), None);
        assert_eq!(on(Some("Succeeded"), true), None);
        assert_eq!(speaker_node(&speaker_pod(None, Some("Pending"), false)), None, "not scheduled: no node yet");
        assert_eq!(speaker_node(&speaker_pod(Some(""), Some("Pending"), false)), None);
    }

    #[test]
    fn speaker_nodes_are_trusted_only_when_they_include_the_asking_speaker() {
        let pods = [
            speaker_pod(Some("n1"), Some("Running"), false),
            speaker_pod(Some("n2"), Some("Pending"), false),
            speaker_pod(Some("n2"), Some("Running"), false),
            speaker_pod(Some("n3"), Some("Failed"), false),
        ];
        let both = BTreeSet::from(["n1".to_string(), "n2".to_string()]);
        assert_eq!(speaker_nodes(&pods, Some("n1")), Some(both.clone()));
        assert_eq!(speaker_nodes(&pods, None), Some(both.clone()), "the plugin has no speaker of its own");
        assert_eq!(speaker_nodes(&pods, Some("n3")), None, "n3 runs this very speaker: the list is off");
        assert_eq!(speaker_nodes(&[], Some("n1")), None, "an empty list (wrong selector?) is not believed");
        assert!(has_speaker("n2", Some(&both)) && !has_speaker("n3", Some(&both)));
        assert!(has_speaker("n3", None), "unknown: every node may run one");
    }

    #[test]
    fn slices_are_grouped_by_namespace_and_service_and_unlabelled_ones_ignored() {
        let slice = |ns: &str, svc: Option<&str>, name: &str| -> EndpointSlice {
            let labels = svc.map_or(json!({}), |s| json!({SLICE_SERVICE_LABEL: s}));
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
                "addressType": "IPv4", "endpoints": []}))
            .expect("slice")
        };
        let slices = [
            slice("a", Some("dns"), "1"),
            slice("a", Some("dns"), "2"),
            slice("b", Some("dns"), "3"),
            slice("a", None, "4"),
        ];
        let digests: Vec<SliceDigest> = slices.iter().map(digest::endpoint_slice).collect();
        let index = slices_by_service(digests.iter());
        let count = |ns: &str, svc: &str| index.get(&ServiceKey::new(ns, svc)).map_or(0, Vec::len);
        assert_eq!((count("a", "dns"), count("b", "dns")), (2, 1));
        assert_eq!(index.len(), 2, "the unlabelled slice belongs to no Service");
    }
}
