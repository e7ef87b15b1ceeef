//! The ServiceL2Status writer: one long-lived task per speaker that makes the API say what this node answers
//! for. It is handed the desired state (latest wins), runs the pure [`crate::model::status::writes`] against what
//! it knows it wrote, and applies the writes one after another, so they never overtake each other. A write that
//! fails is not forgotten: the task tries the whole difference again with backoff until the API agrees, whether
//! or not anything else changes. Wakes also come from the status objects' own watch, so an object deleted by
//! someone else is written again.

use crate::model::plan::Announced;
use crate::model::status::{Content, Listed, NODE_LABEL, SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL, Write, writes};
use ferrolb_crds::ServiceL2Status;
use ferrolb_crds::service::ServiceKey;
use ferrolb_runtime::watch::Digests;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How a failed write is answered by a call that did nothing harmful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The object already exists (a create).
    AlreadyExists,
    /// The object does not exist (an update or delete).
    NotFound,
    /// Anything else: tried again later.
    Other(String),
}

/// The three calls the writer makes, and the listing it reads; the API server in production, a stub in tests.
pub trait StatusApi: Send + Sync + 'static {
    /// Status objects as the watch cache lists them.
    fn listed(&self) -> Vec<Listed>;
    /// Creates an empty object with these labels.
    fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Writes an object's status.
    fn write_status(
        &self,
        name: &str,
        status: serde_json::Value,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Deletes an object.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// Retry timing: the first retry after `first`, doubling up to `max`; back to `first` once a pass succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first retry.
    pub first: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

/// What this node answers for, as handed over; `None` until the planner's first pass, so a starting speaker
/// does not take "nothing yet" for "nothing" and delete its objects.
type Desired = Option<BTreeMap<ServiceKey, Announced>>;

/// The handle the speaker holds: hand over what this node answers for; the task does the rest.
pub struct StatusWriter {
    desired: watch::Sender<Desired>,
}

impl StatusWriter {
    /// Starts the writer task for `node`. `listing_changed` is notified when the status objects' watch sees a
    /// change.
    pub fn spawn<A: StatusApi>(api: A, node: String, listing_changed: Arc<Notify>, backoff: Backoff) -> Self {
        let (desired, desired_rx) = watch::channel(None);
        tokio::spawn(run(api, node, desired_rx, listing_changed, backoff));
        Self { desired }
    }

    /// What this node answers for now; the API is brought to say so (latest wins).
    pub fn set(&self, answered: BTreeMap<ServiceKey, Announced>) {
        self.desired.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&answered);
            *current = Some(answered);
            changed
        });
    }
}

async fn run<A: StatusApi>(
    api: A,
    node: String,
    mut desired: watch::Receiver<Desired>,
    listing_changed: Arc<Notify>,
    backoff: Backoff,
) {
    // What the API confirmed, per object: starts empty, so a restarted speaker writes its objects once more.
    let mut written: BTreeMap<String, Content> = BTreeMap::new();
    let mut retry_in: Option<Duration> = None;
    loop {
        let wanted = desired.borrow_and_update().clone();
        let failed = match &wanted {
            Some(wanted) => apply(&api, &node, wanted, &mut written).await,
            None => 0,
        };
        retry_in = match (failed, retry_in) {
            (0, _) => None,
            (_, None) => Some(backoff.first),
            (_, Some(was)) => Some((was * 2).min(backoff.max)),
        };
        if let Some(delay) = retry_in {
            tracing::warn!(failed, retry_in_ms = delay.as_millis() as u64, "ServiceL2Status writes failed; retrying");
        }
        let retry = async {
            match retry_in {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            () = listing_changed.notified() => {}
            () = retry => {}
        }
    }
}

/// Applies one pass of writes in order; returns how many failed (they are in the next pass again).
async fn apply<A: StatusApi>(
    api: &A,
    node: &str,
    wanted: &BTreeMap<ServiceKey, Announced>,
    written: &mut BTreeMap<String, Content>,
) -> usize {
    let mut failed = 0;
    for write in writes(node, wanted, written, &api.listed()) {
        let name = write.name().to_string();
        let result = match &write {
            Write::Create { name, content } => match api.create(name, labels(node, &content.0)).await {
                Ok(()) | Err(WriteError::AlreadyExists) => api.write_status(name, status_of(node, content)).await,
                Err(e) => Err(e),
            },
            // Deleted meanwhile (by hand, or a stale listing): NotFound fails the pass, and the next creates it.
            Write::Update { name, content } => api.write_status(name, status_of(node, content)).await,
            Write::Delete { name } => match api.delete(name).await {
                Ok(()) | Err(WriteError::NotFound) => Ok(()),
                Err(e) => Err(e),
            },
        };
        match (result, write) {
            (Ok(()), Write::Create { content, .. } | Write::Update { content, .. }) => {
                written.insert(name, content);
            }
            (Ok(()), Write::Delete { .. }) => {
                written.remove(&name);
            }
            (Err(error), _) => {
                // Not confirmed: the pure difference includes it again on the next pass.
                written.remove(&name);
                failed += 1;
                tracing::warn!(?error, %name, "cannot write ServiceL2Status");
            }
        }
    }
    failed
}

fn labels(node: &str, service: &ServiceKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NODE_LABEL.to_string(), node.to_string()),
        (SERVICE_NAME_LABEL.to_string(), service.name.to_string()),
        (SERVICE_NAMESPACE_LABEL.to_string(), service.namespace.to_string()),
    ])
}

