//! The ARP side of the simulation: every speaker runs the real claim state machine ([`Claims`]) over the
//! addresses its view of the others gives it, and the segment carries its probes, the owners' replies and the
//! gratuitous ARP of a takeover to the speakers they concern. Loss applies to the liveness datagrams only (as in
//! the lab's lossy-port fault, which drops them with nftables); ARP frames arrive after the same delays.
//!
//! Who wants which address follows the rule of [`crate::model::plan::decide`] on the real rendezvous score
//! ([`election::score`]): the owner is the best-ranked node the view does not hold dead, and the node it is
//! taken from is the best-ranked node held dead above it. To keep 5,000 speakers affordable each address
//! remembers only its first [`RANKED`] nodes, and only they may own it: a speaker further down would own it only
//! if its view held all eight dead at once (runs kill at most three; a wrong verdict lasts a few hundred ms).

use crate::model::claim::{Asked, Claims, Handover, Heard, Seen, Timing};
use crate::model::election;
use crate::wire::Mac;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nodes remembered per address, best first.
const RANKED: usize = 8;

/// First address of the simulated pool.
const POOL: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// An ARP frame on the segment: `mac` claims the address numbered `address`, heard by `to`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    pub to: usize,
    pub address: u32,
    pub mac: Mac,
}

/// What a step leaves to the world: frames to carry, and when the speaker must step again (virtual time).
#[derive(Debug, Default)]
pub(super) struct Output {
    pub frames: Vec<Frame>,
    pub wake_at: Option<Duration>,
}

/// What the claims did over a run.
#[derive(Debug, Clone, Default)]
pub struct ClaimTally {
    /// Addresses taken (announced) while no live speaker answered them: the takeovers a kill calls for.
    pub takeovers: u64,
    /// Addresses taken while a live speaker answered them: a wrong verdict that cost an ownership change.
    pub wrong_takeovers: u64,
    /// Addresses a live speaker stopped answering (lost a conflict or gave one up) after the warm-up.
    pub released_by_live: u64,
    /// ARP probes sent per speaker per second after the warm-up (what wrong verdicts cost instead).
    pub probes_per_node_s: f64,
    /// For each address of a killed speaker: from the kill until a survivor announced it (sorted).
    pub retaken: Vec<Duration>,
    /// Addresses of killed speakers nobody took before the run ended.
    pub never_retaken: usize,
}

#[derive(Default)]
struct Speaker {
    claims: Claims,
    want: BTreeSet<IpAddr>,
    handover: Handover,
    answering: BTreeSet<IpAddr>,
    /// The nodes ranked above this one for an address it may own, which its view holds dead (last plan).
    dead_above: Vec<u32>,
    /// Pending wake (virtual time), to schedule each once.
    wake: Option<Duration>,
}

/// The addresses, their rankings, and every speaker's claims.
pub(super) struct Segment {
    names: Vec<Arc<str>>,
    ips: Vec<IpAddr>,
    /// Per address: its first [`RANKED`] nodes by rendezvous score.
    ranking: Vec<Vec<u32>>,
    /// Per node: the addresses where it is ranked.
    ranked_in: Vec<Vec<u32>>,
    /// Per node: the nodes ranked above it in any of those (only their deaths can give it an address).
    above: Vec<Vec<u32>>,
    /// Per address: the live speakers answering it.
    answerers: Vec<Vec<u32>>,
    /// Per address: the speakers that want it (they hear its gratuitous ARP).
    wanters: Vec<Vec<u32>>,
    speakers: Vec<Speaker>,
    alive: Vec<bool>,
    macs: BTreeMap<Mac, String>,
    asked: Asked,
    start: Instant,
    warmup: Duration,
    /// Addresses of killed speakers not taken yet, with the kill's time.
    pending: HashMap<u32, Duration>,
    probes: u64,
    tally: ClaimTally,
}

/// The MAC of node `i` (locally administered, unique).
fn mac_of(i: usize) -> Mac {
    let b = (i as u32).to_be_bytes();
    Mac([2, 0, b[0], b[1], b[2], b[3]])
}

fn index_of(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) - u32::from(POOL),
        IpAddr::V6(_) => u32::MAX,
    }
}

