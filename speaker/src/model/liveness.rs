//! The liveness datagram: what speakers say to each other over UDP, authenticated with the cluster key. Who says
//! what to whom, and what it means for a peer's verdict, is [`crate::model::membership`] (docs/design.md §5).
//!
//! Wire format `FLB3` (all integers big-endian): `FLB3` | kind (1 alive, 2 leaving, 3 hello, 4 suspect, 5 dead)
//! | name length | name | incarnation (u64, chosen once when the speaker starts) | counter (u64, +1 per message) |
//! MAC count (≤ 8) | MACs (6 bytes each: the sender's interfaces, so peers can tell a node's ARP from a
//! stranger's, docs/design.md §6.4) | for suspect and dead only: the subject's name length | name |
//! incarnation | counter (the last message of it the sender heard) | HMAC-SHA256 over all of that.
//!
//! `FLB2`, the format of the all-to-all design before it (alive and leaving only, no subject), is still read and,
//! while a peer sends it, written: a rolling upgrade keeps old and new speakers hearing each other (§5.7).
//! Forged messages (wrong tag) and replays (an incarnation already retired, or a counter not above the last
//! accepted) are rejected. No clock is on the wire: a sender whose wall clock steps back (NTP at boot, a migrated
//! VM) stays alive to its peers (§5.2).

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLB3";
const LEGACY_MAGIC: &[u8; 4] = b"FLB2";
const TAG: usize = 32;
/// At most this many MACs travel in one message.
pub const MAX_MACS: usize = 8;
/// Set in the incarnation of every speaker that reads `FLB3`, so the `FLB2` copies it sends while old speakers
/// run are told from an old speaker's own: an old speaker's incarnation (start time in ns since 1970 XOR its pid
/// shifted left 40) stays below 2^63 until the year 2262.
pub const READS_FLB3: u64 = 1 << 63;

/// A peer and the last message of it a watcher heard: what a suspicion or a death verdict is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    /// The peer's node name.
    pub node: String,
    /// Its incarnation as last heard (0: never heard).
    pub incarnation: u64,
    /// Its counter as last heard (0: never heard).
    pub counter: u64,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// "I am alive": a heartbeat to a watcher, an answer to `Hello`, or a refutation sent to everyone.
    Alive,
    /// "I am stopping: move my addresses now."
    Leaving,
    /// "I am alive, and tell me you are": sent to every speaker at start and to a peer believed dead.
    Hello,
    /// "I, a watcher of the subject, have not heard it for too long": sent to its other watchers and to it.
    Suspect(Subject),
    /// "The subject is dead": sent to every speaker once the subject's watchers agree.
    Dead(Subject),
}

/// A verified message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What it says.
    pub kind: Kind,
    /// Sender's node name.
    pub node: String,
    /// Chosen once per speaker start; a new one means the peer restarted.
    pub incarnation: u64,
    /// Strictly increasing within an incarnation.
    pub counter: u64,
    /// The sender's interface MACs (at most [`MAX_MACS`]).
    pub macs: Vec<[u8; 6]>,
    /// It came in the format of the speakers before this one (`FLB2`): from an old speaker, or a new speaker's copy
    /// for them ([`Message::from_old_speaker`] tells which).
    pub legacy: bool,
}

