//! Hostile input for NDP: the parser and responder never panic on arbitrary frames, an answer is only ever
//! sent for an owned address and is itself a valid advertisement, and parse/serialise round-trip. Frames are
//! built with random fields and, most of the time, a correct checksum (random bytes almost never carry one),
//! then some of them get random bytes flipped.

use ferrolb_speaker::wire::Mac;
use ferrolb_speaker::wire::ndp::{
    ALL_NODES, Decision, Kind, NdpFrame, checksum, multicast_mac, respond, solicited_node,
};
use proptest::prelude::*;
use std::net::Ipv6Addr;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10);

fn address() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        Just(VIP),
        Just(Ipv6Addr::UNSPECIFIED),
        Just(solicited_node(VIP)),
        Just(ALL_NODES),
        Just(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
    ]
}

fn mac() -> impl Strategy<Value = Mac> {
    prop_oneof![Just(OURS), Just(multicast_mac(solicited_node(VIP))), any::<[u8; 6]>().prop_map(Mac)]
}

fn ndpish() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        (mac(), mac(), address(), address(), address()),
        (any::<bool>(), any::<bool>(), any::<bool>(), proptest::option::of(mac())),
        (proptest::collection::vec(any::<u8>(), 0..24), prop_oneof![Just(255u8), any::<u8>()], any::<bool>()),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    );
    frame.prop_map(
        |(
            (eth_dst, eth_src, src, dst, target),
            (advert, solicited, override_, link_layer),
            (extra, hop, fix),
            flips,
        )| {
            let kind = if advert { Kind::Advertisement { solicited, override_ } } else { Kind::Solicitation };
            let mut b = NdpFrame { eth_dst, eth_src, src, dst, kind, target, link_layer }.to_bytes();
            // Extra options (random, possibly malformed), with the payload length and checksum brought along.
            b.extend_from_slice(&extra);
            let payload = u16::try_from(b.len() - 54).unwrap_or(0);
            b[18..20].copy_from_slice(&payload.to_be_bytes());
            b[21] = hop;
            if fix {
                b[56..58].copy_from_slice(&[0, 0]);
                let sum = checksum(src, dst, &b[54..]);
                b[56..58].copy_from_slice(&sum.to_be_bytes());
            }
            for (at, byte) in flips {
                let at = at % b.len();
                b[at] ^= byte;
            }
            b
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]
    #[test]
    fn never_panics_and_only_answers_owned_addresses(
        frame in prop_oneof![ndpish(), proptest::collection::vec(any::<u8>(), 0..120)]
    ) {
        match respond(&frame, OURS, |ip| ip == VIP) {
            Decision::Reply(reply) => {
                let ask = NdpFrame::parse(&frame).expect("an answer implies a valid solicitation");
                let answer = NdpFrame::parse(&reply).expect("our answer validates");
                prop_assert_eq!(ask.kind, Kind::Solicitation);
                prop_assert_eq!(ask.target, VIP);
                prop_assert_eq!((answer.src, answer.target, answer.eth_src, answer.link_layer), (VIP, VIP, OURS, Some(OURS)));
                if ask.src.is_unspecified() {
                    prop_assert_eq!(answer.dst, ALL_NODES);
                    prop_assert_eq!(answer.kind, Kind::Advertisement { solicited: false, override_: true });
                } else {
                    prop_assert_eq!(answer.dst, ask.src);
                    prop_assert_eq!(answer.kind, Kind::Advertisement { solicited: true, override_: true });
                    prop_assert!(!answer.eth_dst.is_group(), "a solicited answer is unicast");
                }
            }
            Decision::Drop(_) => {}
        }
    }

    #[test]
    fn parse_and_serialise_round_trip(frame in ndpish()) {
        if let Ok(parsed) = NdpFrame::parse(&frame) {
            prop_assert_eq!(NdpFrame::parse(&parsed.to_bytes()), Ok(parsed));
        }
    }
}
