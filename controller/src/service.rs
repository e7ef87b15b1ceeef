//! What a Service asks of the allocator, read purely from the Service object and its Namespace's labels.

use crate::keys::Family;
pub use crate::keys::{PortKey, ServiceKey};
use crate::refusal::Refusal;
use ferrolb_crds::annotations;
use k8s_openapi::api::core::v1::Service;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything the allocator needs to know about one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIntent {
    /// Which Service.
    pub key: ServiceKey,
    /// The Service's labels (for `serviceSelectors`).
    pub labels: BTreeMap<String, String>,
    /// Its Namespace's labels (for `namespaceSelectors`).
    pub namespace_labels: BTreeMap<String, String>,
    /// Addresses asked for, at most one per family.
    pub requested: Vec<IpAddr>,
    /// Pool named by the `address-pool` annotation.
    pub pool: Option<String>,
    /// `allow-shared-ip` key, if any.
    pub sharing_key: Option<String>,
    /// Services may share only with equal backend keys: the selector for `externalTrafficPolicy: Local`
    /// (traffic must reach the same pods on whichever node answers), empty for `Cluster`.
    pub backend_key: String,
    /// The ports it exposes.
    pub ports: BTreeSet<PortKey>,
    /// Families wanted, primary first.
    pub families: Vec<Family>,
    /// `RequireDualStack`: every family or nothing.
    pub require_all_families: bool,
}

impl ServiceIntent {
    /// A single-stack IPv4 `Cluster` Service with the given TCP ports; the base of many tests.
    pub fn simple(namespace: &str, name: &str, tcp_ports: &[i32]) -> Self {
        Self {
            key: ServiceKey::new(namespace, name),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            requested: Vec::new(),
            pool: None,
            sharing_key: None,
            backend_key: String::new(),
            ports: tcp_ports.iter().map(|&port| PortKey { protocol: "TCP".into(), port }).collect(),
            families: vec![Family::V4],
            require_all_families: false,
        }
    }

    /// Reads a Service. Fails with the reason a user would need when the Service asks for something impossible.
    pub fn from_service(svc: &Service, namespace_labels: &BTreeMap<String, String>) -> Result<Self, Refusal> {
        let meta = &svc.metadata;
        let key = ServiceKey::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""));
        let empty = BTreeMap::new();
        let ann = meta.annotations.as_ref().unwrap_or(&empty);
        let spec = svc.spec.clone().unwrap_or_default();

        let from_annotation = annotations::LOAD_BALANCER_IPS.get(ann).filter(|v| !v.trim().is_empty());
        let from_spec = spec.load_balancer_ip.as_deref().filter(|v| !v.trim().is_empty());
        let raw: Vec<&str> = match (from_annotation, from_spec) {
            (Some(_), Some(_)) => return Err(Refusal::BothRequestStyles),
            (Some(list), None) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
            (None, Some(one)) => vec![one.trim()],
            (None, None) => Vec::new(),
        };
        let requested = raw
            .iter()
            .map(|s| s.parse::<IpAddr>().map_err(|_| Refusal::BadRequestedIp { value: (*s).to_string() }))
            .collect::<Result<Vec<_>, _>>()?;
        if requested.len() > 2 || (requested.len() == 2 && Family::of(requested[0]) == Family::of(requested[1])) {
            return Err(Refusal::TooManyRequested { requested });
        }

        let families = service_families(&spec);
        let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
        let require_all_families = policy == "RequireDualStack";
        let families = match policy {
            "SingleStack" => families.into_iter().take(1).collect(),
            _ => families,
        };
        if require_all_families && families.len() < 2 {
            return Err(Refusal::NotEnoughFamilies);
        }
        for ip in &requested {
            if !families.contains(&Family::of(*ip)) {
                return Err(Refusal::RequestedFamilyMismatch { ip: *ip, families: families.clone() });
            }
        }
        if require_all_families && !requested.is_empty() && requested.len() < 2 {
            return Err(Refusal::RequireDualStackNeedsTwo);
        }

        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let backend_key = if local {
            let selector = spec.selector.clone().unwrap_or_default();
            selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        } else {
            String::new()
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| PortKey { protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()), port: p.port })
            .collect();
        Ok(Self {
            key,
            labels: meta.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            requested,
            pool: annotations::ADDRESS_POOL.get(ann).map(str::trim).filter(|s| !s.is_empty()).map(String::from),
            sharing_key: annotations::ALLOW_SHARED_IP.get(ann).filter(|s| !s.is_empty()).map(String::from),
            backend_key,
            ports,
            families,
            require_all_families,
        })
    }
}

