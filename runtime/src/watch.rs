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
