//! The controller's I/O shell: watch Services, IPAddressPools and Namespaces; feed the allocator; write
//! Service status, the pool annotation, pool status and Events. Decisions stay in the pure modules.

use crate::allocator::{Allocator, Assignment};
use crate::error::{Error, Result};
use crate::events::publish;
use crate::metrics::Metrics;
use crate::pool::PoolProblem;
use crate::protection;
use crate::replay;
use crate::service::{ServiceIntent, ServiceKey, is_managed};
use crate::status::{pool_status, service_writes};
use ferrolb_crds::IPAddressPool;
use ferrolb_crds::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_runtime::events::EventKind;
use ferrolb_runtime::watch::{Digests, watch, watch_digested};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::trim::CompactService;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use ferrolb_runtime::configuration_state::{self, Reporter};

/// What the controller is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace whose IPAddressPools are honoured.
    pub namespace: String,
    /// Only Services of this `loadBalancerClass` (none: only Services without a class).
    pub load_balancer_class: Option<String>,
    /// Name in Events.
    pub identity: String,
    /// This replica's Pod, when it runs in one: the owner of the ConfigurationState it writes as leader.
    pub pod_name: Option<String>,
}

/// Why the loop wakes up.
#[derive(Debug)]
enum Trigger {
    Service(ServiceKey),
    AllServices,
    Config,
}

/// The controller's state between wake-ups.
struct Controller {
    client: Client,
    settings: Settings,
    services: Digests<CompactService>,
    pools: Store<IPAddressPool>,
    namespaces: Store<Namespace>,
    allocator: Allocator,
    metrics: Arc<Metrics>,
    /// Fingerprint of the pool specs and namespace labels the allocator was last configured with.
    config_seen: String,
    problems: BTreeMap<String, Vec<PoolProblem>>,
    /// Last refusal reported per Service (message, reason label), so Events are sent only on change; the
    /// Services here are the pending ones (`ferrolb_pending_services`).
    refusals: BTreeMap<ServiceKey, (String, &'static str)>,
    /// Addresses taken away by a pool change, until the Service is reconciled and told.
    lost: BTreeMap<ServiceKey, Assignment>,
    /// Last problems reported per pool.
    reported_problems: BTreeMap<String, String>,
    /// Last Warning told per pool being deleted while in use.
    reported_deleting: BTreeMap<String, String>,
    /// Whether addresses were freed, or a holder's sharing terms changed, since refused Services were last retried.
    freed: bool,
    /// Consecutive failed writes per Service, for the retry backoff.
    failures: BTreeMap<ServiceKey, u32>,
    retry: mpsc::UnboundedSender<Trigger>,
    /// The `controller` ConfigurationState, kept by its own task.
    configuration: Reporter,
}

/// The pools' problems as the controller's ConfigurationState lists them: one line per problem, naming the pool
/// (pure).
pub fn configuration_problems(problems: &BTreeMap<String, Vec<PoolProblem>>) -> Vec<String> {
    problems.iter().flat_map(|(pool, list)| list.iter().map(move |p| format!("IPAddressPool {pool:?}: {p}"))).collect()
}

/// Whether a Service going from holding `before` to holding `after` gives any address back (pure).
pub fn frees(before: Option<&[std::net::IpAddr]>, after: Option<&[std::net::IpAddr]>) -> bool {
    before.is_some_and(|old| old.iter().any(|ip| after.is_none_or(|new| !new.contains(ip))))
}

/// How long to wait before retrying a Service whose writes failed `failures` times in a row (pure):
/// 250 ms doubling up to 60 s, so a flapping API server is not hammered and a transient error heals fast.
pub fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(8);
    Duration::from_millis(250u64 << exponent).min(Duration::from_secs(60))
}

