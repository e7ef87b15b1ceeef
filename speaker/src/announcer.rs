//! The announcer owns everything that puts frames on the wire for owned addresses: one raw-socket responder
//! per interface in use, the set of owned addresses the responders answer for, gratuitous ARP bursts on
//! takeover and the optional periodic refresh. Its API is one call: [`Announcer::apply`] the desired state.

use crate::iface::InterfaceInfo;
use crate::raw::{Owned, Responder, Stats};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Address → interfaces answering for it.
pub type Desired = BTreeMap<Ipv4Addr, BTreeSet<String>>;

/// Responders, owned addresses and gratuitous ARP.
pub struct Announcer {
    owned: Owned,
    stats: Arc<Stats>,
    responders: BTreeMap<String, Arc<Responder>>,
    garp_schedule: Vec<Duration>,
    garp_refresh: Option<Duration>,
    last_refresh: Instant,
}

impl Announcer {
    /// An announcer that owns nothing yet.
    pub fn new(stats: Arc<Stats>, garp_schedule: Vec<Duration>, garp_refresh: Option<Duration>) -> Self {
        Self {
            owned: Owned::default(),
            stats,
            responders: BTreeMap::new(),
            garp_schedule,
            garp_refresh,
            last_refresh: Instant::now(),
        }
    }

    /// Makes the wire match `want`: opens responders on newly needed interfaces (and closes those of
    /// interfaces gone), answers for exactly `want`, and announces every address newly owned (or owned on new
    /// interfaces) with a gratuitous ARP burst that stops the moment ownership moves on.
    pub fn apply(&mut self, want: Desired, interfaces: &[InterfaceInfo]) {
        let needed: BTreeSet<&String> = want.values().flatten().collect();
        self.responders.retain(|name, _| needed.contains(name) || interfaces.iter().any(|i| &i.name == name));
        for name in needed {
            if self.responders.contains_key(name) {
                continue;
            }
            let Some(info) = interfaces.iter().find(|i| &i.name == name) else { continue };
            match Responder::start(info, self.owned.clone(), self.stats.clone()) {
                Ok(r) => {
                    tracing::info!(interface = %name, mac = %r.mac, "answering ARP");
                    self.responders.insert(name.clone(), Arc::new(r));
                }
                Err(e) => tracing::error!(error = %e, "cannot open raw socket"),
            }
        }
        let before = self.owned.read().map(|o| o.clone()).unwrap_or_default();
        if let Some(every) = self.garp_refresh
            && self.last_refresh.elapsed() >= every
        {
            self.last_refresh = Instant::now();
            for (ip, on) in &before {
                for r in on.iter().filter_map(|n| self.responders.get(n)) {
                    r.announce(*ip, &self.stats);
                }
            }
        }
        if before == want {
            return;
        }
        if let Ok(mut o) = self.owned.write() {
            *o = want.clone();
        }
        for ip in before.keys().filter(|ip| !want.contains_key(ip)) {
            tracing::info!(%ip, "no longer the owner; stopped answering");
            self.stats.releases.fetch_add(1, Ordering::Relaxed);
        }
        for (ip, on) in want.iter().filter(|(ip, on)| before.get(ip) != Some(on)) {
            tracing::info!(%ip, interfaces = ?on, "took ownership; announcing");
            self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
            let targets: Vec<Arc<Responder>> = on.iter().filter_map(|n| self.responders.get(n).cloned()).collect();
            let (ip, owned, stats, schedule) =
                (*ip, self.owned.clone(), self.stats.clone(), self.garp_schedule.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                for at in schedule {
                    tokio::time::sleep_until(start + at).await;
                    if !owned.read().is_ok_and(|o| o.contains_key(&ip)) {
                        return;
                    }
                    for r in &targets {
                        r.announce(ip, &stats);
                    }
                }
            });
        }
    }

    /// Stops answering for everything at once (shutdown: peers are told next, so nobody answers twice).
    pub fn stop(&self) {
        if let Ok(mut o) = self.owned.write() {
            o.clear();
        }
    }
}