impl Message {
    /// Sent by a speaker that only knows `FLB2`, not by a new one writing `FLB2` for it (see [`READS_FLB3`]).
    pub fn from_old_speaker(&self) -> bool {
        self.legacy && self.incarnation & READS_FLB3 == 0
    }
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

fn push_name(out: &mut Vec<u8>, name: &str) {
    let name = name.as_bytes();
    let name = &name[..name.len().min(253)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

fn kind_code(kind: &Kind) -> u8 {
    match kind {
        Kind::Alive => 1,
        Kind::Leaving => 2,
        Kind::Hello => 3,
        Kind::Suspect(_) => 4,
        Kind::Dead(_) => 5,
    }
}

/// Builds an authenticated `FLB3` datagram.
pub fn encode(key: &[u8], msg: &Message) -> Vec<u8> {
    build(key, msg, MAGIC)
}

/// Builds an authenticated `FLB2` datagram, which speakers before `FLB3` read: only alive and leaving exist there
/// (anything else is sent as alive).
pub fn encode_legacy(key: &[u8], msg: &Message) -> Vec<u8> {
    let kind = if msg.kind == Kind::Leaving { Kind::Leaving } else { Kind::Alive };
    build(key, &Message { kind, ..msg.clone() }, LEGACY_MAGIC)
}

fn build(key: &[u8], msg: &Message, magic: &[u8; 4]) -> Vec<u8> {
    let macs = &msg.macs[..msg.macs.len().min(MAX_MACS)];
    let mut out = Vec::with_capacity(4 + 2 + msg.node.len() + 16 + 1 + 6 * macs.len() + 64 + TAG);
    out.extend_from_slice(magic);
    out.push(kind_code(&msg.kind));
    push_name(&mut out, &msg.node);
    out.extend_from_slice(&msg.incarnation.to_be_bytes());
    out.extend_from_slice(&msg.counter.to_be_bytes());
    out.push(macs.len() as u8);
    macs.iter().for_each(|m| out.extend_from_slice(m));
    if let Kind::Suspect(subject) | Kind::Dead(subject) = &msg.kind {
        push_name(&mut out, &subject.node);
        out.extend_from_slice(&subject.incarnation.to_be_bytes());
        out.extend_from_slice(&subject.counter.to_be_bytes());
    }
    let tag = mac_of(key, &out);
    out.extend_from_slice(&tag);
    out
}

/// Reads fields front to back; every read checks the length, so a short datagram is `Malformed`, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        let end = self.at.checked_add(n).ok_or(Reject::Malformed)?;
        let out = self.buf.get(self.at..end).ok_or(Reject::Malformed)?;
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Reject> {
        Ok(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Reject> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn name(&mut self) -> Result<String, Reject> {
        let len = usize::from(self.byte()?);
        std::str::from_utf8(self.bytes(len)?).map(str::to_string).map_err(|_| Reject::Malformed)
    }
}

/// Parses and verifies a datagram of either format (constant-time tag comparison).
pub fn decode(key: &[u8], buf: &[u8]) -> Result<Message, Reject> {
    if buf.len() < 4 + 2 + 16 + 1 + TAG {
        return Err(Reject::Malformed);
    }
    let legacy = match &buf[..4] {
        m if m == MAGIC => false,
        m if m == LEGACY_MAGIC => true,
        _ => return Err(Reject::Malformed),
    };
    let (body, tag) = buf.split_at(buf.len() - TAG);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Reject::BadTag)?;
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Reject::BadTag)?;
    let mut r = Reader { buf: body, at: 4 };
    let code = r.byte()?;
    let node = r.name()?;
    let (incarnation, counter) = (r.u64()?, r.u64()?);
    let mac_count = usize::from(r.byte()?);
    if mac_count > MAX_MACS {
        return Err(Reject::Malformed);
    }
    let macs = r
        .bytes(6 * mac_count)?
        .chunks_exact(6)
        .map(|c| {
            let mut m = [0u8; 6];
            m.copy_from_slice(c);
            m
        })
        .collect();
    let kind = match (code, legacy) {
        (1, _) => Kind::Alive,
        (2, _) => Kind::Leaving,
        (3, false) => Kind::Hello,
        (4 | 5, false) => {
            let subject = Subject { node: r.name()?, incarnation: r.u64()?, counter: r.u64()? };
            if code == 4 { Kind::Suspect(subject) } else { Kind::Dead(subject) }
        }
        _ => return Err(Reject::Malformed),
    };
    if r.at != body.len() {
        return Err(Reject::Malformed);
    }
    Ok(Message { kind, node, incarnation, counter, macs, legacy })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn alive(node: &str, counter: u64) -> Message {
        Message {
            kind: Kind::Alive,
            node: node.into(),
            incarnation: 1,
            counter,
            macs: vec![[2, 0, 0, 0, 0, 7]],
            legacy: false,
        }
    }

    #[test]
    fn round_trip_and_exact_bytes() {
        let bytes = encode(KEY, &alive("node-1", 7));
        assert_eq!(&bytes[..4], b"FLB3");
        assert_eq!(bytes.len(), 4 + 2 + 6 + 16 + 1 + 6 + 32);
        assert_eq!(decode(KEY, &bytes), Ok(alive("node-1", 7)));
        let dead = Message {
            kind: Kind::Dead(Subject { node: "node-2".into(), incarnation: 9, counter: 41 }),
            ..alive("node-1", 8)
        };
        let bytes = encode(KEY, &dead);
        assert_eq!(bytes.len(), 4 + 2 + 6 + 16 + 1 + 6 + 1 + 6 + 16 + 32);
        assert_eq!(decode(KEY, &bytes), Ok(dead.clone()));
        let suspect = Message { kind: Kind::Suspect(Subject { node: "n".into(), incarnation: 0, counter: 0 }), ..dead };
        assert_eq!(decode(KEY, &encode(KEY, &suspect)), Ok(suspect));
        let hello = Message { kind: Kind::Hello, macs: vec![], ..alive("node-1", 9) };
        assert_eq!(decode(KEY, &encode(KEY, &hello)), Ok(hello));
    }

    #[test]
    fn the_previous_format_is_read_and_written_for_rolling_upgrades() {
        // The exact bytes a speaker before FLB3 sent (its encoder, kept here as the fixture).
        let mut old = b"FLB2".to_vec();
        old.extend_from_slice(&[1, 6]);
        old.extend_from_slice(b"node-1");
        old.extend_from_slice(&1u64.to_be_bytes());
        old.extend_from_slice(&7u64.to_be_bytes());
        old.push(1);
        old.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
        let tag = mac_of(KEY, &old);
        old.extend_from_slice(&tag);
        let expected = Message { legacy: true, ..alive("node-1", 7) };
        assert_eq!(decode(KEY, &old), Ok(expected.clone()));
        assert_eq!(encode_legacy(KEY, &alive("node-1", 7)), old, "old speakers read what we write for them");
        let hello = Message { kind: Kind::Hello, ..alive("node-1", 7) };
        assert_eq!(encode_legacy(KEY, &hello), old, "a hello is an alive to an old speaker");
        let mut dead_in_old_format = encode(KEY, &Message { kind: Kind::Dead(Subject::default()), ..alive("n", 1) });
        dead_in_old_format[..4].copy_from_slice(b"FLB2");
        let body = dead_in_old_format.len() - TAG;
        let tag = mac_of(KEY, &dead_in_old_format[..body]);
        dead_in_old_format[body..].copy_from_slice(&tag);
        assert_eq!(decode(KEY, &dead_in_old_format), Err(Reject::Malformed), "FLB2 had no verdicts");
    }

    #[test]
    fn forged_or_tampered_messages_are_rejected() {
        let bytes = encode(KEY, &alive("node-1", 7));
        assert_eq!(decode(b"another key", &bytes), Err(Reject::BadTag));
        let mut tampered = bytes.clone();
        tampered[4] = 2; // alive -> leaving, without the key
        assert_eq!(decode(KEY, &tampered), Err(Reject::BadTag));
        assert_eq!(decode(KEY, &bytes[..bytes.len() - 1]), Err(Reject::BadTag));
        assert_eq!(decode(KEY, b"hello"), Err(Reject::Malformed));
        let mut other_magic = bytes.clone();
        other_magic[3] = b'9';
        assert_eq!(decode(KEY, &other_magic), Err(Reject::Malformed));
    }

    /// Lengths inside a datagram that verifies (the key holder made it) still cannot make the reader run past
    /// the end or leave bytes unread.
    #[test]
    fn inconsistent_lengths_are_malformed_even_with_a_valid_tag() {
        let resign = |mut body: Vec<u8>| {
            let tag = mac_of(KEY, &body);
            body.extend_from_slice(&tag);
            body
        };
        let good = encode(KEY, &alive("node-1", 1));
        let body = good[..good.len() - TAG].to_vec();
        let count_at = 6 + 6 + 16;
        for (at, value) in [(count_at, 2u8), (count_at, 200), (5, 200), (5, 0), (4, 9)] {
            let mut b = body.clone();
            b[at] = value;
            assert_eq!(decode(KEY, &resign(b)), Err(Reject::Malformed), "byte {at} = {value}");
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(decode(KEY, &resign(trailing)), Err(Reject::Malformed));
        let many = Message { macs: vec![[2, 0, 0, 0, 0, 1]; MAX_MACS + 3], ..alive("node-1", 1) };
        assert_eq!(decode(KEY, &encode(KEY, &many)).map(|m| m.macs.len()), Ok(MAX_MACS), "capped on encode");
    }

    #[test]
    fn the_senders_wall_clock_is_not_on_the_wire() {
        // What a speaker sends is its incarnation and a counter; two messages built a minute apart by wall clock,
        // or with the clock stepped back between them, are the same bytes for the same counter.
        assert_eq!(encode(KEY, &alive("node-1", 41)), encode(KEY, &alive("node-1", 41)));
    }
}
