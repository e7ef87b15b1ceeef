//! One door for both address families: which protocol a frame belongs to (ARP for IPv4, neighbour discovery
//! for IPv6), and which frames announce or probe an address of either family. The raw-socket shell calls only
//! these, so it never branches on a family itself; the rules stay in [`arp`] and [`ndp`].

pub mod arp;
pub mod mac;
pub mod ndp;

pub use mac::Mac;
use std::net::IpAddr;

/// What to do with a frame a raw socket delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `reply` back out of the interface; it answers a request for `ip`.
    Reply {
        /// The frame to send.
        reply: Vec<u8>,
        /// The address asked for.
        ip: IpAddr,
    },
    /// A request (an ARP request or a neighbour solicitation) left unanswered, for this reason (a metric label).
    Drop {
        /// `"arp"` or `"ndp"`.
        protocol: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Not ARP and not neighbour discovery: ordinary traffic, not worth a counter.
    Ignore,
}

/// The frame's EtherType, if it is long enough to have one.
fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]))
}

/// Whether `frame` is an ARP request or a neighbour solicitation (what MetalLB counts as a request received).
pub fn is_request(frame: &[u8]) -> bool {
    match ethertype(frame) {
        Some(arp::ETHERTYPE_ARP) => frame.len() >= arp::FRAME_LEN && frame[20..22] == [0, 1],
        Some(ndp::ETHERTYPE_IPV6) => {
            matches!(ndp::NdpFrame::parse(frame), Ok(f) if f.kind == ndp::Kind::Solicitation)
        }
        _ => false,
    }
}

/// Whether and how to answer `frame` on an interface with MAC `our_mac`, given what this node announces there.
pub fn answer(frame: &[u8], our_mac: Mac, owns: impl Fn(IpAddr) -> bool) -> Answer {
    match ethertype(frame) {
        Some(arp::ETHERTYPE_ARP) => match arp::respond(frame, our_mac, |ip| owns(IpAddr::V4(ip))) {
            // A reply answers the request's target, which is the reply's sender address.
            arp::Decision::Reply(reply) => match arp::ArpFrame::parse(&reply) {
                Ok(r) => Answer::Reply { reply: reply.to_vec(), ip: IpAddr::V4(r.spa) },
                Err(reason) => Answer::Drop { protocol: "arp", reason: reason.label() },
            },
            arp::Decision::Drop(arp::Drop::NotArp) => Answer::Ignore,
            arp::Decision::Drop(reason) => Answer::Drop { protocol: "arp", reason: reason.label() },
        },
        Some(ndp::ETHERTYPE_IPV6) => match ndp::NdpFrame::parse(frame) {
            // Most IPv6 frames are ordinary traffic (to the Service addresses themselves): not worth a counter.
            Err(ndp::Drop::NotIcmpv6 | ndp::Drop::NotNdp | ndp::Drop::Unsupported) => Answer::Ignore,
            Err(reason) => Answer::Drop { protocol: "ndp", reason: reason.label() },
            Ok(request) => match ndp::respond(frame, our_mac, |ip| owns(IpAddr::V6(ip))) {
                ndp::Decision::Reply(reply) => Answer::Reply { reply, ip: IpAddr::V6(request.target) },
                // Advertisements are others' answers: heard for claims, never answered.
                ndp::Decision::Drop(ndp::Drop::NotSolicitation) => Answer::Ignore,
                ndp::Decision::Drop(reason) => Answer::Drop { protocol: "ndp", reason: reason.label() },
            },
        },
        _ => Answer::Ignore,
    }
}

/// The address and MAC `frame` shows another host using (see [`arp::claim`] and [`ndp::claim`]).
pub fn claim(frame: &[u8], our_mac: Mac) -> Option<(IpAddr, Mac)> {
    match ethertype(frame)? {
        arp::ETHERTYPE_ARP => arp::claim(frame, our_mac).map(|(ip, mac)| (IpAddr::V4(ip), mac)),
        ndp::ETHERTYPE_IPV6 => ndp::claim(frame, our_mac).map(|(ip, mac)| (IpAddr::V6(ip), mac)),
        _ => None,
    }
}

/// The address a host asks for in `frame`, when it asks someone else to answer (an ARP request or a neighbour
/// solicitation, not ours): a client that wants to reach it now. Probes (sender 0.0.0.0 or `::`), which other
/// speakers send before answering, and gratuitous announcements (sender = target) ask nobody.
pub fn asked(frame: &[u8], our_mac: Mac) -> Option<IpAddr> {
    match ethertype(frame)? {
        arp::ETHERTYPE_ARP => {
            let f = arp::ArpFrame::parse(frame).ok()?;
            let asks = f.operation == arp::Operation::Request
                && !f.spa.is_unspecified()
                && f.spa != f.tpa
                && f.sha != our_mac
                && f.eth_src != our_mac;
            asks.then_some(IpAddr::V4(f.tpa))
        }
        ndp::ETHERTYPE_IPV6 => {
            let f = ndp::NdpFrame::parse(frame).ok()?;
            let asks = f.kind == ndp::Kind::Solicitation
                && !f.src.is_unspecified()
                && f.src != f.target
                && f.eth_src != our_mac
                && f.link_layer != Some(our_mac);
            asks.then_some(IpAddr::V6(f.target))
        }
        _ => None,
    }
}

