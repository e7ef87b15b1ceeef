//! What the speaker's watch caches keep of each object: only the fields the plan, the election and the reports
//! read (docs/design.md §4.1). With thousands of Services most of a cached object is ports, selectors, cluster IPs,
//! endpoint addresses and node image lists that nothing here looks at. Pure: each function edits one object.

use crate::model::facts::SLICE_SERVICE_LABEL;
use ferrolb_crds::annotations::{ALLOW_SHARED_IP, IP_ALLOCATED_FROM_POOL};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Keeps a Service's name, namespace, uid, labels (serviceSelectors), the pool and sharing annotations (the
/// election reads whether a Service may share), type, class, traffic policy and ingress addresses; a Service
/// that is not a LoadBalancer keeps only its type.
pub fn service(svc: &mut Service) {
    let load_balancer = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let meta = &mut svc.metadata;
    meta.annotations = meta
        .annotations
        .take()
        .map(|a| {
            let kept = [IP_ALLOCATED_FROM_POOL.key, ALLOW_SHARED_IP.key, ALLOW_SHARED_IP.legacy_key];
            a.into_iter().filter(|(k, _)| load_balancer && kept.contains(&k.as_str())).collect()
        })
        .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty());
    meta.owner_references = None;
    meta.finalizers = None;
    if !load_balancer {
        meta.labels = None;
    }
    if let Some(spec) = svc.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::ServiceSpec {
            type_: spec.type_.take(),
            load_balancer_class: spec.load_balancer_class.take().filter(|_| load_balancer),
            external_traffic_policy: spec.external_traffic_policy.take().filter(|_| load_balancer),
            ..Default::default()
        };
    }
    let ingress =
        svc.status.take().filter(|_| load_balancer).and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).map(
            |list| {
                list.into_iter()
                    .map(|i| k8s_openapi::api::core::v1::LoadBalancerIngress { ip: i.ip, ..Default::default() })
                    .collect()
            },
        );
    svc.status = ingress.map(|ingress| k8s_openapi::api::core::v1::ServiceStatus {
        load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus { ingress: Some(ingress) }),
        ..Default::default()
    });
}

/// Keeps a slice's name, namespace, Service label, and per endpoint its node and conditions.
pub fn endpoint_slice(slice: &mut EndpointSlice) {
    let meta = &mut slice.metadata;
    meta.annotations = None;
    meta.owner_references = None;
    meta.labels = meta
        .labels
        .take()
        .map(|l| l.into_iter().filter(|(k, _)| k == SLICE_SERVICE_LABEL).collect())
        .filter(|l: &std::collections::BTreeMap<String, String>| !l.is_empty());
    slice.ports = None;
    for ep in &mut slice.endpoints {
        *ep = k8s_openapi::api::discovery::v1::Endpoint {
            conditions: ep.conditions.take(),
            node_name: ep.node_name.take(),
            ..Default::default()
        };
    }
}

