//! IPv6 neighbour discovery (RFC 4861) over Ethernet, the IPv6 counterpart of [`arp`](crate::wire::arp): a checked
//! view of Neighbor Solicitations and Advertisements, the pure decision whether and how to answer one, the
//! unsolicited advertisement sent on takeover and the duplicate-address probe (RFC 4862) sent before answering.
//!
//! Like the ARP view, this is written over byte slices rather than with pnet's packet types: the checks RFC
//! 4861 §7.1 asks for (hop limit 255, checksum, code, option lengths, the DAD rules) are the point, and each
//! failure must come out as a metric label, which pnet's unchecked accessors do not give. Only frames whose IPv6
//! header is followed directly by ICMPv6 are parsed; NDP messages carry no extension headers in practice, and
//! one that does is dropped as `unsupported`.

use crate::wire::Mac;
use std::net::Ipv6Addr;

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// Ethernet header length.
const ETHERNET: usize = 14;
/// IPv6 fixed header length.
const IPV6: usize = 40;
/// Next-header value of ICMPv6.
const NEXT_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbor Solicitation.
const TYPE_NS: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
const TYPE_NA: u8 = 136;
/// ICMPv6 header + reserved/flags + target: the fixed part of both NS and NA.
const NDP_FIXED: usize = 24;
/// Option type: source link-layer address.
const OPT_SOURCE_LL: u8 = 1;
/// Option type: target link-layer address.
const OPT_TARGET_LL: u8 = 2;
/// Every NDP message is sent, and must be received, with this hop limit: proof it was not routed.
const HOP_LIMIT: u8 = 255;
/// Length of the frames built here: Ethernet + IPv6 + NS/NA + one 8-byte link-layer option.
pub const FRAME_LEN: usize = ETHERNET + IPV6 + NDP_FIXED + 8;
/// Length of a DAD probe: no option (RFC 4862 §5.4.2 forbids a source link-layer option from `::`).
pub const PROBE_LEN: usize = ETHERNET + IPV6 + NDP_FIXED;
/// All-nodes multicast, where unsolicited advertisements and answers to DAD probes go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// NA flag: the advertisement answers a solicitation.
const FLAG_SOLICITED: u8 = 0x40;
/// NA flag: the receiver should replace a cached link-layer address.
const FLAG_OVERRIDE: u8 = 0x20;

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX), where solicitations for it are sent.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last four bytes, RFC 2464 §7).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Why a frame is not answered (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than its headers say.
    Truncated,
    /// Not an IPv6 frame.
    NotIpv6,
    /// IPv6 with an extension header, or not IPv6 version 6.
    Unsupported,
    /// IPv6 but not ICMPv6.
    NotIcmpv6,
    /// ICMPv6 but not a Neighbor Solicitation or Advertisement.
    NotNdp,
    /// Hop limit other than 255: routed, so not from this link.
    BadHopLimit,
    /// ICMPv6 checksum does not match.
    BadChecksum,
    /// Code other than 0, an option of length 0, or too short for its type.
    Malformed,
    /// The target is a multicast address.
    MulticastTarget,
    /// A DAD probe (source `::`) not sent to the solicited-node group, or with a source link-layer option.
    BadProbe,
    /// An advertisement, not a solicitation.
    NotSolicitation,
    /// Sent by this node.
    FromSelf,
    /// Addressed to another host's MAC.
    NotForUs,
    /// Sender MAC is multicast or zero.
    BadSender,
    /// For an address this node does not announce.
    NotOwned,
    /// The sender uses the target address itself: someone else claims it.
    Conflict,
}

impl Drop {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::NotIpv6 => "not_ipv6",
            Drop::Unsupported => "unsupported",
            Drop::NotIcmpv6 => "not_icmpv6",
            Drop::NotNdp => "not_ndp",
            Drop::BadHopLimit => "bad_hop_limit",
            Drop::BadChecksum => "bad_checksum",
            Drop::Malformed => "malformed",
            Drop::MulticastTarget => "multicast_target",
            Drop::BadProbe => "bad_probe",
            Drop::NotSolicitation => "not_solicitation",
            Drop::FromSelf => "from_self",
            Drop::NotForUs => "not_for_us",
            Drop::BadSender => "bad_sender",
            Drop::NotOwned => "not_owned",
            Drop::Conflict => "conflict",
        }
    }
}

