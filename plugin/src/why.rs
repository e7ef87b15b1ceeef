//! `why`: why a Service has no address, or why its address goes unanswered, in the words of the Warning Event
//! the controller or a speaker put on it — by running their own pure functions over the objects read from the
//! API: the controller's allocator as a freshly elected leader rebuilds it (`ferrolb_controller::replay`), and the
//! speakers' plan (`ferrolb_speaker::model::plan`). Two things only a speaker knows are not recomputed: its interfaces
//! (so `announceFailed` is read from the latest such Event) and its first-hand liveness view (the plan runs with
//! each Node's `Ready` condition instead, the speakers' own fallback, docs/design.md §5.4).

use crate::error::Error;
use crate::model::{Cluster, Settings};
use ferrolb_controller::replay;
use ferrolb_crds::service::{current_ingress, is_managed};
use ferrolb_speaker::model::diagnose::{ANNOUNCE_FAILED, NO_ELIGIBLE_NODE};
use ferrolb_speaker::model::digest;
use ferrolb_speaker::model::election::Policy;
use ferrolb_speaker::model::facts;
use ferrolb_speaker::model::membership::{Config, Membership};
use ferrolb_speaker::model::plan::{self, Me, Snapshot};
use k8s_openapi::api::core::v1::{Event, Service};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a reason comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The controller's allocator, run here (its `AllocationFailed` Event says the same).
    Allocator,
    /// The speakers' election and diagnosis, run here with liveness from Node `Ready` (`NoEligibleNode`).
    Election,
    /// The latest Warning Event with this reason on the Service, as a speaker wrote it.
    Event(&'static str),
    /// The `ServiceL2Status` objects the speakers write.
    Status,
    /// The Service itself.
    Service,
}

impl Source {
    fn describe(self) -> String {
        match self {
            Self::Allocator => {
                "the controller's allocator, run here over the current pools and Services (its AllocationFailed \
                 Event says the same)"
                    .into()
            }
            Self::Election => format!(
                "the speakers' election, run here with liveness from each Node's Ready condition (the {NO_ELIGIBLE_NODE} \
                 Event says the same)"
            ),
            Self::Event(reason) => {
                format!("the latest {reason} Event on the Service, as the elected node's speaker wrote it")
            }
            Self::Status => "the ServiceL2Status objects the speakers write".into(),
            Self::Service => "the Service's spec".into(),
        }
    }
}

/// One finding: what is so, and who says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The text (for a refusal or a diagnosis, exactly the Event's).
    pub text: String,
    /// Where it comes from.
    pub source: Source,
}

/// The answer to `why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `namespace/name`.
    pub service: String,
    /// One line: the Service's state.
    pub headline: String,
    /// Problems, each the reason for the headline; empty when all is well.
    pub reasons: Vec<Finding>,
    /// What works (addresses announced).
    pub notes: Vec<Finding>,
}

/// Splits `NAME`, `NAMESPACE/NAME` or `NAME` with `-n NAMESPACE` into (namespace, name).
pub fn target(arg: &str, namespace: Option<&str>) -> Result<(String, String), Error> {
    let bad = || Error::BadTarget(arg.to_string());
    let arg = arg.strip_prefix("service/").or_else(|| arg.strip_prefix("svc/")).unwrap_or(arg);
    let (ns, name) = match arg.split_once('/') {
        Some((ns, name)) => {
            if namespace.is_some_and(|n| n != ns) {
                return Err(bad());
            }
            (ns, name)
        }
        None => (namespace.unwrap_or("default"), arg),
    };
    let valid = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains(char::is_whitespace);
    if !valid(ns) || !valid(name) {
        return Err(bad());
    }
    Ok((ns.to_string(), name.to_string()))
}

/// Checks the Service is one a load balancer looks at at all.
pub fn check_type(svc: &Service) -> Result<(), Error> {
    let kind = svc.spec.as_ref().and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into());
    if kind == "LoadBalancer" {
        return Ok(());
    }
    Err(Error::NotLoadBalancer {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        kind,
    })
}