impl Controller {
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(&ObjectRef::new(ns)).and_then(|n| n.metadata.labels.clone()).unwrap_or_default()
    }

    fn config_fingerprint(&self) -> String {
        let mut pools: Vec<_> = self
            .pools
            .state()
            .iter()
            .map(|p| {
                (
                    p.name_any(),
                    serde_json::to_string(&p.spec).unwrap_or_default(),
                    p.metadata.creation_timestamp.clone(),
                    p.metadata.deletion_timestamp.is_some(),
                )
            })
            .collect();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        let mut namespaces: Vec<_> =
            self.namespaces.state().iter().map(|n| (n.name_any(), n.metadata.labels.clone())).collect();
        namespaces.sort_by(|a, b| a.0.cmp(&b.0));
        format!("{pools:?}{namespaces:?}")
    }

    /// Re-reads the pools. Oldest first, so a new pool that overlaps an old one is the one set aside.
    fn apply_config(&mut self) -> bool {
        let fingerprint = self.config_fingerprint();
        if fingerprint == self.config_seen {
            return false;
        }
        self.config_seen = fingerprint;
        let pools = self.pools.state();
        let set = replay::read_pools(pools.iter().map(AsRef::as_ref));
        tracing::info!(valid = set.valid.len(), invalid = set.problems.len(), "pool configuration changed");
        let unusable = set.unusable();
        for (key, lost) in self.allocator.set_pools(set.valid, unusable) {
            tracing::info!(service = %key, ips = ?lost.ips, pool = %lost.pool, "address no longer in any pool");
            self.lost.insert(key, lost);
        }
        self.problems = set.problems;
        true
    }

    /// Re-registers every address Services already show, before anything new is handed out.
    fn restore_all(&mut self) {
        let services: Vec<Service> = self.services.state().iter().map(|c| c.service()).collect();
        let namespaces = self.namespaces.clone();
        let labels =
            |ns: &str| namespaces.get(&ObjectRef::new(ns)).and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        let (restored, refused) =
            replay::restore(&mut self.allocator, services.iter(), labels, self.settings.load_balancer_class.as_deref());
        for (key, refusal) in refused {
            tracing::info!(service = %key, %refusal, "cannot keep the current address");
        }
        tracing::info!(restored, "restored existing assignments");
    }

    async fn reconcile_all(&mut self) {
        let mut keys: BTreeSet<ServiceKey> = self.services.state().iter().map(|s| s.key()).collect();
        keys.extend(self.allocator.assignments().map(|(k, _)| k.clone()));
        self.reconcile(keys).await;
    }

    /// Reconciles Services: decisions one after the other (the allocator is one state), then every Service's
    /// writes concurrently, then the Events, so thousands of Services go at the rate the API server accepts
    /// writes rather than one round trip after another.
    async fn reconcile(&mut self, keys: impl IntoIterator<Item = ServiceKey>) {
        let work: Vec<Work> = keys.into_iter().filter_map(|key| self.decide(key)).collect();
        let client = self.client.clone();
        let written: Vec<(Work, Result<bool>)> = futures::stream::iter(work)
            .map(|w| {
                let client = client.clone();
                async move {
                    let result = write(&client, &w.svc, w.assignment.as_ref()).await;
                    (w, result)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut events = Vec::new();
        for (w, result) in written {
            match result {
                Ok(wrote) => {
                    self.failures.remove(&w.key);
                    match w.say {
                        Say::Nothing => {}
                        Say::Assigned { note, changed } => {
                            self.refusals.remove(&w.key);
                            if changed || wrote {
                                events.push((w.svc.clone(), EventKind::Normal, "IPAllocated", note));
                            }
                        }
                        Say::Refused { message, reason, note } => {
                            if self.refusals.get(&w.key).map(|r| &r.0) != Some(&message) {
                                tracing::info!(service = %w.key, reason = %message, "no address");
                                events.push((w.svc.clone(), EventKind::Warning, "AllocationFailed", note));
                                self.refusals.insert(w.key.clone(), (message, reason));
                            }
                        }
                    }
                }
                Err(e) => {
                    self.metrics.count("error");
                    let failures = self.failures.entry(w.key.clone()).or_insert(0);
                    *failures = failures.saturating_add(1);
                    let delay = retry_delay(*failures);
                    tracing::warn!(service = %w.key, error = %e, failures = *failures, retry_in = ?delay, "write failed");
                    let retry = self.retry.clone();
                    let key = w.key.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = retry.send(Trigger::Service(key));
                    });
                }
            }
            self.metrics.reconcile_seconds.observe(w.started.elapsed().as_secs_f64());
        }
        let identity = self.settings.identity.clone();
        futures::stream::iter(events)
            .for_each_concurrent(WRITES_IN_FLIGHT, |(svc, kind, reason, note)| {
                let (client, identity) = (client.clone(), identity.clone());
                async move { publish(&client, &identity, svc.object_ref(&()), kind, reason, note).await }
            })
            .await;
    }

    /// Decides one Service (allocator and bookkeeping, no I/O); `None` when nothing is to be written.
    fn decide(&mut self, key: ServiceKey) -> Option<Work> {
        let started = Instant::now();
        let svc = self.services.get(&key.namespace, &key.name).map(|compact| Arc::new(compact.service()));
        let Some(svc) = svc else {
            if let Some(a) = self.allocator.release(&key) {
                tracing::info!(service = %key, ips = ?a.ips, "Service deleted; address freed");
                self.metrics.count("released");
                self.freed = true;
            }
            self.refusals.remove(&key);
            self.failures.remove(&key);
            return None;
        };
        if !is_managed(&svc, self.settings.load_balancer_class.as_deref()) {
            let released = self.allocator.release(&key);
            self.freed |= released.is_some();
            self.refusals.remove(&key);
            // Clear only what we wrote: the pool annotation marks a Service as ours.
            if released.is_none() && crate::status::current_pool(&svc).is_none() {
                return None;
            }
            self.metrics.count("released");
            return Some(Work { key, svc, assignment: None, say: Say::Nothing, started });
        }
        let labels = self.namespace_labels(&key.namespace);
        // What it held, even if a pool change already took it away, so the Event can say what moved.
        let lost = self.lost.remove(&key);
        let before = self.allocator.assignment(&key).cloned().or(lost);
        let outcome = ServiceIntent::from_service(&svc, &labels).and_then(|intent| {
            let outcome = self.allocator.allocate(&intent);
            if outcome.is_err() {
                self.allocator.release(&key);
            }
            outcome
        });
        // Addresses this Service no longer holds (refused, or moved) may be what a refused Service waits for; so
        // may new sharing terms of the addresses it keeps (a refused sharer may match them now).
        let now_held = outcome.as_ref().ok().map(|o| &o.assignment.ips);
        self.freed |= frees(before.as_ref().map(|a| a.ips.as_slice()), now_held.map(Vec::as_slice));
        self.freed |= outcome.as_ref().is_ok_and(|o| o.sharing_changed);
        match outcome {
            Ok(outcome) => {
                self.metrics.count("assigned");
                let a = &outcome.assignment;
                let ips: Vec<String> = a.ips.iter().map(ToString::to_string).collect();
                let note = match &before {
                    Some(old) if old.ips != a.ips => {
                        format!("Assigned IP {ips:?} from pool {:?} (was {:?})", a.pool, old.ips)
                    }
                    _ => format!("Assigned IP {ips:?} from pool {:?}", a.pool),
                };
                if outcome.changed {
                    tracing::info!(service = %key, ips = ?ips, pool = %a.pool, "assigned");
                }
                let say = Say::Assigned { note, changed: outcome.changed };
                Some(Work { key, svc, assignment: Some(outcome.assignment), say, started })
            }
            Err(refusal) => {
                self.metrics.count("refused");
                let message = refusal.to_string();
                let note = match &before {
                    Some(old) => format!("{message} (released {:?})", old.ips),
                    None => message.clone(),
                };
                let say = Say::Refused { message, reason: refusal.reason(), note };
                Some(Work { key, svc, assignment: None, say, started })
            }
        }
    }

    /// Retries every refused Service once addresses were freed (a deletion, a class change, a Service that
    /// moved or lost its address) or a holder changed its sharing terms (key, ports, traffic policy, selector):
    /// MetalLB re-processes all Services then too; without it a Service refused for a full pool, or for a
    /// holder's sharing key, stays pending after the holder changes.
    async fn retry_refused(&mut self) {
        if !std::mem::take(&mut self.freed) {
            return;
        }
        let refused: Vec<ServiceKey> = self.refusals.keys().cloned().collect();
        if !refused.is_empty() {
            tracing::info!(
                services = refused.len(),
                "addresses freed or sharing terms changed; retrying refused Services"
            );
        }
        self.reconcile(refused).await;
    }

    /// Keeps the protection finalizer on a pool while its addresses are in use and takes it off after; says who
    /// holds a pool that is being deleted (docs/design.md §3.10). A failed write is retried on the next pass.
    async fn protect(&mut self, pool: &IPAddressPool, in_use: bool) {
        let name = pool.name_any();
        let deleting = pool.metadata.deletion_timestamp.is_some();
        if let Some(list) = protection::finalizers(pool.finalizers(), in_use, deleting) {
            let api: Api<IPAddressPool> = Api::namespaced(self.client.clone(), &self.settings.namespace);
            // The resourceVersion makes the write fail rather than drop a finalizer someone else added meanwhile.
            let patch = json!({"metadata": {"finalizers": list, "resourceVersion": pool.resource_version()}});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    tracing::info!(pool = %name, in_use, "pool protection finalizer {}", if in_use { "added" } else { "removed" })
                }
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "cannot write the pool's finalizers; retrying on the next pass")
                }
            }
        }
        if !deleting || !in_use {
            self.reported_deleting.remove(&name);
            return;
        }
        let holders: Vec<(String, Vec<std::net::IpAddr>)> = self
            .allocator
            .assignments()
            .filter(|(_, a)| a.pool == name)
            .map(|(key, a)| (key.to_string(), a.ips.clone()))
            .collect();
        let note = protection::held_while_deleting(&name, &holders);
        if self.reported_deleting.get(&name) != Some(&note) {
            tracing::warn!(pool = %name, holders = holders.len(), "pool deleted while in use: kept until its addresses are released");
            publish(
                &self.client,
                &self.settings.identity,
                pool.object_ref(&()),
                EventKind::Warning,
                "PoolInUse",
                note.clone(),
            )
            .await;
            self.reported_deleting.insert(name, note);
        }
    }

    /// Writes each pool's counts and conditions when they changed, and an Event when its problems change; and the
    /// pending-Services gauge, which changes in the same passes.
    async fn update_pools(&mut self) {
        self.metrics.set_pending(&crate::refusal::pending_by_reason(self.refusals.values().map(|r| r.1)));
        self.configuration.report(configuration_problems(&self.problems));
        let now = Time(Timestamp::now());
        for pool in self.pools.state() {
            let name = pool.name_any();
            let problems = self.problems.get(&name).cloned().unwrap_or_default();
            let usage = self.allocator.pool_usage(&name);
            if let Some(u) = &usage {
                self.metrics.set_pool_usage(&name, u);
            }
            let in_use = usage.as_ref().is_some_and(|u| u.assigned_v4 + u.assigned_v6 > 0);
            self.protect(&pool, in_use).await;
            let status = pool_status(usage, &problems, pool.metadata.generation, pool.status.as_ref(), &now);
            if pool.status.as_ref() != Some(&status) {
                let api: Api<IPAddressPool> = Api::namespaced(self.client.clone(), &self.settings.namespace);
                let patch = json!({"status": status});
                if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    tracing::warn!(pool = %name, error = %e, "cannot write pool status");
                }
            }
            let summary = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            if self.reported_problems.get(&name).map_or(!summary.is_empty(), |s| *s != summary) {
                if summary.is_empty() {
                    let note = "the pool is valid and in use".to_string();
                    publish(
                        &self.client,
                        &self.settings.identity,
                        pool.object_ref(&()),
                        EventKind::Normal,
                        "ConfigurationValid",
                        note,
                    )
                    .await;
                } else {
                    tracing::warn!(pool = %name, problems = %summary, "invalid pool");
                    let regarding = pool.object_ref(&());
                    publish(
                        &self.client,
                        &self.settings.identity,
                        regarding,
                        EventKind::Warning,
                        "InvalidConfiguration",
                        summary.clone(),
                    )
                    .await;
                }
                self.reported_problems.insert(name, summary);
            }
        }
    }
}

