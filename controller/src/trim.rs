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
