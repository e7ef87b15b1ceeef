//! A deterministic simulation of the speakers' liveness protocol: the real [`Membership`] state machines of `n`
//! speakers wired through a simulated network (per-datagram delay and random loss) on a virtual clock, and each
//! speaker's real claim state machine ([`crate::model::claim::Claims`]) over a pool of addresses on a simulated
//! ARP segment ([`segment`]). No socket, no sleep, no thread: the same seed gives the same run. Beside it, for
//! comparison in the same run, the all-to-all heartbeat design it replaced (every speaker heartbeats every other,
//! a silence convicts).
//!
//! What it measures ([`Report`]): datagrams sent and received per speaker per second, how long after a hard kill
//! each surviving speaker learns of the death and how long until its addresses are answered again, how many live
//! speakers were wrongly convicted, and how many addresses changed hands because of it ([`ClaimTally`]).
//! `cargo bench -p ferrolb-speaker --bench liveness_scale` prints it at 100, 1,000 and 5,000 speakers
//! (docs/design.md §5.5); a small case runs with the unit tests.

mod segment;

pub use segment::ClaimTally;

use crate::model::claim::Timing;
use crate::model::liveness::{Kind, Message};
use crate::model::membership::{Config, Membership, Ring, Say, To, Verdict};
use segment::{Frame, Output, Segment};
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which protocol runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// The ring of watchers ([`crate::model::membership`]).
    Ring,
    /// Every speaker heartbeats every other; a peer silent for `dead_after` is dead (the design before).
    AllToAll,
}

/// One simulated run.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Protocol.
    pub design: Design,
    /// How many speakers.
    pub nodes: usize,
    /// Simulated time.
    pub duration: Duration,
    /// Share of datagrams lost, each independently.
    pub loss: f64,
    /// Shortest one-way delay.
    pub delay_min: Duration,
    /// Longest one-way delay (uniform in between).
    pub delay_max: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence before suspicion (ring) or a verdict (all-to-all).
    pub dead_after: Duration,
    /// Hard-kill this many speakers, one at a time, spread over the second half of the run.
    pub kills: usize,
    /// Traffic is counted from this time on (the start's hellos are not steady state).
    pub warmup: Duration,
    /// Seed of the loss, delays, phases and victims.
    pub seed: u64,
    /// Ring: start as if every speaker's hello had been answered (the N² start-up exchange is not simulated,
    /// which makes 5,000 speakers affordable); otherwise the hellos travel the simulated network.
    pub warm_start: bool,
    /// Addresses in the pool, each claimed by the speakers the election gives it to (0: liveness only).
    pub addresses: usize,
}

impl Setup {
    /// The defaults of the speaker (50 ms heartbeats, 200 ms silence), 0.1–1 ms delays, no loss.
    pub fn new(design: Design, nodes: usize, duration: Duration) -> Self {
        Self {
            design,
            nodes,
            duration,
            loss: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_millis(1),
            heartbeat: Duration::from_millis(50),
            dead_after: Duration::from_millis(200),
            kills: 0,
            warmup: Duration::from_secs(1),
            seed: 1,
            warm_start: false,
            addresses: nodes,
        }
    }
}

/// What a run showed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Datagrams sent per speaker per second after the warm-up (mean over live speakers).
    pub sent_per_node_s: f64,
    /// Datagrams received per speaker per second after the warm-up (mean over live speakers).
    pub received_per_node_s: f64,
    /// The most datagrams any one speaker received in one second after the warm-up.
    pub max_received_in_a_second: u64,
    /// For every kill and every surviving speaker: from the kill until it held the victim dead (sorted).
    pub detection: Vec<Duration>,
    /// Survivors that never learned of a death before the run ended, summed over the kills.
    pub never_learned: usize,
    /// Times a speaker came to hold a live speaker dead.
    pub wrong_verdicts: u64,
    /// Verdicts of death declared about live speakers (ring: by a quorum of watchers).
    pub wrong_convictions: u64,
    /// What the claim state machines did (takeovers, wrong ones, probes).
    pub claims: ClaimTally,
}

