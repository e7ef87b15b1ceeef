//! Keeping one component's `ConfigurationState` object as its owner last reported it (docs/design.md §7.6).
//!
//! The object is desired state: the component reports its problems with [`Reporter::report`], and a task makes
//! the object say so, and keeps it saying so: it is created again when deleted (MetalLB's self-heal), put right
//! when edited, and every failed write is retried with backoff. What to write is decided by the pure
//! [`desired`]; this module only reads the object and applies the difference.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

use ferrolb_crds::configurationstate::{self as cs, ConfigurationState, ConfigurationStateStatus};

/// Which component an object reports for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Namespace of the object (the release namespace).
    pub namespace: String,
    /// `controller`, or `speaker-<node>`.
    pub name: String,
    /// Its labels, exactly (MetalLB's e2e compares them).
    pub labels: BTreeMap<String, String>,
    /// The component's own Pod, when known: the object's owner, so it goes with the Pod.
    pub pod: Option<String>,
    /// The condition type the component reports.
    pub condition: &'static str,
    /// Field manager of the status it writes.
    pub manager: &'static str,
}

impl Identity {
    /// The controller's object.
    pub fn controller(namespace: &str, pod: Option<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: cs::CONTROLLER_NAME.into(),
            labels: BTreeMap::from([(cs::COMPONENT_LABEL.into(), "controller".into())]),
            pod,
            condition: cs::CONTROLLER_CONDITION,
            manager: cs::CONTROLLER_MANAGER,
        }
    }

    /// The speaker's object on `node`.
    pub fn speaker(namespace: &str, node: &str, pod: Option<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: cs::speaker_name(node),
            labels: BTreeMap::from([
                (cs::COMPONENT_LABEL.into(), "speaker".into()),
                (cs::NODE_LABEL.into(), node.into()),
            ]),
            pod,
            condition: cs::SPEAKER_CONDITION,
            manager: cs::SPEAKER_MANAGER,
        }
    }
}

/// The whole status the object should have for `problems` (pure). The condition keeps the live one's transition
/// time while its status is the same, as a Condition's `lastTransitionTime` means. Any other condition (a
/// MetalLB component's, left on an object taken over in a migration) is dropped: ferrolb writes the whole
/// status, so `result` always follows from the conditions shown beside it.
pub fn desired(
    kind: &str,
    problems: &[String],
    live: Option<&ConfigurationStateStatus>,
    now: k8s_openapi::jiff::Timestamp,
) -> ConfigurationStateStatus {
    let mut condition = cs::condition(kind, problems, now);
    let same = |c: &&Condition| c.type_ == condition.type_ && c.status == condition.status;
    if let Some(previous) = live.and_then(|s| s.conditions.iter().find(same)) {
        condition.last_transition_time = previous.last_transition_time.clone();
    }
    let conditions = vec![condition];
    let (result, summary) = cs::verdict(&conditions);
    ConfigurationStateStatus {
        result: Some(result.into()),
        error_summary: (!summary.is_empty()).then_some(summary),
        conditions,
    }
}

/// Whether the live object already says what it should (labels, owner and status).
fn up_to_date(
    live: &ConfigurationState,
    id: &Identity,
    owner: Option<&OwnerReference>,
    want: &ConfigurationStateStatus,
) -> bool {
    let labels_ok = live.metadata.labels.as_ref().is_some_and(|l| id.labels.iter().all(|(k, v)| l.get(k) == Some(v)));
    let owner_ok = owner.is_none_or(|o| live.metadata.owner_references.iter().flatten().any(|r| r.uid == o.uid));
    labels_ok && owner_ok && live.status.as_ref() == Some(want)
}

/// Hands problems to the writer task.
#[derive(Clone)]
pub struct Reporter {
    tx: watch::Sender<Option<Vec<String>>>,
}

impl Reporter {
    /// Reports the configuration problems found now (empty: valid). Cheap: the task writes only a change.
    pub fn report(&self, mut problems: Vec<String>) {
        problems.sort();
        problems.dedup();
        self.tx.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&problems);
            *current = Some(problems);
            changed
        });
    }
}

/// Starts the task that keeps the object; it runs until the process ends.
pub fn spawn(client: kube::Client, id: Identity) -> Reporter {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(keep(client, id, rx));
    Reporter { tx }
}

/// How long to wait before trying a failed write again, doubling up to 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(30))
}

