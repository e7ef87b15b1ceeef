//! The controller's Prometheus metrics (served by `ferrolb_runtime::http`).

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
    /// Set after the first full sync; `/readyz` answers 200 from then on.
    pub ready: Arc<AtomicBool>,
}

/// Gauge storage; prometheus-client's `Gauge<i64>` uses `AtomicI64`.
pub type AtomicI64Shim = std::sync::atomic::AtomicI64;

impl Metrics {
    /// A registry with every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("ferrolb");
        let pool_addresses = Family::<PoolLabels, Gauge<i64, AtomicI64Shim>>::default();
        registry.register("pool_addresses", "Addresses per pool, family and state", pool_addresses.clone());
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("service_reconciles", "Service reconciles by result", reconciles.clone());
        let reconcile_seconds = Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register("service_reconcile_seconds", "Time per Service reconcile", reconcile_seconds.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the leader", leader.clone());
        Arc::new(Self {
            registry,
            pool_addresses,
            reconciles,
            reconcile_seconds,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
        })
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