impl Report {
    /// The `p`-th percentile of the detection times.
    pub fn detection_percentile(&self, p: f64) -> Option<Duration> {
        let last = self.detection.len().checked_sub(1)?;
        let rank = ((p / 100.0) * last as f64).round() as usize;
        self.detection.get(rank.min(last)).copied()
    }
}

/// splitmix64: a fixed, seedable generator (determinism matters here, not quality beyond this).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, a: Duration, b: Duration) -> Duration {
        let span = b.saturating_sub(a).as_nanos() as u64;
        a + Duration::from_nanos(self.below(span + 1))
    }
}

enum Event {
    Beat(usize),
    Tick(usize),
    Deliver {
        to: usize,
        msg: Rc<Message>,
    },
    /// All-to-all: a heartbeat from `from`.
    Heard {
        to: usize,
        from: usize,
    },
    Kill(usize),
    /// An ARP frame reaches a speaker.
    Arp(Frame),
    /// A speaker's claims asked to be stepped at `at`.
    ClaimWake {
        node: usize,
        at: Duration,
    },
}

/// An event due at `at`; the earliest (then the first scheduled) comes out of the heap first.
struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// All-to-all speaker: when it last heard each peer, and which it holds dead.
struct Mesh {
    last_heard: Vec<Duration>,
    dead: Vec<bool>,
}

struct Node {
    name: Arc<str>,
    alive: bool,
    counter: u64,
    ring: Option<Membership>,
    mesh: Option<Mesh>,
    seen_version: u64,
}

struct Kill {
    victim: usize,
    at: Duration,
    learned: Vec<Option<Duration>>,
}

struct World {
    setup: Setup,
    start: Instant,
    now: Duration,
    random: Random,
    queue: BinaryHeap<Scheduled>,
    next_seq: u64,
    nodes: Vec<Node>,
    ids: HashMap<Arc<str>, usize>,
    sent: Vec<u64>,
    received: Vec<u64>,
    received_this_second: Vec<u64>,
    second: u64,
    max_received_in_a_second: u64,
    kills: Vec<Kill>,
    segment: Option<Segment>,
    report: Report,
}

impl World {
    fn schedule(&mut self, after: Duration, event: Event) {
        self.next_seq += 1;
        self.queue.push(Scheduled { at: self.now + after, seq: self.next_seq, event });
    }

    fn counting(&self) -> bool {
        self.now >= self.setup.warmup
    }

    /// One datagram from `from` to `to`: counted, maybe lost, delayed.
    fn send(&mut self, from: usize, event: Event) {
        if self.counting() {
            self.sent[from] += 1;
        }
        if self.random.unit() < self.setup.loss {
            return;
        }
        let delay = self.random.between(self.setup.delay_min, self.setup.delay_max);
        self.schedule(delay, event);
    }

    fn say(&mut self, from: usize, says: Vec<Say>) {
        for say in says {
            let targets: Vec<usize> = match &say.to {
                To::Node(name) => self.ids.get(name).copied().into_iter().collect(),
                To::Everyone => (0..self.nodes.len()).filter(|i| *i != from).collect(),
            };
            for _ in 0..say.copies.max(1) {
                let msg = Rc::new(self.message(from, say.kind.clone()));
                for &to in &targets {
                    self.send(from, Event::Deliver { to, msg: msg.clone() });
                }
            }
        }
    }

    fn message(&mut self, from: usize, kind: Kind) -> Message {
        let node = &mut self.nodes[from];
        node.counter += 1;
        Message {
            kind,
            node: node.name.to_string(),
            incarnation: 1,
            counter: node.counter,
            macs: vec![],
            legacy: false,
        }
    }

