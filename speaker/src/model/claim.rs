//! One answerer per address from what the wire shows (docs/design.md §6.5). The election says which addresses
//! this node *should* answer for; this decides which it *does*, from ARP it has seen:
//!
//! - **Probe before answering.** An address this node is about to answer for is first asked for (an RFC 5227
//!   probe from 0.0.0.0; for IPv6 an RFC 4862 duplicate-address probe from `::`). If another MAC answers within the probe window, someone already answers: this node
//!   holds back and asks again later (backing off). So a peer wrongly believed dead (heartbeats lost or blocked)
//!   keeps its addresses, and a truly dead one is replaced one probe window after its death is seen.
//! - **One confirmation per dead peer.** Addresses taken from a node judged dead (the plan says from whom,
//!   [`Handover`]) are not probed one by one: one or two of them stand for all (those clients are asking for
//!   first), and when nobody answers within the window every one of them is taken at once. If that node (or
//!   any node judged dead) answers, all of them are held back and the confirmation is asked again with the
//!   usual backoff. A stranger or a live node answering one of them holds back that address alone.
//! - **Two nodes claiming one address converge.** When an address this node answers for is claimed by another
//!   node's MAC (a gratuitous ARP, a reply, or a request sent from that address), both compare the same rank —
//!   `hash(address, MAC)` of the two MACs on that segment — and the lower one keeps answering; the winner sends
//!   one gratuitous ARP so the loser sees the conflict too. No liveness channel is needed.
//! - **A stranger claiming an address** (a MAC no speaker has announced as its own: a static IP clash) does not
//!   make this node give up: the pool says the address is the cluster's. It is reported (Event, metric, log) so
//!   a human can remove the clash.
//!
//! Pure: time, what was heard, what clients asked for, previous owners and the node MACs are passed in; the
//! shell sends the probes and gratuitous ARP.

use crate::wire::Mac;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to listen, how often to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// An address nobody answered for within this long after the first probe is taken.
    pub probe_window: Duration,
    /// Probes are repeated this often within the window (one lost frame must not make two answerers).
    pub probe_every: Duration,
    /// First wait before asking again after someone else answered; doubles each time up to `retry_max`.
    pub retry_min: Duration,
    /// Longest wait between probes of an address someone else answers for.
    pub retry_max: Duration,
    /// At most one conflict-settling gratuitous ARP per address this often.
    pub assert_every: Duration,
    /// An address a client asked for within this long is being asked for "now": it is probed for its owner's
    /// confirmation and announced before the others.
    pub asked_lately: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            // A live owner on a loaded host (a debug build on two busy cores answered one probe late in a
            // 30 ms window once in five minutes of 15 % heartbeat loss) must be heard; and a wrongly dead peer's
            // next heartbeat usually arrives within this window too, cancelling the takeover.
            probe_window: Duration::from_millis(100),
            probe_every: Duration::from_millis(25),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(3),
            assert_every: Duration::from_secs(1),
            // A client whose neighbour entry still points at a dead node asks again about once a second.
            asked_lately: Duration::from_secs(2),
        }
    }
}

/// An ARP frame that shows `mac` answering for `ip`, heard at `at` by this node's interface whose MAC is `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The address claimed.
    pub ip: IpAddr,
    /// Who claims it.
    pub mac: Mac,
    /// Our MAC on the segment where it was heard.
    pub on: Mac,
    /// When.
    pub at: Instant,
}

/// Who held the addresses this node is now to answer for, in this node's view (the plan computes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handover {
    /// Address → the node that would own it if every node judged dead were alive, where that is another node.
    pub from: BTreeMap<IpAddr, Arc<str>>,
    /// The nodes judged dead first-hand (silent or leaving).
    pub dead: BTreeSet<Arc<str>>,
}

/// The addresses clients asked for most recently (ARP requests and neighbour solicitations this node did not
/// answer), at most [`Asked::CAPACITY`] of them: a busy segment must not grow memory, and only the newest
/// matter.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Oldest first; each address once.
    recent: VecDeque<(IpAddr, Instant)>,
}

impl Asked {
    /// Addresses remembered.
    pub const CAPACITY: usize = 256;

    /// A client asked for `ip` at `at`.
    pub fn record(&mut self, ip: IpAddr, at: Instant) {
        if let Some(i) = self.recent.iter().rposition(|(seen, _)| *seen == ip) {
            self.recent.remove(i);
        }
        if self.recent.len() >= Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back((ip, at));
    }

    /// The addresses of `sorted` (ascending, no repeats) asked for within `lately` before `now`, most recent
    /// first, then the others in order; at most `limit`.
    pub fn first(&self, sorted: &[IpAddr], now: Instant, lately: Duration, limit: usize) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .recent
            .iter()
            .rev()
            .take_while(|(_, at)| now.saturating_duration_since(*at) <= lately)
            .filter(|(ip, _)| sorted.binary_search(ip).is_ok())
            .map(|(ip, _)| *ip)
            .take(limit)
            .collect();
        let asked: BTreeSet<IpAddr> = out.iter().copied().collect();
        let rest = limit.saturating_sub(out.len());
        out.extend(sorted.iter().filter(|ip| !asked.contains(ip)).take(rest));
        out
    }
}

/// What this node's interfaces showed since the last step, and whose MACs are whose.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Claims heard.
    pub heard: &'a [Heard],
    /// What clients asked for lately.
    pub asked: &'a Asked,
    /// This node's MACs.
    pub mine: &'a BTreeSet<Mac>,
    /// The MACs speakers have announced as theirs (MAC → node).
    pub nodes: &'a BTreeMap<Mac, String>,
}

/// Who claimed an address this node answers for, and what this node did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The address.
    pub ip: IpAddr,
    /// The other claimant.
    pub mac: Mac,
    /// The node that MAC belongs to; `None`: not a node (a stranger).
    pub node: Option<String>,
    /// This node goes on answering.
    pub kept: bool,
}

