//! The speaker's Prometheus metrics: prometheus-client collectors that read [`Stats`] at scrape time, for our
//! series and for MetalLB's.
//!
//! The hot paths (the ARP responder, the liveness receiver) only bump atomics in [`Stats`]; the names, types,
//! help texts and label escaping live here, encoded by prometheus-client like the controller's metrics.

use crate::telemetry::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a stranger's claim stays visible in `address_claimed_by_stranger`.
const STRANGER_MEMORY: Duration = Duration::from_secs(600);

/// Label set of the per-reason families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Label set of `address_claimed_by_stranger`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    ip: String,
    mac: String,
}

/// Reads a speaker's [`Stats`] on every scrape.
struct StatsCollector(Arc<Stats>);

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

fn load(value: &AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A family with one `reason` label, as counters or gauges.
fn by_reason(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &Mutex<BTreeMap<&'static str, u64>>,
) -> Result<(), std::fmt::Error> {
    let values: Vec<(&'static str, u64)> =
        values.lock().map(|v| v.iter().map(|(k, n)| (*k, *n)).collect()).unwrap_or_default();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (reason, n) in values {
        let labels = ReasonLabels { reason: reason.to_string() };
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(metric)?,
            _ => ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(metric)?,
        }
    }
    Ok(())
}

/// A duration summed in microseconds over `count` observations, as a histogram with only the `+Inf` bucket.
fn seconds(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    micros: u64,
    count: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(micros as f64 / 1e6, count, &[(f64::INFINITY, count)], None)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let e = &mut encoder;
        counter(e, "arp_requests", "ARP requests seen", load(&s.requests))?;
        counter(e, "arp_replies", "ARP requests answered", load(&s.replies))?;
        counter(e, "ndp_solicitations", "Neighbour solicitations seen", load(&s.solicitations))?;
        counter(e, "ndp_advertisements", "Neighbour solicitations answered", load(&s.advertisements))?;
        counter(
            e,
            "unsolicited_advertisements",
            "Unsolicited neighbour advertisements sent (IPv6 takeover)",
            load(&s.unsolicited_advertisements),
        )?;
        counter(
            e,
            "ndp_group_join_failures",
            "Solicited-node multicast groups that could not be joined",
            load(&s.group_join_failures),
        )?;
        counter(e, "frames", "Frames seen on the raw sockets", load(&s.frames))?;
        counter(e, "gratuitous_arp", "Gratuitous ARP frames sent", load(&s.gratuitous))?;
        counter(e, "takeovers", "Addresses this node took over", load(&s.takeovers))?;
        counter(e, "releases", "Addresses this node gave up", load(&s.releases))?;
        counter(e, "arp_probes", "Probes (ARP, and IPv6 duplicate-address) sent before answering", load(&s.probes))?;
        counter(
            e,
            "node_conflicts",
            "Times another node claimed an address this node answered for",
            load(&s.conflicts_node),
        )?;
        counter(
            e,
            "stranger_conflicts",
            "Times a MAC that is no node's claimed, or already answered, an address this node answers for or wants",
            load(&s.conflicts_stranger),
        )?;
        seconds(
            e,
            "failure_detection_seconds",
            "Silence of a peer when declared dead",
            load(&s.detection_micros),
            load(&s.detections),
        )?;
        seconds(
            e,
            "plan_seconds",
            "Time to plan what this node announces, per wake",
            load(&s.plan_micros),
            load(&s.plans),
        )?;
        gauge(
            e,
            "strict_arp_missing",
            "1 while kube-proxy IPVS runs without strictARP here",
            u64::from(s.strict_arp_missing.load(Ordering::Relaxed)),
        )?;
        by_reason(
            e,
            "interface_rescans",
            "Times the interfaces were read again, by reason: netlink (the kernel said they changed) or timer",
            MetricType::Counter,
            &s.interface_rescans,
        )?;
        by_reason(e, "arp_drops", "ARP frames not answered, by reason", MetricType::Counter, &s.drops)?;
        by_reason(e, "ndp_drops", "NDP frames not answered, by reason", MetricType::Counter, &s.ndp_drops)?;
        by_reason(
            e,
            "unannounced_addresses",
            "Service addresses nobody may announce, by reason (exported by one speaker, the reporting one)",
            MetricType::Gauge,
            &s.unannounced,
        )?;
        by_reason(
            e,
            "announce_failed_addresses",
            "Service addresses this node won but cannot answer for (no usable interface), by reason",
            MetricType::Gauge,
            &s.announce_failed,
        )?;
        gauge(
            e,
            "held_back_addresses",
            "Addresses the election gives this node that another node answers for",
            load(&s.held_back),
        )?;
        gauge(
            e,
            "unheard_live_peers",
            "Peers unheard over the liveness port although their node is alive",
            load(&s.unheard_live_peers),
        )?;
        let claims: Vec<ClaimLabels> = s
            .strangers
            .lock()
            .map(|mut strangers| {
                strangers.retain(|_, at| at.elapsed() < STRANGER_MEMORY);
                strangers.keys().map(|(ip, mac)| ClaimLabels { ip: ip.to_string(), mac: mac.to_string() }).collect()
            })
            .unwrap_or_default();
        let mut family = e.encode_descriptor(
            "address_claimed_by_stranger",
            "1 while a MAC that is no node's claims an address this node answers for (seen in the last 10 minutes)",
            None,
            MetricType::Gauge,
        )?;
        for labels in &claims {
            ConstGauge::new(1).encode(family.encode_family(labels)?)?;
        }
        by_reason(e, "gossip_rejects", "Liveness datagrams rejected, by reason", MetricType::Counter, &s.gossip_rejects)
    }
}