/// Keeps a Node's name, labels, taints, condition types and statuses, and addresses (the liveness peers).
pub fn node(node: &mut Node) {
    node.metadata.annotations = None;
    node.metadata.owner_references = None;
    if let Some(spec) = node.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::NodeSpec { taints: spec.taints.take(), ..Default::default() };
    }
    if let Some(status) = node.status.as_mut() {
        let conditions = status.conditions.take().map(|list| {
            list.into_iter()
                .map(|c| k8s_openapi::api::core::v1::NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        });
        *status = k8s_openapi::api::core::v1::NodeStatus {
            conditions,
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

/// Keeps a speaker pod's name, namespace, deletion mark, node and phase: what says which node runs a speaker
/// ([`crate::model::facts::speaker_node`]).
pub fn pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    *meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        ..Default::default()
    };
    pod.spec = pod
        .spec
        .take()
        .map(|spec| k8s_openapi::api::core::v1::PodSpec { node_name: spec.node_name, ..Default::default() });
    pod.status = pod
        .status
        .take()
        .map(|status| k8s_openapi::api::core::v1::PodStatus { phase: status.phase, ..Default::default() });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_load_balancer_keeps_what_the_plan_reads_and_loses_the_rest() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "kube-system", "uid": "u1", "labels": {"app": "dns"},
                "annotations": {"metallb.io/ip-allocated-from-pool": "lab", "big": "x".repeat(1000),
                    "metallb.universe.tf/allow-shared-ip": "dns"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerClass": "c",
                "ports": [{"port": 53, "protocol": "UDP"}], "selector": {"k8s-app": "kube-dns"},
                "clusterIP": "10.0.0.10", "clusterIPs": ["10.0.0.10"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.1", "ipMode": "VIP",
                "ports": [{"port": 53, "protocol": "UDP"}]}]}}
        }))
        .expect("service");
        service(&mut svc);
        let v = serde_json::to_value(&svc).expect("json");
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "dns", "namespace": "kube-system", "uid": "u1", "labels": {"app": "dns"},
                    "annotations": {"metallb.io/ip-allocated-from-pool": "lab",
                        "metallb.universe.tf/allow-shared-ip": "dns"}},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerClass": "c"},
                "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.1"}]}}
            })
        );
    }

    #[test]
    fn other_services_keep_only_their_type() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80}], "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {}}
        }))
        .expect("service");
        service(&mut svc);
        let v = serde_json::to_value(&svc).expect("json");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "ClusterIP"}})
        );
    }

    #[test]
    fn slices_keep_service_label_nodes_and_conditions() {
        let mut slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "dns-x", "namespace": "kube-system",
                "labels": {"kubernetes.io/service-name": "dns", "endpointslice.kubernetes.io/managed-by": "c"}},
            "addressType": "IPv4",
            "ports": [{"port": 53}],
            "endpoints": [{"addresses": ["198.18.17.2"], "nodeName": "node-1", "zone": "a",
                "conditions": {"ready": true, "serving": true}, "targetRef": {"kind": "Pod", "name": "p"}}]
        }))
        .expect("slice");
        endpoint_slice(&mut slice);
        let v = serde_json::to_value(&slice).expect("json");
        assert_eq!(
            v,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "dns-x", "namespace": "kube-system",
                    "labels": {"kubernetes.io/service-name": "dns"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [], "nodeName": "node-1", "conditions": {"ready": true, "serving": true}}]
            })
        );
    }

    #[test]
    fn nodes_keep_labels_taints_conditions_and_addresses() {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-1", "labels": {"zone": "a"}, "annotations": {"big": "y"}},
            "spec": {"podCIDR": "10.1.0.0/24", "taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
                    "lastHeartbeatTime": "2026-11-27T00:00:00Z"}],
                "addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
                "images": [{"names": ["x"], "sizeBytes": 1}],
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                    "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "", "osImage": "",
                    "systemUUID": ""}
            }
        }))
        .expect("node");
        let facts_before = crate::model::facts::node_facts(&n);
        node(&mut n);
        assert_eq!(crate::model::facts::node_facts(&n), facts_before);
        let v = serde_json::to_value(&n).expect("json");
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "198.18.0.11"}]}
            })
        );
    }

    #[test]
    fn speaker_pods_keep_their_node_phase_and_deletion_mark() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ferrolb-speaker-x", "namespace": "metallb-system", "resourceVersion": "7",
                "labels": {"app.kubernetes.io/component": "speaker"}, "annotations": {"a": "b"},
                "deletionTimestamp": "2026-12-04T00:00:00Z"},
            "spec": {"nodeName": "node-1", "hostNetwork": true,
                "containers": [{"name": "speaker", "image": "ferrolb/speaker:0.1.0", "args": ["--x"]}]},
            "status": {"phase": "Running", "podIP": "198.18.0.11", "containerStatuses": [{"name": "speaker",
                "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .expect("pod");
        let before = crate::model::facts::speaker_node(&p).map(str::to_string);
        pod(&mut p);
        assert_eq!(crate::model::facts::speaker_node(&p).map(str::to_string), before);
        assert_eq!(
            serde_json::to_value(&p).expect("json"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "ferrolb-speaker-x", "namespace": "metallb-system", "resourceVersion": "7",
                    "deletionTimestamp": "2026-12-04T00:00:00Z"},
                "spec": {"nodeName": "node-1", "containers": []},
                "status": {"phase": "Running"}})
        );
    }
}