/// Which NDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Neighbor Solicitation: "who has `target`?".
    Solicitation,
    /// Neighbor Advertisement: "`target` is at this MAC", with its flags.
    Advertisement {
        /// The Solicited flag.
        solicited: bool,
        /// The Override flag.
        override_: bool,
    },
}

/// A parsed, validated NS or NA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdpFrame {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// IPv6 source (`::` for a DAD probe).
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// Solicitation or advertisement.
    pub kind: Kind,
    /// The address asked or told about.
    pub target: Ipv6Addr,
    /// The link-layer address option (source's in an NS, target's in an NA), if present.
    pub link_layer: Option<Mac>,
}

fn ipv6_at(buf: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&buf[at..at + 16]);
    Ipv6Addr::from(o)
}

fn mac_at(buf: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[at..at + 6]);
    Mac(m)
}

/// The ICMPv6 checksum of `message` (its checksum field taken as zero) between `src` and `dst` (RFC 4443 §2.3:
/// one's complement sum over the pseudo-header and the message).
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum = sum.wrapping_add(u32::from(word));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    add(&length.to_be_bytes());
    add(&[0, 0, 0, NEXT_ICMPV6]);
    // The checksum field itself (bytes 2..4) counts as zero.
    add(&message[..2.min(message.len())]);
    if message.len() > 4 {
        add(&message[4..]);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl NdpFrame {
    /// Parses and validates a frame as RFC 4861 §7.1 asks (hop limit, checksum, code, lengths, options, DAD
    /// form); anything after the IPv6 payload length (Ethernet padding) is ignored.
    pub fn parse(buf: &[u8]) -> Result<Self, Drop> {
        if buf.len() < ETHERNET {
            return Err(Drop::Truncated);
        }
        if u16::from_be_bytes([buf[12], buf[13]]) != ETHERTYPE_IPV6 {
            return Err(Drop::NotIpv6);
        }
        if buf.len() < ETHERNET + IPV6 {
            return Err(Drop::Truncated);
        }
        let ip = &buf[ETHERNET..];
        if ip[0] >> 4 != 6 {
            return Err(Drop::Unsupported);
        }
        match ip[6] {
            NEXT_ICMPV6 => {}
            // Hop-by-hop, routing, fragment, destination options: not parsed (see the module comment).
            0 | 43 | 44 | 60 => return Err(Drop::Unsupported),
            _ => return Err(Drop::NotIcmpv6),
        }
        let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let message = ip.get(IPV6..IPV6 + payload).ok_or(Drop::Truncated)?;
        let kind = match message.first() {
            Some(&TYPE_NS) => TYPE_NS,
            Some(&TYPE_NA) => TYPE_NA,
            Some(_) => return Err(Drop::NotNdp),
            None => return Err(Drop::Truncated),
        };
        let (src, dst) = (ipv6_at(ip, 8), ipv6_at(ip, 24));
        if ip[7] != HOP_LIMIT {
            return Err(Drop::BadHopLimit);
        }
        if message.len() < NDP_FIXED {
            return Err(Drop::Malformed);
        }
        if u16::from_be_bytes([message[2], message[3]]) != checksum(src, dst, message) {
            return Err(Drop::BadChecksum);
        }
        if message[1] != 0 {
            return Err(Drop::Malformed);
        }
        // No IPv6 packet may come from a multicast address (RFC 4291 §2.7); answering one would send a solicited
        // advertisement to a group.
        if src.is_multicast() {
            return Err(Drop::Malformed);
        }
        let target = ipv6_at(message, 8);
        if target.is_multicast() {
            return Err(Drop::MulticastTarget);
        }
        let wanted_option = if kind == TYPE_NS { OPT_SOURCE_LL } else { OPT_TARGET_LL };
        let mut link_layer = None;
        let mut options = &message[NDP_FIXED..];
        while !options.is_empty() {
            let length = usize::from(*options.get(1).ok_or(Drop::Malformed)?) * 8;
            if length == 0 || length > options.len() {
                return Err(Drop::Malformed);
            }
            if options[0] == wanted_option && length == 8 {
                link_layer = Some(mac_at(options, 2));
            }
            options = &options[length..];
        }
        let kind = if kind == TYPE_NS {
            if src.is_unspecified() && (dst != solicited_node(target) || link_layer.is_some()) {
                return Err(Drop::BadProbe);
            }
            Kind::Solicitation
        } else {
            let flags = message[4];
            // An advertisement to a multicast group cannot answer a solicitation (RFC 4861 §7.1.2).
            if dst.is_multicast() && flags & FLAG_SOLICITED != 0 {
                return Err(Drop::Malformed);
            }
            Kind::Advertisement { solicited: flags & FLAG_SOLICITED != 0, override_: flags & FLAG_OVERRIDE != 0 }
        };
        Ok(Self { eth_dst: mac_at(buf, 0), eth_src: mac_at(buf, 6), src, dst, kind, target, link_layer })
    }

    /// The frame's bytes, checksum computed: with a link-layer option when `link_layer` is set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let option_len = if self.link_layer.is_some() { 8 } else { 0 };
        let payload = NDP_FIXED + option_len;
        let mut b = vec![0u8; ETHERNET + IPV6 + payload];
        b[0..6].copy_from_slice(&self.eth_dst.0);
        b[6..12].copy_from_slice(&self.eth_src.0);
        b[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let ip = &mut b[ETHERNET..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&u16::try_from(payload).unwrap_or(0).to_be_bytes());
        ip[6] = NEXT_ICMPV6;
        ip[7] = HOP_LIMIT;
        ip[8..24].copy_from_slice(&self.src.octets());
        ip[24..40].copy_from_slice(&self.dst.octets());
        let m = &mut ip[IPV6..];
        let option_type = match self.kind {
            Kind::Solicitation => {
                m[0] = TYPE_NS;
                OPT_SOURCE_LL
            }
            Kind::Advertisement { solicited, override_ } => {
                m[0] = TYPE_NA;
                m[4] = (if solicited { FLAG_SOLICITED } else { 0 }) | (if override_ { FLAG_OVERRIDE } else { 0 });
                OPT_TARGET_LL
            }
        };
        m[8..24].copy_from_slice(&self.target.octets());
        if let Some(mac) = self.link_layer {
            m[24] = option_type;
            m[25] = 1;
            m[26..32].copy_from_slice(&mac.0);
        }
        let sum = checksum(self.src, self.dst, m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

/// What [`respond`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes out of the interface the solicitation came in on.
    Reply(Vec<u8>),
    /// Stay silent, for this reason.
    Drop(Drop),
}

/// Whether and how to answer a frame received on an interface with MAC `our_mac`, given the addresses this
/// node announces there. A solicitation for an owned address gets a solicited advertisement with the Override
/// flag, unicast to the asker (RFC 4861 §7.2.4); a DAD probe for it (source `::`) is defended with an
/// advertisement to all-nodes, Solicited flag clear, so the prober sees the address is taken.
pub fn respond(buf: &[u8], our_mac: Mac, owns: impl Fn(Ipv6Addr) -> bool) -> Decision {
    let frame = match NdpFrame::parse(buf) {
        Ok(f) => f,
        Err(reason) => return Decision::Drop(reason),
    };
    if frame.kind != Kind::Solicitation {
        return Decision::Drop(Drop::NotSolicitation);
    }
    if frame.eth_src == our_mac || frame.link_layer == Some(our_mac) {
        return Decision::Drop(Drop::FromSelf);
    }
    if frame.eth_dst != our_mac && frame.eth_dst != multicast_mac(solicited_node(frame.target)) {
        return Decision::Drop(Drop::NotForUs);
    }
    if frame.eth_src.is_group() || frame.eth_src == Mac::ZERO || frame.link_layer.is_some_and(|m| m.is_group()) {
        return Decision::Drop(Drop::BadSender);
    }
    if !owns(frame.target) {
        return Decision::Drop(Drop::NotOwned);
    }
    if frame.src == frame.target {
        return Decision::Drop(Drop::Conflict);
    }
    let reply = if frame.src.is_unspecified() {
        NdpFrame {
            eth_dst: multicast_mac(ALL_NODES),
            eth_src: our_mac,
            src: frame.target,
            dst: ALL_NODES,
            kind: Kind::Advertisement { solicited: false, override_: true },
            target: frame.target,
            link_layer: Some(our_mac),
        }
    } else {
        NdpFrame {
            eth_dst: frame.link_layer.unwrap_or(frame.eth_src),
            eth_src: our_mac,
            src: frame.target,
            dst: frame.src,
            kind: Kind::Advertisement { solicited: true, override_: true },
            target: frame.target,
            link_layer: Some(our_mac),
        }
    };
    Decision::Reply(reply.to_bytes())
}

/// The unsolicited advertisement sent on takeover (the IPv6 counterpart of gratuitous ARP, RFC 4861 §7.2.6):
/// to all-nodes, Override set, so every neighbour cache holding `ip` switches to `mac` at once.
pub fn unsolicited_advertisement(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    NdpFrame {
        eth_dst: multicast_mac(ALL_NODES),
        eth_src: mac,
        src: ip,
        dst: ALL_NODES,
        kind: Kind::Advertisement { solicited: false, override_: true },
        target: ip,
        link_layer: Some(mac),
    }
    .to_bytes()
}

/// A duplicate-address probe (RFC 4862 §5.4.2): a solicitation for `ip` from `::` to its solicited-node
/// group, without link-layer option. Whoever answers for `ip` defends it with an advertisement to all-nodes;
/// no neighbour cache learns anything from the probe.
pub fn probe(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(ip);
    NdpFrame {
        eth_dst: multicast_mac(group),
        eth_src: mac,
        src: Ipv6Addr::UNSPECIFIED,
        dst: group,
        kind: Kind::Solicitation,
        target: ip,
        link_layer: None,
    }
    .to_bytes()
}

/// The address and MAC a frame shows in use by another host: an advertisement for it (the target link-layer
/// option, else the Ethernet source) or a solicitation sent from it. DAD probes (source `::`) are not claims.
pub fn claim(buf: &[u8], our_mac: Mac) -> Option<(Ipv6Addr, Mac)> {
    let frame = NdpFrame::parse(buf).ok()?;
    let (ip, mac) = match frame.kind {
        Kind::Advertisement { .. } => (frame.target, frame.link_layer.unwrap_or(frame.eth_src)),
        Kind::Solicitation if !frame.src.is_unspecified() && !frame.src.is_unicast_link_local() => {
            (frame.src, frame.link_layer.unwrap_or(frame.eth_src))
        }
        Kind::Solicitation => return None,
    };
    if mac == our_mac || frame.eth_src == our_mac || mac.is_group() || mac == Mac::ZERO {
        return None;
    }
    Some((ip, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
    const ASKER: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10);
    const HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    fn solicitation(src: Ipv6Addr, target: Ipv6Addr, link_layer: Option<Mac>) -> Vec<u8> {
        let dst = solicited_node(target);
        NdpFrame { eth_dst: multicast_mac(dst), eth_src: ASKER, src, dst, kind: Kind::Solicitation, target, link_layer }
            .to_bytes()
    }

    fn owns_vip(ip: Ipv6Addr) -> bool {
        ip == VIP
    }

    #[test]
    fn a_solicitation_from_a_multicast_source_is_not_answered() {
        // Found by the property test: answering it would send a solicited advertisement to a group.
        let from_group = solicitation(ALL_NODES, VIP, Some(ASKER));
        assert_eq!(respond(&from_group, OURS, owns_vip), Decision::Drop(Drop::Malformed));
        assert_eq!(claim(&from_group, OURS), None);
    }

    #[test]
    fn solicited_node_group_and_its_mac() {
        assert_eq!(solicited_node(VIP), "ff02::1:ff00:10".parse::<Ipv6Addr>().expect("literal"));
        assert_eq!(multicast_mac(solicited_node(VIP)), Mac([0x33, 0x33, 0xff, 0, 0, 0x10]));
        assert_eq!(multicast_mac(ALL_NODES), Mac([0x33, 0x33, 0, 0, 0, 1]));
    }

    /// A Neighbor Solicitation in the layout Linux sends; its checksum (0x974e) was computed by a separate
    /// implementation (Python, RFC 4443 pseudo-header sum), not by [`checksum`].
    #[test]
    fn golden_solicitation_and_answer() {
        let ns = solicitation(HOST, VIP, Some(ASKER));
        let expected: Vec<u8> = [
            // Ethernet: 33:33:ff:00:00:10 <- 52:54:00:12:34:56, IPv6
            &[0x33, 0x33, 0xff, 0, 0, 0x10, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x86, 0xdd][..],
            // IPv6: version 6, payload 32, next header 58, hop limit 255
            &[0x60, 0, 0, 0, 0, 32, 58, 255],
            &HOST.octets(),
            &solicited_node(VIP).octets(),
            // ICMPv6 NS, code 0, checksum, reserved
            &[135, 0, 0x97, 0x4e, 0, 0, 0, 0],
            &VIP.octets(),
            // source link-layer address option
            &[1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
        ]
        .concat();
        assert_eq!(ns, expected);
        let Decision::Reply(na) = respond(&ns, OURS, owns_vip) else { panic!("an owned address is answered") };
        let parsed = NdpFrame::parse(&na).expect("our answer validates");
        assert_eq!(parsed.eth_dst, ASKER);
        assert_eq!(parsed.eth_src, OURS);
        assert_eq!((parsed.src, parsed.dst, parsed.target), (VIP, HOST, VIP));
        assert_eq!(parsed.kind, Kind::Advertisement { solicited: true, override_: true });
        assert_eq!(parsed.link_layer, Some(OURS));
        assert_eq!(na.len(), FRAME_LEN);
    }

    #[test]
    fn checksum_matches_the_rfc_1071_example_folding() {
        // Independent check: sum the pseudo-header and message by hand for a tiny message.
        let src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let dst = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
        let message = [TYPE_NS, 0, 0, 0, 0xff, 0xff];
        // Words: fe80 0001 fe80 0002 (src/dst), 0000 0006 (length), 0000 003a (next header), 8700 ffff.
        let sum: u32 = 0xfe80 + 1 + 0xfe80 + 2 + 6 + 0x3a + 0x8700 + 0xffff;
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(checksum(src, dst, &message), !(folded as u16));
    }

    #[test]
    fn dad_probe_is_defended_to_all_nodes_without_solicited_flag() {
        let probe = probe(ASKER, VIP);
        assert_eq!(probe.len(), PROBE_LEN);
        let Decision::Reply(na) = respond(&probe, OURS, owns_vip) else { panic!("a probe for ours is defended") };
        let parsed = NdpFrame::parse(&na).expect("valid");
        assert_eq!((parsed.eth_dst, parsed.dst), (multicast_mac(ALL_NODES), ALL_NODES));
        assert_eq!(parsed.kind, Kind::Advertisement { solicited: false, override_: true });
        // And the answer to our own probe is a claim by its sender, which is how a prober learns it is taken.
        assert_eq!(claim(&na, ASKER), Some((VIP, OURS)));
        assert_eq!(claim(&probe, OURS), None, "a probe claims nothing");
    }

    #[test]
    fn unsolicited_advertisement_overrides_caches() {
        let na = unsolicited_advertisement(OURS, VIP);
        let parsed = NdpFrame::parse(&na).expect("valid");
        assert_eq!(parsed.kind, Kind::Advertisement { solicited: false, override_: true });
        assert_eq!((parsed.dst, parsed.target, parsed.link_layer), (ALL_NODES, VIP, Some(OURS)));
        assert_eq!(claim(&na, ASKER), Some((VIP, OURS)));
        assert_eq!(claim(&na, OURS), None, "our own frames are not claims");
    }

    #[test]
    fn drops_say_why() {
        let ns = solicitation(HOST, VIP, Some(ASKER));
        let check = |frame: &[u8]| match respond(frame, OURS, owns_vip) {
            Decision::Drop(d) => d,
            Decision::Reply(_) => panic!("answered"),
        };
        assert_eq!(check(&ns[..10]), Drop::Truncated);
        assert_eq!(check(&ns[..60]), Drop::Truncated);
        let mut routed = ns.clone();
        routed[ETHERNET + 7] = 64;
        assert_eq!(check(&routed), Drop::BadHopLimit);
        let mut corrupt = ns.clone();
        corrupt[ETHERNET + IPV6 + 10] ^= 1;
        assert_eq!(check(&corrupt), Drop::BadChecksum);
        let mut arp = ns.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(check(&arp), Drop::NotIpv6);
        let mut udp = ns.clone();
        udp[ETHERNET + 6] = 17;
        assert_eq!(check(&udp), Drop::NotIcmpv6);
        let mut hop_by_hop = ns.clone();
        hop_by_hop[ETHERNET + 6] = 0;
        assert_eq!(check(&hop_by_hop), Drop::Unsupported);
        assert_eq!(check(&solicitation(HOST, HOST, Some(ASKER))), Drop::NotOwned);
        assert_eq!(check(&solicitation(VIP, VIP, Some(ASKER))), Drop::Conflict);
        assert_eq!(check(&unsolicited_advertisement(ASKER, VIP)), Drop::NotSolicitation);
        assert_eq!(check(&probe(OURS, VIP)), Drop::FromSelf);
        let mut other_host = NdpFrame::parse(&ns).expect("valid");
        other_host.eth_dst = Mac([0x02, 9, 9, 9, 9, 9]);
        assert_eq!(check(&other_host.to_bytes()), Drop::NotForUs);
        let mut zero_option = ns.clone();
        zero_option[ETHERNET + IPV6 + NDP_FIXED + 1] = 0;
        let sum = checksum(HOST, solicited_node(VIP), &zero_option[ETHERNET + IPV6..]);
        zero_option[ETHERNET + IPV6 + 2..ETHERNET + IPV6 + 4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(check(&zero_option), Drop::Malformed);
        let mut probe_with_option = NdpFrame::parse(&probe(ASKER, VIP)).expect("valid");
        probe_with_option.link_layer = Some(ASKER);
        assert_eq!(check(&probe_with_option.to_bytes()), Drop::BadProbe);
        let mut multicast_target = NdpFrame::parse(&ns).expect("valid");
        multicast_target.target = ALL_NODES;
        assert_eq!(check(&multicast_target.to_bytes()), Drop::MulticastTarget);
    }

    #[test]
    fn unicast_solicitation_without_option_is_answered_to_the_ethernet_source() {
        let mut ns = NdpFrame::parse(&solicitation(HOST, VIP, None)).expect("valid");
        ns.eth_dst = OURS;
        ns.dst = VIP;
        let Decision::Reply(na) = respond(&ns.to_bytes(), OURS, owns_vip) else { panic!("answered") };
        assert_eq!(NdpFrame::parse(&na).expect("valid").eth_dst, ASKER);
    }

    #[test]
    fn padding_after_the_payload_is_ignored() {
        let mut ns = solicitation(HOST, VIP, Some(ASKER));
        ns.extend_from_slice(&[0u8; 20]);
        assert!(matches!(respond(&ns, OURS, owns_vip), Decision::Reply(_)));
    }
}
