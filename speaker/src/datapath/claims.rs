//! What the responders hand the announcer: the addresses answered (and on which interfaces), the claims
//! they hear from others for the addresses the announcer watches, and the addresses clients asked for lately.

use crate::model::claim::{Asked, Heard};
use crate::wire::{self, Mac};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

/// Claims kept until the announcer drains them: a flood must not grow memory, and the newest are what matter.
const MAX_HEARD: usize = 4096;

/// Addresses owned, and the interfaces each is answered on.
pub type Owned = Arc<RwLock<BTreeMap<IpAddr, crate::model::plan::Interfaces>>>;

/// Where responders leave the claims they hear for addresses the announcer watches, and how they wake it.
#[derive(Default)]
pub struct ClaimSink {
    watched: RwLock<BTreeSet<IpAddr>>,
    heard: Mutex<VecDeque<Heard>>,
    asked: Mutex<Asked>,
    /// Signalled when a claim arrives.
    pub notify: tokio::sync::Notify,
}

impl ClaimSink {
    /// Listen for claims of exactly these addresses.
    pub fn watch(&self, ips: BTreeSet<IpAddr>) {
        if let Ok(mut w) = self.watched.write() {
            *w = ips;
        }
    }

    /// The claims heard since the last call.
    pub fn drain(&self) -> Vec<Heard> {
        self.heard.lock().map(|mut h| std::mem::take(&mut *h).into()).unwrap_or_default()
    }

    /// What clients asked for lately (a copy: it is small).
    pub fn asked(&self) -> Asked {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Remembers that a client asked for `ip`, which this node does not answer: if it is taken over, it is
    /// confirmed and announced first (docs/design.md §6.5).
    pub fn saw_asked(&self, ip: IpAddr) {
        if let Ok(mut a) = self.asked.lock() {
            a.record(ip, std::time::Instant::now());
        }
    }

    /// Keeps a claim `frame` makes, heard on the interface with MAC `on`, if it is for a watched address.
    pub fn offer(&self, frame: &[u8], on: Mac) {
        let Some((ip, mac)) = wire::claim(frame, on) else { return };
        if !self.watched.read().is_ok_and(|w| w.contains(&ip)) {
            return;
        }
        if let Ok(mut h) = self.heard.lock() {
            // Bounded: a flood of claims must not grow memory; the newest are what matter.
            if h.len() >= MAX_HEARD {
                h.pop_front();
            }
            h.push_back(Heard { ip, mac, on, at: std::time::Instant::now() });
        }
        self.notify.notify_one();
    }
}
