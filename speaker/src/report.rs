//! Telling users which node announces what: a `ServiceL2Status` per (Service, announcing node), and an Event on
//! the Service when this node takes it over. The plan is pure; the writes run in a task so ARP never waits.
//!
//! The objects live in the speaker's namespace and are named `l2-<service uid>-<node>`, so each node only ever
//! creates, and deletes, its own (their `status.node` is immutable). They carry no owner reference: the Service
//! is usually in another namespace, and Kubernetes forbids cross-namespace owners; each speaker deletes its own
//! objects once it stops announcing, Service deleted or not.

use crate::plan::Announced;
use ferrolb_crds::ServiceL2Status;
use ferrolb_runtime::events::{EventKind, EventSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Label with the announcing node.
pub const NODE_LABEL: &str = "metallb.io/node";
/// Reason of the Event on a Service that this node now announces (MetalLB's).
pub const NODE_ASSIGNED: &str = "nodeAssigned";
/// Label with the Service's name.
pub const SERVICE_NAME_LABEL: &str = "metallb.io/service-name";
/// Label with the Service's namespace.
pub const SERVICE_NAMESPACE_LABEL: &str = "metallb.io/service-namespace";

/// Name of the status object for a Service announced from `node`.
pub fn status_name(uid: &str, node: &str) -> String {
    format!("l2-{uid}-{node}")
}

/// What to write, computed purely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Status objects to create: (object name, service namespace, service name, what is announced).
    pub create: Vec<(String, String, String, Announced)>,
    /// Existing status objects whose status may no longer say what is announced (an L2Advertisement now names
    /// other interfaces, a NIC came or went, or this speaker restarted and does not know what it wrote before):
    /// written again, same shape as `create`.
    pub update: Vec<(String, String, String, Announced)>,
    /// Status objects of this node to delete.
    pub delete: Vec<String>,
    /// Services newly announced from here (or with other addresses): an Event each.
    pub takeovers: Vec<((String, String), Announced)>,
}

/// Compares what this node announces now with before and with the existing status objects: its own
/// (`existing`) and other nodes' (`others`, name → Service), whose objects for Services this node now announces
/// are stale (their node died without cleaning up) and go too.
pub fn plan(
    node: &str,
    before: &BTreeMap<(String, String), Announced>,
    now: &BTreeMap<(String, String), Announced>,
    existing: &BTreeSet<String>,
    others: &BTreeMap<String, (String, String)>,
) -> Plan {
    let wanted: BTreeMap<String, (&(String, String), &Announced)> =
        now.iter().map(|(k, a)| (status_name(&a.uid, node), (k, a))).collect();
    Plan {
        create: wanted
            .iter()
            .filter(|(name, _)| !existing.contains(*name))
            .map(|(name, ((ns, svc), a))| (name.clone(), ns.clone(), svc.clone(), (*a).clone()))
            .collect(),
        update: wanted
            .iter()
            .filter(|(name, (key, a))| existing.contains(*name) && before.get(*key) != Some(*a))
            .map(|(name, ((ns, svc), a))| (name.clone(), ns.clone(), svc.clone(), (*a).clone()))
            .collect(),
        delete: existing
            .iter()
            .filter(|name| !wanted.contains_key(*name))
            .chain(others.iter().filter(|(_, svc)| now.contains_key(*svc)).map(|(name, _)| name))
            .cloned()
            .collect(),
        takeovers: now
            .iter()
            .filter(|(k, a)| before.get(*k).is_none_or(|b| b.ips != a.ips))
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect(),
    }
}

/// Writes plans for one node.
#[derive(Clone)]
pub struct Reporter {
    /// API client.
    pub client: Client,
    /// Namespace of the status objects.
    pub namespace: String,
    /// This node.
    pub node: String,
}

impl Reporter {
    /// Applies the difference between `before` and `now` in the background.
    pub fn report(
        &self,
        before: &BTreeMap<(String, String), Announced>,
        now: &BTreeMap<(String, String), Announced>,
        existing: &[Arc<PartialObjectMeta<ServiceL2Status>>],
    ) {
        let is_mine = |s: &PartialObjectMeta<ServiceL2Status>| s.labels().get(NODE_LABEL) == Some(&self.node);
        let names: BTreeSet<String> = existing.iter().filter(|s| is_mine(s)).map(|s| s.name_any()).collect();
        let others: BTreeMap<String, (String, String)> = existing
            .iter()
            .filter(|s| !is_mine(s))
            .filter_map(|s| {
                let l = s.labels();
                Some((s.name_any(), (l.get(SERVICE_NAMESPACE_LABEL)?.clone(), l.get(SERVICE_NAME_LABEL)?.clone())))
            })
            .collect();
        let plan = plan(&self.node, before, now, &names, &others);
        let this = self.clone();
        tokio::spawn(async move { this.apply(plan).await });
    }

