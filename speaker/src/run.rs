//! The speaker's wiring: wakes in, and per pass snapshot → [`plan`] → [`Announcer::apply`] → status and
//! notices out. Nothing here decides who announces what or words what users read.

use crate::datapath::announcer::{Announcer, Schedule};
use crate::datapath::host::Host;
use crate::datapath::netlink;
use crate::error::Result;
use crate::gossip::Liveness;
use crate::kube::events::Events;
use crate::kube::status::{Backoff, KubeStatusApi, StatusWriter};
use crate::kube::stores::Stores;
use crate::model::claim::Timing;
use crate::model::diagnose::{self, Problem};
use crate::model::notices::{self, ConflictMemory, Notice};
use crate::model::plan::{self, Announced, Me};
use crate::model::signs::{self, LeaseRenewals};
pub use crate::settings::Settings;
use crate::telemetry::stats::Stats;
use crate::wake::{self, Wakes};
use ferrolb_crds::service::ServiceKey;
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The planner wakes at least this often: liveness signs, Lease renewals and ARP sysctls are read on wakes.
const TICK: Duration = Duration::from_secs(5);
/// After a pass that took `t`, wakes are gathered for `PACE × t` (at most [`MAX_GATHER`]): during a burst of
/// API changes a pass then uses at most a quarter of a core; after a quiet spell, as at a failover, nothing
/// waits (docs/design.md §4.6).
const PACE: u32 = 3;
/// The longest wakes are gathered after a pass.
const MAX_GATHER: Duration = Duration::from_millis(250);

/// What was last said, so the next pass says only what changed.
#[derive(Default)]
struct Said {
    answered: BTreeMap<ServiceKey, Announced>,
    unannounced: BTreeMap<ServiceKey, Problem>,
    failed: BTreeMap<ServiceKey, Problem>,
    unheard: BTreeSet<String>,
}

/// The planner's inputs, outputs and memory between passes.
struct Speaker {
    settings: Settings,
    stats: Arc<Stats>,
    stores: Stores,
    liveness: Liveness,
    host: Host,
    announcer: Announcer,
    status: StatusWriter,
    events: Events,
    prepared: plan::Prepared,
    renewals: LeaseRenewals,
    conflicts: ConflictMemory,
    said: Said,
}

impl Speaker {
    fn tell(&self, notices: impl IntoIterator<Item = Notice>) {
        notices.into_iter().for_each(|n| self.events.tell(n));
    }

    /// One pass: redo the work the wakes call for, plan, and hand the plan to the announcer and the writers.
    fn pass(&mut self, wakes: Wakes) {
        let (started, node, s) = (Instant::now(), self.settings.node.as_str(), &self.settings);
        let me = Me { node, load_balancer_class: s.load_balancer_class.as_deref(), policy: s.policy };
        if wakes.api {
            let snapshot = self.stores.snapshot();
            self.liveness.set_peers(&snapshot.nodes, node, s.gossip_port);
            self.prepared = plan::prepare(&me, &snapshot);
        }
        if let Some(trigger) = wakes.rescan {
            self.stats.count_rescan(trigger);
            let changes = self.host.rescan();
            if !changes.is_empty() {
                tracing::info!(trigger, changes = %changes.join(", "), "interfaces changed");
            }
            self.liveness.set_macs(self.host.macs());
        }
        if wakes.tick || wakes.rescan.is_some() {
            let (before, missing) = self.host.check_strict_arp();
            self.stats.strict_arp_missing.store(missing, Ordering::Relaxed);
            self.tell(notices::strict_arp(before, missing));
        }
        let (view, settled) = (self.liveness.view(), self.liveness.settled());
        let plan = plan::decide(&me, &self.prepared, self.host.interfaces(), &view, settled, started);
        self.stats.plans.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.plan_micros.fetch_add(took, Ordering::Relaxed);
        let answered = plan::answered_only(&plan.services, &self.announcer.answering());
        if answered != self.said.answered {
            self.stats.set_announced(plan::by_address(&answered));
            self.tell(notices::takeovers(node, &self.said.answered, &answered));
            self.status.set(answered.clone());
            self.said.answered = answered;
        }
        let conflicts = self.announcer.take_conflicts();
        self.stats.saw_strangers(conflicts.iter().filter(|c| c.node.is_none()).map(|c| (c.ip, c.mac)), started);
        let contested = self.conflicts.notices(&conflicts, &plan.services, node, started);
        self.tell(contested);
        if self.liveness.is_on() {
            self.renewals.observe(&self.stores.leases.state(), started);
            let unheard = signs::unheard_but_alive(&view, &self.renewals, &self.announcer.held_back(), started);
            self.stats.unheard_live_peers.store(unheard.len() as u64, Ordering::Relaxed);
            self.tell(notices::liveness_channel(&self.said.unheard, &unheard, s.gossip_port));
            self.said.unheard = unheard;
        }
        // Before liveness has settled this speaker may count peers alive that are not (or the reverse), and
        // would tell users about a view that is about to change.
        if !self.liveness.is_on() || settled {
            let reported = if plan.reporter { diagnose::count(plan.unannounced.values()) } else { BTreeMap::new() };
            self.stats.set_unannounced(reported);
            self.tell(notices::unannounced(&self.said.unannounced, &plan));
            self.said.unannounced = plan.unannounced;
        }
        self.stats.set_announce_failed(diagnose::count(plan.failed.values()));
        self.tell(notices::announce_failed(&self.said.failed, &plan.failed));
        self.said.failed = plan.failed;
        self.announcer.apply(plan.per_ip, self.host.interfaces());
    }
}

