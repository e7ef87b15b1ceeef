//! The speaker's wiring: watch caches and wake-ups in, a [`plan`](crate::plan) per wake, the
//! [`Announcer`] and the [`report`](crate::report)er out, the [`gossip`](crate::gossip) protocol beside. Nothing
//! here decides who announces what.

use crate::announcer::{Announcer, Schedule};
use crate::arp::Mac;
use crate::claim::{Conflict, Timing};
use crate::diagnose::{self, Problem};
use crate::error::{Error, Result};
use crate::gossip::{self, Identity, SharedMembership};
use crate::iface;
use crate::liveness::Membership;
use crate::netlink;
use crate::plan::{self, Announcements, Me, Snapshot};
use crate::raw::{self, Stats};
use crate::report;
pub use crate::settings::Settings;
use crate::signs::{self, LeaseRenewals};
use crate::trim;
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_runtime::events::EventKind;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// The planner wakes at least this often (liveness signs and Lease renewals are read on wakes), and without
/// netlink notifications interfaces are read again on each of these ticks.
const TICK: Duration = Duration::from_secs(5);

/// After a pass of the main loop that took `t`, wakes are gathered for `PACE × t` (at most [`MAX_GATHER`]):
/// a pass, mostly planning, then uses at most a quarter of a core however fast the API state changes.
const PACE: u32 = 3;
/// The longest wakes are gathered after a pass.
const MAX_GATHER: Duration = Duration::from_millis(250);

/// Counts changes of the API state the plan reads, so a wake knows whether the prepared half of the plan
/// ([`plan::prepare`]) is still current.
type ApiChanges = Arc<std::sync::atomic::AtomicU64>;

/// Any change to a watched kind re-runs the election (and marks the API state changed).
fn watch<K>(api: Api<K>, tx: mpsc::UnboundedSender<()>, changes: &ApiChanges) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let changes = changes.clone();
    ferrolb_runtime::watch::watch(api, tx, move |_| {
        changes.fetch_add(1, Ordering::Relaxed);
        Some(())
    })
}

