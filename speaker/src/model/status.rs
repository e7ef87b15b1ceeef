//! Which ServiceL2Status writes bring the cluster to what this node answers for (pure).
//!
//! The objects live in the speaker's namespace and are named `l2-<service uid>-<node>`, so each node only ever
//! creates, and deletes, its own (their `status.node` is immutable). They carry no owner reference: the Service
//! is usually in another namespace, and Kubernetes forbids cross-namespace owners; each speaker deletes its own
//! objects once it stops announcing, Service deleted or not. The writer ([`crate::kube::status`]) runs
//! [`writes`] again after every change and after every failed write, so a failure is retried by construction.

use crate::model::plan::Announced;
use ferrolb_crds::service::ServiceKey;
use std::collections::{BTreeMap, BTreeSet};

/// Label with the announcing node.
pub const NODE_LABEL: &str = "metallb.io/node";
/// Label with the Service's name.
pub const SERVICE_NAME_LABEL: &str = "metallb.io/service-name";
/// Label with the Service's namespace.
pub const SERVICE_NAMESPACE_LABEL: &str = "metallb.io/service-namespace";

/// Name of the status object for a Service announced from `node`.
pub fn status_name(uid: &str, node: &str) -> String {
    format!("l2-{uid}-{node}")
}

/// What one of this node's status objects says: the Service and what is announced for it.
pub type Content = (ServiceKey, Announced);

/// A status object as listed by the API (its labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Object name.
    pub name: String,
    /// Announcing node (`metallb.io/node`).
    pub node: Option<String>,
    /// The Service it is about, from its labels.
    pub service: Option<ServiceKey>,
}

/// One write to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create the object (an existing one is fine) with its labels, then write its status.
    Create {
        /// Object name.
        name: String,
        /// Its content.
        content: Content,
    },
    /// Write the status of an existing object (it may no longer say what is announced: an L2Advertisement now
    /// names other interfaces, a NIC came or went, or this speaker restarted and does not know what it wrote).
    Update {
        /// Object name.
        name: String,
        /// Its content.
        content: Content,
    },
    /// Delete the object (one already gone is fine).
    Delete {
        /// Object name.
        name: String,
    },
}

impl Write {
    /// The object written.
    pub fn name(&self) -> &str {
        match self {
            Write::Create { name, .. } | Write::Update { name, .. } | Write::Delete { name } => name,
        }
    }
}

/// The writes that make the API say what `wanted` says, given what this writer knows it wrote (`written`: name →
/// content, confirmed by the API) and the objects listed (this node's and other nodes'). Other nodes' objects
/// for Services this node now announces are stale (their node died without cleaning up) and go too.
pub fn writes(
    node: &str,
    wanted: &BTreeMap<ServiceKey, Announced>,
    written: &BTreeMap<String, Content>,
    listed: &[Listed],
) -> Vec<Write> {
    let is_mine = |l: &Listed| l.node.as_deref() == Some(node);
    let mine: BTreeSet<&str> = listed.iter().filter(|l| is_mine(l)).map(|l| l.name.as_str()).collect();
    let wanted_by_name: BTreeMap<String, Content> =
        wanted.iter().map(|(key, a)| (status_name(&a.uid, node), (key.clone(), a.clone()))).collect();
    let mut out = Vec::new();
    for (name, content) in &wanted_by_name {
        if !mine.contains(name.as_str()) {
            out.push(Write::Create { name: name.clone(), content: content.clone() });
        } else if written.get(name) != Some(content) {
            out.push(Write::Update { name: name.clone(), content: content.clone() });
        }
    }
    let ours_unwanted = mine.iter().copied().chain(written.keys().map(String::as_str));
    let others_stale = listed
        .iter()
        .filter(|l| !is_mine(l) && l.service.as_ref().is_some_and(|s| wanted.contains_key(s)))
        .map(|l| l.name.as_str());
    let gone: BTreeSet<&str> = ours_unwanted.filter(|n| !wanted_by_name.contains_key(*n)).chain(others_stale).collect();
    out.extend(gone.into_iter().map(|name| Write::Delete { name: name.to_string() }));
    out
}

