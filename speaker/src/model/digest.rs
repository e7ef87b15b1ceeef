//! What the speaker keeps of each Service and EndpointSlice: a digest holding only what the plan reads, made
//! when the object arrives and stored instead of it. A typed `Service` is about a kilobyte of mostly empty
//! fields before any string, an `EndpointSlice` more; with 10,000 Services the cached objects were most of a
//! speaker's memory even trimmed (docs/design.md §4.6). Pure: one function per kind.

use crate::model::status::{Listed, NODE_LABEL, SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL};
use ferrolb_crds::annotations::{ALLOW_SHARED_IP, IP_ALLOCATED_FROM_POOL};
use ferrolb_crds::service::{ServiceKey, current_ingress};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Label that ties an EndpointSlice to its Service.
pub const SLICE_SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// What the plan reads of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDigest {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// The Service's uid (names its ServiceL2Status; shared with the plan and the status writer).
    pub uid: Arc<str>,
    /// `type: LoadBalancer`.
    pub load_balancer: bool,
    /// `spec.loadBalancerClass`.
    pub class: Option<String>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// It carries `allow-shared-ip` (any value, either prefix).
    pub allows_sharing: bool,
    /// The pool its addresses came from, as the controller recorded it.
    pub pool: Option<String>,
    /// Its labels (advertisements' `serviceSelectors`); empty for a Service that is not a LoadBalancer.
    pub labels: BTreeMap<String, String>,
    /// Its ingress addresses.
    pub ingress: Vec<IpAddr>,
}

impl ServiceDigest {
    /// A LoadBalancer of the class this speaker serves (`None`: only Services without a class).
    pub fn is_managed(&self, load_balancer_class: Option<&str>) -> bool {
        self.load_balancer && self.class.as_deref() == load_balancer_class
    }
}

/// Digests a Service.
pub fn service(svc: &Service) -> ServiceDigest {
    let spec = svc.spec.as_ref();
    let load_balancer = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let annotations = svc.metadata.annotations.as_ref();
    ServiceDigest {
        key: ServiceKey::of(svc),
        uid: Arc::from(svc.metadata.uid.as_deref().unwrap_or_default()),
        load_balancer,
        class: spec.and_then(|s| s.load_balancer_class.clone()),
        local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        // Present at all counts, as in MetalLB: even an empty key says the Service is meant to share.
        allows_sharing: annotations.is_some_and(|a| ALLOW_SHARED_IP.get(a).is_some()),
        pool: annotations.and_then(|a| a.get(IP_ALLOCATED_FROM_POOL.key)).cloned(),
        labels: if load_balancer { svc.metadata.labels.clone().unwrap_or_default() } else { BTreeMap::new() },
        ingress: if load_balancer { current_ingress(svc) } else { Vec::new() },
    }
}

/// What the plan reads of an EndpointSlice: its Service and where its endpoints can serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceDigest {
    /// The Service it belongs to (`namespace`, `kubernetes.io/service-name`); `None` for a slice of no Service.
    pub service: Option<ServiceKey>,
    /// Nodes hosting an endpoint that can serve, each once.
    pub serving_nodes: Vec<String>,
    /// Whether any endpoint can serve (nodeless endpoints included).
    pub any_serving: bool,
}

/// Digests an EndpointSlice (an endpoint can serve when ready is unset or true, or when it is serving, as
/// MetalLB counts them).
pub fn endpoint_slice(slice: &EndpointSlice) -> SliceDigest {
    let meta = slice.meta();
    let service = match (meta.namespace.as_ref(), meta.labels.as_ref().and_then(|l| l.get(SLICE_SERVICE_LABEL))) {
        (Some(namespace), Some(name)) => Some(ServiceKey::new(namespace, name)),
        _ => None,
    };
    let mut digest = SliceDigest { service, ..SliceDigest::default() };
    for ep in &slice.endpoints {
        let c = ep.conditions.as_ref();
        if c.is_none_or(|c| c.ready.is_none_or(|r| r) || c.serving == Some(true)) {
            digest.any_serving = true;
            if let Some(node) = &ep.node_name
                && !digest.serving_nodes.contains(node)
            {
                digest.serving_nodes.push(node.clone());
            }
        }
    }
    digest.serving_nodes.shrink_to_fit();
    digest
}

/// What the status writer reads of a ServiceL2Status: its name, node and Service, from its labels.
pub fn listed<K: Resource>(object: &K) -> Listed {
    let meta = object.meta();
    let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key));
    let service = match (label(SERVICE_NAMESPACE_LABEL), label(SERVICE_NAME_LABEL)) {
        (Some(namespace), Some(name)) => Some(ServiceKey::new(namespace, name)),
        _ => None,
    };
    Listed { name: meta.name.clone().unwrap_or_default(), node: label(NODE_LABEL).cloned(), service }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_digest_keeps_what_the_plan_reads() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "kube-system", "uid": "u-1", "labels": {"app": "dns"},
                "annotations": {"metallb.universe.tf/allow-shared-ip": "", "metallb.io/ip-allocated-from-pool": "edge",
                    "example.com/owner": "team-a"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerClass": "x",
                "clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.10"}, {"ip": "2001:db8::10"}]}}
        }))
        .expect("service");
        let d = service(&svc);
        assert_eq!(d.key, ServiceKey::new("kube-system", "dns"));
        assert_eq!((&*d.uid, d.local, d.allows_sharing, d.pool.as_deref()), ("u-1", true, true, Some("edge")));
        assert!(d.is_managed(Some("x")) && !d.is_managed(None), "the class decides");
        assert_eq!(d.labels.get("app").map(String::as_str), Some("dns"));
        let ingress: Vec<IpAddr> = vec!["198.19.0.10".parse().expect("ip"), "2001:db8::10".parse().expect("ip")];
        assert_eq!(d.ingress, ingress);
    }

    #[test]
    fn a_service_that_is_no_load_balancer_keeps_neither_labels_nor_addresses() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.10"}]}}
        }))
        .expect("service");
        let d = service(&svc);
        assert!(!d.is_managed(None));
        assert!(d.labels.is_empty() && d.ingress.is_empty());
    }

    #[test]
    fn a_slice_digest_counts_endpoints_that_can_serve_once_per_node() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "a", "labels": {SLICE_SERVICE_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "nodeName": "n1"},
                {"addresses": ["10.0.0.3"], "nodeName": "n2", "conditions": {"ready": false}},
                {"addresses": ["10.0.0.4"], "nodeName": "n3", "conditions": {"ready": false, "serving": true}},
            ]
        }))
        .expect("slice");
        let d = endpoint_slice(&slice);
        assert_eq!(d.service, Some(ServiceKey::new("a", "web")));
        assert_eq!(d.serving_nodes, vec!["n1".to_string(), "n3".to_string()]);
        assert!(d.any_serving);
        let lonely: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "a"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": false}}]
        }))
        .expect("slice");
        assert_eq!(endpoint_slice(&lonely), SliceDigest::default(), "no Service, nothing serving");
    }
}
