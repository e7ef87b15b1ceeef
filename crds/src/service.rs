//! What a Service says to a load balancer, read the same way by the controller and the speaker: whether it
//! is ours, which addresses it carries, and which pool they came from.

use crate::annotations::IP_ALLOCATED_FROM_POOL;
use k8s_openapi::api::core::v1::Service;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Whether ferrolb handles the Service: `type: LoadBalancer` and the configured class (none by default).
pub fn is_managed(svc: &Service, load_balancer_class: Option<&str>) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref() == load_balancer_class
}

/// The ingress addresses a Service carries now.
pub fn current_ingress(svc: &Service) -> Vec<IpAddr> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

/// The pool its addresses came from, as the controller recorded it (`metallb.io/ip-allocated-from-pool`).
pub fn current_pool(svc: &Service) -> Option<&str> {
    svc.metadata.annotations.as_ref()?.get(IP_ALLOCATED_FROM_POOL.key).map(String::as_str)
}

/// `namespace/name` of a Service: the key the controller allocates by and the speaker announces by.
///
/// The parts are shared strings: with thousands of Services one key is held by the watch cache, the plan, what
/// was said and the status writer, and a clone costs a reference count, not two allocations (docs/design.md §4.6).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ServiceKey {
    /// A key from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: Arc::from(namespace), name: Arc::from(name) }
    }

    /// The key of a Service object (empty parts where its metadata lacks them).
    pub fn of(svc: &Service) -> Self {
        Self::new(
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
