//! The watch caches the speaker reads: the kinds the plan reads (each change wakes the planner with
//! [`Wake::Api`]), node Leases (read on wakes, never a wake themselves) and the metadata of the ServiceL2Status
//! objects (the status writer's listing; they are the speaker's own output and never wake the planner).

use crate::error::{Error, Result};
use crate::kube::trim;
use crate::model::plan::Snapshot;
use crate::wake::{Wake, WakeSender};
use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};

/// The watch caches.
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    ads: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
    /// Node Leases (kube-node-lease): a sign of life that does not travel over the liveness port.
    pub leases: Store<Lease>,
    /// Metadata of the ServiceL2Status objects of every node.
    pub statuses: Store<PartialObjectMeta<ServiceL2Status>>,
    /// Notified when the status objects change.
    pub statuses_changed: Arc<Notify>,
}

/// A cache of `K` that wakes the planner on every change, keeping of each object only what `trim` leaves.
fn planned<K>(api: Api<K>, wake: &WakeSender, trim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    ferrolb_runtime::watch::watch_trimmed(api, wake.clone(), |_| Some(Wake::Api), trim)
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
    /// Starts every watch and waits until the caches the plan reads are filled.
    pub async fn start(client: &Client, namespace: &str, wake: &WakeSender) -> Result<Self> {
        let statuses_changed = Arc::new(Notify::new());
        let notify = statuses_changed.clone();
        let (status_events, mut status_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            while status_rx.recv().await.is_some() {
                notify.notify_one();
            }
        });
        let stores = Self {
            services: planned(Api::all(client.clone()), wake, trim::service),
            slices: planned(Api::all(client.clone()), wake, trim::endpoint_slice),
            nodes: planned(Api::all(client.clone()), wake, trim::node),
            ads: planned(Api::namespaced(client.clone(), namespace), wake, |_| {}),
            pools: planned(Api::namespaced(client.clone(), namespace), wake, |_| {}),
            // Not waited for: without the RBAC for kube-node-lease (an older chart) the speaker works, minus one
            // sign. A renewal wakes nobody: every kubelet renews every few seconds, and a full plan per renewal
            // cost a thousand-Service speaker 3 % of a core at idle; renewals are read on the wakes that happen
            // anyway.
            leases: quiet(Api::namespaced(client.clone(), "kube-node-lease")),
            // Only names and labels (every node's, to delete stale ones): with thousands of Services the whole
            // objects were the speaker's largest cache.
            statuses: ferrolb_runtime::watch::watch(Api::namespaced(client.clone(), namespace), status_events, |_| {
                Some(())
            }),
            statuses_changed,
        };
        for (what, ready) in [
            ("Services", stores.services.wait_until_ready().await.is_ok()),
            ("EndpointSlices", stores.slices.wait_until_ready().await.is_ok()),
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
        }
    }
}