/// The probe asked before answering for `ip`: an RFC 5227 ARP probe, or an RFC 4862 duplicate-address probe.
pub fn probe(mac: Mac, ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => arp::probe(mac, v4).to_vec(),
        IpAddr::V6(v6) => ndp::probe(mac, v6),
    }
}

/// The frames that move every neighbour cache to `mac` for `ip`: both gratuitous ARP forms, or one unsolicited
/// neighbour advertisement to all-nodes with the Override flag.
pub fn announcements(mac: Mac, ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => {
            vec![arp::gratuitous_request(mac, v4).to_vec(), arp::gratuitous_reply(mac, v4).to_vec()]
        }
        IpAddr::V6(v6) => vec![ndp::unsolicited_advertisement(mac, v6)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
    const PEER: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);
    const V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1);

    #[test]
    fn each_family_probe_is_answered_only_by_its_owner_and_names_the_address() {
        for ip in [IpAddr::V4(V4), IpAddr::V6(V6)] {
            let asked = probe(PEER, ip);
            assert!(is_request(&asked), "{ip}: a probe is a request");
            match answer(&asked, OURS, |owned| owned == ip) {
                Answer::Reply { ip: answered, reply } => {
                    assert_eq!(answered, ip);
                    assert_eq!(claim(&reply, PEER), Some((ip, OURS)), "{ip}: the prober hears our claim");
                }
                other => panic!("{ip}: expected a reply, got {other:?}"),
            }
            let protocol = if ip.is_ipv4() { "arp" } else { "ndp" };
            assert_eq!(answer(&asked, OURS, |_| false), Answer::Drop { protocol, reason: "not_owned" });
        }
    }

    #[test]
    fn announcements_are_claims_of_the_address_by_the_sender() {
        for ip in [IpAddr::V4(V4), IpAddr::V6(V6)] {
            let frames = announcements(OURS, ip);
            assert!(!frames.is_empty());
            for frame in &frames {
                assert_eq!(claim(frame, PEER), Some((ip, OURS)), "{ip}");
                assert_eq!(claim(frame, OURS), None, "{ip}: our own frames are not claims");
                assert!(
                    !matches!(answer(frame, PEER, |_| true), Answer::Reply { .. }),
                    "{ip}: an announcement is never answered"
                );
            }
        }
    }

    #[test]
    fn a_clients_question_is_asking_and_probes_announcements_and_our_own_frames_are_not() {
        let client_v4 = arp::ArpFrame {
            eth_dst: Mac::BROADCAST,
            eth_src: PEER,
            operation: arp::Operation::Request,
            sha: PEER,
            spa: Ipv4Addr::new(198, 18, 0, 1),
            tha: Mac::ZERO,
            tpa: V4,
        }
        .to_bytes();
        assert_eq!(asked(&client_v4, OURS), Some(IpAddr::V4(V4)));
        assert_eq!(asked(&client_v4, PEER), None, "our own question");
        let client_v6 = ndp::NdpFrame {
            eth_dst: ndp::multicast_mac(ndp::solicited_node(V6)),
            eth_src: PEER,
            src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            dst: ndp::solicited_node(V6),
            kind: ndp::Kind::Solicitation,
            target: V6,
            link_layer: Some(PEER),
        }
        .to_bytes();
        assert_eq!(asked(&client_v6, OURS), Some(IpAddr::V6(V6)));
        for ip in [IpAddr::V4(V4), IpAddr::V6(V6)] {
            assert_eq!(asked(&probe(PEER, ip), OURS), None, "{ip}: a probe asks nobody");
            for frame in announcements(PEER, ip) {
                assert_eq!(asked(&frame, OURS), None, "{ip}: an announcement asks nobody");
            }
        }
    }

    #[test]
    fn ordinary_traffic_is_ignored_and_garbage_is_not_a_panic() {
        let mut ipv6_udp = vec![0u8; 14 + 40 + 8];
        ipv6_udp[12..14].copy_from_slice(&ndp::ETHERTYPE_IPV6.to_be_bytes());
        ipv6_udp[14] = 0x60;
        ipv6_udp[20] = 17;
        ipv6_udp[21] = 64;
        assert_eq!(answer(&ipv6_udp, OURS, |_| true), Answer::Ignore);
        assert!(!is_request(&ipv6_udp));
        for len in 0..80 {
            let junk = vec![0x86u8; len];
            let _ = answer(&junk, OURS, |_| true);
            let _ = claim(&junk, OURS);
            let _ = asked(&junk, OURS);
            let _ = is_request(&junk);
        }
    }
}
