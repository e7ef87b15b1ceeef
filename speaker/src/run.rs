//! The speaker's wiring: starts the watch caches, the liveness protocol, the announcer, the status writer and
//! the Event publisher, then runs a [`Planner`] pass per gathered [`Wakes`] until asked to stop. Nothing here
//! decides who announces what or words what users read.

use crate::datapath::announcer::{Announcer, Schedule};
use crate::datapath::host::Host;
use crate::datapath::netlink;
use crate::error::Result;
use crate::gossip::Liveness;
use crate::kube::events::Events;
use crate::kube::status::{Backoff, KubeStatusApi, StatusWriter};
use crate::kube::stores::Stores;
use crate::model::claim::Timing;
use crate::model::life_signs::LeaseRenewals;
use crate::model::notices::ConflictMemory;
use crate::model::plan;
use crate::planner::Planner;
pub use crate::settings::Settings;
use crate::telemetry::stats::Stats;
use crate::wake::{self, Wakes};
use ferrolb_runtime::configuration_state;
use kube::{Api, Client};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The planner wakes at least this often: liveness signs, Lease renewals and ARP sysctls are read on wakes.
const TICK: Duration = Duration::from_secs(5);
/// After a pass that took `t`, wakes are gathered for `PACE × t` (at most [`MAX_GATHER`]): during a burst of
/// API changes a pass then uses at most a quarter of a core; after a quiet spell, as at a failover, nothing
/// waits (docs/design.md §4.6).
const PACE: u32 = 3;
/// The longest wakes are gathered after a pass.
const MAX_GATHER: Duration = Duration::from_millis(250);

/// Runs the speaker until `shutdown` resolves; then tells the peers it is leaving and stops answering.
pub async fn run(
    client: Client,
    settings: Settings,
    stats: Arc<Stats>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (wake, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    let stores = Stores::start(&client, &settings, &wake).await?;
    tracing::info!(node = %settings.node, "caches synced");
    // Interfaces come and go: the kernel says when (netlink), and a slow rescan is the safety net for a missed
    // notification; without netlink, every tick rescans (docs/design.md §4.4).
    let rescan_every = match netlink::watch(wake.clone()) {
        Ok(()) => {
            tracing::info!(safety_net = ?settings.interface_rescan, "watching interfaces through netlink");
            settings.interface_rescan
        }
        Err(error) => {
            tracing::warn!(%error, every = ?TICK, "no netlink notifications: reading interfaces on every tick");
            TICK
        }
    };
    wake::spawn_ticks(wake.clone(), TICK, rescan_every);
    // A stop asked while the liveness port is still busy (gossip::PORT_WAIT) ends the wait: nothing answers yet.
    let liveness = tokio::select! {
        started = Liveness::start(&settings, stats.clone(), wake.clone()) => started?,
        () = &mut shutdown => {
            tracing::info!("stopped while waiting for the liveness port");
            return Ok(());
        }
    };
    // Ready only now: a speaker still waiting for its port answers nothing, and a rolling update must not take
    // the next node's speaker down on the strength of this one (docs/design.md §5.2).
    ready.store(true, Ordering::Relaxed);
    tracing::info!("ready: caches synced and liveness port bound");
    let schedule =
        Schedule { garp: settings.garp_schedule.clone(), refresh: settings.garp_refresh, timing: Timing::default() };
    let status_api =
        KubeStatusApi { api: Api::namespaced(client.clone(), &settings.namespace), listing: stores.statuses.clone() };
    let mut planner = Planner {
        announcer: Announcer::spawn(stats.clone(), schedule, liveness.shared(), wake),
        status: StatusWriter::spawn(
            status_api,
            settings.node.clone(),
            stores.statuses_changed.clone(),
            Backoff::default(),
        ),
        events: Events::spawn(client.clone(), settings.node.clone()),
        configuration: configuration_state::spawn(
            client,
            configuration_state::Identity::speaker(&settings.namespace, &settings.node, settings.pod_name.clone()),
        ),
        host: Host::new(settings.exclusions.clone()),
        stats,
        stores,
        liveness,
        settings,
        prepared: plan::Prepared::default(),
        renewals: LeaseRenewals::default(),
        conflicts: ConflictMemory::default(),
        said: Default::default(),
    };
    let main_loop = async {
        let mut next = Some(Wakes::everything());
        while let Some(wakes_now) = next {
            let started = tokio::time::Instant::now();
            planner.pass(wakes_now);
            next = wake::gather(&mut wakes, tokio::time::Instant::now() + (started.elapsed() * PACE).min(MAX_GATHER))
                .await;
        }
    };
    let asked_to_stop = tokio::select! { () = main_loop => false, () = shutdown => true };
    if asked_to_stop {
        // Stop answering first, then tell every peer.
        planner.announcer.stop();
        planner.liveness.leave().await;
        tracing::info!("left: peers move this node's addresses now");
    }
    Ok(())
}
