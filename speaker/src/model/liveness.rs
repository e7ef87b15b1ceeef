//! Liveness between speakers: every speaker sends an authenticated heartbeat to every other speaker every
//! `interval` over UDP; a peer unheard for `dead_after` is dead, and a speaker that stops cleanly says "leaving"
//! so its addresses move at once. A peer never heard from falls back to its Node's `Ready` condition.
//!
//! Why not SWIM (the `foca` crate, evaluated): SWIM probes one random member per period and spreads verdicts
//! by gossip, which scales to thousands of nodes but makes detection time a distribution and leaves speakers
//! briefly disagreeing. Direct all-to-all heartbeats give every speaker the same first-hand verdict within one
//! bound (`dead_after`), which is what one-owner-per-address needs, at n² small packets: 20/s per pair, fine for
//! the tens of nodes L2 segments hold. Past ~100 nodes, SWIM is the way to go.
//!
//! Wire format (all integers big-endian): `FLB2` | kind (1 alive, 2 leaving) | name length | name | incarnation
//! (u64, chosen once when the speaker starts) | counter (u64, +1 per message) | MAC count (≤ 8) | MACs (6 bytes
//! each: the sender's interfaces, so peers can tell a node's ARP from a stranger's, docs/design.md §6.4) |
//! HMAC-SHA256 over all of that. Forged messages (wrong tag) and replays (an incarnation already retired, or a
//! counter not above the last accepted) are rejected. No clock is on the wire: a sender whose wall clock steps
//! back (NTP at boot, a migrated VM) stays alive to its peers (§5.2).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"FLB2";
const TAG: usize = 32;
/// At most this many MACs travel in one message.
pub const MAX_MACS: usize = 8;

/// What a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// "I am alive."
    Alive,
    /// "I am stopping: move my addresses now."
    Leaving,
}

/// A verified message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Alive or leaving.
    pub kind: Kind,
    /// Sender's node name.
    pub node: String,
    /// Chosen once per speaker start; a new one means the peer restarted.
    pub incarnation: u64,
    /// Strictly increasing within an incarnation.
    pub counter: u64,
    /// The sender's interface MACs (at most [`MAX_MACS`]).
    pub macs: Vec<[u8; 6]>,
}

/// Why a datagram was not accepted (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reject {
    /// Not our format.
    Malformed,
    /// The tag does not verify: wrong key or tampered.
    BadTag,
    /// Counter not above the last one accepted in the peer's incarnation, or an incarnation it has left behind:
    /// a replay or a reordering.
    Replay,
    /// Claims to come from this node.
    FromSelf,
}

impl Reject {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::BadTag => "bad_tag",
            Reject::Replay => "replay",
            Reject::FromSelf => "from_self",
        }
    }
}

fn mac_of(key: &[u8], body: &[u8]) -> [u8; TAG] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Builds an authenticated datagram.
pub fn encode(key: &[u8], msg: &Message) -> Vec<u8> {
    let name = msg.node.as_bytes();
    let name = &name[..name.len().min(253)];
    let macs = &msg.macs[..msg.macs.len().min(MAX_MACS)];
    let mut out = Vec::with_capacity(4 + 2 + name.len() + 16 + 1 + 6 * macs.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.push(match msg.kind {
        Kind::Alive => 1,
        Kind::Leaving => 2,
    });
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&msg.incarnation.to_be_bytes());
    out.extend_from_slice(&msg.counter.to_be_bytes());
    out.push(macs.len() as u8);
    macs.iter().for_each(|m| out.extend_from_slice(m));
    let tag = mac_of(key, &out);
    out.extend_from_slice(&tag);
    out
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Parses and verifies a datagram (constant-time tag comparison).
pub fn decode(key: &[u8], buf: &[u8]) -> Result<Message, Reject> {
    if buf.len() < 4 + 2 + 16 + 1 + TAG || &buf[..4] != MAGIC {
        return Err(Reject::Malformed);
    }
    let name_len = usize::from(buf[5]);
    let macs_at = 6 + name_len + 16;
    let mac_count = usize::from(*buf.get(macs_at).ok_or(Reject::Malformed)?);
    let body_len = macs_at + 1 + 6 * mac_count;
    if mac_count > MAX_MACS || buf.len() != body_len + TAG {
        return Err(Reject::Malformed);
    }
    let (body, tag) = buf.split_at(body_len);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Reject::BadTag)?;
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Reject::BadTag)?;
    let kind = match buf[4] {
        1 => Kind::Alive,
        2 => Kind::Leaving,
        _ => return Err(Reject::Malformed),
    };
    let node = std::str::from_utf8(&body[6..6 + name_len]).map_err(|_| Reject::Malformed)?.to_string();
    let macs = body[macs_at + 1..]
        .chunks_exact(6)
        .map(|c| {
            let mut m = [0u8; 6];
            m.copy_from_slice(c);
            m
        })
        .collect();
    Ok(Message { kind, node, incarnation: u64_at(body, 6 + name_len), counter: u64_at(body, 6 + name_len + 8), macs })
}

