//! What the speaker's Node and speaker-pod caches keep of each object: only the fields the plan and liveness
//! read (docs/design.md §4.1); node image lists and statuses are most of a Node. Services and EndpointSlices,
//! thousands of them, are not trimmed but digested ([`crate::model::digest`]). Pure: each function edits one
//! object.

use k8s_openapi::api::core::v1::{Node, Pod};

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