async fn keep(client: kube::Client, id: Identity, mut reports: watch::Receiver<Option<Vec<String>>>) {
    use futures::StreamExt;
    let api: Api<ConfigurationState> = Api::namespaced(client.clone(), &id.namespace);
    let fields = format!("metadata.name={}", id.name);
    // Changes to the object itself (deleted, edited) wake the loop; the stream's items are not needed.
    // Backed off as every other watch here, so a failing list (the CRD not yet established, a Role without
    // `watch`) is retried at a sane rate instead of in a loop.
    let mut changes =
        watcher::watcher(api.clone(), watcher::Config::default().fields(&fields)).default_backoff().boxed();
    // The owner, once looked up: `None` not yet, `Some(None)` when there is no such Pod (a process, not a Pod).
    let mut owner: Option<Option<OwnerReference>> = None;
    let mut failures = 0u32;
    loop {
        let problems = reports.borrow_and_update().clone();
        if let Some(problems) = problems {
            if owner.is_none() {
                owner = match &id.pod {
                    Some(pod) => own_pod(&client, &id.namespace, pod).await,
                    None => Some(None),
                };
            }
            match sync(&api, &id, owner.clone().flatten().as_ref(), &problems).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    tracing::warn!(object = %id.name, error = %e, retry_in = ?wait, "writing ConfigurationState failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = changes.next() => {}
            // A backstop: a missed watch event costs at most this long.
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// The component's own Pod as an owner reference (not a controller reference, as MetalLB writes it):
/// `Some(None)` when there is no such Pod, `None` when it could not be read (asked again on the next write).
async fn own_pod(client: &kube::Client, namespace: &str, name: &str) -> Option<Option<OwnerReference>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.get_opt(name).await {
        Ok(pod) => Some(pod.and_then(|pod| pod.metadata.uid).map(|uid| OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid,
            ..OwnerReference::default()
        })),
        Err(e) => {
            tracing::debug!(pod = name, error = %e, "own Pod not readable; ConfigurationState written without owner");
            None
        }
    }
}

async fn sync(
    api: &Api<ConfigurationState>,
    id: &Identity,
    owner: Option<&OwnerReference>,
    problems: &[String],
) -> Result<(), kube::Error> {
    let live = api.get_opt(&id.name).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let want = desired(id.condition, problems, live.as_ref().and_then(|l| l.status.as_ref()), now);
    if live.as_ref().is_some_and(|l| up_to_date(l, id, owner, &want)) {
        return Ok(());
    }
    if live.is_none() {
        let mut object = ConfigurationState::new(&id.name);
        object.metadata.namespace = Some(id.namespace.clone());
        object.metadata.labels = Some(id.labels.clone());
        object.metadata.owner_references = owner.map(|o| vec![o.clone()]);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => tracing::info!(object = %id.name, "ConfigurationState created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    } else {
        let mut metadata = serde_json::json!({"labels": id.labels});
        if let Some(o) = owner {
            let mut refs: Vec<OwnerReference> = live
                .iter()
                .flat_map(|l| l.metadata.owner_references.iter().flatten())
                .filter(|r| !(r.kind == "Pod" && r.name == o.name))
                .cloned()
                .collect();
            refs.push(o.clone());
            metadata["ownerReferences"] = serde_json::json!(refs);
        }
        api.patch(&id.name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"metadata": metadata}))).await?;
    }
    // A merge patch replaces the condition list and removes an emptied summary: the status is ferrolb's whole, so
    // conditions another component left cannot contradict `result`. Written under MetalLB's field manager names.
    let status = serde_json::json!({"status": {
        "result": want.result,
        "errorSummary": want.error_summary,
        "conditions": want.conditions,
    }});
    let params = PatchParams { field_manager: Some(id.manager.to_string()), ..PatchParams::default() };
    api.patch_status(&id.name, &params, &Patch::Merge(&status)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_when_the_condition_changes() {
        let t0 = k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time");
        let t1 = k8s_openapi::jiff::Timestamp::from_second(2_000).expect("time");
        let valid = desired(cs::CONTROLLER_CONDITION, &[], None, t0);
        assert_eq!((valid.result.as_deref(), valid.error_summary.as_deref()), (Some("Valid"), None));
        let again = desired(cs::CONTROLLER_CONDITION, &[], Some(&valid), t1);
        assert_eq!(again, valid, "nothing changed: nothing to write");
        let broken = desired(cs::CONTROLLER_CONDITION, &["pool \"lab\": bad".into()], Some(&valid), t1);
        assert_eq!(broken.result.as_deref(), Some("Invalid"));
        assert_eq!(broken.error_summary.as_deref(), Some("configuration error: pool \"lab\": bad"));
        assert_eq!(broken.conditions[0].last_transition_time.0, t1);
        assert_eq!(broken.conditions[0].reason, "ConfigurationError");
        let t2 = k8s_openapi::jiff::Timestamp::from_second(3_000).expect("time");
        let worse = desired(cs::CONTROLLER_CONDITION, &["pool \"lab\": worse".into()], Some(&broken), t2);
        assert_eq!(worse.conditions[0].last_transition_time.0, t1, "still False: the transition was at t1");
        assert!(worse.error_summary.is_some_and(|s| s.contains("worse")));
    }

    #[test]
    fn conditions_left_by_another_component_are_dropped_so_the_result_matches_what_is_shown() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time");
        let metallbs = cs::condition("nodeReconcilerValid", &["stale".into()], now);
        let live = ConfigurationStateStatus {
            result: Some("Invalid".into()),
            error_summary: Some(metallbs.message.clone()),
            conditions: vec![metallbs],
        };
        let ours = desired(cs::SPEAKER_CONDITION, &[], Some(&live), now);
        assert_eq!(ours.conditions.len(), 1);
        assert_eq!(ours.conditions[0].type_, cs::SPEAKER_CONDITION);
        assert_eq!((ours.result.as_deref(), ours.error_summary), (Some("Valid"), None));
    }

    #[test]
    fn backoff_doubles_and_stops_at_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
