//! One answerer per address from what the wire shows (docs/design.md §6.5). The election says which addresses
//! this node *should* answer for; this decides which it *does*, from ARP it has seen:
//!
//! - **Probe before answering.** An address this node is about to answer for is first asked for (an RFC 5227
//!   probe from 0.0.0.0; for IPv6 an RFC 4862 duplicate-address probe from `::`). If another MAC answers within the probe window, someone already answers: this node
//!   holds back and asks again later (backing off). So a peer wrongly believed dead (heartbeats lost or blocked)
//!   keeps its addresses, and a truly dead one is replaced one probe window after its death is seen.
//! - **Two nodes claiming one address converge.** When an address this node answers for is claimed by another
//!   node's MAC (a gratuitous ARP, a reply, or a request sent from that address), both compare the same rank —
//!   `hash(address, MAC)` of the two MACs on that segment — and the lower one keeps answering; the winner sends
//!   one gratuitous ARP so the loser sees the conflict too. No liveness channel is needed.
//! - **A stranger claiming an address** (a MAC no speaker has announced as its own: a static IP clash) does not
//!   make this node give up: the pool says the address is the cluster's. It is reported (Event, metric, log) so
//!   a human can remove the clash.
//!
//! Pure: time, what was heard and the node MACs are passed in; the shell sends the probes and gratuitous ARP.

use crate::wire::Mac;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
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
    /// Newly answered: announce with the gratuitous ARP burst.
    pub announce: Vec<IpAddr>,
    /// Send one gratuitous ARP now (a conflict this node won; the loser must hear it).
    pub assert: Vec<IpAddr>,
    /// Claims by others of addresses this node answers for.
    pub conflicts: Vec<Conflict>,
    /// Step again no later than this (pending probes, retries).
    pub wake_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Asking whether anybody answers; taken at `started + probe_window` if nobody did. `held_to`: who answered
    /// the previous probe (a retry), so the address counts as held back while it is asked again.
    Probing { started: Instant, last_probe: Instant, backoff: Duration, held_to: Option<Mac> },
    /// Someone else (`to`) answers; ask again at `retry_at`.
    HeldBack { to: Mac, retry_at: Instant, backoff: Duration },
    /// This node answers.
    Answering { last_assert: Option<Instant> },
}

/// Per-address claim states of one node.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    timing: Timing,
    states: BTreeMap<IpAddr, State>,
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

impl Claims {
    /// No address claimed yet.
    pub fn new(timing: Timing) -> Self {
        Self { timing, states: BTreeMap::new() }
    }

    /// Addresses someone else answers for although the election gave them to this node, and who.
    pub fn held_back(&self) -> BTreeMap<IpAddr, Mac> {
        self.states
            .iter()
            .filter_map(|(ip, s)| match s {
                State::HeldBack { to, .. } | State::Probing { held_to: Some(to), .. } => Some((*ip, *to)),
                _ => None,
            })
            .collect()
    }

    /// One step: `want` is what the election gives this node, `heard` the claims seen since the last step,
    /// `mine` this node's MACs, `nodes` the MACs speakers have announced as theirs (MAC → node).
    pub fn step(
        &mut self,
        want: &BTreeSet<IpAddr>,
        heard: &[Heard],
        mine: &BTreeSet<Mac>,
        nodes: &BTreeMap<Mac, String>,
        now: Instant,
    ) -> Actions {
        let t = self.timing;
        let mut out = Actions::default();
        self.states.retain(|ip, _| want.contains(ip));
        for h in heard.iter().filter(|h| !mine.contains(&h.mac)) {
            let Some(state) = self.states.get_mut(&h.ip) else { continue };
            match *state {
                State::Probing { started, backoff, held_to, .. } if h.at >= started => {
                    // Someone answers already: hold back. If it is no node's MAC, say so (once per hold, not on
                    // every retry): a static IP clash, or a speaker from before an upgrade that sends no MACs.
                    if held_to != Some(h.mac) && !nodes.contains_key(&h.mac) {
                        out.conflicts.push(Conflict { ip: h.ip, mac: h.mac, node: None, kept: false });
                    }
                    *state =
                        State::HeldBack { to: h.mac, retry_at: now + backoff, backoff: (backoff * 2).min(t.retry_max) };
                }
                State::Probing { .. } => {}
                State::HeldBack { ref mut to, .. } => *to = h.mac,
                State::Answering { last_assert } => {
                    let node = nodes.get(&h.mac).cloned();
                    let kept = node.is_none() || keeps(h.ip, h.on, h.mac);
                    out.conflicts.push(Conflict { ip: h.ip, mac: h.mac, node, kept });
                    if !kept {
                        *state = State::HeldBack { to: h.mac, retry_at: now + t.retry_min, backoff: t.retry_min * 2 };
                    } else if out.conflicts.last().is_some_and(|c| c.node.is_some())
                        && last_assert.is_none_or(|at| now.saturating_duration_since(at) >= t.assert_every)
                    {
                        out.assert.push(h.ip);
                        *state = State::Answering { last_assert: Some(now) };
                    }
                }
            }
        }
        for ip in want {
            let state = self.states.entry(*ip).or_insert_with(|| {
                out.probe.push(*ip);
                State::Probing { started: now, last_probe: now, backoff: t.retry_min, held_to: None }
            });
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
                State::HeldBack { .. } | State::Answering { .. } => {}
            }
            let due = match *state {
                State::Probing { started, last_probe, .. } => {
                    Some((started + t.probe_window).min(last_probe + t.probe_every))
                }
                State::HeldBack { retry_at, .. } => Some(retry_at),
                State::Answering { .. } => None,
            };
            out.wake_at = match (out.wake_at, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if matches!(state, State::Answering { .. }) {
                out.answer.insert(*ip);
            }
        }
        out
    }
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

