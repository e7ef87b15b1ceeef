//! What the controller's Service cache keeps of each Service: only the fields [`crate::service`], the replay and
//! the status writer read. With thousands of Services most of a cached object is cluster IPs, node ports,
//! session affinity and other controllers' annotations, which nothing here looks at (docs/design.md §4.6).
//! Pure: edits one object.

use ferrolb_crds::annotations::{LEGACY_PREFIX, PREFIX};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};

/// Keeps the name, namespace, uid, resource version and timestamps (Events and the replay's order), labels
/// (serviceSelectors), MetalLB's annotations, what the allocator reads of the spec (type, class, requested
/// address, families, traffic policy, the selector of a `Local` Service, protocols and ports) and the ingress
/// addresses.
pub fn service(svc: &mut Service) {
    let meta = &mut svc.metadata;
    meta.annotations = meta
        .annotations
        .take()
        .map(|a| a.into_iter().filter(|(k, _)| k.starts_with(PREFIX) || k.starts_with(LEGACY_PREFIX)).collect())
        .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty());
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(spec) = svc.spec.as_mut() {
        let families_known = spec.ip_families.as_ref().is_some_and(|f| !f.is_empty());
        // The selector matters only to Services that may share an address under `Local` (same backends); a
        // one-entry map costs hundreds of bytes.
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        *spec = ServiceSpec {
            type_: spec.type_.take(),
            load_balancer_class: spec.load_balancer_class.take(),
            load_balancer_ip: spec.load_balancer_ip.take(),
            ip_family_policy: spec.ip_family_policy.take(),
            ip_families: spec.ip_families.take(),
            // The families are read from the cluster IPs only when ipFamilies is absent (an older API server).
            cluster_ips: spec.cluster_ips.take().filter(|_| !families_known),
            cluster_ip: spec.cluster_ip.take().filter(|_| !families_known),
            external_traffic_policy: spec.external_traffic_policy.take(),
            selector: spec.selector.take().filter(|_| local),
            ports: spec.ports.take().map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort { protocol: p.protocol, port: p.port, ..Default::default() })
                    .collect()
            }),
            ..Default::default()
        };
    }
    let ingress = svc.status.take().and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).map(|list| {
        list.into_iter().map(|i| LoadBalancerIngress { ip: i.ip, ..Default::default() }).collect::<Vec<_>>()
    });
    svc.status = ingress.map(|ingress| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
        ..Default::default()
    });
}

/// Text that is usually one of a few well-known values (`LoadBalancer`, `IPv4`, `TCP`, …): those are kept as a
/// static string, anything else as its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    Known(&'static str),
    Other(Box<str>),
}

/// The values Kubernetes gives most Services' enum-like fields.
const KNOWN: [&str; 14] = [
    "LoadBalancer",
    "ClusterIP",
    "NodePort",
    "ExternalName",
    "Cluster",
    "Local",
    "SingleStack",
    "PreferDualStack",
    "RequireDualStack",
    "IPv4",
    "IPv6",
    "TCP",
    "UDP",
    "SCTP",
];

impl Text {
    fn of(s: String) -> Self {
        KNOWN.iter().find(|k| **k == s).map_or_else(|| Text::Other(s.into_boxed_str()), |k| Text::Known(k))
    }

    fn string(&self) -> String {
        match self {
            Text::Known(s) => (*s).to_string(),
            Text::Other(s) => s.to_string(),
        }
    }
}

/// A string map as a boxed slice of pairs: a one-entry `BTreeMap` allocates a whole leaf (about 540 bytes for
/// string pairs), and the controller holds one per Service (the pool annotation).
type Pairs = Option<Box<[(Box<str>, Box<str>)]>>;

fn pairs(map: Option<std::collections::BTreeMap<String, String>>) -> Pairs {
    map.map(|m| m.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect())
}