    async fn apply(self, plan: Plan) {
        let api: Api<ServiceL2Status> = Api::namespaced(self.client.clone(), &self.namespace);
        for (name, svc_ns, svc_name, announced) in &plan.create {
            let obj: Result<ServiceL2Status, _> = serde_json::from_value(json!({
                "apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
                "metadata": {"name": name, "labels": {
                    NODE_LABEL: self.node, SERVICE_NAME_LABEL: svc_name, SERVICE_NAMESPACE_LABEL: svc_ns}},
                "spec": {},
            }));
            let Ok(obj) = obj else { continue };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %e, %name, "cannot create ServiceL2Status");
                    continue;
                }
            }
            self.write_status(&api, name, svc_ns, svc_name, announced).await;
        }
        for (name, svc_ns, svc_name, announced) in &plan.update {
            self.write_status(&api, name, svc_ns, svc_name, announced).await;
        }
        for name in &plan.delete {
            if let Err(e) = api.delete(name, &DeleteParams::default()).await {
                tracing::warn!(error = %e, %name, "cannot delete ServiceL2Status");
            }
        }
        for ((ns, name), announced) in &plan.takeovers {
            let regarding = service_ref(ns, name, &announced.uid);
            let ips: Vec<String> = announced.ips.iter().map(ToString::to_string).collect();
            let ifaces: Vec<&str> = announced.interfaces.iter().map(String::as_str).collect();
            // MetalLB's reason and wording, so alerts and scripts written for MetalLB's Event still match.
            let note = format!(
                "announcing from node \"{}\" with protocol \"layer2\": {} on {}",
                self.node,
                ips.join(", "),
                ifaces.join(", ")
            );
            publish(&self.client, &self.node, regarding, EventKind::Normal, NODE_ASSIGNED, note).await;
        }
    }
}

impl Reporter {
    /// Writes the status of one of this node's objects: the node, the Service, and the interfaces answering.
    async fn write_status(
        &self,
        api: &Api<ServiceL2Status>,
        name: &str,
        svc_ns: &str,
        svc_name: &str,
        announced: &Announced,
    ) {
        let interfaces: Vec<_> = announced.interfaces.iter().map(|i| json!({"name": i})).collect();
        let status = json!({"status": {"node": self.node, "serviceName": svc_name, "serviceNamespace": svc_ns,
            "interfaces": interfaces}});
        if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await {
            tracing::warn!(error = %e, %name, "cannot write ServiceL2Status status");
        }
    }
}

/// A Service as an Event's subject; the Event goes into the Service's namespace.
fn service_ref(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: Some(uid.into()),
        ..ObjectReference::default()
    }
}

impl Reporter {
    /// An Event on a Service `(namespace, name)` with this uid, in the background.
    pub fn service_event(
        &self,
        kind: EventKind,
        reason: &'static str,
        (namespace, name): &(String, String),
        uid: &str,
        note: String,
    ) {
        let this = self.clone();
        let regarding = service_ref(namespace, name, uid);
        tokio::spawn(async move { publish(&this.client, &this.node, regarding, kind, reason, note).await });
    }

    /// An Event on this node's Node object, in the background.
    pub fn node_event(&self, kind: EventKind, reason: &'static str, note: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let regarding = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(this.node.clone()),
                namespace: Some("default".into()),
                ..ObjectReference::default()
            };
            publish(&this.client, &this.node, regarding, kind, reason, note).await;
        });
    }
}

/// Publishes one Event as this node's speaker; a failure is logged, never fatal.
async fn publish(client: &Client, node: &str, regarding: ObjectReference, kind: EventKind, reason: &str, note: String) {
    let event = EventSpec { kind, reason, note, controller: "ferrolb.io/speaker", instance: node };
    if let Err(e) = ferrolb_runtime::events::publish(client, regarding, event).await {
        tracing::warn!(error = %e, reason, "cannot publish Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(uid: &str, ip: &str) -> Announced {
        Announced {
            uid: uid.into(),
            ips: BTreeSet::from([ip.parse().expect("ip")]),
            interfaces: BTreeSet::from(["eth0".to_string()]),
        }
    }

    #[test]
    fn creates_what_is_new_deletes_what_is_gone_and_reports_takeovers_only() {
        let key = |n: &str| ("ns".to_string(), n.to_string());
        let before = BTreeMap::from([(key("a"), announced("ua", "10.0.0.1")), (key("b"), announced("ub", "10.0.0.2"))]);
        let now = BTreeMap::from([(key("a"), announced("ua", "10.0.0.1")), (key("c"), announced("uc", "10.0.0.3"))]);
        let existing = BTreeSet::from([status_name("ua", "n1"), status_name("ub", "n1")]);
        let others = BTreeMap::from([
            (status_name("uc", "dead-node"), key("c")),
            (status_name("ua", "n2"), ("other-ns".to_string(), "a".to_string())),
        ]);
        let p = plan("n1", &before, &now, &existing, &others);
        assert_eq!(p.create.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), [status_name("uc", "n1")]);
        assert_eq!(p.delete, [status_name("ub", "n1"), status_name("uc", "dead-node")], "ours gone + others' stale");
        assert_eq!(p.takeovers.iter().map(|t| t.0.1.clone()).collect::<Vec<_>>(), ["c"]);
        assert!(p.update.is_empty(), "a's announcement did not change");
        // Now answered on another interface: a's existing object is written again, nothing else.
        let moved = Announced { interfaces: BTreeSet::from(["eth1".to_string()]), ..announced("ua", "10.0.0.1") };
        let now_eth1 = BTreeMap::from([(key("a"), moved.clone())]);
        let p = plan("n1", &before, &now_eth1, &existing, &BTreeMap::new());
        assert_eq!(p.update, [(status_name("ua", "n1"), "ns".to_string(), "a".to_string(), moved)]);
        assert!(p.create.is_empty() && p.takeovers.is_empty(), "same addresses: no new object, no Event");
        // A restarted speaker knows nothing of what it wrote: its existing objects are written once more.
        let p = plan("n1", &BTreeMap::new(), &now_eth1, &existing, &BTreeMap::new());
        assert_eq!(p.update.len(), 1, "{p:?}");
        // Nothing changed: nothing to do.
        let existing_now = BTreeSet::from([status_name("ua", "n1"), status_name("uc", "n1")]);
        assert_eq!(plan("n1", &now, &now, &existing_now, &BTreeMap::new()), Plan::default());
    }
}