impl Segment {
    /// `addresses` addresses over the speakers `names`; nobody answers yet. Virtual time 0 is `start`; nothing
    /// is counted before `warmup`.
    pub(super) fn new(names: &[Arc<str>], addresses: usize, timing: Timing, start: Instant, warmup: Duration) -> Self {
        let n = names.len();
        let ips: Vec<IpAddr> = (0..addresses as u32).map(|a| IpAddr::V4(Ipv4Addr::from(u32::from(POOL) + a))).collect();
        let ranking: Vec<Vec<u32>> = ips
            .iter()
            .map(|ip| {
                let mut scored: Vec<(u64, &str, u32)> =
                    names.iter().enumerate().map(|(i, n)| (election::score(n, *ip), n.as_ref(), i as u32)).collect();
                let keep = RANKED.min(n);
                if keep > 0 && keep < scored.len() {
                    scored.select_nth_unstable(keep - 1);
                    scored.truncate(keep);
                }
                scored.sort_unstable();
                scored.into_iter().map(|(_, _, i)| i).collect()
            })
            .collect();
        let mut ranked_in = vec![Vec::new(); n];
        let mut above: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); n];
        for (a, ranks) in ranking.iter().enumerate() {
            for (k, &node) in ranks.iter().enumerate() {
                ranked_in[node as usize].push(a as u32);
                above[node as usize].extend(&ranks[..k]);
            }
        }
        Self {
            names: names.to_vec(),
            ips,
            ranking,
            ranked_in,
            above: above.into_iter().map(|s| s.into_iter().collect()).collect(),
            answerers: vec![Vec::new(); addresses],
            wanters: vec![Vec::new(); addresses],
            speakers: (0..n).map(|_| Speaker { claims: Claims::new(timing), ..Speaker::default() }).collect(),
            alive: vec![true; n],
            macs: (0..n).map(|i| (mac_of(i), names[i].to_string())).collect(),
            asked: Asked::default(),
            start,
            warmup,
            pending: HashMap::new(),
            probes: 0,
            tally: ClaimTally::default(),
        }
    }

    /// The nodes whose verdict can change what `node` wants.
    pub(super) fn above(&self, node: usize) -> &[u32] {
        &self.above[node]
    }

    /// Whether a plan with these nodes held dead (of [`Segment::above`], sorted) would differ from the last.
    pub(super) fn changed(&self, node: usize, dead_above: &[u32]) -> bool {
        self.speakers[node].dead_above != dead_above
    }

    /// Plans `node` anew from its view (`dead_above`: which of [`Segment::above`] it holds dead, sorted), then
    /// steps its claims.
    pub(super) fn replan(&mut self, node: usize, dead_above: Vec<u32>, now: Duration) -> Output {
        let mut want = BTreeSet::new();
        let mut from = BTreeMap::new();
        let dead: BTreeSet<Arc<str>> = dead_above.iter().map(|d| self.names[*d as usize].clone()).collect();
        for &a in &self.ranked_in[node] {
            let ip = self.ips[a as usize];
            let mut first_dead = None;
            for &r in &self.ranking[a as usize] {
                if r as usize == node {
                    want.insert(ip);
                    if let Some(d) = first_dead {
                        from.insert(ip, self.names[d as usize].clone());
                    }
                    break;
                }
                if dead_above.binary_search(&r).is_ok() {
                    first_dead = first_dead.or(Some(r));
                    continue;
                }
                break;
            }
        }
        let speaker = &mut self.speakers[node];
        for ip in speaker.want.difference(&want) {
            self.wanters[index_of(*ip) as usize].retain(|w| *w as usize != node);
        }
        for ip in want.difference(&speaker.want) {
            self.wanters[index_of(*ip) as usize].push(node as u32);
        }
        speaker.want = want;
        speaker.handover = Handover { from, dead };
        speaker.dead_above = dead_above;
        self.step(node, &[], now)
    }

    /// `frame` reaches its speaker at `now`.
    pub(super) fn hear(&mut self, frame: Frame, now: Duration) -> Output {
        let at = self.start + now;
        let heard = Heard { ip: self.ips[frame.address as usize], mac: frame.mac, on: mac_of(frame.to), at };
        self.step(frame.to, &[heard], now)
    }

    /// `node`'s wake due at `at` (virtual time): stepped unless a later plan rescheduled it.
    pub(super) fn wake(&mut self, node: usize, at: Duration) -> Output {
        if self.speakers[node].wake != Some(at) {
            return Output::default();
        }
        self.speakers[node].wake = None;
        self.step(node, &[], at)
    }

    /// Records the wake `node` asked for, at virtual time `at`; false when an earlier one is already pending.
    pub(super) fn schedule_wake(&mut self, node: usize, at: Duration, now: Duration) -> bool {
        let speaker = &mut self.speakers[node];
        if speaker.wake.is_some_and(|w| w <= at && w >= now) {
            return false;
        }
        speaker.wake = Some(at);
        true
    }

    /// `node` is hard-killed at `at`: it answers nothing from now on, and its addresses wait for a survivor.
    pub(super) fn kill(&mut self, node: usize, at: Duration) {
        self.alive[node] = false;
        for ip in &self.speakers[node].answering {
            let a = index_of(*ip);
            self.answerers[a as usize].retain(|w| *w as usize != node);
            self.pending.insert(a, at);
        }
    }

    fn step(&mut self, node: usize, heard: &[Heard], at: Duration) -> Output {
        let (now, counting) = (self.start + at, at >= self.warmup);
        let mut out = Output::default();
        if !self.alive[node] {
            return out;
        }
        let mine = BTreeSet::from([mac_of(node)]);
        let speaker = &mut self.speakers[node];
        let seen = Seen { heard, asked: &self.asked, mine: &mine, nodes: &self.macs };
        let acts = speaker.claims.step(&speaker.want, &speaker.handover, &seen, now);
        let mac = mac_of(node);
        for ip in &acts.announce {
            let a = index_of(*ip);
            if counting {
                if self.answerers[a as usize].iter().any(|w| *w as usize != node) {
                    self.tally.wrong_takeovers += 1;
                } else {
                    self.tally.takeovers += 1;
                }
            }
            out.frames.extend(self.gratuitous(node, a, mac));
        }
        for ip in &acts.assert {
            out.frames.extend(self.gratuitous(node, index_of(*ip), mac));
        }
        for ip in &acts.probe {
            let a = index_of(*ip);
            if counting {
                self.probes += 1;
            }
            // Whoever answers the address replies to the probe.
            out.frames.extend(self.answerers[a as usize].iter().filter(|w| **w as usize != node).map(|w| Frame {
                to: node,
                address: a,
                mac: mac_of(*w as usize),
            }));
        }
        let answering = &mut self.speakers[node].answering;
        for ip in answering.difference(&acts.answer) {
            self.answerers[index_of(*ip) as usize].retain(|w| *w as usize != node);
            if counting {
                self.tally.released_by_live += 1;
            }
        }
        for ip in acts.answer.difference(answering) {
            let a = index_of(*ip);
            self.answerers[a as usize].push(node as u32);
            if let Some(killed) = self.pending.remove(&a) {
                self.tally.retaken.push(at.saturating_sub(killed));
            }
        }
        *answering = acts.answer;
        out.wake_at = acts.wake_at.map(|w| w.saturating_duration_since(self.start));
        out
    }

    /// A gratuitous ARP of `node` (MAC `mac`) for the address numbered `address`: every other speaker that wants
    /// the address hears the claim.
    fn gratuitous(&self, node: usize, address: u32, mac: Mac) -> impl Iterator<Item = Frame> + '_ {
        self.wanters[address as usize].iter().filter(move |w| **w as usize != node).map(move |w| Frame {
            to: *w as usize,
            address,
            mac,
        })
    }

    /// The tally, over `seconds` of counted time for `live` speakers.
    pub(super) fn finish(mut self, seconds: f64, live: usize) -> ClaimTally {
        self.tally.probes_per_node_s = self.probes as f64 / seconds / live.max(1) as f64;
        self.tally.never_retaken = self.pending.len();
        self.tally.retaken.sort();
        self.tally
    }
}
