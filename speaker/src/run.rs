//! The speaker's wiring: watch caches and wake-ups in, a [`plan`](crate::plan) per wake, the
//! [`Announcer`] and the [`report`](crate::report)er out, the [`gossip`](crate::gossip) protocol beside. Nothing
//! here decides who announces what.

use crate::announcer::Announcer;
use crate::diagnose::{self, Problem};
use crate::error::{Error, Result};
use crate::gossip::{self, SharedMembership};
use crate::iface;
use crate::liveness::Membership;
use crate::plan::{self, Announcements, Me, Snapshot};
use crate::raw::{self, Stats};
use crate::report;
pub use crate::settings::Settings;
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_runtime::events::EventKind;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often interfaces and ARP sysctls are read again.
const INTERFACE_RESCAN: Duration = Duration::from_secs(5);

/// Any change to a watched kind re-runs the election.
fn watch<K>(api: Api<K>, tx: mpsc::UnboundedSender<()>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    ferrolb_runtime::watch::watch(api, tx, |_| Some(()))
}

/// The watch caches the plan reads.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    ads: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            slices: self.slices.state(),
            nodes: self.nodes.state(),
            ads: self.ads.state(),
            pools: self.pools.state(),
        }
    }
}

/// Replaces a gauge's values; labels seen before stay at 0 so their series do not vanish.
fn set_gauge(gauge: &std::sync::Mutex<BTreeMap<&'static str, u64>>, now: BTreeMap<&'static str, u64>) {
    if let Ok(mut g) = gauge.lock() {
        g.values_mut().for_each(|v| *v = 0);
        g.extend(now);
    }
}

/// Says, on change only, which Services have addresses nobody may announce. Every speaker keeps track so that
/// a new reporter (the previous one died) does not repeat what was already said; only the reporter speaks.
fn tell_unannounced(
    reporter: &report::Reporter,
    stats: &Stats,
    before: &BTreeMap<(String, String), Problem>,
    now: &Announcements,
) {
    if !now.reporter {
        set_gauge(&stats.unannounced, BTreeMap::new());
        return;
    }
    set_gauge(&stats.unannounced, diagnose::count(now.unannounced.values()));
    for (key, problem) in diagnose::changed(before, &now.unannounced) {
        let service = format!("{}/{}", key.0, key.1);
        tracing::warn!(%service, reason = diagnose::NO_ELIGIBLE_NODE, "{}", problem.note);
        reporter.service_event(EventKind::Warning, diagnose::NO_ELIGIBLE_NODE, key, &problem.uid, problem.note.clone());
    }
    for (namespace, name) in before.keys().filter(|k| !now.unannounced.contains_key(*k)) {
        let service = format!("{namespace}/{name}");
        tracing::info!(%service, "every address has an owner again (or the Service is gone)");
    }
}

/// Says, on change only, which Services have addresses this node won but cannot answer for.
fn tell_failed(
    reporter: &report::Reporter,
    stats: &Stats,
    before: &BTreeMap<(String, String), Problem>,
    now: &BTreeMap<(String, String), Problem>,
) {
    set_gauge(&stats.announce_failed, diagnose::count(now.values()));
    for (key, problem) in diagnose::changed(before, now) {
        let service = format!("{}/{}", key.0, key.1);
        tracing::warn!(%service, reason = diagnose::ANNOUNCE_FAILED, "{}", problem.note);
        reporter.service_event(EventKind::Warning, diagnose::ANNOUNCE_FAILED, key, &problem.uid, problem.note.clone());
    }
}