/// What the shell must do after a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Answer ARP for exactly these.
    pub answer: BTreeSet<IpAddr>,
    /// Send a probe for each now.
    pub probe: Vec<IpAddr>,
    /// Newly answered: announce with the gratuitous ARP burst, in this order (asked-for addresses first).
    pub announce: Vec<IpAddr>,
    /// Send one gratuitous ARP now (a conflict this node won; the loser must hear it).
    pub assert: Vec<IpAddr>,
    /// Claims by others of addresses this node answers for.
    pub conflicts: Vec<Conflict>,
    /// Previous owners that did not answer their confirmation: each with how many addresses were taken from it.
    pub owners_gone: Vec<(Arc<str>, usize)>,
    /// Previous owners whose confirmation a node judged dead answered (that MAC): their addresses are held back.
    pub owners_answered: Vec<(Arc<str>, Mac)>,
    /// Step again no later than this (pending probes, retries).
    pub wake_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Asking whether anybody answers; taken at `started + probe_window` if nobody did. `held_to`: who answered
    /// the previous probe (a retry), so the address counts as held back while it is asked again.
    Probing { started: Instant, last_probe: Instant, backoff: Duration, held_to: Option<Mac> },
    /// Someone else (`to`) answers; ask again at `retry_at`.
    HeldBack { to: Mac, retry_at: Instant, backoff: Duration },
    /// This node answers.
    Answering { last_assert: Option<Instant> },
    /// Taken from `from`, a node judged dead: waits for that node's one confirmation ([`Confirmation`]).
    Confirming { from: Arc<str> },
}

/// Whether a node judged dead is gone, asked once for all the addresses taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirmation {
    /// Probing one or two of its addresses (`sent` probes so far); all are taken at `started + probe_window`
    /// unless a node judged dead answers. `held_to`: who answered the previous round (a retry).
    Probing { started: Instant, last_probe: Instant, sent: usize, backoff: Duration, held_to: Option<Mac> },
    /// A node judged dead (`to`) answered: every address is held back; ask again at `retry_at`.
    HeldBack { to: Mac, retry_at: Instant, backoff: Duration },
    /// Confirmed gone and its addresses taken (or it had none for this node). An address attributed to it later
    /// was never held by it since (a new Service while it is dead) and is probed on its own.
    Done,
}

impl Confirmation {
    /// Whether an address taken from its node may still wait for it: not once it is done, nor after a first
    /// window that nobody was waiting in (the node had nothing for this node then, and anything given now was
    /// never held by it).
    fn open(&self, now: Instant, t: Timing) -> bool {
        match *self {
            Confirmation::Probing { started, .. } => now < started + t.probe_window,
            Confirmation::HeldBack { .. } => true,
            Confirmation::Done => false,
        }
    }
}

/// Addresses a confirmation probes: the first is enough; the second covers a lost frame or an address a
/// stranger holds.
const STAND_INS: usize = 2;

/// Per-address claim states of one node.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    timing: Timing,
    states: BTreeMap<IpAddr, State>,
    /// One per node judged dead.
    confirmations: BTreeMap<Arc<str>, Confirmation>,
}

