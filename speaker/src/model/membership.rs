//! Who is alive, at a cost per speaker that does not grow with the cluster (docs/design.md §5).
//!
//! - **A ring of watchers.** Speakers are placed on a ring by a fixed hash of their node name. Each sends its
//!   heartbeat only to the next [`Config::watchers`] live speakers on the ring (its watchers), so each sends and
//!   receives `watchers` heartbeats per interval whatever the cluster's size.
//! - **Suspicion, then a verdict by quorum.** A watcher that has not heard its subject for `dead_after` suspects
//!   it and tells the subject's other watchers (and the subject, which answers if it can). Once
//!   [`Config::quorum`] watchers agree (or every other watcher is known dead), the subject is dead: the watchers
//!   tell every speaker, once, with the subject's last counter they heard. One watcher on a lossy link alone
//!   convicts nobody.
//! - **Refutation.** A verdict is about a message: any later word from the subject outweighs it. A live subject
//!   that hears a verdict on itself tells everyone it is alive; a speaker that holds a peer dead asks it directly
//!   every [`Config::ask_dead_every`], so a lost refutation heals too.
//! - **Start.** A speaker says hello to every speaker, and each answers: it learns who is alive (and their MACs)
//!   at once. A peer never heard counts by its Node's `Ready` until [`Config::settle`] has passed, then as dead.
//!
//! A death verdict only makes the new owner *probe* the address (model/claim.rs): a wrong verdict costs a few
//! ARP frames, not an ownership change. Sans-I/O: messages and time come in, what to say to whom goes out; the
//! shell (gossip/) owns the socket, the key and the counter.

use crate::model::liveness::{Kind, Message, Reject, Subject};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Incarnations of one peer remembered as retired, so their messages stay rejected (restarts are rare).
const RETIRED_KEPT: usize = 16;
/// A peer that sent the previous format this recently means old speakers run: heartbeats go to everyone in it.
const LEGACY_MEMORY: Duration = Duration::from_secs(10);
/// At most this many peers believed dead are asked per round (a cluster-wide outage must not become a storm).
const ASK_PER_ROUND: usize = 64;

/// The protocol's knobs; every speaker of a cluster must use the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Silence after which a watcher suspects its subject.
    pub dead_after: Duration,
    /// A suspect is asked directly for this long before its watcher tells the others: an answer (it is only the
    /// heartbeats that were lost) ends the suspicion.
    pub confirm_wait: Duration,
    /// How many watchers each speaker has (fewer in clusters with fewer speakers).
    pub watchers: usize,
    /// How many watchers must suspect a subject before it is dead (fewer when fewer are alive).
    pub quorum: usize,
    /// A peer believed dead is asked this often whether it is alive.
    pub ask_dead_every: Duration,
    /// A subject silent this long without a quorum is dead to this speaker alone (not told to others): when the
    /// liveness port is blocked everywhere no quorum forms, and a dead owner must still be replaced — by a watcher
    /// that probes its addresses first (model/claim.rs), as any verdict only proposes a takeover.
    pub alone_after: Duration,
    /// A peer never heard counts by its Node's `Ready` until this long after the start.
    pub settle: Duration,
    /// A verdict is sent this many times (a lost verdict delays a failover; a repeated one costs nothing).
    pub verdict_copies: u8,
}

impl Config {
    /// The defaults for a silence bound of `dead_after`.
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            confirm_wait: Duration::from_millis(30),
            watchers: 3,
            quorum: 2,
            ask_dead_every: Duration::from_secs(1),
            alone_after: dead_after * 10,
            settle: dead_after * 3,
            verdict_copies: 2,
        }
    }
}

/// A peer's state as this speaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Heard, and no verdict of death newer than what was heard.
    Alive,
    /// Said it is leaving, was convicted by its watchers, or was never heard although this speaker has listened
    /// long enough.
    Dead,
    /// Never heard from yet: use the fallback signal.
    Unknown,
}

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// One speaker.
    Node(Arc<str>),
    /// Every speaker on the ring.
    Everyone,
}

/// Something this speaker must say; the shell adds who it is (name, incarnation, counter, MACs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    /// To whom.
    pub to: To,
    /// What.
    pub kind: Kind,
    /// How many times (spaced by the shell).
    pub copies: u8,
}

impl Say {
    fn once(to: To, kind: Kind) -> Self {
        Self { to, kind, copies: 1 }
    }
}

/// The speakers in ring order: by a fixed hash of the node name, so every speaker builds the same ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    order: Vec<(u64, Arc<str>)>,
}

impl Ring {
    /// The ring of these speakers (duplicates ignored).
    pub fn new<I: IntoIterator<Item = Arc<str>>>(names: I) -> Self {
        let mut order: Vec<(u64, Arc<str>)> = names.into_iter().map(|n| (ring_hash(&n), n)).collect();
        order.sort();
        order.dedup();
        Self { order }
    }

