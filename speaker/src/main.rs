//! ferrolb-speaker: answers ARP for the addresses this node owns.

use anyhow::Context;
use clap::Parser;
use ferrolb_runtime::logging::LogFormat;
use ferrolb_speaker::election::Policy;
use ferrolb_speaker::raw::Stats;
use ferrolb_speaker::run::{self, Settings};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Answers ARP for the LoadBalancer addresses this node owns")]
struct Args {
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Namespace of IPAddressPools and L2Advertisements.
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,
    /// Only Services with this loadBalancerClass (default: only Services without a class).
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS")]
    load_balancer_class: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7473")]
    metrics_addr: String,
    /// Log format: text or json.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// UDP port of the liveness protocol.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// Shared key of the liveness protocol (from the chart's Secret).
    #[arg(long, env = "FERROLB_GOSSIP_KEY", hide_env_values = true)]
    gossip_key: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Also re-announce every owned address this often, in seconds (0: only on takeover).
    #[arg(long, default_value_t = 0)]
    garp_refresh_secs: u64,
    /// A peer silent for this many milliseconds is counted dead: its addresses are probed and taken if nobody
    /// answers them (docs/design.md §6.5).
    #[arg(long, default_value_t = 200)]
    dead_after_ms: u64,
    /// Let nodes labelled node.kubernetes.io/exclude-from-external-load-balancers announce too (single-node
    /// clusters label their only node). Every speaker must agree: set it for the whole DaemonSet.
    #[arg(long, env = "FERROLB_IGNORE_EXCLUDE_LB")]
    ignore_exclude_lb: bool,
}

/// A gauge with a `reason` label.
fn gauge(out: &mut String, name: &str, help: &str, values: &std::sync::Mutex<BTreeMap<&'static str, u64>>) {
    out.push_str(&format!("# HELP ferrolb_speaker_{name} {help}\n# TYPE ferrolb_speaker_{name} gauge\n"));
    if let Ok(values) = values.lock() {
        for (reason, n) in values.iter() {
            out.push_str(&format!("ferrolb_speaker_{name}{{reason=\"{reason}\"}} {n}\n"));
        }
    }
}

fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let mut line = |name: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP ferrolb_speaker_{name} {help}\n# TYPE ferrolb_speaker_{name} counter\nferrolb_speaker_{name}_total {value}\n"));
    };
    line("arp_requests", "ARP requests seen", stats.requests.load(Ordering::Relaxed));
    line("arp_replies", "ARP requests answered", stats.replies.load(Ordering::Relaxed));
    line("frames", "Frames seen on the raw sockets", stats.frames.load(Ordering::Relaxed));
    line("gratuitous_arp", "Gratuitous ARP frames sent", stats.gratuitous.load(Ordering::Relaxed));
    line("takeovers", "Addresses this node took over", stats.takeovers.load(Ordering::Relaxed));
    line("releases", "Addresses this node gave up", stats.releases.load(Ordering::Relaxed));
    line("arp_probes", "Probes sent before answering for an address", stats.probes.load(Ordering::Relaxed));
    line(
        "node_conflicts",
        "Times another node claimed an address this node answered for",
        stats.conflicts_node.load(Ordering::Relaxed),
    );
    line(
        "stranger_conflicts",
        "Times a MAC that is no node's claimed, or already answered, an address this node answers for or wants",
        stats.conflicts_stranger.load(Ordering::Relaxed),
    );
    let micros = stats.detection_micros.load(Ordering::Relaxed) as f64;
    out.push_str(&format!(
        "# HELP ferrolb_speaker_failure_detection_seconds Silence of a peer when declared dead\n# TYPE ferrolb_speaker_failure_detection_seconds summary\nferrolb_speaker_failure_detection_seconds_sum {}\nferrolb_speaker_failure_detection_seconds_count {}\n",
        micros / 1e6,
        stats.detections.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP ferrolb_speaker_plan_seconds Time to plan what this node announces, per wake\n# TYPE ferrolb_speaker_plan_seconds summary\nferrolb_speaker_plan_seconds_sum {}\nferrolb_speaker_plan_seconds_count {}\n",
        stats.plan_micros.load(Ordering::Relaxed) as f64 / 1e6,
        stats.plans.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP ferrolb_speaker_strict_arp_missing 1 while kube-proxy IPVS runs without strictARP here\n# TYPE ferrolb_speaker_strict_arp_missing gauge\nferrolb_speaker_strict_arp_missing {}\n",
        u8::from(stats.strict_arp_missing.load(Ordering::Relaxed))
    ));
    out.push_str("# HELP ferrolb_speaker_arp_drops ARP frames not answered, by reason\n# TYPE ferrolb_speaker_arp_drops counter\n");
    if let Ok(drops) = stats.drops.lock() {
        for (reason, n) in drops.iter() {
            out.push_str(&format!("ferrolb_speaker_arp_drops_total{{reason=\"{reason}\"}} {n}\n"));
        }
    }
    gauge(
        &mut out,
        "unannounced_addresses",
        "Service addresses nobody may announce, by reason (exported by one speaker, the reporting one)",
        &stats.unannounced,
    );
    gauge(
        &mut out,
        "announce_failed_addresses",
        "Service addresses this node won but cannot answer for (no usable interface), by reason",
        &stats.announce_failed,
    );
    out.push_str(&format!(
        "# HELP ferrolb_speaker_held_back_addresses Addresses the election gives this node that another node answers for\n# TYPE ferrolb_speaker_held_back_addresses gauge\nferrolb_speaker_held_back_addresses {}\n",
        stats.held_back.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP ferrolb_speaker_unheard_live_peers Peers unheard over the liveness port although their node is alive\n# TYPE ferrolb_speaker_unheard_live_peers gauge\nferrolb_speaker_unheard_live_peers {}\n",
        stats.unheard_live_peers.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP ferrolb_speaker_address_claimed_by_stranger 1 while a MAC that is no node's claims an address this node answers for (seen in the last 10 minutes)\n# TYPE ferrolb_speaker_address_claimed_by_stranger gauge\n");
    if let Ok(mut strangers) = stats.strangers.lock() {
        strangers.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(600));
        for (ip, mac) in strangers.keys() {
            out.push_str(&format!("ferrolb_speaker_address_claimed_by_stranger{{ip=\"{ip}\",mac=\"{mac}\"}} 1\n"));
        }
    }
    out.push_str("# HELP ferrolb_speaker_gossip_rejects Liveness datagrams rejected, by reason\n# TYPE ferrolb_speaker_gossip_rejects counter\n");
    if let Ok(rejects) = stats.gossip_rejects.lock() {
        for (reason, n) in rejects.iter() {
            out.push_str(&format!("ferrolb_speaker_gossip_rejects_total{{reason=\"{reason}\"}} {n}\n"));
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferrolb_runtime::logging::init(args.log_format);
    let client = kube::Client::try_default().await.context("no Kubernetes client configuration")?;
    let stats = Arc::new(Stats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let rendered = stats.clone();
    let server =
        tokio::spawn(ferrolb_runtime::http::serve(args.metrics_addr.clone(), ready.clone(), move || render(&rendered)));
    let settings = Settings {
        node: args.node.clone(),
        namespace: args.namespace.clone(),
        load_balancer_class: args.load_balancer_class.clone(),
        garp_schedule: [0, 250, 1100, 2200].into_iter().map(Duration::from_millis).collect(),
        garp_refresh: (args.garp_refresh_secs > 0).then(|| Duration::from_secs(args.garp_refresh_secs)),
        gossip_port: args.gossip_port,
        gossip_key: args.gossip_key.clone().filter(|k| !k.is_empty()).map(String::into_bytes),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        dead_after: Duration::from_millis(args.dead_after_ms),
        policy: Policy { ignore_exclude_label: args.ignore_exclude_lb },
    };
    let (gossip_port, ignore_exclude_lb) = (args.gossip_port, args.ignore_exclude_lb);
    tracing::info!(node = %settings.node, gossip_port, ignore_exclude_lb, "starting");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: leaving"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: leaving"),
        }
    };
    tokio::select! {
        r = run::run(client, settings, stats, ready, shutdown) => r.context("speaker stopped")?,
        s = server => anyhow::bail!("metrics server stopped: {s:?}"),
    }
    Ok(())
}