/// [`watch`], keeping of each object only what `trim` leaves (the big kinds: Services, EndpointSlices, Nodes).
fn watch_trimmed<K>(api: Api<K>, tx: mpsc::UnboundedSender<()>, changes: &ApiChanges, trim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let changes = changes.clone();
    ferrolb_runtime::watch::watch_trimmed(
        api,
        tx,
        move |_| {
            changes.fetch_add(1, Ordering::Relaxed);
            Some(())
        },
        trim,
    )
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

/// What this node reports as announced: the plan's Services, narrowed to the addresses it actually answers for
/// (an address another node's MAC still answers for is held back, docs/design.md §6.5).
fn answered_only(
    planned: &BTreeMap<(String, String), plan::Announced>,
    answering: &BTreeSet<std::net::IpAddr>,
) -> BTreeMap<(String, String), plan::Announced> {
    planned
        .iter()
        .filter_map(|(key, a)| {
            let ips: BTreeSet<_> = a.ips.intersection(answering).copied().collect();
            (!ips.is_empty()).then(|| (key.clone(), plan::Announced { ips, ..a.clone() }))
        })
        .collect()
}

/// The Services (`namespace/name`) answered for, per address.
fn by_address(answered: &BTreeMap<(String, String), plan::Announced>) -> BTreeMap<std::net::IpAddr, BTreeSet<String>> {
    let mut out: BTreeMap<std::net::IpAddr, BTreeSet<String>> = BTreeMap::new();
    for ((namespace, name), a) in answered {
        for ip in &a.ips {
            out.entry(*ip).or_default().insert(format!("{namespace}/{name}"));
        }
    }
    out
}

/// Says when this node starts or stops hearing nothing from peers that show other signs of life.
fn tell_channel(reporter: &report::Reporter, settings: &Settings, before: &BTreeSet<String>, now: &BTreeSet<String>) {
    if before == now {
        return;
    }
    if now.is_empty() {
        tracing::info!("liveness channel healed: every live peer is heard again");
        reporter.node_event(
            EventKind::Normal,
            "LivenessChannelHealed",
            "every peer speaker whose node is alive is heard again over the liveness port".into(),
        );
        return;
    }
    let peers: Vec<&str> = now.iter().map(String::as_str).collect();
    let note = format!(
        "liveness channel broken: no heartbeat from {} over UDP {} although their nodes are alive (Lease renewed or          answering ARP); check firewalls and security groups for that port. Addresses stay with the nodes that          answer them (ARP evidence), but a real failure of those nodes is detected more slowly until this heals",
        peers.join(", "),
        settings.gossip_port
    );
    tracing::warn!(peers = ?peers, "{note}");
    reporter.node_event(EventKind::Warning, "LivenessChannelBroken", note);
}

/// Says which addresses this node answers for are claimed by someone else: a stranger (Warning on the Service,
/// naming the MAC) or another node (a log line; the two settle it, docs/design.md §6.5). At most once per
/// address and MAC every `QUIET`.
fn tell_conflicts(
    reporter: &report::Reporter,
    stats: &Stats,
    told: &mut BTreeMap<(std::net::IpAddr, Mac), std::time::Instant>,
    conflicts: Vec<Conflict>,
    services: &BTreeMap<(String, String), plan::Announced>,
    me: &str,
) {
    const QUIET: Duration = Duration::from_secs(60);
    let now = std::time::Instant::now();
    told.retain(|_, at| now.saturating_duration_since(*at) < QUIET * 10);
    for c in conflicts {
        if c.node.is_none()
            && let Ok(mut s) = stats.strangers.lock()
        {
            s.insert((c.ip, c.mac), now);
        }
        if told.get(&(c.ip, c.mac)).is_some_and(|at| now.saturating_duration_since(*at) < QUIET) {
            continue;
        }
        told.insert((c.ip, c.mac), now);
        let (ip, mac) = (c.ip, c.mac);
        match &c.node {
            Some(node) => {
                tracing::warn!(%ip, %mac, %node, kept = c.kept, "another node answers for an address this node answers for; the lower rank keeps it")
            }
            None => {
                let note = if c.kept {
                    format!(
                        "address {ip} is also claimed by MAC {mac}, which belongs to no node: another host uses this \
                         address (a static IP clash?). Node {me} keeps answering; remove the address from that host \
                         or from the pool"
                    )
                } else {
                    format!(
                        "address {ip} is already answered by MAC {mac}, which belongs to no node: another host uses \
                         this address (a static IP clash?), or a speaker from before an upgrade. Node {me} holds \
                         back; if that host is not yours, remove the address from it or from the pool"
                    )
                };
                tracing::warn!(%ip, %mac, "{note}");
                if let Some((key, a)) = services.iter().find(|(_, a)| a.ips.contains(&ip)) {
                    reporter.service_event(EventKind::Warning, "AddressConflict", key, &a.uid, note);
                }
            }
        }
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
    let api_changes: ApiChanges = Arc::default();
    let stores = Stores {
        services: watch_trimmed(Api::<Service>::all(client.clone()), tx.clone(), &api_changes, trim::service),
        slices: watch_trimmed(
            Api::<EndpointSlice>::all(client.clone()),
            tx.clone(),
            &api_changes,
            trim::endpoint_slice,
        ),
        nodes: watch_trimmed(Api::<Node>::all(client.clone()), tx.clone(), &api_changes, trim::node),
        ads: watch(Api::<L2Advertisement>::namespaced(client.clone(), &settings.namespace), tx.clone(), &api_changes),
        pools: watch(Api::<IPAddressPool>::namespaced(client.clone(), &settings.namespace), tx.clone(), &api_changes),
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
    // Not waited for: without the RBAC for kube-node-lease (an older chart) the speaker works, minus one sign.
    // A renewal wakes nobody: every kubelet renews every few seconds, and a full plan per renewal cost a
    // thousand-Service speaker 3 % of a core at idle; renewals are read on the wakes that happen anyway.
    let leases =
        ferrolb_runtime::watch::watch(Api::<Lease>::namespaced(client.clone(), "kube-node-lease"), tx.clone(), |_| {
            None::<()>
        });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(node = %settings.node, "caches synced");
    // Interfaces come and go: the kernel says when (netlink), and a slow rescan is the safety net for a missed
    // notification; without netlink, every tick rescans as before (docs/design.md §4.4).
    let netlink_due = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer_due = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let rescan_every = match netlink::watch(netlink_due.clone(), tx.clone()) {
        Ok(()) => {
            tracing::info!(safety_net = ?settings.interface_rescan, "watching interfaces through netlink");
            settings.interface_rescan
        }
        Err(e) => {
            tracing::warn!(error = %e, every = ?TICK, "no netlink notifications: reading interfaces on a timer");
            TICK
        }
    };
    let (tick, due) = (tx.clone(), timer_due.clone());
    tokio::spawn(async move {
        let mut last_rescan = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(TICK.min(rescan_every)).await;
            if last_rescan.elapsed() >= rescan_every {
                last_rescan = tokio::time::Instant::now();
                due.store(true, Ordering::Relaxed);
            }
            if tick.send(()).is_err() {
                return;
            }
        }
    });
    let membership: SharedMembership =
        Arc::new(std::sync::Mutex::new(Membership::new(&settings.node, settings.dead_after)));
    let peers = Arc::new(std::sync::RwLock::new(Vec::new()));
    let identity = Arc::new(Identity::new(&settings.node));
    let gossip = match &settings.gossip_key {
        Some(key) => {
            let socket = gossip::start(
                &settings,
                identity.clone(),
                key.clone(),
                membership.clone(),
                peers.clone(),
                tx.clone(),
                stats.clone(),
            )
            .map_err(|source| Error::RawSocket { interface: format!("udp/{}", settings.gossip_port), source })?;
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
    let ipv6_socket = gossip.as_ref().is_some_and(|(socket, _)| gossip::is_ipv6(socket));
    // The reporter reads only names and labels of the status objects (every node's, to delete stale ones), so the
    // API server sends only their metadata: with thousands of Services this was the speaker's largest cache.
    // Status objects are this speaker's own output: they never wake the planner.
    let l2statuses = ferrolb_runtime::watch::watch(
        Api::<PartialObjectMeta<ServiceL2Status>>::namespaced(client.clone(), &settings.namespace),
        tx.clone(),
        |_| None::<()>,
    );
    let reporter =
        report::Reporter { client: client.clone(), namespace: settings.namespace.clone(), node: settings.node.clone() };
    let mut last_services = BTreeMap::new();
    let (mut last_unannounced, mut last_failed) = (BTreeMap::new(), BTreeMap::new());
    let mut ipvs_warned = false;
    let mut interfaces = Vec::new();
    let listening_since = std::time::Instant::now();
    let schedule =
        Schedule { garp: settings.garp_schedule.clone(), refresh: settings.garp_refresh, timing: Timing::default() };
    let announcer = Announcer::spawn(stats.clone(), schedule, membership.clone(), tx.clone());
    let (mut renewals, mut last_unheard, mut told_conflicts) =
        (LeaseRenewals::default(), BTreeSet::new(), BTreeMap::new());
    let me = Me {
        node: &settings.node,
        load_balancer_class: settings.load_balancer_class.as_deref(),
        policy: settings.policy,
    };
    let (mut prepared, mut prepared_at) = (plan::Prepared::default(), None);
    let mut quiet_until = std::time::Instant::now();
    let _ = tx.send(());
    let main_loop = async {
        while rx.recv().await.is_some() {
            // During a burst of API changes (thousands of Services created at once) every event would start a
            // full pass over every Service right after the last one, keeping a core busy and starving the API
            // server on small nodes. So wakes are gathered for a while after a pass, in proportion to what it
            // cost (docs/design.md §4.6); after a quiet spell, as at a failover, nothing waits.
            tokio::time::sleep_until(quiet_until.into()).await;
            while rx.try_recv().is_ok() {}
            let pass_started = std::time::Instant::now();
            // Read the counter before the caches: a change landing in between marks the next wake stale too.
            let changes_now = api_changes.load(Ordering::Relaxed);
            let now = std::time::Instant::now();
            if prepared_at != Some(changes_now) {
                let snapshot = stores.snapshot();
                if let Ok(mut p) = peers.write() {
                    *p = gossip::peer_addresses(&snapshot.nodes, &settings.node, settings.gossip_port, ipv6_socket);
                }
                prepared = plan::prepare(&me, &snapshot);
                prepared_at = Some(changes_now);
            }
            // Interfaces and sysctls are read when netlink says they changed or the safety-net timer is due, not
            // on every API event: with thousands of Services, watch events come far more often than NICs change.
            let by_netlink = netlink_due.swap(false, Ordering::Relaxed);
            let by_timer = timer_due.swap(false, Ordering::Relaxed);
            if by_netlink || by_timer {
                let trigger = if by_netlink { "netlink" } else { "timer" };
                let now_interfaces = raw::interfaces(&settings.exclusions);
                if let Ok(mut counts) = stats.interface_rescans.lock() {
                    *counts.entry(trigger).or_default() += 1;
                }
                let changed = iface::changes(&interfaces, &now_interfaces);
                if !changed.is_empty() {
                    tracing::info!(trigger, changes = %changed.join(", "), "interfaces changed");
                }
                interfaces = now_interfaces;
                if let Ok(mut macs) = identity.macs.write() {
                    *macs = interfaces.iter().filter(|i| i.up).filter_map(|i| i.mac).filter(|m| *m != [0; 6]).collect();
                }
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
            let announcements = plan::decide(&me, &prepared, &interfaces, &view, heard_long_enough, now);
            stats.plans.fetch_add(1, Ordering::Relaxed);
            let took = u64::try_from(now.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.plan_micros.fetch_add(took, Ordering::Relaxed);
            let answered = answered_only(&announcements.services, &announcer.answering());
            if answered != last_services {
                if let Ok(mut announced) = stats.announced.lock() {
                    *announced = by_address(&answered);
                }
                reporter.report(&last_services, &answered, &l2statuses.state());
                last_services = answered;
            }
            tell_conflicts(
                &reporter,
                &stats,
                &mut told_conflicts,
                announcer.take_conflicts(),
                &announcements.services,
                &settings.node,
            );
            if gossip.is_some() {
                renewals.observe(&leases.state(), now);
                let node_macs: BTreeMap<Mac, String> =
                    view.node_macs().into_iter().map(|(mac, node)| (Mac(mac), node)).collect();
                let seen = signs::latest(renewals.signs(), signs::from_arp(&announcer.held_back(), &node_macs, now));
                let unheard = view.unheard_but_alive(&seen, now);
                stats.unheard_live_peers.store(unheard.len() as u64, Ordering::Relaxed);
                tell_channel(&reporter, &settings, &last_unheard, &unheard);
                last_unheard = unheard;
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
            quiet_until = std::time::Instant::now() + (pass_started.elapsed() * PACE).min(MAX_GATHER);
        }
    };
    tokio::select! {
        () = main_loop => {}
        () = shutdown => {
            // Stop answering first, then tell every peer.
            announcer.stop();
            if let Some((socket, key)) = &gossip {
                let targets = peers.read().map(|p| p.clone()).unwrap_or_default();
                gossip::say_leaving(socket, key, &identity, &targets).await;
            }
            tracing::info!("left: peers move this node's addresses now");
        }
    }
    Ok(())
}
