//! The watch caches the speaker reads: the kinds the plan reads (each change wakes the planner with
//! [`Wake::Api`]; the release's speaker pods among them, which say where speakers run), node Leases (read on wakes, never a wake themselves) and the metadata of the ServiceL2Status
//! objects (the status writer's listing; they are the speaker's own output and never wake the planner).

use crate::error::{Error, Result};
use crate::kube::trim;
use crate::model::digest::{self, ServiceDigest, SliceDigest};
use crate::model::facts;
use crate::model::plan::Snapshot;
use crate::model::status::Listed;
use crate::settings::Settings;
use crate::wake::{Wake, WakeSender};
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_runtime::watch::Digests;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// How long the speaker pods may take to be listed before the speaker says it works without them.
const SPEAKER_PODS_PATIENCE: Duration = Duration::from_secs(10);

/// The watch caches.
pub struct Stores {
    services: Digests<ServiceDigest>,
    slices: Digests<SliceDigest>,
    nodes: Store<Node>,
    ads: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
    /// Node Leases (kube-node-lease): a sign of life that does not travel over the liveness port.
    pub leases: Store<Lease>,
    /// The ServiceL2Status objects of every node, as the status writer lists them.
    pub statuses: Digests<Listed>,
    /// Notified when the status objects change.
    pub statuses_changed: Arc<Notify>,
    speakers: SpeakerPods,
}

/// The release's speaker pods, once listed: which nodes run a speaker (liveness peers and candidates).
struct SpeakerPods {
    /// This node (its own speaker pod must be among them for the list to be believed).
    node: String,
    /// `None` without a selector.
    pods: Option<Store<Pod>>,
    /// Set once the first list arrived: until then the pods are unknown, not absent.
    listed: Arc<AtomicBool>,
    /// The last snapshot's list was set aside (said once per change, not every pass).
    distrusted: AtomicBool,
}

impl SpeakerPods {
    /// Starts the watch when there is a selector; never waits for it (start-up must not hang on a permission an
    /// older chart does not grant): until the first list the speaker works as without one, and says so once.
    fn start(client: &Client, settings: &Settings, wake: &WakeSender) -> Self {
        let listed = Arc::new(AtomicBool::new(false));
        let pods = match &settings.speaker_pod_selector {
            None => {
                tracing::warn!(
                    "no speaker pod selector (FERROLB_SPEAKER_POD_SELECTOR, set by the chart): every node counts as \
                     running a speaker, so heartbeats go to every Node"
                );
                None
            }
            Some(selector) => {
                let config = watcher::Config::default().labels(selector);
                let store = ferrolb_runtime::watch::watch_selected(
                    Api::namespaced(client.clone(), &settings.namespace),
                    config,
                    wake.clone(),
                    |_| Some(Wake::Api),
                    trim::pod,
                );
                let (waiting, flag, woken, selector) = (store.clone(), listed.clone(), wake.clone(), selector.clone());
                tokio::spawn(async move {
                    if tokio::time::timeout(SPEAKER_PODS_PATIENCE, waiting.wait_until_ready()).await.is_err() {
                        tracing::warn!(
                            %selector,
                            "speaker pods not listed yet (no RBAC for pods from an older chart?): heartbeats go to \
                             every Node until they are"
                        );
                        if waiting.wait_until_ready().await.is_err() {
                            return;
                        }
                    }
                    flag.store(true, Ordering::Relaxed);
                    let nodes = facts::speaker_nodes(waiting.state().iter().map(AsRef::as_ref), None);
                    tracing::info!(%selector, nodes = nodes.map_or(0, |n| n.len()), "speaker pods listed: liveness peers are the nodes that run a speaker");
                    let _ = woken.send(Wake::Api);
                });
                Some(store)
            }
        };
        Self { node: settings.node.clone(), pods, listed, distrusted: AtomicBool::new(false) }
    }

