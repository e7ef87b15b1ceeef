//! Configuration in the wrong namespace. ferrolb reads IPAddressPools and L2Advertisements only in its own
//! namespace, as MetalLB does; one created anywhere else used to be ignored in silence. The leader watches their
//! metadata cluster-wide and says so on the object itself, once per object.

use crate::events::publish;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use ferrolb_runtime::events::EventKind;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeSet;

/// Reason of the Warning Event on a configuration object outside the configuration namespace.
pub const REASON: &str = "IgnoredNamespace";

/// What to tell about a `kind` object in `namespace` when configuration is read from `configured` (pure).
pub fn misplaced(kind: &str, namespace: &str, configured: &str) -> Option<String> {
    (namespace != configured).then(|| {
        format!(
            "ignored: ferrolb reads {kind}s only in namespace {configured} (its release namespace); create this one \
             there"
        )
    })
}

/// Watches pools and advertisements in every namespace and tells about each misplaced one (runs until the
/// watch ends; a watch error is retried with backoff).
pub async fn tell(client: Client, configured: String, identity: String) {
    let pools = events::<IPAddressPool>(&client, "IPAddressPool");
    let ads = events::<L2Advertisement>(&client, "L2Advertisement");
    let mut both = std::pin::pin!(futures::stream::select(pools, ads));
    let mut told = BTreeSet::new();
    while let Some(seen) = both.next().await {
        let Some(note) = misplaced(seen.kind, &seen.namespace, &configured) else { continue };
        // Once per object: a new object of the same name (another uid) is told again.
        if !told.insert(seen.uid.clone()) {
            continue;
        }
        tracing::warn!(
            kind = seen.kind,
            namespace = %seen.namespace,
            name = %seen.name,
            %configured,
            "configuration outside the configuration namespace is ignored"
        );
        publish(&client, &identity, seen.reference, EventKind::Warning, REASON, note).await;
    }
}

/// A pool or advertisement as seen by the watch.
struct Seen {
    kind: &'static str,
    namespace: String,
    name: String,
    uid: String,
    reference: ObjectReference,
}

/// Every object of kind `K` seen (created, changed, or listed at start), from its metadata only.
fn events<K>(client: &Client, kind: &'static str) -> impl futures::Stream<Item = Seen> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), watcher::Config::default()).default_backoff().filter_map(
        move |event| async move {
            match event {
                Ok(watcher::Event::Apply(meta) | watcher::Event::InitApply(meta)) => Some(Seen {
                    kind,
                    namespace: meta.namespace().unwrap_or_default(),
                    name: meta.name_any(),
                    uid: meta.uid().unwrap_or_default(),
                    reference: meta.object_ref(&()),
                }),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch error; retrying with backoff");
                    None
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_outside_the_configuration_namespace_are_told_about() {
        assert_eq!(misplaced("IPAddressPool", "metallb-system", "metallb-system"), None);
        let note = misplaced("L2Advertisement", "default", "metallb-system").expect("misplaced");
        assert!(note.contains("L2Advertisements only in namespace metallb-system"), "{note}");
    }
}