/// The status of one of this node's objects: the node, the Service, and the interfaces answering.
fn status_of(node: &str, (service, announced): &Content) -> serde_json::Value {
    let interfaces: Vec<_> = announced.interfaces.iter().map(|i| json!({"name": i})).collect();
    json!({"status": {"node": node, "serviceName": &*service.name, "serviceNamespace": &*service.namespace,
        "interfaces": interfaces}})
}

/// The API server, through the speaker's metadata-only watch cache of the status objects.
pub struct KubeStatusApi {
    /// The status objects' API in the speaker's namespace.
    pub api: Api<ServiceL2Status>,
    /// Their metadata, as watched.
    pub listing: Digests<Listed>,
}

fn classify(error: kube::Error) -> WriteError {
    match &error {
        kube::Error::Api(e) if e.code == 409 => WriteError::AlreadyExists,
        kube::Error::Api(e) if e.code == 404 => WriteError::NotFound,
        _ => WriteError::Other(error.to_string()),
    }
}

impl StatusApi for KubeStatusApi {
    fn listed(&self) -> Vec<Listed> {
        self.listing.state().iter().map(|listed| Listed::clone(listed)).collect()
    }

    async fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<(), WriteError> {
        let object = ServiceL2Status {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Default::default(),
            status: None,
        };
        self.api.create(&PostParams::default(), &object).await.map(|_| ()).map_err(classify)
    }

    async fn write_status(&self, name: &str, status: serde_json::Value) -> Result<(), WriteError> {
        self.api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.map(|_| ()).map_err(classify)
    }