/// Label set of `metallb_speaker_announced`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnnouncedLabels {
    ip: String,
    node: String,
    protocol: String,
    service: String,
}

/// Label set of MetalLB's per-address ARP counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpLabels {
    ip: String,
}

/// MetalLB's speaker series, under MetalLB's names and labels, so dashboards and alerts written for MetalLB
/// keep working after the switch (docs/design.md §9).
struct MetallbCollector {
    stats: Arc<Stats>,
    node: String,
}

impl std::fmt::Debug for MetallbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetallbCollector")
    }
}

impl Collector for MetallbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let announced: Vec<AnnouncedLabels> = self
            .stats
            .announced
            .lock()
            .map(|a| {
                a.iter()
                    .flat_map(|(ip, services)| {
                        services.iter().map(move |service| AnnouncedLabels {
                            ip: ip.to_string(),
                            node: self.node.clone(),
                            protocol: "layer2".into(),
                            service: service.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "metallb_speaker_announced",
            "The Services this node announces, per address (1)",
            None,
            MetricType::Gauge,
        )?;
        for labels in &announced {
            ConstGauge::new(1).encode(family.encode_family(labels)?)?;
        }
        let per_address: Vec<(String, crate::telemetry::stats::AddressCounters)> = self
            .stats
            .per_address
            .lock()
            .map(|m| m.iter().map(|(ip, c)| (ip.to_string(), *c)).collect())
            .unwrap_or_default();
        // MetalLB's Go client exposes these counters without a `_total` suffix; OpenMetrics would add one to a
        // counter, so they are written untyped to keep the names dashboards query.
        type Pick = fn(&crate::telemetry::stats::AddressCounters) -> u64;
        let series: [(&str, &str, Pick); 3] = [
            ("metallb_layer2_requests_received", "ARP requests received for owned addresses", |c| c.requests),
            ("metallb_layer2_responses_sent", "ARP responses sent for owned addresses", |c| c.responses),
            ("metallb_layer2_gratuitous_sent", "Gratuitous ARP frames sent", |c| c.gratuitous),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Unknown)?;
            for (ip, counters) in &per_address {
                family.encode_family(&IpLabels { ip: ip.clone() })?.encode_gauge(&pick(counters))?;
            }
        }
        Ok(())
    }
}

/// The speaker's registry: its own metrics under `ferrolb_speaker_`, and MetalLB's speaker series.
pub fn registry(stats: Arc<Stats>, node: &str) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MetallbCollector { stats: stats.clone(), node: node.to_string() }));
    registry.sub_registry_with_prefix("ferrolb_speaker").register_collector(Box::new(StatsCollector(stats)));
    registry
}