    #[test]
    fn an_address_nobody_answers_for_is_taken_after_the_probe_window() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        let first = c.step(&want, &[], &mine, &nodes(), t0);
        assert_eq!(first.probe, [ip()]);
        assert!(first.answer.is_empty(), "not before the window");
        assert_eq!(first.wake_at, Some(t0 + ms(25)));
        let again = c.step(&want, &[], &mine, &nodes(), t0 + ms(25));
        assert_eq!(again.probe, [ip()], "a second probe within the window");
        let taken = c.step(&want, &[], &mine, &nodes(), t0 + ms(100));
        assert_eq!(taken.answer, BTreeSet::from([ip()]));
        assert_eq!(taken.announce, [ip()]);
        assert_eq!(taken.wake_at, None);
        let steady = c.step(&want, &[], &mine, &nodes(), t0 + ms(100));
        assert!(steady.announce.is_empty() && steady.probe.is_empty());
        assert!(c.step(&BTreeSet::new(), &[], &mine, &nodes(), t0 + ms(200)).answer.is_empty(), "released");
    }

    #[test]
    fn someone_answering_the_probe_keeps_the_address_and_is_asked_again_with_backoff() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        c.step(&want, &[], &mine, &nodes(), t0);
        let reply = Heard { ip: ip(), mac: B, on: A, at: t0 + ms(1) };
        let held = c.step(&want, &[reply], &mine, &nodes(), t0 + ms(2));
        assert!(held.answer.is_empty() && held.announce.is_empty());
        assert_eq!(c.held_back(), BTreeMap::from([(ip(), B)]));
        assert_eq!(held.wake_at, Some(t0 + ms(52)));
        let retry = c.step(&want, &[], &mine, &nodes(), t0 + ms(52));
        assert_eq!(retry.probe, [ip()]);
        // Still answered: the next wait is twice as long.
        let reply = Heard { at: t0 + ms(53), ..reply };
        let held = c.step(&want, &[reply], &mine, &nodes(), t0 + ms(54));
        assert_eq!(held.wake_at, Some(t0 + ms(154)));
        // The other one stopped (it died, or gave the address up): taken after one quiet window.
        c.step(&want, &[], &mine, &nodes(), t0 + ms(154));
        let taken = c.step(&want, &[], &mine, &nodes(), t0 + ms(254));
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
        c.step(&want, &[], &mine, &nodes(), now);
        let mut waits = Vec::new();
        for _ in 0..12 {
            let reply = Heard { ip: ip(), mac: B, on: A, at: now };
            let held = c.step(&want, &[reply], &mine, &nodes(), now);
            let wake = held.wake_at.expect("a retry");
            waits.push(wake - now);
            now = wake;
            c.step(&want, &[], &mine, &nodes(), now);
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
        c.step(&want, &[], &mine, &nodes(), t0);
        let echo = Heard { ip: ip(), mac: A, on: A, at: t0 + ms(1) };
        assert_eq!(c.step(&want, &[echo], &mine, &nodes(), t0 + ms(100)).answer, want);
    }

    #[test]
    fn a_stranger_is_reported_and_does_not_take_the_address() {
        let t0 = Instant::now();
        let mut c = Claims::new(Timing::default());
        let want = BTreeSet::from([ip()]);
        let mine = BTreeSet::from([A]);
        c.step(&want, &[], &mine, &nodes(), t0);
        c.step(&want, &[], &mine, &nodes(), t0 + ms(100));
        let garp = Heard { ip: ip(), mac: STRANGER, on: A, at: t0 + ms(110) };
        let out = c.step(&want, &[garp], &mine, &nodes(), t0 + ms(111));
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
        c.step(&want, &[], &mine, &nodes(), t0);
        let reply = Heard { ip: ip(), mac: STRANGER, on: A, at: t0 + ms(1) };
        let held = c.step(&want, &[reply], &mine, &nodes(), t0 + ms(2));
        assert_eq!(held.conflicts, [Conflict { ip: ip(), mac: STRANGER, node: None, kept: false }]);
        assert!(held.answer.is_empty());
        // Asked again and answered again by the same stranger: still held back, not reported again, and the
        // address counts as held back throughout the retry.
        c.step(&want, &[], &mine, &nodes(), t0 + ms(52));
        assert_eq!(c.held_back(), BTreeMap::from([(ip(), STRANGER)]), "held back while asking again");
        let again = c.step(&want, &[Heard { at: t0 + ms(53), ..reply }], &mine, &nodes(), t0 + ms(54));
        assert!(again.conflicts.is_empty());
        // A node answering the probe is not a stranger.
        let mut c = Claims::new(Timing::default());
        c.step(&want, &[], &mine, &nodes(), t0);
        let by_node = c.step(&want, &[Heard { mac: B, ..reply }], &mine, &nodes(), t0 + ms(2));
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
                let out = claims[i].step(&want, &heard, &BTreeSet::from([macs[i]]), &node_macs, now);
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
}
