//! The speaker's Prometheus metrics: its own series are the prometheus-client metrics in [`Stats`], registered
//! under `ferrolb_speaker_` like the controller's; what must be computed at scrape time — strangers seen in the
//! last minutes, and MetalLB's series under MetalLB's names — is encoded by two collectors.

use crate::telemetry::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How long a stranger's claim stays visible in `address_claimed_by_stranger`.
const STRANGER_MEMORY: Duration = Duration::from_secs(600);

/// Label set of `address_claimed_by_stranger`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    ip: String,
    mac: String,
}

/// `address_claimed_by_stranger`: 1 per (address, MAC) seen in the last [`STRANGER_MEMORY`].
#[derive(Debug)]
struct StrangerCollector(Arc<Stats>);

impl Collector for StrangerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let claims: Vec<ClaimLabels> = self
            .0
            .strangers
            .lock()
            .map(|mut strangers| {
                strangers.retain(|_, at| at.elapsed() < STRANGER_MEMORY);
                strangers.keys().map(|(ip, mac)| ClaimLabels { ip: ip.to_string(), mac: mac.to_string() }).collect()
            })
            .unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "address_claimed_by_stranger",
            "1 while a MAC that is no node's claims an address this node answers for (seen in the last 10 minutes)",
            None,
            MetricType::Gauge,
        )?;
        for labels in &claims {
            ConstGauge::new(1).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Registers the speaker's own series (`ferrolb_speaker_*`).
fn register(registry: &mut Registry, stats: &Arc<Stats>) {
    let s = stats.as_ref();
    let counters = [
        ("arp_requests", "ARP requests seen", &s.requests),
        ("arp_replies", "ARP requests answered", &s.replies),
        ("ndp_solicitations", "Neighbour solicitations seen", &s.solicitations),
        ("ndp_advertisements", "Neighbour solicitations answered", &s.advertisements),
        (
            "unsolicited_advertisements",
            "Unsolicited neighbour advertisements sent (IPv6 takeover)",
            &s.unsolicited_advertisements,
        ),
        ("ndp_group_join_failures", "Solicited-node multicast groups that could not be joined", &s.group_join_failures),
        ("frames", "Frames seen on the raw sockets", &s.frames),
        ("gratuitous_arp", "Gratuitous ARP frames sent", &s.gratuitous),
        ("takeovers", "Addresses this node took over", &s.takeovers),
        ("releases", "Addresses this node gave up", &s.releases),
        ("arp_probes", "Probes (ARP, and IPv6 duplicate-address) sent before answering", &s.probes),
        (
            "node_conflicts",
            "Times another node's MAC claimed an address this node answered for, or a stranger's claim turned out to be a node's",
            &s.conflicts_node,
        ),
        (
            "stranger_conflicts",
            "Times a MAC that is no node's claimed, or already answered, an address this node answers for or wants",
            &s.conflicts_stranger,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    let by_reason = [
        (
            "interface_rescans",
            "Times the interfaces were read again, by reason: netlink (the kernel said they changed) or timer",
            &s.interface_rescans,
        ),
        ("arp_drops", "ARP frames not answered, by reason", &s.drops),
        ("ndp_drops", "NDP frames not answered, by reason", &s.ndp_drops),
        ("gossip_rejects", "Liveness datagrams rejected, by reason", &s.gossip_rejects),
    ];
    for (name, help, family) in by_reason {
        registry.register(name, help, family.clone());
    }
    registry.register(
        "unannounced_addresses",
        "Service addresses nobody may announce, by reason (exported by one speaker, the reporting one)",
        s.unannounced.family.clone(),
    );
    registry.register(
        "announce_failed_addresses",
        "Service addresses this node won but cannot answer for (no usable interface), by reason",
        s.announce_failed.family.clone(),
    );
    let gauges = [
        ("strict_arp_missing", "1 while kube-proxy IPVS runs without strictARP here", &s.strict_arp_missing),
        ("held_back_addresses", "Addresses the election gives this node that another node answers for", &s.held_back),
        (
            "unheard_live_peers",
            "Peers unheard over the liveness port although their node is alive",
            &s.unheard_live_peers,
        ),
    ];
    for (name, help, gauge) in gauges {
        registry.register(name, help, gauge.clone());
    }
    registry.register("failure_detection_seconds", "Silence of a peer when declared dead", s.failure_detection.clone());
    registry.register("plan_seconds", "Time to plan what this node announces, per wake", s.plan.clone());
    registry.register_collector(Box::new(StrangerCollector(stats.clone())));
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
#[derive(Debug)]
struct MetallbCollector {
    stats: Arc<Stats>,
    node: String,
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
                            service: service.to_string(),
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
    register(registry.sub_registry_with_prefix("ferrolb_speaker"), &stats);
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
    use crate::telemetry::stats::Reason;
    use crate::wire::Mac;
    use ferrolb_crds::service::ServiceKey;
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_gauges_and_labelled_families_are_rendered_from_the_stats() {
        let stats = Arc::new(Stats::default());
        stats.replies.inc_by(7);
        stats.held_back.set(2);
        for took in [0.5, 0.25, 0.75] {
            stats.plan.observe(took);
        }
        stats.drops.get_or_create(&Reason { reason: "not_owned" }).inc_by(4);
        stats.unannounced.set(BTreeMap::from([("NoReadyEndpoints", 2)]));
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
        let unannounced = "ferrolb_speaker_unannounced_addresses{reason=\"NoReadyEndpoints\"}";
        assert_eq!(sample(&text, unannounced), Some(2.0));
        // A reason gone stays, at 0, so an alert sees it end; a later change shows in the next scrape.
        stats.unannounced.set(BTreeMap::new());
        assert_eq!(sample(&render(&registry), unannounced), Some(0.0));
        stats.replies.inc();
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
        stats.announced.lock().map(|mut a| a.insert(ip, vec![ServiceKey::new("kube-system", "dns")])).ok();
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

    #[test]
    fn per_address_series_go_when_the_node_stops_answering_for_the_address() {
        let stats = Arc::new(Stats::default());
        let (kept, handed_over) =
            (IpAddr::from(Ipv4Addr::new(198, 19, 0, 1)), IpAddr::from(Ipv4Addr::new(198, 19, 0, 2)));
        let service = |name: &str| vec![ServiceKey::new("a", name)];
        stats.set_announced(BTreeMap::from([(kept, service("one")), (handed_over, service("two"))]));
        stats.count_for(kept, |c| c.requests += 1);
        stats.count_for(handed_over, |c| c.requests += 5);
        let registry = registry(stats.clone(), "node-1");
        let handed_over_series = "metallb_layer2_requests_received{ip=\"198.19.0.2\"}";
        assert_eq!(sample(&render(&registry), handed_over_series), Some(5.0), "counted while answered");
        stats.set_announced(BTreeMap::from([(kept, service("one"))]));
        let text = render(&registry);
        assert_eq!(sample(&text, handed_over_series), None, "{text}");
        assert_eq!(sample(&text, "metallb_layer2_requests_received{ip=\"198.19.0.1\"}"), Some(1.0), "{text}");
        assert_eq!(stats.per_address.lock().map(|m| m.len()).ok(), Some(1), "nothing kept of the address handed over");
    }
}