/// A peer's state as this speaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Heard within `dead_after`.
    Alive,
    /// Said it is leaving, or silent for longer than `dead_after`.
    Dead,
    /// Never heard from: use the fallback signal.
    Unknown,
}

/// Incarnations of one peer remembered as retired, so their messages stay rejected (restarts are rare).
const RETIRED_KEPT: usize = 16;

#[derive(Debug, Clone)]
struct Peer {
    last_heard: Instant,
    incarnation: u64,
    counter: u64,
    retired: Vec<u64>,
    left: bool,
    macs: Vec<[u8; 6]>,
}

/// Who is alive, from accepted messages and the clock (passed in: no clock inside).
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    dead_after: Duration,
    peers: BTreeMap<String, Peer>,
}

impl Membership {
    /// Membership as seen by `me`.
    pub fn new(me: &str, dead_after: Duration) -> Self {
        Self { me: me.into(), dead_after, peers: BTreeMap::new() }
    }

    /// Takes in a verified message received at `now`. Within an incarnation the counter must grow; a new
    /// incarnation (the peer restarted) is taken unless it was seen and retired before.
    pub fn accept(&mut self, msg: &Message, now: Instant) -> Result<(), Reject> {
        if msg.node == self.me {
            return Err(Reject::FromSelf);
        }
        let mut retired = Vec::new();
        if let Some(p) = self.peers.get(&msg.node) {
            if msg.incarnation == p.incarnation && msg.counter <= p.counter {
                return Err(Reject::Replay);
            }
            if p.retired.contains(&msg.incarnation) {
                return Err(Reject::Replay);
            }
            retired = p.retired.clone();
            if msg.incarnation != p.incarnation {
                retired.push(p.incarnation);
                if retired.len() > RETIRED_KEPT {
                    retired.remove(0);
                }
            }
        }
        self.peers.insert(
            msg.node.clone(),
            Peer {
                last_heard: now,
                incarnation: msg.incarnation,
                counter: msg.counter,
                retired,
                left: msg.kind == Kind::Leaving,
                macs: msg.macs.clone(),
            },
        );
        Ok(())
    }

    /// Every MAC a peer has told us it owns, and whose it is (to tell a node's ARP from a stranger's).
    pub fn node_macs(&self) -> BTreeMap<[u8; 6], String> {
        self.peers.iter().flat_map(|(name, p)| p.macs.iter().map(move |m| (*m, name.clone()))).collect()
    }

    /// A peer's verdict at `now`. This speaker is always alive to itself.
    pub fn verdict(&self, node: &str, now: Instant) -> Verdict {
        if node == self.me {
            return Verdict::Alive;
        }
        match self.peers.get(node) {
            None => Verdict::Unknown,
            Some(p) if p.left || now.saturating_duration_since(p.last_heard) > self.dead_after => Verdict::Dead,
            Some(_) => Verdict::Alive,
        }
    }

