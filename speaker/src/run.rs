//! The speaker's I/O shell: watch what decides ownership, elect, keep the raw-socket responders' owned set
//! current, and announce takeovers with gratuitous ARP.

use crate::diagnose::{self, Cause, Problem};
use crate::election::{self, Decision, NodeFacts, Policy};
use crate::error::{Error, Result};
use crate::iface::{self, InterfaceInfo};
use crate::liveness::{self, Kind, Membership, Message, Verdict};
use crate::raw::{self, Owned, Responder, Stats};
use crate::report;
use crate::view;
use ferrolb_crds::service::{current_ingress, current_pool, is_managed};
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_runtime::events::EventKind;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the speaker is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// Namespace of the pools and advertisements.
    pub namespace: String,
    /// Only Services of this class (none: only Services without a class).
    pub load_balancer_class: Option<String>,
    /// Gratuitous ARP on takeover at these offsets.
    pub garp_schedule: Vec<Duration>,
    /// Re-announce every owned address this often (both gratuitous forms); `None`: only on takeover.
    pub garp_refresh: Option<Duration>,
    /// UDP port of the liveness protocol.
    pub gossip_port: u16,
    /// Shared key authenticating liveness messages; without one, liveness falls back to Node `Ready` only.
    pub gossip_key: Option<Vec<u8>>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which a peer is dead.
    pub dead_after: Duration,
    /// Who may announce (the same on every speaker).
    pub policy: Policy,
}

/// Liveness shared between the protocol tasks and the election.
type SharedMembership = Arc<std::sync::Mutex<Membership>>;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Starts the liveness protocol: a sender thread (a plain OS thread, so heartbeats keep their rhythm when the
/// async workers are busy), a receiver task, and a watcher that triggers re-election when a verdict changes.
fn start_liveness(
    settings: &Settings,
    key: Vec<u8>,
    membership: SharedMembership,
    peers: Arc<std::sync::RwLock<Vec<std::net::SocketAddr>>>,
    trigger: mpsc::UnboundedSender<()>,
    stats: Arc<Stats>,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", settings.gossip_port))?;
    let sender = socket.try_clone()?;
    let (me, interval, send_key, send_peers) = (settings.node.clone(), settings.heartbeat, key.clone(), peers.clone());
    std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        loop {
            let datagram =
                liveness::encode(&send_key, &Message { kind: Kind::Alive, node: me.clone(), sequence: now_ns() });
            for peer in send_peers.read().map(|p| p.clone()).unwrap_or_default() {
                let _ = sender.send_to(&datagram, peer);
            }
            std::thread::sleep(interval);
        }
    })?;
    let receiver = tokio::net::UdpSocket::from_std({
        let r = socket.try_clone()?;
        r.set_nonblocking(true)?;
        r
    })?;
    let (recv_membership, recv_trigger) = (membership.clone(), trigger.clone());
    let stats_for_detection = stats.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = receiver.recv_from(&mut buf).await else { continue };
            let now = std::time::Instant::now();
            let verdict = liveness::decode(&key, &buf[..n]).and_then(|msg| {
                let mut m = recv_membership.lock().map_err(|_| liveness::Reject::Malformed)?;
                let before = m.verdict(&msg.node, now);
                m.accept(&msg, now)?;
                Ok(before != m.verdict(&msg.node, now))
            });
            match verdict {
                Ok(true) => {
                    let _ = recv_trigger.send(());
                }
                Ok(false) => {}
                Err(reason) => {
                    let count = stats.gossip_rejects.lock().map_or(0, |mut r| {
                        let c = r.entry(reason.label()).or_default();
                        *c += 1;
                        *c
                    });
                    // Loud but bounded: the 1st, 2nd, 4th, 8th… rejection of each kind is logged.
                    if count.is_power_of_two() {
                        tracing::warn!(%from, reason = reason.label(), count, "rejected a liveness datagram");
                    }
                }
            }
        }
    });
    let tick = (settings.dead_after / 10).max(Duration::from_millis(10));
    let detect_stats = stats_for_detection;
    tokio::spawn(async move {
        let mut last = BTreeMap::new();
        loop {
            tokio::time::sleep(tick).await;
            let now = std::time::Instant::now();
            let (verdicts, silences) = membership
                .lock()
                .map(|m| {
                    let v = m.verdicts(now);
                    let s: BTreeMap<String, Duration> =
                        v.keys().filter_map(|n| Some((n.clone(), m.silence(n, now)?))).collect();
                    (v, s)
                })
                .unwrap_or_default();
            if verdicts != last {
                for (node, v) in &verdicts {
                    if last.get(node) != Some(v) {
                        let silent = silences.get(node).copied().unwrap_or_default();
                        tracing::info!(%node, verdict = ?v, silent_ms = silent.as_millis() as u64, "peer liveness changed");
                        if *v == Verdict::Dead && last.get(node) == Some(&Verdict::Alive) {
                            // Time from the peer's last word to our verdict: the detection latency.
                            detect_stats.detections.fetch_add(1, Ordering::Relaxed);
                            detect_stats
                                .detection_micros
                                .fetch_add(u64::try_from(silent.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
                        }
                    }
                }
                last = verdicts;
                if trigger.send(()).is_err() {
                    return;
                }
            }
        }
    });
    Ok(socket)
}

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

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    ads: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
}