    fn received(&mut self, to: usize) {
        if !self.counting() {
            return;
        }
        self.received[to] += 1;
        let second = self.now.as_secs();
        if second != self.second {
            self.max_received_in_a_second =
                self.max_received_in_a_second.max(self.received_this_second.iter().copied().max().unwrap_or(0));
            self.received_this_second.iter_mut().for_each(|c| *c = 0);
            self.second = second;
        }
        self.received_this_second[to] += 1;
    }

    /// After `node`'s view may have changed: record deaths learned and live speakers held dead.
    fn observe(&mut self, node: usize) {
        let instant = self.start + self.now;
        let Some(m) = self.nodes[node].ring.as_ref() else { return };
        if m.version() == self.nodes[node].seen_version {
            return;
        }
        let version = m.version();
        for kill in &mut self.kills {
            if kill.learned[node].is_none() && m.verdict(&self.nodes[kill.victim].name, instant) == Verdict::Dead {
                kill.learned[node] = Some(self.now - kill.at);
            }
        }
        self.nodes[node].seen_version = version;
        self.replan(node, false);
    }

    /// The nodes whose verdict can change what `node` claims, that `node` holds dead now.
    fn dead_above(&self, node: usize) -> Vec<u32> {
        let Some(segment) = &self.segment else { return Vec::new() };
        let instant = self.start + self.now;
        let me = &self.nodes[node];
        segment
            .above(node)
            .iter()
            .copied()
            .filter(|&j| match (&me.ring, &me.mesh) {
                (Some(m), _) => m.verdict(&self.nodes[j as usize].name, instant) == Verdict::Dead,
                (None, Some(mesh)) => mesh.dead[j as usize],
                (None, None) => false,
            })
            .collect()
    }

    /// Re-plans `node`'s claims if its view of the nodes that matter changed (or `force`).
    fn replan(&mut self, node: usize, force: bool) {
        let dead = self.dead_above(node);
        let Some(mut segment) = self.segment.take() else { return };
        if force || segment.changed(node, &dead) {
            let out = segment.replan(node, dead, self.now);
            self.carry(&mut segment, node, out);
        }
        self.segment = Some(segment);
    }

    /// Puts a claim step's frames on the segment and schedules the speaker's next step.
    fn carry(&mut self, segment: &mut Segment, node: usize, out: Output) {
        for frame in out.frames {
            let delay = self.random.between(self.setup.delay_min, self.setup.delay_max);
            self.schedule(delay, Event::Arp(frame));
        }
        if let Some(at) = out.wake_at.map(|at| at.max(self.now))
            && segment.schedule_wake(node, at, self.now)
        {
            self.schedule(at - self.now, Event::ClaimWake { node, at });
        }
    }

