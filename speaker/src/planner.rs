//! The planner: what one pass does when the speaker wakes. It redoes only the work the wakes call for, plans
//! (snapshot → [`plan::prepare`] → [`plan::decide`]), and hands the plan to the announcer, the status writer and
//! the Event publisher. It decides nothing itself and words nothing: the rules are in [`crate::model`].

use crate::datapath::announcer::Announcer;
use crate::datapath::host::Host;
use crate::gossip::{self, Liveness};
use crate::kube::events::Events;
use crate::kube::status::StatusWriter;
use crate::kube::stores::Stores;
use crate::model::diagnose::{self, Problem};
use crate::model::life_signs::{self, LeaseRenewals};
use crate::model::notices::{self, ConflictMemory, Notice};
use crate::model::plan::{self, Announced, Me};
use crate::settings::Settings;
use crate::telemetry::stats::Stats;
use crate::wake::Wakes;
use ferrolb_crds::service::ServiceKey;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// What was last said, so the next pass says only what changed.
#[derive(Default)]
pub(crate) struct Said {
    pub(crate) answered: Option<BTreeMap<ServiceKey, Announced>>,
    pub(crate) unannounced: BTreeMap<ServiceKey, Problem>,
    pub(crate) failed: BTreeMap<ServiceKey, Problem>,
    pub(crate) unheard: BTreeSet<String>,
}

/// The planner's inputs, outputs and memory between passes.
pub(crate) struct Planner {
    pub(crate) settings: Settings,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stores: Stores,
    pub(crate) liveness: Liveness,
    pub(crate) host: Host,
    pub(crate) announcer: Announcer,
    pub(crate) status: StatusWriter,
    pub(crate) events: Events,
    pub(crate) prepared: plan::Prepared,
    pub(crate) renewals: LeaseRenewals,
    pub(crate) conflicts: ConflictMemory,
    pub(crate) said: Said,
    /// This speaker's ConfigurationState, kept by its own task.
    pub(crate) configuration: ferrolb_runtime::configuration_state::Reporter,
}

impl Planner {
    fn tell(&self, notices: impl IntoIterator<Item = Notice>) {
        notices.into_iter().for_each(|n| self.events.tell(n));
    }

    /// One pass: redo the work the wakes call for, plan, and hand the plan to the announcer and the writers.
    pub(crate) fn pass(&mut self, wakes: Wakes) {
        let (started, node, s) = (Instant::now(), self.settings.node.as_str(), &self.settings);
        let me = Me { node, load_balancer_class: s.load_balancer_class.as_deref(), policy: s.policy };
        if wakes.api {
            let snapshot = self.stores.snapshot();
            self.liveness.set_peers(gossip::peer_addresses(
                &snapshot.nodes,
                snapshot.speaker_nodes.as_ref(),
                node,
                s.gossip_port,
                self.liveness.ipv6(),
            ));
            self.prepared = plan::prepare(&me, &snapshot);
            let ads: Vec<&ferrolb_crds::L2Advertisement> = snapshot.ads.iter().map(AsRef::as_ref).collect();
            self.configuration.report(crate::model::facts::advertisement_problems(&ads));
        }
        if let Some(trigger) = wakes.rescan {
            Stats::count(&self.stats.interface_rescans, trigger);
            let changes = self.host.rescan();
            if !changes.is_empty() {
                tracing::info!(trigger, changes = %changes.join(", "), "interfaces changed");
            }
            self.liveness.set_macs(self.host.macs());
        }
        if wakes.tick || wakes.rescan.is_some() {
            let (before, missing) = self.host.check_strict_arp();
            self.stats.strict_arp_missing.set(i64::from(missing));
            self.tell(notices::strict_arp(before, missing));
        }
        let (view, settled) = (self.liveness.view(), self.liveness.settled());
        let mut plan = plan::decide(&me, &self.prepared, self.host.interfaces(), &view, settled, started);
        // The announcer first: at a failover it probes and takes over while the rest of the pass reports.
        let (per_ip, handover) = (std::mem::take(&mut plan.per_ip), std::mem::take(&mut plan.handover));
        self.announcer.apply(per_ip, handover, self.host.interfaces());
        Stats::observe(&self.stats.plan, started.elapsed());
        let answered = plan::answered_only(&plan.services, &self.announcer.answering());
        // The first pass hands its answer over even when it is "nothing": this node's objects from before a
        // restart are then deleted.
        if self.said.answered.as_ref() != Some(&answered) {
            self.stats.set_announced(plan::by_address(&answered));
            self.tell(notices::takeovers(node, self.said.answered.as_ref().unwrap_or(&BTreeMap::new()), &answered));
            self.status.set(answered.clone());
            self.said.answered = Some(answered);
        }
        let conflicts = self.conflicts.identify(self.announcer.take_conflicts(), &view.node_macs(), started);
        for c in &conflicts {
            let counter = if c.node.is_some() { &self.stats.conflicts_node } else { &self.stats.conflicts_stranger };
            counter.inc();
        }
        self.stats.saw_strangers(conflicts.iter().filter(|c| c.node.is_none()).map(|c| (c.ip, c.mac)), started);
        let contested = self.conflicts.notices(&conflicts, &plan.services, node, started);
        self.tell(contested);
        if self.liveness.is_on() {
            self.renewals.observe(&self.stores.leases.state(), started);
            let unheard = life_signs::unheard_but_alive(&view, &self.renewals, &self.announcer.held_back(), started);
            Stats::set_count(&self.stats.unheard_live_peers, unheard.len());
            self.tell(notices::liveness_channel(&self.said.unheard, &unheard, s.gossip_port));
            self.said.unheard = unheard;
        }
        // Before liveness has settled this speaker may count peers alive that are not (or the reverse), and
        // would tell users about a view that is about to change.
        if !self.liveness.is_on() || settled {
            let reported = if plan.reporter { diagnose::count(plan.unannounced.values()) } else { BTreeMap::new() };
            self.stats.unannounced.set(reported);
            self.tell(notices::unannounced(&self.said.unannounced, &plan));
            self.said.unannounced = plan.unannounced;
        }
        self.stats.announce_failed.set(diagnose::count(plan.failed.values()));
        self.tell(notices::announce_failed(&self.said.failed, &plan.failed));
        self.said.failed = plan.failed;
    }
}