/// Runs the speaker until `shutdown` resolves; then tells the peers it is leaving and stops answering.
pub async fn run(
    client: Client,
    settings: Settings,
    stats: Arc<Stats>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stores = Stores {
        services: watch(Api::<Service>::all(client.clone()), tx.clone()),
        slices: watch(Api::<EndpointSlice>::all(client.clone()), tx.clone()),
        nodes: watch(Api::<Node>::all(client.clone()), tx.clone()),
        ads: watch(Api::<L2Advertisement>::namespaced(client.clone(), &settings.namespace), tx.clone()),
        pools: watch(Api::<IPAddressPool>::namespaced(client.clone(), &settings.namespace), tx.clone()),
    };
    for (what, ok) in [
        ("Services", stores.services.wait_until_ready().await.is_ok()),
        ("EndpointSlices", stores.slices.wait_until_ready().await.is_ok()),
        ("Nodes", stores.nodes.wait_until_ready().await.is_ok()),
        ("L2Advertisements", stores.ads.wait_until_ready().await.is_ok()),
        ("IPAddressPools", stores.pools.wait_until_ready().await.is_ok()),
    ] {
        if !ok {
            return Err(Error::CacheSync(what.into()));
        }
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(node = %settings.node, "caches synced");
    // Interfaces come and go: look again every few seconds even when nothing in the API changed.
    let tick = tx.clone();
    let rescan_due = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let due = rescan_due.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERFACE_RESCAN).await;
            due.store(true, Ordering::Relaxed);
            if tick.send(()).is_err() {
                return;
            }
        }
    });
    let membership: SharedMembership =
        Arc::new(std::sync::Mutex::new(Membership::new(&settings.node, settings.dead_after)));
    let peers = Arc::new(std::sync::RwLock::new(Vec::new()));
    let gossip = match &settings.gossip_key {
        Some(key) => {
            let socket =
                gossip::start(&settings, key.clone(), membership.clone(), peers.clone(), tx.clone(), stats.clone())
                    .map_err(|source| Error::RawSocket {
                        interface: format!("udp/{}", settings.gossip_port),
                        source,
                    })?;
            tracing::info!(port = settings.gossip_port, heartbeat = ?settings.heartbeat, dead_after = ?settings.dead_after, "liveness protocol on");
            Some((socket, key.clone()))
        }
        None => {
            tracing::warn!(
                "no gossip key (FERROLB_GOSSIP_KEY): liveness falls back to Node Ready, so failover takes the node grace period"
            );
            None
        }
    };
    let (status_reader, status_writer) = reflector::store::<ServiceL2Status>();
    let status_api = Api::<ServiceL2Status>::namespaced(client.clone(), &settings.namespace);
    let status_stream =
        reflector::reflector(status_writer, watcher(status_api, watcher::Config::default()).default_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(status_stream);
        while status_stream.next().await.is_some() {}
    });
    let l2statuses = status_reader;
    let reporter =
        report::Reporter { client: client.clone(), namespace: settings.namespace.clone(), node: settings.node.clone() };
    let mut last_services = BTreeMap::new();
    let (mut last_unannounced, mut last_failed) = (BTreeMap::new(), BTreeMap::new());
    let mut ipvs_warned = false;
    let mut interfaces = Vec::new();
    let listening_since = std::time::Instant::now();
    let mut announcer = Announcer::new(stats.clone(), settings.garp_schedule.clone(), settings.garp_refresh);
    let me = Me {
        node: &settings.node,
        load_balancer_class: settings.load_balancer_class.as_deref(),
        policy: settings.policy,
    };
    let _ = tx.send(());
    let main_loop = async {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let snapshot = stores.snapshot();
            if let Ok(mut p) = peers.write() {
                *p = gossip::peer_addresses(&snapshot.nodes, &settings.node, settings.gossip_port);
            }
            // Interfaces and sysctls are read on their own clock (the tick), not on every API event: with
            // thousands of Services, watch events come far more often than NICs change.
            if rescan_due.swap(false, Ordering::Relaxed) {
                interfaces = raw::interfaces();
                let strict_arp_missing = iface::ipvs_without_strict_arp(&interfaces, &raw::arp_ignore(&interfaces));
                if strict_arp_missing != ipvs_warned {
                    ipvs_warned = strict_arp_missing;
                    stats.strict_arp_missing.store(strict_arp_missing, Ordering::Relaxed);
                    if strict_arp_missing {
                        tracing::error!(
                            "kube-proxy runs in IPVS mode without strictARP: kube-ipvs0 holds Service addresses and this \
                     node's kernel answers ARP for all of them, so several nodes answer for one address. Set \
                     strictARP: true in the kube-proxy ConfigMap (as for MetalLB)."
                        );
                        reporter.node_event(
                        EventKind::Warning,
                        "StrictARPDisabled",
                        "kube-proxy IPVS without strictARP: this node's kernel answers ARP for every Service address; \
                     set strictARP: true in the kube-proxy ConfigMap"
                            .into(),
                    );
                    } else {
                        tracing::info!("strictARP in effect again");
                    }
                }
            }
            let view = membership
                .lock()
                .map(|m| m.clone())
                .unwrap_or_else(|_| Membership::new(&settings.node, settings.dead_after));
            // Three heartbeat timeouts after the protocol started, every running peer has been heard.
            let heard_long_enough = gossip.is_some() && listening_since.elapsed() > settings.dead_after * 3;
            let now = std::time::Instant::now();
            let announcements = plan::plan(&me, &snapshot, &interfaces, &view, heard_long_enough, now);
            stats.plans.fetch_add(1, Ordering::Relaxed);
            let took = u64::try_from(now.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.plan_micros.fetch_add(took, Ordering::Relaxed);
            if announcements.services != last_services {
                reporter.report(&last_services, &announcements.services, &l2statuses.state());
                last_services = announcements.services.clone();
            }
            // Before liveness has settled this speaker may count peers alive that are not (or the reverse), and
            // would tell users about a view that is about to change.
            if gossip.is_none() || heard_long_enough {
                tell_unannounced(&reporter, &stats, &last_unannounced, &announcements);
                last_unannounced = announcements.unannounced.clone();
            }
            tell_failed(&reporter, &stats, &last_failed, &announcements.failed);
            last_failed = announcements.failed.clone();
            announcer.apply(announcements.per_ip, &interfaces);
        }
    };
    tokio::select! {
        () = main_loop => {}
        () = shutdown => {
            // Stop answering first, then tell every peer.
            announcer.stop();
            if let Some((socket, key)) = &gossip {
                let targets = peers.read().map(|p| p.clone()).unwrap_or_default();
                gossip::say_leaving(socket, key, &settings.node, &targets).await;
            }
            tracing::info!("left: peers move this node's addresses now");
        }
    }
    Ok(())
}