    /// How long a peer has been silent at `now` (for the detection-latency metric).
    pub fn silence(&self, node: &str, now: Instant) -> Option<Duration> {
        self.peers.get(node).map(|p| now.saturating_duration_since(p.last_heard))
    }

    /// Peers counted dead by silence although something else showed them alive after we last heard them:
    /// `signs_of_life` maps a node to the latest such sign (its ARP answering for an address, its kubelet
    /// renewing its Lease). That is a broken liveness channel, not a dead node (docs/design.md §5.6). Peers
    /// never heard, or that said they were leaving, are not counted: nothing says their speaker runs.
    pub fn unheard_but_alive(&self, signs_of_life: &BTreeMap<String, Instant>, now: Instant) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|(name, p)| {
                !p.left
                    && self.verdict(name, now) == Verdict::Dead
                    && signs_of_life.get(*name).is_some_and(|seen| *seen > p.last_heard)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every known peer's verdict at `now` (what changes trigger a re-election).
    pub fn verdicts(&self, now: Instant) -> BTreeMap<String, Verdict> {
        self.peers.keys().map(|n| (n.clone(), self.verdict(n, now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn alive(node: &str, counter: u64) -> Message {
        Message { kind: Kind::Alive, node: node.into(), incarnation: 1, counter, macs: vec![[2, 0, 0, 0, 0, 7]] }
    }

    #[test]
    fn round_trip_and_exact_bytes() {
        let bytes = encode(KEY, &alive("node-1", 7));
        assert_eq!(&bytes[..4], b"FLB2");
        assert_eq!(bytes.len(), 4 + 2 + 6 + 16 + 1 + 6 + 32);
        assert_eq!(decode(KEY, &bytes), Ok(alive("node-1", 7)));
    }

    #[test]
    fn forged_or_tampered_messages_are_rejected() {
        let bytes = encode(KEY, &alive("node-1", 7));
        assert_eq!(decode(b"another key", &bytes), Err(Reject::BadTag));
        let mut tampered = bytes.clone();
        tampered[4] = 2; // alive -> leaving, without the key
        assert_eq!(decode(KEY, &tampered), Err(Reject::BadTag));
        assert_eq!(decode(KEY, &bytes[..bytes.len() - 1]), Err(Reject::Malformed));
        assert_eq!(decode(KEY, b"hello"), Err(Reject::Malformed));
        let mut long_name = bytes.clone();
        long_name[5] = 200;
        assert_eq!(decode(KEY, &long_name), Err(Reject::Malformed));
    }

    #[test]
    fn silence_kills_leaving_kills_at_once_replays_do_not_revive() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Duration::from_millis(500));
        assert_eq!(m.verdict("peer", t0), Verdict::Unknown);
        assert_eq!(m.verdict("me", t0), Verdict::Alive);
        assert_eq!(m.accept(&alive("me", 1), t0), Err(Reject::FromSelf));
        m.accept(&alive("peer", 10), t0).expect("first");
        assert_eq!(m.verdict("peer", t0 + Duration::from_millis(500)), Verdict::Alive);
        assert_eq!(m.verdict("peer", t0 + Duration::from_millis(501)), Verdict::Dead);
        // A captured heartbeat replayed later does not bring a dead peer back.
        assert_eq!(m.accept(&alive("peer", 10), t0 + Duration::from_secs(1)), Err(Reject::Replay));
        assert_eq!(m.verdict("peer", t0 + Duration::from_secs(1)), Verdict::Dead);
        m.accept(&alive("peer", 11), t0 + Duration::from_secs(2)).expect("newer");
        assert_eq!(m.verdict("peer", t0 + Duration::from_secs(2)), Verdict::Alive);
        let leaving = Message { kind: Kind::Leaving, ..alive("peer", 12) };
        m.accept(&leaving, t0 + Duration::from_secs(2)).expect("leave");
        assert_eq!(m.verdict("peer", t0 + Duration::from_secs(2)), Verdict::Dead, "dead at once");
        assert_eq!(m.silence("peer", t0 + Duration::from_millis(2300)), Some(Duration::from_millis(300)));
        assert_eq!(m.silence("stranger", t0), None);
    }

    #[test]
    fn a_restart_is_a_new_incarnation_and_old_incarnations_stay_rejected() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Duration::from_millis(350));
        m.accept(&alive("peer", 500), t0).expect("first");
        // Restarted: the counter starts again from 1 in a new incarnation.
        let reborn = Message { incarnation: 2, ..alive("peer", 1) };
        m.accept(&reborn, t0 + Duration::from_millis(10)).expect("new incarnation");
        assert_eq!(m.accept(&alive("peer", 501), t0 + Duration::from_millis(20)), Err(Reject::Replay), "old one");
        assert_eq!(m.accept(&reborn, t0 + Duration::from_millis(30)), Err(Reject::Replay));
        m.accept(&Message { counter: 2, ..reborn.clone() }, t0 + Duration::from_millis(40)).expect("next");
        assert_eq!(m.node_macs().get(&[2, 0, 0, 0, 0, 7]).map(String::as_str), Some("peer"));
    }

    #[test]
    fn the_senders_wall_clock_is_not_on_the_wire() {
        // What a speaker sends is its incarnation and a counter; two messages built a minute apart by wall clock,
        // or with the clock stepped back between them, are the same bytes for the same counter.
        let a = encode(KEY, &alive("node-1", 41));
        let b = encode(KEY, &alive("node-1", 41));
        assert_eq!(a, b);
        let mut m = Membership::new("me", Duration::from_millis(350));
        let t0 = Instant::now();
        for counter in 1..=50 {
            m.accept(&alive("node-1", counter), t0 + Duration::from_millis(counter * 100)).expect("in order");
        }
        assert_eq!(m.verdict("node-1", t0 + Duration::from_millis(5100)), Verdict::Alive);
    }

    #[test]
    fn too_many_macs_or_a_short_mac_list_is_malformed() {
        let many = Message { macs: vec![[2, 0, 0, 0, 0, 1]; MAX_MACS + 3], ..alive("node-1", 1) };
        let decoded = decode(KEY, &encode(KEY, &many)).expect("capped on encode");
        assert_eq!(decoded.macs.len(), MAX_MACS);
        let mut bytes = encode(KEY, &alive("node-1", 1));
        let count_at = 6 + 6 + 16;
        bytes[count_at] = 2;
        assert_eq!(decode(KEY, &bytes), Err(Reject::Malformed));
        bytes[count_at] = 200;
        assert_eq!(decode(KEY, &bytes), Err(Reject::Malformed));
    }

    #[test]
    fn unheard_but_alive_needs_silence_and_a_later_sign_of_life() {
        let t0 = Instant::now();
        let mut m = Membership::new("me", Duration::from_millis(350));
        m.accept(&alive("quiet", 1), t0).expect("heard once");
        m.accept(&alive("chatty", 1), t0).expect("heard once");
        m.accept(&Message { kind: Kind::Leaving, ..alive("gone", 1) }, t0).expect("left");
        let later = t0 + Duration::from_secs(2);
        m.accept(&alive("chatty", 2), later).expect("still talking");
        let signs: BTreeMap<String, Instant> = ["quiet", "chatty", "gone", "never-heard"]
            .into_iter()
            .map(|n| (n.to_string(), t0 + Duration::from_secs(1)))
            .collect();
        assert_eq!(m.unheard_but_alive(&signs, later), BTreeSet::from(["quiet".to_string()]));
        // A sign from before the silence says nothing: a node that died after it looks the same.
        let stale = BTreeMap::from([("quiet".to_string(), t0)]);
        assert!(m.unheard_but_alive(&stale, later).is_empty());
    }
}