    /// How many speakers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// No speaker at all.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The speakers' names.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.order.iter().map(|(_, n)| n)
    }

    /// Where `name` is or would be on the ring.
    fn position(&self, name: &str) -> usize {
        let key = ring_hash(name);
        self.order.partition_point(|(h, n)| (*h, n.as_ref()) < (key, name))
    }

    /// Walks the ring from `name` (excluded) forwards or backwards, yielding each other speaker once.
    fn walk<'a>(&'a self, name: &'a str, forward: bool) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        let len = self.order.len();
        let at = self.position(name);
        // Forwards starts at the position itself (the next larger key) unless that is `name`; backwards starts
        // just before it.
        (0..len)
            .map(move |i| if forward { (at + i) % len } else { (at + len - 1 - i) % len })
            .map(move |i| &self.order[i].1)
            .filter(move |n| n.as_ref() != name)
    }
}

/// FNV-1a with a splitmix64 finaliser: fixed forever (every speaker version must build the same ring).
fn ring_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    incarnation: u64,
    counter: u64,
    at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conviction {
    incarnation: u64,
    counter: u64,
    since: Instant,
    /// Judged by this speaker alone (no quorum, `alone_after`): it stays on this speaker's ring, so its own
    /// watching and the others' quorums do not shift.
    local: bool,
}

/// A peer in trouble: suspected by this speaker or by others (rare, so kept out of line).
#[derive(Debug, Clone, Default)]
struct Trouble {
    /// Other watchers' suspicions of this peer, and when they arrived.
    suspicions: Vec<(Arc<str>, Instant)>,
    /// When this speaker began to suspect it (this silence).
    suspected_since: Option<Instant>,
    /// When this speaker last told the other watchers.
    told_at: Option<Instant>,
}

/// One peer. Small on purpose: every speaker holds one per speaker of the cluster.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// On the ring (a speaker runs there, by discovery); an unlisted peer is known only by its messages.
    listed: bool,
    left: bool,
    heard: Option<Word>,
    retired: Vec<u64>,
    macs: Box<[[u8; 6]]>,
    dead: Option<Box<Conviction>>,
    trouble: Option<Box<Trouble>>,
}

impl Peer {
    fn subject(&self, node: &Arc<str>) -> Subject {
        let (incarnation, counter) = self.heard.map_or((0, 0), |w| (w.incarnation, w.counter));
        Subject { node: node.to_string(), incarnation, counter }
    }

    /// On the ring as far as this speaker knows: listed, not gone, not convicted.
    fn on_ring(&self) -> bool {
        self.listed && !self.left && self.dead.as_ref().is_none_or(|d| d.local)
    }

    /// What this speaker heard of the peer is later than the message `subject` names.
    fn heard_after(&self, subject: &Subject) -> bool {
        match self.heard {
            Some(w) if w.incarnation == subject.incarnation => w.counter > subject.counter,
            Some(_) => self.retired.contains(&subject.incarnation),
            None => false,
        }
    }
}

/// Everything this speaker knows about the others' liveness, and the protocol's memory.
#[derive(Debug, Clone)]
pub struct Membership {
    me: Arc<str>,
    config: Config,
    started: Instant,
    settled_told: bool,
    ring: Arc<Ring>,
    peers: BTreeMap<Arc<str>, Peer>,
    /// The peers this speaker watches, and since when (silence counts from then for a peer never heard).
    watching: BTreeMap<Arc<str>, Instant>,
    to_ask: BTreeSet<Arc<str>>,
    last_ask: Option<Instant>,
    last_refutation: Option<Instant>,
    legacy_heard: Option<Instant>,
    version: u64,
    declared: Vec<(String, Duration)>,
    detected: Vec<(String, Duration)>,
}

impl Membership {
    /// The view of `me`, started at `now`.
    pub fn new(me: &str, config: Config, now: Instant) -> Self {
        Self {
            me: me.into(),
            config,
            started: now,
            settled_told: false,
            ring: Arc::default(),
            peers: BTreeMap::new(),
            watching: BTreeMap::new(),
            to_ask: BTreeSet::new(),
            last_ask: None,
            last_refutation: None,
            legacy_heard: None,
            version: 0,
            declared: Vec::new(),
            detected: Vec::new(),
        }
    }

    /// The protocol's knobs.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Grows whenever a verdict may have changed: the shell re-runs the election then.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// This speaker has listened long enough that a peer never heard is not running.
    pub fn settled(&self, now: Instant) -> bool {
        now >= self.started + self.config.settle
    }

    /// The speakers that run (from discovery). Returns the hello to send to the ones not heard yet.
    pub fn set_ring(&mut self, ring: Arc<Ring>) -> Vec<Say> {
        if self.ring == ring {
            return Vec::new();
        }
        let listed: BTreeSet<&Arc<str>> = ring.names().collect();
        self.peers.retain(|name, p| listed.contains(name) || p.heard.is_some());
        for p in self.peers.values_mut() {
            p.listed = false;
        }
        let mut hello = Vec::new();
        for name in ring.names().filter(|n| n.as_ref() != self.me.as_ref()) {
            let peer = self.peers.entry(name.clone()).or_default();
            peer.listed = true;
            if peer.heard.is_none() {
                hello.push(Say::once(To::Node(name.clone()), Kind::Hello));
            }
        }
        self.to_ask.retain(|n| listed.contains(n));
        self.ring = ring;
        self.version += 1;
        hello
    }

