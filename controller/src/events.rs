//! Events as this controller replica (reporting controller `ferrolb.io/controller`, instance = its identity).

use ferrolb_runtime::events::EventKind;
use kube::Client;

/// Publishes one Event as this controller replica; a failure is logged, never fatal.
pub async fn publish(
    client: &Client,
    identity: &str,
    regarding: k8s_openapi::api::core::v1::ObjectReference,
    kind: EventKind,
    reason: &str,
    note: String,
) {
    let event = ferrolb_runtime::events::EventSpec {
        kind,
        reason,
        note,
        controller: "ferrolb.io/controller",
        instance: identity,
    };
    if let Err(e) = ferrolb_runtime::events::publish(client, regarding, event).await {
        tracing::warn!(error = %e, reason, "cannot publish Event");
    }
}