fn snapshot(c: &Cluster) -> Snapshot {
    fn arcs<T: Clone>(v: &[T]) -> Vec<Arc<T>> {
        v.iter().cloned().map(Arc::new).collect()
    }
    Snapshot {
        services: c.services.iter().map(|s| Arc::new(digest::service(s))).collect(),
        slices: c.slices.iter().map(|s| Arc::new(digest::endpoint_slice(s))).collect(),
        nodes: arcs(&c.nodes),
        ads: arcs(&c.ads),
        pools: arcs(&c.pools),
        speaker_nodes: c.speaker_pods.as_ref().and_then(|pods| facts::speaker_nodes(pods, None)),
    }
}

/// The latest Warning Event with `reason` on this incarnation of the Service.
fn latest_event<'a>(events: &'a [Event], svc: &Service, reason: &str) -> Option<&'a Event> {
    let when = |e: &Event| {
        e.event_time.as_ref().map(|t| t.0).or(e.last_timestamp.as_ref().map(|t| t.0)).or(e
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0))
    };
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.involved_object.uid.is_none() || e.involved_object.uid == svc.metadata.uid)
        .max_by_key(|e| when(e))
}

/// Why `svc` has no address or goes unanswered (pure; `now` only feeds the speakers' liveness bookkeeping, which
/// here has no peers).
pub fn why(svc: &Service, cluster: &Cluster, settings: &Settings, now: Instant) -> Answer {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let class = settings.load_balancer_class.as_deref();
    let answer = |headline: String, reasons: Vec<Finding>, notes: Vec<Finding>| Answer {
        service: key.clone(),
        headline,
        reasons,
        notes,
    };
    if !is_managed(svc, class) {
        let theirs = svc.spec.as_ref().and_then(|s| s.load_balancer_class.clone());
        let text = match (theirs, class) {
            (Some(c), Some(ours)) => format!("its loadBalancerClass is {c:?}; ferrolb serves {ours:?}"),
            (Some(c), None) => format!("its loadBalancerClass is {c:?}; ferrolb serves Services without a class"),
            (None, Some(ours)) => format!("it has no loadBalancerClass; ferrolb serves only {ours:?}"),
            (None, None) => "it is not a LoadBalancer Service".into(),
        };
        return answer("not ferrolb's".into(), vec![Finding { text, source: Source::Service }], Vec::new());
    }
    let ingress = current_ingress(svc);
    if ingress.is_empty() {
        let labels_of: BTreeMap<String, BTreeMap<String, String>> = cluster
            .namespaces
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        let labels = |ns: &str| labels_of.get(ns).cloned().unwrap_or_default();
        let pools = replay::read_pools(&cluster.pools);
        let mut allocator = replay::rebuild(&pools, &cluster.services, labels, class);
        let text = match replay::decide(&mut allocator, svc, &labels(&ns)) {
            Err(refusal) => refusal.to_string(),
            Ok(a) => {
                let ips: Vec<String> = a.ips.iter().map(ToString::to_string).collect();
                format!(
                    "the allocator would give it {ips:?} from pool {:?} now, but the controller has not written it: \
                     is a ferrolb-controller replica leader (Lease ferrolb-controller) and running?",
                    a.pool
                )
            }
        };
        return answer("no address".into(), vec![Finding { text, source: Source::Allocator }], Vec::new());
    }

    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let policy = Policy { ignore_exclude_label: settings.ignore_exclude_lb };
    let snap = snapshot(cluster);
    // No first-hand liveness here: every peer is Unknown and counts by its Node's Ready condition.
    let membership = Membership::new("", Config::new(Duration::from_millis(200)), now);
    let me = |node: &'static str| Me { node, load_balancer_class: class, policy };
    let prepared = plan::prepare(&me(""), &snap);
    let nobody = plan::decide(&me(""), &prepared, &[], &membership, false, now);
    let skey = ferrolb_crds::service::ServiceKey::new(&ns, &name);
    let unannounced = nobody.unannounced.get(&skey);
    if let Some(problem) = unannounced {
        reasons.push(Finding { text: problem.note.clone(), source: Source::Election });
    }
    let reports: Vec<_> = cluster
        .statuses
        .iter()
        .filter_map(|st| st.status.as_ref())
        .filter(|s| s.service_namespace.as_deref() == Some(&ns) && s.service_name.as_deref() == Some(&name))
        .collect();
    for r in &reports {
        let ifaces: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
        let ips: Vec<String> = ingress.iter().map(ToString::to_string).collect();
        notes.push(Finding {
            text: format!(
                "{} announced by node {} on {}",
                ips.join(", "),
                r.node.as_deref().unwrap_or("?"),
                if ifaces.is_empty() { "-".to_string() } else { ifaces.join(", ") }
            ),
            source: Source::Status,
        });
    }
    if let Some((first, order)) = prepared.election_order(&skey, policy).filter(|(_, o)| !o.is_empty()) {
        notes.push(Finding { text: election_order_text(first, &order), source: Source::Election });
    }
    if unannounced.is_none() && reports.is_empty() {
        match latest_event(&cluster.events, svc, ANNOUNCE_FAILED) {
            Some(e) => reasons
                .push(Finding { text: e.message.clone().unwrap_or_default(), source: Source::Event(ANNOUNCE_FAILED) }),
            None => {
                // Which node the election picks: a node that wins but has no interfaces shows up as `failed` in its
                // own plan, and here no node has interfaces.
                let owner = cluster.nodes.iter().filter_map(|n| n.metadata.name.as_deref()).find(|node| {
                    let me = Me { node, load_balancer_class: class, policy };
                    plan::decide(&me, &prepared, &[], &membership, false, now).failed.contains_key(&skey)
                });
                let text = match owner {
                    Some(node) => format!(
                        "node {node} is elected but reports no ServiceL2Status for it: is its speaker running? (its \
                         logs say more)"
                    ),
                    None => "no node reports announcing it and the election names no owner".into(),
                };
                reasons.push(Finding { text, source: Source::Election });
            }
        }
    }
    let ips: Vec<String> = ingress.iter().map(ToString::to_string).collect();
    let headline = if reasons.is_empty() {
        format!("has {} and is announced", ips.join(", "))
    } else {
        format!("has {} but is not (fully) announced", ips.join(", "))
    };
    answer(headline, reasons, notes)
}