/// Runs the speaker until `shutdown` resolves; then tells the peers it is leaving and stops answering.
pub async fn run(
    client: Client,
    settings: Settings,
    stats: Arc<Stats>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (wake, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    let stores = Stores::start(&client, &settings.namespace, &wake).await?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(node = %settings.node, "caches synced");
    // Interfaces come and go: the kernel says when (netlink), and a slow rescan is the safety net for a missed
    // notification; without netlink, every tick rescans (docs/design.md §4.4).
    let rescan_every = match netlink::watch(wake.clone()) {
        Ok(()) => settings.interface_rescan,
        Err(error) => {
            tracing::warn!(%error, every = ?TICK, "no netlink notifications: reading interfaces on every tick");
            TICK
        }
    };
    wake::spawn_ticks(wake.clone(), TICK, rescan_every);
    let liveness = Liveness::start(&settings, stats.clone(), wake.clone())?;
    let schedule =
        Schedule { garp: settings.garp_schedule.clone(), refresh: settings.garp_refresh, timing: Timing::default() };
    let status_api =
        KubeStatusApi { api: Api::namespaced(client.clone(), &settings.namespace), listing: stores.statuses.clone() };
    let mut speaker = Speaker {
        announcer: Announcer::spawn(stats.clone(), schedule, liveness.shared(), wake),
        status: StatusWriter::spawn(
            status_api,
            settings.node.clone(),
            stores.statuses_changed.clone(),
            Backoff::default(),
        ),
        events: Events::spawn(client, settings.node.clone()),
        host: Host::new(settings.exclusions.clone()),
        stats,
        stores,
        liveness,
        settings,
        prepared: plan::Prepared::default(),
        renewals: LeaseRenewals::default(),
        conflicts: ConflictMemory::default(),
        said: Said::default(),
    };
    let main_loop = async {
        let mut next = Some(Wakes::everything());
        while let Some(wakes_now) = next {
            let started = tokio::time::Instant::now();
            speaker.pass(wakes_now);
            next = wake::gather(&mut wakes, tokio::time::Instant::now() + (started.elapsed() * PACE).min(MAX_GATHER))
                .await;
        }
    };
    let asked_to_stop = tokio::select! { () = main_loop => false, () = shutdown => true };
    if asked_to_stop {
        // Stop answering first, then tell every peer.
        speaker.announcer.stop();
        speaker.liveness.leave().await;
        tracing::info!("left: peers move this node's addresses now");
    }
    Ok(())
}
