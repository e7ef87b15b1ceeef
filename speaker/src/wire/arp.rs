//! ARP over Ethernet for IPv4, as a checked view over raw frames (in the manner of smoltcp's `wire/arp.rs`),
//! the pure decision whether and how to answer a frame, and the gratuitous frames sent on takeover.
//!
//! Nothing here touches a socket: [`respond`] takes the bytes a raw socket delivered and what this node owns,
//! and returns the reply's bytes or the reason to stay silent (a metric label).

use super::mac::Mac;
use std::net::Ipv4Addr;

/// Length of an Ethernet II header.
pub const ETHERNET_HEADER: usize = 14;
/// Length of an ARP payload for IPv4 over Ethernet.
pub const ARP_PAYLOAD: usize = 28;
/// Shortest frame we parse or build (without the padding to 60 bytes that NICs add).
pub const FRAME_LEN: usize = ETHERNET_HEADER + ARP_PAYLOAD;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Who has `tpa`?
    Request,
    /// `spa` is at `sha`.
    Reply,
}

/// A parsed Ethernet + ARP (IPv4 over Ethernet) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// Request or reply.
    pub operation: Operation,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Why a frame gets no answer. Each is a metric label, so the set is closed and the names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Shorter than an Ethernet + ARP frame.
    Truncated,
    /// Not ARP (another EtherType, or VLAN-tagged).
    NotArp,
    /// ARP, but not IPv4 over Ethernet (hardware/protocol type or lengths).
    Unsupported,
    /// An operation other than request or reply.
    BadOperation,
    /// A reply, or anything but a request.
    NotRequest,
    /// Sent by this interface (our own gratuitous ARP looping back).
    FromSelf,
    /// Unicast to another MAC.
    NotForUs,
    /// The sender hardware address is zero, broadcast or multicast: never a valid asker.
    BadSender,
    /// For an address this node does not announce.
    NotOwned,
    /// Another host announcing an address we own (sender IP = target IP = ours): a conflict, not a question.
    Conflict,
}

impl Drop {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::NotArp => "not_arp",
            Drop::Unsupported => "unsupported",
            Drop::BadOperation => "bad_operation",
            Drop::NotRequest => "not_request",
            Drop::FromSelf => "from_self",
            Drop::NotForUs => "not_for_us",
            Drop::BadSender => "bad_sender",
            Drop::NotOwned => "not_owned",
            Drop::Conflict => "conflict",
        }
    }
}

fn mac_at(buf: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[at..at + 6]);
    Mac(m)
}

fn ip_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

impl ArpFrame {
    /// Parses a frame; any length beyond [`FRAME_LEN`] (Ethernet padding, a trailer) is ignored.
    pub fn parse(buf: &[u8]) -> Result<Self, Drop> {
        if buf.len() < ETHERNET_HEADER {
            return Err(Drop::Truncated);
        }
        if u16::from_be_bytes([buf[12], buf[13]]) != ETHERTYPE_ARP {
            return Err(Drop::NotArp);
        }
        if buf.len() < FRAME_LEN {
            return Err(Drop::Truncated);
        }
        let arp = &buf[ETHERNET_HEADER..FRAME_LEN];
        let htype = u16::from_be_bytes([arp[0], arp[1]]);
        let ptype = u16::from_be_bytes([arp[2], arp[3]]);
        if htype != 1 || ptype != 0x0800 || arp[4] != 6 || arp[5] != 4 {
            return Err(Drop::Unsupported);
        }
        let operation = match u16::from_be_bytes([arp[6], arp[7]]) {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(Drop::BadOperation),
        };
        Ok(Self {
            eth_dst: mac_at(buf, 0),
            eth_src: mac_at(buf, 6),
            operation,
            sha: mac_at(arp, 8),
            spa: ip_at(arp, 14),
            tha: mac_at(arp, 18),
            tpa: ip_at(arp, 24),
        })
    }