    /// The nodes that run a speaker, or `None` while unknown.
    fn nodes(&self) -> Option<BTreeSet<String>> {
        let pods = self.pods.as_ref().filter(|_| self.listed.load(Ordering::Relaxed))?;
        let listed = pods.state();
        let nodes = facts::speaker_nodes(listed.iter().map(AsRef::as_ref), Some(&self.node));
        let distrusted = nodes.is_none();
        if self.distrusted.swap(distrusted, Ordering::Relaxed) != distrusted {
            if distrusted {
                tracing::warn!(
                    node = %self.node,
                    pods = listed.len(),
                    "this node's own speaker pod is not among the listed speaker pods (selector wrong, or a cache \
                     behind): every node counts as running a speaker until it is"
                );
            } else {
                tracing::info!(node = %self.node, "this node's speaker pod is listed again");
            }
        }
        nodes
    }
}

/// A cache of `K` that wakes the planner on every change, keeping of each object only what `trim` leaves.
fn planned<K>(api: Api<K>, wake: &WakeSender, trim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    ferrolb_runtime::watch::watch_trimmed(api, wake.clone(), |_| Some(Wake::Api), trim)
}

/// A cache of digests of `K` that wakes the planner on every change.
fn digested<K, D>(api: Api<K>, wake: &WakeSender, digest: fn(&K) -> D) -> Digests<D>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    D: Send + Sync + 'static,
{
    ferrolb_runtime::watch::watch_digested(api, watcher::Config::default(), wake.clone(), |_| Some(Wake::Api), digest)
}

/// A cache of `K` that wakes nobody.
fn quiet<K>(api: Api<K>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    // The channel is never read: the caches' events are dropped and only their contents used.
    let (unread, _) = mpsc::unbounded_channel::<()>();
    ferrolb_runtime::watch::watch(api, unread, |_| None)
}

impl Stores {
    /// Starts every watch and waits until the caches the plan reads are filled (not the speaker pods: see
    /// [`SpeakerPods::start`]).
    pub async fn start(client: &Client, settings: &Settings, wake: &WakeSender) -> Result<Self> {
        let namespace = settings.namespace.as_str();
        let statuses_changed = Arc::new(Notify::new());
        let notify = statuses_changed.clone();
        let (status_events, mut status_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            while status_rx.recv().await.is_some() {
                notify.notify_one();
            }
        });
        let stores = Self {
            services: digested(Api::all(client.clone()), wake, digest::service),
            slices: digested(Api::all(client.clone()), wake, digest::endpoint_slice),
            nodes: planned(Api::all(client.clone()), wake, trim::node),
            ads: planned(Api::namespaced(client.clone(), namespace), wake, |_| {}),
            pools: planned(Api::namespaced(client.clone(), namespace), wake, |_| {}),
            // Not waited for: without the RBAC for kube-node-lease (an older chart) the speaker works, minus one
            // sign. A renewal wakes nobody: every kubelet renews every few seconds, and a full plan per renewal
            // cost a thousand-Service speaker 3 % of a core at idle; renewals are read on the wakes that happen
            // anyway.
            leases: quiet(Api::namespaced(client.clone(), "kube-node-lease")),
            // Only names and labels (every node's, to delete stale ones), as metadata, digested: with thousands of
            // Services the whole objects were the speaker's largest cache.
            statuses: ferrolb_runtime::watch::watch_digested(
                Api::<PartialObjectMeta<ServiceL2Status>>::namespaced(client.clone(), namespace),
                watcher::Config::default(),
                status_events,
                |_| Some(()),
                digest::listed,
            ),
            statuses_changed,
            speakers: SpeakerPods::start(client, settings, wake),
        };
        for (what, ready) in [
            ("Services", stores.services.wait_until_ready().await),
            ("EndpointSlices", stores.slices.wait_until_ready().await),
            ("Nodes", stores.nodes.wait_until_ready().await.is_ok()),
            ("L2Advertisements", stores.ads.wait_until_ready().await.is_ok()),
            ("IPAddressPools", stores.pools.wait_until_ready().await.is_ok()),
        ] {
            if !ready {
                return Err(Error::CacheSync(what.into()));
            }
        }
        Ok(stores)
    }

    /// The API state the plan reads, as the caches hold it now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            slices: self.slices.state(),
            nodes: self.nodes.state(),
            ads: self.ads.state(),
            pools: self.pools.state(),
            speaker_nodes: self.speakers.nodes(),
        }
    }
}
