//! The speaker's I/O shell: watch what decides ownership, elect, keep the raw-socket responders' owned set
//! current, and announce takeovers with gratuitous ARP.

use crate::election::{self, NodeFacts};
use crate::error::{Error, Result};
use crate::iface::{self, InterfaceInfo};
use crate::raw::{self, Owned, Responder, Stats};
use crate::view;
use ferrolb_controller::pool::PoolConfig;
use ferrolb_controller::service::is_managed;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
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
}

fn watch<K>(api: Api<K>, tx: mpsc::UnboundedSender<()>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
            }
        }
    });
    reader
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    ads: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
}

/// For every address this node should answer: the interfaces to answer on (pure over the stores' contents).
fn desired(settings: &Settings, s: &Stores, interfaces: &[InterfaceInfo]) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
    let nodes: Vec<NodeFacts> = s.nodes.state().iter().map(|n| view::node_facts(n)).collect();
    let pools: Vec<(Arc<IPAddressPool>, PoolConfig)> = s
        .pools
        .state()
        .into_iter()
        .filter_map(|p| PoolConfig::from_spec(&p.name_any(), &p.spec).ok().map(|c| (p, c)))
        .collect();
    let ads: Vec<Arc<L2Advertisement>> = s.ads.state();
    let ad_refs: Vec<&L2Advertisement> = ads.iter().map(AsRef::as_ref).collect();
    let slices = s.slices.state();
    let mut out = BTreeMap::new();
    for svc in s.services.state() {
        if !is_managed(&svc, settings.load_balancer_class.as_deref()) {
            continue;
        }
        let name = svc.name_any();
        let namespace = svc.namespace().unwrap_or_default();
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|sl| {
                sl.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && sl.labels().get("kubernetes.io/service-name") == Some(&name)
            })
            .map(AsRef::as_ref)
            .collect();
        let facts = view::service_facts(&svc, &own_slices);
        for ip in ferrolb_controller::status::current_ingress(&svc) {
            let IpAddr::V4(v4) = ip else { continue };
            let Some((pool, _)) = pools.iter().find(|(_, c)| c.contains_usable(ip)) else { continue };
            let applicable = view::advertisements_for(pool, &svc, &ad_refs);
            if election::elect(ip, &facts, &nodes, &applicable) != Some(settings.node.as_str()) {
                continue;
            }
            let allowed: BTreeSet<String> = applicable.iter().flat_map(|a| a.interfaces.iter().cloned()).collect();
            let usable = iface::usable(interfaces, &allowed);
            let on: BTreeSet<String> = iface::for_address(&usable, v4).iter().map(|i| i.name.clone()).collect();
            out.entry(v4).or_insert_with(BTreeSet::new).extend(on);
        }
    }
    out
}

/// Runs the speaker until the process stops.
pub async fn run(
    client: Client,
    settings: Settings,
    stats: Arc<Stats>,
    ready: Arc<std::sync::atomic::AtomicBool>,
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
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if tick.send(()).is_err() {
                return;
            }
        }
    });
    let owned: Owned = Arc::default();
    let mut responders: BTreeMap<String, Arc<Responder>> = BTreeMap::new();
    let _ = tx.send(());
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        let interfaces = raw::interfaces();
        let want = desired(&settings, &stores, &interfaces);
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
        if before == want {
            continue;
        }
        if let Ok(mut o) = owned.write() {
            *o = want.clone();
        }
        for ip in before.keys().filter(|ip| !want.contains_key(ip)) {
            tracing::info!(%ip, "no longer the owner; stopped answering");
        }
        for (ip, on) in want.iter().filter(|(ip, on)| before.get(ip) != Some(on)) {
            tracing::info!(%ip, interfaces = ?on, "took ownership; announcing");
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
    Ok(())
}