    /// The frame's bytes (42, unpadded; the kernel pads to the Ethernet minimum).
    pub fn to_bytes(&self) -> [u8; FRAME_LEN] {
        let mut b = [0u8; FRAME_LEN];
        b[0..6].copy_from_slice(&self.eth_dst.0);
        b[6..12].copy_from_slice(&self.eth_src.0);
        b[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        b[14..16].copy_from_slice(&1u16.to_be_bytes());
        b[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        b[18] = 6;
        b[19] = 4;
        let op: u16 = match self.operation {
            Operation::Request => 1,
            Operation::Reply => 2,
        };
        b[20..22].copy_from_slice(&op.to_be_bytes());
        b[22..28].copy_from_slice(&self.sha.0);
        b[28..32].copy_from_slice(&self.spa.octets());
        b[32..38].copy_from_slice(&self.tha.0);
        b[38..42].copy_from_slice(&self.tpa.octets());
        b
    }
}

/// What [`respond`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back out of the interface the request came in on.
    Reply([u8; FRAME_LEN]),
    /// Stay silent, for this reason.
    Drop(Drop),
}

/// Whether and how to answer a frame received on an interface with MAC `our_mac`, given the addresses this
/// node announces on that interface. Answers requests (broadcast, or unicast to us: refresh probes and RFC
/// 5227 probes with sender 0.0.0.0 included) unicast to the asker, with our MAC.
pub fn respond(buf: &[u8], our_mac: Mac, owns: impl Fn(Ipv4Addr) -> bool) -> Decision {
    let frame = match ArpFrame::parse(buf) {
        Ok(f) => f,
        Err(reason) => return Decision::Drop(reason),
    };
    let drop = |reason| Decision::Drop(reason);
    if frame.operation != Operation::Request {
        return drop(Drop::NotRequest);
    }
    if frame.eth_src == our_mac || frame.sha == our_mac {
        return drop(Drop::FromSelf);
    }
    if frame.eth_dst != Mac::BROADCAST && frame.eth_dst != our_mac {
        return drop(Drop::NotForUs);
    }
    if frame.sha.is_group() || frame.sha == Mac::ZERO || frame.eth_src.is_group() {
        return drop(Drop::BadSender);
    }
    if !owns(frame.tpa) {
        return drop(Drop::NotOwned);
    }
    if frame.spa == frame.tpa {
        return drop(Drop::Conflict);
    }
    let reply = ArpFrame {
        eth_dst: frame.sha,
        eth_src: our_mac,
        operation: Operation::Reply,
        sha: our_mac,
        spa: frame.tpa,
        tha: frame.sha,
        tpa: frame.spa,
    };
    Decision::Reply(reply.to_bytes())
}

/// Gratuitous ARP, request form: "who has `ip`? tell `ip`" from `mac`, broadcast. Linux updates an existing
/// neighbour entry from it at once, even within `locktime` (docs/design.md §6.2).
pub fn gratuitous_request(mac: Mac, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: mac,
        operation: Operation::Request,
        sha: mac,
        spa: ip,
        tha: Mac::ZERO,
        tpa: ip,
    }
    .to_bytes()
}

/// Gratuitous ARP, reply form with THA = SHA: also accepted at once by Linux, unlike the THA = broadcast form
/// MetalLB and Cilium send, which is ignored within 1 s of the entry's last update.
pub fn gratuitous_reply(mac: Mac, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: mac,
        operation: Operation::Reply,
        sha: mac,
        spa: ip,
        tha: mac,
        tpa: ip,
    }
    .to_bytes()
}

/// The address and MAC a frame shows answering, when it is a claim by another host: any ARP (request, reply,
/// gratuitous) whose sender address is set and whose sender is not `our_mac`. RFC 5227 counts every such
/// frame for an address in use as a conflict; the probes of [`probe`] (sender 0.0.0.0) are not claims.
pub fn claim(buf: &[u8], our_mac: Mac) -> Option<(Ipv4Addr, Mac)> {
    let frame = ArpFrame::parse(buf).ok()?;
    if frame.spa.is_unspecified() || frame.sha == our_mac || frame.eth_src == our_mac {
        return None;
    }
    if frame.sha.is_group() || frame.sha == Mac::ZERO {
        return None;
    }
    Some((frame.spa, frame.sha))
}

