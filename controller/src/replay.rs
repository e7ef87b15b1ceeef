//! From the pool objects and the addresses Services already show to an allocator in the state the leader's is
//! in (docs/design.md §3.9, §3.10). Pure: the controller runs it when it becomes leader and on pool changes, and
//! `kubectl-ferrolb why` runs the same functions, so its answer is the allocator's own refusal.

use crate::allocator::{Allocator, Assignment, Refusal};
use crate::pool::{PoolConfig, PoolProblem, resolve_pools};
use crate::service::{ServiceIntent, ServiceKey, is_managed};
use crate::status::current_ingress;
use ferrolb_crds::IPAddressPool;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// What the pool objects give the allocator: the usable pools and the problems of the others.
#[derive(Debug, Clone, Default)]
pub struct PoolSet {
    /// Pools the allocator may use, oldest first.
    pub valid: Vec<PoolConfig>,
    /// Pools set aside, with their problems.
    pub problems: BTreeMap<String, Vec<PoolProblem>>,
}

impl PoolSet {
    /// The problems as one line per pool, as the allocator quotes them to a Service that names such a pool.
    pub fn unusable(&self) -> BTreeMap<String, String> {
        self.problems
            .iter()
            .map(|(name, ps)| (name.clone(), ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
            .collect()
    }
}

/// Parses and resolves pool objects oldest first (by `creationTimestamp`, then name), so a new pool that overlaps
/// an old one is the one set aside.
pub fn read_pools<'a>(pools: impl IntoIterator<Item = &'a IPAddressPool>) -> PoolSet {
    let mut pools: Vec<&IPAddressPool> = pools.into_iter().collect();
    pools.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    let parsed = pools.iter().map(|p| {
        let config = PoolConfig::from_spec(&p.name_any(), &p.spec)
            .map(|config| PoolConfig { deleting: p.metadata.deletion_timestamp.is_some(), ..config });
        (p.name_any(), config)
    });
    let (valid, problems) = resolve_pools(parsed);
    PoolSet { valid, problems }
}

/// Re-registers every managed Service's current ingress, Services with more addresses first (dual-stack), then by
/// key: MetalLB's order, made stable. Returns the Services whose address cannot be kept, with why.
pub fn restore<'a>(
    allocator: &mut Allocator,
    services: impl IntoIterator<Item = &'a Service>,
    namespace_labels: impl Fn(&str) -> BTreeMap<String, String>,
    load_balancer_class: Option<&str>,
) -> (usize, Vec<(ServiceKey, Refusal)>) {
    let mut services: Vec<&Service> =
        services.into_iter().filter(|s| is_managed(s, load_balancer_class) && !current_ingress(s).is_empty()).collect();
    services.sort_by_key(|s| (std::cmp::Reverse(current_ingress(s).len()), ServiceKey::of(s)));
    let (mut restored, mut refused) = (0, Vec::new());
    for svc in services {
        let key = ServiceKey::of(svc);
        let labels = namespace_labels(&key.namespace);
        match ServiceIntent::from_service(svc, &labels).and_then(|i| allocator.restore(&i, &current_ingress(svc))) {
            Ok(_) => restored += 1,
            Err(refusal) => refused.push((key, refusal)),
        }
    }
    (restored, refused)
}

/// An allocator in the state a freshly elected leader reaches before it reconciles anything: every pool read,
/// every address Services show re-registered.
pub fn rebuild<'a>(
    pools: &PoolSet,
    services: impl IntoIterator<Item = &'a Service>,
    namespace_labels: impl Fn(&str) -> BTreeMap<String, String>,
    load_balancer_class: Option<&str>,
) -> Allocator {
    let mut allocator = Allocator::new();
    allocator.set_pools(pools.valid.clone(), pools.unusable());
    restore(&mut allocator, services, namespace_labels, load_balancer_class);
    allocator
}

/// What the allocator would do for one Service now: the address it keeps or would get, or its refusal, whose text
/// is the `AllocationFailed` Event's.
pub fn decide(
    allocator: &mut Allocator,
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Assignment, Refusal> {
    let intent = ServiceIntent::from_service(svc, namespace_labels)?;
    allocator.allocate(&intent).map(|o| o.assignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(name: &str, cidr: &str, created: &str) -> IPAddressPool {
        serde_json::from_value(json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system", "creationTimestamp": created},
            "spec": {"addresses": [cidr]}}))
        .expect("pool")
    }

    fn service(name: &str, ingress: Option<&str>, request: Option<&str>) -> Service {
        let status = ingress.map_or(json!({}), |ip| json!({"loadBalancer": {"ingress": [{"ip": ip}]}}));
        let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        if let Some(ip) = request {
            spec["loadBalancerIP"] = json!(ip);
        }
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec,
            "status": status}))
        .expect("service")
    }

    #[test]
    fn the_newer_of_two_overlapping_pools_is_set_aside() {
        let old = pool("old", "198.19.0.0/30", "2026-01-01T00:00:00Z");
        let new = pool("a-new", "198.19.0.2/31", "2026-02-01T00:00:00Z");
        let set = read_pools([&new, &old]);
        assert_eq!(set.valid.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["old"]);
        assert!(set.unusable()["a-new"].contains("old"), "{:?}", set.unusable());
    }

    #[test]
    fn a_rebuilt_allocator_keeps_what_services_show_and_refuses_like_the_leader() {
        let pools = read_pools([&pool("lab", "198.19.0.0/30", "2026-01-01T00:00:00Z")]);
        let holder = service("holder", Some("198.19.0.1"), None);
        let mut allocator = rebuild(&pools, [&holder], |_| BTreeMap::new(), None);
        let key = ServiceKey::new("default", "holder");
        assert_eq!(allocator.assignment(&key).map(|a| a.ips.clone()), Some(vec!["198.19.0.1".parse().expect("ip")]));
        let outside = service("outside", None, Some("10.99.0.1"));
        let refusal = decide(&mut allocator, &outside, &BTreeMap::new()).expect_err("refused");
        assert_eq!(refusal.to_string(), "requested address 10.99.0.1 is not in any usable IPAddressPool");
        let taken = service("taken", None, Some("198.19.0.1"));
        let refusal = decide(&mut allocator, &taken, &BTreeMap::new()).expect_err("refused");
        assert!(refusal.to_string().starts_with("198.19.0.1 is already used by default/holder"), "{refusal}");
        let fresh = service("fresh", None, None);
        assert_eq!(decide(&mut allocator, &fresh, &BTreeMap::new()).map(|a| a.pool), Ok("lab".to_string()));
    }
}
