//! The controller's Prometheus metrics (served by `ferrolb_runtime::http`).

use crate::allocator::PoolUsage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Labels of the per-pool gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `assigned` or `available`.
    pub state: String,
}

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `assigned`, `refused`, `released` or `error`.
    pub result: String,
}

/// Labels of the pending-Services gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A `Refusal::reason` label.
    pub reason: String,
}

/// Everything the controller reports.
pub struct Metrics {
    registry: Registry,
    /// Addresses per pool, family and state.
    pub pool_addresses: Family<PoolLabels, Gauge<i64, AtomicI64Shim>>,
    /// Service reconciles by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Time per Service reconcile, including API writes.
    pub reconcile_seconds: Histogram,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
    /// Services of our class without an address, by refusal reason (the leader's count; 0 on a standby).
    pub pending_services: Family<ReasonLabels, Gauge>,
    /// MetalLB's allocator gauges, per pool.
    metallb_pool: MetallbPoolGauges,
    /// Set after the first full sync; `/readyz` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
}

/// Gauge storage; prometheus-client's `Gauge<i64>` uses `AtomicI64`.
pub type AtomicI64Shim = std::sync::atomic::AtomicI64;

impl Metrics {
    /// A registry with every metric.
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        let metallb_pool = MetallbPoolGauges::default();
        metallb_pool.register(&mut root);
        let registry = root.sub_registry_with_prefix("ferrolb");
        let pool_addresses = Family::<PoolLabels, Gauge<i64, AtomicI64Shim>>::default();
        registry.register("pool_addresses", "Addresses per pool, family and state", pool_addresses.clone());
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("service_reconciles", "Service reconciles by result", reconciles.clone());
        let reconcile_seconds = Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register("service_reconcile_seconds", "Time per Service reconcile", reconcile_seconds.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the leader", leader.clone());
        let pending_services = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "pending_services",
            "LoadBalancer Services of this class refused an address, by reason (0 on a standby)",
            pending_services.clone(),
        );
        let metrics = Arc::new(Self {
            registry: root,
            pool_addresses,
            metallb_pool,
            reconciles,
            reconcile_seconds,
            leader,
            pending_services,
            ready: Arc::new(AtomicBool::new(false)),
        });
        // Every reason at 0 from the start, so an alert on the series sees it before the first refusal.
        metrics.set_pending(&crate::refusal::pending_by_reason([]));
        metrics
    }

    /// Publishes the pending Services per reason (from `refusal::pending_by_reason`).
    pub fn set_pending(&self, counts: &std::collections::BTreeMap<&str, i64>) {
        for (reason, n) in counts {
            self.pending_services.get_or_create(&ReasonLabels { reason: reason.to_string() }).set(*n);
        }
    }

    /// Publishes one pool's usage, as ours (`ferrolb_pool_addresses`) and under MetalLB's names.
    pub fn set_pool_usage(&self, pool: &str, usage: &PoolUsage) {
        let count = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        for (family, state, n) in [
            ("ipv4", "assigned", usage.assigned_v4),
            ("ipv4", "available", usage.available_v4),
            ("ipv6", "assigned", usage.assigned_v6),
            ("ipv6", "available", usage.available_v6),
        ] {
            let labels = PoolLabels { pool: pool.to_string(), family: family.into(), state: state.into() };
            self.pool_addresses.get_or_create(&labels).set(count(n));
        }
        self.metallb_pool.set(pool, usage);
    }

    /// Counts one reconcile.
    pub fn count(&self, result: &str) {
        self.reconciles.get_or_create(&ResultLabels { result: result.to_string() }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Label set of MetalLB's allocator gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetallbPoolLabels {
    pool: String,
}

/// A gauge family holding address counts (floats: an IPv6 pool can hold more than `i64::MAX`, and MetalLB's
/// gauges are floats too).
type CountFamily = Family<MetallbPoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// MetalLB's allocator gauges (`metallb_allocator_*`, label `pool`), so dashboards and alerts written for MetalLB keep
/// working (docs/design.md §9).
#[derive(Default)]
struct MetallbPoolGauges {
    total: CountFamily,
    total_v4: CountFamily,
    total_v6: CountFamily,
    in_use: CountFamily,
    in_use_v4: CountFamily,
    in_use_v6: CountFamily,
}

impl MetallbPoolGauges {
    fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            ("metallb_allocator_addresses_total", "Number of usable IP addresses, per pool", &self.total),
            ("metallb_allocator_ipv4_addresses_total", "Number of usable IPv4 addresses, per pool", &self.total_v4),
            ("metallb_allocator_ipv6_addresses_total", "Number of usable IPv6 addresses, per pool", &self.total_v6),
            ("metallb_allocator_addresses_in_use_total", "Number of IP addresses in use, per pool", &self.in_use),
            (
                "metallb_allocator_ipv4_addresses_in_use_total",
                "Number of IPv4 addresses in use, per pool",
                &self.in_use_v4,
            ),
            (
                "metallb_allocator_ipv6_addresses_in_use_total",
                "Number of IPv6 addresses in use, per pool",
                &self.in_use_v6,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
    }

    fn set(&self, pool: &str, u: &PoolUsage) {
        let labels = MetallbPoolLabels { pool: pool.to_string() };
        let (total_v4, total_v6) = (u.assigned_v4 + u.available_v4, u.assigned_v6 + u.available_v6);
        for (family, n) in [
            (&self.total, total_v4 + total_v6),
            (&self.total_v4, total_v4),
            (&self.total_v6, total_v6),
            (&self.in_use, u.assigned_v4 + u.assigned_v6),
            (&self.in_use_v4, u.assigned_v4),
            (&self.in_use_v6, u.assigned_v6),
        ] {
            family.get_or_create(&labels).set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn pool_usage_is_published_as_ours_and_under_metallb_names() {
        let metrics = Metrics::new();
        let usage = PoolUsage { assigned_v4: 3, available_v4: 250, assigned_v6: 1, available_v6: 1u128 << 64 };
        metrics.set_pool_usage("lab", &usage);
        let text = metrics.render();
        assert_eq!(
            sample(&text, "ferrolb_pool_addresses{pool=\"lab\",family=\"ipv4\",state=\"assigned\"}"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(sample(&text, "metallb_allocator_addresses_in_use_total{pool=\"lab\"}"), Some(4.0), "{text}");
        assert_eq!(sample(&text, "metallb_allocator_ipv4_addresses_in_use_total{pool=\"lab\"}"), Some(3.0));
        assert_eq!(sample(&text, "metallb_allocator_ipv4_addresses_total{pool=\"lab\"}"), Some(253.0));
        assert_eq!(sample(&text, "metallb_allocator_ipv6_addresses_total{pool=\"lab\"}"), Some(18446744073709551617.0));
        assert!(!text.contains("ferrolb_metallb"), "MetalLB names carry no ferrolb prefix");
    }

    #[test]
    fn pending_services_show_every_reason_from_the_start_and_follow_the_counts() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert_eq!(sample(&text, "ferrolb_pending_services{reason=\"pool_exhausted\"}"), Some(0.0), "{text}");
        metrics.set_pending(&crate::refusal::pending_by_reason(["pool_exhausted", "pool_exhausted", "port_in_use"]));
        let text = metrics.render();
        assert_eq!(sample(&text, "ferrolb_pending_services{reason=\"pool_exhausted\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "ferrolb_pending_services{reason=\"port_in_use\"}"), Some(1.0));
        metrics.set_pending(&crate::refusal::pending_by_reason([]));
        let text = metrics.render();
        assert_eq!(sample(&text, "ferrolb_pending_services{reason=\"pool_exhausted\"}"), Some(0.0), "cleared");
    }
}
