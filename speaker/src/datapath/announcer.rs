//! The announcer owns everything that puts frames on the wire for owned addresses: one raw-socket responder
//! per interface in use, the set of addresses the responders answer for (IPv4 with ARP, IPv6 with neighbour
//! discovery, whose solicited-node groups each responder joins), the probes asked before answering,
//! gratuitous ARP / unsolicited advertisement bursts on takeover and the optional periodic refresh. It runs as its own task so that probe
//! windows and retries keep their timing whatever the planner is doing; its API is one call,
//! [`Announcer::apply`] the desired state. Which wanted addresses are actually answered is decided by the
//! pure [`crate::model::claim`] rules from what the responders hear and from whom the plan says each address is
//! taken (one confirmation per dead node, docs/design.md §6.5).

use crate::datapath::claims::{ClaimSink, Owned};
use crate::datapath::responder::Responder;
use crate::gossip::SharedMembership;
use crate::model::claim::{Claims, Conflict, Handover, Seen, Timing};
use crate::model::interfaces::InterfaceInfo;
use crate::model::plan::Interfaces;
use crate::telemetry::stats::Stats;
use crate::wake::{Wake, WakeSender};
use crate::wire::Mac;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Address → interfaces answering for it (sets shared between addresses, so cloning this costs no string).
pub type Desired = BTreeMap<IpAddr, Interfaces>;

/// How the announcer sends gratuitous ARP and probes.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Gratuitous ARP on takeover at these offsets.
    pub garp: Vec<Duration>,
    /// Re-announce every answered address this often; `None`: only on takeover.
    pub refresh: Option<Duration>,
    /// Probe and retry timing.
    pub timing: Timing,
}

/// The handle the planner holds: desired state in; what is answered, held back and contested out.
pub struct Announcer {
    desired: watch::Sender<(Desired, Handover, Vec<InterfaceInfo>)>,
    owned: Owned,
    held_back: Arc<Mutex<BTreeMap<IpAddr, Mac>>>,
    conflicts: Arc<Mutex<Vec<Conflict>>>,
    stopped: Arc<AtomicBool>,
}

impl Announcer {
    /// Starts the announcer task. `changed` is poked whenever what is answered changes or a conflict is seen;
    /// `membership` tells which MACs belong to which node.
    pub fn spawn(stats: Arc<Stats>, schedule: Schedule, membership: SharedMembership, changed: WakeSender) -> Self {
        let (desired, desired_rx) = watch::channel((Desired::new(), Handover::default(), Vec::new()));
        let me = Self {
            desired,
            owned: Owned::default(),
            held_back: Arc::default(),
            conflicts: Arc::default(),
            stopped: Arc::default(),
        };
        let task = Task {
            owned: me.owned.clone(),
            held_back: me.held_back.clone(),
            conflicts: me.conflicts.clone(),
            stopped: me.stopped.clone(),
            sink: Arc::default(),
            stats,
            responders: BTreeMap::new(),
            claims: Claims::new(schedule.timing),
            schedule,
            last_refresh: Instant::now(),
            membership,
            changed,
        };
        tokio::spawn(task.run(desired_rx));
        me
    }

    /// Makes the wire match `want` (probing first what is new, once per node it is taken from, as `handover`
    /// says), on these interfaces.
    pub fn apply(&self, want: Desired, handover: Handover, interfaces: &[InterfaceInfo]) {
        self.desired.send_if_modified(|current| {
            if current.0 == want && current.1 == handover && current.2 == interfaces {
                return false;
            }
            *current = (want, handover, interfaces.to_vec());
            true
        });
    }

    /// The addresses answered right now.
    pub fn answering(&self) -> BTreeSet<IpAddr> {
        self.owned.read().map(|o| o.keys().copied().collect()).unwrap_or_default()
    }

    /// Wanted addresses another node's MAC answers for.
    pub fn held_back(&self) -> BTreeMap<IpAddr, Mac> {
        self.held_back.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Conflicts seen since the last call.
    pub fn take_conflicts(&self) -> Vec<Conflict> {
        self.conflicts.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
    }

    /// Stops answering for everything at once (shutdown: peers are told next, so nobody answers twice).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut o) = self.owned.write() {
            o.clear();
        }
    }
}