/// An RFC 5227 probe: "who has `ip`?" from `mac` with sender address 0.0.0.0, broadcast. Whoever answers for
/// `ip` replies to `mac`; no neighbour cache learns anything from it.
pub fn probe(mac: Mac, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: mac,
        operation: Operation::Request,
        sha: mac,
        spa: Ipv4Addr::UNSPECIFIED,
        tha: Mac::ZERO,
        tpa: ip,
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
    const ASKER: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    /// A broadcast "who has 198.19.0.1? tell 198.18.0.1" from 52:54:00:12:34:56, byte by byte.
    const REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // eth src
        0x08, 0x06, // EtherType ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet, IPv4, 6, 4
        0x00, 0x01, // request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // sha
        198, 18, 0, 1, // spa
        0, 0, 0, 0, 0, 0, // tha
        198, 19, 0, 1, // tpa
    ];

    /// The answer we must send: unicast to the asker, "198.19.0.1 is at 02:00:00:00:00:01".
    const REPLY: [u8; 42] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // eth dst: the asker
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // eth src: us
        0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, //
        0x00, 0x02, // reply
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // sha: us
        198, 19, 0, 1, // spa: the VIP
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // tha: the asker
        198, 18, 0, 1, // tpa: the asker's address
    ];

    fn owns_vip(ip: Ipv4Addr) -> bool {
        ip == VIP
    }

    #[test]
    fn golden_request_gets_golden_reply() {
        assert_eq!(respond(&REQUEST, OURS, owns_vip), Decision::Reply(REPLY));
        let parsed = ArpFrame::parse(&REQUEST).expect("parses");
        assert_eq!((parsed.sha, parsed.spa, parsed.tpa), (ASKER, HOST, VIP));
        assert_eq!(parsed.to_bytes(), REQUEST, "round trip");
    }

    #[test]
    fn padded_frames_parse_like_unpadded() {
        let mut padded = REQUEST.to_vec();
        padded.resize(60, 0);
        assert_eq!(respond(&padded, OURS, owns_vip), Decision::Reply(REPLY));
    }

    #[test]
    fn unicast_refresh_to_us_is_answered_and_to_others_is_not() {
        let mut unicast = REQUEST;
        unicast[0..6].copy_from_slice(&OURS.0);
        assert_eq!(respond(&unicast, OURS, owns_vip), Decision::Reply(REPLY));
        unicast[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
        assert_eq!(respond(&unicast, OURS, owns_vip), Decision::Drop(Drop::NotForUs));
    }

    #[test]
    fn rfc5227_probe_from_zero_address_is_answered_to_defend() {
        let mut probe = REQUEST;
        probe[28..32].copy_from_slice(&[0, 0, 0, 0]);
        let Decision::Reply(reply) = respond(&probe, OURS, owns_vip) else {
            panic!("a probe for our address is answered")
        };
        let reply = ArpFrame::parse(&reply).expect("reply parses");
        assert_eq!((reply.tpa, reply.tha, reply.eth_dst), (Ipv4Addr::UNSPECIFIED, ASKER, ASKER));
    }

    #[test]
    fn every_drop_reason() {
        let with = |f: &dyn Fn(&mut [u8; 42])| {
            let mut b = REQUEST;
            f(&mut b);
            respond(&b, OURS, owns_vip)
        };
        assert_eq!(respond(&REQUEST[..13], OURS, owns_vip), Decision::Drop(Drop::Truncated));
        assert_eq!(respond(&REQUEST[..41], OURS, owns_vip), Decision::Drop(Drop::Truncated));
        assert_eq!(with(&|b| b[12..14].copy_from_slice(&[0x08, 0x00])), Decision::Drop(Drop::NotArp));
        assert_eq!(with(&|b| b[12..14].copy_from_slice(&[0x81, 0x00])), Decision::Drop(Drop::NotArp), "VLAN tag");
        assert_eq!(with(&|b| b[15] = 6), Decision::Drop(Drop::Unsupported), "hardware type 6");
        assert_eq!(with(&|b| b[18] = 8), Decision::Drop(Drop::Unsupported), "hlen 8");
        assert_eq!(with(&|b| b[21] = 3), Decision::Drop(Drop::BadOperation));
        assert_eq!(with(&|b| b[21] = 2), Decision::Drop(Drop::NotRequest));
        assert_eq!(with(&|b| b[6..12].copy_from_slice(&OURS.0)), Decision::Drop(Drop::FromSelf));
        assert_eq!(with(&|b| b[22..28].copy_from_slice(&[0xff; 6])), Decision::Drop(Drop::BadSender));
        assert_eq!(with(&|b| b[22..28].copy_from_slice(&[0; 6])), Decision::Drop(Drop::BadSender));
        assert_eq!(with(&|b| b[22] = 0x01), Decision::Drop(Drop::BadSender), "multicast sender");
        assert_eq!(with(&|b| b[41] = 2), Decision::Drop(Drop::NotOwned));
        assert_eq!(with(&|b| b[28..32].copy_from_slice(&[198, 19, 0, 1])), Decision::Drop(Drop::Conflict));
    }

    #[test]
    fn gratuitous_frames_byte_for_byte() {
        let request = gratuitous_request(OURS, VIP);
        let expect_request: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1, //
            0x02, 0, 0, 0, 0, 0x01, 198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 198, 19, 0, 1,
        ];
        assert_eq!(request, expect_request);
        let reply = gratuitous_reply(OURS, VIP);
        let expect_reply: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2, //
            0x02, 0, 0, 0, 0, 0x01, 198, 19, 0, 1, 0x02, 0, 0, 0, 0, 0x01, 198, 19, 0, 1,
        ];
        assert_eq!(reply, expect_reply, "reply form carries THA = SHA");
        // Our own gratuitous frames, looped back to us, are never answered.
        assert_eq!(respond(&request, OURS, owns_vip), Decision::Drop(Drop::FromSelf));
        assert_eq!(respond(&reply, OURS, owns_vip), Decision::Drop(Drop::NotRequest));
    }

    #[test]
    fn drop_labels_are_distinct() {
        let all = [
            Drop::Truncated,
            Drop::NotArp,
            Drop::Unsupported,
            Drop::BadOperation,
            Drop::NotRequest,
            Drop::FromSelf,
            Drop::NotForUs,
            Drop::BadSender,
            Drop::NotOwned,
            Drop::Conflict,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(Drop::label).collect();
        assert_eq!(labels.len(), all.len());
    }

    #[test]
    fn claims_are_frames_sent_from_an_address_by_another_mac() {
        let ours = Mac([2, 0, 0, 0, 0, 1]);
        let theirs = Mac([2, 0, 0, 0, 0, 2]);
        let vip = Ipv4Addr::new(198, 19, 0, 1);
        assert_eq!(claim(&gratuitous_request(theirs, vip), ours), Some((vip, theirs)));
        assert_eq!(claim(&gratuitous_reply(theirs, vip), ours), Some((vip, theirs)));
        assert_eq!(claim(&gratuitous_reply(ours, vip), ours), None, "our own, looped back");
        assert_eq!(claim(&probe(theirs, vip), ours), None, "a probe claims nothing");
        // Our answer to their probe is a claim seen from their side.
        let Decision::Reply(answer) = respond(&probe(theirs, vip), ours, |ip| ip == vip) else {
            panic!("a probe for an owned address is answered")
        };
        assert_eq!(claim(&answer, theirs), Some((vip, ours)));
        assert_eq!(claim(&answer[..20], theirs), None, "truncated");
        let golden: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0,
            2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 198, 19, 0, 1,
        ];
        assert_eq!(probe(theirs, vip), golden);
    }
}