    fn run(mut self) -> Report {
        let n = self.nodes.len();
        let tick = (self.setup.dead_after / 10).max(Duration::from_millis(10));
        for i in 0..n {
            let (beat_phase, tick_phase) =
                (self.random.between(Duration::ZERO, self.setup.heartbeat), self.random.between(Duration::ZERO, tick));
            self.schedule(beat_phase, Event::Beat(i));
            self.schedule(tick_phase, Event::Tick(i));
        }
        if self.setup.design == Design::Ring {
            // Every speaker starts by greeting the others, as a speaker does when it learns the ring.
            let ring = Arc::new(Ring::new(self.nodes.iter().map(|n| n.name.clone())));
            for i in 0..n {
                let hello = self.nodes[i].ring.as_mut().map(|m| m.set_ring(ring.clone())).unwrap_or_default();
                if !self.setup.warm_start {
                    self.say(i, hello);
                }
            }
            if self.setup.warm_start {
                let instant = self.start;
                let greetings: Vec<Message> = (0..n).map(|i| self.message(i, Kind::Alive)).collect();
                for (i, node) in self.nodes.iter_mut().enumerate() {
                    let Some(m) = node.ring.as_mut() else { continue };
                    for (j, greeting) in greetings.iter().enumerate() {
                        if i != j {
                            let _ = m.receive(greeting, instant);
                        }
                    }
                }
            }
        }
        for i in 0..n {
            self.replan(i, true);
        }
        let half = self.setup.duration / 2;
        let kills = self.setup.kills.min(n.saturating_sub(1));
        let mut victims: Vec<usize> = Vec::new();
        while victims.len() < kills {
            let victim = self.random.below(n as u64) as usize;
            if !victims.contains(&victim) {
                victims.push(victim);
            }
        }
        for (k, victim) in victims.into_iter().enumerate() {
            let at = half + half * k as u32 / kills.max(1) as u32;
            self.schedule(at, Event::Kill(victim));
        }
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            if at > self.setup.duration {
                break;
            }
            self.now = at;
            self.handle(event, tick);
        }
        self.finish()
    }

    fn handle(&mut self, event: Event, tick: Duration) {
        let instant = self.start + self.now;
        match event {
            Event::Beat(i) if self.nodes[i].alive => {
                self.schedule(self.setup.heartbeat, Event::Beat(i));
                match self.setup.design {
                    Design::Ring => {
                        let targets =
                            self.nodes[i].ring.as_ref().map(Membership::heartbeat_targets).unwrap_or_default();
                        let msg = Rc::new(self.message(i, Kind::Alive));
                        for t in targets {
                            if let Some(&to) = self.ids.get(&t) {
                                self.send(i, Event::Deliver { to, msg: msg.clone() });
                            }
                        }
                    }
                    Design::AllToAll => {
                        for to in (0..self.nodes.len()).filter(|to| *to != i) {
                            self.send(i, Event::Heard { to, from: i });
                        }
                    }
                }
            }
            Event::Tick(i) if self.nodes[i].alive => {
                self.schedule(tick, Event::Tick(i));
                match self.setup.design {
                    Design::Ring => {
                        let Some(m) = self.nodes[i].ring.as_mut() else { return };
                        let says = m.tick(instant);
                        for (subject, _) in m.take_declared() {
                            if self.ids.get(subject.as_str()).is_some_and(|&s| self.nodes[s].alive) {
                                self.report.wrong_convictions += 1;
                            }
                        }
                        self.say(i, says);
                        self.observe(i);
                    }
                    Design::AllToAll => self.mesh_check(i),
                }
            }
            Event::Deliver { to, msg } if self.nodes[to].alive => {
                self.received(to);
                let wrong = matches!(&msg.kind, Kind::Dead(s) if self.ids.get(s.node.as_str()).is_some_and(|&s| self.nodes[s].alive));
                let Some(m) = self.nodes[to].ring.as_mut() else { return };
                let before = m.version();
                let held_dead_before = match &msg.kind {
                    Kind::Dead(s) => m.verdict(&s.node, instant) == Verdict::Dead,
                    _ => true,
                };
                let Ok(says) = m.receive(&msg, instant) else { return };
                if wrong && !held_dead_before && m.version() != before {
                    self.report.wrong_verdicts += 1;
                }
                self.say(to, says);
                self.observe(to);
            }
            Event::Heard { to, from } if self.nodes[to].alive => {
                self.received(to);
                let Some(mesh) = self.nodes[to].mesh.as_mut() else { return };
                mesh.last_heard[from] = self.now;
                if std::mem::replace(&mut mesh.dead[from], false) {
                    self.replan(to, false);
                }
            }
            Event::Arp(frame) => {
                let Some(mut segment) = self.segment.take() else { return };
                let out = segment.hear(frame, self.now);
                self.carry(&mut segment, frame.to, out);
                self.segment = Some(segment);
            }
            Event::ClaimWake { node, at } => {
                let Some(mut segment) = self.segment.take() else { return };
                let out = segment.wake(node, at);
                self.carry(&mut segment, node, out);
                self.segment = Some(segment);
            }
            Event::Kill(victim) if self.nodes[victim].alive => {
                self.nodes[victim].alive = false;
                if let Some(segment) = self.segment.as_mut() {
                    segment.kill(victim, self.now);
                }
                let learned = vec![None; self.nodes.len()];
                self.kills.push(Kill { victim, at: self.now, learned });
            }
            _ => {}
        }
    }

    /// All-to-all: every peer silent for `dead_after` is dead to `i`.
    fn mesh_check(&mut self, i: usize) {
        let dead_after = self.setup.dead_after;
        let now = self.now;
        let mut newly_dead = Vec::new();
        if let Some(mesh) = self.nodes[i].mesh.as_mut() {
            for (peer, last) in mesh.last_heard.iter().enumerate() {
                if peer != i && !mesh.dead[peer] && now.saturating_sub(*last) > dead_after {
                    mesh.dead[peer] = true;
                    newly_dead.push(peer);
                }
            }
        }
        if !newly_dead.is_empty() {
            self.replan(i, false);
        }
        for peer in newly_dead {
            if self.nodes[peer].alive {
                self.report.wrong_verdicts += 1;
                self.report.wrong_convictions += 1;
            }
            for kill in self.kills.iter_mut().filter(|k| k.victim == peer) {
                if kill.learned[i].is_none() {
                    kill.learned[i] = Some(now - kill.at);
                }
            }
        }
    }

    fn finish(mut self) -> Report {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].alive).collect();
        let seconds = self.setup.duration.saturating_sub(self.setup.warmup).as_secs_f64().max(1e-9);
        let mean = |counts: &[u64]| live.iter().map(|i| counts[*i] as f64).sum::<f64>() / live.len().max(1) as f64;
        self.report.sent_per_node_s = mean(&self.sent) / seconds;
        self.report.received_per_node_s = mean(&self.received) / seconds;
        self.report.max_received_in_a_second =
            self.max_received_in_a_second.max(self.received_this_second.iter().copied().max().unwrap_or(0));
        for kill in &self.kills {
            for &i in &live {
                match kill.learned[i] {
                    Some(t) => self.report.detection.push(t),
                    None => self.report.never_learned += 1,
                }
            }
        }
        self.report.detection.sort();
        if let Some(segment) = self.segment.take() {
            self.report.claims = segment.finish(seconds, live.len());
        }
        self.report
    }
}

