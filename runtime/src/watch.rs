//! Watch caches: a reflector per kind that retries with backoff, keeps only what decisions read, and turns
//! its events into the owner's wake-up triggers.

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;

/// kubectl's copy of the last applied manifest, kept in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Runs a reflector (retrying with backoff) and turns its events into triggers sent on `tx`.
pub fn watch<K, T, F>(api: Api<K>, tx: mpsc::UnboundedSender<T>, to_trigger: F) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: Send + 'static,
    F: Fn(&watcher::Event<K>) -> Option<T> + Send + 'static,
{
    watch_trimmed(api, tx, to_trigger, |_| {})
}

/// [`watch`], also passing every object through `trim` before it is stored, so that a cache holds only the
/// fields its owner reads.
pub fn watch_trimmed<K, T, F, M>(api: Api<K>, tx: mpsc::UnboundedSender<T>, to_trigger: F, trim: M) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: Send + 'static,
    F: Fn(&watcher::Event<K>) -> Option<T> + Send + 'static,
    M: Fn(&mut K) + Send + 'static,
{
    watch_selected(api, watcher::Config::default(), tx, to_trigger, trim)
}

/// [`watch_trimmed`] of only the objects `config` selects (e.g. a label selector).
pub fn watch_selected<K, T, F, M>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<T>,
    to_trigger: F,
    trim: M,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: Send + 'static,
    F: Fn(&watcher::Event<K>) -> Option<T> + Send + 'static,
    M: Fn(&mut K) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields and kubectl's last-applied copy are often most of an object's size, and nothing reads them.
    let trimmed = watcher(api, config).default_backoff().modify(move |obj| {
        obj.managed_fields_mut().clear();
        obj.annotations_mut().remove(LAST_APPLIED);
        trim(obj);
    });
    let stream = reflector::reflector(writer, trimmed);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => {
                    if let Some(t) = to_trigger(&ev)
                        && tx.send(t).is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
            }
        }
    });
    reader
}

/// A watch cache that keeps of each object only its digest: a small value of the owner's own type made by a
/// pure function, instead of the whole typed object. With thousands of objects the typed structs are most of a
/// process's memory even when trimmed (a `Service` is about a kilobyte of mostly empty fields before any string),
/// so the speaker and the controller keep only what their decisions read (docs/design.md §4.6).
pub struct Digests<D> {
    objects: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<D>>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<D> Clone for Digests<D> {
    fn clone(&self) -> Self {
        Self { objects: self.objects.clone(), ready: self.ready.clone() }
    }
}

impl<D> Digests<D> {
    /// The digests of every object now (in no particular order).
    pub fn state(&self) -> Vec<std::sync::Arc<D>> {
        self.objects.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The digest of the object `namespace/name` (`""` as the namespace of a cluster-scoped one).
    pub fn get(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<D>> {
        self.objects.read().ok()?.get(&format!("{namespace}/{name}")).cloned()
    }

    /// Waits until the first complete list has been stored; `false` if the watch ended before.
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }
}

/// The key a digest is stored under: `namespace/name` (`/name` for cluster-scoped objects).
fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// [`watch_selected`], keeping of each object only `digest(obj)`. Follows the watcher's relist protocol as the
/// reflector does: a relist is gathered aside and replaces the stored set only once complete.
pub fn watch_digested<K, D, T, F, M>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<T>,
    to_trigger: F,
    digest: M,
) -> Digests<D>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    D: Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(&watcher::Event<K>) -> Option<T> + Send + 'static,
    M: Fn(&K) -> D + Send + 'static,
{
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let cache = Digests { objects: Default::default(), ready };
    let objects = cache.objects.clone();
    let stream = watcher(api, config).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut relisted: Option<std::collections::HashMap<String, std::sync::Arc<D>>> = None;
        while let Some(event) = stream.next().await {
            let ev = match event {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; retrying with backoff");
                    continue;
                }
            };
            match &ev {
                watcher::Event::Init => relisted = Some(Default::default()),
                watcher::Event::InitApply(obj) => {
                    relisted.get_or_insert_default().insert(object_key(obj), std::sync::Arc::new(digest(obj)));
                }
                watcher::Event::InitDone => {
                    if let Ok(mut stored) = objects.write() {
                        *stored = relisted.take().unwrap_or_default();
                    }
                    let _ = ready_tx.send(true);
                }
                watcher::Event::Apply(obj) => {
                    if let Ok(mut stored) = objects.write() {
                        stored.insert(object_key(obj), std::sync::Arc::new(digest(obj)));
                    }
                }
                watcher::Event::Delete(obj) => {
                    if let Ok(mut stored) = objects.write() {
                        stored.remove(&object_key(obj));
                    }
                }
            }
            if let Some(t) = to_trigger(&ev)
                && tx.send(t).is_err()
            {
                return;
            }
        }
    });
    cache
}