struct Task {
    owned: Owned,
    held_back: Arc<Mutex<BTreeMap<IpAddr, Mac>>>,
    conflicts: Arc<Mutex<Vec<Conflict>>>,
    stopped: Arc<AtomicBool>,
    sink: Arc<ClaimSink>,
    stats: Arc<Stats>,
    responders: BTreeMap<String, Arc<Responder>>,
    claims: Claims,
    schedule: Schedule,
    last_refresh: Instant,
    membership: SharedMembership,
    changed: WakeSender,
}

impl Task {
    async fn run(mut self, mut desired: watch::Receiver<(Desired, Handover, Vec<InterfaceInfo>)>) {
        let mut wake_at: Option<Instant> = None;
        loop {
            let deadline = [wake_at, self.schedule.refresh.map(|every| self.last_refresh + every)]
                .into_iter()
                .flatten()
                .min()
                .map_or_else(
                    || tokio::time::Instant::now() + Duration::from_secs(3600),
                    tokio::time::Instant::from_std,
                );
            let desired_changed = tokio::select! {
                changed = desired.changed() => if changed.is_err() { return } else { true },
                () = self.sink.notify.notified() => false,
                () = tokio::time::sleep_until(deadline) => false,
            };
            let (want, handover, interfaces) = desired.borrow_and_update().clone();
            wake_at = self.step(&want, &handover, &interfaces, desired_changed);
        }
    }