/// Runs one simulation.
pub fn simulate(setup: Setup) -> Report {
    let start = Instant::now();
    let n = setup.nodes;
    let config = Config { dead_after: setup.dead_after, settle: setup.dead_after * 3, ..Config::new(setup.dead_after) };
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let name: Arc<str> = Arc::from(format!("node-{i:05}"));
            Node {
                ring: (setup.design == Design::Ring).then(|| Membership::new(&name, config, start)),
                mesh: (setup.design == Design::AllToAll)
                    .then(|| Mesh { last_heard: vec![Duration::ZERO; n], dead: vec![false; n] }),
                name,
                alive: true,
                counter: 0,
                seen_version: 0,
            }
        })
        .collect();
    let ids = nodes.iter().enumerate().map(|(i, node)| (node.name.clone(), i)).collect();
    let names: Vec<Arc<str>> = nodes.iter().map(|n| n.name.clone()).collect();
    let segment =
        (setup.addresses > 0).then(|| Segment::new(&names, setup.addresses, Timing::default(), start, setup.warmup));
    World {
        setup,
        start,
        now: Duration::ZERO,
        random: Random(setup.seed),
        queue: BinaryHeap::new(),
        next_seq: 0,
        nodes,
        ids,
        sent: vec![0; n],
        received: vec![0; n],
        received_this_second: vec![0; n],
        second: 0,
        max_received_in_a_second: 0,
        kills: Vec::new(),
        segment,
        report: Report::default(),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The small case of the bench: 50 speakers, 30 simulated seconds.
    #[test]
    fn fifty_speakers_learn_of_every_death_at_a_constant_cost_and_loss_convicts_nobody() {
        let secs = Duration::from_secs(30);
        let ring = simulate(Setup { kills: 3, ..Setup::new(Design::Ring, 50, secs) });
        let mesh = simulate(Setup { kills: 3, ..Setup::new(Design::AllToAll, 50, secs) });
        eprintln!("ring {ring:?}\nmesh {mesh:?}");
        assert_eq!(ring.never_learned, 0, "{ring:?}");
        assert_eq!(ring.detection.len(), 3 * 47);
        // Three watchers at 20 heartbeats a second each way, against 49 peers for the mesh.
        assert!(ring.sent_per_node_s < 70.0 && ring.received_per_node_s < 70.0, "{ring:?}");
        assert!(mesh.received_per_node_s > 900.0, "{mesh:?}");
        let p99 = ring.detection_percentile(99.0).expect("detections");
        assert!(
            p99 < Duration::from_secs(1),
            "every survivor learns within the silence bound and a hop or two: {p99:?}"
        );
        assert_eq!(ring.wrong_verdicts + ring.wrong_convictions, 0, "no loss, no wrong verdict");
        let lossy = simulate(Setup { loss: 0.15, ..Setup::new(Design::Ring, 50, secs) });
        let lossy_mesh = simulate(Setup { loss: 0.15, ..Setup::new(Design::AllToAll, 50, secs) });
        assert!(
            lossy.wrong_convictions < lossy_mesh.wrong_convictions.max(1),
            "a quorum convicts less often than one silent link: {lossy:?} vs {lossy_mesh:?}"
        );
    }

    /// The claim state machines on top: a killed speaker's addresses are each taken once, by one survivor, after
    /// one confirmation; lost heartbeats mislead speakers into probing, and no address changes hands.
    #[test]
    fn killed_speakers_addresses_are_taken_and_lost_heartbeats_move_no_address() {
        let secs = Duration::from_secs(30);
        let killed = simulate(Setup { kills: 3, addresses: 200, ..Setup::new(Design::Ring, 50, secs) });
        let c = &killed.claims;
        eprintln!("killed {c:?}");
        assert_eq!(c.never_retaken, 0, "{c:?}");
        assert!(!c.retaken.is_empty(), "the victims answered addresses: {c:?}");
        assert_eq!(c.takeovers as usize, c.retaken.len(), "each address of a victim is taken once: {c:?}");
        assert_eq!(c.wrong_takeovers + c.released_by_live, 0, "{c:?}");
        let slowest = c.retaken.last().copied().unwrap_or_default();
        let detection = killed.detection.last().copied().unwrap_or_default();
        assert!(
            slowest <= detection + Timing::default().probe_window + Duration::from_millis(50),
            "taken one probe window after the verdict (not address by address): {slowest:?} vs {detection:?}"
        );
        for (design, loss) in [(Design::Ring, 0.15), (Design::Ring, 0.30), (Design::AllToAll, 0.15)] {
            let lossy = simulate(Setup { loss, addresses: 200, ..Setup::new(design, 50, secs) });
            let c = &lossy.claims;
            eprintln!("{design:?} {loss}: verdicts {} {c:?}", lossy.wrong_verdicts);
            assert_eq!((c.wrong_takeovers, c.released_by_live, c.takeovers), (0, 0, 0), "{design:?} {loss}: {c:?}");
            if lossy.wrong_verdicts > 0 {
                assert!(c.probes_per_node_s > 0.0, "a misled speaker that was given an address probes it: {c:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let setup = Setup { kills: 1, loss: 0.1, ..Setup::new(Design::Ring, 20, Duration::from_secs(5)) };
        let (a, b) = (simulate(setup), simulate(setup));
        assert_eq!(a.detection, b.detection);
        assert_eq!((a.wrong_verdicts, a.sent_per_node_s), (b.wrong_verdicts, b.sent_per_node_s));
        assert_eq!((a.claims.retaken, a.claims.probes_per_node_s), (b.claims.retaken, b.claims.probes_per_node_s));
    }
}