/// The rank two claimants of `ip` compare: lower keeps the address. Both compute it from the two MACs they see
/// on the segment, so they agree without talking (a fixed hash, the same in every build).
pub fn rank(ip: IpAddr, mac: Mac) -> u64 {
    // FNV-1a: fixed by definition, unlike std's RandomState or DefaultHasher's unspecified algorithm.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // An IPv4 address hashes its four bytes, as before IPv6 was answered: the rank, and so who keeps a contested
    // address, must not change across an upgrade.
    match ip {
        IpAddr::V4(v4) => v4.octets().hash(&mut h),
        IpAddr::V6(v6) => v6.octets().hash(&mut h),
    }
    mac.0.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Whether this node (`mine`) keeps `ip` against another node's claim (`theirs`). Ties cannot happen for two
/// different MACs unless the hash collides; then the lower MAC keeps, which both also agree on.
pub fn keeps(ip: IpAddr, mine: Mac, theirs: Mac) -> bool {
    (rank(ip, mine), mine) < (rank(ip, theirs), theirs)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Claims {
    /// No address claimed yet.
    pub fn new(timing: Timing) -> Self {
        Self { timing, states: BTreeMap::new(), confirmations: BTreeMap::new() }
    }

    /// Addresses someone else answers for although the election gave them to this node, and who.
    pub fn held_back(&self) -> BTreeMap<IpAddr, Mac> {
        self.states
            .iter()
            .filter_map(|(ip, s)| match s {
                State::HeldBack { to, .. } | State::Probing { held_to: Some(to), .. } => Some((*ip, *to)),
                State::Confirming { from } => match self.confirmations.get(from) {
                    Some(Confirmation::HeldBack { to, .. } | Confirmation::Probing { held_to: Some(to), .. }) => {
                        Some((*ip, *to))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// One step: `want` is what the election gives this node, `handover` from whom the newly given ones are
    /// taken, `seen` what the interfaces showed since the last step.
    pub fn step(&mut self, want: &BTreeSet<IpAddr>, handover: &Handover, seen: &Seen<'_>, now: Instant) -> Actions {
        let t = self.timing;
        let mut out = Actions::default();
        self.states.retain(|ip, _| want.contains(ip));
        // A node no longer judged dead has nothing left to confirm; one judged dead anew is confirmed once.
        self.confirmations.retain(|node, _| handover.dead.contains(node));
        for node in &handover.dead {
            self.confirmations.entry(node.clone()).or_insert(Confirmation::Probing {
                started: now,
                last_probe: now,
                sent: 0,
                backoff: t.retry_min,
                held_to: None,
            });
        }
        self.hear(handover, seen, now, &mut out);
        let mut waiting: BTreeMap<Arc<str>, Vec<IpAddr>> = BTreeMap::new();
        for ip in want {
            let confirmations = &self.confirmations;
            let state = self.states.entry(*ip).or_insert_with(|| {
                // Taken from a node whose confirmation is still open: that confirmation stands for this address.
                // Otherwise (a new Service, a start-up, a node confirmed gone before this address came) it is
                // probed on its own.
                match handover.from.get(ip) {
                    Some(from) if confirmations.get(from).is_some_and(|c| c.open(now, t)) => {
                        State::Confirming { from: from.clone() }
                    }
                    _ => {
                        out.probe.push(*ip);
                        State::Probing { started: now, last_probe: now, backoff: t.retry_min, held_to: None }
                    }
                }
            });
            if let State::Confirming { from } = state {
                if matches!(confirmations.get(from), Some(c) if *c != Confirmation::Done) {
                    waiting.entry(from.clone()).or_default().push(*ip);
                    continue;
                }
                // Its node is no longer judged dead, yet the address is still this node's: ask on its own.
                out.probe.push(*ip);
                *state = State::Probing { started: now, last_probe: now, backoff: t.retry_min, held_to: None };
            }
            match *state {
                State::Probing { started, last_probe, backoff, held_to } => {
                    if now >= started + t.probe_window {
                        *state = State::Answering { last_assert: None };
                        out.announce.push(*ip);
                    } else if now >= last_probe + t.probe_every {
                        out.probe.push(*ip);
                        *state = State::Probing { started, last_probe: now, backoff, held_to };
                    }
                }
                State::HeldBack { to, retry_at, backoff } if now >= retry_at => {
                    out.probe.push(*ip);
                    *state = State::Probing { started: now, last_probe: now, backoff, held_to: Some(to) };
                }
                State::HeldBack { .. } | State::Answering { .. } | State::Confirming { .. } => {}
            }
            let due = match *state {
                State::Probing { started, last_probe, .. } => {
                    Some((started + t.probe_window).min(last_probe + t.probe_every))
                }
                State::HeldBack { retry_at, .. } => Some(retry_at),
                State::Answering { .. } | State::Confirming { .. } => None,
            };
            out.wake_at = earliest(out.wake_at, due);
            if matches!(state, State::Answering { .. }) {
                out.answer.insert(*ip);
            }
        }
        self.confirm(&waiting, seen.asked, now, &mut out);
        out.announce = seen.asked.first(&sorted(out.announce), now, t.asked_lately, usize::MAX);
        out
    }

    /// Takes in the claims heard: an answer to a probe holds back, a claim of an answered address is a conflict.
    fn hear(&mut self, handover: &Handover, seen: &Seen<'_>, now: Instant, out: &mut Actions) {
        let t = self.timing;
        for h in seen.heard.iter().filter(|h| !seen.mine.contains(&h.mac)) {
            let Some(state) = self.states.get_mut(&h.ip) else { continue };
            let node = seen.nodes.get(&h.mac);
            match state {
                State::Probing { started, backoff, held_to, .. } if h.at >= *started => {
                    // Someone answers already: hold back. If it is no node's MAC, say so (once per hold, not on
                    // every retry): a static IP clash, or a speaker from before an upgrade that sends no MACs.
                    if *held_to != Some(h.mac) && node.is_none() {
                        out.conflicts.push(Conflict { ip: h.ip, mac: h.mac, node: None, kept: false });
                    }
                    *state = State::HeldBack {
                        to: h.mac,
                        retry_at: now + *backoff,
                        backoff: (*backoff * 2).min(t.retry_max),
                    };
                }
                State::Probing { .. } => {}
                State::HeldBack { to, .. } => *to = h.mac,
                State::Answering { last_assert } => {
                    let kept = node.is_none() || keeps(h.ip, h.on, h.mac);
                    out.conflicts.push(Conflict { ip: h.ip, mac: h.mac, node: node.cloned(), kept });
                    if !kept {
                        *state = State::HeldBack { to: h.mac, retry_at: now + t.retry_min, backoff: t.retry_min * 2 };
                    } else if node.is_some()
                        && last_assert.is_none_or(|at| now.saturating_duration_since(at) >= t.assert_every)
                    {
                        out.assert.push(h.ip);
                        *state = State::Answering { last_assert: Some(now) };
                    }
                }
                State::Confirming { from } => {
                    let Some(confirmation) = self.confirmations.get_mut(from) else { continue };
                    match *confirmation {
                        // Heard before the question was asked: not an answer.
                        Confirmation::Probing { started, .. } if h.at < started => {}
                        Confirmation::Done => {}
                        // A node judged dead answers for one of the addresses: the verdict is wrong (or this
                        // node's idea of who held them), so none of them is taken.
                        _ if node.is_some_and(|n| handover.dead.contains(n.as_str())) => {
                            if let Confirmation::Probing { backoff, held_to, .. } = *confirmation {
                                // Said once per hold, not on every retry.
                                if held_to != Some(h.mac) {
                                    out.owners_answered.push((from.clone(), h.mac));
                                }
                                *confirmation = Confirmation::HeldBack {
                                    to: h.mac,
                                    retry_at: now + backoff,
                                    backoff: (backoff * 2).min(t.retry_max),
                                };
                            } else if let Confirmation::HeldBack { ref mut to, .. } = *confirmation {
                                *to = h.mac;
                            }
                        }
                        // A live node or a stranger answers this one address: it alone goes by the per-address
                        // rules (held back, a stranger reported), the others still wait for the confirmation.
                        _ => {
                            if node.is_none() {
                                out.conflicts.push(Conflict { ip: h.ip, mac: h.mac, node: None, kept: false });
                            }
                            *state =
                                State::HeldBack { to: h.mac, retry_at: now + t.retry_min, backoff: t.retry_min * 2 };
                        }
                    }
                }
            }
        }
    }

    /// Moves each open confirmation on: probes its stand-ins, takes every waiting address of a node that did
    /// not answer within the window, retries a held-back one.
    fn confirm(&mut self, waiting: &BTreeMap<Arc<str>, Vec<IpAddr>>, asked: &Asked, now: Instant, out: &mut Actions) {
        let t = self.timing;
        for (node, confirmation) in &mut self.confirmations {
            let ips = waiting.get(node).map(Vec::as_slice).unwrap_or_default();
            let stand_ins = || asked.first(ips, now, t.asked_lately, STAND_INS);
            match *confirmation {
                Confirmation::Probing { started, .. } if now >= started + t.probe_window => {
                    *confirmation = Confirmation::Done;
                    if !ips.is_empty() {
                        out.owners_gone.push((node.clone(), ips.len()));
                    }
                    for ip in ips {
                        self.states.insert(*ip, State::Answering { last_assert: None });
                        out.answer.insert(*ip);
                        out.announce.push(*ip);
                    }
                    continue;
                }
                Confirmation::Probing { started, last_probe, sent, backoff, held_to }
                    if !ips.is_empty() && (sent == 0 || now >= last_probe + t.probe_every) =>
                {
                    let stand_ins = stand_ins();
                    out.probe.extend(stand_ins.get(sent % stand_ins.len().max(1)));
                    *confirmation =
                        Confirmation::Probing { started, last_probe: now, sent: sent + 1, backoff, held_to };
                }
                Confirmation::HeldBack { to, retry_at, backoff } if now >= retry_at => {
                    if ips.is_empty() {
                        // Nothing waits for it any more (the node came back, or its addresses went elsewhere).
                        *confirmation = Confirmation::Done;
                        continue;
                    }
                    out.probe.extend(stand_ins().first());
                    *confirmation =
                        Confirmation::Probing { started: now, last_probe: now, sent: 1, backoff, held_to: Some(to) };
                }
                _ => {}
            }
            if ips.is_empty() {
                continue;
            }
            let due = match *confirmation {
                Confirmation::Probing { started, last_probe, .. } => {
                    Some((started + t.probe_window).min(last_probe + t.probe_every))
                }
                Confirmation::HeldBack { retry_at, .. } => Some(retry_at),
                Confirmation::Done => None,
            };
            out.wake_at = earliest(out.wake_at, due);
        }
    }
}

fn sorted(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort_unstable();
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Mac = Mac([2, 0, 0, 0, 0, 0xa]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);
    const STRANGER: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn ip() -> IpAddr {
        IpAddr::from([198, 19, 0, 1])
    }

    fn nodes() -> BTreeMap<Mac, String> {
        BTreeMap::from([(A, "node-a".to_string()), (B, "node-b".to_string())])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A step with nobody judged dead and nothing asked: every address is new and probed on its own.
    fn step(
        c: &mut Claims,
        want: &BTreeSet<IpAddr>,
        heard: &[Heard],
        mine: &BTreeSet<Mac>,
        nodes: &BTreeMap<Mac, String>,
        now: Instant,
    ) -> Actions {
        let asked = Asked::default();
        c.step(want, &Handover::default(), &Seen { heard, asked: &asked, mine, nodes }, now)
    }

    const C: Mac = Mac([2, 0, 0, 0, 0, 0xc]);

    fn three_nodes() -> BTreeMap<Mac, String> {
        BTreeMap::from([(A, "node-a".to_string()), (B, "node-b".to_string()), (C, "node-c".to_string())])
    }

    /// `n` addresses 198.19.x.y from .0.1 on.
    fn addresses(n: usize, from: usize) -> Vec<IpAddr> {
        (from..from + n).map(|i| IpAddr::from([198, 19, (i / 250) as u8, (i % 250 + 1) as u8])).collect()
    }

    /// Every address in `ips` taken from `node`, which is judged dead (with `also_dead`).
    fn taken_from(ips: &[IpAddr], node: &str, also_dead: &[&str]) -> Handover {
        let node: Arc<str> = Arc::from(node);
        let mut dead: BTreeSet<Arc<str>> = also_dead.iter().map(|n| Arc::from(*n)).collect();
        dead.insert(node.clone());
        Handover { from: ips.iter().map(|ip| (*ip, node.clone())).collect(), dead }
    }

    fn merged(a: Handover, b: Handover) -> Handover {
        Handover { from: a.from.into_iter().chain(b.from).collect(), dead: a.dead.into_iter().chain(b.dead).collect() }
    }

    /// This node (MAC A) stepping with a fixed handover, what it heard and what clients asked.
    struct Taker {
        claims: Claims,
        want: BTreeSet<IpAddr>,
        handover: Handover,
        asked: Asked,
        probes: Vec<IpAddr>,
    }

    impl Taker {
        fn new(want: &[IpAddr], handover: Handover) -> Self {
            let want = want.iter().copied().collect();
            Self { claims: Claims::new(Timing::default()), want, handover, asked: Asked::default(), probes: Vec::new() }
        }

        fn step(&mut self, heard: &[Heard], now: Instant) -> Actions {
            let (mine, nodes) = (BTreeSet::from([A]), three_nodes());
            let seen = Seen { heard, asked: &self.asked, mine: &mine, nodes: &nodes };
            let out = self.claims.step(&self.want, &self.handover, &seen, now);
            self.probes.extend(&out.probe);
            out
        }

        /// Steps every 5 ms from `from` to `to` (inclusive) with nothing heard; the last step's actions.
        fn run(&mut self, t0: Instant, from: u64, to: u64) -> Actions {
            let mut last = Actions::default();
            for at in (from..=to).step_by(5) {
                last = self.step(&[], t0 + ms(at));
            }
            last
        }
    }

    #[test]
    fn three_thousand_addresses_of_one_dead_owner_are_one_confirmation_all_taken_after_one_window() {
        let t0 = Instant::now();
        let ips = addresses(3000, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        let first = a.step(&[], t0);
        assert_eq!(first.probe.len(), 1, "one probe stands for all 3,000");
        assert!(first.answer.is_empty() && first.announce.is_empty(), "nothing before the window");
        let before_window = a.run(t0, 5, 95);
        assert!(before_window.answer.is_empty());
        let probed: BTreeSet<IpAddr> = a.probes.iter().copied().collect();
        assert!(a.probes.len() <= 4 && probed.len() <= STAND_INS, "probes: {:?}", a.probes);
        let taken = a.step(&[], t0 + ms(100));
        assert_eq!(taken.answer.len(), 3000, "all taken at once after one window");
        assert_eq!(taken.announce.len(), 3000);
        assert_eq!(taken.owners_gone, [(Arc::from("node-b"), 3000)]);
        assert!(a.claims.held_back().is_empty());
        let steady = a.step(&[], t0 + ms(200));
        assert!(steady.probe.is_empty() && steady.announce.is_empty() && steady.answer.len() == 3000);
    }

    #[test]
    fn the_owner_answering_its_confirmation_holds_back_every_address_and_is_asked_again_once() {
        let t0 = Instant::now();
        let ips = addresses(3000, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        let first = a.step(&[], t0);
        let stand_in = first.probe[0];
        let answer = Heard { ip: stand_in, mac: B, on: A, at: t0 + ms(1) };
        let held = a.step(&[answer], t0 + ms(2));
        assert_eq!(held.owners_answered, [(Arc::from("node-b"), B)]);
        assert_eq!(a.claims.held_back().len(), 3000, "every address held back to node-b");
        assert!(a.claims.held_back().values().all(|mac| *mac == B));
        assert_eq!(held.wake_at, Some(t0 + ms(52)), "retried with the usual backoff");
        let window = a.run(t0, 5, 50);
        assert!(window.answer.is_empty() && window.announce.is_empty(), "none taken, none announced");
        a.probes.clear();
        let retry = a.step(&[], t0 + ms(52));
        assert_eq!(retry.probe.len(), 1, "the retry asks with one probe, not 3,000");
        // Answered again: held back again, for twice as long, and not said twice.
        let again = a.step(&[Heard { at: t0 + ms(53), ..answer }], t0 + ms(54));
        assert!(again.owners_answered.is_empty());
        assert_eq!(again.wake_at, Some(t0 + ms(154)));
        assert!(a.run(t0, 55, 150).answer.is_empty());
        // node-b stopped answering (it really died meanwhile): one quiet window later all are taken.
        a.step(&[], t0 + ms(154));
        let taken = a.run(t0, 155, 255);
        assert_eq!(taken.answer.len(), 3000);
        assert!(a.probes.len() <= 6, "a handful of frames in all: {}", a.probes.len());
    }

    #[test]
    fn a_wrong_verdict_costs_a_few_probes_and_no_address() {
        let t0 = Instant::now();
        let ips = addresses(500, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        let first = a.step(&[], t0);
        let held = a.step(&[Heard { ip: first.probe[0], mac: B, on: A, at: t0 + ms(3) }], t0 + ms(5));
        assert!(held.answer.is_empty());
        // node-b's next heartbeat arrives: the election gives its addresses back to it.
        a.want.clear();
        a.handover = Handover::default();
        let back = a.run(t0, 10, 3000);
        assert!(back.answer.is_empty() && back.announce.is_empty());
        assert_eq!(a.probes.len(), 1, "{:?}", a.probes);
    }

    #[test]
    fn two_dead_owners_are_two_confirmations_and_one_answering_keeps_only_its_own() {
        let t0 = Instant::now();
        let of_b = addresses(100, 0);
        let of_c = addresses(100, 100);
        let all: Vec<IpAddr> = of_b.iter().chain(&of_c).copied().collect();
        let mut a = Taker::new(&all, merged(taken_from(&of_b, "node-b", &[]), taken_from(&of_c, "node-c", &[])));
        let first = a.step(&[], t0);
        assert_eq!(first.probe.len(), 2, "one probe per dead owner: {:?}", first.probe);
        let c_probe = *first.probe.iter().find(|ip| of_c.contains(ip)).expect("node-c's confirmation");
        let held = a.step(&[Heard { ip: c_probe, mac: C, on: A, at: t0 + ms(1) }], t0 + ms(2));
        assert_eq!(held.owners_answered, [(Arc::from("node-c"), C)]);
        let taken = a.run(t0, 5, 100);
        let expected: BTreeSet<IpAddr> = of_b.iter().copied().collect();
        assert_eq!(taken.answer, expected, "node-b's taken, node-c's held back");
        assert_eq!(taken.owners_gone, [(Arc::from("node-b"), 100)]);
        assert_eq!(a.claims.held_back().len(), 100);
    }

    #[test]
    fn a_stranger_or_a_live_node_answering_one_address_of_the_group_holds_back_that_address_alone() {
        let t0 = Instant::now();
        let ips = addresses(10, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        a.step(&[], t0);
        let stranger = Heard { ip: ips[3], mac: STRANGER, on: A, at: t0 + ms(1) };
        let live_node = Heard { ip: ips[4], mac: C, on: A, at: t0 + ms(1) };
        let out = a.step(&[stranger, live_node], t0 + ms(2));
        assert_eq!(out.conflicts, [Conflict { ip: ips[3], mac: STRANGER, node: None, kept: false }]);
        assert!(out.owners_answered.is_empty(), "node-b did not answer");
        let taken = a.run(t0, 5, 100);
        assert_eq!(taken.answer.len(), 8);
        assert_eq!(a.claims.held_back(), BTreeMap::from([(ips[3], STRANGER), (ips[4], C)]));
    }

    #[test]
    fn an_address_of_the_group_claimed_by_another_node_later_goes_through_conflict_resolution() {
        let t0 = Instant::now();
        let ips = addresses(10, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        a.run(t0, 0, 100);
        // node-c's view lags and it announces one of them: the ranks decide, exactly as for any address.
        let ip = ips[7];
        let claim = Heard { ip, mac: C, on: A, at: t0 + ms(150) };
        let out = a.step(&[claim], t0 + ms(151));
        let kept = keeps(ip, A, C);
        assert_eq!(out.conflicts, [Conflict { ip, mac: C, node: Some("node-c".into()), kept }]);
        assert_eq!(out.answer.contains(&ip), kept);
        assert_eq!(out.assert, if kept { vec![ip] } else { vec![] });
        assert_eq!(out.answer.len(), if kept { 10 } else { 9 });
    }

    #[test]
    fn addresses_clients_ask_for_are_probed_and_announced_first() {
        // A minute into the future, so that "a minute ago" exists however long the machine has been up.
        let t0 = Instant::now() + ms(60_000);
        let ips = addresses(1000, 0);
        let mut a = Taker::new(&ips, taken_from(&ips, "node-b", &[]));
        // Asked for long ago: not "now". Asked for during the detection: first.
        a.asked.record(ips[10], t0 - ms(60_000));
        a.asked.record(ips[900], t0 - ms(150));
        a.asked.record(ips[500], t0 - ms(100));
        a.asked.record("198.51.100.7".parse().expect("ip"), t0);
        let first = a.step(&[], t0);
        assert_eq!(first.probe, [ips[500]], "the most recently asked-for address stands in");
        let second = a.step(&[], t0 + ms(25));
        assert_eq!(second.probe, [ips[900]], "the second stand-in");
        let taken = a.run(t0, 30, 100);
        assert_eq!(taken.announce[..3], [ips[500], ips[900], ips[0]], "asked-for first, then in order");
        assert_eq!(taken.announce.len(), 1000);
    }

    #[test]
    fn addresses_with_no_previous_owner_or_given_after_their_owner_was_confirmed_gone_are_probed_one_by_one() {
        let t0 = Instant::now();
        let of_b = addresses(50, 0);
        let new = addresses(3, 50);
        let all: Vec<IpAddr> = of_b.iter().chain(&new).copied().collect();
        // A new Service's addresses while node-b's are taken: each is probed on its own.
        let mut a = Taker::new(&all, taken_from(&of_b, "node-b", &[]));
        let first = a.step(&[], t0);
        assert_eq!(first.probe.len(), 1 + 3, "{:?}", first.probe);
        assert_eq!(a.run(t0, 5, 100).answer.len(), 53);
        // node-c, judged dead long ago with nothing for this node, would own a Service created now: it never held
        // it, so it is probed on its own, not taken with a confirmation nobody waited for.
        a.handover.dead.insert(Arc::from("node-c"));
        a.step(&[], t0 + ms(200));
        let for_c = addresses(1, 70)[0];
        a.want.insert(for_c);
        a.handover.from.insert(for_c, Arc::from("node-c"));
        let asked = a.step(&[], t0 + ms(400));
        assert_eq!(asked.probe, [for_c], "probed on its own");
        assert!(!asked.answer.contains(&for_c), "not before its own window");
        assert!(a.run(t0, 405, 495).answer.len() == 53);
        assert_eq!(a.step(&[], t0 + ms(500)).answer.len(), 54);
        // node-b stays dead; a Service created now would be node-b's if it lived, but node-b never held it.
        let later = addresses(1, 60)[0];
        a.want.insert(later);
        a.handover.from.insert(later, Arc::from("node-b"));
        let asked = a.step(&[], t0 + ms(600));
        assert_eq!(asked.probe, [later], "probed on its own");
        let answered = a.step(&[Heard { ip: later, mac: STRANGER, on: A, at: t0 + ms(601) }], t0 + ms(602));
        assert_eq!(answered.conflicts.len(), 1, "a stranger holding it is found");
        assert!(!answered.answer.contains(&later));
    }

    #[test]
    fn the_asked_record_is_bounded_and_keeps_the_newest_once() {
        let t0 = Instant::now();
        let mut asked = Asked::default();
        let ips = addresses(Asked::CAPACITY + 10, 0);
        for (i, ip) in ips.iter().enumerate() {
            asked.record(*ip, t0 + ms(i as u64));
        }
        asked.record(ips[20], t0 + ms(10_000));
        let now = t0 + ms(10_000);
        let everything = asked.first(&ips, now, ms(60_000), usize::MAX);
        assert_eq!(everything[0], ips[20], "asked again: newest");
        assert_eq!(everything.len(), ips.len(), "each address once");
        let recent: Vec<IpAddr> = asked.first(&ips, now, ms(60_000), Asked::CAPACITY);
        assert!(!recent.contains(&ips[0]), "the oldest were forgotten");
        assert_eq!(asked.recent.len(), Asked::CAPACITY);
    }

    #[test]
    fn an_address_nobody_answers_for_is_taken_after_the_probe_window() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        let first = step(&mut c, &want, &[], &mine, &nodes(), t0);
        assert_eq!(first.probe, [ip()]);
        assert!(first.answer.is_empty(), "not before the window");
        assert_eq!(first.wake_at, Some(t0 + ms(25)));
        let again = step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(25));
        assert_eq!(again.probe, [ip()], "a second probe within the window");
        let taken = step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(100));
        assert_eq!(taken.answer, BTreeSet::from([ip()]));
        assert_eq!(taken.announce, [ip()]);
        assert_eq!(taken.wake_at, None);
        let steady = step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(100));
        assert!(steady.announce.is_empty() && steady.probe.is_empty());
        assert!(step(&mut c, &BTreeSet::new(), &[], &mine, &nodes(), t0 + ms(200)).answer.is_empty(), "released");
    }

    #[test]
    fn someone_answering_the_probe_keeps_the_address_and_is_asked_again_with_backoff() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        step(&mut c, &want, &[], &mine, &nodes(), t0);
        let reply = Heard { ip: ip(), mac: B, on: A, at: t0 + ms(1) };
        let held = step(&mut c, &want, &[reply], &mine, &nodes(), t0 + ms(2));
        assert!(held.answer.is_empty() && held.announce.is_empty());
        assert_eq!(c.held_back(), BTreeMap::from([(ip(), B)]));
        assert_eq!(held.wake_at, Some(t0 + ms(52)));
        let retry = step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(52));
        assert_eq!(retry.probe, [ip()]);
        // Still answered: the next wait is twice as long.
        let reply = Heard { at: t0 + ms(53), ..reply };
        let held = step(&mut c, &want, &[reply], &mine, &nodes(), t0 + ms(54));
        assert_eq!(held.wake_at, Some(t0 + ms(154)));
        // The other one stopped (it died, or gave the address up): taken after one quiet window.
        step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(154));
        let taken = step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(254));
        assert_eq!(taken.announce, [ip()]);
    }

    #[test]
    fn backoff_is_capped() {
        let t = Timing::default();
        let t0 = Instant::now();
        let mut c = Claims::new(t);
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        let mut now = t0;
        step(&mut c, &want, &[], &mine, &nodes(), now);
        let mut waits = Vec::new();
        for _ in 0..12 {
            let reply = Heard { ip: ip(), mac: B, on: A, at: now };
            let held = step(&mut c, &want, &[reply], &mine, &nodes(), now);
            let wake = held.wake_at.expect("a retry");
            waits.push(wake - now);
            now = wake;
            step(&mut c, &want, &[], &mine, &nodes(), now);
        }
        assert_eq!(waits[0], t.retry_min);
        assert_eq!(waits[1], t.retry_min * 2);
        assert_eq!(*waits.last().expect("waits"), t.retry_max);
    }

    #[test]
    fn our_own_frames_are_not_claims() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        step(&mut c, &want, &[], &mine, &nodes(), t0);
        let echo = Heard { ip: ip(), mac: A, on: A, at: t0 + ms(1) };
        assert_eq!(step(&mut c, &want, &[echo], &mine, &nodes(), t0 + ms(100)).answer, want);
    }

    #[test]
    fn a_stranger_is_reported_and_does_not_take_the_address() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        step(&mut c, &want, &[], &mine, &nodes(), t0);
        step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(100));
        let garp = Heard { ip: ip(), mac: STRANGER, on: A, at: t0 + ms(110) };
        let out = step(&mut c, &want, &[garp], &mine, &nodes(), t0 + ms(111));
        assert_eq!(out.conflicts, [Conflict { ip: ip(), mac: STRANGER, node: None, kept: true }]);
        assert_eq!(out.answer, want);
        assert!(out.assert.is_empty(), "no ARP war with a stranger");
    }

    #[test]
    fn a_stranger_answering_the_probe_is_held_back_from_and_reported_once() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        step(&mut c, &want, &[], &mine, &nodes(), t0);
        let reply = Heard { ip: ip(), mac: STRANGER, on: A, at: t0 + ms(1) };
        let held = step(&mut c, &want, &[reply], &mine, &nodes(), t0 + ms(2));
        assert_eq!(held.conflicts, [Conflict { ip: ip(), mac: STRANGER, node: None, kept: false }]);
        assert!(held.answer.is_empty());
        // Asked again and answered again by the same stranger: still held back, not reported again, and the
        // address counts as held back throughout the retry.
        step(&mut c, &want, &[], &mine, &nodes(), t0 + ms(52));
        assert_eq!(c.held_back(), BTreeMap::from([(ip(), STRANGER)]), "held back while asking again");
        let again = step(&mut c, &want, &[Heard { at: t0 + ms(53), ..reply }], &mine, &nodes(), t0 + ms(54));
        assert!(again.conflicts.is_empty());
        // A node answering the probe is not a stranger.
        let mut c = Claims::new(Timing::default());
        step(&mut c, &want, &[], &mine, &nodes(), t0);
        let by_node = step(&mut c, &want, &[Heard { mac: B, ..reply }], &mine, &nodes(), t0 + ms(2));
        assert!(by_node.conflicts.is_empty());
    }

    /// Two speakers that both want one address (views disagree, the liveness channel is down), stepped every
    /// 5 ms. What each hears of the other is what the wire would carry: answers to its probes while the other
    /// answers, the other's gratuitous ARP burst (0, 250, 1100, 2200 ms after taking) while it still answers,
    /// and the other's conflict assertions. Every `lose_every`-th frame is lost (0: none).
    fn converge(ip: IpAddr, a: Mac, b: Mac, a_starts: u64, b_starts: u64, lose_every: usize) -> (bool, bool) {
        let t0 = Instant::now();
        let node_macs = BTreeMap::from([(a, "a".to_string()), (b, "b".to_string())]);
        let want = BTreeSet::from([ip]);
        let macs = [a, b];
        let starts = [a_starts, b_starts];
        let mut claims = [Claims::new(Timing::default()), Claims::new(Timing::default())];
        let mut inbox: [Vec<Heard>; 2] = [Vec::new(), Vec::new()];
        let mut answering = [false, false];
        let mut bursts: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut sent = 0usize;
        for tick in 0..1000u64 {
            let now_ms = tick * 5;
            let now = t0 + ms(now_ms);
            let mut frames: [bool; 2] = [false, false];
            let mut probes: [bool; 2] = [false, false];
            for i in 0..2 {
                if now_ms < starts[i] {
                    continue;
                }
                let heard = std::mem::take(&mut inbox[i]);
                let out = step(&mut claims[i], &want, &heard, &BTreeSet::from([macs[i]]), &node_macs, now);
                answering[i] = out.answer.contains(&ip);
                if !out.announce.is_empty() {
                    bursts[i] = [0, 250, 1100, 2200].iter().map(|d| now_ms + d).collect();
                }
                let burst_due = bursts[i].first().is_some_and(|at| *at <= now_ms);
                if burst_due {
                    bursts[i].remove(0);
                }
                frames[i] = (burst_due && answering[i]) || !out.assert.is_empty();
                probes[i] = !out.probe.is_empty();
            }
            for (from, to) in [(0, 1), (1, 0)] {
                let answers_probe = probes[to] && answering[from];
                if frames[from] || answers_probe {
                    sent += 1;
                    if lose_every == 0 || !sent.is_multiple_of(lose_every) {
                        inbox[to].push(Heard { ip, mac: macs[from], on: macs[to], at: now });
                    }
                }
            }
        }
        (answering[0], answering[1])
    }

    #[test]
    fn simultaneous_claims_settle_on_the_lower_rank() {
        let (a, b) = converge(ip(), A, B, 0, 0, 0);
        assert!(a ^ b, "exactly one answers: {a} {b}");
        assert_eq!(a, keeps(ip(), A, B));
    }

    #[test]
    fn the_ipv4_rank_is_the_one_every_earlier_release_computed() {
        // FNV-1a over std's `Hash` of the two byte arrays (a length prefix, then the bytes) computed by hand
        // (docs/design.md §6.5): a changed rank would make an upgraded node and an old one disagree on who
        // keeps a contested address.
        let mut bytes = 4usize.to_ne_bytes().to_vec();
        bytes.extend([198u8, 19, 0, 1]);
        bytes.extend(6usize.to_ne_bytes());
        bytes.extend([2u8, 0, 0, 0, 0, 0xa]);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(rank(ip(), A), h);
        assert_ne!(rank(IpAddr::from([0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1]), A), rank(ip(), A));
    }

    proptest! {
        /// Any two speakers, any start offsets (one may already answer when the other arrives), some frames
        /// lost: they end with exactly one answerer.
        #[test]
        fn any_two_claimants_converge_to_one(
            octet in 1u8..255,
            v6 in any::<bool>(),
            a in any::<[u8; 5]>(),
            b in any::<[u8; 5]>(),
            a_starts in 0u64..1000,
            b_starts in 0u64..1000,
            lose_every in prop_oneof![Just(0usize), 3usize..10],
        ) {
            let mac = |tail: [u8; 5]| Mac([2, tail[0], tail[1], tail[2], tail[3], tail[4]]);
            let (ma, mb) = (mac(a), mac(b));
            prop_assume!(ma != mb);
            let ip = if v6 {
                IpAddr::from([0x2001, 0xdb8, 0x19, 0, 0, 0, 0, u16::from(octet)])
            } else {
                IpAddr::from([198, 19, 0, octet])
            };
            let (answer_a, answer_b) = converge(ip, ma, mb, a_starts, b_starts, lose_every);
            prop_assert!(answer_a ^ answer_b, "a={answer_a} b={answer_b}");
        }

        /// The rank is a strict order on two distinct MACs: exactly one of them keeps.
        #[test]
        fn exactly_one_of_two_keeps(octet in any::<u8>(), a in any::<[u8; 6]>(), b in any::<[u8; 6]>()) {
            prop_assume!(a != b);
            let ip = IpAddr::from([198, 19, 0, octet]);
            prop_assert!(keeps(ip, Mac(a), Mac(b)) ^ keeps(ip, Mac(b), Mac(a)));
        }
    }

    proptest! {
        // Each case steps a few hundred addresses through half a second: fewer cases keep `make check` quick.
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any number of nodes judged dead, each with any number of addresses for this node, some of them alive
        /// after all (they answer probes of their addresses): exactly the really dead ones' addresses are taken,
        /// none of a live one's ever is, and the probes sent depend on the number of nodes, not of addresses.
        #[test]
        fn each_node_judged_dead_costs_one_confirmation_and_only_the_dead_lose_addresses(
            per_node in prop::collection::vec(1usize..60, 1..4),
            alive in prop::collection::vec(any::<bool>(), 3),
        ) {
            let t0 = Instant::now();
            let macs = [B, C, Mac([2, 0, 0, 0, 0, 0xd])];
            let names = ["node-b", "node-c", "node-d"];
            let nodes: BTreeMap<Mac, String> =
                macs.iter().zip(names).map(|(m, n)| (*m, n.to_string())).collect();
            let mut handover = Handover::default();
            let mut owner_of: BTreeMap<IpAddr, usize> = BTreeMap::new();
            let mut from = 0;
            for (i, count) in per_node.iter().enumerate() {
                let ips = addresses(*count, from);
                from += count;
                handover = merged(handover, taken_from(&ips, names[i], &[]));
                owner_of.extend(ips.iter().map(|ip| (*ip, i)));
            }
            let want: BTreeSet<IpAddr> = owner_of.keys().copied().collect();
            let (mine, asked) = (BTreeSet::from([A]), Asked::default());
            let mut claims = Claims::new(Timing::default());
            let mut inbox: Vec<Heard> = Vec::new();
            let (mut probes, mut answered) = (0usize, BTreeSet::new());
            for tick in 0..=100u64 {
                let now = t0 + ms(tick * 5);
                let heard = std::mem::take(&mut inbox);
                let out = claims.step(&want, &handover, &Seen { heard: &heard, asked: &asked, mine: &mine, nodes: &nodes }, now);
                probes += out.probe.len();
                answered.extend(out.answer.iter().copied());
                for ip in out.probe {
                    let owner = owner_of[&ip];
                    if alive[owner] {
                        inbox.push(Heard { ip, mac: macs[owner], on: A, at: now + ms(1) });
                    }
                }
            }
            let dead_ones: BTreeSet<IpAddr> =
                owner_of.iter().filter(|(_, o)| !alive[**o]).map(|(ip, _)| *ip).collect();
            prop_assert_eq!(&answered, &dead_ones);
            // In half a second: the first confirmation and the retries after 50, 100 and 200 ms, four probes each.
            prop_assert!(probes <= 16 * per_node.len(), "{} probes for {} nodes", probes, per_node.len());
        }
    }
}