/// Services newly announced from here, or announced with other addresses: each gets a `nodeAssigned` Event.
pub fn takeovers<'a>(
    before: &BTreeMap<ServiceKey, Announced>,
    now: &'a BTreeMap<ServiceKey, Announced>,
) -> Vec<(&'a ServiceKey, &'a Announced)> {
    now.iter().filter(|(k, a)| before.get(*k).is_none_or(|b| b.ips != a.ips)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(uid: &str, ip: &str) -> Announced {
        Announced {
            uid: uid.into(),
            ips: BTreeSet::from([ip.parse().expect("ip")]),
            interfaces: BTreeSet::from(["eth0".to_string()]).into(),
        }
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("ns", name)
    }

    fn listed(name: String, node: &str, service: ServiceKey) -> Listed {
        Listed { name, node: Some(node.into()), service: Some(service) }
    }

    #[test]
    fn creates_what_is_new_deletes_what_is_gone_and_others_stale_objects() {
        let now = BTreeMap::from([(key("a"), announced("ua", "10.0.0.1")), (key("c"), announced("uc", "10.0.0.3"))]);
        let written = BTreeMap::from([
            (status_name("ua", "n1"), (key("a"), announced("ua", "10.0.0.1"))),
            (status_name("ub", "n1"), (key("b"), announced("ub", "10.0.0.2"))),
        ]);
        let objects = [
            listed(status_name("ua", "n1"), "n1", key("a")),
            listed(status_name("ub", "n1"), "n1", key("b")),
            listed(status_name("uc", "dead-node"), "dead-node", key("c")),
            listed(status_name("ua", "n2"), "n2", ServiceKey::new("other-ns", "a")),
        ];
        let w = writes("n1", &now, &written, &objects);
        assert_eq!(
            w,
            [
                Write::Create { name: status_name("uc", "n1"), content: (key("c"), announced("uc", "10.0.0.3")) },
                Write::Delete { name: status_name("ub", "n1") },
                Write::Delete { name: status_name("uc", "dead-node") },
            ],
            "a unchanged; c new; b ours and gone; c's object of a dead node stale; other-ns/a untouched"
        );
    }

    #[test]
    fn rewrites_what_changed_or_was_never_confirmed_and_nothing_else() {
        let objects = [listed(status_name("ua", "n1"), "n1", key("a"))];
        let moved =
            Announced { interfaces: BTreeSet::from(["eth1".to_string()]).into(), ..announced("ua", "10.0.0.1") };
        let now = BTreeMap::from([(key("a"), moved.clone())]);
        let written = BTreeMap::from([(status_name("ua", "n1"), (key("a"), announced("ua", "10.0.0.1")))]);
        assert_eq!(
            writes("n1", &now, &written, &objects),
            [Write::Update { name: status_name("ua", "n1"), content: (key("a"), moved.clone()) }],
            "answered on another interface: written again"
        );
        // A restarted speaker (or one whose write failed) has no confirmation: written once more.
        assert_eq!(writes("n1", &now, &BTreeMap::new(), &objects).len(), 1);
        // Confirmed and listed: nothing to do.
        let confirmed = BTreeMap::from([(status_name("ua", "n1"), (key("a"), moved))]);
        assert_eq!(writes("n1", &now, &confirmed, &objects), []);
    }

    #[test]
    fn an_object_written_but_not_listed_yet_is_still_deleted_when_no_longer_wanted() {
        let written = BTreeMap::from([(status_name("ua", "n1"), (key("a"), announced("ua", "10.0.0.1")))]);
        assert_eq!(writes("n1", &BTreeMap::new(), &written, &[]), [Write::Delete { name: status_name("ua", "n1") }]);
    }

    #[test]
    fn an_object_deleted_by_someone_else_is_created_again() {
        let now = BTreeMap::from([(key("a"), announced("ua", "10.0.0.1"))]);
        let written = BTreeMap::from([(status_name("ua", "n1"), (key("a"), announced("ua", "10.0.0.1")))]);
        assert!(matches!(writes("n1", &now, &written, &[]).as_slice(), [Write::Create { .. }]));
    }

    #[test]
    fn takeovers_are_new_services_or_new_addresses_only() {
        let before = BTreeMap::from([(key("a"), announced("ua", "10.0.0.1")), (key("b"), announced("ub", "10.0.0.2"))]);
        let moved =
            Announced { interfaces: BTreeSet::from(["eth1".to_string()]).into(), ..announced("ua", "10.0.0.1") };
        let now = BTreeMap::from([
            (key("a"), moved),
            (key("b"), announced("ub", "10.0.0.9")),
            (key("c"), announced("uc", "10.0.0.3")),
        ]);
        let names: Vec<&str> = takeovers(&before, &now).iter().map(|(k, _)| &*k.name).collect();
        assert_eq!(names, ["b", "c"], "a only moved interface: no Event");
    }
}
