//! Liveness between speakers: every speaker sends an authenticated heartbeat to every other speaker every
//! `interval` over UDP; a peer unheard for `dead_after` is dead, and a speaker that stops cleanly says "leaving"
//! so its addresses move at once. A peer never heard from falls back to its Node's `Ready` condition.
//!
//! Why not SWIM (the `foca` crate, evaluated): SWIM probes one random member per period and spreads verdicts
//! by gossip, which scales to thousands of nodes but makes detection time a distribution and leaves speakers
//! briefly disagreeing. Direct all-to-all heartbeats give every speaker the same first-hand verdict within one
//! bound (`dead_after`), which is what one-owner-per-address needs, at n² small packets: 10/s per pair, fine for
//! the tens of nodes L2 segments hold. Past ~100 nodes, SWIM is the way to go.
//!
//! Wire format (all integers big-endian): `FLB1` | kind (1 alive, 2 leaving) | name length | name | sequence
//! (u64, the sender's clock in ns, so a restarted speaker continues upward) | HMAC-SHA256 over all of that.
//! Forged or replayed messages (wrong tag, sequence not above the last accepted) are rejected.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"FLB1";
const TAG: usize = 32;

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
    /// Strictly increasing per sender.
    pub sequence: u64,
}

/// Why a datagram was not accepted (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reject {
    /// Not our format.
    Malformed,
    /// The tag does not verify: wrong key or tampered.
    BadTag,
    /// Sequence not above the last one accepted from that node: a replay or a reordering.
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
    let mut out = Vec::with_capacity(4 + 2 + name.len() + 8 + TAG);
    out.extend_from_slice(MAGIC);
    out.push(match msg.kind {
        Kind::Alive => 1,
        Kind::Leaving => 2,
    });
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&msg.sequence.to_be_bytes());
    let tag = mac_of(key, &out);
    out.extend_from_slice(&tag);
    out
}

/// Parses and verifies a datagram (constant-time tag comparison).
pub fn decode(key: &[u8], buf: &[u8]) -> Result<Message, Reject> {
    if buf.len() < 4 + 2 + 8 + TAG || &buf[..4] != MAGIC {
        return Err(Reject::Malformed);
    }
    let name_len = usize::from(buf[5]);
    let body_len = 6 + name_len + 8;
    if buf.len() != body_len + TAG {
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
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&body[6 + name_len..]);
    Ok(Message { kind, node, sequence: u64::from_be_bytes(seq) })
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

#[derive(Debug, Clone, Copy)]
struct Peer {
    last_heard: Instant,
    sequence: u64,
    left: bool,
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

    /// Takes in a verified message received at `now`.
    pub fn accept(&mut self, msg: &Message, now: Instant) -> Result<(), Reject> {
        if msg.node == self.me {
            return Err(Reject::FromSelf);
        }
        if let Some(p) = self.peers.get(&msg.node)
            && msg.sequence <= p.sequence
        {
            return Err(Reject::Replay);
        }
        self.peers.insert(
            msg.node.clone(),
            Peer { last_heard: now, sequence: msg.sequence, left: msg.kind == Kind::Leaving },
        );
        Ok(())
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

    /// Every known peer's verdict at `now` (what changes trigger a re-election).
    pub fn verdicts(&self, now: Instant) -> BTreeMap<String, Verdict> {
        self.peers.keys().map(|n| (n.clone(), self.verdict(n, now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn alive(node: &str, sequence: u64) -> Message {
        Message { kind: Kind::Alive, node: node.into(), sequence }
    }

    #[test]
    fn round_trip_and_exact_bytes() {
        let bytes = encode(KEY, &alive("node-1", 7));
        assert_eq!(&bytes[..4], b"FLB1");
        assert_eq!(bytes.len(), 4 + 2 + 6 + 8 + 32);
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
        let leaving = Message { kind: Kind::Leaving, node: "peer".into(), sequence: 12 };
        m.accept(&leaving, t0 + Duration::from_secs(2)).expect("leave");
        assert_eq!(m.verdict("peer", t0 + Duration::from_secs(2)), Verdict::Dead, "dead at once");
        assert_eq!(m.silence("peer", t0 + Duration::from_millis(2300)), Some(Duration::from_millis(300)));
        assert_eq!(m.silence("stranger", t0), None);
    }
}