/// The Service's families, primary first: `spec.ipFamilies`, else from its cluster IPs, else IPv4.
fn service_families(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<Family> {
    let mut families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if families.is_empty() {
        let ips = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
        families = ips.filter_map(|ip| ip.parse::<IpAddr>().ok()).map(Family::of).collect();
    }
    families.dedup();
    if families.is_empty() {
        families.push(Family::V4);
    }
    families
}

pub use ferrolb_crds::service::is_managed;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("test Service parses")
    }

    fn seed(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn seed_dns_service_has_tcp_and_udp_53() {
        let intent = ServiceIntent::from_service(&svc(&seed("dns-svc-lb.yaml")), &BTreeMap::new()).expect("valid");
        assert_eq!(intent.key.to_string(), "kube-system/dns-svc-lb");
        let ports: Vec<_> = intent.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["TCP/53", "UDP/53"]);
        assert_eq!(intent.families, [Family::V4]);
        assert!(intent.requested.is_empty() && intent.sharing_key.is_none());
    }

    #[test]
    fn seed_shared_ip_services_read_the_legacy_annotation_and_spec_ip() {
        for doc in seed("shared-ip.yaml").split("\n---\n") {
            let intent = ServiceIntent::from_service(&svc(doc), &BTreeMap::new()).expect("valid");
            assert_eq!(intent.sharing_key.as_deref(), Some("true"));
            assert_eq!(intent.requested, ["172.17.255.10".parse::<IpAddr>().expect("ip")]);
        }
    }

    #[test]
    fn requests_that_cannot_be_met_are_refused_with_reasons() {
        let base = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: n\n";
        let both = format!(
            "{base}  annotations: {{metallb.io/loadBalancerIPs: 10.0.0.1}}\nspec: {{type: LoadBalancer, loadBalancerIP: 10.0.0.2}}\n"
        );
        assert_eq!(ServiceIntent::from_service(&svc(&both), &BTreeMap::new()), Err(Refusal::BothRequestStyles));
        let bad =
            format!("{base}  annotations: {{metallb.io/loadBalancerIPs: 'ten.0.0.1'}}\nspec: {{type: LoadBalancer}}\n");
        let err = ServiceIntent::from_service(&svc(&bad), &BTreeMap::new()).expect_err("bad ip");
        assert!(err.to_string().contains("\"ten.0.0.1\" is not an IP address"), "{err}");
        let two_v4 = format!(
            "{base}  annotations: {{metallb.io/loadBalancerIPs: '10.0.0.1, 10.0.0.2'}}\nspec: {{type: LoadBalancer}}\n"
        );
        assert!(matches!(
            ServiceIntent::from_service(&svc(&two_v4), &BTreeMap::new()),
            Err(Refusal::TooManyRequested { .. })
        ));
        let v6_for_v4 = format!(
            "{base}  annotations: {{metallb.io/loadBalancerIPs: 'fc00::1'}}\nspec: {{type: LoadBalancer, ipFamilies: [IPv4]}}\n"
        );
        assert!(matches!(
            ServiceIntent::from_service(&svc(&v6_for_v4), &BTreeMap::new()),
            Err(Refusal::RequestedFamilyMismatch { .. })
        ));
        let require =
            format!("{base}spec: {{type: LoadBalancer, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4]}}\n");
        assert_eq!(ServiceIntent::from_service(&svc(&require), &BTreeMap::new()), Err(Refusal::NotEnoughFamilies));
    }

    #[test]
    fn local_policy_makes_the_selector_the_backend_key() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {b: '2', a: '1'}\n";
        let intent = ServiceIntent::from_service(&svc(yaml), &BTreeMap::new()).expect("valid");
        assert_eq!(intent.backend_key, "a=1,b=2");
        let cluster = yaml.replace("Local", "Cluster");
        assert_eq!(ServiceIntent::from_service(&svc(&cluster), &BTreeMap::new()).expect("valid").backend_key, "");
    }

    #[test]
    fn dual_stack_policies_pick_families_in_order() {
        let yaml = |policy: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{type: LoadBalancer, ipFamilyPolicy: {policy}, ipFamilies: [IPv6, IPv4]}}\n"
            )
        };
        let single = ServiceIntent::from_service(&svc(&yaml("SingleStack")), &BTreeMap::new()).expect("valid");
        assert_eq!((single.families.as_slice(), single.require_all_families), (&[Family::V6][..], false));
        let prefer = ServiceIntent::from_service(&svc(&yaml("PreferDualStack")), &BTreeMap::new()).expect("valid");
        assert_eq!((prefer.families.as_slice(), prefer.require_all_families), (&[Family::V6, Family::V4][..], false));
        let require = ServiceIntent::from_service(&svc(&yaml("RequireDualStack")), &BTreeMap::new()).expect("valid");
        assert!(require.require_all_families);
    }

    #[test]
    fn only_load_balancers_of_our_class_are_managed() {
        let lb = svc("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: LoadBalancer}\n");
        let other = svc(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: LoadBalancer, loadBalancerClass: x/y}\n",
        );
        let cluster_ip = svc("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: ClusterIP}\n");
        assert!(is_managed(&lb, None) && !is_managed(&lb, Some("x/y")));
        assert!(!is_managed(&other, None) && is_managed(&other, Some("x/y")));
        assert!(!is_managed(&cluster_ip, None));
    }
}
