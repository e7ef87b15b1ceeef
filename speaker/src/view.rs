//! Turning Kubernetes objects into the election's plain inputs (pure: objects in, facts out).

use crate::election::{Advertisement, NodeFacts, OUT_OF_SERVICE_TAINT, ServiceFacts};
use ferrolb_crds::selector::Selector;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeSet;

/// Facts about a Node, with liveness from the fallback signal (`Ready=True`) unless the caller knows better.
pub fn node_facts(node: &Node) -> NodeFacts {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    let is = |kind: &str| conditions.into_iter().flatten().any(|c| c.type_ == kind && c.status == "True");
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        speaker_alive: is("Ready"),
        network_unavailable: is("NetworkUnavailable"),
        out_of_service: taints.into_iter().flatten().any(|t| t.key == OUT_OF_SERVICE_TAINT),
        interfaces: None,
    }
}

/// Endpoint facts of a Service from its EndpointSlices (an endpoint can serve when ready is unset or true, or
/// when it is serving, as MetalLB counts them).
pub fn service_facts(svc: &Service, slices: &[&EndpointSlice]) -> ServiceFacts {
    let local = svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let mut facts = ServiceFacts { local, ..ServiceFacts::default() };
    for ep in slices.iter().flat_map(|s| s.endpoints.iter()) {
        let c = ep.conditions.as_ref();
        let can_serve = c.is_none_or(|c| c.ready.is_none_or(|r| r) || c.serving == Some(true));
        if can_serve {
            facts.any_ready_endpoint = true;
            if let Some(node) = &ep.node_name {
                facts.ready_endpoint_nodes.insert(node.clone());
            }
        }
    }
    facts
}

/// The L2Advertisements that apply to a Service whose address comes from `pool`: those naming the pool or
/// selecting it by label (or naming none: every pool), and whose service selectors match (or are empty).
/// Malformed selectors match nothing.
pub fn advertisements_for(pool: &IPAddressPool, svc: &Service, ads: &[&L2Advertisement]) -> Vec<Advertisement> {
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let pool_labels = pool.metadata.labels.clone().unwrap_or_default();
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    let parse_all = |list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector]| {
        list.iter().map(Selector::parse).collect::<Result<Vec<_>, _>>()
    };
    ads.iter()
        .filter_map(|ad| {
            let spec = &ad.spec;
            let pool_selectors = parse_all(&spec.ip_address_pool_selectors).ok()?;
            let names_none = spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty();
            let pool_ok = names_none
                || spec.ip_address_pools.contains(&pool_name)
                || pool_selectors.iter().any(|s| s.matches(&pool_labels));
            let service_selectors = parse_all(&spec.service_selectors).ok()?;
            let service_ok = service_selectors.is_empty() || service_selectors.iter().any(|s| s.matches(&svc_labels));
            let node_selectors = parse_all(&spec.node_selectors).ok()?;
            (pool_ok && service_ok).then(|| Advertisement {
                node_selectors,
                interfaces: spec.interfaces.iter().cloned().collect::<BTreeSet<_>>(),
            })
        })
        .collect()
}