/// The election order in words: who wins, who would next, and the preference weights when any node has one.
fn election_order_text(first: IpAddr, order: &[(&str, u64)]) -> String {
    let preferred = order.iter().any(|(_, weight)| *weight > 0);
    let shown: Vec<String> = order
        .iter()
        .take(5)
        .map(|(name, weight)| if preferred { format!("{name} (preference {weight})") } else { name.to_string() })
        .collect();
    let more = match order.len().saturating_sub(5) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let rule = if preferred {
        "the highest preferredNodeSelectors weight first, then the hash of node and address"
    } else {
        "by the hash of node and address"
    };
    format!("election order for {first}: {}{more} ({rule}; the first announces)", shown.join(", "))
}

/// The text `why` prints: a headline, then `reason:` / `ok:` lines each followed by its `source:`.
pub fn render(a: &Answer) -> String {
    let mut out = format!("{}: {}\n", a.service, a.headline);
    for (tag, f) in a.reasons.iter().map(|f| ("reason", f)).chain(a.notes.iter().map(|f| ("ok", f))) {
        out.push_str(&format!("{tag}: {}\n  source: {}\n", f.text, f.source.describe()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("object")
    }

    fn service(name: &str, spec: Value, ingress: Option<&str>) -> Service {
        let status = ingress.map_or(json!({}), |ip| json!({"loadBalancer": {"ingress": [{"ip": ip}]}}));
        let annotations = ingress.map_or(json!({}), |_| json!({"metallb.io/ip-allocated-from-pool": "lab"}));
        let mut spec = spec;
        spec["type"] = json!("LoadBalancer");
        spec["ports"] = json!([{"port": 80, "protocol": "TCP"}]);
        obj(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "annotations": annotations}, "spec": spec, "status": status}))
    }

    fn cluster(services: Vec<Service>, node_labels: Value) -> Cluster {
        Cluster {
            services,
            pools: vec![obj(json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                "metadata": {"name": "lab", "namespace": "metallb-system"},
                "spec": {"addresses": ["198.19.0.0/30"]}}))],
            ads: vec![obj(json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                "metadata": {"name": "lab", "namespace": "metallb-system"}}))],
            slices: vec![obj(json!({"metadata": {"name": "web-x", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["198.18.17.2"], "nodeName": "node-1"}]}))],
            nodes: vec![obj(json!({"metadata": {"name": "node-1", "labels": node_labels},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))],
            ..Cluster::default()
        }
    }

    #[test]
    fn a_service_or_namespace_is_read_from_every_form_kubectl_users_type() {
        assert_eq!(target("web", None).ok(), Some(("default".into(), "web".into())));
        assert_eq!(target("web", Some("team")).ok(), Some(("team".into(), "web".into())));
        assert_eq!(target("team/web", None).ok(), Some(("team".into(), "web".into())));
        assert_eq!(target("svc/web", Some("team")).ok(), Some(("team".into(), "web".into())));
        assert!(matches!(target("a/b/c", None), Err(Error::BadTarget(_))));
        assert!(matches!(target("team/web", Some("other")), Err(Error::BadTarget(_))), "two namespaces");
        assert!(matches!(target("", None), Err(Error::BadTarget(_))));
    }

    #[test]
    fn a_pending_service_gets_the_allocators_refusal_word_for_word() {
        let outside = service("outside", json!({"loadBalancerIP": "10.99.0.1"}), None);
        let c = cluster(vec![outside.clone()], json!({}));
        let a = why(&outside, &c, &Settings::default(), Instant::now());
        assert_eq!(a.headline, "no address");
        assert_eq!(a.reasons[0].text, "requested address 10.99.0.1 is not in any usable IPAddressPool");
        assert_eq!(a.reasons[0].source, Source::Allocator);
        let text = render(&a);
        assert!(
            text.starts_with(
                "default/outside: no address\nreason: requested address 10.99.0.1 is not in any usable IPAddressPool\n  source: the controller's allocator"
            ),
            "{text}"
        );
        let fresh = service("fresh", json!({}), None);
        let a = why(&fresh, &cluster(vec![fresh.clone()], json!({})), &Settings::default(), Instant::now());
        assert!(a.reasons[0].text.starts_with("the allocator would give it [\"198.19.0.0\"]"), "{a:?}");
    }

    #[test]
    fn an_unannounced_address_gets_the_speakers_diagnosis_and_the_knob_that_fixes_it() {
        let web = service("web", json!({}), Some("198.19.0.1"));
        let excluded = json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""});
        let c = cluster(vec![web.clone()], excluded);
        let a = why(&web, &c, &Settings::default(), Instant::now());
        assert_eq!(
            a.reasons,
            [Finding {
                text: "nobody announces 198.19.0.1: the only node, node-1, is not eligible (label \
                       node.kubernetes.io/exclude-from-external-load-balancers); set speaker.ignoreExcludeLB=true to \
                       announce from labelled nodes anyway"
                    .into(),
                source: Source::Election
            }]
        );
        let ignoring = Settings { ignore_exclude_lb: true, ..Settings::default() };
        let a = why(&web, &c, &ignoring, Instant::now());
        assert_eq!(a.reasons.len(), 1);
        assert!(a.reasons[0].text.starts_with("node node-1 is elected but reports no ServiceL2Status"), "{a:?}");
    }

    #[test]
    fn a_node_without_a_speaker_pod_is_named_as_such() {
        let web = service("web", json!({}), Some("198.19.0.1"));
        let mut c = cluster(vec![web.clone()], json!({}));
        let a = why(&web, &c, &Settings::default(), Instant::now());
        assert!(a.reasons[0].text.starts_with("node node-1 is elected"), "pods unknown: node-1 may run one: {a:?}");
        let elsewhere: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "ferrolb-speaker-x", "namespace": "metallb-system"},
            "spec": {"nodeName": "node-9", "containers": []}, "status": {"phase": "Running"}}))
        .expect("pod");
        c.speaker_pods = Some(vec![elsewhere]);
        let a = why(&web, &c, &Settings::default(), Instant::now());
        assert_eq!(
            a.reasons[0].text,
            "nobody announces 198.19.0.1: the only node, node-1, is not eligible (no ferrolb speaker runs there: the \
             speaker DaemonSet's nodeSelector/tolerations leave it out)"
        );
        assert_eq!(a.reasons[0].source, Source::Election);
    }

    #[test]
    fn an_announced_service_names_its_node_and_an_interface_failure_comes_from_the_event() {
        let web = service("web", json!({}), Some("198.19.0.1"));
        let mut c = cluster(vec![web.clone()], json!({}));
        c.events = vec![obj(json!({"metadata": {"name": "e1", "creationTimestamp": "2026-03-01T10:00:00Z"},
            "involvedObject": {"uid": "uid-web"}, "type": "Warning", "reason": "announceFailed",
            "message": "node node-1 was elected for 198.19.0.1 but cannot announce: no interface is up"}))];
        let a = why(&web, &c, &Settings::default(), Instant::now());
        assert_eq!(a.reasons[0].text, "node node-1 was elected for 198.19.0.1 but cannot announce: no interface is up");
        assert_eq!(a.reasons[0].source, Source::Event(ANNOUNCE_FAILED));
        c.statuses = vec![obj(json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
            "metadata": {"name": "l2-uid-web-node-1"}, "spec": {}, "status": {"node": "node-1",
            "serviceName": "web", "serviceNamespace": "default", "interfaces": [{"name": "eth0"}]}}))];
        let a = why(&web, &c, &Settings::default(), Instant::now());
        assert!(a.reasons.is_empty(), "{a:?}");
        assert_eq!(a.headline, "has 198.19.0.1 and is announced");
        assert_eq!(a.notes[0].text, "198.19.0.1 announced by node node-1 on eth0");
    }

    #[test]
    fn the_election_order_shows_preferences_and_an_ipv6_address_is_not_called_unannounced() {
        let web: Service = obj(json!({"metadata": {"name": "web", "namespace": "default", "uid": "uid-web",
            "annotations": {"metallb.io/ip-allocated-from-pool": "lab"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.1"}, {"ip": "2001:db8::1"}]}}}));
        let mut c = cluster(vec![web.clone()], json!({}));
        let node = |name: &str, labels: Value| -> Node {
            obj(json!({"metadata": {"name": name, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        };
        c.nodes = vec![node("node-1", json!({})), node("node-2", json!({"zone": "primary"}))];
        c.statuses = vec![obj(json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
            "metadata": {"name": "l2-uid-web-node-2"}, "spec": {}, "status": {"node": "node-2",
            "serviceName": "web", "serviceNamespace": "default", "interfaces": [{"name": "eth0"}]}}))];
        let plain = why(&web, &c, &Settings::default(), Instant::now());
        assert!(plain.reasons.is_empty(), "both addresses are answered by the reporting node: {plain:?}");
        assert_eq!(plain.notes[0].text, "198.19.0.1, 2001:db8::1 announced by node node-2 on eth0");
        let hashed = &plain.notes[1].text;
        assert!(
            hashed.starts_with("election order for 198.19.0.1: node-") && hashed.contains("by the hash"),
            "{hashed}"
        );
        c.ads = vec![obj(json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "lab", "namespace": "metallb-system"},
            "spec": {"preferredNodeSelectors": [{"weight": 100, "preference": {"matchLabels": {"zone": "primary"}}}]}}))];
        let preferred = why(&web, &c, &Settings::default(), Instant::now());
        assert_eq!(
            preferred.notes[1].text,
            "election order for 198.19.0.1: node-2 (preference 100), node-1 (preference 0) (the highest \
             preferredNodeSelectors weight first, then the hash of node and address; the first announces)"
        );
        assert_eq!(preferred.notes[1].source, Source::Election);
    }

    #[test]
    fn another_class_and_other_types_are_not_ours() {
        let theirs = service("theirs", json!({"loadBalancerClass": "other.io/lb"}), None);
        let a = why(&theirs, &cluster(vec![], json!({})), &Settings::default(), Instant::now());
        assert_eq!(a.headline, "not ferrolb's");
        assert!(a.reasons[0].text.contains("\"other.io/lb\""));
        let cluster_ip: Service = obj(json!({"metadata": {"name": "c", "namespace": "default"}, "spec": {}}));
        assert!(matches!(check_type(&cluster_ip), Err(Error::NotLoadBalancer { kind, .. }) if kind == "ClusterIP"));
        assert!(check_type(&theirs).is_ok());
    }
}