/// The text exposition of `registry` (OpenMetrics text, which Prometheus reads).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        tracing::warn!("cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Mac;
    use std::net::{IpAddr, Ipv4Addr};

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_gauges_and_labelled_families_are_rendered_from_the_stats() {
        let stats = Arc::new(Stats::default());
        stats.replies.store(7, Ordering::Relaxed);
        stats.held_back.store(2, Ordering::Relaxed);
        stats.plan_micros.store(1_500_000, Ordering::Relaxed);
        stats.plans.store(3, Ordering::Relaxed);
        stats.drops.lock().map(|mut d| d.insert("not_owned", 4)).ok();
        let mac = Mac([2, 0, 0, 0, 0, 9]);
        stats
            .strangers
            .lock()
            .map(|mut m| m.insert((IpAddr::from([198, 19, 0, 1]), mac), std::time::Instant::now()))
            .ok();
        let registry = registry(stats.clone(), "node-1");
        let text = render(&registry);
        assert_eq!(sample(&text, "ferrolb_speaker_arp_replies_total"), Some(7.0), "{text}");
        assert_eq!(sample(&text, "ferrolb_speaker_held_back_addresses"), Some(2.0));
        assert_eq!(sample(&text, "ferrolb_speaker_plan_seconds_sum"), Some(1.5));
        assert_eq!(sample(&text, "ferrolb_speaker_plan_seconds_count"), Some(3.0));
        assert_eq!(sample(&text, "ferrolb_speaker_arp_drops_total{reason=\"not_owned\"}"), Some(4.0));
        let claimed = format!("ferrolb_speaker_address_claimed_by_stranger{{ip=\"198.19.0.1\",mac=\"{mac}\"}}");
        assert_eq!(sample(&text, &claimed), Some(1.0), "{text}");
        assert!(text.contains("# TYPE ferrolb_speaker_arp_replies counter"));
        // Read at scrape time: a later change shows in the next scrape.
        stats.replies.store(8, Ordering::Relaxed);
        assert_eq!(sample(&render(&registry), "ferrolb_speaker_arp_replies_total"), Some(8.0));
    }

    #[test]
    fn metallb_series_keep_metallb_names_and_labels() {
        let stats = Arc::new(Stats::default());
        let ip = IpAddr::from(Ipv4Addr::new(198, 19, 0, 1));
        stats.count_for(ip, |c| {
            c.requests += 3;
            c.responses += 2;
            c.gratuitous += 4;
        });
        stats.announced.lock().map(|mut a| a.insert(ip, ["kube-system/dns".to_string()].into())).ok();
        let text = render(&registry(stats, "node-1"));
        assert_eq!(
            sample(
                &text,
                "metallb_speaker_announced{ip=\"198.19.0.1\",node=\"node-1\",protocol=\"layer2\",service=\"kube-system/dns\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, "metallb_layer2_requests_received{ip=\"198.19.0.1\"}"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "metallb_layer2_responses_sent{ip=\"198.19.0.1\"}"), Some(2.0));
        assert_eq!(sample(&text, "metallb_layer2_gratuitous_sent{ip=\"198.19.0.1\"}"), Some(4.0));
        assert!(!text.contains("ferrolb_speaker_metallb"), "MetalLB names carry no ferrolb prefix");
    }
}