fn map(pairs: &Pairs) -> Option<std::collections::BTreeMap<String, String>> {
    pairs.as_ref().map(|p| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn text(s: Option<String>) -> Option<Text> {
    s.map(Text::of)
}

fn texts(v: Option<Vec<String>>) -> Option<Box<[Text]>> {
    v.map(|v| v.into_iter().map(Text::of).collect())
}

/// What the controller's Service cache holds per Service: exactly what [`service`] keeps (but managed fields,
/// which the watch drops anyway), stored compactly
/// (a typed `Service` is about a kilobyte of mostly empty fields before any string). [`CompactService::service`]
/// gives the trimmed typed object back, identical to trimming the original (a test checks it), so the allocator,
/// replay, status writer and Events read what they read before (docs/design.md §4.6).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactService {
    name: Option<Box<str>>,
    namespace: Option<Box<str>>,
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    deletion_grace_period_seconds: Option<i64>,
    generation: Option<i64>,
    labels: Pairs,
    annotations: Pairs,
    spec: Option<Box<CompactSpec>>,
    /// `None`: no status; otherwise the ingress addresses (each `ip` of an entry).
    ingress: Option<Box<[Option<Box<str>>]>>,
}

/// A port as [`service`] keeps it: protocol and number.
type Port = (Option<Text>, i32);

/// The spec fields [`service`] keeps.
#[derive(Debug, Clone, PartialEq)]
struct CompactSpec {
    type_: Option<Text>,
    load_balancer_class: Option<Box<str>>,
    load_balancer_ip: Option<Box<str>>,
    ip_family_policy: Option<Text>,
    ip_families: Option<Box<[Text]>>,
    cluster_ips: Option<Box<[Box<str>]>>,
    cluster_ip: Option<Box<str>>,
    external_traffic_policy: Option<Text>,
    selector: Pairs,
    ports: Option<Box<[Port]>>,
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

fn unboxed(s: &Option<Box<str>>) -> Option<String> {
    s.as_deref().map(str::to_string)
}

impl CompactService {
    /// Trims `svc` ([`service`]) and keeps the rest compactly.
    pub fn of(svc: &Service) -> Self {
        let mut svc = svc.clone();
        service(&mut svc);
        let meta = svc.metadata;
        Self {
            name: boxed(meta.name),
            namespace: boxed(meta.namespace),
            uid: boxed(meta.uid),
            resource_version: boxed(meta.resource_version),
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
            generation: meta.generation,
            labels: pairs(meta.labels),
            annotations: pairs(meta.annotations),
            spec: svc.spec.map(|spec| {
                Box::new(CompactSpec {
                    type_: text(spec.type_),
                    load_balancer_class: boxed(spec.load_balancer_class),
                    load_balancer_ip: boxed(spec.load_balancer_ip),
                    ip_family_policy: text(spec.ip_family_policy),
                    ip_families: texts(spec.ip_families),
                    cluster_ips: spec.cluster_ips.map(|v| v.into_iter().map(String::into_boxed_str).collect()),
                    cluster_ip: boxed(spec.cluster_ip),
                    external_traffic_policy: text(spec.external_traffic_policy),
                    selector: pairs(spec.selector),
                    ports: spec.ports.map(|ports| ports.into_iter().map(|p| (text(p.protocol), p.port)).collect()),
                })
            }),
            ingress: svc.status.map(|status| {
                status
                    .load_balancer
                    .and_then(|lb| lb.ingress)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| boxed(i.ip))
                    .collect()
            }),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> ferrolb_crds::service::ServiceKey {
        ferrolb_crds::service::ServiceKey::new(
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default(),
        )
    }

    /// The trimmed typed Service, as [`service`] leaves it.
    pub fn service(&self) -> Service {
        Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: unboxed(&self.name),
                namespace: unboxed(&self.namespace),
                uid: unboxed(&self.uid),
                resource_version: unboxed(&self.resource_version),
                creation_timestamp: self.creation_timestamp.clone(),
                deletion_timestamp: self.deletion_timestamp.clone(),
                deletion_grace_period_seconds: self.deletion_grace_period_seconds,
                generation: self.generation,
                labels: map(&self.labels),
                annotations: map(&self.annotations),
                ..Default::default()
            },
            spec: self.spec.as_ref().map(|spec| ServiceSpec {
                type_: spec.type_.as_ref().map(Text::string),
                load_balancer_class: unboxed(&spec.load_balancer_class),
                load_balancer_ip: unboxed(&spec.load_balancer_ip),
                ip_family_policy: spec.ip_family_policy.as_ref().map(Text::string),
                ip_families: spec.ip_families.as_ref().map(|f| f.iter().map(Text::string).collect()),
                cluster_ips: spec.cluster_ips.as_ref().map(|ips| ips.iter().map(|ip| ip.to_string()).collect()),
                cluster_ip: unboxed(&spec.cluster_ip),
                external_traffic_policy: spec.external_traffic_policy.as_ref().map(Text::string),
                selector: map(&spec.selector),
                ports: spec.ports.as_ref().map(|ports| {
                    ports
                        .iter()
                        .map(|(protocol, port)| ServicePort {
                            protocol: protocol.as_ref().map(Text::string),
                            port: *port,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }),
            status: self.ingress.as_ref().map(|ingress| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ingress
                            .iter()
                            .map(|ip| LoadBalancerIngress { ip: unboxed(ip), ..Default::default() })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceIntent;
    use std::collections::BTreeMap;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("test Service parses")
    }

    const FULL: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
  uid: u-1
  resourceVersion: "42"
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels: {app: dns}
  annotations:
    metallb.io/allow-shared-ip: key
    metallb.universe.tf/address-pool: edge
    metallb.io/ip-allocated-from-pool: edge
    example.com/owner: team-a
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  sessionAffinity: None
  selector: {k8s-app: kube-dns}
  loadBalancerIP: 198.19.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53, nodePort: 30054}
status:
  loadBalancer:
    ingress: [{ip: 198.19.0.10, ipMode: VIP}]
"#;

    #[test]
    fn a_trimmed_service_asks_the_allocator_exactly_what_the_whole_one_did() {
        let whole = svc(FULL);
        let mut trimmed = whole.clone();
        service(&mut trimmed);
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        assert_eq!(ServiceIntent::from_service(&trimmed, &labels), ServiceIntent::from_service(&whole, &labels));
        assert_eq!(ferrolb_crds::service::current_ingress(&trimmed), ferrolb_crds::service::current_ingress(&whole));
        assert_eq!(ferrolb_crds::service::current_pool(&trimmed), Some("edge"));
        let kept = trimmed.metadata.annotations.clone().unwrap_or_default();
        assert!(!kept.contains_key("example.com/owner"), "another controller's annotation is not kept: {kept:?}");
        let spec = trimmed.spec.clone().unwrap_or_default();
        assert_eq!((spec.health_check_node_port, spec.cluster_ip, spec.session_affinity), (None, None, None));
        assert!(spec.ports.iter().flatten().all(|p| p.node_port.is_none() && p.name.is_none()));
        let cluster = svc(&FULL.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster"));
        let mut trimmed = cluster.clone();
        service(&mut trimmed);
        assert_eq!(trimmed.spec.as_ref().and_then(|s| s.selector.clone()), None, "Cluster: the selector is not read");
        assert_eq!(ServiceIntent::from_service(&trimmed, &labels), ServiceIntent::from_service(&cluster, &labels));
    }

    /// The cache keeps a compact form and gives the typed object back: it must be exactly the trimmed one, for
    /// every shape of Service the allocator reads (Local with a selector, Cluster, no status, unknown values).
    #[test]
    fn a_compact_service_gives_back_exactly_the_trimmed_one() {
        let shapes = [
            FULL.to_string(),
            FULL.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster"),
            FULL.replace("  ipFamilies: [IPv4]\n", "").replace("10.96.0.10", "fd00::10"),
            FULL.replace("protocol: UDP", "protocol: SCTP").replace("type: LoadBalancer", "type: Weird"),
            FULL.split("status:").next().unwrap_or_default().to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: bare, namespace: n, labels: {}}\n".to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n, deletionGracePeriodSeconds: 5, generation: 2}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\nstatus: {loadBalancer: {}}\n".to_string(),
        ];
        for yaml in shapes {
            let whole = svc(&yaml);
            let mut trimmed = whole.clone();
            service(&mut trimmed);
            let compact = CompactService::of(&whole);
            assert_eq!(compact.service(), trimmed, "{yaml}");
            assert_eq!(compact.key(), ferrolb_crds::service::ServiceKey::of(&whole));
        }
    }

    #[test]
    fn families_come_from_the_cluster_ips_when_the_api_gives_no_ip_families() {
        let old_style = FULL
            .replace("  ipFamilies: [IPv4]\n", "")
            .replace("  loadBalancerIP: 198.19.0.10\n", "")
            .replace("10.96.0.10", "fd00::10");
        let whole = svc(&old_style);
        let mut trimmed = whole.clone();
        service(&mut trimmed);
        let labels = BTreeMap::new();
        let intent = ServiceIntent::from_service(&trimmed, &labels).expect("valid");
        assert_eq!(intent.families, vec![crate::pool::Family::V6]);
        assert_eq!(Some(intent), ServiceIntent::from_service(&whole, &labels).ok());
    }
}