/// A Service this node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The Service's uid (names its ServiceL2Status).
    pub uid: String,
    /// Addresses announced.
    pub ips: BTreeSet<Ipv4Addr>,
    /// Interfaces they are announced on.
    pub interfaces: BTreeSet<String>,
}

/// What this node should announce: per address the interfaces, per Service `(namespace, name)` a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcements {
    /// Address → interfaces answering for it.
    pub per_ip: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// Service → what is announced for it.
    pub services: BTreeMap<(String, String), Announced>,
    /// Service → why nobody may announce some of its addresses (every speaker sees the same).
    pub unannounced: BTreeMap<(String, String), Problem>,
    /// Service → its addresses this node won but cannot answer for.
    pub failed: BTreeMap<(String, String), Problem>,
    /// This node is the one that tells users about `unannounced`.
    pub reporter: bool,
}

fn desired(
    settings: &Settings,
    s: &Stores,
    interfaces: &[InterfaceInfo],
    membership: &Membership,
    heard_long_enough: bool,
) -> Announcements {
    let now = std::time::Instant::now();
    let nodes: Vec<NodeFacts> = s
        .nodes
        .state()
        .iter()
        .map(|n| {
            let mut facts = view::node_facts(n);
            // First-hand liveness wins. A speaker never heard from counts by its Node's Ready condition only while
            // we have not been listening long enough to have heard it; after that it is not running (crashed at
            // start, or no speaker on that node), and electing it would leave its addresses unanswered.
            match membership.verdict(&facts.name, now) {
                Verdict::Alive => facts.speaker_alive = true,
                Verdict::Dead => facts.speaker_alive = false,
                Verdict::Unknown if heard_long_enough => facts.speaker_alive = false,
                Verdict::Unknown => {}
            }
            facts
        })
        .collect();
    // The pool of an address is the one the controller recorded on the Service, so speaker and controller
    // agree even where pools overlap (the controller sets the newer one aside), and nothing is parsed here.
    let pools: HashMap<String, Arc<IPAddressPool>> = s.pools.state().into_iter().map(|p| (p.name_any(), p)).collect();
    let ads: Vec<Arc<L2Advertisement>> = s.ads.state();
    let ad_refs: Vec<&L2Advertisement> = ads.iter().map(AsRef::as_ref).collect();
    let ads = view::parse_advertisements(&ad_refs);
    let slices = s.slices.state();
    let slices_of = view::slices_by_service(slices.iter().map(AsRef::as_ref));
    let my_facts = nodes.iter().find(|n| n.name == settings.node);
    let mut out =
        Announcements { reporter: diagnose::reporter(&nodes) == Some(settings.node.as_str()), ..Default::default() };
    for svc in s.services.state() {
        if !is_managed(&svc, settings.load_balancer_class.as_deref()) {
            continue;
        }
        let name = svc.name_any();
        let namespace = svc.namespace().unwrap_or_default();
        let own_slices = slices_of.get(&(namespace.clone(), name.clone())).map(Vec::as_slice).unwrap_or_default();
        let facts = view::service_facts(&svc, own_slices);
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        let (mut nobody, mut failed): (Vec<Cause>, Vec<Cause>) = (Vec::new(), Vec::new());
        let Some(pool) = current_pool(&svc).and_then(|name| pools.get(name)) else { continue };
        for ip in current_ingress(&svc) {
            let IpAddr::V4(v4) = ip else { continue };
            let applicable = view::advertisements_for(pool, &svc, &ads);
            match election::decide(ip, &facts, &nodes, &applicable, settings.policy) {
                Decision::Nobody(why) => {
                    nobody.push((v4, why.label(), diagnose::explain(&why)));
                    continue;
                }
                Decision::Owner(owner) if owner == settings.node => {}
                Decision::Owner(_) => continue,
            }
            let allowed = my_facts.map(|n| election::allowed_interfaces(n, &applicable)).unwrap_or_default();
            if let Some(why) = iface::why_unusable(interfaces, &allowed) {
                failed.push((v4, why.label(), why.describe()));
                continue;
            }
            let usable = iface::usable(interfaces, &allowed);
            let on: BTreeSet<String> = iface::for_address(&usable, v4).iter().map(|i| i.name.clone()).collect();
            out.per_ip.entry(v4).or_default().extend(on.clone());
            let entry = out.services.entry((namespace.clone(), name.clone())).or_insert_with(|| Announced {
                uid: uid.clone(),
                ips: BTreeSet::new(),
                interfaces: BTreeSet::new(),
            });
            entry.ips.insert(v4);
            entry.interfaces.extend(on);
        }
        if !nobody.is_empty() {
            out.unannounced.insert((namespace.clone(), name.clone()), diagnose::nobody(&uid, &nobody));
        }
        if !failed.is_empty() {
            out.failed.insert((namespace, name), diagnose::announce_failed(&uid, &settings.node, &failed));
        }
    }
    out
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

/// Peers' liveness addresses: every other node's first InternalIPv4.
fn peer_addresses(nodes: &Store<Node>, me: &str, port: u16) -> Vec<std::net::SocketAddr> {
    nodes
        .state()
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            let ip =
                addrs.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse::<Ipv4Addr>().ok())?;
            Some(std::net::SocketAddr::from((ip, port)))
        })
        .collect()
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
                start_liveness(&settings, key.clone(), membership.clone(), peers.clone(), tx.clone(), stats.clone())
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
    let mut last_refresh = std::time::Instant::now();
    let listening_since = std::time::Instant::now();
    let owned: Owned = Arc::default();
    let mut responders: BTreeMap<String, Arc<Responder>> = BTreeMap::new();
    let _ = tx.send(());
    let main_loop = async {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            if let Ok(mut p) = peers.write() {
                *p = peer_addresses(&stores.nodes, &settings.node, settings.gossip_port);
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
            let announcements = desired(&settings, &stores, &interfaces, &view, heard_long_enough);
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
            let want = announcements.per_ip;
            let needed: BTreeSet<&String> = want.values().flatten().collect();
            responders.retain(|name, _| needed.contains(name) || interfaces.iter().any(|i| &i.name == name));
            for name in needed {
                if responders.contains_key(name) {
                    continue;
                }
                let Some(info) = interfaces.iter().find(|i| &i.name == name) else { continue };
                match Responder::start(info, owned.clone(), stats.clone()) {
                    Ok(r) => {
                        tracing::info!(interface = %name, mac = %r.mac, "answering ARP");
                        responders.insert(name.clone(), Arc::new(r));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot open raw socket"),
                }
            }
            let before = owned.read().map(|o| o.clone()).unwrap_or_default();
            if let Some(every) = settings.garp_refresh
                && last_refresh.elapsed() >= every
            {
                last_refresh = std::time::Instant::now();
                for (ip, on) in &before {
                    for r in on.iter().filter_map(|n| responders.get(n)) {
                        r.announce(*ip, &stats);
                    }
                }
            }
            if before == want {
                continue;
            }
            if let Ok(mut o) = owned.write() {
                *o = want.clone();
            }
            for ip in before.keys().filter(|ip| !want.contains_key(ip)) {
                tracing::info!(%ip, "no longer the owner; stopped answering");
                stats.releases.fetch_add(1, Ordering::Relaxed);
            }
            for (ip, on) in want.iter().filter(|(ip, on)| before.get(ip) != Some(on)) {
                tracing::info!(%ip, interfaces = ?on, "took ownership; announcing");
                stats.takeovers.fetch_add(1, Ordering::Relaxed);
                let targets: Vec<Arc<Responder>> = on.iter().filter_map(|n| responders.get(n).cloned()).collect();
                let (ip, owned, stats, schedule) = (*ip, owned.clone(), stats.clone(), settings.garp_schedule.clone());
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    for at in schedule {
                        tokio::time::sleep_until(start + at).await;
                        // The burst ends the moment ownership moves on.
                        if !owned.read().is_ok_and(|o| o.contains_key(&ip)) {
                            return;
                        }
                        for r in &targets {
                            r.announce(ip, &stats);
                        }
                    }
                });
            }
        }
    };
    tokio::select! {
        () = main_loop => {}
        () = shutdown => {
            // Stop answering first, then tell every peer, a few times in case one datagram is lost.
            if let Ok(mut o) = owned.write() {
                o.clear();
            }
            if let Some((socket, key)) = &gossip {
                let leaving = liveness::encode(key, &Message { kind: Kind::Leaving, node: settings.node.clone(), sequence: now_ns() });
                let targets = peers.read().map(|p| p.clone()).unwrap_or_default();
                for _ in 0..3 {
                    for peer in &targets {
                        let _ = socket.send_to(&leaving, peer);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tracing::info!("left: peers move this node's addresses now");
        }
    }
    Ok(())
}