    async fn delete(&self, name: &str) -> Result<(), WriteError> {
        self.api.delete(name, &DeleteParams::default()).await.map(|_| ()).map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::status::status_name;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// An object as the stub keeps it: labels, and the status written (none yet after a create).
    type StubObject = (BTreeMap<String, String>, Option<serde_json::Value>);

    /// An API that keeps objects in memory and refuses the first `refuse` writes of any kind.
    #[derive(Clone, Default)]
    struct Stub {
        objects: Arc<Mutex<BTreeMap<String, StubObject>>>,
        refuse: Arc<Mutex<usize>>,
        calls: Arc<Mutex<usize>>,
    }

    impl Stub {
        fn refusing(n: usize) -> Self {
            let stub = Self::default();
            *stub.refuse.lock().expect("lock") = n;
            stub
        }

        fn admit(&self) -> Result<(), WriteError> {
            *self.calls.lock().expect("lock") += 1;
            let mut refuse = self.refuse.lock().expect("lock");
            if *refuse > 0 {
                *refuse -= 1;
                return Err(WriteError::Other("injected: the API server is unavailable".into()));
            }
            Ok(())
        }

        /// Object name → (serviceNamespace/serviceName, interfaces) as the status says.
        fn statuses(&self) -> BTreeMap<String, (String, Vec<String>)> {
            self.objects
                .lock()
                .expect("lock")
                .iter()
                .map(|(name, (_, status))| {
                    let s = status.as_ref().map(|v| v["status"].clone()).unwrap_or_default();
                    let service = format!(
                        "{}/{}",
                        s["serviceNamespace"].as_str().unwrap_or("?"),
                        s["serviceName"].as_str().unwrap_or("?")
                    );
                    let interfaces = s["interfaces"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|i| i["name"].as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    (name.clone(), (service, interfaces))
                })
                .collect()
        }
    }

    impl StatusApi for Stub {
        fn listed(&self) -> Vec<Listed> {
            self.objects
                .lock()
                .expect("lock")
                .iter()
                .map(|(name, (labels, _))| Listed {
                    name: name.clone(),
                    node: labels.get(NODE_LABEL).cloned(),
                    service: Some(ServiceKey::new(&labels[SERVICE_NAMESPACE_LABEL], &labels[SERVICE_NAME_LABEL])),
                })
                .collect()
        }

        async fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<(), WriteError> {
            self.admit()?;
            let mut objects = self.objects.lock().expect("lock");
            if objects.contains_key(name) {
                return Err(WriteError::AlreadyExists);
            }
            objects.insert(name.into(), (labels, None));
            Ok(())
        }

        async fn write_status(&self, name: &str, status: serde_json::Value) -> Result<(), WriteError> {
            self.admit()?;
            match self.objects.lock().expect("lock").get_mut(name) {
                Some(object) => {
                    object.1 = Some(status);
                    Ok(())
                }
                None => Err(WriteError::NotFound),
            }
        }

        async fn delete(&self, name: &str) -> Result<(), WriteError> {
            self.admit()?;
            self.objects.lock().expect("lock").remove(name).map(|_| ()).ok_or(WriteError::NotFound)
        }
    }

    fn announced(uid: &str, ip: &str, interface: &str) -> Announced {
        Announced {
            uid: uid.into(),
            ips: BTreeSet::from([ip.parse().expect("ip")]),
            interfaces: Arc::new(BTreeSet::from([interface.to_string()])),
        }
    }

    const FAST: Backoff = Backoff { first: Duration::from_millis(5), max: Duration::from_millis(40) };

    /// Waits (bounded) until the stub's objects are `want`.
    async fn settles(stub: &Stub, want: &BTreeMap<String, (String, Vec<String>)>) {
        for _ in 0..1000 {
            if stub.statuses() == *want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never settled: have {:?}, want {want:?}", stub.statuses());
    }

    #[tokio::test]
    async fn failed_writes_are_retried_until_the_api_says_what_the_last_plan_says() {
        let stub = Stub::refusing(5);
        let writer = StatusWriter::spawn(stub.clone(), "n1".into(), Arc::default(), FAST);
        let (a, b) = (ServiceKey::new("ns", "a"), ServiceKey::new("ns", "b"));
        writer.set(BTreeMap::from([(a.clone(), announced("ua", "10.0.0.1", "eth0"))]));
        // A newer plan while the first is still being refused: the last one wins, nothing is left behind.
        writer
            .set(BTreeMap::from([(a, announced("ua", "10.0.0.1", "eth1")), (b, announced("ub", "10.0.0.2", "eth0"))]));
        let want = BTreeMap::from([
            (status_name("ua", "n1"), ("ns/a".to_string(), vec!["eth1".to_string()])),
            (status_name("ub", "n1"), ("ns/b".to_string(), vec!["eth0".to_string()])),
        ]);
        settles(&stub, &want).await;
        assert!(*stub.calls.lock().expect("lock") > 5, "the refused writes were made again");
        // And once settled, a plan that drops a Service deletes its object, also through refusals.
        *stub.refuse.lock().expect("lock") = 2;
        writer.set(BTreeMap::from([(ServiceKey::new("ns", "b"), announced("ub", "10.0.0.2", "eth0"))]));
        settles(&stub, &BTreeMap::from([(status_name("ub", "n1"), ("ns/b".to_string(), vec!["eth0".to_string()]))]))
            .await;
    }

    #[tokio::test]
    async fn a_starting_writer_deletes_nothing_before_it_is_told_what_is_answered() {
        let stub = Stub::default();
        let labels = labels("n1", &ServiceKey::new("ns", "a"));
        stub.objects.lock().expect("lock").insert(status_name("ua", "n1"), (labels, None));
        let listing_changed = Arc::new(Notify::new());
        let writer = StatusWriter::spawn(stub.clone(), "n1".into(), listing_changed.clone(), FAST);
        listing_changed.notify_one();
        // Told: the object is written (not deleted and created again), then deleted when no longer answered.
        writer.set(BTreeMap::from([(ServiceKey::new("ns", "a"), announced("ua", "10.0.0.1", "eth0"))]));
        settles(&stub, &BTreeMap::from([(status_name("ua", "n1"), ("ns/a".to_string(), vec!["eth0".to_string()]))]))
            .await;
        assert_eq!(*stub.calls.lock().expect("lock"), 1, "one status write, no delete before it");
        writer.set(BTreeMap::new());
        settles(&stub, &BTreeMap::new()).await;
    }

    #[tokio::test]
    async fn an_object_deleted_by_someone_else_is_written_again_when_the_listing_changes() {
        let stub = Stub::default();
        let listing_changed = Arc::new(Notify::new());
        let writer = StatusWriter::spawn(stub.clone(), "n1".into(), listing_changed.clone(), FAST);
        writer.set(BTreeMap::from([(ServiceKey::new("ns", "a"), announced("ua", "10.0.0.1", "eth0"))]));
        let want = BTreeMap::from([(status_name("ua", "n1"), ("ns/a".to_string(), vec!["eth0".to_string()]))]);
        settles(&stub, &want).await;
        stub.objects.lock().expect("lock").clear();
        listing_changed.notify_one();
        settles(&stub, &want).await;
    }
}
