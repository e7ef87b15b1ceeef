//! ferrolb-speaker: answers ARP for the addresses this node owns.

use anyhow::Context;
use clap::Parser;
use ferrolb_runtime::logging::LogFormat;
use ferrolb_speaker::model::election::Policy;
use ferrolb_speaker::model::interfaces::Exclusions;
use ferrolb_speaker::run::{self, Settings};
use ferrolb_speaker::telemetry::metrics;
use ferrolb_speaker::telemetry::stats::Stats;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Answers ARP for the LoadBalancer addresses this node owns")]
struct Args {
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// This speaker's Pod (the downward API), which owns its ConfigurationState.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Namespace of IPAddressPools and L2Advertisements.
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,
    /// Label selector of this release's speaker pods (in --namespace), e.g.
    /// app.kubernetes.io/instance=ferrolb,app.kubernetes.io/component=speaker: heartbeats go to, and addresses
    /// to, only nodes where one runs. Unset: every node counts (the chart sets it).
    #[arg(long, env = "FERROLB_SPEAKER_POD_SELECTOR")]
    speaker_pod_selector: Option<String>,
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
    /// Interface names never answered on unless an L2Advertisement names them: regular expressions separated by
    /// spaces (empty: none excluded). Default: MetalLB's list plus cilium, vxlan and weave devices.
    #[arg(long, env = "FERROLB_EXCLUDE_INTERFACES")]
    exclude_interfaces: Option<String>,
    /// Read the interfaces again at least this often, in seconds; netlink notifications trigger a read at once.
    #[arg(long, env = "FERROLB_INTERFACE_RESCAN_SECS", default_value_t = 60)]
    interface_rescan_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferrolb_runtime::logging::init(args.log_format);
    // A bad pattern stops the speaker at start, naming it, rather than answering on interfaces it should not.
    let exclusions = match &args.exclude_interfaces {
        Some(list) => Exclusions::parse(list).context("--exclude-interfaces (chart: speaker.excludeInterfaces)")?,
        None => Exclusions::default(),
    };
    let client = kube::Client::try_default().await.context("no Kubernetes client configuration")?;
    let stats = Arc::new(Stats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let registry = metrics::registry(stats.clone(), &args.node);
    let server = tokio::spawn(ferrolb_runtime::http::serve(args.metrics_addr.clone(), ready.clone(), move || {
        metrics::render(&registry)
    }));
    let settings = Settings {
        node: args.node.clone(),
        namespace: args.namespace.clone(),
        pod_name: args.pod_name.clone().filter(|p| !p.is_empty()),
        speaker_pod_selector: args.speaker_pod_selector.clone().filter(|s| !s.trim().is_empty()),
        load_balancer_class: args.load_balancer_class.clone(),
        garp_schedule: [0, 250, 1100, 2200].into_iter().map(Duration::from_millis).collect(),
        garp_refresh: (args.garp_refresh_secs > 0).then(|| Duration::from_secs(args.garp_refresh_secs)),
        gossip_port: args.gossip_port,
        gossip_key: args.gossip_key.clone().filter(|k| !k.is_empty()).map(String::into_bytes),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        dead_after: Duration::from_millis(args.dead_after_ms),
        policy: Policy { ignore_exclude_label: args.ignore_exclude_lb },
        exclusions,
        interface_rescan: Duration::from_secs(args.interface_rescan_secs.max(1)),
    };
    let (gossip_port, ignore_exclude_lb) = (args.gossip_port, args.ignore_exclude_lb);
    let excluded = settings.exclusions.patterns().join(" ");
    tracing::info!(node = %settings.node, gossip_port, ignore_exclude_lb, %excluded, "starting");
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