    /// The speakers on the ring.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    fn on_ring(&self, name: &str) -> bool {
        name == self.me.as_ref() || self.peers.get(name).is_some_and(Peer::on_ring)
    }

    /// The live speakers that watch `subject` (this speaker's view): the next `watchers` on the ring.
    fn watchers_of(&self, subject: &str) -> Vec<Arc<str>> {
        self.ring.walk(subject, true).filter(|n| self.on_ring(n)).take(self.config.watchers).cloned().collect()
    }

    /// Where this speaker's heartbeats go: its watchers.
    pub fn heartbeat_targets(&self) -> Vec<Arc<str>> {
        self.watchers_of(&self.me)
    }

    /// Old speakers (the previous format) were heard lately: heartbeats must go to everyone in their format, and
    /// every peer is judged first-hand (see [`Membership::tick`]).
    pub fn legacy_peers(&self, now: Instant) -> bool {
        self.legacy_heard.is_some_and(|at| now.saturating_duration_since(at) < LEGACY_MEMORY)
    }

    /// The speakers this one watches: the live ones whose next `watchers` live successors include it.
    pub fn subjects(&self) -> Vec<Arc<str>> {
        self.ring.walk(&self.me, false).filter(|n| self.on_ring(n)).take(self.config.watchers).cloned().collect()
    }

    /// Takes in a verified message received at `now`, and says what to answer. Within an incarnation the counter
    /// must grow; a new incarnation (the peer restarted) is taken unless it was seen and retired before.
    pub fn receive(&mut self, msg: &Message, now: Instant) -> Result<Vec<Say>, Reject> {
        if msg.node == self.me.as_ref() {
            return Err(Reject::FromSelf);
        }
        let sender: Arc<str> = match self.peers.get_key_value(msg.node.as_str()) {
            Some((name, _)) => name.clone(),
            None => msg.node.as_str().into(),
        };
        let peer = self.peers.entry(sender.clone()).or_default();
        if let Some(w) = peer.heard {
            if msg.incarnation == w.incarnation && msg.counter <= w.counter {
                return Err(Reject::Replay);
            }
            if peer.retired.contains(&msg.incarnation) {
                return Err(Reject::Replay);
            }
            if msg.incarnation != w.incarnation {
                peer.retired.push(w.incarnation);
                if peer.retired.len() > RETIRED_KEPT {
                    peer.retired.remove(0);
                }
            }
        }
        let was_heard = peer.heard.is_some();
        peer.heard = Some(Word { incarnation: msg.incarnation, counter: msg.counter, at: now });
        if (!msg.macs.is_empty() || !msg.legacy) && *peer.macs != *msg.macs {
            peer.macs = msg.macs.clone().into_boxed_slice();
        }
        // Heard: whatever this speaker or others suspected of it, its silence (as far as this one knows) is over.
        peer.trouble = None;
        let mut changed = !was_heard;
        if let Some(dead) = peer.dead.as_deref() {
            let same = msg.incarnation == dead.incarnation;
            if !same || msg.counter > dead.counter {
                peer.dead = None;
                changed = true;
            }
        }
        let leaving = msg.kind == Kind::Leaving;
        changed |= peer.left != leaving;
        peer.left = leaving;
        if peer.dead.is_none() && !peer.left {
            self.to_ask.remove(&sender);
        }
        if msg.from_old_speaker() {
            self.legacy_heard = Some(now);
        }
        if changed {
            self.version += 1;
        }
        let mut out = Vec::new();
        match &msg.kind {
            Kind::Alive | Kind::Leaving => {}
            Kind::Hello => out.push(Say::once(To::Node(sender), Kind::Alive)),
            Kind::Suspect(subject) if subject.node == self.me.as_ref() => {
                out.push(Say::once(To::Node(sender), Kind::Alive));
            }
            Kind::Suspect(subject) => {
                // Counted only while this speaker is silent on the subject too (see `tick`).
                if let Some(p) = self.peers.get_mut(subject.node.as_str()) {
                    let trouble = p.trouble.get_or_insert_with(Box::default);
                    trouble.suspicions.retain(|(by, _)| *by != sender);
                    trouble.suspicions.push((sender, now));
                }
            }
            Kind::Dead(subject) if subject.node == self.me.as_ref() => {
                let quiet = self.config.dead_after / 2;
                if self.last_refutation.is_none_or(|at| now.saturating_duration_since(at) >= quiet) {
                    self.last_refutation = Some(now);
                    out.push(Say { to: To::Everyone, kind: Kind::Alive, copies: self.config.verdict_copies });
                }
            }
            Kind::Dead(subject) => self.convict(subject, now, false),
        }
        Ok(out)
    }

    fn convict(&mut self, subject: &Subject, now: Instant, local: bool) {
        let Some(peer) = self.peers.get_mut(subject.node.as_str()) else { return };
        // What this speaker heard after the message the verdict is about outweighs it while it is recent (a
        // refutation, an answer); a watcher's word from before its own silence does not.
        let recent = peer.heard.is_some_and(|w| now.saturating_duration_since(w.at) <= self.config.dead_after);
        // A verdict of the watchers replaces this speaker's own.
        let already = peer.dead.as_ref().is_some_and(|d| local || !d.local);
        if peer.left || already || (recent && peer.heard_after(subject)) {
            return;
        }
        let (incarnation, counter) = (subject.incarnation, subject.counter);
        if !local && let Some(since) = self.watching.get(subject.node.as_str()) {
            // A subject this speaker watched: how long it had been silent here is the detection latency, whether
            // this speaker declared the death or heard another watcher's verdict first.
            let last = peer.heard.map_or(*since, |w| w.at.max(*since));
            self.detected.push((subject.node.clone(), now.saturating_duration_since(last)));
        }
        peer.dead = Some(Box::new(Conviction { incarnation, counter, since: now, local }));
        peer.trouble = None;
        if let Some((name, _)) = self.peers.get_key_value(subject.node.as_str()) {
            self.to_ask.insert(name.clone());
        }
        self.version += 1;
    }

    /// Time passes: watch the subjects, convict the ones the watchers agree on, ask the ones believed dead.
    ///
    /// While old speakers run, every speaker sends its heartbeats to every other, and old speakers neither send nor
    /// read suspicions and verdicts: a quorum of watchers may never form, and a speaker that watches nobody whose
    /// watchers are old would never hear a verdict. So then every peer is this speaker's subject and its own
    /// silence convicts it, as the old speakers judge (each verdict still only makes the new owner probe).
    pub fn tick(&mut self, now: Instant) -> Vec<Say> {
        let mut out = Vec::new();
        if !self.settled_told && self.settled(now) {
            self.settled_told = true;
            self.version += 1;
            let unheard: Vec<Arc<str>> =
                self.peers.iter().filter(|(_, p)| p.listed && p.heard.is_none()).map(|(n, _)| n.clone()).collect();
            self.to_ask.extend(unheard);
        }
        let first_hand = self.legacy_peers(now);
        let subjects: Vec<Arc<str>> = if first_hand {
            self.ring.walk(&self.me, false).filter(|n| self.on_ring(n)).cloned().collect()
        } else {
            self.subjects()
        };
        // A set: with old speakers running, the subjects are every peer.
        let watched: BTreeSet<&Arc<str>> = subjects.iter().collect();
        self.watching.retain(|n, _| watched.contains(n));
        for subject in subjects {
            let since = *self.watching.entry(subject.clone()).or_insert(now);
            let others: Vec<Arc<str>> =
                self.watchers_of(&subject).into_iter().filter(|w| w.as_ref() != self.me.as_ref()).collect();
            let Config { dead_after, confirm_wait, quorum, .. } = self.config;
            let Some(peer) = self.peers.get_mut(&subject) else { continue };
            if peer.dead.is_some() {
                continue;
            }
            let last = peer.heard.map_or(since, |w| w.at.max(since));
            let silence = now.saturating_duration_since(last);
            if silence <= dead_after {
                continue;
            }
            let verdict = peer.subject(&subject);
            let trouble = peer.trouble.get_or_insert_with(Box::default);
            trouble.suspicions.retain(|(_, at)| now.saturating_duration_since(*at) <= dead_after);
            let suspected_since = *trouble.suspected_since.get_or_insert(now);
            if now.saturating_duration_since(suspected_since) < confirm_wait {
                // Only its heartbeats may have been lost: ask it directly (again) before telling anyone.
                out.push(Say::once(To::Node(subject.clone()), Kind::Suspect(verdict)));
                continue;
            }
            if trouble.told_at.is_none_or(|at| now.saturating_duration_since(at) >= dead_after) {
                trouble.told_at = Some(now);
                let kind = Kind::Suspect(verdict.clone());
                out.extend(others.iter().map(|w| Say::once(To::Node(w.clone()), kind.clone())));
            }
            let votes = if first_hand { 1 } else { quorum.min(1 + others.len()) };
            if 1 + trouble.suspicions.len() >= votes {
                self.declared.push((subject.to_string(), silence));
                self.convict(&verdict, now, false);
                self.watching.remove(&subject);
                out.push(Say { to: To::Everyone, kind: Kind::Dead(verdict), copies: self.config.verdict_copies });
            } else if silence > self.config.alone_after {
                // No quorum for this long: held dead here only, and asked every second like any dead peer.
                self.convict(&verdict, now, true);
            }
        }
        if self.last_ask.is_none_or(|at| now.saturating_duration_since(at) >= self.config.ask_dead_every) {
            self.last_ask = Some(now);
            let due: Vec<Arc<str>> = self.to_ask.iter().take(ASK_PER_ROUND).cloned().collect();
            // The next round asks the next ones: rotate the ones asked to the back.
            for name in &due {
                self.to_ask.remove(name);
            }
            out.extend(due.iter().map(|n| Say::once(To::Node(n.clone()), Kind::Hello)));
            self.to_ask.extend(due);
        }
        out
    }

    /// The deaths this speaker declared since the last call, with how long each subject had been silent.
    pub fn take_declared(&mut self) -> Vec<(String, Duration)> {
        std::mem::take(&mut self.declared)
    }

    /// The deaths of subjects this speaker watched, learned since the last call (declared here or by another
    /// watcher's verdict), with how long each had been silent here: the detection latency.
    pub fn take_detected(&mut self) -> Vec<(String, Duration)> {
        std::mem::take(&mut self.detected)
    }

    /// A peer's verdict at `now`. This speaker is always alive to itself.
    pub fn verdict(&self, node: &str, now: Instant) -> Verdict {
        if node == self.me.as_ref() {
            return Verdict::Alive;
        }
        match self.peers.get(node) {
            None => Verdict::Unknown,
            Some(p) if p.left || p.dead.is_some() => Verdict::Dead,
            Some(p) if p.heard.is_some() => Verdict::Alive,
            Some(_) if self.settled(now) => Verdict::Dead,
            Some(_) => Verdict::Unknown,
        }
    }

    /// Every MAC a peer has told us it owns, and whose it is (to tell a node's ARP from a stranger's).
    pub fn node_macs(&self) -> BTreeMap<[u8; 6], String> {
        self.peers.iter().flat_map(|(name, p)| p.macs.iter().map(move |m| (*m, name.to_string()))).collect()
    }

    /// Peers this speaker cannot hear although something else showed them alive since: held dead by a verdict
    /// with a sign after it, or watched and silent for `dead_after` with a sign after the last word. `signs_of_life`
    /// maps a node to the latest such sign (its ARP answering for an address, its kubelet renewing its Lease).
    /// That is a broken liveness channel, not a dead node (docs/design.md §5.6). Peers never heard, or that
    /// said they were leaving, are not counted: nothing says their speaker runs.
    pub fn unheard_but_alive(&self, signs_of_life: &BTreeMap<String, Instant>, now: Instant) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter_map(|(name, p)| {
                let heard = p.heard.filter(|_| !p.left)?;
                let silent_since = match p.dead.as_deref() {
                    Some(dead) => dead.since,
                    None if self.watching.contains_key(name)
                        && now.saturating_duration_since(heard.at) > self.config.dead_after =>
                    {
                        heard.at
                    }
                    None => return None,
                };
                signs_of_life.get(name.as_ref()).filter(|seen| **seen > silent_since).map(|_| name.to_string())
            })
            .collect()
    }

    /// Every known peer's verdict at `now` (for the log, when the version changes).
    pub fn verdicts(&self, now: Instant) -> BTreeMap<String, Verdict> {
        self.peers.keys().map(|n| (n.to_string(), self.verdict(n, now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn names(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("node-{i}"))).collect()
    }

    /// Speakers wired to each other with instant delivery and a filter deciding which datagrams are lost.
    struct Net {
        nodes: BTreeMap<Arc<str>, (Membership, u64)>,
        now: Instant,
        sent: usize,
    }

    impl Net {
        fn new(n: usize) -> Self {
            let now = Instant::now();
            let ring = Arc::new(Ring::new(names(n)));
            let mut net = Self { nodes: BTreeMap::new(), now, sent: 0 };
            for name in names(n) {
                let mut m = Membership::new(&name, Config::new(200 * MS), now);
                let hello = m.set_ring(ring.clone());
                net.nodes.insert(name.clone(), (m, 0));
                net.deliver(&name, hello, &|_, _| true);
            }
            net
        }

        fn message(&mut self, from: &str, kind: Kind) -> Message {
            let entry = self.nodes.get_mut(from).expect("node");
            entry.1 += 1;
            Message { kind, node: from.into(), incarnation: 1, counter: entry.1, macs: vec![], legacy: false }
        }

        /// Delivers what `from` says (and the answers, recursively) where `passes(from, to)` lets it through.
        fn deliver(&mut self, from: &str, says: Vec<Say>, passes: &dyn Fn(&str, &str) -> bool) {
            let mut queue: Vec<(Arc<str>, Say)> = says.into_iter().map(|s| (Arc::from(from), s)).collect();
            while let Some((from, say)) = queue.pop() {
                let targets: Vec<Arc<str>> = match &say.to {
                    To::Node(n) => vec![n.clone()],
                    To::Everyone => self.nodes[&from].0.ring().names().filter(|n| **n != from).cloned().collect(),
                };
                // One message per thing said, sent to every target, as the shell does.
                let msg = self.message(&from, say.kind.clone());
                for to in targets {
                    self.sent += 1;
                    if !passes(&from, &to) {
                        continue;
                    }
                    let now = self.now;
                    let Some((m, _)) = self.nodes.get_mut(&to) else { continue };
                    let answers = m.receive(&msg, now).expect("accepted");
                    queue.extend(answers.into_iter().map(|s| (to.clone(), s)));
                }
            }
        }

        /// Runs for `duration` in 10 ms steps: heartbeats every 50 ms, ticks every 10 ms, for the nodes `alive`.
        fn run(&mut self, duration: Duration, alive: &dyn Fn(&str) -> bool, passes: &dyn Fn(&str, &str) -> bool) {
            let steps = duration.as_millis() / 10;
            for step in 0..steps {
                self.now += 10 * MS;
                let names: Vec<Arc<str>> = self.nodes.keys().filter(|n| alive(n)).cloned().collect();
                for name in &names {
                    let mut says = Vec::new();
                    if step % 5 == 0 {
                        let targets = self.nodes[name].0.heartbeat_targets();
                        says.extend(targets.into_iter().map(|t| Say::once(To::Node(t), Kind::Alive)));
                    }
                    let now = self.now;
                    says.extend(self.nodes.get_mut(name).expect("node").0.tick(now));
                    let passes_alive = |f: &str, t: &str| alive(t) && passes(f, t);
                    self.deliver(name, says, &passes_alive);
                }
            }
        }

        fn verdict(&self, of: &str, about: &str) -> Verdict {
            self.nodes[of].0.verdict(about, self.now)
        }
    }

    #[test]
    fn the_ring_is_the_same_from_any_order_and_each_speaker_has_its_watchers() {
        let a = Ring::new(names(10));
        let b = Ring::new(names(10).into_iter().rev());
        assert_eq!(a, b);
        let net = Net::new(10);
        // Each speaker watches exactly `watchers` others and is watched by exactly as many: the cost does not
        // depend on the cluster's size.
        let mut watched_by: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for (name, (m, _)) in &net.nodes {
            let targets = m.heartbeat_targets();
            assert_eq!(targets.len(), 3, "{name}");
            assert!(!targets.contains(name));
            for t in targets {
                *watched_by.entry(t).or_default() += 1;
            }
            assert_eq!(m.subjects().len(), 3);
        }
        assert!(watched_by.values().all(|n| *n == 3), "{watched_by:?}");
        // Small clusters: everyone watches everyone else.
        let two = Net::new(2);
        assert_eq!(two.nodes[&Arc::from("node-0")].0.heartbeat_targets(), vec![Arc::from("node-1")]);
    }

    #[test]
    fn hello_at_start_makes_every_speaker_heard_by_every_other() {
        let net = Net::new(6);
        for a in net.nodes.keys() {
            for b in net.nodes.keys() {
                assert_eq!(net.verdict(a, b), Verdict::Alive, "{a} about {b}");
            }
        }
    }

    #[test]
    fn a_killed_speaker_is_convicted_by_its_watchers_and_everyone_learns_it() {
        let mut net = Net::new(12);
        net.run(500 * MS, &|_| true, &|_, _| true);
        let victim = "node-5";
        let sent_before = net.sent;
        net.run(400 * MS, &|n| n != victim, &|_, _| true);
        for name in net.nodes.keys().filter(|n| n.as_ref() != victim) {
            assert_eq!(net.verdict(name, victim), Verdict::Dead, "{name}");
            assert_eq!(net.verdict(name, "node-6"), Verdict::Alive, "{name}");
        }
        let declared: usize = net.nodes.values_mut().map(|(m, _)| m.take_declared().len()).sum();
        assert!((1..=3).contains(&declared), "its watchers declared it: {declared}");
        // Every watcher counts the detection, also one that heard another's verdict before declaring.
        let detected: Vec<Duration> =
            net.nodes.values_mut().flat_map(|(m, _)| m.take_detected()).map(|(_, silence)| silence).collect();
        assert_eq!(detected.len(), 3, "{detected:?}");
        assert!(detected.iter().all(|d| *d > 200 * MS), "{detected:?}");
        // The ring closes over the hole: someone else now gets the heartbeats the victim got.
        for (name, (m, _)) in &net.nodes {
            if name.as_ref() != victim {
                assert!(!m.heartbeat_targets().iter().any(|t| t.as_ref() == victim), "{name}");
                assert_eq!(m.heartbeat_targets().len(), 3);
            }
        }
        assert!(net.sent > sent_before);
    }

    #[test]
    fn one_lossy_watcher_convicts_nobody() {
        let mut net = Net::new(8);
        net.run(300 * MS, &|_| true, &|_, _| true);
        let subject = "node-3";
        let watchers = net.nodes[&Arc::from(subject)].0.heartbeat_targets();
        let deaf = watchers[0].clone();
        // Everything from the subject to one of its watchers is lost, for a second and a half.
        net.run(1500 * MS, &|_| true, &|f, t| !(f == subject && t == deaf.as_ref()));
        for name in net.nodes.keys() {
            assert_eq!(net.verdict(name, subject), Verdict::Alive, "{name}");
        }
        assert!(net.nodes.values_mut().all(|(m, _)| m.take_declared().is_empty()));
    }

    #[test]
    fn a_wrong_verdict_is_refuted_by_the_live_subject() {
        let mut net = Net::new(8);
        net.run(300 * MS, &|_| true, &|_, _| true);
        let subject = "node-2";
        // Cut the subject's heartbeats to all its watchers, but let it hear everything: its watchers convict it,
        // it hears the verdict and tells everyone it lives.
        let watchers = net.nodes[&Arc::from(subject)].0.heartbeat_targets();
        let cut = |f: &str, t: &str| !(f == subject && watchers.iter().any(|w| w.as_ref() == t));
        net.run(300 * MS, &|_| true, &cut);
        let declared: usize = net.nodes.values_mut().map(|(m, _)| m.take_declared().len()).sum();
        assert!(declared >= 1, "the watchers agreed");
        // The refutation reached the others, whose last word from the subject is now later than the verdict.
        let others: Vec<Arc<str>> =
            net.nodes.keys().filter(|n| n.as_ref() != subject && !watchers.contains(n)).cloned().collect();
        for name in &others {
            assert_eq!(net.verdict(name, subject), Verdict::Alive, "{name} heard the refutation");
        }
        // Once heartbeats flow again, the watchers hear it too.
        net.run(300 * MS, &|_| true, &|_, _| true);
        for name in net.nodes.keys() {
            assert_eq!(net.verdict(name, subject), Verdict::Alive, "{name}");
        }
    }

    #[test]
    fn a_peer_believed_dead_is_asked_and_its_answer_revives_it() {
        let mut net = Net::new(5);
        net.run(300 * MS, &|_| true, &|_, _| true);
        let (victim, far) = ("node-1", "node-4");
        // The victim is cut off entirely, then comes back; `far` misses every refutation it may send.
        net.run(500 * MS, &|n| n != victim, &|_, _| true);
        assert_eq!(net.verdict(far, victim), Verdict::Dead);
        net.run(300 * MS, &|_| true, &|f, t| !(f == victim && t == far));
        assert_eq!(net.verdict(far, victim), Verdict::Dead, "nothing from the victim reached it");
        net.run(1500 * MS, &|_| true, &|_, _| true);
        assert_eq!(net.verdict(far, victim), Verdict::Alive, "its periodic question was answered");
    }

    #[test]
    fn replays_and_old_incarnations_are_rejected_and_a_restart_is_a_new_incarnation() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Config::new(350 * MS), t0);
        let alive = |inc: u64, counter: u64| Message {
            kind: Kind::Alive,
            node: "peer".into(),
            incarnation: inc,
            counter,
            macs: vec![[2, 0, 0, 0, 0, 7]],
            legacy: false,
        };
        assert_eq!(m.receive(&Message { node: "me".into(), ..alive(1, 1) }, t0), Err(Reject::FromSelf));
        m.receive(&alive(1, 500), t0).expect("first");
        assert_eq!(m.receive(&alive(1, 500), t0), Err(Reject::Replay));
        m.receive(&alive(2, 1), t0 + 10 * MS).expect("new incarnation");
        assert_eq!(m.receive(&alive(1, 501), t0 + 20 * MS), Err(Reject::Replay), "old one");
        m.receive(&alive(2, 2), t0 + 30 * MS).expect("next");
        assert_eq!(m.node_macs().get(&[2, 0, 0, 0, 0, 7]).map(String::as_str), Some("peer"));
        // A verdict about the old incarnation is older than what was heard: ignored.
        let old_verdict = Subject { node: "peer".into(), incarnation: 1, counter: 900 };
        let judge = Message { kind: Kind::Dead(old_verdict), node: "judge".into(), ..alive(7, 1) };
        m.receive(&judge, t0 + 40 * MS).expect("judge");
        assert_eq!(m.verdict("peer", t0 + 40 * MS), Verdict::Alive);
        // One about the last message heard convicts; a later message revives.
        let verdict = Subject { node: "peer".into(), incarnation: 2, counter: 2 };
        m.receive(&Message { kind: Kind::Dead(verdict), node: "judge".into(), ..alive(7, 2) }, t0 + 50 * MS)
            .expect("judge");
        assert_eq!(m.verdict("peer", t0 + 50 * MS), Verdict::Dead);
        m.receive(&alive(2, 3), t0 + 60 * MS).expect("refuted");
        assert_eq!(m.verdict("peer", t0 + 60 * MS), Verdict::Alive);
        m.receive(&Message { kind: Kind::Leaving, ..alive(2, 4) }, t0 + 70 * MS).expect("leaving");
        assert_eq!(m.verdict("peer", t0 + 70 * MS), Verdict::Dead, "dead at once");
    }

    #[test]
    fn a_peer_never_heard_counts_by_ready_until_settled_then_as_dead() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Config::new(200 * MS), t0);
        let hello = m.set_ring(Arc::new(Ring::new(["me".into(), "quiet".into()])));
        assert_eq!(hello, vec![Say::once(To::Node("quiet".into()), Kind::Hello)]);
        assert_eq!(m.verdict("quiet", t0), Verdict::Unknown);
        assert_eq!(m.verdict("not-a-speaker", t0 + Duration::from_secs(9)), Verdict::Unknown);
        let before = m.version();
        let says = m.tick(t0 + 700 * MS);
        assert!(m.version() > before, "settling may change verdicts: the election must run");
        assert_eq!(m.verdict("quiet", t0 + 700 * MS), Verdict::Dead);
        assert!(says.contains(&Say::once(To::Node("quiet".into()), Kind::Hello)), "and it is asked: {says:?}");
    }

    #[test]
    fn old_speakers_are_noticed_so_heartbeats_reach_them_in_their_format() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Config::new(200 * MS), t0);
        assert!(!m.legacy_peers(t0));
        let old =
            Message { kind: Kind::Alive, node: "old".into(), incarnation: 1, counter: 1, macs: vec![], legacy: true };
        m.receive(&old, t0).expect("accepted");
        assert!(m.legacy_peers(t0 + Duration::from_secs(9)));
        assert!(!m.legacy_peers(t0 + Duration::from_secs(11)), "gone once the last old speaker is");
    }

    /// A message in the old format (`FLB2`) from `node`: from an old speaker, or with `READS_FLB3` in its
    /// incarnation the copy a new speaker sends while old ones run.
    fn flb2(node: &str, incarnation: u64, counter: u64) -> Message {
        Message { kind: Kind::Alive, node: node.into(), incarnation, counter, macs: vec![], legacy: true }
    }

    #[test]
    fn new_speakers_copies_in_the_old_format_do_not_keep_the_old_format_on() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Config::new(200 * MS), t0);
        // Every new speaker sends its heartbeats in the old format while it hears an old one: if those copies
        // counted as old speakers, new speakers would keep each other on it forever after the upgrade.
        for i in 1..=200 {
            m.receive(&flb2("new", crate::model::liveness::READS_FLB3 | 7, i), t0 + i as u32 * 50 * MS)
                .expect("accepted");
        }
        assert!(!m.legacy_peers(t0 + Duration::from_secs(10)), "only new speakers run");
        m.receive(&flb2("old", 7, 1), t0 + Duration::from_secs(10)).expect("accepted");
        assert!(m.legacy_peers(t0 + Duration::from_secs(10)), "an old speaker runs");
    }

    /// Old speakers (all-to-all, `FLB2`) neither send nor read suspicions and verdicts, but while they run every
    /// speaker hears every other: a new speaker judges each peer first-hand then, as they do. Here a new speaker
    /// that is not on the dead speaker's ring of watchers, whose watchers are all old, and one whose only
    /// co-watcher is old: both hold it dead after `dead_after` and a direct ask, not never or after `alone_after`.
    #[test]
    fn while_old_speakers_run_a_new_one_judges_every_peer_first_hand() {
        for size in [5, 3] {
            let t0 = Instant::now();
            let ring = Ring::new(names(size));
            let me: Arc<str> = Arc::from("node-0");
            let victim = ring.walk(&me, true).next().expect("a peer").clone();
            let mut m = Membership::new(&me, Config::new(200 * MS), t0);
            let _hello = m.set_ring(Arc::new(ring.clone()));
            let watches = m.subjects().contains(&victim);
            assert_eq!(watches, size == 3, "{size} speakers: node-0 watches {victim}: {watches}");
            let mut now = t0;
            let mut counter = 0;
            let mut run = |m: &mut Membership, until: Duration, victim_alive: bool| {
                while now < t0 + until {
                    now += 10 * MS;
                    counter += 1;
                    if counter % 5 == 0 {
                        for peer in ring.names().filter(|n| **n != me && (victim_alive || **n != victim)) {
                            m.receive(&flb2(peer, 1, counter), now).expect("accepted");
                        }
                    }
                    let _ = m.tick(now);
                }
            };
            run(&mut m, 500 * MS, true);
            assert_eq!(m.verdict(&victim, t0 + 500 * MS), Verdict::Alive);
            run(&mut m, 800 * MS, false);
            let end = t0 + 800 * MS;
            assert_eq!(m.verdict(&victim, end), Verdict::Dead, "{size} speakers: {victim} silent for 300 ms");
            assert!(m.legacy_peers(end));
        }
    }

    #[test]
    fn signs_of_life_after_a_verdict_mean_a_broken_channel() {
        let mut net = Net::new(4);
        net.run(300 * MS, &|_| true, &|_, _| true);
        // node-1 is cut off from everyone both ways: convicted although its ARP still answers.
        net.run(400 * MS, &|_| true, &|f, t| f != "node-1" && t != "node-1");
        let view = &net.nodes[&Arc::from("node-0")].0;
        assert_eq!(view.verdict("node-1", net.now), Verdict::Dead);
        let later = BTreeMap::from([("node-1".to_string(), net.now), ("node-2".to_string(), net.now)]);
        assert_eq!(view.unheard_but_alive(&later, net.now), BTreeSet::from(["node-1".to_string()]));
        let earlier = BTreeMap::from([("node-1".to_string(), net.now - Duration::from_secs(1))]);
        assert!(view.unheard_but_alive(&earlier, net.now).is_empty(), "a sign from before the verdict says nothing");
    }

    /// The liveness port blocked everywhere: no quorum can form, so nobody is convicted for `alone_after`; then
    /// each watcher holds its silent subjects dead by itself (it will probe before taking anything), tells nobody,
    /// and reports them unheard while they show signs of life.
    #[test]
    fn with_the_port_blocked_everywhere_watchers_wait_then_judge_alone() {
        let mut net = Net::new(3);
        net.run(300 * MS, &|_| true, &|_, _| true);
        net.run(1000 * MS, &|_| true, &|_, _| false);
        assert_eq!(net.verdict("node-0", "node-1"), Verdict::Alive, "no quorum yet, no verdict");
        let signs = BTreeMap::from([("node-1".to_string(), net.now), ("node-2".to_string(), net.now)]);
        assert_eq!(
            net.nodes[&Arc::from("node-0")].0.unheard_but_alive(&signs, net.now).len(),
            2,
            "unheard while their Leases renew: the channel is broken"
        );
        net.run(1500 * MS, &|_| true, &|_, _| false);
        assert_eq!(net.verdict("node-0", "node-1"), Verdict::Dead, "judged alone after alone_after");
        assert!(net.nodes.values_mut().all(|(m, _)| m.take_declared().is_empty()), "and told nobody");
        net.run(1500 * MS, &|_| true, &|_, _| true);
        assert_eq!(net.verdict("node-0", "node-1"), Verdict::Alive, "healed");
    }
}