/// How many Services' writes (and Events) are in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

/// One Service's writes, decided without I/O, and what to say once they are done.
struct Work {
    key: ServiceKey,
    svc: Arc<Service>,
    assignment: Option<Assignment>,
    say: Say,
    started: Instant,
}

/// The Event a Service gets once its writes succeeded.
enum Say {
    Nothing,
    /// `IPAllocated`, when the assignment changed or the Service did not show it yet.
    Assigned {
        note: String,
        changed: bool,
    },
    /// `AllocationFailed`, when the reason differs from the last one told.
    Refused {
        message: String,
        reason: &'static str,
        note: String,
    },
}

/// Makes the Service show `assignment`; returns whether anything was written.
async fn write(client: &Client, svc: &Service, assignment: Option<&Assignment>) -> Result<bool> {
    let writes = service_writes(svc, assignment);
    if writes.is_empty() {
        return Ok(false);
    }
    let api: Api<Service> = Api::namespaced(client.clone(), svc.metadata.namespace.as_deref().unwrap_or("default"));
    let name = svc.name_any();
    let params = PatchParams::default();
    // Status first: a reader that sees the annotation can trust the address is published.
    if let Some(ips) = &writes.ingress {
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let patch = if ingress.is_empty() {
            json!({"status": {"loadBalancer": {"ingress": null}}})
        } else {
            json!({"status": {"loadBalancer": {"ingress": ingress}}})
        };
        api.patch_status(&name, &params, &Patch::Merge(&patch)).await?;
    }
    if let Some(pool) = &writes.pool_annotation {
        let patch = json!({"metadata": {"annotations": {IP_ALLOCATED_FROM_POOL.key: pool}}});
        api.patch(&name, &params, &Patch::Merge(&patch)).await?;
    }
    Ok(true)
}