    /// Opens responders on interfaces newly needed, closes those of interfaces gone; says whether any changed.
    fn open_responders(&mut self, want: &Desired, interfaces: &[InterfaceInfo]) -> bool {
        let before = self.responders.len();
        let needed: BTreeSet<&String> = want.values().flat_map(|on| on.iter()).collect();
        // A responder lives while its interface does: same name and index (a NIC removed and added again gets
        // a new index, and the old socket would hear nothing).
        self.responders.retain(|name, r| interfaces.iter().any(|i| &i.name == name && i.index == r.index));
        let mut changed = self.responders.len() != before;
        for name in needed {
            if self.responders.contains_key(name) {
                continue;
            }
            let Some(info) = interfaces.iter().find(|i| &i.name == name) else { continue };
            match Responder::start(info, self.owned.clone(), self.sink.clone(), self.stats.clone()) {
                Ok(r) => {
                    tracing::info!(interface = %name, mac = %r.mac, "answering ARP and neighbour solicitations");
                    self.responders.insert(name.clone(), Arc::new(r));
                    changed = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot open raw socket"),
            }
        }
        changed
    }

    /// The responders of the interfaces `ip` is wanted on.
    fn responders_for(&self, want: &Desired, ip: IpAddr) -> Vec<Arc<Responder>> {
        want.get(&ip).into_iter().flat_map(|on| on.iter()).filter_map(|n| self.responders.get(n).cloned()).collect()
    }

    /// Joins each responder to the solicited-node groups of the IPv6 addresses it may answer, and has the
    /// responders report claims of exactly the wanted addresses.
    fn listen(&self, want: &Desired) {
        for (name, responder) in &self.responders {
            let v6: BTreeSet<Ipv6Addr> = want
                .iter()
                .filter(|(_, on)| on.contains(name))
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .collect();
            responder.listen_for(&v6, &self.stats);
        }
        self.sink.watch(want.keys().copied().collect());
    }

    fn step(
        &mut self,
        want: &Desired,
        handover: &Handover,
        interfaces: &[InterfaceInfo],
        desired_changed: bool,
    ) -> Option<Instant> {
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        // Groups and watched addresses follow only the desired state and the responders: steps woken by a claim
        // or a probe timer (every 25 ms while probing) need not rebuild them from every wanted address.
        let responders_changed = self.open_responders(want, interfaces);
        if desired_changed || responders_changed {
            self.listen(want);
        }
        let heard = self.sink.drain();
        let asked = self.sink.asked();
        let mine: BTreeSet<Mac> = self.responders.values().map(|r| r.mac).collect();
        let nodes: BTreeMap<Mac, String> = self
            .membership
            .lock()
            .map(|m| m.node_macs().into_iter().map(|(mac, node)| (Mac(mac), node)).collect())
            .unwrap_or_default();
        let now = Instant::now();
        let wanted: BTreeSet<IpAddr> = want.keys().copied().collect();
        let seen = Seen { heard: &heard, asked: &asked, mine: &mine, nodes: &nodes };
        let acts = self.claims.step(&wanted, handover, &seen, now);
        // Newly answered addresses are answered and announced before anything else is done here: a takeover of
        // thousands must not wait for the bookkeeping below. The burst keeps the claim rules' order (asked-for
        // addresses first).
        let taken: Vec<IpAddr> = if self.stopped.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            acts.announce.iter().copied().filter(|ip| want.contains_key(ip)).collect()
        };
        if !taken.is_empty() {
            if let Ok(mut o) = self.owned.write() {
                o.extend(taken.iter().filter_map(|ip| want.get(ip).map(|on| (*ip, on.clone()))));
            }
            self.burst(taken.iter().map(|ip| (*ip, self.responders_for(want, *ip))).collect());
        }
        for (node, taken) in &acts.owners_gone {
            tracing::info!(%node, addresses = taken, "nobody answered for the addresses of a node judged dead: taking them all");
        }
        for (node, mac) in &acts.owners_answered {
            tracing::warn!(%node, %mac, "a node judged dead still answers for its addresses: holding them all back");
        }
        for ip in &acts.probe {
            for r in self.responders_for(want, *ip) {
                r.probe(*ip, &self.stats);
            }
        }
        let before = self.owned.read().map(|o| o.clone()).unwrap_or_default();
        let after: Desired =
            want.iter().filter(|(ip, _)| acts.answer.contains(ip)).map(|(ip, on)| (*ip, on.clone())).collect();
        if let Some(every) = self.schedule.refresh
            && self.last_refresh.elapsed() >= every
        {
            self.last_refresh = Instant::now();
            for ip in before.keys() {
                for r in self.responders_for(want, *ip) {
                    r.announce(*ip, &self.stats);
                }
            }
        }
        let held = self.claims.held_back();
        Stats::set_count(&self.stats.held_back, held.len());
        let held_changed =
            self.held_back.lock().map(|mut h| std::mem::replace(&mut *h, held.clone()) != held).unwrap_or(false);
        let conflicted = !acts.conflicts.is_empty();
        if let Ok(mut c) = self.conflicts.lock() {
            c.extend(acts.conflicts);
        }
        for ip in &acts.assert {
            for r in self.responders_for(want, *ip) {
                r.announce(*ip, &self.stats);
            }
        }
        if before != after && !self.stopped.load(Ordering::SeqCst) {
            if let Ok(mut o) = self.owned.write() {
                *o = after.clone();
            }
            for ip in before.keys().filter(|ip| !after.contains_key(ip)) {
                match held.get(ip) {
                    Some(mac) => tracing::warn!(%ip, %mac, "another node answers for this address; stopped answering"),
                    None => tracing::info!(%ip, "no longer the owner; stopped answering"),
                }
                self.stats.releases.inc();
            }
            // Answered on other interfaces than before: announced there too.
            let moved: Vec<IpAddr> =
                after.iter().filter(|(ip, on)| before.get(ip) != Some(*on)).map(|(ip, _)| *ip).collect();
            self.burst(moved.iter().map(|ip| (*ip, self.responders_for(want, *ip))).collect());
            for ip in &moved {
                tracing::info!(%ip, interfaces = ?after.get(ip), "took ownership; announcing");
                self.stats.takeovers.inc();
            }
        }
        for ip in &taken {
            tracing::info!(%ip, interfaces = ?want.get(ip), "took ownership; announcing");
            self.stats.takeovers.inc();
        }
        if !taken.is_empty() || before != after || held_changed || conflicted {
            let _ = self.changed.send(Wake::Announcer);
        }
        acts.wake_at
    }

    /// The gratuitous ARP burst on takeover, for addresses taken together, in their order (one task however many
    /// they are); an address's burst stops the moment this node stops answering for it.
    fn burst(&self, addresses: Vec<(IpAddr, Vec<Arc<Responder>>)>) {
        if addresses.is_empty() {
            return;
        }
        let (owned, stats, schedule) = (self.owned.clone(), self.stats.clone(), self.schedule.garp.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for at in schedule {
                tokio::time::sleep_until(start + at).await;
                for (ip, targets) in &addresses {
                    if !owned.read().is_ok_and(|o| o.contains_key(ip)) {
                        continue;
                    }
                    for r in targets {
                        r.announce(*ip, &stats);
                    }
                }
            }
        });
    }
}