/// Runs the controller: caches first, then (as leader) restore, reconcile everything, and follow changes.
/// `leader` resolves when this replica may write; the caller stops the process when leadership is lost.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    leader: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let services = watch_digested(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |ev| match ev {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) => Some(Trigger::Service(ServiceKey::of(s))),
            watcher::Event::InitDone => Some(Trigger::AllServices),
            _ => None,
        },
        CompactService::of,
    );
    let pools =
        watch(Api::<IPAddressPool>::namespaced(client.clone(), &settings.namespace), tx.clone(), |ev| match ev {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => Some(Trigger::Config),
            _ => None,
        });
    let namespaces = watch(Api::<Namespace>::all(client.clone()), tx.clone(), |ev| match ev {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => Some(Trigger::Config),
        _ => None,
    });
    for (what, ready) in [
        ("Services", services.wait_until_ready().await),
        ("IPAddressPools", pools.wait_until_ready().await.is_ok()),
        ("Namespaces", namespaces.wait_until_ready().await.is_ok()),
    ] {
        if !ready {
            return Err(Error::CacheSync(what.into()));
        }
    }
    // A standby with synced caches is ready to take over; the leader is ready again after its first full sync.
    metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("caches synced; waiting to lead");
    leader.await;
    metrics.leader.set(1);
    tokio::spawn(crate::misplaced::tell(client.clone(), settings.namespace.clone(), settings.identity.clone()));
    let identity = configuration_state::Identity::controller(&settings.namespace, settings.pod_name.clone());
    let configuration = configuration_state::spawn(client.clone(), identity);
    let mut c = Controller {
        client,
        settings,
        services,
        pools,
        namespaces,
        allocator: Allocator::new(),
        metrics: metrics.clone(),
        config_seen: String::new(),
        problems: BTreeMap::new(),
        refusals: BTreeMap::new(),
        reported_problems: BTreeMap::new(),
        reported_deleting: BTreeMap::new(),
        lost: BTreeMap::new(),
        freed: false,
        failures: BTreeMap::new(),
        retry: tx,
        configuration,
    };
    let started = Instant::now();
    c.apply_config();
    c.restore_all();
    c.reconcile_all().await;
    c.retry_refused().await;
    c.update_pools().await;
    metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(services = c.services.state().len(), took = ?started.elapsed(), "first full sync done");

    while let Some(first) = rx.recv().await {
        let mut keys = BTreeSet::new();
        let (mut all, mut config) = (false, false);
        let mut note = |t: Trigger| match t {
            Trigger::Service(k) => {
                keys.insert(k);
            }
            Trigger::AllServices => all = true,
            Trigger::Config => config = true,
        };
        note(first);
        while let Ok(t) = rx.try_recv() {
            note(t);
        }
        if config && c.apply_config() {
            all = true;
        }
        if all {
            c.reconcile_all().await;
        } else {
            c.reconcile(keys).await;
        }
        c.retry_refused().await;
        c.update_pools().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn configuration_problems_name_each_pool() {
        let set = crate::replay::read_pools([
            &serde_json::from_value::<IPAddressPool>(json!({"metadata": {"name": "lab"},
                "spec": {"addresses": ["198.19.0.0/30"]}}))
            .expect("pool"),
            &serde_json::from_value::<IPAddressPool>(json!({"metadata": {"name": "broken"},
                "spec": {"addresses": ["198.19.1.0/33"]}}))
            .expect("pool"),
        ]);
        let lines = configuration_problems(&set.problems);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("IPAddressPool \"broken\": address \"198.19.1.0/33\""), "{lines:?}");
        assert!(configuration_problems(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_minute() {
        let delays: Vec<u128> = (1..=12).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays[..4], [250, 500, 1000, 2000]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "never shorter after another failure: {delays:?}");
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(retry_delay(0), Duration::from_millis(250));
    }

    #[test]
    fn an_address_is_freed_when_a_service_drops_or_moves_it() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let (a, b) = ([ip("198.19.0.1")], [ip("198.19.0.2")]);
        let both = [ip("198.19.0.1"), ip("2001:db8::1")];
        assert!(frees(Some(&a), None), "refused after holding one");
        assert!(frees(Some(&a), Some(&b)), "moved");
        assert!(frees(Some(&both), Some(&a)), "dual-stack became single-stack");
        assert!(!frees(Some(&a), Some(&a)), "kept");
        assert!(!frees(Some(&a), Some(&both)), "gained one");
        assert!(!frees(None, Some(&a)), "new");
        assert!(!frees(None, None));
    }
}
